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

from .config import DEFAULT_MODEL, default_cache_dir  # noqa: F401 - re-exported for the plugin

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
    familywise: str = "none"
    level: float = 0.95


DTYPES = ("float32", "fp32", "float64", "bfloat16", "bf16", "float16", "fp16")
FAMILYWISE = ("none", "bonferroni")


def check_device(device: str) -> str | None:
    """What is wrong with a ``--circuits-device`` value on this machine (None when usable).

    Only a CUDA request imports torch (to ask whether CUDA is there)."""
    import re

    if device in ("auto", "cpu", "mps"):
        return None
    if not re.fullmatch(r"cuda(:\d+)?", device or ""):
        return f"--circuits-device={device!r} is not valid: auto, cpu, mps, cuda or cuda:N"
    import torch

    if not torch.cuda.is_available():
        return (f"--circuits-device={device!r} is not valid: CUDA is not available on this machine "
                "(use cpu or auto)")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        return (f"--circuits-device={device!r} is not valid: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)")
    return None


def check_model_name(name: str) -> str | None:
    """What is wrong with a model named on the command line or in the ini file (None when it
    can be loaded as far as can be told without loading it): a registered name, an existing
    checkpoint directory, or a name whose snapshot is in the local Hugging Face cache."""
    from . import models as M

    if not isinstance(name, str) or not name.strip():
        return f"--circuits-model={name!r} is not valid: a non-empty model name or checkpoint directory"
    if name in M.registered():
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return None
    looks_like_path = os.sep in name or name.startswith((".", "~")) or path.exists()
    if looks_like_path:
        return (f"--circuits-model={name!r} is not valid: no such checkpoint directory"
                + (" (it is a file: pass the folder holding config.json)" if path.exists() else ""))
    if M._cached_snapshot(M._official_name(name)) is None:
        return (f"--circuits-model={name!r} is not valid: not a registered name "
                f"({', '.join(sorted(M.registered()))}), not a checkpoint directory, and not in the "
                "local Hugging Face cache (nothing is downloaded)")
    return None


def claim_id(item: Any) -> str:
    """A claim's id across models: its node id without the model parameter."""
    base = item.nodeid.split("[", 1)[0]
    params = getattr(getattr(item, "callspec", None), "params", {})
    rest = {k: v for k, v in params.items() if k != "model"}
    return base + ("[" + ",".join(f"{k}={v}" for k, v in sorted(rest.items())) + "]" if rest else "")


