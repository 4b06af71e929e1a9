"""The argument order every task function shares: the model first, then the task."""

from __future__ import annotations

from typing import Any

from ..errors import PromptSetError
from ..prompts import PromptSet


def _is_task(x: Any) -> bool:
    """A task or prompt set (what a task function measures), told apart from a model by type:
    a model has a ``cfg``; a task has prompts."""
    return isinstance(x, PromptSet) or (not hasattr(x, "cfg") and isinstance(getattr(x, "prompts", None), PromptSet))


def model_first(fn: str, model: Any, task: Any) -> None:
    """Raise when ``fn(task, model)`` was called the old way round (model second)."""
    if _is_task(model) and hasattr(task, "cfg"):
        raise PromptSetError(f"{fn}(model, task, ...) takes the model first: got a {type(model).__name__} "
                             f"first and a {type(task).__name__} second; call {fn}(model, task, ...)")
