"""The activation store: activations for (model, prompt set, hooks, intervention).

``store.get(model, prompts, hooks, intervention=None)`` returns ``{hook: tensor}`` with
the batch dimension first, computing only the hooks asked for (never a full cache),
and only those not already known:

1. **memory**: entries made or read earlier in this process;
2. **disk**: one safetensors file per (key, hook) in a content-addressed folder;
3. **forward**: the model is run (in batches) with hooks that copy just those tensors.

The key of an entry is a sha256 over everything its value depends on: the model's
name and weights fingerprint, dtype and device kind, the TransformerLens version, a
hash of this package's own source (so a code change is never served a stale entry),
compatibility mode, the token ids (and those of the corrupted counterparts), the hook
name and the intervention's key.

Files are written to a temporary name and moved into place with ``os.replace``
(atomic, so concurrent xdist workers never see a torn file). Integrity covers everything
that is read: each file records its key fields, which must equal this request's (the
file name is their sha256, so a copied or renamed file is caught), and a sha256 over those
fields, the tensor's dtype, its shape and its bytes, recomputed from what was actually
read. So a changed header (dtype, shape, offsets, metadata), a truncated, corrupted or
misplaced file, or one written in an older format, is reported with a
:class:`~pytest_circuits.errors.CacheWarning`, recomputed and rewritten, never used.

Leftover temporary files of killed writers are removed when a store first touches its
folder (see :mod:`pytest_circuits.cachefiles`). If the folder cannot be written (read
only, full, a file in the way), the store warns once and keeps going in memory;
:func:`cache_dir_problem` lets the plugin refuse such a folder before any claim runs.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

from . import hooks as H
from .cachefiles import cache_dir_problem, remove_orphans, tmp_name  # noqa: F401 - cache_dir_problem re-exported for the plugin
from .errors import CacheWarning, CircuitsError, bad
from .models import info as model_info
from ._progress import bar


class Intervention(Protocol):
    """What the store needs from an ablation or patch."""

    @property
    def key(self) -> str:
        """A string that identifies the intervention's effect completely."""

    def fwd_hooks(self, model: Any, prompts: Any, index: Any) -> list[tuple[str, Any]]:
        """Hooks for one batch; ``index`` holds the batch's rows in ``prompts``."""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of this package's Python source: part of every cache key."""
    from . import __version__

    h = hashlib.sha256(__version__.encode())
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer_lens")


def tensor_sha256(t: Any) -> str:
    """sha256 of a tensor's bytes alone (not its dtype or shape: see :func:`entry_sha256`)."""
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


