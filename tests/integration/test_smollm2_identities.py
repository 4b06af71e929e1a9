"""Identities on the embedded real model (SmolLM2-135M): the store's activations must
add up the way the architecture says they do, and the metrics must agree with a
plain forward pass."""

import pytest
import torch

from pytest_circuits import PromptSet, metrics, tasks
from pytest_circuits import hooks as H

pytestmark = pytest.mark.model("smollm2-135m")

PROMPTS = ["The capital of France is", "The war lasted from the year 1732 to the year 17",
           "When Mary and John went to the store, John gave a drink to"]


@pytest.fixture(scope="module")
def ps(model):
    return PromptSet.build(model, PROMPTS, name="identities")


def test_residual_stream_is_the_sum_of_its_writers(model, ps, activations):
    L = model.cfg.n_layers
    names = [H.EMBED, H.resid_post(L - 1)] + [H.attn_out(l) for l in range(L)] + [H.mlp_out(l) for l in range(L)]
    acts = activations(model, ps, names)
    total = acts[H.EMBED] + sum(acts[H.attn_out(l)] + acts[H.mlp_out(l)] for l in range(L))
    torch.testing.assert_close(total, acts[H.resid_post(L - 1)], atol=2e-4, rtol=1e-5)


def test_heads_sum_to_attention_output(model, ps, activations):
    for layer in (0, 9, 29):
        acts = activations(model, ps, [H.z(layer), H.attn_out(layer)])
        per_head = torch.einsum("bphd,hdm->bphm", acts[H.z(layer)], model.W_O[layer].detach())
        torch.testing.assert_close(per_head.sum(2), acts[H.attn_out(layer)], atol=1e-4, rtol=1e-5)


def test_direct_effects_sum_to_the_logit(model, ps, activations):
    """Sum over components of out_c / final_scale . W_U, plus b_U, is the logit (compatibility mode)."""
    L = model.cfg.n_layers
    names = [H.EMBED, H.FINAL_SCALE, H.LOGITS_LAST] + [H.attn_out(l) for l in range(L)] + \
        [H.mlp_out(l) for l in range(L)]
    acts = activations(model, ps, names)
    last = ps.last
    rows = torch.arange(len(ps))
    scale = acts[H.FINAL_SCALE][rows, last]                           # [n, 1]
    W_U = model.W_U.detach()
    outs = [acts[H.EMBED]] + [acts[n] for n in names[3:]]
    direct = sum((o[rows, last] / scale) @ W_U for o in outs)
    logits = direct + model.b_U.detach()
    torch.testing.assert_close(logits, acts[H.LOGITS_LAST], atol=1e-3, rtol=1e-5)


def test_store_logits_match_a_plain_forward(model, ps, activations):
    got = activations(model, ps, [H.LOGITS_LAST])[H.LOGITS_LAST]
    with torch.no_grad():
        for i, n in enumerate(ps.lengths):
            ref = model(ps.tokens[i: i + 1, :n])[0, -1]
            torch.testing.assert_close(got[i], ref, atol=1e-4, rtol=1e-5)


def test_greater_than_pd_matches_independent_generation_probabilities(model, activations):
    """PD from the store equals PD recomputed from plain forwards on re-tokenized text."""
    task = tasks.greater_than(model, n=4, seed=11)
    got = tasks.prob_diff(model, task, activations=activations)
    tok = model.tokenizer
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    with torch.no_grad():
        for i, (p, yy) in enumerate(zip(task.prompts.prompts, task.yy)):
            a, b = divmod(yy, 10)
            ids = torch.tensor([[tok.bos_token_id] + tok.encode(p, add_special_tokens=False)])
            p1 = model(ids)[0, -1].softmax(-1)[digits].double()
            ids2 = torch.tensor([[tok.bos_token_id] + tok.encode(p + str(a), add_special_tokens=False)])
            p2 = model(ids2)[0, -1].softmax(-1)[digits].double()
            ref = p1[a + 1:].sum() + p1[a] * p2[b + 1:].sum() - p1[:a].sum() - p1[a] * p2[: b + 1].sum()
            # float32 forwards, batched and padded vs one prompt at a time: the reduction order
            # (it depends on the thread count) moves this by ~1e-5.
            assert got.values[i] == pytest.approx(float(ref), abs=5e-5)


def test_kl_to_itself_is_zero_and_loss_is_sane(model, ps, activations):
    assert metrics.kl_divergence(model, ps, None, activations=activations).mean == pytest.approx(0, abs=1e-9)
    loss = metrics.loss(model, ps, activations=activations)
    assert 0.5 < loss.mean < 8.0  # a trained model on English: between a near-oracle and uniform (10.8)


def test_direct_effect_decomposition_matches_the_logits(model, ps, activations):
    """Issue-3 identity on the real model: DE of every writer + centred b_U = centred logit."""
    from pytest_circuits.techniques import effects as E

    de = E.decompose(model, ps, token="top", activations=activations)
    lg = activations(model, ps, [H.LOGITS_LAST])[H.LOGITS_LAST].double()
    centred = lg[torch.arange(len(ps)), de.token_ids] - lg.mean(-1)
    torch.testing.assert_close(de.logit, centred, atol=1e-4, rtol=0)


@pytest.mark.parametrize("target,kind", [("attn20", "resample"), ("L23H4", "zero"), ("mlp27", "resample")])
def test_self_repair_decomposition_matches_the_logits(model, ps, activations, target, kind):
    from pytest_circuits.techniques import effects as E

    sr = E.self_repair(model, ps, target, kind=kind, token="top", activations=activations)
    te = E.total_effect(model, ps, sr.ablation, token="top", activations=activations)
    torch.testing.assert_close(sr.total, torch.tensor(te.values, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(sr.total, sr.own + sr.downstream + sr.norm_term, atol=1e-9, rtol=0)
