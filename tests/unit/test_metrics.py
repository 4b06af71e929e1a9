"""Metrics checked against independent computations on the tiny model."""

import pytest
import torch

from pytest_circuits import hooks as H
from pytest_circuits import ActivationStore, MeasurementError, PromptSet, PromptSetError, metrics, tasks


@pytest.fixture
def facts_like(tiny):
    return PromptSet.build(tiny, ["the capital of France is", "the capital of Italy is",
                                  "the capital of Japan is the city"],
                           answers=[" Paris", " Rome", " Tokyo"], foils=[" Rome", " Paris", " Berlin"])


def _last_logits(model, ps):
    with torch.no_grad():
        # on the model's device (PYTEST_CIRCUITS_TEST_DEVICE), compared on the CPU with the store's
        return torch.stack([model(ps.tokens[i: i + 1, :n].to(model.cfg.device))[0, -1].cpu()
                            for i, n in enumerate(ps.lengths)])


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
            toks = facts_like.tokens[i: i + 1, :n].to(tiny.cfg.device)
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
            toks = task.prompts.tokens[i: i + 1, : task.prompts.lengths[i]].to(tiny.cfg.device)
            p1 = tiny(toks)[0, -1].softmax(-1)[digit]
            toks2 = torch.cat([toks, torch.tensor([[digit[a]]], device=toks.device)], 1)
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


# -- KL under an intervention, against a hand computation (issue #10, item 11) -------------

def test_kl_under_head_ablation_matches_hand_computation(tiny, facts_like):
    """KL(clean || L0H0 zeroed) from the metric = ``F.kl_div`` on two plain forwards, one with a
    raw hook zeroing head 0's ``z``; non-zero, so a sign error or a clamp could not hide."""
    from pytest_circuits import interventions

    abl = interventions.ablate(tiny, "L0H0", "zero")
    kl = metrics.kl_divergence(tiny, facts_like, abl, activations=ActivationStore())

    def zero_head0(z, hook):
        z = z.clone()
        z[:, :, 0] = 0.0
        return z

    expect = []
    with torch.no_grad():
        for i, n in enumerate(facts_like.lengths):
            toks = facts_like.tokens[i: i + 1, :n].to(tiny.cfg.device)
            clean = tiny(toks)[0, -1].double().log_softmax(-1)
            ablated = tiny.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_z", zero_head0)])[0, -1]
            ablated = ablated.double().log_softmax(-1)
            assert not torch.allclose(clean, ablated)  # the hook did change something
            # kl_div(input=log q, target=log p, log_target=True) = sum p (log p - log q)
            expect.append(float(torch.nn.functional.kl_div(ablated, clean, reduction="sum", log_target=True)))
    assert min(expect) > 1e-6
    assert kl.values == pytest.approx(expect, rel=1e-5, abs=1e-9)
    # the other direction is another number (the reference is the first argument)
    rev = metrics.kl_divergence(tiny, facts_like, None, reference=abl, activations=ActivationStore())
    assert rev.values != pytest.approx(kl.values, rel=1e-3)
    assert all(v > 0 for v in rev.values)


def test_kl_sign_check_clamps_rounding_and_raises_real_negatives(tiny, facts_like):
    """Only rounding-sized negatives (> -KL_ROUNDING) become 0; a real negative is an error."""
    vals = torch.tensor([-1e-12, 0.5, 0.0], dtype=torch.float64)
    assert metrics._nonnegative_kl("kl", tiny, facts_like, vals).tolist() == [0.0, 0.5, 0.0]
    with pytest.raises(MeasurementError, match=r"kl on .*: KL\(reference \|\| intervened\) = -1e-06 < 0 on "
                                               r"prompts\[1\]='the capital of Italy is'; .*cannot be negative"):
        metrics._nonnegative_kl("kl", tiny, facts_like, torch.tensor([0.1, -1e-6, 0.2], dtype=torch.float64))


def test_kl_values_are_the_textbook_formula():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(5, 50, generator=g, dtype=torch.float64), 3 * torch.randn(5, 50, generator=g, dtype=torch.float64)
    got = metrics._kl_values(p, q)
    ref = torch.nn.functional.kl_div(q.log_softmax(-1), p.log_softmax(-1), reduction="none", log_target=True).sum(-1)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-14) and (got > 0).all()
    assert torch.allclose(metrics._kl_values(p, p + 7.0), torch.zeros(5, dtype=torch.float64), atol=1e-12)


# -- metrics refuse what is not a number (issue #10, item 3) -------------------------------

