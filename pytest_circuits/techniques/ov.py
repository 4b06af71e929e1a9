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

**Copy suppression** (McDougall et al. 2023): a head whose OV circuit maps a token to a
negative logit on itself, and which lowers the logits of tokens earlier in the context
that it attends to. Two measurements per head:

* *OV self-suppression*: over a seeded sample of ``n_tokens`` ordinary alphabetic tokens
  of the vocabulary, the proportion whose own OV logit is among the ``k`` lowest of the
  sample's (pessimistic ties: ``#{u != t: OV[t, u] <= OV[t, t]} < k``; chance ``k/n_tokens``).
  The opposite, *self-copying* (own logit among the ``k`` highest, ties against), is
  reported beside it: a copying head (OV ~ +identity) is self-copying, never suppressing.
* *Attended-token direct effect*: on ``n`` seeded prompts ``[BOS] r_1..r_L r_1..r_j``
  (``L`` distinct sample tokens repeated, cut at a random ``j``: the next token is in the
  context, the setting where induction heads copy it and copy-suppression heads push it
  down), at the last position, the head's direct effect ``z_h W_O[l, h] . w_u / s`` on the
  token ``u`` at the earlier position (not BOS, not the last) it attends to most (ties:
  the earliest), with ``w_u`` the centred unembedding and ``s`` the final norm's scale
  (:mod:`~pytest_circuits.techniques.effects`'s direct effect).

Both detectors decide ``found`` on interval bounds; the thresholds are keyword arguments
and their defaults are justified in each detector's docstring. The ``heatmaps`` hold every
head's score; intervals are computed for the heads whose mean could pass (a mean at or
under a lower-bound threshold cannot), so a 30 x 9 model costs few bootstraps.

Measured on the planted models (``tests/data/planted/ordinal`` and ``ordinal_control``,
:mod:`pytest_circuits.planted`): see :func:`detect_successor` and
:func:`detect_copy_suppression`.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from .. import hooks as H
from ..detection import Detection
from ..errors import CircuitsError, PromptSetError, bad
from ..devices import to_device_of
from ..measurement import Measurement
from ..models import derived, info as model_info
from ..prompts import PromptSet
from ..store import ActivationStore, resolve
from ..tasks.ordinal import Ordinals, ordinals, successor_prompts
from .effects import _unembed_dirs, attn_output_weights, head_write_problem

SUCCESSOR_SOURCE = "Gould et al. 2023, arXiv:2312.09230"
COPY_SOURCE = "McDougall et al. 2023, arXiv:2310.04625"
SUCCESSOR_TITLE = "successor heads (OV circuit maps an ordinal token to its successor)"
COPY_TITLE = "copy suppression (OV circuit lowers a token's own logit; lowers attended context tokens)"


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


