"""pytest hooks and fixtures. Each hook is a few lines that delegate to ``session.py``.

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

_MARKERS = (
    "claim(source=None, finding=None): a stated interpretability finding; `finding` is the "
    "sentence the claim checks, `source` where it comes from (e.g. 'arXiv:2305.00586')",
    "model(*names): the model(s) a claim is asserted against (overridden by --circuits-model)",
    "baseline(tolerance='3se'): the drift tolerance of this claim's measurements against their "
    "baseline: one spec ('3se', 'abs:0.05', 'rel:0.1') or {metric: spec}",
    "expect_change(model, reason): this claim is expected to fail on the named model (a strict "
    "xfail: it fails if the claim still holds there)",
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
    add("--circuits-dtype", "circuits_dtype", "float32|bfloat16|float16|float64 (default float32)",
        default="float32")
    add("--circuits-cache-dir", "circuits_cache_dir", "where converted weights and activations are "
        "cached (default $PYTEST_CIRCUITS_CACHE_DIR or ~/.cache/pytest-circuits)", default="")
    add("--circuits-no-cache", "circuits_no_cache", "keep activations in memory only (no disk cache)",
        default=False, type="bool", action="store_true")
    add("--circuits-clear-cache", "circuits_clear_cache", "delete cached activations before the run "
        "(converted weights are kept)", default=False, type="bool", action="store_true")
    add("--circuits-batch-size", "circuits_batch_size", "prompts per forward pass (default 32)",
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
    add("--circuits-report", "circuits_report", "write the results ledger as JSON to this path",
        default="")
    add("--circuits-markdown", "circuits_markdown", "write a Markdown claims x models table "
        "(e.g. for a CI job summary)", default="")
    add("--circuits-html", "circuits_html", "write an HTML report with plots across models", default="")


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
    from .progress import set_quiet

    set_quiet(config.get_verbosity() < 0)
    config.stash[SESSION_KEY] = _LazySession(config)


class _LazySession:
    """Builds the Session (and imports torch) only when a claim first needs it."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._session: Any = None

    def get(self) -> Any:
        if self._session is None:
            from .activations import set_default_store
            from .session import Session, Settings, default_cache_dir

            c = self.config
            cli_models = [m for group in (c.getoption("circuits_model") or []) for m in
                          (group if isinstance(group, list) else [group])]
            ini_models = c.getini("circuits_model")
            try:
                batch = int(_opt(c, "circuits_batch_size"))
                seed = int(_opt(c, "circuits_seed"))
            except ValueError as e:
                raise pytest.UsageError(f"pytest-circuits: {e}") from None
            if batch < 1:
                raise pytest.UsageError(f"--circuits-batch-size={batch} is not valid: a positive int")
            cache = _opt(c, "circuits_cache_dir")
            bdir = _opt(c, "circuits_baseline_dir")
            settings = Settings(
                models=cli_models or list(ini_models) or Settings().models,
                models_from_cli=bool(cli_models), device=_worker_device(_opt(c, "circuits_device")),
                dtype=_opt(c, "circuits_dtype"),
                cache_dir=Path(cache).expanduser() if cache else default_cache_dir(),
                use_disk_cache=not _opt(c, "circuits_no_cache"), batch_size=batch, seed=seed,
                require_models=bool(_opt(c, "circuits_require_models")),
                baseline=bool(_opt(c, "circuits_baseline")) or bool(bdir) or bool(_opt(c, "circuits_baseline_of")),
                baseline_dir=(c.rootpath / bdir) if bdir else None,
                update_baselines=bool(_opt(c, "circuits_update_baselines")),
                baseline_of=_opt(c, "circuits_baseline_of") or None,
                baseline_tolerance=_opt(c, "circuits_baseline_tolerance"))
            self._session = Session(settings)
            if _opt(c, "circuits_clear_cache"):
                self._session.clear_disk_cache()
            set_default_store(self._session.store)
        return self._session

    @property
    def started(self) -> bool:
        return self._session is not None


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
    c = config
    cli = [m for g in (c.getoption("circuits_model") or []) for m in (g if isinstance(g, list) else [g])]
    models = cli or list(c.getini("circuits_model")) or ["smollm2-135m (default; @pytest.mark.model may choose)"]
    return [f"circuits: models={', '.join(models)} device={_opt(c, 'circuits_device')} "
            f"dtype={_opt(c, 'circuits_dtype')} seed={_opt(c, 'circuits_seed')}"]


