"""Attention-head kinds on repeated random tokens: induction, previous-token, duplicate-token
(and, read by :func:`pytest_circuits.techniques.ov.detect_copy_suppression`, copy-suppression)
heads, and the in-context learning they do (Olsson et al. 2022, "In-context Learning and
Induction Heads", arXiv:2209.11895; Wang et al. 2022, arXiv:2211.00593; McDougall et al. 2023,
arXiv:2310.04625).

**Prompts**: :func:`pytest_circuits.tasks.induction.repeated_tokens`, ``[BOS, r_1..r_T,
r_1..r_T]`` with ``r_1`` at position ``s`` (``meta["start"]``) and period ``T``
(``meta["period"]``); the detectors vary ``T`` from prompt to prompt (filler before the first
copy), fitted to the model's context and vocabulary (:func:`prompt_set`). The second copy's
positions are ``Q = {s+T, ..., s+2T-1}``: the token at ``i`` in ``Q`` occurred before at ``i-T``.

**Targets**, per query position ``i``: induction ``i-T+1`` (the token *after* the current
token's earlier occurrence: the token an induction head copies, and the next token);
duplicate-token ``i-T`` (the earlier copy of the current token); previous-token ``i-1``, over
every position after ``r_1`` in both copies; copy suppression ``i-T+1`` at the positions
``i in Q`` (``i < s+2T-1``) where the model *predicts* the next token (probability above 1/2,
from ``hooks.TOKEN_LOSS``): the earlier copy of the token the model currently predicts.

**Measurements**, per prompt and head (means over the prompt's query positions; ``A`` is the
head's attention pattern, ``v`` its value vectors, ``W_O`` its output matrix):

* *score* ``A(i, t)``: the attention on the target (Olsson's induction score);
* *share* ``A(i, t) / sum_{j >= 1} A(i, j)``: the target's share of the attention that is
  not on the first position. Real heads park attention on the first position (BOS) when
  they have nothing to do, an *attention sink*; the share is what the head does with the
  rest, so a head that puts 55% on BOS and 45% on the target has share ~1;
* *above uniform* ``A(i, t) - 1/(i+1)``: the attention on the target beyond what uniform
  attention would give. A head parked entirely on the sink whose few remaining 1e-12 fall
  on the target has share ~1 but nothing above uniform: it does not attend there;
* *effect* (induction, copy suppression): the head's direct effect, through its attention
  to the target, on the logit of the token there,
  ``A(i, t) (v_t W_O) . w_u / s_i`` with ``u`` the token at ``t``, ``w_u`` the centred
  unembedding and ``s_i`` the final norm's scale (:mod:`~pytest_circuits.techniques.effects`):
  positive for a head that copies the token (induction), negative for one that suppresses it;
* *token dependence* (previous- and duplicate-token heads): how much of the head's output at
  ``i`` is the token at the target: replacing the value there by the value at the same
  position of another prompt (a different token; an interchange on the value, attention held)
  changes the output ``o_i`` to ``o'_i``; dependence ``= |o_i - o'_i| / (|o_i| + |o'_i|)``, in
  ``[0, 1]``, 0 for a head that writes nothing or writes something that does not depend on
  the token (a value read from position alone).

Each is a :class:`~pytest_circuits.measurement.Measurement` over prompts (bootstrap-t 95%
interval: continuous quantities, whatever values come out). ``head_scores`` keeps the
score alone (the heatmaps); :func:`head_evidence` computes everything in one forward.

**In-context learning** (the paper's "loss on later tokens lower than on earlier ones", on
the repeated sequence): the per-token loss (``hooks.TOKEN_LOSS``) of predicting the tokens of
the first copy after its first (``r_2..r_T``, positions ``s+1..s+T-1``) and those of the
second copy after its first (positions ``s+T+1..s+2T-1``), each averaged per prompt;
``drop = loss(first copy) - loss(second copy)``. The first copy is random (its loss is about
``log`` of the number of tokens sampled from); the second is predictable by induction.

**Ablation**: the second-copy loss with heads ablated (``interventions.ablate``, ``"mean"``
over the prompt set's tokens, or ``"zero"``) minus the clean one, per prompt, against a
control: as many other heads of the same layers (seeded choice), ablated the same way;
``excess = increase(heads) - increase(control)`` per prompt.

The criteria (what "found" requires, each property on an interval bound) are in
:func:`detect_induction`, :func:`detect_previous_token` and :func:`detect_duplicate_token`.
Their verdicts are those of :mod:`pytest_circuits.detection`: **found** when some head has
every property on the pessimistic bounds; **absent** when every head fails some property on
the optimistic bounds (:func:`possible_heads` finds none); **undecided** otherwise, with the
reason (which head, which interval straddles which limit). They are tested on the decoy
zoo (:mod:`pytest_circuits.zoo_heads`: the mechanism in unusual forms, decoys with one
defining property but not the others, controls) and on the models trained by ``scripts/train_induction.py`` (``tests/data/planted/induction``,
``induction_control``); on SmolLM2-135M: ``claims/smollm2/test_induction.py``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .. import hooks as H
from .. import interventions as I
from ..components import Head, parse_many
from ..detection import Detection, straddle
from ..errors import CircuitsError, ComponentError, MeasurementError, PromptSetError, bad
from ..measurement import Measurement, record
from ..models import info as model_info
from ..prompts import PromptSet
from ..scores import ComponentScores, key_str
from ..store import resolve
from ..tasks import induction as T
from .effects import _unembed_dirs, attn_output_weights

SOURCE = "arXiv:2209.11895"
KINDS = ("induction", "previous_token", "duplicate_token")
EVIDENCE_KINDS = KINDS + ("copy_suppression",)
TITLES = {"induction": "induction score", "previous_token": "previous-token score",
          "duplicate_token": "duplicate-token score"}
# What each evidence kind's measurements are called: "<word> score/share/...".
WORDS = {"induction": "induction", "previous_token": "previous-token", "duplicate_token": "duplicate-token",
         "copy_suppression": "predicted-copy"}
# A head has a kind's pattern when its share's lower bound exceeds this: more than half of the
# attention it does not park on the first position goes to the one position that defines the
# kind, so no other position gets as much (and its attention there is above uniform).
THRESHOLD = 0.5
# Token dependence a previous- or duplicate-token head must exceed (lower bound): a tenth of
# its output is the token it attends to. A head that writes nothing, or writes what does not
# depend on the token there, has exactly 0.
MIN_DEPENDENCE = 0.1
# An effect on a logit must exceed this in size (nats, lower / upper bound): a hundred times
# float32 rounding of logits of size ~10 (~1e-6), so that rounding noise with a steady sign
# is not an effect (the zoo's GPT-2 head that writes into a direction nothing reads has
# "effect" 5.5e-8 [3.5e-8, 7.7e-8]: LayerNorm's centring leaves rounding, always positive);
# far below what an induction head's direct path carries (SmolLM2-135M's weakest, L17H5:
# 0.011 [0.0008, 0.020]; its later heads 0.1-0.6).
MIN_EFFECT = 1e-4
# The shortest period the detectors use (three predictable tokens on the second copy).
MIN_PERIOD = 4


def _back(kind: str, period: int) -> int:
    """How far back from the query the position that defines ``kind`` lies."""
    return {"induction": period - 1, "previous_token": 1, "duplicate_token": period,
            "copy_suppression": period - 1}[kind]


def _queries(kind: str, start: int, period: int) -> Any:
    """The query positions ``kind`` is averaged over (see the module docstring); copy
    suppression keeps those of them where the model predicts the next token."""
    import torch

    first = start + 1 if kind == "previous_token" else start + period
    last = start + 2 * period - (1 if kind == "copy_suppression" else 0)   # (the next token must exist)
    return torch.arange(first, last)


# --------------------------------------------------------------------------- layout
def layout(prompts: Any) -> list[tuple[list[int], int, int]]:
    """``[(rows, start, period)]``: the prompts grouped by where their first copy starts and
    by their period (``meta["start"]``, ``meta["period"]``). Raises unless every prompt's
    second copy repeats its first token for token."""
    import torch

    if not isinstance(prompts, PromptSet):
        raise PromptSetError(bad("prompts", type(prompts).__name__,
                                 "a PromptSet from tasks.induction.repeated_tokens"))
    meta = prompts.meta
    if "period" not in meta or "start" not in meta:
        raise PromptSetError(f"prompt set {prompts.name!r} has no meta['period'] / meta['start']: build it "
                             "with pytest_circuits.tasks.induction.repeated_tokens(model, n=..., length=...)")
    groups: dict[tuple[int, int], list[int]] = {}
    for b, (s, t) in enumerate(zip(meta["start"], meta["period"])):
        s, t = int(s), int(t)
        if t < 2 or s < 0 or s + 2 * t > prompts.lengths[b]:
            raise PromptSetError(bad(f"meta[start/period] of prompts[{b}]", (s, t),
                                     f"two copies of >= 2 tokens inside its {prompts.lengths[b]} tokens"))
        row = prompts.tokens[b]
        if not torch.equal(row[s:s + t], row[s + t:s + 2 * t]):
            raise PromptSetError(f"prompts[{b}]={prompts.prompts[b][:60]!r}: its tokens {s + t}..{s + 2 * t - 1} "
                                 f"do not repeat tokens {s}..{s + t - 1} (period {t}): not a repeated sequence")
        groups.setdefault((s, t), []).append(b)
    return [(rows, s, t) for (s, t), rows in groups.items()]


def _prov(model: Any, prompts: Any, hooks: list[str], **extra: Any) -> dict[str, Any]:
    return {"model": model_info(model).label, "prompts": prompts.name, "hooks": hooks, **extra}


# --------------------------------------------------------------------------- scores
def head_scores(model: Any, prompts: Any, *, activations: Any = None) -> dict[str, ComponentScores]:
    """The induction, previous-token and duplicate-token score of every head on ``prompts``
    (a set from :func:`~pytest_circuits.tasks.induction.repeated_tokens`), each per prompt
    (see the module docstring for the formulas): ``{kind: ComponentScores}`` over the heads
    (``scores["induction"].grid()`` the heatmap, ``.measure("L1H3")`` the Measurement
    ``"induction score L1H3"``, bootstrap-t). One forward (patterns of every layer and the
    per-token loss together), cached by the store."""
    import torch

    groups = layout(prompts)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    names = [H.pattern(l) for l in range(n_layers)]
    acts = resolve(activations).get(model, prompts, names + [H.TOKEN_LOSS])
    out = {k: np.zeros((len(prompts), n_layers, n_heads)) for k in KINDS}
    for l, name in enumerate(names):
        pat = acts[name]
        if not bool(torch.isfinite(pat).all()):
            raise MeasurementError(f"attention patterns of {model_info(model).label} at {name} are not finite "
                                   "(NaN or inf): no score can be read from them")
        for rows, s, t in groups:
            p = pat[torch.tensor(rows)].double()                 # [rows, head, q, k]
            for kind in KINDS:
                q = _queries(kind, s, t)
                out[kind][rows, l, :] = p[:, :, q, q - _back(kind, t)].mean(-1).numpy()
    label = model_info(model).label
    heads = tuple(Head(l, h) for l in range(n_layers) for h in range(n_heads))
    return {k: ComponentScores(components=heads, values=v.reshape(len(prompts), -1).T, name=f"{TITLES[k]} {{}}",
                               title=TITLES[k], model=label, prompts=prompts.name, labels=prompts.prompts,
                               provenance=_prov(model, prompts, names, score=TITLES[k]), method="bootstrap-t",
                               shape=(n_layers, n_heads))
            for k, v in out.items()}


# --------------------------------------------------------------------------- evidence
EVIDENCE = ("score", "share", "above", "effect", "dependence")
_EVIDENCE_NAMES = {"score": "{w} score", "share": "{w} share", "above": "{w} attention above uniform",
                   "effect": "{w} effect on the attended token", "dependence": "{w} token dependence"}


@dataclass(frozen=True, eq=False)
class HeadEvidence:
    """Every measurement of one kind (:data:`EVIDENCE_KINDS`) for every head, per prompt
    (``[n_prompts, n_layers, n_heads]``; module docstring). ``effect`` is NaN for the
    previous- and duplicate-token kinds, ``dependence`` for induction and copy suppression.
    For copy suppression a prompt where the model predicts no next token has NaN everywhere:
    ``rows`` are the prompts that count (every prompt for the other kinds).
    :meth:`quantity` gives one measure over those prompts as a
    :class:`~pytest_circuits.scores.ComponentScores` (``ev.quantity("share").grid()``, the
    heatmap); :meth:`measure` one head's Measurement."""

    kind: str
    score: np.ndarray
    share: np.ndarray
    above: np.ndarray
    effect: np.ndarray
    dependence: np.ndarray
    model: str = ""
    prompts: str = ""
    labels: tuple[str, ...] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> np.ndarray:
        return np.nonzero(np.isfinite(self.score[:, 0, 0]))[0]

    def name(self, what: str, head: Any = None) -> str:
        base = _EVIDENCE_NAMES[what].format(w=WORDS[self.kind])
        return base if head is None else f"{base} {head}"

    def quantity(self, what: str) -> ComponentScores:
        """One measure (:data:`EVIDENCE`) of every head over the prompts that count, as a
        :class:`~pytest_circuits.scores.ComponentScores` (``of``, ``measure``, ``ranking``,
        ``grid()``: the heatmap), named ``"<kind> <measure> L1H2"``, bootstrap-t intervals."""
        if what not in EVIDENCE:
            raise CircuitsError(bad("what", what, f"one of {EVIDENCE}"))
        cache = self.__dict__.setdefault("_quantities", {})
        if what not in cache:
            rows = self.rows
            a = getattr(self, what)[rows]                                   # [rows, L, H]
            L, nh = a.shape[1:]
            cache[what] = ComponentScores(
                components=tuple(Head(l, h) for l in range(L) for h in range(nh)), values=a.reshape(len(rows), L * nh).T,
                name=self.name(what) + " {}", title=self.name(what), model=self.model, prompts=self.prompts,
                labels=tuple(self.labels[i] for i in rows) if self.labels is not None else None,
                provenance={**self.provenance, "measure": what}, method="bootstrap-t", shape=(int(L), int(nh)))
        return cache[what]

    def measure(self, what: str, head: Any, *, name: str | None = None, record: bool = False) -> Measurement:
        """One head's measurement over the prompts that count (bootstrap-t: a continuous
        quantity): ``quantity(what).measure(head)``, not recorded unless ``record=True``."""
        if not len(self.rows):
            raise MeasurementError(f"{self.name(what, head)}: no prompt of {self.prompts!r} counts (for copy "
                                   "suppression: the model predicts no next token on any of them)")
        q = self.quantity(what)
        return q.measure(head, name=name, record=record, provenance={"head": key_str(q.components[q._rows(head)[0]])})

    def pattern(self, threshold: float = THRESHOLD) -> list[Head]:
        """Heads whose share's lower bound exceeds ``threshold`` and whose attention above
        uniform has a lower bound above 0, by mean share (highest first). Only heads whose
        means could pass are bootstrapped."""
        share, above = self.quantity("share").grid(), self.quantity("above").grid()
        order = sorted(((float(share[l, h]), l, h) for l in range(share.shape[0]) for h in range(share.shape[1])
                        if share[l, h] > threshold and above[l, h] > 0), key=lambda x: (-x[0], x[1], x[2]))
        return [Head(l, h) for _, l, h in order
                if self.measure("share", Head(l, h)).lower > threshold and self.measure("above", Head(l, h)).lower > 0]


