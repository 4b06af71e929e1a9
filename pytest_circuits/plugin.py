"""pytest hooks and fixtures, each a few lines that call down: options and markers are
parsed and checked in :mod:`._options`, the run's session, claims and ledger live in
:mod:`._session`, verdicts and the terminal summary in :mod:`._verdicts`, the stash keys in
:mod:`._stash`, the report files in :mod:`.report`. Nothing below calls back up here.

Nothing heavy is imported at module import time, so ``pytest --help`` stays fast (and a run
that collects no claim is not changed: docs/layout.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from . import _options as O
from . import _session as S
from . import _verdicts as V
from ._stash import (ASSERTIONS_KEY, CHECKS_KEY, CLAIM_COUNT_KEY, COLLECTED_KEY, FIGURES_KEY, FIXTURE_MEASUREMENTS_KEY,
                     HEARTBEAT_KEY, MEASUREMENTS_KEY, RESULTS_KEY, SESSION_KEY, SHARD_KEY, WORKERS_KEY, WORKTREE_KEY)

_PLUGIN_NAME = "circuits-session"
_REPORTS = ("circuits_report", "circuits_markdown", "circuits_html")


def pytest_addoption(parser: pytest.Parser) -> None:
    O.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    # The plugin loads in every pytest run of the environment: nothing here may change a run
    # that collects no claim (no environment variable, no header, no heavy import). Claims
    # never download: each model load is offline by itself (models.offline), not the process.
    O.add_markers(config)
    from ._progress import set_quiet

    set_quiet(config.get_verbosity() < 0)
    # Every option is parsed and checked here, once: a bad value is a usage error (exit 4)
    # before any claim runs, never a skip per claim.
    lazy = _LazySession(config, O.settings(config))
    config.stash[SESSION_KEY] = lazy
    config.pluginmanager.register(lazy, _PLUGIN_NAME)
    _register_labels(config)
    O.add_checkup(config)


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
            from . import store

            self._session = S.Session(self.settings)
            if self.settings.clear_cache:
                self._session.clear_disk_cache()
            self._store_token = store.set_current(self._session.store)
        return self._session

    def close(self) -> None:
        """Give the process back the store that was current before this run."""
        if self._store_token is not None:
            from . import store

            store.reset(self._store_token)
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
        beat = self.config.stash.get(HEARTBEAT_KEY, None)
        if beat is not None and report.when == "setup" and any(k == "circuits-claim" for k, _ in
                                                                report.user_properties):
            beat.start()     # xdist's controller: claims run
        V.collect_report(self.config, report)


def _session(config: pytest.Config) -> Any:
    return config.stash[SESSION_KEY].get()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The run's settings, when the run names the plugin (else they are shown after collection,
    and only when a claim was collected: :func:`pytest_report_collectionfinish`)."""
    return O.header(config) if O.asked_for(config) else []


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    if O.asked_for(config) or not any(S.is_claim(i) for i in items):
        return []
    return O.header(config)


# ----------------------------------------------------------------------------- collection
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = O.claim_models(metafunc)
    if names is not None:
        metafunc.parametrize("model", names, indirect=True, scope="session", ids=[S.model_id(n) for n in names])


def _register_labels(config: pytest.Config) -> None:
    """Enter the labels of the run's checkpoint folders (distinct when base names collide) for
    the run, and restore the previous ones when it ends (pytester runs nest in one process)."""
    from .models import pop_run_labels, push_run_labels

    previous = push_run_labels(config.stash[SESSION_KEY].settings.models)
    config.add_cleanup(lambda: pop_run_labels(previous))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    O.mark_items(config, items)


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_shard(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Last, after -k/-m and --circuits-checks: note the suite's claims (the ledger's
    "collected", which the merge checks for completeness), then keep only this shard's items
    (``--circuits-shard K/N``, rule in :mod:`pytest_circuits.shards`); the others are deselected."""
    config.stash[COLLECTED_KEY] = sorted(i.nodeid for i in items if S.is_claim(i))
    shard = config.stash.get(SHARD_KEY, None)
    if shard is None:
        return
    from .shards import assign

    where = assign([(S.item_model(i), i.nodeid) for i in items], shard[1])
    dropped = [i for i, k in zip(items, where) if k != shard[0]]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i, k in zip(items, where) if k == shard[0]]


def pytest_collectstart(collector: pytest.Collector) -> None:
    """The checkup's module, about to be collected: its claims follow the checks registered now
    (:func:`pytest_circuits.checkup_claims.sync`), even when an earlier run in this process
    imported it. Only with ``--circuits-checkup``."""
    if CHECKS_KEY in collector.config.stash and S.is_checkup(collector):
        from . import checkup_claims

        checkup_claims.sync()


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


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def circuits_session(request: pytest.FixtureRequest) -> Any:
    """The run's Session: settings, model pool, activation store, ledger."""
    return _session(request.config)


