"""The per-run object: settings, model pool and activation store, with what the hooks ask of
it: which items are claims and the run's ledger (the claims, the suite, the mode) for the
report. A claim's recording, its baseline verdict and its ledger record are
:mod:`pytest_circuits._verdicts`'s.

The plugin keeps one :class:`Session` in ``config.stash`` (:mod:`pytest_circuits._stash`);
hooks and fixtures call down into this module, never the reverse.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ._stash import (CARDS_KEY, CLAIM_INFO_KEY, CLAIMS_KEY, COLLECTED_KEY, RESULTS_KEY,
                     SESSION_KEY, SHARD_KEY)
from .config import DEFAULT_MODEL, default_cache_dir

#: the checkup's claims file, which --circuits-checkup hands to pytest to collect
CHECKUP_PATH = Path(__file__).with_name("checkup_claims.py")


@dataclass
class Settings:
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    models_from_cli: bool = False
    models_named: bool = False      # named on the command line or in the ini file (else the default)
    clear_cache: bool = False       # --circuits-clear-cache
    device: str = "auto"
    dtype: str = "float32"
    device_map: Any = None          # --circuits-device-map, parsed (pytest_circuits.devices); None: one device
    cache_dir: Path | str = field(default_factory=default_cache_dir)   # str: an fsspec URL (remote cache)
    use_disk_cache: bool = True
    batch_size: int | None = None   # --circuits-batch-size: a cap on rows per forward (None: the budget alone)
    token_budget: int | None = None  # --circuits-token-budget (None: the environment, else the device's default)
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
    from . import loading as L
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
    if L._cached_snapshot(L._official_name(name)) is None:
        return (f"--circuits-model={name!r} is not valid: not a registered name "
                f"({', '.join(sorted(M.registered()))}), not a checkpoint directory, and not in the "
                "local Hugging Face cache (nothing is downloaded)")
    return None


def claims_root(config: Any) -> Path:
    """The folder relative paths of the plugin are resolved against: the ini file's folder
    (``pytest.ini``, ``pyproject.toml``, ...), else the folder pytest was started in. Not
    pytest's rootdir: without an ini file it is the common ancestor of the paths a command line
    names, option values included (``--circuits-cache-dir /elsewhere``), so it moves."""
    ini = getattr(config, "inipath", None)
    return Path(str(ini)).parent if ini else Path(str(config.invocation_params.dir))


def baseline_folder(config: Any, settings: Settings) -> Path:
    """Where baseline files are read and written: ``--circuits-baseline-dir`` (resolved when
    the run started), else ``claims/baselines`` under :func:`claims_root`."""
    return settings.baseline_dir or claims_root(config) / "claims" / "baselines"


def _root_relative_nodeid(item: Any) -> str:
    """The item's node id with its file part relative to :func:`claims_root` (pytest's own
    node id where the two roots agree, or the file lies outside the claims root)."""
    nodeid = item.nodeid
    config = getattr(item, "config", None)
    path = getattr(item, "path", None)
    if config is None or path is None:
        return nodeid
    root, rootdir = claims_root(config).resolve(), Path(str(config.rootpath)).resolve()
    if root == rootdir:
        return nodeid
    try:
        rel = Path(str(path)).resolve().relative_to(root).as_posix()
    except ValueError:
        return nodeid
    file_part = nodeid.split("::", 1)[0]
    return rel + nodeid[len(file_part):]


def claim_id(item: Any) -> str:
    """A claim's id across models: its node id without the model parameter, with its file
    relative to :func:`claims_root` (so baselines and reports keep their keys wherever pytest
    puts its rootdir)."""
    base = _root_relative_nodeid(item).split("[", 1)[0]
    if Path(str(getattr(item, "path", ""))) == CHECKUP_PATH:
        # The checkup's claims live in the installed package: the same id wherever it is installed.
        base = "checkup::" + base.rsplit("::", 1)[-1]
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
                                     batch_size=settings.batch_size, token_budget=settings.token_budget)
        self.load_seconds: dict[str, float] = {}

    def model(self, name: str) -> Any:
        """Load ``name`` once per process; a failure is remembered and re-raised."""
        import time

        from .errors import CircuitsError
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
                               dtype=self.settings.dtype, device_map=self.settings.device_map)
        except CircuitsError as e:   # unavailable, or a usage mistake (a device map that does not fit)
            self._failures[name] = e
            raise
        self.load_seconds[name] = time.perf_counter() - start
        self._models[name] = m
        return m

    def clear_disk_cache(self) -> Path | str:
        """Delete the cached activations (a local folder, or the remote prefix of a URL)."""
        from .config import is_url

        if is_url(self.settings.cache_dir):
            from .blobs import open_blobs

            blobs = open_blobs(self.settings.cache_dir)
            blobs.clear("activations")
            return f"{blobs.describe()}/activations"
        target = Path(self.settings.cache_dir) / "activations"
        shutil.rmtree(target, ignore_errors=True)
        return target

    def cache_line(self) -> str:
        """Where this run's cache is, for the summary (a URL without its credentials)."""
        return cache_line(self.settings)

    def summary_lines(self) -> list[str]:
        return counter_lines(self.store.counters, self.load_seconds, self.cache_line())

    def worker_summary(self) -> dict[str, Any]:
        """What an xdist worker sends its controller for the summary (JSON-ready)."""
        return {"counters": self.store.counters.as_dict(), "load_seconds": dict(self.load_seconds)}


