"""Figures: an SVG picture a claim attaches to its own record, shown in the HTML report.

    from pytest_circuits import attach_figure

    @pytest.mark.claim(finding="...")
    def test_circuit(model, activations):
        ...
        attach_figure("circuit", svg_text, caption="top 12 edges, opacity = inclusion frequency")

A figure is recorded for the running claim like a measurement is (the plugin collects it per
test item, it travels in the claim's ledger record, from xdist workers too) and lands in the
JSON report (``records[i].figures``: ``name``, ``caption``, ``svg``), the HTML report (an
``<img>`` with the SVG as a ``data:`` URI, under the claim), the Markdown report (a line naming
it) and the terminal summary (``figure: <name>``). A figure attached before a claim fails is
kept: the failure is when a picture helps most. Outside a claim the figure is checked and
returned, and recorded nowhere; attach it in the claim's own body (not in a fixture).

Reports are untrusted input (``pytest-circuits merge`` reads them, the HTML report shows them),
so the SVG text is checked when it is attached and again when a report is merged or read
(:func:`svg_problem`). Accepted: SVG text of at most :data:`MAX_BYTES` bytes (UTF-8) that
parses as XML (:mod:`xml.etree.ElementTree`), without entity declarations (a DOCTYPE naming
the SVG DTD, as matplotlib writes, is fine; one with an internal subset is not), whose
root is ``<svg>`` in the SVG namespace (``xmlns="http://www.w3.org/2000/svg"``). Refused
anywhere in it: the elements ``script``, ``foreignObject``, ``iframe``, ``embed``, ``object``
and any element in the XHTML namespace; an attribute named ``on...`` (an event handler); an
``href`` (or ``xlink:href``) that is not a fragment of the picture itself (``#id``) or an
embedded raster image (``data:image/png``, ``jpeg``, ``gif`` or ``webp`` in base64); a
``javascript:`` value; a CSS ``url(...)`` that is not ``#id`` and CSS ``@import``; an
animation that sets an ``href`` or an ``on...`` attribute. The HTML report embeds the picture
as an image, where a browser runs no script and fetches nothing, so these checks are a second
wall, not the only one. A refused picture raises :class:`~pytest_circuits.errors.FigureError`
saying what was found.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from .errors import FigureError, bad

#: the largest SVG text accepted, in bytes of UTF-8 (1 MB)
MAX_BYTES = 1_000_000
#: the longest name and caption accepted, in characters
MAX_NAME = 200
MAX_CAPTION = 2000

SVG_NS = "http://www.w3.org/2000/svg"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_REFUSED_ELEMENTS = {"script", "foreignobject", "iframe", "embed", "object"}
_ANIMATIONS = {"animate", "set", "animatemotion", "animatetransform"}
_RASTER = re.compile(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*\Z", re.IGNORECASE)
_URL = re.compile(r"url\(\s*['\"]?\s*(?![\s'\"#])", re.IGNORECASE)
_JS = re.compile(r"j\s*a\s*v\s*a\s*s\s*c\s*r\s*i\s*p\s*t\s*:", re.IGNORECASE)

# Set by the plugin for the duration of a claim; every figure attached while it is set is
# appended (as measurement._RECORDERS is for measurements).
_RECORDERS: list[list["Figure"]] = []


@dataclass(frozen=True)
class Figure:
    """A claim's picture: its name (unique within the claim), a caption and the SVG text."""

    name: str
    svg: str
    caption: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "caption": self.caption, "svg": self.svg}

    @classmethod
    def from_json(cls, d: Any) -> "Figure":
        """The figure of a report's JSON object; :class:`FigureError` when it is not one."""
        problem = figure_problem(d)
        if problem:
            raise FigureError(problem)
        return cls(name=d["name"], svg=d["svg"], caption=d.get("caption") or "")


