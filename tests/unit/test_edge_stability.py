"""Stability of edge discovery under resampling (#26 item 3): inclusion frequencies with
Clopper-Pearson intervals over the resamples, Jaccard stability, several tasks.

Checked against exact answers: synthetic per-prompt scores whose inclusion probability under the
bootstrap is known by enumerating every resample, the planted edge model (every prompt alike:
frequency 1, Jaccard 1) and its control (nothing discovered: Jaccard n/a); the resampling runs
no forward of the model; the frequency interval's coverage is measured by simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pytest_circuits import ActivationStore, planted, stats
from pytest_circuits.errors import CircuitsError, MeasurementError
from pytest_circuits.models import load_model
from pytest_circuits.techniques import edge_stability as S
from pytest_circuits.techniques import edges as E

EDGES = [E.Edge.parse(e) for e in ("embed->L0H0.v", "L0H0->L1H0.v", "L1H0->logits")]


def synthetic(values, totals=None, task="synthetic"):
    vals = np.asarray(values, dtype=np.float64)
    n = vals.shape[1]
    edges = tuple(EDGES[: vals.shape[0]])
    totals = np.ones(n) if totals is None else np.asarray(totals, dtype=np.float64)
    return E.EdgeScores(components=edges, values=vals, attribution="eap", steps=1, task=task, totals=totals,
                        clean=np.ones(n))


def half_and_half(n):
    """Edge 0 scores 1 on every prompt (always kept); edge 1 scores 1 on the first half of the
    prompts and 0 on the rest: at threshold 1/2 it is kept exactly when a resample draws at
    least half its prompts from the first half (total effect 1 on every prompt)."""
    return [[1.0] * n, [1.0] * (n // 2) + [0.0] * (n - n // 2)]


def enumerated_probability(vals, totals, threshold):
    """P(edge 1 is kept) over all n^n resamples, each counted once (plain loops)."""
    n = len(totals)
    kept = 0
    for idx in itertools.product(range(n), repeat=n):
        mean = sum(vals[1][i] for i in idx) / n
        total = sum(totals[i] for i in idx) / n
        kept += abs(mean) >= threshold * abs(total) and mean != 0
    return kept / n ** n


def test_a_borderline_edge_has_a_frequency_strictly_inside_and_its_interval_covers_the_truth():
    n = 6
    vals = half_and_half(n)
    p = enumerated_probability(vals, [1.0] * n, 0.5)
    # the same number by the binomial: K prompts of the first half among n draws, P(K >= n/2)
    assert p == pytest.approx(sum(math.comb(n, k) for k in range(n // 2, n + 1)) / 2 ** n)
    st = S.stability(synthetic(vals), threshold=0.5, resamples=200, seed=3)
    f = st.frequency(EDGES[1])
    assert 0 < f.mean < 1
    assert f.lower <= p <= f.upper, (f, p)
    assert (f.lower, f.upper) == pytest.approx(stats.clopper_pearson(round(f.mean * 200), 200, 0.95))
    assert st.frequency(EDGES[0]).mean == 1.0
    # independent recomputation of every resample: the same draws, plain loops, the rule as stated
    rng = np.random.default_rng(3)
    idx = rng.integers(0, n, size=(200, n))
    by_hand = [abs(sum(vals[1][i] for i in row) / n) >= 0.5 * 1.0 and sum(vals[1][i] for i in row) > 0
               for row in idx]
    assert f.mean == pytest.approx(sum(by_hand) / 200)
    # Jaccard of the disjoint pairs by hand: {0} or {0, 1} per resample
    sets = [{0, 1} if k else {0} for k in by_hand]
    pairs = [len(sets[2 * i] & sets[2 * i + 1]) / len(sets[2 * i] | sets[2 * i + 1]) for i in range(100)]
    assert st.jaccard.mean == pytest.approx(np.mean(pairs))
    assert st.jaccard.n == 100 and st.undefined == 0
    assert st.jaccard.lower < st.jaccard.mean < st.jaccard.upper
    assert st.stable(0.99) == (EDGES[0],)
    assert set(st.stable(0.1)) == {EDGES[0], EDGES[1]}
    d = st.to_dict()
    assert d["frequencies"][str(EDGES[1])]["frequency"] == f.mean and d["resamples"] == 200
    assert "Clopper-Pearson" in repr(st) and str(EDGES[1]) in repr(st)


def test_the_rule_is_edge_circuits_and_is_seeded():
    vals = [[0.3, 0.3, 0.3, 0.3], [0.06, 0.0, 0.06, 0.0], [-0.2, -0.2, -0.2, -0.2]]
    sc = synthetic(vals)
    # full sample: means 0.3, 0.03, -0.2 against a total of 1: threshold 0.05 keeps edges 0 and 2
    assert list(E.discover(sc.values, sc.totals, 0.05)) == [True, False, True]
    a = S.stability(sc, threshold=0.05, resamples=30, seed=1)
    b = S.stability(sc, threshold=0.05, resamples=30, seed=1)
    np.testing.assert_array_equal(a.kept, b.kept)
    assert a.frequency(EDGES[0]).mean == a.frequency(EDGES[2]).mean == 1.0
    assert 0 < a.frequency(EDGES[1]).mean < 1            # kept when a resample draws the 0.06s more often
    with pytest.raises(CircuitsError, match="threshold"):
        E.discover(sc.values, sc.totals, 0.0)
    with pytest.raises(CircuitsError, match="resamples"):
        S.stability(sc, resamples=1)
    with pytest.raises(CircuitsError, match="EdgeSweep"):
        S.stability([1, 2])


def test_no_effect_discovers_nothing_and_the_jaccard_is_not_available():
    sc = synthetic([[1e-9, -1e-9, 0.0], [0.0, 0.0, 0.0]], totals=[1e-12, 0.0, -1e-12])
    sc = E.EdgeScores(components=sc.edges, values=sc.values, attribution="eap", steps=1, task="none", totals=sc.totals,
                      clean=np.full(3, 2.0))
    st = S.stability(sc, resamples=20)
    assert not st.kept.any()
    assert st.jaccard is None and st.jaccard_all_pairs is None and st.undefined == st.pairs == 10
    assert "n/a" in repr(st) and "no edge discovered" in repr(st)
    with pytest.raises(MeasurementError, match="n/a"):
        st.assert_jaccard_above(0.5)
    f = st.frequency(EDGES[0])
    assert f.mean == 0 and f.upper == pytest.approx(stats.clopper_pearson(0, 20, 0.95)[1])
    assert st.to_dict()["jaccard"] is None
    # one empty set against a non-empty one overlaps by 0, two empty ones are undefined
    assert S.jaccard({1}, set()) == 0 and S.jaccard(set(), set()) is None


def test_the_frequency_interval_covers_the_inclusion_probability():
    """Seeded simulation: the prompts' values are fixed, the bootstrap resamples are draws, so
    each resample keeps the borderline edge with the probability enumerated over every resample
    (p = 0.656 at n = 6); over 400 seeds, how often does the 95% interval from B = 20 cover p?"""
    n = 6
    vals = half_and_half(n)
    p = enumerated_probability(vals, [1.0] * n, 0.5)
    sc = synthetic(vals)
    covered = []
    for seed in range(400):
        f = S.stability(sc, threshold=0.5, resamples=20, seed=seed, record=False).frequency(EDGES[1], record=False)
        covered.append(f.lower <= p <= f.upper)
    coverage = float(np.mean(covered))
    print(f"inclusion p={p:.4f}: Clopper-Pearson 95% coverage at B=20 over 400 seeds: {coverage:.3f}")
    assert coverage >= 0.93          # exact intervals are conservative: at least the level, up to noise


def test_several_tasks_give_the_overlap_across_tasks():
    same = synthetic(half_and_half(6), task="a")
    other = synthetic([[1.0] * 6, [0.0] * 6], task="b")         # edge 1 never kept on task b
    st = S.stability([same, other], threshold=0.5, resamples=20, seed=0)
    assert st.tasks == ("a", "b") and len(st.per_task) == 2 and st.kept.shape == (40, 2)
    fa = st.frequency(EDGES[1], task="a").mean
    assert st.frequency(EDGES[1], task="b").mean == 0
    assert st.frequency(EDGES[1]).mean == pytest.approx(fa / 2)
    # per resample: {0} against {0} (1) or {0, 1} against {0} (1/2)
    want = np.mean([1.0 if not k else 0.5 for k in st.per_task[0].kept[:, 1]])
    assert st.jaccard.mean == pytest.approx(want) and st.jaccard.n == 20
    assert "across tasks" in repr(st)
    with pytest.raises(CircuitsError, match="same edges"):
        S.stability([same, synthetic([[1.0] * 6])])


# -- inclusion on new prompts ------------------------------------------------------------------

def normal_phi(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def test_new_prompts_is_the_margins_t_statistic_through_phi():
    """Recomputed by hand: per prompt the margin of discovery's rule, its t statistic, Phi."""
    rng = np.random.default_rng(5)
    n, t = 12, 0.2
    totals = -(1.0 + 0.3 * rng.random(n))                     # the corruption lowers the metric
    vals = np.stack([-0.45 + 0.2 * rng.standard_normal(n),      # kept with a negative mean
                     0.21 + 0.2 * rng.standard_normal(n),       # borderline, positive
                     np.zeros(n)])                              # never kept: no mean at all
    st = S.stability(synthetic(vals, totals), threshold=t, resamples=20, seed=0)
    q = stats.t_ppf(0.975, n - 1)
    for e in range(2):
        # |mean v| >= t |mean T|, T < 0: for a negative mean, mean(-v_i + t T_i) >= 0
        sign = 1.0 if vals[e].mean() > 0 else -1.0
        d = [sign * v + t * tt for v, tt in zip(vals[e], totals)]
        mu = sum(d) / n
        sd = math.sqrt(sum((x - mu) ** 2 for x in d) / (n - 1))
        lam = math.sqrt(n) * mu / sd
        other = [-sign * v + t * tt for v, tt in zip(vals[e], totals)]
        mo = sum(other) / n
        lo = math.sqrt(n) * mo / math.sqrt(sum((x - mo) ** 2 for x in other) / (n - 1))
        m = st.new_prompts(EDGES[e])
        assert m.mean == pytest.approx(normal_phi(lam) + normal_phi(lo), abs=1e-12)
        assert m.lower == pytest.approx(normal_phi(lam - q * math.sqrt(1 + lam ** 2 / (2 * (n - 1)))), abs=1e-12)
        assert m.lower < m.mean < m.upper <= 1.0
        assert m.n == n and "new sample" in m.provenance["what"]
        assert m.values == () and m.std == m.sem == 0.0           # derived: no per-prompt values
    none = st.new_prompts(EDGES[2])
    assert none.mean == 0.0 and none.upper < 1e-12            # a zero score: only the totals' spread
    with pytest.raises(AssertionError, match="lower bound"):
        st.assert_new_prompts_above(EDGES[1], 0.5)
    assert st.assert_new_prompts_above(EDGES[0], 0.5).lower > 0.5


