"""The release report (HTML page, Markdown summary, terminal lines) on synthetic ledgers.

The page is parsed with ``html.parser`` and checked for its structure: the verdict banner
first, the claims x checkpoints matrix (one row per claim, one column per checkpoint, each
cell's class and word matching its verdict), the drift forest plot (when matplotlib is
installed), then the details. Ledgers come as a matrix of situations: passed only, a failure,
a drift only, not checked, NaN numbers, hostile text, the old format, a merged report.
"""

from __future__ import annotations

import json
import math
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_circuits import report as R
from pytest_circuits.ledger import MeasurementEntry

ROOT = Path(__file__).resolve().parents[2]


# --- synthetic ledgers -------------------------------------------------------------------

def _m(key: str, mean: float = 1.0, *, diff: Any = None, allowed: Any = 0.5, within: Any = None,
       tolerance: str = "3se") -> dict[str, Any]:
    """One measurement; with ``diff`` given, compared with a baseline (``within`` from the numbers
    unless given)."""
    m = {"name": key, "key": key, "model": "?", "mean": mean, "lower": mean - 0.1, "upper": mean + 0.1,
         "n": 50, "level": 0.95, "flags": []}
    if diff is not None:
        if within is None:
            within = abs(diff) <= allowed
        m["baseline"] = {"mean": None if not isinstance(diff, (int, float)) else mean - diff, "difference": diff,
                         "tolerance": tolerance, "allowed": allowed, "within": within, "flag": ""}
    return m


def _rec(claim: str, model: str, outcome: str = "passed", *ms: dict[str, Any], finding: str = "",
         **extra: Any) -> dict[str, Any]:
    return {"claim": claim, "nodeid": f"{claim}[{model}]", "model": model, "fingerprint": "sha256:0",
            "outcome": outcome, "finding": finding or f"finding of {claim}", "source": "test",
            "measurements": list(ms) or [_m("x", diff=0.0)], **extra}


def _ledger(records: list[dict[str, Any]], *, exit_status: int | None = None, **extra: Any) -> dict[str, Any]:
    if exit_status is None:
        exit_status = 0 if all(r["outcome"] in ("passed", "xfailed", "skipped") for r in records) else 1
    return {"schema": 1, "exit_status": exit_status, "git_commit": "abc123", "versions": {"python": "3"},
            "records": records, **extra}


def _claims_entry(claim: str, model: str, verdict: str, reason: str = "", finding: str = "") -> dict[str, Any]:
    return {"nodeid": f"{claim}[{model}]", "claim": claim, "model": model, "verdict": verdict, "reason": reason,
            "finding": finding}


A, B, C = "t.py::test_a", "t.py::test_b", "t.py::test_c"

