"""Edges: exact edge patching, edge attribution (EAP, EAP-IG), and edge circuits.

**The graph.** Senders write into the residual stream: the embedding (token and learned
position embeddings together, ``embed``), every head's output (``z_h @ W_O[h]``), every
MLP's output. Receivers read it: every head's query, key and value inputs separately
(``L1H0.q``, ``L1H0.k``, ``L1H0.v``), every MLP's input (``mlp1``) and the logits (the
final residual stream, ``logits``). An edge ``s -> r`` exists when ``r`` reads the residual
stream after ``s`` wrote to it: a later layer, or a head into its own layer's MLP in a
sequential block (not in parallel-attention blocks, GPT-J and GPT-NeoX, where attention and
MLP read the same residual). :class:`Edge` spells one ``L0H1->L1H0.q`` (:meth:`Edge.parse`
reads it back); :func:`graph` lists them all.

**Exact edge patching** (:func:`edge_patch`), per prompt, in the noising direction of
:mod:`~pytest_circuits.techniques.patching`: the receiver alone sees the sender's output
from the corrupted run instead of its clean output; everything else is clean. Its residual
input becomes ``resid_clean - o_s(clean) + o_s(corrupted)``:

* a head receiver (part ``p`` of q, k, v): a side run edits layer ``l``'s residual input
  and holds the other two of ``hook_q``, ``hook_k``, ``hook_v`` at their clean values, so
  only part ``p`` sees the edit; head ``r``'s ``hook_z`` is read from it, and the measured
  run replaces only head ``r``'s slice of ``hook_z`` by it. Under grouped-query attention
  the side run changes the whole key/value group, but only head ``r``'s output is taken, so
  no other head of the group changes (tests/unit/test_edges.py checks it). No attention
  formula of any architecture is written here: rotary, QK-norm and soft-capping are the
  model's own;
* an MLP receiver: the side run edits the MLP's input residual (``hook_resid_mid``, or
  ``hook_resid_pre`` in parallel blocks) and only the MLP's output is taken;
* the logits: the final residual is edited (path patching to the logits without freezing
  anything: exact there, since nothing reads the final residual but the unembedding).

Effects are ``m(clean, edge patched) - m(clean)`` per prompt, normalized by the whole
corruption's effect as in :class:`~pytest_circuits.techniques.patching.Sweep`.

**Edge attribution** (:func:`edge_attribution`): the linear estimate

    score(s -> r) = sum_pos (o_s(corrupted) - o_s(clean)) . d m / d in_r

with ``d m / d in_r`` the total derivative of the task's differentiable ``logit_metric(i)``
with respect to receiver ``r``'s own copy of its residual input (the q, k and v inputs of a
head each get their own; under GQA the gradient reaching a shared key/value head is split by
query head). EAP (Syed et al. 2023) evaluates the gradient in the clean run. EAP-IG
(Hanna et al. 2024), ``ig_over="activations"``: every sender's output is set to
``o_s(clean) + a (o_s(corrupted) - o_s(clean))``, the gradient is taken with each receiver's
local derivative at the residual stream so formed, and averaged over ``a = k / steps`` for
``k = 0 .. steps - 1`` (a left Riemann sum; ``steps=1`` is EAP exactly).

How gradients are taken, per batch of prompts (right-padded, of like length, as many as
the store's token budget holds) and step: one forward of the whole model, its graph kept, and
one backward give ``d m / d z`` (every head), ``d m / d hook_q``, ``d m / d`` (each MLP's
normalized input) and ``d m / d resid_final`` for every prompt of the batch at once (each
prompt's metric depends on its own row alone, and causal attention keeps its real positions
from reading the padding). Then per receiver layer, in that same graph, vector-Jacobian
products: under grouped-query attention the keys' and values' gradients split by query head
(one product from ``z`` per member of a group, the members batched); per part (q, k, v), head
``h``'s derivative at the projection's input is ``d m / d q_h @ W_Q[h]^T`` (the model's
weights; used only where one vector-Jacobian product through the model's own projection, of
all heads at once, equals their sum, checked per layer and part on each call's first batch;
otherwise one batched product through the projection per head), and from there back to the
layer's residual input through the norm: in closed form where the model's norm module is a
LayerNorm or RMSNorm whose weights and epsilon reproduce the norm's output from its input and
whose closed-form derivative equals one product through the model's own norm (checked per layer
on each call's first batch), else one batched product through the model's norm; from the MLP's
normalized input back through its norm. No attention formula is written here. The clean
senders' outputs are the gradient forward's own (it is the clean run); the corrupted ones come
from the store. Before a row's first changed token, and in a row equal to its corruption, a
sender's delta is 0 by causality: it is set to exactly 0 there, once the two runs' values there
are seen to differ by rounding alone (else the computed differences are kept), and only
positions from the batch's first changed token on are carried.
Scores are batched products of the senders' deltas and the receivers' gradients, one per chunk
of :data:`SCORE_CHUNK` receiver layers, kept per prompt (what
:mod:`~pytest_circuits.techniques.edge_stability` resamples).
The whole corruption's effect is the corrupted run's metric: read from the store's last logits
where the metric reads that position alone (evaluated with NaN, then random values, everywhere
else: both finite and equal), else one forward. Where it reads that position alone, the
gradient forward also skips the unembedding and unembeds that position alone (as the store does
for last logits, :func:`~pytest_circuits.forwards.unembedding_skipped`; taken once those logits
equalled the whole forward's on a call's first batch). The cost is 1.0 to 1.6 times one
forward and backward of the same batches with the store's corrupted outputs held, 1.5 to 1.6
times with the store's corrupted forward in it (SmolLM2, 100 prompts, docs/measured.md).

**Verification** (:func:`verify`): attribution is a first-order estimate; saturated
attention or nonlinear cancellation makes it wrong in sign or size. The top ``k`` edges by
|score| are patched exactly and those whose estimate disagrees are flagged.

**Edge circuits** (:func:`edge_circuit`): a :class:`~pytest_circuits.techniques.circuits.Circuit`
whose ``edges`` are the kept edges (receivers spelled ``L1H0.q`` where they are a head's
input) and whose components are their endpoints, for the faithfulness checks of
:mod:`~pytest_circuits.techniques.circuits` (which remove whole components, not edges). From
a sweep or scores, edges are kept by :func:`discover` (mean effect or score at least
``threshold`` of the whole corruption's mean effect, in absolute value), the rule whose
stability under resampling of the prompts
:func:`~pytest_circuits.techniques.edge_stability.stability` measures.

Not handled (refused with a MeasurementError naming the feature): a norm after attention
(Gemma-2/3, OLMo-2: a head's write is not ``z_h W_O[h]`` alone).
"""

from __future__ import annotations

import functools
import re
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .. import hooks as H
from .. import interventions as I
from ..components import MLP, Component, Embed, Head, parse
from ..errors import CircuitsError, CircuitsWarning, ComponentError, InterventionError, MeasurementError, bad
from ..forwards import unembed_rows, unembedding_skipped
from ..metrics import _finite
from ..models import derived, info as model_info
from ..protocols import check_task
from ..scores import ComponentScores, key_str
from ..store import ActivationStore, resolve
from .._progress import bar
from .circuits import Circuit
from .effects import attn_output_weights, attn_post_gains
from .patching import Agreement, Sweep, _effect, _ranks, prefetch

LOGITS = "logits"
PARTS = ("q", "k", "v")
METHODS = ("eap", "eap-ig")
IG_OVER = ("activations",)
DEFAULT_IG_STEPS = 5


