"""A warm 30-layer self-repair sweep: how long a sweep takes when every activation is cached.

    python bench/warm_sweep.py [--n 64] [--model smollm2-135m]

Three timings of ``effects.sweep(model, facts, [attn0..attnN], kind="resample")`` on one
cache folder, each in a fresh process (the model load is untimed; nothing else is warmed):

1. cold: an empty activation cache (computes and writes every entry);
2. warm from disk: a new process, the entries read from the folder (0 forward passes);
3. warm from memory: the same sweep again in process 2 (0 forward passes).

It exits 1 if a warm sweep runs a forward pass or its results differ from the cold one's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACTS = ROOT / "claims/smollm2/data/facts_top1.jsonl"


def child(a: argparse.Namespace) -> None:
    import torch

    from pytest_circuits import ActivationStore, load_model, tasks
    from pytest_circuits.components import Attn
    from pytest_circuits.techniques import effects as E

    model = load_model(a.model)
    ps = tasks.facts(model, path=FACTS).subset(range(a.n), name="bench")
    store = ActivationStore(cache_dir=Path(a.cache))
    comps = [Attn(l) for l in range(model.cfg.n_layers)]
    out = {}
    for run in a.runs.split(","):
        before = store.counters.forward_passes
        start = time.perf_counter()
        with torch.no_grad():
            res = E.sweep(model, ps, comps, kind="resample", seed=0, activations=store)
        out[run] = {"seconds": time.perf_counter() - start, "forwards": store.counters.forward_passes - before,
                    "total": [r.total.tolist() for r in res]}
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--runs", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return 0
    got = {}
    with tempfile.TemporaryDirectory(prefix="warm-sweep-") as cache:
        for runs in ("cold", "disk,memory"):
            cmd = [sys.executable, __file__, "--child", "--cache", cache, "--runs", runs, "--n", str(a.n),
                   "--model", a.model]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if proc.returncode:
                sys.stdout.write(proc.stdout[-2000:] + proc.stderr[-3000:])
                return 2
            got.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"30-layer resample sweep on {a.n} facts ({a.model}), one cache folder, fresh processes")
    print(f"{'run':16} {'seconds':>8} {'forwards':>9}")
    for run, label in (("cold", "cold"), ("disk", "warm from disk"), ("memory", "warm from memory")):
        print(f"{label:16} {got[run]['seconds']:8.2f} {got[run]['forwards']:9d}")
    diff = max(abs(x - y) for run in ("disk", "memory")
               for a_, b_ in zip(got[run]["total"], got["cold"]["total"]) for x, y in zip(a_, b_))
    print(f"largest |difference| of the warm sweeps' total effects from the cold one's: {diff:.1e}")
    bad = got["disk"]["forwards"] or got["memory"]["forwards"] or diff > 0
    print("target: a warm sweep with 0 forwards in < 0.5 s")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
