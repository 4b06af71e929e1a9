"""The package's layers, enforced: every import (module-level and inside functions,
relative and absolute, and the dynamic ones) goes to the same layer or a lower one, and no
imports form a cycle.

An edge is any of: an ``import`` / ``from ... import`` statement anywhere in a file; a call
``importlib.import_module("...")`` (or ``__import__``) with a literal name; a string
``".module:function"`` or ``"pytest_circuits.module:function"`` (the "module:function"
convention of lazily imported callables); and, for the modules in :data:`DYNAMIC`, the
names in the table their computed imports read. Any other computed import of a module fails
``test_every_dynamic_import_is_seen``. (Not edges: ``Path(__file__).with_name("x.py")``,
which the plugin hands to pytest to collect and the merge reads as text.)

The table below is the one place that says which layer a module is in (DESIGN: leaves ->
data and numbers -> models -> store -> interventions -> metrics, tasks, techniques ->
_session -> plugin). A new module must be added to it, or the test fails; docs/layout.md's
layer listing is drawn from it (``python tests/unit/test_layers.py --write`` rewrites it,
``test_layout_md_lists_every_module_in_its_layer`` checks it).
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
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
    "measurement": 4, "ledger": 4, "figures": 4,
    # models: the registry, weights (conversion, fingerprints), loading; models re-exports them
    "registry": 5, "weights": 5, "loading": 5, "models": 5, "detection": 5, "scores": 5,
    # the activation store: its cache (keys, memory, disk), the forward executor built on it
    # (ActivationStore), and store, which re-exports both and keeps the current store
    "activation_cache": 6, "forwards": 6, "store": 6, "planted": 6,
    # interventions
    "interventions": 7,
    # metrics, tasks, techniques (and the helpers built on them)
    "metrics": 8, "tasks": 8, "tasks._args": 8, "tasks.comparison": 8, "tasks.facts": 8,
    "tasks.greater_than": 8, "tasks.logit_difference": 8, "tasks.probing_data": 8,
    "techniques": 8, "techniques.effects": 8, "techniques.erasure": 8, "techniques.future": 8,
    "techniques.planning": 8, "techniques.probing": 8, "techniques.circuits": 8,
    "techniques.patching": 8, "techniques.edges": 8, "techniques.edge_stability": 8, "techniques.edge_pruning": 8,
    "techniques.edge_picture": 8,
    # the mechanism checkup's tasks and detectors
    "tasks.induction": 8, "tasks.ioi": 8, "tasks.ordinal": 8,
    "techniques.heads": 8, "techniques.ioi": 8, "techniques.ov": 8, "techniques.greater_than_detector": 8,
    "techniques.factual_recall": 8,
    "checkup": 9, "finetune": 9, "zoo": 9, "zoo_tasks": 9, "zoo_heads": 9,
    "baselines": 9, "plots": 9, "strategies": 9, "cli": 9, "report": 9, "report.cards": 9, "merge": 9,
    # pytest only here
    "_session": 10, "checkup_claims": 10, "_stash": 10, "_options": 10, "_verdicts": 10,
    "plugin": 11,
    # the public API and the command's entry point
    "": 12, "__main__": 12,
}

#: what each layer holds, in words (docs/layout.md's listing)
LAYER_NAMES: dict[int, str] = {
    0: "the error hierarchy",
    1: "leaves: component names, defaults, shard assignment, file formats, progress, claim sources",
    2: "hook names, protocols, devices, the cache's storage",
    3: "data and numbers: prompt sets, statistics, architectures, tiny test models",
    4: "the measurement and its ledger record",
    5: "models: registry, loading, weights; what a detector returns, what a technique scores per component",
    6: "the activation store",
    7: "interventions",
    8: "metrics, tasks, techniques (the mechanism detectors among them)",
    9: "the checkup, baselines, reports, merge and tools built on them",
    10: "the run's session and ledger, its options, verdicts and stash keys; the checkup's claims",
    11: "the plugin's hooks",
    12: "the public API and the command's entry point",
}

#: modules whose computed imports (``importlib.import_module(name)`` with ``name`` computed)
#: are known: the value names the dict literal in the module whose entries are the imported
#: modules (``{attribute: module, or None for the attribute itself}``), or None where the
#: names come from outside the package (a team's own ``"module:function"`` detector).
DYNAMIC: dict[str, str | None] = {
    "": "_LAZY",        # the package's lazy attributes
    "checkup": None,    # Check.function: a team's own detector named as "module:function"
}

_DYNAMIC_CALLS = {"import_module", "__import__", "find_spec", "spec_from_file_location", "run_module",
                  "import_plugin"}
#: "module:function", relative or absolute within the package
_MODULE_FUNCTION = re.compile(r"^(?P<mod>\.+[A-Za-z_][\w.]*|\.+|pytest_circuits(\.[A-Za-z_]\w*)*):[A-Za-z_]\w*$")


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

    def named(text: str) -> str | None:
        """The project module a dotted name (relative to this file, or absolute) stands for."""
        if text.startswith("."):
            level = len(text) - len(text.lstrip("."))
            anchor = here if is_pkg else here[:-1]
            anchor = anchor[: len(anchor) - (level - 1)]
            rest = text[level:]
            return nearest(".".join(anchor + ([rest] if rest else [])))
        if text == top or text.startswith(top + "."):
            return nearest(text[len(top) + 1:])
        return None

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _call_name(node) in _DYNAMIC_CALLS:
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and named(arg.value) is not None:
                found.add(named(arg.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = _MODULE_FUNCTION.match(node.value)
            if m and named(m["mod"]) is not None:
                found.add(named(m["mod"]))
        elif isinstance(node, ast.Assign) and DYNAMIC.get(name) and isinstance(node.value, ast.Dict) \
                and any(isinstance(t, ast.Name) and t.id == DYNAMIC[name] for t in node.targets):
            for k, v in zip(node.value.keys, node.value.values):
                target = v.value if isinstance(v, ast.Constant) and v.value is not None else \
                    k.value if isinstance(k, ast.Constant) else None
                if isinstance(target, str) and named("." + target) is not None:
                    found.add(named("." + target))
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


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def hidden_imports(root: Path, dynamic: dict[str, str | None] = DYNAMIC) -> list[str]:
    """Every computed import (a dynamic import call whose name is not a literal string) in a
    module that :data:`DYNAMIC` does not list, and every table :data:`DYNAMIC` names that
    the module lacks."""
    out = []
    for name, path in modules(root).items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) in _DYNAMIC_CALLS:
                arg = node.args[0] if node.args else None
                literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                if not literal and name not in dynamic:
                    out.append(f"{name or '__init__'}:{node.lineno}: {_call_name(node)}() of a computed name "
                               "(an import the layer check cannot see)")
        table = dynamic.get(name)
        if table and not any(isinstance(n, ast.Assign) and isinstance(n.value, ast.Dict)
                             and any(isinstance(t, ast.Name) and t.id == table for t in n.targets)
                             for n in ast.walk(tree)):
            out.append(f"{name or '__init__'}: DYNAMIC names the table {table!r}, which it does not define")
    return out


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


def test_every_dynamic_import_is_seen() -> None:
    assert hidden_imports(PACKAGE) == []
    g = graph(PACKAGE)
    # the checkup's detectors and the package's lazy attributes are edges like any import
    assert {"techniques.heads", "techniques.ioi", "techniques.ov"} <= g["checkup"]
    assert {"measurement", "prompts", "store", "models", "techniques.circuits", "techniques.patching",
            "metrics", "tasks", "techniques"} <= g[""]


def test_a_computed_import_is_reported(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    store = root / "store.py"
    store.write_text(store.read_text() + "\n\ndef _injected(x):\n    import importlib\n"
                     "    return importlib.import_module('.' + x, __package__)\n")
    found = hidden_imports(root)
    assert len(found) == 1 and found[0].startswith("store:") and "computed name" in found[0]


@pytest.mark.parametrize("source", [
    "def _injected():\n    import importlib\n    return importlib.import_module('.plugin', __package__)\n",
    "def _injected():\n    return __import__('pytest_circuits.plugin')\n",
    "DETECTOR = '.plugin:pytest_configure'\n",
    "DETECTOR = 'pytest_circuits.plugin:pytest_configure'\n",
])
def test_a_string_import_upwards_is_reported(tmp_path: Path, source: str) -> None:
    root = _copy(tmp_path)
    models = root / "models.py"
    models.write_text(models.read_text() + "\n\n" + source)
    assert "models (layer 5) imports plugin (layer 11): an upward import" in problems(root)


def test_a_lazy_table_entry_is_an_edge(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    init = root / "__init__.py"
    init.write_text(init.read_text().replace('"ActivationStore": "store",', '"ActivationStore": "store",\n'
                                             '    "Foo": "newthing",'))
    (root / "newthing.py").write_text("from . import plugin\n")
    g = graph(root)
    assert "newthing" in g[""] and "newthing: not in LAYERS (give it a layer)" in problems(root)


# ----------------------------------------------------------------------------- docs/layout.md
LAYOUT = PACKAGE.parent / "docs" / "layout.md"
_BEGIN = "<!-- layers: generated from tests/unit/test_layers.py (python tests/unit/test_layers.py --write) -->"
_END = "<!-- layers: end -->"


def _display(module: str) -> str:
    if module == "":
        return "__init__.py"
    path = module.replace(".", "/")
    return f"{path}/" if (PACKAGE / path).is_dir() else f"{path}.py"


def render_layers(layers: dict[str, int] = LAYERS) -> str:
    """The layer listing of docs/layout.md: one paragraph per layer, lowest first."""
    lines = [_BEGIN, "", "| layer | holds | modules |", "|---|---|---|"]
    for level in sorted(set(layers.values())):
        mods = sorted((m for m, n in layers.items() if n == level), key=lambda m: (m != "", m))
        lines.append(f"| {level} | {LAYER_NAMES[level]} | {', '.join(f'`{_display(m)}`' for m in mods)} |")
    return "\n".join([*lines, "", _END])


def _with_listing(text: str, listing: str) -> str:
    start, end = text.index(_BEGIN), text.index(_END) + len(_END)
    return text[:start] + listing + text[end:]


def listed_layers(text: str) -> dict[str, int]:
    """Module -> layer, as docs/layout.md's listing states it."""
    start, end = text.index(_BEGIN), text.index(_END)
    out: dict[str, int] = {}
    for row in text[start:end].splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            for shown in re.findall(r"`([^`]+)`", cells[2]):
                mod = "" if shown == "__init__.py" else shown.removesuffix(".py").removesuffix("/").replace("/", ".")
                out[mod] = int(cells[0])
    return out


