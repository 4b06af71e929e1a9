"""Shared intervened prefixes: inside ``ActivationStore.shared_prefixes``, a run resumes at the
latest block where an earlier run's intervention acted exactly as its own does before it.

Every ablation kind x positions choice on three architectures (Llama, grouped-query Llama, GPT-2),
every kind at the last position on every other family of :mod:`pytest_circuits.architectures`:
the runs of a family of removal
sets (a base set, then the base plus one component at each layer) must equal full forwards from
the tokens (``ActivationStore(resume=False)``) within 1e-5, and must have resumed from the base's
run where they can (counted in ``shared_prefix_passes``, with less compute than without the
context). Then the ways the recording can be missing: the earlier run served from the cache,
evicted, or never listed; and what the context leaves behind.
"""

from __future__ import annotations

import pytest
import torch

from pytest_circuits import ActivationStore, PromptSet, tasks
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I
from pytest_circuits.techniques import circuits as C

from pytest_circuits import architectures as A

ARCHS = A.families()
# Every kind x positions choice runs on these; every other family of the matrix runs every kind
# at the last position (sharing works the same; what differs is the forward it resumes).
CORE = ("llama", "gqa", "gpt2")
N_LAYERS = 4
SAME = ["the cat sat on the mat", "the cat sat on the bag", "the cat went to the city",
        "the cat said the ball was", "the cat gave Mary the dog"]
SAME_CORRUPTED = ["the cat sat on a mat", "the cat sat in the bag", "the dog went to the city",
                  "the cat said a ball was", "the cat gave John the dog"]
REFERENCE = ["the cat", "when John and Mary went to the store", "the king of France"]
KINDS = ["zero", "mean", "position_mean", "resample", "patch", "freeze"]
POSITIONS = [None, "last", (3, 4)]
READS = [H.logprobs_last([3, 5]), H.last(H.z(N_LAYERS - 1)), H.resid_post(N_LAYERS - 1)]


@pytest.fixture(scope="module", params=ARCHS)
def model(request, arch_model):
    return arch_model(request.param, seed=11, n_layers=N_LAYERS)


@pytest.fixture(scope="module")
def sets(model):
    return {"same": PromptSet.build(model, SAME, corrupted=SAME_CORRUPTED, name="same"),
            "ref": PromptSet.build(model, REFERENCE, name="ref")}


def _family(model, sets, kind, positions):
    """A base removal (heads of block 0 and the MLP of block 2) and the base plus one more
    component at each block: removal sets as a minimality check makes them."""
    extra = {"positions": positions}
    if kind in ("mean", "position_mean"):
        extra["reference"] = sets["ref"]

    def make(comps):
        if kind == "patch":
            return I.patch(model, comps, positions=positions)
        if kind == "freeze":
            return I.freeze(model, comps, positions=positions)
        return I.ablate(model, comps, kind, **extra)

    base = ["L0H0", "L0H2", "mlp2"]
    more = ["mlp0", "L1H1", "L2H3", "mlp3"]
    return [make(base)] + [make(base + [c]) for c in more]


@pytest.mark.parametrize("model,kind,positions", [
    pytest.param(fam, kind, positions, id=f"{fam}-{kind}-{positions}")
    for fam in ARCHS for kind in KINDS for positions in (POSITIONS if fam in CORE else ["last"])],
    indirect=["model"])
def test_shared_runs_equal_full_forwards(model, sets, kind, positions):
    ps = sets["same"]
    family = _family(model, sets, kind, positions)
    full, shared = ActivationStore(resume=False), ActivationStore(batch_size=3)
    with shared.shared_prefixes(model, family):
        got = [shared.get(model, ps, READS, iv) for iv in family]
    for g, iv in zip(got, family):
        w = full.get(model, ps, READS, iv)
        for name in READS:
            assert torch.allclose(g[name].double(), w[name].double(), atol=1e-5, rtol=1e-5), (kind, name)
    # every member after the base except the one adding mlp0 (block 0: nothing to share)
    # resumes from the base's run
    assert shared.counters.shared_prefix_passes >= len(family) - 2, kind
    assert shared._shared == {} and shared._providers == {} and shared._prefix_entries == {}


