"""Baselines: file checks, tolerance maths against hand computations, the verdict, writing."""

from __future__ import annotations

import json
import math
import multiprocessing
from types import SimpleNamespace

import pytest

from pytest_circuits import baselines as B
from pytest_circuits.baselines import BaselineError, Tolerance

CLAIM = "claims/x/test_a.py::test_one"
OTHER = "claims/x/test_a.py::test_two"


def entry(mean=1.0, lower=None, upper=None, n=10, sem=0.1, level=0.95):
    e = {"mean": mean, "n": n, "level": level, "sem": sem}
    e["lower"] = mean - 0.2 if lower is None else lower
    e["upper"] = mean + 0.2 if upper is None else upper
    return e


def write(tmp_path, claims, **top):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"model": "m", "fingerprint": "f", "versions": top.pop("versions", {}),
                                "claims": claims, **top}))
    return path


def baseline_of(claims, **kw):
    return B.BaselineFile(B.Path("m.json"), True, "m", "f", kw.get("versions", {}), {}, claims, {}, {})


# -- tolerance maths, by hand ---------------------------------------------------------------
@pytest.mark.parametrize("spec, kind, value", [("3se", "se", 3.0), ("2.5se", "se", 2.5), (" abs:0.05 ", "abs", 0.05),
                                               ("rel:0.1", "rel", 0.1), ("abs:1e-3", "abs", 1e-3), ("0se", "se", 0.0)])
def test_tolerance_parses(spec, kind, value):
    t = Tolerance.parse(spec)
    assert (t.kind, t.value) == (kind, value)


@pytest.mark.parametrize("spec", ["1 se", "abs:-1", "rel:", "abs:1e400", "3", 3, None, "rel:nan", "se", "abs:inf"])
def test_tolerance_rejects(spec):
    with pytest.raises(BaselineError, match=r"tolerance=.* is not valid: '3se'"):
        Tolerance.parse(spec)


def test_3se_is_three_combined_standard_errors():
    # 3 * sqrt(0.3^2 + 0.4^2) = 3 * 0.5 = 1.5
    assert Tolerance.parse("3se").allowed({"sem": 0.3}, {"mean": 9.0, "sem": 0.4}) == pytest.approx(1.5, abs=1e-15)
    assert Tolerance.parse("2se").allowed({"sem": 0.0}, {"mean": 9.0, "sem": 0.25}) == 0.5


def test_se_with_the_baseline_sem_missing_counts_only_the_obtained_one():
    assert Tolerance.parse("3se").allowed({"sem": 0.2}, {"mean": 1.0}) == pytest.approx(0.6, abs=1e-15)


def test_abs_and_rel_by_hand_including_negative_means():
    assert Tolerance.parse("abs:0.05").allowed({"sem": 9.0}, {"mean": -3.0, "sem": 9.0}) == 0.05
    assert Tolerance.parse("rel:0.25").allowed({}, {"mean": -2.0}) == 0.5      # of |baseline mean|
    assert Tolerance.parse("rel:0.25").allowed({}, {"mean": 2.0}) == 0.5


def _row(obtained, baseline, spec, sem_o=0.0, sem_b=0.0, width=0.0):
    o = {"mean": obtained, "lower": obtained - width / 2, "upper": obtained + width / 2, "n": 5, "sem": sem_o}
    b = {"mean": baseline, "lower": baseline - width / 2, "upper": baseline + width / 2, "n": 5, "sem": sem_b}
    (row,) = B.compare({"m": o}, {"m": b}, spec)
    return row


