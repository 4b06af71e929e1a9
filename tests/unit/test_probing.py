"""Sparse probing (techniques/probing.py) on synthetic data and the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pytest_circuits.store import ActivationStore
from pytest_circuits.components import Neuron
from pytest_circuits.errors import CircuitsError, ComponentError
from pytest_circuits.measurement import Measurement
from pytest_circuits.tasks import probing_data
from pytest_circuits.techniques import probing as P

PLANTED = (17, 123, 250)


def planted_data(n: int = 200, d: int = 300, seed: int = 0, strengths=(1.2, 1.0, 0.9)):
    """Noise neurons of varied scale; three neurons shifted by the label (not the largest
    in raw scale, so selection must work on scaled values)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scale = rng.uniform(0.5, 3.0, size=d)
    X = rng.normal(size=(n, d)) * scale
    for j, s in zip(PLANTED, strengths):
        scale[j] = 0.3                      # small raw scale: raw mean difference would miss it
        X[:, j] = rng.normal(size=n) * 0.3 + s * 0.3 * (2 * y - 1)
    return X.astype(np.float32), y


@pytest.mark.parametrize("method", P.METHODS)
def test_each_method_recovers_the_planted_support(method):
    X, y = planted_data()
    r = P.probe_features(X, y, k=3, method=method, resamples=500)
    assert {n.index for n in r.neurons} == set(PLANTED), (method, r.neurons)
    assert all(isinstance(n, Neuron) and n.layer == 0 for n in r.neurons)
    assert r.directions == (1, 1, 1)
    assert r.f1.lower > 0.75, r.f1
    # k=1 localises the strongest planted neuron.
    assert P.probe_features(X, y, k=1, method=method, resamples=200).neuron == Neuron(0, PLANTED[0])


def test_selection_uses_train_rows_only():
    X, y = planted_data()
    r = P.probe_features(X, y, k=3, method="f_stat", resamples=200)
    tr = r.train_indices
    Z = (X[tr] - X[tr].mean(0)) / X[tr].std(0)
    expected = np.argsort(-P.scores(Z, y[tr], "f_stat"), kind="stable")[:3]
    assert [n.index for n in r.neurons] == expected.tolist()
    # Changing only held-out rows changes neither the support nor the fit.
    X2 = X.copy()
    X2[r.test_indices] = np.random.default_rng(5).normal(size=X2[r.test_indices].shape)
    for m in P.METHODS:
        a = P.probe_features(X, y, k=3, method=m, resamples=100)
        b = P.probe_features(X2, y, k=3, method=m, resamples=100)
        assert a.neurons == b.neurons and np.allclose(a.coefficients, b.coefficients), m


def test_mean_diff_agrees_with_transformer_lens():
    from transformer_lens.tools.analysis import fit_sparse_probe

    X, y = planted_data(seed=3)
    groups = np.arange(len(y)) // 2
    for k in (1, 4):
        # Unscaled: exactly TransformerLens's fit_sparse_probe.
        r = P.probe_features(X, y, k=k, scale=False, groups=groups, seed=2, resamples=100)
        tl = fit_sparse_probe(torch.tensor(X), torch.tensor(y), k=k, seed=2,
                              groups=torch.tensor(groups))
        assert [n.index for n in r.neurons] == tl.selected_features.tolist()
        assert r.f1.mean == pytest.approx(tl.metrics.f1, abs=1e-12)
        assert np.array_equal(r.test_indices, tl.test_indices.numpy())
        # Scaled (default): TL on the train-standardized matrix.
        r = P.probe_features(X, y, k=k, groups=groups, seed=2, resamples=100)
        tr = torch.as_tensor(r.train_indices)
        Xt = torch.tensor(X, dtype=torch.float64)
        Z = (Xt - Xt[tr].mean(0)) / Xt[tr].std(0, correction=0)
        tl = fit_sparse_probe(Z, torch.tensor(y), k=k, seed=2, groups=torch.tensor(groups))
        assert [n.index for n in r.neurons] == tl.selected_features.tolist()
        assert r.f1.mean == pytest.approx(tl.metrics.f1, abs=1e-12)


def test_groups_are_never_split():
    X, y = planted_data()
    groups = np.arange(len(y)) // 4
    r = P.probe_features(X, y, k=2, groups=groups, resamples=100)
    assert not set(groups[r.train_indices]) & set(groups[r.test_indices])


