"""Verdicts: one claim from its measurements to its verdict (recorded while it runs, seeded;
compared with its baseline, failing on drift and writing what it is asked to; its ledger record
attached to its call report), what the run's reports say (passed, failed, expected change, not
checked and why), and the terminal summary.

The hooks in :mod:`pytest_circuits.plugin` call these functions; nothing here calls a hook.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import _session as S
from .ledger import AssertionEntry, LedgerRecord, MeasurementEntry
from ._stash import (ASSERTIONS_KEY, BASELINE_ENTRIES_KEY, BASELINE_ROWS_KEY, CARDS_KEY, CLAIM_COUNT_KEY,
                     CLAIM_INFO_KEY, CLAIMS_KEY, EXPECTED_CHANGE_KEY, FIGURES_KEY, FIXTURE_MEASUREMENTS_KEY,
                     MEASUREMENTS_KEY, RESULTS_KEY, SESSION_KEY, VERSION_CHANGES_KEY, WORKERS_KEY)


# -- one claim: recording its measurements ----------------------------------------------------
def drop(stack: list[list[Any]], mine: list[Any]) -> None:
    """Remove ``mine`` from the recorder stack by identity (lists compare by value: two empty
    recorders are equal, and ``list.remove`` would take the wrong one)."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is mine:
            del stack[i]
            return


def fixture_measurements(item: pytest.Item) -> list[Any]:
    """Measurements recorded by the fixtures (of any scope) that ``item`` uses, in setup order."""
    table = item.config.stash.get(FIXTURE_MEASUREMENTS_KEY, {})
    if not table:
        return []
    out: list[Any] = []
    infos = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    for name in getattr(item, "fixturenames", ()):
        for fd in infos.get(name, ())[-1:]:
            entry = table.get(id(fd))
            if entry is not None and entry[0] is fd and getattr(fd, "cached_result", None) is not None:
                out += entry[1]
    return out


def distinct(recorded: list[Any]) -> tuple[list[Any], list[str]]:
    """Drop repeated measurements (the same object, or the same name and numbers) and list
    the names that two *different* measurements of one claim share."""
    seen: dict[str, Any] = {}
    out: list[Any] = []
    clashes: list[str] = []
    for m in recorded:
        first = seen.get(m.name)
        if first is None:
            seen[m.name] = m
            out.append(m)
        elif first is not m and (first.values, first.lower, first.upper) != (m.values, m.lower, m.upper):
            if m.name not in clashes:
                clashes.append(m.name)
    return out, clashes


def seed_all(seed: int) -> Any:
    import numpy as np
    import torch

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return state


def restore_seeds(state: Any) -> None:
    import numpy as np
    import torch

    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


# -- one claim: its baseline verdict and its ledger record ------------------------------------
@dataclass(frozen=True)
class _BaselineCheck:
    """One claim's baseline comparison: where it is read, what was measured, the verdict."""

    model: dict[str, Any]
    cid: str
    directory: Path
    reference: str              # the model whose baseline file is read
    path: Path
    entries: dict[str, Any]
    data: Any                   # baselines.read(path)
    verdict: Any                # baselines.verdict(...)

    @property
    def foreign(self) -> bool:
        """Comparing with another model's baseline (--circuits-baseline-of)."""
        return self.reference != self.model["label"]


def _comparison(r: Any, entry: Any) -> dict[str, Any] | None:
    """A measurement's baseline comparison as the ledger records it: its status ("compared",
    "new": no baseline yet, "updated": written by this run), the baseline entry compared
    (mean, sem, n, interval, level: the merge recomputes the comparison from them), the
    tolerance, the allowance, whether it held and why it could not (flag)."""
    if r is None:
        return None
    if r.tolerance == "updated":
        return {"status": "updated", "mean": r.baseline, "difference": 0.0, "tolerance": "updated", "allowed": None,
                "within": True, "flag": ""}
    if r.baseline is None:
        return {"status": "new", "mean": None, "difference": None, "tolerance": r.tolerance, "allowed": None,
                "within": False, "flag": "no baseline yet"}
    out = {"status": "compared", "mean": r.baseline, "difference": r.difference, "tolerance": r.tolerance,
           "allowed": r.allowed if r.finite_allowance else None, "within": bool(r.ok), "flag": r.flag,
           "wide": bool(r.wide), "accepted": bool(r.accepted), "spread": r.spread}
    if isinstance(entry, dict):
        out["entry"] = {k: entry[k] for k in ("mean", "lower", "upper", "n", "level", "sem") if k in entry}
    return out


