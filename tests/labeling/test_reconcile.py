"""An auditor holds a stored annotations table to the Label Studio project it was exported from."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from labeling import (
    ANNOTATIONS,
    LiveAnnotations,
    Project,
    choice_result,
    export_annotations,
    live_annotations,
    merge_annotations,
    reconcile,
    register,
    shown_otherwise,
    simulated_annotators,
    sync_tasks,
    task_data,
)
from tests.labeling.conftest import text_examples

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def answers(*rows: tuple[int, str, str, str, datetime]) -> pa.Table:
    """An `annotations` table of (id, example, annotator, label, updated_at) answers."""
    return pa.Table.from_pylist(
        [{"annotation_id": i, "example_id": e, "annotator": w, "label": lab, "created_at": T0,
          "updated_at": u, "lead_time_s": 2.0} for i, e, w, lab, u in rows],
        schema=ANNOTATIONS,
    )


def test_each_kind_of_mismatch_is_named_by_answer_and_labeler():
    at = T0 + timedelta(hours=1)  # the export's start
    before, after = T0 + timedelta(minutes=5), at + timedelta(minutes=5)
    live = LiveAnnotations(
        answers((1, "e1", "a@x", "cat", before), (2, "e1", "b@x", "dog", before),
                (3, "e2", "a@x", "cat", after), (4, "e2", "c@x", "cat", before),
                (5, "e3", "c@x", "dog", at - timedelta(seconds=2)), (6, "e3", "b@x", "bird", after)),
        {7: ("cancelled", before), 8: ("cancelled", after)},
    )
    honest = answers((1, "e1", "a@x", "cat", before), (2, "e1", "b@x", "dog", before),
                     (3, "e2", "a@x", "dog", before), (4, "e2", "c@x", "cat", before),
                     (8, "e4", "c@x", "cat", before))
    found = reconcile(honest, live, at)
    # 3 was edited after the export, 8 cancelled after it; 5 fell inside the clock slack, 6 came later
    assert found.ok and found.matched == 3 and found.edited_since == (3, 8)
    assert reconcile(honest, live, at, slack=timedelta(0)).omitted[0].annotation_id == 5

    forged = answers((1, "e1", "a@x", "dog", before), (2, "e1", "a@x", "dog", before),
                     (3, "e2", "b@x", "dog", before), (7, "e4", "b@x", "cat", before),
                     (9, "e4", "b@x", "cat", before), (10, "e1", "c@x", "cat", at + timedelta(hours=1)))
    found = reconcile(forged, live, at)
    assert not found.ok and found.matched == 0 and found.edited_since == ()
    differ = {m.annotation_id: (m.annotator, m.detail) for m in found.differ}
    assert differ[1] == ("a@x", "label 'dog' stored, 'cat' in Label Studio")  # a label moved
    assert differ[2] == ("a@x", "annotator 'a@x' stored, 'b@x' in Label Studio")  # credit moved
    assert differ[3] == ("b@x", "annotator 'b@x' stored, 'a@x' in Label Studio")  # an edit keeps its author
    assert differ[7][1].startswith("cancelled in Label Studio since 2026-01-01T00:05:00")  # before the export
    # 4 was left out (a labeler's answer dropped); 9 and 10 were never in Label Studio
    assert [(m.annotation_id, m.annotator) for m in found.omitted] == [(4, "c@x")]
    assert [(m.annotation_id, m.annotator) for m in found.gone] == [(9, "b@x"), (10, "c@x")]
    # one answer stored twice (its vote would count twice); a stored version newer than Label Studio's,
    # or older than one the export would have read
    twice = reconcile(answers((1, "e1", "a@x", "cat", before), (1, "e1", "a@x", "cat", before)), live, at)
    assert [(m.annotation_id, m.detail) for m in twice.differ] == [(1, "stored 2 times")]
    newer = reconcile(answers((1, "e1", "a@x", "cat", after)), live, at).differ[0].detail
    assert newer.startswith("stored as updated at 2026-01-01T01:05:00")
    older = reconcile(answers((4, "e2", "c@x", "cat", T0)), live, at).differ[0].detail
    assert "2026-01-01T00:05:00+00:00, which the export would have read" in older


def test_a_task_that_shows_other_data_than_its_example_is_named():
    rows = pa.table({"example_id": ["e1", "e2", "e3"], "provider": ["p", "p", "q"], "source": ["s"] * 3,
                     "text": ["a cat", "a dog", "a bird"], "age": [3, None, 5], "city": ["x", "y", "z"]})
    text = Project(1, "t", "text", "text", ("cat", "dog"))
    shown = {r["example_id"]: task_data(r, "text", "text") for r in rows.to_pylist()}
    assert shown_otherwise(rows, text, shown) == []
    assert shown_otherwise(rows, text, {**shown, "e2": {**shown["e2"], "text": "a cat"}}) == ["e2"]
    assert shown_otherwise(rows, text, {**shown, "e3": {**shown["e3"], "provider": "p"}}) == ["e3"]
    assert shown_otherwise(rows, text, {"e9": shown["e1"]}) == []  # no example of the run: not compared
    # a table task, synced with `--show age`: compared on the columns it shows, gaps as JSON nulls
    table = Project(2, "t", "table", "row", ("cat", "dog"))
    only_age = {r["example_id"]: {"example_id": r["example_id"], "provider": r["provider"],
                                  "row": {"age": r["age"]}} for r in rows.to_pylist()}
    assert shown_otherwise(rows, table, only_age) == []
    moved = {**only_age, "e1": {**only_age["e1"], "row": {"age": 4}},
             "e2": {**only_age["e2"], "row": {"zip": 1}}}
    assert shown_otherwise(rows, table, moved) == ["e1", "e2"]


@pytest.fixture(scope="module")
def labelers(client):
    annotators = simulated_annotators([0.9, 0.8, 0.7], prefix="sim-reconcile")
    users = register(client, annotators)
    return [users[a.email] for a in annotators]


def test_a_real_export_reconciles_and_each_tampering_fails(client, project, labelers):
    sync_tasks(client, project, text_examples(3))
    keys, _ = client.task_keys(project.id)

    def answer(example_id: str, label: str, user: int) -> int:
        return client.create_annotation(keys[example_id], choice_result(label, "text"), completed_by=user)

    ids = [answer("ex00000", "cat", labelers[0]), answer("ex00000", "dog", labelers[1]),
           answer("ex00001", "bird", labelers[0]), answer("ex00001", "bird", labelers[2])]
    client.create_annotation(keys["ex00002"], [], completed_by=labelers[1], was_cancelled=True)  # not stored
    time.sleep(0.05)
    exported_at = datetime.now(UTC)
    known = set(text_examples(3)["example_id"].to_pylist())
    export = export_annotations(client, project, known_examples=known)
    stored = merge_annotations(ANNOTATIONS.empty_table(), export)
    assert stored.num_rows == 4

    def check(table: pa.Table):
        live = live_annotations(client, project, known_examples=known)
        return reconcile(table, live, exported_at, slack=timedelta(0))

    found = check(stored)
    assert found.ok and found.matched == 4 and found.edited_since == ()
    examples = text_examples(3)
    shown = live_annotations(client, project, known_examples=known).shown
    assert sorted(shown) == sorted(known) and shown_otherwise(examples, project, shown) == []
    # trained on other text than labelers were shown, or shown other text than was trained on
    swapped = examples.set_column(2, "text", pa.array(["text ex00000", "text ex00002", "text ex00002"]))
    assert shown_otherwise(swapped, project, shown) == ["ex00001"]
    client.sdk.tasks.update(id=str(keys["ex00000"]), data={**shown["ex00000"], "text": "something else"})
    shown = live_annotations(client, project, known_examples=known).shown
    assert shown_otherwise(examples, project, shown) == ["ex00000"]

    rows = stored.to_pylist()
    relabeled = pa.Table.from_pylist([{**r, "label": "bird"} if r["annotation_id"] == ids[1] else r
                                      for r in rows], schema=ANNOTATIONS)
    assert [m.annotation_id for m in check(relabeled).differ] == [ids[1]]
    dropped = pa.Table.from_pylist([r for r in rows if r["annotation_id"] != ids[3]], schema=ANNOTATIONS)
    assert [m.annotation_id for m in check(dropped).omitted] == [ids[3]]
    made_up = {**rows[0], "annotation_id": max(ids) + 10_000}
    invented = pa.Table.from_pylist([*rows, made_up], schema=ANNOTATIONS)
    assert [m.annotation_id for m in check(invented).gone] == [max(ids) + 10_000]

    # after the export: an answer edited, a new one given (neither fails), then one deleted (fails)
    client.update_annotation(ids[0], choice_result("bird", "text"))
    answer("ex00002", "cat", labelers[2])
    found = check(stored)
    assert found.ok and found.matched == 3 and found.edited_since == (ids[0],)
    client.sdk.annotations.delete(id=ids[2])
    found = check(stored)
    assert not found.ok
    assert [(m.annotation_id, m.detail) for m in found.gone] == [(ids[2], "not in Label Studio")]
