"""Train the planted comparison model and find its circuit by exhaustive patching.

Writes ``tests/data/planted/comparison/``: a tiny Llama (2 layers x 4 heads, d_model 64,
d_mlp 128, no GQA) in Hugging Face layout with the word-level tokenizer of
:func:`pytest_circuits.testing.make_tiny_checkpoint`, plus

* ``TRAINING.json``: seed, steps, wall time, held-out PD (clean and corrupted) and
  distractor accuracy;
* ``ground_truth.json``: recovered fraction of PD for every one of the 1024 subsets of
  the 10 components (8 heads ``L{l}H{h}``, 2 MLPs ``mlp{l}``), the ground-truth circuit
  (the smallest subset recovering >= 90%), each component's necessity, and which
  components the distractor task needs.

Training (plain torch on the ``LlamaForCausalLM``, CPU, deterministic for a seed) mixes
two tasks in every step, loss on the last position only:

* comparison (:mod:`pytest_circuits.tasks.comparison`): ``"The {noun} of {place} lasted
  from {X} to the year"``, X in 0..8, target uniform over the digits > X (cross-entropy
  against that soft target). X = 0 is trained too, so the corrupted prompts are in
  distribution. Some (noun, place) pairs are held out for evaluation;
* distractor: induction over 8 distinct words, ``"A B C D E F G H C"`` -> ``"D"``.

The ground truth is computed with raw TransformerLens hooks on the TransformerBridge
that :func:`pytest_circuits.load_model` returns (not with ``pytest_circuits.interventions``):
for a subset C, every component outside C has its output (a head's slice of
``blocks.{l}.attn.hook_z``, an MLP's ``blocks.{l}.hook_mlp_out``, all positions) replaced by
its value on the corrupted prompt; the embedding is always clean.
``recovered(C) = (PD(C) - PD({})) / (PD(all) - PD({}))`` with PD the mean over the task's
prompts (``comparison(model, n=200, seed=0)``).

    python scripts/train_comparison.py [--steps 3000] [--seed 0] [--out tests/data/planted/comparison]
    python scripts/train_comparison.py --ground-truth-only   # recompute ground_truth.json
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch

C = importlib.import_module("pytest_circuits.tasks.comparison")  # the module (tasks.comparison is the builder)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "planted" / "comparison"
ARCH = dict(n_layers=2, n_heads=4, d_model=64, d_mlp=128)
COMPONENTS = tuple([f"L{l}H{h}" for l in range(ARCH["n_layers"]) for h in range(ARCH["n_heads"])]
                   + [f"mlp{l}" for l in range(ARCH["n_layers"])])
THRESHOLD = 0.9
DEFAULTS = dict(steps=3000, batch=128, lr=3e-3, weight_decay=0.1, warmup=100)


# --------------------------------------------------------------------------- data
def held_out(noun: int, place: int) -> bool:
    """(noun, place) pairs never seen in training (about a fifth of them)."""
    return (noun + 3 * place) % 5 == 0


class Data:
    """Token ids of every comparison prompt and of the distractor words."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.bos = tokenizer.bos_token_id
        self.digits = torch.tensor([self.one(str(d)) for d in range(10)])
        rows, keys = [], []
        for i, w in enumerate(C.NOUNS):
            for j, p in enumerate(C.PLACES):
                for x in range(0, 9):
                    rows.append(self.encode(C.TEMPLATE.format(noun=w, place=p, x=x)))
                    keys.append((i, j, x))
        self.cmp_tokens = torch.tensor(rows)
        self.cmp_x = torch.tensor([k[2] for k in keys])
        self.cmp_held = torch.tensor([held_out(k[0], k[1]) for k in keys])
        self.train_idx = (~self.cmp_held).nonzero().flatten()
        self.words = torch.tensor([self.one(w) for w in C.DISTRACTOR_WORDS])

    def one(self, text: str) -> int:
        ids = self.tok.encode(text, add_special_tokens=False)
        assert len(ids) == 1, (text, ids)
        return ids[0]

    def encode(self, text: str) -> list[int]:
        return [self.bos] + self.tok.encode(text, add_special_tokens=False)

    def comparison_batch(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.train_idx[torch.randint(len(self.train_idx), (n,), generator=g)]
        return self.cmp_tokens[idx], self.cmp_x[idx]

    def distractor_batch(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = C.DISTRACTOR_LEN
        perm = torch.rand(n, len(self.words), generator=g).argsort(1)[:, :k]
        seq = self.words[perm]                                               # [n, k]
        rep = torch.randint(k - 1, (n,), generator=g)
        rows = torch.arange(n)
        toks = torch.cat([torch.full((n, 1), self.bos), seq, seq[rows, rep].unsqueeze(1)], 1)
        return toks, seq[rows, rep + 1]

    def soft_target(self, x: torch.Tensor, vocab: int) -> torch.Tensor:
        above = (torch.arange(10).unsqueeze(0) > x.unsqueeze(1)).float()     # [n, 10]
        t = torch.zeros(len(x), vocab)
        t[:, self.digits] = above / above.sum(1, keepdim=True)
        return t


# --------------------------------------------------------------------------- training
def new_model(path: Path, seed: int) -> Any:
    from transformers import LlamaForCausalLM

    from pytest_circuits.testing import make_tiny_checkpoint

    make_tiny_checkpoint(path, seed=seed, **ARCH)
    return LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def losses(model: Any, data: Data, g: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    toks, x = data.comparison_batch(batch, g)
    logits = model(input_ids=toks).logits[:, -1]
    target = data.soft_target(x, logits.shape[-1])
    cmp_loss = -(target * logits.log_softmax(-1)).sum(-1).mean()
    dtoks, ans = data.distractor_batch(batch, g)
    dlogits = model(input_ids=dtoks).logits[:, -1]
    return cmp_loss, torch.nn.functional.cross_entropy(dlogits, ans)


def train(path: Path, *, seed: int = 0, steps: int = DEFAULTS["steps"], batch: int = DEFAULTS["batch"],
          lr: float = DEFAULTS["lr"], weight_decay: float = DEFAULTS["weight_decay"],
          warmup: int = DEFAULTS["warmup"], log_every: int = 0) -> Any:
    """Create the checkpoint folder at ``path`` and train its model; returns the HF model.

    Runs on one CPU thread: the result then does not depend on the machine's core count
    (and, on a shared 2-core machine, one thread is as fast as two).
    """
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(path, seed=seed, steps=steps, batch=batch, lr=lr, weight_decay=weight_decay,
                      warmup=warmup, log_every=log_every)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def _train(path: Path, *, seed: int, steps: int, batch: int, lr: float, weight_decay: float,
           warmup: int, log_every: int) -> Any:
    model = new_model(path, seed)
    model.train()
    data = Data(_tokenizer(path))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps) if steps else 1.0)
    for step in range(steps):
        cmp_loss, dis_loss = losses(model, data, g, batch)
        loss = cmp_loss + dis_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  comparison {cmp_loss.item():.4f}  distractor {dis_loss.item():.4f}",
                  flush=True)
    model.eval()
    return model


