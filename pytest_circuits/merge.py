"""``pytest-circuits merge``: one release report from the JSON reports of several CI jobs.

A release gate split over jobs (``pytest --circuits-shard K/N --circuits-report shard-K.json``,
one job per checkpoint and shard) leaves one ledger per job. :func:`load_report` checks each
one and re-derives its verdicts from its own evidence; :func:`merge` checks that they can be
merged, checks them against the claims' source in the checkout and unions them;
:func:`gate_failures` says why the release gate fails, if it does; the command prints the
verdict and writes the requested outputs (JSON in the same ledger format with
``"merged_from"``, Markdown, HTML, JUnit XML).

A merged report must never be greener than its parts, and a report never greener than its
evidence. Refused (exit 2, naming the file and the claim), because the report contradicts
itself or the source:

* not a ledger of schema 2 with the sharding keys and the evidence (``"collected"`` and its
  digest, ``"claims"``, ``"mode"``, ``"suite"``; each record's assertions and each
  measurement's sem and baseline comparison);
* a stated verdict better than the claim's evidence: an interval assertion that failed (its
  bound and threshold are recomputed, and the bound must be the measurement's own), a
  measurement that is not a finite number, a baseline comparison that did not hold
  (recomputed from the measurement, the baseline entry and the tolerance; the baseline is
  also judged against the measurement, :func:`pytest_circuits.baselines.spread_problem`),
  a record whose outcome says otherwise; ``passed``, ``xpassed`` and ``not checked`` need
  evidence that holds;
* a tolerance that does not parse, ``"updated"`` outside an update run, numbers that do not
  reproduce (allowance, difference, within);
* exit status 5 on a shard that ran claims, exit status 0 with a failed claim;
* ``xfailed``/``xpassed``/``expected change``/``not checked``, a tolerance other than the
  run's default and an accepted wide tolerance where the claim's source (read with ``ast``
  in the checkout, :mod:`pytest_circuits.sources`) does not declare them;
* reports of different commits, versions or working trees (``--allow-mixed`` relaxes this),
  of different suites, shards cut differently, overlapping shards that disagree;
* with ``$PYTEST_CIRCUITS_REPORT_KEY`` set: a report that is not signed with that key.

The gate fails (exit 1) when a collected claim is in no report, a claim of the source is in
no report's ``"collected"`` (the suite's files are read in the checkout), any claim failed or
errored, a measurement of a passing claim is beyond tolerance, a job's pytest exit status
was neither 0 nor 5, a report was made with ``--circuits-update-baselines``, nothing was
checked or no claim passed, the reports ran a selection of the suite (``-k``...) without
``--allow-selection``, or something could not be verified: the claims' source is not in the
checkout (``--source-root``) or differs from the one the run read, a baseline compared is not
the checkout's. Never green on what it could not check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

from .errors import CircuitsError, MergeError
from .ledger import LedgerRecord, MeasurementEntry, record_problem

FAILING_VERDICTS = ("failed", "error")
VERDICTS = ("passed", "failed", "error", "not checked", "expected change", "xfailed", "xpassed")
# pytest's exit statuses: 0 all passed, 5 no tests collected (an empty shard).
OK_EXIT = (0, 5)
#: the record outcome each verdict needs ("error" and "failed" are never better than their evidence)
_OUTCOME_OF = {"passed": "passed", "xpassed": "xpassed", "xfailed": "xfailed", "expected change": "xfailed",
               "not checked": "skipped", "failed": "failed"}
#: verdicts that need evidence that holds
_HOLDS = ("passed", "xpassed", "not checked")
SCHEMA = 2


# ----------------------------------------------------------------------------- one report
def _number(x: Any) -> bool:
    """A JSON number a float can hold (NaN and infinities included; an int beyond a float is not)."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        float(x)
    except OverflowError:
        return False
    return True


def _problems(data: Any) -> list[str]:
    """What is wrong with ``data`` as a report that can be merged ([] when nothing is).

    The checks the merge relies on are made here, without dependencies; the JSON schema is
    checked too when ``jsonschema`` is installed."""
    if not isinstance(data, dict):
        return [f"the JSON is a {type(data).__name__}, not a report object"]
    out = []
    for key, kind in (("schema", int), ("exit_status", int), ("versions", dict), ("records", list),
                      ("claims", list), ("collected", list), ("collected_sha256", str), ("mode", dict),
                      ("suite", dict)):
        if key not in data:
            out.append(f"no {key!r}" + (" (a report written before sharding support, or collection did not "
                                         "finish)" if key in ("claims", "collected") else
                                         " (written by an older pytest-circuits: rerun)" if key in (
                                             "mode", "suite", "collected_sha256") else ""))
        elif not isinstance(data[key], kind) or isinstance(data[key], bool):
            out.append(f"{key!r} is not a {kind.__name__}")
    if out:
        return out
    if data["schema"] != SCHEMA:
        return [f"schema {data['schema']!r} is not {SCHEMA} (a report of another pytest-circuits version: rerun "
                "the jobs with this one)"]
    if "merged_from" in data:
        return ["it is a merged report: merge the jobs' own reports instead"]
    if not all(isinstance(n, str) and n for n in data["collected"]):
        out.append("'collected' holds something other than node ids")
    mode = data["mode"]
    for k, kind in (("baseline", bool), ("update_baselines", bool), ("update_failing", bool),
                    ("require_models", bool), ("baseline_tolerance", str), ("baseline_dir", str)):
        if not isinstance(mode.get(k), kind):
            out.append(f"'mode' lacks {k!r} ({kind.__name__})")
    if not (mode.get("baseline_of") is None or isinstance(mode.get("baseline_of"), str)):
        out.append("'mode' has a baseline_of that is not a model name")
    suite = data["suite"]
    if not (isinstance(suite.get("args"), list) and all(isinstance(a, str) for a in suite["args"])
            and isinstance(suite.get("selection"), dict) and isinstance(suite.get("files"), dict)
            and all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in suite["files"].items())):
        out.append("'suite' lacks args (paths), selection or files ({path: sha256})")
    for k in ("python_files", "python_classes", "python_functions"):
        v = suite.get(k)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) and x for x in v)):
            out.append(f"'suite' has {k} that is not a list of patterns")
    if suite.get("locations") is not None and not (isinstance(suite["locations"], dict) and all(
            isinstance(x, str) for kv in suite["locations"].items() for x in kv)):
        out.append("'suite' has locations that are not {path: path}")
    for i, c in enumerate(data["claims"]):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in
                                              ("nodeid", "claim", "model", "verdict", "reason", "finding")):
            out.append(f"claims[{i}] lacks one of nodeid, claim, model, verdict, reason, finding (strings)")
        elif c["verdict"] not in VERDICTS:   # an unknown verdict must not count as "not failed"
            out.append(f"claims[{i}] has verdict {c['verdict']!r}, not one of {', '.join(VERDICTS)}")
    for i, r in enumerate(data["records"]):
        problem = record_problem(r)     # what LedgerRecord.from_json refuses
        if problem:
            out.append(f"records[{i}] {problem}")
    if out:
        return out
    try:
        import jsonschema
    except ImportError:
        return out
    from importlib import resources

    schema = json.loads(resources.files("pytest_circuits").joinpath("data/report.schema.json").read_text("utf-8"))
    for e in sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path)):
        where = "/".join(str(p) for p in e.path) or "(top)"
        out.append(f"{where}: {e.message}")
        if len(out) >= 5:
            break
    return out


