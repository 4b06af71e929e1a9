"""The architecture matrix: every technique on a tiny random checkpoint of every family in
:mod:`pytest_circuits.architectures` (GPT-2, Llama, grouped-query Llama, GPT-NeoX, GPT-J,
Mistral with a sliding window shorter than the prompts, Qwen2, Qwen3, Gemma, Gemma-2, Gemma-3,
Phi-3, OLMo-2, Mixtral, BLOOM), loaded from its folder as a user's checkpoint is.

Each cell either satisfies its identity exactly or is refused with a project error naming the
architectural feature (the ``matrix_cell`` fixture, against
:data:`pytest_circuits.architectures.EXPECTED`). The reference for "the model's own forward" is
the Hugging Face model itself (``AutoModelForCausalLM`` on the same folder, eager attention),
run on each prompt alone, unpadded: no project code. The ablation kinds x positions cell is
tests/unit/test_intervention_matrix.py, the suffix recomputation of every kind
tests/unit/test_suffix.py; both run every family too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from pytest_circuits import ActivationStore, PromptSet, load_model
from pytest_circuits import architectures as A
from pytest_circuits import components as Cm
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I
from pytest_circuits.errors import NoOpInterventionWarning
from pytest_circuits.models import info
from pytest_circuits.store import sliding_windows
from pytest_circuits.techniques import effects as E
from pytest_circuits.techniques import erasure as ER
from pytest_circuits.techniques import patching as P
from pytest_circuits.techniques import probing as PR

# Longer than the sliding windows (architectures.WINDOW = 4 tokens), of different lengths.
PROMPTS = ["the cat sat on the mat in the", "the capital of France is the city of",
           "when John and Mary went to the store John gave the bag to",
           "the king of Italy went to the", "a dog sat on the mat and the queen said"]
ANSWERS = [" city", " Paris", " Mary", " Rome", " mat"]
SAME = ["the cat sat on the mat in the"] * 4


@dataclass
class Family:
    name: str
    folder: Any
    model: Any
    hf: Any                  # the Hugging Face model on the same folder: "the model's own forward"
    ps: Any


@pytest.fixture(scope="module", params=A.families())
def fam(request, arch_checkpoint, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = arch_checkpoint(request.param, seed=3)
    model = load_model(folder, cache_dir=tmp_path_factory.mktemp(f"{request.param}-cache"), device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    ps = PromptSet.build(model, PROMPTS, answers=ANSWERS, name="matrix")
    return Family(request.param, folder, model, hf, ps)


def own_logits(f: Family, ps=None, *, cap: bool = True) -> torch.Tensor:
    """The Hugging Face model's logits at each prompt's last token, each prompt run alone
    (``cap=False``: with a final logit soft-cap switched off), float64."""
    ps = ps if ps is not None else f.ps
    saved = getattr(f.hf.config, "final_logit_softcapping", None)
    if not cap:
        f.hf.config.final_logit_softcapping = None
    try:
        with torch.no_grad():
            rows = [f.hf(ps.tokens[i, :ps.lengths[i]].unsqueeze(0)).logits[0, -1].double() for i in range(len(ps))]
    finally:
        f.hf.config.final_logit_softcapping = saved
    return torch.stack(rows)


def centred(logits: torch.Tensor) -> torch.Tensor:
    return logits.double() - logits.double().mean(-1, keepdim=True)


def centred_answer(logits: torch.Tensor, ps) -> torch.Tensor:
    c = centred(logits)
    return c[torch.arange(len(ps)), torch.tensor(ps.answer_ids)]


def test_the_matrix_covers_the_families_a_team_brings():
    names = {f.model_class for f in A.FAMILIES.values()}
    for cls in ("GPT2LMHeadModel", "GPTNeoXForCausalLM", "GPTJForCausalLM", "LlamaForCausalLM",
                "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
                "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "Olmo2ForCausalLM",
                "MixtralForCausalLM", "BloomForCausalLM"):
        assert cls in names
    assert len(A.families()) >= 14


def test_each_checkpoint_has_the_structure_it_claims(fam):
    """The features a family is in the matrix for are really in its checkpoint."""
    cfg, hf = fam.model.cfg, fam.hf.config
    assert cfg.n_layers == 2 and cfg.d_model == 64
    windows = [w for w in sliding_windows(fam.model) if w]
    if fam.name in ("mistral", "gemma2", "gemma3"):
        assert windows and max(windows) < min(fam.ps.lengths)        # shorter than every prompt
        assert hf.sliding_window == max(windows)
    else:
        assert not windows
    if fam.name == "gemma2":
        assert hf.final_logit_softcapping and hf.attn_logit_softcapping
    if fam.name in ("gemma2", "gemma3", "olmo2"):
        assert E.attn_post_gains(fam.model) is not None                # norms after attention
    if fam.name in ("neox", "gptj"):
        assert cfg.parallel_attn_mlp
    if fam.name == "bloom":
        assert cfg.positional_embedding_type == "alibi"
    if fam.name in ("gqa", "mistral", "qwen2", "qwen3", "qwen3moe"):
        assert hf.num_key_value_heads < hf.num_attention_heads
    if fam.name == "mixtral":
        assert hf.num_local_experts > hf.num_experts_per_tok > 1
    if fam.name == "qwen3moe":
        assert hf.num_experts > hf.num_experts_per_tok > 1 and not hf.norm_topk_prob
        assert hf.mlp_only_layers == [0] and not hasattr(fam.hf.model.layers[0].mlp, "experts")
    # the families with experts are those the matrix marks so, and only they have experts
    assert A.FAMILIES[fam.name].moe == any(hasattr(m, "experts") and hasattr(m, "gate") for m in fam.hf.modules())
    # every bias and norm weight is clearly non-zero / not 1 (so a forgotten writer shows)
    for name, p in fam.hf.named_parameters():
        if name.endswith("bias"):
            assert float(p.abs().min()) > 0, name


# -- load -------------------------------------------------------------------------------------
def test_load(fam, matrix_cell):
    def run():
        mi = info(fam.model)
        assert mi.source == "local" and mi.fingerprint.startswith("local-sha256:")
        store = ActivationStore(batch_size=2)                      # right-padded batches of 2
        got = store.get(fam.model, fam.ps, [H.LOGITS_LAST, H.LOGITS_LAST_PRE_CAP])
        torch.testing.assert_close(centred(got[H.LOGITS_LAST]), centred(own_logits(fam)), atol=2e-5, rtol=0)
        torch.testing.assert_close(centred(got[H.LOGITS_LAST_PRE_CAP]), centred(own_logits(fam, cap=False)),
                                   atol=2e-5, rtol=0)
    matrix_cell("load", fam.name, run)


# -- hooks and components ---------------------------------------------------------------------
def test_hooks(fam, matrix_cell):
    model, ps = fam.model, fam.ps

    def run():
        L = model.cfg.n_layers
        names = [H.EMBED, H.FINAL_SCALE] + [n for l in range(L) for n in (
            H.resid_pre(l), H.resid_post(l), H.attn_out(l), H.mlp_out(l), H.z(l), H.pattern(l), H.v(l),
            H.mlp_post(l))]
        H.check_names(model, names)
        for c in Cm.all_heads(model) + Cm.all_layers(model):
            assert Cm.parse(str(c), model) == c
        acts = ActivationStore().get(model, ps, names + ([H.POS_EMBED] if E._pos_embed_hook(model) else []))
        real = torch.arange(ps.tokens.shape[1]).unsqueeze(0) < torch.tensor(ps.lengths).unsqueeze(1)
        total = acts[H.EMBED].double() + (acts[H.POS_EMBED].double() if H.POS_EMBED in acts else 0)
        for l in range(L):
            total = total + acts[H.attn_out(l)].double() + acts[H.mlp_out(l)].double()
        torch.testing.assert_close(total[real], acts[H.resid_post(L - 1)].double()[real], atol=1e-5, rtol=1e-5)
        # an attention layer's output is the sum of its heads' writes (+ b_O), at the last position
        outs = E.outputs(model, ps, store=ActivationStore())
        b_O = E.attn_output_bias(model)
        rows = torch.arange(len(ps))
        for l in range(L):
            heads = [i for i, c in enumerate(outs.components) if isinstance(c, Cm.Head) and c.layer == l]
            want = acts[H.attn_out(l)].double()[rows, ps.last]
            got = outs.vectors[heads].sum(0) + (b_O[l] if b_O is not None else 0)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    matrix_cell("hooks", fam.name, run)


# -- ablations: an ablation of nothing changes nothing ----------------------------------------
def nothing_changed(model, ps, iv, store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoOpInterventionWarning)     # flagged: not this test's topic
        got = store.get(model, ps, [H.LOGITS_LAST, H.resid_post(model.cfg.n_layers - 1)], iv)
    clean = store.get(model, ps, [H.LOGITS_LAST, H.resid_post(model.cfg.n_layers - 1)])
    for name in clean:
        torch.testing.assert_close(got[name], clean[name], atol=1e-5, rtol=1e-5)
    return got[H.LOGITS_LAST]


@pytest.mark.parametrize("positions", [None, "last", (1, 3)], ids=["all", "last", "pos1,3"])
def test_ablations_of_nothing(fam, matrix_cell, positions):
    model = fam.model
    same = PromptSet.build(model, SAME, corrupted=SAME, name="same")

    def run():
        store = ActivationStore(batch_size=2)
        comps = ["L1H1", "mlp0"]
        for iv in (I.patch(model, comps, positions=positions),                       # the clean run into itself
                   I.ablate(model, comps, "resample", positions=positions, seed=1),    # identical sources
                   I.ablate(model, comps, "position_mean", positions=positions),       # identical prompts
                   I.freeze(model, comps, positions=positions),                        # nothing upstream changed
                   I.reroute(model, "L1H1", via=I.patch(model, "L0H0", positions=positions), positions=positions)):
            logits = nothing_changed(model, same, iv, store)
            # ... and that is the model's own forward
            torch.testing.assert_close(centred(logits), centred(own_logits(fam, same)), atol=2e-5, rtol=0)
    matrix_cell("ablations", fam.name, run)


# -- suffix recomputation: with nothing changed, the model's own forward -----------------------
def test_suffix(fam, matrix_cell):
    model, ps = fam.model, fam.ps
    patched = PromptSet.build(model, PROMPTS, corrupted=PROMPTS, align=False, name="self")

    def run():
        store = ActivationStore(batch_size=2)
        for comp in ("L1H1", "L0H2", "mlp0"):
            iv = I.patch(model, comp, positions="last")          # starts at each prompt's last token
            got = store.get(model, patched, [H.LOGITS_LAST], iv)[H.LOGITS_LAST]
            torch.testing.assert_close(centred(got), centred(own_logits(fam, patched)), atol=2e-5, rtol=0)
        assert store.counters.suffix_passes > 0
        # a real change at the last position: the suffix run equals the full forward
        iv = I.ablate(model, "L1H1", "zero", positions="last")
        got = store.get(model, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST]
        full = ActivationStore(resume=False).get(model, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST]
        torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
        assert float((centred(got) - centred(own_logits(fam))).abs().max()) > 1e-4   # it changed something
    matrix_cell("suffix", fam.name, run)


# -- direct effects ---------------------------------------------------------------------------
def test_direct_effects(fam, matrix_cell):
    def run(**kw):
        de = E.decompose(fam.model, fam.ps, activations=ActivationStore(), **kw)
        want = centred_answer(own_logits(fam, cap=kw.get("logit") != "pre_softcap"), fam.ps)
        torch.testing.assert_close(de.parts_sum, want, atol=2e-5, rtol=0)     # the model's own logit
    matrix_cell("direct effects", fam.name, run)


# -- total effects and the self-repair decomposition -----------------------------------------
def test_self_repair(fam, matrix_cell):
    model, ps = fam.model, fam.ps

    def run(**kw):
        store = ActivationStore(batch_size=2)
        for target, kind, positions in (("L0H1", "zero", "last"), ("mlp0", "resample", "last"),
                                        ("attn1", "zero", None), (["L0H2", "mlp1"], "position_mean", "last")):
            sr = E.self_repair(model, ps, target, kind=kind, positions=positions, seed=1, activations=store, **kw)
            torch.testing.assert_close(sr.total, sr.own + sr.downstream + sr.norm_term, atol=1e-10, rtol=0)
            torch.testing.assert_close(sr.total, sr.measured_total, atol=2e-5, rtol=0)
            # the total effect read from the logits of the two runs (the model's own logits)
            key = H.LOGITS_LAST_PRE_CAP if kw.get("logit") == "pre_softcap" else H.LOGITS_LAST
            after = store.get(model, ps, [key], sr.ablation)[key]
            clean = store.get(model, ps, [key])[key]
            torch.testing.assert_close(sr.measured_total, centred_answer(after, ps) - centred_answer(clean, ps),
                                       atol=1e-9, rtol=0)
        te = E.total_effect(model, ps, I.ablate(model, "L1H0", "zero"), activations=store)
        assert te.n == len(ps)
    matrix_cell("self-repair", fam.name, run)


# -- erasure ----------------------------------------------------------------------------------
def test_erasure(fam, matrix_cell):
    model, ps = fam.model, fam.ps

    def run():
        store = ActivationStore()
        prs = ER.projection_ratios(model, ps, activations=store)
        for writer, readers in (("L0H1", ["L1H0", "L1H2"]), ("mlp0", ["L1H3"]), ("embed", ["L1H1"])):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ER.NegligibleCosineWarning)
                vc = ER.value_input_check(model, ps, writer, readers, activations=store)
            assert vc.reproduction_error < 1e-4
            # the readers' PR onto the writer, recomputed from their value path, equals the one
            # read from their outputs (hook_z through W_O and any post-attention norm)
            num = sum(prs.dots[:, prs.components.index(Cm.parse(r)), prs.components.index(Cm.parse(writer))]
                      for r in readers)
            den = prs.dots[:, prs.components.index(Cm.parse(writer)), prs.components.index(Cm.parse(writer))]
            assert vc.clean.mean == pytest.approx(float(num.sum() / den.sum()), rel=1e-4, abs=1e-7)
    matrix_cell("erasure", fam.name, run)


# -- activation and path patching -------------------------------------------------------------
def test_patching(fam, matrix_cell):
    model = fam.model
    same = PromptSet.build(model, PROMPTS, corrupted=PROMPTS, align=False, name="self")

    def run():
        store = ActivationStore(batch_size=2)
        ivs = [I.patch(model, c) for c in ("L0H0", "L1H3", "mlp1", "attn0")]
        ivs += [P.path_intervention(model, Cm.parse("L0H1")),                       # sender -> logits
                P.path_intervention(model, Cm.parse("L0H1"), ["L1H0", "mlp1"]),      # sender -> receivers
                P.path_intervention(model, Cm.parse("mlp0"), ["L1H2"], freeze_mlps=False)]
        for iv in ivs:
            nothing_changed(model, same, iv, store)
    matrix_cell("patching", fam.name, run)


# -- probes -----------------------------------------------------------------------------------
def test_probes(fam, matrix_cell):
    """Probe features equal the ``mlp_post`` values read with raw hooks, on every layer with a
    dense MLP; every mixture-of-experts layer is refused (its block has no neuron hook), so a
    family whose layers are all sparse is a refused cell."""
    from pytest_circuits import moe
    from pytest_circuits.errors import ComponentError

    model = fam.model
    texts = PROMPTS + ["the queen said the cat sat", "Mary went to Rome and", "the dog sat on the mat"]
    labels = [0, 1, 0, 1, 0, 1, 0, 1]
    dense = [l for l in range(model.cfg.n_layers) if not moe.n_experts(model, l)]
    sparse = [l for l in range(model.cfg.n_layers) if moe.n_experts(model, l)]
    assert bool(sparse) == A.FAMILIES[fam.name].moe

    def run():
        for layer in sparse:
            with pytest.raises(ComponentError, match="mixture of"):
                PR.collect(model, texts, labels, layer=layer, pooling="last", activations=ActivationStore())
        if not dense:      # nothing to probe: the refusal is the cell's outcome
            PR.collect(model, texts, labels, layer=sparse[0], pooling="last", activations=ActivationStore())
        for layer in dense:
            feats = PR.collect(model, texts, labels, layer=layer, pooling="last", activations=ActivationStore())
            # by hand: raw hooks on each text alone
            for i, t in enumerate(texts):
                toks = PromptSet.build(model, [t], name="one").tokens
                _, cache = model.run_with_cache(toks, names_filter=[H.mlp_post(layer)])
                torch.testing.assert_close(torch.as_tensor(feats.X[i]).float(),
                                           cache[H.mlp_post(layer)][0, -1].float(), atol=1e-5, rtol=1e-5)
            fit = PR.probe(model, texts, labels, layer=layer, k=2, activations=ActivationStore())
            assert fit is not None
    matrix_cell("probes", fam.name, run)


# -- half precision ---------------------------------------------------------------------------
def test_half_precision(fam, matrix_cell, tmp_path_factory):
    half = load_model(fam.folder, cache_dir=tmp_path_factory.mktemp(f"{fam.name}-bf16"), device="cpu",
                      dtype="bfloat16")
    ps = PromptSet.build(half, PROMPTS, answers=ANSWERS, name="matrix")

    def run(**kw):
        store = ActivationStore()
        de = E.decompose(half, ps, activations=store, **kw)       # checks its identity at bfloat16 error
        sr = E.self_repair(half, ps, "L1H1", kind="zero", activations=store, **kw)
        torch.testing.assert_close(sr.total, sr.own + sr.downstream + sr.norm_term, atol=1e-9, rtol=0)
        assert de.logit.dtype == torch.float64
    matrix_cell("half precision", fam.name, run)


# -- the mechanism checkup --------------------------------------------------------------------
def test_checkup(fam, matrix_cell):
    from pytest_circuits import checkup
    from pytest_circuits.detection import Detection
    from pytest_circuits.errors import CircuitsError

    def run():
        not_applicable = {}
        for name in checkup.names():
            det = checkup.run(name, fam.model, activations=ActivationStore())
            assert isinstance(det, Detection) and det.check == name
            if not det.applicable:
                assert det.reason and not det.found
                not_applicable[name] = det.reason
        # a check the architecture rules out says so on the card: the cell is then refused
        arch = E.head_write_problem(fam.model)
        ruled_out = {n: r for n, r in not_applicable.items() if arch is not None and r == arch}
        if arch is not None:
            assert set(ruled_out) == {"ioi", "successor", "copy_suppression"}, not_applicable
            raise CircuitsError(arch)
    matrix_cell("checkup", fam.name, run)


# -- mixture-of-experts layers: experts as components -----------------------------------------
def hf_experts(f: Family, layer: int, tokens: torch.Tensor):
    """Raw torch on the Hugging Face model (no project code): the input and output of layer
    ``layer``'s MoE block for one unpadded prompt, and each expert's routed output recomputed
    from the block's router and expert weights: ``(x [pos, d], out [pos, d], experts [E, pos, d])``."""
    block = f.hf.model.layers[layer].mlp
    seen = {}
    handle = block.register_forward_hook(lambda mod, args, out: seen.update(x=args[0][0], out=out[0]))
    try:
        with torch.no_grad():
            f.hf(tokens.unsqueeze(0))
    finally:
        handle.remove()
    x, cfg = seen["x"], f.hf.config
    probs = torch.softmax((x @ block.gate.weight.T).float(), dim=-1)
    top, idx = probs.topk(cfg.num_experts_per_tok, dim=-1)
    if getattr(cfg, "norm_topk_prob", True):            # Mixtral always renormalizes; Qwen3-MoE when told
        top = top / top.sum(-1, keepdim=True)
    outs = []
    with torch.no_grad():
        for e in range(block.experts.gate_up_proj.shape[0]):
            gate, up = (x @ block.experts.gate_up_proj[e].T).chunk(2, dim=-1)
            y = (torch.nn.functional.silu(gate) * up) @ block.experts.down_proj[e].T
            outs.append(y * (top * (idx == e)).sum(-1, keepdim=True))
    return x, seen["out"], torch.stack(outs)


