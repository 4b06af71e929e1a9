"""One forward for many layers (issue #12): a layer scan over the same texts asks the store for
every layer's hook in one request, so a cold store runs the texts through the model once, and
the results are those of one probe per layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_circuits.errors import CircuitsError
from pytest_circuits.store import ActivationStore
from pytest_circuits.techniques import future as F
from pytest_circuits.techniques import probing as P

TEXTS = ["the cat sat on the mat", "the dog sat on the mat", "John gave Mary a ball",
         "Mary went to the store", "the king and the queen", "the war lasted 12 year",
         "the siege lasted 3 year", "the reign lasted 45 year", "the project lasted 7 year",
         "the journey lasted 20 year", "the dog and the cat", "Paris is the capital of France"]
HAS_DIGIT = [int(any(c.isdigit() for c in t)) for t in TEXTS]


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    """A tiny Llama of 4 layers (GQA), so a scan covers more than two layers."""
    from pytest_circuits.models import load_model
    from pytest_circuits.testing import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny4") / "ckpt", n_layers=4, n_heads=4,
                                n_kv_heads=2, seed=3)
    return load_model(str(path), cache_dir=tmp_path_factory.mktemp("tiny4-cache"), device="cpu")


def _same_probe(a: P.ProbeResult, b: P.ProbeResult) -> None:
    assert (a.layer, a.neurons, a.directions) == (b.layer, b.neurons, b.directions)
    assert a.scores == b.scores and np.array_equal(np.asarray(a.all_scores), np.asarray(b.all_scores))
    assert np.array_equal(np.asarray(a.coefficients), np.asarray(b.coefficients))
    assert a.f1.values == b.f1.values and (a.f1.lower, a.f1.upper) == (b.f1.lower, b.f1.upper)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_layer_scan_is_one_forward_and_equals_one_probe_per_layer(tiny4, pooling):
    layers = [3, 0, 2, 1]
    scan_store = ActivationStore()
    # one batch: one forward is one model call (the texts fit the token budget at any length up to 64)
    assert len(TEXTS) * 64 <= scan_store.budget(tiny4).tokens
    scan = P.scan_layers(tiny4, TEXTS, HAS_DIGIT, layers=layers, k=2, pooling=pooling,
                         activations=scan_store, resamples=100, record=False)
    assert scan_store.counters.forward_passes == 1
    # the same probes, one layer at a time on a cold store: one forward each
    each_store = ActivationStore()
    each = {l: P.probe(tiny4, TEXTS, HAS_DIGIT, layer=l, k=2, pooling=pooling, activations=each_store,
                       resamples=100, record=False) for l in layers}
    assert each_store.counters.forward_passes == len(layers)
    assert sorted(r.layer for r in scan) == sorted(layers)
    for r in scan:
        _same_probe(r, each[r.layer])
    # the features themselves are bitwise those of a per-layer forward
    for l in layers:
        a = P.collect(tiny4, TEXTS, HAS_DIGIT, layer=l, pooling=pooling, activations=scan_store)
        b = P.collect(tiny4, TEXTS, HAS_DIGIT, layer=l, pooling=pooling, activations=each_store)
        assert torch.equal(a.X, b.X)
    # still best first
    f1 = [r.f1.mean for r in scan]
    assert f1 == sorted(f1, reverse=True)


def test_layer_scan_errors_before_any_forward(tiny4):
    store = ActivationStore()
    with pytest.raises(CircuitsError, match="layer"):
        P.scan_layers(tiny4, TEXTS, HAS_DIGIT, layers=[0, 9], k=1, activations=store)
    with pytest.raises(CircuitsError, match="method='lasso' is not valid"):
        P.scan_layers(tiny4, TEXTS, HAS_DIGIT, layers=[0, 1], k=1, method="lasso", activations=store)
    with pytest.raises(CircuitsError, match="pooling"):
        P.scan_layers(tiny4, TEXTS, HAS_DIGIT, layers=[0, 1], k=1, pooling="median", activations=store)
    assert store.counters.forward_passes == 0
    assert P.scan_layers(tiny4, TEXTS, HAS_DIGIT, layers=[], k=1, activations=store) == []
    # one layer named twice: one probe each time, one forward
    twice = P.scan_layers(tiny4, TEXTS, HAS_DIGIT, layers=[1, 1], k=1, activations=store, resamples=100,
                          record=False)
    assert [r.layer for r in twice] == [1, 1] and store.counters.forward_passes == 1


def test_future_token_probes_share_one_forward(tiny4):
    texts = TEXTS * 2    # 24 texts: 5 folds of at least 2 texts each
    layers = [0, 3, 1]
    store = ActivationStore()
    many = F.future_token_probes(tiny4, texts, layers=layers, tau=2, n_classes=8, activations=store, record=False)
    assert store.counters.forward_passes == 1
    other = ActivationStore()
    for layer, got in zip(layers, many):
        want = F.future_token_probe(tiny4, texts, layer=layer, tau=2, n_classes=8, activations=other, record=False)
        assert got.layer == layer
        assert got.accuracy.values == want.accuracy.values and got.margin.values == want.margin.values
        assert (got.baseline_kind, got.n_test_positions, got.coverage) == (want.baseline_kind,
                                                                           want.n_test_positions, want.coverage)
        a = F.collect(tiny4, texts, layer=layer, tau=2, activations=store)
        b = F.collect(tiny4, texts, layer=layer, tau=2, activations=other)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert other.counters.forward_passes == len(layers)
    # the features are the residual stream at the right rows, read independently of collect
    from pytest_circuits import hooks as H
    from pytest_circuits.prompts import PromptSet

    ps = PromptSet.build(tiny4, texts)
    resid = store.get(tiny4, ps, [H.resid_post(3)])[H.resid_post(3)]
    X, cur, fut, grp = F.collect(tiny4, texts, layer=3, tau=2, activations=store)
    rows = [(i, t) for i, n in enumerate(ps.lengths) for t in range(1, n - 2)]
    assert torch.equal(X, torch.stack([resid[i, t] for i, t in rows]).double())
    assert fut.tolist() == [int(ps.tokens[i, t + 2]) for i, t in rows]


def test_future_token_probes_bad_input(tiny4):
    with pytest.raises(CircuitsError, match="layers"):
        F.future_token_probes(tiny4, TEXTS, layers=[])
    with pytest.raises(CircuitsError, match=r"layer=4 is not valid: 0\.\.3"):
        F.future_token_probes(tiny4, TEXTS, layers=[0, 4])
    with pytest.raises(CircuitsError, match="tau"):
        F.future_token_probes(tiny4, TEXTS, layers=[0], tau=0)
    with pytest.raises(CircuitsError, match="no text is longer"):
        F.future_token_probes(tiny4, ["the cat"], layers=[0], tau=5)
