"""Planning ahead: pre-caching versus breadcrumbs, on a small synthetic transformer.

After Wu, Morris & Levine 2024, "Do language models plan for future tokens?"
(arXiv:2404.00859). A transformer may compute something at position ``j`` *because*
a later position ``t > j`` will need it ("pre-caching"), or the features useful at
``t`` may simply be what was useful at ``j`` anyway ("breadcrumbs"). The paper separates
the two with **myopic training**, which removes the gradient through which a later
position's loss trains an earlier position's computation.

Myopic attention (exactly the paper's rule)
-------------------------------------------
When query position ``i`` attends to key position ``j``:

* ``j < i``: the key and value are computed from the *detached* (stop-gradient) hidden
  state ``sg(h_j)``;
* ``j = i``: they are computed from the live ``h_i``.

Implemented by mask-combining two computations of K and V from the same numbers::

    S[i, j]   = q_i . k_j^live / sqrt(d_head)   if j == i   else   q_i . sg(k_j) / sqrt(d_head)
    A         = softmax_j( S + causal mask )
    out_i     = A[i, i] v_i^live + sum_{j<i} A[i, j] sg(v_j)

(``sg(k_j)`` is ``W_K LN(sg(h_j))``, ``h_j`` the residual entering the block: only the
hidden state is detached, the parameters LN, ``W_K``, ``W_V`` still get gradient from
every pair).
The forward values are identical to the vanilla model's; only gradients differ. In a
myopic model every path from an input at position ``s`` to the output at ``t > s`` passes
through a detached K/V, so ``d loss_t / d x_s = 0`` exactly (``gradient_to_past``).

What is measured
----------------
Synthetic task: ``x_n ~ N(0, 1)`` i.i.d., target ``y_n = sum_{i=1..10} sin(10 x_{n-i})``
(terms with ``n - i < 0`` omitted). The input at position ``n`` is the scalar ``x_n``
(linearly embedded, plus a learned positional embedding); the output at ``n`` is a
linear regression of ``y_n``; loss = MSE. ``y_n`` does not depend on ``x_n``, so position
``n`` has no use for ``sin(10 x_n)`` itself: computing it there is pure pre-caching for
positions ``n+1..n+10``. A myopic model cannot learn that and stays near the trivial
loss ``E[y_n^2]`` (the best constant predictor is 0; ``Var(sin(10 x)) = (1 - e^-200)/2``,
so about ``0.5 * min(n, 10)`` per position).

* **Myopia gap** (:func:`myopia_gap`), per held-out sequence ``s``::

      gap_s = mean_n loss_myopic(s, n) - mean_n loss_vanilla(s, n)

  the paired difference of per-sequence mean MSE (same sequences), as a
  :class:`~pytest_circuits.measurement.Measurement` over sequences (BCa bootstrap).
  A large gap means the vanilla model relies on pre-caching.
* **Probe R²** (:func:`probe_r2`): a ridge probe ``sin(10 x_n) ~ w . r_n + b`` from the
  residual stream ``r_n`` *after block* ``layer`` (0-based: ``layer=0`` is the output of
  the first block, the paper's "layer 1"; ``layer=-1`` is the embedding) at position
  ``n``, fitted on the positions of ``n_train`` sequences from one seed and scored on
  ``n_test`` held-out sequences from another seed::

      R² = 1 - sum_s SSE_s / sum_s SST_s,   SST_s = sum_n (t_{s,n} - mean of all held-out t)^2

  returned with :meth:`Measurement.from_ratio` (numerator ``SST_s - SSE_s``, denominator
  ``SST_s``): a paired percentile bootstrap over held-out *sequences*, the independent
  units. The probe's weights are fixed; the interval covers test-set sampling, not the
  variability of the probe fit (with thousands of training positions and ``d_model``
  features that is small).

Assumptions: one scalar input per position, CPU float32; training draws a fresh batch
every step from a seeded ``torch.Generator`` (so "held out" means another seed, and
i.i.d. Gaussian inputs never repeat). Training is deterministic on CPU for a given seed
(single thread, deterministic algorithms).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CircuitsError, bad
from ..measurement import Measurement

WINDOW = 10          # y_n sums the sin of the previous WINDOW inputs
FREQ = 10.0          # ... of sin(FREQ * x)
TRAIN_DATA_OFFSET = 1_000_003   # data seed = seed + offset, so weights and data never share a stream
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ----------------------------------------------------------------------------- data
def make_batch(n_seqs: int, seq_len: int, generator: torch.Generator | int,
               window: int = WINDOW, freq: float = FREQ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of shape ``[n_seqs, seq_len]``: ``x ~ N(0,1)``, ``y_n = sum_{i=1..window} sin(freq x_{n-i})``.

    ``generator`` is a ``torch.Generator`` (advanced by the draw) or an int seed.
    """
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    x = torch.randn(n_seqs, seq_len, generator=generator)
    return x, target(x, window, freq)


