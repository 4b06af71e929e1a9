"""Attention-head kinds on repeated random tokens: induction, previous-token and
duplicate-token heads, and the in-context learning they do (Olsson et al. 2022, "In-context
Learning and Induction Heads", arXiv:2209.11895).

**Prompts**: :func:`pytest_circuits.tasks.induction.repeated_tokens`, ``[BOS, r_1..r_T,
r_1..r_T]`` with ``r_1`` at position ``s`` (``meta["start"]``) and period ``T``
(``meta["period"]``). The second copy's positions are ``Q = {s+T, ..., s+2T-1}``: the token
at ``i`` in ``Q`` occurred before at ``i-T``.

**Scores**, per prompt and head ``(l, h)``, with ``A`` the head's attention pattern
(``blocks.{l}.attn.hook_pattern``, read through the activation store):

* induction score ``= mean_{i in Q} A(i, i-T+1)``: attention to the token *after* the
  earlier occurrence of the current token (the token an induction head copies);
* duplicate-token score ``= mean_{i in Q} A(i, i-T)``: attention to the earlier copy of the
  current token;
* previous-token score ``= mean_{i = s+1..s+2T-1} A(i, i-1)``: over every position after
  ``r_1`` in both copies (``r_1``'s predecessor is BOS, which many heads attend to by
  default). The first copy counts because that is where an induction head reads the
  previous-token head's output (through its keys).

Each head's score is a :class:`~pytest_circuits.measurement.Measurement` over prompts
(bootstrap 95% interval); the maps ``[n_layers, n_heads]`` of means are the heatmaps.

**In-context learning** (the paper's "loss on later tokens lower than on earlier ones", on
the repeated sequence): the per-token loss (``hooks.TOKEN_LOSS``) of predicting the tokens of
the first copy after its first (``r_2..r_T``, positions ``s+1..s+T-1``) and those of the
second copy after its first (positions ``s+T+1..s+2T-1``), each averaged per prompt;
``drop = loss(first copy) - loss(second copy)``. The first copy is random (its loss is about
``log`` of the number of tokens sampled from); the second is predictable by induction.

**Ablation**: the second-copy loss with the located heads ablated (``interventions.ablate``,
``"mean"`` over the prompt set's tokens, or ``"zero"``) minus the clean one, per prompt,
against a control: as many other heads of the same layers (seeded choice), ablated the same
way; ``excess = increase(heads) - increase(control)`` per prompt.

Measured with the defaults (n=32 sequences of 20 tokens, seed 0) on the planted models
trained by ``scripts/train_induction.py`` (``tests/data/planted/induction``, 2 layers x 4
heads, attention only; ``induction_control``, 1 layer): see :func:`detect_induction`; on
SmolLM2-135M: ``claims/smollm2/test_induction.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import hooks as H
from .. import interventions as I
from ..components import Head, parse_many
from ..detection import Detection
from ..errors import ComponentError, MeasurementError, PromptSetError, bad
from ..measurement import Measurement
from ..models import info as model_info
from ..prompts import PromptSet
from ..store import resolve
from ..tasks import induction as T

SOURCE = "arXiv:2209.11895"
KINDS = ("induction", "previous_token", "duplicate_token")
TITLES = {"induction": "induction score", "previous_token": "previous-token score",
          "duplicate_token": "duplicate-token score"}
# A head is of a kind when its score's lower bound exceeds this: more than half of its
# attention (from the positions scored) goes to the one position that defines the kind, so
# no other position can get as much. See detect_induction for what it separates.
THRESHOLD = 0.5


def _back(kind: str, period: int) -> int:
    """How far back from the query the position that defines ``kind`` lies."""
    return {"induction": period - 1, "previous_token": 1, "duplicate_token": period}[kind]


def _queries(kind: str, start: int, period: int) -> Any:
    """The query positions ``kind`` is averaged over (see the module docstring)."""
    import torch

    first = start + 1 if kind == "previous_token" else start + period
    return torch.arange(first, start + 2 * period)


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
@dataclass(frozen=True, eq=False)
class HeadScores:
    """One kind of score (``kind`` in :data:`KINDS`) for every head, per prompt."""

    kind: str
    values: np.ndarray                 # [n_prompts, n_layers, n_heads]
    model: str = ""
    prompts: str = ""
    labels: tuple[str, ...] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return TITLES[self.kind]

    @property
    def grid(self) -> np.ndarray:
        """``[n_layers, n_heads]``: each head's mean score over the prompts (the heatmap)."""
        return self.values.mean(0)

    def _head(self, head: Any) -> Head:
        hs = (head,) if isinstance(head, Head) else parse_many(head)
        if len(hs) != 1 or not isinstance(hs[0], Head):
            raise ComponentError(bad("head", head, "one attention head such as 'L1H3'"))
        h = hs[0]
        n_layers, n_heads = self.values.shape[1:]
        if not (0 <= h.layer < n_layers and 0 <= h.head < n_heads):
            raise ComponentError(bad("head", str(h), f"a head L0H0..L{n_layers - 1}H{n_heads - 1}"))
        return h

    def of(self, head: Any, *, record: bool = False) -> Measurement:
        """The head's score as a Measurement over prompts, named ``"<kind> score L{l}H{h}"``."""
        h = self._head(head)
        return Measurement.from_values(f"{self.title} {h}", self.values[:, h.layer, h.head], model=self.model,
                                       provenance={**self.provenance, "head": str(h)}, labels=self.labels,
                                       record=record)

    def ranking(self, k: int | None = None) -> list[tuple[Head, float]]:
        """Heads by mean score, highest first (ties: lower layer, then head, first)."""
        g = self.grid
        order = sorted(((float(g[l, h]), l, h) for l in range(g.shape[0]) for h in range(g.shape[1])),
                       key=lambda x: (-x[0], x[1], x[2]))
        return [(Head(l, h), s) for s, l, h in order[:k]]

    def located(self, threshold: float = THRESHOLD) -> list[tuple[Head, Measurement]]:
        """Heads whose score's lower bound exceeds ``threshold``, highest mean first. Only
        heads whose mean exceeds it are bootstrapped (a lower bound is never above the mean)."""
        out = []
        for h, mean in self.ranking():
            if mean <= threshold:
                break
            m = self.of(h)
            if m.lower > threshold:
                out.append((h, m))
        return out

    def table(self, k: int = 8) -> str:
        rows = [f"{self.title} (mean over {self.values.shape[0]} prompts), top {k}:"]
        rows += [f"  {str(h):>7}  {s:.3f}" for h, s in self.ranking(k)]
        return "\n".join(rows)


