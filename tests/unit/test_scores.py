"""One ComponentScores for every technique that scores components: the same layout and the
same vocabulary (``of``, ``measure``, ``ranking``, ``top``, ``grid``, ``assert_top``) on each
technique's result, the direct effects' ``of`` against raw hooks, the ranking's order, ties and
errors on planted values, and the five shapes it replaced gone."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_circuits import ActivationStore, CircuitsError, ComponentError, MeasurementError, PromptSet, tasks
from pytest_circuits.components import MLP, Attn, Embed, Head
from pytest_circuits.scores import Block, ComponentScores, Ranked
from pytest_circuits.tasks import induction as T
from pytest_circuits.tasks.ioi import ioi, vocabulary
from pytest_circuits.measurement import Measurement
from pytest_circuits.techniques import edges as ED
from pytest_circuits.techniques import effects as E
from pytest_circuits.techniques import heads as HD
from pytest_circuits.techniques import ioi as I
from pytest_circuits.techniques import patching as P

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_circuits"


@pytest.fixture(scope="module")
def store():
    return ActivationStore()


@pytest.fixture(scope="module")
def facts(tiny):
    return PromptSet.build(tiny, ["the cat sat on the", "the capital of France is", "when John and Mary went to the",
                                  "the king of Italy went to", "a dog sat on the mat in"],
                           answers=[" mat", " Paris", " store", " Rome", " France"], name="scores-facts")


@pytest.fixture(scope="module")
def ioi_tiny(tmp_path_factory):
    from pytest_circuits import load_model
    from pytest_circuits.testing import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("scores-ioi")
    path = make_tiny_checkpoint(root / "ckpt", words=vocabulary(), seed=3)
    return load_model(str(path), device="cpu", cache_dir=root / "cache")


def _decompose(r):
    return E.decompose(r("tiny"), r("facts"), activations=r("store"))


def _sweep(r):
    return P.sweep(r("tiny"), tasks.greater_than(r("tiny"), n=8, seed=2), activations=r("store"))


def _path_sweep(r):
    return P.path_sweep(r("tiny"), tasks.greater_than(r("tiny"), n=8, seed=2), activations=r("store"))


def _screen(r):
    m = r("tiny_two_digit")
    return P.attribution_screen(m, tasks.greater_than(m, n=6, seed=1), n=4)


def _head_scores(r):
    m = r("tiny")
    return HD.head_scores(m, T.repeated_tokens(m, n=6, length=8, seed=3), activations=r("store"))["induction"]


def _head_evidence(r):
    m = r("tiny")
    return HD.head_evidence(m, T.repeated_tokens(m, n=6, length=8, seed=3), activations=r("store"))[
        "previous_token"].quantity("share")


def _ioi(r):
    m = r("ioi_tiny")
    return I.head_scores(m, ioi(m, n=8, seed=0), activations=r("store"))


def _ioi_attention(r):
    return _ioi(r).quantity("share_io")


def _self_repair(r):
    return E.self_repair(r("tiny"), r("facts"), "L0H1", kind="zero", activations=r("store"))


def _s_inhibition(r):
    m = r("ioi_tiny")
    ps = ioi(m, n=8, seed=0)
    return I.s_inhibition(m, ps, ["L1H0"], I.head_scores(m, ps, activations=r("store")), min_attention=0.0,
                          activations=r("store")).scores


def _compensation(r):
    m = r("ioi_tiny")
    return I.compensation(m, ioi(m, n=8, seed=0), ["L1H0"], activations=r("store")).delta_scores


PRODUCERS = {"effects.decompose": _decompose, "patching.sweep": _sweep, "patching.path_sweep": _path_sweep,
             "patching.attribution_screen": _screen, "heads.head_scores": _head_scores,
             "heads.head_evidence quantity": _head_evidence, "ioi.head_scores": _ioi,
             "ioi.head_scores quantity": _ioi_attention,
             "effects.self_repair delta_scores": lambda r: _self_repair(r).delta_scores,
             "effects.self_repair clean_scores": lambda r: _self_repair(r).clean_scores,
             "ioi.s_inhibition scores": _s_inhibition, "ioi.compensation delta_scores": _compensation}


@pytest.mark.parametrize("producer", list(PRODUCERS))
def test_every_producer_speaks_the_same_vocabulary(producer, request):
    sc = PRODUCERS[producer](request.getfixturevalue)
    assert isinstance(sc, ComponentScores), type(sc)
    C, n = tuple(sc.values.shape)
    assert C == len(sc.components) > 1 and n == sc.n > 1 and sc.values.dtype == torch.float64
    means = sc.values.mean(1)
    # of: the row; measure: its Measurement, named by the technique
    for i, c in enumerate(sc.components):
        assert torch.equal(sc.of(c), sc.values[i])
        assert torch.equal(sc.of(str(c)), sc.values[i])                     # a spelling reads the same row
    heads = [c for c in sc.components if isinstance(c, Head)]
    h = heads[len(heads) // 2]
    m = sc.measure(h, record=False)
    assert m.n == n and m.mean == pytest.approx(float(sc.of(h).mean()))
    assert m.name == sc.name.replace("{}", str(h)) and m.values == pytest.approx(sc.of(h).tolist())
    # an attention layer is the sum of its heads
    layer_heads = [c for c in heads if c.layer == h.layer]
    torch.testing.assert_close(sc.of(Attn(h.layer)), sc.values[[sc.components.index(c) for c in layer_heads]].sum(0))
    # ranking: by signed mean, largest first, ties in the components' order; smallest; abs
    rows = sc.ranking()
    assert all(isinstance(r, Ranked) for r in rows) and [r.rank for r in rows] == list(range(1, C + 1))
    by_hand = sorted(range(C), key=lambda i: (-float(means[i]), i))
    assert [r.component for r in rows] == [sc.components[i] for i in by_hand]
    assert [r.mean for r in rows] == pytest.approx([float(means[i]) for i in by_hand])
    smallest = sorted(range(C), key=lambda i: (float(means[i]), i))
    assert [r.component for r in sc.ranking(order="smallest")] == [sc.components[i] for i in smallest]
    by_abs = sorted(range(C), key=lambda i: (-abs(float(means[i])), i))
    assert [r.component for r in sc.ranking(order="abs")] == [sc.components[i] for i in by_abs]
    assert sc.top(3) == rows[:3] and sc.ranking(k=3) == rows[:3] and sc.top(2, order="abs") == sc.ranking(
        order="abs")[:2]
    attn = {r.component: r.mean for r in sc.ranking(by="attn")}
    assert attn[Attn(h.layer)] == pytest.approx(float(sc.of(Attn(h.layer)).mean()))
    # grid: the heads' means at [layer, head]
    g = sc.grid()
    assert g.shape == tuple(sc.shape)
    for c in heads:
        assert g[c.layer, c.head] == pytest.approx(float(means[sc.components.index(c)]))
    # assert_top: the first row passes, the last fails with the ranking printed
    if rows[0].mean > rows[1].mean:
        assert sc.assert_top(rows[0].component) is sc
        sc.assert_in_top(rows[0].component, 1)
    if rows[-1].mean < rows[0].mean:
        with pytest.raises(AssertionError, match=r"(?s)to be the top 1 by components.*\n\s+1\. "):
            sc.assert_top(rows[-1].component)
    # components it does not score: project errors
    for bad in ("L9H9", "L0H99"):
        with pytest.raises(ComponentError):
            sc.of(bad)
        with pytest.raises(ComponentError):
            sc.measure(bad)
        with pytest.raises(ComponentError):
            sc.assert_top(bad)
    with pytest.raises(ComponentError):
        sc.of(object())
    with pytest.raises(CircuitsError, match="by="):
        sc.ranking(by="everything")
    with pytest.raises(CircuitsError, match="order="):
        sc.top(3, order="up")
    for k in (0, -1, True, 1.5):
        with pytest.raises(CircuitsError, match="k="):
            sc.top(k)


def test_direct_effects_of_equals_raw_hooks(tiny, facts, store):
    """``of(head)`` and ``of(mlp)`` against the heads' and MLPs' outputs read with raw hooks,
    times the centred unembedding, over the final norm's scale (no project code)."""
    de = E.decompose(tiny, facts, activations=store)
    with torch.no_grad():
        _, cache = tiny.run_with_cache(facts.tokens)
    n = len(facts)
    rows, end = torch.arange(n), torch.tensor(facts.lengths) - 1
    ids = torch.tensor(facts.answer_ids)
    W_U, W_O = tiny.W_U.detach().double(), tiny.W_O.detach().double()
    w = (W_U[:, ids] - W_U.mean(1, keepdim=True)).T                               # [n, d]
    scale = cache["ln_final.hook_scale"][rows, end].double().reshape(-1)
    for l in range(tiny.cfg.n_layers):
        z = cache[f"blocks.{l}.attn.hook_z"][rows, end].double()                   # [n, H, d_head]
        out = torch.einsum("nhd,hde->nhe", z, W_O[l])
        for h in range(tiny.cfg.n_heads):
            raw = (out[:, h] * w).sum(-1) / scale
            torch.testing.assert_close(de.of(Head(l, h)), raw, atol=1e-5, rtol=1e-4)
            assert de.measure(Head(l, h), record=False).mean == pytest.approx(float(raw.mean()), abs=1e-5)
        mlp = cache[f"blocks.{l}.hook_mlp_out"][rows, end].double()
        torch.testing.assert_close(de.of(MLP(l)), (mlp * w).sum(-1) / scale, atol=1e-5, rtol=1e-4)
    assert de.measure("L1H0", record=False).name == "DE(L1H0)"
    # the decomposition's extra fields stay: the identity against the logit read from the model
    torch.testing.assert_close(de.parts_sum, de.logit, atol=1e-4, rtol=0)