def _model_of(item: Any, recorded: list[Any]) -> dict[str, Any]:
    from .models import info
    from .config import versions

    model = getattr(item, "funcargs", {}).get("model")
    try:
        mi = info(model)
    except Exception:  # noqa: BLE001 - a claim without a language model (synthetic models)
        label = next((m.model for m in recorded if m.model), "") or "no-model"
        return {"label": label, "fingerprint": "n/a", "versions": versions()}
    return {"label": mi.label, "fingerprint": mi.fingerprint, "dtype": mi.dtype, "device": mi.device,
            "versions": versions()}

def check_baseline(item: Any, recorded: list[Any], settings: Any, enforce: bool = True) -> None:
    """Compare a claim's measurements with its baseline; fail on drift or a new baseline.

    The comparison is :func:`pytest_circuits.baselines.verdict` (a pure function); the
    session only warns, writes and raises on what it says. With ``enforce=False`` (the
    claim already failed) only the comparison is kept for the reports: nothing is written
    and nothing more is raised."""
    import pytest

    from . import baselines as B

    st = settings
    if not (st.baseline or st.update_baselines):
        return
    try:   # every problem of the file, the entries or the marker fails this claim, naming it
        check = _baseline_check(item, recorded, st)
    except B.BaselineError as e:
        if enforce:
            pytest.fail(str(e), pytrace=False)
        return
    item.stash[VERSION_CHANGES_KEY] = [] if st.update_baselines else list(check.verdict.version_lines())
    item.stash[BASELINE_ENTRIES_KEY] = dict(check.data.claims.get(check.cid, {}))
    _warn_baseline(check, st)
    if not enforce and st.update_baselines and S.update_failing(item.config) and not check.foreign:
        # --circuits-update-failing: the claim fails, but its values are recorded as they are.
        try:
            _update_baseline(item, check)
        except BaseException as e:   # noqa: BLE001 - never hide the claim's own failure
            import warnings

            warnings.warn(f"{check.cid}: its baseline could not be recorded: {e}", stacklevel=3)
    elif not enforce:
        item.stash[BASELINE_ROWS_KEY] = list(check.verdict.rows)
    elif st.update_baselines:
        _update_baseline(item, check)
    else:
        _enforce_baseline(item, check)

def _baseline_check(item: Any, recorded: list[Any], st: Any) -> "_BaselineCheck":
    from . import baselines as B

    model = _model_of(item, recorded)
    cid = S.claim_id(item)
    dicts = [m.to_dict() for m in recorded]
    directory = S.baseline_folder(item.config, st)
    reference = st.baseline_of or model["label"]
    path = B.model_file(directory, reference)
    entries = {k: B.summary(d) for k, d in zip(B.metric_keys(dicts, cid), dicts)}
    data = B.read(path)
    policy = B.tolerance_policy(item.get_closest_marker("baseline"), st.baseline_tolerance)
    verdict = B.verdict(entries, data, cid, policy, B.versions())
    return _BaselineCheck(model, cid, directory, reference, path, entries, data, verdict)

def _warn_baseline(c: "_BaselineCheck", st: Any) -> None:
    import warnings

    if not c.foreign and c.model.get("fingerprint") and c.data.fingerprint not in (None, c.model["fingerprint"]):
        warnings.warn(f"{c.path} was recorded for weights {c.data.fingerprint}, this run has "
                      f"{c.model['fingerprint']}", stacklevel=3)
    if c.verdict.version_changes and not st.update_baselines:
        warnings.warn(f"{c.path}: {c.cid} was recorded with other versions "
                      f"({'; '.join(c.verdict.version_lines())}): small numeric drift is possible", stacklevel=3)
    if c.verdict.unused_tolerances:
        warnings.warn(f"the baseline marker of {c.cid} sets a tolerance for "
                      f"{', '.join(map(repr, c.verdict.unused_tolerances))}, which it did not record "
                      f"(it recorded {', '.join(map(repr, c.entries))})", stacklevel=3)