@pytest.mark.parametrize("kind", ["patch", "zero"])
def test_sharing_computes_less_than_one_at_a_time(model, sets, kind):
    ps = sets["same"]
    family = _family(model, sets, kind, None)
    shared, plain = ActivationStore(batch_size=3), ActivationStore(batch_size=3)
    with shared.shared_prefixes(model, family):
        got = [shared.get(model, ps, [H.LOGITS_LAST], iv) for iv in family]
    for g, iv in zip(got, family):
        assert torch.allclose(g[H.LOGITS_LAST], plain.get(model, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST], atol=1e-5)
    assert shared.counters.block_position_passes < plain.counters.block_position_passes
    assert shared.counters.forward_passes == plain.counters.forward_passes


def test_the_recording_is_memory_only_and_dropped_on_exit(model, sets):
    ps = sets["same"]
    family = _family(model, sets, "patch", None)
    store = ActivationStore()
    with store.shared_prefixes(model, family):
        store.get(model, ps, [H.LOGITS_LAST], family[0])
        recorded = [k for keys in store._prefix_entries.values() for k in keys]
        assert recorded and all(store._from_memory(k) is not None for k in recorded)
        for iv in family[1:]:
            store.get(model, ps, [H.LOGITS_LAST], iv)
    assert all(store._from_memory(k) is None for k in recorded)


def test_an_earlier_run_from_the_cache_is_run_again_once_to_record(model, sets, tmp_path):
    """The base's result on disk (an earlier session) has no recording: the first run that
    needs it runs the base once, up to its deepest shared block, and the rest resume from it."""
    ps = sets["same"]
    family = _family(model, sets, "patch", None)
    ActivationStore(cache_dir=tmp_path).get(model, ps, [H.LOGITS_LAST], family[0])
    store, full = ActivationStore(cache_dir=tmp_path), ActivationStore(resume=False)
    with store.shared_prefixes(model, family):
        base = store.get(model, ps, [H.LOGITS_LAST], family[0])
        assert store.counters.forward_passes == 0 and store.counters.disk_hits == 1
        got = [store.get(model, ps, [H.LOGITS_LAST], iv) for iv in family[1:]]
    assert store.counters.shared_prefix_passes >= len(family) - 2
    for g, iv in zip([base] + got, family):
        w = full.get(model, ps, [H.LOGITS_LAST], iv)
        assert torch.allclose(g[H.LOGITS_LAST], w[H.LOGITS_LAST], atol=1e-5)


def test_an_earlier_run_with_hooks_past_the_shared_block_is_run_again_up_to_it(model, sets, tmp_path):
    """The earlier run, from the cache, acts on a block after the last one it shares with the
    later run (``{L0H0, mlp3}`` then ``{L0H0, L1H1, mlp3}``): run again only up to that block, its
    hook at block 3 does not fire, which is no error (before, the run stopped with 'did not
    fire'; found by bench/faithfulness_coverage.py); both equal full forwards."""
    ps = sets["same"]
    family = [I.patch(model, ["L0H0", "mlp3"]), I.patch(model, ["L0H0", "L1H1", "mlp3"])]
    ActivationStore(cache_dir=tmp_path).get(model, ps, [H.LOGITS_LAST], family[0])
    store, full = ActivationStore(cache_dir=tmp_path), ActivationStore(resume=False)
    with store.shared_prefixes(model, family):
        got = [store.get(model, ps, [H.LOGITS_LAST], iv) for iv in family]
    assert store.counters.shared_prefix_passes >= 1
    for g, iv in zip(got, family):
        assert torch.allclose(g[H.LOGITS_LAST], full.get(model, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST], atol=1e-5)


def test_an_evicted_recording_falls_back_to_the_clean_run(model, sets):
    ps = sets["same"]
    family = _family(model, sets, "patch", None)
    tiny_memory = ActivationStore(max_memory_bytes=1)      # every entry is evicted at once
    full = ActivationStore(resume=False)
    with tiny_memory.shared_prefixes(model, family):
        got = [tiny_memory.get(model, ps, [H.LOGITS_LAST], iv) for iv in family]
    # the store keeps only its newest entry: most recordings are gone when they are wanted
    assert tiny_memory.counters.shared_prefix_passes < len(family) - 2
    for g, iv in zip(got, family):
        assert torch.allclose(g[H.LOGITS_LAST], full.get(model, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST], atol=1e-5)


