"""Activation patching, path patching and iterative circuit discovery on a task.

All effects are in the *noising* direction of the greater-than paper: the clean run
with something taken from the corrupted run, per prompt::

    effect(c) = m(clean, c patched from corrupted) - m(clean)

and reported normalized by the whole corruption's effect,
``effect / (m(corrupted) - m(clean))`` (1 = this alone does what corrupting the input
does; negative = it moves the metric the other way). The task protocol is the one of
:mod:`pytest_circuits.techniques.circuits` (``prompts``, ``prompt_sets``, ``scores``).

* :func:`sweep`: activation patching of each head and MLP (all positions, or given
  ones), or with another ablation kind;
* :func:`position_sweep`: patching each layer's attention and MLP output at one
  position at a time;
* :func:`path_patch` / :func:`path_sweep`: path patching from a sender to receivers
  (``"logits"`` or a set of heads and MLPs). Step 1 runs the clean prompt with the
  sender patched from the corrupted run and every other head and MLP from the sender's
  layer on *frozen* at its clean output, so the change reaches the receivers only
  directly through the residual stream; step 2 runs the clean prompt with only the
  receivers' outputs taken from step 1. With ``"logits"`` step 1 is the measurement;
* :func:`attribution_screen`: TransformerLens's attribution patching as a fast screen,
  whose top candidates :func:`screen_and_verify` then measures exactly;
* :func:`discover`: path patching iterated from the logits backwards (the paper's
  procedure): the heads and MLPs with a direct effect on the logits, then those acting
  through them, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import interventions as I
from ..protocols import check_task
from ..store import ActivationStore, resolve
from .circuits import Circuit, _names, _order, by_layer, expand, nodes, removal
from ..components import MLP, Attn, Component, Head
from ..errors import CircuitsError, bad
from ..measurement import Measurement
from ..scores import ComponentScores, key_str
from ..models import info as model_info
from .._progress import bar


@dataclass(frozen=True, eq=False, kw_only=True)
class Sweep(ComponentScores):
    """Effects of patching each of several components (or paths, or ``(component, position)``
    cells), per prompt: a :class:`~pytest_circuits.scores.ComponentScores` (``of``,
    ``measure``, ``ranking``, ``top``, ``grid``, ``assert_top``) whose values are the raw
    effects ``m(clean, c patched) - m(clean)``, plus the baselines that normalize them:
    ``clean`` and ``corrupted`` (the mean metric on the clean and the corrupted input) and
    :meth:`normalized` (the effect as a fraction of the whole corruption's)."""

    task: str = ""
    clean: float = 0.0                     # mean metric, clean
    corrupted: float = 0.0                 # mean metric, corrupted input

    @property
    def scale(self) -> float:
        return self.corrupted - self.clean

    def normalized(self, key: Any) -> float:
        """The mean effect of ``key`` as a fraction of the corruption's."""
        return float(self.of(key).mean()) / self.scale

    def interval(self, key: Any) -> tuple[float, float]:
        """The interval of :meth:`normalized`."""
        m = self.measure(key, record=False)
        lo, hi = sorted((m.lower / self.scale, m.upper / self.scale))
        return lo, hi

    def significant(self, threshold: float = 0.0) -> list[Any]:
        """Keys whose interval excludes 0 and whose |normalized effect| >= ``threshold``,
        largest |effect| first."""
        out = []
        for row in self.ranking(order="abs"):
            m = self.measure(row.component, record=False)
            if (m.lower > 0 or m.upper < 0) and abs(self.normalized(row.component)) >= threshold:
                out.append(row.component)
        return out

    def table(self, k: int = 10, *, by: str = "components", order: str = "abs") -> str:
        """The first ``k`` rows (by |effect| unless told), normalized, with their intervals."""
        lines = [f"{self.title} on {self.task}: clean {self.clean:.3f}, corrupted {self.corrupted:.3f}; "
                 "effect as a fraction of the corruption's"]
        if by != "components":
            return "\n".join(lines) + "\n" + super().table(k, by=by, order=order)
        for row in self.top(k, order=order):
            lo, hi = self.interval(row.component)
            lines.append(f"  {key_str(row.component):>10}  {self.normalized(row.component):+.3f} "
                         f"[{lo:+.3f}, {hi:+.3f}]")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.table(5)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for key in self.components:
            m = self.measure(key, record=False)
            out[key_str(key)] = {"normalized": self.normalized(key), "interval": list(self.interval(key)),
                                 "mean": m.mean, "lower": m.lower, "upper": m.upper, "n": m.n}
        return {"task": self.task, "what": self.title, "clean": self.clean, "corrupted": self.corrupted,
                "effects": out}


def _swept(model: Any, task: Any, title: str, effects: dict[Any, Measurement], clean: float, corrupted: float,
           name: str, **prov: Any) -> Sweep:
    """A :class:`Sweep` from the per-prompt effects of each key."""
    import torch

    if not effects:
        raise CircuitsError(bad("components", [], "at least one component to patch"))
    cfg = model.cfg
    return Sweep(components=tuple(effects), values=torch.stack([torch.as_tensor(m.array) for m in effects.values()]),
                 name=name, title=title, model=model_info(model).label, prompts=task.name,
                 provenance={"task": task.name, **prov}, shape=(int(cfg.n_layers), int(cfg.n_heads)),
                 task=task.name, clean=clean, corrupted=corrupted)


def _effect(model: Any, task: Any, iv: Any, clean: Any, store: ActivationStore, name: str,
            **prov: Any) -> Measurement:
    vals = task.scores(model, intervention=iv, activations=store).double() - clean
    return Measurement.from_values(name, vals.numpy(), model=model_info(model).label,
                                   provenance={"task": task.name, **prov}, record=False)


def _effects(model: Any, task: Any, keys: Sequence[Any], ivs: Sequence[Any], clean: Any, store: ActivationStore,
             what: str, named: Any) -> dict[Any, Measurement]:
    """``{key: effect of its intervention}`` (``named(key)``: the measurement's name and
    provenance), the forwards of every intervention stacked (``store.each``): the results of
    the loop one intervention at a time, in a handful of forwards."""
    at = {id(iv): k for k, iv in zip(keys, ivs)}

    def one(iv: Any) -> Measurement:
        name, prov = named(at[id(iv)])
        return _effect(model, task, iv, clean, store, name, **prov)

    return dict(zip(bar(keys, what, total=len(keys)), store.each(model, ivs, one)))


def prefetch(model: Any, task: Any, store: ActivationStore) -> None:
    """Every activation a sweep reads, in one forward per prompt set: each head's and MLP's
    output on the clean and corrupted prompts (the values patched in or frozen) and, with the
    clean ones when they are computed, each layer's clean residual (where resumed forwards
    start). Without this, each layer's first patch would cost extra forwards to fetch them.
    Where the clean outputs are already cached (a warm run) the residuals are not asked for:
    a sweep whose results are cached too runs nothing, and one that runs fetches them then."""
    from .. import hooks as H

    L = model.cfg.n_layers
    outputs = [H.z(layer) for layer in range(L)] + [H.mlp_out(layer) for layer in range(L)]
    for ps in task.prompt_sets:
        resume = [] if store.holds(model, ps, outputs) else [H.resid_pre(layer) for layer in range(1, L)]
        store.get(model, ps, resume + outputs)
        store.get(model, ps.corrupted, outputs)


def _baselines(model: Any, task: Any, store: ActivationStore) -> tuple[Any, float, float]:
    prefetch(model, task, store)
    clean = task.scores(model, activations=store).double()
    corrupted = task.scores(model, activations=store, corrupted=True).double()
    return clean, float(clean.mean()), float(corrupted.mean())


# -- activation patching ----------------------------------------------------------------

def sweep(model: Any, task: Any, components: Any = None, *, kind: str = "patch",
          positions: Any = None, reference: Any = None, seed: int = 0,
          activations: ActivationStore | None = None) -> Sweep:
    """Remove each component alone (``kind``: patch from the corrupted run by default)."""
    check_task(task)
    store = resolve(activations)
    comps = expand(model, components) if components is not None else nodes(model)
    clean, c_mean, x_mean = _baselines(model, task, store)
    if positions is not None and kind != "patch":
        raise CircuitsError("positions are supported with kind='patch' only")
    ivs = [I.patch(model, [c], positions=positions) if kind == "patch" and positions is not None
           else removal(model, task, [c], kind, reference=reference, seed=seed) for c in comps]
    # every component's forwards stacked (store.each): the loop's results, in fewer forwards
    effects = _effects(model, task, comps, ivs, clean, store, f"patching {task.name}",
                       lambda c: (f"patch[{c}]", {"component": str(c), "kind": kind}))
    what = "activation patching" if kind == "patch" else f"{kind} ablation"
    return _swept(model, task, what, effects, c_mean, x_mean, "patch[{}]", kind=kind)


def differing_positions(task: Any) -> tuple[int, ...]:
    """Positions from the first where a clean and its corrupted prompt differ to the end
    (patching an earlier position changes nothing: both runs agree there exactly)."""
    ps = task.prompts
    width = min(ps.lengths)
    diff = (ps.tokens[:, :width] != ps.corrupted.tokens[:, :width]).any(0).nonzero()
    if len(diff) == 0:
        raise CircuitsError(f"{task.name}: clean and corrupted prompts are identical")
    return tuple(range(int(diff[0]), width))


def position_sweep(model: Any, task: Any, *, layers: Sequence[int] | None = None,
                   positions: Sequence[int] | None = None,
                   activations: ActivationStore | None = None) -> dict[str, Sweep]:
    """Patch each layer's attention output and MLP output at one position at a time.

    Returns ``{"attn": Sweep, "mlp": Sweep}`` keyed by ``(component, position)``;
    positions default to :func:`differing_positions`.
    """
    check_task(task)
    if len(set(task.prompts.lengths)) > 1:
        raise CircuitsError("position_sweep needs prompts of one length (positions must correspond)")
    store = resolve(activations)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    positions = differing_positions(task) if positions is None else tuple(positions)
    clean, c_mean, x_mean = _baselines(model, task, store)
    out: dict[str, Sweep] = {}
    for label, make in (("attn", Attn), ("mlp", MLP)):
        cells = [(make(layer), p) for layer in layers for p in positions]
        ivs = [I.patch(model, [c], positions=(p,)) for c, p in cells]
        effects = _effects(model, task, cells, ivs, clean, store, f"patching {label} by position",
                           lambda cell: (f"patch[{cell[0]}@{cell[1]}]", {"component": str(cell[0]), "position": cell[1]}))
        out[label] = _swept(model, task, f"activation patching of {label} outputs by position", effects,
                            c_mean, x_mean, "patch[{}]")
    return out


def position_grid(model: Any, sweep_: Sweep) -> tuple[np.ndarray, list[int]]:
    """``[n_layers, positions]`` normalized effects of a :func:`position_sweep` result
    (the model first, as everywhere; the order before, ``(sweep, model)``, raises)."""
    if isinstance(model, Sweep):
        raise CircuitsError("position_grid(model, sweep) takes the model first: got a Sweep first; "
                            "call position_grid(model, sweep)")
    positions = sorted({k[1] for k in sweep_.components})
    g = np.full((model.cfg.n_layers, len(positions)), np.nan)
    for (c, p) in sweep_.components:
        g[c.layer, positions.index(p)] = sweep_.normalized((c, p))
    return g, positions


# -- path patching ----------------------------------------------------------------------

LOGITS = "logits"


def path_intervention(model: Any, sender: Component, receivers: Any = LOGITS, *,
                      freeze_mlps: bool = True) -> I.Interventions:
    """The intervention that patches the path ``sender -> receivers`` (see the module doc).

    ``freeze_mlps=False`` lets MLPs off the path recompute (only heads are frozen), so
    paths through MLPs count as part of the sender's path (the IOI paper's convention).
    """
    if isinstance(sender, Attn):
        raise CircuitsError("path patching takes one head or MLP as the sender")
    senders = expand(model, [sender])
    if len(senders) != 1:
        raise CircuitsError(bad("sender", sender, "one head or one MLP"))
    s = senders[0]
    if receivers == LOGITS:
        recv: tuple[Component, ...] = ()
        last = model.cfg.n_layers - 1
    else:
        recv = tuple(r for r in expand(model, receivers) if _downstream(s, r))
        if not recv:
            raise CircuitsError(f"no receiver in {_names(expand(model, receivers))} is downstream of {s}")
        last = max(r.layer for r in recv)
    keep = {s, *recv}
    frozen = [c for c in nodes(model) if s.layer <= c.layer <= last and c not in keep and _downstream(s, c)
              and (freeze_mlps or not isinstance(c, MLP))]
    step1 = I.patch(model, [s]) + (_freeze(model, frozen) if frozen else I.nothing())
    if receivers == LOGITS:
        return step1
    return I.reroute(model, list(recv), via=step1)


def _downstream(s: Component, c: Component) -> bool:
    """Whether ``c`` reads the residual stream after ``s`` writes to it."""
    if c.layer != s.layer:
        return c.layer > s.layer
    return isinstance(s, Head) and isinstance(c, MLP)


def _freeze(model: Any, comps: Sequence[Component]) -> I.Interventions:
    return I.freeze(model, by_layer(model, comps))


def path_patch(model: Any, task: Any, sender: Any, receivers: Any = LOGITS, *, freeze_mlps: bool = True,
               activations: ActivationStore | None = None) -> Measurement:
    """Effect per prompt of patching only the path ``sender -> receivers``."""
    check_task(task)
    store = resolve(activations)
    s = expand(model, [sender])
    clean = task.scores(model, activations=store).double()
    iv = path_intervention(model, s[0] if s else sender, receivers, freeze_mlps=freeze_mlps)
    return _effect(model, task, iv, clean, store, f"path[{_names(s)}->{_recv_str(receivers)}]",
                   sender=_names(s), receivers=_recv_str(receivers))


def _recv_str(receivers: Any) -> str:
    if receivers == LOGITS:
        return LOGITS
    return "{" + _names(receivers if isinstance(receivers, (list, tuple)) else [receivers]) + "}"


def path_sweep(model: Any, task: Any, senders: Any = None, receivers: Any = LOGITS, *,
               freeze_mlps: bool = True, activations: ActivationStore | None = None) -> Sweep:
    """Path patching from each sender to ``receivers`` (senders default: every head and MLP
    upstream of a receiver)."""
    check_task(task)
    store = resolve(activations)
    recv = () if receivers == LOGITS else expand(model, receivers)
    cands = expand(model, senders) if senders is not None else nodes(model)
    if recv:
        cands = tuple(s for s in cands if s not in recv and any(_downstream(s, r) for r in recv))
    clean, c_mean, x_mean = _baselines(model, task, store)
    label = _recv_str(recv) if recv else LOGITS
    ivs = [path_intervention(model, s, recv if recv else LOGITS, freeze_mlps=freeze_mlps) for s in cands]
    effects = _effects(model, task, cands, ivs, clean, store, f"path patching -> {label}",
                       lambda s: (f"path[{s}->{label}]", {"sender": str(s), "receivers": label}))
    via = "" if freeze_mlps else " (MLPs recomputed)"
    return _swept(model, task, f"path patching to {label}{via}", effects, c_mean, x_mean,
                  "path[{}->" + label + "]", receivers=label)


# -- discovery ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Discovery:
    """The result of :func:`discover`: the circuit and every sweep that found it."""

    circuit: Circuit
    rounds: tuple[Sweep, ...]
    found: tuple[tuple[Component, ...], ...]     # the senders kept in each round
    threshold: float

    def __repr__(self) -> str:
        lines = [f"Discovery: {self.circuit}"]
        for i, (sw, f) in enumerate(zip(self.rounds, self.found)):
            lines.append(f"  round {i} ({sw.title}): {_names(f)}")
        return "\n".join(lines)


def discover(model: Any, task: Any, *, candidates: Any = None, threshold: float = 0.05,
             max_rounds: int = 4, name: str = "discovered", freeze_mlps: bool = True,
             activations: ActivationStore | None = None) -> Discovery:
    """Path patching from the logits backwards.

    Round 0 finds the senders whose direct path to the logits has an effect of at least
    ``threshold`` (as a fraction of the corruption's, with an interval excluding 0);
    each later round path-patches the remaining candidates into the senders found in the
    round before (as one receiver set), and keeps those above the threshold. Stops when a
    round finds nothing new. ``candidates`` (default: every head and MLP) restricts the
    senders tried, e.g. to the top of an attribution screen. ``freeze_mlps`` as in
    :func:`path_intervention`.
    """
    if not 0 <= threshold < 1:
        raise CircuitsError(bad("threshold", threshold, "a fraction in [0, 1)"))
    store = resolve(activations)
    pool = list(expand(model, candidates) if candidates is not None else nodes(model))
    found: list[Component] = []
    rounds: list[Sweep] = []
    kept: list[tuple[Component, ...]] = []
    edges: list[tuple[Any, Any]] = []
    receivers: Any = LOGITS
    for _ in range(max_rounds):
        senders = [c for c in pool if c not in found]
        if receivers != LOGITS:
            senders = [c for c in senders if any(_downstream(c, r) for r in receivers)]
        if not senders:
            break
        sw = path_sweep(model, task, senders, receivers, freeze_mlps=freeze_mlps, activations=store)
        new = tuple(sorted((c for c in sw.significant(threshold)), key=_order))
        rounds.append(sw)
        kept.append(new)
        if not new:
            break
        if receivers == LOGITS:
            edges += [(c, LOGITS) for c in new]
        else:
            edges += _resolve_edges(model, task, new, receivers, threshold, store, freeze_mlps)
        found += list(new)
        receivers = new
    circuit = Circuit.of(model, found, edges=edges, name=name)
    return Discovery(circuit, tuple(rounds), tuple(kept), threshold)


def _resolve_edges(model: Any, task: Any, senders: Sequence[Component], receivers: Sequence[Component],
                   threshold: float, store: ActivationStore,
                   freeze_mlps: bool = True) -> list[tuple[Component, Component]]:
    """Which receiver each sender acts through: path patching per (sender, receiver);
    where no single receiver is significant, the sender is linked to every downstream
    receiver of the set (its effect is spread over them)."""
    out = []
    clean, c_mean, x_mean = _baselines(model, task, store)
    scale = x_mean - c_mean
    for s in senders:
        downstream = [r for r in receivers if _downstream(s, r)]
        hits = []
        for r in downstream:
            m = _effect(model, task, path_intervention(model, s, [r], freeze_mlps=freeze_mlps), clean, store,
                        f"path[{s}->{r}]")
            if (m.lower > 0 or m.upper < 0) and abs(m.mean / scale) >= threshold:
                hits.append(r)
        out += [(s, r) for r in (hits or downstream)]
    return out


# -- attribution patching as a screen ------------------------------------------------------

@dataclass(frozen=True, eq=False, kw_only=True)
class Screen(ComponentScores):
    """Gradient (attribution patching) scores per head and MLP and prompt: TransformerLens's
    ``attribution_patch`` node scores summed over positions, one row per component and one
    column per prompt screened (a :class:`~pytest_circuits.scores.ComponentScores`; the mean
    over prompts is the screen's score).

    A node's score is ``(a_clean - a_corrupted) . d metric / d a`` at the corrupted run
    (the linear estimate of *denoising* it); compare magnitudes with exact patching (rank
    with ``order="abs"``).
    """

    task: str = ""
    seconds: float = 0.0

    def agreement(self, exact: Sweep, k: int = 10) -> "Agreement":
        """How well the screen ranks against exact patching of the same components (by |mean|)."""
        mine = set(self.components)
        common = [c for c in exact.components if c in mine]
        if len(common) < 3:
            raise CircuitsError("agreement needs exact effects of at least 3 screened components")
        a = np.array([abs(float(self.of(c).mean())) for c in common])
        b = np.array([abs(float(exact.of(c).mean())) for c in common])
        rho = float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])
        k = min(k, len(common))
        by_exact = [common[i] for i in sorted(range(len(common)), key=lambda i: -b[i])[:k]]
        by_screen = [common[i] for i in sorted(range(len(common)), key=lambda i: -a[i])[:k]]
        return Agreement(rho, len(set(by_exact) & set(by_screen)) / k, k, len(common))

    def __repr__(self) -> str:
        top = ", ".join(f"{r.component} {r.mean:+.3f}" for r in self.top(5, order="abs"))
        return f"Screen({self.task}, n={self.n}, {self.seconds:.1f} s; top |score|: {top})"


