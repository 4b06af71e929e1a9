"""The ledger's record: what a claim's :class:`~pytest_circuits.measurement.Measurement`\\ s
become once the claim has run on one model, in one typed shape from the claim to the reports.

The session builds a :class:`LedgerRecord` per (claim, model) (``_session.Session.record``);
it travels on the test reports as JSON (:meth:`LedgerRecord.to_json`, so it arrives from xdist
workers too) and is read back with :meth:`LedgerRecord.from_json` by the controller, which
writes it into the JSON report (``records``, schema ``data/report.schema.json``); the merge
reads the reports' records back with the same :meth:`LedgerRecord.from_json`, and the
Markdown, HTML and terminal reports read a report file's records with :meth:`LedgerRecord.read`
and render these records (attributes, never the JSON's keys); the checkup's cards read their
measurements with :meth:`MeasurementEntry.read`. A record's figures (SVG pictures the claim
attached, :mod:`pytest_circuits.figures`) are checked the same way: :meth:`LedgerRecord.from_json`
refuses a record with a figure that is not accepted, :meth:`LedgerRecord.read` leaves it out.

:meth:`LedgerRecord.from_json` trusts nothing: a record that is not one (a missing field, a
measurement that is not finite numbers, an assertion of an unknown kind) raises
:class:`~pytest_circuits.errors.MergeError` naming what is wrong (:func:`record_problem`).
:meth:`LedgerRecord.read` trusts nothing either, but never raises: a report is rendered
whatever it holds (a missing or non-numeric number reads as NaN, which the reports print as
"n/a"); for a record :meth:`LedgerRecord.from_json` accepts, both give the same record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import MergeError
from .figures import Figure, figure_problem

#: a record's outcomes (pytest's, with xfail's two)
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed")
#: the kinds of interval assertion (assert_above, assert_below, assert_within)
ASSERTION_KINDS = ("above", "below", "within")
#: a baseline comparison's statuses: compared, no baseline yet, written by this run
BASELINE_STATUSES = ("compared", "new", "updated")


def _number(x: Any) -> bool:
    """A JSON number (an int or a float, never a bool); NaN and infinities are numbers here
    (a report may carry them; the merge judges them)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _float(x: Any) -> float:
    """A report's number as a float; NaN for anything missing or not a number (a bool too)."""
    return float(x) if _number(x) else float("nan")


def _texts(x: Any) -> list[str]:
    """A report's list of strings; a lone string is one item, anything else none."""
    if isinstance(x, str):
        return [x] if x else []
    return [str(v) for v in x] if isinstance(x, (list, tuple)) else []


@dataclass
class MeasurementEntry:
    """One measurement of a claim as the ledger keeps it: the numbers of the interval, its
    standard error (``sem``, from the per-example values), the measurement's flags, its key
    among the claim's measurements (its name; see :func:`pytest_circuits.baselines.metric_keys`)
    and its baseline comparison (None when baselines are off; else a dict with a ``status`` of
    :data:`BASELINE_STATUSES`, the tolerance and, compared, the baseline entry). ``n`` is None
    only in an entry :meth:`read` from a report that lacks it."""

    name: str
    model: str
    mean: float
    lower: float
    upper: float
    n: int | None
    level: float
    sem: float
    key: str
    flags: list[str] = field(default_factory=list)
    baseline: dict[str, Any] | None = None

    @classmethod
    def of(cls, m: Any, *, key: str, sem: float, baseline: dict[str, Any] | None = None) -> "MeasurementEntry":
        """The entry of a :class:`~pytest_circuits.measurement.Measurement` ``m``."""
        return cls(name=m.name, model=m.model, mean=m.mean, lower=m.lower, upper=m.upper, n=m.n, level=m.level,
                   sem=sem, key=key, flags=list(m.flags or ()), baseline=baseline)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "mean": self.mean, "lower": self.lower, "upper": self.upper,
                "n": self.n, "level": self.level, "sem": self.sem, "flags": list(self.flags), "key": self.key,
                "baseline": self.baseline}

    @classmethod
    def from_json(cls, d: Any) -> "MeasurementEntry":
        problem = measurement_problem(d)
        if problem:
            raise MergeError(problem)
        return cls(name=str(d.get("name", d["key"])), model=str(d.get("model") or ""), mean=d["mean"],
                   lower=d["lower"], upper=d["upper"], n=d["n"], level=d["level"], sem=d["sem"], key=d["key"],
                   flags=[str(f) for f in d.get("flags") or ()], baseline=d.get("baseline"))

    @classmethod
    def read(cls, d: Any) -> "MeasurementEntry":
        """The entry of a report's measurement object as the reports render it; never raises.
        A missing or non-numeric number is NaN, a missing ``n`` None, a missing key the name
        (a checkup card's measurement, :meth:`Measurement.to_dict`, has no key), a baseline
        comparison that is not an object None. For what :meth:`from_json` accepts, the same entry."""
        d = d if isinstance(d, dict) else {}
        key = str(d.get("key") or d.get("name") or "?")
        n = d.get("n")
        b = d.get("baseline")
        return cls(name=str(d["name"]) if d.get("name") is not None else key, model=str(d.get("model") or ""),
                   mean=_float(d.get("mean")), lower=_float(d.get("lower")), upper=_float(d.get("upper")),
                   n=n if isinstance(n, int) and not isinstance(n, bool) else None, level=_float(d.get("level")),
                   sem=_float(d.get("sem")), key=key, flags=_texts(d.get("flags")),
                   baseline=b if isinstance(b, dict) else None)