def test_experts(fam, matrix_cell):
    from pytest_circuits import moe

    model, ps = fam.model, fam.ps

    def run():
        L = model.cfg.n_layers
        first = Cm.parse(f"L{L - 1}E0", model)            # a dense model refuses here, naming it
        layers = moe.moe_layers(model)
        assert layers and first.layer in layers
        assert [str(c) for c in Cm.all_experts(model)] == [f"L{l}E{e}" for l in layers
                                                           for e in range(moe.n_experts(model, l))]
        store = ActivationStore(batch_size=2)
        acts = store.get(model, ps, [n for l in layers for n in (H.moe_in(l), H.mlp_out(l))])
        for l in layers:
            mine = moe.expert_outputs(model, l, acts[H.moe_in(l)]).double()          # [E, n, pos, d]
            for i in range(len(ps)):
                n = ps.lengths[i]
                _, out, by_hand = hf_experts(fam, l, ps.tokens[i, :n])
                torch.testing.assert_close(mine[:, i, :n], by_hand.double(), atol=1e-6, rtol=1e-4)
                # every expert's output sums to the block's, in the model's forward and in the store's run
                torch.testing.assert_close(mine[:, i, :n].sum(0), out.double(), atol=1e-6, rtol=1e-4)
                torch.testing.assert_close(mine[:, i, :n].sum(0), acts[H.mlp_out(l)][i, :n].double(),
                                           atol=1e-6, rtol=1e-4)
            assert float(mine.abs().amax()) > 1e-4            # not an identity of zeros
        # direct effects split into experts sum to the model's own logit; each MoE layer's experts to its MLP
        whole = E.decompose(model, ps, activations=store)
        split = E.decompose(model, ps, activations=store, experts=True)
        torch.testing.assert_close(split.parts_sum, centred_answer(own_logits(fam), ps), atol=2e-5, rtol=0)
        for l in range(L):
            torch.testing.assert_close(split.of(Cm.MLP(l)), whole.of(Cm.MLP(l)), atol=1e-7, rtol=1e-5)
        # zero ablation of an expert at every position: the model's forward with its output removed by hand
        l = layers[0]
        e = int(split.values[E.rows_of(split.components, Cm.MLP(l))].abs().sum(1).argmax())   # one with an effect
        iv = I.ablate(model, f"L{l}E{e}", "zero")
        got = store.get(model, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST]
        block = fam.hf.model.layers[l].mlp
        for i in range(len(ps)):
            n = ps.lengths[i]
            _, _, by_hand = hf_experts(fam, l, ps.tokens[i, :n])
            handle = block.register_forward_hook(lambda mod, args, out, y=by_hand[e]: out - y.unsqueeze(0))
            try:
                with torch.no_grad():
                    want = fam.hf(ps.tokens[i, :n].unsqueeze(0)).logits[0, -1].double()
            finally:
                handle.remove()
            torch.testing.assert_close(centred(got[i:i + 1]), centred(want.unsqueeze(0)), atol=2e-5, rtol=0)
        sr = E.self_repair(model, ps, f"L{l}E{e}", kind="zero", activations=store)
        torch.testing.assert_close(sr.total, sr.own + sr.downstream + sr.norm_term, atol=1e-10, rtol=0)
        torch.testing.assert_close(sr.total, sr.measured_total, atol=2e-5, rtol=0)
    matrix_cell("experts", fam.name, run)


