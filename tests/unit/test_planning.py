"""The planning-ahead technique (pytest_circuits.techniques.planning): myopic gradients,
the synthetic dataset, deterministic training, and the shipped checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pytest_circuits import CircuitsError
from pytest_circuits.techniques import planning as P

CKPT = Path(__file__).resolve().parents[2] / "claims" / "synthetic" / "checkpoints"
SMALL = P.Config(d_model=32, n_layers=2, n_heads=4, d_mlp=64, seq_len=16)


def _pair(seed: int = 0) -> tuple[P.PlanningTransformer, P.PlanningTransformer]:
    """A vanilla and a myopic model with the same (random) weights."""
    torch.manual_seed(seed)
    van = P.PlanningTransformer(SMALL)
    my = P.PlanningTransformer(P.Config(**{**SMALL.__dict__, "myopic": True}))
    my.load_state_dict(van.state_dict())
    return van, my


# ----------------------------------------------------------------------------- (a) myopic gradients
def test_myopic_forward_equals_vanilla_forward():
    # The detach rule changes gradients only: same weights give the same outputs.
    van, my = _pair()
    x, _ = P.make_batch(4, SMALL.seq_len, 0)
    torch.testing.assert_close(my(x), van(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("at", [0, 1])
def test_later_loss_sends_no_gradient_to_earlier_positions_in_myopic_model(at):
    # With myopic attention every path from position s to position t > s goes through a
    # key/value at j = s < t, computed from the detached hidden state: d loss_t / d h_s = 0
    # exactly, for the residual entering either block. The vanilla model with the *same
    # weights* has non-zero gradient there, so the zero is the detach rule, not the weights.
    van, my = _pair()
    x, _ = P.make_batch(3, SMALL.seq_len, 1)
    t = SMALL.seq_len - 1
    g_my = P.gradient_to_past(my, x, t=t, at=at)
    g_van = P.gradient_to_past(van, x, t=t, at=at)
    assert torch.count_nonzero(g_my[:, :t]) == 0                      # exactly zero, every earlier position
    assert g_my[:, t].abs().sum() > 0                                  # its own position still gets gradient
    assert (g_van[:, :t].abs().sum(-1) > 0).all()                       # vanilla: every earlier position
    torch.testing.assert_close(g_my[:, t], g_van[:, t], rtol=1e-4, atol=1e-7)   # j = i is live in both
    assert (g_my[:, t + 1:] == 0).all() and (g_van[:, t + 1:] == 0).all()       # causal


def test_myopic_input_gradient_is_zero_end_to_end():
    # The same through plain autograd on the scalar inputs x (not via gradient_to_past).
    van, my = _pair(1)
    x, y = P.make_batch(2, SMALL.seq_len, 2)
    for model, zero in ((my, True), (van, False)):
        xi = x.clone().requires_grad_(True)
        ((model(xi)[:, 9] - y[:, 9]) ** 2).sum().backward()
        assert (xi.grad[:, :9] == 0).all() == zero
        assert (xi.grad[:, 9] != 0).all()


def test_myopic_parameter_gradient_differs():
    # Training signal differs: the parameter gradients of the same loss are not equal.
    van, my = _pair(2)
    x, y = P.make_batch(4, SMALL.seq_len, 3)
    grads = []
    for model in (van, my):
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        grads.append(model.blocks[0].mlp[0].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_gradient_to_past_checks_its_arguments():
    van, _ = _pair()
    x, _ = P.make_batch(1, SMALL.seq_len, 0)
    with pytest.raises(CircuitsError, match="t="):
        P.gradient_to_past(van, x, t=SMALL.seq_len)
    with pytest.raises(CircuitsError, match="at="):
        P.gradient_to_past(van, x, at=2)


# ----------------------------------------------------------------------------- (b) dataset
def test_target_matches_hand_computation():
    x, y = P.make_batch(3, 14, 5)
    for b in range(3):
        for n in range(14):
            want = sum(math.sin(10.0 * float(x[b, n - i])) for i in range(1, 11) if n - i >= 0)
            assert float(y[b, n]) == pytest.approx(want, abs=1e-5), (b, n)
    assert (y[:, 0] == 0).all()                          # no past inputs at position 0
    assert torch.equal(P.make_batch(3, 14, 5)[0], x)     # seeded
    assert not torch.equal(P.make_batch(3, 14, 6)[0], x)


# ----------------------------------------------------------------------------- (c) determinism
def test_short_training_is_deterministic():
    threads = torch.get_num_threads()
    a = P.train(True, seed=3, steps=4, batch=8, cfg=SMALL)
    b = P.train(True, seed=3, steps=4, batch=8, cfg=SMALL)
    c = P.train(True, seed=4, steps=4, batch=8, cfg=SMALL)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_save_load_roundtrip(tmp_path):
    _, my = _pair()
    P.save(my, tmp_path / "m")
    back = P.load(tmp_path / "m")
    assert back.myopic and back.cfg == my.cfg
    x, _ = P.make_batch(2, SMALL.seq_len, 0)
    assert torch.equal(back(x), my(x))
    with pytest.raises(CircuitsError, match="config.json"):
        P.load(tmp_path / "missing")


# ----------------------------------------------------------------------------- (d) shipped checkpoints
@pytest.fixture(scope="module")
def shipped():
    return P.load(CKPT / "vanilla"), P.load(CKPT / "myopic")


def test_shipped_checkpoints_are_small_safetensors():
    for name in ("vanilla", "myopic"):
        assert (CKPT / name / "model.safetensors").stat().st_size <= 1_000_000
        assert not list((CKPT / name).glob("*.bin")) and not list((CKPT / name).glob("*.pt"))


def test_shipped_vanilla_learns_and_myopic_does_not(shipped):
    van, my = shipped
    assert not van.myopic and my.myopic
    base = P.trivial_loss(64, seed=4242).mean().item()
    lv = P.eval_loss(van, 64, seed=4242).mean().item()
    lm = P.eval_loss(my, 64, seed=4242).mean().item()
    assert lv < 0.5 * base, (lv, base)
    assert lm > 0.9 * base, (lm, base)
