"""The API that lets claims read like the finding (issue #11, item 5): arithmetic on
Measurements, rankings at every grain, named accessors on circuit results, model-first
signatures, the ``python -m pytest_circuits`` command and the probing config/result."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_circuits import measurement as M
from pytest_circuits.errors import MeasurementError
from pytest_circuits.measurement import Measurement


def _vals(seed: int, n: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, size=n)


# ----------------------------------------------------------------------------- arithmetic
def test_difference_keeps_the_pairing_and_gets_its_own_interval():
    x, y = _vals(1), _vals(2)
    labels = [f"p{i}" for i in range(30)]
    a = Measurement.from_values("TE", x, labels=labels, model="m")
    b = Measurement.from_values("DE(L9H3)", y, labels=labels, model="m")
    d = a - b
    want = Measurement.from_values("x", x - y)          # computed independently, by hand
    assert d.name == "TE - DE(L9H3)"
    assert (d.mean, d.lower, d.upper) == pytest.approx((want.mean, want.lower, want.upper), rel=1e-12)
    assert d.values == pytest.approx(tuple(x - y)) and d.labels == tuple(labels) and d.model == "m"
    s = a + b
    want = Measurement.from_values("x", x + y)
    assert s.name == "TE + DE(L9H3)" and (s.lower, s.upper) == pytest.approx((want.lower, want.upper))
    # the pairing matters: the paired interval of a - a*1.1 is far narrower than unpaired sums
    assert (a - 1.1 * a).upper - (a - 1.1 * a).lower < 0.1 * (a.upper - a.lower)
    assert (a - b).values == a.paired_difference(b).values


def test_scalar_operations_map_the_interval_exactly_and_match_resampling():
    x = _vals(3)
    a = Measurement.from_values("a", x)
    for c, shift in ((2.5, 0.0), (-2.5, 3.0), (-1.0, 0.0), (0.5, -1.0)):
        got = c * a + shift
        again = Measurement.from_values("b", c * x + shift)     # resampled from scratch
        assert got.lower <= got.upper
        assert (got.mean, got.lower, got.upper) == pytest.approx((again.mean, again.lower, again.upper),
                                                                 rel=1e-9, abs=1e-12)
    neg = -a
    assert (neg.lower, neg.upper) == (-a.upper, -a.lower) and neg.name == "-a"
    assert (a / 4).upper == pytest.approx(a.upper / 4) and (a / 4).name == "a / 4"
    assert (a - 1).name == "a - 1" and (1 - a).name == "1 - a" and (1 - a).lower == pytest.approx(1 - a.upper)
    assert (-(a - a * 2)).name == "-(a - 2 * a)"
    assert (2 * (a + a)).name == "2 * (a + a)"


def test_a_proportion_scaled_keeps_its_exact_interval():
    k = Measurement.from_values("top1", [1, 1, 0, 1, 1, 1, 0, 1])
    assert ((-k).lower, (-k).upper) == (-k.upper, -k.lower)
    assert (100 * k).upper == pytest.approx(100 * k.upper)


@pytest.mark.parametrize("other, match", [
    (Measurement.from_values("b", np.arange(5.0)), "n=5"),
    (Measurement.from_values("b", np.arange(30.0), labels=[f"q{i}" for i in range(30)]), "example 0"),
    (Measurement.from_values("b", np.arange(30.0), level=0.9), "level"),
    (Measurement.from_ratio("r", np.arange(1.0, 31.0), np.ones(30) + np.arange(30) % 3), "ratio"),
])
def test_combining_different_examples_is_refused(other, match):
    a = Measurement.from_values("a", _vals(4), labels=[f"p{i}" for i in range(30)])
    with pytest.raises(MeasurementError, match=match):
        a - other
    with pytest.raises(MeasurementError, match=match):
        a + other


def test_division_by_a_measurement_or_zero_is_refused():
    a = Measurement.from_values("a", _vals(5))
    with pytest.raises(MeasurementError, match="from_ratio"):
        a / a
    with pytest.raises(MeasurementError, match="non-zero"):
        a / 0
    with pytest.raises(TypeError):
        a * "2"
    with pytest.raises(TypeError):
        a * a
    with pytest.raises(TypeError):
        a + True


def test_results_are_recorded():
    a = Measurement.from_values("a", _vals(6), record=False)
    got: list = []
    M._RECORDERS.append(got)
    try:
        d = a - 2 * a
    finally:
        M._RECORDERS.remove(got)
    assert d in got and len(got) == 2        # 2 * a, then the difference


def test_a_ratio_can_be_scaled():
    r = Measurement.from_ratio("r", np.arange(1.0, 31.0), np.ones(30) + np.arange(30) % 3)
    assert (2 * r).upper == pytest.approx(2 * r.upper) and (2 * r).mean == pytest.approx(2 * r.mean)
