"""Tiny offline models for tests and planted mechanisms.

:func:`make_tiny_checkpoint` writes a small random Llama checkpoint (safetensors) with
a word-level tokenizer (digits split one per token) into a folder; loading that folder
with :func:`pytest_circuits.load_model` exercises the same path as a real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from .errors import CircuitsError, bad

SPECIALS = ["<unk>", "<bos>", "<pad>"]
WORDS = (
    "the a of to in is was and from year lasted war expedition project dynasty siege treaty "
    "journey reign festival capital France Paris Germany Berlin Italy Rome Spain Madrid Japan "
    "Tokyo country city river king queen cat dog sat on mat when then John Mary gave went store "
    "bag ball said The When A In"
).split()


def make_tiny_checkpoint(path: str | Path, *, n_layers: int = 2, d_model: int = 64, n_heads: int = 4,
                         n_kv_heads: int | None = None, d_mlp: int = 128, seed: int = 0,
                         words: Iterable[str] = WORDS, two_digit_numbers: bool = False,
                         arch: str = "llama") -> Path:
    """Write a random tiny Llama checkpoint + tokenizer to ``path`` and return it.

    Numbers are split one token per digit (like SmolLM2 or Llama), or with
    ``two_digit_numbers=True`` into two-digit tokens "00".."99" (like GPT-2's years).
    ``arch="gpt2"`` writes a GPT-2 architecture instead (LayerNorm with biases, learned
    positions, attention biases; ``n_kv_heads`` does not apply), to exercise claims
    written for GPT-2 without its weights. Every bias (query/key/value and attention
    output, both MLP layers, both LayerNorms and the final one) and the learned position
    embeddings are set to clearly non-zero random values (HF initialises biases to 0),
    so a measurement that forgets a writer to the residual stream is caught on it.

    ``n_kv_heads < n_heads`` (Llama) gives grouped-query attention, as in SmolLM2.
    """
    import torch
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    torch.manual_seed(seed)
    if arch not in ("llama", "gpt2"):
        raise CircuitsError(bad("arch", arch, "'llama' or 'gpt2'"))
    if n_kv_heads is not None and (n_kv_heads < 1 or n_heads % n_kv_heads):
        raise CircuitsError(bad("n_kv_heads", n_kv_heads, f"a divisor of n_heads={n_heads}"))
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        gcfg = GPT2Config(vocab_size=len(vocab_list), n_positions=128, n_embd=d_model, n_layer=n_layers,
                          n_head=n_heads, n_inner=d_mlp, bos_token_id=vocab["<bos>"],
                          eos_token_id=vocab["<pad>"], pad_token_id=vocab["<pad>"], tie_word_embeddings=False)
        gmodel = GPT2LMHeadModel(gcfg)
        with torch.no_grad():
            for name, p in gmodel.named_parameters():
                if (".ln_" in name or name.startswith("transformer.ln_f")) and name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif name.endswith("bias"):
                    # non-zero biases everywhere: attention (qkv, output), MLP (in, out), LayerNorms
                    p.copy_(0.2 * torch.randn_like(p))
                elif name == "transformer.wpe.weight":
                    # learned positions of the same size as the token embeddings
                    p.copy_(gmodel.transformer.wte.weight.std() * torch.randn_like(p))
        gmodel.save_pretrained(str(path))
        (path / "TINY.json").write_text(json.dumps({"seed": seed, "n_layers": n_layers, "arch": arch,
                                                    "biases": "non-zero"}))
        return path
    cfg = LlamaConfig(vocab_size=len(vocab_list), hidden_size=d_model, intermediate_size=d_mlp,
                      num_hidden_layers=n_layers, num_attention_heads=n_heads,
                      num_key_value_heads=n_kv_heads or n_heads, max_position_embeddings=128,
                      bos_token_id=vocab["<bos>"], eos_token_id=vocab["<pad>"],
                      pad_token_id=vocab["<pad>"], tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        # Non-trivial norms so folding them is exercised.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    model.save_pretrained(str(path))
    meta = {"seed": seed, "n_layers": n_layers}
    if n_kv_heads is not None and n_kv_heads != n_heads:
        meta["n_kv_heads"] = n_kv_heads
    (path / "TINY.json").write_text(json.dumps(meta))
    return path
