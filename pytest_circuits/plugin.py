"""pytest hooks and fixtures. Each hook is a few lines that delegate to ``_session.py``.

Nothing heavy is imported at module import time, so ``pytest --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest

SESSION_KEY = pytest.StashKey["Any"]()
MEASUREMENTS_KEY = pytest.StashKey[list]()
EXPECTED_CHANGE_KEY = pytest.StashKey[str]()
ASSERTIONS_KEY = pytest.StashKey[list]()
CLAIM_COUNT_KEY = pytest.StashKey[int]()
_PLUGIN_NAME = "circuits-session"

_MARKERS = (
    "claim(source=None, finding=None): a stated interpretability finding; `finding` is the "
    "sentence the claim checks, `source` where it comes from (e.g. 'arXiv:2305.00586')",
    "model(*names, optional=None): the model(s) a claim is asserted against (overridden by "
    "--circuits-model); optional='why' declares that these models may be missing here: the claim "
    "is then reported as not checked instead of failing under --circuits-require-models",
    "baseline(tolerance='3se'): the drift tolerance of this claim's measurements against their "
    "baseline: one spec ('3se', 'abs:0.05', 'rel:0.1') or {metric: spec}",
    "expect_change(model, reason): this claim's assertion is expected to fail on the named model "
    "(a strict xfail on AssertionError only: it fails if the claim still holds there, and any other "
    "exception is a failure)",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("circuits", "pytest-circuits: interpretability claims on language models")

    def add(flag: str, ini: str, help: str, default: Any = None, type: str = "string", **kw: Any) -> None:
        g.addoption(flag, dest=ini, default=None, help=f"{help} [ini: {ini}]", **kw)
        parser.addini(ini, help=help, type=type, default=default)
        _INI_DEFAULTS[ini] = default

    add("--circuits-model", "circuits_model", "model to run claims against (repeatable): a registered "
        "name such as smollm2-135m, a checkpoint directory, or a cached Hugging Face name; "
        "overrides @pytest.mark.model", default=[], type="linelist", action="append")
    add("--circuits-device", "circuits_device", "auto|cpu|cuda|cuda:N (default auto)", default="auto")
    add("--circuits-device-map", "circuits_device_map", "spread each model over devices with Hugging Face's "
        "device_map: auto|balanced|balanced_low_0|sequential, a JSON object {module: device} or @file.json "
        "(default none: one device; needs --circuits-device auto)", default="")
    add("--circuits-dtype", "circuits_dtype", "float32|bfloat16|float16|float64 (default float32)",
        default="float32")
    add("--circuits-cache-dir", "circuits_cache_dir", "where converted weights and activations are "
        "cached (default $PYTEST_CIRCUITS_CACHE_DIR or ~/.cache/pytest-circuits)", default="")
    add("--circuits-no-cache", "circuits_no_cache", "keep activations in memory only (no disk cache)",
        default=False, type="bool", action="store_true")
    add("--circuits-clear-cache", "circuits_clear_cache", "delete cached activations before the run "
        "(converted weights are kept)", default=False, type="bool", action="store_true")
    add("--circuits-batch-size", "circuits_batch_size", "at most this many rows per forward pass (default: "
        "no limit but the token budget): prompts, or prompts x interventions when a sweep stacks several "
        "interventions into one forward", default="none")
    add("--circuits-token-budget", "circuits_token_budget", "rows x positions per forward pass (default: "
        "$PYTEST_CIRCUITS_TOKEN_BUDGET, else 4096 on a CPU, chosen from free memory on CUDA)", default="auto")
    add("--circuits-seed", "circuits_seed", "seed for torch, numpy and random, reset for every claim "
        "(default 0)", default="0")
    add("--circuits-require-models", "circuits_require_models", "fail, instead of skip, claims whose "
        "model cannot be loaded", default=False, type="bool", action="store_true")
    add("--circuits-baseline", "circuits_baseline", "compare every claim's measurements with its "
        "baseline (a missing baseline is written and the claim fails)", default=False, type="bool",
        action="store_true")
    add("--circuits-baseline-dir", "circuits_baseline_dir", "folder of baseline files, one JSON per "
        "model (default claims/baselines beside the ini file, or where pytest was started without one; "
        "a relative path: to where pytest was started, or to the ini file's folder when set there; "
        "giving it turns baselines on)", default="")
    add("--circuits-update-baselines", "circuits_update_baselines", "rewrite the baselines of the "
        "claims that run (others are kept)", default=False, type="bool", action="store_true")
    add("--circuits-baseline-of", "circuits_baseline_of", "compare every model with this model's "
        "baseline file (e.g. a new checkpoint against the released model's baselines); nothing is "
        "written for the other models", default="")
    add("--circuits-baseline-tolerance", "circuits_baseline_tolerance", "default drift tolerance: "
        "'3se' (standard errors), 'abs:X' or 'rel:X' (default 3se)", default="3se")
    add("--circuits-familywise", "circuits_familywise", "family-wise error control over the claims "
        "of the run: 'bonferroni' widens every measurement's interval to level 1 - 0.05/m (m = claims "
        "collected) so that all the run's verdicts hold together at 95%%; 'none' (default): each "
        "claim at 95%%", default="none")
    add("--circuits-report", "circuits_report", "write the results ledger as JSON to this path",
        default="")
    add("--circuits-markdown", "circuits_markdown", "write a Markdown claims x models table "
        "(e.g. for a CI job summary)", default="")
    add("--circuits-html", "circuits_html", "write an HTML report with plots across models", default="")
    add("--circuits-shard", "circuits_shard", "run only shard K of N (e.g. 2/4): the collected items are split "
        "deterministically by model and claim over N jobs (docs/release-gate.md); merge the jobs' "
        "--circuits-report files with `pytest-circuits merge`", default="")
    add("--circuits-checkup", "circuits_checkup", "run the mechanism checkup (induction, IOI, successor "
        "heads, copy suppression, greater-than, factual recall) as claims on every --circuits-model; "
        "with no paths given, only the checkup runs", default=False, type="bool", action="store_true")
    add("--circuits-checks", "circuits_checks", "which checkup checks to run: 'all' (default) or a comma "
        "list", default="all")
    add("--circuits-update-failing", "circuits_update_failing", "with --circuits-update-baselines, also record "
        "the baselines of claims that fail (they still fail): the released model's values are what they are",
        default=False, type="bool", action="store_true")


def _opt(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    return config.getini(name) if value is None else value


def _path_option(config: pytest.Config, name: str) -> Path | None:
    """A folder or file option as an absolute path (None when not given): relative to the folder
    pytest was started in when given on the command line, to the ini file's folder when given
    there. Never to pytest's rootdir, which a path in the command line can move."""
    from ._session import claims_root

    raw = _opt(config, name)
    if raw is None or not str(raw).strip():
        return None
    path = Path(str(raw).strip()).expanduser()
    if path.is_absolute():
        return path
    base = Path(str(config.invocation_params.dir)) if config.getoption(name) is not None else claims_root(config)
    return base / path


