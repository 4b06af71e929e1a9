"""Ordinal sequences resolved against a model's tokenizer, for successor heads.

Successor heads (Gould et al. 2023, arXiv:2312.09230) map a token of an ordinal
sequence to its successor ("Monday" -> "Tuesday", "3" -> "4", "C" -> "D"). The paper's
tasks are numbers, number words, ordinal words, weekdays, months (and their
abbreviations) and letters; :data:`SEQUENCES` holds them.

:func:`ordinals` keeps, for each sequence, the members that are single ordinary tokens
of the model's tokenizer (not the unknown token, not a special token, and decoding back
to the word), trying each member with a leading space (``" Monday"``, the form a
byte-level BPE tokenizer such as GPT-2's or SmolLM2's uses inside text) and bare
(``"Monday"``), and taking, per sequence, the form under which more members are single
tokens (ties: the leading space). Every member left out is reported with the reason
(``"' 10' tokenizes to 2 tokens"``, ``"'Monday' is the unknown token"``), and so is every
sequence left out (fewer than ``min_members`` single-token members, or no two consecutive
ones). A (token, successor) pair needs both members kept and consecutive in the
sequence; wrap-arounds (Sunday -> Monday) are not pairs.

On SmolLM2-135M (digits split one per token, words with a leading space): numbers keep
"1".."9" bare (" 1" is two tokens, "10".."20" too), the word sequences keep their
leading-space forms. On the word-level tokenizer of
:func:`pytest_circuits.testing.make_tiny_checkpoint` only the digits 1..9 are tokens, 8
pairs: fewer than a successor check's minimum, so the check is not applicable there.

:func:`successor_prompts` builds in-context prompts from consecutive members, each
followed by a comma (``" Monday, Tuesday, Wednesday,"`` -> answer ``" Thursday"``; bare
forms ``"1,2,3,"`` -> ``"4"``), for a behavioural check; a window whose text does not
tokenize back into exactly those tokens and commas gives no prompt. (SmolLM2-135M-Instruct
continues the comma lists far better than space-separated ones: " Monday Tuesday
Wednesday" -> ".", " Monday, Tuesday, Wednesday," -> " and", " Friday", ...)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import CircuitsError, PromptSetError, bad
from ..prompts import PromptSet, is_single_token

NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                "eighteen", "nineteen", "twenty")
SEQUENCES: dict[str, tuple[str, ...]] = {
    "numbers": tuple(str(i) for i in range(1, 21)),
    "number words": NUMBER_WORDS,
    "ordinals": ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                 "ninth", "tenth"),
    "weekdays": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "weekday abbreviations": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "months": ("January", "February", "March", "April", "May", "June", "July", "August",
               "September", "October", "November", "December"),
    "month abbreviations": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                            "Nov", "Dec"),
    "letters": tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
}
VARIANTS = (" ", "")      # leading space first: it wins ties
MIN_MEMBERS = 3           # a sequence with fewer single-token members is left out


@dataclass(frozen=True)
class OrdinalClass:
    """One sequence as the model's tokenizer has it: the kept members, in order."""

    name: str
    variant: str                       # " " (leading space) or "" (bare)
    words: tuple[str, ...]             # kept members (without the variant's space)
    ids: tuple[int, ...]               # their token ids
    positions: tuple[int, ...]         # their index in the full sequence
    dropped: tuple[tuple[str, str], ...] = ()   # (text, why) for members left out

    @property
    def texts(self) -> tuple[str, ...]:
        """The kept members as the tokenizer reads them (with the variant's space)."""
        return tuple(self.variant + w for w in self.words)

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """(index, index of the successor) into :attr:`ids`, for consecutive members."""
        return tuple((i, i + 1) for i in range(len(self.ids) - 1)
                     if self.positions[i + 1] == self.positions[i] + 1)


