"""The per-run object: settings, model pool, activation store and results ledger.

The plugin keeps one :class:`Session` in ``config.stash``; hooks and fixtures only
delegate to it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2-135m"


def default_cache_dir() -> Path:
    """``$PYTEST_CIRCUITS_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-circuits``, else ``~/.cache/...``.

    Kept outside ``.pytest_cache`` on purpose: ``pytest --cache-clear`` must not throw
    away converted weights and activations.
    """
    env = os.environ.get("PYTEST_CIRCUITS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-circuits"


@dataclass
class Settings:
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    models_from_cli: bool = False
    device: str = "auto"
    dtype: str = "float32"
    cache_dir: Path = field(default_factory=default_cache_dir)
    use_disk_cache: bool = True
    batch_size: int = 32
    seed: int = 0
    require_models: bool = False


@dataclass
class LedgerEntry:
    nodeid: str
    model: str
    finding: str
    source: str
    measurements: list[dict[str, Any]]
    outcome: str = ""


class Session:
    def __init__(self, settings: Settings) -> None:
        from .activations import ActivationStore

        self.settings = settings
        self._models: dict[str, Any] = {}
        self._failures: dict[str, Exception] = {}
        self.store = ActivationStore(cache_dir=settings.cache_dir if settings.use_disk_cache else None,
                                     batch_size=settings.batch_size)
        self.ledger: list[LedgerEntry] = []
        self.load_seconds: dict[str, float] = {}

    def model(self, name: str) -> Any:
        """Load ``name`` once per process; a failure is remembered and re-raised."""
        import time

        from .errors import ModelUnavailable
        from .models import load_model

        if name in self._models:
            return self._models[name]
        if name in self._failures:
            raise self._failures[name]
        start = time.perf_counter()
        try:
            m = load_model(name, cache_dir=self.settings.cache_dir, device=self.settings.device,
                           dtype=self.settings.dtype)
        except ModelUnavailable as e:
            self._failures[name] = e
            raise
        self.load_seconds[name] = time.perf_counter() - start
        self._models[name] = m
        return m

    def clear_disk_cache(self) -> Path:
        target = self.settings.cache_dir / "activations"
        shutil.rmtree(target, ignore_errors=True)
        return target

    def summary_lines(self) -> list[str]:
        c = self.store.counters
        lines = [f"activations: {c.forward_passes} forward passes ({c.prompts_forwarded} prompts), "
                 f"{c.memory_hits} hits from memory, {c.disk_hits} from disk, {c.computed} computed"
                 + (f", {c.recomputed_bad} unusable entries recomputed" if c.recomputed_bad else "")]
        for name, secs in self.load_seconds.items():
            lines.append(f"model {name}: loaded in {secs:.1f} s")
        return lines