def _tokenizer(path: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


@torch.no_grad()
def evaluate(model: Any, path: Path, seed: int = 1) -> dict[str, float]:
    """Held-out PD (clean, X in 1..8, and X=0 corrupted) and distractor accuracy, HF model."""
    data = Data(_tokenizer(path))
    sel = data.cmp_held & (data.cmp_x >= 1)
    toks, x = data.cmp_tokens[sel], data.cmp_x[sel]
    corr = toks.clone()
    corr[toks == data.digits[x].unsqueeze(1)] = data.digits[0]

    def pd(t: torch.Tensor) -> float:
        p = model(input_ids=t).logits[:, -1].double().softmax(-1)[:, data.digits]
        above = torch.arange(10).unsqueeze(0) > x.unsqueeze(1)
        return ((p * above).sum(1) - (p * ~above).sum(1)).mean().item()

    g = torch.Generator().manual_seed(seed)
    dtoks, ans = data.distractor_batch(1000, g)
    dl = model(input_ids=dtoks).logits[:, -1]
    return {"held_out_pd_clean": pd(toks), "held_out_pd_corrupted": pd(corr), "held_out_n": int(len(x)),
            "distractor_accuracy": (dl.argmax(-1) == ans).float().mean().item(),
            "distractor_p_answer": dl.softmax(-1).gather(1, ans.unsqueeze(1)).mean().item()}


# --------------------------------------------------------------------------- ground truth (raw hooks)
def z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def mlp_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def parse_component(name: str) -> tuple[str, int, int | None]:
    if name.startswith("mlp"):
        return "mlp", int(name[3:]), None
    layer, head = name[1:].split("H")
    return "head", int(layer), int(head)


@torch.no_grad()
def cache_outputs(bridge: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every ``hook_z`` and ``hook_mlp_out`` of one forward (raw TransformerLens hooks)."""
    got: dict[str, torch.Tensor] = {}

    def keep(t: torch.Tensor, hook: Any) -> None:
        got[hook.name] = t.detach().clone()

    names = [f(l) for l in range(bridge.cfg.n_layers) for f in (z_hook, mlp_hook)]
    bridge.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in names])
    return got


@torch.no_grad()
def pd_of_subsets(bridge: Any, tokens: torch.Tensor, last: torch.Tensor, x: torch.Tensor,
                  digits: torch.Tensor, corrupted: dict[str, torch.Tensor],
                  subsets: list[tuple[str, ...]], chunk: int = 32) -> list[float]:
    """Mean PD with every component outside each subset patched from ``corrupted``.

    ``chunk`` subsets go through one forward: the prompts are repeated once per subset
    and each hook picks, row by row, the computed (clean) or the cached corrupted value.
    """
    n = tokens.shape[0]
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    above = torch.arange(10).unsqueeze(0) > x.unsqueeze(1)
    out: list[float] = []
    for start in range(0, len(subsets), chunk):
        group = subsets[start:start + chunk]
        k = len(group)
        keep_head = torch.zeros(k, n_layers, n_heads, dtype=torch.bool)
        keep_mlp = torch.zeros(k, n_layers, dtype=torch.bool)
        for i, s in enumerate(group):
            for name in s:
                kind, layer, head = parse_component(name)
                if kind == "mlp":
                    keep_mlp[i, layer] = True
                else:
                    keep_head[i, layer, head] = True

        def patch_z(z: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
            keep = keep_head[:, layer].repeat_interleave(n, 0)[:, None, :, None]   # [k*n, 1, heads, 1]
            src = corrupted[z_hook(layer)].repeat(k, 1, 1, 1)
            return torch.where(keep, z, src)

        def patch_mlp(m: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
            keep = keep_mlp[:, layer].repeat_interleave(n, 0)[:, None, None]        # [k*n, 1, 1]
            src = corrupted[mlp_hook(layer)].repeat(k, 1, 1)
            return torch.where(keep, m, src)

        hooks = []
        for layer in range(n_layers):
            hooks.append((z_hook(layer), lambda t, hook, L=layer: patch_z(t, hook, L)))
            hooks.append((mlp_hook(layer), lambda t, hook, L=layer: patch_mlp(t, hook, L)))
        logits = bridge.run_with_hooks(tokens.repeat(k, 1), fwd_hooks=hooks)
        rows = torch.arange(k * n)
        p = logits[rows, last.repeat(k)].double().softmax(-1)[:, digits].view(k, n, 10)
        pd = (p * above).sum(-1) - (p * ~above).sum(-1)                         # [k, n]
        out.extend(pd.mean(1).tolist())
    return out


def task_tensors(bridge: Any, task: C.Comparison) -> dict[str, torch.Tensor]:
    """Tokens of the task's prompts via the bridge's own tokenizer (raw, not PromptSet)."""
    clean = bridge.to_tokens(list(task.prompts.prompts))
    corrupt = bridge.to_tokens(list(task.prompts.corrupted.prompts))
    assert clean.shape == corrupt.shape
    last = torch.tensor([bridge.to_tokens(p).shape[1] - 1 for p in task.prompts.prompts])
    digits = torch.tensor([bridge.to_single_token(str(d)) for d in range(10)])
    return {"clean": clean, "corrupted": corrupt, "last": last, "x": torch.tensor(task.x), "digits": digits}


def all_subsets() -> list[tuple[str, ...]]:
    return [s for r in range(len(COMPONENTS) + 1) for s in itertools.combinations(COMPONENTS, r)]


@torch.no_grad()
def ground_truth(path: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    import tempfile

    from pytest_circuits.models import load_model

    with tempfile.TemporaryDirectory() as tmp:
        bridge = load_model(str(path), device="cpu", cache_dir=cache_dir or tmp)
        task = C.comparison(bridge, n=200, seed=0)
        t = task_tensors(bridge, task)
        corrupted = cache_outputs(bridge, t["corrupted"])
        subsets = all_subsets()
        t0 = time.perf_counter()
        pds = pd_of_subsets(bridge, t["clean"], t["last"], t["x"], t["digits"], corrupted, subsets)
        wall = time.perf_counter() - t0
        pd_of = dict(zip(subsets, pds))
        full, empty = pd_of[COMPONENTS], pd_of[()]
        rec = {s: (v - empty) / (full - empty) for s, v in pd_of.items()}
        ok = [s for s in subsets if rec[s] >= THRESHOLD]
        size = min(len(s) for s in ok)
        gt = max((s for s in ok if len(s) == size), key=lambda s: rec[s])
        necessity = {c: rec[gt] - rec[tuple(x for x in gt if x != c)] for c in gt}
        sufficiency_alone = {c: rec[(c,)] for c in COMPONENTS}
        # How much each component matters when it is the only one patched (all others clean).
        drop_alone = {c: 1.0 - rec[tuple(x for x in COMPONENTS if x != c)] for c in COMPONENTS}
        top = {}
        for r in range(len(COMPONENTS) + 1):
            best = sorted((s for s in subsets if len(s) == r), key=lambda s: -rec[s])[:5]
            top[str(r)] = [{"components": list(s), "recovered": rec[s]} for s in best]
        distractor = distractor_effects(bridge)
        uses = [c for c, e in distractor["patched"].items() if distractor["accuracy"] - e["accuracy"] >= 0.05]
        distractor["components"] = uses
        distractor["components_outside_circuit"] = [c for c in uses if c not in gt]
    return {
        "model_safetensors_sha256": hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest(),
        "task": "pytest_circuits.tasks.comparison.comparison(model, n=200, seed=0)",
        "metric": "mean over prompts of PD = sum_{d>X} p(d) - sum_{d<=X} p(d), digits 0..9, last position",
        "intervention": "components outside the subset: hook_z head slice / hook_mlp_out replaced by their "
                        "value on the corrupted (X=0) prompt at every position; embedding always clean",
        "components": list(COMPONENTS),
        "threshold": THRESHOLD,
        "pd_full": full, "pd_empty": empty,
        "circuit": list(gt), "circuit_recovered": rec[gt],
        "necessity": necessity,
        "recovered_alone": sufficiency_alone,
        "loss_when_only_it_is_patched": drop_alone,
        "top_subsets_by_size": top,
        "recovered": {"+".join(s) if s else "": rec[s] for s in subsets},
        "distractor": distractor,
        "seconds": wall,
    }


@torch.no_grad()
def distractor_effects(bridge: Any, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """Distractor accuracy and its drop when each component is patched from another row.

    The source of a component is its output on the prompt of row ``(i + 1) % n`` (another
    random word list, same length), at every position: raw hooks again.
    """
    ps = C.distractor(bridge, n=n, seed=seed)
    tokens = bridge.to_tokens(list(ps.prompts))
    ans = torch.tensor(ps.answer_ids)
    other = cache_outputs(bridge, tokens.roll(-1, 0))

    def acc_and_p(hooks: list) -> tuple[float, float]:
        logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks)[:, -1]
        p = logits.double().softmax(-1).gather(1, ans.unsqueeze(1)).squeeze(1)
        return (logits.argmax(-1) == ans).double().mean().item(), p.mean().item()

    base_acc, base_p = acc_and_p([])
    effects = {}
    for c in COMPONENTS:
        kind, layer, head = parse_component(c)
        if kind == "mlp":
            hooks = [(mlp_hook(layer), lambda t, hook, L=layer: other[mlp_hook(L)])]
        else:
            def fn(z: torch.Tensor, hook: Any, L: int = layer, h: int = head) -> torch.Tensor:
                z = z.clone()
                z[:, :, h] = other[z_hook(L)][:, :, h]
                return z
            hooks = [(z_hook(layer), fn)]
        acc, p = acc_and_p(hooks)
        effects[c] = {"accuracy": acc, "p_answer": p}
    return {"task": f"pytest_circuits.tasks.comparison.distractor(model, n={n}, seed={seed})",
            "intervention": "one component's output replaced by its value on another row's prompt",
            "accuracy": base_acc, "p_answer": base_p, "patched": effects}


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--ground-truth-only", action="store_true")
    args = ap.parse_args()
    out: Path = args.out
    if not args.ground_truth_only:
        t0 = time.perf_counter()
        model = train(out, seed=args.seed, steps=args.steps, log_every=500)
        wall = time.perf_counter() - t0
        model.save_pretrained(str(out))
        ev = evaluate(model, out)
        record = {"seed": args.seed, "steps": args.steps, **{k: v for k, v in DEFAULTS.items() if k != "steps"},
                  "architecture": ARCH, "train_seconds": round(wall, 1), "torch": torch.__version__,
                  "threads": 1, **ev,
                  "model_safetensors_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()}
        (out / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record, indent=2))
    gt = ground_truth(out)
    (out / "ground_truth.json").write_text(json.dumps(gt, indent=1) + "\n")
    print(f"ground truth ({gt['seconds']:.1f} s): {gt['circuit']} recovered {gt['circuit_recovered']:.3f}; "
          f"PD full {gt['pd_full']:.3f} empty {gt['pd_empty']:.3f}")
    print("necessity:", {k: round(v, 3) for k, v in gt["necessity"].items()})
    print("recovered alone:", {k: round(v, 3) for k, v in gt["recovered_alone"].items()})
    print("loss when only it is patched:", {k: round(v, 3) for k, v in gt["loss_when_only_it_is_patched"].items()})
    for r in range(1, 7):
        print(r, [(b["components"], round(b["recovered"], 3)) for b in gt["top_subsets_by_size"][str(r)][:3]])
    d = gt["distractor"]
    print(f"distractor accuracy {d['accuracy']:.3f}; patched:",
          {k: round(v["accuracy"], 3) for k, v in d["patched"].items()})


if __name__ == "__main__":
    main()
