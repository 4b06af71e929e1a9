"""pytest-circuits against naive TransformerLens scripts, cold, in one process.

    python bench/naive_compare.py [--model smollm2-135m] [--n N] [--only a|b|c]

Three claims, each computed twice on the same ``TransformerBridge`` object and the same
tokens: once by a script written the way a researcher would (hooks through
``model.run_with_hooks`` / ``model.run_with_cache(names_filter=...)``, one forward per
ablation, no cache), once by pytest-circuits from a fresh memory-only
``ActivationStore()`` (cold: what a user starts with). Loading the model and one
untimed two-token forward (to warm torch's kernels for both sides alike) are shared;
nothing of what is measured is warmed up.

(a) self-repair sweep over every attention layer: for each layer L, resample-ablate
    ``attn L`` at each prompt's last position (prompt i gets the attention output of
    prompt pi(i), pi = ``interventions.derangement(n, seed)``) and decompose the change
    of the answer's centred logit (``effects.sweep(..., kind="resample")``). Compared:
    the total effect per prompt and every writer's change of direct effect (clean
    final-norm scale frozen) per prompt. Prompts: top-1 facts (``--facts``), n=64.
(b) circuit minimality (``circuits.minimality``, the greater-than claim's check): with
    every head and MLP outside the circuit patched from the '01' run at every position,
    the cost of removing each circuit component, ``(m(C) - m(C minus v)) / (m(M) -
    m(empty))`` with m the probability difference (PD). Compared: every component's
    per-prompt cost contribution. Prompts: ``tasks.greater_than(n=100, seed=0)``.
(c) layer-scan probe (``probing.scan_layers``, k=1, mean pooling of ``mlp.hook_post``):
    French vs the rest on ``probing_data.language()``. The naive script runs one
    ``run_with_cache(names_filter=<that layer's hook>)`` per layer (the usual way; no
    ``stop_at_layer``), or with ``--scan all-layers`` one ``run_with_cache`` whose
    names_filter lists every layer's hook, and fits with the same
    ``probing.probe_features``. Compared: the
    pooled features, the held-out F1 and the chosen neuron of every layer.

With ``--batch N`` both sides run N rows per forward, so the comparison is of the work, not
of the batching; by default the naive script runs 32 rows per forward (the usual choice) and
the store sizes its forwards by its token budget (what a user gets). Printed per claim: wall seconds of each
side, the speed-up (naive / pytest-circuits), the largest |difference| between their
results, forwards and block x position passes on each side (naive: blocks run x rows x
padded width of each batch, the way the store counts), and the store's
``floor_block_positions``. Exit status 1 when a difference exceeds ``--tolerance``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from pytest_circuits import ActivationStore, load_model, tasks
from pytest_circuits.components import MLP, Attn, Head
from pytest_circuits.errors import CircuitsError, bad
from pytest_circuits.interventions import derangement
from pytest_circuits.prompts import PromptSet
from pytest_circuits.tasks import probing_data
from pytest_circuits.techniques import circuits as C
from pytest_circuits.techniques import effects as E
from pytest_circuits.techniques import probing

ROOT = Path(__file__).resolve().parents[1]
FACTS = ROOT / "claims/smollm2/data/facts_top1.jsonl"
CIRCUIT = ROOT / "claims/smollm2/data/greater_than_circuit.json"
DEFAULT_N = {"a": 64, "b": 100, "c": None}     # c: every text of the probing task
TARGET_SPEEDUP = 5.0                            # issue #12: pytest-circuits >= 5x faster, cold


# ----------------------------------------------------------------------------- accounting
NAIVE_BATCH = 32     # the naive script's rows per forward when --batch is not given


@dataclass
class Naive:
    """Runs the naive script's forwards batch by batch and counts them as the store does."""

    model: Any
    batch: int
    forwards: int = 0
    block_prompts: int = 0
    block_positions: int = 0

    def batches(self, ps: PromptSet) -> Any:
        """``(rows, tokens [b, width], lengths [b])`` per batch, width = the batch's longest prompt."""
        for begin in range(0, len(ps), self.batch):
            end = min(len(ps), begin + self.batch)
            lengths = torch.tensor(ps.lengths[begin:end])
            width = int(lengths.max())
            yield torch.arange(begin, end), ps.tokens[begin:end, :width].to(self.model.cfg.device), lengths

    def count(self, toks: Any) -> None:
        b, width = toks.shape
        L = self.model.cfg.n_layers           # every forward here runs the whole model
        self.forwards += 1
        self.block_prompts += L * b
        self.block_positions += L * b * width