def detect_successor(model: Any, *, seed: int = 0, n: int = 100, activations: ActivationStore | None = None,
                     min_score: float = 0.5, min_pairs: int = 20, min_classes: int = 2,
                     context: int = 3, top: int = 3) -> Detection:
    """Successor heads (check ``"successor"``): heads whose OV circuit maps an ordinal token
    to its successor (Gould et al. 2023, arXiv:2312.09230).

    ``found``: some head's succession score (module docstring) has its 95% interval's
    lower bound above ``min_score`` (0.5: the head ranks the successor first, among the
    members of its sequence, for most pairs; chance is 1/(sequence length), 0.04-0.14, so
    0.5 is far above it; a copying head scores ~0). Not applicable when the tokenizer has
    fewer than ``min_pairs`` (20) single-token pairs from at least ``min_classes`` (2)
    sequences: the paper's claim is a head that increments across sequences, and at 20
    pairs a perfect head's Clopper-Pearson lower bound (0.83) is well clear of 0.5.
    The head with the highest score among 30 x 9 is selected on the same pairs it is
    measured on; the threshold's distance from chance is what keeps that honest.

    Measurements (the headlines, under names that do not depend on the head, so that the
    checkup's baselines compare them across checkpoints): ``succession score (top head)``
    (the best found head, else the best head), ``in-context successor accuracy`` and
    ``successor DE margin (top head)``. Per head, in ``more`` (also through
    ``measurement(name)``): ``succession score L{l}H{h}`` for up to ``top`` found heads (the best
    head when none is found); ``in-context successor accuracy`` (the model's top-1 among the
    sequence's members after ``context`` consecutive members, up to ``n`` seeded prompts,
    where the tokenizer gives any) and ``successor DE margin L{l}H{h}`` of the best head
    there (its direct effect on the successor minus its mean on the other members).
    Heatmap ``succession score``. ``seed``/``n`` pick the in-context prompts only.

    Planted (tests/data/planted, measured by tests/unit/test_ov_heads.py): ``ordinal``'s
    successor head L1H0 scores 1 [0.929, 1] on its 50 pairs, every other head 0 (in-context
    accuracy 0 [0, 0.0925] on 38 prompts: its successor head attends uniformly, so the answer ties
    with the successors of the other members in context, and a tie is not correct; L1H0's DE
    margin 0.109 [0.106, 0.111]);
    ``ordinal_control`` (a predecessor head and copying heads) scores 0 everywhere: not found.
    SmolLM2-135M (2026-11-26, ~7 s): not found; 91 pairs from 8 sequences, best L23H3
    0.176 [0.104, 0.27] (0.62 on the digits 1-9, <= 0.33 elsewhere), next L28H6 0.143;
    the model itself continues the comma lists (in-context accuracy 0.76 [0.647, 0.851],
    75 prompts), the largest direct-effect margins there being L29H1 +0.51 and L23H3 +0.34
    (a copy-suppression head, which lowers the members already in the list).
    """
    import numpy as np

    _check_detector_args(n=n, top=top, min_pairs=min_pairs, min_classes=min_classes, context=context)
    if not 0.0 <= float(min_score) < 1.0:
        raise CircuitsError(bad("min_score", min_score, "a proportion in [0, 1)"))
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
    found_heads: list[tuple[str, float, Measurement]] = []
    for l, h in zip(*map(lambda a: a.tolist(), np.nonzero(scores > min_score))):
        m = Measurement.from_values(f"succession score {_head(l, h)}", hits[l, h].double().numpy(), model=name,
                                    record=False)
        if m.lower > min_score:
            found_heads.append((_head(l, h), float(scores[l, h]), (l, h)))
    found_heads.sort(key=lambda x: -x[1])
    order = np.argsort(-scores, axis=None, kind="stable")
    best = divmod(int(order[0]), scores.shape[1])
    # The headline is the top head's score under a name that does not depend on which head it is
    # (the checkup's baselines compare it across checkpoints); the head is named in the components
    # and the details.
    top_lh = found_heads[0][2] if found_heads else best
    measurements = [Measurement.from_values("succession score (top head)", hits[top_lh].double().numpy(),
                                            model=name, provenance={"head": _head(*top_lh)})]
    shown = [lh for _, _, lh in found_heads[:top]] or [best]
    more = [Measurement.from_values(f"succession score {_head(*lh)}", hits[lh].double().numpy(), model=name)
            for lh in shown]
    behaviour: list[Measurement] = []
    heatmaps = {"succession score": scores}
    try:
        ps = successor_prompts(model, o, context=context, n=n, seed=seed, name="successor:in-context")
    except PromptSetError as e:
        note = f"in-context: none ({e})"
    else:
        correct, margins = successor_margins(model, o, ps, activations=store)
        mean_margin = margins.mean(-1).numpy()
        heatmaps["in-context successor DE margin"] = mean_margin
        behaviour = [Measurement.from_values("in-context successor accuracy", correct.numpy(), model=name),
                     Measurement.from_values("successor DE margin (top head)", margins[top_lh].numpy(),
                                             model=name, method="bootstrap-t",
                                             provenance={"head": _head(*top_lh)})]
        more.append(Measurement.from_values(f"successor DE margin {_head(*top_lh)}", margins[top_lh].numpy(),
                                            model=name, method="bootstrap-t"))
        top_de = np.argsort(-mean_margin, axis=None, kind="stable")[:3]
        note = (f"in-context: {len(ps)} prompts of {context} members ({', '.join(sorted(set(ps.meta['class'])))}); "
                "largest successor DE margin: " + ", ".join(
                    f"{_head(*divmod(int(i), scores.shape[1]))} {mean_margin.flat[int(i)]:+.3f}" for i in top_de))
    per_class = {c: float(hits[best][[i for i, x in enumerate(labels) if x == c]].double().mean())
                 for c in dict.fromkeys(labels)}
    table = ["  head    score  (pairs: %d)" % len(labels)]
    for i in order[:5]:
        l, h = divmod(int(i), scores.shape[1])
        table.append(f"  {_head(l, h):7s} {scores[l, h]:.3f}")
    details = "\n".join(table + [f"  {_head(*best)} per sequence: "
                                 + ", ".join(f"{c} {v:.2f}" for c, v in per_class.items()),
                                 "  " + note] + ["  " + x for x in o.report().splitlines()])
    return Detection(check="successor", title=SUCCESSOR_TITLE, source=SUCCESSOR_SOURCE, model=name,
                     found=bool(found_heads),
                     criterion=(f"a head whose succession score (successor ranked strictly first by its OV "
                                f"circuit among its sequence's members, over {len(labels)} pairs) has a 95% "
                                f"lower bound > {min_score}"),
                     measurements=tuple(measurements + behaviour), more=tuple(more),
                     components=tuple((c, s) for c, s, _ in found_heads),
                     heatmaps=heatmaps, details=details)


