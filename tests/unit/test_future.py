"""Future-token probes on planted arrays: information about the token at t+tau is found
when it is in the features, and not when the features only encode the current token."""

import pytest
import torch

from pytest_circuits import CircuitsError, PromptSet
from pytest_circuits.techniques import future as F


def _data(planted: bool, seed: int = 0, n_texts: int = 60, per_text: int = 12, vocab: int = 12, d: int = 24):
    g = torch.Generator().manual_seed(seed)
    cur = torch.randint(0, vocab, (n_texts * per_text,), generator=g)
    fut = torch.randint(0, vocab, (n_texts * per_text,), generator=g)   # independent of cur
    emb = torch.randn(vocab, d, generator=g, dtype=torch.float64)
    X = emb[cur] + 0.1 * torch.randn(len(cur), d, generator=g, dtype=torch.float64)
    if planted:
        X = X + 2.0 * emb[fut].roll(1, dims=1)          # the future token, linearly readable
    groups = torch.arange(n_texts).repeat_interleave(per_text)
    return X, cur, fut, groups


def test_planted_future_information_is_found():
    r = F.fit(*_data(True), n_classes=12, record=False)
    assert r.margin.lower > 0.5 and r.accuracy.mean > 0.7


def test_current_token_only_gives_no_margin():
    r = F.fit(*_data(False), n_classes=12, record=False)
    assert r.margin.upper < 0.1 and r.accuracy.mean < 0.25   # chance is 1/12


def test_folds_hold_out_every_text_once():
    X, cur, fut, groups = _data(True)
    r = F.fit(X, cur, fut, groups, n_classes=12, folds=4, record=False)
    assert r.accuracy.n == 60 and r.n_test_positions == 60 * 12


def test_bad_input(tiny):
    X, cur, fut, groups = _data(True, n_texts=3)
    with pytest.raises(CircuitsError, match="folds=5"):
        F.fit(X, cur, fut, groups, record=False)
    with pytest.raises(CircuitsError, match="tau=0"):
        F.collect(tiny, ["the cat sat on the mat"], layer=0, tau=0)
    with pytest.raises(CircuitsError, match=r"layer=9 is not valid: 0\.\.1"):
        F.collect(tiny, ["the cat sat on the mat"], layer=9, tau=1)


def test_collect_reads_the_right_positions(tiny):
    texts = ["the cat sat on the mat", "the dog went to the store"]
    X, cur, fut, groups = F.collect(tiny, texts, layer=1, tau=2)
    ps = PromptSet.build(tiny, texts)
    assert len(X) == sum(n - 1 - 2 for n in ps.lengths)
    assert int(cur[0]) == int(ps.tokens[0, 1]) and int(fut[0]) == int(ps.tokens[0, 3])
    assert groups.tolist() == [0] * 4 + [1] * 4
