"""OV circuits of attention heads: successor heads and copy suppression.

**Effective embedding.** ``E_eff(t)`` is the residual stream after block 0
(``blocks.0.hook_resid_post``) of a forward pass on the token ``t`` alone: no BOS, position
0, so layer 0's attention can attend only to ``t`` itself. It is the token embedding (plus
position 0's learned embedding where the model has one) plus layer 0's attention and
MLP0 on it. This is the effective embedding of McDougall et al. 2023 (arXiv:2310.04625:
MLP0 output with layer-0 attention attending to the token itself); Gould et al. 2023
(arXiv:2312.09230) likewise read a head's input as the token after MLP0. Read through the
activation store (one forward over the tokens, batched; cached like any other).

**OV-circuit logits** of head ``(l, h)``, input token ``t``, output token ``u``::

    OV[l, h][t, u] = (ln1_l(E_eff(t)) W_V[l, kv(h)] + b_V[l, h]) W_O[l, h] . (W_U[:, u] - mean_v W_U[:, v])

``ln1_l`` is the block's own norm module (compatibility mode folds its weights into
``W_V``, so it only centres/rescales); ``kv(h) = h // (n_heads / n_kv_heads)`` under
grouped-query attention (SmolLM2: 9 query heads share 3 key-value heads); ``b_V`` is 0 in
compatibility mode (TransformerLens folds value biases into ``b_O``, a per-layer constant
no head owns); the unembedding is centred over the vocabulary like the direct effects of
:mod:`~pytest_circuits.techniques.effects` (a constant per row: no ranking below changes).
``b_U`` is left out: it is not the head's. Only the rows and columns asked for are ever
computed (never a vocabulary x vocabulary matrix). It is what the head writes when it
attends entirely to a position holding ``E_eff(t)``: tests/unit/test_ov_heads.py checks
it against ``hook_z`` of a forward whose ``resid_pre`` at layer ``l`` is ``E_eff(t)``.

**Succession score** (Gould et al. 2023): for every (token, successor) pair of the
ordinal sequences the tokenizer has (:mod:`pytest_circuits.tasks.ordinal`), whether the
head's OV logits over the members of the token's own sequence put the successor strictly
first (a tie is a miss). The score is the proportion of pairs, a :class:`Measurement` of
0/1 values (Clopper-Pearson interval). A head that copies (OV ~ identity) puts the token
itself first and scores ~0; chance is about 1/(sequence length), 0.04-0.14.

**Copy suppression** (McDougall et al. 2023): a head that attends to earlier copies of the
token the model predicts and lowers that token's logit through that attention, with an OV
circuit that suppresses tokens in general. The attention and its effect are measured by
:func:`pytest_circuits.techniques.heads.head_evidence` (kind ``"copy_suppression"``) on the
repeated random sequences of the induction check, at the positions where the model predicts
the next token; the OV part is *OV self-suppression*: over a seeded sample of ``n_tokens``
tokens (:func:`token_sample`), the proportion whose own OV logit is among the ``k`` lowest of
the sample's (pessimistic ties: ``#{u != t: OV[t, u] <= OV[t, t]} < k``; chance
``k/n_tokens``). The opposite, *self-copying* (own logit among the ``k`` highest, ties
against), is reported beside it: a copying head (OV ~ +identity) is self-copying, never
suppressing. See :func:`detect_copy_suppression` for the criterion.

Both detectors decide ``found`` on interval bounds; the thresholds are keyword arguments
and their defaults are justified in each detector's docstring. The ``heatmaps`` hold every
head's score; intervals are computed for the heads whose mean could pass (a mean at or
under a lower-bound threshold cannot), so a 30 x 9 model costs few bootstraps.

Measured on the planted models (``tests/data/planted/ordinal`` and ``ordinal_control``,
:mod:`pytest_circuits.planted`): see :func:`detect_successor`; copy suppression on the decoy
zoo (:mod:`pytest_circuits.zoo_heads`) and ``ordinal``.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Sequence

from .. import hooks as H
from ..components import Head
from ..detection import Detection
from ..errors import CircuitsError, PromptSetError, bad
from ..devices import to_device_of
from ..measurement import Measurement, record
from ..models import derived, info as model_info
from ..prompts import PromptSet
from ..store import ActivationStore, resolve
from ..tasks.ordinal import Ordinals, ordinals, successor_prompts
from .effects import _unembed_dirs, attn_output_weights, head_write_problem

SUCCESSOR_SOURCE = "Gould et al. 2023, arXiv:2312.09230"
COPY_SOURCE = "McDougall et al. 2023, arXiv:2310.04625"
SUCCESSOR_TITLE = "successor heads (OV circuit maps an ordinal token to its successor)"
COPY_TITLE = "copy suppression (attends to earlier copies of the predicted token and lowers its logit)"


# --------------------------------------------------------------------------- helpers
def _name(model: Any) -> str:
    """The model's report label (a model not loaded by pytest-circuits raises ModelUnavailable:
    the activation store needs its fingerprint anyway)."""
    return model_info(model).label


def _head(l: int, h: int) -> str:
    return f"L{l}H{h}"


def _check_ids(model: Any, ids: Sequence[int], what: str) -> list[int]:
    try:
        out = [int(i) for i in ids]
    except (TypeError, ValueError):
        raise CircuitsError(bad(what, ids, "a sequence of token ids")) from None
    if not out:
        raise CircuitsError(bad(what, [], "at least one token id"))
    V = int(model.cfg.d_vocab)
    for i, orig in zip(out, ids):
        if isinstance(orig, bool) or not 0 <= i < V:
            raise CircuitsError(bad(what, orig, f"token ids in 0..{V - 1}"))
    return out


def _token_set(model: Any, ids: Sequence[int], name: str) -> PromptSet:
    """One prompt per token, each the token alone (no BOS)."""
    import torch

    return PromptSet(name=name, prompts=tuple(model.tokenizer.decode([i]) for i in ids),
                     tokens=torch.tensor(list(ids), dtype=torch.long).reshape(-1, 1),
                     lengths=(1,) * len(ids), pad_id=_pad_id(model))


def _pad_id(model: Any) -> int:
    tok = model.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))


def effective_embedding(model: Any, token_ids: Sequence[int], *,
                        activations: ActivationStore | None = None) -> Any:
    """``[n, d_model]`` float64: ``blocks.0.hook_resid_post`` of a forward on each token
    alone (see the module docstring)."""
    ids = _check_ids(model, token_ids, "token_ids")
    ps = _token_set(model, ids, "ov:effective-embedding")
    name = H.last(H.resid_post(0))
    return resolve(activations).get(model, ps, [name])[name].double()


def _value_weights(model: Any) -> tuple[Any, Any]:
    """``W_V`` per query head ``[L, H, d_model, d_head]`` and ``b_V`` ``[L, H, d_head]`` (or
    None), float64 on CPU, once per model and weights state."""
    import torch

    def w(m: Any) -> Any:
        W = m.W_V.detach().to("cpu", torch.float64)
        return _per_query_head(W, int(m.cfg.n_heads), "W_V")

    def b(m: Any) -> Any:
        bv = getattr(m, "b_V", None)
        if bv is None:
            return None
        bv = bv.detach().to("cpu", torch.float64)
        bv = _per_query_head(bv, int(m.cfg.n_heads), "b_V")
        return bv if bool(bv.abs().max() > 0) else None

    return derived(model, "W_V:float64:per-head", w), derived(model, "b_V:float64:per-head", b)


def _per_query_head(t: Any, n_heads: int, what: str) -> Any:
    kv = t.shape[1]
    if kv == n_heads:
        return t
    if kv < 1 or n_heads % kv:
        raise CircuitsError(f"{what} has {kv} key-value heads for {n_heads} query heads: not grouped-query "
                            "attention this module understands")
    return t.repeat_interleave(n_heads // kv, dim=1)


def _normed(model: Any, layer: int, E: Any) -> Any:
    """``ln1_l(E)`` (float64) through the block's own norm module."""
    import torch

    dtype = getattr(model.cfg, "dtype", torch.float32)
    ln1 = model.blocks[layer].ln1
    with torch.no_grad():
        x = ln1(to_device_of(E, ln1, dtype).unsqueeze(1))      # the norm's device (blocks may be split)
    return x[:, 0].to("cpu", torch.float64)


