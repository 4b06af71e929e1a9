"""pytest hooks and fixtures. Each hook is a few lines that delegate to ``_session.py``.

Nothing heavy is imported at module import time, so ``pytest --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import random
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
    add("--circuits-batch-size", "circuits_batch_size", "rows per forward pass (default 32): prompts, "
        "or prompts x interventions when a sweep stacks several interventions into one forward",
        default="32")
    add("--circuits-seed", "circuits_seed", "seed for torch, numpy and random, reset for every claim "
        "(default 0)", default="0")
    add("--circuits-require-models", "circuits_require_models", "fail, instead of skip, claims whose "
        "model cannot be loaded", default=False, type="bool", action="store_true")
    add("--circuits-baseline", "circuits_baseline", "compare every claim's measurements with its "
        "baseline (a missing baseline is written and the claim fails)", default=False, type="bool",
        action="store_true")
    add("--circuits-baseline-dir", "circuits_baseline_dir", "folder of baseline files, one JSON per "
        "model (default claims/baselines under the rootdir; giving it turns baselines on)", default="")
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


def _opt(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    return config.getini(name) if value is None else value


def pytest_configure(config: pytest.Config) -> None:
    # Claims never download: set before anything imports huggingface_hub (which reads
    # these once). A user can still opt in with HF_HUB_OFFLINE=0.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
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
    from .config import cache_location, is_url

    c = config

    def usage(msg: str) -> pytest.UsageError:
        return pytest.UsageError(f"pytest-circuits: {msg}")

    def integer(name: str, flag: str, low: int) -> int:
        raw = _opt(c, name)
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise usage(f"{flag}={raw!r} is not valid: an integer") from None
        if value < low:
            raise usage(f"{flag}={value} is not valid: an integer >= {low}")
        return value

    models, from_cli = _models(c)
    for name in models:
        problem = check_model_name(name)
        if problem:
            raise usage(problem + ("" if from_cli else " (from the ini option circuits_model)"))
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
    cache_dir = (cache if is_url(cache) else Path(cache).expanduser()) if cache else cache_location()
    use_disk = not _opt(c, "circuits_no_cache")
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
        batch_size=integer("circuits_batch_size", "--circuits-batch-size", 1),
        seed=integer("circuits_seed", "--circuits-seed", 0),
        require_models=bool(_opt(c, "circuits_require_models")),
        baseline=bool(_opt(c, "circuits_baseline")) or bool(bdir) or bool(_opt(c, "circuits_baseline_of")),
        baseline_dir=(c.rootpath / bdir) if bdir else None,
        update_baselines=bool(_opt(c, "circuits_update_baselines")),
        baseline_of=_opt(c, "circuits_baseline_of") or None,
        baseline_tolerance=tolerance, familywise=familywise)


def _device_map(c: pytest.Config, device: str, models: list[str], usage: Any) -> Any:
    """``--circuits-device-map`` parsed and checked against ``--circuits-device``, this
    machine's devices and (a dict) the modules of every model named (or the default one),
    so a bad map is a usage error before any claim runs. An ``@file`` given on the command
    line is read relative to where pytest was started, one in the ini file to the rootdir."""
    from_cli = c.getoption("circuits_device_map") is not None
    raw = _opt(c, "circuits_device_map")
    if not str(raw or "").strip():
        return None
    from .config import DEFAULT_MODEL
    from .devices import DeviceMapError, device_conflict, parse_device_map
    from .errors import ModelUnavailable
    from .models import device_map_problem

    try:
        device_map = parse_device_map(raw, base=c.invocation_params.dir if from_cli else c.rootpath)
    except DeviceMapError as e:
        raise usage(str(e)) from None
    problem = device_conflict(device, device_map)
    cache = _opt(c, "circuits_cache_dir")
    for name in ([] if problem else models or [DEFAULT_MODEL]):
        try:
            where = (cache if "://" in str(cache) else str(Path(cache).expanduser())) if cache else None
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

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if "circuits-claim" in props:
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


def pytest_report_header(config: pytest.Config) -> list[str]:
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
    if "model" not in metafunc.fixturenames or not _is_ours(metafunc):
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
    metafunc.parametrize("model", names, indirect=True, scope="session",
                         ids=[_model_id(n) for n in names])


def _is_ours_item(item: pytest.Item) -> bool:
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).get("model")
    return bool(defs) and defs[-1].func.__module__ == __name__


def _model_id(name: str) -> str:
    p = Path(name)
    return p.name if (os.sep in name or name.startswith(".")) and p.name else name


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
    base name, else the name ("org/name" stays whole); "" for an item without a model."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "model" not in params or not _is_ours_item(item):
        return ""
    name = str(params["model"])
    return Path(name).name if Path(name).expanduser().is_dir() and Path(name).name else name


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
    skipped. Either way the summary counts it as not checked."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "model" not in params or not _is_ours_item(item):
        return
    from .errors import ModelUnavailable

    session = _session(item.config)
    name = params["model"]
    try:
        session.model(name)
        return
    except ModelUnavailable as exc:
        e = exc
    if True:  # outside the except block, so the failure is not shown as a chained traceback
        from .devices import DeviceMapError

        if isinstance(e, DeviceMapError):
            # The user's own --circuits-device-map does not fit this model: a usage mistake,
            # never "model unavailable" (which skips without --circuits-require-models).
            pytest.fail(f"model {name!r}: {e}", pytrace=False)
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
    form one intersection test, so the family is the claims)."""
    from . import measurement as M

    st = session.config.stash[SESSION_KEY].settings
    m = session.config.stash.get(CLAIM_COUNT_KEY, 0)
    if st.familywise == "none" or m <= 1:
        return (yield)
    with M.default_level(1.0 - (1.0 - st.level) / m):
        return (yield)


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
    if call.when == "call" and recorded:
        record = item.config.stash[SESSION_KEY].get().record(item, recorded)
        record["expected_change"] = item.stash.get(EXPECTED_CHANGE_KEY, "") or None
        # Bounds asserted through assert_above / assert_below / assert_within, with their level.
        record["assertions"] = [{"name": a.name, "kind": a.kind, "level": a.level, "passed": bool(a.passed)}
                                for a in item.stash.get(ASSERTIONS_KEY, [])]
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