def head_evidence(model: Any, prompts: Any, *, activations: Any = None) -> dict[str, HeadEvidence]:
    """Score, share, attention above uniform, effect and token dependence (module docstring)
    for every head and every kind of :data:`EVIDENCE_KINDS`, per prompt, on ``prompts`` (a set
    from :func:`~pytest_circuits.tasks.induction.repeated_tokens`). One forward (patterns,
    values and ``hook_z`` of every layer, the final norm's scale and the per-token loss),
    cached by the store; the arrays made of it are cached with it
    (:meth:`~pytest_circuits.activation_cache.ActivationCache.derived_from_activations`), so a
    later call on the same prompts, in this run or a warm one, reads them."""
    import torch

    groups = layout(prompts)
    L, NH = int(model.cfg.n_layers), int(model.cfg.n_heads)
    names = ([H.pattern(l) for l in range(L)] + [H.v(l) for l in range(L)] + [H.z(l) for l in range(L)]
             + [H.FINAL_SCALE, H.TOKEN_LOSS])
    store = resolve(activations)
    label = model_info(model).label
    outputs = [f"{k}/{m}" for k in EVIDENCE_KINDS for m in EVIDENCE]
    # the same prompts are read by several claims (induction, previous-token, duplicate-token,
    # copy suppression): computed once, cached with the activations it is made of
    got = store.derived_from_activations(
        "head_evidence", model, prompts, {"reads": names, "layout": groups, "format": 1}, outputs,
        lambda: {k: torch.from_numpy(v) for k, v in _evidence(model, prompts, store, groups, names).items()})
    return {k: HeadEvidence(k, **{m: got[f"{k}/{m}"].numpy().copy() for m in EVIDENCE}, model=label,
                            prompts=prompts.name, labels=prompts.prompts,
                            provenance=_prov(model, prompts, ["blocks.*.attn.hook_pattern", "blocks.*.attn.hook_v",
                                                              "blocks.*.attn.hook_z", H.FINAL_SCALE, H.TOKEN_LOSS],
                                             kind=k))
            for k in EVIDENCE_KINDS}


