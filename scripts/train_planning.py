"""Train the vanilla and myopic models of the planning-ahead claims (arXiv:2404.00859).

Writes claims/synthetic/checkpoints/{vanilla,myopic}/ (model.safetensors + config.json)
and prints each model's training wall time and held-out loss. Deterministic on CPU:
the same seed gives the same weights (pytest_circuits.techniques.planning.train).

    python scripts/train_planning.py [--steps 4000] [--seed 0] [--out claims/synthetic/checkpoints]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pytest_circuits.techniques import planning as P

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "claims" / "synthetic" / "checkpoints")
    ap.add_argument("--only", choices=["vanilla", "myopic"], default=None)
    args = ap.parse_args()
    base = P.trivial_loss().mean().item()
    print(f"trivial baseline (predict 0), held-out: {base:.4f}")
    for name in ("vanilla", "myopic"):
        if args.only and name != args.only:
            continue
        t0 = time.perf_counter()
        model = P.train(name == "myopic", seed=args.seed, steps=args.steps, log_every=500)
        wall = time.perf_counter() - t0
        path = P.save(model, args.out / name)
        size = (path / P.WEIGHTS_NAME).stat().st_size
        print(f"{name}: trained {args.steps} steps in {wall:.1f} s; held-out loss "
              f"{P.eval_loss(model).mean().item():.4f}; {size / 1e6:.2f} MB -> {path}", flush=True)


if __name__ == "__main__":
    main()