def cache_line(settings: Settings) -> str:
    """Where a run's cache is, for the summary (a URL without its credentials)."""
    from .config import is_url

    where = settings.cache_dir
    if is_url(where):
        from .blobs import describe_url

        where = describe_url(str(where))
    from .cachekey import ENV

    signed = f" (entries signed and checked with ${ENV})" if os.environ.get(ENV) is not None else ""
    return (f"cache: {where}" + ("" if settings.use_disk_cache else
                                 " (converted weights only: --circuits-no-cache keeps activations in memory)")
            + signed)


def counter_lines(c: Any, load_seconds: dict[str, Any], cache: str) -> list[str]:
    """The summary's ``activations:``, ``cache:``, ``compute:`` and model-load lines, from the
    store's counters (one process's, or every xdist worker's summed: :func:`summed_workers`)."""
    lines = [f"activations: {c.forward_passes} forward passes ({c.prompts_forwarded} prompts), "
             f"{c.memory_hits} hits from memory, {c.disk_hits} from disk, {c.computed} computed"
             + (f", {c.recomputed_bad} unusable entries recomputed" if c.recomputed_bad else "")
             + (f"; derived results (probe fits, head evidence): {c.results_reused} reused, "
                f"{c.results_computed} computed" if c.results_reused or c.results_computed else ""),
             cache]
    if c.forward_passes:
        # compute in block x position passes (padding included), and the floor: what a
        # perfect cache would still compute (real positions an intervention can change)
        share = f"{c.intervened_block_positions / c.block_position_passes:.0%}" if c.block_position_passes else "0%"
        lines.append(f"compute: {c.block_position_passes:,} block x position passes ({share} under "
                     f"interventions; {c.resumed_passes} forwards resumed mid-model, {c.suffix_passes} "
                     f"of them from each prompt's first changed position); floor "
                     f"{c.floor_block_positions:,}")
    for name, secs in load_seconds.items():
        lines.append(f"model {name}: loaded in {secs:.1f} s" if isinstance(secs, (int, float))
                     else f"model {name}: loaded in {secs}")
    return lines


def summed_workers(summaries: dict[str, dict[str, Any]]) -> tuple[Any, dict[str, str]]:
    """Every xdist worker's counters summed (one Counters), and each model's load times by
    worker (``{"smollm2-135m": "21.3 s (gw0), 20.9 s (gw1)"}``: each worker loads its own)."""
    from .store import Counters

    total = Counters()
    loads: dict[str, list[str]] = {}
    for worker, summary in sorted(summaries.items()):
        for k, v in dict(summary.get("counters") or {}).items():
            if hasattr(total, k) and isinstance(v, int) and not isinstance(v, bool):
                setattr(total, k, getattr(total, k) + v)
        for name, secs in dict(summary.get("load_seconds") or {}).items():
            loads.setdefault(name, []).append(f"{float(secs):.1f} s ({worker})")
    return total, {name: ", ".join(times) for name, times in loads.items()}


# ----------------------------------------------------------------------------- which items are claims
def option(config: pytest.Config, name: str) -> Any:
    """An option's value: given on the command line, else its ini key (or the ini default)."""
    value = config.getoption(name)
    return config.getini(name) if value is None else value


