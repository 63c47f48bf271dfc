"""The review queue against the real Label Studio: flagged tasks ask for more answers, a "review" tab
lists them, and an answer added to a flagged task reaches the annotations table and consensus on
the next incremental sync."""

from __future__ import annotations

import httpx
import pytest

from labeling import (
    ANNOTATIONS,
    REVIEW_TAB,
    aggregate,
    choice_result,
    export_annotations,
    merge_annotations,
    register,
    request_review,
    review_overlap,
    simulated_annotators,
    sync_tasks,
)
from tests.labeling.conftest import text_examples


@pytest.fixture(scope="module")
def sims(client):
    annotators = simulated_annotators([0.9, 0.8, 0.7], prefix="sim-review")
    return annotators, register(client, annotators)


def consensus_of(table, method="majority_vote") -> dict[str, str]:
    c = aggregate(table, method=method).consensus
    return dict(zip(c["example_id"].to_pylist(), c["label"].to_pylist(), strict=True))


def test_review_overlap_rule():
    assert review_overlap(1, 1, 2, 9) == 3
    assert review_overlap(3, 1, 2, 9) == 3  # asks already: nothing new
    assert review_overlap(1, 8, 2, 9) == 9  # capped
    assert review_overlap(12, 3, 2, 9) == 12  # never lowered


def test_flagged_task_gets_more_answers_and_consensus_follows(client, project, sims, labelstudio):
    annotators, users = sims
    u = [users[a.email] for a in annotators]
    sync_tasks(client, project, text_examples(4))
    keys, _ = client.task_keys(project.id)
    # ex00000 carries one (wrong) answer: the detector flags it; ex00001 is fine
    client.create_annotation(keys["ex00000"], choice_result("cat", project.field), completed_by=u[0])
    client.create_annotation(keys["ex00001"], choice_result("dog", project.field), completed_by=u[0])
    first = export_annotations(client, project)
    table = merge_annotations(ANNOTATIONS.empty_table(), first)
    assert consensus_of(table)["ex00000"] == "cat"

    queue = request_review(client, project, ["ex00000", "ex99999"], extra_answers=2)
    assert queue.task_ids == [keys["ex00000"]] and queue.missing == ["ex99999"] and queue.raised == 1
    assert client.task_states(project.id, [keys["ex00000"]]) == {keys["ex00000"]: (3, 1)}
    assert client.view_task_ids(project.id, queue.view_id) == [keys["ex00000"]]
    # the flagged task is back in the labeling stream (it has 1 of 3 answers)
    task = httpx.get(
        f"{labelstudio.base_url}/api/tasks/{keys['ex00000']}/",
        headers={"Authorization": f"Token {labelstudio.token}"},
    ).json()
    assert task["is_labeled"] is False and task["overlap"] == 3

    # asking for answers is no annotation change: the sensor's read-only export sees nothing new
    assert not export_annotations(client, project, first.cursor, previous=table).changed

    # the same flags again: nothing new is asked, the same tab is reused
    again = request_review(client, project, ["ex00000"], extra_answers=2)
    assert again.raised == 0 and again.view_id == queue.view_id

    # two labelers answer the flagged task; the next incremental sync folds them in
    new = [
        client.create_annotation(keys["ex00000"], choice_result("bird", project.field), completed_by=u[i])
        for i in (1, 2)
    ]
    nxt = export_annotations(client, project, first.cursor, previous=table)
    assert set(new) <= set(nxt.table["annotation_id"].to_pylist())
    table = merge_annotations(table, nxt)
    assert table.num_rows == 4
    votes = [r["label"] for r in table.to_pylist() if r["example_id"] == "ex00000"]
    assert sorted(votes) == ["bird", "bird", "cat"]
    assert consensus_of(table)["ex00000"] == "bird"
    assert consensus_of(table)["ex00001"] == "dog"
    # answered up to its overlap, the task leaves the stream again
    assert client.task_states(project.id, [keys["ex00000"]]) == {keys["ex00000"]: (3, 3)}


def test_empty_review_tab_lists_nothing(client, project):
    sync_tasks(client, project, text_examples(3))
    queue = request_review(client, project, [])
    assert queue.task_ids == [] and client.view_task_ids(project.id, queue.view_id) == []
    views = client.sdk.views.list(project=project.id)
    assert [v.data["title"] for v in views] == [REVIEW_TAB]