# ----------------------------------------------------------------------------- collection
def _is_ours(metafunc: pytest.Metafunc) -> bool:
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get("model")
    return bool(defs) and defs[-1].func.__module__ == __name__


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model" not in metafunc.fixturenames or not _is_ours(metafunc):
        return
    c = metafunc.config
    cli = [m for g in (c.getoption("circuits_model") or []) for m in (g if isinstance(g, list) else [g])]
    marker = metafunc.definition.get_closest_marker("model")
    if cli:
        names = cli
    elif marker is not None and marker.args:
        names = list(marker.args)
    else:
        names = list(c.getini("circuits_model")) or ["smollm2-135m"]
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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
                    item.add_marker(pytest.mark.xfail(strict=True, reason=f"expected change on "
                                                      f"{m.args[0]}: {m.kwargs['reason']}"))
        for m in item.iter_markers("claim"):
            if m.args:
                raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.claim(finding=..., source=...) "
                                        "with keywords")
            unknown = set(m.kwargs) - {"finding", "source"}
            if unknown:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.claim got unknown keyword(s) "
                                        f"{sorted(unknown)}; valid: finding, source")


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
    try:
        return circuits_session.model(name)
    except ModelUnavailable as e:
        if circuits_session.settings.require_models:
            pytest.fail(f"model {name!r} unavailable (--circuits-require-models): {e}", pytrace=False)
        pytest.skip(f"model {name!r} unavailable: {e}")


@pytest.fixture(scope="session")
def activations(circuits_session: Any) -> Any:
    """The activation store: ``activations(model, prompts, hooks, intervention=None)``."""
    return circuits_session.store


# ----------------------------------------------------------------------------- running
@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    lazy = item.config.stash[SESSION_KEY]
    uses_model = "model" in getattr(item, "fixturenames", ()) and lazy.started
    if not uses_model and item.get_closest_marker("claim") is None:
        return (yield)
    from .measurement import _RECORDERS

    recorded: list[Any] = []
    item.stash[MEASUREMENTS_KEY] = recorded
    state = _seed(lazy.get().settings.seed)
    _RECORDERS.append(recorded)
    try:
        result = yield
    except BaseException:
        if recorded:   # the claim failed by itself: still report its drift, write nothing
            lazy.get().check_baseline(item, recorded, enforce=False)
        raise
    finally:
        _RECORDERS.remove(recorded)
        _restore(state)
    if recorded:
        lazy.get().check_baseline(item, recorded)     # fails the claim on drift or a new baseline
    return result


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    recorded = item.stash.get(MEASUREMENTS_KEY, None)
    if call.when == "call" and recorded:
        record = item.config.stash[SESSION_KEY].get().record(item, recorded)
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
# The config of the running session (a stack, so pytester's in-process runs nest cleanly).
_CONFIGS: list[pytest.Config] = []


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIGS.append(session.config)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" or not _CONFIGS:
        return
    for key, value in report.user_properties:
        if key == "circuits":
            record = json.loads(value)
            record["outcome"] = report.outcome
            if hasattr(report, "wasxfail"):
                record["outcome"] = "xfailed" if report.skipped else "xpassed"
            _CONFIGS[-1].stash.setdefault(RESULTS_KEY, []).append(record)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        return
    from . import report as R

    targets = {k: _opt(config, k) for k in ("circuits_report", "circuits_markdown", "circuits_html")}
    if not any(targets.values()):
        return
    data = R.ledger(config.stash.get(RESULTS_KEY, []), root=str(config.rootpath), exit_status=int(exitstatus))
    if targets["circuits_report"]:
        R.write_json(Path(targets["circuits_report"]), data)
    if targets["circuits_markdown"]:
        R.write_markdown(Path(targets["circuits_markdown"]), data)
    if targets["circuits_html"]:
        R.write_html(Path(targets["circuits_html"]), data)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if config in _CONFIGS:
        _CONFIGS.remove(config)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    tr = terminalreporter
    results = config.stash.get(RESULTS_KEY, [])
    if not results and not config.stash[SESSION_KEY].started:
        return
    tr.section("circuits")
    for r in results:
        tr.write_line(f"{r['outcome'].upper():7} {r['nodeid']}"
                      + (f"\n        finding: {r['finding']}" if r["finding"] else ""))
        for m in r["measurements"]:
            tr.write_line(f"        {_one_line(m)}")
    if config.stash[SESSION_KEY].started:
        for line in config.stash[SESSION_KEY].get().summary_lines():
            tr.write_line(line)


def _one_line(m: dict[str, Any]) -> str:
    from .measurement import _fmt

    where = f"[{m['model']}]" if m.get("model") else ""
    line = (f"{m['name']}{where} = {_fmt(m['mean'])} [{_fmt(m['lower'])}, {_fmt(m['upper'])}] "
            f"n={m['n']} ({m['level']:.0%})")
    b = m.get("baseline")
    if b and b.get("tolerance") == "updated":
        line += "  (baseline updated)"
    elif b and b.get("mean") is not None:
        line += (f"  baseline {_fmt(b['mean'])}, drift {b['difference']:+.3g} "
                 f"({'within' if b['within'] else 'OUTSIDE'} {b['tolerance']})")
    return line