def collected_digest(collected: Sequence[str]) -> str:
    """The sha256 a report records of its sorted "collected" node ids (joined by newlines)."""
    return hashlib.sha256("\n".join(collected).encode("utf-8")).hexdigest()


def _close(a: Any, b: Any) -> bool:
    """Two numbers of a report equal up to the rounding JSON and arithmetic allow (None == None)."""
    if a is None or b is None:
        return a is None and b is None
    if not (_number(a) and _number(b)):
        return False
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _bound_holds(kind: str, threshold: Any, bound: Any) -> bool | None:
    """Whether an assertion's bound clears its threshold (None when they are not numbers)."""
    try:
        if kind == "within":
            (lo, hi), (tlo, thi) = bound, threshold
            if not all(_number(x) for x in (lo, hi, tlo, thi)):
                return None
            return bool(float(lo) > float(tlo) and float(hi) < float(thi))
        if not (_number(bound) and _number(threshold)):
            return None
        b, t = float(bound), float(threshold)
    except (TypeError, ValueError):
        return None
    return bool(b > t) if kind == "above" else bool(b < t)


def _measured_bound(kind: str, m: MeasurementEntry) -> Any:
    return {"above": m.lower, "below": m.upper}.get(kind, [m.lower, m.upper])


def _same_bound(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_close(x, y) for x, y in zip(a, b)))
    return _close(a, b)


@dataclass
class Evidence:
    """What a claim's own evidence says: why it did not hold (``fails``) and what in it is
    inconsistent (``bad``: the report contradicts itself)."""

    fails: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)


def _comparison(key: str, m: MeasurementEntry, b: dict[str, Any], mode: dict[str, Any], ev: Evidence) -> None:
    """Recompute one baseline comparison from the measurement, the baseline entry it records
    and the tolerance; what does not reproduce is ``bad``, what does not hold ``fails``."""
    from . import baselines as B

    status = b.get("status")
    if status == "updated" or b.get("tolerance") == "updated":
        if not (mode.get("update_baselines") and status == "updated" and b.get("tolerance") == "updated"):
            ev.bad.append(f"{key}: baseline tolerance 'updated' (status {status!r}) in a run that was not made with "
                          "--circuits-update-baselines")
        return
    try:
        tol = B.Tolerance.parse(b.get("tolerance"))
    except B.BaselineError as e:
        ev.bad.append(f"{key}: {e}")
        return
    if status == "new":
        if b.get("mean") is not None or b.get("within") is not False:
            ev.bad.append(f"{key}: a measurement with no baseline ('new') that states a baseline mean or 'within'")
        ev.fails.append(f"{key}: no baseline yet (the run wrote one and failed the claim)")
        return
    entry = b.get("entry")
    if not isinstance(entry, dict) or B.entry_problems(entry):
        ev.bad.append(f"{key}: the baseline entry compared is missing or malformed ("
                      + "; ".join(B.entry_problems(entry) if isinstance(entry, dict) else ["no 'entry'"]) + ")")
        return
    obtained = {k: getattr(m, k) for k in ("mean", "lower", "upper", "n", "level", "sem")}
    policy = B.TolerancePolicy(tol, {}, b.get("accepted") is True)
    (row,) = B.compare({key: obtained}, {key: entry}, policy)
    allowed = row.allowed if row.finite_allowance else None
    checks = [("baseline mean", b.get("mean"), row.baseline), ("allowed", b.get("allowed"), allowed),
              ("difference", b.get("difference"), row.difference)]
    for what, said, got in checks:
        if not _close(said, got):
            ev.bad.append(f"{key}: the report's {what} {said!r} is not what its numbers give ({got!r})")
    if b.get("within") is not row.ok or bool(b.get("wide")) != row.wide or bool(b.get("spread")) != bool(row.spread):
        ev.bad.append(f"{key}: the report says within={b.get('within')!r}, wide={b.get('wide')!r}, refused="
                      f"{bool(b.get('spread'))!r}; its numbers give within={row.ok}, wide={row.wide}, refused="
                      f"{bool(row.spread)}" + (f" ({row.spread})" if row.spread else ""))
    if not row.ok:
        why = (row.spread or ("allowance not finite" if not row.finite_allowance else
                              f"tolerance {row.tolerance} wider than the value" if row.wide and not row.accepted
                              else f"difference {row.difference:+.4g} beyond the allowed {row.allowed:.4g}"))
        ev.fails.append(f"{key}: {row.obtained:.6g} against baseline {row.baseline:.6g} ({row.tolerance}): {why}")


