"""One hierarchy for every error and warning pytest-circuits raises.

Each error says what was given (``name=value``) and what would be valid, so the
message alone is enough to fix the call. Every class is defined here; the modules that
raise one also export it under its old path (``pytest_circuits.merge.MergeError`` is this
module's :class:`MergeError`), so either import works.

Errors (all :class:`CircuitsError`, a ``ValueError``)::

    CircuitsError
    ├── ComponentError          a component spelling, or a component the model lacks
    ├── PromptSetError          a prompt set that cannot be used
    │   └── TooFewNamesError    (IOI) too few single-token names for the prompt set
    ├── ModelUnavailable        a model that cannot be loaded on this machine
    ├── DeviceMapError          a device map that cannot place this model (a usage mistake)
    ├── InterventionError       an ablation or patch that cannot be applied
    ├── MeasurementError        a measurement that cannot be formed
    ├── ProbingError            a probe that cannot be fitted as asked
    ├── BaselineError           a baseline file or tolerance that cannot be used
    │   └── DuplicateMetricError
    ├── BlobError               a cache location that cannot be used
    ├── FigureError             a figure (SVG) that a claim cannot attach
    └── MergeError              reports that cannot be merged

Warnings (all :class:`CircuitsWarning`, a ``UserWarning``)::

    CircuitsWarning
    ├── CacheWarning, PromptWarning, NoOpInterventionWarning, NegligibleCosineWarning

A claim whose model raises :class:`ModelUnavailable` is skipped (failed under
``--circuits-require-models``); any other :class:`CircuitsError` while its model loads
(a :class:`DeviceMapError`) fails it: the user's own input is wrong, the model is not missing.
"""

from __future__ import annotations


class CircuitsError(ValueError):
    """Base class of every error pytest-circuits raises for bad input."""


class ComponentError(CircuitsError):
    """A component spelling cannot be parsed, or names something the model lacks."""


class PromptSetError(CircuitsError):
    """A prompt set is empty, misaligned, or has answers that are not single tokens."""


class TooFewNamesError(PromptSetError):
    """The model's tokenizer writes too few of the candidate names as single tokens for an
    IOI prompt set (each prompt needs two names and its ABC counterpart three others)."""


class ModelUnavailable(CircuitsError):
    """A model name cannot be turned into a loaded model on this machine."""


class DeviceMapError(CircuitsError):
    """A device map that cannot place this model here (bad value, absent device, modules
    left out or unknown, offloaded modules). Raised before any weights are read, so a loader
    never takes it for damaged weights; not a :class:`ModelUnavailable`: the map given is
    the mistake, and a claim whose model it cannot place fails (never skips)."""


class InterventionError(CircuitsError):
    """An ablation or patch cannot be applied as asked."""


class MeasurementError(CircuitsError):
    """A measurement cannot be formed from the values given."""


class ProbingError(CircuitsError):
    """A probe cannot be fitted as asked (labels, k, method, pooling, layer)."""


class BaselineError(CircuitsError):
    """A baseline file is unreadable or malformed, or a tolerance spec is invalid."""


class DuplicateMetricError(BaselineError):
    """A claim recorded two measurements with the same name."""


class BlobError(CircuitsError):
    """A cache location cannot be opened or used (bad URL, missing package, unreachable)."""


class FigureError(CircuitsError):
    """A figure cannot be attached to a claim: its SVG is not accepted (script, event handlers,
    external links, too large: :mod:`pytest_circuits.figures`), or its name or caption is bad."""


class MergeError(CircuitsError):
    """The inputs of a merge cannot be merged (unreadable, not a report, contradicts itself,
    different suites...)."""


def bad(name: str, value: object, valid: str) -> str:
    """Format the common message: what was given and what would be valid."""
    return f"{name}={value!r} is not valid: {valid}"


class CircuitsWarning(UserWarning):
    """Base class of every warning pytest-circuits issues."""


class CacheWarning(CircuitsWarning):
    """An activation-cache entry was unusable and has been recomputed."""


class PromptWarning(CircuitsWarning):
    """A prompt set was built, but some text reached the model as a token it does not mean
    (the unknown token, or a special token written in the text)."""


class NoOpInterventionWarning(CircuitsWarning):
    """An ablation left the output it was meant to replace as it was (on nearly every
    prompt), so an effect of 0 measured under it says nothing about the component."""


class NegligibleCosineWarning(CircuitsWarning):
    """A projection ratio was asked for a pair whose outputs are (nearly) orthogonal: its
    size comes from the norms, not from the reader writing against the writer."""
