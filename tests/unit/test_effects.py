"""Direct effects and the self-repair decomposition: identities on the tiny model, agreement
with TransformerLens's DLA, and the planted backup mechanism (found in the planted model,
not reported in its control). Erasure measures are tested in test_erasure.py."""

from pathlib import Path

import pytest
import torch

import pytest_circuits
from pytest_circuits import ActivationStore, CircuitsError, ComponentError, MeasurementError, PromptSet, planted
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I
from pytest_circuits.components import MLP, Attn, Embed, Head
from pytest_circuits.techniques import effects as E

PLANTED = Path(__file__).resolve().parent.parent / "data" / "planted"


@pytest.fixture(scope="module")
def ps(tiny):
    return PromptSet.build(tiny, ["the cat sat on the", "the capital of France is", "when John and Mary went to the",
                                  "the king of Italy went to", "a dog sat on the mat in"],
                           answers=[" mat", " Paris", " store", " Rome", " France"], name="effects")


@pytest.fixture
def store():
    return ActivationStore()


def _centred_logit(store, model, ps, iv=None, ids=None):
    lg = store.get(model, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST].double()
    ids = torch.tensor(ps.answer_ids) if ids is None else ids
    return lg[torch.arange(len(ps)), ids] - lg.mean(-1)


def test_direct_effects_plus_bias_sum_to_the_centred_logit(tiny, ps, store):
    de = E.decompose(tiny, ps, activations=store)
    assert de.values.shape == (1 + 2 * (4 + 1), len(ps))
    torch.testing.assert_close(de.logit, _centred_logit(store, tiny, ps), atol=1e-4, rtol=0)
    assert de.components[0] == Embed() and de.components[1] == Head(0, 0) and de.components[5] == MLP(0)
    torch.testing.assert_close(de.of(Attn(1)), sum(de.of(Head(1, h)) for h in range(4)))


def test_direct_effects_agree_with_transformer_lens_dla(tiny, ps, store):
    from transformer_lens.tools.analysis import direct_logit_attribution

    de = E.decompose(tiny, ps, activations=store)
    for i in range(len(ps)):
        toks = ps.tokens[i: i + 1, : ps.lengths[i]]
        with torch.no_grad():
            ref = direct_logit_attribution(tiny, toks, answer_tokens=torch.tensor([ps.answer_ids[i]]), unit="head")
        vals = dict(zip(ref.labels, ref.attribution.reshape(len(ref.labels), -1)[:, 0].tolist()))
        for h in range(4):
            for l in range(2):
                assert float(de.of(Head(l, h))[i]) == pytest.approx(vals[f"L{l}H{h}"], abs=1e-5)
        rest = de.of(Embed()) + de.of(MLP(0)) + de.of(MLP(1))
        assert float(rest[i]) == pytest.approx(vals["remainder"], abs=1e-5)


@pytest.mark.parametrize("target,kind", [("L0H1", "zero"), ("mlp0", "resample"), ("attn1", "zero"),
                                         (["L0H2", "mlp1"], "resample")])
def test_self_repair_decomposition_is_exact(tiny, ps, store, target, kind):
    sr = E.self_repair(tiny, ps, target, kind=kind, seed=1, activations=store)
    # by construction ...
    torch.testing.assert_close(sr.total, sr.own + sr.downstream + sr.norm_term, atol=1e-10, rtol=0)
    # ... and against the logits of the ablated run (independent of the decomposition)
    te = _centred_logit(store, tiny, ps, sr.ablation) - _centred_logit(store, tiny, ps)
    torch.testing.assert_close(sr.total, te, atol=1e-4, rtol=0)
    te_m = E.total_effect(tiny, ps, sr.ablation, activations=store)
    assert te_m.values == pytest.approx(te.tolist(), abs=1e-9)
    # components before the first ablated layer are untouched
    first = min(c.layer for c in (sr.components[i] for i in sr.ablated))
    upstream = [i for i, c in enumerate(sr.components) if c.layer < first]
    assert not sr.delta_de[upstream].abs().max() > 0


def test_compensation_shortcut(tiny, ps, store):
    m = E.compensation(tiny, ps, ablate="L0H1", by="L1H2", kind="zero", activations=store)
    sr = E.self_repair(tiny, ps, "L0H1", kind="zero", activations=store)
    assert m.values == pytest.approx(sr.delta_scores.of("L1H2").tolist())


def test_zero_ablation_own_effect_is_minus_the_direct_effect(tiny, ps, store):
    sr = E.self_repair(tiny, ps, "L1H3", kind="zero", activations=store)
    torch.testing.assert_close(sr.own, -sr.clean_de[sr.components.index(Head(1, 3))])


def test_ablating_nothing_gives_a_zero_decomposition(tiny, ps, store):
    sr = E.self_repair(tiny, ps, I.nothing(), activations=store)
    assert float(sr.total.abs().max()) == 0.0 and float(sr.delta_de.abs().max()) == 0.0