def _local(tag: str) -> tuple[str, str]:
    """``(namespace, local name)`` of an ElementTree tag or attribute name."""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def svg_problem(text: Any) -> str | None:
    """What makes ``text`` unacceptable as a figure's SVG (None when nothing does); the
    module docstring lists what is accepted."""
    if not isinstance(text, str):
        return f"the SVG is a {type(text).__name__}, not text (a str)"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        return f"the SVG is not valid Unicode text ({e.reason} at character {e.start})"
    if size > MAX_BYTES:
        return f"the SVG is {size:,} bytes, more than the {MAX_BYTES:,} accepted"
    if re.search(r"<!\s*ENTITY|<!\s*DOCTYPE[^>\[]*\[", text, re.IGNORECASE):
        return ("the SVG declares entities (a DOCTYPE with an internal subset [...] or <!ENTITY>), refused: "
                "entities can expand without bound")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        return f"the SVG is not well-formed XML ({e})"
    ns, local = _local(root.tag)
    if local != "svg" or ns != SVG_NS:
        return (f"the root element is <{local}>{f' in namespace {ns!r}' if ns else ' without a namespace'}, "
                f"not <svg xmlns=\"{SVG_NS}\">")
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        ns, local = _local(el.tag)
        if local.lower() in _REFUSED_ELEMENTS or ns == XHTML_NS:
            return f"the SVG has a <{local}> element{' (XHTML)' if ns == XHTML_NS else ''}, which is refused"
        if local.lower() == "style" and el.text and (_URL.search(el.text) or "@import" in el.text.lower()):
            return "the SVG has a <style> that loads something (url(...) not '#id', or @import)"
        for name, value in el.attrib.items():
            _, attr = _local(name)
            low = attr.lower()
            if low.startswith("on"):
                return f"the SVG has an event handler attribute {attr}= on <{local}>, which is refused"
            if _JS.search(value):
                return f"the SVG has a javascript: value in {attr}= on <{local}>"
            if low == "href" and not (value.strip().startswith("#") or _RASTER.match(value.strip())):
                return (f"the SVG has {attr}={value[:80]!r} on <{local}>: only '#id' or an embedded "
                        "data:image/png|jpeg|gif|webp;base64 image is accepted, nothing external")
            if low == "style" and (_URL.search(value) or "@import" in value.lower()):
                return f"the SVG has a style= on <{local}> that loads something (url(...) not '#id')"
            if _URL.search(value) and low != "style":
                return f"the SVG has {attr}={value[:80]!r} on <{local}>: a url(...) that is not '#id'"
        if local.lower() in _ANIMATIONS:
            target = _local(el.get("attributeName", ""))[1].lower()
            if target == "href" or target.startswith("on"):
                return f"the SVG has an <{local}> that sets {target}=, which is refused"
    return None


def figure_problem(d: Any) -> str | None:
    """What is wrong with ``d`` as a report's figure object (None when nothing is)."""
    if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("svg"), str) \
            or not isinstance(d.get("caption", ""), str):
        return "a figure without a name, svg or caption (strings)"
    problem = name_problem(d["name"], d.get("caption", ""))
    if problem:
        return f"figure {d['name'][:80]!r}: {problem}"
    problem = svg_problem(d["svg"])
    return f"figure {d['name']!r}: {problem}" if problem else None


def name_problem(name: Any, caption: Any) -> str | None:
    """What is wrong with a figure's ``name`` and ``caption`` (None when nothing is)."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME or not name.isprintable():
        return bad("name", name if isinstance(name, str) else type(name).__name__,
                   f"a printable name of 1 to {MAX_NAME} characters")
    if not isinstance(caption, str) or len(caption) > MAX_CAPTION:
        return bad("caption", caption if isinstance(caption, str) else type(caption).__name__,
                   f"text of at most {MAX_CAPTION} characters")
    return None


def attach_figure(name: str, svg: str, *, caption: str = "") -> Figure:
    """Attach the picture ``svg`` (SVG text) to the running claim's record as ``name``, with
    ``caption``; it is shown under the claim in the HTML report. Refused with
    :class:`~pytest_circuits.errors.FigureError` (at once, in the claim): SVG text that is not
    accepted (module docstring: script, event handlers, external links, over :data:`MAX_BYTES`),
    a bad name or caption, a name the claim already gave a figure. Returns the :class:`Figure`."""
    problem = name_problem(name, caption) or svg_problem(svg)
    if problem:
        raise FigureError(f"figure {name!r} refused: {problem}")
    fig = Figure(name=name, svg=svg, caption=caption)
    for rec in _RECORDERS:
        if any(f.name == name for f in rec):
            raise FigureError(f"figure {name!r} refused: the claim already attached a figure of that name; "
                              "give each its own")
    for rec in _RECORDERS:
        rec.append(fig)
    return fig
