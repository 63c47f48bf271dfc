"""The real services, started once per test run and shared by every room's tests.

Property tests draw the same cases on every run (hypothesis's ``derandomize``), so a red run is a
change's doing, never a lucky draw; ``HYPOTHESIS_PROFILE=explore`` searches new cases (stop 22's CI
failed on one such draw: a real bug, found by search and then fixed and pinned by a test)."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytest_plugins = ["tests.services.labelstudio", "tests.services.anvil", "tests.services.postgres"]
