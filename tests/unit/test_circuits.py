"""Circuit checks (faithfulness, completeness, minimality, robustness) against identities,
hand computations and TransformerLens's own faithfulness."""

import pytest
import torch

from pytest_circuits import ActivationStore, CircuitsError, tasks
from pytest_circuits.techniques import circuits as C
from pytest_circuits import hooks as H


@pytest.fixture(scope="module")
def years(tiny):
    return tasks.greater_than(tiny, n=12, seed=3)


@pytest.fixture
def store():
    return ActivationStore(batch_size=5)


def _final_logits(model, resid_last):
    """Logits from final-residual vectors [n, d] (the folded final norm, then W_U)."""
    with torch.no_grad():
        return model.unembed(model.ln_final(resid_last.unsqueeze(1))).squeeze(1)


def _last(t, ps):
    return t[torch.arange(len(ps)), ps.last]


def _all(model):
    return " ".join(f"attn{layer} mlp{layer}" for layer in range(model.cfg.n_layers))


# -- the circuit object ---------------------------------------------------------------------

def test_circuit_parsing_expands_layers_and_rejects_what_is_not_a_node(tiny):
    c = C.Circuit.of(tiny, "attn1 mlp0 L0H2", name="x")
    assert [str(x) for x in c] == ["L0H2", "mlp0", "L1H0", "L1H1", "L1H2", "L1H3"]
    assert len(c.complement(tiny)) == len(C.nodes(tiny)) - 6
    assert str(c.without(tiny, "L1H0")) == "x-: L0H2 mlp0 L1H1 L1H2 L1H3"
    with pytest.raises(CircuitsError, match="embedding is always part"):
        C.Circuit.of(tiny, "embed L0H1")
    with pytest.raises(CircuitsError, match="neuron-level"):
        C.Circuit.of(tiny, "L0N3")
    with pytest.raises(CircuitsError, match="not in x"):
        c.without(tiny, "L0H0")


def test_circuit_round_trips_through_json(tiny, tmp_path):
    c = C.Circuit.of(tiny, "L0H1 mlp1", edges=[("L0H1", "mlp1"), ("mlp1", "logits")], name="saved")
    back = C.Circuit.load(tiny, c.save(tmp_path / "c.json", note="x"))
    assert back == c


# -- exactness invariants -------------------------------------------------------------------

@pytest.mark.parametrize("kind", C.ABLATIONS)
def test_full_circuit_reproduces_the_clean_output(tiny, years, store, kind):
    full = C.Circuit.of(tiny, _all(tiny), name="everything")
    assert full.complement(tiny) == ()
    iv = C.removal(tiny, years, full.complement(tiny), kind)
    for ps in years.prompt_sets:
        clean = store.get(tiny, ps, [H.LOGITS_LAST])[H.LOGITS_LAST].double().log_softmax(-1)
        kept = store.get(tiny, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST].double().log_softmax(-1)
        kl = (clean.exp() * (clean - kept)).sum(-1)
        assert float(kl.max()) < 1e-6
    f = C.faithfulness(tiny, years, full, kind=kind, activations=store)
    assert f.recovered.mean == pytest.approx(1.0, abs=1e-9)


def _empty_by_hand(model, ps, kind, store):
    """The final residual at each prompt's last token when every head and MLP is removed,
    from clean activations only (an independent computation)."""
    L = model.cfg.n_layers
    embed = _last(store.get(model, ps, [H.EMBED])[H.EMBED], ps).double()
    if kind == "zero":
        return embed
    if kind == "patch":
        corr = ps.corrupted
        resid = _last(store.get(model, corr, [H.resid_post(L - 1)])[H.resid_post(L - 1)], corr).double()
        return resid - _last(store.get(model, corr, [H.EMBED])[H.EMBED], corr).double() + embed
    if kind == "resample":
        from pytest_circuits.interventions import derangement

        perm = derangement(len(ps), 0)
        resid = _last(store.get(model, ps, [H.resid_post(L - 1)])[H.resid_post(L - 1)], ps).double()
        return resid[perm] - embed[perm] + embed
    assert kind == "mean"   # per-position mean of every output over the prompts being run
    outs = sum(store.get(model, ps, [h])[h].double().mean(0)
               for layer in range(L) for h in (H.attn_out(layer), H.mlp_out(layer)))
    return embed + outs[torch.tensor(ps.lengths) - 1]


@pytest.mark.parametrize("kind", C.ABLATIONS)
def test_empty_circuit_reproduces_the_ablated_output(tiny, years, store, kind):
    iv = C.removal(tiny, years, C.nodes(tiny), kind)
    for ps in years.prompt_sets:
        got = store.get(tiny, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST].double()
        hand = _final_logits(tiny, _empty_by_hand(tiny, ps, kind, store).float()).double()
        torch.testing.assert_close(got, hand, atol=1e-3, rtol=0)
        if kind == "patch":   # the last token is the same in both: exactly the corrupted run
            corr = store.get(tiny, ps.corrupted, [H.LOGITS_LAST])[H.LOGITS_LAST].double()
            torch.testing.assert_close(got, corr, atol=1e-3, rtol=0)