def pytest_configure(config: pytest.Config) -> None:
    # The plugin loads in every pytest run of the environment: nothing here may change a run
    # that collects no claim (no environment variable, no header, no heavy import). Claims
    # never download: each model load is offline by itself (models.offline), not the process.
    for m in _MARKERS:
        config.addinivalue_line("markers", m)
    if not config.pluginmanager.hasplugin("xdist"):
        # Claims carry xdist_group(...) so `--dist loadgroup` keeps a model on one worker;
        # register it when xdist is absent so --strict-markers stays clean.
        config.addinivalue_line("markers", "xdist_group(name): pytest-xdist grouping (xdist not installed)")
    from ._progress import set_quiet

    set_quiet(config.get_verbosity() < 0)
    # Every option is parsed and checked here, once: a bad value is a usage error (exit 4)
    # before any claim runs, never a skip per claim.
    lazy = _LazySession(config, _settings(config))
    config.stash[SESSION_KEY] = lazy
    config.pluginmanager.register(lazy, _PLUGIN_NAME)
    _register_labels(config)
    _add_checkup(config)


CHECKUP_PATH = Path(__file__).with_name("checkup_claims.py")
CHECKS_KEY = pytest.StashKey[list]()


def _add_checkup(config: pytest.Config) -> None:
    """``--circuits-checkup``: collect the checkup's claims (alone when no paths were given).
    Nothing is imported otherwise: the plugin loads in every pytest run of the environment."""
    if not _opt(config, "circuits_checkup"):
        if config.getoption("circuits_checks") not in (None, "all"):
            # Given on the command line without the checkup: it would select nothing, silently.
            raise pytest.UsageError("pytest-circuits: --circuits-checks selects the checkup's checks; add "
                                    "--circuits-checkup to run them")
        return
    from .checkup import select
    from .errors import CircuitsError

    try:
        checks = select(str(_opt(config, "circuits_checks")))
    except CircuitsError as e:
        raise pytest.UsageError(f"pytest-circuits: --circuits-checks: {e}") from None
    config.stash[CHECKS_KEY] = checks
    explicit = getattr(config, "args_source", None) == pytest.Config.ArgsSource.ARGS
    here = str(CHECKUP_PATH)
    config.args[:] = ([a for a in config.args if a != here] if explicit else []) + [here]


def _models(config: pytest.Config) -> tuple[list[str], bool]:
    """The models asked for on the command line (repeatable) or in the ini file, and
    whether they came from the command line."""
    cli = [m for group in (config.getoption("circuits_model") or []) for m in
           (group if isinstance(group, list) else [group])]
    return (cli, True) if cli else (list(config.getini("circuits_model")), False)


def _settings(config: pytest.Config) -> Any:
    """Parse and check every option (each also an ini key); a bad value is a UsageError."""
    from ._session import DTYPES, FAMILYWISE, Settings, check_device, check_model_name
    from .config import MAX_SEED, cache_location, is_url

    c = config

    def usage(msg: str) -> pytest.UsageError:
        return pytest.UsageError(f"pytest-circuits: {msg}")

    def integer(name: str, flag: str, low: int, high: int | None = None) -> int:
        raw = _opt(c, name)
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise usage(f"{flag}={raw!r} is not valid: an integer") from None
        if value < low or (high is not None and value > high):
            raise usage(f"{flag}={value} is not valid: an integer >= {low}"
                        + (f" and <= {high:,}" if high is not None else ""))
        return value

    for name, flag in _TEXT_OPTIONS:
        given = c.getoption(name)
        if isinstance(given, str) and not given.strip():
            # e.g. --circuits-report=$REPORT with the variable unset: never a silent default
            raise usage(f"{flag}= is empty: give a value, or leave the option out")
    models, from_cli = _models(c)
    for name in models:
        problem = check_model_name(name) or _pickled_checkpoint(name)
        if problem:
            raise usage(problem + ("" if from_cli else " (from the ini option circuits_model)"))
    _check_outputs(c, usage)
    dtype = str(_opt(c, "circuits_dtype")).strip()
    if dtype not in DTYPES:
        raise usage(f"--circuits-dtype={dtype!r} is not valid: one of {', '.join(DTYPES)}")
    device = str(_opt(c, "circuits_device")).strip()
    problem = check_device(device)
    if problem:
        raise usage(problem)
    device_map = _device_map(c, device, models, usage)
    familywise = str(_opt(c, "circuits_familywise")).strip().lower()
    if familywise not in FAMILYWISE:
        raise usage(f"--circuits-familywise={familywise!r} is not valid: one of {', '.join(FAMILYWISE)}")
    cache = _opt(c, "circuits_cache_dir")
    cache = cache.strip() if isinstance(cache, str) else cache
    cache_dir = (cache if is_url(cache) else _path_option(c, "circuits_cache_dir")) if cache else cache_location()
    use_disk = not _opt(c, "circuits_no_cache")
    from .cachekey import key_problem

    problem = key_problem()         # the team key (docs/trust.md): set means usable; never echoed
    if problem:
        raise usage(problem)
    if is_url(cache_dir):
        # A remote cache (an fsspec URL, docs/remote-cache.md): its protocol's package is
        # checked always, and (unless --circuits-no-cache) a probe object is written, read and
        # deleted there, so a missing bucket or package is a usage error before any claim.
        from .blobs import describe_url, location_problem

        problem = location_problem(cache_dir, probe=use_disk)
        if problem:
            raise usage(f"--circuits-cache-dir={describe_url(cache_dir)!r} cannot be used: {problem}. "
                        "Pass a reachable location or a writable folder with --circuits-cache-dir (or "
                        "$PYTEST_CIRCUITS_CACHE_DIR)")
    # A cache folder the user chose is checked now (the plugin loads in every pytest run of
    # the environment, so the default one is not: if it cannot be written, the store warns
    # once and keeps activations in memory).
    elif use_disk and (cache or os.environ.get("PYTEST_CIRCUITS_CACHE_DIR")):
        from .store import cache_dir_problem

        problem = cache_dir_problem(cache_dir)
        if problem:
            raise usage(f"--circuits-cache-dir={str(cache_dir)!r} cannot be used: {problem}. Pass a "
                        "writable folder with --circuits-cache-dir (or $PYTEST_CIRCUITS_CACHE_DIR), or "
                        "--circuits-no-cache to keep activations in memory only")
    tolerance = _opt(c, "circuits_baseline_tolerance")
    from .baselines import BaselineError, Tolerance

    try:
        Tolerance.parse(tolerance)
    except BaselineError as e:
        raise usage(f"--circuits-baseline-tolerance: {e}") from None
    bdir = _opt(c, "circuits_baseline_dir")
    baseline = bool(_opt(c, "circuits_baseline")) or bool(bdir) or bool(_opt(c, "circuits_baseline_of"))
    from ._session import claims_root

    where = _path_option(c, "circuits_baseline_dir") if bdir else claims_root(c) / "claims" / "baselines"
    if baseline and not hasattr(c, "workerinput"):
        # baselines are written into it (a missing one, or obtained values on drift)
        from .config import output_problem

        problem = output_problem(where, folder=True)
        if problem:
            raise usage(f"--circuits-baseline-dir={str(bdir or where)!r} cannot be used: {problem}")
    shard = str(_opt(c, "circuits_shard") or "").strip()
    if shard:
        from .shards import parse_shard

        try:
            c.stash[SHARD_KEY] = parse_shard(shard)
        except ValueError as e:
            raise usage(f"--circuits-shard: {e}") from None
    return Settings(
        models=models or Settings().models, models_from_cli=from_cli, models_named=bool(models),
        clear_cache=bool(_opt(c, "circuits_clear_cache")),
        device=device if device_map is not None else _worker_device(device), device_map=device_map,
        dtype=dtype, cache_dir=cache_dir, use_disk_cache=use_disk,
        batch_size=None if str(_opt(c, "circuits_batch_size")).strip().lower() == "none"
        else integer("circuits_batch_size", "--circuits-batch-size", 1),
        token_budget=None if str(_opt(c, "circuits_token_budget")).strip().lower() == "auto"
        else integer("circuits_token_budget", "--circuits-token-budget", 1),
        seed=integer("circuits_seed", "--circuits-seed", 0, MAX_SEED),
        require_models=bool(_opt(c, "circuits_require_models")),
        baseline=baseline,
        baseline_dir=where,
        update_baselines=bool(_opt(c, "circuits_update_baselines")),
        baseline_of=_opt(c, "circuits_baseline_of") or None,
        baseline_tolerance=tolerance, familywise=familywise)


