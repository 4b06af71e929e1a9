"""Repository-wide pytest set-up (the plugin itself is loaded by its entry point)."""

import os

from hypothesis import settings

from pytest_circuits import strategies  # noqa: F401  (registers the circuits profiles)

pytest_plugins = ["pytester"]

# Model claims are expensive: few examples, no deadline; derandomized in CI so a run
# is reproducible from its log.
settings.load_profile("circuits-ci" if os.environ.get("CI") else "circuits")
