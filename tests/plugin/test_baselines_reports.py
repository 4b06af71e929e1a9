"""Baselines, release-gate reports and parallel runs, through pytester."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from importlib import resources

import pytest

CLAIMS = textwrap.dedent("""
    import pytest
    from pytest_circuits import PromptSet, metrics

    PROMPTS = ["the cat sat on the mat", "the dog sat", "the king went to the city",
               "a queen said the", "when John and Mary went to the store"]

    @pytest.mark.claim(source="test", finding="the tiny model has a finite loss")
    def test_loss(model, activations):
        m = metrics.loss(model, PromptSet.build(model, PROMPTS), activations=activations)
        assert m.upper < 1e9

    @pytest.mark.claim(source="test", finding="two metrics")
    @pytest.mark.parametrize("k", [1, 2])
    def test_two(model, activations, k):
        ps = PromptSet.build(model, PROMPTS[:k + 2], answers=[" mat"] * (k + 2), foils=[" cat"] * (k + 2))
        metrics.logit_diff(model, ps, activations=activations)
        metrics.answer_prob(model, ps, activations=activations)
""")


@pytest.fixture
def claims(pytester):
    pytester.makepyfile(test_claims=CLAIMS)
    return pytester


def _run(pytester, tiny_dir, tmp_path, *extra):
    return pytester.runpytest(f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={tmp_path / 'cache'}",
                              "-p", "no:cacheprovider", *extra)


def test_baseline_lifecycle(claims, tiny_dir, tmp_path):
    bdir = tmp_path / "baselines"
    # 1. missing: written, and the claims fail saying so
    r = _run(claims, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}")
    r.assert_outcomes(failed=3)
    r.stdout.fnmatch_lines(["*no baseline for loss of test_claims.py::test_loss on ckpt: written to*ckpt.json*"])
    data = json.loads((bdir / "ckpt.json").read_text())
    assert set(data["claims"]) == {"test_claims.py::test_loss", "test_claims.py::test_two[k=1]",
                                   "test_claims.py::test_two[k=2]"}
    assert set(data["claims"]["test_claims.py::test_two[k=1]"]) == {"logit_diff", "answer_prob"}
    assert data["fingerprint"].startswith("local-sha256:") and "torch" in data["versions"]
    # 2. same model again: within tolerance
    r = _run(claims, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}")
    r.assert_outcomes(passed=3)
    r.stdout.fnmatch_lines(["*loss[[]ckpt[]] = * baseline *, drift +0 (within 3se)"])
    # 3. outside tolerance: a table, and the obtained file beside the baseline
    entry = data["claims"]["test_claims.py::test_loss"]["loss"]
    for f in ("mean", "lower", "upper"):   # the whole interval moves (a baseline checks lower <= mean <= upper)
        entry[f] += 1.0
    data["claims"]["other.py::test_not_run"] = {"m": {"mean": 1.0, "n": 3}}
    (bdir / "ckpt.json").write_text(json.dumps(data))
    r = _run(claims, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}")
    r.assert_outcomes(failed=1, passed=2)
    r.stdout.fnmatch_lines(["*1 of 1 measurements of test_claims.py::test_loss on ckpt drifted*",
                            "*metric | obtained | baseline | difference | tolerance*",
                            "! loss * | -1 * | 3se (±*)*", "*--circuits-update-baselines*"])
    obtained = json.loads((bdir / "ckpt.obtained.json").read_text())
    assert obtained["claims"]["test_claims.py::test_loss"]["loss"]["mean"] == pytest.approx(entry["mean"] - 1.0)
    # 4. update: rewritten for the claims that ran, others kept
    r = _run(claims, tiny_dir, tmp_path, "--circuits-update-baselines", f"--circuits-baseline-dir={bdir}")
    r.assert_outcomes(passed=3)
    data = json.loads((bdir / "ckpt.json").read_text())
    assert data["claims"]["test_claims.py::test_loss"]["loss"]["mean"] == pytest.approx(entry["mean"] - 1.0)
    assert "other.py::test_not_run" in data["claims"]


def test_tolerance_from_marker_and_ini(pytester, tiny_dir, tmp_path):
    pytester.makepyfile(test_t="""
        import pytest
        from pytest_circuits import PromptSet, metrics

        @pytest.mark.baseline(tolerance={"loss": "abs:2.0"})
        def test_loss(model, activations):
            metrics.loss(model, PromptSet.build(model, ["the cat sat", "the dog"]), activations=activations)
    """)
    bdir = tmp_path / "b"
    _run(pytester, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}").assert_outcomes(failed=1)
    data = json.loads((bdir / "ckpt.json").read_text())
    for f in ("mean", "lower", "upper"):
        data["claims"]["test_t.py::test_loss"]["loss"][f] += 1.5
    (bdir / "ckpt.json").write_text(json.dumps(data))
    _run(pytester, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}").assert_outcomes(passed=1)
    r = _run(pytester, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}", "--circuits-baseline-tolerance=abs:1")
    r.assert_outcomes(passed=1)   # the marker wins over the run-wide default
    pytester.makepyfile(test_t="""
        from pytest_circuits import PromptSet, metrics
        def test_loss(model, activations):
            metrics.loss(model, PromptSet.build(model, ["the cat sat", "the dog"]), activations=activations)
    """)
    r = _run(pytester, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}", "--circuits-baseline-tolerance=abs:1")
    r.assert_outcomes(failed=1)
    # A bad run-wide tolerance stops the run when pytest configures (exit 4), before any claim.
    r = _run(pytester, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}", "--circuits-baseline-tolerance=1 se")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*tolerance='1 se' is not valid*"])


def test_corrupted_baseline_file_is_named(claims, tiny_dir, tmp_path):
    bdir = tmp_path / "baselines"
    bdir.mkdir()
    (bdir / "ckpt.json").write_text("{not json")
    r = _run(claims, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}")
    r.assert_outcomes(failed=3)
    r.stdout.fnmatch_lines([f"*baseline file {bdir / 'ckpt.json'} is not valid JSON*"])


def test_expected_change_is_a_strict_xfail(pytester, tiny_dir, tiny_dir_b, tmp_path):
    pytester.makepyfile(test_x="""
        import pytest
        from pytest_circuits import PromptSet, metrics

        @pytest.mark.expect_change("ckpt_b", reason="retrained embeddings")
        def test_holds_only_on_ckpt(model, activations):
            m = metrics.loss(model, PromptSet.build(model, ["the cat sat", "the dog"]), activations=activations)
            assert model.cfg.model_name is not None
            assert "ckpt_b" not in str(model.cfg.model_name) and "tinyb" not in str(model.cfg.model_name)

        @pytest.mark.expect_change("ckpt_b", reason="should fail there but does not")
        def test_holds_everywhere(model):
            pass
    """)
    r = pytester.runpytest(f"--circuits-model={tiny_dir}", f"--circuits-model={tiny_dir_b}",
                           f"--circuits-cache-dir={tmp_path}", "-v", "-rxX")
    for line in ("*test_holds_only_on_ckpt[[]ckpt[]] PASSED*", "*test_holds_only_on_ckpt[[]ckpt_b[]] XFAIL*",
                 "*test_holds_everywhere[[]ckpt[]] PASSED*", "*test_holds_everywhere[[]ckpt_b[]] FAILED*",
                 "XFAILED test_x.py::test_holds_only_on_ckpt[[]ckpt_b[]]"):
        r.stdout.fnmatch_lines([line])
    r.assert_outcomes(passed=2, xfailed=1, failed=1)


def test_multi_model_ids_and_reports(claims, tiny_dir, tiny_dir_b, tmp_path):
    report, md, page, junit = (tmp_path / n for n in ("r.json", "r.md", "r.html", "j.xml"))
    r = claims.runpytest(f"--circuits-model={tiny_dir}", f"--circuits-model={tiny_dir_b}",
                         f"--circuits-cache-dir={tmp_path / 'cache'}", "-v", f"--circuits-report={report}",
                         f"--circuits-markdown={md}", f"--circuits-html={page}", f"--junitxml={junit}",
                         "-o", "junit_family=xunit1")
    r.assert_outcomes(passed=6)
    for line in ("*test_loss[[]ckpt[]] PASSED*", "*test_loss[[]ckpt_b[]] PASSED*", "*test_two[[]ckpt-1[]] PASSED*"):
        r.stdout.fnmatch_lines([line])
    data = json.loads(report.read_text())
    import jsonschema

    schema = json.loads(resources.files("pytest_circuits").joinpath("data/report.schema.json").read_text())
    jsonschema.validate(data, schema)
    assert {(x["claim"], x["model"]) for x in data["records"]} == {
        (c, m) for c in ("test_claims.py::test_loss", "test_claims.py::test_two[k=1]", "test_claims.py::test_two[k=2]")
        for m in ("ckpt", "ckpt_b")}
    assert data["exit_status"] == 0 and all(x["outcome"] == "passed" for x in data["records"])
    text = md.read_text()
    assert "| claim | metric | ckpt | ckpt_b |" in text and "`test_claims.py::test_loss` | loss |" in text
    assert '<header class="banner gate-passed" id="verdict" data-gate="passed">' in page.read_text()
    assert page.read_text().count('<tr data-claim="') == 3 and "No measurement was compared" in page.read_text()
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().iter("property")}
    assert any(k == "circuits:loss" for k in props) and "n=5" in props["circuits:loss"]


def test_xdist_ledger_matches_serial(claims, tiny_dir, tiny_dir_b, tmp_path):
    pytest.importorskip("xdist")

    summaries = {}

    def ledger(*extra):
        out = tmp_path / f"r{len(extra)}.json"
        # a cache of its own per run: the runs' activation counters are then comparable
        r = claims.runpytest_subprocess(f"--circuits-model={tiny_dir}", f"--circuits-model={tiny_dir_b}",
                                        f"--circuits-cache-dir={tmp_path / f'cache{len(extra)}'}",
                                        f"--circuits-report={out}", "-p", "no:cacheprovider", *extra)
        r.assert_outcomes(passed=6)
        summaries[len(extra)] = [line for line in r.outlines if line.startswith(("activations:", "compute:"))]
        recs = json.loads(out.read_text())["records"]
        return sorted((x["claim"], x["model"], json.dumps(x["measurements"], sort_keys=True)) for x in recs)

    serial = ledger()
    parallel = ledger("-n", "2", "--dist", "loadgroup")
    assert parallel == serial and len(serial) == 6
    # the summary is complete under xdist: every worker's counters, summed, are the serial run's
    one, two = summaries[0], summaries[4]
    assert len(one) == 2 and len(two) == 2, (one, two)
    assert two[0] == one[0] + " (summed over 2 xdist workers)" and two[1] == one[1]


def test_new_checkpoint_against_the_released_baseline(claims, tiny_dir, tiny_dir_b, tmp_path):
    bdir, report = tmp_path / "baselines", tmp_path / "r.json"
    _run(claims, tiny_dir, tmp_path, "--circuits-update-baselines", f"--circuits-baseline-dir={bdir}"
         ).assert_outcomes(passed=3)
    r = claims.runpytest(f"--circuits-model={tiny_dir}", f"--circuits-model={tiny_dir_b}",
                         f"--circuits-cache-dir={tmp_path / 'cache'}", f"--circuits-baseline-dir={bdir}",
                         "--circuits-baseline-of=ckpt", f"--circuits-report={report}", "--circuits-baseline-tolerance=abs:0.01",
                         f"--circuits-html={tmp_path / 'r.html'}", f"--circuits-markdown={tmp_path / 'r.md'}")
    recs = {(x["claim"], x["model"]): x for x in json.loads(report.read_text())["records"]}
    released = json.loads((bdir / "ckpt.json").read_text())["claims"]
    for (claim, model), rec in recs.items():
        for m in rec["measurements"]:
            assert m["baseline"]["mean"] == pytest.approx(released[claim][m["key"]]["mean"])
        assert rec["outcome"] == ("passed" if model == "ckpt" else "failed")   # other weights drift
    assert not (bdir / "ckpt_b.json").exists() and (bdir / "ckpt_b.obtained.json").exists()
    page, md = (tmp_path / "r.html").read_text(), (tmp_path / "r.md").read_text()   # the release report says so
    assert 'data-gate="failed"' in page and 'data-verdict="failed" data-model="ckpt_b"' in page
    assert 'id="forest-plot"' in page and "## \u2717 Release gate FAILED: 3 claim results failed" in md
    r.stdout.fnmatch_lines(["*drifted from the baseline of ckpt*"])
    r = claims.runpytest(f"--circuits-model={tiny_dir_b}", f"--circuits-cache-dir={tmp_path / 'cache'}",
                         f"--circuits-baseline-dir={bdir}", "--circuits-baseline-of=ckpt", "--circuits-update-baselines")
    r.stdout.fnmatch_lines(["*refusing to write ckpt_b's measurements into*"])


def test_failed_claim_reports_drift_and_writes_nothing(pytester, tiny_dir, tmp_path):
    pytester.makepyfile(test_f="""
        from pytest_circuits import PromptSet, metrics
        def test_loss(model, activations):
            m = metrics.loss(model, PromptSet.build(model, ["the cat sat", "the dog"]), activations=activations)
            assert m.upper < LIMIT
    """.replace("LIMIT", "1e9"))
    bdir, report = tmp_path / "b", tmp_path / "r.json"
    _run(pytester, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}", "--circuits-update-baselines")
    written = (bdir / "ckpt.json").read_text()
    pytester.makepyfile(test_f=pytester.path.joinpath("test_f.py").read_text().replace("1e9", "0.0"))
    r = _run(pytester, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}", f"--circuits-report={report}")
    r.assert_outcomes(failed=1)
    (rec,) = json.loads(report.read_text())["records"]
    assert rec["outcome"] == "failed" and rec["measurements"][0]["baseline"]["within"] is True
    assert (bdir / "ckpt.json").read_text() == written and not (bdir / "ckpt.obtained.json").exists()


FAILING = CLAIMS + textwrap.dedent("""
    @pytest.mark.claim(source="test", finding="a loss above 100 (false on the released model)")
    def test_fails(model, activations):
        m = metrics.loss(model, PromptSet.build(model, PROMPTS[:4]), activations=activations, name="loss4")
        m.assert_above(100.0)
