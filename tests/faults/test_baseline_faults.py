"""Fault injection on baseline files: a value that is not a number fails its claim, clearly.

Each test records a baseline for two claims on a tiny model, plants one fault in the
file as a user (or a bad merge) could, and checks the run ends with a failure of the
claim that uses the entry, naming the file, the claim, the metric and the field with its
value; the other claim still passes; there is no INTERNALERROR; and nothing (no
``.lock``, no temp file) is left beside the baselines.
"""

from __future__ import annotations

import json

import pytest

CLAIMS = """
import pytest
from pytest_circuits import PromptSet, metrics

PROMPTS = ["the cat sat on the mat", "the dog sat", "the king went to the city", "a queen said the"]

@pytest.mark.claim(finding="a finite loss")
def test_loss(model, activations):
    metrics.loss(model, PromptSet.build(model, PROMPTS), activations=activations)

@pytest.mark.claim(finding="another claim in the same file")
def test_other(model, activations):
    metrics.loss(model, PromptSet.build(model, PROMPTS[:3]), activations=activations, name="loss3")
"""
LOSS, OTHER = "test_c.py::test_loss", "test_c.py::test_other"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """What the tests of this file share: one cache folder (the tiny model converted once, its
    measurements computed once) and the baseline file recorded by the first test that asks
    (every test plants its fault in its own copy)."""
    return {"cache": tmp_path_factory.mktemp("baseline-faults-cache"), "recorded": None}


def _run(pytester, tiny_dir, tmp_path, shared, *extra):
    return pytester.runpytest(f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={shared['cache']}",
                              f"--circuits-baseline-dir={tmp_path / 'baselines'}", "-p", "no:cacheprovider", *extra)


def _record(pytester, tiny_dir, tmp_path, shared):
    """A baseline file with both claims, checked to pass as written; returns its path.

    Recorded once per module (by the first test that asks, and checked to pass there), then
    copied byte for byte into each test's own baseline folder. (Recorded in a test body, not in a
    fixture: pytester runs inside a fixture would nest the plugin's fixture-measurement recorder
    around the inner runs.)"""
    pytester.makepyfile(test_c=CLAIMS)
    path = tmp_path / "baselines" / "ckpt.json"
    if shared["recorded"] is None:
        _run(pytester, tiny_dir, tmp_path, shared, "--circuits-update-baselines").assert_outcomes(passed=2)
        _run(pytester, tiny_dir, tmp_path, shared).assert_outcomes(passed=2)
        shared["recorded"] = path.read_bytes()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(shared["recorded"])
    return path


def _plant(path, text_of):
    data = json.loads(path.read_text())
    path.write_text(text_of(data))


def _assert_clean(r, path):
    out = r.stdout.str() + r.stderr.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.json"], list(path.parent.iterdir())


def _lit(text):
    """``text`` as a literal in an fnmatch pattern ('[' opens a character class there)."""
    return text.replace("[", "[[]")


def _entry(path, claim=LOSS, metric="loss"):
    return json.loads(path.read_text())["claims"][claim][metric]


@pytest.mark.parametrize("field, value, shown", [
    ("mean", '"0.5"', "mean='0.5' is not valid: a finite number"),
    ("mean", "NaN", "mean=nan is not valid: a finite number"),
    ("sem", "Infinity", "sem=inf is not valid: a finite number"),
    ("upper", "-Infinity", "upper=-inf is not valid: a finite number"),
    ("mean", "[1, 2]", "mean=[1, 2] is not valid: a finite number"),
    ("sem", "-0.5", "sem=-0.5 is not valid: a standard error >= 0"),
    ("n", '"4"', "n='4' is not valid: a positive integer"),
    ("lower", "1e9", "lower=1000000000.0 > mean="),
])
def test_a_value_that_is_not_a_number_fails_its_claim_only(pytester, tiny_dir, tmp_path, shared, field, value,
                                                           shown):
    recorded = _record(pytester, tiny_dir, tmp_path, shared)
    data = json.loads(recorded.read_text())
    data["claims"][LOSS]["loss"][field] = "@@"
    # written as JSON text, so that NaN and Infinity are the JSON constants a file may hold
    recorded.write_text(json.dumps(data).replace('"@@"', value))
    assert value in recorded.read_text()
    r = _run(pytester, tiny_dir, tmp_path, shared)
    r.assert_outcomes(failed=1, passed=1)
    r.stdout.fnmatch_lines([f"*baseline file {recorded}: claim '{LOSS}', metric 'loss': {_lit(shown)}*",
                            "*--circuits-update-baselines*", f"FAILED *{LOSS}*"])
    _assert_clean(r, recorded)
    # rewriting the claim that ran repairs the file; the other claim's entry is kept as it was
    other = _entry(recorded, OTHER, "loss3")
    _run(pytester, tiny_dir, tmp_path, shared, "--circuits-update-baselines", "-k", "test_loss").assert_outcomes(
        passed=1)
    assert _entry(recorded, OTHER, "loss3") == other
    _run(pytester, tiny_dir, tmp_path, shared).assert_outcomes(passed=2)