@dataclass
class Row:
    claim: str
    naive_s: float
    tool_s: float
    diff: float
    naive: Naive
    counters: Any
    notes: list[str] = field(default_factory=list)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _maxabs(a: Any, b: Any) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape:
        raise CircuitsError(bad("result shapes", f"{tuple(a.shape)} vs {tuple(b.shape)}", "equal shapes"))
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.inf                     # a non-finite result is never "equal"
    return float((a - b).abs().max()) if a.numel() else 0.0


def _last(t: Any, lengths: Any) -> Any:
    """``t[i, lengths[i] - 1]`` for each row (float64, CPU)."""
    rows = torch.arange(t.shape[0])
    return t[rows, (lengths - 1).to(t.device)].detach().to("cpu", torch.float64)


def _centred(logits_last: Any, ids: Any) -> Any:
    return logits_last[torch.arange(logits_last.shape[0]), ids] - logits_last.mean(-1)


# ----------------------------------------------------------------------------- (a) sweep
def naive_sweep(model: Any, ps: PromptSet, seed: int, run: Naive) -> tuple[Any, Any]:
    """Total effect ``[layers, n]`` and ΔDE of every writer ``[layers, C, n]`` of resample-ablating
    each attention layer at the last position, with plain hooks."""
    cfg = model.cfg
    L, n = cfg.n_layers, len(ps)
    ids = torch.tensor(ps.answer_ids)
    W_U = model.W_U.detach().to("cpu", torch.float64)
    w = (W_U[:, ids] - W_U.mean(1, keepdim=True)).T                      # [n, d_model]
    W_O = model.W_O.detach().to("cpu", torch.float64)                     # [L, H, d_head, d_model]
    try:
        b_O = model.b_O.detach().to("cpu", torch.float64)
    except (AttributeError, RuntimeError):
        b_O = None                                                        # bias-free attention output
    pos = "hook_pos_embed" if getattr(cfg, "positional_embedding_type", "") == "standard" else None
    names = ["hook_embed", "ln_final.hook_scale"] + [f"blocks.{l}.attn.hook_z" for l in range(L)] \
        + [f"blocks.{l}.hook_mlp_out" for l in range(L)] + ([pos] if pos else [])
    perm = derangement(n, seed)

    def writers(acts: dict[str, Any]) -> tuple[Any, Any]:
        """Every writer's vector at the last position ``[C + E, n, d]`` (components, then
        constants: positional embedding, b_O of each layer) and the final-norm scale ``[n]``."""
        vecs = [acts["hook_embed"]]
        for l in range(L):
            vecs += list(torch.einsum("nhd,hdm->hnm", acts[f"blocks.{l}.attn.hook_z"], W_O[l]))
            vecs.append(acts[f"blocks.{l}.hook_mlp_out"])
        if pos:
            vecs.append(acts[pos])
        if b_O is not None:
            vecs += [b_O[l].expand(n, -1) for l in range(L)]
        return torch.stack(vecs), acts["ln_final.hook_scale"].reshape(-1)

    def clean_run() -> tuple[dict[str, Any], Any]:
        parts: dict[str, list[Any]] = {nm: [] for nm in names}
        logits = []
        for rows, toks, lengths in run.batches(ps):
            lg, cache = model.run_with_cache(toks, names_filter=names)
            run.count(toks)
            logits.append(_last(lg, lengths))
            for nm in names:
                parts[nm].append(_last(cache[nm], lengths))
        return {nm: torch.cat(v) for nm, v in parts.items()}, torch.cat(logits)

    def ablated_run(layer: int, source: Any) -> tuple[dict[str, Any], Any]:
        parts: dict[str, list[Any]] = {nm: [] for nm in names}
        logits = []
        for rows, toks, lengths in run.batches(ps):
            got: dict[str, Any] = {}
            last = (lengths - 1).to(toks.device)
            r = torch.arange(toks.shape[0])
            src = source[perm[rows]]                                      # [b, H, d_head]

            def resample(z: Any, hook: Any = None) -> Any:
                z = z.clone()
                z[r, last] = src.to(z.device, z.dtype)
                return z

            def save(t: Any, hook: Any) -> None:
                got[hook.name] = _last(t, lengths)

            hooks = [(f"blocks.{layer}.attn.hook_z", resample)] + [(nm, save) for nm in names]
            lg = model.run_with_hooks(toks, fwd_hooks=hooks)
            run.count(toks)
            logits.append(_last(lg, lengths))
            for nm in names:
                parts[nm].append(got[nm])
        return {nm: torch.cat(v) for nm, v in parts.items()}, torch.cat(logits)

    clean, clean_logits = clean_run()
    vecs, scale = writers(clean)
    de_clean = (vecs * w).sum(-1) / scale                                 # [C + E, n]
    n_comp = len(E.writers(model))
    totals, deltas = [], []
    for layer in range(L):
        acts, logits = ablated_run(layer, clean[f"blocks.{layer}.attn.hook_z"])
        vecs_a, _ = writers(acts)
        de_frozen = (vecs_a * w).sum(-1) / scale                          # clean scale frozen
        deltas.append((de_frozen - de_clean)[:n_comp])
        totals.append(_centred(logits, ids) - _centred(clean_logits, ids))
    return torch.stack(totals), torch.stack(deltas)


