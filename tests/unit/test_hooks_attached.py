"""hooks.run / hooks.attached (#25): the project's forwards attach hooks straight to the bridge's
hook points, with the names resolved once per model, instead of through ``run_with_hooks`` /
``model.hooks()``, which rebuild the bridge's whole hook dictionary and alias map each call.

The reference is TransformerLens itself: on the tiny Llama, a grouped-query Llama and GPT-2,
the logits, the values hooks read and the gradients must be bitwise those of
``run_with_hooks`` / ``model.hooks()`` with the same hooks (hooks that patch, hooks that read,
filters, forwards resumed and stopped early), and every hook must be gone afterwards, however
the forward ended."""

from __future__ import annotations

import pytest
import torch

from pytest_circuits import ActivationStore
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I
from pytest_circuits.techniques import edges as E


@pytest.fixture(scope="module", params=["llama", "gqa", "gpt2"])
def model(request, tiny, arch_model):
    return tiny if request.param == "llama" else arch_model(request.param)


def _tokens(model, b=3, width=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.cfg.d_vocab, (b, width), generator=g).to(model.cfg.device)


def _hooks(model, seen):
    """Hooks that patch (a head zeroed, the residual stream shifted) and hooks that read."""
    L = model.cfg.n_layers

    def zero_head(t, hook):
        t = t.clone()
        t[:, :, 1] = 0
        return t

    def shift(t, hook):
        return t + 0.25

    def read(name):
        def hook(t, hook):
            seen[name] = t.detach().clone()
        return hook

    return [(H.z(0), zero_head), (H.resid_pre(1), shift), (H.z(1), read("z1")), (H.pattern(0), read("p0")),
            (H.resid_post(L - 1), read("final")), (H.EMBED, read("embed")), (H.mlp_out(0), read("mlp0"))]


def _no_hooks_left(model):
    """No hook of any hook point, nor any torch forward/backward hook on them, remains."""
    for name, hp in model.hook_dict.items():
        assert not hp.fwd_hooks and not hp.bwd_hooks, name
        assert not hp._forward_hooks and not hp._backward_hooks, name
    assert model.context_level == 0


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kwargs", [{}, {"stop_at_layer": 1}, {"stop_at_layer": -1}])
def test_run_is_run_with_hooks_bitwise(model, kwargs):
    toks = _tokens(model)
    old_seen, new_seen = {}, {}
    with torch.no_grad():
        old = model.run_with_hooks(toks, fwd_hooks=_hooks(model, old_seen), **kwargs)
        new = H.run(model, toks, _hooks(model, new_seen), **kwargs)
    assert torch.equal(old, new)
    _same(old_seen, new_seen)
    # stopped before block 1: its hooks are not attached (they would not fire either way)
    assert ("z1" in new_seen) == (not kwargs)
    _no_hooks_left(model)


def test_a_resumed_forward_leaves_out_the_hooks_before_it(model):
    """``start_at_layer``: the embedding's and block 0's hooks are left out, as run_with_hooks
    leaves them out (so the store's check that every hook fired is the same on both paths)."""
    toks = _tokens(model)
    with torch.no_grad():
        resid = {}
        model.run_with_hooks(toks, fwd_hooks=[(H.resid_pre(1), lambda t, hook: resid.setdefault("r", t.clone()))])
        old_seen, new_seen = {}, {}
        old = model.run_with_hooks(resid["r"], fwd_hooks=_hooks(model, old_seen), start_at_layer=1)
        new = H.run(model, resid["r"], _hooks(model, new_seen), start_at_layer=1)
    assert torch.equal(old, new)
    _same(old_seen, new_seen)
    assert "embed" not in new_seen and "z1" in new_seen
    _no_hooks_left(model)


def test_a_filter_picks_the_hook_points_run_with_hooks_picks(model):
    toks = _tokens(model)
    old_seen, new_seen = {}, {}

    def keep(seen):
        def hook(t, hook):
            seen.setdefault(hook.name, []).append(t.detach().clone())
        return hook

    wanted = lambda n: n.endswith(("hook_resid_pre", "hook_q"))  # noqa: E731
    with torch.no_grad():
        old = model.run_with_hooks(toks, fwd_hooks=[(wanted, keep(old_seen))])
        new = H.run(model, toks, [(wanted, keep(new_seen))])
    assert torch.equal(old, new)
    assert old_seen.keys() == new_seen.keys() and len(new_seen) >= 2 * model.cfg.n_layers
    for k in old_seen:
        assert len(old_seen[k]) == len(new_seen[k]) and all(map(torch.equal, old_seen[k], new_seen[k]))
    _no_hooks_left(model)


def test_hooks_are_removed_when_the_forward_raises(model):
    toks = _tokens(model)

    class Boom(Exception):
        pass

    def boom(t, hook):
        raise Boom

    with torch.no_grad():
        clean = model(toks)
        with pytest.raises(Boom):
            H.run(model, toks, _hooks(model, {}) + [(H.resid_pre(1), boom)])
        _no_hooks_left(model)
        with pytest.raises(Boom), H.attached(model, _hooks(model, {})):
            raise Boom                         # raised in the block, not by a hook
        _no_hooks_left(model)
        # an unknown name after good ones: refused, and the good ones are not left behind
        with pytest.raises(KeyError, match="does not exist"):
            H.run(model, toks, _hooks(model, {}) + [("blocks.0.hook_nothing", lambda t, hook: None)])
        _no_hooks_left(model)
        # a gated hook point is refused as run_with_hooks refuses it, even outside the blocks run
        gated = [(H.z(0), lambda t, hook: None), ("blocks.1.attn.hook_result", lambda t, hook: None)]
        with pytest.raises(ValueError, match="use_attn_result") as old:
            model.run_with_hooks(toks, fwd_hooks=gated, stop_at_layer=1)
        with pytest.raises(ValueError, match="use_attn_result") as new:
            H.run(model, toks, gated, stop_at_layer=1)
        assert str(old.value) == str(new.value)
        _no_hooks_left(model)
        assert torch.equal(model(toks), clean)


