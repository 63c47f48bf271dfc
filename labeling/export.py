"""Incremental annotation export, normalized to the `annotations` table.

The pull asks Label Studio only for tasks whose `updated_at` moved past the cursor's
watermark (it moves whenever an annotation on the task is created, updated or skipped),
minus a small overlap window that catches transactions committed late. Versions already
emitted inside that window are remembered in the cursor, so nothing is emitted twice.

Deletions leave no `updated_at` behind (a deleted task or annotation is simply gone), so each
incremental export also lists the ids of every annotation that still exists: a light Data
Manager listing of the annotated tasks' ids with their `annotations_ids` column (no results,
no task data; measured about eight times faster than pulling the annotations in full).
Merging drops whatever is no longer there.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from labeling.client import DM_TIME, PAGE, LabelStudioClient, Project, annotated_queries, iso_utc
from labeling.configs import FROM_NAME
from labeling.schemas import ANNOTATIONS

OVERLAP = timedelta(seconds=5)

# Data Manager columns Label Studio would otherwise compute per listed task: all hidden but
# `annotations_ids`, so the light listing evaluates only that one (an unknown name is harmless).
_DM_HIDDEN = [
    f"tasks:{c}"
    for c in (
        "inner_id",
        "completed_at",
        "total_annotations",
        "cancelled_annotations",
        "total_predictions",
        "annotators",
        "annotations_results",
        "predictions_score",
        "predictions_model_versions",
        "predictions_results",
        "file_upload",
        "storage_filename",
        "created_at",
        "updated_at",
        "updated_by",
        "avg_lead_time",
        "draft_exists",
        "reviewed",
        "reviewers",
        "reviews_accepted",
        "reviews_rejected",
        "comments",
        "comment_count",
        "comment_authors",
        "unresolved_comment_count",
        "last_comment_updated_at",
        "ground_truth",
        "agreement",
    )
]
DM_CHAR_LIMIT = 500  # Label Studio cuts a Data Manager list column at 500 characters

# Why an annotation is not in the table (counted, never silently dropped).
SkipReason = Literal[
    "cancelled", "unknown_task", "empty_result", "malformed_result", "invalid_label", "unknown_annotator"
]


@dataclass(frozen=True)
class ExportCursor:
    """Where the last export stopped; JSON-serializable, kept by the caller. Its size is bounded
    by the activity of the last OVERLAP seconds before the watermark, not by the project's size."""

    project_id: int
    watermark: str | None = None  # max task updated_at seen (UTC, DM format)
    seen: tuple[tuple[int, str], ...] = ()  # (annotation id, updated_at) handled inside the window
    seen_tasks: tuple[tuple[int, str], ...] = ()  # (task id, updated_at) pulled inside the window
    existing_digest: str | None = None  # digest of the annotation ids that existed at the export

    def to_json(self) -> str:
        """The cursor as JSON text, saved by the caller beside the table it belongs to."""
        return json.dumps(
            {
                "project_id": self.project_id,
                "watermark": self.watermark,
                "seen": [list(v) for v in self.seen],
                "seen_tasks": [list(v) for v in self.seen_tasks],
                "existing_digest": self.existing_digest,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ExportCursor:
        """The cursor `to_json` wrote, to start the next export from."""
        d = json.loads(text)
        return cls(
            project_id=int(d["project_id"]),
            watermark=d.get("watermark"),
            seen=tuple((int(a), str(u)) for a, u in d.get("seen", [])),
            seen_tasks=tuple((int(a), str(u)) for a, u in d.get("seen_tasks", [])),
            existing_digest=d.get("existing_digest"),
        )


@dataclass
class AnnotationExport:
    """New or changed annotations, the cursor to keep, what was left out and why, and which
    annotations exist at all (so that merging can drop the deleted ones)."""

    table: pa.Table
    cursor: ExportCursor
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    skipped_ids: dict[SkipReason, list[int]] = field(default_factory=dict)
    withdrawn: list[int] = field(default_factory=list)  # ids now skipped/invalid: drop earlier versions
    existing: frozenset[int] | None = None  # every annotation id on the server; None: not checked
    previous_digest: str | None = None  # the cursor's `existing_digest` this export started from
    after: str | None = None  # it took the answers updated after this time (DM format); None: all of them

    @property
    def n_skipped(self) -> int:
        """How many annotations were left out of `table`, all reasons together (`skipped` counts each)."""
        return sum(self.skipped.values())

    def removed_from(self, previous: pa.Table) -> list[int]:
        """Ids of `previous` rows whose annotation (or task) was deleted in Label Studio, sorted."""
        if self.existing is None:
            return []
        ids = previous.column("annotation_id").to_pylist()
        return sorted(i for i in set(ids) if i not in self.existing)

    @property
    def changed(self) -> bool:
        """Whether merging could change a table the cursor's export was merged into: new or changed
        rows, withdrawn ones, or a different set of existing annotations (some were deleted)."""
        return (
            self.table.num_rows > 0
            or bool(self.withdrawn)
            or self.existing is None
            or self.cursor.existing_digest != self.previous_digest
        )


def export_annotations(
    client: LabelStudioClient,
    project: Project,
    cursor: ExportCursor | None = None,
    *,
    known_examples: set[str] | None = None,
    previous: pa.Table | None = None,
) -> AnnotationExport:
    """Annotations created or updated since `cursor` (all of them when None), and the ids of all
    annotations that still exist (`existing`), by which merging drops the deleted ones.

    `known_examples`, when given, is the set of example ids Caravan synced: an annotation on
    any other task is counted as `unknown_task` rather than attributed to a stray example.
    `previous`, when given, is the table this export will be merged into: an annotation of it
    that seems gone is confirmed gone by listing every task, so a removal never rests on Label
    Studio's per-task counters (which the cheap listing of annotated tasks relies on).
    """
    cursor = cursor or ExportCursor(project.id)
    if cursor.project_id != project.id:
        raise ValueError(f"cursor belongs to project {cursor.project_id}, not {project.id}")
    prev = _ts(cursor.watermark) if cursor.watermark else None
    after = (prev - OVERLAP).strftime(DM_TIME) if prev else None
    seen_tasks = set(cursor.seen_tasks)
    listed: dict[int, str] = {}
    if after is None:
        tasks = client.annotated_tasks(project.id)
    else:  # a light listing first: pull in full only task versions not already pulled
        listed = client.changed_task_versions(project.id, after)
        wanted = [t for t, v in listed.items() if (t, v) not in seen_tasks]
        tasks = client.annotated_tasks(project.id, wanted) if wanted else []
    users = client.users() if tasks else {}
    seen = set(cursor.seen)
    rows: list[dict] = []
    out = AnnotationExport(table=ANNOTATIONS.empty_table(), cursor=cursor, after=after)
    versions: list[tuple[int, str]] = []
    task_versions = {*seen_tasks, *listed.items()}
    for task in tasks:
        task_versions.add((int(task["id"]), iso_utc(task["updated_at"])))
        example_id = (task.get("data") or {}).get("example_id")
        for a in task.get("annotations") or []:
            version = (int(a["id"]), iso_utc(a["updated_at"]))
            versions.append(version)
            if version in seen or (prev and _ts(a["updated_at"]) <= prev - OVERLAP):
                continue
            row, reason = _normalize(a, example_id, project, users, known_examples)
            if reason:
                out.skipped[reason] += 1
                out.skipped_ids.setdefault(reason, []).append(version[0])
                out.withdrawn.append(version[0])
            else:
                rows.append(row)
    # Listed after the pull: an annotation deleted meanwhile is dropped from this export too.
    if after is None:  # the full pull saw every annotated task
        out.existing = frozenset(int(a["id"]) for t in tasks for a in t.get("annotations") or [])
    else:
        out.existing = existing_annotation_ids(client, project.id)
    if previous is not None and out.removed_from(previous):
        out.existing = existing_annotation_ids(client, project.id, annotated_only=False)
    out.previous_digest = cursor.existing_digest
    digest = _digest(out.existing)
    rows = [r for r in rows if r["annotation_id"] in out.existing]
    if rows:
        rows.sort(key=lambda r: r["annotation_id"])
        out.table = pa.Table.from_pylist(rows, schema=ANNOTATIONS)
    out.cursor = replace(out.cursor, existing_digest=digest)
    if task_versions:
        watermark = max(_ts(v) for _, v in task_versions)
        if prev:
            watermark = max(watermark, prev)
        floor = watermark - OVERLAP
        out.cursor = ExportCursor(
            project.id,
            iso_utc(watermark),
            seen=tuple(sorted(v for v in {*seen, *versions} if _ts(v[1]) > floor)),
            seen_tasks=tuple(sorted(v for v in task_versions if _ts(v[1]) > floor)),
            existing_digest=digest,
        )
    return out


def existing_annotation_ids(
    client: LabelStudioClient, project_id: int, *, annotated_only: bool = True
) -> frozenset[int]:
    """The id of every annotation of the project now (skipped ones included): `annotation_ids_by_task`
    merged. `annotated_only` lists just the tasks whose counters say they hold annotations (cheap when
    most tasks have none); otherwise every task, so the answer rests on the annotations themselves alone."""
    by_task = annotation_ids_by_task(client, project_id, annotated_only=annotated_only)
    return frozenset().union(*by_task.values())


def annotation_ids_by_task(
    client: LabelStudioClient, project_id: int, *, annotated_only: bool = True
) -> dict[int, frozenset[int]]:
    """Task id -> the ids of its annotations now (skipped ones included), from a light task listing:
    ids and `annotations_ids` only, no task data. With `annotated_only`, only the tasks whose counters
    say they hold annotations; otherwise every task of the project. A task whose id list Label Studio
    cut at its column limit, or that lists fewer ids than its counters, is read on its own."""
    hidden = {"explore": _DM_HIDDEN, "labeling": _DM_HIDDEN}
    if annotated_only:
        queries = [{**q, "hiddenColumns": hidden} for q in annotated_queries(None)]
    else:
        queries = [{"hiddenColumns": hidden, "ordering": ["tasks:id"]}]
    ids: dict[int, frozenset[int]] = {}
    for query in queries:

        def fetch(query: dict = query) -> list[tuple[int, str, int]]:
            pager = client.sdk.tasks.list(
                project=project_id,
                fields="task_only",
                include="id,annotations_ids,total_annotations,cancelled_annotations",
                query=json.dumps(query),
                page_size=PAGE,
            )
            return [
                (
                    int(t.id),
                    str(t.annotations_ids or ""),
                    int(t.total_annotations or 0) + int(t.cancelled_annotations or 0),
                )
                for t in pager
            ]

        for task_id, listed, count in client.call(f"listing annotation ids of project {project_id}", fetch):
            found = {int(i) for i in re.findall(r"\d+", listed)}
            if len(listed) >= DM_CHAR_LIMIT or len(found) < count:
                found = _task_annotation_ids(client, task_id)
            ids[task_id] = frozenset(found)
    return ids


def _task_annotation_ids(client: LabelStudioClient, task_id: int) -> set[int]:
    return {
        int(a.id)
        for a in client.call(
            f"listing annotations of task {task_id}", lambda: client.sdk.annotations.list(id=task_id)
        )
    }


def _digest(ids: frozenset[int]) -> str:
    return hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()


def merge_annotations(previous: pa.Table, export: AnnotationExport) -> pa.Table:
    """The annotations table after applying an export: updated versions replace earlier ones,
    withdrawn (now skipped or invalid) and deleted annotations leave, new ones join; sorted by id."""
    replaced = (
        set(export.table.column("annotation_id").to_pylist())
        | set(export.withdrawn)
        | set(export.removed_from(previous))
    )
    kept = (
        previous.filter(
            pc.invert(pc.is_in(previous.column("annotation_id"), pa.array(sorted(replaced), pa.int64())))
        )
        if replaced
        else previous
    )
    merged = pa.concat_tables([kept.cast(ANNOTATIONS), export.table])
    return merged.take(pc.sort_indices(merged, [("annotation_id", "ascending")]))


@dataclass(frozen=True)
class LiveAnnotations:
    """Every annotation of a project as Label Studio holds it now: those an export takes (`table`,
    normalized as `export_annotations` does), and by id why each other one is left out, with its
    `updated_at` (`left_out`); and what each task shows labelers, by example id (`shown`)."""

    table: pa.Table
    left_out: dict[int, tuple[SkipReason, datetime]]
    shown: dict[str, dict] = field(default_factory=dict)


def live_annotations(
    client: LabelStudioClient, project: Project, *, known_examples: set[str] | None = None,
    tasks: list[int] | None = None,
) -> LiveAnnotations:
    """Every annotation of `project` now (or of its `tasks`, by id), read from each task (not only those
    Label Studio's per-task counters call annotated): what an auditor holds a stored table to
    (`labeling.reconcile`)."""
    users = client.users()
    rows: list[dict] = []
    left_out: dict[int, tuple[SkipReason, datetime]] = {}
    shown: dict[str, dict] = {}
    for task in client.annotated_tasks(project.id, tasks, every=True):
        example_id = (task.get("data") or {}).get("example_id")
        if isinstance(example_id, str):
            shown[example_id] = task["data"]
        for a in task.get("annotations") or []:
            row, reason = _normalize(a, example_id, project, users, known_examples)
            if reason:
                left_out[int(a["id"])] = (reason, _ts(a["updated_at"]))
            else:
                rows.append(row)
    rows.sort(key=lambda r: r["annotation_id"])
    return LiveAnnotations(pa.Table.from_pylist(rows, schema=ANNOTATIONS), left_out, shown)


def _normalize(
    a: dict, example_id: object, project: Project, users: dict[int, str], known: set[str] | None
) -> tuple[dict | None, SkipReason | None]:
    if a.get("was_cancelled"):
        return None, "cancelled"
    if not isinstance(example_id, str) or not example_id or (known is not None and example_id not in known):
        return None, "unknown_task"
    result = a.get("result")
    if not result:
        return None, "empty_result"
    label = _choice(result)
    if label is None:
        return None, "malformed_result"
    if label not in project.choices:
        return None, "invalid_label"
    user = users.get(a.get("completed_by"))
    if user is None:
        return None, "unknown_annotator"
    return {
        "annotation_id": int(a["id"]),
        "example_id": example_id,
        "annotator": user,
        "label": label,
        "created_at": _ts(a["created_at"]),
        "updated_at": _ts(a["updated_at"]),
        "lead_time_s": None if a.get("lead_time") is None else float(a["lead_time"]),
    }, None


def exported_answers(items: object) -> list[dict]:
    """The answers in a project's JSON export from Label Studio (Export, JSON: a list of tasks, each with
    its `data` and `annotations`), as rows of `example_id`, `annotator` (the user id, as in the CSV
    export) and `label` (None for a skipped task or a result that is not one choice). A ValueError
    names what is not such an export."""
    if not isinstance(items, list):
        raise ValueError("not a Label Studio JSON export (a list of tasks)")
    rows = []
    for n, task in enumerate(items, start=1):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict) or not isinstance(
                task.get("annotations"), list):
            raise ValueError(f"item {n} is not a task with `data` and `annotations` (Label Studio's JSON "
                             "export holds only such)")
        rows += [{"example_id": task["data"].get("example_id"), "annotator": str(a.get("completed_by")),
                  "label": None if a.get("was_cancelled") else _choice(a.get("result"))}
                 for a in task["annotations"]]
    return rows


def _choice(result: object) -> str | None:
    """The single chosen label of a result, or None when it is not exactly one choice."""
    if not isinstance(result, list):
        return None
    picks = [r for r in result if isinstance(r, dict) and r.get("from_name") == FROM_NAME]
    if len(picks) != 1 or len(result) != 1:
        return None
    choices = (
        (picks[0].get("value") or {}).get("choices") if isinstance(picks[0].get("value"), dict) else None
    )
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], str):
        return None
    return choices[0]


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
