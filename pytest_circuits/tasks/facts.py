"""Factual-recall prompts written by the project (``pytest_circuits/data/facts.jsonl``).

Each line: ``{"prompt", "answer", "foil", "relation"}``; ``answer`` is the correct
single-token continuation (leading space included) and ``foil`` a wrong answer of
the same kind, so ``logit(answer) - logit(foil)`` measures recall of the fact against
a plausible confusion. The file is model-independent; items whose answer or foil is
not a single ordinary token for a model's tokenizer (one token, not the unknown token,
not a special token) are left out (and counted).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from .. import _jsonl as jsonl
from ..errors import PromptSetError, bad
from ..prompts import PromptSet, is_single_token


def load_facts(path: str | Path | None = None) -> list[dict[str, str]]:
    """Read a facts JSONL file (the shipped one by default), checking each line's keys."""
    if path is None:
        text = resources.files("pytest_circuits").joinpath("data/facts.jsonl").read_text("utf-8")
        where = "pytest_circuits/data/facts.jsonl"
    else:
        text = Path(path).read_text("utf-8")
        where = str(path)
    return [row for _, row in jsonl.rows(text, where, ("prompt", "answer", "foil", "relation"))]


def facts(model: Any, *, relations: Sequence[str] | None = None, path: str | Path | None = None,
          name: str = "facts") -> PromptSet:
    """A PromptSet of facts (answers and foils) for ``model``, optionally of some relations."""
    rows = load_facts(path)
    if relations is not None:
        known = sorted({r["relation"] for r in rows})
        unknown = [r for r in relations if r not in known]
        if unknown:
            raise PromptSetError(bad("relations", unknown, f"relations in the file: {known}"))
        rows = [r for r in rows if r["relation"] in set(relations)]
    kept = [r for r in rows if is_single_token(model, r["answer"]) and is_single_token(model, r["foil"])]
    if not kept:
        raise PromptSetError("facts: no item has a single-token answer and foil for this tokenizer")
    return PromptSet.build(model, [r["prompt"] for r in kept], answers=[r["answer"] for r in kept],
                           foils=[r["foil"] for r in kept], name=name,
                           meta={"relation": [r["relation"] for r in kept]})