# name -> (ledger, gate passed?, {(claim, model): shown verdict})
CASES: dict[str, tuple[dict[str, Any], bool, dict[tuple[str, str], str]]] = {
    "passed-only": (_ledger([_rec(A, "m1"), _rec(A, "m2"), _rec(B, "m1"), _rec(B, "m2")]), True,
                    {(A, "m1"): "passed", (A, "m2"): "passed", (B, "m1"): "passed", (B, "m2"): "passed"}),
    "a-failure": (_ledger([_rec(A, "m1"), _rec(A, "m2", "failed", _m("x", diff=2.0, allowed=0.5)),
                           _rec(B, "m1"), _rec(B, "m2")]), False,
                  {(A, "m1"): "passed", (A, "m2"): "failed", (B, "m2"): "passed"}),
    "drift-only": (_ledger([_rec(A, "m1"), _rec(A, "m2", "passed", _m("x", diff=0.75, allowed=0.5))]), False,
                   {(A, "m1"): "passed", (A, "m2"): "drift"}),
    "not-checked": (_ledger([_rec(A, "m1")], claims=[
        _claims_entry(A, "m1", "passed"), _claims_entry(B, "m1", "not checked", "needs a GPU & <cuda>")]), True,
        {(A, "m1"): "passed", (B, "m1"): "not checked"}),
    "nan": (_ledger([_rec(A, "m1", "passed", _m("x", diff=math.nan, allowed=0.5, within=True)),
                     _rec(B, "m1", "passed", _m("y", mean=math.nan, diff=None)),
                     _rec(C, "m1", "passed", _m("z", diff=0.1, allowed=None, within=True))]), False,
            {(A, "m1"): "drift", (B, "m1"): "passed", (C, "m1"): "drift"}),
    "escaping": (_ledger([_rec("t.py::test_<script>alert(1)</script>", "m\"1<b>", "passed",
                               _m("k<&>'\"", diff=0.0), finding="<script>alert('x')</script> & \"q\" 'q'")]), True,
                 {("t.py::test_<script>alert(1)</script>", "m\"1<b>"): "passed"}),
    "old-format": (_ledger([_rec(A, "m1", "xfailed", expected_change="expected change on m1"),
                            _rec(B, "m1", "xfailed"), _rec(C, "m1", "skipped")]), True,
                   {(A, "m1"): "expected change", (B, "m1"): "xfailed", (C, "m1"): "not checked"}),
    "merged": (_ledger([_rec(A, "m1"), _rec(B, "m1")], shard=None,
                       claims=[_claims_entry(A, "m1", "passed"), _claims_entry(B, "m1", "passed")],
                       collected=[f"{A}[m1]", f"{B}[m1]", f"{C}[m1]"],
                       merged_from=[{"path": "a.json", "shard": {"index": 1, "count": 2}, "git_commit": "abc123"},
                                    {"path": "b.json", "shard": {"index": 2, "count": 2}, "git_commit": "abc123"}]),
               False, {(A, "m1"): "passed", (B, "m1"): "passed", (f"{C}[m1]", ""): "not run"}),
}


# --- a small DOM from html.parser ---------------------------------------------------------

VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "wbr", "source"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: "Node | None") -> None:
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], ""

    def iter(self):
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list["Node"]:
        return [n for n in self.iter() if (tag is None or n.tag == tag)
                and all(n.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())]

    def find(self, tag: str | None = None, **attrs: str) -> "Node":
        found = self.find_all(tag, **attrs)
        assert found, (tag, attrs)
        return found[0]

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class Tree(HTMLParser):
    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        text = Node("#text", {}, self.cur)
        text.text = data
        self.cur.children.append(text)


def _page(data: dict[str, Any], tmp_path: Path) -> tuple[str, Node]:
    out = tmp_path / "r.html"
    R.write_html(out, data)
    page = out.read_text("utf-8")
    return page, Tree(page).root


# --- the structure, on every case ----------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_page_structure_matches_the_verdicts(case, tmp_path):
    data, passed, expected = CASES[case]
    page, root = _page(data, tmp_path)
    body = root.find("body")
    sections = [n for n in body.children if n.tag != "#text"]
    # banner first, then the overview (matrix, forest), then the details
    assert [n.tag for n in sections] == ["header", "main", "section"]
    banner = sections[0]
    assert banner.attrs["id"] == "verdict" and banner.attrs["data-gate"] == ("passed" if passed else "failed")
    assert ("Release gate PASSED" if passed else "Release gate FAILED") in banner.all_text()
    assert "Rule: the gate fails if" in banner.all_text()
    overview = sections[1]
    assert [n.attrs.get("id") for n in overview.children if n.tag == "section"] == ["matrix", "forest"]
    assert sections[2].attrs["id"] == "details"
    # the matrix: one row per claim, one column per checkpoint
    s = R.summarize(data)
    table = overview.find("table", class_="matrix")
    heads = [th.all_text() for th in table.find("thead").find_all("th")]
    assert heads[1:] == [m or "(no model)" for m in s.models]
    rows = table.find("tbody").find_all("tr")
    assert [r.attrs["data-claim"] for r in rows] == s.claims
    for (claim, model), verdict in expected.items():
        row = next(r for r in rows if r.attrs["data-claim"] == claim)
        cell = next(td for td in row.find_all("td") if td.attrs["data-model"] == model)
        css, symbol, word = R.VERDICT_STYLE[verdict]
        assert cell.attrs["data-verdict"] == verdict and f"v-{css}" in cell.classes(), (claim, model)
        assert f"{symbol} {word}" in cell.all_text()   # never colour alone
    # every verdict shown has its legend entry
    legend = overview.find("div", class_="legend").all_text()
    for verdict in set(expected.values()):
        assert R.VERDICT_STYLE[verdict][2] in legend
    # self-contained: no script, no external resource
    assert not root.find_all("script") and not root.find_all("link")
    assert all(img.attrs["src"].startswith("data:image/png;base64,") for img in root.find_all("img"))
    assert "http://" not in page and "https://" not in page