def claim_a(model: Any, n: int, args: Any) -> Row:
    ps = facts(model, n, args.facts)
    L = model.cfg.n_layers
    naive = Naive(model, args.batch or NAIVE_BATCH)
    t_naive, (tot_n, delta_n) = _timed(lambda: naive_sweep(model, ps, args.seed, naive))
    store = ActivationStore(batch_size=args.batch)   # None: the token budget alone
    t_tool, srs = _timed(lambda: E.sweep(model, ps, [Attn(l) for l in range(L)], kind="resample",
                                         seed=args.seed, activations=store))
    d_total = max(_maxabs(sr.total, tot_n[l]) for l, sr in enumerate(srs))
    d_delta = max(_maxabs(sr.delta_de, delta_n[l]) for l, sr in enumerate(srs))
    return Row(f"(a) self-repair sweep, {L} attn layers x {n} facts", t_naive, t_tool, max(d_total, d_delta),
               naive, store.counters,
               [f"(a) max |diff|: total effect {d_total:.2e} (naive: read from the logits; pytest-circuits: "
                f"its decomposition), ΔDE of every writer {d_delta:.2e}"])


def facts(model: Any, n: int, path: Path) -> PromptSet:
    ps = tasks.facts(model, path=path)
    if len(ps) < max(n, 2):
        raise CircuitsError(bad("--n", n, f"at most the {len(ps)} facts of {path} that this tokenizer "
                                          "reads with single-token answers (and at least 2)"))
    return ps.subset(range(n), name="bench")


