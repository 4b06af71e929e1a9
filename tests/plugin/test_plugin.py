"""Plugin behaviour through pytester: options, markers, parametrization, skips, summary."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CLAIM = textwrap.dedent("""
    import pytest
    from pytest_circuits import PromptSet, metrics

    @pytest.mark.claim(source="test", finding="the tiny model has a finite loss")
    def test_loss(model, activations):
        ps = PromptSet.build(model, ["the cat sat on the mat", "the dog sat"])
        m = metrics.loss(model, ps, activations=activations)
        assert m.upper < THRESHOLD
""")


def _claim(pytester: pytest.Pytester, threshold: float = 1e9, name: str = "test_claim.py") -> None:
    pytester.makepyfile(**{name[:-3]: CLAIM.replace("THRESHOLD", repr(threshold))})


def _args(tiny_dir, cache) -> list[str]:
    return [f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={cache}", "-p", "no:cacheprovider"]


def test_help_lists_options(pytester: pytest.Pytester):
    out = pytester.runpytest("--help").stdout.str()
    assert "pytest-circuits" in out
    for opt in ("--circuits-model", "--circuits-device", "--circuits-dtype", "--circuits-cache-dir",
                "--circuits-no-cache", "--circuits-clear-cache", "--circuits-seed"):
        assert opt in out
    for ini in ("circuits_model", "circuits_device", "circuits_cache_dir"):
        assert ini in out


def test_markers_registered_and_strict_clean(pytester: pytest.Pytester):
    assert "@pytest.mark.claim(" in pytester.runpytest("--markers").stdout.str()
    pytester.makepyfile("""
        import pytest
        @pytest.mark.claim(source="s", finding="f")
        @pytest.mark.model("whatever")
        def test_plain():
            pass
    """)
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)


def test_claim_runs_on_tiny_model_and_summarises(pytester, tiny_dir, tmp_path):
    _claim(pytester)
    r = pytester.runpytest(*_args(tiny_dir, tmp_path), "-v")
    r.assert_outcomes(passed=1)
    out = r.stdout.str()
    assert f"test_loss[{tiny_dir.name}] PASSED" in out
    r.stdout.fnmatch_lines(["*= circuits =*", "PASSED *test_loss*", "*finding: the tiny model has a finite loss",
                            "*loss[[]ckpt[]] = * [[]*, *[]] n=2 (95%)", "activations: 1 forward passes (2 prompts), 0 hits "
                            "from memory, 0 from disk, 1 computed", "model *: loaded in *"])
    # Second run, same cache dir: served from disk, no forward pass.
    r2 = pytester.runpytest(*_args(tiny_dir, tmp_path))
    r2.assert_outcomes(passed=1)
    r2.stdout.fnmatch_lines(["activations: 0 forward passes (0 prompts), 0 hits from memory, 1 from disk, 0 computed"])
    # --circuits-no-cache: memory only
    r3 = pytester.runpytest(*_args(tiny_dir, tmp_path), "--circuits-no-cache")
    r3.stdout.fnmatch_lines(["activations: 1 forward passes*"])
    # --circuits-clear-cache wipes the activations first
    r4 = pytester.runpytest(*_args(tiny_dir, tmp_path), "--circuits-clear-cache")
    r4.stdout.fnmatch_lines(["activations: 1 forward passes*"])


def test_failing_claim_prints_measurement(pytester, tiny_dir, tmp_path):
    _claim(pytester, threshold=0.0)
    r = pytester.runpytest(*_args(tiny_dir, tmp_path))
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*assert * < 0.0*", "*where * = loss[[]ckpt[]] = * [[]*, *[]] n=2.upper*",
                            "*circuits measurements*", "loss[[]ckpt[]] = * n=2"])


def test_unknown_model_on_the_command_line_is_a_usage_error(pytester, tmp_path):
    """A typo in --circuits-model stops the run at once (exit 4), never a green run of skips."""
    _claim(pytester)
    for name, why in [("no-such-model-xyz", "not in the local Hugging Face cache"),
                      (str(tmp_path / "no" / "such-dir"), "no such checkpoint directory")]:
        r = pytester.runpytest(f"--circuits-model={name}", f"--circuits-cache-dir={tmp_path}")
        assert r.ret == pytest.ExitCode.USAGE_ERROR
        r.stderr.fnmatch_lines([f"*--circuits-model=*is not valid*{why}*"])


def test_missing_checkpoint_dir_is_explained(pytester, tmp_path):
    _claim(pytester)
    empty = tmp_path / "ckpt"
    empty.mkdir()
    r = pytester.runpytest(f"--circuits-model={empty}", f"--circuits-cache-dir={tmp_path}", "-rs")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["claims: 0 checked (none), 1 not checked",
                            "  not checked x1: model * unavailable*a checkpoint directory with config.json*"])
    r = pytester.runpytest(f"--circuits-model={empty}", f"--circuits-cache-dir={tmp_path}",
                           "--circuits-require-models")
    r.assert_outcomes(errors=1)


def test_marker_chooses_model_and_cli_overrides(pytester, tiny_dir, tmp_path):
    pytester.makepyfile(f"""
        import pytest
        pytestmark = pytest.mark.model({str(tiny_dir)!r}, "no-such-model-xyz", optional="not on this machine")
        def test_m(model):
            assert model.cfg.n_layers == 2
    """)
    r = pytester.runpytest(f"--circuits-cache-dir={tmp_path}", "-v")
    r.assert_outcomes(passed=1, skipped=1)
    r.stdout.fnmatch_lines([f"*test_m[[]{tiny_dir.name}[]] PASSED*", "*test_m[[]no-such-model-xyz[]] SKIPPED*"])
    r = pytester.runpytest(*_args(tiny_dir, tmp_path), "-v")
    r.assert_outcomes(passed=1)


def test_ini_options(pytester, tiny_dir, tmp_path):
    _claim(pytester)
    pytester.makeini(f"""
        [pytest]
        circuits_model = {tiny_dir}
        circuits_cache_dir = {tmp_path}
        circuits_no_cache = true
    """)
    r = pytester.runpytest("-v")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines([f"*test_loss[[]{tiny_dir.name}[]] PASSED*", "activations: 1 forward passes*",
                            # one clean forward: every block at every position, no intervention
                            "compute: * block x position passes (0% under interventions; 0 forwards resumed*"
                            "floor *"])
    assert not (tmp_path / "activations").exists()


def test_bad_claim_marker_is_a_usage_error(pytester):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.claim("positional")
        def test_x():
            pass
    """)
    r = pytester.runpytest()
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*use @pytest.mark.claim(finding=..., source=...) with keywords*"])


