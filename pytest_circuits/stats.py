"""Interval maths for :mod:`pytest_circuits.measurement` (numpy and the standard library only).

Three intervals, each chosen by a seeded coverage simulation (``bench/coverage.py``; the
measured table and the reasons are in ``docs/statistics.md``):

* :func:`mean_interval` -- the mean of continuous per-example values: the union of a
  studentized (bootstrap-t) interval at Hesterberg's expanded level and the Student-t
  interval at the nominal level.
* :func:`clopper_pearson` -- the mean of 0/1 values: the exact binomial interval
  (12 of 12 gives a 95% lower bound of 0.735, never 1).
* :func:`ratio_interval` -- a ratio of means over paired examples: the same construction on
  the delta-method (linearised) standard error of the ratio.

:func:`bca_interval` and :func:`percentile_ratio_interval` are the methods used before; they
are kept so the benchmark can compare old and new in one run.

Every resampling function is deterministic: the same values, level, resamples and seed give
the same interval. Resamples are drawn in chunks so ``n x resamples`` never allocates more
than about 8M indices at once.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np

_ND = NormalDist()
_CHUNK = 8_000_000


# ----------------------------------------------------------------------------- special functions
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), valid for
    ``x < (a + 1) / (a + b + 2)``."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _bisect(f, lo: float, hi: float, target: float) -> float:
    """The ``x`` in ``[lo, hi]`` where the increasing ``f`` reaches ``target``."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile of the Beta(a, b) distribution, by bisection on :func:`betainc`."""
    return _bisect(lambda p: betainc(a, b, p), 0.0, 1.0, q)


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=4096)
def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t (``0 < p < 1``), by bisection on :func:`t_cdf`."""
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    hi = 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    return _bisect(lambda t: t_cdf(t, df), 0.0, hi, p)


# ----------------------------------------------------------------------------- intervals
def expanded_level(level: float, n: int) -> float:
    """Hesterberg's small-sample expansion of a bootstrap level.

    The bootstrap resamples the sample, whose spread and tails are narrower than the
    population's (by ``sqrt((n-1)/n)`` for the spread, more for skewness at small n).
    The tail probability used is ``alpha' / 2 = 1 - Phi(sqrt(n / (n-1)) * t_{1-alpha/2, n-1})``:
    at 95%, 0.983 for n=10, 0.963 for n=30, 0.952 for n=200, tending to the level itself.
    """
    if n < 2:
        return level
    z = math.sqrt(n / (n - 1.0)) * t_ppf(0.5 + level / 2.0, n - 1)
    return 2.0 * _ND.cdf(z) - 1.0


def is_binary(values: np.ndarray) -> bool:
    """True when every value is exactly 0 or 1."""
    return bool(np.all((values == 0.0) | (values == 1.0)))


def clopper_pearson(successes: int, n: int, level: float) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion.

    ``lower = Beta^-1(alpha/2; k, n-k+1)`` (0 when ``k = 0``),
    ``upper = Beta^-1(1-alpha/2; k+1, n-k)`` (1 when ``k = n``).
    """
    alpha = 1.0 - level
    lo = 0.0 if successes == 0 else beta_ppf(alpha / 2.0, successes, n - successes + 1)
    hi = 1.0 if successes == n else beta_ppf(1.0 - alpha / 2.0, successes + 1, n - successes)
    return float(lo), float(hi)