# Options whose value is text: given empty on the command line, each would silently mean
# "not given" (no report, no sharding, the default cache): a usage error instead.
_TEXT_OPTIONS = (("circuits_cache_dir", "--circuits-cache-dir"), ("circuits_report", "--circuits-report"),
                 ("circuits_markdown", "--circuits-markdown"), ("circuits_html", "--circuits-html"),
                 ("circuits_baseline_dir", "--circuits-baseline-dir"),
                 ("circuits_baseline_of", "--circuits-baseline-of"), ("circuits_shard", "--circuits-shard"),
                 ("circuits_device_map", "--circuits-device-map"), ("circuits_device", "--circuits-device"),
                 ("circuits_dtype", "--circuits-dtype"), ("circuits_seed", "--circuits-seed"),
                 ("circuits_batch_size", "--circuits-batch-size"), ("circuits_familywise", "--circuits-familywise"),
                 ("circuits_token_budget", "--circuits-token-budget"),
                 ("circuits_baseline_tolerance", "--circuits-baseline-tolerance"),
                 ("circuits_checks", "--circuits-checks"))
_OUTPUTS = (("circuits_report", "--circuits-report"), ("circuits_markdown", "--circuits-markdown"),
            ("circuits_html", "--circuits-html"))


def _check_outputs(c: pytest.Config, usage: Any) -> None:
    """Every file the run writes at its end (--circuits-report/-markdown/-html, --junitxml) can
    be written there: a usage error now, not a crash after every claim has run. Two outputs
    at one path are refused too (one would overwrite the other). xdist workers write none."""
    if hasattr(c, "workerinput"):
        return
    from .config import output_problem

    wanted = [(flag, str(_opt(c, name)).strip()) for name, flag in _OUTPUTS if _opt(c, name)]
    junit = getattr(c.option, "xmlpath", None)
    if junit:
        wanted.append(("--junitxml", str(junit)))
    seen: dict[Path, str] = {}
    for flag, raw in wanted:
        where = Path(raw).expanduser().resolve()
        if where in seen:
            raise usage(f"{flag}={raw!r} and {seen[where]} name the same file: one would overwrite the other")
        seen[where] = f"{flag}={raw!r}"
        problem = output_problem(where)
        if problem:
            raise usage(f"{flag}={raw!r} cannot be written at the end of the run: {problem}")


_PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")


def _pickled_checkpoint(name: str) -> str | None:
    """Why a checkpoint folder cannot be used because its weights are pickled (and there are
    no safetensors), or None: a clear refusal with the way out, never "model unavailable"."""
    path = Path(str(name)).expanduser()
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return None
    pickled = sorted(p.name for pattern in _PICKLED for p in path.glob(pattern))
    if not pickled:
        return None
    return (f"model {name!r}: {path} holds pickled weights ({', '.join(pickled[:3])}) and no *.safetensors; "
            "pickled checkpoints are never loaded (unpickling can run code). If you trust the file, convert it "
            "once, e.g. python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{path}').save_pretrained('{path}-safetensors')\", copy the tokenizer files "
            "next to it, and pass the new folder")


def _device_map(c: pytest.Config, device: str, models: list[str], usage: Any) -> Any:
    """``--circuits-device-map`` parsed and checked against ``--circuits-device``, this
    machine's devices and (a dict) the modules of every model named with --circuits-model,
    so a bad map is a usage error before any claim runs. With no model named, the claims'
    markers choose (not known yet): each model's load checks the map against it (a misfit
    fails its claims), and the embedded model is not converted for a check no claim may
    need. An ``@file`` given on the command line is read relative to where pytest was
    started, one in the ini file to the rootdir."""
    from_cli = c.getoption("circuits_device_map") is not None
    raw = _opt(c, "circuits_device_map")
    if not str(raw or "").strip():
        return None
    from .devices import DeviceMapError, device_conflict, missing_devices, parse_device_map
    from .errors import ModelUnavailable
    from .models import device_map_problem

    try:
        device_map = parse_device_map(raw, base=c.invocation_params.dir if from_cli else c.rootpath)
    except DeviceMapError as e:
        raise usage(str(e)) from None
    problem = device_conflict(device, device_map) or missing_devices(device_map)
    cache = _opt(c, "circuits_cache_dir")
    for name in ([] if problem else models):
        try:
            where = (cache if "://" in str(cache) else str(_path_option(c, "circuits_cache_dir"))) if cache else None
            problem = device_map_problem(name, device_map, where)
        except ModelUnavailable:   # e.g. the embedded model is not installed: its claims say so
            continue
        if problem:
            problem = f"model {name!r}: {problem}"
            break
    if problem:
        raise usage(problem)
    return device_map