#: the plugin's module: a ``model`` fixture defined there is the plugin's (not a test suite's own)
PLUGIN_MODULE = "pytest_circuits.plugin"


# ----------------------------------------------------------------------------- collection
def update_failing(config: Any) -> bool:
    """``--circuits-update-failing`` (its ini key too); False where the option is not registered."""
    try:
        value = config.getoption("circuits_update_failing")
        return bool(config.getini("circuits_update_failing") if value is None else value)
    except (ValueError, KeyError, AttributeError):
        return False


def is_ours(metafunc: pytest.Metafunc) -> bool:
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get("model")
    return bool(defs) and defs[-1].func.__module__ == PLUGIN_MODULE


def is_ours_item(item: pytest.Item) -> bool:
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).get("model")
    return bool(defs) and defs[-1].func.__module__ == PLUGIN_MODULE


def model_id(name: str) -> str:
    """A model's id in node ids and xdist groups: its label (:func:`pytest_circuits.models.run_label`:
    a checkpoint folder's base name, or a distinguishing path suffix when two folders of the run
    share it), or the base name of a path that is not a folder."""
    from .models import run_label

    if Path(name).expanduser().is_dir():
        return run_label(name)
    p = Path(name)
    return p.name if (os.sep in name or name.startswith(".")) and p.name else name


def is_claim(item: pytest.Item) -> bool:
    """A claim: an item marked ``@pytest.mark.claim`` or using the plugin's ``model`` fixture."""
    return item.get_closest_marker("claim") is not None or is_ours_item(item)


def is_checkup(item: Any) -> bool:
    return Path(str(getattr(item, "path", ""))) == CHECKUP_PATH


def item_model(item: pytest.Item) -> str:
    """The id of the model a claim item runs on ("" for an item without the model parameter)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return model_id(str(params["model"])) if "model" in params and is_ours_item(item) else ""


def item_label(item: pytest.Item) -> str:
    """The model's name as the ledger's records give it (ModelInfo.label): a checkpoint folder's
    label (its base name, or a distinguishing path suffix: :func:`pytest_circuits.models.run_label`),
    else the name ("org/name" stays whole); "" for an item without a model."""
    from .models import run_label

    params = getattr(getattr(item, "callspec", None), "params", {})
    if "model" not in params or not is_ours_item(item):
        return ""
    return run_label(str(params["model"]))



# ----------------------------------------------------------------------------- the run's ledger
def claims_ledger(config: pytest.Config) -> dict[str, Any]:
    """The ledger's "claims" (every claim item this process ran or skipped, with its verdict),
    "collected" (the whole suite's claims before sharding; left out when collection did not
    finish, so that a merge cannot take an unknown suite for a complete one) with its digest,
    "shard", "mode" (the options that decide what a verdict means) and "suite" (what was run:
    the paths, any selection, and the sha256 of every claims file, so that the merge can read the
    same source)."""
    import hashlib

    info = config.stash.get(CLAIM_INFO_KEY, {})
    recorded = {r.nodeid: r.model for r in config.stash.get(RESULTS_KEY, [])}
    claims = []
    for nodeid, (verdict, reason) in config.stash.get(CLAIMS_KEY, {}).items():
        i = info.get(nodeid, {})
        claims.append({"nodeid": nodeid, "claim": i.get("claim", nodeid.split("[", 1)[0]),
                       "model": recorded.get(nodeid, i.get("model", "")), "verdict": verdict, "reason": reason,
                       "finding": i.get("finding", "")})
    claims.sort(key=lambda c: (c["claim"], c["model"], c["nodeid"]))
    shard = config.stash.get(SHARD_KEY, None)
    out: dict[str, Any] = {"claims": claims,
                           "shard": {"index": shard[0], "count": shard[1]} if shard else None,
                           "mode": _mode(config)}
    collected = config.stash.get(COLLECTED_KEY, None)
    if collected is not None:
        out["collected"] = sorted(collected)
        out["collected_sha256"] = hashlib.sha256("\n".join(out["collected"]).encode("utf-8")).hexdigest()
        out["suite"] = _suite(config, out["collected"])
    return out


def _mode(config: pytest.Config) -> dict[str, Any]:
    """The run's options that decide what its verdicts mean (the merge reads them)."""
    st = config.stash[SESSION_KEY].settings
    bdir = baseline_folder(config, st)
    return {"baseline": bool(st.baseline), "update_baselines": bool(st.update_baselines),
            "update_failing": update_failing(config), "baseline_of": st.baseline_of or None,
            "baseline_dir": _relative(config, bdir), "baseline_tolerance": str(st.baseline_tolerance),
            "require_models": bool(st.require_models), "familywise": st.familywise, "level": float(st.level)}


