import pytest

from pytest_circuits import PromptSet, PromptSetError


def test_build_tokenizes_once_and_right_pads(tiny):
    ps = PromptSet.build(tiny, ["the cat sat", "the cat sat on the mat"], answers=[" mat", " dog"],
                         foils=[" dog", " cat"])
    assert ps.lengths == (4, 7)  # BOS + words
    assert ps.tokens.shape == (2, 7)
    assert int(ps.tokens[0, 4]) == ps.pad_id
    assert ps.last.tolist() == [3, 6]
    assert len(ps.answer_ids) == 2 and ps.answer_ids[0] != ps.foil_ids[0]
    assert "n=2" in repr(ps) and "answers+foils" in repr(ps)


def test_digest_depends_on_tokens(tiny):
    a = PromptSet.build(tiny, ["the cat sat"])
    b = PromptSet.build(tiny, ["the cat sat"], name="other")
    c = PromptSet.build(tiny, ["the dog sat"])
    assert a.digest == b.digest != c.digest


def test_empty_set(tiny):
    with pytest.raises(PromptSetError, match="at least one prompt"):
        PromptSet.build(tiny, [])


def test_one_string_instead_of_list(tiny):
    with pytest.raises(PromptSetError, match="a list of strings, not one string"):
        PromptSet.build(tiny, "the cat")


def test_multi_token_answer_is_named(tiny):
    with pytest.raises(PromptSetError, match=r"answers\[1\]=' cat sat' is not valid: a single token; "
                                             r"it tokenizes to 2 tokens"):
        PromptSet.build(tiny, ["the", "the"], answers=[" cat", " cat sat"])


def test_answer_count_must_match(tiny):
    with pytest.raises(PromptSetError, match=r"one per prompt \(2\)"):
        PromptSet.build(tiny, ["the", "a"], answers=[" cat"])


def test_misaligned_corruption(tiny):
    with pytest.raises(PromptSetError, match=r"corrupted\[0\]=.* tokenizes to 3 tokens but prompts\[0\]"):
        PromptSet.build(tiny, ["the cat sat"], corrupted=["the cat"])
    # allowed when positions need not correspond
    ps = PromptSet.build(tiny, ["the cat sat"], corrupted=["the cat"], align=False)
    assert ps.corrupted.lengths == (3,)


def test_corrupted_count(tiny):
    with pytest.raises(PromptSetError, match="one corrupted prompt per clean prompt"):
        PromptSet.build(tiny, ["the cat", "the dog"], corrupted=["a cat"])


def test_require_and_subset(tiny):
    ps = PromptSet.build(tiny, ["the cat sat", "the dog", "a cat"], meta={"k": [1, 2, 3]},
                         corrupted=["the dog sat", "the cat", "a dog"])
    with pytest.raises(PromptSetError, match="has no answers"):
        ps.require("answers")
    sub = ps.subset([2, 0])
    assert sub.prompts == ("a cat", "the cat sat") and sub.meta["k"] == (3, 1)
    assert sub.corrupted.prompts == ("a dog", "the dog sat")
    assert sub.tokens.shape == (2, 4)
    with pytest.raises(PromptSetError, match="index=5"):
        ps.subset([5])


def test_meta_length(tiny):
    with pytest.raises(PromptSetError, match=r"meta\['k'\]"):
        PromptSet.build(tiny, ["the"], meta={"k": [1, 2]})


# -- inputs rejected early, in the project's words (issue #10, item 7) ---------------------

import warnings  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from pytest_circuits.errors import PromptWarning  # noqa: E402
from pytest_circuits.prompts import is_single_token, single_token_id  # noqa: E402


def _byte_level(n_ctx=16, d_vocab=None):
    """A model stand-in with a GPT-2-style byte-level BPE tokenizer (no unknown token:
    ``<|endoftext|>`` is its unk, BOS and EOS at once), trained here on two sentences."""
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
    return SimpleNamespace(tokenizer=tok, cfg=SimpleNamespace(n_ctx=n_ctx, d_vocab=d_vocab or len(tok)))


def test_unknown_word_answer_or_foil_is_rejected(tiny):
    tok = tiny.tokenizer
    assert tok.encode(" zebra", add_special_tokens=False) == [tok.unk_token_id]  # one token, but <unk>
    with pytest.raises(PromptSetError, match=r"answers\[1\]=' zebra' is not valid: .*unknown token '<unk>'"):
        PromptSet.build(tiny, ["the cat", "the dog"], answers=[" mat", " zebra"])
    with pytest.raises(PromptSetError, match=r"foils\[0\]=' quagga' is not valid: .*unknown token"):
        PromptSet.build(tiny, ["the cat"], answers=[" mat"], foils=[" quagga"])
    assert not is_single_token(tiny, " zebra") and is_single_token(tiny, " mat")


@pytest.mark.parametrize("answer,role", [("<bos>", "BOS"), (" <pad>", "EOS/padding"), ("<unk>", "unknown")])
def test_special_token_answer_is_rejected(tiny, answer, role):
    with pytest.raises(PromptSetError, match=role):
        single_token_id(tiny, answer)
    with pytest.raises(PromptSetError, match=r"answers\[0\]="):
        PromptSet.build(tiny, ["the cat"], answers=[answer])


