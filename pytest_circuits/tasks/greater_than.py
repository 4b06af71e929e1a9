"""The greater-than task (Hanna, Liu & Variengien 2023, arXiv:2305.00586).

Prompt: ``"The {noun} lasted from the year {XX}{YY} to the year {XX}"``; the model
should continue with a year later than ``XX YY``. The corrupted prompt uses YY = 01,
which removes the information the comparison needs.

Probability difference (PD), the paper's metric, for YY = ``ab``:

* two-digit year tokens (GPT-2): ``PD = sum_{y > YY} p(y) - sum_{y <= YY} p(y)`` over
  the tokens "00".."99" at the last position;
* one token per digit (SmolLM2, Llama): the first digit ``d1`` and, in a second
  forward with ``a`` appended, the second digit ``d2``::

      PD = p(d1 > a) + p(d1 = a) p(d2 > b) - [p(d1 < a) + p(d1 = a) p(d2 <= b)]

The builder keeps only nouns and years that tokenize as the metric assumes, samples
YY uniformly from 02..98 with a seed, and checks that clean and corrupted prompts
align token for token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from ..store import ActivationStore, Intervention, resolve
from .. import hooks as H
from ..errors import PromptSetError, bad
from ._args import model_first
from ..measurement import Measurement
from ..models import info as model_info
from ..prompts import PromptSet, is_single_token

NOUNS = ("war", "expedition", "project", "dynasty", "siege", "treaty", "journey", "reign",
         "festival", "drought", "trial", "voyage", "conflict", "occupation", "empire",
         "campaign", "pilgrimage", "revolt", "famine", "partnership")
TEMPLATE = "The {noun} lasted from the year {xx}{yy:02d} to the year {xx}"


@dataclass(frozen=True, eq=False)
class GreaterThan:
    """A built greater-than prompt set and what its metric needs."""

    prompts: PromptSet              # clean prompts; .corrupted holds the YY=01 versions
    yy: tuple[int, ...]
    mode: str                       # "digit" or "two_digit"
    digit_ids: tuple[int, ...]      # token ids of "0".."9" (digit) or "00".."99" (two_digit)
    second: PromptSet | None = None           # digit mode: clean prompt + first digit of YY
    second_corrupted: PromptSet | None = None  # digit mode: corrupted prompt + first digit of YY

    def __len__(self) -> int:
        return len(self.prompts)

    # -- the task protocol the circuit tools use (pytest_circuits.techniques.circuits) ------------
    @property
    def name(self) -> str:
        return self.prompts.name

    @property
    def prompt_sets(self) -> tuple[PromptSet, ...]:
        """Every prompt set the metric runs a forward on (an intervention applies to each)."""
        return (self.prompts,) if self.second is None else (self.prompts, self.second)

    def scores(self, model: Any, *, intervention: Intervention | None = None,
               activations: ActivationStore | None = None, corrupted: bool = False) -> Any:
        """PD per prompt, float64 ``[n]``."""
        return per_prompt_prob_diff(model, self, corrupted=corrupted, intervention=intervention,
                                    activations=activations)

    def logit_metric(self, i: int) -> Any:
        """A differentiable metric of prompt ``i``'s logits ``[1, pos, vocab]`` (one forward).

        Two-digit tokens: PD itself. One token per digit: the first step's part of PD,
        ``p(d1 > a) - p(d1 < a)`` (the second step needs another forward); a proxy used
        by gradient screens, whose candidates are then measured with the exact PD.
        """
        import torch

        ids = torch.tensor(self.digit_ids)
        last = self.prompts.lengths[i] - 1
        yy = self.yy[i]
        ref = yy if self.mode == "two_digit" else yy // 10
        d = torch.arange(len(ids))

        def metric(logits: Any) -> Any:
            p = logits[0, last].double().softmax(-1)[ids.to(logits.device)]
            above = p[(d > ref).to(logits.device)].sum()
            if self.mode == "two_digit":
                return (above - p[(d <= ref).to(logits.device)].sum()).float()
            return (above - p[(d < ref).to(logits.device)].sum()).float()

        return metric

    def __repr__(self) -> str:
        return f"GreaterThan(n={len(self)}, mode={self.mode!r}, YY in {min(self.yy)}..{max(self.yy)})"


def _digit_mode(model: Any) -> str:
    tok = model.tokenizer
    pieces = tok.encode(" 1732", add_special_tokens=False)
    if len(pieces) >= 4 and all(len(tok.decode([p]).strip()) <= 1 for p in pieces):
        return "digit"
    if all(len(tok.encode(f"{i:02d}", add_special_tokens=False)) == 1 for i in range(100)):
        return "two_digit"
    raise PromptSetError("greater_than: this tokenizer writes years neither one token per digit "
                         "nor as two-digit tokens; the PD metric is not defined for it")


def greater_than(model: Any, n: int = 200, seed: int = 0, *, centuries: Sequence[int] = range(11, 18),
                 nouns: Sequence[str] = NOUNS, name: str = "greater_than") -> GreaterThan:
    """Build ``n`` seeded greater-than prompts (with '01' corruptions) for ``model``."""
    if not isinstance(n, int) or n < 2:
        raise PromptSetError(bad("n", n, "an int >= 2"))
    cents = list(centuries)
    if not cents or any(not 10 <= c <= 99 for c in cents):
        raise PromptSetError(bad("centuries", cents, "two-digit centuries such as range(11, 18)"))
    mode = _digit_mode(model)
    # One ordinary token: a noun the tokenizer lacks would be the unknown token, which
    # every such noun shares (the model would read "<unk>", not the noun).
    usable = [w for w in nouns if isinstance(w, str) and is_single_token(model, " " + w)]
    if not usable:
        raise PromptSetError(bad("nouns", list(nouns), "nouns that are single tokens with a leading space"))
    if mode == "two_digit":
        cents = [c for c in cents if is_single_token(model, f" {c}")]
        if not cents:
            raise PromptSetError("greater_than: no century tokenizes as one token")
    rng = random.Random(seed)
    rows = [(rng.choice(usable), rng.choice(cents), rng.randint(2, 98)) for _ in range(n)]
    return from_rows(model, rows, name=name)


def from_rows(model: Any, rows: Sequence[tuple[str, int, int]], *, name: str = "greater_than") -> GreaterThan:
    """A greater-than set from explicit ``(noun, century, YY)`` rows (e.g. drawn by hypothesis)."""
    rows = list(rows)
    if not rows:
        raise PromptSetError(bad("rows", [], "at least one (noun, century, YY) row"))
    for row in rows:
        if len(row) != 3 or not isinstance(row[2], int) or not 2 <= row[2] <= 98:
            raise PromptSetError(bad("row", row, "(noun, century, YY) with YY in 2..98"))
    tok = model.tokenizer
    mode = _digit_mode(model)
    if mode == "digit":
        digit_ids = tuple(_one(tok, str(d)) for d in range(10))
    else:
        digit_ids = tuple(_one(tok, f"{d:02d}") for d in range(100))
    clean = [TEMPLATE.format(noun=w, xx=c, yy=y) for w, c, y in rows]
    corrupt = [TEMPLATE.format(noun=w, xx=c, yy=1) for w, c, y in rows]
    yy = tuple(y for _, _, y in rows)
    meta = {"yy": yy, "century": tuple(c for _, c, _ in rows), "noun": tuple(w for w, _, _ in rows)}
    prompts = PromptSet.build(model, clean, corrupted=corrupt, align=True, name=name, meta=meta)
    if mode == "two_digit":
        return GreaterThan(prompts, yy, mode, digit_ids)
    # Second step: append the first digit of YY as a token.
    first = [str(y // 10) for y in yy]
    second = PromptSet.build(model, [p + a for p, a in zip(clean, first)], name=f"{name}:second", meta=meta,
                             corrupted=[p + a for p, a in zip(corrupt, first)], align=True)
    second_c = second.corrupted
    for i, a in enumerate(first):
        want = prompts.lengths[i] + 1
        if second.lengths[i] != want or int(second.tokens[i, want - 1]) != digit_ids[int(a)]:
            raise PromptSetError(f"greater_than: appending {a!r} to {clean[i]!r} did not add exactly "
                                 "one digit token; this tokenizer merges digits")
    return GreaterThan(prompts, yy, mode, digit_ids, second, second_c)


def _one(tok: Any, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise PromptSetError(f"greater_than: {text!r} is not a single token for this tokenizer")
    return int(ids[0])


def _probs(model: Any, ps: PromptSet, ids: Sequence[int], intervention: Intervention | None,
           store: ActivationStore) -> Any:
    """Probabilities of tokens ``ids`` at the last position, float64 ``[n, len(ids)]``."""
    name = H.logprobs_last(ids)
    return store.get(model, ps, [name], intervention)[name].exp()


def _prefix_consistent(intervention: Any) -> bool:
    """Whether ``intervention`` changes the positions the second prompts share with the first
    exactly as it changes the first prompts: no intervention, or built-in replacements at
    every position (their sources, means over positions, resampling permutation and corrupted
    counterparts agree on those positions; a "last" position would not be the same token)."""
    from ..interventions import Interventions

    if intervention is None:
        return True
    if not isinstance(intervention, Interventions):
        return False
    return all(i.positions is None and (i.kind != "rerouted" or _prefix_consistent(i.via))
               for i in intervention.items)


def per_prompt_prob_diff(model: Any, task: GreaterThan, *, corrupted: bool = False,
                         intervention: Intervention | None = None,
                         activations: ActivationStore | None = None) -> Any:
    """PD per prompt as a float64 tensor ``[n]`` (always w.r.t. the clean YY).

    The model comes first, as in every task function (``per_prompt_prob_diff(task, model)``,
    the order before, raises saying so)."""
    import torch

    model_first("per_prompt_prob_diff", model, task)

    store = resolve(activations)
    first = task.prompts.corrupted if corrupted else task.prompts
    assert first is not None
    yy = torch.tensor(task.yy)
    if task.mode == "two_digit":
        p1 = _probs(model, first, task.digit_ids, intervention, store)   # [n, 100]
        grid = torch.arange(100).unsqueeze(0)
        return (p1 * (grid > yy.unsqueeze(1))).sum(1) - (p1 * (grid <= yy.unsqueeze(1))).sum(1)
    second = task.second_corrupted if corrupted else task.second
    assert second is not None
    if _prefix_consistent(intervention):
        # The second prompts are the first ones plus a digit, and the intervention acts the
        # same on every position they share: the first digit's distribution is the second
        # prompts' one position before their last (one forward instead of two).
        both = [H.logprobs_last(task.digit_ids, back=1), H.logprobs_last(task.digit_ids)]
        got = store.get(model, second, both, intervention)
        p1, p2 = got[both[0]].exp(), got[both[1]].exp()                     # [n, 10] each
    else:
        p1 = _probs(model, first, task.digit_ids, intervention, store)     # [n, 10]
        p2 = _probs(model, second, task.digit_ids, intervention, store)    # [n, 10]
    a, b = (yy // 10).unsqueeze(1), (yy % 10).unsqueeze(1)
    d = torch.arange(10).unsqueeze(0)
    pa = p1.gather(1, a).squeeze(1)
    above = (p1 * (d > a)).sum(1) + pa * (p2 * (d > b)).sum(1)
    below = (p1 * (d < a)).sum(1) + pa * (p2 * (d <= b)).sum(1)
    return above - below


def prob_diff(model: Any, task: GreaterThan, *, corrupted: bool = False,
              intervention: Intervention | None = None,
              activations: ActivationStore | None = None, **kw: Any) -> Measurement:
    """The greater-than probability difference, per prompt, as a Measurement."""
    model_first("prob_diff", model, task)
    vals = per_prompt_prob_diff(model, task, corrupted=corrupted, intervention=intervention,
                                activations=activations)
    name = "greater_than.prob_diff" + (":corrupted" if corrupted else "")
    return Measurement.from_values(
        name, vals, model=model_info(model).label, labels=task.prompts.prompts,
        provenance={"model": model_info(model).label, "prompts": task.prompts.name, "mode": task.mode,
                    "intervention": intervention.key if intervention is not None else "none",
                    "hooks": [H.logprobs_last(task.digit_ids)]}, **kw)


def cutoff_sharpness(model: Any, task: GreaterThan, *, intervention: Intervention | None = None,
                     activations: ActivationStore | None = None, **kw: Any) -> Measurement:
    """``p(YY+1) - p(YY-1)`` (two-digit tokenizers; the paper's cutoff sharpness)."""
    import torch

    model_first("cutoff_sharpness", model, task)
    if task.mode != "two_digit":
        raise PromptSetError("cutoff_sharpness needs two-digit year tokens (GPT-2 style); for "
                             "one-token-per-digit tokenizers use prob_diff")
    store = resolve(activations)
    p = _probs(model, task.prompts, task.digit_ids, intervention, store)
    yy = torch.tensor(task.yy)
    rows = torch.arange(len(yy))
    vals = p[rows, yy + 1] - p[rows, yy - 1]
    return Measurement.from_values("greater_than.cutoff_sharpness", vals, model=model_info(model).label,
                                   labels=task.prompts.prompts, **kw)