def _update_baseline(item: Any, c: "_BaselineCheck") -> None:
    """``--circuits-update-baselines``: rewrite this claim's entries (never another model's file)."""
    import pytest

    from . import baselines as B

    if c.foreign:
        pytest.fail(f"--circuits-update-baselines with --circuits-baseline-of={c.reference}: refusing to "
                    f"write {c.model['label']}'s measurements into {c.path}", pytrace=False)
    try:
        B.update(c.path, c.model, c.cid, c.entries)
    except B.BaselineError as e:
        pytest.fail(str(e), pytrace=False)
    item.stash[BASELINE_ROWS_KEY] = [B.Row(k, e["mean"], e["mean"], "updated", 0.0)
                                         for k, e in c.entries.items()]

def _enforce_baseline(item: Any, c: "_BaselineCheck") -> None:
    """Fail the claim on what the verdict found: unusable entries, a new baseline (written),
    untrusted or missing entries, drift (the obtained values written beside the baseline)."""
    import warnings

    import pytest

    from . import baselines as B

    v = c.verdict
    if v.problems:
        pytest.fail("\n".join(v.problems) + f"\nfix these entries, or rewrite {c.cid}'s entries with "
                    "--circuits-update-baselines", pytrace=False)
    rows = list(v.rows)
    item.stash[BASELINE_ROWS_KEY] = rows
    if v.new and c.foreign:
        pytest.fail(f"no baseline for {', '.join(v.new)} of {c.cid} in {c.path} (the baseline of {c.reference}); "
                    f"run the claims on {c.reference} with --circuits-update-baselines first", pytrace=False)
    if v.new:
        B.update(c.path, c.model, c.cid, {**c.data.claims.get(c.cid, {}), **c.entries})
        pytest.fail(f"no baseline for {', '.join(v.new)} of {c.cid} on {c.model['label']}: written to {c.path}; "
                    "review and commit it, then rerun", pytrace=False)
    for r in rows:
        if r.wide and r.accepted:
            warnings.warn(f"{c.cid}, {r.metric}: {r.flag}", stacklevel=3)
    if v.untrusted or v.missing:
        pytest.fail("\n".join(v.explain()) + f"\n{B.table(rows)}", pytrace=False)
    if v.drifted:
        obtained = B.model_file(c.directory, c.model["label"]).with_suffix(".obtained.json")
        B.update(obtained, c.model, c.cid, c.entries)
        what = "; ".join(f"{r.metric} {r.obtained:.6g} vs baseline {r.baseline:.6g} (difference "
                         f"{r.difference:+.3g}, allowed \u00b1{r.allowed:.3g} {r.tolerance})" for r in v.drifted)
        pytest.fail(f"{len(v.drifted)} of {len(rows)} measurements of {c.cid} on {c.model['label']} drifted "
                    f"from the baseline of {c.reference}: {what}\nbaseline file {c.path}:\n{B.table(rows)}\n"
                    f"obtained values written to {obtained}; to accept them rerun with "
                    "--circuits-update-baselines", pytrace=False)

def ledger_record(item: Any, recorded: list[Any]) -> Any:
    """The ledger record of one claim on one model (:class:`~pytest_circuits.ledger.LedgerRecord`;
    its outcome, expected change and assertions are set from the call's report)."""
    from .baselines import metric_keys, summary
    from .ledger import LedgerRecord, MeasurementEntry

    marker = item.get_closest_marker("claim")
    kw = marker.kwargs if marker else {}
    model = _model_of(item, recorded)
    rows = {r.metric: r for r in item.stash.get(BASELINE_ROWS_KEY, [])}
    entries = item.stash.get(BASELINE_ENTRIES_KEY, {})
    dicts = [m.to_dict() for m in recorded]
    measurements = [MeasurementEntry.of(m, key=key, sem=summary(d)["sem"],
                                        baseline=_comparison(rows.get(key), entries.get(key)))
                    for key, m, d in zip(metric_keys(dicts, strict=False), recorded, dicts)]
    return LedgerRecord(claim=S.claim_id(item), nodeid=item.nodeid, model=model["label"],
                        fingerprint=model["fingerprint"], finding=kw.get("finding") or "",
                        source=kw.get("source") or "", measurements=measurements,
                        version_changes=item.stash.get(VERSION_CHANGES_KEY, []))


