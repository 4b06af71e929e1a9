"""The per-run object: settings, model pool, activation store and results ledger.

The plugin keeps one :class:`Session` in ``config.stash``; hooks and fixtures only
delegate to it.
"""

from __future__ import annotations

import contextlib
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
    baseline: bool = False
    baseline_dir: Path | None = None
    update_baselines: bool = False
    baseline_of: str | None = None
    baseline_tolerance: str = "3se"


def _measurements_key() -> Any:
    from .plugin import MEASUREMENTS_KEY

    return MEASUREMENTS_KEY


def claim_id(item: Any) -> str:
    """A claim's id across models: its node id without the model parameter."""
    base = item.nodeid.split("[", 1)[0]
    params = getattr(getattr(item, "callspec", None), "params", {})
    rest = {k: v for k, v in params.items() if k != "model"}
    return base + ("[" + ",".join(f"{k}={v}" for k, v in sorted(rest.items())) + "]" if rest else "")


class Session:
    def __init__(self, settings: Settings) -> None:
        from .activations import ActivationStore

        self.settings = settings
        self._models: dict[str, Any] = {}
        self._failures: dict[str, Exception] = {}
        self.store = ActivationStore(cache_dir=settings.cache_dir if settings.use_disk_cache else None,
                                     batch_size=settings.batch_size)
        self.load_seconds: dict[str, float] = {}
        self._baseline_rows: dict[str, list[Any]] = {}

    def model(self, name: str) -> Any:
        """Load ``name`` once per process; a failure is remembered and re-raised."""
        import time

        from .errors import ModelUnavailable
        from .models import load_model

        if name in self._models:
            return self._models[name]
        if name in self._failures:
            raise self._failures[name]
        from .progress import status

        start = time.perf_counter()
        try:
            with status(f"pytest-circuits: loading {name}"):
                m = load_model(name, cache_dir=self.settings.cache_dir, device=self.settings.device,
                               dtype=self.settings.dtype)
        except ModelUnavailable as e:
            self._failures[name] = e
            raise
        self.load_seconds[name] = time.perf_counter() - start
        self._models[name] = m
        return m

    # -- ledger and baselines -------------------------------------------------------
    def _model_of(self, item: Any) -> dict[str, Any]:
        from .models import info
        from .report import versions

        model = getattr(item, "funcargs", {}).get("model")
        try:
            mi = info(model)
        except Exception:  # noqa: BLE001 - a claim without a language model (synthetic models)
            recorded = item.stash.get(_measurements_key(), [])
            label = next((m.model for m in recorded if m.model), "") or "no-model"
            return {"label": label, "fingerprint": "n/a", "versions": versions()}
        return {"label": mi.label, "fingerprint": mi.fingerprint, "dtype": mi.dtype, "device": mi.device,
                "versions": versions()}

    def check_baseline(self, item: Any, recorded: list[Any], enforce: bool = True) -> None:
        """Compare a claim's measurements with its baseline; fail on drift or a new baseline.

        With ``enforce=False`` (the claim already failed) only the comparison is kept for
        the reports: nothing is written and nothing more is raised."""
        import pytest

        from . import baselines as B

        st = self.settings
        if not (st.baseline or st.update_baselines):
            return
        model = self._model_of(item)
        cid = claim_id(item)
        dicts = [m.to_dict() for m in recorded]
        entries = {k: B.summary(d) for k, d in zip(B.metric_keys(dicts), dicts)}
        directory = st.baseline_dir or Path(str(item.config.rootpath)) / "claims" / "baselines"
        reference = st.baseline_of or model["label"]
        foreign = reference != model["label"]        # comparing with another model's baseline
        path = B.model_file(directory, reference)
        try:
            data = B.load(path)
        except B.BaselineError as e:
            if not enforce:
                return
            pytest.fail(str(e), pytrace=False)
        import warnings

        if not foreign and model.get("fingerprint") and data.get("fingerprint") not in (None, model["fingerprint"]):
            warnings.warn(f"{path} was recorded for weights {data.get('fingerprint')}, this run has "
                          f"{model['fingerprint']}", stacklevel=2)
        then, now = data.get("versions") or {}, model.get("versions") or {}
        changed = [f"{k} {then[k]} -> {now.get(k)}" for k in ("torch", "transformer_lens", "transformers")
                   if k in then and then[k] != now.get(k)]
        if changed and not st.update_baselines:
            warnings.warn(f"{path} was recorded with other versions ({'; '.join(changed)}): small numeric "
                          "drift is possible", stacklevel=2)
        if not enforce:
            marker = item.get_closest_marker("baseline")
            tol = marker.kwargs.get("tolerance", st.baseline_tolerance) if marker else st.baseline_tolerance
            with contextlib.suppress(B.BaselineError):
                self._baseline_rows[item.nodeid] = B.compare(entries, data.get("claims", {}).get(cid, {}), tol)
            return
        if st.update_baselines:
            if foreign:
                pytest.fail(f"--circuits-update-baselines with --circuits-baseline-of={reference}: refusing to "
                            f"write {model['label']}'s measurements into {path}", pytrace=False)
            B.update(path, model, cid, entries)
            self._baseline_rows[item.nodeid] = [B.Row(k, e["mean"], e["mean"], "updated", 0.0)
                                                 for k, e in entries.items()]
            return
        expected = data.get("claims", {}).get(cid, {})
        marker = item.get_closest_marker("baseline")
        tolerance = marker.kwargs.get("tolerance", st.baseline_tolerance) if marker else st.baseline_tolerance
        try:
            rows = B.compare(entries, expected, tolerance)
        except B.BaselineError as e:
            pytest.fail(f"{item.nodeid}: {e}", pytrace=False)
        self._baseline_rows[item.nodeid] = rows
        new = [r.metric for r in rows if r.baseline is None]
        if new and foreign:
            pytest.fail(f"no baseline for {', '.join(new)} of {cid} in {path} (the baseline of {reference}); "
                        f"run the claims on {reference} with --circuits-update-baselines first", pytrace=False)
        if new:
            B.update(path, model, cid, {**expected, **entries})
            pytest.fail(f"no baseline for {', '.join(new)} of {cid} on {model['label']}: written to {path}; "
                        "review and commit it, then rerun", pytrace=False)
        bad = [r for r in rows if not r.ok]
        if bad:
            obtained = B.model_file(directory, model["label"]).with_suffix(".obtained.json")
            B.update(obtained, model, cid, entries)
            pytest.fail(f"{len(bad)} of {len(rows)} measurements of {cid} on {model['label']} drifted from "
                        f"the baseline of {reference} ({path}):\n{B.table(rows)}\nobtained values written to {obtained}; "
                        "to accept them rerun with --circuits-update-baselines", pytrace=False)

    def record(self, item: Any, recorded: list[Any]) -> dict[str, Any]:
        """The ledger record of one claim on one model (JSON-ready)."""
        from .baselines import metric_keys

        marker = item.get_closest_marker("claim")
        kw = marker.kwargs if marker else {}
        model = self._model_of(item)
        dicts = [m.to_dict() for m in recorded]
        rows = {r.metric: r for r in self._baseline_rows.get(item.nodeid, [])}
        measurements = []
        for key, d in zip(metric_keys(dicts), dicts):
            d = {k: d[k] for k in ("name", "model", "mean", "lower", "upper", "n", "level")}
            d["key"] = key
            r = rows.get(key)
            d["baseline"] = None if r is None else {
                "mean": r.baseline, "difference": r.difference, "tolerance": r.tolerance,
                "allowed": r.allowed, "within": bool(r.ok)}
            measurements.append(d)
        return {"claim": claim_id(item), "nodeid": item.nodeid, "model": model["label"],
                "fingerprint": model["fingerprint"], "outcome": "", "finding": kw.get("finding") or "",
                "source": kw.get("source") or "", "measurements": measurements}

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
