"""Coverage of the Jaccard stability interval of ``edge_stability.stability`` (issue #26 item 3).

    .venv/bin/python bench/jaccard_coverage.py                   # every cell, 400 samples each
    .venv/bin/python bench/jaccard_coverage.py --samples 100 --cells stable-32

``stability(scores, resamples=B)`` reports the Jaccard overlap of the edge sets discovered on
two bootstrap resamples of the prompts, with an interval from ``B // 2`` disjoint pairs. What
does that interval cover, and how often? Each cell is a population of prompts whose per-prompt
edge values are drawn from a known model (below); for each of ``--samples`` seeded samples of
``n`` prompts the real ``stability`` code (``EdgeScores`` in, nothing re-implemented) builds the
interval, and two targets are checked:

* **bootstrap**: the quantity the interval is built for, the expected Jaccard of two bootstrap
  resamples *of this sample* (4,000 pairs of resamples of the same sample);
* **new prompts**: what a researcher reads it as, the expected Jaccard of the circuits found on
  two *independent* samples of ``n`` prompts of the population (4,000 pairs of samples, once a cell).

A third column checks the across-task form on new prompts: a second, independent sample of ``n``
prompts is drawn beside the first, ``stability([first, second])`` gives the overlap *across* the
two (each resampled), and the check is whether its interval covers the new-prompts target.

Printed per cell: both targets (the second with its Monte-Carlo standard error), the mean
estimate, how often the 95% interval covers each target (and, in brackets, how often its lower
bound is at or below the new-prompts target: what ``assert_jaccard_above`` relies on, 97.5% for
an exact one-sided bound) (binomial standard error
``sqrt(0.95 * 0.05 / samples)``, 0.011 at 400), and the mean width. Deterministic: sample ``s``
of cell ``c`` draws from ``numpy.random.default_rng([--seed, c, s])`` and resamples with
``stability(..., seed=s)``.

The population of a cell: prompt ``i``'s whole-corruption effect ``T_i = -LogNormal(0, 0.5)``;
edge ``e``'s value ``v_ei = f_e T_i + s_e |mean T| z_ei`` (``z`` standard normal, or Student t
with 3 degrees of freedom in the heavy-tailed cells). ``f_e``: 6 core edges at 0.25, ``m``
borderline edges with fractions evenly from 0.03 to 0.08 (discovery's threshold is 0.05), and
60 null edges at 0; ``s_e`` is 0.1 for core and borderline edges, 0.05 for null edges.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pytest_circuits.techniques import edge_stability as S  # noqa: E402
from pytest_circuits.techniques import edges as E  # noqa: E402

LEVEL = 0.95
THRESHOLD = 0.05
TARGET_PAIRS = 4000
CORE, NULL = 6, 60

#: name: (n prompts, borderline edges, heavy-tailed noise, resamples B)
CELLS = {
    "stable-32": (32, 2, False, 20),
    "borderline-32": (32, 12, False, 20),
    "heavy-32": (32, 12, True, 20),
    "borderline-100": (100, 12, False, 20),
    "borderline-32-B60": (32, 12, False, 60),
}


def population(borderline: int):
    fractions = np.concatenate([np.full(CORE, 0.25), np.linspace(0.03, 0.08, borderline), np.zeros(NULL)])
    spreads = np.concatenate([np.full(CORE + borderline, 0.1), np.full(NULL, 0.05)])
    return fractions, spreads


def draw(rng, n: int, borderline: int, heavy: bool):
    """``(values [E, n], totals [n])`` of ``n`` prompts of the cell's population."""
    f, s = population(borderline)
    totals = -rng.lognormal(0.0, 0.5, n)
    z = rng.standard_t(3, (len(f), n)) / math.sqrt(3.0) if heavy else rng.standard_normal((len(f), n))
    scale = math.exp(0.125)             # |E T| of -LogNormal(0, 0.5)
    return f[:, None] * totals[None, :] + s[:, None] * scale * z, totals


def scores(values, totals) -> E.EdgeScores:
    heads = values.shape[0]             # one edge a head, into the logits: any distinct edges do
    edges = tuple(E.Edge.parse(f"L{e // 8}H{e % 8}->logits") for e in range(heads))
    return E.EdgeScores(components=edges, values=values, attribution="eap", steps=1, task="coverage",
                        totals=totals, clean=np.ones(values.shape[1]))


