"""Direct and total effects of components on a token's logit, and the self-repair
decomposition of an ablation's total effect.

**Direct effect** (McGrath et al. 2023, arXiv:2307.15771, "the Hydra effect"): at each
prompt's last position, with ``s`` the final norm's scale and ``w_t`` the centred
unembedding column of token ``t`` (``W_U[:, t] - mean_vocab W_U``),

    DE(c) = out_c . w_t / s

Every writer to the residual stream is accounted for: the components (token embedding,
each head, each MLP, whose ``hook_mlp_out`` includes its output bias; with ``experts=True``
each expert of a mixture-of-experts MLP instead, :mod:`pytest_circuits.moe`) and the
*constants*, writers that are not components: learned positional embeddings
(``hook_pos_embed``, where the model has them) and each layer's attention-output bias
``b_O`` (a head's output is ``z_h @ W_O[h]``; the layer's ``b_O`` is written once,
whatever the heads do). Compatibility mode folds the LayerNorm/RMSNorm weights and
biases into the reading weights and ``b_U`` and centres the writing weights, so the
direct effects of all writers plus the centred ``b_U[t]`` equal the centred logit.
The logit is *read from the model* (the store's logits at the last position, centred
over the vocabulary), not summed from the parts, so the identity is a real check:
:func:`decompose` raises when it fails by more than float error (a writer the
decomposition does not know, such as logit soft-capping or a scaled embedding). This is
direct logit attribution (DLA).

Zero-ablating an attention layer (``attn5``) replaces its heads' ``hook_z``: it removes
the heads' outputs and keeps the layer's constant ``b_O`` (mean, resample and patch
ablation of ``hook_z`` equal those of ``hook_attn_out``, since ``b_O`` is constant).

**Total effect** of an intervention: the change of the centred logit of ``t``.

**Self-repair decomposition.** With the clean run's scale ``s`` frozen, and ``s'`` the
ablated run's own scale,

    TE = sum_c [DE_abl(c) - DE_clean(c)]  +  sum_c out'_c . w_t (1/s' - 1/s)
       = own change (the ablated components) + sum of downstream ΔDE + norm term

exactly, by construction (the sums run over every writer; a constant's ΔDE is 0, its
change is in the norm term); it is checked against the total effect read from the
ablated run's logits. Downstream components whose ΔDE has the sign of the lost effect
(``-own``) make up for it, in one of two ways (:meth:`SelfRepair.role`):

* **backup** (the Hydra effect): the component's clean DE has the sign of the lost
  effect, or is ~0, and grows: it does more of the same job;
* **released suppression** (anti-erasure): its clean DE *opposes* the lost effect and
  shrinks toward 0: it suppressed the answer because of what was ablated, and
  suppresses less without it (e.g. a late MLP counterbalancing, or an eraser).

Ranking both together as "compensators" would call a released eraser a backup head.

The token ``t`` is each prompt's answer (``token="answer"``, the default when the set
has answers) or the clean run's top token (``token="top"``).

**No-op ablations.** The default ablation (:func:`self_repair`, :func:`compensation`,
:func:`sweep`, :func:`dla_vs_total`) is ``resample_distinct`` at the last position: each
prompt's output is replaced by another prompt's that *differs* from it (plain ``resample``
swaps equal outputs on prompts that share their last tokens, and then removes nothing).
Whatever the kind, :func:`self_repair` reads from the stored activations on which prompts
the ablation changed nothing (:meth:`~pytest_circuits.interventions.Interventions.unchanged`:
every replaced value equals the clean one, e.g. a component that writes the same output on
every prompt). On (nearly) every prompt (:data:`~pytest_circuits.interventions.NOOP_FRACTION`)
the result is *uninformative*: its measurements carry the flag ``uninformative: ...`` (in
the ledger, the card and every report), every assertion on them refuses with a
:class:`~pytest_circuits.errors.MeasurementError`, and its rankings, roles and backups
refuse too (an empty list of backups would read as "no backup"). On some prompts the
measurements carry ``partly uninformative: ...`` and refuse the bounds that 0 itself would
pass (a claim of "no effect" diluted by the no-op prompts).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from .. import hooks as H
from ..store import ActivationStore, final_logit_softcap, resolve
from ..components import MLP, Component, Embed, Expert, Head, Neuron, parse, parse_many
from ..errors import CircuitsError, ComponentError, MeasurementError, NoOpInterventionWarning, bad
from ..interventions import Interventions, ablate as _ablate
from ..measurement import PARTLY_UNINFORMATIVE, UNINFORMATIVE, Measurement, record
from ..measurement import record as _record
# the rankings' vocabulary lives in scores; GRAINS, ORDERS, Block, Ranked and rows_of stay readable here
from ..scores import GRAINS, ORDERS, Block, ComponentScores, Rankable, Ranked, _grain, rows_of  # noqa: F401
from ..models import derived, info as model_info, weights_state


def writers(model: Any, experts: bool = False) -> tuple[Component, ...]:
    """Every residual-stream writer, in forward order: embed, L0H0.., mlp0, L1H0.., ...; with
    ``experts=True`` a mixture-of-experts layer's MLP is its experts instead (L1E0, L1E1, ...)."""
    if not experts:
        return _writers(int(model.cfg.n_layers), int(model.cfg.n_heads))
    return _writers(int(model.cfg.n_layers), int(model.cfg.n_heads), _expert_counts(model))


@functools.lru_cache(maxsize=16)
def _writers(n_layers: int, n_heads: int, experts: tuple[int, ...] = ()) -> tuple[Component, ...]:
    out: list[Component] = [Embed()]
    for layer in range(n_layers):
        out += [Head(layer, h) for h in range(n_heads)]
        n = experts[layer] if experts else 0
        out += [Expert(layer, e) for e in range(n)] if n else [MLP(layer)]
    return tuple(out)


def _expert_counts(model: Any) -> tuple[int, ...]:
    """Per layer, how many experts its MLP is split into for ``experts=True`` (0: dense), each
    MoE layer checked (:func:`pytest_circuits.moe.sparse_block`); refused for a dense model."""
    from .. import moe

    layers = moe.moe_layers(model)
    if not layers:
        from ..architectures import architecture_name

        raise ComponentError(bad("experts", True, f"False: this {architecture_name(model)} model has no mixture-of-"
                                 "experts layers (its MLPs are dense), so there are no experts to split them into"))
    for l in layers:
        moe.sparse_block(model, l)
    return tuple(moe.n_experts(model, l) if l in layers else 0 for l in range(int(model.cfg.n_layers)))


def _hooks_needed(model: Any) -> list[str]:
    L = model.cfg.n_layers
    return ([H.last(H.EMBED), H.last(H.FINAL_SCALE)] + [H.last(H.z(l)) for l in range(L)]
            + [H.last(H.mlp_out(l)) for l in range(L)])


def targets(model: Any, prompts: Any, token: Any, store: ActivationStore) -> Any:
    """Token ids ``[n]`` the effects are measured on."""
    import torch

    if token == "answer":
        prompts.require("answer_ids")
        return torch.tensor(prompts.answer_ids)
    if token == "top":
        return store.get(model, prompts, [H.LOGITS_LAST])[H.LOGITS_LAST].argmax(-1)
    if isinstance(token, int):
        return torch.full((len(prompts),), token)
    try:
        ids = torch.as_tensor(list(token))
    except TypeError:
        ids = None
    if ids is None or ids.shape != (len(prompts),):
        raise CircuitsError(bad("token", token, "'answer', 'top', a token id, or one id per prompt"))
    return ids