def _layer_outputs(model: Any, layer: int, xn: Any) -> Any:
    """``[H, n, d_model]``: what each head of ``layer`` writes when it attends entirely to
    positions whose normalized residual is ``xn`` ``[n, d_model]``."""
    import torch

    W_V, b_V = _value_weights(model)
    v = torch.einsum("nd,hde->hne", xn, W_V[layer])
    if b_V is not None:
        v = v + b_V[layer].unsqueeze(1)
    return torch.einsum("hne,hed->hnd", v, attn_output_weights(model)[layer])


def _layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    L = int(model.cfg.n_layers)
    if layers is None:
        return list(range(L))
    out = []
    for l in layers:
        if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < L:
            raise CircuitsError(bad("layer", l, f"an int in 0..{L - 1}"))
        out.append(l)
    if not out:
        raise CircuitsError(bad("layers", layers, "None (every layer) or at least one layer"))
    return out


def ov_logits(model: Any, token_ids: Sequence[int], out_ids: Sequence[int] | None = None, *,
              layers: Sequence[int] | None = None, activations: ActivationStore | None = None) -> Any:
    """``[len(layers), n_heads, n, m]`` float64 OV-circuit logits (module docstring) of the
    input tokens ``token_ids`` on the output tokens ``out_ids`` (default: the same tokens).
    Only these rows and columns are computed."""
    import torch

    ids = _check_ids(model, token_ids, "token_ids")
    cols = ids if out_ids is None else _check_ids(model, out_ids, "out_ids")
    E = effective_embedding(model, ids, activations=activations)
    w, _ = _unembed_dirs(model, torch.tensor(cols))                 # [m, d_model]
    return torch.stack([_layer_outputs(model, l, _normed(model, l, E)) @ w.T
                        for l in _layers(model, layers)])


# --------------------------------------------------------------------------- successor heads
def succession_hits(model: Any, o: Ordinals | None = None, *,
                    activations: ActivationStore | None = None) -> tuple[Any, tuple[str, ...]]:
    """``([n_layers, n_heads, P] bool, class name of each pair)``: whether each head's OV
    logits over the pair's sequence put the successor strictly first, for the ``P``
    pairs of ``o.pairs`` (default: :func:`~pytest_circuits.tasks.ordinal.ordinals`)."""
    import torch

    o = ordinals(model) if o is None else o
    if not o.pairs:
        raise CircuitsError("no (token, successor) pair to score: " + (o.report() or "no ordinal sequence"))
    ids = sorted({t for c in o.classes for t in c.ids})
    where = {t: i for i, t in enumerate(ids)}
    logits = ov_logits(model, ids, activations=activations)          # [L, H, n, n]
    hits = torch.zeros(logits.shape[0], logits.shape[1], len(o.pairs), dtype=torch.bool)
    for p, (k, i, j) in enumerate(o.pairs):
        cls_cols = [where[t] for t in o.classes[k].ids]
        row = logits[:, :, where[o.classes[k].ids[i]]][..., cls_cols]  # [L, H, m_k]
        target = row[..., j].clone()
        others = row.clone()
        others[..., j] = float("-inf")
        hits[:, :, p] = target > others.max(-1).values
    return hits, tuple(o.classes[k].name for k, _, _ in o.pairs)


