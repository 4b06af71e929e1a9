"""The activation store: activations for (model, prompt set, hooks, intervention).

``store.get(model, prompts, hooks, intervention=None)`` returns ``{hook: tensor}`` with
the batch dimension first, computing only the hooks asked for (never a full cache),
and only those not already known:

1. **memory**: entries made or read earlier in this process;
2. **disk**: one safetensors file per (key, hook) in a content-addressed folder (or an
   fsspec URL, docs/remote-cache.md), each checked on reading (docs/trust.md);
3. **forward**: the model is run (in batches) with hooks that copy just those tensors.

This module re-exports the public names of two modules, each with one job:

- :mod:`pytest_circuits.activation_cache`: the cache (1 and 2): entry keys, memory and
  disk entries, their checksums and MACs, :class:`Counters`, what is kept;
- :mod:`pytest_circuits.forwards`: the forward executor (3), :class:`ActivationStore`:
  batching by token budget, hooks, resuming mid-model from the first changed position,
  stacking interventions, counting compute.

``from pytest_circuits.store import X`` keeps working for every name this module exported
before the split. :func:`cache_dir_problem` (:mod:`pytest_circuits.cachefiles`) lets the
plugin refuse a cache folder that cannot be written before any claim runs.

Measurements that are not given a store use the current one, which this module keeps:
:func:`resolve` returns the store passed, else :func:`current`, which is the pytest
session's during a run (the plugin sets it with :func:`set_current` and gives the previous
one back at the end, so nested pytester runs restore the outer store) and a memory-only
store made on first use outside pytest. ``with use(store): ...`` makes one current for a
block.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Iterator

from .activation_cache import ENTRY_FORMAT, ENTRY_MAC, Counters, code_version, entry_sha256, tensor_sha256
from .cachefiles import cache_dir_problem  # noqa: F401 - _options.py imports it from here
from .forwards import (  # noqa: F401 - the stack-waste constants too, as before the split
    CPU_STACK_WASTE,
    CPU_TOKEN_BUDGET,
    CUDA_STACK_WASTE,
    CUDA_TOKEN_BUDGET_RANGE,
    TOKEN_BUDGET_ENV,
    ActivationStore,
    default_token_budget,
    final_logit_softcap,
    sliding_windows,
)
from .protocols import Intervention  # noqa: F401 - metrics and tasks import it from here

__all__ = [
    "code_version", "tensor_sha256", "entry_sha256", "Counters", "ActivationStore", "default_token_budget",
    "final_logit_softcap", "sliding_windows", "current", "resolve", "set_current", "reset", "use",
    "ENTRY_FORMAT", "ENTRY_MAC", "TOKEN_BUDGET_ENV", "CPU_TOKEN_BUDGET", "CUDA_TOKEN_BUDGET_RANGE",
]


# -- the current store ------------------------------------------------------------------
# The one way measurements reach a store when none is passed: the pytest session sets its
# store here for the run (and restores the previous one at the end: pytester nests runs);
# outside pytest the first use makes a memory-only store for the process.
_CURRENT: ContextVar[ActivationStore | None] = ContextVar("pytest_circuits_store", default=None)
_FALLBACK: list[ActivationStore] = []


def current() -> ActivationStore:
    """The store measurements use when none is passed: the session's under pytest, else a
    memory-only store made on first use."""
    store = _CURRENT.get()
    if store is not None:
        return store
    if not _FALLBACK:
        _FALLBACK.append(ActivationStore())
    return _FALLBACK[0]


def resolve(activations: ActivationStore | None) -> ActivationStore:
    """``activations`` when given, else :func:`current`: the one store fallback."""
    return activations if activations is not None else current()


def set_current(store: ActivationStore | None) -> Any:
    """Make ``store`` current; returns a token for :func:`reset`."""
    return _CURRENT.set(store)


def reset(token: Any) -> None:
    """Restore the store that was current before :func:`set_current` returned ``token``."""
    _CURRENT.reset(token)


@contextlib.contextmanager
def use(store: ActivationStore) -> Iterator[ActivationStore]:
    """``with store.use(s): ...``: ``s`` is the current store inside the block."""
    token = set_current(store)
    try:
        yield store
    finally:
        reset(token)