@dataclass(frozen=True)
class Agreement:
    spearman: float        # rank correlation of |screen score| and |exact effect|
    recall_at_k: float     # share of the exact top-k that the screen also ranks in its top-k
    k: int
    n: int

    def __repr__(self) -> str:
        return (f"Agreement(spearman {self.spearman:.3f}, top-{self.k} recall {self.recall_at_k:.2f}, "
                f"over {self.n} components)")


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    # average ties
    for v in np.unique(x):
        idx = np.nonzero(x == v)[0]
        if len(idx) > 1:
            ranks[idx] = ranks[idx].mean()
    return ranks


def attribution_screen(model: Any, task: Any, *, n: int | None = None) -> Screen:
    """Attribution patching (TransformerLens's ``attribution_patch``, node granularity) on
    the first ``n`` prompts (default all), one clean/corrupted pair at a time with the
    task's differentiable ``logit_metric(i)``."""
    import time

    import torch
    from transformer_lens.tools.analysis import EdgeAttributionConfig, attribution_patch

    check_task(task, logit_metric=True)
    ps = task.prompts
    n = len(ps) if n is None else min(int(n), len(ps))
    if n < 1:
        raise CircuitsError(bad("n", n, "at least 1 prompt"))
    cfg = model.cfg
    heads = torch.zeros(cfg.n_layers, cfg.n_heads, n, dtype=torch.float64)
    mlps = torch.zeros(cfg.n_layers, n, dtype=torch.float64)
    device = model_info(model).device
    start = time.perf_counter()
    for i in bar(range(n), f"attribution screen {task.name}", total=n):
        length = ps.lengths[i]
        clean = ps.tokens[i: i + 1, :length].to(device)
        corrupt = ps.corrupted.tokens[i: i + 1, :length].to(device)
        with torch.enable_grad():
            res = attribution_patch(model, clean, corrupt, task.logit_metric(i),
                                    EdgeAttributionConfig(granularity="node"))
        for node, score in res.node_scores.items():
            if node.kind == "attn_head_out":
                heads[node.layer, node.head, i] += score
            elif node.kind == "mlp_out":
                mlps[node.layer, i] += score
    seconds = time.perf_counter() - start
    comps: list[Component] = []
    rows = []
    for layer in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            comps.append(Head(layer, h))
            rows.append(heads[layer, h])
        comps.append(MLP(layer))
        rows.append(mlps[layer])
    return Screen(components=tuple(comps), values=torch.stack(rows), name="attribution[{}]",
                  title="attribution patching scores", model=model_info(model).label, prompts=task.name,
                  labels=tuple(ps.prompts[:n]) if ps.prompts is not None else None,
                  provenance={"task": task.name, "n": n}, shape=(int(cfg.n_layers), int(cfg.n_heads)),
                  task=task.name, seconds=seconds)


def screen_and_verify(model: Any, task: Any, k: int = 20, *, screen_n: int | None = None,
                      activations: ActivationStore | None = None) -> tuple[Screen, Sweep]:
    """The attribution screen, then exact activation patching of its top ``k`` components
    (by |score|)."""
    scr = attribution_screen(model, task, n=screen_n)
    return scr, sweep(model, task, [r.component for r in scr.top(k, order="abs")], activations=activations)


__all__ = ["Agreement", "Discovery", "LOGITS", "Screen", "Sweep", "attribution_screen", "differing_positions",
           "discover", "path_intervention", "path_patch", "path_sweep", "position_grid", "position_sweep",
           "screen_and_verify", "sweep"]
