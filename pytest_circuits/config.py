"""Project-wide defaults every layer may read (a leaf: no project imports).

* :data:`DEFAULT_MODEL`: the model claims run against when nothing names one (the
  embedded SmolLM2; :mod:`pytest_circuits.models` registers it under this name);
* :func:`default_cache_dir`: where converted weights and activations are kept.
"""

from __future__ import annotations

import os
from pathlib import Path

VERSION = "0.1.0"            # the package version (pytest_circuits.__version__)
DEFAULT_MODEL = "smollm2-135m"


def default_cache_dir() -> Path:
    """``$PYTEST_CIRCUITS_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-circuits``, else ``~/.cache/...``.

    Kept outside ``.pytest_cache`` on purpose: ``pytest --cache-clear`` must not throw
    away converted weights and activations.
    """
    env = os.environ.get("PYTEST_CIRCUITS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-circuits"
