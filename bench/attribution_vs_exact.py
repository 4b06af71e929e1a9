"""Attribution screen + exact verification vs exhaustive exact patching, in one run.

    python bench/attribution_vs_exact.py [--n 40] [--screen-n 20] [--k 30] [--model smollm2-135m]

Both arms find the components whose activation patching ('01' corruption) moves the
greater-than PD most, on the same prompts, each with its own empty activation store:

* exhaustive: exact patching of every head and MLP;
* screened: TransformerLens's attribution_patch (gradients, one pair at a time) on
  ``--screen-n`` prompts, then exact patching of its top ``--k`` only.

Reported: wall time of each arm and their ratio; how well the screen ranks against exact
patching (Spearman of |score| vs |effect| over all components; the share of the exact
top-10 and of the exact significant set (effect >= --threshold of the corruption's,
interval excluding 0) that the screen's top-k contains).
"""

from __future__ import annotations

import argparse
import time

from pytest_circuits import ActivationStore, load_model, tasks
from pytest_circuits.techniques import patching as P
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--screen-n", type=int, default=20)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--threshold", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=2)
    a = ap.parse_args()
    model = load_model(a.model)
    task = tasks.greater_than(model, n=a.n, seed=a.seed, name="bench")

    t0 = time.perf_counter()
    screen, verified = P.screen_and_verify(model, task, k=a.k, screen_n=a.screen_n,
                                           activations=ActivationStore(batch_size=32))
    t_screened = time.perf_counter() - t0

    t0 = time.perf_counter()
    exact = P.sweep(model, task, activations=ActivationStore(batch_size=32))
    t_exact = time.perf_counter() - t0

    n_comp = len(exact.components)
    agree = screen.agreement(exact, k=10)
    top_k = {r.component for r in screen.top(a.k, order="abs")}
    sig = exact.significant(a.threshold)
    found = [c for c in sig if c in top_k]
    confirmed = [c for c in verified.significant(a.threshold)]
    print(f"greater-than on {a.model}: {n_comp} heads and MLPs, n={a.n} prompts "
          f"(screen on {a.screen_n}), top-k={a.k}")
    print(f"{'arm':12} {'wall s':>8}  what")
    print(f"{'exhaustive':12} {t_exact:8.1f}  exact patching of all {n_comp}")
    print(f"{'screened':12} {t_screened:8.1f}  attribution screen {screen.seconds:.1f} s + exact patching of "
          f"{a.k}")
    print(f"time ratio screened/exhaustive: {t_screened / t_exact:.3f}")
    print(f"rank agreement over all components: Spearman {agree.spearman:.3f}; exact top-10 in screen top-10: "
          f"{agree.recall_at_k:.2f}")
    print(f"exact significant set (>= {a.threshold} of the corruption's effect): {len(sig)}; "
          f"in the screen's top-{a.k}: {len(found)} ({len(found) / max(1, len(sig)):.2f})")
    missed = [str(c) for c in sig if c not in top_k]
    print(f"missed by the screen: {' '.join(missed) if missed else 'none'}")
    print(f"verified significant among the screen's top-{a.k}: {len(confirmed)}")


if __name__ == "__main__":
    main()