def test_shuffled_labels_stay_near_chance_and_random_neurons_lose():
    X, y = planted_data()
    r = P.probe_features(X, y, k=1, resamples=500)
    for m in ("mean_diff", "f_stat"):
        sh = P.shuffled_f1_features(X, y, k=1, method=m, n_repeats=8, resamples=500)
        # Chance F1 of a balanced classifier on ~balanced classes is about 0.5.
        assert 0.3 < sh.mean < 0.65, sh
        assert sh.upper < r.f1.lower, (sh, r.f1)
    rnd = P.random_f1_features(X, y, k=1, n_repeats=10, resamples=500)
    mg = P.margin(r, rnd)
    assert mg.provenance["paired"] is True
    assert mg.mean == pytest.approx(r.f1.mean - rnd.mean)
    assert mg.lower > 0.1, mg


def test_f1_interval_is_honest_for_a_perfect_probe():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    X = rng.normal(size=(80, 20)).astype(np.float32)
    X[:, 3] += 10 * y                                     # perfectly separable
    r = P.probe_features(X, y, k=1, resamples=2000)
    assert r.f1.mean == 1.0
    assert 0.8 < r.f1.lower < 0.99                        # not the bootstrap's degenerate [1, 1]
    assert r.f1.upper == 1.0
    assert isinstance(r.f1, Measurement) and r.f1.n == len(r.test_indices)
    json.dumps(r.f1.to_dict())                            # reports can serialise it


def test_unpaired_margin():
    X, y = planted_data()
    a = P.probe_features(X, y, k=3, seed=0, resamples=300)
    b = P.probe_features(X, y, k=3, seed=1, resamples=300)
    mg = P.margin(a, b)
    assert mg.provenance["paired"] is False
    assert mg.mean == pytest.approx(a.f1.mean - b.f1.mean)
    assert mg.lower < mg.mean < mg.upper or mg.lower == mg.upper


# ----------------------------------------------------------------------------- errors
def test_bad_input_errors():
    X, y = planted_data(n=40)
    with pytest.raises(CircuitsError, match="only one class"):
        P.probe_features(X, np.ones(40, dtype=int), k=1)
    with pytest.raises(CircuitsError, match="at least 2 examples"):
        P.probe_features(X, np.r_[np.zeros(39, int), 1], k=1)
    with pytest.raises(CircuitsError, match="k=301 is not valid: at most the number of neurons"):
        P.probe_features(X, y, k=301)
    with pytest.raises(CircuitsError, match="k=0"):
        P.probe_features(X, y, k=0)
    with pytest.raises(CircuitsError, match="method='lasso' is not valid"):
        P.probe_features(X, y, k=1, method="lasso")
    with pytest.raises(CircuitsError, match="0/1 or bool"):
        P.probe_features(X, np.arange(40) % 3, k=1)
    with pytest.raises(CircuitsError, match="one per example"):
        P.probe_features(X, y[:-2], k=1)
    with pytest.raises(CircuitsError, match="margin operand"):
        P.margin(Measurement.from_values("x", [1.0, 2.0]), Measurement.from_values("y", [1.0, 2.0]))


# ----------------------------------------------------------------------------- tiny model
TEXTS = ["the cat sat on the mat", "the dog sat on the mat", "John gave Mary a ball",
         "Mary went to the store", "the king and the queen", "the war lasted 12 year",
         "the siege lasted 3 year", "the reign lasted 45 year", "the project lasted 7 year",
         "the journey lasted 20 year", "the dog and the cat", "Paris is the capital of France"]
HAS_DIGIT = [int(any(c.isdigit() for c in t)) for t in TEXTS]


