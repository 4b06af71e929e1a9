"""One hierarchy for every error a user can cause.

Each error says what was given (``name=value``) and what would be valid, so the
message alone is enough to fix the call.
"""

from __future__ import annotations


class CircuitsError(ValueError):
    """Base class of every error pytest-circuits raises for bad input."""


class ComponentError(CircuitsError):
    """A component spelling cannot be parsed, or names something the model lacks."""


class PromptSetError(CircuitsError):
    """A prompt set is empty, misaligned, or has answers that are not single tokens."""


class ModelUnavailable(CircuitsError):
    """A model name cannot be turned into a loaded model on this machine."""


class InterventionError(CircuitsError):
    """An ablation or patch cannot be applied as asked."""


class MeasurementError(CircuitsError):
    """A measurement cannot be formed from the values given."""


class CacheWarning(UserWarning):
    """An activation-cache entry was unusable and has been recomputed."""


def bad(name: str, value: object, valid: str) -> str:
    """Format the common message: what was given and what would be valid."""
    return f"{name}={value!r} is not valid: {valid}"


class PromptWarning(UserWarning):
    """A prompt set was built, but some text reached the model as a token it does not mean
    (the unknown token, or a special token written in the text)."""


class NoOpInterventionWarning(UserWarning):
    """An ablation left the output it was meant to replace as it was (on nearly every
    prompt), so an effect of 0 measured under it says nothing about the component."""
