"""Write docs/api.md, the API reference, from the package's docstrings.

    python scripts/api_reference.py           # rewrite docs/api.md
    python scripts/api_reference.py --check   # exit 1 (saying why) when docs/api.md is not current

The page lists every public name of ``pytest_circuits.__all__`` and of each module in
:data:`MODULES`: a module's ``__all__`` where it has one, else every top-level function,
class and constant whose name does not start with ``_`` and that the module defines itself
(not imports). A class lists its public methods and properties and the operators it
documents (``__sub__``...). Every module of the package is either in :data:`MODULES`, private
(a leading ``_``) or in :data:`INTERNAL` with the reason; tests/unit/test_api_reference.py
checks the page is complete (against its own reading of the sources) and current.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"
PACKAGE = "pytest_circuits"

#: the documented modules, in the page's order
MODULES = [
    "components", "measurement", "scores", "ledger", "figures", "prompts", "models", "registry", "weights", "loading", "store", "activation_cache", "forwards", "hooks", "interventions", "metrics",
    "tasks", "tasks.comparison", "tasks.facts", "tasks.greater_than", "tasks.induction", "tasks.ioi",
    "tasks.logit_difference",
    "tasks.ordinal", "tasks.probing_data",
    "techniques", "techniques.effects", "techniques.patching", "techniques.edges", "techniques.edge_pruning", "techniques.edge_stability", "techniques.edge_picture", "techniques.circuits", "techniques.heads",
    "techniques.ioi", "techniques.ov", "techniques.greater_than_detector", "techniques.factual_recall", "techniques.erasure", "techniques.probing", "techniques.future",
    "techniques.planning",
    "checkup", "detection", "baselines", "merge", "shards", "stats", "devices", "architectures", "moe", "protocols",
    "strategies", "plots", "testing", "planted", "zoo", "finetune", "cli", "errors",
]
#: the package's modules that are not on the page, and why
INTERNAL = {
    "plugin": "pytest's hooks; its fixtures (model, activations, circuits_session) are listed under `plugin` fixtures",
    "checkup_claims": "the claims --circuits-checkup collects (a test file)",
    "report": "the run's report files (JSON ledger, Markdown, HTML; format: data/report.schema.json, "
              "docs/reports-and-baselines.md), written by the plugin and the merge",
    "report.cards": "the checkup's mechanism cards rendered for the terminal and the reports (docs/checkup.md)",
    "__main__": "runs the command line (cli)",
    "blobs": "the cache's storage, used by the store and the models (docs/remote-cache.md)",
    "cachefiles": "the cache folder's files, used by the store and the models",
    "cachekey": "the team key of a shared cache (docs/trust.md)",
    "sources": "what a claim's source declares, read by the merge",
    "config": "defaults every layer reads (their options are in docs/options.md)",
    "zoo_heads": "the zoo's attention-head checkpoints (built through zoo)",
    "zoo_tasks": "the zoo's task checkpoints (built through zoo)",
}
#: module constants that are the package's run-time state (a counter that grows as models are
#: used): shown empty, as at import, so the page does not depend on what ran before it
RUN_TIME_STATE = {"models.derived_counts": "name -> times computed",
                  "registry.derived_counts": "name -> times computed"}
#: module constants whose value depends on the environment the page is built in (a hypothesis
#: ``settings`` takes every field it does not set from the profile loaded at import, and hypothesis
#: loads its "ci" profile when ``CI`` is set): shown as what the module states, so the page is the
#: same on a laptop and in CI
ENVIRONMENT = {"strategies.model_settings": "settings(max_examples=10, deadline=None, "
               "suppress_health_check=[HealthCheck.too_slow]), every other field from the hypothesis "
               "profile loaded at import"}
#: operators a class documents on the page when it gives them a docstring
OPERATORS = {"__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__neg__",
             "__call__", "__getitem__", "__iter__", "__len__", "__contains__", "__lt__", "__gt__", "__eq__"}
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def all_modules() -> list[str]:
    """Every module of the package, relative to it ("" for the package itself)."""
    root = ROOT / PACKAGE
    out = []
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def _stable(value: Any, depth: int = 0) -> str:
    """repr with sets sorted (their order changes from run to run)."""
    if depth > 3:
        return "..."
    if isinstance(value, (set, frozenset)):
        inner = ", ".join(sorted(_stable(v, depth + 1) for v in value))
        return f"{type(value).__name__}({{{inner}}})" if value else f"{type(value).__name__}()"
    if isinstance(value, tuple):
        inner = ", ".join(_stable(v, depth + 1) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(_stable(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_stable(k, depth + 1)}: {_stable(v, depth + 1)}" for k, v in value.items()) + "}"
    # no checkout's own folder on the page (it would change with every clone or worktree)
    return _ADDRESS.sub("", repr(value)).replace(str(ROOT) + "/", "")


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _annotation(a: Any) -> str:
    if isinstance(a, str):
        return a.strip("'\"")
    if hasattr(a, "__forward_arg__"):
        return a.__forward_arg__
    return a.__name__ if isinstance(a, type) else repr(a).replace("typing.", "")


def _signature(obj: Any) -> str:
    """The call signature as written in the source (annotations unquoted, defaults stable)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parts, star_done = [], False
    params = list(sig.parameters.values())
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += (" = " if p.annotation is not p.empty else "=") + _short(_stable(p.default), 60)
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    out = "(" + ", ".join(parts) + ")"
    if sig.return_annotation is not sig.empty:
        out += f" -> {_annotation(sig.return_annotation)}"
    return out


