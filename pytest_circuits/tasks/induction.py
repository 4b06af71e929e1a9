"""Repeated random tokens: the task that reveals induction heads (Olsson et al. 2022,
"In-context Learning and Induction Heads", arXiv:2209.11895).

Each prompt is ``[BOS, r_1 .. r_T, r_1 .. r_T]``: a seeded random sequence of ``T``
distinct ordinary tokens of the model's own vocabulary, then the same sequence again.
The first copy cannot be predicted (the tokens are random); every token of the second copy
after its first is predictable by *induction*: find the earlier occurrence of the current
token and copy the token that followed it. The period ``T`` and the position of ``r_1``
are recorded in the prompt set's ``meta`` (``"period"``, ``"start"``), which
:mod:`pytest_circuits.techniques.heads` reads.

Which tokens: every id of the tokenizer that is not special (BOS, EOS, padding, unknown,
``all_special_ids``, added tokens), whose decoded text encodes back to exactly that one
id, and which contains a letter or a digit (no whitespace runs, no lone punctuation or
stray bytes). For a large BPE vocabulary (more than :data:`LARGE_VOCAB` ids) only the ids
between 5% and 50% of the vocabulary are used: BPE ids are roughly in order of merge
frequency, so this skips the byte alphabet and the rarest merges (fragments a model may
hardly have trained on) and keeps real, frequent words. ``vocab_range=(lo, hi)`` sets the
range by hand. Within a prompt the tokens are distinct (drawn without replacement), so
each token's "earlier occurrence" is unique. A vocabulary with too few such tokens (a
word-level vocabulary of codes, say) can still be sampled from :func:`nonspecial_tokens`
(every id that is not special), passed as ``pool``: the prompts are token ids, their text
is only a label.

**Varied periods** (``min_length``): each prompt's period ``T`` is drawn from
``min_length..length`` and the prompt is ``[BOS, f_1..f_k, r_1..r_T, r_1..r_T]`` with
``k = 2 (length - T)`` filler tokens (distinct, none of them an ``r``), so every prompt has
the same ``1 + 2 length`` positions while the distance between the two copies, and where
they start, change from prompt to prompt: a head that attends a fixed distance back, or to
fixed positions, cannot pass for one that follows the tokens.
"""

from __future__ import annotations

import numbers
import weakref
from typing import Any

from ..errors import PromptSetError, bad
from ..prompts import PromptSet, _special_roles, _tokenizer

LARGE_VOCAB = 5000
LARGE_RANGE = (0.05, 0.50)      # fraction of a large vocabulary used by default
_POOLS: "weakref.WeakKeyDictionary[Any, dict[tuple, tuple[int, ...]]]" = weakref.WeakKeyDictionary()


def _int(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise PromptSetError(bad(name, value, f"an int >= {least}"))
    return int(value)


def _special_ids(tok: Any) -> set[int]:
    """BOS, EOS, padding, unknown and every special or added token."""
    ids = set(_special_roles(tok))
    try:
        ids.update(int(i) for i in (getattr(tok, "added_tokens_decoder", None) or {}))
    except (TypeError, ValueError):   # a tokenizer without a usable added-token table
        pass
    return ids


def _vocab_size(model: Any, tok: Any) -> int:
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    size = len(tok)
    return min(size, int(d_vocab)) if isinstance(d_vocab, int) else size


def default_range(model: Any) -> tuple[int, int]:
    """The id range sampled by default: the whole vocabulary, or for one of more than
    :data:`LARGE_VOCAB` ids, ids from 5% to 50% of it (see the module docstring)."""
    size = _vocab_size(model, _tokenizer(model))
    if size <= LARGE_VOCAB:
        return 0, size
    return int(size * LARGE_RANGE[0]), int(size * LARGE_RANGE[1])


def ordinary_tokens(model: Any, vocab_range: tuple[int, int] | None = None) -> tuple[int, ...]:
    """The ids :func:`repeated_tokens` samples from (ascending): in ``vocab_range``
    (default :func:`default_range`), not special, decoding to text that encodes back to
    that one id and contains a letter or digit. Remembered per model and range."""
    tok = _tokenizer(model)
    size = _vocab_size(model, tok)
    if vocab_range is None:
        lo, hi = default_range(model)
    else:
        try:
            lo, hi = vocab_range
        except (TypeError, ValueError):
            raise PromptSetError(bad("vocab_range", vocab_range, "a pair (lo, hi) of token ids")) from None
        if any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in (lo, hi)) \
                or not 0 <= lo < hi <= size:
            raise PromptSetError(bad("vocab_range", vocab_range, f"ints with 0 <= lo < hi <= {size}"))
        lo, hi = int(lo), int(hi)
    try:
        cache = _POOLS.setdefault(model, {})
    except TypeError:                   # not weak-referenceable: not remembered
        cache = {}
    key = (lo, hi, size)
    if key in cache:
        return cache[key]
    special = _special_ids(tok)
    ids = [i for i in range(lo, hi) if i not in special]
    texts = tok.batch_decode([[i] for i in ids]) if ids else []
    keep = [(i, t) for i, t in zip(ids, texts) if any(ch.isalnum() for ch in t)]
    again = tok([t for _, t in keep], add_special_tokens=False)["input_ids"] if keep else []
    pool = [i for (i, _), back in zip(keep, again) if [int(x) for x in back] == [i]]
    cache[key] = tuple(pool)
    return cache[key]


