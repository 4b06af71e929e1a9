"""``pytest-circuits merge``: one release report from the JSON reports of several CI jobs.

A release gate split over jobs (``pytest --circuits-shard K/N --circuits-report shard-K.json``,
one job per checkpoint and shard) leaves one ledger per job. :func:`merge` checks that they
can be merged and unions them; :func:`gate_failures` says why the release gate fails, if it
does; the command prints the verdict and writes the requested outputs (JSON in the same
ledger format with ``"merged_from"``, Markdown, HTML, JUnit XML).

What is checked, and why (a merged report must never be greener than its parts):

* every input is a ledger of this schema with the sharding keys (``"collected"``,
  ``"claims"``): without them the merge cannot tell a complete suite from a partial one;
* the inputs come from one commit and one set of versions (``--allow-mixed`` relaxes this);
* inputs are grouped by their ``"collected"`` list (one group per suite run, e.g. one per
  checkpoint). Two groups whose lists overlap without being equal are reports of different
  suites (a claim added between runs): an error. Within a group the shard counts agree;
* the same (claim, model) reported twice (overlapping shards) must be reported identically;
* the gate fails when a collected claim is in no report, when any claim failed or errored
  (whatever the report's exit status says), when a job's pytest exit status was neither
  0 nor 5 (5: the shard had no items), or when nothing was checked at all (no claim collected,
  or every claim not checked: pytest exits 0 then, but such a gate verified nothing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from .errors import CircuitsError

FAILING_VERDICTS = ("failed", "error")
VERDICTS = ("passed", "failed", "error", "not checked", "expected change", "xfailed", "xpassed")
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed")
# pytest's exit statuses: 0 all passed, 5 no tests collected (an empty shard).
OK_EXIT = (0, 5)


class MergeError(CircuitsError):
    """The inputs of a merge cannot be merged (unreadable, not a report, different suites...)."""


def _problems(data: Any) -> list[str]:
    """What is wrong with ``data`` as a report that can be merged ([] when nothing is).

    The checks the merge relies on are made here, without dependencies; the JSON schema is
    checked too when ``jsonschema`` is installed."""
    if not isinstance(data, dict):
        return [f"the JSON is a {type(data).__name__}, not a report object"]
    out = []
    for key, kind in (("schema", int), ("exit_status", int), ("versions", dict), ("records", list),
                      ("claims", list), ("collected", list)):
        if key not in data:
            out.append(f"no {key!r}" + (" (a report written before sharding support, or collection did not "
                                         "finish)" if key in ("claims", "collected") else ""))
        elif not isinstance(data[key], kind) or isinstance(data[key], bool):
            out.append(f"{key!r} is not a {kind.__name__}")
    if out:
        return out
    if data["schema"] != 1:
        out.append(f"schema {data['schema']!r} is not 1")
    if not all(isinstance(n, str) and n for n in data["collected"]):
        out.append("'collected' holds something other than node ids")
    for i, c in enumerate(data["claims"]):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in
                                              ("nodeid", "claim", "model", "verdict", "reason", "finding")):
            out.append(f"claims[{i}] lacks one of nodeid, claim, model, verdict, reason, finding (strings)")
        elif c["verdict"] not in VERDICTS:   # an unknown verdict must not count as "not failed"
            out.append(f"claims[{i}] has verdict {c['verdict']!r}, not one of {', '.join(VERDICTS)}")
    for i, r in enumerate(data["records"]):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("claim", "nodeid", "model",
                                                                                 "outcome")) \
                or not isinstance(r.get("measurements"), list):
            out.append(f"records[{i}] lacks one of claim, nodeid, model, outcome, measurements")
        elif r["outcome"] not in OUTCOMES:
            out.append(f"records[{i}] has outcome {r['outcome']!r}, not one of {', '.join(OUTCOMES)}")
        elif not all(_is_measurement(m) for m in r["measurements"]):
            out.append(f"records[{i}] has a measurement without a key, numbers (mean, lower, upper, level) or n")
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


def _is_measurement(m: Any) -> bool:
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    return (isinstance(m, dict) and isinstance(m.get("key"), str) and isinstance(m.get("n"), int)
            and all(number(m.get(k)) for k in ("mean", "lower", "upper", "level")))


def _consistency(path: str, data: dict[str, Any]) -> list[str]:
    """A report that contradicts itself (edited, or written by something else) is refused."""
    out = []
    collected = set(data["collected"])
    nodeids = [c["nodeid"] for c in data["claims"]]
    dup = sorted({n for n in nodeids if nodeids.count(n) > 1})
    if dup:
        out.append(f"claims repeated: {', '.join(dup[:5])}")
    stray = sorted(set(nodeids) - collected)
    if stray:
        out.append(f"claims that are not in its 'collected': {', '.join(stray[:5])}")
    unknown = sorted({r["nodeid"] for r in data["records"]} - set(nodeids))
    if unknown:
        out.append(f"records of claims missing from its 'claims': {', '.join(unknown[:5])}")
    shard = data.get("shard")
    if shard is not None and not (isinstance(shard, dict) and isinstance(shard.get("index"), int)
                                  and isinstance(shard.get("count"), int)
                                  and 1 <= shard["index"] <= shard["count"]):
        out.append(f"'shard' is {shard!r}, not {{'index': K, 'count': N}} with 1 <= K <= N")
    return out


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and check one report; MergeError naming the file if it is not a mergeable report."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MergeError(f"{p}: cannot be read: {e}") from None
    if not text.strip():
        raise MergeError(f"{p}: is empty, not a pytest-circuits report")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise MergeError(f"{p}: is not JSON ({e}); a pytest --circuits-report file is expected") from None
    problems = _problems(data) or _consistency(str(p), data)
    if problems:
        raise MergeError(f"{p}: is not a pytest-circuits report that can be merged: " + "; ".join(problems))
    return data


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


def merge(reports: Sequence[tuple[str, dict[str, Any]]], *, allow_mixed: bool = False) -> dict[str, Any]:
    """One ledger from ``(path, report)`` pairs (each already checked by :func:`load_report`).

    Raises MergeError when they come from different commits or versions (unless
    ``allow_mixed``), from different suites, or disagree on a claim."""
    if not reports:
        raise MergeError("no reports to merge")
    commits = {p: d.get("git_commit") for p, d in reports}
    versions = {p: json.dumps(d["versions"], sort_keys=True) for p, d in reports}
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
    claims = _union("claim", [(p, c["nodeid"], c) for p, d in reports for c in d["claims"]])
    records = _union("record of", [(p, (r["claim"], r["model"], r["nodeid"]), r)
                                   for p, d in reports for r in d["records"]])
    cards = _union("checkup card", [(p, (c.get("check"), c.get("model")), c)
                                    for p, d in reports for c in d.get("checkup") or []])
    first = reports[0][1]
    merged: dict[str, Any] = {
        "schema": 1,
        "exit_status": max(int(d["exit_status"]) for _, d in reports),
        "git_commit": first.get("git_commit") if len(set(commits.values())) == 1 else None,
        "versions": _versions([d["versions"] for _, d in reports]),
        "records": sorted(records, key=lambda r: (r["claim"], r["model"], r["nodeid"])),
        "claims": sorted(claims, key=lambda c: (c["claim"], c["model"], c["nodeid"])),
        "collected": sorted({n for k in keys for n in k}),
        "shard": None,
        "merged_from": [{"path": p, "shard": d.get("shard"), "git_commit": d.get("git_commit")}
                        for p, d in reports],
    }
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
    claims (from the verdicts and from the records), and jobs whose pytest failed."""
    out = []
    have = {c["nodeid"] for c in merged["claims"]}
    missing = [n for n in merged["collected"] if n not in have]
    if missing:
        out.append(f"{len(missing)} collected claim{'s are' if len(missing) != 1 else ' is'} in no report "
                   f"(a shard missing or stopped early): " + ", ".join(missing))
    bad = [f"{c['nodeid']} ({c['verdict']}{': ' + c['reason'] if c['reason'] else ''})"
           for c in merged["claims"] if c["verdict"] in FAILING_VERDICTS]
    bad_ids = {c["nodeid"] for c in merged["claims"] if c["verdict"] in FAILING_VERDICTS}
    bad += [f"{r['nodeid']} (record outcome {r['outcome']})" for r in merged["records"]
            if r["outcome"] == "failed" and r["nodeid"] not in bad_ids]
    if bad:
        out.append(f"{len(bad)} claim{'s' if len(bad) != 1 else ''} failed or errored: " + "; ".join(bad))
    if not merged["collected"]:
        out.append("no report collected any claim: an empty suite gates nothing")
    elif not any(c["verdict"] != "not checked" for c in merged["claims"]):
        # pytest exits 0 when everything is skipped; a release gate that checked nothing has not passed.
        out.append(f"no claim was checked ({len(merged['claims'])} not checked)")
    # One gate rule for the exit status and the reports' banner: a measurement beyond its baseline
    # tolerance fails the gate even where its claim is recorded as passed (a hand-edited or
    # inconsistent report), and so does a drift that cannot be computed.
    from ._report import summarize

    beyond = [d for d in summarize(merged).beyond() if (d.claim, d.model) not in
              {(c["claim"], c["model"]) for c in merged["claims"] if c["verdict"] in FAILING_VERDICTS}]
    if beyond:
        out.append(f"{len(beyond)} measurement{'s' if len(beyond) != 1 else ''} of passing claims beyond "
                   "tolerance: " + "; ".join(f"{d.claim} [{d.model}] {d.metric}: {d.ratio:+.3g}x tolerance"
                                              for d in beyond))
    jobs = [f"{p} (exit status {d['exit_status']})" for p, d in reports if d["exit_status"] not in OK_EXIT]
    if jobs:
        out.append("pytest failed in " + ", ".join(jobs))
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

    records = {r["nodeid"]: r for r in data.get("records") or []}
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
        for m in (records.get(c["nodeid"]) or {}).get("measurements") or []:
            value = (f"{_fmt(m['mean'])} [{_fmt(m['lower'])}, {_fmt(m['upper'])}] n={m['n']} "
                     f"level={m['level']:.4g}")
            b = m.get("baseline")
            if b and b.get("mean") is not None:
                value += (f"; baseline {_fmt(b['mean'])}, drift {b['difference']:+.3g} "
                          f"({'within' if b['within'] else 'OUTSIDE'} {b['tolerance']})")
            ET.SubElement(props, "property", name=_xml(f"circuits:{m['key']}"), value=_xml(value))
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


def run(a: argparse.Namespace, prog: str) -> int:
    """Run ``merge`` from parsed arguments: 0 the gate passed, 1 it failed, 2 bad input."""
    import sys

    from . import _report as R

    try:
        if a.expect_reports is not None and a.expect_reports != len(a.reports):
            raise MergeError(f"{len(a.reports)} reports given, --expect-reports {a.expect_reports}")
        reports = [(p, load_report(p)) for p in a.reports]
        merged = merge(reports, allow_mixed=a.allow_mixed)
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
