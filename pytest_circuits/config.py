"""Project-wide defaults every layer may read (a leaf: no project imports).

* :data:`DEFAULT_MODEL`: the model claims run against when nothing names one (the
  embedded SmolLM2; :mod:`pytest_circuits.models` registers it under this name);
* :func:`default_cache_dir`: where converted weights and activations are kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

VERSION = "0.1.0"            # the package version (pytest_circuits.__version__)
DEFAULT_MODEL = "smollm2-135m"


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
