"""Shipped claims under bfloat16: the same verdicts as float32, and every measurement within
its baseline's tolerance of the float32 baseline (claims/baselines/smollm2-135m.json).

One claim per paper for four of the papers, the cheapest whose verdict agrees in the full
bfloat16 run of claims/smollm2 (docs/large-models.md lists every claim's outcome there,
including the one that does not agree, and why). The claims run in a child pytest with ``--circuits-dtype bfloat16
--circuits-baseline`` against a copy of the float32 baselines: a claim whose assertion no
longer holds fails, and so does one whose measurement drifted beyond its baseline's
tolerance (default ``3se`` of the float32 measurement). ``--circuits-no-cache``: everything
is measured in this run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# one per paper: node ids under claims/smollm2 (see the module docstring)
SUBSET = [
    "claims/smollm2/test_factual_recall.py::test_capitals",             # factual recall (facts set)
    "claims/smollm2/test_ioi.py::test_ioi_logit_difference",             # Wang et al. 2022
    "claims/smollm2/test_induction.py::test_previous_token_heads",       # Olsson et al. 2022
    "claims/smollm2/test_successor_copy.py::test_copy_suppression_heads",  # McDougall et al. 2023
]


@pytest.mark.slow
def test_bfloat16_subset_has_float32_verdicts_and_baselines(tmp_path, request):
    from pytest_circuits.errors import ModelUnavailable
    from pytest_circuits.models import embedded_gguf_path

    try:
        embedded_gguf_path()
    except ModelUnavailable as e:   # as for every test on the embedded model: fails under require-models
        if request.config.getoption("circuits_require_models"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    baselines = tmp_path / "baselines"
    shutil.copytree(ROOT / "claims" / "baselines", baselines)
    before = json.loads((baselines / "smollm2-135m.json").read_text())["claims"]
    for node in SUBSET:
        assert any(k == node or k.startswith(node + "[") for k in before), \
            f"{node} has no float32 baseline: its float32 verdict is not recorded"
    report = tmp_path / "report.json"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *SUBSET, "--circuits-dtype=bfloat16", "--circuits-no-cache",
         f"--circuits-baseline-dir={baselines}", f"--circuits-report={report}", "--circuits-require-models",
         "-p", "no:cacheprovider", "-q", "-rA"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    verdicts = {c["nodeid"]: c["verdict"] for c in json.loads(report.read_text())["claims"]}
    assert len(verdicts) >= len(SUBSET) and set(verdicts.values()) == {"passed"}, verdicts
    assert "beyond" not in out, out[-4000:]
    # the baselines were compared, not (re)written: the float32 files are unchanged
    assert json.loads((baselines / "smollm2-135m.json").read_text())["claims"] == before
