"""Shared fixtures for the project's own tests: a tiny offline model."""

from __future__ import annotations

import os

import pytest

# The device the shared tiny models load on: cpu here and in CI; a GPU run of the suite sets
# PYTEST_CIRCUITS_TEST_DEVICE=cuda (tests that build their own models stay on cpu).
TEST_DEVICE = os.environ.get("PYTEST_CIRCUITS_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    from pytest_circuits.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture(scope="session")
def arch_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """``arch_checkpoint(family, **sizes)``: the folder of a tiny random checkpoint of a family of
    :mod:`pytest_circuits.architectures` (``seed``, ``n_layers``, ``n_kv_heads``, ... as
    :func:`~pytest_circuits.architectures.build` takes them), built once per session for each
    family and sizes. Tests load it themselves (a loaded model is cheap, and theirs alone)."""
    from pytest_circuits.architectures import build

    root = tmp_path_factory.mktemp("archs")
    made: dict = {}

    def get(family: str, **sizes):
        key = (family, tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                                    for k, v in sizes.items())))
        if key not in made:
            made[key] = build(family, root / f"{family}-{len(made)}", **sizes)
        return made[key]

    return get


@pytest.fixture(scope="session")
def arch_model(arch_checkpoint, tmp_path_factory):
    """``arch_model(family, **sizes)``: the checkpoint of :func:`arch_checkpoint` loaded on the CPU
    (a new model object on each call, with its own cache folder), ``model.family`` set."""
    from pytest_circuits.models import load_model

    def get(family: str, **sizes):
        path = arch_checkpoint(family, **sizes)
        m = load_model(str(path), cache_dir=tmp_path_factory.mktemp(family + "-cache"), device="cpu")
        m.family = family
        return m

    return get


@pytest.fixture(scope="session")
def matrix_cell():
    """``matrix_cell(technique, family, run)``: one cell of the architecture matrix
    (:data:`pytest_circuits.architectures.TECHNIQUES` x families). ``run(**kwargs)`` performs the
    technique and asserts its identity. The cell is what the matrix expects
    (:func:`~pytest_circuits.architectures.expected`): exact (``run()`` passes), exact with an
    option (``run()`` raises a MeasurementError naming the feature, ``run(**option)`` passes),
    or refused (``run()`` raises a project error naming the feature). Each observed outcome is
    recorded for scripts/models_table.py."""
    from pytest_circuits import architectures as A
    from pytest_circuits.errors import CircuitsError

    def cell(technique: str, family: str, run):
        want = A.expected(technique, family)
        if want.kind == "exact":
            run()
        else:
            with pytest.raises(CircuitsError) as refused:
                run()
            words = want.feature.lower().split()
            assert all(w in str(refused.value).lower() for w in words), (
                f"{technique} on {family}: the refusal does not name {want.feature!r}: {refused.value}")
            if want.kind == "option":
                for key, value in want.option:
                    assert f'{key}="{value}"' in str(refused.value), str(refused.value)
                run(**want.kwargs)
        A.record_cell(technique, family, want)

    return cell


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("circuits-cache")


@pytest.fixture(scope="session")
def tiny(tiny_dir, tiny_cache):
    from pytest_circuits.models import load_model

    return load_model(str(tiny_dir), cache_dir=tiny_cache, device=TEST_DEVICE)


@pytest.fixture(scope="session")
def tiny_dir_b(tmp_path_factory: pytest.TempPathFactory):
    """A second tiny checkpoint (other weights), for multi-model runs."""
    from pytest_circuits.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tinyb") / "ckpt_b", seed=1)


@pytest.fixture(scope="session")
def tiny_two_digit(tmp_path_factory: pytest.TempPathFactory):
    """A tiny model whose tokenizer writes years as two-digit tokens (GPT-2 style)."""
    from pytest_circuits.models import load_model
    from pytest_circuits.testing import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("t2d") / "ckpt2d", two_digit_numbers=True, seed=4)
    return load_model(str(path), cache_dir=tmp_path_factory.mktemp("t2d-cache"), device=TEST_DEVICE)


def LogitDiffTask(model, pairs, answer="Paris", foil="Rome", name="logit_diff"):
    """A task for the edge tests (tests/unit/test_edges.py, test_edge_stability.py): the public
    :func:`pytest_circuits.tasks.logit_difference` (``logit(answer) - logit(foil)`` at the last
    position) on prompt pairs ``(clean, corrupted)`` with one answer and one foil."""
    from pytest_circuits.prompts import PromptSet
    from pytest_circuits.tasks import logit_difference

    return logit_difference(PromptSet.build(model, [a for a, _ in pairs], answers=[answer] * len(pairs),
                                            foils=[foil] * len(pairs), corrupted=[b for _, b in pairs], name=name))


@pytest.fixture(scope="session")
def logit_diff():
    """The :class:`LogitDiffTask` class: ``logit_diff(model, pairs, answer, foil, name=...)``."""
    return LogitDiffTask


_XDIST_VARIABLES = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