def _relative(config: pytest.Config, path: Any) -> str:
    """``path`` relative to the rootdir (with ``/``), or absolute when it is outside."""
    p = Path(str(path))
    p = p if p.is_absolute() else Path(str(config.rootpath)) / p
    try:
        return p.resolve().relative_to(Path(str(config.rootpath)).resolve()).as_posix()
    except ValueError:
        return str(p.resolve())


def _suite(config: pytest.Config, collected: list[str]) -> dict[str, Any]:
    """What the run collected from: the paths it was given (rootdir-relative), the selection
    options that drop claims (-k, -m, --deselect, node ids, --circuits-checks) and the sha256 of
    every file a collected claim is in (the merge reads these files in its checkout)."""
    import hashlib

    root = Path(str(config.rootpath))
    # The checkup's claims live in the installed package: outside the rootdir pytest gives their
    # node ids an empty path, which "locations" names for the merge.
    checkup = _relative(config, CHECKUP_PATH)
    outside = Path(checkup).is_absolute()
    args, selection, locations = [], {}, {}
    for a in getattr(config, "args", []) or []:
        path, sep, _ = str(a).partition("::")
        if sep:
            selection.setdefault("node ids", []).append(str(a))
        rel = _relative(config, Path(str(config.invocation_params.dir)) / path)
        if rel == checkup and outside:
            rel = ""
            locations[""] = "pytest_circuits/checkup_claims.py"
        args.append(rel)
    for flag, name in (("-k", "keyword"), ("-m", "markexpr")):
        value = getattr(config.option, name, "") or ""
        if value:
            selection[flag] = str(value)
    for flag, name in (("--deselect", "deselect"), ("--ignore", "ignorepath"), ("--ignore-glob", "ignore_glob")):
        value = getattr(config.option, name, None) or []
        if value:
            selection[flag] = [str(v) for v in value]
    checks = config.getoption("circuits_checks", None)
    if option(config, "circuits_checkup") and str(checks or "all") != "all":
        selection["--circuits-checks"] = str(checks)
    files: dict[str, str | None] = {}
    for nodeid in collected:
        rel = nodeid.split("::", 1)[0]
        if rel not in files:
            if not rel and outside:
                locations[""] = "pytest_circuits/checkup_claims.py"
            try:
                files[rel] = hashlib.sha256((CHECKUP_PATH if not rel and outside else root / rel).read_bytes()
                                            ).hexdigest() if rel or outside else None
            except OSError:
                files[rel] = None
    return {"args": sorted(dict.fromkeys(args)), "selection": selection, "files": files, "locations": locations,
            "python_files": [str(x) for x in config.getini("python_files")],
            "python_classes": [str(x) for x in config.getini("python_classes")],
            "python_functions": [str(x) for x in config.getini("python_functions")]}


def cards(config: pytest.Config) -> list[dict[str, Any]]:
    """The checkup's detections, one per (check, model), with the baseline comparisons of their
    measurements (from the claim's ledger record) and the claim's outcome. A check whose
    detector raised is carried as status "error" with the message."""
    results = {r.nodeid: r for r in config.stash.get(RESULTS_KEY, [])}
    out = []
    for nodeid, outcome, card, reason in config.stash.get(CARDS_KEY, []):
        rec = results.get(nodeid)
        if card is None:
            check = nodeid.split("::")[-1].split("[")[0].removeprefix("test_")
            model = nodeid.split("[", 1)[1].rstrip("]") if "[" in nodeid else ""
            card = {"check": check, "title": check, "source": "", "model": model, "status": "error",
                    "applicable": True, "reason": reason, "found": False, "criterion": "",
                    "measurements": [], "components": [], "heatmaps": {}, "details": ""}
        if rec is not None:
            by_key = {m.name: m.to_json() for m in rec.measurements}
            card["measurements"] = [by_key.get(m["name"], m) for m in card["measurements"]]
        card["outcome"] = outcome
        out.append(card)
    return out

