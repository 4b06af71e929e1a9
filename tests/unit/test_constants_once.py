"""Model-derived constants (float64 ``W_O``, ``b_O``, ``W_V``, the unembedding's vocabulary means)
are computed once per model and weights state (issue #12), give bitwise the numbers of a fresh
conversion, and follow an in-place edit of the weights."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from pytest_circuits import models as M
from pytest_circuits import registry
from pytest_circuits.store import ActivationStore
from pytest_circuits.prompts import PromptSet
from pytest_circuits.techniques import effects as E
from pytest_circuits.techniques import erasure as R

PROMPTS = ["the cat sat on the mat", "John gave Mary a ball", "the war lasted 12 year",
           "Paris is the capital of France", "the dog and the cat", "the king and the queen"]


def _load(tmp_path_factory, arch: str):
    from pytest_circuits.testing import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path_factory.mktemp(f"const-{arch}") / "ckpt", arch=arch, n_layers=3,
                                seed=7)
    return M.load_model(str(path), cache_dir=tmp_path_factory.mktemp(f"const-{arch}-cache"), device="cpu")


@pytest.fixture(params=["llama", "gpt2"])
def model(request, tmp_path_factory):
    """A fresh model per test (the tests edit weights in place: never the shared ``tiny``)."""
    return _load(tmp_path_factory, request.param)


def _old_unembed_dirs(model, ids):
    """The conversion as it was before the memo: all of W_U to float64 on every call."""
    W_U = model.W_U.detach().to("cpu", torch.float64)
    b_U = model.b_U.detach().to("cpu", torch.float64)
    return (W_U[:, ids] - W_U.mean(1, keepdim=True)).T, b_U[ids] - b_U.mean()


def _ps(model):
    return PromptSet.build(model, PROMPTS)


class _Counting:
    """Counts reads of a property of the model's class (monkeypatched, restored after the test)."""

    def __init__(self, monkeypatch, cls, name):
        self.n = 0
        prop = getattr(cls, name)

        def get(obj):
            self.n += 1
            return prop.fget(obj)

        monkeypatch.setattr(cls, name, property(get))


def test_constants_are_bitwise_a_fresh_conversion(model):
    M.forget_derived(model)
    ids = torch.tensor([3, 17, 5, 3, 40])
    for _ in range(2):      # the computing call and a memo hit
        w, b = E._unembed_dirs(model, ids)
        w0, b0 = _old_unembed_dirs(model, ids)
        assert torch.equal(w, w0) and torch.equal(b, b0)
        assert torch.equal(E.attn_output_weights(model), model.W_O.detach().double())
        assert torch.equal(R._value_weights(model), model.W_V.detach().double())
    b_O = E.attn_output_bias(model)
    if any(".attn.o." in n and n.endswith("bias") for n, _ in model.named_parameters()):   # GPT-2
        assert b_O is not None and torch.equal(b_O, model.b_O.detach().double())
    else:
        assert b_O is None   # a bias-free Llama: no constant writer


def test_results_are_the_same_with_and_without_the_memo(model, monkeypatch):
    ps = _ps(model)
    store = ActivationStore()
    kw = dict(token="top", activations=store)
    M.forget_derived(model)
    before = dict(registry.derived_counts)          # name -> times computed
    first = E.sweep(model, ps, ["attn0", "attn2", "mlp1"], **kw)       # computes the constants
    computed = {k: v - before.get(k, 0) for k, v in registry.derived_counts.items() if v != before.get(k, 0)}
    assert computed and set(computed.values()) == {1}, computed        # each one once
    after_first = dict(registry.derived_counts)
    again = E.sweep(model, ps, ["attn0", "attn2", "mlp1"], **kw)       # memo hits
    assert registry.derived_counts == after_first                      # none computed again
    monkeypatch.setattr(registry, "DERIVED_MAX_BYTES", -1)                      # nothing kept: as before
    M.forget_derived(model)
    uncached = [E.self_repair(model, ps, c, **kw) for c in ["attn0", "attn2", "mlp1"]]
    for a, b, c in zip(first, again, uncached):
        for f in ("clean_de", "delta_de", "norm_term", "total", "clean_logit", "measured_total"):
            assert torch.equal(getattr(a, f), getattr(b, f)) and torch.equal(getattr(a, f), getattr(c, f)), f
        assert a.constants.keys() == c.constants.keys()
        assert all(torch.equal(a.constants[k], c.constants[k]) for k in a.constants)
    # each result owns its arrays: editing one leaves the others as they were
    before = first[1].clean_de.clone()
    first[0].clean_de.add_(1.0)
    assert torch.equal(first[1].clean_de, before)


