"""bench/naive_compare.py and bench/ablation_sweep.py run on a tiny 4-layer model and agree
with pytest-circuits (they exit 1 when a result differs); a naive script that computes
something else is caught. Wall times are printed by the scripts, never asserted on."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from pytest_circuits.errors import CircuitsError

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::pytest_circuits.errors.PromptWarning")

FACTS = [
    ("the capital of France is", " Paris", " Rome"), ("the capital of Spain is", " Madrid", " Rome"),
    ("the capital of Italy is", " Rome", " Paris"), ("the capital of Japan is", " Tokyo", " Paris"),
    ("the capital of Germany is", " Berlin", " Rome"), ("Paris is the capital of", " France", " Spain"),
    ("the cat sat on the", " mat", " dog"), ("John and Mary went to the", " store", " bag"),
]
CIRCUIT = "L0H1 L1H0 mlp1 L3H2 mlp3"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pytest_circuits.testing import make_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("bench")
    ckpt = make_tiny_checkpoint(tmp / "tiny4", n_layers=4, n_kv_heads=2, seed=3)
    facts = tmp / "facts.jsonl"
    facts.write_text("".join(json.dumps({"prompt": p, "answer": a, "foil": f, "relation": "r"}) + "\n"
                             for p, a, f in FACTS))
    common = ["--model", str(ckpt), "--cache-dir", str(tmp / "cache"), "--device", "cpu",
              "--facts", str(facts)]
    return common


def test_naive_compare_agrees_on_every_claim(setup, capsys):
    nc = _script("naive_compare")
    rc = nc.main(setup + ["--n", "8", "--batch", "3", "--circuit", CIRCUIT])
    out = capsys.readouterr().out
    assert rc == 0, out
    for claim in ("(a) self-repair sweep, 4 attn layers x 8 facts", "(b) minimality, 5 components x 8",
                  "(c) layer-scan probe, 4 layers x"):
        assert claim in out
    assert "layers choosing another neuron: none" in out
    # the naive side's forwards: (a) clean + 4 ablations, 3 batches each
    row = next(line for line in out.splitlines() if line.startswith("(a) self-repair sweep"))
    assert int(row.split()[-5]) == 5 * 3
    row = next(line for line in out.splitlines() if line.startswith("(c) layer-scan probe"))
    n_batches = -(-int(row.split(" x ")[1].split()[0]) // 3)
    assert int(row.split()[-5]) == 4 * n_batches          # one run_with_cache per layer and batch


def test_naive_compare_scan_variant_with_every_layer_in_one_cache(setup, capsys):
    nc = _script("naive_compare")
    rc = nc.main(setup + ["--n", "8", "--batch", "3", "--only", "c", "--scan", "all-layers"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "(c) naive (all-layers): one run_with_cache(names_filter=<every layer's" in out
    row = next(line for line in out.splitlines() if line.startswith("(c) layer-scan probe"))
    n_batches = -(-int(row.split(" x ")[1].split()[0]) // 3)
    assert int(row.split()[-5]) == n_batches


def test_naive_compare_catches_a_naive_script_that_differs(setup, capsys, monkeypatch):
    nc = _script("naive_compare")
    # the naive sweep resamples from another permutation than pytest-circuits' derangement
    monkeypatch.setattr(nc, "derangement", lambda n, seed: torch.roll(torch.arange(n), 1))
    rc = nc.main(setup + ["--n", "8", "--only", "a"])
    assert rc == 1
    assert "FAIL: results differ by" in capsys.readouterr().out


def test_naive_compare_refuses_bad_options(setup):
    nc = _script("naive_compare")
    with pytest.raises(CircuitsError, match="--n=1"):
        nc.main(setup + ["--n", "1"])
    with pytest.raises(CircuitsError, match="--n=50.*facts"):
        nc.main(setup + ["--n", "50", "--only", "a"])
    with pytest.raises(CircuitsError, match="--circuit=.*nope.json"):
        nc.main(setup + ["--n", "4", "--only", "b", "--circuit", "nope.json"])
    with pytest.raises(CircuitsError, match="--batch=0"):
        nc.main(setup + ["--batch", "0"])


def test_ablation_sweep_runs_cold_and_agrees(setup, capsys):
    ab = _script("ablation_sweep")
    rc = ab.main(setup + ["--n", "6"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "both from a cold store" in out and "wall-time ratio resumed/naive" in out
    naive = next(line for line in out.splitlines() if line.startswith("naive "))
    # cold: the naive sweep runs the clean forward itself, then one forward per attention layer
    assert int(naive.split()[2]) == 1 + 4
    with pytest.raises(CircuitsError, match="--n=99"):
        ab.main(setup + ["--n", "99"])


def test_forward_overhead_runs_both_paths_and_finds_them_identical(capsys):
    """bench/forward_overhead.py on the tests' tiny model: old (run_with_hooks) and new
    (hooks.run) paths timed, and every forward and sweep result bitwise identical (exit 0)."""
    fo = _script("forward_overhead")
    threads = torch.get_num_threads()
    try:
        rc = fo.main(["--n", "2", "--rounds", "1", "--sweep-layers", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "attach+detach 3 hooks" in out and "store sweep (4 head ablations, 5 forwards)" in out
    assert "bitwise identical (logits, hooked values, sweep): yes" in out


def test_inclusion_coverage_prints_every_interval_of_a_cell(capsys, monkeypatch):
    ic = _script("inclusion_coverage")
    monkeypatch.setattr(ic, "TARGET", 400)
    monkeypatch.setattr(sys, "argv", ["inclusion_coverage.py", "--samples", "4", "--cells", "borderline-32"])
    ic.main()
    out = capsys.readouterr().out
    for form in ("frequency (covers its bootstrap target", "| new_prompts |", "frequency across two sets",
                 "new_prompts across two sets"):
        assert form in out
    row = next(line for line in out.splitlines() if "| new_prompts |" in line)
    cells = [c.strip() for c in row.split("|")]
    assert 0.0 <= float(cells[6]) <= 1.0 and float(cells[9]) > 0      # a coverage, a mean width


def test_faithfulness_coverage_runs_and_catches_values_that_are_not_the_functions(capsys, monkeypatch):
    """bench/faithfulness_coverage.py on a small pool: it prints a row per number of resamples
    and exits 0 when the function's resampled values equal the population's route; values moved
    by 1% (a function that measured something else) make it exit 1."""
    from pytest_circuits.techniques import edge_stability as S

    fc = _script("faithfulness_coverage")
    argv = ["--samples", "2", "--targets", "40", "--pool", "60", "--n", "8", "--layers", "2", "--heads", "4",
            "--threshold", "0.1", "--resamples", "6", "12", "--checked", "2"]
    assert fc.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("   8 ")]
    assert [r[1] for r in rows] == ["6", "12"]
    holds = [float(line.split("]", 1)[1].split()[0]) for line in out.splitlines() if line.startswith("   8 ")]
    assert len(holds) == 2 and all(0.0 <= h <= 1.0 for h in holds)      # how often it holds a new F
    assert "identity: 24 resampled values" in out or "discovered another circuit" in out
    real = S.faithfulness_under_resampling

    def moved(*args, **kwargs):
        rf = real(*args, **kwargs)
        return S.ResampledFaithfulness(tuple(None if v is None else v * 1.01 for v in rf.values), rf.circuits,
                                       rf.threshold, rf.seed, rf.seconds)

    monkeypatch.setattr(fc.S, "faithfulness_under_resampling", moved)
    assert fc.main(argv) == 1
    assert "the function's" in capsys.readouterr().out