def _planted(means, n=30, noise=0.0, comps=None):
    comps = comps or (Embed(), Head(0, 0), Head(0, 1), MLP(0), Head(1, 0), Head(1, 1), MLP(1))
    g = torch.Generator().manual_seed(1)
    vals = torch.tensor(means, dtype=torch.float64)[:, None] + noise * torch.randn(len(comps), n, generator=g,
                                                                                   dtype=torch.float64)
    return ComponentScores(components=comps, values=vals, name="score {}", model="m", prompts="p")


def test_ranking_order_ties_and_signs():
    sc = _planted([0.5, -2.0, 0.5, 1.0, 2.0, -0.5, 0.5])          # embed, L0H0, L0H1, mlp0, L1H0, L1H1, mlp1
    assert [r.name for r in sc.ranking()] == ["L1H0", "mlp0", "embed", "L0H1", "mlp1", "L1H1", "L0H0"]
    assert [r.name for r in sc.ranking(order="smallest")] == ["L0H0", "L1H1", "embed", "L0H1", "mlp1", "mlp0",
                                                              "L1H0"]
    # |mean| ties keep the components' order: L0H0 (-2) before L1H0 (+2)
    assert [r.name for r in sc.ranking(order="abs")][:2] == ["L0H0", "L1H0"]
    assert [(r.name, r.mean) for r in sc.ranking(by="attn")] == [("attn1", 1.5), ("attn0", -1.5)]
    assert [r.name for r in sc.ranking(by="layers")] == ["block1", "block0"]
    sc.assert_top("block1", by="layers").assert_top(["L1H0", "mlp0"])
    # a tie at the edge of the top k: by order, and never separated by an interval
    with pytest.raises(AssertionError, match=r"expected \{L0H1\} to be the top 1 by components"):
        sc.assert_top("L0H1")                                     # tied with embed, which comes first
    sc.assert_top(["L1H0", "mlp0", "embed"])
    noisy = _planted([0.5, -2.0, 0.5, 1.0, 2.0, -0.5, 0.5], noise=0.3)
    top3 = [r.component for r in noisy.top(3)]                     # the third: one of three tied in truth
    assert top3[:2] == [Head(1, 0), MLP(0)] and top3[2] in (Embed(), Head(0, 1), MLP(1))
    with pytest.raises(AssertionError, match="not separated"):
        noisy.assert_top(top3, separated=True)
    noisy.assert_top(["L1H0", "mlp0"], separated=True)
    # grid: NaN where a head is not scored; MLP column on request
    g = sc.grid(mlp=True)
    assert g.shape == (2, 3) and g[1, 0] == 2.0 and g[0, 2] == 1.0 and g[1, 2] == 0.5
    part = ComponentScores(components=(Head(1, 1),), values=torch.ones(1, 3), shape=(2, 2))
    assert np.isnan(part.grid()[0, 0]) and part.grid()[1, 1] == 1.0