""")


def test_update_failing_records_the_baselines_of_failing_claims(pytester, tiny_dir, tmp_path):
    """Main never baselined a failing claim, so against fresh baselines of the released model its
    measurements showed as "beyond tolerance" with drift n/a and the banner counted it as drifted."""
    pytester.makepyfile(test_claims=FAILING)
    bdir, report, md = tmp_path / "baselines", tmp_path / "r.json", tmp_path / "r.md"
    opts = (f"--circuits-baseline-dir={bdir}", f"--circuits-report={report}", f"--circuits-markdown={md}")
    # 1. a first run: no baselines yet. Every measurement is new, none is "beyond tolerance".
    _run(pytester, tiny_dir, tmp_path, *opts).assert_outcomes(failed=4)
    data = json.loads(report.read_text())
    statuses = {m["baseline"]["status"] for r in data["records"] for m in r["measurements"]}
    assert statuses == {"new"} and "measurements beyond tolerance" not in md.read_text()
    assert "drift n/a" not in md.read_text() and "| ckpt | 4 failed | 0 |" in md.read_text()
    assert "New (no baseline yet, so not a drift): 6 measurements" in md.read_text()
    # 2. update: the failing claim is not recorded...
    bdir.joinpath("ckpt.json").unlink()
    _run(pytester, tiny_dir, tmp_path, "--circuits-update-baselines", *opts).assert_outcomes(passed=3, failed=1)
    assert "test_claims.py::test_fails" not in json.loads((bdir / "ckpt.json").read_text())["claims"]
    # ... unless asked: its values are what they are (and it still fails)
    r = _run(pytester, tiny_dir, tmp_path, "--circuits-update-baselines", "--circuits-update-failing", *opts)
    r.assert_outcomes(passed=3, failed=1)
    assert "loss4" in json.loads((bdir / "ckpt.json").read_text())["claims"]["test_claims.py::test_fails"]
    data = json.loads(report.read_text())
    assert data["mode"]["update_baselines"] and data["mode"]["update_failing"]
    assert "baselines UPDATED by this run (--circuits-update-baselines --circuits-update-failing)" in md.read_text()
    # 3. the gate run: the failing claim is compared with its baseline, not "new", not drifted
    _run(pytester, tiny_dir, tmp_path, *opts).assert_outcomes(passed=3, failed=1)
    data = json.loads(report.read_text())
    fails = next(r for r in data["records"] if r["claim"] == "test_claims.py::test_fails")
    assert fails["measurements"][0]["baseline"]["status"] == "compared" and fails["measurements"][0]["baseline"]["within"]
    from pytest_circuits import report as R

    s = R.summarize(data)
    assert s.drifted("ckpt") == 0 and s.new() == [] and s.beyond() == []
    assert s.reasons == ["1 claim result failed"]
    # 4. --circuits-update-failing alone is a usage error
    r = _run(pytester, tiny_dir, tmp_path, "--circuits-update-failing", *opts)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--circuits-update-failing*add --circuits-update-baselines*"])


def test_a_drift_failure_says_which_measurement_moved_by_how_much(claims, tiny_dir, tmp_path):
    bdir, report = tmp_path / "baselines", tmp_path / "r.json"
    _run(claims, tiny_dir, tmp_path, "--circuits-update-baselines", f"--circuits-baseline-dir={bdir}")
    data = json.loads((bdir / "ckpt.json").read_text())
    entry = data["claims"]["test_claims.py::test_loss"]["loss"]
    for f in ("mean", "lower", "upper"):
        entry[f] += 1.0
    (bdir / "ckpt.json").write_text(json.dumps(data))
    _run(claims, tiny_dir, tmp_path, f"--circuits-baseline-dir={bdir}", f"--circuits-report={report}"
         ).assert_outcomes(failed=1, passed=2)
    (c,) = [c for c in json.loads(report.read_text())["claims"] if c["verdict"] == "failed"]
    assert c["reason"].startswith("1 of 1 measurements of test_claims.py::test_loss on ckpt drifted from the "
                                  "baseline of ckpt: loss ")
    assert f"vs baseline {entry['mean']:.6g} (difference -1, allowed \u00b1" in c["reason"]
    assert "obtained values written" not in c["reason"]


def test_a_dirty_working_tree_is_said_in_the_report(claims, tiny_dir, tmp_path):
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=claims.path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=claims.path, check=True)
    subprocess.run([*git, "commit", "-qm", "claims"], cwd=claims.path, check=True)
    report, md = claims.path / "r.json", claims.path / "r.md"      # in the tree: the run's own files are left out
    _run(claims, tiny_dir, tmp_path, f"--circuits-report={report}", f"--circuits-markdown={md}").assert_outcomes(
        passed=3)
    data = json.loads(report.read_text())
    assert data["worktree"] == {"dirty": False, "diff_sha256": None, "changed": 0}
    assert data["git_commit"] and "DIRTY" not in md.read_text()
    claims.path.joinpath("test_claims.py").write_text(CLAIMS + "\n# an uncommitted change\n")
    _run(claims, tiny_dir, tmp_path, f"--circuits-report={report}", f"--circuits-markdown={md}").assert_outcomes(
        passed=3)
    data = json.loads(report.read_text())
    assert data["worktree"]["dirty"] is True and len(data["worktree"]["diff_sha256"]) == 64
    assert f"commit {data['git_commit'][:12]} + uncommitted changes (DIRTY working tree" in md.read_text()


SYNTHETIC = textwrap.dedent("""
    import pytest
    from pytest_circuits import Measurement

    @pytest.mark.claim(source="test", finding="a number")
    def test_number():
        Measurement.from_values("x", [1.0, 2.0, 3.0, 4.0], model="synthetic").assert_above(0.0)
