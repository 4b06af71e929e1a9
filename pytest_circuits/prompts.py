"""Prompt sets: clean prompts, optional corrupted counterparts and answer tokens.

A :class:`PromptSet` is tokenized once, when it is built against a model, and is
immutable afterwards. Prompts of different lengths are right-padded; because the
models are causal, real tokens never attend to the padding, so every measurement is
read at each prompt's own last real position (``last``).

Checks made when building (each raises :class:`~pytest_circuits.errors.PromptSetError`
saying which prompt and what would be valid):

* the set is not empty;
* every answer (and foil) is exactly one token;
* corrupted prompts are as many as the clean ones and, when ``align=True`` (needed by
  activation patching, where positions must correspond), tokenize to the same length.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .errors import PromptSetError, bad


@dataclass(frozen=True, eq=False)
class PromptSet:
    """An immutable, tokenized set of prompts (build with :meth:`PromptSet.build`)."""

    name: str
    prompts: tuple[str, ...]
    tokens: Any  # LongTensor [n, max_len], right-padded
    lengths: tuple[int, ...]
    answers: tuple[str, ...] | None = None
    answer_ids: tuple[int, ...] | None = None
    foils: tuple[str, ...] | None = None
    foil_ids: tuple[int, ...] | None = None
    corrupted: "PromptSet | None" = None
    meta: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    pad_id: int = 0

    # -- construction ------------------------------------------------------------
    @classmethod
    def build(cls, model: Any, prompts: Sequence[str], *, answers: Sequence[str] | None = None,
              foils: Sequence[str] | None = None, corrupted: Sequence[str] | None = None,
              align: bool = True, name: str = "prompts",
              meta: Mapping[str, Sequence[Any]] | None = None,
              prepend_bos: bool = True) -> "PromptSet":
        prompts = _strings("prompts", prompts)
        if not prompts:
            raise PromptSetError(bad("prompts", [], "at least one prompt"))
        n = len(prompts)
        tokens, lengths, pad_id = _tokenize(model, prompts, prepend_bos)
        answer_ids = _single_tokens(model, "answers", answers, n) if answers is not None else None
        foil_ids = _single_tokens(model, "foils", foils, n) if foils is not None else None
        meta_t: dict[str, tuple[Any, ...]] = {}
        for k, v in (meta or {}).items():
            v = tuple(v)
            if len(v) != n:
                raise PromptSetError(bad(f"meta[{k!r}]", f"{len(v)} values", f"one per prompt ({n})"))
            meta_t[k] = v
        corr = None
        if corrupted is not None:
            corrupted = _strings("corrupted", corrupted)
            if len(corrupted) != n:
                raise PromptSetError(bad("corrupted", f"{len(corrupted)} prompts",
                                         f"one corrupted prompt per clean prompt ({n})"))
            ctoks, clens, _ = _tokenize(model, corrupted, prepend_bos)
            if align:
                for i, (a, b) in enumerate(zip(lengths, clens)):
                    if a != b:
                        raise PromptSetError(
                            f"corrupted[{i}]={corrupted[i]!r} tokenizes to {b} tokens but "
                            f"prompts[{i}]={prompts[i]!r} to {a}: with align=True positions must "
                            "correspond; change the corruption or pass align=False")
            corr = cls(name=f"{name}:corrupted", prompts=corrupted, tokens=ctoks, lengths=clens,
                       answers=tuple(answers) if answers is not None else None,
                       answer_ids=answer_ids, foils=tuple(foils) if foils is not None else None,
                       foil_ids=foil_ids, meta=meta_t, pad_id=pad_id)
        return cls(name=name, prompts=prompts, tokens=tokens, lengths=lengths,
                   answers=tuple(answers) if answers is not None else None, answer_ids=answer_ids,
                   foils=tuple(foils) if foils is not None else None, foil_ids=foil_ids,
                   corrupted=corr, meta=meta_t, pad_id=pad_id)

    # -- reading -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        extra = []
        if self.answers is not None:
            extra.append("answers")
        if self.foils is not None:
            extra.append("foils")
        if self.corrupted is not None:
            extra.append("corrupted")
        return (f"PromptSet({self.name!r}, n={len(self)}, max_len={self.tokens.shape[1]}"
                + (", with " + "+".join(extra) if extra else "") + ")")

    @property
    def last(self) -> Any:
        """LongTensor [n]: index of each prompt's last real token."""
        import torch

        return torch.tensor(self.lengths, dtype=torch.long) - 1

    @property
    def digest(self) -> str:
        """Content hash of the token ids (what the activation cache keys on)."""
        h = hashlib.sha256()
        h.update(json.dumps(list(self.tokens.shape)).encode())
        h.update(self.tokens.to("cpu").contiguous().numpy().tobytes())
        h.update(json.dumps(self.lengths).encode())
        return h.hexdigest()

    def require(self, *what: str) -> None:
        """Raise a clear error if the set lacks ``answers``, ``foils`` or ``corrupted``."""
        for w in what:
            if getattr(self, w) is None:
                raise PromptSetError(f"prompt set {self.name!r} has no {w}: build it with "
                                     f"PromptSet.build(..., {w}=[...]) to use this measurement")

    def subset(self, indices: Sequence[int], name: str | None = None) -> "PromptSet":
        """A new set of the given prompts (tokens reused; corrupted counterparts kept)."""
        import torch

        idx = list(indices)
        if not idx:
            raise PromptSetError(bad("indices", [], "at least one index"))
        for i in idx:
            if not 0 <= i < len(self):
                raise PromptSetError(bad("index", i, f"0..{len(self) - 1}"))
        lengths = tuple(self.lengths[i] for i in idx)
        tokens = self.tokens[torch.tensor(idx)][:, : max(lengths)].clone()

        def pick(t: tuple | None) -> tuple | None:
            return None if t is None else tuple(t[i] for i in idx)

        return PromptSet(name=name or f"{self.name}[{len(idx)}]", prompts=pick(self.prompts),
                         tokens=tokens, lengths=lengths, answers=pick(self.answers),
                         answer_ids=pick(self.answer_ids), foils=pick(self.foils),
                         foil_ids=pick(self.foil_ids),
                         corrupted=self.corrupted.subset(idx) if self.corrupted is not None else None,
                         meta={k: pick(v) for k, v in self.meta.items()}, pad_id=self.pad_id)


