"""Experts of a mixture of experts as components (``L1E3``): their outputs, the direct effects
split into them, and their ablation, on the tiny Mixtral of the architecture matrix.

Every expected value is computed by hand with raw torch on the Hugging Face model loaded from
the same checkpoint folder (its weights as written, before compatibility mode folds the norms):
the MoE block's input and output are read with a forward hook on the block, the router's
softmax and top-k and each expert's gated MLP are recomputed from the block's own parameters,
and an ablation is made by a forward hook that changes the block's output. No project code is
used on that side (except the derangement that defines which prompt a resample reads from).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from pytest_circuits import ActivationStore, PromptSet, load_model, moe
from pytest_circuits import architectures as A
from pytest_circuits import components as Cm
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I
from pytest_circuits.components import MLP, Expert, Neuron, parse
from pytest_circuits.errors import (CircuitsError, ComponentError, InterventionError, MeasurementError,
                                    NoOpInterventionWarning)
from pytest_circuits.techniques import effects as E

PROMPTS = ["the cat sat on the mat in the", "the capital of France is the city of",
           "when John and Mary went to the store John gave the bag to",
           "the king of Italy went to the", "a dog sat on the mat and the queen said"]
ANSWERS = [" city", " Paris", " Mary", " Rome", " mat"]
CORRUPTED = ["the dog sat on the bag in a", "the capital of Spain is a city", "when Mary and John went to a store",
             "the queen of Japan went to a", "the cat went to the city and the king said"]
SAME = ["the cat sat on the mat", "the dog sat on the bag", "a king went to the city",
        "the queen said the ball was", "John gave Mary the cat ."]
REFERENCE = ["the cat", "when John and Mary went to the store", "the king of France"]


class Mixtral:
    def __init__(self, folder, cache):
        from transformers import AutoModelForCausalLM

        self.model = load_model(folder, cache_dir=cache, device="cpu")
        self.hf = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
        self.ps = PromptSet.build(self.model, PROMPTS, answers=ANSWERS, corrupted=CORRUPTED, align=False,
                                  name="prompts")

    # -- by hand, on the Hugging Face model ------------------------------------------------
    def block(self, layer):
        return self.hf.model.layers[layer].mlp

    def run(self, tokens, edit=None):
        """One unpadded prompt through the HF model: its logits at the last position, each MoE
        block's input and output, and the final norm's input; ``edit``: {layer: fn(out) -> out}
        applied to that block's output."""
        seen, handles = {}, []
        for l, layer in enumerate(self.hf.model.layers):
            def keep(mod, args, out, l=l):
                seen[("x", l)], seen[("out", l)] = args[0][0], out[0]
                if edit and l in edit:
                    return edit[l](out)
            handles.append(layer.mlp.register_forward_hook(keep))
        handles.append(self.hf.model.norm.register_forward_hook(
            lambda mod, args, out: seen.update(final=args[0][0, -1])))
        try:
            with torch.no_grad():
                seen["logits"] = self.hf(tokens.unsqueeze(0)).logits[0, -1].double()
        finally:
            for h in handles:
                h.remove()
        return seen

    def experts(self, layer, x):
        """``[E, pos, d]``: each expert's routed output at each position of the block input ``x``."""
        block, cfg = self.block(layer), self.hf.config
        probs = torch.softmax((x @ block.gate.weight.T).float(), dim=-1)
        top, idx = probs.topk(cfg.num_experts_per_tok, dim=-1)
        top = top / top.sum(-1, keepdim=True)                     # Mixtral renormalizes the top k
        outs = []
        with torch.no_grad():
            for e in range(cfg.num_local_experts):
                gate, up = (x @ block.experts.gate_up_proj[e].T).chunk(2, dim=-1)
                y = (torch.nn.functional.silu(gate) * up) @ block.experts.down_proj[e].T
                outs.append(y * (top * (idx == e)).sum(-1, keepdim=True))
        return torch.stack(outs)

    def tokens(self, ps, i):
        return ps.tokens[i, :ps.lengths[i]]

    def expert_of(self, ps, i, layer, e=None):
        """Prompt ``i`` of ``ps`` run alone: each expert's output in ``layer`` ``[E, pos, d]`` (or ``e``'s)."""
        out = self.experts(layer, self.run(self.tokens(ps, i))[("x", layer)])
        return out if e is None else out[e]


