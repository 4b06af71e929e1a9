"""One run of everything issue #25 measures, on one device: GPU by default, CPU with --device cpu.

    PYTHONPATH=. python bench/gpu.py [--device cuda|cpu] [--quick] [--model smollm2-135m] [--skip PART]...

(from the repository root: PYTHONPATH=. makes it this checkout's package.)

Parts, each printed as it finishes (``--skip claims|naive|overhead``):

claims    ``pytest claims/ --circuits-baseline --circuits-require-models`` twice against one
          fresh activation cache (the converted weights reused: what a user has after the
          first run): cold, then warm. Per run: wall seconds, exit status, forwards, rows
          (prompts) per forward, the compute summary line, and the peak memory of the pytest
          process (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak resident set).
          ``--quick``: only ``claims/smollm2/test_induction.py`` (a smoke run, not the target).
naive     bench/naive_compare.py's three comparisons (self-repair sweep, minimality, layer-scan
          probe), cold, in this process: wall seconds, speed-up and max |diff| of each, and the
          peak GPU memory of the part. ``--quick``: 16 prompts each.
overhead  the store's fixed cost per forward on a tiny random 4-layer model (no weights to
          load): the same 64 one-row prompt sets through ``ActivationStore.get`` and through a
          raw ``model(tokens)``, per forward; and a 4-layer self-repair sweep of 64 prompts:
          forwards and rows per forward. Runs against whatever ``pytest_circuits`` is imported
          (set PYTHONPATH to an older checkout to compare).

Nothing is asserted on time; exit status 1 when a part fails (claims not passing, a naive
comparison over its tolerance).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"activations: (\d+) forward passes \((\d+) prompts\)")
COMPUTE = re.compile(r"compute: .*")
PEAK = re.compile(r"^bench-peak-bytes: (\d+)$", re.M)
QUICK_CLAIMS = ["claims/smollm2/test_induction.py"]
# the pytest process prints its own peak memory (GPU: allocator peak; CPU: resident set)
WRAPPER = (
    "import resource, sys, pytest, torch\n"
    "rc = pytest.main(sys.argv[1:])\n"
    "peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and torch.cuda.is_initialized() "
    "else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
    "print(f'bench-peak-bytes: {peak}')\n"
    "sys.exit(int(rc))\n")


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def claims_run(cache: Path, device: str, paths: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-c", WRAPPER, *paths, "-q", "-p", "no:cacheprovider", "--circuits-baseline",
           "--circuits-require-models", f"--circuits-device={device}", f"--circuits-cache-dir={cache}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "CI": "1"})
    out: dict[str, Any] = {"wall": time.perf_counter() - start, "rc": proc.returncode}
    m = LINE.search(proc.stdout)
    out["forwards"], out["rows"] = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    c = COMPUTE.search(proc.stdout)
    out["compute"] = c.group(0) if c else "compute: (no line)"
    p = PEAK.search(proc.stdout)
    out["peak"] = int(p.group(1)) if p else 0
    if proc.returncode != 0:
        out["tail"] = (proc.stdout[-2500:] + proc.stderr[-1500:]).strip()
    return out


def part_claims(a: Any) -> bool:
    from pytest_circuits.config import default_cache_dir

    paths = QUICK_CLAIMS if a.quick else ["claims/"]
    print(f"== claims ({' '.join(paths)}) on {a.device}: cold, then warm, one fresh activation cache", flush=True)
    with tempfile.TemporaryDirectory(prefix="circuits-gpu-bench-") as tmp:
        cache = Path(tmp)
        src = default_cache_dir()
        if (src / "weights").is_dir():
            os.symlink(src / "weights", cache / "weights")      # converted weights: what a user has
        if (src / "hashes.json").exists():
            shutil.copy(src / "hashes.json", cache)
        runs = [("cold", claims_run(cache, a.device, paths)), ("warm", claims_run(cache, a.device, paths))]
    print(f"{'run':5} {'wall s':>8} {'exit':>4} {'forwards':>9} {'rows':>7} {'rows/fwd':>9} {'peak memory':>12}")
    for name, r in runs:
        per = r["rows"] / r["forwards"] if r["forwards"] else 0.0
        print(f"{name:5} {r['wall']:8.1f} {r['rc']:4d} {r['forwards']:9d} {r['rows']:7d} {per:9.1f} {_mib(r['peak']):>12}")
    for name, r in runs:
        print(f"{name}: {r['compute']}")
        if "tail" in r:
            print(f"{name} run failed; its output ends:\n{r['tail']}")
    return all(r["rc"] == 0 for _, r in runs)


def part_naive(a: Any) -> bool:
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    import naive_compare

    print(f"== naive TransformerLens scripts vs pytest-circuits on {a.device}", flush=True)
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    argv = ["--model", a.model, "--device", a.device] + (["--n", "16"] if a.quick else [])
    rc = naive_compare.main(argv)
    if a.device.startswith("cuda"):
        print(f"peak GPU memory (naive part): {_mib(torch.cuda.max_memory_allocated())}")
    else:
        print(f"peak resident set of this process so far: "
              f"{_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")
    return rc == 0


def part_overhead(a: Any) -> bool:
    import torch

    import pytest_circuits
    from pytest_circuits import ActivationStore, PromptSet
    from pytest_circuits import hooks as H
    from pytest_circuits.models import load_model
    from pytest_circuits.techniques import effects as E
    from pytest_circuits.testing import make_tiny_checkpoint

    print(f"== per-forward overhead on a tiny 4-layer model ({pytest_circuits.__file__})", flush=True)
    with tempfile.TemporaryDirectory(prefix="circuits-overhead-") as tmp:
        ckpt = make_tiny_checkpoint(Path(tmp) / "tiny4", n_layers=4, n_kv_heads=2, seed=3)
        model = load_model(str(ckpt), cache_dir=Path(tmp) / "cache", device=a.device)
        words = ["the cat sat on the mat", "the dog sat on the bag", "the king went to the city",
                 "when John and Mary went to the store", "the queen said the ball was"]
        sets = [PromptSet.build(model, [f"{words[i % 5]} {words[(i // 5) % 5]} {words[(i // 25) % 5]}"],
                                name=f"one-{i}") for i in range(64)]      # 64 distinct prompts
        dev = model.cfg.device
        with torch.no_grad():
            model(sets[0].tokens.to(dev))                      # untimed: first-call costs
            t0 = time.perf_counter()
            for ps in sets:
                model(ps.tokens.to(dev))
            if str(dev).startswith("cuda"):
                torch.cuda.synchronize()
            raw = (time.perf_counter() - t0) / len(sets)
        store = ActivationStore()
        t0 = time.perf_counter()
        for ps in sets:
            store.get(model, ps, [H.LOGITS_LAST])
        if str(dev).startswith("cuda"):
            torch.cuda.synchronize()
        via = (time.perf_counter() - t0) / store.counters.forward_passes
        print(f"one-row forward: raw model {raw * 1e3:.2f} ms, through the store {via * 1e3:.2f} ms, "
              f"overhead {(via - raw) * 1e3:.2f} ms per forward ({store.counters.forward_passes} forwards)")
        full = [f"{words[(i + 2) % 5]} and {words[i % 5]}".split() for i in range(64)]
        ps = PromptSet.build(model, [" ".join(w[:-1]) for w in full], answers=[" " + w[-1] for w in full],
                             name="sweep")
        sweep_store = ActivationStore()
        t0 = time.perf_counter()
        E.sweep(model, ps, [f"attn{l}" for l in range(4)] + [f"L{l}H{h}" for l in range(4) for h in range(4)],
                kind="zero", positions="last", activations=sweep_store)
        wall = time.perf_counter() - t0
        c = sweep_store.counters
        print(f"self-repair sweep (4 attention layers + 16 heads, 64 prompts, last position): {c.forward_passes} "
              f"forwards, {c.prompts_forwarded / max(1, c.forward_passes):.1f} rows per forward, "
              f"{c.block_position_passes:,} block x position passes, {wall:.2f} s")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few claims, few prompts")
    ap.add_argument("--model", default="smollm2-135m", help="the naive comparisons' model")
    ap.add_argument("--skip", action="append", choices=("claims", "naive", "overhead"), default=[])
    a = ap.parse_args(argv)
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/gpu.py: CUDA is not available here; run with --device cpu for the CPU numbers")
        return 2
    where = torch.cuda.get_device_name(torch.device(a.device)) if a.device.startswith("cuda") else \
        f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    print(f"bench/gpu.py on {where}; torch {torch.__version__}", flush=True)
    ok = True
    for name, part in (("overhead", part_overhead), ("naive", part_naive), ("claims", part_claims)):
        if name not in a.skip:
            t0 = time.perf_counter()
            ok = part(a) and ok
            print(f"({name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