@pytest.fixture(autouse=True, scope="session")
def _the_environment_of_a_serial_run():
    """`make test` runs the fast lane under pytest-xdist (one worker a core). A worker's
    PYTEST_XDIST_* variables would make every run a test or a fixture starts (pytester,
    in-process or a child) behave as an xdist worker of its own (no progress line, another
    device rule): from the first fixture on (session scope, so module fixtures too), the worker
    has the environment of a serial run. Tests of xdist itself start their own workers."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _XDIST_VARIABLES:
            mp.delenv(name, raising=False)
        yield


# Used by every pytester test (tests/plugin, tests/faults): autouse, once per session.
@pytest.fixture(autouse=True, scope="session")
def _import_modules_once():
    # pytester's in-process runs drop the modules first imported inside them, so a
    # second run would get fresh copies of this package's modules (and `datasets`,
    # imported by TransformerLens, refuses a second import). Import everything here,
    # before any inner run, so all runs share one copy.
    import transformer_lens.model_bridge  # noqa: F401

    try:   # the HTML report imports pyplot inside runs; a second copy breaks later plots
        import matplotlib.pyplot  # noqa: F401
    except ImportError:  # pragma: no cover
        pass

    import pytest_circuits.store  # noqa: F401
    import pytest_circuits.metrics  # noqa: F401
    import pytest_circuits.models  # noqa: F401
    import pytest_circuits._session  # noqa: F401
    import pytest_circuits.tasks  # noqa: F401


# ----------------------------------------------------------------------------- lanes
# `make test` (the fast lane) deselects the lanes below; `make test-all` (what CI runs) runs
# everything. A test's lane follows what it loads or starts, marked here by rule (so a new test
# lands in the right lane without anyone remembering to mark it) or by hand with the markers
# registered in pyproject.toml.
CORE_FAMILIES = ("llama", "gqa", "gpt2")

# Tests that start processes or servers (xdist workers, an S3 server, a subprocess pytest with a
# model) or that run the whole checkup (the decoy zoo, the planted models): slow by what they do.
_SLOW_RULES = (
    ("tests/plugin/test_s3_cache.py", ""),
    ("tests/plugin/test_baselines_reports.py", "xdist"),
    ("tests/plugin/test_shards.py", "xdist"),
    ("tests/unit/test_zoo.py", "test_the_checkup_has_no_false_positive_or_negative"),
    # the whole checkup over the six planted models: about 50 CPU-seconds (2026-12-05); the
    # checkup's collection, detectors and cards keep fast-lane tests in tests/plugin/test_checkup.py
    ("tests/plugin/test_checkup.py", "test_checkup_on_planted_models_finds_each_mechanism_only_where_planted"),
    # the whole checkup (all eight checks) on the tiny model, to merge its report: 27 CPU-seconds,
    # 47 s wall at load 8 (2026-12-05), the largest test of tests/plugin. Its completeness check
    # needs the whole checkup (a --circuits-checks selection switches it off), so it is not cut
    # down; a shard of checkup items (collection) stays in the fast lane.
    ("tests/plugin/test_shards.py", "test_a_checkup_report_is_verified_against_the_installed_checkup"),
)
# Tests slow by a fixture they use: `built` in test_zoo.py builds every checkpoint of the decoy
# zoo and its tests load them with transformers (measured 2026-12-05: over 110 CPU-seconds for
# the file, the largest cost of the fast lane). The registry's form and the builders'
# determinism stay in the fast lane, as does tests/unit/test_zoo_tasks.py.
_SLOW_FIXTURES = (
    ("tests/unit/test_zoo.py", "built"),
)

# Tests of a family beyond the core three that name it in their body rather than as a parameter
# (so `_family` cannot see it): the architecture matrix's lane by the same rule. The Gemma-2
# folder's whole checkup: 27 CPU-seconds with start-up, 25 s wall at load 7 (2026-12-05).
_MATRIX_RULES = (
    ("tests/unit/test_architecture_matrix.py", "test_a_users_gemma2_folder_runs_the_checkup_with_the_reasons_on_its_card"),
)


def _family(item: pytest.Item) -> str | None:
    """The architecture family an item is parametrized with, if any (the matrix files name it
    as the first parameter, or pass it to the indirect ``model`` fixture)."""
    from pytest_circuits.architectures import FAMILIES

    params = getattr(getattr(item, "callspec", None), "params", {})
    for value in params.values():
        if isinstance(value, str) and value in FAMILIES:
            return value
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        name = item.nodeid.split("::")[-1]
        if path.startswith("tests/integration/") or "smollm2" in name or "embedded" in name:
            item.add_marker(pytest.mark.real_model)
        if any(path == p and word in name for p, word in _SLOW_RULES):
            item.add_marker(pytest.mark.slow)
        if any(path == p and fixture in getattr(item, "fixturenames", ()) for p, fixture in _SLOW_FIXTURES):
            item.add_marker(pytest.mark.slow)
        fam = _family(item)
        if (fam is not None and fam not in CORE_FAMILIES) or any(path == p and word in name
                                                                 for p, word in _MATRIX_RULES):
            item.add_marker(pytest.mark.matrix)
        if item.get_closest_marker("gpu") is not None:
            import torch

            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs CUDA (a gpu-lane test): no GPU on this machine"))
    seed = os.environ.get("CIRCUITS_TEST_ORDER_SEED")
    if seed:
        _shuffle(items, int(seed))


def _shuffle(items: list[pytest.Item], seed: int) -> None:
    """Random order, reproducible from its seed: the files in a random order, and the tests of
    each file in a random order (a file's tests stay together, so its fixtures are built once).
    Every test must pass in any order (tests that depend on what ran before them are defects)."""
    import random

    rng = random.Random(seed)
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    files = list(by_file)
    rng.shuffle(files)
    out: list[pytest.Item] = []
    for f in files:
        group = by_file[f]
        rng.shuffle(group)
        out += group
    items[:] = out


def pytest_report_header(config: pytest.Config) -> list[str]:
    seed = os.environ.get("CIRCUITS_TEST_ORDER_SEED")
    return [f"test order: shuffled with CIRCUITS_TEST_ORDER_SEED={seed}"] if seed else []