def test_readable_outputs(tiny, ps, store):
    sr = E.self_repair(tiny, ps, "L0H1", kind="zero", activations=store)
    assert "total effect" in sr.table() and "norm term" in sr.table()
    assert repr(sr).startswith("SelfRepair(zero(L0H1,pos=last): TE ")
    assert len(sr.ranking(3)) == 3 and all(c != Head(0, 1) for c, _ in sr.ranking(20))
    assert all(sr.role(c) in E.ROLES for c, _ in sr.ranking(20))
    m = sr.compensation("mlp1")
    assert m.name.startswith("ΔDE(mlp1 | zero(L0H1")


def test_bad_effect_input(tiny, ps, store):
    with pytest.raises(ComponentError, match="layer must be in 0..1"):
        E.self_repair(tiny, ps, "L2H0", activations=store)
    no_answers = PromptSet.build(tiny, ["the cat", "the dog"])
    with pytest.raises(CircuitsError, match="has no answer_ids"):
        E.decompose(tiny, no_answers, activations=store)
    assert E.decompose(tiny, no_answers, token="top", activations=store).values.shape[1] == 2
    with pytest.raises(CircuitsError, match="token="):
        E.decompose(tiny, no_answers, token=[1, 2, 3], activations=store)


# -- planted mechanisms ------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_models(tmp_path_factory):
    cache = tmp_path_factory.mktemp("planted")
    return {n: pytest_circuits.load_model(str(PLANTED / n), cache_dir=cache, device="cpu")
            for n in planted.BUILDERS}


def _planted_set(model):
    n = len(planted.PROMPTS)
    return PromptSet.build(model, planted.PROMPTS, answers=[" " + planted.ANSWER] * n,
                           foils=[" " + planted.FOIL] * n, name="planted")


@pytest.mark.parametrize("name,compensates", [("backup", True), ("backup_control", False)])
def test_backup_detectors(planted_models, name, compensates):
    model, spec = planted_models[name], planted.BACKUP
    sr = E.self_repair(model, _planted_set(model), spec["primary"], kind="zero", positions=None,
                       activations=ActivationStore())
    frac = sr.restored_fraction(spec["backup"])
    if compensates:
        assert str(sr.ranking(1)[0][0]) == spec["backup"]
        assert frac.lower > 0.5                       # planted: 60%
    else:
        assert frac.upper < 0.05


def test_released_suppression_is_not_called_a_backup(planted_models):
    """The planted eraser L1H1 writes -0.95 x the writer's output; ablating the writer
    releases it. It makes up ~95% of the lost direct effect, but it is released
    suppression (its clean DE opposes the lost effect), not a backup head."""
    model, spec = planted_models["erasure"], planted.ERASURE
    sr = E.self_repair(model, _planted_set(model), spec["writer"], kind="zero", positions=None,
                       activations=ActivationStore())
    eraser = parse_component(spec["eraser"])
    assert sr.ranking(1)[0][0] == eraser                       # the largest make-up of the loss ...
    assert float(sr.clean_scores.of(eraser).mean()) < 0 < float(sr.delta_scores.of(eraser).mean())
    assert sr.role(eraser) == "released suppression"          # ... is released suppression
    assert sr.released_suppression(1)[0][0] == eraser
    assert all(c != eraser for c, _ in sr.backups(20))
    assert "released suppression" in sr.table()
    assert sr.restored_fraction(eraser).provenance["role"] == "released suppression"
    with pytest.raises(CircuitsError, match="kind='hydra'"):
        sr.ranking(3, kind="hydra")


def test_backup_role_of_the_planted_backup_head(planted_models):
    model, spec = planted_models["backup"], planted.BACKUP
    sr = E.self_repair(model, _planted_set(model), spec["primary"], kind="zero", positions=None,
                       activations=ActivationStore())
    backup = parse_component(spec["backup"])
    assert abs(float(sr.clean_scores.of(backup).mean())) < 1e-3        # silent in the clean run, then rises
    assert sr.role(backup) == "backup" and sr.backups(1)[0][0] == backup
    assert sr.released_suppression(5) == []
    # a zero-weight head does not move at all
    assert sr.role("L1H1") == "none"


def parse_component(s):
    from pytest_circuits.components import parse

    return parse(s)


# -- no-op ablations --------------------------------------------------------------------------
SHARED_LAST = ["the capital of France is", "the king of Italy is", "the festival in the city is",
               "the queen of Spain is"]


def _shared_last_set(model):
    n = len(SHARED_LAST)
    return PromptSet.build(model, SHARED_LAST, answers=[" " + planted.ANSWER] * n,
                           foils=[" " + planted.FOIL] * n, name="shared-last")