# -- the run's reports --------------------------------------------------------------------
def collect_report(config: pytest.Config, report: pytest.TestReport) -> None:
    """Take in one report of the run (a worker's too, under xdist): the claim's verdict and
    identity, the checkup's card, and the claim's ledger record (with its outcome)."""
    props = dict(report.user_properties)
    if "circuits-claim" in props:
        count_claim(config, report, props["circuits-claim"])
        if "circuits-claim-info" in props:
            config.stash.setdefault(CLAIM_INFO_KEY, {})[report.nodeid] = json.loads(props["circuits-claim-info"])
    if report.when != "call":
        return
    if "circuits-checkup-item" in props:
        card = next((json.loads(v) for k, v in report.user_properties if k == "circuits-checkup"), None)
        crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", None)
        config.stash.setdefault(CARDS_KEY, []).append((report.nodeid, report.outcome, card, crash or reason(report)))
    for key, value in report.user_properties:
        if key == "circuits":
            record = LedgerRecord.from_json(json.loads(value), outcome_required=False)
            record.outcome = report.outcome
            if hasattr(report, "wasxfail"):
                record.outcome = "xfailed" if report.skipped else "xpassed"
            config.stash.setdefault(RESULTS_KEY, []).append(record)


def finish_report(item: pytest.Item, call: pytest.CallInfo, report: pytest.TestReport) -> pytest.TestReport:
    """A claim's report as the verdict needs it: a claim on a random-weights stand-in is not
    checked, a caught failed bound fails it, and its call report carries its ledger record
    (``user_properties``, which travel from xdist workers too)."""
    stand_in = stand_in_reason(item, call) if report.failed or (report.passed and call.when == "call") else None
    if stand_in is not None:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), (item.location[1] or 0) + 1, stand_in)
    if S.is_claim(item):
        # Marks the report as a claim's (for the "checked / not checked" count, from xdist
        # workers too) and says whether an xfail is this project's expected change.
        report.user_properties.append(("circuits-claim", item.stash.get(EXPECTED_CHANGE_KEY, "")))
        if not any(k == "circuits-claim-info" for k, _ in report.user_properties):
            # The claim's id, model and finding for the ledger's "claims" (xdist's controller has no items).
            marker = item.get_closest_marker("claim")
            report.user_properties.append(("circuits-claim-info", json.dumps(
                {"claim": S.claim_id(item), "model": S.item_label(item),
                 "finding": str((marker.kwargs.get("finding") if marker else None) or "")})))
    recorded = item.stash.get(MEASUREMENTS_KEY, None)
    assertions = assertion_entries(item, recorded) if call.when == "call" else []
    failed = [a.message for a in assertions if not a.passed]
    if failed and (report.passed or report.skipped) and not hasattr(report, "wasxfail") and stand_in is None:
        # The claim caught the AssertionError of its own interval assertion and went on (to pass,
        # or to skip): a bound that failed is a failed claim, never a pass or a "not checked"
        # (the merge re-derives verdicts from these records). A claim on a random-weights stand-in
        # whose own assertion failed is "not checked" by the rule above, not a caught failure.
        report.outcome = "failed"
        report.longrepr = (f"{len(failed)} interval assertion{'s' if len(failed) != 1 else ''} of this claim "
                           "failed although the claim caught the AssertionError and went on; a failed bound "
                           "fails the claim:\n" + "\n".join(failed))
    if failed and S.is_claim(item):
        # The reason the ledger gives: what was measured against which bound (not a file:line).
        report.user_properties.append((f"circuits-reason-{call.when}", "; ".join(failed)))
    figures = item.stash.get(FIGURES_KEY, None) if call.when == "call" else None
    if call.when == "call" and (recorded or figures):
        record = ledger_record(item, recorded or [])
        record.figures = list(figures or ())
        record.expected_change = item.stash.get(EXPECTED_CHANGE_KEY, "") or None
        # Bounds asserted through assert_above / assert_below / assert_within: what was compared
        # with what, at which level, and the message; the merge recomputes every verdict from them.
        record.assertions = assertions
        # user_properties travel with the reports (also from xdist workers); JUnit XML
        # takes them from the teardown report, which copies the item's.
        props = [("circuits", json.dumps(record.to_json()))] + [
            (f"circuits:{m.key}", f"{m.mean:.6g} [{m.lower:.6g}, {m.upper:.6g}] n={m.n}")
            for m in record.measurements]
        item.user_properties.extend(props)
        if report.user_properties is not item.user_properties:
            report.user_properties.extend(props)
        report.sections.append(("circuits measurements", "\n".join(
            [repr(m) for m in recorded or ()] + [f"figure: {f.name}" for f in record.figures])))
    return report


