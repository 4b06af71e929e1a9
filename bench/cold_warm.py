"""Run `pytest claims/` twice against one fresh cache folder: cold, then warm.

Prints wall time and model forward passes for each run and their ratio, measured in
the same invocation (this machine is noisy; compare ratios, not absolute seconds).
The warm run must perform no model forward pass for unchanged claims: the script
exits 1 if it does.

    python bench/cold_warm.py [--keep-weights] [pytest args...]

--keep-weights reuses the converted weights from the default cache (so "cold" means
an empty activation cache only); without it the cold run also converts the GGUF.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"activations: (\d+) forward passes \((\d+) prompts\), (\d+) hits from memory, "
                  r"(\d+) from disk, (\d+) computed")
COMPUTE = re.compile(r"compute: .*")
SHOW = int(os.environ.get("BENCH_SHOW", "12"))
SLOWEST = re.compile(r"^\s*[\d.]+s (call|setup) .*$", re.M)


def run(cache: Path, extra: list[str]) -> tuple[float, dict[str, Any], int]:
    cmd = [sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "--durations=12",
           f"--circuits-cache-dir={cache}", *extra]
    start = time.perf_counter()
    # CI=1: hypothesis claims use the derandomized profile, so both runs draw the same
    # examples (a random draw would be new prompts, hence new forwards, by design).
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "CI": "1"})
    wall = time.perf_counter() - start
    m = LINE.search(proc.stdout)
    if not m:
        sys.stdout.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit("bench: no activations summary line in the pytest output")
    keys = ("forward_passes", "prompts", "memory_hits", "disk_hits", "computed")
    out: dict[str, Any] = dict(zip(keys, map(int, m.groups())))
    c = COMPUTE.search(proc.stdout)
    out["compute"] = c.group(0) if c else "compute: (no line)"
    out["slowest"] = [x.group(0).strip() for x in SLOWEST.finditer(proc.stdout)][:SHOW]
    return wall, out, proc.returncode


def main() -> int:
    args = sys.argv[1:]
    keep = "--keep-weights" in args
    extra = [a for a in args if a != "--keep-weights"]
    with tempfile.TemporaryDirectory(prefix="circuits-bench-") as tmp:
        cache = Path(tmp)
        if keep:
            from pytest_circuits.config import default_cache_dir

            src = default_cache_dir()
            if (src / "weights").is_dir():
                os.symlink(src / "weights", cache / "weights")
            if (src / "hashes.json").exists():
                shutil.copy(src / "hashes.json", cache)
        cold_t, cold, rc1 = run(cache, extra)
        warm_t, warm, rc2 = run(cache, extra)
    print(f"{'run':6} {'wall s':>8} {'forwards':>9} {'prompts':>8} {'disk hits':>9} {'computed':>9} exit")
    for name, t, c, rc in (("cold", cold_t, cold, rc1), ("warm", warm_t, warm, rc2)):
        print(f"{name:6} {t:8.1f} {c['forward_passes']:9d} {c['prompts']:8d} {c['disk_hits']:9d} "
              f"{c['computed']:9d} {rc}")
    for name, c in (("cold", cold), ("warm", warm)):
        print(f"{name}: {c['compute']}")
    for name, c in (("cold", cold), ("warm", warm)):
        print(f"slowest items of the {name} run:")
        for line in c["slowest"]:
            print("  " + line)
    print(f"warm/cold wall-time ratio: {warm_t / cold_t:.3f}"
          + (" (cold includes GGUF conversion)" if not keep else " (weights reused)"))
    if warm["forward_passes"]:
        print(f"FAIL: the warm run performed {warm['forward_passes']} forward passes; expected 0")
        return 1
    return 0 if rc1 == rc2 == 0 else 2


if __name__ == "__main__":
    raise SystemExit(main())
