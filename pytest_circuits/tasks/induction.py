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
each token's "earlier occurrence" is unique.
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


def repeated_tokens(model: Any, *, n: int = 32, length: int = 20, seed: int = 0,
                    vocab_range: tuple[int, int] | None = None, name: str | None = None) -> PromptSet:
    """``n`` prompts ``[BOS, r_1..r_length, r_1..r_length]`` of distinct random ordinary
    tokens (seeded: the same ``seed`` gives the same tokens), as a :class:`PromptSet` built
    from token ids; ``prompts`` holds the decoded text (a label: it need not re-tokenize to
    the same ids). A tokenizer without a BOS token gets no BOS. ``meta["period"]`` is
    ``length`` and ``meta["start"]`` the position of ``r_1`` (1 with BOS, else 0), per prompt.

    Raises :class:`~pytest_circuits.errors.PromptSetError` for ``n < 1``, ``length < 2``, a
    prompt longer than the model's context, or fewer ordinary tokens than ``length``.
    """
    import numpy as np
    import torch

    n = _int("n", n, 1)
    length = _int("length", length, 2)
    seed = _int("seed", seed, 0)
    tok = _tokenizer(model)
    bos = tok.bos_token_id
    start = 1 if bos is not None else 0
    total = start + 2 * length
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(n_ctx, int) and total > n_ctx:
        raise PromptSetError(bad("length", length, f"at most {(n_ctx - start) // 2}: two copies"
                                 f"{' plus BOS' if start else ''} take {total} positions, the model's "
                                 f"context n_ctx is {n_ctx}"))
    pool = np.asarray(ordinary_tokens(model, vocab_range), dtype=np.int64)
    if len(pool) < length:
        raise PromptSetError(bad("length", length, f"at most {len(pool)}: the tokenizer has only "
                                 f"{len(pool)} ordinary tokens in the range sampled, and a sequence's "
                                 "tokens are distinct"))
    rng = np.random.default_rng(seed)
    seqs = np.stack([rng.choice(pool, size=length, replace=False) for _ in range(n)])
    rows = np.concatenate([seqs, seqs], 1)
    if start:
        rows = np.concatenate([np.full((n, 1), int(bos), dtype=np.int64), rows], 1)
    tokens = torch.tensor(rows, dtype=torch.long)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    texts = tuple(tok.batch_decode([list(map(int, r)) for r in np.concatenate([seqs, seqs], 1)]))
    return PromptSet(name=name or f"repeated_tokens(n={n}, length={length}, seed={seed})", prompts=texts,
                     tokens=tokens, lengths=(total,) * n,
                     meta={"period": (length,) * n, "start": (start,) * n}, pad_id=int(pad))
