"""Metrics checked against independent computations on the tiny model."""

import pytest
import torch

from pytest_circuits import ActivationStore, PromptSet, PromptSetError, metrics, tasks


@pytest.fixture
def facts_like(tiny):
    return PromptSet.build(tiny, ["the capital of France is", "the capital of Italy is",
                                  "the capital of Japan is the city"],
                           answers=[" Paris", " Rome", " Tokyo"], foils=[" Rome", " Paris", " Berlin"])


def _last_logits(model, ps):
    with torch.no_grad():
        return torch.stack([model(ps.tokens[i: i + 1, :n])[0, -1] for i, n in enumerate(ps.lengths)])


def test_logit_diff_matches_forward(tiny, facts_like):
    m = metrics.logit_diff(tiny, facts_like, activations=ActivationStore())
    ref = _last_logits(tiny, facts_like)
    expect = [ref[i, a] - ref[i, f] for i, (a, f) in enumerate(zip(facts_like.answer_ids, facts_like.foil_ids))]
    assert m.values == pytest.approx([float(e) for e in expect], abs=1e-5)
    assert m.n == 3 and m.provenance["intervention"] == "none"


def test_prob_diff_and_answer_prob(tiny, facts_like):
    store = ActivationStore()
    p = metrics.answer_prob(tiny, facts_like, activations=store)
    probs = _last_logits(tiny, facts_like).softmax(-1)
    assert p.values == pytest.approx([float(probs[i, a]) for i, a in enumerate(facts_like.answer_ids)], abs=1e-6)
    pd = metrics.prob_diff(tiny, facts_like, [[a] for a in facts_like.answer_ids],
                           [[f] for f in facts_like.foil_ids], activations=store)
    assert pd.values == pytest.approx([float(probs[i, a] - probs[i, f]) for i, (a, f) in
                                       enumerate(zip(facts_like.answer_ids, facts_like.foil_ids))], abs=1e-6)
    # one list for every prompt; probabilities of all tokens sum to 1
    everything = metrics.prob_diff(tiny, facts_like, list(range(tiny.cfg.d_vocab)), [0], activations=store)
    assert everything.values == pytest.approx([1 - float(probs[i, 0]) for i in range(3)], abs=1e-5)
    with pytest.raises(PromptSetError, match="token ids in 0.."):
        metrics.prob_diff(tiny, facts_like, [10**9], [0], activations=store)


def test_top1_matches_argmax(tiny, facts_like):
    m = metrics.top1(tiny, facts_like, activations=ActivationStore())
    ref = _last_logits(tiny, facts_like).argmax(-1)
    assert m.values == tuple(float(int(r) == a) for r, a in zip(ref, facts_like.answer_ids))


def test_kl_of_clean_to_clean_is_zero(tiny, facts_like):
    kl = metrics.kl_divergence(tiny, facts_like, None, activations=ActivationStore())
    assert kl.mean == pytest.approx(0.0, abs=1e-9)


def test_loss_matches_cross_entropy(tiny, facts_like):
    m = metrics.loss(tiny, facts_like, activations=ActivationStore())
    with torch.no_grad():
        for i, n in enumerate(facts_like.lengths):
            toks = facts_like.tokens[i: i + 1, :n]
            logits = tiny(toks)[0, :-1]
            ref = torch.nn.functional.cross_entropy(logits, toks[0, 1:])
            assert m.values[i] == pytest.approx(float(ref), abs=1e-5)


def test_metric_needs_answers(tiny):
    ps = PromptSet.build(tiny, ["the cat"])
    with pytest.raises(PromptSetError, match="has no answer_ids"):
        metrics.logit_diff(tiny, ps, activations=ActivationStore())