def test_new_prompts_agrees_with_many_resamples_and_with_new_samples():
    """Two independent computations of the same probability: the bootstrap frequency at a large
    B (a plug-in estimate of it) and, for its target, the share of fresh samples of the
    population keeping the edge."""
    rng = np.random.default_rng(2)
    n, t, mu, sigma = 40, 0.5, 0.5 + 1.0 / math.sqrt(40), 1.0     # lambda = 1: p = Phi(1) = 0.841
    sample = synthetic(mu + sigma * rng.standard_normal((1, n)))
    st = S.stability(sample, threshold=t, resamples=20, seed=1, record=False)
    w = S.resample_weights(n, 4000, np.random.default_rng(1))
    many = E.discover(sample.values.numpy(), sample.totals, t, w)[:, 0].mean()      # 4,000 resamples
    assert 0.05 < many < 0.95
    assert st.new_prompts(EDGES[0]).mean == pytest.approx(many, abs=0.03)
    fresh = np.mean([E.discover(mu + sigma * rng.standard_normal((1, n)), np.ones(n), t)[0] for _ in range(4000)])
    assert fresh == pytest.approx(normal_phi(1.0), abs=0.02)


def test_new_prompts_bounds_the_new_sample_probability_where_the_frequency_does_not():
    """400 seeded samples of 32 prompts of a population whose edge is kept by discovery on new
    prompts with probability Phi(0.5) = 0.691: the lower bound of ``new_prompts`` is at or below
    it in at least 95% of samples (97.5% for an exact one-sided bound); the frequency's lower
    bound, whose interval counts only the resamples, is not (about 80%: it is a statement about
    these prompts; its 95% lower bound at B = 20 reaches 0.683 at 18 of 20, 0.751 at 19)."""
    n, t = 32, 0.5
    p = normal_phi(0.5)
    mu = t + 0.5 / math.sqrt(n)
    new_ok = freq_ok = 0
    for seed in range(400):
        rng = np.random.default_rng([7, seed])
        st = S.stability(synthetic(mu + rng.standard_normal((1, n))), threshold=t, resamples=20, seed=seed,
                         record=False)
        new_ok += st.new_prompts(EDGES[0]).lower <= p
        freq_ok += st.frequency(EDGES[0], record=False).lower <= p
    print(f"lower bound at or below p={p:.3f}: new_prompts {new_ok / 400:.3f}, frequency {freq_ok / 400:.3f}")
    assert new_ok / 400 >= 0.95
    assert freq_ok / 400 < 0.9


