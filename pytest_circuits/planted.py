"""Planted ground truth: tiny Llama checkpoints whose mechanism is known by construction.

Every weight is set by hand (no randomness), so each checkpoint's behaviour can be
derived on paper; each mechanism comes with a *control* model that is identical except
that the mechanism is missing. Load a checkpoint like any other local one::

    model = pytest_circuits.load_model("tests/data/planted/erasure", device="cpu")

Construction shared by all four models (``d_model = 32``, 2 layers, 2 heads of
``d_head = 16``, a word-level vocabulary from :mod:`pytest_circuits.testing`):

* the residual stream is read in an orthonormal basis of *mean-zero* directions
  ``dir(k) = (e_{2k} - e_{2k+1}) / sqrt(2)``: ``C`` (constant / "bias"), ``U`` (answer) and
  ``W`` (a spare direction no head or logit reads);
* every token embedding is the same vector ``EMBED_NORM * C``. It is large (8) next to
  what heads write (1), so ``x / rms(x)`` is almost linear in the small directions;
* all query and key weights are zero, so attention is uniform over the causal prefix
  (rotary embeddings act on Q and K only, so they do nothing); since every position's
  value vector is identical, each head's output is the same at every position, whatever
  the prompt;
* MLPs are all zero (their output is exactly 0); RMSNorm weights are 1;
* the unembedding reads ``U``: the answer token's column is ``+LOGIT_SCALE * U`` and the
  foil's ``-LOGIT_SCALE * U``, every other column is 0. Each row of ``W_U`` thus sums to 0
  over the vocabulary, so TransformerLens's ``center_unembed`` leaves it unchanged, and
  logit(answer) = -logit(foil) = half the logit difference.

Mechanisms (ids are TransformerLens-style ``L{layer}H{head}``):

**Erasure** (:data:`ERASURE`, after Janiak et al. 2023, "direct logit attribution
misattributes erased heads"). The writer ``L0H0`` reads ``C`` and writes ``WRITE * U`` at
every position, so its direct logit attribution on the answer is large. The eraser
``L1H1`` reads ``U`` through its value path and writes ``-ERASE_FRACTION`` times what it
reads (its value gain is calibrated against the layer-1 RMSNorm scale), i.e.
``o_B = -0.95 * o_A``: the projection ratio ``PR(B, A) = o_B.o_A / |o_A|^2 = -0.95``, and
zero-ablating the writer (its ``hook_z`` slice) also silences the eraser, so the writer's
*total* effect on the answer logit is only ``(1 - 0.95) * DLA(writer)``.
Control (``control=True``): the eraser reads ``C`` instead and writes ``WRITE * W`` (an
active head, orthogonal to the writer): ``PR = 0`` and ``TE(writer) = DLA(writer)``.

**Backup** (:data:`BACKUP`, self-repair / Hydra effect). The primary ``L0H0`` writes
``WRITE * U`` (as the writer above). The backup ``L1H0`` reads
``C / EMBED_NORM - U / WRITE`` (the constant part minus the answer part), which is 0 when
the primary is present and 1 when it is ablated, and writes that times
``BACKUP_FRACTION * WRITE * U``: its direct effect is ~0 in the clean run and rises to
``BACKUP_FRACTION`` (60%) of the primary's direct effect when the primary is
zero-ablated. Control: the backup head reads ``C / EMBED_NORM`` only, so it writes the
same ``BACKUP_FRACTION * WRITE * U`` in the clean and ablated runs: it has a direct
effect but does not compensate (its change under ablation is ~0, up to the RMSNorm's
small nonlinearity).

The other heads (``L0H1`` and, in the erasure models, ``L1H0``; ``L1H1`` in the backup
models) have all-zero weights. The models answer the same way for every prompt; use
:data:`PROMPTS` (any text in the vocabulary works) and measure at the last position.

How they are verified: ``tests/unit/test_planted_raw.py`` loads each shipped checkpoint
(``tests/data/planted/``, written by ``scripts/make_planted.py``) through
:func:`pytest_circuits.load_model` (a TransformerBridge in compatibility mode) and checks
each number above with raw TransformerLens hooks only: per-head outputs
``hook_z[:, -1, h] @ W_O[L][h]``, direct logit attribution with ``ln_final.hook_scale`` and
``W_U``, zero-ablation of a head's ``hook_z`` slice in ``run_with_hooks``; it also checks
that the builders are deterministic and that the shipped files equal a fresh build.
Numbers at the last position (identical for every prompt):

==================  ==========================================================
erasure             DLA(writer) 5.657, TE(writer) 0.283, PR(eraser, writer) -0.950
erasure_control     DLA(writer) 5.570, TE(writer) 5.570, PR 0.000
backup              DE(primary) 5.613, DE(backup) 0.000 -> 3.385 when the primary
                    is ablated (dDE = 0.60 x DE(primary)), TE(primary) 2.229
backup_control      DE(primary) 5.548, DE(backup) 3.303 -> 3.385 (dDE = 0.082,
                    1.5% of DE(primary), from RMSNorm), TE(primary) 5.466
==================  ==========================================================

**Ordinal** (:func:`build_ordinal`, ``ordinal`` and ``ordinal_control``; successor heads
after Gould et al. 2023, arXiv:2312.09230, and copy suppression after McDougall et al.
2023, arXiv:2310.04625) is built differently: one residual dimension per token (64), so
that OV circuits can map tokens to tokens. ``ordinal`` has a successor head ``L1H0``, a
copy-suppression head ``L1H1`` (OV = -identity), a copying head ``L1H2`` (OV = +identity)
and a zero head ``L1H3``; the control has copying heads ``L1H0``-``L1H2`` and a
predecessor head ``L1H3``. :mod:`pytest_circuits.techniques.ov` finds L1H0 (succession
score 1 over 50 pairs) and L1H1 (OV self-suppression 1 over 49 tokens, attended-token
direct effect -0.117) and nothing on the control; tests/unit/test_ov_heads.py checks
those numbers with raw hooks.

**Edges** (:func:`build_edges`, ``edges`` and ``edges_control``; for
:mod:`pytest_circuits.techniques.edges`): a relay head ``L0H0`` read by ``L1H0`` through its
value input only, and a decoy ``L1H1`` whose query reads the relay with an attention score that
enters evenly (``L0H0->L1H1.q``: exact effect ~0, first-order attribution large); built in
tests, not shipped.

Compatibility-mode notes: RMSNorm weights (all 1 here) are folded into the reading
weights; for RMSNorm models TransformerLens 4.x does *not* centre writing weights (it
would change the function), but it does centre ``W_U`` over the vocabulary. All written
vectors here are mean-zero over ``d_model`` and ``W_U`` is mean-zero over the vocabulary,
so both operations leave the hand-set weights exactly as written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .testing import SPECIALS, WORDS

D_MODEL = 32
N_LAYERS = 2
N_HEADS = 2
D_HEAD = D_MODEL // N_HEADS
D_MLP = 32
RMS_EPS = 1e-6

EMBED_NORM = 8.0       # size of the constant component C in every token embedding
WRITE = 1.0            # size of what the writer / primary head writes along U
LOGIT_SCALE = 8.0      # |W_U[:, answer]| (along U)
ERASE_FRACTION = 0.95  # the eraser writes -0.95 x the writer's output
BACKUP_FRACTION = 0.6  # the backup head restores 60% of the primary's direct effect

# Residual-stream directions (indices k of dir(k) = (e_2k - e_2k+1)/sqrt 2).
C_DIR, U_DIR, W_DIR = 0, 1, 2

ANSWER = "Paris"
FOIL = "Rome"
PROMPTS = [
    "the capital of France is",
    "the king of France went to",
    "When John and Mary went to the city of",
    "the festival in the capital was in",
]

ERASURE = dict(writer="L0H0", eraser="L1H1", answer=ANSWER, foil=FOIL, prompts=PROMPTS,
               erase_fraction=ERASE_FRACTION)
BACKUP = dict(primary="L0H0", backup="L1H0", answer=ANSWER, foil=FOIL, prompts=PROMPTS,
              backup_fraction=BACKUP_FRACTION)


def vocabulary() -> list[str]:
    return SPECIALS + [str(d) for d in range(10)] + list(dict.fromkeys(WORDS)) + [".", ",", "?", "!"]


def direction(k: int) -> Any:
    """The unit, mean-zero residual direction ``(e_2k - e_2k+1) / sqrt(2)``."""
    import torch

    v = torch.zeros(D_MODEL)
    v[2 * k] = 1.0
    v[2 * k + 1] = -1.0
    return v / math.sqrt(2.0)


def _rms_gain(sq_norm: float) -> float:
    """1 / (the RMSNorm's multiplier) for a residual vector of squared norm ``sq_norm``."""
    return math.sqrt(sq_norm / D_MODEL + RMS_EPS)


def _write_tokenizer(path: Path, vocab_list: list[str]) -> None:
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocab_list)}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
        pre_tokenizers.Digits(individual_digits=True)])
    tk.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>",
                                   pad_token="<pad>", eos_token="<pad>")
    fast.save_pretrained(str(path))