@pytest.fixture(scope="module")
def mx(arch_checkpoint, tmp_path_factory):
    return Mixtral(arch_checkpoint("mixtral", seed=3), tmp_path_factory.mktemp("mixtral-cache"))


@pytest.fixture(scope="module")
def store():
    return ActivationStore(batch_size=2)


def centred(v):
    v = v.double()
    return v - v.mean(-1, keepdim=True)


def busiest(mx, store, layer):
    """The expert of ``layer`` with the largest direct effect summed over the prompts (so that
    removing it changes something)."""
    split = E.decompose(mx.model, mx.ps, activations=store, experts=True)
    rows = E.rows_of(split.components, MLP(layer))
    return int(split.values[rows].abs().sum(1).argmax())


# ----------------------------------------------------------------------------- spellings
def test_spellings_of_an_expert():
    for text in ("L1E3", "l1e3", "mlp1.e3", "m1.E3", " L1E3 "):
        assert parse(text) == Expert(1, 3)
    assert str(Expert(1, 3)) == "L1E3" and repr(Expert(1, 3)) == "Expert(1, 3)"
    assert parse(str(Expert(12, 40))) == Expert(12, 40)
    assert parse("e") == Cm.Embed()                      # "e" alone is still the embedding
    # forward order: an expert is read where its MLP is, after the layer's heads
    assert sorted([Expert(1, 0), Cm.Head(1, 3), MLP(0), Expert(0, 2)], key=lambda c: c.sort_key()) == \
        [Expert(0, 2), MLP(0), Cm.Head(1, 3), Expert(1, 0)]
    for bad_value in (True, 1.0, "1"):
        with pytest.raises(ComponentError, match="Expert.expert"):
            Expert(1, bad_value)
    with pytest.raises(ComponentError, match="L1E3, mlp1.e3"):
        parse("L1X3")


def test_experts_are_validated_against_the_model(mx, arch_model, tiny):
    m = mx.model
    assert moe.moe_layers(m) == (0, 1) and moe.n_experts(m, 1) == 4
    assert parse("L1E3", m) == Expert(1, 3)
    assert Cm.all_experts(m) == [Expert(l, e) for l in (0, 1) for e in range(4)]
    with pytest.raises(ComponentError, match=r"expert must be in 0\.\.3 \(layer 1 has 4 experts\)"):
        parse("L1E4", m)
    with pytest.raises(ComponentError, match="layer must be in 0..1"):
        parse("L2E0", m)
    # a neuron of a mixture of experts: the block's hook_post is its output, not neurons
    with pytest.raises(ComponentError, match="mixture of 4 experts.*L1E0 .. L1E3"):
        parse("L1N5", m)
    # a dense model has no experts, and says so
    assert moe.moe_layers(tiny) == () and Cm.all_experts(tiny) == []
    with pytest.raises(ComponentError, match="no mixture-of-experts layers"):
        parse("L0E0", tiny)
    assert parse("L0N5", tiny) == Neuron(0, 5)
    # Qwen3-MoE with a dense layer 0: its experts are in layer 1 only, its neurons in layer 0 only
    q = arch_model("qwen3moe", seed=3)
    assert moe.moe_layers(q) == (1,)
    with pytest.raises(ComponentError, match="layers with experts: 1"):
        parse("L0E1", q)
    assert parse("L1E1", q) == Expert(1, 1) and parse("L0N7", q) == Neuron(0, 7)
    with pytest.raises(ComponentError, match="mixture of 4 experts"):
        parse("L1N7", q)
    with pytest.raises(ComponentError, match="no experts"):
        moe.expert_outputs(q, 0, torch.zeros(1, 64))
    with pytest.raises(ComponentError, match="a component whose output a hook holds"):
        H.output(Expert(1, 0))


