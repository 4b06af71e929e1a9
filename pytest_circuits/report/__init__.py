"""The results ledger and the release-gate reports built from it.

Every claim that makes measurements contributes one record per (claim, model), a
:class:`~pytest_circuits.ledger.LedgerRecord`: the claim's id (node id without the model
parameter), the model's name and weights fingerprint, the outcome, the finding, and each
measurement (mean, interval, n, level) with its baseline comparison when baselines are on.
Records travel on the test reports (``user_properties``), so they arrive from xdist workers
too; the controller writes (records as :meth:`~pytest_circuits.ledger.LedgerRecord.to_json`):

* ``--circuits-report PATH.json``: the ledger (schema: ``data/report.schema.json``);
* ``--circuits-markdown PATH.md``: for CI job summaries;
* ``--circuits-html PATH.html``: one self-contained page (inline CSS, images as data URIs).

Both reports open with the release summary (:func:`summarize`): the gate's verdict by the
rule in :data:`GATE_RULE`, counts per checkpoint, a claims x checkpoints matrix whose cells
carry a symbol and a word besides their colour, and every baseline comparison as a drift in
units of its tolerance ((obtained - baseline) / allowed: +-1 is the edge), drawn in the HTML
as one forest plot (matplotlib; left out, with a table instead, if it is not installed) and
listed in the Markdown; then the details. :func:`terminal_lines` is the same summary for a
terminal (``pytest-circuits merge`` prints it). The renderers take new reports ("claims",
"collected", "shard"), merged ones ("merged_from") and old ones (verdicts from "records"), and
treat every report as untrusted: text is escaped, a missing or NaN number reads "n/a" and a
drift that cannot be computed never counts as within tolerance. They read a report's records
as the :class:`~pytest_circuits.ledger.LedgerRecord`\\ s it was written from (:func:`records`,
:meth:`LedgerRecord.read <pytest_circuits.ledger.LedgerRecord.read>`): one shape from the
measurement to the JSON, the merge and every report.

A claim's figures (:func:`pytest_circuits.attach_figure`) are shown under the claim in the HTML
report as images (``<img src="data:image/svg+xml;base64,...">`` with a ``<figcaption>``; an SVG
shown as an image runs no script and fetches nothing, and a figure whose SVG is not accepted,
:func:`pytest_circuits.figures.svg_problem`, is left out when the record is read); the Markdown
report lists them by name, the terminal summary says ``figure: <name>`` under the claim.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import html
import io
import json
import math
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..config import versions
from ..ledger import LedgerRecord, MeasurementEntry

#: 2: the evidence the merge re-derives verdicts from (assertions with bounds and messages, each
#: measurement's sem, each baseline comparison's entry and status), the run's "mode", "suite",
#: "collected_sha256" and "worktree". Reports of schema 1 are rendered, never merged.
SCHEMA_VERSION = 2
#: the environment variable holding the key that signs reports (HMAC-SHA256), see docs/trust.md
REPORT_KEY_ENV = "PYTEST_CIRCUITS_REPORT_KEY"


@functools.lru_cache(maxsize=4)
def git_commit(root: str) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _git(root: str, *args: str, timeout: float = 20) -> bytes | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def worktree(root: str, exclude: Iterable[str] = ()) -> dict[str, Any] | None:
    """Whether the git working tree at ``root`` differs from its commit, and a hash of the
    difference (None outside git). The hash covers ``git diff HEAD --binary`` (staged and
    unstaged changes to tracked files) and every untracked, not ignored file's path and
    contents; ``exclude`` names paths to leave out (the run's own report files)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or _git(root, "rev-parse", "--verify", "-q", "HEAD") is None:
        return None
    top_dir = Path(top.decode("utf-8", "surrogateescape").strip())
    skip = set()
    for e in exclude:
        q = Path(e) if Path(e).is_absolute() else Path(root) / e
        try:
            skip.add(q.resolve().relative_to(top_dir.resolve()).as_posix())
        except (ValueError, OSError):
            pass
    pathspec = ["--", "."] + [f":(exclude,top){x}" for x in sorted(skip)]
    status = _git(str(top_dir), "status", "--porcelain=v1", "-z", "--untracked-files=all", *pathspec)
    diff = _git(str(top_dir), "diff", "HEAD", "--binary", *pathspec)
    untracked = _git(str(top_dir), "ls-files", "--others", "--exclude-standard", "-z", *pathspec)
    if status is None or diff is None or untracked is None:
        return {"dirty": None, "diff_sha256": None, "changed": None}
    changed = [x for x in status.split(b"\0") if x.strip()]
    if not changed:
        return {"dirty": False, "diff_sha256": None, "changed": 0}
    h = hashlib.sha256(diff)
    for name in sorted(x for x in untracked.split(b"\0") if x):
        h.update(b"\0untracked\0" + name + b"\0")
        try:
            with open(top_dir / name.decode("utf-8", "surrogateescape"), "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            h.update(b"<unreadable>")
    return {"dirty": True, "diff_sha256": h.hexdigest(), "changed": len(changed)}


def ledger(records: Iterable[LedgerRecord], *, root: str, exit_status: int,
           worktree: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report of a run: its identity (schema, exit status, commit, working tree,
    versions) and its claims' ledger records (:meth:`LedgerRecord.to_json`), by claim and model."""
    recs = [r.to_json() for r in sorted(records, key=lambda r: (r.claim, r.model))]
    return {"schema": SCHEMA_VERSION, "exit_status": int(exit_status), "git_commit": git_commit(root),
            "worktree": worktree, "versions": versions(), "records": recs}


def _signed_bytes(data: dict[str, Any]) -> bytes:
    body = {k: v for k, v in data.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8")


def signature(data: dict[str, Any], key: str) -> str:
    """The report's HMAC-SHA256 under ``key`` (over its canonical JSON, "signature" left out)."""
    return "hmac-sha256:" + hmac.new(key.encode("utf-8"), _signed_bytes(data), hashlib.sha256).hexdigest()


def sign(data: dict[str, Any]) -> None:
    """Sign ``data`` in place when ``$PYTEST_CIRCUITS_REPORT_KEY`` is set (else leave it unsigned)."""
    import os

    key = os.environ.get(REPORT_KEY_ENV, "")
    if key:
        data["signature"] = signature(data, key)


def records(data: dict[str, Any]) -> list[LedgerRecord]:
    """The ledger records of a report (new, old, merged or damaged), as the reports render them
    (:meth:`LedgerRecord.read <pytest_circuits.ledger.LedgerRecord.read>`; an entry that is not an
    object is left out)."""
    return [LedgerRecord.read(r) for r in data.get("records") or [] if isinstance(r, dict)]


def signature_problem(data: dict[str, Any], key: str) -> str:
    """Why ``data`` is not signed with ``key`` ("" when its signature is valid)."""
    got = data.get("signature")
    if not isinstance(got, str) or not got:
        return "it is not signed"
    if not hmac.compare_digest(got, signature(data, key)):
        return "its signature does not match its contents (edited after the run, or signed with another key)"
    return ""


# ---------------------------------------------------------------------------
# The release summary: one verdict per (claim, checkpoint), the gate, the drifts.
# Built from "claims" when the report has them (every claim item, checked or not) and
# from "records" (measurements, and verdicts for reports written before "claims"
# existed). Every number may be missing or NaN in a hand-made or damaged report:
# such a drift is "n/a" and never counts as within tolerance.

#: verdict -> (css class, symbol, word); the symbol and word make colour never the only signal.
VERDICT_STYLE: dict[str, tuple[str, str, str]] = {
    "passed": ("pass", "\u2713", "pass"),
    "drift": ("drift", "\u25b2", "DRIFT"),
    "failed": ("fail", "\u2717", "FAIL"),
    "error": ("error", "!", "ERROR"),
    "not run": ("missing", "\u2205", "not run"),
    "not checked": ("skip", "\u2013", "not checked"),
    "expected change": ("expected", "~", "expected change"),
    "xfailed": ("xfail", "x", "xfailed"),
    "xpassed": ("xpass", "?", "xpassed"),
}
#: what a verdict's word means, for the legends.
VERDICT_MEANING = {"drift": "passed, but a measurement drifted beyond its baseline tolerance",
                   "not run": "collected, but in no report",
                   "expected change": "the change marked as expected happened (strict xfail)"}
#: the verdicts that fail the release gate ("drift": a pass whose baseline comparison is outside).
GATE_FAILING = ("failed", "error", "drift", "not run")
GATE_RULE = ("the gate fails if any claim failed or errored on any checkpoint, any measurement drifted "
             "beyond its baseline tolerance (or its drift cannot be computed), a collected claim was not "
             "run, pytest exited non-zero, or no claim was checked at all")
_OUTCOME_VERDICT = {"passed": "passed", "failed": "failed", "error": "error", "skipped": "not checked",
                    "xfailed": "xfailed", "xpassed": "xpassed"}
_DOT, _PM = " \u00b7 ", "\u00b1"
_SEVERITY = ("error", "failed", "not run", "xpassed", "expected change", "xfailed", "not checked", "passed")


def _num(x: Any) -> float:
    """A report's number as a float; NaN for anything missing or not a number."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x)


def _fmt_num(x: Any) -> str:
    from ..measurement import _fmt

    v = _num(x) + 0.0  # no "-0"
    return _fmt(v) if math.isfinite(v) else "n/a"


@dataclass(frozen=True)
class Drift:
    """One measurement's comparison with its baseline, in units of its tolerance.

    ``ratio`` = difference / allowed (NaN when either is missing or not finite; +-inf for a
    non-zero difference with a zero allowance). ``within`` is True only when the report says
    so AND its numbers agree; a NaN ratio is never within."""

    claim: str
    model: str
    metric: str
    ratio: float
    difference: float
    allowed: float
    tolerance: str
    within: bool
    note: str = ""

    @property
    def ratio_text(self) -> str:
        r = self.ratio + 0.0  # no "-0.00"
        if math.isnan(r):
            return "n/a"
        if math.isinf(r):
            return ("+" if r > 0 else "-") + "\u221e\u00d7 tol"
        return f"{r:+.2f}\u00d7 tol"


def is_new(m: MeasurementEntry) -> bool:
    """A measurement that has no baseline yet ("new"): never a drift, never "beyond tolerance".
    Reports say so with ``"status": "new"``; older ones by a null baseline mean marked not within."""
    b = m.baseline
    if not isinstance(b, dict):
        return False
    if "status" in b:
        return b.get("status") == "new"
    return b.get("mean") is None and b.get("within") is False and b.get("difference") is None


def _drift(claim: str, model: str, m: MeasurementEntry) -> Drift | None:
    b = m.baseline
    if not isinstance(b, dict) or b.get("tolerance") == "updated" or b.get("status") == "updated" or is_new(m):
        return None
    metric = m.key
    diff, allowed = _num(b.get("difference")), _num(b.get("allowed"))
    if math.isnan(diff):
        diff = _num(m.mean) - _num(b.get("mean"))
    if not (math.isfinite(diff) and math.isfinite(allowed)) or allowed < 0:
        ratio = math.nan
    elif allowed == 0:
        ratio = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        ratio = diff / allowed
    slack = 4 * sys.float_info.epsilon * max(abs(_num(m.mean)), abs(_num(b.get("mean"))), 1.0)
    numbers_within = math.isfinite(ratio) and abs(diff) <= allowed + slack
    said = b.get("within") is True
    note = str(b.get("flag") or "")
    if math.isnan(ratio):
        note = note or "the drift cannot be computed (a number is missing or not finite)"
    elif said and not numbers_within:
        note = note or "the report says within, but its numbers are outside"
    elif not said and numbers_within:
        note = note or "the report marks it outside its tolerance"
    return Drift(claim, model, metric, ratio, diff, allowed, str(b.get("tolerance") or "?"),
                 said and numbers_within, note)


@dataclass
class Cell:
    """One claim on one checkpoint: its verdict, why, and its measurements' drifts."""

    claim: str
    model: str
    verdict: str
    reason: str = ""
    drifts: list[Drift] = field(default_factory=list)
    measurements: list[MeasurementEntry] = field(default_factory=list)
    new: list[str] = field(default_factory=list)     # metrics with no baseline yet

    @property
    def beyond(self) -> list[Drift]:
        return [d for d in self.drifts if not d.within]

    @property
    def shown(self) -> str:
        """The verdict shown: a pass with a drift beyond tolerance is a "drift"."""
        return "drift" if self.verdict == "passed" and self.beyond else self.verdict

    @property
    def worst(self) -> Drift | None:
        """The drift beyond tolerance farthest out (a computable one before an uncomputable one), else None."""
        return min(self.beyond, key=_drift_order, default=None)


@dataclass
class Summary:
    models: list[str]
    claims: list[str]
    findings: dict[str, str]
    cells: dict[tuple[str, str], Cell]
    passed: bool
    reasons: list[str]
    identity: list[str]

    def counts(self, model: str) -> dict[str, int]:
        out = {v: 0 for v in VERDICT_STYLE}
        for (_, m), cell in self.cells.items():
            if m == model:
                out[cell.shown] += 1
        return out

    def drifted(self, model: str) -> int:
        """How many claims have a measurement beyond tolerance on ``model`` (passed or not; a
        measurement with no baseline yet is new, not drifted)."""
        return sum(1 for (_, m), c in self.cells.items() if m == model and c.beyond)

    def drifts(self) -> list[Drift]:
        """Every measurement compared with a baseline: the real drifts first, farthest out first;
        those that cannot be computed ("n/a") last."""
        return sorted((d for c in self.cells.values() for d in c.drifts), key=_drift_order)

    def new(self) -> list[tuple[str, str, str]]:
        """(claim, model, metric) of every measurement with no baseline yet."""
        return sorted((c.claim, c.model, k) for c in self.cells.values() for k in c.new)

    def beyond(self) -> list[Drift]:
        return [d for d in self.drifts() if not d.within]


def _drift_order(d: Drift) -> tuple[Any, ...]:
    """Real drifts first, farthest out first; an uncomputable one ("n/a") after every number."""
    return (1, 0.0, d.claim, d.model, d.metric) if math.isnan(d.ratio) else (0, -abs(d.ratio), d.claim, d.model,
                                                                              d.metric)


def _claim_of(nodeid: str, model: str) -> str:
    """The claim id of a node id: without the model parameter (as the plugin's records name it)."""
    head, bracket, params = nodeid.rpartition("[")
    if not (model and bracket and params.endswith("]")):
        return nodeid
    rest = [p for p in params[:-1].split("-") if p != model]
    return head + (f"[{'-'.join(rest)}]" if rest else "")


def _natural(name: str) -> list[Any]:
    """Sort key putting step-9000 before step-12000."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def summarize(data: dict[str, Any]) -> Summary:
    """The release summary of a report (new, old or merged; one checkpoint or many)."""
    recs = records(data)
    cells: dict[tuple[str, str], Cell] = {}
    findings: dict[str, str] = {}
    for r in recs:
        claim, model = r.claim, r.model
        verdict = _OUTCOME_VERDICT.get(r.outcome, "error")
        if verdict == "xfailed" and r.expected_change:
            verdict = "expected change"
        ms = list(r.measurements)
        cell = Cell(claim, model, verdict, r.expected_change or "", measurements=ms)
        cell.drifts = [d for d in (_drift(claim, model, m) for m in ms) if d is not None]
        cell.new = [m.key for m in ms if is_new(m)]
        old = cells.get((claim, model))
        if old is not None:  # the same claim and checkpoint twice (a damaged merge): never hide the worse
            old.verdict = min(old.verdict, cell.verdict, key=_SEVERITY.index)
            old.reason = old.reason or cell.reason
            old.measurements += cell.measurements
            old.drifts += cell.drifts
            old.new += cell.new
            cell = old
        cells[(claim, model)] = cell
        if r.finding:
            findings.setdefault(claim, r.finding)
    for c in data.get("claims") or []:
        if not isinstance(c, dict):
            continue
        model = str(c.get("model") or "")
        claim = str(c.get("claim") or _claim_of(str(c.get("nodeid") or "?"), model))
        verdict = str(c.get("verdict") or "error")
        verdict = verdict if verdict in VERDICT_STYLE and verdict != "drift" else "error"
        cell = cells.get((claim, model))
        if cell is None:
            cells[(claim, model)] = Cell(claim, model, verdict, str(c.get("reason") or ""))
        else:  # the worse of the two, should they disagree
            cell.verdict = min(cell.verdict, verdict, key=_SEVERITY.index)
            cell.reason = str(c.get("reason") or "") or cell.reason
        if c.get("finding"):
            findings.setdefault(claim, str(c["finding"]))
    if not data.get("shard"):  # a shard report covers part of the suite; a whole or merged one all of it
        known = {r.nodeid for r in recs} | {c.get("nodeid") for c in data.get("claims") or []
                                                       if isinstance(c, dict)}
        for nodeid in data.get("collected") or []:
            if nodeid not in known:
                cells.setdefault((str(nodeid), ""), Cell(str(nodeid), "", "not run",
                                                         "collected, but in no report"))
    models = sorted({m for _, m in cells}, key=_natural)
    claims = sorted({c for c, _ in cells})
    reasons = []
    for v in GATE_FAILING:
        n = sum(c.shown == v for c in cells.values())
        if n:
            reasons.append(f"{n} claim result{'s' if n != 1 else ''} " + {
                "failed": "failed", "error": "errored", "drift": "passed but drifted beyond tolerance",
                "not run": "collected but not run"}[v])
    n_beyond = sum(len(c.beyond) for c in cells.values())
    if n_beyond:
        reasons.append(f"{n_beyond} measurement{'s' if n_beyond != 1 else ''} beyond tolerance")
    if not any(c.verdict not in ("not checked", "not run") for c in cells.values()):
        reasons.append("no claim was checked")
    if any(m.get("update_baselines") for m in _modes(data)):
        reasons.append("made with --circuits-update-baselines: its measurements were written as the baselines, "
                       "not compared with them, so it cannot pass a gate")
    status = data.get("exit_status")
    if status != 0 and not reasons:
        reasons.append(f"pytest exited with status {status} although no claim failed")
    return Summary(models, claims, findings, cells, not reasons, reasons, _identity(data))


def _modes(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The run modes of a report: its own, or those of the reports a merged one was made from."""
    merged = data.get("merged_from") if isinstance(data.get("merged_from"), list) else []
    modes = [data.get("mode")] + [x.get("mode") for x in merged if isinstance(x, dict)]
    return [m for m in modes if isinstance(m, dict)]


def _tree(tree: Any) -> str:
    """' (dirty working tree: ...)' for a report's "worktree", '' for a clean or unknown one."""
    if not isinstance(tree, dict) or tree.get("dirty") is False:
        return ""
    if tree.get("dirty") is None:
        return " (working tree state unknown)"
    h = str(tree.get("diff_sha256") or "?")[:12]
    n = tree.get("changed")
    return f" + uncommitted changes (DIRTY working tree: {n} path{'s' if n != 1 else ''} differ, diff sha256 {h})"


def _identity(data: dict[str, Any]) -> list[str]:
    out = [f"commit {str(data.get('git_commit') or 'unknown')[:12]}{_tree(data.get('worktree'))}"]
    if data.get("date"):
        out.append(str(data["date"]))
    shard = data.get("shard")
    if isinstance(shard, dict):
        out.append(f"shard {shard.get('index')}/{shard.get('count')} (part of the suite)")
    merged = data.get("merged_from")
    if isinstance(merged, list):
        out.append(f"merged from {len(merged)} report{'s' if len(merged) != 1 else ''}")
        commits = {str(x.get("git_commit")) for x in merged if isinstance(x, dict)}
        if len(commits) > 1:
            out.append(f"WARNING: the merged reports name {len(commits)} different commits")
        trees = {_tree(x.get("worktree")) for x in merged if isinstance(x, dict)}
        if len(trees) > 1:
            out.append("WARNING: the merged reports come from different working trees (" +
                       ", ".join(sorted(t.strip() or "clean" for t in trees)) + ")")
    updates = [m for m in _modes(data) if m.get("update_baselines")]
    if updates:
        out.append("baselines UPDATED by this run (--circuits-update-baselines"
                   + (" --circuits-update-failing" if any(m.get("update_failing") for m in updates) else "") + ")")
    selection = (data.get("suite") or {}).get("selection") if isinstance(data.get("suite"), dict) else None
    if selection:
        out.append("a selection of the suite: " + ", ".join(f"{k} {v}" for k, v in selection.items()))
    return out


def _counts_text(counts: dict[str, int], beyond: int = 0) -> str:
    """"4 pass, 8 failed (7 with a drift beyond tolerance)" for one checkpoint."""
    text = ", ".join(f"{n} {'failed' if v == 'failed' else VERDICT_STYLE[v][2].lower()}"
                     for v, n in counts.items() if n) or "no claims"
    return text + (f" ({beyond} with a drift beyond tolerance)" if beyond else "")


def _model_name(model: str) -> str:
    return model or "(no model)"


def terminal_lines(data: dict[str, Any]) -> list[str]:
    """The release verdict for a terminal: the gate, counts per checkpoint, the drifted claims."""
    s = summarize(data)
    lines = [f"release gate {'PASSED' if s.passed else 'FAILED'}"
             + ("" if s.passed else f": {'; '.join(s.reasons)}") + f" ({', '.join(s.identity)})"]
    for model in s.models:
        lines.append(f"  {_model_name(model)}: {_counts_text(s.counts(model), s.drifted(model))}")
    new = s.new()
    if new:
        lines.append(f"new (no baseline yet, not drifted): {len(new)} measurement{'s' if len(new) != 1 else ''}")
    beyond = s.beyond()
    if beyond:
        lines.append(f"beyond tolerance ({len(beyond)} measurement{'s' if len(beyond) != 1 else ''}):")
        for d in beyond:
            lines.append(f"  {d.ratio_text:>13}  {d.claim} [{_model_name(d.model)}] {d.metric}"
                         f" (difference {_fmt_num(d.difference)}, allowed \u00b1{_fmt_num(d.allowed)} {d.tolerance})"
                         + (f": {d.note}" if d.note else ""))
    for c in sorted(s.cells.values(), key=lambda c: (c.claim, c.model)):
        if c.shown in ("failed", "error", "not run") and not c.beyond:
            lines.append(f"  {VERDICT_STYLE[c.shown][2]:>13}  {c.claim} [{_model_name(c.model)}]"
                         + (f": {c.reason}" if c.reason else ""))
    return lines


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", "utf-8")


def _cell(m: MeasurementEntry) -> str:
    s = f"{_fmt_num(m.mean)} [{_fmt_num(m.lower)}, {_fmt_num(m.upper)}]"
    level = _num(m.level)
    if math.isfinite(level) and abs(level - 0.95) > 1e-12:
        s += f" ({level * 100:.4g}%)"
    s += "".join(f" [{f}]" for f in m.flags)
    b = m.baseline
    if is_new(m):
        s += ", new (no baseline yet)"
    elif isinstance(b, dict) and b.get("tolerance") != "updated":
        d = _drift("", "", m)
        diff = d.difference if d else math.nan
        s += f", drift {diff:+.3g}" if math.isfinite(diff) else ", drift n/a"
        s += "" if d and d.within else " (!)"
        if b.get("flag"):
            s += f" [{b['flag']}]"
    return s


def _verdict(r: LedgerRecord) -> str:
    if r.outcome == "xfailed" and r.expected_change:
        return "XFAIL (expected change)"
    return {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "xfailed": "XFAIL",
            "xpassed": "XPASS"}.get(r.outcome, r.outcome.upper() or "NO OUTCOME")


def rows(data: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(claim, metric, model, cell) for every measurement, in order."""
    return [(r.claim, m.key, r.model, f"{_verdict(r)}: {_cell(m)}") for r in records(data) for m in r.measurements]


def _md(x: Any) -> str:
    """Report text made safe for a Markdown table cell, shown as written (:func:`~pytest_circuits._markup.md_cell`)."""
    from .._markup import md_cell

    return md_cell(x)


def _code(x: Any) -> str:
    """Report text as a Markdown code span in a table cell (no HTML is rendered inside one)."""
    return "`" + " ".join(str(x).split()).replace("`", "'").replace("|", "\\|") + "`"


def summary_markdown(data: dict[str, Any], *, largest: int = 10) -> list[str]:
    """The release summary heading the Markdown report: the verdict line, the counts per
    checkpoint, the claims x checkpoints matrix with symbols and the largest drifts."""
    s = summarize(data)
    verdict = "\u2713 Release gate PASSED" if s.passed else "\u2717 Release gate FAILED"
    lines = [f"## {verdict}" + ("" if s.passed else f": {_md('; '.join(s.reasons))}"), "",
             _md(_DOT.join(s.identity)) + f". <sub>Rule: {_md(GATE_RULE)}.</sub>", "",
             "| checkpoint | claims | claims beyond tolerance |", "|---|---|---|"]
    lines += [f"| {_md(_model_name(m))} | {_md(_counts_text(s.counts(m)))} | {s.drifted(m)} |" for m in s.models]
    lines += ["", "| claim | finding | " + " | ".join(_md(_model_name(m)) for m in s.models) + " |",
              "|---|---|" + "---|" * len(s.models)]
    for claim in s.claims:
        cells = []
        for m in s.models:
            cell = s.cells.get((claim, m))
            if cell is None:
                cells.append("\u00b7")
                continue
            _, sym, word = VERDICT_STYLE[cell.shown]
            worst = cell.worst
            cells.append(f"{sym} {word}" + (f" \u25b2{worst.ratio_text}" if worst else ""))
        lines.append(f"| {_code(_claim_label(claim))} | {_md(_short(s.findings.get(claim, ''), 90))} | "
                     + " | ".join(_md(c) for c in cells) + " |")
    lines += ["", "Legend: " + ", ".join(f"{sym} {word}" + (f" ({VERDICT_MEANING[v]})" if v in VERDICT_MEANING else "")
                                         for v, (_, sym, word) in VERDICT_STYLE.items())
              + "; \u25b2 n\u00d7 tol: the largest drift from the baseline in units of its allowed difference.", ""]
    why = [c for c in sorted(s.cells.values(), key=lambda c: (c.claim, _natural(c.model)))
           if c.reason and c.shown in ("failed", "error", "not run", "not checked", "expected change")]
    if why:
        lines += [f"- {VERDICT_STYLE[c.shown][1]} {_code(_claim_label(c.claim))} on {_md(_model_name(c.model))}: "
                  f"{_md(_short(c.reason, 160))}" for c in why[:largest * 2]]
        lines += [f"- ... and {len(why) - largest * 2} more (details below)"] if len(why) > largest * 2 else []
        lines += [""]
    drifts = s.drifts()
    new = s.new()
    if new:
        lines += [f"New (no baseline yet, so not a drift): {len(new)} measurement{'s' if len(new) != 1 else ''} "
                  "(" + _md(_short("; ".join(f"{_claim_label(c)} [{_model_name(m)}] {k}" for c, m, k in new), 300))
                  + ")", ""]
    if not drifts:
        lines += ["No measurement was compared with a baseline.", ""]
        return lines
    beyond = s.beyond()
    shown = beyond[:largest] if beyond else drifts[:min(largest, 5)]
    lines += [f"### Largest drifts ({len(beyond)} of {len(drifts)} measurements beyond tolerance"
              + (f"; {len(shown)} shown" if len(shown) < len(beyond) else "") + ")", "",
              "| drift / allowed | claim | checkpoint | metric | difference | allowed |", "|---:|---|---|---|---:|---|"]
    lines += [f"| {'**' if not d.within else ''}{_md(d.ratio_text)}{'**' if not d.within else ''} | "
              f"{_code(_claim_label(d.claim))} | {_md(_model_name(d.model))} | {_md(d.metric)} | "
              f"{_md(_fmt_num(d.difference))} | \u00b1{_md(_fmt_num(d.allowed))} ({_md(d.tolerance)})"
              + (f" {_md(d.note)}" if d.note else "") + " |" for d in shown]
    return lines + [""]


def markdown(data: dict[str, Any]) -> str:
    """The Markdown report (for $GITHUB_STEP_SUMMARY): the release summary, then every
    measurement per claim and checkpoint, version changes and the checkup cards."""
    recs = records(data)
    models = sorted({r.model for r in recs}, key=_natural)
    table: dict[tuple[str, str], dict[str, str]] = {}
    for claim, metric, model, cell in rows(data):
        table.setdefault((claim, metric), {})[model] = cell
    vers = data.get("versions") if isinstance(data.get("versions"), dict) else {}
    lines = ["# pytest-circuits release report", ""] + summary_markdown(data)
    lines += ["## Details", "",
              f"commit {_code(data.get('git_commit') or 'unknown')}, exit status {_md(data.get('exit_status'))}, "
              + _md(", ".join(f"{k} {v}" for k, v in vers.items())), ""]
    if table:
        lines += ["| claim | metric | " + " | ".join(_md(_model_name(m)) for m in models) + " |",
                  "|---|---|" + "---|" * len(models)]
        for (claim, metric), cells in table.items():
            lines.append(f"| {_code(claim)} | {_md(metric)} | "
                         + " | ".join(_md(cells.get(m, "-")) for m in models) + " |")
        fps = {r.model: r.fingerprint or "?" for r in recs}
        lines += ["", "Models: " + "; ".join(f"{_code(_model_name(m))} ({_md(fps[m])})" for m in models), ""]
    figures = [(r.claim, r.model, f) for r in recs for f in r.figures]
    if figures:
        lines += ["Figures (pictures shown in the HTML report):", ""]
        lines += [f"- {_code(claim)} on {_md(_model_name(model))}: {_code(f.name)}"
                  + (f": {_md(f.caption)}" if f.caption else "") for claim, model, f in figures] + [""]
    changes = version_changes(data)
    if changes:
        lines += ["Baselines recorded with other versions (small numeric drift is possible):", ""]
        lines += [f"- {_code(claim)} on {_md(model)}: {_md(text)}" for claim, model, text in changes] + [""]
    if data.get("checkup"):
        from .cards import card_markdown

        lines += [_cards(card_markdown, data["checkup"], _md)]
    return "\n".join(lines)


def _cards(render: Any, cards: Any, escape: Any) -> str:
    """The checkup cards rendered, or a line saying they are malformed (a report is untrusted)."""
    try:
        if not isinstance(cards, list) or not all(isinstance(c, dict) for c in cards):
            raise TypeError("'checkup' is not a list of cards")
        return str(render(cards))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return escape(f"The checkup cards in this report are malformed and are not shown ({type(e).__name__}: {e}).")


def version_changes(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(claim, model, "pkg old -> new; ...") for every claim whose baseline has other versions."""
    return [(r.claim, r.model, "; ".join(r.version_changes)) for r in records(data) if r.version_changes]


def write_markdown(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(data), "utf-8")


# ---------------------------------------------------------------------------
# HTML: one self-contained page (inline CSS, images as data URIs, nothing fetched).
# Above the fold: the gate's verdict with counts per checkpoint, the claims x checkpoints
# matrix and the drift forest plot; below: the details of every claim.

_CSS = """
*{box-sizing:border-box}
body{font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fff}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
header.banner{padding:8px 16px;border-bottom:4px solid;display:flex;flex-wrap:wrap;gap:4px 24px;align-items:center}
header.gate-passed{background:#e6f4ea;border-color:#1e7e34}
header.gate-failed{background:#fdecea;border-color:#b3261e}
.gate{font-size:22px;font-weight:700;white-space:nowrap}
.gate-passed .gate{color:#1e7e34}.gate-failed .gate{color:#b3261e}
.why{font-weight:600}
.rule{color:#444;font-size:12px}
.identity{font-weight:700;color:#1d1d1f}
.rule{flex-basis:100%}
table{border-collapse:collapse}
table.counts td,table.counts th{padding:1px 8px;border:1px solid #ccc;text-align:right;background:#fff}
table.counts th:first-child,table.counts td:first-child{text-align:left}
.overview{display:flex;gap:16px;padding:8px 16px;align-items:flex-start}
#matrix{flex:1 1 48%;min-width:0}
#forest{flex:1 1 52%;min-width:0}
#forest img{max-width:100%;height:auto;display:block}
h2{font-size:15px;margin:4px 0 6px}
table.matrix{width:100%}
table.matrix th,table.matrix td{border:1px solid #d0d0d0;padding:2px 6px;vertical-align:top}
table.matrix thead th{background:#f3f3f3;font-size:12px}
table.matrix thead th:not(.claim){width:1%}
table.matrix th.claim{text-align:left;font-weight:normal}
.cname{font-weight:600;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.finding{color:#555;font-size:12px;display:block}
td.v{white-space:nowrap;text-align:center;font-weight:600;width:1%}
.v-pass{background:#d4edda;color:#14532d}
.v-drift{background:#ffe8a3;color:#5c3d00}
.v-fail{background:#f8c9c4;color:#7a1a12}
.v-error{background:#b3261e;color:#fff}
.v-missing{background:#e9d5ff;color:#3b0764}
.v-skip{background:#eceff1;color:#37474f}
.v-expected{background:#d6e4ff;color:#0b3d91}
.v-xfail{background:#eef2ff;color:#312e81}
.v-xpass{background:#fde2f3;color:#831843}
.v-none{background:#fff;color:#999}
.tol{display:block;font-weight:normal;font-size:11px}
.legend{margin-top:6px;font-size:12px;display:flex;flex-wrap:wrap;gap:4px}
.legend span{padding:1px 6px;border:1px solid #ccc;border-radius:3px}
#details{padding:8px 16px;border-top:1px solid #ccc}
#details h3{font-size:13px;margin:14px 0 2px}
#details table td,#details table th{border:1px solid #ddd;padding:2px 6px;font-size:12px;text-align:left}
#details td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:12px}
figure.claim-figure{margin:8px 0}
figure.claim-figure img{max-width:100%;height:auto;display:block;border:1px solid #eee}
figure.claim-figure figcaption{font-size:12px;color:#333}
"""


def _e(x: Any) -> str:
    """Escape any report text for HTML element content and double-quoted attributes."""
    return html.escape(str(x), quote=True)


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _claim_label(claim: str) -> str:
    """The claim's test name (with its parameters), without the file path."""
    return claim.rpartition("::")[2] or claim


def _cell_text(cell: Cell | None) -> tuple[str, str, str]:
    """(css class, visible text, hover text) of one matrix cell."""
    if cell is None:
        return "v-none", "\u00b7", "no result for this claim on this checkpoint"
    cls, sym, word = VERDICT_STYLE[cell.shown]
    hover = [f"{word}: {cell.reason}" if cell.reason else word]
    hover += [f"{d.metric}: {d.ratio_text}" + (f" ({d.note})" if d.note else "") for d in cell.beyond]
    return f"v-{cls}", f"{sym} {word}", "\n".join(hover)


def _matrix_html(s: Summary) -> str:
    out = ["<table class=\"matrix\"><thead><tr><th class=\"claim\">claim (finding)</th>"]
    out += [f"<th scope=\"col\">{_e(_model_name(m))}</th>" for m in s.models]
    out.append("</tr></thead><tbody>")
    for claim in s.claims:
        finding = s.findings.get(claim, "")
        out.append(f"<tr data-claim=\"{_e(claim)}\"><th class=\"claim\" scope=\"row\" title=\"{_e(claim)}\">"
                   f"<span class=\"cname\">{_e(_claim_label(claim))}</span>"
                   + (f"<span class=\"finding\" title=\"{_e(finding)}\">{_e(_short(finding, 96))}</span>"
                      if finding else "") + "</th>")
        for m in s.models:
            cell = s.cells.get((claim, m))
            cls, text, hover = _cell_text(cell)
            verdict = cell.shown if cell else "none"
            worst = cell.worst if cell else None
            tol = f"<span class=\"tol\">\u25b2 {_e(worst.ratio_text)}</span>" if worst else ""
            out.append(f"<td class=\"v {cls}\" data-verdict=\"{_e(verdict)}\" data-model=\"{_e(m)}\" "
                       f"title=\"{_e(hover)}\">{_e(text)}{tol}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    legend = [f"<span class=\"v-{c}\">{_e(sym)} {_e(w)}{_e(': ' + VERDICT_MEANING[v] if v in VERDICT_MEANING else '')}"
              "</span>" for v, (c, sym, w) in VERDICT_STYLE.items()
              if v in ("passed", "drift", "failed", "not checked")
              or any(cell.shown == v for cell in s.cells.values())]
    legend.append("<span>\u25b2 n\u00d7 tol: the largest drift from the baseline, in units of its allowed "
                  "difference (beyond \u00b11 is outside tolerance)</span>")
    out.append("<div class=\"legend\">" + "".join(legend) + "</div>")
    return "".join(out)


def _counts_html(s: Summary) -> str:
    shown = [v for v in VERDICT_STYLE if any(s.counts(m)[v] for m in s.models)] or ["passed"]
    out = ["<table class=\"counts\"><tr><th>checkpoint</th>"]
    out += [f"<th class=\"v-{VERDICT_STYLE[v][0]}\">{_e(VERDICT_STYLE[v][1])} {_e(VERDICT_STYLE[v][2])}</th>"
            for v in shown]
    out.append("<th>claims beyond tolerance</th></tr>")
    for m in s.models:
        c = s.counts(m)
        out.append(f"<tr data-model=\"{_e(m)}\"><td>{_e(_model_name(m))}</td>"
                   + "".join(f"<td data-count=\"{_e(v)}\">{c[v]}</td>" for v in shown)
                   + f"<td data-count=\"beyond\">{s.drifted(m)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _banner_html(s: Summary) -> str:
    state = "passed" if s.passed else "failed"
    word = "\u2713 Release gate PASSED" if s.passed else "\u2717 Release gate FAILED"
    why = "" if s.passed else f"<div class=\"why\">{_e('; '.join(s.reasons))}</div>"
    return (f"<header class=\"banner gate-{state}\" id=\"verdict\" data-gate=\"{state}\">"
            f"<div class=\"gate\">{_e(word)}</div>{why}{_counts_html(s)}"
            f"<div class=\"rule\"><span class=\"identity\">{_e(_DOT.join(s.identity))}</span>. "
            f"Rule: {_e(GATE_RULE)}.</div></header>")


#: the forest plot draws at most this many claim metrics (the farthest out): a taller image is unreadable.
FOREST_ROWS = 150


def _forest_png(s: Summary) -> str | None:
    """One forest plot of every baseline comparison in tolerance units (difference / allowed):
    a row per claim metric (farthest out first), a marker per checkpoint, the band at +-1.
    None when there is nothing to plot or matplotlib is not installed."""
    drifts = s.drifts()
    if not drifts:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    models = sorted({d.model for d in drifts}, key=_natural)
    rows: dict[tuple[str, str], list[Drift]] = {}
    for d in drifts:  # farthest out first: a row sits where its farthest drift puts it
        if (d.claim, d.metric) in rows or len(rows) < FOREST_ROWS:
            rows.setdefault((d.claim, d.metric), []).append(d)
    keys = list(rows)
    finite = [abs(d.ratio) for ds in rows.values() for d in ds if math.isfinite(d.ratio)]
    lim = min(max([1.5] + [x * 1.35 for x in finite]), 10.0)
    markers = "o^sDv<>Ph*"
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    legend_rows = (len(models) + 2 + 1) // 2
    fig, ax = plt.subplots(figsize=(6.9, 1.1 + 0.21 * len(keys) + 0.17 * legend_rows), dpi=100)
    ax.axvspan(-1, 1, color="#e6f4ea", zorder=0)
    for x in (-1, 1):
        ax.axvline(x, color="#1e7e34", lw=0.8, ls="--", zorder=1)
    ax.axvline(0, color="#999", lw=0.6, zorder=1)
    for i, key in enumerate(keys):
        if i % 2:
            ax.axhspan(i - 0.5, i + 0.5, color="#f5f5f5", zorder=0)
        for d in rows[key]:
            j = models.index(d.model)
            y = i + (j - (len(models) - 1) / 2) * min(0.5 / max(len(models), 1), 0.2)
            style = dict(marker=markers[j % len(markers)], color=colours[j % len(colours)], ms=5, zorder=3)
            if math.isnan(d.ratio):
                ax.text(lim * 0.98, y, "n/a: cannot be computed", ha="right", va="center", fontsize=7,
                        color=style["color"])
                continue
            x = max(-lim, min(lim, d.ratio))
            if x != d.ratio:  # clipped: an open marker at the edge, with its value
                ax.plot([x], [y], mfc="white", ls="none", **style)
                ax.text(x - math.copysign(lim * 0.03, x), y, d.ratio_text.replace(" tol", ""),
                        ha="right" if x > 0 else "left", va="center", fontsize=7)
            else:
                ax.plot([x], [y], ls="none", mfc=style["color"] if not d.within else "white", **style)
                if not d.within:  # outside: its size written beside it
                    ax.text(x + math.copysign(lim * 0.03, x), y, f"{d.ratio:+.2f}", fontsize=6.5,
                            ha="left" if x > 0 else "right", va="center", color=style["color"])
    labels = [f"{_short(_claim_label(c), 30)} \u00b7 {_short(m, 24)}" for c, m in keys]
    ax.set_yticks(range(len(keys)), labels, fontsize=7)
    for tick, key in zip(ax.get_yticklabels(), keys):
        if any(not d.within for d in rows[key]):
            tick.set_color("#b3261e")
            tick.set_fontweight("bold")
    ax.set_ylim(len(keys) - 0.5, -0.5)
    ax.set_xlim(-lim, lim)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("(obtained \u2212 baseline) / allowed difference\ngreen band: within tolerance", fontsize=8)
    handles = [plt.Line2D([], [], marker=markers[j % len(markers)], color=colours[j % len(colours)], ls="none",
                          label=_model_name(m)) for j, m in enumerate(models)]
    handles.append(plt.Line2D([], [], marker="o", color="#555", mfc="white", ls="none", label="open: within"))
    handles.append(plt.Line2D([], [], marker="o", color="#555", ls="none", label="filled: outside tolerance"))
    ax.legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2,
              frameon=False, borderaxespad=0.2, handletextpad=0.2, columnspacing=1.0)
    from ..plots import literal

    literal(fig)  # metric and model names drawn as written ("$" is no mathtext)
    with warnings.catch_warnings():  # a cramped layout still saves whole: bbox_inches="tight" below
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _new_html(s: Summary) -> str:
    new = s.new()
    if not new:
        return ""
    return (f"<p class=\"note\" id=\"new-measurements\">New, with no baseline yet (not drifts): {len(new)} "
            f"measurement{'s' if len(new) != 1 else ''}: "
            + _e(_short("; ".join(f"{_claim_label(c)} [{_model_name(m)}] {k}" for c, m, k in new), 400)) + "</p>")


def _forest_html(s: Summary) -> str:
    if not s.drifts():
        return ("<section id=\"forest\"><h2>Drift from the baselines</h2><p class=\"note\">No measurement was "
                "compared with a baseline (run with --circuits-baseline or --circuits-baseline-of).</p>"
                + _new_html(s) + "</section>")
    png = _forest_png(s)
    beyond = s.beyond()
    alt = (f"forest plot of {len(s.drifts())} baseline comparisons in tolerance units; "
           f"{len(beyond)} outside tolerance")
    body = (f"<img id=\"forest-plot\" alt=\"{_e(alt)}\" src=\"data:image/png;base64,{png}\">" if png else
            "<p class=\"note\">(install matplotlib for the drift plot; the largest drifts are listed "
            "below)</p>" + _largest_html(beyond or s.drifts()[:10]))
    rows = len({(d.claim, d.metric) for d in s.drifts()})
    if png and rows > FOREST_ROWS:
        body += (f"<p class=\"note\">The {FOREST_ROWS} claim metrics farthest out are drawn; the other "
                 f"{rows - FOREST_ROWS} are in the details.</p>")
    return (f"<section id=\"forest\"><h2>Drift of every measurement, in units of its tolerance "
            f"({len(beyond)} outside \u00b11)</h2>{body}{_new_html(s)}</section>")


def _largest_html(drifts: list[Drift]) -> str:
    return ("<table class=\"largest\"><tr><th>drift</th><th>claim</th><th>checkpoint</th><th>metric</th></tr>"
            + "".join(f"<tr><td>{_e(d.ratio_text)}</td><td>{_e(_claim_label(d.claim))}</td>"
                      f"<td>{_e(_model_name(d.model))}</td><td>{_e(d.metric)}</td></tr>" for d in drifts)
            + "</table>")


def _measurement_row(model: str, cell: Cell, m: MeasurementEntry) -> str:
    b = m.baseline
    d = _drift(cell.claim, model, m)
    level = _num(m.level)
    interval = f"[{_fmt_num(m.lower)}, {_fmt_num(m.upper)}]"
    if math.isfinite(level) and abs(level - 0.95) > 1e-12:
        interval += f" ({level * 100:.4g}%)"
    flags = "; ".join(m.flags)
    cls = "" if d is None else (" class=\"v-pass\"" if d.within else " class=\"v-drift\"")
    return (f"<tr><td>{_e(m.key)}</td><td>{_e(_model_name(model))}</td>"
            f"<td class=\"v-{VERDICT_STYLE[cell.shown][0]}\">{_e(VERDICT_STYLE[cell.shown][2])}</td>"
            f"<td class=\"num\">{_e(_fmt_num(m.mean))}</td><td class=\"num\">{_e(interval)}</td>"
            f"<td class=\"num\">{_e('n/a' if m.n is None else m.n)}</td>"
            f"<td class=\"num\">{_e('new' if is_new(m) else _fmt_num(b.get('mean')) if b else '-')}</td>"
            f"<td class=\"num\">{_e(_fmt_num(d.difference) if d else '-')}</td>"
            f"<td class=\"num\">{_e(_PM + f'{_fmt_num(d.allowed)} ({d.tolerance})' if d else '-')}</td>"
            f"<td class=\"num\"{cls}>{_e(d.ratio_text if d else '-')}</td>"
            f"<td>{_e('; '.join(x for x in (flags, d.note if d else '', 'no baseline yet' if is_new(m) else '') if x))}"
            "</td></tr>")


def _figure_html(model: str, f: Any) -> str:
    """A claim's figure as an image: the SVG (checked when the record was read,
    :meth:`LedgerRecord.read`) as a base64 ``data:`` URI in an ``<img>``, where a browser runs
    no script and fetches nothing; name, checkpoint and caption in the ``<figcaption>``."""
    uri = "data:image/svg+xml;base64," + base64.b64encode(f.svg.encode("utf-8")).decode("ascii")
    return (f"<figure class=\"claim-figure\"><img alt=\"{_e(f.name)}\" src=\"{uri}\">"
            f"<figcaption><b>{_e(f.name)}</b> ({_e(_model_name(model))})"
            + (f": {_e(f.caption)}" if f.caption else "") + "</figcaption></figure>")


def _details_html(data: dict[str, Any], s: Summary) -> str:
    out = ["<section id=\"details\"><h2>Details: every claim's measurements per checkpoint</h2>"]
    recs = records(data)
    sources = {r.claim: r.source for r in recs}
    for claim in s.claims:
        out.append(f"<h3 id=\"claim-{_e(claim)}\"><code>{_e(claim)}</code></h3>")
        if s.findings.get(claim):
            out.append(f"<p class=\"finding-full\">{_e(s.findings[claim])}"
                       + (f" <span class=\"note\">({_e(sources[claim])})</span>" if sources.get(claim) else "")
                       + "</p>")
        rows_ = []
        for m in s.models:
            cell = s.cells.get((claim, m))
            if cell is None:
                continue
            if not cell.measurements:
                rows_.append(f"<tr><td>-</td><td>{_e(_model_name(m))}</td><td class=\"v-"
                             f"{VERDICT_STYLE[cell.shown][0]}\">{_e(VERDICT_STYLE[cell.shown][2])}</td>"
                             f"<td colspan=\"8\">{_e(cell.reason or 'no measurements')}</td></tr>")
            rows_ += [_measurement_row(m, cell, x) for x in cell.measurements]
        out.append("<table><tr><th>metric</th><th>checkpoint</th><th>verdict</th><th>mean</th><th>interval</th>"
                   "<th>n</th><th>baseline</th><th>difference</th><th>allowed</th><th>drift / allowed</th>"
                   "<th>notes</th></tr>" + "".join(rows_) + "</table>")
        out += [_figure_html(r.model, f) for r in recs if r.claim == claim for f in r.figures]
    changes = version_changes(data)
    if changes:
        out.append("<h2>Baselines recorded with other versions</h2><ul>")
        out += [f"<li><code>{_e(c)}</code> on {_e(m)}: {_e(t)}</li>" for c, m, t in changes]
        out.append("</ul>")
    if data.get("checkup"):
        from .cards import card_html

        out.append("<section id=\"checkup\">" + _cards(card_html, data["checkup"], _e) + "</section>")
    fps = {r.model: r.fingerprint or "?" for r in recs}
    if fps:
        out.append("<h2>Checkpoints</h2><ul>" + "".join(f"<li>{_e(_model_name(m))}: <code>{_e(fp)}</code></li>"
                                                        for m, fp in sorted(fps.items())) + "</ul>")
    merged = data.get("merged_from")
    if isinstance(merged, list) and merged:
        out.append("<h2>Merged reports</h2><ul>" + "".join(
            f"<li><code>{_e(x.get('path'))}</code> shard {_e(json.dumps(x.get('shard')))} commit "
            f"<code>{_e(x.get('git_commit'))}</code></li>" for x in merged if isinstance(x, dict)) + "</ul>")
    vers = data.get("versions") if isinstance(data.get("versions"), dict) else {}
    out.append(f"<p class=\"note\">exit status {_e(data.get('exit_status'))}; commit "
               f"<code>{_e(data.get('git_commit') or 'unknown')}</code>; "
               + _e(", ".join(f"{k} {v}" for k, v in vers.items())) + "</p></section>")
    return "".join(out)


def html_page(data: dict[str, Any]) -> str:
    """The whole report as one self-contained HTML page (nothing is fetched when it is opened)."""
    s = summarize(data)
    title = f"pytest-circuits: release gate {'PASSED' if s.passed else 'FAILED'}"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
            + _banner_html(s) + "\n<main class=\"overview\"><section id=\"matrix\"><h2>Claims \u00d7 checkpoints"
            f" ({len(s.claims)} claims, {len(s.models)} checkpoint{'s' if len(s.models) != 1 else ''})</h2>"
            + _matrix_html(s) + "</section>\n" + _forest_html(s) + "</main>\n"
            + _details_html(data, s) + "\n</body></html>\n")


def write_html(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page(data), "utf-8")
