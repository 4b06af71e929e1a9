"""Model components and the spellings researchers use for them.

``parse("L10H7")``, ``parse("10.7")`` and ``parse("a10.h7")`` all give ``Head(10, 7)``;
``"attn9"``/``"a9"`` give ``Attn(9)``; ``"mlp9"``/``"m9"`` give ``MLP(9)``;
``"L3N609"`` gives ``Neuron(3, 609)``; ``"L1E3"`` (or ``"mlp1.e3"``) gives ``Expert(1, 3)``,
expert 3 of layer 1's mixture of experts; ``"embed"`` gives ``Embed()``.
Parsing checks only the spelling; ``component.validate(model)`` checks the numbers
against a model's config and names the valid range when they are out of it.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import ComponentError, bad


def _cfg(model: Any) -> Any:
    return getattr(model, "cfg", model)


@dataclass(frozen=True, order=True)
class Component:
    """Base class; concrete components are frozen, hashable and sortable."""

    def validate(self, model: Any) -> "Component":  # pragma: no cover - overridden
        return self

    def sort_key(self) -> tuple:
        """Forward order: embed, then per layer attention (heads) before MLP (neurons)."""
        kind = {"Embed": 0, "Head": 1, "Attn": 1, "MLP": 2, "Neuron": 2, "Expert": 2}[type(self).__name__]
        return (self.layer, kind, str(self))


def _check_int(comp: "Component", **values: Any) -> None:
    """Each value must be an integer (numpy ints are turned into ``int``); bools are not."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ComponentError(bad(f"{type(comp).__name__}.{name}", v, "an int"))
        if type(v) is not int:  # numpy ints: store a plain int, so equal components hash equal
            object.__setattr__(comp, name, int(v))


def _check_layer(comp: "Component", layer: int, model: Any) -> None:
    n_layers = _cfg(model).n_layers
    if not 0 <= layer < n_layers:
        raise ComponentError(
            bad("component", str(comp), f"layer must be in 0..{n_layers - 1} "
                f"(this model has {n_layers} layers)")
        )


@dataclass(frozen=True, order=True)
class Embed(Component):
    """The token embedding (its output is the residual stream before block 0)."""

    layer: int = field(default=-1, init=False, repr=False)

    def __repr__(self) -> str:
        return "Embed()"

    def __str__(self) -> str:
        return "embed"

    def validate(self, model: Any) -> "Embed":
        return self


@dataclass(frozen=True, order=True)
class Attn(Component):
    """A whole attention layer (the sum of its heads, plus its output bias)."""

    layer: int

    def __post_init__(self) -> None:
        _check_int(self, layer=self.layer)

    def __repr__(self) -> str:
        return f"Attn({self.layer})"

    def __str__(self) -> str:
        return f"attn{self.layer}"

    def validate(self, model: Any) -> "Attn":
        _check_layer(self, self.layer, model)
        return self


@dataclass(frozen=True, order=True)
class Head(Component):
    """One attention head: ``Head(10, 7)`` is written ``L10H7``."""

    layer: int
    head: int

    def __post_init__(self) -> None:
        _check_int(self, layer=self.layer, head=self.head)

    def __repr__(self) -> str:
        return f"Head({self.layer}, {self.head})"

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    def validate(self, model: Any) -> "Head":
        _check_layer(self, self.layer, model)
        n_heads = _cfg(model).n_heads
        if not 0 <= self.head < n_heads:
            raise ComponentError(
                bad("component", str(self), f"head must be in 0..{n_heads - 1} "
                    f"(this model has {n_heads} heads per layer)")
            )
        return self


@dataclass(frozen=True, order=True)
class MLP(Component):
    """One MLP block's output."""

    layer: int

    def __post_init__(self) -> None:
        _check_int(self, layer=self.layer)

    def __repr__(self) -> str:
        return f"MLP({self.layer})"

    def __str__(self) -> str:
        return f"mlp{self.layer}"

    def validate(self, model: Any) -> "MLP":
        _check_layer(self, self.layer, model)
        return self


@dataclass(frozen=True, order=True)
class Neuron(Component):
    """One MLP neuron (post-activation): ``Neuron(3, 609)`` is written ``L3N609``."""

    layer: int
    index: int

    def __post_init__(self) -> None:
        _check_int(self, layer=self.layer, index=self.index)

    def __repr__(self) -> str:
        return f"Neuron({self.layer}, {self.index})"

    def __str__(self) -> str:
        return f"L{self.layer}N{self.index}"

    def validate(self, model: Any) -> "Neuron":
        _check_layer(self, self.layer, model)
        from .moe import n_experts

        experts = n_experts(model, self.layer)
        if experts:
            # the block's hook_post is its output (d_model wide), not a layer of neurons
            raise ComponentError(
                bad("component", str(self), f"a neuron of a dense MLP: layer {self.layer}'s MLP is a mixture of "
                    f"{experts} experts, each with neurons of its own, and has no neuron basis; use its experts "
                    f"(L{self.layer}E0 .. L{self.layer}E{experts - 1}) or the whole MLP (mlp{self.layer})"))
        d_mlp = _cfg(model).d_mlp
        if not 0 <= self.index < d_mlp:
            raise ComponentError(
                bad("component", str(self), f"neuron index must be in 0..{d_mlp - 1} "
                    f"(this model's MLPs have {d_mlp} neurons)")
            )
        return self