# ----------------------------------------------------------------------------- outputs
def test_expert_outputs_equal_the_hand_computation_and_sum_to_the_block(mx, store):
    m, ps = mx.model, mx.ps
    acts = store.get(m, ps, [n for l in (0, 1) for n in (H.moe_in(l), H.mlp_out(l))])
    for l in (0, 1):
        mine = moe.expert_outputs(m, l, acts[H.moe_in(l)]).double()             # [E, n, pos, d]
        assert mine.shape == (4,) + tuple(acts[H.moe_in(l)].shape)
        assert torch.equal(moe.expert_outputs(m, l, acts[H.moe_in(l)], [2])[0].double(), mine[2])
        for i in range(len(ps)):
            n = ps.lengths[i]
            hand = mx.run(mx.tokens(ps, i))
            by_hand = mx.experts(l, hand[("x", l)]).double()
            torch.testing.assert_close(mine[:, i, :n], by_hand, atol=1e-7, rtol=1e-4)
            # top 2 of 4: exactly two experts write at each position
            assert bool(((mine[:, i, :n].abs().amax(-1) > 0).sum(0) == 2).all())
            # the sum: the block's output in the model's own forward and in the store's run
            torch.testing.assert_close(mine[:, i, :n].sum(0), hand[("out", l)].double(), atol=1e-7, rtol=1e-4)
            torch.testing.assert_close(mine[:, i, :n].sum(0), acts[H.mlp_out(l)][i, :n].double(), atol=1e-7,
                                       rtol=1e-4)


def test_the_sum_identity_is_checked(mx, store, monkeypatch):
    m, ps = mx.model, mx.ps
    acts = store.get(m, ps, [H.moe_in(1), H.mlp_out(1)])
    parts = moe.expert_outputs(m, 1, acts[H.moe_in(1)])
    moe.check_sum(parts, acts[H.mlp_out(1)], "the experts")
    with pytest.raises(MeasurementError, match="do not sum to the block's output"):
        moe.check_sum(parts[1:], acts[H.mlp_out(1)], "three of the experts")
    nan = acts[H.mlp_out(1)].clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(MeasurementError, match="non-finite"):
        moe.check_sum(parts, nan, "the experts")
    # a block computing something besides its routed experts is caught by the block's own identity
    block = moe.sparse_block(m, 1).block
    real = block.forward
    monkeypatch.setattr(moe, "_CHECKED", type(moe._CHECKED)())
    monkeypatch.setattr(block, "forward", lambda x: real(x) + 1e-3)
    with pytest.raises(MeasurementError, match="on random inputs do not sum to the block's output"):
        parse("L1E0", m)


