"""The shuffled-weights copy (issue #25, item 4): drawn on the model's device, built once per
process per (fingerprint, seed), and on the CPU bit for bit the copy of earlier versions (so
its fingerprint, and every baseline measured on it, stay as they were)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pytest_circuits.models import info
from pytest_circuits.techniques import probing as P


def _reference_copy(model, seed):
    """The copy as it was built before: one CPU generator, a randperm per parameter in order."""
    dup = copy.deepcopy(model)
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), 5]).generate_state(1)[0]))
    with torch.no_grad():
        for p in dup.parameters():
            flat = p.data.reshape(-1).cpu()
            p.data.copy_(flat[torch.randperm(flat.numel(), generator=g)].reshape(p.shape))
    return dup


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.setattr(P, "_SHUFFLED", type(P._SHUFFLED)())


def test_on_the_cpu_the_copy_is_the_earlier_one_bit_for_bit(tiny_dir, tmp_path):
    from pytest_circuits.models import load_model

    model = load_model(str(tiny_dir), cache_dir=tmp_path, device="cpu")
    for seed in (0, 3, 12345):
        got, want = P.shuffled_weights_copy(model, seed=seed), _reference_copy(model, seed)
        assert all(torch.equal(a, b) for a, b in zip(got.parameters(), want.parameters()))
        assert info(got).fingerprint == info(model).fingerprint + f"+shuffled-weights:{seed}"
        assert info(P._DeferredCopy(model, seed)).fingerprint == info(got).fingerprint


def test_built_once_per_process_per_fingerprint_and_seed(tiny, monkeypatch):
    calls = []
    real = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: calls.append(1) or real(*a, **k))
    a = P.shuffled_weights_copy(tiny, seed=4)
    built = len(calls)
    assert built == len(list(tiny.parameters()))          # one draw per parameter tensor
    assert P.shuffled_weights_copy(tiny, seed=4) is a and len(calls) == built
    b = P.shuffled_weights_copy(tiny, seed=5)
    assert b is not a and len(calls) == 2 * built
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    # the deferred copy the control uses finds it built
    assert P._DeferredCopy(tiny, 4)._copy() is a and len(calls) == 2 * built


def test_the_cache_is_bounded(tiny, monkeypatch):
    monkeypatch.setattr(P, "KEEP_SHUFFLED_COPIES", 2)
    first = P.shuffled_weights_copy(tiny, seed=1)
    P.shuffled_weights_copy(tiny, seed=2)
    P.shuffled_weights_copy(tiny, seed=3)
    assert len(P._SHUFFLED) == 2
    again = P.shuffled_weights_copy(tiny, seed=1)          # dropped, so built again: the same weights
    assert again is not first
    assert all(torch.equal(x, y) for x, y in zip(first.parameters(), again.parameters()))
    monkeypatch.setattr(P, "KEEP_SHUFFLED_BYTES", 1)
    P.shuffled_weights_copy(tiny, seed=9)
    assert len(P._SHUFFLED) == 1                            # the newest is always kept


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the copy drawn by a CUDA generator")
def test_on_cuda_the_copy_is_drawn_there_and_named_for_it(tiny_dir, tmp_path, monkeypatch):
    from pytest_circuits.models import load_model

    model = load_model(str(tiny_dir), cache_dir=tmp_path, device="cuda")
    moved = []
    real = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a, **k: moved.append(t.numel()) or real(t, *a, **k))
    dup = P.shuffled_weights_copy(model, seed=3)
    monkeypatch.undo()
    assert not moved                                        # nothing went through the CPU
    assert info(dup).fingerprint == info(model).fingerprint + "+shuffled-weights:3:cuda"
    for a, p in zip(model.parameters(), dup.parameters()):
        assert p.device == a.device
        assert torch.equal(a.flatten().sort().values, p.flatten().sort().values)