def test_probe_on_the_tiny_model(tiny):
    store = ActivationStore()
    r = P.probe(tiny, TEXTS, HAS_DIGIT, layer=1, k=2, activations=store, resamples=200)
    assert len(r.neurons) == 2 and all(n.layer == 1 for n in r.neurons)
    assert 0 <= r.f1.mean <= 1 and r.f1.n == len(r.test_indices)
    feats = P.collect(tiny, TEXTS, HAS_DIGIT, layer=1, activations=store)
    assert feats.X.shape == (len(TEXTS), tiny.cfg.d_mlp)
    # Mean pooling leaves out BOS and padding: compare one text with its own forward.
    from pytest_circuits import hooks as H
    from pytest_circuits.prompts import PromptSet

    ps = PromptSet.build(tiny, [TEXTS[4]])
    a = store(tiny, ps, [H.mlp_post(1)])[H.mlp_post(1)][0, 1:ps.lengths[0]]
    torch.testing.assert_close(feats.X[4], a.mean(0), rtol=1e-5, atol=1e-6)
    for pooling in ("last", "max"):
        f = P.collect(tiny, TEXTS, HAS_DIGIT, layer=0, pooling=pooling, activations=store)
        assert f.X.shape == (len(TEXTS), tiny.cfg.d_mlp)
    sw = P.sweep(tiny, TEXTS, HAS_DIGIT, layer=1, ks=[1, 2, 4], activations=store, resamples=100)
    assert [x.k for x in sw] == [1, 2, 4]
    assert sw[1].neurons[:1] == sw[0].neurons       # nested supports
    sh = P.shuffled_labels_f1(tiny, TEXTS, HAS_DIGIT, layer=1, k=1, n_repeats=3, activations=store,
                              resamples=100)
    rnd = P.random_neurons_f1(tiny, TEXTS, HAS_DIGIT, layer=1, k=1, n_repeats=3, activations=store,
                              resamples=100)
    assert sh.model == rnd.model == r.f1.model and P.margin(r, rnd).provenance["paired"]


def test_token_pooling_keeps_texts_whole(tiny):
    store = ActivationStore()
    labels = probing_data.digit_token_labels(tiny, TEXTS)
    assert all(row[0] is None for row in labels)                       # BOS left out
    assert sum(v == 1 for row in labels for v in row) == 8              # 12, 3, 45, 7, 20: one token per digit
    r = P.probe(tiny, TEXTS, labels, layer=0, k=1, pooling="token", activations=store, resamples=100)
    feats = P.collect(tiny, TEXTS, labels, layer=0, pooling="token", activations=store)
    tr = set(feats.text_index[r.train_indices])
    te = set(feats.text_index[r.test_indices])
    assert not tr & te
    with pytest.raises(CircuitsError, match="per-token labels"):
        P.collect(tiny, TEXTS, HAS_DIGIT, layer=0, pooling="token", activations=store)


def test_model_input_errors(tiny):
    store = ActivationStore()
    with pytest.raises(ComponentError, match=r"layer must be in 0\.\.1"):
        P.probe(tiny, TEXTS, HAS_DIGIT, layer=2, k=1, activations=store)
    with pytest.raises(CircuitsError, match="at most the number of neurons d_mlp=128"):
        P.probe(tiny, TEXTS, HAS_DIGIT, layer=0, k=129, activations=store)
    with pytest.raises(CircuitsError, match="only one class"):
        P.probe(tiny, TEXTS, [1] * len(TEXTS), layer=0, k=1, activations=store)
    with pytest.raises(CircuitsError, match="method="):
        P.probe(tiny, TEXTS, HAS_DIGIT, layer=0, k=1, method="anova", activations=store)
    with pytest.raises(CircuitsError, match="pooling="):
        P.probe(tiny, TEXTS, HAS_DIGIT, layer=0, k=1, pooling="sum", activations=store)
    with pytest.raises(CircuitsError, match="one per text"):
        P.probe(tiny, TEXTS, HAS_DIGIT[:-1], layer=0, k=1, activations=store)


# ----------------------------------------------------------------------------- datasets
def test_shipped_datasets():
    lang = probing_data.language()
    assert len(lang) == 288 and set(lang.classes) == {"en", "fr", "de", "es"}
    assert all(lang.labels.count(c) == 72 for c in lang.classes)
    fr = lang.binary("fr")
    assert sum(fr.labels) == 72 and len(fr) == 288 and len(set(fr.groups)) == 72
    fr_de = lang.binary("fr", "de")
    assert len(fr_de) == 144 and fr_de.negative == "de"
    cp = probing_data.code_prose()
    assert len(cp) == 160 and cp.labels.count("code") == 80
    assert set(cp.meta["kind"]) == {"python", "javascript", "prose", "prose_about_code"}
    assert len(cp.where(kind=("python", "prose"))) == 80
    dw = probing_data.digits_words()
    assert len(dw) == 124 and len(set(dw.groups)) == 62
    assert len(set(lang.texts)) == len(lang) and len(set(cp.texts)) == len(cp)


