"""Derived results (probe fits) cached like activations: keyed on every input's bytes and the
parameters, checked on reading, recomputed when anything they depend on changes."""

from __future__ import annotations

import pytest
import torch

from pytest_circuits import ActivationStore, CircuitsError
from pytest_circuits.errors import CacheWarning
from pytest_circuits.techniques import future as F


def _calls():
    n = {"calls": 0}

    def compute(x, scale=2.0):
        def run():
            n["calls"] += 1
            return {"y": x * scale, "s": x.sum().reshape(1)}
        return run
    return n, compute


def test_a_result_is_computed_once_then_read_from_memory_and_disk(tmp_path):
    n, compute = _calls()
    x = torch.arange(6, dtype=torch.float64)
    a = ActivationStore(cache_dir=tmp_path)
    first = a.derived("t", [x], {"scale": 2}, ("y", "s"), compute(x))
    again = a.derived("t", [x], {"scale": 2}, ("y", "s"), compute(x))
    fresh = ActivationStore(cache_dir=tmp_path).derived("t", [x], {"scale": 2}, ("y", "s"), compute(x))
    assert n["calls"] == 1
    for got in (again, fresh):
        assert torch.equal(got["y"], first["y"]) and torch.equal(got["s"], first["s"])
    assert a.counters.results_computed == 1 and a.counters.results_reused == 1


@pytest.mark.parametrize("change", ["bytes", "dtype", "shape", "params", "what"])
def test_anything_the_result_depends_on_changes_its_key(tmp_path, change):
    n, compute = _calls()
    x = torch.arange(6, dtype=torch.float64)
    store = ActivationStore(cache_dir=tmp_path)
    store.derived("t", [x], {"scale": 2}, ("y", "s"), compute(x))
    y, what, params = x, "t", {"scale": 2}
    if change == "bytes":
        y = x.clone()
        y[3] += 1e-12
    elif change == "dtype":
        y = x.float()
    elif change == "shape":
        y = x.reshape(2, 3)
    elif change == "params":
        params = {"scale": 3}
    else:
        what = "u"
    store.derived(what, [y], params, ("y", "s"), compute(y))
    assert n["calls"] == 2


def test_a_corrupted_entry_is_recomputed_with_a_warning(tmp_path):
    n, compute = _calls()
    x = torch.arange(6, dtype=torch.float64)
    want = ActivationStore(cache_dir=tmp_path).derived("t", [x], {}, ("y", "s"), compute(x))
    entries = [p for p in tmp_path.rglob("*.safetensors")]
    assert len(entries) == 2
    for p in entries:
        data = bytearray(p.read_bytes())
        data[-3] ^= 0xFF
        p.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="checksum"):
        got = ActivationStore(cache_dir=tmp_path).derived("t", [x], {}, ("y", "s"), compute(x))
    assert n["calls"] == 2 and torch.equal(got["y"], want["y"])


def test_a_computation_that_returns_other_outputs_is_an_error():
    with pytest.raises(CircuitsError, match="expected"):
        ActivationStore().derived("t", [torch.ones(2)], {}, ("y",), lambda: {"z": torch.ones(1)})


def test_a_future_token_probe_fit_is_reused_and_equal(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = 240
    X = torch.randn(rows, 8, generator=g, dtype=torch.float64)
    fut = torch.randint(0, 4, (rows,), generator=g)
    X[:, 0] += fut.double()                        # a decodable future token
    cur = torch.randint(0, 4, (rows,), generator=g)
    grp = torch.arange(rows) // 6                   # 40 texts
    cold = ActivationStore(cache_dir=tmp_path)
    a = F.fit(X, cur, fut, grp, n_classes=4, folds=4, activations=cold, record=False)
    warm = ActivationStore(cache_dir=tmp_path)
    b = F.fit(X, cur, fut, grp, n_classes=4, folds=4, activations=warm, record=False)
    assert cold.counters.results_computed == 4 and warm.counters.results_reused == 4
    assert warm.counters.results_computed == 0
    assert a.accuracy.mean == b.accuracy.mean and tuple(a.margin.values) == tuple(b.margin.values)
    assert (a.n_train_positions, a.n_test_positions, a.coverage) == (b.n_train_positions, b.n_test_positions, b.coverage)
    assert a.accuracy.mean > 0.5                     # the planted signal is found
