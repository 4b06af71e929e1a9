"""Circuits: state a set of components and check that it explains a behaviour.

A :class:`Circuit` is a set of attention heads and MLPs (an attention layer stands for
all its heads; the embedding is always kept), optionally with the edges found by path
patching. It is checked against a *task*: any object with

* ``prompts``: the clean :class:`~pytest_circuits.prompts.PromptSet`, whose
  ``corrupted`` counterpart is aligned token for token,
* ``prompt_sets``: every set the metric runs a forward on (interventions apply to each),
* ``scores(model, *, intervention=None, activations=None, corrupted=False)``: the
  metric per prompt, a float64 tensor ``[n]``.

:func:`pytest_circuits.tasks.greater_than` and :func:`pytest_circuits.tasks.comparison`
build such tasks.

Ablation ("removing" a component) is one of ``"patch"`` (its output on the corrupted
prompt, the greater-than paper's choice), ``"resample"`` (its output on another prompt
of the set), ``"mean"`` (its mean output over the clean prompts) or ``"zero"``. With
``m(S)`` the metric when every component outside ``S`` is removed, ``M`` the whole
model and ``∅`` the empty circuit, all per prompt and compared with ratios of means:

* **faithfulness**: ``recovered = (m(C) - m(∅)) / (m(M) - m(∅))`` (TransformerLens's
  ``faithfulness`` normalization; 1 = the circuit alone does what the model does,
  0 = no better than removing everything) and ``fraction = m(C) / m(M)`` (the paper's
  "circuit PD as a fraction of the model's");
* **completeness** (Wang et al. 2022): for subsets ``K`` of the circuit,
  ``gap(K) = (m(C \\ K) - m(M \\ K)) / (m(M) - m(∅))``; a complete circuit has every gap
  near 0 (removing ``K`` hurts the circuit as much as it hurts the model);
* **minimality**: for each ``v`` in the circuit,
  ``cost(v) = (m(C) - m(C \\ {v})) / (m(M) - m(∅))``; a minimal circuit has every cost
  above a stated amount.

Every number is a :class:`~pytest_circuits.measurement.Measurement` over prompts (a paired
bootstrap of the ratio of means), so claims assert on interval bounds.
:func:`robustness` runs the three checks under several ablation kinds side by side and
flags the verdicts that depend on the choice.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from .. import interventions as I
from ..protocols import check_task
from ..store import ActivationStore, resolve
from ..components import MLP, Attn, Component, Embed, Head, Neuron, parse, parse_many
from ..errors import CircuitsError, bad
from ..measurement import Measurement
from ..scores import Ranked
from ..models import info as model_info

ABLATIONS = ("patch", "resample", "mean", "zero")


# -- components ---------------------------------------------------------------------

def nodes(model: Any) -> tuple[Component, ...]:
    """Every head and MLP of ``model`` in forward order (``L0H0 .. L0H{n-1}, mlp0, L1H0 ..``)."""
    cfg = model.cfg
    out: list[Component] = []
    for layer in range(cfg.n_layers):
        out += [Head(layer, h) for h in range(cfg.n_heads)]
        out.append(MLP(layer))
    return tuple(out)


def expand(model: Any, components: Any) -> tuple[Component, ...]:
    """Parse ``components`` (a list, or one string such as ``"L5H1 L5H5 mlp8"``) into heads
    and MLPs (``attn5`` -> its heads), sorted, unique."""
    if isinstance(components, str):
        components = components.replace(",", " ").split()
    comps = parse_many(components, model) if components else []
    out: set[Component] = set()
    for c in comps:
        if isinstance(c, Attn):
            out.update(Head(c.layer, h) for h in range(model.cfg.n_heads))
        elif isinstance(c, (Head, MLP)):
            out.add(c)
        elif isinstance(c, Embed):
            raise CircuitsError("the embedding is always part of a circuit; list heads and MLPs only")
        elif isinstance(c, Neuron):
            raise CircuitsError(f"{c}: circuits are made of heads and MLPs; a neuron-level circuit "
                                f"would remove the rest of mlp{c.layer} too (state mlp{c.layer})")
        else:  # pragma: no cover - parse_many returns only the kinds above
            raise CircuitsError(bad("component", c, "a head or an MLP"))
    return tuple(sorted(out, key=_order))


def _order(c: Component) -> tuple[int, int]:
    return (c.layer, c.head if isinstance(c, Head) else 10**6)


def _names(comps: Iterable[Component]) -> str:
    comps = list(comps)
    return " ".join(str(c) for c in comps) if comps else "(none)"


def _edge_end(model: Any, x: Any, *, sender: bool) -> str:
    """An edge end's spelling: a head or MLP as :func:`expand` writes it; ``"embed"`` as a
    sender; ``"logits"`` and a head's input ``"L1H0.q"`` (``.k``, ``.v``: edge-level circuits,
    :mod:`pytest_circuits.techniques.edges`) as a receiver."""
    text = str(x).strip()
    if sender and text == "embed":
        return text
    if not sender and text == "logits":
        return text
    if not sender and text[-2:] in (".q", ".k", ".v"):
        head = expand(model, [text[:-2]])
        if len(head) != 1 or not isinstance(head[0], Head):
            raise CircuitsError(bad("receiver", text, "a head's q, k or v input such as 'L1H0.q'"))
        return f"{head[0]}{text[-2:]}"
    return str(expand(model, [x])[0])


# -- the circuit ----------------------------------------------------------------------

@dataclass(frozen=True)
class Circuit:
    """A set of heads and MLPs (and optionally edges ``(sender, receiver)``, with
    ``"logits"`` as the final receiver). Build with :meth:`Circuit.of`."""

    components: tuple[Component, ...]
    edges: tuple[tuple[str, str], ...] = ()
    name: str = "circuit"

    @classmethod
    def of(cls, model: Any, components: Any, *, edges: Iterable[tuple[Any, Any]] = (),
           name: str = "circuit") -> "Circuit":
        comps = expand(model, components)
        es = [(_edge_end(model, s, sender=True), _edge_end(model, r, sender=False)) for s, r in edges]
        return cls(comps, tuple(sorted(set(es))), name)

    def __contains__(self, c: Any) -> bool:
        return c in self.components

    def __iter__(self) -> Any:
        return iter(self.components)

    def __len__(self) -> int:
        return len(self.components)

    def __str__(self) -> str:
        return f"{self.name}: {_names(self.components)}"

    def complement(self, model: Any) -> tuple[Component, ...]:
        inside = set(self.components)
        return tuple(c for c in nodes(model) if c not in inside)

    def without(self, model: Any, components: Any, name: str | None = None) -> "Circuit":
        drop = set(expand(model, components))
        missing = drop - set(self.components)
        if missing:
            raise CircuitsError(f"{_names(sorted(missing, key=_order))} not in {self.name}")
        return Circuit(tuple(c for c in self.components if c not in drop), (), name or f"{self.name}-")

    # -- on disk ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "components": [str(c) for c in self.components],
                "edges": [list(e) for e in self.edges]}

    def save(self, path: str | Path, **extra: Any) -> Path:
        path = Path(path)
        path.write_text(json.dumps({**self.to_dict(), **extra}, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, model: Any, path: str | Path) -> "Circuit":
        data = json.loads(Path(path).read_text())
        return cls.of(model, data["components"], edges=[tuple(e) for e in data.get("edges", ())],
                      name=data.get("name", Path(path).stem))


# -- running the model with parts removed --------------------------------------------

def removal(model: Any, task: Any, remove: Sequence[Component], kind: str = "patch", *,
            reference: Any = None, seed: int = 0, positions: Any = None) -> I.Interventions:
    """The intervention that removes ``remove`` (heads and MLPs) with ablation ``kind``.

    A layer whose heads are all removed becomes one replacement of that layer's
    ``hook_z``. ``mean`` is the per-position mean over the prompts being run (each of the
    task's prompt sets) or over ``reference``. ``positions``: every position (None) or
    ``"last"`` (a claim about the computation at the final position only).
    """
    if kind not in ABLATIONS:
        raise CircuitsError(bad("kind", kind, f"one of {ABLATIONS}"))
    if not remove:
        return I.nothing()
    grouped = by_layer(model, remove)
    if kind == "patch":
        return I.patch(model, grouped, positions=positions)
    if kind == "mean":
        # Per position, over the prompts being run (or over ``reference``).
        return I.ablate(model, grouped, "position_mean", reference=reference, positions=positions)
    return I.ablate(model, grouped, kind, seed=seed, positions=positions)


def by_layer(model: Any, comps: Sequence[Component]) -> list[Component]:
    """``comps`` with each layer whose heads are all present written as one ``Attn``
    (one replacement of that layer's ``hook_z`` instead of one per head)."""
    n_heads = model.cfg.n_heads
    per_layer: dict[int, list[Component]] = {}
    for c in comps:
        per_layer.setdefault(c.layer, []).append(c)
    grouped: list[Component] = []
    for layer, cs in sorted(per_layer.items()):
        heads = [c for c in cs if isinstance(c, Head)]
        grouped += [Attn(layer)] if len(heads) == n_heads else heads
        grouped += [c for c in cs if isinstance(c, MLP)]
    return grouped


@dataclass
class _Runner:
    """Evaluates the task metric with sets of components removed, memoized by the set."""

    model: Any
    task: Any
    kind: str
    reference: Any
    seed: int
    store: ActivationStore
    positions: Any = None
    _memo: dict[frozenset, Any] = field(default_factory=dict)

    def keep_only(self, keep: Iterable[Component]) -> Any:
        keep = set(keep)
        return self.removed([c for c in nodes(self.model) if c not in keep])

    def removed(self, remove: Iterable[Component]) -> Any:
        key = frozenset(remove)
        if key not in self._memo:
            self._memo[key] = self.task.scores(self.model, intervention=self._intervention(key),
                                               activations=self.store).double()
        return self._memo[key]

    def _intervention(self, remove: frozenset) -> Any:
        if not remove:
            return None
        return removal(self.model, self.task, sorted(remove, key=_order), self.kind,
                       reference=self.reference, seed=self.seed, positions=self.positions)

    def sharing(self, keeps: Iterable[Iterable[Component]]) -> Any:
        """A context in which the runs keeping each of ``keeps`` (in this order) start
        where they first differ from an earlier one (see ``ActivationStore.shared_prefixes``):
        removal sets that share most of their parts recompute only the blocks from their
        first differing part on. The metric is the same as without it."""
        every = nodes(self.model)
        ivs = []
        for keep in keeps:
            keep = set(keep)
            iv = self._intervention(frozenset(c for c in every if c not in keep))
            if iv is not None:
                ivs.append(iv)
        return self.store.shared_prefixes(self.model, ivs)

    def measure(self, name: str, num: Any, den: Any, record: bool = True, **prov: Any) -> Measurement:
        # The ablation kind (and positions) are part of the name: the same check under two
        # ablations is two different measurements, in baselines and reports alike.
        how = f"{self.kind}" + (", last position" if self.positions == "last" else "")
        name = f"{name[:-1]}; {how}]" if name.endswith("]") else f"{name}[{how}]"
        return Measurement.from_ratio(name, num.numpy(), den.numpy(), model=model_info(self.model).label,
                                      record=record, provenance={"task": self.task.name, "ablation": self.kind,
                                                  "positions": self.positions or "all", **prov})


def _runner(model: Any, task: Any, kind: str, reference: Any, seed: int,
            activations: ActivationStore | None, positions: Any = None) -> _Runner:
    if kind not in ABLATIONS:
        raise CircuitsError(bad("kind", kind, f"one of {ABLATIONS}"))
    check_task(task, corrupted=False)
    if positions not in (None, "last"):
        raise CircuitsError(bad("positions", positions, "None (every position) or 'last'"))
    return _Runner(model, task, kind, reference, seed, resolve(activations), positions)


def _as_circuit(model: Any, circuit: Any) -> Circuit:
    return circuit if isinstance(circuit, Circuit) else Circuit.of(model, circuit)


# -- faithfulness ---------------------------------------------------------------------

@dataclass(frozen=True)
class Faithfulness:
    circuit: Circuit
    kind: str
    full: Any          # metric per prompt, whole model
    kept: Any          # metric per prompt, only the circuit
    empty: Any         # metric per prompt, everything removed
    recovered: Measurement
    fraction: Measurement

    def __repr__(self) -> str:
        return (f"Faithfulness({self.circuit.name}, {len(self.circuit)} components, {self.kind} ablation: "
                f"recovered {_interval(self.recovered)}, fraction of the model's metric "
                f"{_interval(self.fraction)}; metric full {float(self.full.mean()):.3f}, circuit "
                f"{float(self.kept.mean()):.3f}, empty {float(self.empty.mean()):.3f})")


def faithfulness(model: Any, task: Any, circuit: Any, *, kind: str = "patch", reference: Any = None,
                 positions: Any = None,
                 seed: int = 0, activations: ActivationStore | None = None) -> Faithfulness:
    """How much of the model's metric the circuit alone recovers (see the module docstring)."""
    run = _runner(model, task, kind, reference, seed, activations, positions)
    circ = _as_circuit(model, circuit)
    return _faithfulness(run, circ)


def _faithfulness(run: _Runner, circ: Circuit, record: bool = True) -> Faithfulness:
    full = run.removed(())
    empty = run.keep_only(())
    kept = run.keep_only(circ.components)
    _check_range(full, empty, run)
    prov = {"circuit": _names(circ.components)}
    rec = run.measure(f"faithfulness.recovered[{circ.name}]", kept - empty, full - empty, record, **prov)
    frac = run.measure(f"faithfulness.fraction[{circ.name}]", kept, full, record, **prov)
    return Faithfulness(circ, run.kind, full, kept, empty, rec, frac)


def _check_range(full: Any, empty: Any, run: _Runner) -> None:
    if abs(float((full - empty).mean())) < 1e-9:
        raise CircuitsError(f"removing every component ({run.kind} ablation) leaves the metric unchanged "
                            f"({float(full.mean()):.4g}): nothing to recover on {run.task.name!r}")


def _interval(m: Measurement) -> str:
    return f"{m.mean:.3f} [{m.lower:.3f}, {m.upper:.3f}]"


# -- completeness ---------------------------------------------------------------------

@dataclass(frozen=True)
class Completeness:
    circuit: Circuit
    kind: str
    subsets: tuple[tuple[Component, ...], ...]
    gaps: tuple[Measurement, ...]

    @property
    def worst(self) -> tuple[tuple[Component, ...], Measurement]:
        """The subset whose gap interval reaches farthest from 0."""
        i = max(range(len(self.gaps)), key=lambda j: max(abs(self.gaps[j].lower), abs(self.gaps[j].upper)))
        return self.subsets[i], self.gaps[i]

    def assert_gaps_within(self, tol: float) -> "Completeness":
        """Fail unless every subset's gap interval lies inside ``(-tol, tol)``."""
        bad_ = [(k, g) for k, g in zip(self.subsets, self.gaps) if not (g.lower > -tol and g.upper < tol)]
        if bad_:
            lines = "\n".join(f"  remove {_names(k)}: gap {_interval(g)}" for k, g in bad_)
            raise AssertionError(f"{self.circuit.name} is incomplete under {self.kind} ablation (gaps as a "
                                 f"fraction of the model's range; expected inside (-{tol}, {tol})):\n{lines}")
        return self

    def table(self) -> str:
        return "\n".join(f"{_interval(g):>28}  remove {_names(k)}" for k, g in zip(self.subsets, self.gaps))

    def __repr__(self) -> str:
        k, g = self.worst
        return (f"Completeness({self.circuit.name}, {self.kind} ablation, {len(self.subsets)} subsets; "
                f"worst gap {_interval(g)} removing {_names(k)})")


def completeness(model: Any, task: Any, circuit: Any, *, subsets: Sequence[Any] | None = None,
                 n_random: int = 4, kind: str = "patch", reference: Any = None, seed: int = 0,
                 positions: Any = None, activations: ActivationStore | None = None) -> Completeness:
    """Gaps ``(m(C \\ K) - m(M \\ K)) / (m(M) - m(∅))`` for subsets ``K`` of the circuit.

    ``subsets`` (component lists) are checked as given; by default, the whole circuit
    (``K = C``: the circuit's complement alone against nothing) and ``n_random``
    random halves of it (seeded).
    """
    run = _runner(model, task, kind, reference, seed, activations, positions)
    circ = _as_circuit(model, circuit)
    if not circ.components:
        raise CircuitsError("completeness of an empty circuit is not defined")
    ks = [tuple(expand(model, s)) for s in subsets] if subsets is not None else \
        [circ.components] + random_subsets(circ.components, n_random, seed)
    for k in ks:
        outside = set(k) - set(circ.components)
        if outside:
            raise CircuitsError(f"completeness subset contains {_names(sorted(outside, key=_order))}, "
                                f"which {circ.name} does not")
        if not k:
            raise CircuitsError("completeness subsets must not be empty")
    full, empty = run.removed(()), run.keep_only(())
    _check_range(full, empty, run)
    gaps = []
    for k in ks:
        rest = [c for c in circ.components if c not in set(k)]
        gaps.append(run.measure(f"completeness.gap[{circ.name}-{{{_names(k)}}}]",
                                run.keep_only(rest) - run.removed(k), full - empty, removed=_names(k)))
    return Completeness(circ, kind, tuple(ks), tuple(gaps))


def random_subsets(components: Sequence[Component], n: int, seed: int) -> list[tuple[Component, ...]]:
    """``n`` distinct seeded random subsets, each component in with probability 1/2,
    never empty nor the whole set (fewer when not that many exist)."""
    rng = random.Random(seed)
    comps = list(components)
    out: list[tuple[Component, ...]] = []
    possible = 2 ** len(comps) - 2
    tries = 0
    while len(out) < min(n, possible) and tries < 1000:
        tries += 1
        pick = tuple(c for c in comps if rng.random() < 0.5)
        if 0 < len(pick) < len(comps) and pick not in out:
            out.append(pick)
    return out


# -- minimality -----------------------------------------------------------------------

@dataclass(frozen=True)
class Minimality:
    """The cost of removing each component of the circuit; ``mn["L9H1"]`` is one cost,
    ``mn.excluding("mlp28")`` the same costs without the named components (each cost was
    measured with every component in the circuit; ``excluded`` says which were left out)."""

    circuit: Circuit
    kind: str
    costs: dict[Component, Measurement]
    excluded: tuple[Component, ...] = ()

    def _component(self, c: Any) -> Component:
        comp = c if isinstance(c, Component) else parse(c)
        if comp not in self.costs:
            known = ", ".join(str(k) for k in self.costs)
            raise CircuitsError(bad("component", str(comp), f"a component whose cost was measured: {known}"
                                    + (f" (excluded already: {_names(self.excluded)})" if self.excluded else "")))
        return comp

    def __getitem__(self, c: Any) -> Measurement:
        """The cost of removing ``c`` (a component or its spelling)."""
        return self.costs[self._component(c)]

    def excluding(self, *components: Any) -> "Minimality":
        """The same costs without ``components`` (spellings, components, or lists of them):
        ``mn.excluding("mlp28").assert_each_above(0.0)``."""
        flat: list[Any] = []
        for c in components:
            flat.extend(c if isinstance(c, (list, tuple, set, frozenset)) else [c])
        drop = {self._component(c) for c in flat}
        if not drop:
            raise CircuitsError(bad("components", components, "at least one component to exclude"))
        if len(drop) == len(self.costs):
            raise CircuitsError(bad("components", _names(drop), "fewer components than the circuit has"))
        return Minimality(self.circuit, self.kind, {c: m for c, m in self.costs.items() if c not in drop},
                          self.excluded + tuple(sorted(drop, key=_order)))

    @property
    def weakest(self) -> tuple[Component, Measurement]:
        c = min(self.costs, key=lambda k: self.costs[k].lower)
        return c, self.costs[c]

    def assert_each_above(self, amount: float) -> "Minimality":
        """Fail unless each component's cost has its lower bound above ``amount``."""
        weak = [(c, m) for c, m in self.costs.items() if not m.lower > amount]
        if weak:
            lines = "\n".join(f"  {c}: cost {_interval(m)}" for c, m in weak)
            but = f" (excluding {_names(self.excluded)})" if self.excluded else ""
            raise AssertionError(f"{self.circuit.name}{but} is not minimal under {self.kind} ablation (cost of "
                                 f"removing each component, as a fraction of the model's range; expected "
                                 f"lower bound > {amount}):\n{lines}")
        return self

    def table(self) -> str:
        return "\n".join(f"{str(c):>8}  {_interval(m)}" for c, m in
                         sorted(self.costs.items(), key=lambda kv: -kv[1].mean))

    def __repr__(self) -> str:
        c, m = self.weakest
        but = f", excluding {_names(self.excluded)}" if self.excluded else ""
        return f"Minimality({self.circuit.name}{but}, {self.kind} ablation; weakest {c}: {_interval(m)})"


def minimality(model: Any, task: Any, circuit: Any, *, kind: str = "patch", reference: Any = None,
               positions: Any = None,
               seed: int = 0, activations: ActivationStore | None = None) -> Minimality:
    """Cost ``(m(C) - m(C \\ {v})) / (m(M) - m(∅))`` of removing each ``v`` from the circuit."""
    run = _runner(model, task, kind, reference, seed, activations, positions)
    circ = _as_circuit(model, circuit)
    full, empty = run.removed(()), run.keep_only(())
    _check_range(full, empty, run)
    rests = {v: [c for c in circ.components if c != v] for v in circ.components}
    # every removal set is the circuit's complement plus one component: each run starts at
    # its component's block from the complement's run
    with run.sharing([circ.components, *rests.values()]):
        kept = run.keep_only(circ.components)
        costs = {}
        for v in circ.components:
            costs[v] = run.measure(f"minimality.cost[{circ.name}:{v}]", kept - run.keep_only(rests[v]),
                                   full - empty, component=str(v))
    return Minimality(circ, kind, costs)


# -- building a circuit from a ranking -------------------------------------------------

@dataclass(frozen=True)
class Growth:
    """The result of :func:`grow`: the circuit and the faithfulness after each step."""

    circuit: Circuit
    steps: tuple[tuple[int, Measurement], ...]     # (size, recovered)
    reached: bool

    def __repr__(self) -> str:
        steps = "; ".join(f"{k}: {_interval(m)}" for k, m in self.steps)
        return (f"Growth({self.circuit.name}, {len(self.circuit)} components, target "
                f"{'reached' if self.reached else 'NOT reached'}; recovered by size: {steps})")


def grow(model: Any, task: Any, ranking: Sequence[Any], *, target: float = 0.8, step: int = 1,
         max_size: int | None = None, kind: str = "patch", reference: Any = None, seed: int = 0,
         positions: Any = None, name: str = "grown",
         activations: ActivationStore | None = None) -> Growth:
    """Add components in ``ranking`` order (e.g. by exact patching effect), ``step`` at a
    time, until faithfulness (``recovered``, its mean) reaches ``target``. ``ranking``: components
    or the rows of a :meth:`ComponentScores.ranking <pytest_circuits.scores.ComponentScores.ranking>`.

    The target is checked on the mean, so judge the result on other prompts: a circuit
    grown on one set and claimed on another is not tuned to its claim.
    """
    run = _runner(model, task, kind, reference, seed, activations, positions)
    order: list[Component] = []
    seen: set[Component] = set()
    for c in ranking:
        for x in expand(model, [c.component if isinstance(c, Ranked) else c]):
            if x not in seen:
                seen.add(x)
                order.append(x)
    if step < 1:
        raise CircuitsError(bad("step", step, "a positive int"))
    limit = len(order) if max_size is None else min(max_size, len(order))
    full, empty = run.removed(()), run.keep_only(())
    _check_range(full, empty, run)
    steps: list[tuple[int, Measurement]] = []
    sizes = list(range(min(step, limit), limit, step)) + [limit] if limit else []
    # each step keeps the previous step's components and more: its run starts at the
    # earliest block of what it adds, from the previous step's run
    with run.sharing([order[:k] for k in sizes]):
        for size in sizes:
            kept = run.keep_only(order[:size])
            rec = run.measure(f"faithfulness.recovered[{name}:{size}]", kept - empty, full - empty)
            steps.append((size, rec))
            if rec.mean >= target:
                return Growth(Circuit(tuple(sorted(order[:size], key=_order)), (), name), tuple(steps), True)
    size = sizes[-1] if sizes else 0
    return Growth(Circuit(tuple(sorted(order[:size], key=_order)), (), name), tuple(steps), False)


def prune(model: Any, task: Any, circuit: Any, *, min_cost: float = 0.0, kind: str = "patch",
          reference: Any = None, seed: int = 0, positions: Any = None, name: str | None = None,
          activations: ActivationStore | None = None) -> Circuit:
    """Drop, one at a time and weakest first, the components whose removal from the circuit
    costs at most ``min_cost`` (the upper bound of the cost's interval), re-measuring after
    each drop; what is left passes ``minimality(...).assert_each_above`` only if its lower
    bounds clear the amount, which :func:`minimality` then reports."""
    circ = _as_circuit(model, circuit)
    comps = list(circ.components)
    while len(comps) > 1:
        mini = minimality(model, task, Circuit(tuple(comps), (), circ.name), kind=kind, reference=reference,
                          seed=seed, positions=positions, activations=activations)
        v, m = min(mini.costs.items(), key=lambda kv: kv[1].upper)
        if m.upper > min_cost:
            break
        comps.remove(v)
    return Circuit(tuple(comps), (), name or circ.name)


# -- the ablation-robustness matrix ---------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One check under one ablation kind: its Measurement (``value``), the verdict (``holds``)
    and a line saying why. Reads like its Measurement: ``cell.lower``, ``cell.assert_above(0.8)``;
    unpacks as ``value, holds = cell``."""

    value: Measurement
    holds: bool
    detail: str

    @property
    def measurement(self) -> Measurement:
        return self.value

    @property
    def verdict(self) -> bool:
        return self.holds

    def __iter__(self) -> Any:
        return iter((self.value, self.holds))

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes a Cell lacks: the Measurement's (lower, assert_above ...).
        if name.startswith("__") or name == "value":
            raise AttributeError(name)
        return getattr(self.value, name)


@dataclass(frozen=True)
class Robustness:
    """Checks (rows) under ablation kinds (columns), each with its verdict."""

    circuit: Circuit
    kinds: tuple[str, ...]
    cells: dict[str, dict[str, Cell]]         # check -> kind -> cell
    criteria: dict[str, str]

    @property
    def depends_on_ablation(self) -> list[str]:
        """Checks whose verdict is not the same under every ablation kind."""
        return [c for c, row in self.cells.items() if len({cell.holds for cell in row.values()}) > 1]

    def cell(self, check: str, kind: str) -> Cell:
        """The cell of ``check`` (``"faithfulness"``, ``"completeness"``, ``"minimality"``)
        under ablation ``kind``: ``rob.cell("faithfulness", "zero").assert_below(0.4)``."""
        row = self[check]
        if kind not in row:
            raise CircuitsError(bad("kind", kind, f"one of the kinds measured: {tuple(row)}"))
        return row[kind]

    def __getitem__(self, check: str) -> Mapping[str, Cell]:
        """``rob["faithfulness"]["zero"]``: the row of one check, kind -> :class:`Cell`."""
        if check not in self.cells:
            raise CircuitsError(bad("check", check, f"one of the checks measured: {tuple(self.cells)}"))
        return MappingProxyType(self.cells[check])

    def values(self, check: str) -> dict[str, Measurement]:
        """kind -> Measurement of one check: ``rob.values("faithfulness")["patch"]``."""
        return {k: cell.value for k, cell in self[check].items()}

    def holds(self, check: str, kind: str) -> bool:
        return self.cell(check, kind).holds

    def assert_holds(self, kinds: Sequence[str] | None = None) -> "Robustness":
        """Fail unless every check holds under every kind in ``kinds`` (default: all)."""
        kinds = tuple(kinds) if kinds is not None else self.kinds
        failing = [(c, k) for c in self.cells for k in kinds if not self.cells[c][k].holds]
        if failing:
            raise AssertionError(f"{self.circuit.name}: " + "; ".join(
                f"{c} fails under {k} ablation ({self.cells[c][k].detail})" for c, k in failing)
                + "\n" + self.table())
        return self

    def table(self) -> str:
        w = 30
        head = f"{'check':<14}" + "".join(f"{k:^{w}}" for k in self.kinds)
        lines = [head]
        for c, row in self.cells.items():
            marks = "".join(f"{(('ok ' if row[k].holds else 'FAIL ') + _interval(row[k].value)):^{w}}"
                            for k in self.kinds)
            lines.append(f"{c:<14}{marks}")
        for c, crit in self.criteria.items():
            lines.append(f"  {c}: {crit}")
        dep = self.depends_on_ablation
        lines.append("verdict depends on the ablation: " + (", ".join(dep) if dep else "no"))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Robustness({self.circuit.name})\n{self.table()}"

    def to_dict(self) -> dict[str, Any]:
        return {"circuit": self.circuit.to_dict(), "kinds": list(self.kinds), "criteria": self.criteria,
                "depends_on_ablation": self.depends_on_ablation,
                "cells": {c: {k: {"holds": cell.holds, "detail": cell.detail, **cell.value.to_dict()}
                              for k, cell in row.items()} for c, row in self.cells.items()}}


def robustness(model: Any, task: Any, circuit: Any, *, kinds: Sequence[str] = ABLATIONS,
               faithful_above: float | None = 0.8, gaps_within: float | None = 0.2,
               costs_above: float | None = 0.0, n_random: int = 2, reference: Any = None,
               seed: int = 0, positions: Any = None,
               activations: ActivationStore | None = None) -> Robustness:
    """Faithfulness, completeness and minimality of one circuit under each ablation kind.

    A check is skipped by passing ``None`` for its criterion. Each verdict is taken on
    the interval bound: faithfulness holds when ``recovered``'s lower bound exceeds
    ``faithful_above``; completeness when the worst gap's interval lies inside
    ``±gaps_within``; minimality when the weakest component's cost has its lower bound
    above ``costs_above``.
    """
    circ = _as_circuit(model, circuit)
    kinds = tuple(kinds)
    for k in kinds:
        if k not in ABLATIONS:
            raise CircuitsError(bad("kinds", kinds, f"a subset of {ABLATIONS}"))
    cells: dict[str, dict[str, Cell]] = {}
    criteria: dict[str, str] = {}
    if faithful_above is not None:
        criteria["faithfulness"] = f"recovered, lower bound > {faithful_above}"
    if gaps_within is not None:
        criteria["completeness"] = f"worst gap inside (-{gaps_within}, {gaps_within})"
    if costs_above is not None:
        criteria["minimality"] = f"weakest cost, lower bound > {costs_above}"
    store = resolve(activations)
    for k in kinds:
        if faithful_above is not None:
            f = faithfulness(model, task, circ, kind=k, reference=reference, seed=seed, positions=positions,
                             activations=store)
            cells.setdefault("faithfulness", {})[k] = Cell(
                f.recovered, f.recovered.lower > faithful_above, f"recovered {_interval(f.recovered)}")
        if gaps_within is not None:
            c = completeness(model, task, circ, kind=k, n_random=n_random, reference=reference, seed=seed,
                             positions=positions, activations=store)
            ks, g = c.worst
            cells.setdefault("completeness", {})[k] = Cell(
                g, g.lower > -gaps_within and g.upper < gaps_within, f"worst gap {_interval(g)} removing {_names(ks)}")
        if costs_above is not None:
            mn = minimality(model, task, circ, kind=k, reference=reference, seed=seed, positions=positions,
                            activations=store)
            v, m = mn.weakest
            cells.setdefault("minimality", {})[k] = Cell(m, m.lower > costs_above, f"weakest {v}: {_interval(m)}")
    return Robustness(circ, kinds, cells, criteria)


__all__ = ["ABLATIONS", "Circuit", "Completeness", "Faithfulness", "Growth", "Minimality", "Robustness",
           "completeness", "expand", "faithfulness", "grow", "minimality", "nodes", "prune", "random_subsets",
           "removal", "robustness"]

