"""Heatmaps are written and refuse mismatched labels."""

import re

import numpy as np
import pytest

from pytest_circuits import CircuitsError, plots

pytest.importorskip("matplotlib")


def test_heatmap_writes_a_png(tmp_path):
    v = np.array([[0.1, -0.4, np.nan], [0.0, 0.9, -0.2]])
    out = plots.heatmap(v, tmp_path / "sub" / "h.png", title="t", xlabels=["a", "b", "c"], ylabels=["0", "1"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_checks_the_labels(tmp_path):
    with pytest.raises(CircuitsError, match="do not match"):
        plots.heatmap(np.zeros((2, 3)), tmp_path / "h.png", title="t", xlabels=["a"], ylabels=["0", "1"])


# Text that mathtext or TeX would parse (and fail on: an even number of "$" around a bad
# command), HTML/Markdown markup, and a backslash before a table's "|".
NASTY = ["cost $\\frac{$ 5", "a $x_1$ b", "x^2 & <y> \\| z", "_p_ *q* ~~r~~ [s](t)", "$$", "plain"]


def _cell_texts(markdown_text):
    """Every table cell of a Markdown text, rendered (CommonMark + GFM tables and strikethrough)."""
    md_it = pytest.importorskip("markdown_it")
    from html.parser import HTMLParser

    html_text = md_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown_text)

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.cells, self.inside, self.tags = [], 0, []

        def handle_starttag(self, tag, attrs):
            if tag in ("td", "th"):
                self.inside += 1
                self.cells.append("")
            elif self.inside:
                self.tags.append(tag)

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.inside -= 1

        def handle_data(self, data):
            if self.inside:
                self.cells[-1] += data

    p = Cells()
    p.feed(html_text)
    return p.cells, p.tags


def test_literal_turns_off_mathtext_and_tex_for_the_figures_texts():
    plt = plots._plt()
    from matplotlib.text import Text

    fig, ax = plt.subplots()
    im = ax.imshow(np.ones((2, 2)))
    ax.set_title(NASTY[0])
    ax.set_xticks([0, 1], labels=NASTY[1:3])
    ax.set_ylabel(NASTY[4])
    bar = fig.colorbar(im, ax=ax)
    plots.literal(fig)
    texts = [t for t in fig.findobj(Text)]
    assert all(not t.get_usetex() for t in texts)
    for t in (ax.title, ax.yaxis.label, *ax.get_xticklabels()):
        assert t.get_parse_math() is False and t.get_text() in NASTY
    # a numeric axis keeps its own mathtext (a formatter may write $10^{3}$)
    assert all(t.get_parse_math() for t in bar.ax.yaxis.get_ticklabels())
    plt.close(fig)


def test_heatmap_draws_tex_and_markup_characters_as_written(tmp_path):
    # Before literal(), the title alone ended the figure in mathtext's ValueError.
    out = plots.heatmap(np.array([[0.5, -0.5, 0.1]]), tmp_path / "h.png", title=NASTY[0], xlabels=NASTY[1:4],
                        ylabels=[NASTY[4]], xlabel=NASTY[0], ylabel=NASTY[2], cbar=NASTY[0])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _drift_ledger(metric, model):
    m = {"name": metric, "key": metric, "model": model, "mean": 1.0, "lower": 0.9, "upper": 1.1, "n": 50,
         "level": 0.95, "flags": [],
         "baseline": {"mean": 0.0, "difference": 1.0, "tolerance": "3se", "allowed": 0.5, "within": False,
                      "flag": ""}}
    rec = {"claim": "t.py::test_a", "nodeid": f"t.py::test_a[{model}]", "model": model, "fingerprint": "sha256:0",
           "outcome": "failed", "finding": "f", "source": "s", "measurements": [m]}
    return {"schema": 1, "exit_status": 1, "git_commit": "abc", "versions": {"python": "3"}, "records": [rec]}


@pytest.mark.parametrize("metric", NASTY)
def test_report_forest_plot_and_markdown_show_names_as_written(metric):
    from pytest_circuits import report as R

    data = _drift_ledger(metric, model=f"m {metric}")
    page = R.html_page(data)                        # the forest plot drew the metric and model names
    assert 'id="forest-plot"' in page and "data:image/png;base64," in page
    text = R.markdown(data)
    cells, tags = _cell_texts(text)
    assert metric in cells                          # the drift table's metric cell, as written
    prose = re.sub(r"`[^`]*`", "", text)             # (code spans are shown as written anyway)
    assert prose.count("$") == prose.count("\\$")   # no $...$ math on GitHub either
    assert not {"em", "s", "del", "a", "b", "y"} & set(tags)     # (a drift outside is bold on purpose)


def test_checkup_heatmap_and_card_show_names_as_written():
    from pytest_circuits.report import cards as C

    png = C._heatmap_png(NASTY[0], [[0.1, -0.2], [0.3, 0.0]], NASTY[1])
    assert png is not None and len(png) > 100
    card = {"check": "induction", "title": NASTY[3], "source": "arXiv:1", "model": "m", "status": "found",
            "applicable": True, "reason": "", "found": True, "criterion": NASTY[2],
            "measurements": [{"name": NASTY[0], "mean": 1.0, "lower": 0.5, "upper": 1.5, "flags": [NASTY[1]]}],
            "components": [["L1H2", 0.8]], "heatmaps": {}, "details": {}}
    cells, tags = _cell_texts(C.card_markdown([card]))
    assert any(NASTY[0] in c and f"[{NASTY[1]}]" in c for c in cells)   # the name, and its flag, as written
    assert NASTY[2] in cells and any(c.startswith(NASTY[3]) for c in cells)
    assert not {"em", "s", "del", "a", "y"} & set(tags)      # (the status is bold on purpose)