def nonspecial_tokens(model: Any) -> tuple[int, ...]:
    """Every id of the vocabulary that is not special (ascending), whatever its text: the pool
    for a vocabulary with too few :func:`ordinary_tokens` (the task needs distinct ids, not
    readable text)."""
    tok = _tokenizer(model)
    special = _special_ids(tok)
    return tuple(i for i in range(_vocab_size(model, tok)) if i not in special)


def needed_tokens(length: int, min_length: int | None = None) -> int:
    """Distinct tokens one prompt of :func:`repeated_tokens` may need: ``length``, or with
    varied periods the most a period ``T`` in ``min_length..length`` plus its ``2 (length - T)``
    filler tokens take, ``2 length - min_length``."""
    return length if min_length is None or min_length >= length else 2 * length - min_length


def repeated_tokens(model: Any, *, n: int = 32, length: int = 20, seed: int = 0,
                    vocab_range: tuple[int, int] | None = None, name: str | None = None,
                    min_length: int | None = None, pool: Any = None) -> PromptSet:
    """``n`` prompts ``[BOS, r_1..r_length, r_1..r_length]`` of distinct random ordinary
    tokens (seeded: the same ``seed`` gives the same tokens), as a :class:`PromptSet` built
    from token ids; ``prompts`` holds the decoded text (a label: it need not re-tokenize to
    the same ids). A tokenizer without a BOS token gets no BOS. ``meta["period"]`` is
    ``length`` and ``meta["start"]`` the position of ``r_1`` (1 with BOS, else 0), per prompt.

    ``min_length`` (``2..length``): varied periods, each prompt's drawn from
    ``min_length..length`` with filler before the first copy (module docstring); every prompt
    still has ``start + 2 length`` positions. ``pool``: the token ids to draw from (default
    :func:`ordinary_tokens` in ``vocab_range``; e.g. :func:`nonspecial_tokens`).

    Raises :class:`~pytest_circuits.errors.PromptSetError` for ``n < 1``, ``length < 2``, a
    ``min_length`` outside ``2..length``, a prompt longer than the model's context, or a pool
    with fewer distinct tokens than a prompt needs (:func:`needed_tokens`).
    """
    import numpy as np
    import torch

    n = _int("n", n, 1)
    length = _int("length", length, 2)
    seed = _int("seed", seed, 0)
    if min_length is not None:
        min_length = _int("min_length", min_length, 2)
        if min_length > length:
            raise PromptSetError(bad("min_length", min_length, f"at most length={length}"))
    tok = _tokenizer(model)
    bos = tok.bos_token_id
    start = 1 if bos is not None else 0
    total = start + 2 * length
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(n_ctx, int) and total > n_ctx:
        raise PromptSetError(bad("length", length, f"at most {(n_ctx - start) // 2}: two copies"
                                 f"{' plus BOS' if start else ''} take {total} positions, the model's "
                                 f"context n_ctx is {n_ctx}"))
    if pool is None:
        pool = np.asarray(ordinary_tokens(model, vocab_range), dtype=np.int64)
        what = "ordinary tokens in the range sampled"
    else:
        pool = np.asarray(sorted(set(_pool_ids(model, tok, pool))), dtype=np.int64)
        what = "distinct tokens in the pool given"
    need = needed_tokens(length, min_length)
    if len(pool) < need:
        raise PromptSetError(bad("length", length, f"prompts of at most {len(pool)} distinct tokens: there are "
                                 f"only {len(pool)} {what}, and a prompt's tokens are distinct (these "
                                 f"need {need})"))
    rng = np.random.default_rng(seed)
    if min_length is None or min_length == length:
        seqs = np.stack([rng.choice(pool, size=length, replace=False) for _ in range(n)])
        rows = np.concatenate([seqs, seqs], 1)
        periods, starts = (length,) * n, (start,) * n
    else:
        periods = tuple(int(t) for t in rng.integers(min_length, length + 1, size=n))
        out = []
        for t in periods:
            drawn = rng.choice(pool, size=t + 2 * (length - t), replace=False)
            seq, filler = drawn[:t], drawn[t:]
            out.append(np.concatenate([filler, seq, seq]))
        rows = np.stack(out)
        starts = tuple(start + 2 * (length - t) for t in periods)
    texts = tuple(tok.batch_decode([list(map(int, r)) for r in rows]))
    if start:
        rows = np.concatenate([np.full((n, 1), int(bos), dtype=np.int64), rows], 1)
    tokens = torch.tensor(rows, dtype=torch.long)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    varied = "" if min_length is None else f", min_length={min_length}"
    return PromptSet(name=name or f"repeated_tokens(n={n}, length={length}{varied}, seed={seed})", prompts=texts,
                     tokens=tokens, lengths=(total,) * n,
                     meta={"period": periods, "start": starts}, pad_id=int(pad))


def _pool_ids(model: Any, tok: Any, pool: Any) -> list[int]:
    size = _vocab_size(model, tok)
    try:
        ids = list(pool)
    except TypeError:
        raise PromptSetError(bad("pool", pool, "a sequence of token ids")) from None
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= int(i) < size:
            raise PromptSetError(bad("pool", i, f"token ids in 0..{size - 1}"))
        out.append(int(i))
    return out
