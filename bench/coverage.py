"""Coverage of Measurement's 95% intervals: the methods before and now, in one seeded run.

    .venv/bin/python bench/coverage.py                 # full table: 1,000 replicates per cell
    .venv/bin/python bench/coverage.py --replicates 200 --cells lognormal,paired

For every cell (a distribution of per-example values and a sample size n) it draws
``replicates`` samples whose true mean (or ratio of means) is known, builds the interval
with the real defaults (4,000 resamples), and counts how often it contains the truth.
Each replicate's resampling seed is its index, so the run is deterministic; the data come
from ``numpy.random.default_rng([--seed, cell number])``.

Printed per cell: coverage (binomial standard error ``sqrt(0.95 * 0.05 / replicates)``,
0.007 at 1,000) and the mean and median width, old and new. ``old`` is the BCa bootstrap of the mean
(0/1 values included) and the percentile bootstrap of a ratio; ``new`` is what
``Measurement.from_values`` / ``from_ratio`` build now. docs/statistics.md has the table.

The distributions (true value in brackets):
  normal      N(0, 1)                                                   [0]
  lognormal   LogNormal(0, 1)                                           [e^0.5]
  bernoulli   Bernoulli(0.9) (0/1 values)                               [0.9]
  t3          Student t, 3 degrees of freedom                          [0]
  paired      per-example clean - ablated score, where clean ~ LogNormal(0, 1) and the
              ablation keeps a Uniform(0, 1) fraction U of it: (1 - U) * clean   [e^0.5 / 2]
  mixture     (stress row, outside the target) an ablation effect that is N(0.1, 0.2) on
              80% of prompts and Exponential(mean 2) on 20%                 [0.48]
  ratio       ratio of means, den ~ Gamma(2, 1), num = 0.5 den + N(0, 0.5)   [0.5]
  ratio-skew  ratio of means, den ~ LogNormal(0, 1), num = B den, B ~ Beta(2, 2)  [0.5]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pytest_circuits import stats  # noqa: E402
from pytest_circuits.measurement import Measurement  # noqa: E402

LEVEL = 0.95
E05 = math.exp(0.5)


def _normal(rng, n):
    return rng.normal(0.0, 1.0, n), 0.0


def _lognormal(rng, n):
    return rng.lognormal(0.0, 1.0, n), E05


def _bernoulli(rng, n):
    return (rng.uniform(size=n) < 0.9).astype(np.float64), 0.9


def _t3(rng, n):
    return rng.standard_t(3, n), 0.0


def _paired(rng, n):
    clean = rng.lognormal(0.0, 1.0, n)
    ablated = rng.uniform(0.0, 1.0, n) * clean
    return clean - ablated, E05 / 2.0


def _mixture(rng, n):
    big = rng.uniform(size=n) < 0.2
    return np.where(big, rng.exponential(2.0, n), rng.normal(0.1, 0.2, n)), 0.2 * 2.0 + 0.8 * 0.1


def _ratio(rng, n):
    den = rng.gamma(2.0, 1.0, n)
    return (0.5 * den + rng.normal(0.0, 0.5, n), den), 0.5


def _ratio_skew(rng, n):
    den = rng.lognormal(0.0, 1.0, n)
    return (rng.beta(2.0, 2.0, n) * den, den), 0.5


MEAN_CELLS = {"normal": _normal, "lognormal": _lognormal, "bernoulli": _bernoulli, "t3": _t3,
              "paired": _paired, "mixture": _mixture}
RATIO_CELLS = {"ratio": _ratio, "ratio-skew": _ratio_skew}
SIZES = {"ratio": (20, 50, 200), "ratio-skew": (20, 50, 200)}
DEFAULT_SIZES = (10, 30, 200)


def old_mean(x, seed):
    return stats.bca_interval(x, LEVEL, 4000, seed)


def new_mean(x, seed, proportion=False):
    # A proportion is declared as one (the interval follows the quantity, not its values).
    m = Measurement.from_values("x", x, seed=seed, record=False,
                                method="clopper-pearson" if proportion else "auto")
    return m.lower, m.upper


def old_ratio(data, seed):
    return stats.percentile_ratio_interval(data[0], data[1], LEVEL, 4000, seed)


def new_ratio(data, seed):
    m = Measurement.from_ratio("r", data[0], data[1], seed=seed, record=False)
    return m.lower, m.upper


def run_cell(name: str, n: int, replicates: int, seed: int, cell_no: int) -> dict:
    gen = MEAN_CELLS.get(name) or RATIO_CELLS[name]
    old, new = (old_mean, new_mean) if name in MEAN_CELLS else (old_ratio, new_ratio)
    if name == "bernoulli":
        new = lambda x, seed: new_mean(x, seed, proportion=True)  # noqa: E731
    rng = np.random.default_rng([seed, cell_no])
    hit = {"old": 0, "new": 0}
    width: dict[str, list[float]] = {"old": [], "new": []}
    point = 0
    for r in range(replicates):
        data, truth = gen(rng, n)
        for key, f in (("old", old), ("new", new)):
            lo, hi = f(data, r)
            hit[key] += lo <= truth <= hi
            width[key].append(hi - lo)
            if key == "old":
                point += lo == hi
    return {"cell": name, "n": n, "old": hit["old"] / replicates, "new": hit["new"] / replicates,
            "w_old": float(np.mean(width["old"])), "w_new": float(np.mean(width["new"])),
            "m_old": float(np.median(width["old"])), "m_new": float(np.median(width["new"])),
            "zero_width_old": point / replicates}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--replicates", type=int, default=1000)
    p.add_argument("--seed", type=int, default=20240610)
    p.add_argument("--cells", default=",".join([*MEAN_CELLS, *RATIO_CELLS]))
    p.add_argument("--sizes", default="", help="comma-separated n, instead of each cell's own")
    args = p.parse_args(argv)
    names = [c for c in args.cells.split(",") if c]
    unknown = [c for c in names if c not in MEAN_CELLS and c not in RATIO_CELLS]
    if unknown:
        p.error(f"--cells: unknown {unknown}; valid: {[*MEAN_CELLS, *RATIO_CELLS]}")
    se = math.sqrt(LEVEL * (1 - LEVEL) / args.replicates)
    print(f"nominal {LEVEL:.0%}, {args.replicates} replicates per cell (binomial se {se:.3f}), "
          f"4000 resamples, seed {args.seed}")
    print("| values | n | old coverage | new coverage | old width: mean (median) | new width: mean (median) |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    all_names = [*MEAN_CELLS, *RATIO_CELLS]
    for name in names:
        sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
                 else SIZES.get(name, DEFAULT_SIZES))
        for n in sizes:
            res = run_cell(name, n, args.replicates, args.seed, all_names.index(name) * 100_000 + n)
            note = f" ({res['zero_width_old']:.0%} zero-width)" if res["zero_width_old"] > 0 else ""
            print(f"| {name} | {n} | {res['old']:.3f}{note} | {res['new']:.3f} | "
                  f"{res['w_old']:.3g} ({res['m_old']:.3g}) | {res['w_new']:.3g} ({res['m_new']:.3g}) |",
                  flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