class _LazySession:
    """The run's session, registered as a plugin object (``circuits-session``): it builds
    the Session (and imports torch) only when a claim first needs it, makes its store the
    current one (:func:`pytest_circuits.store.current`) until the run ends, and collects
    the run's reports. One per config: pytester's in-process runs nest cleanly."""

    def __init__(self, config: pytest.Config, settings: Any) -> None:
        self.config = config
        self.settings = settings
        self._session: Any = None
        self._store_token: Any = None

    def get(self) -> Any:
        if self._session is None:
            from . import store as S
            from ._session import Session

            self._session = Session(self.settings)
            if self.settings.clear_cache:
                self._session.clear_disk_cache()
            self._store_token = S.set_current(self._session.store)
        return self._session

    def close(self) -> None:
        """Give the process back the store that was current before this run."""
        if self._store_token is not None:
            from . import store as S

            S.reset(self._store_token)
            self._store_token = None

    @property
    def started(self) -> bool:
        return self._session is not None

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        beat = self.config.stash.get(HEARTBEAT_KEY, None)
        if beat is not None:
            beat.started(nodeid)

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        beat = self.config.stash.get(HEARTBEAT_KEY, None)
        if beat is not None:
            beat.finished(nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if "circuits-claim" in props:
            beat = self.config.stash.get(HEARTBEAT_KEY, None)
            if beat is not None and report.when == "setup":   # xdist's controller: claims run
                beat.start()
            _count_claim(self.config, report, props["circuits-claim"])
            if "circuits-claim-info" in props:
                self.config.stash.setdefault(CLAIM_INFO_KEY, {})[report.nodeid] = json.loads(
                    props["circuits-claim-info"])
        if report.when != "call":
            return
        if "circuits-checkup-item" in props:
            card = next((json.loads(v) for k, v in report.user_properties if k == "circuits-checkup"), None)
            crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", None)
            self.config.stash.setdefault(CARDS_KEY, []).append((report.nodeid, report.outcome, card,
                                                                crash or _reason(report)))
        for key, value in report.user_properties:
            if key == "circuits":
                record = json.loads(value)
                record["outcome"] = report.outcome
                if hasattr(report, "wasxfail"):
                    record["outcome"] = "xfailed" if report.skipped else "xpassed"
                self.config.stash.setdefault(RESULTS_KEY, []).append(record)


def _worker_device(device: str) -> str:
    """Under xdist with several GPUs, each worker takes its own (``gw0`` -> cuda:0, ...)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if device != "auto" or not worker.startswith("gw"):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{int(worker[2:]) % count}" if count > 1 else device


def _session(config: pytest.Config) -> Any:
    return config.stash[SESSION_KEY].get()


_INI_DEFAULTS: dict[str, Any] = {}


def _asked_for(config: pytest.Config) -> bool:
    """Whether the run names this plugin: a ``--circuits-*`` option on the command line, or a
    ``circuits_*`` setting in the ini file other than its default."""
    return any(config.getoption(name) is not None or config.getini(name) != default
               for name, default in _INI_DEFAULTS.items())


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The run's settings, when the run names the plugin (else they are shown after collection,
    and only when a claim was collected: :func:`pytest_report_collectionfinish`)."""
    return _header(config) if _asked_for(config) else []


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    if _asked_for(config) or not any(_is_claim(i) for i in items):
        return []
    return _header(config)


def _header(config: pytest.Config) -> list[str]:
    from .config import DEFAULT_MODEL

    st = config.stash[SESSION_KEY].settings
    models = (st.models if st.models_named
              else [f"{DEFAULT_MODEL} (default; @pytest.mark.model may choose)"])
    line = (f"circuits: models={', '.join(models)} device={st.device} dtype={st.dtype} seed={st.seed}"
            + (" require-models" if st.require_models else ""))
    if st.familywise != "none":
        line += f" familywise={st.familywise}"
    return [line]


# ----------------------------------------------------------------------------- collection
def _is_ours(metafunc: pytest.Metafunc) -> bool:
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get("model")
    return bool(defs) and defs[-1].func.__module__ == __name__


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    ours = "model" in metafunc.fixturenames and _is_ours(metafunc)
    if ours or metafunc.definition.get_closest_marker("claim") is not None:
        _check_marker_names(metafunc)
    if not ours:
        return
    c = metafunc.config
    st = c.stash[SESSION_KEY].settings
    marker = metafunc.definition.get_closest_marker("model")
    if marker is not None:
        unknown = set(marker.kwargs) - {"optional"}
        if unknown:
            raise pytest.UsageError(f"@pytest.mark.model in {metafunc.definition.nodeid} got unknown "
                                    f"keyword(s) {sorted(unknown)}; valid: optional=\"why it may be missing\"")
    if st.models_from_cli:
        names = list(st.models)
    elif marker is not None and marker.args:
        names = list(marker.args)
    else:
        names = list(st.models)
    for n in names:
        if not isinstance(n, str) or not n:
            raise pytest.UsageError(f"@pytest.mark.model({n!r}) in {metafunc.definition.nodeid}: "
                                    "model names are non-empty strings")
    if not st.models_from_cli and marker is not None and marker.args:
        for n in names:
            problem = _marker_model_problem(c, n, optional=bool(marker.kwargs.get("optional")))
            if problem:
                raise pytest.UsageError(f"@pytest.mark.model({n!r}) in {metafunc.definition.nodeid}: {problem}")
    metafunc.parametrize("model", names, indirect=True, scope="session",
                         ids=[_model_id(n) for n in names])


_OUR_MARKERS = ("claim", "model", "baseline", "expect_change")
MODEL_PROBLEMS_KEY = pytest.StashKey[dict]()


def _check_marker_names(metafunc: pytest.Metafunc) -> None:
    """A misspelt marker of this plugin on a claim (``@pytest.mark.modle("gpt2")``) is a usage
    error: pytest would only warn, and the claim would run on another model, unmarked."""
    import difflib

    registered = {line.split("(")[0].split(":")[0].strip() for line in metafunc.config.getini("markers")}
    for m in metafunc.definition.iter_markers():
        if m.name in registered or m.name in _OUR_MARKERS:
            continue
        close = difflib.get_close_matches(m.name, _OUR_MARKERS, n=1, cutoff=0.75)
        if close:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown marker @pytest.mark.{m.name}; "
                                    f"did you mean @pytest.mark.{close[0]}?")


def _marker_model_problem(c: pytest.Config, name: str, *, optional: bool) -> str | None:
    """What is wrong with a model a claim's marker names (once per name and run): a pickled
    checkpoint always; a name that is not registered, not a checkpoint folder and not in the
    local Hugging Face cache (a typo, most likely) unless the marker declares the model
    optional (``optional="why it may be missing here"``)."""
    from ._session import check_model_name

    table = c.stash.setdefault(MODEL_PROBLEMS_KEY, {})
    if name not in table:
        missing = check_model_name(name)
        prefix = f"--circuits-model={name!r} is not valid: "
        table[name] = (_pickled_checkpoint(name), missing.removeprefix(prefix) if missing else None)
    pickled, missing = table[name]
    if pickled:
        return pickled
    if missing and not optional:
        return (f"{missing}. A claim whose model may be absent on some machines declares it: "
                "@pytest.mark.model(..., optional=\"why it may be missing\")")
    return None


def _is_ours_item(item: pytest.Item) -> bool:
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).get("model")
    return bool(defs) and defs[-1].func.__module__ == __name__


def _model_id(name: str) -> str:
    """A model's id in node ids and xdist groups: its label (:func:`pytest_circuits.models.run_label`:
    a checkpoint folder's base name, or a distinguishing path suffix when two folders of the run
    share it), or the base name of a path that is not a folder."""
    from .models import run_label

    if Path(name).expanduser().is_dir():
        return run_label(name)
    p = Path(name)
    return p.name if (os.sep in name or name.startswith(".")) and p.name else name


def _register_labels(config: pytest.Config) -> None:
    """Enter the labels of the run's checkpoint folders (distinct when base names collide) for
    the run, and restore the previous ones when it ends (pytester runs nest in one process)."""
    from .models import pop_run_labels, push_run_labels

    previous = push_run_labels(config.stash[SESSION_KEY].settings.models)
    config.add_cleanup(lambda: pop_run_labels(previous))


