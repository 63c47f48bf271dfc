"""The sampled answers check (`audit_export(..., sample=)`) against a real Label Studio: what it draws,
and what it catches outside its draw."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from labeling import (
    ANNOTATIONS,
    ProjectSpec,
    choice_result,
    export_annotations,
    merge_annotations,
    register,
    simulated_annotators,
    sync_tasks,
)
from pipelines.annotations_audit import audit_export
from provenance import LABELING_EXPORT, CodeVersion, Record, utc_time
from tests.labeling.conftest import CHOICES, text_examples

TASKS = 12
LATER = datetime(2099, 1, 1, tzinfo=UTC)  # an export time after every answer of the test


@pytest.fixture(scope="module")
def exported(labelstudio):
    """A text project of 12 tasks with two answers each, its export and the export's record."""
    client = labelstudio.client()
    project = client.ensure_project(ProjectSpec(f"audit {uuid.uuid4().hex[:8]}", "text", CHOICES, "text"))
    examples = text_examples(TASKS)
    sync_tasks(client, project, examples)
    keys, _ = client.task_keys(project.id)
    users = register(client, simulated_annotators([0.9, 0.8], prefix="sim-audit"))
    for i, task in enumerate(sorted(keys.values())):
        for j, user in enumerate(sorted(users.values())):
            client.create_annotation(task, choice_result(CHOICES[(i + j) % 3], "text"), completed_by=user)
    known = set(examples["example_id"].to_pylist())
    stored = merge_annotations(ANNOTATIONS.empty_table(), export_annotations(client, project,
                                                                             known_examples=known))
    at = utc_time(LATER)
    record = Record(LABELING_EXPORT, "test", at, at, CodeVersion("caravan", "0.1.0"),
                    params={"project_id": project.id})
    return client, keys, examples, stored, record


def _rows(table: pa.Table, changed: dict[int, dict]) -> pa.Table:
    """`table` with the answers of the ids in `changed` changed so."""
    return pa.Table.from_pylist([{**r, **changed.get(r["annotation_id"], {})} for r in table.to_pylist()],
                                schema=ANNOTATIONS)


def _at(record: Record, seconds: int) -> Record:
    """The export `record` started at a fixed time after its answers, plus `seconds`: the draw it seeds is
    the same on every run (it depends on the time and the number of tasks alone)."""
    at = utc_time(LATER + timedelta(seconds=seconds))
    return dataclasses.replace(record, started_at=at, ended_at=at)


def test_a_sample_reads_that_many_tasks_and_their_answers(exported):
    client, _, examples, stored, record = exported
    whole = audit_export(record, stored, examples, client)
    assert whole.ok and (whole.matched, whole.tasks_checked, whole.sampled) == (2 * TASKS, TASKS, False)
    assert audit_export(record, stored, examples, client, sample=TASKS).sampled is False  # all of them
    drawn = audit_export(record, stored, examples, client, sample=3)
    assert drawn.ok and (drawn.matched, drawn.tasks_checked, drawn.sampled) == (6, 3, True)


def test_a_sample_names_tampering_in_its_draw_and_gone_answers_anywhere(exported):
    client, keys, examples, stored, record = exported
    first, second = stored.slice(0, 2).to_pylist()
    moved = _rows(stored, {first["annotation_id"]: {"example_id": sorted(keys)[-1]}})
    # stored as an answer to another example than the one Label Studio holds it on: drawn, either task
    # has the answer compared (not called gone, nor the others of a task not drawn omitted). 11 of 12
    # tasks drawn at 24 times: some draws leave out the answer's task, some the example's
    for k in range(24):
        found = audit_export(_at(record, k), moved, examples, client, sample=TASKS - 1)
        assert found.sampled and [f.name for f in found.failures] == ["annotation_differs"], found.failures
        assert f"annotation {first['annotation_id']} (" in found.failures[0].detail
    # an answer that Label Studio does not hold (invented, or deleted since) fails whatever is drawn
    invented = pa.concat_tables([stored, _rows(stored.slice(1, 1), {second["annotation_id"]: {
        "annotation_id": 10**9}})])
    for k in range(4):
        found = audit_export(_at(record, k), invented, examples, client, sample=1)
        assert [f.name for f in found.failures] == ["annotation_gone"], found.failures
        assert "1 stored answer(s) are not in" in found.failures[0].detail
        assert "annotation 1000000000 (" in found.failures[0].detail


def test_a_sample_draws_first_the_tasks_of_the_answers_the_export_took(exported):
    client, _, examples, stored, record = exported
    *_, before, last = sorted(stored.to_pylist(), key=lambda r: r["updated_at"])
    relabeled = _rows(stored, {last["annotation_id"]: {"label": "cat" if last["label"] != "cat" else "dog"}})
    # an incremental export that took only the last answer: drawn 1 task of 12, it is that answer's each time
    after = before["updated_at"].isoformat()
    for k in range(6):
        found = audit_export(_at(record, k), relabeled, examples, client, sample=1, taken_after=after)
        assert [f.name for f in found.failures] == ["annotation_differs"], found.failures
        assert f"annotation {last['annotation_id']} (" in found.failures[0].detail
    # after a full export, every task is drawn alike
    drawn = [audit_export(_at(record, k), relabeled, examples, client, sample=1).ok for k in range(6)]
    assert drawn.count(True) >= 3
