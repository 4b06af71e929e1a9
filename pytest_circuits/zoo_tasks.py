"""The decoy zoo for the IOI, successor-head and greater-than checks (:mod:`pytest_circuits.zoo`).

Every checkpoint here is built from plain weights, deterministically (no training), as a
``transformers`` Llama or GPT-2 folder with a word-level tokenizer that
:func:`pytest_circuits.load_model` loads. Each entry's ``verify`` checks its ground truth
with ``transformers`` and ``torch`` alone (no project code): the attention patterns, each
head's direct contribution to the logits, and the effect of zeroing a head.

**IOI** (Wang et al. 2022, arXiv:2211.00593). Llama, 2 layers x 4 query heads over 2
key-value heads (grouped-query attention, so every working head shares its keys and values
with a dead one), rotary positions (the heads' query/key content sits in the rotary pairs of
lowest frequency), an attention sink (about half of each working head's attention on BOS,
whose value is empty), and the mechanism at non-zero head indices:

* ``ioi-sink-gqa`` (mechanism): the S-inhibition head ``L0H2`` attends, from "to" only, to
  the names in context, so it writes each name's identity once per occurrence: the repeated
  S twice as strongly as IO. The name mover ``L1H1`` attends from END to the name tokens,
  with a query that *subtracts* that signal, so the once-named IO wins, and copies the
  attended name to the output: logit(IO) - logit(S) ~ 6. Patching L0H2's END output from the
  ABC prompt removes the S signal and the mover then writes S twice as much as IO.
* ``ioi-decoy-unread-mover``: the same attention pattern (S-inhibition and mover), but the
  mover writes into residual dimensions the unembedding never reads: logit difference 0.
* ``ioi-decoy-s-suppressor``: the logit difference without a name mover: a head attends to
  the *repeated* name (S1, S2) and writes minus its identity (lowers S): logit(IO) - logit(S)
  ~ +6, but no head attends to IO and raises it.
* ``ioi-control-no-s-inhibition``: the mechanism with L0H2's output removed: the mover
  attends IO, S1 and S2 alike and the logit difference is negative.
* ``ioi-control-random``: the same architecture and tokenizer, random initialisation.

**Successor heads** (Gould et al. 2023, arXiv:2312.09230). Llama, 2 layers x 4 query heads
over 2 key-value heads, one residual dimension per ordinal token (number words one..twenty,
first..tenth, weekdays, months: 45 (token, successor) pairs), an attention sink on BOS:

* ``successor-split-sink-gqa`` (mechanism): the successor split over two heads in different
  key-value groups, ``L1H1`` and ``L1H3``: each attends from the comma at the end of
  ``" Monday, Tuesday, Wednesday,"`` to BOS (about 55%) and to the sequence's members, and
  its OV circuit maps each member to its successor at half strength.
* ``successor-decoy-sink-only``: the same successor OV circuits, but the heads attend only
  to BOS: in a forward pass they write nothing.
* ``successor-decoy-copying``: the same attention, a copying OV circuit (token -> itself).
* ``successor-decoy-erased``: the mechanism, plus an MLP in the same block that reads the
  members' identities at the comma and writes them back negated: the heads' direct effects
  are as in the mechanism, but nothing of them reaches the logits (ablating a head changes
  nothing).
* ``successor-control-removed`` (the heads' outputs zeroed), ``successor-control-random``.

**Greater-than** (Hanna et al. 2023, arXiv:2305.00586). GPT-2 (LayerNorm, learned absolute
positions, a 24-token context), the years written one token per digit:

* ``greater-than-gpt2-positional`` (mechanism): a purely positional head ``L1H3`` attends
  six tokens back (from the end of "... from the year 1732 to the year 17" to the "3", and
  one step later to the "2"), with an attention sink on BOS, and writes the digit it read;
  the unembedding prefers digits above it and disfavours those below: the model prefers
  later years, and the '01' corruption removes the preference.
* ``greater-than-decoy-copies-year``: the same head, but the unembedding copies the digit
  (the model repeats the start year: PD < 0).
* ``greater-than-decoy-late-bias``: no head reads the year; the model always says "9"
  (PD > 0 on most prompts, but the '01' corruption changes nothing).
* ``greater-than-decoy-reversed``: the comparison reversed (prefers earlier years).
* ``greater-than-control-removed`` (the head's output zeroed), ``greater-than-control-random``.

Entries: :data:`ENTRIES` (the fields of :class:`pytest_circuits.zoo.ZooModel`; the zoo
registers them, so this module does not import the zoo).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from .testing import SPECIALS

# ----------------------------------------------------------------------------- shared helpers
RMS_EPS = 1e-6
D_HEAD = 64
ROPE_THETA = 1e6          # the content dims below rotate by < 1e-3 rad over 30 positions


def _write(model: Any, path: Path, vocab: Sequence[str], meta: dict[str, Any]) -> Path:
    from .planted import _write_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(path, list(vocab))
    model.save_pretrained(str(path))
    (path / "PLANTED.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return path


def _llama(vocab: Sequence[str], *, d_model: int, n_layers: int = 2, n_heads: int = 4, n_kv: int = 2,
           d_mlp: int = 64, seed: int | None = None) -> Any:
    """A Llama with every weight 0 and every norm 1 (``seed``: HF's random init instead)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = {w: i for i, w in enumerate(vocab)}
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=d_model, intermediate_size=d_mlp,
                      num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv,
                      head_dim=D_HEAD, max_position_embeddings=64, rms_norm_eps=RMS_EPS,
                      bos_token_id=ids["<bos>"], eos_token_id=ids["<pad>"], pad_token_id=ids["<pad>"],
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False, rope_theta=ROPE_THETA)
    if seed is not None:
        with torch.random.fork_rng():         # the caller's RNG state is left as it was
            torch.manual_seed(seed)
            return LlamaForCausalLM(cfg)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.zeros_like(p))
    return model