def test_greater_than_pd_matches_hand_computation(tiny):
    """The two-step per-digit PD, recomputed by hand from two plain forwards."""
    task = tasks.greater_than(tiny, n=6, seed=3)
    got = tasks.prob_diff(tiny, task, activations=ActivationStore())
    digit = [tiny.tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(10)]
    with torch.no_grad():
        for i, yy in enumerate(task.yy):
            a, b = divmod(yy, 10)
            toks = task.prompts.tokens[i: i + 1, : task.prompts.lengths[i]]
            p1 = tiny(toks)[0, -1].softmax(-1)[digit]
            toks2 = torch.cat([toks, torch.tensor([[digit[a]]])], 1)
            p2 = tiny(toks2)[0, -1].softmax(-1)[digit]
            above = p1[a + 1:].sum() + p1[a] * p2[b + 1:].sum()
            below = p1[:a].sum() + p1[a] * p2[: b + 1].sum()
            assert got.values[i] == pytest.approx(float(above - below), abs=1e-5)


def test_greater_than_builder_is_seeded_and_aligned(tiny):
    a = tasks.greater_than(tiny, n=20, seed=1)
    b = tasks.greater_than(tiny, n=20, seed=1)
    c = tasks.greater_than(tiny, n=20, seed=2)
    assert a.prompts.prompts == b.prompts.prompts != c.prompts.prompts
    assert all(2 <= y <= 98 for y in a.yy)
    assert a.prompts.corrupted.lengths == a.prompts.lengths
    assert all(" 01 " not in p and p.split(" to ")[0].endswith("01") for p in a.prompts.corrupted.prompts)
    with pytest.raises(PromptSetError, match="n=1"):
        tasks.greater_than(tiny, n=1)
    with pytest.raises(PromptSetError, match="centuries"):
        tasks.greater_than(tiny, centuries=[5])


def test_facts_loader_checks_lines(tmp_path, tiny):
    bad = tmp_path / "f.jsonl"
    bad.write_text('{"prompt": "x", "answer": " y"}\n')
    with pytest.raises(PromptSetError, match=r"f.jsonl:1: missing keys \['foil', 'relation'\]"):
        tasks.load_facts(bad)
    bad.write_text("not json\n")
    with pytest.raises(PromptSetError, match="f.jsonl:1: not JSON"):
        tasks.load_facts(bad)
    good = tmp_path / "g.jsonl"
    good.write_text('{"prompt": "the capital of France is", "answer": " Paris", "foil": " Rome", "relation": "capital"}\n'
                    '{"prompt": "the capital of Spain is", "answer": " Madrid x", "foil": " Rome", "relation": "capital"}\n')
    ps = tasks.facts(tiny, path=good)
    assert len(ps) == 1 and ps.meta["relation"] == ("capital",)  # multi-token answer left out
    with pytest.raises(PromptSetError, match="relations"):
        tasks.facts(tiny, path=good, relations=["nope"])


def test_greater_than_two_digit_years_match_hand_computation(tiny_two_digit):
    """GPT-2-style years ("17" "32"): PD and cutoff sharpness over the tokens 00..99."""
    m = tiny_two_digit
    task = tasks.greater_than(m, n=5, seed=2)
    assert task.mode == "two_digit" and task.second is None
    pd = tasks.prob_diff(m, task, activations=ActivationStore())
    cs = tasks.cutoff_sharpness(m, task, activations=ActivationStore())
    ids = [m.tokenizer.convert_tokens_to_ids(f"{y:02d}") for y in range(100)]
    with torch.no_grad():
        for i, yy in enumerate(task.yy):
            p = m(task.prompts.tokens[i: i + 1, : task.prompts.lengths[i]])[0, -1].softmax(-1)[ids].double()
            assert pd.values[i] == pytest.approx(float(p[yy + 1:].sum() - p[: yy + 1].sum()), abs=1e-6)
            assert cs.values[i] == pytest.approx(float(p[yy + 1] - p[yy - 1]), abs=1e-7)


def test_cutoff_sharpness_needs_two_digit_years(tiny):
    with pytest.raises(PromptSetError, match="two-digit year tokens"):
        tasks.cutoff_sharpness(tiny, tasks.greater_than(tiny, n=3), activations=ActivationStore())
