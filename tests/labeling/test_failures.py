"""Label Studio down, slow or refusing: one clear error after bounded retries; nothing lost or duplicated.

"Down" is a port where nothing listens; "slow" is the real test server frozen with SIGSTOP
(its process group), so requests reach it and time out, then land when it resumes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from labeling import (
    LabelStudioClient,
    LabelStudioRequestError,
    LabelStudioUnavailable,
    RetryPolicy,
    export_annotations,
    sync_tasks,
)
from labeling.server import free_port
from labeling.sync import task_data
from tests.labeling.conftest import text_examples

FAST = RetryPolicy(attempts=3, total_s=10, first_wait_s=0.05, max_wait_s=0.2)


@contextlib.contextmanager
def frozen(pid: int):
    os.killpg(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(pid, signal.SIGCONT)


def test_down_server_gives_one_clear_error_after_bounded_retries(project):
    down = LabelStudioClient(f"http://127.0.0.1:{free_port()}", "token", retry=FAST)
    t0 = time.monotonic()
    with pytest.raises(
        LabelStudioUnavailable,
        match=r"did not complete listing tasks.* after 3 attempt\(s\).*"
        r"ConnectError.*labelstudio-start",
    ):
        sync_tasks(down, project, text_examples(3))
    assert time.monotonic() - t0 < 5


def test_wrong_token_is_named_and_not_retried(labelstudio, project):
    bad = LabelStudioClient(labelstudio.base_url, "not-the-token", retry=FAST)
    with pytest.raises(
        LabelStudioRequestError, match="refused the API token.*HTTP 401.*LABEL_STUDIO_USER_TOKEN"
    ):
        sync_tasks(bad, project, text_examples(1))


def test_slow_server_times_out_cleanly_and_a_late_landing_import_is_not_duplicated(
    labelstudio, client, project
):
    if labelstudio.pid is None:
        pytest.skip("needs a server this test run started (it freezes it)")
    sync_tasks(client, project, text_examples(20))
    impatient = labelstudio.client(timeout_s=1.0, retry=FAST)
    with frozen(labelstudio.pid):
        with pytest.raises(LabelStudioUnavailable, match="timed out"):
            export_annotations(impatient, project)
        with pytest.raises(LabelStudioUnavailable, match="timed out"):
            sync_tasks(impatient, project, text_examples(30))
        # An import sent while the server is frozen: it may land after we gave up on it.
        rows = text_examples(10, start=20).to_pylist()
        with pytest.raises(LabelStudioUnavailable, match="not retried"):
            impatient.import_tasks(project.id, [{"data": task_data(r, "text", "text")} for r in rows])
    time.sleep(1.0)  # let the resumed server finish what it had received
    report = sync_tasks(client, project, text_examples(30))
    keys, orphans = client.task_keys(project.id)
    assert sorted(keys) == [f"ex{i:05d}" for i in range(30)] and orphans == []
    assert report.tasks_in_project == 30  # the late import counted once, the rest added once
