"""Files in the cache folder: temporary names, orphan clean-up, and a writability check.

Everything pytest-circuits writes into its cache folder (activation entries, converted
weights, the weights-hash memo) is first written under a temporary name made by
:func:`tmp_name` and then moved into place with ``os.replace``. A temporary name records
the host and the process id of its writer, so a later run can tell a leftover of a
killed process from a write still in progress:

- a temporary file or folder of a process that no longer runs on this host is removed;
- one from another host (a shared cache folder), or in an older naming, is removed once
  it is older than :data:`ORPHAN_AGE_S` (no write takes that long).

:func:`cache_dir_problem` says, without creating anything, whether a folder can hold the
cache; the plugin turns its answer into a usage error before any claim runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

ORPHAN_AGE_S = 3600.0
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:40] or "host"
_OWNED = re.compile(r"\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)(?:-\d+)?\.tmp$")


def tmp_name(final: str) -> str:
    """A hidden temporary name next to ``final`` that records this host, process and thread."""
    return f".{final}.{_HOST}-{os.getpid()}-{threading.get_ident()}.tmp"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def is_orphan(path: Path, now: float | None = None, max_age_s: float = ORPHAN_AGE_S) -> bool:
    """Whether the temporary ``path`` was left behind by a writer that is gone."""
    m = _OWNED.search(path.name)
    if m and m["host"] == _HOST:
        return not _pid_alive(int(m["pid"]))
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except OSError:
        return False
    return age > max_age_s


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return True          # someone else cleaned it
    except OSError:
        return False
    return True


def remove_orphans_in(directory: Path, *, safetensors_tmp: bool = False) -> list[Path]:
    """Remove the orphaned hidden ``.*.tmp`` files and folders directly in ``directory``
    (and, with ``safetensors_tmp``, the ``.tmp*`` files safetensors may leave); return
    them. Best effort: a folder that cannot be listed or cleaned is left as it is."""
    now = time.time()
    removed: list[Path] = []
    try:
        candidates = list(Path(directory).glob(".*.tmp"))
        if safetensors_tmp:
            candidates += [p for p in Path(directory).glob(".tmp*") if not p.name.endswith(".tmp")]
    except OSError:
        return removed
    for path in candidates:
        if is_orphan(path, now) and _remove(path):
            removed.append(path)
    return removed


def remove_orphans(cache: Path) -> list[Path]:
    """Remove the leftovers of killed writers anywhere in the cache folder ``cache``:
    in the folder itself (the hash memo), in ``weights/`` (half-converted checkpoint
    folders) and in ``activations/<xx>/`` (activation entries). Returns what was removed."""
    cache = Path(cache)
    removed = remove_orphans_in(cache) + remove_orphans_in(cache / "weights")
    with contextlib.suppress(OSError):
        for sub in (cache / "activations").iterdir():
            if sub.is_dir():
                removed += remove_orphans_in(sub, safetensors_tmp=True)
    return removed


def cache_dir_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot hold the cache (converted weights and activations), or None.

    Creates nothing: for ``path/activations`` and ``path/weights`` the nearest folder
    that exists must be a folder (not a file) in which a file can be created; that is
    checked by creating and removing one hidden temporary file (so it is also right for
    root, for whom permission bits do not apply, and on read-only file systems).
    """
    root = Path(path).expanduser()
    for target in (root / "activations", root / "weights"):
        probe_dir = target
        while not os.path.lexists(probe_dir):
            if probe_dir.parent == probe_dir:
                break
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            what = "a file" if probe_dir.exists() else "not a folder"
            return (f"{probe_dir} is {what}, so {target} cannot be created")
        probe = probe_dir / tmp_name("write-probe")
        try:
            with open(probe, "x"):
                pass
        except OSError as e:
            return f"cannot create files in {probe_dir} ({e.strerror or e})"
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    return None
