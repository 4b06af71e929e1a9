"""Write the facts whose answer is the model's top next token (a mechanism-study set).

    python scripts/select_top1_facts.py [--model smollm2-135m] [--out claims/smollm2/data/facts_top1.jsonl]

Self-repair and erasure claims study *how* the model produces an answer it does produce,
so they use only facts where the answer is the top-1 token. This selection is a property
of the model; claims/smollm2/test_self_repair.py re-checks it on every run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pytest_circuits import load_model, metrics, tasks

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default=str(ROOT / "claims/smollm2/data/facts_top1.jsonl"))
    a = ap.parse_args()
    model = load_model(a.model)
    rows = tasks.load_facts()
    ps = tasks.facts(model)
    keep = {p for p, hit in zip(ps.prompts, metrics.top1(model, ps).values) if hit == 1.0}
    out = [r for r in rows if r["prompt"] in keep]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in out))
    print(f"{len(out)} of {len(rows)} facts have the answer as {a.model}'s top token -> {a.out}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