@dataclass(frozen=True)
class Ordinals:
    """The sequences of :data:`SEQUENCES` (or those asked for) a tokenizer keeps."""

    classes: tuple[OrdinalClass, ...]
    dropped: tuple[tuple[str, str], ...] = ()   # (sequence, why) for sequences left out

    @property
    def n_pairs(self) -> int:
        return sum(len(c.pairs) for c in self.classes)

    @property
    def pairs(self) -> tuple[tuple[int, int, int], ...]:
        """Every (class index, token index, successor index), class by class."""
        return tuple((k, i, j) for k, c in enumerate(self.classes) for i, j in c.pairs)

    @property
    def pair_ids(self) -> tuple[tuple[int, int], ...]:
        """Every (token id, successor id)."""
        return tuple((self.classes[k].ids[i], self.classes[k].ids[j]) for k, i, j in self.pairs)

    def not_applicable(self, min_pairs: int, min_classes: int = 1) -> str | None:
        """Why a check needing ``min_pairs`` pairs from ``min_classes`` sequences cannot run
        (None when it can)."""
        have = [c for c in self.classes if c.pairs]
        if self.n_pairs < min_pairs or len(have) < min_classes:
            kept = ", ".join(f"{c.name} ({len(c.pairs)})" for c in have) or "none"
            return (f"the tokenizer has {self.n_pairs} single-token (token, successor) pairs in "
                    f"{len(have)} ordinal sequence(s) [{kept}]; the check needs at least {min_pairs} "
                    f"pairs from at least {min_classes} sequences")
        return None

    def report(self) -> str:
        """What was kept and what was left out, and why: a few lines."""
        lines = []
        for c in self.classes:
            form = "leading space" if c.variant else "bare"
            lines.append(f"{c.name}: {len(c.ids)} tokens ({form}), {len(c.pairs)} pairs"
                         + (f"; left out {len(c.dropped)}: " + ", ".join(f"{t!r} ({why})" for t, why in c.dropped[:4])
                            + (" ..." if len(c.dropped) > 4 else "") if c.dropped else ""))
        for name, why in self.dropped:
            lines.append(f"{name}: left out ({why})")
        return "\n".join(lines)


def _resolve_member(model: Any, text: str, word: str) -> tuple[int | None, str | None]:
    """``(id, None)`` when ``text`` is one ordinary token that decodes to ``word``, else
    ``(None, why)`` in a few words."""
    tok = model.tokenizer
    if not is_single_token(model, text):
        ids = [int(i) for i in tok.encode(text, add_special_tokens=False)]
        if len(ids) != 1:
            return None, f"{len(ids)} tokens"
        return None, ("the unknown token" if ids[0] == getattr(tok, "unk_token_id", None)
                      else "a special token or outside the model's vocabulary")
    tid = int(tok.encode(text, add_special_tokens=False)[0])
    decoded = tok.decode([tid])
    if decoded.strip() != word:
        return None, f"its token decodes to {decoded!r}"
    return tid, None


def _resolve(model: Any, name: str, words: Sequence[str], min_members: int) -> OrdinalClass | str:
    best: tuple[int, str, list[tuple[int, int, str]], list[tuple[str, str]]] | None = None
    for variant in VARIANTS:
        kept: list[tuple[int, int, str]] = []
        dropped: list[tuple[str, str]] = []
        seen: set[int] = set()
        for pos, w in enumerate(words):
            tid, problem = _resolve_member(model, variant + w, w)
            if tid is not None and tid in seen:
                tid, problem = None, "its token is another member's"
            if tid is None:
                dropped.append((variant + w, str(problem)))
            else:
                seen.add(tid)
                kept.append((pos, tid, w))
        if best is None or len(kept) > len(best[2]):
            best = (len(kept), variant, kept, dropped)
    assert best is not None
    _, variant, kept, dropped = best
    if len(kept) < min_members:
        first = f"; e.g. {dropped[0][0]!r}: {dropped[0][1]}" if dropped else ""
        return (f"{len(kept)} of its {len(words)} members are single tokens, fewer than "
                f"{min_members}{first}")
    cls = OrdinalClass(name=name, variant=variant, words=tuple(w for _, _, w in kept),
                       ids=tuple(t for _, t, _ in kept), positions=tuple(p for p, _, _ in kept),
                       dropped=tuple(dropped))
    if not cls.pairs:
        return "no two consecutive members are single tokens"
    return cls


def ordinals(model: Any, *, sequences: Mapping[str, Sequence[str]] | None = None,
             min_members: int = MIN_MEMBERS) -> Ordinals:
    """The ordinal sequences (default :data:`SEQUENCES`) kept by ``model``'s tokenizer.

    See the module docstring for what is kept. Never raises for a tokenizer that lacks
    the tokens: the result then has few or no pairs, and
    :meth:`Ordinals.not_applicable` says why a check cannot run.
    """
    if getattr(model, "tokenizer", None) is None:
        raise CircuitsError(bad("model", type(model).__name__, "a model with a tokenizer"))
    if isinstance(min_members, bool) or not isinstance(min_members, int) or min_members < 2:
        raise CircuitsError(bad("min_members", min_members, "an int >= 2"))
    seqs = SEQUENCES if sequences is None else sequences
    if not isinstance(seqs, Mapping) or not seqs:
        raise CircuitsError(bad("sequences", seqs, "a non-empty mapping of name -> ordered words"))
    classes: list[OrdinalClass] = []
    dropped: list[tuple[str, str]] = []
    for name, words in seqs.items():
        if isinstance(words, str) or not all(isinstance(w, str) and w and not any(ch.isspace() for ch in w)
                                             for w in words):
            raise CircuitsError(bad(f"sequences[{name!r}]", words, "a sequence of words without spaces"))
        got = _resolve(model, str(name), tuple(words), min_members)
        if isinstance(got, str):
            dropped.append((str(name), got))
        else:
            classes.append(got)
    return Ordinals(classes=tuple(classes), dropped=tuple(dropped))