# ----------------------------------------------------------------------------- (b) minimality
def naive_minimality(model: Any, task: Any, circuit: tuple, run: Naive) -> dict[Any, Any]:
    """Per-prompt cost contributions ``num_i / mean(den)`` of removing each circuit component,
    with every removed head/MLP patched from the corrupted ('01') prompt at every position."""
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    every = [Head(l, h) for l in range(L) for h in range(H)] + [MLP(l) for l in range(L)]
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)] + [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    digits = torch.tensor(task.digit_ids)
    outside = [c for c in every if c not in set(circuit)]
    removals = {"full": [], "empty": every, "kept": outside}
    for v in circuit:
        removals[v] = outside + [v]

    def patch_hooks(remove: list, corr: Any) -> list:
        heads: dict[int, list[int]] = {}
        hooks = []
        for c in remove:
            if isinstance(c, Head):
                heads.setdefault(c.layer, []).append(c.head)
            else:
                name = f"blocks.{c.layer}.hook_mlp_out"
                hooks.append((name, lambda t, hook, src=corr[name]: src.to(t.dtype)))
        for l, hs in heads.items():
            name = f"blocks.{l}.attn.hook_z"

            def patch(z: Any, hook: Any, src: Any = corr[name], hs: list = hs) -> Any:
                z = z.clone()
                z[:, :, hs] = src[:, :, hs].to(z.dtype)
                return z
            hooks.append((name, patch))
        return hooks

    def probs(clean: PromptSet, corrupted: PromptSet) -> dict[Any, Any]:
        """Probabilities of the digit tokens at the last position ``[n, D]`` under each removal."""
        out: dict[Any, list[Any]] = {k: [] for k in removals}
        batches = zip(run.batches(clean), run.batches(corrupted))
        for (rows, toks, lengths), (_, ctoks, clengths) in batches:
            if not torch.equal(lengths, clengths):
                raise CircuitsError("the corrupted prompts are not aligned with the clean ones")
            _, corr = model.run_with_cache(ctoks, names_filter=names)
            run.count(ctoks)
            for key, remove in removals.items():
                lg = model.run_with_hooks(toks, fwd_hooks=patch_hooks(remove, corr))
                run.count(toks)
                out[key].append(_last(lg, lengths).softmax(-1)[:, digits])
        return {k: torch.cat(v) for k, v in out.items()}

    p1 = probs(task.prompts, task.prompts.corrupted)
    yy = torch.tensor(task.yy)
    if task.mode == "two_digit":
        grid = torch.arange(100).unsqueeze(0)
        pd = {k: (p * (grid > yy[:, None])).sum(1) - (p * (grid <= yy[:, None])).sum(1) for k, p in p1.items()}
    else:
        p2 = probs(task.second, task.second_corrupted)
        a, b = (yy // 10)[:, None], (yy % 10)[:, None]
        d = torch.arange(10)[None]
        pd = {}
        for k in removals:
            pa = p1[k].gather(1, a).squeeze(1)
            above = (p1[k] * (d > a)).sum(1) + pa * (p2[k] * (d > b)).sum(1)
            below = (p1[k] * (d < a)).sum(1) + pa * (p2[k] * (d <= b)).sum(1)
            pd[k] = above - below
    den = (pd["full"] - pd["empty"]).mean()
    return {v: (pd["kept"] - pd[v]) / den for v in circuit}


def claim_b(model: Any, n: int, args: Any) -> Row:
    task = tasks.greater_than(model, n=n, seed=0, name="greater_than:bench")
    circuit = load_circuit(model, args.circuit)
    naive = Naive(model, args.batch or NAIVE_BATCH)
    t_naive, costs_n = _timed(lambda: naive_minimality(model, task, circuit.components, naive))
    store = ActivationStore(batch_size=args.batch)   # None: the token budget alone
    t_tool, mini = _timed(lambda: C.minimality(model, task, circuit, activations=store))
    diff = max(_maxabs(torch.as_tensor(mini.costs[v].values), costs_n[v]) for v in circuit.components)
    return Row(f"(b) minimality, {len(circuit)} components x {n} greater-than", t_naive, t_tool, diff,
               naive, store.counters,
               [f"(b) max |diff| of the per-prompt cost contributions of all {len(circuit)} components: "
                f"{diff:.2e} (patch from the '01' run at every position; task mode {task.mode!r})"])


def load_circuit(model: Any, spec: str) -> C.Circuit:
    """A circuit from a JSON file (``Circuit.save``) or spelled out (``"L0H1 mlp2"``)."""
    path = Path(spec)
    if path.suffix == ".json":
        if not path.is_file():
            raise CircuitsError(bad("--circuit", spec, "an existing circuit JSON file or spelled components"))
        return C.Circuit.load(model, path)
    circ = C.Circuit.of(model, spec, name="bench circuit")
    if not circ.components:
        raise CircuitsError(bad("--circuit", spec, "at least one head or MLP"))
    return circ


# ----------------------------------------------------------------------------- (c) probe scan
def probe_task(n: int | None, positive: str) -> Any:
    """The probing task; with ``n``, the first whole groups (translations of one sentence stay
    together) holding at least ``n`` texts."""
    task = probing_data.language().binary(positive)
    if n is None:
        return task
    order = list(dict.fromkeys(task.groups))
    keep: set[int] = set()
    for g in order:
        if sum(task.groups.count(x) for x in keep) >= n:
            break
        keep.add(g)
    idx = [i for i, g in enumerate(task.groups) if g in keep]
    return probing_data.BinaryTask(task.name, tuple(task.texts[i] for i in idx),
                                   tuple(task.labels[i] for i in idx), tuple(task.groups[i] for i in idx),
                                   task.positive, task.negative)


def naive_scan(model: Any, task: Any, layers: list[int], seed: int, run: Naive, variant: str
               ) -> tuple[list, dict]:
    """Mean-pooled ``mlp.hook_post`` of each layer (BOS left out), probed with
    ``probing.probe_features``. ``variant``: ``"per-layer"`` runs one ``run_with_cache`` per
    layer (names_filter = that layer's hook); ``"all-layers"`` one per batch for every layer."""
    ps = PromptSet.build(model, list(task.texts), name=task.name)
    bos = model.tokenizer.bos_token_id
    names = {layer: f"blocks.{layer}.mlp.hook_post" for layer in layers}
    pooled: dict[int, list[Any]] = {layer: [] for layer in layers}

    def pool(cache: Any, layer: int, toks: Any, lengths: Any) -> None:
        acts = cache[names[layer]].detach().to("cpu").float()             # [b, width, d_mlp]
        start = (toks[:, 0] == bos).long().cpu() if bos is not None else torch.zeros(len(toks), dtype=torch.long)
        p = torch.arange(acts.shape[1])
        real = (p[None] >= start[:, None]) & (p[None] < lengths[:, None])   # BOS left out
        pooled[layer].append((acts * real[..., None]).sum(1) / real.sum(1, keepdim=True))

    groups = [[layer] for layer in layers] if variant == "per-layer" else [layers]
    for group in groups:
        for rows, toks, lengths in run.batches(ps):
            _, cache = model.run_with_cache(toks, names_filter=[names[layer] for layer in group])
            run.count(toks)
            for layer in group:
                pool(cache, layer, toks, lengths)
    feats = {layer: torch.cat(pooled[layer]) for layer in layers}
    results = [probing.probe_features(feats[layer], list(task.labels), k=1, groups=list(task.groups), seed=seed,
                                      layer=layer, record=False) for layer in layers]
    return sorted(results, key=lambda r: (-r.f1.mean, r.layer)), feats


def claim_c(model: Any, n: int | None, args: Any) -> Row:
    task = probe_task(n, args.probe_positive)
    layers = list(range(model.cfg.n_layers))
    naive = Naive(model, args.batch or NAIVE_BATCH)
    t_naive, (res_n, feats_n) = _timed(lambda: naive_scan(model, task, layers, args.seed, naive, args.scan))
    store = ActivationStore(batch_size=args.batch)   # None: the token budget alone
    t_tool, res_t = _timed(lambda: probing.scan_layers(model, task, layers=layers, k=1, seed=args.seed,
                                                       activations=store, record=False))
    counters = type(store.counters)(**store.counters.as_dict())    # before the (warm) reads below
    d_feat = max(_maxabs(probing.collect(model, task, layer=l, activations=store).X, feats_n[l]) for l in layers)
    by_n = {r.layer: r for r in res_n}
    d_f1 = max(abs(r.f1.mean - by_n[r.layer].f1.mean) for r in res_t)
    other = [r.layer for r in res_t if r.neurons != by_n[r.layer].neurons]
    how = ("one run_with_cache(names_filter=<that layer's mlp.hook_post>) per layer and batch, whole model "
           "each time" if args.scan == "per-layer" else
           "one run_with_cache(names_filter=<every layer's mlp.hook_post>) per batch")
    notes = [f"(c) naive ({args.scan}): {how}; max |diff| pooled features {d_feat:.2e}, held-out F1 {d_f1:.2e}, "
             f"layers choosing another neuron: {other or 'none'}"]
    diff = max(d_feat, d_f1, math.inf if other else 0.0)
    return Row(f"(c) layer-scan probe, {len(layers)} layers x {len(task)} texts", t_naive, t_tool, diff,
               naive, counters, notes)


# ----------------------------------------------------------------------------- main
def table(rows: list[Row]) -> str:
    head = (f"{'claim':48} {'naive s':>8} {'p-c s':>8} {'speed-up':>8} {'max|diff|':>9} {'fwd naive':>9} "
            f"{'fwd p-c':>8} {'blk*pos naive':>13} {'blk*pos p-c':>12} {'floor p-c':>10}")
    lines = [head]
    for r in rows:
        c = r.counters
        lines.append(f"{r.claim[:48]:48} {r.naive_s:8.2f} {r.tool_s:8.2f} {r.naive_s / r.tool_s:7.2f}x "
                     f"{r.diff:9.1e} {r.naive.forwards:9d} {c.forward_passes:8d} {r.naive.block_positions:13d} "
                     f"{c.block_position_passes:12d} {c.floor_block_positions:10d}")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> Any:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="registry name or checkpoint folder")
    ap.add_argument("--n", type=int, default=None, help="prompts per claim (default: a 64, b 100, c every text)")
    ap.add_argument("--only", choices=("a", "b", "c"), action="append", help="run only this claim (repeatable)")
    ap.add_argument("--batch", type=int, default=None,
                    help="rows per forward, both sides (default: 32 for the naive script, the token budget for the store)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="where the model runs (auto, cpu, cuda)")
    ap.add_argument("--cache-dir", default=None, help="converted-weights cache (default: the project's)")
    ap.add_argument("--facts", type=Path, default=FACTS, help="facts JSONL for (a)")
    ap.add_argument("--circuit", default=str(CIRCUIT), help="circuit JSON or spelled components for (b)")
    ap.add_argument("--scan", choices=("per-layer", "all-layers"), default="per-layer",
                    help="(c) naive variant: one run_with_cache per layer (typical) or one for all layers")
    ap.add_argument("--probe-positive", default="fr", help="language probed against the rest in (c)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest |diff| accepted (exit 1 above)")
    a = ap.parse_args(argv)
    if a.n is not None and a.n < 2:
        raise CircuitsError(bad("--n", a.n, "at least 2 prompts"))
    if a.batch is not None and a.batch < 1:
        raise CircuitsError(bad("--batch", a.batch, "a positive number of rows"))
    return a


@torch.no_grad()   # (not set_grad_enabled(False): main() also runs inside the test process)
def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    model = load_model(a.model, cache_dir=a.cache_dir, device=a.device)
    model(torch.tensor([[0, 0]], device=model.cfg.device))   # untimed, shared: torch's first-call costs
    claims = {"a": claim_a, "b": claim_b, "c": claim_c}
    rows = []
    for key in a.only or list(claims):
        rows.append(claims[key](model, a.n if a.n is not None else DEFAULT_N[key], a))
        print(f"done {rows[-1].claim}: naive {rows[-1].naive_s:.2f} s, pytest-circuits {rows[-1].tool_s:.2f} s",
              flush=True)
    print(f"\nnaive TransformerLens scripts vs pytest-circuits on {a.model}, cold, one process "
          f"(batch {a.batch if a.batch else str(NAIVE_BATCH) + ' naive, the token budget for the store'}, torch threads {torch.get_num_threads()}):")
    print(table(rows))
    for r in rows:
        for note in r.notes:
            print(note)
    print(f"target (issue #12): pytest-circuits >= {TARGET_SPEEDUP:.0f}x faster than the naive script, cold; "
          "blk*pos = blocks x rows x positions run; floor p-c = the store's floor_block_positions (0 where the store does not count them)")
    worst = max(r.diff for r in rows)
    if not worst <= a.tolerance:
        print(f"FAIL: results differ by {worst:.2e} > tolerance {a.tolerance:g}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
