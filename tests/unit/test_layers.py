"""The package's layers, enforced: every import (module-level and inside functions,
relative and absolute) goes to the same layer or one above it, and no imports form a cycle.

The table below is the one place that says which layer a module is in (DESIGN: leaves ->
data and numbers -> models -> store -> interventions -> metrics, tasks, techniques ->
_session -> plugin). A new module must be added to it, or the test fails.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_circuits"

# Lower numbers are nearer the leaves. A module may import modules of its own layer or
# of a lower one (never a higher one); within a layer the imports must stay acyclic.
LAYERS: dict[str, int] = {
    # leaves: nothing from the project but the error hierarchy
    "errors": 0,
    "components": 1, "config": 1, "shards": 1, "cachefiles": 1, "_jsonl": 1, "_markup": 1, "_progress": 1,
    "sources": 1, "cachekey": 1, "moe": 1,
    "hooks": 2, "protocols": 2, "devices": 2, "blobs": 2,
    # data and numbers
    "prompts": 3, "stats": 3, "testing": 3, "architectures": 3,
    "measurement": 4,
    # models: registry, embedded model, checkpoints
    "models": 5, "detection": 5,
    # the activation store
    "store": 6, "planted": 6,
    # interventions
    "interventions": 7,
    # metrics, tasks, techniques (and the helpers built on them)
    "metrics": 8, "tasks": 8, "tasks._args": 8, "tasks.comparison": 8, "tasks.facts": 8,
    "tasks.greater_than": 8, "tasks.probing_data": 8,
    "techniques": 8, "techniques.effects": 8, "techniques.erasure": 8, "techniques.future": 8,
    "techniques.planning": 8, "techniques.probing": 8, "techniques.circuits": 8,
    "techniques.patching": 8,
    # the mechanism checkup's tasks and detectors
    "tasks.induction": 8, "tasks.ioi": 8, "tasks.ordinal": 8,
    "techniques.heads": 8, "techniques.ioi": 8, "techniques.ov": 8,
    "checkup": 9, "finetune": 9, "zoo": 9, "zoo_tasks": 9, "zoo_heads": 9,
    "baselines": 9, "plots": 9, "strategies": 9, "cli": 9, "_report": 9, "merge": 9,
    # pytest only here
    "_session": 10, "checkup_claims": 10,
    "plugin": 11,
    # the public API and the command's entry point
    "": 12, "__main__": 12,
}


def modules(root: Path) -> dict[str, Path]:
    """Module name relative to the package ("" for its ``__init__``) -> file."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (functions included);
    "" is the package's ``__init__``."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if name else []
    top = PACKAGE.name
    found: set[str] = set()

    def nearest(t: str) -> str:
        while t and t not in known:
            t = t.rpartition(".")[0]
        return t

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == top or a.name.startswith(top + "."):
                    found.add(nearest(a.name[len(top) + 1:]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = here if is_pkg else here[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                prefix = ".".join(anchor + ([node.module] if node.module else []))
            elif node.module == top or (node.module or "").startswith(top + "."):
                prefix = node.module[len(top) + 1:]
            else:
                continue
            for a in node.names:
                sub = f"{prefix}.{a.name}" if prefix else a.name
                # ``from .x import y``: the module x.y when there is one, else a name of x.
                found.add(sub if sub in known else nearest(prefix))
    found.discard(name)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    mods = modules(root)
    return {m: imports(m, f, set(mods)) for m, f in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def problems(root: Path, layers: dict[str, int] = LAYERS) -> list[str]:
    """Every layering problem of the package at ``root``: modules missing from the table,
    upward imports, cycles."""
    g = graph(root)
    out = [f"{m or '__init__'}: not in LAYERS (give it a layer)" for m in sorted(g) if m not in layers]
    for m in sorted(g):
        for t in sorted(g[m]):
            if m in layers and t in layers and layers[t] > layers[m]:
                out.append(f"{m or '__init__'} (layer {layers[m]}) imports {t or '__init__'} "
                           f"(layer {layers[t]}): an upward import")
    out += [f"import cycle: {' -> '.join(c)}" for c in cycles(g)]
    return out


def test_the_package_is_layered() -> None:
    assert problems(PACKAGE) == []


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / PACKAGE.name
    shutil.copytree(PACKAGE, dest, ignore=shutil.ignore_patterns("__pycache__", "data"))
    return dest


def test_an_upward_function_level_import_is_reported(tmp_path: Path) -> None:
    """The checker would fail: the store importing interventions inside a function (the
    back-edge this package used to have) is an upward import and a cycle."""
    root = _copy(tmp_path)
    store = root / "store.py"
    store.write_text(store.read_text() + "\n\ndef _injected():\n    from .interventions import as_intervention\n"
                     "    return as_intervention\n")
    found = problems(root)
    assert "store (layer 6) imports interventions (layer 7): an upward import" in found
    assert any(p.startswith("import cycle:") and "interventions" in p and "store" in p for p in found)


def test_an_absolute_import_of_the_plugin_is_reported(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "models.py").write_text((root / "models.py").read_text()
                                    + "\n\ndef _injected():\n    import pytest_circuits.plugin\n")
    found = problems(root)
    assert "models (layer 5) imports plugin (layer 11): an upward import" in found


def test_a_cycle_within_one_layer_is_reported() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]


def test_a_module_missing_from_the_table_is_reported(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "newthing.py").write_text("from .errors import bad\n")
    assert "newthing: not in LAYERS (give it a layer)" in problems(root)


@pytest.mark.parametrize("source, expected", [
    ("from . import hooks as H\n", {"hooks"}),
    ("from .store import resolve\n", {"store"}),
    ("import pytest_circuits.store\n", {"store"}),
    ("from pytest_circuits.techniques import circuits\n", {"techniques.circuits"}),
    ("def f():\n    from . import __version__\n", {""}),    # the package __init__: the top layer
])
def test_imports_are_resolved(tmp_path: Path, source: str, expected: set[str]) -> None:
    root = _copy(tmp_path)
    path = root / "probe.py"
    path.write_text(source)
    mods = set(modules(root))
    assert imports("probe", path, mods) == expected