def evidence(claim: dict[str, Any], record: dict[str, Any] | LedgerRecord | None, mode: dict[str, Any]) -> Evidence:
    """Re-derive what one claim's evidence says (numbers only; the source is :func:`merge`'s).
    ``record``: the claim's ledger record, or its JSON (read with :meth:`LedgerRecord.from_json`)."""
    from . import baselines as B

    ev = Evidence()
    if record is None:
        return ev
    rec = record if isinstance(record, LedgerRecord) else LedgerRecord.from_json(record)
    verdict = claim["verdict"]
    want = _OUTCOME_OF.get(verdict)
    if want is not None and rec.outcome != want:
        ev.bad.append(f"its record's outcome is {rec.outcome!r}, not {want!r} as verdict {verdict!r} needs")
    if verdict == "expected change" and not rec.expected_change:
        ev.bad.append("verdict 'expected change' without the record's expected_change")
    if rec.outcome == "failed":
        ev.fails.append("its record's outcome is failed")
    by_name: dict[str, MeasurementEntry] = {}
    for m in rec.measurements:
        key = m.key
        by_name.setdefault(m.name, m)
        nums = {k: float(getattr(m, k)) for k in ("mean", "lower", "upper", "sem")}
        if not all(math.isfinite(v) for v in nums.values()):
            ev.fails.append(f"{key}: not a finite number ({', '.join(f'{k}={v}' for k, v in nums.items())}): a "
                            "measurement that is not a number fails its claim")
            continue
        slack = 4 * 2.220446049250313e-16 * max(1.0, *map(abs, nums.values()))
        if not (nums["lower"] <= nums["mean"] + slack and nums["mean"] <= nums["upper"] + slack) or nums["sem"] < 0 \
                or not 1 <= m.n <= B.MAX_N or not 0.0 < float(m.level) < 1.0:
            ev.bad.append(f"{key}: mean {m.mean!r} [{m.lower!r}, {m.upper!r}] n={m.n!r} "
                          f"level={m.level!r} sem={m.sem!r} is not a measurement (lower <= mean <= upper, "
                          f"1 <= n <= {B.MAX_N:.0e}, level in (0, 1), sem >= 0)")
            continue
        b = m.baseline
        if b is None:
            if mode.get("baseline") and not mode.get("update_baselines") and verdict in ("passed", "xpassed"):
                ev.fails.append(f"{key}: not compared with its baseline in a run with baselines on")
            continue
        if not (mode.get("baseline") or mode.get("update_baselines")):
            ev.bad.append(f"{key}: a baseline comparison in a run without baselines")
            continue
        # A claim skipped after measuring is not held to its baselines (the plugin compares, for the
        # reports, without failing it); its comparison must still reproduce.
        _comparison(key, m, b, mode, ev if verdict != "not checked" else Evidence(bad=ev.bad))
    for a in rec.assertions:
        holds = _bound_holds(a.kind, a.threshold, a.bound)
        what = f"assert_{a.kind} on {a.name!r} (bound {a.bound!r}, threshold {a.threshold!r})"
        if holds is None:
            ev.bad.append(f"{what}: not numbers")
            continue
        if holds != a.passed:
            ev.bad.append(f"{what}: says passed={a.passed} but the bound {'clears' if holds else 'misses'} "
                          "the threshold")
        m = by_name.get(a.name)
        if m is not None and not _same_bound(a.bound, _measured_bound(a.kind, m)):
            ev.bad.append(f"{what}: the bound is not the measurement's own "
                          f"({_measured_bound(a.kind, m)!r})")
        if m is not None and not _close(a.level, m.level):
            ev.bad.append(f"{what}: asserted at level {a.level!r}, the measurement is at {m.level!r}")
        if not holds:
            ev.fails.append(a.message or what)
    return ev


def _consistency(path: str, data: dict[str, Any]) -> list[str]:
    """A report that contradicts itself (edited, or written by something else) is refused."""
    out = []
    collected = set(data["collected"])
    if data["collected"] != sorted(collected) or collected_digest(data["collected"]) != data["collected_sha256"]:
        out.append("its 'collected' list does not match its collected_sha256 (edited after the run?)")
    nodeids = [c["nodeid"] for c in data["claims"]]
    dup = sorted({n for n in nodeids if nodeids.count(n) > 1})
    if dup:
        out.append(f"claims repeated: {', '.join(dup[:5])}")
    stray = sorted(set(nodeids) - collected)
    if stray:
        out.append(f"claims that are not in its 'collected': {', '.join(stray[:5])}")
    records = [r["nodeid"] for r in data["records"]]
    unknown = sorted(set(records) - set(nodeids))
    if unknown:
        out.append(f"records of claims missing from its 'claims': {', '.join(unknown[:5])}")
    twice = sorted({n for n in records if records.count(n) > 1})
    if twice:
        out.append(f"records repeated: {', '.join(twice[:5])}")
    shard = data.get("shard")
    if shard is not None and not (isinstance(shard, dict) and isinstance(shard.get("index"), int)
                                  and isinstance(shard.get("count"), int)
                                  and 1 <= shard["index"] <= shard["count"]):
        out.append(f"'shard' is {shard!r}, not {{'index': K, 'count': N}} with 1 <= K <= N")
    status = data["exit_status"]
    if status == 5 and data["claims"]:
        out.append(f"exit status 5 (no tests ran) although it reports {len(data['claims'])} claims")
    failing = [c["nodeid"] for c in data["claims"] if c["verdict"] in FAILING_VERDICTS]
    if status == 0 and failing:
        out.append(f"exit status 0 although claims failed: {', '.join(failing[:5])}")
    mode = data["mode"]
    if mode["update_failing"] and not mode["update_baselines"]:
        out.append("mode update_failing without update_baselines")
    from .baselines import BaselineError, Tolerance

    try:
        Tolerance.parse(mode["baseline_tolerance"])
    except BaselineError as e:
        out.append(f"mode baseline_tolerance: {e}")
    rec = {r["nodeid"]: LedgerRecord.from_json(r) for r in data["records"]}
    for c in data["claims"]:
        r = rec.get(c["nodeid"])
        if r is not None and (r.claim, r.model) != (c["claim"], c["model"]):
            out.append(f"claim {c['nodeid']}: its record names {r.claim} on {r.model!r}, its verdict "
                       f"{c['claim']} on {c['model']!r}")
            continue
        ev = evidence(c, r, mode)
        lines = list(ev.bad)
        if ev.fails and c["verdict"] in _HOLDS:
            lines.append(f"stated {c['verdict']!r}, but its evidence says it failed: " + "; ".join(ev.fails))
        if lines:
            out.append(f"claim {c['nodeid']}: " + "; ".join(lines))
    return out