def target(x: torch.Tensor, window: int = WINDOW, freq: float = FREQ) -> torch.Tensor:
    """``y_n = sum_{i=1..window, n-i>=0} sin(freq x_{n-i})`` along the last dimension."""
    s = torch.sin(freq * x)
    y = torch.zeros_like(x)
    for i in range(1, window + 1):
        if i < x.shape[-1]:
            y[..., i:] += s[..., :-i]
    return y


def sin_feature(x: torch.Tensor) -> torch.Tensor:
    """The quantity a pre-caching model computes at position n: ``sin(FREQ x_n)``."""
    return torch.sin(FREQ * x)


# ----------------------------------------------------------------------------- model
@dataclass(frozen=True)
class Config:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 256
    seq_len: int = 32
    myopic: bool = False


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.n_heads, self.d_head).transpose(1, 2)    # [b, h, n, d]

    def forward(self, h: torch.Tensor, ln: nn.LayerNorm, myopic: bool) -> torch.Tensor:
        """Attention on ``ln(h)``; ``h`` is the raw residual (so a myopic model can detach it)."""
        b, n, d = h.shape
        q, k, v = (self._split(t) for t in self.qkv(ln(h)).split(d, dim=-1))
        scale = 1.0 / math.sqrt(self.d_head)
        causal = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
        if not myopic:
            s = (q @ k.transpose(-1, -2)) * scale
            a = s.masked_fill(~causal, float("-inf")).softmax(-1)
            z = a @ v
        else:
            # K/V of every position from the detached hidden state sg(h_j); the diagonal
            # (j == i) from the live one. Only the hidden state is detached: the parameters
            # (LayerNorm, W_K, W_V) stay live, so they are still trained by every pair, and
            # what is removed is exactly the gradient from position i's loss into position
            # j's computation.
            _, k_sg, v_sg = (self._split(t) for t in self.qkv(ln(h.detach())).split(d, dim=-1))
            diag = torch.eye(n, dtype=torch.bool, device=h.device)
            s_live = (q * k).sum(-1, keepdim=True) * scale                 # [b, h, n, 1]: q_i . k_i
            s = (q @ k_sg.transpose(-1, -2)) * scale
            s = torch.where(diag, s_live, s)
            a = s.masked_fill(~causal, float("-inf")).softmax(-1)
            a_diag = a.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)            # [b, h, n, 1]
            z = (a.masked_fill(diag, 0.0) @ v_sg) + a_diag * v
        return self.out(z.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), nn.ReLU(),
                                 nn.Linear(cfg.d_mlp, cfg.d_model))

    def forward(self, h: torch.Tensor, myopic: bool) -> torch.Tensor:
        h = h + self.attn(h, self.ln1, myopic)
        return h + self.mlp(self.ln2(h))


