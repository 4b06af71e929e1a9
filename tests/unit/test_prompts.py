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
