"""A claim's figures through a real run (pytester): attached in the claim, they reach the JSON
report (schema-valid), the HTML page (an <img> whose data URI decodes to the SVG attached), the
Markdown report and the terminal summary, from a failing claim too, and from xdist workers."""

from __future__ import annotations

import base64
import json
import re
import textwrap
from importlib import resources

import pytest

CLAIMS = textwrap.dedent('''
    import pytest
    from pytest_circuits import Measurement, attach_figure
    from pytest_circuits.techniques.edge_picture import svg

    PICTURE = svg({"L0H1->L1H0.q": 0.5, "L1H0->logits": 1.0}, frequency={"L1H0->logits": 0.8}, title="two edges")

    @pytest.mark.claim(source="test", finding="a claim with a picture")
    def test_pictured():
        attach_figure("circuit", PICTURE, caption="widths by score")
        Measurement.from_values("effect", [0.4, 0.5, 0.6, 0.7]).assert_above(0.0)

    @pytest.mark.claim(source="test", finding="a failing claim with a picture")
    def test_fails():
        attach_figure("what went wrong", PICTURE.replace("two edges", "failed"))
        Measurement.from_values("effect", [0.1, 0.2, 0.15]).assert_above(5.0)

    @pytest.mark.claim(source="test", finding="a picture and no measurement")
    def test_picture_only():
        attach_figure("alone", PICTURE)

    @pytest.mark.claim(source="test", finding="an unsafe picture")
    def test_unsafe():
        attach_figure("bad", '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>')
''')


def _picture(title: str) -> str:
    from pytest_circuits.techniques.edge_picture import svg

    return svg({"L0H1->L1H0.q": 0.5, "L1H0->logits": 1.0}, frequency={"L1H0->logits": 0.8}, title=title)


def _check(tmp_path, outcomes_run):
    report, page, md = (tmp_path / n for n in ("r.json", "r.html", "r.md"))
    r = outcomes_run(f"--circuits-report={report}", f"--circuits-html={page}", f"--circuits-markdown={md}")
    r.assert_outcomes(passed=2, failed=2)
    r.stdout.fnmatch_lines(["*FigureError: figure 'bad' refused: the SVG has an event handler attribute onload*"])
    data = json.loads(report.read_text())
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(resources.files("pytest_circuits").joinpath("data/report.schema.json").read_text())
    jsonschema.validate(data, schema)
    figs = {r["nodeid"].split("::")[1]: (r["outcome"], r["figures"]) for r in data["records"]}
    assert figs == {
        "test_pictured": ("passed", [{"name": "circuit", "caption": "widths by score", "svg": _picture("two edges")}]),
        "test_fails": ("failed", [{"name": "what went wrong", "caption": "", "svg": _picture("failed")}]),
        "test_picture_only": ("passed", [{"name": "alone", "caption": "", "svg": _picture("two edges")}]),
    }
    uris = re.findall(r'<img alt="([^"]*)" src="data:image/svg\+xml;base64,([^"]*)">', page.read_text())
    assert sorted((alt, base64.b64decode(b).decode()) for alt, b in uris) == sorted(
        [("circuit", _picture("two edges")), ("what went wrong", _picture("failed")), ("alone", _picture("two edges"))])
    assert "`circuit`: widths by score" in md.read_text()
    return r


def test_figures_reach_every_report(pytester, tmp_path):
    pytester.makepyfile(test_claims=CLAIMS)
    r = _check(tmp_path, lambda *a: pytester.runpytest("-p", "no:cacheprovider", "-rA", *a))
    r.stdout.fnmatch_lines(["PASSED  test_claims.py::test_pictured", "        finding: a claim with a picture",
                            "        effect = *", "        figure: circuit", "FAILED  test_claims.py::test_fails",
                            "        finding: *", "        effect = *", "        figure: what went wrong",
                            "PASSED  test_claims.py::test_picture_only", "        finding: *", "        figure: alone"])


def test_figures_travel_from_xdist_workers(pytester, tmp_path):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_claims=CLAIMS)
    _check(tmp_path, lambda *a: pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "-n", "2", *a))
