"""Scans behind claims/smollm2/test_self_repair.py and test_erasure.py (prints a report).

    python scripts/discover_self_repair.py [--kind resample] [--seed 0]

1. ablate each attention layer (and each MLP) at the last position; decompose the
   total effect into own / downstream / norm and list the top compensators;
2. direct effects of every writer, clean (late MLPs with negative DE);
3. DLA vs causal effect for the writers with the largest DLA;
4. erasure scan: most negative projection ratios (later head onto earlier writer),
   then the value-input check on the strongest pairs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pytest_circuits import ActivationStore, load_model, tasks
from pytest_circuits.components import MLP, Attn
from pytest_circuits.techniques import effects as E
from pytest_circuits.techniques import erasure as ER

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="resample")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    model = load_model("smollm2-135m")
    store = ActivationStore()
    ps = tasks.facts(model, path=ROOT / "claims/smollm2/data/facts_top1.jsonl", name="facts_top1")
    print(f"{len(ps)} prompts")
    de = E.decompose(model, ps, activations=store)
    print("\n== clean direct effects, largest |mean| ==")
    for c, v in de.top(15, order="abs"):
        print(f"  {str(c):>7} {v:+.3f}")
    print("  late MLPs:", ", ".join(f"{l}:{float(de.of(MLP(l)).mean()):+.2f}" for l in range(20, 30)))
    print("\n== attention-layer ablations (" + a.kind + ", last position) ==")
    for l in range(model.cfg.n_layers):
        sr = E.self_repair(model, ps, Attn(l), kind=a.kind, seed=a.seed, activations=store)
        top = ", ".join(f"{c} {v:+.3f}" for c, v in sr.ranking(3))
        print(f"  attn{l:<2} TE {sr.total.mean():+.3f} own {sr.own.mean():+.3f} down {sr.downstream.mean():+.3f} "
              f"norm {sr.norm_term.mean():+.3f} | {top}")
    print("\n== MLP ablations ==")
    for l in range(model.cfg.n_layers):
        sr = E.self_repair(model, ps, MLP(l), kind=a.kind, seed=a.seed, activations=store)
        top = ", ".join(f"{c} {v:+.3f}" for c, v in sr.ranking(3))
        print(f"  mlp{l:<3} TE {sr.total.mean():+.3f} own {sr.own.mean():+.3f} down {sr.downstream.mean():+.3f} "
              f"norm {sr.norm_term.mean():+.3f} | {top}")
    print("\n== DLA vs causal effect (top DLA writers) ==")
    for c, _ in de.top(8, order="abs"):
        if c.layer < 0:
            continue
        r = E.dla_vs_total(model, ps, c, kind=a.kind, seed=a.seed, activations=store)
        print(f"  {r!r}  overstatement {r.overstatement!r}")
    print("\n== erasure scan (PR as a ratio of sums at the last position; |cos| >= 0.1) ==")
    prs = ER.projection_ratios(model, ps, activations=store)
    pairs = prs.scan(15)
    print(prs.table(15))
    print("\n== value-input check on the 5 strongest pairs ==")
    for w, r, _ in pairs[:5]:
        print(f"  {r} onto {w}: {ER.value_input_check(model, ps, w, [r], activations=store)!r}")
    print("\n", store.counters)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
