"""What a claim's source declares, read with :mod:`ast` (never imported, never run).

``pytest-circuits merge`` trusts a report's ``xfailed``, ``expected change``, ``not checked``,
a tolerance other than the run's default and an accepted wide tolerance only where the
claim's source says so; and it finds the claims of a file that no report collected. It reads
the files of its checkout for that, after checking each one's sha256 against the report's.

What is recognised (the forms the docs use; anything else counts as "not declared", so a
claim written another way fails the merged gate rather than passing unchecked):

* markers as decorators ``@pytest.mark.NAME(...)`` or ``@mark.NAME(...)`` on the function,
  on its class, or in a module's or class's ``pytestmark = ...`` (a list or one marker);
  a marker nested in a decorator (``pytest.param(..., marks=pytest.mark.xfail)``) counts
  for ``xfail`` and ``skip``/``skipif``;
* ``pytest.xfail(...)``, ``pytest.skip(...)``, ``pytest.importorskip(...)`` called in the
  function's body;
* a claim: a test function (pytest's ``python_functions`` patterns, in a module or in a
  class matching ``python_classes``) with a ``claim`` marker or a ``model`` argument.

Nothing here imports pytest or torch.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

DEFAULT_FUNCTIONS = ("test",)
DEFAULT_CLASSES = ("Test",)


@dataclass(frozen=True)
class Marker:
    """One ``pytest.mark.NAME(...)``: its arguments when they are literals (else ``literal`` is False)."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    literal: bool = True
    level: str = "function"       # "function", "class" or "module"
    nested: bool = False          # inside another decorator (e.g. pytest.param(..., marks=...))


@dataclass
class Function:
    """A test function of a file: its markers (closest first) and what its body calls."""

    name: str
    cls: str | None
    args: tuple[str, ...]
    markers: list[Marker]
    calls: set[str]               # pytest.xfail / skip / importorskip / fail... called in the body

    @property
    def key(self) -> str:
        return f"{self.cls}::{self.name}" if self.cls else self.name

    @property
    def is_claim(self) -> bool:
        return "model" in self.args or any(m.name == "claim" and not m.nested for m in self.markers)

    def closest(self, name: str) -> Marker | None:
        """The closest top-level marker ``name`` (function, then class, then module), as pytest's
        ``get_closest_marker``."""
        return next((m for m in self.markers if m.name == name and not m.nested), None)

    def all(self, name: str, nested: bool = False) -> list[Marker]:
        return [m for m in self.markers if m.name == name and (nested or not m.nested)]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """pytest's rule for python_functions / python_classes: a prefix, or a glob when it has one."""
    return any(fnmatch.fnmatch(name, p) if any(c in p for c in "*?[") else name.startswith(p) for p in patterns)


