"""Fault injection at start-up: every mistake a user can make in the options or markers stops
the run before any claim runs (a usage error, exit 4, or a collection error), never a crash
after all the compute is spent, never a silent default, never a green run of skips.

Each case also checks that no claim ran (no measurement line) and that the check left no file
behind where the run would have written.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

CLAIM = textwrap.dedent("""
    import pytest
    from pytest_circuits import PromptSet, metrics

    @pytest.mark.claim(source="test", finding="finite loss")
    def test_loss(model, activations):
        ps = PromptSet.build(model, ["the cat sat on the mat", "the dog sat"])
        assert metrics.loss(model, ps, activations=activations).upper < 1e9
""")


def _args(tiny_dir, tmp_path) -> list[str]:
    return [f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider"]


def _files(*roots: Path) -> set[str]:
    return {str(p) for r in roots if r.exists() for p in r.rglob("*")}


def _usage(r, *lines: str) -> None:
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str() + r.stderr.str()
    r.stderr.fnmatch_lines(list(lines))
    assert "loss[" not in r.stdout.str()                  # no claim ran


@pytest.fixture
def places(tmp_path):
    out = tmp_path / "out"
    (out / "a-folder").mkdir(parents=True)
    (out / "a-file").write_text("keep me\n")
    return out


@pytest.mark.parametrize("flag", ["--circuits-report", "--circuits-markdown", "--circuits-html", "--junitxml"])
@pytest.mark.parametrize("where,why", [("a-folder", "is a folder, not a file"),
                                        ("a-file/report.out", "a-file is a file, so *report.out cannot be created"),
                                        ("a-file/deeper/report.out", "a-file is a file, so *cannot be created")])
def test_an_output_file_that_cannot_be_written_is_a_usage_error(pytester, tiny_dir, tmp_path, places, flag,
                                                                  where, why):
    pytester.makepyfile(test_claim=CLAIM)
    before = _files(places)
    r = pytester.runpytest(*_args(tiny_dir, tmp_path), f"{flag}={places / where}")
    if flag == "--junitxml" and where == "a-folder":
        _usage(r, "*--junitxml must be a filename*")      # pytest's own check
    else:
        _usage(r, f"*{flag}=*cannot be written at the end of the run: *{why}*")
    assert _files(places) == before and (places / "a-file").read_text() == "keep me\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, where no file can be created")
def test_an_output_in_a_folder_where_nothing_can_be_created_is_a_usage_error(pytester, tiny_dir, tmp_path):
    # (/proc refuses new files even to root, for whom permission bits do not apply)
    pytester.makepyfile(test_claim=CLAIM)
    for flag in ("--circuits-report", "--circuits-html"):
        r = pytester.runpytest(*_args(tiny_dir, tmp_path), f"{flag}=/proc/self/report.out")
        _usage(r, f"*{flag}='/proc/self/report.out' cannot be written*cannot create files in /proc/*")
    r = pytester.runpytest(*_args(tiny_dir, tmp_path), "--circuits-baseline-dir=/proc/self/baselines")
    _usage(r, "*--circuits-baseline-dir='/proc/self/baselines' cannot be used: cannot create files in /proc/*")


def test_the_check_of_an_existing_file_leaves_it_as_it_was(pytester, tiny_dir, tmp_path, places):
    from pytest_circuits.config import output_problem

    target = places / "old-report.json"
    target.write_text("{}")
    os.utime(target, (1_000_000, 1_000_000))
    assert output_problem(target) is None
    assert target.read_text() == "{}" and target.stat().st_mtime == 1_000_000
    assert output_problem(places / "a-folder", folder=True) is None
    assert _files(places) == {str(places / n) for n in ("a-folder", "a-file", "old-report.json")}
    target.chmod(0o444)
    if not os.access(target, os.W_OK):            # (root writes it anyway: nothing to refuse)
        pytester.makepyfile(test_claim=CLAIM)
        r = pytester.runpytest(*_args(tiny_dir, tmp_path), f"--circuits-report={target}")
        _usage(r, "*--circuits-report=*cannot be written at the end of the run*cannot be written*")


def test_baseline_dir_at_a_file_is_a_usage_error(pytester, tiny_dir, tmp_path, places):
    pytester.makepyfile(test_claim=CLAIM)
    for where in ("a-file", "a-file/baselines"):
        r = pytester.runpytest(*_args(tiny_dir, tmp_path), f"--circuits-baseline-dir={places / where}")
        _usage(r, "*--circuits-baseline-dir=* cannot be used: *a-file is a file*")
    assert (places / "a-file").read_text() == "keep me\n"


def test_two_outputs_at_one_path_is_a_usage_error(pytester, tiny_dir, tmp_path, places):
    pytester.makepyfile(test_claim=CLAIM)
    same = places / "r.out"
    r = pytester.runpytest(*_args(tiny_dir, tmp_path), f"--circuits-report={same}", f"--circuits-html={same}")
    _usage(r, "*--circuits-html=* and --circuits-report=* name the same file*")


def test_writable_outputs_run_and_are_written(pytester, tiny_dir, tmp_path, places):
    pytester.makepyfile(test_claim=CLAIM)
    paths = {f: places / "new" / "dirs" / n for f, n in (("--circuits-report", "r.json"), ("--circuits-markdown", "r.md"),
                                                         ("--circuits-html", "r.html"), ("--junitxml", "j.xml"))}
    r = pytester.runpytest(*_args(tiny_dir, tmp_path), *(f"{f}={p}" for f, p in paths.items()),
                           f"--circuits-baseline-dir={places / 'baselines'}", "--circuits-update-baselines")
    r.assert_outcomes(passed=1)
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert not [p for p in _files(places) if ".pytest-circuits-write-probe" in p]


@pytest.mark.parametrize("value,why", [(str(2 ** 70), "--circuits-seed=1180591620717411303424 is not valid: an "
                                                      "integer >= 0 and <= 4,294,967,295"),
                                       ("-1", "--circuits-seed=-1 is not valid")])
def test_seed_out_of_numpys_range_is_a_usage_error(pytester, tiny_dir, tmp_path, value, why):
    pytester.makepyfile(test_claim=CLAIM)
    _usage(pytester.runpytest(*_args(tiny_dir, tmp_path), f"--circuits-seed={value}"), f"*{why}*")


def test_the_largest_seed_numpy_accepts_runs(pytester, tiny_dir, tmp_path):
    pytester.makepyfile(test_claim=CLAIM)
    pytester.runpytest(*_args(tiny_dir, tmp_path), f"--circuits-seed={2 ** 32 - 1}").assert_outcomes(passed=1)


@pytest.mark.parametrize("spec,why", [("1/100000000", "the number of shards N must be at most 10,000"),
                                      ("5/4", "the shard K must be between 1 and N=4"),
                                      ("0/4", "the shard K must be between 1 and N=4")])
def test_shard_counts_are_bounded(pytester, tiny_dir, tmp_path, spec, why):
    pytester.makepyfile(test_claim=CLAIM)
    _usage(pytester.runpytest(*_args(tiny_dir, tmp_path), f"--circuits-shard={spec}"), f"*{why}*")


@pytest.mark.parametrize("flag", ["--circuits-cache-dir", "--circuits-report", "--circuits-shard",
                                  "--circuits-baseline-dir", "--circuits-html"])
def test_an_empty_option_value_is_a_usage_error_not_the_default(pytester, tiny_dir, tmp_path, flag):
    pytester.makepyfile(test_claim=CLAIM)
    args = [a for a in _args(tiny_dir, tmp_path) if not a.startswith(flag + "=")]
    _usage(pytester.runpytest(*args, f"{flag}="), f"*{flag}= is empty: give a value, or leave the option out*")
    _usage(pytester.runpytest(*args, f"{flag}=  "), f"*{flag}= is empty*")


def _collection_error(r, *lines: str) -> None:
    assert r.ret == pytest.ExitCode.INTERRUPTED, r.stdout.str()
    r.stdout.fnmatch_lines(["*Interrupted: 1 error during collection*"])
    r.stdout.fnmatch_lines(list(lines))
    assert "PASSED" not in r.stdout.str() and "SKIPPED" not in r.stdout.str()


@pytest.mark.parametrize("typo,meant", [("modle", "model"), ("models", "model"), ("clam", "claim"),
                                        ("expect_changes", "expect_change")])
def test_a_misspelt_marker_on_a_claim_stops_the_run(pytester, tiny_dir, tmp_path, typo, meant):
    pytester.makepyfile(test_claim=f"""
        import pytest

        @pytest.mark.{typo}("gpt2")
        def test_x(model):
            assert model is not None
    """)
    r = pytester.runpytest(f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider", "-v")
    _collection_error(r, f"*unknown marker @pytest.mark.{typo}; did you mean @pytest.mark.{meant}?*")


def test_a_model_name_that_is_nowhere_is_refused_at_collection_unless_declared_optional(pytester, tiny_dir,
                                                                                        tmp_path):
    pytester.makepyfile(test_claim=f"""
        import pytest

        @pytest.mark.claim(finding="f")
        @pytest.mark.model({str(tiny_dir)!r}, "smolm2-135m")
        def test_x(model):
            assert model is not None
    """)
    r = pytester.runpytest(f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider", "-v")
    _collection_error(r, "*@pytest.mark.model('smolm2-135m') in test_claim.py::test_x: not a registered name*"
                         "not in the local Hugging Face cache*optional=*")
    pytester.makepyfile(test_claim=f"""
        import pytest

        @pytest.mark.claim(finding="f")
        @pytest.mark.model({str(tiny_dir)!r}, "smolm2-135m", optional="only on the lab's machines")
        def test_x(model):
            assert model is not None
    """)
    r = pytester.runpytest(f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=1, skipped=1)
    r.stdout.fnmatch_lines(["*not checked x1: model 'smolm2-135m' is optional here (only on the lab's machines)*"])


def _pickled(tmp_path, tiny_dir) -> Path:
    folder = tmp_path / "pickled-ckpt"
    folder.mkdir()
    for f in tiny_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    return folder


def test_a_pickled_checkpoint_is_refused_with_the_way_to_convert_it_never_skipped(pytester, tiny_dir, tmp_path):
    pytester.makepyfile(test_claim=CLAIM)
    folder = _pickled(tmp_path, tiny_dir)
    base = [f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider"]
    _usage(pytester.runpytest(*base, f"--circuits-model={folder}"),
           "*pickled-ckpt holds pickled weights (pytorch_model.bin) and no *.safetensors; pickled checkpoints are "
           "never loaded*save_pretrained*")
    pytester.makepyfile(test_claim=f"""
        import pytest

        @pytest.mark.model({str(folder)!r}, optional="may be missing")
        def test_x(model):
            assert model is not None
    """)
    _collection_error(pytester.runpytest(*base), "*holds pickled weights*")


def test_a_device_map_without_a_named_model_converts_nothing_the_claims_do_not_use(pytester, tiny_dir, tmp_path):
    # The claims choose their model with a marker; the map fits it. The embedded model (the default
    # when nothing is named) is neither converted nor checked against the map at start-up.
    pytester.makepyfile(test_claim=textwrap.dedent(f"""
        import pytest
        from pytest_circuits import PromptSet, metrics

        @pytest.mark.model({str(tiny_dir)!r})
        @pytest.mark.claim(source="test", finding="finite loss")
        def test_loss(model, activations):
            ps = PromptSet.build(model, ["the cat sat on the mat"])
            assert metrics.loss(model, ps, activations=activations).upper < 1e9
    """))
    cache = tmp_path / "fresh-cache"
    fits_tiny = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                 "model.rotary_emb": "cpu"}
    r = pytester.runpytest(f"--circuits-cache-dir={cache}", "-p", "no:cacheprovider",
                           f"--circuits-device-map={json.dumps(fits_tiny)}")
    r.assert_outcomes(passed=1)
    assert not [p for p in _files(cache) if "smollm2" in p.lower() or p.endswith(".gguf")]
    r = pytester.runpytest(f"--circuits-cache-dir={cache}", "-p", "no:cacheprovider",
                           '--circuits-device-map={"model.layers": "cuda:7"}')
    assert r.ret == pytest.ExitCode.USAGE_ERROR               # absent devices are still checked at start-up
