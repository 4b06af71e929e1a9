"""Interventions checked against hand computations on the tiny model."""

import pytest
import torch

from pytest_circuits import ActivationStore, ComponentError, InterventionError, PromptSet
from pytest_circuits import hooks as H
from pytest_circuits import interventions as I

SAME_LEN = ["the cat sat on the mat", "the dog sat on the bag", "a king went to the city",
            "the queen said the ball was"]


@pytest.fixture
def ps(tiny):
    return PromptSet.build(tiny, SAME_LEN, name="same-length",
                           corrupted=["the dog sat on a mat", "a cat went to the bag", "the king sat on a city",
                                      "a queen gave the ball to"])


@pytest.fixture
def store():
    return ActivationStore(batch_size=3)   # two batches: replacements must follow the rows


def z1(store, model, ps, iv=None):
    return store.get(model, ps, [H.z(1)], iv)[H.z(1)]


def test_zero_ablation_of_a_head(tiny, ps, store):
    clean = z1(store, tiny, ps)
    got = z1(store, tiny, ps, I.ablate(tiny, "L1H2"))
    assert not got[:, :, 2].any()
    torch.testing.assert_close(got[:, :, [0, 1, 3]], clean[:, :, [0, 1, 3]])


def test_mean_ablation_is_the_reference_token_mean(tiny, ps, store):
    ref = PromptSet.build(tiny, ["the cat", "when John and Mary went to the store"], name="ref")
    ref_z = store.get(tiny, ref, [H.z(1)])[H.z(1)][:, :, 2]
    hand = torch.cat([ref_z[0, :3], ref_z[1, :9]]).double().mean(0)   # real tokens only (BOS + words)
    got = z1(store, tiny, ps, I.ablate(tiny, "L1H2", "mean", reference=ref))
    for i in range(len(ps)):
        for p in range(ps.lengths[i]):
            torch.testing.assert_close(got[i, p, 2].double(), hand, atol=1e-6, rtol=1e-6)


def test_resample_uses_another_prompt(tiny, ps, store):
    clean = z1(store, tiny, ps)
    perm = I.derangement(len(ps), seed=3)
    assert not (perm == torch.arange(len(ps))).any()
    got = z1(store, tiny, ps, I.ablate(tiny, "L1H2", "resample", seed=3))
    torch.testing.assert_close(got[:, :, 2], clean[perm][:, :, 2])
    assert I.ablate(tiny, "L1H2", "resample", seed=3).key != I.ablate(tiny, "L1H2", "resample", seed=4).key


def test_patch_from_corrupted(tiny, ps, store):
    corrupted = store.get(tiny, ps.corrupted, [H.mlp_out(0)])[H.mlp_out(0)]
    got = store.get(tiny, ps, [H.mlp_out(0)], I.patch(tiny, "mlp0"))[H.mlp_out(0)]
    torch.testing.assert_close(got, corrupted)


def test_positions_last_touches_only_the_last_token(tiny, store):
    ps = PromptSet.build(tiny, ["the cat sat", "the dog sat on the mat"])
    clean = store.get(tiny, ps, [H.attn_out(0)])[H.attn_out(0)]
    got = store.get(tiny, ps, [H.attn_out(0)], I.ablate(tiny, "attn0", positions="last"))[H.attn_out(0)]
    for i, n in enumerate(ps.lengths):
        assert not got[i, n - 1].any()
        torch.testing.assert_close(got[i, : n - 1], clean[i, : n - 1])


def test_neuron_ablation(tiny, ps, store):
    got = store.get(tiny, ps, [H.mlp_post(1)], I.ablate(tiny, "L1N5"))[H.mlp_post(1)]
    clean = store.get(tiny, ps, [H.mlp_post(1)])[H.mlp_post(1)]
    assert not got[:, :, 5].any() and clean[:, :, 5].any()


def test_ablating_nothing_changes_nothing(tiny, ps, store):
    names = [H.LOGITS_LAST, H.resid_post(1), H.z(0)]
    clean = store.get(tiny, ps, names)
    same = store.get(tiny, ps, names, I.nothing())
    assert I.nothing().key != "none"             # really recomputed, not a cache hit
    for n in names:
        torch.testing.assert_close(same[n], clean[n], atol=0, rtol=0)


