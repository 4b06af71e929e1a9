"""Interventions: zero, mean and resample ablation, and patching from a corrupted run.

An intervention is a frozen *spec*: it names what to replace and with what, has a
``key`` that identifies its effect completely (the activation store keys on it), and
turns into forward hooks for one batch when the store runs the model::

    from pytest_circuits import interventions as I

    abl = I.ablate(model, "L9H3", kind="resample", seed=0)        # one component
    both = I.ablate(model, ["L9H3", "mlp9"], kind="zero")        # several at once
    both = abl + I.ablate(model, "mlp9")                          # or composed
    patch = I.patch(model, "attn5", positions="last")            # from prompts.corrupted

    metrics.logit_diff(model, ps, intervention=abl)
    with abl.applied(model, ps):                                  # or as a context manager
        logits = model(ps.tokens)

What is replaced is the component's *output*: a head's slice of ``hook_z`` (its output
is ``z @ W_O``, so replacing z replaces the output exactly), an attention layer's whole
``hook_z`` (all its heads; equal to replacing ``hook_attn_out`` for models without an
attention-output bias), an MLP's ``hook_mlp_out``, a neuron's entry of ``mlp.hook_post``,
the embedding's ``hook_embed``. An expert of a mixture of experts (``L1E3``) has no hook of
its own: its output (its MLP's output times its routing weight, :mod:`pytest_circuits.moe`) is
computed in the same forward from the block's input (``mlp.hook_in``) with the block's own
router and experts, and replacing it changes the block's output ``hook_mlp_out`` by
``replacement - output`` at the replaced positions; the router and the other experts are left
as they are (their weights are not renormalized). Zero ablation of an expert removes its
routed output; the other kinds replace it by its output on other prompts or runs, computed the
same way from their block inputs. An MLP and one of its experts (or one expert twice) cannot be
replaced in one intervention: each expert replacement is relative to the block's output.

* **zero**: the output is 0.
* **mean**: the mean of the output over every real token of a ``reference`` prompt set
  (required; the same vector at every position).
* **position_mean**: the mean over the prompts of ``reference`` (default: the prompts
  being run) *at each position* (the usual choice for templated tasks, and what
  TransformerLens's ``faithfulness(ablation="mean")`` does).
* **resample**: prompt *i* gets the output of prompt *π(i)* of the same set, where *π*
  is a seeded derangement (never the prompt itself), at the same position (or at each
  prompt's own last token with ``positions="last"``).
* **resample_distinct**: as ``resample``, except that a prompt whose source output (at
  the replaced positions) equals its own gets the output of another prompt whose output
  differs (the first in a seeded order): on prompts that share their last tokens, plain
  resampling often swaps equal outputs and removes nothing. Where no prompt's output
  differs from a prompt's own (the component writes the same thing on every prompt), the
  prompt keeps *π(i)* and the ablation is a no-op there (:meth:`Replace.unchanged`
  says so; the self-repair measurements flag it). The default of
  :func:`pytest_circuits.techniques.effects.self_repair` and its relatives.
* **patch**: prompt *i* gets the output of its own corrupted counterpart
  (``prompts.corrupted``), position by position.
* **freeze**: the component keeps its output from the *clean* run of the same prompt,
  whatever changed upstream (path patching freezes everything off the path).
* **rerouted**: the component gets the output it had in another intervened run
  (``via``): the second step of path patching (:mod:`pytest_circuits.techniques.circuits`).

``positions``: ``None`` for every position, ``"last"`` for each prompt's last token, or
a tuple of absolute positions (which must exist in every prompt).
"""

from __future__ import annotations

import contextlib
import math
import operator
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from . import hooks as H
from .components import MLP, Component, Expert, Head, Neuron, parse_many
from .components import Attn as _Attn
from .components import Embed as _Embed
from .errors import InterventionError, NoOpInterventionWarning, bad
from .protocols import check_intervention
from .store import resolve

