"""Suffix forwards: an intervened forward runs only the positions the intervention can change.

Every intervention kind x positions choice x component kind on three architectures (Llama,
grouped-query Llama, GPT-2 with biases and learned positions), and every kind x positions
choice on a head of every other family of :mod:`pytest_circuits.architectures` (sliding
windows, ALiBi, GPT-J's cache, parallel blocks, post-attention norms, ...): the store's resumed suffix
forward (``ActivationStore()``) must equal a full forward from the tokens
(``ActivationStore(resume=False)``) within 1e-5 for every kind of name a measurement reads
(last-position logits and log-probabilities, ``@last`` hooks, whole hooks whose earlier
positions come from the clean run, attention patterns), and must actually have skipped
positions where the intervention allows it (its compute counted in block x position passes
is below the full forward's).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from pytest_circuits import ActivationStore, PromptSet
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I
from pytest_circuits.errors import NoOpInterventionWarning

from pytest_circuits import architectures as A

ARCHS = A.families()
# The families every component kind runs on; the others (whose differences are in the forward
# itself: sliding windows, ALiBi, caches, parallel blocks, norms) run every kind and positions
# choice on one head.
CORE = ("llama", "gqa", "gpt2")
N_LAYERS = 3
# Pairs that share their first tokens, so patching and resampling at every position can
# start late; lengths differ in VARIED so batches and "last" follow each prompt's own length.
SAME = ["the cat sat on the mat", "the cat sat on the bag", "the cat went to the city",
        "the cat said the ball was", "the cat gave Mary the dog"]
SAME_CORRUPTED = ["the cat sat on a mat", "the cat sat in the bag", "the dog went to the city",
                  "the cat said a ball was", "the cat gave John the dog"]
VARIED = ["the cat sat", "the dog sat on the mat", "a king went to the city of Rome",
          "the queen said", "when John and Mary went to the store"]
REFERENCE = ["the cat", "when John and Mary went to the store", "the king of France"]
COMPONENTS = ["L1H1", "attn1", "mlp1", "L1N3"]
POSITIONS = [None, "last", (3, 4)]
KINDS = ["zero", "mean", "position_mean", "resample", "patch", "freeze", "rerouted"]
READS = [H.LOGITS_LAST, H.logprobs_last([3, 5]), H.last(H.z(2)), H.last(H.pattern(2)),
         H.mlp_out(2), H.pattern(1), H.last(H.FINAL_SCALE), H.resid_post(N_LAYERS - 1)]


@pytest.fixture(scope="module", params=ARCHS)
def model(request, arch_model):
    return arch_model(request.param, seed=7, n_layers=N_LAYERS)


@pytest.fixture(scope="module")
def sets(model):
    same = PromptSet.build(model, SAME, corrupted=SAME_CORRUPTED, name="same")
    varied = PromptSet.build(model, VARIED, corrupted=list(reversed(VARIED)), align=False, name="varied")
    assert len(set(same.lengths)) == 1 and len(set(varied.lengths)) > 2
    return {"same": same, "varied": varied, "ref": PromptSet.build(model, REFERENCE, name="ref")}


def make(model, sets, kind, comp, positions):
    if kind in ("zero", "mean", "position_mean", "resample"):
        ref = sets["ref"] if kind == "mean" else None
        return I.ablate(model, comp, kind, positions=positions, reference=ref, seed=3)
    if kind == "patch":
        return I.patch(model, comp, positions=positions)
    if kind == "freeze":   # frozen after an upstream change, so freezing does something
        return I.patch(model, "L1H0", positions=positions) + I.freeze(model, "mlp1", positions=positions)
    return I.reroute(model, comp, via=I.patch(model, "L0H2", positions=positions), positions=positions)


def prompts_for(sets, positions):
    return sets["varied"] if positions == "last" else sets["same"]


CASES = [pytest.param(fam, kind, comp, positions, id=f"{fam}-{kind}-{comp}-{positions}")
         for fam in ARCHS for kind in KINDS for comp in (COMPONENTS if fam in CORE else ["L1H1"])
         for positions in POSITIONS]


@pytest.mark.parametrize("model,kind,comp,positions", CASES, indirect=["model"])
def test_suffix_equals_full_forward(model, sets, kind, comp, positions):
    ps = prompts_for(sets, positions)
    iv = make(model, sets, kind, comp, positions)
    suffix, full = ActivationStore(batch_size=2), ActivationStore(batch_size=2, resume=False)
    with _quiet():
        got = suffix.get(model, ps, READS, iv)
        want = full.get(model, ps, READS, iv)
    for name in READS:
        assert got[name].shape == want[name].shape, name
        err = float((got[name].double() - want[name].double()).abs().max())
        assert err <= 1e-5, f"{name}: {err:.2e}"
    firsts = torch.minimum(torch.as_tensor(iv.first_positions(model, ps)), torch.tensor(ps.lengths) - 1)
    if bool((firsts > 0).any()):
        assert suffix.counters.suffix_passes > 0
        assert suffix.counters.intervened_block_positions < full.counters.intervened_block_positions
    else:
        assert suffix.counters.suffix_passes == 0


class _quiet:
    """No-op warnings (a mean over a reference equal to the output, ...) are not this test's topic."""

    def __enter__(self):
        import warnings

        self._c = warnings.catch_warnings()
        self._c.__enter__()
        warnings.simplefilter("ignore", NoOpInterventionWarning)

    def __exit__(self, *exc):
        return self._c.__exit__(*exc)