def test_composition(tiny, ps, store):
    both = I.ablate(tiny, "L1H2") + I.ablate(tiny, "mlp0")
    assert len(both) == 2 and "L1H2" in both.key and "mlp0" in both.key
    got = store.get(tiny, ps, [H.z(1), H.mlp_out(0)], both)
    assert not got[H.z(1)][:, :, 2].any() and not got[H.mlp_out(0)].any()
    assert I.ablate(tiny, ["L1H2", "mlp0"]).key == both.key


def test_context_manager_matches_store(tiny, ps, store):
    abl = I.ablate(tiny, "L0H1", "resample", seed=1)
    from_store = store.get(tiny, ps, [H.LOGITS_LAST], abl)[H.LOGITS_LAST]
    with torch.no_grad(), abl.applied(tiny, ps, store):
        logits = tiny(ps.tokens.to(tiny.cfg.device)).cpu()       # the model may be on a GPU
    torch.testing.assert_close(logits[:, -1], from_store, atol=1e-5, rtol=1e-5)
    with torch.no_grad():   # hooks are gone afterwards
        torch.testing.assert_close(tiny(ps.tokens.to(tiny.cfg.device))[:, -1].cpu(),
                                   store.get(tiny, ps, [H.LOGITS_LAST])[H.LOGITS_LAST],
                                   atol=1e-5, rtol=1e-5)


def test_resuming_at_the_ablated_layer_is_exact(tiny, ps):
    abl = I.ablate(tiny, "L1H0", "resample", seed=2)
    resumed = ActivationStore()
    a = resumed.get(tiny, ps, [H.LOGITS_LAST, H.z(1)], abl)
    assert resumed.counters.resumed_passes == 1
    full = ActivationStore()
    b = full.get(tiny, ps, [H.LOGITS_LAST, H.z(1), H.resid_post(0)], abl)   # a layer-0 hook: no resume
    assert full.counters.resumed_passes == 0
    torch.testing.assert_close(a[H.LOGITS_LAST], b[H.LOGITS_LAST], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[H.z(1)], b[H.z(1)], atol=1e-6, rtol=1e-6)


# -- bad input ------------------------------------------------------------------------
def test_component_the_model_lacks(tiny):
    with pytest.raises(ComponentError, match=r"layer must be in 0\.\.1"):
        I.ablate(tiny, "L5H0")
    with pytest.raises(ComponentError, match=r"head must be in 0\.\.3"):
        I.ablate(tiny, "L1H7")


def test_resample_from_one_prompt(tiny, store):
    one = PromptSet.build(tiny, ["the cat sat"])
    with pytest.raises(InterventionError, match="needs at least 2 prompts"):
        store.get(tiny, one, [H.LOGITS_LAST], I.ablate(tiny, "L0H0", "resample"))


def test_resample_all_positions_needs_one_length(tiny, store):
    ps = PromptSet.build(tiny, ["the cat sat", "the dog sat on the mat"])
    with pytest.raises(InterventionError, match="use positions='last'"):
        store.get(tiny, ps, [H.LOGITS_LAST], I.ablate(tiny, "L0H0", "resample"))


def test_mean_without_reference(tiny):
    with pytest.raises(InterventionError, match="needs reference=<PromptSet>"):
        I.ablate(tiny, "L0H0", "mean")


def test_positions_out_of_range(tiny, ps, store):
    with pytest.raises(InterventionError, match=r"positions=\(40,\) is not valid: positions < 7"):
        store.get(tiny, ps, [H.LOGITS_LAST], I.ablate(tiny, "L0H0", positions=40))
    with pytest.raises(InterventionError, match="positions=-1"):
        I.ablate(tiny, "L0H0", positions=-1)


def test_patch_needs_corrupted(tiny, store):
    ps = PromptSet.build(tiny, ["the cat sat", "the dog sat"])
    with pytest.raises(InterventionError, match="needs prompts.corrupted"):
        store.get(tiny, ps, [H.LOGITS_LAST], I.patch(tiny, "L0H0"))


def test_bad_kind(tiny):
    with pytest.raises(InterventionError, match="kind='half'"):
        I.ablate(tiny, "L0H0", "half")


def test_patch_results_are_keyed_on_the_corrupted_prompts(tiny, tmp_path):
    """Same clean prompts, different corruptions: the cache must not mix them up."""
    store = ActivationStore(cache_dir=tmp_path)
    a = PromptSet.build(tiny, ["the cat sat", "the dog sat"], corrupted=["a cat sat", "a dog sat"])
    b = PromptSet.build(tiny, ["the cat sat", "the dog sat"], corrupted=["the king went", "the queen went"])
    pa = store.get(tiny, a, [H.LOGITS_LAST], I.patch(tiny, "attn0"))[H.LOGITS_LAST]
    pb = store.get(tiny, b, [H.LOGITS_LAST], I.patch(tiny, "attn0"))[H.LOGITS_LAST]
    assert store.counters.forward_passes >= 4 and not torch.allclose(pa, pb)