def test_layout_md_lists_every_module_in_its_layer() -> None:
    text = LAYOUT.read_text(encoding="utf-8")
    assert listed_layers(text) == LAYERS, "docs/layout.md is stale: run python tests/unit/test_layers.py --write"
    assert set(LAYER_NAMES) == set(LAYERS.values())
    assert _with_listing(text, render_layers()) == text


def test_a_stale_layout_md_is_reported() -> None:
    text = LAYOUT.read_text(encoding="utf-8")
    moved = dict(LAYERS, models=9)
    assert listed_layers(_with_listing(text, render_layers(moved))) != LAYERS
    missing = {m: n for m, n in LAYERS.items() if m != "merge"}
    assert "merge" not in listed_layers(_with_listing(text, render_layers(missing)))


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


#: test helpers and tools: never on the core import path (``import pytest_circuits`` and the
#: plugin pytest loads in every run of the environment), imported only by whoever uses them
OFF_THE_CORE_PATH = ("testing", "planted", "strategies", "finetune", "merge", "cli", "zoo", "checkup")


def test_the_core_import_path_leaves_out_test_helpers_and_tools() -> None:
    import json
    import subprocess

    code = ("import json, sys, pytest_circuits, pytest_circuits.plugin; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('pytest_circuits.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    loaded = {m.split(".", 1)[1] for m in json.loads(out.stdout)}
    assert "plugin" in loaded and "errors" in loaded      # the probe sees what was imported
    assert not loaded & set(OFF_THE_CORE_PATH), sorted(loaded & set(OFF_THE_CORE_PATH))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        LAYOUT.write_text(_with_listing(LAYOUT.read_text(encoding="utf-8"), render_layers()), encoding="utf-8")
    else:
        print(render_layers())
