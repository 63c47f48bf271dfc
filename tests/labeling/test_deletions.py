"""Deletions in the real Label Studio (an annotation, a whole task) leave the merged annotations table."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from labeling import (
    ANNOTATIONS,
    ExportCursor,
    aggregate,
    choice_result,
    existing_annotation_ids,
    export_annotations,
    import_with_answers,
    merge_annotations,
    register,
    simulate_answers,
    simulated_annotators,
    sync_tasks,
)
from pipelines.content_io import encode
from storage.unixfs import cid_for_bytes
from tests.labeling.conftest import text_examples


@pytest.fixture(scope="module")
def sims(client):
    annotators = simulated_annotators([0.9, 0.8, 0.7], prefix="sim-delete")
    return annotators, register(client, annotators)


def snapshot_cid(table: pa.Table) -> str:
    """The CID the pipeline's `annotations` asset stores this table under (`put_value`'s bytes)."""
    return cid_for_bytes(encode(table)[1], cid_version=1)


def votes(consensus: pa.Table) -> dict[str, tuple[str, int]]:
    rows = consensus.to_pylist()
    return {r["example_id"]: (r["label"], r["n_votes"]) for r in rows}


def credits(quality: pa.Table) -> dict[str, int]:
    """Annotations counted per annotator (what their royalty credit follows)."""
    return {r["annotator"]: r["n_annotations"] for r in quality.to_pylist()}


def test_deleted_annotation_and_task_leave_the_table_and_consensus(client, project, sims):
    annotators, users = sims
    u = [users[a.email] for a in annotators]
    sync_tasks(client, project, text_examples(4))
    keys, _ = client.task_keys(project.id)

    def annotate(example_id: str, label: str, user: int) -> int:
        return client.create_annotation(keys[example_id], choice_result(label, "text"), completed_by=user)

    cat0 = annotate("ex00000", "cat", u[0])
    dog1, dog2 = annotate("ex00000", "dog", u[1]), annotate("ex00000", "dog", u[2])
    doomed_task = [annotate("ex00001", "bird", u[0]), annotate("ex00001", "bird", u[1])]
    kept = [annotate("ex00002", "cat", u[0]), annotate("ex00002", "cat", u[1])]
    skipped = client.create_annotation(keys["ex00003"], [], completed_by=u[2], was_cancelled=True)

    first = export_annotations(client, project)
    table = merge_annotations(ANNOTATIONS.empty_table(), first)
    assert table.num_rows == 7 and first.removed_from(table) == []
    # majority vote: on three examples Dawid-Skene's smoothed confusions still know almost nothing
    # of the labeler with one answer, so its vote would hardly count; what is checked here is the flow
    before = aggregate(table, method="majority_vote")
    assert votes(before.consensus)["ex00000"] == ("dog", 3) and "ex00001" in votes(before.consensus)
    n_before = credits(before.quality)

    # A labeler removes an answer, another is removed by an admin, a task is deleted with its
    # two annotations, a skipped annotation (never in the table) goes too, and one answer changes.
    client.sdk.annotations.delete(id=dog1)
    client.sdk.annotations.delete(id=dog2)
    client.sdk.tasks.delete(id=str(keys["ex00001"]))
    client.sdk.annotations.delete(id=skipped)
    client.update_annotation(kept[1], choice_result("dog", "text"))

    cursor = ExportCursor.from_json(first.cursor.to_json())
    later = export_annotations(client, project, cursor, previous=table)  # as the pipeline asset does
    assert later.changed
    assert later.removed_from(table) == sorted([dog1, dog2, *doomed_task])
    assert later.table["annotation_id"].to_pylist() == [kept[1]]  # the update, nothing else
    merged = merge_annotations(table, later)
    assert merged["annotation_id"].to_pylist() == sorted([cat0, *kept])
    labels = dict(zip(merged["annotation_id"].to_pylist(), merged["label"].to_pylist(), strict=True))
    assert labels[kept[1]] == "dog"

    after = aggregate(merged, method="majority_vote")
    assert votes(after.consensus)["ex00000"] == ("cat", 1)  # recomputed without the deleted votes
    assert "ex00001" not in votes(after.consensus)
    n_after = credits(after.quality)
    emails = [a.email for a in annotators]
    assert n_after[emails[1]] == n_before[emails[1]] - 2  # dog1 and the deleted task's answer
    assert emails[2] not in n_after  # its only counted answer was deleted: no credit left

    # Nothing changed on the server: nothing to do, and the same table to the byte.
    again = export_annotations(client, project, later.cursor)
    assert not again.changed and again.removed_from(merged) == [] and again.table.num_rows == 0
    assert snapshot_cid(merge_annotations(merged, again)) == snapshot_cid(merged) != snapshot_cid(table)

    # A fresh full export of the same server state gives the same bytes as the incremental chain.
    fresh = merge_annotations(ANNOTATIONS.empty_table(), export_annotations(client, project))
    assert snapshot_cid(fresh) == snapshot_cid(merged)


def test_deletion_alone_is_noticed_by_the_cursor(client, project, sims):
    """With no other change, a deletion still makes the export `changed` (what a sensor polls)."""
    annotators, users = sims
    sync_tasks(client, project, text_examples(2))
    keys, _ = client.task_keys(project.id)
    a = client.create_annotation(
        keys["ex00000"], choice_result("cat", "text"), completed_by=users[annotators[0].email]
    )
    first = export_annotations(client, project)
    table = merge_annotations(ANNOTATIONS.empty_table(), first)
    assert not export_annotations(client, project, first.cursor).changed

    client.sdk.annotations.delete(id=a)
    later = export_annotations(client, project, first.cursor)
    assert later.changed and later.table.num_rows == 0 and later.removed_from(table) == [a]
    assert merge_annotations(table, later).num_rows == 0


def test_annotation_ids_longer_than_the_data_manager_column_are_all_listed(client, project, sims):
    """Label Studio cuts a task's `annotations_ids` at 500 characters; such a task is read on its own."""
    annotators, users = sims
    user = users[annotators[0].email]
    sync_tasks(client, project, text_examples(2))
    keys, _ = client.task_keys(project.id)
    many = [{"result": choice_result("cat", "text"), "completed_by": user} for _ in range(150)]
    client.import_tasks(project.id, [{"data": {"example_id": "crowded", "text": "x"}, "annotations": many}])
    client.create_annotation(keys["ex00000"], choice_result("dog", "text"), completed_by=user)

    full = {a["id"] for t in client.annotated_tasks(project.id) for a in t["annotations"]}
    assert len(full) == 151
    assert existing_annotation_ids(client, project.id) == frozenset(full)
    assert existing_annotation_ids(client, project.id, annotated_only=False) == frozenset(full)


