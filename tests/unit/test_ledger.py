"""The ledger's record (pytest_circuits.ledger): what a Measurement becomes when a claim is
recorded, written to the JSON report and read back by the merge, in one shape.

The entry's numbers are checked against the Measurement it was made from (and the sem against
an independent computation from the values); the JSON round trip is the identity; the reader
refuses what is not a record, naming what is wrong, with the messages the merge gives."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pytest_circuits import merge as M
from pytest_circuits.errors import CircuitsError, MergeError
from pytest_circuits.ledger import AssertionEntry, LedgerRecord, MeasurementEntry, record_problem
from pytest_circuits.measurement import Measurement


def _measurement() -> Measurement:
    values = np.random.default_rng(7).normal(0.4, 0.2, size=40)
    return Measurement.from_values("logit_diff", values, model="tiny", seed=0)


def _record() -> LedgerRecord:
    m = _measurement()
    sem = float(np.std(m.values, ddof=1) / math.sqrt(len(m.values)))
    entry = MeasurementEntry.of(m, key="logit_diff", sem=sem,
                                baseline={"status": "new", "mean": None, "difference": None, "tolerance": "3se",
                                          "allowed": None, "within": False, "flag": "no baseline yet"})
    check = AssertionEntry(name="logit_diff", model="tiny", kind="above", threshold=0.0, bound=m.lower,
                           level=m.level, passed=m.lower > 0.0, message="logit_diff ... expected lower bound > 0")
    return LedgerRecord(claim="claims/t.py::test_a", nodeid="claims/t.py::test_a[tiny]", model="tiny",
                        fingerprint="abc", outcome="passed", finding="a finding", source="arXiv:0",
                        measurements=[entry], assertions=[check])


def test_an_entry_holds_the_measurements_numbers():
    m = _measurement()
    e = _record().measurements[0]
    assert (e.name, e.model, e.mean, e.lower, e.upper, e.n, e.level) == (m.name, m.model, m.mean, m.lower, m.upper,
                                                                         m.n, m.level)
    # independent: the mean of the values, and the sem computed here from them
    assert e.mean == pytest.approx(float(np.mean(m.values)), rel=1e-12)
    assert e.sem == pytest.approx(float(np.std(m.values, ddof=1)) / math.sqrt(40), rel=1e-12)


def test_the_json_round_trip_is_the_identity():
    r = _record()
    d = json.loads(json.dumps(r.to_json()))
    assert LedgerRecord.from_json(d) == r
    assert LedgerRecord.from_json(d).to_json() == d
    # the keys the report schema names, in the order the report has always written them
    assert list(d) == ["claim", "nodeid", "model", "fingerprint", "outcome", "finding", "source", "measurements",
                       "version_changes", "expected_change", "assertions", "figures"]
    assert list(d["measurements"][0]) == ["name", "model", "mean", "lower", "upper", "n", "level", "sem", "flags",
                                          "key", "baseline"]


@pytest.mark.parametrize("damage, says", [
    (lambda d: d.pop("nodeid"), "lacks one of claim, nodeid, model, outcome, measurements"),
    (lambda d: d.update(outcome="green"), "has outcome 'green'"),
    (lambda d: d["measurements"][0].update(mean="0.4"), "a measurement without a key, numbers"),
    (lambda d: d["measurements"][0].update(n=True), "a measurement without a key, numbers"),
    (lambda d: d["measurements"][0].update(baseline={"status": "guessed", "tolerance": "3se"}),
     "a baseline comparison"),
    (lambda d: d["assertions"][0].update(kind="near"), "lacks its assertions"),
    (lambda d: d.pop("assertions"), "lacks its assertions"),
])
def test_what_is_not_a_record_is_refused_by_name(damage, says):
    d = _record().to_json()
    damage(d)
    assert says in record_problem(d)
    with pytest.raises(MergeError, match="not a ledger record") as e:
        LedgerRecord.from_json(d)
    assert isinstance(e.value, CircuitsError) and says in str(e.value)


def test_a_record_before_its_outcome_is_read_only_when_asked():
    d = {**_record().to_json(), "outcome": ""}
    with pytest.raises(MergeError):
        LedgerRecord.from_json(d)
    assert LedgerRecord.from_json(d, outcome_required=False).outcome == ""


def test_the_merge_refuses_records_with_the_records_own_words():
    """The merge's check of a report's records is the record's: one rule, one message."""
    d = _record().to_json()
    d["measurements"][0]["sem"] = None
    report = {"schema": 2, "exit_status": 0, "versions": {}, "records": [d], "claims": [], "collected": [],
              "collected_sha256": M.collected_digest([]), "mode": {}, "suite": {}}
    problems = M._problems(report)
    assert any(p == f"records[0] {record_problem(d)}" for p in problems), problems


def test_the_reports_reader_gives_the_same_record():
    """``read`` (the reports') and ``from_json`` (the merge's) agree on every record the merge accepts."""
    d = json.loads(json.dumps(_record().to_json()))
    assert LedgerRecord.read(d) == LedgerRecord.from_json(d) == _record()
    old = json.loads(json.dumps(d))
    del old["measurements"][0]["name"]           # a report that names a measurement only by its key
    assert LedgerRecord.read(old) == LedgerRecord.from_json(old)


@pytest.mark.parametrize("damage, field, shown", [
    (lambda d: d.pop("claim"), lambda r: r.claim, "claims/t.py::test_a[tiny]"),       # the node id
    (lambda d: d.pop("outcome"), lambda r: r.outcome, ""),
    (lambda d: d.update(model=None), lambda r: r.model, ""),
    (lambda d: d["measurements"][0].update(mean="0.4"), lambda r: math.isnan(r.measurements[0].mean), True),
    (lambda d: d["measurements"][0].update(n=True), lambda r: r.measurements[0].n, None),
    (lambda d: d["measurements"][0].update(flags="wide"), lambda r: r.measurements[0].flags, ["wide"]),
    (lambda d: d["measurements"][0].update(baseline="yes"), lambda r: r.measurements[0].baseline, None),
    (lambda d: d["measurements"].append("not one"), lambda r: len(r.measurements), 1),
    (lambda d: d["assertions"][0].update(kind="near"), lambda r: r.assertions, []),
    (lambda d: d.update(version_changes="torch 1 -> 2"), lambda r: r.version_changes, ["torch 1 -> 2"]),
])
def test_the_reports_reader_never_raises_and_says_what_is_missing(damage, field, shown):
    """A damaged report is still rendered: what the merge refuses, the reports read as missing."""
    d = _record().to_json()
    damage(d)
    assert field(LedgerRecord.read(d)) == shown


def test_a_card_measurement_reads_as_an_entry():
    """A checkup card carries :meth:`Measurement.to_dict` where no record replaced it: read as an
    entry, its numbers are the Measurement's and its key is its name (sem unknown: NaN)."""
    m = _measurement()
    e = MeasurementEntry.read(json.loads(json.dumps(m.to_dict())))
    assert (e.name, e.key, e.mean, e.lower, e.upper, e.n, e.level, e.flags) == (
        m.name, m.name, m.mean, m.lower, m.upper, m.n, m.level, list(m.flags))
    assert math.isnan(e.sem) and e.baseline is None