@dataclass(frozen=True, eq=False)
class Outputs:
    """Each writer's output at each prompt's last position, and the final-norm scale.

    ``components``/``vectors`` are the writers that are components; ``constant_names``/
    ``constants`` the others (positional embeddings, attention-output biases);
    ``logits`` the model's own logits at the last position (when asked for)."""

    components: tuple[Component, ...]
    vectors: Any            # [C, n, d_model]
    scale: Any              # [n]
    constant_names: tuple[str, ...] = ()
    constants: Any = None   # [E, n, d_model]
    logits: Any = None      # [n, d_vocab], read from the model

    @property
    def all_vectors(self) -> Any:
        """Every writer's vector, components first: ``[C + E, n, d_model]``."""
        import torch

        return self.vectors if not self.constant_names else torch.cat([self.vectors, self.constants])

    def index(self, c: Component) -> int:
        try:
            return self.components.index(c)
        except ValueError:
            raise ComponentError(bad("component", str(c), "a head, MLP or embed of the model "
                                     "(attention layers are the sum of their heads)")) from None


def _pos_embed_hook(model: Any) -> str | None:
    """The hook of learned positional embeddings added to the residual stream, if any."""
    kind = getattr(model.cfg, "positional_embedding_type", "standard")
    return H.POS_EMBED if kind == "standard" and H.POS_EMBED in model.hook_dict else None


def attn_output_bias(model: Any) -> Any:
    """``[n_layers, d_model]`` attention-output biases ``b_O`` (float64, CPU), or None when
    the model has none (bias-free projections) or they are all 0. Computed once per model
    and weights state (:func:`pytest_circuits.models.derived`): do not modify it in place."""
    return derived(model, "b_O:float64", _attn_output_bias)


def _attn_output_bias(model: Any) -> Any:
    import torch

    try:
        b = model.b_O
    except (AttributeError, RuntimeError):
        return None
    if b is None:
        return None
    b = b.detach().to("cpu", torch.float64)
    return b if bool(b.abs().max() > 0) else None


def attn_output_weights(model: Any) -> Any:
    """``[n_layers, n_heads, d_head, d_model]`` ``W_O`` (float64, CPU), once per model and
    weights state (:func:`pytest_circuits.models.derived`): do not modify it in place."""
    return _attn_output_weights(model, None)


def _attn_output_weights(model: Any, state: tuple | None) -> Any:
    import torch

    return derived(model, "W_O:float64", lambda m: m.W_O.detach().to("cpu", torch.float64), state=state)


def _writer_constants(model: Any, state: tuple | None = None) -> tuple[Any, Any]:
    """``(W_O, b_O)`` as :func:`attn_output_weights` and :func:`attn_output_bias` give them;
    ``state``: the weights' state (:func:`~pytest_circuits.models.weights_state`) when read already."""
    return _attn_output_weights(model, state), attn_output_bias(model)


def outputs(model: Any, prompts: Any, *, intervention: Any = None,
            store: ActivationStore | None = None, logits: bool = False, logit: str = "logit",
            experts: bool = False) -> Outputs:
    """Every writer's output vector at the last position (one forward, or none if cached);
    with ``logits=True`` the model's logits at the last position too (same forward; ``logit``:
    which, see :func:`logit_hook`). Under a post-attention norm (:func:`attn_post_gains`) a
    head's vector is what it writes through the norm. ``experts=True``: a mixture-of-experts
    layer's MLP is its experts (:func:`writers`), each expert's output computed from the
    block's input in the same run and checked to sum to the block's output
    (:mod:`pytest_circuits.moe`)."""
    return _outputs(model, prompts, intervention, resolve(store), logits, logit=logit, experts=experts)


def _readout_names(model: Any, logits: bool, logit: str = "logit", experts: tuple[int, ...] = ()) -> list[str]:
    """What the writers' readout reads: every writer at the last position, the final-norm
    scale, the post-attention norms' scales (where the model has them), learned positions
    (GPT-2), the inputs of the MoE blocks split into experts (``experts``: per layer, how
    many; 0 for a layer not split), and the last logits (``logit``: :func:`logit_hook`) when
    asked."""
    names = _hooks_needed(model)
    names += [H.last(H.moe_in(l)) for l, n in enumerate(experts) if n]
    if attn_post_gains(model) is not None:
        names += [H.last(H.attn_post_scale(l)) for l in range(model.cfg.n_layers)]
    pos = _pos_embed_hook(model)
    if pos is not None:
        names.append(H.last(pos))
    if logits:
        names.append(logit_hook(model, logit))
    return names


LOGITS = ("logit", "pre_softcap")


def logit_hook(model: Any, logit: str = "logit") -> str:
    """The store's name for the logit the direct effects sum to: ``"logit"``, the model's own
    (refused under a final logit soft-cap, which is not linear in the residual stream), or
    ``"pre_softcap"``, the logit before the cap (the model's own logit where it has none)."""
    if logit not in LOGITS:
        raise CircuitsError(bad("logit", logit, "'logit' (the model's logit) or 'pre_softcap' (the logit "
                                "before a final logit soft-cap)"))
    if logit == "pre_softcap":
        return H.LOGITS_LAST_PRE_CAP
    cap = final_logit_softcap(model)
    if cap is not None:
        from ..architectures import architecture_name

        raise MeasurementError(
            f"direct effects are not additive under {architecture_name(model)}'s final logit soft-capping "
            f"(logit = {cap:g} * tanh(x / {cap:g}), not linear in the residual stream): measure in the pre-cap "
            "logit with `logit=\"pre_softcap\"`, or use total effects (effects.total_effect), which read "
            "the capped logits")
    return H.LOGITS_LAST


def attn_post_gains(model: Any) -> Any:
    """``[n_layers, d_model]`` float64 gains of an RMS norm applied to each attention layer's
    output before it joins the residual stream (Gemma-2/3's and OLMo-2's post-attention
    norm), or None when attention writes into the residual stream directly.

    Under such a norm the layer writes ``g * a / s`` where ``a = sum_h z_h W_O[h]`` and ``s``
    is the norm's scale at that position (:func:`~pytest_circuits.hooks.attn_post_scale`):
    linear in the heads for a given ``s``, so head ``h`` writes ``g * z_h W_O[h] / s`` and the
    heads' writes sum to the layer's exactly. Refused (a MeasurementError naming the
    feature): a LayerNorm there, or an attention-output bias with it."""
    return derived(model, "attn_post_gain:float64", _attn_post_gains)


def _attn_post_gains(model: Any) -> Any:
    import torch

    if H.attn_post_scale(0) not in model.hook_dict:
        return None
    from ..architectures import architecture_name

    gains = []
    for l in range(model.cfg.n_layers):
        norm = getattr(model.blocks[l], "ln1_post", None)
        weight = getattr(norm, "weight", None)
        if norm is None or weight is None or not getattr(norm, "uses_rms_norm", False):
            raise MeasurementError(
                f"{architecture_name(model)} normalizes the attention output of block {l} before adding it to the "
                "residual stream with a norm that is not an RMS norm with a weight: per-head outputs are not "
                "additive through it, and this decomposition does not handle it")
        w = weight.detach().to("cpu", torch.float64)
        gains.append(1.0 + w if getattr(norm, "uses_weight_offset", False) else w)
    if _attn_output_bias(model) is not None:
        raise MeasurementError(
            f"{architecture_name(model)} has attention-output biases and a norm after attention: the bias's "
            "share of the normalized output is not a constant writer, and this decomposition does not "
            "handle it")
    return torch.stack(gains)


def head_write_problem(model: Any) -> str | None:
    """Why a head's ``z_h W_O[h]`` alone (read through weights, or with the final norm's scale
    only) is not what it writes into the residual stream, or None when it is. Detectors that
    read a head's OV circuit or direct effect that way report themselves not applicable with
    it (the decomposition here handles the norm: :func:`attn_post_gains`)."""
    from ..architectures import architecture_name

    if H.attn_post_scale(0) in model.hook_dict:
        return (f"{architecture_name(model)} normalizes each attention layer's output before it joins the "
                "residual stream (a norm after attention), so a head's OV circuit or direct effect read from "
                "z W_O alone is not what it writes")
    if H.ln1_scale(0) not in model.hook_dict:
        return (f"{architecture_name(model)} has no norm before attention, which a head's OV circuit is read "
                "through")
    return None