def test_new_prompts_without_spread_no_effect_and_over_tasks():
    flat = synthetic([[0.3] * 8, [0.0] * 8])
    st = S.stability(flat, threshold=0.05, resamples=20)
    m = st.new_prompts(EDGES[0])
    assert (m.mean, m.lower, m.upper) == (1.0, 1.0, 1.0)
    assert st.new_prompts(EDGES[1]).mean == 0.0
    dead = synthetic([[0.3] * 8, [0.1] * 8], totals=[0.0] * 8)
    assert S.stability(dead, resamples=20).new_prompts(EDGES[0]).upper == 0.0      # no corruption effect
    never = synthetic([[0.0] * 8, [0.0] * 8], task="b")
    both = S.stability([flat, never], threshold=0.05, resamples=20)
    assert both.new_prompts(EDGES[0]).mean == 0.5
    assert both.per_task[0].new_prompts(EDGES[0]).mean == 1.0
    with pytest.raises(CircuitsError, match="an edge of the source"):
        st.new_prompts("L5H5->logits")
    assert m.flags == ("zero-width: every prompt's margin equal",)


def test_new_prompts_claims_nothing_from_one_prompt_or_an_unsure_corruption():
    one = S.stability(synthetic([[0.3], [0.0]]), threshold=0.05, resamples=4).new_prompts(EDGES[0])
    assert (one.lower, one.upper) == (0.0, 1.0) and "one prompt" in one.provenance["notes"][0]
    # the edge is far above 5% of the corruption's mean effect, but that effect's sign is not
    # established (mean 0.1, sd about 1 over 8 prompts): a new sample may flip it
    totals = [1.2, -0.9, 1.1, -1.0, 0.9, -0.8, 1.0, -0.7]
    unsure = S.stability(synthetic([[0.5, 0.6, 0.4, 0.5, 0.6, 0.4, 0.5, 0.5]], totals), threshold=0.05,
                         resamples=20).new_prompts(EDGES[0])
    assert unsure.lower == 0.0 and unsure.mean > 0.9 and "keep its sign" in unsure.provenance["notes"][0]
    sure = S.stability(synthetic([[0.5, 0.6, 0.4, 0.5, 0.6, 0.4, 0.5, 0.5]], [abs(t) for t in totals]),
                       threshold=0.05, resamples=20).new_prompts(EDGES[0])
    assert sure.lower > 0.9 and "notes" not in sure.provenance