def _resample_sums(columns: tuple[np.ndarray, ...], resamples: int, seed: int,
                   products: tuple[tuple[int, int], ...], index_dtype: type = np.int32,
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per resample: the mean of each column and the mean of each product of two columns.

    32-bit indices draw and gather faster than numpy's default 64-bit ones (the methods
    before used 64-bit, and keep them so they reproduce their old intervals exactly)."""
    n = columns[0].shape[0]
    rng = np.random.default_rng(seed)
    means = [np.empty(resamples) for _ in columns]
    prods = [np.empty(resamples) for _ in products]
    chunk = max(1, _CHUNK // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n), dtype=index_dtype)
        gathered = [col[idx] for col in columns]
        for out, g in zip(means, gathered):
            out[start:stop] = g.mean(axis=1)
        for out, (i, j) in zip(prods, products):
            out[start:stop] = np.einsum("ij,ij->i", gathered[i], gathered[j]) / n
    return means, prods


def _studentized(t_stats: np.ndarray, theta: float, se: float, level: float, n: int,
                 ) -> tuple[float, float]:
    """Bootstrap-t bounds from resampled ``(theta* - theta) / se*``, at the expanded level.

    A resample whose own standard error is 0 (it drew one value n times) has an infinite
    statistic; a bound that falls on one is returned infinite, for the caller's union with
    the t-interval to replace."""
    a = (1.0 - expanded_level(level, n)) / 2.0
    # Order statistics on the outer side of each quantile (never an interpolation, which
    # between a finite statistic and an infinite one gives a huge "finite" bound: 1e148 at
    # n=5); the bounds are at most one resample wider than interpolated ones.
    q_lo = float(np.quantile(t_stats, a, method="lower"))
    q_hi = float(np.quantile(t_stats, 1.0 - a, method="higher"))
    lo = theta - q_hi * se if math.isfinite(q_hi) else -math.inf
    hi = theta - q_lo * se if math.isfinite(q_lo) else math.inf
    return float(lo), float(hi)


def _union_with_t(boot: tuple[float, float], theta: float, se: float, level: float, n: int,
                  ) -> tuple[float, float]:
    tq = t_ppf(0.5 + level / 2.0, n - 1)
    t_lo, t_hi = theta - tq * se, theta + tq * se
    lo = t_lo if not math.isfinite(boot[0]) else min(boot[0], t_lo)
    hi = t_hi if not math.isfinite(boot[1]) else max(boot[1], t_hi)
    return float(lo), float(hi)


def _t_stats(diff: np.ndarray, se_star: np.ndarray, se: float) -> np.ndarray:
    # A resample of one repeated value has se* = 0 up to rounding (relative 1e-8 or so);
    # 1e-6 of the sample's se separates it from any real spread.
    degenerate = se_star <= 1e-6 * se
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / se_star
    inf = np.where(diff > 1e-12 * se, np.inf, np.where(diff < -1e-12 * se, -np.inf, 0.0))
    return np.where(degenerate, inf, t)


def mean_interval(values: np.ndarray, level: float, resamples: int, seed: int,
                  ) -> tuple[float, float]:
    """Interval for the mean of continuous values: the union of

    * the bootstrap-t interval ``[m - q*_{1-a'} se, m - q*_{a'} se]``, where ``q*`` are
      quantiles of ``T* = (m* - m) / se*`` over seeded resamples and ``a'`` the tail of
      :func:`expanded_level`, and
    * the Student-t interval ``m -+ t_{1-a, n-1} se`` at the nominal level.

    Constant values (and n=1) give ``(m, m)``; the caller flags it.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    theta = float(values.mean())
    centered = values - theta
    sd = float(np.sqrt((centered @ centered) / (n - 1))) if n > 1 else 0.0
    if n == 1 or sd == 0.0:
        return theta, theta
    se = sd / math.sqrt(n)
    (m,), (ss,) = _resample_sums((centered,), resamples, seed, ((0, 0),))
    var = np.maximum(ss - m * m, 0.0) * (n / (n - 1.0))
    t_stats = _t_stats(m, np.sqrt(var / n), se)
    return _union_with_t(_studentized(t_stats, theta, se, level, n), theta, se, level, n)


