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
COLLECTED = ["t.py::test_a[m]", "t.py::test_b[m]", "t.py::test_c[m]", "t.py::test_d[m]"]


def _claim(nodeid, verdict="passed", reason=""):
    return {"nodeid": nodeid, "claim": nodeid.split("[")[0], "model": "m", "verdict": verdict, "reason": reason,
            "finding": f"finding of {nodeid}"}


def _record(nodeid, outcome="passed", mean=0.5):
    return {"claim": nodeid.split("[")[0], "nodeid": nodeid, "model": "m", "fingerprint": "local-sha256:ab",
            "outcome": outcome, "finding": "f", "source": "s",
            "measurements": [{"key": "loss", "name": "loss", "model": "m", "mean": mean, "lower": mean - 0.1,
                              "upper": mean + 0.1, "n": 5, "level": 0.95, "flags": [],
                              "baseline": {"mean": mean, "difference": 0.0, "tolerance": "3se", "allowed": 0.1,
                                           "within": True, "flag": None}}]}


def _report(nodeids, k, n, collected=COLLECTED, verdicts=None, exit_status=0, commit="abc"):
    verdicts = verdicts or {}
    claims = [_claim(i, *verdicts.get(i, ("passed", ""))) for i in nodeids]
    records = [_record(i, "failed" if verdicts.get(i, ("passed",))[0] == "failed" else "passed") for i in nodeids
               if verdicts.get(i, ("passed",))[0] in ("passed", "failed")]
    return {"schema": 1, "exit_status": exit_status, "git_commit": commit,
            "versions": {"python": "3.11", "torch": "2.5"}, "records": records, "claims": claims,
            "collected": list(collected), "shard": {"index": k, "count": n} if n else None}


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
    assert merged["merged_from"] == [{"path": str(a), "shard": {"index": 1, "count": 2}, "git_commit": "abc"},
                                     {"path": str(b), "shard": {"index": 2, "count": 2}, "git_commit": "abc"}]
    assert "t.py::test_a" in (out / "m.md").read_text() and "t.py::test_a" in (out / "m.html").read_text()
    jsonschema = pytest.importorskip("jsonschema")
    from importlib import resources

    schema = json.loads(resources.files("pytest_circuits").joinpath("data/report.schema.json").read_text())
    jsonschema.validate(merged, schema)
    root = ET.parse(out / "m.xml").getroot()
    assert root.get("tests") == "4" and root.get("failures") == "0" and root.get("errors") == "0"


@pytest.mark.parametrize("verdict,exit_status", [("failed", 1), ("error", 1), ("failed", 0), ("error", 0)])
def test_a_failed_claim_fails_the_merge_whatever_the_exit_status_says(tmp_path, capsys, verdict, exit_status):
    lying = _report(COLLECTED[2:], 2, 2, verdicts={"t.py::test_c[m]": (verdict, "boom")}, exit_status=exit_status)
    status, stdout, err = _merge(capsys, *_two(tmp_path, second=lying), "--junit", tmp_path / "j.xml")
    assert status == 1 and "t.py::test_c[m]" in err and "boom" in err
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.get("failures" if verdict == "failed" else "errors") == "1"
    case = next(c for c in root.iter("testcase") if c.get("classname") == "t.py::test_c")
    assert case.find("failure" if verdict == "failed" else "error").get("message") == "boom"


def test_a_failed_record_fails_the_merge_even_if_its_verdict_says_passed(tmp_path, capsys):
    lying = _report(COLLECTED[2:], 2, 2)
    lying["records"][0]["outcome"] = "failed"
    status, _, err = _merge(capsys, *_two(tmp_path, second=lying))
    assert status == 1 and "record outcome failed" in err


@pytest.mark.parametrize("exit_status,fails", [(0, False), (5, False), (1, True), (2, True), (3, True), (4, True)])
def test_job_exit_status(tmp_path, capsys, exit_status, fails):
    status, _, err = _merge(capsys, *_two(tmp_path, second=_report(COLLECTED[2:], 2, 2, exit_status=exit_status)))
    assert status == (1 if fails else 0)
    assert ("exit status" in err) == fails