KINDS = ("zero", "mean", "position_mean", "resample", "resample_distinct", "patch", "freeze", "rerouted")
ABLATION_KINDS = ("zero", "mean", "position_mean", "resample", "resample_distinct")
RESAMPLE_KINDS = ("resample", "resample_distinct")
# Kinds that are meant to remove a component's information: one that leaves the output
# as it was is flagged. (patch, freeze and rerouted may rightly equal the clean value:
# patching where the corrupted prompt agrees, freezing what nothing upstream changed.)
NOOP_KINDS = ABLATION_KINDS
NOOP_RTOL = 1e-5          # |replacement - original| <= NOOP_RTOL x their size: unchanged
NOOP_FRACTION = 0.9       # warn when at least this fraction of the prompts is unchanged
# (replacement, its key, prompt digest, n) -> {row: unchanged?}, filled batch by batch
_NOOP_LEDGER: dict[tuple[int, str, str, int], dict[int, bool]] = {}


def _norm_positions(positions: Any) -> Any:
    if positions is None or positions == "last":
        return positions
    given = positions
    if isinstance(positions, int):
        positions = (positions,)
    try:
        pos = tuple(positions)
    except TypeError:
        raise InterventionError(bad("positions", given, "None, 'last', or a tuple of ints")) from None
    if not pos or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in pos):
        raise InterventionError(bad("positions", given, "None, 'last', or non-negative ints"))
    return tuple(sorted(set(pos)))