@dataclass(frozen=True)
class Window:
    """One in-context prompt: ``context`` consecutive members of a class, then the next."""

    cls: int            # index into Ordinals.classes
    start: int          # index of the first context member in the class's ids
    context: int

    def ids(self, o: Ordinals) -> tuple[int, ...]:
        return o.classes[self.cls].ids[self.start:self.start + self.context]

    def answer(self, o: Ordinals) -> int:
        return o.classes[self.cls].ids[self.start + self.context]


SEP = ","   # what follows each member in an in-context prompt: " Monday, Tuesday, Wednesday,"


def successor_windows(model: Any, o: Ordinals, *, context: int = 3, sep: str = SEP
                      ) -> tuple[list[Window], list[str]]:
    """Every window of ``context`` + 1 consecutive kept members whose prompt text (each
    member in its form, followed by ``sep``) tokenizes as the members' tokens, each followed
    by ``sep``'s tokens; and, per class that gives none, why."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise CircuitsError(bad("context", context, "an int >= 1 (members before the answer)"))
    if not isinstance(sep, str):
        raise CircuitsError(bad("sep", sep, "a string"))
    tok = model.tokenizer
    sep_ids = [int(t) for t in tok.encode(sep, add_special_tokens=False)] if sep else []
    windows: list[Window] = []
    why: list[str] = []
    if any(not is_single_token(model, tok.decode([t])) for t in sep_ids):
        return [], [f"the separator {sep!r} is not text this tokenizer knows (unknown or special tokens)"]
    for k, c in enumerate(o.classes):
        mine: list[Window] = []
        for s in range(len(c.ids) - context):
            if c.positions[s + context] - c.positions[s] != context:
                continue
            want = [x for t in c.ids[s:s + context] for x in [t] + sep_ids]
            if [int(t) for t in tok.encode(_join(c, s, context, sep), add_special_tokens=False)] == want:
                mine.append(Window(k, s, context))
        if not mine:
            why.append(f"{c.name}: no {context} consecutive members tokenize as themselves in "
                       f"{_join(c, 0, min(context, len(c.words)), sep)!r}")
        windows += mine
    return windows, why


def _join(c: OrdinalClass, start: int, context: int, sep: str = SEP) -> str:
    return "".join(c.variant + w + sep for w in c.words[start:start + context])


def successor_prompts(model: Any, o: Ordinals | None = None, *, context: int = 3, n: int | None = None,
                      seed: int = 0, sep: str = SEP, name: str = "successor") -> PromptSet:
    """In-context successor prompts: ``" Monday, Tuesday, Wednesday,"`` -> ``" Thursday"``
    (bare forms: ``"1,2,3,"`` -> ``"4"``).

    One prompt per window of :func:`successor_windows` (a seeded sample of ``n`` of them
    when there are more), in class order. ``meta``: ``"class"`` (the sequence's name),
    ``"class_index"`` (into ``o.classes``). Raises
    :class:`~pytest_circuits.errors.PromptSetError` when no window tokenizes as itself.
    """
    o = ordinals(model) if o is None else o
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise CircuitsError(bad("n", n, "None (every window) or an int >= 1"))
    windows, why = successor_windows(model, o, context=context, sep=sep)
    if not windows:
        raise PromptSetError("no in-context successor prompt can be built for this tokenizer: "
                             + ("; ".join(why) or "it keeps no ordinal sequence"))
    if n is not None and n < len(windows):
        keep = sorted(random.Random(seed).sample(range(len(windows)), n))
        windows = [windows[i] for i in keep]
    texts = [_join(o.classes[w.cls], w.start, w.context, sep) for w in windows]
    answers = [o.classes[w.cls].texts[w.start + w.context] for w in windows]
    return PromptSet.build(model, texts, answers=answers, name=name,
                           meta={"class": [o.classes[w.cls].name for w in windows],
                                 "class_index": [w.cls for w in windows]})
