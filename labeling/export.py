"""Incremental annotation export, normalized to the `annotations` table.

The pull asks Label Studio only for tasks whose `updated_at` moved past the cursor's
watermark (it moves whenever an annotation on the task is created, updated or skipped),
minus a small overlap window that catches transactions committed late. Versions already
emitted inside that window are remembered in the cursor, so nothing is emitted twice.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from labeling.client import DM_TIME, LabelStudioClient, Project, iso_utc
from labeling.configs import FROM_NAME
from labeling.schemas import ANNOTATIONS

OVERLAP = timedelta(seconds=5)

# Why an annotation is not in the table (counted, never silently dropped).
SKIP_REASONS = (
    "cancelled",
    "unknown_task",
    "empty_result",
    "malformed_result",
    "invalid_label",
    "unknown_annotator",
)


@dataclass(frozen=True)
class ExportCursor:
    """Where the last export stopped; JSON-serializable, kept by the caller. Its size is bounded
    by the activity of the last OVERLAP seconds before the watermark, not by the project's size."""

    project_id: int
    watermark: str | None = None  # max task updated_at seen (UTC, DM format)
    seen: tuple[tuple[int, str], ...] = ()  # (annotation id, updated_at) handled inside the window
    seen_tasks: tuple[tuple[int, str], ...] = ()  # (task id, updated_at) pulled inside the window

    def to_json(self) -> str:
        return json.dumps(
            {
                "project_id": self.project_id,
                "watermark": self.watermark,
                "seen": [list(v) for v in self.seen],
                "seen_tasks": [list(v) for v in self.seen_tasks],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ExportCursor:
        d = json.loads(text)
        return cls(
            project_id=int(d["project_id"]),
            watermark=d.get("watermark"),
            seen=tuple((int(a), str(u)) for a, u in d.get("seen", [])),
            seen_tasks=tuple((int(a), str(u)) for a, u in d.get("seen_tasks", [])),
        )


@dataclass
class AnnotationExport:
    """New or changed annotations, the cursor to keep, and what was left out and why."""

    table: pa.Table
    cursor: ExportCursor
    skipped: Counter = field(default_factory=Counter)
    skipped_ids: dict[str, list[int]] = field(default_factory=dict)
    withdrawn: list[int] = field(default_factory=list)  # ids now skipped/invalid: drop earlier versions

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


def export_annotations(
    client: LabelStudioClient,
    project: Project,
    cursor: ExportCursor | None = None,
    *,
    known_examples: set[str] | None = None,
) -> AnnotationExport:
    """Annotations created or updated since `cursor` (all of them when None).

    `known_examples`, when given, is the set of example ids Caravan synced: an annotation on
    any other task is counted as `unknown_task` rather than attributed to a stray example.
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
    out = AnnotationExport(table=ANNOTATIONS.empty_table(), cursor=cursor)
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
    if rows:
        rows.sort(key=lambda r: r["annotation_id"])
        out.table = pa.Table.from_pylist(rows, schema=ANNOTATIONS)
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
        )
    return out


def merge_annotations(previous: pa.Table, export: AnnotationExport) -> pa.Table:
    """The annotations table after applying an export: updated versions replace earlier ones,
    withdrawn (now skipped or invalid) annotations leave, new ones join; sorted by id."""
    replaced = set(export.table.column("annotation_id").to_pylist()) | set(export.withdrawn)
    kept = (
        previous.filter(
            pc.invert(pc.is_in(previous.column("annotation_id"), pa.array(sorted(replaced), pa.int64())))
        )
        if replaced
        else previous
    )
    merged = pa.concat_tables([kept.cast(ANNOTATIONS), export.table])
    return merged.take(pc.sort_indices(merged, [("annotation_id", "ascending")]))


def _normalize(
    a: dict, example_id: object, project: Project, users: dict[int, str], known: set[str] | None
) -> tuple[dict | None, str | None]:
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