@dataclass(frozen=True)
class Replace:
    """Replace one component's output (see the module docstring for the kinds)."""

    component: Component
    kind: str = "zero"
    positions: Any = None
    reference: Any = None     # PromptSet, for kind="mean"
    seed: int = 0
    via: Any = None           # Interventions, for kind="rerouted"

    @property
    def key(self) -> str:
        ref = f",ref={self.reference.digest[:16]}" if self.reference is not None else ""
        seed = f",seed={self.seed}" if self.kind in RESAMPLE_KINDS else ""
        via = f",via=[{self.via.key}]" if self.via is not None else ""
        return f"{self.kind}({self.component},pos={self.positions}{ref}{seed}{via})"

    @property
    def layer(self) -> int:
        """The first block this replacement acts in (:data:`~pytest_circuits.hooks.EMBED_BLOCK`,
        -1, for the embedding): :class:`pytest_circuits.protocols.Intervention`'s ``layer``."""
        return H.EMBED_BLOCK if isinstance(self.component, _Embed) else max(self.component.layer, 0)

    # -- what the store calls ----------------------------------------------------
    def check(self, model: Any, prompts: Any) -> None:
        if self.positions not in (None, "last"):
            shortest = min(prompts.lengths)
            over = [p for p in self.positions if p >= shortest]
            if over:
                raise InterventionError(bad("positions", self.positions,
                                            f"positions < {shortest} (the shortest prompt in "
                                            f"{prompts.name!r} has {shortest} tokens)"))
        if self.kind in RESAMPLE_KINDS:
            if len(prompts) < 2:
                raise InterventionError(f"{self.kind} ablation of {self.component} needs at least 2 prompts "
                                        f"to resample from; {prompts.name!r} has 1 (use kind='mean' "
                                        "with a reference set, or kind='zero')")
            if self.positions != "last" and len(set(prompts.lengths)) > 1:
                raise InterventionError(
                    f"{self.kind} ablation at positions={self.positions} needs prompts of one length "
                    f"({prompts.name!r} has lengths {sorted(set(prompts.lengths))}); use positions='last'")
        if self.kind == "position_mean":
            ref = self.reference if self.reference is not None else prompts
            longest = max(prompts.lengths) - 1 if self.positions is None or self.positions == "last" \
                else max(self.positions)
            if longest >= max(ref.lengths):
                raise InterventionError(f"position_mean ablation of {self.component}: the reference "
                                        f"{ref.name!r} has no prompt reaching position {longest}")
        if self.kind == "rerouted":
            if self.via is None:
                raise InterventionError(f"rerouting {self.component} needs via=<Interventions>: the run "
                                        "whose output it takes")
            self.via.check(model, prompts)
        if self.kind == "patch":
            if prompts.corrupted is None:
                raise InterventionError(f"patching {self.component} needs prompts.corrupted: build the "
                                        "set with PromptSet.build(..., corrupted=[...])")
            if self.positions != "last" and prompts.corrupted.lengths != prompts.lengths:
                raise InterventionError("patching at positions other than 'last' needs corrupted prompts "
                                        "aligned token for token (PromptSet.build(..., align=True))")

    def first_positions(self, model: Any, prompts: Any) -> Any:
        """Per prompt (``[n]`` ints), the first position whose activations this replacement
        can make differ from the clean run's (causal attention leaves every earlier one as
        it was); a prompt's length where it changes nothing.

        The replaced positions bound it from below; a source that equals the clean run up to
        some position raises it: a corrupted counterpart (patch) or a resampled prompt that
        shares the first tokens, the run of ``via`` (rerouted), the clean run itself (freeze).
        A lower bound is always safe (more positions are recomputed)."""
        import torch

        lengths = torch.tensor(prompts.lengths)
        if self.positions is None:
            lo = torch.zeros_like(lengths)
        elif self.positions == "last":
            lo = lengths - 1
        else:
            lo = torch.full_like(lengths, min(self.positions))
        if self.kind == "freeze":
            return lengths                      # the clean value: nothing can differ
        if self.kind == "patch" and prompts.corrupted is not None and self.positions != "last":
            return torch.maximum(lo, _first_difference(prompts.tokens, prompts.corrupted.tokens, lengths))
        if self.kind == "resample" and self.positions != "last":
            # (resample_distinct's sources depend on the activations: ``lo`` bounds it safely)
            perm = derangement(len(prompts), self.seed)
            return torch.maximum(lo, _first_difference(prompts.tokens, prompts.tokens[perm], lengths))
        if self.kind == "rerouted" and self.via is not None:
            via = self.via.first_positions(model, prompts)
            return torch.maximum(lo, torch.as_tensor(via).long())
        return lo

    def fwd_hooks(self, model: Any, prompts: Any, index: Any, store: Any, offset: Any = 0) -> list[tuple[str, Any]]:
        """Hooks for the rows ``index``. ``offset`` (an int, or one per row): position ``j`` of
        the hooked tensor's axis 1 is the prompt's position ``offset + j`` (the store runs
        only the positions from there on where :meth:`first_positions` allows it)."""
        import torch

        hook = self.hook
        source = self._source(model, prompts, store, hook)       # None for zero
        index = torch.as_tensor(index).reshape(-1)
        lengths = torch.tensor([prompts.lengths[int(i)] for i in index])
        start = torch.as_tensor(offset).reshape(-1).long().expand(len(index))
        slot = self._slot()
        watch = self.kind in NOOP_KINDS
        expert = self.component if isinstance(self.component, Expert) else None
        seen: dict[str, Any] = {}
        if expert is not None:
            from .moe import sparse_block

            sparse_block(model, expert.layer)    # its one-time identity check runs here, outside the forward

        def block_input(t: Any, hook: Any = None) -> None:
            seen["x"] = t          # the MoE block's input in this forward (what the block reads)

        def fn(t: Any, hook: Any = None) -> Any:
            if expert is not None:
                # the expert's output in this forward, from the block's input: replaced below,
                # and the block's output moved by the same change
                from .moe import expert_outputs

                if "x" not in seen:
                    raise InterventionError(f"{self.key}: the input of mlp{expert.layer} was not seen before its "
                                            "output in this forward")
                cur = expert_outputs(model, expert.layer, seen.pop("x"), [expert.expert])[0]
                out, t = t, cur.clone()
            else:
                t = t.clone()
            b, width = t.shape[0], t.shape[1]
            at = start.unsqueeze(1) + torch.arange(width).unsqueeze(0)     # [b, width]: absolute positions
            if self.positions is None:
                sel = torch.ones_like(at, dtype=torch.bool)
            elif self.positions == "last":
                sel = at == (lengths - 1).unsqueeze(1)
            else:
                sel = torch.isin(at, torch.tensor(self.positions))
            sub = t[(slice(None), slice(None)) + slot]                      # a view: [b, width, ...]
            mask = sel.to(t.device)
            old = sub.clone() if watch else None
            if source is None:
                sub[mask] = 0
            elif "mean" in source:
                sub[mask] = source["mean"].to(t.device, t.dtype)
            elif "last" in source:
                vals = source["last"][index].to(t.device, t.dtype)           # [b, ...]
                sub[mask] = vals.unsqueeze(1).expand(sub.shape)[mask]
            else:
                full = source["full"][index]                                  # whole outputs, unsliced
                cols = at.clamp(max=full.shape[1] - 1)
                vals = full[torch.arange(b).unsqueeze(1), cols][(slice(None), slice(None)) + slot]
                vals = vals.to(t.device, t.dtype)                             # [b, width, ...]
                sub[mask] = vals[mask]
            if watch:
                real = sel & (at < lengths.unsqueeze(1))
                self._watch(prompts, index, old, sub, real)
            if expert is not None:
                return out + (t - cur)          # 0 wherever nothing was replaced
            return t

        if expert is not None:
            return [(H.moe_in(expert.layer), block_input), (H.mlp_out(expert.layer), fn)]
        return [(hook, fn)]

    def _watch(self, prompts: Any, index: Any, old: Any, new: Any, real: Any) -> None:
        """Record, per prompt, whether the replacement left every replaced value as it was
        (``old``/``new``: ``[b, positions, ...]``; ``real``: the replaced positions that are
        real tokens), and warn once every prompt of the set has been seen and (nearly) all
        were unchanged. A row with no replaced position among those run is unchanged: its
        replaced positions lie before the first one the forward ran, where the replacement
        equals the clean value (:meth:`first_positions`)."""
        import torch

        old = old.detach().to("cpu", torch.float64)
        new = new.detach().to("cpu", torch.float64)
        m = real.to("cpu").reshape(real.shape + (1,) * (old.dim() - 2)).to(old.dtype)
        diff = ((new - old).abs() * m).flatten(1).amax(1)
        size = (torch.maximum(old.abs(), new.abs()) * m).flatten(1).amax(1)
        same = diff <= NOOP_RTOL * size
        slot = (id(self), self.key, prompts.digest, len(prompts))
        ledger = _NOOP_LEDGER.setdefault(slot, {})
        for i, s in zip(index.tolist(), same.tolist()):
            ledger[int(i)] = bool(s)
        if len(ledger) < len(prompts):
            return
        _NOOP_LEDGER.pop(slot, None)
        unchanged = sum(ledger.values())
        if unchanged >= max(1, math.ceil(NOOP_FRACTION * len(prompts))):
            warnings.warn(NoOpInterventionWarning(self.noop_message(unchanged, len(prompts), prompts.name)),
                          stacklevel=2)

    def noop_message(self, unchanged: int, n: int, name: str) -> str:
        """Why this replacement changed nothing on ``unchanged`` of ``n`` prompts."""
        where = (" at every position" if self.positions is None else " at the last position"
                 if self.positions == "last" else f" at positions {self.positions}")
        on = "every prompt" if unchanged == n else f"{unchanged} of {n} prompts"
        c = self.component
        if self.kind == "zero":
            cause = (f"zero ablation of {c}{where}: its output there is already 0 on {on} of {name!r}, "
                     "so the ablation removes nothing")
        elif self.kind == "resample_distinct":
            cause = (f"resample_distinct: {c}'s output{where} is the same on every prompt of {name!r} "
                     f"({on} kept their own: no prompt's output differs from theirs), so the ablation "
                     "removes nothing; use kind='mean' with a reference set whose outputs differ, or kind='zero'")
        elif self.kind == "resample":
            cause = (f"resample: {'every' if unchanged == n else f'on {unchanged} of {n} prompts the'} "
                     f"prompt's source output for {c}{where} equals its own (in {name!r}; e.g. every "
                     "prompt ends in the same tokens with the same context), so the ablation removes "
                     "nothing; resample from prompts whose outputs differ, or use kind='mean' with a "
                     "reference set, or kind='zero'")
        elif self.kind == "mean":
            ref = self.reference.name if self.reference is not None else "?"
            cause = (f"mean ablation of {c}{where}: the mean over the reference {ref!r} equals the "
                     f"output on {on} of {name!r}, so the ablation removes nothing; use a reference "
                     "set whose outputs differ")
        else:
            ref = self.reference.name if self.reference is not None else name
            cause = (f"position_mean ablation of {c}{where}: the per-position mean over {ref!r} equals "
                     f"the output on {on} of {name!r} (the outputs do not vary over the prompts), so "
                     "the ablation removes nothing")
        return cause + " — an effect of 0 measured under it is not evidence of no effect"

    # -- helpers -------------------------------------------------------------------
    @property
    def hook(self) -> str:
        """The hook whose value holds (or, for an expert, determines) the component's output:
        what a source is read from."""
        # An attention layer is replaced through all its heads' z (its output is
        # sum_h z_h W_O_h; the models have no b_O), so per-head readings of the
        # intervened run (direct effects) see the replacement too.
        if isinstance(self.component, _Attn):
            return H.z(self.component.layer)
        if isinstance(self.component, Expert):
            return H.moe_in(self.component.layer)
        return H.output(self.component)

    def _read(self, model: Any, store: Any, prompts: Any, name: str, via: Any = None) -> Any:
        """The component's output as read at ``name`` (this replacement's hook, or the hook at
        the last position) of ``prompts`` under ``via``: the hook's value, or for an expert its
        output computed from the block's input there."""
        value = store.get(model, prompts, [name], via)[name]
        if isinstance(self.component, Expert):
            from .moe import expert_outputs

            value = expert_outputs(model, self.component.layer, value, [self.component.expert])[0]
        return value

    def _slot(self) -> tuple:
        if isinstance(self.component, Head):
            return (self.component.head,)
        if isinstance(self.component, Neuron):
            return (self.component.index,)
        return ()

    def needs(self, prompts: Any) -> tuple[Any, Any, str] | None:
        """``(prompt set, intervention, hook)`` whose activation this replacement reads
        (None for zero ablation), so that several can be fetched in one forward."""
        if self.kind == "zero":
            return None
        if self.kind == "mean":
            return self.reference, None, self.hook
        if self.kind == "position_mean":
            return (self.reference if self.reference is not None else prompts), None, self.hook
        src = prompts.corrupted if self.kind == "patch" else prompts
        via = self.via if self.kind == "rerouted" else None
        return src, via, (H.last(self.hook) if self.positions == "last" else self.hook)

    def _source(self, model: Any, prompts: Any, store: Any, hook: str) -> Any:
        import torch

        if self.kind == "zero":
            return None
        slot = self._slot()
        if self.kind == "mean":
            ref = self.reference
            acts = self._read(model, store, ref, hook)
            mask = torch.arange(acts.shape[1]).unsqueeze(0) < torch.tensor(ref.lengths).unsqueeze(1)
            real = acts[mask]                                      # [tokens, ...]
            mean = real.double().mean(0).to(acts.dtype)
            return {"mean": mean[slot] if slot else mean}
        if self.kind == "position_mean":
            ref = self.reference if self.reference is not None else prompts
            acts = self._read(model, store, ref, hook)
            have = (torch.arange(acts.shape[1]).unsqueeze(0) < torch.tensor(ref.lengths).unsqueeze(1))
            have = have.reshape(have.shape + (1,) * (acts.dim() - 2)).double()
            mean = ((acts.double() * have).sum(0) / have.sum(0).clamp(min=1)).to(acts.dtype)  # [pos, ...]
            full = mean.unsqueeze(0).expand((len(prompts),) + tuple(mean.shape))
            if self.positions == "last":
                last = full[torch.arange(len(prompts)), torch.tensor(prompts.lengths) - 1]
                return {"last": last[(slice(None),) + slot] if slot else last}
            return {"full": full}
        src_set = prompts.corrupted if self.kind == "patch" else prompts
        via = self.via if self.kind == "rerouted" else None
        if self.positions == "last":
            # Only each source prompt's last token is needed: read just that.
            last = self._read(model, store, src_set, H.last(hook), via)
            if self.kind == "resample":
                last = last[derangement(len(prompts), self.seed)]
            elif self.kind == "resample_distinct":
                last = last[distinct_sources(last[(slice(None),) + slot], self.seed)]
            return {"last": last[(slice(None),) + slot] if slot else last}
        acts = self._read(model, store, src_set, hook, via)
        if self.kind == "resample":
            acts = acts[derangement(len(prompts), self.seed)]
        elif self.kind == "resample_distinct":
            acts = acts[distinct_sources(_at_positions(acts[(slice(None), slice(None)) + slot],
                                                       self._replaced(prompts, acts.shape[1])), self.seed)]
        return {"full": acts}

    def _replaced(self, prompts: Any, width: int) -> Any:
        """``[n, width]`` bool: the positions this replacement replaces that are real tokens."""
        import torch

        at = torch.arange(width).unsqueeze(0)
        lengths = torch.tensor(prompts.lengths).unsqueeze(1)
        if self.positions is None:
            sel = at < lengths
        elif self.positions == "last":
            sel = at == lengths - 1
        else:
            sel = torch.isin(at, torch.tensor(self.positions)) & (at < lengths)
        return sel.expand(len(prompts), width)

    def unchanged(self, model: Any, prompts: Any, store: Any = None) -> Any:
        """Per prompt (``[n]`` bools), whether this replacement leaves every value it replaces
        (at the replaced positions, real tokens only) as it is in the clean run, within
        :data:`NOOP_RTOL` of their size: where it does, the ablation changes nothing on that
        prompt. Read from the store (the clean activations and the replacement's source), so
        it holds when the ablated run itself was served from the cache. None for the kinds
        that may rightly equal the clean value (patch, freeze, rerouted)."""
        import torch

        if self.kind not in NOOP_KINDS:
            return None
        store = resolve(store)
        slot = self._slot()
        hook = self.hook
        source = self._source(model, prompts, store, hook)
        if self.positions == "last":
            old = self._read(model, store, prompts, H.last(hook))
            old = old[(slice(None),) + slot].unsqueeze(1)                 # [n, 1, ...]
            mask = torch.ones(old.shape[:2], dtype=torch.bool)
        else:
            old = self._read(model, store, prompts, hook)[(slice(None), slice(None)) + slot]
            mask = self._replaced(prompts, old.shape[1])
        old = old.detach().to("cpu", torch.float64)
        if source is None:
            new = torch.zeros_like(old)
        elif "mean" in source:
            new = source["mean"].to("cpu", torch.float64).expand_as(old)
        elif "last" in source:
            new = source["last"].to("cpu", torch.float64).unsqueeze(1).expand_as(old)
        else:
            new = source["full"][(slice(None), slice(None)) + slot].to("cpu", torch.float64)
            new = new[:, : old.shape[1]]
        m = mask.reshape(mask.shape + (1,) * (old.dim() - 2)).to(old.dtype)
        diff = ((new - old).abs() * m).flatten(1).amax(1)
        size = (torch.maximum(old.abs(), new.abs()) * m).flatten(1).amax(1)
        return diff <= NOOP_RTOL * size