# -- kinds used by path patching and circuits ---------------------------------------------

def test_position_mean_is_the_mean_at_each_position(tiny, ps, store):
    ref = PromptSet.build(tiny, ["the cat sat on", "when John and Mary went to"], name="ref-pos")
    ref_z = store.get(tiny, ref, [H.z(1)])[H.z(1)][:, :, 2].double()       # [2, pos, d_head]
    got = z1(store, tiny, ps, I.ablate(tiny, "L1H2", "position_mean", reference=ref))[:, :, 2]
    for p in range(ps.tokens.shape[1]):
        have = [i for i in range(2) if ref.lengths[i] > p]
        hand = ref_z[have, p].mean(0).float()
        torch.testing.assert_close(got[:, p], hand.expand_as(got[:, p]))
    # Default reference: the prompts being run.
    own = z1(store, tiny, ps)[:, :, 2].double().mean(0).float()
    torch.testing.assert_close(z1(store, tiny, ps, I.ablate(tiny, "L1H2", "position_mean"))[:, :, 2],
                               own.expand(len(ps), *own.shape))


def test_position_mean_needs_a_reference_as_long_as_the_prompts(tiny, ps, store):
    short = PromptSet.build(tiny, ["the cat"], name="short")
    with pytest.raises(InterventionError, match="no prompt reaching position"):
        z1(store, tiny, ps, I.ablate(tiny, "L1H2", "position_mean", reference=short))


def test_freeze_holds_the_clean_output_whatever_changes_upstream(tiny, ps, store):
    clean = store.get(tiny, ps, [H.mlp_out(1), H.z(1)])
    iv = I.ablate(tiny, "attn0") + I.freeze(tiny, ["mlp1", "L1H0"])
    got = store.get(tiny, ps, [H.mlp_out(1), H.z(1)], iv)
    torch.testing.assert_close(got[H.mlp_out(1)], clean[H.mlp_out(1)])
    torch.testing.assert_close(got[H.z(1)][:, :, 0], clean[H.z(1)][:, :, 0])
    assert not torch.allclose(got[H.z(1)][:, :, 1], clean[H.z(1)][:, :, 1])   # not frozen: it changed


def test_reroute_takes_the_output_of_another_run(tiny, ps, store):
    via = I.patch(tiny, "L0H1")
    want = store.get(tiny, ps, [H.z(1)], via)[H.z(1)][:, :, 3]
    got = z1(store, tiny, ps, I.reroute(tiny, "L1H3", via=via))
    torch.testing.assert_close(got[:, :, 3], want)
    torch.testing.assert_close(got[:, :, :3], z1(store, tiny, ps)[:, :, :3])
    assert "via=[patch(L0H1" in I.reroute(tiny, "L1H3", via=via).key
    with pytest.raises(InterventionError, match="via"):
        I.reroute(tiny, "L1H3", via=None)


def test_logprobs_pseudo_hook_matches_the_full_softmax(tiny, ps, store):
    ids = [5, 7, 11]
    lp = store.get(tiny, ps, [H.logprobs_last(ids)])[H.logprobs_last(ids)]
    with torch.no_grad():
        full = tiny(ps.tokens.to(tiny.cfg.device)).cpu()[torch.arange(len(ps)), ps.last].double().log_softmax(-1)
    torch.testing.assert_close(lp, full[:, ids], atol=1e-5, rtol=1e-5)
    assert lp.dtype == torch.float64 and lp.shape == (len(ps), 3)
    with pytest.raises(ComponentError, match="at least one token"):
        H.logprobs_last([])


# --- no-op ablations: resample_distinct and unchanged() --------------------------------------
DUPLICATES = ["the cat sat on the mat", "the cat sat on the mat", "a king went to the city",
              "a king went to the city", "the dog sat on the bag", "the dog sat on the bag"]


def _raw_last_z(model, ps, layer):
    """Each prompt's hook_z at its last token, from a raw TransformerLens cache (no project code)."""
    out = []
    for i in range(len(ps)):
        _, cache = model.run_with_cache(ps.tokens[i: i + 1, : ps.lengths[i]])
        out.append(cache[f"blocks.{layer}.attn.hook_z"][0, -1].double())
    return torch.stack(out)                                  # [n, n_heads, d_head]


