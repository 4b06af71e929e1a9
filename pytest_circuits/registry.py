"""The model registry: model names, what a loader is asked (:class:`LoadRequest`), and what
identifies a loaded model.

- :func:`register_model` makes a name loadable by a loader; :func:`registered` lists them (the
  embedded default ``smollm2-135m`` is registered by :mod:`pytest_circuits.loading`).
- A loader is called with one :class:`LoadRequest` (the cache folder, device, dtype, device
  map and remote cache of the load) and returns ``(bridge, fingerprint)``. Loaders written
  for the old contract, ``loader(cache_dir, device, dtype)``, are still accepted
  (:func:`takes_request` tells them apart by their signature).
- Every loaded model carries a :class:`ModelInfo` (name, fingerprint of its weights, dtype,
  device) that the activation cache keys on; :func:`info` returns it.
- A run's checkpoint folders get labels that tell them apart (:func:`run_label`).
- Constants derived from a model's weights are kept per model object and weights state
  (:func:`derived`).
"""

from __future__ import annotations

import inspect
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import DEFAULT_MODEL
from .errors import ModelUnavailable, bad

EMBEDDED = DEFAULT_MODEL  # the embedded model is the default one


@dataclass(frozen=True)
class LoadRequest:
    """What a load asks of a registered loader: everything it needs, passed explicitly.

    ``cache``: the local cache folder (for a remote cache, its local staging folder);
    ``device``: the resolved device (``cpu``, ``cuda``, ``cuda:1``, ``mps``); ``dtype``: the
    torch dtype; ``placement``: the parsed device map (:func:`pytest_circuits.devices.parse_device_map`)
    or None for one device; ``remote``: the remote cache (a :mod:`pytest_circuits.blobs` store)
    that converted weights are fetched from and published to, or None; ``name``: the name
    being loaded. A loader honours the device, dtype and placement by booting through
    :func:`pytest_circuits.loading.boot`, and the remote cache by passing ``remote`` to
    :func:`pytest_circuits.weights.converted_weights`."""

    cache: Path
    device: str
    dtype: Any
    placement: Any = None
    remote: Any = None
    name: str = ""


