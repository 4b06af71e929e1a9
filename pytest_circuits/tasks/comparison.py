"""A synthetic digit comparison task, the task of the planted ``comparison`` model.

Prompt: ``"The {noun} of {place} lasted from {X} to the year"`` with ``X`` a digit in
1..8; the correct continuation is any digit greater than ``X``. The corrupted prompt
puts ``0`` in place of ``X`` (same length, token for token): after "from 0" every digit
1..9 is correct, so the corruption removes exactly the information the comparison
needs, and a model that answers each prompt perfectly scores ``(9 - 2X) / 9`` on it,
which averages to 0 over X uniform in 1..8.

Probability difference (PD) at the last position, over the ten digit tokens "0".."9"
and always with respect to the clean ``X``::

    PD = sum_{d > X} p(d) - sum_{d <= X} p(d)

(``p`` is the softmax over the whole vocabulary, so PD lies in [-1, 1].)

The template puts two words ("to the") between ``X`` and the last token, and uses no
token twice, so neither a previous-token head nor an induction head at the last
position reads ``X`` for free; the planted model's distractor task (see
:func:`distractor`) is induction over random word lists, which needs those heads.

The planted checkpoint ``tests/data/planted/comparison/`` is trained on this task and
the distractor (``scripts/train_comparison.py``); its circuit, found by exhaustive
patching of every subset of its 8 heads and 2 MLPs, is in ``ground_truth.json`` there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from .. import hooks as H
from ..store import ActivationStore, Intervention, resolve
from ..errors import PromptSetError, bad
from ._args import model_first
from ..measurement import Measurement
from ..models import info as model_info
from ..prompts import PromptSet

NOUNS = ("war", "expedition", "project", "dynasty", "siege", "treaty", "journey", "reign", "festival")
PLACES = ("France", "Germany", "Italy", "Spain", "Japan", "Paris", "Berlin", "Rome", "Madrid", "Tokyo")
TEMPLATE = "The {noun} of {place} lasted from {x} to the year"
CORRUPT_X = 0
X_RANGE = (1, 8)   # inclusive: every prompt has at least one correct and one wrong digit

# Distractor: induction over a list of distinct words ("A B C D E F G H C" -> "D").
# None of these words occurs in the comparison template.
DISTRACTOR_WORDS = ("country", "city", "river", "king", "queen", "cat", "dog", "John", "Mary", "store",
                    "bag", "ball", "mat", "sat", "on", "when", "then", "gave", "went", "said", "capital",
                    "a", "in", "is", "was", "and")
DISTRACTOR_LEN = 8


@dataclass(frozen=True, eq=False)
class Comparison:
    """A built comparison prompt set and what its metric needs."""

    prompts: PromptSet             # clean prompts; .corrupted holds the X=0 versions
    x: tuple[int, ...]             # the clean X of each prompt
    digit_ids: tuple[int, ...]     # token ids of "0".."9"
    name: str = "comparison"

    @property
    def prompt_sets(self) -> tuple[PromptSet, ...]:
        """Every prompt set the metric runs forwards on (the corrupted ones hang off them)."""
        return (self.prompts,)

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return f"Comparison(n={len(self)}, X in {min(self.x)}..{max(self.x)})"

    def scores(self, model: Any, *, intervention: Intervention | None = None,
               activations: ActivationStore | None = None, corrupted: bool = False) -> Any:
        """Per-prompt PD, float64 ``[n]`` (w.r.t. the clean X, also on the corrupted prompts)."""
        import torch

        store = resolve(activations)
        ps = self.prompts.corrupted if corrupted else self.prompts
        assert ps is not None
        name = H.logprobs_last(self.digit_ids)
        p = store.get(model, ps, [name], intervention)[name].exp()            # [n, 10], float64
        above = torch.arange(10).unsqueeze(0) > torch.tensor(self.x).unsqueeze(1)
        return (p * above).sum(1) - (p * ~above).sum(1)

    def logit_metric(self, i: int) -> Any:
        """Prompt ``i``'s PD as a differentiable function of its logits ``[1, pos, vocab]``.

        The same number as ``scores(...)[i]`` (one forward, no second step), for gradient
        screens such as attribution patching.
        """
        import torch

        ids = torch.tensor(self.digit_ids)
        last = self.prompts.lengths[i] - 1
        sign = torch.where(torch.arange(10) > self.x[i], 1.0, -1.0).double()

        def metric(logits: Any) -> Any:
            p = logits[0, last].double().softmax(-1)[ids.to(logits.device)]
            return (p * sign.to(logits.device)).sum().float()

        return metric


def comparison(model: Any, n: int = 200, seed: int = 0, *, nouns: Sequence[str] = NOUNS,
               places: Sequence[str] = PLACES, name: str = "comparison") -> Comparison:
    """Build ``n`` seeded comparison prompts (X uniform in 1..8, with X=0 corruptions)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise PromptSetError(bad("n", n, "an int >= 2"))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PromptSetError(bad("seed", seed, "an int"))
    tok = model.tokenizer
    use_nouns = [w for w in nouns if _is_one(tok, w)]
    use_places = [w for w in places if _is_one(tok, w)]
    if not use_nouns:
        raise PromptSetError(bad("nouns", list(nouns), "nouns that are single (known) tokens"))
    if not use_places:
        raise PromptSetError(bad("places", list(places), "places that are single (known) tokens"))
    rng = random.Random(seed)
    rows = [(rng.choice(use_nouns), rng.choice(use_places), rng.randint(*X_RANGE)) for _ in range(n)]
    return from_rows(model, rows, name=name)