RESULTS_KEY = pytest.StashKey[list]()
CARDS_KEY = pytest.StashKey[list]()
CLAIMS_KEY = pytest.StashKey[dict]()


def _count_claim(config: pytest.Config, report: pytest.TestReport, expected_change: str) -> None:
    """Each claim's verdict: checked (passed, failed, expected change...) or not checked, and why."""
    verdicts = config.stash.setdefault(CLAIMS_KEY, {})
    if report.when == "teardown":
        if report.failed and report.nodeid not in verdicts:
            verdicts[report.nodeid] = ("error", _reason(report))
        return
    if report.when == "setup" and report.passed:
        return
    if hasattr(report, "wasxfail"):
        verdict = ("expected change" if expected_change else "xfailed") if report.skipped else "xpassed"
        verdicts[report.nodeid] = (verdict, report.wasxfail)
    elif report.skipped:
        verdicts[report.nodeid] = ("not checked", _reason(report))
    elif report.failed:
        verdicts[report.nodeid] = ("failed" if report.when == "call" else "error", _reason(report))
    else:
        verdicts[report.nodeid] = ("passed", "")


def _reason(report: pytest.TestReport) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        text = str(lr[2])
    else:
        text = str(getattr(report, "longreprtext", "") or lr or "")
    text = text.strip().splitlines()[-1] if text.strip() else ""
    return text.removeprefix("Skipped: ")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        config.workeroutput["circuits_collected"] = json.dumps(config.stash.get(COLLECTED_KEY, None))
        return
    from . import _report as R

    targets = {k: _opt(config, k) for k in ("circuits_report", "circuits_markdown", "circuits_html")}
    if not any(targets.values()):
        return
    data = R.ledger(config.stash.get(RESULTS_KEY, []), root=str(config.rootpath), exit_status=int(exitstatus))
    cards = _cards(config)
    if cards:
        data["checkup"] = cards
    data.update(_claims_ledger(config))
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


def _claims_ledger(config: pytest.Config) -> dict[str, Any]:
    """The ledger's "claims" (every claim item this process ran or skipped, with its verdict),
    "collected" (the whole suite's claims before sharding; left out when collection did not
    finish, so that a merge cannot take an unknown suite for a complete one) and "shard"."""
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
                           "shard": {"index": shard[0], "count": shard[1]} if shard else None}
    collected = config.stash.get(COLLECTED_KEY, None)
    if collected is not None:
        out["collected"] = sorted(collected)
    return out


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
    elif b and b.get("mean") is not None:
        line += (f"  baseline {_fmt(b['mean'])}, drift {b['difference']:+.3g} "
                 f"({'within' if b['within'] else 'OUTSIDE'} {b['tolerance']})")
        if b.get("flag"):
            line += f" [{b['flag']}]"
    return line
