"""Placement of a model over several devices: the ``--circuits-device-map`` value, checked,
and the helpers that move tensors to where the module reading them lives.

A device map is what Hugging Face's ``from_pretrained(..., device_map=...)`` (accelerate)
takes: a strategy name (``auto``, ``balanced``, ``balanced_low_0``, ``sequential``) or a
dict ``{module name: device}``. It is given as a strategy, as a JSON object, or as
``@file.json``. This module only parses and checks it (nothing here imports torch until a
device must be asked about); :mod:`pytest_circuits.models` loads with it.

Rules (all checked before any claim runs, each with a message naming the bad part):

- a dict must be non-empty, its keys module names (``""`` is the whole model), its values
  ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a GPU index ``N``; ``disk`` and ``meta`` are
  refused: compatibility mode folds the norms into the weights, which TransformerLens
  cannot do for weights that are not in memory;
- every device named must exist on this machine (:func:`missing_devices`);
- every parameter and buffer of the model must fall under exactly the keys given, and every
  key must name a module of the model (:func:`coverage_problem`): Hugging Face places an
  uncovered module on the CPU and ignores an unknown key, both silently;
- a device map and ``--circuits-device`` other than ``auto`` are exclusive
  (:func:`device_conflict`): a map places every module, so a single device would either be
  ignored or contradict it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from .errors import DeviceMapError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
OPTION = "--circuits-device-map"
_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")
_REFUSED = {
    "disk": "offloading to disk keeps weights out of memory, and compatibility mode (folded norms, "
            "which every technique's numerics assume) cannot process them there",
    "meta": "a meta tensor has no values to run",
}


def _bad(value: Any, why: str) -> DeviceMapError:
    return DeviceMapError(f"{OPTION}={value!r} is not valid: {why}")


def parse_device_map(raw: Any, *, base: Path | None = None) -> "str | dict[str, str | int] | None":
    """The device map ``raw`` stands for: None (``""``, ``none``: one device, today's
    behaviour), a strategy name, or a checked dict (from JSON text or ``@file.json``, a path
    relative to ``base`` when not absolute). Raises
    :class:`~pytest_circuits.errors.DeviceMapError` naming the option and what would be valid."""
    if raw is None:
        return None
    if isinstance(raw, dict):
        return _check_dict(raw, raw)
    if not isinstance(raw, str):
        raise _bad(raw, "a strategy (" + ", ".join(STRATEGIES) + "), a JSON object or @file.json")
    text = raw.strip()
    if text.lower() in ("", "none"):
        return None
    if text in STRATEGIES:
        return text
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        if not text[1:].strip():
            raise _bad(raw, "@ must be followed by the path of a JSON file")
        if base is not None and not path.is_absolute():
            path = Path(base) / path
        try:
            text = path.read_text()
        except OSError as e:
            raise _bad(raw, f"its file {str(path)!r} cannot be read ({type(e).__name__}: {e})") from None
        where = f"the file {str(path)!r}"
    elif text.startswith("{"):
        where = "the JSON"
    else:
        raise _bad(raw, "a strategy (" + ", ".join(STRATEGIES) + "), a JSON object "
                   '(e.g. {"model.layers.0": 0, ...}) or @file.json')
    try:
        value = json.loads(text)
    except ValueError as e:
        raise _bad(raw, f"{where} is not valid JSON ({e})") from None
    if isinstance(value, str) and value in STRATEGIES:
        return value
    return _check_dict(raw, value)


def _check_dict(raw: Any, value: Any) -> "dict[str, str | int]":
    if not isinstance(value, dict):
        raise _bad(raw, f"a JSON object {{module name: device}}, not {type(value).__name__}")
    if not value:
        raise _bad(raw, "the map is empty: name at least one module (\"\" is the whole model)")
    out: dict[str, str | int] = {}
    for key, device in value.items():
        if not isinstance(key, str) or key != key.strip():
            raise _bad(raw, f"module name {key!r} must be a string without surrounding spaces")
        out[key] = _check_device(raw, key, device)
    return out


def _check_device(raw: Any, key: str, device: Any) -> "str | int":
    if isinstance(device, bool) or not isinstance(device, (int, str)):
        raise _bad(raw, f"module {key!r} -> {device!r}: a device is cpu, cuda, cuda:N, mps or a GPU index N")
    if isinstance(device, int):
        if device < 0:
            raise _bad(raw, f"module {key!r} -> {device}: a GPU index is >= 0")
        return device
    name = device.strip().lower()
    if name in _REFUSED:
        raise _bad(raw, f"module {key!r} -> {device!r}: {_REFUSED[name]}")
    if not _DEVICE.fullmatch(name):
        raise _bad(raw, f"module {key!r} -> {device!r}: a device is cpu, cuda, cuda:N, mps or a GPU index N")
    return name


def missing_devices(device_map: "str | dict[str, str | int] | None") -> str | None:
    """What is wrong with the devices a (parsed) map names on this machine, or None. A
    strategy names none (accelerate spreads over what is there, the CPU when no GPU is)."""
    if not isinstance(device_map, dict):
        return None
    wanted = set(device_map.values())
    gpus = {v if isinstance(v, int) else int(v.split(":")[1]) if ":" in v else 0
            for v in wanted if isinstance(v, int) or str(v).startswith("cuda")}
    problems = []
    if gpus:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        absent = sorted(g for g in gpus if g >= count)
        if absent:
            problems.append(f"{OPTION} names GPU(s) {absent} but this machine has {count} CUDA device(s)")
    if "mps" in wanted:
        import torch

        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            problems.append(f"{OPTION} names mps but MPS is not available on this machine")
    return "; ".join(problems) or None


def device_conflict(device: str, device_map: "str | dict[str, str | int] | None") -> str | None:
    """The rule for ``--circuits-device`` together with a device map: the map places every
    module, so only ``auto`` (the default) may go with it. Returns the message, or None."""
    if device_map is None or device in ("auto", "", None):
        return None
    return (f"{OPTION} and --circuits-device={device!r} were both given: a device map places every "
            "module itself; leave --circuits-device at auto (or drop the device map)")


def _covered(name: str, keys: Iterable[str]) -> bool:
    return any(k == "" or name == k or name.startswith(k + ".") for k in keys)


def coverage_problem(device_map: "dict[str, str | int]", modules: Iterable[str],
                     tensors: Iterable[str]) -> str | None:
    """What is wrong with how a dict map covers a model whose modules are named ``modules``
    and whose parameters and buffers are named ``tensors``: keys naming nothing in the model,
    or tensors under no key. None when every tensor is placed by some key."""
    modules = set(modules)
    tensors = list(tensors)
    keys = list(device_map)
    unknown = [k for k in keys if k != "" and k not in modules and k not in tensors]
    if unknown:
        return (f"{OPTION} names modules the model does not have: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''} (its top modules are "
                f"{sorted(m for m in modules if m and m.count('.') <= 1)[:8]})")
    left = sorted({t.rpartition(".")[0] or t for t in tensors if not _covered(t, keys)})
    if left:
        return (f"{OPTION} leaves modules with weights unplaced: {left[:5]}{' ...' if len(left) > 5 else ''}; "
                'every parameter and buffer must fall under a key ("" is the whole model)')
    return None


def describe(device_map: Any) -> str:
    """A canonical, short text for a realized placement (sorted JSON, devices as text), so
    equal placements give equal cache keys; "" for none."""
    if not device_map:
        return ""
    if isinstance(device_map, str):
        return device_map
    return json.dumps({str(k): str(v) for k, v in device_map.items()}, sort_keys=True, separators=(",", ":"))


def offloaded(realized: "dict[str, Any] | None") -> list[str]:
    """The modules a realized Hugging Face map (``model.hf_device_map``) offloads: those on
    disk (or meta), and those on the CPU when others are on an accelerator (accelerate then
    keeps them in CPU memory and runs them on the accelerator). A map all on the CPU offloads
    nothing: that is a CPU model."""
    values = {k: str(v).lower() for k, v in (realized or {}).items()}
    on_accelerator = any(v not in ("cpu", "disk", "meta") for v in values.values())
    return sorted(k for k, v in values.items()
                  if v in ("disk", "meta") or (v == "cpu" and on_accelerator))


def dtype_rtol(model: Any, rtol: float) -> float:
    """The relative error a consistency check (two computations of the same numbers) must
    allow on ``model``: ``rtol``, set for float32 and float64, or the model's machine epsilon
    when that is larger (bfloat16 2^-7, float16 2^-10: activations are rounded to it, so two
    exact routes to one number differ by a fraction of it; measured up to 0.4 eps on SmolLM2,
    docs/large-models.md). A real error (a missing writer, a wrong weight) is of order 1."""
    import torch

    dtype = getattr(getattr(model, "cfg", None), "dtype", None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        return rtol
    return max(rtol, torch.finfo(dtype).eps)


# --------------------------------------------------------------------------- moving tensors
def device_of(ref: Any) -> Any:
    """The device of ``ref``: a tensor's, a module's (its first parameter, else buffer), or
    ``ref`` itself when it is a device or a device name; None for a module without tensors."""
    import torch

    if isinstance(ref, torch.Tensor):
        return ref.device
    if isinstance(ref, torch.nn.Module):
        for t in ref.parameters():
            return t.device
        for t in ref.buffers():
            return t.device
        return None
    if isinstance(ref, (str, torch.device)):
        return torch.device(ref)
    raise TypeError(f"device_of: a tensor, module or device, not {type(ref).__name__}")


def to_device_of(t: Any, ref: Any, dtype: Any = None) -> Any:
    """``t`` on the device of ``ref`` (:func:`device_of`), cast to ``dtype`` when given; ``t``
    itself when it is already there (no copy). For a module without tensors ``t`` stays."""
    device = device_of(ref)
    if device is None:
        return t if dtype is None else t.to(dtype)
    if t.device == device and (dtype is None or t.dtype == dtype):
        return t
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)


def first_tensor(*values: Any) -> Any:
    """The first tensor among ``values`` and the values of any dicts or sequences among them
    (one level deep), or None: the activation a hook's arguments carry."""
    import torch

    for v in values:
        if isinstance(v, torch.Tensor):
            return v
        items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else ()
        for x in items:
            if isinstance(x, torch.Tensor):
                return x
    return None