def _is_claim(item: pytest.Item) -> bool:
    """A claim: an item marked ``@pytest.mark.claim`` or using the plugin's ``model`` fixture."""
    return item.get_closest_marker("claim") is not None or _is_ours_item(item)


def is_checkup(item: Any) -> bool:
    return Path(str(getattr(item, "path", ""))) == CHECKUP_PATH


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    checks = config.stash.get(CHECKS_KEY, None)
    if checks is not None and any(is_checkup(i) for i in items):
        keep = {f"test_{c}" for c in checks}
        dropped = [i for i in items if is_checkup(i) and i.originalname not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [i for i in items if i not in set(dropped)]
    config.stash[CLAIM_COUNT_KEY] = sum(1 for item in items if _is_claim(item))
    for item in items:
        if is_checkup(item):
            item.user_properties.append(("circuits-checkup-item", "1"))   # its reports carry the card
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "model" in params and _is_ours_item(item):
            model_id = _model_id(str(params["model"]))
            # xdist --dist loadgroup: all claims on one model go to one worker (one load).
            item.add_marker(pytest.mark.xdist_group(name=f"circuits-{model_id}"))
            for m in item.iter_markers("expect_change"):
                if not m.args or not isinstance(m.args[0], str) or "reason" not in m.kwargs:
                    raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.expect_change(\"model\", "
                                            "reason=\"...\")")
                if m.args[0] in (model_id, str(params["model"])):
                    # Only the claim's own assertion failing is the expected change: any other
                    # exception (a crash, a MeasurementError, an unavailable model) fails the item.
                    reason = f"expected change on {m.args[0]}: {m.kwargs['reason']}"
                    item.add_marker(pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason))
                    item.stash[EXPECTED_CHANGE_KEY] = reason
        for m in item.iter_markers("claim"):
            if m.args:
                raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.claim(finding=..., source=...) "
                                        "with keywords")
            unknown = set(m.kwargs) - {"finding", "source"}
            if unknown:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.claim got unknown keyword(s) "
                                        f"{sorted(unknown)}; valid: finding, source")


SHARD_KEY = pytest.StashKey["tuple[int, int]"]()
COLLECTED_KEY = pytest.StashKey[list]()
CLAIM_INFO_KEY = pytest.StashKey[dict]()


def _item_model(item: pytest.Item) -> str:
    """The id of the model a claim item runs on ("" for an item without the model parameter)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return _model_id(str(params["model"])) if "model" in params and _is_ours_item(item) else ""


def _item_label(item: pytest.Item) -> str:
    """The model's name as the ledger's records give it (ModelInfo.label): a checkpoint folder's
    label (its base name, or a distinguishing path suffix: :func:`pytest_circuits.models.run_label`),
    else the name ("org/name" stays whole); "" for an item without a model."""
    from .models import run_label

    params = getattr(getattr(item, "callspec", None), "params", {})
    if "model" not in params or not _is_ours_item(item):
        return ""
    return run_label(str(params["model"]))


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_shard(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Last, after -k/-m and --circuits-checks: note the suite's claims (the ledger's
    "collected", which the merge checks for completeness), then keep only this shard's items
    (``--circuits-shard K/N``, rule in :mod:`pytest_circuits.shards`); the others are deselected."""
    config.stash[COLLECTED_KEY] = sorted(i.nodeid for i in items if _is_claim(i))
    shard = config.stash.get(SHARD_KEY, None)
    if shard is None:
        return
    from .shards import assign

    where = assign([(_item_model(i), i.nodeid) for i in items], shard[1])
    dropped = [i for i, k in zip(items, where) if k != shard[0]]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i, k in zip(items, where) if k == shard[0]]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist: the controller collects nothing itself; a worker sends the suite's claims."""
    raw = getattr(node, "workeroutput", {}).get("circuits_collected")
    if raw is not None:
        node.config.stash[COLLECTED_KEY] = json.loads(raw)
    # each worker's store counters and model loads, summed into the controller's summary
    summary = getattr(node, "workeroutput", {}).get("circuits_summary")
    if summary is not None:
        worker = str(getattr(node, "workerinput", {}).get("workerid", len(node.config.stash.get(WORKERS_KEY, {}))))
        node.config.stash.setdefault(WORKERS_KEY, {})[worker] = json.loads(summary)


WORKERS_KEY = pytest.StashKey[dict]()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def circuits_session(request: pytest.FixtureRequest) -> Any:
    """The run's Session: settings, model pool, activation store, ledger."""
    return _session(request.config)


