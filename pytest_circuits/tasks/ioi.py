"""Indirect object identification (IOI; Wang et al. 2022, arXiv:2211.00593).

A prompt names two people, repeats one of them (the subject, S) and ends where the other
one (the indirect object, IO) is the natural next word::

    "When Mary and John went to the store, John gave a drink to"   ->  " Mary"

The answer is the IO name, the foil the S name; the metric is the logit difference
``logit(IO) - logit(S)`` at the last position (about 3.5 on GPT-2 small in the paper).
Both orders of the first mention are built, in equal numbers (alternating by index):

* ``ABBA``: IO first, then S (``"When {IO} and {S} ..., {S} gave ... to"``);
* ``BABA``: S first, then IO (``"When {S} and {IO} ..., {S} gave ... to"``).

Token positions, per prompt, in :attr:`PromptSet.meta` (BOS included, as the model reads
them): ``io_pos`` (the IO name), ``s1_pos`` (the first S), ``s2_pos`` (the repeated S),
``end_pos`` (the last token, where the answer is read). The prompt's ``corrupted``
counterpart is, by default, the paper's **ABC** corruption: the three name positions
(IO, S1, S2) hold three other names, all different from each other and from the clean
prompt's two, so nothing is repeated and no name is the answer; with
``corruption="bac"`` the two first mentions keep the clean prompt's names in swapped
order and the repeated one becomes a third name (the same names are in the context, but
none is repeated). Either way every name is one token, so the corrupted prompt aligns
with the clean one token for token (checked by :meth:`PromptSet.build`).

Names are the candidates (:data:`NAMES`, or ``names=``) that the model's tokenizer
writes as one ordinary token with a leading space; places and objects likewise. A
tokenizer with fewer than :data:`MIN_NAMES` such names raises :class:`TooFewNamesError`
(which the IOI detector reports as not applicable). Templates are the project's own, in
the style of the paper's (a "When/After/While ... went/were ... the {place}, {S} gave a
{object} to" family).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Sequence

from ..errors import PromptSetError, TooFewNamesError, bad
from ..prompts import PromptSet, is_single_token

# Common English first names (the paper drew from a list of 100 such names); only those
# that are one token of the model's tokenizer are used.
NAMES = (
    "Mary", "John", "Tom", "James", "Anna", "Michael", "David", "Sarah", "Paul", "Laura",
    "Mark", "Lisa", "Peter", "Emma", "Robert", "Kate", "Daniel", "Alice", "George", "Rachel",
    "Jack", "Linda", "Steven", "Helen", "Brian", "Susan", "Kevin", "Karen", "Eric", "Julia",
    "Adam", "Emily", "Frank", "Grace", "Henry", "Jessica", "Ryan", "Amy", "Scott", "Nancy",
    "Richard", "Maria", "Thomas", "Anne", "Andrew", "Sophie", "Chris", "Jane", "Matthew", "Lucy",
    "Charles", "Megan", "Joseph", "Diana", "William", "Olivia", "Patrick", "Claire", "Simon", "Rose",
)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
          "park", "market", "library", "beach")
OBJECTS = ("drink", "book", "ring", "ball", "bag", "letter", "key", "basket", "gift", "bottle",
           "snack", "card")
# {A} and {B}: the first two mentions, in order; {S}: the repeated name (S2). The answer
# follows the last word. Every template has the three name slots, in this order.
TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "After {A} and {B} went to the {place}, {S} gave a {object} to",
    "While {A} and {B} were working at the {place}, {S} gave a {object} to",
    "When {A} and {B} got a {object} at the {place}, {S} decided to give it to",
    "Then, {A} and {B} had a lot of fun at the {place}. {S} gave a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
    "After the lunch, {A} and {B} went to the {place}. {S} handed a {object} to",
    "When {A} and {B} arrived at the {place}, {S} brought a {object} to",
)
ORDERS = ("ABBA", "BABA")
CORRUPTIONS = ("abc", "bac")
# Two names per prompt plus three others for its ABC counterpart, with room to vary.
MIN_NAMES = 8
POSITIONS = ("io_pos", "s1_pos", "s2_pos", "end_pos")


def vocabulary() -> list[str]:
    """Every word of the default templates, names, places and objects (punctuation aside):
    what a word-level tokenizer needs to write this task (the planted IOI model's)."""
    import re

    words: list[str] = []
    for t in TEMPLATES:
        words += re.findall(r"[A-Za-z]+", re.sub(r"\{[a-zA-Z]+\}", " ", t))
    return list(dict.fromkeys(words + list(NAMES) + list(PLACES) + list(OBJECTS)))


def usable_names(model: Any, names: Sequence[str] | None = None) -> list[str]:
    """The candidates (default :data:`NAMES`) that are one ordinary token of ``model``'s
    tokenizer with a leading space, in their given order, without repeats."""
    cands = NAMES if names is None else _words("names", names)
    return [w for w in dict.fromkeys(cands) if is_single_token(model, " " + w)]


def ioi(model: Any, *, n: int = 64, seed: int = 0, templates: Sequence[str] | None = None,
        names: Sequence[str] | None = None, places: Sequence[str] | None = None,
        objects: Sequence[str] | None = None, corruption: str = "abc", name: str = "ioi") -> PromptSet:
    """``n`` seeded IOI prompts for ``model`` (answers: IO, foils: S; corrupted: ABC or BAC).

    Prompt ``i`` has order ``ORDERS[i % 2]`` (both orders balanced); its template, names,
    place and object are drawn with ``random.Random(seed)``. Raises
    :class:`TooFewNamesError` when fewer than :data:`MIN_NAMES` names are single tokens,
    and :class:`~pytest_circuits.errors.PromptSetError` for bad arguments or a template
    whose names do not land on single tokens."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise PromptSetError(bad("n", n, "an int >= 2 (both orders need a prompt)"))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PromptSetError(bad("seed", seed, "an int"))
    if corruption not in CORRUPTIONS:
        raise PromptSetError(bad("corruption", corruption, f"one of {CORRUPTIONS}"))
    temps = list(TEMPLATES if templates is None else _templates(templates))
    pool = usable_names(model, names)
    if len(pool) < MIN_NAMES:
        given = len(NAMES if names is None else list(names))
        raise TooFewNamesError(
            f"IOI needs at least {MIN_NAMES} names that are one token (with a leading space) of this "
            f"model's tokenizer; {len(pool)} of the {given} candidates are ({pool[:8]}): pass names= with "
            "names the tokenizer has")
    need_place = any("{place}" in t for t in temps)
    need_object = any("{object}" in t for t in temps)
    use_places = _filler(model, "places", PLACES if places is None else places) if need_place else [""]
    use_objects = _filler(model, "objects", OBJECTS if objects is None else objects) if need_object else [""]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = rng.randrange(len(temps))
        io, s, c1, c2, c3 = rng.sample(pool, 5)
        rows.append((t, ORDERS[i % 2], io, s, (c1, c2, c3), rng.choice(use_places), rng.choice(use_objects)))
    return from_rows(model, rows, templates=temps, corruption=corruption, name=name)


def from_rows(model: Any, rows: Sequence[tuple], *, templates: Sequence[str] | None = None,
              corruption: str = "abc", name: str = "ioi") -> PromptSet:
    """An IOI set from explicit rows ``(template index, order, IO, S, (C1, C2, C3), place,
    object)``; ``(C1, C2, C3)`` are the names of the corrupted prompt's three name slots
    (ABC: all three; BAC: only ``C3``, the repeated slot, is used)."""
    if corruption not in CORRUPTIONS:
        raise PromptSetError(bad("corruption", corruption, f"one of {CORRUPTIONS}"))
    temps = list(TEMPLATES if templates is None else _templates(templates))
    rows = list(rows)
    if not rows:
        raise PromptSetError(bad("rows", [], "at least one IOI row"))
    clean, corrupt, meta = [], [], {k: [] for k in ("order", "template", "io", "s")}
    for r in rows:
        if len(r) != 7 or r[1] not in ORDERS or not isinstance(r[0], int) or not 0 <= r[0] < len(temps):
            raise PromptSetError(bad("row", r, "(template index, 'ABBA' or 'BABA', IO, S, (C1, C2, C3), "
                                              "place, object)"))
        t, order, io, s, others, place, obj = r
        if io == s or len(set(others)) != 3 or {io, s} & set(others):
            raise PromptSetError(bad("row", r, "IO != S and three corrupting names, each different from "
                                              "the others and from IO and S"))
        a, b = (io, s) if order == "ABBA" else (s, io)
        fill = dict(place=place, object=obj)
        clean.append(temps[t].format(A=a, B=b, S=s, **fill))
        if corruption == "abc":
            corrupt.append(temps[t].format(A=others[0], B=others[1], S=others[2], **fill))
        else:
            corrupt.append(temps[t].format(A=b, B=a, S=others[2], **fill))
        meta["order"].append(order)
        meta["template"].append(t)
        meta["io"].append(io)
        meta["s"].append(s)
    ps = PromptSet.build(model, clean, answers=[" " + m for m in meta["io"]],
                         foils=[" " + m for m in meta["s"]], corrupted=corrupt, align=True, name=name)
    full = {k: tuple(v) for k, v in {**meta, **_positions(ps)}.items()}
    return dataclasses.replace(ps, meta=full, corrupted=dataclasses.replace(ps.corrupted, meta=full))


def _positions(ps: PromptSet) -> dict[str, list[int]]:
    """Token positions of IO, S1, S2 and END in each prompt, found by token id: the IO id
    must occur exactly once and the S id exactly twice (else the template or a name does
    not tokenize as one token in context)."""
    out: dict[str, list[int]] = {k: [] for k in POSITIONS}
    for i in range(len(ps)):
        toks = ps.tokens[i, : ps.lengths[i]].tolist()
        io_at = [j for j, x in enumerate(toks) if x == ps.answer_ids[i]]
        s_at = [j for j, x in enumerate(toks) if x == ps.foil_ids[i]]
        if len(io_at) != 1 or len(s_at) != 2 or not s_at[0] < s_at[1] or io_at[0] > s_at[1]:
            raise PromptSetError(
                f"ioi: in prompts[{i}]={ps.prompts[i]!r} the IO name {ps.answers[i]!r} occurs "
                f"{len(io_at)} times and the S name {ps.foils[i]!r} {len(s_at)} times as a token; each "
                "template must put the IO once and S twice (after the IO's mention) as single tokens")
        corr = ps.corrupted.tokens[i, : ps.lengths[i]] if ps.corrupted is not None else None
        if corr is not None:
            differ = (ps.tokens[i, : ps.lengths[i]] != corr).nonzero().flatten().tolist()
            if not set(differ) <= {io_at[0], *s_at}:
                raise PromptSetError(f"ioi: the corrupted counterpart of prompts[{i}]={ps.prompts[i]!r} "
                                     f"differs at positions {differ}, not only at the names")
        out["io_pos"].append(io_at[0])
        out["s1_pos"].append(s_at[0])
        out["s2_pos"].append(s_at[1])
        out["end_pos"].append(ps.lengths[i] - 1)
    return out


def _words(what: str, xs: Any) -> list[str]:
    if isinstance(xs, (str, bytes)):
        raise PromptSetError(bad(what, xs, "a list of words, not one string"))
    try:
        out = list(xs)
    except TypeError:
        raise PromptSetError(bad(what, xs, "a list of words")) from None
    for w in out:
        if not isinstance(w, str) or not w.strip() or w != w.strip():
            raise PromptSetError(bad(what, out, "non-empty words without surrounding spaces"))
    return out


def _filler(model: Any, what: str, words: Any) -> list[str]:
    use = [w for w in dict.fromkeys(_words(what, words)) if is_single_token(model, " " + w)]
    if not use:
        raise PromptSetError(bad(what, list(words), "at least one word that is one token with a leading space"))
    return use


def _templates(templates: Any) -> list[str]:
    temps = _words("templates", templates) if not isinstance(templates, (str, bytes)) else None
    if temps is None or not temps:
        raise PromptSetError(bad("templates", templates, "a non-empty list of template strings"))
    for t in temps:
        a, b, s = t.find("{A}"), t.find("{B}"), t.find("{S}")
        if min(a, b, s) < 1 or not a < b < s or any(t.count(k) != 1 for k in ("{A}", "{B}", "{S}")):
            raise PromptSetError(bad("template", t, "a string with {A}, {B} and {S} once each, in that "
                                                    "order, none at the very start (a name needs its "
                                                    "leading space); {place} and {object} optional"))
        try:
            t.format(A="x", B="x", S="x", place="x", object="x")
        except (KeyError, IndexError, ValueError) as e:
            raise PromptSetError(bad("template", t, f"only the fields A, B, S, place, object ({e})")) from None
    return temps
