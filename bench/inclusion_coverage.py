"""Coverage of the inclusion-frequency intervals of ``edge_stability.stability`` (issue #26 item 3).

    .venv/bin/python bench/inclusion_coverage.py                  # every cell, 400 samples each
    .venv/bin/python bench/inclusion_coverage.py --samples 100 --cells borderline-32

An edge's inclusion frequency (``Stability.frequency``) is the share of ``B`` bootstrap
resamples whose discovery keeps it, with a Clopper-Pearson interval over the ``B`` resamples.
``Stability.new_prompts`` is the probability that discovery on a *new* sample of as many
prompts keeps it, with an interval from the per-prompt margins. What does each cover, and how
often? The populations are those of bench/jaccard_coverage.py (its ``draw``: 6 core edges at
0.25 of the corruption's effect, 2 or 12 borderline edges from 0.03 to 0.08 around the 0.05
threshold, 60 null edges; normal or Student-t(3) noise), in its cells and two of 8 prompts. Per
cell:

* the **new-prompts target** of each edge, ``p_e``: the share of 4,000 independent samples of
  ``n`` prompts whose discovery keeps it (Monte-Carlo s.e. at most 0.008);
* per seeded sample (``--samples``), the **bootstrap target** of each edge: the share of 4,000
  resamples of that sample whose discovery keeps it (what the frequency's interval is built for);
* the intervals of ``stability(sample, resamples=B, seed=s)``, and of ``stability([sample,
  second sample])`` (two independently drawn sets, as the IOI claim does).

Printed per cell, over the edges whose ``p_e`` lies in [0.02, 0.98] (the others are decided
almost surely either way; their counts are printed too) and over every (sample, edge): how often
the frequency's interval covers its bootstrap target; how often its lower bound is at or below
``p_e`` (what ``assert_frequency_above`` is read as: 97.5% for an exact one-sided bound) and its
upper bound at or above; the same for ``new_prompts``; its mean width; and the false passes that
matter: of the (sample, edge) pairs with ``p_e <= 0.8``, how often a lower bound exceeded 0.8
(``assert_frequency_above(edge, 0.8)`` passing on an edge that new prompts keep at most 80% of
the time). Deterministic: sample ``s`` of cell ``c`` draws from ``numpy.random.default_rng([--seed,
c, s])``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from jaccard_coverage import CELLS as SHARED, LEVEL, THRESHOLD, cell_arguments, draw, scores  # noqa: E402

from pytest_circuits.techniques import edge_stability as S  # noqa: E402
from pytest_circuits.techniques import edges as E  # noqa: E402

TARGET = 4000
BAND = (0.02, 0.98)
CUT = 0.8
#: the Jaccard bench's cells, and two of 8 prompts (n, borderline edges, heavy-tailed, B)
CELLS = {**SHARED, "borderline-8": (8, 12, False, 20), "heavy-8": (8, 12, True, 20)}


def new_prompts_target(n: int, borderline: int, heavy: bool, rng) -> np.ndarray:
    """``[E]``: the share of ``TARGET`` independent samples of ``n`` prompts keeping each edge."""
    kept = 0
    for _ in range(TARGET):
        v, t = draw(rng, n, borderline, heavy)
        kept = kept + E.discover(v, t, THRESHOLD).astype(np.int64)
    return np.asarray(kept, dtype=np.float64) / TARGET


def bootstrap_target(values, totals, rng) -> np.ndarray:
    w = S.resample_weights(values.shape[1], TARGET, rng)
    return E.discover(values, totals, THRESHOLD, w).mean(0)


class Tally:
    """Counts of (sample, edge) pairs: bounds against targets, widths, false passes at CUT."""

    def __init__(self) -> None:
        self.n = self.low = self.high = self.both = self.under = self.false = 0
        self.width = 0.0

    def add(self, lower: float, upper: float, truth: float) -> None:
        self.n += 1
        self.low += lower <= truth + 1e-12
        self.high += upper >= truth - 1e-12
        self.both += lower <= truth + 1e-12 and upper >= truth - 1e-12
        self.width += upper - lower
        if truth <= CUT:
            self.under += 1
            self.false += lower > CUT

    def row(self) -> str:
        n = max(self.n, 1)
        fp = f"{self.false}/{self.under}" if self.under else "-"
        return (f"{self.both / n:.3f} | {self.low / n:.3f} | {self.high / n:.3f} | {self.width / n:.3f} | {fp}")


def run_cell(index: int, name: str, samples: int, seed: int) -> dict:
    n, borderline, heavy, B = CELLS[name]
    start = time.perf_counter()
    truth = new_prompts_target(n, borderline, heavy, np.random.default_rng([seed, index, 10**6]))
    band = np.flatnonzero((truth >= BAND[0]) & (truth <= BAND[1]))
    freq, new, across_freq, across_new = Tally(), Tally(), Tally(), Tally()
    boot_cover = boot_n = 0
    for s in range(samples):
        rng = np.random.default_rng([seed, index, s])
        values, totals = draw(rng, n, borderline, heavy)
        one = scores(values, totals)
        st = S.stability(one, threshold=THRESHOLD, resamples=B, seed=s, level=LEVEL, record=False)
        boot = bootstrap_target(values, totals, rng)
        second = scores(*draw(rng, n, borderline, heavy))
        both = S.stability([one, second], threshold=THRESHOLD, resamples=B, seed=s, level=LEVEL, record=False)
        for e in band:
            edge = st.edges[e]
            f = st.frequency(edge, record=False)
            boot_n += 1
            boot_cover += f.lower <= boot[e] <= f.upper
            freq.add(f.lower, f.upper, truth[e])
            m = st.new_prompts(edge)
            new.add(m.lower, m.upper, truth[e])
            f2 = both.frequency(edge, record=False)
            across_freq.add(f2.lower, f2.upper, truth[e])
            m2 = both.new_prompts(edge)
            across_new.add(m2.lower, m2.upper, truth[e])
    return {"cell": name, "n": n, "B": B, "band": len(band), "edges": len(truth),
            "p": ", ".join(f"{truth[e]:.2f}" for e in band), "boot": boot_cover / max(boot_n, 1),
            "freq": freq.row(), "new": new.row(), "across_freq": across_freq.row(), "across_new": across_new.row(),
            "seconds": time.perf_counter() - start}


def main() -> None:
    args, names = cell_arguments(__doc__, CELLS)
    print(f"95% inclusion intervals of stability(), {args.samples} samples a cell, seed {args.seed}; per cell the "
          f"edges whose new-prompts inclusion probability p_e (from {TARGET} new samples) lies in {list(BAND)}")
    print("| cell | n | B | edges in band: p_e | interval | covers p_e | lower <= p_e | upper >= p_e | "
          f"mean width | lower > {CUT} where p_e <= {CUT} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        r = run_cell(list(CELLS).index(name), name, args.samples, args.seed)
        head = f"| {r['cell']} | {r['n']} | {r['B']} | {r['band']} of {r['edges']}: {r['p']}"
        print(f"{head} | frequency (covers its bootstrap target: {r['boot']:.3f}) | {r['freq']} |")
        print(f"| | | | | new_prompts | {r['new']} |")
        print(f"| | | | | frequency across two sets | {r['across_freq']} |")
        print(f"| | | | | new_prompts across two sets | {r['across_new']} |", flush=True)
        print(f"<!-- {r['cell']}: {r['seconds']:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