TIE_RTOL = 1e-5   # logits within this (relative) distance of the answer's count as a tie


def _strictly_first(logits: Any, at: Any) -> Any:
    """``[r]`` 1.0 where column ``at[r]`` of ``logits[r]`` is above every other column by more than
    float noise, else 0.0: a tie is not a correct answer (argmax would pick one of the tied
    columns by an implementation detail, and did differently from run to run)."""
    import torch

    own = logits.gather(-1, at.reshape(-1, 1)).squeeze(-1)
    others = logits.clone()
    others.scatter_(-1, at.reshape(-1, 1), float("-inf"))
    best_other = others.max(-1).values
    tol = TIE_RTOL * (1.0 + torch.maximum(own.abs(), best_other.abs()))
    return (own > best_other + tol).double()


def successor_margins(model: Any, o: Ordinals, prompts: PromptSet, *,
                      activations: ActivationStore | None = None) -> tuple[Any, Any]:
    """On in-context successor prompts (:func:`~pytest_circuits.tasks.ordinal.successor_prompts`,
    ``meta["class_index"]`` into ``o.classes``), at the last position: whether the model's
    top logit among the sequence's members is the answer, strictly (``[n]`` 0/1; a tie within
    float noise is not correct), and every head's
    direct-effect margin ``DE(answer) - mean DE(other members)`` (``[n_layers, n_heads, n]``),
    with ``DE(u) = z_h W_O[l, h] . w_u / s`` (centred unembedding, final-norm scale)."""
    import torch

    prompts.require("answer_ids")
    if "class_index" not in prompts.meta:
        raise CircuitsError(bad("prompts", prompts, "prompts from successor_prompts (meta 'class_index')"))
    store = resolve(activations)
    L = int(model.cfg.n_layers)
    names = [H.LOGITS_LAST, H.last(H.FINAL_SCALE)] + [H.last(H.z(l)) for l in range(L)]
    acts = store.get(model, prompts, names)
    logits = acts[H.LOGITS_LAST].double()
    scale = acts[H.last(H.FINAL_SCALE)].double().reshape(-1)
    W_O = attn_output_weights(model)
    n = len(prompts)
    correct = torch.zeros(n, dtype=torch.float64)
    margins = torch.zeros(L, int(model.cfg.n_heads), n, dtype=torch.float64)
    by_class: dict[int, list[int]] = {}
    for r, k in enumerate(prompts.meta["class_index"]):
        by_class.setdefault(int(k), []).append(r)
    for k, rows in by_class.items():
        ids = torch.tensor(o.classes[k].ids)
        w = _unembed_dirs(model, ids)[0]                                        # [m, d]
        r_t = torch.tensor(rows)
        at = torch.tensor([o.classes[k].ids.index(prompts.answer_ids[r]) for r in rows])
        correct[r_t] = _strictly_first(logits[r_t][:, ids], at)
        for l in range(L):
            out = torch.einsum("rhe,hed->hrd", acts[H.last(H.z(l))][r_t].double(), W_O[l])
            de = out @ w.T / scale[r_t].unsqueeze(-1)                           # [H, r, m]
            own = de.gather(-1, at.reshape(1, -1, 1).expand(de.shape[0], -1, 1)).squeeze(-1)
            margins[l][:, r_t] = own - (de.sum(-1) - own) / (len(ids) - 1)
    return correct, margins


def model_successor_margins(model: Any, o: Ordinals, prompts: PromptSet, *, intervention: Any = None,
                            activations: ActivationStore | None = None) -> Any:
    """``[n]`` float64: on in-context successor prompts, at the last position, the model's
    logit of the answer minus its mean logit of the sequence's other members (under
    ``intervention``, e.g. a head zero-ablated)."""
    import torch

    prompts.require("answer_ids")
    logits = resolve(activations).get(model, prompts, [H.LOGITS_LAST], intervention)[H.LOGITS_LAST].double()
    out = torch.zeros(len(prompts), dtype=torch.float64)
    for r, k in enumerate(prompts.meta["class_index"]):
        ids = list(o.classes[int(k)].ids)
        a = ids.index(prompts.answer_ids[r])
        row = logits[r, ids]
        out[r] = row[a] - (row.sum() - row[a]) / (len(ids) - 1)
    return out


MIN_MARGIN = 0.05   # a successor head's own effect on the successor's margin, in logits