def _post_scale(acts: dict[str, Any], layer: int) -> Any:
    """This run's post-attention norm scale of ``layer`` at the last position ``[n]``."""
    return acts[H.last(H.attn_post_scale(layer))].double().reshape(-1)


def _read_outputs(model: Any, prompts: Any, intervention: Any, store: ActivationStore,
                  logits: bool, logit: str = "logit", experts: tuple[int, ...] = ()) -> tuple[list[str], dict[str, Any]]:
    """``(names read from the clean run, {name: value})`` for :func:`_readout_names`. Writers
    before the first intervened block are exactly as in the clean run: the store reads them
    there, so the intervened forward can resume at that block."""
    before, after = store.split_at_resume(_readout_names(model, logits, logit, experts), intervention)
    acts = store.get(model, prompts, before) if before else {}
    acts.update(store.get(model, prompts, after, intervention))
    return before, acts


def _constant_vectors(acts: dict[str, Any], pos: str | None, b_O: Any, n_layers: int,
                      n: int) -> tuple[list[str], list[Any]]:
    """The residual-stream writers that are not components: learned positions and each
    layer's ``b_O`` (names, ``[n, d_model]`` float64 vectors)."""
    cnames: list[str] = []
    cvecs: list[Any] = []
    if pos is not None:
        cnames.append("pos_embed")
        cvecs.append(acts[H.last(pos)].double())
    if b_O is not None:
        for l in range(n_layers):
            cnames.append(f"b_O[{l}]")
            cvecs.append(b_O[l].expand(n, -1))
    return cnames, cvecs


def _outputs(model: Any, prompts: Any, intervention: Any, store: ActivationStore, logits: bool,
             consts: tuple[Any, Any] | None = None, logit: str = "logit", experts: bool = False) -> Outputs:
    """:func:`outputs`; ``consts``: ``(W_O, b_O)`` from :func:`_writer_constants`, when read already."""
    import torch

    pos = _pos_embed_hook(model)
    counts = _expert_counts(model) if experts else ()
    if counts:
        _refuse_replaced_experts(model, intervention, counts)
    _, acts = _read_outputs(model, prompts, intervention, store, logits, logit, counts)
    L = model.cfg.n_layers
    W_O, b_O = consts if consts is not None else _writer_constants(model)   # [L, H, d_head, d_model], [L, d]
    post = attn_post_gains(model)
    vecs = [acts[H.last(H.EMBED)].double()]
    for l in range(L):
        z = acts[H.last(H.z(l))].double()                              # [n, H, d_head]
        heads = torch.einsum("nhd,hdm->hnm", z, W_O[l])
        if post is not None:                                           # through the post-attention norm
            heads = heads * post[l] / _post_scale(acts, l).reshape(1, -1, 1)
        vecs += list(heads)
        if counts and counts[l]:
            vecs += list(_expert_vectors(model, l, acts))
        else:
            vecs.append(acts[H.last(H.mlp_out(l))].double())
    scale = acts[H.last(H.FINAL_SCALE)].double().reshape(-1)
    n = scale.shape[0]
    cnames, cvecs = _constant_vectors(acts, pos, b_O, L, n)
    return Outputs(writers(model, experts), torch.stack(vecs), scale, tuple(cnames),
                   torch.stack(cvecs) if cvecs else None,
                   acts[logit_hook(model, logit)].double() if logits else None)


def _expert_vectors(model: Any, layer: int, acts: dict[str, Any]) -> Any:
    """``[E, n, d_model]`` float64: each expert's output at the last position, computed from the
    MoE block's input in the run ``acts`` were read from, checked to sum to the block's output
    there (:func:`pytest_circuits.moe.check_sum`)."""
    from .. import moe

    parts = moe.expert_outputs(model, layer, acts[H.last(H.moe_in(layer))])
    moe.check_sum(parts, acts[H.last(H.mlp_out(layer))], f"the experts of layer {layer} at the last position",
                  dtype=parts.dtype)
    return parts.double()


def _refuse_replaced_experts(model: Any, intervention: Any, counts: tuple[int, ...]) -> None:
    """``experts=True`` under an intervention that replaces an MLP split into experts, or one
    of its experts: the experts' outputs are recomputed from the block's input, which such a
    replacement leaves as it is, so they would not be what the block wrote. Refused."""
    for item in getattr(intervention, "items", ()) or ():
        c = getattr(item, "component", None)
        if isinstance(c, (MLP, Expert, Neuron)) and 0 <= c.layer < len(counts) and counts[c.layer]:
            raise MeasurementError(
                f"direct effects split into experts under {intervention.key}, which replaces {c}: each expert's "
                f"output is recomputed from mlp{c.layer}'s input, which the replacement does not change, so it "
                f"would not be what the block wrote; decompose with experts=False (mlp{c.layer} is then one "
                "component and its row holds the change)")


def _unembed_dirs(model: Any, ids: Any, state: tuple | None = None) -> tuple[Any, Any]:
    """Centred unembedding directions ``W_U[:, t] - mean_v W_U[:, v]`` of the tokens ``ids``
    (float64, ``[n, d_model]``) and centred biases ``b_U[t] - mean_v b_U[v]`` (``[n]``). The
    vocabulary means are computed once per model and weights state; only the ``n`` columns
    asked for are converted on each call (the same numbers as converting all of ``W_U``)."""
    import torch

    mean_W, b_U, mean_b = _unembed_means(model, state)
    W_U = model.W_U.detach()
    cols = W_U[:, ids.to(W_U.device)].to("cpu", torch.float64)
    w = cols - mean_W                                                  # [d_model, n]
    gain = final_norm_gain(model)
    if gain is not None:                                               # a final norm weight left unfolded
        w = w * gain.unsqueeze(1)
    b = b_U[ids] - mean_b
    return w.T, b                                                      # [n, d_model], [n]


def final_norm_gain(model: Any) -> Any:
    """``[d_model]`` float64 gain of the final norm when compatibility mode left it in the norm
    instead of folding it into ``W_U`` (OLMo-2, whose blocks have no norm before attention),
    or None when it is folded (a gain of 1). A final LayerNorm whose bias is left unfolded
    is refused with a MeasurementError."""
    return derived(model, "final_norm_gain:float64", _final_norm_gain)


def _final_norm_gain(model: Any) -> Any:
    import torch

    norm = getattr(model, "ln_final", None)
    weight = getattr(norm, "weight", None)
    if norm is None or weight is None:
        return None
    bias = getattr(getattr(norm, "original_component", None), "bias", None)
    if not getattr(norm, "uses_rms_norm", True) and bias is not None and bool(bias.detach().abs().max() > 0):
        from ..architectures import architecture_name

        raise MeasurementError(f"{architecture_name(model)}'s final LayerNorm keeps a bias that compatibility mode "
                               "did not fold into the unembedding: this decomposition does not handle it")
    w = weight.detach().to("cpu", torch.float64)
    gain = 1.0 + w if getattr(norm, "uses_weight_offset", False) else w
    return None if bool((gain == 1).all()) else gain


def _unembed_means(model: Any, state: tuple | None = None) -> tuple[Any, Any, Any]:
    """``(mean_v W_U[:, v] [d_model, 1], b_U [d_vocab], mean_v b_U[v])``, float64 on CPU."""
    import torch

    def compute(m: Any) -> Any:
        W_U = m.W_U.detach().to("cpu", torch.float64)
        b_U = m.b_U.detach().to("cpu", torch.float64)
        return W_U.mean(1, keepdim=True), b_U, b_U.mean()

    return derived(model, "unembed_means:float64", compute, state=state)


def direct_effects(outs: Outputs, w: Any, scale: Any | None = None, *, constants: bool = False) -> Any:
    """``[C, n]`` direct effects, dividing by ``scale`` (default: the run's own); with
    ``constants=True`` ``[C + E, n]``, the constants' rows after the components'."""
    s = outs.scale if scale is None else scale
    return _de(outs.all_vectors if constants else outs.vectors, w, s)