def test_bad_scores_and_components_are_refused():
    with pytest.raises(CircuitsError, match="values="):
        ComponentScores(components=(Head(0, 0), Head(0, 1)), values=torch.zeros(3, 4))
    with pytest.raises(CircuitsError, match="values="):
        ComponentScores(components=(Head(0, 0),), values=torch.zeros(4))
    with pytest.raises(CircuitsError, match="distinct"):
        ComponentScores(components=(Head(0, 0), Head(0, 0)), values=torch.zeros(2, 4))
    with pytest.raises(CircuitsError, match="name="):
        ComponentScores(components=(Head(0, 0),), values=torch.zeros(1, 4), name="no placeholder")
    sc = _planted([0.5, -2.0, 0.5, 1.0, 2.0, -0.5, 0.5])
    with pytest.raises(ComponentError, match="component="):
        sc.of("L3H0")
    with pytest.raises(ComponentError, match="component="):
        sc.of("not a component")
    with pytest.raises(ComponentError, match="component="):
        sc.assert_in_top("mlp7", 2)
    with pytest.raises(CircuitsError, match="k="):
        sc.assert_top(["L1H0"], k=2)
    with pytest.raises(CircuitsError, match="by="):
        sc.ranking(by="experts")                                  # nothing to rank at that grain
    nan = ComponentScores(components=(Head(0, 0), Head(0, 1)), values=torch.tensor([[1.0, float("nan")],
                                                                                     [0.0, 1.0]]))
    with pytest.raises(MeasurementError, match="not finite"):
        nan.ranking()
    with pytest.raises(CircuitsError, match="grid"):
        ComponentScores(components=(MLP(0),), values=torch.zeros(1, 2)).grid()


