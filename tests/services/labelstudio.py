"""A real Label Studio for the test run: started once per session, stopped at the end.

Its data lives in pytest's temporary directory on a free port, so tests never touch a
developer's `.caravan/labelstudio`. Set CARAVAN_TEST_LABEL_STUDIO_URL (and
CARAVAN_TEST_LABEL_STUDIO_TOKEN) to run against a server that is already up instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from labeling.server import LabelStudioNotInstalled, LabelStudioServer


@dataclass(frozen=True)
class LabelStudioHandle:
    base_url: str
    token: str
    pid: int | None  # None when the server is not ours (given by environment)
    username: str = ""  # for a browser session (the editor tests); empty when the server is not ours
    password: str = ""

    def client(self, **kwargs):
        from labeling import LabelStudioClient

        return LabelStudioClient(self.base_url, self.token, **kwargs)


@pytest.fixture(scope="session")
def labelstudio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioHandle]:
    given = os.environ.get("CARAVAN_TEST_LABEL_STUDIO_URL")
    if given:
        yield LabelStudioHandle(given.rstrip("/"), os.environ["CARAVAN_TEST_LABEL_STUDIO_TOKEN"], None)
        return
    server = LabelStudioServer(
        data_dir=tmp_path_factory.mktemp("labelstudio"),
        username="admin@tests.caravan.invalid",
        password=secrets.token_urlsafe(16),
        token=secrets.token_hex(20),
    )
    try:
        server.start()
    except LabelStudioNotInstalled as exc:
        pytest.fail(f"{exc} (the labeling tests need the real server)")
    try:
        yield LabelStudioHandle(server.url, server.token, server.pid, server.username, server.password)
    finally:
        server.stop()