def test_bad_option_values(pytester, tiny_dir, tmp_path):
    _claim(pytester)
    """Every bad option value is a usage error (exit 4) when pytest configures, before any claim."""
    _claim(pytester)
    cases = [("--circuits-dtype=float7", "--circuits-dtype='float7' is not valid: one of float32"),
             ("--circuits-device=tpu", "--circuits-device='tpu' is not valid: auto, cpu, mps, cuda"),
             ("--circuits-batch-size=0", "--circuits-batch-size=0 is not valid"),
             ("--circuits-batch-size=many", "--circuits-batch-size='many' is not valid: an integer"),
             ("--circuits-token-budget=0", "--circuits-token-budget=0 is not valid"),
             ("--circuits-token-budget=lots", "--circuits-token-budget='lots' is not valid: an integer"),
             ("--circuits-seed=-1", "--circuits-seed=-1 is not valid"),
             ("--circuits-familywise=holmes", "--circuits-familywise='holmes' is not valid"),
             ("--circuits-baseline-tolerance=3 sigma", "--circuits-baseline-tolerance")]
    import torch

    if not torch.cuda.is_available():
        cases.append(("--circuits-device=cuda", "CUDA is not available on this machine"))
    for option, message in cases:
        r = pytester.runpytest(*_args(tiny_dir, tmp_path), option)
        assert r.ret == pytest.ExitCode.USAGE_ERROR, option
        assert message in r.stderr.str(), (option, r.stderr.str())


def test_claims_do_not_leak_rng_state(pytester, tiny_dir, tmp_path):
    pytester.makepyfile("""
        import random, torch
        def test_a(model):
            assert random.random() == SEEDED
        def test_b(model):
            assert random.random() == SEEDED
        SEEDED = random.Random(0).random()
    """)
    pytester.runpytest(*_args(tiny_dir, tmp_path)).assert_outcomes(passed=2)


def test_plugin_import_is_light():
    code = ("import sys, pytest_circuits.plugin, pytest_circuits; "
            "print(sorted(m for m in ('torch', 'transformer_lens', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_entry_point_works_without_repo_conftest(tmp_path):
    """The installed package activates the plugin by itself (pytest11 entry point)."""
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert eps.get("circuits") == "pytest_circuits.plugin"
    out = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=tmp_path, capture_output=True,
                         text=True).stdout
    assert "--circuits-model" in out


def test_claim_without_a_language_model_is_recorded(pytester, tmp_path):
    pytester.makepyfile("""
        import pytest
        from pytest_circuits import Measurement

        @pytest.mark.claim(source="s", finding="a synthetic model's loss is small")
        def test_synthetic():
            m = Measurement.from_values("loss", [0.1, 0.2, 0.15], model="toy")
            m.assert_below(0.5)
    """)
    report = tmp_path / "r.json"
    r = pytester.runpytest(f"--circuits-report={report}", f"--circuits-cache-dir={tmp_path}")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*finding: a synthetic model's loss is small", "*loss[[]toy[]] = 0.15 *"])
    import json

    (rec,) = json.loads(report.read_text())["records"]
    assert rec["model"] == "toy" and rec["fingerprint"] == "n/a"