def _evidence(model: Any, prompts: Any, store: Any, groups: list, names: list[str]) -> dict[str, np.ndarray]:
    """``{"<kind>/<measure>": [n, n_layers, n_heads]}``: :func:`head_evidence`'s arrays."""
    import torch

    L, NH = int(model.cfg.n_layers), int(model.cfg.n_heads)
    acts = store.get(model, prompts, names)
    label = model_info(model).label
    n = len(prompts)
    tokens = prompts.tokens
    scale = acts[H.FINAL_SCALE].double().reshape(n, -1)                  # [n, pos]
    nll = acts[H.TOKEN_LOSS].double()                                     # [n, pos - 1]: loss of position p + 1
    uniq, inv = torch.unique(tokens, return_inverse=True)
    w_tok = _unembed_dirs(model, uniq)[0]                                 # [u, d_model]
    W_O = attn_output_weights(model)                                      # [L, H, d_head, d_model]
    out = {k: {m: np.full((n, L, NH), np.nan) for m in EVIDENCE} for k in EVIDENCE_KINDS}
    for l in range(L):
        pat = acts[H.pattern(l)]
        if not bool(torch.isfinite(pat).all()):
            raise MeasurementError(f"attention patterns of {label} at {H.pattern(l)} are not finite (NaN or inf): "
                                   "no score can be read from them")
        pat = pat.double()
        v = acts[H.v(l)].double()
        if v.dim() != 4 or NH % v.shape[2]:
            raise MeasurementError(f"{H.v(l)} of {label} has shape {tuple(v.shape)}: expected [batch, pos, "
                                   f"key-value heads dividing {NH}, d_head]")
        v = v.repeat_interleave(NH // v.shape[2], dim=2)                  # [n, pos, H, d_head] per query head
        z = acts[H.z(l)].double()
        other = v.roll(1, 0)                                              # the same position, another prompt
        for rows, s, t in groups:
            r = torch.tensor(rows)
            p_r = pat[r]
            for kind in EVIDENCE_KINDS:
                q = _queries(kind, s, t)
                tgt = q - _back(kind, t)
                a = p_r[:, :, q, tgt]                                     # [b, H, q]
                # attention off the first position (plus the target's when the target is position 0:
                # a model without BOS, whose first token is a real one)
                off_sink = p_r[:, :, q, 1:].sum(-1) + torch.where(tgt == 0, a, torch.zeros_like(a))
                share = torch.where(off_sink > 0, a / off_sink.clamp_min(1e-300), torch.zeros_like(a))
                above = a - 1.0 / (q.double() + 1.0)
                a_q = a.permute(0, 2, 1)                                  # [b, q, H]
                vt = v[r][:, tgt]                                         # [b, q, H, d_head]
                vals = {"score": a, "share": share, "above": above}
                if kind in ("previous_token", "duplicate_token"):
                    delta = torch.einsum("bqhe,hed->bqhd", vt - other[r][:, tgt], W_O[l]) * a_q.unsqueeze(-1)
                    o = torch.einsum("bqhe,hed->bqhd", z[r][:, q], W_O[l])
                    size = o.norm(dim=-1) + (o - delta).norm(dim=-1)
                    dep = torch.where(size > 0, delta.norm(dim=-1) / size.clamp_min(1e-300), torch.zeros_like(size))
                    vals["dependence"] = dep.permute(0, 2, 1)
                else:
                    w = w_tok[inv[r][:, tgt]]                             # [b, q, d_model]
                    wrote = torch.einsum("bqhe,hed->bqhd", vt, W_O[l])
                    de = (wrote * w.unsqueeze(2)).sum(-1) * a_q / scale[r][:, q].unsqueeze(-1)
                    vals["effect"] = de.permute(0, 2, 1)
                if kind == "copy_suppression":
                    keep = (nll[r][:, q] < math.log(2.0)).unsqueeze(1).double()          # [b, 1, q]
                    count = keep.sum(-1)                                                  # [b, 1]
                    for m, x in vals.items():
                        mean = (x * keep).sum(-1) / count.clamp_min(1.0)
                        out[kind][m][rows, l, :] = torch.where(count > 0, mean, torch.nan).numpy()
                else:
                    for m, x in vals.items():
                        out[kind][m][rows, l, :] = x.mean(-1).numpy()
    return {f"{k}/{m}": out[k][m] for k in EVIDENCE_KINDS for m in EVIDENCE}


# --------------------------------------------------------------------------- in-context loss
@dataclass(frozen=True)
class InContextLoss:
    """Per-prompt mean loss on the first and second copies (after their first tokens)."""

    first: Measurement
    second: Measurement
    drop: Measurement                  # first - second, per prompt

    def table(self) -> str:
        return (f"loss first copy {self.first.mean:.3f}, second copy {self.second.mean:.3f}; "
                f"drop {self.drop.mean:.3f} [{self.drop.lower:.3f}, {self.drop.upper:.3f}]")


def copy_losses(model: Any, prompts: Any, *, intervention: Any = None,
                activations: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(first, second)``, ``[n]`` each: the mean next-token loss (nats) over the first
    copy's tokens ``r_2..r_T`` and over the second copy's ``r_2..r_T`` (``TOKEN_LOSS[:, p]`` is
    the loss of predicting position ``p + 1``)."""
    import torch

    groups = layout(prompts)
    nll = resolve(activations).get(model, prompts, [H.TOKEN_LOSS], intervention)[H.TOKEN_LOSS].double()
    first, second = np.zeros(len(prompts)), np.zeros(len(prompts))
    for rows, s, t in groups:
        r = torch.tensor(rows)
        first[rows] = nll[r, s:s + t - 1].mean(1).numpy()
        second[rows] = nll[r, s + t:s + 2 * t - 1].mean(1).numpy()
    if not (np.isfinite(first).all() and np.isfinite(second).all()):
        under = f" under {intervention.key}" if intervention is not None else ""
        raise MeasurementError(f"per-token losses of {model_info(model).label}{under} are not finite")
    return first, second


def in_context_loss(model: Any, prompts: Any, *, intervention: Any = None, activations: Any = None,
                    record: bool = False) -> InContextLoss:
    """The first- and second-copy losses and their drop as Measurements over prompts."""
    first, second = copy_losses(model, prompts, intervention=intervention, activations=activations)
    under = "" if intervention is None else f" under {intervention.key}"
    kw = dict(model=model_info(model).label, labels=prompts.prompts, record=record, method="bootstrap-t",
              provenance=_prov(model, prompts, [H.TOKEN_LOSS],
                               intervention=intervention.key if intervention is not None else "none"))
    return InContextLoss(first=Measurement.from_values(f"loss first copy{under}", first, **kw),
                         second=Measurement.from_values(f"loss second copy{under}", second, **kw),
                         drop=Measurement.from_values(f"in-context loss drop (first - second copy){under}",
                                                      first - second, **kw))


# --------------------------------------------------------------------------- ablation
@dataclass(frozen=True)
class AblationEffect:
    """The second-copy loss increase when ``heads`` are ablated, against a control."""

    heads: tuple[Head, ...]
    control_heads: tuple[Head, ...]
    kind: str
    increase: Measurement
    control_increase: Measurement | None
    excess: Measurement | None
    note: str = ""

    def table(self) -> str:
        def fmt(m: Measurement) -> str:
            return f"{m.mean:+.3f} [{m.lower:+.3f}, {m.upper:+.3f}]"

        rows = [f"{self.kind}-ablating {' '.join(map(str, self.heads))}: second-copy loss {fmt(self.increase)}"]
        if self.control_increase is not None:
            rows.append(f"control, {' '.join(map(str, self.control_heads))}: {fmt(self.control_increase)}; "
                        f"excess over control {fmt(self.excess)}")
        if self.note:
            rows.append(self.note)
        return "\n".join(rows)


def control_heads(model: Any, heads: Sequence[Head], *, seed: int = 0) -> tuple[tuple[Head, ...], str]:
    """As many other heads of the same layers as ``heads`` has in each, chosen with ``seed``
    (the fewer a layer has left, the fewer are taken: the note says so)."""
    chosen: list[Head] = []
    short = []
    rng = np.random.default_rng(seed)
    taken = set(heads)
    for layer in sorted({h.layer for h in heads}):
        want = sum(1 for h in heads if h.layer == layer)
        others = [Head(layer, i) for i in range(model.cfg.n_heads) if Head(layer, i) not in taken]
        k = min(want, len(others))
        if k < want:
            short.append(f"layer {layer}: {k} of {want}")
        if k:
            chosen += [others[int(i)] for i in sorted(rng.choice(len(others), size=k, replace=False))]
    note = ("control has fewer heads than ablated (" + "; ".join(short) + ": no other heads left there)"
            if short else "")
    return tuple(chosen), note


def ablation_effect(model: Any, prompts: Any, heads: Any, *, kind: str = "mean", control: bool = True,
                    seed: int = 0, activations: Any = None, label: str = "induction heads",
                    record: bool = False) -> AblationEffect:
    """Second-copy loss with ``heads`` ablated minus the clean one, per prompt, as a
    Measurement named ``"second-copy loss increase, <label> ablated"``; with ``control``,
    the same for :func:`control_heads` and the per-prompt excess of the first over it.
    ``kind="mean"`` replaces each head's output by its mean over every token of ``prompts``;
    ``"zero"`` by 0 (every position)."""
    if kind not in ("mean", "zero"):
        raise ComponentError(bad("kind", kind, "'mean' or 'zero'"))
    comps = parse_many(heads, model)
    if not comps or not all(isinstance(c, Head) for c in comps):
        raise ComponentError(bad("heads", heads, "one or more attention heads such as 'L1H3'"))
    comps = tuple(dict.fromkeys(comps))
    store = resolve(activations)
    reference = prompts if kind == "mean" else None
    _, clean = copy_losses(model, prompts, activations=store)

    def increase(hs: tuple[Head, ...], what: str) -> Measurement:
        iv = I.ablate(model, list(hs), kind, reference=reference)
        _, second = copy_losses(model, prompts, intervention=iv, activations=store)
        return Measurement.from_values(f"second-copy loss increase, {what} ablated", second - clean,
                                       model=model_info(model).label, labels=prompts.prompts, record=record,
                                       method="bootstrap-t",
                                       provenance=_prov(model, prompts, [H.TOKEN_LOSS], intervention=iv.key,
                                                        heads=[str(h) for h in hs]))

    inc = increase(comps, label)
    ctrl_heads, note = control_heads(model, comps, seed=seed) if control else ((), "")
    ctrl = excess = None
    if ctrl_heads:
        ctrl = increase(ctrl_heads, "control heads")
        excess = Measurement.from_values(f"second-copy loss increase, {label} ablated, over control",
                                         inc.array - ctrl.array, model=inc.model, labels=prompts.prompts,
                                         record=record, method="bootstrap-t", provenance={"left": repr(inc), "right": repr(ctrl)})
    elif control:
        note = "no control: no other heads in the ablated heads' layers"
    return AblationEffect(comps, ctrl_heads, kind, inc, ctrl, excess, note)


# --------------------------------------------------------------------------- detectors
def _headline(m: Measurement, name: str) -> Measurement:
    """``m`` again under a head-independent name (the head is in its provenance), recorded, so
    that baselines compare the same key on every checkpoint. The values and the interval are
    ``m``'s own (a proportion stays a proportion)."""
    return record(dataclasses.replace(m, name=name))


def _recorded(m: Measurement) -> Measurement:
    """``m`` again, recorded (in the running claim's report) this time."""
    return record(m)


@dataclass(frozen=True)
class Property:
    """One defining property of a candidate head, decided on an interval bound: ``m`` above
    ``limit`` (``above``) or below it. It **holds** when the pessimistic bound is past the
    limit, **could** hold when the optimistic one is, and is in **doubt** when only the
    optimistic one is (the interval straddles the limit: :func:`~pytest_circuits.detection.straddle`
    says so in words)."""

    m: Measurement
    limit: float
    above: bool = True

    def holds(self) -> bool:
        return self.m.lower > self.limit if self.above else self.m.upper < self.limit

    def could(self) -> bool:
        return self.m.upper > self.limit if self.above else self.m.lower < self.limit

    def doubt(self) -> str | None:
        return None if self.holds() or not self.could() else straddle(self.m, self.limit, above=self.above)


def possible_heads(ev: "HeadEvidence", threshold: float, more: Callable[[Head], list[Property]], *,
                   exclude: Sequence[Head] = ()) -> list[tuple[Head, list[str]]]:
    """The heads (outside ``exclude``: those located, or ruled out by an ablation) that could
    have every property on the optimistic bounds but do not on the pessimistic ones: the
    pattern (share above ``threshold``, attention above uniform) and ``more(head)`` (the
    kind's other properties); each with the properties in doubt, in words. Any of them makes a
    detector's verdict undecided rather than absent. Highest mean share first; every head's
    share interval is computed (an upper bound can pass where the mean does not)."""
    share = ev.quantity("share").grid()
    skip = set(exclude)
    order = sorted(((float(share[l, h]), l, h) for l in range(share.shape[0]) for h in range(share.shape[1])
                    if np.isfinite(share[l, h])), key=lambda x: (-x[0], x[1], x[2]))
    out = []
    for _, l, h in order:
        head = Head(l, h)
        if head in skip:
            continue
        props = [Property(ev.measure("share", head), threshold)]
        if not props[0].could():
            continue
        props.append(Property(ev.measure("above", head), 0.0))
        if not props[1].could():
            continue
        props += more(head)
        if all(p.could() for p in props) and not all(p.holds() for p in props):
            out.append((head, [d for d in (p.doubt() for p in props) if d]))
    return out


def _undecided_reason(possible: list[tuple[Head, list[str]]], what: str) -> str:
    return "; ".join(f"{h} could be {what}: {', '.join(doubts)}" for h, doubts in possible[:3])


def _fmt(m: Measurement) -> str:
    return f"{m.mean:.3g} [{m.lower:.3g}, {m.upper:.3g}]"


def prompt_set(model: Any, prompts: Any = None, *, n: int = 32, length: int = 20,
               seed: int = 0) -> tuple[Any, str, str]:
    """``(prompt set, reason, note)`` for the detectors: ``prompts`` when given (checked), else
    ``n`` repeated random sequences with periods varied from ``max(4, length / 2)`` to
    ``length`` (:func:`~pytest_circuits.tasks.induction.repeated_tokens` with ``min_length``),
    fitted to the model: the longest period is cut to what its context holds (two copies plus
    BOS) and to what its vocabulary can fill with distinct tokens, drawn from the ordinary
    tokens or, when there are too few of those, from every token that is not special. The
    prompt set is None when even periods of :data:`MIN_PERIOD` do not fit: ``reason`` then
    says what the model lacks. ``note`` says what was adapted ("" when nothing was)."""
    if prompts is not None:
        layout(prompts)
        return prompts, "", ""
    for what, value, least in (("n", n, 1), ("length", length, 2), ("seed", seed, 0)):
        T._int(what, value, least)
    start = 1 if model.tokenizer.bos_token_id is not None else 0
    n_ctx = getattr(model.cfg, "n_ctx", None)
    longest = min(length, (n_ctx - start) // 2) if isinstance(n_ctx, int) else length
    if longest < MIN_PERIOD:
        return None, (f"the model's context holds {n_ctx} positions; two copies of a sequence of at least "
                      f"{MIN_PERIOD} tokens{' after BOS' if start else ''} need {start + 2 * MIN_PERIOD}"), ""
    notes = []
    if longest < length:
        notes.append(f"the model's context ({n_ctx} positions) holds periods up to {longest}")

    def shortest(top: int) -> int:
        return min(top, max(MIN_PERIOD, math.ceil(top / 2)))

    pool, which = T.ordinary_tokens(model), "ordinary tokens"
    if len(pool) < T.needed_tokens(longest, shortest(longest)):
        more = T.nonspecial_tokens(model)
        if len(more) > len(pool):
            notes.append(f"only {len(pool)} ordinary tokens (a letter or digit, text that encodes back to "
                         f"itself): sampled from the {len(more)} tokens that are not special")
            pool, which = more, "tokens that are not special"
    top = longest
    while top >= MIN_PERIOD and len(pool) < T.needed_tokens(top, shortest(top)):
        top -= 1
    if top < MIN_PERIOD:
        every = len(T.nonspecial_tokens(model))
        return None, (f"the vocabulary has {every} tokens that are not special; repeated sequences of "
                      f"{MIN_PERIOD} distinct tokens need {T.needed_tokens(MIN_PERIOD, MIN_PERIOD)}"), ""
    if top < longest:
        notes.append(f"{len(pool)} {which} fill periods up to {top}")
    ps = T.repeated_tokens(model, n=n, length=top, min_length=shortest(top), seed=seed, pool=pool)
    return ps, "", "; ".join(notes)


def _periods(ps: Any) -> str:
    periods = sorted({int(t) for t in ps.meta["period"]})
    return str(periods[0]) if len(periods) == 1 else f"{periods[0]}-{periods[-1]}"


def _best(ev: HeadEvidence) -> Head:
    """The head most like the kind when none passes: highest mean share among heads whose
    attention on the target is above uniform on average, else the highest mean score."""
    share, above, score = ev.quantity("share").grid(), ev.quantity("above").grid(), ev.quantity("score").grid()
    cand = np.where(above > 0, share, -np.inf)
    grid = cand if np.isfinite(cand).any() else score
    l, h = np.unravel_index(int(np.nanargmax(grid)), grid.shape)
    return Head(int(l), int(h))


def _table(ev: HeadEvidence, heads: Sequence[Head], verdicts: dict[Head, str], last: str) -> str:
    g = {m: ev.quantity(m).grid() for m in ("score", "share", "above", last)}
    rows = [f"  head     score   share  above-unif  {'effect' if last == 'effect' else 'token-dep':>9}  verdict"]
    for h in heads:
        l, k = h.layer, h.head
        rows.append(f"  {str(h):>7}  {g['score'][l, k]:.3f}  {g['share'][l, k]:.3f}  {g['above'][l, k]:+9.3f}  "
                    f"{g[last][l, k]:+9.4f}  {verdicts.get(h, '')}")
    return "\n".join(rows)


def _ranked(ev: HeadEvidence, k: int = 8) -> list[Head]:
    share = ev.quantity("share").grid()
    order = sorted(((float(share[l, h]), l, h) for l in range(share.shape[0]) for h in range(share.shape[1])),
                   key=lambda x: (-x[0], x[1], x[2]))
    return [Head(l, h) for _, l, h in order[:k]]


def _heatmaps(ev: dict[str, HeadEvidence], kinds: Sequence[str]) -> dict[str, np.ndarray]:
    out = {}
    for k in kinds:
        out[TITLES[k]] = ev[k].quantity("score").grid()
        out[ev[k].name("share")] = ev[k].quantity("share").grid()
    return out


def detect_induction(model: Any, *, n: int = 32, length: int = 20, seed: int = 0, activations: Any = None,
                     prompts: Any = None, threshold: float = THRESHOLD, min_effect: float = MIN_EFFECT,
                     ablation: str = "mean", min_loss_increase: float = 0.0, max_ablated: int | None = None,
                     previous_threshold: float = THRESHOLD, duplicate_threshold: float = THRESHOLD) -> Detection:
    """Induction heads (Olsson et al. 2022) on ``n`` repeated random sequences (seeded; periods
    varied up to ``length``, fitted to the model: :func:`prompt_set`).

    An induction head has every one of these properties, each decided on a 95% interval
    bound (module docstring for the measurements):

    1. **pattern**: from each token of the second copy it attends to the token after that
       token's earlier occurrence: its share of the attention not parked on the first
       position has a lower bound above ``threshold`` (0.5: the target gets more than every
       other position together), and its attention there is above uniform (lower bound > 0);
    2. **copying**: through that attention it raises the logit of the token it attends to
       (the next token): direct effect lower bound above ``min_effect`` (1e-4 nats). A head
       with the pattern whose effect has an upper bound below ``-min_effect`` is
       **anti-induction** (it pushes the repeated token down: copy suppression): reported,
       never located; one with neither has the pattern without an output that reaches the
       logits, and is not located either;
    3. **causal**: ``ablation``-ablating it alone does not lower the loss on the second copy
       (an upper bound below 0 is the wrong way: reported, not located), and ablating the heads
       so located (the best ``max_ablated``) raises it, lower bound above
       ``min_loss_increase`` (0), and by more than ablating as many other heads of the same
       layers (excess over that control, lower bound above ``min_loss_increase``; when the
       layers have no other head there is no control, and the card says so).

    **Found** when some head has all three. **Absent** when no head could have (1) and (2)
    even on the optimistic (upper) bounds (a head ruled out by (3)'s single ablation stays
    out), or when ablating the located heads fails (3) on its upper bounds; **undecided**
    otherwise, with the reason (the head and the measurement whose interval straddles its
    limit, :func:`~pytest_circuits.detection.straddle`). Why 0.5 and a share: on SmolLM2-135M the heads
    L17H3, L17H4, L17H5 and L18H6 put 0.63-0.85 of their attention on the target, while
    L18H7 puts 0.49 there and 0.48 on BOS: its share is 0.90, and it copies (effect +0.12).
    A head parked on BOS with a few 1e-12 on the target (SmolLM2's L18H8 has share 0.67 and
    attention 0.0003) fails the attention above uniform. Why the effect: a head with the
    pattern whose output nothing reads changes the second-copy loss only through side
    effects (the final norm's scale); its effect on the token is 0.

    Measurements (headlines, under head-independent names so that the checkup's baselines
    compare them across checkpoints): the in-context loss drop, ``induction score (top
    head)`` (the top located head, else the head most like one: its attention on the target),
    ``induction share (top head)``, ``induction effect on the attended token (top head)``, and
    with located heads the ablation's second-copy loss increase and its excess over the
    control's (the control's own increase is in ``more``: its heads depend on how many were
    located per layer). Each located head's score, share and effect are in ``more`` (also
    through ``measurement("induction share L{l}H{h}")``). Heatmaps: score and share of the
    three kinds.
    Not applicable when the model's context or vocabulary cannot hold two copies of a
    sequence of :data:`MIN_PERIOD` distinct tokens (the reason says which).
    """
    title = "Induction heads (attend to the token after the current token's earlier occurrence, and copy it)"
    label = model_info(model).label
    ps, reason, note = prompt_set(model, prompts, n=n, length=length, seed=seed)
    if ps is None:
        return Detection.not_applicable("induction", title, reason, source=SOURCE, model=label)
    store = resolve(activations)
    evs = head_evidence(model, ps, activations=store)
    ev = evs["induction"]
    icl = in_context_loss(model, ps, activations=store)
    drop = _recorded(icl.drop)
    verdicts: dict[Head, str] = {}
    copying, anti, silent, wrong = [], [], [], []
    singles: dict[Head, Measurement] = {}
    for h in ev.pattern(threshold):
        e = ev.measure("effect", h)
        if e.lower > min_effect:
            copying.append(h)
        elif e.upper < -min_effect:
            anti.append(h)
            verdicts[h] = f"anti-induction: lowers the token it attends to (effect {_fmt(e)})"
        else:
            silent.append(h)
            verdicts[h] = f"pattern, no effect on the token (effect {_fmt(e)})"
    for h in copying:
        single = ablation_effect(model, ps, [h], kind=ablation, control=False, activations=store, label=str(h))
        singles[h] = single.increase
        if single.increase.upper < 0:
            wrong.append(h)
            verdicts[h] = f"wrong way: ablating it lowers the second-copy loss ({_fmt(single.increase)})"
    located = [h for h in copying if h not in wrong]
    for h in located:
        verdicts[h] = "induction head"
    # Undecided, not absent: the located heads' ablation straddles its limit, or (none located)
    # a head could have the pattern and copy on the optimistic bounds (module docstring of
    # pytest_circuits.detection). Heads ruled out by their own ablation (wrong way) stay out.
    possible = [] if located else possible_heads(
        ev, threshold, lambda h: [Property(ev.measure("effect", h), min_effect)], exclude=wrong)
    for h, doubts in possible:
        verdicts[h] = "could be one: " + "; ".join(doubts)
    top = located[0] if located else possible[0][0] if possible else _best(ev)
    measurements: list[Measurement] = [drop] + [_headline(ev.measure(m, top), ev.name(m) + " (top head)")
                                                for m in ("score", "share", "effect")]
    more = [ev.measure(m, h) for h in (located or [top]) for m in ("score", "share", "effect")]
    effect = None
    if located:
        chosen = located[:max_ablated] if max_ablated else located
        effect = ablation_effect(model, ps, chosen, kind=ablation, seed=seed, activations=store)
        # Headlines: the increase and its excess over the control. The control's own increase is
        # a detail (in ``more``): which heads it ablates depends on how many were located in each
        # layer, so across checkpoints it compares different heads (a borderline head that drops
        # out of the located set redraws the control), which a baseline must not read as drift.
        measurements += [record(m) for m in (effect.increase, effect.excess) if m is not None]
        if effect.control_increase is not None:
            more.append(effect.control_increase)
    causal_props = [] if effect is None else [Property(m, min_loss_increase)
                                              for m in (effect.increase, effect.excess) if m is not None]
    found = bool(located) and all(p.holds() for p in causal_props)
    reason = ""
    if found:
        why = f"found: {', '.join(map(str, located))} have the pattern, copy the token and cost loss when ablated"
    elif located and all(p.could() for p in causal_props):
        reason = (f"{', '.join(map(str, located))} have the pattern and copy, but whether ablating them raises the "
                  "second-copy loss is undecided: " + "; ".join(d for d in (p.doubt() for p in causal_props) if d))
        why = f"undecided: {reason}"
    elif located:
        why = (f"absent: {', '.join(map(str, located))} have the pattern and copy, but ablating them does not "
               f"raise the second-copy loss beyond the control ({effect.table().splitlines()[-1].strip()})")
    elif possible:
        reason = _undecided_reason(possible, "an induction head")
        why = f"undecided: {reason}"
    elif wrong:
        why = f"absent: {', '.join(map(str, wrong))} have the pattern and copy, but ablating them lowers the loss"
    elif anti or silent:
        why = ("absent: the heads with the pattern do not raise the token they attend to"
               + (f"; anti-induction (they lower it): {', '.join(map(str, anti))}" if anti else "")
               + (f"; no effect on it (an output nothing reads): {', '.join(map(str, silent))}" if silent else ""))
    else:
        why = (f"absent: no head has the pattern (most like one: {top}, share "
               f"{_fmt(ev.measure('share', top))}, attention above uniform {_fmt(ev.measure('above', top))})")
    no_control = effect is not None and effect.excess is None
    criterion = (f"a head that (1) attends from each repeated token to the token after its earlier occurrence "
                 f"({len(ps)} sequences of {_periods(ps)} random tokens, repeated): its share of the attention "
                 f"not on the first position (an attention sink) has a 95% lower bound above {threshold}, and its "
                 f"attention there is above uniform; (2) raises that token's logit through that attention "
                 f"(direct effect lower bound above {min_effect:g} nats; a head that lowers it is anti-induction, "
                 f"never located); (3) {ablation}-ablating it alone does not lower the second-copy loss, and "
                 f"ablating the heads so located raises it (lower bound above {min_loss_increase:g})"
                 + (" (no control: their layers have no other head)" if no_control else
                    f" by more than ablating as many other heads of their layers (excess lower bound above "
                    f"{min_loss_increase:g})")
                 + "; absent when no head has (1) and (2) on the optimistic (upper) bounds, or ablating the "
                   "located heads fails (3) on them; undecided otherwise")
    listed = located + [h for h, _ in possible] + anti + silent + wrong + _ranked(ev)
    details = [f"  {why}", _table(ev, list(dict.fromkeys(listed))[:10],
                                  verdicts, "effect"), f"  in-context: {icl.table()}"]
    if note:
        details.append(f"  prompts: {note}")
    if effect is not None:
        details.append("  " + effect.table().replace("\n", "\n  "))
    for h, m in singles.items():
        details.append(f"  {ablation}-ablating {h} alone: second-copy loss {_fmt(m)}")
    for kind, thr in (("previous_token", previous_threshold), ("duplicate_token", duplicate_threshold)):
        heads = [h for h in evs[kind].pattern(thr) if evs[kind].measure("dependence", h).lower > MIN_DEPENDENCE]
        share = evs[kind].quantity("share")
        details.append(f"  {WORDS[kind]} heads (share lower bound > {thr:g}, token dependence > "
                       f"{MIN_DEPENDENCE:g}): " + (", ".join(f"{h} {float(share.of(h).mean()):.3f}"
                                                            for h in heads) or "none"))
    return Detection(check="induction", title=title, source=SOURCE, model=label, found=found,
                     undecided=bool(reason), reason=reason, criterion=criterion, measurements=tuple(measurements), more=tuple(more),
                     components=tuple((str(h), float(ev.quantity("share").grid()[h.layer, h.head])) for h in located),
                     heatmaps=_heatmaps(evs, KINDS), details="\n".join(details))


_WHAT = {"previous_token": ("from each token after the first of a repeated random sequence to the token before it",
                            "Olsson et al. 2022: the previous-token head an induction head reads through its keys"),
         "duplicate_token": ("from each token of the second copy of a repeated random sequence to its earlier copy",
                             "Wang et al. 2022: S-inhibition heads read duplicate-token heads")}


def _detect_kind(kind: str, title: str, model: Any, n: int, length: int, seed: int, activations: Any,
                 prompts: Any, threshold: float, min_dependence: float) -> Detection:
    label = model_info(model).label
    ps, reason, note = prompt_set(model, prompts, n=n, length=length, seed=seed)
    if ps is None:
        return Detection.not_applicable(kind, title, reason, source=SOURCE, model=label)
    evs = head_evidence(model, ps, activations=activations)
    ev = evs[kind]
    verdicts: dict[Head, str] = {}
    located, silent = [], []
    for h in ev.pattern(threshold):
        dep = ev.measure("dependence", h)
        if dep.lower > min_dependence:
            located.append(h)
            verdicts[h] = f"{WORDS[kind]} head"
        else:
            silent.append(h)
            verdicts[h] = f"pattern, but what it writes does not depend on the token (dependence {_fmt(dep)})"
    possible = [] if located else possible_heads(
        ev, threshold, lambda h: [Property(ev.measure("dependence", h), min_dependence)])
    for h, doubts in possible:
        verdicts[h] = "could be one: " + "; ".join(doubts)
    top = located[0] if located else possible[0][0] if possible else _best(ev)
    measurements = tuple(_headline(ev.measure(m, top), ev.name(m) + " (top head)")
                         for m in ("score", "share", "dependence"))
    more = tuple(ev.measure(m, h) for h in (located or [top]) for m in ("score", "share", "dependence"))
    reason = ""
    if located:
        why = f"found: {', '.join(map(str, located))}"
    elif possible:
        reason = _undecided_reason(possible, f"a {WORDS[kind]} head")
        why = f"undecided: {reason}"
    elif silent:
        why = (f"absent: {', '.join(map(str, silent))} have the pattern, but their output does not carry the "
               "token they attend to (nothing written, or only position)")
    else:
        why = (f"absent: no head has the pattern (most like one: {top}, share {_fmt(ev.measure('share', top))}, "
               f"attention above uniform {_fmt(ev.measure('above', top))})")
    what, reader = _WHAT[kind]
    criterion = (f"a head that attends {what} ({len(ps)} sequences of {_periods(ps)} random tokens): its share of "
                 f"the attention not on the first position (an attention sink) has a 95% lower bound above "
                 f"{threshold}, and its attention there is above uniform; and what it writes depends on that "
                 f"token (replacing the value there by another prompt's changes its output: token dependence "
                 f"lower bound above {min_dependence:g}; a head that writes nothing, or only position, is not "
                 f"one). Whether a later component reads it is not required ({reader}). Absent when no head has "
                 "these on the optimistic (upper) bounds; undecided otherwise")
    listed = located + [h for h, _ in possible] + silent + _ranked(ev)
    details = [f"  {why}", _table(ev, list(dict.fromkeys(listed))[:10], verdicts,
                                  "dependence")]
    if note:
        details.append(f"  prompts: {note}")
    return Detection(check=kind, title=title, source=SOURCE, model=label, found=bool(located),
                     undecided=bool(reason), reason=reason, criterion=criterion, measurements=measurements, more=more,
                     components=tuple((str(h), float(ev.quantity("share").grid()[h.layer, h.head])) for h in located),
                     heatmaps=_heatmaps(evs, [kind]), details="\n".join(details))


def detect_previous_token(model: Any, *, n: int = 32, length: int = 20, seed: int = 0, activations: Any = None,
                          prompts: Any = None, threshold: float = THRESHOLD,
                          min_dependence: float = MIN_DEPENDENCE) -> Detection:
    """Previous-token heads (Olsson et al. 2022): a head that attends from each token to the
    one before it, and moves that token. Found when some head's previous-token share (of the
    attention not on the first position) has a lower bound above ``threshold`` (0.5), its
    attention there is above uniform, and its token dependence has a lower bound above
    ``min_dependence`` (0.1): the definition is the attention pattern, measured so that it
    survives an attention sink, plus the minimum that makes it a pattern of *information*
    flow: a head whose output is zero, or does not depend on the token it attends to (a value
    read from position alone), moves nothing. **Absent** when no head has these on the
    optimistic (upper) bounds; **undecided** when some head could (an interval straddles its
    limit: the reason says which). That a later head reads it (an induction head's
    keys) is not required; :func:`detect_induction` tests that circuit. Shares the forward of
    :func:`detect_induction` through the store. On SmolLM2-135M: L16H0 (attention 0.886, share
    0.956, dependence 0.58), L11H1 (0.842, 0.845), and more heads whose attention a sink hides
    (L19H8: attention 0.35, share 0.77)."""
    return _detect_kind("previous_token", "Previous-token heads (attend to the token before, and move it)", model,
                        n, length, seed, activations, prompts, threshold, min_dependence)


def detect_duplicate_token(model: Any, *, n: int = 32, length: int = 20, seed: int = 0, activations: Any = None,
                           prompts: Any = None, threshold: float = THRESHOLD,
                           min_dependence: float = MIN_DEPENDENCE) -> Detection:
    """Duplicate-token heads (Wang et al. 2022): a head that attends from a repeated token to
    its earlier copy, and moves it: the same three properties as
    :func:`detect_previous_token` with the earlier copy as the target (and the same found /
    absent / undecided verdicts). The periods vary from
    prompt to prompt, so a head that attends a fixed distance back cannot pass. On
    SmolLM2-135M: L14H3 (attention 0.688, share 0.763), L8H0 (0.511, 0.656)."""
    return _detect_kind("duplicate_token", "Duplicate-token heads (attend to an earlier copy of the current token)",
                        model, n, length, seed, activations, prompts, threshold, min_dependence)