class Session:
    def __init__(self, settings: Settings) -> None:
        from .store import ActivationStore

        self.settings = settings
        self._models: dict[str, Any] = {}
        self._failures: dict[str, Exception] = {}
        self.store = ActivationStore(cache_dir=settings.cache_dir if settings.use_disk_cache else None,
                                     batch_size=settings.batch_size)
        self.load_seconds: dict[str, float] = {}
        self._baseline_rows: dict[str, list[Any]] = {}
        self._version_lines: dict[str, list[str]] = {}

    def model(self, name: str) -> Any:
        """Load ``name`` once per process; a failure is remembered and re-raised."""
        import time

        from .errors import ModelUnavailable
        from .models import load_model

        if name in self._models:
            return self._models[name]
        if name in self._failures:
            raise self._failures[name]
        from ._progress import status

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
    def _model_of(self, item: Any, recorded: list[Any]) -> dict[str, Any]:
        from .models import info
        from ._report import versions

        model = getattr(item, "funcargs", {}).get("model")
        try:
            mi = info(model)
        except Exception:  # noqa: BLE001 - a claim without a language model (synthetic models)
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
        model = self._model_of(item, recorded)
        cid = claim_id(item)
        dicts = [m.to_dict() for m in recorded]
        directory = st.baseline_dir or Path(str(item.config.rootpath)) / "claims" / "baselines"
        reference = st.baseline_of or model["label"]
        foreign = reference != model["label"]        # comparing with another model's baseline
        path = B.model_file(directory, reference)
        try:   # every problem of the file, the entries or the marker fails this claim, naming it
            entries = {k: B.summary(d) for k, d in zip(B.metric_keys(dicts, cid), dicts)}
            data = B.read(path)
            policy = B.tolerance_policy(item.get_closest_marker("baseline"), st.baseline_tolerance)
            verdict = B.verdict(entries, data, cid, policy, B.versions())
        except B.BaselineError as e:
            if not enforce:
                return
            pytest.fail(str(e), pytrace=False)
        import warnings

        if not foreign and model.get("fingerprint") and data.fingerprint not in (None, model["fingerprint"]):
            warnings.warn(f"{path} was recorded for weights {data.fingerprint}, this run has "
                          f"{model['fingerprint']}", stacklevel=2)
        self._version_lines[item.nodeid] = [] if st.update_baselines else list(verdict.version_lines())
        if verdict.version_changes and not st.update_baselines:
            warnings.warn(f"{path}: {cid} was recorded with other versions ({'; '.join(verdict.version_lines())}): "
                          "small numeric drift is possible", stacklevel=2)
        if verdict.unused_tolerances:
            warnings.warn(f"the baseline marker of {cid} sets a tolerance for "
                          f"{', '.join(map(repr, verdict.unused_tolerances))}, which it did not record "
                          f"(it recorded {', '.join(map(repr, entries))})", stacklevel=2)
        if not enforce:
            self._baseline_rows[item.nodeid] = list(verdict.rows)
            return
        if st.update_baselines:
            if foreign:
                pytest.fail(f"--circuits-update-baselines with --circuits-baseline-of={reference}: refusing to "
                            f"write {model['label']}'s measurements into {path}", pytrace=False)
            try:
                B.update(path, model, cid, entries)
            except B.BaselineError as e:
                pytest.fail(str(e), pytrace=False)
            self._baseline_rows[item.nodeid] = [B.Row(k, e["mean"], e["mean"], "updated", 0.0)
                                                 for k, e in entries.items()]
            return
        if verdict.problems:
            pytest.fail("\n".join(verdict.problems) + f"\nfix these entries, or rewrite {cid}'s entries with "
                        "--circuits-update-baselines", pytrace=False)
        rows = list(verdict.rows)
        self._baseline_rows[item.nodeid] = rows
        new = verdict.new
        if new and foreign:
            pytest.fail(f"no baseline for {', '.join(new)} of {cid} in {path} (the baseline of {reference}); "
                        f"run the claims on {reference} with --circuits-update-baselines first", pytrace=False)
        if new:
            B.update(path, model, cid, {**data.claims.get(cid, {}), **entries})
            pytest.fail(f"no baseline for {', '.join(new)} of {cid} on {model['label']}: written to {path}; "
                        "review and commit it, then rerun", pytrace=False)
        for r in rows:
            if r.wide and r.accepted:
                warnings.warn(f"{cid}, {r.metric}: {r.flag}", stacklevel=2)
        if verdict.untrusted or verdict.missing:
            pytest.fail("\n".join(verdict.explain()) + f"\n{B.table(rows)}", pytrace=False)
        bad = verdict.drifted
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
        model = self._model_of(item, recorded)
        dicts = [m.to_dict() for m in recorded]
        rows = {r.metric: r for r in self._baseline_rows.get(item.nodeid, [])}
        measurements = []
        for key, d in zip(metric_keys(dicts, strict=False), dicts):
            d = {**{k: d[k] for k in ("name", "model", "mean", "lower", "upper", "n", "level")},
                 "flags": list(d.get("flags") or [])}
            d["key"] = key
            r = rows.get(key)
            d["baseline"] = None if r is None else {
                "mean": r.baseline, "difference": r.difference, "tolerance": r.tolerance,
                "allowed": r.allowed if r.finite_allowance else None, "within": bool(r.ok), "flag": r.flag}
            measurements.append(d)
        return {"claim": claim_id(item), "nodeid": item.nodeid, "model": model["label"],
                "fingerprint": model["fingerprint"], "outcome": "", "finding": kw.get("finding") or "",
                "source": kw.get("source") or "", "measurements": measurements,
                "version_changes": self._version_lines.get(item.nodeid, [])}

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
