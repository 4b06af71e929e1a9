"""Induction, previous-token and duplicate-token heads (tasks.induction, techniques.heads).

The planted models in tests/data/planted/ were trained by scripts/train_induction.py on
repeated random sequences: ``induction`` (2 layers, attention only) has induction heads and
the previous-token head that feeds them; ``induction_control`` (1 layer, trained the same
way) cannot have induction heads. Their ground_truth.json was computed by the script with
raw TransformerLens hooks. Here the detector must find exactly those heads and nothing on the
control, every number must equal a raw-hook computation, and the shipped files must be what
the script computes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_circuits import load_model
from pytest_circuits.components import Head
from pytest_circuits.errors import CircuitsError, ComponentError, PromptSetError
from pytest_circuits.prompts import PromptSet
from pytest_circuits.store import ActivationStore
from pytest_circuits.tasks import induction as T
from pytest_circuits.techniques import heads as HD
from pytest_circuits.testing import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
PLANTED = ROOT / "tests" / "data" / "planted"


def _script():
    spec = importlib.util.spec_from_file_location("train_induction", ROOT / "scripts" / "train_induction.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("induction-cache")


@pytest.fixture(scope="module")
def planted(cache):
    return load_model(str(PLANTED / "induction"), device="cpu", cache_dir=cache)


@pytest.fixture(scope="module")
def control(cache):
    return load_model(str(PLANTED / "induction_control"), device="cpu", cache_dir=cache)


@pytest.fixture(scope="module")
def gqa(tmp_path_factory, cache):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("ind-gqa") / "m", n_heads=4, n_kv_heads=2, seed=3)
    return load_model(str(path), device="cpu", cache_dir=cache)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, cache):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("ind-gpt2") / "m", arch="gpt2", seed=5)
    return load_model(str(path), device="cpu", cache_dir=cache)


@pytest.fixture(scope="module")
def store():
    return ActivationStore()


def truth(name):
    return json.loads((PLANTED / name / "ground_truth.json").read_text())


# ----------------------------------------------------------------------------- the task
def test_repeated_tokens_really_repeat(planted):
    ps = T.repeated_tokens(planted, n=6, length=7, seed=3)
    tok = planted.tokenizer
    assert ps.tokens.shape == (6, 15) and ps.lengths == (15,) * 6
    assert ps.meta == {"period": (7,) * 6, "start": (1,) * 6}
    assert (ps.tokens[:, 0] == tok.bos_token_id).all()
    assert torch.equal(ps.tokens[:, 1:8], ps.tokens[:, 8:15])
    pool = set(T.ordinary_tokens(planted))
    special = set(tok.all_special_ids)
    for row in ps.tokens[:, 1:8].tolist():
        assert len(set(row)) == 7 and set(row) <= pool and not set(row) & special
    assert ps.prompts[0] == tok.decode(ps.tokens[0, 1:].tolist())
    assert torch.equal(T.repeated_tokens(planted, n=6, length=7, seed=3).tokens, ps.tokens)   # seeded
    assert not torch.equal(T.repeated_tokens(planted, n=6, length=7, seed=4).tokens, ps.tokens)
    # the pool: every ordinary word of the word-level vocabulary that is a word or a number
    words = {tok.convert_ids_to_tokens(i) for i in pool}
    assert {"the", "cat", "7", "Paris"} <= words and not words & {".", ",", "<bos>", "<pad>", "<unk>"}
    assert HD.layout(ps) == [(list(range(6)), 1, 7)]


def test_large_vocabulary_uses_the_middle_range():
    class Tok:
        def __len__(self):
            return 49152

    class Model:
        tokenizer = Tok()

        class cfg:
            d_vocab = 49152

    assert T.default_range(Model()) == (2457, 24576)
    Model.cfg.d_vocab = 1000
    assert T.default_range(Model()) == (0, 1000)


def test_vocab_range_limits_the_tokens(planted):
    pool = T.ordinary_tokens(planted, vocab_range=(20, 40))
    assert pool and all(20 <= i < 40 for i in pool)
    ps = T.repeated_tokens(planted, n=3, length=5, vocab_range=(20, 40))
    assert set(ps.tokens[:, 1:].flatten().tolist()) <= set(pool)


@pytest.mark.parametrize("kw, match", [
    (dict(n=0), "n=0"), (dict(n=-2), "n=-2"), (dict(n=True), "n=True"), (dict(n=2.5), "n=2.5"),
    (dict(length=1), "length=1"), (dict(length=64), "context n_ctx is 128"),
    (dict(length=20, vocab_range=(20, 30)), "only"), (dict(vocab_range=(5, 5)), "vocab_range"),
    (dict(vocab_range=(0, 10 ** 6)), "vocab_range"), (dict(vocab_range="all"), "vocab_range"),
    (dict(seed=-1), "seed=-1"),
])
def test_bad_task_arguments_are_refused(planted, kw, match):
    with pytest.raises(PromptSetError, match=match):
        T.repeated_tokens(planted, **kw)


def test_prompt_sets_that_do_not_repeat_are_refused(planted, store):
    plain = PromptSet.build(planted, ["the cat sat on the mat"])
    with pytest.raises(PromptSetError, match="repeated_tokens"):
        HD.head_scores(planted, plain, activations=store)
    ps = T.repeated_tokens(planted, n=2, length=5)
    broken = ps.tokens.clone()
    broken[1, 8] = broken[1, 2]
    lying = PromptSet(name="lying", prompts=ps.prompts, tokens=broken, lengths=ps.lengths, meta=ps.meta,
                      pad_id=ps.pad_id)
    with pytest.raises(PromptSetError, match="do not repeat"):
        HD.detect_induction(planted, prompts=lying, activations=store)
    with pytest.raises(PromptSetError, match="two copies"):
        HD.layout(PromptSet(name="x", prompts=ps.prompts, tokens=ps.tokens, lengths=ps.lengths,
                            meta={"period": (6, 6), "start": (1, 1)}, pad_id=ps.pad_id))


def test_bad_detector_arguments(planted, store):
    ps = T.repeated_tokens(planted, n=4, length=6)
    with pytest.raises(ComponentError):
        HD.ablation_effect(planted, ps, "L5H0", activations=store)          # no layer 5
    with pytest.raises(ComponentError, match="attention heads"):
        HD.ablation_effect(planted, ps, "mlp1", activations=store)
    with pytest.raises(ComponentError, match="'mean' or 'zero'"):
        HD.ablation_effect(planted, ps, "L1H0", kind="resample", activations=store)
    scores = HD.head_scores(planted, ps, activations=store)
    with pytest.raises(ComponentError):
        scores["induction"].of("mlp1")                                     # heads only
    with pytest.raises(ComponentError):
        scores["induction"].of("L1H7")
    with pytest.raises(ComponentError):
        scores["induction"].measure("L1H7")
    with pytest.raises(PromptSetError, match="n=0"):
        HD.detect_induction(planted, n=0, activations=store)


def test_varied_periods_keep_every_prompt_the_same_length(planted):
    ps = T.repeated_tokens(planted, n=40, length=12, min_length=6, seed=4)
    bos = planted.tokenizer.bos_token_id
    assert ps.tokens.shape == (40, 25) and ps.lengths == (25,) * 40
    assert set(ps.meta["period"]) <= set(range(6, 13)) and len(set(ps.meta["period"])) > 3
    for b in range(40):
        s, t = ps.meta["start"][b], ps.meta["period"][b]
        row = ps.tokens[b].tolist()
        assert row[0] == bos and s == 1 + 2 * (12 - t) and s + 2 * t == 25
        seq, filler = row[s:s + t], row[1:s]
        assert row[s + t:] == seq and len(set(seq + filler)) == len(seq) + len(filler)   # all distinct
    assert torch.equal(T.repeated_tokens(planted, n=40, length=12, min_length=6, seed=4).tokens, ps.tokens)
    assert len(HD.layout(ps)) == len(set(zip(ps.meta["start"], ps.meta["period"])))
    # a pool given by hand, and one too small for the longest filler
    pool = T.nonspecial_tokens(planted)
    assert set(T.repeated_tokens(planted, n=3, length=5, pool=pool[:8]).tokens[:, 1:].flatten().tolist()) <= set(pool[:8])
    with pytest.raises(PromptSetError, match="only 8 distinct tokens"):
        T.repeated_tokens(planted, n=3, length=6, min_length=3, pool=pool[:8])       # needs 2*6-3 = 9
    for kw, match in ((dict(min_length=13), "min_length=13"), (dict(min_length=1), "min_length=1"),
                      (dict(pool=[0, 10 ** 6]), "pool"), (dict(pool="abc"), "pool")):
        with pytest.raises(PromptSetError, match=match):
            T.repeated_tokens(planted, n=2, length=12, **kw)


def _zoo_model(tmp_path, cache, **spec):
    from pytest_circuits import zoo_heads as Z

    path = Z.build(Z.Spec(heads=(), n_layers=1, **spec), tmp_path / "m", {})
    return load_model(str(path), device="cpu", cache_dir=cache)


def test_applicability_adapts_to_the_vocabulary_and_the_context(tmp_path, cache):
    path = make_tiny_checkpoint(tmp_path / "few", words=["the", "cat", "sat"], seed=2)
    few = load_model(str(path), device="cpu", cache_dir=cache)
    assert len(T.ordinary_tokens(few)) == 13 and len(T.nonspecial_tokens(few)) == 17   # digits, words; + . , ? !
    ps, reason, note = HD.prompt_set(few, n=4)
    # 17 distinct ids: the longest period T with 2T - ceil(T/2) <= 17 is 11
    assert reason == "" and max(ps.meta["period"]) <= 11 and min(ps.meta["period"]) >= 6
    assert "only 13 ordinary tokens" in note and "periods up to 11" in note
    for detect in (HD.detect_induction, HD.detect_previous_token, HD.detect_duplicate_token):
        d = detect(few, n=4)
        assert d.applicable and "periods up to 11" in d.details
    # what cannot be adapted is not applicable, with what the model lacks in its own terms
    two = _zoo_model(tmp_path / "two", cache, arch="llama", words=("apple", "bread"))
    short = _zoo_model(tmp_path / "short", cache, arch="gpt2", n_ctx=8)
    for detect in (HD.detect_induction, HD.detect_previous_token, HD.detect_duplicate_token):
        d = detect(two)
        assert not d.applicable and d.status == "n/a" and "the vocabulary has 2 tokens that are not special" in d.reason
        d = detect(short)
        assert not d.applicable and "context holds 8 positions" in d.reason and "need 9" in d.reason
    long = _zoo_model(tmp_path / "ctx32", cache, arch="gpt2", n_ctx=32)
    ps, reason, note = HD.prompt_set(long)
    assert max(ps.meta["period"]) == 15 and ps.tokens.shape[1] == 31 and "holds periods up to 15" in note


# ----------------------------------------------------------------------------- planted ground truth
def test_detector_finds_the_planted_induction_heads(planted, store):
    gt = truth("induction")
    d = HD.detect_induction(planted, activations=store)
    print(d.summary())
    assert d.found and d.applicable
    assert [c for c, _ in d.components] and {c for c, _ in d.components} == set(gt["induction_heads"])
    for c, _ in d.components:
        assert d.measurement(f"induction share {c}").lower > HD.THRESHOLD and d.measurement(f"induction share {c}").n == 32
        assert d.measurement(f"induction score {c}").lower > 0.8                 # measured: 0.88-0.98
        assert d.measurement(f"induction effect on the attended token {c}").lower > 2.0   # measured: 2.42-3.15
    # ablating them undoes most of the in-context drop (every head of layer 1 is one: no control there)
    drop = d.measurement("in-context loss drop (first - second copy)")
    assert drop.lower > 3.0
    # measured: +4.23 of a drop of 4.85 (the first copy, after its filler, is a little harder)
    assert d.measurement("second-copy loss increase, induction heads ablated").lower > 0.8 * drop.mean
    assert "no control" in d.details and "no control" in d.criterion and len(d.more) == 3 * len(d.components)
    assert [m.name for m in d.measurements] == ["in-context loss drop (first - second copy)",
                                                "induction score (top head)", "induction share (top head)",
                                                "induction effect on the attended token (top head)",
                                                "second-copy loss increase, induction heads ablated"]
    assert d.measurements[1].values == d.measurement(f"induction score {d.components[0][0]}").values
    assert set(d.heatmaps) == {f"{w} {x}" for w in ("induction", "previous-token", "duplicate-token")
                               for x in ("score", "share")}
    assert all(v.shape == (2, 4) for v in d.heatmaps.values())
    assert "previous-token heads (share lower bound > 0.5, token dependence > 0.1): L0H0" in d.details
    for c, _ in d.components:                                                    # each ablated alone, too
        assert f"mean-ablating {c} alone" in d.details


def test_detector_finds_the_previous_token_head_that_feeds_them(planted, store):
    gt = truth("induction")
    d = HD.detect_previous_token(planted, activations=store)
    print(d.summary())
    assert d.found and [c for c, _ in d.components] == gt["previous_token_heads"]
    assert all(c.startswith("L0") for c, _ in d.components)                   # the layer before
    # the induction heads need it: ablating it costs the second copy more than any induction head
    worst = max(gt["zero_ablation_loss_increase"][c] for c in gt["induction_heads"])
    assert all(gt["zero_ablation_loss_increase"][c] > worst for c, _ in d.components)
    assert not HD.detect_duplicate_token(planted, activations=store).found


def test_control_reports_nothing(control, store):
    assert truth("induction_control")["induction_heads"] == []
    d = HD.detect_induction(control, activations=store)
    print(d.summary())
    assert d.applicable and not d.found and d.components == ()
    best = d.measurements[1]
    assert best.name == "induction score (top head)" and best.provenance["head"].startswith("L0H")
    assert best.upper < HD.THRESHOLD
    assert np.max(d.heatmaps["induction score"]) < 0.2


# ----------------------------------------------------------------------------- raw hooks
def raw_scores(model, ps):
    """Per prompt and head, the three scores from run_with_cache, by explicit loops."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(ps.tokens, names_filter=lambda n: n in names)
    out = {k: np.zeros((len(ps), model.cfg.n_layers, model.cfg.n_heads)) for k in HD.KINDS}
    for b in range(len(ps)):
        s, t = ps.meta["start"][b], ps.meta["period"][b]
        for l, name in enumerate(names):
            a = cache[name][b].double()
            for h in range(model.cfg.n_heads):
                out["induction"][b, l, h] = np.mean([float(a[h, i, i - t + 1]) for i in range(s + t, s + 2 * t)])
                out["duplicate_token"][b, l, h] = np.mean([float(a[h, i, i - t]) for i in range(s + t, s + 2 * t)])
                out["previous_token"][b, l, h] = np.mean([float(a[h, i, i - 1]) for i in range(s + 1, s + 2 * t)])
    return out