def _strings(name: str, xs: Any) -> tuple[str, ...]:
    if isinstance(xs, str):
        raise PromptSetError(bad(name, xs, "a list of strings, not one string"))
    try:
        out = tuple(xs)
    except TypeError:
        raise PromptSetError(bad(name, xs, "a list of strings")) from None
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise PromptSetError(bad(f"{name}[{i}]", x, "a string"))
    return out


def _tokenize(model: Any, texts: tuple[str, ...], prepend_bos: bool) -> tuple[Any, tuple[int, ...], int]:
    import torch

    tok = model.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    rows: list[list[int]] = []
    bos = tok.bos_token_id
    for i, t in enumerate(texts):
        ids = tok.encode(t, add_special_tokens=False)
        if prepend_bos and bos is not None:
            ids = [bos] + ids
        if not ids:
            raise PromptSetError(bad(f"prompts[{i}]", t, "a prompt with at least one token"))
        rows.append(ids)
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, tuple(len(r) for r in rows), int(pad_id)


def single_token_id(model: Any, text: str, what: str = "answer") -> int:
    """The id of ``text`` if it is exactly one token, else a clear error."""
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = model.tokenizer.convert_ids_to_tokens(ids)
        raise PromptSetError(bad(what, text, f"a single token; it tokenizes to {len(ids)} tokens "
                                 f"{pieces} (mind the leading space)"))
    return int(ids[0])


def _single_tokens(model: Any, name: str, xs: Any, n: int) -> tuple[int, ...]:
    xs = _strings(name, xs)
    if len(xs) != n:
        raise PromptSetError(bad(name, f"{len(xs)} items", f"one per prompt ({n})"))
    return tuple(single_token_id(model, x, f"{name}[{i}]") for i, x in enumerate(xs))
