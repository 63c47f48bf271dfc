"""Label Studio's webhooks reach the receiver, and its callback runs an incremental export."""

from __future__ import annotations

import threading

import httpx
import pytest

from labeling import (
    WebhookReceiver,
    choice_result,
    export_annotations,
    register,
    simulated_annotators,
    sync_tasks,
)
from labeling.webhook import TOKEN_HEADER
from tests.labeling.conftest import text_examples


def test_annotation_events_trigger_a_sync(client, project):
    (sim,) = simulated_annotators([0.9], prefix="sim-webhook")
    user = register(client, [sim])[sim.email]
    sync_tasks(client, project, text_examples(2))
    keys, _ = client.task_keys(project.id)
    events, synced, cursor = [], [], [None]
    got = threading.Event()

    def on_event(payload: dict) -> None:
        events.append(payload["action"])
        ex = export_annotations(client, project, cursor[0])
        cursor[0] = ex.cursor
        synced.extend(ex.table["label"].to_pylist())
        got.set()

    with WebhookReceiver(on_event) as hook:
        client.add_webhook(project.id, hook.url)
        ann = client.create_annotation(keys["ex00000"], choice_result("dog", "text"), completed_by=user)
        assert got.wait(20), "Label Studio sent no ANNOTATION_CREATED webhook"
        got.clear()
        client.update_annotation(ann, choice_result("cat", "text"))
        assert got.wait(20), "Label Studio sent no ANNOTATION_UPDATED webhook"
        got.clear()
        client.sdk.annotations.delete(id=ann)
        assert got.wait(20), "Label Studio sent no ANNOTATIONS_DELETED webhook"
    assert events == ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]
    assert synced == ["dog", "cat"]


@pytest.mark.parametrize(
    "headers, body, status, calls",
    [
        ({TOKEN_HEADER: "wrong"}, {"action": "ANNOTATION_CREATED"}, 403, 0),
        ({TOKEN_HEADER: "s3cret"}, {"action": "PROJECT_UPDATED"}, 200, 0),
        ({TOKEN_HEADER: "s3cret"}, {"action": "ANNOTATION_UPDATED"}, 200, 1),
    ],
)
def test_receiver_checks_its_secret_and_ignores_other_actions(headers, body, status, calls):
    seen = []
    with WebhookReceiver(seen.append, secret="s3cret") as hook:
        assert httpx.post(hook.url, json=body, headers=headers).status_code == status
    assert len(seen) == calls


def test_receiver_refuses_a_body_that_is_not_json():
    with WebhookReceiver(lambda p: None) as hook:
        assert httpx.post(hook.url, content=b"{nope").status_code == 400