def terminal_lines(config: pytest.Config) -> list[str] | None:
    """The ``circuits`` section of the terminal summary (None: no section, in a run that
    collected no claim and never started the session)."""
    results = config.stash.get(RESULTS_KEY, [])
    verdicts = config.stash.get(CLAIMS_KEY, {})
    if not results and not verdicts and not config.stash[SESSION_KEY].started:
        return None
    lines = []
    for r in results:
        lines.append(f"{r.outcome.upper():7} {r.nodeid}" + (f"\n        finding: {r.finding}" if r.finding else ""))
        for m in r.measurements:
            lines.append(f"        {one_line(m)}")
        for f in r.figures:
            lines.append(f"        figure: {f.name}")
        if r.version_changes:
            lines.append(f"        baseline recorded with other versions: {'; '.join(r.version_changes)}")
    cards = S.cards(config)
    if cards:
        from .report.cards import card_lines

        lines += card_lines(cards)
    lines += claims_summary(config, verdicts, results)
    if config.stash[SESSION_KEY].started:
        lines += config.stash[SESSION_KEY].get().summary_lines()
    elif config.stash.get(WORKERS_KEY, None):
        # xdist: the controller ran nothing; its workers' counters, summed
        workers = config.stash[WORKERS_KEY]
        counters, loads = S.summed_workers(workers)
        summed = S.counter_lines(counters, loads, S.cache_line(config.stash[SESSION_KEY].settings))
        summed[0] += f" (summed over {len(workers)} xdist workers)"
        lines += summed
    return lines


def stand_in_reason(item: pytest.Item, call: pytest.CallInfo) -> str | None:
    """Why a claim that ran on a random-weights stand-in (a checkpoint folder marked by
    :func:`pytest_circuits.architectures.build_full_size`) is not checked, whether it passed or
    failed its own assertion, or None. A crash (any other exception) is still a failure, so the
    claim is proven to run end to end, all but its numbers, which mean nothing on random weights."""
    if call.when != "call" or not S.is_claim(item):
        return None
    if call.excinfo is not None and not call.excinfo.errisinstance(AssertionError):
        return None
    model = getattr(item, "funcargs", {}).get("model")
    if model is None:
        return None
    from .architectures import stand_in
    from .models import info

    try:
        mi = info(model)
    except Exception:  # noqa: BLE001 - not a model of ours: nothing to say
        return None
    marked = stand_in(mi.name) if mi.source == "local" else None
    if marked is None:
        return None
    outcome = "failed its threshold" if call.excinfo is not None else "met its threshold"
    return (f"not checked: random weights ({mi.label} is a stand-in with the dimensions of "
            f"{marked.get('shape_of', 'a published model')}; the claim ran end to end and {outcome}, which "
            "says nothing about trained weights)")


def assertion_entries(item: pytest.Item, recorded: Any) -> list[AssertionEntry]:
    """The claim's interval assertions as the ledger keeps them: measurement, kind, threshold, the bound
    compared, level, whether it held, and the message (measured, interval, n, bound)."""
    from .measurement import _pct

    by_name = {getattr(m, "name", None): m for m in recorded or ()}
    out = []
    for a in item.stash.get(ASSERTIONS_KEY, None) or ():
        m = by_name.get(a.name)
        want = {"above": f"lower bound > {a.threshold}", "below": f"upper bound < {a.threshold}"}.get(
            a.kind, f"interval inside {tuple(a.threshold) if isinstance(a.threshold, (list, tuple)) else a.threshold}")
        what = repr(m) if m is not None else f"{a.name}{f'[{a.model}]' if a.model else ''}: bound {a.bound}"
        out.append(AssertionEntry(name=str(a.name), model=str(a.model or ""), kind=str(a.kind),
                                  threshold=_jsonable(a.threshold), bound=_jsonable(a.bound), level=float(a.level),
                                  passed=bool(a.passed), message=f"{what} ({_pct(a.level)} interval) -- expected {want}"))
    return out