def test_a_shared_expert_is_refused_by_name(tmp_path):
    """Qwen2-MoE adds a shared expert (with its own sigmoid gate) that every token goes through:
    its output is not the sum of the routed experts'."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    vocab = A.write_tokenizer(tmp_path / "q2moe")
    torch.manual_seed(0)
    cfg = Qwen2MoeConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                         moe_intermediate_size=32, shared_expert_intermediate_size=64, max_position_embeddings=128,
                         tie_word_embeddings=False, bos_token_id=vocab["<bos>"], eos_token_id=vocab["<pad>"],
                         pad_token_id=vocab["<pad>"])
    Qwen2MoeForCausalLM(cfg).save_pretrained(str(tmp_path / "q2moe"))
    m = load_model(tmp_path / "q2moe", cache_dir=tmp_path / "cache", device="cpu")
    assert moe.moe_layers(m) == (0, 1) and moe.n_experts(m, 1) == 4
    with pytest.raises(ComponentError, match="a shared expert .*shared_expert"):
        parse("L1E0", m)
    ps = PromptSet.build(m, PROMPTS[:3], answers=ANSWERS[:3], name="p")
    with pytest.raises(ComponentError, match="shared expert"):
        E.decompose(m, ps, activations=ActivationStore(), experts=True)
    E.decompose(m, ps, activations=ActivationStore())          # whole MLPs: exact as before


# ----------------------------------------------------------------------------- direct effects
def test_direct_effects_split_into_experts(mx, store):
    m, ps = mx.model, mx.ps
    whole = E.decompose(m, ps, activations=store)
    split = E.decompose(m, ps, activations=store, experts=True)
    assert whole.components == E.writers(m) and not any(isinstance(c, Expert) for c in whole.components)
    assert [str(c) for c in split.components] == (
        ["embed"] + [f"L0H{h}" for h in range(4)] + [f"L0E{e}" for e in range(4)]
        + [f"L1H{h}" for h in range(4)] + [f"L1E{e}" for e in range(4)])
    assert split.provenance["experts"] is True and "experts" not in whole.provenance
    assert "logit" not in whole.provenance                      # (the read logit is not provenance)
    # the same logit, read from the model; the same rows for every writer but the MLPs
    assert torch.equal(split.logit, whole.logit)
    for c in whole.components:
        if not isinstance(c, MLP):
            assert torch.equal(split.of(c), whole.of(c)), c
    for l in (0, 1):
        torch.testing.assert_close(split.of(MLP(l)), whole.of(MLP(l)), atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(split.residual, torch.zeros_like(split.residual), atol=1e-6, rtol=0)
    # each expert's direct effect, by hand: its output through the final norm and the centred unembedding
    W = mx.hf.lm_head.weight.double()
    g, eps = mx.hf.model.norm.weight.double(), mx.hf.config.rms_norm_eps
    for i in range(len(ps)):
        hand = mx.run(mx.tokens(ps, i))
        final = hand["final"].double()
        rms = torch.sqrt(final.pow(2).mean() + eps)
        w = g * (W[ps.answer_ids[i]] - W.mean(0))
        assert float(centred(hand["logits"])[ps.answer_ids[i]] - split.logit[i]) == pytest.approx(0, abs=2e-5)
        for l in (0, 1):
            out = mx.experts(l, hand[("x", l)])[:, -1].double()            # [E, d] at the last position
            want = out @ w / rms
            got = torch.stack([split.of(Expert(l, e))[i] for e in range(4)])
            torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-4)


def test_rankings_by_expert(mx, store):
    m, ps = mx.model, mx.ps
    whole = E.decompose(m, ps, activations=store)
    split = E.decompose(m, ps, activations=store, experts=True)
    by_expert = split.ranking(by="experts")
    assert sorted(r.component for r in by_expert) == [Expert(l, e) for l in (0, 1) for e in range(4)]
    means = [r.mean for r in by_expert]
    assert means == sorted(means, reverse=True)
    assert by_expert[0].mean == pytest.approx(float(split.of(by_expert[0].component).mean()), abs=1e-12)
    split.assert_top(by_expert[0].component, by="experts")
    split.assert_in_top(str(by_expert[1].component), 2, by="experts")
    # the coarser grains are those of the whole MLPs
    for by in ("mlp", "sublayers", "layers"):
        a, b = split.ranking(by=by), whole.ranking(by=by)
        assert [r.component for r in a] == [r.component for r in b]
        assert [r.mean for r in a] == pytest.approx([r.mean for r in b], abs=1e-7)
    assert [r.component for r in split.ranking()][:3] == [r.component for r in split.ranking(by="components")][:3]
    with pytest.raises(CircuitsError, match="at least one component"):
        whole.ranking(by="experts")                          # nothing to rank: the MLPs are whole
    with pytest.raises(ComponentError, match="experts=True"):
        whole.of("L1E2")


def test_decomposing_into_experts_is_refused_where_it_cannot_be_exact(mx, store, tiny):
    m, ps = mx.model, mx.ps
    cats = PromptSet.build(tiny, ["The capital of France is"], answers=[" Paris"], name="cats")
    with pytest.raises(ComponentError, match="no mixture-of-experts layers"):
        E.decompose(tiny, cats, activations=ActivationStore(), experts=True)
    with pytest.raises(CircuitsError, match="True or False"):
        E.decompose(m, ps, activations=store, experts="yes")
    for replaced in ("L1E2", "mlp1"):
        with pytest.raises(MeasurementError, match="recomputed from mlp1's input"):
            E.decompose(m, ps, activations=store, experts=True, intervention=I.ablate(m, replaced, "zero"))
    # an intervention the decomposition cannot see into (the protocol's): the sum identity catches it
    class Nudge:
        key, layer = "nudge(mlp1)", 1

        def check(self, model, prompts):
            pass

        def fwd_hooks(self, model, prompts, index, store):
            return [(H.mlp_out(1), lambda t, hook=None: t + 0.01)]

    with pytest.raises(MeasurementError, match="experts of layer 1 at the last position do not sum"):
        E.decompose(m, ps, activations=store, experts=True, intervention=Nudge())
    nudged = E.decompose(m, ps, activations=store, intervention=Nudge())       # the whole MLP: exact
    torch.testing.assert_close(nudged.parts_sum, nudged.logit, atol=1e-6, rtol=0)
    # under an upstream intervention the experts are recomputed from the block's input in that run
    iv = I.ablate(m, "L0H1", "zero")
    split = E.decompose(m, ps, activations=store, experts=True, intervention=iv)
    whole = E.decompose(m, ps, activations=store, intervention=iv)
    torch.testing.assert_close(split.of(MLP(1)), whole.of(MLP(1)), atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(split.parts_sum, split.logit, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- ablations
def test_expert_ablations_equal_the_hand_computation(mx, store):
    m = mx.model
    varied = mx.ps
    same = PromptSet.build(m, SAME, corrupted=SAME[1:] + SAME[:1], name="same")
    ref = PromptSet.build(m, REFERENCE, name="ref")
    layer, e = 0, busiest(mx, store, 0)

    def hand_logits(ps, i, replace):
        """Prompt i with expert e's output at layer ``layer`` replaced: ``replace(own) -> new`` ([pos, d])."""
        own = mx.expert_of(ps, i, layer, e)
        change = (replace(own) - own).unsqueeze(0)          # computed before the run (it may run the model)
        return mx.run(mx.tokens(ps, i), edit={layer: lambda out: out + change})["logits"]

    def at(positions, n):
        mask = torch.zeros(n, 1, dtype=torch.bool)
        if positions is None:
            mask[:] = True
        elif positions == "last":
            mask[-1] = True
        else:
            mask[list(positions)] = True
        return mask

    ref_outs = [mx.expert_of(ref, j, layer, e) for j in range(len(ref))]
    ref_mean = torch.cat(ref_outs).double().mean(0)
    perm = I.derangement(len(varied), 4)
    lasts = [mx.expert_of(varied, j, layer, e)[-1] for j in range(len(varied))]
    cases = [(same, I.ablate(m, f"L{layer}E{e}", "zero", positions=p), p,
              lambda i, own, p: torch.where(at(p, own.shape[0]), 0 * own, own)) for p in (None, "last", (1, 3))]
    cases.append((varied, I.ablate(m, f"L{layer}E{e}", "mean", reference=ref, positions="last"), "last",
                  lambda i, own, p: torch.where(at(p, own.shape[0]), ref_mean.to(own.dtype), own)))
    cases.append((varied, I.ablate(m, f"L{layer}E{e}", "resample", positions="last", seed=4), "last",
                  lambda i, own, p: torch.where(at(p, own.shape[0]), lasts[int(perm[i])], own)))
    cases.append((same, I.patch(m, f"L{layer}E{e}", positions=(1, 3)), (1, 3),
                  lambda i, own, p: torch.where(at(p, own.shape[0]), mx.expert_of(same.corrupted, i, layer, e), own)))
    for ps, iv, p, rule in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoOpInterventionWarning)
            got = store.get(m, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST]
            full = ActivationStore(resume=False).get(m, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST]
        torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)           # suffix / resumed == full
        moved = 0.0
        for i in range(len(ps)):
            want = hand_logits(ps, i, lambda own: rule(i, own, p))
            torch.testing.assert_close(centred(got[i]), centred(want), atol=2e-5, rtol=0, msg=iv.key)
            moved = max(moved, float((centred(want) - centred(mx.run(mx.tokens(ps, i))["logits"])).abs().max()))
        assert moved > 1e-4, iv.key                                               # it changed something
    assert store.counters.suffix_passes > 0


