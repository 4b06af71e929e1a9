"""The activation cache: what the store keeps, in memory and on disk, and how it checks it.

An entry is one tensor: the value of one hook (or pseudo-hook) for one prompt set, model and
intervention. Its key is a sha256 over everything its value depends on: the model's name and
weights fingerprint, dtype and device kind, the TransformerLens and transformers versions, a
hash of this package's own source (:func:`code_version`: a code change is never served a
stale entry), compatibility mode, the token ids (and those of the corrupted counterparts),
the hook name and the intervention's key. Entries are looked up in

1. **memory**: entries made or read earlier in this process (least recently used dropped
   first past ``max_memory_bytes``);
2. **disk**: one safetensors file per (key, hook) in a content-addressed folder.

Files are written to a temporary name and moved into place with ``os.replace``
(atomic, so concurrent xdist workers never see a torn file). Integrity covers everything
that is read: each file records its key fields, which must equal this request's (the
file name is their sha256, so a copied or renamed file is caught), and a sha256 over those
fields, the tensor's dtype, its shape and its bytes (:func:`entry_sha256`), recomputed from
what was actually read. So a changed header (dtype, shape, offsets, metadata), a truncated,
corrupted or misplaced file, or one written in an older format, is reported with a
:class:`~pytest_circuits.errors.CacheWarning`, recomputed and rewritten, never used. That
sha256 detects corruption, not tampering: a writer can store any tensor with its sha256.
With the team key (``$PYTEST_CIRCUITS_CACHE_KEY``, :mod:`pytest_circuits.cachekey`) each
entry also carries an HMAC-SHA256 of that sha256, and an entry without a valid one is
refused in the same way (docs/trust.md).

The cache may also be an fsspec URL (``cache_dir="s3://bucket/prefix"``, see
:mod:`pytest_circuits.blobs` and docs/remote-cache.md): the same entries, under the same
relative keys, are published there (a temporary key, then moved to the final one) and
checked on read exactly as local files are; a location that fails during a run is warned
about once and the run goes on in memory.

Leftover temporary files of killed writers are removed when a cache first touches its
folder (see :mod:`pytest_circuits.cachefiles`). If the folder cannot be written (read
only, full, a file in the way), the cache warns once and keeps going in memory.

:class:`ActivationCache` holds all of this; it runs no model.
:class:`~pytest_circuits.forwards.ActivationStore` is the cache that computes what it lacks.
Derived results (a probe's fit) are cached the same way (:meth:`ActivationCache.derived`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .cachefiles import remove_orphans, tmp_name
from .errors import CacheWarning, CircuitsError
from .models import info as model_info
from .protocols import Intervention


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of this package's Python source: part of every cache key."""
    from .config import VERSION

    h = hashlib.sha256(VERSION.encode())
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer_lens")


@functools.lru_cache(maxsize=1)
def _hf_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def tensor_sha256(t: Any) -> str:
    """sha256 of a tensor's bytes alone (not its dtype or shape: see :func:`entry_sha256`)."""
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


ENTRY_FORMAT = "2"


ENTRY_MAC = f"pytest-circuits cache entry {ENTRY_FORMAT}"   # what an entry's MAC is of (docs/trust.md)


