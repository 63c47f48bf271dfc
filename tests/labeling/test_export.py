"""Incremental annotation export against the real Label Studio, with simulated (real-user) annotators."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from labeling import (
    ANNOTATIONS,
    ExportCursor,
    choice_result,
    export_annotations,
    merge_annotations,
    register,
    simulated_annotators,
    sync_tasks,
)
from tests.labeling.conftest import text_examples


@pytest.fixture(scope="module")
def sims(client):
    annotators = simulated_annotators([0.9, 0.8, 0.7], prefix="sim-export")
    return annotators, register(client, annotators)


def annotate(client, project, example_id, label, user, **kw) -> int:
    keys, _ = client.task_keys(project.id)
    return client.create_annotation(
        keys[example_id],
        label if isinstance(label, list) else choice_result(label, project.field),
        completed_by=user,
        **kw,
    )


def test_export_is_incremental_and_an_update_replaces_the_earlier_version(client, project, sims):
    annotators, users = sims
    sync_tasks(client, project, text_examples(4))
    u = [users[a.email] for a in annotators]
    ids = [
        annotate(client, project, "ex00000", "cat", u[0], lead_time_s=4.5),
        annotate(client, project, "ex00000", "dog", u[1]),
        annotate(client, project, "ex00001", "bird", u[2], lead_time_s=2.0),
    ]

    first = export_annotations(client, project)
    assert first.table.schema == ANNOTATIONS and first.n_skipped == 0 and first.after is None
    rows = {r["annotation_id"]: r for r in first.table.to_pylist()}
    assert sorted(rows) == sorted(ids)
    assert rows[ids[0]]["annotator"] == annotators[0].email and rows[ids[0]]["label"] == "cat"
    assert rows[ids[0]]["lead_time_s"] == 4.5 and rows[ids[0]]["example_id"] == "ex00000"
    table = merge_annotations(ANNOTATIONS.empty_table(), first)

    nothing = export_annotations(client, project, ExportCursor.from_json(first.cursor.to_json()))
    assert nothing.table.num_rows == 0 and nothing.n_skipped == 0

    client.update_annotation(ids[1], choice_result("cat", "text"))
    new_id = annotate(client, project, "ex00002", "dog", u[0])
    changed = export_annotations(client, project, nothing.cursor)
    assert sorted(changed.table["annotation_id"].to_pylist()) == sorted([ids[1], new_id])
    after = datetime.fromisoformat(changed.after)  # what it took is what was updated after its cutoff
    assert after < min(changed.table["updated_at"].to_pylist()) and after < datetime.now(UTC)
    table = merge_annotations(table, changed)
    labels = dict(zip(table["annotation_id"].to_pylist(), table["label"].to_pylist(), strict=True))
    assert table.num_rows == 4 and labels[ids[1]] == "cat"  # replaced, not duplicated
    assert export_annotations(client, project, changed.cursor).table.num_rows == 0


def test_bad_annotations_are_counted_by_reason_and_never_exported(client, project, sims):
    _, users = sims
    user = next(iter(users.values()))
    sync_tasks(client, project, text_examples(6))
    client.import_tasks(project.id, [{"data": {"text": "no example id"}}])
    _, (foreign,) = client.task_keys(project.id)
    client.create_annotation(foreign, choice_result("cat", "text"), completed_by=user)  # unknown task
    annotate(client, project, "ex00000", [], user, was_cancelled=True)  # skipped: its task has no other
    annotate(client, project, "ex00001", [], user)  # empty result
    two = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["cat", "dog"]}}]
    annotate(client, project, "ex00002", two, user)  # malformed: two choices in a single-choice config
    annotate(client, project, "ex00003", [{"foo": 1}], user)  # malformed: not a result at all
    annotate(client, project, "ex00004", "zebra", user)  # label outside the config's choices
    good = annotate(client, project, "ex00005", "bird", user)

    ex = export_annotations(client, project)
    assert ex.table["annotation_id"].to_pylist() == [good]
    assert dict(ex.skipped) == {
        "unknown_task": 1,
        "cancelled": 1,
        "empty_result": 1,
        "malformed_result": 2,
        "invalid_label": 1,
    }
    assert export_annotations(client, project, ex.cursor).n_skipped == 0  # counted once, not every time

    # An example Caravan did not sync is an unknown task too, when the caller says what it synced.
    known = {f"ex{i:05d}" for i in range(5)}
    assert export_annotations(client, project, known_examples=known).skipped["unknown_task"] == 2

    # A good annotation later edited into a bad one is withdrawn from the table, not kept stale.
    table = merge_annotations(ANNOTATIONS.empty_table(), ex)
    client.update_annotation(good, choice_result("zebra", "text"))
    later = export_annotations(client, project, ex.cursor)
    assert later.withdrawn == [good] and merge_annotations(table, later).num_rows == 0


def test_cursor_of_another_project_is_refused(client, project):
    with pytest.raises(ValueError, match="cursor belongs to project"):
        export_annotations(client, project, ExportCursor(project.id + 10_000))
