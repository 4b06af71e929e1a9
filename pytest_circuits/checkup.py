"""The mechanism checkup: the field's standard findings as ready-made checks for any checkpoint.

``pytest --circuits-checkup --circuits-model A --circuits-model B`` turns every check below
into a claim per model (``pytest_circuits/checkup_claims.py``); each check runs a detector
that returns a :class:`~pytest_circuits.detection.Detection`:

==================  ===============================================  ========================
check               detector                                         paper
==================  ===============================================  ========================
induction           ``techniques.heads.detect_induction``            arXiv:2209.11895
previous_token      ``techniques.heads.detect_previous_token``       arXiv:2209.11895
duplicate_token     ``techniques.heads.detect_duplicate_token``      arXiv:2211.00593
ioi                 ``techniques.ioi.detect_ioi``                    arXiv:2211.00593
successor           ``techniques.ov.detect_successor``               arXiv:2312.09230
copy_suppression    ``techniques.ov.detect_copy_suppression``        arXiv:2310.04625
greater_than        :func:`detect_greater_than` (here)               arXiv:2305.00586
factual_recall      :func:`detect_factual_recall` (here)             the project's facts set
==================  ===============================================  ========================

A claim passes when its detector finds the mechanism by its stated criterion (on interval
bounds), fails when it does not, and is skipped as **not applicable** (with the reason,
never passed) when the model cannot run the check, e.g. a tokenizer without single-token
names. Only each detection's headline measurements are recorded for the claim (so
``--circuits-baseline`` compares them across checkpoints: the release gate); the per-head
scores the detectors compute on the way are shown in the mechanism card's heatmaps.

The mechanism card (:func:`card_lines`, :func:`card_markdown`, :func:`card_html`) is one
table per checkpoint: each check's status, its criterion, its measurements with intervals
and the located components; the HTML adds the per-head heatmaps.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import importlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .detection import Detection
from .errors import CircuitsError, PromptSetError, bad
from .measurement import Measurement, record, unrecorded
from .models import info as model_info


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    source: str
    finding: str          # the claim's finding, in words
    detector: Any         # "module:function" (imported when the check runs) or a callable

    def function(self) -> Callable[..., Detection]:
        if callable(self.detector):
            return self.detector
        mod, _, fn = self.detector.partition(":")
        return getattr(importlib.import_module(mod, __package__), fn)


CHECKS: dict[str, Check] = {c.name: c for c in (
    Check("induction", "Induction heads", "arXiv:2209.11895",
          "the model has induction heads: on a repeated random token sequence, heads attend from each "
          "token to the one that followed its earlier occurrence, and ablating them raises the loss on "
          "the repeat", ".techniques.heads:detect_induction"),
    Check("previous_token", "Previous-token heads", "arXiv:2209.11895",
          "the model has previous-token heads: heads attend from each token to the one before it",
          ".techniques.heads:detect_previous_token"),
    Check("duplicate_token", "Duplicate-token heads", "arXiv:2211.00593",
          "the model has duplicate-token heads: on a repeated sequence, heads attend from each token to "
          "its earlier occurrence", ".techniques.heads:detect_duplicate_token"),
    Check("ioi", "Indirect object identification", "arXiv:2211.00593",
          "the model completes IOI prompts with the indirect object, and name-mover heads attend to it and "
          "raise its logit (when they are ablated, other heads make up part of their direct effect: backup "
          "name movers or released suppression)", ".techniques.ioi:detect_ioi"),
    Check("successor", "Successor heads", "arXiv:2312.09230",
          "a head's OV circuit maps members of ordinal sequences (numbers, days, months, letters) to their "
          "successors", ".techniques.ov:detect_successor"),
    Check("copy_suppression", "Copy suppression", "arXiv:2310.04625",
          "a negative head lowers the logits of tokens earlier in the context that it attends to",
          ".techniques.ov:detect_copy_suppression"),
    Check("greater_than", "Greater-than", "arXiv:2305.00586",
          "after 'from the year XXYY to the year XX' the model prefers years later than XXYY, and the "
          "'01' corruption removes that preference", ".checkup:detect_greater_than"),
    Check("factual_recall", "Factual recall", "pytest-circuits facts set",
          "the model recalls facts: the true answer out-scores a same-relation foil",
          ".checkup:detect_factual_recall"),
)}


BUILT_IN = frozenset(CHECKS)


def register(check: Check) -> Check:
    """Add a team's own check (e.g. in ``conftest.py``): it becomes a checkup claim per model,
    on the card, like the built-in ones. Its detector takes the model and returns a
    :class:`~pytest_circuits.detection.Detection`. Registering a name again replaces the
    earlier check (a conftest imported again); a built-in name is refused."""
    if not isinstance(check, Check):
        raise CircuitsError(bad("check", check, "a pytest_circuits.checkup.Check"))
    if not check.name.isidentifier():
        raise CircuitsError(bad("check.name", check.name, "an identifier (it names the claim test_<name>)"))
    if check.name in BUILT_IN:
        raise CircuitsError(f"{check.name!r} is a built-in check ({CHECKS[check.name].title}); give yours "
                            "another name")
    CHECKS[check.name] = check
    return check


def names() -> list[str]:
    return list(CHECKS)


def select(spec: str | Sequence[str] | None) -> list[str]:
    """The checks named by ``spec`` ("all", a comma list, or a list), in registry order;
    an unknown name raises with the valid ones."""
    if spec is None or spec == "" or spec == "all":
        return names()
    wanted = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    wanted = [w for w in wanted if w]
    unknown = [w for w in wanted if w not in CHECKS]
    if unknown or not wanted:
        raise CircuitsError(bad("checks", spec, f"'all' or a comma list of {', '.join(CHECKS)}"))
    return [n for n in CHECKS if n in wanted]


def run(name: str, model: Any, **kw: Any) -> Detection:
    """Run one check on ``model``. Only the detection's headline measurements are recorded
    for the running claim; everything the detector measured on the way is not."""
    if name not in CHECKS:
        raise CircuitsError(bad("check", name, f"one of {', '.join(CHECKS)}"))
    check = CHECKS[name]
    with unrecorded():
        det = check.function()(model, **kw)
    if not isinstance(det, Detection):
        raise CircuitsError(f"check {name!r}: {check.detector} returned {type(det).__name__}, not a Detection")
    # The card's row is the check that ran, on the model it ran on, whatever the detector wrote.
    det = dataclasses.replace(det, check=name, model=model_info(model).label,
                              title=det.title or check.title, source=det.source or check.source)
    for m in det.measurements:
        record(m)
    return det


# ----------------------------------------------------------------------------- built-in adapters
def _m(name: str, values: Any, model: Any) -> Measurement:
    return Measurement.from_values(name, values, model=model_info(model).label)


def detect_greater_than(model: Any, *, n: int = 100, seed: int = 0, min_pd: float = 0.2,
                        min_drop: float = 0.2, activations: Any = None) -> Detection:
    """Greater-than (Hanna et al. 2023): the probability difference PD (mass on years later than
    the start minus mass on earlier ones, :mod:`pytest_circuits.tasks.greater_than`) on ``n``
    seeded prompts, and its drop under the '01' corruption.

    Found when PD's lower bound exceeds ``min_pd`` and the drop's lower bound exceeds
    ``min_drop``. 0.2 is a definition, not a measurement: 20 points more probability on later
    years than earlier, well below what the paper reports for GPT-2 small (PD 0.817) and what
    SmolLM2 shows (0.875), and well above a model without the comparison (PD ~0; an untrained
    model or the '01' corruption gives PD <= 0). Not applicable when the tokenizer writes years
    neither one token per digit nor as two-digit tokens."""
    from .tasks.greater_than import greater_than, per_prompt_prob_diff

    title, src = CHECKS["greater_than"].title, CHECKS["greater_than"].source
    label = model_info(model).label
    try:
        task = greater_than(model, n=n, seed=seed, name="checkup_greater_than")
    except PromptSetError as e:
        return Detection.not_applicable("greater_than", title, str(e), source=src, model=label)
    clean = per_prompt_prob_diff(model, task, activations=activations)
    corrupted = per_prompt_prob_diff(model, task, corrupted=True, activations=activations)
    pd = _m("greater_than PD", clean, model)
    drop = _m("greater_than PD drop under '01'", clean - corrupted, model)
    found = pd.lower > min_pd and drop.lower > min_drop
    return Detection(
        check="greater_than", title=title, source=src, model=label, found=bool(found),
        criterion=f"PD lower bound > {min_pd:g} and its drop under the '01' corruption > {min_drop:g} "
                  f"(n={len(task)} prompts, {task.mode} years)",
        measurements=(pd, drop))


def detect_factual_recall(model: Any, *, n: int | None = 200, seed: int = 0, min_facts: int = 20,
                          min_share: float = 0.5, activations: Any = None) -> Detection:
    """Factual recall on the project's facts set (``pytest_circuits/data/facts.jsonl``, each fact
    with a same-relation foil), on the facts whose answer and foil are single tokens for this
    tokenizer (a seeded sample of ``n`` of them; ``n=None``: all): the logit difference
    answer - foil, the share of facts where the answer wins,
    and each head's direct effect on that difference (the heatmap; components: the heads with
    the largest mean direct effect).

    Found when the share's lower bound exceeds ``min_share`` (0.5: better than a coin between
    answer and foil) and the logit difference's lower bound exceeds 0. Not applicable with
    fewer than ``min_facts`` usable facts."""
    import numpy as np
    import torch

    from . import metrics
    from .components import Head
    from .tasks import facts
    from .techniques import effects as E

    title, src = CHECKS["factual_recall"].title, CHECKS["factual_recall"].source
    label = model_info(model).label
    import warnings

    from .errors import PromptWarning

    with warnings.catch_warnings():
        # Prompts that reach the model as the unknown token are dropped below, not warned about.
        warnings.simplefilter("ignore", PromptWarning)
        try:
            ps = facts(model, name="checkup_facts")
        except PromptSetError as e:
            return Detection.not_applicable("factual_recall", title, str(e), source=src, model=label)
    unk = getattr(model.tokenizer, "unk_token_id", None)
    readable = [i for i in range(len(ps)) if unk is None or unk not in ps.tokens[i, : ps.lengths[i]].tolist()]
    if len(readable) < min_facts:
        return Detection.not_applicable(
            "factual_recall", title, f"only {len(readable)} facts have a single-token answer and foil and a "
            f"prompt without the unknown token for this tokenizer (at least {min_facts} needed)",
            source=src, model=label)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < min_facts:
            raise CircuitsError(bad("n", n, f"None (all facts) or an int >= min_facts ({min_facts})"))
        if n < len(readable):
            import random

            readable = sorted(random.Random(seed).sample(readable, n))
    if len(readable) < len(ps):
        ps = ps.subset(readable, name="checkup_facts")
    ld = metrics.logit_diff(model, ps, activations=activations)
    ld = _m("facts logit difference (answer - foil)", ld.array, model)
    share = _m("facts share answer beats foil", ld.array > 0, model)
    de_a = E.decompose(model, ps, token="answer", activations=activations)
    de_f = E.decompose(model, ps, token=torch.tensor(ps.foil_ids), activations=activations)
    cfg = model.cfg
    heat = np.zeros((cfg.n_layers, cfg.n_heads))
    for i, c in enumerate(de_a.components):
        if isinstance(c, Head):
            heat[c.layer, c.head] = float((de_a.values[i] - de_f.values[i]).mean())
    order = np.argsort(-heat, axis=None)[:5]
    comps = tuple((f"L{int(k) // cfg.n_heads}H{int(k) % cfg.n_heads}", float(heat.flat[k])) for k in order)
    found = share.lower > min_share and ld.lower > 0
    return Detection(
        check="factual_recall", title=title, source=src, model=label, found=bool(found),
        criterion=f"share of facts where the answer beats the foil: lower bound > {min_share:g}, and the "
                  f"logit difference's lower bound > 0 (n={len(ps)} facts)",
        measurements=(ld, share), components=comps,
        heatmaps={"direct effect on answer - foil": heat},
        details="components: heads with the largest mean direct effect on the answer - foil logit "
                "difference")


# ----------------------------------------------------------------------------- the card
def to_json(det: Detection) -> dict[str, Any]:
    return {"check": det.check, "title": det.title, "source": det.source, "model": det.model,
            "status": det.status, "applicable": det.applicable, "reason": det.reason,
            "found": det.found, "criterion": det.criterion,
            "measurements": [m.to_dict() for m in det.measurements],
            "components": [[c, float(s)] for c, s in det.components],
            "heatmaps": {k: [[float(x) for x in row] for row in _rows2d(v)] for k, v in det.heatmaps.items()},
            "details": det.details}


def _rows2d(v: Any) -> list[list[float]]:
    import numpy as np

    a = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=float)
    if a.ndim != 2:
        raise CircuitsError(f"a heatmap must be [layers, heads], got shape {a.shape}")
    return a.tolist()


def _fmt(x: float) -> str:
    from .measurement import _fmt as f

    return f(x) if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


def _mcell(m: dict[str, Any]) -> str:
    s = f"{m['name']} {_fmt(m['mean'])} [{_fmt(m['lower'])}, {_fmt(m['upper'])}]"
    s += "".join(f" [{f}]" for f in m.get("flags") or ())
    b = m.get("baseline")
    if b and b.get("mean") is not None:
        s += f" (baseline {_fmt(b['mean'])}, drift {b['difference']:+.3g}" + ("" if b.get("within") else " OUTSIDE") + ")"
    return s


def _by_model(cards: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in cards:
        out.setdefault(c["model"], []).append(c)
    order = {n: i for i, n in enumerate(CHECKS)}
    for v in out.values():
        v.sort(key=lambda c: order.get(c["check"], len(order)))
    return out


def card_lines(cards: Iterable[dict[str, Any]]) -> list[str]:
    """The mechanism card for the terminal: one block per checkpoint, one row per check."""
    lines: list[str] = []
    for model, cs in _by_model(cards).items():
        lines.append(f"mechanism card: {model}")
        width = max(len(c["check"]) for c in cs)
        for c in cs:
            status = c["status"].upper() if c["status"] != "n/a" else "N/A"
            head = f"  {c['check']:<{width}}  {status:<10}"
            if c["status"] in ("n/a", "error"):
                lines.append(f"{head} {c['reason']}")
                continue
            comps = ", ".join(f"{n} {s:+.3g}" for n, s in c["components"][:4])
            lines.append(f"{head} " + "; ".join(_mcell(m) for m in c["measurements"])
                         + (f"; top: {comps}" if comps else ""))
    return lines


def card_markdown(cards: Iterable[dict[str, Any]]) -> str:
    from ._markup import md_cell as md   # every cell shown as written (no markup, no table break)

    out = []
    for model, cs in _by_model(cards).items():
        out += [f"## Mechanism card: `{model}`", "", "| check | status | measurements | components | criterion |",
                "|---|---|---|---|---|"]
        for c in cs:
            meas = "<br>".join(md(_mcell(m)) for m in c["measurements"]) or md(c["reason"])
            comps = md(", ".join(f"{n} {s:+.3g}" for n, s in c["components"][:6]))
            out.append(f"| {md(c['title'])} ({md('[' + str(c['source']) + ']')}) | **{md(c['status'])}** | {meas} | "
                       f"{comps} | {md(c['criterion'] or '-')} |")
        out.append("")
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
    from .plots import literal

    literal(fig)  # names drawn as written ("$" is no mathtext)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def card_html(cards: Iterable[dict[str, Any]]) -> str:
    """The mechanism cards as an HTML section (tables, then each check's heatmaps)."""
    e = html.escape
    colour = {"found": "#d7f5d7", "not found": "#f8d0d0", "n/a": "#e6e6e6"}
    out = []
    for model, cs in _by_model(cards).items():
        out.append(f"<h2>Mechanism card: <code>{e(model)}</code></h2>")
        out.append("<table class=card border=1 cellpadding=4><tr><th>check</th><th>status</th>"
                   "<th>measurements</th><th>components</th><th>criterion</th></tr>")
        for c in cs:
            meas = "<br>".join(e(_mcell(m)) for m in c["measurements"]) or e(c["reason"])
            comps = ", ".join(e(f"{n} {s:+.3g}") for n, s in c["components"][:6])
            out.append(f"<tr><td>{e(c['title'])} <small>({e(c['source'])})</small></td>"
                       f"<td class=status style='background:{colour.get(c['status'], '#fff')}'>{e(c['status'])}</td>"
                       f"<td>{meas}</td><td>{comps}</td><td><small>{e(c['criterion'])}</small></td></tr>")
        out.append("</table>")
        figs = [(c["title"], c["check"], name, grid) for c in cs for name, grid in c["heatmaps"].items()]
        for title, check, name, grid in figs:
            png = _heatmap_png(name, grid, f"{model}: {check}")
            if png is not None:
                out.append(f"<figure class=heatmap><img alt='{e(title)}: {e(name)}' src='data:image/png;base64,{png}'>"
                           f"<figcaption>{e(title)}: {e(name)} (layers x heads)</figcaption></figure>")
    return "\n".join(out)


def dumps(det: Detection) -> str:
    return json.dumps(to_json(det))