@pytest.fixture(scope="session")
def model(request: pytest.FixtureRequest, circuits_session: Any) -> Any:
    """The model a claim runs against, loaded once per process (TransformerBridge, compatibility mode)."""
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
    if "model" not in params or not S.is_ours_item(item):
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
        pickled = O.pickled_checkpoint(name)
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
@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    """Measurements made while a fixture is set up belong to every claim that uses it."""
    from .measurement import _RECORDERS

    made: list[Any] = []
    _RECORDERS.append(made)
    try:
        return (yield)
    finally:
        V.drop(_RECORDERS, made)
        if made:
            table = request.config.stash.setdefault(FIXTURE_MEASUREMENTS_KEY, {})
            table[id(fixturedef)] = (fixturedef, made)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    lazy = item.config.stash[SESSION_KEY]
    uses_model = "model" in getattr(item, "fixturenames", ()) and lazy.started
    if not uses_model and item.get_closest_marker("claim") is None:
        return (yield)
    from .figures import _RECORDERS as _FIGURES
    from .measurement import _ASSERTIONS, _RECORDERS

    recorded: list[Any] = list(V.fixture_measurements(item))
    asserted: list[Any] = []
    figures: list[Any] = []
    item.stash[MEASUREMENTS_KEY] = recorded
    item.stash[ASSERTIONS_KEY] = asserted
    item.stash[FIGURES_KEY] = figures
    state = V.seed_all(lazy.get().settings.seed)
    _RECORDERS.append(recorded)
    _ASSERTIONS.append(asserted)
    _FIGURES.append(figures)
    try:
        result = yield
    except BaseException:
        recorded[:] = V.distinct(recorded)[0]
        if recorded:   # the claim failed by itself: still report its drift, write nothing
            V.check_baseline(item, recorded, lazy.settings, enforce=False)
        raise
    finally:
        V.drop(_RECORDERS, recorded)
        V.drop(_ASSERTIONS, asserted)
        V.drop(_FIGURES, figures)
        V.restore_seeds(state)
    recorded[:], clashes = V.distinct(recorded)
    if clashes:
        pytest.fail(f"{item.nodeid} made different measurements with the same name: "
                    f"{', '.join(repr(c) for c in clashes)}. Names identify measurements in baselines "
                    "and reports; give each its own (most functions take name=...)", pytrace=False)
    if recorded:
        V.check_baseline(item, recorded, lazy.settings)     # fails the claim on drift or a new baseline
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


def _heartbeat(config: pytest.Config, total: int) -> Any:
    """The run's heartbeat (made once; its thread starts with ``.start()``)."""
    beat = config.stash.get(HEARTBEAT_KEY, None)
    if beat is None:
        from ._progress import Heartbeat

        beat = config.stash[HEARTBEAT_KEY] = Heartbeat(total, write=_beat_writer(config))
    return beat


def _beat_writer(config: pytest.Config) -> Any:
    """Write a heartbeat line to the terminal from the heartbeat's thread, so a claim that runs
    for minutes is not silent.

    The thread never touches pytest's capture: suspending it from another thread would move the
    process's file descriptors under the test running in the main thread (its output, or an
    in-process pytest run's, would go astray). Instead the terminal's descriptor is duplicated
    here, in the main thread between tests (capture suspended), and the thread writes whole lines
    to the duplicate, which output capture does not redirect. Where the terminal has no
    descriptor, the line goes through the terminal writer as it is."""
    import io
    import os

    tr = config.pluginmanager.getplugin("terminalreporter")
    tw = getattr(tr, "_tw", None)
    fd = None
    try:
        stream = getattr(tw, "_file", None) or sys.stderr
        stream.flush()
        fd = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fd = None
    if fd is not None:
        config.add_cleanup(lambda: os.close(fd))

    def write(text: str) -> None:
        # after -q's dots: a line of its own
        lead = "\n" if getattr(tw, "width_of_current_line", 0) else ""
        if fd is not None:
            try:
                os.write(fd, (lead + text + "\n").encode("utf-8", "replace"))
                return
            except OSError:
                pass
        if tr is not None:
            tr.write(lead + text + "\n")
        else:
            print(text, file=sys.stderr, flush=True)

    return write


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """xdist's controller: the heartbeat counts the tests every worker collected (the same
    list); it starts beating with the first claim's report."""
    beat = _heartbeat(node.config, len(ids))
    beat.total = max(beat.total, len(ids))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    return V.finish_report(item, call, report)


# ----------------------------------------------------------------------------- the end of the run
@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """The working tree the run starts from (dirty or not, and a hash of the difference), for
    the report's identity: read before any claim writes a baseline. Only when a report is asked."""
    config = session.config
    if S.update_failing(config) and not config.stash[SESSION_KEY].settings.update_baselines:
        raise pytest.UsageError("pytest-circuits: --circuits-update-failing records the baselines of failing "
                                "claims in an update run: add --circuits-update-baselines")
    if hasattr(config, "workerinput"):
        return
    targets = [S.option(config, k) for k in _REPORTS]
    if not any(targets):
        return
    from .report import worktree

    config.stash[WORKTREE_KEY] = worktree(str(config.rootpath), exclude=[str(t) for t in targets if t])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        config.workeroutput["circuits_collected"] = json.dumps(config.stash.get(COLLECTED_KEY, None))
        if config.stash[SESSION_KEY].started:
            config.workeroutput["circuits_summary"] = json.dumps(config.stash[SESSION_KEY].get().worker_summary())
        return
    from . import report as R

    targets = {k: S.option(config, k) for k in _REPORTS}
    if not any(targets.values()):
        return
    data = R.ledger(config.stash.get(RESULTS_KEY, []), root=str(config.rootpath), exit_status=int(exitstatus),
                    worktree=config.stash.get(WORKTREE_KEY, None))
    cards = S.cards(config)
    if cards:
        data["checkup"] = cards
    data.update(S.claims_ledger(config))
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
    lines = V.terminal_lines(config)
    if lines is None:
        return
    terminalreporter.section("circuits")
    for line in lines:
        terminalreporter.write_line(line)
