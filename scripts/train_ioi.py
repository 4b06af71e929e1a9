"""Train the planted IOI model and its control, and compute their ground truth with raw hooks.

Writes two tiny Llama checkpoints (Hugging Face layout, the word-level tokenizer of
:func:`pytest_circuits.testing.make_tiny_checkpoint` with the IOI task's words,
``tasks.ioi.vocabulary()``), 2 layers x 4 heads, d_model 64, *attention only*: every MLP's
output projection is zero and frozen, so the MLPs write exactly 0 and whatever the model
does, its heads do. Training: 1000 steps of 128 prompts (one template per step), AdamW
(lr 3e-3, weight decay 0.1, 100 warm-up steps, linear decay), one CPU thread, deterministic
for a seed (about 1.5 minutes per model on a quiet core; byte-identical on re-running):

* ``tests/data/planted/ioi/``: trained on IOI prompts (:mod:`pytest_circuits.tasks.ioi`'s
  templates, names, places and objects, both orders): "When A and B went to the store, B
  gave a drink to" -> A, cross-entropy at the last position;
* ``tests/data/planted/ioi_control/``: the same architecture, seed and texts, but the
  target is the two names with probability 1/2 each (soft cross-entropy): the answer is not
  determined, so no head has a reason to move the IO rather than S.

Each folder gets ``TRAINING.json`` (settings, wall time, logit difference on 1024 fresh
prompts) and
``ground_truth.json``, computed on the :class:`TransformerBridge` that
:func:`pytest_circuits.load_model` returns with raw TransformerLens hooks only
(``run_with_cache`` / ``run_with_hooks``, no ``pytest_circuits`` measurement code) on the
detector's default prompts (``tasks.ioi(model, n=64, seed=0)``, whose texts are tokenized
again here with ``bridge.to_tokens``):

* per head, at END: mean attention to IO, S1, S2 (``hook_pattern``) and the direct effect
  on ``logit(IO) - logit(S)``: ``hook_z[END, h] @ W_O[h] . (W_U[:, IO] - W_U[:, S]) /
  ln_final.hook_scale[END]``;
* the name movers: heads with mean attention to IO >= 0.2 that exceeds their attention to
  S1 and S2 together by at least 0.1, and a mean direct effect of at least 0.1 logit (the
  paper's definition with the detector's default thresholds, and a clear margin on the
  preference for IO: the detector asks for interval bounds above 0 instead of the margin);
* S-inhibition: for each head before the last name mover with attention to S2 >= 0.2, the
  fall of the name movers' summed direct effect when its ``hook_z`` at END is replaced by
  its value on the ABC prompt;
* compensation: every name mover's ``hook_z`` replaced by its ABC value at every position,
  each other head's direct effect before and after (the clean scale kept).

    python scripts/train_ioi.py [--steps 1000] [--seed 0] [--only ioi|control]
    python scripts/train_ioi.py --ground-truth-only

What came out (2026-11-26): the IOI model (logit difference 16.8 on fresh prompts, IO above
S on every one) solves the task with the paper's circuit in miniature: L0H1 attends from
END to S2 (0.93) and writes against S, and, read by the layer-1 queries, steers the name
movers L1H0, L1H3, L1H2, L1H1 to the IO (attention 0.60, 0.51, 0.29, 0.23), which copy it
(direct effects 2.99, 2.81, 1.99, 1.52). The control (logit difference -0.07) attends to
IO and S1 alike: no name mover.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import re
import time
from pathlib import Path
from typing import Any

import torch

T = importlib.import_module("pytest_circuits.tasks.ioi")   # the module (tasks.ioi may be the builder)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "planted" / "ioi"
OUT_CONTROL = ROOT / "tests" / "data" / "planted" / "ioi_control"
ARCH = dict(n_layers=2, n_heads=4, d_model=64, d_mlp=128)
DEFAULTS = dict(steps=1000, batch=128, lr=3e-3, weight_decay=0.1, warmup=100)
GT_N, GT_SEED = 64, 0
GT_ATTENTION, GT_PREFERENCE, GT_EFFECT = 0.2, 0.1, 0.1


# --------------------------------------------------------------------------- data
class Data:
    """Token-id templates with name/place/object slots, and a seeded batch sampler."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.bos = tokenizer.bos_token_id
        self.names = torch.tensor([self.one(w) for w in T.NAMES])
        self.places = torch.tensor([self.one(w) for w in T.PLACES])
        self.objects = torch.tensor([self.one(w) for w in T.OBJECTS])
        self.templates = []        # (ids with -1.. slots, slot kinds)
        for t in T.TEMPLATES:
            ids, slots = [self.bos], []
            for piece in re.split(r"(\{[a-zA-Z]+\})", t):
                if piece.startswith("{"):
                    slots.append((len(ids), piece[1:-1]))
                    ids.append(-1)
                elif piece.strip():
                    ids += self.tok.encode(piece, add_special_tokens=False)
            self.templates.append((torch.tensor(ids), slots))

    def one(self, word: str) -> int:
        ids = self.tok.encode(" " + word, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] != self.tok.unk_token_id, (word, ids)
        return ids[0]

    def batch(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` prompts of one random template: (tokens [n, len], IO ids [n], S ids [n])."""
        ids, slots = self.templates[int(torch.randint(len(self.templates), (1,), generator=g))]
        pick = torch.rand(n, len(self.names), generator=g).argsort(1)[:, :2]
        io, s = self.names[pick[:, 0]], self.names[pick[:, 1]]
        abba = torch.rand(n, generator=g) < 0.5
        a, b = torch.where(abba, io, s), torch.where(abba, s, io)
        toks = ids.repeat(n, 1)
        fill = {"A": a, "B": b, "S": s,
                "place": self.places[torch.randint(len(self.places), (n,), generator=g)],
                "object": self.objects[torch.randint(len(self.objects), (n,), generator=g)]}
        for pos, kind in slots:
            toks[:, pos] = fill[kind]
        return toks, io, s


# --------------------------------------------------------------------------- training
def train(path: Path, *, control: bool, seed: int = 0, steps: int = DEFAULTS["steps"],
          batch: int = DEFAULTS["batch"], lr: float = DEFAULTS["lr"],
          weight_decay: float = DEFAULTS["weight_decay"], warmup: int = DEFAULTS["warmup"],
          log_every: int = 0) -> Any:
    """Create the checkpoint folder at ``path`` and train it (one CPU thread, deterministic)."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from pytest_circuits.testing import make_tiny_checkpoint

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        make_tiny_checkpoint(path, seed=seed, words=T.vocabulary(), **ARCH)
        model = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        for layer in model.model.layers:       # attention only: every MLP writes exactly 0
            with torch.no_grad():
                layer.mlp.down_proj.weight.zero_()
            for p in layer.mlp.parameters():
                p.requires_grad_(False)
        model.train()
        data = Data(PreTrainedTokenizerFast.from_pretrained(str(path)))
        g = torch.Generator().manual_seed(seed)
        live = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(live, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps) if steps else 1.0)
        for step in range(steps):
            toks, io, s = data.batch(batch, g)
            logp = model(input_ids=toks).logits[:, -1].log_softmax(-1)
            rows = torch.arange(len(io))
            if control:
                loss = -(0.5 * logp[rows, io] + 0.5 * logp[rows, s]).mean()
            else:
                loss = -logp[rows, io].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if log_every and (step % log_every == 0 or step == steps - 1):
                print(f"step {step:5d}  loss {loss.item():.4f}", flush=True)
        model.eval()
        return model
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


@torch.no_grad()
def evaluate(model: Any, path: Path, seed: int = 1, n: int = 1024) -> dict[str, float]:
    """Logit difference IO - S and accuracy (IO above S) on fresh prompts (HF model)."""
    from transformers import PreTrainedTokenizerFast

    data = Data(PreTrainedTokenizerFast.from_pretrained(str(path)))
    g = torch.Generator().manual_seed(seed)
    lds, accs = [], []
    for _ in range(n // 128):
        toks, io, s = data.batch(128, g)
        logits = model(input_ids=toks).logits[:, -1]
        rows = torch.arange(len(io))
        ld = logits[rows, io] - logits[rows, s]
        lds.append(ld)
        accs.append((ld > 0).float())
    return {"logit_diff": torch.cat(lds).mean().item(), "io_above_s": torch.cat(accs).mean().item()}


# --------------------------------------------------------------------------- ground truth (raw hooks)
def positions(tokens: torch.Tensor, io: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """IO, S1, S2 and END positions found in the raw token ids (no padding: one template length)."""
    out: dict[str, list[int]] = {"io": [], "s1": [], "s2": [], "end": []}
    for i in range(tokens.shape[0]):
        row = tokens[i].tolist()
        out["io"].append(row.index(int(io[i])))
        s_at = [j for j, x in enumerate(row) if x == int(s[i])]
        assert len(s_at) == 2, (i, row)
        out["s1"].append(s_at[0])
        out["s2"].append(s_at[1])
        out["end"].append(len(row) - 1)
    return {k: torch.tensor(v) for k, v in out.items()}


@torch.no_grad()
def ground_truth(path: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """Per-head attention and direct effects, name movers, S-inhibition and compensation,
    with raw hooks on the bridge (see the module docstring)."""
    import tempfile

    from pytest_circuits.models import load_model

    with tempfile.TemporaryDirectory() as tmp:
        bridge = load_model(str(path), device="cpu", cache_dir=cache_dir or tmp)
        ps = T.ioi(bridge, n=GT_N, seed=GT_SEED)
        # one template length per forward: group the prompts by their token length
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(ps.prompts):
            groups.setdefault(bridge.to_tokens(p).shape[1], []).append(i)
        L, nh = bridge.cfg.n_layers, bridge.cfg.n_heads
        n = len(ps)
        attn = {k: torch.zeros(L, nh, n, dtype=torch.float64) for k in ("io", "s1", "s2")}
        de = torch.zeros(L, nh, n, dtype=torch.float64)
        ld = torch.zeros(n, dtype=torch.float64)
        W_O = bridge.W_O.detach().double()                                  # [L, H, d_head, d]
        W_U = bridge.W_U.detach().double()
        runs = []
        for length, idx in groups.items():
            idx_t = torch.tensor(idx)
            toks = bridge.to_tokens([ps.prompts[i] for i in idx])
            ctoks = bridge.to_tokens([ps.corrupted.prompts[i] for i in idx])
            io = torch.tensor([bridge.to_single_token(ps.answers[i]) for i in idx])
            s = torch.tensor([bridge.to_single_token(ps.foils[i]) for i in idx])
            pos = positions(toks, io, s)
            logits, cache = bridge.run_with_cache(toks)
            _, ccache = bridge.run_with_cache(ctoks)
            rows = torch.arange(len(idx))
            end = pos["end"]
            ld[idx_t] = (logits[rows, end, io] - logits[rows, end, s]).double()
            w = (W_U[:, io] - W_U[:, s]).T                                    # [m, d]
            scale = cache["ln_final.hook_scale"][rows, end].double().reshape(-1)
            for l in range(L):
                pat = cache[f"blocks.{l}.attn.hook_pattern"][rows, :, end]     # [m, H, k]
                for k in ("io", "s1", "s2"):
                    attn[k][l][:, idx_t] = pat[rows, :, pos[k]].double().T
                z = cache[f"blocks.{l}.attn.hook_z"][rows, end].double()       # [m, H, d_head]
                out = torch.einsum("mhd,hde->mhe", z, W_O[l])
                de[l][:, idx_t] = ((out * w.unsqueeze(1)).sum(-1) / scale.unsqueeze(1)).T
            runs.append(dict(idx=idx_t, toks=toks, io=io, s=s, end=end, w=w, scale=scale, ccache=ccache))
        mean_ld = float(ld.mean())
        movers = [(l, h) for l in range(L) for h in range(nh)
                  if float(attn["io"][l, h].mean()) >= GT_ATTENTION
                  and float((attn["io"][l, h] - attn["s1"][l, h] - attn["s2"][l, h]).mean()) >= GT_PREFERENCE
                  and float(de[l, h].mean()) >= GT_EFFECT]

        def movers_de_under(run: dict, hooks: list, heads: list) -> torch.Tensor:
            """Summed direct effect of ``heads`` at END with ``hooks`` applied (clean scale)."""
            got: dict[int, torch.Tensor] = {}

            def keep(t: torch.Tensor, hook: Any) -> None:
                got[int(hook.name.split(".")[1])] = t.detach().clone()

            layers = sorted({l for l, _ in heads})
            bridge.run_with_hooks(run["toks"], fwd_hooks=hooks + [(f"blocks.{l}.attn.hook_z", keep) for l in layers])
            rows = torch.arange(run["toks"].shape[0])
            total = torch.zeros(len(rows), dtype=torch.float64)
            for l, h in heads:
                z = got[l][rows, run["end"], h].double()
                total += ((z @ W_O[l, h]) * run["w"]).sum(-1)
            return total / run["scale"]

        def patch_z(layer: int, head: int, run: dict, end_only: bool) -> tuple[str, Any]:
            src = run["ccache"][f"blocks.{layer}.attn.hook_z"]

            def fn(z: torch.Tensor, hook: Any) -> torch.Tensor:
                z = z.clone()
                if end_only:
                    rows = torch.arange(z.shape[0])
                    z[rows, run["end"], head] = src[rows, run["end"], head]
                else:
                    z[:, :, head] = src[:, :, head]
                return z
            return (f"blocks.{layer}.attn.hook_z", fn)

        sinh: dict[str, float] = {}
        if movers:
            last = max(l for l, _ in movers)
            for l in range(last):
                for h in range(nh):
                    if float(attn["s2"][l, h].mean()) < GT_ATTENTION or (l, h) in movers:
                        continue
                    down = [m for m in movers if m[0] > l]
                    drop = torch.zeros(n, dtype=torch.float64)
                    for run in runs:
                        before = movers_de_under(run, [], down)
                        after = movers_de_under(run, [patch_z(l, h, run, True)], down)
                        drop[run["idx"]] = before - after
                    sinh[f"L{l}H{h}"] = float(drop.mean())
        comp: dict[str, Any] = {}
        if movers:
            others = [(l, h) for l in range(L) for h in range(nh) if (l, h) not in movers]
            delta = torch.zeros(L, nh, n, dtype=torch.float64)
            for run in runs:
                hooks = [patch_z(l, h, run, False) for l, h in movers]
                for l, h in others:
                    after = movers_de_under(run, hooks, [(l, h)])
                    delta[l, h][run["idx"]] = after - de[l, h][run["idx"]]
            lost = torch.zeros(n, dtype=torch.float64)
            for run in runs:
                hooks = [patch_z(l, h, run, False) for l, h in movers]
                lost[run["idx"]] = (sum(de[l, h][run["idx"]] for l, h in movers)
                                    - movers_de_under(run, hooks, movers))
            comp = {"lost": float(lost.mean()),
                    "delta_de": {f"L{l}H{h}": float(delta[l, h].mean()) for l, h in others},
                    "heads_net_over_lost": float(sum(delta[l, h] for l, h in others).mean() / lost.mean())}
    heads = {f"L{l}H{h}": {"attn_io": float(attn["io"][l, h].mean()), "attn_s1": float(attn["s1"][l, h].mean()),
                           "attn_s2": float(attn["s2"][l, h].mean()), "de": float(de[l, h].mean())}
             for l in range(L) for h in range(nh)}
    return {
        "model_safetensors_sha256": hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest(),
        "prompts": f"pytest_circuits.tasks.ioi.ioi(model, n={GT_N}, seed={GT_SEED})",
        "how": "raw TransformerLens hooks on the bridge: hook_pattern, hook_z, ln_final.hook_scale, W_O, W_U",
        "logit_diff": mean_ld,
        "name_mover_rule": f"mean attention END->IO >= {GT_ATTENTION}, mean attention END->IO minus END->S1 "
                           f"and END->S2 >= {GT_PREFERENCE}, mean DE(IO - S) >= {GT_EFFECT}",
        "name_movers": [f"L{l}H{h}" for l, h in movers],
        "s_inhibition_scores": sinh,
        "compensation": comp,
        "heads": heads,
    }


# --------------------------------------------------------------------------- main
def build(out: Path, control: bool, seed: int, steps: int) -> None:
    t0 = time.perf_counter()
    model = train(out, control=control, seed=seed, steps=steps, log_every=250)
    wall = time.perf_counter() - t0
    model.save_pretrained(str(out))
    record = {"control": control, "seed": seed, "steps": steps,
              **{k: v for k, v in DEFAULTS.items() if k != "steps"}, "architecture": ARCH,
              "target": "IO and S with probability 1/2 each" if control else "IO",
              "train_seconds": round(wall, 1), "torch": torch.__version__, "threads": 1,
              **evaluate(model, out),
              "model_safetensors_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()}
    (out / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--out-control", type=Path, default=OUT_CONTROL)
    ap.add_argument("--only", choices=("ioi", "control"), default=None)
    ap.add_argument("--ground-truth-only", action="store_true")
    args = ap.parse_args()
    targets = [(args.out, False), (args.out_control, True)]
    if args.only:
        targets = [t for t in targets if t[1] == (args.only == "control")]
    for out, control in targets:
        if not args.ground_truth_only:
            build(out, control, args.seed, args.steps)
        gt = ground_truth(out)
        (out / "ground_truth.json").write_text(json.dumps(gt, indent=1) + "\n")
        print(f"{out.name}: logit diff {gt['logit_diff']:.3f}; name movers {gt['name_movers']}; "
              f"S-inhibition {gt['s_inhibition_scores']}")
        top = sorted(gt["heads"].items(), key=lambda kv: -abs(kv[1]["de"]))[:6]
        for k, v in top:
            print(f"  {k}: " + ", ".join(f"{a} {b:+.3f}" for a, b in v.items()))
        if gt["compensation"]:
            c = gt["compensation"]
            print(f"  compensation: lost {c['lost']:.3f}, heads net/lost {c['heads_net_over_lost']:.3f}, top "
                  + str(sorted(c["delta_de"].items(), key=lambda kv: -kv[1])[:4]))


if __name__ == "__main__":
    main()
