"""Per-forward overhead of attaching hooks (#25): TransformerLens's ``run_with_hooks`` /
``model.hooks()`` against :func:`pytest_circuits.hooks.run` / :class:`~pytest_circuits.hooks.attached`,
timed in one run.

    python bench/forward_overhead.py [--model tiny|smollm2-135m|PATH] [--rows 4] [--width 12]
                                     [--n 10] [--rounds 2] [--sweep-layers 2] [--threads N]

``tiny`` is the tests' 2-layer Llama (built here from its seed). Each round times, on the
loaded model (loading is what a user starts with and is not timed; nothing is run beforehand
to warm the paths up, so the first round pays whatever the process pays the first time:
compare the rounds, and the order of old and new alternates from round to round):

* ``attach``: adding the hooks and removing them, no forward (``--n`` times each);
* ``forward``: ``--n`` forwards of ``--rows`` x ``--width`` random tokens with three hooks (one
  zeroing a head, two reading), old and new interleaved forward by forward; the medians;
* ``sweep``: zero-ablating every head of the first ``--sweep-layers`` layers one at a time,
  the last position's logits of 8 prompts each, through a new memory-only ActivationStore
  (its clean forward, then one forward per head resumed at the head's block): the store's
  own code, with its forwards going through ``run_with_hooks`` (old) or ``hooks.run`` (new).

Checked (the script exits 1 otherwise): the old and new paths give bitwise-identical logits
and hooked values in every forward, and identical sweep results with the same number of
forwards. The machine this runs on may be shared: compare the old/new ratios within a run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pytest_circuits import ActivationStore, load_model
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I
from pytest_circuits.components import Head
from pytest_circuits.prompts import PromptSet

SENTENCES = ["the cat sat on the mat", "John and Mary went to the store", "the dog gave the ball to",
             "a king and a queen went to the city", "the river is", "Mary gave the bag to John",
             "the cat and the dog sat on", "the queen went to the river and"]


def _load(name: str, threads: int | None):
    if threads:
        torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    start = time.perf_counter()
    if name == "tiny":
        from pytest_circuits.testing import make_tiny_checkpoint

        model = load_model(str(make_tiny_checkpoint(tmp / "tiny", seed=0)), cache_dir=tmp / "cache", device="cpu")
    else:
        model = load_model(name, device="cpu")
    return model, time.perf_counter() - start


def _hooks(model, seen: dict):
    L = model.cfg.n_layers

    def zero_head(t, hook):
        t = t.clone()
        t[:, :, 0] = 0
        return t

    def read(key):
        def hook(t, hook):
            seen[key] = t.detach().clone()
        return hook

    return [(H.z(0), zero_head), (H.resid_pre(L - 1), read("resid")), (H.attn_out(min(1, L - 1)), read("attn"))]


def _old_run(model, inp, fwd=(), **kwargs):
    return model.run_with_hooks(inp, fwd_hooks=list(fwd), **kwargs)


def _sweep(model, ps, layers: int):
    store = ActivationStore()
    start = time.perf_counter()
    clean = store.get(model, ps, [H.LOGITS_LAST])[H.LOGITS_LAST]
    out = [clean] + [store.get(model, ps, [H.LOGITS_LAST], I.ablate(model, Head(l, h), "zero"))[H.LOGITS_LAST]
                     for l in range(layers) for h in range(model.cfg.n_heads)]
    return time.perf_counter() - start, out, store.counters.forward_passes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--width", type=int, default=12)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sweep-layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)

    model, load_s = _load(args.model, args.threads)
    cfg = model.cfg
    print(f"model {args.model}: {cfg.n_layers} layers, d_model {cfg.d_model}, {len(model.hook_dict)} hook names; "
          f"loaded in {load_s:.1f} s (not timed below); torch threads {torch.get_num_threads()}")
    toks = torch.randint(1, cfg.d_vocab, (args.rows, args.width), generator=torch.Generator().manual_seed(0))
    ps = PromptSet.build(model, SENTENCES, name="overhead")
    ok = True
    for r in range(args.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        attach = {"old": [], "new": []}
        fwd = {"old": [], "new": []}
        for _ in range(args.n):
            for side in order:
                hooks = _hooks(model, {})
                t = time.perf_counter()
                with (model.hooks(fwd_hooks=hooks) if side == "old" else H.attached(model, hooks)):
                    pass
                attach[side].append(time.perf_counter() - t)
        with torch.no_grad():
            for _ in range(args.n):
                got = {}
                for side in order:
                    seen: dict = {}
                    hooks = _hooks(model, seen)
                    t = time.perf_counter()
                    logits = (_old_run if side == "old" else H.run)(model, toks, hooks)
                    fwd[side].append(time.perf_counter() - t)
                    got[side] = (logits, seen)
                same = torch.equal(got["old"][0], got["new"][0]) and got["old"][1].keys() == got["new"][1].keys() \
                    and all(torch.equal(got["old"][1][k], got["new"][1][k]) for k in got["old"][1])
                ok &= same
        ms = {k: {s: 1e3 * statistics.median(v[s]) for s in v} for k, v in (("attach", attach), ("forward", fwd))}
        print(f"round {r + 1} ({order[0]} first), medians of {args.n}:")
        print(f"  attach+detach 3 hooks: run_with_hooks path {ms['attach']['old']:.3f} ms, hooks.attached "
              f"{ms['attach']['new']:.3f} ms ({ms['attach']['old'] / ms['attach']['new']:.0f}x)")
        print(f"  forward {args.rows}x{args.width} with 3 hooks: run_with_hooks {ms['forward']['old']:.2f} ms, "
              f"hooks.run {ms['forward']['new']:.2f} ms: {ms['forward']['old'] - ms['forward']['new']:+.2f} ms "
              f"per forward ({ms['forward']['new'] / ms['forward']['old']:.3f} of the old time)")
        # the store's own forwards, old and new, in the round's order
        sweeps = {}
        for side in order:
            if side == "old":
                real, H.run = H.run, _old_run
                try:
                    sweeps[side] = _sweep(model, ps, min(args.sweep_layers, cfg.n_layers))
                finally:
                    H.run = real
            else:
                sweeps[side] = _sweep(model, ps, min(args.sweep_layers, cfg.n_layers))
        (t_old, v_old, f_old), (t_new, v_new, f_new) = sweeps["old"], sweeps["new"]
        same = f_old == f_new and all(torch.equal(a, b) for a, b in zip(v_old, v_new))
        ok &= same
        print(f"  store sweep ({len(v_new) - 1} head ablations, {f_new} forwards): run_with_hooks {t_old:.3f} s, "
              f"hooks.run {t_new:.3f} s ({(t_old - t_new) / f_new * 1e3:+.2f} ms per forward, "
              f"{t_new / t_old:.3f} of the old time)")
    print("old and new paths bitwise identical (logits, hooked values, sweep):", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
