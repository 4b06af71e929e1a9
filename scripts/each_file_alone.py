"""Run every fast-lane test file on its own, each in a fresh pytest process, and list the
files that fail alone (a file that passes only after another file ran depends on that file's
side effects: an unseeded draw, a fixture, a cache, a module imported elsewhere).

    python scripts/each_file_alone.py                 # every file under tests/
    python scripts/each_file_alone.py tests/unit/test_edges.py tests/faults
    python scripts/each_file_alone.py --lane "not slow" --timeout 600 --reverse

Each file runs as ``python -m pytest FILE -m LANE -p no:cacheprovider -q``; a file whose tests
are all outside the lane counts as passing (pytest exits 5, "no tests collected"). Prints one
line a file (status, wall seconds, CPU seconds of the pytest process: on a shared machine the
CPU seconds are the better guess of the time alone) and, at the end, the failures; exits 1 if any file failed.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST = "not slow and not real_model and not matrix"   # the Makefile's FAST lane


def test_files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths or ["tests"]:
        path = (ROOT / p).resolve()
        if path.is_dir():
            out += sorted(path.rglob("test_*.py"))
        else:
            out.append(path)
    return out


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def run_one(path: Path, lane: str, timeout: float, extra: list[str]) -> tuple[str, float, float, str]:
    cmd = [sys.executable, "-m", "pytest", str(path.relative_to(ROOT)), "-m", lane,
           "-p", "no:cacheprovider", "-q", "--no-header", *extra]
    start, cpu = time.monotonic(), _children_cpu()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "TIMEOUT", time.monotonic() - start, _children_cpu() - cpu, ""
    took = time.monotonic() - start
    # 0: passed; 5: nothing in this lane (every test of the file is in another lane).
    status = {0: "ok", 5: "none in lane"}.get(proc.returncode, f"FAIL (exit {proc.returncode})")
    return status, took, _children_cpu() - cpu, proc.stdout[-3000:] + proc.stderr[-2000:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", help="test files or folders (default: tests/)")
    ap.add_argument("--lane", default=FAST, help=f"the -m expression (default: {FAST!r})")
    ap.add_argument("--timeout", type=float, default=3600.0, help="wall seconds a file may take")
    ap.add_argument("--pytest-arg", action="append", default=[], help="passed on to pytest")
    ap.add_argument("--reverse", action="store_true", help="the files in reverse order")
    args = ap.parse_args(argv)

    failed: list[tuple[Path, str, str]] = []
    files = test_files(args.paths)[::-1] if args.reverse else test_files(args.paths)
    for i, path in enumerate(files, 1):
        status, took, cpu, tail = run_one(path, args.lane, args.timeout, args.pytest_arg)
        print(f"[{i}/{len(files)}] {status:<16} {took:7.1f} s wall {cpu:7.1f} s cpu  {path.relative_to(ROOT)}",
              flush=True)
        if not (status == "ok" or status == "none in lane"):
            failed.append((path, status, tail))
    print()
    if not failed:
        print(f"all {len(files)} files pass alone")
        return 0
    print(f"{len(failed)} of {len(files)} files fail alone:")
    for path, status, tail in failed:
        print(f"--- {path.relative_to(ROOT)}: {status}\n{tail}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
