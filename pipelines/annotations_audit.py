"""`caravan verify RUN --label-studio`: the answers a run was labeled and paid by, held to Label Studio.

Replay recomputes the consensus from the stored answers, and verify rehashes them, but neither can
tell whether they are the answers the labelers gave, to the data the run trained on. This check reads
the Label Studio project the run's labeling export names (its record's `project_id`) with the
auditor's own token, reconciles the stored table with it (`labeling.reconcile`), and holds each task
to the example it shows (`labeling.shown_otherwise`): the lineage names the export (the consensus
record's parent), its start time and the examples it was made for.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from labeling import (
    LabelStudioClient,
    LiveAnnotations,
    Mismatch,
    Project,
    Reconciliation,
    annotation_ids_by_task,
    live_annotations,
    reconcile,
    shown_otherwise,
)
from provenance import (
    CONSENSUS,
    LABELING_EXPORT,
    SNAPSHOT,
    TRAINING,
    Chain,
    ConsensusRecord,
    Findings,
    LabelingExportRecord,
    Record,
    RecordError,
    RunRecords,
    SnapshotRecord,
)
from storage import ContentStore, read_parquet

SHOWN = 5  # answers named per failure line; the count says how many in all


@dataclass
class AnnotationsAudit(Findings):
    """What `audit_annotations` found: failures by kind, how many answers matched or were edited in
    Label Studio after the export (their labels not checkable), and how many tasks were compared with
    the examples they show."""

    export_cid: str = ""
    project_id: int | None = None
    matched: int = 0
    edited_since: int = 0
    tasks_checked: int = 0
    sampled: bool = False  # a random sample of the tasks, not all (`audit_export`'s `sample`)

    def summary(self) -> str:
        """The clause `caravan verify` adds to its verdict line."""
        edited = f", {self.edited_since} edited there since the export" if self.edited_since else ""
        sampled = " (a random sample)" if self.sampled else ""
        return (f"{self.matched} answers as Label Studio project {self.project_id} holds them{edited}, "
                f"on {self.tasks_checked} tasks{sampled} checked against the data trained on")


def audit_annotations(
    chain: Chain, store: ContentStore, run_id: str, client: LabelStudioClient
) -> AnnotationsAudit:
    """Reconcile the answers run `run_id` was labeled by with its Label Studio project."""
    report = AnnotationsAudit()
    records = RunRecords(chain, store)
    try:
        training_cid, _ = records.parent(records.head(run_id), TRAINING)
        consensus_cid, consensus = records.parent(training_cid, CONSENSUS)
        report.export_cid, export = records.parent(consensus_cid, LABELING_EXPORT)
        trained_on = records.parent(training_cid, SNAPSHOT)[1].outputs.get(SnapshotRecord.SNAPSHOT)
    except RecordError as exc:
        report.fail("lineage_incomplete", run_id, f"{exc}: no labeling export to hold the answers to")
        return report
    answers = consensus.inputs.get(ConsensusRecord.ANNOTATIONS)
    if answers is None or answers != export.outputs.get(LabelingExportRecord.ANNOTATIONS):
        report.fail("lineage_incomplete", consensus_cid, "the consensus names no answers, or not those its "
                    "labeling export made")
        return report
    if export.inputs.get(LabelingExportRecord.SNAPSHOT) != trained_on:
        report.fail("lineage_incomplete", report.export_cid, "the labeling export was made for another "
                    "snapshot than the one the run trained on")
        return report
    return audit_export(export, read_parquet(store.get(answers)), read_parquet(store.get(trained_on)), client,
                        report)


def audit_export(
    export: Record, stored: pa.Table, examples: pa.Table, client: LabelStudioClient,
    report: AnnotationsAudit | None = None, *, sample: int | None = None, taken_after: str | None = None,
) -> AnnotationsAudit:
    """The answers a labeling export stored (`stored`), and the tasks of the examples it was made for,
    held to the Label Studio project its record names, as they stood at its start: every task, or with
    `sample` at most that many (`_draw`), with their answers, and every stored answer the project no
    longer holds (`_drawn`). `taken_after`: the export took the answers updated after it (an incremental
    sync's cutoff), whose tasks are drawn first."""
    report = report or AnnotationsAudit()
    report.project_id = int(export.params["project_id"])
    project = client.project(report.project_id)
    known = set(examples.column("example_id").to_pylist())
    by_task = None if sample is None else annotation_ids_by_task(client, project.id, annotated_only=False)
    if by_task is None or len(by_task) <= sample:
        live = live_annotations(client, project, known_examples=known)
    else:
        task_of = {a: t for t, ids in by_task.items() for a in ids}  # every answer's task
        drawn = _draw(export, stored, sorted(by_task), task_of, sample, taken_after)
        live, stored = _drawn(client, project, known, stored, task_of, drawn)
        examples = examples.filter(pc.is_in(examples["example_id"], _strings(live.shown)))
        report.sampled = True
    _report_answers(reconcile(stored, live, datetime.fromisoformat(export.started_at)), report)
    _report_shown(examples, project, live, stored, report)
    return report


def _draw(
    export: Record, stored: pa.Table, tasks: list[int], task_of: dict[int, int], sample: int,
    after: str | None,
) -> set[int]:
    """`sample` of the project's `tasks`, drawn at random (seeded by the export's time), first from those
    holding (`task_of`: each answer's task) the answers an incremental export took (updated `after` its
    cutoff): its new and changed answers are where a sync errs. After a full export (`after` None), from
    all alike."""
    rng = random.Random(export.started_at)
    if after is None:
        return set(rng.sample(tasks, sample))
    since = pa.scalar(datetime.fromisoformat(after), stored.schema.field("updated_at").type)
    taken = stored.filter(pc.greater(stored["updated_at"], since))
    first = sorted({task_of[a] for a in taken["annotation_id"].to_pylist() if a in task_of})
    if len(first) >= sample:
        return set(rng.sample(first, sample))
    return {*first, *rng.sample(sorted(set(tasks) - set(first)), sample - len(first))}


def _drawn(
    client: LabelStudioClient, project: Project, known: set[str], stored: pa.Table,
    task_of: dict[int, int], drawn: set[int],
) -> tuple[LiveAnnotations, pa.Table]:
    """The `drawn` tasks read whole, and the stored answers to hold to them (`task_of`: each answer the
    project holds, by id, and its task): those of the examples they show, those the project holds on
    them, and every stored answer the project holds nowhere (deleted since, alone or with its task, or
    never made: `gone`, drawn or not). A stored answer of a drawn example that the project holds on a task
    not drawn is read from that task too (that answer alone), so that it is compared rather than called
    gone."""
    live = live_annotations(client, project, known_examples=known, tasks=sorted(drawn))
    ids = stored["annotation_id"]
    on_drawn = pa.array(sorted(a for a, t in task_of.items() if t in drawn), pa.int64())
    nowhere = pc.invert(pc.is_in(ids, pa.array(sorted(task_of), pa.int64())))
    picked = stored.filter(pc.or_(pc.or_(pc.is_in(stored["example_id"], _strings(live.shown)),
                                         pc.is_in(ids, on_drawn)), nowhere))
    wanted = set(picked["annotation_id"].to_pylist())
    elsewhere = sorted({task_of[a] for a in wanted if a in task_of} - drawn)
    if not elsewhere:
        return live, picked
    more = live_annotations(client, project, known_examples=known, tasks=elsewhere)
    table = pa.concat_tables([live.table, more.table.filter(pc.is_in(more.table["annotation_id"],
                                                                     pa.array(sorted(wanted), pa.int64())))])
    left_out = {**live.left_out, **{a: v for a, v in more.left_out.items() if a in wanted}}
    return LiveAnnotations(table, left_out, live.shown), picked


def _strings(values: Iterable[str]) -> pa.Array:
    return pa.array(sorted(values), pa.string())


def _report_answers(found: Reconciliation, report: AnnotationsAudit) -> None:
    report.matched, report.edited_since = found.matched, len(found.edited_since)
    where = f"Label Studio project {report.project_id}"
    for name, mismatches, what in (
        ("annotation_differs", found.differ, f"stored answer(s) differ from {where}'s"),
        ("annotation_omitted", found.omitted, f"answer(s) {where} held before the export were left out"),
        ("annotation_gone", found.gone, f"stored answer(s) are not in {where} (deleted there since the "
                                        "export, or never made)"),
    ):
        if mismatches:
            report.fail(name, report.export_cid, _line(mismatches, what))
    if found.edited_since:
        report.skip("SKIP (edited since)", report.export_cid,
                    f"{len(found.edited_since)} answer(s) were edited in {where} after the export: their "
                    "labels cannot be checked against it")


def _report_shown(examples: pa.Table, project: Project, live: LiveAnnotations, stored: pa.Table,
                  report: AnnotationsAudit) -> None:
    """`task_differs`: tasks that show labelers other data than the examples trained on, with the
    labelers whose stored answers label them."""
    report.tasks_checked = len(set(examples.column("example_id").to_pylist()) & live.shown.keys())
    differ = shown_otherwise(examples, project, live.shown)
    if not differ:
        return
    answered = stored.filter(pc.is_in(stored["example_id"], pa.array(differ, pa.string())))
    who = sorted(set(answered["annotator"].to_pylist()))
    report.fail("task_differs", report.export_cid,
                f"{len(differ)} task(s) of Label Studio project {report.project_id} show labelers other data "
                f"than the examples the run trained on, answered by {', '.join(who) or 'no one'}: examples "
                f"{', '.join(differ[:SHOWN])}{' ...' if len(differ) > SHOWN else ''}")


def _line(mismatches: tuple[Mismatch, ...], what: str) -> str:
    """One failure's detail: how many, the labelers whose pay they move, and the first few answers."""
    who = sorted({m.annotator for m in mismatches})
    shown = "; ".join(f"annotation {m.annotation_id} ({m.annotator}): {m.detail}" for m in mismatches[:SHOWN])
    more = f"; and {len(mismatches) - SHOWN} more" if len(mismatches) > SHOWN else ""
    return f"{len(mismatches)} {what}, paying labelers {', '.join(who)}: {shown}{more}"