# -- the graph ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Edge:
    """One edge ``sender -> receiver``: ``sender`` an :class:`~pytest_circuits.components.Embed`,
    :class:`~pytest_circuits.components.Head` or :class:`~pytest_circuits.components.MLP`;
    ``receiver`` a Head (with ``part`` ``"q"``, ``"k"`` or ``"v"``), an MLP, or None for the
    logits. ``str(edge)`` is ``L0H1->L1H0.q``; :meth:`parse` reads that form."""

    sender: Component
    receiver: Component | None
    part: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sender, (Embed, Head, MLP)):
            raise ComponentError(bad("sender", str(self.sender), "embed, a head (L0H1) or an MLP (mlp0)"))
        if isinstance(self.receiver, Head):
            if self.part not in PARTS:
                raise ComponentError(bad("part", self.part, f"one of q, k, v for the head receiver {self.receiver}"))
        elif isinstance(self.receiver, MLP) or self.receiver is None:
            if self.part is not None:
                what = "an MLP" if self.receiver is not None else "the logits"
                raise ComponentError(bad("part", self.part, f"None: {what} has one input"))
        else:
            raise ComponentError(bad("receiver", str(self.receiver), "a head's q/k/v input (L1H0.q), an MLP "
                                     "(mlp1) or logits"))

    @property
    def receiver_name(self) -> str:
        """``"logits"``, ``"mlp1"`` or ``"L1H0.q"``."""
        if self.receiver is None:
            return LOGITS
        return f"{self.receiver}.{self.part}" if self.part else str(self.receiver)

    def __str__(self) -> str:
        return f"{self.sender}->{self.receiver_name}"

    def __repr__(self) -> str:
        return f"Edge({self})"

    def sort_key(self) -> tuple:
        """Forward order of the receiver, then of the sender."""
        r = self.receiver
        rkey = (10 ** 6,) if r is None else (r.layer, 1 if isinstance(r, Head) else 2,
                                             getattr(r, "head", 0), PARTS.index(self.part) if self.part else 0)
        return rkey + (self.sender.layer, 1 if isinstance(self.sender, Head) else (0 if isinstance(self.sender, Embed)
                                                                                      else 2),
                       getattr(self.sender, "head", 0))

    @classmethod
    def parse(cls, text: Any, model: Any = None) -> "Edge":
        """``"L0H1->L1H0.q"``, ``"mlp0->L1H2.v"``, ``"embed->mlp1"``, ``"L1H0->logits"`` (an
        :class:`Edge` is returned as it is); with ``model`` the edge is checked to exist in it
        (:meth:`check`)."""
        if isinstance(text, Edge):
            edge = text
        elif isinstance(text, (tuple, list)) and len(text) == 2:
            edge = cls.parse(f"{text[0]}->{text[1]}")
        elif isinstance(text, str):
            m = re.fullmatch(r"\s*([^\s>-][^\s>]*?)\s*->\s*(\S+?)\s*", text)
            if m is None:
                raise ComponentError(bad("edge", text, "'sender->receiver', e.g. 'L0H1->L1H0.q', 'mlp0->L1H2.v', "
                                         "'embed->mlp1', 'L1H0->logits'"))
            sender = parse(m.group(1))
            recv_text = m.group(2)
            part = None
            if recv_text == LOGITS:
                receiver = None
            else:
                base, dot, tail = recv_text.rpartition(".")
                if dot and tail in PARTS:
                    recv_text, part = base, tail
                receiver = parse(recv_text)
                if isinstance(receiver, Head) and part is None:
                    raise ComponentError(bad("edge", text, f"a head receiver with its input named: "
                                             f"'{m.group(1)}->{receiver}.q', '.k' or '.v'"))
            edge = cls(sender, receiver, part)
        else:
            raise ComponentError(bad("edge", text, "an Edge or a string such as 'L0H1->L1H0.q'"))
        if model is not None:
            edge.check(model)
        return edge

    def check(self, model: Any) -> "Edge":
        """The edge itself when ``model`` has both ends and the receiver reads the residual
        stream after the sender writes to it; else a ComponentError that says why."""
        for c in (self.sender, self.receiver):
            if c is not None:
                c.validate(model)
        if not _reads_after(model, self.sender, self.receiver):
            if self.receiver is not None and self.receiver.layer == self.sender.layer and isinstance(self.sender, Head) \
                    and isinstance(self.receiver, MLP):
                why = (f"in this model attention and MLP of a layer read the same residual stream (parallel "
                       f"blocks), so {self.receiver} does not read {self.sender}'s output")
            else:
                why = f"{self.receiver_name} reads the residual stream before {self.sender} writes to it"
            raise ComponentError(bad("edge", str(self), f"an edge of the model's graph: {why}"))
        return self


def parallel_blocks(model: Any) -> bool:
    """Whether attention and MLP of a block read the same residual stream (GPT-J, GPT-NeoX)."""
    return bool(getattr(model.cfg, "parallel_attn_mlp", False))


def _reads_after(model: Any, s: Component, r: Component | None) -> bool:
    if isinstance(s, Embed) or r is None:
        return True
    if r.layer != s.layer:
        return r.layer > s.layer
    return isinstance(s, Head) and isinstance(r, MLP) and not parallel_blocks(model)


def senders(model: Any) -> tuple[Component, ...]:
    """``embed``, then each layer's heads and MLP, in forward order."""
    out: list[Component] = [Embed()]
    for layer in range(model.cfg.n_layers):
        out += [Head(layer, h) for h in range(model.cfg.n_heads)]
        out.append(MLP(layer))
    return tuple(out)


def receivers(model: Any) -> tuple[tuple[Component | None, str | None], ...]:
    """``(component, part)`` of every receiver: each head's q, k, v, each MLP, the logits."""
    out: list[tuple[Component | None, str | None]] = []
    for layer in range(model.cfg.n_layers):
        out += [(Head(layer, h), p) for h in range(model.cfg.n_heads) for p in PARTS]
        out.append((MLP(layer), None))
    out.append((None, None))
    return tuple(out)


def graph(model: Any) -> tuple[Edge, ...]:
    """Every edge of ``model``, receivers in forward order (the logits last)."""
    cfg = model.cfg
    return _graph(int(cfg.n_layers), int(cfg.n_heads), parallel_blocks(model))


@functools.lru_cache(maxsize=8)
def _graph(n_layers: int, n_heads: int, parallel: bool) -> tuple[Edge, ...]:
    """The edges of every model of this shape, built once (an Edge is immutable): SmolLM2 has
    123,211, and building them took 2.7 s when the senders were listed again per receiver."""
    shape = SimpleNamespace(cfg=SimpleNamespace(n_layers=n_layers, n_heads=n_heads, parallel_attn_mlp=parallel))
    ss = senders(shape)
    return tuple(Edge(s, r, p) for r, p in receivers(shape) for s in ss if _reads_after(shape, s, r))


def as_edges(model: Any, edges: Any = None) -> tuple[Edge, ...]:
    """``edges`` (None: the whole graph; one string, ``"a->b c->d"`` or comma separated; or a
    list of strings / :class:`Edge`) parsed and checked against ``model``, unique, in order."""
    if edges is None:
        return graph(model)
    if isinstance(edges, (str, Edge)):
        edges = [edges] if isinstance(edges, Edge) else edges.replace(",", " ").split()
    out = list(dict.fromkeys(Edge.parse(e, model) for e in edges))
    if not out:
        raise CircuitsError(bad("edges", list(edges), "at least one edge"))
    return tuple(sorted(out, key=Edge.sort_key))


# -- what senders write -------------------------------------------------------------------

def _refuse_unsupported(model: Any) -> None:
    if attn_post_gains(model) is not None:
        from ..architectures import architecture_name

        raise MeasurementError(f"edges: {architecture_name(model)} has a norm after attention: a head's write into the "
                               "residual stream is not z_h @ W_O[h] alone, and edge patching does not handle it")


def _sender_hooks(model: Any, s: Component) -> list[str]:
    if isinstance(s, Embed):
        pos = H.POS_EMBED if (getattr(model.cfg, "positional_embedding_type", "standard") == "standard"
                              and H.POS_EMBED in model.hook_dict) else None
        return [H.EMBED] + ([pos] if pos else [])
    if isinstance(s, Head):
        return [H.z(s.layer)]
    return [H.mlp_out(s.layer)]


def _write(model: Any, s: Component, acts: dict[str, Any]) -> Any:
    """What ``s`` writes into the residual stream, ``[n, pos, d_model]`` float64 (CPU), from its
    hooks' values ``acts``."""
    import torch

    if isinstance(s, Embed):
        return sum(acts[n].detach().to("cpu", torch.float64) for n in _sender_hooks(model, s))
    if isinstance(s, Head):
        z = acts[H.z(s.layer)][:, :, s.head].detach().to("cpu", torch.float64)
        return z @ attn_output_weights(model)[s.layer, s.head]
    return acts[H.mlp_out(s.layer)].detach().to("cpu", torch.float64)


def sender_delta(model: Any, prompts: Any, s: Component, store: ActivationStore | None = None) -> Any:
    """``o_s(corrupted) - o_s(clean)``, ``[n, pos, d_model]`` float64 on the CPU: what patching
    sender ``s`` adds to each position of the residual stream of ``prompts``."""
    store = resolve(store)
    names = _sender_hooks(model, s)
    clean = _write(model, s, store.get(model, prompts, names))
    corr = _write(model, s, store.get(model, prompts.corrupted, names))
    width = min(clean.shape[1], corr.shape[1])
    return corr[:, :width] - clean[:, :width]


# -- exact edge patching ------------------------------------------------------------------

def _qkv(layer: int, part: str) -> str:
    return f"blocks.{layer}.attn.hook_{part}"


def _mlp_in(layer: int) -> str:
    """The MLP's input after its norm (a mixture of experts: the router's and experts' input)."""
    return f"blocks.{layer}.mlp.hook_in"


