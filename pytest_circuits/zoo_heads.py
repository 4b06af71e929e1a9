"""The decoy zoo's attention-head checkpoints: induction, previous-token, duplicate-token and
copy-suppression heads, each planted with plain weights (no training), and decoys that have
one defining property of a mechanism but not the others (see :mod:`pytest_circuits.zoo`).

**Construction.** Every checkpoint is a tiny GPT-2 or Llama whose residual stream is read in
named blocks of one-hot coordinates (for GPT-2 the coordinates are orthonormal vectors with
mean 0, so LayerNorm's centring changes nothing):

* ``C`` (one coordinate, size 20 in every token's embedding: it dominates the residual norm,
  so the norms rescale almost uniformly; BOS alone embeds as ``20 TOK(bos)`` without ``C``, and
  position 0 has no positional term, so no constant query or key term reaches BOS), ``TOK`` (the token, one coordinate per vocabulary
  entry), ``PREV`` (the previous token, written by a previous-token head), ``ANS`` (the
  prediction: the unembedding reads only this block), ``DUP`` (what a duplicate-token head
  writes), ``DEAD`` (a block nothing reads), ``NOISE`` (where background heads write), and
  for GPT-2 ``POS``: learned positions ``(cos p theta_m, sin p theta_m)`` for six frequencies.
* a head's attention score is a sum of planted terms (times the score weights): *token
  match* (the query's token in one block equals the key's in another: an induction head
  matches ``TOK`` against ``PREV``, copy suppression ``ANS`` against ``TOK``, a
  duplicate-token head ``TOK`` against ``TOK``), *offset* (a positional kernel peaked at
  ``key = query - delta``: rotary embeddings of a constant query/key for Llama, the learned
  positions rotated by ``delta theta`` for GPT-2), and *sink* (a constant score on the
  first position, BOS). Scores are large (20-120), so attention is nearly hard, except
  where a sink shares it on purpose (55% on BOS: a sink score 0.2 above the target's).
* a head's value reads the ``TOK`` block (the token at the attended position; specials
  excluded, so attending BOS moves nothing) or ``C`` (a value with no token in it), and its
  output writes that into one block with a gain (negative: suppression).
* every MLP is zero; unused heads are *background* heads (uniform attention, writing the
  attended tokens into ``NOISE`` with gain 0.3), so that ablating one is never a no-op.
* the unembedding reads ``ANS``: a token predicted with weight 1 gets logit 10.

:data:`SPECS` holds the checkpoints and :data:`ENTRIES` the registered zoo entries (several
entries, one per check, may share a checkpoint); :func:`build` writes one (with its word-level
tokenizer and a ``ZOO.json`` of what was planted). Each entry's ``verify`` checks the ground
truth with Hugging Face ``transformers`` and raw torch only (eager attention, hooks on the
attention output projection and the final norm; :class:`_Raw`): no pytest-circuits code. It
checks the properties the entry's role says its planted heads have (pattern, effect on the
token, output that moves the token, loss when ablated) and lack, and for a decoy or a control
that no head of the checkpoint has the whole mechanism.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable


SPECIALS = ("<unk>", "<bos>", "<pad>")
WORDS = tuple(
    "apple bread chair dance eagle field grape house island jungle kettle lemon market night "
    "ocean pencil queen river stone table uncle violin water yellow zebra cloud forest garden "
    "honey".split())
CODES = tuple(f"t{i}" for i in range(len(WORDS)))      # a vocabulary with no alphabetic token
EMBED_C = 20.0         # size of the constant coordinate C in every embedding
LOGIT = 10.0           # the logit of a token predicted with weight 1 in ANS
GPT2_FREQS = (1.0, 0.62, 0.38, 0.24, 0.15, 0.09)      # learned-position frequencies (radians)
ROPE_THETA = 1e8       # Llama: pairs 14.. rotate by < 0.03 rad over 64 positions (token matching)
ROPE_OFFSET_PAIRS = 5  # Llama: pairs 0..4 (1, 0.56, 0.32, 0.18, 0.1 rad per position) carry offsets
LLAMA_HEAD_DIM = 64
BACKGROUND_GAIN = 0.3


@dataclass(frozen=True)
class Head:
    """One planted head (see the module docstring). ``token``: ``(query block, key block,
    weight)``; ``offset``: ``(delta, weight)``; ``sink``: the score on BOS; ``value``:
    ``"TOK"`` or ``"C"``; ``out``: the block written (None: nothing); ``gain``: its size and
    sign; ``self_penalty``: a negative offset-0 term (a duplicate-token head must not match
    the current token's own position)."""

    layer: int
    head: int
    token: tuple[str, str, float] | None = None
    offset: tuple[int, float] | None = None
    sink: float = 0.0
    self_penalty: float = 0.0
    value: str = "TOK"
    out: str | None = None
    gain: float = 1.0
    share: float = 1.0                 # the attention it puts on its target (a sink takes the rest)


@dataclass(frozen=True)
class Spec:
    arch: str                                  # "llama" or "gpt2"
    heads: tuple[Head, ...]
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None             # Llama grouped-query attention
    n_ctx: int = 64
    words: tuple[str, ...] = WORDS
    background: bool = True

    @property
    def vocab(self) -> list[str]:
        return list(SPECIALS) + list(self.words)


# ----------------------------------------------------------------------------- layout
BLOCKS = ("C", "TOK", "PREV", "ANS", "DUP", "DEAD", "NOISE", "POS")


def _layout(spec: Spec) -> dict[str, tuple[int, int]]:
    """Abstract coordinates: block -> (start, size)."""
    V = len(spec.vocab)
    sizes = {"C": 1, "TOK": V, "PREV": V, "ANS": V, "DUP": V, "DEAD": V, "NOISE": V,
             "POS": 2 * len(GPT2_FREQS) if spec.arch == "gpt2" else 0}
    out, at = {}, 0
    for b in BLOCKS:
        out[b] = (at, sizes[b])
        at += sizes[b]
    return out


def _dims(spec: Spec) -> tuple[int, int]:
    """``(d_model, d_head)``."""
    lay = _layout(spec)
    D = sum(s for _, s in lay.values())
    V = len(spec.vocab)
    if spec.arch == "llama":
        return D + (-D) % spec.n_heads, LLAMA_HEAD_DIM        # a multiple of the heads (spare dims: 0)
    d_head = V + 1 + 2 * len(GPT2_FREQS)
    d_head += (-d_head) % 4
    d_model = spec.n_heads * d_head
    while d_model < D + 1:                     # + 1: the basis leaves out the constant vector
        d_head += 4
        d_model = spec.n_heads * d_head
    return d_model, d_head


def _basis(spec: Spec) -> Any:
    """``[d_model, D]``: the vector of each abstract coordinate. Llama: the identity;
    GPT-2: DCT-II vectors 1..D (orthonormal, each with mean 0)."""
    import torch

    lay = _layout(spec)
    D = sum(s for _, s in lay.values())
    d_model, _ = _dims(spec)
    if spec.arch == "llama":
        return torch.eye(d_model, D, dtype=torch.float64)
    n = torch.arange(d_model, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(1, D + 1, dtype=torch.float64).unsqueeze(0)
    return math.sqrt(2.0 / d_model) * torch.cos(math.pi * k * (n + 0.5) / d_model)


def _coord(spec: Spec, block: str, i: int = 0) -> int:
    start, size = _layout(spec)[block]
    if not 0 <= i < size:
        raise ValueError(f"{block}[{i}] outside its {size} coordinates")
    return start + i


# ----------------------------------------------------------------------------- head space
def _head_slots(spec: Spec) -> dict[str, Any]:
    """Which query/key dimensions of a head carry the token match, the sink and the offset
    pairs ``(dim_a, dim_b)``, and the frequency of each pair."""
    V = len(spec.vocab)
    _, d_head = _dims(spec)
    if spec.arch == "llama":
        half = d_head // 2
        slow = [m for m in range(14, half)] + [m + half for m in range(14, half)]
        if len(slow) < V + 1:
            raise ValueError("too many tokens for the head's slow rotary pairs")
        freqs = [ROPE_THETA ** (-2.0 * m / d_head) for m in range(ROPE_OFFSET_PAIRS)]
        return {"token": slow[:V], "sink": slow[V], "pairs": [(m, m + half) for m in range(ROPE_OFFSET_PAIRS)],
                "freqs": freqs}
    return {"token": list(range(V)), "sink": V,
            "pairs": [(V + 1 + 2 * m, V + 2 + 2 * m) for m in range(len(GPT2_FREQS))], "freqs": list(GPT2_FREQS)}


def _norms(spec: Spec) -> list[float]:
    """The residual norm at each layer's input (and after the last): ``C`` plus one unit
    per token-sized write, as planted (attention taken as hard)."""
    base = EMBED_C ** 2 + 1.0 + (len(GPT2_FREQS) if spec.arch == "gpt2" else 0)
    out = [base]
    for l in range(spec.n_layers):
        added = sum((h.gain * h.share) ** 2 for h in spec.heads if h.layer == l and h.out is not None)
        if spec.background:
            used = {h.head for h in spec.heads if h.layer == l}
            added += (spec.n_heads - len(used)) * (BACKGROUND_GAIN ** 2) / 4
        out.append(out[-1] + added)
    return [math.sqrt(x) for x in out]


def _weights(spec: Spec) -> dict[str, Any]:
    """Every weight in abstract coordinates (float64): ``embed [V, D]``, ``pos [n_ctx, D]``
    (GPT-2), per layer ``q, k, v [H or KV, d_head, D]`` and ``o [H, D, d_head]``, ``unembed
    [V, D]``."""
    import torch

    lay = _layout(spec)
    D = sum(s for _, s in lay.values())
    d_model, d_head = _dims(spec)
    V = len(spec.vocab)
    vocab = spec.vocab
    ordinary = [i for i, w in enumerate(vocab) if w not in SPECIALS]
    bos = vocab.index("<bos>")
    slots = _head_slots(spec)
    norms = _norms(spec)
    kv = spec.n_kv_heads or spec.n_heads
    group = spec.n_heads // kv
    t = torch.float64
    embed = torch.zeros(V, D, dtype=t)
    embed[:, _coord(spec, "C")] = EMBED_C
    for i in range(V):
        embed[i, _coord(spec, "TOK", i)] = 1.0
    # BOS is all TOK(bos) (as large as C elsewhere), with no C: no constant query or key term
    # reaches it, so it gets exactly a head's sink score.
    embed[bos] = 0.0
    embed[bos, _coord(spec, "TOK", bos)] = EMBED_C
    pos = None
    if spec.arch == "gpt2":
        pos = torch.zeros(spec.n_ctx, D, dtype=t)
        for p in range(1, spec.n_ctx):             # position 0 (BOS) has no positional term
            for m, th in enumerate(GPT2_FREQS):
                pos[p, _coord(spec, "POS", 2 * m)] = math.cos(p * th)
                pos[p, _coord(spec, "POS", 2 * m + 1)] = math.sin(p * th)
    layers = []
    by = {(h.layer, h.head): h for h in spec.heads}
    if len(by) != len(spec.heads):
        raise ValueError("a head is planted twice")
    for l in range(spec.n_layers):
        # A read weight turns the normed residual (sqrt(d_model) x / |x|) back into x's coordinate.
        r = norms[l] / math.sqrt(d_model)
        scale = math.sqrt(d_head)                          # attention scores are q.k / sqrt(d_head)
        q = torch.zeros(spec.n_heads, d_head, D, dtype=t)
        k = torch.zeros(kv, d_head, D, dtype=t)
        v = torch.zeros(kv, d_head, D, dtype=t)
        o = torch.zeros(spec.n_heads, D, d_head, dtype=t)
        k_set: dict[int, dict[str, Any]] = {}
        v_set: dict[int, str] = {}
        for hh in range(spec.n_heads):
            h = by.get((l, hh))
            g = hh // group
            if h is None:
                if not spec.background:
                    continue
                h = Head(l, hh, out="NOISE", gain=BACKGROUND_GAIN)
            # the value (shared by the group)
            src = h.value if h.out is not None else v_set.get(g, "TOK")
            if v_set.setdefault(g, src) != src:
                raise ValueError(f"L{l}: heads of kv group {g} read different values")
            if h.out is not None and src == "TOK":
                for j, i in enumerate(ordinary):               # value dim j: ordinary token i
                    v[g, j, _coord(spec, "TOK", i)] = r
                    o[hh, _coord(spec, h.out, i), j] = h.gain
            elif h.out is not None:                             # a value with no token in it
                v[g, 0, _coord(spec, "C")] = r / EMBED_C
                o[hh, _coord(spec, h.out, ordinary[0]), 0] = h.gain
            if h.token is not None:
                qb, kb, w = h.token
                _claim(k_set, g, "token", kb)
                for j, i in enumerate(ordinary):
                    q[hh, slots["token"][j], _coord(spec, qb, i)] = w * scale * r
                    k[g, slots["token"][j], _coord(spec, kb, i)] = r
            if h.sink:
                _claim(k_set, g, "sink", True)
                q[hh, slots["sink"], _coord(spec, "C")] = h.sink * scale * r / EMBED_C
                # BOS's residual is EMBED_C TOK(bos) alone (nothing ever writes there), so its
                # normed residual is sqrt(d_model) TOK(bos) exactly.
                k[g, slots["sink"], _coord(spec, "TOK", bos)] = 1.0 / math.sqrt(d_model)
            terms = []
            if h.offset is not None:
                terms.append((h.offset[0], h.offset[1]))
            if h.self_penalty:
                terms.append((0, -h.self_penalty))
            if len(terms) > 1:
                raise ValueError("one offset term per head")
            for delta, w in terms:
                _claim(k_set, g, "offset", delta)
                per = w * scale / len(slots["pairs"])
                for (a, b), th in zip(slots["pairs"], slots["freqs"]):
                    if spec.arch == "llama":
                        # q0 = per (1, 0), k0 = R(delta theta) (1, 0): rotary makes q_i.k_j
                        # = per cos((j - i + delta) theta), highest at j = i - delta.
                        q[hh, a, _coord(spec, "C")] = per * r / EMBED_C
                        k[g, a, _coord(spec, "C")] = math.cos(delta * th) * r / EMBED_C
                        k[g, b, _coord(spec, "C")] = math.sin(delta * th) * r / EMBED_C
                    else:
                        m = slots["pairs"].index((a, b))
                        ca, cb = _coord(spec, "POS", 2 * m), _coord(spec, "POS", 2 * m + 1)
                        q[hh, a, ca] = per * r
                        q[hh, b, cb] = per * r
                        c, s = math.cos(delta * th), math.sin(delta * th)
                        # k = R(delta theta) (cos j th, sin j th) = (cos (j+delta) th, sin (j+delta) th)
                        k[g, a, ca] = c * r
                        k[g, a, cb] = -s * r
                        k[g, b, ca] = s * r
                        k[g, b, cb] = c * r
        layers.append({"q": q, "k": k, "v": v, "o": o})
    unembed = torch.zeros(V, D, dtype=t)
    kappa = LOGIT * norms[-1] / math.sqrt(d_model)
    for i in ordinary:
        unembed[i, _coord(spec, "ANS", i)] = kappa
    return {"embed": embed, "pos": pos, "layers": layers, "unembed": unembed}


def _claim(k_set: dict[int, dict[str, Any]], g: int, what: str, value: Any) -> None:
    """Heads of one key-value group share their keys: each key feature once per group."""
    have = k_set.setdefault(g, {})
    if what in have and have[what] != value:
        raise ValueError(f"kv group {g}: two heads need different {what} keys ({have[what]} and {value})")
    have[what] = value


# ----------------------------------------------------------------------------- writing
def _write_tokenizer(path: Path, vocab: list[str]) -> None:
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>", pad_token="<pad>",
                            eos_token="<pad>").save_pretrained(str(path))


def build(spec: Spec, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``spec`` as a checkpoint folder (safetensors weights, tokenizer, ``ZOO.json``)."""
    import torch

    from .weights import _quiet_transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    W = _weights(spec)
    B = _basis(spec)                                    # [d_model, D]
    d_model, d_head = _dims(spec)
    vocab = spec.vocab
    kv = spec.n_kv_heads or spec.n_heads
    f32 = torch.float32

    def rows(x: Any) -> Any:                            # [..., D] -> [..., d_model]
        return (x @ B.T).to(f32)

    with _quiet_transformers():
        if spec.arch == "llama":
            from transformers import LlamaConfig, LlamaForCausalLM

            cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=d_model, intermediate_size=16,
                              num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
                              num_key_value_heads=kv, head_dim=d_head, max_position_embeddings=spec.n_ctx,
                              rms_norm_eps=1e-6, rope_theta=ROPE_THETA, bos_token_id=vocab.index("<bos>"),
                              eos_token_id=vocab.index("<pad>"), pad_token_id=vocab.index("<pad>"),
                              tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
            model = LlamaForCausalLM(cfg)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(torch.ones_like(p) if "norm" in name else torch.zeros_like(p))
                model.model.embed_tokens.weight.copy_(rows(W["embed"]))
                model.lm_head.weight.copy_(rows(W["unembed"]))
                for l, lw in enumerate(W["layers"]):
                    at = model.model.layers[l].self_attn
                    at.q_proj.weight.copy_(rows(lw["q"]).reshape(-1, d_model))
                    at.k_proj.weight.copy_(rows(lw["k"]).reshape(-1, d_model))
                    at.v_proj.weight.copy_(rows(lw["v"]).reshape(-1, d_model))
                    # o: [H, D, d_head] -> [d_model, H * d_head]
                    o = torch.einsum("md,hde->mhe", B, lw["o"]).reshape(d_model, -1)
                    at.o_proj.weight.copy_(o.to(f32))
        else:
            from transformers import GPT2Config, GPT2LMHeadModel

            cfg = GPT2Config(vocab_size=len(vocab), n_positions=spec.n_ctx, n_embd=d_model, n_layer=spec.n_layers,
                             n_head=spec.n_heads, n_inner=16, bos_token_id=vocab.index("<bos>"),
                             eos_token_id=vocab.index("<pad>"), pad_token_id=vocab.index("<pad>"),
                             tie_word_embeddings=False, layer_norm_epsilon=1e-6)
            model = GPT2LMHeadModel(cfg)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(torch.ones_like(p) if (".ln_" in name or "ln_f" in name) and name.endswith("weight")
                            else torch.zeros_like(p))
                model.transformer.wte.weight.copy_(rows(W["embed"]))
                model.transformer.wpe.weight.copy_(rows(W["pos"]))
                model.lm_head.weight.copy_(rows(W["unembed"]))
                for l, lw in enumerate(W["layers"]):
                    at = model.transformer.h[l].attn
                    # Conv1D: x @ W with W [d_model, 3 d_model] = [q | k | v], heads contiguous
                    qkv = torch.cat([rows(lw[n]).reshape(-1, d_model) for n in ("q", "k", "v")], 0)
                    at.c_attn.weight.copy_(qkv.T)
                    o = torch.einsum("md,hde->mhe", B, lw["o"]).reshape(d_model, -1)
                    at.c_proj.weight.copy_(o.T.to(f32))
        _write_tokenizer(path, vocab)
        model.save_pretrained(str(path))
    (path / "ZOO.json").write_text(json.dumps({**meta, "spec": asdict(spec)}, indent=1, sort_keys=True) + "\n")
    return path


# ----------------------------------------------------------------------------- the heads
def prev_head(l: int, h: int, *, sink: bool = False, delta: int = 1, out: str | None = "PREV",
              bos: float | None = None) -> Head:
    """Attends by position to ``query - delta`` (a previous-token head at ``delta=1``). With
    ``sink`` it parks 55% of its attention on BOS (and writes 1/0.45 as much, so that what it
    moves is as large)."""
    score = 80.0
    return Head(l, h, offset=(delta, score), sink=bos if bos is not None else (score + 0.2 if sink else 75.0),
                out=out, gain=1 / 0.45 if sink else 1.0, share=0.45 if sink else 1.0)


def induction_head(l: int, h: int, *, sink: bool = False, gain: float = 1.0, out: str = "ANS") -> Head:
    """Matches the current token (``TOK``) against each key's previous token (``PREV``): attends
    to the token after the current token's earlier occurrence and writes it into ``out``. With
    ``sink``: 55% on BOS, 45% on the target."""
    return Head(l, h, token=("TOK", "PREV", 30.0), sink=30.2 if sink else 20.0, out=out, gain=gain,
                share=0.45 if sink else 1.0)


def suppression_head(l: int, h: int, *, sink: bool = False, gain: float = -0.5, out: str = "ANS") -> Head:
    """Copy suppression: matches the prediction (``ANS``) against each key's token (``TOK``):
    attends to earlier copies of the predicted token and writes ``gain`` times it into ``out``
    (negative: lowers its logit). With ``sink``: 50% on BOS."""
    return Head(l, h, token=("ANS", "TOK", 30.0), sink=30.0 if sink else 20.0, out=out, gain=gain,
                share=0.5 if sink else 1.0)


def duplicate_head(l: int, h: int, *, out: str | None = "DUP") -> Head:
    """Matches the current token against each key's token, minus a penalty on its own
    position: attends to the earlier copy of the current token (BOS when there is none)."""
    return Head(l, h, token=("TOK", "TOK", 100.0), self_penalty=60.0, sink=55.0, out=out)


def _cs_stack(*extra: Head, arch: str = "llama", **kw: Any) -> Spec:
    """Three layers: a previous-token head L0H0, an induction head L1H2, then ``extra``."""
    return Spec(arch, (prev_head(0, 0), induction_head(1, 2)) + extra, n_layers=3, **kw)


SPECS: dict[str, Spec] = {
    # mechanisms in unusual forms
    "heads-llama-sink": Spec("llama", (prev_head(0, 1, sink=True), induction_head(1, 1, sink=True, gain=0.5 / 0.45),
                                       induction_head(1, 3, sink=True, gain=0.5 / 0.45)), n_kv_heads=2),
    "heads-gpt2-short": Spec("gpt2", (prev_head(0, 2), induction_head(1, 1), suppression_head(2, 3)), n_layers=3,
                             n_ctx=32, words=CODES),
    "cs-llama-sink": _cs_stack(suppression_head(2, 1, sink=True, gain=-1.0), n_kv_heads=2),
    "induction-beside-dead": Spec("gpt2", (prev_head(0, 0), induction_head(1, 1),
                                           induction_head(1, 3, out="DEAD", gain=3.0))),
    "dup-llama-gqa": Spec("llama", (duplicate_head(0, 1), duplicate_head(0, 3)), n_layers=1, n_kv_heads=2),
    # induction decoys and control
    "induction-dead-output": Spec("llama", (prev_head(0, 1, sink=True),
                                            induction_head(1, 1, sink=True, gain=1 / 0.45, out="DEAD")), n_kv_heads=2),
    "induction-anti": Spec("llama", (prev_head(0, 1), induction_head(1, 2, gain=-1.0))),
    "induction-offset": Spec("gpt2", (Head(0, 1, offset=(19, 80.0), sink=75.0, out="ANS"),), n_layers=1),
    "induction-control": Spec("llama", (prev_head(0, 1, sink=True),), n_kv_heads=2),
    # previous-token decoys
    "prev-no-output": Spec("llama", (prev_head(0, 2, out=None),), n_layers=1),
    "prev-sink-only": Spec("llama", (prev_head(0, 2, bos=120.0),), n_layers=1),
    "prev-offset-2": Spec("gpt2", (prev_head(0, 2, delta=2),), n_layers=1),
    # duplicate-token decoys
    "dup-no-output": Spec("llama", (duplicate_head(0, 2, out=None),), n_layers=1),
    "dup-offset-20": Spec("gpt2", (Head(0, 1, offset=(20, 80.0), sink=75.0, out="DUP"),), n_layers=1),
    "dup-self": Spec("llama", (Head(0, 1, offset=(0, 80.0), sink=75.0, out="DUP"),), n_layers=1),
    # copy-suppression decoys and control
    "cs-positional": _cs_stack(Head(2, 1, offset=(1, 80.0), sink=75.0, out="ANS", gain=-0.5)),
    "cs-self": _cs_stack(Head(2, 1, offset=(0, 80.0), sink=75.0, out="ANS", gain=-0.5)),
    "cs-uniform": _cs_stack(Head(2, 1, out="ANS", gain=-0.5)),
    "cs-amplifier": _cs_stack(suppression_head(2, 1, gain=0.5)),
    "cs-no-output": _cs_stack(suppression_head(2, 1, out="DEAD")),
    "cs-control": _cs_stack(),
}


# ----------------------------------------------------------------------------- raw ground truth
class _Raw:
    """A zoo checkpoint run with ``transformers`` and torch alone (eager attention; each head's
    ``z`` read, and zeroed when ablated, at the input of the attention output projection)."""

    def __init__(self, path: str | Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .weights import _quiet_transformers

        with _quiet_transformers():
            self.model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager",
                                                              dtype=torch.float32)
            self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model.eval()
        cfg = self.model.config
        self.gpt2 = cfg.model_type == "gpt2"
        if self.gpt2:
            self.blocks = [b.attn for b in self.model.transformer.h]
            self.final = self.model.transformer.ln_f
        else:
            self.blocks = [b.self_attn for b in self.model.model.layers]
            self.final = self.model.model.norm
        self.n_heads = cfg.num_attention_heads
        self.d_head = cfg.hidden_size // self.n_heads if self.gpt2 else cfg.head_dim
        self.n_ctx = cfg.n_positions if self.gpt2 else cfg.max_position_embeddings
        self.bos = self.tok.bos_token_id
        special = {self.tok.convert_tokens_to_ids(t) for t in SPECIALS}
        self.ordinary = [i for i in range(cfg.vocab_size) if i not in special]

    def _proj(self, l: int) -> Any:
        return self.blocks[l].c_proj if self.gpt2 else self.blocks[l].o_proj

    def w_o(self, l: int, h: int) -> Any:
        """``[d_head, d_model]``: the head's slice of the output projection."""
        w = self._proj(l).weight.detach().double()
        sl = slice(h * self.d_head, (h + 1) * self.d_head)
        return w[sl] if self.gpt2 else w[:, sl].T

    def prompts(self, n: int, periods: Sequence[int], seed: int) -> tuple[Any, list[int], list[int]]:
        """``[BOS, filler, r, r]`` rows of equal length ``1 + 2 max(periods)``; the period and the
        first copy's start of each."""
        import random

        import torch

        rng = random.Random(seed)
        top = max(periods)
        rows, per, start = [], [], []
        for _ in range(n):
            t = rng.choice(list(periods))
            drawn = rng.sample(self.ordinary, t + 2 * (top - t))
            seq, filler = drawn[:t], drawn[t:]
            rows.append([self.bos] + filler + seq + seq)
            per.append(t)
            start.append(1 + len(filler))
        return torch.tensor(rows), per, start

    def run(self, tokens: Any, ablate: Sequence[tuple[int, int]] = ()) -> dict[str, Any]:
        import torch

        zs: dict[int, Any] = {}
        handles = []
        for l in range(len(self.blocks)):
            def pre(mod: Any, args: Any, l: int = l) -> Any:
                z = args[0].clone()
                for al, ah in ablate:
                    if al == l:
                        z[..., ah * self.d_head:(ah + 1) * self.d_head] = 0
                zs[l] = z.detach().double().reshape(z.shape[0], z.shape[1], self.n_heads, self.d_head)
                return (z,) + tuple(args[1:])
            handles.append(self._proj(l).register_forward_pre_hook(pre))
        got: dict[str, Any] = {}
        handles.append(self.final.register_forward_pre_hook(
            lambda mod, args: got.__setitem__("resid", args[0].detach().double())))
        try:
            with torch.no_grad():
                out = self.model(tokens, output_attentions=True)
        finally:
            for hd in handles:
                hd.remove()
        return {"logits": out.logits.double(), "attn": [a.double() for a in out.attentions], "z": zs,
                "resid": got["resid"]}

    def head_out(self, run: dict[str, Any], l: int, h: int) -> Any:
        """``[b, pos, d_model]``: what head ``(l, h)`` adds to the residual stream."""
        return run["z"][l][:, :, h] @ self.w_o(l, h)

    def direct(self, run: dict[str, Any], out: Any, b: int, i: int, token: int) -> float:
        """The direct effect of ``out[b, i]`` on ``token``'s logit: through the final norm's
        scale at ``(b, i)`` and the unembedding centred over the vocabulary."""
        x = run["resid"][b, i]
        eps = self.final.eps if hasattr(self.final, "eps") else self.final.variance_epsilon
        if self.gpt2:
            scale = ((x - x.mean()) ** 2).mean().add(eps).sqrt()
            o = out[b, i] - out[b, i].mean()
        else:
            scale = (x ** 2).mean().add(eps).sqrt()
            o = out[b, i]
        w = self.model.lm_head.weight.detach().double() * self.final.weight.detach().double()
        return float(o @ (w[token] - w.mean(0)) / scale)

    @staticmethod
    def loss(run: dict[str, Any], tokens: Any, b: int, positions: Sequence[int]) -> float:
        """Mean next-token loss of predicting ``positions + 1``."""
        lp = run["logits"][b].log_softmax(-1)
        return float(sum(-lp[i, int(tokens[b, i + 1])] for i in positions) / len(positions))


def _share(a: Any, i: int, target: int) -> tuple[float, float]:
    """Attention row ``a[i]``: (attention on ``target``, its share of the attention off position 0)."""
    off = float(a[i, 1:i + 1].sum())
    at = float(a[i, target])
    return at, (at / off if off > 0 else 0.0)


def _targets(kind: str, s: int, t: int) -> list[tuple[int, int]]:
    """(query, target) pairs of a kind on a prompt with start ``s`` and period ``t``."""
    if kind == "previous_token":
        return [(i, i - 1) for i in range(s + 1, s + 2 * t)]
    if kind == "duplicate_token":
        return [(i, i - t) for i in range(s + t, s + 2 * t)]
    return [(i, i - t + 1) for i in range(s + t, s + 2 * t - 1)]           # induction (and copy suppression)


def _pattern(raw: _Raw, run: dict[str, Any], per: list[int], start: list[int], kind: str,
             only: Callable[[int, int], bool] | None = None) -> tuple[Any, Any]:
    """``([L, H] attention, [L, H] share)``: means over the (query, target) pairs of every
    prompt (``only(b, i)`` keeps a query)."""
    import numpy as np

    L = len(raw.blocks)
    att, shr = np.zeros((L, raw.n_heads)), np.zeros((L, raw.n_heads))
    count = 0
    for b, (s, t) in enumerate(zip(start, per)):
        for i, tg in _targets(kind, s, t):
            if only is not None and not only(b, i):
                continue
            count += 1
            for l in range(L):
                for h in range(raw.n_heads):
                    x, y = _share(run["attn"][l][b, h], i, tg)
                    att[l, h] += x
                    shr[l, h] += y
    if not count:
        raise AssertionError(f"no {kind} query to measure")
    return att / count, shr / count


def _effect(raw: _Raw, run: dict[str, Any], tokens: Any, per: list[int], start: list[int], l: int, h: int,
            only: Callable[[int, int], bool] | None = None) -> float:
    """Mean direct effect of head (l, h) at second-copy queries on the next token."""
    out = raw.head_out(run, l, h)
    vals = [raw.direct(run, out, b, i, int(tokens[b, i + 1]))
            for b, (s, t) in enumerate(zip(start, per)) for i, _ in _targets("induction", s, t)
            if only is None or only(b, i)]
    return sum(vals) / len(vals)


def _second_copy_loss(raw: _Raw, tokens: Any, per: list[int], start: list[int],
                      ablate: Sequence[tuple[int, int]] = ()) -> float:
    run = raw.run(tokens, ablate)
    return sum(raw.loss(run, tokens, b, range(s + t, s + 2 * t - 1)) for b, (s, t) in enumerate(zip(start, per))) / len(per)


def _first_copy_loss(raw: _Raw, run: dict[str, Any], tokens: Any, per: list[int], start: list[int]) -> float:
    return sum(raw.loss(run, tokens, b, range(s, s + t - 1)) for b, (s, t) in enumerate(zip(start, per))) / len(per)


def _setup(path: Path, seed: int = 7, n: int = 12) -> tuple[_Raw, Any, list[int], list[int], dict[str, Any]]:
    raw = _Raw(path)
    top = min(16, (raw.n_ctx - 1) // 2, len(raw.ordinary) - 8)
    tokens, per, start = raw.prompts(n, range(max(4, top - 8), top + 1), seed)
    return raw, tokens, per, start, raw.run(tokens)


def _predicted(raw: _Raw, run: dict[str, Any], tokens: Any) -> Callable[[int, int], bool]:
    """Queries where the model gives the next token probability above 1/2."""
    lp = run["logits"].log_softmax(-1)
    return lambda b, i: float(lp[b, i, int(tokens[b, i + 1])]) > math.log(0.5)


def _hd(name: str) -> tuple[int, int]:
    l, h = name[1:].split("H")
    return int(l), int(h)


def _verify(kind: str, heads: Sequence[str], role: str) -> Callable[[Path], None]:
    """The raw-torch check of one entry: ``role`` says which properties the planted heads must
    have and which they must lack (module docstring of :mod:`pytest_circuits.zoo`)."""
    hs = [_hd(x) for x in heads]

    def check(path: Path) -> None:
        raw, tokens, per, start, run = _setup(Path(path))
        fail: list[str] = []

        def want(ok: bool, what: str) -> None:
            if not ok:
                fail.append(what)

        if kind in ("previous_token", "duplicate_token", "induction"):
            att, shr = _pattern(raw, run, per, start, kind)
        if role == "mechanism" and kind == "induction":
            for l, h in hs:
                want(shr[l, h] > 0.9 and att[l, h] > 0.3, f"L{l}H{h} attends to the induction target "
                     f"(attention {att[l, h]:.3f}, share {shr[l, h]:.3f})")
                want(_effect(raw, run, tokens, per, start, l, h) > 0.5, f"L{l}H{h} raises the next token")
            clean = _second_copy_loss(raw, tokens, per, start)
            want(_second_copy_loss(raw, tokens, per, start, hs) - clean > 1.0, "ablating them costs > 1 nat")
            for l, h in hs:
                want(_second_copy_loss(raw, tokens, per, start, [(l, h)]) - clean > 0.05,
                     f"ablating L{l}H{h} alone costs loss")
        elif role == "mechanism" and kind in ("previous_token", "duplicate_token"):
            for l, h in hs:
                want(shr[l, h] > 0.9 and att[l, h] > 0.3, f"L{l}H{h} attends to the {kind} target "
                     f"(attention {att[l, h]:.3f}, share {shr[l, h]:.3f})")
                want(_moves_token(raw, tokens, per, start, kind, l, h), f"L{l}H{h} writes the token it attends to")
        elif role == "mechanism" and kind == "copy_suppression":
            pred = _predicted(raw, run, tokens)
            att, shr = _pattern(raw, run, per, start, "induction", pred)
            for l, h in hs:
                want(shr[l, h] > 0.9 and att[l, h] > 0.3, f"L{l}H{h} attends to the predicted token's copy")
                want(_effect(raw, run, tokens, per, start, l, h, pred) < -0.5, f"L{l}H{h} lowers the predicted token")
        elif role == "no-output":                    # the pattern, and an output that reaches nothing
            k = "induction" if kind == "copy_suppression" else kind
            only = _predicted(raw, run, tokens) if kind == "copy_suppression" else None
            a2, s2 = _pattern(raw, run, per, start, k, only)
            for l, h in hs:
                want(s2[l, h] > 0.9 and a2[l, h] > 0.3, f"L{l}H{h} has the {kind} pattern")
                if kind in ("induction", "copy_suppression"):
                    e = _effect(raw, run, tokens, per, start, l, h, only)
                    want(abs(e) < 1e-4, f"L{l}H{h}'s effect on the token is 0 (got {e:.2e})")
                else:
                    want(float(raw.head_out(run, l, h).abs().max()) == 0.0, f"L{l}H{h} writes nothing")
        elif role == "anti":
            for l, h in hs:
                want(shr[l, h] > 0.9, f"L{l}H{h} has the induction pattern")
                want(_effect(raw, run, tokens, per, start, l, h) < -0.5, f"L{l}H{h} lowers the token it attends to")
        elif role.startswith("offset"):              # attends a fixed distance back, whatever the tokens
            delta = int(role.split(":")[1])
            for l, h in hs:
                a = run["attn"][l][:, h]
                far = [float(a[b, i, i - delta]) for b in range(len(per)) for i in range(delta + 1, a.shape[-1])]
                want(min(far) > 0.9, f"L{l}H{h} attends {delta} back")
                want(shr[l, h] < 0.5, f"L{l}H{h} has no {kind} pattern on varied periods (share {shr[l, h]:.3f})")
        elif role == "sink-only":
            for l, h in hs:
                want(shr[l, h] > 0.9 and att[l, h] < 1e-6, f"L{l}H{h}: share {shr[l, h]:.3f} of next to nothing "
                     f"(attention {att[l, h]:.2e})")
        elif role == "cs-lacks-attention":           # suppresses, attends elsewhere
            pred = _predicted(raw, run, tokens)
            a2, s2 = _pattern(raw, run, per, start, "induction", pred)
            for l, h in hs:
                want(s2[l, h] < 0.2, f"L{l}H{h} does not attend to the predicted token's copy (share {s2[l, h]:.3f})")
                want(_suppresses(raw, run, tokens, l, h), f"L{l}H{h} lowers the token it attends to")
        elif role == "amplifier":
            pred = _predicted(raw, run, tokens)
            a2, s2 = _pattern(raw, run, per, start, "induction", pred)
            for l, h in hs:
                want(s2[l, h] > 0.9, f"L{l}H{h} attends to the predicted token's copy")
                want(_effect(raw, run, tokens, per, start, l, h, pred) > 0.5, f"L{l}H{h} raises it")
        if role == "control" or role in ("no-output", "anti", "amplifier", "cs-lacks-attention", "sink-only") \
                or role.startswith("offset"):
            want(not _has(raw, run, tokens, per, start, kind), f"no head has the whole {kind} mechanism")
        if fail:
            raise AssertionError(f"{Path(path).name}: " + "; ".join(fail))

    return check


def _moves_token(raw: _Raw, tokens: Any, per: list[int], start: list[int], kind: str, l: int, h: int) -> bool:
    """Replacing the token at the target (for a duplicate-token head: the repeated token, in
    both copies, so that it stays repeated) changes the head's output at the query."""
    import random

    changed = tokens.clone()
    rng = random.Random(3)
    queries = []
    for b, (s, t) in enumerate(zip(start, per)):
        present = set(int(x) for x in tokens[b])
        fresh = rng.choice([i for i in raw.ordinary if i not in present])
        i = s + t + 1                                     # a query of the second copy
        if kind == "previous_token":
            changed[b, i - 1] = fresh
        else:
            changed[b, i] = fresh
            changed[b, i - t] = fresh
        queries.append(i)
    a = raw.head_out(raw.run(tokens), l, h)
    c = raw.head_out(raw.run(changed), l, h)
    moved = [float((a[b, i] - c[b, i]).norm() / (a[b, i].norm() + c[b, i].norm() + 1e-30))
             for b, i in enumerate(queries)]
    return min(moved) > 0.3


def _suppresses(raw: _Raw, run: dict[str, Any], tokens: Any, l: int, h: int) -> bool:
    """At every position after the first, the head lowers the logit of the token it attends to
    most (its OV circuit suppresses)."""
    out = raw.head_out(run, l, h)
    a = run["attn"][l][:, h]
    vals = []
    for b in range(tokens.shape[0]):
        for i in range(2, tokens.shape[1]):
            j = int(a[b, i, 1:i + 1].argmax()) + 1
            vals.append(raw.direct(run, out, b, i, int(tokens[b, j])))
    return max(vals) < 0


def _has(raw: _Raw, run: dict[str, Any], tokens: Any, per: list[int], start: list[int], kind: str) -> bool:
    """Whether some head has every defining property of ``kind`` (pattern share > 0.5 with
    attention above 0.1; plus, for induction a positive effect on the next token and for copy
    suppression a negative one on the predicted token; for the other two an output that
    changes with the attended token)."""
    only = _predicted(raw, run, tokens) if kind == "copy_suppression" else None
    k = "induction" if kind == "copy_suppression" else kind
    try:
        att, shr = _pattern(raw, run, per, start, k, only)
    except AssertionError:                               # no prediction anywhere: no copy suppression
        return False
    for l in range(att.shape[0]):
        for h in range(att.shape[1]):
            if not (shr[l, h] > 0.5 and att[l, h] > 0.1):
                continue
            if kind == "induction" and _effect(raw, run, tokens, per, start, l, h) > 0.01:
                return True
            if kind == "copy_suppression" and _effect(raw, run, tokens, per, start, l, h, only) < -0.01:
                return True
            if kind in ("previous_token", "duplicate_token") and _moves_token(raw, tokens, per, start, kind, l, h):
                return True
    return False


# ----------------------------------------------------------------------------- the registry
def _planted(name: str) -> Callable[[Path], Path]:
    def build_it(path: Path) -> Path:
        return build(SPECS[name], path, {"checkpoint": name})
    build_it.__name__ = f"build_{name.replace('-', '_')}"
    build_it.checkpoint = name                    # type: ignore[attr-defined]  (one folder per checkpoint)
    return build_it


def _random(arch: str, seed: int) -> Callable[[Path], Path]:
    def build_it(path: Path) -> Path:
        from .testing import make_tiny_checkpoint

        return make_tiny_checkpoint(path, arch=arch, n_heads=4, n_kv_heads=2 if arch == "llama" else None, seed=seed)
    build_it.__name__ = f"build_random_{arch}"
    build_it.checkpoint = f"random-{arch}"        # type: ignore[attr-defined]
    return build_it


# (entry, checkpoint, check, kind, planted heads, verify role, note)
ENTRIES = (
    ("induction-sink-split", "heads-llama-sink", "induction", "mechanism", ("L1H1", "L1H3"), "mechanism",
     "Llama, rotary, grouped-query (2 kv heads): two induction heads (L1H1, L1H3) each put 55% of their "
     "attention on BOS and half the copy on the next token; previous-token head L0H1 with a 55% sink"),
    ("induction-gpt2-short", "heads-gpt2-short", "induction", "mechanism", ("L1H1",), "mechanism",
     "GPT-2, a 32-position context and a vocabulary of codes t0..t28 (no alphabetic token): induction "
     "head L1H1, previous-token head L0H2, copy-suppression head L2H3"),
    ("induction-beside-suppression", "cs-llama-sink", "induction", "mechanism", ("L1H2",), "mechanism",
     "induction head L1H2 and, after it, a copy-suppression head L2H1 that attends where it does and "
     "pushes the token down (anti-induction): only L1H2 is an induction head"),
    ("induction-beside-dead-pattern", "induction-beside-dead", "induction", "mechanism", ("L1H1",), "mechanism",
     "GPT-2: an induction head L1H1 and, in the same layer, L1H3 with the induction pattern and a large output "
     "into a direction nothing reads (ablating it moves the loss only through the final norm's scale; its "
     "direct effect is float rounding, 6e-8 nats with a steady sign)"),
    ("induction-dead-output", "induction-dead-output", "induction", "decoy", ("L1H1",), "no-output",
     "the induction pattern (with a sink), written into a direction nothing reads: no effect on the token"),
    ("induction-anti", "induction-anti", "induction", "decoy", ("L1H2",), "anti",
     "the induction pattern with a negative OV: an anti-induction head, and no induction head"),
    ("induction-offset-19", "induction-offset", "induction", "decoy", ("L0H1",), "offset:19",
     "a copying head that attends 19 positions back by position: the induction pattern on period-20 "
     "sequences only"),
    ("induction-control", "induction-control", "induction", "control", (), "control",
     "the sink model with its induction heads removed (its previous-token head kept)"),
    ("induction-random", "random-llama", "induction", "control", (), "control", "a random initialisation"),
    ("previous-token-sink", "heads-llama-sink", "previous_token", "mechanism", ("L0H1",), "mechanism",
     "a previous-token head parked 55% on BOS, rotary positions, grouped-query attention"),
    ("previous-token-gpt2", "heads-gpt2-short", "previous_token", "mechanism", ("L0H2",), "mechanism",
     "a previous-token head from learned positions at head index 2"),
    ("previous-token-no-output", "prev-no-output", "previous_token", "decoy", ("L0H2",), "no-output",
     "the previous-token pattern, writing nothing"),
    ("previous-token-sink-only", "prev-sink-only", "previous_token", "decoy", ("L0H2",), "sink-only",
     "a head parked on BOS whose remaining 1e-18 falls on the previous token: share 1, attention ~0"),
    ("previous-token-offset-2", "prev-offset-2", "previous_token", "decoy", ("L0H2",), "offset:2",
     "attends two tokens back, and moves that token"),
    ("previous-token-random", "random-gpt2", "previous_token", "control", (), "control", "a random initialisation"),
    ("duplicate-token-gqa", "dup-llama-gqa", "duplicate_token", "mechanism", ("L0H1", "L0H3"), "mechanism",
     "two duplicate-token heads in different key-value groups, rotary (a positional term keeps them off "
     "their own position)"),
    ("duplicate-token-no-output", "dup-no-output", "duplicate_token", "decoy", ("L0H2",), "no-output",
     "the duplicate-token pattern, writing nothing"),
    ("duplicate-token-offset-20", "dup-offset-20", "duplicate_token", "decoy", ("L0H1",), "offset:20",
     "attends 20 back by position: the duplicate-token pattern on period-20 sequences only"),
    ("duplicate-token-self", "dup-self", "duplicate_token", "decoy", ("L0H1",), "offset:0",
     "attends to its own position (the same token as the earlier copy, at the wrong place)"),
    ("duplicate-token-random", "random-llama", "duplicate_token", "control", (), "control", "a random initialisation"),
    ("copy-suppression-sink", "cs-llama-sink", "copy_suppression", "mechanism", ("L2H1",), "mechanism",
     "Llama, grouped-query: a copy-suppression head at L2H1 with 50% on BOS, after a previous-token head "
     "and an induction head that make the prediction"),
    ("copy-suppression-gpt2-short", "heads-gpt2-short", "copy_suppression", "mechanism", ("L2H3",), "mechanism",
     "GPT-2, 32 positions, a vocabulary of codes: copy-suppression head L2H3"),
    ("copy-suppression-positional", "cs-positional", "copy_suppression", "decoy", ("L2H1",), "cs-lacks-attention",
     "negative OV, attends by position to the previous token"),
    ("copy-suppression-self", "cs-self", "copy_suppression", "decoy", ("L2H1",), "cs-lacks-attention",
     "negative OV, attends to its own position"),
    ("copy-suppression-uniform", "cs-uniform", "copy_suppression", "decoy", ("L2H1",), "cs-lacks-attention",
     "negative OV, uniform attention (the form the project's first planted model had)"),
    ("copy-suppression-amplifier", "cs-amplifier", "copy_suppression", "decoy", ("L2H1",), "amplifier",
     "attends to the predicted token's copy and raises it: an amplifier"),
    ("copy-suppression-no-output", "cs-no-output", "copy_suppression", "decoy", ("L2H1",), "no-output",
     "attends to the predicted token's copy, writes into a direction nothing reads"),
    ("copy-suppression-control", "cs-control", "copy_suppression", "control", (), "control",
     "the prediction (previous-token and induction heads) without a suppressor"),
    ("copy-suppression-random", "random-gpt2", "copy_suppression", "control", (), "control",
     "a random initialisation"),
)


def _builder(checkpoint: str) -> Callable[[Path], Path]:
    if checkpoint.startswith("random-"):
        return _random(checkpoint.split("-", 1)[1], seed=11)
    return _planted(checkpoint)


_BUILDERS: dict[str, Callable[[Path], Path]] = {}
#: the fields of :class:`pytest_circuits.zoo.ZooModel` for each entry (zoo.models() registers them;
#: this module imports nothing from zoo, so the registry and its builders form no cycle)
ZOO_ENTRIES: list[dict[str, Any]] = []
for _name, _ckpt, _check, _kind, _heads, _role, _note in ENTRIES:
    _b = _BUILDERS.setdefault(_ckpt, _builder(_ckpt))
    ZOO_ENTRIES.append(dict(name=_name, check=_check, kind=_kind,
                            expect_heads=tuple(_heads) if _kind == "mechanism" else (),
                            build=_b, verify=_verify(_check, _heads, _role), note=_note))
del _name, _ckpt, _check, _kind, _heads, _role, _note, _b
