"""Erasure measures (techniques/erasure.py): projection ratios as ratios of sums with their
cosine, the scan's cosine filter, the value-input check against independent computations,
the planted erasure model and its control, and bad or non-finite input."""

from pathlib import Path

import numpy as np
import pytest
import torch

import pytest_circuits
from pytest_circuits import ActivationStore, CircuitsError, ComponentError, Measurement, PromptSet, planted
from pytest_circuits import hooks as H
from pytest_circuits.components import Embed, Head
from pytest_circuits.errors import MeasurementError
from pytest_circuits.techniques import effects as E
from pytest_circuits.techniques import erasure as ER

PLANTED = Path(__file__).resolve().parent.parent / "data" / "planted"


@pytest.fixture(scope="module")
def ps(tiny):
    return PromptSet.build(tiny, ["the cat sat on the", "the capital of France is", "when John and Mary went to the",
                                  "the king of Italy went to", "a dog sat on the mat in"],
                           answers=[" mat", " Paris", " store", " Rome", " France"], name="erasure")


@pytest.fixture
def store():
    return ActivationStore()


# -- hand-made dot products: aggregation and the cosine filter -------------------------
def _hand(vectors: np.ndarray, names=("embed", "L0H0", "L1H0", "L1H1")) -> ER.ProjectionRatios:
    """A ProjectionRatios from per-prompt output vectors ``[n, C, d]``."""
    v = torch.tensor(vectors, dtype=torch.float64)
    comps = tuple(pytest_circuits.components.parse(c) for c in names)
    return ER.ProjectionRatios("hand", comps, v @ v.transpose(1, 2), "hand", None)


def _small_writer_set(n: int = 40, seed: int = 0) -> np.ndarray:
    """embed writes big noise; L0H0 writes along e0 with a tiny norm on a fifth of the prompts;
    L1H0 erases it (o = -o_A plus an orthogonal part); L1H1 is large and nearly orthogonal
    to L0H0 (a small anti-aligned leak): a big |PR| at a negligible cosine."""
    rng = np.random.default_rng(seed)
    d = 16
    v = np.zeros((n, 4, d))
    v[:, 0] = rng.normal(size=(n, d)) * 5
    size = np.where(np.arange(n) % 5 == 0, 0.02, 1.0)
    v[:, 1, 0] = size
    v[:, 2, 0] = -size + rng.normal(size=n) * 0.1    # erasure, with per-prompt noise
    v[:, 2, 1] = rng.normal(size=n)
    v[:, 3, 0] = -0.3
    v[:, 3, 2:] = rng.normal(size=(n, d - 2)) * 4
    return v


def test_pr_is_a_ratio_of_sums_not_a_mean_of_ratios():
    v = _small_writer_set()
    prs = _hand(v)
    a, b = v[:, 1], v[:, 2]
    dots, nsq = (a * b).sum(-1), (a * a).sum(-1)
    expected = dots.sum() / nsq.sum()
    assert prs.ratio("L1H0", "L0H0") == pytest.approx(expected, rel=1e-12)
    m = prs.measure("L1H0", "L0H0")
    assert m.mean == pytest.approx(expected, rel=1e-12) and m.n == len(v)
    assert m.lower < m.mean < m.upper
    assert m.provenance["aggregation"].startswith("ratio of sums")
    assert m.provenance["mean_cosine"] == pytest.approx(prs.mean_cosine("L1H0", "L0H0"))
    # The per-prompt ratios stay available, and their mean is what the aggregate avoids:
    # the prompts where the writer barely writes carry noise/0.02 (about +-5).
    per_prompt = prs.pr("L1H0", "L0H0").numpy()
    np.testing.assert_allclose(per_prompt, dots / nsq, rtol=1e-12)
    assert abs(expected + 1) < 0.05 and abs(per_prompt.mean() - expected) > 5 * abs(expected + 1)


def test_summed_readers_and_cosine_of_the_sum():
    v = _small_writer_set()
    prs = _hand(v)
    a, s = v[:, 1], v[:, 2] + v[:, 3]
    assert prs.ratio(["L1H0", "L1H1"], "L0H0") == pytest.approx((a * s).sum() / (a * a).sum(), rel=1e-12)
    cos = (a * s).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(s, axis=-1)
    assert prs.mean_cosine(["L1H0", "L1H1"], "L0H0") == pytest.approx(cos.mean(), rel=1e-12)
    mc = prs.measure(["L1H0", "L1H1"], "L0H0", what="cosine")
    np.testing.assert_allclose(mc.array, cos, rtol=1e-12)
    with pytest.raises(ComponentError, match="distinct components"):
        prs.ratio(["L1H0", "L1H0"], "L0H0")
    with pytest.raises(CircuitsError, match="what='norm' is not valid"):
        prs.measure("L1H0", "L0H0", what="norm")