def test_missing_shard_names_the_missing_claims(tmp_path, capsys):
    a, _ = _two(tmp_path)
    status, _, err = _merge(capsys, a, "--junit", tmp_path / "j.xml")
    assert status == 1 and "2 collected claims are in no report" in err
    assert "t.py::test_c[m]" in err and "t.py::test_d[m]" in err
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.get("tests") == "4" and root.get("errors") == "2"


def test_skipped_claims_are_reported_not_failed(tmp_path, capsys):
    second = _report(COLLECTED[2:], 2, 2, verdicts={"t.py::test_d[m]": ("not checked", "no model")})
    status, _, err = _merge(capsys, *_two(tmp_path, second=second), "--junit", tmp_path / "j.xml")
    assert status == 0, err
    skipped = [c for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase") if c.find("skipped") is not None]
    assert len(skipped) == 1 and "no model" in skipped[0].find("skipped").get("message")


def test_a_gate_that_checked_nothing_fails(tmp_path, capsys):
    skipped = {n: ("not checked", "no model") for n in COLLECTED}
    status, _, err = _merge(capsys, *_two(tmp_path, _report(COLLECTED[:2], 1, 2, verdicts=skipped),
                                          _report(COLLECTED[2:], 2, 2, verdicts=skipped)))
    assert status == 1 and "no claim was checked (4 not checked)" in err
    empty = _write(tmp_path, "e.json", _report([], 1, 1, collected=[], exit_status=5))
    status, _, err = _merge(capsys, empty)
    assert status == 1 and "no report collected any claim" in err


def test_overlapping_shards(tmp_path, capsys):
    first = _report(COLLECTED[:3], 1, 2)
    status, _, err = _merge(capsys, *_two(tmp_path, first=first))      # test_c in both, identical: fine
    assert status == 0, err
    other = _report(COLLECTED[:3], 1, 2)
    other["records"][2]["measurements"][0]["mean"] = 0.7               # ... but not if they disagree
    status, _, err = _merge(capsys, *_two(tmp_path, first=other))
    assert status == 2 and "t.py::test_c" in err and "differently" in err
    other = _report(COLLECTED[:3], 1, 2, verdicts={"t.py::test_c[m]": ("not checked", "x")})
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
        ("schema 2", lambda d: {**d, "schema": 2}),
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
    from pytest_circuits import plugin
    from pytest_circuits.cli import _parser

    text = WORKFLOW.read_text()
    pytest_cmd, merge_cmd = _commands(text)
    flags = set(re.findall(r"--circuits-[a-z-]+", pytest_cmd))
    assert {"--circuits-model", "--circuits-shard", "--circuits-cache-dir", "--circuits-report"} <= flags
    source = inspect.getsource(plugin.pytest_addoption)
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


@pytest.mark.parametrize("baseline", [
    {"mean": 0.2, "difference": 0.3, "tolerance": "3se", "allowed": 0.1, "within": False, "flag": None},
    # lies: says within, its numbers say 3x the allowance
    {"mean": 0.2, "difference": 0.3, "tolerance": "3se", "allowed": 0.1, "within": True, "flag": None},
    # cannot be computed
    {"mean": None, "difference": float("nan"), "tolerance": "3se", "allowed": 0.1, "within": True, "flag": None},
])
def test_a_passing_claim_beyond_its_tolerance_fails_the_merged_gate_as_the_banner_says(tmp_path, capsys, baseline):
    drifted = _report(COLLECTED[2:], 2, 2)
    drifted["records"][0]["measurements"][0]["baseline"] = baseline
    out = tmp_path / "m.md"
    status, _, err = _merge(capsys, *_two(tmp_path, second=drifted), "--markdown", out)
    assert status == 1
    assert "beyond tolerance" in err and "t.py::test_c" in err
    assert "FAILED" in out.read_text()