def test_first_positions_follow_the_source(model, sets):
    same = sets["same"]
    n = len(same)
    lengths = torch.tensor(same.lengths)
    # patch: the first token where clean and corrupted differ ("the cat sat on the mat" vs "... a mat": 5)
    got = I.patch(model, "L1H1").first_positions(model, same)
    diff = [next(t for t in range(l) if same.tokens[i, t] != same.corrupted.tokens[i, t])
            for i, l in enumerate(same.lengths)]
    assert got.tolist() == diff
    # the replaced positions bound it from below
    assert I.patch(model, "L1H1", positions=(4,)).first_positions(model, same).tolist() == [max(4, d) for d in diff]
    assert I.ablate(model, "L1H1").first_positions(model, same).tolist() == [0] * n
    assert I.ablate(model, "L1H1", positions="last").first_positions(model, same).tolist() == (lengths - 1).tolist()
    # freezing to the clean values changes nothing; nothing() neither
    assert I.freeze(model, "L1H1").first_positions(model, same).tolist() == lengths.tolist()
    assert I.nothing().first_positions(model, same).tolist() == lengths.tolist()
    # resample at every position: where a prompt and its source first differ
    perm = I.derangement(n, 3)
    want = [next((t for t in range(l) if same.tokens[i, t] != same.tokens[int(perm[i]), t]), l)
            for i, l in enumerate(same.lengths)]
    assert I.ablate(model, "L1H1", "resample", seed=3).first_positions(model, same).tolist() == want
    # a composition starts where its earliest item does
    both = I.patch(model, "L1H1") + I.ablate(model, "mlp1", positions=(1,))
    assert both.first_positions(model, same).tolist() == [min(d, 1) for d in diff]


def test_suffix_compute_is_the_floor_for_last_position_ablations(model, sets):
    """A last-position ablation at layer 1 runs one position per prompt in blocks 1.., all
    prompts in one forward although their lengths differ (each row starts at its own last
    position): compute equals the floor, and the clean forward that reads the logits also
    records what the intervened one resumes from (one clean forward in all)."""
    ps = sets["varied"]
    store = ActivationStore(batch_size=len(ps))
    with _quiet():
        store.get(model, ps, [H.LOGITS_LAST])
        store.get(model, ps, [H.LOGITS_LAST], I.ablate(model, "attn1", positions="last"))
    c = store.counters
    intervened_blocks = N_LAYERS - 1
    assert (c.forward_passes, c.suffix_passes) == (2, 1)
    clean = N_LAYERS * len(ps) * max(ps.lengths)          # every (padded) position of every block
    assert c.block_position_passes == clean + intervened_blocks * len(ps)
    assert c.intervened_block_positions == c.floor_block_positions - N_LAYERS * sum(ps.lengths)


