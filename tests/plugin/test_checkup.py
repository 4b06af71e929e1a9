"""``pytest --circuits-checkup``: checks become claims per model, the mechanism card, baselines,
not-applicable checks and detectors that raise. Through pytester, with checks registered in the
run's conftest (fast, and each outcome known in advance) and the built-in greater-than and
factual-recall checks on the tiny model."""

from __future__ import annotations

import json
import textwrap
from importlib import resources
from pathlib import Path

import pytest

from pytest_circuits import checkup

CONFTEST = textwrap.dedent("""
    import numpy as np
    from pytest_circuits import Measurement, checkup
    from pytest_circuits.detection import Detection

    def _heat(model, value):
        a = np.zeros((model.cfg.n_layers, model.cfg.n_heads))
        a[-1, 0] = value
        return a

    def found(model):
        Measurement.from_values("intermediate score", [9.0, 9.5, 9.9])   # not reported
        m = Measurement.from_values("planted score", [1.0, 1.2, 1.1, 0.9])
        return Detection("fake_found", "A planted thing", source="test", model="m", found=m.lower > 0.5,
                         criterion="lower bound > 0.5", measurements=(m,), components=(("L1H0", 1.05),),
                         heatmaps={"score": _heat(model, 1.05)})

    def missing(model):
        m = Measurement.from_values("absent score", [0.0, 0.1, -0.1])
        return Detection("fake_missing", "An absent thing", source="test", model="m", found=m.lower > 0.5,
                         criterion="lower bound > 0.5", measurements=(m,))

    def na(model):
        return Detection.not_applicable("fake_na", "Needs names", "the tokenizer has no single-token names",
                                        source="test")

    def broken(model):
        raise RuntimeError("detector exploded")

    def wrong_type(model):
        return 0.5

    for name, fn in [("fake_found", found), ("fake_missing", missing), ("fake_na", na),
                     ("fake_error", broken), ("fake_type", wrong_type)]:
        checkup.register(checkup.Check(name, name.replace("_", " "), "test", f"{name} finding", fn))
""")

FAKE = "fake_found,fake_missing,fake_na,fake_error,fake_type"


@pytest.fixture
def fake(pytester, monkeypatch):
    monkeypatch.setattr(checkup, "CHECKS", dict(checkup.CHECKS))   # registrations stay in this test
    pytester.makeconftest(CONFTEST)
    return pytester


def _run(pytester, tiny_dir, tmp_path, *extra):
    return pytester.runpytest(f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={tmp_path / 'cache'}",
                              "-p", "no:cacheprovider", *extra)


def test_checks_become_claims_with_a_card(fake, tiny_dir, tmp_path):
    fake.makepyfile(test_other="def test_other():\n    assert True\n")
    out = tmp_path / "out"
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup", f"--circuits-checks={FAKE}",
             f"--circuits-report={out}/r.json", f"--circuits-markdown={out}/r.md", f"--circuits-html={out}/r.html")
    # No paths given: only the checkup runs (test_other.py is not collected).
    r.assert_outcomes(passed=1, failed=3, skipped=1)
    r.stdout.fnmatch_lines([
        "*mechanism card: ckpt*",
        "*fake_found * FOUND * planted score 1.05 [[]*]; top: L1H0 +1.05*",
        "*fake_missing * NOT FOUND * absent score 0 [[]*]*",
        "*fake_na * N/A * the tokenizer has no single-token names*",
        "*fake_error * ERROR * RuntimeError: detector exploded*",
        "*fake_type * ERROR * returned float, not a Detection*",
        "*not checked x1: not applicable: the tokenizer has no single-token names*",
    ])
    assert "test_other" not in r.stdout.str()
    data = json.loads((out / "r.json").read_text())
    cards = {c["check"]: c for c in data["checkup"]}
    assert {c: cards[c]["status"] for c in cards} == {"fake_found": "found", "fake_missing": "not found",
                                                      "fake_na": "n/a", "fake_error": "error",
                                                      "fake_type": "error"}
    assert cards["fake_found"]["heatmaps"]["score"][-1][0] == pytest.approx(1.05)
    assert cards["fake_found"]["outcome"] == "passed" and cards["fake_na"]["outcome"] == "skipped"
    # Only the headline measurement is recorded for the claim, never the detector's intermediates.
    recs = {r["claim"]: r for r in data["records"]}
    assert [m["name"] for m in recs["checkup::test_fake_found"]["measurements"]] == ["planted score"]
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(resources.files("pytest_circuits").joinpath("data/report.schema.json").read_text())
    jsonschema.validate(data, schema)
    md = (out / "r.md").read_text()
    assert "## Mechanism card: `ckpt`" in md and "| **n/a** |" in md and "| **not found** |" in md
    page = (out / "r.html").read_text()
    assert "Mechanism card" in page and page.count("class=heatmap") == 1 and "data:image/png;base64," in page


