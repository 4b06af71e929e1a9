"""Train the planted induction model (2 layers, attention only) and its 1-layer control.

Writes two checkpoints in Hugging Face layout, loadable by :func:`pytest_circuits.load_model`:

* ``tests/data/planted/induction/``: a 2-layer Llama with 4 heads per layer, d_model 64,
  whose MLPs are zero and frozen (attention only), trained on repeated random sequences:
  it can form induction heads (a previous-token head in layer 0 whose output a layer-1 head
  reads through its keys: K-composition, Olsson et al. 2022, arXiv:2209.11895);
* ``tests/data/planted/induction_control/``: the same with 1 layer, trained the same way. A
  single attention layer's keys see only the token and position at each key, never the
  token before it, so no head can attend "to the token after an earlier copy of mine";
  and the period varies between training sequences, so no fixed positional offset does
  it either. The control cannot form induction heads.

The tokenizer is the word-level one of :func:`pytest_circuits.testing.make_tiny_checkpoint`.
Each checkpoint folder also gets

* ``TRAINING.json``: seed, steps, hyper-parameters, wall time, the safetensors' sha256, and
  the held-out loss on the first and on the second copy of repeated sequences;
* ``ground_truth.json``: per head, computed with raw TransformerLens hooks on the bridge
  that ``load_model`` returns (``run_with_cache`` on ``blocks.{l}.attn.hook_pattern``,
  ``run_with_hooks`` zeroing a head's slice of ``blocks.{l}.attn.hook_z``; not with
  ``pytest_circuits.techniques.heads``), the induction, previous-token and
  duplicate-token scores and the loss increase on the second copy when the head is
  zero-ablated, and which heads are induction / previous-token heads by the thresholds it
  states.

Training sequences (one row): ``[BOS, a_1..a_T, a_1..a_T, a_1..]``, a random sequence of
``T`` distinct ordinary words repeated until 48 tokens follow BOS, the period ``T`` uniform
in 3..24 per row. Every position after the first copy is predictable by induction, so the
previous-token information an induction head reads is needed at every position. Loss:
next-token cross-entropy at every position. Plain torch on the ``LlamaForCausalLM``, one CPU
thread, deterministic algorithms: the result depends only on the seed (and the torch
version); a second run wrote byte-identical safetensors.

Result (seed 0, 600 steps; 67-97 s and 36-46 s on one thread of a shared 2-core CPU):
the 2-layer model's second-copy loss is 0.004 nats against 4.27 on the first copy; every head
of layer 1 is an induction head (0.91-0.99), fed by the previous-token head L0H0 (0.82;
zero-ablating it costs the second copy 3.3 nats, any single induction head at most 0.012:
they back each other up). The control's second-copy loss is 3.41 against 4.42 (it learns
that the second copy re-uses the first copy's tokens, not which one comes next); no head
scores above 0.08 as an induction head.

    python scripts/train_induction.py [--seed 0] [--steps 600] [--out tests/data/planted]
    python scripts/train_induction.py --ground-truth-only     # recompute ground_truth.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "planted"
ARCH = dict(d_model=64, n_heads=4, d_mlp=8)          # the MLPs are zero and frozen: d_mlp is moot
LAYERS = {"induction": 2, "induction_control": 1}    # folder -> number of layers
DEFAULTS = dict(steps=600, batch=64, lr=3e-3, weight_decay=0.01, warmup=100, seq_len=48,
                min_period=3, max_period=24)
# Ground truth: how it is measured and the definitions of the head kinds.
GT_N, GT_PERIOD, GT_SEED = 200, 20, 12345
INDUCTION_AT = 0.5      # mean attention to the token after the earlier copy (uniform: < 0.06)
PREVIOUS_AT = 0.5       # mean attention to the previous token


# --------------------------------------------------------------------------- data
def ordinary_ids(tokenizer: Any) -> torch.Tensor:
    """Every id of the word-level vocabulary that is not a special token."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special])