@pytest.mark.parametrize("case", list(CASES))
def test_markdown_summary_heads_the_report(case):
    data, passed, expected = CASES[case]
    text = R.markdown(data)
    lines = text.splitlines()
    assert lines[0] == "# pytest-circuits release report"
    verdict = next(line for line in lines if line.startswith("## "))
    assert verdict.startswith("## \u2713 Release gate PASSED" if passed else "## \u2717 Release gate FAILED")
    assert text.index("Release gate") < text.index("## Details")
    s = R.summarize(data)
    head = "| claim | finding | " + " | ".join(R._md(m or "(no model)") for m in s.models) + " |"
    at = lines.index(head)
    matrix = lines[at + 2: at + 2 + len(s.claims)]
    assert len(matrix) == len(s.claims) and all(row.startswith("| `") for row in matrix)
    for (claim, model), verdict_ in expected.items():
        row = matrix[s.claims.index(claim)]
        cell = row.split(" | ")[2 + s.models.index(model)].rstrip(" |")
        _, symbol, word = R.VERDICT_STYLE[verdict_]
        assert cell.startswith(f"{symbol} {word}"), (row, cell)
    outside_code = re.sub(r"`[^`]*`", "", text)      # a code span shows its text literally
    assert "<script" not in outside_code and "<b>" not in outside_code


@pytest.mark.parametrize("case", list(CASES))
def test_terminal_lines(case):
    data, passed, _ = CASES[case]
    lines = R.terminal_lines(data)
    assert lines[0].startswith("release gate PASSED" if passed else "release gate FAILED")
    s = R.summarize(data)
    for m in s.models:
        assert any(line.startswith(f"  {m or '(no model)'}: ") for line in lines)


# --- drifts in tolerance units ------------------------------------------------------------

def test_drift_is_shown_in_tolerance_units_everywhere(tmp_path):
    data = CASES["drift-only"][0]
    s = R.summarize(data)
    [d] = s.beyond()
    assert d.ratio == pytest.approx(1.5) and d.ratio_text == "+1.50\u00d7 tol" and not d.within
    assert s.reasons == ["1 claim result passed but drifted beyond tolerance", "1 measurement beyond tolerance"]
    page, root = _page(data, tmp_path)
    cell = root.find("td", **{"data-verdict": "drift"})
    assert "+1.50\u00d7 tol" in cell.all_text()
    md = R.markdown(data)
    assert "| **+1.50\u00d7 tol** | `test_a` | m2 | x | 0.75 | \u00b10.5 (3se) |" in md
    assert any("+1.50\u00d7 tol" in line and "test_a [m2] x" in line for line in R.terminal_lines(data))
    # the released checkpoint's own comparison (0 difference) is within: not listed as a drift
    assert len(s.drifts()) == 2 and s.drifts()[1].ratio == 0.0 and s.drifts()[1].within