# -- the planted edge model --------------------------------------------------------------------

# the planted edges, the decoy, the relay's query and key edges, and a few more that do nothing
SOME = list(planted.EDGES["planted"]) + [planted.EDGES["decoy"], "L0H0->L1H0.q", "L0H0->L1H0.k", "L0H1->L1H0.v",
                                          "embed->L1H0.v", "L0H0->logits"]


@pytest.fixture(scope="module")
def planted_models(tmp_path_factory):
    out = {}
    for control in (False, True):
        root = tmp_path_factory.mktemp("stability-control" if control else "stability")
        model = load_model(str(planted.build_edges(root / "ckpt", control=control)), cache_dir=root / "cache",
                           device="cpu")
        out[control] = model
    return out


def counting(monkeypatch, model):
    calls = []
    forward = model.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counted)
    return calls


def test_planted_edges_are_always_found_and_resampling_runs_no_forward(planted_models, monkeypatch,
                                                                        logit_diff):
    model = planted_models[False]
    task = logit_diff(model, planted.EDGE_PROMPTS, planted.ANSWER, planted.FOIL, name="planted_edges")
    calls = counting(monkeypatch, model)
    sw = E.edge_patch(model, task, SOME, activations=ActivationStore())
    patched = len(calls)
    assert patched > 0
    st = S.stability(sw, resamples=20, seed=0)
    assert len(calls) == patched                                  # no forward: only re-weighting
    print(f"forwards: edge_patch {patched}, 20 resamples: 0")
    want = set(map(E.Edge.parse, planted.EDGES["planted"]))
    assert set(st.stable(1.0)) == want == set(st.frequencies())
    for e in want:
        f = st.assert_frequency_above(e, 0.8)
        assert f.mean == 1.0 and f.lower == pytest.approx(0.025 ** (1 / 20))
    with pytest.raises(AssertionError, match="n=36"):          # 0.9 needs 36 resamples of 36
        st.assert_frequency_above(planted.EDGES["planted"][1], 0.9)
    assert st.jaccard.mean == 1.0 and st.jaccard_all_pairs == 1.0
    # on new prompts: the planted edges are kept, the decoy (large to attribution, no exact
    # effect) is not
    for e in want:
        st.assert_new_prompts_above(e, 0.9)
    st.new_prompts(planted.EDGES["decoy"]).assert_below(0.1)
    # the full sample's discovery is edge_circuit's
    circ = E.edge_circuit(model, sw, threshold=0.05)
    assert {f"{a}->{b}" for a, b in circ.edges} == set(planted.EDGES["planted"])