ENTRY_FORMAT = "2"


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
    block_prompt_passes: int = 0  # sum over forwards of (blocks run x prompts): compute done

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class ActivationStore:
    """Memory + disk cache of activations. ``cache_dir=None`` keeps it in memory only."""

    cache_dir: Path | None = None
    batch_size: int = 32
    max_memory_bytes: int = 4 << 30
    resume: bool = True           # resume intervened forwards from the clean residual stream
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self._memory: "OrderedDict[str, Any]" = OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.Lock()
        self._disk_writable = True   # set to False (with one CacheWarning) when a write fails
        self._cleaned = False
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)

    # -- public ----------------------------------------------------------------
    def __call__(self, model: Any, prompts: Any, hooks: Iterable[str] | str,
                 intervention: Intervention | None = None) -> dict[str, Any]:
        return self.get(model, prompts, hooks, intervention)

    def get(self, model: Any, prompts: Any, hooks: Iterable[str] | str,
            intervention: Intervention | None = None) -> dict[str, Any]:
        from .interventions import as_intervention

        names = [hooks] if isinstance(hooks, str) else list(dict.fromkeys(hooks))
        if not names:
            raise CircuitsError(bad("hooks", [], "at least one hook name"))
        intervention = as_intervention(intervention)
        base = self._base_fields(model, prompts, intervention)
        H.check_names(model, [H.base_name(n) for n in names])
        if intervention is not None:
            intervention.check(model, prompts)
        out: dict[str, Any] = {}
        missing: list[str] = []
        for name in names:
            key = self._key(base, name)
            value = self._from_memory(key)
            if value is not None:
                self.counters.memory_hits += 1
                out[name] = value
                continue
            value = self._from_disk(key, base, name)
            if value is not None:
                self.counters.disk_hits += 1
                self._to_memory(key, value)
                out[name] = value
                continue
            missing.append(name)
        if missing:
            computed = self._forward(model, prompts, missing, intervention)
            for name, value in computed.items():
                key = self._key(base, name)
                self.counters.computed += 1
                self._to_memory(key, value)
                self._to_disk(key, base, name, value)
                out[name] = value
        return {n: out[n] for n in names}

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0

    # -- keys ------------------------------------------------------------------
    def _base_fields(self, model: Any, prompts: Any, intervention: Intervention | None) -> dict[str, str]:
        mi = model_info(model)
        fields = dict(mi.key())
        fields.update({
            "device_kind": str(mi.device).split(":")[0],
            "transformer_lens": _tl_version(),
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
            if meta.get("format") != ENTRY_FORMAT:
                raise ValueError(f"its format {meta.get('format')!r} is not {ENTRY_FORMAT!r}")
            # The file name is the sha256 of `expected`: equal recorded fields tie the
            # entry to its name (a copied or renamed file is caught here).
            fields = meta.get("fields")
            if fields != expected:
                raise ValueError("its key fields do not match this model/prompts/hook")
            if meta.get("sha256") != entry_sha256(fields, value):
                raise ValueError("checksum mismatch (key fields, dtype, shape and bytes)")
        except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed
            self.counters.recomputed_bad += 1
            warnings.warn(CacheWarning(f"activation cache entry {path} is unusable ({e}); "
                                       "recomputing it"), stacklevel=3)
            return None
        return value

    def _to_disk(self, key: str, base: dict[str, str], hook: str, value: Any) -> None:
        if self.cache_dir is None or not self._disk_writable:
            return
        from safetensors.torch import save

        self._clean_once()
        path = self._path(key)
        fields = json.dumps({**base, "hook": hook}, sort_keys=True)
        value = value.contiguous()
        meta = {"format": ENTRY_FORMAT, "fields": fields, "sha256": entry_sha256(fields, value)}
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

    # -- forward ---------------------------------------------------------------
    def _forward(self, model: Any, prompts: Any, names: Sequence[str],
                 intervention: Intervention | None) -> dict[str, Any]:
        import torch

        device = model_info(model).device
        n_layers = model.cfg.n_layers
        real = list(dict.fromkeys(H.base_name(n) for n in names if not H.is_pseudo(n)))
        want_logits = any(H.is_pseudo(n) for n in names)
        layers = [_layer_of(nm) for nm in real]
        stop = None
        if not want_logits and real and None not in layers and max(layers) < n_layers - 1:  # type: ignore[type-var]
            stop = max(layers) + 1  # type: ignore[type-var]
        # Resume from the clean residual stream when nothing before the intervened
        # layer is asked for: the prefix is identical to the clean run.
        start_layer = 0
        if self.resume and intervention is not None and len(getattr(intervention, "items", ())) > 0:
            first = intervention.layer
            if first > 0 and all(l is None or l >= first for l in layers) and H.EMBED not in real:
                start_layer = first
        resid = None
        if start_layer:
            resid = self.get(model, prompts, [H.resid_pre(start_layer)])[H.resid_pre(start_layer)]
        n = len(prompts)
        width_all = prompts.tokens.shape[1]
        parts: dict[str, list[Any]] = {name: [] for name in names}
        batches = range(0, n, self.batch_size)
        if len(batches) > 1:
            batches = bar(batches, f"forward {prompts.name}", total=len(batches))
        for begin in batches:
            end = min(n, begin + self.batch_size)
            index = torch.arange(begin, end)
            lengths = torch.tensor(prompts.lengths[begin:end])
            width = int(lengths.max())
            toks = prompts.tokens[begin:end, :width].to(device)
            grabbed: dict[str, Any] = {}

            def grab(name: str):
                def hook(t: Any, hook: Any = None) -> None:
                    grabbed[name] = t.detach().to("cpu")
                return hook

            fwd = [(name, grab(name)) for name in real]
            if intervention is not None:
                # Interventions first, so grabbed values are the intervened ones.
                fwd = list(intervention.fwd_hooks(model, prompts, index, self)) + fwd
            kwargs: dict[str, Any] = {}
            if stop is not None:
                kwargs["stop_at_layer"] = stop
            inp = toks
            if start_layer:
                kwargs["start_at_layer"] = start_layer
                inp = resid[begin:end, :width].to(device, model.cfg.dtype)  # type: ignore[index]
            touches_unembed = any(nm.startswith(("unembed", "hook_unembed")) for nm in real)
            # Only the last position's logits wanted: skip the unembedding in the forward
            # (a fifth of SmolLM2's compute at 18 tokens) and apply it to those rows only.
            last_only = want_logits and H.TOKEN_LOSS not in names and not touches_unembed
            skip_unembed = (not want_logits and not touches_unembed) or last_only
            with torch.no_grad(), _skipping_blocks(model, start_layer, skip_unembed=skip_unembed):
                logits = model.run_with_hooks(inp, fwd_hooks=fwd, **kwargs)
            if last_only:
                with torch.no_grad():
                    final = logits[torch.arange(end - begin), (lengths - 1).to(logits.device)]
                    logits = _unembed(model)(final).unsqueeze(1)
                    lengths_for_logits = torch.ones_like(lengths)
            else:
                lengths_for_logits = lengths
            self.counters.forward_passes += 1
            self.counters.resumed_passes += bool(start_layer)
            self.counters.prompts_forwarded += end - begin
            self.counters.block_prompt_passes += ((stop or n_layers) - start_layer) * (end - begin)
            for name in real:
                if name not in grabbed:
                    raise CircuitsError(f"hook {name!r} did not fire during the forward pass")
                grabbed[name] = _zero_padding(grabbed[name], lengths, name)
            rows = torch.arange(end - begin)
            for name in names:
                if name == H.LOGITS_LAST:
                    parts[name].append(logits[rows, (lengths_for_logits - 1).to(logits.device)].detach().to("cpu"))
                elif name.startswith(H.LOGPROBS_LAST):
                    at = logits[rows, (lengths_for_logits - 1).to(logits.device)].double().log_softmax(-1)
                    ids = torch.tensor(H.logprob_ids(name), device=at.device)
                    parts[name].append(at[:, ids].detach().to("cpu"))
                elif name == H.TOKEN_LOSS:
                    logp = logits[:, :-1].float().log_softmax(-1)
                    nll = -logp.gather(-1, toks[:, 1:].unsqueeze(-1)).squeeze(-1).to("cpu")
                    mask = torch.arange(width - 1).unsqueeze(0) < (lengths - 1).unsqueeze(1)
                    parts[name].append(_pad_to(nll * mask, width_all - 1))
                elif name.endswith(H.AT_LAST):
                    value = _at_last(grabbed[H.base_name(name)], lengths, H.base_name(name))
                    if _position_dims(H.base_name(name)) == (2, 3):    # [batch, head, k_pos]
                        value = torch.nn.functional.pad(value, (0, width_all - value.shape[-1]))
                    parts[name].append(value)
                else:
                    parts[name].append(_pad_to(grabbed[name], width_all, name))
        return {name: torch.cat(chunks, 0) for name, chunks in parts.items()}


@contextlib.contextmanager
def _skipping_blocks(model: Any, start: int, skip_unembed: bool = False) -> Iterator[None]:
    """Skip the computation of blocks ``0..start-1`` during a resumed forward (and of the
    unembedding when no logits are wanted).

    TransformerLens's ``start_at_layer`` swaps the given residual in at block ``start``
    but still computes every earlier block and throws the result away. Their layers
    are replaced by a pass-through for the duration of the call (no hooks are requested
    there), which makes a resumed forward cost only the blocks it needs. The result is
    checked against a full forward in tests/unit/test_interventions.py.
    """
    if not start and not skip_unembed:
        yield
        return
    import torch.nn as nn

    class Skip(nn.Module):
        def forward(self, hidden_states: Any = None, *args: Any, **kwargs: Any) -> Any:
            return hidden_states

    saved = []
    try:
        for block in list(model.blocks)[:start]:
            saved.append((block, block.original_component))
            block.add_module("_original_component", Skip())
        unembed = getattr(model, "unembed", None)
        if skip_unembed and unembed is not None and unembed.original_component is not None:
            saved.append((unembed, unembed.original_component))
            unembed.add_module("_original_component", Skip())
        yield
    finally:
        for block, original in saved:
            block.add_module("_original_component", original)


def _unembed(model: Any) -> Any:
    """The unembedding as a function of the normalized final residual (what the bridge's
    unembed module computes, hooks aside)."""
    unembed = getattr(model, "unembed", None)
    if unembed is None or getattr(unembed, "original_component", None) is None:  # pragma: no cover
        raise CircuitsError("this model has no unembedding module the store can apply by itself")
    return unembed.original_component


def _at_last(t: Any, lengths: Any, name: str) -> Any:
    """Each row's value at its last real position (query position for patterns)."""
    import torch

    rows = torch.arange(t.shape[0])
    if _position_dims(name) == (2, 3):
        return t[rows, :, lengths - 1]          # [batch, head, k_pos]
    return t[rows, lengths - 1]


def _layer_of(name: str) -> int | None:
    """The block a hook lives in (embedding hooks count as 0); None after the last block."""
    if name.startswith("blocks."):
        return int(name.split(".")[1])
    if name in (H.EMBED, "hook_pos_embed"):
        return 0
    return None


def _position_dims(name: str) -> tuple[int, ...]:
    return (2, 3) if name.endswith(("hook_pattern", "hook_attn_scores")) else (1,)


def _zero_padding(t: Any, lengths: Any, name: str) -> Any:
    """Zero every entry at a padded position, so values never depend on the batch they ran in."""
    import torch

    dims = _position_dims(name)
    if t.dim() <= max(dims):
        return t
    t = t.clone()
    for d in dims:
        pos = torch.arange(t.shape[d])
        real = pos.unsqueeze(0) < lengths.unsqueeze(1)           # [batch, width]
        shape = [t.shape[0]] + [1] * (t.dim() - 1)
        shape[d] = t.shape[d]
        t = t * real.reshape(shape).to(t.dtype)
    return t


def _pad_to(t: Any, width: int, name: str = "") -> Any:
    """Right-pad the position axes with zeros so batches of different widths concatenate.

    Positions are dim 1, except attention patterns/scores ``[batch, head, q, k]``.
    """
    import torch.nn.functional as F

    dims = _position_dims(name)
    if t.dim() <= max(dims):
        return t
    pad: list[int] = []
    for d in reversed(range(1, t.dim())):
        pad += [0, width - t.shape[d]] if d in dims else [0, 0]
    return F.pad(t, pad) if any(pad) else t


_DEFAULT: ActivationStore | None = None


def default_store() -> ActivationStore:
    """The store measurements use when none is passed: the session's under pytest."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = ActivationStore()
    return _DEFAULT


def set_default_store(store: ActivationStore | None) -> None:
    global _DEFAULT
    _DEFAULT = store