def detect_successor(model: Any, *, seed: int = 0, n: int = 100, activations: ActivationStore | None = None,
                     min_score: float = 0.5, min_pairs: int = 20, min_classes: int = 2,
                     context: int = 3, top: int = 3, min_margin: float = MIN_MARGIN) -> Detection:
    """Successor heads (check ``"successor"``; Gould et al. 2023, arXiv:2312.09230): heads whose
    OV circuit maps an ordinal token to its successor *and* that do so in a forward pass.

    The defining properties, each on interval bounds (a head is **found** when all hold on
    the pessimistic bounds):

    1. *OV succession*: its succession score (module docstring; a proportion of pairs, with
       its Clopper-Pearson interval) has a 95% lower bound above ``min_score`` (0.5: the head
       ranks the successor first, among the members of its sequence, for most pairs; chance
       is 1/(sequence length), 0.04-0.14; a copying head scores ~0);
    2. *in context, through its attention*: on in-context prompts (``" Monday, Tuesday,
       Wednesday,"`` -> ``" Thursday"``, up to ``n`` seeded ones) its direct effect on the
       answer minus its mean direct effect on the sequence's other members has a lower bound
       above ``min_margin`` (0.05 logit): the head attends to the members and writes their
       successors (a head with the OV map that attends only to BOS, or to nothing, fails);
    3. *by intervention*: zero-ablating it lowers the model's own margin (logit of the
       answer minus the mean logit of the other members) by a lower bound above
       ``min_margin``: its output is used (a successor output that a later component
       cancels fails).

    **Absent** when no head passes all three on the optimistic (upper) bounds; **undecided**
    otherwise. Not applicable when the tokenizer has fewer than ``min_pairs`` (20)
    single-token pairs from at least ``min_classes`` (2) sequences (the reason lists what it
    has), or when a head has the OV map but no in-context prompt can be written to test
    properties 2 and 3. At 20 pairs a perfect head's Clopper-Pearson lower bound (0.83) is
    well clear of 0.5. The head with the highest score among all is selected on the same
    pairs it is measured on; the threshold's distance from chance keeps that honest.

    Measurements (the headlines, under names that do not depend on the head, so that the
    checkup's baselines compare them across checkpoints): ``succession score (top head)``
    (the best found head, else the best head), ``in-context successor accuracy`` (the
    model's top-1 among the sequence's members; a proportion), ``successor DE margin (top
    head)`` and ``successor margin drop, top head ablated``. Per head, in ``more`` (also
    through ``measurement(name)``): ``succession score L{l}H{h}``, ``successor DE margin
    L{l}H{h}`` and ``successor margin drop, L{l}H{h} ablated`` for up to ``top`` found
    heads (the best head when none is found). Heatmaps ``succession score`` and
    ``in-context successor DE margin``. ``seed``/``n`` pick the in-context prompts only.

    Planted (tests/data/planted, measured by tests/unit/test_ov_heads.py): ``ordinal``'s
    successor head L1H0 scores 1 [0.929, 1] on its 50 pairs, every other head 0; its DE
    margin 0.109 [0.106, 0.111] on 38 in-context prompts and ablating it lowers the model's
    margin by as much (nothing else reads it); ``ordinal_control`` (a predecessor head and
    copying heads) scores 0 everywhere: absent. The zoo (:mod:`pytest_circuits.zoo_tasks`)
    holds a successor split over two grouped-query heads with an attention sink, and decoys
    with one property each. SmolLM2-135M (2026-11-26): absent; 91 pairs from 8 sequences,
    best L23H3 0.176 [0.104, 0.27] (0.62 on the digits 1-9, <= 0.33 elsewhere), next L28H6
    0.143; the model itself continues the comma lists (in-context accuracy 0.76 [0.647,
    0.851], 75 prompts), the largest direct-effect margins there being L29H1 +0.51 and L23H3
    +0.34 (a copy-suppression head, which lowers the members already in the list).
    """
    import numpy as np

    from ..interventions import ablate

    _check_detector_args(n=n, top=top, min_pairs=min_pairs, min_classes=min_classes, context=context)
    if not 0.0 <= float(min_score) < 1.0:
        raise CircuitsError(bad("min_score", min_score, "a proportion in [0, 1)"))
    if isinstance(min_margin, bool) or not isinstance(min_margin, (int, float)) or not min_margin >= 0:
        raise CircuitsError(bad("min_margin", min_margin, "a number >= 0 (logits)"))
    name = _name(model)
    arch = head_write_problem(model)
    if arch is not None:
        return Detection.not_applicable("successor", SUCCESSOR_TITLE, arch, source=SUCCESSOR_SOURCE, model=name)
    o = ordinals(model)
    why = o.not_applicable(min_pairs, min_classes)
    if why is not None:
        return Detection.not_applicable("successor", SUCCESSOR_TITLE, why, source=SUCCESSOR_SOURCE, model=name)
    store = resolve(activations)
    hits, labels = succession_hits(model, o, activations=store)
    scores = hits.double().mean(-1).numpy()                          # [L, H]
    L, nh = scores.shape

    def score(lh: tuple[int, int], label: str | None = None, record: bool = False) -> Measurement:
        return Measurement.from_values(label or f"succession score {_head(*lh)}", hits[lh].double().numpy(),
                                       model=name, record=record, method="clopper-pearson",
                                       provenance={"head": _head(*lh)})

    # heads whose OV succession could pass (upper bound) are tested in context; found ones pass all
    ov_cands = [(l, h) for l in range(L) for h in range(nh) if scores[l, h] > 0 and score((l, h)).upper > min_score]
    order = np.argsort(-scores, axis=None, kind="stable")
    best = divmod(int(order[0]), nh)
    heatmaps: dict[str, Any] = {"succession score": scores}
    try:
        ps = successor_prompts(model, o, context=context, n=n, seed=seed, name="successor:in-context")
    except PromptSetError as e:
        ps, no_prompts = None, str(e)
    if ps is None and ov_cands:
        return Detection.not_applicable(
            "successor", SUCCESSOR_TITLE, f"the OV circuit of {', '.join(_head(*lh) for lh in ov_cands[:3])} maps "
            f"tokens to their successors, but no in-context prompt can be written to test it in a forward pass "
            f"({no_prompts})", source=SUCCESSOR_SOURCE, model=name)
    props: dict[tuple[int, int], list[tuple[str, Measurement, float]]] = {}
    behaviour: list[Measurement] = []
    correct = margins = None
    if ps is not None:
        correct, margins = successor_margins(model, o, ps, activations=store)
        heatmaps["in-context successor DE margin"] = margins.mean(-1).numpy()
        clean = model_successor_margins(model, o, ps, activations=store)
        for lh in ov_cands:
            drop = clean - model_successor_margins(model, o, ps, intervention=ablate(model, _head(*lh), "zero"),
                                                   activations=store)
            props[lh] = [
                ("OV succession", score(lh), float(min_score)),
                ("DE margin in context",
                 Measurement.from_values(f"successor DE margin {_head(*lh)}", margins[lh].numpy(), model=name,
                                         record=False, method="bootstrap-t"), float(min_margin)),
                ("margin drop when ablated",
                 Measurement.from_values(f"successor margin drop, {_head(*lh)} ablated", drop.numpy(), model=name,
                                         record=False, method="bootstrap-t"), float(min_margin))]
    found_heads = sorted((lh for lh, ms in props.items() if all(m.lower > t for _, m, t in ms)),
                         key=lambda lh: (-scores[lh], lh))
    possible = [lh for lh, ms in props.items() if lh not in found_heads and all(m.upper > t for _, m, t in ms)]
    top_lh = found_heads[0] if found_heads else best
    measurements = [score(top_lh, "succession score (top head)", record=True)]
    shown = found_heads[:top] or [best]
    more = [score(lh, record=True) for lh in shown]
    if ps is not None:
        assert correct is not None and margins is not None
        behaviour.append(Measurement.from_values("in-context successor accuracy", correct.numpy(), model=name,
                                                 method="clopper-pearson"))
        behaviour.append(Measurement.from_values("successor DE margin (top head)", margins[top_lh].numpy(),
                                                 model=name, method="bootstrap-t",
                                                 provenance={"head": _head(*top_lh)}))
        if top_lh in props:
            behaviour.append(_renamed(props[top_lh][2][1], "successor margin drop, top head ablated"))
        for lh in shown:
            if lh in props:
                more += [props[lh][1][1], props[lh][2][1]]
        mean_margin = margins.mean(-1).numpy()
        top_de = np.argsort(-mean_margin, axis=None, kind="stable")[:3]
        note = (f"in-context: {len(ps)} prompts of {context} members ({', '.join(sorted(set(ps.meta['class'])))}); "
                "largest successor DE margin: " + ", ".join(
                    f"{_head(*divmod(int(i), nh))} {mean_margin.flat[int(i)]:+.3f}" for i in top_de))
    else:
        note = f"in-context: none ({no_prompts})"
    per_class = {c: float(hits[best][[i for i, x in enumerate(labels) if x == c]].double().mean())
                 for c in dict.fromkeys(labels)}
    table = ["  head    score  (pairs: %d)" % len(labels)]
    for i in order[:5]:
        l, h = divmod(int(i), nh)
        table.append(f"  {_head(l, h):7s} {scores[l, h]:.3f}")
    for lh, ms in props.items():
        table.append(f"  {_head(*lh)}: " + "; ".join(
            f"{what} {m.mean:.3g} [{m.lower:.3g}, {m.upper:.3g}] {'ok' if m.lower > t else 'FAILS'} (> {t:g})"
            for what, m, t in ms))
    details = "\n".join(table + [f"  {_head(*best)} per sequence: "
                                 + ", ".join(f"{c} {v:.2f}" for c, v in per_class.items()),
                                 "  " + note] + ["  " + x for x in o.report().splitlines()])
    verdict: dict[str, Any] = {"found": bool(found_heads)}
    if not found_heads and possible:
        verdict.update(undecided=True, reason="; ".join(
            f"{_head(*lh)} could be a successor head: " + ", ".join(
                f"{what} {m.mean:.3g} [{m.lower:.3g}, {m.upper:.3g}] vs {t:g}" for what, m, t in props[lh]
                if not m.lower > t) for lh in possible[:3]))
    return Detection(check="successor", title=SUCCESSOR_TITLE, source=SUCCESSOR_SOURCE, model=name, **verdict,
                     criterion=(f"a head whose succession score (successor ranked strictly first by its OV "
                                f"circuit among its sequence's members, over {len(labels)} pairs) has a 95% "
                                f"lower bound > {min_score}, whose direct effect in context raises the successor "
                                f"over the other members by a lower bound > {min_margin:g} logit, and whose "
                                f"zero-ablation lowers the model's margin for the successor by a lower bound > "
                                f"{min_margin:g}; absent when no head passes all three on the upper bounds"),
                     measurements=tuple(measurements + behaviour), more=tuple(more),
                     components=tuple((_head(*lh), float(scores[lh])) for lh in found_heads),
                     heatmaps=heatmaps, details=details)