@dataclass(frozen=True)
class Interventions:
    """Several replacements applied together (in order)."""

    items: tuple[Replace, ...]

    @property
    def key(self) -> str:
        return "+".join(i.key for i in self.items) if self.items else "nothing()"

    @property
    def layer(self) -> int:
        """The earliest layer any item touches: the forward may resume there from the
        clean residual stream (-1 where the embedding is touched, and for ``nothing()``, which
        runs the whole model so that it reproduces the clean run bit for bit)."""
        return min((i.layer for i in self.items), default=H.EMBED_BLOCK)

    def before(self, layer: int) -> "Interventions":
        """The items acting before block ``layer`` (on its input residual stream and earlier):
        the run under them and the run under ``self`` agree up to block ``layer``'s input."""
        return Interventions(tuple(i for i in self.items if i.layer < layer))

    def after(self, layer: int) -> "Interventions":
        """The items acting in block ``layer`` or later: what a forward resumed at ``layer``
        from the run under :meth:`before` still has to apply."""
        return Interventions(tuple(i for i in self.items if i.layer >= layer))

    def __add__(self, other: "Interventions") -> "Interventions":
        if not isinstance(other, Interventions):
            return NotImplemented
        return Interventions(self.items + other.items)

    def __iter__(self) -> Iterator[Replace]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Interventions({self.key})"

    def check(self, model: Any, prompts: Any) -> None:
        _check_expert_overlap(self.items)
        for i in self.items:
            i.check(model, prompts)

    def unchanged(self, model: Any, prompts: Any, store: Any = None) -> Any:
        """Per prompt (``[n]`` bools), whether every item leaves the values it replaces as
        they are in the clean run (:meth:`Replace.unchanged`): then the intervened run *is*
        the clean run on that prompt (the first item that changed something would have
        made it differ). Every prompt for ``nothing()``. None when an item is of a kind
        that may rightly equal the clean value (patch, freeze, rerouted)."""
        import torch

        store = resolve(store)
        out = torch.ones(len(prompts), dtype=torch.bool)
        for i in self.items:
            same = i.unchanged(model, prompts, store)
            if same is None:
                return None
            out &= same.to("cpu")
        return out

    def first_positions(self, model: Any, prompts: Any) -> Any:
        """Per prompt, the first position any item can change (each prompt's length when
        there is no item): see :meth:`Replace.first_positions`."""
        import torch

        out = torch.tensor(prompts.lengths)
        for i in self.items:
            out = torch.minimum(out, torch.as_tensor(i.first_positions(model, prompts)).long())
        return out

    def fwd_hooks(self, model: Any, prompts: Any, index: Any, store: Any = None,
                  offset: Any = 0) -> list[tuple[str, Any]]:
        store = resolve(store)
        # Fetch every source activation a set needs in one forward, not one per item.
        wanted: dict[tuple[str, str], tuple[Any, Any, list[str]]] = {}
        for i in self.items:
            need = i.needs(prompts)
            if need is not None:
                src, via, hook = need
                slot = wanted.setdefault((src.digest + src.name, via.key if via is not None else ""),
                                         (src, via, []))
                if hook not in slot[2]:
                    slot[2].append(hook)
        for src, via, hooks in wanted.values():
            if len(hooks) > 1:
                store.get(model, src, hooks, via)
        out: list[tuple[str, Any]] = []
        for i in self.items:
            out += i.fwd_hooks(model, prompts, index, store, offset)
        return out

    @contextlib.contextmanager
    def applied(self, model: Any, prompts: Any, store: Any = None) -> Iterator[Any]:
        """Hooks on ``model`` for a forward over all of ``prompts`` (in order), removed on exit."""
        import torch

        self.check(model, prompts)
        hooks = self.fwd_hooks(model, prompts, torch.arange(len(prompts)), store)
        with H.attached(model, hooks):
            yield model


