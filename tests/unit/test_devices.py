"""Device maps (``--circuits-device-map``): parsing and checking the value, loading a model
with one, the cache keys that keep placements apart, and the helpers that move tensors to
the module reading them.

This machine has no GPU, so a model split over two real devices is never run here. What is
tested on the CPU: every bad value is refused with a message naming it (before any weights
are read), maps over the CPU load the same model as a plain load (same logits, same
activations through the store's full, resumed and suffix forwards), a mapped load never
shares cache entries with a single-device one, and the moving helpers do move a tensor to
another device (the ``meta`` device stands for a second one: no values, but a real device).
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from pytest_circuits import devices as D
from pytest_circuits.devices import DeviceMapError
from pytest_circuits.errors import CircuitsError, ModelUnavailable
from pytest_circuits.models import ModelInfo, info, load_model

TINY_MODULES = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head",
                "model.rotary_emb"]


def _full_map(**overrides):
    m = {k: "cpu" for k in TINY_MODULES}
    m.update(overrides)
    return m


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("raw, want", [
    (None, None), ("", None), ("  ", None), ("none", None), ("None", None),
    ("auto", "auto"), ("balanced", "balanced"), ("balanced_low_0", "balanced_low_0"),
    ("sequential", "sequential"), (" auto ", "auto"), ('"auto"', None),
    ('{"": "cpu"}', {"": "cpu"}), ('{"": 0}', {"": 0}), ('{"a": "CUDA:1", "b": "cpu"}', {"a": "cuda:1", "b": "cpu"}),
    ({"": "cpu"}, {"": "cpu"}),
])
def test_parse_accepts(raw, want):
    if raw == '"auto"':       # JSON text of a strategy is not one of the three forms
        with pytest.raises(DeviceMapError):
            D.parse_device_map(raw)
        return
    assert D.parse_device_map(raw) == want


@pytest.mark.parametrize("raw, fragment", [
    ("nonsense", "a strategy (auto, balanced, balanced_low_0, sequential)"),
    ("Auto", "a strategy"),
    ("cuda:0", "a strategy"),                       # one device is --circuits-device's job
    ("{", "is not valid JSON"),
    ('{"a": "cpu",}', "is not valid JSON"),
    ("[1, 2]", "a strategy"),
    ("{}", "the map is empty"),
    ('{"": "disk"}', "offloading to disk"),
    ('{"": "meta"}', "meta tensor has no values"),
    ('{"": "tpu"}', "a device is cpu, cuda, cuda:N, mps"),
    ('{"": "cuda:x"}', "a device is cpu"),
    ('{"": -1}', "a GPU index is >= 0"),
    ('{"": 1.5}', "a device is cpu"),
    ('{"": true}', "a device is cpu"),
    ('{"": null}', "a device is cpu"),
    ('{"": ["cpu"]}', "a device is cpu"),
    ('{" model": "cpu"}', "without surrounding spaces"),
    ("@", "@ must be followed by the path"),
    ("@/no/such/file.json", "cannot be read"),
    (17, "a strategy"),
])
def test_parse_refuses_with_a_message_naming_the_option(raw, fragment):
    with pytest.raises(DeviceMapError) as e:
        D.parse_device_map(raw)
    assert "--circuits-device-map" in str(e.value) and fragment in str(e.value)
    assert not isinstance(e.value, ModelUnavailable) and isinstance(e.value, CircuitsError)


def test_parse_reads_a_file_relative_to_base(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"": "cpu"}))
    assert D.parse_device_map("@map.json", base=tmp_path) == {"": "cpu"}
    assert D.parse_device_map(f"@{tmp_path / 'map.json'}") == {"": "cpu"}
    (tmp_path / "strategy.json").write_text('"sequential"')
    assert D.parse_device_map("@strategy.json", base=tmp_path) == "sequential"
    (tmp_path / "bad.json").write_text('{"": "cpu"')
    with pytest.raises(DeviceMapError, match="bad.json.*is not valid JSON"):
        D.parse_device_map("@bad.json", base=tmp_path)
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(DeviceMapError, match="is not valid JSON"):
        D.parse_device_map("@empty.json", base=tmp_path)
    with pytest.raises(DeviceMapError, match="cannot be read"):
        D.parse_device_map("@.", base=tmp_path)          # a folder


# --------------------------------------------------------------------------- checks
def test_device_conflict_rule():
    """A map places every module: only --circuits-device=auto (the default) goes with it."""
    assert D.device_conflict("auto", "auto") is None
    assert D.device_conflict("cpu", None) is None
    for device in ("cpu", "cuda", "cuda:1", "mps"):
        msg = D.device_conflict(device, {"": "cpu"})
        assert msg and "--circuits-device-map" in msg and repr(device) in msg
        assert D.device_conflict(device, "balanced")


def test_missing_devices(monkeypatch):
    assert D.missing_devices(None) is None
    assert D.missing_devices("auto") is None           # a strategy spreads over what is there
    assert D.missing_devices({"": "cpu"}) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for dm in ({"": "cuda"}, {"": 0}, {"a": "cpu", "b": "cuda:1"}):
        assert "this machine has 0 CUDA device(s)" in D.missing_devices(dm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert D.missing_devices({"a": 0, "b": "cuda:1", "c": "cuda"}) is None
    assert "[2, 5]" in D.missing_devices({"a": "cuda:2", "b": 5, "c": 1})


def test_coverage_problem():
    modules = ["", "model", *TINY_MODULES, "model.layers", "model.layers.0.mlp"]
    tensors = ["model.embed_tokens.weight", "model.layers.0.mlp.w", "model.layers.1.mlp.w", "model.norm.weight",
               "lm_head.weight", "model.rotary_emb.inv_freq"]
    assert D.coverage_problem({"": 0}, modules, tensors) is None
    assert D.coverage_problem(_full_map(), modules, tensors) is None
    assert D.coverage_problem({"model": 0, "lm_head": 1}, modules, tensors) is None
    msg = D.coverage_problem({k: 0 for k in TINY_MODULES if k != "model.rotary_emb"}, modules, tensors)
    assert "unplaced" in msg and "model.rotary_emb" in msg          # a buffer counts
    msg = D.coverage_problem(_full_map(**{"model.layer.1": 0}), modules, tensors)
    assert "does not have" in msg and "model.layer.1" in msg         # a typo is not ignored
    # prefix on a dotted boundary only: model.layers.1 does not cover model.layers.10
    assert "model.layers.10" in D.coverage_problem({"model.layers.1": 0}, ["model.layers.1"],
                                                   ["model.layers.1.w", "model.layers.10.w"])


def test_offloaded_and_describe():
    assert D.offloaded(None) == [] and D.offloaded({"": "cpu"}) == []
    assert D.offloaded({"a": "cpu", "b": "cpu"}) == []                     # a CPU model, not offload
    assert D.offloaded({"a": 0, "b": "cpu", "c": "disk"}) == ["b", "c"]
    assert D.offloaded({"a": "cpu", "b": "disk"}) == ["b"]
    assert D.describe(None) == "" and D.describe({}) == ""
    assert D.describe({"b": 1, "a": "cuda:0"}) == D.describe({"a": "cuda:0", "b": "1"}) == '{"a":"cuda:0","b":"1"}'
    assert D.describe({"a": 0}) != D.describe({"a": 1})


# --------------------------------------------------------------------------- moving tensors
def test_to_device_of_moves_to_another_device_and_keeps_what_is_there():
    """``meta`` stands for a second device: the tensor really moves (no values needed)."""
    t = torch.arange(6.0).reshape(2, 3)
    assert D.to_device_of(t, torch.zeros(1)) is t                      # same device: no copy
    assert D.to_device_of(t, "cpu") is t
    on_meta = torch.nn.Linear(3, 3, device="meta")
    moved = D.to_device_of(t, on_meta)
    assert moved.device.type == "meta" and moved.shape == t.shape
    assert D.to_device_of(t, torch.empty(1, device="meta")).device.type == "meta"
    assert D.to_device_of(t, torch.device("meta"), torch.float16).dtype == torch.float16
    half = D.to_device_of(t, torch.zeros(1), torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.device == t.device
    # a module without tensors (a folded norm) leaves the tensor where it is
    assert D.to_device_of(t, torch.nn.Identity()) is t
    assert D.to_device_of(t, torch.nn.Identity(), torch.float64).dtype == torch.float64
    buffers_only = torch.nn.Module()
    buffers_only.register_buffer("b", torch.zeros(1, device="meta"))
    assert D.device_of(buffers_only).type == "meta"
    with pytest.raises(TypeError):
        D.device_of(3)


def test_first_tensor():
    x, y = torch.zeros(1), torch.ones(1)
    assert D.first_tensor((x,), {"h": y}) is x
    assert D.first_tensor((), {"cache": object(), "hidden_states": y}) is y
    assert D.first_tensor([None, y]) is y
    assert D.first_tensor((), {}) is None


# --------------------------------------------------------------------------- loading
def _logits(model, ids=((1, 5, 7, 9, 11),)):
    with torch.no_grad():
        return model(torch.tensor(ids)).detach()


@pytest.fixture(scope="module")
def plain(tiny_dir, tiny_cache):
    return load_model(str(tiny_dir), cache_dir=tiny_cache, device="cpu")


@pytest.mark.parametrize("device_map", ["auto", "balanced", "sequential", "balanced_low_0", {"": "cpu"},
                                        "JSON", "FILE"])
def test_mapped_load_on_cpu_equals_plain_load(device_map, plain, tiny_dir, tiny_cache, tmp_path):
    """On a machine without GPU every strategy and every all-CPU map is a CPU model: same
    logits as the single-device load, the realized placement recorded, and a cache key of
    its own (the single-device key is unchanged)."""
    if device_map == "JSON":
        device_map = json.dumps(_full_map())
    elif device_map == "FILE":
        (tmp_path / "m.json").write_text(json.dumps(_full_map(**{"model.layers": "cpu"})))
        device_map = f"@{tmp_path / 'm.json'}"
    m = load_model(str(tiny_dir), cache_dir=tiny_cache, device_map=device_map)
    torch.testing.assert_close(_logits(m), _logits(plain), rtol=0, atol=0)
    mi, pi = info(m), info(plain)
    assert mi.device == "cpu" and mi.device_map == '{"":"cpu"}'
    assert mi.key() == {**pi.key(), "device_map": '{"":"cpu"}'}
    assert "device_map" not in pi.key() and pi.device_map == ""
    assert getattr(m.original_model, "hf_device_map", None) is None   # what lets compatibility mode fold


@pytest.mark.parametrize("device_map, fragment", [
    ({"model.embed_tokens": "cpu"}, "unplaced"),
    (_full_map(bogus="cpu"), "does not have: ['bogus']"),
    ({k: "cpu" for k in TINY_MODULES if k != "lm_head"}, "['lm_head']"),
    ({"": "cuda:3"}, "names GPU(s) [3] but this machine has"),
    ({"": "disk"}, "offloading to disk"),
    ("nonsense", "a strategy"),
])
def test_bad_map_is_refused_before_weights_load(device_map, fragment, tiny_dir, tiny_cache, monkeypatch):
    import transformers

    def no_load(*a, **k):
        raise AssertionError("weights were read for a map that should have been refused first")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    with pytest.raises(DeviceMapError) as e:
        load_model(str(tiny_dir), cache_dir=tiny_cache, device_map=device_map)
    assert fragment in str(e.value)


def test_device_map_with_a_device_is_an_error(tiny_dir, tiny_cache):
    for device in ("cpu", "cuda:0"):
        with pytest.raises(DeviceMapError, match="leave --circuits-device at auto"):
            load_model(str(tiny_dir), cache_dir=tiny_cache, device=device, device_map="auto")


def test_offloading_map_is_refused(tiny_dir, tiny_cache, monkeypatch):
    """A realized map that keeps modules in CPU memory for a GPU (accelerate's offload) is
    refused: compatibility mode cannot fold norms into offloaded weights. Simulated: the
    loaded model reports such a map."""
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained

    def offloading(*a, **k):
        hf = real(*a, **k)
        hf.hf_device_map = {"model.embed_tokens": 0, "model.layers": "cpu", "model.norm": 0, "lm_head": 0}
        return hf

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", offloading)
    with pytest.raises(DeviceMapError, match=r"offloads \['model.layers'\] to the CPU or disk"):
        load_model(str(tiny_dir), cache_dir=tiny_cache, device_map="auto")


def test_registered_loader_that_ignores_the_map_is_an_error(tiny_dir, tiny_cache):
    """A loader that boots by itself (not through the registry's loading) would silently load
    on one device: refused instead."""
    from transformer_lens.model_bridge import TransformerBridge

    from pytest_circuits import models as M
    from pytest_circuits import registry

    name = "test-devices-own-loader"

    @M.register_model(name, "boots by itself")
    def _own(cache, device, dtype):
        return TransformerBridge.boot_transformers(str(tiny_dir), device="cpu", dtype=dtype), "own"

    try:
        assert info(load_model(name, cache_dir=tiny_cache, device="cpu")).device_map == ""
        with pytest.raises(ModelUnavailable, match="does not support --circuits-device-map"):
            load_model(name, cache_dir=tiny_cache, device_map="auto")
    finally:
        registry._REGISTRY.pop(name, None)


def test_device_map_problem_checks_the_named_model(tiny_dir, tiny_cache):
    from pytest_circuits.models import device_map_problem

    assert device_map_problem(str(tiny_dir), None) is None
    assert device_map_problem(str(tiny_dir), "auto") is None
    assert device_map_problem(str(tiny_dir), _full_map()) is None
    assert "unplaced" in device_map_problem(str(tiny_dir), {"lm_head": "cpu"})
    assert "GPU(s) [7]" in device_map_problem(str(tiny_dir), {"": 7})


# --------------------------------------------------------------------------- the store
def test_store_under_a_map_matches_and_never_shares_entries(plain, tiny_dir, tiny_cache, tmp_path):
    """Activations of a mapped load equal the plain load's (full, resumed and suffix forwards
    under an intervention), and its entries are its own: after the plain model filled a disk
    cache, the mapped model computes again rather than reading them."""
    from pytest_circuits import PromptSet
    from pytest_circuits import hooks as H
    from pytest_circuits.interventions import ablate
    from pytest_circuits.store import ActivationStore

    mapped = load_model(str(tiny_dir), cache_dir=tiny_cache, device_map=_full_map())
    texts = ["the cat sat on the mat", "John gave Mary the ball", "the dog sat"]
    names = [H.resid_post(1), H.LOGITS_LAST, H.TOKEN_LOSS]
    cache = tmp_path / "acts"
    out = {}
    for label, model in (("plain", plain), ("mapped", mapped)):
        store = ActivationStore(cache_dir=cache)
        ps = PromptSet.build(model, texts)
        abl = ablate(model, "L1H2", "zero", positions="last")     # resumed at block 1, last position only
        out[label] = (store.get(model, ps, names), store.get(model, ps, names[:2], abl),
                      store.get(model, ps, [H.LOGITS_LAST], ablate(model, "attn1", positions="last")))
        assert store.counters.forward_passes >= 3, label       # the mapped run computed its own
        assert store.counters.disk_hits == 0, label
        assert store.counters.suffix_passes >= 1, label        # the prefix cache path ran
    for a, b in zip(out["plain"], out["mapped"]):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
            assert a[name].device.type == "cpu"