def _mark_name(node: ast.AST) -> str | None:
    """``NAME`` of ``pytest.mark.NAME`` / ``mark.NAME`` (called or not), else None."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        base = node.value
        if (isinstance(base, ast.Attribute) and base.attr == "mark") or (isinstance(base, ast.Name)
                                                                         and base.id == "mark"):
            return node.attr
    return None


def _marker(node: ast.AST, level: str, nested: bool = False) -> Marker | None:
    name = _mark_name(node)
    if name is None:
        return None
    if not isinstance(node, ast.Call):
        return Marker(name, (), {}, True, level, nested)
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        literal = all(k.arg is not None for k in node.keywords)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        args, kwargs, literal = (), {}, False
    return Marker(name, args, kwargs, literal, level, nested)


def _markers_of(exprs: Iterable[ast.AST], level: str) -> list[Marker]:
    """The markers of decorator (or ``pytestmark``) expressions; those nested inside another
    expression (``pytest.param(..., marks=pytest.mark.xfail)``) are marked ``nested``."""
    out = []
    for e in exprs:
        top = _marker(e, level)
        if top is not None:
            out.append(top)
        funcs = {id(n.func) for n in ast.walk(e) if isinstance(n, ast.Call)}
        for sub in ast.walk(e):
            if sub is e or id(sub) in funcs or not isinstance(sub, (ast.Call, ast.Attribute)):
                continue
            m = _marker(sub, level, nested=True)
            if m is not None:
                out.append(m)
    return out


def _pytestmark(body: Sequence[ast.stmt], level: str) -> list[Marker]:
    out = []
    for stmt in body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets) and stmt.value is not None:
                value = stmt.value
                items = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
                out += _markers_of(items, level)
    return out


def _calls(fn: ast.AST) -> set[str]:
    """The ``pytest.X(...)`` / ``X(...)`` names called in a function body (xfail, skip, importorskip...)."""
    out = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute):
                out.add(f.attr)
            elif isinstance(f, ast.Name):
                out.add(f.id)
    return out


def _args(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    a = fn.args
    return tuple(x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs))


def functions(text: str, *, python_functions: Sequence[str] = DEFAULT_FUNCTIONS,
              python_classes: Sequence[str] = DEFAULT_CLASSES) -> dict[str, Function]:
    """The test functions of a file's source, by ``"name"`` or ``"Class::name"``.

    Raises SyntaxError / ValueError for a file that does not parse."""
    tree = ast.parse(text)
    module = _pytestmark(tree.body, "module")
    out: dict[str, Function] = {}

    def add(fn: ast.FunctionDef | ast.AsyncFunctionDef, cls: str | None, class_markers: list[Marker]) -> None:
        if not _matches(fn.name, python_functions):
            return
        f = Function(fn.name, cls, _args(fn), _markers_of(fn.decorator_list, "function") + class_markers + module,
                     _calls(fn))
        out[f.key] = f

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            add(node, None, [])
        elif isinstance(node, ast.ClassDef) and _matches(node.name, python_classes):
            cm = _markers_of(node.decorator_list, "class") + _pytestmark(node.body, "class")
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    add(sub, node.name, cm)
    return out


def split_nodeid(nodeid: str) -> tuple[str, str, str]:
    """``(file, "Class::name" or "name", params)`` of a node id (params without brackets)."""
    path, _, rest = nodeid.partition("::")
    head, bracket, params = rest.partition("[")
    return path, head, params[:-1] if bracket and params.endswith("]") else ""


def declares_expected_change(fn: Function, model: str, params: str = "") -> bool:
    """``@pytest.mark.expect_change("model", reason=...)`` for this model (literal arguments)."""
    for m in fn.all("expect_change"):
        if m.literal and m.args and isinstance(m.args[0], str) and "reason" in m.kwargs:
            if _same_model(m.args[0], model, params):
                return True
    return False


def _same_model(named: str, model: str, params: str) -> bool:
    """Whether a marker's model name is this claim's model: its name, a checkpoint folder's base
    name, or one of the node id's parameters (joined by "-", so a name may hold "-" too)."""
    base = named.rstrip("/").rsplit("/", 1)[-1]
    wrapped = f"-{params}-"
    return bool(named) and (named == model or base == model or (bool(params) and (f"-{named}-" in wrapped
                                                                 or f"-{base}-" in wrapped)))


def declares_xfail(fn: Function) -> bool:
    """An ``xfail`` marker (any level, also inside ``pytest.param``) or ``pytest.xfail(...)`` in the body."""
    return bool(fn.all("xfail", nested=True)) or "xfail" in fn.calls


def declares_skip(fn: Function) -> bool:
    """A ``skip``/``skipif`` marker or a ``skip``/``importorskip`` call in the body."""
    return bool(fn.all("skip", nested=True) or fn.all("skipif", nested=True)) or bool({"skip", "importorskip"}
                                                                                        & fn.calls)


def declares_optional_model(fn: Function, model: str, params: str = "") -> bool:
    """``@pytest.mark.model(..., optional="why")`` naming this model."""
    m = fn.closest("model")
    return bool(m and m.literal and m.kwargs.get("optional") and any(isinstance(a, str) and _same_model(a, model, params)
                                                                    for a in m.args))


def skip_anywhere(text: str) -> bool:
    """Whether a module's source calls or marks a skip anywhere (a fixture of a conftest.py may skip)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        name = (node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None)
        if name in ("skip", "skipif", "importorskip"):
            return True
    return False