def test_faithfulness_numbers_follow_their_definitions(tiny, years, store):
    circ = C.Circuit.of(tiny, "L0H1 L1H2 mlp1", name="some")
    f = C.faithfulness(tiny, years, circ, activations=store)
    full = years.scores(tiny, activations=store)
    torch.testing.assert_close(f.full, full)
    empty = years.scores(tiny, activations=store, corrupted=True)      # patch: empty == corrupted
    torch.testing.assert_close(f.empty, empty, atol=1e-5, rtol=0)
    kept = years.scores(tiny, activations=store,
                        intervention=C.removal(tiny, years, circ.complement(tiny), "patch"))
    want = float((kept - empty).mean() / (full - empty).mean())
    assert f.recovered.mean == pytest.approx(want, abs=1e-6)
    assert f.fraction.mean == pytest.approx(float(kept.mean() / full.mean()), abs=1e-6)
    assert f.recovered.lower <= f.recovered.mean <= f.recovered.upper
    assert "recovered" in repr(f) and "some" in repr(f)


def test_completeness_and_minimality_follow_their_definitions(tiny, years, store):
    circ = C.Circuit.of(tiny, "L0H1 L1H2 mlp1", name="some")
    comp = C.completeness(tiny, years, circ, subsets=[["L1H2"], ["L0H1", "mlp1"]], activations=store)
    full = years.scores(tiny, activations=store)
    empty = C.faithfulness(tiny, years, circ, activations=store).empty

    def m(remove):
        return years.scores(tiny, activations=store, intervention=C.removal(tiny, years, remove, "patch"))

    comps = C.expand(tiny, "L0H1 L1H2 mlp1")
    others = list(circ.complement(tiny))
    h12, = C.expand(tiny, "L1H2")
    gap = float((m(others + [h12]) - m([h12])).mean() / (full - empty).mean())
    assert comp.gaps[0].mean == pytest.approx(gap, abs=1e-6)
    mini = C.minimality(tiny, years, circ, activations=store)
    kept = m(others)
    for v in comps:
        cost = float((kept - m(others + [v])).mean() / (full - empty).mean())
        assert mini.costs[v].mean == pytest.approx(cost, abs=1e-6)
    # The whole model is complete and each gap of it is 0.
    everything = C.Circuit.of(tiny, _all(tiny))
    assert all(abs(g.mean) < 1e-9 for g in C.completeness(tiny, years, everything, n_random=3,
                                                           activations=store).gaps)


def test_completeness_and_minimality_assertions_explain_failures(tiny, years, store):
    circ = C.Circuit.of(tiny, "L0H1", name="one-head")
    comp = C.completeness(tiny, years, circ, activations=store)
    with pytest.raises(AssertionError, match="incomplete under patch ablation"):
        comp.assert_gaps_within(1e-9)
    mini = C.minimality(tiny, years, circ, activations=store)
    with pytest.raises(AssertionError, match="L0H1: cost"):
        mini.assert_each_above(10.0)
    with pytest.raises(CircuitsError, match="does not"):
        C.completeness(tiny, years, circ, subsets=[["L1H1"]], activations=store)


def test_robustness_matrix_reports_each_kind_and_flags_dependence(tiny, years, store):
    circ = C.Circuit.of(tiny, "attn0 mlp0 mlp1", name="most")
    rob = C.robustness(tiny, years, circ, kinds=("patch", "zero"), faithful_above=0.0, gaps_within=None,
                       costs_above=None, activations=store)
    f_patch = C.faithfulness(tiny, years, circ, kind="patch", activations=store).recovered
    f_zero = C.faithfulness(tiny, years, circ, kind="zero", activations=store).recovered
    assert rob.cells["faithfulness"]["patch"].value == f_patch
    assert rob.holds("faithfulness", "zero") == (f_zero.lower > 0.0)
    assert ("faithfulness" in rob.depends_on_ablation) == ((f_patch.lower > 0) != (f_zero.lower > 0))
    table = rob.table()
    assert "patch" in table and "zero" in table and "verdict depends on the ablation" in table
    with pytest.raises(CircuitsError, match="kinds"):
        C.robustness(tiny, years, circ, kinds=("shuffle",))


def test_bad_inputs_are_explained(tiny, years, store):
    with pytest.raises(CircuitsError, match="kind"):
        C.faithfulness(tiny, years, "L0H1", kind="knockout")
    with pytest.raises(CircuitsError, match="a task with prompts"):
        C.faithfulness(tiny, object(), "L0H1")
    with pytest.raises(CircuitsError, match="empty circuit"):
        C.completeness(tiny, years, C.Circuit.of(tiny, []))


