"""Release gates across CI jobs: ``--circuits-shard K/N`` runs and ``pytest-circuits merge``,
through pytester (in-process runs on the tiny checkpoints; one xdist run in a subprocess)."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from importlib import resources

import pytest

from pytest_circuits.cli import main as cli_main
from pytest_circuits.shards import assign

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

    @pytest.mark.claim(source="test", finding="a loss below zero")
    def test_fails(model, activations):
        m = metrics.loss(model, PromptSet.build(model, PROMPTS[:3]), activations=activations, name="loss3")
        assert m.upper < 0, "the loss is never negative"

    @pytest.mark.claim(source="test", finding="needs a bigger model")
    def test_skipped(model):
        pytest.skip("not checked: needs a bigger model")

    @pytest.mark.claim(source="test", finding="has layers")
    def test_plain(model):
        assert model.cfg.n_layers >= 1
""")
ITEMS = 12   # 6 claim items x 2 models


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(test_claims=CLAIMS)
    return pytester


def _run(pytester, models, tmp_path, *extra, cache="cache"):
    return pytester.runpytest(*(f"--circuits-model={m}" for m in models),
                              f"--circuits-cache-dir={tmp_path / cache}", "-p", "no:cacheprovider", *extra)


def _merge(capsys, *args):
    status = cli_main(["merge", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out, out.err


def _comparable(data):
    """What must be the same between a serial run and merged shards."""
    return {"claims": data["claims"], "records": data["records"], "collected": data["collected"]}


def test_two_shards_merged_equal_one_serial_run(suite, tiny_dir, tiny_dir_b, tmp_path, capsys):
    models = (tiny_dir, tiny_dir_b)
    bdir = tmp_path / "baselines"
    # Baselines first (missing ones are written and the measuring claims fail), then the serial
    # run and the two shards compare with them, each with its own cold activation cache.
    _run(suite, models, tmp_path, f"--circuits-baseline-dir={bdir}", cache="c0")
    serial = tmp_path / "serial.json"
    r = _run(suite, models, tmp_path, f"--circuits-baseline-dir={bdir}", f"--circuits-report={serial}",
             cache="c-serial")
    r.assert_outcomes(passed=8, failed=2, skipped=2)
    shards = []
    for k in (1, 2):
        out = tmp_path / f"shard-{k}.json"
        r = _run(suite, models, tmp_path, f"--circuits-baseline-dir={bdir}", f"--circuits-report={out}",
                 f"--circuits-shard={k}/2", "-q", cache=f"c-{k}")
        r.stdout.fnmatch_lines(["*6 deselected*"])
        shards.append(out)
    one, two = (json.loads(p.read_text()) for p in shards)
    assert one["shard"] == {"index": 1, "count": 2} and two["shard"] == {"index": 2, "count": 2}
    # Sorted by model: each shard holds one checkpoint's claims, so each loads one model.
    assert {c["model"] for c in one["claims"]} == {"ckpt"} and {c["model"] for c in two["claims"]} == {"ckpt_b"}
    schema = json.loads(resources.files("pytest_circuits").joinpath("data/report.schema.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    for data in (one, two):
        jsonschema.validate(data, schema)
        assert len(data["claims"]) == 6 and len(data["collected"]) == ITEMS

    merged_json, md, page, junit = (tmp_path / n for n in ("merged.json", "m.md", "m.html", "m.xml"))
    status, out, err = _merge(capsys, *shards, "--json", merged_json, "--markdown", md, "--html", page,
                              "--junit", junit)
    assert status == 1   # test_fails fails on both checkpoints
    assert "test_claims.py::test_fails[ckpt]" in err and "test_claims.py::test_fails[ckpt_b]" in err
    assert "release gate FAILED" in out
    merged = json.loads(merged_json.read_text())
    jsonschema.validate(merged, schema)
    expected = json.loads(serial.read_text())
    assert _comparable(merged) == _comparable(expected)
    # read back, the merged records render as the serial run's: the same ledger records, the same
    # cells (verdicts, measurements, drifts) and the same claim rows in the Markdown
    from pytest_circuits import report as R

    assert R.records(merged) == R.records(expected) and R.rows(merged) == R.rows(expected)
    cells = [{k: (c.shown, c.reason, c.measurements, c.drifts) for k, c in R.summarize(d).cells.items()}
             for d in (merged, expected)]
    assert cells[0] == cells[1] and len(cells[0]) == ITEMS
    assert [x for x in R.markdown(merged).splitlines() if x.startswith("| `")] == \
        [x for x in R.markdown(expected).splitlines() if x.startswith("| `")]
    # the measurements and their baseline comparisons are really there (not two empty lists)
    ms = [m for r in merged["records"] for m in r["measurements"]]
    assert len(merged["records"]) == 8 and len(ms) == 12
    assert all(m["baseline"] and m["baseline"]["within"] for r in merged["records"] for m in r["measurements"]
               if r["outcome"] == "passed")
    by_id = {c["nodeid"]: c for c in merged["claims"]}
    for rec in merged["records"]:   # the claims and the records name claims and models alike
        assert (by_id[rec["nodeid"]]["claim"], by_id[rec["nodeid"]]["model"]) == (rec["claim"], rec["model"])
        assert by_id[rec["nodeid"]]["finding"] == rec["finding"]
    verdicts = {c["nodeid"]: c["verdict"] for c in merged["claims"]}
    assert verdicts["test_claims.py::test_skipped[ckpt_b]"] == "not checked"
    assert verdicts["test_claims.py::test_fails[ckpt]"] == "failed"
    assert verdicts["test_claims.py::test_plain[ckpt]"] == "passed"
    assert merged["shard"] is None and [m["path"] for m in merged["merged_from"]] == [str(p) for p in shards]
    assert "test_claims.py::test_loss" in md.read_text() and "test_claims.py::test_loss" in page.read_text()

    root = ET.parse(junit).getroot()
    cases = list(root.iter("testcase"))
    assert len(cases) == ITEMS
    assert root.get("tests") == str(ITEMS) and root.get("failures") == "2" and root.get("skipped") == "2"
    assert root.get("errors") == "0"
    assert sum(1 for c in cases if c.find("failure") is not None) == 2
    loss = next(c for c in cases if c.get("classname") == "test_claims.py::test_loss" and c.get("name") == "ckpt")
    props = {p.get("name"): p.get("value") for p in loss.iter("property")}
    rec = next(r for r in merged["records"] if r["nodeid"] == "test_claims.py::test_loss[ckpt]")
    assert props["finding"] == "the tiny model has a finite loss" and "n=5" in props["circuits:loss"]
    assert props["circuits:loss"].startswith(f"{rec['measurements'][0]['mean']:.4g}"[:4])

    # A missing shard: the merge fails, naming every claim of the missing one.
    status, out, err = _merge(capsys, shards[0])
    assert status == 1 and "6 collected claims are in no report" in err
    for c in two["claims"]:
        assert c["nodeid"] in err


def test_shard_assignment_complete_and_deterministic(pytester, tiny_dir, tiny_dir_b, tmp_path):
    """Every item in exactly one shard, for N = 1..4, on several suites; the same twice."""
    more = CLAIMS + textwrap.dedent("""
        def test_not_a_claim():
            assert True

        @pytest.mark.claim(finding="three")
        @pytest.mark.parametrize("x", ["a", "b", "c"])
        def test_params(model, x):
            pass
    """)
    tiny_only = textwrap.dedent("""
        import pytest

        @pytest.mark.claim(finding="one")
        def test_one(model):
            pass
    """)
    suites = {"two models": (CLAIMS, (tiny_dir, tiny_dir_b)), "mixed": (more, (tiny_dir, tiny_dir_b)),
              "one model": (more, (tiny_dir,)), "one item": (tiny_only, (tiny_dir,))}

    def collect(*extra):
        r = _run(pytester, models, tmp_path, "--collect-only", "-q", *extra)
        assert r.ret in (0, 5), r.stdout.str()
        return [line for line in r.stdout.lines if "::" in line]

    for name, (source, models) in suites.items():
        pytester.makepyfile(test_claims=source)
        everything = collect()
        assert everything
        for n in range(1, 5):
            parts = [collect(f"--circuits-shard={k}/{n}") for k in range(1, n + 1)]
            assert sorted(x for p in parts for x in p) == sorted(everything), (name, n)
            assert sum(len(p) for p in parts) == len(everything), (name, n)   # no item twice
            if len(everything) >= n:
                assert all(parts), (name, n)           # no empty shard
            assert max(map(len, parts)) - min(map(len, parts)) <= 1, (name, n)
            assert parts == [collect(f"--circuits-shard={k}/{n}") for k in range(1, n + 1)], (name, n)


@pytest.mark.parametrize("spec", ["0/2", "3/2", "1/0", "x/2", "1/y", "12", "1/2/3", "-1/2", "1.5/2", "/"])
def test_malformed_shard_is_a_usage_error(suite, tiny_dir, tmp_path, spec):
    r = _run(suite, (tiny_dir,), tmp_path, f"--circuits-shard={spec}")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*--circuits-shard*"])


def test_malformed_shard_in_ini_is_a_usage_error(suite, tiny_dir, tmp_path):
    suite.makeini("[pytest]\ncircuits_shard = 2/1\n")
    r = _run(suite, (tiny_dir,), tmp_path)
    assert r.ret == 4


def test_empty_shard_still_writes_its_report_and_merges(suite, tiny_dir, tmp_path, capsys):
    reports = [tmp_path / f"s{k}.json" for k in (1, 2)]
    for k, out in enumerate(reports, start=1):
        r = _run(suite, (tiny_dir,), tmp_path, "-k", "test_plain", f"--circuits-shard={k}/2",
                 f"--circuits-report={out}")
        assert r.ret == (0 if k == 1 else 5)
    empty = json.loads(reports[1].read_text())
    assert empty["claims"] == [] and empty["records"] == [] and empty["exit_status"] == 5
    assert empty["collected"] == ["test_claims.py::test_plain[ckpt]"]   # the suite after -k, before sharding
    # -k ran a selection of the suite: the claims it left out cannot be told from claims removed
    # from the reports, so the gate fails unless the selection is accepted explicitly.
    status, out, err = _merge(capsys, *reports)
    assert status == 1 and "ran a selection of the suite" in err and '"-k": "test_plain"' in err
    status, out, err = _merge(capsys, *reports, "--allow-selection")
    assert status == 0, err
    status, out, err = _merge(capsys, reports[1], "--allow-selection")    # the empty shard alone: the claim is missing
    assert status == 1 and "test_claims.py::test_plain[ckpt]" in err


def test_every_claim_skipped_still_writes_the_report(suite, tiny_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    r = _run(suite, (tiny_dir,), tmp_path, "-k", "test_skipped", f"--circuits-report={out}")
    r.assert_outcomes(skipped=1)
    data = json.loads(out.read_text())
    assert [c["verdict"] for c in data["claims"]] == ["not checked"]
    assert data["claims"][0]["reason"] == "not checked: needs a bigger model"
    status, _, err = _merge(capsys, out)     # pytest exited 0, but a gate that checked nothing fails
    assert status == 1 and "no claim was checked (1 not checked)" in err


def test_shard_with_checkup_items(pytester, tiny_dir, tmp_path):
    def collect(*extra):
        r = pytester.runpytest(f"--circuits-model={tiny_dir}", "--circuits-checkup", "--collect-only", "-q",
                               "-p", "no:cacheprovider", *extra)
        assert r.ret == 0, r.stdout.str()
        return [line for line in r.stdout.lines if "::" in line]

    everything = collect()
    assert len(everything) >= 2
    parts = [collect(f"--circuits-shard={k}/2") for k in (1, 2)]
    assert all(parts) and sorted(parts[0] + parts[1]) == sorted(everything)


def test_shards_under_xdist(suite, tiny_dir, tiny_dir_b, tmp_path):
    """-n 2 inside a shard: the same items, verdicts and suite as without xdist."""
    pytest.importorskip("xdist")
    reports = {}
    for name, extra in (("plain", ()), ("xdist", ("-n", "2"))):
        out = tmp_path / f"{name}.json"
        run = suite.runpytest_subprocess if extra else suite.runpytest   # workers need a process
        r = run(f"--circuits-model={tiny_dir}", f"--circuits-model={tiny_dir_b}",
                f"--circuits-cache-dir={tmp_path / name}", "-p", "no:cacheprovider",
                "--circuits-shard=2/3", f"--circuits-report={out}", *extra)
        assert r.ret == 1, r.stdout.str()   # test_fails is in this shard
        reports[name] = json.loads(out.read_text())
    plain, xdist = reports["plain"], reports["xdist"]
    assert len(plain["collected"]) == ITEMS and xdist["collected"] == plain["collected"]
    assert xdist["claims"] == plain["claims"] and len(plain["claims"]) == 4
    assert xdist["records"] == plain["records"] and xdist["shard"] == {"index": 2, "count": 3}


def test_assignment_matches_the_documented_rule(suite, tiny_dir, tiny_dir_b, tmp_path):
    """The plugin's shards are shards.assign over (model id, node id), the rule docs/release-gate.md states."""
    r = _run(suite, (tiny_dir, tiny_dir_b), tmp_path, "--collect-only", "-q")
    ids = [line for line in r.stdout.lines if "::" in line]
    keys = [(i.rsplit("[", 1)[1].rstrip("]").split("-")[0] if "[" in i else "", i) for i in ids]
    for k, n in ((1, 3), (2, 3), (3, 3)):
        r = _run(suite, (tiny_dir, tiny_dir_b), tmp_path, "--collect-only", "-q", f"--circuits-shard={k}/{n}")
        got = [line for line in r.stdout.lines if "::" in line]
        assert got == [i for i, s in zip(ids, assign(keys, n)) if s == k]


def test_familywise_counts_the_whole_suite_not_the_shard(suite, tiny_dir, tiny_dir_b, tmp_path):
    """Bonferroni's m is the suite's claims, not the shard's: a shard measures at the serial run's level."""
    levels = []
    for extra in ((), ("--circuits-shard=1/2",)):
        out = tmp_path / f"r{len(extra)}.json"
        r = _run(suite, (tiny_dir, tiny_dir_b), tmp_path, "-k", "test_loss", "--circuits-familywise=bonferroni",
                 f"--circuits-report={out}", *extra)
        r.assert_outcomes(passed=2 - len(extra))
        levels.append({rec["nodeid"]: rec["measurements"][0]["level"] for rec in json.loads(out.read_text())["records"]})
    assert levels[1] == {"test_claims.py::test_loss[ckpt]": levels[0]["test_claims.py::test_loss[ckpt]"]}
    assert levels[1]["test_claims.py::test_loss[ckpt]"] > 1 - 0.05 / 2    # m counts more than the shard's one claim



def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_real_reports_edited_or_made_in_update_mode_never_pass(suite, tiny_dir, tmp_path, capsys):
    """The merge re-derives each verdict from the evidence a real run records."""
    bdir = tmp_path / "baselines"
    _run(suite, (tiny_dir,), tmp_path, f"--circuits-baseline-dir={bdir}", "--circuits-update-baselines")
    out = tmp_path / "r.json"
    r = _run(suite, (tiny_dir,), tmp_path, f"--circuits-baseline-dir={bdir}", f"--circuits-report={out}")
    r.assert_outcomes(passed=4, failed=1, skipped=1)
    honest = out.read_text()
    assert _merge(capsys, out)[0] == 1           # test_fails fails: the gate fails, nothing is refused

    def passed(d):                                # the failed claim edited to passed, exit status 0
        for c in d["claims"]:
            c.update(verdict="passed", reason="") if c["verdict"] == "failed" else None
        for rec in d["records"]:
            rec["outcome"] = "passed"
        d["exit_status"] = 0

    _edit(out, passed)
    status, _, err = _merge(capsys, out)
    assert status == 2 and "test_claims.py::test_fails[ckpt]" in err and "evidence says it failed" in err
    out.write_text(honest)
    _edit(out, lambda d: d.update(exit_status=5))
    status, _, err = _merge(capsys, out)
    assert status == 2 and "exit status 5" in err
    out.write_text(honest)

    def drift(d):                                 # a measurement pushed 100 away, its tolerance widened to hide it
        rec = next(r for r in d["records"] if r["claim"] == "test_claims.py::test_loss")
        m = rec["measurements"][0]
        m.update(mean=m["mean"] + 100, lower=m["lower"] + 100, upper=m["upper"] + 100)
        m["baseline"].update(tolerance="abs:1e9", allowed=1e9, difference=100.0)

    _edit(out, drift)
    status, _, err = _merge(capsys, out)
    assert status == 2 and "test_claims.py::test_loss[ckpt]" in err
    # shards run with --circuits-update-baselines, every measurement 100 off: written, never compared
    upd = tmp_path / "u.json"
    _run(suite, (tiny_dir,), tmp_path, f"--circuits-baseline-dir={bdir}", "--circuits-update-baselines",
         f"--circuits-report={upd}")
    assert json.loads(upd.read_text())["mode"]["update_baselines"] is True
    status, stdout, err = _merge(capsys, upd)
    assert status == 1 and "made with --circuits-update-baselines" in err and "FAILED" in stdout


def test_signed_reports_from_real_runs(suite, tiny_dir, tmp_path, capsys, monkeypatch):
    from pytest_circuits.report import REPORT_KEY_ENV

    monkeypatch.setenv(REPORT_KEY_ENV, "the team's key")
    out = tmp_path / "r.json"
    _run(suite, (tiny_dir,), tmp_path, "-k", "test_loss or test_plain", f"--circuits-report={out}"
         ).assert_outcomes(passed=2)
    assert json.loads(out.read_text())["signature"].startswith("hmac-sha256:")
    assert _merge(capsys, out, "--allow-selection", "--require-signature")[0] == 0
    _edit(out, lambda d: d["claims"][0].update(finding="edited"))
    status, _, err = _merge(capsys, out, "--allow-selection")
    assert status == 2 and "signature does not match" in err
    monkeypatch.setenv(REPORT_KEY_ENV, "another key")
    status, _, err = _merge(capsys, out, "--allow-selection")
    assert status == 2 and "signature does not match" in err


def test_a_checkup_report_is_verified_against_the_installed_checkup(pytester, tiny_dir, tmp_path, capsys):
    """The checkup's claims live in the installed package (outside the rootdir) and are made in a
    loop: the merge finds them there, so their skips ("not applicable") and their completeness are
    verified, and the gate fails only for what failed."""
    out = tmp_path / "r.json"
    r = pytester.runpytest(f"--circuits-model={tiny_dir}", "--circuits-checkup", f"--circuits-report={out}",
                           f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider")
    data = json.loads(out.read_text())
    assert data["suite"]["locations"] == {"": "pytest_circuits/checkup_claims.py"}
    status, _, err = _merge(capsys, out)
    assert "cannot" not in err and "refused" not in err and "in no report" not in err, err
    failed = [c for c in data["claims"] if c["verdict"] == "failed"]
    assert status == (1 if failed or r.ret else 0)
    # a checkup claim left out of the report is found missing
    def drop_first(d):
        import hashlib

        gone = d["collected"][0]
        d["collected"] = d["collected"][1:]
        d["collected_sha256"] = hashlib.sha256("\n".join(d["collected"]).encode()).hexdigest()
        d["claims"] = [c for c in d["claims"] if c["nodeid"] != gone]
        d["records"] = [x for x in d["records"] if x["nodeid"] != gone]

    _edit(out, drop_first)
    status, _, err = _merge(capsys, out)
    assert status == 1 and "1 claim of the source is in no report's 'collected'" in err


def test_honest_edge_cases_are_not_refused(pytester, tiny_dir, tmp_path, capsys):
    """No false refusal: a claim skipped after measuring (its baseline new), one whose fixture
    fails at teardown after it passed (an error, as pytest counts it), one that passes."""
    pytester.makepyfile(test_edges="""
        import pytest
        from pytest_circuits import Measurement

        VALUES = [0.70, 0.75, 0.72, 0.74, 0.73, 0.71]

        @pytest.fixture
        def breaks_after():
            yield
            raise RuntimeError("the fixture's teardown failed")

        @pytest.mark.claim(finding="measured, then found not applicable")
        def test_skipped_after_measuring(model):
            Measurement.from_values("share", VALUES, model="ckpt")
            pytest.skip("not applicable here")

        @pytest.mark.claim(finding="passes, but its fixture fails at teardown")
        def test_teardown_error(model, breaks_after):
            Measurement.from_values("other", VALUES, model="ckpt").assert_above(0.5)

        @pytest.mark.claim(finding="passes")
        def test_passes(model):
            Measurement.from_values("third", VALUES, model="ckpt").assert_above(0.5)
    """)
    bdir, out = tmp_path / "b", tmp_path / "r.json"
    _run(pytester, (tiny_dir,), tmp_path, f"--circuits-baseline-dir={bdir}", "--circuits-update-baselines")
    r = _run(pytester, (tiny_dir,), tmp_path, f"--circuits-baseline-dir={bdir}", f"--circuits-report={out}")
    r.assert_outcomes(passed=2, skipped=1, errors=1)
    data = json.loads(out.read_text())
    verdicts = {c["nodeid"].split("::")[1].split("[")[0]: c for c in data["claims"]}
    assert verdicts["test_teardown_error"]["verdict"] == "error"
    assert "the fixture's teardown failed" in verdicts["test_teardown_error"]["reason"]
    assert verdicts["test_skipped_after_measuring"]["verdict"] == "not checked"
    skipped = next(x for x in data["records"] if "skipped_after" in x["nodeid"])
    assert skipped["measurements"][0]["baseline"]["status"] == "new"
    status, _, err = _merge(capsys, out)
    assert status == 1 and "refused" not in err and "cannot" not in err, err
    assert "test_teardown_error[ckpt] (error: " in err