def head_scores(model: Any, prompts: Any, *, activations: Any = None) -> dict[str, HeadScores]:
    """The induction, previous-token and duplicate-token score of every head on ``prompts``
    (a set from :func:`~pytest_circuits.tasks.induction.repeated_tokens`), each per prompt
    (see the module docstring for the formulas). One forward (patterns of every layer and
    the per-token loss together), cached by the store."""
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
    return {k: HeadScores(k, v, model=label, prompts=prompts.name, labels=prompts.prompts,
                          provenance=_prov(model, prompts, names, score=TITLES[k]))
            for k, v in out.items()}


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
    kw = dict(model=model_info(model).label, labels=prompts.prompts, record=record,
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
                                       provenance=_prov(model, prompts, [H.TOKEN_LOSS], intervention=iv.key,
                                                        heads=[str(h) for h in hs]))

    inc = increase(comps, label)
    ctrl_heads, note = control_heads(model, comps, seed=seed) if control else ((), "")
    ctrl = excess = None
    if ctrl_heads:
        ctrl = increase(ctrl_heads, "control heads")
        excess = Measurement.from_values(f"second-copy loss increase, {label} ablated, over control",
                                         inc.array - ctrl.array, model=inc.model, labels=prompts.prompts,
                                         record=record, provenance={"left": repr(inc), "right": repr(ctrl)})
    elif control:
        note = "no control: no other heads in the ablated heads' layers"
    return AblationEffect(comps, ctrl_heads, kind, inc, ctrl, excess, note)


# --------------------------------------------------------------------------- detectors
def _top(s: "HeadScores", head: Any) -> Measurement:
    """``head``'s score under the head-independent name ``"<kind> score (top head)"`` (the head
    is in its provenance), so that baselines compare the same key on every checkpoint."""
    m = s.of(head)
    return Measurement.from_values(f"{s.title} (top head)", m.array, model=m.model, labels=m.labels,
                                   provenance=dict(m.provenance), record=True)


def _recorded(m: Measurement) -> Measurement:
    """``m`` again, recorded (in the running claim's report) this time."""
    return Measurement.from_values(m.name, m.array, model=m.model, labels=m.labels,
                                   provenance=dict(m.provenance), record=True)


