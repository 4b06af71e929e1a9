"""EAP over every edge vs one forward+backward of the same prompts, timed in one run.

    python bench/edge_attribution_cost.py [--n 16] [--model smollm2-135m] [--device cpu] [--rounds 2]

The task is greater-than ('01' corruptions) on ``--n`` prompts. Each round times, from a
cold start of the thing measured (nothing run beforehand to warm it up):

* ``fwd+bwd``: per batch the attribution runs (the same prompts in the same right-padded
  batches, sized by the same token budget), one forward with gradients on, the sum of the
  prompts' ``logit_metric``, and one backward to the residual stream (``torch.autograd.grad``
  to the embedding's output: every block's backward runs, no weight gradient is formed). One
  batch of all ``--n`` prompts would be no fair unit: at 100 prompts it took 26 s against 9 s
  in the attribution's batches of 20 (the 100-row batch's logits alone are 354 MB);
* ``EAP``: :func:`pytest_circuits.techniques.edges.edge_attribution` over every edge of the
  model, with a new, empty memory-only activation store (so the clean and corrupted forwards
  that fill it are timed too), in the store's token budget;
* ``again``: the same attribution a second time on that store (as a stability analysis or a
  second method on the same prompts runs it): the attribution's own passes alone, the
  senders' outputs read from the store (its scores must equal the first's).

Printed: each time, the ratio EAP / fwd+bwd per round (the first round pays whatever the
process pays the first time it runs the model: compare the rounds), the number of edges,
the store's forwards, and where EAP's time went (the EdgeScores' own seconds include the
store's forwards). The scores are checked against an identity: prompts whose corruption
changes no token score 0 on every edge, and, per prompt, the scores of all edges into the
logits add up to ``(resid_final(corrupted) - resid_final(clean)) . d m / d resid_final``, with
that gradient taken by the ``fwd+bwd`` run here and the final residuals read from the store
(a different route to the same number; the script exits 1 when either fails).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from pytest_circuits import ActivationStore, load_model, tasks
from pytest_circuits import hooks as H
from pytest_circuits.models import info as model_info
from pytest_circuits.techniques import edges as E


def forward_backward(model, task, n: int) -> tuple[float, torch.Tensor]:
    """Seconds for one forward and one backward of the first ``n`` prompts in the batches the
    attribution runs them in (:func:`~pytest_circuits.techniques.edges.attribution_batches` with
    a new store, so in the same token budget), and the gradient of each prompt's metric at the
    final residual ``[n, width, d_model]`` (zero past a prompt's batch's width)."""
    ps = task.prompts
    start = time.perf_counter()
    device = model_info(model).device
    final = H.resid_post(model.cfg.n_layers - 1)
    out = torch.zeros((n, max(ps.lengths[:n]), model.cfg.d_model), dtype=torch.float64)
    for rows in E.attribution_batches(model, ps, n, ActivationStore(cache_dir=None)):
        width = max(ps.lengths[int(i)] for i in rows)
        tokens = ps.tokens[rows, :width].to(device)
        metrics = [task.logit_metric(int(i)) for i in rows]
        kept = {}

        def leaf(t, hook=None):
            kept["x"] = t.detach().clone().requires_grad_(True)
            return kept["x"]

        def look(t, hook=None):
            kept["final"] = t

        with torch.enable_grad(), model.hooks(fwd_hooks=[(H.EMBED, leaf), (final, look)]):
            logits = model(tokens)
            total = torch.stack([m(logits[i: i + 1]).reshape(()) for i, m in enumerate(metrics)]).sum()
            g, g_final = torch.autograd.grad(total, [kept["x"], kept["final"]])
        assert g.shape[0] == len(rows)
        out[rows, :width] = g_final.detach().to("cpu", torch.float64)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    model = load_model(a.model, device=a.device, **({"cache_dir": a.cache_dir} if a.cache_dir else {}))
    task = tasks.greater_than(model, n=a.n, seed=a.seed, name="bench")
    n_edges = len(E.graph(model))
    print(f"EAP over all {n_edges} edges of {a.model} ({model.cfg.n_layers} layers, {model.cfg.n_heads} heads) "
          f"vs one forward+backward, greater-than, n={a.n} prompts (lengths {min(task.prompts.lengths)}.."
          f"{max(task.prompts.lengths)}), {torch.get_num_threads()} threads")
    print(f"{'round':>5} {'fwd+bwd s':>10} {'EAP s':>8} {'EAP/fwd+bwd':>12} {'store fwds':>10} {'again s':>8} "
          f"{'again/f+b':>12}")
    ok = True
    for r in range(a.rounds):
        t_fb, g_final = forward_backward(model, task, a.n)
        store = ActivationStore(cache_dir=None)
        t0 = time.perf_counter()
        scores = E.edge_attribution(model, task, activations=store)
        t_eap = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = E.edge_attribution(model, task, activations=store)
        t_again = time.perf_counter() - t0
        if not torch.equal(again.values, scores.values):
            print("a second attribution on the same store gave other scores")
            ok = False
        print(f"{r:5d} {t_fb:10.2f} {t_eap:8.2f} {t_eap / t_fb:12.2f} {store.counters.forward_passes:10d} "
              f"{t_again:8.2f} {t_again / t_fb:12.2f}")
        same = [i for i in range(a.n) if torch.equal(task.prompts.tokens[i], task.prompts.corrupted.tokens[i])]
        values = scores.values.numpy()                 # [edges, prompts] float64
        if same and abs(values[:, same]).max() != 0:
            print(f"identity broken: prompts {same} equal to their corruption score nonzero")
            ok = False
        if not bool((abs(values).max(0) > 0).all()):
            print("identity broken: a prompt whose corruption changes a token scores 0 on every edge")
            ok = False
        final = H.resid_post(model.cfg.n_layers - 1)
        width = g_final.shape[1]
        moved = (store.get(model, task.prompts.corrupted, [final])[final][: a.n, :width].double()
                 - store.get(model, task.prompts, [final])[final][: a.n, :width].double())
        want = (moved * g_final).sum((1, 2)).numpy()
        into = [j for j, e in enumerate(scores.edges) if e.receiver is None]
        got = values[into].sum(0)
        err = float(abs(got - want).max() / max(1e-12, abs(want).max()))
        print(f"      edges into the logits vs the final residual's first-order change: max |diff| / max |value| "
              f"{err:.2e}")
        if err > 1e-3:
            ok = False
    print(f"top edges: {scores.table(5)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
