"""Prompt sets: clean prompts, optional corrupted counterparts and answer tokens.

A :class:`PromptSet` is tokenized once, when it is built against a model, and is
immutable afterwards. Prompts of different lengths are right-padded; because the
models are causal, real tokens never attend to the padding, so every measurement is
read at each prompt's own last real position (``last``).

Checks made when building (each raises :class:`~pytest_circuits.errors.PromptSetError`
saying which prompt and what would be valid):

* the set is not empty, and every text is a string that can be encoded as UTF-8 (a lone
  surrogate such as ``"\\ud800"`` cannot);
* every answer (and foil) is exactly one ordinary token: not the unknown token (which
  every word the tokenizer lacks shares, so the answer would be no answer at all) and
  not a special token (BOS, EOS, padding);
* no prompt is longer than the model's context (``model.cfg.n_ctx``, BOS included), and
  every token id is inside the model's vocabulary;
* corrupted prompts are as many as the clean ones and, when ``align=True`` (needed by
  activation patching, where positions must correspond), tokenize to the same length.

A prompt that contains the unknown token, or a special token written in its text, is
built but warned about (:class:`~pytest_circuits.errors.PromptWarning`, one warning per
set naming the prompts and the pieces of text concerned): the model reads that token,
not the text. A byte-level tokenizer (GPT-2, SmolLM2) has no unknown token, so only the
special-token half can apply to it.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .errors import PromptSetError, PromptWarning, bad


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
        tokens, lengths, pad_id = _tokenize(model, prompts, prepend_bos, "prompts")
        answer_ids = _single_tokens(model, "answers", answers, n) if answers is not None else None
        foil_ids = _single_tokens(model, "foils", foils, n) if foils is not None else None
        meta_t: dict[str, tuple[Any, ...]] = {}
        if meta is not None and not isinstance(meta, Mapping):
            raise PromptSetError(bad("meta", meta, "a mapping of name -> one value per prompt"))
        for k, v in (meta or {}).items():
            if isinstance(v, (str, bytes)):
                raise PromptSetError(bad(f"meta[{k!r}]", v, f"a sequence of one value per prompt ({n})"))
            try:
                v = tuple(v)
            except TypeError:
                raise PromptSetError(bad(f"meta[{k!r}]", v, f"a sequence of one value per prompt ({n})")) from None
            if len(v) != n:
                raise PromptSetError(bad(f"meta[{k!r}]", f"{len(v)} values", f"one per prompt ({n})"))
            meta_t[k] = v
        corr = None
        if corrupted is not None:
            corrupted = _strings("corrupted", corrupted)
            if len(corrupted) != n:
                raise PromptSetError(bad("corrupted", f"{len(corrupted)} prompts",
                                         f"one corrupted prompt per clean prompt ({n})"))
            ctoks, clens, _ = _tokenize(model, corrupted, prepend_bos, "corrupted")
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
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < len(self):
                raise PromptSetError(bad("index", i, f"0..{len(self) - 1}"))
        idx = [int(i) for i in idx]
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
    if isinstance(xs, (str, bytes)):
        raise PromptSetError(bad(name, xs, "a list of strings, not one string"))
    try:
        out = tuple(xs)
    except TypeError:
        raise PromptSetError(bad(name, xs, "a list of strings")) from None
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise PromptSetError(bad(f"{name}[{i}]", x, "a string"))
        try:
            x.encode("utf-8")
        except UnicodeEncodeError as e:
            raise PromptSetError(bad(f"{name}[{i}]", x, f"text that can be encoded as UTF-8; the character "
                                     f"{x[e.start]!r} at index {e.start} is a lone surrogate")) from None
    return out


def _short(text: str, limit: int = 60) -> str:
    """``repr`` of ``text``, cut to ``limit`` characters (long prompts in messages)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _tokenizer(model: Any) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise PromptSetError(bad("model", type(model).__name__,
                                 "a model with a tokenizer (from pytest_circuits.load_model)"))
    return tok


def _encode(tok: Any, text: str, what: str) -> list[int]:
    try:
        ids = tok.encode(text, add_special_tokens=False)
        return [int(i) for i in ids]
    except Exception as e:  # a tokenizer's own failure, said in the project's words
        raise PromptSetError(bad(what, text, f"text this tokenizer can encode "
                                 f"(it raised {type(e).__name__}: {e})")) from e


def _special_roles(tok: Any) -> dict[int, list[str]]:
    """Each special token id of ``tok`` -> its roles ("unknown", "BOS", "EOS", "padding", "special")."""
    roles: dict[int, list[str]] = {}
    for attr, role in (("unk_token_id", "unknown"), ("bos_token_id", "BOS"),
                       ("eos_token_id", "EOS"), ("pad_token_id", "padding")):
        tid = getattr(tok, attr, None)
        if isinstance(tid, numbers.Integral) and not isinstance(tid, bool):
            roles.setdefault(int(tid), []).append(role)
    for tid in getattr(tok, "all_special_ids", None) or ():
        roles.setdefault(int(tid), []).append("special")
    return {k: [r for r in dict.fromkeys(v) if r != "special" or len(set(v)) == 1]
            for k, v in roles.items()}


def _real_unk(tok: Any, roles: dict[int, list[str]]) -> int | None:
    """The unknown token's id, where it stands for unknown text (GPT-2's ``<|endoftext|>`` is
    unknown, BOS and EOS at once, and never produced for unknown text: not a real one)."""
    unk = getattr(tok, "unk_token_id", None)
    if not isinstance(unk, numbers.Integral) or isinstance(unk, bool):
        return None
    return int(unk) if not set(roles.get(int(unk), [])) & {"BOS", "EOS", "padding"} else None


