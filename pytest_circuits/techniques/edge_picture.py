"""Pictures of edge circuits: a self-contained SVG, no plotting library.

    from pytest_circuits.techniques.edge_picture import attach, svg
    picture = svg(scores.top(12, order="abs"), frequency=stability.frequencies(), title="greater-than, 12 edges")
    attach("circuit", scores, frequency=stability)     # in a claim: the same picture in its report

``svg`` takes the scores as :func:`~pytest_circuits.techniques.edges.edge_attribution` returns
them (an :class:`~pytest_circuits.techniques.edges.EdgeScores`: its ``k`` edges of largest
|mean score|, :data:`TOP` unless told) and the frequencies as
:func:`~pytest_circuits.techniques.edge_stability.stability` returns them (a ``Stability``), or
as plain mappings. :func:`attach` draws the picture and attaches it to the running claim's record
(:func:`pytest_circuits.attach_figure`), so the HTML report shows it under the claim, with a
caption that states the encoding.

The layout is the model's: one column per layer (the embedding on the left, the logits on the
right), a layer's heads stacked top to bottom and its MLP under them. A head receiver has three
inputs drawn as ports on its left side, ``q``, ``k``, ``v`` from top to bottom, so an edge into a
query and one into a value of the same head end at different points. Each edge is a curve:

* its **width** is proportional to ``|score|`` (the largest score drawn 6 px wide, a score of 0
  at 0.75 px so it stays visible), its **colour** the score's sign (blue positive, red negative:
  the sign of the score's estimate of ``m(edge patched) - m(clean)``);
* its **opacity** is its inclusion frequency over resamples (an edge kept by 30% of resampled
  discoveries is drawn at opacity 0.3; floor 0.06 so an edge never kept is still seen); without
  frequencies every edge is opaque;
* its tooltip (``<title>``) states the edge, its score and its frequency, so the numbers are in
  the picture, not only their encoding.

Only the components an edge touches are drawn. The text of the SVG is deterministic (same input,
same bytes), so a picture can live in the docs and be compared in a test.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping
from xml.sax.saxutils import escape

from ..components import Embed, Head, MLP
from ..errors import CircuitsError, bad
from ..figures import Figure, attach_figure
from .edges import PARTS, Edge, EdgeScores

#: drawing constants (px)
COLUMN = 120
ROW = 30
MARGIN = 46
MAX_WIDTH = 6.0
MIN_WIDTH = 0.75
MIN_OPACITY = 0.06
POSITIVE = "#2c6fbb"
NEGATIVE = "#c0392b"
#: the edges drawn of an EdgeScores when ``k`` is not given: the 12 of largest |mean score|
TOP = 12


def _scored(edges: Any, k: int | None) -> Any:
    """``edges`` as :func:`_pairs` reads them: an :class:`EdgeScores` becomes its ``k`` (default
    :data:`TOP`) edges of largest |mean score| with their means."""
    if isinstance(edges, EdgeScores):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise CircuitsError(bad("k", k, "a number of edges >= 1"))
        return edges.top(TOP if k is None else k, order="abs")
    if k is not None:
        raise CircuitsError(bad("k", k, "None: k picks the top edges of an EdgeScores; pass the edges to "
                                        "draw (e.g. scores.top(k, order='abs')) otherwise"))
    return edges


def _shares(frequency: Any) -> Mapping[Any, float] | None:
    """``frequency`` as a mapping: a ``Stability`` gives its :meth:`frequencies`."""
    if frequency is None or isinstance(frequency, Mapping):
        return frequency
    if callable(getattr(frequency, "frequencies", None)):
        return frequency.frequencies()
    raise CircuitsError(bad("frequency", type(frequency).__name__,
                            "a Stability (edge_stability.stability) or {edge: share of resamples}"))


def _pairs(edges: Any) -> list[tuple[Edge, float | None]]:
    """``(edge, score)`` pairs from a mapping, a list of ``(edge, score)`` pairs (``top()``'s
    result) or a list of edges (no scores)."""
    if isinstance(edges, Mapping):
        items: Iterable = edges.items()
    else:
        items = list(edges)
    out: list[tuple[Edge, float | None]] = []
    for item in items:
        if isinstance(item, (tuple, list)) and len(item) == 2 and not isinstance(item[1], str):
            e, v = item
            v = None if v is None else float(v)
            if v is not None and not math.isfinite(v):
                raise CircuitsError(bad("score", v, f"a finite number for {e}"))
            out.append((Edge.parse(e), v))
        else:
            out.append((Edge.parse(item), None))
    seen: set = set()
    for e, _ in out:
        if e in seen:
            raise CircuitsError(bad("edges", str(e), "each edge once"))
        seen.add(e)
    return out


def _node_key(c: Any) -> tuple:
    """Column and row order of a component (the logits are ``None``)."""
    if c is None:
        return (math.inf, 0, 0)
    if isinstance(c, Embed):
        return (-1, 0, 0)
    if isinstance(c, Head):
        return (c.layer, 0, c.head)
    if isinstance(c, MLP):
        return (c.layer, 1, 0)
    raise CircuitsError(bad("component", str(c), "embed, a head, an MLP or the logits"))


def _name(c: Any) -> str:
    return "logits" if c is None else str(c)


def width(score: float | None, largest: float) -> float:
    """The stroke width of an edge with ``score`` when the largest |score| drawn is ``largest``."""
    if score is None or largest <= 0:
        return 2.0
    return round(MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * abs(score) / largest, 3)


def opacity(share: float | None) -> float:
    """The opacity of an edge kept by ``share`` of the resampled discoveries (1 when unknown)."""
    if share is None:
        return 1.0
    if not 0 <= share <= 1:
        raise CircuitsError(bad("frequency", share, "a share in [0, 1]"))
    return round(max(MIN_OPACITY, float(share)), 3)


def svg(edges: Any, *, frequency: Any = None, title: str = "", k: int | None = None) -> str:
    """The edge circuit ``edges`` as an SVG document (a string).

    ``edges``: an :class:`~pytest_circuits.techniques.edges.EdgeScores` (its ``k`` edges of
    largest |mean score|, :data:`TOP` unless told), ``{edge: score}``, ``[(edge, score), ...]``
    (e.g. ``EdgeScores.top(k, order="abs")``) or a list of edges (drawn at one width).
    ``frequency``: a ``Stability`` (:func:`~pytest_circuits.techniques.edge_stability.stability`)
    or ``{edge: share of resamples keeping it}`` (``Stability.frequencies()``); an edge it does
    not name was kept by none (drawn at the floor opacity). Edges are spelled as
    :class:`~pytest_circuits.techniques.edges.Edge` or ``"L0H1->L1H0.q"``."""
    pairs = _pairs(_scored(edges, k))
    if not pairs:
        raise CircuitsError("no edge to draw: the circuit is empty (nothing was discovered)")
    shares = _shares(frequency)
    freq = None if shares is None else {Edge.parse(e): float(v) for e, v in shares.items()}
    nodes = sorted({c for e, _ in pairs for c in (e.sender, e.receiver)}, key=_node_key)
    columns = sorted({_node_key(c)[0] for c in nodes})
    col_of = {k: i for i, k in enumerate(columns)}
    rows: dict[Any, int] = {}
    per_col: dict[Any, int] = {}
    for c in nodes:
        k = _node_key(c)[0]
        rows[c] = per_col.get(k, 0)
        per_col[k] = rows[c] + 1
    tallest = max(per_col.values())
    wide = MARGIN * 2 + COLUMN * (len(columns) - 1) + 60
    high = MARGIN * 2 + ROW * 2 * max(tallest - 1, 0) + 40 + (22 if title else 0)
    top = MARGIN + (22 if title else 0)

    def centre(c: Any) -> tuple[float, float]:
        return MARGIN + 30 + COLUMN * col_of[_node_key(c)[0]], top + ROW * 2 * rows[c]

    def port(e: Edge) -> tuple[float, float]:
        x, y = centre(e.receiver)
        if e.part is None:
            return x - 14, y
        return x - 14, y + (PARTS.index(e.part) - 1) * 7

    largest = max((abs(v) for _, v in pairs if v is not None), default=0.0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{wide}" height="{high}" '
           f'viewBox="0 0 {wide} {high}" font-family="sans-serif" font-size="11">']
    if title:
        out.append(f'<text x="{MARGIN}" y="{MARGIN - 8}" font-size="13" font-weight="bold">{escape(title)}</text>')
    for k in columns:
        label = "embed" if k == -1 else "logits" if k == math.inf else f"layer {k}"
        x = MARGIN + 30 + COLUMN * col_of[k]
        out.append(f'<text x="{x}" y="{high - 10}" text-anchor="middle" fill="#666">{label}</text>')
    for e, v in sorted(pairs, key=lambda p: (-abs(p[1] or 0.0), p[0].sort_key())):
        (x0, y0), (x1, y1) = centre(e.sender), port(e)
        x0 += 14
        bend = max(30.0, (x1 - x0) / 2)
        share = None if freq is None else freq.get(e, 0.0)
        colour = NEGATIVE if v is not None and v < 0 else POSITIVE
        tip = f"{e}: score {v:+.4g}" if v is not None else str(e)
        if share is not None:
            tip += f", kept in {share:.0%} of resamples"
        out.append(f'<path d="M{x0:.1f},{y0:.1f} C{x0 + bend:.1f},{y0:.1f} {x1 - bend:.1f},{y1:.1f} '
                   f'{x1:.1f},{y1:.1f}" fill="none" stroke="{colour}" stroke-width="{width(v, largest)}" '
                   f'stroke-opacity="{opacity(share)}" data-edge="{escape(str(e))}"><title>{escape(tip)}</title>'
                   f'</path>')
    for c in nodes:
        x, y = centre(c)
        shape = "rect" if isinstance(c, MLP) or c is None or isinstance(c, Embed) else "circle"
        if shape == "circle":
            out.append(f'<circle cx="{x}" cy="{y}" r="14" fill="#fff" stroke="#333"/>')
        else:
            out.append(f'<rect x="{x - 14}" y="{y - 11}" width="28" height="22" rx="3" fill="#fff" stroke="#333"/>')
        out.append(f'<text x="{x}" y="{y + 4}" text-anchor="middle" font-size="9">{escape(_short(c))}</text>')
        if isinstance(c, Head) and any(e.receiver == c for e, _ in pairs):
            for i, p in enumerate(PARTS):
                out.append(f'<text x="{x - 20}" y="{y + (i - 1) * 7 + 3}" text-anchor="end" font-size="7" '
                           f'fill="#666">{p}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _short(c: Any) -> str:
    if c is None:
        return "out"
    if isinstance(c, Embed):
        return "emb"
    if isinstance(c, Head):
        return f"H{c.head}"
    return "MLP"


def describe(edges: Any, frequency: Any = None, k: int | None = None) -> str:
    """What the picture of ``edges`` encodes, in words (the default caption of :func:`attach`)."""
    drawn = len(_pairs(_scored(edges, k)))
    text = f"{drawn} edge{'s' if drawn != 1 else ''}"
    if isinstance(edges, EdgeScores):
        text += (f" of largest |mean score| of {len(edges.components)} ({edges.attribution.upper()}"
                 + (f" on {edges.task}" if edges.task else "") + f", n={edges.n})")
    text += "; width: |attribution score|, colour: its sign (blue +, red -)"
    if frequency is not None:
        resamples = getattr(frequency, "kept", None)
        of = f" of {resamples.shape[0]} resampled discoveries" if resamples is not None else " of resamples"
        text += f"; opacity: share{of} keeping the edge"
    return text


def attach(name: str, edges: Any, *, frequency: Any = None, title: str = "", k: int | None = None,
           caption: str | None = None) -> Figure:
    """Draw ``edges`` (:func:`svg`: widths by attribution, opacity by ``frequency``) and attach
    the picture to the running claim's record as ``name`` (:func:`pytest_circuits.attach_figure`);
    ``caption`` defaults to what the picture encodes (:func:`describe`). Returns the Figure."""
    text = svg(edges, frequency=frequency, title=title, k=k)
    return attach_figure(name, text, caption=describe(edges, frequency, k) if caption is None else caption)