def _renamed(m: Measurement, name: str) -> Measurement:
    """``m`` under another name (the same values and interval), recorded for the running claim."""
    import dataclasses

    from ..measurement import record

    return record(dataclasses.replace(m, name=name))


# --------------------------------------------------------------------------- copy suppression
def ordinary_tokens(model: Any, n: int, *, seed: int = 0) -> list[int]:
    """Up to ``n`` seeded token ids whose text is alphabetic (spaces aside), that are not
    special tokens and that encode back to themselves alone; in sampled order. (Copy
    suppression samples with :func:`token_sample`, which a vocabulary without alphabetic
    tokens can fill.)"""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CircuitsError(bad("n", n, "an int >= 1"))
    tok = model.tokenizer
    special = {int(i) for i in (getattr(tok, "all_special_ids", None) or ())}
    for attr in ("unk_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(getattr(tok, attr, None), int):
            special.add(int(getattr(tok, attr)))
    V = min(int(model.cfg.d_vocab), len(tok))
    order = list(range(V))
    random.Random(seed).shuffle(order)
    out: list[int] = []
    for tid in order:
        if tid in special:
            continue
        text = tok.decode([tid])
        if not text.strip().isalpha():
            continue
        if [int(x) for x in tok.encode(text, add_special_tokens=False)] != [tid]:
            continue
        out.append(tid)
        if len(out) == n:
            break
    return out


def token_sample(model: Any, n: int, *, seed: int = 0) -> list[int]:
    """Up to ``n`` seeded token ids (in sampled order) from the ordinary tokens of
    :func:`pytest_circuits.tasks.induction.ordinary_tokens` (a letter or digit, text that
    encodes back to the one id; the middle of a large vocabulary), or from every token that is
    not special when there are fewer than ``n`` of those and more of these (a vocabulary of
    codes or bytes: the OV circuit is measured on ids, their text does not matter)."""
    from ..tasks import induction as T

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CircuitsError(bad("n", n, "an int >= 1"))
    pool = list(T.ordinary_tokens(model))
    if len(pool) < n:
        more = list(T.nonspecial_tokens(model))
        pool = more if len(more) > len(pool) else pool
    return random.Random(seed).sample(pool, min(n, len(pool)))


def self_scores(model: Any, token_ids: Sequence[int], *, k: int = 5,
                activations: ActivationStore | None = None) -> tuple[Any, Any]:
    """``(suppressed, copied)``, each ``[n_layers, n_heads, n]`` bool: whether each token's own
    OV logit is among the ``k`` lowest (highest) of the tokens' OV logits, ties counted
    against (``#{u != t: OV[t, u] <= OV[t, t]} < k``, resp. ``>=``)."""
    import torch

    ids = _check_ids(model, token_ids, "token_ids")
    if len(set(ids)) != len(ids):
        raise CircuitsError(bad("token_ids", "repeated ids", "distinct token ids"))
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < len(ids):
        raise CircuitsError(bad("k", k, f"an int in 1..{len(ids) - 1} (fewer than the {len(ids)} tokens)"))
    E = effective_embedding(model, ids, activations=activations)
    w, _ = _unembed_dirs(model, torch.tensor(ids))
    eye = torch.eye(len(ids), dtype=torch.bool)
    sup, cop = [], []
    for l in range(int(model.cfg.n_layers)):
        lg = _layer_outputs(model, l, _normed(model, l, E)) @ w.T       # [H, n, n]
        own = lg.diagonal(dim1=1, dim2=2).unsqueeze(-1)                 # [H, n, 1]
        below = ((lg <= own) & ~eye).sum(-1)
        above = ((lg >= own) & ~eye).sum(-1)
        sup.append(below < k)
        cop.append(above < k)
    return torch.stack(sup), torch.stack(cop)


def detect_copy_suppression(model: Any, *, seed: int = 0, n: int = 32, length: int = 20,
                            activations: ActivationStore | None = None, prompts: Any = None, n_tokens: int = 200,
                            k: int = 5, min_proportion: float = 0.5, threshold: float | None = None,
                            min_effect: float | None = None, min_tokens: int = 8, min_prompts: int = 8,
                            ablation: str = "mean", top: int = 3) -> Detection:
    """Copy-suppression heads (check ``"copy_suppression"``; McDougall et al. 2023,
    arXiv:2310.04625): "if components in earlier layers predict a token, and this token appears
    earlier in the context, the head suppresses it". A copy-suppression head has every one of
    these properties, each on a 95% interval bound:

    1. **attention to the predicted token's copy**: on ``n`` repeated random sequences (the
       prompts of :func:`pytest_circuits.techniques.heads.prompt_set`, shared with the
       induction check), at each position of the second copy where the model predicts the next
       token (probability above 1/2), the head attends to that token's earlier copy: its share
       of the attention not parked on the first position has a lower bound above ``threshold``
       (0.5) and its attention there is above uniform (:mod:`~pytest_circuits.techniques.heads`:
       the same measurements as the induction pattern, on the positions with a prediction);
    2. **suppression through that attention**: its direct effect on the token, through the
       attention on the copy, has an upper bound below ``-min_effect`` (-1e-4 nats); a head
       with the attention that raises the token is an *amplifier* (it copies: an induction
       head), reported, never located;
    3. **OV self-suppression**: over ``n_tokens`` (200) sampled tokens
       (:func:`token_sample`), the proportion whose own OV logit is among the ``k`` (5; at most
       a quarter of a smaller sample) lowest of the sample's has a lower bound above
       ``min_proportion`` (0.5): the head suppresses whatever token it attends to, not just
       these (chance ``k/n_tokens``);
    4. ``ablation``-ablating it alone does not raise the loss on the second copy (a lower
       bound above 0 means it helps predict the repeated token: an amplifier, not located).

    **Found** when some head has all four. A head with negative OV that attends by position
    (to the previous token, to itself) or uniformly lacks (1); one whose output nothing reads,
    or raises the token, lacks (2). **Absent** when no head could have (1)-(3) even on the
    optimistic (upper) bounds (a head ruled out by (4) stays out); **undecided** otherwise,
    with the reason (the head and the interval that straddles its limit). When the model
    predicts the next token on fewer than ``min_prompts`` (8) of the sequences there are too
    few predicted positions to measure (1) and (2): absent when no head has (3) on its upper
    bound (no head's OV circuit suppresses tokens), else not applicable: the model lacks the
    in-context predictions the mechanism acts on (the reason says so and names the heads whose
    OV circuit could suppress).
    Not applicable when the model's context or vocabulary cannot hold the repeated sequences,
    or the vocabulary has fewer than ``min_tokens`` (8) tokens that are not special to sample
    (the reason says which).

    Headline measurements (names that do not depend on the head, for the checkup's baselines):
    ``copy suppression OV (top head)``, ``predicted-copy share (top head)``, ``predicted-copy
    effect on the attended token (top head)``; per head in ``more`` (also through
    ``measurement(name)``), the same with ``L{l}H{h}`` for up to ``top`` found heads (the head
    most like one when none is). Heatmaps: ``OV self-suppression``, ``OV self-copying``,
    ``predicted-copy share``, ``predicted-copy effect on the attended token``.

    On SmolLM2-135M: see claims/smollm2/test_successor_copy.py.
    """
    from . import heads as HD

    threshold = HD.THRESHOLD if threshold is None else threshold
    min_effect = HD.MIN_EFFECT if min_effect is None else min_effect
    _check_detector_args(n=n, top=top, min_prompts=min_prompts)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 2:
        raise CircuitsError(bad("n_tokens", n_tokens, "an int >= 2"))
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 2:
        raise CircuitsError(bad("min_tokens", min_tokens, "an int >= 2"))
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CircuitsError(bad("k", k, "an int >= 1"))
    for what, v in (("min_proportion", min_proportion), ("threshold", threshold)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
            raise CircuitsError(bad(what, v, "a proportion in [0, 1)"))
    if isinstance(min_effect, bool) or not isinstance(min_effect, (int, float)) or not float(min_effect) >= 0:
        raise CircuitsError(bad("min_effect", min_effect, "a number >= 0 (nats)"))
    import numpy as np

    name = _name(model)
    arch = head_write_problem(model)
    if arch is not None:
        return Detection.not_applicable("copy_suppression", COPY_TITLE, arch, source=COPY_SOURCE, model=name)
    ps, reason, note = HD.prompt_set(model, prompts, n=n, length=length, seed=seed)
    if ps is None:
        return Detection.not_applicable("copy_suppression", COPY_TITLE, reason, source=COPY_SOURCE, model=name)
    pool = token_sample(model, n_tokens, seed=seed)
    if len(pool) < min_tokens:
        return Detection.not_applicable(
            "copy_suppression", COPY_TITLE, f"the vocabulary has {len(pool)} tokens that are not special to sample "
            f"OV circuits on; the check needs at least {min_tokens}", source=COPY_SOURCE, model=name)
    k = min(k, max(1, len(pool) // 4))              # a small vocabulary: bottom quarter at most (chance <= 25%)
    store = resolve(activations)
    ev = HD.head_evidence(model, ps, activations=store)["copy_suppression"]
    sup, cop = self_scores(model, pool, k=k, activations=store)
    sup_p, cop_p = sup.double().mean(-1).numpy(), cop.double().mean(-1).numpy()
    heat = {"OV self-suppression": sup_p, "OV self-copying": cop_p,
            ev.name("share"): ev.quantity("share").grid(), ev.name("effect"): ev.quantity("effect").grid()}
    counted = len(ev.rows)
    criterion = (f"a head that (1) at each repeated token where the model predicts the next token (probability "
                 f"> 1/2; {len(ps)} sequences of {HD._periods(ps)} random tokens, repeated) attends to that "
                 f"token's earlier copy: share of its attention not on the first position (an attention sink) "
                 f"with 95% lower bound > {threshold}, attention there above uniform; (2) lowers the token's "
                 f"logit through that attention (direct effect upper bound < -{min_effect:g} nats); (3) its OV "
                 f"circuit puts a token's own logit in the bottom {k} of {len(pool)} sampled tokens for a "
                 f"proportion with lower bound > {min_proportion}; (4) {ablation}-ablating it alone does not "
                 f"raise the second-copy loss; absent when no head has (1)-(3) on the optimistic (upper) bounds "
                 f"(with fewer than {min_prompts} sequences where the model predicts a repeated token: when no head "
                 f"has (3) on them, else n/a: the model lacks the predictions the check measures on); undecided "
                 f"otherwise")

    def ov_m(h: Any, record: bool = False) -> Measurement:
        # a proportion: tokens (trials) whose own OV logit is among the k lowest (successes)
        return Measurement.from_values(f"copy suppression OV {h}", sup[h.layer, h.head].double().numpy(), model=name,
                                       record=record, method="clopper-pearson", provenance={"head": str(h)})

    def ov_prop(h: Any) -> Any:
        return HD.Property(ov_m(h), float(min_proportion))

    if counted < min_prompts:
        # Too few predicted positions to measure (1) and (2): only (3), which needs no prediction,
        # can rule a head out. A head whose OV circuit could suppress tokens in general is left
        # undecided; none: absent.
        L, NH = sup.shape[:2]
        could = sorted((h for h in (Head(l, hh) for l in range(L) for hh in range(NH)) if ov_prop(h).could()),
                       key=lambda h: (-float(sup_p[h.layer, h.head]), h.layer, h.head))
        few = (f"the model predicts the next token (probability > 1/2) on a repeated token in only {counted} of "
               f"{len(ps)} sequences (at least {min_prompts} needed)")
        if could:
            # The mechanism acts on the model's own in-context predictions: a model that makes too
            # few of them lacks what the check measures on (n/a, with what it lacks), while some
            # head's OV circuit could still make it copy suppression, so it is not absent either.
            reason = (f"the model makes too few in-context predictions to measure copy suppression on: {few}, so "
                      f"whether a head attends to the predicted token's copy and lowers it cannot be measured "
                      f"(heads whose OV circuit could suppress tokens, upper bound > {min_proportion:g}: "
                      + ", ".join(f"{h} {HD._fmt(ov_m(h))}" for h in could[:3]) + ")")
            why, verdict = f"n/a: {reason}", {"applicable": False, "reason": reason}
        else:
            why = (f"absent: {few}: there is no prediction for a head to suppress, and no head's OV circuit "
                   f"suppresses tokens in general (OV self-suppression upper bound <= {min_proportion:g} for every "
                   "head)")
            verdict = {}
        shown = could[:top] or [Head(*(int(x) for x in np.unravel_index(int(np.argmax(sup_p)), sup_p.shape)))]
        ms = [record(dataclasses.replace(ov_m(shown[0]), name="copy suppression OV (top head)"))]
        return Detection(check="copy_suppression", title=COPY_TITLE, source=COPY_SOURCE, model=name, found=False,
                         **verdict, criterion=criterion, heatmaps=heat, measurements=tuple(ms),
                         more=tuple(ov_m(h) for h in shown),
                         details="\n".join([f"  {why}"] + ([f"  prompts: {note}"] if note else [])))
    verdicts: dict[Any, str] = {}
    candidates, located = [], []
    for h in ev.pattern(threshold):
        e = ev.measure("effect", h)
        if e.upper < -min_effect:
            candidates.append(h)
        elif e.lower > min_effect:
            verdicts[h] = f"amplifier: raises the token it attends to (effect {HD._fmt(e)}): it copies"
        else:
            verdicts[h] = f"attends to the copy, no effect on the token (effect {HD._fmt(e)})"
    singles = {}
    amplifiers = []
    for h in candidates:
        mo = ov_m(h)
        if not mo.lower > min_proportion:
            verdicts[h] = f"suppresses here, but its OV circuit does not suppress tokens in general ({HD._fmt(mo)})"
            continue
        single = HD.ablation_effect(model, ps, [h], kind=ablation, control=False, activations=store, label=str(h))
        singles[h] = single.increase
        if single.increase.lower > 0:
            amplifiers.append(h)
            verdicts[h] = f"amplifier: ablating it raises the second-copy loss ({HD._fmt(single.increase)})"
            continue
        located.append(h)
        verdicts[h] = "copy suppression"
    # Undecided, not absent, when no head is located but one could have (1)-(3) on the
    # optimistic bounds (those ruled out by their own ablation stay out).
    possible = [] if located else HD.possible_heads(
        ev, threshold, lambda h: [HD.Property(ev.measure("effect", h), -float(min_effect), above=False), ov_prop(h)],
        exclude=amplifiers)
    for h, doubts in possible:
        verdicts[h] = "could be one: " + "; ".join(doubts)
    if located:
        top_h = located[0]
    elif possible:
        top_h = possible[0][0]
    else:
        # the head most like one: among heads that lower the attended token, the largest share
        share, eff = ev.quantity("share").grid(), ev.quantity("effect").grid()
        grid = np.where(eff < 0, share, -np.inf)
        if not np.isfinite(grid).any():
            grid = -eff
        l, hh = np.unravel_index(int(np.nanargmax(grid)), grid.shape)
        top_h = Head(int(l), int(hh))

    def headline(m: Measurement, base: str) -> Measurement:
        # the same values and interval (a proportion stays a proportion) under a head-free name
        return record(dataclasses.replace(m, name=f"{base} (top head)",
                                          provenance={**m.provenance, "head": str(top_h)}))

    measurements = [headline(ov_m(top_h), "copy suppression OV"),
                    headline(ev.measure("share", top_h), ev.name("share")),
                    headline(ev.measure("effect", top_h), ev.name("effect"))]
    shown = located[:top] or [top_h]
    more = [m for h in shown for m in (ov_m(h), ev.measure("share", h), ev.measure("effect", h))]
    reason = ""
    if located:
        why = f"found: {', '.join(map(str, located))}"
    elif possible:
        reason = HD._undecided_reason(possible, "a copy-suppression head")
        why = f"undecided: {reason}"
    else:
        why = "; ".join([f"absent: most like one: {top_h}, share {HD._fmt(ev.measure('share', top_h))}, effect "
                         f"{HD._fmt(ev.measure('effect', top_h))}, OV self-suppression {HD._fmt(ov_m(top_h))}"]
                        + [f"{h}: {v}" for h, v in verdicts.items()])
    rows = [f"  {why}", f"  positions with a prediction: in {counted} of {len(ps)} sequences",
            "  head    OV-suppr OV-copy   share  above-unif    effect  verdict"]
    g_share, g_above, g_eff = ev.quantity("share").grid(), ev.quantity("above").grid(), ev.quantity("effect").grid()
    listed = list(dict.fromkeys(located + [h for h, _ in possible] + list(verdicts) + [top_h]))
    order = sorted(((float(g_share[l, h]), l, h) for l in range(g_share.shape[0]) for h in range(g_share.shape[1])
                    if g_eff[l, h] < 0), reverse=True)
    listed = list(dict.fromkeys(listed + [Head(l, h) for _, l, h in order]))[:8]
    for h in listed:
        l, hh = h.layer, h.head
        rows.append(f"  {str(h):7s} {sup_p[l, hh]:8.3f} {cop_p[l, hh]:7.3f} {g_share[l, hh]:7.3f} {g_above[l, hh]:+10.3f} "
                    f"{g_eff[l, hh]:+9.4f}  {verdicts.get(h, '')}")
    for h, m in singles.items():
        rows.append(f"  {ablation}-ablating {h} alone: second-copy loss {HD._fmt(m)}")
    if note:
        rows.append(f"  prompts: {note}")
    return Detection(check="copy_suppression", title=COPY_TITLE, source=COPY_SOURCE, model=name,
                     found=bool(located), undecided=bool(reason), reason=reason, criterion=criterion,
                     measurements=tuple(measurements), more=tuple(more),
                     components=tuple((str(h), float(g_share[h.layer, h.head])) for h in located),
                     heatmaps=heat, details="\n".join(rows))


def _check_detector_args(**kw: Any) -> None:
    for key, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CircuitsError(bad(key, v, "an int >= 1"))
