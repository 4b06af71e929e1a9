"""One hierarchy (issue #23, item 5): every error and warning class of the package is defined
in ``errors.py`` under :class:`CircuitsError` or :class:`CircuitsWarning`, the modules that
used to define one still export it under its old path, and the versions a record carries
come from one function."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from pytest_circuits import errors as E

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_circuits"
_BASES = {"Exception", "BaseException", "ValueError", "RuntimeError", "TypeError", "KeyError", "OSError",
          "Warning", "UserWarning", "RuntimeWarning", "DeprecationWarning", "FutureWarning"}


def _exception_classes(root: Path) -> dict[str, list[str]]:
    """Public class name -> the modules (relative paths) defining it, for every class whose
    bases name an exception or warning (a builtin one, or a name ending in Error, Warning,
    Exception, or ``ModelUnavailable``)."""
    out: dict[str, list[str]] = {}
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                     for b in node.bases}
            if any(b in _BASES or b.endswith(("Error", "Warning", "Exception")) or b == "ModelUnavailable"
                   for b in bases):
                out.setdefault(node.name, []).append(str(f.relative_to(root)))
    return out


def _modules() -> list[str]:
    """Every module of the package but ``__main__`` (it runs the command line when imported)."""
    out = []
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts != ["__main__"]:
            out.append(".".join(["pytest_circuits", *parts]))
    return out


def test_every_error_and_warning_class_is_defined_in_errors_py():
    # by source (classes in functions too), and by the imported classes (aliased bases too)
    found = _exception_classes(PACKAGE)
    elsewhere = {name: where for name, where in found.items() if where != ["errors.py"]}
    assert elsewhere == {}
    assert len(found) >= 18          # the scan sees the hierarchy itself
    mods = _modules()
    assert len(mods) > 40
    for name in mods:
        mod = importlib.import_module(name)
        for attr, value in vars(mod).items():
            if isinstance(value, type) and issubclass(value, BaseException) and not attr.startswith("_") \
                    and value.__module__.startswith("pytest_circuits"):
                assert value.__module__ == E.__name__, f"{name}.{attr} is defined in {value.__module__}"


def test_the_scan_finds_a_class_defined_elsewhere(tmp_path):
    """The check above would fail: a module defining its own error is reported."""
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "errors.py").write_text("class CircuitsError(ValueError):\n    pass\n")
    (root / "merge.py").write_text("from .errors import CircuitsError\n\n\nclass MergeError(CircuitsError):\n    pass\n\n\n"
                                   "class Odd(RuntimeWarning):\n    pass\n\n\nclass _Private(Exception):\n    pass\n")
    assert _exception_classes(root) == {"CircuitsError": ["errors.py"], "MergeError": ["merge.py"],
                                        "Odd": ["merge.py"]}


def _defined() -> list[type]:
    return [v for v in vars(E).values() if isinstance(v, type) and issubclass(v, BaseException)
            and v.__module__ == E.__name__]


def test_one_hierarchy():
    classes = _defined()
    for cls in classes:
        assert issubclass(cls, (E.CircuitsError, E.CircuitsWarning)), cls
        assert not (issubclass(cls, E.CircuitsError) and issubclass(cls, Warning)), cls
    # bad input is still a ValueError; every warning a UserWarning (filters keep working)
    assert issubclass(E.CircuitsError, ValueError) and issubclass(E.CircuitsWarning, UserWarning)
    errors = {c.__name__ for c in classes if issubclass(c, E.CircuitsError)}
    warns = {c.__name__ for c in classes if issubclass(c, E.CircuitsWarning)}
    assert {"MergeError", "BaselineError", "DuplicateMetricError", "DeviceMapError", "BlobError",
            "ProbingError", "TooFewNamesError"} <= errors
    assert {"CacheWarning", "PromptWarning", "NoOpInterventionWarning", "NegligibleCosineWarning"} <= warns


def test_a_device_map_error_is_a_usage_mistake_not_an_unavailable_model():
    assert not issubclass(E.DeviceMapError, E.ModelUnavailable)
    assert issubclass(E.DeviceMapError, E.CircuitsError)
    from pytest_circuits.devices import parse_device_map

    with pytest.raises(E.DeviceMapError, match="--circuits-device-map") as info:
        parse_device_map("not-a-strategy")
    assert not isinstance(info.value, E.ModelUnavailable)


@pytest.mark.parametrize("module, name", [
    ("merge", "MergeError"), ("baselines", "BaselineError"), ("baselines", "DuplicateMetricError"),
    ("devices", "DeviceMapError"), ("blobs", "BlobError"), ("techniques.probing", "ProbingError"),
    ("tasks.ioi", "TooFewNamesError"), ("techniques.erasure", "NegligibleCosineWarning"),
])
def test_old_import_paths_still_work(module, name):
    mod = importlib.import_module(f"pytest_circuits.{module}")
    assert getattr(mod, name) is getattr(E, name)


def test_the_package_exports_the_whole_hierarchy():
    import pytest_circuits

    for cls in _defined():
        assert cls.__name__ in pytest_circuits.__all__, cls
        assert getattr(pytest_circuits, cls.__name__) is cls


def test_one_versions_function():
    """Defined once (config.py), used by the report and the baselines; a baseline compares a
    subset of what every record states."""
    defining = [str(f.relative_to(PACKAGE)) for f in sorted(PACKAGE.rglob("*.py"))
                for node in ast.walk(ast.parse(f.read_text()))
                if isinstance(node, ast.FunctionDef) and node.name == "versions"]
    assert defining == ["config.py"]
    from pytest_circuits import baselines, config, report

    assert report.versions is config.versions and baselines.versions is config.versions
    v = config.versions()
    assert list(v) == ["python", *config.RECORDED_PACKAGES]
    assert set(baselines.VERSION_PACKAGES) <= set(config.RECORDED_PACKAGES)
    import torch

    assert v["torch"] == torch.__version__ and v["pytest"] == pytest.__version__
    v["torch"] = "changed"                       # a caller's copy: the next call is unchanged
    assert config.versions()["torch"] == torch.__version__