@pytest.fixture(scope="session")
def model(request: pytest.FixtureRequest, circuits_session: Any) -> Any:
    """The model a claim runs against, loaded once per process (TransformerBridge, compatibility mode)."""
    from .errors import ModelUnavailable

    name = getattr(request, "param", None) or circuits_session.settings.models[0]
    # Loaded (or found unavailable, with the claim's own verdict) in pytest_runtest_setup.
    return circuits_session.model(name)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Load the item's model before its fixtures, deciding per claim what a missing model means.

    A model that cannot be loaded fails the claim under ``--circuits-require-models`` (the
    README's claims command), unless the claim declares it optional with
    ``@pytest.mark.model("gpt2", optional="why it may be missing")``; otherwise the claim is
    skipped. Either way the summary counts it as not checked. Any other error of the
    hierarchy while the model loads (a :class:`~pytest_circuits.errors.DeviceMapError`) fails
    the claim."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "model" not in params or not _is_ours_item(item):
        return
    from .errors import CircuitsError, ModelUnavailable

    session = _session(item.config)
    name = params["model"]
    try:
        session.model(name)
        return
    except ModelUnavailable as exc:
        e = exc
    except CircuitsError as exc:
        # Not a missing model but the user's own input (a --circuits-device-map that does not
        # fit this model): a usage mistake, which fails the claim with or without
        # --circuits-require-models.
        pytest.fail(f"model {name!r}: {exc}", pytrace=False)
    if True:  # outside the except block, so the failure is not shown as a chained traceback
        pickled = _pickled_checkpoint(name)
        if pickled:     # there, but refused: never "unavailable"
            pytest.fail(pickled, pytrace=False)
        marker = item.get_closest_marker("model")
        optional = marker.kwargs.get("optional") if marker is not None else None
        if optional and name in marker.args and not session.settings.models_from_cli:
            pytest.skip(f"not checked: model {name!r} is optional here ({optional}): {e}")
        if session.settings.require_models:
            pytest.fail(f"model {name!r} unavailable (--circuits-require-models): {e}", pytrace=False)
        pytest.skip(f"not checked: model {name!r} unavailable: {e}")


@pytest.fixture(scope="session")
def activations(circuits_session: Any) -> Any:
    """The activation store: ``activations(model, prompts, hooks, intervention=None)``."""
    return circuits_session.store


# ----------------------------------------------------------------------------- running
FIXTURE_MEASUREMENTS_KEY = pytest.StashKey[dict]()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    """Measurements made while a fixture is set up belong to every claim that uses it."""
    from .measurement import _RECORDERS

    made: list[Any] = []
    _RECORDERS.append(made)
    try:
        return (yield)
    finally:
        _drop(_RECORDERS, made)
        if made:
            table = request.config.stash.setdefault(FIXTURE_MEASUREMENTS_KEY, {})
            table[id(fixturedef)] = (fixturedef, made)


def _drop(stack: list[list[Any]], mine: list[Any]) -> None:
    """Remove ``mine`` from the recorder stack by identity (lists compare by value: two empty
    recorders are equal, and ``list.remove`` would take the wrong one)."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is mine:
            del stack[i]
            return


def _fixture_measurements(item: pytest.Item) -> list[Any]:
    """Measurements recorded by the fixtures (of any scope) that ``item`` uses, in setup order."""
    table = item.config.stash.get(FIXTURE_MEASUREMENTS_KEY, {})
    if not table:
        return []
    out: list[Any] = []
    infos = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    for name in getattr(item, "fixturenames", ()):
        for fd in infos.get(name, ())[-1:]:
            entry = table.get(id(fd))
            if entry is not None and entry[0] is fd and getattr(fd, "cached_result", None) is not None:
                out += entry[1]
    return out


def _distinct(recorded: list[Any]) -> tuple[list[Any], list[str]]:
    """Drop repeated measurements (the same object, or the same name and numbers) and list
    the names that two *different* measurements of one claim share."""
    seen: dict[str, Any] = {}
    out: list[Any] = []
    clashes: list[str] = []
    for m in recorded:
        first = seen.get(m.name)
        if first is None:
            seen[m.name] = m
            out.append(m)
        elif first is not m and (first.values, first.lower, first.upper) != (m.values, m.lower, m.upper):
            if m.name not in clashes:
                clashes.append(m.name)
    return out, clashes


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    lazy = item.config.stash[SESSION_KEY]
    uses_model = "model" in getattr(item, "fixturenames", ()) and lazy.started
    if not uses_model and item.get_closest_marker("claim") is None:
        return (yield)
    from .measurement import _ASSERTIONS, _RECORDERS

    recorded: list[Any] = list(_fixture_measurements(item))
    asserted: list[Any] = []
    item.stash[MEASUREMENTS_KEY] = recorded
    item.stash[ASSERTIONS_KEY] = asserted
    state = _seed(lazy.get().settings.seed)
    _RECORDERS.append(recorded)
    _ASSERTIONS.append(asserted)
    try:
        result = yield
    except BaseException:
        recorded[:] = _distinct(recorded)[0]
        if recorded:   # the claim failed by itself: still report its drift, write nothing
            lazy.get().check_baseline(item, recorded, enforce=False)
        raise
    finally:
        _drop(_RECORDERS, recorded)
        _drop(_ASSERTIONS, asserted)
        _restore(state)
    recorded[:], clashes = _distinct(recorded)
    if clashes:
        pytest.fail(f"{item.nodeid} made different measurements with the same name: "
                    f"{', '.join(repr(c) for c in clashes)}. Names identify measurements in baselines "
                    "and reports; give each its own (most functions take name=...)", pytrace=False)
    if recorded:
        lazy.get().check_baseline(item, recorded)     # fails the claim on drift or a new baseline
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Any:
    """Family-wise control: with ``--circuits-familywise bonferroni`` every measurement of the
    run is made at level ``1 - (1 - 0.95) / m`` for the ``m`` claims collected, so that all of
    the run's verdicts hold together at 95% (each claim's assertions on its own measurements
    form one intersection test, so the family is the claims). A run that collected claims
    beats its progress line (``_progress.Heartbeat``) while it runs."""
    from . import measurement as M

    st = session.config.stash[SESSION_KEY].settings
    m = session.config.stash.get(CLAIM_COUNT_KEY, 0)
    if m and not hasattr(session.config, "workerinput"):
        _heartbeat(session.config, len(session.items)).start()
    try:
        if st.familywise == "none" or m <= 1:
            return (yield)
        with M.default_level(1.0 - (1.0 - st.level) / m):
            return (yield)
    finally:
        beat = session.config.stash.get(HEARTBEAT_KEY, None)
        if beat is not None:
            beat.stop()


HEARTBEAT_KEY = pytest.StashKey[Any]()


def _heartbeat(config: pytest.Config, total: int) -> Any:
    """The run's heartbeat (made once; its thread starts with ``.start()``)."""
    beat = config.stash.get(HEARTBEAT_KEY, None)
    if beat is None:
        from ._progress import Heartbeat

        beat = config.stash[HEARTBEAT_KEY] = Heartbeat(total, write=_beat_writer(config))
    return beat


def _beat_writer(config: pytest.Config) -> Any:
    """Write a heartbeat line to the terminal from the heartbeat's thread, past pytest's output
    capture (as pytest's live logging does), so a claim that runs for minutes is not silent."""
    import contextlib

    def write(text: str) -> None:
        capman = config.pluginmanager.getplugin("capturemanager")
        tr = config.pluginmanager.getplugin("terminalreporter")
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            if tr is not None:
                if getattr(getattr(tr, "_tw", None), "width_of_current_line", 0):
                    tr.write("\n")        # after -q's dots: a line of its own
                tr.write_line(text)
            else:
                print(text, file=sys.stderr, flush=True)

    return write


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """xdist's controller: the heartbeat counts the tests every worker collected (the same
    list); it starts beating with the first claim's report."""
    beat = _heartbeat(node.config, len(ids))
    beat.total = max(beat.total, len(ids))



def _seed(seed: int) -> Any:
    import numpy as np
    import torch

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return state


def _restore(state: Any) -> None:
    import numpy as np
    import torch

    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


