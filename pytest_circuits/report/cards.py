"""The checkup's mechanism cards, rendered: for the terminal (:func:`card_lines`), Markdown
(:func:`card_markdown`) and HTML with heatmaps (:func:`card_html`). A card is the JSON of a
detection (:func:`pytest_circuits.checkup.to_json`) with the claim's outcome and baseline
comparisons; its measurements are read as the ledger's entries
(:meth:`pytest_circuits.ledger.MeasurementEntry.read`, the shape the reports render). Every
card is treated as untrusted text (escaped, shown as written).
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Iterable

from ..checkup import CHECKS, INTERVAL_KINDS, VERDICT
from ..ledger import MeasurementEntry


def _fmt(x: float) -> str:
    from ..measurement import _fmt as f

    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return f(x) if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


def _measurements(c: dict[str, Any]) -> list[MeasurementEntry]:
    """A card's measurements as ledger entries (a missing number NaN); TypeError for one that
    is not an object (the report then says the cards are malformed)."""
    ms = c.get("measurements") or ()
    if not all(isinstance(m, dict) for m in ms):
        raise TypeError("a card's measurement is not an object")
    return [MeasurementEntry.read(m) for m in ms]


def _mcell(m: MeasurementEntry, kind: str = "") -> str:
    s = f"{m.name} {_fmt(m.mean)} [{_fmt(m.lower)}, {_fmt(m.upper)}]" + (f" {kind}" if kind else "")
    s += "".join(f" [{f}]" for f in m.flags)
    b = m.baseline
    if b and b.get("mean") is not None:
        s += f" (baseline {_fmt(b['mean'])}, drift {b['difference']:+.3g}" + ("" if b.get("within") else " OUTSIDE") + ")"
    return s


def _word(found: Any) -> str:
    return "FOUND" if found else "ABSENT"


def _status(c: dict[str, Any]) -> str:
    """The verdict in capitals, and the baseline's verdict when it was compared."""
    status = str(c.get("status", "?"))
    word = {"n/a": "N/A", "not found": "ABSENT"}.get(status, status.upper())
    v = next((m for m in _measurements(c) if m.name == VERDICT), None)
    b = (v.baseline if v else None) or {}
    if b.get("mean") is not None:
        then = _word(b["mean"] >= 0.5)
        word += f" (baseline {then}" + ("" if then == word else ": CHANGED") + ")"
    return word


def _shown(c: dict[str, Any]) -> list[str]:
    kinds = c.get("intervals") or {}
    return [_mcell(m, kinds.get(m.name, "")) for m in _measurements(c) if m.name != VERDICT]


