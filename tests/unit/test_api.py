"""The API that lets claims read like the finding (issue #11, item 5): arithmetic on
Measurements, rankings at every grain, named accessors on circuit results, model-first
signatures, the ``python -m pytest_circuits`` command and the probing config/result."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_circuits import measurement as M
from pytest_circuits.errors import MeasurementError
from pytest_circuits.measurement import Measurement


def _vals(seed: int, n: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, size=n)


# ----------------------------------------------------------------------------- arithmetic
def test_difference_keeps_the_pairing_and_gets_its_own_interval():
    x, y = _vals(1), _vals(2)
    labels = [f"p{i}" for i in range(30)]
    a = Measurement.from_values("TE", x, labels=labels, model="m")
    b = Measurement.from_values("DE(L9H3)", y, labels=labels, model="m")
    d = a - b
    want = Measurement.from_values("x", x - y)          # computed independently, by hand
    assert d.name == "TE - DE(L9H3)"
    assert (d.mean, d.lower, d.upper) == pytest.approx((want.mean, want.lower, want.upper), rel=1e-12)
    assert d.values == pytest.approx(tuple(x - y)) and d.labels == tuple(labels) and d.model == "m"
    s = a + b
    want = Measurement.from_values("x", x + y)
    assert s.name == "TE + DE(L9H3)" and (s.lower, s.upper) == pytest.approx((want.lower, want.upper))
    # the pairing matters: the paired interval of a - a*1.1 is far narrower than unpaired sums
    assert (a - 1.1 * a).upper - (a - 1.1 * a).lower < 0.1 * (a.upper - a.lower)
    assert (a - b).values == a.paired_difference(b).values
    total = sum([a, b, a])
    assert total.name == "TE + DE(L9H3) + TE" and total.values == pytest.approx(tuple(2 * x + y))


def test_scalar_operations_map_the_interval_exactly_and_match_resampling():
    x = _vals(3)
    a = Measurement.from_values("a", x)
    for c, shift in ((2.5, 0.0), (-2.5, 3.0), (-1.0, 0.0), (0.5, -1.0)):
        got = c * a + shift
        again = Measurement.from_values("b", c * x + shift)     # resampled from scratch
        assert got.lower <= got.upper
        assert (got.mean, got.lower, got.upper) == pytest.approx((again.mean, again.lower, again.upper),
                                                                 rel=1e-9, abs=1e-12)
    neg = -a
    assert (neg.lower, neg.upper) == (-a.upper, -a.lower) and neg.name == "-a"
    assert (a / 4).upper == pytest.approx(a.upper / 4) and (a / 4).name == "a / 4"
    assert (a - 1).name == "a - 1" and (1 - a).name == "1 - a" and (1 - a).lower == pytest.approx(1 - a.upper)
    assert (-(a - a * 2)).name == "-(a - 2 * a)"
    assert (2 * (a + a)).name == "2 * (a + a)"


def test_a_proportion_scaled_keeps_its_exact_interval():
    k = Measurement.from_values("top1", [1, 1, 0, 1, 1, 1, 0, 1])
    assert ((-k).lower, (-k).upper) == (-k.upper, -k.lower)
    assert (100 * k).upper == pytest.approx(100 * k.upper)


@pytest.mark.parametrize("other, match", [
    (Measurement.from_values("b", np.arange(5.0)), "n=5"),
    (Measurement.from_values("b", np.arange(30.0), labels=[f"q{i}" for i in range(30)]), "example 0"),
    (Measurement.from_values("b", np.arange(30.0), level=0.9), "level"),
    (Measurement.from_ratio("r", np.arange(1.0, 31.0), np.ones(30) + np.arange(30) % 3), "ratio"),
])
def test_combining_different_examples_is_refused(other, match):
    a = Measurement.from_values("a", _vals(4), labels=[f"p{i}" for i in range(30)])
    with pytest.raises(MeasurementError, match=match):
        a - other
    with pytest.raises(MeasurementError, match=match):
        a + other


def test_division_by_a_measurement_or_zero_is_refused():
    a = Measurement.from_values("a", _vals(5))
    with pytest.raises(MeasurementError, match="from_ratio"):
        a / a
    with pytest.raises(MeasurementError, match="non-zero"):
        a / 0
    with pytest.raises(TypeError):
        a * "2"
    with pytest.raises(TypeError):
        a * a
    with pytest.raises(TypeError):
        a + True


def test_results_are_recorded():
    a = Measurement.from_values("a", _vals(6), record=False)
    got: list = []
    M._RECORDERS.append(got)
    try:
        d = a - 2 * a
    finally:
        M._RECORDERS.remove(got)
    assert d in got and len(got) == 2        # 2 * a, then the difference


def test_a_ratio_can_be_scaled():
    r = Measurement.from_ratio("r", np.arange(1.0, 31.0), np.ones(30) + np.arange(30) % 3)
    assert (2 * r).upper == pytest.approx(2 * r.upper) and (2 * r).mean == pytest.approx(2 * r.mean)


# ----------------------------------------------------------------------------- circuit results
def _circuits():
    from pytest_circuits.techniques import circuits as C
    return C


def _cost(name: str, shift: float) -> Measurement:
    return Measurement.from_values(name, _vals(7, 20) * 0.01 + shift, record=False)


def test_minimality_excluding_drops_the_named_components_only():
    C = _circuits()
    from pytest_circuits.components import MLP, Head
    costs = {Head(0, 1): _cost("c0", 0.2), MLP(0): _cost("c1", 0.1), MLP(1): _cost("c2", -0.5)}
    mn = C.Minimality(C.Circuit(tuple(costs), (), "c"), "patch", costs)
    with pytest.raises(AssertionError, match="mlp1: cost"):
        mn.assert_each_above(0.0)
    kept = mn.excluding("mlp1")
    assert set(kept.costs) == {Head(0, 1), MLP(0)} and kept.excluded == (MLP(1),)
    assert kept.costs[MLP(0)] is costs[MLP(0)] and mn["L0H1"] is costs[Head(0, 1)]
    assert kept.assert_each_above(0.0) is kept
    assert "excluding mlp1" in repr(kept)
    with pytest.raises(AssertionError, match=r"c \(excluding mlp1 mlp0\)|c \(excluding mlp0 mlp1\)"):
        mn.excluding(["mlp1"]).excluding(MLP(0)).assert_each_above(0.5)
    with pytest.raises(C.CircuitsError, match="mlp5"):
        mn.excluding("mlp5")
    with pytest.raises(C.CircuitsError, match="excluded already"):
        kept.excluding("mlp1")
    assert len(mn.costs) == 3            # the original is untouched


def test_robustness_cells_by_check_and_kind():
    C = _circuits()
    hi, lo = _cost("f_patch", 0.9), _cost("f_zero", 0.1)
    cells = {"faithfulness": {"patch": C.Cell(hi, True, "ok"), "zero": C.Cell(lo, False, "low")}}
    rob = C.Robustness(C.Circuit((), (), "c"), ("patch", "zero"), cells, {})
    assert rob["faithfulness"]["zero"].value is lo and rob.cell("faithfulness", "patch").holds
    m, ok = rob.cell("faithfulness", "zero")
    assert m is lo and ok is False and rob.cell("faithfulness", "zero").verdict is False
    assert rob.values("faithfulness") == {"patch": hi, "zero": lo}
    assert rob["faithfulness"]["patch"].lower == hi.lower
    rob["faithfulness"]["patch"].assert_above(0.8)
    with pytest.raises(AssertionError, match="f_zero"):
        rob["faithfulness"]["zero"].assert_above(0.8)
    with pytest.raises(C.CircuitsError, match="check='minimality'"):
        rob["minimality"]
    with pytest.raises(C.CircuitsError, match="kind='mean'"):
        rob.cell("faithfulness", "mean")


# ----------------------------------------------------------------------------- model first
def test_task_functions_take_the_model_first_and_refuse_the_old_order(tiny):
    import torch

    from pytest_circuits import tasks
    from pytest_circuits.errors import PromptSetError

    one = tasks.from_rows(tiny, [("war", 17, 32)], name="one")
    pd = tasks.per_prompt_prob_diff(tiny, one)
    assert pd.shape == (1,) and torch.equal(pd, one.scores(tiny))
    assert tasks.prob_diff(tiny, one, record=False).mean == pytest.approx(float(pd[0]))
    with pytest.raises(PromptSetError, match=r"per_prompt_prob_diff\(model, task, \.\.\.\) takes the model first"):
        tasks.per_prompt_prob_diff(one, tiny)
    with pytest.raises(PromptSetError, match="model first"):
        tasks.prob_diff(one, tiny)


def test_no_task_or_technique_function_takes_the_model_second():
    """Every public function of tasks/ and techniques/ with a positional ``model`` parameter has it
    first (a keyword-only ``model: str`` is a label, not the model)."""
    import importlib
    import inspect
    import pkgutil

    import pytest_circuits.tasks as T
    import pytest_circuits.techniques as Q

    late = []
    for pkg in (T, Q):
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
            for name, fn in vars(mod).items():
                if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != mod.__name__:
                    continue
                params = [p.name for p in inspect.signature(fn).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                if "model" in params and params[0] != "model":
                    late.append(f"{mod.__name__}.{name}{inspect.signature(fn)}")
    assert late == []


# ----------------------------------------------------------------------------- rankings
def _fake_de(n: int = 40):
    """DirectEffects over a 2-layer, 2-head writer list with planted effects: attn1 (the sum of
    L1H0 and L1H1) is largest, mlp0 the largest single component."""
    import torch

    from pytest_circuits.components import MLP, Embed, Head
    from pytest_circuits.techniques import effects as E

    comps = (Embed(), Head(0, 0), Head(0, 1), MLP(0), Head(1, 0), Head(1, 1), MLP(1))
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([0.1, 0.2, -0.5, 1.5, 1.0, 0.9, -0.3], dtype=torch.float64)
    vals = means[:, None] + 0.2 * torch.randn(len(comps), n, generator=g, dtype=torch.float64)
    z = torch.zeros(n, dtype=torch.float64)
    return E, E.DirectEffects(model="fake", components=comps, values=vals, bias=z, logit=vals.sum(0), token_ids=z,
                                prompts="fake-prompts"), vals


def test_ranking_at_every_grain_matches_sums_by_hand():
    E, de, v = _fake_de()
    m = v.mean(1).tolist()          # embed, L0H0, L0H1, mlp0, L1H0, L1H1, mlp1
    by_hand = {
        "components": {"embed": m[0], "L0H0": m[1], "L0H1": m[2], "mlp0": m[3], "L1H0": m[4], "L1H1": m[5],
                       "mlp1": m[6]},
        "heads": {"L0H0": m[1], "L0H1": m[2], "L1H0": m[4], "L1H1": m[5]},
        "attn": {"attn0": m[1] + m[2], "attn1": m[4] + m[5]},
        "mlp": {"mlp0": m[3], "mlp1": m[6]},
        "sublayers": {"attn0": m[1] + m[2], "mlp0": m[3], "attn1": m[4] + m[5], "mlp1": m[6]},
        "layers": {"block0": m[1] + m[2] + m[3], "block1": m[4] + m[5] + m[6]},
    }
    for by, want in by_hand.items():
        rows = de.ranking(by)
        assert [r.rank for r in rows] == list(range(1, len(want) + 1))
        assert {r.name: r.mean for r in rows} == pytest.approx(want)
        assert [r.name for r in rows] == sorted(want, key=lambda c: -want[c])
        assert [r.name for r in de.ranking(by, order="smallest")] == sorted(want, key=lambda c: want[c])
        assert [r.name for r in de.ranking(by, order="abs")] == sorted(want, key=lambda c: -abs(want[c]))
    row = de.ranking("attn", k=1)[0]
    c, mean = row
    assert (str(c), row.rank, row.name) == ("attn1", 1, "attn1")
    assert mean == pytest.approx(float(de.of("attn1").mean())) and row.mean == mean
    assert len(de.ranking("heads", k=2)) == 2


def test_assert_top_and_in_top_print_the_ranking_when_they_fail():
    E, de, _ = _fake_de()
    assert de.assert_top("attn1", by="attn") is de
    de.assert_top(["attn1"], k=1, by="attn", separated=True)
    de.assert_top(["mlp0", "attn1"], by="sublayers")
    de.assert_top("block1", by="layers").assert_top(1, by="layers").assert_top("layer1", by="layers")
    de.assert_in_top("L1H1", 3, by="heads")
    with pytest.raises(AssertionError, match=r"(?s)expected \{attn0\} to be the top 1 by attn.*1\.\s+attn1.*>\s+2\.\s+attn0"):
        de.assert_top("attn0", by="attn")
    with pytest.raises(AssertionError, match=r"(?s)L0H1 among the top 2 by heads; it is number 4.*L1H0"):
        de.assert_in_top("L0H1", 2, by="heads")
    # L1H0 (1.0) and L1H1 (0.9) are 0.1 apart with per-prompt noise 0.2 x sqrt(2), n=40:
    # first by the mean, not separated by the interval
    de.assert_top("L1H0", by="heads")
    with pytest.raises(AssertionError, match="not separated from L1H1"):
        de.assert_top("L1H0", by="heads", separated=True)
    with pytest.raises(E.CircuitsError, match="by='blocks'"):
        de.ranking("blocks")
    with pytest.raises(E.CircuitsError, match="assert_in_top"):
        de.assert_top("attn1", k=2, by="attn")
    with pytest.raises(E.ComponentError, match="attn7"):
        de.assert_top("attn7", by="attn")


def test_self_repair_ranks_make_up_at_every_grain(tiny):
    from pytest_circuits import ActivationStore, PromptSet
    from pytest_circuits.techniques import effects as E

    ps = PromptSet.build(tiny, ["the cat sat on the", "the capital of France is", "when John and Mary went to the",
                                "the king of Italy went to", "a dog sat on the mat in"],
                         answers=[" mat", " Paris", " store", " Rome", " France"], name="effects")
    sr = E.self_repair(tiny, ps, "L0H1", kind="zero", activations=ActivationStore())
    # by hand: ΔDE per component, the ablated head left out, in the direction of the lost effect
    rows = sr.ranking(None)
    assert "L0H1" not in [r.name for r in rows]
    want = {str(c): float(sr.delta_scores.of(c).mean()) for c in sr.components if str(c) != "L0H1"}
    assert [r.name for r in rows] == sorted(want, key=lambda c: -want[c] * sr.lost_sign)
    attn = {r.name: r.mean for r in sr.ranking(None, by="attn")}
    hand0 = sum(float(sr.delta_scores.of(f"L0H{h}").mean()) for h in range(tiny.cfg.n_heads) if h != 1)
    assert attn["attn0"] == pytest.approx(hand0)
    assert attn["attn1"] == pytest.approx(float(sr.delta_scores.of("attn1").mean()))
    top = sr.ranking(1, by="layers")[0]
    sr.assert_top(top.component, by="layers")
    with_ablated = {r.name: r.mean for r in sr.ranking(None, by="attn", include_ablated=True)}
    assert with_ablated["attn0"] == pytest.approx(float(sr.delta_scores.of("attn0").mean()))
    # the pairs of before still unpack
    c, v = sr.ranking(1)[0]
    assert c == rows[0].component and v == rows[0].mean


# ----------------------------------------------------------------------------- the command
def _run_cli(*args, env_extra=None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pytest_circuits", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_help_lists_the_commands():
    r = _run_cli("--help")
    assert r.returncode == 0 and "perturb" in r.stdout and "COMMAND" in r.stdout
    r = _run_cli("perturb", "--help")
    assert r.returncode == 0 and all(o in r.stdout for o in ("--layer", "--scale", "--cache-dir", "--model"))


def test_cli_perturb_scales_one_output_projection(tmp_path, capsys):
    import json

    import torch
    from safetensors.torch import load_file

    from pytest_circuits.testing import make_tiny_checkpoint

    src = make_tiny_checkpoint(tmp_path / "tiny", n_layers=2)
    out = tmp_path / "half"
    r = _run_cli("perturb", str(out), "--layer", "1", "--scale", "0.5", "--model", str(src))
    assert r.returncode == 0, r.stderr
    before = {k: v for f in src.glob("*.safetensors") for k, v in load_file(f).items()}
    after = {k: v for f in out.glob("*.safetensors") for k, v in load_file(f).items()}
    assert set(before) == set(after) and not list(out.glob("*.bin"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.layers.1.self_attn.o_proj.weight"}
    k = "model.layers.1.self_attn.o_proj.weight"
    assert torch.allclose(after[k], 0.5 * before[k])
    meta = json.loads((out / "PERTURBATION.json").read_text())
    assert (meta["layer"], meta["part"], meta["scale"]) == (1, "attn", 0.5)
    # the rest in-process (the same main() the command runs)
    from pytest_circuits.cli import main

    assert main(["perturb", str(tmp_path / "mlp"), "--layer", "0", "--scale", "0", "--part", "mlp",
                 "--model", str(src)]) == 0
    mlp = {k: v for f in (tmp_path / "mlp").glob("*.safetensors") for k, v in load_file(f).items()}
    assert not mlp["model.layers.0.mlp.down_proj.weight"].any()
    assert main(["perturb", str(tmp_path / "bad"), "--layer", "5", "--model", str(src)]) == 2
    assert "layer=5 is not valid: 0..1" in capsys.readouterr().err
    assert main(["perturb", str(tmp_path / "bad"), "--model", str(tmp_path / "nowhere")]) == 2
    assert "local Hugging Face checkpoint folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- probing
def _planted_features(n: int = 120, d: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(np.int64)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[:, 7] += 3.0 * y            # neuron 7 carries the feature
    return X, y


def test_probe_config_matches_the_keywords_and_keywords_win():
    from pytest_circuits.techniques import probing as P

    X, y = _planted_features()
    kw = dict(seed=3, test_fraction=0.5, method="f_stat", resamples=500)
    by_kw = P.probe_features(X, y, k=1, record=False, **kw)
    cfg = P.ProbeConfig(**kw)
    by_cfg = P.probe_features(X, y, k=1, record=False, config=cfg)
    assert by_cfg.neurons == by_kw.neurons == (P.Neuron(0, 7),)
    assert (by_cfg.f1.mean, by_cfg.f1.lower, by_cfg.f1.upper) == (by_kw.f1.mean, by_kw.f1.lower, by_kw.f1.upper)
    assert list(by_cfg.test_indices) == list(by_kw.test_indices)
    other = P.probe_features(X, y, k=1, record=False, config=cfg, seed=4)     # the keyword wins
    assert other.f1.provenance["seed"] == 4 and list(other.test_indices) != list(by_kw.test_indices)
    rnd = P.random_f1_features(X, y, k=1, n_repeats=3, config=cfg)       # no method: not passed on
    assert rnd.provenance["k"] == 1
    with pytest.raises(P.ProbingError, match="test_fraction=1.5"):
        P.ProbeConfig(test_fraction=1.5)
    with pytest.raises(P.ProbingError, match="config="):
        P.probe_features(X, y, k=1, config={"seed": 1})
    assert cfg.replace(seed=9).seed == 9 and cfg.seed == 3


def test_f1_interval_lives_in_stats_and_the_best_bound_is_reachable():
    from pytest_circuits import stats
    from pytest_circuits.techniques import probing as P

    X, y = _planted_features()
    r = P.probe_features(X, y, k=1, record=False, resamples=2000)
    yt, pred = np.asarray(r.f1.y_test), np.asarray(r.f1.predictions[0])
    tp, fp, fn = int(((pred == 1) & (yt == 1)).sum()), int(((pred == 1) & (yt == 0)).sum()), \
        int(((pred == 0) & (yt == 1)).sum())
    assert r.f1.mean == pytest.approx(2 * tp / (2 * tp + fp + fn))       # F1 by hand
    assert (r.f1.lower, r.f1.upper) == pytest.approx(stats.f1_interval(yt, pred[None], 0.95, 2000, 0))
    best = r.best_possible_lower
    assert best == pytest.approx(stats.f1_perfect_lower(int(yt.sum()), int((1 - yt).sum())))
    assert r.f1.lower <= best < 1.0
    # more held-out examples, a higher reachable bound; the shipped datasets' default split clears 0.9
    assert stats.f1_perfect_lower(11, 33) < 0.9 < stats.f1_perfect_lower(19, 19) < stats.f1_perfect_lower(22, 66)
    # a perfect probe reaches it (up to the seeded draws: the examples' order differs)
    perfect = P._f1_measurement("p", yt, yt[None], np.arange(yt.size), model="", seed=0, resamples=4000,
                                level=0.95, provenance={}, record=False)
    assert perfect.lower == pytest.approx(stats.f1_perfect_lower(int(yt.sum()), int((1 - yt).sum())), abs=0.01)
    # an F1 is a ratio: not added to another measurement (probing.margin is the paired way)
    with pytest.raises(MeasurementError, match="probing.margin"):
        r.f1 - r.f1


def test_prepared_is_typed_and_unpacks_like_the_tuple_before():
    from pytest_circuits.techniques import probing as P

    X, y = _planted_features()
    pr = P._prepare(X, y, 2, None, 0, 0.3, True, 1e-3)
    yy, d, k, g, train, test, Z = pr
    assert (d, k, g) == (30, 2, None) and pr.d == 30 and pr.Z is Z
    assert sorted(np.r_[train, test].tolist()) == list(range(120))
