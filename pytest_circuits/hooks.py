"""The one place that knows TransformerLens hook names.

Everything else asks this module: ``hooks.resid_pre(3)``, ``hooks.output(Head(3, 1))``.
Names are those of a ``TransformerBridge`` in compatibility mode.

Two pseudo-hooks are computed from the model's output rather than read from a hook,
so that measurements never need to keep full ``[batch, pos, vocab]`` logits:

* ``LOGITS_LAST``: logits at each prompt's last real position, ``[batch, d_vocab]``;
* ``LOGITS_LAST_PRE_CAP``: the same before a final logit soft-cap (the logits themselves
  on a model without one);
* ``TOKEN_LOSS``: next-token cross-entropy at each position, ``[batch, pos - 1]``
* ``logprobs_last(ids)``: log-probabilities of a few tokens at the last position
  (``logprobs_last(ids, back=1)``: at the position before it).

Any hook name with the suffix ``@last`` (``last("blocks.3.hook_attn_out")``) is that
hook read only at each prompt's last real position: ``[batch, ...]`` without the
position axis, which is all a direct-effect measurement needs and is far smaller.
"""

from __future__ import annotations

import weakref
from typing import Any

from .components import MLP, Attn, Component, Embed, Expert, Head, Neuron
from .errors import ComponentError, bad

AT_LAST = "@last"
LOGITS_LAST = "logits.last"
# The last position's logits before a final logit soft-cap (Gemma-2's ``cap * tanh(x / cap)``):
# linear in the final normalized residual. Equal to LOGITS_LAST for a model without a cap.
LOGITS_LAST_PRE_CAP = "logits.last.pre_softcap"
TOKEN_LOSS = "loss.per_token"
PSEUDO = (LOGITS_LAST, LOGITS_LAST_PRE_CAP, TOKEN_LOSS)
LOGPROBS_LAST = "logprobs.last"


def logprobs_last(ids: Any, back: int = 0) -> str:
    """Log-probabilities (float64, over the whole vocabulary) of the tokens ``ids`` at each
    prompt's last position (``back`` positions before it with ``back > 0``),
    ``[batch, len(ids)]``: what a metric over a few tokens needs, stored in a few bytes per
    prompt instead of a whole vocabulary of logits."""
    ids = [int(i) for i in ids]
    if not ids:
        raise ComponentError(bad("ids", ids, "at least one token id"))
    if isinstance(back, bool) or not isinstance(back, int) or back < 0:
        raise ComponentError(bad("back", back, "a non-negative int (positions before the last)"))
    return f"{LOGPROBS_LAST}{f'-{back}' if back else ''}[{','.join(map(str, ids))}]"


def logprob_back(name: str) -> int:
    """How many positions before the last a ``logprobs_last`` name reads (0: the last)."""
    tail = name[len(LOGPROBS_LAST):name.index("[")]
    return int(tail[1:]) if tail else 0


KV_SUFFIX = ".attn.cache_"   # blocks.N.attn.cache_k / cache_v: what block N's attention caches


def attn_cache(layer: int, part: str) -> str:
    """The keys (``part="k"``) or values (``"v"``) block ``layer``'s attention computes and
    reads, as a key-value cache holds them (after rotary embeddings, one per key-value head):
    ``[batch, pos, kv_head, d_head]``. Not a TransformerLens hook: the store records them
    from the attention's cache update, so that a forward can later resume at a position
    with the clean run's keys and values for the positions before it."""
    if part not in ("k", "v"):
        raise ComponentError(bad("part", part, "'k' or 'v'"))
    return f"blocks.{int(layer)}{KV_SUFFIX}{part}"


def is_attn_cache(name: str) -> bool:
    return KV_SUFFIX in name and name.startswith("blocks.")


def is_pseudo(name: str) -> bool:
    """Names computed from the logits rather than read at a hook."""
    return name in PSEUDO or (name.startswith(LOGPROBS_LAST) and "[" in name and name.endswith("]"))


def logprob_ids(name: str) -> list[int]:
    return [int(x) for x in name[name.index("[") + 1:-1].split(",")]

EMBED = "hook_embed"
POS_EMBED = "hook_pos_embed"   # learned positions added to the residual stream (GPT-2)
FINAL_SCALE = "ln_final.hook_scale"
UNEMBED = "unembed"            # the unembedding module (its hooks start with this or hook_unembed)
UNEMBED_IN = "unembed.hook_in"  # what reaches the unembedding: the normalized final residual
# Hooks whose values are [batch, head, query_pos, key_pos]: two position axes.
PATTERN_SUFFIXES = ("hook_pattern", "hook_attn_scores")
# The block the embedding belongs to: it writes the residual stream before block 0.
EMBED_BLOCK = -1


