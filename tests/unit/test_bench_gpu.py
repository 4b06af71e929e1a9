"""bench/gpu.py (issue #25, item 7) runs on the CPU: its per-forward overhead part on a tiny
model prints the store's forwards, and the stacked sweep's forwards are far fewer than its
ablations; without CUDA, ``--device cuda`` says so and exits 2. Times are printed, never
asserted on. (The claims and naive parts are the SmolLM2 runs: measured, not tested here.)"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::pytest_circuits.errors.PromptWarning")


def _gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_overhead_part_runs_on_the_cpu(capsys):
    assert _gpu().main(["--device", "cpu", "--skip", "claims", "--skip", "naive"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"one-row forward: raw model [\d.]+ ms, through the store [\d.]+ ms, .* \((\d+) forwards\)", out)
    assert m and int(m.group(1)) == 64                  # 64 distinct prompts: one forward each
    s = re.search(r"self-repair sweep \(4 attention layers \+ 16 heads, 64 prompts, last position\): (\d+) forwards, "
                  r"([\d.]+) rows per forward", out)
    assert s, out
    # 20 ablations of 64 prompts and the clean run: a handful of forwards, not 21
    assert int(s.group(1)) <= 4 and float(s.group(2)) >= 64


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is missing")
def test_without_cuda_it_says_so(capsys):
    assert _gpu().main(["--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().out