def _de(vecs: Any, w: Any, s: Any) -> Any:
    """``[k, n]`` direct effects of ``vecs`` ``[k, n, d]``; each row's value depends on that row
    alone, so the rows of a part are those of the whole (bitwise)."""
    return (vecs * w.unsqueeze(0)).sum(-1) / s.unsqueeze(0)


def centred_logit(logits: Any, ids: Any) -> Any:
    """``logits[i, ids[i]] - mean_v logits[i, v]`` (float64): the logit the effects explain."""
    import torch

    # the mean accumulated in float64 without a float64 copy of the logits (the same numbers)
    return logits[torch.arange(logits.shape[0]), ids].double() - logits.mean(-1, dtype=torch.float64)


def identity_tolerance(model: Any, parts: Any) -> Any:
    """Per-prompt tolerance of "the parts sum to the logit": float error of the model's
    dtype over the sum of the parts' magnitudes (``parts``: ``[k, n]``)."""
    import torch

    dtype = getattr(model.cfg, "dtype", torch.float32)
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    return 1e-5 + 64 * eps * parts.abs().sum(0)


def _check_identity(model: Any, got: Any, want: Any, scale: Any, what: str, fix: str) -> None:
    import torch

    gap = (got - want).abs()
    tol = identity_tolerance(model, scale)
    if not bool(torch.isfinite(got).all() and torch.isfinite(want).all()):
        raise MeasurementError(bad(what, "non-finite values", "finite activations and logits"))
    if bool((gap > tol).any()):
        i = int((gap - tol).argmax())
        raise MeasurementError(
            f"{what} does not reproduce the logit read from the model: off by {float(gap[i]):.3g} on "
            f"prompt {i} (tolerance {float(tol[i]):.2g}; {int((gap > tol).sum())} of {gap.shape[0]} "
            f"prompts off). {fix}")


_MISSING_WRITER = ("Some writer to the residual stream is not accounted for (the decomposition knows "
                   "the embedding, learned positions, heads (through a post-attention RMS norm where "
                   "the model has one), attention-output biases and MLPs); a norm or nonlinearity it "
                   "does not know between a writer and the logit makes direct effects inexact. Use a "
                   "model in compatibility mode whose residual stream is the sum of these writers.")


@dataclass(frozen=True, eq=False, kw_only=True)
class DirectEffects(ComponentScores):
    """Direct effects of every writer on token ``t`` (centred logits), per prompt: a
    :class:`~pytest_circuits.scores.ComponentScores` (``of``, ``measure`` as ``DE(L1H0)``,
    ``ranking``, ``top``, ``grid``, ``assert_top``) over the components, plus the identity.

    ``values`` ``[C, n]`` holds the components (``components``), ``constants`` the writers that
    are not components (``"pos_embed"``, ``"b_O[l]"``), ``bias`` the centred ``b_U[t]``, and
    ``logit`` the centred logit *read from the model*: ``values.sum(0) +
    sum(constants.values()) + bias == logit`` is checked (``residual`` is the gap).

    Rankings (``by``): ``"components"``: the embedding, every head and every MLP (every expert
    of a mixture-of-experts MLP, decomposed with ``experts=True``); ``"heads"``; ``"mlp"``: MLP
    layers (an MLP split into experts: their sum); ``"attn"``: attention layers, each the sum of
    its heads (the layer's output bias ``b_O`` is a constant writer, see :attr:`constants`, and
    is not in it); ``"sublayers"``; ``"layers"``: whole blocks as
    :class:`~pytest_circuits.scores.Block`; ``"experts"``. ``order="largest"`` (default) puts
    the strongest push toward the token first, ``"smallest"`` the strongest push against it,
    ``"abs"`` the largest |mean|. E.g. ``de.ranking("attn", k=3)``,
    ``de.assert_top("attn23", by="attn")``."""

    bias: Any               # [n]  centred b_U[t]
    logit: Any              # [n]  centred logit of t, read from the model's logits
    token_ids: Any
    constants: dict = field(default_factory=dict)    # name -> [n] direct effect
    name: str = "DE({})"
    title: str = "direct effects"

    @property
    def parts_sum(self) -> Any:
        """The sum of every writer's direct effect and the centred ``b_U[t]`` ``[n]``."""
        return self.values.sum(0) + sum(self.constants.values()) + self.bias

    @property
    def residual(self) -> Any:
        """``logit - parts_sum`` per prompt: float error only (checked by :func:`decompose`)."""
        return self.logit - self.parts_sum

    def of(self, c: Any) -> Any:
        """Per-prompt direct effect of ``c`` (an attention layer sums its heads), or of a
        constant writer by name (``"pos_embed"``, ``"b_O[3]"``)."""
        if isinstance(c, str) and c in self.constants:
            return self.constants[c]
        return super().of(c)


def decompose(model: Any, prompts: Any, *, token: Any = "answer", intervention: Any = None,
              activations: ActivationStore | None = None, logit: str = "logit",
              experts: bool = False) -> DirectEffects:
    """Direct effect of every writer on ``token`` (see module docstring); raises when the
    parts do not sum to the logit read from the model. ``logit="pre_softcap"``: the logit
    before a final logit soft-cap (Gemma-2), which the parts sum to where the capped one is
    not a sum (refused with ``"logit"``). ``experts=True``: each mixture-of-experts layer's MLP
    is split into its experts (``L1E0``, ``L1E1``, ...: :mod:`pytest_circuits.moe`), whose
    outputs are checked to sum to the MLP's; refused for a model without experts, and under an
    intervention that replaces a split MLP or one of its experts."""
    if not isinstance(experts, bool):
        raise CircuitsError(bad("experts", experts, "True or False"))
    store = resolve(activations)
    logit_hook(model, logit)          # refused before anything runs
    ids = targets(model, prompts, token, store)
    outs = outputs(model, prompts, intervention=intervention, store=store, logits=True, logit=logit,
                   experts=experts)
    w, b = _unembed_dirs(model, ids)
    values = direct_effects(outs, w)
    consts = direct_effects(outs, w, constants=True)[len(outs.components):]
    read = centred_logit(outs.logits, ids)
    mi = model_info(model)
    de = DirectEffects(model=mi.label, components=outs.components, values=values, bias=b, logit=read,
                       token_ids=ids, prompts=prompts.name,
                       provenance={"model": mi.label, "prompts": prompts.name, "token": str(token),
                                   "intervention": intervention.key if intervention is not None else "none",
                                   **({"logit": logit} if logit != "logit" else {}),
                                   **({"experts": True} if experts else {})},
                       constants=dict(zip(outs.constant_names, consts)),
                       shape=(int(model.cfg.n_layers), int(model.cfg.n_heads)))
    import torch

    _check_identity(model, de.parts_sum, read, torch.cat([values, consts, b.unsqueeze(0)]),
                    "the sum of the direct effects", _MISSING_WRITER)
    return de


ROLES = ("backup", "released suppression", "amplifier", "none")
#: The ablation :func:`self_repair` and its relatives use unless told: resampling from a prompt
#: whose output differs (see the module docstring).
DEFAULT_KIND = "resample_distinct"
SILENT_FRACTION = 0.1   # |clean DE| under 10% of the rise: the component was silent (backup)
NOOP_RTOL = 1e-5        # |own ΔDE| under 1e-5 x |clean DE|: the ablation removed nothing


def _shape(components: Sequence[Any]) -> tuple[int, int] | None:
    """``(n_layers, n_heads)`` of a model from its writers (every head and MLP), for ``grid()``."""
    heads = [c for c in components if isinstance(c, Head)]
    if not heads:
        return None
    return (max(c.layer for c in components if isinstance(c, (Head, MLP, Expert))) + 1,
            max(h.head for h in heads) + 1)