@torch.no_grad()
def raw_copy_losses(model, ps, fwd_hooks=()):
    logits = model.run_with_hooks(ps.tokens, fwd_hooks=list(fwd_hooks)).double()
    nll = -logits[:, :-1].log_softmax(-1).gather(-1, ps.tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
    first = [float(nll[b, s:s + t - 1].mean()) for b, (s, t) in enumerate(zip(ps.meta["start"], ps.meta["period"]))]
    second = [float(nll[b, s + t:s + 2 * t - 1].mean())
              for b, (s, t) in enumerate(zip(ps.meta["start"], ps.meta["period"]))]
    return np.array(first), np.array(second)


@pytest.mark.parametrize("which", ["planted", "gqa", "gpt2"])
def test_scores_and_losses_equal_raw_hooks(which, request, store):
    model = request.getfixturevalue(which)
    ps = T.repeated_tokens(model, n=5, length=9, seed=7)
    got = HD.head_scores(model, ps, activations=store)
    want = raw_scores(model, ps)
    for k in HD.KINDS:
        L, nh = want[k].shape[1:]
        np.testing.assert_allclose(got[k].values.numpy().T.reshape(-1, L, nh), want[k], atol=1e-6, rtol=0)
        np.testing.assert_allclose(got[k].grid(), want[k].mean(0), atol=1e-6, rtol=0)
        np.testing.assert_allclose(got[k].of("L1H2").numpy(), want[k][:, 1, 2], atol=1e-6, rtol=0)
        m = got[k].measure("L1H2", record=False)
        assert m.name == f"{HD.TITLES[k]} L1H2" and m.values == pytest.approx(tuple(want[k][:, 1, 2]), abs=1e-6)
    first, second = HD.copy_losses(model, ps, activations=store)
    rf, rs = raw_copy_losses(model, ps)
    np.testing.assert_allclose(first, rf, atol=1e-4, rtol=0)
    np.testing.assert_allclose(second, rs, atol=1e-4, rtol=0)
    icl = HD.in_context_loss(model, ps, activations=store)
    assert icl.drop.values == pytest.approx(tuple(rf - rs), abs=1e-4)


@torch.no_grad()
def raw_evidence(model, ps):
    """head_evidence's measurements from run_with_cache, by explicit loops over prompts, query
    positions and heads (the value of a query head read from its key-value head, checked against
    hook_z first)."""
    L, NH = model.cfg.n_layers, model.cfg.n_heads
    logits, cache = model.run_with_cache(ps.tokens)
    lp = logits.double().log_softmax(-1)
    W_U = model.W_U.double()
    centred = W_U - W_U.mean(1, keepdim=True)
    n = len(ps)
    out = {k: {m: np.full((n, L, NH), np.nan) for m in HD.EVIDENCE} for k in HD.EVIDENCE_KINDS}
    for l in range(L):
        A = cache[f"blocks.{l}.attn.hook_pattern"].double()
        v = cache[f"blocks.{l}.attn.hook_v"].double()
        z = cache[f"blocks.{l}.attn.hook_z"].double()
        group = NH // v.shape[2]
        W_O = model.W_O[l].double()
        for b in range(n):
            s, t = ps.meta["start"][b], ps.meta["period"][b]
            scale = cache["ln_final.hook_scale"][b, :, 0].double()
            for h in range(NH):
                vh = v[b, :, h // group]
                for i in range(ps.tokens.shape[1]):                     # the grouping, checked
                    torch.testing.assert_close(z[b, i, h], (A[b, h, i, :, None] * vh).sum(0), atol=1e-5, rtol=1e-4)
                kinds = {"induction": [(i, i - t + 1) for i in range(s + t, s + 2 * t)],
                         "duplicate_token": [(i, i - t) for i in range(s + t, s + 2 * t)],
                         "previous_token": [(i, i - 1) for i in range(s + 1, s + 2 * t)],
                         "copy_suppression": [(i, i - t + 1) for i in range(s + t, s + 2 * t - 1)
                                              if -float(lp[b, i, ps.tokens[b, i + 1]]) < np.log(2)]}
                for kind, pairs in kinds.items():
                    if not pairs:
                        continue
                    vals = {m: [] for m in HD.EVIDENCE}
                    for i, tg in pairs:
                        a = float(A[b, h, i, tg])
                        vals["score"].append(a)
                        vals["share"].append(a / (float(A[b, h, i, 1:i + 1].sum()) + (a if tg == 0 else 0.0)))
                        vals["above"].append(a - 1 / (i + 1))
                        if kind in ("induction", "copy_suppression"):
                            u = int(ps.tokens[b, tg])
                            vals["effect"].append(a * float(vh[tg] @ W_O[h] @ centred[:, u]) / float(scale[i]))
                        else:
                            delta = a * ((vh[tg] - v[(b - 1) % n, tg, h // group]) @ W_O[h])
                            o = z[b, i, h] @ W_O[h]
                            vals["dependence"].append(float(delta.norm() / (o.norm() + (o - delta).norm())))
                    for m, xs in vals.items():
                        if xs:
                            out[kind][m][b, l, h] = np.mean(xs)
    return out


@pytest.mark.parametrize("which", ["planted", "gqa", "gpt2"])
def test_evidence_equals_raw_hooks(which, request, store):
    model = request.getfixturevalue(which)
    ps, _, _ = HD.prompt_set(model, n=6, length=9, seed=5)
    assert len(set(ps.meta["period"])) > 1                             # varied periods, several groups
    got = HD.head_evidence(model, ps, activations=store)
    want = raw_evidence(model, ps)
    for kind in HD.EVIDENCE_KINDS:
        for m in HD.EVIDENCE:
            np.testing.assert_allclose(getattr(got[kind], m), want[kind][m], atol=1e-5, rtol=1e-4,
                                       err_msg=f"{kind} {m}")
    # the score is the old head_scores' (the heatmaps did not change meaning)
    old = HD.head_scores(model, ps, activations=store)
    for kind in HD.KINDS:
        np.testing.assert_allclose(got[kind].score, old[kind].values.numpy().T.reshape(got[kind].score.shape),
                                   atol=1e-12)
    # measurements over the prompts that count, as continuous quantities
    m = got["induction"].measure("share", Head(1, 2))
    assert m.name == "induction share L1H2" and m.n == 6 and "Clopper" not in m.provenance["interval"]


def test_evidence_is_computed_once_and_keyed_on_the_layout(planted, tmp_path):
    """head_evidence is cached with the activations it is made of: a second call, and a new
    store on the same folder (a warm run), read it without a forward; a returned array changed
    by its caller changes nothing cached; the same tokens read with another layout (period 4
    instead of 2) are computed anew, each layout equal to the raw-hook computation."""
    ps, _, _ = HD.prompt_set(planted, n=6, length=9, seed=7)
    first = ActivationStore(cache_dir=tmp_path)
    a = HD.head_evidence(planted, ps, activations=first)
    assert (first.counters.results_computed, first.counters.results_reused) == (1, 0)
    forwards = first.counters.forward_passes
    a["induction"].share[:] = -1.0                                   # the caller's copy alone
    b = HD.head_evidence(planted, ps, activations=first)
    assert (first.counters.results_computed, first.counters.results_reused, first.counters.forward_passes) \
        == (1, 1, forwards)
    warm = ActivationStore(cache_dir=tmp_path)
    c = HD.head_evidence(planted, ps, activations=warm)
    assert (warm.counters.forward_passes, warm.counters.results_computed, warm.counters.results_reused) == (0, 0, 1)
    want = raw_evidence(planted, ps)
    for got in (b, c):
        for kind in HD.EVIDENCE_KINDS:
            for m in HD.EVIDENCE:
                np.testing.assert_allclose(getattr(got[kind], m), want[kind][m], atol=1e-5, rtol=1e-4,
                                           err_msg=f"{kind} {m}")
    # one row of tokens that repeats with period 2 and with period 4: two layouts, one digest
    x, y = (int(t) for t in ps.tokens[0, 1:3])
    row = torch.tensor([[int(ps.tokens[0, 0]), x, y, x, y, x, y, x, y]])
    two, four = (PromptSet(name="periodic", prompts=("periodic",), tokens=row, lengths=(9,),
                           meta={"period": (t,), "start": (1,)}) for t in (2, 4))
    assert two.digest == four.digest
    scores = []
    for p in (two, four):
        got = HD.head_evidence(planted, p, activations=first)
        want = raw_evidence(planted, p)
        np.testing.assert_allclose(got["induction"].score, want["induction"]["score"], atol=1e-6)
        scores.append(got["induction"].score)
    assert first.counters.results_computed == 3 and np.abs(scores[0] - scores[1]).max() > 1e-3


def mean_z_hooks(model, ps, heads):
    """Raw mean ablation: each head's hook_z slice replaced by its mean over every token."""
    names = sorted({f"blocks.{h.layer}.attn.hook_z" for h in heads})
    _, cache = model.run_with_cache(ps.tokens, names_filter=lambda n: n in names)
    hooks = []
    for h in heads:
        mean = cache[f"blocks.{h.layer}.attn.hook_z"][:, :, h.head].reshape(-1, model.cfg.d_head).mean(0)

        def fn(z, hook, h=h, mean=mean):
            z = z.clone()
            z[:, :, h.head] = mean
            return z
        hooks.append((f"blocks.{h.layer}.attn.hook_z", fn))
    return hooks


def zero_z_hooks(heads):
    def make(h):
        def fn(z, hook):
            z = z.clone()
            z[:, :, h.head] = 0
            return z
        return (f"blocks.{h.layer}.attn.hook_z", fn)
    return [make(h) for h in heads]


@pytest.mark.parametrize("which, kind", [("planted", "mean"), ("planted", "zero"), ("gqa", "mean"),
                                         ("gpt2", "zero")])
def test_ablation_increase_equals_raw_hooks(which, kind, request, store):
    model = request.getfixturevalue(which)
    ps = T.repeated_tokens(model, n=6, length=8, seed=2)
    heads = [Head(1, 2), Head(1, 0)]
    eff = HD.ablation_effect(model, ps, ["L1H2", "L1H0"], kind=kind, seed=0, activations=store)
    _, clean = raw_copy_losses(model, ps)
    hooks = mean_z_hooks(model, ps, heads) if kind == "mean" else zero_z_hooks(heads)
    _, ablated = raw_copy_losses(model, ps, hooks)
    np.testing.assert_allclose(eff.increase.array, ablated - clean, atol=1e-4, rtol=0)
    # the control: as many other heads of layer 1, seeded, and the excess is the paired difference
    assert len(eff.control_heads) == 2 and {h.layer for h in eff.control_heads} == {1}
    assert not set(eff.control_heads) & set(heads)
    ctrl = mean_z_hooks(model, ps, eff.control_heads) if kind == "mean" else zero_z_hooks(eff.control_heads)
    _, ablated_ctrl = raw_copy_losses(model, ps, ctrl)
    np.testing.assert_allclose(eff.control_increase.array, ablated_ctrl - clean, atol=1e-4, rtol=0)
    np.testing.assert_allclose(eff.excess.array, eff.increase.array - eff.control_increase.array, atol=1e-12)
    assert eff.control_heads == HD.ablation_effect(model, ps, heads, kind=kind, seed=0,
                                                   activations=store).control_heads
    assert "control" in eff.table()


def test_control_heads_are_taken_from_the_same_layers(planted):
    chosen, note = HD.control_heads(planted, [Head(1, 0), Head(1, 2), Head(1, 3)])
    assert chosen == (Head(1, 1),) and "1 of 3" in note            # only one other head in layer 1
    chosen, note = HD.control_heads(planted, [Head(0, 1), Head(1, 1)], seed=5)
    assert [h.layer for h in chosen] == [0, 1] and note == ""
    assert Head(0, 1) not in chosen and Head(1, 1) not in chosen


# ----------------------------------------------------------------------------- other architectures
@pytest.mark.parametrize("which", ["gqa", "gpt2"])
def test_detectors_run_on_gqa_and_gpt2(which, request, store):
    model = request.getfixturevalue(which)
    for detect in (HD.detect_induction, HD.detect_previous_token, HD.detect_duplicate_token):
        d = detect(model, n=8, length=10, activations=store)
        assert d.applicable and d.criterion and d.measurements
        assert all(v.shape == (model.cfg.n_layers, model.cfg.n_heads) for v in d.heatmaps.values())
        assert all(np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all() for v in d.heatmaps.values())


# ----------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize("name", ["induction", "induction_control"])
def test_shipped_checkpoints_are_what_the_script_records(name):
    folder = PLANTED / name
    training = json.loads((folder / "TRAINING.json").read_text())
    shipped = truth(name)
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert training["model_safetensors_sha256"] == sha == shipped["model_safetensors_sha256"]
    assert training["architecture"]["n_layers"] == {"induction": 2, "induction_control": 1}[name]
    fresh = _script().ground_truth(folder)                       # raw hooks, recomputed now
    assert fresh["induction_heads"] == shipped["induction_heads"]
    assert fresh["previous_token_heads"] == shipped["previous_token_heads"]
    for key in ("induction_score", "previous_token_score", "duplicate_token_score", "zero_ablation_loss_increase"):
        assert fresh[key] == pytest.approx(shipped[key], abs=1e-5), key
    assert fresh["loss_second_copy"] == pytest.approx(shipped["loss_second_copy"], abs=1e-5)