@dataclass(frozen=True, eq=False)
class EdgeInput:
    """The run in which one receiver input is edited: ``hook`` (a residual stream in block
    ``block``) gets ``scale * (o_s(corrupted) - o_s(clean))`` added at every position, and the
    hooks ``hold`` are held at their clean values (for a head's q/k/v edge, the other two of
    q, k, v). An intervention of :mod:`pytest_circuits.protocols`; :func:`edge_intervention`
    builds it. ``scale`` other than 1 moves the input part of the way (finite differences)."""

    edge: Edge
    hook: str
    block: int
    hold: tuple[str, ...] = ()
    scale: float = 1.0

    @property
    def key(self) -> str:
        return f"edge_input({self.edge},at={self.hook},hold={'|'.join(self.hold)},scale={self.scale!r})"

    @property
    def layer(self) -> int:
        return self.block

    def check(self, model: Any, prompts: Any) -> None:
        if prompts.corrupted is None:
            raise InterventionError(f"patching the edge {self.edge} needs prompts.corrupted: build the set with "
                                    "PromptSet.build(..., corrupted=[...])")
        if prompts.corrupted.lengths != prompts.lengths:
            raise InterventionError(f"patching the edge {self.edge} needs corrupted prompts aligned token for token "
                                    "(PromptSet.build(..., align=True))")

    def first_positions(self, model: Any, prompts: Any) -> Any:
        import torch

        return torch.zeros(len(prompts), dtype=torch.long)      # a safe lower bound: every position

    def fwd_hooks(self, model: Any, prompts: Any, index: Any, store: Any = None, offset: Any = 0) -> list:
        import torch

        store = resolve(store)
        index = torch.as_tensor(index).reshape(-1)
        start = torch.as_tensor(offset).reshape(-1).long().expand(len(index))
        delta = sender_delta(model, prompts, self.edge.sender, store)[index] * float(self.scale)
        held = store.get(model, prompts, list(self.hold)) if self.hold else {}

        def rows(full: Any, t: Any) -> Any:
            at = (start.unsqueeze(1) + torch.arange(t.shape[1]).unsqueeze(0)).clamp(max=full.shape[1] - 1)
            return full[torch.arange(full.shape[0]).unsqueeze(1), at].to(t.device, t.dtype)

        def edit(t: Any, hook: Any = None) -> Any:
            return t + rows(delta, t)

        out = [(self.hook, edit)]
        for name in self.hold:
            clean = held[name][index]
            out.append((name, lambda t, hook=None, clean=clean: rows(clean, t)))
        return out


def edge_intervention(model: Any, edge: Any, *, scale: float = 1.0) -> Any:
    """The intervention that patches ``edge`` (module docstring): for the logits the edited
    run itself; for a head or an MLP the clean run with only the receiver's output taken from
    the edited run (:func:`pytest_circuits.interventions.reroute`)."""
    _refuse_unsupported(model)
    e = Edge.parse(edge, model)
    if e.receiver is None:
        last = model.cfg.n_layers - 1
        return EdgeInput(e, H.resid_post(last), last, (), scale)
    layer = e.receiver.layer
    if isinstance(e.receiver, Head):
        hold = tuple(_qkv(layer, p) for p in PARTS if p != e.part)
        via = EdgeInput(e, H.resid_pre(layer), layer, hold, scale)
    else:
        via = EdgeInput(e, H.resid_pre(layer) if parallel_blocks(model) else H.resid_mid(layer), layer, (), scale)
    return I.reroute(model, [e.receiver], via=via)


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class EdgeSweep(Sweep):
    """Exact effects of patching each edge, per prompt (a
    :class:`~pytest_circuits.techniques.patching.Sweep` keyed by :class:`Edge`; ``of``,
    ``measure``, ``normalized``, ``interval``, ``significant``, ``table`` accept an edge's
    spelling). ``totals``: per prompt, the whole corruption's effect ``m(corrupted) - m(clean)``
    (float64 numpy ``[n]``; its mean is :attr:`scale`), what :func:`discover` compares each
    edge's effect with."""

    totals: Any = None

    def _rows(self, c: Any) -> list[int]:
        return super()._rows(_edge_key(c))

    @property
    def edges(self) -> tuple[Edge, ...]:
        """The edges patched (:attr:`components`)."""
        return tuple(self.components)


def _edge_key(c: Any) -> Any:
    """An edge's spelling (``"L0H1->L1H0.q"``) as its :class:`Edge`; anything else as it is."""
    return Edge.parse(c) if isinstance(c, str) and "->" in c else c


def edge_patch(model: Any, task: Any, edges: Any = None, *,
               activations: ActivationStore | None = None) -> EdgeSweep:
    """Exact patching of each of ``edges`` (default: every edge of :func:`graph`) alone."""
    import torch

    check_task(task)
    _refuse_unsupported(model)
    store = resolve(activations)
    es = as_edges(model, edges)
    prefetch(model, task, store)            # what _baselines does, keeping the corrupted scores per prompt
    clean = task.scores(model, activations=store).double()
    corrupted = task.scores(model, activations=store, corrupted=True).double()
    c_mean, x_mean = float(clean.mean()), float(corrupted.mean())
    effects = {}
    for e in bar(es, f"edge patching {task.name}", total=len(es)):
        effects[e] = _effect(model, task, edge_intervention(model, e), clean, store, f"edge[{e}]", edge=str(e))
    cfg = model.cfg
    return EdgeSweep(components=tuple(effects), values=torch.stack([torch.as_tensor(m.array) for m in effects.values()]),
                     name="edge[{}]", title="exact edge patching", model=model_info(model).label, prompts=task.name,
                     provenance={"task": task.name}, shape=(int(cfg.n_layers), int(cfg.n_heads)),
                     task=task.name, clean=c_mean, corrupted=x_mean,
                     totals=(corrupted - clean).numpy().astype(np.float64))


# -- attribution ----------------------------------------------------------------------------

def _run(model: Any, tokens: Any, hooks: list) -> Any:
    """``model(tokens)`` under ``hooks``."""
    with H.attached(model, hooks):
        return model(tokens)


def _proj_in(layer: int, part: str) -> str:
    """The hook on the input of a layer's ``part`` projection (the attention's normalized input)."""
    return f"blocks.{layer}.attn.{part}.hook_in"


def _proj_weights(model: Any, part: str) -> Any:
    """``W_Q``, ``W_K`` or ``W_V`` ``[n_layers, heads of the part, d_model, d_head]``, detached,
    in the model's dtype and device, or None where the model does not give them."""
    def get(m: Any) -> Any:
        try:
            w = getattr(m, f"W_{part.upper()}")
        except (AttributeError, RuntimeError, NotImplementedError, KeyError, ValueError):
            return None
        return w.detach() if hasattr(w, "detach") and getattr(w, "ndim", 0) == 4 else None

    return derived(model, f"W_{part.upper()}:edges", get)