def test_an_intervention_without_first_positions_runs_every_position(model, sets):
    """The protocol's optional member: a user intervention without it is run in full."""
    ps = sets["varied"]
    inner = I.ablate(model, "L1H1", positions="last")

    class Plain:
        key, layer = "plain" + inner.key, inner.layer

        def check(self, model, prompts):
            inner.check(model, prompts)

        def fwd_hooks(self, model, prompts, index, store):
            return inner.fwd_hooks(model, prompts, index, store)

    store = ActivationStore()
    got = store.get(model, ps, [H.LOGITS_LAST], Plain())[H.LOGITS_LAST]
    assert store.counters.suffix_passes == 0
    want = ActivationStore(resume=False).get(model, ps, [H.LOGITS_LAST], inner)[H.LOGITS_LAST]
    assert torch.allclose(got, want, atol=1e-5)


def test_a_lying_first_positions_is_caught_by_the_full_forward(model, sets):
    """The contract is the intervention's: one that claims to change nothing before the last
    position but changes everything gives other numbers than a full forward (this is what
    the matrix above rules out for the built-in kinds)."""
    ps = sets["same"]
    inner = I.ablate(model, "L1H1")                      # every position

    class Liar:
        key, layer = "liar" + inner.key, inner.layer

        def check(self, model, prompts):
            inner.check(model, prompts)

        def first_positions(self, model, prompts):
            return torch.tensor(prompts.lengths) - 1

        def fwd_hooks(self, model, prompts, index, store, offset=0):
            return inner.fwd_hooks(model, prompts, index, store, offset)

    lied = ActivationStore().get(model, ps, [H.LOGITS_LAST], Liar())[H.LOGITS_LAST]
    true = ActivationStore(resume=False).get(model, ps, [H.LOGITS_LAST], inner)[H.LOGITS_LAST]
    assert float((lied - true).abs().max()) > 1e-5       # the matrix's tolerance


@pytest.mark.parametrize("positions", POSITIONS, ids=str)
def test_stacked_interventions_equal_one_at_a_time(model, sets, positions):
    """get_many stacks interventions on few prompts into shared forwards (here three per
    forward of 16 rows) with the results of get() one at a time, under each one's own key."""
    ps = prompts_for(sets, positions)
    ivs = [make(model, sets, kind, comp, positions)
           for kind, comp in [("zero", "L1H1"), ("resample", "mlp1"), ("patch", "attn1"), ("patch", "L0H2"),
                              ("mean", "L2H0"), ("rerouted", "mlp2"), ("freeze", "attn0")]]
    stacked, single = ActivationStore(batch_size=16), ActivationStore(batch_size=16)
    with _quiet():
        many = stacked.get_many(model, ps, READS, ivs)
        ones = [single.get(model, ps, READS, iv) for iv in ivs]
    assert stacked.counters.forward_passes < single.counters.forward_passes
    for iv, got, want in zip(ivs, many, ones):
        for name in READS:
            err = float((got[name].double() - want[name].double()).abs().max())
            assert err <= 1e-5, f"{iv.key} {name}: {err:.2e}"
    # served from the cache under each intervention's own key afterwards
    before = stacked.counters.forward_passes
    again = stacked.get_many(model, ps, READS, ivs)
    assert stacked.counters.forward_passes == before
    assert all(torch.equal(a[H.LOGITS_LAST], b[H.LOGITS_LAST]) for a, b in zip(again, many))


def test_a_head_sweep_shares_forwards_and_equals_one_at_a_time(model, sets):
    """effects.sweep runs the ablations of one layer's heads in shared forwards; each result
    equals self_repair on a fresh store."""
    from pytest_circuits.techniques import effects as E

    ps = PromptSet.build(model, VARIED, answers=["mat", "the", "of", "the", "the"], name="answers")
    heads = [f"L{l}H{h}" for l in (1, 2) for h in range(model.cfg.n_heads)]
    together = ActivationStore(batch_size=64)
    kw = A.expected("self-repair", model.family).kwargs      # Gemma-2: the pre-cap logit
    with _quiet():
        swept = E.sweep(model, ps, heads, kind="zero", positions="last", activations=together, **kw)
        alone = [E.self_repair(model, ps, h, kind="zero", positions="last", activations=ActivationStore(), **kw)
                 for h in heads]
    assert together.counters.forward_passes == 1 + 1          # the clean run, both layers stacked in one
    for a, b in zip(swept, alone):
        assert torch.allclose(a.total, b.total, atol=1e-5) and torch.allclose(a.delta_de, b.delta_de, atol=1e-5)


