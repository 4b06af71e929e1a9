"""Per-component scores: one layout and one vocabulary for every technique that gives each
component of a model (heads, MLPs, attention layers, experts, the embedding) a value per prompt.

**Layout.** A :class:`ComponentScores` holds ``components``, a tuple of keys (a
:class:`~pytest_circuits.components.Component`, or for a by-position sweep a
``(component, position)`` pair), and ``values``, a float64 torch tensor ``[C, n]``: row ``i``
is ``components[i]``'s value on each of the ``n`` prompts. Everything else is read from these
two:

* ``of(c)``: the per-prompt tensor ``[n]`` of a component (an attention layer ``attnL`` is the
  sum of its heads' rows, an MLP split into experts the sum of its experts);
* ``measure(c)``: the :class:`~pytest_circuits.measurement.Measurement` over prompts of
  ``of(c)``, named by the technique (``DE(L1H0)``, ``induction score L1H0``...);
* ``ranking(by=..., k=..., order=...)`` and ``top(k)``: rows ``(component, mean, rank)``
  (:class:`Ranked`) by the mean over prompts. **Sign convention**: ``order="largest"`` (the
  default) ranks by the *signed* mean, largest first; ``"smallest"`` smallest first;
  ``"abs"`` by ``|mean|``. Ties keep the order of ``components`` (forward order: lower layer,
  then lower head, first). ``by`` is the grain: ``"components"`` (the rows as they are),
  ``"heads"``, ``"attn"`` (each attention layer the sum of its heads), ``"mlp"``,
  ``"sublayers"`` (attention and MLP layers together), ``"layers"`` (whole blocks,
  :class:`Block`) and ``"experts"``;
* ``grid()``: the ``[n_layers, n_heads]`` numpy matrix of the heads' means (NaN where a head
  is not scored); ``grid(mlp=True)`` adds the MLPs as a last column;
* ``assert_top(components, by=...)`` / ``assert_in_top(component, k, by=...)``: fail (with
  the ranking printed) unless the named components are the top ``k`` (or among them), and with
  ``separated=True`` unless the interval of the paired difference from the next row is above 0.

A technique that needs more (the direct effects' identity check, a sweep's clean and corrupted
baselines) returns a subclass and inherits all of the above.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np

from .components import MLP, Attn, Component, Expert, Head, parse
from .errors import CircuitsError, ComponentError, MeasurementError, bad
from .measurement import Measurement

GRAINS = ("components", "heads", "attn", "mlp", "sublayers", "layers", "experts")
ORDERS = ("largest", "smallest", "abs")


@dataclass(frozen=True, order=True)
class Block(Component):
    """A whole transformer block in a ranking ``by="layers"``: its attention layer (the sum of
    its heads) plus its MLP. Spelled ``block23`` (``layer23`` and ``23`` are read too)."""

    layer: int

    def __str__(self) -> str:
        return f"block{self.layer}"

    def sort_key(self) -> tuple:
        return (self.layer, 3, str(self))


class _Pair(NamedTuple):
    component: Component
    mean: float


class Ranked(_Pair):
    """One row of a ranking: the component (a Head, Attn, MLP, Embed, Expert or Block), its
    mean over prompts, and ``rank``, its place (1 = first). Unpacks as ``component, mean``."""

    def __new__(cls, component: Component, mean: float, rank: int = 0) -> "Ranked":
        self = super().__new__(cls, component, mean)
        self.rank = rank
        return self

    @property
    def name(self) -> str:
        return key_str(self.component)

    def __repr__(self) -> str:
        return f"Ranked({self.rank}: {key_str(self.component)}, {self.mean:+.4g})"


def key_str(key: Any) -> str:
    """A component's name; a ``(component, position)`` key as ``"attn3@7"``."""
    if isinstance(key, tuple):
        return "@".join(str(x) for x in key)
    return str(key)