def _jsonable(x: Any) -> Any:
    """A threshold or bound as JSON: a number, a list of numbers, else its text."""
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool) or x is None:
        return str(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def count_claim(config: pytest.Config, report: pytest.TestReport, expected_change: str) -> None:
    """Each claim's verdict: checked (passed, failed, expected change...) or not checked, and why."""
    verdicts = config.stash.setdefault(CLAIMS_KEY, {})
    measured = dict(report.user_properties).get(f"circuits-reason-{report.when}", "")
    if report.when == "teardown":
        # pytest counts a teardown failure as an error, also after a call that passed
        if report.failed and verdicts.get(report.nodeid, ("passed",))[0] == "passed":
            verdicts[report.nodeid] = ("error", reason(report))
        return
    if report.when == "setup" and report.passed:
        return
    if hasattr(report, "wasxfail"):
        verdict = ("expected change" if expected_change else "xfailed") if report.skipped else "xpassed"
        verdicts[report.nodeid] = (verdict, report.wasxfail + (f" (measured: {measured})" if measured else ""))
    elif report.skipped:
        verdicts[report.nodeid] = ("not checked", reason(report))
    elif report.failed:
        verdicts[report.nodeid] = ("failed" if report.when == "call" else "error", measured or reason(report))
    else:
        verdicts[report.nodeid] = ("passed", "")


#: how many characters of a failure's message the ledger keeps as its reason
REASON_CHARS = 2000


def reason(report: pytest.TestReport) -> str:
    """Why a claim failed, errored or was skipped, as a reviewer needs it: the exception's own
    message (e.g. a drift's summary line, a MeasurementError), never the file:line of the raise."""
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        text = str(lr[2])
    else:
        crash = getattr(lr, "reprcrash", None)
        text = str(getattr(crash, "message", "") or "") or str(getattr(report, "longreprtext", "") or lr or "")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0].removeprefix("Skipped: ").removeprefix("AssertionError: ").removeprefix("Failed: ")
    if len(lines) > 1 and (first.isidentifier() or first.startswith("assert ") or first.endswith(":")):
        first += " " + lines[1]     # a bare exception name or `assert x` gains the line that says what
    return first[:REASON_CHARS]


def claims_summary(config: pytest.Config, verdicts: dict[str, tuple[str, str]],
                    results: list[dict[str, Any]]) -> list[str]:
    """How many claims were checked (and how they came out), how many were not and why, and at
    which confidence level their measurements were asserted."""
    from collections import Counter

    if not verdicts:
        return []
    counts = Counter(v for v, _ in verdicts.values())
    checked = sum(n for v, n in counts.items() if v != "not checked")
    order = ("passed", "failed", "error", "expected change", "xfailed", "xpassed")
    parts = [f"{counts[v]} {v}" for v in order if counts[v]]
    lines = [f"claims: {checked} checked ({', '.join(parts) or 'none'}), "
             f"{counts['not checked']} not checked"]
    reasons = Counter(r.removeprefix("not checked: ") for v, r in verdicts.values() if v == "not checked")
    for reason, n in reasons.most_common():
        lines.append(f"  not checked x{n}: {reason}")
    levels = Counter(f"{m.level:.4g}" for r in results for m in r.measurements)
    if levels:
        st = config.stash[SESSION_KEY].settings
        how = ", ".join(f"{n} at level {lv}" for lv, n in sorted(levels.items()))
        asserted = Counter(f"{a.level:.4g}" for r in results for a in r.assertions)
        how += "; bounds asserted with assert_above/below/within: " + (
            ", ".join(f"{n} at level {lv}" for lv, n in sorted(asserted.items())) or "none")
        family = (f"; family-wise ({st.familywise}) over {config.stash.get(CLAIM_COUNT_KEY, 0)} claims "
                  f"collected: the run's verdicts hold together at {st.level:.0%}"
                  if st.familywise != "none" else "; each claim on its own (no family-wise control: "
                  "--circuits-familywise bonferroni)")
        lines.append(f"measurements: {how}{family}")
    return lines


def one_line(m: MeasurementEntry) -> str:
    """A measurement's line in the terminal summary, with its baseline comparison."""
    from .measurement import _fmt

    where = f"[{m.model}]" if m.model else ""
    line = (f"{m.name}{where} = {_fmt(m.mean)} [{_fmt(m.lower)}, {_fmt(m.upper)}] "
            f"n={m.n} ({m.level * 100:.4g}%)" + "".join(f" [{f}]" for f in m.flags))
    b = m.baseline
    if b and b.get("tolerance") == "updated":
        line += "  (baseline updated)"
    elif b and b.get("mean") is None:
        line += "  (new: no baseline)"
    elif b and b.get("mean") is not None:
        line += (f"  baseline {_fmt(b['mean'])}, drift {b['difference']:+.3g} "
                 f"({'within' if b['within'] else 'OUTSIDE'} {b['tolerance']})")
        if b.get("flag"):
            line += f" [{b['flag']}]"
    return line