""")


def test_the_baseline_folder_and_claim_ids_do_not_follow_a_moving_rootdir(pytester, tmp_path):
    """Without an ini file, pytest's rootdir is the common ancestor of the command line's
    paths, and a path-valued option given as two words counts as one: the baseline folder
    and the claims' ids stay relative to the folder pytest was started in (#23, item 8)."""
    (pytester.path / "claims").mkdir()
    (pytester.path / "claims" / "test_synthetic.py").write_text(SYNTHETIC)
    elsewhere = tmp_path / "far" / "away" / "cache"
    elsewhere.mkdir(parents=True)
    base = ("-p", "no:cacheprovider", "--circuits-baseline", "claims")
    r = pytester.runpytest(*base, "--circuits-update-baselines")
    r.assert_outcomes(passed=1)
    written = pytester.path / "claims" / "baselines" / "synthetic.json"
    assert json.loads(written.read_text())["claims"].keys() == {"claims/test_synthetic.py::test_number"}
    # the option's value (an existing folder) moves pytest's rootdir above both folders
    r = pytester.runpytest(*base, "--circuits-cache-dir", str(elsewhere), "-v")
    r.assert_outcomes(passed=1)
    root = next(line for line in r.outlines if line.startswith("rootdir:"))
    assert str(pytester.path) not in root.split(",")[0]          # the trap is there ...
    r.stdout.fnmatch_lines(["*x[[]synthetic[]] = * baseline *, drift +0 (within 3se)*"])   # ... and avoided
    assert sorted(p.name for p in (pytester.path / "claims" / "baselines").iterdir()) == ["synthetic.json"]
    assert not list(tmp_path.rglob("synthetic.json"))


def test_a_relative_baseline_dir_in_the_ini_file_is_relative_to_it(pytester, monkeypatch):
    pytester.makeini("[pytest]\ncircuits_baseline_dir = recorded\n")
    (pytester.path / "claims").mkdir()
    (pytester.path / "claims" / "test_synthetic.py").write_text(SYNTHETIC)
    sub = pytester.path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)                      # started in another folder than the ini file's
    r = pytester.runpytest("-p", "no:cacheprovider", "--circuits-update-baselines", str(pytester.path / "claims"))
    r.assert_outcomes(passed=1)
    assert (pytester.path / "recorded" / "synthetic.json").is_file() and not (sub / "recorded").exists()
    # given on the command line, a relative folder is relative to where pytest was started
    r = pytester.runpytest("-p", "no:cacheprovider", "--circuits-update-baselines", "--circuits-baseline-dir=mine",
                           str(pytester.path / "claims"))
    r.assert_outcomes(passed=1)
    assert (sub / "mine" / "synthetic.json").is_file()
