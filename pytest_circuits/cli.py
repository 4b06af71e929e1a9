"""The command line: ``python -m pytest_circuits COMMAND ...`` (or ``pytest-circuits COMMAND``).

Commands:

* ``perturb OUT --layer 23 --scale 0.5 [--part attn|mlp] [--model smollm2-135m|DIR]
  [--cache-dir DIR]``: write a checkpoint of a model with one layer's attention (or MLP)
  output multiplied by ``--scale`` (weights and bias of its output projection), to point
  claims at with ``--circuits-model OUT`` (the drift example in docs/reports-and-baselines.md).

``python -m pytest_circuits --help`` lists the commands; ``... perturb --help`` its options.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import DEFAULT_MODEL
from .errors import CircuitsError, bad

PARTS = ("attn", "mlp")
# Where the transformer blocks and each block's output projections live, by architecture
# (Hugging Face module names): the first that exists is used.
_BLOCKS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
_OUT_PROJ = {"attn": ("self_attn.o_proj", "attn.c_proj", "attention.dense", "self_attn.out_proj", "attn.out_proj"),
             "mlp": ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "fc2")}


def _module(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def _source(model: str, cache_dir: str | Path | None) -> tuple[Path, str]:
    """The checkpoint folder of ``model`` (the embedded model's converted weights, or a local
    Hugging Face checkpoint folder) and a line saying what it is."""
    from .models import EMBEDDED, embedded_checkpoint

    if model == EMBEDDED:
        folder, digest = embedded_checkpoint(Path(cache_dir) if cache_dir else None)
        return folder, f"{EMBEDDED} (gguf sha256 {digest})"
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return path, str(path.resolve())
    raise CircuitsError(bad("model", model, f"{EMBEDDED!r} (the embedded model) or a local Hugging Face "
                                            "checkpoint folder (with config.json)"))


def perturb_checkpoint(out: str | Path, *, layer: int, scale: float, part: str = "attn",
                       model: str = DEFAULT_MODEL, cache_dir: str | Path | None = None) -> Path:
    """Write ``model`` to ``out`` (safetensors + tokenizer) with the output projection of
    block ``layer``'s attention (``part="attn"``) or MLP (``"mlp"``) multiplied by ``scale``,
    and a ``PERTURBATION.json`` saying what was changed. Returns ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if part not in PARTS:
        raise CircuitsError(bad("part", part, f"one of {PARTS}"))
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise CircuitsError(bad("layer", layer, "a block index (an int)"))
    src, what = _source(model, cache_dir)
    hf = AutoModelForCausalLM.from_pretrained(str(src), torch_dtype=torch.float32)
    blocks = next((b for b in (_module(hf, d) for d in _BLOCKS) if b is not None), None)
    if blocks is None:
        raise CircuitsError(bad("model", model, f"an architecture whose blocks are one of {_BLOCKS}"))
    if not 0 <= layer < len(blocks):
        raise CircuitsError(bad("layer", layer, f"0..{len(blocks) - 1} ({model} has {len(blocks)} blocks)"))
    proj = next((p for p in (_module(blocks[layer], n) for n in _OUT_PROJ[part]) if p is not None), None)
    if proj is None:
        raise CircuitsError(bad("part", part, f"a part whose output projection is one of {_OUT_PROJ[part]}"))
    with torch.no_grad():
        proj.weight.mul_(scale)
        if getattr(proj, "bias", None) is not None:
            proj.bias.mul_(scale)
    out = Path(out)
    hf.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    (out / "PERTURBATION.json").write_text(json.dumps(
        {"base": what, "layer": layer, "part": part, "scale": scale}))
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pytest_circuits",
                                 description="pytest-circuits tools (claims run with pytest).")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    p = sub.add_parser("perturb", help="write a checkpoint with one layer's attention or MLP output scaled",
                       description="Write a checkpoint of a model with one block's attention (or MLP) output "
                                   "projection multiplied by --scale; run claims on it with "
                                   "--circuits-model OUT.")
    p.add_argument("out", help="folder to write the checkpoint to")
    p.add_argument("--layer", type=int, default=23, help="block index (default 23)")
    p.add_argument("--scale", type=float, default=0.5, help="factor on the output projection (default 0.5)")
    p.add_argument("--part", choices=PARTS, default="attn", help="attn: attention output; mlp: MLP output")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"the embedded model's name ({DEFAULT_MODEL}, the default) or a local checkpoint folder")
    p.add_argument("--cache-dir", default=None,
                   help="cache folder of the converted embedded weights (default: $PYTEST_CIRCUITS_CACHE_DIR "
                        "or ~/.cache/pytest-circuits)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    if a.command is None:
        ap.print_help()
        return 2
    try:
        out = perturb_checkpoint(a.out, layer=a.layer, scale=a.scale, part=a.part, model=a.model,
                                 cache_dir=a.cache_dir)
    except CircuitsError as e:
        print(f"{ap.prog} {a.command}: error: {e}", file=sys.stderr)
        return 2
    print(f"{out}: {a.model} with layer {a.layer} {a.part} output x {a.scale}")
    return 0
