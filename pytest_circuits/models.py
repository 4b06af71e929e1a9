"""Models: the registry, weights and loading in one namespace.

This module re-exports the public names of three modules, each with one job:

- :mod:`pytest_circuits.registry`: model names and their loaders (:func:`register_model`,
  :class:`ModelSpec`), what a loader is asked (:class:`LoadRequest`), what identifies a
  loaded model (:class:`ModelInfo`, :func:`info`), the run's checkpoint labels and the
  constants derived from a model's weights;
- :mod:`pytest_circuits.weights`: file hashes, converted checkpoints (the embedded model's
  GGUF), their fingerprints and the verification of converted weights shared through a
  remote cache (docs/trust.md);
- :mod:`pytest_circuits.loading`: :func:`load_model` and the loaders of the embedded model,
  local checkpoint folders and the Hugging Face cache, device maps, :func:`offline`.

``from pytest_circuits.models import X`` keeps working for every name this module exported
before the split; new code may import from the three modules directly. Module-level settings
(``DERIVED_MAX_BYTES``) are read where they are defined: set ``registry.DERIVED_MAX_BYTES``.
"""

from __future__ import annotations

from .loading import boot, device_map_problem, load_model, offline, resolve_device, resolve_dtype
from .registry import (
    DERIVED_MAX_BYTES,
    EMBEDDED,
    LoadRequest,
    Loader,
    ModelInfo,
    ModelSpec,
    attach_info,
    derived,
    derived_counts,
    distinct_labels,
    forget_derived,
    info,
    pop_run_labels,
    push_run_labels,
    register_model,
    registered,
    run_label,
    takes_request,
    weights_state,
)
from .weights import (
    MANIFEST_NAME,
    Converted,
    checkpoint_digest,
    checkpoint_files,
    converted_checkpoint,
    converted_fingerprint,
    converted_weights,
    embedded_checkpoint,
    embedded_converted,
    embedded_gguf_path,
    file_sha256,
    verify_converted,
)

__all__ = [
    # registry
    "EMBEDDED", "Loader", "LoadRequest", "ModelSpec", "ModelInfo", "takes_request",
    "distinct_labels", "push_run_labels", "pop_run_labels", "run_label",
    "register_model", "registered", "info", "attach_info",
    "weights_state", "derived", "forget_derived", "DERIVED_MAX_BYTES", "derived_counts",
    # loading
    "resolve_device", "resolve_dtype", "load_model", "offline", "device_map_problem", "boot",
    # weights
    "file_sha256", "MANIFEST_NAME", "Converted", "converted_fingerprint", "verify_converted",
    "converted_checkpoint", "converted_weights", "embedded_gguf_path", "embedded_checkpoint",
    "embedded_converted", "checkpoint_files", "checkpoint_digest",
]
