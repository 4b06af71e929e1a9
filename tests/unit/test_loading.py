"""The split of ``models.py`` into registry, weights and loading (issue #23): registered loaders
get an explicit :class:`LoadRequest` (device, dtype, device map, cache, remote cache) instead
of reading context variables, loaders of the old contract ``loader(cache_dir, device, dtype)``
still load, concurrent loads with different placements each get their own request, and
``pytest_circuits.models`` still exports every name it did before the split."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

import pytest_circuits
from pytest_circuits import loading, models, registry, weights
from pytest_circuits.registry import LoadRequest, takes_request

TINY_MODULES = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head",
                "model.rotary_emb"]
FULL_MAP = {k: "cpu" for k in TINY_MODULES}

#: the names docs/api.md listed under ``pytest_circuits.models`` before the split
NAMES_BEFORE_THE_SPLIT = [
    "ModelSpec", "ModelInfo", "distinct_labels", "push_run_labels", "pop_run_labels", "run_label",
    "register_model", "registered", "info", "attach_info", "weights_state", "derived", "forget_derived",
    "resolve_device", "resolve_dtype", "load_model", "offline", "device_map_problem", "file_sha256",
    "Converted", "converted_fingerprint", "verify_converted", "converted_checkpoint", "converted_weights",
    "embedded_gguf_path", "embedded_checkpoint", "embedded_converted", "checkpoint_files",
    "checkpoint_digest", "EMBEDDED", "Loader", "DERIVED_MAX_BYTES", "derived_counts", "MANIFEST_NAME",
]


@pytest.fixture
def register():
    """``register(name, loader)``, undone after the test."""
    names = []

    def _register(name, loader, description="test"):
        names.append(name)
        return registry.register_model(name, description)(loader)

    yield _register
    for name in names:
        registry._REGISTRY.pop(name, None)


def test_models_still_exports_every_name_it_did():
    missing = [n for n in NAMES_BEFORE_THE_SPLIT if n not in models.__all__ or not hasattr(models, n)]
    assert missing == []
    homes = (registry, weights, loading)
    for name in models.__all__:
        found = [m for m in homes if hasattr(m, name)]
        assert found and getattr(models, name) is getattr(found[0], name), name
    assert pytest_circuits.load_model is models.load_model is loading.load_model
    assert pytest_circuits.register_model is models.register_model is registry.register_model
    # the registry the facade shows is the one loads read
    assert models.registered() == registry.registered() and models.EMBEDDED in registry._REGISTRY


def test_the_old_module_level_context_variables_are_gone():
    for module in (models, registry, weights, loading):
        assert not hasattr(module, "_PLACEMENT") and not hasattr(module, "_REMOTE_WEIGHTS")


@pytest.mark.parametrize("loader, new", [
    (lambda request: None, True),
    (lambda req: None, True),
    (lambda cache_dir, device, dtype: None, False),
    (lambda cache, device, dtype=None: None, False),
    (lambda *args: None, False),
    (lambda request, *rest: None, True),
    (lambda request, device=None, dtype=None: None, True),
    (lambda: None, False),
    (print, False),
])
def test_takes_request_tells_the_contracts_apart(loader, new):
    assert takes_request(loader) is new


def test_takes_request_reads_the_annotation():
    def load(r: LoadRequest, device=None, dtype=None):
        return None

    def load_text(r: "LoadRequest", device=None, dtype=None):
        return None

    assert takes_request(load) and takes_request(load_text)


def test_a_registered_loader_gets_the_request(register, tiny_dir, tmp_path):
    seen = []

    def load(request):
        seen.append(request)
        return loading.boot(tiny_dir, request), "test-fingerprint"

    register("test-loading-request", load)
    model = models.load_model("test-loading-request", cache_dir=tmp_path, device="cpu", dtype="float64")
    (request,) = seen
    assert request == LoadRequest(cache=tmp_path, device="cpu", dtype=torch.float64, placement=None, remote=None,
                                  name="test-loading-request")
    info = models.info(model)
    assert (info.fingerprint, info.dtype, info.device, info.source, info.device_map) == \
        ("test-fingerprint", "float64", "cpu", "registry", "")
    assert next(model.parameters()).dtype == torch.float64
    with pytest.raises(AttributeError):
        request.device = "cuda"      # frozen: a loader cannot change what was asked


def test_a_registered_loader_gets_the_device_map(register, tiny_dir, tmp_path):
    seen = []

    def load(request: LoadRequest):
        seen.append(request.placement)
        return loading.boot(tiny_dir, request), "test-fingerprint"

    register("test-loading-mapped", load)
    model = models.load_model("test-loading-mapped", cache_dir=tmp_path, device_map=FULL_MAP)
    assert seen == [FULL_MAP]
    assert models.info(model).device_map and models.info(model).device == "cpu"


def test_a_loader_of_the_old_contract_still_loads(register, tiny_dir, tmp_path):
    seen = []

    def old(cache_dir, device, dtype):
        seen.append((cache_dir, device, dtype))
        return loading.boot(tiny_dir, LoadRequest(cache_dir, device, dtype)), "old-fingerprint"

    register("test-loading-old", old)
    model = models.load_model("test-loading-old", cache_dir=tmp_path, device="cpu")
    assert seen == [(tmp_path, "cpu", torch.float32)]
    assert models.info(model).fingerprint == "old-fingerprint"
    assert registry.registered()["test-loading-old"].loader is old


def test_concurrent_loads_with_different_placements_do_not_interfere(register, tiny_dir, tmp_path):
    """Two loads in two threads, both inside their loaders at once (a barrier): each loader
    sees its own load's placement and device map, and each model is placed as its own load
    asked (one mapped, one not)."""
    from huggingface_hub import constants

    barrier = threading.Barrier(2, timeout=60)
    seen: dict[str, object] = {}

    def load(request):
        barrier.wait()                       # both loads are under way
        seen[request.name] = request.placement
        barrier.wait()                       # both have read their request
        return loading.boot(tiny_dir, request), f"fp-{request.name}"

    register("test-loading-a", load)
    register("test-loading-b", load)
    out: dict[str, object] = {}
    errors: list[BaseException] = []

    def run(name, **kw):
        try:
            out[name] = models.load_model(name, cache_dir=tmp_path, **kw)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            barrier.abort()

    saved = constants.HF_HUB_OFFLINE
    threads = [threading.Thread(target=run, args=("test-loading-a",), kwargs={"device_map": FULL_MAP}),
               threading.Thread(target=run, args=("test-loading-b",), kwargs={"device": "cpu"})]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert constants.HF_HUB_OFFLINE == saved      # two overlapping offline() blocks set it back
    assert errors == []
    assert seen == {"test-loading-a": FULL_MAP, "test-loading-b": None}
    a, b = models.info(out["test-loading-a"]), models.info(out["test-loading-b"])
    assert a.device_map and not b.device_map
    assert getattr(out["test-loading-a"].original_model, "_pytest_circuits_mapped", False)
    assert not getattr(out["test-loading-b"].original_model, "_pytest_circuits_mapped", False)


def test_a_loader_that_passes_no_remote_uses_a_local_cache(tmp_path):
    """Outside a load of the old contract, converted_weights without ``remote`` touches no
    remote cache (nothing is read from context)."""
    calls = []

    def convert(out: Path) -> None:
        calls.append(out)
        (out / "w.bin").write_bytes(b"x")

    conv = weights.converted_weights(tmp_path / "weights" / "t-0", convert, {"source": "t"})
    assert len(calls) == 1 and weights.verify_converted(conv.folder) is None
    assert weights._LEGACY_REMOTE.get() is None


@pytest.mark.parametrize("initial", [False, True])
def test_offline_blocks_overlapping_across_threads_set_the_switch_back(initial, monkeypatch):
    """Thread A opens, B opens, A closes, B closes (the order that made each block's own
    save-and-restore leave the switch on): on inside every block, as it was after the last."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", initial)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def a():
        with loading.offline():
            a_in.set()
            b_in.wait(10)
            seen.append(constants.HF_HUB_OFFLINE)
        a_out.set()

    def b():
        a_in.wait(10)
        with loading.offline():
            b_in.set()
            a_out.wait(10)
            seen.append(constants.HF_HUB_OFFLINE)    # A has closed; B's block is still open

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [True, True]
    assert constants.HF_HUB_OFFLINE is initial
