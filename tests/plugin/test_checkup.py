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
    import os

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

    def unsure(model):
        m = Measurement.from_values("borderline score", [0.2, 0.9, 0.5, 0.7])
        return Detection("fake_undecided", "A borderline thing", source="test", model="m", found=False,
                         undecided=True, reason="borderline score straddles 0.5",
                         criterion="lower bound > 0.5", measurements=(m,))

    def flips(model):
        m = Measurement.from_values("flip score", [1.0, 1.2, 1.1, 0.9])
        here = os.environ.get("FAKE_FLIP", "found") == "found"
        return Detection("fake_flip", "A thing that may vanish", source="test", model="m", found=here,
                         criterion="set by FAKE_FLIP", measurements=(m,))

    def sometimes_na(model):
        if os.environ.get("FAKE_FLIP", "found") == "n/a":
            return Detection.not_applicable("fake_sometimes", "Sometimes", "the tokenizer lost its names")
        m = Measurement.from_values("sometimes score", [1.0, 1.2, 1.1, 0.9])
        return Detection("fake_sometimes", "Sometimes", found=True, criterion="c", measurements=(m,))

    def na(model):
        return Detection.not_applicable("fake_na", "Needs names", "the tokenizer has no single-token names",
                                        source="test")

    def broken(model):
        raise RuntimeError("detector exploded")

    def wrong_type(model):
        return 0.5

    for name, fn in [("fake_found", found), ("fake_missing", missing), ("fake_na", na),
                     ("fake_error", broken), ("fake_type", wrong_type), ("fake_undecided", unsure),
                     ("fake_flip", flips), ("fake_sometimes", sometimes_na)]:
        checkup.register(checkup.Check(name, name.replace("_", " "), "test", f"{name} finding", fn))