def _refuse(what: str, ablation: str, why: str | None) -> None:
    """Raise when an ablation was uninformative (``why``): ``what`` under it is undefined."""
    if why is not None:
        raise MeasurementError(f"{what} under {ablation} is undefined: {why}. An empty or "
                               "all-zero answer would read as 'no backup'; ablate with a kind that acts "
                               "on these prompts (kind='resample_distinct', 'mean' with a reference set "
                               "whose outputs differ, or 'zero')")


@dataclass(frozen=True, eq=False, kw_only=True)
class AblatedScores(ComponentScores):
    """A :class:`~pytest_circuits.scores.ComponentScores` measured under an ablation
    (:attr:`SelfRepair.delta_scores`). ``flags``: the ablation's no-op flags, which mark
    every :meth:`measure` (with 0 as the value of a prompt it did not change); ``why``: set
    when the ablation changed nothing on (nearly) every prompt, and then every ranking and
    ranking assertion refuses (an empty or all-zero ranking would read as "no backup")."""

    flags: tuple[str, ...] = ()
    why: str | None = None

    def measure(self, c: Any, *, name: str | None = None, record: bool = True, **kw: Any) -> Measurement:
        """As :meth:`ComponentScores.measure <pytest_circuits.scores.ComponentScores.measure>`,
        marked with :attr:`flags` (then recorded only once marked)."""
        if not self.flags:
            return super().measure(c, name=name, record=record, **kw)
        m = super().measure(c, name=name, record=False, **kw).marked(*self.flags, null=0.0)
        return _record(m) if record else m

    def _ordered(self, by: str, order: str, **kw: Any) -> tuple[list[Ranked], Any, list[int]]:
        _refuse("a ranking of the changes", self.provenance.get("ablation", "the ablation"), self.why)
        return super()._ordered(by, order, **kw)