def test_hooks_attached_before_are_left_alone(model):
    toks = _tokens(model)
    outer, inner = [], []
    with torch.no_grad(), model.hooks(fwd_hooks=[(H.z(0), lambda t, hook: outer.append(1))]):
        with H.attached(model, [(H.z(0), lambda t, hook: inner.append(1))]):
            model(toks)
        model(toks)
        H.run(model, toks, [(H.z(1), lambda t, hook: inner.append(2))])
    assert outer == [1, 1, 1] and inner == [1, 2]
    _no_hooks_left(model)


def test_gradients_through_attached_hooks_are_bitwise_model_hooks(model):
    """A backward pass (what edge attribution takes) through hooks that make a leaf of the
    embedding's output and patch a head: the same gradient as under ``model.hooks()``."""
    toks = _tokens(model)

    def grads(attach):
        kept = {}

        def leaf(t, hook):
            kept["x"] = t.detach().clone().requires_grad_(True)
            return kept["x"]

        def scale(t, hook):
            return t * torch.linspace(0.5, 1.5, t.shape[2], dtype=t.dtype, device=t.device)[:, None]

        with torch.enable_grad(), attach(model, [(H.EMBED, leaf), (H.z(0), scale)]):
            logits = model(toks)
        g, = torch.autograd.grad(logits[:, -1].logsumexp(-1).sum(), kept["x"])
        return logits.detach(), g

    old = grads(lambda m, hooks: m.hooks(fwd_hooks=hooks))
    new = grads(H.attached)
    assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])
    _no_hooks_left(model)


def test_a_replaced_hook_point_is_resolved_again(tiny):
    """The names are remembered per model, but only while the bridge still has the same hook
    point under the name: one it replaced is looked up again."""
    name = H.resid_pre(1)
    canonical, hp = H._point(tiny, name)
    assert H._point(tiny, name) == (canonical, hp)
    other = type(hp)()
    other.name = hp.name
    tiny._hook_registry[canonical] = other
    try:
        assert H._point(tiny, name)[1] is other
    finally:
        tiny._hook_registry[canonical] = hp
    assert H._point(tiny, name)[1] is hp


def test_a_model_that_is_not_a_bridge_goes_through_its_own_methods():
    calls = []

    class Plain:
        def run_with_hooks(self, x, fwd_hooks=(), **kwargs):
            calls.append(("run", len(fwd_hooks), kwargs))
            return x

        def hooks(self, fwd_hooks=(), bwd_hooks=()):
            calls.append(("hooks", len(fwd_hooks)))
            import contextlib
            return contextlib.nullcontext(self)

    m = Plain()
    assert H.run(m, 5, [("a", None)], stop_at_layer=1) == 5
    with H.attached(m, [("a", None), ("b", None)]) as got:
        assert got is m
    assert calls == [("run", 1, {"stop_at_layer": 1}), ("hooks", 2)]


# -- the project's paths, old against new ---------------------------------------------------------

def _old_paths(monkeypatch):
    """TransformerLens's own run_with_hooks / hooks() in place of hooks.run / hooks.attached."""
    monkeypatch.setattr(H, "run", lambda model, inp, fwd=(), **kw: model.run_with_hooks(inp, fwd_hooks=list(fwd), **kw))
    monkeypatch.setattr(H, "attached", lambda model, fwd=(), bwd=(): model.hooks(fwd_hooks=list(fwd), bwd_hooks=list(bwd)))


def test_the_store_gives_the_same_bits_on_both_paths(model, logit_diff, monkeypatch):
    """The store's forwards (clean, intervened, resumed at a block and at a position) and edge
    attribution (forward, backward, gradients taken in the kept graph) on both paths."""
    words = ["the", "cat", "dog", "sat", "on", "mat", "John", "Mary", "went", "to", "store"]
    g = torch.Generator().manual_seed(5)
    pairs = []
    for i in range(6):
        w = [words[int(j)] for j in torch.randint(len(words), (6,), generator=g)]
        other = list(w)
        if i < 5:                                   # the last prompt is its own corruption
            other[3] = words[(words.index(w[3]) + 1) % len(words)]
        pairs.append((" ".join(w), " ".join(other)))
    task = logit_diff(model, pairs)
    ps = task.prompts
    L = model.cfg.n_layers
    names = [H.resid_post(L - 1), H.z(1), H.LOGITS_LAST]
    ivs = [I.ablate(model, "L0H1", "zero"), I.ablate(model, ["L1H0", "MLP0"], "mean", reference=ps.corrupted), I.patch(model, "L1H2")]

    def everything():
        store = ActivationStore()
        out = [store.get(model, ps, names)]
        out += [store.get(model, ps, names, iv) for iv in ivs]
        scores = E.edge_attribution(model, task, activations=store,
                                    edges=[e for e in E.graph(model) if e.receiver is None or e.receiver.layer == 1])
        return out, scores.values, store.counters

    new, new_scores, new_counters = everything()
    with monkeypatch.context() as m:
        _old_paths(m)
        old, old_scores, old_counters = everything()
    for a, b in zip(old, new):
        _same(a, b)
    assert torch.equal(old_scores, new_scores)
    print(new_counters)
    assert new_counters.resumed_passes > 0 and new_counters.suffix_passes > 0
    assert new_counters.forward_passes == old_counters.forward_passes
    _no_hooks_left(model)
