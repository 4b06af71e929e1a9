"""The architecture matrix: a tiny random checkpoint of every model family a research team
is likely to bring, built offline from the family's ``transformers`` config class.

``build(family, folder)`` writes a checkpoint folder (``config.json``, safetensors weights
and a word-level tokenizer) that :func:`pytest_circuits.load_model` loads exactly as it
loads a user's checkpoint. Each model keeps its family's structure at toy size (2 layers,
``d_model`` 64, a vocabulary of about 120 words): grouped-query attention, parallel
attention and MLP, partial rotary, QKV biases, QK-norm, sandwich norms, logit soft-capping,
sliding windows shorter than the test prompts, ALiBi, mixture-of-experts routing. Every
bias and every norm weight is set to clearly non-zero random values (Hugging Face
initialises biases to 0 and norm weights to 1 or 0), so a measurement that forgets a
writer, or a norm it cannot fold, is caught on it.

:data:`FAMILIES` names them with the features each one exercises; the project's tests take
"every architecture" from it (``tests/conftest.py``: the ``arch_checkpoint`` fixture).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import CircuitsError, bad

SPECIALS = ["<unk>", "<bos>", "<pad>"]
WORDS = (
    "the a of to in is was and from year lasted war expedition project dynasty siege treaty "
    "journey reign festival capital France Paris Germany Berlin Italy Rome Spain Madrid Japan "
    "Tokyo country city river king queen cat dog sat on mat when then John Mary gave went store "
    "bag ball said The When A In"
).split()

# Sliding windows are this many tokens: shorter than the prompts the matrix tests use, so a
# run that ignores the window differs from the model's own forward.
WINDOW = 4


@dataclass(frozen=True)
class Sizes:
    """The dimensions every family is built at (what its config calls them differs)."""

    vocab: int
    bos: int
    pad: int
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_mlp: int = 128
    positions: int = 128


@dataclass(frozen=True)
class FullSize:
    """A published model's dimensions, to build a random stand-in of it (:func:`build_full_size`)."""

    family: str
    shape_of: str                   # the model whose dimensions these are
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    vocab: int
    positions: int
    n_kv_heads: int | None = None
    two_digit_numbers: bool = False


# Real dimensions, random weights: what only real sizes show (memory per forward, batch
# sizing, dtype) without a download. STAND_IN marks their folders: the plugin reports a
# claim that fails its threshold on one as "not checked: random weights".
FULL_SIZE: dict[str, FullSize] = {
    "gpt2-small": FullSize("gpt2", "GPT-2 small (124M)", 12, 768, 12, 3072, 50257, 1024, two_digit_numbers=True),
    "pythia-160m": FullSize("neox", "Pythia-160M", 12, 768, 12, 3072, 50304, 2048),
    "llama-1b": FullSize("gqa", "TinyLlama-1.1B (a ~1B Llama)", 22, 2048, 32, 5632, 32000, 2048, n_kv_heads=4),
}
STAND_IN = "STAND_IN.json"


@dataclass(frozen=True)
class Family:
    """One model family of the matrix: its ``transformers`` classes, what it exercises, and
    how its config is made from :class:`Sizes`."""

    name: str
    title: str                      # as docs/models.md names it
    model_class: str                # the transformers causal-LM class
    features: tuple[str, ...]       # the architectural features it exercises
    config: Callable[[Sizes], Any]  # Sizes -> a transformers config
    gqa: bool = False               # n_kv_heads applies
    moe: bool = False               # its MLPs (some of them) are mixtures of experts
    tokenizer: str = "words"         # "words" (word-level) or "bpe" (byte-level BPE, Qwen2's split)


def _cfg(cls_name: str, **kw: Any) -> Any:
    import transformers

    return getattr(transformers, cls_name)(**kw)


def _ids(s: Sizes) -> dict[str, int]:
    return {"bos_token_id": s.bos, "eos_token_id": s.pad, "pad_token_id": s.pad}


def _llama_like(cls_name: str, s: Sizes, **kw: Any) -> Any:
    base = dict(vocab_size=s.vocab, hidden_size=s.d_model, intermediate_size=s.d_mlp,
                num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads,
                num_key_value_heads=s.n_kv_heads or s.n_heads, max_position_embeddings=s.positions,
                tie_word_embeddings=False, **_ids(s))
    base.update(kw)
    return _cfg(cls_name, **base)


