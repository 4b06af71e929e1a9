"""Where cache entries are kept: a local folder or any fsspec URL (``s3://bucket/prefix``, ...).

The activation store and the converted-weights cache keep content-addressed entries: a
key's bytes never change, so writing one is "publish once" and a second writer of the same
key writes the same bytes. :func:`open_blobs` gives, for a location, a :class:`Blobs` with
the few operations they need, on relative keys (``activations/ab/abcd....safetensors``):

- :meth:`Blobs.read` -> the bytes, or None when there is no such entry;
- :meth:`Blobs.publish` -> written under a temporary key first (named by
  :func:`pytest_circuits.cachefiles.tmp_name`), then moved to the final key, so a reader
  never sees a partly written entry under the final key;
- :meth:`Blobs.delete`, :meth:`Blobs.clear` (a whole prefix), :meth:`Blobs.listdir`;
- :meth:`Blobs.describe` -> the location for messages and summaries, never with
  credentials (a URL's ``user:password@`` and query string are dropped);
- :meth:`Blobs.problem` -> why the location cannot hold the cache (unknown protocol,
  missing package, bucket missing or unreachable, no permission), or None.

fsspec (and the protocol's own package, e.g. ``s3fs``) is imported only for URLs, when a
URL is first opened. Credentials come from where the protocol's package reads them (for
S3: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``, ``~/.aws``, instance
roles; an endpoint from ``AWS_ENDPOINT_URL`` or fsspec's ``FSSPEC_S3_*`` configuration):
nothing here reads, stores or prints them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from .cachefiles import tmp_name
from .config import is_url  # noqa: F401 - part of this module's interface
from .errors import BlobError, CircuitsError

# The packages fsspec names for common protocols (its own error says "Install s3fs to
# access S3"; ours also says how to get it with this package).
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
             "abfs": "adlfs", "abfss": "adlfs", "hf": "huggingface_hub"}


def describe_url(url: str) -> str:
    """``url`` without credentials: each part's ``user:password@``, query and fragment dropped."""
    parts = []
    for part in str(url).split("::"):
        m = re.match(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)?(?P<rest>.*)$", part, re.S)
        scheme, rest = m["scheme"] or "", m["rest"]
        rest = re.split(r"[?#]", rest, maxsplit=1)[0]
        if scheme:
            host, slash, path = rest.partition("/")
            host = host.rpartition("@")[2]
            rest = host + slash + path
        parts.append(scheme + rest)
    return "::".join(parts)


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _check_rel(relpath: str) -> str:
    """A relative key: no leading slash, no ``..`` or empty segments (a key must never
    reach outside the cache's prefix)."""
    segs = str(relpath).split("/")
    if not relpath or any(s in ("", ".", "..") for s in segs) or "\\" in relpath:
        raise BlobError(f"cache key {relpath!r} is not valid: a relative key like 'activations/ab/x'")
    return str(relpath)


