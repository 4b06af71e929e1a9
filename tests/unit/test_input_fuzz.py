"""Fuzz the user-facing inputs: arbitrary text, ids and spellings reach ``PromptSet.build``,
the component parser and the metrics' id arguments, and only a project error
(:class:`~pytest_circuits.errors.CircuitsError`) or success may come out -- never a foreign
exception (``TypeError``, ``IndexError``, a tokenizer's own error ...). Issue #10, item 7.

Both a word-level tokenizer with an unknown token (the tiny model) and a GPT-2-style
byte-level BPE (no unknown token; ``<|endoftext|>`` is unk, BOS and EOS at once) are fed.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pytest_circuits import ActivationStore, CircuitsError, Component, PromptSet, metrics
from pytest_circuits.components import parse, parse_many
from pytest_circuits.errors import PromptWarning

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHEAP = settings(max_examples=200, deadline=None)  # no model call: many examples cost little

# Every code point, lone surrogates included, with the tokenizers' own specials and long runs mixed in.
_chars = st.characters(exclude_categories=())
_words = st.sampled_from(["the", " cat", " zebra", "<unk>", "<bos>", " <pad>", "<|endoftext|>", "7", "1732",
                          " ", "\n", "\ud800", "\x00", "😀", "é", "L1H1", "the " * 70])
TEXT = st.lists(st.one_of(st.text(_chars, max_size=6), _words), max_size=4).map("".join)
# Anything a user might pass where a value is expected.
ODD = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                st.binary(max_size=4), TEXT, st.just(np.int64(3)), st.just(np.bool_(True)),
                st.just(torch.tensor([1, 2])), st.just(object()))
TEXTS = st.one_of(st.lists(TEXT, max_size=3), st.lists(st.one_of(TEXT, ODD), max_size=3), ODD)


def _byte_level_model() -> SimpleNamespace:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["the cat sat on the mat", "the dog sat on the log"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eot = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=eot, eos_token=eot, unk_token=eot)
    return SimpleNamespace(tokenizer=tok, cfg=SimpleNamespace(n_ctx=64, d_vocab=len(tok)))


@pytest.fixture(scope="module")
def byte_level():
    return _byte_level_model()


def _only_project_errors(fn, *args, **kw):
    """Call ``fn``; a CircuitsError is a fine outcome, anything else fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PromptWarning)
            return fn(*args, **kw)
    except CircuitsError as e:
        assert str(e), "a project error must say something"
        return None


def _check_built(model, ps, prompts, answers):
    """A set that was built keeps its promises: tokens fit the context and the vocabulary;
    answers are one ordinary token (never unknown or special)."""
    n_ctx, d_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    assert len(ps) == len(prompts) and max(ps.lengths) <= n_ctx
    assert int(ps.tokens.min()) >= 0 and int(ps.tokens.max()) < d_vocab
    if ps.answer_ids is not None:
        tok = model.tokenizer
        special = set(tok.all_special_ids) | {tok.unk_token_id, tok.bos_token_id, tok.eos_token_id}
        assert not set(ps.answer_ids) & special
        for text, tid in zip(answers, ps.answer_ids):
            assert tok.encode(text, add_special_tokens=False) == [tid]


@FAST
@given(prompts=TEXTS, answers=st.one_of(st.none(), TEXTS), corrupted=st.one_of(st.none(), TEXTS),
       align=st.booleans())
def test_prompt_set_build_raises_only_project_errors(tiny, byte_level, prompts, answers, corrupted, align):
    for model in (tiny, byte_level):
        ps = _only_project_errors(PromptSet.build, model, prompts, answers=answers, foils=answers,
                                  corrupted=corrupted, align=align)
        if ps is not None:
            _check_built(model, ps, list(prompts), answers)


@FAST
@given(answer=TEXT)
def test_single_ordinary_tokens_are_accepted_exactly(tiny, byte_level, answer):
    """Accepted answers encode to exactly one ordinary token; rejected ones do not, or are
    unknown/special (so nothing valid is turned away)."""
    for model in (tiny, byte_level):
        ps = _only_project_errors(PromptSet.build, model, ["the cat"], answers=[answer])
        tok = model.tokenizer
        try:
            ids = tok.encode(answer, add_special_tokens=False)
        except Exception:  # the tokenizer itself cannot encode it (a lone surrogate)
            assert ps is None
            continue
        ordinary = len(ids) == 1 and ids[0] not in set(tok.all_special_ids) and ids[0] < model.cfg.d_vocab
        assert (ps is not None) == ordinary, (answer, ids)


@CHEAP
@given(spec=st.one_of(TEXT, ODD, st.lists(st.one_of(TEXT, ODD), max_size=3)))
def test_component_parser_raises_only_project_errors(spec):
    class Cfg:
        n_layers, n_heads, d_mlp = 4, 3, 16

    for model in (None, Cfg()):
        got = _only_project_errors(parse, spec, model)
        if got is not None:
            assert isinstance(got, Component) and parse(str(got)) == got
        many = _only_project_errors(parse_many, spec, model)
        if many is not None:
            assert all(isinstance(c, Component) for c in many)


_STORE = ActivationStore()  # one forward for every example


@FAST
@given(positive=st.one_of(ODD, st.lists(st.one_of(st.integers(-3, 80), ODD), max_size=4),
                          st.lists(st.lists(st.one_of(st.integers(-3, 80), ODD), max_size=3), max_size=4)))
def test_metric_id_arguments_raise_only_project_errors(tiny, positive):
    ps = _prompts(tiny)
    m = _only_project_errors(metrics.prob_diff, tiny, ps, positive, [0], activations=_STORE)
    if m is not None:
        assert m.n == len(ps) and all(-1 <= v <= 1 for v in m.values)


@FAST
@given(prompts=ODD)
def test_metrics_raise_only_project_errors_on_odd_prompt_sets(tiny, prompts):
    for fn in (metrics.top1, metrics.logit_diff, metrics.answer_prob, metrics.loss):
        assume(not isinstance(prompts, PromptSet))
        assert _only_project_errors(fn, tiny, prompts, activations=_STORE) is None


_PS: dict = {}


def _prompts(tiny):
    if "ps" not in _PS:
        _PS["ps"] = PromptSet.build(tiny, ["the cat sat on the", "when John and Mary went to the"],
                                    answers=[" mat", " store"], foils=[" dog", " city"])
    return _PS["ps"]