@dataclass
class AssertionEntry:
    """One interval assertion of a claim (``assert_above`` / ``assert_below`` /
    ``assert_within``): the measurement it bounds, its kind, the threshold, the bound compared
    (the interval's lower or upper end, or both), the level, whether it held and its message."""

    name: str
    model: str
    kind: str
    threshold: Any
    bound: Any
    level: float
    passed: bool
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "kind": self.kind, "threshold": self.threshold,
                "bound": self.bound, "level": self.level, "passed": self.passed, "message": self.message}

    @classmethod
    def from_json(cls, d: Any) -> "AssertionEntry":
        if not assertion_ok(d):
            raise MergeError("an assertion lacks one of name, kind (above, below, within), threshold, bound, "
                             f"level, passed, message: {str(d)[:200]}")
        return cls(name=d["name"], model=str(d.get("model") or ""), kind=d["kind"], threshold=d["threshold"],
                   bound=d["bound"], level=d["level"], passed=d["passed"], message=d["message"])


@dataclass
class LedgerRecord:
    """A claim's record on one model: its id (the node id without the model parameter), node
    id, the model's label and weights fingerprint, the outcome (:data:`OUTCOMES`; "" until the
    call's report is in), the finding and source of its ``claim`` marker, its measurements, the
    versions its baseline was recorded with where they differ from this run's, the reason of an
    expected change that applies, its interval assertions and the figures it attached
    (:class:`~pytest_circuits.figures.Figure`: name, caption, SVG text)."""

    claim: str
    nodeid: str
    model: str
    fingerprint: str = "n/a"
    outcome: str = ""
    finding: str = ""
    source: str = ""
    measurements: list[MeasurementEntry] = field(default_factory=list)
    version_changes: list[str] = field(default_factory=list)
    expected_change: str | None = None
    assertions: list[AssertionEntry] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON report writes it (one object of its ``records``)."""
        return {"claim": self.claim, "nodeid": self.nodeid, "model": self.model, "fingerprint": self.fingerprint,
                "outcome": self.outcome, "finding": self.finding, "source": self.source,
                "measurements": [m.to_json() for m in self.measurements],
                "version_changes": list(self.version_changes), "expected_change": self.expected_change,
                "assertions": [a.to_json() for a in self.assertions],
                "figures": [f.to_json() for f in self.figures]}

    @classmethod
    def from_json(cls, d: Any, *, outcome_required: bool = True) -> "LedgerRecord":
        """The record of a report's JSON object; :class:`~pytest_circuits.errors.MergeError`
        when it is not one (:func:`record_problem`). ``outcome_required=False`` reads a record
        before its outcome is set (the plugin's own, from a test report)."""
        problem = record_problem(d, outcome_required=outcome_required)
        if problem:
            raise MergeError(f"not a ledger record: {problem}")
        return cls(claim=d["claim"], nodeid=d["nodeid"], model=d["model"], fingerprint=str(d.get("fingerprint") or ""),
                   outcome=d["outcome"], finding=str(d.get("finding") or ""), source=str(d.get("source") or ""),
                   measurements=[MeasurementEntry.from_json(m) for m in d["measurements"]],
                   version_changes=[str(v) for v in d.get("version_changes") or ()],
                   expected_change=d.get("expected_change") or None,
                   assertions=[AssertionEntry.from_json(a) for a in d["assertions"]],
                   figures=[Figure.from_json(f) for f in d.get("figures") or ()])

    @classmethod
    def read(cls, d: Any) -> "LedgerRecord":
        """The record of a report's JSON object as the reports render it; never raises (a report
        is untrusted, and shown whatever it holds). A missing claim is the node id; a missing
        outcome "" (the reports' "error"); measurements read with :meth:`MeasurementEntry.read`
        (those that are not objects left out); assertions and figures that are not ones (a
        figure whose SVG is not accepted, :func:`~pytest_circuits.figures.figure_problem`) left out. For a
        record :meth:`from_json` accepts, the same record."""
        d = d if isinstance(d, dict) else {}
        ms = d.get("measurements") if isinstance(d.get("measurements"), list) else []
        asserts = d.get("assertions") if isinstance(d.get("assertions"), list) else []
        figs = d.get("figures") if isinstance(d.get("figures"), list) else []
        names = [f["name"] for f in figs if figure_problem(f) is None]
        return cls(claim=str(d.get("claim") or d.get("nodeid") or "?"), nodeid=str(d.get("nodeid") or ""),
                   model=str(d.get("model") or ""), fingerprint=str(d.get("fingerprint") or ""),
                   outcome=str(d.get("outcome") or ""), finding=str(d.get("finding") or ""),
                   source=str(d.get("source") or ""),
                   measurements=[MeasurementEntry.read(m) for m in ms if isinstance(m, dict)],
                   version_changes=_texts(d.get("version_changes")),
                   expected_change=str(d.get("expected_change") or "") or None,
                   assertions=[AssertionEntry.from_json(a) for a in asserts if assertion_ok(a)],
                   figures=[Figure.from_json(f) for f in figs
                            if figure_problem(f) is None and names.count(f["name"]) == 1])


def measurement_problem(m: Any) -> str | None:
    """What is wrong with ``m`` as a measurement entry (None when nothing is)."""
    b = m.get("baseline") if isinstance(m, dict) else None
    if (isinstance(m, dict) and isinstance(m.get("key"), str) and isinstance(m.get("n"), int)
            and not isinstance(m.get("n"), bool)
            and all(_number(m.get(k)) for k in ("mean", "lower", "upper", "level", "sem"))
            and (b is None or (isinstance(b, dict) and b.get("status") in BASELINE_STATUSES
                               and isinstance(b.get("tolerance"), str)))):
        return None
    return ("a measurement without a key, numbers (mean, lower, upper, level, sem), n or a baseline comparison "
            "(null or an object with a status)")


def assertion_ok(a: Any) -> bool:
    """Whether ``a`` is an assertion entry (name, kind, threshold, bound, level, passed, message)."""
    return (isinstance(a, dict) and isinstance(a.get("name"), str) and a.get("kind") in ASSERTION_KINDS
            and isinstance(a.get("passed"), bool) and _number(a.get("level")) and isinstance(a.get("message"), str)
            and "threshold" in a and "bound" in a)


def record_problem(r: Any, *, outcome_required: bool = True) -> str | None:
    """What is wrong with ``r`` as a ledger record's JSON (None when nothing is): the merge's
    messages (``records[i] ...``) say the same."""
    if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("claim", "nodeid", "model", "outcome")) \
            or not isinstance(r.get("measurements"), list):
        return "lacks one of claim, nodeid, model, outcome, measurements"
    if r["outcome"] not in OUTCOMES and (outcome_required or r["outcome"]):
        return f"has outcome {r['outcome']!r}, not one of {', '.join(OUTCOMES)}"
    if not all(measurement_problem(m) is None for m in r["measurements"]):
        return "has " + measurement_problem(next(m for m in r["measurements"] if measurement_problem(m)))
    if not isinstance(r.get("assertions"), list) or not all(assertion_ok(a) for a in r["assertions"]):
        return "lacks its assertions (each: name, kind, threshold, bound, level, passed, message)"
    return figures_problem(r.get("figures"))


def figures_problem(figures: Any) -> str | None:
    """What is wrong with a record's ``figures`` (None when nothing is; absent is none, as in a
    report written before figures existed)."""
    if figures is None:
        return None
    if not isinstance(figures, list):
        return "has figures that are not a list"
    for f in figures:
        problem = figure_problem(f)
        if problem:
            return f"has a figure that is refused: {problem}"
    names = [f["name"] for f in figures]
    if len(set(names)) != len(names):
        return "has two figures of the same name"
    return None

