"""The ACDC-style exact pass against single-edge exact patching and EAP, on tiny random models.

    python bench/exact_pruning.py [--families gpt2 gqa] [--n 16] [--threshold 0.02] [--seed 3]

For each family a tiny random checkpoint (``architectures.build``: 2 layers, 4 heads) and
``--n`` seeded prompt pairs of 6 words that differ in their third word (the words of the
checkpoint's vocabulary), the task ``logit(Paris) - logit(Rome)`` at the last position. Timed
from a new activation store each (nothing warmed up): ``edge_pruning.acdc`` over every edge at
``--threshold`` of the corruption's effect. Then, for comparison, the edges whose *single*
exact effect (``edges.edge_patch``) or EAP score (``edges.edge_attribution``) is at least
``--threshold`` of it, and the Jaccard overlap of each with the pass's kept edges. Removals in
the pass compose (each subtracts the sender's output in the same run), so its kept set need
not be the set of edges that are large alone.

Checked in the same run (exit 1 when either fails): the pass's metric with every edge removed
equals the corrupted run's, and with nothing removed the clean run's (max |diff| at most 1e-5
of the metric's size).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pytest_circuits import ActivationStore, tasks
from pytest_circuits.architectures import build
from pytest_circuits.models import load_model
from pytest_circuits.prompts import PromptSet
from pytest_circuits.techniques import edge_pruning as EP
from pytest_circuits.techniques import edges as E

POOL = ["the", "a", "cat", "dog", "sat", "on", "mat", "John", "Mary", "went", "to", "store", "gave", "ball",
        "bag", "city", "river", "king", "queen"]


def pairs(seed: int, n: int, length: int = 6) -> list[tuple[str, str]]:
    """``n`` seeded pairs of ``length`` words of :data:`POOL`, the second with its third word changed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(POOL) for _ in range(length)]
        other = list(words)
        other[2] = rng.choice([w for w in POOL if w != words[2]])
        out.append((" ".join(words), " ".join(other)))
    return out


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["gpt2", "gqa"])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--threshold", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args(argv)
    ok = True
    print(f"{'family':>8} {'edges':>6} {'pass s':>7} {'kept':>5} {'single>=t':>10} {'J single':>9} {'EAP>=t':>7} "
          f"{'J EAP':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for fam in a.families:
            model = load_model(str(build(fam, Path(tmp) / fam)), cache_dir=Path(tmp) / f"{fam}-cache", device="cpu")
            ps = pairs(a.seed, a.n)
            task = tasks.logit_difference(PromptSet.build(model, [c for c, _ in ps], answers=["Paris"] * a.n,
                                                          foils=["Rome"] * a.n, corrupted=[x for _, x in ps],
                                                          name=f"bench-{fam}"))
            store = ActivationStore()
            t0 = time.perf_counter()
            pruned = EP.acdc(model, task, threshold=a.threshold, activations=store)
            seconds = time.perf_counter() - t0
            clean = task.scores(model, activations=store).double().numpy()
            corrupted = task.scores(model, activations=store, corrupted=True).double().numpy()
            size = np.abs(clean).max() + np.abs(corrupted).max()
            for what, got, want in (("nothing removed", EP.removed_metric(model, task, (), activations=store), clean),
                                    ("every edge removed", EP.removed_metric(model, task, E.graph(model),
                                                                             activations=store), corrupted)):
                err = float(np.abs(got - want).max())
                if err > 1e-5 * size:
                    print(f"{fam}: {what} is not the {'clean' if want is clean else 'corrupted'} run ({err:.3g})")
                    ok = False
            sw = E.edge_patch(model, task, activations=store)
            eap = E.edge_attribution(model, task, activations=store)
            total = float((corrupted - clean).mean())
            single = {e for e in sw.edges if abs(float(sw.of(e).mean())) >= a.threshold * abs(total)}
            by_eap = {e for e in eap.edges if abs(float(eap.of(e).mean())) >= a.threshold * abs(total)}
            kept = set(pruned.edges)
            print(f"{fam:>8} {len(E.graph(model)):6d} {seconds:7.2f} {len(kept):5d} {len(single):10d} "
                  f"{jaccard(kept, single):9.3f} {len(by_eap):7d} {jaccard(kept, by_eap):6.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
