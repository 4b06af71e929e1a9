"""Make a second checkpoint of the embedded model with one layer's weights changed.

    python scripts/perturb_checkpoint.py OUT_DIR [--layer 23] [--scale 0.5] [--part attn]

Loads the embedded SmolLM2-135M (its converted float32 checkpoint), multiplies the
output projection of attention layer ``--layer`` (``--part attn``: ``o_proj``) or of its
MLP (``--part mlp``: ``down_proj``) by ``--scale``, and saves a Hugging Face checkpoint
(safetensors + tokenizer) to OUT_DIR. Point claims at it with
``--circuits-model OUT_DIR``: the README's worked example on drift.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from pytest_circuits.models import embedded_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layer", type=int, default=23)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--part", choices=["attn", "mlp"], default="attn")
    a = ap.parse_args()
    src, digest = embedded_checkpoint()
    model = LlamaForCausalLM.from_pretrained(str(src))
    n = model.config.num_hidden_layers
    if not 0 <= a.layer < n:
        raise SystemExit(f"--layer={a.layer} is not valid: 0..{n - 1}")
    layer = model.model.layers[a.layer]
    weight = layer.self_attn.o_proj.weight if a.part == "attn" else layer.mlp.down_proj.weight
    with torch.no_grad():
        weight.mul_(a.scale)
    out = Path(a.out)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    (out / "PERTURBATION.json").write_text(json.dumps(
        {"base": f"smollm2-135m (gguf sha256 {digest})", "layer": a.layer, "part": a.part, "scale": a.scale}))
    print(f"{out}: smollm2-135m with layer {a.layer} {a.part} output x {a.scale}")


if __name__ == "__main__":
    main()
