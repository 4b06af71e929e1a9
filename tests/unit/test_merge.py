"""The shard assignment rule (pytest_circuits.shards) and the merge of reports
(pytest_circuits.merge) on hand-written ledgers: every lie or malformation is an error or a
failed gate, never a passing one."""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import random
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_circuits import merge as M
from pytest_circuits.cli import main as cli_main
from pytest_circuits.shards import assign, bounds, parse_shard


# ----------------------------------------------------------------------------- shards
@pytest.mark.parametrize("spec,expected", [("1/1", (1, 1)), ("2/4", (2, 4)), (" 3 / 3 ", (3, 3)),
                                           ("10/12", (10, 12))])
def test_parse_shard(spec, expected):
    assert parse_shard(spec) == expected


@pytest.mark.parametrize("spec", ["", "1", "0/1", "2/1", "1/0", "-1/3", "a/b", "1/2/3", "1.0/2", "1/", "/2",
                                  "1//2", "one/two"])
def test_parse_shard_refuses(spec):
    with pytest.raises(ValueError, match="K"):
        parse_shard(spec)


def _keys(models: int, claims: int, params: int = 1) -> list[tuple[str, str]]:
    return [(f"m{m}", f"test_x.py::test_{c}[m{m}-{p}]") for m in range(models) for c in range(claims)
            for p in range(params)]


@pytest.mark.parametrize("models,claims,params", [(1, 1, 1), (1, 7, 1), (2, 3, 2), (3, 5, 1), (4, 1, 3), (0, 0, 0)])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_assign_is_complete_balanced_and_order_free(models, claims, params, n):
    keys = _keys(models, claims, params)
    shard = assign(keys, n)
    assert len(shard) == len(keys) and all(1 <= s <= n for s in shard)
    sizes = [shard.count(k) for k in range(1, n + 1)]
    assert sum(sizes) == len(keys) and max(sizes) - min(sizes) <= 1
    if len(keys) >= n:
        assert min(sizes) >= 1
    shuffled = keys[:]
    random.Random(n).shuffle(shuffled)
    again = dict(zip(shuffled, assign(shuffled, n)))
    assert again == dict(zip(keys, shard))         # the order of collection does not matter
    # a model's items are contiguous runs: a model is in at most ceil(items/size) + 1 shards
    for m in {k[0] for k in keys}:
        mine = sorted({s for k, s in zip(keys, shard) if k[0] == m})
        assert mine == list(range(mine[0], mine[-1] + 1))


def test_assign_keeps_models_apart_when_it_can():
    keys = _keys(2, 3)
    assert [s for _, s in sorted(zip(keys, assign(keys, 2)))] == [1, 1, 1, 2, 2, 2]


def test_bounds():
    assert bounds(5, 3) == [(0, 2), (2, 4), (4, 5)]
    assert bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]


# ----------------------------------------------------------------------------- merge
# Hand-written ledgers of schema 2 whose evidence is consistent (assertions, sems, baseline
# comparisons computed with the real code), in a checkout (tmp_path, the current directory)
# holding the claims' source t.py and their baseline file.
COLLECTED = ["t.py::test_a[m]", "t.py::test_b[m]", "t.py::test_c[m]", "t.py::test_d[m]"]
SOURCE = """
import pytest

@pytest.mark.claim(finding="a")
def test_a(model):
    pass

@pytest.mark.claim(finding="b")
def test_b(model):
    pass

@pytest.mark.claim(finding="c")
def test_c(model):
    pass

@pytest.mark.claim(finding="d")
def test_d(model):
    pass
"""
SEM = 0.1 / (3 * 2 ** 0.5)       # 3se of two equal sems: an allowance of 0.1


def _sha(text):
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _digest(collected):
    """The digest a report records of its "collected" list, computed here independently."""
    return _sha("\n".join(collected))