def block_of(name: str) -> int | None:
    """The block a hook lives in: ``blocks.N...`` -> N, the embedding hooks ->
    :data:`EMBED_BLOCK` (-1, before every block), anything after the last block (final
    norm, unembedding, pseudo-hooks) -> None. A ``@last`` suffix is ignored."""
    base = base_name(name)
    if base.startswith("blocks."):
        return int(base.split(".")[1])
    if base in (EMBED, POS_EMBED):
        return EMBED_BLOCK
    return None


def position_dims(name: str) -> tuple[int, ...]:
    """The position axes of a hook's value: (2, 3) for attention patterns and scores
    ``[batch, head, q, k]``, else (1,) (``[batch, pos, ...]``)."""
    return (2, 3) if base_name(name).endswith(PATTERN_SUFFIXES) else (1,)


def touches_unembed(name: str) -> bool:
    """Whether ``name`` is a hook of the unembedding module."""
    return base_name(name).startswith((UNEMBED, "hook_" + UNEMBED))


def last(name: str) -> str:
    """``name`` read only at each prompt's last real token."""
    return name if name.endswith(AT_LAST) or is_pseudo(name) else name + AT_LAST


def base_name(name: str) -> str:
    return name[: -len(AT_LAST)] if name.endswith(AT_LAST) else name


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def z(layer: int) -> str:
    """Per-head attention output before W_O: ``[batch, pos, head, d_head]``."""
    return f"blocks.{layer}.attn.hook_z"