def test_two_experts_of_a_layer_and_the_conflicts(mx, store):
    m, ps = mx.model, mx.ps
    both = I.ablate(m, ["L1E0", "L1E2"], "zero")
    got = store.get(m, ps, [H.mlp_out(1)], both)[H.mlp_out(1)]
    for i in range(len(ps)):
        n = ps.lengths[i]
        hand = mx.run(mx.tokens(ps, i))
        outs = mx.experts(1, hand[("x", 1)])
        torch.testing.assert_close(got[i, :n].double(), (hand[("out", 1)] - outs[0] - outs[2]).double(),
                                   atol=1e-7, rtol=1e-4)
    for iv in (I.ablate(m, ["mlp1", "L1E2"], "zero"), I.ablate(m, "L1E2") + I.patch(m, "mlp1"),
               I.ablate(m, "L1E2") + I.ablate(m, "L1E2", "zero", positions="last")):
        with pytest.raises(InterventionError, match="L1E2"):
            store.get(m, ps, [H.LOGITS_LAST], iv)
    # an expert and the MLP of another layer: fine
    store.get(m, ps, [H.LOGITS_LAST], I.ablate(m, ["mlp0", "L1E2"], "zero"))
    # circuits are made of heads and MLPs: an expert is refused there (and so in path patching)
    from pytest_circuits.techniques.circuits import expand

    with pytest.raises(CircuitsError, match="a head or an MLP"):
        expand(m, ["L1H0", "L1E2"])