def test_unlisted_and_user_interventions_run_as_usual(model, sets):
    """Only the listed interventions share; one without before/after (a user's) is left alone."""
    ps = sets["same"]
    family = _family(model, sets, "zero", None)

    class Mine:
        key, layer = "mine(L2H1)", 2

        def check(self, model, prompts):
            pass

        def fwd_hooks(self, model, prompts, index, store):
            def zero(t, hook=None):
                t = t.clone()
                t[:, :, 1] = 0
                return t
            return [(H.z(2), zero)]

    store, full = ActivationStore(), ActivationStore(resume=False)
    with store.shared_prefixes(model, [family[0], Mine()]):
        store.get(model, ps, [H.LOGITS_LAST], family[0])
        mine = store.get(model, ps, [H.LOGITS_LAST], Mine())
        other = store.get(model, ps, [H.LOGITS_LAST], family[3])      # not listed
    assert store.counters.shared_prefix_passes == 0
    assert torch.allclose(mine[H.LOGITS_LAST], full.get(model, ps, [H.LOGITS_LAST], Mine())[H.LOGITS_LAST], atol=1e-5)
    assert torch.allclose(other[H.LOGITS_LAST], full.get(model, ps, [H.LOGITS_LAST], family[3])[H.LOGITS_LAST],
                          atol=1e-5)


def test_before_and_after_split_an_intervention(model):
    iv = I.ablate(model, ["L0H1", "mlp1", "L2H0", "mlp3"], "zero")
    for layer in range(N_LAYERS + 1):
        b, a = iv.before(layer), iv.after(layer)
        assert (b + a).key == iv.key
        assert all(i.layer < layer for i in b) and all(i.layer >= layer for i in a)
    assert iv.before(0).key == "nothing()" and iv.after(0).key == iv.key


@pytest.mark.parametrize("model,kind", [
    pytest.param(fam, kind, id=f"{fam}-{kind}")
    for fam in ARCHS for kind in (["patch", "zero", "resample"] if fam in CORE else ["patch"])],
    indirect=["model"])
def test_minimality_and_growth_equal_their_runs_one_at_a_time(model, sets, kind):
    """The circuit checks inside the context give the numbers of the same removal sets run
    alone, with less compute."""
    task = tasks.greater_than(model, n=8, seed=2)
    circuit = C.Circuit.of(model, "L0H1 mlp0 L1H2 mlp1 L2H0 mlp2 L3H3 mlp3", name="c")
    shared, alone = ActivationStore(batch_size=4), ActivationStore(batch_size=4)
    mini = C.minimality(model, task, circuit, kind=kind, activations=shared)
    run = C._runner(model, task, kind, None, 0, alone)
    kept = run.keep_only(circuit.components)
    full, empty = run.removed(()), run.keep_only(())
    for v in circuit.components:
        rest = run.keep_only([c for c in circuit.components if c != v])
        want = (kept - rest).mean() / (full - empty).mean()
        assert mini[v].mean == pytest.approx(float(want), abs=1e-5), v
    assert shared.counters.shared_prefix_passes > 0
    assert shared.counters.block_position_passes < alone.counters.block_position_passes
    ranking = list(circuit.components)
    g_shared = C.grow(model, task, ranking, target=2.0, kind=kind, activations=ActivationStore(batch_size=4))
    g_alone_store = ActivationStore(batch_size=4)
    run2 = C._runner(model, task, kind, None, 0, g_alone_store)
    f2, e2 = run2.removed(()), run2.keep_only(())
    for size, rec in g_shared.steps:
        want = (run2.keep_only(ranking[:size]) - e2).mean() / (f2 - e2).mean()
        assert rec.mean == pytest.approx(float(want), abs=1e-5), size



def test_hooks_before_the_shared_block_are_still_computed(model, sets):
    """A run asked for a hook (or attention keys) in a block before its shared prefix ends
    resumes no later than that block."""
    ps = sets["same"]
    family = _family(model, sets, "patch", None)
    for reads in ([H.resid_post(1), H.LOGITS_LAST], [H.attn_cache(2, "k"), H.LOGITS_LAST]):
        store, full = ActivationStore(), ActivationStore(resume=False)
        with store.shared_prefixes(model, family):
            store.get(model, ps, [H.LOGITS_LAST], family[0])
            got = store.get(model, ps, reads, family[-1])             # base + mlp3: shares up to block 3
        want = full.get(model, ps, reads, family[-1])
        for name in reads:
            assert torch.allclose(got[name], want[name], atol=1e-5), name
