"""Task sync: every example becomes exactly one Label Studio task, keyed by `example_id`.

Idempotent by construction: the server's tasks are read first and only missing examples are
imported, so running it twice, or again after a failure half-way, never duplicates a task
and never touches an existing one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

from labeling.client import LabelStudioClient, Project
from labeling.configs import NEVER_SHOWN, image_data_url
from labeling.errors import InvalidExamplesError
from labeling.schemas import EXAMPLES_REQUIRED


@dataclass(frozen=True)
class SyncReport:
    """What `sync_tasks` did, counted in tasks: created, already present, and the project's total after."""

    created: int
    already_present: int
    tasks_in_project: int
    foreign_tasks: int  # tasks without an example_id (made by hand in Label Studio); left alone


def shown_columns(examples: pa.Table, project: Project) -> list[str]:
    """The columns a task shows: the payload column `field`, or for a table project the columns it
    picked (`show`), else every column of the row but the ids and a label (`NEVER_SHOWN`)."""
    if project.kind != "table":
        return [project.field]
    return list(project.show) or [c for c in examples.column_names if c not in NEVER_SHOWN]


def task_rows(examples: pa.Table, project: Project, rows: Sequence[int]) -> list[dict]:
    """The task data of `examples`' `rows` (by index), as `project` shows them."""
    if not rows:
        return []
    columns = ["example_id", "provider", *shown_columns(examples, project)]
    picked = examples.select(columns).take(list(rows)).to_pylist()
    return [task_data(r, project.kind, project.field) for r in picked]


def check_examples(examples: pa.Table, project: Project) -> list[str]:
    """The example ids, after checking the table can become tasks (else one error naming the problem)."""
    shown = shown_columns(examples, project)
    missing = [c for c in (*EXAMPLES_REQUIRED, *shown) if c not in examples.column_names]
    if missing or not shown:
        what = f"${project.field}"
        if project.kind == "table":
            what = f"the columns {list(project.show)}" if project.show else "each row"
        raise InvalidExamplesError(
            f"examples table lacks column(s) {missing or 'to show'} (has {examples.column_names}); the "
            f"project shows {what}, and every examples table needs {list(EXAMPLES_REQUIRED)}"
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


def existing_tasks(
    client: LabelStudioClient, project: Project, examples: pa.Table
) -> tuple[list[str], dict[str, int], list[int]]:
    """The checked example ids (``check_examples``), and the project's tasks by example id and those
    without one (``task_keys``), after checking a table project's new tasks would show what its
    existing ones do: what every import into a project reads first."""
    ids = check_examples(examples, project)
    present, foreign = client.task_keys(project.id)
    if project.kind == "table" and present:
        _check_shown_as_before(client, project, examples, present)
    return ids, present, foreign


def _check_shown_as_before(
    client: LabelStudioClient, project: Project, examples: pa.Table, present: dict[str, int]
) -> None:
    """A table project's new tasks show the columns its existing ones do (one is read to tell): a sync
    with another `show` would leave labelers two kinds of task, and never edits the old ones."""
    before = sorted(client.task_data(min(present.values())).get(project.field) or {})
    now = shown_columns(examples, project)
    if before != sorted(now):
        raise InvalidExamplesError(
            f"project {project.title!r} shows the columns {before} in its {len(present)} task(s); this sync "
            f"would show {now}: show the same columns (--show {','.join(before)}) or label in a new project; "
            "nothing was synced"
        )


def task_data(row: dict, project_kind: str, field: str) -> dict:
    """One task's `data`: the row's `example_id` and `provider`, and under `field` what labelers see (a
    table row's shown values by column, an image as a data URL, or the text); a non-string text is refused."""
    if project_kind == "table":  # the row's values by column name (JSON has no NaN: a gap is null)
        shown = {k: _cell(v) for k, v in row.items() if k not in ("example_id", "provider")}
        return {"example_id": row["example_id"], "provider": row["provider"], field: shown}
    value = row[field]
    if project_kind == "image":
        value = image_data_url(value)
    elif not isinstance(value, str):
        raise InvalidExamplesError(
            f"example {row['example_id']}: text field {field!r} is {type(value).__name__}, not a string"
        )
    return {"example_id": row["example_id"], "provider": row["provider"], field: value}


def shown_otherwise(examples: pa.Table, project: Project, shown: Mapping[str, dict]) -> list[str]:
    """The ids of the examples whose Label Studio task (`shown`: each task's data by example id) shows
    labelers other data than `examples` holds for them, as `sync_tasks` would show it: the answers to
    such a task label data the run did not train on. A table task is compared on the columns it shows
    (a project's `--show` is in no config); a task of an example not in `examples` is not compared."""
    ids = examples.column("example_id").to_pylist()
    rows = [i for i, e in enumerate(ids) if e in shown]
    out = []
    for data in task_rows(examples, dataclasses.replace(project, show=()), rows):
        live = shown[data["example_id"]]
        if project.kind == "table" and isinstance(live.get(project.field), dict):
            row = data[project.field]
            data = {**data, project.field: {k: row.get(k, _ABSENT) for k in live[project.field]}}
        if _as_json(data) != _as_json({k: live.get(k) for k in data}):
            out.append(data["example_id"])
    return out


_ABSENT = "(not a column of the example)"


def _as_json(value: object) -> object:
    """`value` as Label Studio's JSON gives it back: tuples as lists, other values JSON lacks as text."""
    return json.loads(json.dumps(value, default=str))


def _cell(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return f"({len(value)} bytes)"
    return value


def sync_tasks(
    client: LabelStudioClient, project: Project, examples: pa.Table, *, batch_size: int = 5000
) -> SyncReport:
    """Create a task for each example not yet in the project; return what was done."""
    ids, present, foreign = existing_tasks(client, project, examples)
    todo = [i for i, eid in enumerate(ids) if eid not in present]
    # Build every task before the first request, so a bad row stops the sync before anything is written.
    tasks = [{"data": data} for data in task_rows(examples, project, todo)]
    created = 0
    for start in range(0, len(tasks), batch_size):
        created += client.import_tasks(project.id, tasks[start : start + batch_size])
    return SyncReport(
        created=created,
        already_present=len(ids) - len(todo),
        tasks_in_project=len(present) + len(foreign) + created,
        foreign_tasks=len(foreign),
    )