class Blobs:
    """A cache location: keys relative to it (``"weights/name-digest/COMPLETE"``)."""

    is_remote: bool = False

    def read(self, relpath: str) -> bytes | None:  # pragma: no cover - interface
        raise NotImplementedError

    def publish(self, relpath: str, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def delete(self, relpath: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def clear(self, prefix: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def listdir(self, prefix: str) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def problem(self) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


class LocalBlobs(Blobs):
    """A local folder: temporary file + ``os.replace`` (atomic on one file system)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()

    def _path(self, relpath: str) -> Path:
        return self.root / _check_rel(relpath)

    def read(self, relpath: str) -> bytes | None:
        try:
            return self._path(relpath).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def publish(self, relpath: str, data: bytes) -> None:
        path = self._path(relpath)
        tmp = path.with_name(tmp_name(path.name))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def delete(self, relpath: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(relpath).unlink()

    def clear(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def listdir(self, prefix: str) -> list[str]:
        try:
            return sorted(p.name for p in self._path(prefix).iterdir() if p.is_file())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def describe(self) -> str:
        return str(self.root)

    def problem(self) -> str | None:
        from .cachefiles import cache_dir_problem

        return cache_dir_problem(self.root)


class FsspecBlobs(Blobs):
    """An fsspec file system under a root prefix (``s3://bucket/prefix``)."""

    is_remote = True

    def __init__(self, url: str) -> None:
        self.url = url.strip()
        self._description = describe_url(self.url)
        self.protocol = self.url.split("://", 1)[0].split("::")[-1].lower()
        try:
            import fsspec
        except ImportError:
            package = " ".join(["fsspec", *[_PACKAGES[self.protocol]] * (self.protocol in _PACKAGES)])
            raise BlobError(f"--circuits-cache-dir={self._description!r} needs fsspec: "
                            f"pip install 'pytest-circuits[s3]' (or pip install {package})") from None
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except ImportError as e:
            package = _PACKAGES.get(self.protocol)
            how = f"pip install {package}" + (" (or pip install 'pytest-circuits[s3]')" if package == "s3fs" else "")
            raise BlobError(f"--circuits-cache-dir={self._description!r}: the package for the "
                            f"{self.protocol!r} protocol is not installed ({how})") from None
        except ValueError as e:
            if "protocol" in str(e).lower():
                raise BlobError(f"--circuits-cache-dir={self._description!r}: unknown protocol "
                                f"{self.protocol!r} (fsspec knows s3, gcs, az, memory, file, ...)") from None
            raise BlobError(f"--circuits-cache-dir={self._description!r} is not a usable URL "
                            f"({type(e).__name__})") from None
        except Exception as e:  # noqa: BLE001 - the protocol's own set-up (never echoed: may hold secrets)
            raise BlobError(f"--circuits-cache-dir={self._description!r} cannot be opened "
                            f"({type(e).__name__})") from None
        self.root = str(self.root).rstrip("/")
        if not self.root.strip("/"):
            raise BlobError(f"--circuits-cache-dir={self._description!r} names no bucket or folder")

    def _key(self, relpath: str) -> str:
        return _join(self.root, _check_rel(relpath))

    def read(self, relpath: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._key(relpath))
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - network, permissions: say which entry, not the secrets
            raise BlobError(f"cannot read {_join(self._description, relpath)} ({_short(e, self.url)})") from None

    def publish(self, relpath: str, data: bytes) -> None:
        key = self._key(relpath)
        head, _, name = key.rpartition("/")
        tmp = _join(head, tmp_name(name))
        try:
            self.fs.pipe_file(tmp, bytes(data))
            self.fs.mv(tmp, key)
        except Exception as e:  # noqa: BLE001
            with contextlib.suppress(Exception):
                self.fs.rm_file(tmp)
            raise BlobError(f"cannot write {_join(self._description, relpath)} ({_short(e, self.url)})") from None
        finally:
            self.fs.invalidate_cache()

    def delete(self, relpath: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._key(relpath))
        self.fs.invalidate_cache()

    def clear(self, prefix: str) -> None:
        try:
            self.fs.rm(self._key(prefix), recursive=True)
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001
            raise BlobError(f"cannot clear {_join(self._description, prefix)} ({_short(e, self.url)})") from None
        finally:
            self.fs.invalidate_cache()

    def listdir(self, prefix: str) -> list[str]:
        self.fs.invalidate_cache()
        try:
            found = self.fs.ls(self._key(prefix), detail=True)
        except FileNotFoundError:
            return []
        except Exception as e:  # noqa: BLE001
            raise BlobError(f"cannot list {_join(self._description, prefix)} ({_short(e, self.url)})") from None
        return sorted(d["name"].rstrip("/").rpartition("/")[2] for d in found if d.get("type") == "file")

    def describe(self) -> str:
        return self._description

    def problem(self) -> str | None:
        """Publish, read back and delete a probe object (checks the bucket exists, can be
        reached, and the credentials may write and read)."""
        probe = f"activations/.write-probe-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            self.publish(probe, b"probe")
            back = self.read(probe)
            self.delete(probe)
        except BlobError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001
            return f"{self._description} cannot be used ({_short(e, self.url)})"
        if back != b"probe":
            return f"{self._description}: a probe object written there read back as {back!r}"
        return None


def _short(e: BaseException, url: str = "") -> str:
    """An exception as ``Type: first line`` (bounded), for messages, with the parts of ``url``
    that may hold secrets (``user:password@``, query, fragment) masked wherever they appear
    (botocore's messages name the bucket, key and endpoint, never the secret key, but a
    bucket parsed from ``key:secret@bucket`` would carry them)."""
    text = str(e).splitlines()[0][:300] if str(e) else ""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _secrets(url: str) -> list[str]:
    """The pieces of ``url`` that :func:`describe_url` drops (longest first)."""
    found: list[str] = []
    for part in str(url).split("::"):
        rest = part.split("://", 1)[-1]
        host = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if "@" in host:
            user = host.rpartition("@")[0]
            found += [user, *user.split(":")]
        m = re.search(r"[?#].*$", rest, re.S)
        if m:
            found += [m.group(0), m.group(0)[1:]]
    return sorted({f for f in found if len(f) >= 3}, key=len, reverse=True)


def open_blobs(location: str | os.PathLike[str]) -> Blobs:
    """A :class:`Blobs` for a local folder (a path) or an fsspec URL (``s3://b/prefix``)."""
    if is_url(location):
        url = str(location).strip()
        if url.startswith("file://"):
            return LocalBlobs(url[len("file://"):])
        return FsspecBlobs(url)
    return LocalBlobs(location)


def location_problem(location: str, *, probe: bool = True) -> str | None:
    """Why the cache location ``location`` (a URL) cannot be used, or None: it cannot be
    opened (unknown protocol, missing package, no bucket named) or, with ``probe``, a probe
    object cannot be written, read back and deleted there (bucket missing, unreachable,
    no permission). Messages show the location without credentials."""
    try:
        blobs = open_blobs(location)
    except BlobError as e:
        return str(e)
    return blobs.problem() if probe else None