def ratio_interval(num: np.ndarray, den: np.ndarray, level: float, resamples: int, seed: int,
                   ) -> tuple[float, float]:
    """Interval for ``R = mean(num) / mean(den)`` over paired examples.

    The standard error is the delta method's: ``se(R) = sd(num_i - R den_i) / (sqrt(n) |mean(den)|)``.
    The interval is the union of the bootstrap-t interval of ``(R* - R) / se*`` (each
    resample with its own ``R*`` and ``se*``) at the expanded level and ``R -+ t se(R)``.
    Resamples whose denominator mean is 0 are dropped. The caller checks ``mean(den) != 0``.
    """
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    n = num.shape[0]
    r = float(num.mean() / den.mean())
    resid = num - r * den
    sd = float(np.sqrt((resid @ resid) / (n - 1))) if n > 1 else 0.0
    if n == 1 or sd == 0.0:
        return r, r
    se = sd / (math.sqrt(n) * abs(float(den.mean())))
    (mn, md), (snn, sdd, snd) = _resample_sums((num, den), resamples, seed, ((0, 0), (1, 1), (0, 1)))
    ok = np.abs(md) > 1e-12 * max(1e-300, float(np.abs(den).max()))
    mn, md, snn, sdd, snd = mn[ok], md[ok], snn[ok], sdd[ok], snd[ok]
    r_star = mn / md
    # mean over the resample of (num - r* den)^2, from the resample's sums
    msq = snn - 2.0 * r_star * snd + r_star * r_star * sdd
    mres = mn - r_star * md                       # 0 up to rounding
    var = np.maximum(msq - mres * mres, 0.0) * (n / (n - 1.0))
    se_star = np.sqrt(var / n) / np.abs(md)
    t_stats = _t_stats(r_star - r, se_star, se)
    return _union_with_t(_studentized(t_stats, r, se, level, n), r, se, level, n)


