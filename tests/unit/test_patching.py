"""Activation and path patching checked against TransformerLens's sweeps and residual identities."""

import pytest
import torch

from pytest_circuits import ActivationStore, CircuitsError, tasks
from pytest_circuits.techniques import circuits as C
from pytest_circuits import hooks as H
from pytest_circuits.techniques import patching as P
@pytest.fixture(scope="module")
def years2(tiny_two_digit):
    return tasks.greater_than(tiny_two_digit, n=10, seed=1)


@pytest.fixture(scope="module")
def years(tiny):
    return tasks.greater_than(tiny, n=10, seed=2)


@pytest.fixture
def store():
    return ActivationStore(batch_size=4)


def test_head_sweep_matches_transformer_lens_activation_patching(tiny_two_digit, years2, store):
    """TL patches a cache into a run of other tokens: give it our clean tokens and the
    corrupted run's cache, and it computes our noising sweep."""
    from transformer_lens import patching as tlp

    model, task = tiny_two_digit, years2
    assert len(set(task.prompts.lengths)) == 1
    sw = P.sweep(model, task, "attn0 attn1 mlp0 mlp1", activations=store)
    ids = torch.tensor(task.digit_ids)
    yy = torch.tensor(task.yy)
    grid = torch.arange(100).unsqueeze(0)

    def pd(logits):
        p = logits[:, -1].double().cpu().softmax(-1)[:, ids]      # the model may be on a GPU
        return ((p * (grid > yy.unsqueeze(1))).sum(1) - (p * (grid <= yy.unsqueeze(1))).sum(1)).mean()

    dev = model.cfg.device
    _, corrupted_cache = model.run_with_cache(task.prompts.corrupted.tokens.to(dev))
    with torch.no_grad():
        tl = tlp.get_act_patch_attn_head_out_all_pos(model, task.prompts.tokens.to(dev), corrupted_cache, pd)
        tl_mlp = tlp.get_act_patch_mlp_out(model, task.prompts.tokens.to(dev), corrupted_cache, pd)
    for layer in range(2):
        for h in range(4):
            assert float(sw.of(C.Head(layer, h)).mean()) + sw.clean == pytest.approx(float(tl[layer, h]), abs=1e-5)
            assert sw.measure(C.Head(layer, h), record=False).mean == pytest.approx(float(tl[layer, h]) - sw.clean,
                                                                                   abs=1e-5)
    # TL's MLP sweep is per position: patching every position at once is not their sum,
    # but patching only where tokens differ onwards equals patching everywhere.
    pos = P.position_sweep(model, task, activations=store)["mlp"]
    first = P.differing_positions(task)[0]
    for layer in range(2):
        for p in P.differing_positions(task):
            got = float(pos.of((C.MLP(layer), p)).mean()) + sw.clean
            assert got == pytest.approx(float(tl_mlp[layer, p]), abs=1e-5)
        for p in range(first):   # identical tokens so far: identical activations, no effect
            assert float(tl_mlp[layer, p]) == pytest.approx(sw.clean, abs=1e-6)


def test_sweep_reports_normalized_effects_with_intervals(tiny, years, store):
    sw = P.sweep(tiny, years, activations=store)
    assert set(sw.components) == set(C.nodes(tiny))
    c, mean = sw.top(1, order="abs")[0]
    assert mean == pytest.approx(float(sw.of(c).mean()))
    val = sw.normalized(c)
    assert val == pytest.approx(mean / (sw.corrupted - sw.clean))
    g = sw.grid(mlp=True)
    assert g.shape == (2, 5) and g[c.layer, getattr(c, "head", 4)] == pytest.approx(mean)
    for k in sw.significant():
        m = sw.measure(k, record=False)
        assert m.lower > 0 or m.upper < 0
    assert "activation patching" in sw.table() and sw.to_dict()["effects"]


def test_path_to_logits_adds_only_the_senders_change_to_the_final_residual(tiny, years, store):
    L = tiny.cfg.n_layers
    last = H.resid_post(L - 1)
    for sender in ("L0H2", "mlp0", "L1H1"):
        s, = C.expand(tiny, sender)
        iv = P.path_intervention(tiny, s)
        for ps in years.prompt_sets:
            clean = store.get(tiny, ps, [last])[last]
            got = store.get(tiny, ps, [last], iv)[last]
            patched = store.get(tiny, ps, [last], C.removal(tiny, years, [s], "patch"))[last]
            hook = H.output(s)
            delta = store.get(tiny, ps.corrupted, [hook])[hook] - store.get(tiny, ps, [hook])[hook]
            if isinstance(s, C.Head):
                delta = delta[:, :, s.head] @ tiny.W_O[s.layer, s.head]
            torch.testing.assert_close(got, clean + delta, atol=2e-5, rtol=1e-5)
            if s.layer == L - 1 and isinstance(s, C.Head):
                # Nothing but the last MLP is downstream: the full patch differs by its change only.
                assert not torch.allclose(got, patched)


