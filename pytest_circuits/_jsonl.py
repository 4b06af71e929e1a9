"""Reading the project's JSONL data files (facts, probing datasets, users' own)."""

from __future__ import annotations

import json
from typing import Any, Iterator, Sequence

from .errors import PromptSetError


def rows(text: str, where: str, required: Sequence[str], hint: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line; a line that is not a JSON object
    with the ``required`` keys is an error naming the file and line."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptSetError(f"{where}:{lineno}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise PromptSetError(f"{where}:{lineno}: expected a JSON object, got {type(row).__name__}")
        missing = sorted(k for k in required if k not in row)
        if missing:
            raise PromptSetError(f"{where}:{lineno}: missing keys {missing}" + (f" ({hint})" if hint else ""))
        yield lineno, row
