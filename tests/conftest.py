"""The real services, started once per test run and shared by every room's tests.

Property tests draw the same cases on every run (hypothesis's ``derandomize``), so a red run is a
change's doing, never a lucky draw; ``HYPOTHESIS_PROFILE=explore`` searches new cases (stop 22's CI
failed on one such draw: a real bug, found by search and then fixed and pinned by a test)."""

import os
import signal
from collections.abc import Iterator

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytest_plugins = ["tests.services.labelstudio", "tests.services.anvil", "tests.services.postgres"]

SIGTERM_AT_START = signal.getsignal(signal.SIGTERM)


@pytest.fixture(autouse=True)
def _sigterm_as_at_start() -> Iterator[None]:
    """SIGTERM's handler as pytest started with, before and after every test. A Dagster run in this
    process leaves SIGTERM as SIGINT's handler, which is *ignored* where pytest runs in the background
    (``pipelines.demo.sigterm_kept`` says why), and an ignored SIGTERM survives exec: a pool started
    by a later test could then never be terminated (CI hung so in stops 31 and 32). Set before the
    test too, since module-scoped fixtures (``test_replay``'s runs) materialize outside any test."""
    signal.signal(signal.SIGTERM, SIGTERM_AT_START)
    yield
    signal.signal(signal.SIGTERM, SIGTERM_AT_START)