@pytest.mark.parametrize("bad", [[1, 2], "loss", None])
def test_a_claim_entry_that_is_not_an_object(pytester, tiny_dir, tmp_path, shared, bad):
    recorded = _record(pytester, tiny_dir, tmp_path, shared)
    _plant(recorded, lambda d: json.dumps({**d, "claims": {**d["claims"], LOSS: bad}}))
    r = _run(pytester, tiny_dir, tmp_path, shared)
    r.assert_outcomes(failed=1, passed=1)
    r.stdout.fnmatch_lines([f"*baseline file {recorded}: claim '{LOSS}': entry={_lit(repr(bad))} is not valid*"])
    _assert_clean(r, recorded)


def test_a_huge_sem_is_a_tolerance_that_cannot_fail(pytester, tiny_dir, tmp_path, shared):
    recorded = _record(pytester, tiny_dir, tmp_path, shared)
    for sem in (1e6, 1e300):
        _plant(recorded, lambda d: json.dumps({**d, "claims": {**d["claims"], LOSS: {"loss": {**_entry(recorded),
                                                                                             "sem": sem}}}}))
        r = _run(pytester, tiny_dir, tmp_path, shared)
        r.assert_outcomes(failed=1, passed=1)
        r.stdout.fnmatch_lines([f"*{LOSS}, metric 'loss': tolerance 3se allows ±{3 * sem:.3g}, wider than the "
                                "value's own scale*the check cannot fail*accept_wide*",
                                "*TOLERANCE WIDER THAN THE VALUE*"])
        _assert_clean(r, recorded)


def test_a_wide_tolerance_the_claim_accepts_passes_with_a_warning(pytester, tiny_dir, tmp_path, shared):
    recorded = _record(pytester, tiny_dir, tmp_path, shared)
    pytester.makepyfile(test_c=CLAIMS.replace('@pytest.mark.claim(finding="a finite loss")',
                                              '@pytest.mark.claim(finding="a finite loss")\n'
                                              '@pytest.mark.baseline(tolerance="abs:1000", accept_wide=True)'))
    r = _run(pytester, tiny_dir, tmp_path, shared)
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(["*loss: tolerance wider than the value (scale *): the check cannot fail (accepted)*"])
    pytester.makepyfile(test_c=CLAIMS.replace('@pytest.mark.claim(finding="a finite loss")',
                                              '@pytest.mark.claim(finding="a finite loss")\n'
                                              '@pytest.mark.baseline(tolerance="abs:1000")'))
    r = _run(pytester, tiny_dir, tmp_path, shared)
    r.assert_outcomes(passed=1, failed=1)
    r.stdout.fnmatch_lines(["*tolerance abs:1000 allows ±1e+03, wider than the value's own scale*"])
    _assert_clean(r, recorded)


@pytest.mark.parametrize("text, shown", [("{not json", "is not valid JSON"), ("[]", "its top level is a list"),
                                         ('{"claims": {}, "versions": ["torch"]}', "versions=['torch'] is not valid")])
def test_a_file_unusable_as_a_whole_fails_every_claim_naming_it(pytester, tiny_dir, tmp_path, shared, text, shown):
    recorded = _record(pytester, tiny_dir, tmp_path, shared)
    recorded.write_text(text)
    r = _run(pytester, tiny_dir, tmp_path, shared)
    r.assert_outcomes(failed=2)
    r.stdout.fnmatch_lines([f"*baseline file {recorded}*{_lit(shown)}*"])
    _assert_clean(r, recorded)
    r = _run(pytester, tiny_dir, tmp_path, shared, "--circuits-update-baselines")   # never overwritten blindly
    r.assert_outcomes(failed=2)
    assert recorded.read_text() == text