@pytest.mark.parametrize("diff,allowed,within,ratio_text,is_within", [
    (0.25, 0.5, True, "+0.50\u00d7 tol", True),
    (-1.0, 0.5, False, "-2.00\u00d7 tol", False),
    (0.0, 0.0, True, "+0.00\u00d7 tol", True),
    (0.1, 0.0, False, "+\u221e\u00d7 tol", False),
    (math.nan, 0.5, True, "n/a", False),           # NaN never counts as within, whatever the report says
    (0.1, None, True, "n/a", False),
    (0.1, math.inf, True, "n/a", False),
    ("0.1", 0.5, True, "n/a", False),              # a number that is not a number
    (0.9, 0.5, True, "+1.80\u00d7 tol", False),     # the report says within, its numbers say otherwise
    (0.1, 0.5, False, "+0.20\u00d7 tol", False),    # outside per the report (e.g. an untrusted wide tolerance)
])
def test_drift_rules(diff, allowed, within, ratio_text, is_within):
    m = _m("x", diff=diff, allowed=allowed, within=within)
    d = R._drift("c", "m", MeasurementEntry.read(m))     # the entry the reports render
    assert d is not None and d.ratio_text == ratio_text and d.within is is_within
    if not is_within:
        assert R.summarize(_ledger([_rec(A, "m", "passed", m)])).passed is False


def test_nan_numbers_say_na_and_never_crash(tmp_path):
    data = CASES["nan"][0]
    page, root = _page(data, tmp_path)
    details = root.find("section", id="details").all_text()
    assert "n/a" in details and "nan" not in details.lower().replace("n/a", "")
    md = R.markdown(data)
    assert "drift n/a (!)" in md and "| **n/a** |" in md
    assert "nan" not in R.markdown(data).lower().replace("n/a", "")
    # the NaN drift is listed first among the drifts (farthest out: cannot be bounded)
    assert math.isnan(R.summarize(data).beyond()[0].ratio)


def test_garbage_in_a_report_is_shown_not_raised(tmp_path):
    data = _ledger([_rec(A, "m1", "passed", {"key": "k", "mean": "abc", "baseline": {"difference": None,
                                                                                       "within": "yes"}}),
                    "not a record", _rec(B, "m1", "weird-outcome")], exit_status=0)
    data["claims"] = [42, _claims_entry(C, "m1", "made-up verdict")]
    s = R.summarize(data)
    assert not s.passed
    assert s.cells[(A, "m1")].shown == "drift" and s.cells[(B, "m1")].verdict == "error"
    assert s.cells[(C, "m1")].verdict == "error"
    page, root = _page(data, tmp_path)
    assert root.find("header").attrs["data-gate"] == "failed"
    R.markdown(data), R.terminal_lines(data)


# --- hostile text --------------------------------------------------------------------------

def test_report_text_cannot_inject_markup(tmp_path):
    data = CASES["escaping"][0]
    data["records"][0]["version_changes"] = ["torch <1> -> <2>"]
    data["claims"] = [_claims_entry("t.py::test_<script>alert(1)</script>", "m\"1<b>", "passed",
                                    reason="<img src=x onerror=alert(1)>")]
    page, root = _page(data, tmp_path)
    assert not root.find_all("script") and not root.find_all("b")
    assert all(img.attrs.get("onerror") is None for img in root.find_all("img"))
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)" in page
    finding = root.find("span", class_="finding")
    assert finding.attrs["title"] == "<script>alert('x')</script> & \"q\" 'q'"   # the full text, as text
    md = R.markdown(data)
    assert "<script" not in re.sub(r"`[^`]*`", "", md) and "&lt;script>alert" in md
    assert "`test_<script>alert(1)</script>`" in md    # a code span: shown as text, never rendered


# --- situations ----------------------------------------------------------------------------

def test_counts_per_checkpoint(tmp_path):
    data = _ledger([_rec(A, "m1"), _rec(A, "m2", "failed", _m("x", diff=2.0)), _rec(B, "m1"),
                    _rec(B, "m2", "passed", _m("x", diff=0.6)), _rec(C, "m1"), _rec(C, "m2", "skipped")])
    s = R.summarize(data)
    assert s.counts("m1")["passed"] == 3
    c2 = s.counts("m2")
    assert (c2["failed"], c2["drift"], c2["not checked"], c2["passed"]) == (1, 1, 1, 0)
    assert s.drifted("m2") == 2
    page, root = _page(data, tmp_path)
    row = root.find("table", class_="counts").find("tr", **{"data-model": "m2"})
    counts = {td.attrs["data-count"]: td.all_text() for td in row.find_all("td") if "data-count" in td.attrs}
    assert counts["failed"] == "1" and counts["drift"] == "1" and counts["not checked"] == "1"
    assert counts["beyond"] == "2"
    assert "  m2: 1 drift, 1 failed, 1 not checked (2 with a drift beyond tolerance)" in \
        R.terminal_lines(data)