def test_difference_equal_to_the_allowance_is_within_and_just_above_is_not():
    assert _row(1.5, 1.0, "abs:0.5").within                      # exact in binary
    assert not _row(1.5 + 1e-9, 1.0, "abs:0.5").within
    assert _row(0.15, 0.1, "abs:0.05").within                    # decimal boundary, rounding either way
    assert _row(0.1 + 0.05, 0.1, "abs:0.05").within
    assert not _row(0.1500001, 0.1, "abs:0.05").within
    assert _row(-1.5, -2.0, "rel:0.25").within and _row(-2.5, -2.0, "rel:0.25").within
    assert not _row(-1.4999, -2.0, "rel:0.25").within and not _row(-2.5001, -2.0, "rel:0.25").within
    assert _row(2.5, 1.0, "3se", sem_o=0.3, sem_b=0.4, width=2.0).within          # |1.5| == 1.5
    assert not _row(2.5 + 1e-9, 1.0, "3se", sem_o=0.3, sem_b=0.4, width=2.0).within
    assert _row(1.0, 1.0, "0se").within and not _row(1.0 + 1e-12, 1.0, "0se").within


# -- a tolerance wider than the value --------------------------------------------------------
def test_wide_rule_by_hand():
    # scale = max(|baseline mean|, baseline width, obtained width); abs/rel: allowance > scale
    assert B.scale({"lower": 0.0, "upper": 0.3, "mean": 0.1}, {"mean": -0.2, "lower": -0.3, "upper": -0.1}) == 0.3
    assert _row(1.0, 1.0, "abs:1.01", width=0.1).wide
    assert not _row(1.0, 1.0, "abs:1.0", width=0.1).wide          # exactly the value's size: may be intended
    assert _row(1.0, 1.0, "rel:5", width=0.1).wide and not _row(1.0, 1.0, "rel:1", width=0.1).wide
    assert not _row(0.0, 0.0, "abs:0.5", width=1.0).wide           # the interval sets the scale near zero
    # se: allowance > 2.5 * scale. sem 1e6 on a value of 100 whose interval is 2 wide
    r = _row(100.0, 100.0, "3se", sem_o=0.5, sem_b=1e6, width=2.0)
    assert r.allowed == pytest.approx(3e6) and r.scale == 100.0 and r.wide and not r.trusted and not r.ok
    assert "the check cannot fail" in r.flag
    # a consistent 3se (sem = width / 3.92) on a value at zero is not wide
    assert not _row(0.0, 0.0, "3se", sem_o=1 / 3.92, sem_b=1 / 3.92, width=1.0).wide


def test_default_3se_is_never_wide_on_the_shipped_baselines():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "claims" / "baselines"
    files = sorted(folder.glob("*.json"))
    assert files, folder
    n = 0
    for path in files:
        bf = B.read(path)
        assert not bf.problems, bf.problems
        for claim, metrics in bf.claims.items():
            for metric, e in metrics.items():     # obtained == baseline: the sems and widths of a rerun
                (row,) = B.compare({metric: e}, {metric: e}, "3se")
                assert row.ok, (claim, metric, row)
                n += 1
    assert n > 50


def test_wide_tolerance_fails_the_verdict_unless_accepted():
    o = {"loss": entry(100.0, sem=0.5, lower=99, upper=101)}
    bf = baseline_of({CLAIM: {"loss": entry(100.0, sem=0.5, lower=99, upper=101)}})
    v = B.verdict(o, bf, CLAIM, "abs:150")
    assert not v.passed and [r.metric for r in v.untrusted] == ["loss"] and not v.drifted
    (line,) = v.explain()
    assert "'loss'" in line and "abs:150" in line and "cannot fail" in line and "accept_wide" in line
    assert "WIDER THAN THE VALUE" in B.table(v.rows)
    for accept in (True, ["loss"], "loss"):
        v = B.verdict(o, bf, CLAIM, B.tolerance_policy({"tolerance": "abs:150", "accept_wide": accept}))
        assert v.passed and v.rows[0].wide and "(accepted)" in v.rows[0].flag
    v = B.verdict(o, bf, CLAIM, B.tolerance_policy({"tolerance": "abs:150", "accept_wide": ["other"]}))
    assert not v.passed and v.unused_tolerances == ("other",)