def load_report(path: str | Path, *, key: str | None = None) -> dict[str, Any]:
    """Read and check one report: MergeError naming the file (and the claim) if it is not a
    mergeable report or contradicts itself. With ``key``, its signature must verify."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MergeError(f"{p}: cannot be read: {e}") from None
    if not text.strip():
        raise MergeError(f"{p}: is empty, not a pytest-circuits report")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise MergeError(f"{p}: is not JSON ({e}); a pytest --circuits-report file is expected") from None
    problems = _problems(data)
    if problems:
        raise MergeError(f"{p}: is not a pytest-circuits report that can be merged: " + "; ".join(problems))
    if key:
        from .report import REPORT_KEY_ENV, signature_problem

        why = signature_problem(data, key)
        if why:
            raise MergeError(f"{p}: ${REPORT_KEY_ENV} is set but {why}")
    problems = _consistency(str(p), data)
    if problems:
        raise MergeError(f"{p}: contradicts itself, refused: " + "; ".join(problems))
    return data


# ----------------------------------------------------------------------------- the source
_NORECURSE = (".*", "*.egg", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}", "__pycache__")


class Source:
    """The claims' source in the merge's checkout (``root``), each file read once and checked
    against the sha256 the report recorded."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._text: dict[str, str | None] = {}
        self._fns: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Any] = {}

    def path(self, rel: str, locations: dict[str, str] | None = None) -> Path:
        """Where a report's file (a node id's path, relative to the rootdir) is in the checkout:
        the checkup's claims are the installed package's own; "" (a file outside the rootdir
        that the report does not locate) is nowhere."""
        loc = (locations or {}).get(rel, rel)
        if Path(loc).as_posix().endswith("pytest_circuits/checkup_claims.py"):
            return Path(__file__).with_name("checkup_claims.py")
        p = self.root / loc if loc else None
        try:
            inside = p is not None and (p.resolve() == self.root or self.root in p.resolve().parents)
        except (OSError, ValueError, RuntimeError):
            inside = False
        # a path outside the checkout (absolute, "..") is never read: it cannot be the commit's
        return p if inside else self.root / ".pytest-circuits: a path outside the checkout" / "nowhere"

    def text(self, rel: str, locations: dict[str, str] | None = None) -> str | None:
        key = str(self.path(rel, locations))
        if key not in self._text:
            try:
                self._text[key] = Path(key).read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError, ValueError):
                self._text[key] = None
        return self._text[key]

    def check(self, rel: str, sha: str | None, locations: dict[str, str] | None = None) -> str:
        """"" when the checkout holds the file the run read, else why not."""
        text = self.text(rel, locations)
        if text is None:
            return f"{rel} is not in the checkout {self.root} (pass --source-root: the checkout of the reports' commit)"
        if sha is None or hashlib.sha256(text.encode("utf-8")).hexdigest() != sha:
            return (f"{rel} in the checkout {self.root} is not the file the run read (sha256 "
                    f"{str(sha)[:12]} in the report)")
        return ""

    def functions(self, rel: str, suite: dict[str, Any]) -> dict[str, Any] | None:
        from .sources import DEFAULT_CLASSES, DEFAULT_FUNCTIONS, functions

        pf = tuple(suite.get("python_functions") or DEFAULT_FUNCTIONS)
        pc = tuple(suite.get("python_classes") or DEFAULT_CLASSES)
        locations = _locations(suite)
        k = (str(self.path(rel, locations)), pf, pc)
        if k not in self._fns:
            text = self.text(rel, locations)
            if text is not None and self.path(rel, locations) == Path(__file__).with_name("checkup_claims.py"):
                self._fns[k] = _checkup_functions()
                return self._fns[k]
            try:
                self._fns[k] = None if text is None else functions(text, python_functions=pf, python_classes=pc)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                self._fns[k] = None
        return self._fns[k]

    def conftests(self, rel: str, locations: dict[str, str] | None = None) -> list[str]:
        """The texts of the conftest.py files from ``rel``'s folder up to the root."""
        out, here = [], self.path(rel, locations).parent
        root = self.root.resolve()
        while True:
            try:
                out.append((here / "conftest.py").read_text("utf-8"))
            except (OSError, UnicodeDecodeError):
                pass
            if here.resolve() == root or here.parent == here or root not in here.resolve().parents:
                return out
            here = here.parent

    def has_model_fixture(self, rel: str, locations: dict[str, str] | None = None) -> bool:
        """A fixture named ``model`` defined in the file or a conftest.py above it (then a
        ``model`` argument does not make a test a claim)."""
        import re

        texts = [self.text(rel, locations) or ""] + self.conftests(rel, locations)
        return any(re.search(r"^\s*def model\(", t, re.M) for t in texts)

    def test_files(self, arg: str, patterns: Sequence[str], locations: dict[str, str] | None = None) -> list[str]:
        """The files pytest would collect under ``arg`` (a rootdir-relative or absolute path),
        by ``python_files`` and the default ``norecursedirs``, rootdir-relative."""
        import fnmatch

        start = self.path(arg, locations)
        if start.is_file():
            return [arg]
        out: list[str] = []
        if not start.is_dir():
            return out
        for dirpath, dirs, files in os.walk(start):
            dirs[:] = sorted(d for d in dirs if not any(fnmatch.fnmatch(d, p) for p in _NORECURSE)
                             and not (Path(dirpath) / d / "pyvenv.cfg").exists())
            for f in sorted(files):
                if f.endswith(".py") and any(fnmatch.fnmatch(f, p) for p in patterns):
                    full = Path(dirpath) / f
                    try:
                        out.append(full.relative_to(self.root).as_posix())
                    except ValueError:
                        out.append(str(full))
        return out


def _checkup_functions() -> dict[str, Any]:
    """The checkup's claims (made in a loop in checkup_claims.py, so ast cannot list them): one
    ``test_<check>`` per check of this installation, a claim that skips when not applicable."""
    from .checkup import CHECKS
    from .sources import Function, Marker

    return {f"test_{n}": Function(f"test_{n}", None, ("model", "request"), [Marker("claim")], {"skip"})
            for n in CHECKS}


def _locations(suite: dict[str, Any]) -> dict[str, str]:
    """A report's "locations": where the files of node ids outside the rootdir are."""
    loc = suite.get("locations")
    return {str(k): str(v) for k, v in loc.items()} if isinstance(loc, dict) else {}