def _prompt_set(model: Any, prompts: Any, n: int, length: int, seed: int) -> tuple[Any, str | None]:
    """The repeated-token set, or ``(None, reason)`` when this model cannot hold one: too few
    ordinary tokens, or a context too short for two copies. Bad arguments still raise."""
    if prompts is not None:
        layout(prompts)
        return prompts, None
    for what, value, least in (("n", n, 1), ("length", length, 2), ("seed", seed, 0)):
        T._int(what, value, least)
    pool = T.ordinary_tokens(model)
    if len(pool) < length:
        return None, (f"the tokenizer has {len(pool)} ordinary tokens in the range sampled, fewer than the "
                      f"{length} distinct tokens of a sequence")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    need = (1 if model.tokenizer.bos_token_id is not None else 0) + 2 * length
    if isinstance(n_ctx, int) and need > n_ctx:
        return None, f"two copies of {length} tokens take {need} positions; the model's context is {n_ctx}"
    return T.repeated_tokens(model, n=n, length=length, seed=seed), None


def _heatmaps(scores: dict[str, HeadScores]) -> dict[str, np.ndarray]:
    return {TITLES[k]: scores[k].grid for k in KINDS}


def _scores_table(scores: dict[str, HeadScores], order: list[tuple[Head, float]]) -> str:
    rows = ["  head     induction  prev-token  duplicate"]
    for h, _ in order:
        rows.append(f"  {str(h):>7}  " + "  ".join(f"{scores[k].grid[h.layer, h.head]:>9.3f}" for k in KINDS))
    return "\n".join(rows)


def detect_induction(model: Any, *, n: int = 32, length: int = 20, seed: int = 0, activations: Any = None,
                     prompts: Any = None, threshold: float = THRESHOLD,
                     previous_threshold: float = THRESHOLD, duplicate_threshold: float = THRESHOLD,
                     ablation: str = "mean", min_loss_increase: float = 0.0,
                     max_ablated: int | None = None) -> Detection:
    """Induction heads on ``n`` repeated random sequences of ``length`` tokens (seeded).

    Found when (1) at least one head's induction score has a 95% lower bound above
    ``threshold`` (those heads are the components, best first) and (2) ablating them
    (``ablation``: ``"mean"`` or ``"zero"``; at most ``max_ablated``, the best) raises the
    second-copy loss: the increase's lower bound exceeds ``min_loss_increase``.

    Thresholds: ``threshold`` = 0.5 means more than half of the head's attention from each
    second-copy token goes to the one token an induction head copies, so it is the head's main
    job (uniform causal attention would give about ``1/(1.5 length)``, 0.03 at length 20).
    With the defaults it separates the planted 2-layer model's induction heads, every head of
    its layer 1 (L1H2 0.989 [0.987, 0.991], L1H0 0.917 [0.907, 0.925], L1H1 0.913, L1H3 0.912),
    from its layer-0 heads (best 0.126) and from the 1-layer control's heads (best 0.079).
    ``min_loss_increase`` = 0: the ablation must measurably hurt the in-context prediction,
    the paper's causal test (planted: +4.22 [4.21, 4.23] nats, as much as the model's whole
    in-context drop 4.30; there is no control there, layer 1 having no other heads). The
    previous-token and duplicate-token thresholds (same 0.5) select the heads the details
    list: the planted model's previous-token head L0H0 scores 0.827 [0.824, 0.830], the next
    L0H2 0.388; no head of either planted model scores above 0.1 as a duplicate-token head.
    On SmolLM2-135M: L18H6 0.852, L17H4 0.739, L17H3 0.684, L17H5 0.634 (next L18H7 0.493);
    mean-ablating them +3.66 nats against +0.17 for four other heads of layers 17-18.

    Measurements (headlines, under head-independent names so that the checkup's baselines
    compare them across checkpoints): the in-context loss drop, ``induction score (top head)``
    (the best located head, else the best head; each located head's own score is in ``more``,
    also through ``measurement("induction score L{l}H{h}")``), and with located heads the ablation's second-copy loss
    increase, the control's (as many other heads of the same layers) and the excess over
    it. Heatmaps: all three scores. A model whose tokenizer has fewer ordinary tokens than
    ``length``, or whose context cannot hold two copies, is not applicable.
    """
    title = "Induction heads (attend to the token after the current token's earlier occurrence)"
    label = model_info(model).label
    ps, reason = _prompt_set(model, prompts, n, length, seed)
    if ps is None:
        return Detection.not_applicable("induction", title, reason, source=SOURCE, model=label)
    store = resolve(activations)
    scores = head_scores(model, ps, activations=store)
    icl = in_context_loss(model, ps, activations=store)
    drop = _recorded(icl.drop)
    located = scores["induction"].located(threshold)
    # Headlines under head-independent names (the checkup's baselines compare them across
    # checkpoints); each located head's own score is in ``more``.
    top = located[0][0] if located else scores["induction"].ranking(1)[0][0]
    measurements: list[Measurement] = [drop, _top(scores["induction"], top)]
    more = [scores["induction"].of(h) for h, _ in located] or [scores["induction"].of(top)]
    effect = None
    if located:
        chosen = [h for h, _ in located][:max_ablated] if max_ablated else [h for h, _ in located]
        effect = ablation_effect(model, ps, chosen, kind=ablation, seed=seed, activations=store, record=True)
        measurements += [m for m in (effect.increase, effect.control_increase, effect.excess) if m is not None]
    found = bool(located) and effect is not None and effect.increase.lower > min_loss_increase
    periods = sorted({int(t) for t in ps.meta["period"]})
    period = str(periods[0]) if len(periods) == 1 else f"{periods[0]}-{periods[-1]}"
    criterion = (f"a head whose induction score (mean attention from each token of the second copy to the "
                 f"token after its earlier occurrence; {len(ps)} sequences of {period} random tokens) has a "
                 f"95% lower bound above {threshold}, and {ablation}-ablating the heads so located raises "
                 f"the loss on the second copy (lower bound above {min_loss_increase})")
    prev = scores["previous_token"].located(previous_threshold)
    dup = scores["duplicate_token"].located(duplicate_threshold)
    details = [_scores_table(scores, scores["induction"].ranking(8)),
               f"  in-context: {icl.table()}"]
    if effect is not None:
        details.append("  " + effect.table().replace("\n", "\n  "))
    details.append("  previous-token heads (lower bound > %g): %s" % (
        previous_threshold, ", ".join(f"{h} {m.mean:.3f}" for h, m in prev) or "none"))
    details.append("  duplicate-token heads (lower bound > %g): %s" % (
        duplicate_threshold, ", ".join(f"{h} {m.mean:.3f}" for h, m in dup) or "none"))
    return Detection(check="induction", title=title, source=SOURCE, model=label, found=found,
                     criterion=criterion, measurements=tuple(measurements), more=tuple(more),
                     components=tuple((str(h), m.mean) for h, m in located),
                     heatmaps=_heatmaps(scores), details="\n".join(details))