def test_scan_leaves_out_pairs_whose_cosine_is_negligible():
    v = _small_writer_set()
    prs = _hand(v)
    loud = prs.ratio("L1H1", "L0H0")
    assert loud < -0.3 and abs(prs.mean_cosine("L1H1", "L0H0")) < 0.1   # the trap: big PR, cos ~ 0
    rows = prs.scan(10)
    pairs = {(str(r.writer), str(r.reader)) for r in rows}
    assert ("L0H0", "L1H0") in pairs and ("L0H0", "L1H1") not in pairs
    for r in rows:
        w, rd, pr = r                                       # unpacks as before
        assert abs(r.cosine) >= ER.MIN_COSINE and pr == r.pr
        assert pr == pytest.approx(prs.ratio(rd, w)) and r.cosine == pytest.approx(prs.mean_cosine(rd, w))
    assert [r.pr for r in rows] == sorted(r.pr for r in rows)
    # Asked for explicitly (threshold 0), the pair is listed; the measure warns.
    assert ("L0H0", "L1H1") in {(str(r.writer), str(r.reader)) for r in prs.scan(10, min_cosine=0.0)}
    with pytest.warns(ER.NegligibleCosineWarning, match="mean cosine"):
        prs.measure("L1H1", "L0H0")
    assert "cos" in prs.table(3) and "PR" in repr(rows[0])


def test_scan_skips_small_and_silent_writers():
    v = _small_writer_set()
    v[:, 1] *= 1e-4                                       # L0H0 now under 1% of embed's norm
    prs = _hand(v)
    assert all(str(r.writer) != "L0H0" for r in prs.scan(20))
    assert any(str(r.writer) == "L0H0" for r in prs.scan(20, min_norm_fraction=0.0))
    v[:, 1] = 0.0                                         # a writer that writes nothing
    prs = _hand(v)
    assert all(str(r.writer) != "L0H0" for r in prs.scan(20, min_norm_fraction=0.0))
    with pytest.raises(MeasurementError, match="writes nothing"):
        prs.ratio("L1H0", "L0H0")
    with pytest.raises(MeasurementError, match="writes nothing"):
        prs.measure("L1H0", "L0H0")


@pytest.mark.parametrize("kw,match", [(dict(k=0), "k=0"), (dict(k=True), "k=True"),
                                      (dict(min_cosine=1.5), "min_cosine=1.5"),
                                      (dict(min_cosine=float("nan")), "min_cosine=nan"),
                                      (dict(min_norm_fraction=-1), "min_norm_fraction=-1")])
def test_scan_rejects_bad_settings(kw, match):
    with pytest.raises(CircuitsError, match=match):
        _hand(_small_writer_set()).scan(**kw)


# -- on the tiny model ----------------------------------------------------------------
def test_projection_ratio_is_a_dot_product(tiny, ps, store):
    prs = ER.projection_ratios(tiny, ps, activations=store)
    outs = E.outputs(tiny, ps, store=store)
    a, b = outs.vectors[outs.index(Head(0, 1))], outs.vectors[outs.index(Head(1, 2))]
    torch.testing.assert_close(prs.pr("L1H2", "L0H1"), (a * b).sum(-1) / (a * a).sum(-1))
    torch.testing.assert_close(prs.cosine("L1H2", "L0H1"), torch.nn.functional.cosine_similarity(a, b, dim=-1))
    assert prs.ratio("L1H2", "L0H1") == pytest.approx(float((a * b).sum() / (a * a).sum()), rel=1e-10)


def test_value_input_recomputation_reproduces_hook_z(tiny, ps, store):
    with pytest.warns(ER.NegligibleCosineWarning):       # random weights: nearly orthogonal outputs
        vc = ER.value_input_check(tiny, ps, "L0H1", ["L1H0", "L1H2"], activations=store)
    assert vc.reproduction_error < 1e-5
    # Its clean PR and cosine are those of the model's own outputs (effects.outputs, hook_z @ W_O).
    prs = ER.projection_ratios(tiny, ps, activations=store)
    assert vc.clean.mean == pytest.approx(prs.ratio(["L1H0", "L1H2"], "L0H1"), abs=1e-6)
    assert vc.cosine.mean == pytest.approx(prs.mean_cosine(["L1H0", "L1H2"], "L0H1"), abs=1e-6)
    # Ratios of sums on one denominator: the change is exactly the difference.
    assert vc.change.mean == pytest.approx(vc.without_writer.mean - vc.clean.mean, abs=1e-12)
    assert vc.clean.provenance["aggregation"].startswith("ratio of sums")
    assert "cos" in repr(vc)
    with pytest.raises(ComponentError, match="heads in layers after the writer"):
        ER.value_input_check(tiny, ps, "L1H1", ["L1H0"], activations=store)
    with pytest.raises(ComponentError, match="attention heads"):
        ER.value_input_check(tiny, ps, "L0H1", ["mlp1"], activations=store)
    with pytest.raises(ComponentError, match="distinct components"):
        ER.value_input_check(tiny, ps, "L0H1", ["L1H0", "L1H0"], activations=store)
    with pytest.raises(CircuitsError, match="min_cosine="):
        ER.value_input_check(tiny, ps, "L0H1", ["L1H0"], min_cosine=-0.1, activations=store)
    with pytest.raises(CircuitsError, match="tolerance="):
        ER.value_input_check(tiny, ps, "L0H1", ["L1H0"], tolerance=0, activations=store)


