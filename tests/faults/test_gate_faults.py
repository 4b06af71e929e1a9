"""Fault injection on the release gate: a run must never be green on nothing.

Each test plants one fault a user could make (a typo, a missing model, a crash under
``expect_change``, a measurement made in a fixture, two measurements with one name) and
checks the outcome is a clear failure or an honest "not checked", never a silent pass.
"""

from __future__ import annotations

import json
import textwrap

import pytest


def _args(tmp_path) -> list[str]:
    return [f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider"]


def test_missing_model_fails_under_require_models_unless_declared_optional(pytester, tiny_dir, tmp_path):
    # A folder that is there but holds no checkpoint: only its load can tell (a name that is nowhere
    # is refused at collection: tests/faults/test_start_faults.py).
    broken = tmp_path / "broken-ckpt"
    broken.mkdir()
    pytester.makepyfile(test_m=f"""
        import pytest

        @pytest.mark.claim(finding="f")
        @pytest.mark.model({str(tiny_dir)!r}, {str(broken)!r})
        def test_required(model):
            assert model.cfg.n_layers == 2

        @pytest.mark.claim(finding="g")
        @pytest.mark.model("no-such-model-xyz", optional="weights not available offline")
        def test_optional(model):
            assert False, "never runs"
    """)
    r = pytester.runpytest(*_args(tmp_path), "--circuits-require-models", "-rs")
    # The required model that cannot load fails; the optional one is reported as not checked, not passed.
    r.assert_outcomes(passed=1, errors=1, skipped=1)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(["claims: 2 checked (1 passed, 1 error), 1 not checked",
                            "  not checked x1: model 'no-such-model-xyz' is optional here (weights not "
                            "available offline)*"])
    # Without --circuits-require-models every missing model is skipped, and counted.
    r = pytester.runpytest(*_args(tmp_path))
    r.assert_outcomes(passed=1, skipped=2)
    r.stdout.fnmatch_lines(["claims: 1 checked (1 passed), 2 not checked"])


def test_optional_does_not_cover_a_model_named_on_the_command_line(pytester, tiny_dir, tmp_path):
    empty = tmp_path / "empty-ckpt"
    empty.mkdir()
    pytester.makepyfile(test_m="""
        import pytest

        @pytest.mark.model("gpt2", optional="weights not available offline")
        def test_optional(model):
            pass
    """)
    r = pytester.runpytest(*_args(tmp_path), f"--circuits-model={empty}", "--circuits-require-models")
    r.assert_outcomes(errors=1)


def test_expect_change_counts_only_the_claims_assertion(pytester, tiny_dir, tmp_path):
    pytester.makepyfile(test_x="""
        import pytest
        from pytest_circuits import MeasurementError, Measurement

        @pytest.mark.expect_change("ckpt", reason="the finding is gone on this checkpoint")
        def test_assertion_fails(model):
            Measurement.from_values("x", [0.0, 0.1, -0.1], model="ckpt").assert_above(1.0)

        @pytest.mark.expect_change("ckpt", reason="a crash is not a changed finding")
        def test_crashes(model):
            raise MeasurementError("values=[] is not valid")

        @pytest.mark.expect_change("ckpt", reason="a type error is not a changed finding")
        def test_bug(model):
            None.mean

        @pytest.mark.xfail(reason="plain xfail")
        def test_plain_xfail(model):
            assert False
    """)
    report = tmp_path / "r.json"
    r = pytester.runpytest(*_args(tmp_path), f"--circuits-model={tiny_dir}", "-rfxX",
                           f"--circuits-report={report}")
    r.assert_outcomes(xfailed=2, failed=2)
    out = r.stdout.str()
    assert "FAILED test_x.py::test_crashes[ckpt]" in out and "FAILED test_x.py::test_bug[ckpt]" in out
    r.stdout.fnmatch_lines(["claims: 4 checked (2 failed, 1 expected change, 1 xfailed), 0 not checked"])
    recs = {x["nodeid"].split("::")[1].split("[")[0]: x for x in json.loads(report.read_text())["records"]}
    assert recs["test_assertion_fails"]["expected_change"].startswith("expected change on ckpt")
    from pytest_circuits import report as R
    from pytest_circuits.ledger import LedgerRecord

    assert R._verdict(LedgerRecord.read(recs["test_assertion_fails"])) == "XFAIL (expected change)"
    assert R._verdict(LedgerRecord.read({"outcome": "xfailed", "expected_change": None})) == "XFAIL"


def test_measurements_made_in_fixtures_are_recorded_for_each_claim(pytester, tiny_dir, tmp_path):
    pytester.makeconftest("""
        import pytest
        from pytest_circuits import Measurement

        @pytest.fixture(scope="session")
        def shared(model):
            return Measurement.from_values("made_in_session_fixture", [1.0, 2.0, 3.0, 2.5, 1.5], model="ckpt")

        @pytest.fixture
        def local(shared):
            return Measurement.from_values("made_in_function_fixture", [4.0, 5.0, 4.5, 5.5], model="ckpt")
    """)
    pytester.makepyfile(test_f="""
        import pytest

        @pytest.mark.claim(finding="one")
        def test_one(model, local):
            local.assert_above(0)

        @pytest.mark.claim(finding="two")
        def test_two(model, shared):
            shared.assert_above(0)
    """)
    report = tmp_path / "r.json"
    r = pytester.runpytest(*_args(tmp_path), f"--circuits-model={tiny_dir}", f"--circuits-report={report}")
    r.assert_outcomes(passed=2)
    recs = {x["nodeid"].split("::")[1].split("[")[0]: x for x in json.loads(report.read_text())["records"]}
    assert [m["name"] for m in recs["test_one"]["measurements"]] == ["made_in_session_fixture",
                                                                     "made_in_function_fixture"]
    assert [m["name"] for m in recs["test_two"]["measurements"]] == ["made_in_session_fixture"]


def test_two_different_measurements_with_one_name_fail_the_claim(pytester, tiny_dir, tmp_path):
    pytester.makepyfile(test_d="""
        import pytest
        from pytest_circuits import Measurement

        @pytest.mark.claim(finding="names clash")
        def test_clash(model):
            a = Measurement.from_values("score", [1.0, 2.0, 1.5, 1.2], model="ckpt")
            b = Measurement.from_values("score", [3.0, 4.0, 3.5, 3.2], model="ckpt")
            a.assert_above(0)

        @pytest.mark.claim(finding="the same measurement twice is one measurement")
        def test_same_twice(model):
            a = Measurement.from_values("score", [1.0, 2.0, 1.5, 1.2], model="ckpt")
            b = Measurement.from_values("score", [1.0, 2.0, 1.5, 1.2], model="ckpt")
            a.assert_above(0)
    """)
    r = pytester.runpytest(*_args(tmp_path), f"--circuits-model={tiny_dir}")
    r.assert_outcomes(passed=1, failed=1)
    r.stdout.fnmatch_lines(["*test_clash* made different measurements with the same name: 'score'*"])


def test_familywise_bonferroni_widens_every_interval(pytester, tiny_dir, tmp_path):
    pytester.makepyfile(test_fw=textwrap.dedent("""
        import pytest
        from pytest_circuits import Measurement

        VALUES = [0.3, 0.5, 0.1, 0.9, 0.4, 0.7, 0.2, 0.6, 0.8, 0.35]

        @pytest.mark.parametrize("i", range(4))
        @pytest.mark.claim(finding="f")
        def test_level(model, i):
            m = Measurement.from_values(f"m{i}", VALUES, model="ckpt")
            m.assert_above(-1.0)
    """))
    report = tmp_path / "r.json"
    plain = pytester.runpytest(*_args(tmp_path), f"--circuits-model={tiny_dir}", f"--circuits-report={report}")
    plain.assert_outcomes(passed=4)
    m0 = json.loads(report.read_text())["records"][0]["measurements"][0]
    r = pytester.runpytest(*_args(tmp_path), f"--circuits-model={tiny_dir}", "--circuits-familywise=bonferroni",
                           f"--circuits-report={report}")
    r.assert_outcomes(passed=4)
    m1 = json.loads(report.read_text())["records"][0]["measurements"][0]
    assert m0["level"] == pytest.approx(0.95)
    assert m1["level"] == pytest.approx(1 - 0.05 / 4)
    assert m1["lower"] < m0["lower"] and m1["upper"] > m0["upper"]
    r.stdout.fnmatch_lines(["measurements: 4 at level 0.9875; bounds asserted with assert_above/below/within: "
                            "4 at level 0.9875; family-wise (bonferroni) over 4 claims*"])


def test_inner_run_gives_the_default_store_back(pytester, tiny_dir, tmp_path):
    from pytest_circuits.store import current

    before = current()
    pytester.makepyfile(test_s="""
        from pytest_circuits import store

        def test_s(model, activations):
            assert store.current() is activations     # the session's store, during the run
    """)
    pytester.runpytest(*_args(tmp_path), f"--circuits-model={tiny_dir}").assert_outcomes(passed=1)
    assert current() is before


def test_nan_weights_never_pass_a_negative_top1_claim(pytester, tmp_path):
    """A NaN weight made argmax return a confident 0, so "the answer is rarely top-1" passed."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from pytest_circuits.testing import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path / "nan-ckpt", seed=0)
    weights = load_file(str(path / "model.safetensors"))
    dog = AutoTokenizer.from_pretrained(str(path)).convert_tokens_to_ids("dog")
    weights["model.embed_tokens.weight"][dog] = float("nan")
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    pytester.makepyfile(test_n="""
        import pytest
        from pytest_circuits import PromptSet, metrics

        @pytest.mark.claim(finding="the model rarely puts the answer on top")
        def test_rarely_top1(model, activations):
            ps = PromptSet.build(model, ["the dog sat on the", "a dog went to the", "the dog was"],
                                 answers=[" mat", " store", " king"])
            metrics.top1(model, ps, activations=activations).assert_below(0.9)
    """)
    r = pytester.runpytest(*_args(tmp_path), f"--circuits-model={path}", "--circuits-require-models")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*MeasurementError: top1 on *: the last-position logits are not finite*"])


def test_a_failures_reason_is_what_was_measured_against_which_bound(pytester, tiny_dir, tmp_path):
    """Main gave `.../measurement.py:325: AssertionError` (the last line of the traceback) as the
    reason of 10 of 12 failures in the release report; the reviewer needs the measured interval,
    n and the bound."""
    pytester.makepyfile(test_r="""
        import pytest
        from pytest_circuits import Measurement

        VALUES = [0.70, 0.75, 0.72, 0.74, 0.73, 0.71]

        @pytest.mark.claim(finding="a share above 0.8")
        def test_bound(model):
            Measurement.from_values("share", VALUES, model="ckpt").assert_above(0.8)

        @pytest.mark.claim(finding="a plain assert with a message")
        def test_plain(model):
            m = Measurement.from_values("loss", VALUES, model="ckpt")
            assert m.upper < 0, "the loss is never negative"

        @pytest.mark.claim(finding="catches its own failed bound")
        def test_caught(model):
            m = Measurement.from_values("share", VALUES, model="ckpt")
            try:
                m.assert_below(0.5)
            except AssertionError:
                pass

        @pytest.mark.claim(finding="turns its own failed bound into a skip")
        def test_caught_and_skipped(model):
            m = Measurement.from_values("share", VALUES, model="ckpt")
            try:
                m.assert_below(0.6)
            except AssertionError:
                pytest.skip("not checked: the share moved")
    """)
    report = tmp_path / "r.json"
    r = pytester.runpytest(*_args(tmp_path), f"--circuits-model={tiny_dir}", f"--circuits-report={report}")
    r.assert_outcomes(failed=4)
    data = json.loads(report.read_text())
    reasons = {c["nodeid"].split("::")[1].split("[")[0]: c["reason"] for c in data["claims"]}
    assert reasons["test_bound"].startswith("share[ckpt] = 0.725 [") and "n=6 (95% interval) -- expected lower " \
        "bound > 0.8" in reasons["test_bound"]
    assert reasons["test_plain"].startswith("the loss is never negative")
    # a failed bound the claim caught still fails it, with the bound in the reason
    assert "expected upper bound < 0.5" in reasons["test_caught"]
    assert "expected upper bound < 0.6" in reasons["test_caught_and_skipped"]
    r.stdout.fnmatch_lines(["*interval assertion of this claim failed although the claim caught the "
                            "AssertionError*"])
    assert not any(".py:" in x for x in reasons.values()), reasons
    recs = {x["nodeid"].split("::")[1].split("[")[0]: x for x in data["records"]}
    (a,) = recs["test_bound"]["assertions"]
    m = recs["test_bound"]["measurements"][0]
    assert (a["kind"], a["threshold"], a["bound"], a["passed"]) == ("above", 0.8, m["lower"], False)
    assert a["message"] == reasons["test_bound"] and m["sem"] > 0
    from pytest_circuits import report as R
    from pytest_circuits._markup import md_cell

    assert md_cell(reasons["test_bound"]) in R.markdown(data)   # as written, Markdown-escaped