def test_existing_ids_of_3000_tasks_match_a_full_pull(client, project, sims, record_property):
    """Across pages (1,000 tasks each) the light listing knows exactly the annotations a full pull
    sees, and exactly which went away. Timings are recorded for the reader, not asserted."""
    annotators, users = sims
    examples = text_examples(3000)
    truth = dict.fromkeys(examples["example_id"].to_pylist(), "cat")
    answers = simulate_answers(truth, annotators, ("cat", "dog", "bird"), per_example=1)
    import_with_answers(client, project, examples, answers, users)

    t0 = time.perf_counter()
    ids = existing_annotation_ids(client, project.id)
    t1 = time.perf_counter()
    every_task = existing_annotation_ids(client, project.id, annotated_only=False)
    tasks = client.annotated_tasks(project.id)
    t2 = time.perf_counter()
    full = {a["id"] for t in tasks for a in t["annotations"]}
    record_property("existing_ids_3000_s", round(t1 - t0, 3))
    record_property("full_pull_3000_s", round(t2 - t1, 3))
    print(f"3000 tasks: annotation ids listed in {t1 - t0:.2f} s, full pull {t2 - t1:.2f} s")
    assert len(full) == 3000 and ids == every_task == frozenset(full)

    gone_task = tasks[1500]
    gone_annotation = tasks[2999]["annotations"][0]["id"]
    client.sdk.tasks.delete(id=str(gone_task["id"]))
    client.sdk.annotations.delete(id=gone_annotation)
    lost = {gone_annotation, *(a["id"] for a in gone_task["annotations"])}
    assert existing_annotation_ids(client, project.id) == frozenset(full - lost)
    assert existing_annotation_ids(client, project.id, annotated_only=False) == frozenset(full - lost)
