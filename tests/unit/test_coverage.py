"""A fast subset of bench/coverage.py: the cells where the old intervals covered worst.

Each cell draws 200 seeded samples with a known true value and counts how often the 95%
interval holds it. With 200 replicates the binomial standard error at 0.95 is 0.015, so
the bar of 0.90 sits 3 standard errors below the 0.945 the new method measures in the
full run (1,000 replicates, docs/statistics.md): a correct method fails it about once in
a thousand seeds, and the same data are drawn every run, so the result is deterministic.
Each test also runs the method used before on the same samples and checks that it falls
below the bar: the test can tell the two apart.
"""

import math

import numpy as np
import pytest

from pytest_circuits import Measurement
from pytest_circuits import stats

REPLICATES = 200
BAR = 0.90


def _lognormal(rng, n):
    return rng.lognormal(0.0, 1.0, n), math.exp(0.5)


def _paired(rng, n):
    # per example clean - ablated, the ablation keeping a Uniform(0, 1) fraction of clean
    clean = rng.lognormal(0.0, 1.0, n)
    return clean - rng.uniform(0.0, 1.0, n) * clean, math.exp(0.5) / 2


def _coverage(gen, n, new, old, seed):
    rng = np.random.default_rng(seed)
    hits_new = hits_old = 0
    for r in range(REPLICATES):
        data, truth = gen(rng, n)
        lo, hi = new(data, r)
        hits_new += lo <= truth <= hi
        lo, hi = old(data, r)
        hits_old += lo <= truth <= hi
    return hits_new / REPLICATES, hits_old / REPLICATES


def _new_mean(x, seed):
    m = Measurement.from_values("x", x, seed=seed, record=False)
    return m.lower, m.upper


def _old_mean(x, seed):
    return stats.bca_interval(x, 0.95, 4000, seed)


@pytest.mark.parametrize("gen", [_lognormal, _paired], ids=["lognormal", "paired-skewed"])
def test_mean_interval_covers_at_n10(gen):
    new, old = _coverage(gen, 10, _new_mean, _old_mean, seed=11)
    assert new >= BAR, f"coverage {new:.3f} (old BCa {old:.3f})"
    assert old < BAR, f"the old BCa covers {old:.3f}: this cell no longer tells the methods apart"


def _ratio_skew(rng, n):
    den = rng.lognormal(0.0, 1.0, n)
    return (rng.beta(2.0, 2.0, n) * den, den), 0.5


def test_ratio_interval_covers_at_n20():
    def new(d, seed):
        m = Measurement.from_ratio("r", d[0], d[1], seed=seed, record=False)
        return m.lower, m.upper

    def old(d, seed):
        return stats.percentile_ratio_interval(d[0], d[1], 0.95, 4000, seed)

    new_cov, old_cov = _coverage(_ratio_skew, 20, new, old, seed=12)
    assert new_cov >= BAR, f"coverage {new_cov:.3f} (old percentile {old_cov:.3f})"
    assert old_cov < BAR, f"the old percentile interval covers {old_cov:.3f}"


def test_proportion_interval_covers_at_n12():
    # Bernoulli(0.9) at n=12: the exact interval's coverage is computable, no simulation:
    # sum over k of P(k) * [the interval from k holds 0.9].
    p, n = 0.9, 12
    exact = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k)
                for k in range(n + 1)
                if (lambda b: b[0] <= p <= b[1])(stats.clopper_pearson(k, n, 0.95)))
    assert exact >= 0.95          # Clopper-Pearson is conservative by construction
    # what the old BCa gave on the same k: all 12 ones is [1, 1], which misses 0.9
    old = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k)
              for k in range(n + 1)
              if (lambda b: b[0] <= p <= b[1])(
                  stats.bca_interval(np.array([1.0] * k + [0.0] * (n - k)), 0.95, 4000, 0)))
    assert old < BAR, old
