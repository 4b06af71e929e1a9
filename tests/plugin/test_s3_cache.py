"""The activation and converted-weights caches on a real S3-compatible server.

The server is moto's (``ThreadedMotoServer``) on 127.0.0.1, started and stopped by the
``s3`` fixture; the client finds it through the standard environment only
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), as a user's CI job
would. moto is a plain import: where it is missing these tests fail, never skip (the
``dev`` extra installs it; CI runs them).

Checked: the Blobs API over local, in-memory and s3 locations; cold then warm runs (the
warm one does 0 forward passes) through the store and through the plugin (the option, the
ini key and $PYTEST_CIRCUITS_CACHE_DIR); two processes racing to write the same entries;
corrupted objects (data, header, truncation, a misplaced entry, an empty object) warned
about, recomputed and republished; converted weights published, fetched into a fresh
staging folder, and a lying remote copy converted again rather than loaded; usage errors
for a missing bucket, an unknown protocol, an unreachable endpoint and a missing s3fs; and
that a recognisable secret in the environment or the URL never appears in any output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import boto3
import pytest
import torch
from moto.server import ThreadedMotoServer

from pytest_circuits import ActivationStore, CacheWarning, PromptSet
from pytest_circuits import blobs as B
from pytest_circuits import cachekey as CK
from pytest_circuits import hooks as H
from pytest_circuits import loading as L
from pytest_circuits import models as M
from pytest_circuits import weights as W
from pytest_circuits.registry import LoadRequest

BUCKET = "circuits-test"
SECRET = "FAKE-a14-SecretKey-must-never-print-7c1e9"
URL_SECRET = "UrlPw-a14-never-print-55d0"
PROMPTS = ["the cat sat on the mat", "the dog", "the capital of France is"]
HOOK = H.resid_post(1)


class S3:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.client = boto3.client("s3")

    def url(self, name: str = "") -> str:
        return f"s3://{BUCKET}/{name or 'p'}-{uuid.uuid4().hex[:8]}"

    @staticmethod
    def key(url: str, rel: str) -> str:
        return url.split(f"s3://{BUCKET}/", 1)[1] + "/" + rel

    def keys(self, url: str, under: str = "") -> list[str]:
        prefix = url.split(f"s3://{BUCKET}/", 1)[1] + "/" + under
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"][len(prefix):] for page in pages for o in page.get("Contents", []))

    def get(self, url: str, rel: str) -> bytes:
        return self.client.get_object(Bucket=BUCKET, Key=self.key(url, rel))["Body"].read()

    def put(self, url: str, rel: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=self.key(url, rel), Body=data)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 (a free port), with the client environment pointing at it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as mp:
        empty = tmp_path_factory.mktemp("aws")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", str(empty / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            assert host == "127.0.0.1"
            mp.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()   # none made for another endpoint
            s = S3(f"http://{host}:{port}")
            s.client.create_bucket(Bucket=BUCKET)
            yield s
        finally:
            server.stop()
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def ps(tiny):
    return PromptSet.build(tiny, PROMPTS, name="s3")


@pytest.fixture
def truth(tiny, ps):
    return ActivationStore(cache_dir=None).get(tiny, ps, [HOOK, H.LOGITS_LAST])


def _quiet(fn):
    """``fn()`` with any CacheWarning an error (a clean read or write gives none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        return fn()


# ----------------------------------------------------------------- the Blobs API, three backends
@pytest.fixture(params=["local", "memory", "s3"])
def location(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "cache")
    if request.param == "memory":
        return f"memory://pytest-circuits-{uuid.uuid4().hex}/cache"
    return request.getfixturevalue("s3").url("api")


def test_blobs_api(location):
    blobs = B.open_blobs(location)
    assert blobs.is_remote is (not location.startswith("/"))
    assert blobs.read("activations/ab/k.safetensors") is None
    blobs.publish("activations/ab/k.safetensors", b"one")
    assert blobs.read("activations/ab/k.safetensors") == b"one"
    blobs.publish("activations/ab/k.safetensors", b"one")       # a second writer of the same entry
    assert blobs.read("activations/ab/k.safetensors") == b"one"
    blobs.publish("activations/cd/j.safetensors", b"two")
    blobs.publish("weights/m-1/COMPLETE", b"{}")
    assert blobs.listdir("activations/ab") == ["k.safetensors"]   # no temporary key left behind
    assert blobs.listdir("activations/none") == []
    blobs.delete("activations/cd/j.safetensors")
    blobs.delete("activations/cd/j.safetensors")                 # deleting what is gone is fine
    assert blobs.read("activations/cd/j.safetensors") is None
    blobs.clear("activations")
    assert blobs.read("activations/ab/k.safetensors") is None
    assert blobs.read("weights/m-1/COMPLETE") == b"{}"            # clear is by prefix only
    assert blobs.problem() is None
    assert SECRET not in blobs.describe() and SECRET not in repr(blobs)


def test_missing_bucket_is_a_problem(s3):
    problem = B.location_problem("s3://no-such-bucket-a14/prefix")
    assert problem and "no-such-bucket-a14" in problem and SECRET not in problem
    assert B.location_problem("s3://no-such-bucket-a14/prefix", probe=False) is None


# ----------------------------------------------------------------- the store: cold, warm, faults
def test_cold_then_warm_from_the_bucket(s3, tiny, ps, truth):
    url = s3.url("store")
    cold = ActivationStore(cache_dir=url)
    got = _quiet(lambda: cold.get(tiny, ps, [HOOK, H.LOGITS_LAST]))
    assert cold.counters.forward_passes == 1 and cold.counters.computed == 2
    entries = s3.keys(url, "activations/")
    assert len(entries) == 2 and all(k.endswith(".safetensors") and "/." not in k for k in entries)
    warm = ActivationStore(cache_dir=url)
    back = _quiet(lambda: warm.get(tiny, ps, [HOOK, H.LOGITS_LAST]))
    assert warm.counters.forward_passes == 0 and warm.counters.disk_hits == 2
    for name in (HOOK, H.LOGITS_LAST):
        assert torch.equal(back[name], got[name])
        torch.testing.assert_close(back[name], truth[name], atol=1e-5, rtol=1e-5)


def _header(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _with_header(header: dict, data: bytes) -> bytes:
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data


def _flip_data_byte(raw: bytes, other: bytes) -> bytes:
    b = bytearray(raw)
    b[-5] ^= 0x40
    return bytes(b)


def _dtype_lies(raw: bytes, other: bytes) -> bytes:
    assert raw.count(b'"dtype":"F32"') == 1
    return raw.replace(b'"dtype":"F32"', b'"dtype":"I32"')


def _shape_lies(raw: bytes, other: bytes) -> bytes:
    h, data = _header(raw)
    shape = h["value"]["shape"]
    h["value"]["shape"] = [shape[1], shape[0], *shape[2:]]
    return _with_header(h, data)


OBJECT_FAULTS = {
    "a data byte changed": (_flip_data_byte, "checksum mismatch"),
    "header dtype F32 -> I32": (_dtype_lies, "checksum mismatch"),
    "header shape permuted": (_shape_lies, "checksum mismatch"),
    "truncated": (lambda raw, other: raw[: len(raw) // 2], "unusable"),
    "header length lies": (lambda raw, other: struct.pack("<Q", 10 ** 9) + raw[8:], "header claims"),
    "empty object": (lambda raw, other: b"", "shorter than a safetensors header"),
    "another key's entry (misplaced)": (lambda raw, other: other, "key fields do not match"),
}


@pytest.mark.parametrize("fault", list(OBJECT_FAULTS))
def test_corrupted_object_is_recomputed_and_republished(s3, tiny, ps, truth, fault):
    url = s3.url("fault")
    _quiet(lambda: ActivationStore(cache_dir=url).get(tiny, ps, [HOOK, H.LOGITS_LAST]))
    store = ActivationStore(cache_dir=url)
    rel_hook = store._relpath(store._key(store._base_fields(tiny, ps, None), HOOK))
    rel_other = store._relpath(store._key(store._base_fields(tiny, ps, None), H.LOGITS_LAST))
    change, message = OBJECT_FAULTS[fault]
    s3.put(url, rel_hook, change(s3.get(url, rel_hook), s3.get(url, rel_other)))
    with pytest.warns(CacheWarning, match=message) as caught:
        got = store.get(tiny, ps, [HOOK])[HOOK]
    assert store.counters.recomputed_bad == 1 and store.counters.disk_hits == 0
    assert store.counters.forward_passes == 1
    assert got.dtype == truth[HOOK].dtype
    torch.testing.assert_close(got, truth[HOOK], atol=1e-5, rtol=1e-5)
    assert all(SECRET not in str(w.message) for w in caught)
    assert f"s3://{BUCKET}/" in str(caught[0].message)
    again = ActivationStore(cache_dir=url)          # republished: read back, no warning
    value = _quiet(lambda: again.get(tiny, ps, [HOOK])[HOOK])
    assert again.counters.disk_hits == 1 and again.counters.forward_passes == 0
    assert torch.equal(value, got)


def test_location_failing_mid_run_warns_once_and_goes_on_in_memory(s3, tiny, truth):
    """The bucket is deleted during a run: the next write fails, one CacheWarning says so,
    and the run goes on with activations in memory (right values, no further attempts)."""
    bucket = f"vanishing-{uuid.uuid4().hex[:8]}"
    s3.client.create_bucket(Bucket=bucket)
    store = ActivationStore(cache_dir=f"s3://{bucket}/p")
    first = PromptSet.build(tiny, PROMPTS, name="first")
    _quiet(lambda: store.get(tiny, first, [HOOK]))
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            s3.client.delete_object(Bucket=bucket, Key=o["Key"])
    s3.client.delete_bucket(Bucket=bucket)
    with pytest.warns(CacheWarning, match="failed .*keeping activations in memory") as caught:
        got = store.get(tiny, first, [H.LOGITS_LAST])[H.LOGITS_LAST]
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
    torch.testing.assert_close(got, truth[H.LOGITS_LAST], atol=1e-5, rtol=1e-5)
    third = PromptSet.build(tiny, PROMPTS[:2], name="third")
    got2 = _quiet(lambda: store.get(tiny, third, [HOOK])[HOOK])
    assert store.counters.forward_passes == 3 and store.counters.computed == 3
    torch.testing.assert_close(got2, truth[HOOK][:2, :got2.shape[1]], atol=1e-5, rtol=1e-5)


RACER = textwrap.dedent("""
    import sys, time, warnings
    from pathlib import Path
    from pytest_circuits import ActivationStore, CacheWarning, PromptSet, hooks as H
    from pytest_circuits.models import load_model

    url, ckpt, local, barrier, me, other, rounds = sys.argv[1:]
    warnings.simplefilter("error", CacheWarning)
    model = load_model(ckpt, cache_dir=local, device="cpu")
    hook = H.resid_post(1)
    both = 0
    for r in range(int(rounds)):
        ps = PromptSet.build(model, [f"the cat sat on the mat {r}", "the dog"], name=f"race{r}")
        truth = ActivationStore(cache_dir=None).get(model, ps, [hook])[hook]
        Path(f"{barrier}.{r}.{me}").touch()
        while not Path(f"{barrier}.{r}.{other}").exists():
            time.sleep(0.0005)
        store = ActivationStore(cache_dir=url)
        got = store.get(model, ps, [hook])[hook]           # both miss: both compute and publish
        assert got.equal(truth)
        Path(f"{barrier}.{r}.{me}.wrote{store.counters.computed}").touch()
        while not list(Path(barrier).parent.glob(f"{Path(barrier).name}.{r}.{other}.wrote*")):
            time.sleep(0.0005)
        back = ActivationStore(cache_dir=url)
        value = back.get(model, ps, [hook])[hook]
        assert back.counters.disk_hits == 1 and back.counters.recomputed_bad == 0, back.counters
        assert value.equal(truth)
    print("ok")
""")


def test_two_processes_racing_on_the_same_keys(s3, tiny_dir, tmp_path):
    """Two processes start each round together, both miss the same entry, compute it and
    publish it at once; both succeed, and the entry then reads back verified (checked in
    each process after both have written). Rounds where both wrote are counted: a round in
    which one process read the other's entry instead is no race, and at least one round
    must have been a real one."""
    url = s3.url("race")
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    rounds = 12
    procs = [subprocess.Popen([sys.executable, str(script), url, str(tiny_dir), str(tmp_path / f"local-{me}"),
                               str(tmp_path / "barrier"), me, other, str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
             for me, other in (("a", "b"), ("b", "a"))]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip().endswith("ok"), err[-3000:]
        assert SECRET not in out + err
    both = sum(all((tmp_path / f"barrier.{r}.{me}.wrote1").exists() for me in "ab") for r in range(rounds))
    print(f"\nrace: {both} of {rounds} rounds had both processes writing the same entry")
    assert both >= 1, "no round had both processes writing the same entry"
    assert len(s3.keys(url, "activations/")) == rounds
    assert not [k for k in s3.keys(url) if k.rpartition("/")[2].startswith(".")]   # no temporary keys


# ----------------------------------------------------------------- the plugin
CLAIM = textwrap.dedent("""
    import pytest
    from pytest_circuits import PromptSet, metrics

    @pytest.mark.claim(source="test", finding="the tiny model has a finite loss")
    def test_loss(model, activations):
        ps = PromptSet.build(model, ["the cat sat on the mat", "the dog sat"])
        m = metrics.loss(model, ps, activations=activations)
        assert m.upper < 1e9
""")


def _run(pytester, *args, **env):
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        start = time.perf_counter()
        r = pytester.runpytest("-p", "no:cacheprovider", *args)
        r.seconds = time.perf_counter() - start
    return r


def _all_output(r, *files: Path) -> str:
    return r.stdout.str() + r.stderr.str() + "".join(f.read_text() for f in files if f.exists())


def test_plugin_cold_warm_clear_and_no_cache(pytester, s3, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PYTEST_CIRCUITS_CACHE_DIR", raising=False)
    pytester.makepyfile(test_claim=CLAIM)
    url = s3.url("plugin")
    model = f"--circuits-model={tiny_dir}"
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    cold = _run(pytester, model, f"--circuits-cache-dir={url}", f"--circuits-report={report}",
                f"--junitxml={junit}", "-rA")
    cold.assert_outcomes(passed=1)
    cold.stdout.fnmatch_lines(["activations: 1 forward passes (* prompts), 0 hits from memory, 0 from disk, 1 computed", f"cache: {url}"])
    assert len(s3.keys(url, "activations/")) == 1
    # warm, three ways of naming the bucket: 0 forward passes, served from the bucket
    pytester.makeini(f"[pytest]\ncircuits_cache_dir = {url}\n")
    for how, args, env in (("option", [f"--circuits-cache-dir={url}"], {}),
                           ("env", [], {"PYTEST_CIRCUITS_CACHE_DIR": url}),
                           ("ini", [], {})):
        warm = _run(pytester, model, *args, **env)
        warm.assert_outcomes(passed=1)
        warm.stdout.fnmatch_lines(["activations: 0 forward passes (0 prompts), 0 hits from memory, 1 from disk, "
                                   "0 computed", f"cache: {url}"])
    # --circuits-no-cache: memory only, nothing new in the bucket
    nocache = _run(pytester, model, f"--circuits-cache-dir={url}", "--circuits-no-cache")
    nocache.stdout.fnmatch_lines(["activations: 1 forward passes*", f"cache: {url} (converted weights only*"])
    # --circuits-clear-cache empties the bucket's activations prefix first
    s3.put(url, "weights/keep-me/COMPLETE", b"{}")
    cleared = _run(pytester, model, f"--circuits-cache-dir={url}", "--circuits-clear-cache")
    cleared.stdout.fnmatch_lines(["activations: 1 forward passes*"])
    assert len(s3.keys(url, "activations/")) == 1 and s3.keys(url, "weights/") == ["keep-me/COMPLETE"]
    assert SECRET not in _all_output(cold, report, junit) + _all_output(warm) + _all_output(cleared)
    print(f"\nplugin against moto: cold {cold.seconds:.1f} s, warm {warm.seconds:.1f} s")


@pytest.mark.parametrize("case", ["missing bucket", "unknown protocol", "no bucket named",
                                  "credentials in the URL"])
def test_unusable_url_is_a_usage_error(pytester, s3, tiny_dir, case):
    url = {"missing bucket": "s3://no-such-bucket-a14/x",
           "unknown protocol": "nosuchproto://bucket/x",
           "no bucket named": "s3://",
           "credentials in the URL": f"s3://AKIAFAKEA14:{URL_SECRET}@no-such-bucket-a14/x?sig={URL_SECRET}"}[case]
    pytester.makepyfile(test_claim=CLAIM)
    r = _run(pytester, f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={url}")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    out = _all_output(r)
    assert "--circuits-cache-dir=" in out and "cannot be used" in out
    assert SECRET not in out and URL_SECRET not in out and "AKIAFAKEA14" not in out
    assert "test_loss" not in r.stdout.str()      # no claim ran


@pytest.mark.parametrize("case", ["s3fs missing", "endpoint unreachable"])
def test_subprocess_usage_errors(pytester, s3, tiny_dir, case):
    """A missing s3fs (hidden from a fresh interpreter) names the pip install; an endpoint
    where nothing listens is refused before any claim. Both exit 4, in a real process."""
    pytester.makepyfile(test_claim=CLAIM)
    env = {}
    if case == "s3fs missing":
        pytester.makeconftest("import sys\nsys.modules['s3fs'] = None\n")
        want = "pip install s3fs"
    else:
        import socket

        with socket.socket() as sock:            # a port with nothing listening on it
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"}
        want = "cannot be used"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        r = pytester.runpytest_subprocess(f"--circuits-model={tiny_dir}", f"--circuits-cache-dir={s3.url('x')}",
                                          "-p", "no:cacheprovider", timeout=300)
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str() + r.stderr.str()
    out = _all_output(r)
    assert want in out and SECRET not in out


# ----------------------------------------------------------------- converted weights
CONVERSIONS: list[str] = []
TEAM_KEY = "TeamKey-a14-never-print-0f3b9c2d71"
POISONED_TENSOR = "model.layers.0.self_attn.o_proj.weight"


def _register_converted(name: str, source: Path, old_contract: bool = False) -> None:
    """A registered model whose loader converts ``source`` (copies its files) into the cache's
    weights folder, through the same converted-weights path as the embedded model, and
    reports the fingerprint that path gives. Its loader gets the load's request (and passes
    its remote cache on), or with ``old_contract`` is ``loader(cache_dir, device, dtype)``,
    which is not handed the remote cache and must still reach it."""

    def convert(out: Path) -> None:
        CONVERSIONS.append(name)
        for f in source.iterdir():
            shutil.copy(f, out / f.name)

    folder = f"{name}-0123"
    identity = {"source": name, "converter": "copy 1"}

    if old_contract:
        @M.register_model(name, "a tiny converted checkpoint (tests, the old loader contract)")
        def _load_old(cache: Path, device: str, dtype):
            conv = M.converted_weights(cache / "weights" / folder, convert, identity)
            return L._boot_converted(conv.folder, conv.identities, LoadRequest(cache, device, dtype)), conv.fingerprint
        return

    @M.register_model(name, "a tiny converted checkpoint (tests)")
    def _load(request: LoadRequest):
        conv = M.converted_weights(request.cache / "weights" / folder, convert, identity, remote=request.remote)
        return L._boot_converted(conv.folder, conv.identities, request), conv.fingerprint


class Machine:
    """Loads of one registered converted model from one bucket prefix; ``fresh()`` forgets
    the local staging folder, as a new CI runner starts without it."""

    def __init__(self, s3, tiny_dir: Path, tmp_path: Path, monkeypatch, old_contract: bool = False) -> None:
        monkeypatch.delenv("PYTEST_CIRCUITS_CACHE_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        self.s3, self.tmp_path = s3, tmp_path
        self.name = f"tiny-converted-{uuid.uuid4().hex[:6]}"
        _register_converted(self.name, tiny_dir, old_contract)
        self.url = s3.url("weights")
        self.folder = f"weights/{self.name}-0123"
        self.staging = L._cache_folder(self.url)[0]
        assert self.staging.is_relative_to(tmp_path / "xdg")

    def load(self):
        return M.load_model(self.name, cache_dir=self.url, device="cpu")

    @staticmethod
    def logits(model):
        ps = PromptSet.build(model, ["the cat sat on the mat", "the capital of France is"])
        return ActivationStore(cache_dir=None).get(model, ps, [H.LOGITS_LAST])[H.LOGITS_LAST]

    def conversions(self) -> int:
        return CONVERSIONS.count(self.name)

    def fresh(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def remote(self, rel: str) -> bytes:
        return self.s3.get(self.url, f"{self.folder}/{rel}")

    def manifest(self) -> dict:
        return json.loads(self.remote("COMPLETE"))

    def poison(self) -> bytes:
        """What the attacker did: one attention output of the bucket's weights scaled x0.5
        and COMPLETE rewritten with the new file's sha256 (a manifest that agrees with
        itself; its MAC, which the attacker cannot compute, left as it was)."""
        import hashlib

        from safetensors.torch import load, save

        tensors = load(self.remote("model.safetensors"))
        tensors[POISONED_TENSOR] = tensors[POISONED_TENSOR] * 0.5
        data = save(tensors, metadata={"format": "pt"})
        self.s3.put(self.url, f"{self.folder}/model.safetensors", data)
        record = self.manifest()
        record["files"]["model.safetensors"] = hashlib.sha256(data).hexdigest()
        self.s3.put(self.url, f"{self.folder}/COMPLETE", json.dumps(record).encode())
        return data


@pytest.fixture
def machine(s3, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("PYTEST_CIRCUITS_CACHE_KEY", raising=False)
    return Machine(s3, tiny_dir, tmp_path, monkeypatch)


def test_a_loader_of_the_old_contract_still_reaches_the_bucket(s3, tiny_dir, tmp_path, monkeypatch):
    """A loader registered as ``loader(cache_dir, device, dtype)`` is not handed the load's
    request; its converted weights still go through the remote cache as before: published to
    the bucket, and a poisoned bucket copy is named and never loaded."""
    monkeypatch.delenv("PYTEST_CIRCUITS_CACHE_KEY", raising=False)
    m = Machine(s3, tiny_dir, tmp_path, monkeypatch, old_contract=True)
    good_fp = M.info(_quiet(m.load)).fingerprint
    assert "COMPLETE" in s3.keys(m.url, m.folder + "/") and m.conversions() == 1
    poisoned = m.poison()
    m.fresh()
    with pytest.warns(CacheWarning, match="differ from what this machine derived"):
        model = m.load()
    assert M.info(model).fingerprint == good_fp and m.remote("model.safetensors") == poisoned


def test_without_key_remote_weights_are_never_loaded_and_a_poisoned_bucket_is_refused(machine, tiny, s3):
    """No team key: a machine converts its weights itself and only compares them with the
    bucket's copy. The attack (one attention output x0.5, COMPLETE rewritten to agree)
    gives a CacheWarning naming the bucket's copy; that copy is never loaded and nothing is
    published over it; the weights loaded are this machine's, with the good fingerprint."""
    m = machine
    model = _quiet(m.load)
    reference, good_fp = m.logits(model), M.info(model).fingerprint
    assert good_fp.startswith("converted-sha256:") and m.conversions() == 1
    assert "COMPLETE" in s3.keys(m.url, m.folder + "/") and "mac" not in m.manifest()
    # the bucket lost them (a failed publish, a clean-up): the next load publishes them again
    for rel in s3.keys(m.url, m.folder + "/"):
        s3.client.delete_object(Bucket=BUCKET, Key=s3.key(m.url, f"{m.folder}/{rel}"))
    assert torch.equal(m.logits(_quiet(m.load)), reference)
    assert "COMPLETE" in s3.keys(m.url, m.folder + "/") and m.conversions() == 1
    # a fresh machine converts for itself, finds the bucket's copy equal to it: no warning
    m.fresh()
    model = _quiet(m.load)
    assert m.conversions() == 2 and M.info(model).fingerprint == good_fp
    # the attack
    poisoned = m.poison()
    m.fresh()
    with pytest.warns(CacheWarning, match=r"converted weights at s3://.*/weights/tiny-converted-\w+-0123 differ from "
                                          r"what this machine derived .*model.safetensors.*never loaded.*nothing is "
                                          r"published over it") as caught:
        model = m.load()
    assert m.conversions() == 3
    assert torch.equal(m.logits(model), reference) and M.info(model).fingerprint == good_fp
    assert m.remote("model.safetensors") == poisoned          # nothing published over it
    # every warm load says so again (one small read), and still publishes nothing
    with pytest.warns(CacheWarning, match="differ from what this machine derived"):
        m.load()
    assert m.conversions() == 3 and m.remote("model.safetensors") == poisoned
    assert all(SECRET not in str(w.message) for w in caught)
    # a manifest that is not one (deeply nested JSON, not JSON, a list, a file named with a
    # NUL) is warned about like any other difference, never a crash
    for garbage in (b"[" * 100000 + b"]" * 100000, b"\xff\xfe{", b"[1, 2]",
                    json.dumps({**m.manifest(), "files": {"a\u0000b": "0" * 64}}).encode()):
        s3.put(m.url, f"{m.folder}/COMPLETE", garbage)
        with pytest.warns(CacheWarning, match="differ from what this machine derived"):
            m.load()
        assert m.remote("COMPLETE") == garbage


def test_activations_of_poisoned_weights_are_never_served_to_good_weights(machine, s3):
    """A machine that did load the poisoned copy (its own disk holds it: the local disk is
    trusted without a key) keys its activations on the poisoned weights' fingerprint, so a
    machine with good weights sharing the bucket never reads them: it runs its own forward."""
    m = machine
    good = _quiet(m.load)
    reference, good_fp = m.logits(good), M.info(good).fingerprint
    m.poison()
    victim = m.staging
    shutil.rmtree(victim / "weights" / f"{m.name}-0123")
    (victim / "weights" / f"{m.name}-0123").mkdir(parents=True)
    for rel in s3.keys(m.url, m.folder + "/"):
        (victim / "weights" / f"{m.name}-0123" / rel).write_bytes(m.remote(rel))
    bad = _quiet(m.load)                                       # local and self-consistent: loaded
    bad_logits, bad_fp = m.logits(bad), M.info(bad).fingerprint
    assert bad_fp != good_fp and bad_fp.startswith("converted-sha256:")
    assert (bad_logits - reference).abs().max() > 1e-3         # the poison changes the outputs
    ps_bad = PromptSet.build(bad, PROMPTS, name="shared")
    _quiet(lambda: ActivationStore(cache_dir=m.url).get(bad, ps_bad, [HOOK, H.LOGITS_LAST]))
    assert len(s3.keys(m.url, "activations/")) == 2            # published under the poisoned key
    ps_good = PromptSet.build(good, PROMPTS, name="shared")
    store = ActivationStore(cache_dir=m.url)
    got = _quiet(lambda: store.get(good, ps_good, [HOOK, H.LOGITS_LAST]))
    assert store.counters.disk_hits == 0 and store.counters.forward_passes == 1
    truth = ActivationStore(cache_dir=None).get(good, ps_good, [HOOK, H.LOGITS_LAST])
    assert torch.equal(got[H.LOGITS_LAST], truth[H.LOGITS_LAST]) and torch.equal(got[HOOK], truth[HOOK])
    assert len(s3.keys(m.url, "activations/")) == 4


def test_with_key_only_signed_remote_weights_are_fetched(s3, tiny_dir, tmp_path, monkeypatch):
    """With the team key a fresh machine fetches the bucket's copy instead of converting,
    but only when its manifest's MAC verifies and every file matches it; otherwise it
    converts, warns naming the copy, and publishes its own signed conversion over it."""
    monkeypatch.setenv("PYTEST_CIRCUITS_CACHE_KEY", TEAM_KEY)
    m = Machine(s3, tiny_dir, tmp_path, monkeypatch)
    model = _quiet(m.load)
    reference, good_fp = m.logits(model), M.info(model).fingerprint
    good_bytes = m.remote("model.safetensors")
    assert m.conversions() == 1 and len(m.manifest()["mac"]) == 64
    # a fresh machine: fetched, verified, not converted; the same fingerprint
    m.fresh()
    model = _quiet(m.load)
    assert m.conversions() == 1 and M.info(model).fingerprint == good_fp
    assert torch.equal(m.logits(model), reference)
    caught = []

    def refused(match: str):
        m.fresh()
        with pytest.warns(CacheWarning, match=match) as got:
            model = m.load()
        assert len([w for w in got if issubclass(w.category, CacheWarning)]) == 1, [str(w.message) for w in got]
        caught.extend(got)
        assert torch.equal(m.logits(model), reference) and M.info(model).fingerprint == good_fp
        assert m.remote("model.safetensors") == good_bytes     # the signed good copy published over it
        m.fresh()
        _quiet(m.load)                                         # ... which the next machine fetches
        return m.conversions()

    # a file changed under a signed manifest (a corrupted object)
    raw = bytearray(good_bytes)
    raw[-3] ^= 0x10
    s3.put(m.url, f"{m.folder}/model.safetensors", bytes(raw))
    assert refused(r"copy from s3://.* is unusable \(never loaded\): model.safetensors has sha256") == 2
    # the attack: poisoned weights, a self-consistent manifest, the old MAC
    m.poison()
    assert refused(r"copy from s3://.* is unusable \(never loaded\): .*MAC does not verify") == 3
    # the attack with the MAC removed (as a machine without the key would publish)
    m.poison()
    record = m.manifest()
    del record["mac"]
    s3.put(m.url, f"{m.folder}/COMPLETE", json.dumps(record).encode())
    assert refused("carries no MAC under \\$PYTEST_CIRCUITS_CACHE_KEY") == 4
    # the attack signed with another key
    m.poison()
    record = m.manifest()
    record["mac"] = W._manifest_mac(CK.TeamKey(b"another-key-of-32-characters-xx"), f"{m.name}-0123", record)
    s3.put(m.url, f"{m.folder}/COMPLETE", json.dumps(record).encode())
    assert refused("MAC does not verify") == 5
    # a manifest signed with the key (a key holder's mistake) naming a path outside its
    # folder: nothing is written outside it
    record = m.manifest()
    record["files"] = {"../../escaped": "0" * 64}
    record["mac"] = W._manifest_mac(CK.TeamKey(TEAM_KEY.encode()), f"{m.name}-0123", record)
    s3.put(m.url, f"{m.folder}/COMPLETE", json.dumps(record).encode())
    s3.put(m.url, "escaped", b"x")
    m.fresh()
    with pytest.warns(CacheWarning, match="unusable"):
        m.load()
    assert not list(tmp_path.rglob("escaped"))
    m.fresh()
    _quiet(m.load)
    # warm loads (the staging folder kept) look at the bucket's manifest: the same files
    # unsigned (a machine without the key published them) get a signed manifest, quietly;
    # poisoned and unsigned, a warning and this machine's signed copy
    record = m.manifest()
    del record["mac"]
    s3.put(m.url, f"{m.folder}/COMPLETE", json.dumps(record).encode())
    _quiet(m.load)
    assert "mac" in m.manifest() and m.conversions() == 6
    m.poison()
    record = m.manifest()
    del record["mac"]
    s3.put(m.url, f"{m.folder}/COMPLETE", json.dumps(record).encode())
    with pytest.warns(CacheWarning, match="carry no valid MAC .* and differ .*model.safetensors: sha256"):
        m.load()
    assert m.remote("model.safetensors") == good_bytes and "mac" in m.manifest() and m.conversions() == 6
    # signed garbage (a key holder's mistake): a file named with a NUL, deeply nested JSON
    for garbage in ({**m.manifest(), "files": {"a\u0000b": "0" * 64}}, {**m.manifest(), "x": [[[[1]]]]}):
        garbage["mac"] = W._manifest_mac(CK.TeamKey(TEAM_KEY.encode()), f"{m.name}-0123", garbage)
        s3.put(m.url, f"{m.folder}/COMPLETE", json.dumps(garbage).encode())
        m.fresh()
        with pytest.warns(CacheWarning, match="unusable"):
            m.load()
    m.fresh()
    _quiet(m.load)
    # a machine without the key shares the bucket: it converts for itself and finds the
    # signed copy equal to its own (the MAC is ignored, nothing is published)
    monkeypatch.delenv("PYTEST_CIRCUITS_CACHE_KEY")
    before = m.manifest()
    m.fresh()
    assert M.info(_quiet(m.load)).fingerprint == good_fp and m.manifest() == before
    for w in caught:
        assert TEAM_KEY not in str(w.message) and SECRET not in str(w.message)


def _forge(s3, url: str, store: ActivationStore, model, ps, other, hook: str) -> None:
    """Write, at the entry of (``model``, ``ps``, ``hook``), the tensor of another prompt set
    ``other`` with this key's fields, a recomputed checksum and the MAC of the genuine
    entry (all a writer of the bucket without the key can do)."""
    from safetensors.torch import save

    from pytest_circuits import store as S

    base = store._base_fields(model, ps, None)
    rel = store._relpath(store._key(base, hook))
    genuine = _header(s3.get(url, rel))[0].get("__metadata__", {})
    fields = json.dumps({**base, "hook": hook}, sort_keys=True)
    value = ActivationStore(cache_dir=None).get(model, other, [hook])[hook].contiguous()
    meta = {"format": S.ENTRY_FORMAT, "fields": fields, "sha256": S.entry_sha256(fields, value)}
    if "mac" in genuine:
        meta["mac"] = genuine["mac"]
    s3.put(url, rel, save({"value": value}, metadata=meta))


@pytest.mark.parametrize("keyed", [False, True], ids=["no key", "team key"])
def test_forged_entry_in_the_bucket(s3, tiny, ps, truth, monkeypatch, keyed):
    """Another prompt set's tensor under this key, its checksum recomputed: the checksum
    detects corruption, not tampering, so without the key it is served (the documented
    limitation); with the key it is refused, recomputed and republished signed."""
    if keyed:
        monkeypatch.setenv("PYTEST_CIRCUITS_CACHE_KEY", TEAM_KEY)
    else:
        monkeypatch.delenv("PYTEST_CIRCUITS_CACHE_KEY", raising=False)
    url = s3.url("forged")
    _quiet(lambda: ActivationStore(cache_dir=url).get(tiny, ps, [HOOK]))
    other = PromptSet.build(tiny, PROMPTS[::-1], name="other")
    forged = ActivationStore(cache_dir=None).get(tiny, other, [HOOK])[HOOK]
    assert forged.shape == truth[HOOK].shape and not torch.allclose(forged, truth[HOOK])
    store = ActivationStore(cache_dir=url)
    _forge(s3, url, store, tiny, ps, other, HOOK)
    if not keyed:
        got = _quiet(lambda: store.get(tiny, ps, [HOOK])[HOOK])
        assert store.counters.disk_hits == 1 and torch.equal(got, forged)     # served: the limitation
        return
    with pytest.warns(CacheWarning, match=r"s3://.*unusable \(its MAC does not verify under \$PYTEST_CIRCUITS_CACHE_KEY"):
        got = store.get(tiny, ps, [HOOK])[HOOK]
    assert store.counters.recomputed_bad == 1 and store.counters.forward_passes == 1
    torch.testing.assert_close(got, truth[HOOK], atol=1e-5, rtol=1e-5)
    again = ActivationStore(cache_dir=url)
    assert torch.equal(_quiet(lambda: again.get(tiny, ps, [HOOK])[HOOK]), got)
    assert again.counters.disk_hits == 1