def test_prompt_with_unknown_token_warns_naming_prompt_and_piece(tiny):
    with pytest.warns(PromptWarning, match=r"1 of 2 prompts .*prompts\[1\]='the zebra sat' has the unknown "
                                            r"token '<unk>' \(from \['zebra'\]\)"):
        ps = PromptSet.build(tiny, ["the cat sat", "the zebra sat"])
    assert int(ps.tokens[1, 2]) == tiny.tokenizer.unk_token_id  # built all the same
    with pytest.warns(PromptWarning, match=r"corrupted\[0\]='the okapi' has the unknown"):
        PromptSet.build(tiny, ["the cat"], corrupted=["the okapi"])
    with pytest.warns(PromptWarning, match=r"special token '<pad>'"):
        PromptSet.build(tiny, ["the cat <pad> sat"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known words: no warning at all
        PromptSet.build(tiny, ["the cat sat on the mat"], answers=[" dog"])


@pytest.mark.parametrize("where", ["prompts", "answers", "foils", "corrupted"])
def test_lone_surrogate_is_a_project_error(tiny, where):
    kw = {"answers": [" mat"], "foils": [" dog"], "corrupted": ["a cat"]}
    kw[where] = ["the \ud800"]
    prompts = kw.pop("prompts", ["the cat"])
    with pytest.raises(PromptSetError, match=rf"{where}\[0\]='the \\ud800' is not valid: .*UTF-8.*lone surrogate"):
        PromptSet.build(tiny, prompts, **kw)


def test_prompt_longer_than_the_context_is_rejected(tiny):
    n_ctx = tiny.cfg.n_ctx
    fits = " ".join(["the"] * (n_ctx - 1))  # + BOS = n_ctx tokens: allowed, and the model runs it
    ps = PromptSet.build(tiny, ["the cat", fits])
    assert ps.lengths[1] == n_ctx
    import torch

    with torch.no_grad():
        assert torch.isfinite(tiny(ps.tokens[1:2, :n_ctx].to(tiny.cfg.device))).all()
    with pytest.raises(PromptSetError, match=rf"prompts\[1\]=.* tokenizes to {n_ctx + 1} tokens \(BOS included\), "
                                             rf"longer than the model's context n_ctx={n_ctx}"):
        PromptSet.build(tiny, ["the cat", fits + " cat"])
    # without BOS the same text fits
    assert PromptSet.build(tiny, [fits + " cat"], prepend_bos=False).lengths == (n_ctx,)
    with pytest.raises(PromptSetError, match=rf"corrupted\[0\]=.* longer than the model's context n_ctx={n_ctx}"):
        PromptSet.build(tiny, ["the cat"], corrupted=[fits + " cat"], align=False)


def test_byte_level_tokenizer_has_no_unknown_but_special_tokens_are_caught():
    m = _byte_level()
    eot = "<|endoftext|>"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unseen words and emoji are bytes, not <unk>: no warning
        ps = PromptSet.build(m, [" the zebra 😀", " the cat"], answers=[" cat", " dog"])
    assert ps.tokens[0, 0] == m.tokenizer.bos_token_id
    with pytest.raises(PromptSetError, match=r"answers\[0\]='<\|endoftext\|>' is not valid: an ordinary token; "
                                             r"it is the special token .* unknown/BOS/EOS"):
        PromptSet.build(m, ["the cat"], answers=[eot])
    # GPT-2's <|endoftext|> is unk, BOS and EOS at once: written in a prompt it is a special
    # token, not "an unknown word"
    with pytest.warns(PromptWarning, match=r"has the special token '<\|endoftext\|>'"):
        PromptSet.build(m, [f"the cat{eot} sat"])
    with pytest.raises(PromptSetError, match=r"longer than the model's context n_ctx=16"):
        PromptSet.build(m, ["the cat sat on the mat " * 10])


def test_token_ids_outside_the_models_vocabulary_are_rejected():
    m = _byte_level(d_vocab=200)  # a tokenizer larger than the model's embedding
    tok = m.tokenizer
    text = next(t for t in (tok.decode([i]) for i in range(200, len(tok)))
                if tok.encode(t, add_special_tokens=False)[0] >= 200 and len(tok.encode(t, add_special_tokens=False)) == 1)
    with pytest.raises(PromptSetError, match=r"outside the model's vocabulary 0\.\.199"):
        PromptSet.build(m, [text])
    with pytest.raises(PromptSetError, match=r"answers\[0\]=.*outside 0\.\.199"):
        PromptSet.build(m, ["a"], answers=[text])


@pytest.mark.parametrize("kw,match", [
    ({"meta": {"k": 5}}, r"meta\['k'\]=5 is not valid"),
    ({"meta": {"k": "ab"}}, r"meta\['k'\]='ab' is not valid"),
    ({"meta": [1]}, r"meta=\[1\] is not valid: a mapping"),
    ({"answers": b" cat"}, r"answers=b' cat' is not valid"),
    ({"answers": [None]}, r"answers\[0\]=None is not valid: a string"),
    ({"answers": 3}, r"answers=3 is not valid"),
])
def test_odd_arguments_are_project_errors(tiny, kw, match):
    with pytest.raises(PromptSetError, match=match):
        PromptSet.build(tiny, ["the cat"], **kw)


def test_subset_rejects_bools_and_accepts_numpy_ints(tiny):
    import numpy as np

    ps = PromptSet.build(tiny, ["the cat", "the dog"])
    with pytest.raises(PromptSetError, match="index=True"):
        ps.subset([True])
    assert ps.subset([np.int64(1)]).prompts == ("the dog",)