@pytest.mark.filterwarnings("ignore::pytest_circuits.errors.NoOpInterventionWarning")
def test_the_default_ablation_of_a_constant_output_is_flagged_not_read_as_no_backup(planted_models):
    """The planted primary head writes the same output on every prompt: no ablation built from the
    prompts (resample, resample_distinct) can remove it. Its 'compensation' is 0 by construction;
    a claim 'no backup head' on it must not pass, and neither may an empty list of backups."""
    model, spec = planted_models["backup"], planted.BACKUP
    ps = _shared_last_set(model)
    comp = E.compensation(model, ps, ablate=spec["primary"], by=spec["backup"], activations=ActivationStore())
    assert comp.name.startswith("ΔDE(L1H0 | resample_distinct(L0H0,pos=last,seed=0)")   # the default
    assert abs(comp.mean) < 1e-6 and comp.uninformative.startswith("uninformative: the ablation resample_distinct")
    with pytest.raises(MeasurementError, match="cannot assert upper bound < 0.1 .*changed nothing on 4 of 4"):
        comp.assert_below(0.1)                               # "no backup head": refused
    for sr in E.sweep(model, ps, [spec["primary"], "L0H1"], kind="resample", activations=ActivationStore()):
        assert sr.noop_prompts == 4 and sr.why_uninformative() is not None
        for call in (sr.backups, lambda: sr.ranking(3), lambda: sr.role(spec["backup"]), sr.released_suppression,
                     lambda: sr.assert_top(spec["backup"]), sr.delta_scores.ranking, sr.delta_scores.top,
                     lambda: sr.delta_scores.assert_top(spec["backup"])):
            with pytest.raises(MeasurementError, match="changed nothing on 4 of 4"):
                call()
        assert "no ranking: the ablation changed nothing" in sr.table()
        assert all(m.uninformative for m in (sr.total_effect(), sr.own_effect(), sr.norm_effect()))
        assert not sr.direct_effect(spec["backup"]).flags          # the clean run's: no ablation in it
        # the per-component scores under the ablation carry the same flag as compensation()
        flagged = sr.delta_scores.measure(spec["backup"], record=False)
        assert flagged.uninformative and flagged.flags == sr.compensation(spec["backup"]).flags
        assert not sr.clean_scores.measure(spec["backup"], record=False).flags
    with pytest.raises(MeasurementError, match="undefined"):
        E.dla_vs_total(model, ps, spec["primary"], activations=ActivationStore())


def test_an_ablation_that_acts_finds_the_backup_on_the_same_prompts(planted_models):
    model, spec = planted_models["backup"], planted.BACKUP
    ps = _shared_last_set(model)
    sr = E.self_repair(model, ps, spec["primary"], kind="zero", positions=None, activations=ActivationStore())
    assert sr.noop_prompts == 0 and sr.why_uninformative() is None
    comp = sr.compensation(spec["backup"])
    assert not comp.flags
    with pytest.raises(AssertionError, match="expected upper bound < 0.1"):
        comp.assert_below(0.1)                               # "no backup head" fails, as it should
    assert sr.restored_fraction(spec["backup"]).lower > 0.5  # planted: 60%
    assert sr.backups(1)[0][0] == parse_component(spec["backup"])
    # zero-ablating a head whose weights are all 0 removes nothing: flagged as well
    dead = E.self_repair(model, ps, "L0H1", kind="zero", positions=None, activations=ActivationStore())
    assert dead.noop_prompts == len(ps) and dead.compensation(spec["backup"]).uninformative


@pytest.mark.filterwarnings("ignore::pytest_circuits.errors.NoOpInterventionWarning")
def test_a_partial_no_op_is_flagged_and_resample_distinct_avoids_it(tiny):
    dups = ["the cat sat on the mat", "the cat sat on the mat", "a king went to the city",
            "a king went to the city", "the dog sat on the bag", "the dog sat on the bag"]
    ps = PromptSet.build(tiny, dups, answers=[" the"] * len(dups), name="duplicates")
    perm = I.derangement(len(ps), 1)
    twins = [i for i in range(len(ps)) if dups[int(perm[i])] == dups[i]]
    assert twins                                             # seed 1 swaps at least one pair of twins
    store = ActivationStore()
    plain = E.self_repair(tiny, ps, "L0H2", kind="resample", seed=1, activations=store)
    assert [i for i, u in enumerate(plain.unchanged) if u] == twins
    # on those prompts the ablated run is the clean run: every change is 0 there
    assert float(plain.delta_de[:, twins].abs().max()) < 1e-6 and float(plain.total[twins].abs().max()) < 1e-6
    m = plain.compensation("L1H0")
    assert m.uninformative.startswith(f"partly uninformative: the ablation resample(L0H2,pos=last,seed=1) "
                                      f"changed nothing on {len(twins)} of 6")
    with pytest.raises(MeasurementError):
        m.assert_within(-100.0, 100.0)                       # 0 itself passes: refused
    plain.ranking(3)                                         # rankings stay (the no-op rows are 0 in every row)
    assert plain.delta_scores.measure("L1H0").flags == m.flags and len(plain.delta_scores.top(3)) == 3
    distinct = E.self_repair(tiny, ps, "L0H2", seed=1, activations=store)
    assert distinct.ablation.key == "resample_distinct(L0H2,pos=last,seed=1)"
    assert distinct.noop_prompts == 0 and not distinct.compensation("L1H0").flags
    # where plain resample already took a differing prompt, both are the same ablation there
    acting = [i for i in range(len(ps)) if i not in twins]
    torch.testing.assert_close(distinct.total[acting], plain.total[acting])
    d = E.dla_vs_total(tiny, ps, "L0H2", kind="resample", seed=1, activations=store)
    assert all(x.uninformative for x in (d.dla, d.causal, d.overstatement))