def test_position_keys_read_like_components(tiny, store):
    """A by-position sweep keys its rows by (component, position): the same vocabulary."""
    years = tasks.greater_than(tiny, n=8, seed=2)
    pos = P.position_sweep(tiny, years, layers=[0], activations=store)["attn"]
    key = pos.components[0]
    assert isinstance(key, tuple) and torch.equal(pos.of(key), pos.values[0])
    assert pos.measure(key, record=False).name == f"patch[{key[0]}@{key[1]}]"
    assert {r.component for r in pos.ranking()} == set(pos.components)
    with pytest.raises(ComponentError):
        pos.of((Attn(0), 999))


def test_self_repair_scores_are_its_own_rows(tiny, facts, store):
    """``delta_scores`` and ``clean_scores`` hold exactly the decomposition's rows, and their
    measurements are the ones ``compensation`` and ``direct_effect`` always gave: the same
    name, values, interval and provenance."""
    sr = E.self_repair(tiny, facts, "L0H1", kind="zero", activations=store)
    for i, c in enumerate(sr.components):
        assert torch.equal(sr.delta_scores.of(c), sr.delta_de[i]) and torch.equal(sr.clean_scores.of(c), sr.clean_de[i])
    heads0 = [i for i, c in enumerate(sr.components) if isinstance(c, Head) and c.layer == 0]
    assert torch.equal(sr.delta_scores.of("attn0"), sr.delta_de[heads0].sum(0))
    for c in ("L1H2", "mlp1", "attn1", Head(0, 3)):
        for got, want_vals, name in ((sr.compensation(c), sr.delta_scores.of(c), "ΔDE({} | zero(L0H1,pos=last))"),
                                     (sr.direct_effect(c), sr.clean_scores.of(c), "DE({})")):
            assert got.values == tuple(want_vals.tolist()) and got.name == name.replace("{}", str(c))
            ref = Measurement.from_values("by hand", want_vals, record=False)
            assert (got.mean, got.lower, got.upper) == (ref.mean, ref.lower, ref.upper)
            assert got.provenance == {"ablation": "zero(L0H1,pos=last)", "prompts": facts.name, "component": str(c),
                                      "interval": ref.provenance["interval"]}
    # the signed ranking of every component (the ablated one too) is the rows' means by hand
    means = sr.delta_de.mean(1)
    want = sorted(range(len(sr.components)), key=lambda i: (-float(means[i]), i))
    assert [r.component for r in sr.delta_scores.ranking()] == [sr.components[i] for i in want]
    assert sr.delta_scores.grid().shape == (tiny.cfg.n_layers, tiny.cfg.n_heads)


def test_the_old_shapes_are_gone():
    """No second per-component score class: the five shapes are ComponentScores or removed."""
    assert not hasattr(HD, "HeadScores") and not hasattr(I, "HeadScores") and not hasattr(E, "_Ranks")
    # the containers of several quantities hand each out as ComponentScores, with no `of`/`grid` of their own
    for cls in (HD.HeadEvidence, I.IOIScores):
        assert hasattr(cls, "quantity")
    assert not hasattr(HD.HeadEvidence, "of") and not hasattr(HD.HeadEvidence, "grid")
    for cls in (E.DirectEffects, P.Sweep, P.Screen, I.IOIScores, E.AblatedScores, ED.EdgeScores, ED.EdgeSweep):
        assert issubclass(cls, ComponentScores), cls
    # the names these replaced (issue 23 item 2): ComponentScores attributes instead
    assert not hasattr(E.SelfRepair, "delta") and not hasattr(E.SelfRepair, "clean")
    assert not hasattr(I.Compensation, "heatmap") and not hasattr(I.SInhibition, "heatmap")
    assert not hasattr(ED.EdgeScores, "per_prompt")
    assert E.Block is Block and E.Ranked is Ranked                   # one definition, re-exported
    defined = {}
    for f in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ClassDef):
                defined.setdefault(node.name, []).append(f.relative_to(PACKAGE).as_posix())
    assert "HeadScores" not in defined and "_Ranks" not in defined
    assert defined["ComponentScores"] == ["scores.py"] and defined["Ranked"] == ["scores.py"]