def _layer_grads(model: Any, tokens: Any, metrics: Sequence[Any], targets: dict[str, Any] | None,
                 layers: Iterable[int], seen_metric: list | None = None,
                 linear: dict | None = None, skip: Any = 0, last: Any = None,
                 own: dict | None = None) -> Iterator[tuple[Any, Any]]:
    """For a batch ``tokens`` ``[b, width]`` (right-padded), every sender's hook set to
    ``targets`` (values ``[b, width, ...]``; the receivers' local derivatives are taken where
    the residual stream built from them puts their inputs), or, with ``targets`` None, left at
    the model's own values (the clean run), which are then put in ``own`` (detached, by hook
    name: the embedding's hooks, each ``z`` and ``mlp_out``); ``skip`` may be a function called
    with no argument once the forward has run (it may read ``own``) that returns it. Yields ``(None, g)``, ``g``
    ``[b, 1, width - skip, d_model]`` the derivative of each row's metric with respect to the
    final residual (the logits' input), then ``(l, g)`` for each of ``layers`` in order, ``g``
    ``[b, 3 n_heads + 1, width - skip, d_model]``: with respect to each head's q, k, v input (head
    by head, q, k, v) and the MLP's input; positions before ``skip`` are left out (the caller
    scores none there). ``metrics[i]``: row ``i``'s metric of its logits ``[1, pos, vocab]``;
    their values (the batch's) are appended to ``seen_metric``. ``linear`` keeps the verdicts of
    the checks of :func:`_part_grad` and :func:`_head` from batch to batch. ``last``: each row's
    last real position where every metric reads the logits there alone (the caller probed it),
    or None. Given, the forward skips the unembedding and only those positions are unembedded
    (:func:`_head`; the unembedding is a fifth of SmolLM2's forward), once the logits so computed
    were seen to equal the whole forward's on a call's first batch (:func:`_head_agrees`).

    One forward of the batch, kept for its graph, and one backward give ``d m / d z`` (every
    head), ``d m / d`` (each MLP's normalized input), ``d m / d resid_final`` and ``d m / d
    hook_q`` (each row's metric
    depends on that row alone, so the gradient of their sum is each row's own; attention is
    computed head by head from ``hook_q``, so its slice of head ``h`` is head ``h``'s own).
    Then per layer, in the same graph: the keys' and values' gradients split by query head
    (under grouped-query attention a key/value head serves a group; one vector-Jacobian
    product from ``z`` per member of a group, all members in one batched call), and from
    ``hook_q``, ``hook_k``, ``hook_v`` back to the layer's residual input per part, head ``h``'s
    cotangent alone (:func:`_part_grad`), and one vector-Jacobian product from the MLP's
    normalized input back through its norm."""
    import torch

    L, n_heads = model.cfg.n_layers, model.cfg.n_heads
    par = parallel_blocks(model)
    kept: dict[str, Any] = {}
    seen: dict[str, Any] = {}

    def set_leaf(name: str):
        def fn(t: Any, hook: Any = None) -> Any:
            value = t.detach() if targets is None else targets[name].to(t.device, t.dtype)
            leaf = value.clone().requires_grad_(True)
            kept[name] = leaf
            return leaf
        return fn

    def keep(name: str):
        def fn(t: Any, hook: Any = None) -> Any:
            kept[name] = out = t.view_as(t)         # the model's own value, a node of its own
            return out
        return fn

    def through(name: str):
        def fn(t: Any, hook: Any = None) -> Any:
            out = t - t.detach() + targets[name].to(t.device, t.dtype)    # the target's value, t's gradient
            kept[name] = out
            return out
        return fn

    def look(name: str):
        def fn(t: Any, hook: Any = None) -> Any:
            # a node of its own, returned so that what follows computes from it: its gradient is
            # that of its readers alone (GPT-J's MLP reads the tensor attention reads; a hook may
            # be handed a reshaped view that nothing downstream reads unless it is returned)
            seen[name] = out = t.view_as(t)
            return out
        return fn

    sender = keep if targets is None else through
    hooks: list = [(H.EMBED, set_leaf(H.EMBED))]
    if targets is None:
        hooks += [(nm, keep(nm)) for nm in _sender_hooks(model, Embed())[1:]]
    elif H.POS_EMBED in targets:
        hooks.append((H.POS_EMBED, lambda t, hook=None: targets[H.POS_EMBED].to(t.device, t.dtype)))
    for l in range(L):
        hooks += [(H.z(l), sender(H.z(l))), (H.mlp_out(l), sender(H.mlp_out(l))),
                  (H.resid_pre(l), look(H.resid_pre(l))), (_mlp_in(l), look(_mlp_in(l)))] \
            + [(_qkv(l, p), look(_qkv(l, p))) for p in PARTS] \
            + [(_proj_in(l, p), look(_proj_in(l, p))) for p in PARTS if _proj_in(l, p) in model.hook_dict]
        if not par:
            hooks.append((H.resid_mid(l), look(H.resid_mid(l))))
    final_name = H.resid_post(L - 1)
    linear = {} if linear is None else linear
    short = last is not None and linear.get(HEAD_CHECK) is True
    hooks.append((final_name, look(final_name)))
    with torch.enable_grad():
        if short:
            with unembedding_skipped(model) as skipped:
                _run(model, tokens, hooks)
            head = _head(model, skipped.seen, last)                                    # [b, vocab]
            width, vocab = tokens.shape[1], head.shape[-1]
            rows = [torch.cat([head.new_zeros((1, int(at), vocab)), head[i: i + 1, None],
                               head.new_zeros((1, width - int(at) - 1, vocab))], 1) for i, at in enumerate(last)]
            values = torch.stack([m(rows[i]).reshape(()) for i, m in enumerate(metrics)])
        else:
            checking = last is not None and HEAD_CHECK not in linear and H.UNEMBED_IN in model.hook_dict
            if last is not None and HEAD_CHECK not in linear and not checking:
                linear[HEAD_CHECK] = False          # no hook on the unembedding's input to check it by
            logits = _run(model, tokens, hooks + ([(H.UNEMBED_IN, look(H.UNEMBED_IN))] if checking else []))
            values = torch.stack([m(logits[i: i + 1]).reshape(()) for i, m in enumerate(metrics)])
            if checking:
                linear[HEAD_CHECK] = _head_agrees(model, seen.get(H.UNEMBED_IN), last, logits)
        if seen_metric is not None:
            seen_metric.extend(float(v) for v in values.detach().cpu())
        if own is not None:
            own.update((nm, v.detach()) for nm, v in kept.items())
        if callable(skip):
            skip = int(skip())
        group = n_heads // int(seen[_qkv(0, "k")].shape[-2])
        kept_names = [H.z(l) for l in range(L)]
        seen_names = [_qkv(l, p) for l in range(L) for p in (PARTS if group == 1 else ("q",))] \
            + [_mlp_in(l) for l in range(L)] + [final_name]
        got = torch.autograd.grad(values.sum(), [kept[n] for n in kept_names] + [seen[n] for n in seen_names],
                                  retain_graph=True, allow_unused=True)
    grads = dict(zip(kept_names + seen_names, got))
    final = grads[final_name]
    final = torch.zeros_like(seen[final_name]) if final is None else final
    yield None, final[:, skip:].detach().unsqueeze(1)
    heads = torch.arange(n_heads, device=final.device)
    weights = {p: _proj_weights(model, p) for p in PARTS}
    for l in sorted(set(layers)):
        with torch.enable_grad():
            x_pre = seen[H.resid_pre(l)]
            out = torch.zeros((tokens.shape[0], 3 * n_heads + 1, x_pre.shape[1] - skip, x_pre.shape[2]),
                              dtype=x_pre.dtype, device=x_pre.device)
            outs = [seen[_qkv(l, p)] for p in PARTS]
            # d m / d (q, k, v) of query head h alone, [heads, b, width, d_head], head by head
            own: list = [None, None, None]
            for p in range(3):
                g = grads.get(_qkv(l, PARTS[p]))
                if g is not None and (p == 0 or group == 1):
                    own[p] = g.permute(2, 0, 1, 3)
            gz = grads[H.z(l)]
            if group > 1 and gz is not None:
                # member j of every group alone: cotangent on heads h with h % group == j
                member = torch.arange(group, device=gz.device)
                mask = (heads[None, :] % group == member[:, None]).to(gz.dtype)        # [group, heads]
                kv = torch.autograd.grad(kept[H.z(l)], outs[1:], grad_outputs=gz.unsqueeze(0) * mask[:, None, None, :, None],
                                         retain_graph=True, allow_unused=True, is_grads_batched=True)
                for p, g in zip((1, 2), kv):
                    if g is not None:   # [group, b, width, kv heads, d_head] -> query head h = kv * group + j
                        own[p] = g.permute(0, 3, 1, 2, 4)[heads % group, heads // group]
            for p in range(3):
                if own[p] is None:
                    continue
                g = _part_grad(model, l, PARTS[p], own[p], outs[p], x_pre, seen, weights[PARTS[p]], linear, skip=skip)
                if g is not None:
                    out[:, p: 3 * n_heads: 3] = g.transpose(0, 1)
            gm = grads[_mlp_in(l)]
            if gm is not None:          # the MLP's own path, d m / d (its normalized input), back through the norm
                g = torch.autograd.grad(seen[_mlp_in(l)], x_pre if par else seen[H.resid_mid(l)], grad_outputs=gm,
                                        retain_graph=True, allow_unused=True)[0]
                if g is not None:
                    out[:, 3 * n_heads] = g[:, skip:]
        yield l, out.detach()


HEAD_CHECK = ("logits", "head")


def _head(model: Any, normalized: Any, last: Any) -> Any:
    """``[b, vocab]``: the logits at each row's position ``last[i]`` from the normalized final
    residual ``normalized`` ``[b, width, d_model]`` (what reaches the unembedding), through the
    model's own unembedding (:func:`~pytest_circuits.forwards.unembed_rows`)."""
    import torch

    at = torch.as_tensor(last, device=normalized.device).long()
    return unembed_rows(model, normalized[torch.arange(normalized.shape[0], device=normalized.device), at])


def _head_agrees(model: Any, normalized: Any, last: Any, logits: Any) -> bool:
    """Whether :func:`_head` of ``normalized`` (the unembedding's input in a whole forward, or
    None where the hook did not fire) gives that forward's ``logits`` ``[b, width, vocab]`` at the
    positions ``last``, to float rounding: then a forward that skips the unembedding and
    unembeds those rows alone computes the same metric."""
    import torch

    if normalized is None or tuple(normalized.shape[:2]) != tuple(logits.shape[:2]):
        return False
    try:
        with torch.no_grad():
            mine = _head(model, normalized.detach(), last)
    except Exception:       # no unembedding module that runs alone: the whole forward
        return False
    want = logits.detach()[torch.arange(logits.shape[0], device=logits.device),
                           torch.as_tensor(last, device=logits.device).long()]
    if mine.shape != want.shape or not bool(torch.isfinite(mine).all()):
        return False
    tol = 1e-10 if want.dtype == torch.float64 else 1e-5
    return float((mine - want).abs().max()) <= tol * float(want.abs().max())


def _part_grad(model: Any, l: int, part: str, own: Any, out: Any, x_pre: Any, seen: dict, W: Any,
               linear: dict, *, skip: int = 0) -> Any:
    """``[heads, b, width - skip, d_model]``: the derivative with respect to the layer's
    residual input ``x_pre`` (at positions ``skip`` on) of the metric through query head ``h``'s
    ``part`` alone, ``own[h]`` ``[b, width, d_head]`` being the metric's derivative at that
    head's q, k or v (``out``, the hook).

    Where the projection from its input hook to ``out`` is the model's ``W_<part>`` (checked
    once per layer and part and call, ``linear`` keeping the verdict: the products of the heads'
    own cotangents, summed, must equal one vector-Jacobian product of their sum through the
    model's own code), head ``h``'s derivative at the projection's input is ``own[h] @
    W[h]^T``. From there to ``x_pre``: through the norm in closed form where :func:`_norm_form`
    finds the model's norm (its verdict kept in ``linear`` too), else one batched product
    through the model's own norm. Otherwise (no such hook or weights, or a projection that is
    not linear in them, e.g. a norm after it), one batched product through the norm and the
    projection, cotangent ``h`` head ``h``'s alone: the same derivative, at the cost of the
    whole projection per head."""
    import torch

    n_heads = own.shape[0]
    node = seen.get(_proj_in(l, part))
    if node is not None and W is not None and linear.get((l, part), True):
        Wl = W[l] if W.shape[1] == n_heads else W[l][torch.arange(n_heads, device=W.device) * W.shape[1] // n_heads]
        Wl = Wl.to(own.device, own.dtype)                                                # [heads, d_model, d_head]
        mine = own[:, :, skip:]
        u = torch.bmm(mine.flatten(1, 2), Wl.transpose(1, 2)).view(mine.shape[:3] + (Wl.shape[1],))
        ok = linear.get((l, part))
        if ok is None:
            full = _full_cotangent(own, out)
            ref = torch.autograd.grad(out, node, grad_outputs=full, retain_graph=True, allow_unused=True)[0]
            if ref is None or ref.shape[:1] + (ref.shape[1] - skip,) + ref.shape[2:] != u.shape[1:]:
                ok, evidence = False, True
            else:
                ref = ref[:, skip:]
                scale = float(ref.abs().max()) if ref.numel() else 0.0
                ok = bool(torch.isfinite(u).all()) and float((u.sum(0) - ref).abs().max()) <= 1e-4 * scale
                # a zero gradient here (both sides zero) holds for this batch but says nothing of the next
                evidence = not ok or scale > 0
            if evidence:
                linear[(l, part)] = ok
        if ok:
            form = _norm_form(model, l, x_pre, node, u, linear)
            if form is not None:
                return _norm_back(form, x_pre.detach()[:, skip:], u)
            if skip:
                u = torch.cat([u.new_zeros(u.shape[:2] + (skip,) + u.shape[3:]), u], 2)
            return torch.autograd.grad(node, x_pre, grad_outputs=u.to(node.dtype), retain_graph=True,
                                       allow_unused=True, is_grads_batched=True)[0][:, :, skip:]
    per_head = _full_cotangent(own, out, split=True)
    return torch.autograd.grad(out, x_pre, grad_outputs=per_head.to(out.dtype), retain_graph=True,
                               allow_unused=True, is_grads_batched=True)[0][:, :, skip:]


def _norm_candidates(model: Any, l: int) -> list[tuple[bool, Any, Any, float]]:
    """What layer ``l``'s attention norm may compute, read from the model's module (the
    bridge's ``blocks[l].ln1``): ``(centered, gain, bias, eps)`` for a LayerNorm (``centered``)
    or an RMSNorm, the gain the module's weight or one plus it (Gemma's). Empty where the module
    gives no weight and epsilon: the caller takes the model's own backward then."""
    try:
        ln = model.blocks[l].ln1
        mod = getattr(ln, "original_component", ln)
        weight = mod.weight.detach()
        eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
        bias = getattr(mod, "bias", None)
        bias = None if bias is None else bias.detach()
        eps = float(eps)
    except (AttributeError, IndexError, TypeError, ValueError, RuntimeError, KeyError, NotImplementedError):
        return []
    if getattr(weight, "ndim", 0) != 1:
        return []
    return [(centered, gain, bias, eps) for centered in (False, True) for gain in (weight, 1 + weight)]


def _norm_form(model: Any, l: int, x_pre: Any, node: Any, u: Any, verdicts: dict) -> Any:
    """The closed form of layer ``l``'s attention norm, from ``x_pre`` (its input) to ``node``
    (its output, what the projections read), or None. Found on a call's first batch and kept in
    ``verdicts[(l, "norm")]``: a candidate of :func:`_norm_candidates` is taken when it computes
    ``node`` from ``x_pre`` (to float rounding, at every position) and its derivative,
    :func:`_norm_back` of the heads' summed cotangents ``u`` ``[heads, b, width - skip, d_model]``,
    equals one vector-Jacobian product of that sum through the model's own code."""
    import torch

    key = (l, "norm")
    if key in verdicts:
        return verdicts[key] or None
    x, y = x_pre.detach(), node.detach()
    if x.shape != y.shape:
        verdicts[key] = False
        return None
    skip = x.shape[1] - u.shape[2]
    tol = 1e-4 if x.dtype != torch.float64 else 1e-10
    total = u.sum(0)
    ref = None
    for centered, gain, bias, eps in _norm_candidates(model, l):
        gain = gain.to(x.device, x.dtype)
        xc = x - x.mean(-1, keepdim=True) if centered else x
        guess = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps) * gain
        if bias is not None:
            guess = guess + bias.to(x.device, x.dtype)
        if not (bool(torch.isfinite(guess).all())
                and float((guess - y).abs().max()) <= tol * max(1.0, float(y.abs().max()))):
            continue
        if ref is None:
            padded = torch.cat([total.new_zeros(total.shape[:1] + (skip,) + total.shape[2:]), total], 1)
            ref = torch.autograd.grad(node, x_pre, grad_outputs=padded.to(node.dtype), retain_graph=True,
                                      allow_unused=True)[0]
            if ref is None:
                break
            ref = ref[:, skip:]
            scale = float(ref.abs().max()) if ref.numel() else 0.0
            if scale == 0:
                return None     # no evidence on this batch: the model's own backward, and ask again
        form = (centered, gain, eps)
        if float((_norm_back(form, x[:, skip:], total[None])[0] - ref).abs().max()) <= 10 * tol * scale:
            verdicts[key] = form
            return form
    verdicts[key] = False
    return None


def _norm_back(form: tuple, x: Any, v: Any) -> Any:
    """The vector-Jacobian product of a LayerNorm or RMSNorm ``form`` (:func:`_norm_form`) at its
    input ``x`` ``[b, pos, d]`` for cotangents ``v`` ``[k, b, pos, d]`` on its output, in closed
    form: with ``s = 1 / sqrt(mean(x'^2) + eps)``, ``n = x' s`` (``x'`` centered for a LayerNorm)
    and ``v' = gain * v`` (centered likewise), ``s (v' - n (n . v') / d)``."""
    import torch

    centered, gain, eps = form
    d = x.shape[-1]
    v = v.to(x.dtype) * gain
    if centered:
        x = x - x.mean(-1, keepdim=True)
        v = v - v.mean(-1, keepdim=True)
    s = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)                # [b, pos, 1]
    n = x * s
    c = torch.einsum("kbpd,bpd->kbp", v, n).unsqueeze(-1).div_(d)
    return torch.addcmul(v, n, c, value=-1).mul_(s)


