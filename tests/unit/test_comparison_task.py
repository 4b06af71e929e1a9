"""The comparison task and its planted model (tests/data/planted/comparison/).

The checkpoint and its ground_truth.json are written by scripts/train_comparison.py;
these tests check the task builder, recompute the metric and the ground-truth circuit's
recovered fraction with raw TransformerLens hooks, check that the model solves the
distractor task, and that training is deterministic.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pytest_circuits import interventions as I
from pytest_circuits.store import ActivationStore
from pytest_circuits.errors import PromptSetError

C = importlib.import_module("pytest_circuits.tasks.comparison")  # the module, not the builder tasks.comparison

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "planted" / "comparison"
GT = json.loads((DATA / "ground_truth.json").read_text())
TRAINING = json.loads((DATA / "TRAINING.json").read_text())


def _script():
    spec = importlib.util.spec_from_file_location("train_comparison", ROOT / "scripts" / "train_comparison.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from pytest_circuits.models import load_model

    return load_model(str(DATA), device="cpu", cache_dir=tmp_path_factory.mktemp("comparison-cache"))


@pytest.fixture(scope="module")
def task(planted):
    return C.comparison(planted, n=200, seed=0)


# --------------------------------------------------------------------------- builder
@pytest.mark.parametrize("n", [0, 1, -3, 2.0, "10", True, None])
def test_bad_n(tiny, n):
    with pytest.raises(PromptSetError, match="n"):
        C.comparison(tiny, n=n)


@pytest.mark.parametrize("row", [("war", "France", 0), ("war", "France", 9), ("war", "France", "3"),
                                 ("war", "France"), ("war", "France", True)])
def test_bad_rows(tiny, row):
    with pytest.raises(PromptSetError, match="row"):
        C.from_rows(tiny, [row])


def test_no_single_token_nouns(tiny):
    with pytest.raises(PromptSetError, match="nouns"):
        C.comparison(tiny, n=5, nouns=["armistice", "hundred years"])


def test_seeds_reproducible(tiny):
    a, b, c = C.comparison(tiny, n=50, seed=3), C.comparison(tiny, n=50, seed=3), C.comparison(tiny, n=50, seed=4)
    assert a.prompts.prompts == b.prompts.prompts and a.x == b.x
    assert torch.equal(a.prompts.tokens, b.prompts.tokens)
    assert a.prompts.prompts != c.prompts.prompts
    assert set(a.x) <= set(range(1, 9)) and len(set(C.comparison(tiny, n=400).x)) == 8


def test_corrupted_aligned(tiny):
    t = C.comparison(tiny, n=100, seed=0)
    clean, corr = t.prompts, t.prompts.corrupted
    assert corr is not None and clean.lengths == corr.lengths
    zero = t.digit_ids[0]
    for i, x in enumerate(t.x):
        diff = (clean.tokens[i] != corr.tokens[i]).nonzero().flatten().tolist()
        assert len(diff) == 1
        assert int(clean.tokens[i, diff[0]]) == t.digit_ids[x] and int(corr.tokens[i, diff[0]]) == zero
        assert clean.prompts[i].replace(f"from {x} ", "from 0 ") == corr.prompts[i]
    assert t.prompt_sets == (t.prompts,) and t.name == "comparison" and len(t) == 100


# --------------------------------------------------------------------------- the shipped checkpoint
def test_checkpoint_plain():
    cfg = json.loads((DATA / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_key_value_heads"] == cfg["num_attention_heads"] == 4
    assert cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 64 and cfg["intermediate_size"] == 128
    assert "quantization_config" not in cfg
    assert (DATA / "model.safetensors").stat().st_size < 1_000_000
    # The weights are the ones TRAINING.json (and ground_truth.json) describe.
    sha = hashlib.sha256((DATA / "model.safetensors").read_bytes()).hexdigest()
    assert sha == TRAINING["model_safetensors_sha256"] == GT["model_safetensors_sha256"]
    assert TRAINING["held_out_pd_clean"] > 0.9 and abs(TRAINING["held_out_pd_corrupted"]) < 0.1


def _raw_pd(model, prompts, x, hooks=()):
    """PD from raw logits: tokens via to_tokens, every prompt the same length."""
    tokens = model.to_tokens(list(prompts))
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))[:, -1]
    digits = [model.to_single_token(str(d)) for d in range(10)]
    p = logits.double().softmax(-1)
    out = []
    for i, xi in enumerate(x):
        out.append(sum(float(p[i, digits[d]]) * (1 if d > xi else -1) for d in range(10)))
    return torch.tensor(out, dtype=torch.float64)


def test_pd_matches_raw_logits(planted, task):
    store = ActivationStore()
    clean = task.scores(planted, activations=store)
    corr = task.scores(planted, activations=store, corrupted=True)
    assert clean.dtype == torch.float64 and clean.shape == (200,)
    torch.testing.assert_close(clean, _raw_pd(planted, task.prompts.prompts, task.x), atol=1e-5, rtol=0)
    torch.testing.assert_close(corr, _raw_pd(planted, task.prompts.corrupted.prompts, task.x), atol=1e-5, rtol=0)
    assert clean.mean() > 0.9 and abs(float(corr.mean())) < 0.1
    m = C.prob_diff(planted, task, activations=store)
    assert m.n == 200 and abs(m.mean - float(clean.mean())) < 1e-12 and m.name == "comparison.prob_diff"
    assert abs(GT["pd_full"] - float(clean.mean())) < 1e-4 and abs(GT["pd_empty"] - float(corr.mean())) < 1e-4


def _patch_hooks(model, keep, corrupted_cache):
    """Raw hooks replacing every component not in ``keep`` by its corrupted-run value."""
    hooks = []
    for layer in range(model.cfg.n_layers):
        zname, mname = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"
        heads = [h for h in range(model.cfg.n_heads) if f"L{layer}H{h}" not in keep]

        def z_fn(z, hook, heads=heads, src=corrupted_cache[zname]):
            z = z.clone()
            z[:, :, heads] = src[:, :, heads]
            return z

        hooks.append((zname, z_fn))
        if f"mlp{layer}" not in keep:
            hooks.append((mname, lambda t, hook, src=corrupted_cache[mname]: src.clone()))
    return hooks


@pytest.fixture(scope="module")
def corrupted_cache(planted, task):
    got = {}
    names = [f"blocks.{l}.{h}" for l in range(planted.cfg.n_layers) for h in ("attn.hook_z", "hook_mlp_out")]
    with torch.no_grad():
        planted.run_with_hooks(planted.to_tokens(list(task.prompts.corrupted.prompts)),
                               fwd_hooks=[(n, lambda t, hook: got.__setitem__(hook.name, t.clone())) for n in names])
    return got


def test_ground_truth_recovered_raw(planted, task, corrupted_cache):
    circuit = GT["circuit"]
    full = float(_raw_pd(planted, task.prompts.prompts, task.x).mean())
    empty = float(_raw_pd(planted, task.prompts.prompts, task.x, _patch_hooks(planted, (), corrupted_cache)).mean())
    pd_c = float(_raw_pd(planted, task.prompts.prompts, task.x,
                         _patch_hooks(planted, circuit, corrupted_cache)).mean())
    rec = (pd_c - empty) / (full - empty)
    assert abs(rec - GT["circuit_recovered"]) < 1e-3
    assert rec >= GT["threshold"]
    # The least necessary component: dropping it loses what the JSON says.
    c = min(circuit, key=lambda k: GT["necessity"][k])
    less = [k for k in circuit if k != c]
    pd_less = float(_raw_pd(planted, task.prompts.prompts, task.x, _patch_hooks(planted, less, corrupted_cache)).mean())
    assert abs((pd_less - empty) / (full - empty) - GT["recovered"]["+".join(less)]) < 1e-3


def test_ground_truth_json_consistent():
    rec, circuit = GT["recovered"], GT["circuit"]
    assert len(rec) == 2 ** len(GT["components"]) == 1024
    assert rec[""] == pytest.approx(0.0, abs=1e-9) and rec["+".join(GT["components"])] == pytest.approx(1.0)
    assert 3 <= len(circuit) <= 6
    # No smaller subset reaches the threshold; no same-size subset recovers more.
    for key, v in rec.items():
        size = len(key.split("+")) if key else 0
        if size < len(circuit):
            assert v < GT["threshold"], key
        elif size == len(circuit):
            assert v <= GT["circuit_recovered"], key
    for c in circuit:
        assert GT["necessity"][c] > 0.05
    assert GT["distractor"]["components_outside_circuit"], "some component should serve only the distractor"


def test_package_patching_agrees_with_ground_truth(planted, task):
    """pytest_circuits.interventions.patch of the complement gives the same recovered fraction."""
    store = ActivationStore()
    outside = [c for c in GT["components"] if c not in GT["circuit"]]
    pd_c = float(task.scores(planted, activations=store, intervention=I.patch(planted, outside)).mean())
    rec = (pd_c - GT["pd_empty"]) / (GT["pd_full"] - GT["pd_empty"])
    assert abs(rec - GT["circuit_recovered"]) < 1e-3


def test_distractor_solved(planted):
    ps = C.distractor(planted, n=200, seed=0)
    assert len(set(ps.lengths)) == 1
    with torch.no_grad():
        logits = planted(planted.to_tokens(list(ps.prompts)))[:, -1]
    ans = torch.tensor(ps.answer_ids)
    assert (logits.argmax(-1) == ans).double().mean() > 0.95
    for p, a, i in zip(ps.prompts, ps.answers, ps.meta["repeat_index"]):
        words = p.split()
        assert words[-1] == words[i] and words[i + 1] == a and len(set(words[:-1])) == len(words) - 1
    # The components that serve only the distractor really matter to it.
    only = GT["distractor"]["components_outside_circuit"]
    assert min(GT["distractor"]["patched"][c]["accuracy"] for c in only) < 0.9


# --------------------------------------------------------------------------- training
def test_training_reproducible(tmp_path):
    tc = _script()
    a = tc.train(tmp_path / "a", seed=5, steps=3, batch=8).state_dict()
    b = tc.train(tmp_path / "b", seed=5, steps=3, batch=8).state_dict()
    c = tc.train(tmp_path / "c", seed=6, steps=3, batch=8).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "a" / "TINY.json").exists() and (tmp_path / "a" / "tokenizer.json").exists()


def test_training_targets():
    tc = _script()
    from transformers import PreTrainedTokenizerFast

    data = tc.Data(PreTrainedTokenizerFast.from_pretrained(str(DATA)))
    t = data.soft_target(torch.tensor([0, 3, 8]), 80)
    assert torch.allclose(t.sum(1), torch.ones(3))
    assert t[1, data.digits[4:]].tolist() == pytest.approx([1 / 6] * 6) and t[1, data.digits[:4]].sum() == 0
    assert t[2, data.digits[9]] == 1
    # Held-out (noun, place) pairs are never trained on.
    assert not data.cmp_held[data.train_idx].any() and data.cmp_held.any()


def test_logit_metric_is_pd(planted, task):
    """logit_metric(i) (for gradient screens) is the same PD as scores, and differentiable."""
    store = ActivationStore()
    want = task.scores(planted, activations=store)
    tokens = task.prompts.tokens[:3]
    logits = planted(tokens).detach().requires_grad_(True)
    for i in range(3):
        got = task.logit_metric(i)(logits[i: i + 1])
        assert float(got.detach()) == pytest.approx(float(want[i]), abs=1e-5)
    task.logit_metric(0)(logits[0:1]).backward()
    assert logits.grad is not None and logits.grad[0].abs().sum() > 0