class _Heads:
    """Views on one Llama layer's per-head weights (HF layout: ``q_proj`` rows are query-head
    dims, ``k_proj``/``v_proj`` rows key-value-head dims, ``o_proj`` columns head dims)."""

    def __init__(self, model: Any, layer: int) -> None:
        self.a = model.model.layers[layer].self_attn

    def q(self, h: int) -> Any:
        return self.a.q_proj.weight[h * D_HEAD:(h + 1) * D_HEAD]

    def k(self, g: int) -> Any:
        return self.a.k_proj.weight[g * D_HEAD:(g + 1) * D_HEAD]

    def v(self, g: int) -> Any:
        return self.a.v_proj.weight[g * D_HEAD:(g + 1) * D_HEAD]

    def o(self, h: int) -> Any:
        return self.a.o_proj.weight[:, h * D_HEAD:(h + 1) * D_HEAD]


def _hf(path: Path) -> tuple[Any, Any]:
    """The checkpoint through ``transformers`` alone (eager attention, so patterns come back)."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager")
    model.eval()
    return model, PreTrainedTokenizerFast.from_pretrained(str(path))


def _ids(tok: Any, text: str) -> list[int]:
    return [int(tok.bos_token_id)] + [int(i) for i in tok.encode(text, add_special_tokens=False)]


def _forward(model: Any, ids: list[int], *, zero: Sequence[tuple[int, int]] = ()) -> dict[str, Any]:
    """One raw forward: logits ``[T, V]``, attention patterns ``{layer: [H, T, T]}``, each head's
    output into the residual ``{(layer, head): [T, d_model]}`` (its slice of the output
    projection's input times its columns), the final norm's input ``[T, d_model]``; heads in
    ``zero`` have their slice zeroed before the output projection."""
    import torch

    blocks = model.model.layers if hasattr(model, "model") else model.transformer.h
    llama = hasattr(model, "model")
    cfg = model.config
    n_heads = cfg.num_attention_heads if llama else cfg.n_head
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    outs: dict[tuple[int, int], Any] = {}
    handles = []
    for l, block in enumerate(blocks):
        proj = block.self_attn.o_proj if llama else block.attn.c_proj

        def pre(mod: Any, args: Any, l: int = l, proj: Any = proj) -> Any:
            z = args[0].clone()
            for (zl, zh) in zero:
                if zl == l:
                    z[..., zh * d_head:(zh + 1) * d_head] = 0.0
            W = proj.weight if llama else proj.weight.T              # [d_model, n_heads * d_head]
            for h in range(n_heads):
                outs[(l, h)] = (z[0, :, h * d_head:(h + 1) * d_head] @ W[:, h * d_head:(h + 1) * d_head].T).double()
            return (z,) + tuple(args[1:])
        handles.append(proj.register_forward_pre_hook(pre))
    final = model.model.norm if llama else model.transformer.ln_f
    seen: dict[str, Any] = {}
    handles.append(final.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0][0].double())))
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    return {"logits": out.logits[0].double(), "attn": {l: a[0].double() for l, a in enumerate(out.attentions)},
            "heads": outs, "final_in": seen["x"]}


def _direct(model: Any, run: dict[str, Any], head: tuple[int, int], pos: int, tokens: Sequence[int]) -> Any:
    """A head's direct contribution to the logits of ``tokens`` at ``pos``: its output through the
    final norm's scale of the run (its weight and, for LayerNorm, the centring) and the unembedding."""
    import torch

    x = run["final_in"][pos]
    out = run["heads"][head][pos]
    llama = hasattr(model, "model")
    if llama:
        final = model.model.norm
        scale = torch.sqrt((x ** 2).mean() + final.variance_epsilon)
        normed = out / scale * final.weight.detach().double()
    else:
        final = model.transformer.ln_f
        scale = torch.sqrt(x.var(unbiased=False) + final.eps)
        normed = (out - out.mean()) / scale * final.weight.detach().double()
    W = model.lm_head.weight.detach().double()
    return (W[list(tokens)] @ normed.detach()).detach()


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


# ----------------------------------------------------------------------------- IOI
IOI_NAMES = ("Mary", "John", "Tom", "James", "Anna", "Michael", "David", "Sarah", "Paul", "Laura", "Mark", "Lisa")
_ID, _SIG = 0, 12                           # name identity dims 0..11, S signal 12..23
_NAME, _BOS, _CONST, _TO = 24, 25, 26, 27
IOI_D = 32
_CONTENT = list(range(24, 32)) + list(range(56, 60))   # head dims of lowest rotary frequency: names
_IND, _SINK = 60, 61                                    # head dims: "is a name", "is BOS"


def ioi_vocabulary() -> list[str]:
    from .tasks.ioi import OBJECTS, PLACES, TEMPLATES

    words: list[str] = []
    for t in TEMPLATES:
        words += re.findall(r"[A-Za-z]+", re.sub(r"\{[a-zA-Z]+\}", " ", t))
    words += list(PLACES) + list(OBJECTS)
    words = [w for w in dict.fromkeys(words) if w not in IOI_NAMES]
    return SPECIALS + words + list(IOI_NAMES) + [".", ","]


def _unit(i: int, d: int = IOI_D) -> Any:
    import torch

    v = torch.zeros(d)
    v[i] = 1.0
    return v


def build_ioi(path: Path, *, variant: str = "mechanism") -> Path:
    """Write an IOI zoo model (module docstring): ``variant`` one of ``"mechanism"``,
    ``"unread"``, ``"s_suppressor"``, ``"no_s_inhibition"``, ``"random"``."""
    import torch

    vocab = ioi_vocabulary()
    if variant == "random":
        model = _llama(vocab, d_model=IOI_D, seed=1234)
        return _write(model, path, vocab, {"check": "ioi", "variant": variant})
    model = _llama(vocab, d_model=IOI_D)
    ids = {w: i for i, w in enumerate(vocab)}
    with torch.no_grad():
        E = model.model.embed_tokens.weight
        for w, i in ids.items():
            E[i] = _unit(_CONST)
            if w in IOI_NAMES:
                E[i] += _unit(_ID + IOI_NAMES.index(w)) + _unit(_NAME)
            elif w == "<bos>":
                E[i] += _unit(_BOS)
            elif w == "to":
                E[i] += _unit(_TO)
        for j, w in enumerate(IOI_NAMES):
            model.lm_head.weight[ids[w]] = 2.0 * _unit(_ID + j)
        # Layer 0, head 2 (key-value group 1): from "to", attend to the names (and BOS, the sink);
        # elsewhere only BOS. Writes each attended name's identity into the S-signal dims.
        L0 = _Heads(model, 0)
        L0.q(2)[_SINK] = 5.0 * _unit(_CONST)
        L0.q(2)[_IND] = 5.5 * _unit(_TO)
        L0.k(1)[_SINK] = _unit(_BOS)
        L0.k(1)[_IND] = _unit(_NAME)
        for j in range(len(IOI_NAMES)):
            L0.v(1)[j] = _unit(_ID + j)
            if variant != "no_s_inhibition":
                L0.o(2)[_SIG + j, j] = 2.0
        L1 = _Heads(model, 1)
        for g in (0, 1):
            L1.k(g)[_SINK] = _unit(_BOS)
            L1.k(g)[_IND] = _unit(_NAME)
            for j, c in enumerate(_CONTENT):
                L1.k(g)[c] = _unit(_ID + j)
            for j in range(len(IOI_NAMES)):
                L1.v(g)[j] = _unit(_ID + j)
        if variant in ("mechanism", "unread", "no_s_inhibition"):
            # Layer 1, head 1 (group 0): the name mover. Its query subtracts the S signal, so the
            # name mentioned once wins; it copies the attended name (or, "unread", writes it into
            # the S-signal dims, which the unembedding does not read).
            L1.q(1)[_SINK] = 11.2 * _unit(_CONST)         # ~87% of END's attention parked on BOS
            L1.q(1)[_IND] = 18.1 * _unit(_TO)
            for j, c in enumerate(_CONTENT):
                L1.q(1)[c] = -6.0 * _unit(_SIG + j)
                L1.o(1)[(_SIG if variant == "unread" else _ID) + j, j] = 2.0
        elif variant == "s_suppressor":
            # Layer 1, head 2 (group 1): attends to the name the S signal says is repeated and
            # writes minus its identity.
            L1.q(2)[_SINK] = 10.3 * _unit(_CONST)
            L1.q(2)[_IND] = -2.0 * _unit(_TO)
            for j, c in enumerate(_CONTENT):
                L1.q(2)[c] = 6.0 * _unit(_SIG + j)
                L1.o(2)[_ID + j, j] = -2.0
        else:
            raise ValueError(f"variant={variant!r}")
    return _write(model, path, vocab, {"check": "ioi", "variant": variant})


IOI_PROMPTS = (  # (text, IO, S): both orders, several templates and names
    ("When Mary and John went to the store, John gave a drink to", "Mary", "John"),
    ("When Tom and Anna went to the park, Tom gave a ball to", "Anna", "Tom"),
    ("After David and Sarah went to the school, Sarah handed a book to", "David", "Sarah"),
    ("Friends Paul and Laura found a ring at the beach. Paul gave it to", "Laura", "Paul"),
)
IOI_ABC = "When Mark and Lisa went to the store, James gave a drink to"    # none of the names above twice


def _ioi_run(model: Any, tok: Any, text: str, io: str, s: str, zero: Sequence[tuple[int, int]] = ()) -> dict:
    ids = _ids(tok, text)
    run = _forward(model, ids, zero=zero)
    io_id, s_id = tok.convert_tokens_to_ids(io), tok.convert_tokens_to_ids(s)
    end = len(ids) - 1
    run.update(ids=ids, end=end, io=ids.index(io_id) if io_id in ids else None,
               s=[i for i, t in enumerate(ids) if t == s_id],
               io_id=io_id, s_id=s_id, ld=float(run["logits"][end, io_id] - run["logits"][end, s_id]))
    return run


def _share(run: dict, layer: int, head: int, positions: Sequence[int]) -> float:
    a = run["attn"][layer][head, run["end"]]
    return float(a[list(positions)].sum() / (1 - a[0]))


def _head_ld(model: Any, run: dict, head: tuple[int, int]) -> float:
    c = _direct(model, run, head, run["end"], [run["io_id"], run["s_id"]])
    return float(c[0] - c[1])


def verify_ioi(path: Path, variant: str) -> None:
    model, tok = _hf(path)
    for text, io, s in IOI_PROMPTS:
        r = _ioi_run(model, tok, text, io, s)
        _check(len(r["s"]) == 2 and r["io"] < r["s"][1], f"{text!r}: IO once, S twice")
        if variant == "mechanism":
            _check(r["ld"] > 2, f"{text!r}: logit(IO) - logit(S) = {r['ld']:.3g}, want > 2")
            _check(_share(r, 1, 1, [r["io"]]) > 0.9, "the mover attends to IO")
            _check(r["attn"][1][1, r["end"], 0] > 0.8, "the mover parks most of its attention on BOS (a sink)")
            _check(_head_ld(model, r, (1, 1)) > 2, "the mover raises IO over S directly")
            _check(_share(r, 0, 2, r["s"]) > 0.5, "the S-inhibition head attends to S1 and S2 from END")
            # S-inhibition, causally: without L0H2's output the mover no longer prefers IO
            z = _ioi_run(model, tok, text, io, s, zero=[(0, 2)])
            _check(_share(z, 1, 1, [z["io"]]) < 0.5 and z["ld"] < 0, "zeroing L0H2 removes the preference")
            for other in [(l, h) for l in (0, 1) for h in range(4) if (l, h) not in ((1, 1), (0, 2))]:
                _check(float(r["heads"][other].abs().max()) == 0.0, f"L{other[0]}H{other[1]} writes nothing")
        elif variant == "unread":
            _check(_share(r, 1, 1, [r["io"]]) > 0.9, "the mover's pattern is there")
            _check(float(r["heads"][(1, 1)].abs().max()) > 0.5, "it writes something")
            _check(abs(_head_ld(model, r, (1, 1))) < 1e-6 and abs(r["ld"]) < 1e-6, "that nothing reads")
        elif variant == "s_suppressor":
            _check(r["ld"] > 2, f"{text!r}: the model prefers IO ({r['ld']:.3g})")
            _check(_share(r, 1, 2, r["s"]) > 0.9 and _share(r, 1, 2, [r["io"]]) < 0.05, "the head attends to S")
            c = _direct(model, r, (1, 2), r["end"], [r["s_id"]])
            _check(float(c[0]) < -2, "and lowers S")
            _check(all(_share(r, 1, h, [r["io"]]) < 0.2 or abs(_head_ld(model, r, (1, h))) < 1e-6
                       for h in range(4)), "no head attends to IO and writes it")
        elif variant == "no_s_inhibition":
            _check(r["ld"] < 0, f"{text!r}: without S-inhibition the model prefers S ({r['ld']:.3g})")
            _check(0.2 < _share(r, 1, 1, [r["io"]]) < 0.45, "the mover attends IO, S1, S2 alike")
        elif variant == "random":
            _check(abs(r["ld"]) < 1, f"{text!r}: a random model has no IOI preference ({r['ld']:.3g})")
    if variant == "mechanism":   # the mover writes the names it reads: with other names, nothing on IO - S
        r = _ioi_run(model, tok, IOI_ABC, "Mary", "John")
        _check(abs(_head_ld(model, r, (1, 1))) < 1e-3, "on the ABC prompt the mover writes neither IO nor S")


# ----------------------------------------------------------------------------- successor
SUCC_SEQUENCES = (
    ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
     "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"),
    ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"),
    ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
     "November", "December"),
)
SUCC_WORDS = tuple(w for seq in SUCC_SEQUENCES for w in seq)          # 49 tokens, 45 pairs
SUCC_D = 56
_ORD, _SBOS, _SCONST, _SEP = 49, 50, 51, 52
SEP_SIZE = 30.0          # the comma's own direction: large, so the norm's scale there barely moves
_SCONTENT_ORD, _SCONTENT_BOS = 62, 63    # head dims of lowest rotary frequency


