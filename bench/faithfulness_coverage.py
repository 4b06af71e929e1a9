"""What the middle 95% of ``faithfulness_under_resampling`` covers (issue #26 item 3).

    .venv/bin/python bench/faithfulness_coverage.py                      # 2 cells, 100 samples each
    .venv/bin/python bench/faithfulness_coverage.py --samples 20 --n 16

``edge_stability.faithfulness_under_resampling(model, task, scores)`` discovers a circuit on each
of ``B`` bootstrap resamples of the task's prompts (EAP at 5% of the corruption's effect), and
reports the recovered fraction of each on its resample; the claims read the middle 95% of those
values as the spread that discovery's variance gives faithfulness. What it stands for: the
recovered fraction of the circuit that discovery on a *new* sample of as many prompts finds,
measured on that sample. How often does that fall inside the range, and how wide is the range
against that value's own middle 95%?

A tiny random model (``architectures.build``, ``--family``, 3 layers) and a population of
``--pool`` seeded prompt pairs (7 words, the third changed), task ``logit(Paris) - logit(Rome)``
at the last position. The population's side is computed by another route than the function's:
EAP scores once per prompt of the pool (scores are per prompt), discovery with the sample's
counts as weights (``edges.discover``'s rule is linear in them), and each distinct circuit's
per-prompt metrics over the whole pool (one run of ``circuits.faithfulness`` per circuit), so
that

* the **target**: the recovered fraction ``F(S') = w . (kept - empty) / w . (full - empty)`` of
  ``--targets`` new samples ``S'`` of ``n`` prompts drawn with replacement from the pool, each
  with the circuit discovered on it; its mean and middle 95%;
* per seeded sample ``S`` (``--samples``): ``faithfulness_under_resampling`` itself, on a task
  built from ``S``'s prompts, with EAP run on them (``resamples=B``, seed = the sample's
  index), and its middle 95% ``[lo, hi]``.

Printed per cell: how often ``[lo, hi]`` holds a new sample's ``F(S')`` (over every sample and
target draw: what a 95% prediction range would hold 95% of the time), how often it holds the
target's mean, the median ratio of its width to the target's middle-95% width (above 1: it
overstates discovery's variance, below: understates), and how many distinct circuits ran.
Checked in the same run (exit 1 when it fails): for the first samples, each resample's value
computed the population's way (the pool's per-prompt EAP and metrics, the resample's counts)
equals the function's, where the two discover the same circuit. Deterministic: sample ``s``
draws its prompts from ``numpy.random.default_rng([--seed, n, s])``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pytest_circuits import ActivationStore, tasks
from pytest_circuits.architectures import build
from pytest_circuits.components import MLP, Head
from pytest_circuits.models import load_model
from pytest_circuits.prompts import PromptSet
from pytest_circuits.techniques import circuits as C
from pytest_circuits.techniques import edge_stability as S
from pytest_circuits.techniques import edges as E

sys.path.insert(0, os.path.dirname(__file__))
from exact_pruning import pairs  # noqa: E402  (seeded word pairs, the third word changed)

THRESHOLD = 0.05
LEVEL = 0.95


def task_of(model, ps: list[tuple[str, str]], name: str):
    return tasks.logit_difference(PromptSet.build(model, [c for c, _ in ps], answers=["Paris"] * len(ps),
                                                  foils=["Rome"] * len(ps), corrupted=[x for _, x in ps],
                                                  name=name))


class Population:
    """The pool's per-prompt EAP scores, and each distinct circuit's per-prompt metrics on it."""

    def __init__(self, model, pool: list[tuple[str, str]], threshold: float):
        self.model, self.threshold = model, threshold
        self.task = task_of(model, pool, "pool")
        self.store = ActivationStore(cache_dir=None)
        scores = E.edge_attribution(model, self.task, activations=self.store)
        self.edges, self.vals, self.totals, _ = E.per_prompt(scores)
        self.clean = np.asarray(scores.clean, dtype=np.float64)
        self.run = C._runner(model, self.task, "patch", None, 0, self.store)
        self.metrics: dict = {}

    def size(self, w) -> float:
        """:func:`edges.per_prompt`'s size of the sample with weights ``w`` (its counts over n)."""
        return max(float(w @ np.abs(self.clean)), float(w @ np.abs(self.clean + self.totals)))

    def circuit(self, w) -> frozenset | None:
        kept = E.discover(self.vals, self.totals, self.threshold, w, size=self.size(w))
        chosen = [e for e, k in zip(self.edges, kept) if k]
        comps = frozenset(c for e in chosen for c in (e.sender, e.receiver) if isinstance(c, (Head, MLP)))
        return comps or None

    def recovered(self, w, comps: frozenset | None) -> float | None:
        if comps is None:
            return None
        if comps not in self.metrics:
            circ = C.Circuit.of(self.model, sorted(comps, key=lambda c: c.sort_key()), name=f"pool[{len(self.metrics)}]")
            f = C._faithfulness(self.run, circ, record=False)
            self.metrics[comps] = tuple(np.asarray(x, dtype=np.float64) for x in (f.full, f.kept, f.empty))
        full, kept, empty = self.metrics[comps]
        den = float(w @ (full - empty))
        return float(w @ (kept - empty)) / den if abs(den) > 0 else None