def test_path_through_every_downstream_node_is_the_patch_minus_the_direct_path(tiny, years, store):
    """resid_final(patch s) = resid_final(path s -> all downstream) + (s_corrupted - s_clean)."""
    L = tiny.cfg.n_layers
    last = H.resid_post(L - 1)
    s, = C.expand(tiny, "L0H1")
    downstream = [c for c in C.nodes(tiny) if c.layer > 0 or isinstance(c, C.MLP)]
    iv = P.path_intervention(tiny, s, downstream)
    ps = years.prompts
    through = store.get(tiny, ps, [last], iv)[last]
    full = store.get(tiny, ps, [last], C.removal(tiny, years, [s], "patch"))[last]
    z = store.get(tiny, ps.corrupted, [H.z(0)])[H.z(0)][:, :, 1] - store.get(tiny, ps, [H.z(0)])[H.z(0)][:, :, 1]
    torch.testing.assert_close(full, through + z @ tiny.W_O[0, 1], atol=2e-5, rtol=1e-5)


def test_path_to_a_receiver_changes_only_that_receiver(tiny, years, store):
    s, r = C.expand(tiny, "L0H1 L1H2")
    iv = P.path_intervention(tiny, s, [r])
    ps = years.prompts
    z1 = store.get(tiny, ps, [H.z(1)], iv)[H.z(1)]
    clean = store.get(tiny, ps, [H.z(1)])[H.z(1)]
    torch.testing.assert_close(z1[:, :, [0, 1, 3]], clean[:, :, [0, 1, 3]])
    assert not torch.allclose(z1[:, :, 2], clean[:, :, 2])
    # By hand: L1H2 reading the clean residual plus the sender's change only.
    delta = store.get(tiny, ps.corrupted, [H.z(0)])[H.z(0)][:, :, 1] - store.get(tiny, ps, [H.z(0)])[H.z(0)][:, :, 1]
    delta = delta @ tiny.W_O[0, 1].detach().cpu()
    grabbed = {}

    def add(t, hook):
        return t + delta[:, : t.shape[1]].to(t.device, t.dtype)

    def grab(t, hook):
        grabbed["z"] = t.detach().clone()

    with torch.no_grad():
        tiny.run_with_hooks(ps.tokens.to(tiny.cfg.device), fwd_hooks=[(H.resid_pre(1), add), (H.z(1), grab)])
    grabbed["z"] = grabbed["z"].cpu()
    torch.testing.assert_close(z1[:, :, 2], grabbed["z"][:, :, 2], atol=1e-5, rtol=1e-5)
    with pytest.raises(CircuitsError, match="downstream"):
        P.path_intervention(tiny, r, [s])
    m = P.path_patch(tiny, years, "L0H1", ["L1H2"], activations=store)
    assert m.n == len(years) and "L0H1->{L1H2}" in m.name


def test_discover_keeps_what_path_patching_finds(tiny, years, store):
    d = P.discover(tiny, years, threshold=0.2, activations=store)
    first = d.rounds[0]
    assert set(d.found[0]) == set(first.significant(0.2))
    assert all(e[1] == "logits" for e in d.circuit.edges if e[0] in {str(c) for c in d.found[0]})
    assert set(d.circuit.components) == {c for f in d.found for c in f}
    with pytest.raises(CircuitsError, match="threshold"):
        P.discover(tiny, years, threshold=1.5)


def test_attribution_screen_sums_transformer_lens_node_scores(tiny_two_digit, years2, store):
    from transformer_lens.tools.analysis import EdgeAttributionConfig, attribution_patch

    model, task = tiny_two_digit, years2
    scr = P.attribution_screen(model, task, n=3)
    assert scr.n == 3 and set(scr.components) == set(C.nodes(model))
    want = 0.0
    for i in range(3):
        res = attribution_patch(model, task.prompts.tokens[i: i + 1], task.prompts.corrupted.tokens[i: i + 1],
                                task.logit_metric(i), EdgeAttributionConfig(granularity="node"))
        want += sum(s for node, s in res.node_scores.items()
                    if node.kind == "attn_head_out" and (node.layer, node.head) == (1, 2))
    assert float(scr.of(C.Head(1, 2)).mean()) == pytest.approx(want / 3, abs=1e-6)
    exact = P.sweep(model, task, [r.component for r in scr.top(6, order="abs")], activations=store)
    agree = scr.agreement(exact, k=3)
    assert -1.0 <= agree.spearman <= 1.0 and agree.k == 3 and agree.n == 6
    assert "spearman" in repr(agree)


def test_logit_metric_is_the_task_metric_for_two_digit_years(tiny_two_digit, years2, store):
    """In two-digit mode the differentiable metric is PD itself."""
    pd = years2.scores(tiny_two_digit, activations=store)
    with torch.no_grad():
        for i in range(3):
            logits = tiny_two_digit(years2.prompts.tokens[i: i + 1])
            assert float(years2.logit_metric(i)(logits)) == pytest.approx(float(pd[i]), abs=1e-5)


def test_rank_agreement_is_spearman():
    import numpy as np

    a = np.array([0.1, 0.5, 0.3, 0.3])
    r = P._ranks(a)
    assert list(r) == [0.0, 3.0, 1.5, 1.5]
