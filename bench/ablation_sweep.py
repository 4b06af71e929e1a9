"""Ablation sweep over every attention layer: resumed forwards vs the naive sweep.

    python bench/ablation_sweep.py [--n 64] [--kind resample]

Both sweeps compute the same self-repair decomposition for each of the model's
attention layers on the same prompts (top-1 facts). The naive sweep re-runs the whole
model for each ablation; the resumed one starts each forward at the ablated layer from
the clean residual stream (cached once). Reported in one run: block x prompt passes
(compute), wall time, their ratios, and the largest difference between the two sweeps'
results (they must agree).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pytest_circuits import ActivationStore, load_model, tasks
from pytest_circuits.components import Attn
from pytest_circuits.techniques import effects as E

ROOT = Path(__file__).resolve().parents[1]


def sweep(model, ps, store, kind):
    store.counters.__init__()
    start = time.perf_counter()
    out = E.sweep(model, ps, [Attn(l) for l in range(model.cfg.n_layers)], kind=kind, seed=0, activations=store)
    return time.perf_counter() - start, store.counters.block_prompt_passes, store.counters.forward_passes, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--kind", default="resample")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    model = load_model("smollm2-135m")
    ps = tasks.facts(model, path=ROOT / "claims/smollm2/data/facts_top1.jsonl").subset(range(a.n), name="bench")
    naive, resumed = ActivationStore(resume=False), ActivationStore(resume=True)
    for st in (naive, resumed):   # clean activations (and the resume points) once, untimed
        E.outputs(model, ps, store=st)
        st.get(model, ps, [f"blocks.{l}.hook_resid_pre" for l in range(1, model.cfg.n_layers)])
    t_n, b_n, f_n, r_n = sweep(model, ps, naive, a.kind)
    t_r, b_r, f_r, r_r = sweep(model, ps, resumed, a.kind)
    diff = max(float((x.total - y.total).abs().max()) for x, y in zip(r_n, r_r))
    print(f"ablation sweep: {model.cfg.n_layers} attention layers x {a.n} prompts ({a.kind}, last position)")
    print(f"{'sweep':8} {'wall s':>8} {'forwards':>9} {'block x prompt passes':>22}")
    print(f"{'naive':8} {t_n:8.1f} {f_n:9d} {b_n:22d}")
    print(f"{'resumed':8} {t_r:8.1f} {f_r:9d} {b_r:22d}")
    print(f"compute ratio resumed/naive: {b_r / b_n:.3f}; wall-time ratio: {t_r / t_n:.3f}")
    print(f"largest |difference| in total effect between the sweeps: {diff:.2e}")


if __name__ == "__main__":
    main()