def _detect_kind(kind: str, title: str, model: Any, n: int, length: int, seed: int, activations: Any,
                 prompts: Any, threshold: float) -> Detection:
    label = model_info(model).label
    ps, reason = _prompt_set(model, prompts, n, length, seed)
    if ps is None:
        return Detection.not_applicable(kind, title, reason, source=SOURCE, model=label)
    scores = head_scores(model, ps, activations=activations)
    s = scores[kind]
    located = s.located(threshold)
    heads = [h for h, _ in located] or [s.ranking(1)[0][0]]
    what = {"previous_token": "from each token after the first of a repeated random sequence to the "
                              "token before it",
            "duplicate_token": "from each token of the second copy of a repeated random sequence to its "
                               "earlier copy"}[kind]
    return Detection(check=kind, title=title, source=SOURCE, model=label, found=bool(located),
                     criterion=(f"a head whose {s.title} (mean attention {what}) has a 95% lower bound above "
                                f"{threshold}"),
                     measurements=(_top(s, heads[0]),), more=tuple(s.of(h) for h in heads),
                     components=tuple((str(h), m.mean) for h, m in located),
                     heatmaps={s.title: s.grid}, details=_scores_table(scores, s.ranking(8)))


def detect_previous_token(model: Any, *, n: int = 32, length: int = 20, seed: int = 0, activations: Any = None,
                          prompts: Any = None, threshold: float = THRESHOLD) -> Detection:
    """Previous-token heads: previous-token score's lower bound above ``threshold`` (0.5: most
    of the head's attention on the previous token; see :func:`detect_induction`). Shares the
    forward of :func:`detect_induction` through the store. Measured on the planted 2-layer
    model: L0H0 0.827 (the head its induction heads read; zero-ablating it costs the second
    copy 3.3 nats), next L0H2 0.388; on the 1-layer control at most 0.011."""
    return _detect_kind("previous_token", "Previous-token heads (attend to the token before)", model, n, length,
                        seed, activations, prompts, threshold)


def detect_duplicate_token(model: Any, *, n: int = 32, length: int = 20, seed: int = 0, activations: Any = None,
                           prompts: Any = None, threshold: float = THRESHOLD) -> Detection:
    """Duplicate-token heads: duplicate-token score's lower bound above ``threshold`` (0.5;
    see :func:`detect_induction`). The planted models have none (best 0.093 and 0.066); on
    SmolLM2-135M, L14H3 0.688."""
    return _detect_kind("duplicate_token", "Duplicate-token heads (attend to an earlier copy of the current token)",
                        model, n, length, seed, activations, prompts, threshold)