def test_explicit_paths_run_beside_the_checkup(fake, tiny_dir, tmp_path):
    fake.makepyfile(test_other="def test_other():\n    assert True\n")
    r = _run(fake, tiny_dir, tmp_path, "test_other.py", "--circuits-checkup", "--circuits-checks=fake_found")
    r.assert_outcomes(passed=2)


def test_unknown_check_is_a_usage_error(fake, tiny_dir, tmp_path):
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=induction,inductoin")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--circuits-checks*inductoin*'all' or a comma list of*"])


def test_checks_without_the_checkup_is_a_usage_error(fake, tiny_dir, tmp_path):
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checks=induction")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--circuits-checks selects the checkup's checks; add --circuits-checkup*"])


def test_checkup_baselines_gate_a_checkpoint(fake, tiny_dir, tmp_path):
    bdir = tmp_path / "baselines"
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_found",
             f"--circuits-baseline-dir={bdir}")
    r.assert_outcomes(failed=1)        # a new baseline is written and the claim says so
    data = json.loads((bdir / "ckpt.json").read_text())
    assert list(data["claims"]) == ["checkup::test_fake_found"]
    assert list(data["claims"]["checkup::test_fake_found"]) == ["planted score"]
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_found",
             f"--circuits-baseline-dir={bdir}")
    r.assert_outcomes(passed=1)
    entry = data["claims"]["checkup::test_fake_found"]["planted score"]
    for f in ("mean", "lower", "upper"):
        entry[f] += 1.0
    (bdir / "ckpt.json").write_text(json.dumps(data))
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_found",
             f"--circuits-baseline-dir={bdir}")
    r.assert_outcomes(failed=1)        # found, but drifted from the released checkpoint's baseline
    r.stdout.fnmatch_lines(["*drifted*", "*fake_found * FOUND * (baseline 2.05, drift -1 OUTSIDE)*"])


def test_register_refuses_bad_checks(monkeypatch):
    monkeypatch.setattr(checkup, "CHECKS", dict(checkup.CHECKS))
    from pytest_circuits.errors import CircuitsError

    with pytest.raises(CircuitsError, match="an identifier"):
        checkup.register(checkup.Check("not a name", "t", "s", "f", lambda m: None))
    with pytest.raises(CircuitsError, match="a built-in check"):
        checkup.register(checkup.Check("induction", "mine", "s", "f", lambda m: None))
    with pytest.raises(CircuitsError, match="a pytest_circuits.checkup.Check"):
        checkup.register("induction")
    assert checkup.select("all") == list(checkup.CHECKS)
    assert checkup.select("ioi, induction") == ["induction", "ioi"]
    with pytest.raises(CircuitsError):
        checkup.select(",")


PLANTED = Path(__file__).resolve().parents[1] / "data" / "planted"


def test_checkup_on_planted_models_finds_each_mechanism_only_where_planted(pytester, tmp_path):
    """The whole checkup path (collection, detectors, card) on the planted models: each mechanism
    is found on the model built or trained to have it, and on nothing else; controls show nothing;
    checks a tokenizer cannot run are not applicable, never passed."""
    models = ["induction", "induction_control", "ordinal", "ordinal_control", "ioi", "ioi_control"]
    r = pytester.runpytest("--circuits-checkup", "--circuits-checks=induction,ioi,successor,copy_suppression",
                           *[f"--circuits-model={PLANTED / m}" for m in models], "--circuits-no-cache",
                           f"--circuits-report={tmp_path / 'r.json'}", "-p", "no:cacheprovider")
    status = {(c["model"], c["check"]): c["status"] for c in json.loads((tmp_path / "r.json").read_text())["checkup"]}
    # ordinal's L1H1 (OV = -identity, uniform attention, nothing predicting a repeated token) is not
    # copy suppression by its definition: the decoy zoo tests that check (tests/unit/test_zoo.py).
    planted = {("induction", "induction"), ("ordinal", "successor"), ("ioi", "ioi")}
    for m in models:
        for check in ("induction", "ioi", "successor", "copy_suppression"):
            want = "found" if (m, check) in planted else "not found"
            if check == "ioi" and m not in ("ioi", "ioi_control"):
                want = "n/a"        # word-level vocabularies with 2 of the candidate names
            if check == "successor" and m not in ("ordinal", "ordinal_control"):
                want = "n/a"        # 8 digit pairs in one sequence
            assert status[(m, check)] == want, (m, check, status[(m, check)])
    r.assert_outcomes(passed=3, failed=13, skipped=8)
