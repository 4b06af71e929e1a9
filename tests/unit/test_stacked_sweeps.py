"""Many interventions in one forward (issue #25, item 2): a sweep over every layer (and every
head) stacks its interventions along the batch dimension, rows of every layer in the same
forward (each copy of the prompts under its own intervention, from its own first block and
position), within the token budget. Checked on every family of
:mod:`pytest_circuits.architectures` against one intervention at a time run in full from the
tokens (``ActivationStore(resume=False)``: no resume, no suffix, no stacking), within 1e-5
relative; and the number of forwards really falls."""

from __future__ import annotations

import warnings

import pytest
import torch

from pytest_circuits import ActivationStore, PromptSet, tasks
from pytest_circuits import architectures as A
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I
from pytest_circuits.techniques import patching as P

N_LAYERS = 4
VARIED = ["the cat sat", "the dog sat on the mat", "a king went to the city of Rome",
          "the queen said", "when John and Mary went to the store", "the king of France"]
REFERENCE = ["the cat", "when John and Mary went to the store", "the king of France"]


@pytest.fixture(scope="module", params=A.families())
def model(request, arch_model):
    return arch_model(request.param, seed=11, n_layers=N_LAYERS)


def _close(a, b, what):
    a, b = a.double(), b.double()
    assert a.shape == b.shape, what
    err = float((a - b).abs().max())
    assert err <= 1e-5 * max(float(b.abs().max()), 1.0), f"{what}: {err:.2e}"


def _reads(iv):
    """What a layer sweep reads under ``iv``: from its first block on (the earlier ones are
    the clean run's)."""
    return [H.LOGITS_LAST, H.logprobs_last([2, 7]), H.last(H.resid_post(N_LAYERS - 1))] + \
        [H.last(H.z(l)) for l in range(iv.layer, N_LAYERS)]


@pytest.mark.parametrize("sweep", ["attn-last", "heads-every-position", "mlp-mean"])
def test_a_layer_sweep_is_a_handful_of_forwards_equal_to_one_at_a_time(model, sweep):
    ps = PromptSet.build(model, VARIED, name="varied")
    ref = PromptSet.build(model, REFERENCE, name="ref")
    nh = model.cfg.n_heads
    if sweep == "attn-last":
        ivs = [I.ablate(model, f"attn{l}", "zero", positions="last") for l in range(N_LAYERS)]
    elif sweep == "heads-every-position":
        ivs = [I.ablate(model, f"L{l}H{h}", "zero") for l in range(N_LAYERS) for h in range(min(nh, 3))]
    else:
        ivs = [I.ablate(model, f"mlp{l}", "mean", positions="last", reference=ref) for l in range(N_LAYERS)]
    stacked, alone = ActivationStore(), ActivationStore(resume=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stacked.get(model, ps, [H.LOGITS_LAST])            # the clean run (it records the resume data)
        if sweep == "mlp-mean":                            # the reference's outputs, in one forward
            stacked.get(model, ref, [H.mlp_out(l) for l in range(N_LAYERS)])
        before = stacked.counters.forward_passes
        many = stacked.get_many(model, ps, _reads, ivs)
        ones = [alone.get(model, ps, _reads(iv), iv) for iv in ivs]
    swept = stacked.counters.forward_passes - before
    # a handful: far fewer forwards than interventions (each one alone is a forward)
    assert swept <= max(2, len(ivs) // 3), (swept, len(ivs))
    for iv, got, want in zip(ivs, many, ones):
        assert sorted(got) == sorted(_reads(iv))
        for name in _reads(iv):
            _close(got[name], want[name], f"{iv.key} {name}")
    # served afterwards under each intervention's own key, with no forward
    again = stacked.get_many(model, ps, _reads, ivs)
    assert stacked.counters.forward_passes - before == swept
    for iv in ivs:
        one = stacked.get(model, ps, _reads(iv), iv)
        _close(one[H.LOGITS_LAST], again[ivs.index(iv)][H.LOGITS_LAST], iv.key)
    assert stacked.counters.forward_passes - before == swept


def test_a_stacked_group_stays_within_the_budget_and_the_waste_bound(model):
    """A tiny budget splits the sweep into more forwards (each within it), with the same values."""
    ps = PromptSet.build(model, VARIED, name="varied")
    ivs = [I.ablate(model, f"attn{l}", "zero", positions="last") for l in range(N_LAYERS)]
    big, small = ActivationStore(), ActivationStore(token_budget=len(VARIED) * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = big.get_many(model, ps, _reads, ivs)
        b = small.get_many(model, ps, _reads, ivs)
    assert small.counters.forward_passes > big.counters.forward_passes
    for iv, x, y in zip(ivs, a, b):
        for name in x:
            _close(x[name], y[name], f"{iv.key} {name}")


def test_patching_sweeps_stack_their_components(tiny):
    """patching.sweep / position_sweep / path_sweep read their metric under each component's
    intervention in stacked forwards (store.each): the same measurements as on a store that
    runs every intervention alone from the tokens, in fewer forwards."""
    task = tasks.greater_than(tiny, n=10, seed=2)
    fast, slow = ActivationStore(), ActivationStore(resume=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = P.sweep(tiny, task, activations=fast)
        want = P.sweep(tiny, task, activations=slow)
        got_path = P.path_sweep(tiny, task, activations=fast)
        want_path = P.path_sweep(tiny, task, activations=slow)
    assert fast.counters.forward_passes < slow.counters.forward_passes
    for g, w in ((got, want), (got_path, want_path)):
        assert g.components == w.components
        for c in g.components:
            assert g.measure(c, record=False).mean == pytest.approx(w.measure(c, record=False).mean, abs=1e-6), c
            torch.testing.assert_close(g.of(c), w.of(c), atol=1e-6, rtol=0)