def _by_model(cards: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in cards:
        out.setdefault(c["model"], []).append(c)
    order = {n: i for i, n in enumerate(CHECKS)}
    for v in out.values():
        v.sort(key=lambda c: order.get(c["check"], len(order)))
    return out


def _legend(cs: list[dict[str, Any]]) -> str:
    used = sorted({k for c in cs for name, k in (c.get("intervals") or {}).items()
                   if k in INTERVAL_KINDS and name != VERDICT})
    if not used:
        return ""
    levels = sorted({f"{m.level * 100:.4g}%" for c in cs for m in _measurements(c) if math.isfinite(m.level)})
    return (f"intervals ({', '.join(levels) or '95%'}): "
            + "; ".join(f"{k} = {INTERVAL_KINDS[k]}" for k in used))


def card_lines(cards: Iterable[dict[str, Any]]) -> list[str]:
    """The mechanism card for the terminal: one block per checkpoint, one row per check."""
    lines: list[str] = []
    for model, cs in _by_model(cards).items():
        lines.append(f"mechanism card: {model}")
        width = max(len(c["check"]) for c in cs)
        for c in cs:
            status = _status(c)
            head = f"  {c['check']:<{width}}  {status:<10}"
            if c["status"] in ("n/a", "error"):
                lines.append(f"{head} {c['reason']}")
                continue
            comps = ", ".join(f"{n} {s:+.3g}" for n, s in c["components"][:4])
            lines.append(f"{head} " + "; ".join(_shown(c)) + (f"; top: {comps}" if comps else "")
                         + (f"; could not decide: {c['reason']}" if c["status"] == "undecided" else ""))
        legend = _legend(cs)
        if legend:
            lines.append(f"  {legend}")
    return lines


def card_markdown(cards: Iterable[dict[str, Any]]) -> str:
    from .._markup import md_cell as md   # every cell shown as written (no markup, no table break)

    out = []
    for model, cs in _by_model(cards).items():
        out += [f"## Mechanism card: `{model}`", "", "| check | status | measurements | components | criterion |",
                "|---|---|---|---|---|"]
        for c in cs:
            meas = "<br>".join(md(x) for x in _shown(c)) or md(c["reason"])
            if c["status"] == "undecided":
                meas += f"<br>could not decide: {md(c['reason'])}"
            comps = md(", ".join(f"{n} {s:+.3g}" for n, s in c["components"][:6]))
            out.append(f"| {md(c['title'])} ({md('[' + str(c['source']) + ']')}) | **{md(_status(c).lower())}** | "
                       f"{meas} | {comps} | {md(c['criterion'] or '-')} |")
        legend = _legend(cs)
        out += ([f"\n{legend}"] if legend else []) + [""]
    return "\n".join(out)


def _heatmap_png(name: str, grid: list[list[float]], title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return None
    a = np.asarray(grid, dtype=float)
    fig, ax = plt.subplots(figsize=(max(3.0, 0.35 * a.shape[1] + 1.5), max(2.4, 0.16 * a.shape[0] + 1.2)), dpi=72)
    lim = float(np.nanmax(np.abs(a))) if a.size and np.isfinite(a).any() else 1.0
    signed = bool((a < 0).any())
    im = ax.imshow(a, aspect="auto", cmap="RdBu_r" if signed else "viridis",
                   vmin=-lim if signed else 0.0, vmax=lim or 1.0, interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{title}\n{name}", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.05)
    from ..plots import literal

    literal(fig)  # names drawn as written ("$" is no mathtext)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def card_html(cards: Iterable[dict[str, Any]]) -> str:
    """The mechanism cards as an HTML section (tables, then each check's heatmaps)."""
    e = html.escape
    colour = {"found": "#d7f5d7", "absent": "#dde6f3", "not found": "#dde6f3", "undecided": "#fbe3b8",
              "error": "#f8d0d0", "n/a": "#e6e6e6"}
    out = []
    for model, cs in _by_model(cards).items():
        out.append(f"<h2>Mechanism card: <code>{e(model)}</code></h2>")
        out.append("<table class=card border=1 cellpadding=4><tr><th>check</th><th>status</th>"
                   "<th>measurements</th><th>components</th><th>criterion</th></tr>")
        for c in cs:
            meas = "<br>".join(e(x) for x in _shown(c)) or e(c["reason"])
            if c["status"] == "undecided":
                meas += f"<br>could not decide: {e(c['reason'])}"
            comps = ", ".join(e(f"{n} {s:+.3g}") for n, s in c["components"][:6])
            out.append(f"<tr><td>{e(c['title'])} <small>({e(c['source'])})</small></td>"
                       f"<td class=status style='background:{colour.get(c['status'], '#fff')}'>"
                       f"{e(_status(c).lower())}</td>"
                       f"<td>{meas}</td><td>{comps}</td><td><small>{e(c['criterion'])}</small></td></tr>")
        out.append("</table>")
        legend = _legend(cs)
        if legend:
            out.append(f"<p><small>{e(legend)}</small></p>")
        figs = [(c["title"], c["check"], name, grid) for c in cs for name, grid in c["heatmaps"].items()]
        for title, check, name, grid in figs:
            png = _heatmap_png(name, grid, f"{model}: {check}")
            if png is not None:
                out.append(f"<figure class=heatmap><img alt='{e(title)}: {e(name)}' src='data:image/png;base64,{png}'>"
                           f"<figcaption>{e(title)}: {e(name)} (layers x heads)</figcaption></figure>")
    return "\n".join(out)
