"""The plugin loads in every pytest run of the environment where it is installed: a run that
collects no claim and names no ``--circuits-*`` option must not change (no environment
variable set, no header line, no heavy import). A run with claims still shows its settings."""

from __future__ import annotations

import pytest

UNRELATED = """
import os, sys

def test_unrelated():
    # what this process looks like to a team's own tests
    print("ENV", os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    print("HEAVY", sorted(m for m in ("torch", "transformers", "transformer_lens", "numpy",
                                     "huggingface_hub", "matplotlib") if m in sys.modules))
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(var, raising=False)


def test_a_suite_without_claims_is_untouched(pytester: pytest.Pytester, clean_env: None) -> None:
    pytester.makepyfile(test_other=UNRELATED)

    def seen(*extra: str) -> tuple[str, str, str]:
        r = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", *extra)
        r.assert_outcomes(passed=1)
        out = r.stdout.str()
        lines = {ln.split(" ", 1)[0]: ln for ln in out.splitlines() if ln.startswith(("ENV", "HEAVY"))
                 or "ENV" in ln}
        env = next(ln[ln.index("ENV"):] for ln in out.splitlines() if "ENV" in ln)
        return env, lines["HEAVY"], out

    env, heavy, out = seen()
    env_without, heavy_without, _ = seen("-p", "no:circuits")   # the same run without the plugin
    assert env == env_without == "ENV None None", out
    assert heavy == heavy_without, (heavy, heavy_without)      # other plugins may import numpy
    assert not any(m in heavy for m in ("torch", "transformer", "huggingface_hub", "matplotlib")), heavy
    assert "circuits:" not in out, out


def test_the_plugin_is_really_loaded_there(pytester: pytest.Pytester, clean_env: None) -> None:
    """The control: the same run does see the plugin (its options), so the test above is not
    passing because the plugin never loaded."""
    pytester.makepyfile(test_other=UNRELATED)
    r = pytester.runpytest_subprocess("--help")
    assert "--circuits-model" in r.stdout.str()
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--circuits-seed=3")
    r.stdout.fnmatch_lines(["circuits: models=* seed=3*"])


def test_a_run_with_claims_shows_its_settings(pytester: pytest.Pytester, clean_env: None) -> None:
    pytester.makepyfile(test_claim="""
        import pytest

        @pytest.mark.claim(finding="a number is a number")
        def test_claim():
            pass
    """)
    # In process: the header is the plugin's, whatever process runs it (the control above shows
    # the plugin loads in a fresh process too), and a child would import torch again (~5 s).
    r = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["circuits: models=*seed=0*"])


def test_loads_are_offline_without_touching_the_environment(tiny_dir, tmp_path, clean_env: None) -> None:
    """Each model load switches Hugging Face's offline mode on for itself and back off."""
    import os

    from huggingface_hub import constants

    from pytest_circuits import loading, models

    seen = []
    real = loading._load_model

    def spy(*a, **kw):
        seen.append(constants.HF_HUB_OFFLINE)
        return real(*a, **kw)

    before = constants.HF_HUB_OFFLINE
    mp = pytest.MonkeyPatch()
    mp.setattr(loading, "_load_model", spy)
    try:
        constants.HF_HUB_OFFLINE = False
        models.load_model(str(tiny_dir), cache_dir=tmp_path, device="cpu")
        assert seen == [True]
        assert constants.HF_HUB_OFFLINE is False
        assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    finally:
        mp.undo()
        constants.HF_HUB_OFFLINE = before