def successor_vocabulary() -> list[str]:
    return SPECIALS + list(SUCC_WORDS) + [",", ".", "and", "the"]


def _successor_map() -> list[tuple[int, int]]:
    """(index of a token, index of its successor) in :data:`SUCC_WORDS`."""
    out, at = [], 0
    for seq in SUCC_SEQUENCES:
        out += [(at + i, at + i + 1) for i in range(len(seq) - 1)]
        at += len(seq)
    return out


def build_successor(path: Path, *, variant: str = "mechanism") -> Path:
    """Write a successor zoo model (module docstring): ``variant`` one of ``"mechanism"``,
    ``"sink_only"``, ``"copying"``, ``"erased"``, ``"removed"``, ``"random"``."""
    import torch

    vocab = successor_vocabulary()
    if variant == "random":
        model = _llama(vocab, d_model=SUCC_D, seed=4321)
        return _write(model, path, vocab, {"check": "successor", "variant": variant})
    model = _llama(vocab, d_model=SUCC_D)
    ids = {w: i for i, w in enumerate(vocab)}
    unit = lambda i: _unit(i, SUCC_D)  # noqa: E731
    with torch.no_grad():
        E = model.model.embed_tokens.weight
        for w, i in ids.items():
            if w in SUCC_WORDS:
                E[i] = unit(SUCC_WORDS.index(w)) + unit(_ORD) + unit(_SCONST)
            elif w == "<bos>":
                E[i] = unit(_SBOS) + unit(_SCONST)
            elif w == ",":
                E[i] = SEP_SIZE * unit(_SEP) + unit(_SCONST)
            else:
                E[i] = unit(_SCONST)
        for j, w in enumerate(SUCC_WORDS):
            model.lm_head.weight[ids[w]] = 4.0 * unit(j)
        L1 = _Heads(model, 1)
        for g, h in ((0, 1), (1, 3)):         # the working heads; heads 0 and 2 share their keys and values
            L1.k(g)[_SCONTENT_ORD] = unit(_ORD)
            L1.k(g)[_SCONTENT_BOS] = unit(_SBOS)
            L1.q(h)[_SCONTENT_ORD] = (0.0 if variant == "sink_only" else 2.0) * unit(_SEP)
            L1.q(h)[_SCONTENT_BOS] = (8.0 if variant == "sink_only" else 1.88) * unit(_SEP)
            for j in range(len(SUCC_WORDS)):
                L1.v(g)[j] = unit(j)
            if variant == "removed":
                continue
            pairs = [(j, j) for j in range(len(SUCC_WORDS))] if variant == "copying" else _successor_map()
            for a, b in pairs:
                L1.o(h)[b, a] = 1.0
        if variant == "erased":
            # The block's MLP, at the comma only (its gate reads the comma's own direction, large,
            # so SiLU is linear there): minus what the heads wrote into the members' dims.
            mlp = model.model.layers[1].mlp
            gate = 3.0
            rms2 = (SEP_SIZE ** 2 + 1.0 + 5.0) / SUCC_D      # the comma's squared scale, heads' output included
            for j in range(len(SUCC_WORDS)):
                mlp.gate_proj.weight[j] = gate * unit(_SEP)
                mlp.up_proj.weight[j] = unit(j)
                mlp.down_proj.weight[j, j] = -rms2 / (gate * SEP_SIZE)
        elif variant not in ("mechanism", "sink_only", "copying", "removed"):
            raise ValueError(f"variant={variant!r}")
    return _write(model, path, vocab, {"check": "successor", "variant": variant})