@pytest.mark.parametrize("n_models", [1, 3, 12])
def test_one_checkpoint_and_many(n_models, tmp_path):
    models = [f"step-{i * 1000}" for i in range(n_models)]
    data = _ledger([_rec(c, m, "passed", _m("x", diff=0.04 * i)) for c in (A, B) for i, m in enumerate(models)])
    page, root = _page(data, tmp_path)
    rows = root.find("table", class_="matrix").find("tbody").find_all("tr")
    assert len(rows) == 2 and all(len(r.find_all("td")) == n_models for r in rows)
    heads = [th.all_text() for th in root.find("table", class_="matrix").find("thead").find_all("th")][1:]
    assert heads == models          # in natural order: step-9000 before step-10000
    assert root.find("header").attrs["data-gate"] == "passed"


def test_no_baseline_comparisons(tmp_path):
    data = _ledger([_rec(A, "m1", "passed", _m("x")), _rec(A, "m2", "passed", _m("x"))])
    page, root = _page(data, tmp_path)
    forest = root.find("section", id="forest")
    assert not forest.find_all("img") and "No measurement was compared with a baseline" in forest.all_text()
    assert root.find("header").attrs["data-gate"] == "passed"
    assert "No measurement was compared with a baseline." in R.markdown(data)


def test_forest_plot_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    data = CASES["a-failure"][0]
    page, root = _page(data, tmp_path)
    img = root.find("section", id="forest").find("img", id="forest-plot")
    assert img.attrs["src"].startswith("data:image/png;base64,")
    assert "1 outside tolerance" in img.attrs["alt"]
    # the details come after the plot
    assert page.index('id="forest-plot"') < page.index('id="details"')


def test_page_is_complete_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib -> ImportError
    data = CASES["a-failure"][0]
    page, root = _page(data, tmp_path)
    forest = root.find("section", id="forest")
    assert not root.find_all("img") and "install matplotlib" in forest.all_text()
    assert "+4.00\u00d7 tol" in forest.find("table", class_="largest").all_text()
    assert root.find("section", id="details")


def test_exit_status_alone_fails_the_gate():
    data = _ledger([_rec(A, "m1")], exit_status=1)
    s = R.summarize(data)
    assert not s.passed and s.reasons == ["pytest exited with status 1 although no claim failed"]


@pytest.mark.parametrize("data", [
    _ledger([], exit_status=0),
    _ledger([], exit_status=0, claims=[_claims_entry(A, "m1", "not checked", "no GPU")]),
])
def test_nothing_checked_is_no_pass(data, tmp_path):
    assert R.summarize(data).reasons[-1] == "no claim was checked"
    page, root = _page(data, tmp_path)
    assert root.find("header").attrs["data-gate"] == "failed"


def test_a_shard_report_does_not_count_other_shards_as_not_run():
    claims = [_claims_entry(A, "m1", "passed")]
    shard = _ledger([_rec(A, "m1")], claims=claims, collected=[f"{A}[m1]", f"{B}[m1]"],
                    shard={"index": 1, "count": 2})
    s = R.summarize(shard)
    assert s.passed and "shard 1/2 (part of the suite)" in s.identity
    whole = _ledger([_rec(A, "m1")], claims=claims, collected=[f"{A}[m1]", f"{B}[m1]"], shard=None)
    s = R.summarize(whole)
    assert not s.passed and s.cells[(f"{B}[m1]", "")].shown == "not run"


def test_merged_report_identity(tmp_path):
    data = CASES["merged"][0]
    s = R.summarize(data)
    assert "merged from 2 reports" in s.identity
    page, root = _page(data, tmp_path)
    assert "merged from 2 reports" in root.find("header").all_text()
    assert "a.json" in root.find("section", id="details").all_text()
    other = json.loads(json.dumps(data))
    other["merged_from"][1]["git_commit"] = "def456"
    assert any("2 different commits" in x for x in R.summarize(other).identity)


