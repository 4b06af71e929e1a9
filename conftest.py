"""Repository-wide pytest set-up (the plugin itself is loaded by its entry point)."""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

# Model claims are expensive: few examples, no deadline; derandomized in CI so a run
# is reproducible from its log.
settings.register_profile("circuits", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("circuits"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "circuits")