def _check_expert_overlap(items: Any) -> None:
    """An expert's replacement moves its block's output by ``replacement - output``: replacing
    the same expert twice, or an expert and its MLP (or a neuron of it), in one intervention
    has no single meaning. Refused."""
    experts: dict[tuple[int, int], Any] = {}
    for item in items:
        c = getattr(item, "component", None)
        if isinstance(c, Expert):
            if (c.layer, c.expert) in experts:
                raise InterventionError(f"{c} is replaced twice in one intervention ({experts[(c.layer, c.expert)].key} "
                                        f"and {item.key}): an expert's replacement is relative to its block's "
                                        "output, so a second one would act on the first; replace it once")
            experts[(c.layer, c.expert)] = item
    layers = {l for l, _ in experts}
    for item in items:
        c = getattr(item, "component", None)
        if isinstance(c, (MLP, Neuron)) and c.layer in layers:
            raise InterventionError(f"{c} and an expert of the same layer ({', '.join(str(Expert(l, e)) for l, e in experts if l == c.layer)}) "
                                    "are replaced in one intervention: an expert's replacement is relative to the "
                                    "block's output, which the MLP's replacement changes; replace the MLP or its "
                                    "experts, not both")


def _first_difference(a: Any, b: Any, lengths: Any) -> Any:
    """Per row, the first position (below the row's length) where token ids ``a`` and ``b``
    differ; the length where they agree on every one."""
    import torch

    width = min(a.shape[1], b.shape[1])
    differ = a[:, :width] != b[:, :width]
    differ &= torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    pos = torch.arange(width).unsqueeze(0).expand_as(differ)
    # beyond the narrower tensor nothing is known: count the row as differing there
    agree = lengths.clamp(max=width)
    return torch.where(differ, pos, agree.unsqueeze(1).expand_as(differ)).amin(1).minimum(agree)