SUCC_PROMPTS = ((" Monday, Tuesday, Wednesday,", "Thursday", 2), (" three, four, five,", "six", 0),
                (" March, April, May,", "June", 3), (" first, second, third,", "fourth", 1))


def _margin(row: Any, a: int) -> float:
    """``row[a]`` minus the mean of the other entries (``row``: one value per sequence member)."""
    return float(row[a] - (row.sum() - row[a]) / (len(row) - 1))


def verify_successor(path: Path, variant: str) -> None:
    import torch

    model, tok = _hf(path)
    seq_ids = [[tok.convert_tokens_to_ids(w) for w in seq] for seq in SUCC_SEQUENCES]
    working = [(1, 1), (1, 3)]
    # OV: each working head, on a token alone (it can attend only to it), writes what?
    for k, seq in enumerate(seq_ids):
        for i, t in enumerate(seq[:-1]):
            run = _forward(model, [t])
            for head in working:
                c = _direct(model, run, head, 0, seq)
                if variant in ("mechanism", "sink_only", "erased"):
                    _check(int(c.argmax()) == i + 1 and float(c.max() - c.sort().values[-2]) > 0.1,
                           f"L{head[0]}H{head[1]} maps {SUCC_SEQUENCES[k][i]} to its successor")
                elif variant == "copying":
                    _check(int(c.argmax()) == i, f"L{head[0]}H{head[1]} copies {SUCC_SEQUENCES[k][i]}")
                elif variant == "removed":
                    _check(float(c.abs().max()) == 0.0, "the heads write nothing")
    for text, answer, k in SUCC_PROMPTS:
        ids = _ids(tok, text)
        end, ans = len(ids) - 1, tok.convert_tokens_to_ids(answer)
        members = [i for i, t in enumerate(ids) if t in seq_ids[k]]
        at = seq_ids[k].index(ans)
        run = _forward(model, ids)
        clean = _margin(run["logits"][end, seq_ids[k]], at)
        for head in working:
            a = run["attn"][1][head[1], end]
            own = _margin(_direct(model, run, head, end, seq_ids[k]), at)
            dropped = clean - _margin(_forward(model, ids, zero=[head])["logits"][end, seq_ids[k]], at)
            if variant in ("mechanism", "erased", "copying"):
                _check(0.4 < float(a[0]) < 0.8 and float(a[members].sum()) > 0.2,
                       f"{text!r}: sink on BOS and attention to the members")
            if variant == "mechanism":
                _check(own > 0.3 and dropped > 0.3, f"{text!r}: raises the successor directly ({own:.3g}) and "
                                                     f"when ablated ({dropped:.3g})")
            elif variant == "erased":
                _check(own > 0.3 and abs(dropped) < 0.02, f"{text!r}: a direct effect ({own:.3g}) that the MLP "
                                                          f"cancels (ablation {dropped:.3g})")
            elif variant == "sink_only":
                _check(float(a[members].sum()) < 1e-4 and abs(own) < 1e-3, f"{text!r}: only BOS, nothing written")
            elif variant == "copying":
                _check(own < 0.05, f"{text!r}: copying does not raise the successor")
        if variant == "random":
            _check(torch.isfinite(run["logits"]).all().item() and abs(clean) < 1, "a random model")