def test_attribution_is_resampled_without_a_forward_and_templates_agree(planted_models, monkeypatch, logit_diff):
    model = planted_models[False]
    task = logit_diff(model, planted.EDGE_PROMPTS, planted.ANSWER, planted.FOIL, name="planted_edges")
    calls = counting(monkeypatch, model)
    # attribution: one pass of edge_attribution, then no forward for any resample
    store = ActivationStore()
    before = len(calls)
    scores = E.edge_attribution(model, task, edges=SOME, activations=store)
    one_pass = len(calls) - before
    filled = store.counters.forward_passes          # the corrupted senders' outputs (the clean: the gradient forward's)
    batches = len(E._attribution_batches(model, task.prompts, len(task.prompts), store, 1))
    # per batch: one forward (and backward; the receivers' gradients come from its graph); the
    # corruption's effect is read from the corrupted run's last logits in the store
    assert filled >= 1 and one_pass == filled + batches, (one_pass, filled, batches)
    st2 = S.stability(scores, resamples=20, seed=0)
    assert len(calls) - before == one_pass and store.counters.forward_passes == filled
    # a second attribution reads the activations from the store: only its own passes run
    again = E.edge_attribution(model, task, edges=SOME, activations=store)
    assert store.counters.forward_passes == filled and len(calls) - before == 2 * one_pass - filled
    np.testing.assert_array_equal(again.values, scores.values)
    print(f"forwards: edge_attribution {one_pass} ({filled} through the store, {batches} batch(es)), "
          f"20 resamples: 0, a second attribution: {one_pass - filled}")
    # the decoy's first-order score is large: attribution discovers it on every resample too
    assert st2.frequency(planted.EDGES["decoy"]).mean == 1.0
    assert all(st2.frequency(e).mean == 1.0 for e in planted.EDGES["planted"])
    # two templates of the same task (the two suffixes): the same edges across tasks
    halves = [logit_diff(model, [p for p in planted.EDGE_PROMPTS if p[0].endswith(s)], planted.ANSWER, planted.FOIL,
                         name=f"planted[{s}]")
              for s in planted.EDGE_SUFFIXES]
    across = S.stability([E.edge_patch(model, t, SOME) for t in halves], resamples=20)
    assert across.jaccard.mean == 1.0 and across.tasks == tuple(t.name for t in halves)