@pytest.fixture(autouse=True)
def checkout(tmp_path, monkeypatch):
    """The checkout the merge reads: the claims' source and their baselines (mean 0.5)."""
    (tmp_path / "t.py").write_text(SOURCE)
    folder = tmp_path / "claims" / "baselines"
    folder.mkdir(parents=True)
    entries = {n.split("[")[0]: {"loss": _entry(0.5)} for n in COLLECTED}
    (folder / "m.json").write_text(json.dumps({"model": "m", "fingerprint": "f", "versions": {}, "claims": entries}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _entry(mean, sem=SEM):
    return {"mean": mean, "lower": mean - 0.1, "upper": mean + 0.1, "n": 5, "level": 0.95, "sem": sem}


def _claim(nodeid, verdict="passed", reason=""):
    return {"nodeid": nodeid, "claim": nodeid.split("[")[0], "model": "m", "verdict": verdict, "reason": reason,
            "finding": f"finding of {nodeid}"}


def _comparison(m, entry, tolerance="3se"):
    from pytest_circuits import baselines as B

    (r,) = B.compare({"loss": m}, {"loss": entry}, tolerance)
    return {"status": "compared", "mean": r.baseline, "difference": r.difference, "tolerance": r.tolerance,
            "allowed": r.allowed if r.finite_allowance else None, "within": r.ok, "flag": r.flag, "wide": r.wide,
            "accepted": r.accepted, "spread": getattr(r, "spread", ""), "entry": dict(entry)}


def _record(nodeid, outcome="passed", mean=0.5, threshold=0.0, baseline=0.5):
    m = {"key": "loss", "name": "loss", "model": "m", "mean": mean, "lower": mean - 0.1, "upper": mean + 0.1,
         "n": 5, "level": 0.95, "sem": SEM, "flags": []}
    m["baseline"] = _comparison(m, _entry(baseline)) if baseline is not None else None
    ok = m["lower"] > threshold
    return {"claim": nodeid.split("[")[0], "nodeid": nodeid, "model": "m", "fingerprint": "local-sha256:ab",
            "outcome": outcome, "finding": "f", "source": "s", "expected_change": None, "version_changes": [],
            "assertions": [{"name": "loss", "model": "m", "kind": "above", "threshold": threshold,
                            "bound": m["lower"], "level": 0.95, "passed": ok,
                            "message": f"loss[m] = {mean} [{m['lower']}, {m['upper']}] n=5 (95% interval) -- "
                                       f"expected lower bound > {threshold}"}],
            "measurements": [m]}


def _mode(**kw):
    return {"baseline": True, "update_baselines": False, "update_failing": False, "baseline_of": None,
            "baseline_dir": "claims/baselines", "baseline_tolerance": "3se", "require_models": True,
            "familywise": "none", "level": 0.95, **kw}


def _report(nodeids, k, n, collected=COLLECTED, verdicts=None, exit_status=None, commit="abc", mode=None):
    verdicts = verdicts or {}
    claims = [_claim(i, *verdicts.get(i, ("passed", ""))) for i in nodeids]
    records = [_record(i, "failed", threshold=1.0) if verdicts.get(i, ("passed",))[0] == "failed" else _record(i)
               for i in nodeids if verdicts.get(i, ("passed",))[0] in ("passed", "failed")]
    if exit_status is None:
        exit_status = 1 if any(c["verdict"] in ("failed", "error") for c in claims) else 0 if claims else 5
    collected = sorted(collected)
    return {"schema": 2, "exit_status": exit_status, "git_commit": commit,
            "worktree": {"dirty": False, "diff_sha256": None, "changed": 0},
            "versions": {"python": "3.11", "torch": "2.5"}, "records": records, "claims": claims,
            "collected": collected, "collected_sha256": _digest(collected),
            "shard": {"index": k, "count": n} if n else None, "mode": mode or _mode(),
            "suite": {"args": ["t.py"], "selection": {}, "files": {"t.py": _sha(SOURCE)},
                      "python_files": ["test_*.py", "*_test.py"], "python_classes": ["Test"],
                      "python_functions": ["test"]}}


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def _merge(capsys, *args):
    status = cli_main(["merge", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out, out.err


def _two(tmp_path, first=None, second=None):
    a = _write(tmp_path, "a.json", first or _report(COLLECTED[:2], 1, 2))
    b = _write(tmp_path, "b.json", second or _report(COLLECTED[2:], 2, 2))
    return a, b


def test_merge_passes_and_writes_every_output(tmp_path, capsys):
    a, b = _two(tmp_path)
    out = tmp_path / "out"
    status, stdout, err = _merge(capsys, a, b, "--json", out / "m.json", "--markdown", out / "m.md",
                                 "--html", out / "m.html", "--junit", out / "m.xml")
    assert status == 0, err
    assert "release gate passed" in stdout
    merged = json.loads((out / "m.json").read_text())
    assert [c["nodeid"] for c in merged["claims"]] == COLLECTED and len(merged["records"]) == 4
    assert merged["shard"] is None and merged["exit_status"] == 0 and merged["collected"] == COLLECTED
    assert [{k: x[k] for k in ("path", "shard", "git_commit")} for x in merged["merged_from"]] == [
        {"path": str(a), "shard": {"index": 1, "count": 2}, "git_commit": "abc"},
        {"path": str(b), "shard": {"index": 2, "count": 2}, "git_commit": "abc"}]
    assert merged["merge_checks"] == [] and all(x["mode"]["baseline"] for x in merged["merged_from"])
    assert "t.py::test_a" in (out / "m.md").read_text() and "t.py::test_a" in (out / "m.html").read_text()
    jsonschema = pytest.importorskip("jsonschema")
    from importlib import resources

    schema = json.loads(resources.files("pytest_circuits").joinpath("data/report.schema.json").read_text())
    jsonschema.validate(merged, schema)
    root = ET.parse(out / "m.xml").getroot()
    assert root.get("tests") == "4" and root.get("failures") == "0" and root.get("errors") == "0"


@pytest.mark.parametrize("verdict,exit_status", [("failed", 1), ("error", 1), ("failed", 2), ("error", 3)])
def test_a_failed_claim_fails_the_merge(tmp_path, capsys, verdict, exit_status):
    lying = _report(COLLECTED[2:], 2, 2, verdicts={"t.py::test_c[m]": (verdict, "boom")}, exit_status=exit_status)
    status, stdout, err = _merge(capsys, *_two(tmp_path, second=lying), "--junit", tmp_path / "j.xml")
    assert status == 1 and "t.py::test_c[m]" in err and "boom" in err
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.get("failures" if verdict == "failed" else "errors") == "1"
    case = next(c for c in root.iter("testcase") if c.get("classname") == "t.py::test_c")
    assert case.find("failure" if verdict == "failed" else "error").get("message") == "boom"


@pytest.mark.parametrize("verdict", ["failed", "error"])
def test_exit_status_0_with_a_failed_claim_is_refused(tmp_path, capsys, verdict):
    lying = _report(COLLECTED[2:], 2, 2, verdicts={"t.py::test_c[m]": (verdict, "boom")}, exit_status=0)
    status, _, err = _merge(capsys, *_two(tmp_path, second=lying))
    assert status == 2 and "b.json" in err and "exit status 0 although claims failed: t.py::test_c[m]" in err


def test_a_failed_record_under_a_passed_verdict_is_refused(tmp_path, capsys):
    lying = _report(COLLECTED[2:], 2, 2)
    lying["records"][0]["outcome"] = "failed"
    status, _, err = _merge(capsys, *_two(tmp_path, second=lying))
    assert status == 2 and "b.json" in err and "t.py::test_c[m]" in err and "outcome is 'failed'" in err


@pytest.mark.parametrize("exit_status,fails", [(0, False), (1, True), (2, True), (3, True), (4, True)])
def test_job_exit_status(tmp_path, capsys, exit_status, fails):
    status, _, err = _merge(capsys, *_two(tmp_path, second=_report(COLLECTED[2:], 2, 2, exit_status=exit_status)))
    assert status == (1 if fails else 0)
    assert ("exit status" in err) == fails


def test_exit_status_5_on_a_shard_that_ran_claims_is_refused(tmp_path, capsys):
    """Attack: a shard whose claims ran (and failed) relabelled as "no tests collected"."""
    lying = _report(COLLECTED[2:], 2, 2, exit_status=5)
    status, _, err = _merge(capsys, *_two(tmp_path, second=lying))
    assert status == 2 and "b.json" in err and "exit status 5 (no tests ran) although it reports 2 claims" in err
    empty = _report([], 2, 2, collected=COLLECTED, exit_status=5)     # an empty shard: 5 is what it is
    assert M._consistency("x", empty) == []


def test_missing_shard_names_the_missing_claims(tmp_path, capsys):
    a, _ = _two(tmp_path)
    status, _, err = _merge(capsys, a, "--junit", tmp_path / "j.xml")
    assert status == 1 and "2 collected claims are in no report" in err
    assert "t.py::test_c[m]" in err and "t.py::test_d[m]" in err
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.get("tests") == "4" and root.get("errors") == "2"


UNAVAILABLE = "not checked: model 'm' unavailable: no weights here"


def test_skipped_claims_are_reported_not_failed(tmp_path, capsys):
    second = _report(COLLECTED[2:], 2, 2, verdicts={"t.py::test_d[m]": ("not checked", UNAVAILABLE)},
                     mode=_mode(require_models=False))
    first = _report(COLLECTED[:2], 1, 2, mode=_mode(require_models=False))
    status, _, err = _merge(capsys, *_two(tmp_path, first, second), "--junit", tmp_path / "j.xml")
    assert status == 0, err
    skipped = [c for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase") if c.find("skipped") is not None]
    assert len(skipped) == 1 and "no weights" in skipped[0].find("skipped").get("message")


def test_a_gate_that_checked_nothing_fails(tmp_path, capsys):
    skipped = {n: ("not checked", UNAVAILABLE) for n in COLLECTED}
    mode = _mode(require_models=False)
    status, _, err = _merge(capsys, *_two(tmp_path, _report(COLLECTED[:2], 1, 2, verdicts=skipped, mode=mode),
                                          _report(COLLECTED[2:], 2, 2, verdicts=skipped, mode=mode)))
    assert status == 1 and "no claim was checked (4 not checked)" in err
    empty = _write(tmp_path, "e.json", _report([], 1, 1, collected=[], exit_status=5))
    status, _, err = _merge(capsys, empty)
    assert status == 1 and "no report collected any claim" in err


def test_overlapping_shards(tmp_path, capsys):
    first = _report(COLLECTED[:3], 1, 2)
    status, _, err = _merge(capsys, *_two(tmp_path, first=first))      # test_c in both, identical: fine
    assert status == 0, err
    other = _report(COLLECTED[:3], 1, 2)
    other["records"][2]["fingerprint"] = "local-sha256:cd"             # ... but not if they disagree
    status, _, err = _merge(capsys, *_two(tmp_path, first=other))
    assert status == 2 and "t.py::test_c" in err and "differently" in err
    other = _report(COLLECTED[:3], 1, 2, verdicts={"t.py::test_c[m]": ("not checked", UNAVAILABLE)},
                    mode=_mode(require_models=False))
    status, _, err = _merge(capsys, *_two(tmp_path, first=other))
    assert status == 2 and "different working trees" not in err     # the modes differ, not the trees
    status, _, err = _merge(capsys, *_two(tmp_path, first=other))
    assert status == 2 and "differently" in err


def test_mismatched_suites(tmp_path, capsys):
    second = _report(COLLECTED[2:], 2, 2, collected=COLLECTED + ["t.py::test_e[m]"])
    status, _, err = _merge(capsys, *_two(tmp_path, second=second))
    assert status == 2 and "different suites" in err and "t.py::test_e[m]" in err and "a.json" in err
    status, _, err = _merge(capsys, *_two(tmp_path, second=second), "--allow-mixed")
    assert status == 2       # a different suite is never mixed in: completeness could not be judged


def test_other_checkpoints_suites_merge(tmp_path, capsys):
    """Jobs of a checkpoints x shards matrix: one suite per checkpoint, disjoint node ids."""
    other = [n.replace("[m]", "[m2]") for n in COLLECTED]
    c = _write(tmp_path, "c.json", _report(other, 1, 1, collected=other))
    status, stdout, err = _merge(capsys, *_two(tmp_path), c, "--json", tmp_path / "m.json")
    assert status == 0, err
    assert len(json.loads((tmp_path / "m.json").read_text())["collected"]) == 8


def test_different_shard_counts_of_one_suite(tmp_path, capsys):
    second = _report(COLLECTED[2:], 3, 3)
    status, _, err = _merge(capsys, *_two(tmp_path, second=second))
    assert status == 2 and "split it differently" in err


@pytest.mark.parametrize("what", ["git_commit", "versions"])
def test_mixed_commits_or_versions(tmp_path, capsys, what):
    second = _report(COLLECTED[2:], 2, 2)
    if what == "git_commit":
        second["git_commit"] = "def"
    else:
        second["versions"]["torch"] = "2.6"
    a, b = _two(tmp_path, second=second)
    status, _, err = _merge(capsys, a, b)
    assert status == 2 and "--allow-mixed" in err and ("def" in err if what == "git_commit" else "torch" in err)
    status, _, err = _merge(capsys, a, b, "--allow-mixed", "--json", tmp_path / "m.json")
    assert status == 0, err
    merged = json.loads((tmp_path / "m.json").read_text())
    if what == "git_commit":
        assert merged["git_commit"] is None
    else:
        assert merged["versions"]["torch"] == "mixed: 2.5, 2.6"


def _corrupt(data):
    for label, change in [
        ("not an object", lambda d: [d]),
        ("no collected", lambda d: {k: v for k, v in d.items() if k != "collected"}),
        ("no claims", lambda d: {k: v for k, v in d.items() if k != "claims"}),
        ("no records", lambda d: {k: v for k, v in d.items() if k != "records"}),
        ("schema 1", lambda d: {**d, "schema": 1}),
        ("schema 3", lambda d: {**d, "schema": 3}),
        ("no mode", lambda d: {k: v for k, v in d.items() if k != "mode"}),
        ("no suite", lambda d: {k: v for k, v in d.items() if k != "suite"}),
        ("no digest", lambda d: {k: v for k, v in d.items() if k != "collected_sha256"}),
        ("a merged report", lambda d: {**d, "merged_from": []}),
        ("record without assertions", lambda d: {**d, "records": [{k: v for k, v in d["records"][0].items()
                                                                     if k != "assertions"}] + d["records"][1:]}),
        ("measurement without sem", lambda d: {**d, "records": [{**d["records"][0], "measurements": [
            {k: v for k, v in d["records"][0]["measurements"][0].items() if k != "sem"}]}] + d["records"][1:]}),
        ("comparison without status", lambda d: {**d, "records": [{**d["records"][0], "measurements": [
            {**d["records"][0]["measurements"][0], "baseline": {"mean": 0.5, "tolerance": "3se"}}]}]
            + d["records"][1:]}),
        ("exit status text", lambda d: {**d, "exit_status": "0"}),
        ("exit status bool", lambda d: {**d, "exit_status": False}),
        ("claims not a list", lambda d: {**d, "claims": {}}),
        ("claim without verdict", lambda d: {**d, "claims": [{k: v for k, v in d["claims"][0].items()
                                                               if k != "verdict"}] + d["claims"][1:]}),
        ("unknown verdict", lambda d: {**d, "claims": [{**d["claims"][0], "verdict": "fine"}] + d["claims"][1:]}),
        ("collected not strings", lambda d: {**d, "collected": [1, 2]}),
        ("claim outside collected", lambda d: {**d, "collected": d["collected"][1:]}),
        ("claim twice", lambda d: {**d, "claims": d["claims"] + d["claims"][:1]}),
        ("record without claim", lambda d: {**d, "claims": d["claims"][1:]}),
        ("record without measurements", lambda d: {**d, "records": [{**d["records"][0], "measurements": None}]}),
        ("bad shard", lambda d: {**d, "shard": {"index": 3, "count": 2}}),
        ("unknown outcome", lambda d: {**d, "records": [{**d["records"][0], "outcome": "FAILED"}]}),
        ("bad measurement", lambda d: {**d, "records": [{**d["records"][0], "measurements": [{"mean": "x"}]}]}),
    ]:
        yield label, change(copy.deepcopy(data))


@pytest.mark.parametrize("label", [label for label, _ in _corrupt(_report(COLLECTED[:2], 1, 2))])
def test_corrupted_reports_are_refused_naming_the_file(tmp_path, capsys, label):
    data = dict(_corrupt(_report(COLLECTED[:2], 1, 2)))[label]
    a, b = _two(tmp_path, first=data)
    status, stdout, err = _merge(capsys, a, b, "--json", tmp_path / "m.json")
    assert status == 2 and str(a) in err and "error" in err
    assert not (tmp_path / "m.json").exists()


def test_corrupted_reports_are_refused_without_jsonschema(tmp_path, capsys, monkeypatch):
    """The checks the gate's verdict relies on do not need the optional jsonschema."""
    import sys

    monkeypatch.setitem(sys.modules, "jsonschema", None)     # import jsonschema -> ImportError
    for label, data in _corrupt(_report(COLLECTED[:2], 1, 2)):
        a, b = _two(tmp_path, first=data)
        status, _, err = _merge(capsys, a, b)
        assert status == 2 and str(a) in err, label


@pytest.mark.parametrize("text", ["", "   \n", "{not json", "null", "42", "\"report\"", "[]", "{}"])
def test_non_reports_are_refused(tmp_path, capsys, text):
    bad = _write(tmp_path, "bad.json", text)
    status, _, err = _merge(capsys, bad)
    assert status == 2 and str(bad) in err


def test_unreadable_and_missing_files(tmp_path, capsys):
    status, _, err = _merge(capsys, tmp_path / "nope.json")
    assert status == 2 and "nope.json" in err and "cannot be read" in err
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    status, _, err = _merge(capsys, binary)
    assert status == 2 and "bin.json" in err


def test_expect_reports(tmp_path, capsys):
    a, b = _two(tmp_path)
    assert _merge(capsys, a, b, "--expect-reports", "2")[0] == 0
    status, _, err = _merge(capsys, a, b, "--expect-reports", "3")
    assert status == 2 and "--expect-reports 3" in err


def test_merge_is_order_free(tmp_path):
    reports = [(str(p), M.load_report(p)) for p in _two(tmp_path)]
    results = []
    for order in itertools.permutations(reports):
        m = M.merge(list(order))
        results.append({k: v for k, v in m.items() if k != "merged_from"})
    assert all(r == results[0] for r in results)


def test_junit_properties_carry_measurements(tmp_path):
    merged = M.merge([(str(p), M.load_report(p)) for p in _two(tmp_path)])
    root = ET.fromstring(M.junit_xml(merged))
    case = next(c for c in root.iter("testcase") if c.get("classname") == "t.py::test_a")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["circuits:loss"].startswith("0.5 [0.4, 0.6] n=5")
    assert "within 3se" in props["circuits:loss"] and props["finding"] == "finding of t.py::test_a[m]"


def test_junit_escapes_hostile_text(tmp_path):
    data = _report(COLLECTED, 1, 1, verdicts={"t.py::test_a[m]": ("failed", "<b>&\"'\x1b]]>")})
    merged = M.merge([("x.json", data)])
    root = ET.fromstring(M.junit_xml(merged))
    assert root.get("failures") == "1"


# ----------------------------------------------------------------------------- the documented workflow
WORKFLOW = Path(__file__).resolve().parents[2] / "docs" / "ci" / "release-gate.yml"


def _commands(text: str) -> tuple[str, str]:
    """The shard job's pytest command and the merge job's command, joined into one line each."""
    flat = " ".join(line.strip() for line in text.splitlines() if not line.strip().startswith("#"))
    pytest_cmd = flat[flat.index("-m pytest claims/"):flat.index("- name: upload the report")]
    merge_cmd = flat[flat.index("pytest-circuits merge"):flat.index("|| status=$?")]
    return pytest_cmd, merge_cmd


def test_workflow_commands_use_real_options():
    """Every option the workflow passes exists: pytest's in the plugin, merge's in its parser."""
    from pytest_circuits import _options
    from pytest_circuits.cli import _parser

    text = WORKFLOW.read_text()
    pytest_cmd, merge_cmd = _commands(text)
    flags = set(re.findall(r"--circuits-[a-z-]+", pytest_cmd))
    assert {"--circuits-model", "--circuits-shard", "--circuits-cache-dir", "--circuits-report"} <= flags
    source = inspect.getsource(_options.add_options)
    for flag in flags:
        assert f'"{flag}"' in source, flag
    assert '--circuits-shard "${{ matrix.shard }}/${SHARDS}"' in pytest_cmd
    assert '--circuits-cache-dir "${CIRCUITS_CACHE}"' in pytest_cmd and "CIRCUITS_CACHE: s3://" in text
    args = _parser().parse_args(shlex.split(merge_cmd.replace("reports/*.json", "a.json b.json"))[1:])
    assert args.command == "merge" and args.reports == ["a.json", "b.json"] and args.markdown and args.junit
    assert 'cat release/report.md >> "$GITHUB_STEP_SUMMARY"' in text and 'exit "$status"' in text
    assert "actions/upload-artifact" in text and "actions/download-artifact" in text


def test_workflow_is_valid_yaml_with_the_matrix_and_the_merge():
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load(WORKFLOW.read_text())
    jobs = wf["jobs"]
    matrix = jobs["claims"]["strategy"]["matrix"]
    shards = int(wf["env"]["SHARDS"])
    assert matrix["shard"] == list(range(1, shards + 1)) and len(matrix["checkpoint"]) >= 2
    assert jobs["claims"]["strategy"]["fail-fast"] is False
    steps = jobs["claims"]["steps"]
    assert any("--circuits-shard" in (s.get("run") or "") for s in steps)
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["if-no-files-found"] == "error"
    final = jobs["release-report"]
    assert final["needs"] == "claims" and final["if"] == "always()"
    run = "\n".join(s.get("run") or "" for s in final["steps"])
    expect = int(re.search(r"--expect-reports (\d+)", run)[1])
    assert expect == len(matrix["checkpoint"]) * len(matrix["shard"])
    assert "pytest-circuits merge" in run and "GITHUB_STEP_SUMMARY" in run


def test_a_failed_claim_beyond_its_tolerance_fails_the_merged_gate_as_the_banner_says(tmp_path, capsys):
    drifted = _report(COLLECTED[2:], 2, 2, verdicts={"t.py::test_c[m]": ("failed", "drifted")})
    drifted["records"][0] = _record("t.py::test_c[m]", "failed", mean=0.8)   # 0.3 from its baseline, allowed 0.1
    assert drifted["records"][0]["measurements"][0]["baseline"]["within"] is False
    out = tmp_path / "m.md"
    status, _, err = _merge(capsys, *_two(tmp_path, second=drifted), "--markdown", out)
    assert status == 1 and "t.py::test_c" in err and "drifted" in err
    assert "FAILED" in out.read_text() and "beyond tolerance" in out.read_text()


@pytest.mark.parametrize("lie", ["drifted", "says within", "cannot be computed", "allowance edited"])
def test_a_passing_claim_beyond_its_tolerance_is_refused(tmp_path, capsys, lie):
    """A claim that passed with a measurement beyond its baseline: the plugin would have failed it."""
    drifted = _report(COLLECTED[2:], 2, 2)
    rec = drifted["records"][0] = _record("t.py::test_c[m]", mean=0.8)
    b = rec["measurements"][0]["baseline"]
    if lie == "says within":
        b["within"] = True
    elif lie == "cannot be computed":
        b.update({"difference": float("nan"), "within": True})
    elif lie == "allowance edited":
        b.update({"allowed": 1.0, "within": True})
    status, _, err = _merge(capsys, *_two(tmp_path, second=drifted))
    assert status == 2 and "b.json" in err and "t.py::test_c[m]" in err and "contradicts itself" in err


# ----------------------------------------------------------------------------- attacks on the merge
# Each was green on main (pytest-circuits merge re-derived nothing). They are refused (exit 2,
# naming the file and the claim) when the report contradicts itself or its source, and fail the
# gate (exit 1) when something cannot be verified.
FAILED_C = {"t.py::test_c[m]": ("failed", "loss[m] = 0.5 ... -- expected lower bound > 1.0")}


def _failed_second():
    return _report(COLLECTED[2:], 2, 2, verdicts=FAILED_C)


def _edit_to_passed(data, verdict="passed", outcome="passed"):
    c = next(c for c in data["claims"] if c["nodeid"] == "t.py::test_c[m]")
    c.update(verdict=verdict, reason="")
    data["records"][0]["outcome"] = outcome
    data["exit_status"] = 0
    return data


@pytest.mark.parametrize("how", ["verdict", "assertion flag", "assertion bound"])
def test_attack_a_failed_claim_edited_to_passed_is_refused(tmp_path, capsys, how):
    data = _edit_to_passed(_failed_second())
    a = data["records"][0]["assertions"][0]
    if how in ("assertion flag", "assertion bound"):
        a["passed"] = True
    if how == "assertion bound":
        a["bound"] = 1.5
    status, _, err = _merge(capsys, *_two(tmp_path, second=data))
    assert status == 2 and "b.json" in err and "t.py::test_c[m]" in err
    assert {"verdict": "evidence says it failed", "assertion flag": "says passed=True but the bound misses",
            "assertion bound": "the bound is not the measurement's own"}[how] in err


@pytest.mark.parametrize("verdict,outcome", [("xpassed", "xpassed"), ("not checked", "skipped"),
                                             ("expected change", "xfailed"), ("xfailed", "xfailed")])
def test_attack_a_failed_claim_relabelled_is_refused(tmp_path, capsys, verdict, outcome):
    data = _edit_to_passed(_failed_second(), verdict, outcome)
    if verdict == "expected change":
        data["records"][0]["expected_change"] = "expected change on m: it moved"
    status, _, err = _merge(capsys, *_two(tmp_path, second=data))
    assert status == 2 and "t.py::test_c[m]" in err, err
    if verdict in ("expected change", "xfailed"):     # the evidence may fail: the source must declare it
        assert "its source declares no" in err


def test_an_expected_change_the_source_declares_is_accepted(tmp_path, capsys, checkout):
    (checkout / "t.py").write_text(SOURCE.replace('@pytest.mark.claim(finding="c")',
                                                  '@pytest.mark.claim(finding="c")\n'
                                                  '@pytest.mark.expect_change("m", reason="it moved")'))
    data = _edit_to_passed(_failed_second(), "expected change", "xfailed")
    data["records"][0]["expected_change"] = "expected change on m: it moved"
    first, second = _report(COLLECTED[:2], 1, 2), data
    for d in (first, second):
        d["suite"]["files"]["t.py"] = _sha((checkout / "t.py").read_text())
    status, _, err = _merge(capsys, *_two(tmp_path, first, second))
    assert status == 0, err
    # ... for the model it names only
    second["claims"][1]["verdict"] = "expected change"
    status, _, err = _merge(capsys, *_two(tmp_path, first, second))
    assert status == 2 and "t.py::test_d[m]" in err


def test_attack_every_claim_xfailed(tmp_path, capsys, checkout):
    xf = {n: ("xfailed", "") for n in COLLECTED}

    def reports():
        out = []
        for part, k in ((COLLECTED[:2], 1), (COLLECTED[2:], 2)):
            d = _report(part, k, 2, verdicts=xf)
            d["records"] = [_record(n, "xfailed", threshold=1.0) for n in part]
            d["exit_status"] = 0
            d["suite"]["files"]["t.py"] = _sha((checkout / "t.py").read_text())
            out.append(d)
        return out

    status, _, err = _merge(capsys, *_two(tmp_path, *reports()))
    assert status == 2 and "declares no xfail" in err
    (checkout / "t.py").write_text(SOURCE.replace("def test_", "@pytest.mark.xfail(reason='r')\ndef test_"))
    status, _, err = _merge(capsys, *_two(tmp_path, *reports()))      # declared: still no claim passed
    assert status == 1 and "no claim passed" in err


@pytest.mark.parametrize("verdict,expected", [("passed", 2), ("failed", 1)])
def test_attack_nan_measurements(tmp_path, capsys, verdict, expected):
    data = _failed_second() if verdict == "failed" else _report(COLLECTED[2:], 2, 2)
    m = data["records"][0]["measurements"][0]
    m.update(mean=float("nan"), lower=float("nan"), upper=float("nan"))
    data["records"][0]["assertions"] = []
    status, _, err = _merge(capsys, *_two(tmp_path, second=data))
    assert status == expected, err
    assert "not a finite number" in err if expected == 2 else "t.py::test_c[m]" in err


@pytest.mark.parametrize("tolerance", ["abs:1e9", "rel:1000", "updated", "lots", "3 se"])
def test_attack_a_tolerance_that_hides_a_drift_is_refused(tmp_path, capsys, tolerance):
    data = _report(COLLECTED[2:], 2, 2)
    rec = data["records"][0] = _record("t.py::test_c[m]", mean=0.8)      # 0.3 off its baseline: drifted
    b = rec["measurements"][0]["baseline"]
    b.update(tolerance=tolerance, within=True, flag="")
    if tolerance.startswith(("abs", "rel")):   # a consistent lie: the allowance its tolerance gives
        b["allowed"] = 1e9 if tolerance.startswith("abs") else 500.0
    if tolerance == "updated":
        b["status"] = "updated"
    status, _, err = _merge(capsys, *_two(tmp_path, second=data))
    assert status == 2 and "b.json" in err and "t.py::test_c[m]" in err, err


def test_attack_a_claim_removed_from_every_collected_list(tmp_path, capsys):
    first, second = _report(COLLECTED[:2], 1, 2), _report(COLLECTED[2:], 2, 2)
    for d in (first, second):
        d["collected"] = COLLECTED[:3]
    second["claims"] = second["claims"][:1]
    second["records"] = second["records"][:1]
    status, _, err = _merge(capsys, *_two(tmp_path, first, second))       # the digest was not updated
    assert status == 2 and "collected_sha256" in err
    for d in (first, second):
        d["collected_sha256"] = _digest(d["collected"])
    status, _, err = _merge(capsys, *_two(tmp_path, first, second))       # ... and now it was: the source says
    assert status == 1 and "1 claim of the source is in no report's 'collected'" in err and "t.py::test_d" in err


def test_a_whole_file_of_claims_removed_from_the_reports(tmp_path, capsys, checkout):
    (checkout / "test_more.py").write_text(SOURCE.replace("test_a", "test_z"))
    for d in (first := _report(COLLECTED[:2], 1, 2), second := _report(COLLECTED[2:], 2, 2)):
        d["suite"]["args"] = ["."]
    status, _, err = _merge(capsys, *_two(tmp_path, first, second))
    assert status == 1 and "test_more.py::test_z" in err


def test_attack_update_baselines_shards_cannot_pass(tmp_path, capsys):
    reports = []
    for part, k in ((COLLECTED[:2], 1), (COLLECTED[2:], 2)):
        d = _report(part, k, 2, mode=_mode(update_baselines=True))
        for r in d["records"]:
            for m in r["measurements"]:
                m["mean"] += 100
                m["lower"] += 100
                m["upper"] += 100
                m["baseline"] = {"status": "updated", "mean": m["mean"], "difference": 0.0, "tolerance": "updated",
                                 "allowed": None, "within": True, "flag": ""}
            r["assertions"] = []
        reports.append(d)
    md = tmp_path / "m.md"
    status, _, err = _merge(capsys, *_two(tmp_path, *reports), "--markdown", md)
    assert status == 1 and "made with --circuits-update-baselines" in err
    assert "FAILED" in md.read_text() and "baselines UPDATED by this run" in md.read_text()


def test_attack_a_wide_self_consistent_baseline_is_refused(tmp_path, capsys):
    """mean +100, interval +-300, sem 100 at n=6 against a measurement whose own sem is ~0.3."""
    from pytest_circuits import baselines as B

    data = _report(COLLECTED[2:], 2, 2)
    rec = data["records"][0]
    m = rec["measurements"][0]
    m.update(mean=5.0, lower=4.4, upper=5.6, n=6, sem=0.3)
    rec["assertions"][0].update(bound=4.4)
    wide = {"mean": -95.0, "lower": -395.0, "upper": 205.0, "n": 6, "level": 0.95, "sem": 100.0}
    (row,) = B.compare({"loss": m}, {"loss": wide}, "3se")
    assert row.within and not row.wide and row.spread      # within its 3se, not "wide": only the new rule sees it
    b = _comparison(m, wide)
    b.update(within=True, spread="", flag="")
    m["baseline"] = b
    status, _, err = _merge(capsys, *_two(tmp_path, second=data))
    assert status == 2 and "t.py::test_c[m]" in err and "333 times the fresh measurement's" in err


def test_the_source_must_be_there_and_the_same(tmp_path, capsys, checkout):
    a, b = _two(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status, _, err = _merge(capsys, a, b, "--source-root", elsewhere)
    assert status == 1 and "not in the checkout" in err and "--source-root" in err
    (checkout / "t.py").write_text(SOURCE + "\n# edited\n")
    status, _, err = _merge(capsys, a, b)
    assert status == 1 and "is not the file the run read" in err


def test_a_baseline_that_is_not_the_checkouts_fails(tmp_path, capsys, checkout):
    path = checkout / "claims" / "baselines" / "m.json"
    data = json.loads(path.read_text())
    data["claims"]["t.py::test_c"]["loss"]["mean"] = 0.55
    path.write_text(json.dumps(data))
    status, _, err = _merge(capsys, *_two(tmp_path))
    assert status == 1 and "differs from" in err and "t.py::test_c[m] loss (mean 0.5 vs 0.55)" in err


def test_a_tolerance_the_source_does_not_give_is_refused(tmp_path, capsys, checkout):
    (checkout / "t.py").write_text(SOURCE.replace('@pytest.mark.claim(finding="c")',
                                                  '@pytest.mark.claim(finding="c")\n'
                                                  '@pytest.mark.baseline(tolerance={"loss": "abs:0.2"})'))
    first, second = _report(COLLECTED[:2], 1, 2), _report(COLLECTED[2:], 2, 2)
    for d in (first, second):
        d["suite"]["files"]["t.py"] = _sha((checkout / "t.py").read_text())
    status, _, err = _merge(capsys, *_two(tmp_path, first, second))      # the report says 3se
    assert status == 2 and "t.py::test_c[m]" in err and "abs:0.2" in err
    m = second["records"][0]["measurements"][0]
    m["baseline"] = _comparison(m, _entry(0.5), "abs:0.2")
    status, _, err = _merge(capsys, *_two(tmp_path, first, second))
    assert status == 0, err


@pytest.mark.parametrize("require,optional,expected", [(True, False, 2), (True, True, 0), (False, False, 0)])
def test_not_checked_needs_a_cause(tmp_path, capsys, checkout, require, optional, expected):
    if optional:
        (checkout / "t.py").write_text(SOURCE.replace('@pytest.mark.claim(finding="d")',
                                                      '@pytest.mark.claim(finding="d")\n'
                                                      '@pytest.mark.model("m", optional="not here")'))
    reason = ("not checked: model 'm' is optional here (not here): gone" if optional else UNAVAILABLE)
    first = _report(COLLECTED[:2], 1, 2, mode=_mode(require_models=require))
    second = _report(COLLECTED[2:], 2, 2, verdicts={"t.py::test_d[m]": ("not checked", reason)},
                     mode=_mode(require_models=require))
    for d in (first, second):
        d["suite"]["files"]["t.py"] = _sha((checkout / "t.py").read_text())
    status, _, err = _merge(capsys, *_two(tmp_path, first, second))
    assert status == expected, err
    if expected == 2:
        assert "t.py::test_d[m]" in err and "nothing in its source can skip it and the run required its models" in err


def test_dirty_and_clean_trees_do_not_mix(tmp_path, capsys):
    dirty = _report(COLLECTED[2:], 2, 2)
    dirty["worktree"] = {"dirty": True, "diff_sha256": "ab" * 32, "changed": 1}
    status, _, err = _merge(capsys, *_two(tmp_path, second=dirty))
    assert status == 2 and "different working trees" in err and "dirty" in err
    first = _report(COLLECTED[:2], 1, 2)
    first["worktree"] = dict(dirty["worktree"])
    status, out, err = _merge(capsys, *_two(tmp_path, first, dirty))
    assert status == 0, err
    assert "DIRTY working tree" in out        # the identity line says so


def test_signed_reports(tmp_path, capsys, monkeypatch):
    from pytest_circuits import report as R

    first, second = _report(COLLECTED[:2], 1, 2), _report(COLLECTED[2:], 2, 2)
    monkeypatch.setenv(R.REPORT_KEY_ENV, "team secret")
    status, _, err = _merge(capsys, *_two(tmp_path, first, second))
    assert status == 2 and "it is not signed" in err
    for d in (first, second):
        R.sign(d)
    assert first["signature"].startswith("hmac-sha256:")
    assert _merge(capsys, *_two(tmp_path, first, second))[0] == 0
    second["claims"][0]["reason"] = "edited"
    status, _, err = _merge(capsys, *_two(tmp_path, first, second))
    assert status == 2 and "b.json" in err and "signature does not match" in err
    monkeypatch.delenv(R.REPORT_KEY_ENV)
    status, _, err = _merge(capsys, *_two(tmp_path, first, second), "--require-signature")
    assert status == 2 and "--require-signature" in err


def test_the_verdict_of_every_consistent_report_is_rederived_the_same(tmp_path):
    """Control: the honest reports of this file contradict nothing (no false refusal)."""
    for d in (_report(COLLECTED[:2], 1, 2), _failed_second(), _report([], 1, 1, exit_status=5),
              _report(COLLECTED[2:], 2, 2, verdicts={"t.py::test_d[m]": ("error", "teardown")})):
        assert M._consistency("x", d) == []


def _paths(x, prefix=()):
    """Every (path, value) of a JSON value, depth first."""
    yield prefix, x
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, prefix + (i,))


def test_fuzzed_reports_never_crash_the_merge(tmp_path, capsys):
    """Any field of a report replaced by a hostile value: exit 0, 1 or 2 with a message, never a
    foreign exception; and a failed claim's report never passes."""
    rng = random.Random(21)
    hostile = [None, "", "x" * 3, -1, 0, 10 ** 400, 1e308, float("nan"), float("inf"), -0.0, True, [], {},
               [1, 2], {"a": 1}, "abs:1e9", "updated", "../../../etc/passwd", "/", "3se"]
    base = _failed_second()
    paths = [p for p, _ in _paths(base) if p]
    first = _write(tmp_path, "a.json", _report(COLLECTED[:2], 1, 2))
    for i in range(400):
        data = copy.deepcopy(base)
        for _ in range(rng.choice((1, 1, 2, 3))):
            path = rng.choice(paths)
            node = data
            try:
                for k in path[:-1]:
                    node = node[k]
                node[path[-1]] = rng.choice(hostile)
            except (KeyError, IndexError, TypeError):
                continue
        second = tmp_path / "b.json"
        second.write_text(json.dumps(data))
        status = cli_main(["merge", str(first), str(second)])
        err = capsys.readouterr().err
        assert status in (1, 2), (i, status, err)     # t.py::test_c failed: never a pass
        assert "Traceback" not in err


# ----------------------------------------------------------------------------- figures
FIGURE = ('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="5" height="5"/>'
          '<title>edges</title></svg>')


def test_the_merge_keeps_the_figures_of_every_shard(tmp_path, capsys):
    first, second = _report(COLLECTED[:2], 1, 2), _report(COLLECTED[2:], 2, 2)
    first["records"][0]["figures"] = [{"name": "circuit", "caption": "shard 1", "svg": FIGURE}]
    second["records"][1]["figures"] = [{"name": "circuit", "caption": "shard 2", "svg": FIGURE.replace("5", "7")}]
    out = tmp_path / "out"
    status, _, err = _merge(capsys, *_two(tmp_path, first, second), "--json", out / "m.json", "--html", out / "m.html")
    assert status == 0, err
    merged = {r["nodeid"]: r["figures"] for r in json.loads((out / "m.json").read_text())["records"]}
    assert merged == {COLLECTED[0]: first["records"][0]["figures"], COLLECTED[1]: [],
                      COLLECTED[2]: [], COLLECTED[3]: second["records"][1]["figures"]}
    page = (out / "m.html").read_text()
    assert page.count('src="data:image/svg+xml;base64,') == 2


@pytest.mark.parametrize("svg, words", [
    ('<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("//x")</script></svg>', "<script>"),
    ('<svg xmlns="http://www.w3.org/2000/svg" onload="x()"/>', "onload"),
    ('<svg xmlns="http://www.w3.org/2000/svg"><foreignObject/></svg>', "<foreignObject>"),
    ('<svg xmlns="http://www.w3.org/2000/svg"><image href="https://evil.example/a.png"/></svg>', "external"),
    ('<svg xmlns="http://www.w3.org/2000/svg"><desc>' + "x" * 1_000_001 + "</desc></svg>", "1,000,000"),
    ("<div>not svg</div>", "root element is <div>"),
])
def test_a_report_with_an_unsafe_figure_is_refused_with_its_reason(tmp_path, capsys, svg, words):
    """Attack: a figure written into a report by hand (the plugin would have refused it)."""
    lying = _report(COLLECTED[2:], 2, 2)
    lying["records"][1]["figures"] = [{"name": "circuit", "caption": "", "svg": svg}]
    status, _, err = _merge(capsys, *_two(tmp_path, second=lying))
    assert status == 2 and "b.json" in err and "records[1] has a figure that is refused" in err and words in err