# ----------------------------------------------------------------------------- the methods before
def bca_interval(values: np.ndarray, level: float, resamples: int, seed: int,
                 ) -> tuple[float, float]:
    """BCa bootstrap interval of the mean: the default before the coverage study (it covers
    0.81-0.89 at n=10 on skewed or heavy-tailed values; see docs/statistics.md)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n == 1:
        v = float(values[0])
        return v, v
    (means,), _ = _resample_sums((values,), resamples, seed, (), np.int64)
    alpha = (1.0 - level) / 2.0
    theta = values.mean()
    prop = float(np.mean(means < theta)) + 0.5 * float(np.mean(means == theta))
    prop = min(max(prop, 1.0 / (resamples + 1)), resamples / (resamples + 1))
    z0 = _ND.inv_cdf(prop)
    jack = (values.sum() - values) / (n - 1)
    d = jack.mean() - jack
    denom = 6.0 * float((d ** 2).sum()) ** 1.5
    accel = float((d ** 3).sum()) / denom if denom > 0 else 0.0
    qs = []
    for a in (alpha, 1.0 - alpha):
        z = _ND.inv_cdf(a)
        qs.append(_ND.cdf(z0 + (z0 + z) / (1.0 - accel * (z0 + z))))
    lo, hi = np.quantile(means, qs)
    return float(lo), float(hi)


def percentile_ratio_interval(num: np.ndarray, den: np.ndarray, level: float, resamples: int,
                              seed: int) -> tuple[float, float]:
    """Paired percentile bootstrap of a ratio of means: ``from_ratio``'s interval before."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    if num.shape[0] == 1:
        r = float(num[0] / den[0])
        return r, r
    (mn, md), _ = _resample_sums((num, den), resamples, seed, (), np.int64)
    ok = np.abs(md) > 1e-12
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(mn[ok] / md[ok], [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- F1 of a classifier
# Used by :mod:`pytest_circuits.techniques.probing`. F1 is not a mean of per-example values,
# so its interval is a Bayesian bootstrap (Rubin 1981) over the held-out examples with
# Jeffreys pseudo-counts on TP, FP and FN (after Goutte & Gaussier 2005): each draw weights
# example i by w_i ~ Gamma(1) and adds one pseudo TP, FP and FN with weights ~ Gamma(1/2);
# F1* = 2(TP_w + p_TP) / (2(TP_w + p_TP) + FP_w + p_FP + FN_w + p_FN). With no held-out error
# the interval is still not [1, 1]: see :func:`f1_perfect_lower`.
def f1_counts(y: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example numerator ``2 TP_i`` and denominator ``2TP_i + FP_i + FN_i``: ``[R, n]``
    for predictions ``[R, n]`` (one row per repeat) of labels ``y`` ``[n]``."""
    yb = np.asarray(y).astype(bool)[None, :]
    pb = np.asarray(preds).astype(bool)
    tp = (pb & yb).astype(np.float64)
    fp = (pb & ~yb).astype(np.float64)
    fn = (~pb & yb).astype(np.float64)
    return 2 * tp, 2 * tp + fp + fn


def f1_weights(n: int, resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gamma(1) weight per held-out example (a Dirichlet(1, ..., 1) once normalised: Rubin's
    Bayesian bootstrap) and Gamma(1/2) pseudo-counts for the TP, FP and FN cells (Jeffreys).
    F1 is scale-free in the weights, so they need no normalising."""
    return rng.gamma(1.0, size=(resamples, n)), rng.gamma(0.5, size=(resamples, 3))


def f1_stats(y: np.ndarray, preds: np.ndarray, weights: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """F1 of every repeat under every draw of weights ``(G [B, n], P [B, 3])`` -> ``[B, R]``."""
    G, P = weights
    num, den = f1_counts(y, preds)
    N = G @ num.T + 2 * P[:, :1]
    D = G @ den.T + 2 * P[:, :1] + P[:, 1:2] + P[:, 2:3]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(D > 0, N / np.where(D > 0, D, 1.0), 0.0)


def f1_contributions(y: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Per-example values ``2TP_i / mean(2TP + FP + FN)``, averaged over repeats: their mean
    is the mean over repeats of F1."""
    num, den = f1_counts(y, preds)
    dm = den.mean(1, keepdims=True)
    v = np.where(dm > 0, num / np.where(dm > 0, dm, 1.0), 0.0)
    return v.mean(0)


def f1_draws(y: np.ndarray, preds: np.ndarray, weights: tuple[np.ndarray, np.ndarray],
             rng: np.random.Generator) -> np.ndarray:
    """Per-draw F1 averaged over repeats (repeats resampled when there are several): ``[B]``."""
    f = f1_stats(y, preds, weights)                   # [B, R]
    R = f.shape[1]
    if R == 1:
        return f[:, 0]
    pick = rng.integers(0, R, size=(f.shape[0], R))
    return np.take_along_axis(f, pick, axis=1).mean(1)


def f1_interval(y: np.ndarray, preds: np.ndarray, level: float, resamples: int, seed: int,
                ) -> tuple[float, float]:
    """Central ``level`` interval of F1 (mean over the repeats ``preds`` ``[R, n]``)."""
    preds = np.asarray(preds).reshape(-1, np.asarray(y).shape[0])
    rng = np.random.default_rng([seed, 3])
    draws = f1_draws(y, preds, f1_weights(np.asarray(y).shape[0], resamples, rng), rng)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def f1_difference_interval(ya: np.ndarray, pa: np.ndarray, yb: np.ndarray, pb: np.ndarray, *,
                           paired: bool, level: float, resamples: int, seed: int) -> tuple[float, float]:
    """Interval of ``F1(a) - F1(b)``: paired (both sides share each draw's example weights and
    pseudo-counts; the same held-out examples) or with independent draws."""
    rng = np.random.default_rng([seed, 4])
    ca = f1_weights(np.asarray(ya).shape[0], resamples, rng)
    cb = ca if paired else f1_weights(np.asarray(yb).shape[0], resamples, rng)
    diff = f1_draws(ya, pa, ca, rng) - f1_draws(yb, pb, cb, rng)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(diff, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def f1_perfect_lower(n_positive: int, n_negative: int, level: float = 0.95, resamples: int = 4000,
                     seed: int = 0) -> float:
    """The lower bound of F1's interval when every held-out example is classified right:
    the most a claim can assert with ``n_positive`` and ``n_negative`` held-out examples
    (e.g. 22 and 66 give about 0.92, 11 and 33 about 0.84, at 95%)."""
    y = np.r_[np.ones(int(n_positive)), np.zeros(int(n_negative))].astype(np.int8)
    return f1_interval(y, y[None, :], level, resamples, seed)[0]