def _at_positions(acts: Any, mask: Any) -> Any:
    """``[n, k]``: each row's values at the positions ``mask`` ``[n, width]`` selects (the same
    number in every row: resampling at positions other than the last needs one length), 0
    elsewhere."""
    m = mask.reshape(mask.shape + (1,) * (acts.dim() - 2)).to(acts.device)
    return (acts * m).flatten(1)


def _same_rows(flat: Any, i: int, rows: Any) -> Any:
    """Whether each of ``rows`` of ``flat`` ``[n, k]`` (float64) equals row ``i`` within
    :data:`NOOP_RTOL` of their size (the test :meth:`Replace.unchanged` applies)."""
    import torch

    a, b = flat[i].unsqueeze(0), flat[rows]
    diff = (a - b).abs().amax(1)
    size = torch.maximum(a.abs().amax(1), b.abs().amax(1))
    return diff <= NOOP_RTOL * size


def distinct_sources(values: Any, seed: int) -> Any:
    """For ``resample_distinct``: per prompt, the prompt whose output it gets. ``values``
    ``[n, ...]``: each prompt's clean output at the replaced positions. Prompt ``i`` gets
    ``π(i)`` (:func:`derangement`) unless that output equals its own (within
    :data:`NOOP_RTOL`); then the first prompt, in a seeded order starting after ``i``, whose
    output differs; ``π(i)`` when none does (the ablation is then a no-op on ``i``)."""
    import torch

    n = values.shape[0]
    perm = derangement(n, seed)
    flat = values.detach().reshape(n, -1).to("cpu", torch.float64)
    diff = (flat - flat[perm]).abs().amax(1)
    size = torch.maximum(flat.abs().amax(1), flat[perm].abs().amax(1))
    need = (diff <= NOOP_RTOL * size).nonzero().flatten().tolist()
    if not need:
        return perm
    if bool(_same_rows(flat, 0, torch.arange(n)).all()):
        return perm                     # one output on every prompt: nothing can differ
    g = torch.Generator().manual_seed((int(seed) * 2654435761 + 97) % (2 ** 63))
    order = torch.randperm(n, generator=g)
    place = torch.empty(n, dtype=torch.long)
    place[order] = torch.arange(n)
    out = perm.clone()
    chunk = 64
    for i in need:
        start = int(place[i]) + 1
        cands = torch.cat([order[start:], order[:start - 1]])          # every prompt but i
        for s in range(0, len(cands), chunk):
            part = cands[s: s + chunk]
            differ = (~_same_rows(flat, i, part)).nonzero().flatten()
            if len(differ):
                out[i] = part[int(differ[0])]
                break
    return out