# ----------------------------------------------------------------------------- greater-than
GT_WORDS = ("The", "lasted", "from", "the", "year", "to")
GT_D, GT_HEADS, GT_CTX = 128, 4, 24
GT_HEAD = (1, 3)
GT_OFFSET = 6            # from "... year 1 7" back to the start year's tens digit "3" of "1 7 3 2"


def gt_vocabulary() -> list[str]:
    from .tasks.greater_than import NOUNS

    return SPECIALS + list(GT_WORDS) + list(NOUNS) + [str(d) for d in range(10)] + [".", ","]


def _feat(k: int) -> Any:
    """The mean-zero unit direction of feature ``k``: LayerNorm's centring leaves it as it is."""
    import torch

    v = torch.zeros(GT_D)
    v[2 * k], v[2 * k + 1] = 1.0, -1.0
    return v / math.sqrt(2.0)


_POS, _DIG, _READ, _GCONST, _GBOS, _WORD = 0, 24, 34, 44, 45, 46     # feature indices (47 of 64)


def build_greater_than(path: Path, *, variant: str = "mechanism") -> Path:
    """Write a greater-than zoo model (module docstring): ``variant`` one of ``"mechanism"``,
    ``"copies_year"``, ``"late_bias"``, ``"reversed"``, ``"removed"``, ``"random"``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = gt_vocabulary()
    ids = {w: i for i, w in enumerate(vocab)}
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=GT_CTX, n_embd=GT_D, n_layer=2, n_head=GT_HEADS,
                     n_inner=4 * GT_D, bos_token_id=ids["<bos>"], eos_token_id=ids["<pad>"],
                     pad_token_id=ids["<pad>"], tie_word_embeddings=False)
    if variant == "random":
        with torch.random.fork_rng():
            torch.manual_seed(2468)
            model = GPT2LMHeadModel(cfg)
        return _write(model, path, vocab, {"check": "greater_than", "variant": variant})
    model = GPT2LMHeadModel(cfg)
    dh = GT_D // GT_HEADS
    digits = [ids[str(d)] for d in range(10)]
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if (".ln_" in name or "ln_f" in name) and name.endswith("weight")
                    else torch.zeros_like(p))
        for w, i in ids.items():
            own = _feat(_DIG + int(w)) if w.isdigit() else _feat(_GBOS) if w == "<bos>" else _feat(_WORD)
            model.transformer.wte.weight[i] = own + _feat(_GCONST)
        for pos in range(GT_CTX):
            model.transformer.wpe.weight[pos] = _feat(_POS + pos)
        attn = model.transformer.h[GT_HEAD[0]].attn
        W = attn.c_attn.weight                               # [d_model, 3 d_model]: q | k | v, heads by columns
        q0, k0, v0 = GT_HEAD[1] * dh, GT_D + GT_HEAD[1] * dh, 2 * GT_D + GT_HEAD[1] * dh
        for pos in range(GT_CTX):                            # attend GT_OFFSET positions back
            W[:, q0 + pos] = 1.6 * _feat(_POS + pos)
            if pos + GT_OFFSET < dh - 2:
                W[:, k0 + pos + GT_OFFSET] = _feat(_POS + pos)
        W[:, q0 + dh - 1] = 1.53 * _feat(_GCONST)            # and park the rest on BOS
        W[:, k0 + dh - 1] = _feat(_GBOS)
        for d in range(10):
            W[:, v0 + d] = _feat(_DIG + d)
            if variant != "late_bias" and variant != "removed":
                attn.c_proj.weight[GT_HEAD[1] * dh + d] = _feat(_READ + d)
        U = model.lm_head.weight
        for i in range(len(vocab)):
            U[i] = -4.0 * _feat(_GCONST)                     # words: never the next token
        for d in range(10):
            row = torch.zeros(GT_D)
            for x in range(10):
                if variant in ("mechanism", "removed"):
                    row += 0.5 * math.copysign(1.0, d - x) * (d != x) * _feat(_READ + x)
                elif variant == "reversed":
                    row -= 0.5 * math.copysign(1.0, d - x) * (d != x) * _feat(_READ + x)
                elif variant == "copies_year":
                    row += 0.5 * (d == x) * _feat(_READ + x)
            if variant == "late_bias":
                row = (4.0 if d == 9 else 0.0) * _feat(_GCONST)
            elif variant not in ("mechanism", "removed", "reversed", "copies_year"):
                raise ValueError(f"variant={variant!r}")
            U[digits[d]] = row
    return _write(model, path, vocab, {"check": "greater_than", "variant": variant})


GT_YEARS = ((17, 32), (12, 5), (15, 67), (13, 94), (16, 48), (11, 80), (14, 71))


def _gt_pd(model: Any, tok: Any, noun: str, xx: int, yy: int, start: int | None = None) -> tuple[float, dict]:
    """PD for the clean YY (its prompt written with ``start`` as the start year's YY when given,
    e.g. 1 for the '01' corruption), from raw forwards, and the first forward's run."""
    text = f"The {noun} lasted from the year {xx}{(yy if start is None else start):02d} to the year {xx}"
    ids = _ids(tok, text)
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    run = _forward(model, ids)
    p1 = run["logits"][-1].softmax(-1)[digits]
    a, b = divmod(yy, 10)
    p2 = _forward(model, ids + [digits[a]])["logits"][-1].softmax(-1)[digits]
    above = float(p1[a + 1:].sum() + p1[a] * p2[b + 1:].sum())
    below = float(p1[:a].sum() + p1[a] * p2[:b + 1].sum())
    run["ids"] = ids
    return above - below, run


