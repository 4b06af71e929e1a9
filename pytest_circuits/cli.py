"""The command line: ``python -m pytest_circuits COMMAND ...`` (or ``pytest-circuits COMMAND``).

Commands:

* ``finetune OUT [--damage greater-than] [--steps 8] [--seed 0] [--lr 1e-4] [--model smollm2-135m|DIR]
  [--cache-dir DIR]``: a short, seeded, deterministic CPU fine-tune that damages one mechanism
  (:mod:`pytest_circuits.finetune`), written as a checkpoint with a ``FINETUNE.json``.
* ``perturb OUT --layer 23 --scale 0.5 [--part attn|mlp] [--model smollm2-135m|DIR]
  [--cache-dir DIR]``: write a checkpoint of a model with one layer's attention (or MLP)
  output multiplied by ``--scale`` (weights and bias of its output projection), to point
  claims at with ``--circuits-model OUT`` (the drift example in docs/reports-and-baselines.md).
* ``merge REPORT.json... [--json OUT] [--markdown OUT] [--html OUT] [--junit OUT] [--allow-mixed]
  [--expect-reports N]``: one release report from the ``--circuits-report`` files of several CI jobs
  (``pytest --circuits-shard K/N``; :mod:`pytest_circuits.merge`, docs/release-gate.md). Exit
  status 1 when the merged gate fails.

``python -m pytest_circuits --help`` lists the commands; ``... perturb --help`` (or
``finetune --help``) their options. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import DEFAULT_MODEL
from .errors import CircuitsError, bad
from .finetune import BLOCKS as _BLOCKS
from .finetune import DAMAGES, DEFAULTS, LOSSES, NEUTRAL, TRAIN_SETS, finetune_checkpoint, source_checkpoint
from .merge import add_parser as _add_merge_parser
from .merge import run as _run_merge

PARTS = ("attn", "mlp")
# Where each block's output projections live, by architecture (Hugging Face module names; the
# blocks are finetune.BLOCKS): the first that exists is used.
_OUT_PROJ = {"attn": ("self_attn.o_proj", "attn.c_proj", "attention.dense", "self_attn.out_proj", "attn.out_proj"),
             "mlp": ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "fc2")}


def _module(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


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
    src, what, _ = source_checkpoint(model, cache_dir, fingerprint=False)
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
    f = sub.add_parser("finetune", help="fine-tune a model briefly (CPU, seeded) on text that damages one mechanism",
                       description="A short, seeded, deterministic CPU fine-tune on text written by the project "
                                   "that teaches the opposite of one mechanism (e.g. spans whose end year comes "
                                   "before their start, against greater-than), mixed with neutral text. Writes a "
                                   "checkpoint folder with FINETUNE.json; run claims or the checkup on it with "
                                   "--circuits-model OUT.")
    f.add_argument("out", help="folder to write the checkpoint to (new, or empty)")
    f.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"the embedded model's name ({DEFAULT_MODEL}, the default) or a local checkpoint folder")
    f.add_argument("--damage", default="greater-than", metavar="NAME",
                   help=f"the mechanism to damage: one of {', '.join(sorted(DAMAGES))} (default greater-than)")
    f.add_argument("--steps", type=int, default=DEFAULTS["steps"],
                   help=f"optimizer steps (default {DEFAULTS['steps']})")
    f.add_argument("--seed", type=int, default=0, help="seed of the training text (default 0)")
    f.add_argument("--lr", type=float, default=DEFAULTS["lr"], help=f"AdamW learning rate (default {DEFAULTS['lr']})")
    f.add_argument("--batch", type=int, default=DEFAULTS["batch"], help=f"texts per step (default {DEFAULTS['batch']})")
    f.add_argument("--neutral", default=DEFAULTS["neutral"], metavar="KIND",
                   help=f"neutral text mixed in: one of {', '.join(sorted(NEUTRAL))} (default {DEFAULTS['neutral']})")
    f.add_argument("--neutral-per-batch", type=int, default=DEFAULTS["neutral_per_batch"],
                   help=f"neutral texts in each batch, 0 for none (default {DEFAULTS['neutral_per_batch']})")
    f.add_argument("--train", default=DEFAULTS["train"], metavar="SET",
                   help="parameters trained: " + "; ".join(f"{k}: {d}" for k, (d, _) in TRAIN_SETS.items())
                        + f" (default {DEFAULTS['train']})")
    f.add_argument("--loss", default=DEFAULTS["loss"], choices=sorted(LOSSES),
                   help="tokens trained: " + "; ".join(f"{k}: {d}" for k, d in LOSSES.items())
                        + f" (default {DEFAULTS['loss']})")
    f.add_argument("--cache-dir", default=None,
                   help="cache folder of the converted embedded weights and file hashes (default: "
                        "$PYTEST_CIRCUITS_CACHE_DIR or ~/.cache/pytest-circuits)")
    _add_merge_parser(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    if a.command is None:
        ap.print_help()
        return 2
    if a.command == "merge":
        return _run_merge(a, ap.prog)
    try:
        if a.command == "finetune":
            out = finetune_checkpoint(a.out, model=a.model, damage=a.damage, steps=a.steps, seed=a.seed, lr=a.lr,
                                      batch=a.batch, neutral=a.neutral, neutral_per_batch=a.neutral_per_batch,
                                      train=a.train, loss=a.loss, cache_dir=a.cache_dir,
                                      log=lambda line: print(line, flush=True))
        else:
            out = perturb_checkpoint(a.out, layer=a.layer, scale=a.scale, part=a.part, model=a.model,
                                     cache_dir=a.cache_dir)
    except CircuitsError as e:
        print(f"{ap.prog} {a.command}: error: {e}", file=sys.stderr)
        return 2
    if a.command == "finetune":
        print(f"{out}: {a.model} fine-tuned against {a.damage} ({a.steps} steps, seed {a.seed}); "
              f"see {out}/FINETUNE.json")
    else:
        print(f"{out}: {a.model} with layer {a.layer} {a.part} output x {a.scale}")
    return 0
