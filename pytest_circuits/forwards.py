"""The forward executor: the activation store runs the model for what its cache lacks.

:class:`ActivationStore` is an :class:`~pytest_circuits.activation_cache.ActivationCache`
(keys, memory, disk: what is known) that computes the rest. ``store.get(model, prompts,
hooks, intervention=None)`` returns ``{hook: tensor}`` with the batch dimension first,
computing only the hooks asked for (never a full cache), and only those the cache does not
hold: the model is run in batches with hooks that copy just those tensors.

An intervention is anything with the members of
:class:`pytest_circuits.protocols.Intervention` (``key``, ``layer``, ``check``,
``fwd_hooks``): the store calls those and nothing else. A forward is planned
(:meth:`ActivationStore._plan`: hooks to grab, the block to resume at, where to stop,
how the logits are made), run batch by batch, and each requested name is extracted from a
batch by the extractor of its kind (``_EXTRACTORS``: a hook, a hook at the last position,
the last logits, a few log-probabilities, the per-token loss).

Batches hold as many rows as the token budget (rows x positions per forward, chosen per
model and device: :func:`default_token_budget`, ``$PYTEST_CIRCUITS_TOKEN_BUDGET``) allows.
An intervened forward resumes at the intervention's first block from the clean residual
stream, and from the first position it can change where it says so (``first_positions``:
a suffix forward reading the clean run's keys and values for the earlier positions);
several interventions are stacked into one forward (:meth:`ActivationStore.get_many`,
:meth:`ActivationStore.each`), and runs that share an intervened prefix resume from one
another (:meth:`ActivationStore.shared_prefixes`). What each forward computes is counted
in the store's ``counters``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import hooks as H
from ._progress import bar
from .activation_cache import ActivationCache, Counters
from .devices import first_tensor, to_device_of
from .errors import CircuitsError, bad
from .models import info as model_info
from .protocols import Intervention, check_intervention


@dataclass
class ActivationStore(ActivationCache):
    """Memory + disk cache of activations (:class:`~pytest_circuits.activation_cache.ActivationCache`:
    ``cache_dir=None`` keeps it in memory only) that runs the model for what it does not hold."""

    cache_dir: Path | str | None = None   # a folder, or an fsspec URL (str) for a remote cache
    batch_size: int | None = None  # at most this many rows per forward (None: the token budget alone)
    # rows x positions per forward; None: $PYTEST_CIRCUITS_TOKEN_BUDGET, else chosen for the
    # model's device at its first forward (:func:`default_token_budget`)
    token_budget: int | None = None
    max_memory_bytes: int = 4 << 30
    resume: bool = True           # resume intervened forwards from the clean residual stream
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        # (before(l).key, l) of intervened prefixes whose block-l input residual stream a later
        # run resumes from: recorded (in memory) by the runs that pass through them
        self._shared: dict[tuple[str, int], int] = {}
        self._prefix_entries: dict[tuple[str, int], list[str]] = {}
        self._providers: dict[tuple[str, int], Any] = {}
        self._rerunning: set[str] = set()
        self._budgets: dict[tuple[str, int], "_Budget"] = {}   # (device, id(model)) -> its forward budget
        self._watch: Any = None      # inside each(): (the intervention watched, the reads under it)
        for what, value in (("batch_size", self.batch_size), ("token_budget", self.token_budget)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise CircuitsError(bad(what, value, "a whole number >= 1, or None"))
        self._open_cache()

    # -- public ----------------------------------------------------------------
    def __call__(self, model: Any, prompts: Any, hooks: Iterable[str] | str,
                 intervention: Intervention | None = None) -> dict[str, Any]:
        return self.get(model, prompts, hooks, intervention)

    def get(self, model: Any, prompts: Any, hooks: Iterable[str] | str,
            intervention: Intervention | None = None, *, persist: bool = True) -> dict[str, Any]:
        """``{hook: value}`` for ``prompts`` (under ``intervention``). ``persist=False`` keeps
        what is computed in memory only (the clean run's resume data: large, and only
        needed while intervened runs are being computed)."""
        names = [hooks] if isinstance(hooks, str) else list(dict.fromkeys(hooks))
        if not names:
            raise CircuitsError(bad("hooks", [], "at least one hook name"))
        if intervention is not None:
            check_intervention(intervention)
            if self._watch is not None and intervention is self._watch[0]:
                self._watch[1].append((prompts, names))      # inside each(): what a sweep reads
        base = self._base_fields(model, prompts, intervention)
        H.check_names(model, [H.base_name(n) for n in names])
        if intervention is not None:
            intervention.check(model, prompts)
        out: dict[str, Any] = {}
        missing: list[str] = []
        for name in names:
            key = self._key(base, name)
            value = self._from_memory(key)
            if value is not None:
                self.counters.memory_hits += 1
                out[name] = value
                continue
            value = self._from_disk(key, base, name) if persist else None
            if value is not None:
                self.counters.disk_hits += 1
                self._to_memory(key, value)
                out[name] = value
                continue
            missing.append(name)
        if missing:
            extras = self._resume_extras(model, prompts, missing, base) if intervention is None else []
            computed = self._forward(model, prompts, missing + extras, intervention)
            for name in extras:
                self._to_memory(self._key(base, name), computed.pop(name))
            for name, value in computed.items():
                key = self._key(base, name)
                self.counters.computed += 1
                self._to_memory(key, value)
                if persist:
                    self._to_disk(key, base, name, value)
                out[name] = value
        return {n: out[n] for n in names}

    def get_many(self, model: Any, prompts: Any, hooks: "Iterable[str] | str | Callable[[Any], Iterable[str]]",
                 interventions: Sequence[Intervention]) -> list[dict[str, Any]]:
        """:meth:`get` under each of ``interventions``, several in one batched forward.

        ``hooks`` is the names read under every intervention, or a function of the
        intervention giving its own (a sweep over layers reads each intervention's names
        from its first block on: ``lambda iv: store.split_at_resume(names, iv)[1]``).

        Those not yet known are stacked (the prompts once per intervention, each copy under
        its own intervention, rows of every layer together) and run as many rows at a time
        as the token budget holds (:meth:`budget`; at most ``batch_size`` when set), in order
        of layer; the stacked forward starts at the earliest layer of its interventions and
        each row at its own first position, and a group spans no more layers than keep its
        compute within the device's ``stack_waste`` of what each alone would run.
        Interventions the store cannot stack (without ``first_positions``, or acting on the
        embedding) are run one at a time. Results equal those of :meth:`get` (checked in
        tests/unit/test_suffix.py and tests/unit/test_budget.py) and are cached under each
        intervention's own key."""
        ivs = list(interventions)

        def names_of(iv: Any) -> list[str]:
            given = hooks(iv) if callable(hooks) else hooks
            got = [given] if isinstance(given, str) else list(dict.fromkeys(given))
            if not got:
                raise CircuitsError(bad("hooks", got, f"at least one hook name (under {iv.key})"))
            return got

        out: list[dict[str, Any] | None] = [None] * len(ivs)
        wanted: list[list[str]] = []
        stackable: list[int] = []
        for k, iv in enumerate(ivs):
            check_intervention(iv)
            wanted.append(names_of(iv))
            known = self._known(model, prompts, wanted[k], iv)
            if known is not None:
                out[k] = known
            elif hasattr(iv, "first_positions") and iv.layer >= 0 and self.resume:
                stackable.append(k)
            else:
                out[k] = self.get(model, prompts, wanted[k], iv)
        stackable.sort(key=lambda k: ivs[k].layer)
        union = list(dict.fromkeys(n for k in stackable for n in wanted[k]))
        for group in self._stack_groups(model, prompts, union, [ivs[k] for k in stackable], stackable):
            if len(group) == 1:
                out[group[0]] = self.get(model, prompts, wanted[group[0]], ivs[group[0]])
                continue
            names = list(dict.fromkeys(n for k in group for n in wanted[k]))
            for k in group:
                ivs[k].check(model, prompts)
            H.check_names(model, [H.base_name(n) for n in names])
            stacked = _Stacked(tuple(ivs[k] for k in group), len(prompts))
            computed = self._forward(model, _StackedPrompts(prompts, len(group)), names, stacked)
            n = len(prompts)
            for j, k in enumerate(group):
                base = self._base_fields(model, prompts, ivs[k])
                res = {}
                for name in wanted[k]:
                    value = computed[name][j * n:(j + 1) * n].clone()
                    key = self._key(base, name)
                    self.counters.computed += 1
                    self._to_memory(key, value)
                    self._to_disk(key, base, name, value)
                    res[name] = value
                out[k] = res
        return out  # type: ignore[return-value]

    def each(self, model: Any, interventions: Sequence[Any], run: Callable[[Any], Any]) -> list[Any]:
        """``[run(iv) for iv in interventions]``, the forwards of all but the first stacked.

        ``run(interventions[0])`` is called first, noting which ``(prompts, names)`` it reads
        from this store under that very intervention; those are then computed for the other
        interventions together (:meth:`get_many`, one stacked forward for as many as the
        budget holds), and each later ``run`` reads them from memory. What a later run reads
        beyond them it computes itself, so results are those of the plain loop whatever
        ``run`` does (a sweep whose metric reads the same names under each intervention gets
        the saving)."""
        ivs = list(interventions)
        if len(ivs) < 2:
            return [run(iv) for iv in ivs]
        reads: list[tuple[Any, list[str]]] = []
        outer, self._watch = self._watch, (ivs[0], reads)      # (each() inside a run: restored after)
        try:
            first = run(ivs[0])
        finally:
            self._watch = outer
        seen: dict[int, tuple[Any, list[str]]] = {}
        for prompts, names in reads:
            got = seen.setdefault(id(prompts), (prompts, []))
            got[1].extend(n for n in names if n not in got[1])
        rest = ivs[1:]
        for prompts, names in seen.values():
            self.get_many(model, prompts, names, rest)
        return [first] + [run(iv) for iv in rest]

    def budget(self, model: Any) -> "_Budget":
        """What one forward of ``model`` may hold: the token budget (rows x positions) and the
        memory caps of its attention scores and logits, chosen once per model and device."""
        device = model_info(model).device
        key = (str(device), id(model))
        got = self._budgets.get(key)
        if got is None:
            got = self._budgets[key] = _budget_for(model, device, self.token_budget)
        return got

    def _stack_groups(self, model: Any, prompts: Any, names: Sequence[str], ivs: Sequence[Any],
                      ids: Sequence[int]) -> list[list[int]]:
        """``ids`` (of ``ivs``, in order of layer) cut into the groups :meth:`get_many` stacks
        into one forward each: as many copies of ``prompts`` as the token budget holds at the
        group's width (the positions a suffix forward of its interventions runs, where the
        store can run one: at most each prompt's length), at most ``batch_size`` rows when set.
        A group :meth:`_forward` finds wider than estimated is split into more forwards."""
        import torch

        n = max(1, len(prompts))
        lengths = torch.as_tensor(list(prompts.lengths)).long()
        full = max(1, int(lengths.max())) if len(lengths) else 1
        suffix_ok = (H.TOKEN_LOSS not in names and not any(H.is_attn_cache(nm) for nm in names)
                     and sliding_windows(model) is not None
                     and all(H.position_dims(H.base_name(nm)) == (1,) for nm in names if not H.is_pseudo(nm)))
        budget = self.budget(model)
        full_logits = H.TOKEN_LOSS in names

        def width(iv: Any) -> int:
            if not suffix_ok or not len(lengths):
                return full
            firsts = torch.as_tensor(iv.first_positions(model, prompts)).reshape(-1).long()
            if firsts.shape[0] != len(lengths):
                return full
            firsts = torch.minimum(firsts.clamp(min=0), lengths - 1)
            return max(1, int((lengths - firsts).max()))

        n_layers = model.cfg.n_layers
        groups: list[list[int]] = []
        group: list[int] = []
        widest, lowest, floor = 1, 0, 0
        for iv, k in zip(ivs, ids):
            w = max(widest, width(iv))
            rows = budget.rows(model, w, full_logits=full_logits)
            if self.batch_size is not None:
                rows = min(rows, self.batch_size)
            # blocks the stacked forward runs (from the group's lowest layer) against what each
            # intervention alone would (from its own layer): ivs come in order of layer
            floor_ = floor + (n_layers - iv.layer)
            wasteful = group and (len(group) + 1) * (n_layers - lowest) > budget.stack_waste * floor_
            if group and ((len(group) + 1) * n > rows or wasteful):
                groups.append(group)
                group, w, floor_ = [], width(iv), n_layers - iv.layer
            if not group:
                lowest = iv.layer
            group.append(k)
            widest, floor = w, floor_
        if group:
            groups.append(group)
        return groups

    def _batches(self, model: Any, plan: "_Plan", order: Any, lengths: Any, firsts: Any) -> list[Any]:
        """``order`` cut into consecutive batches, each as many rows as the token budget holds
        at that batch's width (the positions its rows run: from each row's first position to
        its end in a suffix forward, else the longest prompt's length), at most
        ``batch_size`` rows when set. Only which rows share a forward changes with the
        budget: no value depends on it beyond float rounding (tests/unit/test_budget.py)."""
        budget = self.budget(model)
        full_logits = plan.want_logits and not plan.last_only
        one_start = firsts is not None and any(H.position_dims(n) != (1,) for n in plan.real)
        cap = self.batch_size or len(order)
        # a suffix forward reads the clean keys and values of every earlier position of each
        # row, at every block it runs: kept under the memory cap as well
        cfg = model.cfg
        kv = 2 * int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) * int(cfg.d_head)
        prefix = kv * ((plan.stop or plan.n_layers) - plan.start) if firsts is not None else 0
        out: list[Any] = []
        begin, n = 0, len(order)
        while begin < n:
            end, longest, lowest, widest = begin, 0, None, 1
            while end < n:
                r = int(order[end])
                first = int(firsts[r]) if firsts is not None else 0
                longest_ = max(longest, int(lengths[r]))
                lowest_ = first if lowest is None else min(lowest, first)
                if one_start:
                    width = longest_ - lowest_
                else:
                    width = max(widest, int(lengths[r]) - first)
                rows = end - begin + 1
                if end > begin and (rows > cap or rows > budget.rows(model, max(1, width), full_logits=full_logits)
                                    or rows * longest_ * prefix > budget.entries):
                    break
                longest, lowest, widest = longest_, lowest_, max(1, width)
                end += 1
            out.append(order[begin:end])
            begin = end
        return out

    def resume_names(self, model: Any) -> list[str]:
        """What an intervened forward reads from the clean run to resume at any block and
        position: every block's input residual and attention keys and values."""
        n = model.cfg.n_layers
        return ([H.resid_pre(l) for l in range(n)]
                + [H.attn_cache(l, part) for l in range(n) for part in "kv"])

    @contextlib.contextmanager
    def shared_prefixes(self, model: Any, interventions: Sequence[Intervention]) -> Iterator["ActivationStore"]:
        """Within: each of ``interventions`` (run in this order, on any prompt set) resumes
        at the latest block ``l`` where an earlier one acts exactly as it does before ``l``
        (equal ``before(l).key``), from that earlier run's input to block ``l``, applying
        only its own ``after(l)``; the earlier run records that residual stream, in memory.

        Removal sets that share most of their parts (a circuit's minimality check removes
        everything outside the circuit plus one component of it) then each recompute only
        the blocks from their own component on. Interventions without ``before``/``after``
        (and runs that cannot skip positions) run as usual; a recording that was evicted or
        never made means a run from the clean residual stream: slower, the same result.
        The recordings are dropped on exit."""
        n = model.cfg.n_layers
        seen: dict[tuple[str, int], Any] = {}          # prefix -> the first intervention passing it
        wanted: list[tuple[str, int]] = []
        for iv in interventions:
            if not (hasattr(iv, "before") and hasattr(iv, "after")):
                continue
            prefixes = [(iv.before(l).key, l) for l in range(n - 1, max(iv.layer, 0), -1)]
            hit = next((p for p in prefixes if p in seen), None)
            if hit is not None:
                wanted.append(hit)
                self._providers.setdefault(hit, seen[hit])
            for p in prefixes:
                seen.setdefault(p, iv)
        for w in wanted:
            self._shared[w] = self._shared.get(w, 0) + 1
        try:
            yield self
        finally:
            for w in wanted:
                left = self._shared.get(w, 0) - 1
                if left > 0:
                    self._shared[w] = left
                else:
                    self._shared.pop(w, None)
                    self._providers.pop(w, None)
                    self._forget_prefix(w)

    def _prefix_key(self, model: Any, prompts: Any, prefix: Any, layer: int) -> str:
        return self._key(self._base_fields(model, prompts, prefix), H.resid_pre(layer))

    def _forget_prefix(self, wanted: tuple[str, int]) -> None:
        self._drop(self._prefix_entries.pop(wanted, []))

    def _shared_trunk(self, model: Any, prompts: Any, intervention: Any, start: int,
                      last: int) -> tuple[int, Any] | None:
        """The latest block in ``(start, last]`` whose input under ``intervention.before(l)``
        an earlier run recorded (see :meth:`shared_prefixes`), and that residual stream."""
        if not self._shared or not (hasattr(intervention, "before") and hasattr(intervention, "after")):
            return None
        for attempt in range(2):
            for l in range(last, start, -1):
                prefix = intervention.before(l)
                if (prefix.key, l) not in self._shared:
                    continue
                value = self._from_memory(self._prefix_key(model, prompts, prefix, l))
                if value is not None:
                    return l, value
                provider = self._providers.get((prefix.key, l))
                if attempt or provider is None or provider.key in self._rerunning \
                        or provider.key == intervention.key:
                    continue
                # not recorded (the earlier run came from the cache, or was evicted): run the
                # earlier intervention once up to its last shared block, recording them all;
                # the later runs it serves then skip its blocks
                deepest = max(m for (p, m), who in self._providers.items() if who is provider)
                self._rerunning.add(provider.key)
                try:
                    provider.check(model, prompts)
                    self._forward(model, prompts, [H.resid_pre(deepest)], provider)
                finally:
                    self._rerunning.discard(provider.key)
                break
            else:
                return None
        return None

    def _to_record(self, model: Any, prompts: Any, intervention: Any, start: int, last: int) -> dict[str, str]:
        """``{resid_pre(l): memory key}`` of the prefixes a later run resumes from that this
        run (blocks ``start..last``) passes through and nobody has recorded yet."""
        if not self._shared or not (hasattr(intervention, "before") and hasattr(intervention, "after")):
            return {}
        out: dict[str, str] = {}
        for l in range(start + 1, last + 1):
            prefix = intervention.before(l)
            if (prefix.key, l) in self._shared:
                key = self._prefix_key(model, prompts, prefix, l)
                if self._from_memory(key) is None:
                    out[H.resid_pre(l)] = key
                    self._prefix_entries.setdefault((prefix.key, l), []).append(key)
        return out

    def _resume_extras(self, model: Any, prompts: Any, missing: Sequence[str], base: dict[str, str]) -> list[str]:
        """The resume data to record (in memory) during a clean forward that runs anyway:
        so a later sweep of interventions on these prompts needs no clean forward of its own.
        Only when the forward runs every block and the data fits the memory budget."""
        if not self.resume or self._plan(model, missing, None).stop is not None:
            return []
        if self._resume_bytes(model, prompts) > self.max_memory_bytes // 8:
            return []
        return [n for n in self.resume_names(model) if n not in missing
                and self._from_memory(self._key(base, n)) is None]

    @staticmethod
    def _resume_bytes(model: Any, prompts: Any) -> int:
        """The size of :meth:`resume_names` for ``prompts`` (float32)."""
        cfg = model.cfg
        kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        per_position = cfg.n_layers * (cfg.d_model + 2 * kv_heads * cfg.d_head) * 4
        return len(prompts) * prompts.tokens.shape[1] * per_position


    def split_at_resume(self, names: Sequence[str], intervention: Intervention | None) -> tuple[list[str], list[str]]:
        """``names`` split into (read from the clean run, read under ``intervention``): the
        hooks before the intervention's first block are exactly as in the clean run, and
        reading them there lets the intervened forward resume at that block."""
        first = intervention.layer if intervention is not None else -1
        if first < 0:
            return [], list(names)
        before = [n for n in names if (b := H.block_of(n)) is not None and b < first]
        return before, [n for n in names if n not in before]

    # -- forward ---------------------------------------------------------------
    def _forward(self, model: Any, prompts: Any, names: Sequence[str],
                 intervention: Intervention | None) -> dict[str, Any]:
        """Compute ``names`` in batches: plan what to run, run each batch, extract each name.

        An intervened forward resumes at the intervention's first block (``layer``) from the
        clean residual stream. When the intervention also says where it can first change
        anything (``first_positions``: causal attention leaves every earlier position as in
        the clean run), only the positions from there on are run: their attention reads
        the clean run's keys and values for the earlier positions (:class:`_Prefix`),
        and the earlier positions of any hook asked for in full are the clean run's. Rows
        are batched in order of that position, so a batch starts as late as its rows allow.
        """
        import torch

        plan = self._plan(model, names, intervention)
        firsts = self._suffix_starts(model, prompts, plan, names, intervention)
        run_iv, trunk, record = intervention, None, {}
        if plan.resumed and self._shared:
            # inside shared_prefixes(): resume from an earlier intervened run where one acted
            # as this one does before some later block, and record what later runs resume from
            last = (plan.stop or plan.n_layers) - 1
            lowest = min([b for nm in plan.real if (b := H.block_of(nm)) is not None] + list(plan.caches),
                         default=last)
            trunk = self._shared_trunk(model, prompts, intervention, plan.start, min(last, lowest))
            if trunk is not None:
                run_iv = intervention.after(trunk[0])      # type: ignore[union-attr]
                plan = dataclasses.replace(plan, start=trunk[0])
            record = self._to_record(model, prompts, intervention, plan.start, last)
            if record:
                plan = dataclasses.replace(plan, real=list(dict.fromkeys(plan.real + list(record))))
        clean: dict[str, Any] = {}
        if trunk is not None and firsts is None:
            clean = {H.resid_pre(trunk[0]): trunk[1]}        # every position from the earlier run
        elif plan.resumed:
            need = [H.resid_pre(plan.start)]
            if firsts is not None:
                # everything a suffix forward reads from the clean run, in one clean forward:
                # the keys/values of every block (so a sweep over layers needs one clean pass)
                # and the hooks asked for in full (their earlier positions)
                need += self.resume_names(model)
                need += [n for n in plan.real if n in names]
                need = list(dict.fromkeys(need))
            clean = self.get(model, getattr(prompts, "base", prompts), need,
                             persist=False if firsts is not None else True)
            if trunk is not None:
                clean = {**clean, H.resid_pre(trunk[0]): trunk[1]}
        width_all = prompts.tokens.shape[1]
        n = len(prompts)
        lengths = torch.as_tensor(list(prompts.lengths)).long()
        # rows of like width together (the suffix forward: of like first position), so that
        # a batch pads little and the token budget holds as many rows as it can
        order = (torch.sort(lengths, stable=True, descending=True).indices if firsts is None
                 else torch.sort(firsts, stable=True).indices)
        grab = list(names) + [r for r in record if r not in names]
        parts: dict[str, list[Any]] = {name: [] for name in grab}
        batches: Any = self._batches(model, plan, order, lengths, firsts)
        if len(batches) > 1:
            batches = bar(batches, f"forward {prompts.name}", total=len(batches))
        for rows in batches:
            batch = self._run_batch(model, prompts, plan, run_iv, clean, rows, firsts)
            self.counters.shared_prefix_passes += trunk is not None
            for name in grab:
                parts[name].append(_EXTRACTORS[_kind(name)](name, batch, width_all))
        out = {name: torch.cat(chunks, 0) for name, chunks in parts.items()}
        if n:
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(n)
            out = {name: value[inverse] for name, value in out.items()}
        for name, key in record.items():
            self._to_memory(key, out[name] if name in names else out.pop(name))
        return out

    def _plan(self, model: Any, names: Sequence[str], intervention: Intervention | None) -> "_Plan":
        """Which hooks to grab, where the forward may start and stop, and how the logits are made."""
        n_layers = model.cfg.n_layers
        real = list(dict.fromkeys(H.base_name(n) for n in names
                                  if not H.is_pseudo(n) and not H.is_attn_cache(n)))
        caches = sorted({H.block_of(n) for n in names if H.is_attn_cache(n)})  # type: ignore[type-var]
        want_logits = any(H.is_pseudo(n) for n in names)
        blocks = [H.block_of(nm) for nm in real] + list(caches)
        stop = None
        if not want_logits and blocks and None not in blocks and max(blocks) < n_layers - 1:  # type: ignore[type-var]
            stop = max(max(blocks) + 1, 1)  # type: ignore[type-var]
        # Resume from the clean residual stream when nothing before the intervened block is
        # asked for: the prefix is identical to the clean run (the embedding is block -1).
        start, resumed = 0, False
        if self.resume and intervention is not None:
            first = intervention.layer
            # at block 0 from the clean embedding output only for an intervention that says
            # where it acts (first_positions: the built-in ones, whose embedding replacements
            # have layer -1); layer 0 otherwise means "run the whole model"
            can = first > 0 or (first == 0 and hasattr(intervention, "first_positions"))
            if can and all(b is None or b >= first for b in blocks):
                start, resumed = first, True
        touches_unembed = any(H.touches_unembed(nm) for nm in real)
        # Only the last position's logits wanted: skip the unembedding in the forward (a
        # fifth of SmolLM2's compute at 18 tokens) and apply it to those rows only.
        last_only = want_logits and H.TOKEN_LOSS not in names and not touches_unembed
        if H.LOGITS_LAST_PRE_CAP in names and not last_only and final_logit_softcap(model) is not None:
            raise CircuitsError(f"{H.LOGITS_LAST_PRE_CAP!r} is read with the last position's logits only: ask "
                                f"for it apart from {H.TOKEN_LOSS!r} and the unembedding's hooks")
        skip_unembed = (not want_logits and not touches_unembed) or last_only
        back = max([H.logprob_back(n) for n in names if n.startswith(H.LOGPROBS_LAST)], default=0)
        backs = tuple(range(back + 1))          # contiguous: row k of the last-only logits is back k
        return _Plan(real, start, stop, n_layers, last_only, skip_unembed, want_logits, tuple(caches), resumed,
                     backs)

    def _suffix_starts(self, model: Any, prompts: Any, plan: "_Plan", names: Sequence[str],
                       intervention: Intervention | None) -> Any:
        """Per prompt, the first position the forward must run (``[n]`` ints), or None to run
        every position: the intervention's ``first_positions`` (at most each prompt's last
        position, whose logits are read), when it has them and what is asked for allows."""
        import torch

        if not (self.resume and plan.resumed and intervention is not None):
            return None
        first_positions = getattr(intervention, "first_positions", None)
        if first_positions is None or plan.caches:
            return None
        if sliding_windows(model) is None:
            return None          # attention the suffix forward cannot lay out: every position runs
        if self._resume_bytes(model, getattr(prompts, "base", prompts)) > self.max_memory_bytes // 2:
            return None          # the clean keys and values would not fit: resume at the block only
        if plan.want_logits and not plan.last_only:
            return None          # logits at every position (the per-token loss) need every position
        lengths = torch.tensor(prompts.lengths)
        firsts = torch.as_tensor(first_positions(model, prompts)).reshape(-1).long()
        if firsts.shape[0] != len(prompts):
            raise CircuitsError(f"{type(intervention).__name__}.first_positions returned {firsts.shape[0]} "
                                f"positions for {len(prompts)} prompts")
        # each prompt's logits are read at its last position (and plan.backs before it)
        firsts = torch.minimum(firsts.clamp(min=0), (lengths - 1 - max(plan.backs)).clamp(min=0))
        return firsts if bool((firsts > 0).any()) else None

    def _run_batch(self, model: Any, prompts: Any, plan: "_Plan", intervention: Intervention | None,
                   clean: dict[str, Any], rows: Any, firsts: Any) -> "_Batch":
        """One forward over ``rows`` of ``prompts`` with the grabbing hooks (after the
        intervention's), counted in :attr:`counters`. With ``firsts``, only the positions
        from the batch's smallest first position on are run."""
        import torch

        device = model_info(model).device
        lengths = torch.tensor([prompts.lengths[int(r)] for r in rows])
        width = int(lengths.max())
        b = len(rows)
        toks = prompts.tokens[rows, :width].to(device)
        starts = None
        if firsts is not None:
            starts = firsts[rows].clone()
            if any(H.position_dims(n) != (1,) for n in plan.real):
                # attention patterns have a key axis: keep it aligned (one start per batch)
                starts[:] = int(starts.min())
            if not bool((starts > 0).any()):
                starts = None
        grabbed: dict[str, Any] = {}
        fired: set[str] = set()

        def grab(name: str) -> Callable[..., None]:
            def hook(t: Any, hook: Any = None) -> None:
                grabbed[name] = t.detach().to("cpu")
            return hook

        fwd = [(name, grab(name)) for name in plan.real]
        if intervention is not None:
            # Interventions first, so grabbed values are the intervened ones.
            extra = {"offset": starts} if starts is not None else {}
            fwd = [(name, _fired(fn, name, fired)) for name, fn in
                   intervention.fwd_hooks(model, prompts, rows, self, **extra)] + fwd
        kwargs: dict[str, Any] = {}
        if plan.stop is not None:
            kwargs["stop_at_layer"] = plan.stop
        last_block = (plan.stop or plan.n_layers) - 1
        inp = toks
        run = width                                  # positions each row runs
        recorded: dict[int, tuple[Any, Any]] = {}
        attn_kv, layers = None, ()
        if plan.caches:
            attn_kv, layers = _Recorder(recorded), plan.caches
        crow = rows % len(prompts.base) if hasattr(prompts, "base") else rows   # rows of the clean run
        if plan.resumed:
            kwargs["start_at_layer"] = plan.start
            resid = clean[H.resid_pre(plan.start)][crow]
            if starts is None:
                inp = resid[:, :width]
            else:
                # Each row runs its positions starts[i].. only: ``run`` of them (the longest
                # suffix of the batch), with the clean keys/values of the earlier ones.
                run = int((lengths - starts).max())
                at = starts.unsqueeze(1) + torch.arange(run).unsqueeze(0)             # [b, run]
                inp = resid[torch.arange(b).unsqueeze(1), at.clamp(max=resid.shape[1] - 1)]
                kwargs["position_ids"] = at.to(device)
                attn_kv = _Prefix({l: (clean[H.attn_cache(l, "k")][crow], clean[H.attn_cache(l, "v")][crow])
                                   for l in range(plan.start, last_block + 1)}, starts, run, device,
                                  sliding_windows(model) or (), model.cfg.dtype)
                layers = tuple(range(plan.start, last_block + 1))
            inp = to_device_of(inp, model.blocks[plan.start], model.cfg.dtype)   # the block it enters
        with torch.no_grad(), _skipping_blocks(model, plan.start, plan.skip_unembed, inp if plan.resumed else None) as skipped, \
                _attention_cache(model, layers, attn_kv):
            try:
                logits = H.run(model, inp, fwd, **kwargs)
            except RuntimeError as e:
                _refuse_mixed_dtypes(model, e)
                raise
        if plan.last_only and getattr(skipped, "seen", None) is not None:
            # the final residual as it reached the (skipped) unembedding: what the model returns
            # may have been changed after it (Gemma-2 soft-caps its logits)
            logits = skipped.seen
        if intervention is not None:
            # a forward stopped before block ``plan.stop`` reaches no hook from there on (an earlier
            # run re-run only up to the block a later one resumes from, shared_prefixes)
            silent = [name for name, _ in fwd if name not in fired and name not in plan.real
                      and (plan.stop is None or (H.block_of(name) is not None and H.block_of(name) < plan.stop))]
            if silent:
                raise CircuitsError(
                    f"the intervention {intervention.key} hooks {silent}, which did not fire in a forward "
                    f"{'resumed at block ' + str(plan.start) if plan.resumed else 'from the tokens'}"
                    f"{' stopped before block ' + str(plan.stop) if plan.stop is not None else ''}: its "
                    "`layer` must be the first block whose input it changes (-1 for the embedding)")
        shift = starts if starts is not None else torch.zeros_like(lengths)
        logit_lengths = lengths - shift
        short = [int(r) for r, n in zip(rows, lengths) if n - 1 - max(plan.backs) < 0] if plan.want_logits else []
        if short:
            raise CircuitsError(f"logits {max(plan.backs)} positions before the last asked of {prompts.name!r}, "
                                f"whose prompt(s) {short[:5]} are shorter than that")
        if plan.last_only:
            # the rows of each position read (the last, and plan.backs before it), unembedded
            # outside the forward: ``logits`` is [b, len(backs), vocab], the last position last
            with torch.no_grad():
                finals = [logits[torch.arange(b), (lengths - 1 - k - shift).to(logits.device)]
                          for k in reversed(plan.backs)]
                unembed = _unembed(model)
                pre_cap = unembed(to_device_of(torch.stack(finals, 1), unembed))
                logits = _soft_cap(model, pre_cap)
            logit_lengths = torch.full_like(lengths, len(plan.backs))
        else:
            # the model's own forward applied any cap; without one the logits are their own pre-cap
            pre_cap = logits if final_logit_softcap(model) is None else None
        c = self.counters
        blocks_run = last_block + 1 - plan.start
        c.forward_passes += 1
        c.resumed_passes += plan.resumed
        c.suffix_passes += starts is not None
        c.prompts_forwarded += b
        c.block_prompt_passes += blocks_run * b
        c.block_position_passes += blocks_run * b * run
        if intervention is not None:
            c.intervened_block_positions += blocks_run * b * run
        floor_from = firsts[rows] if firsts is not None else torch.zeros_like(lengths)
        c.floor_block_positions += blocks_run * int((lengths - floor_from).sum())
        for name in plan.real:
            if name not in grabbed:
                raise CircuitsError(f"hook {name!r} did not fire during the forward pass")
            value = grabbed[name]
            if starts is not None:
                # back to whole prompts: the positions before each row's start are the clean
                # run's (same block, unchanged) where the hook is asked for in full, else zeros
                value = _unpack(value, clean.get(name), crow, starts, width, name)
            grabbed[name] = _zero_padding(value, lengths, name)
        for l, (k, v) in recorded.items():
            grabbed[H.attn_cache(l, "k")] = _zero_padding(k, lengths, "")
            grabbed[H.attn_cache(l, "v")] = _zero_padding(v, lengths, "")
        return _Batch(toks, lengths, width, logits, logit_lengths, grabbed, pre_cap)