def _full_cotangent(own: Any, out: Any, split: bool = False) -> Any:
    """From ``own`` ``[heads, b, width, d_head]`` (query head by query head) the cotangent on
    ``out`` ``[b, width, heads of the part, d_head]``: summed over query heads, or ``split``,
    ``[heads, b, width, heads of the part, d_head]`` with query head ``h``'s alone (under
    grouped-query attention query head ``h`` reads key/value head ``h // group``)."""
    import torch

    n_heads, n_part = own.shape[0], out.shape[-2]
    slot = torch.arange(n_heads, device=own.device) * n_part // n_heads                 # the head of out h reads
    onehot = (slot[:, None] == torch.arange(n_part, device=own.device)[None, :]).to(own.dtype)     # [heads, part heads]
    if split:
        return own[:, :, :, None, :] * onehot[:, None, None, :, None]
    return torch.einsum("hbwk,hj->bwjk", own, onehot)


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class EdgeScores(ComponentScores):
    """Attribution scores of edges, per prompt (:func:`edge_attribution`): a
    :class:`~pytest_circuits.scores.ComponentScores` keyed by :class:`Edge`, as
    :class:`EdgeSweep` is, so ``of(edge)`` (the per-prompt scores), ``measure``, ``ranking``,
    ``top`` and ``assert_top`` take an edge or its spelling (``"L0H1->L1H0.q"``).

    ``values[e, i]``: edge ``components[e]``'s score on prompt ``i``, in the units of the
    task's ``logit_metric`` (the linear estimate of the raw effect ``m(edge patched) -
    m(clean)``). ``attribution``: ``"eap"`` or ``"eap-ig"``, with ``steps`` points.
    ``totals[i]``: the whole corruption's effect on prompt ``i`` in the same units, ``m`` with
    every sender's output corrupted minus ``m`` clean (what :func:`discover` compares with);
    ``clean[i]``: ``m`` on the clean prompt (both float64 numpy ``[n]``). Scores have either
    sign: rank them by size with ``order="abs"`` (``top(10, order="abs")``)."""

    attribution: str = "eap"
    steps: int = 1
    task: str = ""
    seconds: float = 0.0
    totals: Any = None
    clean: Any = None

    def _rows(self, c: Any) -> list[int]:
        return super()._rows(_edge_key(c))

    @property
    def edges(self) -> tuple[Edge, ...]:
        """The edges scored (:attr:`components`)."""
        return tuple(self.components)

    def agreement(self, exact: EdgeSweep, k: int = 10) -> Agreement:
        """Spearman rank correlation of |mean score| and |mean exact effect| over the edges both
        have, and the share of the exact top ``k`` that the scores also rank in their top ``k``."""
        common = [e for e in exact.components if e in self._index]
        if len(common) < 3:
            raise CircuitsError("agreement needs exact effects of at least 3 scored edges")
        a = np.array([abs(float(self.of(e).mean())) for e in common])
        b = np.array([abs(float(exact.of(e).mean())) for e in common])
        ra, rb = _ranks(a), _ranks(b)
        rho = float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")
        k = min(k, len(common))
        by_exact = {common[i] for i in sorted(range(len(common)), key=lambda i: -b[i])[:k]}
        by_score = {common[i] for i in sorted(range(len(common)), key=lambda i: -a[i])[:k]}
        return Agreement(rho, len(by_exact & by_score) / k, k, len(common))

    def table(self, k: int = 10, *, by: str = "components", order: str = "abs") -> str:
        """The first ``k`` rows of the ranking (by |mean score| unless told), as text."""
        how = "largest |mean score|" if order == "abs" else f"{order} mean score"
        lines = [f"{self.attribution.upper()} ({self.steps} step{'s' if self.steps != 1 else ''}) on {self.task}, "
                 f"n={self.n}, {len(self.components)} edges, {self.seconds:.1f} s; {how} first:"]
        lines += [f"  {key_str(r.component):>18}  {r.mean:+.4f}" for r in self.top(k, by=by, order=order)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.table(5)


#: the deltas of one batch (every sender's write, ``[rows, senders, positions, d_model]``) are
#: held in at most about this many bytes: :func:`edge_attribution` takes fewer rows per batch
#: where the token budget would give more.
DELTA_BYTES = 256 << 20


def _attribution_batches(model: Any, ps: Any, n: int, store: ActivationStore, per_row: int) -> list[Any]:
    """The first ``n`` prompts in batches of like length (longest first, as the store batches
    its forwards), each as many rows as a quarter of the store's token budget (the batch's
    graph is kept for the per-layer products, and those batch the heads' cotangents) and as
    :data:`DELTA_BYTES` holds of the senders' deltas (``per_row`` bytes per row and position)."""
    import torch

    lengths = torch.as_tensor(list(ps.lengths[:n])).long()
    order = torch.sort(lengths, stable=True, descending=True).indices
    budget = store.budget(model)
    cap = store.batch_size or n
    out: list[Any] = []
    begin = 0
    while begin < n:
        width = int(lengths[order[begin]])
        rows = max(1, min(cap, budget.rows(model, width) // 4, DELTA_BYTES // max(1, per_row * width)))
        out.append(order[begin: begin + rows])
        begin += rows
    return out


def attribution_batches(model: Any, prompts: Any, n: int | None = None,
                        activations: ActivationStore | None = None) -> list[Any]:
    """The batches (rows of ``prompts``) in which :func:`edge_attribution` runs the first ``n``
    prompts with the store ``activations`` (what bench/edge_attribution_cost.py times one
    forward and backward of, per batch)."""
    import torch

    n = len(prompts) if n is None else min(int(n), len(prompts))
    dtype = torch.float64 if model.cfg.dtype == torch.float64 else torch.float32
    per_row = torch.empty((), dtype=dtype).element_size() * len(senders(model)) * int(model.cfg.d_model)
    return _attribution_batches(model, prompts, n, resolve(activations), per_row)


#: before a row's first changed token a sender's output is the same in the clean and corrupted
#: runs (it reads earlier tokens alone) but for float rounding, the two being batched apart: the
#: largest difference seen there, against the largest |clean value| of that hook in the batch,
#: must stay within this (or 16 machine epsilons of the activations' dtype, if more) for the
#: deltas there to be taken as 0; else the computed differences are used everywhere
PREFIX_RTOL = 1e-3


def _first_changes(clean: Any, corrupted: Any, lengths: Any) -> Any:
    """``[b]``: each row's first real position whose token differs between ``clean`` and
    ``corrupted`` (``[b, width]`` tokens), ``width`` where none does."""
    import torch

    pos = torch.arange(clean.shape[1])
    changed = (clean != corrupted) & (pos[None, :] < lengths[:, None])
    return torch.where(changed.any(1), changed.int().argmax(1), clean.shape[1])


def _deltas(model: Any, clean: dict[str, Any], corr: dict[str, Any], first: Any, lengths: Any, dtype: Any,
            device: Any) -> tuple[Any, int]:
    """``(deltas, begin)``: ``deltas`` ``[b, senders, width - begin, d_model]`` what patching each
    sender (:func:`senders` order) adds to the residual stream of the batch's rows at positions
    ``begin`` on, ``o_s(corrupted) - o_s(clean)`` in ``dtype`` (``clean``, ``corr``: the
    senders' hook values ``[b, width, ...]``, the batch's own), 0 past each row's length: the
    differences taken in float64 as :func:`sender_delta` does, a head's product with its
    ``W_O[h]`` in ``dtype``.

    Before a row's first changed token (``first``, :func:`_first_changes`; a row whose tokens
    all agree, everywhere) a delta is 0 by causality (and row by row, each row its own run):
    there it is set to exactly 0, once every hook's differences there are seen to be rounding
    (:data:`PREFIX_RTOL`), and ``begin`` is the first row's first change (the positions before it
    carry no delta: the products skip them). Where a difference there is more than rounding the
    computed deltas are used as they are, from position 0."""
    import torch

    L, n_heads = model.cfg.n_layers, model.cfg.n_heads
    width = int(lengths.max())
    pos = torch.arange(width, device=device)
    real = pos[None, :] < lengths.to(device)[:, None]                                   # [b, width]
    keep = (pos[None, :] >= first.to(device)[:, None]) & real
    before = (pos[None, :] < first.to(device)[:, None]) & real
    begin = min(int(first.min()), width)
    names = _sender_hooks(model, Embed()) + [H.z(l) for l in range(L)] + [H.mlp_out(l) for l in range(L)]

    def differences(begin: int) -> dict[str, Any]:
        return {nm: corr[nm][:, begin:width].to(device, torch.float64) - clean[nm][:, begin:width].to(device, torch.float64)
                for nm in names}

    d = differences(begin)
    causal = True
    for nm in names:            # rounding alone before each row's first change?
        c = clean[nm][:, :width].to(device)
        extra = (1,) * (c.dim() - 2)
        leak = (d[nm] * before[:, begin:].view(before[:, begin:].shape + extra)).abs().max() if begin < width else 0.0
        if begin:           # every row's prefix, in the activations' dtype (no float64 copy of it)
            gap = (corr[nm][:, :begin].to(device, c.dtype) - c[:, :begin]) * real[:, :begin].view((-1, begin) + extra)
            leak = max(float(leak), float(gap.abs().max()))
        tol = max(PREFIX_RTOL, 16 * torch.finfo(c.dtype).eps)
        if not float(leak) <= tol * float(c.abs().max()):
            causal = False
            # not silent: a model that reads later tokens, or corrupted outputs that are not of
            # these prompts' corrupted run, would make every score differ from EAP's
            warnings.warn(CircuitsWarning(
                f"edge attribution: {nm} differs between the clean and corrupted runs before a row's first "
                f"changed token by {float(leak):.3g} (more than rounding, {tol:g} of its largest |value|): the "
                "deltas there are taken as computed, not as 0"), stacklevel=3)
            break
    if causal:
        mask = keep
    else:
        mask, begin = real, 0
        d = differences(0)
    out = torch.empty((len(first), 1 + L * (n_heads + 1), width - begin, int(model.cfg.d_model)), dtype=dtype, device=device)
    W_O = attn_output_weights(model)

    def diff(name: str) -> Any:
        v = d[name]
        return v * mask[:, begin:].view(v.shape[:2] + (1,) * (v.dim() - 2))

    out[:, 0] = sum(diff(nm) for nm in names[:-2 * L]).to(dtype)
    for l in range(L):
        at = 1 + l * (n_heads + 1)
        dz = diff(H.z(l))                                           # [b, width - begin, heads, d_head]
        # the difference exact in float64, its product with W_O in the scores' dtype
        out[:, at: at + n_heads] = torch.einsum("bphk,hkd->bhpd", dz.to(dtype), W_O[l].to(device, dtype))
        out[:, at + n_heads] = diff(H.mlp_out(l)).to(dtype)
    return out, begin


def _metric_of_last(metrics: Sequence[Any], last: Any, lengths: Any, width: int) -> list[float] | None:
    """Each row's metric of logits ``[1, width, vocab]`` that hold ``last[i]`` at the row's last
    real position and, everywhere else, NaN in one evaluation and random values in another:
    the two values, when finite and equal, are the metric's of the whole run (it read that
    position alone). None for the first row where they are not (a metric that reads another
    position, or every position, or one that raises on the probe): the caller runs the forward."""
    import torch

    shape = (1, width) + tuple(last.shape[1:])
    gen = torch.Generator(device="cpu").manual_seed(0)
    fills = (torch.full(shape, float("nan"), dtype=last.dtype, device=last.device),
             torch.randn(shape, generator=gen, dtype=last.dtype).to(last.device))
    out: list[float] = []
    for i, m in enumerate(metrics):
        at = int(lengths[i]) - 1
        values = []
        for probe in fills:
            kept = probe[0, at].clone()
            probe[0, at] = last[i]
            try:
                with torch.no_grad():
                    values.append(float(m(probe)))
            except Exception:   # e.g. a metric that refuses non-finite logits: the forward will tell
                return None
            finally:
                probe[0, at] = kept
        if not (np.isfinite(values[0]) and values[0] == values[1]):
            return None
        out.append(values[0])
    return out


# receiver layers scored by one product: the senders' deltas are read once per chunk, not once
# per layer (the product is bound by reading them; 5 halves its time on SmolLM2)
SCORE_CHUNK = 5


def _score(flat: Any, chunk: list, plan: dict, acc: Any) -> None:
    """Adds to ``acc`` ``[edges, b]`` the scores of the edges into the receiver layers of
    ``chunk`` (``(layer or None, g [b, receivers, positions * d_model])``, each layer's
    receivers' gradients), from the senders' deltas ``flat`` ``[b, senders, positions *
    d_model]``: one batched product for the whole chunk, over the senders before its last
    layer (a sender after a receiver's layer gets a product that no edge reads)."""
    import torch

    tops = [int(plan[layer][1].max()) + 1 for layer, _ in chunk]
    g = chunk[0][1] if len(chunk) == 1 else torch.cat([g for _, g in chunk], 1)
    m = torch.bmm(flat[:, :max(tops)], g.transpose(1, 2))          # [b, senders, receivers of the chunk]
    at = 0
    for layer, g in chunk:
        j, s, r = plan[layer]
        acc[j] += m[:, s, at + r].T.double().cpu()
        at += g.shape[1]


_PLANS: dict[int, tuple[Any, Any, dict]] = {}


def _plan(model: Any, es: tuple) -> dict:
    """Each edge's place in the scoring products, by receiver layer (None: the logits): the
    tensors ``(edge index, sender index in :func:`senders` order, receiver index in its layer)``.
    Kept for the last few edge tuples (the whole graph's is one tuple per model shape), each
    with the sender list it was made for."""
    import torch

    ss = senders(model)
    got = _PLANS.get(id(es))
    if got is not None and got[0] is es and got[1] == ss:
        return got[2]
    n_heads = model.cfg.n_heads
    s_index = {s: i for i, s in enumerate(ss)}
    where: dict[Any, list[tuple[int, int, int]]] = {}
    for j, e in enumerate(es):
        if e.receiver is None:
            where.setdefault(None, []).append((j, s_index[e.sender], 0))
        else:
            r = 3 * e.receiver.head + PARTS.index(e.part) if isinstance(e.receiver, Head) else 3 * n_heads
            where.setdefault(e.receiver.layer, []).append((j, s_index[e.sender], r))
    plan = {k: tuple(torch.tensor(c) for c in zip(*v)) for k, v in where.items()}
    if len(_PLANS) >= 8:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[id(es)] = (es, ss, plan)
    return plan


def edge_attribution(model: Any, task: Any, *, method: str = "eap", steps: int | None = None,
                     ig_over: str = "activations", edges: Any = None, n: int | None = None,
                     activations: ActivationStore | None = None) -> EdgeScores:
    """EAP or EAP-IG scores of ``edges`` (default: every edge) on the first ``n`` prompts
    (default all), with the task's differentiable ``logit_metric(i)`` (module docstring).
    ``steps``: EAP-IG's number of points (default :data:`DEFAULT_IG_STEPS`); EAP takes 1.

    Prompts run in batches of like length (sized by the token budget of ``activations``, the
    store that also gives the corrupted senders' outputs; the clean ones are the gradient
    forward's own): per batch and step one
    forward and one backward of the model, then per layer a few batched vector-Jacobian
    products in the same graph (:func:`_layer_grads`), and one forward without gradient for
    the whole corruption's effect. Each score is per prompt, as if
    the prompt had run alone (tests/unit/test_edges.py checks it against one prompt at a
    time, prompts of unequal length included)."""
    import torch

    if method not in METHODS:
        raise CircuitsError(bad("method", method, "'eap' or 'eap-ig'"))
    if ig_over not in IG_OVER:
        raise CircuitsError(bad("ig_over", ig_over, "'activations' (interpolating the senders' outputs; "
                                "interpolating the input embeddings alone is not implemented)"))
    if steps is None:
        steps = 1 if method == "eap" else DEFAULT_IG_STEPS
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CircuitsError(bad("steps", steps, "a positive int"))
    if method == "eap" and steps != 1:
        raise CircuitsError(bad("steps", steps, "1 for method='eap' (use method='eap-ig' for more)"))
    check_task(task, logit_metric=True)
    _refuse_unsupported(model)
    es = as_edges(model, edges)
    ps = task.prompts
    n = len(ps) if n is None else min(int(n), len(ps))
    if n < 1:
        raise CircuitsError(bad("n", n, "at least 1 prompt"))
    if ps.corrupted is None or list(ps.corrupted.lengths) != list(ps.lengths):
        raise CircuitsError(bad("task", task.name, "a task whose corrupted prompts are aligned token for token "
                                "with the clean ones (PromptSet.build(..., align=True))"))
    start = time.perf_counter()
    store = resolve(activations)
    L, n_heads = model.cfg.n_layers, model.cfg.n_heads
    names = [H.EMBED] + ([H.POS_EMBED] if len(_sender_hooks(model, Embed())) > 1 else []) \
        + [H.z(l) for l in range(L)] + [H.mlp_out(l) for l in range(L)]
    # the clean senders' outputs are the gradient forward's own (the clean run, batched as it is);
    # the corrupted ones and the corrupted run's last logits come from the store
    corr = store.get(model, ps.corrupted, names + [H.LOGITS_LAST])
    device = model_info(model).device
    dtype = torch.float64 if model.cfg.dtype == torch.float64 else torch.float32
    plan = _plan(model, es)
    layers = [k for k in plan if k is not None]
    batches = attribution_batches(model, ps, n, store)
    scores = torch.zeros((len(es), n), dtype=torch.float64)
    totals = np.zeros(n)
    at_clean = np.zeros(n)
    linear: dict = {}           # (layer, part): whether the projection is the model's W (_part_grad)
    for rows in bar(batches, f"edge attribution {task.name}", total=len(batches)):
        lengths = torch.tensor([ps.lengths[int(i)] for i in rows])
        width = int(lengths.max())
        tokens = ps.tokens[rows, :width].to(device)
        metrics = [task.logit_metric(int(i)) for i in rows]
        first = _first_changes(ps.tokens[rows, :width], ps.corrupted.tokens[rows, :width], lengths)
        corr_b = {nm: corr[nm][rows, :width] for nm in names}
        clean: dict = {}
        held: dict = {}

        def deltas() -> int:
            # [b, senders, (width - begin) * d_model]
            flat, held["begin"] = _deltas(model, clean, corr_b, first, lengths, dtype, device)
            held["flat"] = flat.flatten(2)
            return held["begin"]

        acc = torch.zeros((len(es), len(rows)), dtype=torch.float64)
        seen: list = []
        # the whole corruption in the metric's units: every sender's output corrupted, which is the
        # corrupted run; its last logits are the store's where the metric reads nothing else
        got = _metric_of_last(metrics, corr[H.LOGITS_LAST][rows].to(device), lengths, width)
        skip: Any = deltas
        for k in range(steps):
            a = k / steps
            targets = None if k == 0 else {nm: clean[nm].double() * (1 - a) + corr_b[nm].to(device).double() * a
                                           for nm in names}
            chunk: list = []
            grads = _layer_grads(model, tokens, metrics, targets, layers, seen if k == 0 else None, linear,
                                 skip=skip, last=None if got is None else lengths - 1, own=clean if k == 0 else None)
            for layer, g in grads:
                if layer in plan:
                    chunk.append((layer, g.to(dtype).flatten(2)))
                if len(chunk) == SCORE_CHUNK:
                    _score(held["flat"], chunk, plan, acc)
                    chunk = []
            if chunk:
                _score(held["flat"], chunk, plan, acc)
            skip = held["begin"]
        scores[:, rows] = acc / steps
        at_clean[rows.numpy()] = seen
        if got is None:         # the metric reads other positions: one forward, no gradient
            fixed = [(nm, (lambda t, hook=None, v=corr[nm][rows, :width]: v.to(t.device, t.dtype))) for nm in names]
            with torch.no_grad():
                logits = _run(model, tokens, fixed)
                got = [float(m(logits[i: i + 1])) for i, m in enumerate(metrics)]
        totals[rows.numpy()] = got
    totals = totals - at_clean
    name = f"edge_attribution[{task.name}]"
    _finite(name, model, ps, torch.as_tensor(np.stack([at_clean, totals], 1)), "metric values (clean, corrupted)")
    _finite(name, model, ps, scores.T, "edge scores")
    cfg = model.cfg
    title = f"{method.upper()} scores" + (f" ({steps} step{'s' if steps != 1 else ''})" if method == "eap-ig" else "")
    return EdgeScores(components=es, values=scores, name=f"{method}[{{}}]", title=title, model=model_info(model).label,
                      prompts=task.name, labels=tuple(ps.prompts[:n]),
                      provenance={"task": task.name, "method": method, "steps": steps},
                      shape=(int(cfg.n_layers), int(cfg.n_heads)), attribution=method, steps=steps, task=task.name,
                      seconds=time.perf_counter() - start, totals=totals, clean=at_clean)


# -- verification ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One edge's attribution score against its exact effect (both raw, mean over prompts)."""

    edge: Edge
    score: float
    exact: float
    problem: str | None             # None, "sign" or "magnitude"

    def __repr__(self) -> str:
        flag = f"  <- {self.problem}" if self.problem else ""
        return f"{str(self.edge):>18}  score {self.score:+.4f}  exact {self.exact:+.4f}{flag}"


@dataclass(frozen=True)
class Verification:
    """:func:`verify`'s result: the exact sweep of the top edges and each edge's check."""

    exact: EdgeSweep
    checks: tuple[Check, ...]
    ratio: float

    @property
    def flagged(self) -> tuple[Edge, ...]:
        """Edges whose attribution disagrees with exact patching in sign or magnitude."""
        return tuple(c.edge for c in self.checks if c.problem)

    @property
    def confirmed(self) -> tuple[Edge, ...]:
        return tuple(c.edge for c in self.checks if not c.problem)

    def __repr__(self) -> str:
        head = (f"Verification of {len(self.checks)} edges against exact patching (flagged: sign differs, or "
                f"|score| / |exact| outside [1/{self.ratio:g}, {self.ratio:g}]): {len(self.flagged)} flagged")
        return "\n".join([head] + [f"  {c!r}" for c in self.checks])


def verify(model: Any, task: Any, scores: EdgeScores, k: int = 10, *, ratio: float = 2.0,
           floor: float = 0.01, activations: ActivationStore | None = None) -> Verification:
    """Exact-patch the top ``k`` edges of ``scores`` by |score| and flag those whose score
    has the wrong sign or is off by more than a factor ``ratio`` (attention saturation,
    cancellation). Values below ``floor`` times the corruption's whole effect count as 0
    (a score and an effect both that small agree; one of them that small while the other is
    not is a magnitude disagreement). Scores are in the units of ``logit_metric``: compare
    on tasks whose ``logit_metric`` is the metric of ``scores`` (module docstring)."""
    if not ratio > 1:
        raise CircuitsError(bad("ratio", ratio, "a factor > 1"))
    top = [e for e, _ in scores.top(k, order="abs")]
    exact = edge_patch(model, task, top, activations=activations)
    tiny = floor * abs(exact.scale)
    checks = []
    for e in top:
        s, x = float(scores.of(e).mean()), float(exact.of(e).mean())
        small_s, small_x = abs(s) <= tiny, abs(x) <= tiny
        if small_s and small_x:
            problem = None
        elif small_s != small_x:
            problem = "magnitude"
        elif (s > 0) != (x > 0):
            problem = "sign"
        elif not 1 / ratio <= abs(s) / abs(x) <= ratio:
            problem = "magnitude"
        else:
            problem = None
        checks.append(Check(e, s, x, problem))
    return Verification(exact, tuple(checks), ratio)


# -- edge circuits ---------------------------------------------------------------------------

#: :func:`discover` finds nothing when the corruption's mean effect is at most this fraction of
#: the metric's typical size (mean |m| over clean and corrupted prompts): no effect to share out.
NO_EFFECT = 1e-6


def per_prompt(source: Any) -> tuple[tuple[Edge, ...], Any, Any, float]:
    """``(edges, values [E, n], totals [n], size)`` of an :class:`EdgeSweep` (exact effects)
    or an :class:`EdgeScores` (attribution scores), float64 numpy: each edge's value per prompt,
    the whole corruption's effect per prompt in the same units, and the metric's typical size
    (the larger of its mean |value| clean and corrupted; :func:`discover`'s ``size``)."""
    if isinstance(source, EdgeSweep):
        vals = source.values.numpy()
        totals = source.totals
        if totals is None:      # a sweep built elsewhere: every prompt's total taken as the mean one
            totals = np.full(vals.shape[1], source.scale)
        return (tuple(source.components), vals, np.asarray(totals, dtype=np.float64),
                max(abs(source.clean), abs(source.corrupted)))
    if isinstance(source, EdgeScores):
        if source.totals is None or source.clean is None:
            raise CircuitsError(bad("scores", "EdgeScores without totals", "scores from edge_attribution (they "
                                    "carry each prompt's whole corruption effect)"))
        clean, totals = np.asarray(source.clean, dtype=np.float64), np.asarray(source.totals, dtype=np.float64)
        return (tuple(source.components), source.values.numpy(), totals,
                max(float(np.abs(clean).mean()), float(np.abs(clean + totals).mean())))
    raise CircuitsError(bad("source", type(source).__name__, "an EdgeSweep (edge_patch) or EdgeScores "
                            "(edge_attribution)"))


def discover(values: Any, totals: Any, threshold: float = 0.05, weights: Any = None, *,
             size: float | None = None) -> Any:
    """The discovery rule of :func:`edge_circuit` and :func:`~pytest_circuits.techniques.edge_stability.stability`:
    with ``w`` the prompts' weights (default ``1/n`` each; a bootstrap resample's weights are
    its counts over ``n``), edge ``e`` is kept when

        |sum_i w_i values[e, i]| >= threshold * |sum_i w_i totals[i]|   and   |sum_i w_i values[e, i]| > 0,

    i.e. its (resampled) mean effect or score is at least ``threshold`` of the (resampled) mean
    effect of the whole corruption, in absolute value. When that mean effect is at most
    :data:`NO_EFFECT` times ``size`` (the metric's typical size, :func:`per_prompt`; default the
    mean |total| over prompts, which only catches a corruption that changes nothing at all), nothing is kept: there is no effect to share out. ``values``: ``[E, n]``;
    ``weights``: ``[n]`` (returns a bool mask ``[E]``) or ``[B, n]`` (a mask ``[B, E]``)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise CircuitsError(bad("threshold", threshold, "a fraction in (0, 1] of the corruption's effect"))
    vals = np.asarray(values, dtype=np.float64)
    tot = np.asarray(totals, dtype=np.float64)
    n = tot.shape[0]
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
    one = w.ndim == 1
    w2 = w[None, :] if one else w
    means = w2 @ vals.T                                  # [B, E]
    total = w2 @ tot                                     # [B]
    size = float(np.abs(tot).mean()) if size is None else float(size)
    effect = np.abs(total) > NO_EFFECT * size
    kept = (np.abs(means) >= threshold * np.abs(total)[:, None]) & (np.abs(means) > 0) & effect[:, None]
    return kept[0] if one else kept


def edge_circuit(model: Any, kept: Any, *, threshold: float = 0.05, name: str = "edge-circuit") -> Circuit:
    """A :class:`~pytest_circuits.techniques.circuits.Circuit` of edges: ``kept`` is a list of
    edges (or their spellings), or an :class:`EdgeSweep` or :class:`EdgeScores`, from which the
    edges are kept by :func:`discover`'s rule (mean effect or score at least ``threshold`` of
    the whole corruption's mean effect, in absolute value). The circuit's components are the
    kept edges' heads and MLPs (the embedding is always kept)."""
    if isinstance(kept, (EdgeSweep, EdgeScores)):
        edges, vals, totals, size = per_prompt(kept)
        es = tuple(e for e, k in zip(edges, discover(vals, totals, threshold, size=size)) if k)
    else:
        es = as_edges(model, kept) if kept else ()
    comps = {c for e in es for c in (e.sender, e.receiver) if isinstance(c, (Head, MLP))}
    if not comps:
        raise CircuitsError(bad("kept", [str(e) for e in es], "edges with at least one head or MLP end"))
    return Circuit.of(model, sorted(comps, key=lambda c: c.sort_key()),
                      edges=[(str(e.sender), e.receiver_name) for e in es], name=name)


__all__ = ["Check", "DEFAULT_IG_STEPS", "Edge", "EdgeInput", "EdgeScores", "EdgeSweep", "NO_EFFECT", "PARTS",
           "Verification", "as_edges", "discover", "edge_attribution", "edge_circuit", "edge_intervention", "edge_patch", "graph",
           "parallel_blocks", "per_prompt", "receivers", "sender_delta", "senders", "verify"]