@pytest.mark.parametrize("positions", POSITIONS, ids=str)
def test_logprobs_before_the_last_position(model, sets, positions):
    """logprobs_last(ids, back=k) is the log-probabilities k positions before each prompt's
    last, under any intervention: equal to a full forward's logits read there (the suffix
    forward starts early enough to run it)."""
    ps = prompts_for(sets, positions)
    ids = [3, 5, 7]
    names = [H.logprobs_last(ids, back=k) for k in (0, 1, 3)]
    for iv in (None, make(model, sets, "patch", "attn1", positions), make(model, sets, "zero", "L1H1", positions)):
        with _quiet():
            got = ActivationStore(batch_size=2).get(model, ps, names, iv)
            full = ActivationStore(batch_size=2, resume=False).get(model, ps, [H.TOKEN_LOSS, H.LOGITS_LAST], iv)
        toks = ps.tokens
        with torch.no_grad(), (iv.applied(model, ps) if iv is not None else contextlib.nullcontext()):
            logits = model(toks)
        for k, name in zip((0, 1, 3), names):
            at = torch.tensor(ps.lengths) - 1 - k
            want = logits[torch.arange(len(ps)), at].double().log_softmax(-1)[:, ids]
            assert float((got[name] - want).abs().max()) <= 1e-5, (iv, k)
        assert float((got[names[0]] - full[H.LOGITS_LAST].double().log_softmax(-1)[:, ids]).abs().max()) <= 1e-5
    with pytest.raises(Exception, match="shorter"):
        ActivationStore().get(model, ps, [H.logprobs_last(ids, back=max(ps.lengths))])


def test_resume_data_beyond_the_memory_budget_falls_back_to_whole_positions(model, sets):
    """A store whose memory cannot hold the clean keys and values runs every position of the
    intervened blocks (and records no resume data in clean forwards): same numbers."""
    ps = sets["varied"]
    iv = I.ablate(model, "attn1", positions="last")
    small = ActivationStore(max_memory_bytes=ActivationStore._resume_bytes(model, ps))   # /2 is over
    with _quiet():
        got = small.get(model, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST]
        want = ActivationStore(resume=False).get(model, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST]
    assert small.counters.suffix_passes == 0 and small.counters.resumed_passes >= 1
    assert float((got - want).abs().max()) <= 1e-5


def test_first_positions_of_the_wrong_length_or_a_bad_back_are_errors(model, sets):
    """A user intervention whose first_positions does not give one position per prompt is a
    project error naming the count, not a silently misaligned forward; positions below 0 or
    past a prompt's end are clamped (0 runs every position). logprobs_last refuses a bad back."""
    from pytest_circuits.errors import CircuitsError, ComponentError

    ps = sets["varied"]
    inner = I.ablate(model, "L1H1", positions="last")

    class Short:
        key, layer = "short" + inner.key, inner.layer

        def __init__(self, firsts):
            self.firsts = firsts

        def check(self, model, prompts):
            inner.check(model, prompts)

        def first_positions(self, model, prompts):
            return self.firsts

        def fwd_hooks(self, model, prompts, index, store, offset=0):
            return inner.fwd_hooks(model, prompts, index, store, offset)

    with pytest.raises(CircuitsError, match=f"returned 2 positions for {len(ps)} prompts"):
        ActivationStore().get(model, ps, [H.LOGITS_LAST], Short(torch.tensor([1, 1])))
    want = ActivationStore(resume=False).get(model, ps, [H.LOGITS_LAST], inner)[H.LOGITS_LAST]
    for firsts in (torch.full((len(ps),), -5), torch.full((len(ps),), 10_000)):
        key = f"short{int(firsts[0])}" + inner.key
        iv = Short(firsts)
        iv.key = key
        got = ActivationStore().get(model, ps, [H.LOGITS_LAST], iv)[H.LOGITS_LAST]
        assert float((got - want).abs().max()) <= 1e-5
    for back in (-1, 1.5, True):
        with pytest.raises(ComponentError, match="back"):
            H.logprobs_last([3], back=back)