# A loader takes a LoadRequest and returns (bridge, fingerprint). The old contract,
# loader(cache_dir, device, dtype), is still accepted (takes_request).
Loader = Callable[..., "tuple[Any, str]"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    loader: Loader
    description: str


def takes_request(loader: Callable[..., Any]) -> bool:
    """Whether ``loader`` follows the current contract, ``loader(request)`` with one
    :class:`LoadRequest`, rather than the old ``loader(cache_dir, device, dtype)``: it can be
    called with one positional argument but not with three, or its first parameter is named
    ``request`` or annotated :class:`LoadRequest`. A signature that cannot be read is taken
    for the old contract."""
    try:
        sig = inspect.signature(loader)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(None)
    except TypeError:
        return False
    try:
        sig.bind(None, None, None)
    except TypeError:
        return True
    params = list(sig.parameters.values())
    first = params[0] if params else None
    if first is None or first.kind is first.VAR_POSITIONAL:
        return False
    annotation = first.annotation
    return first.name == "request" or annotation is LoadRequest or \
        (isinstance(annotation, str) and annotation.strip("'\"").rsplit(".", 1)[-1] == "LoadRequest")


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a loaded model's numerics: used in cache keys and reports."""

    name: str
    fingerprint: str
    dtype: str
    device: str
    source: str
    device_map: str = ""    # the realized placement (devices.describe) when loaded with a device map

    @property
    def label(self) -> str:
        """Short name for reports: a checkpoint directory's base name (or, when another folder
        of the run has the same base name, the shortest path suffix that tells them apart:
        :func:`run_label`), else the name."""
        return run_label(self.name) if self.source == "local" else self.name

    def key(self) -> dict[str, str]:
        key = {"model": self.name, "fingerprint": self.fingerprint, "dtype": self.dtype}
        if self.device_map:   # only then: keys of single-device loads stay as they were
            key["device_map"] = self.device_map
        return key


# --------------------------------------------------------------------------- labels
# Checkpoint folders' labels in the run under way (resolved path -> label). Every folder named
# in the run's settings is entered at once (push_run_labels, by the plugin), so two folders that
# share a base name both get a distinguishing suffix whatever their order; any other folder
# keeps its base name unless one of those labels forces a suffix. Empty outside a run: a
# folder's label is then its base name, as it always was.
_RUN_LABELS: dict[str, str] = {}


def _folder(name: Any) -> Path | None:
    try:
        p = Path(os.fspath(name)).expanduser()
        return p.resolve() if p.is_dir() else None
    except (TypeError, OSError, ValueError):
        return None


def _suffix(folder: Path, k: int) -> str:
    parts = folder.parts[1:] if folder.is_absolute() else folder.parts     # never the root alone
    return "/".join(parts[-k:]) if parts else str(folder)


def distinct_labels(names: Any) -> dict[str, str]:
    """``{resolved folder: label}`` for the checkpoint folders among ``names``: the folder's base
    name, or, for folders that share it, the shortest path suffix (``released/ckpt``,
    ``candidate/ckpt``) that differs between them. Names that are not folders are left out."""
    folders = list(dict.fromkeys(f for f in (_folder(n) for n in names) if f is not None))
    groups: dict[str, list[Path]] = {}
    for f in folders:
        groups.setdefault(_suffix(f, 1), []).append(f)
    out: dict[str, str] = {}
    for base, fs in groups.items():
        if len(fs) == 1:
            out[str(fs[0])] = base
            continue
        for f in fs:     # the shortest suffix no other folder of the group shares (labels of equal
            k = 2        # length that differ stay different, so all labels are distinct)
            while k < len(f.parts) and any(_suffix(g, k) == _suffix(f, k) for g in fs if g != f):
                k += 1
            out[str(f)] = _suffix(f, k)
    return out


def push_run_labels(names: Any) -> dict[str, str]:
    """Enter the labels of the checkpoint folders among ``names`` (a run's models) and return
    what was there before (for :func:`pop_run_labels` when the run ends)."""
    previous = dict(_RUN_LABELS)
    _RUN_LABELS.clear()
    _RUN_LABELS.update(distinct_labels(names))
    return previous


def pop_run_labels(previous: dict[str, str]) -> None:
    _RUN_LABELS.clear()
    _RUN_LABELS.update(previous)


def run_label(name: Any) -> str:
    """The label of model ``name`` in the run under way: for a checkpoint folder, its base name,
    or the shortest path suffix that tells it apart from the run's other folders of the same base
    name (:func:`distinct_labels`); any other name as it is. A folder that is not one of the
    run's gets the shortest suffix no folder of the run has as its label."""
    folder = _folder(name)
    if folder is None:
        return str(name)
    if str(folder) in _RUN_LABELS:
        return _RUN_LABELS[str(folder)]
    taken = set(_RUN_LABELS.values())
    k = 1
    while _suffix(folder, k) in taken and k < len(folder.parts):
        k += 1
    return _suffix(folder, k)


_REGISTRY: dict[str, ModelSpec] = {}
_INFO: "weakref.WeakKeyDictionary[Any, ModelInfo]" = weakref.WeakKeyDictionary()


def register_model(name: str, description: str = "") -> Callable[[Loader], Loader]:
    """Decorator: make ``name`` loadable by ``loader(request)``, which gets a
    :class:`LoadRequest` and returns ``(bridge, fingerprint)``. A loader of the old contract,
    ``loader(cache_dir, device, dtype)``, is accepted too (:func:`takes_request`)."""

    def deco(loader: Loader) -> Loader:
        _REGISTRY[name] = ModelSpec(name, loader, description or (loader.__doc__ or "").strip())
        return loader

    return deco


def registered() -> dict[str, ModelSpec]:
    return dict(_REGISTRY)


def info(model: Any) -> ModelInfo:
    """The :class:`ModelInfo` of a model loaded through the registry."""
    try:
        return _INFO[model]
    except (KeyError, TypeError):
        cfg = getattr(model, "cfg", None)
        name = getattr(cfg, "model_name", None) or type(model).__name__
        raise ModelUnavailable(
            bad("model", name, "a model loaded by pytest-circuits (the `model` fixture or "
                "pytest_circuits.load_model); its weights fingerprint keys the activation cache")
        ) from None


def attach_info(model: Any, model_info: ModelInfo) -> None:
    """Register ``model_info`` for a model built outside the registry (tests, planted models)."""
    _INFO[model] = model_info


# --------------------------------------------------------------------------- derived constants
# Constants computed from a model's weights (float64 copies of W_O, the mean unembedding
# column, ...), kept per model object: {model: {name: (weights_state, value)}}. Weakly keyed,
# so they go with the model; a copy of the model (copy.deepcopy) is another key.
_DERIVED: "weakref.WeakKeyDictionary[Any, dict[str, tuple[tuple, Any]]]" = weakref.WeakKeyDictionary()
DERIVED_MAX_BYTES = 1 << 30   # a constant larger than this is computed on every call, not kept
derived_counts: dict[str, int] = {}   # name -> times computed (tests count conversions with it)


def weights_state(model: Any) -> tuple:
    """What changes when a model's weights change: its fingerprint (when it has a
    :class:`ModelInfo`) and, per parameter tensor, its storage address, shape, dtype and
    version counter.

    The version counter is bumped by every in-place operation on the tensor or a view of it
    (``p.add_`` under ``torch.no_grad()``, ``p.copy_``, ``load_state_dict``); replacing a
    parameter (``p.data = t``, ``model.to(...)``) changes its address. Not seen: writes through
    ``p.data`` (``p.data.add_``), which bypass the version counter; after those call
    :func:`forget_derived`. (The activation store keys on the fingerprint alone, so it does
    not see an in-place edit at all.)"""
    try:
        fp = _INFO[model].fingerprint
    except (KeyError, TypeError):
        fp = ""
    params = getattr(model, "parameters", None)
    state = tuple((p.data_ptr(), tuple(p.shape), str(p.dtype), p._version) for p in params()) if params else ()
    return (fp, state)


def derived(model: Any, name: str, compute: Callable[[Any], Any], *, state: tuple | None = None) -> Any:
    """``compute(model)``, once per model object and weights state (:func:`weights_state`;
    pass ``state`` when several constants are read at once). Values are shared: never modify
    one in place. A tensor over :data:`DERIVED_MAX_BYTES` is not kept (computed each call)."""
    st = weights_state(model) if state is None else state
    try:
        memo = _DERIVED.setdefault(model, {})
    except TypeError:   # not weak-referenceable: nothing is kept
        memo = None
    if memo is not None:
        hit = memo.get(name)
        if hit is not None and hit[0] == st:
            return hit[1]
    value = compute(model)
    derived_counts[name] = derived_counts.get(name, 0) + 1
    size = value.element_size() * value.nelement() if hasattr(value, "element_size") else 0
    if memo is not None and size <= DERIVED_MAX_BYTES:
        memo[name] = (st, value)
    return value


def forget_derived(model: Any) -> None:
    """Drop the constants kept for ``model`` (after editing its weights through ``.data``)."""
    _DERIVED.pop(model, None)