def _doc(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip()


def _block(text: str) -> list[str]:
    if not text:
        return ["*(no docstring)*", ""]
    return ["```text", *text.replace("```", "'''").splitlines(), "```", ""]


def _source_comments(module: Any) -> dict[str, str]:
    """Top-level assignment name -> its ``#:`` comment lines (above it) or its trailing comment."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    out: dict[str, str] = {}
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if not isinstance(t, ast.Name):
                continue
            above, i = [], node.lineno - 2
            while i >= 0 and lines[i].lstrip().startswith("#:"):
                above.insert(0, lines[i].lstrip()[2:].strip())
                i -= 1
            trailing = ""
            m = re.search(r"#\s*(.*)$", lines[node.end_lineno - 1])
            if m and not above and '"' not in lines[node.end_lineno - 1].split("#")[0][-1:]:
                trailing = m.group(1).strip()
            out[t.id] = " ".join(above) or trailing
    return out


def _assigned(module: Any) -> list[str]:
    """The names a module assigns at its top level (its constants), in order."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return []
    names: list[str] = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name) and t.id not in names:
                names.append(t.id)
    return names


def public_names(module: Any) -> list[str]:
    """A module's public names: its ``__all__``, else what it defines without a leading ``_``."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if (_function(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__:
            out.append(name)
    out += [n for n in _assigned(module) if not n.startswith("_") and n not in out and n != "__all__"]
    return out


def _function(obj: Any) -> bool:
    """A function, or a function wrapped by a decorator (``functools.lru_cache``...)."""
    return inspect.isfunction(obj) or (callable(obj) and inspect.isfunction(getattr(obj, "__wrapped__", None)))


def members(cls: type) -> list[str]:
    """The methods, properties and documented operators a class defines itself (under their
    own name: ``__rmul__ = __mul__`` is ``__mul__``'s)."""
    out = []
    for name, value in vars(cls).items():
        raw = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        if name.startswith("_") and not (name in OPERATORS and getattr(raw, "__doc__", None)
                                         and getattr(raw, "__name__", "") == name):
            continue
        if _function(raw) or isinstance(value, (property, functools.cached_property)):
            out.append(name)
    return out


def _anchor(qualname: str) -> str:
    return qualname.lower().replace(".", "").replace("_", "_")


def _home(obj: Any) -> str | None:
    """``module.name`` where ``obj`` is defined, for a class or function of the package."""
    mod = getattr(obj, "__module__", None) or ""
    if (inspect.isclass(obj) or _function(obj)) and mod.startswith(PACKAGE + "."):
        return f"{mod[len(PACKAGE) + 1:]}.{obj.__qualname__}"
    if inspect.ismodule(obj) and obj.__name__.startswith(PACKAGE + "."):
        return obj.__name__[len(PACKAGE) + 1:]
    return None


def _entry(modname: str, name: str, obj: Any, comments: dict[str, str]) -> list[str]:
    qual = f"{modname}.{name}" if modname else name
    home = _home(obj)
    if home is not None and home != qual and home.rsplit(".", 1)[0] != modname:
        what = "module" if inspect.ismodule(obj) else "the same object as"
        return [f"### `{qual}`", "", f"{what} `{home}`.", ""]
    if inspect.isclass(obj):
        kind = ("exception" if issubclass(obj, BaseException) else "enum" if issubclass(obj, enum.Enum)
                else "dataclass" if dataclasses.is_dataclass(obj) else "class")
        bases = [b.__name__ for b in obj.__bases__ if b is not object]
        lines = [f"### `{qual}`", "", f"*{kind}*" + (f" ({', '.join(bases)})" if bases else ""), ""]
        if not issubclass(obj, BaseException):
            lines += [f"`{name}{_signature(obj)}`", ""]
        lines += _block(_doc(obj))
        for m in members(obj):
            value = vars(obj)[m]
            if isinstance(value, (property, functools.cached_property)):
                lines += [f"#### `{qual}.{m}`", "", "*property*", "", *_block(_doc(value))]
            else:
                raw = inspect.unwrap(value.__func__ if isinstance(value, (classmethod, staticmethod)) else value)
                kind = "classmethod" if isinstance(value, classmethod) else "staticmethod" \
                    if isinstance(value, staticmethod) else "method"
                lines += [f"#### `{qual}.{m}`", "", f"*{kind}* `{m}{_signature(raw)}`", "", *_block(_doc(raw))]
        return lines
    if _function(obj) or inspect.isbuiltin(obj):
        func = inspect.unwrap(obj)
        return [f"### `{qual}`", "", f"*function* `{name}{_signature(func)}`", "", *_block(_doc(func))]
    comment = comments.get(name, "")
    if qual in ENVIRONMENT:
        return [f"### `{qual}`", "", f"*constant* = `{ENVIRONMENT[qual]}`", "", *([comment, ""] if comment else [])]
    if type(obj).__module__.startswith("hypothesis"):
        raise SystemExit(f"{qual} is a hypothesis object whose repr depends on the loaded profile (CI loads "
                         "another): state what the module sets in ENVIRONMENT")
    shown = type(obj)() if qual in RUN_TIME_STATE else obj
    value = "`" + _short(_stable(shown)).replace("`", "'") + "`"
    return [f"### `{qual}`", "", f"*constant* = {value}", "", *([comment, ""] if comment else [])]


def _fixtures() -> list[str]:
    plugin = importlib.import_module(f"{PACKAGE}.plugin")
    lines = ["## Fixtures (`pytest_circuits.plugin`)", "",
             "What a claim asks for by argument name (the plugin registers them with pytest).", ""]
    for name, obj in vars(plugin).items():
        fixture = getattr(obj, "_fixture_function_marker", None) or getattr(obj, "_pytestfixturefunction", None)
        if fixture is None:
            continue
        func = getattr(obj, "_fixture_function", None) or getattr(obj, "__wrapped__", obj)
        scope = getattr(fixture, "scope", "function")
        lines += [f"### `plugin.{name}`", "", f"*fixture* (scope {scope})", "", *_block(_doc(func))]
    return lines


def render() -> str:
    top = importlib.import_module(PACKAGE)
    out = ["# API reference", "",
           "Generated from the docstrings by `python scripts/api_reference.py` (do not edit by hand);",
           "tests/unit/test_api_reference.py checks that it lists every public name and is current.",
           "Each module's section lists its public names: its `__all__`, else every function, class and",
           "constant it defines without a leading underscore; a class lists its methods, properties and",
           "documented operators. Docstrings are shown as written.", "",
           "Modules: " + ", ".join(f"[`{m}`](#{_anchor(PACKAGE + '.' + m)})" for m in MODULES) + ".", "",
           "Not on this page (internal): " + "; ".join(f"`{m}` ({why})" for m, why in INTERNAL.items()) + ".",
           "", f"## `{PACKAGE}`", "", *_block(_doc(top))]
    for name in top.__all__:
        out += _entry("", name, getattr(top, name), {})
    for modname in MODULES:
        module = importlib.import_module(f"{PACKAGE}.{modname}")
        out += [f"## `{PACKAGE}.{modname}`", "", *_block(_doc(module))]
        comments = _source_comments(module)
        for name in public_names(module):
            out += _entry(modname, name, getattr(module, name), comments)
    out += _fixtures()
    text = "\n".join(out).rstrip() + "\n"
    return re.sub(r"\n{3,}", "\n\n", text)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    text = render()
    if argv == ["--check"]:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE.relative_to(ROOT)} is not current: run python scripts/api_reference.py", file=sys.stderr)
            return 1
        return 0
    if argv:
        print(textwrap.dedent(__doc__), file=sys.stderr)
        return 2
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