def derangement(n: int, seed: int) -> Any:
    """A seeded permutation of range(n) with no fixed point (n >= 2)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        if not bool((perm == torch.arange(n)).any()):
            return perm


def ablate(model: Any, components: Any, kind: str = "zero", *, positions: Any = None,
           reference: Any = None, seed: int = 0) -> Interventions:
    """Zero, mean or resample ablation of one or several components."""
    given_seed = seed
    if kind not in ABLATION_KINDS:
        raise InterventionError(bad("kind", kind, "'zero', 'mean', 'position_mean', 'resample' or "
                                    "'resample_distinct' (for patching use patch())"))
    comps = parse_many(components, model)
    if not comps:
        raise InterventionError(bad("components", components, "at least one component"))
    if kind == "mean" and reference is None:
        raise InterventionError("mean ablation needs reference=<PromptSet>: the mean of each component's "
                                "output is taken over that set's tokens")
    if kind not in ("mean", "position_mean") and reference is not None:
        raise InterventionError(bad("reference", reference, "only used with kind='mean' or 'position_mean'"))
    try:
        seed = operator.index(seed) if not isinstance(seed, bool) else None
    except TypeError:
        seed = None
    if seed is None or not 0 <= seed < 2 ** 63:
        raise InterventionError(bad("seed", given_seed, "an integer in 0 .. 2**63 - 1"))
    pos = _norm_positions(positions)
    return Interventions(tuple(Replace(c, kind, pos, reference, seed) for c in comps))


def patch(model: Any, components: Any, *, positions: Any = None) -> Interventions:
    """Replace components' outputs by their values on each prompt's corrupted counterpart."""
    comps = parse_many(components, model)
    if not comps:
        raise InterventionError(bad("components", components, "at least one component"))
    return Interventions(tuple(Replace(c, "patch", _norm_positions(positions)) for c in comps))


def freeze(model: Any, components: Any, *, positions: Any = None) -> Interventions:
    """Hold components at their clean-run outputs (whatever changes upstream)."""
    comps = parse_many(components, model)
    return Interventions(tuple(Replace(c, "freeze", _norm_positions(positions)) for c in comps))


def reroute(model: Any, components: Any, via: Any, *, positions: Any = None) -> Interventions:
    """Give components the outputs they had in the run intervened with ``via``."""
    comps = parse_many(components, model)
    via = as_intervention(via)
    if via is None:
        raise InterventionError(bad("via", via, "an intervention (the run to take outputs from)"))
    return Interventions(tuple(Replace(c, "rerouted", _norm_positions(positions), via=via) for c in comps))


def nothing() -> Interventions:
    """The empty intervention: runs the clean model (useful as an identity check)."""
    return Interventions(())


def as_intervention(x: Any) -> Any:
    if x is None or isinstance(x, Interventions):
        return x
    if isinstance(x, Replace):
        return Interventions((x,))
    return check_intervention(x)