def mean_jaccard(a, b) -> float:
    vals = [S.jaccard(x, y) for x, y in zip(a, b)]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def bootstrap_target(values, totals, rng) -> float:
    w = S.resample_weights(values.shape[1], 2 * TARGET_PAIRS, rng)
    kept = E.discover(values, totals, THRESHOLD, w)
    return mean_jaccard(kept[0::2], kept[1::2])


def new_prompts_target(n, borderline, heavy, rng) -> tuple[float, float]:
    kept = []
    for _ in range(2 * TARGET_PAIRS):
        v, t = draw(rng, n, borderline, heavy)
        kept.append(E.discover(v, t, THRESHOLD))
    js = np.array([S.jaccard(a, b) for a, b in zip(kept[0::2], kept[1::2])], dtype=float)
    return float(np.nanmean(js)), float(np.nanstd(js) / math.sqrt(np.isfinite(js).sum()))


def run_cell(index: int, name: str, samples: int, seed: int) -> dict:
    n, borderline, heavy, B = CELLS[name]
    start = time.perf_counter()
    truth_new, truth_se = new_prompts_target(n, borderline, heavy, np.random.default_rng([seed, index, 10**6]))
    cov_boot = cov_new = cov_across = low_new = low_across = 0
    widths, estimates, boots, across = [], [], [], []
    used = 0
    for s in range(samples):
        rng = np.random.default_rng([seed, index, s])
        values, totals = draw(rng, n, borderline, heavy)
        st = S.stability(scores(values, totals), threshold=THRESHOLD, resamples=B, seed=s, level=LEVEL,
                         record=False)
        if st.jaccard is None:
            continue
        used += 1
        j = st.jaccard
        target = bootstrap_target(values, totals, rng)
        cov_boot += j.lower <= target <= j.upper
        cov_new += j.lower <= truth_new <= j.upper
        low_new += j.lower <= truth_new
        widths.append(j.upper - j.lower)
        estimates.append(j.mean)
        boots.append(target)
        second = draw(rng, n, borderline, heavy)
        x = S.stability([scores(values, totals), scores(*second)], threshold=THRESHOLD, resamples=B, seed=s,
                        level=LEVEL, record=False).jaccard
        if x is not None:
            cov_across += x.lower <= truth_new <= x.upper
            low_across += x.lower <= truth_new
            across.append(x.mean)
    return {"cell": name, "n": n, "B": B, "samples": used, "new": truth_new, "new_se": truth_se,
            "boot": float(np.mean(boots)), "estimate": float(np.mean(estimates)),
            "cover_boot": cov_boot / used, "cover_new": cov_new / used, "width": float(np.mean(widths)),
            "across": float(np.mean(across)), "cover_across": cov_across / max(len(across), 1),
            "low_new": low_new / used, "low_across": low_across / max(len(across), 1),
            "seconds": time.perf_counter() - start}


def cell_arguments(doc: str, cells: dict = CELLS) -> tuple[argparse.Namespace, list[str]]:
    """``--samples``, ``--seed`` and ``--cells`` (checked against ``cells``), for this bench
    and bench/inclusion_coverage.py, which shares its populations."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", default=",".join(cells))
    args = ap.parse_args()
    names = [c for c in args.cells.split(",") if c]
    unknown = [c for c in names if c not in cells]
    if unknown:
        ap.error(f"unknown cells {unknown}; known: {', '.join(cells)}")
    return args, names


def main() -> None:
    args, names = cell_arguments(__doc__)
    print(f"95% Jaccard interval of stability(), {args.samples} samples a cell, seed {args.seed}; binomial s.e. "
          f"of a coverage {math.sqrt(LEVEL * (1 - LEVEL) / args.samples):.3f}")
    print("| cell | n | B | Jaccard, new prompts (s.e.) | Jaccard, bootstrap (mean) | mean estimate | "
          "covers bootstrap | covers new prompts (lower bound below it) | mean width | "
          "across two samples: mean, covers new prompts (lower bound below it) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        r = run_cell(list(CELLS).index(name), name, args.samples, args.seed)
        print(f"| {r['cell']} | {r['n']} | {r['B']} | {r['new']:.3f} ({r['new_se']:.3f}) | {r['boot']:.3f} | "
              f"{r['estimate']:.3f} | {r['cover_boot']:.3f} | {r['cover_new']:.3f} ({r['low_new']:.3f}) | {r['width']:.3f} | "
              f"{r['across']:.3f}, {r['cover_across']:.3f} ({r['low_across']:.3f}) |", flush=True)


if __name__ == "__main__":
    main()