TOKEN_BUDGET_ENV = "PYTEST_CIRCUITS_TOKEN_BUDGET"
CPU_TOKEN_BUDGET = 4096          # rows x positions per forward on a CPU (or MPS) device
CUDA_TOKEN_BUDGET_RANGE = (2048, 65536)   # what free memory may choose on a CUDA device
_CPU_ENTRIES_CAP = 1 << 27       # attention scores / logits of one forward: at most this many floats on a CPU
_CUDA_MEMORY_SHARE = 0.25        # of the free memory at first use: what one forward's activations may hold


@dataclass(frozen=True)
class _Budget:
    """What one forward may hold: ``tokens`` rows x positions, and at most ``entries``
    floats in any one layer's attention scores (rows x heads x positions^2) or in full
    logits (rows x positions x vocabulary)."""

    tokens: int
    entries: int
    source: str          # where ``tokens`` came from (the option, the environment, the device)
    # a stacked sweep's forward may run up to this many times the blocks its interventions
    # would run one at a time (rows of later layers run from the group's first layer): fewer
    # forwards for some extra compute, worth more where a forward's fixed cost is high
    stack_waste: float = 2.0

    def rows(self, model: Any, width: int, *, full_logits: bool = False) -> int:
        """How many rows of ``width`` positions one forward of ``model`` holds (at least 1)."""
        cfg = model.cfg
        heads = max(1, int(getattr(cfg, "n_heads", 1) or 1))
        rows = self.tokens // width
        rows = min(rows, self.entries // (heads * width * width))
        if full_logits:
            rows = min(rows, self.entries // (width * max(1, int(getattr(cfg, "d_vocab", 1) or 1))))
        return max(1, rows)


CPU_STACK_WASTE, CUDA_STACK_WASTE = 2.0, 8.0


def default_token_budget(model: Any, device: Any) -> tuple[int, int, str]:
    """``(tokens, entries, source)`` for a forward of ``model`` on ``device``: on a CPU a fixed
    :data:`CPU_TOKEN_BUDGET`; on CUDA, a share of the memory free at first use divided by
    what a position costs through the model (its residual stream, MLP and logits, in the
    model's dtype), within :data:`CUDA_TOKEN_BUDGET_RANGE`."""
    import torch

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type != "cuda" or not torch.cuda.is_available():
        return CPU_TOKEN_BUDGET, _CPU_ENTRIES_CAP, f"the {dev.type} default"
    free, _total = torch.cuda.mem_get_info(dev)
    cfg = model.cfg
    size = torch.empty((), dtype=getattr(cfg, "dtype", torch.float32)).element_size()
    d_model = int(getattr(cfg, "d_model", 1) or 1)
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d_model)
    per_token = size * (16 * d_model + 4 * d_mlp + int(getattr(cfg, "d_vocab", 1) or 1))
    usable = int(free * _CUDA_MEMORY_SHARE)
    lo, hi = CUDA_TOKEN_BUDGET_RANGE
    tokens = min(hi, max(lo, usable // per_token))
    entries = max(_CPU_ENTRIES_CAP, usable // (4 * size))
    return tokens, entries, f"{free >> 20} MiB free on {dev}"


def _budget_for(model: Any, device: Any, given: int | None) -> _Budget:
    """The forward budget of ``model`` on ``device``: ``given`` (the store's
    ``token_budget``), else ``$PYTEST_CIRCUITS_TOKEN_BUDGET``, else the device's default."""
    import torch

    tokens, entries, source = default_token_budget(model, device)
    waste = CUDA_STACK_WASTE if torch.device(device).type == "cuda" else CPU_STACK_WASTE
    if given is not None:
        return _Budget(given, max(entries, given), "token_budget", waste)
    raw = os.environ.get(TOKEN_BUDGET_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise CircuitsError(bad(f"${TOKEN_BUDGET_ENV}", raw, "a whole number >= 1 (rows x positions per forward)"))
        return _Budget(value, max(entries, value), f"${TOKEN_BUDGET_ENV}", waste)
    return _Budget(tokens, entries, source, waste)


@dataclass(frozen=True)
class _Plan:
    real: list[str]          # hook names to grab (base names, no pseudo-hooks)
    start: int               # block the forward resumes at (0: from the tokens)
    stop: int | None         # stop_at_layer (None: run to the logits)
    n_layers: int
    last_only: bool          # unembed only each prompt's last row, outside the forward
    skip_unembed: bool       # skip the unembedding module inside the forward
    want_logits: bool = False
    caches: tuple[int, ...] = ()   # blocks whose attention keys/values are recorded
    resumed: bool = False    # the forward starts at block ``start`` from the clean residual stream
    backs: tuple[int, ...] = (0,)  # logits read this many positions before each prompt's last


@dataclass(frozen=True)
class _Batch:
    toks: Any                # [b, width] token ids
    lengths: Any             # [b] real lengths
    width: int
    logits: Any              # [b, width or 1, vocab]
    logit_lengths: Any       # lengths along the logits' position axis
    grabbed: dict[str, Any]  # hook -> value, padding zeroed
    pre_cap: Any = None      # the logits before a final soft-cap (laid out as ``logits``), if known

    def last_logits(self, back: int = 0, pre_cap: bool = False) -> Any:
        """Each row's logits at its last position (``back`` positions before it); with
        ``pre_cap``, before the model's final logit soft-cap."""
        import torch

        logits = self.pre_cap if pre_cap else self.logits
        if logits is None:     # pragma: no cover - _plan refuses it
            raise CircuitsError("the pre-cap logits were not computed in this forward")
        rows = torch.arange(logits.shape[0])
        return logits[rows, (self.logit_lengths - 1 - back).to(logits.device)]


def _kind(name: str) -> str:
    """Which extractor computes ``name`` from a batch."""
    if H.is_attn_cache(name):
        return "hook"
    if name == H.LOGITS_LAST:
        return "logits_last"
    if name == H.LOGITS_LAST_PRE_CAP:
        return "pre_cap_last"
    if name.startswith(H.LOGPROBS_LAST):
        return "logprobs_last"
    if name == H.TOKEN_LOSS:
        return "token_loss"
    if name.endswith(H.AT_LAST):
        return "at_last"
    return "hook"


def _extract_logits_last(name: str, b: _Batch, width_all: int) -> Any:
    return b.last_logits().detach().to("cpu")


def _extract_pre_cap_last(name: str, b: _Batch, width_all: int) -> Any:
    return b.last_logits(pre_cap=True).detach().to("cpu")


def _extract_logprobs_last(name: str, b: _Batch, width_all: int) -> Any:
    import torch

    at = b.last_logits(H.logprob_back(name)).double().log_softmax(-1)
    return at[:, torch.tensor(H.logprob_ids(name), device=at.device)].detach().to("cpu")


def _extract_token_loss(name: str, b: _Batch, width_all: int) -> Any:
    import torch

    logp = b.logits[:, :-1].float().log_softmax(-1)
    nll = -logp.gather(-1, b.toks[:, 1:].unsqueeze(-1).to(logp.device)).squeeze(-1).to("cpu")
    mask = torch.arange(b.width - 1).unsqueeze(0) < (b.lengths - 1).unsqueeze(1)
    return _pad_to(nll * mask, width_all - 1)


def _extract_at_last(name: str, b: _Batch, width_all: int) -> Any:
    import torch

    base = H.base_name(name)
    value = _at_last(b.grabbed[base], b.lengths, base)
    if H.position_dims(base) == (2, 3):    # [batch, head, k_pos]
        value = torch.nn.functional.pad(value, (0, width_all - value.shape[-1]))
    return value


def _extract_hook(name: str, b: _Batch, width_all: int) -> Any:
    return _pad_to(b.grabbed[name], width_all, name)


# From pseudo-hook (or hook form) to what computes it from one batch.
_EXTRACTORS: dict[str, Callable[[str, _Batch, int], Any]] = {
    "logits_last": _extract_logits_last,
    "pre_cap_last": _extract_pre_cap_last,
    "logprobs_last": _extract_logprobs_last,
    "token_loss": _extract_token_loss,
    "at_last": _extract_at_last,
    "hook": _extract_hook,
}


@contextlib.contextmanager
def _skipping_blocks(model: Any, start: int, skip_unembed: bool = False, resid: Any = None) -> Iterator[Any]:
    """Skip the computation of blocks ``0..start-1`` during a resumed forward (and of the
    unembedding when no logits are wanted); yields the unembedding's stand-in (its ``seen``
    is the final residual that reached it), or None.

    TransformerLens's ``start_at_layer`` swaps the given residual in at block ``start``
    but still computes every earlier block and throws the result away. Their layers
    are replaced by a pass-through for the duration of the call (no hooks are requested
    there), which makes a resumed forward cost only the blocks it needs. ``resid`` (the
    residual entering block ``start``) is also swapped in here, before the block runs: not
    every block of the bridge does it (BLOOM's does not), and the model may have changed it
    on the way (BLOOM normalizes its input embeddings). The result is checked against a full
    forward in tests/unit/test_interventions.py and on every family in tests/unit/test_suffix.py.
    """
    if not start and not skip_unembed and resid is None:
        yield None
        return
    import torch
    import torch.nn as nn

    class Skip(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.width = width

        def forward(self, hidden_states: Any = None, *args: Any, **kwargs: Any) -> Any:
            self.seen = hidden_states
            # what the layer returns: the hidden states alone, or a tuple led by them (BLOOM)
            return hidden_states if not self.width else (hidden_states,) + (None,) * (self.width - 1)

    def swap_in(module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if args and isinstance(args[0], torch.Tensor):
            return (to_device_of(resid, args[0], args[0].dtype),) + tuple(args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return args, {**kwargs, "hidden_states": to_device_of(resid, kwargs["hidden_states"],
                                                                  kwargs["hidden_states"].dtype)}
        return args, kwargs

    saved = []
    handle = None
    skipped_unembed = None
    try:
        for block in list(model.blocks)[:start]:
            saved.append((block, block.original_component))
            block.add_module("_original_component", Skip(_tuple_width(type(block.original_component))))
        if resid is not None:
            handle = model.blocks[start].register_forward_pre_hook(swap_in, with_kwargs=True)
        unembed = getattr(model, H.UNEMBED, None)
        if skip_unembed and unembed is not None and unembed.original_component is not None:
            saved.append((unembed, unembed.original_component))
            skipped_unembed = Skip(0)
            unembed.add_module("_original_component", skipped_unembed)
        yield skipped_unembed
    finally:
        if handle is not None:
            handle.remove()
        for block, original in saved:
            block.add_module("_original_component", original)


@contextlib.contextmanager
def unembedding_skipped(model: Any) -> Iterator[Any]:
    """Inside the block, the model's forward skips its unembedding (what the store does when it
    reads the last position's logits alone): yields the unembedding's stand-in, whose ``seen``
    after a forward is the normalized final residual that reached it (graph included, when the
    forward records one), or None where the model has no unembedding module to skip.
    :func:`unembed_rows` turns rows of it into logits."""
    with _skipping_blocks(model, 0, skip_unembed=True) as skipped:
        yield skipped


def unembed_rows(model: Any, normalized: Any) -> Any:
    """Logits from rows of the normalized final residual ``normalized`` ``[..., d_model]``, as the
    model's forward computes them: its unembedding module's own code, then its final logit
    soft-cap if it has one."""
    u = _unembed(model)
    return _soft_cap(model, u(to_device_of(normalized, u)))


def _refuse_mixed_dtypes(model: Any, e: RuntimeError) -> None:
    """A half-precision forward that failed on tensors of two dtypes: the model's own code
    mixes float32 into it (TransformerLens's OLMo-2 attention applies OLMo-2's float32 rotary
    embeddings without casting back). Raised as a project error that says what to do."""
    import torch

    dtype = getattr(model.cfg, "dtype", torch.float32)
    if dtype not in (torch.float16, torch.bfloat16) or "dtype" not in str(e):
        return
    from importlib.metadata import version

    from .architectures import architecture_name

    name = str(dtype).replace("torch.", "")
    raise CircuitsError(
        f"{architecture_name(model)} does not run in {name} under TransformerLens {version('transformer_lens')}: its forward "
        f"mixes float32 and {name} tensors ({str(e)[:160]}); load it in float32 (dtype=\"float32\", "
        "--circuits-dtype float32)") from e


@functools.lru_cache(maxsize=64)
def _tuple_width(layer_class: type) -> int:
    """How many items a model layer's ``forward`` returns when it returns a tuple led by the
    hidden states (BLOOM's ``return output, attn_weights``), else 0 (the hidden states alone,
    or its source cannot be read), read from its ``return`` statements."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(layer_class.forward)))
    except (OSError, TypeError, SyntaxError):
        return 0
    widths = {len(n.value.elts) for n in ast.walk(tree)
              if isinstance(n, ast.Return) and isinstance(n.value, ast.Tuple)}
    return max(widths) if widths else 0


def _unembed(model: Any) -> Any:
    """The unembedding as a function of the normalized final residual (what the bridge's
    unembed module computes, hooks aside)."""
    unembed = getattr(model, H.UNEMBED, None)
    if unembed is None or getattr(unembed, "original_component", None) is None:  # pragma: no cover
        raise CircuitsError("this model has no unembedding module the store can apply by itself")
    return unembed.original_component


def final_logit_softcap(model: Any) -> float | None:
    """The cap of the model's final logit soft-capping (``logits = cap * tanh(logits / cap)``,
    Gemma-2), or None when its logits are not capped."""
    cap = getattr(getattr(model, "cfg", None), "output_logits_soft_cap", None)
    if cap is None:
        config = getattr(getattr(model, "original_model", None), "config", None)
        text = getattr(config, "get_text_config", None)
        config = text() if callable(text) else config
        cap = getattr(config, "final_logit_softcapping", None)
    try:
        cap = float(cap) if cap is not None else None
    except (TypeError, ValueError):
        return None
    return cap if cap is not None and cap > 0 else None


def _soft_cap(model: Any, logits: Any) -> Any:
    """``logits`` as the model's forward caps them (unchanged without a cap), in the same
    order of operations as the model's own forward."""
    import torch

    cap = final_logit_softcap(model)
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


def _at_last(t: Any, lengths: Any, name: str) -> Any:
    """Each row's value at its last real position (query position for patterns)."""
    import torch

    rows = torch.arange(t.shape[0])
    if H.position_dims(name) == (2, 3):
        return t[rows, :, lengths - 1]          # [batch, head, k_pos]
    return t[rows, lengths - 1]


def _zero_padding(t: Any, lengths: Any, name: str) -> Any:
    """Zero every entry at a padded position, so values never depend on the batch they ran in."""
    import torch

    dims = H.position_dims(name)
    if t.dim() <= max(dims):
        return t
    for d in dims:        # each product is a new tensor: ``t`` (the model's own) is never written
        pos = torch.arange(t.shape[d])
        real = pos.unsqueeze(0) < lengths.unsqueeze(1)           # [batch, width]
        shape = [t.shape[0]] + [1] * (t.dim() - 1)
        shape[d] = t.shape[d]
        t = t * real.reshape(shape).to(t.dtype)
    return t


def _pad_to(t: Any, width: int, name: str = "") -> Any:
    """Right-pad the position axes with zeros so batches of different widths concatenate.

    Positions are dim 1, except attention patterns/scores ``[batch, head, q, k]``.
    """
    import torch.nn.functional as F

    dims = H.position_dims(name)
    if t.dim() <= max(dims):
        return t
    pad: list[int] = []
    for d in reversed(range(1, t.dim())):
        pad += [0, width - t.shape[d]] if d in dims else [0, 0]
    return F.pad(t, pad) if any(pad) else t


class _Recorder:
    """Stands for a key-value cache during a clean forward: keeps what each attention
    layer computes (``[batch, kv_head, pos, d_head]``, stored as ``[batch, pos, kv_head,
    d_head]``) and hands it back unchanged."""

    def __init__(self, into: dict[int, tuple[Any, Any]]) -> None:
        self.into = into

    def update(self, k: Any, v: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        self.into[int(layer_idx)] = (k.detach().transpose(1, 2).to("cpu"), v.detach().transpose(1, 2).to("cpu"))
        return k, v


class _StackedPrompts:
    """``base`` repeated ``copies`` times, as the store's forward reads a prompt set (rows
    ``k * n + i`` are prompt ``i`` of copy ``k``); the clean run is ``base``'s."""

    def __init__(self, base: Any, copies: int) -> None:
        self.base = base
        self.name = f"{base.name} x{copies}"
        self.lengths = list(base.lengths) * copies
        self.tokens = base.tokens.repeat(copies, 1)

    def __len__(self) -> int:
        return len(self.lengths)


@dataclass(frozen=True)
class _Stacked:
    """Several interventions over :class:`_StackedPrompts`: copy ``k`` of the prompts is run
    under ``items[k]`` (each gets its own rows, in its own prompts' numbering)."""

    items: tuple[Any, ...]
    n: int

    @property
    def key(self) -> str:
        return "stacked[" + "; ".join(i.key for i in self.items) + "]"

    @property
    def layer(self) -> int:
        return min(i.layer for i in self.items)

    def check(self, model: Any, prompts: Any) -> None:
        for i in self.items:
            i.check(model, prompts.base)

    def first_positions(self, model: Any, prompts: Any) -> Any:
        import torch

        return torch.cat([torch.as_tensor(i.first_positions(model, prompts.base)).reshape(-1).long()
                          for i in self.items])

    def fwd_hooks(self, model: Any, prompts: Any, index: Any, store: Any, offset: Any = 0) -> list[tuple[str, Any]]:
        import torch

        index = torch.as_tensor(index).reshape(-1)
        offsets = torch.as_tensor(offset).reshape(-1).long().expand(len(index))
        copy = index // self.n
        parts: dict[str, list[tuple[Any, list[Any]]]] = {}
        for k, item in enumerate(self.items):
            sel = (copy == k).nonzero().reshape(-1)
            if not len(sel):
                continue
            per_name: dict[str, list[Any]] = {}
            for name, fn in item.fwd_hooks(model, prompts.base, index[sel] % self.n, store, offset=offsets[sel]):
                per_name.setdefault(name, []).append(fn)
            for name, fns in per_name.items():
                parts.setdefault(name, []).append((sel, fns))

        def combined(pieces: list[tuple[Any, list[Any]]]) -> Callable[..., Any]:
            def hook(t: Any, hook: Any = None) -> Any:
                out = t.clone()
                for sel, fns in pieces:
                    x = t[sel.to(t.device)]
                    for fn in fns:
                        r = fn(x, hook=hook)
                        x = r if r is not None else x
                    out[sel.to(t.device)] = x
                return out
            return hook

        return [(name, combined(pieces)) for name, pieces in parts.items()]


def _fired(fn: Callable[..., Any], name: str, fired: set[str]) -> Callable[..., Any]:
    """``fn``, noting in ``fired`` that the hook ``name`` ran."""
    def hook(t: Any, hook: Any = None) -> Any:
        fired.add(name)
        return fn(t, hook=hook)
    return hook


class _Prefix:
    """Stands for a key-value cache during a suffix forward. Row ``i`` runs positions
    ``starts[i]..starts[i]+run-1``; its attention reads, before them, the clean run's keys
    and values for positions ``0..starts[i]-1``, placed right-aligned after
    ``max(starts) - starts[i]`` masked slots, so rows that start at different positions
    share one forward. :meth:`mask` (``[b, 1, run, max(starts) + run]``, additive: 0 =
    attend, the dtype's lowest value = not) hides those slots, keeps the run positions
    causal and, for a layer with a sliding window of ``w`` tokens (``windows[l]``), hides
    the keys ``w`` or more positions before each query, as the model's own mask does (a key
    at position ``k`` is seen from ``q`` when ``q - w < k <= q``).

    Position-dependent attention biases that depend on the key position alone (ALiBi) are
    unchanged up to a constant per row, which the softmax removes: the slots are laid out
    in order of position, one slot per position."""

    def __init__(self, clean: dict[int, tuple[Any, Any]], starts: Any, run: int, device: Any,
                 windows: Sequence[int | None] = (), dtype: Any = None) -> None:
        import torch

        b = starts.shape[0]
        width = int(starts.max())
        slot = torch.arange(width).unsqueeze(0)                          # [1, P]
        src = slot - (width - starts).unsqueeze(1)                       # [b, P]: clean position or < 0
        valid = src >= 0
        rows = torch.arange(b).unsqueeze(1)
        self.prefix: dict[int, tuple[Any, Any]] = {}
        for l, (k, v) in clean.items():                                  # [b, pos, kv_head, d_head]
            def place(t: Any) -> Any:
                got = t[rows, src.clamp(min=0)] * valid.reshape(b, width, 1, 1).to(t.dtype)
                return got.transpose(1, 2).to(device)                    # [b, kv_head, P, d_head]
            self.prefix[l] = (place(k), place(v))
        query = starts.unsqueeze(1) + torch.arange(run).unsqueeze(0)     # [b, run]: absolute positions
        keys = torch.cat([src, query], 1)                                # [b, P + run]
        key_ok = torch.cat([valid, torch.ones(b, run, dtype=torch.bool)], 1)
        self._seen = key_ok.unsqueeze(1) & (keys.unsqueeze(1) <= query.unsqueeze(2))   # [b, run, P + run]
        self._distance = query.unsqueeze(2) - keys.unsqueeze(1)
        self._windows = {l: w for l, w in enumerate(windows)}
        self._dtype = dtype if dtype is not None else torch.float32
        self._device = device
        self._masks: dict[int | None, Any] = {}
        self._slots = width + run
        self._alibi: Any = None

    def alibi(self, given: Any, build: Callable[..., Any] | None) -> Any:
        """An ALiBi bias (``[b * heads, 1, keys]``, a slope per head times the key's slot) laid
        out over the cached slots and the run positions, in place of ``given``, which the
        model made for the run positions alone. The slots are in order of position (a prefix
        row starts ``max(starts) - starts[i]`` slots late: a constant per row, which the
        softmax removes). ``build``: the model's own ``build_alibi_tensor(mask, heads, dtype)``."""
        import torch

        if self._alibi is None:
            if build is None:
                raise CircuitsError("this model passes an ALiBi bias to its attention, but its module has no "
                                    "build_alibi_tensor to lay one out over cached positions")
            b = int(self._seen.shape[0])
            heads = given.shape[0] // b
            ones = torch.ones(b, self._slots, dtype=torch.long, device=given.device)
            self._alibi = build(ones, heads, given.dtype)
        return self._alibi.to(given.device)

    def mask(self, layer: int) -> Any:
        """The additive attention mask of ``layer`` (one per window size, made once)."""
        import torch

        window = self._windows.get(int(layer))
        if window not in self._masks:
            seen = self._seen if window is None else self._seen & (self._distance < window)
            low = torch.finfo(self._dtype).min
            mask = torch.zeros(seen.shape, dtype=self._dtype).masked_fill(~seen, low)
            self._masks[window] = mask.unsqueeze(1).to(self._device)
        return self._masks[window]

    def update(self, k: Any, v: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        import torch

        pk, pv = self.prefix[int(layer_idx)]
        return torch.cat([pk.to(k.device, k.dtype), k], 2), torch.cat([pv.to(v.device, v.dtype), v], 2)


# The names an attention module may take its key-value cache under (TransformerLens's own
# attention reads ``past_key_values``; Hugging Face's modules, which some bridges call as
# they are, name it ``cache`` (transformers 5), ``past_key_value`` or ``layer_past``).
_CACHE_ALIASES = ("past_key_values", "cache", "past_key_value", "layer_past")


_CACHE_ARGUMENTS: dict[Any, tuple[str, ...]] = {}   # a forward function -> its cache keywords


def _cache_arguments(attn: Any) -> tuple[str, ...]:
    """The keyword names under which ``attn`` (a bridge attention component) and the Hugging
    Face module it wraps read a key-value cache (read from the module's ``forward`` signature
    once per function: ``inspect.signature`` was a millisecond of every forward)."""
    import inspect

    hf = getattr(attn, "original_component", None)
    fn = getattr(getattr(hf, "forward", None), "__func__", None)
    if fn is not None and fn in _CACHE_ARGUMENTS:
        return _CACHE_ARGUMENTS[fn]
    names = ["past_key_values"]
    try:
        params = inspect.signature(hf.forward).parameters if hf is not None else {}
    except (TypeError, ValueError):
        params = {}
    names += [a for a in _CACHE_ALIASES[1:] if a in params]
    if fn is not None:
        _CACHE_ARGUMENTS[fn] = tuple(names)
    return tuple(names)


def sliding_windows(model: Any) -> tuple[int | None, ...] | None:
    """Per block, the sliding window (in tokens) its attention is restricted to, None for
    full causal attention; None for the whole model when its layers mix in another kind of
    attention this store cannot lay out (its suffix forwards then run every position).

    Read from the Hugging Face config the model was loaded from: ``sliding_window`` with
    ``layer_types`` ("sliding_attention" / "full_attention" per layer: Gemma-2/3, Qwen2),
    or ``sliding_window`` alone for every layer (Mistral, Mixtral, Phi-3)."""
    n = int(model.cfg.n_layers)
    config = getattr(getattr(model, "original_model", None), "config", None)
    text = getattr(config, "get_text_config", None)
    config = text() if callable(text) else config
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None:
        types = list(types)
        if len(types) != n or any(t not in ("full_attention", "sliding_attention") for t in types):
            return None
        if "sliding_attention" in types and not (isinstance(window, int) and window > 0):
            return None
        return tuple(window if t == "sliding_attention" else None for t in types)
    if window is None:
        return (None,) * n
    if not isinstance(window, int) or window <= 0:
        return None
    return (window,) * n


@contextlib.contextmanager
def _attention_cache(model: Any, layers: Sequence[int], cache: Any) -> Iterator[None]:
    """Hand ``cache`` to the attention of ``layers`` as their key-value cache for one forward.

    The attention of a ``TransformerBridge`` (compatibility mode) extends its keys and values
    through ``cache.update(k, v, layer)``, under whatever name its module takes the cache
    (:func:`_cache_arguments`). A recording cache (:class:`_Recorder`) leaves the attention
    mask the model made (causal, sliding windows) as it is; a suffix forward's
    (:class:`_Prefix`) replaces it with its own, laid out over the cached positions. Checked
    against full forwards for every intervention kind and position choice on every family
    of :mod:`pytest_circuits.architectures` in tests/unit/test_suffix.py."""
    if cache is None or not layers:
        yield
        return

    import torch

    build_alibi = getattr(sys.modules.get(type(getattr(model, "original_model", None)).__module__),
                          "build_alibi_tensor", None)

    def pre_for(layer: int, names: tuple[str, ...]) -> Callable[..., tuple[Any, dict[str, Any]]]:
        def pre(module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            kwargs = dict(kwargs)
            for alias in _CACHE_ALIASES:
                kwargs.pop(alias, None)
            for name in names:
                kwargs[name] = cache
            masks = getattr(cache, "mask", None)
            if masks is not None:
                mask = masks(layer)
                at = first_tensor(args, kwargs)
                # the layer's own device: under a device map each layer may be on another one
                kwargs["attention_mask"] = mask if at is None else to_device_of(mask, at)
                if isinstance(kwargs.get("alibi"), torch.Tensor):
                    kwargs["alibi"] = cache.alibi(kwargs["alibi"], build_alibi)
            return args, kwargs
        return pre

    handles = []
    try:
        for l in layers:
            attn = model.blocks[l].attn
            handles.append(attn.register_forward_pre_hook(pre_for(l, _cache_arguments(attn)), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _unpack(value: Any, clean: Any, rows: Any, starts: Any, width: int, name: str) -> Any:
    """A suffix forward's ``value`` (row ``i``'s axis-1 index ``j`` is position
    ``starts[i] + j``) laid out over whole prompts ``[b, width, ...]``: the positions before
    each row's start are the clean run's (``clean``, ``[n, ...]``) or zeros when ``clean`` is
    None. Attention patterns (one start per batch) keep their key axis."""
    import torch

    b = value.shape[0]
    if H.position_dims(name) != (1,):
        s = int(starts[0])
        if clean is not None:
            head = clean[rows][:, :, :s, :value.shape[3]].to(value.dtype)
        else:
            head = value.new_zeros(value.shape[:2] + (s,) + value.shape[3:])
        return torch.cat([head, value], 2)
    if clean is not None:
        out = clean[rows][:, :width].to(value.dtype).clone()
    else:
        out = value.new_zeros((b, width) + tuple(value.shape[2:]))
    at = starts.unsqueeze(1) + torch.arange(value.shape[1]).unsqueeze(0)      # [b, run]
    keep = at < width
    out[torch.arange(b).unsqueeze(1).expand_as(at)[keep], at[keep]] = value[keep]
    return out