def test_user_jsonl(tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text('{"text": "a b", "label": "x"}\n\n{"text": "c d", "label": "y", "group": 5, "src": 1}\n')
    d = probing_data.load(p)
    assert d.texts == ("a b", "c d") and d.groups == (6, 5) and d.meta["src"] == (None, 1)
    with pytest.raises(CircuitsError, match="missing keys"):
        (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n')
        probing_data.load(tmp_path / "bad.jsonl")
    with pytest.raises(CircuitsError, match="positive="):
        d.binary("z")
    with pytest.raises(CircuitsError, match="dataset="):
        probing_data.load(dataset="nope")


# ----------------------------------------------------------------------------- input-identity controls
# Issue #10: on the *untrained* tiny model a k=1 probe "beats random neurons" on the French task
# (margin 0.19 [0.08, 0.29]): the classes use different words, and the best of d_mlp random
# functions of the tokens beats a random one. The controls for input identity must absorb that.
FR = probing_data.language().binary("fr")


@pytest.mark.filterwarnings("ignore::UserWarning")   # French words are unknown to the tiny vocabulary
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_untrained_model_does_not_beat_the_shuffled_weights_control(tmp_path_factory, tiny, seed):
    from pytest_circuits.models import load_model
    from pytest_circuits.testing import make_tiny_checkpoint

    model = tiny if seed == 0 else load_model(
        str(make_tiny_checkpoint(tmp_path_factory.mktemp(f"untrained{seed}") / "ckpt", seed=seed)),
        cache_dir=tmp_path_factory.mktemp(f"untrained{seed}-cache"), device="cpu")
    store = ActivationStore()
    r = P.probe(model, FR, layer=1, k=1, activations=store, resamples=1000)
    rnd = P.random_neurons_f1(model, FR, layer=1, k=1, n_repeats=20, activations=store, resamples=1000)
    rw = P.random_weights_control(model, FR, layer=1, k=1, n_models=5, activations=store, resamples=1000)
    beats_random, vs_rw = P.margin(r, rnd), P.margin(r, rw)
    print(r.f1, rnd, rw, beats_random, vs_rw)
    assert beats_random.lower > 0            # the apparent finding (seed 0: 0.186 [0.081, 0.297])
    assert vs_rw.provenance["paired"] and vs_rw.lower <= 0   # ... is not a win over the control
    assert rw.provenance["n_models"] == 5 and rw.provenance["control"].startswith("input identity")
    if seed == 0:
        # At equal k the embedding-dimension control also absorbs it here (0.079 [-0.009, 0.173]);
        # it is the weaker control: on some other untrained draws the neuron beats it.
        emb = P.embedding_control(model, FR, k=1, activations=store, resamples=1000)
        assert P.margin(r, emb).lower <= 0


ORDER_FILL = ("the a of to in is was and from year war king queen mat when then John Mary gave went "
              "store bag ball said").split()


def order_texts(n: int = 120, seed: int = 0) -> tuple[list[str], list[int]]:
    """Texts holding 'cat' and 'dog' once each among filler words; label 1 when 'cat' comes
    first. Both classes have the same words: the label is context, not token identity."""
    import random

    rng = random.Random(seed)
    texts, ys = [], []
    for i in range(n):
        k = rng.randint(3, 7)
        words = [rng.choice(ORDER_FILL) for _ in range(k)]
        i1, i2 = sorted(rng.sample(range(k + 2), 2))
        first, second = ("cat", "dog") if i % 2 == 0 else ("dog", "cat")
        words.insert(i1, first)
        words.insert(i2, second)
        texts.append(" ".join(words))
        ys.append(int(first == "cat"))
    return texts, ys


def build_order_model(path):
    """A hand-set 2-layer Llama (pytest_circuits.planted's construction) where neuron L1N0
    fires at 'dog' only when 'cat' came earlier. Every token embeds as 8*C, plus a unit
    direction for 'cat' and for 'dog'; head L0H0 attends uniformly (zero Q, K) and writes
    the fraction of 'cat' in the prefix along CTX; L1N0's gate is open only on 'dog' and its
    up-projection reads CTX. Everything else is zero."""
    import math

    from transformers import LlamaConfig, LlamaForCausalLM

    from pytest_circuits import planted as PL

    vocab_list = PL.vocabulary()
    vocab = {w: i for i, w in enumerate(vocab_list)}
    cfg = LlamaConfig(vocab_size=len(vocab_list), hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                      rms_norm_eps=1e-6, bos_token_id=vocab["<bos>"], eos_token_id=vocab["<pad>"],
                      pad_token_id=vocab["<pad>"], tie_word_embeddings=False, attention_bias=False,
                      mlp_bias=False)
    model = LlamaForCausalLM(cfg)
    C, CAT, DOG, CTX = (PL.direction(k) for k in range(4))
    s0 = math.sqrt(32 / 65.0)            # RMSNorm multiplier of 8C + a unit token direction
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.zeros_like(p))
        E = (8.0 * C).expand(len(vocab_list), 32).clone()
        E[vocab["cat"]] += CAT
        E[vocab["dog"]] += DOG
        model.model.embed_tokens.weight.copy_(E)
        attn = model.model.layers[0].self_attn
        attn.v_proj.weight[0] = CAT / s0
        attn.o_proj.weight[:, 0] = CTX
        mlp = model.model.layers[1].mlp
        mlp.gate_proj.weight[0] = 20.0 * (DOG / s0 - 0.5 * C / (8.0 * s0))
        mlp.up_proj.weight[0] = CTX / s0
    PL._save(model, path, {"kind": "order", "neuron": "L1N0"})
    return path


@pytest.fixture(scope="module")
def order_model(tmp_path_factory):
    from pytest_circuits.models import load_model

    path = build_order_model(tmp_path_factory.mktemp("order") / "ckpt")
    return load_model(str(path), cache_dir=tmp_path_factory.mktemp("order-cache"), device="cpu")


def test_a_context_feature_beats_the_input_identity_controls(order_model):
    texts, ys = order_texts()
    store = ActivationStore()
    feats = P.collect(order_model, texts, ys, layer=1, activations=store)
    x, y = feats.X[:, 0].numpy(), np.asarray(ys)
    assert x[y == 1].min() > 0.05 and abs(x[y == 0]).max() < 1e-3       # the planted neuron, by hand
    r = P.probe(order_model, texts, ys, layer=1, k=1, activations=store, resamples=1000)
    emb = P.embedding_control(order_model, texts, ys, k=1, activations=store, resamples=1000)
    rw = P.random_weights_control(order_model, texts, ys, layer=1, k=1, n_models=3, activations=store,
                                  resamples=1000)
    print(r.f1, emb, rw)
    assert r.neuron == Neuron(1, 0) and r.f1.lower > 0.85               # measured 1 [0.902, 1], n=36
    assert emb.upper < 0.8                                                # same words: 0.462 [0.275, 0.64]
    assert P.margin(r, emb).lower > 0.2                                   # 0.538 [0.343, 0.699]
    assert P.margin(r, rw).lower > 0.1                                    # 0.333 [0.195, 0.462]
    # resid_pre 0 is the embedding here (no learned positions): the same control.
    emb0 = P.embedding_control(order_model, texts, ys, k=1, site="resid_pre0", activations=store,
                               resamples=1000, name="resid_pre0 control")
    assert emb0.mean == emb.mean and emb0.provenance["site"] == "resid_pre0"


def test_shuffled_weights_copy(tiny):
    from pytest_circuits import hooks as H
    from pytest_circuits.errors import ModelUnavailable
    from pytest_circuits.models import info
    from pytest_circuits.prompts import PromptSet

    ps = PromptSet.build(tiny, TEXTS[:3])
    before = [p.detach().clone() for p in tiny.parameters()]
    toks = ps.tokens.to(tiny.cfg.device)
    logits = tiny(toks).detach().clone()
    dup = P.shuffled_weights_copy(tiny, seed=3)
    assert all(torch.equal(a, p) for a, p in zip(before, tiny.parameters()))       # the model is untouched
    assert torch.equal(tiny(toks), logits)
    changed = 0
    for a, p in zip(before, dup.parameters()):
        assert torch.equal(a.flatten().sort().values, p.detach().flatten().sort().values)  # a permutation
        changed += int(not torch.equal(a, p.detach()))
    assert changed > len(before) // 2
    on = "" if tiny.cfg.device is None or torch.device(tiny.cfg.device).type == "cpu" else ":" + torch.device(tiny.cfg.device).type
    assert info(dup).fingerprint == info(tiny).fingerprint + "+shuffled-weights:3" + on    # a GPU draws its own
    store = ActivationStore()
    a = store(tiny, ps, [H.mlp_post(1)])[H.mlp_post(1)]
    b = store(dup, ps, [H.mlp_post(1)])[H.mlp_post(1)]
    assert not torch.equal(a, b)                                                   # not served from the cache
    with pytest.raises(CircuitsError, match="seed="):
        P.shuffled_weights_copy(tiny, seed="x")
    with pytest.raises(ModelUnavailable):
        P.shuffled_weights_copy(torch.nn.Linear(2, 2))


def test_control_input_errors(tiny):
    store = ActivationStore()
    with pytest.raises(CircuitsError, match="site='resid_mid0' is not valid"):
        P.embedding_control(tiny, TEXTS, HAS_DIGIT, k=1, site="resid_mid0", activations=store)
    with pytest.raises(CircuitsError, match="at most the embedding width d_model=64"):
        P.embedding_control(tiny, TEXTS, HAS_DIGIT, k=65, activations=store)
    with pytest.raises(CircuitsError, match="n_repeats=0"):
        P.random_weights_control(tiny, TEXTS, HAS_DIGIT, layer=1, k=1, n_models=0, activations=store)
    with pytest.raises(ComponentError, match=r"layer must be in 0\.\.1"):
        P.random_weights_control(tiny, TEXTS, HAS_DIGIT, layer=5, k=1, activations=store)


def test_non_finite_features_are_refused():
    from pytest_circuits.errors import MeasurementError

    X, y = planted_data(n=40)
    X[3, 7] = np.nan
    with pytest.raises(MeasurementError, match=r"non-finite values in rows \[3\]"):
        P.probe_features(X, y, k=1)
    with pytest.raises(MeasurementError, match="non-finite"):
        P.random_f1_features(X, y, k=1)
    with pytest.raises(MeasurementError, match="non-finite"):
        P.scores(X, y, "f_stat")


def test_margin_reads_typed_results_and_their_text_form():
    import dataclasses

    X, y = planted_data()
    r = P.probe_features(X, y, k=1, resamples=300)
    rnd = P.random_f1_features(X, y, k=1, n_repeats=5, resamples=300)
    assert isinstance(r.f1, P.F1Measurement) and len(r.f1.predictions) == 1 and len(rnd.predictions) == 5
    assert "".join(map(str, r.f1.y_test)) == r.f1.provenance["y_test"]
    typed = P.margin(r, rnd)
    # A plain Measurement with the same provenance (as rebuilt from a report) gives the same margin.
    plain = Measurement(**{f.name: getattr(rnd, f.name) for f in dataclasses.fields(Measurement)})
    assert not isinstance(plain, P.F1Measurement)
    again = P.margin(r, plain)
    assert (again.mean, again.lower, again.upper) == (typed.mean, typed.lower, typed.upper)
    broken = dataclasses.replace(plain, provenance={**plain.provenance, "y_test": "01x"})
    with pytest.raises(CircuitsError, match="margin operand"):
        P.margin(r, broken)


def test_a_zero_width_f1_interval_is_flagged():
    """A margin of 0 on every resample (the probe and its control agree everywhere) is not
    "no uncertainty": the interval says it is zero-width."""
    from pytest_circuits.techniques.probing import _build

    m = _build("margin", np.zeros(5), 0.0, 0.0, 0.95, "toy", {}, record=False)
    assert m.flags and "zero-width" in m.flags[0] and "zero-width" in repr(m)
    assert not _build("f1", np.ones(5), 0.8, 1.0, 0.95, "toy", {}, record=False).flags


def test_the_shuffled_weights_control_builds_no_copy_when_its_activations_are_cached(tiny, tmp_path, monkeypatch):
    """A warm run reads the copies' activations by their fingerprint: building the copies
    (a permutation of every weight) is skipped, and the control's numbers are the same."""
    made = []
    real = P.shuffled_weights_copy

    def counting(model, *, seed=0):
        made.append(seed)
        return real(model, seed=seed)

    monkeypatch.setattr(P, "shuffled_weights_copy", counting)
    cold = P.random_weights_control(tiny, TEXTS, HAS_DIGIT, layer=1, k=1, n_models=2,
                                    activations=ActivationStore(cache_dir=tmp_path), resamples=200)
    assert len(made) == 2
    warm = P.random_weights_control(tiny, TEXTS, HAS_DIGIT, layer=1, k=1, n_models=2,
                                    activations=ActivationStore(cache_dir=tmp_path), resamples=200)
    assert len(made) == 2                                   # no copy built the second time
    assert (warm.mean, warm.lower, warm.upper) == (cold.mean, cold.lower, cold.upper)
    # an eager copy gives the same activations as the deferred one it stands for
    from pytest_circuits import hooks as H
    from pytest_circuits.prompts import PromptSet

    ps = PromptSet.build(tiny, TEXTS[:3])
    deferred = P._DeferredCopy(tiny, 5)
    a = ActivationStore()(deferred, ps, [H.mlp_post(1)])[H.mlp_post(1)]
    b = ActivationStore()(real(tiny, seed=5), ps, [H.mlp_post(1)])[H.mlp_post(1)]
    assert torch.equal(a, b)