@dataclass(frozen=True, order=True)
class Expert(Component):
    """One expert of a layer's mixture of experts: ``Expert(1, 3)`` is written ``L1E3``. Its
    output is what the MoE block adds for it at each position, the expert's MLP output times
    its routing weight (0 where the router did not pick it): :mod:`pytest_circuits.moe`."""

    layer: int
    expert: int

    def __post_init__(self) -> None:
        _check_int(self, layer=self.layer, expert=self.expert)

    def __repr__(self) -> str:
        return f"Expert({self.layer}, {self.expert})"

    def __str__(self) -> str:
        return f"L{self.layer}E{self.expert}"

    def validate(self, model: Any) -> "Expert":
        _check_layer(self, self.layer, model)
        from .moe import moe_layers, n_experts, sparse_block

        n = n_experts(model, self.layer)
        if n == 0:
            layers = moe_layers(model)
            where = (f"layers with experts: {', '.join(map(str, layers))}" if layers
                     else "this model has no mixture-of-experts layers: its MLPs are dense")
            raise ComponentError(bad("component", str(self), f"an expert of a mixture-of-experts layer ({where})"))
        if not 0 <= self.expert < n:
            raise ComponentError(bad("component", str(self), f"expert must be in 0..{n - 1} "
                                     f"(layer {self.layer} has {n} experts)"))
        sparse_block(model, self.layer)      # refuses a block whose experts cannot be components
        return self


ComponentLike = Union[Component, str]

_N = r"([0-9]{1,6})"  # ASCII digits only ("\d" would take "L١H٠" as Head(1, 0))
_PATTERNS = [
    (re.compile(rf"^L{_N}H{_N}$", re.I), lambda a, b: Head(int(a), int(b))),
    (re.compile(rf"^{_N}\.{_N}$"), lambda a, b: Head(int(a), int(b))),
    (re.compile(rf"^a{_N}\.h{_N}$", re.I), lambda a, b: Head(int(a), int(b))),
    (re.compile(rf"^L{_N}N{_N}$", re.I), lambda a, b: Neuron(int(a), int(b))),
    (re.compile(rf"^L{_N}E{_N}$", re.I), lambda a, b: Expert(int(a), int(b))),
    (re.compile(rf"^(?:mlp|m){_N}\.e{_N}$", re.I), lambda a, b: Expert(int(a), int(b))),
]
_SINGLE = [
    (re.compile(rf"^(?:attn|a){_N}$", re.I), lambda a: Attn(int(a))),
    (re.compile(rf"^(?:mlp|m){_N}$", re.I), lambda a: MLP(int(a))),
    (re.compile(rf"^L{_N}(?:attn|A)$", re.I), lambda a: Attn(int(a))),
    (re.compile(rf"^L{_N}(?:mlp|M)$", re.I), lambda a: MLP(int(a))),
]
_VALID_SPELLINGS = ("L10H7, 10.7, a10.h7 (heads); attn9, a9, L9A (attention layers); "
                    "mlp9, m9, L9M (MLPs); L3N609 (neurons); L1E3, mlp1.e3 (experts of a mixture of "
                    "experts); embed")


def parse(spec: ComponentLike, model: Any = None) -> Component:
    """Turn a spelling (or a Component) into a Component, validated if ``model`` is given."""
    if isinstance(spec, Component):
        comp = spec
    elif isinstance(spec, str):
        comp = _parse_str(spec)
    else:
        raise ComponentError(bad("component", spec, "a Component or a string such as "
                                 + _VALID_SPELLINGS))
    return comp.validate(model) if model is not None else comp


def _parse_str(spec: str) -> Component:
    s = spec.strip()
    if s.lower() in ("embed", "emb", "e", "embedding"):
        return Embed()
    for pattern, make in _PATTERNS:
        m = pattern.match(s)
        if m:
            return make(*m.groups())
    for pattern, make in _SINGLE:
        m = pattern.match(s)
        if m:
            return make(*m.groups())
    raise ComponentError(bad("component", spec, "spell it as one of " + _VALID_SPELLINGS))


def parse_many(specs: Any, model: Any = None) -> tuple[Component, ...]:
    """Parse one spelling or an iterable of them into a tuple of Components."""
    if isinstance(specs, (str, Component)):
        specs = [specs]
    try:
        items = list(specs)
    except TypeError:
        raise ComponentError(bad("components", specs, "a component or a list of them")) from None
    return tuple(parse(s, model) for s in items)


def all_heads(model: Any) -> list[Head]:
    cfg = _cfg(model)
    return [Head(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def all_experts(model: Any) -> list[Expert]:
    """Every expert of every mixture-of-experts layer, in forward order (none for a dense model)."""
    from .moe import moe_layers, n_experts

    return [Expert(l, e) for l in moe_layers(model) for e in range(n_experts(model, l))]


def all_layers(model: Any) -> list[Component]:
    """Every attention layer and MLP, in forward order: attn0, mlp0, attn1, ..."""
    cfg = _cfg(model)
    out: list[Component] = []
    for l in range(cfg.n_layers):
        out += [Attn(l), MLP(l)]
    return out