def test_a_huge_baseline_sem_is_refused_and_wide_and_cannot_be_accepted():
    o = {"loss": entry(100.0, sem=0.5, lower=99, upper=101)}
    bf = baseline_of({CLAIM: {"loss": entry(100.0, sem=1e6, lower=99, upper=101)}})
    for policy in ("3se", B.tolerance_policy({"accept_wide": True})):
        v = B.verdict(o, bf, CLAIM, policy)
        assert not v.passed and [r.metric for r in v.untrusted] == ["loss"]
        assert "refused: the baseline's sem 1e+06 at n=10 is 2e+06 times the fresh measurement's 0.5" in v.explain()[0]
    assert "cannot fail" in B.verdict(o, bf, CLAIM).explain()[1]


# -- a baseline judged against the measurement (issue 21, item 4) ------------------------------
def _m(mean, sem, n, half=None, level=0.95):
    half = 2.0 * B._t_quantile(level, n) * sem / 2 if half is None else half
    return {"mean": mean, "lower": mean - half, "upper": mean + half, "n": n, "level": level, "sem": sem}


def test_the_attackers_wide_baseline_is_refused_with_the_numbers():
    """mean +100, interval +-300, sem 100 at n=6, against a measurement whose own sem is 0.3."""
    fresh = _m(5.0, 0.3, 6)
    attacker = {"mean": 105.0, "lower": -195.0, "upper": 405.0, "n": 6, "level": 0.95, "sem": 100.0}
    assert not B.interval_problem(attacker)                 # consistent with itself (600 vs 2 * 2.57 * 100)
    (row,) = B.compare({"m": fresh}, {"m": attacker}, "3se")
    assert not row.wide and row.spread and not row.trusted and not row.ok
    assert row.spread.startswith("the baseline's sem 100 at n=6 is 333 times the fresh measurement's 0.3; "
                                 "at most 22.2 times is accepted")


def test_spread_limit_by_hand():
    # max(10, sqrt of the 1 - 1e-6 quantile of F(n-1, n-1)): F(5, 5) at 1 - 1e-6 is 492.9
    assert B.spread_limit(6, 6) == pytest.approx(22.20, abs=0.01)
    assert B.spread_limit(10, 10) == pytest.approx(10.0) and B.spread_limit(200, 200) == 10.0
    assert B.spread_limit(3, 3) == pytest.approx(1000.0, rel=1e-3)    # F(2, 2): (1 - p) ** -1 - 1 = 999999
    assert math.isinf(B.spread_limit(1, 50)) and math.isinf(B.spread_limit(50, 1))
    # the F quantile against its closed form for (2, 2): q = p / (1 - p)
    assert B._f_quantile(0.99, 2, 2) == pytest.approx(99.0, rel=1e-6)


def test_spread_rule_edges():
    fresh = _m(1.0, 0.1, 50)
    assert B.spread_problem(fresh, fresh) == ""
    assert B.spread_problem(fresh, _m(1.0, 0.99, 50)) == ""                  # 9.9 times: accepted
    assert "10.1 times" in B.spread_problem(fresh, _m(1.0, 1.01, 50))
    # another n: the baseline's sem is rescaled by sqrt(n_b / n_o): 0.2 at n=200 is 0.4 at n=50
    assert B.spread_problem(fresh, _m(1.0, 0.2, 200)) == ""
    assert "rescaled by sqrt(200/50)" in B.spread_problem(fresh, _m(1.0, 0.6, 200))      # 12 times
    # a narrower baseline is never refused by this rule (the drift check is then only stricter)
    assert B.spread_problem(fresh, _m(1.0, 0.001, 50)) == ""
    # Clopper-Pearson of all-equal 0/1 values: sem 0, width > 0: the width is the spread
    cp = {"mean": 1.0, "lower": 0.9787, "upper": 1.0, "n": 171, "level": 0.95, "sem": 0.0}
    assert B.spread_problem(cp, cp) == ""
    assert B.spread_problem(cp, {**_m(0.95, (0.95 * 0.05 / 171) ** 0.5, 171)}) == ""
    # a measurement with no spread at all cannot judge a baseline that has some: refused, saying why
    flat = {"mean": 0.0, "lower": 0.0, "upper": 0.0, "n": 64, "level": 0.95, "sem": 0.0}
    assert B.spread_problem(flat, flat) == ""
    assert "infinitely many times (the measurement has no spread)" in B.spread_problem(flat, _m(0.0, 0.01, 64))
    # ... judged against 1% of its value when it has one: a checkpoint whose top1 became exactly 1.0
    one = {**flat, "mean": 1.0, "lower": 1.0, "upper": 1.0}
    assert B.spread_problem(one, _m(0.84, 0.028, 171)) == ""
    assert "the fresh measurement's 0.01" in B.spread_problem(one, _m(0.84, 0.2, 171))
    # an interval far wider than its own sem and n imply
    assert "times the width its own sem" in B.interval_problem(_m(1.0, 0.01, 50, half=1.0))
    assert B.interval_problem(_m(1.0, 0.01, 50, half=0.02)) == ""