def test_each_constant_is_converted_once_across_calls(model, monkeypatch):
    cls = type(model)
    reads = {name: _Counting(monkeypatch, cls, name) for name in ("W_O", "W_V", "b_U")}
    M.forget_derived(model)
    ps = _ps(model)
    store = ActivationStore()
    n_calls = 0
    for c in ("attn0", "attn1", "mlp2"):
        E.self_repair(model, ps, c, token="top", activations=store)
        E.decompose(model, ps, token="top", activations=store)
        n_calls += 2
    E.sweep(model, ps, ["attn0", "attn1", "attn2"], token="top", activations=store)
    R.projection_ratios(model, ps, activations=store)
    R.value_input_check(model, ps, "L0H1", ["L1H0", "L2H3"], activations=store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # a small cosine on random weights: not what is tested
        R.value_input_check(model, ps, "mlp0", ["L2H1"], activations=store)
    assert n_calls == 6
    assert reads["W_O"].n == 1 and reads["W_V"].n == 1 and reads["b_U"].n == 1, {k: v.n for k, v in reads.items()}
    # the same, with the memo disabled: one conversion per use (the check above can fail)
    monkeypatch.setattr(registry, "DERIVED_MAX_BYTES", -1)
    M.forget_derived(model)
    E.decompose(model, ps, token="top", activations=store)
    E.decompose(model, ps, token="top", activations=store)
    assert reads["W_O"].n == 3 and reads["b_U"].n == 3


def _o_proj_weights(model):
    """The parameters holding W_O: those whose in-place change changes ``model.W_O``."""
    return [p for n, p in model.named_parameters() if (".o_proj." in n or ".attn.o." in n) and n.endswith("weight")]


def test_an_in_place_weight_edit_is_seen(model):
    ps = _ps(model)
    M.forget_derived(model)
    E.decompose(model, ps, token="top", activations=ActivationStore())      # constants memoized
    W_O0, W_U0 = E.attn_output_weights(model).clone(), model.W_U.detach().clone()
    ps_o = _o_proj_weights(model)
    assert ps_o, [n for n, _ in model.named_parameters()]
    with torch.no_grad():                      # the ordinary way: bumps the tensors' version counters
        for p in ps_o:
            p.mul_(1.5)
        model.W_U[:, :7] += 0.25               # through a view of the parameter
    assert not torch.equal(model.W_O.detach().double(), W_O0)      # the edit reached the model
    assert torch.equal(E.attn_output_weights(model), model.W_O.detach().double())
    ids = torch.tensor([1, 2, 30])
    w, b = E._unembed_dirs(model, ids)
    w0, b0 = _old_unembed_dirs(model, ids)
    assert torch.equal(w, w0) and torch.equal(b, b0)
    assert not torch.equal(model.W_U.detach(), W_U0)
    # Independent check: the decomposition's identity (the parts sum to the logit read from the
    # edited model) holds only with the edited W_O and W_U. A fresh store: the store keys on the
    # weights' fingerprint, which an in-place edit does not change.
    de = E.decompose(model, ps, token="top", activations=ActivationStore())
    assert torch.allclose(de.parts_sum, de.logit, atol=1e-4)


def test_load_state_dict_and_replaced_parameters_are_seen(model):
    M.forget_derived(model)
    W_O0 = E.attn_output_weights(model).clone()
    p = _o_proj_weights(model)[0]
    owner = next(m for m in model.modules() if m._parameters.get("weight") is p)
    owner.load_state_dict({**owner.state_dict(), "weight": p.detach() * 2.0})   # copies in place
    assert torch.equal(E.attn_output_weights(model), model.W_O.detach().double())
    assert not torch.equal(E.attn_output_weights(model), W_O0)
    p.data = p.data * 0.5                       # a new tensor: another storage address
    assert torch.equal(E.attn_output_weights(model), model.W_O.detach().double())


def test_writes_through_data_need_forget_derived(model):
    """The documented limit: ``p.data`` bypasses the version counter, so the memo cannot see it;
    ``forget_derived`` drops the model's constants."""
    M.forget_derived(model)
    stale = E.attn_output_weights(model).clone()
    for p in _o_proj_weights(model):
        p.data.mul_(3.0)
    assert torch.equal(E.attn_output_weights(model), stale)             # not seen, as documented
    M.forget_derived(model)
    assert torch.equal(E.attn_output_weights(model), model.W_O.detach().double())
    assert not torch.equal(E.attn_output_weights(model), stale)


def test_a_copy_of_the_model_has_its_own_constants(model):
    M.forget_derived(model)
    mine = E.attn_output_weights(model)
    dup = copy.deepcopy(model)
    with torch.no_grad():
        for p in _o_proj_weights(dup):
            p.data.copy_(torch.randn_like(p))      # .data: only a new object (the copy) tells them apart
    assert torch.equal(E.attn_output_weights(dup), dup.W_O.detach().double())
    assert torch.equal(E.attn_output_weights(model), mine)


def test_derived_memo_rules():
    calls = []

    class Thing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

    t = Thing()
    f = lambda m: calls.append(1) or m.w.detach().sum()  # noqa: E731
    assert float(M.derived(t, "s", f)) == 3.0 and float(M.derived(t, "s", f)) == 3.0 and len(calls) == 1
    with torch.no_grad():
        t.w.add_(1.0)
    assert float(M.derived(t, "s", f)) == 6.0 and len(calls) == 2
    # a model that cannot be weakly referenced: computed every time, never kept
    class Plain:
        __slots__ = ("parameters",)
    p = Plain()
    p.parameters = lambda: iter(())
    assert M.derived(p, "x", lambda m: 1) == 1 and M.derived(p, "x", lambda m: calls.append(1) or 2) == 2
    assert M.weights_state(object()) == ("", ())


@pytest.mark.parametrize("targets", [["attn0", "mlp0", "attn2", "L1H2", "mlp2"]])
def test_sweep_equals_the_full_decomposition(model, targets):
    """A sweep reads the clean side once, takes the direct effects of the writers before the
    ablated block from the clean run and a head's as ``z . (W_O w) / s``; the result is that of
    the decomposition written out in full with the public functions (every writer's output
    vector, clean and ablated) up to float64 rounding, and exactly 0 where nothing changed."""
    from pytest_circuits.interventions import ablate

    ps = _ps(model)
    store = ActivationStore()
    got = E.sweep(model, ps, targets, kind="zero", token="top", activations=store)
    ids = E.targets(model, ps, "top", store)
    w, _ = E._unembed_dirs(model, ids)
    clean = E.outputs(model, ps, store=store, logits=True)
    all_clean = E.direct_effects(clean, w, constants=True)
    n_c = len(clean.components)
    close = dict(rtol=1e-12, atol=1e-12)
    for t, sr in zip(targets, got):
        abl = ablate(model, t, "zero", positions="last")
        after = E.outputs(model, ps, intervention=abl, store=store, logits=True)
        all_abl = E.direct_effects(after, w, scale=clean.scale, constants=True)
        delta_all = all_abl - all_clean
        norm = all_abl.sum(0) * (clean.scale / after.scale - 1.0) + delta_all[n_c:].sum(0)
        torch.testing.assert_close(sr.clean_de, all_clean[:n_c], **close)
        torch.testing.assert_close(sr.delta_de, delta_all[:n_c], **close)
        torch.testing.assert_close(sr.norm_term, norm, **close)
        torch.testing.assert_close(sr.total, delta_all[:n_c].sum(0) + norm, **close)
        assert torch.equal(sr.measured_total, E.centred_logit(after.logits, ids) - E.centred_logit(clean.logits, ids))
        assert float(sr.own.abs().max()) > 1e-4, t      # the ablation did something: not a vacuous check
        # writers upstream of the ablated block change by exactly 0 (the clean run's rows)
        first = min(item.component.layer for item in abl)
        for i, c in enumerate(sr.components):
            if c.layer < first:
                assert bool((sr.delta_de[i] == 0).all()), (t, str(c))
        # the rows of the ablated run are those of its own decomposition (same numbers, not only close)
        de = E.decompose(model, ps, token=ids.tolist(), intervention=abl, activations=store)
        torch.testing.assert_close(sr.clean_de + sr.delta_de, de.values * after.scale / clean.scale, **close)