def test_baselines_record_versions_and_a_change_is_reported(pytester, tiny_dir, tmp_path, shared):
    recorded = _record(pytester, tiny_dir, tmp_path, shared)
    data = json.loads(recorded.read_text())
    for pkg in ("python", "torch", "transformer_lens", "transformers", "numpy", "safetensors", "pytest-circuits"):
        assert pkg in data["versions"], pkg
    data["versions"]["transformers"] = "0.0.1"
    recorded.write_text(json.dumps(data))
    md = tmp_path / "r.md"
    r = _run(pytester, tiny_dir, tmp_path, shared, "-W", "always", f"--circuits-markdown={md}")
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines([f"*{LOSS} was recorded with other versions (transformers 0.0.1 -> *"])
    # ... and the summary and the report show it beside the claim.
    r.stdout.fnmatch_lines(["*baseline recorded with other versions: transformers 0.0.1 -> *"])
    assert "Baselines recorded with other versions" in md.read_text()
    assert "transformers 0.0.1 -> " in md.read_text()


def test_a_wide_self_consistent_baseline_is_refused_with_the_numbers(pytester, tiny_dir, tmp_path, shared):
    """Issue 21: mean +100, interval +-300, sem 100: consistent with itself (its interval is what its
    sem and n imply), within its own 3se band and not "wider than the value" (the scale was taken
    from the baseline), so main passed it. Judged against the fresh measurement, it is refused."""
    from pytest_circuits import baselines as B

    recorded = _record(pytester, tiny_dir, tmp_path, shared)
    honest = _entry(recorded)
    wide = {**honest, "mean": honest["mean"] + 100, "lower": honest["mean"] - 200, "upper": honest["mean"] + 400,
            "sem": 100.0}
    (row,) = B.compare({"loss": honest}, {"loss": wide}, "3se")
    assert row.within and not row.wide and not B.interval_problem(wide)    # what main's rules saw: nothing
    _plant(recorded, lambda d: json.dumps({**d, "claims": {**d["claims"], LOSS: {"loss": wide}}}))
    r = _run(pytester, tiny_dir, tmp_path, shared)
    r.assert_outcomes(failed=1, passed=1)
    limit = B.spread_limit(honest["n"], honest["n"])
    r.stdout.fnmatch_lines([f"*{LOSS}, metric 'loss': baseline * refused: the baseline's sem 100 at n={honest['n']} "
                            f"is * times the fresh measurement's *; at most {limit:.3g} times is accepted*"])
    _assert_clean(r, recorded)
    # the tolerance of an accepted wide check cannot accept a baseline refused this way
    pytester.makepyfile(test_c=CLAIMS.replace('@pytest.mark.claim(finding="a finite loss")',
                                              '@pytest.mark.claim(finding="a finite loss")\n'
                                              '@pytest.mark.baseline(accept_wide=True)'))
    _run(pytester, tiny_dir, tmp_path, shared).assert_outcomes(failed=1, passed=1)


def test_an_interval_inconsistent_with_its_own_sem_is_refused(pytester, tiny_dir, tmp_path, shared):
    recorded = _record(pytester, tiny_dir, tmp_path, shared)
    honest = _entry(recorded)
    wide = {**honest, "lower": honest["lower"] - 50, "upper": honest["upper"] + 50}      # the same sem
    _plant(recorded, lambda d: json.dumps({**d, "claims": {**d["claims"], LOSS: {"loss": wide}}}))
    # an abs tolerance below the inflated width: "not wider than the value" by main's scale, so it passed
    pytester.makepyfile(test_c=CLAIMS.replace('@pytest.mark.claim(finding="a finite loss")',
                                              '@pytest.mark.claim(finding="a finite loss")\n'
                                              '@pytest.mark.baseline(tolerance="abs:60")'))
    r = _run(pytester, tiny_dir, tmp_path, shared)
    r.assert_outcomes(failed=1, passed=1)
    r.stdout.fnmatch_lines(["*refused: its interval * is * times the width its own sem * and n=* imply*"])