""")

FAKE = "fake_found,fake_missing,fake_na,fake_error,fake_type,fake_undecided"


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
    # No paths given: only the checkup runs (test_other.py is not collected). Found and absent are
    # verdicts (passed); not applicable is skipped; a detector that raises, returns something else
    # or cannot decide fails the run.
    r.assert_outcomes(passed=2, failed=3, skipped=1)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines([
        "*mechanism card: ckpt*",
        "*fake_found * FOUND * planted score 1.05 [[]*] bt; top: L1H0 +1.05*",
        "*fake_missing * ABSENT * absent score 0 [[]*]*",
        "*fake_na * N/A * the tokenizer has no single-token names*",
        "*fake_error * ERROR * RuntimeError: detector exploded*",
        "*fake_type * ERROR * returned float, not a Detection*",
        "*fake_undecided * UNDECIDED * borderline score 0.575 [[]*] bt; could not decide: borderline score straddles 0.5*",
        "*intervals (95%): bt = bootstrap-t united with the t-interval (a continuous quantity)*",
        "*not checked x1: not applicable: the tokenizer has no single-token names*",
    ])
    assert "A borderline thing on ckpt: the check could not decide: borderline score straddles 0.5" in r.stdout.str()
    assert "test_other" not in r.stdout.str()
    data = json.loads((out / "r.json").read_text())
    cards = {c["check"]: c for c in data["checkup"]}
    assert {c: cards[c]["status"] for c in cards} == {"fake_found": "found", "fake_missing": "absent",
                                                      "fake_na": "n/a", "fake_error": "error",
                                                      "fake_type": "error", "fake_undecided": "undecided"}
    assert cards["fake_found"]["heatmaps"]["score"][-1][0] == pytest.approx(1.05)
    assert cards["fake_found"]["outcome"] == "passed" and cards["fake_na"]["outcome"] == "skipped"
    assert cards["fake_missing"]["outcome"] == "passed" and cards["fake_undecided"]["outcome"] == "failed"
    assert cards["fake_found"]["intervals"] == {"planted score": "bt", checkup.VERDICT: "none"}
    # Only the headline measurements and the verdict are recorded for the claim, never the
    # detector's intermediates.
    recs = {r["claim"]: r for r in data["records"]}
    assert [m["name"] for m in recs["checkup::test_fake_found"]["measurements"]] == ["planted score",
                                                                                      checkup.VERDICT]
    assert [m["mean"] for m in recs["checkup::test_fake_missing"]["measurements"]][-1] == 0.0
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(resources.files("pytest_circuits").joinpath("data/report.schema.json").read_text())
    jsonschema.validate(data, schema)
    md = (out / "r.md").read_text()
    assert "## Mechanism card: `ckpt`" in md and "| **n/a** |" in md and "| **absent** |" in md
    assert "| **undecided** |" in md and "bt = bootstrap-t" in md
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
    assert list(data["claims"]["checkup::test_fake_found"]) == ["planted score", checkup.VERDICT]
    assert data["claims"]["checkup::test_fake_found"][checkup.VERDICT]["mean"] == 1.0
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
    r.stdout.fnmatch_lines(["*drifted*", "*fake_found * FOUND (baseline FOUND) * (baseline 2.05, drift -1 OUTSIDE)*"])


def test_a_verdict_that_changes_fails_the_gate(fake, tiny_dir, tmp_path, monkeypatch):
    """Without a baseline, found and absent both pass; against a baseline, a mechanism that vanished
    (or appeared) fails, even when every headline measurement is within tolerance."""
    bdir = tmp_path / "baselines"
    run = lambda: _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_flip",  # noqa: E731
                       f"--circuits-baseline-dir={bdir}")
    for verdict in ("found", "absent"):
        monkeypatch.setenv("FAKE_FLIP", verdict)
        _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_flip").assert_outcomes(passed=1)
    monkeypatch.setenv("FAKE_FLIP", "found")
    run().assert_outcomes(failed=1)                       # the baseline is written
    run().assert_outcomes(passed=1)
    monkeypatch.setenv("FAKE_FLIP", "absent")
    r = run()
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*A thing that may vanish vanished on ckpt: FOUND in the baseline (*ckpt.json), "
                            "ABSENT here*",
                            "*fake_flip * ABSENT (baseline FOUND: CHANGED) flip score 1.05*"])
    # The same check against the baseline of a model where it was absent: it appeared.
    _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_flip",
         f"--circuits-baseline-dir={bdir}", "--circuits-update-baselines").assert_outcomes(passed=1)
    monkeypatch.setenv("FAKE_FLIP", "found")
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_flip",
             f"--circuits-baseline-dir={bdir}", "--circuits-baseline-of=ckpt")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*A thing that may vanish appeared on ckpt: ABSENT in the baseline*FOUND here*"])


def test_not_applicable_where_the_baseline_measured_fails_the_gate(fake, tiny_dir, tmp_path, monkeypatch):
    bdir = tmp_path / "baselines"
    args = ("--circuits-checkup", "--circuits-checks=fake_sometimes", f"--circuits-baseline-dir={bdir}")
    _run(fake, tiny_dir, tmp_path, *args, "--circuits-update-baselines").assert_outcomes(passed=1)
    monkeypatch.setenv("FAKE_FLIP", "n/a")
    r = _run(fake, tiny_dir, tmp_path, *args)
    r.assert_outcomes(failed=1)
    assert "not applicable on ckpt (the tokenizer lost its names), but the baseline it is compared with" in r.stdout.str()
    # Without baselines it is a skip, with the reason.
    _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_sometimes").assert_outcomes(skipped=1)


def test_expected_verdicts_gate_without_a_baseline(fake, tiny_dir, tmp_path):
    """``--circuits-checks name:found`` / ``name:absent`` (or the ini option): a check whose verdict is
    not the one expected fails; a check without an expectation passes on either verdict."""
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup",
             "--circuits-checks=fake_found:found,fake_missing:absent,fake_na")
    r.assert_outcomes(passed=2, skipped=1)
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_found:absent,fake_missing")
    r.assert_outcomes(passed=1, failed=1)
    assert "A planted thing was expected ABSENT on ckpt (--circuits-checks), and is FOUND" in r.stdout.str()
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_na:found")
    r.assert_outcomes(failed=1)
    assert "expected FOUND on ckpt (--circuits-checks), but the check is not applicable there" in r.stdout.str()
    fake.makeini("[pytest]\ncircuits_checks = fake_missing:found\n")
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup")
    r.assert_outcomes(failed=1)
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_found:maybe")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*fake_found:maybe*each optionally :found or :absent*"])


def test_two_checkpoints_with_one_folder_name_keep_distinct_labels(fake, tiny_dir, tiny_dir_b, tmp_path):
    """``released/ckpt`` and ``candidate/ckpt`` (other weights) in one run: distinct node ids, card
    blocks, ledger records and baseline files (the shortest path suffix that tells them apart),
    while a checkpoint alone keeps its folder's base name."""
    import shutil

    released = tmp_path / "released" / "ckpt"
    candidate = tmp_path / "candidate" / "ckpt"
    shutil.copytree(tiny_dir, released)
    shutil.copytree(tiny_dir_b, candidate)
    out, bdir = tmp_path / "out", tmp_path / "baselines"
    r = fake.runpytest("--circuits-checkup", "--circuits-checks=fake_found,fake_missing",
                       f"--circuits-model={released}", f"--circuits-model={candidate}",
                       f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider",
                       f"--circuits-report={out}/r.json", f"--circuits-baseline-dir={bdir}")
    r.assert_outcomes(failed=4)            # new baselines, written
    r.stdout.fnmatch_lines(["*mechanism card: released/ckpt*", "*mechanism card: candidate/ckpt*"])
    assert "test_fake_found[released/ckpt]" in r.stdout.str() and "test_fake_found[candidate/ckpt]" in r.stdout.str()
    data = json.loads((out / "r.json").read_text())
    assert sorted({c["model"] for c in data["checkup"]}) == ["candidate/ckpt", "released/ckpt"]
    assert sorted({rec["model"] for rec in data["records"]}) == ["candidate/ckpt", "released/ckpt"]
    assert sorted({c["model"] for c in data["claims"]}) == ["candidate/ckpt", "released/ckpt"]
    assert sorted(p.name for p in bdir.glob("*.json")) == ["candidate_ckpt.json", "released_ckpt.json"]
    # Alone, the released checkpoint is "ckpt" as before (its existing baselines keep their name).
    r = fake.runpytest("--circuits-checkup", "--circuits-checks=fake_found", f"--circuits-model={released}",
                       f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*mechanism card: ckpt"])


def test_distinct_labels(tmp_path):
    from pytest_circuits import models as M

    for p in ("a/x/ckpt", "b/x/ckpt", "c/ckpt", "solo"):
        (tmp_path / p).mkdir(parents=True)
    got = M.distinct_labels([str(tmp_path / p) for p in ("a/x/ckpt", "b/x/ckpt", "c/ckpt", "solo")]
                            + ["smollm2-135m", str(tmp_path / "solo")])
    assert sorted(got.values()) == ["a/x/ckpt", "b/x/ckpt", "c/ckpt", "solo"]
    previous = M.push_run_labels([str(tmp_path / "a/x/ckpt"), str(tmp_path / "c/ckpt")])
    try:
        assert M.run_label(str(tmp_path / "a/x/ckpt")) == "x/ckpt"
        assert M.run_label(str(tmp_path / "c/ckpt")) == "c/ckpt"
        assert M.run_label(str(tmp_path / "solo")) == "solo"          # not one of the run's: its base name
        assert M.run_label("smollm2-135m") == "smollm2-135m"
    finally:
        M.pop_run_labels(previous)
    assert M.run_label(str(tmp_path / "c/ckpt")) == "ckpt"              # outside a run: the base name


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
    assert checkup.parse("successor:absent,all,ioi:found") == {
        n: {"successor": "absent", "ioi": "found"}.get(n) for n in checkup.CHECKS}
    with pytest.raises(CircuitsError):
        checkup.select(",")
    with pytest.raises(CircuitsError, match="ioi:present"):
        checkup.parse("ioi:present")


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
    # Copy suppression is tested where the model predicts a repeated token. Only the induction model
    # does (absent: no suppressor); in induction_control, ordinal and ioi nothing does, and a head's
    # OV circuit could suppress tokens (ordinal's L1H1 is -identity): the model lacks the in-context
    # predictions the check measures on, n/a. In ordinal_control and ioi_control no head's OV
    # circuit can: absent. The decoy zoo tests the check itself (tests/unit/test_zoo.py).
    planted = {("induction", "induction"), ("ordinal", "successor"), ("ioi", "ioi")}
    lacking = {("induction_control", "copy_suppression"), ("ordinal", "copy_suppression"),
               ("ioi", "copy_suppression")}
    for m in models:
        for check in ("induction", "ioi", "successor", "copy_suppression"):
            want = "found" if (m, check) in planted else "n/a" if (m, check) in lacking else "absent"
            if check == "ioi" and m not in ("ioi", "ioi_control"):
                want = "n/a"        # word-level vocabularies with 2 of the candidate names
            if check == "successor" and m not in ("ordinal", "ordinal_control"):
                want = "n/a"        # 8 digit pairs in one sequence
            assert status[(m, check)] == want, (m, check, status[(m, check)])
    # Found and absent are both verdicts and pass; n/a is shown (skipped with its reason), never passed.
    r.assert_outcomes(passed=13, skipped=11)
    assert r.ret == pytest.ExitCode.OK
    r.stdout.fnmatch_lines(["*not applicable: the model makes too few in-context predictions*"])


def test_checks_registered_after_the_module_was_imported_become_claims(fake, tiny_dir, tmp_path, monkeypatch):
    """The checkup's module is imported once per process; a run that comes later (in-process, or
    after a conftest registered a check) still gets one claim per check registered now, and none
    for a check registered no more. Fails if the claims are made only at import (a random test
    order once imported the module before this file ran)."""
    import importlib

    module = importlib.import_module("pytest_circuits.checkup_claims")   # imported before the run
    if hasattr(module, "test_fake_found"):      # left by an earlier run in this process
        monkeypatch.delattr(module, "test_fake_found")   # as imported before this run's checks existed
    r = _run(fake, tiny_dir, tmp_path, "--circuits-checkup", "--circuits-checks=fake_found")
    r.assert_outcomes(passed=1)
    checkup.CHECKS.pop("fake_found")
    module.sync()
    assert not hasattr(module, "test_fake_found") and hasattr(module, "test_induction")