@pytest.fixture(scope="module")
def nan_dog(tmp_path_factory):
    """The tiny model with a NaN embedding row for " dog": prompts containing it have NaN
    logits at their last position; the others are finite."""
    from safetensors.torch import load_file, save_file

    from pytest_circuits.models import load_model
    from pytest_circuits.testing import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("nan") / "ckpt", seed=0)
    f = path / "model.safetensors"
    weights = load_file(str(f))
    from transformers import AutoTokenizer

    dog = AutoTokenizer.from_pretrained(str(path)).convert_tokens_to_ids("dog")
    weights["model.embed_tokens.weight"][dog] = float("nan")
    save_file(weights, str(f), metadata={"format": "pt"})
    return load_model(str(path), cache_dir=tmp_path_factory.mktemp("nan-cache"), device="cpu")


@pytest.fixture(scope="module")
def dog_prompts(nan_dog):
    return PromptSet.build(nan_dog, ["the cat sat on the", "the dog sat on the", "a dog went to the"],
                           answers=[" mat", " mat", " store"], foils=[" dog", " cat", " city"])


@pytest.mark.parametrize("metric", ["top1", "logit_diff", "answer_prob", "prob_diff", "kl_divergence",
                                    "kl_reference", "loss"])
def test_every_metric_refuses_nan_logits(nan_dog, dog_prompts, metric):
    """A NaN weight: each metric raises naming itself, the model and 2 of 3 prompts -- top1 too,
    where argmax over NaN used to give a confident 0 [0, 0]."""
    from pytest_circuits import interventions

    store = ActivationStore()
    logits = metrics.last_logits(nan_dog, dog_prompts, activations=store)
    assert torch.isfinite(logits[0]).all() and torch.isnan(logits[1:]).all()  # the fault is real
    if metric == "top1":
        assert int(logits[1].argmax()) == 0  # what main measured: "never the answer"
    calls = {
        "top1": lambda: metrics.top1(nan_dog, dog_prompts, activations=store),
        "logit_diff": lambda: metrics.logit_diff(nan_dog, dog_prompts, activations=store),
        "answer_prob": lambda: metrics.answer_prob(nan_dog, dog_prompts, activations=store),
        "prob_diff": lambda: metrics.prob_diff(nan_dog, dog_prompts, [5], [6], activations=store),
        "kl_divergence": lambda: metrics.kl_divergence(nan_dog, dog_prompts, interventions.ablate(
            nan_dog, "L0H0", "zero"), activations=store),
        "kl_reference": lambda: metrics.kl_divergence(nan_dog, dog_prompts, None, activations=store),
        "loss": lambda: metrics.loss(nan_dog, dog_prompts, activations=store),
    }
    name = {"kl_divergence": "kl", "kl_reference": "kl"}.get(metric, metric)
    what = "per-token losses" if metric == "loss" else "last-position logits"
    with pytest.raises(MeasurementError, match=rf"^{name} on \S+.*: the {what} are not finite \(NaN or inf\) on "
                                               r"2 of 3 prompts \(first: prompts\[1\]='the dog sat on the'\)"):
        calls[metric]()


def test_metrics_accept_the_finite_prompts_of_the_same_model(nan_dog, dog_prompts):
    ok = dog_prompts.subset([0])
    assert metrics.top1(nan_dog, ok, activations=ActivationStore()).n == 1
    assert metrics.loss(nan_dog, ok, activations=ActivationStore()).n == 1


def test_infinite_logits_are_refused_too(tiny, facts_like, monkeypatch):
    real = ActivationStore.get

    def with_inf(self, model, prompts, names, intervention=None, **kw):
        out = dict(real(self, model, prompts, names, intervention, **kw))
        if H.LOGITS_LAST in out:
            out[H.LOGITS_LAST] = out[H.LOGITS_LAST].clone()
            out[H.LOGITS_LAST][2, 7] = float("inf")
        return out
    monkeypatch.setattr(ActivationStore, "get", with_inf)
    with pytest.raises(MeasurementError, match=r"top1 on .*not finite \(NaN or inf\) on 1 of 3 prompts \(first: prompts\[2\]"):
        metrics.top1(tiny, facts_like, activations=ActivationStore())


# -- token-id arguments: ints (numpy and tensor ints too), never bools ---------------------

def test_prob_diff_accepts_numpy_and_tensor_ids(tiny, facts_like):
    import numpy as np

    store = ActivationStore()
    ref = metrics.prob_diff(tiny, facts_like, [5, 6], [7], activations=store)
    assert metrics.prob_diff(tiny, facts_like, [np.int64(5), np.int32(6)], np.array([7]), activations=store).values == ref.values
    assert metrics.prob_diff(tiny, facts_like, torch.tensor([5, 6]), [torch.tensor(7)], activations=store).values == ref.values
    per = metrics.prob_diff(tiny, facts_like, [[5, 6]] * 3, np.array([[7]] * 3), activations=store)
    assert per.values == ref.values


