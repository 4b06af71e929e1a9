"""Measurements: per-example values, their mean and a seeded interval.

Every technique returns a :class:`Measurement`. Its one-line repr is what pytest
shows when a claim fails::

    prob_diff[smollm2-135m] = 0.21 [0.17, 0.25] n=200

Claims should assert on an interval bound, never on the mean: ``m.lower > 0.3``
says "even the pessimistic end of the 95% interval is above 0.3". The helpers
:meth:`Measurement.assert_above` / :meth:`assert_below` do that and say which bound
they used.

The interval (maths in :mod:`pytest_circuits.stats`, coverage in docs/statistics.md):

The interval follows what the quantity *is*, never the values that happened to come out:

* a proportion (successes out of trials: accuracy, hit rates, top-1, a share of prompts):
  the exact Clopper-Pearson interval, so 12 of 12 gives ``1 [0.735, 1]``, never ``[1, 1]``.
  A measurement is a proportion when its caller says so (``method="clopper-pearson"``) or
  passes booleans (``pd > 0``: one trial per value, by type);
* any other quantity (a loss, a logit difference, a score), even when every value is 0 or
  1: the union of a studentized bootstrap (bootstrap-t) interval at a small-sample expanded
  level and the Student-t interval. Seeded: the same values always give the same interval.
* :meth:`Measurement.from_ratio`: the same construction on a ratio of means, with the
  delta-method standard error.

A zero-width interval (one value, or all values equal) is kept as ``[v, v]`` but flagged:
``flags`` says why, the repr ends in ``[zero-width: ...]`` and ``to_dict()`` has ``"flags"``.

A measurement made under an intervention that changed nothing (the self-repair measurements
of :mod:`pytest_circuits.techniques.effects` mark themselves, :meth:`Measurement.marked`) is
flagged ``uninformative: ...`` (it changed nothing on nearly every example) or ``partly
uninformative: ...`` (on some): its value is what a no-op gives, whatever the model does, so
it is not evidence of absence. ``null`` is the value an example takes where the
intervention did nothing (0 for a change). The assertions refuse (a
:class:`~pytest_circuits.errors.MeasurementError`, recorded as a failed assertion) every
bound on an uninformative measurement, and on a partly uninformative one every bound that
the null value itself would pass (those the no-op examples pull the mean toward: "no
effect", "below 0.1"); a bound beyond the null value (an effect above 0.5) stays honest,
since the no-op examples only pull the mean away from it.

Arithmetic keeps the pairing. ``a - b`` and ``a + b`` of two Measurements on the same
examples (same n, same labels when both have them, same level) take the per-example
differences or sums and build their own interval (:meth:`from_values`), e.g.
``(te - de).assert_above(0)`` for "the total effect exceeds the direct effect" on the same
prompts; the name reads ``"TE(...) - DE(L9H3)"``. Different n or labels raise
:class:`~pytest_circuits.errors.MeasurementError`. A number ``c``: ``-a``, ``a + c``,
``a - c``, ``c * a``, ``a / c`` map the values and the interval *exactly* (no resampling:
the intervals here are equivariant under ``x -> scale x + shift``; a negative scale swaps
the bounds). A ratio of means (:meth:`from_ratio`) can be scaled but not added to another
Measurement. Every result is recorded like any Measurement.

Family-wise control: ``with default_level(0.998): ...`` makes every Measurement built in the
block whose level was left at the default (or passed as :data:`DEFAULT_LEVEL` by a technique)
use 0.998 instead. Every ``assert_above/below/within`` call is appended to each list in
:data:`_ASSERTIONS`, so a caller can count how many bounds a claim asserted, at which level.
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from . import stats
from .errors import MeasurementError, bad

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 4000
DEFAULT_SEED = 0
METHODS = ("auto", "bootstrap-t", "clopper-pearson", "bca")

# Set by the plugin for the duration of a claim; every Measurement made while it is
# set is appended, so the terminal summary and reports can show all numbers even
# when the claim fails on its first assertion.
_RECORDERS: list[list["Measurement"]] = []


class AssertionRecord(NamedTuple):
    """One ``assert_above`` / ``assert_below`` / ``assert_within`` call."""

    name: str                 # the measurement's name
    model: str
    kind: str                 # "above", "below" or "within"
    threshold: Any            # the threshold, or (low, high) for "within"
    bound: Any                # the interval bound compared, or (lower, upper)
    level: float
    passed: bool


# Like _RECORDERS: push a list to collect every interval assertion made while it is there.
_ASSERTIONS: list[list[AssertionRecord]] = []

# The level that replaces DEFAULT_LEVEL inside ``default_level(...)`` (None: no override).
level_override: ContextVar[float | None] = ContextVar("pytest_circuits_level_override", default=None)


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Within the block, Measurements are not recorded for the running claim (a detector's
    intermediate numbers); :func:`record` then records the ones the claim reports."""
    saved = list(_RECORDERS)
    _RECORDERS.clear()
    try:
        yield
    finally:
        _RECORDERS[:] = saved + _RECORDERS


