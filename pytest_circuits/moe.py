"""Mixture-of-experts layers: which layers route tokens to experts, and each expert's output.

A sparse mixture-of-experts block (Mixtral, Qwen3-MoE, OLMoE, ...) writes, at each position,

    out(x) = sum_e g_e(x) f_e(x)

where ``x`` is the block's input (``blocks.L.mlp.hook_in``: the norm's output), ``f_e`` expert
``e``'s MLP and ``g_e(x)`` its routing weight: the router's weight where ``e`` is among the top
``k`` experts of ``x``, else 0. **Expert e's output** is ``g_e(x) f_e(x)``, what the block adds
for it at that position; the component ``Expert(L, e)``, written ``L{L}E{e}``
(:mod:`pytest_circuits.components`).

It is computed from the block's input with the block's own router and experts (the Hugging
Face modules the bridge wraps, called directly, so that no TransformerLens hook fires): the
router gives each position's top-k experts and weights, and the experts module run with every
weight but expert ``e``'s set to 0 gives ``e``'s share as the block computes it (the other
experts' rows are multiplied by 0 and add an exact 0). The experts' outputs sum to the block's
output; :func:`check_sum` checks it wherever they are read (to float rounding: the block adds
its top-k terms once, the sum here adds each expert's rounded output), and
:func:`sparse_block` checks once per layer and weights state that the block's own forward is
exactly this sum (a block with anything more, such as a shared expert, is refused there).

**Compatibility mode** folds the norm's gain into every weight that reads the block's input:
the router and the experts' input projections (TransformerLens does it for batched experts,
and declines the whole fold rather than a part of it). The block's input is then the
normalized residual without the gain, and each expert computes the same function of the
residual stream as in the checkpoint (the gain moved from the input into its weights), so the
expert outputs are the checkpoint's (tests/unit/test_experts.py compares them with the Hugging
Face model on the unfolded checkpoint). Where TransformerLens declines the fold, the gain stays
in the norm and the block's input carries it: the outputs are again the block's own.

Supported: blocks whose parameters all belong to a router (``gate`` or ``router``, returning
router logits, top-k weights and top-k indices) and a batched experts module called as
``experts(x, top_k_index, top_k_weights)`` (transformers 5). Refused with the reason (a
:class:`~pytest_circuits.errors.ComponentError` naming the layer): a shared expert (Qwen2-MoE,
DeepSeek), experts kept as a list of modules, anything else in the block.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import ComponentError, MeasurementError

ROUTER_NAMES = ("gate", "router")
#: How many random positions :func:`sparse_block` runs through a block to check its identity.
CHECK_POSITIONS = 16
# HF block -> the state of its weights when its identity was last checked
_CHECKED: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


def _arch(model: Any) -> str:
    """The Hugging Face class a loaded model was built from (how errors here name it)."""
    return type(getattr(model, "original_model", model)).__name__


def _unwrap(module: Any) -> Any:
    """The module a bridge component wraps (itself when it wraps none)."""
    import torch

    while isinstance(getattr(module, "original_component", None), torch.nn.Module):
        module = module.original_component
    return module


def _mlp(model: Any, layer: int) -> Any:
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return None
    return getattr(blocks[layer], "mlp", None)


@dataclass(frozen=True)
class Sparse:
    """A sparse MoE block: the bridge component, the Hugging Face block, its router (the raw
    module) and experts, how many experts it has, and where the router's output tuple keeps
    the top-k weights and indices."""

    bridge: Any
    block: Any
    router: Any
    experts: Any
    n_experts: int
    weights_at: int = 1
    indices_at: int = 2


def _structure(model: Any, layer: int) -> "Sparse | str | None":
    """The sparse block of ``layer``, None when its MLP is dense, or why its experts cannot
    be components (a sentence)."""
    import torch

    mlp = _mlp(model, layer)
    if mlp is None or getattr(mlp, "bound_dense", False):
        return None
    block = _unwrap(mlp)
    experts = getattr(block, "experts", None)
    if experts is None:
        return None
    experts = _unwrap(experts)
    if isinstance(experts, (torch.nn.ModuleList, torch.nn.ModuleDict)):
        return (f"its experts are kept as a list of modules ({type(block).__name__}), a layout whose "
                "routing this package does not read")
    n = getattr(experts, "num_experts", None)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return f"its experts module ({type(experts).__name__}) does not say how many experts it has"
    router_name = next((r for r in ROUTER_NAMES if isinstance(getattr(block, r, None), torch.nn.Module)), None)
    if router_name is None:
        return f"{type(block).__name__} has no router named {' or '.join(ROUTER_NAMES)}"
    others = [name for name, child in block.named_children()
              if name not in (router_name, "experts") and any(True for _ in child.parameters())]
    own = [name for name, _ in block.named_parameters(recurse=False)]
    if others or own:
        what = ", ".join(others + own)
        shared = any("shared" in name for name in others + own)
        return (f"{type(block).__name__} has {'a shared expert' if shared else 'weights'} besides its router and "
                f"routed experts ({what}), which every token goes through: its output is not the sum of the "
                "routed experts' outputs")
    router_bridge = getattr(block, router_name)
    wi = getattr(router_bridge, "weights_index", 1)
    ii = getattr(router_bridge, "indices_index", 2)
    if not isinstance(wi, int) or not isinstance(ii, int):
        return f"its router ({type(_unwrap(router_bridge)).__name__}) returns no top-k weights and indices"
    return Sparse(mlp, block, _unwrap(router_bridge), experts, n, wi, ii)


def n_experts(model: Any, layer: int) -> int:
    """How many experts layer ``layer``'s MLP routes to: 0 for a dense MLP (or a model
    without blocks). A sparse block whose experts cannot be components counts too (its
    experts exist); :func:`sparse_block` says why they cannot be used."""
    s = _structure(model, layer)
    if s is None:
        return 0
    if isinstance(s, Sparse):
        return s.n_experts
    n = getattr(_unwrap(getattr(_unwrap(_mlp(model, layer)), "experts", None)), "num_experts", None)
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    return len(getattr(_unwrap(_mlp(model, layer)), "experts", ()) or ())


def moe_layers(model: Any) -> tuple[int, ...]:
    """The layers whose MLP is a mixture of experts."""
    return tuple(l for l in range(int(model.cfg.n_layers)) if n_experts(model, l) > 0)


def has_experts(model: Any) -> bool:
    return bool(moe_layers(model))


def sparse_block(model: Any, layer: int) -> Sparse:
    """Layer ``layer``'s MoE block, checked (once per model, layer and weights state) to be
    exactly the sum of its experts' outputs on random inputs; a ComponentError saying why
    when its MLP is dense or its experts cannot be components."""
    s = _structure(model, layer)
    if s is None:
        raise ComponentError(f"layer {layer} of this {_arch(model)} model has a dense MLP, not a "
                             f"mixture of experts: it has no experts (layers with experts: "
                             f"{', '.join(map(str, moe_layers(model))) or 'none'})")
    if isinstance(s, str):
        raise ComponentError(f"the mixture of experts of layer {layer} ({_arch(model)}) cannot be split "
                             f"into expert components: {s}; measure its MLP as one component (mlp{layer})")
    state = tuple((p.data_ptr(), p._version, str(p.dtype), str(p.device)) for p in s.block.parameters())
    if _CHECKED.get(s.block) != state:
        _check_block(model, layer, s)
        _CHECKED[s.block] = state
    return s


def _check_block(model: Any, layer: int, s: Sparse) -> None:
    """The block's own forward equals the sum of its experts' outputs, on random inputs."""
    import torch

    param = next(s.experts.parameters())
    g = torch.Generator().manual_seed(layer)
    x = torch.randn((1, CHECK_POSITIONS, int(model.cfg.d_model)), generator=g).to(param.device, param.dtype)
    with torch.no_grad():
        out = s.block(x)
        out = out[0] if isinstance(out, tuple) else out
        parts = _outputs(s, x, range(s.n_experts))
    check_sum(parts, out, f"the experts of layer {layer} on random inputs", dtype=param.dtype)


def expert_outputs(model: Any, layer: int, x: Any, experts: Sequence[int] | None = None) -> Any:
    """``[k, *x.shape]``: the output of each of ``experts`` (default: all) of layer ``layer``'s
    MoE block at each position of ``x``, the block's input (``hooks.moe_in(layer)``: ``[..., d_model]``),
    in the block's dtype, on ``x``'s device. Computed without firing any hook (safe inside a
    forward)."""
    s = sparse_block(model, layer)
    which = list(range(s.n_experts)) if experts is None else [int(e) for e in experts]
    bad_e = [e for e in which if not 0 <= e < s.n_experts]
    if bad_e:
        raise ComponentError(f"expert {bad_e[0]} of layer {layer}: this layer has {s.n_experts} experts "
                             f"(0..{s.n_experts - 1})")
    return _outputs(s, x, which)


def _outputs(s: Sparse, x: Any, which: Any) -> Any:
    import torch

    which = list(which)
    param = next(s.experts.parameters())
    shape = tuple(x.shape)
    flat = x.reshape(-1, shape[-1]).to(param.device, param.dtype)
    with torch.no_grad():
        routed = s.router(flat)
        if not isinstance(routed, tuple) or len(routed) <= max(s.weights_at, s.indices_at):
            raise ComponentError(f"the router {type(s.router).__name__} does not return top-k weights and indices")
        weights, index = routed[s.weights_at], routed[s.indices_at]
        if index.is_floating_point() or weights.shape != index.shape or weights.shape[0] != flat.shape[0]:
            raise ComponentError(f"the router {type(s.router).__name__} returned top-k weights {tuple(weights.shape)} "
                                 f"and indices {tuple(index.shape)} ({index.dtype}) for {flat.shape[0]} positions")
        outs = []
        for e in which:
            mine = torch.where(index == e, weights, torch.zeros_like(weights))
            outs.append(s.experts(flat, index, mine).reshape(shape))
    if not outs:
        return torch.zeros((0,) + shape, dtype=flat.dtype, device=x.device)
    return torch.stack(outs).to(x.device)


def tolerance(parts: Any, dtype: Any) -> Any:
    """Elementwise tolerance of "the experts sum to the block's output": float error of
    ``dtype`` over the parts' magnitudes (float64)."""
    import torch

    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    return 1e-6 + 16 * eps * parts.double().abs().sum(0)


def check_sum(parts: Any, block_out: Any, what: str, dtype: Any = None) -> None:
    """Raise a MeasurementError unless ``parts`` (``[E, ..., d]``: every expert's output)
    sum to ``block_out`` (``[..., d]``) within float error of ``dtype`` (default: theirs)."""
    import torch

    dtype = dtype if dtype is not None else block_out.dtype
    total = parts.double().sum(0)
    want = block_out.double().to(total.device)
    if not bool(torch.isfinite(total).all() and torch.isfinite(want).all()):
        raise MeasurementError(f"{what}: non-finite expert or block outputs")
    gap = (total - want).abs()
    tol = tolerance(parts, dtype).to(gap.device)
    if bool((gap > tol).any()):
        i = int((gap - tol).argmax())
        raise MeasurementError(
            f"{what} do not sum to the block's output: off by {float(gap.flatten()[i]):.3g} (tolerance "
            f"{float(tol.flatten()[i]):.2g}); the block computes something besides its routed experts, or its "
            "output was replaced (an intervention on the MLP or one of its experts)")