@pytest.mark.parametrize("ids,match", [
    ([True], r"positive=True is not valid: token ids in 0\.\.71 \(ints, not bools\)"),
    ([1, False], r"positive=False is not valid"),
    ([[True]] * 3, r"positive\[0\]=True is not valid"),
    (torch.tensor([True]), r"positive=True is not valid"),
    ([-1], r"positive=-1 is not valid: token ids in 0\.\.71"),
    ([2.0], r"positive=2\.0 is not valid"),
    ([float("nan")], r"positive=nan is not valid"),
    (["5"], r"positive='5' is not valid"),
    ([None], r"positive=None is not valid"),
    (None, r"positive=None is not valid: token ids \(one list for all prompts"),
    (5, r"positive=5 is not valid: token ids"),
    ("abc", r"positive='abc' is not valid"),
    ([], r"positive=\[\] is not valid"),
    ([[5], [6]], r"positive='2 lists' is not valid: one list per prompt \(3\)"),
    ([5, [6]], r"not a mix of ids and lists"),
    ([[5], [], [6]], r"positive\[1\]=\[\] is not valid: at least one token id"),
    ([10**30], r"token ids in 0\.\.71"),
])
def test_prob_diff_rejects_odd_ids(tiny, facts_like, ids, match):
    with pytest.raises(PromptSetError, match=match):
        metrics.prob_diff(tiny, facts_like, ids, [0], activations=ActivationStore())


@pytest.mark.parametrize("fn", ["top1", "logit_diff", "answer_prob", "loss"])
def test_metrics_need_a_prompt_set(tiny, fn):
    with pytest.raises(PromptSetError, match=r"prompts='list' is not valid: a PromptSet"):
        getattr(metrics, fn)(tiny, ["the cat"], activations=ActivationStore())


def test_greater_than_pd_reads_both_digits_from_one_forward_exactly_when_it_may(tiny, monkeypatch):
    """The digit-mode PD reads the first digit one position before the second prompts' last
    (one forward) when the intervention acts alike on the shared positions (none, or built-in
    replacements at every position); the value equals the two-forward reading. A last-position
    intervention would not act alike (the second prompts' last token is the digit): it keeps
    two forwards, whose value differs from the one-forward reading."""
    from pytest_circuits import ActivationStore
    from pytest_circuits import interventions as I
    import importlib

    G = importlib.import_module("pytest_circuits.tasks.greater_than")   # the module, not the function

    task = tasks.greater_than(tiny, n=8, seed=4)
    assert task.mode == "digit"
    every = [None, I.patch(tiny, ["attn1", "L0H2"]), I.ablate(tiny, "mlp0", "position_mean"),
             I.ablate(tiny, "L1H0", "resample", seed=1), I.ablate(tiny, "attn0", "zero"),
             I.reroute(tiny, "mlp1", via=I.patch(tiny, "attn0"))]
    for iv in every:
        assert G._prefix_consistent(iv)
        one = G.per_prompt_prob_diff(tiny, task, intervention=iv, activations=ActivationStore())
        monkeypatch.setattr(G, "_prefix_consistent", lambda iv: False)
        two = G.per_prompt_prob_diff(tiny, task, intervention=iv, activations=ActivationStore())
        monkeypatch.undo()
        assert float((one - two).abs().max()) <= 1e-6, iv
    last = I.patch(tiny, "attn1", positions="last")
    assert not G._prefix_consistent(last)
    assert not G._prefix_consistent(I.reroute(tiny, "mlp1", via=last))
    kept = G.per_prompt_prob_diff(tiny, task, intervention=last, activations=ActivationStore())
    store = ActivationStore()
    names = [H.logprobs_last(task.digit_ids, back=1), H.logprobs_last(task.digit_ids)]
    got = store.get(tiny, task.second, names, last)
    p1, p2 = got[names[0]].exp(), got[names[1]].exp()
    yy = torch.tensor(task.yy)
    a, b = (yy // 10).unsqueeze(1), (yy % 10).unsqueeze(1)
    d = torch.arange(10).unsqueeze(0)
    pa = p1.gather(1, a).squeeze(1)
    wrong = (p1 * (d > a)).sum(1) + pa * (p2 * (d > b)).sum(1) - (p1 * (d < a)).sum(1) - pa * (p2 * (d <= b)).sum(1)
    assert float((kept - wrong).abs().max()) > 1e-6      # the shortcut would have changed the number