def record(m: "Measurement") -> "Measurement":
    """Record ``m`` for the running claim (as if it had just been made)."""
    for rec in _RECORDERS:
        rec.append(m)
    return m


def _check_level(level: Any) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0.0 < level < 1.0:
        raise MeasurementError(bad("level", level, "a confidence level in (0, 1), e.g. 0.95"))
    return float(level)


@contextlib.contextmanager
def default_level(level: float) -> Iterator[float]:
    """Within the block, Measurements left at the default level are built at ``level``.

    "Left at the default" means ``level`` not given, or given as :data:`DEFAULT_LEVEL`
    (techniques pass their default through). A level chosen otherwise is kept. For a
    Bonferroni family of ``m`` assertions at family level ``L``, use ``1 - (1 - L) / m``.
    Nested blocks: the innermost wins.
    """
    token = level_override.set(_check_level(level))
    try:
        yield level
    finally:
        level_override.reset(token)


def resolve_level(level: float | None) -> float:
    """The level a Measurement asked for with ``level`` is built at (see :func:`default_level`)."""
    override = level_override.get()
    if level is None or (override is not None and level == DEFAULT_LEVEL):
        return override if override is not None else DEFAULT_LEVEL
    return _check_level(level)


def bootstrap_interval(values: np.ndarray, level: float = DEFAULT_LEVEL,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                       ) -> tuple[float, float]:
    """The default interval of the mean of continuous ``values`` (1-D), seeded: the union of
    a bootstrap-t interval at the expanded level and the Student-t interval
    (:func:`pytest_circuits.stats.mean_interval`)."""
    return stats.mean_interval(np.asarray(values, dtype=np.float64), level, resamples, seed)


def _is_constant(arr: np.ndarray) -> bool:
    """All values equal, up to rounding (1e-12 of their magnitude)."""
    return float(np.ptp(arr)) <= 1e-12 * float(np.abs(arr).max())


def _zero_width_flag(n: int, what: str) -> tuple[str, ...]:
    return ("zero-width: n=1",) if n == 1 else (f"zero-width: {what}",)