def _stand_in_reason(item: pytest.Item, call: pytest.CallInfo) -> str | None:
    """Why a claim that ran on a random-weights stand-in (a checkpoint folder marked by
    :func:`pytest_circuits.architectures.build_full_size`) is not checked, whether it passed or
    failed its own assertion, or None. A crash (any other exception) is still a failure, so the
    claim is proven to run end to end, all but its numbers, which mean nothing on random weights."""
    if call.when != "call" or not _is_claim(item):
        return None
    if call.excinfo is not None and not call.excinfo.errisinstance(AssertionError):
        return None
    model = getattr(item, "funcargs", {}).get("model")
    if model is None:
        return None
    from .architectures import stand_in
    from .models import info

    try:
        mi = info(model)
    except Exception:  # noqa: BLE001 - not a model of ours: nothing to say
        return None
    marked = stand_in(mi.name) if mi.source == "local" else None
    if marked is None:
        return None
    outcome = "failed its threshold" if call.excinfo is not None else "met its threshold"
    return (f"not checked: random weights ({mi.label} is a stand-in with the dimensions of "
            f"{marked.get('shape_of', 'a published model')}; the claim ran end to end and {outcome}, which "
            "says nothing about trained weights)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    stand_in = _stand_in_reason(item, call) if report.failed or (report.passed and call.when == "call") else None
    if stand_in is not None:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), (item.location[1] or 0) + 1, stand_in)
    if _is_claim(item):
        # Marks the report as a claim's (for the "checked / not checked" count, from xdist
        # workers too) and says whether an xfail is this project's expected change.
        report.user_properties.append(("circuits-claim", item.stash.get(EXPECTED_CHANGE_KEY, "")))
        if not any(k == "circuits-claim-info" for k, _ in report.user_properties):
            # The claim's id, model and finding for the ledger's "claims" (xdist's controller has no items).
            from ._session import claim_id

            marker = item.get_closest_marker("claim")
            report.user_properties.append(("circuits-claim-info", json.dumps(
                {"claim": claim_id(item), "model": _item_label(item),
                 "finding": str((marker.kwargs.get("finding") if marker else None) or "")})))
    recorded = item.stash.get(MEASUREMENTS_KEY, None)
    assertions = _assertion_entries(item, recorded) if call.when == "call" else []
    failed = [a["message"] for a in assertions if not a["passed"]]
    if failed and (report.passed or report.skipped) and not hasattr(report, "wasxfail") and stand_in is None:
        # The claim caught the AssertionError of its own interval assertion and went on (to pass,
        # or to skip): a bound that failed is a failed claim, never a pass or a "not checked"
        # (the merge re-derives verdicts from these records). A claim on a random-weights stand-in
        # whose own assertion failed is "not checked" by the rule above, not a caught failure.
        report.outcome = "failed"
        report.longrepr = (f"{len(failed)} interval assertion{'s' if len(failed) != 1 else ''} of this claim "
                           "failed although the claim caught the AssertionError and went on; a failed bound "
                           "fails the claim:\n" + "\n".join(failed))
    if failed and _is_claim(item):
        # The reason the ledger gives: what was measured against which bound (not a file:line).
        report.user_properties.append((f"circuits-reason-{call.when}", "; ".join(failed)))
    if call.when == "call" and recorded:
        record = item.config.stash[SESSION_KEY].get().record(item, recorded)
        record["expected_change"] = item.stash.get(EXPECTED_CHANGE_KEY, "") or None
        # Bounds asserted through assert_above / assert_below / assert_within: what was compared
        # with what, at which level, and the message; the merge recomputes every verdict from them.
        record["assertions"] = assertions
        # user_properties travel with the reports (also from xdist workers); JUnit XML
        # takes them from the teardown report, which copies the item's.
        props = [("circuits", json.dumps(record))] + [
            (f"circuits:{m['key']}", f"{m['mean']:.6g} [{m['lower']:.6g}, {m['upper']:.6g}] n={m['n']}")
            for m in record["measurements"]]
        item.user_properties.extend(props)
        if report.user_properties is not item.user_properties:
            report.user_properties.extend(props)
        report.sections.append(("circuits measurements", "\n".join(repr(m) for m in recorded)))
    return report


def _assertion_entries(item: pytest.Item, recorded: Any) -> list[dict[str, Any]]:
    """The claim's interval assertions, JSON-ready: measurement, kind, threshold, the bound
    compared, level, whether it held, and the message (measured, interval, n, bound)."""
    from .measurement import _pct

    by_name = {getattr(m, "name", None): m for m in recorded or ()}
    out = []
    for a in item.stash.get(ASSERTIONS_KEY, None) or ():
        m = by_name.get(a.name)
        want = {"above": f"lower bound > {a.threshold}", "below": f"upper bound < {a.threshold}"}.get(
            a.kind, f"interval inside {tuple(a.threshold) if isinstance(a.threshold, (list, tuple)) else a.threshold}")
        what = repr(m) if m is not None else f"{a.name}{f'[{a.model}]' if a.model else ''}: bound {a.bound}"
        out.append({"name": str(a.name), "model": str(a.model or ""), "kind": str(a.kind),
                    "threshold": _jsonable(a.threshold), "bound": _jsonable(a.bound), "level": float(a.level),
                    "passed": bool(a.passed), "message": f"{what} ({_pct(a.level)} interval) -- expected {want}"})
    return out


def _jsonable(x: Any) -> Any:
    """A threshold or bound as JSON: a number, a list of numbers, else its text."""
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool) or x is None:
        return str(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


RESULTS_KEY = pytest.StashKey[list]()
CARDS_KEY = pytest.StashKey[list]()
CLAIMS_KEY = pytest.StashKey[dict]()


def _count_claim(config: pytest.Config, report: pytest.TestReport, expected_change: str) -> None:
    """Each claim's verdict: checked (passed, failed, expected change...) or not checked, and why."""
    verdicts = config.stash.setdefault(CLAIMS_KEY, {})
    measured = dict(report.user_properties).get(f"circuits-reason-{report.when}", "")
    if report.when == "teardown":
        # pytest counts a teardown failure as an error, also after a call that passed
        if report.failed and verdicts.get(report.nodeid, ("passed",))[0] == "passed":
            verdicts[report.nodeid] = ("error", _reason(report))
        return
    if report.when == "setup" and report.passed:
        return
    if hasattr(report, "wasxfail"):
        verdict = ("expected change" if expected_change else "xfailed") if report.skipped else "xpassed"
        verdicts[report.nodeid] = (verdict, report.wasxfail + (f" (measured: {measured})" if measured else ""))
    elif report.skipped:
        verdicts[report.nodeid] = ("not checked", _reason(report))
    elif report.failed:
        verdicts[report.nodeid] = ("failed" if report.when == "call" else "error", measured or _reason(report))
    else:
        verdicts[report.nodeid] = ("passed", "")


#: how many characters of a failure's message the ledger keeps as its reason
REASON_CHARS = 2000


def _reason(report: pytest.TestReport) -> str:
    """Why a claim failed, errored or was skipped, as a reviewer needs it: the exception's own
    message (e.g. a drift's summary line, a MeasurementError), never the file:line of the raise."""
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        text = str(lr[2])
    else:
        crash = getattr(lr, "reprcrash", None)
        text = str(getattr(crash, "message", "") or "") or str(getattr(report, "longreprtext", "") or lr or "")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0].removeprefix("Skipped: ").removeprefix("AssertionError: ").removeprefix("Failed: ")
    if len(lines) > 1 and (first.isidentifier() or first.startswith("assert ") or first.endswith(":")):
        first += " " + lines[1]     # a bare exception name or `assert x` gains the line that says what
    return first[:REASON_CHARS]


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """The working tree the run starts from (dirty or not, and a hash of the difference), for
    the report's identity: read before any claim writes a baseline. Only when a report is asked."""
    from ._session import _update_failing

    config = session.config
    if _update_failing(config) and not config.stash[SESSION_KEY].settings.update_baselines:
        raise pytest.UsageError("pytest-circuits: --circuits-update-failing records the baselines of failing "
                                "claims in an update run: add --circuits-update-baselines")
    if hasattr(config, "workerinput"):
        return
    targets = [_opt(config, k) for k in ("circuits_report", "circuits_markdown", "circuits_html")]
    if not any(targets):
        return
    from ._report import worktree

    config.stash[WORKTREE_KEY] = worktree(str(config.rootpath), exclude=[str(t) for t in targets if t])


