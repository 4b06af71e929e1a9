"""Tiny offline models for tests and planted mechanisms.

:func:`make_tiny_checkpoint` writes a small random checkpoint (safetensors; Llama by
default, any family of :mod:`pytest_circuits.architectures`) with a word-level tokenizer
(digits split one per token) into a folder; loading that folder with
:func:`pytest_circuits.load_model` exercises the same path as a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .architectures import SPECIALS, WORDS, FAMILIES, build, write_tokenizer  # noqa: F401 - re-exported
from .errors import CircuitsError, bad


def make_tiny_checkpoint(path: str | Path, *, n_layers: int = 2, d_model: int = 64, n_heads: int = 4,
                         n_kv_heads: int | None = None, d_mlp: int = 128, seed: int = 0,
                         words: Iterable[str] = WORDS, two_digit_numbers: bool = False,
                         arch: str = "llama") -> Path:
    """Write a random tiny checkpoint + tokenizer to ``path`` and return it.

    ``arch`` is a family of :data:`pytest_circuits.architectures.FAMILIES` (default
    ``"llama"``; ``"gpt2"``: LayerNorm with biases, learned positions, attention biases, to
    exercise claims written for GPT-2 without its weights). Numbers are split one token per
    digit (like SmolLM2 or Llama), or with ``two_digit_numbers=True`` into two-digit tokens
    "00".."99" (like GPT-2's years). Every bias (query/key/value and attention output, both
    MLP layers, every norm) and every norm weight is set to clearly non-zero random values
    (HF initialises biases to 0), and learned position embeddings to the size of the token
    embeddings, so a measurement that forgets a writer to the residual stream is caught on it.

    ``n_kv_heads < n_heads`` (Llama) gives grouped-query attention, as in SmolLM2.
    """
    if arch not in FAMILIES:
        raise CircuitsError(bad("arch", arch, "one of " + ", ".join(FAMILIES)))
    return build(arch, path, seed=seed, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                 n_kv_heads=n_kv_heads, d_mlp=d_mlp, words=words, two_digit_numbers=two_digit_numbers)
