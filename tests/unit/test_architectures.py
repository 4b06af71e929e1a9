"""Exact on every architecture: the identities of effects, self-repair, erasure and circuits
on every family of :mod:`pytest_circuits.architectures` (a Llama, a GPT-2 with non-zero biases
and learned positions, a grouped-query-attention Llama, GPT-NeoX, GPT-J, Mistral, Qwen2/3,
Gemma 1/2/3, Phi-3, OLMo-2, Mixtral, BLOOM; Gemma-2 measured in its pre-cap logit); and the
planted backup/erasure verdicts under mean ablation at the last position, with a no-op
resample flagged.

The logit each identity is checked against is read from the model (the store's logits
at the last position, centred), never summed from the parts.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import pytest_circuits
from pytest_circuits import ActivationStore, PromptSet, planted, tasks
from pytest_circuits.techniques import circuits as C
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I
from pytest_circuits.errors import CircuitsError, MeasurementError, NoOpInterventionWarning
from pytest_circuits.techniques import effects as E
from pytest_circuits.techniques import erasure as ER

from pytest_circuits import architectures as A

ARCHS = A.families()
EXTRA = {"gpt2": {"two_digit_numbers": True}}     # GPT-2's years are two-digit tokens
# The families whose attention layers have an output bias (b_O): a constant writer.
# (compatibility mode folds value biases into it: GPT-J's centring, Qwen2's QKV biases)
WITH_B_O = ("gpt2", "neox", "gptj", "qwen2", "bloom")
PLANTED = Path(__file__).resolve().parent.parent / "data" / "planted"


@pytest.fixture(scope="module", params=ARCHS)
def model(request, arch_model):
    m = arch_model(request.param, seed=7, **EXTRA.get(request.param, {}))
    m.arch_name = request.param
    # the logit effects are measured in (Gemma-2: the pre-cap logit; refused otherwise, see
    # tests/unit/test_architecture_matrix.py)
    m.effects_kw = A.expected("self-repair", request.param).kwargs
    return m


@pytest.fixture(scope="module")
def ps(model):
    return PromptSet.build(model, ["the cat sat on the", "the capital of France is", "when John and Mary went to the",
                                   "the king of Italy went to", "a dog sat on the mat in"],
                           answers=[" mat", " Paris", " store", " Rome", " France"], name="arch-effects")


@pytest.fixture(scope="module")
def store():
    return ActivationStore(batch_size=2)


def centred_logit(store, model, ps, iv=None):
    name = E.logit_hook(model, model.effects_kw.get("logit", "logit"))
    lg = store.get(model, ps, [name], iv)[name].double()
    return lg[torch.arange(len(ps)), torch.tensor(ps.answer_ids)] - lg.mean(-1)


def test_the_test_models_have_the_architecture_they_claim(model):
    cfg = model.cfg
    if model.arch_name == "gpt2":
        assert cfg.positional_embedding_type == "standard"
        assert float(model.b_O.abs().min(-1).values.min()) > 0      # every layer has a non-zero b_O
        assert float(model.W_pos.abs().mean()) > 0.01
    if model.arch_name in ("gqa", "mistral", "qwen2", "qwen3", "qwen3moe"):
        assert cfg.n_key_value_heads == 2 and cfg.n_heads == 4
    else:
        assert getattr(cfg, "n_key_value_heads", None) in (None, cfg.n_heads)
    assert (E.attn_output_bias(model) is not None) == (model.arch_name in WITH_B_O)


def test_direct_effects_sum_to_the_logit_read_from_the_model(model, ps, store):
    de = E.decompose(model, ps, activations=store, **model.effects_kw)
    read = centred_logit(store, model, ps)
    torch.testing.assert_close(de.logit, read, atol=0, rtol=0)               # read, not summed
    torch.testing.assert_close(de.parts_sum, read, atol=1e-4, rtol=0)
    # Every writer counts: learned positions and each layer's attention-output bias.
    want = ({"pos_embed"} if E._pos_embed_hook(model) else set()) | (
        {f"b_O[{l}]" for l in range(model.cfg.n_layers)} if model.arch_name in WITH_B_O else set())
    assert set(de.constants) == want
    if want:
        dropped = (de.values.sum(0) + de.bias - read).abs().max()
        # leaving them out would break the identity (by 10x its tolerance above at least)
        assert float(dropped) > 1e-3


@pytest.mark.parametrize("model", WITH_B_O, indirect=True)
def test_a_writer_the_decomposition_does_not_know_is_an_error(model, ps, monkeypatch):
    # Hide the constants (as the old decomposition did): the identity must catch it.
    assert E.attn_output_bias(model) is not None
    monkeypatch.setattr(E, "attn_output_bias", lambda m: None)
    with pytest.raises(MeasurementError, match="does not reproduce the logit read from the model"):
        E.decompose(model, ps, activations=ActivationStore())


@pytest.mark.parametrize("model", ["gemma2", "gemma3", "olmo2"], indirect=True)
def test_a_norm_after_attention_the_decomposition_forgot_is_an_error(model, ps, monkeypatch):
    # Without the post-attention norm's scale, heads do not sum to what the layer writes.
    assert E.attn_post_gains(model) is not None
    monkeypatch.setattr(E, "_post_scale", lambda acts, layer: torch.ones_like(acts[H.last(H.FINAL_SCALE)].double()
                                                                              .reshape(-1)))
    with pytest.raises(MeasurementError, match="does not reproduce the logit read from the model"):
        E.decompose(model, ps, activations=ActivationStore(), **model.effects_kw)


@pytest.mark.parametrize("model", ["olmo2"], indirect=True)
def test_an_unfolded_final_norm_the_decomposition_forgot_is_an_error(model, ps, monkeypatch):
    assert E.final_norm_gain(model) is not None
    monkeypatch.setattr(E, "final_norm_gain", lambda m: None)
    with pytest.raises(MeasurementError, match="does not reproduce the logit read from the model"):
        E.decompose(model, ps, activations=ActivationStore())


@pytest.mark.parametrize("model", ["gemma2"], indirect=True)
def test_direct_effects_under_a_final_soft_cap_are_refused_without_the_pre_cap_option(model, ps):
    with pytest.raises(MeasurementError, match=r"not additive under Gemma-2's final logit soft-capping.*"
                                               r'logit="pre_softcap".*total effects'):
        E.decompose(model, ps, activations=ActivationStore())
    with pytest.raises(MeasurementError, match="soft-capping"):
        E.self_repair(model, ps, "L0H1", kind="zero", activations=ActivationStore())
    with pytest.raises(MeasurementError, match="soft-capping"):
        E.sweep(model, ps, ["L0H1"], kind="zero", activations=ActivationStore())
    with pytest.raises(CircuitsError, match="logit="):
        E.decompose(model, ps, activations=ActivationStore(), logit="capped")


@pytest.mark.parametrize("target,kind,positions", [("L0H1", "zero", "last"), ("mlp0", "resample", "last"),
                                                   ("attn1", "zero", None), ("L1H2", "mean", "last"),
                                                   (["L0H2", "mlp1"], "position_mean", "last")])
def test_self_repair_total_equals_the_logits(model, ps, store, target, kind, positions):
    ref = PromptSet.build(model, ["the cat", "the king went to the city", "Mary gave John the ball"], name="ref")
    sr = E.self_repair(model, ps, target, kind=kind, positions=positions, seed=1,
                       reference=ref if kind == "mean" else None, activations=store, **model.effects_kw)
    te = centred_logit(store, model, ps, sr.ablation) - centred_logit(store, model, ps)
    torch.testing.assert_close(sr.measured_total, te, atol=1e-9, rtol=0)
    torch.testing.assert_close(sr.total, te, atol=1e-4, rtol=0)
    torch.testing.assert_close(sr.total, sr.own + sr.downstream + sr.norm_term, atol=1e-10, rtol=0)


def test_zero_ablating_an_attention_layer_keeps_its_output_bias(model, ps, store):
    """The documented definition: attnL's heads' outputs are removed, its b_O stays."""
    got = store.get(model, ps, [H.attn_out(1)], I.ablate(model, "attn1"))[H.attn_out(1)]
    real = torch.arange(got.shape[1]).unsqueeze(0) < torch.tensor(ps.lengths).unsqueeze(1)
    b_O = E.attn_output_bias(model)
    want = torch.zeros(model.cfg.d_model, dtype=torch.float64) if b_O is None else b_O[1]
    torch.testing.assert_close(got[real].double(), want.expand(int(real.sum()), -1), atol=1e-6, rtol=0)


def test_value_input_recomputation_reproduces_hook_z(model, ps, store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ER.NegligibleCosineWarning)
        vc = ER.value_input_check(model, ps, "L0H1", ["L1H0", "L1H2"], activations=store)
    assert vc.reproduction_error < 1e-5


def test_resample_at_the_last_position_takes_the_sources_last_token(model, store):
    varied = PromptSet.build(model, ["the cat sat", "the dog sat on the mat", "a king went to the city of Rome",
                                     "the queen said"], name="varied")
    clean = store.get(model, varied, [H.z(1)])[H.z(1)]
    got = store.get(model, varied, [H.z(1)], I.ablate(model, "L1H3", "resample", positions="last", seed=4))[H.z(1)]
    perm = I.derangement(len(varied), 4)
    for i, j in enumerate(perm.tolist()):
        li, lj = varied.lengths[i] - 1, varied.lengths[j] - 1
        torch.testing.assert_close(got[i, li, 3], clean[j, lj, 3])           # the source's own last token
        torch.testing.assert_close(got[i, :li], clean[i, :li])               # nothing else moved
        assert not torch.allclose(got[i, li, 3], clean[i, li, 3])


# -- circuits --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def years(model):
    return tasks.greater_than(model, n=8, seed=3)


@pytest.mark.parametrize("kind", C.ABLATIONS)
def test_full_circuit_reproduces_clean_and_empty_reproduces_ablated(model, years, store, kind):
    L = model.cfg.n_layers
    full = C.Circuit.of(model, " ".join(f"attn{l} mlp{l}" for l in range(L)))
    assert C.faithfulness(model, years, full, kind=kind, activations=store).recovered.mean == \
        pytest.approx(1.0, abs=1e-9)
    iv = C.removal(model, years, C.nodes(model), kind)
    ps = years.prompts
    rows = torch.arange(len(ps))

    def last(name, s=ps):
        return store.get(model, s, [name])[name][rows, s.last].double()

    # What is left when every head and MLP is removed, from clean activations by hand:
    # the embeddings (token + learned positions), each layer's b_O, and the removed parts'
    # replacements.
    pos = E._pos_embed_hook(model) is not None
    fixed = last(H.EMBED) + (last(H.POS_EMBED) if pos else 0)
    b_O = E.attn_output_bias(model)
    bias = b_O.sum(0) if b_O is not None else 0
    if kind == "zero":
        resid = fixed + bias
    elif kind == "patch":
        corr = ps.corrupted
        c_fixed = last(H.EMBED, corr) + (last(H.POS_EMBED, corr) if pos else 0)
        resid = last(H.resid_post(L - 1), corr) - c_fixed + fixed
    elif kind == "resample":
        perm = I.derangement(len(ps), 0)
        resid = last(H.resid_post(L - 1))[perm] - fixed[perm] + fixed
    else:   # per-position mean over the prompts of each attention and MLP output (b_O included)
        post = E.attn_post_gains(model)
        outs = 0
        for layer in range(L):
            if post is None:
                outs = outs + store.get(model, ps, [H.attn_out(layer)])[H.attn_out(layer)].double().mean(0)
            else:   # the heads' mean z goes through the post-attention norm: not the mean of its output
                zm = store.get(model, ps, [H.z(layer)])[H.z(layer)].double().mean(0)
                raw = torch.einsum("phd,hdm->pm", zm, E.attn_output_weights(model)[layer])
                with torch.no_grad():
                    outs = outs + model.blocks[layer].ln1_post(raw.float()).double()
            outs = outs + store.get(model, ps, [H.mlp_out(layer)])[H.mlp_out(layer)].double().mean(0)
        resid = fixed + outs[ps.last]
    with torch.no_grad():
        hand = model.unembed(model.ln_final(resid.float().unsqueeze(1))).squeeze(1).double()
    # the unembedding applied by hand: the logits before any final soft-cap
    got = store.get(model, ps, [H.LOGITS_LAST_PRE_CAP], iv)[H.LOGITS_LAST_PRE_CAP].double()
    torch.testing.assert_close(got, hand, atol=1e-3, rtol=0)


# -- planted mechanisms under mean ablation at the last position -----------------------------
@pytest.fixture(scope="module")
def planted_models(tmp_path_factory):
    cache = tmp_path_factory.mktemp("planted-arch")
    return {n: pytest_circuits.load_model(str(PLANTED / n), cache_dir=cache, device="cpu")
            for n in planted.BUILDERS}


def planted_set(model, prompts=planted.PROMPTS, name="planted"):
    n = len(prompts)
    return PromptSet.build(model, prompts, answers=[" " + planted.ANSWER] * n, foils=[" " + planted.FOIL] * n,
                           name=name)


BLANK = "mat"     # a word the planted prompts do not use


def with_blank_token(name, folder):
    """The shipped planted checkpoint ``name`` with one change: the embedding of BLANK is
    ``EMBED_NORM * W`` (the spare direction) instead of ``EMBED_NORM * C``. Every head of
    the shipped models reads C, so their outputs are identical on every prompt and any
    mean or resample of them is a no-op (flagged, see below); on prompts made of BLANK
    tokens the primary/writer writes only through BOS, so a mean over such a reference is
    a real ablation (about 10% of the output left, derived in the test)."""
    import shutil

    from safetensors.torch import load_file, save_file

    src, dst = PLANTED / name, folder / name
    shutil.copytree(src, dst)
    weights = load_file(str(src / "model.safetensors"))
    row = planted.vocabulary().index(BLANK)
    weights["model.embed_tokens.weight"][row] = planted.EMBED_NORM * planted.direction(planted.W_DIR)
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def blank_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted-blank")
    cache = tmp_path_factory.mktemp("planted-blank-cache")
    return {n: pytest_circuits.load_model(str(with_blank_token(n, folder)), cache_dir=cache, device="cpu")
            for n in planted.BUILDERS}


def blank_reference(model):
    return PromptSet.build(model, [" ".join([BLANK] * 30), " ".join([BLANK] * 20)], name="blank-reference")


def test_the_blank_reference_mean_is_a_real_ablation(blank_models):
    model = blank_models["backup"]
    ref = blank_reference(model)
    z = ActivationStore().get(model, ref, [H.z(0)])[H.z(0)][:, :, 0, 0].double()     # primary's value
    real = torch.arange(z.shape[1]).unsqueeze(0) < torch.tensor(ref.lengths).unsqueeze(1)
    # by hand: BOS is the only token carrying C, attention is uniform over the prefix, so
    # the primary's value at position p is v_BOS / (p + 1)
    v_bos = float(z[0, 0])
    hand = torch.cat([v_bos / torch.arange(1, n + 1, dtype=torch.float64) for n in ref.lengths]).mean()
    assert float(z[real].mean()) == pytest.approx(float(hand), rel=1e-4)
    assert 0.05 < float(hand) / v_bos < 0.2          # a mean well away from the output (and from 0)


@pytest.mark.parametrize("positions", ["last", None])
@pytest.mark.parametrize("name,compensates", [("backup", True), ("backup_control", False)])
def test_mean_ablation_reproduces_the_zero_ablation_backup_verdict(blank_models, name, compensates, positions):
    model, spec = blank_models[name], planted.BACKUP
    ps = planted_set(model)
    verdicts = {}
    for kind in ("zero", "mean"):
        sr = E.self_repair(model, ps, spec["primary"], kind=kind, positions=positions,
                           reference=blank_reference(model) if kind == "mean" else None, activations=ActivationStore())
        frac = sr.restored_fraction(spec["backup"])
        verdicts[kind] = (str(sr.ranking(1, kind="backup")[0][0]), sr.role(spec["backup"]), frac)
        if compensates:
            assert verdicts[kind][:2] == (spec["backup"], "backup")
            # all positions: the planted 60%; last position only: the backup still reads the
            # primary at the other positions, so it restores less, but clearly
            assert frac.lower > (0.5 if positions is None else 0.05)
        else:
            assert frac.upper < 0.05
    # same verdict and (restored fraction is a ratio: the 10% left by the mean cancels) ~ same number
    assert verdicts["mean"][2].mean == pytest.approx(verdicts["zero"][2].mean, abs=0.02)


@pytest.mark.parametrize("positions", ["last", None])
@pytest.mark.parametrize("name", ["erasure", "erasure_control"])
def test_mean_ablation_reproduces_the_zero_ablation_erasure_verdict(blank_models, name, positions):
    model, spec = blank_models[name], planted.ERASURE
    ps = planted_set(model)
    frac = {}
    for kind in ("zero", "mean"):
        r = E.dla_vs_total(model, ps, spec["writer"], kind=kind, positions=positions,
                           reference=blank_reference(model) if kind == "mean" else None, activations=ActivationStore())
        frac[kind] = r.causal_fraction
        if positions is None:     # the shipped verdicts (tests/unit/test_effects.py)
            if name == "erasure":
                assert r.causal_fraction.upper < 0.2
            else:
                assert r.causal_fraction.lower > 0.9
    assert frac["mean"].mean == pytest.approx(frac["zero"].mean, abs=0.02)


@pytest.mark.parametrize("name,target", [("backup", "L0H0"), ("erasure", "L0H0")])
def test_no_op_ablations_of_the_shipped_planted_models_are_flagged(planted_models, name, target):
    """On the shipped planted models every head writes the same vector on every prompt:
    resampling (every source identical) or mean-ablating a head changes nothing, and must
    say so instead of reporting 'no effect' / 'no backup'."""
    model = planted_models[name]
    ps = planted_set(model)
    with pytest.warns(NoOpInterventionWarning, match=f"resample: every prompt's source output for {target} "
                                                     "at the last position equals its own"):
        sr = E.self_repair(model, ps, target, kind="resample", positions="last", activations=ActivationStore())
    assert float(sr.total.abs().max()) < 1e-5          # the silent result the warning is about
    with pytest.raises(MeasurementError, match=r"removed no direct effect \(own ΔDE = 0 on every prompt"):
        sr.restored_fraction("L1H0")
    with pytest.raises(MeasurementError, match="removed no direct effect"):
        E.dla_vs_total(model, ps, target, kind="resample", activations=ActivationStore())
    # Served from the cache (no forward, so no hook sees it): the decomposition still flags it.
    store = ActivationStore()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        E.self_repair(model, ps, target, kind="mean", reference=ps, activations=store)
    with pytest.warns(NoOpInterventionWarning, match=f"removed no direct effect of {target} on every prompt"):
        E.self_repair(model, ps, target, kind="mean", reference=ps, activations=store)


def test_zero_ablating_a_head_with_zero_weights_is_flagged(planted_models):
    model = planted_models["backup"]        # L0H1 has all-zero weights: its output is 0
    with pytest.warns(NoOpInterventionWarning, match="zero ablation of L0H1 at the last position: its output "
                                                     "there is already 0 on every prompt"):
        ActivationStore().get(model, planted_set(model), [H.LOGITS_LAST], I.ablate(model, "L0H1", positions="last"))