WORKTREE_KEY = pytest.StashKey[Any]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        config.workeroutput["circuits_collected"] = json.dumps(config.stash.get(COLLECTED_KEY, None))
        if config.stash[SESSION_KEY].started:
            config.workeroutput["circuits_summary"] = json.dumps(config.stash[SESSION_KEY].get().worker_summary())
        return
    from . import _report as R

    targets = {k: _opt(config, k) for k in ("circuits_report", "circuits_markdown", "circuits_html")}
    if not any(targets.values()):
        return
    data = R.ledger(config.stash.get(RESULTS_KEY, []), root=str(config.rootpath), exit_status=int(exitstatus),
                    worktree=config.stash.get(WORKTREE_KEY, None))
    cards = _cards(config)
    if cards:
        data["checkup"] = cards
    data.update(_claims_ledger(config))
    R.sign(data)      # a keyed signature when $PYTEST_CIRCUITS_REPORT_KEY is set (docs/trust.md)
    if targets["circuits_report"]:
        R.write_json(Path(targets["circuits_report"]), data)
    if targets["circuits_markdown"]:
        R.write_markdown(Path(targets["circuits_markdown"]), data)
    if targets["circuits_html"]:
        R.write_html(Path(targets["circuits_html"]), data)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    lazy = config.stash.get(SESSION_KEY, None)
    if lazy is not None:
        lazy.close()
        if config.pluginmanager.is_registered(lazy):
            config.pluginmanager.unregister(lazy)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    tr = terminalreporter
    results = config.stash.get(RESULTS_KEY, [])
    verdicts = config.stash.get(CLAIMS_KEY, {})
    if not results and not verdicts and not config.stash[SESSION_KEY].started:
        return
    tr.section("circuits")
    for r in results:
        tr.write_line(f"{r['outcome'].upper():7} {r['nodeid']}"
                      + (f"\n        finding: {r['finding']}" if r["finding"] else ""))
        for m in r["measurements"]:
            tr.write_line(f"        {_one_line(m)}")
        if r.get("version_changes"):
            tr.write_line(f"        baseline recorded with other versions: {'; '.join(r['version_changes'])}")
    cards = _cards(config)
    if cards:
        from .checkup import card_lines

        for line in card_lines(cards):
            tr.write_line(line)
    for line in _claims_summary(config, verdicts, results):
        tr.write_line(line)
    if config.stash[SESSION_KEY].started:
        for line in config.stash[SESSION_KEY].get().summary_lines():
            tr.write_line(line)
    elif config.stash.get(WORKERS_KEY, None):
        # xdist: the controller ran nothing; its workers' counters, summed
        from ._session import cache_line, counter_lines, summed_workers

        workers = config.stash[WORKERS_KEY]
        counters, loads = summed_workers(workers)
        lines = counter_lines(counters, loads, cache_line(config.stash[SESSION_KEY].settings))
        lines[0] += f" (summed over {len(workers)} xdist workers)"
        for line in lines:
            tr.write_line(line)


def _claims_ledger(config: pytest.Config) -> dict[str, Any]:
    """The ledger's "claims" (every claim item this process ran or skipped, with its verdict),
    "collected" (the whole suite's claims before sharding; left out when collection did not
    finish, so that a merge cannot take an unknown suite for a complete one) with its digest,
    "shard", "mode" (the options that decide what a verdict means) and "suite" (what was run:
    the paths, any selection, and the sha256 of every claims file, so that the merge can read the
    same source)."""
    import hashlib

    info = config.stash.get(CLAIM_INFO_KEY, {})
    recorded = {r["nodeid"]: r["model"] for r in config.stash.get(RESULTS_KEY, [])}
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
    from ._session import _update_failing

    st = config.stash[SESSION_KEY].settings
    from ._session import baseline_folder

    bdir = baseline_folder(config, st)
    return {"baseline": bool(st.baseline), "update_baselines": bool(st.update_baselines),
            "update_failing": _update_failing(config), "baseline_of": st.baseline_of or None,
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
    if _opt(config, "circuits_checkup") and str(checks or "all") != "all":
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


def _cards(config: pytest.Config) -> list[dict[str, Any]]:
    """The checkup's detections, one per (check, model), with the baseline comparisons of their
    measurements (from the claim's ledger record) and the claim's outcome. A check whose
    detector raised is carried as status "error" with the message."""
    results = {r["nodeid"]: r for r in config.stash.get(RESULTS_KEY, [])}
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
            by_key = {(m["name"]): m for m in rec["measurements"]}
            card["measurements"] = [by_key.get(m["name"], m) for m in card["measurements"]]
        card["outcome"] = outcome
        out.append(card)
    return out


def _claims_summary(config: pytest.Config, verdicts: dict[str, tuple[str, str]],
                    results: list[dict[str, Any]]) -> list[str]:
    """How many claims were checked (and how they came out), how many were not and why, and at
    which confidence level their measurements were asserted."""
    from collections import Counter

    if not verdicts:
        return []
    counts = Counter(v for v, _ in verdicts.values())
    checked = sum(n for v, n in counts.items() if v != "not checked")
    order = ("passed", "failed", "error", "expected change", "xfailed", "xpassed")
    parts = [f"{counts[v]} {v}" for v in order if counts[v]]
    lines = [f"claims: {checked} checked ({', '.join(parts) or 'none'}), "
             f"{counts['not checked']} not checked"]
    reasons = Counter(r.removeprefix("not checked: ") for v, r in verdicts.values() if v == "not checked")
    for reason, n in reasons.most_common():
        lines.append(f"  not checked x{n}: {reason}")
    levels = Counter(f"{m['level']:.4g}" for r in results for m in r["measurements"])
    if levels:
        st = config.stash[SESSION_KEY].settings
        how = ", ".join(f"{n} at level {lv}" for lv, n in sorted(levels.items()))
        asserted = Counter(f"{a['level']:.4g}" for r in results for a in r.get("assertions") or ())
        how += "; bounds asserted with assert_above/below/within: " + (
            ", ".join(f"{n} at level {lv}" for lv, n in sorted(asserted.items())) or "none")
        family = (f"; family-wise ({st.familywise}) over {config.stash.get(CLAIM_COUNT_KEY, 0)} claims "
                  f"collected: the run's verdicts hold together at {st.level:.0%}"
                  if st.familywise != "none" else "; each claim on its own (no family-wise control: "
                  "--circuits-familywise bonferroni)")
        lines.append(f"measurements: {how}{family}")
    return lines


def _one_line(m: dict[str, Any]) -> str:
    from .measurement import _fmt

    where = f"[{m['model']}]" if m.get("model") else ""
    line = (f"{m['name']}{where} = {_fmt(m['mean'])} [{_fmt(m['lower'])}, {_fmt(m['upper'])}] "
            f"n={m['n']} ({m['level'] * 100:.4g}%)" + "".join(f" [{f}]" for f in m.get("flags") or ()))
    b = m.get("baseline")
    if b and b.get("tolerance") == "updated":
        line += "  (baseline updated)"
    elif b and b.get("mean") is None:
        line += "  (new: no baseline)"
    elif b and b.get("mean") is not None:
        line += (f"  baseline {_fmt(b['mean'])}, drift {b['difference']:+.3g} "
                 f"({'within' if b['within'] else 'OUTSIDE'} {b['tolerance']})")
        if b.get("flag"):
            line += f" [{b['flag']}]"
    return line
