"""docs/api.md, the API reference (issue #23, item 8): generated from the docstrings by
scripts/api_reference.py, it lists every public name (checked here against a reading of the
sources with :mod:`ast`, independent of the script's introspection) and is current."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pytest_circuits"
PAGE = ROOT / "docs" / "api.md"
HEADING = re.compile(r"^#{3,4} `(?P<name>[\w.]+)`\s*$", re.M)


def _script():
    spec = importlib.util.spec_from_file_location("api_reference", ROOT / "scripts" / "api_reference.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


S = _script()


def _tree(module: str) -> ast.Module:
    base = PACKAGE.joinpath(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    return ast.parse(path.read_text(encoding="utf-8"))


def _literal_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def expected_names() -> set[str]:
    """Every public name the page must list, read from the sources: a module's literal
    ``__all__``, else its top-level functions, classes and assignments without a leading
    underscore; each public class's methods and properties (and documented operators)."""
    import pytest_circuits

    out = set(pytest_circuits.__all__)
    for module in S.MODULES:
        tree = _tree(module)
        names = _literal_all(tree)
        defined: dict[str, ast.AST] = {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(t, ast.Name):
                        defined.setdefault(t.id, node)
        if names is None:
            names = [n for n in defined if not n.startswith("_")]
        for name in names:
            out.add(f"{module}.{name}")
            node = defined.get(name)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and (
                            not item.name.startswith("_")
                            or (item.name in S.OPERATORS and ast.get_docstring(item) is not None)):
                        out.add(f"{module}.{name}.{item.name}")
    return out


def listed(text: str) -> set[str]:
    return {m["name"] for m in HEADING.finditer(text)}


def problems(text: str) -> list[str]:
    want, have = expected_names(), listed(text)
    fixtures = {n for n in have if n.startswith("plugin.")}
    return ([f"{n}: public but not on docs/api.md" for n in sorted(want - have)]
            + [f"{n}: on docs/api.md but not public" for n in sorted(have - want - fixtures)])


def test_every_module_is_on_the_page_internal_or_private():
    modules = set(S.all_modules())
    private = {m for m in modules if any(part.startswith("_") for part in m.split("."))}
    assert set(S.MODULES) | set(S.INTERNAL) | private | {""} == modules
    assert not set(S.MODULES) & (set(S.INTERNAL) | private)


def test_the_page_lists_every_public_name():
    text = PAGE.read_text(encoding="utf-8")
    assert problems(text) == []
    names = listed(text)
    assert len(names) > 800
    # spot checks of what a claim author looks for
    assert {"measurement.Measurement.array",
            "measurement.Measurement.assert_above", "measurement.Measurement.__sub__",
            "scores.ComponentScores.measure", "techniques.ioi.analyse", "tasks.facts.facts",
            "detection.Detection.measurement", "Measurement", "plugin.model", "plugin.activations"} <= names


def test_a_missing_or_stale_name_is_reported():
    text = PAGE.read_text(encoding="utf-8")
    without = re.sub(r"^### `techniques\.ioi\.analyse`\s*$", "### analyse", text, flags=re.M)
    assert problems(without) == ["techniques.ioi.analyse: public but not on docs/api.md"]
    stale = text + "\n### `metrics.no_such_metric`\n"
    assert problems(stale) == ["metrics.no_such_metric: on docs/api.md but not public"]


def test_the_page_is_current():
    assert PAGE.read_text(encoding="utf-8") == S.render(), \
        "docs/api.md is not current: run python scripts/api_reference.py"


def test_the_page_holds_the_docstrings():
    from pytest_circuits.measurement import Measurement

    text = PAGE.read_text(encoding="utf-8")
    doc = Measurement.assert_above.__doc__
    first = " ".join(doc.split())[:60]
    assert first in " ".join(text.split())


@pytest.mark.parametrize("argv, code", [(["--check"], 0), (["--bogus"], 2)])
def test_the_script_checks(argv, code, capsys):
    assert S.main(argv) == code


def test_the_checkups_measurement_table_names_what_the_card_measured():
    """docs/checkup.md's table of headline measurement names, against the names a real run
    recorded (the SmolLM2 card of the worked example): each check's listed names are the
    card's (the optional ones may be missing from the card), in order."""
    import json

    text = (ROOT / "docs" / "checkup.md").read_text(encoding="utf-8")
    section = text[text.index("## What a claim can assert on"):text.index("## What each check requires")]
    table = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] and cells[0] not in ("check",) and not cells[0].startswith("---"):
            table[cells[0]] = re.findall(r"`([^`]+)`", cells[1])
    card = json.loads((ROOT / "docs" / "checkup-example" / "report.json").read_text())["checkup"]
    measured = {c["check"]: [m["name"] for m in c["measurements"] if not m["name"].startswith("verdict")]
                for c in card}
    from pytest_circuits import checkup

    assert set(table) == set(checkup.BUILT_IN) == set(measured)
    for check, names in table.items():
        assert set(measured[check]) <= set(names), check
        assert [n for n in names if n in measured[check]] == measured[check], check


def test_the_page_does_not_depend_on_the_environment():
    """CI sets ``CI``, which makes hypothesis load another profile at import: the page built
    there must be the page built here (a constant's repr once carried the profile's fields)."""
    import os
    import subprocess
    import sys

    for env in ({"CI": "true"}, {"HYPOTHESIS_PROFILE": "ci"}):
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "api_reference.py"), "--check"],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, (env, run.stdout[-2000:], run.stderr[-2000:])