def repeated_batch(words: torch.Tensor, bos: int, n: int, g: torch.Generator, *, seq_len: int,
                   min_period: int, max_period: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rows ``[BOS, a_1..a_T, a_1..a_T, a_1..]`` (``seq_len`` tokens after BOS: the
    sequence repeated until they are filled; exactly two copies when ``seq_len = 2T``) and each
    row's period ``T``. The ``a`` are distinct words, so within a copy no token repeats."""
    perm = words[torch.rand(n, len(words), generator=g).argsort(1)]          # [n, V] distinct words
    period = torch.randint(min_period, max_period + 1, (n,), generator=g)
    idx = torch.arange(seq_len).unsqueeze(0) % period.unsqueeze(1)
    return torch.cat([torch.full((n, 1), bos), perm.gather(1, idx)], 1), period


def copy_losses(nll: torch.Tensor, period: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss (per row) of predicting the tokens of the first copy after its first
    (positions 2..T) and of the second copy after its first (T+2..2T): ``nll[:, q]`` is the
    loss of predicting position ``q + 1``."""
    q = torch.arange(nll.shape[1]).unsqueeze(0)
    t = period.unsqueeze(1)
    first = (q >= 1) & (q <= t - 1)
    second = (q >= t + 1) & (q <= 2 * t - 1)
    return (nll * first).sum(1) / first.sum(1), (nll * second).sum(1) / second.sum(1)


# --------------------------------------------------------------------------- training
def new_model(path: Path, n_layers: int, seed: int) -> Any:
    from transformers import LlamaForCausalLM

    from pytest_circuits.testing import make_tiny_checkpoint

    make_tiny_checkpoint(path, n_layers=n_layers, seed=seed, **ARCH)
    model = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mlp." in name:
                p.zero_()
                p.requires_grad_(False)        # attention only: the MLPs write exactly 0
    return model


def train(path: Path, n_layers: int, *, seed: int = 0, log_every: int = 0, **hp: Any) -> Any:
    """Create the checkpoint folder at ``path`` and train its model; returns the HF model.
    One CPU thread and deterministic algorithms, restored afterwards."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(path, n_layers, seed=seed, log_every=log_every, **{**DEFAULTS, **hp})
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def _train(path: Path, n_layers: int, *, seed: int, steps: int, batch: int, lr: float,
           weight_decay: float, warmup: int, seq_len: int, min_period: int, max_period: int,
           log_every: int) -> Any:
    model = new_model(path, n_layers, seed)
    model.train()
    tok = _tokenizer(path)
    words = ordinary_ids(tok)
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps) if steps else 1.0)
    for step in range(steps):
        toks, period = repeated_batch(words, tok.bos_token_id, batch, g, seq_len=seq_len,
                                             min_period=min_period, max_period=max_period)
        logits = model(input_ids=toks).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            with torch.no_grad():
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), toks[:, 1:], reduction="none")
                a, b = copy_losses(nll, period)
            print(f"step {step:5d}  loss {loss.item():.4f}  first copy {a.mean():.3f}  second copy {b.mean():.3f}",
                  flush=True)
    model.eval()
    return model


def _tokenizer(path: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


@torch.no_grad()
def evaluate(model: Any, path: Path, seed: int = 1, n: int = 1000) -> dict[str, float]:
    """Held-out loss on the first and second copies (HF model, training distribution)."""
    tok = _tokenizer(path)
    g = torch.Generator().manual_seed(seed)
    toks, period = repeated_batch(ordinary_ids(tok), tok.bos_token_id, n, g, seq_len=DEFAULTS["seq_len"],
                                         min_period=DEFAULTS["min_period"], max_period=DEFAULTS["max_period"])
    logits = model(input_ids=toks).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), toks[:, 1:], reduction="none")
    first, second = copy_losses(nll, period)
    return {"eval_seed": seed, "eval_n": n, "loss_first_copy": first.mean().item(),
            "loss_second_copy": second.mean().item(),
            "uniform_loss": float(torch.log(torch.tensor(float(len(ordinary_ids(tok))))))}


# --------------------------------------------------------------------------- ground truth (raw hooks)
def gt_tokens(bridge: Any, n: int = GT_N, period: int = GT_PERIOD, seed: int = GT_SEED) -> torch.Tensor:
    """``n`` rows ``[BOS, a_1..a_T, a_1..a_T]`` of distinct ordinary words (this script's own
    generator, not ``pytest_circuits.tasks.induction``)."""
    tok = bridge.tokenizer
    g = torch.Generator().manual_seed(seed)
    toks, _ = repeated_batch(ordinary_ids(tok), tok.bos_token_id, n, g, seq_len=2 * period,
                             min_period=period, max_period=period)
    return toks


def pattern_scores(patterns: dict[int, torch.Tensor], period: int) -> dict[str, torch.Tensor]:
    """Per head ``[layer, head]`` (rows start ``[BOS, a_1..]``, so ``a_1`` is at 1): the mean over
    rows and over the queries ``i`` of the second copy (``T+1..2T``) of the attention to
    ``i-T+1`` (induction) and to ``i-T`` (duplicate token), and over every query after ``a_1``
    in both copies (``2..2T``) of the attention to ``i-1`` (previous token)."""
    second = torch.arange(period + 1, 2 * period + 1)
    both = torch.arange(2, 2 * period + 1)
    out = {}
    for name, q, back in (("induction", second, period - 1), ("previous_token", both, 1),
                          ("duplicate_token", second, period)):
        out[name] = torch.stack([patterns[l][:, :, q, q - back].mean((0, 2)) for l in sorted(patterns)])
    return out


