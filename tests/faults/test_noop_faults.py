"""Fault injection: a claim of absence measured under an ablation that changed nothing.

The planted backup model (tests/data/planted/backup) has a primary head L0H0 and a backup
head L1H0 that restores 60% of the primary's direct effect when it is removed. The primary
writes the same output on every prompt, so the default ablation (resampling from another
prompt) replaces it by an equal one on prompts that share their last token: its measured
compensation is 0 by construction. A claim "there is no backup head" must not pass on it;
measured under an ablation that acts, the same claim fails and the backup is found.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PLANTED = Path(__file__).resolve().parent.parent / "data" / "planted"

CLAIMS = '''
import pytest
from pytest_circuits import PromptSet
from pytest_circuits.techniques import effects as E

pytestmark = pytest.mark.model({backup!r})
TEXTS = ["the capital of France is", "the king of Italy is", "the festival in the city is", "the queen of Spain is"]


def prompts(model):
    return PromptSet.build(model, TEXTS, answers=[" Paris"] * 4, foils=[" Rome"] * 4, name="shared-last")


@pytest.mark.claim(finding="L0H0 has no backup head (default ablation)")
def test_no_backup_default(model):
    E.compensation(model, prompts(model), ablate="L0H0", by="L1H0").assert_below(0.1)


@pytest.mark.claim(finding="L0H0 has no backup head (no backups ranked)")
def test_no_backups_in_a_sweep(model):
    sr, = E.sweep(model, prompts(model), ["L0H0"])
    assert sr.backups() == [], "compensators found"


@pytest.mark.claim(finding="L0H0 has no backup head (zero ablation)")
def test_no_backup_zero(model):
    E.compensation(model, prompts(model), ablate="L0H0", by="L1H0", kind="zero", positions=None).assert_below(0.1)


@pytest.mark.claim(finding="L1H0 backs L0H0 up (zero ablation)")
def test_backup_zero(model):
    sr = E.self_repair(model, prompts(model), "L0H0", kind="zero", positions=None)
    sr.restored_fraction("L1H0").assert_above(0.5)
    assert sr.role("L1H0") == "backup"
'''


def test_a_claim_of_no_backup_under_a_no_op_ablation_never_passes(pytester, tmp_path):
    pytester.makepyfile(test_claims=CLAIMS.format(backup=str(PLANTED / "backup")))
    report, md, page = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.html"
    r = pytester.runpytest(f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider",
                           f"--circuits-report={report}", f"--circuits-markdown={md}", f"--circuits-html={page}",
                           "-W", "ignore::pytest_circuits.errors.NoOpInterventionWarning")
    r.assert_outcomes(passed=1, failed=3)
    out = r.stdout.str()
    # the no-op claims fail with the reason, the acting one fails on its numbers
    assert "MeasurementError: ΔDE(L1H0 | resample_distinct(L0H0,pos=last,seed=0))" in out
    assert "cannot assert upper bound < 0.1" in out and "changed nothing on 4 of 4 prompts" in out
    assert "a ranking of the make-up for the lost effect under resample_distinct(L0H0" in out
    assert "expected upper bound < 0.1" in out                        # zero ablation: the backup is there
    ledger = json.loads(report.read_text())
    recs = {r["nodeid"].split("::")[1].split("[")[0]: r for r in ledger["records"]}
    flagged = recs["test_no_backup_default"]
    assert flagged["outcome"] == "failed"
    m = next(m for m in flagged["measurements"] if m["name"].startswith("ΔDE(L1H0"))
    assert m["flags"] and m["flags"][0].startswith("uninformative: the ablation resample_distinct(L0H0")
    assert [a["passed"] for a in flagged["assertions"]] == [False]
    assert not any(m["flags"] for m in recs["test_backup_zero"]["measurements"])
    # every report shows the flag: the terminal's measurement lines, the Markdown and the HTML
    assert "[uninformative: the ablation resample_distinct(L0H0,pos=last,seed=0) changed nothing" in out
    assert "uninformative: the ablation resample" in md.read_text()
    assert "uninformative: the ablation resample" in page.read_text()