def pattern(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def v(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_v"


def v_input(layer: int) -> str:
    return f"blocks.{layer}.hook_v_input"


def ln1_scale(layer: int) -> str:
    return f"blocks.{layer}.ln1.hook_scale"


def attn_post_scale(layer: int) -> str:
    """The scale (RMS) of a norm applied to the attention output before it is added to the
    residual stream (Gemma-2/3's and OLMo-2's post-attention norm; absent elsewhere):
    ``[batch, pos, 1]``. ``hook_attn_out`` is then the normalized output."""
    return f"blocks.{layer}.ln1_post.hook_scale"


def moe_in(layer: int) -> str:
    """The input of layer ``layer``'s MLP block as the block reads it (after its norm):
    ``[batch, pos, d_model]``. A mixture of experts' expert outputs are computed from it
    (:func:`pytest_circuits.moe.expert_outputs`)."""
    return f"blocks.{layer}.mlp.hook_in"


def mlp_post(layer: int) -> str:
    """MLP post-activation neurons: ``[batch, pos, d_mlp]``."""
    return f"blocks.{layer}.mlp.hook_post"


def output(component: Component) -> str:
    """The hook whose value is (or, for heads and neurons, contains) the component's output."""
    if isinstance(component, Head):
        return z(component.layer)
    if isinstance(component, Attn):
        return attn_out(component.layer)
    if isinstance(component, MLP):
        return mlp_out(component.layer)
    if isinstance(component, Neuron):
        return mlp_post(component.layer)
    if isinstance(component, Embed):
        return EMBED
    if isinstance(component, Expert):
        raise ComponentError(bad("component", str(component), "a component whose output a hook holds: an expert's "
                                 f"output is computed from {moe_in(component.layer)!r} "
                                 "(pytest_circuits.moe.expert_outputs)"))
    raise ComponentError(bad("component", component, "Head, Attn, MLP, Neuron or Embed"))


_NAMES: "weakref.WeakKeyDictionary[Any, frozenset[str]]" = weakref.WeakKeyDictionary()


def _hook_names(model: Any, fresh: bool = False) -> frozenset[str]:
    """The model's hook names, remembered per model object (TransformerLens rebuilds
    ``hook_dict`` on every access, about a millisecond each)."""
    try:
        if not fresh and model in _NAMES:
            return _NAMES[model]
    except TypeError:                     # not weak-referenceable: never remembered
        return frozenset(model.hook_dict)
    names = frozenset(model.hook_dict)
    _NAMES[model] = names
    return names


def check_names(model: Any, names: list[str]) -> None:
    """Raise a clear error for hook names the model does not have."""
    known = _hook_names(model)
    missing = [n for n in names if not is_pseudo(n) and not is_attn_cache(n) and n not in known]
    if missing:
        known = _hook_names(model, fresh=True)      # the module tree may have changed: look again
        missing = [n for n in missing if n not in known]
    if missing:
        import difflib

        hints = {m: difflib.get_close_matches(m, list(known), n=2) for m in missing}
        raise ComponentError("unknown hook name(s): " + "; ".join(
            f"{m!r} (did you mean {', '.join(map(repr, h))}?)" if h else repr(m)
            for m, h in hints.items()))


# -- attaching hooks: what ``run_with_hooks`` / ``hooks()`` do, with names resolved once ---------
#
# TransformerLens 4's bridge rebuilds its whole hook dictionary and alias map on every
# ``run_with_hooks`` and every ``hooks()`` (twice: forward and backward hooks), a few
# milliseconds a forward on a 30-layer model. Here a name's hook point is resolved by the
# bridge's own code the first time and remembered per model; each use checks that it is
# still the point the bridge has registered under that name (else it is resolved again), and
# every per-call check the bridge makes (gated hook points, the start/stop layer rules) is
# still made. A model without the bridge's hook registry goes through its own methods.

_POINTS: "weakref.WeakKeyDictionary[Any, dict[str, tuple[str, Any]]]" = weakref.WeakKeyDictionary()
_BRIDGE_METHODS = ("_resolve_hook_point", "_check_hook_fireable", "_remove_temporary_hook", "check_hooks_to_add",
                   "_gated_hook_reason", "_warn_gated_skipped", "_is_embedding_stage_hook", "hook_dict", "forward")
_BRIDGE_TYPES: dict[type, bool] = {}


def _bridged(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens bridge this module can attach hooks to directly
    (its class has the bridge's hook methods, the object its hook registry)."""
    cls = type(model)
    known = _BRIDGE_TYPES.get(cls)
    if known is None:
        known = _BRIDGE_TYPES[cls] = all(hasattr(cls, a) for a in _BRIDGE_METHODS)
    return known and isinstance(getattr(model, "_hook_registry", None), dict) \
        and hasattr(model, "compatibility_mode")


def _point(model: Any, name: str) -> tuple[str, Any]:
    """``(canonical name, HookPoint)`` of the hook ``name`` on ``model``, as the bridge resolves it."""
    try:
        table = _POINTS.setdefault(model, {})
    except TypeError:                      # not weak-referenceable: resolved every time
        table = {}
    hit = table.get(name)
    if hit is not None and model._hook_registry.get(hit[0]) is hit[1]:
        model._check_hook_fireable(name, hit[0])
        return hit
    from transformer_lens.model_bridge.bridge_core import build_alias_to_canonical_map

    hook_dict = model.hook_dict
    hit = model._resolve_hook_point(name, build_alias_to_canonical_map(hook_dict), hook_dict)
    table[name] = hit
    return hit


def _layer_of(name: str) -> int | None:
    if name.startswith("blocks."):
        try:
            return int(name.split(".")[1])
        except (IndexError, ValueError):
            return None
    return None


def _attach(model: Any, hooks: Any, direction: str, level: int, added: list,
            start: int | None = None, stop: int | None = None) -> None:
    """Adds ``hooks`` (``(name, fn)`` pairs; a filter in place of a name is handed to
    :func:`_filter_points`) to their hook points at ``level``, each added handle appended to
    ``added``. With ``start``/``stop`` (blocks run, already non-negative) the hooks outside
    them are left out, as ``run_with_hooks`` leaves them out."""
    for name, fn in hooks:
        if not isinstance(name, str):
            for canonical, hp in _filter_points(model, name):
                _add(model, hp, fn, canonical, direction, level, added, start, stop)
            continue
        canonical, hp = _point(model, name)
        reason = model._gated_hook_reason(hp.name or canonical)
        if reason is not None:       # refused even outside start/stop, as run_with_hooks refuses it
            raise ValueError(f"Cannot add hook {name} because {reason} is False. Call set_{reason}(True) first.")
        _add(model, hp, fn, canonical, direction, level, added, start, stop)


def _filter_points(model: Any, keep: Any) -> list[tuple[str, Any]]:
    """The hook points whose names pass the filter ``keep``, each once, as the bridge picks them."""
    seen: set[int] = set()
    out, gated = [], []
    for n, hp in model.hook_dict.items():
        if not keep(n) or id(hp) in seen:
            continue
        seen.add(id(hp))
        if model._gated_hook_reason(hp.name or n) is not None:
            gated.append(n)
            continue
        out.append((hp.name or n, hp))
    model._warn_gated_skipped("run_with_hooks", gated, stacklevel=5)
    return out


def _add(model: Any, hp: Any, fn: Any, name: str, direction: str, level: int, added: list,
         start: int | None, stop: int | None) -> None:
    if start is not None and model._is_embedding_stage_hook(name):
        return
    layer = _layer_of(name)
    if layer is not None and ((stop is not None and layer >= stop) or (start is not None and layer < start)):
        return
    model.check_hooks_to_add(hp, name, fn, dir=direction)
    if model.compatibility_mode and name != hp.name:
        aliases = ([hp.name] if hp.name is not None else []) + [name]
        handle = hp.add_hook(fn, dir=direction, level=level, alias_names=aliases)
    else:
        handle = hp.add_hook(fn, dir=direction, level=level)
    added.append((hp, direction, handle))


class attached:
    """``with attached(model, fwd_hooks, bwd_hooks):`` the hooks are on ``model``'s hook points
    inside the block and removed when it ends, however it ends (an exception included); the
    hooks attached before are left alone. What ``model.hooks(fwd_hooks, bwd_hooks)`` does on a
    TransformerLens bridge, without rebuilding the bridge's hook dictionary each time.
    ``start``/``stop``: the blocks a forward resumed at / stopped before (``run_with_hooks``'s
    ``start_at_layer``/``stop_at_layer``): the hooks outside them are not attached."""

    def __init__(self, model: Any, fwd_hooks: Any = (), bwd_hooks: Any = (),
                 start: int | None = None, stop: int | None = None) -> None:
        self.model, self.fwd, self.bwd, self.start, self.stop = model, list(fwd_hooks), list(bwd_hooks), start, stop
        self._other: Any = None
        self._added: list = []

    def __enter__(self) -> Any:
        model = self.model
        if not _bridged(model):
            if self.start is not None or self.stop is not None:
                raise ComponentError(f"{type(model).__name__} is not a TransformerLens bridge: "
                                     "hooks for a forward resumed or stopped early are attached by run()")
            self._other = model.hooks(fwd_hooks=self.fwd, bwd_hooks=self.bwd)
            return self._other.__enter__()
        level = getattr(model, "context_level", 0) + 1
        model.context_level = level
        try:
            _attach(model, self.fwd, "fwd", level, self._added, self.start, self.stop)
            _attach(model, self.bwd, "bwd", level, self._added, self.start, self.stop)
        except BaseException:
            self._detach()
            raise
        return model

    def __exit__(self, *exc: Any) -> None:
        if self._other is not None:
            return self._other.__exit__(*exc)
        self._detach()
        return None

    def _detach(self) -> None:
        model = self.model
        try:
            for hp, direction, handle in self._added:
                model._remove_temporary_hook(hp, direction, handle)
        finally:
            self._added = []
            model.context_level -= 1


def run(model: Any, input: Any, fwd_hooks: Any = (), *, stop_at_layer: int | None = None,
        start_at_layer: int | None = None, **kwargs: Any) -> Any:
    """``model.run_with_hooks(input, fwd_hooks=fwd_hooks, ...)`` (logits returned): the same
    forward with the same hooks, attached by :class:`attached`."""
    if not _bridged(model):
        extra = {k: v for k, v in (("stop_at_layer", stop_at_layer), ("start_at_layer", start_at_layer))
                 if v is not None}
        return model.run_with_hooks(input, fwd_hooks=list(fwd_hooks), **extra, **kwargs)
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    n_blocks = len(model.blocks) if hasattr(model, "blocks") else None
    stop = start = None
    if stop_at_layer is not None and n_blocks is not None:
        stop = n_blocks + stop_at_layer if stop_at_layer < 0 else stop_at_layer
    if start_at_layer is not None and n_blocks is not None:
        start = n_blocks + start_at_layer if start_at_layer < 0 else start_at_layer
    if start_at_layer is not None:
        kwargs["start_at_layer"] = start_at_layer
    with attached(model, fwd_hooks, (), start=start, stop=stop):
        try:
            return model.forward(input, return_type="logits",
                                 stop_at_layer=stop if stop is not None else stop_at_layer, **kwargs)
        except StopAtLayerException as e:
            return e.layer_output