def _skeleton(**extra: Any) -> tuple[Any, dict[str, int]]:
    """A Llama model with every weight zero except norms (1), embeddings and unembedding
    (``extra``: more LlamaConfig settings)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab_list = vocabulary()
    vocab = {w: i for i, w in enumerate(vocab_list)}
    cfg = LlamaConfig(vocab_size=len(vocab_list), hidden_size=D_MODEL, intermediate_size=D_MLP,
                      num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                      num_key_value_heads=N_HEADS, head_dim=D_HEAD, max_position_embeddings=128,
                      rms_norm_eps=RMS_EPS, bos_token_id=vocab["<bos>"], eos_token_id=vocab["<pad>"],
                      pad_token_id=vocab["<pad>"], tie_word_embeddings=False,
                      attention_bias=False, mlp_bias=False, **extra)
    model = LlamaForCausalLM(cfg)
    C, U = direction(C_DIR), direction(U_DIR)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.zeros_like(p))
        model.model.embed_tokens.weight.copy_((EMBED_NORM * C).expand(len(vocab_list), D_MODEL))
        model.lm_head.weight[vocab[ANSWER]] = LOGIT_SCALE * U
        model.lm_head.weight[vocab[FOIL]] = -LOGIT_SCALE * U
    return model, vocab


def _set_ov(model: Any, layer: int, head: int, read: Any, write: Any) -> None:
    """Give ``head`` a rank-one OV circuit: value = read . x_normed, output = value * write.

    (HF layout: ``v_proj.weight`` is ``[n_heads * d_head, d_model]``, ``o_proj.weight`` is
    ``[d_model, n_heads * d_head]``; only the head's first value dimension is used.)
    """
    import torch

    attn = model.model.layers[layer].self_attn
    with torch.no_grad():
        attn.v_proj.weight[head * D_HEAD] = read
        attn.o_proj.weight[:, head * D_HEAD] = write


def _save(model: Any, path: str | Path, meta: dict[str, Any], vocab_list: list[str] | None = None) -> Path:
    from .weights import _quiet_transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        _write_tokenizer(path, vocabulary() if vocab_list is None else vocab_list)
        model.save_pretrained(str(path))
    (path / "PLANTED.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return path


def build_erasure(path: str | Path, *, control: bool = False) -> Path:
    """Write the erasure model (writer L0H0, eraser L1H1) or its control to ``path``."""
    model, _ = _skeleton()
    C, U, W = direction(C_DIR), direction(U_DIR), direction(W_DIR)
    # Writer: reads C (normed value sqrt(D_MODEL) at layer 0), writes WRITE * U.
    g0 = _rms_gain(EMBED_NORM ** 2)
    _set_ov(model, 0, 0, read=C * (g0 / EMBED_NORM), write=WRITE * U)
    g1 = _rms_gain(EMBED_NORM ** 2 + WRITE ** 2)  # layer-1 input: EMBED_NORM*C + WRITE*U
    if not control:
        # Eraser: reads U (exactly WRITE after calibrating for the norm), writes -0.95 of it.
        _set_ov(model, 1, 1, read=U * (g1 / WRITE), write=-ERASE_FRACTION * WRITE * U)
    else:
        # Control: an active head writing an orthogonal direction; erases nothing.
        _set_ov(model, 1, 1, read=C * (g1 / EMBED_NORM), write=WRITE * W)
    meta = dict(ERASURE, kind="erasure", control=control)
    return _save(model, path, meta)


def build_backup(path: str | Path, *, control: bool = False) -> Path:
    """Write the backup (self-repair) model (primary L0H0, backup L1H0) or its control."""
    model, _ = _skeleton()
    C, U = direction(C_DIR), direction(U_DIR)
    g0 = _rms_gain(EMBED_NORM ** 2)
    _set_ov(model, 0, 0, read=C * (g0 / EMBED_NORM), write=WRITE * U)
    # Calibrated on the ablated input (EMBED_NORM * C alone): value 1 there, 0 when clean.
    g1 = _rms_gain(EMBED_NORM ** 2)
    read = C / EMBED_NORM if control else C / EMBED_NORM - U / WRITE
    _set_ov(model, 1, 0, read=read * g1, write=BACKUP_FRACTION * WRITE * U)
    meta = dict(BACKUP, kind="backup", control=control)
    return _save(model, path, meta)


# --------------------------------------------------------------------------- edge models
# Edge-level ground truth (:func:`build_edges`, ``edges`` and ``edges_control``).
S_DIR, Y_DIR, K_DIR, M_DIR = 3, 4, 5, 6          # signal, relay, decoy key, decoy value
EDGE_SIGNAL = 2.0      # the clean token writes +EDGE_SIGNAL * S, the corrupted one -EDGE_SIGNAL * S
EDGE_RELAY = 3.5       # L0H0 writes EDGE_RELAY * (its value) along Y
EDGE_READ = 2.0        # L1H0 reads EDGE_READ * Y (normalized) through its value
EDGE_DECOY_QK = 5.0    # L1H1's query and key gains (on the head dimension rotary leaves still)
EDGE_ROPE_THETA = 1e30  # rotary base: the last dimension pair of each head turns by ~1e-26 rad per position
EDGES = dict(clean="cat", corrupted="dog", keys=("sat", "on"), answer=ANSWER, foil=FOIL,
             planted=("embed->L0H0.v", "L0H0->L1H0.v", "L1H0->logits"), decoy="L0H0->L1H1.q")
EDGE_PREFIXES = ("the", "a", "when the", "John said the", "then a", "Mary said a", "in France the", "when a")
EDGE_SUFFIXES = ("sat on the mat", "sat on a mat then")
# (clean, corrupted) pairs: one token differs (cat / dog); "sat" and "on" come after it
EDGE_PROMPTS = [(f"{p} cat {s}", f"{p} dog {s}") for p in EDGE_PREFIXES for s in EDGE_SUFFIXES]


def build_edges(path: str | Path, *, control: bool = False) -> Path:
    """Write the edge model or its control to ``path``.

    Every token embeds as ``EMBED_NORM * C``; ``cat`` adds ``+EDGE_SIGNAL * S`` and ``dog``
    ``-EDGE_SIGNAL * S`` (clean and corrupted prompts differ only there, and the two have
    one norm, so every RMSNorm scale is the same in both runs); ``sat`` adds ``K + M`` and
    ``on`` ``-K + M``. Query and key weights are zero except the decoy's.

    * ``L0H0`` (relay) reads ``S`` through its value and writes ``EDGE_RELAY * Y``; uniform
      attention, so every position from the signal on carries the sign of the signal.
    * ``L1H0`` (reader) reads ``Y`` through its *value* only and writes ``U``, which the
      unembedding reads (logit(Paris) - logit(Rome)).
    * ``L1H1`` (decoy): its query reads ``Y`` and its key ``K`` (on the head dimension
      rotary embeddings leave fixed: :data:`EDGE_ROPE_THETA`), its value reads ``M`` and it
      writes ``U``. ``sat`` and ``on`` get scores ``+s`` and ``-s`` with ``s`` proportional to
      the relay's sign, and equal values: its output depends on ``e^s + e^-s``, even in ``s``.
      Flipping the signal leaves it exactly as it was (the edge ``L0H0 -> L1H1.q`` has exact
      effect 0), while its derivative there is large: a first-order attribution gives the edge
      a large score.

    The planted edges are :data:`EDGES` ``["planted"]``; the decoy ``L0H0->L1H1.q``. Control
    (``control=True``): the relay writes along ``W`` (read by nothing) instead of ``Y``, so
    no edge has an effect (and the corruption changes nothing)."""
    import torch

    model, vocab = _skeleton(rope_parameters={"rope_type": "default", "rope_theta": EDGE_ROPE_THETA})
    C, S, Y, K, M, U, W = (direction(k) for k in (C_DIR, S_DIR, Y_DIR, K_DIR, M_DIR, U_DIR, W_DIR))
    emb = model.model.embed_tokens.weight
    last = D_HEAD // 2 - 1                  # the head dimension pair with the slowest rotary frequency
    with torch.no_grad():
        emb[vocab["cat"]] += EDGE_SIGNAL * S
        emb[vocab["dog"]] -= EDGE_SIGNAL * S
        emb[vocab["sat"]] += K + M
        emb[vocab["on"]] += M - K
        _set_ov(model, 0, 0, read=S, write=EDGE_RELAY * (W if control else Y))
        _set_ov(model, 1, 0, read=EDGE_READ * Y, write=U)
        _set_ov(model, 1, 1, read=M, write=U)
        attn = model.model.layers[1].self_attn
        attn.q_proj.weight[D_HEAD + last] = EDGE_DECOY_QK * Y
        attn.k_proj.weight[D_HEAD + last] = EDGE_DECOY_QK * K
    meta = dict(EDGES, kind="edges", control=control)
    return _save(model, path, meta)


# --------------------------------------------------------------------------- ordinal models
# Successor heads and copy suppression (Gould et al. 2023, arXiv:2312.09230; McDougall et
# al. 2023, arXiv:2310.04625): see :func:`build_ordinal`.
ORDINAL_WORDS = (
    [str(d) for d in range(10)]
    + ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    + ["January", "February", "March", "April", "May", "June", "July", "August", "September",
       "October", "November", "December"]
    + ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    + ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]
    + list("ABCDEFGH")
    + ["the", "and", ".", ","]
)
ORDINAL_SEQUENCES = (
    [str(d) for d in range(1, 10)],
    ORDINAL_WORDS[10:17], ORDINAL_WORDS[17:29], ORDINAL_WORDS[29:39], ORDINAL_WORDS[39:49],
    ORDINAL_WORDS[49:57],
)
ORDINAL_D = 64         # d_model = d_head = vocabulary size: one residual dimension per token
ORDINAL_HEADS = 4
ORDINAL_EMBED = 8.0    # token t embeds as ORDINAL_EMBED * e_t, so its RMS is 1
ORDINAL = dict(successor="L1H0", copy_suppression="L1H1", copying=["L1H2"], zero=["L1H3"],
               n_pairs=50)
ORDINAL_CONTROL = dict(successor=None, copy_suppression=None, copying=["L1H0", "L1H1", "L1H2"],
                       predecessor="L1H3", n_pairs=50)


def ordinal_vocabulary() -> list[str]:
    return SPECIALS + ORDINAL_WORDS


def _ordinal_maps() -> tuple[Any, Any, Any]:
    """``(S, P, I)``, ``[D, D]`` over token indices: successor (``S[succ(t), t] = 1``),
    predecessor (its transpose) and the identity on ordinary (non-special) tokens."""
    import torch

    vocab = {w: i for i, w in enumerate(ordinal_vocabulary())}
    S = torch.zeros(ORDINAL_D, ORDINAL_D)
    for seq in ORDINAL_SEQUENCES:
        for a, b in zip(seq, seq[1:]):
            S[vocab[b], vocab[a]] = 1.0
    ident = torch.eye(ORDINAL_D)
    for s in SPECIALS:
        ident[vocab[s], vocab[s]] = 0.0
    return S, S.T.clone(), ident


def build_ordinal(path: str | Path, *, control: bool = False) -> Path:
    """Write the ordinal model (successor head L1H0, copy-suppression head L1H1, copying
    head L1H2, L1H3 zero) or its control (L1H0..L1H2 copying, L1H3 a predecessor head).

    Llama, 2 layers, ``d_model = d_head = 64`` = the vocabulary size (specials, digits,
    weekdays, months, number words one..ten, ordinals first..tenth, letters A..H, "the",
    "and", ".", ","): token ``t`` embeds as ``8 e_t`` (RMS 1, so ``ln1`` leaves it ``~8 e_t``),
    the unembedding is the identity (``logit_u = resid_u / rms``). Every weight of layer 0
    and both MLPs is 0, so the effective embedding is the embedding itself. All query and
    key weights are 0: attention is uniform over the causal prefix. Layer 1's heads have
    OV circuits ``W_O W_V = P M / 8`` with (``M`` into the head, ``P`` out of it)
    successor ``M = S, P = I`` (``e_t -> e_succ(t)`` within each of the six sequences),
    copy suppression ``M = I, P = -I``, copying ``M = I, P = I``, predecessor ``M = S^T``.
    50 (token, successor) pairs: 1..9 (8), weekdays (6), months (11), one..ten (9),
    first..tenth (9), A..H (7).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab_list = ordinal_vocabulary()
    vocab = {w: i for i, w in enumerate(vocab_list)}
    assert len(vocab_list) == ORDINAL_D
    cfg = LlamaConfig(vocab_size=ORDINAL_D, hidden_size=ORDINAL_D, intermediate_size=D_MLP,
                      num_hidden_layers=2, num_attention_heads=ORDINAL_HEADS,
                      num_key_value_heads=ORDINAL_HEADS, head_dim=ORDINAL_D, max_position_embeddings=128,
                      rms_norm_eps=RMS_EPS, bos_token_id=vocab["<bos>"], eos_token_id=vocab["<pad>"],
                      pad_token_id=vocab["<pad>"], tie_word_embeddings=False,
                      attention_bias=False, mlp_bias=False)
    model = LlamaForCausalLM(cfg)
    S, P, ident = _ordinal_maps()
    if control:
        heads = [(ident, ident), (ident, ident), (ident, ident), (P, ident)]
    else:
        heads = [(S, ident), (ident, -ident), (ident, ident), None]
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.zeros_like(p))
        model.model.embed_tokens.weight.copy_(ORDINAL_EMBED * torch.eye(ORDINAL_D))
        model.lm_head.weight.copy_(torch.eye(ORDINAL_D))
        attn = model.model.layers[1].self_attn
        D = ORDINAL_D
        for h, maps in enumerate(heads):
            if maps is None:
                continue
            M, out = maps
            attn.v_proj.weight[h * D:(h + 1) * D] = M / ORDINAL_EMBED
            attn.o_proj.weight[:, h * D:(h + 1) * D] = out
    meta = dict(ORDINAL_CONTROL if control else ORDINAL, kind="ordinal", control=control,
                sequences=ORDINAL_SEQUENCES)
    return _save(model, path, meta, vocab_list)


BUILDERS = {
    "erasure": lambda p: build_erasure(p),
    "erasure_control": lambda p: build_erasure(p, control=True),
    "backup": lambda p: build_backup(p),
    "backup_control": lambda p: build_backup(p, control=True),
}
# Kept apart from BUILDERS: the tests that iterate BUILDERS check erasure/backup numbers.
ORDINAL_BUILDERS = {
    "ordinal": lambda p: build_ordinal(p),
    "ordinal_control": lambda p: build_ordinal(p, control=True),
}