# -- docs/models.md ---------------------------------------------------------------------------
def _table_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "models_table.py"
    spec = importlib.util.spec_from_file_location("models_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_table_is_the_rendering_of_the_matrix():
    """docs/models.md's table renders the outcomes the cells above assert (scripts/models_table.py
    renders it from the outcomes they record: the same, when the matrix passes)."""
    mt = _table_script()
    doc = mt.DOC.read_text(encoding="utf-8")
    assert mt.splice(doc, mt.render(mt.expected_cells())) == doc, "run python scripts/models_table.py"


def test_the_table_script_renders_recorded_outcomes_and_refuses_gaps(tmp_path, monkeypatch):
    mt = _table_script()
    results = tmp_path / "matrix.jsonl"
    monkeypatch.setenv(A.RESULTS_ENV, str(results))
    for t in A.TECHNIQUES:
        for f in A.FAMILIES:
            A.record_cell(t, f, A.expected(t, f))
    assert mt.main(["--results", str(results), "--check"]) == 0
    lines = results.read_text().splitlines()
    (tmp_path / "gap.jsonl").write_text("\n".join(lines[1:]) + "\n")      # one cell not recorded
    with pytest.raises(SystemExit, match="no recorded outcome"):
        mt.main(["--results", str(tmp_path / "gap.jsonl"), "--check"])
    flipped = [ln.replace('"kind": "exact"', '"kind": "refused"', 1) if i == 3 else ln for i, ln in enumerate(lines)]
    (tmp_path / "flipped.jsonl").write_text("\n".join(flipped) + "\n")  # an outcome that differs
    assert mt.main(["--results", str(tmp_path / "flipped.jsonl"), "--check"]) == 1


# -- stand-ins: random weights at real dimensions ---------------------------------------------
CLAIMS = """
    import pytest

    @pytest.mark.claim(source="none", finding="an impossible threshold")
    def test_threshold(model):
        assert model.cfg.n_layers > 100

    @pytest.mark.claim(source="none", finding="a crash before any threshold")
    def test_crash(model):
        raise ValueError("broken claim code")

    @pytest.mark.claim(source="none", finding="a threshold any model meets")
    def test_passes(model):
        assert model.cfg.n_layers > 0
"""


@pytest.mark.parametrize("marked", [False, True], ids=["real", "stand-in"])
def test_only_a_stand_in_turns_a_failed_threshold_into_not_checked(arch_checkpoint, pytester, tmp_path, marked):
    """A folder marked by build_full_size (STAND_IN.json): a claim that fails or meets its own
    threshold is "not checked: random weights"; a crash still fails. Unmarked: as usual."""
    import json
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(arch_checkpoint("llama", seed=0), folder)
    if marked:
        (folder / A.STAND_IN).write_text(json.dumps({"random_weights": True, "shape_of": "a test model"}))
    pytester.makepyfile(test_claims=CLAIMS)
    result = pytester.runpytest_inprocess(f"--circuits-model={folder}", f"--circuits-cache-dir={tmp_path / 'c'}",
                                          "-p", "no:cacheprovider", "-rfs")
    if marked:
        result.assert_outcomes(failed=1, skipped=2)
        result.stdout.fnmatch_lines(["*SKIPPED*not checked: random weights (ckpt is a stand-in with the dimensions "
                                     "of a test model; the claim ran end to end and failed its threshold*"])
        result.stdout.fnmatch_lines(["*SKIPPED*not checked: random weights*met its threshold*"])
        result.stdout.fnmatch_lines(["*FAILED*test_crash*"])
    else:
        result.assert_outcomes(passed=1, failed=2)


def test_a_users_gemma2_folder_runs_the_checkup_with_the_reasons_on_its_card(arch_checkpoint, pytester, tmp_path):
    """``pytest --circuits-checkup --circuits-model ./folder`` on a family with a norm after
    attention: every check runs to a status on the card (no error), the three detectors that
    read a head's write from z W_O alone say n/a, naming the norm."""
    import json

    from pytest_circuits import checkup

    folder = arch_checkpoint("gemma2", seed=3)
    out = tmp_path / "r.json"
    result = pytester.runpytest_inprocess(f"--circuits-model={folder}", "--circuits-checkup",
                                          f"--circuits-report={out}", f"--circuits-cache-dir={tmp_path / 'c'}",
                                          "-p", "no:cacheprovider")
    assert result.parseoutcomes().get("errors", 0) == 0
    cards = {c["check"]: c for c in json.loads(out.read_text())["checkup"]}
    assert set(cards) == set(checkup.names())
    assert all(c["status"] in ("found", "absent", "undecided", "n/a") for c in cards.values()), cards
    for name in ("ioi", "successor", "copy_suppression"):
        assert cards[name]["status"] == "n/a" and "a norm after attention" in json.dumps(cards[name]), cards[name]