def _check_sources(reports: Sequence[tuple[str, dict[str, Any]]], source: Source, *,
                   allow_selection: bool) -> tuple[list[str], list[str]]:
    """(contradictions, failures) of the reports against the claims' source in the checkout."""
    from . import baselines as B
    from . import sources as S

    bad: list[str] = []
    fails: list[str] = []
    unverified: dict[str, list[str]] = {}       # why -> claims it leaves unverified
    for path, d in reports:
        suite, mode = d["suite"], d["mode"]
        files = suite["files"]
        status = {rel: source.check(rel, sha, _locations(suite)) for rel, sha in files.items()}
        records = {r["nodeid"]: LedgerRecord.from_json(r) for r in d["records"]}
        for c in d["claims"]:
            rel, key, params = S.split_nodeid(c["nodeid"])
            r = records.get(c["nodeid"])
            measured = r.measurements if r is not None else []
            needs = c["verdict"] in ("expected change", "xfailed", "xpassed", "not checked") or any(
                isinstance(m.baseline, dict) and m.baseline.get("status") == "compared" for m in measured)
            why = status.get(rel, f"{rel} is not among the report's suite files")
            if why:
                if needs:
                    unverified.setdefault(why, []).append(c["nodeid"])
                continue
            fns = source.functions(rel, suite)
            fn = (fns or {}).get(key)
            if fn is None:
                bad.append(f"{path}: claim {c['nodeid']}: no test function {key} in {rel}" if fns is not None else
                           f"{path}: claim {c['nodeid']}: {rel} does not parse")
                continue
            v = c["verdict"]
            if v == "expected change" and not S.declares_expected_change(fn, c["model"], params):
                bad.append(f"{path}: claim {c['nodeid']}: verdict 'expected change', but its source declares no "
                           f"@pytest.mark.expect_change({c['model']!r}, reason=...)")
            elif v in ("xfailed", "xpassed") and not S.declares_xfail(fn):
                bad.append(f"{path}: claim {c['nodeid']}: verdict {v!r}, but its source declares no xfail")
            elif v == "not checked" and not _skip_declared(fn, c, mode, source, rel, params, _locations(suite)):
                bad.append(f"{path}: claim {c['nodeid']}: 'not checked' ({c['reason']}), but nothing in its source "
                           "can skip it" + (" and the run required its models" if mode["require_models"] else ""))
            for m in measured:
                b = m.baseline
                if not (isinstance(b, dict) and b.get("status") in ("compared", "new")):
                    continue
                marker = fn.closest("baseline")
                if marker is not None and not marker.literal:
                    unverified.setdefault(f"the baseline marker of {rel}::{key} is not literal", []).append(
                        c["nodeid"])
                    continue
                try:
                    policy = B.tolerance_policy(None if marker is None else SimpleNamespace(
                        args=marker.args, kwargs=marker.kwargs), mode["baseline_tolerance"])
                except B.BaselineError as e:
                    unverified.setdefault(f"the baseline marker of {rel}::{key}: {e}", []).append(c["nodeid"])
                    continue
                try:
                    said = str(B.Tolerance.parse(b["tolerance"]))
                except B.BaselineError:
                    said = b["tolerance"]
                if said != str(policy.for_metric(m.key)):
                    bad.append(f"{path}: claim {c['nodeid']}: {m.key} compared with tolerance {b['tolerance']!r}, "
                               f"but its source and the run give {policy.for_metric(m.key)}")
                if b.get("accepted") and not policy.accepts_wide(m.key):
                    bad.append(f"{path}: claim {c['nodeid']}: {m.key} accepts a wide tolerance its source does "
                               "not accept (accept_wide)")
    for why, claims in unverified.items():
        fails.append(f"cannot verify {len(claims)} claim{'s' if len(claims) != 1 else ''} against its source: "
                     f"{why} ({', '.join(claims[:5])}{' ...' if len(claims) > 5 else ''})")
    return bad, fails


def _skip_declared(fn: Any, c: dict[str, Any], mode: dict[str, Any], source: Source, rel: str, params: str,
                   locations: dict[str, str]) -> bool:
    """Whether a 'not checked' verdict has a cause its source (or the run's mode) allows."""
    from . import sources as S

    reason = c["reason"]
    if reason.startswith("not checked: model ") and (" is optional here" in reason or " unavailable" in reason):
        return (not mode["require_models"]) or S.declares_optional_model(fn, c["model"], params)
    if S.declares_skip(fn) or S.skip_anywhere(source.text(rel, locations) or ""):
        return True
    return any(S.skip_anywhere(t) for t in source.conftests(rel, locations))