def _token_name(tok: Any, tid: int) -> str:
    try:
        return str(tok.convert_ids_to_tokens(tid))
    except Exception:  # a tokenizer that cannot name its own id: show the id
        return f"id {tid}"


def _pieces(tok: Any, text: str, wanted: set[int]) -> list[str]:
    """The pieces of ``text`` that became one of the ``wanted`` ids (fast tokenizers only)."""
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return [text[a:b] for (a, b), i in zip(enc["offset_mapping"], enc["input_ids"]) if int(i) in wanted]
    except Exception:  # slow tokenizers have no offsets; the warning still names the prompt
        return []


def _tokenize(model: Any, texts: tuple[str, ...], prepend_bos: bool,
              name: str = "prompts") -> tuple[Any, tuple[int, ...], int]:
    import torch

    tok = _tokenizer(model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    cfg = getattr(model, "cfg", None)
    n_ctx = getattr(cfg, "n_ctx", None)
    d_vocab = getattr(cfg, "d_vocab", None)
    roles = _special_roles(tok)
    unk = _real_unk(tok, roles)
    flagged: list[str] = []
    rows: list[list[int]] = []
    bos = tok.bos_token_id
    for i, t in enumerate(texts):
        ids = _encode(tok, t, f"{name}[{i}]")
        odd = {x for x in ids if x in roles}
        if odd:
            found = [f"the unknown token {_token_name(tok, x)!r}" if x == unk
                     else f"the special token {_token_name(tok, x)!r}" for x in sorted(odd)]
            pieces = _pieces(tok, t, odd)
            flagged.append(f"{name}[{i}]={_short(t)} has " + " and ".join(found)
                           + (f" (from {pieces[:5]})" if pieces else ""))
        if prepend_bos and bos is not None:
            ids = [int(bos)] + ids
        if not ids:
            raise PromptSetError(bad(f"{name}[{i}]", t, "a prompt with at least one token"))
        if isinstance(n_ctx, int) and len(ids) > n_ctx:
            raise PromptSetError(
                f"{name}[{i}]={_short(t)} is not valid: it tokenizes to {len(ids)} tokens"
                f"{' (BOS included)' if prepend_bos and bos is not None else ''}, longer than the model's "
                f"context n_ctx={n_ctx}; shorten it to at most {n_ctx} tokens")
        if isinstance(d_vocab, int) and any(not 0 <= x < d_vocab for x in ids):
            x = next(x for x in ids if not 0 <= x < d_vocab)
            raise PromptSetError(bad(f"{name}[{i}]", t, f"text whose token ids the model has: the tokenizer "
                                     f"gives id {x}, outside the model's vocabulary 0..{d_vocab - 1}"))
        rows.append(ids)
    if flagged:
        warnings.warn(PromptWarning(
            f"{len(flagged)} of {len(texts)} {name} reach the model as a token that is not their text "
            "(the unknown token, which every word the tokenizer lacks shares, or a special token written "
            "in the text): " + "; ".join(flagged[:3]) + ("; ..." if len(flagged) > 3 else "")
            + ". Reword them with text the tokenizer knows, or check that this is meant."), stacklevel=3)
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, tuple(len(r) for r in rows), int(pad_id)


def _answer_problem(model: Any, text: str, what: str = "answer") -> tuple[int | None, str | None]:
    """``(id, None)`` if ``text`` is one ordinary token of ``model``, else ``(None, what is wrong)``."""
    tok = _tokenizer(model)
    ids = _encode(tok, text, what)
    if len(ids) != 1:
        try:
            pieces = tok.convert_ids_to_tokens(ids)
        except Exception:  # a tokenizer that cannot name its ids: show the ids
            pieces = ids
        return None, (f"a single token; it tokenizes to {len(ids)} tokens {pieces} "
                      "(mind the leading space)")
    tid = ids[0]
    roles = _special_roles(tok)
    if tid == _real_unk(tok, roles):
        return None, (f"a token this tokenizer knows; it becomes the unknown token "
                      f"{_token_name(tok, tid)!r} (id {tid}), which every word the tokenizer lacks "
                      "shares, so it would not measure this answer")
    if tid in roles:
        return None, (f"an ordinary token; it is the special token {_token_name(tok, tid)!r} "
                      f"(id {tid}; the tokenizer's {'/'.join(roles[tid])} token)")
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if isinstance(d_vocab, int) and not 0 <= tid < d_vocab:
        return None, f"a token of the model; the tokenizer gives id {tid}, outside 0..{d_vocab - 1}"
    return tid, None


def single_token_id(model: Any, text: str, what: str = "answer") -> int:
    """The id of ``text`` if it is exactly one ordinary token, else a clear error.

    Ordinary: not the unknown token and not a special token (BOS, EOS, padding, ...).
    """
    if not isinstance(text, str):
        raise PromptSetError(bad(what, text, "a string"))
    _strings(what, [text])
    tid, problem = _answer_problem(model, text, what)
    if problem is not None:
        raise PromptSetError(bad(what, text, problem))
    return int(tid)


def is_single_token(model: Any, text: str) -> bool:
    """Whether ``text`` is exactly one ordinary token of ``model`` (what answers must be)."""
    if not isinstance(text, str):
        return False
    try:
        text.encode("utf-8")
        return _answer_problem(model, text)[1] is None
    except (UnicodeEncodeError, PromptSetError):
        return False


def _single_tokens(model: Any, name: str, xs: Any, n: int) -> tuple[int, ...]:
    xs = _strings(name, xs)
    if len(xs) != n:
        raise PromptSetError(bad(name, f"{len(xs)} items", f"one per prompt ({n})"))
    return tuple(single_token_id(model, x, f"{name}[{i}]") for i, x in enumerate(xs))