@dataclass(frozen=True)
class Measurement:
    """A measured quantity over examples, with its interval and where it came from."""

    name: str
    values: tuple[float, ...]
    mean: float
    lower: float
    upper: float
    level: float
    n: int
    model: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict, compare=False)
    labels: tuple[str, ...] | None = field(default=None, compare=False)
    # Why the interval cannot be trusted as an interval, e.g. ("zero-width: n=1",).
    flags: tuple[str, ...] = ()
    # True for a ratio of means (:meth:`from_ratio`): its values are contributions, not
    # summands, so it is not added to or subtracted from another measurement.
    ratio: bool = field(default=False, compare=False, repr=False)
    # The value of an example on which the intervention it was measured under did nothing
    # (set with an "uninformative" flag, :meth:`marked`; None: not known).
    null: float | None = field(default=None, compare=False, repr=False)
    # ``(scale, shift)`` when this is ``scale * p + shift`` for ``p`` a proportion with its exact
    # Clopper-Pearson interval (None otherwise): the best bound any outcome at this n could give
    # is then known, so a failed assertion can say when its threshold is out of reach.
    proportion: tuple[float, float] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # The label travels into reports and baselines (JSON): a model object here would end the
        # run in an internal error at report time, far from the claim that passed it.
        if not isinstance(self.model, str):
            raise MeasurementError(bad("model", type(self.model).__name__,
                                       "the model's name as a string (e.g. "
                                       "pytest_circuits.models.info(model).name), not the model object"))

    @classmethod
    def from_values(cls, name: str, values: Any, *, model: str = "",
                    level: float | None = None, seed: int = DEFAULT_SEED,
                    resamples: int = DEFAULT_RESAMPLES,
                    provenance: Mapping[str, Any] | None = None,
                    labels: Iterable[str] | None = None,
                    record: bool = True, method: str = "auto") -> "Measurement":
        """Summarise per-example values (anything array-like and 1-D).

        The interval follows the kind of quantity (docs/statistics.md), chosen by ``method``:

        * ``"auto"``: a proportion's exact Clopper-Pearson interval when the values are
          booleans (a bool array or tensor, or a list of bools: each value a trial that
          succeeded or not), else the continuous interval (bootstrap-t united with the
          t-interval), *whatever the values*: a loss of exactly 0 on every example is
          ``0 [0, 0]`` (flagged zero-width), not a proportion's ``[0, 0.109]``;
        * ``"clopper-pearson"``: the values are a proportion (0/1 only, else an error);
          what every caller whose values count successes out of trials passes;
        * ``"bootstrap-t"``: the continuous interval (what "auto" gives non-booleans);
        * ``"bca"``: the BCa bootstrap used before (it under-covers at small n).

        ``level`` left as None is :data:`DEFAULT_LEVEL`, or the level of an enclosing
        :func:`default_level` block.
        """
        if method not in METHODS:
            raise MeasurementError(bad("method", method, f"one of {METHODS}"))
        proportion = method == "clopper-pearson" or (method == "auto" and _is_boolean(values))
        arr = _as_1d(values, name)
        level = resolve_level(level)
        _check_resamples(resamples, seed)
        n = int(arr.shape[0])
        binary = stats.is_binary(arr)
        if proportion and not binary:
            raise MeasurementError(bad("method", method, f"'auto' or 'bootstrap-t': {name!r} has values "
                                                         f"other than 0 and 1, e.g. {_first_not_binary(arr)}"))
        flags: tuple[str, ...] = ()
        mean = float(arr.mean())
        if proportion:
            k = int(arr.sum())
            lo, hi = stats.clopper_pearson(k, n, level)
            how = f"{_pct(level)} exact Clopper-Pearson interval of a proportion ({k}/{n})"
        else:
            if method == "bca":
                lo, hi = stats.bca_interval(arr, level, resamples, seed)
                how = f"{_pct(level)} BCa bootstrap, {resamples} resamples, seed {seed}"
            elif n == 1 or _is_constant(arr):
                lo = hi = mean
                how = f"{_pct(level)} interval of the mean: none, the values do not vary"
            else:
                lo, hi = stats.mean_interval(arr, level, resamples, seed)
                how = (f"{_pct(level)} bootstrap-t (expanded level {stats.expanded_level(level, n):.4g}) "
                       f"united with the t-interval, {resamples} resamples, seed {seed}")
            if n == 1 or _is_constant(arr):
                lo = hi = mean
                flags = _zero_width_flag(n, f"all {n} values equal")
        prov = dict(provenance or {})
        prov.setdefault("interval", how)
        lab = tuple(labels) if labels is not None else None
        if lab is not None and len(lab) != n:
            raise MeasurementError(bad("labels", f"{len(lab)} labels", f"one per value ({n})"))
        m = cls(name=name, values=tuple(float(v) for v in arr), mean=mean,
                lower=float(lo), upper=float(hi), level=level, n=n, model=model,
                provenance=prov, labels=lab, flags=flags, proportion=(1.0, 0.0) if proportion else None)
        if record:
            for rec in _RECORDERS:
                rec.append(m)
        return m

    @classmethod
    def from_ratio(cls, name: str, numerator: Any, denominator: Any, *, model: str = "",
                   level: float | None = None, seed: int = DEFAULT_SEED,
                   resamples: int = DEFAULT_RESAMPLES, provenance: Mapping[str, Any] | None = None,
                   labels: Iterable[str] | None = None, record: bool = True,
                   denominator_name: str | None = None, why: str | None = None) -> "Measurement":
        """Ratio of means ``sum(num) / sum(den)`` over paired examples.

        ``values`` holds each example's contribution ``num_i / mean(den)``, so
        ``mean(values)`` is the ratio. The interval is the union of a bootstrap-t interval
        of the ratio (delta-method standard error per resample) at the expanded level and
        the delta-method t-interval (:func:`pytest_circuits.stats.ratio_interval`).

        A denominator whose mean is 0 raises :class:`MeasurementError` saying why:
        ``denominator_name`` names it (e.g. ``"the head's own direct effect"``) and
        ``why`` is the caller's hint at the cause (e.g. ``"the ablation changed nothing"``).
        """
        num = _as_1d(numerator, name)
        den = _as_1d(denominator, name)
        level = resolve_level(level)
        _check_resamples(resamples, seed)
        if num.shape != den.shape:
            raise MeasurementError(bad("denominator", f"{den.shape[0]} values", f"{num.shape[0]}, paired"))
        n = int(num.shape[0])
        den_mean = float(den.mean())
        if abs(den_mean) <= 1e-12 * max(1.0, float(np.abs(den).max())):
            raise MeasurementError(_zero_denominator(name, den, denominator_name, why))
        ratio = float(num.mean() / den_mean)
        flags: tuple[str, ...] = ()
        resid = num - ratio * den
        if n == 1 or float(np.abs(resid).max()) <= 1e-12 * max(float(np.abs(num).max()), 1e-300):
            lo = hi = ratio
            flags = _zero_width_flag(n, f"each of the {n} numerators is the ratio times its denominator")
        else:
            lo, hi = stats.ratio_interval(num, den, level, resamples, seed)
        prov = dict(provenance or {})
        prov.setdefault("interval", f"{_pct(level)} bootstrap-t of a ratio of means (delta-method se, "
                                    f"expanded level {stats.expanded_level(level, n):.4g}) united with "
                                    f"the t-interval, {resamples} resamples, seed {seed}")
        if denominator_name:
            prov.setdefault("denominator", denominator_name)
        lab = tuple(labels) if labels is not None else None
        if lab is not None and len(lab) != n:
            raise MeasurementError(bad("labels", f"{len(lab)} labels", f"one per value ({n})"))
        contrib = num / den_mean
        m = cls(name=name, values=tuple(float(v) for v in contrib), mean=ratio,
                lower=float(lo), upper=float(hi), level=level, n=n, model=model, provenance=prov,
                labels=lab, flags=flags, ratio=True)
        if record:
            for rec in _RECORDERS:
                rec.append(m)
        return m

    # -- reading ---------------------------------------------------------------
    @property
    def array(self) -> np.ndarray:
        """The per-example values as a numpy array (``values`` is the tuple), e.g.
        ``Measurement.from_values("wins", ld.array > 0)`` for the share of prompts where a
        logit difference is positive."""
        return np.asarray(self.values)

    @property
    def std(self) -> float:
        """The sample standard deviation of the values (``ddof=1``; 0 for one value, or none: a
        derived measurement such as ``Stability.new_prompts`` has no per-example values)."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 and len(self.values) > 1 else 0.0

    @property
    def sem(self) -> float:
        """The standard error of the mean, ``std / sqrt(n)`` (0 for one value)."""
        return self.std / math.sqrt(self.n) if self.n > 1 else 0.0

    def __repr__(self) -> str:
        where = f"[{self.model}]" if self.model else ""
        flags = f" [{'; '.join(self.flags)}]" if self.flags else ""
        return (f"{self.name}{where} = {_fmt(self.mean)} "
                f"[{_fmt(self.lower)}, {_fmt(self.upper)}] n={self.n}{flags}")

    __str__ = __repr__

    # -- honest assertions -----------------------------------------------------
    def _note(self, kind: str, threshold: Any, bound: Any, passed: bool) -> None:
        rec = AssertionRecord(self.name, self.model, kind, threshold, bound, self.level, passed)
        for lst in _ASSERTIONS:
            lst.append(rec)

    def _refuse_uninformative(self, kind: str, threshold: Any, bound: Any, null_passes: Any) -> None:
        """Refuse a bound that a no-op would pass (see the module docstring): the assertion is
        recorded as failed and a MeasurementError says why."""
        full = [f for f in self.flags if f.startswith(UNINFORMATIVE)]
        part = [f for f in self.flags if f.startswith(PARTLY_UNINFORMATIVE)]
        if full:
            why = full[0]
        elif part and (self.null is None or null_passes(self.null)):
            why = part[0] + ("" if self.null is None else
                             f"; those examples sit at {_fmt(self.null)}, which this bound would pass")
        else:
            return
        self._note(kind, threshold, bound, False)
        plain = replace(self, flags=())
        raise MeasurementError(
            f"{plain!r}: cannot assert {_BOUND_TEXT[kind].format(t=threshold)} on it: {why}. An intervention "
            "that changed nothing gives this value whatever the model does, so it is not evidence that there "
            "is no effect; measure under one that acts on these prompts (e.g. kind='resample_distinct', "
            "kind='mean' with a reference set whose outputs differ, or kind='zero')")

    def assert_above(self, threshold: float) -> "Measurement":
        """Fail unless the *lower* interval bound is above ``threshold``."""
        t = _bound("threshold", threshold)
        self._refuse_uninformative("above", t, self.lower, lambda v: v > t)
        ok = self.lower > t
        self._note("above", t, self.lower, ok)
        if not ok:
            raise AssertionError(
                f"{self!r} ({_pct(self.level)} interval) -- expected lower bound > {threshold}"
                + self._out_of_reach("above", t))
        return self

    def assert_below(self, threshold: float) -> "Measurement":
        """Fail unless the *upper* interval bound is below ``threshold``."""
        t = _bound("threshold", threshold)
        self._refuse_uninformative("below", t, self.upper, lambda v: v < t)
        ok = self.upper < t
        self._note("below", t, self.upper, ok)
        if not ok:
            raise AssertionError(
                f"{self!r} ({_pct(self.level)} interval) -- expected upper bound < {threshold}"
                + self._out_of_reach("below", t))
        return self

    def best_bound(self, kind: str, n: int | None = None) -> float | None:
        """The best bound this kind of measurement can have at ``n`` examples (its own n by
        default), whatever the outcome: for ``kind="above"`` the highest lower bound, for
        ``"below"`` the lowest upper bound. Known for a proportion's exact interval (and a
        scaled or shifted one): every example a success (or every one a failure). None where
        it is not known (a continuous quantity's interval depends on the values' spread)."""
        if self.proportion is None or kind not in ("above", "below"):
            return None
        n = self.n if n is None else int(n)
        scale, shift = self.proportion
        # p's best lower bound is all successes' lower bound; its best upper bound all failures'.
        # A negative scale turns p's upper bound into this one's lower bound.
        want_p_lower = (kind == "above") == (scale > 0)
        p = stats.clopper_pearson(n, n, self.level)[0] if want_p_lower else stats.clopper_pearson(0, n, self.level)[1]
        return scale * p + shift

    def _out_of_reach(self, kind: str, t: float) -> str:
        """The failure message's note when ``t`` cannot be passed at this n (or at any n)."""
        best = self.best_bound(kind)
        if best is None or _passes(best, kind, t):
            return ""
        scale, shift = self.proportion
        successes = (kind == "above") == (scale > 0)
        value = scale * (1.0 if successes else 0.0) + shift      # every example's value at the best outcome
        word, side = ("lower", "above") if kind == "above" else ("upper", "below")
        note = (f"; out of reach at n={self.n}: even with every value {_fmt(value)}, the exact interval's "
                f"{word} bound would be {_fmt(best)}, not {side} {t:.10g}")
        if not _passes(value, kind, t):      # the bound tends to that value as n grows, never beyond
            return note + f", at any n (it tends to {_fmt(value)} as n grows)"
        n = self.n
        while not _passes(self.best_bound(kind, n), kind, t):
            n *= 2
            if n > 10 ** 12:
                return note + "; it would take over 10^12 examples to pass"
        lo = n // 2
        while lo + 1 < n:     # the smallest n that can pass, between lo (cannot) and n (can)
            mid = (lo + n) // 2
            lo, n = (lo, mid) if _passes(self.best_bound(kind, mid), kind, t) else (mid, n)
        return note + f"; it takes at least n={n} examples to pass"

    def assert_within(self, low: float, high: float) -> "Measurement":
        """Fail unless the whole interval lies inside ``(low, high)``."""
        lo, hi = _bound("low", low), _bound("high", high)
        if not lo < hi:
            raise MeasurementError(bad("high", high, f"a number above low={low!r}"))
        self._refuse_uninformative("within", (lo, hi), (self.lower, self.upper), lambda v: lo < v < hi)
        ok = self.lower > lo and self.upper < hi
        self._note("within", (lo, hi), (self.lower, self.upper), ok)
        if not ok:
            raise AssertionError(
                f"{self!r} ({_pct(self.level)} interval) -- expected interval inside ({low}, {high})")
        return self

    # -- flags -----------------------------------------------------------------
    @property
    def uninformative(self) -> str | None:
        """The first ``uninformative`` / ``partly uninformative`` flag, or None."""
        return next((f for f in self.flags if f.startswith((UNINFORMATIVE, PARTLY_UNINFORMATIVE))), None)

    def marked(self, *flags: str, null: float | None = None) -> "Measurement":
        """A copy with ``flags`` added (and ``null``, the value of an example on which the
        intervention did nothing: see the module docstring). Not recorded: record the copy
        (:func:`record`) instead of this one."""
        if not all(isinstance(f, str) and f for f in flags):
            raise MeasurementError(bad("flags", flags, "non-empty strings"))
        if null is not None:
            null = _bound("null", null)
        return replace(self, flags=self.flags + tuple(f for f in flags if f not in self.flags),
                       null=null if null is not None else self.null)

    # -- arithmetic ------------------------------------------------------------
    def __neg__(self) -> "Measurement":
        """``-m``: values negated, the interval exactly ``[-upper, -lower]``."""
        return self._affine(-1.0, 0.0, f"-{_operand(self.name)}")

    def __pos__(self) -> "Measurement":
        return self

    def __add__(self, other: Any) -> "Measurement":
        """``a + b`` on the same examples (per-example sums, their own interval), or
        ``a + c`` for a number ``c`` (the interval shifted by ``c``)."""
        if isinstance(other, Measurement):
            return self._paired(other, +1.0)
        c = _scalar(other)
        if c is None:
            return NotImplemented
        return self._affine(1.0, c, f"{self.name} {'-' if c < 0 else '+'} {_num(abs(c))}")

    def __radd__(self, other: Any) -> "Measurement":
        c = _scalar(other)
        if c is None:
            return NotImplemented
        if c == 0 and type(other) is int:
            return self           # sum([a, b, c]) starts from the int 0: a + b + c, paired
        return self._affine(1.0, c, f"{_num(c)} + {self.name}")

    def __sub__(self, other: Any) -> "Measurement":
        """``a - b`` on the same examples (the paired difference, its own interval), or
        ``a - c`` for a number ``c``."""
        if isinstance(other, Measurement):
            return self._paired(other, -1.0)
        c = _scalar(other)
        if c is None:
            return NotImplemented
        return self._affine(1.0, -c, f"{self.name} {'+' if c < 0 else '-'} {_num(abs(c))}")

    def __rsub__(self, other: Any) -> "Measurement":
        c = _scalar(other)
        if c is None:
            return NotImplemented
        return self._affine(-1.0, c, f"{_num(c)} - {_operand(self.name)}")

    def __mul__(self, other: Any) -> "Measurement":
        """``a * c`` for a number ``c``: values and interval scaled by ``c`` (a negative
        ``c`` swaps the bounds). A product of two Measurements is not defined here."""
        c = _scalar(other)
        if c is None:
            return NotImplemented
        return self._affine(c, 0.0, f"{_num(c)} * {_operand(self.name)}")

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> "Measurement":
        """``a / c`` for a non-zero number ``c`` (for a ratio of two measured means use
        :meth:`Measurement.from_ratio`, whose interval accounts for the denominator)."""
        c = _scalar(other)
        if c is None:
            if isinstance(other, Measurement):
                raise MeasurementError(bad("divisor", other.name, "a number; for a ratio of two measured "
                                                                   "means use Measurement.from_ratio(name, num, den)"))
            return NotImplemented
        if c == 0.0:
            raise MeasurementError(bad("divisor", other, "a non-zero number"))
        return self._affine(1.0 / c, 0.0, f"{_operand(self.name)} / {_num(c)}")

    def _affine(self, scale: float, shift: float, name: str) -> "Measurement":
        """``scale * m + shift``, exact: every interval this module builds is equivariant
        under an affine map of the values (bootstrap-t and t intervals, and the
        Clopper-Pearson interval of a proportion maps to the interval of ``scale * p + shift``),
        so the bounds are mapped, not recomputed; a negative scale swaps them."""
        lo, hi = scale * self.lower + shift, scale * self.upper + shift
        if scale < 0:
            lo, hi = hi, lo
        values = tuple(scale * v + shift for v in self.values)
        flags = self.flags if scale != 0.0 else (_zero_width_flag(self.n, "scaled by 0")
                                                 + _uninformative_flags(self))
        prov = {"from": repr(self), "interval": f"exact: {_num(scale)} x the interval of "
                f"{self.name}" + (f" + {_num(shift)}" if shift else "")}
        m = Measurement(name=name, values=values, mean=scale * self.mean + shift, lower=float(lo),
                        upper=float(hi), level=self.level, n=self.n, model=self.model, provenance=prov,
                        labels=self.labels, flags=flags, ratio=self.ratio,
                        null=None if self.null is None else scale * self.null + shift,
                        proportion=None if self.proportion is None or scale == 0.0 else
                        (scale * self.proportion[0], scale * self.proportion[1] + shift))
        for rec in _RECORDERS:
            rec.append(m)
        return m

    def _paired(self, other: "Measurement", sign: float, name: str | None = None) -> "Measurement":
        """Per-example ``self + sign * other`` with its own interval (the pairing kept)."""
        op = "+" if sign > 0 else "-"
        if self.n != other.n:
            raise MeasurementError(bad("other", f"{other.name} with n={other.n}",
                                       f"a measurement on the same {self.n} examples as {self.name}"))
        if self.labels is not None and other.labels is not None and self.labels != other.labels:
            i = next(j for j, (a, b) in enumerate(zip(self.labels, other.labels)) if a != b)
            raise MeasurementError(bad("other", f"{other.name} with example {i} = {other.labels[i]!r}",
                                       f"the same examples in the same order as {self.name} "
                                       f"(example {i} = {self.labels[i]!r})"))
        if self.level != other.level:
            raise MeasurementError(bad("other", f"{other.name} at level {other.level}",
                                       f"a measurement at the same level as {self.name} ({self.level})"))
        for m in (self, other):
            if m.ratio:
                raise MeasurementError(bad("other" if m is other else "self", m.name,
                                           "a mean of per-example values: the values of a ratio (from_ratio, "
                                           "an F1) are contributions num_i / mean(den), and their sum's "
                                           "interval would ignore the denominator's noise; combine the "
                                           "numerators and call Measurement.from_ratio (F1: probing.margin)"))
        model = self.model if self.model == other.model or not other.model else (
            other.model if not self.model else f"{self.model} {op} {other.model}")
        m = Measurement.from_values(
            name or f"{self.name} {op} {_operand(other.name)}", self.array + sign * other.array, model=model,
            level=self.level, labels=self.labels if self.labels is not None else other.labels,
            provenance={"left": repr(self), "right": repr(other), "operation": op}, record=False)
        return record(_carry_uninformative(m, self, other, sign))

    # -- combining -------------------------------------------------------------
    def paired_difference(self, other: "Measurement", name: str | None = None) -> "Measurement":
        """``self - other`` under the name ``name`` (default ``"a - b"``): the same operation as
        ``a - b``, with the same checks (same examples in the same order, the same level, no ratio
        of means) and the same interval."""
        return self._paired(other, -1.0, name=name or f"{self.name} - {other.name}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (values included)."""
        return {"name": self.name, "model": self.model, "mean": self.mean, "lower": self.lower,
                "upper": self.upper, "level": self.level, "n": self.n,
                "flags": list(self.flags), "values": list(self.values),
                "provenance": {k: _jsonable(v) for k, v in self.provenance.items()}}


def _as_1d(values: Any, name: str) -> np.ndarray:
    try:
        if hasattr(values, "detach"):
            values = values.detach().to("cpu").double().numpy()
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MeasurementError(bad("values", type(values).__name__, "numbers")) from e
    if arr.ndim != 1:
        arr = arr.reshape(-1) if arr.size == 1 else arr
    if arr.ndim != 1:
        raise MeasurementError(bad("values", f"shape {arr.shape}", f"a 1-D array of per-example values for {name!r}"))
    if arr.shape[0] == 0:
        raise MeasurementError(bad("values", "[]", f"at least one value for {name!r}"))
    if not np.all(np.isfinite(arr)):
        bad_idx = np.flatnonzero(~np.isfinite(arr))[:5].tolist()
        raise MeasurementError(bad("values", f"non-finite at indices {bad_idx}", f"finite numbers for {name!r}"))
    return arr


def _check_resamples(resamples: Any, seed: Any) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 10:
        raise MeasurementError(bad("resamples", resamples, "an integer >= 10 (default 4000)"))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MeasurementError(bad("seed", seed, "a non-negative integer"))


def _is_boolean(values: Any) -> bool:
    """Whether ``values`` are booleans by type (a bool tensor or array, or a sequence of
    Python/numpy bools): successes out of trials, whatever a caller later does with them."""
    dtype = getattr(values, "dtype", None)
    if dtype is not None:
        return str(dtype) in ("bool", "torch.bool")
    if isinstance(values, (list, tuple)) and values:
        return all(isinstance(v, (bool, np.bool_)) for v in values)
    return False


def _first_not_binary(arr: np.ndarray) -> float:
    return float(arr[(arr != 0.0) & (arr != 1.0)][0])


def _zero_denominator(name: str, den: np.ndarray, denominator_name: str | None,
                      why: str | None) -> str:
    label = f"the denominator ({denominator_name})" if denominator_name else "the denominator"
    n = den.shape[0]
    if not np.any(den):
        reason = f"every one of its {n} values is 0" if n > 1 else "its one value is 0"
    else:
        reason = (f"its {n} values cancel out (from {_fmt(float(den.min()))} to "
                  f"{_fmt(float(den.max()))}, mean {float(den.mean()):.3g})")
    msg = (f"{name}: " + bad("denominator", f"mean {float(den.mean()):.3g}",
                            "a denominator with a non-zero mean")
           + f"; the ratio is undefined because {label}'s mean is 0: {reason}")
    return msg + (f" ({why})" if why else "")


UNINFORMATIVE = "uninformative"
PARTLY_UNINFORMATIVE = "partly uninformative"
_BOUND_TEXT = {"above": "lower bound > {t}", "below": "upper bound < {t}", "within": "interval inside {t}"}


def _bound(name: str, x: Any) -> float:
    """A bound given to an assertion: a finite real number (not a bool, a string or None; a
    0-d array or tensor is read as its number)."""
    if getattr(x, "ndim", None) == 0 and hasattr(x, "item") and not isinstance(x, (bool, np.bool_)):
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise MeasurementError(bad(name, x, "a finite number"))
    if not math.isfinite(float(x)):
        raise MeasurementError(bad(name, x, "a finite number (an infinite bound always or never holds)"))
    return float(x)


def _uninformative_flags(m: "Measurement") -> tuple[str, ...]:
    return tuple(f for f in m.flags if f.startswith((UNINFORMATIVE, PARTLY_UNINFORMATIVE)))


def _carry_uninformative(m: "Measurement", a: "Measurement", b: "Measurement", sign: float) -> "Measurement":
    """``m = a + sign * b`` keeps the operands' uninformative flags. Its null value is known only
    when both operands carry the same flags (the same no-op examples) and know theirs."""
    fa, fb = _uninformative_flags(a), _uninformative_flags(b)
    if not fa and not fb:
        return m
    null = (a.null + sign * b.null) if (fa == fb and a.null is not None and b.null is not None) else None
    return replace(m, flags=m.flags + tuple(dict.fromkeys(fa + fb)), null=null)


def _scalar(x: Any) -> float | None:
    """``x`` as a finite float when it is a plain number (not a bool), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    if not math.isfinite(float(x)):
        raise MeasurementError(bad("number", x, "a finite number"))
    return float(x)


def _num(c: float) -> str:
    return f"{c:g}"


def _operand(name: str) -> str:
    """``name`` bracketed when it is itself a sum or difference (``-(a - b)``, ``2 * (a + b)``)."""
    return f"({name})" if (" + " in name or " - " in name) else name


def _passes(bound: float | None, kind: str, t: float) -> bool:
    return bound is not None and (bound > t if kind == "above" else bound < t)


def _pct(level: float) -> str:
    return f"{level * 100:.4g}%"


def _fmt(x: float) -> str:
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.3g}" if abs(x) < 1 else f"{x:.4g}"
    return f"{x:.3e}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)
