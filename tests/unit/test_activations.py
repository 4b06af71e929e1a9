import warnings

import pytest
import torch

from pytest_circuits import ActivationStore, CacheWarning, ComponentError, ModelUnavailable, PromptSet
from pytest_circuits import hooks as H
from pytest_circuits.models import ModelInfo, attach_info, info

PROMPTS = ["the cat sat on the mat", "the dog", "when John and Mary went to the store",
           "the capital of France is", "a", "the war lasted from the year 1732 to the year 17"]


@pytest.fixture
def ps(tiny):
    return PromptSet.build(tiny, PROMPTS, name="mixed")


NAMES = [H.resid_post(1), H.z(0), H.mlp_post(1), H.FINAL_SCALE, H.LOGITS_LAST, H.pattern(1)]


def test_memory_disk_and_fresh_agree(tiny, ps, tmp_path):
    store = ActivationStore(cache_dir=tmp_path, batch_size=4)
    fresh = store.get(tiny, ps, NAMES)
    assert store.counters.computed == len(NAMES) and store.counters.forward_passes == 2
    again = store.get(tiny, ps, NAMES)
    assert store.counters.memory_hits == len(NAMES) and store.counters.forward_passes == 2
    other = ActivationStore(cache_dir=tmp_path, batch_size=3)  # new process, same disk
    disk = other.get(tiny, ps, NAMES)
    assert other.counters.disk_hits == len(NAMES) and other.counters.forward_passes == 0
    uncached = ActivationStore(cache_dir=None, batch_size=6).get(tiny, ps, NAMES)
    for n in NAMES:
        assert torch.equal(fresh[n], again[n]) and torch.equal(fresh[n], disk[n])
        torch.testing.assert_close(fresh[n], uncached[n], atol=1e-5, rtol=1e-5)


def test_padding_is_exact(tiny, ps):
    """Batched, right-padded values equal each prompt run alone (real positions)."""
    store = ActivationStore(batch_size=6)
    batched = store.get(tiny, ps, [H.resid_post(1), H.LOGITS_LAST, H.TOKEN_LOSS])
    for i, p in enumerate(PROMPTS):
        one = PromptSet.build(tiny, [p])
        alone = ActivationStore().get(tiny, one, [H.resid_post(1), H.LOGITS_LAST, H.TOKEN_LOSS])
        n = one.lengths[0]
        torch.testing.assert_close(batched[H.resid_post(1)][i, :n], alone[H.resid_post(1)][0, :n],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[H.LOGITS_LAST][i], alone[H.LOGITS_LAST][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[H.TOKEN_LOSS][i, : n - 1], alone[H.TOKEN_LOSS][0, : n - 1],
                                   atol=1e-5, rtol=1e-5)
        assert not batched[H.TOKEN_LOSS][i, n - 1:].any()


def test_logits_last_matches_plain_forward(tiny, ps):
    got = ActivationStore().get(tiny, ps, [H.LOGITS_LAST])[H.LOGITS_LAST]
    with torch.no_grad():
        for i, n in enumerate(ps.lengths):
            ref = tiny(ps.tokens[i: i + 1, :n].to(tiny.cfg.device))[0, -1].cpu()
            torch.testing.assert_close(got[i], ref, atol=1e-5, rtol=1e-5)


def test_only_requested_hooks_and_subset_hits(tiny, ps, tmp_path):
    store = ActivationStore(cache_dir=tmp_path)
    store.get(tiny, ps, [H.resid_post(0), H.z(1)])
    files = list((tmp_path / "activations").rglob("*.safetensors"))
    assert len(files) == 2
    store.get(tiny, ps, [H.z(1)])
    assert store.counters.memory_hits == 1 and store.counters.forward_passes == 1


def _only_file(tmp_path):
    (f,) = list((tmp_path / "activations").rglob("*.safetensors"))
    return f


def test_truncated_file_is_detected_and_recomputed(tiny, ps, tmp_path):
    ref = ActivationStore(cache_dir=tmp_path).get(tiny, ps, [H.resid_post(1)])[H.resid_post(1)]
    f = _only_file(tmp_path)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    store = ActivationStore(cache_dir=tmp_path)
    with pytest.warns(CacheWarning, match="unusable"):
        got = store.get(tiny, ps, [H.resid_post(1)])[H.resid_post(1)]
    assert store.counters.recomputed_bad == 1 and store.counters.forward_passes == 1
    assert torch.equal(got, ref)
    # rewritten: a third store reads it cleanly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ActivationStore(cache_dir=tmp_path).get(tiny, ps, [H.resid_post(1)])


def test_flipped_byte_fails_checksum(tiny, ps, tmp_path):
    ActivationStore(cache_dir=tmp_path).get(tiny, ps, [H.resid_post(1)])
    f = _only_file(tmp_path)
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="checksum"):
        ActivationStore(cache_dir=tmp_path).get(tiny, ps, [H.resid_post(1)])


def test_entry_from_another_model_is_rejected(tiny, tiny_dir, ps, tmp_path):
    """A file whose recorded key fields name another model is never served."""
    store = ActivationStore(cache_dir=tmp_path)
    store.get(tiny, ps, [H.resid_post(1)])
    src = _only_file(tmp_path)
    # Pretend the same weights are another model: its key differs, so copy the
    # file to where that key would live and check the recorded fields catch it.
    real = info(tiny)
    try:
        attach_info(tiny, ModelInfo("other", "other-fingerprint", real.dtype, real.device, "test"))
        base = store._base_fields(tiny, ps, None)
        dst = store._path(store._key(base, H.resid_post(1)))
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        fresh = ActivationStore(cache_dir=tmp_path)
        with pytest.warns(CacheWarning, match="key fields do not match"):
            fresh.get(tiny, ps, [H.resid_post(1)])
        assert fresh.counters.forward_passes == 1
    finally:
        attach_info(tiny, real)


def test_key_changes_with_each_input(tiny, ps):
    store = ActivationStore()
    base = store._base_fields(tiny, ps, None)
    k = store._key(base, "h")
    assert k != store._key(base, "h2")
    for field in ("fingerprint", "transformer_lens", "transformers", "code", "tokens", "intervention", "dtype"):
        assert field in base
        assert store._key({**base, field: "x"}, "h") != k


def test_unknown_hook_suggests(tiny, ps):
    with pytest.raises(ComponentError, match="did you mean 'blocks.1.hook_resid_post'"):
        ActivationStore().get(tiny, ps, ["blocks.1.hook_resid_pots"])


def test_unregistered_model_is_explained(ps):
    with pytest.raises(ModelUnavailable, match="a model loaded by pytest-circuits"):
        ActivationStore().get(torch.nn.Linear(2, 2), ps, [H.LOGITS_LAST])


def test_unembed_hook_still_computed_when_logits_are_not_asked(tiny, ps):
    """The store skips the unembedding when no logits are wanted, except for its own hook."""
    store = ActivationStore()
    got = store.get(tiny, ps, ["hook_unembed", H.FINAL_SCALE])
    logits = store.get(tiny, ps, [H.LOGITS_LAST])[H.LOGITS_LAST]
    rows = torch.arange(len(ps))
    torch.testing.assert_close(got["hook_unembed"][rows, ps.last], logits, atol=1e-5, rtol=1e-5)
