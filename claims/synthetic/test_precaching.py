"""Planning ahead (Wu, Morris & Levine 2024, arXiv:2404.00859) on a synthetic task.

Two small causal transformers trained on ``y_n = sum_{i=1..10} sin(10 x_{n-i})``,
``x_n ~ N(0, 1)`` (pytest_circuits.techniques.planning; trained by
scripts/train_planning.py into checkpoints/): one vanilla, one myopic (a later
position's loss sends no gradient into an earlier position's computation). These
claims use no language model (no ``model`` fixture); their baselines are filed under
the measurements' model labels (claims/baselines/planning-*.json). Measurements are
made on held-out sequences (seeds 12345 and, for the probes' training split, 777; the
models were trained on seed 1000003).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_circuits import Measurement
from pytest_circuits.techniques import planning as P

CKPT = Path(__file__).parent / "checkpoints"
N = 256          # held-out sequences (32 positions each)
SEED = 12345     # held-out evaluation seed


@pytest.fixture(scope="module")
def vanilla():
    return P.load(CKPT / "vanilla")


@pytest.fixture(scope="module")
def myopic():
    return P.load(CKPT / "myopic")


@pytest.mark.claim(source="arXiv:2404.00859",
                   finding="a vanilla 2-layer transformer learns the sum-of-past-sines task: its loss "
                           "is far below the trivial baseline (predicting 0)")
def test_vanilla_learns_the_task(vanilla):
    ratio = Measurement.from_ratio("planning.loss_over_trivial", P.eval_loss(vanilla, N, SEED),
                                   P.trivial_loss(N, SEED), model="planning-vanilla")
    # Measured 2026-11-26: 0.349 [0.321, 0.38] (loss 1.416 vs trivial 4.058), n=256.
    ratio.assert_below(0.5)


@pytest.mark.claim(source="arXiv:2404.00859",
                   finding="the myopic model cannot learn the task: its loss stays near the trivial baseline")
def test_myopic_stays_near_trivial(myopic):
    ratio = Measurement.from_ratio("planning.loss_over_trivial", P.eval_loss(myopic, N, SEED),
                                   P.trivial_loss(N, SEED), model="planning-myopic")
    # Measured 2026-11-26: 0.954 [0.926, 0.982] (loss 3.870 vs trivial 4.058), n=256.
    ratio.assert_above(0.85)


@pytest.mark.claim(source="arXiv:2404.00859",
                   finding="the vanilla model pre-caches: the myopia gap (myopic loss - vanilla loss) is large")
def test_myopia_gap_is_large(vanilla, myopic):
    gap = P.myopia_gap(vanilla, myopic, n_seqs=N, seed=SEED)
    # Measured 2026-11-26: 2.453 [2.194, 2.731], n=256.
    gap.assert_above(1.5)


@pytest.mark.claim(source="arXiv:2404.00859",
                   finding="sin(10 x_n) is linearly decodable from the residual after layer 1 at position n "
                           "in the vanilla model, although y_n does not depend on x_n (pre-caching)")
def test_feature_is_precomputed_in_vanilla(vanilla):
    r2 = P.probe_r2(vanilla, layer=0, n_test=N, test_seed=SEED)
    # Measured 2026-11-26: 0.481 [0.466, 0.495] (probe trained on 512 other sequences), n=256.
    r2.assert_above(0.35)


@pytest.mark.claim(source="arXiv:2404.00859",
                   finding="sin(10 x_n) is not linearly decodable after layer 1 in the myopic model")
def test_feature_is_not_precomputed_in_myopic(myopic):
    r2 = P.probe_r2(myopic, layer=0, n_test=N, test_seed=SEED)
    # Measured 2026-11-26: 0.0412 [0.0335, 0.0489], n=256.
    r2.assert_below(0.1)