def test_self_repair_of_an_expert(mx, store):
    m, ps = mx.model, mx.ps
    split = E.decompose(m, ps, activations=store, experts=True)
    for layer in (0, 1):
        for e in range(4):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoOpInterventionWarning)
                sr = E.self_repair(m, ps, f"L{layer}E{e}", kind="zero", activations=store)
            torch.testing.assert_close(sr.total, sr.own + sr.downstream + sr.norm_term, atol=1e-10, rtol=0)
            torch.testing.assert_close(sr.total, sr.measured_total, atol=2e-5, rtol=0)
            # the router and the other experts of its layer are untouched: the MLP's change is the expert's
            torch.testing.assert_close(sr.own, -split.of(Expert(layer, e)), atol=1e-6, rtol=1e-4)
            assert sr.ablated == tuple(E.rows_of(sr.components, MLP(layer)))
            # the total effect, by hand: the model's forward without the expert's output at the last position
            hand_unchanged = []
            for i in range(len(ps)):
                own = mx.expert_of(ps, i, layer, e)
                last = torch.zeros_like(own)
                last[-1] = own[-1]
                want = mx.run(mx.tokens(ps, i), edit={layer: lambda out, d=last: out - d.unsqueeze(0)})["logits"]
                clean = mx.run(mx.tokens(ps, i))["logits"]
                te = centred(want)[ps.answer_ids[i]] - centred(clean)[ps.answer_ids[i]]
                assert float(sr.measured_total[i]) == pytest.approx(float(te), abs=2e-5)
                hand_unchanged.append(bool((own[-1] == 0).all()))   # not routed there: nothing to remove
            assert list(sr.unchanged) == hand_unchanged
            if all(hand_unchanged):
                with pytest.raises(MeasurementError, match="uninformative"):
                    sr.ranking()
    # a sweep over experts (the four ablations of a layer stacked in one forward) == one at a time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoOpInterventionWarning)
        stacked = ActivationStore(batch_size=4 * len(ps))
        swept = E.sweep(m, ps, [f"L1E{e}" for e in range(4)], kind="zero", activations=stacked)
        assert stacked.counters.forward_passes <= 3        # the clean runs, then one for all four
        for e, sr in enumerate(swept):
            one = E.self_repair(m, ps, f"L1E{e}", kind="zero", activations=ActivationStore())
            torch.testing.assert_close(sr.total, one.total, atol=1e-7, rtol=0)
            torch.testing.assert_close(sr.total, sr.measured_total, atol=2e-5, rtol=0)
    e = busiest(mx, store, 1)
    dvt = E.dla_vs_total(m, ps, f"L1E{e}", kind="zero", activations=store)
    assert dvt.dla.values == pytest.approx(tuple(split.of(Expert(1, e)).tolist()), abs=1e-12)
    with pytest.raises(ComponentError, match="experts=True"):
        dvt.self_repair.compensation("L1E0")                    # the self-repair rows are whole MLPs


def test_experts_in_half_precision(arch_checkpoint, tmp_path):
    half = load_model(arch_checkpoint("mixtral", seed=3), cache_dir=tmp_path, device="cpu", dtype="bfloat16")
    ps = PromptSet.build(half, PROMPTS, answers=ANSWERS, name="prompts")
    store = ActivationStore()
    split = E.decompose(half, ps, activations=store, experts=True)       # checks both identities itself
    whole = E.decompose(half, ps, activations=store)
    assert torch.equal(split.logit, whole.logit)
    acts = store.get(half, ps, [H.moe_in(1)])
    assert moe.expert_outputs(half, 1, acts[H.moe_in(1)]).dtype == torch.bfloat16


def test_neuron_probes_refuse_a_mixture_of_experts_layer(arch_model):
    """The post-activation hook of an MoE block is its output (d_model wide): its dimensions are
    not neurons, so the sparse probes refuse the layer, naming it, instead of labelling residual
    dimensions Neuron(l, i)."""
    from pytest_circuits.errors import ComponentError
    from pytest_circuits.techniques import probing

    m = arch_model("mixtral")
    texts = ["a b c", "d e f", "g h i", "j k l"] * 4
    with pytest.raises(ComponentError, match="mixture of 4 experts"):
        probing.probe(m, texts, [0, 1] * 8, layer=1, k=1)