def entry_sha256(fields: str, t: Any) -> str:
    """sha256 of a cache entry as it is read: its key fields, the tensor's dtype, shape and bytes.

    A header whose dtype or shape was changed (the bytes then read as other numbers or
    another layout) gives another digest, as does any changed byte of the data."""
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    h = hashlib.sha256(f"pytest-circuits activation entry {ENTRY_FORMAT}\0".encode())
    for part in (fields, str(t.dtype), json.dumps(list(t.shape))):
        h.update(part.encode())
        h.update(b"\0")
    h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Counters:
    forward_passes: int = 0      # batched model calls
    prompts_forwarded: int = 0   # prompts through those calls
    memory_hits: int = 0         # hook entries served from memory
    disk_hits: int = 0           # hook entries served from disk
    computed: int = 0            # hook entries computed by a forward
    recomputed_bad: int = 0      # disk entries rejected (corrupt / mismatched)
    resumed_passes: int = 0      # forwards resumed mid-model from the clean residual stream
    block_prompt_passes: int = 0  # sum over forwards of (blocks run x prompts)
    block_position_passes: int = 0  # sum over forwards of (blocks run x rows x positions run): compute done
    floor_block_positions: int = 0  # what a perfect cache would still compute for those forwards:
    #   (blocks after the intervened one) x (real positions the intervention can change), per row
    suffix_passes: int = 0       # forwards that ran only the positions an intervention can change
    intervened_block_positions: int = 0  # the part of block_position_passes run under an intervention
    shared_prefix_passes: int = 0  # forwards resumed from an earlier intervened run's residual stream
    results_reused: int = 0      # derived results (probe fits, head evidence) read from memory or disk
    results_computed: int = 0    # derived results computed (and cached)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class ActivationCache:
    """Memory + disk cache of activations, keyed on everything a value depends on.

    A base of :class:`~pytest_circuits.forwards.ActivationStore`, whose fields it reads:
    ``cache_dir`` (a folder, an fsspec URL, or None for memory only), ``max_memory_bytes``
    and ``counters``; :meth:`_open_cache` sets it up. It never runs a model."""

    cache_dir: Path | str | None
    max_memory_bytes: int
    counters: Counters

    def _open_cache(self) -> None:
        """The empty memory, and the folder or remote location of ``cache_dir`` opened."""
        self._memory: "OrderedDict[str, Any]" = OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.Lock()
        self._disk_writable = True   # set to False (with one CacheWarning) when a write fails
        self._cleaned = False
        self._remote: Any = None      # a Blobs for an fsspec URL (s3://bucket/prefix), else None
        self._team_key: Any = None    # with $PYTEST_CIRCUITS_CACHE_KEY: entries are signed and must verify
        if self.cache_dir is not None:
            from .blobs import open_blobs
            from .cachekey import team_key

            self._team_key = team_key()

            blobs = open_blobs(self.cache_dir)
            if blobs.is_remote:
                self._remote = blobs
            else:
                self.cache_dir = Path(blobs.root)  # type: ignore[attr-defined]

    def _known(self, model: Any, prompts: Any, names: Sequence[str], intervention: Any) -> dict[str, Any] | None:
        """Every one of ``names`` from memory or disk, or None when one is missing."""
        return self._read_all(self._base_fields(model, prompts, intervention), names, count=True)

    def holds(self, model: Any, prompts: Any, names: Sequence[str], intervention: Any = None) -> bool:
        """Whether every one of ``names`` is in memory or has an entry in the local cache folder
        (not read, so not checked: an entry found bad on reading is recomputed then). False for
        a remote cache, whose entries are not listed."""
        base = self._base_fields(model, prompts, intervention)
        for name in names:
            key = self._key(base, name)
            if self._from_memory(key) is not None:
                continue
            if self.cache_dir is None or self._remote is not None or not self._path(key).is_file():
                return False
        return True

    def _read_all(self, base: dict[str, str], names: Sequence[str], *, count: bool) -> dict[str, Any] | None:
        """Every one of ``names`` under ``base`` from memory or disk (what is read from disk is
        kept in memory), or None when one is missing; ``count``: as activation hits."""
        got: dict[str, Any] = {}
        for name in names:
            key = self._key(base, name)
            value = self._from_memory(key)
            if value is None:
                value = self._from_disk(key, base, name)
                if value is None:
                    return None
                self.counters.disk_hits += count
                self._to_memory(key, value)
            else:
                self.counters.memory_hits += count
            got[name] = value
        return got

    def derived(self, what: str, inputs: Sequence[Any], params: dict[str, Any], outputs: Sequence[str],
                compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``compute()`` (``{output: tensor}``, exactly ``outputs``), cached like activations.

        For a deterministic computation on tensors, such as fitting a probe to activations:
        the entry is keyed on ``what``, ``params`` (JSON), the dtype, shape and bytes of every
        one of ``inputs``, this package's code and torch's version, and checked on reading
        as activation entries are. A warm run then reads the fit instead of repeating it."""
        import torch

        h = hashlib.sha256()
        for t in inputs:
            t = torch.as_tensor(t)
            h.update(f"{t.dtype}{list(t.shape)}".encode())
            h.update(tensor_sha256(t).encode())
        base = {"derived": what, "params": json.dumps(params, sort_keys=True, default=str),
                "inputs": h.hexdigest(), "code": code_version(), "torch": torch.__version__}
        return self._derived(what, base, outputs, compute)

    def derived_from_activations(self, what: str, model: Any, prompts: Any, params: dict[str, Any],
                                 outputs: Sequence[str], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """:meth:`derived` for a computation of the model's activations on ``prompts`` (read
        from this store inside ``compute``) and of its weights: keyed as those activations are
        (the model's fingerprint, dtype and device kind, the versions, this package's code, the
        prompts' tokens) plus ``what`` and ``params`` (JSON: everything else it reads), without
        hashing the activations' bytes. A warm run reads the result without reading the
        activations. As for the activations themselves, an in-place edit of the weights that
        keeps the fingerprint is not seen."""
        import torch

        base = {**self._base_fields(model, prompts, None), "derived": what, "torch": torch.__version__,
                "params": json.dumps(params, sort_keys=True, default=str)}
        return self._derived(what, base, outputs, compute)

    def _derived(self, what: str, base: dict[str, str], outputs: Sequence[str],
                 compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        import torch

        got = self._read_all(base, outputs, count=False)
        if got is not None:
            self.counters.results_reused += 1
            return got
        result = compute()
        if sorted(result) != sorted(outputs):
            raise CircuitsError(f"{what}: computed {sorted(result)}, expected {sorted(outputs)}")
        self.counters.results_computed += 1
        for name in outputs:
            value = torch.as_tensor(result[name]).detach().to("cpu").contiguous()
            key = self._key(base, name)
            self._to_memory(key, value)
            self._to_disk(key, base, name, value)
            result[name] = value
        return {name: result[name] for name in outputs}


    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0


    def _drop(self, keys: Iterable[str]) -> None:
        """Forget ``keys`` from memory (what is on disk stays)."""
        with self._lock:
            for key in keys:
                value = self._memory.pop(key, None)
                if value is not None:
                    self._memory_bytes -= value.element_size() * value.nelement()

    # -- keys ------------------------------------------------------------------
    def _base_fields(self, model: Any, prompts: Any, intervention: Intervention | None) -> dict[str, str]:
        mi = model_info(model)
        fields = dict(mi.key())
        fields.update({
            "device_kind": str(mi.device).split(":")[0],
            "transformer_lens": _tl_version(),
            "transformers": _hf_version(),   # how the weights are run (and converted)
            "code": code_version(),
            "compatibility_mode": "1",
            "tokens": prompts.digest,
            # patching reads the corrupted counterparts: they are part of what a value depends on
            "corrupted": prompts.corrupted.digest if getattr(prompts, "corrupted", None) is not None else "none",
            "intervention": intervention.key if intervention is not None else "none",
        })
        return fields

    @staticmethod
    def _key(base: dict[str, str], hook: str) -> str:
        blob = json.dumps({**base, "hook": hook}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    # -- memory ----------------------------------------------------------------
    def _from_memory(self, key: str) -> Any:
        with self._lock:
            value = self._memory.get(key)
            if value is not None:
                self._memory.move_to_end(key)
            return value

    def _to_memory(self, key: str, value: Any) -> None:
        size = value.element_size() * value.nelement()
        with self._lock:
            if key in self._memory:
                return
            self._memory[key] = value
            self._memory_bytes += size
            while self._memory_bytes > self.max_memory_bytes and len(self._memory) > 1:
                _, old = self._memory.popitem(last=False)
                self._memory_bytes -= old.element_size() * old.nelement()

    # -- disk ------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / "activations" / key[:2] / f"{key}.safetensors"

    def _clean_once(self) -> None:
        if not self._cleaned and self.cache_dir is not None:
            self._cleaned = True
            remove_orphans(self.cache_dir)

    def _from_disk(self, key: str, base: dict[str, str], hook: str) -> Any:
        if self.cache_dir is None:
            return None
        if self._remote is not None:
            return self._from_remote(key, base, hook)
        self._clean_once()
        path = self._path(key)
        try:
            if not path.is_file():
                return None
        except OSError:
            return None
        from safetensors import safe_open

        expected = json.dumps({**base, "hook": hook}, sort_keys=True)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                names = list(f.keys())
                if names != ["value"]:
                    raise ValueError(f"it holds the tensors {names}, not one named 'value'")
                value = f.get_tensor("value")
            _check_entry(meta, expected, value, self._team_key)
        except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed
            self.counters.recomputed_bad += 1
            warnings.warn(CacheWarning(f"activation cache entry {path} is unusable ({e}); "
                                       "recomputing it"), stacklevel=3)
            return None
        return value

    def _relpath(self, key: str) -> str:
        """An entry's key relative to the cache location (as :meth:`_path` is locally)."""
        return f"activations/{key[:2]}/{key}.safetensors"

    def _from_remote(self, key: str, base: dict[str, str], hook: str) -> Any:
        """:meth:`_from_disk` for an fsspec location: the object's bytes are read and
        checked exactly as a local file is (one tensor named ``value``, the format, the key
        fields, the sha256 over fields, dtype, shape and bytes)."""
        from .blobs import BlobError

        rel = self._relpath(key)
        try:
            data = self._remote.read(rel)
        except BlobError as e:
            self._remote_failed("read", e)
            return None
        if data is None:
            return None
        expected = json.dumps({**base, "hook": hook}, sort_keys=True)
        try:
            meta, names = _safetensors_header(data)
            if names != ["value"]:
                raise ValueError(f"it holds the tensors {names}, not one named 'value'")
            from safetensors.torch import load

            value = load(data)["value"]
            _check_entry(meta, expected, value, self._team_key)
        except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed
            self.counters.recomputed_bad += 1
            warnings.warn(CacheWarning(f"activation cache entry {self._remote.describe()}/{rel} is "
                                       f"unusable ({e}); recomputing it"), stacklevel=4)
            return None
        return value

    def _remote_failed(self, what: str, e: BaseException) -> None:
        """A remote location failed (unreachable, refused): warn once and keep activations in
        memory for the rest of the run (reads and writes)."""
        if self._disk_writable:
            self._disk_writable = False
            warnings.warn(CacheWarning(
                f"the activation cache at {self._remote.describe()} failed ({what}: {e}); keeping "
                "activations in memory for the rest of this run"), stacklevel=4)
        self._remote = _Unreachable(self._remote)

    def _to_disk(self, key: str, base: dict[str, str], hook: str, value: Any) -> None:
        if self.cache_dir is None or not self._disk_writable:
            return
        from safetensors.torch import save

        fields = json.dumps({**base, "hook": hook}, sort_keys=True)
        value = value.contiguous()
        meta = {"format": ENTRY_FORMAT, "fields": fields, "sha256": entry_sha256(fields, value)}
        if self._team_key is not None:
            meta["mac"] = self._team_key.mac(ENTRY_MAC, meta["sha256"])
        if self._remote is not None:
            from .blobs import BlobError

            try:
                self._remote.publish(self._relpath(key), save({"value": value}, metadata=meta))
            except BlobError as e:
                self._remote_failed("write", e)
            return
        self._clean_once()
        path = self._path(key)
        tmp = path.with_name(tmp_name(path.name))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(save({"value": value}, metadata=meta))
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._disk_writable = False
            warnings.warn(CacheWarning(
                f"cannot write the activation cache in {self.cache_dir} ({type(e).__name__}: {e}); "
                "keeping activations in memory for the rest of this run. Point --circuits-cache-dir "
                "at a writable folder, or pass --circuits-no-cache"), stacklevel=3)


def _check_entry(meta: dict[str, str], expected: str, value: Any, key: Any = None) -> None:
    """Raise ValueError unless an entry's metadata and tensor are what ``expected`` (the
    request's key fields) calls for: the format, the same fields (the entry's name is
    their sha256, so a copied or renamed entry is caught), and the sha256 over fields,
    dtype, shape and bytes recomputed from the tensor as read. That detects corruption,
    not tampering (a writer can recompute it); with the team key ``key`` the entry's MAC
    over that sha256 must also verify."""
    if meta.get("format") != ENTRY_FORMAT:
        raise ValueError(f"its format {meta.get('format')!r} is not {ENTRY_FORMAT!r}")
    fields = meta.get("fields")
    if fields != expected:
        raise ValueError("its key fields do not match this model/prompts/hook")
    digest = entry_sha256(fields, value)
    if meta.get("sha256") != digest:
        raise ValueError("checksum mismatch (key fields, dtype, shape and bytes)")
    if key is not None:
        from .cachekey import ENV

        if "mac" not in meta:
            raise ValueError(f"it carries no MAC under ${ENV} (written without the team key, or forged)")
        if not key.verify(meta["mac"], ENTRY_MAC, digest):
            raise ValueError(f"its MAC does not verify under ${ENV} (forged or altered)")


def _safetensors_header(data: bytes) -> "tuple[dict[str, str], list[str]]":
    """The metadata and the sorted tensor names of a safetensors file held in ``data``
    (8 bytes little-endian header length, then the JSON header)."""
    if len(data) < 8:
        raise ValueError(f"it is {len(data)} bytes long, shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"its header claims {n} bytes but only {len(data) - 8} follow")
    header = json.loads(data[8:8 + n])
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("its metadata is not a JSON object")
    return meta, sorted(k for k in header if k != "__metadata__")


class _Unreachable:
    """Stands for a remote location that failed during this run: nothing is read or written."""

    def __init__(self, blobs: Any) -> None:
        self._blobs = blobs

    def read(self, relpath: str) -> None:
        return None

    def publish(self, relpath: str, data: bytes) -> None:
        return None

    def describe(self) -> str:
        return self._blobs.describe()