def rows_of(components: Sequence[Any], c: Any) -> list[int]:
    """Indices of ``c`` among ``components``: the key itself where it is one, else its parsed
    spelling; an attention layer is all of its heads, an MLP split into its experts all of its
    experts. Raises :class:`~pytest_circuits.errors.ComponentError` for anything else."""
    if not isinstance(c, (str, Component)):
        rows = [i for i, x in enumerate(components) if _same_key(x, c)]
        if rows:
            return rows
        raise ComponentError(bad("component", c, "a component scored here (e.g. "
                                 + ", ".join(key_str(x) for x in components[:3]) + ")"))
    comp = parse(c)
    if isinstance(comp, Attn):
        rows = [i for i, x in enumerate(components) if isinstance(x, Head) and x.layer == comp.layer]
    else:
        rows = [i for i, x in enumerate(components) if x == comp]
        if not rows and isinstance(comp, MLP):
            rows = [i for i, x in enumerate(components) if isinstance(x, Expert) and x.layer == comp.layer]
    if not rows and isinstance(comp, Expert):
        raise ComponentError(bad("component", str(comp), f"a writer of this decomposition, in which mlp{comp.layer} "
                                 "is one component: split mixture-of-experts layers into their experts with "
                                 "`experts=True` (effects.decompose)"))
    if not rows:
        raise ComponentError(bad("component", str(comp), "a component scored here (e.g. "
                                 + ", ".join(key_str(x) for x in components[:3]) + ")"))
    return rows