class PlanningTransformer(nn.Module):
    """Causal pre-LN transformer: scalar input per position -> scalar regression output."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(1, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(cfg.seq_len, cfg.d_model) * 0.1)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, 1)

    @property
    def myopic(self) -> bool:
        return self.cfg.myopic

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream entering block 0, ``[b, n, d_model]``."""
        n = x.shape[-1]
        if n > self.cfg.seq_len:
            raise CircuitsError(bad("x", f"sequence length {n}", f"at most seq_len={self.cfg.seq_len}"))
        return self.embed(x.unsqueeze(-1)) + self.pos[:n]

    def run_from(self, h: torch.Tensor, start: int = 0,
                 keep: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run blocks ``start..`` on the residual ``h``; the prediction and (``keep``) each block's output."""
        resid = []
        for blk in self.blocks[start:]:
            h = blk(h, self.cfg.myopic)
            if keep:
                resid.append(h)
        return self.unembed(self.ln_f(h)).squeeze(-1), resid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_from(self.embed_input(x))[0]

    @torch.no_grad()
    def residuals(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[embedding, after block 0, after block 1, ...]``, each ``[b, n, d_model]``."""
        h0 = self.embed_input(x)
        return [h0] + self.run_from(h0, keep=True)[1]


# ----------------------------------------------------------------------------- training
class _Deterministic:
    """Single thread and deterministic algorithms inside the block; previous settings after."""

    def __enter__(self) -> "_Deterministic":
        self.threads = torch.get_num_threads()
        self.det = torch.are_deterministic_algorithms_enabled()
        self.warn = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.use_deterministic_algorithms(self.det, warn_only=self.warn)
        torch.set_num_threads(self.threads)


def train(myopic: bool, seed: int = 0, steps: int = 3000, *, batch: int = 64, lr: float = 3e-3,
          warmup: int = 100, weight_decay: float = 0.0, cfg: Config | None = None,
          log_every: int = 0) -> PlanningTransformer:
    """Train a model on the synthetic task; deterministic on CPU for a given ``seed``.

    Weights are initialised under ``torch.manual_seed(seed)``; batches come from a
    ``torch.Generator`` seeded ``seed + TRAIN_DATA_OFFSET`` (a fresh batch every step).
    AdamW with linear warm-up and cosine decay to 0; gradient norm clipped at 1.
    The global RNG state and thread / determinism settings are restored afterwards.
    """
    cfg = Config(**{**asdict(cfg or Config()), "myopic": bool(myopic)})
    rng_state = torch.get_rng_state()
    with _Deterministic():
        try:
            torch.manual_seed(seed)
            model = PlanningTransformer(cfg)
            gen = torch.Generator().manual_seed(seed + TRAIN_DATA_OFFSET)
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                                    betas=(0.9, 0.98))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
            model.train()
            for step in range(steps):
                x, y = make_batch(batch, cfg.seq_len, gen)
                loss = F.mse_loss(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                if log_every and (step % log_every == 0 or step == steps - 1):
                    print(f"[{'myopic' if myopic else 'vanilla'}] step {step} loss {loss.item():.4f}", flush=True)
        finally:
            torch.set_rng_state(rng_state)
    model.eval()
    return model


# ----------------------------------------------------------------------------- save / load
def save(model: PlanningTransformer, path: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into the folder ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    (path / CONFIG_NAME).write_text(json.dumps({"architecture": "PlanningTransformer",
                                                "task": f"y_n = sum_(i=1..{WINDOW}) sin({FREQ:g} x_(n-i))",
                                                **asdict(model.cfg)}, indent=2) + "\n")
    return path


def load(path: str | Path) -> PlanningTransformer:
    """Load a folder written by :func:`save` (safetensors only)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise CircuitsError(bad("path", str(path), f"a folder with {CONFIG_NAME} and {WEIGHTS_NAME}"))
    raw = json.loads((path / CONFIG_NAME).read_text())
    cfg = Config(**{k: raw[k] for k in Config.__dataclass_fields__ if k in raw})
    model = PlanningTransformer(cfg)
    model.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    model.eval()
    return model


def _name(model: PlanningTransformer) -> str:
    return "planning-myopic" if model.myopic else "planning-vanilla"


# ----------------------------------------------------------------------------- measurements
@torch.no_grad()
def eval_loss(model: PlanningTransformer, n_seqs: int = 256, seed: int = 12345,
              seq_len: int | None = None) -> torch.Tensor:
    """Per-sequence mean squared error ``[n_seqs]`` on ``n_seqs`` fresh sequences from ``seed``."""
    x, y = make_batch(n_seqs, seq_len or model.cfg.seq_len, seed)
    return ((model(x) - y) ** 2).mean(-1)


def trivial_loss(n_seqs: int = 256, seed: int = 12345, seq_len: int = 32) -> torch.Tensor:
    """Per-sequence MSE of the best constant predictor (0, the mean of y): ``mean_n y_n^2``."""
    _, y = make_batch(n_seqs, seq_len, seed)
    return (y ** 2).mean(-1)


def loss(model: PlanningTransformer, n_seqs: int = 256, seed: int = 12345,
         name: str | None = None) -> Measurement:
    """:func:`eval_loss` as a Measurement over sequences."""
    return Measurement.from_values(name or "planning.loss", eval_loss(model, n_seqs, seed), model=_name(model),
                                   provenance={"n_seqs": n_seqs, "seed": seed})


def myopia_gap(vanilla: PlanningTransformer, myopic: PlanningTransformer, n_seqs: int = 256,
               seed: int = 12345) -> Measurement:
    """Per held-out sequence ``mean loss(myopic) - mean loss(vanilla)``, paired, as a Measurement."""
    if vanilla.cfg.seq_len != myopic.cfg.seq_len:
        raise CircuitsError(bad("myopic", f"seq_len {myopic.cfg.seq_len}", f"vanilla's seq_len {vanilla.cfg.seq_len}"))
    lv, lm = eval_loss(vanilla, n_seqs, seed), eval_loss(myopic, n_seqs, seed)
    return Measurement.from_values(
        "planning.myopia_gap", lm - lv, model="planning-myopic-vs-vanilla",
        provenance={"n_seqs": n_seqs, "seed": seed, "loss_vanilla": float(lv.mean()),
                    "loss_myopic": float(lm.mean()), "source": "arXiv:2404.00859"})


@torch.no_grad()
def probe_r2(model: PlanningTransformer, layer: int = 0,
             target_fn: Callable[[torch.Tensor], torch.Tensor] = sin_feature, *,
             n_train: int = 512, n_test: int = 256, train_seed: int = 777, test_seed: int = 12345,
             ridge: float = 1e-3, positions: slice | None = None) -> Measurement:
    """Held-out R² of a ridge probe from the residual after block ``layer`` to ``target_fn(x)``.

    ``layer`` is 0-based (0 = after the first block, the paper's "layer 1"; -1 = the
    embedding). ``target_fn`` maps the inputs ``x [b, n]`` to the per-position target
    ``[b, n]`` (default ``sin(10 x_n)``). The probe (with bias) is fit on all positions
    (or ``positions``) of ``n_train`` sequences drawn with ``train_seed``, on standardised
    features with ridge penalty ``ridge * n_positions``; R² is pooled over ``n_test``
    sequences from ``test_seed`` and its interval is a paired bootstrap over those sequences.
    """
    if not -1 <= layer < model.cfg.n_layers:
        raise CircuitsError(bad("layer", layer, f"-1 (embedding) or a block in 0..{model.cfg.n_layers - 1}"))
    pos = positions or slice(None)

    def feats(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = make_batch(n, model.cfg.seq_len, seed)
        r = model.residuals(x)[layer + 1][:, pos].double()           # [b, n, d]
        return r, target_fn(x)[:, pos].double()

    r_tr, t_tr = feats(n_train, train_seed)
    X = r_tr.reshape(-1, r_tr.shape[-1])
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-8)
    X = torch.cat([(X - mu) / sd, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1)
    reg = ridge * X.shape[0] * torch.eye(X.shape[1], dtype=X.dtype)
    reg[-1, -1] = 0.0                                                   # bias not penalised
    w = torch.linalg.solve(X.T @ X + reg, X.T @ t_tr.reshape(-1))

    r_te, t_te = feats(n_test, test_seed)
    Xt = torch.cat([(r_te - mu) / sd, torch.ones(*r_te.shape[:2], 1, dtype=r_te.dtype)], -1)
    pred = Xt @ w                                                       # [b, n]
    sse = ((pred - t_te) ** 2).sum(-1)
    sst = ((t_te - t_te.mean()) ** 2).sum(-1)
    return Measurement.from_ratio(
        f"planning.probe_r2[L{layer}]", sst - sse, sst, model=_name(model),
        provenance={"layer": layer, "convention": "0-based: residual after block `layer`",
                    "target": getattr(target_fn, "__name__", str(target_fn)), "n_train": n_train,
                    "train_seed": train_seed, "n_test": n_test, "test_seed": test_seed, "ridge": ridge,
                    "train_r2": float(1 - ((X @ w - t_tr.reshape(-1)) ** 2).sum()
                                      / ((t_tr - t_tr.mean()) ** 2).sum())})


def gradient_to_past(model: PlanningTransformer, x: torch.Tensor, t: int | None = None,
                     at: int = 0) -> torch.Tensor:
    """Gradient of the loss at position ``t`` w.r.t. the residual stream entering block ``at``.

    ``at=0`` is the embedded input (``embed(x) + pos``); ``at=k`` the output of block
    ``k-1``. Returns ``[b, n, d_model]``; rows ``s < t`` are what a later position's loss
    sends back to earlier positions (exactly 0 in a myopic model), row ``t`` its own.
    ``t`` defaults to the last position. Model weights receive no gradient.
    """
    x = x.reshape(1, -1) if x.dim() == 1 else x
    n = x.shape[-1]
    t = n - 1 if t is None else t
    if not 0 <= t < n:
        raise CircuitsError(bad("t", t, f"a position in 0..{n - 1}"))
    if not 0 <= at < model.cfg.n_layers:
        raise CircuitsError(bad("at", at, f"a block in 0..{model.cfg.n_layers - 1}"))
    y = target(x)
    with torch.no_grad():
        h = model.embed_input(x)
        for blk in model.blocks[:at]:
            h = blk(h, model.cfg.myopic)
    h = h.detach().requires_grad_(True)
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        pred, _ = model.run_from(h, at)
        ((pred[:, t] - y[:, t]) ** 2).sum().backward()
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return h.grad.detach()
