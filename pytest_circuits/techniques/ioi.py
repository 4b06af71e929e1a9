"""Indirect object identification: logit difference, name movers, S-inhibition heads and
backup name movers (Wang et al. 2022, arXiv:2211.00593).

Prompts come from :func:`pytest_circuits.tasks.ioi.ioi` (answers: the IO name, foils: the
S name, ``corrupted``: the ABC counterpart, token positions of IO, S1, S2 and END in
``meta``). Every quantity is read at END, the last position, and is per prompt, so each
is a :class:`~pytest_circuits.measurement.Measurement` with a bootstrap interval over
prompts.

**Logit difference** ``LD = logit(IO) - logit(S)`` at END (the paper: 3.56 on GPT-2 small).

**Direct effect on the logit difference** of a head ``h`` (DLA, as in
:mod:`pytest_circuits.techniques.effects`): ``DE_h = out_h . (u_IO - u_S) / s`` with
``out_h`` the head's output at END, ``u_t`` the unembedding column of ``t`` and ``s`` the
final norm's scale of the clean run; it is :func:`effects.decompose` on the IO minus on
the S token (the vocabulary centring cancels in the difference), so the direct effects of
every writer plus ``b_U[IO] - b_U[S]`` add up to LD read from the logits (checked).

**Attention shares.** Real heads park much of their attention on BOS (an attention sink) and
do their work with the rest, so the criteria read attention as a *share of the attention off
position 0*: ``share(X) = attn(X) / (1 - attn(position 0))`` (no IOI name is at position 0).
The absolute ``attn_io`` etc. are kept as measurements.

**Name movers** (the paper's 9.9, 9.6, 10.0): heads that, at END, attend to the IO name and
write it: a head is one when (a) its mean attention share END -> IO is at least
``min_attention`` (0.2; the paper's name movers put most of their attention on IO), (b) it
attends to IO more than to both S mentions together (the lower bound of the per-prompt
``attn(IO) - attn(S1) - attn(S2)`` above 0: what makes it move *the IO* rather than names
in general; which is larger does not depend on the sink, and dividing by a per-prompt sink
share only widens the interval: on SmolLM2, L23H2's 0.121 [0.052, 0.196] would become
0.104 [-0.041, 0.241]), (c) the lower bound of its direct effect on LD is above ``min_effect`` (0.1
logit, i.e. it changes the IO:S odds by at least 10%), and (d) its direct effect on the
same two tokens falls when the prompt's ABC counterpart replaces the names (lower bound of
``DE_clean - DE_ABC`` above 0: an intervention on its input showing that it writes the
names it reads, not a constant). A head that attends to IO and writes against it is a
*negative* name mover (listed in ``details``).

**S-inhibition heads** (the paper's 7.3, 7.9, 8.6, 8.10, found by path patching into the
name movers' queries). The proxy used here: among the heads before the last name mover's
layer that attend from END to S2 (mean attention share at least ``min_attention``), each
head's output *at END only* is patched from the prompt's ABC counterpart, and the score is how
much the name movers' summed direct effect on LD falls (clean minus patched, the clean
final-norm scale frozen). Patching at END changes what the name movers read there: their
queries (and their own key and value at END); it also reaches them through any head or
MLP between the two at END, which true path patching would freeze: the score is the head's
whole effect on the name movers through END, not only the direct path into their queries. A head is
an S-inhibition head when the lower bound of its score is above ``min_s_inhibition``
(0.1) times the name movers' mean summed direct effect.

**Backup name movers and compensation** (the paper's 10.10, 10.6, 10.2, 10.1, 11.2, 9.7,
9.0, 11.9; the issue's "the L10 head compensates when L9 is ablated"). The located name
movers are ablated together (``ablation="abc"``: each gets, at every position, its output
on the prompt's own ABC counterpart, a resample ablation from the ABC distribution, which
the paper mean-ablates over; ``"zero"``: zero), and
:func:`effects.self_repair` decomposes the change exactly (its two decompositions, on IO
and on S, subtracted: a :class:`~pytest_circuits.techniques.effects.SelfRepair` on LD).
``lost`` is the name movers' own lost direct effect. A head downstream makes up for part
of it in one of two ways (:meth:`effects.SelfRepair.role`): as a **backup** (its clean
direct effect has the sign of the lost effect, or is ~0, and grows: the paper's backup
name movers) or by **released suppression** (its clean direct effect opposes the IO, e.g.
a negative name mover, and shrinks toward 0 once the name movers no longer write the IO).
A head counts when the lower bound of its rise ΔDE is above ``min_backup`` (0.05) times
the mean lost effect. The **restored fraction** of each kind is ``sum of their ΔDE / lost``
(a ratio of means, with its interval). To keep the selection from inflating it, it is
*cross-fitted*: the prompts are split in two halves (each with both orders), the heads
chosen on one half are measured on the other, and vice versa. The whole change of LD
(``ioi logit diff change, name movers ablated``) is read from the logits.

**Detection** (:func:`detect_ioi`): **found** when the lower bound of LD is above
``min_logit_diff`` (0) and at least one name mover is located; **absent** when LD's upper
bound is at or below it or no head passes (a)-(d) even on the upper bounds; **undecided**
otherwise. Headline measurements (stable names, baseline keys): ``ioi logit diff (IO - S)``,
``name movers' summed DE(IO - S)``, ``ioi logit diff change, name movers ablated``,
``backup restored fraction``, ``released-suppression restored fraction``; per-head ones
(``name-mover DE(IO - S) L23H0``, ``S-inhibition score L20H0``) in ``Detection.more``.
Components: the name movers, then the S-inhibition heads, then the backups (``details``
says which is which). Not applicable (with the reason: the first names the vocabulary has)
when the model's tokenizer has too few single-token names or cannot write the templates.
The zoo (:mod:`pytest_circuits.zoo_tasks`) plants name movers behind an attention sink, with
decoys (the pattern with an unread output; IO preferred by suppressing S).

Measured (2026-11-26):

* planted ``tests/data/planted/ioi`` (2 layers x 4 heads, attention only, trained by
  ``scripts/train_ioi.py``): LD 15.99 [14.9, 17.2]; name movers L1H0 +2.99, L1H3 +2.81,
  L1H2 +1.99, L1H1 +1.52 (attention to IO 0.60, 0.51, 0.29, 0.23); S-inhibition head L0H1
  (attention END->S2 0.93): patching its END output from ABC costs the name movers 8.12
  [6.43, 9.99] of their 9.31; ablating the name movers lowers LD by 10.5 (nothing is
  downstream of layer 1 to compensate). The raw-hook ground truth names the same heads.
* control ``ioi_control`` (same texts, answer IO or S with probability 1/2): LD -0.066
  [-0.105, -0.025]; its heads attend to IO and S1 alike (e.g. L0H0 0.40 and 0.39), so no
  head prefers the IO: no name mover, nothing located.
* SmolLM2-135M: see ``claims/smollm2/test_ioi.py``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Sequence

from .. import hooks as H
from ..components import Head, parse_many
from ..detection import Detection
from ..devices import dtype_rtol
from ..errors import CircuitsError, MeasurementError, PromptSetError, bad
from ..interventions import ablate as _ablate
from ..interventions import patch as _patch
from ..measurement import Measurement
from ..models import info as model_info
from ..prompts import PromptSet
from ..scores import ComponentScores
from ..store import ActivationStore, resolve
from ..tasks.ioi import POSITIONS as _POSITIONS
from ..tasks.ioi import ioi as _build
from . import effects as E

CHECK = "ioi"
TITLE = "indirect object identification (name movers, S-inhibition, backup name movers)"
SOURCE = "arXiv:2211.00593"

MIN_LOGIT_DIFF = 0.0      # the model prefers IO over S (interval above 0)
MIN_ATTENTION = 0.2       # a fifth of END's attention on the name the head is about
MIN_EFFECT = 0.1          # a name mover's direct effect on LD: at least 0.1 logit
MIN_S_INHIBITION = 0.1    # an S-inhibition head: 10% of the name movers' direct effect
MIN_BACKUP = 0.05         # a backup: restores at least 5% of the lost direct effect
ABLATIONS = ("abc", "zero")
TOP = 3                   # name movers / S-inhibition heads given their own measurement


# ----------------------------------------------------------------------------- per-head scores
@dataclass(frozen=True, eq=False, kw_only=True)
class IOIScores(ComponentScores):
    """Per component and prompt, at END: the direct effect on the logit difference
    ``logit(IO) - logit(S)`` of every writer (a
    :class:`~pytest_circuits.scores.ComponentScores`: ``of("L9H9")``, ``measure("L9H9")``
    named ``"DE(IO - S) L9H9"``, ``ranking``, ``grid``, ``assert_top``), plus what the IOI
    criteria read per head: ``logit_diff`` ``[n]`` (read from the logits), ``attention``
    (``"io"``, ``"s1"``, ``"s2"`` and ``"sink"``, the attention to position 0: each ``[heads,
    n]`` in the order of :attr:`heads`) and ``abc_de`` (each head's direct effect on the same
    two tokens in the ABC counterpart's run, ``[heads, n]``, or None without counterparts).

    :meth:`quantity` gives any of them as its own ComponentScores over the heads:
    ``scores.quantity("attn_io").measure("L9H9")``, ``scores.quantity("share_s2").grid()``.
    The ``share_*`` quantities are attention as a share of the attention *off* position 0:
    ``attn / (1 - attn(position 0))``. A head that parks most of its attention on BOS (an
    attention sink, as real models do) and sends the rest to IO has a small ``attn_io``
    but a large ``share_io``; no IOI name is ever at position 0."""

    logit_diff: Any
    attention: dict = field(default_factory=dict)
    abc_de: Any = None
    name: str = "DE(IO - S) {}"
    title: str = "direct effects on logit(IO) - logit(S)"

    @property
    def heads(self) -> tuple[Head, ...]:
        """Every head, layer by layer (the rows of ``attention`` and ``abc_de``)."""
        L, nh = self.shape
        return tuple(Head(l, h) for l in range(L) for h in range(nh))

    def quantity(self, what: str) -> ComponentScores:
        """Per head and prompt: ``"attn_io"``, ``"attn_s1"``, ``"attn_s2"``, ``"de"`` (the
        direct effect on IO - S), ``"io_preference"`` (attn(IO) - attn(S1) - attn(S2)), the
        shares off position 0 ``"share_io"``, ``"share_s1"``, ``"share_s2"``,
        ``"share_preference"`` (``io_preference`` as a share), and ``"abc_drop"`` (the head's
        direct effect on IO - S minus its direct effect on the same two tokens in the ABC
        prompt's run, where neither name is in the context)."""
        if what not in _WHAT:
            raise CircuitsError(bad("what", what, f"one of {', '.join(_WHAT)}"))
        cache = self.__dict__.setdefault("_quantities", {})
        if what not in cache:
            cache[what] = self._quantity(what)
        return cache[what]

    def _quantity(self, what: str) -> ComponentScores:
        att = self.attention
        off = (1.0 - att["sink"]).clamp_min(1e-12) if att.get("sink") is not None else 1.0
        if what == "de":
            vals = self.values[[self._index[h] for h in self.heads]]
        elif what in ("attn_io", "attn_s1", "attn_s2"):
            vals = att[what[5:]]
        elif what in ("io_preference", "share_preference"):
            vals = att["io"] - att["s1"] - att["s2"]
            vals = vals / off if what == "share_preference" else vals
        elif what in ("share_io", "share_s1", "share_s2"):
            vals = att[what[6:]] / off
        else:                                                   # abc_drop
            if self.abc_de is None:
                raise CircuitsError("abc_drop needs the ABC counterparts (prompts with corrupted=...)")
            vals = self.values[[self._index[h] for h in self.heads]] - self.abc_de
        return ComponentScores(components=self.heads, values=vals, name=f"{_WHAT[what]} {{}}", title=_WHAT[what],
                               model=self.model, prompts=self.prompts, labels=self.labels,
                               provenance={**self.provenance, "what": what}, method=self.method,
                               shape=self.shape)


_WHAT = {"attn_io": "attention END->IO", "attn_s1": "attention END->S1", "attn_s2": "attention END->S2",
         "de": "DE(IO - S)", "io_preference": "IO preference", "share_io": "attention share END->IO",
         "share_s1": "attention share END->S1", "share_s2": "attention share END->S2",
         "share_preference": "IO preference (share)", "abc_drop": "DE(IO - S) drop under ABC"}


def _head(head: Any, shape: tuple[int, int]) -> Head:
    comp = parse_many(head)[0] if not isinstance(head, Head) else head
    if not isinstance(comp, Head) or not (0 <= comp.layer < shape[0] and 0 <= comp.head < shape[1]):
        raise CircuitsError(bad("head", str(head), f"a head L{{layer}}H{{head}} with layer < {shape[0]} "
                                                   f"and head < {shape[1]}"))
    return comp


def _require_ioi(prompts: Any) -> None:
    if not isinstance(prompts, PromptSet):
        raise PromptSetError(bad("prompts", type(prompts).__name__, "an IOI PromptSet (tasks.ioi(model, ...))"))
    prompts.require("answers", "foils")
    missing = [k for k in _POSITIONS if k not in prompts.meta]
    if missing:
        raise PromptSetError(f"prompt set {prompts.name!r} has no {missing} in its meta: build it with "
                             "pytest_circuits.tasks.ioi.ioi(model, ...)")


def logit_diff(model: Any, prompts: PromptSet, *, intervention: Any = None,
               activations: ActivationStore | None = None) -> Measurement:
    """``logit(IO) - logit(S)`` at END, per prompt."""
    from ..metrics import logit_diff as _ld

    _require_ioi(prompts)
    return _ld(model, prompts, intervention=intervention, activations=activations, name="ioi logit diff (IO - S)")


def head_scores(model: Any, prompts: PromptSet, *, activations: ActivationStore | None = None) -> IOIScores:
    """The direct effect on LD of every writer, and the attention from END to IO, S1, S2 of
    every head (:class:`IOIScores`; one clean forward, from the store's cache when known)."""
    import torch

    _require_ioi(prompts)
    store = resolve(activations)
    L = int(model.cfg.n_layers)
    names = [H.last(H.pattern(l)) for l in range(L)]
    # one clean forward: the patterns with what the direct effects read (a prefetch: anything
    # decompose needs beyond these it reads itself)
    readout = ([H.last(H.EMBED), H.last(H.FINAL_SCALE), H.LOGITS_LAST] + [H.last(H.z(l)) for l in range(L)]
               + [H.last(H.mlp_out(l)) for l in range(L)]
               + ([H.last(H.POS_EMBED)] if getattr(model.cfg, "positional_embedding_type", "standard") == "standard"
                  and H.POS_EMBED in model.hook_dict else []))     # learned positions (GPT-2)
    pat = store.get(model, prompts, names + readout)
    rows = torch.arange(len(prompts))

    def at(key: str) -> Any:
        pos = torch.tensor(prompts.meta[key]) if key != "sink" else torch.zeros(len(prompts), dtype=torch.long)
        return torch.cat([pat[nm][rows, :, pos].double().T for nm in names])         # [L*H, n]

    de_io = E.decompose(model, prompts, token="answer", activations=store)
    de_s = E.decompose(model, prompts, token=list(prompts.foil_ids), activations=store)
    abc = _abc_de(model, prompts, store) if prompts.corrupted is not None else None
    label = model_info(model).label
    return IOIScores(components=de_io.components, values=de_io.values - de_s.values, model=label,
                     prompts=prompts.name, labels=prompts.prompts, provenance={"prompts": prompts.name},
                     shape=(L, int(model.cfg.n_heads)), logit_diff=de_io.logit - de_s.logit,
                     attention={k: at(k + "_pos" if k != "sink" else k) for k in ("io", "s1", "s2", "sink")},
                     abc_de=abc.reshape(-1, len(prompts)) if abc is not None else None)


def _abc_de(model: Any, prompts: PromptSet, store: ActivationStore) -> Any:
    """``[L, H, n]`` each head's direct effect on ``logit(IO) - logit(S)`` (the clean prompt's
    IO and S) at END of the ABC counterpart's run, with that run's final-norm scale."""
    import torch

    L, nh = int(model.cfg.n_layers), int(model.cfg.n_heads)
    names = [H.last(H.z(l)) for l in range(L)] + [H.last(H.FINAL_SCALE)]
    got = store.get(model, prompts.corrupted, names)
    scale = got[H.last(H.FINAL_SCALE)].double().reshape(-1)
    W_O = E.attn_output_weights(model)
    w = _lu_direction(model, prompts)                                                # [n, d]
    out = torch.zeros(L, nh, len(prompts), dtype=torch.float64)
    for l in range(L):
        z = got[H.last(H.z(l))].double()                                             # [n, H, d_head]
        out[l] = (torch.einsum("nhe,hed->hnd", z, W_O[l]) * w).sum(-1) / scale
    return out


# ----------------------------------------------------------------------------- name movers
@dataclass(frozen=True)
class Located:
    """A located head and its measurement (the score that ranks it)."""

    head: Head
    score: Measurement

    def __repr__(self) -> str:
        return f"{self.head} {self.score.mean:+.3f} [{self.score.lower:.3f}, {self.score.upper:.3f}]"


def _mover_checks(scores: IOIScores, head: Head, min_effect: float) -> list[tuple[str, Measurement, float]]:
    """The interval properties of a name mover, as (property, measurement, threshold): IO
    preferred over S1 + S2 (per prompt, which one gets more attention does not depend on how
    much is parked on a sink, and the absolute difference is the less noisy: dividing by a
    per-prompt sink share widens its interval), the direct effect on IO - S, and (with the
    ABC counterparts) its drop when IO and S leave the context."""
    out = [("IO preferred over S1 + S2", scores.quantity("io_preference").measure(head, record=False), 0.0),
           ("DE(IO - S)", scores.measure(head, name=f"name-mover DE(IO - S) {head}", record=False),
            min_effect)]
    if scores.abc_de is not None:
        out.append(("DE drop under ABC", scores.quantity("abc_drop").measure(head, record=False), 0.0))
    return out


def name_movers(scores: IOIScores, *, min_attention: float = MIN_ATTENTION,
                min_effect: float = MIN_EFFECT) -> tuple[Located, ...]:
    """Name movers: heads whose mean attention share END -> IO (off position 0) is at least
    ``min_attention``, that prefer IO over S1 and S2 together (lower bound of
    ``attn(IO) - attn(S1) - attn(S2)`` above 0), whose direct effect on LD has its lower bound above ``min_effect``,
    and (with ABC counterparts) whose direct effect falls when the IO and S names are
    replaced (lower bound above 0: it writes the names it reads, not a constant); largest
    direct effect first."""
    _check_threshold("min_attention", min_attention, 0.0, 1.0)
    _check_threshold("min_effect", min_effect, 0.0, None)
    out = [Located(head, checks[1][1]) for head, checks in _attending_io(scores, min_attention, min_effect)
           if all(m.lower > t for _, m, t in checks)]
    return tuple(sorted(out, key=lambda x: -x.score.mean))


def _attending_io(scores: IOIScores, min_attention: float, min_effect: float) -> Any:
    """``(head, its name-mover properties)`` for each head whose mean attention share END -> IO
    reaches ``min_attention``."""
    L, nh = scores.shape
    share = scores.quantity("share_io").grid()
    for l in range(L):
        for h in range(nh):
            if float(share[l, h]) >= min_attention:
                yield Head(l, h), _mover_checks(scores, Head(l, h), min_effect)


def possible_name_movers(scores: IOIScores, *, min_attention: float = MIN_ATTENTION,
                         min_effect: float = MIN_EFFECT) -> list[tuple[Head, str]]:
    """Heads that are not name movers on the pessimistic bounds but could be on the optimistic
    ones (every property's upper bound past its threshold), with the properties in doubt: what
    makes a verdict undecided rather than absent."""
    out = []
    for head, checks in _attending_io(scores, min_attention, min_effect):
        if all(m.upper > t for _, m, t in checks) and not all(m.lower > t for _, m, t in checks):
            out.append((head, "; ".join(f"{what} {m.mean:.3g} [{m.lower:.3g}, {m.upper:.3g}] vs {t:g}"
                                        for what, m, t in checks if not m.lower > t)))
    return out


def negative_name_movers(scores: IOIScores, *, min_attention: float = MIN_ATTENTION,
                         min_effect: float = MIN_EFFECT) -> tuple[Located, ...]:
    """Heads attending END -> IO as name movers do (attention share off position 0) whose
    direct effect on LD has its upper bound below ``-min_effect`` (the paper's 10.7, 11.10);
    most negative first."""
    _check_threshold("min_attention", min_attention, 0.0, 1.0)
    _check_threshold("min_effect", min_effect, 0.0, None)
    L, nh = scores.shape
    share = scores.quantity("share_io").grid()
    out = []
    for l in range(L):
        for h in range(nh):
            if float(share[l, h]) >= min_attention:
                de = scores.measure(Head(l, h), record=False)
                if de.upper < -min_effect:
                    out.append(Located(Head(l, h), de))
    return tuple(sorted(out, key=lambda x: x.score.mean))


# ----------------------------------------------------------------------------- S-inhibition
@dataclass(frozen=True, eq=False)
class SInhibition:
    """S-inhibition scores of the candidates (heads before the name movers attending END -> S2):
    ``scores`` is a :class:`~pytest_circuits.scores.ComponentScores` of the candidates
    (``scores.measure("L7H3")``: ``S-inhibition score L7H3``; ``scores.grid()``: NaN where a
    head is not a candidate)."""

    name_movers: tuple[Head, ...]
    candidates: tuple[Head, ...]
    scores: ComponentScores          # per candidate and prompt: the drop of the name movers' DE (logits)
    mover_de: Measurement            # the name movers' summed clean DE on LD
    threshold: float                 # in logits: min_s_inhibition x mover_de.mean
    heads: tuple[Located, ...]       # the located S-inhibition heads, largest first


def _lu_direction(model: Any, prompts: PromptSet) -> Any:
    """``[n, d_model]`` float64 ``W_U[:, IO] - W_U[:, S]`` (the centring cancels)."""
    import torch

    W_U = model.W_U.detach()
    io = torch.tensor(prompts.answer_ids, device=W_U.device)
    s = torch.tensor(prompts.foil_ids, device=W_U.device)
    return (W_U[:, io] - W_U[:, s]).to("cpu", torch.float64).T


def movers_de(model: Any, prompts: PromptSet, movers: Sequence[Head], *, intervention: Any = None,
              scale: Any = None, activations: ActivationStore | None = None) -> Any:
    """``[n]`` the summed direct effect on LD of ``movers`` (under ``intervention``), with the
    final-norm scale ``scale`` (default: the clean run's)."""
    import torch

    store = resolve(activations)
    if scale is None:
        scale = store.get(model, prompts, [H.last(H.FINAL_SCALE)])[H.last(H.FINAL_SCALE)].double().reshape(-1)
    W_O = E.attn_output_weights(model)
    w = _lu_direction(model, prompts)
    layers = sorted({h.layer for h in movers})
    names = [H.last(H.z(l)) for l in layers]
    before, after = store.split_at_resume(names, intervention)
    got = store.get(model, prompts, before) if before else {}
    if after:
        got.update(store.get(model, prompts, after, intervention))
    total = torch.zeros(len(prompts), dtype=torch.float64)
    for h in movers:
        z = got[H.last(H.z(h.layer))][:, h.head].double()                          # [n, d_head]
        total += (z @ W_O[h.layer, h.head] * w).sum(-1)
    return total / scale


def s_inhibition(model: Any, prompts: PromptSet, movers: Sequence[Any], scores: IOIScores, *,
                 min_attention: float = MIN_ATTENTION, min_s_inhibition: float = MIN_S_INHIBITION,
                 activations: ActivationStore | None = None) -> SInhibition:
    """Score each head before the last name mover that attends END -> S2: the fall of the
    name movers' summed direct effect on LD when its output at END is patched from the ABC
    counterpart (see the module docstring). One batched forward per layer of candidates
    (``store.get_many``), each from that layer on, at END only."""
    _require_ioi(prompts)
    prompts.require("corrupted")
    _check_threshold("min_attention", min_attention, 0.0, 1.0)
    _check_threshold("min_s_inhibition", min_s_inhibition, 0.0, None)
    store = resolve(activations)
    heads = tuple(_head(m.head if isinstance(m, Located) else m, scores.shape) for m in movers)
    if not heads:
        raise CircuitsError(bad("movers", list(movers), "at least one name mover"))
    last = max(h.layer for h in heads)
    mean_s2 = scores.quantity("share_s2").grid()
    L, nh = scores.shape
    cands = tuple(Head(l, h) for l in range(last) for h in range(nh)
                  if float(mean_s2[l, h]) >= min_attention and Head(l, h) not in heads)
    _prefetch_corrupted(model, prompts, {c.layer for c in cands}, (), store)
    scale = store.get(model, prompts, [H.last(H.FINAL_SCALE)])[H.last(H.FINAL_SCALE)].double().reshape(-1)
    clean = movers_de(model, prompts, heads, scale=scale, activations=store)
    _check_same(clean, sum(scores.of(h) for h in heads), "the name movers' direct effect",
                dtype_rtol(model, 1e-4))
    label = model_info(model).label
    mover_de = Measurement.from_values("name movers' summed DE(IO - S)", clean, model=label,
                                       labels=prompts.prompts, record=False)
    threshold = min_s_inhibition * mover_de.mean
    # batch the patched forwards: the candidates of one layer run together
    by_layer: dict[int, list[Head]] = {}
    for c in cands:
        by_layer.setdefault(c.layer, []).append(c)
    drops: dict[Head, Any] = {}
    keys: dict[Head, str] = {}

    def reads(iv: Any) -> list[str]:
        # the name movers at or before the patched layer are as in the clean run
        return [H.last(H.z(l)) for l in sorted({h.layer for h in heads if h.layer > iv.layer})]

    every = [_patch(model, c, positions="last") for group in by_layer.values() for c in group]
    if len(every) > 1:
        store.get_many(model, prompts, reads, every)      # every layer's candidates stacked
    for layer, group in by_layer.items():
        downstream = [h for h in heads if h.layer > layer]
        ivs = [_patch(model, c, positions="last") for c in group]
        before = movers_de(model, prompts, downstream, scale=scale, activations=store)
        for c, iv in zip(group, ivs):
            drops[c] = before - movers_de(model, prompts, downstream, intervention=iv, scale=scale, activations=store)
            keys[c] = iv.key
    import torch

    order = tuple(drops)
    sc = ComponentScores(components=order, name="S-inhibition score {}", title="S-inhibition score",
                         values=torch.stack([drops[c] for c in order]) if order else torch.zeros((0, len(prompts))),
                         model=label, prompts=prompts.name, labels=tuple(prompts.prompts),
                         provenance={"prompts": prompts.name, "name_movers": [str(h) for h in heads]}, shape=(L, nh))
    scored = {c: sc.measure(c, record=False, provenance={"head": str(c), "intervention": keys[c]}) for c in order}
    located = tuple(sorted((Located(c, m) for c, m in scored.items() if m.lower > threshold),
                           key=lambda x: -x.score.mean))
    return SInhibition(heads, cands, sc, mover_de, threshold, located)


def _prefetch_corrupted(model: Any, prompts: PromptSet, last_layers: Any, full_layers: Any,
                       store: ActivationStore) -> None:
    """Read, in one forward of the corrupted prompts, the ``hook_z`` the patches will take
    from it: at the last position for ``last_layers`` (S-inhibition candidates), at every
    position for ``full_layers`` (the ablated name movers)."""
    names = [H.last(H.z(l)) for l in sorted(last_layers)] + [H.z(l) for l in sorted(full_layers)]
    if names:
        store.get(model, prompts.corrupted, names)


# ----------------------------------------------------------------------------- compensation
@dataclass(frozen=True, eq=False)
class Compensation:
    """What happens to the direct effects on LD when the name movers are ablated."""

    repair: Any                       # effects.SelfRepair on the logit difference (IO minus S)
    name_movers: tuple[Head, ...]
    backups: tuple[Located, ...]      # selected on every prompt; score: ΔDE on LD
    restored: Measurement             # cross-fitted: sum of backups' ΔDE / lost
    released: tuple[Located, ...]     # heads whose suppression of IO (vs S) the ablation released
    released_fraction: Measurement    # cross-fitted: their summed ΔDE / lost
    lost: Measurement                 # the name movers' lost direct effect on LD
    total: Measurement                # change of LD under the ablation (read from the logits)
    heads_net: Measurement            # every other head's summed ΔDE / lost (no selection)
    threshold: float                  # a backup's ΔDE lower bound must exceed this (logits)

    @functools.cached_property
    def delta_scores(self) -> ComponentScores:
        """Every component's ΔDE on LD under the ablation but the ablated name movers' own, as a
        :class:`~pytest_circuits.scores.ComponentScores` (``grid()``: the heads' mean ΔDE, NaN
        for the name movers), with the ablation's no-op flags (:attr:`effects.SelfRepair.delta_scores`
        less their rows)."""
        whole = self.repair.delta_scores
        keep = [i for i, c in enumerate(whole.components) if c not in set(self.name_movers)]
        return dataclasses.replace(whole, components=tuple(whole.components[i] for i in keep),
                                   values=whole.values[keep])

    def table(self, k: int = 8) -> str:
        return self.repair.table(k)

    def by_role(self, role: str) -> Measurement:
        """Every downstream head whose role (on the means over all prompts) is ``role``
        (``"backup"`` or ``"released suppression"``), however small its rise: their summed
        ΔDE over the lost direct effect. No threshold and no cross-fitting: the whole share
        of that kind of compensation, for a claim that it is small."""
        if role not in ("backup", "released suppression"):
            raise CircuitsError(bad("role", role, "'backup' or 'released suppression'"))
        import torch

        ablated = set(self.name_movers)
        first = min(h.layer for h in self.name_movers)
        rows = [i for i, c in enumerate(self.repair.components)
                if isinstance(c, Head) and c not in ablated and c.layer >= first
                and self.repair.role(c) == role]
        num = self.repair.delta_de[rows].sum(0) if rows else torch.zeros_like(self.repair.lost)
        return Measurement.from_ratio(f"every {role} head's ΔDE / lost", num, self.repair.lost,
                                      model=self.repair.model, labels=self.repair.labels,
                                      provenance={"heads": [str(self.repair.components[i]) for i in rows]})


def _logit_diff_repair(model: Any, prompts: PromptSet, abl: Any, store: ActivationStore) -> Any:
    """:func:`effects.self_repair` on ``logit(IO) - logit(S)``: the decompositions on the
    IO and on the S token subtracted (every term is linear in the unembedding direction;
    each is checked against the logits by ``self_repair``)."""
    a = E.self_repair(model, prompts, abl, token="answer", activations=store)
    b = E.self_repair(model, prompts, abl, token=list(prompts.foil_ids), activations=store)
    return dataclasses.replace(
        a, clean_de=a.clean_de - b.clean_de, delta_de=a.delta_de - b.delta_de,
        norm_term=a.norm_term - b.norm_term, total=a.total - b.total, clean_logit=a.clean_logit - b.clean_logit,
        measured_total=(a.measured_total - b.measured_total) if a.measured_total is not None else None,
        constants={k: a.constants[k] - b.constants[k] for k in a.constants})


def _halves(n: int) -> tuple[list[int], list[int]]:
    """Two halves of ``range(n)`` that each hold both orders (prompts alternate ABBA/BABA)."""
    first = [i for i in range(n) if (i // 2) % 2 == 0]
    return first, [i for i in range(n) if (i // 2) % 2 == 1]


def _select(repair: Any, rows: Sequence[int], candidates: Sequence[int], min_fraction: float, role: str,
            label: str) -> list[tuple[int, Measurement]]:
    """Heads chosen on the prompts ``rows`` whose role there (on the means) is ``role``
    ("backup" or "released suppression", as :meth:`effects.SelfRepair.role` defines them)
    and whose ΔDE has its lower bound above ``min_fraction`` x the mean lost effect there.
    Returns (index, ΔDE oriented along the lost effect)."""
    lost = repair.lost[list(rows)]
    sign = 1.0 if float(lost.mean()) >= 0 else -1.0
    threshold = min_fraction * abs(float(lost.mean()))
    chosen = []
    for i in candidates:
        d = repair.delta_de[i][list(rows)] * sign
        dm, cm = float(d.mean()), float(repair.clean_de[i][list(rows)].mean()) * sign
        is_backup = cm >= -E.SILENT_FRACTION * dm
        if dm <= threshold or is_backup != (role == "backup"):
            continue
        m = Measurement.from_values(f"{role} ΔDE(IO - S) {repair.components[i]}", d, model=label, record=False)
        if m.lower > threshold:
            chosen.append((i, m))
    return chosen


def _cross_fitted(repair: Any, candidates: Sequence[int], min_fraction: float, role: str, label: str) -> Any:
    """``[n]`` per prompt, the summed ΔDE of the heads of ``role`` chosen on the *other* half."""
    import torch

    n = len(repair.lost)
    num = torch.zeros(n, dtype=torch.float64)
    a, b = _halves(n)
    for pick, use in ((a, b), (b, a)):
        chosen = _select(repair, pick, candidates, min_fraction, role, label)
        if chosen:
            num[use] = repair.delta_de[[i for i, _ in chosen]][:, use].sum(0)
    return num


def compensation(model: Any, prompts: PromptSet, name_movers: Sequence[Any], *, ablation: str = "abc",
                 min_backup: float = MIN_BACKUP, activations: ActivationStore | None = None) -> Compensation:
    """Ablate ``name_movers`` together and measure which heads' direct effect on LD rises
    (backups) and the cross-fitted fraction of the lost direct effect they restore (see
    the module docstring). ``prompts`` needs answers and foils (and ``corrupted`` for
    ``ablation="abc"``); it need not be an IOI set."""
    import torch

    if not isinstance(prompts, PromptSet):
        raise PromptSetError(bad("prompts", type(prompts).__name__, "a PromptSet with answers and foils"))
    prompts.require("answers", "foils")
    if ablation not in ABLATIONS:
        raise CircuitsError(bad("ablation", ablation, f"one of {ABLATIONS}"))
    _check_threshold("min_backup", min_backup, 0.0, None)
    if len(prompts) < 4:
        raise PromptSetError(bad("prompts", f"{len(prompts)} prompts", "at least 4 (two halves of two "
                                                                       "for the cross-fitted fraction)"))
    movers = parse_many([m.head if isinstance(m, Located) else m for m in name_movers], model)
    if not movers or not all(isinstance(h, Head) for h in movers):
        raise CircuitsError(bad("name_movers", [str(m) for m in movers], "at least one head L{layer}H{head}"))
    store = resolve(activations)
    if ablation == "abc":
        prompts.require("corrupted")
        abl = _patch(model, list(movers))
    else:
        abl = _ablate(model, list(movers), "zero")
    repair = _logit_diff_repair(model, prompts, abl, store)
    why = repair.why_nothing_lost()
    if why is not None:
        raise MeasurementError(f"the compensation for {[str(h) for h in movers]} is undefined: {why}")
    label = model_info(model).label
    ablated = set(repair.ablated)
    first = min(h.layer for h in movers)
    cands = [i for i, c in enumerate(repair.components)
             if isinstance(c, Head) and i not in ablated and c.layer >= first]
    n = len(prompts)
    threshold = min_backup * abs(float(repair.lost.mean()))
    located = {role: tuple(sorted((Located(repair.components[i], m)
                                   for i, m in _select(repair, range(n), cands, min_backup, role, label)),
                                  key=lambda x: -x.score.mean))
               for role in ("backup", "released suppression")}
    prov = {"prompts": prompts.name, "ablation": abl.key, "name_movers": [str(h) for h in movers],
            "selection": "cross-fitted halves"}
    fractions = {}
    for role, name in (("backup", "backup restored fraction"),
                       ("released suppression", "released-suppression restored fraction")):
        fractions[role] = Measurement.from_ratio(
            name, _cross_fitted(repair, cands, min_backup, role, label), repair.lost, model=label,
            labels=prompts.prompts, provenance=prov, denominator_name="the name movers' lost direct effect on IO - S")
    net = Measurement.from_ratio("other heads' net ΔDE / lost", repair.delta_de[cands].sum(0), repair.lost,
                                 model=label, labels=prompts.prompts, provenance=prov, record=False)
    lost = Measurement.from_values("name movers' lost DE(IO - S)", repair.lost, model=label,
                                   labels=prompts.prompts, provenance=prov, record=False)
    total = Measurement.from_values("ioi logit diff change, name movers ablated", repair.measured_total,
                                    model=label, labels=prompts.prompts, provenance=prov)
    return Compensation(repair, tuple(movers), located["backup"], fractions["backup"],
                        located["released suppression"], fractions["released suppression"], lost, total, net,
                        threshold)


# ----------------------------------------------------------------------------- detection
@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything the IOI check measures on one prompt set (:func:`analyse`)."""

    model: str
    prompts: PromptSet
    scores: IOIScores
    logit_diff: Measurement
    name_movers: tuple[Located, ...]
    negative_name_movers: tuple[Located, ...]
    mover_de: Measurement | None                 # the name movers' summed DE on LD
    s_inhibition: SInhibition | None            # None without name movers
    compensation: Compensation | None           # None without name movers (or nothing lost)
    notes: tuple[str, ...] = ()


def analyse(model: Any, prompts: PromptSet, *, min_attention: float = MIN_ATTENTION,
            min_effect: float = MIN_EFFECT, min_s_inhibition: float = MIN_S_INHIBITION,
            min_backup: float = MIN_BACKUP, ablation: str = "abc",
            activations: ActivationStore | None = None) -> Analysis:
    """Head scores, logit difference, name movers (and negative ones), S-inhibition heads
    and the compensation when the name movers are ablated, on an IOI prompt set."""
    _require_ioi(prompts)
    if ablation not in ABLATIONS:
        raise CircuitsError(bad("ablation", ablation, f"one of {ABLATIONS}"))
    for k, v, hi in (("min_attention", min_attention, 1.0), ("min_effect", min_effect, None),
                     ("min_s_inhibition", min_s_inhibition, None), ("min_backup", min_backup, None)):
        _check_threshold(k, v, 0.0, hi)
    store = resolve(activations)
    label = model_info(model).label
    scores = head_scores(model, prompts, activations=store)
    ld = Measurement.from_values("ioi logit diff (IO - S)", scores.logit_diff, model=label,
                                 labels=prompts.prompts, provenance={"prompts": prompts.name})
    movers = name_movers(scores, min_attention=min_attention, min_effect=min_effect)
    negatives = negative_name_movers(scores, min_attention=min_attention, min_effect=min_effect)
    if not movers:
        return Analysis(label, prompts, scores, ld, movers, negatives, None, None, None)
    mover_de = Measurement.from_values("name movers' summed DE(IO - S)",
                                       sum(scores.of(m.head) for m in movers), model=label,
                                       labels=prompts.prompts,
                                       provenance={"name_movers": [str(m.head) for m in movers]})
    if ablation == "abc":       # the corrupted run's outputs both analyses patch in: one forward
        last = max(m.head.layer for m in movers)
        mean_s2 = scores.quantity("share_s2").grid()
        _prefetch_corrupted(model, prompts, {l for l in range(last) if bool((mean_s2[l] >= min_attention).any())},
                            {m.head.layer for m in movers}, store)
    sinh = s_inhibition(model, prompts, movers, scores, min_attention=min_attention,
                        min_s_inhibition=min_s_inhibition, activations=store)
    notes: tuple[str, ...] = ()
    try:
        comp = compensation(model, prompts, [m.head for m in movers], ablation=ablation, min_backup=min_backup,
                            activations=store)
    except MeasurementError as e:
        comp, notes = None, (f"compensation not measured: {e}",)
    return Analysis(label, prompts, scores, ld, movers, negatives, mover_de, sinh, comp, notes)


def detect_ioi(model: Any, *, seed: int = 0, n: int = 64, activations: ActivationStore | None = None,
               prompts: PromptSet | None = None, min_logit_diff: float = MIN_LOGIT_DIFF,
               min_attention: float = MIN_ATTENTION, min_effect: float = MIN_EFFECT,
               min_s_inhibition: float = MIN_S_INHIBITION, min_backup: float = MIN_BACKUP,
               ablation: str = "abc", top: int = TOP) -> Detection:
    """The IOI check: logit difference, name movers, S-inhibition heads, backup name movers
    and the fractions of the lost direct effect made up (module docstring), from
    :func:`analyse` on ``tasks.ioi(model, n=n, seed=seed)`` (or ``prompts``).

    **Found** when the lower bound of LD is above ``min_logit_diff`` and at least one name
    mover is located (every property on its pessimistic bound: :func:`name_movers`);
    **absent** when LD's upper bound is at or below ``min_logit_diff`` or no head could be a
    name mover even on the optimistic bounds; **undecided** otherwise (the reason names the
    straddling measurement or the head in doubt). Not applicable when the vocabulary has too
    few first names as single tokens (or cannot write the templates): the reason says which
    names it has."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 4:
        raise CircuitsError(bad("n", n, "an int >= 4 (two halves with both orders)"))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CircuitsError(bad("seed", seed, "an int"))
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise CircuitsError(bad("top", top, "a positive int"))
    if ablation not in ABLATIONS:
        raise CircuitsError(bad("ablation", ablation, f"one of {ABLATIONS}"))
    for k, v, hi in (("min_attention", min_attention, 1.0), ("min_effect", min_effect, None),
                     ("min_s_inhibition", min_s_inhibition, None), ("min_backup", min_backup, None)):
        _check_threshold(k, v, 0.0, hi)
    _check_threshold("min_logit_diff", min_logit_diff, None, None)
    label = model_info(model).label
    arch = E.head_write_problem(model)      # the name movers' direct effects read z W_O
    if arch is not None:
        return Detection.not_applicable(CHECK, TITLE, arch, source=SOURCE, model=label)
    if prompts is None:
        try:
            prompts = _build(model, n=n, seed=seed)
        except PromptSetError as e:
            return Detection.not_applicable(CHECK, TITLE, _not_applicable(model, e), source=SOURCE, model=label)
    a = analyse(model, prompts, min_attention=min_attention, min_effect=min_effect,
                min_s_inhibition=min_s_inhibition, min_backup=min_backup, ablation=ablation,
                activations=activations)
    return _detection(a, min_logit_diff=min_logit_diff, min_attention=min_attention, min_effect=min_effect,
                      min_s_inhibition=min_s_inhibition, min_backup=min_backup, ablation=ablation, top=top)


def _not_applicable(model: Any, error: Exception) -> str:
    """Why the IOI prompts cannot be written for ``model``, in the vocabulary's terms."""
    from ..tasks.ioi import MIN_NAMES, NAMES, TooFewNamesError, usable_names

    if isinstance(error, TooFewNamesError):
        have = usable_names(model)
        return (f"the vocabulary has {len(have)} of the {len(NAMES)} common first names as single tokens "
                f"(after a space){': ' + ', '.join(have) if have else ''}; an IOI prompt and its ABC "
                f"counterpart need at least {MIN_NAMES} to draw from")
    return f"the IOI templates cannot be written as single-token names in this vocabulary: {error}"


def _detection(a: Analysis, *, min_logit_diff: float, min_attention: float, min_effect: float,
               min_s_inhibition: float, min_backup: float, ablation: str, top: int) -> Detection:
    """The :class:`Detection` of an :class:`Analysis`: headline measurements, per-head ones
    (``more``), components (name movers, S-inhibition heads, backups), heatmaps, details."""
    shape = a.scores.shape
    headline: list[Measurement] = [a.logit_diff]
    more: list[Measurement] = [dataclasses.replace(m.score, name=f"name-mover DE(IO - S) {m.head}")
                               for m in a.name_movers[:top]]
    heatmaps: dict[str, Any] = {"attention END->IO": a.scores.quantity("attn_io").grid(),
                                "name-mover score: DE(IO - S)": a.scores.grid()}
    components: list[tuple[str, float]] = [(str(m.head), m.score.mean) for m in a.name_movers]
    lines = [f"name movers (attention share END->IO >= {min_attention}, IO preferred over S1+S2, DE(IO - S) "
             f"lower bound > {min_effect}, DE falls under ABC): " + (", ".join(map(repr, a.name_movers)) or "none")]
    if a.negative_name_movers:
        lines.append("negative name movers (attend to IO, DE upper bound < -min_effect): "
                     + ", ".join(map(repr, a.negative_name_movers)))
    if a.mover_de is not None:
        headline.append(a.mover_de)
    sinh, comp = a.s_inhibition, a.compensation
    if sinh is not None:
        more += [x.score for x in sinh.heads[:top]]
        components += [(str(x.head), x.score.mean) for x in sinh.heads]
        lines.append(f"S-inhibition heads (attention share END->S2 >= {min_attention}; patching their END output "
                     f"from ABC lowers the name movers' DE by > {min_s_inhibition} x "
                     f"{sinh.mover_de.mean:.3f}, lower bound): " + (", ".join(map(repr, sinh.heads)) or "none")
                     + f" of {len(sinh.candidates)} candidates")
        heatmaps["S-inhibition score"] = _unscored_zero(sinh.scores.grid())
    if comp is not None:
        headline += [comp.total, comp.restored, comp.released_fraction]
        components += [(str(b.head), b.score.mean) for b in comp.backups]
        heatmaps["backup increase: ΔDE(IO - S) with the name movers ablated"] = _unscored_zero(
            comp.delta_scores.grid())
        lines.append(f"name movers ablated ({ablation}): lost DE {comp.lost.mean:.3f}, LD changes by "
                     f"{_interval(comp.total)}; every other head together makes up {comp.heads_net.mean:+.3f} "
                     "of the loss")
        lines.append(f"backup name movers (role backup, ΔDE(IO - S) lower bound > {min_backup} x lost): "
                     + (", ".join(map(repr, comp.backups)) or "none")
                     + f"; restored fraction {_interval(comp.restored)} (cross-fitted)")
        lines.append("released suppression (clean DE against IO, rising toward 0): "
                     + (", ".join(map(repr, comp.released)) or "none")
                     + f"; restored fraction {_interval(comp.released_fraction)} (cross-fitted)")
    lines += list(a.notes)
    de = a.scores.grid()
    top_de = sorted(((float(de[l, h]), Head(l, h)) for l in range(shape[0]) for h in range(shape[1])),
                    key=lambda x: -abs(x[0]))[:5]
    lines.append("largest direct effects on IO - S: " + ", ".join(
        f"{h} {v:+.3f} (attn IO {float(a.scores.quantity('attn_io').of(h).mean()):.2f}, "
        f"S2 {float(a.scores.quantity('attn_s2').of(h).mean()):.2f})" for v, h in top_de))
    from ..detection import straddle

    found = bool(a.logit_diff.lower > min_logit_diff and a.name_movers)
    possible = [] if a.name_movers else possible_name_movers(a.scores, min_attention=min_attention,
                                                             min_effect=min_effect)
    excluded = a.logit_diff.upper <= min_logit_diff or (not a.name_movers and not possible)
    verdict: dict[str, Any] = {"found": found}
    if not found and not excluded:
        why = [straddle(a.logit_diff, min_logit_diff)] + [f"{h} could be a name mover ({doubt})"
                                                          for h, doubt in possible[:3]]
        verdict.update(undecided=True, reason="; ".join(w for w in why if w))
    if possible:
        lines.append("possible name movers (on the optimistic bounds only): "
                     + "; ".join(f"{h}: {doubt}" for h, doubt in possible))
    heatmaps["attention share END->IO (off BOS)"] = a.scores.quantity("share_io").grid()
    criterion = (f"the lower bound of logit(IO) - logit(S) is above {min_logit_diff} and at least one name mover "
                 f"is located: a head at END whose mean attention share on IO (of its attention off position 0, "
                 f"so an attention sink does not hide it) is >= {min_attention}, that attends to IO more than to "
                 f"S1 and S2 together, whose direct effect on IO - S has a lower bound above {min_effect}, and "
                 "whose direct effect falls when the ABC counterpart replaces the names (it writes the name it "
                 "reads); absent when the logit difference's upper bound is at or below "
                 f"{min_logit_diff} or no head passes on the optimistic bounds; S-inhibition heads and backup "
                 "name movers are reported, not required")
    return Detection(check=CHECK, title=TITLE, source=SOURCE, model=a.model, applicable=True, **verdict,
                     criterion=criterion, measurements=tuple(headline), more=tuple(more),
                     components=tuple(components), heatmaps=heatmaps, details="\n".join(lines))


def _unscored_zero(grid: Any) -> Any:
    """A heatmap of a grid: 0 (the colour of no effect) where a head is not scored (NaN), as the
    checkup card writes it (its JSON has no NaN)."""
    import numpy as np

    return np.where(np.isnan(grid), 0.0, grid)


def _interval(m: Measurement) -> str:
    return f"{m.mean:.3f} [{m.lower:.3f}, {m.upper:.3f}]"


# ----------------------------------------------------------------------------- helpers
def _check_threshold(name: str, value: Any, lo: float | None, hi: float | None) -> None:
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        rng = f"in [{lo}, {hi}]" if lo is not None and hi is not None else (
            f">= {lo}" if lo is not None else "finite")
        raise CircuitsError(bad(name, value, f"a number {rng}"))


def _check_same(a: Any, b: Any, what: str, rtol: float = 1e-4) -> None:
    """Two computations of the same per-prompt numbers must agree (float error only: ``rtol``
    of the larger of 1 and their size; :func:`pytest_circuits.devices.dtype_rtol` for the
    model's dtype)."""
    gap = float((a - b).abs().max()) if len(a) else 0.0
    if gap > rtol * max(1.0, float(b.abs().max())):
        raise MeasurementError(f"{what} computed from hook_z does not match the decomposition (off by {gap:.3g})")