def weights(idx, pool_size: int) -> np.ndarray:
    return np.bincount(idx, minlength=pool_size) / len(idx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="gqa")
    ap.add_argument("--n", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--resamples", type=int, nargs="+", default=[20])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--targets", type=int, default=2000)
    ap.add_argument("--pool", type=int, default=1000)
    ap.add_argument("--checked", type=int, default=5, help="samples whose resamples are recomputed the pool's way")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=THRESHOLD)
    a = ap.parse_args(argv)
    ok = True
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = build(a.family, Path(tmp) / a.family, n_layers=a.layers, n_heads=a.heads)
        model = load_model(str(path), cache_dir=Path(tmp) / "cache", device="cpu")
        pool = pairs(a.seed, a.pool, length=7)
        pop = Population(model, pool, a.threshold)
        B = max(a.resamples)
        print(f"{a.family} tiny model ({a.layers} layers, {a.heads} heads, {len(pop.edges)} edges), pool of "
              f"{a.pool} prompt pairs, EAP at {a.threshold:.0%}; {a.samples} samples and {a.targets} target draws "
              f"per n; the function run with {B} resamples, its first B read for each B")
        print(f"{'n':>4} {'B':>4} {'target mean':>11} {'target 95%':>17} {'holds F(new)':>12} {'holds mean':>10} "
              f"{'width ratio':>11} {'(IQR)':>13} {'x sqrt 2: holds F(new)':>22} {'undefined':>9}")
        for n in a.n:
            t0 = time.perf_counter()
            rng = np.random.default_rng([a.seed, n, 10**6])
            target = []
            for _ in range(a.targets):
                w = weights(rng.integers(0, a.pool, n), a.pool)
                v = pop.recovered(w, pop.circuit(w))
                if v is not None:
                    target.append(v)
            target = np.asarray(target)
            t_lo, t_hi = np.quantile(target, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
            t_mean = float(target.mean())
            cells = {b: {"holds": [], "mean": [], "ratio": [], "wide": [], "undefined": 0} for b in a.resamples}
            runs = checked = differed = 0
            for s in range(a.samples):
                idx = np.random.default_rng([a.seed, n, s]).integers(0, a.pool, n)
                task = task_of(model, [pool[i] for i in idx], f"sample{s}")
                store = ActivationStore(cache_dir=None)
                scores = E.edge_attribution(model, task, activations=store)
                rf = S.faithfulness_under_resampling(model, task, scores, threshold=a.threshold,
                                                     resamples=B, seed=s, activations=store)
                runs += len(rf.circuits)
                for b in a.resamples:
                    # the first b of B draws are the draws of a call with b resamples (one generator, in order)
                    part = S.ResampledFaithfulness(rf.values[:b], (), rf.threshold, rf.seed)
                    q, cell = part.quantiles(LEVEL), cells[b]
                    if q is None:
                        cell["undefined"] += 1
                        continue
                    lo, hi = q
                    cell["holds"].append(float(((target >= lo) & (target <= hi)).mean()))
                    cell["mean"].append(lo <= t_mean <= hi)
                    cell["ratio"].append((hi - lo) / max(t_hi - t_lo, 1e-12))
                    # the range widened by sqrt 2 about the resamples' mean: a new discovery and this
                    # one both vary, if the resamples' spread is one discovery's
                    m = part.mean
                    wl, wh = m - 2 ** 0.5 * (m - lo), m + 2 ** 0.5 * (hi - m)
                    cell["wide"].append(float(((target >= wl) & (target <= wh)).mean()))
                if s < a.checked:   # the same resamples, the population's way
                    es, vals, totals, size = E.per_prompt(scores)
                    draws = S.resample_weights(n, B, np.random.default_rng(s))
                    assert np.array_equal(draws[:min(a.resamples)],
                                          S.resample_weights(n, min(a.resamples), np.random.default_rng(s)))
                    for b, row in enumerate(draws):
                        w = np.zeros(a.pool)
                        np.add.at(w, idx, row)
                        mine, theirs = pop.recovered(w, pop.circuit(w)), rf.values[b]
                        kept = E.discover(vals, totals, a.threshold, row, size=size)
                        own = frozenset(c for e, k in zip(es, kept) if k for c in (e.sender, e.receiver)
                                        if isinstance(c, (Head, MLP))) or None
                        if own != pop.circuit(w):
                            # EAP on the sample and on the pool are batched apart: an edge within
                            # rounding of the threshold may go either way
                            differed += 1
                        elif (mine is None) != (theirs is None) or (
                                mine is not None and abs(mine - theirs) > 1e-4 * max(1.0, abs(theirs))):
                            print(f"  n={n} sample {s} resample {b}: {mine} the pool's way, {theirs} the function's")
                            ok = False
                        else:
                            checked += 1
            for b in a.resamples:
                cell = cells[b]
                ratios = np.asarray(cell["ratio"])
                iqr = np.quantile(ratios, [0.25, 0.75]) if len(ratios) else (np.nan, np.nan)
                print(f"{n:>4} {b:>4} {t_mean:>11.3f} [{t_lo:>6.3f}, {t_hi:>6.3f}] {np.mean(cell['holds']):>12.3f} "
                      f"{np.mean(cell['mean']):>10.3f} {np.median(ratios):>11.2f} [{iqr[0]:.2f}, {iqr[1]:.2f}] "
                      f"{np.mean(cell['wide']):>22.3f} {cell['undefined']:>9}")
            print(f"      {runs / max(1, a.samples):.1f} distinct circuits run per sample, {time.perf_counter() - t0:.0f} s; "
                  f"identity: {checked} resampled values equal the population's way"
                  + (f", {differed} discovered another circuit (an edge at the threshold)" if differed else ""))
            ok = ok and checked > 0
    print(f"total {time.perf_counter() - began:.0f} s; identity (the function's resampled values against the "
          f"population's way, first {a.checked} samples per cell): {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