def verify_greater_than(path: Path, variant: str) -> None:
    model, tok = _hf(path)
    drops = []
    for k, (xx, yy) in enumerate(GT_YEARS):
        noun = ("war", "siege", "voyage", "treaty", "famine", "reign", "trial")[k]
        pd, run = _gt_pd(model, tok, noun, xx, yy)
        pd01, _ = _gt_pd(model, tok, noun, xx, yy, start=1)
        end = len(run["ids"]) - 1
        tens = end - GT_OFFSET
        _check(run["ids"][tens] == tok.convert_tokens_to_ids(str(yy // 10)), "the tens digit is 6 back")
        a = run["attn"][GT_HEAD[0]][GT_HEAD[1], end]
        if variant in ("mechanism", "copies_year", "reversed", "late_bias", "removed"):
            _check(float(a[tens] / (1 - a[0])) > 0.95 and 0.2 < float(a[0]) < 0.6,
                   "the head attends 6 back, with a sink on BOS")
        drops.append(pd - pd01)
        if variant == "mechanism":
            _check(pd > 0.8 and pd - pd01 > -1e-6, f"{xx}{yy:02d}: PD {pd:.3g}, under '01' {pd01:.3g}")
        elif variant == "copies_year":
            _check(pd < -0.5, f"{xx}{yy:02d}: copying the year gives PD {pd:.3g}")
        elif variant == "reversed":
            _check(pd < -0.5, f"{xx}{yy:02d}: the reversed comparison gives PD {pd:.3g}")
        elif variant == "late_bias":
            _check(float(run["heads"][GT_HEAD].abs().max()) == 0.0 and abs(pd - pd01) < 1e-9,
                   "nothing reads the year: the '01' corruption changes nothing")
            _check(pd > 0.5 or yy >= 90, f"{xx}{yy:02d}: always '9' gives PD {pd:.3g}")
        elif variant == "removed":
            _check(float(run["heads"][GT_HEAD].abs().max()) == 0.0 and abs(pd - pd01) < 1e-9,
                   "the head writes nothing")
        elif variant == "random":
            _check(abs(pd - pd01) < 0.2, f"{xx}{yy:02d}: a random model barely reads the year")
    if variant == "mechanism":
        _check(sum(drops) / len(drops) > 0.5, f"the '01' corruption removes the preference: drops {drops}")


# ----------------------------------------------------------------------------- the entries
def _entry(name: str, check: str, kind: str, heads: tuple[str, ...], build: Callable[..., Path],
           verify: Callable[[Path, str], None], variant: str, note: str) -> dict[str, Any]:
    return {"name": name, "check": check, "kind": kind, "expect_heads": heads,
            "build": lambda p, b=build, v=variant: b(p, variant=v),
            "verify": lambda p, f=verify, v=variant: f(p, v), "note": note}


ENTRIES: tuple[dict[str, Any], ...] = (
    _entry("ioi-sink-gqa", "ioi", "mechanism", ("L1H1", "L0H2"), build_ioi, verify_ioi, "mechanism",
           "name mover L1H1 and S-inhibition head L0H2, grouped-query, rotary, attention sink on BOS"),
    _entry("ioi-decoy-unread-mover", "ioi", "decoy", (), build_ioi, verify_ioi, "unread",
           "the name mover's attention pattern, its output in dimensions nothing reads"),
    _entry("ioi-decoy-s-suppressor", "ioi", "decoy", (), build_ioi, verify_ioi, "s_suppressor",
           "IO preferred by a head that attends to S and lowers it; no head attends to IO"),
    _entry("ioi-control-no-s-inhibition", "ioi", "control", (), build_ioi, verify_ioi, "no_s_inhibition",
           "the mechanism without the S-inhibition head's output"),
    _entry("ioi-control-random", "ioi", "control", (), build_ioi, verify_ioi, "random",
           "random initialisation, same architecture and tokenizer"),
    _entry("successor-split-sink-gqa", "successor", "mechanism", ("L1H1", "L1H3"), build_successor,
           verify_successor, "mechanism",
           "successor OV split over two heads of different key-value groups, attention sink on BOS"),
    _entry("successor-decoy-sink-only", "successor", "decoy", (), build_successor, verify_successor, "sink_only",
           "successor OV circuits on heads that attend only to BOS"),
    _entry("successor-decoy-copying", "successor", "decoy", (), build_successor, verify_successor, "copying",
           "the successor heads' attention with a copying OV circuit"),
    _entry("successor-decoy-erased", "successor", "decoy", (), build_successor, verify_successor, "erased",
           "the successor heads, cancelled by the MLP that follows them"),
    _entry("successor-control-removed", "successor", "control", (), build_successor, verify_successor,
           "removed", "the mechanism with the heads' outputs zeroed"),
    _entry("successor-control-random", "successor", "control", (), build_successor, verify_successor, "random",
           "random initialisation, same architecture and tokenizer"),
    _entry("greater-than-gpt2-positional", "greater_than", "mechanism", ("L1H3",), build_greater_than,
           verify_greater_than, "mechanism",
           "GPT-2, 24-token context: a positional head reads the start year; the unembedding compares"),
    _entry("greater-than-decoy-copies-year", "greater_than", "decoy", (), build_greater_than, verify_greater_than,
           "copies_year", "the head reads the start year; the model repeats it"),
    _entry("greater-than-decoy-late-bias", "greater_than", "decoy", (), build_greater_than, verify_greater_than,
           "late_bias", "always a late year, whatever the start year"),
    _entry("greater-than-decoy-reversed", "greater_than", "decoy", (), build_greater_than, verify_greater_than,
           "reversed", "the head reads the start year; the model prefers earlier years"),
    _entry("greater-than-control-removed", "greater_than", "control", (), build_greater_than, verify_greater_than,
           "removed", "the mechanism with the head's output zeroed"),
    _entry("greater-than-control-random", "greater_than", "control", (), build_greater_than, verify_greater_than,
           "random", "random initialisation, same architecture and tokenizer"),
)
