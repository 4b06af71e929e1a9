"""The cache-location layer (pytest_circuits.blobs) without a server: URL recognition, the
description that never shows credentials, keys that cannot leave the prefix, and the
errors for unknown protocols and missing packages. The same API over a real S3 server is
tested in tests/plugin/test_s3_cache.py (test_blobs_api, over local, memory and s3)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from pytest_circuits import blobs as B
from pytest_circuits.config import cache_location, default_cache_dir, is_url
from pytest_circuits.errors import CircuitsError


@pytest.mark.parametrize("location, url", [
    ("s3://bucket/prefix", True), ("gcs://b/p", True), ("simplecache::s3://b/p", True),
    ("memory://x", True), ("file:///tmp/x", True), ("/tmp/x", False), ("rel/path", False),
    ("C:\\cache", False), ("s3:/bucket", False), ("", False), ("3s://b", False),
])
def test_is_url(location, url):
    assert is_url(location) is url


@pytest.mark.parametrize("url, shown", [
    ("s3://bucket/prefix", "s3://bucket/prefix"),
    ("s3://AKIAFAKE:S3CR3T-PW@bucket/prefix", "s3://bucket/prefix"),
    ("s3://bucket/prefix?X-Amz-Signature=S3CR3T#frag", "s3://bucket/prefix"),
    ("simplecache::s3://u:S3CR3T@b/p?token=S3CR3T", "simplecache::s3://b/p"),
    ("gcs://bucket", "gcs://bucket"),
    ("https://user:S3CR3T@host:8443/a/b?sig=1", "https://host:8443/a/b"),
])
def test_describe_never_shows_credentials(url, shown):
    assert B.describe_url(url) == shown
    assert "S3CR3T" not in B.describe_url(url)


def test_error_text_masks_url_secrets():
    e = RuntimeError("could not reach http://x/AKIAFAKE:S3CR3T-PW@bucket/k?sig=QQQ")
    text = B._short(e, "s3://AKIAFAKE:S3CR3T-PW@bucket/k?sig=QQQ")
    assert "S3CR3T" not in text and "QQQ" not in text and "AKIAFAKE" not in text
    assert text.startswith("RuntimeError: ")


@pytest.fixture(params=["local", "memory"])
def blobs(request, tmp_path):
    if request.param == "local":
        return B.open_blobs(tmp_path / "cache")
    return B.open_blobs(f"memory://pytest-circuits-{uuid.uuid4().hex}/cache")


@pytest.mark.parametrize("key", ["", "/abs", "../x", "a/../../x", "a//b", "a/./b", "a\\b"])
def test_keys_cannot_leave_the_location(blobs, key):
    for op in (lambda: blobs.read(key), lambda: blobs.publish(key, b"x")):
        with pytest.raises(B.BlobError, match="not valid"):
            op()


def test_file_url_is_local(tmp_path):
    b = B.open_blobs(f"file://{tmp_path}/c")
    assert isinstance(b, B.LocalBlobs) and not b.is_remote and b.root == tmp_path / "c"


@pytest.mark.parametrize("url, match", [
    ("nosuchproto://bucket/x", "unknown protocol 'nosuchproto'"),
    ("s3://", "names no bucket"),
])
def test_bad_urls(url, match):
    with pytest.raises(B.BlobError, match=match):
        B.open_blobs(url)
    assert issubclass(B.BlobError, CircuitsError)
    assert match in B.location_problem(url, probe=False)


def test_missing_protocol_package_names_the_install():
    """A URL whose protocol's package is missing (s3fs hidden in a fresh interpreter): the
    error names the pip install; the credentials in the URL are not echoed."""
    code = ("import sys; sys.modules['s3fs'] = None\n"
            "from pytest_circuits.blobs import open_blobs, BlobError\n"
            "try:\n    open_blobs('s3://KEY:S3CR3T@bucket/prefix')\n"
            "except BlobError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout and "pip install s3fs" in out.stdout, out.stdout
    assert "s3://bucket/prefix" in out.stdout and "S3CR3T" not in out.stdout + out.stderr


def test_env_url_is_the_default_location_not_a_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PYTEST_CIRCUITS_CACHE_DIR", "s3://bucket/prefix")
    assert cache_location() == "s3://bucket/prefix"
    assert default_cache_dir() == tmp_path / "pytest-circuits"    # never a folder named "s3:"
    monkeypatch.setenv("PYTEST_CIRCUITS_CACHE_DIR", str(tmp_path / "c"))
    assert cache_location() == default_cache_dir() == tmp_path / "c"


def test_fsspec_not_imported_for_local_paths(tmp_path):
    code = ("import sys\nfrom pytest_circuits.blobs import open_blobs\n"
            f"b = open_blobs({str(tmp_path)!r}); b.publish('a/b', b'x'); assert b.read('a/b') == b'x'\n"
            "print('fsspec' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