def test_the_control_discovers_nothing(planted_models, logit_diff):
    model = planted_models[True]
    task = logit_diff(model, planted.EDGE_PROMPTS, planted.ANSWER, planted.FOIL, name="planted_control")
    sw = E.edge_patch(model, task, SOME, activations=ActivationStore())
    st = S.stability(sw, resamples=20)
    assert not st.kept.any() and st.stable(0.01) == ()
    assert st.jaccard is None and "n/a" in repr(st)
    with pytest.raises(MeasurementError, match="n/a"):
        st.assert_jaccard_above(0.0)
    st.frequency(planted.EDGES["planted"][1]).assert_below(0.2)
    for e in SOME:                  # no corruption effect to share out: no edge is shown kept
        assert st.new_prompts(e).lower == 0.0


def test_faithfulness_under_resampling_runs_each_distinct_circuit_once(planted_models, logit_diff):
    from pytest_circuits.techniques import circuits as C

    model = planted_models[False]
    task = logit_diff(model, planted.EDGE_PROMPTS, planted.ANSWER, planted.FOIL, name="planted_edges")
    store = ActivationStore()
    sw = E.edge_patch(model, task, SOME, activations=store)
    from pytest_circuits import measurement as M

    recorded: list = []
    M._RECORDERS.append(recorded)
    try:
        rf = S.faithfulness_under_resampling(model, task, sw, resamples=20, seed=0, activations=store)
    finally:
        M._RECORDERS.remove(recorded)
    assert len(rf.circuits) == 1 and None not in rf.values         # the same circuit on every resample: one run
    # the resampled circuits' own measurements are kept on the result, not recorded for the claim
    assert recorded == [] and rf.circuits[0].recovered.name.startswith("faithfulness.recovered[resampled[0]")
    # by hand: the full sample's edge circuit, its per-prompt metrics re-weighted by the same draws
    faith = C.faithfulness(model, task, E.edge_circuit(model, sw), activations=store)
    w = S.resample_weights(len(planted.EDGE_PROMPTS), 20, np.random.default_rng(0))
    full, kept, empty = (np.asarray(x, dtype=np.float64) for x in (faith.full, faith.kept, faith.empty))
    want = [(row @ (kept - empty)) / (row @ (full - empty)) for row in w]
    np.testing.assert_allclose(rf.values, want, rtol=1e-9)
    assert rf.mean > 0.95 and rf.quantiles()[0] > 0.9 and "1 distinct circuit" in repr(rf)
    control = planted_models[True]
    ctask = logit_diff(control, planted.EDGE_PROMPTS, planted.ANSWER, planted.FOIL, name="planted_control")
    none = S.faithfulness_under_resampling(control, ctask, E.edge_patch(control, ctask, SOME), resamples=20)
    assert none.values == (None,) * 20 and none.circuits == () and none.mean is None and "n/a" in repr(none)


def test_resampled_circuits_share_their_prefixes_and_the_values_do_not_change(arch_model, logit_diff, monkeypatch):
    """Distinct resampled circuits run inside ``shared_prefixes`` (each resumes where it first
    differs from an earlier one): fewer block passes, the same values as each run alone."""
    import contextlib

    from pytest_circuits.techniques import circuits as C

    model = arch_model("gqa", n_layers=4)
    pairs = [(f"the {a} sat on the {b}", f"the {a} sat on the {c}")
             for a, b, c in [("cat", "mat", "dog"), ("dog", "ball", "cat"), ("king", "bag", "city"),
                             ("queen", "river", "mat"), ("John", "store", "ball"), ("Mary", "city", "bag"),
                             ("cat", "river", "store"), ("dog", "bag", "king")]]
    task = logit_diff(model, pairs)
    scores = E.edge_attribution(model, task)
    got = {}
    for share in (True, False):
        if not share:
            monkeypatch.setattr(C._Runner, "sharing", lambda self, keeps: contextlib.nullcontext())
        store = ActivationStore(cache_dir=None)
        rf = S.faithfulness_under_resampling(model, task, scores, threshold=0.05, resamples=20, seed=0,
                                             activations=store)
        got[share] = (rf, store.counters.block_position_passes)
    (with_share, passes), (alone, passes_alone) = got[True], got[False]
    # several distinct sets of components (edge sets with the same components are one run)
    assert len({f.circuit.components for f in with_share.circuits}) > 2, with_share
    np.testing.assert_allclose([v for v in with_share.values if v is not None],
                               [v for v in alone.values if v is not None], rtol=0, atol=1e-6)
    assert passes < passes_alone, (passes, passes_alone)