def _same_key(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:        # noqa: BLE001 - a key that cannot be compared is not this one
        return False


def _grain(components: Sequence[Any], values: Any, by: str, skip: set[int] = frozenset()
           ) -> tuple[list[Any], Any]:
    """Rows of ``values`` ``[C, n]`` summed to the grain ``by``; rows in ``skip`` left out of
    every row and sum. Returns the grain's components (forward order) and ``[R, n]``."""
    import torch

    if by not in GRAINS:
        raise CircuitsError(bad("by", by, f"one of {GRAINS}"))
    rows: dict[Any, list[int]] = {}
    for i, c in enumerate(components):
        if i in skip:
            continue
        if by == "components":
            key: Any = c
        elif by == "heads":
            key = c if isinstance(c, Head) else None
        elif by in ("attn", "sublayers") and isinstance(c, Head):
            key = Attn(c.layer)
        elif by in ("mlp", "sublayers") and isinstance(c, MLP):
            key = c
        elif by in ("mlp", "sublayers") and isinstance(c, Expert):
            key = MLP(c.layer)                 # a mixture of experts' MLP: the sum of its experts
        elif by == "experts" and isinstance(c, Expert):
            key = c
        elif by == "layers" and isinstance(c, (Head, MLP, Expert)):
            key = Block(c.layer)
        else:
            key = None
        if key is not None:
            rows.setdefault(key, []).append(i)
    if not rows:
        raise CircuitsError(bad("by", by, "a grain with at least one component left to rank"))
    keys = list(rows)
    groups = [rows[k] for k in keys]
    if all(len(g) == 1 for g in groups):
        # one row each (components, or edges by the hundred thousand): the rows themselves, in one
        # gather rather than a sum per row
        return keys, values[torch.tensor([g[0] for g in groups], dtype=torch.long)]
    return keys, torch.stack([values[g].sum(0) for g in groups])


def _spelled(c: Any, by: str) -> Any:
    """A name given to an assertion, as the grain's component (``"attn23"``, ``"L9H3"``,
    ``"block23"`` / ``"layer23"`` / ``23`` for ``by="layers"``)."""
    if isinstance(c, (Component, tuple)):
        return c
    if by == "layers":
        text = str(c).strip().lower()
        for prefix in ("block", "layer", ""):
            rest = text[len(prefix):] if text.startswith(prefix) else None
            if rest is not None and rest.isdigit():
                return Block(int(rest))
        raise ComponentError(bad("component", c, "a block: 'block23', 'layer23' or 23"))
    return parse(c)


def _table(rows: Sequence[Ranked], what: str, mark: set[Any] = frozenset()) -> str:
    lines = [f"{what}:"]
    for r in rows:
        lines.append(f"  {'>' if r.component in mark else ' '}{r.rank:>3}. {key_str(r.component):>8}  {r.mean:+.4f}")
    return "\n".join(lines)


def _names_of(comps: Any) -> str:
    return "{" + ", ".join(sorted((key_str(c) for c in comps), key=str)) + "}"


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CircuitsError(bad("k", k, "a positive integer"))


class Rankable:
    """Rankings at every grain and the assertions on them. A subclass gives
    ``_rank_source(by)``: the grain's components, their per-prompt values ``[R, n]`` and the
    sign that orders them (``+1``: largest first), and ``_what(by, order)``: the ranking in
    words (the failure messages' title)."""

    def _rank_source(self, by: str, **kw: Any) -> tuple[list[Any], Any, float]:  # pragma: no cover
        raise NotImplementedError

    def _what(self, by: str, order: str) -> str:  # pragma: no cover
        raise NotImplementedError

    def _ordered(self, by: str, order: str, **kw: Any) -> tuple[list[Ranked], Any, list[int]]:
        if order not in ORDERS:
            raise CircuitsError(bad("order", order, f"one of {ORDERS}"))
        comps, vals, sign = self._rank_source(by, **kw)
        means = vals.mean(1)
        if not bool(means.isfinite().all()):
            bad_row = comps[int((~means.isfinite()).nonzero()[0])]
            raise MeasurementError(f"no ranking: the mean of {key_str(bad_row)} over prompts is not finite "
                                   f"({float(means[comps.index(bad_row)])}) in {self._what(by, order)}")
        key = means.abs() if order == "abs" else (means * sign if order == "largest" else -means * sign)
        idx = key.argsort(descending=True, stable=True).tolist()
        rows = [Ranked(comps[i], float(means[i]), r + 1) for r, i in enumerate(idx)]
        return rows, vals, idx

    def _rank(self, by: str, k: int | None, order: str, **kw: Any) -> list[Ranked]:
        if k is not None:
            _check_k(k)
        rows, _, _ = self._ordered(by, order, **kw)
        return rows if k is None else rows[:k]

    def assert_top(self, components: Any, k: int | None = None, *, by: str = "components",
                   order: str = "largest", separated: bool = False) -> Any:
        """Fail unless ``components`` (one spelling or several) are exactly the top ``k`` of
        the ranking ``by`` (as a set; ``k`` defaults to how many are named). With
        ``separated=True`` also the interval: the paired difference between the weakest of
        them and the best of the rest (per prompt, in the ranking's direction) must have
        its lower bound above 0. The failure message prints the ranking."""
        want = [components] if isinstance(components, (str, Component, int)) else list(components)
        want_c = {_spelled(c, by) for c in want}
        k = len(want_c) if k is None else k
        if k != len(want_c):
            raise CircuitsError(bad("k", k, f"the number of components named ({len(want_c)}); to ask "
                                            "for one among the top k use assert_in_top"))
        rows, vals, idx = self._ordered(by, order)
        self._check_known(want_c, rows, by)
        top = {r.component for r in rows[:k]}
        what = self._what(by, order)
        if top != want_c:
            raise AssertionError(f"expected {_names_of(want_c)} to be the top {k} by {by}, the top {k} is "
                                 f"{_names_of(top)}\n" + _table(rows[:max(k + 5, 10)], what, want_c))
        if separated:
            self._assert_separated(rows, vals, idx, k, by, order, what, want_c)
        return self

    def assert_in_top(self, component: Any, k: int, *, by: str = "components", order: str = "largest",
                      separated: bool = False) -> Any:
        """Fail unless ``component`` is among the top ``k`` of the ranking ``by``; with
        ``separated=True`` its paired difference from the ``k+1``-th row must have its lower
        bound above 0. The failure message prints the ranking."""
        comp = _spelled(component, by)
        _check_k(k)
        rows, vals, idx = self._ordered(by, order)
        self._check_known({comp}, rows, by)
        place = next(r.rank for r in rows if r.component == comp)
        what = self._what(by, order)
        if place > k:
            raise AssertionError(f"expected {key_str(comp)} among the top {k} by {by}; it is number {place}\n"
                                 + _table(rows[:max(k + 5, place + 1, 10)], what, {comp}))
        if separated:
            self._assert_separated(rows, vals, idx, k, by, order, what, {comp}, weakest=place - 1)
        return self

    def _check_known(self, want: set[Any], rows: list[Ranked], by: str) -> None:
        known = {r.component for r in rows}
        missing = [c for c in want if c not in known]
        if missing:
            raise ComponentError(bad("component", key_str(missing[0]), f"a component ranked by {by!r} "
                                     f"(e.g. {', '.join(key_str(r.component) for r in rows[:3])})"))

    def _assert_separated(self, rows: list[Ranked], vals: Any, idx: list[int], k: int, by: str,
                          order: str, what: str, mark: set[Any], weakest: int | None = None) -> None:
        if k >= len(rows):
            raise CircuitsError(bad("separated", True, f"a ranking with a row after the top {k} "
                                                       f"(there are {len(rows)} rows by {by!r})"))
        w = k - 1 if weakest is None else weakest
        a, b = idx[w], idx[k]
        sign = self._rank_source(by)[2]
        if order == "abs":
            # each side oriented by the sign of its mean: the mean difference is |mean_a| - |mean_b|
            diff = (vals[a] * (1.0 if float(vals[a].mean()) >= 0 else -1.0)
                    - vals[b] * (1.0 if float(vals[b].mean()) >= 0 else -1.0))
        else:
            diff = (vals[a] - vals[b]) * (sign if order == "largest" else -sign)
        m = Measurement.from_values(f"{key_str(rows[w].component)} - {key_str(rows[k].component)} ({by}, {order})",
                                    diff, model=getattr(self, "model", ""),
                                    labels=getattr(self, "labels", None),
                                    provenance={"ranking": what})
        m._note("above", 0.0, m.lower, m.lower > 0)
        if not m.lower > 0:
            raise AssertionError(f"{key_str(rows[w].component)} is not separated from {key_str(rows[k].component)} "
                                 f"(number {k + 1}) by its interval: {m!r}, expected lower bound > 0\n"
                                 + _table(rows[:max(k + 5, 10)], what, mark))


@dataclass(frozen=True, eq=False, kw_only=True)
class ComponentScores(Rankable):
    """Scores of components per prompt: ``values[i, j]`` is ``components[i]``'s value on
    prompt ``j`` (``values``: float64 torch tensor ``[C, n]``; module docstring).

    ``name``: a component's measurement name, ``"{}"`` replaced by the component
    (``"DE({})"``); ``title``: what the scores are, in words (rankings' titles); ``shape``:
    ``(n_layers, n_heads)`` of the model, for :meth:`grid` (default: read from the heads
    scored); ``method``: the interval method of :meth:`measure`
    (:meth:`Measurement.from_values`); ``labels``: the prompts' labels."""

    components: tuple[Any, ...]
    values: Any
    name: str = "{}"
    title: str = "scores"
    model: str = ""
    prompts: str = ""
    labels: tuple[str, ...] | None = None
    provenance: dict = field(default_factory=dict)
    method: str = "auto"
    shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        import torch

        comps = tuple(self.components)
        vals = self.values
        if not isinstance(vals, torch.Tensor):
            vals = torch.as_tensor(np.asarray(vals, dtype=np.float64))
        vals = vals.detach().to("cpu", torch.float64)
        if vals.ndim != 2 or vals.shape[0] != len(comps):
            raise CircuitsError(bad("values", f"shape {tuple(vals.shape)}",
                                    f"a [components, prompts] array with {len(comps)} rows"))
        if len(set(comps)) != len(comps):
            raise CircuitsError(bad("components", [key_str(c) for c in comps], "distinct components"))
        if "{}" not in self.name:
            raise CircuitsError(bad("name", self.name, "a name with '{}' where the component goes"))
        object.__setattr__(self, "components", comps)
        object.__setattr__(self, "values", vals)

    # -- reading ------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """The number of prompts."""
        return int(self.values.shape[1])

    @property
    def means(self) -> Any:
        """``[C]`` each component's mean over prompts (the order of :attr:`components`)."""
        return self.values.mean(1)

    @functools.cached_property
    def _index(self) -> dict[Any, int]:
        return {c: i for i, c in enumerate(self.components)}

    def _rows(self, c: Any) -> list[int]:
        try:
            i = self._index.get(c)
        except TypeError:                                   # unhashable: not a key
            i = None
        return [i] if i is not None else rows_of(self.components, c)

    def of(self, c: Any) -> Any:
        """Per-prompt values ``[n]`` (float64 tensor) of ``c``: a component, its spelling
        (``"L1H0"``, ``"mlp3"``), or ``"attnL"`` (the sum of the layer's heads)."""
        return self.values[self._rows(c)].sum(0)

    def measure(self, c: Any, *, name: str | None = None, record: bool = True, **kw: Any) -> Measurement:
        """``of(c)`` as a :class:`~pytest_circuits.measurement.Measurement` over prompts, named
        ``name`` (default: the technique's name of ``c``); ``provenance``: entries added to the
        scores' own and ``"component"``; ``record`` and the other keywords as in
        :meth:`Measurement.from_values`."""
        rows = self._rows(c)
        key = self.components[rows[0]] if len(rows) == 1 else (c if isinstance(c, (Component, tuple)) else parse(c))
        kw.setdefault("method", self.method)
        prov = {**self.provenance, "component": key_str(key), **dict(kw.pop("provenance", None) or {})}
        return Measurement.from_values(name or self.name.replace("{}", key_str(key)), self.values[rows].sum(0),
                                       model=self.model, labels=self.labels, record=record, provenance=prov, **kw)

    # -- rankings -----------------------------------------------------------------------
    def ranking(self, by: str = "components", k: int | None = None, *, order: str = "largest") -> list[Ranked]:
        """Rows ``(component, mean, rank)`` by mean over prompts at the grain ``by`` (module
        docstring): ``order="largest"`` by signed mean, largest first (default),
        ``"smallest"`` smallest first, ``"abs"`` by |mean|; ties in the order of
        :attr:`components`. ``k``: the first ``k`` rows (default: all)."""
        return self._rank(by, k, order)

    def top(self, k: int = 10, *, by: str = "components", order: str = "largest") -> list[Ranked]:
        """The first ``k`` rows of :meth:`ranking`."""
        return self._rank(by, k, order)

    def _rank_source(self, by: str, **kw: Any) -> tuple[list[Any], Any, float]:
        comps, vals = _grain(self.components, self.values, by)
        return comps, vals, 1.0

    def _what(self, by: str, order: str) -> str:
        on = f" on {self.prompts}" if self.prompts else ""
        return f"{self.title}{on} by {by} (mean over prompts, {order} first)"

    def grid(self, *, mlp: bool = False) -> np.ndarray:
        """``[n_layers, n_heads]`` numpy matrix of each head's mean over prompts (NaN where a
        head is not scored); ``mlp=True``: ``[n_layers, n_heads + 1]``, the MLPs' means in the
        last column."""
        heads = [c for c in self.components if isinstance(c, Head)]
        if self.shape is not None:
            n_layers, n_heads = self.shape
        elif heads:
            n_layers = max(c.layer for c in self.components if isinstance(c, (Head, MLP))) + 1
            n_heads = max(h.head for h in heads) + 1
        else:
            raise CircuitsError(bad("grid", "no heads", "scores with at least one head (or a shape)"))
        g = np.full((n_layers, n_heads + (1 if mlp else 0)), np.nan)
        means = self.means.numpy()
        for c, m in zip(self.components, means):
            if isinstance(c, Head) and c.layer < n_layers and c.head < n_heads:
                g[c.layer, c.head] = m
            elif mlp and isinstance(c, MLP) and c.layer < n_layers:
                g[c.layer, n_heads] = m
        return g

    def table(self, k: int = 10, *, by: str = "components", order: str = "largest") -> str:
        """The first ``k`` rows of the ranking, as text."""
        return _table(self.top(k, by=by, order=order), self._what(by, order))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.title}, {len(self.components)} components x {self.n} prompts)\n"
                + self.table(5))


__all__ = ["Block", "ComponentScores", "GRAINS", "ORDERS", "Rankable", "Ranked", "key_str", "rows_of"]
