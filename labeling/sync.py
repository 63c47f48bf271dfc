"""Task sync: every example becomes exactly one Label Studio task, keyed by `example_id`.

Idempotent by construction: the server's tasks are read first and only missing examples are
imported, so running it twice, or again after a failure half-way, never duplicates a task
and never touches an existing one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from labeling.client import LabelStudioClient, Project
from labeling.configs import image_data_url
from labeling.errors import InvalidExamplesError
from labeling.schemas import EXAMPLES_REQUIRED


@dataclass(frozen=True)
class SyncReport:
    created: int
    already_present: int
    tasks_in_project: int
    foreign_tasks: int  # tasks without an example_id (made by hand in Label Studio); left alone


def check_examples(examples: pa.Table, field: str) -> list[str]:
    """The example ids, after checking the table can become tasks (else one error naming the problem)."""
    missing = [c for c in (*EXAMPLES_REQUIRED, field) if c not in examples.column_names]
    if missing:
        raise InvalidExamplesError(
            f"examples table lacks column(s) {missing} (has {examples.column_names}); the project shows "
            f"${field}, and every examples table needs {list(EXAMPLES_REQUIRED)}"
        )
    ids = examples.column("example_id").to_pylist()
    empty = [i for i, v in enumerate(ids) if not isinstance(v, str) or not v]
    if empty:
        raise InvalidExamplesError(
            f"{len(empty)} example(s) have an empty example_id (rows {empty[:5]}); "
            "compute it with the pipeline's examples loader"
        )
    dup = sorted(k for k, n in Counter(ids).items() if n > 1)
    if dup:
        raise InvalidExamplesError(
            f"{len(dup)} example_id(s) appear more than once in the input: {', '.join(dup[:5])}"
            f"{' ...' if len(dup) > 5 else ''}; deduplicate the examples (each id is one task); "
            "nothing was synced"
        )
    return ids


def task_data(row: dict, project_kind: str, field: str) -> dict:
    value = row[field]
    if project_kind == "image":
        value = image_data_url(value)
    elif not isinstance(value, str):
        raise InvalidExamplesError(
            f"example {row['example_id']}: text field {field!r} is {type(value).__name__}, not a string"
        )
    return {"example_id": row["example_id"], "provider": row["provider"], field: value}


def sync_tasks(
    client: LabelStudioClient, project: Project, examples: pa.Table, *, batch_size: int = 5000
) -> SyncReport:
    """Create a task for each example not yet in the project; return what was done."""
    ids = check_examples(examples, project.field)
    present, foreign = client.task_keys(project.id)
    todo = [i for i, eid in enumerate(ids) if eid not in present]
    cols = ["example_id", "provider", project.field]
    # Build every task before the first request, so a bad row stops the sync before anything is written.
    tasks = (
        [
            {"data": task_data(r, project.kind, project.field)}
            for r in examples.select(cols).take(todo).to_pylist()
        ]
        if todo
        else []
    )
    created = 0
    for start in range(0, len(tasks), batch_size):
        created += client.import_tasks(project.id, tasks[start : start + batch_size])
    return SyncReport(
        created=created,
        already_present=len(ids) - len(todo),
        tasks_in_project=len(present) + len(foreign) + created,
        foreign_tasks=len(foreign),
    )
