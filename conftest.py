"""Repository-wide pytest set-up (the plugin itself is loaded by its entry point)."""

import os

from hypothesis import settings

from pytest_circuits import strategies  # noqa: F401  (registers the circuits profiles)

# pytester (for tests/plugin) is enabled with -p pytester in pyproject.toml's addopts, not with
# pytest_plugins here: this file is also picked up when pytest collects the installed package's
# checkup claims (pytest --circuits-checkup) from another folder, where pytest_plugins is refused.

# Model claims are expensive: few examples, no deadline; derandomized in CI so a run
# is reproducible from its log.
settings.load_profile("circuits-ci" if os.environ.get("CI") else "circuits")