def from_rows(model: Any, rows: Sequence[tuple[str, str, int]], *, name: str = "comparison") -> Comparison:
    """A comparison set from explicit ``(noun, place, X)`` rows."""
    rows = list(rows)
    if not rows:
        raise PromptSetError(bad("rows", [], "at least one (noun, place, X) row"))
    for row in rows:
        if (len(row) != 3 or isinstance(row[2], bool) or not isinstance(row[2], int)
                or not X_RANGE[0] <= row[2] <= X_RANGE[1]):
            raise PromptSetError(bad("row", row, f"(noun, place, X) with X in {X_RANGE[0]}..{X_RANGE[1]}"))
    tok = model.tokenizer
    digit_ids = tuple(_one(tok, str(d)) for d in range(10))
    clean = [TEMPLATE.format(noun=w, place=p, x=x) for w, p, x in rows]
    corrupt = [TEMPLATE.format(noun=w, place=p, x=CORRUPT_X) for w, p, _ in rows]
    xs = tuple(x for _, _, x in rows)
    meta = {"x": xs, "noun": tuple(w for w, _, _ in rows), "place": tuple(p for _, p, _ in rows)}
    prompts = PromptSet.build(model, clean, corrupted=corrupt, align=True, name=name, meta=meta)
    # X must be one token, the same position in the clean and corrupted prompt.
    for i, x in enumerate(xs):
        diff = (prompts.tokens[i] != prompts.corrupted.tokens[i]).nonzero().flatten().tolist()
        if len(diff) != 1 or int(prompts.tokens[i, diff[0]]) != digit_ids[x]:
            raise PromptSetError(f"comparison: {clean[i]!r} and {corrupt[i]!r} should differ in exactly "
                                 "one token, the digit X; this tokenizer merges digits with their "
                                 "neighbours")
    return Comparison(prompts, xs, digit_ids, name)


def prob_diff(model: Any, task: Comparison, *, corrupted: bool = False,
              intervention: Intervention | None = None,
              activations: ActivationStore | None = None, **kw: Any) -> Measurement:
    """The comparison probability difference, per prompt, as a Measurement."""
    model_first("comparison_prob_diff", model, task)
    vals = task.scores(model, intervention=intervention, activations=activations, corrupted=corrupted)
    name = f"{task.name}.prob_diff" + (":corrupted" if corrupted else "")
    return Measurement.from_values(
        name, vals, model=model_info(model).label, labels=task.prompts.prompts,
        provenance={"model": model_info(model).label, "prompts": task.prompts.name,
                    "intervention": intervention.key if intervention is not None else "none",
                    "hooks": [H.logprobs_last(task.digit_ids)]}, **kw)


def distractor_rows(n: int, seed: int = 0, *, words: Sequence[str] = DISTRACTOR_WORDS,
                    length: int = DISTRACTOR_LEN) -> list[tuple[list[str], int]]:
    """``n`` seeded induction rows: (``length`` distinct words, index of the repeated one)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PromptSetError(bad("n", n, "an int >= 1"))
    if not 2 <= length <= len(words):
        raise PromptSetError(bad("length", length, f"2..{len(words)} (the number of distinct words)"))
    rng = random.Random(seed)
    return [(rng.sample(list(words), length), rng.randrange(length - 1)) for _ in range(n)]


def distractor(model: Any, n: int = 200, seed: int = 0, *, name: str = "comparison_distractor") -> PromptSet:
    """The distractor task: ``"w1 ... w8 wi"`` -> ``w(i+1)`` (induction), with answers.

    The planted comparison model is trained on it jointly; its components that serve
    only this task should not be recovered as part of the comparison circuit.
    """
    rows = distractor_rows(n, seed)
    prompts = [" ".join(ws + [ws[i]]) for ws, i in rows]
    answers = [ws[i + 1] for ws, i in rows]
    return PromptSet.build(model, prompts, answers=answers, name=name,
                           meta={"repeat_index": tuple(i for _, i in rows)})


def _is_one(tok: Any, text: str) -> bool:
    ids = tok.encode(" " + text, add_special_tokens=False)
    return len(ids) == 1 and (tok.unk_token_id is None or ids[0] != tok.unk_token_id)


def _one(tok: Any, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) != 1 or (tok.unk_token_id is not None and ids[0] == tok.unk_token_id):
        raise PromptSetError(f"comparison: {text!r} is not a single token for this tokenizer")
    return int(ids[0])
