"""``--circuits-device-map`` through pytest: a bad map stops the run with a usage error (exit
4) before any claim runs; a good one runs the claims (on this CPU-only machine, over the CPU)."""

from __future__ import annotations

import json
import textwrap

import pytest

from pytest_circuits.config import default_cache_dir

CLAIM = textwrap.dedent("""
    import pytest
    from pytest_circuits import PromptSet, metrics
    from pytest_circuits.models import info

    @pytest.mark.claim(source="test", finding="the tiny model has a finite loss")
    def test_loss(model, activations):
        assert info(model).device_map == '{"":"cpu"}'
        ps = PromptSet.build(model, ["the cat sat on the mat", "the dog sat"])
        assert metrics.loss(model, ps, activations=activations).upper < 1e9
""")

FULL = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "lm_head": "cpu",
        "model.rotary_emb": "cpu"}


# The default cache of the process running the tests (pytester points HOME elsewhere), where the
# embedded model's converted weights already are: the start-up check reads its config.
OUTER_CACHE = default_cache_dir()


def _args(tiny_dir, cache) -> list[str]:
    return [f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={cache}", "-p", "no:cacheprovider"]


def test_help_lists_the_option(pytester: pytest.Pytester):
    out = pytester.runpytest("--help").stdout.str()
    assert "--circuits-device-map" in out and "circuits_device_map" in out


@pytest.mark.parametrize("value, why", [
    ("nonsense", "a strategy (auto, balanced, balanced_low_0, sequential)"),
    ("{}", "the map is empty"),
    ('{"": "disk"}', "offloading to disk"),
    ('{"": "cuda:0"}', "names GPU(s) [0] but this machine has 0 CUDA device(s)"),
    ('{"": "cpu", "bogus": "cpu"}', "names modules the model does not have: ['bogus']"),
    ('{"lm_head": "cpu"}', "leaves modules with weights unplaced"),
    ("@no-such-map.json", "cannot be read"),
    ("{not json", "is not valid JSON"),
])
def test_bad_map_is_a_usage_error_before_any_claim(pytester, tiny_dir, tmp_path, value, why):
    pytester.makepyfile(test_claim=CLAIM)
    r = pytester.runpytest(*_args(tiny_dir, tmp_path), f"--circuits-device-map={value}")
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str()
    assert why in r.stderr.str()
    assert "pytest-circuits: " in r.stderr.str()


def test_map_and_device_together_is_a_usage_error(pytester, tiny_dir, tmp_path):
    pytester.makepyfile(test_claim=CLAIM)
    r = pytester.runpytest(*_args(tiny_dir, tmp_path), "--circuits-device=cpu", "--circuits-device-map=auto")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--circuits-device-map and --circuits-device='cpu' were both given*auto*"])


@pytest.mark.parametrize("value", ["auto", "sequential", json.dumps(FULL), "@map.json"])
def test_good_map_runs_the_claims(pytester, tiny_dir, tmp_path, value):
    pytester.makepyfile(test_claim=CLAIM)
    (pytester.path / "map.json").write_text(json.dumps(FULL))
    r = pytester.runpytest(*_args(tiny_dir, tmp_path), f"--circuits-device-map={value}")
    r.assert_outcomes(passed=1)


def test_ini_map_file_is_read_from_the_rootdir(pytester, tiny_dir, tmp_path):
    pytester.makepyfile(test_claim=CLAIM)
    (pytester.path / "maps").mkdir()
    (pytester.path / "maps" / "cpu.json").write_text(json.dumps(FULL))
    pytester.makeini("[pytest]\ncircuits_device_map = @maps/cpu.json\n")
    pytester.runpytest(*_args(tiny_dir, tmp_path)).assert_outcomes(passed=1)
    pytester.makeini("[pytest]\ncircuits_device_map = @maps/missing.json\n")
    r = pytester.runpytest(*_args(tiny_dir, tmp_path))
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "missing.json" in r.stderr.str()


def test_half_precision_with_a_device_map_end_to_end(pytester, tiny_dir, tmp_path):
    """--circuits-dtype reaches the model (weights in bfloat16) with and without a device map,
    and the activation cache keeps the two dtypes apart (a float32 run after a bfloat16 one
    computes again)."""
    pytester.makepyfile(test_claim=textwrap.dedent("""
        import torch
        from pytest_circuits import PromptSet, metrics
        from pytest_circuits.models import info

        def test_dtype(model, activations, request):
            want = request.config.getoption("circuits_dtype") or "float32"
            assert {p.dtype for p in model.parameters()} == {getattr(torch, want)}
            assert info(model).dtype == want
            ps = PromptSet.build(model, ["the cat sat on the mat"])
            assert metrics.loss(model, ps, activations=activations).upper < 1e9
    """))
    for extra in (["--circuits-dtype=bfloat16", "--circuits-device-map=auto"], ["--circuits-dtype=float16"],
                  ["--circuits-dtype=bfloat16"]):
        r = pytester.runpytest(*_args(tiny_dir, tmp_path), *extra)
        r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["activations: 1 forward passes*"])      # not the mapped run's entry
    r = pytester.runpytest(*_args(tiny_dir, tmp_path))
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["activations: 1 forward passes*"])      # nor a half-precision one


def test_a_map_that_does_not_fit_a_marker_chosen_model_fails_the_claim_never_skips(pytester, tiny_dir, tmp_path):
    # The model comes from @pytest.mark.model, so the start-up check cannot see it; the error
    # shows at load time and must fail the claim (without --circuits-require-models too).
    pytester.makepyfile(test_claim=textwrap.dedent(f"""
        import pytest

        @pytest.mark.model({str(tiny_dir)!r})
        @pytest.mark.claim(source="test", finding="loads")
        def test_loads(model):
            assert model is not None
    """))
    # A map that fits the default model (SmolLM2's 30 layers, checked at start-up; its converted
    # weights are in the default cache) but names layers the tiny model does not have.
    fits_default = {"model.embed_tokens": "cpu", **{f"model.layers.{i}": "cpu" for i in range(30)},
                    "model.norm": "cpu", "lm_head": "cpu", "model.rotary_emb": "cpu"}
    r = pytester.runpytest("-p", "no:cacheprovider", f"--circuits-cache-dir={OUTER_CACHE}",
                           f"--circuits-device-map={json.dumps(fits_default)}")
    r.assert_outcomes(errors=1)      # failed in setup (where the model loads): an error, not a skip
    r.stdout.fnmatch_lines(["*--circuits-device-map names modules the model does not have*model.layers.2*"])