def _completeness(groups: dict[tuple[str, ...], list[tuple[str, dict[str, Any]]]], source: Source, *,
                  allow_selection: bool) -> list[str]:
    """Claims of the source that no report of their suite collected (gate failures)."""
    from .sources import DEFAULT_FUNCTIONS

    out = []
    for collected, members in groups.items():
        suites = [d["suite"] for _, d in members]
        selection = {k: v for s in suites for k, v in s["selection"].items()}
        names = ", ".join(p for p, _ in members)
        if selection:
            if not allow_selection:
                out.append(f"{names} ran a selection of the suite ({json.dumps(selection)}): claims left out by it "
                           "cannot be told from claims removed from the report; pass --allow-selection to accept it")
            continue
        suite = suites[0]
        patterns = [str(p) for p in suite.get("python_files") or ("test_*.py", "*_test.py")]
        files = {rel for s in suites for rel in s["files"]}
        locations = {k: v for s in suites for k, v in _locations(s).items()}
        unread = sorted({source.check(rel, sha, locations) for s in suites for rel, sha in s["files"].items()} - {""})
        for arg in sorted({a for s in suites for a in s["args"]}):
            if not source.path(arg, locations).exists():
                unread.append(f"{arg or '(outside the rootdir)'} (a path the run was given) is not in the checkout "
                              f"{source.root}")
            files |= set(source.test_files(arg, patterns, locations))
        if unread:
            out.append(f"cannot check that no claim is missing from {names}: " + "; ".join(unread[:5])
                       + (" ..." if len(unread) > 5 else ""))
        have = set(collected)
        prefixes = {n.split("[", 1)[0] for n in have}
        missing = []
        for rel in sorted(files):
            fns = source.functions(rel, {**suite, "python_functions": suite.get("python_functions")
                                         or list(DEFAULT_FUNCTIONS)})
            if fns is None:
                continue     # a file of the suite that cannot be read is a failure above
            model_fixture = source.has_model_fixture(rel, locations)
            for key, fn in fns.items():
                claim = any(m.name == "claim" and not m.nested for m in fn.markers) or (
                    "model" in fn.args and not model_fixture)
                if claim and f"{rel}::{key}" not in prefixes:
                    missing.append(f"{rel}::{key}")
        if missing:
            out.append(f"{len(missing)} claim{'s' if len(missing) != 1 else ''} of the source "
                       f"{'are' if len(missing) != 1 else 'is'} in no report's 'collected' ({names}): "
                       + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    return out


def _baselines_in_checkout(reports: Sequence[tuple[str, dict[str, Any]]], source: Source) -> list[str]:
    """Each baseline a report compared with must be the checkout's (gate failures)."""
    from . import baselines as B

    out: dict[str, list[str]] = {}
    files: dict[Path, Any] = {}
    for path, d in reports:
        mode = d["mode"]
        folder = Path(mode["baseline_dir"])
        folder = folder if folder.is_absolute() else source.root / folder
        for r in map(LedgerRecord.from_json, d["records"]):
            for m in r.measurements:
                b = m.baseline
                if not (isinstance(b, dict) and b.get("status") == "compared" and isinstance(b.get("entry"), dict)):
                    continue
                f = B.model_file(folder, mode["baseline_of"] or r.model)
                if f not in files:
                    try:
                        files[f] = B.read(f)
                    except B.BaselineError as e:
                        files[f] = str(e)
                bf = files[f]
                where = f"{r.nodeid} {m.key}"
                if isinstance(bf, str) or not bf.exists:
                    out.setdefault(f"{f} cannot be read in the checkout" + (f" ({bf})" if isinstance(bf, str)
                                                                             else ""), []).append(where)
                    continue
                entry = bf.claims.get(r.claim, {}).get(m.key)
                if entry is None:
                    out.setdefault(f"{f} has no such entry", []).append(where)
                    continue
                diff = [k for k in ("mean", "n", "sem", "lower", "upper", "level")
                        if (k in entry or k in b["entry"]) and not _close(entry.get(k), b["entry"].get(k))]
                if diff:
                    out.setdefault(f"the report's baseline differs from {f} in the checkout", []).append(
                        where + " (" + ", ".join(f"{k} {b['entry'].get(k)!r} vs {entry.get(k)!r}" for k in diff) + ")")
    return [f"{why}: {len(items)} comparison{'s' if len(items) != 1 else ''} not verified: "
            + "; ".join(items[:5]) + (" ..." if len(items) > 5 else "") for why, items in out.items()]


# ----------------------------------------------------------------------------- merging
def _union(kind: str, items: list[tuple[str, Any, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One entry per key; an entry reported twice (overlapping shards) must be identical."""
    seen: dict[Any, tuple[str, dict[str, Any]]] = {}
    for path, key, entry in items:
        if key in seen and seen[key][1] != entry:
            raise MergeError(f"{kind} {key!r} is reported differently by {seen[key][0]} and {path} "
                             "(overlapping shards that disagree)")
        seen.setdefault(key, (path, entry))
    return [entry for _, entry in seen.values()]


def _describe(values: dict[str, Any]) -> str:
    return "; ".join(f"{p}: {v}" for p, v in values.items())


def _tree_id(d: dict[str, Any]) -> str:
    t = d.get("worktree")
    if not isinstance(t, dict):
        return "unknown"
    return "clean" if t.get("dirty") is False else f"dirty (diff sha256 {str(t.get('diff_sha256'))[:12]})"


def merge(reports: Sequence[tuple[str, dict[str, Any]]], *, allow_mixed: bool = False,
          source_root: str | Path | None = None, allow_selection: bool = False) -> dict[str, Any]:
    """One ledger from ``(path, report)`` pairs (each already checked by :func:`load_report`).

    Raises MergeError when they come from different commits, versions or working trees
    (unless ``allow_mixed``), from different suites, disagree on a claim, or contradict the
    claims' source in ``source_root`` (default: the current directory). What could not be
    verified there fails the gate: it is listed in the merged ledger's ``"merge_checks"``."""
    if not reports:
        raise MergeError("no reports to merge")
    commits = {p: d.get("git_commit") for p, d in reports}
    versions = {p: json.dumps(d["versions"], sort_keys=True) for p, d in reports}
    trees = {p: _tree_id(d) for p, d in reports}
    if not allow_mixed:
        if len(set(commits.values())) > 1:
            raise MergeError(f"the reports come from different git commits ({_describe(commits)}); "
                             "pass --allow-mixed to merge them anyway")
        if len(set(versions.values())) > 1:
            diff = sorted({k for _, d in reports for k in d["versions"]
                           if len({json.dumps(x["versions"].get(k)) for _, x in reports}) > 1})
            raise MergeError("the reports were made with different versions of " + ", ".join(diff) + " ("
                             + _describe({p: {k: d["versions"].get(k) for k in diff} for p, d in reports})
                             + "); pass --allow-mixed to merge them anyway")
        if len(set(trees.values())) > 1:
            raise MergeError(f"the reports come from different working trees ({_describe(trees)}): a dirty tree "
                             "runs other code than its commit; pass --allow-mixed to merge them anyway")
    groups: dict[tuple[str, ...], list[tuple[str, dict[str, Any]]]] = {}
    for p, d in reports:
        groups.setdefault(tuple(d["collected"]), []).append((p, d))
    keys = list(groups)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            common = set(a) & set(b)
            if common:
                only = sorted(set(a) ^ set(b))
                raise MergeError(
                    "the reports come from different suites: " + ", ".join(p for p, _ in groups[a]) + " and "
                    + ", ".join(p for p, _ in groups[b]) + f" collected overlapping but different claims "
                    f"(only in one: {', '.join(only[:5])}{' ...' if len(only) > 5 else ''})")
    for members in groups.values():
        counts = {p: (d.get("shard") or {}).get("count", 1) for p, d in members}
        if len(set(counts.values())) > 1:
            raise MergeError(f"shards of one suite split it differently ({_describe(counts)})")
    source = Source(Path(source_root if source_root is not None else ".").resolve())
    bad, checks = _check_sources(reports, source, allow_selection=allow_selection)
    if bad:
        raise MergeError("the reports contradict the claims' source in " + str(source.root) + ", refused: "
                         + "; ".join(bad))
    checks += _completeness(groups, source, allow_selection=allow_selection)
    checks += _baselines_in_checkout(reports, source)
    claims = _union("claim", [(p, c["nodeid"], c) for p, d in reports for c in d["claims"]])
    # each report's records read back (LedgerRecord.from_json) and written again (to_json): one shape
    records = _union("record of", [(p, (r.claim, r.model, r.nodeid), r.to_json())
                                   for p, d in reports for r in map(LedgerRecord.from_json, d["records"])])
    cards = _union("checkup card", [(p, (c.get("check"), c.get("model")), c)
                                    for p, d in reports for c in d.get("checkup") or []])
    first = reports[0][1]
    merged: dict[str, Any] = {
        "schema": SCHEMA,
        "exit_status": max(int(d["exit_status"]) for _, d in reports),
        "git_commit": first.get("git_commit") if len(set(commits.values())) == 1 else None,
        "worktree": first.get("worktree") if len(set(trees.values())) == 1 else None,
        "versions": _versions([d["versions"] for _, d in reports]),
        "records": sorted(records, key=lambda r: (r["claim"], r["model"], r["nodeid"])),
        "claims": sorted(claims, key=lambda c: (c["claim"], c["model"], c["nodeid"])),
        "collected": sorted({n for k in keys for n in k}),
        "shard": None,
        "merged_from": [{"path": p, "shard": d.get("shard"), "git_commit": d.get("git_commit"),
                         "worktree": d.get("worktree"), "mode": d["mode"],
                         "signed": isinstance(d.get("signature"), str)} for p, d in reports],
        "merge_checks": checks,
    }
    merged["collected_sha256"] = collected_digest(merged["collected"])
    if cards:
        merged["checkup"] = cards
    merged["exit_status"] = 1 if gate_failures(merged, reports) else 0
    return merged


def _versions(all_versions: list[dict[str, str]]) -> dict[str, str]:
    """The versions every report shares; a package they disagree on (``--allow-mixed``) lists all."""
    out: dict[str, str] = {}
    for k in sorted({k for v in all_versions for k in v}):
        seen = list(dict.fromkeys(str(v.get(k, "absent")) for v in all_versions))
        out[k] = seen[0] if len(seen) == 1 else "mixed: " + ", ".join(seen)
    return out


def gate_failures(merged: dict[str, Any], reports: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Why the merged release gate fails ([] when it passes): missing claims, failed or errored
    claims (from the verdicts and from the records), jobs whose pytest failed, update runs,
    nothing checked or passed, and what :func:`merge` could not verify."""
    out = []
    have = {c["nodeid"] for c in merged["claims"]}
    missing = [n for n in merged["collected"] if n not in have]
    if missing:
        out.append(f"{len(missing)} collected claim{'s are' if len(missing) != 1 else ' is'} in no report "
                   f"(a shard missing or stopped early): " + ", ".join(missing))
    bad = [f"{c['nodeid']} ({c['verdict']}{': ' + c['reason'] if c['reason'] else ''})"
           for c in merged["claims"] if c["verdict"] in FAILING_VERDICTS]
    bad_ids = {c["nodeid"] for c in merged["claims"] if c["verdict"] in FAILING_VERDICTS}
    bad += [f"{r.nodeid} (record outcome {r.outcome})" for r in map(LedgerRecord.from_json, merged["records"])
            if r.outcome == "failed" and r.nodeid not in bad_ids]
    if bad:
        out.append(f"{len(bad)} claim{'s' if len(bad) != 1 else ''} failed or errored: " + "; ".join(bad))
    if not merged["collected"]:
        out.append("no report collected any claim: an empty suite gates nothing")
    elif not any(c["verdict"] != "not checked" for c in merged["claims"]):
        # pytest exits 0 when everything is skipped; a release gate that checked nothing has not passed.
        out.append(f"no claim was checked ({len(merged['claims'])} not checked)")
    elif not any(c["verdict"] == "passed" for c in merged["claims"]):
        out.append("no claim passed (every claim checked was xfailed, an expected change or failed)")
    # One gate rule for the exit status and the reports' banner: a measurement beyond its baseline
    # tolerance fails the gate even where its claim is recorded as passed (a hand-edited or
    # inconsistent report), and so does a drift that cannot be computed.
    from .report import summarize

    beyond = [d for d in summarize(merged).beyond() if (d.claim, d.model) not in
              {(c["claim"], c["model"]) for c in merged["claims"] if c["verdict"] in FAILING_VERDICTS}]
    if beyond:
        out.append(f"{len(beyond)} measurement{'s' if len(beyond) != 1 else ''} of passing claims beyond "
                   "tolerance: " + "; ".join(f"{d.claim} [{d.model}] {d.metric}: {d.ratio:+.3g}x tolerance"
                                              for d in beyond))
    jobs = [f"{p} (exit status {d['exit_status']})" for p, d in reports if d["exit_status"] not in OK_EXIT]
    if jobs:
        out.append("pytest failed in " + ", ".join(jobs))
    updates = [p for p, d in reports if d["mode"]["update_baselines"]]
    if updates:
        out.append(f"made with --circuits-update-baselines: {', '.join(updates)} (its measurements were written as "
                   "the baselines, not compared with them: such a run cannot pass a gate; rerun without it)")
    out += list(merged.get("merge_checks") or [])
    return out


# ----------------------------------------------------------------------------- JUnit XML
def _xml(text: Any) -> str:
    """Text XML 1.0 can hold: other control characters (a reason quoting terminal output) as \\xNN."""
    return "".join(ch if ch in "\t\n\r" or (" " <= ch <= "\ud7ff") or ("\ue000" <= ch <= "\ufffd")
                   or ch >= "\U00010000" else f"\\x{ord(ch):02x}" for ch in str(text))


def junit_xml(data: dict[str, Any]) -> str:
    """JUnit XML of a ledger: one testcase per (claim, model) with failure / error / skipped
    elements and their reasons, the finding and each measurement as properties; a collected
    claim in no report is an error testcase."""
    import xml.etree.ElementTree as ET

    from .measurement import _fmt

    records = {r["nodeid"]: LedgerRecord.from_json(r) for r in data.get("records") or []}
    cases = [dict(c) for c in data.get("claims") or []]
    have = {c["nodeid"] for c in cases}
    cases += [{"nodeid": n, "claim": n, "model": "", "verdict": "missing", "finding": "",
               "reason": "collected, but in no report (a shard missing or stopped early)"}
              for n in data.get("collected") or [] if n not in have]
    counts = {"failures": 0, "errors": 0, "skipped": 0}
    suite = ET.Element("testsuite", name="pytest-circuits")
    for c in cases:
        case = ET.SubElement(suite, "testcase", classname=_xml(c["claim"]), name=_xml(c["model"] or c["nodeid"]),
                             file=_xml(c["nodeid"].split("::", 1)[0]))
        props = ET.SubElement(case, "properties")
        ET.SubElement(props, "property", name="nodeid", value=_xml(c["nodeid"]))
        ET.SubElement(props, "property", name="verdict", value=c["verdict"])
        if c.get("finding"):
            ET.SubElement(props, "property", name="finding", value=_xml(c["finding"]))
        r = records.get(c["nodeid"])
        for m in r.measurements if r is not None else []:
            value = f"{_fmt(m.mean)} [{_fmt(m.lower)}, {_fmt(m.upper)}] n={m.n} level={m.level:.4g}"
            b = m.baseline
            if b and b.get("mean") is not None:
                value += (f"; baseline {_fmt(b['mean'])}, drift {b['difference']:+.3g} "
                          f"({'within' if b['within'] else 'OUTSIDE'} {b['tolerance']})")
            ET.SubElement(props, "property", name=_xml(f"circuits:{m.key}"), value=_xml(value))
        v, reason = c["verdict"], _xml(c.get("reason") or "")
        if v == "failed":
            counts["failures"] += 1
            ET.SubElement(case, "failure", message=reason or "failed").text = reason
        elif v in ("error", "missing"):
            counts["errors"] += 1
            ET.SubElement(case, "error", message=reason or v).text = reason
        elif v in ("not checked", "xfailed", "expected change"):
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", type="pytest.xfail" if v != "not checked" else "pytest.skip",
                          message=f"{v}: {reason}" if reason else v)
    attrs = {"tests": str(len(cases)), **{k: str(n) for k, n in counts.items()}}
    suite.attrib.update(attrs)
    root = ET.Element("testsuites", name="pytest-circuits", **attrs)
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


# ----------------------------------------------------------------------------- command
def add_parser(sub: Any) -> None:
    """The ``merge`` subcommand's arguments (cli.py's parser)."""
    m = sub.add_parser("merge", help="merge the JSON reports of several CI jobs (shards, checkpoints) into one",
                       description="Merge pytest --circuits-report files of the jobs of one release gate: check "
                                   "they come from one suite, commit and versions, union them, print the "
                                   "verdict and write the requested reports. Exit status 1 when the gate fails "
                                   "(a claim failed or errored in any job, a job's pytest failed, or a collected "
                                   "claim is in no report), 2 when the reports cannot be merged.")
    m.add_argument("reports", nargs="+", metavar="REPORT.json", help="the jobs' --circuits-report files")
    m.add_argument("--json", metavar="OUT", help="write the merged ledger (same format, with merged_from)")
    m.add_argument("--markdown", metavar="OUT", help="write the Markdown report (e.g. $GITHUB_STEP_SUMMARY)")
    m.add_argument("--html", metavar="OUT", help="write the HTML report")
    m.add_argument("--junit", metavar="OUT", help="write JUnit XML: one testcase per (claim, model)")
    m.add_argument("--allow-mixed", action="store_true",
                   help="merge reports of different git commits or package versions (the report says so)")
    m.add_argument("--expect-reports", type=int, metavar="N",
                   help="fail unless exactly N reports are given (a whole job's report missing cannot be seen "
                        "from the others when it was the only job of its suite, e.g. of a checkpoint)")
    m.add_argument("--source-root", metavar="DIR", default=".",
                   help="the checkout of the reports' commit (default: the current directory): the claims' source "
                        "is read there to verify xfails, expected changes, skips, tolerances, baselines and that no "
                        "claim is missing; what cannot be verified fails the gate")
    m.add_argument("--allow-selection", action="store_true",
                   help="accept reports of a selection of the suite (-k, -m, --deselect, node ids): claims left out "
                        "by it are then not looked for")
    m.add_argument("--require-signature", action="store_true",
                   help="refuse to merge unless $PYTEST_CIRCUITS_REPORT_KEY is set (then every report must be "
                        "signed with it)")


def run(a: argparse.Namespace, prog: str) -> int:
    """Run ``merge`` from parsed arguments: 0 the gate passed, 1 it failed, 2 bad input."""
    import sys

    from . import report as R

    key = os.environ.get(R.REPORT_KEY_ENV, "")
    try:
        if a.expect_reports is not None and a.expect_reports != len(a.reports):
            raise MergeError(f"{len(a.reports)} reports given, --expect-reports {a.expect_reports}")
        if a.require_signature and not key:
            raise MergeError(f"--require-signature: ${R.REPORT_KEY_ENV} is not set")
        reports = [(p, load_report(p, key=key or None)) for p in a.reports]
        merged = merge(reports, allow_mixed=a.allow_mixed, source_root=a.source_root,
                       allow_selection=a.allow_selection)
    except MergeError as e:
        print(f"{prog} merge: error: {e}", file=sys.stderr)
        return 2
    failures = gate_failures(merged, reports)
    for line in R.terminal_lines(merged):
        print(line)
    if a.json:
        R.write_json(Path(a.json), merged)
    if a.markdown:
        R.write_markdown(Path(a.markdown), merged)
    if a.html:
        R.write_html(Path(a.html), merged)
    if a.junit:
        Path(a.junit).parent.mkdir(parents=True, exist_ok=True)
        Path(a.junit).write_text(junit_xml(merged), "utf-8")
    for f in failures:
        print(f"{prog} merge: gate failed: {f}", file=sys.stderr)
    print(f"merged {len(reports)} report{'s' if len(reports) != 1 else ''}: "
          f"release gate {'FAILED' if failures else 'passed'}")
    return 1 if failures else 0