def _gpt2(s: Sizes) -> Any:
    return _cfg("GPT2Config", vocab_size=s.vocab, n_positions=s.positions, n_embd=s.d_model, n_layer=s.n_layers,
                n_head=s.n_heads, n_inner=s.d_mlp, tie_word_embeddings=False, **_ids(s))


def _neox(s: Sizes) -> Any:
    return _cfg("GPTNeoXConfig", vocab_size=s.vocab, hidden_size=s.d_model, num_hidden_layers=s.n_layers,
                num_attention_heads=s.n_heads, intermediate_size=s.d_mlp, rotary_pct=0.25,
                use_parallel_residual=True, max_position_embeddings=s.positions, tie_word_embeddings=False,
                **_ids(s))


def _gptj(s: Sizes) -> Any:
    return _cfg("GPTJConfig", vocab_size=s.vocab, n_positions=s.positions, n_embd=s.d_model, n_layer=s.n_layers,
                n_head=s.n_heads, n_inner=s.d_mlp, rotary_dim=(s.d_model // s.n_heads) // 2,
                tie_word_embeddings=False, **_ids(s))


def _bloom(s: Sizes) -> Any:
    return _cfg("BloomConfig", vocab_size=s.vocab, hidden_size=s.d_model, n_layer=s.n_layers, n_head=s.n_heads,
                tie_word_embeddings=False, **_ids(s))


def _mixtral(s: Sizes) -> Any:
    return _llama_like("MixtralConfig", s, num_local_experts=4, num_experts_per_tok=2, sliding_window=None)


def _qwen3_moe(s: Sizes) -> Any:
    # layer 0 keeps a dense MLP (``mlp_only_layers``), the others are sparse; the top-k routing
    # weights are left as the router's probabilities (not renormalized to sum to 1), unlike Mixtral
    return _llama_like("Qwen3MoeConfig", s, num_key_value_heads=s.n_kv_heads or s.n_heads // 2,
                       head_dim=s.d_model // s.n_heads, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=s.d_mlp // 2, mlp_only_layers=[0], norm_topk_prob=False)


def _phi3(s: Sizes) -> Any:
    return _llama_like("Phi3Config", s, partial_rotary_factor=0.5, sliding_window=None)


def _gemma(cls_name: str, s: Sizes, **kw: Any) -> Any:
    return _llama_like(cls_name, s, head_dim=s.d_model // s.n_heads, tie_word_embeddings=True, **kw)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("gpt2", "GPT-2", "GPT2LMHeadModel",
           ("LayerNorm", "learned positions", "biases everywhere"), _gpt2),
    Family("llama", "Llama", "LlamaForCausalLM", ("RMSNorm", "rotary", "gated MLP"),
           lambda s: _llama_like("LlamaConfig", s), gqa=True),
    Family("gqa", "Llama (grouped-query)", "LlamaForCausalLM", ("grouped-query attention",),
           lambda s: _llama_like("LlamaConfig", s, num_key_value_heads=s.n_kv_heads or s.n_heads // 2), gqa=True),
    Family("neox", "GPT-NeoX / Pythia", "GPTNeoXForCausalLM",
           ("parallel attention and MLP", "partial rotary (25%)", "biases"), _neox),
    Family("gptj", "GPT-J", "GPTJForCausalLM",
           ("parallel attention and MLP (one norm)", "interleaved partial rotary", "MLP and unembedding biases"),
           _gptj),
    Family("mistral", "Mistral", "MistralForCausalLM",
           (f"sliding window ({WINDOW} tokens)", "grouped-query attention"),
           lambda s: _llama_like("MistralConfig", s, num_key_value_heads=s.n_kv_heads or s.n_heads // 2,
                                 sliding_window=WINDOW), gqa=True),
    Family("qwen2", "Qwen2 / Qwen2.5", "Qwen2ForCausalLM",
           ("QKV biases", "grouped-query attention", "byte-level BPE tokenizer"),
           lambda s: _llama_like("Qwen2Config", s, num_key_value_heads=s.n_kv_heads or s.n_heads // 2), gqa=True,
           tokenizer="bpe"),
    Family("qwen3", "Qwen3", "Qwen3ForCausalLM", ("QK-norm", "grouped-query attention"),
           lambda s: _llama_like("Qwen3Config", s, num_key_value_heads=s.n_kv_heads or s.n_heads // 2,
                                 head_dim=s.d_model // s.n_heads), gqa=True),
    Family("gemma", "Gemma", "GemmaForCausalLM",
           ("scaled embedding", "GeGLU", "tied embeddings", "(1 + w) RMSNorm"),
           lambda s: _gemma("GemmaConfig", s)),
    Family("gemma2", "Gemma-2", "Gemma2ForCausalLM",
           ("final logit soft-capping", "attention soft-capping", "sandwich norms",
            f"sliding window ({WINDOW} tokens, every other layer)"),
           lambda s: _gemma("Gemma2Config", s, sliding_window=WINDOW, final_logit_softcapping=5.0,
                            attn_logit_softcapping=10.0, query_pre_attn_scalar=s.d_model // s.n_heads)),
    Family("gemma3", "Gemma-3", "Gemma3ForCausalLM",
           ("QK-norm", "sandwich norms", f"sliding window ({WINDOW} tokens, local layers)"),
           lambda s: _gemma("Gemma3TextConfig", s, sliding_window=WINDOW, query_pre_attn_scalar=s.d_model // s.n_heads,
                            layer_types=["sliding_attention", "full_attention"] * (s.n_layers // 2)
                            + ["sliding_attention"] * (s.n_layers % 2))),
    Family("phi3", "Phi-3", "Phi3ForCausalLM", ("fused QKV", "fused gate/up", "partial rotary"), _phi3),
    Family("olmo2", "OLMo-2", "Olmo2ForCausalLM", ("norms after attention and MLP (no pre-norm)", "QK-norm"),
           lambda s: _llama_like("Olmo2Config", s)),
    Family("mixtral", "Mixtral (mixture of experts)", "MixtralForCausalLM",
           ("mixture of experts (4 experts, top 2)",), _mixtral, gqa=True, moe=True),
    Family("qwen3moe", "Qwen3-MoE (mixture of experts)", "Qwen3MoeForCausalLM",
           ("mixture of experts (4 experts, top 2, weights not renormalized)", "a dense MLP in layer 0",
            "QK-norm"), _qwen3_moe, gqa=True, moe=True),
    Family("bloom", "BLOOM", "BloomForCausalLM", ("ALiBi", "embedding LayerNorm", "fused QKV", "biases"), _bloom),
]}


# -- the matrix: techniques x families -------------------------------------------------------
# What tests/unit/test_architecture_matrix.py (and the family-wide tests of the intervention
# matrix and suffix forwards) check for each family, by technique.
TECHNIQUES: dict[str, str] = {
    "load": "the checkpoint folder loads (weights fingerprinted); the store's clean run equals the model's own "
            "forward",
    "hooks": "every hook the package reads exists; the residual stream is the sum of its writers, an attention "
             "layer's output the sum of its heads' writes",
    "ablations": "every ablation kind x positions equals the same replacement made by hand with raw hooks; an "
                 "ablation of nothing changes nothing",
    "suffix": "an intervened run that recomputes only the positions it can change (clean keys and values before "
              "them) equals the full forward; with nothing changed, the model's own forward",
    "direct effects": "the direct effects sum to the model's own logit",
    "self-repair": "total effect = own + downstream + norm term, and equals the change of the logits",
    "erasure": "projection ratios from the heads' outputs equal those recomputed from their value path",
    "patching": "activation and path patching of the clean run into itself change nothing",
    "probes": "probe features equal the hook values read with raw hooks",
    "half precision": "in bfloat16 the direct effects still sum to the logit (within bfloat16 error)",
    "checkup": "every check of the mechanism checkup runs to a verdict for the card, or is not applicable "
               "for a reason given on it",
    "experts": "each expert's output (its MLP's output times its routing weight) equals a raw-torch recomputation "
               "from the Hugging Face model's router and expert weights at every position, and the experts sum to "
               "the MLP's output; direct effects split into experts (`experts=True`) sum to the model's own logit; "
               "zero ablation of an expert equals removing its output by hand, with the self-repair decomposition "
               "exact",
}


@dataclass(frozen=True)
class Outcome:
    """What a cell of the matrix is: ``"exact"``; ``"option"``: exact with the keyword arguments
    ``option`` and refused without them (the refusal names ``feature``); ``"refused"``: a project
    error naming ``feature``, with ``why``."""

    kind: str = "exact"
    option: tuple[tuple[str, Any], ...] = ()
    feature: str = ""
    why: str = ""

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.option)

    def describe(self) -> str:
        if self.kind == "exact":
            return "exact"
        if self.kind == "option":
            opts = ", ".join(f"{k}={v!r}" for k, v in self.option)
            return f"exact with `{opts}` ({self.feature})"
        return f"refused: {self.feature} ({self.why})" if self.why else f"refused: {self.feature}"


_SOFTCAP = Outcome("option", (("logit", "pre_softcap"),), "final logit soft-capping",
                   "the capped logit is not a sum of the writers' effects, so without the option the cell is "
                   "refused; the pre-cap logit is, and total effects read the capped logits")

_POST_NORM_CHECKUP = Outcome(
    "refused", feature="norm after attention",
    why="the IOI, successor and copy-suppression detectors read a head's OV circuit or direct effect from "
        "z W_O alone, which a norm after attention rescales by the whole layer's output: they are not "
        "applicable (with this reason on the card); the other checks run")

_DENSE = Outcome(
    "refused", feature="mixture of experts",
    why="a dense model has none; expert components (`L1E0`) and `experts=True` are refused with an error saying "
        "so, and each MLP is measured as one component")

# Every cell not listed here is expected exact.
EXPECTED: dict[tuple[str, str], Outcome] = {
    **{("experts", f.name): _DENSE for f in FAMILIES.values() if not f.moe},
    ("probes", "mixtral"): Outcome(
        "refused", feature="mixture of experts",
        why="every layer is a mixture of experts, whose block has no post-activation neuron hook: there are "
            "no neurons to probe (Qwen3-MoE's dense layer 0 is probed; its sparse layers are refused too)"),
    ("checkup", "gemma2"): _POST_NORM_CHECKUP,
    ("checkup", "gemma3"): _POST_NORM_CHECKUP,
    ("checkup", "olmo2"): _POST_NORM_CHECKUP,
    ("direct effects", "gemma2"): _SOFTCAP,
    ("self-repair", "gemma2"): _SOFTCAP,
    ("half precision", "gemma2"): _SOFTCAP,
    ("half precision", "olmo2"): Outcome(
        "refused", feature="bfloat16",
        why="TransformerLens 4.3's OLMo-2 attention applies OLMo-2's float32 rotary embeddings without casting "
            "back, so its bfloat16 forward fails; load it in float32"),
}


def expected(technique: str, family: str) -> Outcome:
    """The outcome the matrix expects of ``technique`` on ``family``."""
    if technique not in TECHNIQUES:
        raise CircuitsError(bad("technique", technique, "one of " + ", ".join(TECHNIQUES)))
    if family not in FAMILIES:
        raise CircuitsError(bad("family", family, "one of " + ", ".join(FAMILIES)))
    return EXPECTED.get((technique, family), Outcome())


RESULTS_ENV = "PYTEST_CIRCUITS_MATRIX_RESULTS"


def record_cell(technique: str, family: str, outcome: Outcome) -> None:
    """Append a cell's observed outcome to the file named by ``$PYTEST_CIRCUITS_MATRIX_RESULTS``
    (one JSON line; nothing when unset): what scripts/models_table.py renders docs/models.md
    from."""
    import os

    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    line = json.dumps({"technique": technique, "family": family, "kind": outcome.kind,
                       "option": [list(o) for o in outcome.option], "feature": outcome.feature,
                       "why": outcome.why})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def architecture_name(model: Any) -> str:
    """How docs and errors name a loaded model's architecture: its family's title when the
    Hugging Face class it was loaded as is one of :data:`FAMILIES` (e.g. "Gemma-2"), else
    that class's name."""
    hf = getattr(model, "original_model", None)
    cls = type(hf).__name__ if hf is not None else type(model).__name__
    return next((f.title for f in FAMILIES.values() if f.model_class == cls), cls)


def families() -> list[str]:
    """The names of the matrix's families, in the order of :data:`FAMILIES`."""
    return list(FAMILIES)


def write_tokenizer(path: str | Path, *, words: Iterable[str] = WORDS, two_digit_numbers: bool = False) -> dict[str, int]:
    """Write a word-level tokenizer into ``path`` and return its vocabulary.

    Numbers are split one token per digit (like SmolLM2 or Llama), or with
    ``two_digit_numbers=True`` into two-digit tokens "00".."99" (like GPT-2's years)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    numbers = [f"{d:02d}" for d in range(100)] if two_digit_numbers else [str(d) for d in range(10)]
    vocab_list = SPECIALS + numbers + list(dict.fromkeys(words)) + [".", ",", "?", "!"]
    vocab = {w: i for i, w in enumerate(vocab_list)}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    if two_digit_numbers:
        from tokenizers import Regex

        split_digits = pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated")
    else:
        split_digits = pre_tokenizers.Digits(individual_digits=True)
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), split_digits])
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>",
                                   pad_token="<pad>", eos_token="<pad>")
    fast.save_pretrained(str(path))
    return vocab


# The pre-tokenizer of Qwen2's byte-level BPE: words with their leading space, digits one by one.
_QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def _byte_chars() -> dict[int, str]:
    """Byte -> printable character, as byte-level BPE vocabularies spell bytes (a space is
    "Ġ"): printable Latin-1 bytes stand for themselves, the others are shifted past 255."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def write_bpe_tokenizer(path: str | Path, *, words: Iterable[str] = WORDS) -> dict[str, int]:
    """Write a byte-level BPE tokenizer (Qwen2's pre-tokenizer: a word keeps its leading
    space, digits are split one by one) into ``path`` and return its vocabulary.

    Every word is one token with its leading space (" cat"), built by merges that only ever
    extend a space-led token, so they apply in one order whatever the word; the words a
    prompt may start with are one token without it ("the") where their merges cannot
    interfere with those of another word (checked: a word whose plain spelling would not come
    out whole keeps its space-led token only). Used for the families whose ``transformers``
    tokenizer class rebuilds a tokenizer from vocabulary and merges (Qwen2), so that class
    reads it as written."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()

    def spell(text: str) -> str:
        return "".join(chars[b] for b in text.encode())

    items = list(dict.fromkeys(words)) + [".", ",", "?", "!"]
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for c in sorted({c for w in items for c in spell(" " + w)} | set(spell("0123456789 "))):
        vocab.setdefault(c, len(vocab))
    spaced: list[tuple[str, str]] = []
    plain: list[tuple[str, str]] = []

    def chain(text: str, into: list[tuple[str, str]], add: dict[str, int]) -> None:
        cur = text[0]
        for ch in text[1:]:
            if cur + ch not in vocab and cur + ch not in add:
                add[cur + ch] = len(vocab) + len(add)
                into.append((cur, ch))
            cur += ch

    added: dict[str, int] = {}
    for w in items:
        chain(spell(" " + w), spaced, added)
    vocab.update(added)
    kept: list[tuple[str, str]] = []
    for w in items:
        if not w.isalpha():
            continue
        trial: list[tuple[str, str]] = []
        extra: dict[str, int] = {}
        chain(spell(w), trial, extra)
        model = Tokenizer(BPE(vocab={**vocab, **extra}, merges=spaced + kept + trial, unk_token=None))
        model.pre_tokenizer = pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False)
        probe = [w] + [x for x in items if x.isalpha()]
        if all(len(model.encode(spell(x)).tokens) == 1 for x in probe[:1]) and all(
                model.encode(spell(" " + x)).tokens == [spell(" " + x)] for x in probe[1:]):
            kept += trial
            vocab.update({t: len(vocab) + i for i, t in enumerate(extra)})
    tk = Tokenizer(BPE(vocab=vocab, merges=spaced + kept, unk_token=None, fuse_unk=False, byte_fallback=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>",
                                   pad_token="<pad>", eos_token="<pad>")
    fast.save_pretrained(str(path))
    return vocab


def _perturb(model: Any, family: str) -> None:
    """Clearly non-zero biases and norm weights (and learned positions the size of the token
    embeddings), so every writer and every norm matters."""
    import torch

    norm_words = ("norm", "ln_", "ln_f", "layernorm")
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 2)
            owner = leaf[-2] if len(leaf) > 1 else ""
            if any(w in owner.lower() for w in norm_words) and name.endswith("weight"):
                p.add_(0.2 * torch.randn_like(p))      # around the family's own init (1, or 0 for 1 + w)
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif name.endswith(("wpe.weight", "embed_positions.weight")):
                emb = model.get_input_embeddings().weight
                p.copy_(emb.std() * torch.randn_like(p))


def build_full_size(name: str, path: str | Path, *, seed: int = 0, words: Iterable[str] = WORDS) -> Path:
    """Write a random stand-in with the real dimensions of :data:`FULL_SIZE` ``name`` (its
    family's structure, the published vocabulary size; a word-level tokenizer over ``words``:
    pass ``WORDS + tasks.ioi.vocabulary()`` for the IOI claims) into ``path``, marked with
    :data:`STAND_IN`."""
    if name not in FULL_SIZE:
        raise CircuitsError(bad("name", name, "one of " + ", ".join(FULL_SIZE)))
    f = FULL_SIZE[name]
    path = build(f.family, path, seed=seed, n_layers=f.n_layers, d_model=f.d_model, n_heads=f.n_heads,
                 n_kv_heads=f.n_kv_heads, d_mlp=f.d_mlp, words=words,
                 two_digit_numbers=f.two_digit_numbers, vocab_size=f.vocab, positions=f.positions)
    (path / STAND_IN).write_text(json.dumps({"random_weights": True, "shape_of": f.shape_of, "seed": seed}))
    return path


def stand_in(folder: str | Path) -> dict | None:
    """What :data:`STAND_IN` says of a checkpoint folder (None when it has none: real weights,
    as far as the project can tell)."""
    marker = Path(folder) / STAND_IN
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("random_weights") is True else None


def build(family: str, path: str | Path, *, seed: int = 0, n_layers: int = 2, d_model: int = 64,
          n_heads: int = 4, n_kv_heads: int | None = None, d_mlp: int = 128, words: Iterable[str] = WORDS,
          two_digit_numbers: bool = False, vocab_size: int | None = None, positions: int = 128) -> Path:
    """Write a random tiny checkpoint of ``family`` (one of :data:`FAMILIES`) with a word-level
    tokenizer into ``path`` and return it. Loading it with :func:`pytest_circuits.load_model`
    goes the way a user's checkpoint folder does."""
    import torch
    import transformers

    if family not in FAMILIES:
        raise CircuitsError(bad("family", family, "one of " + ", ".join(FAMILIES)))
    fam = FAMILIES[family]
    if n_kv_heads is not None and (not fam.gqa or n_kv_heads < 1 or n_heads % n_kv_heads):
        raise CircuitsError(bad("n_kv_heads", n_kv_heads, f"a divisor of n_heads={n_heads}, for a family with "
                                "grouped-query attention (" + ", ".join(f for f, x in FAMILIES.items() if x.gqa)
                                + ")"))
    path = Path(path)
    if fam.tokenizer == "bpe":
        if two_digit_numbers:
            raise CircuitsError(bad("two_digit_numbers", True, f"False for {family} (its byte-level BPE splits "
                                    "digits one by one)"))
        vocab = write_bpe_tokenizer(path, words=words)
    else:
        vocab = write_tokenizer(path, words=words, two_digit_numbers=two_digit_numbers)
    if vocab_size is not None and vocab_size < len(vocab):
        raise CircuitsError(bad("vocab_size", vocab_size, f"at least the tokenizer's {len(vocab)} tokens"))
    sizes = Sizes(vocab=vocab_size or len(vocab), bos=vocab["<bos>"], pad=vocab["<pad>"], n_layers=n_layers,
                  d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_mlp=d_mlp, positions=positions)
    torch.manual_seed(seed)
    config = fam.config(sizes)
    model = getattr(transformers, fam.model_class)(config)
    _perturb(model, family)
    model.save_pretrained(str(path))
    meta: dict[str, Any] = {"seed": seed, "n_layers": n_layers, "family": family}
    if n_kv_heads is not None and n_kv_heads != n_heads:
        meta["n_kv_heads"] = n_kv_heads
    (path / "TINY.json").write_text(json.dumps(meta))
    return path