@torch.no_grad()
def second_copy_loss(bridge: Any, toks: torch.Tensor, period: int, hooks: list) -> torch.Tensor:
    logits = bridge.run_with_hooks(toks, fwd_hooks=hooks)[:, :-1].double()
    nll = -logits.log_softmax(-1).gather(-1, toks[:, 1:].unsqueeze(-1)).squeeze(-1)
    return nll[:, period + 1:2 * period].mean(1)                    # predicting T+2..2T


def zero_head(layer: int, head: int) -> tuple[str, Any]:
    def fn(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = 0
        return z
    return f"blocks.{layer}.attn.hook_z", fn


@torch.no_grad()
def ground_truth(path: Path) -> dict[str, Any]:
    from pytest_circuits.models import load_model

    with tempfile.TemporaryDirectory() as tmp:
        bridge = load_model(str(path), device="cpu", cache_dir=tmp)
        n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
        toks = gt_tokens(bridge)
        names = [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
        _, cache = bridge.run_with_cache(toks, names_filter=lambda n: n in names)
        scores = pattern_scores({l: cache[names[l]].double() for l in range(n_layers)}, GT_PERIOD)
        clean = second_copy_loss(bridge, toks, GT_PERIOD, [])
        first = bridge.run_with_hooks(toks, fwd_hooks=[])[:, :-1].double().log_softmax(-1)
        first = -first.gather(-1, toks[:, 1:].unsqueeze(-1)).squeeze(-1)[:, 1:GT_PERIOD].mean(1)
        ablated = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        for l in range(n_layers):
            for h in range(n_heads):
                ablated[l, h] = (second_copy_loss(bridge, toks, GT_PERIOD, [zero_head(l, h)]) - clean).mean()
    heads = [f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]

    def table(t: torch.Tensor) -> dict[str, float]:
        return {f"L{l}H{h}": float(t[l, h]) for l in range(n_layers) for h in range(n_heads)}

    induction = [h for h, s in sorted(table(scores["induction"]).items(), key=lambda kv: -kv[1]) if s > INDUCTION_AT]
    previous = [h for h, s in sorted(table(scores["previous_token"]).items(), key=lambda kv: -kv[1])
                if s > PREVIOUS_AT]
    return {
        "model_safetensors_sha256": hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest(),
        "sequences": f"{GT_N} rows [BOS, a_1..a_T, a_1..a_T], T={GT_PERIOD}, distinct ordinary words, "
                     f"torch.Generator seed {GT_SEED} (scripts/train_induction.py gt_tokens)",
        "scores": "mean over rows and over the second copy's queries i = T+1..2T of the attention "
                  "(blocks.{l}.attn.hook_pattern) to i-T+1 (induction) and to i-T (duplicate token); "
                  "over every query after a_1, i = 2..2T, of the attention to i-1 (previous token)",
        "ablation": "second-copy loss (predicting positions T+2..2T) with the head's slice of "
                    "blocks.{l}.attn.hook_z zeroed, minus the clean loss; mean over rows",
        "heads": heads,
        "induction_threshold": INDUCTION_AT, "previous_token_threshold": PREVIOUS_AT,
        "induction_heads": induction,
        "previous_token_heads": previous,
        "loss_first_copy": float(first.mean()), "loss_second_copy": float(clean.mean()),
        "induction_score": table(scores["induction"]),
        "previous_token_score": table(scores["previous_token"]),
        "duplicate_token_score": table(scores["duplicate_token"]),
        "zero_ablation_loss_increase": table(ablated),
    }


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", choices=sorted(LAYERS), default=None, help="train one of the two models")
    ap.add_argument("--ground-truth-only", action="store_true")
    args = ap.parse_args()
    for name, n_layers in LAYERS.items():
        if args.only and name != args.only:
            continue
        out: Path = args.out / name
        if not args.ground_truth_only:
            t0 = time.perf_counter()
            model = train(out, n_layers, seed=args.seed, steps=args.steps, log_every=250)
            wall = time.perf_counter() - t0
            model.save_pretrained(str(out))
            record = {"seed": args.seed, **DEFAULTS, "steps": args.steps,
                      "architecture": {"n_layers": n_layers, **ARCH, "mlp": "zero and frozen"},
                      "train_seconds": round(wall, 1), "torch": torch.__version__, "threads": 1,
                      **evaluate(model, out),
                      "model_safetensors_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()}
            (out / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
            print(json.dumps(record, indent=2))
        gt = ground_truth(out)
        (out / "ground_truth.json").write_text(json.dumps(gt, indent=1) + "\n")
        print(f"{name}: induction heads {gt['induction_heads']}, previous-token heads "
              f"{gt['previous_token_heads']}; loss first copy {gt['loss_first_copy']:.3f}, "
              f"second {gt['loss_second_copy']:.3f}")
        for key in ("induction_score", "previous_token_score", "duplicate_token_score", "zero_ablation_loss_increase"):
            print(f"  {key}: " + " ".join(f"{h} {v:.3f}" for h, v in gt[key].items()))


if __name__ == "__main__":
    main()