# -- agreement with TransformerLens's faithfulness -------------------------------------------

def _tl_edges(model, clean, corrupt, metric, circuit):
    """TransformerLens's edge graph for this prompt length, keeping every edge whose writer is
    the embedding or a node of ``circuit`` (node ablation = ablating all their out-edges)."""
    from transformer_lens.tools.analysis import EdgeAttributionConfig, attribution_patch

    graph = attribution_patch(model, clean, corrupt, metric, EdgeAttributionConfig(granularity="edge"))
    keep = {(c.layer, c.head) if isinstance(c, C.Head) else ("mlp", c.layer) for c in circuit}
    out = []
    for w, r in graph.edge_scores:
        if w.kind == "embed" or (w.kind == "attn_head_out" and (w.layer, w.head) in keep) or \
                (w.kind == "mlp_out" and ("mlp", w.layer) in keep):
            out.append((w, r))
    return out


@pytest.mark.parametrize("spec", ["L0H1 L1H2 mlp1", "attn1 mlp0"])
def test_faithfulness_agrees_with_transformer_lens(tiny_two_digit, spec):
    """Same circuit, same pair, 'corrupt' (= patch) ablation: TL's recovered fraction."""
    from transformer_lens.tools.analysis import FaithfulnessConfig, faithfulness

    model = tiny_two_digit
    store = ActivationStore()
    circ = C.Circuit.of(model, spec)
    for row in [("war", 17, 32), ("siege", 12, 71)]:
        one = tasks.from_rows(model, [row], name=f"pair-{row[0]}")
        assert one.mode == "two_digit"
        ours = C.faithfulness(model, one, circ, activations=store)
        clean, corrupt = one.prompts.tokens, one.prompts.corrupted.tokens
        metric = one.logit_metric(0)
        tl = faithfulness(model, clean, corrupt, metric, _tl_edges(model, clean, corrupt, metric, circ),
                          config=FaithfulnessConfig(ablation="corrupt"))
        assert ours.recovered.mean == pytest.approx(tl.recovered, abs=1e-4)
        assert float(ours.full[0]) == pytest.approx(tl.full_metric, abs=1e-5)
        assert float(ours.empty[0]) == pytest.approx(tl.corrupt_metric, abs=1e-5)


def test_mean_ablated_circuit_agrees_with_transformer_lens(tiny_two_digit):
    """TL's mean ablation is the per-position mean over mean_tokens: our 'mean' with that reference."""
    from transformer_lens.tools.analysis import FaithfulnessConfig, faithfulness

    model = tiny_two_digit
    store = ActivationStore()
    circ = C.Circuit.of(model, "L0H0 L1H3 mlp0")
    one = tasks.from_rows(model, [("war", 17, 32)], name="pair")
    ref = tasks.from_rows(model, [("treaty", 13, 55), ("reign", 16, 8), ("siege", 14, 90)], name="ref").prompts
    ours = C.faithfulness(model, one, circ, kind="mean", reference=ref, activations=store)
    clean, corrupt = one.prompts.tokens, one.prompts.corrupted.tokens
    metric = one.logit_metric(0)
    tl = faithfulness(model, clean, corrupt, metric, _tl_edges(model, clean, corrupt, metric, circ),
                      config=FaithfulnessConfig(ablation="mean"), mean_tokens=ref.tokens)
    tl_kept = tl.recovered * (tl.full_metric - tl.corrupt_metric) + tl.corrupt_metric
    assert float(ours.kept[0]) == pytest.approx(tl_kept, abs=1e-5)


def test_last_position_circuits_touch_only_the_last_position(tiny, years, store):
    circ = C.Circuit.of(tiny, "L0H1 mlp1")
    iv = C.removal(tiny, years, circ.complement(tiny), "patch", positions="last")
    ps = years.prompts
    got = store.get(tiny, ps, [H.z(1)], iv)[H.z(1)]
    clean = store.get(tiny, ps, [H.z(1)])[H.z(1)]
    corr = store.get(tiny, ps.corrupted, [H.z(1)])[H.z(1)]
    rows, last = torch.arange(len(ps)), ps.last
    torch.testing.assert_close(got[rows, last], corr[rows, last])
    before = torch.arange(got.shape[1]).unsqueeze(0) < last.unsqueeze(1)
    torch.testing.assert_close(got[before], clean[before])
    f = C.faithfulness(tiny, years, circ, positions="last", activations=store)
    assert f.recovered.provenance["positions"] == "last"
    # Removing everything at the last position leaves the last residual of the corrupted run.
    torch.testing.assert_close(f.empty, years.scores(tiny, activations=store, corrupted=True), atol=1e-5, rtol=0)
    with pytest.raises(CircuitsError, match="positions"):
        C.faithfulness(tiny, years, circ, positions=(1, 2))