def test_the_rule_never_refuses_a_shipped_baseline_against_its_rerun():
    """A rerun of a shipped claim gives the same values (deterministic forwards): spread ratio 1,
    so the margin to the limit is the limit itself (10 and more); the intervals are at most 1.96
    times what their own sem and n imply (limit 10): the widest are ratios of means (an attention
    share, 1.96; a projection ratio, 1.16), whose interval carries the denominator's noise that the
    sem of their per-example contributions does not. Measured on every entry of claims/baselines."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "claims" / "baselines"
    worst, n = 0.0, 0
    for path in sorted(folder.glob("*.json")):
        for claim, metrics in B.read(path).claims.items():
            for metric, e in metrics.items():
                assert B.spread_problem(e, e) == "", (claim, metric)
                if e.get("sem", 0) > 0 and e["n"] > 1:
                    worst = max(worst, B._width(e) / (2 * B._t_quantile(e.get("level", 0.95), e["n"]) * e["sem"]))
                n += 1
    assert n > 100 and worst < 2.0 and 4 * worst < B.INTERVAL_FACTOR


def test_the_rule_accepts_a_real_checkpoint_change():
    """The worked example (docs/example-drift): the embedded model with attention layer 23 halved,
    against the released model. Their intervals differ by at most 1.94 times: far from the limit."""
    from pathlib import Path

    report = json.loads((Path(__file__).resolve().parents[2] / "docs/example-drift/report.json").read_text())
    by = {}
    for r in report["records"]:
        for m in r["measurements"]:
            by.setdefault((r["claim"], m["key"]), {})[r["model"]] = {k: m[k] for k in ("mean", "lower", "upper", "n")}
    pairs = [(v["smollm2-attn23-half"], v["smollm2-135m"]) for v in by.values() if len(v) == 2]
    assert len(pairs) >= 20
    ratios = [B._width(b) / B._width(o) for o, b in pairs if B._width(o) > 0]
    assert max(ratios) < 2.0 and min(r for r in ratios if r > 0) > 0.5
    assert all(B.spread_problem(o, b) == "" and B.spread_problem(b, o) == "" for o, b in pairs)


def test_an_infinite_allowance_fails():
    big = 1e308
    o = {"m": entry(0.0, sem=big, lower=-big, upper=big)}
    v = B.verdict(o, baseline_of({CLAIM: {"m": entry(0.0, sem=big, lower=-big, upper=big)}}), CLAIM)
    (r,) = v.rows
    assert math.isinf(r.allowed) and not r.trusted and not r.within and not v.passed
    assert "not a finite number" in v.explain()[0] and v.untrusted and not v.drifted


# -- the file: every problem names file, claim, metric, field and value ----------------------
BAD = [({"mean": "abc", "n": 3}, "mean='abc' is not valid: a finite number"),
       ({"mean": float("nan"), "n": 3}, "mean=nan is not valid"),
       ({"mean": 1.0, "n": 3, "sem": float("inf")}, "sem=inf is not valid"),
       ({"mean": 1.0, "n": 3, "upper": float("-inf")}, "upper=-inf is not valid"),
       ({"mean": 1.0, "n": 3, "sem": -0.1}, "sem=-0.1 is not valid: a standard error >= 0"),
       ({"mean": True, "n": 3}, "mean=True is not valid"),
       ({"mean": 1.0, "n": 0}, "n=0 is not valid: a positive integer"),
       ({"mean": 1.0, "n": 2.5}, "n=2.5 is not valid"),
       ({"mean": 1.0, "n": "3"}, "n='3' is not valid"),
       ({"mean": 1.0}, "n is missing"),
       ({"mean": 1.0, "n": 3, "level": 95}, "level=95 is not valid"),
       ({"mean": 1.0, "n": 3, "lower": 1.5, "upper": 2.0}, "lower=1.5 > mean=1.0 is not valid"),
       ({"mean": 1.0, "n": 3, "lower": 0.5, "upper": 0.9}, "mean=1.0 > upper=0.9 is not valid"),
       ([1, 2], "entry=[1, 2] is not valid"),
       ("1.0", "entry='1.0' is not valid")]


@pytest.mark.parametrize("bad_entry, message", BAD)
def test_a_bad_entry_fails_its_claim_only_naming_file_claim_metric_field(tmp_path, bad_entry, message):
    path = write(tmp_path, {CLAIM: {"good": entry(), "loss": bad_entry}, OTHER: {"loss": entry()}})
    bf = B.read(path)
    assert set(bf.claims) == {OTHER} and set(bf.problems) == {CLAIM}
    (line,) = bf.problems[CLAIM]
    assert line.startswith(f"baseline file {path}: claim {CLAIM!r}, metric 'loss': ")
    assert message in line
    v = B.verdict({"loss": entry(), "good": entry()}, bf, CLAIM)
    assert not v.passed and v.problems == (line,) and not v.rows
    assert B.verdict({"loss": entry()}, bf, OTHER).passed
    with pytest.raises(BaselineError, match="metric 'loss'"):
        B.load(path)


def test_json_constants_nan_and_infinity_are_read_and_refused(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"claims": {"c": {"a": {"mean": NaN, "n": 3}, "b": {"mean": 1, "n": 3, "sem": Infinity},'
                    ' "d": {"mean": 1e999, "n": 3}}}}')
    lines = B.read(path).problems["c"]
    assert [ln.split("metric ")[1] for ln in lines] == ["'a': mean=nan is not valid: a finite number",
                                                        "'b': sem=inf is not valid: a finite number",
                                                        "'d': mean=inf is not valid: a finite number"]


@pytest.mark.parametrize("claims", [[1, 2], "x", 3])
def test_a_claim_whose_entry_is_not_an_object(tmp_path, claims):
    path = write(tmp_path, {CLAIM: claims, OTHER: {"m": entry()}})
    bf = B.read(path)
    assert set(bf.claims) == {OTHER}
    assert f"claim {CLAIM!r}: entry={claims!r} is not valid: an object {{metric:" in bf.problems[CLAIM][0]


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"), ("[1, 2]", "its top level is a list"),
    ('{"claims": [1]}', "claims=[1] is not valid"), ('{"claims": {}, "versions": {"torch": 2}}', "versions="),
    ('{"claims": {}, "versions": []}', "versions=[] is not valid"), ('{"model": 3}', "model=3 is not valid"),
    ('{"claims": {"c": {"m": {"mean": 1, "mean": 2, "n": 1}}}}', "has the key 'mean' twice"),
    ('{"claims": {"c": {}}, "claims": {}}', "has the key 'claims' twice"), ("\xff\xfe", "")])
def test_a_file_that_is_unusable_as_a_whole_is_named(tmp_path, text, message):
    path = tmp_path / "m.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(BaselineError, match=f"baseline file {path}") as e:
        B.read(path)
    assert message in str(e.value)


def test_a_missing_file_is_an_empty_baseline(tmp_path):
    bf = B.read(tmp_path / "none.json")
    assert not bf.exists and not bf.claims and not bf.problems
    v = B.verdict({"m": entry()}, bf, CLAIM, versions_now={"torch": "9"})
    assert v.new == ["m"] and not v.passed and not v.version_changes


# -- metric names ------------------------------------------------------------------------------
def test_duplicate_metric_names_are_an_error():
    ms = [{"name": "a"}, {"name": "b"}, {"name": "a"}]
    with pytest.raises(B.DuplicateMetricError, match=r"claim c::t recorded 2 measurements named 'a'; give them "
                                                      r"distinct names \(e.g. include the ablation kind"):
        B.metric_keys(ms, "c::t")
    assert B.metric_keys(ms, strict=False) == ["a", "b", "a"]
    assert B.metric_keys([{"name": "b"}, {"name": "a"}]) == ["b", "a"]
    assert B.metric_keys([SimpleNamespace(name="x")]) == ["x"]


# -- the verdict -------------------------------------------------------------------------------
def test_verdict_new_drifted_missing_and_versions():
    bf = baseline_of({CLAIM: {"a": entry(1.0, sem=0.1), "gone": entry()}},
                     versions={"torch": "2.0", "numpy": "1.0", "pytest": "8", "python": "3.11.7"})
    now = {"torch": "2.1", "numpy": "1.0", "pytest": "9", "python": "3.11.7"}
    o = {"a": entry(1.5, sem=0.1), "b": entry()}
    v = B.verdict(o, bf, CLAIM, "3se", now)
    assert v.new == ["b"]
    (d,) = v.drifted
    assert d.metric == "a" and d.difference == pytest.approx(0.5) and d.allowed == pytest.approx(3 * math.sqrt(0.02))
    assert v.missing == ("gone",) and "'gone'" in v.explain()[-1]
    assert v.version_changes == (("torch", "2.0", "2.1"),)       # pytest is not something numbers depend on
    assert v.version_lines() == ["torch 2.0 -> 2.1"]
    assert B.verdict({"a": entry(1.2, sem=0.1), "gone": entry()}, bf, CLAIM, "3se", bf.versions).passed


def test_verdict_refuses_obtained_values_that_are_not_numbers():
    v = B.verdict({"a": entry(float("nan"))}, baseline_of({CLAIM: {"a": entry()}}), CLAIM)
    assert not v.passed and "obtained value of claim" in v.problems[0] and "mean=nan" in v.problems[0]


def test_tolerance_policy_in_one_place():
    p = B.tolerance_policy(None, "abs:1")
    assert str(p.for_metric("x")) == "abs:1"
    p = B.tolerance_policy(SimpleNamespace(args=(), kwargs={"tolerance": {"a": "rel:0.5"}}), "abs:1")
    assert str(p.for_metric("a")) == "rel:0.5" and str(p.for_metric("b")) == "abs:1"   # others: the run default
    p = B.tolerance_policy(SimpleNamespace(args=("2se",), kwargs={}), "abs:1")
    assert str(p.for_metric("a")) == "2se"
    for kwargs, message in (({"tolerence": "3se"}, "baseline marker keyword='tolerence'"),
                            ({"accept_wide": 1}, "accept_wide=1 is not valid"),
                            ({"tolerance": {"a": "1 se"}}, "tolerance='1 se' is not valid")):
        with pytest.raises(BaselineError, match=message):
            B.tolerance_policy(kwargs, "3se")
    with pytest.raises(BaselineError, match="not both"):
        B.tolerance_policy(SimpleNamespace(args=("2se",), kwargs={"tolerance": "3se"}))


def test_summary_sem_by_hand():
    s = B.summary({"values": [1.0, 2.0, 3.0, 4.0], "n": 4, "mean": 2.5, "lower": 1.5, "upper": 3.5, "level": 0.95})
    assert s["sem"] == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-15)       # sd^2 = 5/3
    assert B.summary({"values": [7.0], "n": 1, "mean": 7.0, "lower": 7.0, "upper": 7.0, "level": 0.95})["sem"] == 0


# -- writing -----------------------------------------------------------------------------------
MODEL = {"label": "m", "fingerprint": "f", "versions": {"torch": "2.0"}}


def test_update_leaves_nothing_beside_the_baseline_and_keeps_other_claims(tmp_path):
    path = write(tmp_path, {OTHER: [1, 2], "c2": {"m": {"mean": "x", "n": 1}}})
    B.update(path, MODEL, CLAIM, {"a": entry()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    data = json.loads(path.read_text())
    assert data["claims"][OTHER] == [1, 2] and data["claims"]["c2"] == {"m": {"mean": "x", "n": 1}}
    assert data["claims"][CLAIM] == {"a": entry()}
    for pkg in ("python", "torch", "transformer_lens", "transformers", "numpy", "safetensors", "pytest-circuits"):
        assert pkg in data["versions"]
    assert data["versions"]["torch"] == "2.0"        # what the model says wins
    assert not B._lock_file(path).parent.samefile(tmp_path)


@pytest.mark.parametrize("bad_entry", [{"mean": float("nan"), "n": 3}, {"mean": 1.0, "n": 3, "sem": float("inf")}])
def test_update_never_writes_what_would_not_read_back(tmp_path, bad_entry):
    path = write(tmp_path, {})
    before = path.read_text()
    with pytest.raises(BaselineError, match=f"refusing to write {path}: claim {CLAIM!r}, metric 'a'"):
        B.update(path, MODEL, CLAIM, {"a": bad_entry})
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_update_refuses_to_overwrite_a_file_that_is_not_json(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{oops")
    with pytest.raises(BaselineError, match="is not valid JSON"):
        B.update(path, MODEL, CLAIM, {"a": entry()})
    assert path.read_text() == "{oops"


def test_claims_not_rewritten_keep_the_versions_they_were_recorded_with(tmp_path):
    path = tmp_path / "m.json"
    old = {**MODEL, "versions": {"torch": "1.0"}}
    B.update(path, old, CLAIM, {"a": entry()})
    B.update(path, old, OTHER, {"a": entry()})
    assert "versions_of" not in json.loads(path.read_text())
    B.update(path, MODEL, OTHER, {"a": entry()})          # torch 1.0 -> 2.0, only OTHER rerun
    bf = B.read(path)
    assert bf.versions["torch"] == "2.0" and bf.claim_versions(CLAIM)["torch"] == "1.0"
    assert bf.claim_versions(OTHER)["torch"] == "2.0"
    assert B.verdict({"a": entry()}, bf, CLAIM, versions_now=bf.versions).version_lines() == ["torch 1.0 -> 2.0"]
    B.update(path, MODEL, CLAIM, {"a": entry()})          # rerun: recorded with today's versions again
    assert "versions_of" not in json.loads(path.read_text())


def test_the_lock_excludes_a_second_holder(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    path = tmp_path / "m.json"
    with B._locked(path):
        with open(B._lock_file(path), "a") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(B._lock_file(path), "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)     # released after the block
    assert list(tmp_path.iterdir()) == []


def _many_updates(args):
    path, claim = args
    for i in range(15):
        B.update(B.Path(path), MODEL, f"{claim}", {"m": entry(float(i))})


def test_parallel_writers_lose_no_claim(tmp_path):
    path = tmp_path / "m.json"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_many_updates, [(str(path), f"c{k}") for k in range(4)])
    data = json.loads(path.read_text())
    assert sorted(data["claims"]) == ["c0", "c1", "c2", "c3"]
    assert all(data["claims"][c]["m"]["mean"] == 14.0 for c in data["claims"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_a_new_baseline_file_gets_an_ordinary_files_mode_and_a_rewrite_keeps_its_mode(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = tmp_path / "new.json"
        B.update(path, MODEL, CLAIM, {"a": entry()})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644      # not mkstemp's 0600
        os.chmod(path, 0o664)
        B.update(path, MODEL, CLAIM, {"a": entry()})
        assert stat.S_IMODE(path.stat().st_mode) == 0o664
    finally:
        os.umask(old)
