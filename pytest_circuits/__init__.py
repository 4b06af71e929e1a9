"""pytest-circuits: interpretability findings as pytest claims.

The heavy parts (torch, TransformerLens) load on first use, so that ``pytest --help``
and collection stay fast. Everything listed in ``__all__`` is importable from here.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from .config import VERSION as __version__  # noqa: E402

# Helper modules whose asserts users see: rewrite them so failures print values.
pytest.register_assert_rewrite("pytest_circuits.measurement")

from .components import MLP, Attn, Component, Embed, Expert, Head, Neuron, parse  # noqa: E402
from .errors import (  # noqa: E402
    BaselineError,
    BlobError,
    CacheWarning,
    CircuitsError,
    CircuitsWarning,
    ComponentError,
    DeviceMapError,
    DuplicateMetricError,
    FigureError,
    InterventionError,
    MeasurementError,
    MergeError,
    ModelUnavailable,
    NegligibleCosineWarning,
    NoOpInterventionWarning,
    ProbingError,
    PromptSetError,
    PromptWarning,
    TooFewNamesError,
)

_LAZY = {
    "Measurement": "measurement",
    "PromptSet": "prompts",
    "ActivationStore": "store",
    "load_model": "models",
    "register_model": "models",
    # a picture (SVG) attached to the running claim's record, shown in the HTML report
    "attach_figure": "figures",
    "metrics": None,
    "tasks": None,
    "hooks": None,
    "moe": None,
    "models": None,
    "store": None,
    "techniques": None,
    # The circuit tools live in techniques/; these names keep ``from pytest_circuits
    # import circuits, patching`` working.
    "circuits": "techniques.circuits",
    "patching": "techniques.patching",
}

__all__ = [
    "__version__", "Head", "Attn", "MLP", "Neuron", "Expert", "Embed", "Component", "parse",
    # the error hierarchy (pytest_circuits.errors): every error and warning the package raises
    "CircuitsError", "ComponentError", "PromptSetError", "TooFewNamesError", "ModelUnavailable",
    "DeviceMapError", "InterventionError", "MeasurementError", "ProbingError", "BaselineError",
    "DuplicateMetricError", "BlobError", "FigureError", "MergeError",
    "CircuitsWarning", "CacheWarning", "PromptWarning", "NoOpInterventionWarning", "NegligibleCosineWarning",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = _LAZY[name]
        if mod is None:
            return importlib.import_module(f".{name}", __name__)
        if mod.endswith(f".{name}"):
            return importlib.import_module(f".{mod}", __name__)
        return getattr(importlib.import_module(f".{mod}", __name__), name)
    raise AttributeError(f"module 'pytest_circuits' has no attribute {name!r}")