def test_claims_and_records_disagreeing_take_the_worse():
    data = _ledger([_rec(A, "m1", "passed")], claims=[_claims_entry(A, "m1", "failed", "assert 0")])
    cell = R.summarize(data).cells[(A, "m1")]
    assert cell.verdict == "failed" and cell.reason == "assert 0"


def test_worked_example_renders(tmp_path):
    data = json.loads((ROOT / "docs/example-drift/report.json").read_text())
    s = R.summarize(data)
    assert not s.passed and s.models == ["smollm2-135m", "smollm2-attn23-half"] and len(s.claims) == 12
    assert s.counts("smollm2-attn23-half")["failed"] == 8 and s.counts("smollm2-135m")["passed"] == 12
    worst = s.beyond()[0]
    assert worst.metric == "change of PR(L24H4 onto L23H0)" and worst.ratio == pytest.approx(1.96, abs=0.01)
    page, root = _page(data, tmp_path)
    assert len(root.find("table", class_="matrix").find("tbody").find_all("tr")) == 12


def test_a_claim_reported_twice_keeps_the_worse_result():
    data = _ledger([_rec(A, "m1", "failed", _m("x", diff=2.0)), _rec(A, "m1", "passed", _m("x", diff=0.0))])
    s = R.summarize(data)
    cell = s.cells[(A, "m1")]
    assert cell.verdict == "failed" and len(cell.beyond) == 1 and not s.passed