def _same(a, b):
    return bool((a - b).abs().max() <= I.NOOP_RTOL * torch.maximum(a.abs().max(), b.abs().max()))


@pytest.mark.filterwarnings("ignore::pytest_circuits.errors.NoOpInterventionWarning")
def test_unchanged_agrees_with_a_hand_check_of_each_resampled_source(tiny):
    ps = PromptSet.build(tiny, DUPLICATES, name="duplicates")
    raw = _raw_last_z(tiny, ps, 1)[:, 2]                     # L1H2 at the last token
    seen_noop = 0
    for seed in range(8):
        perm = I.derangement(len(ps), seed)
        want = [_same(raw[i], raw[perm[i]]) for i in range(len(ps))]
        # a duplicate prompt has its twin's output, a different one does not
        assert want == [DUPLICATES[i] == DUPLICATES[int(perm[i])] for i in range(len(ps))]
        got = I.ablate(tiny, "L1H2", "resample", positions="last", seed=seed).unchanged(tiny, ps, ActivationStore())
        assert got.tolist() == want
        seen_noop += sum(want)
    assert seen_noop > 0                                     # the plain derangement does swap twins


def test_resample_distinct_takes_a_source_whose_output_differs(tiny):
    ps = PromptSet.build(tiny, DUPLICATES, name="duplicates")
    raw = _raw_last_z(tiny, ps, 1)[:, 2]
    store = ActivationStore(batch_size=4)
    for seed in range(8):
        abl = I.ablate(tiny, "L1H2", "resample_distinct", positions="last", seed=seed)
        assert abl.key == f"resample_distinct(L1H2,pos=last,seed={seed})"
        assert not abl.unchanged(tiny, ps, store).any()
        got = store.get(tiny, ps, [H.last(H.z(1))], abl)[H.last(H.z(1))][:, 2].double()
        perm = I.derangement(len(ps), seed)
        for i in range(len(ps)):
            assert not _same(got[i], raw[i])                 # the replacement differs from its own output ...
            src = [j for j in range(len(ps)) if j != i and _same(got[i], raw[j])]
            assert src and all(DUPLICATES[j] != DUPLICATES[i] for j in src)   # ... and is another prompt's
            if DUPLICATES[int(perm[i])] != DUPLICATES[i]:
                assert int(perm[i]) in src                   # where plain resample already acts, the same source


def test_resample_distinct_on_prompts_with_one_output_is_a_no_op_and_says_so(tiny):
    ps = PromptSet.build(tiny, ["the cat sat on the mat"] * 3, name="one-text")
    abl = I.ablate(tiny, "mlp1", "resample_distinct", positions="last", seed=0)
    assert abl.unchanged(tiny, ps, ActivationStore()).all()
    with pytest.warns(I.NoOpInterventionWarning, match="resample_distinct: mlp1's output at the last position is "
                                                       "the same on every prompt"):
        ActivationStore().get(tiny, ps, [H.LOGITS_LAST], abl)


def test_unchanged_for_every_ablation_kind_and_positions(tiny, ps):
    store = ActivationStore()
    ref = PromptSet.build(tiny, ["the cat", "when John and Mary went to the store"], name="ref")
    for kind in ("zero", "mean", "position_mean", "resample", "resample_distinct"):
        for positions in (None, "last", (1, 3)):
            abl = I.ablate(tiny, ["L1H2", "mlp0"], kind, positions=positions,
                           reference=ref if kind == "mean" else None, seed=0)
            assert abl.unchanged(tiny, ps, store).tolist() == [False] * len(ps), (kind, positions)
    # nothing() changes nothing; patching may rightly equal the clean value: not judged
    assert I.nothing().unchanged(tiny, ps, store).all()
    assert (I.ablate(tiny, "L1H2", "zero") + I.patch(tiny, "mlp0")).unchanged(tiny, ps, store) is None


@pytest.mark.parametrize("seed", [-1, 2 ** 63, 1.5, "0", True, None])
def test_a_bad_seed_is_an_intervention_error(tiny, seed):
    with pytest.raises(InterventionError, match="seed=.* is not valid: an integer in 0 .. 2\\*\\*63 - 1"):
        I.ablate(tiny, "L1H2", "resample_distinct", seed=seed)