# --------------------------------------------------------------------------- copy suppression
def ordinary_tokens(model: Any, n: int, *, seed: int = 0) -> list[int]:
    """Up to ``n`` seeded token ids whose text is alphabetic (spaces aside), that are not
    special tokens and that encode back to themselves alone; in sampled order."""
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


def repeated_prompts(model: Any, pool: Sequence[int], *, n: int, length: int = 10, seed: int = 0,
                     name: str = "copy-suppression:repeated") -> PromptSet:
    """``n`` seeded prompts ``[BOS] r_1..r_L r_1..r_j`` of ``L = length`` distinct tokens from
    ``pool`` and ``j`` uniform in 1..L-1 (the next token, ``r_{j+1}``, is in the context).
    ``meta["first"]``: the first position that is not BOS."""
    import torch

    pool = _check_ids(model, pool, "pool")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CircuitsError(bad("n", n, "an int >= 1"))
    if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= len(set(pool)):
        raise CircuitsError(bad("length", length, f"an int in 2..{len(set(pool))} (distinct tokens in the pool)"))
    rng = random.Random(seed)
    distinct = sorted(set(pool))
    bos = model.tokenizer.bos_token_id
    rows = []
    for _ in range(n):
        seq = rng.sample(distinct, length)
        j = rng.randint(1, length - 1)
        rows.append(([int(bos)] if bos is not None else []) + seq + seq[:j])
    if max(len(r) for r in rows) > int(model.cfg.n_ctx):
        raise CircuitsError(bad("length", length, f"prompts of at most n_ctx={model.cfg.n_ctx} tokens"))
    pad = _pad_id(model)
    width = max(len(r) for r in rows)
    tokens = torch.full((n, width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(r)
    first = 1 if bos is not None else 0
    return PromptSet(name=name, prompts=tuple(model.tokenizer.decode(r[first:]) for r in rows), tokens=tokens,
                     lengths=tuple(len(r) for r in rows), pad_id=pad, meta={"first": (first,) * n})


def attended_token_effects(model: Any, prompts: PromptSet, *, first: int | None = None,
                           activations: ActivationStore | None = None) -> tuple[Any, Any, Any]:
    """At each prompt's last position, for every head: its direct effect on the token at
    the position it attends to most among ``first``..last-1 (ties: the earliest), that
    token, and the attention there: three ``[n_layers, n_heads, n]`` tensors (float64,
    long, float64). ``first`` defaults to ``prompts.meta["first"]`` or 1 (after BOS)."""
    import torch

    if first is None:
        first = int(prompts.meta["first"][0]) if "first" in prompts.meta else 1
    last = prompts.last
    if int(last.min()) < first + 1:
        raise CircuitsError(bad("prompts", prompts, f"prompts with an earlier position >= {first} "
                                "before the last"))
    store = resolve(activations)
    L = int(model.cfg.n_layers)
    names = [H.last(H.pattern(l)) for l in range(L)] + [H.last(H.z(l)) for l in range(L)] + [H.last(H.FINAL_SCALE)]
    acts = store.get(model, prompts, names)
    scale = acts[H.last(H.FINAL_SCALE)].double().reshape(-1)
    n = len(prompts)
    pos = torch.arange(prompts.tokens.shape[1])
    allowed = (pos.unsqueeze(0) >= first) & (pos.unsqueeze(0) < last.unsqueeze(1))   # [n, width]
    W_O = attn_output_weights(model)
    rows = torch.arange(n)
    des, toks, wts = [], [], []
    for l in range(L):
        pat = acts[H.last(H.pattern(l))].double()[..., :pos.shape[0]]                     # [n, H, width]
        masked = pat.masked_fill(~allowed.unsqueeze(1), -1.0)
        at = masked.argmax(-1)                                                            # [n, H]
        tok = prompts.tokens[rows.unsqueeze(1), at]                                       # [n, H]
        out = torch.einsum("nhe,hed->nhd", acts[H.last(H.z(l))].double(), W_O[l])         # [n, H, d]
        uniq, inv = torch.unique(tok, return_inverse=True)
        w, _ = _unembed_dirs(model, uniq)                                                 # [u, d]
        de = (out * w[inv]).sum(-1) / scale.unsqueeze(1)
        des.append(de.T)
        toks.append(tok.T)
        wts.append(pat.gather(-1, at.unsqueeze(-1)).squeeze(-1).T)
    return torch.stack(des), torch.stack(toks), torch.stack(wts)


def detect_copy_suppression(model: Any, *, seed: int = 0, n: int = 60, activations: ActivationStore | None = None,
                            n_tokens: int = 200, k: int = 5, min_proportion: float = 0.5,
                            max_effect: float = 0.0, length: int = 10, min_tokens: int = 20,
                            top: int = 3) -> Detection:
    """Copy-suppression heads (check ``"copy_suppression"``; McDougall et al. 2023,
    arXiv:2310.04625).

    ``found``: some head has both (module docstring for the measurements)

    * OV self-suppression over ``n_tokens`` (200) sampled tokens, bottom-``k`` (5), with a
      95% lower bound above ``min_proportion`` (0.5): for most tokens the head's OV
      circuit puts the token's own logit among the lowest (chance ``k/n_tokens`` = 2.5%;
      the paper's head L10H7 of GPT-2 small is described as suppressing most tokens this
      way); a copying head (own logit among the highest) cannot pass it;
    * an attended-token direct effect with a 95% upper bound below ``max_effect`` (0: a
      sign test) on ``n`` (60) repeated-sequence prompts of ``length`` (10) tokens: in a
      real forward the head lowers the logit of the earlier token it attends to.

    Not applicable when the vocabulary has fewer than ``min_tokens`` (20) ordinary
    alphabetic tokens. Headline measurements: ``copy suppression OV (top head)`` and
    ``attended-token DE (top head)`` (names that do not depend on the head, for the checkup's
    baselines). Per head, in ``more`` (also through ``measurement(name)``): ``copy suppression
    OV L{l}H{h}`` and ``attended-token DE L{l}H{h}`` for up to ``top`` found heads (the head with the highest OV
    self-suppression when none is found). Heatmaps: ``OV self-suppression``, ``OV
    self-copying``, ``attended-token DE``.

    Planted (measured by tests/unit/test_ov_heads.py): ``ordinal``'s copy-suppression
    head L1H1 has OV self-suppression 1 [0.927, 1] on the 49 alphabetic tokens of its
    vocabulary and attended-token DE -0.117 [-0.123, -0.111] on 60 prompts; its copying
    head L1H2 is self-copying (1) with DE +0.117: not reported; every other head 0.
    ``ordinal_control`` (copying heads L1H0-L1H2: self-copying 1, DE +0.111; a predecessor
    head L1H3): self-suppression 0 everywhere, nothing found. SmolLM2-135M (2026-11-26,
    defaults, ~10 s on a loaded 2-core CPU): found, L24H4 0.92 [0.873, 0.954] with DE
    -0.295 [-0.407, -0.207] and L23H3 0.915 [0.867, 0.95] with DE -0.151 [-0.19, -0.115];
    next L29H6 at 0.49 (claims/smollm2/test_successor_copy.py).
    """
    _check_detector_args(n=n, top=top, min_pairs=1, min_classes=1, context=1)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 2:
        raise CircuitsError(bad("n_tokens", n_tokens, "an int >= 2"))
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 2:
        raise CircuitsError(bad("min_tokens", min_tokens, "an int >= 2"))
    if not 0.0 <= float(min_proportion) < 1.0:
        raise CircuitsError(bad("min_proportion", min_proportion, "a proportion in [0, 1)"))
    import numpy as np

    name = _name(model)
    arch = head_write_problem(model)
    if arch is not None:
        return Detection.not_applicable("copy_suppression", COPY_TITLE, arch, source=COPY_SOURCE, model=name)
    pool = ordinary_tokens(model, n_tokens, seed=seed)
    if len(pool) < min_tokens or len(pool) <= k:
        return Detection.not_applicable(
            "copy_suppression", COPY_TITLE, f"the vocabulary has {len(pool)} ordinary alphabetic tokens; the "
            f"check needs at least {max(min_tokens, k + 1)}", source=COPY_SOURCE, model=name)
    store = resolve(activations)
    sup, cop = self_scores(model, pool, k=k, activations=store)
    ps = repeated_prompts(model, pool, n=n, length=min(length, len(pool)), seed=seed)
    de, _, _ = attended_token_effects(model, ps, activations=store)
    sup_p = sup.double().mean(-1).numpy()
    cop_p = cop.double().mean(-1).numpy()
    de_m = de.mean(-1).numpy()
    def pair(l: int, h: int, record: bool = True) -> tuple[Measurement, Measurement]:
        return (Measurement.from_values(f"copy suppression OV {_head(l, h)}", sup[l, h].double().numpy(),
                                        model=name, record=record),
                Measurement.from_values(f"attended-token DE {_head(l, h)}", de[l, h].numpy(), model=name,
                                        record=record, method="bootstrap-t"))

    found_heads: list[tuple[str, float, tuple[int, int]]] = []
    for l, h in zip(*map(lambda a: a.tolist(), np.nonzero((sup_p > min_proportion) & (de_m < max_effect)))):
        mo, md = pair(l, h, record=False)
        if mo.lower > min_proportion and md.upper < max_effect:
            found_heads.append((_head(l, h), float(sup_p[l, h]), (l, h)))
    found_heads.sort(key=lambda x: -x[1])
    # best first: OV self-suppression, then the most negative attended-token DE
    order = np.lexsort((de_m.reshape(-1), -sup_p.reshape(-1)))
    # Headlines under names that do not depend on which head is on top (the checkup's baselines
    # compare them across checkpoints); the head is named in the components and the details.
    top_lh = found_heads[0][2] if found_heads else divmod(int(order[0]), sup_p.shape[1])
    measurements = [Measurement.from_values("copy suppression OV (top head)", sup[top_lh].double().numpy(),
                                            model=name, provenance={"head": _head(*top_lh)}),
                    Measurement.from_values("attended-token DE (top head)", de[top_lh].numpy(), model=name,
                                            method="bootstrap-t", provenance={"head": _head(*top_lh)})]
    table_head = f"  top head: {_head(*top_lh)}"
    shown = [lh for _, _, lh in found_heads[:top]] or [top_lh]
    more = [m for lh in shown for m in pair(*lh)]
    table = [f"  head    OV-suppr OV-copy  DE(attended)   ({len(pool)} tokens, bottom/top {k}; {n} prompts)"]
    for i in order[:5]:
        l, h = divmod(int(i), sup_p.shape[1])
        table.append(f"  {_head(l, h):7s} {sup_p[l, h]:8.3f} {cop_p[l, h]:7.3f} {de_m[l, h]:+12.4f}")
    return Detection(check="copy_suppression", title=COPY_TITLE, source=COPY_SOURCE, model=name,
                     found=bool(found_heads),
                     criterion=(f"a head whose OV circuit puts a token's own logit in the bottom {k} of "
                                f"{len(pool)} sampled tokens for a proportion with 95% lower bound > "
                                f"{min_proportion}, and whose direct effect on the earlier token it attends to "
                                f"(repeated sequences) has 95% upper bound < {max_effect}"),
                     measurements=tuple(measurements), more=tuple(more),
                     components=tuple((c, s) for c, s, _ in found_heads),
                     heatmaps={"OV self-suppression": sup_p, "OV self-copying": cop_p, "attended-token DE": de_m},
                     details="\n".join([table_head] + table))


def _check_detector_args(**kw: Any) -> None:
    for key, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CircuitsError(bad(key, v, "an int >= 1"))