def test_forest_plot_draws_the_farthest_rows_and_says_so(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(R, "FOREST_ROWS", 3)
    data = _ledger([_rec(A, "m1", "passed", *[_m(f"k{i}", diff=0.1 * i, allowed=1.0) for i in range(6)])])
    page, root = _page(data, tmp_path)
    forest = root.find("section", id="forest")
    assert forest.find("img", id="forest-plot") and "The 3 claim metrics farthest out are drawn; the other 3" \
        in forest.all_text()


CARD = {"check": "induction", "title": "Induction heads", "source": "arXiv:2209.11895", "model": "m1",
        "status": "found", "applicable": True, "reason": "", "found": True, "criterion": "score > 0.5",
        "measurements": [_m("induction score <i>", mean=0.8)], "components": [["L1H2", 0.8]], "heatmaps": {},
        "details": {}, "outcome": "passed"}


def test_checkup_cards_are_in_the_details(tmp_path):
    data = _ledger([_rec(A, "m1")], checkup=[CARD])
    page, root = _page(data, tmp_path)
    cards = root.find("section", id="details").find("section", id="checkup")
    assert "Mechanism card" in cards.all_text() and "Induction heads" in cards.all_text()
    assert not root.find_all("i")                         # its text is escaped too
    assert "## Mechanism card: `m1`" in R.markdown(data)


@pytest.mark.parametrize("checkup", [[{"check": "induction"}], "not a list", [3]])
def test_malformed_checkup_cards_are_said_not_raised(checkup, tmp_path):
    data = _ledger([_rec(A, "m1")], checkup=checkup)
    page, root = _page(data, tmp_path)
    assert "checkup cards in this report are malformed" in root.find("section", id="checkup").all_text()
    assert "checkup cards in this report are malformed" in R.markdown(data)


def test_markdown_says_why_a_claim_was_not_checked():
    data = CASES["not-checked"][0]
    assert "- \u2013 `test_b` on m1: needs a GPU &amp; &lt;cuda>" in R.markdown(data).splitlines()


def test_not_checked_reason_on_hover(tmp_path):
    page, root = _page(CASES["not-checked"][0], tmp_path)
    cell = root.find("td", **{"data-verdict": "not checked"})
    assert cell.attrs["title"] == "not checked: needs a GPU & <cuda>"


def test_a_real_run_renders_every_claim(pytester, tiny_dir, tmp_path):
    """End to end through the plugin: a claim that holds, one that fails its own assertion,
    one not checked (an optional model that is absent, with a hostile reason) and one that
    crashes; the page's matrix shows each with its verdict, the gate fails."""
    pytester.makepyfile(test_r=f"""
        import pytest
        from pytest_circuits import Measurement

        @pytest.mark.claim(finding="holds <always>")
        @pytest.mark.model({str(tiny_dir)!r})
        def test_holds(model):
            Measurement.from_values("v", [1.0, 2.0, 1.5, 1.2], model="ckpt").assert_above(0)

        @pytest.mark.claim(finding="breaks")
        @pytest.mark.model({str(tiny_dir)!r})
        def test_breaks(model):
            Measurement.from_values("v", [1.0, 2.0, 1.5, 1.2], model="ckpt").assert_above(10)

        @pytest.mark.claim(finding="needs another model")
        @pytest.mark.model("no-such-model-xyz", optional="weights <not> available & offline")
        def test_absent(model):
            assert False

        @pytest.mark.claim(finding="crashes")
        @pytest.mark.model({str(tiny_dir)!r})
        def test_crashes(model):
            raise RuntimeError("boom")
    """)
    page, md = tmp_path / "r.html", tmp_path / "r.md"
    r = pytester.runpytest(f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider",
                           f"--circuits-html={page}", f"--circuits-markdown={md}")
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    root = Tree(page.read_text("utf-8")).root
    assert root.find("header").attrs["data-gate"] == "failed"
    verdicts = {row.attrs["data-claim"].rpartition("::")[2]: {td.attrs["data-model"]: td.attrs["data-verdict"]
                                                              for td in row.find_all("td")}
                for row in root.find("table", class_="matrix").find("tbody").find_all("tr")}
    assert verdicts["test_holds"]["ckpt"] == "passed" and verdicts["test_breaks"]["ckpt"] == "failed"
    assert verdicts["test_crashes"]["ckpt"] == "failed"
    # the ledger's "claims" (every claim item) brings the claim that made no measurement, and why
    assert verdicts["test_absent"] == {"ckpt": "none", "no-such-model-xyz": "not checked"}
    cell = root.find("td", **{"data-verdict": "not checked"})
    assert "weights <not> available & offline" in cell.attrs["title"]
    assert md.read_text().startswith("# pytest-circuits release report\n\n## \u2717 Release gate FAILED")


# --- a report a reviewer can act on (issue 21, item 8) ---------------------------------------

def _new(key: str, mean: float = 1.0) -> dict[str, Any]:
    m = _m(key, mean)
    m["baseline"] = {"status": "new", "mean": None, "difference": None, "tolerance": "3se", "allowed": None,
                     "within": False, "flag": "no baseline yet"}
    return m


def test_a_measurement_with_no_baseline_is_new_never_beyond_tolerance(tmp_path):
    """Main showed these as "beyond tolerance" with drift n/a, and the banner counted the released
    model as drifted against its own fresh baselines."""
    data = _ledger([_rec(A, "released", "failed", _new("share"), _new("logit")),
                    _rec(B, "released", "passed", _m("x", diff=0.0))],
                   claims=[_claims_entry(A, "released", "failed", "share[released] = 0.731 [0.7, 0.76] n=171 "
                                                                   "(95% interval) -- expected lower bound > 0.8"),
                           _claims_entry(B, "released", "passed")])
    s = R.summarize(data)
    assert s.beyond() == [] and s.drifts()[0].metric == "x" and s.drifted("released") == 0
    assert s.new() == [(A, "released", "logit"), (A, "released", "share")]
    assert s.cells[(A, "released")].shown == "failed"           # failed by its assertion, not "drift"
    assert not any("beyond tolerance" in r for r in s.reasons) and "1 claim result failed" in s.reasons
    md = R.markdown(data)
    assert "New (no baseline yet, so not a drift): 2 measurements" in md and "drift n/a" not in md
    assert "new (no baseline yet)" in md and "expected lower bound > 0.8" in md
    page, root = _page(data, tmp_path)
    assert "New, with no baseline yet (not drifts): 2 measurements" in root.find("p", id="new-measurements").all_text()
    assert not any("new (no baseline" in line for line in R.terminal_lines(data) if "beyond" in line)
    assert "new (no baseline yet, not drifted): 2 measurements" in R.terminal_lines(data)


def test_real_drifts_come_first_and_na_last():
    """Main sorted an uncomputable drift first, so the forest plot's first rows were n/a."""
    data = _ledger([_rec(A, "m1", "passed", _m("na1", diff=math.nan, allowed=0.5, within=True)),
                    _rec(B, "m1", "failed", _m("small", diff=0.6, allowed=0.5), _m("big", diff=-2.0, allowed=0.5)),
                    _rec(C, "m1", "passed", _m("na2", diff=0.1, allowed=None, within=True))])
    s = R.summarize(data)
    assert [d.metric for d in s.drifts()] == ["big", "small", "na1", "na2"]
    assert [d.metric for d in s.beyond()] == ["big", "small", "na1", "na2"]
    assert s.cells[(B, "m1")].worst.metric == "big"
    largest = R.summary_markdown(data)
    assert largest.index(next(x for x in largest if "big" in x)) < largest.index(next(x for x in largest if "na1" in x))
    lines = R.terminal_lines(data)
    assert [i for i, x in enumerate(lines) if " big " in x][0] < [i for i, x in enumerate(lines) if " na1 " in x][0]


def test_the_identity_line_says_a_dirty_working_tree(tmp_path):
    data = _ledger([_rec(A, "m1")], worktree={"dirty": True, "diff_sha256": "1a2b3c4d5e6f" + "0" * 52, "changed": 2})
    s = R.summarize(data)
    assert s.identity[0] == ("commit abc123 + uncommitted changes (DIRTY working tree: 2 paths differ, diff sha256 "
                             "1a2b3c4d5e6f)")
    page, root = _page(data, tmp_path)
    assert "DIRTY working tree" in root.find("header").all_text() and "DIRTY working tree" in R.markdown(data)
    clean = _ledger([_rec(A, "m1")], worktree={"dirty": False, "diff_sha256": None, "changed": 0})
    assert R.summarize(clean).identity[0] == "commit abc123"


def test_worktree_of_a_git_checkout(tmp_path):
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "claim.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=repo, check=True)
    assert R.worktree(str(repo)) == {"dirty": False, "diff_sha256": None, "changed": 0}
    (repo / "claim.py").write_text("x = 2\n")
    one = R.worktree(str(repo))
    assert one["dirty"] is True and len(one["diff_sha256"]) == 64 and one["changed"] == 1
    (repo / "claim.py").write_text("x = 3\n")                    # another change: another hash
    two = R.worktree(str(repo))
    assert two["dirty"] and two["diff_sha256"] != one["diff_sha256"]
    (repo / "claim.py").write_text("x = 1\n")
    (repo / "new_claims.py").write_text("y = 1\n")               # an untracked file counts, by its contents
    three = R.worktree(str(repo))
    assert three["dirty"] and three["changed"] == 1
    (repo / "new_claims.py").write_text("y = 2\n")
    assert R.worktree(str(repo))["diff_sha256"] != three["diff_sha256"]
    assert R.worktree(str(repo), exclude=[str(repo / "new_claims.py")])["dirty"] is False   # the run's own report
    assert R.worktree(str(tmp_path / "nowhere")) is None                          # not a git checkout


@pytest.mark.parametrize("case", list(CASES))
def test_the_reports_render_the_ledger_records(case):
    """The renderers read a report's records as the LedgerRecords they were written from
    (``R.records``): written again from those records (``to_json``), with keys the record does
    not know added, the report renders the same, to the byte."""
    data = CASES[case][0]
    again = {**data, "records": [{**r.to_json(), "unknown": 1} for r in R.records(data)]}
    assert R.markdown(again) == R.markdown(data) and R.terminal_lines(again) == R.terminal_lines(data)
    assert R.html_page(again) == R.html_page(data)