def test_value_check_built_from_two_measurements_keeps_the_paired_change(tiny, ps, store):
    vc = ER.value_input_check(tiny, ps, "mlp0", ["L1H3"], activations=store, min_cosine=0.0)
    # PRs are ratios of sums: a change differenced from their contributions would drop the
    # denominator's noise from its interval, so a ValueCheck of two ratios needs its change given
    with pytest.raises(MeasurementError, match="change"):
        ER.ValueCheck(vc.clean, vc.without_writer, vc.reproduction_error)
    assert vc.change.ratio and vc.change.mean == pytest.approx(vc.without_writer.mean - vc.clean.mean, abs=1e-9)
    plain = [Measurement.from_values(n, v) for n, v in (("a", [1.0, 2.0, 4.0]), ("b", [1.5, 2.0, 5.0]))]
    hand = ER.ValueCheck(plain[0], plain[1], 0.0)
    assert hand.change.values == (plain[1] - plain[0]).values
    assert hand.cosine is None and "cos" not in repr(hand)


class _PoisonedStore(ActivationStore):
    """Serves one hook with a NaN in it (as a corrupted model or cache would)."""

    def __init__(self, hook: str):
        super().__init__()
        object.__setattr__(self, "_poison", hook)

    def get(self, model, prompts, hooks, intervention=None):
        out = dict(super().get(model, prompts, hooks, intervention))
        for name in list(out):
            if name == self._poison:
                t = out[name].clone()
                t.view(-1)[0] = float("nan")
                out[name] = t
        return out


def test_non_finite_activations_are_refused(tiny, ps):
    with pytest.raises(MeasurementError, match="non-finite"):
        ER.projection_ratios(tiny, ps, activations=_PoisonedStore(H.last(H.z(1))))
    with pytest.raises(MeasurementError, match="non-finite"):
        ER.value_input_check(tiny, ps, "L0H1", ["L1H0"], activations=_PoisonedStore(H.resid_pre(1)))
    with pytest.raises(MeasurementError, match="non-finite"):
        ER.value_input_check(tiny, ps, "L0H1", ["L1H0"], activations=_PoisonedStore(H.z(0)))


# -- planted mechanisms ------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_models(tmp_path_factory):
    cache = tmp_path_factory.mktemp("planted-erasure")
    return {n: pytest_circuits.load_model(str(PLANTED / n), cache_dir=cache, device="cpu")
            for n in ("erasure", "erasure_control")}


def _planted_set(model):
    n = len(planted.PROMPTS)
    return PromptSet.build(model, planted.PROMPTS, answers=[" " + planted.ANSWER] * n,
                           foils=[" " + planted.FOIL] * n, name="planted")


@pytest.mark.parametrize("name,erases", [("erasure", True), ("erasure_control", False)])
def test_erasure_detectors(planted_models, name, erases):
    model, spec = planted_models[name], planted.ERASURE
    ps, store = _planted_set(model), ActivationStore()
    # The planted heads attend uniformly over the prefix: ablate at every position.
    r = E.dla_vs_total(model, ps, spec["writer"], kind="zero", positions=None, activations=store)
    prs = ER.projection_ratios(model, ps, activations=store)
    rows = prs.scan(5)
    assert r.dla.mean > 5.0
    if erases:
        vc = ER.value_input_check(model, ps, spec["writer"], [spec["eraser"]], activations=store)
        assert r.causal_fraction.upper < 0.2          # DLA overstates: most of it is erased
        assert r.overstatement.lower > 4.0
        top = rows[0]
        assert (str(top.writer), str(top.reader)) == (spec["writer"], spec["eraser"])
        assert top.pr == pytest.approx(-planted.ERASE_FRACTION, abs=0.01) and top.cosine < -0.99
        assert vc.clean.upper < -0.9 and abs(vc.without_writer.mean) < 0.1   # collapses to ~0
        assert vc.change.lower > 0.85 and vc.cosine.upper < -0.99
    else:
        # The control's eraser writes an orthogonal direction: nothing to report.
        assert abs(prs.ratio(spec["eraser"], spec["writer"])) < 0.05
        assert abs(prs.mean_cosine(spec["eraser"], spec["writer"])) < 0.05
        assert rows == [] or rows[0].pr > -0.1
        with pytest.warns(ER.NegligibleCosineWarning):
            vc = ER.value_input_check(model, ps, spec["writer"], [spec["eraser"]], activations=store)
        assert abs(vc.clean.mean) < 0.05


def test_a_head_that_writes_nothing_cannot_be_projected_onto(planted_models):
    model = planted_models["erasure"]          # L0H1 has all-zero weights
    ps, store = _planted_set(model), ActivationStore()
    with pytest.raises(MeasurementError, match="writes nothing"):
        ER.value_input_check(model, ps, "L0H1", ["L1H1"], activations=store)
    prs = ER.projection_ratios(model, ps, activations=store)
    assert all(r.writer != Head(0, 1) for r in prs.scan(50, min_cosine=0.0, min_norm_fraction=0.0))
    assert all(r.writer != Embed() or r.reader != Head(1, 0) for r in prs.scan(50))