@dataclass(frozen=True, eq=False)
class SelfRepair(Rankable):
    """An ablation's total effect on the centred logit of ``t``, decomposed exactly.

    ``total = own + downstream + norm`` per prompt, where ``own`` is the ablated
    components' change of direct effect, ``downstream`` the sum of every other
    component's ΔDE (upstream ones are exactly 0) and ``norm`` the final-norm term
    (which also holds the constant writers' change). ``measured_total`` is the same
    total effect read from the logits of the two runs; :func:`self_repair` checks that
    they agree.

    Components that make up for the loss are told apart by :meth:`role`: ``"backup"``
    (clean DE with the sign of the lost effect, or ~0, and it grows) or ``"released
    suppression"`` (clean DE against the lost effect, shrinking toward 0);
    ``"amplifier"`` for those whose ΔDE adds to the loss.
    """

    model: str
    ablation: Any
    components: tuple[Component, ...]
    ablated: tuple[int, ...]        # indices into components
    clean_de: Any                   # [C, n]
    delta_de: Any                   # [C, n]  DE_abl - DE_clean, clean scale frozen
    norm_term: Any                  # [n]
    total: Any                      # [n]  centred logit change (from the decomposition)
    clean_logit: Any                # [n]  centred logit of the clean run, read from the model
    prompts: str
    labels: tuple[str, ...] | None = None
    measured_total: Any = None      # [n]  centred logit change read from the two runs' logits
    constants: dict = field(default_factory=dict)   # name -> clean DE [n] of constant writers
    # per prompt, whether the ablation left every value it replaced as it was (then the ablated
    # run is the clean run there); None when it cannot be told (patching, custom interventions)
    unchanged: tuple[bool, ...] | None = None

    # -- no-op ablations ---------------------------------------------------------------
    @property
    def noop_prompts(self) -> int:
        """On how many prompts the ablation changed nothing (0 when it cannot be told)."""
        return sum(self.unchanged) if self.unchanged is not None else 0

    def why_uninformative(self) -> str | None:
        """Why nothing measured under this ablation is evidence (it changed nothing on (nearly)
        every prompt), or None."""
        from ..interventions import NOOP_FRACTION

        n, k = len(self.total), self.noop_prompts
        if k == 0 or k < max(1, math.ceil(NOOP_FRACTION * n)):
            return None
        return (f"{UNINFORMATIVE}: the ablation {self.ablation.key} changed nothing on {k} of {n} prompts of "
                f"{self.prompts!r} (every value it replaced equals the clean one there)")

    def _flags(self) -> tuple[str, ...]:
        why = self.why_uninformative()
        if why is not None:
            return (why,)
        if self.noop_prompts:
            return (f"{PARTLY_UNINFORMATIVE}: the ablation {self.ablation.key} changed nothing on "
                    f"{self.noop_prompts} of {len(self.total)} prompts of {self.prompts!r}",)
        return ()

    def _refuse_if_uninformative(self, what: str) -> None:
        _refuse(what, self.ablation.key, self.why_uninformative())

    # -- per-prompt arrays -----------------------------------------------------------
    @property
    def own(self) -> Any:
        return self.delta_de[list(self.ablated)].sum(0)

    @property
    def lost(self) -> Any:
        """The direct effect the ablation removed, ``-own`` per prompt."""
        return -self.own

    @property
    def downstream(self) -> Any:
        mask = [i for i in range(len(self.components)) if i not in set(self.ablated)]
        return self.delta_de[mask].sum(0)

    # -- per component: two ComponentScores ----------------------------------------------
    @functools.cached_property
    def delta_scores(self) -> "AblatedScores":
        """Each component's change of direct effect under the ablation (``delta_de``) as a
        :class:`~pytest_circuits.scores.ComponentScores`: ``of(c)`` per prompt,
        ``measure(c)`` (= :meth:`compensation`, with the ablation's no-op flags), ``ranking``
        and ``top`` by the *signed* mean ΔDE with every component in (the ablated ones too;
        :meth:`ranking` is the make-up for the lost effect, ablated left out), ``grid()``.
        Its rankings refuse when the ablation is uninformative, as :meth:`ranking` does."""
        key = self.ablation.key
        return AblatedScores(components=self.components, values=self.delta_de, name=f"ΔDE({{}} | {key})",
                             title=f"ΔDE under {key}", model=self.model, prompts=self.prompts,
                             labels=self.labels, provenance={"ablation": key, "prompts": self.prompts},
                             shape=_shape(self.components), flags=self._flags(), why=self.why_uninformative())

    @functools.cached_property
    def clean_scores(self) -> ComponentScores:
        """Each component's clean direct effect (``clean_de``) as a
        :class:`~pytest_circuits.scores.ComponentScores`; ``measure(c)`` is
        :meth:`direct_effect`."""
        return ComponentScores(components=self.components, values=self.clean_de, name="DE({})",
                               title="clean direct effects", model=self.model, prompts=self.prompts,
                               labels=self.labels, shape=_shape(self.components),
                               provenance={"ablation": self.ablation.key, "prompts": self.prompts})

    # -- roles -----------------------------------------------------------------------
    @property
    def lost_sign(self) -> float:
        """+1 when the ablation removed a push toward the token (mean own ΔDE <= 0), else -1."""
        return 1.0 if float(self.own.mean()) <= 0 else -1.0

    def _role_of_means(self, clean: float, delta: float) -> str:
        d, c = delta * self.lost_sign, clean * self.lost_sign
        if d < 0:
            return "amplifier"
        if d == 0:
            return "none"
        return "backup" if c >= -SILENT_FRACTION * d else "released suppression"

    def role(self, c: Any) -> str:
        """How ``c`` responds to the ablation (on the means over prompts):

        * ``"backup"``: its ΔDE has the sign of the lost effect and its clean DE has that
          sign too, or is ~0 (under 10% of its rise): it does more of the same job;
        * ``"released suppression"``: its ΔDE has the sign of the lost effect but its clean
          DE opposes it: it suppressed the answer and suppresses less (anti-erasure);
        * ``"amplifier"``: its ΔDE adds to the loss; ``"none"``: its ΔDE is exactly 0.

        Refused (:class:`~pytest_circuits.errors.MeasurementError`) when the ablation is
        uninformative (:meth:`why_uninformative`).
        """
        self._refuse_if_uninformative(f"the role of {c}")
        return self._role_of_means(float(self.clean_scores.of(c).mean()), float(self.delta_scores.of(c).mean()))

    def ranking(self, k: int | None = 10, *, kind: str = "all", include_ablated: bool = False,
                by: str = "components", order: str = "largest") -> list[Ranked]:
        """Rows ``(component, mean ΔDE, rank)`` by mean ΔDE in the direction of the lost
        effect (the largest make-up first). ``kind``: ``"all"``, ``"backup"`` or
        ``"released"`` (released suppression) — see :meth:`role`. ``by``: the grain, as in
        :meth:`DirectEffects.ranking` (``"components"``, ``"heads"``, ``"attn"``, ``"mlp"``,
        ``"sublayers"``, ``"layers"``); the ablated components are left out of every row
        and sum unless ``include_ablated``. ``order``: ``"largest"`` (most make-up first),
        ``"smallest"`` (most added to the loss first) or ``"abs"``. ``k=None``: every row."""
        kinds = {"all": None, "backup": "backup", "released": "released suppression"}
        if kind not in kinds:
            raise CircuitsError(bad("kind", kind, "'all', 'backup' or 'released'"))
        rows, _, _ = self._ordered(by, order, include_ablated=include_ablated)
        if kinds[kind] is not None:
            clean_c, clean_v = _grain(self.components, self.clean_de, by,
                                      set() if include_ablated else set(self.ablated))
            cleans = dict(zip(clean_c, clean_v.mean(1).tolist()))
            rows = [r for r in rows if self._role_of_means(cleans[r.component], r.mean) == kinds[kind]]
            rows = [Ranked(r.component, r.mean, i + 1) for i, r in enumerate(rows)]
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise CircuitsError(bad("k", k, "a positive integer, or None for every row"))
        return rows if k is None else rows[:k]

    def _ordered(self, by: str, order: str, **kw: Any) -> tuple[list[Ranked], Any, list[int]]:
        self._refuse_if_uninformative("a ranking of the make-up for the lost effect")
        return super()._ordered(by, order, **kw)

    def _rank_source(self, by: str, include_ablated: bool = False) -> tuple[list[Component], Any, float]:
        comps, vals = _grain(self.components, self.delta_de, by, set() if include_ablated else set(self.ablated))
        return comps, vals, self.lost_sign

    def _what(self, by: str, order: str) -> str:
        return (f"ΔDE under {self.ablation.key} on {self.prompts} by {by} (mean over prompts; {order} "
                "make-up for the lost effect first)")

    def backups(self, k: int = 10) -> list[tuple[Component, float]]:
        """:meth:`ranking` of the backup components only."""
        return self.ranking(k, kind="backup")

    def released_suppression(self, k: int = 10) -> list[tuple[Component, float]]:
        """:meth:`ranking` of the components whose suppression the ablation released."""
        return self.ranking(k, kind="released")

    # -- measurements ----------------------------------------------------------------
    def _m(self, name: str, values: Any, clean: bool = False, **prov: Any) -> Measurement:
        """A measurement of ``values``; one made under the ablation (``clean=False``) carries
        its no-op flags (:meth:`_flags`), with 0 as the value of a prompt it did not change."""
        flags = () if clean else self._flags()
        m = Measurement.from_values(name, values, model=self.model, labels=self.labels, record=not flags,
                                    provenance={"ablation": self.ablation.key, "prompts": self.prompts, **prov})
        return record(m.marked(*flags, null=0.0)) if flags else m

    def total_effect(self) -> Measurement:
        return self._m(f"TE({self.ablation.key})", self.total)

    def own_effect(self) -> Measurement:
        """The ablated components' own ΔDE (= -DE for zero ablation)."""
        return self._m(f"ΔDE_own({self.ablation.key})", self.own)

    def direct_effect(self, c: Any) -> Measurement:
        """Clean direct effect of ``c``."""
        return self.clean_scores.measure(parse(c))

    def compensation(self, by: Any) -> Measurement:
        """ΔDE of ``by`` under the ablation (positive: it makes up for the loss), with the
        ablation's no-op flags: ``delta_scores.measure(by)``."""
        return self.delta_scores.measure(parse(by))

    def _ablated_names(self) -> str:
        return ", ".join(str(self.components[i]) for i in self.ablated) or "nothing"

    def why_nothing_lost(self) -> str | None:
        """Why the mean lost direct effect is 0, or None when it is not (a ratio over it
        is then defined)."""
        lost = self.lost
        scale = float(self.clean_de[list(self.ablated)].sum(0).abs().mean()) if self.ablated else 0.0
        tol = NOOP_RTOL * max(1.0, scale)
        if abs(float(lost.mean())) > tol:
            return None
        what = f"the ablation {self.ablation.key} of {self._ablated_names()}"
        if not self.ablated:
            return f"{what} ablates no component"
        if float(lost.abs().max()) <= tol:
            if scale <= tol:
                return (f"{what} removed no direct effect (own ΔDE = 0 on every prompt): the ablated "
                        f"output has no direct effect on the token (clean DE ~0 on every prompt)")
            return (f"{what} removed no direct effect (own ΔDE = 0 on every prompt, although its clean "
                    f"DE is {float(self.clean_de[list(self.ablated)].sum(0).mean()):+.3g} on average): "
                    "the replacement equals the clean output (a no-op ablation: e.g. every resampled "
                    "source output is identical to the prompt's own)")
        return (f"{what} removes {float(lost.max()):+.3g} on some prompts and {float(lost.min()):+.3g} on "
                "others, which cancel to a mean of 0: a fraction of it is undefined; report "
                "compensation() per component instead")

    def restored_fraction(self, by: Any) -> Measurement:
        """ΔDE(by) / (-own ΔDE): the fraction of the ablated direct effect that ``by`` restores."""
        comp = parse(by)
        why = self.why_nothing_lost()
        if why is not None:
            raise MeasurementError(f"restored fraction of {comp} is undefined: {why}")
        return Measurement.from_ratio(f"restored({comp} | {self.ablation.key})", self.delta_scores.of(comp), self.lost,
                                      model=self.model, labels=self.labels,
                                      provenance={"ablation": self.ablation.key, "component": str(comp),
                                                  "role": self.role(comp)})

    def norm_effect(self) -> Measurement:
        return self._m(f"norm_term({self.ablation.key})", self.norm_term)

    def table(self, k: int = 8) -> str:
        """A readable summary: total, own, downstream, norm, and the components that make
        up for the loss, each labelled backup or released suppression."""
        rows = [f"self-repair under {self.ablation.key} on {self.prompts} (n={self.total.shape[0]}, means):",
                f"  total effect  {float(self.total.mean()):+.4f}",
                f"  own ΔDE       {float(self.own.mean()):+.4f}",
                f"  downstream ΔDE{float(self.downstream.mean()):+.4f}",
                f"  norm term     {float(self.norm_term.mean()):+.4f}"]
        rows += [f"  [{f}]" for f in self._flags()]
        if self.why_uninformative() is not None:
            return "\n".join(rows + ["  no ranking: the ablation changed nothing (not evidence of no backup)"])
        rows.append("  making up for the loss (ΔDE; clean DE -> ablated DE; role):")
        for c, v in self.ranking(k):
            clean = float(self.clean_scores.of(c).mean())
            role = self.role(c)
            rows.append(f"    {str(c):>8} ΔDE {v:+.4f}  DE {clean:+.4f} -> {clean + v:+.4f}  {role}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        return (f"SelfRepair({self.ablation.key}: TE {float(self.total.mean()):+.3f} = own "
                f"{float(self.own.mean()):+.3f} + downstream {float(self.downstream.mean()):+.3f} + norm "
                f"{float(self.norm_term.mean()):+.3f}, n={self.total.shape[0]})")


def self_repair(model: Any, prompts: Any, ablate: Any, *, kind: str = DEFAULT_KIND, token: Any = "answer",
                positions: Any = "last", reference: Any = None, seed: int = 0,
                activations: ActivationStore | None = None, logit: str = "logit") -> SelfRepair:
    """Ablate ``ablate`` (spelling(s), components, or an Interventions) and decompose its effect.

    ``kind`` defaults to ``resample_distinct`` (each prompt gets another prompt's output that
    differs from its own). The result knows on which prompts the ablation changed nothing
    (:attr:`SelfRepair.unchanged`) and flags or refuses what it cannot tell (module docstring).
    Raises when the decomposition does not reproduce the total effect read from the
    logits; warns (:class:`~pytest_circuits.errors.NoOpInterventionWarning`) when an
    ablated component's direct effect is unchanged on (nearly) every prompt although it
    has one (the ablation replaced its output by an equal one). ``logit``: as in
    :func:`decompose` (``"pre_softcap"`` under a final logit soft-cap)."""
    store = resolve(activations)
    logit_hook(model, logit)          # refused before anything runs
    if isinstance(ablate, Interventions):
        abl = ablate
    else:
        abl = _ablate(model, ablate, kind, positions=positions, reference=reference, seed=seed)
    return _self_repair(model, prompts, abl, _CleanSide.read(model, prompts, token, store, logit), store)


@dataclass(frozen=True)
class _CleanSide:
    """What every ablation of the same prompts and token shares (computed once for a sweep): the
    target ids, their centred unembedding directions ``w`` and, per head, ``W_O[l, h] @ w``
    (a head's direct effect is ``z . (W_O w) / s``: no output vector is formed), and the clean
    run's direct effects, scale and logits."""

    ids: Any
    w: Any                          # [n, d_model]
    w_heads: Any                    # [L, n, H, d_head]: W_O[l, h] @ w_i
    b_O: Any                        # [L, d_model] or None
    components: tuple[Component, ...]
    constant_names: tuple[str, ...]
    all_de: Any                     # [C + E, n]
    scale: Any                      # [n]
    clean_logit: Any                # [n] centred logit of the target, read from the clean run's logits
    logit: str = "logit"            # which logit (logit_hook)

    @staticmethod
    def read(model: Any, prompts: Any, token: Any, store: ActivationStore, logit: str = "logit") -> "_CleanSide":
        import torch

        ids = targets(model, prompts, token, store)
        state = weights_state(model)      # read once for the constants below
        w, _ = _unembed_dirs(model, ids, state)
        W_O, b_O = _writer_constants(model, state)
        post = attn_post_gains(model)
        if post is None:
            w_heads = torch.einsum("lhdm,nm->lnhd", W_O, w)
        else:   # through the post-attention norm's gain (its scale is each run's own: _read_de)
            w_heads = torch.einsum("lhdm,lm,nm->lnhd", W_O, post, w)
        r = _read_de(model, prompts, None, store, w, w_heads, b_O, None, logit)
        return _CleanSide(ids, w, w_heads, b_O, writers(model), r.constant_names,
                          torch.cat([r.de, r.constant_de]), r.scale, centred_logit(r.logits, ids), logit)


class _ReadDE(NamedTuple):
    first: int                  # the writers before this row are the clean run's: not in `de`
    de: Any                     # [C - first, n] direct effects (scale: the clean run's)
    constant_names: tuple[str, ...]
    constant_de: Any            # [E, n], or None: the clean run's
    scale: Any                  # [n] this run's final-norm scale
    logits: Any                 # [n, d_vocab] as the store gives them (centred_logit reads them in float64)


def _read_de(model: Any, prompts: Any, intervention: Any, store: ActivationStore, w: Any, w_heads: Any,
             b_O: Any, clean_scale: Any, logit: str = "logit") -> _ReadDE:
    """Direct effects of every writer under ``intervention`` with the clean scale (its own
    when ``clean_scale`` is None: the clean run). With an intervention, the leading writers
    whose activations are read from the clean run (those before the first intervened block)
    are left out: their direct effects are the clean run's. A head's direct effect under a
    post-attention norm is divided by that norm's scale in this run (its heads then sum to
    what the layer writes in this run, exactly)."""
    import torch

    pos = _pos_embed_hook(model)
    post = attn_post_gains(model) is not None
    before, acts = _read_outputs(model, prompts, intervention, store, True, logit)
    clean = set(before) if intervention is not None else set()
    L = model.cfg.n_layers
    scale = acts[H.last(H.FINAL_SCALE)].double().reshape(-1)
    s = scale if clean_scale is None else clean_scale
    first, skip_to = 0, 0
    if H.last(H.EMBED) in clean:
        first = 1
        while skip_to < L and H.last(H.z(skip_to)) in clean and H.last(H.mlp_out(skip_to)) in clean:
            skip_to += 1
        first += skip_to * (w_heads.shape[2] + 1)
    rows: list[Any] = [] if first else [_de(acts[H.last(H.EMBED)].double().unsqueeze(0), w, s)]
    for l in range(skip_to, L):
        z = acts[H.last(H.z(l))].double()                              # [n, H, d_head]
        denom = s * _post_scale(acts, l) if post else s
        rows.append(((z * w_heads[l]).sum(-1) / denom.unsqueeze(-1)).T)    # [H, n]
        rows.append(_de(acts[H.last(H.mlp_out(l))].double().unsqueeze(0), w, s))
    n = scale.shape[0]
    de = torch.cat(rows) if rows else torch.zeros((0, n), dtype=torch.float64)
    cnames, cvecs = _constant_vectors(acts, pos, b_O, L, n)
    if intervention is not None and (pos is None or H.last(pos) in clean):
        const_de = None         # the clean run's (b_O is constant; learned positions read there)
    elif cvecs:
        const_de = _de(torch.stack(cvecs), w, s)
    else:
        const_de = torch.zeros((0, n), dtype=torch.float64)
    return _ReadDE(first, de, tuple(cnames), const_de, scale, acts[logit_hook(model, logit)])


def _self_repair(model: Any, prompts: Any, abl: Any, side: _CleanSide, store: ActivationStore) -> SelfRepair:
    import torch

    ids = side.ids
    all_clean = side.all_de.clone()     # each result owns its arrays (a sweep's share nothing)
    after = _read_de(model, prompts, abl, store, side.w, side.w_heads, side.b_O, side.scale, side.logit)
    n_c = len(side.components)
    # The ablated run's direct effects with the clean scale: the writers read from the clean
    # run have the clean run's (its rows), the others are computed from their activations.
    const_de = all_clean[n_c:] if after.constant_de is None else after.constant_de
    all_abl_frozen = torch.cat([all_clean[:after.first], after.de, const_de])
    de_clean = all_clean[:n_c]
    delta_all = all_abl_frozen - all_clean
    delta = delta_all[:n_c]
    norm = all_abl_frozen.sum(0) * (side.scale / after.scale - 1.0) + delta_all[n_c:].sum(0)
    total = delta.sum(0) + norm
    clean_logit = side.clean_logit.clone()
    measured = centred_logit(after.logits, ids) - clean_logit
    _check_identity(model, total, measured, torch.cat([all_clean, all_abl_frozen]),
                    f"the self-repair decomposition of {abl.key}", _MISSING_WRITER)
    ablated: list[int] = []
    for item in abl:
        comp = item.component
        # a neuron's or an expert's writer is its MLP (the router and the MLP's other experts read
        # the same input as in the clean run: the MLP's change is the expert's)
        rows = rows_of(side.components, MLP(comp.layer) if isinstance(comp, (Neuron, Expert)) else comp)
        ablated += rows
        _warn_if_noop(item, de_clean[rows].sum(0), delta[rows].sum(0), prompts.name)
    mi = model_info(model)
    return SelfRepair(mi.label, abl, side.components, tuple(sorted(set(ablated))), de_clean, delta, norm,
                      total, clean_logit, prompts.name, prompts.prompts, measured,
                      dict(zip(side.constant_names, all_clean[n_c:])), _unchanged(model, prompts, abl, store))


def _unchanged(model: Any, prompts: Any, abl: Any, store: ActivationStore) -> tuple[bool, ...] | None:
    """Per prompt, whether ``abl`` changed nothing (None when it cannot tell: see
    :meth:`~pytest_circuits.interventions.Interventions.unchanged`)."""
    how = getattr(abl, "unchanged", None)
    same = how(model, prompts, store) if callable(how) else None
    return None if same is None else tuple(bool(x) for x in same.tolist())


def _warn_if_noop(item: Any, clean_de: Any, delta: Any, name: str) -> None:
    """Warn when an ablation left a component's direct effect as it was on (nearly) every
    prompt although the component has one (seen from the decomposition, so also when the
    ablated run was served from the cache)."""
    from ..interventions import NOOP_FRACTION, NOOP_KINDS

    if getattr(item, "kind", None) not in NOOP_KINDS:
        return
    if isinstance(getattr(item, "component", None), Expert):
        return          # its row is its MLP's, whose clean DE is not the expert's (the ablation's own watch tells)
    scale = float(clean_de.abs().mean())
    if scale <= 1e-6:
        return          # no direct effect to lose: nothing to tell from the decomposition
    same = delta.abs() <= NOOP_RTOL * (clean_de.abs() + scale)
    unchanged, n = int(same.sum()), int(same.shape[0])
    if unchanged >= max(1, math.ceil(NOOP_FRACTION * n)):
        warnings.warn(NoOpInterventionWarning(
            f"the ablation {item.key} removed no direct effect of {item.component} on "
            f"{'every prompt' if unchanged == n else f'{unchanged} of {n} prompts'} of {name!r} (own ΔDE = 0; "
            f"clean DE {float(clean_de.mean()):+.3g} on average): its replacement equals the clean output "
            f"(for resample: every prompt's source output for {item.component} equals its own) — an effect "
            "of 0 measured under it is not evidence of no effect or of no backup"), stacklevel=4)


def compensation(model: Any, prompts: Any, *, ablate: Any, by: Any, kind: str = DEFAULT_KIND,
                 token: Any = "answer", positions: Any = "last", seed: int = 0, reference: Any = None,
                 activations: ActivationStore | None = None, logit: str = "logit") -> Measurement:
    """ΔDE of ``by`` when ``ablate`` is ablated (its ``restored_fraction`` via :func:`self_repair`);
    flagged ``uninformative`` (and its assertions refused) where the ablation changed nothing."""
    sr = self_repair(model, prompts, ablate, kind=kind, token=token, positions=positions, seed=seed,
                     reference=reference, activations=activations, logit=logit)
    return sr.compensation(by)


def total_effect(model: Any, prompts: Any, intervention: Any, *, token: Any = "answer",
                 activations: ActivationStore | None = None) -> Measurement:
    """Change of the centred logit of ``token`` under ``intervention``, read from the logits."""
    import torch

    store = resolve(activations)
    ids = targets(model, prompts, token, store)
    rows = torch.arange(len(prompts))

    def centred(iv: Any) -> Any:
        lg = store.get(model, prompts, [H.LOGITS_LAST], iv)[H.LOGITS_LAST].double()
        return lg[rows, ids] - lg.mean(-1)

    vals = centred(intervention) - centred(None)
    return Measurement.from_values(f"TE({intervention.key})", vals, model=model_info(model).label,
                                   labels=prompts.prompts,
                                   provenance={"prompts": prompts.name, "token": str(token),
                                               "intervention": intervention.key})


def dla_vs_total(model: Any, prompts: Any, component: Any, *, kind: str = DEFAULT_KIND, token: Any = "answer",
                 positions: Any = "last", seed: int = 0, reference: Any = None,
                 activations: ActivationStore | None = None, logit: str = "logit") -> "DLAvsTotal":
    """How far the direct logit attribution of ``component`` overstates its causal effect.

    DLA is the clean direct effect; the causal effect is minus the total effect of
    ablating the component (``kind``, at ``positions``: the last token by default). ``overstatement`` is the
    paired difference ``DLA - causal``; ``causal_fraction`` the ratio of means.
    """
    comp = parse(component, model)
    sr = self_repair(model, prompts, comp, kind=kind, token=token, positions=positions, seed=seed,
                     reference=reference, activations=activations, logit=logit)
    if kind == "zero":
        if isinstance(comp, Expert):
            # an expert's clean DE, from the decomposition split into experts (the self-repair
            # rows are whole MLPs)
            clean_de = decompose(model, prompts, token=token, activations=activations, logit=logit,
                                 experts=True).of(comp)
            dla = sr._m(f"DE({comp})", clean_de, clean=True, component=str(comp))
        else:
            clean_de = sr.clean_scores.of(comp)
            dla = sr.direct_effect(comp)      # the clean DE: what zero ablation removes
    else:
        # Against a resampled/mean baseline the comparable DLA is the direct effect lost.
        dla = sr._m(f"DLA({comp}) vs {kind}", -sr.own, component=str(comp))
    causal = sr._m(f"causal({comp})", -sr.total, component=str(comp))
    over = dla.paired_difference(causal, name=f"DLA overstatement({comp})")
    why = sr.why_nothing_lost()
    if why is not None:
        raise MeasurementError(f"causal/DLA of {comp} is undefined: {why}")
    frac = Measurement.from_ratio(f"causal/DLA({comp})", -sr.total, -sr.own if kind != "zero" else clean_de,
                                  model=sr.model, labels=sr.labels, provenance={"component": str(comp)})
    return DLAvsTotal(str(comp), dla, causal, over, frac, sr)


@dataclass(frozen=True, eq=False)
class DLAvsTotal:
    component: str
    dla: Measurement
    causal: Measurement
    overstatement: Measurement
    causal_fraction: Measurement
    self_repair: SelfRepair

    def __repr__(self) -> str:
        return (f"DLAvsTotal({self.component}: DLA {self.dla.mean:+.3f}, causal {self.causal.mean:+.3f}, "
                f"causal/DLA {self.causal_fraction.mean:.2f})")


def sweep(model: Any, prompts: Any, components: Sequence[Any], *, kind: str = DEFAULT_KIND, token: Any = "answer",
          positions: Any = "last", seed: int = 0, reference: Any = None,
          activations: ActivationStore | None = None, logit: str = "logit") -> list[SelfRepair]:
    """``self_repair`` for each component in turn (each resumes from the clean stream at its layer).
    A result whose ablation changed nothing refuses its rankings and backups (never an empty list)."""
    from .._progress import bar

    comps = parse_many(components, model)
    if not comps:
        return []
    store = resolve(activations)
    logit_hook(model, logit)          # refused before anything runs
    out: list[SelfRepair] = []
    abls = [_ablate(model, c, kind, positions=positions, reference=reference, seed=seed) for c in comps]
    side = _CleanSide.read(model, prompts, token, store, logit)
    _run_together(model, prompts, abls, store, logit)
    for abl in bar(abls, "ablation sweep", total=len(abls)):
        out.append(_self_repair(model, prompts, abl, side, store))
    return out


def _run_together(model: Any, prompts: Any, abls: Sequence[Any], store: ActivationStore, logit: str = "logit") -> None:
    """Compute the ablated runs a sweep reads in shared forwards, those of every layer stacked
    together (:meth:`~pytest_circuits.store.ActivationStore.get_many`, each ablation reading
    the names from its own first block on); the sweep then reads them from memory."""
    names = _readout_names(model, True, logit)
    if len(abls) > 1:
        for abl in abls:
            abl.check(model, prompts)
        store.get_many(model, prompts, lambda abl: store.split_at_resume(names, abl)[1], abls)
