"""Figures a claim attaches (pytest_circuits.figures): what SVG is accepted and what is refused
(at attach time, when a record is read back for a merge, when a report is rendered), how a
figure travels in a ledger record, and how the HTML and Markdown reports show it. The HTML is
parsed, and the image's data URI decoded and compared with the SVG attached."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from importlib import resources

import numpy as np
import pytest

from pytest_circuits import FigureError, attach_figure
from pytest_circuits import figures as F
from pytest_circuits import report as R
from pytest_circuits.errors import CircuitsError, MergeError
from pytest_circuits.ledger import LedgerRecord, record_problem
from pytest_circuits.techniques import edge_picture as P
from pytest_circuits.techniques.edge_stability import stability
from pytest_circuits.techniques.edges import Edge, EdgeScores

NS = 'xmlns="http://www.w3.org/2000/svg"'
GOOD = P.svg({"L0H1->L1H0.q": 0.5, "L1H0->logits": 1.0}, title="t")

# Each: SVG text a report must never carry, and words of the reason it is refused.
UNSAFE = [
    (f"<svg {NS}><script>alert(1)</script></svg>", "<script>"),
    (f"<svg {NS}><SCRIPT>alert(1)</SCRIPT></svg>", "<SCRIPT>"),
    (f"<svg {NS} onload=\"alert(1)\"><rect/></svg>", "event handler attribute onload"),
    (f"<svg {NS}><rect onMouseOver=\"x()\"/></svg>", "event handler attribute onMouseOver"),
    (f"<svg {NS}><foreignObject><div/></foreignObject></svg>", "<foreignObject>"),
    (f"<svg {NS}><g><h:p xmlns:h=\"http://www.w3.org/1999/xhtml\">x</h:p></g></svg>", "(XHTML)"),
    (f"<svg {NS}><iframe/></svg>", "<iframe>"),
    (f"<svg {NS} xmlns:x=\"http://www.w3.org/1999/xlink\"><image x:href=\"https://evil.example/a.png\"/></svg>",
     "nothing external"),
    (f"<svg {NS}><image href=\"file:///etc/passwd\"/></svg>", "nothing external"),
    (f"<svg {NS}><image href=\"data:image/svg+xml;base64,PHN2Zy8+\"/></svg>", "nothing external"),
    (f"<svg {NS}><a href=\"javascript:alert(1)\"><rect/></a></svg>", "javascript:"),
    (f"<svg {NS}><rect fill=\"url(https://evil.example/p#g)\"/></svg>", "url("),
    (f"<svg {NS}><rect style=\"fill:url('http://e/x')\"/></svg>", "loads something"),
    (f"<svg {NS}><style>@import 'https://e/x.css';</style></svg>", "<style> that loads"),
    (f"<svg {NS}><a><set attributeName=\"href\" to=\"javascript:alert(1)\"/></a></svg>", "javascript:"),
    (f"<svg {NS}><a><set attributeName=\"href\" to=\"https://e\"/></a></svg>", "sets href"),
    (f"<!DOCTYPE svg [<!ENTITY a \"aaaa\">]><svg {NS}>&a;</svg>", "declares entities"),
    (f"<!DOCTYPE svg [ ]><svg {NS}/>", "internal subset"),
    ("<svg><rect/></svg>", "without a namespace"),
    (f"<html {NS}/>", "root element is <html>"),
    ("not XML at all", "not well-formed"),
    (f"<svg {NS}><rect/>", "not well-formed"),
    (f"<svg {NS}><desc>{'x' * F.MAX_BYTES}</desc></svg>", "more than the 1,000,000"),
    (f"<svg {NS}><desc>\udc80</desc></svg>", "not valid Unicode"),
    (b"<svg/>", "not text"),
]


@pytest.mark.parametrize("text, words", UNSAFE)
def test_each_unsafe_svg_is_refused_when_attached(text, words):
    with pytest.raises(FigureError, match="refused") as e:
        attach_figure("bad", text)
    assert words in str(e.value)
    assert isinstance(e.value, CircuitsError)


def test_what_a_picture_needs_is_accepted():
    """The edge picture, and what plotting libraries write: internal references (#id, also in
    url()), a gradient, an embedded PNG, metadata in other namespaces, a comment."""
    ok = (f"<?xml version=\"1.0\"?><svg {NS} xmlns:x=\"http://www.w3.org/1999/xlink\" "
          "xmlns:dc=\"http://purl.org/dc/elements/1.1/\"><!-- c --><metadata><dc:title>t</dc:title></metadata>"
          "<defs><linearGradient id=\"g\"/></defs><rect fill=\"url(#g)\" style=\"fill: url( '#g' )\"/>"
          "<use x:href=\"#g\"/><image href=\"data:image/png;base64,iVBORw0KGgo=\"/><text>url(http://x) is text"
          "</text><animate attributeName=\"opacity\"/></svg>")
    assert F.svg_problem(GOOD) is None
    assert F.svg_problem(ok) is None
    exactly = f"<svg {NS}><desc></desc></svg>"
    padded = exactly.replace("<desc>", "<desc>" + "x" * (F.MAX_BYTES - len(exactly)))
    assert len(padded.encode()) == F.MAX_BYTES and F.svg_problem(padded) is None      # the cap is inclusive
    assert F.svg_problem(padded.replace("<desc>", "<desc>x")) is not None


def test_a_matplotlib_svg_is_accepted():
    """What matplotlib writes (a DOCTYPE naming the SVG DTD, a <style>, xlink:href to #ids, an
    embedded PNG for an image) is accepted as it is."""
    import io

    plt = pytest.importorskip("matplotlib.pyplot")
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.arange(16.0).reshape(4, 4))
    ax.plot([0, 1, 2], [2, 0, 1], marker="o")
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    assert "<!DOCTYPE svg" in text and "data:image/png;base64," in text
    assert F.svg_problem(text) is None


@pytest.mark.parametrize("name, caption, words", [
    ("", "", "name"), ("  ", "", "name"), ("a\nb", "", "name"), ("x" * 201, "", "name"), (3, "", "name"),
    ("ok", "c" * 2001, "caption"), ("ok", None, "caption"),
])
def test_a_bad_name_or_caption_is_refused(name, caption, words):
    with pytest.raises(FigureError, match=words):
        attach_figure(name, GOOD, caption=caption)


def test_a_figure_is_recorded_for_the_running_claim_once_per_name():
    mine: list = []
    F._RECORDERS.append(mine)
    try:
        fig = attach_figure("circuit", GOOD, caption="c")
        with pytest.raises(FigureError, match="already attached a figure of that name"):
            attach_figure("circuit", GOOD)
    finally:
        F._RECORDERS.remove(mine)
    assert mine == [fig] and fig == F.Figure("circuit", GOOD, "c")
    assert attach_figure("outside", GOOD).name == "outside"      # no claim running: checked, recorded nowhere
    assert mine == [fig]


# --- the ledger record --------------------------------------------------------------------

def _record(figures) -> dict:
    return {"claim": "t.py::test_a", "nodeid": "t.py::test_a[m]", "model": "m", "fingerprint": "f",
            "outcome": "passed", "finding": "", "source": "", "measurements": [], "assertions": [],
            "version_changes": [], "expected_change": None, "figures": figures}


def test_a_record_carries_its_figures_through_json():
    rec = LedgerRecord.from_json(_record([{"name": "a", "caption": "c", "svg": GOOD}]))
    assert rec.figures == [F.Figure("a", GOOD, "c")]
    assert LedgerRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    assert LedgerRecord.read(rec.to_json()) == rec
    old = _record([])
    del old["figures"]                                  # a report written before figures: none
    assert LedgerRecord.from_json(old).figures == [] and LedgerRecord.read(old).figures == []


@pytest.mark.parametrize("text, words", UNSAFE[:-1])
def test_a_record_with_an_unsafe_figure_is_refused_and_left_out_when_read(text, words):
    data = _record([{"name": "bad", "caption": "", "svg": text}, {"name": "good", "caption": "", "svg": GOOD}])
    problem = record_problem(data)
    assert problem and "has a figure that is refused" in problem and words in problem
    with pytest.raises(MergeError, match="figure 'bad'"):
        LedgerRecord.from_json(data)
    assert [f.name for f in LedgerRecord.read(data).figures] == ["good"]


@pytest.mark.parametrize("figures, words", [
    ("x", "not a list"), ([{"name": "a"}], "without a name, svg or caption"),
    ([{"name": "a", "caption": 3, "svg": GOOD}], "without a name, svg or caption"),
    ([{"name": "a", "caption": "", "svg": GOOD}] * 2, "two figures of the same name"),
])
def test_malformed_figures_are_refused(figures, words):
    assert words in record_problem(_record(figures))


def test_the_schema_takes_a_record_with_figures():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(resources.files("pytest_circuits").joinpath("data/report.schema.json").read_text())
    record_schema = schema["properties"]["records"]["items"]
    jsonschema.validate(_record([{"name": "a", "caption": "", "svg": GOOD}]), record_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_record([{"name": "a", "svg": GOOD}]), record_schema)      # no caption


# --- the reports --------------------------------------------------------------------------

class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.captions: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        self._in_caption = self._in_caption or tag == "figcaption"
        if tag == "figcaption":
            self.captions.append("")

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.captions[-1] += data


def _ledger(records):
    return {"schema": 1, "exit_status": 0, "git_commit": "abc", "versions": {}, "records": records}


def test_the_html_report_shows_the_figure_as_a_data_uri_image():
    caption = "width: |score| <b>&</b>"
    page = R.html_page(_ledger([_record([{"name": "circuit", "caption": caption, "svg": GOOD}])]))
    p = _Images()
    p.feed(page)
    figs = [i for i in p.images if i.get("src", "").startswith("data:image/svg+xml;base64,")]
    assert len(figs) == 1 and figs[0]["alt"] == "circuit"
    assert base64.b64decode(figs[0]["src"].split(",", 1)[1]).decode("utf-8") == GOOD
    assert p.captions == [f"circuit (m): {caption}"]             # escaped in the page, read back as written
    assert "<svg" not in page                                    # only ever as an image, never inline


def test_an_unsafe_figure_in_a_report_is_not_rendered():
    bad = f"<svg {NS}><script>alert(1)</script></svg>"
    data = _ledger([_record([{"name": "bad", "caption": "", "svg": bad}])])
    page = R.html_page(data)
    assert "image/svg+xml" not in page and base64.b64encode(bad.encode()).decode() not in page
    assert "bad" not in R.markdown(data).split("## Details")[1]


def test_the_markdown_report_names_the_figure():
    md = R.markdown(_ledger([_record([{"name": "circuit", "caption": "top | 12", "svg": GOOD}])]))
    assert "- `t.py::test_a` on m: `circuit`: top \\| 12" in md
    assert "<svg" not in md and "base64" not in md


# --- the edge picture in one call ---------------------------------------------------------

SCORES = {"L0H1->L1H0.q": 0.5, "L0H1->L1H0.v": -0.25, "embed->mlp0": 0.1, "L1H0->logits": 1.0,
          "mlp0->L1H0.k": 0.0}


def _scores():
    rng = np.random.default_rng(0)
    edges = tuple(Edge.parse(e) for e in SCORES)
    values = rng.normal(size=(len(edges), 12)) * 0.05 + np.array(list(SCORES.values()))[:, None]
    return EdgeScores(components=edges, values=values, attribution="eap", steps=1, task="synthetic",
                      totals=np.ones(12), clean=np.full(12, 2.0))


def test_edge_scores_and_a_stability_draw_the_same_picture_as_their_parts():
    scores = _scores()
    st = stability(scores, threshold=0.2, resamples=20, seed=0, record=False)
    assert P.svg(scores, frequency=st, k=3) == P.svg(scores.top(3, order="abs"), frequency=st.frequencies())
    assert P.svg(scores, frequency=st) == P.svg(scores.top(P.TOP, order="abs"), frequency=st.frequencies())
    with pytest.raises(CircuitsError, match="k="):
        P.svg(SCORES, k=3)                          # k picks edges of an EdgeScores only
    with pytest.raises(CircuitsError, match="frequency"):
        P.svg(SCORES, frequency=[0.5])


def test_attach_puts_the_edge_picture_on_the_running_claim():
    scores = _scores()
    st = stability(scores, threshold=0.2, resamples=20, seed=0, record=False)
    mine: list = []
    F._RECORDERS.append(mine)
    try:
        fig = P.attach("circuit", scores, frequency=st, k=4, title="synthetic")
    finally:
        F._RECORDERS.remove(mine)
    assert mine == [fig] and fig.svg == P.svg(scores, frequency=st, k=4, title="synthetic")
    assert fig.caption == ("4 edges of largest |mean score| of 5 (EAP on synthetic, n=12); width: |attribution "
                           "score|, colour: its sign (blue +, red -); opacity: share of 20 resampled discoveries "
                           "keeping the edge")
