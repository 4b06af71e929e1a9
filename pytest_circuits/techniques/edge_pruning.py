"""Exact removal of many edges at once, and an ACDC-style exact pass over a small model's graph.

**Removing a set of edges** (:func:`removed_metric`), in the noising direction of
:mod:`~pytest_circuits.techniques.edges`: every receiver ``r`` reads, instead of the residual
stream of the run, ``resid - sum over its removed senders s of (o_s(run) - o_s(corrupted))``.
``o_s(run)`` is what ``s`` writes in this same run, where the edges upstream of it are removed
too (so removals compose, as ACDC's do; a single removed edge is exact edge patching, checked
against :func:`~pytest_circuits.techniques.edges.edge_patch` in tests/unit/test_edge_pruning.py).
One forward evaluates a whole set: the batch runs in ``2 + 3 n_heads`` copies. Copy 0 is the
run; at each layer copy ``(h, p)`` gets head ``h``'s part-``p`` input (``p`` of q, k, v), and
head ``h``'s query rows take their key and value from copies ``(h, k)`` and ``(h, v)`` (under
grouped-query attention the key/value head of ``h``'s group; the other heads of those rows
are not read), so their ``z`` of head ``h`` is what head ``h`` computes from its three inputs,
and copy 0's ``z`` of head ``h`` is replaced by it; the last copy gets the MLP's input and
copy 0's MLP output is replaced by its output. Every copy is reset from copy 0 at each layer's
input. The final residual of copy 0 loses the deltas of the edges into the logits removed. No
attention formula of any architecture is written here.

**The exact pass** (:func:`acdc`, after Conmy et al. 2023, arXiv:2304.14997): receivers from
the logits back to the first layer, each receiver's senders latest first; an edge is removed
for good when removing it (with every edge removed so far) moves the task's mean metric by
less than ``threshold`` times the whole corruption's mean effect (ACDC compares a KL
divergence; here the task's own metric, in the units :func:`~pytest_circuits.techniques.edges.discover`
uses). One forward per edge tried: for small models (a cap, ``max_edges``, refuses larger
sets with the count; edges left out of the set tried are removed from the start, as a screen
by attribution would have pruned them). The kept edges are a
:class:`~pytest_circuits.techniques.circuits.Circuit` (:func:`~pytest_circuits.techniques.edges.edge_circuit`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .. import hooks as H
from ..components import Embed, Head
from ..errors import CircuitsError, bad
from ..metrics import _finite
from ..models import info as model_info
from ..protocols import check_task
from ..store import ActivationStore, resolve
from .._progress import bar
from .circuits import Circuit
from .edges import (PARTS, Edge, _refuse_unsupported, _sender_hooks, as_edges, edge_circuit, graph,
                    parallel_blocks, senders)
from .effects import attn_output_weights

DEFAULT_MAX_EDGES = 5000


def _names(model: Any) -> list[str]:
    L = model.cfg.n_layers
    return (_sender_hooks(model, Embed()) + [H.z(l) for l in range(L)] + [H.mlp_out(l) for l in range(L)])


class _Removal:
    """The hooks of one forward of ``tokens`` (``[b, width]``) with ``edges`` removed."""

    def __init__(self, model: Any, edges: Iterable[Edge], corr: dict[str, Any], rows: Any, width: int) -> None:
        import torch

        self.model = model
        self.L, self.n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
        self.par = parallel_blocks(model)
        self.b = len(rows)
        self.K = 2 + 3 * self.n_heads
        dev = model_info(model).device
        self.dtype = torch.float32 if model.cfg.dtype != torch.float64 else torch.float64
        self.W_O = attn_output_weights(model).to(dev, self.dtype)               # [L, heads, d_head, d_model]
        self.corr = {n: corr[n][rows, :width].to(dev, self.dtype) for n in _names(model)}
        self.emb = _sender_hooks(model, Embed())
        # receiver -> the senders whose edge into it is removed
        self.into: dict[tuple, list] = {}
        for e in edges:
            key = ("logits",) if e.receiver is None else (
                (e.receiver.layer, "mlp") if not isinstance(e.receiver, Head) else
                (e.receiver.layer, e.receiver.head, PARTS.index(e.part)))
            self.into.setdefault(key, []).append(e.sender)
        self.now: dict[str, Any] = {}          # the senders' outputs in this run (copy 0)

    def _rows(self, c: int) -> slice:
        return slice(c * self.b, (c + 1) * self.b)

    def _delta(self, s: Any) -> Any:
        """``o_s(run) - o_s(corrupted)`` of copy 0, ``[b, width, d_model]``."""
        if isinstance(s, Embed):
            return sum(self.now[n] - self.corr[n] for n in self.emb)
        if isinstance(s, Head):
            dz = self.now[H.z(s.layer)][:, :, s.head] - self.corr[H.z(s.layer)][:, :, s.head]
            return dz @ self.W_O[s.layer, s.head]
        return self.now[H.mlp_out(s.layer)] - self.corr[H.mlp_out(s.layer)]

    def _input(self, main: Any, key: tuple) -> Any:
        out = main
        for s in self.into.get(key, ()):
            out = out - self._delta(s).to(main.dtype)
        return out

    def hooks(self) -> list:
        import torch

        b, K, nh = self.b, self.K, self.n_heads
        hooks: list = []

        def keep(name: str):
            def fn(t: Any, hook: Any = None) -> None:
                self.now[name] = t[:b].to(self.dtype)
            return fn

        for n in self.emb:
            hooks.append((n, keep(n)))
        mlp_copy = K - 1

        def layer_input(l: int):
            def fn(t: Any, hook: Any = None) -> Any:
                main = t[:b]
                parts = [main]
                for h in range(nh):
                    for p in range(3):
                        parts.append(self._input(main, (l, h, p)))
                parts.append(self._input(main, (l, "mlp")) if self.par else main)
                return torch.cat(parts)
            return fn

        def kv(l: int, p: int):
            def fn(t: Any, hook: Any = None) -> Any:
                t = t.clone()
                group = nh // t.shape[-2]
                for h in range(nh):
                    q_rows, src = self._rows(1 + 3 * h), self._rows(1 + 3 * h + p)
                    t[q_rows, :, h // group] = t[src, :, h // group]
                return t
            return fn

        def z(l: int):
            def fn(t: Any, hook: Any = None) -> Any:
                t = t.clone()
                for h in range(nh):
                    t[:b, :, h] = t[self._rows(1 + 3 * h), :, h]
                self.now[H.z(l)] = t[:b].to(self.dtype)
                return t
            return fn

        def mid(l: int):
            def fn(t: Any, hook: Any = None) -> Any:
                t = t.clone()
                t[self._rows(mlp_copy)] = self._input(t[:b], (l, "mlp"))
                return t
            return fn

        def mlp_out(l: int):
            def fn(t: Any, hook: Any = None) -> Any:
                t = t.clone()
                t[:b] = t[self._rows(mlp_copy)]
                self.now[H.mlp_out(l)] = t[:b].to(self.dtype)
                return t
            return fn

        def final(t: Any, hook: Any = None) -> Any:
            t = t.clone()
            t[:b] = self._input(t[:b], ("logits",))
            return t

        for l in range(self.L):
            hooks += [(H.resid_pre(l), layer_input(l)), (f"blocks.{l}.attn.hook_k", kv(l, 1)),
                      (f"blocks.{l}.attn.hook_v", kv(l, 2)), (H.z(l), z(l)), (H.mlp_out(l), mlp_out(l))]
            if not self.par:
                hooks.append((H.resid_mid(l), mid(l)))
        hooks.append((H.resid_post(self.L - 1), final))
        return hooks


def _batches(ps: Any, n: int, rows: int) -> list[Any]:
    import torch

    lengths = torch.as_tensor(list(ps.lengths[:n])).long()
    order = torch.sort(lengths, stable=True, descending=True).indices
    return [order[i: i + rows] for i in range(0, n, rows)]


def removed_metric(model: Any, task: Any, edges: Any = (), *, activations: ActivationStore | None = None,
                   batch_rows: int = 16) -> Any:
    """The task's metric per prompt (float64 ``[n]``, ``task.logit_metric(i)``) with ``edges``
    removed together (module docstring; none: the clean run). ``batch_rows`` prompts run per
    forward, each in ``2 + 3 n_heads`` copies."""
    import torch

    check_task(task, logit_metric=True)
    _refuse_unsupported(model)
    es = as_edges(model, edges) if edges else ()
    ps = task.prompts
    if ps.corrupted is None or list(ps.corrupted.lengths) != list(ps.lengths):
        raise CircuitsError(bad("task", task.name, "a task whose corrupted prompts are aligned token for token "
                                "with the clean ones (PromptSet.build(..., align=True))"))
    corr = resolve(activations).get(model, ps.corrupted, _names(model))
    device = model_info(model).device
    out = np.zeros(len(ps))
    for rows in _batches(ps, len(ps), max(1, int(batch_rows))):
        width = int(max(ps.lengths[int(i)] for i in rows))
        tokens = ps.tokens[rows, :width].to(device)
        run = _Removal(model, es, corr, rows, width)
        with torch.no_grad(), H.attached(model, run.hooks()):
            logits = model(tokens.repeat(run.K, 1))
        out[rows.numpy()] = [float(task.logit_metric(int(i))(logits[j: j + 1])) for j, i in enumerate(rows)]
    _finite(f"removed_metric[{task.name}]", model, ps, torch.as_tensor(out).unsqueeze(1), "metric values")
    return out


@dataclass(frozen=True)
class Pruning:
    """:func:`acdc`'s result: ``edges`` kept; ``trace`` one ``(edge, change, removed)`` per edge
    tried, in order (``change``: the mean metric's move when it was tried, in units of the
    whole corruption's mean effect); ``metric``: the mean metric with every removed edge
    removed; ``clean`` and ``corrupted``: the mean metric of the two runs."""

    edges: tuple[Edge, ...]
    trace: tuple[tuple[Edge, float, bool], ...]
    threshold: float
    metric: float
    clean: float
    corrupted: float
    seconds: float
    circuit: Circuit | None = None

    def __repr__(self) -> str:
        removed = sum(r for _, _, r in self.trace)
        return (f"Pruning: {len(self.edges)} of {len(self.trace)} edges kept at threshold {self.threshold:g} "
                f"({removed} removed); mean metric clean {self.clean:.4g}, corrupted {self.corrupted:.4g}, "
                f"with the removed edges removed {self.metric:.4g}; {self.seconds:.1f} s")


def _order(model: Any, es: tuple[Edge, ...]) -> list[Edge]:
    """Receivers from the logits back (an MLP before its layer's heads), each one's senders latest first."""
    s_index = {s: i for i, s in enumerate(senders(model))}

    def rank(e: Edge) -> tuple:
        r = e.receiver
        where = (1 << 30) if r is None else 2 * r.layer + (0 if isinstance(r, Head) else 1)
        return (-where, 0 if r is None or not isinstance(r, Head) else r.head, PARTS.index(e.part) if e.part else 0,
                -s_index[e.sender])

    return sorted(es, key=rank)


def acdc(model: Any, task: Any, *, threshold: float = 0.01, edges: Any = None, max_edges: int = DEFAULT_MAX_EDGES,
         activations: ActivationStore | None = None, name: str = "acdc") -> Pruning:
    """The ACDC-style exact pass (module docstring) over ``edges`` (default every edge) at
    ``threshold`` (a fraction of the whole corruption's mean effect). Edges outside ``edges``
    are removed from the start and never tried (a screen, e.g. attribution's top edges, has
    already pruned them). Refuses more than ``max_edges`` edges (one forward each)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise CircuitsError(bad("threshold", threshold, "a number in [0, 1): a fraction of the corruption's effect"))
    es = as_edges(model, edges)
    if len(es) > max_edges:
        raise CircuitsError(bad("edges", f"{len(es)} edges", f"at most max_edges={max_edges}: the exact pass runs one "
                                "forward per edge; screen with edges.edge_attribution first and pass its top edges"))
    start = time.perf_counter()
    store = resolve(activations)
    clean = float(removed_metric(model, task, (), activations=store).mean())
    corrupted = float(removed_metric(model, task, graph(model), activations=store).mean())
    total = corrupted - clean
    if abs(total) < 1e-12:
        raise CircuitsError(f"removing every edge leaves {task.name!r}'s metric where it was ({clean:.4g}): "
                            "nothing to prune against")
    chosen = set(es)
    removed: list[Edge] = [e for e in graph(model) if e not in chosen]
    current = float(removed_metric(model, task, removed, activations=store).mean()) if removed else clean
    trace = []
    for e in bar(_order(model, es), f"exact pruning {task.name}", total=len(es)):
        m = float(removed_metric(model, task, removed + [e], activations=store).mean())
        change = (m - current) / total
        drop = abs(change) < threshold
        trace.append((e, change, drop))
        if drop:
            removed.append(e)
            current = m
    gone = set(removed)
    kept = tuple(e for e in graph(model) if e not in gone)
    circuit = edge_circuit(model, kept, name=name) if kept else None
    return Pruning(kept, tuple(trace), float(threshold), current, clean, corrupted, time.perf_counter() - start,
                   circuit)


__all__ = ["DEFAULT_MAX_EDGES", "Pruning", "acdc", "removed_metric"]
