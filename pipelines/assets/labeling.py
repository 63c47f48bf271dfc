"""Labeling stage: tasks into Label Studio, annotations back (incrementally), consensus and quality.

The annotation export keeps a cursor beside the annotations table it was applied to (by the
table's CID): if the two ever disagree (a crash between storing one and the other) the
cursor is dropped and the next export starts over, which merging makes harmless.

Consensus is Dawid-Skene. With a method that weighs a model (`dawid_skene_model`: the model as one
more annotator; `crowdlab`: cleanlab's CROWDLAB) it also weighs, once a run of the version has been
reviewed, the review's out-of-sample class probabilities (the run's recipe cross-fitted, so no model
saw the example it predicts); the consensus record names that review table as an input, so an
auditor recomputes the same labels from stored bytes.

Why neither is the default: they label more accurately, but labelers are paid by what their answers
did, and with a model in the consensus that stops following their answers. On digits
(`bench/contributor_value.py --consensus crowdlab`, world seed 1), leaving out either of the two best
labelers hands every label to CROWDLAB's model, and leaving out the constant labeler hurts the model
more than leaving out the best one (labeler Spearman -0.7537, against 0.9856 under Dawid-Skene);
with `dawid_skene_model` (seed 3) leaving out the 0.85 labeler helps the model. Labeler pay
(`attribution.contributor_weights`) does not see the model's votes either.
"""

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeling import (
    ANNOTATIONS,
    DS_SMOOTHING,
    METHODS,
    MODEL_METHODS,
    ExportCursor,
    LabelingError,
    ModelProbs,
    ProjectSpec,
    aggregate,
    check_smoothing,
    export_annotations,
    merge_annotations,
    sync_tasks,
)
from pipelines.content_io import AssetIndex, StoredValue, StoreResource, store_value
from pipelines.lineage import LineageResource, now
from pipelines.partitions import dataset_versions
from pipelines.report import md_table
from pipelines.resources import ChainResource, DatasetCatalog, LabelStudioResource
from provenance import (
    CONSENSUS,
    LABEL_REVIEW,
    LABELING_EXPORT,
    ChainError,
    ConsensusRecord,
    LabelingExportRecord,
    LabelReviewRecord,
    claim_time,
    claims_deployed,
    date_export,
    load_record,
)
from storage import ContentStore, read_parquet


def project_spec(catalog: DatasetCatalog, labelstudio: LabelStudioResource, version: str) -> ProjectSpec:
    """The version's Label Studio project: titled `<prefix> <version>`, set up by its catalog labeling."""
    return ProjectSpec.of(f"{labelstudio.project_prefix} {version}", catalog.lookup(version)["labeling"])


def _labeling(fn):
    """Label Studio and input errors fail the step with their own message."""

    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LabelingError as exc:
            raise dg.Failure(str(exc)) from exc

    return wrapped


@dg.asset(partitions_def=dataset_versions, group_name="labeling", kinds={"labelstudio"})
def labeling_tasks(
    context: dg.AssetExecutionContext,
    raw_dataset: pa.Table,
    catalog: DatasetCatalog,
    labelstudio: LabelStudioResource,
) -> dg.MaterializeResult:
    """One Label Studio task per example (keyed by example id); a rerun adds only new examples."""
    client = labelstudio.client()
    project = _labeling(client.ensure_project)(project_spec(catalog, labelstudio, context.partition_key))
    report = _labeling(sync_tasks)(client, project, raw_dataset)
    return dg.MaterializeResult(
        metadata={
            "project_id": project.id,
            "project_url": dg.MetadataValue.url(f"{labelstudio.url}/projects/{project.id}"),
            "created": report.created,
            "already_present": report.already_present,
            "tasks_in_project": report.tasks_in_project,
        }
    )


@dg.asset(
    partitions_def=dataset_versions,
    group_name="labeling",
    kinds={"labelstudio", "arrow"},
    deps=[labeling_tasks],
)
def annotations(
    context: dg.AssetExecutionContext,
    raw_dataset: pa.Table,
    dataset_snapshot: dict,
    catalog: DatasetCatalog,
    labelstudio: LabelStudioResource,
    store: StoreResource,
    index: AssetIndex,
    lineage: LineageResource,
    chain: ChainResource,
) -> dg.Output[StoredValue]:
    """Every submitted annotation with its annotator, pulled incrementally since the last sync; those
    deleted in Label Studio since (or whose task was) leave it, giving a new snapshot CID. The export
    record is dated on chain as it is written (`dated_export`)."""
    started, version = now(), context.partition_key
    client = labelstudio.client()
    project = _labeling(client.ensure_project)(project_spec(catalog, labelstudio, version))
    previous, cursor = _previous(index, store, version, project.id)
    export = _labeling(export_annotations)(
        client, project, cursor, known_examples=set(raw_dataset["example_id"].to_pylist()), previous=previous
    )
    removed = len(export.removed_from(previous))  # deleted in Label Studio (annotation or its task)
    table = merge_annotations(previous, export)
    client = store.client()
    stored = store_value(client, table)
    cursor_path(index, version).write_text(  # with the answers this sync took, which its check draws first
        json.dumps({"table_cid": stored.cid, "cursor": export.cursor.to_json(), "taken_after": export.after})
    )
    skipped = dict(sorted(export.skipped.items()))
    context.log.info(
        f"{export.table.num_rows} new or changed annotations, {removed} removed (deleted), skipped {skipped}"
    )
    record = lineage.write(
        client,
        LABELING_EXPORT,
        version,
        started=started,
        inputs={LabelingExportRecord.SNAPSHOT: dataset_snapshot["cid"]},
        outputs={LabelingExportRecord.ANNOTATIONS: stored.cid},
        parents=(dataset_snapshot["record_cid"],),
        params={"project_id": project.id, "skipped": skipped, "removed": removed},
    )
    dated = dated_export(chain, record, context.log)
    return dg.Output(
        stored,
        metadata={
            "record_cid": record,
            "dated_on_chain": dated,
            "dagster/row_count": table.num_rows,
            "new_or_changed": export.table.num_rows,
            "skipped": dg.MetadataValue.json(skipped),
            "removed": removed,
            "annotators": len(pc.unique(table["annotator"])),
        },
    )


def dated_export(chain: ChainResource, record_cid: str, log: dg.DagsterLogManager) -> str:
    """Date a labeling export record on chain (`provenance.date_export`) where Caravan's contracts were
    deployed from here and the chain holds the operator's key: when, or why it was not. Why: a
    labeler's answers claimed before their export must be in it, and the chain's clock, not the
    record's own `ended_at`, says when that was (a run whose claiming labelers' export is undated fails
    `caravan verify`, `provenance.answer_claims`). An unreachable chain leaves the sync undated rather
    than failed: its check warns, and publishing a run of it is refused until a later sync is dated."""
    try:
        on_chain = chain.deployed()
        if on_chain is None or on_chain.address is None or not claims_deployed(on_chain):
            return "not dated: no contracts deployed from here, or no operator key"
        return claim_time(date_export(on_chain, record_cid))
    except ChainError as exc:
        log.warning(f"labeling export record {record_cid} not dated on chain: {exc}")
        return f"not dated: {exc}"


def cursor_path(index: AssetIndex, version: str) -> Path:
    """The version's saved export cursor (and the annotations CID it goes with); the sensor reads it too."""
    return index.state_path("annotation_cursor", version)


def taken_after(index: AssetIndex, version: str, table_cid: str) -> str | None:
    """The time after which the sync that stored annotations table `table_cid` took the answers updated
    (DM format); None after a full export, or where the saved cursor belongs to another table."""
    return _saved(index, version, table_cid).get("taken_after")


def _saved(index: AssetIndex, version: str, table_cid: str) -> dict:
    """What the sync that stored annotations table `table_cid` saved beside it; empty where the saved
    cursor is missing or belongs to another table."""
    path = cursor_path(index, version)
    saved = json.loads(path.read_text()) if path.exists() else {}
    return saved if saved.get("table_cid") == table_cid else {}


def _previous(
    index: AssetIndex, store: StoreResource, version: str, project_id: int
) -> tuple[pa.Table, ExportCursor | None]:
    stored = index.stored("annotations", version)
    saved = _saved(index, version, stored["cid"]) if stored is not None else {}
    cursor = ExportCursor.from_json(saved["cursor"]) if saved else None
    if cursor is None or cursor.project_id != project_id:
        return ANNOTATIONS.empty_table(), None
    return read_parquet(store.client().get(stored["cid"])).cast(ANNOTATIONS), cursor


class ConsensusConfig(dg.Config):
    """How `consensus_labels` decides each example's label from the crowd's answers: the method and
    its Dawid-Skene smoothing (both recorded, so replay recomputes the same labels)."""

    # one of labeling.METHODS; a model method ("dawid_skene_model", "crowdlab") is Dawid-Skene until a
    # run of this version was reviewed (its label_review holds out-of-sample class probabilities)
    method: str = "dawid_skene"
    # pseudo-counts added to every Dawid-Skene confusion cell (0: crowd-kit's fit, where a (true class,
    # answer) pair an annotator never gave rules that class out; None: labeling.auto_smoothing, at most
    # DS_SMOOTHING, fewer where the label set is large for the answers); the value used is recorded, so
    # replay and the left-out recounts refit with the same
    smoothing: float | None = None


@dataclass(frozen=True)
class ReviewedProbs:
    """A run's stored label review, read as the probabilities a model method weighs."""

    probs: ModelProbs
    table_cid: str
    record_cid: str


def reviewed_probs(client: ContentStore, record_cid: str) -> ReviewedProbs | None:
    """A stored label review read as the probabilities a model method weighs (reviews stored before
    they kept probabilities give none)."""
    record = load_record(client, record_cid)
    table_cid = record.outputs[LabelReviewRecord.LABEL_REVIEW]
    classes = record.params.get("classes")
    table = read_parquet(client.get(table_cid))
    if classes is None or "class_probs" not in table.column_names:
        return None
    probs = ModelProbs(
        tuple(table["example_id"].to_pylist()),
        tuple(str(c) for c in classes),
        np.asarray(table["class_probs"].to_pylist(), dtype=np.float64).reshape(table.num_rows, len(classes)),
    )
    return ReviewedProbs(probs, table_cid, record_cid)


@dataclass(frozen=True)
class Recount:
    """The recorded consensus recomputed without some answers (same method, gold and review): called with
    examples, without the answers on them (what leaving a provider's examples out does to the labels of
    the rest); ``labeler=``, without that annotator's answers too (what its labels did). The left-out
    retrains train on these labels (`pipelines.assets.training.left_out_value`)."""

    annotations: pa.Table
    gold: pa.Table | None
    method: str
    reviewed: ModelProbs | None
    smoothing: float

    @property
    def labelers(self) -> list[str]:
        """Every annotator whose answers the consensus counted, sorted."""
        return sorted(set(self.annotations["annotator"].to_pylist()))

    def __call__(self, dropped: Collection[str], labeler: str | None = None) -> pa.Table:
        gone = pc.is_in(self.annotations["example_id"], pa.array(sorted(dropped), pa.string()))
        if labeler is not None:
            gone = pc.or_(gone, pc.equal(self.annotations["annotator"], labeler))
        kept = self.annotations.filter(pc.invert(gone))
        return aggregate(kept, self.gold, self.method, self.reviewed, self.smoothing).consensus


def recount(client: ContentStore, consensus_cid: str) -> Recount | None:
    """The consensus record's `Recount`; None where the record names no answers to recompute from."""
    record = load_record(client, consensus_cid)
    if ConsensusRecord.ANNOTATIONS not in record.inputs:
        return None
    annotations = read_parquet(client.get(record.inputs[ConsensusRecord.ANNOTATIONS]))
    gold_cid = record.inputs.get(ConsensusRecord.GOLD)
    gold = read_parquet(client.get(gold_cid)) if gold_cid else None
    reviewed = None
    if ConsensusRecord.LABEL_REVIEW in record.inputs:  # a review the consensus weighed, by its record
        review = next((p for p in record.parents if load_record(client, p).activity == LABEL_REVIEW), None)
        reviewed = reviewed_probs(client, review) if review else None
    recorded = record.params.get("smoothing")  # not recorded before it was a setting
    smoothing = DS_SMOOTHING if recorded is None else float(recorded)
    return Recount(annotations, gold, str(record.params.get("method", "dawid_skene")),
                   reviewed.probs if reviewed else None, smoothing)


def review_for(
    client: ContentStore, lineage: LineageResource, version: str, annotations_cid: str
) -> ReviewedProbs | None:
    """The label review whose probabilities this consensus weighs.

    Consensus of one annotations table is decided once: a rerun on the same annotations reuses the
    review (or none) that the consensus of that table used, so rerunning the pipeline gives the same
    labels and the same run, and never chases its own reviews. New annotations (the answers a review
    queue asked for, say) take the latest review.
    """
    previous = lineage.latest(CONSENSUS, version)
    if previous is not None:
        record = load_record(client, previous)
        if record.inputs.get(ConsensusRecord.ANNOTATIONS) == annotations_cid:
            used = record.inputs.get(ConsensusRecord.LABEL_REVIEW)
            reviews = [p for p in record.parents if used and load_record(client, p).activity == LABEL_REVIEW]
            return reviewed_probs(client, reviews[0]) if reviews else None
    latest = lineage.latest(LABEL_REVIEW, version)
    return None if latest is None else reviewed_probs(client, latest)


def consensus_method(config: ConsensusConfig, review: ReviewedProbs | None) -> str:
    """The method this consensus runs, once the config is checked: a model method is Dawid-Skene until
    there is a review to weigh."""
    if config.method not in METHODS:
        raise dg.Failure(f"consensus method {config.method!r} is not one of {', '.join(METHODS)}")
    try:
        if config.smoothing is not None:
            check_smoothing(config.smoothing)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from None
    if config.method in MODEL_METHODS and review is None:
        return "dawid_skene"
    return config.method


@dg.multi_asset(
    partitions_def=dataset_versions,
    group_name="labeling",
    outs={
        "consensus_labels": dg.AssetOut(
            kinds={"arrow"},
            description="Consensus per example: Dawid–Skene (or, opted in, weighing a run's label review).",
        ),
        "annotator_quality": dg.AssetOut(kinds={"arrow"}, description="Estimated accuracy per annotator."),
    },
)
def consensus_labels(
    context: dg.AssetExecutionContext,
    config: ConsensusConfig,
    annotations: pa.Table,
    catalog: DatasetCatalog,
    store: StoreResource,
    index: AssetIndex,
    lineage: LineageResource,
):
    """Each example's consensus label from the annotations (graded on the version's gold, if any) and
    each annotator's estimated accuracy, recorded as the consensus stage."""
    started, version = now(), context.partition_key
    gold_file = catalog.lookup(version).get("gold")  # pinned when the version was registered
    client = store.client()
    gold = read_parquet(client.get(gold_file["cid"])) if gold_file else None
    annotations_cid = index.cid_of("annotations", version)
    model = config.method in MODEL_METHODS
    review = review_for(client, lineage, version, annotations_cid) if model else None
    method = consensus_method(config, review)
    probs = review.probs if method in MODEL_METHODS else None
    result = _labeling(aggregate)(annotations, gold, method, probs, config.smoothing)
    quality = result.quality.sort_by("annotator")
    inputs = {ConsensusRecord.ANNOTATIONS: annotations_cid}
    parents = (lineage.cid_of(LABELING_EXPORT, version),)
    if gold is not None:
        inputs[ConsensusRecord.GOLD] = gold_file["cid"]
    if probs is not None:
        inputs[ConsensusRecord.LABEL_REVIEW] = review.table_cid
        parents += (review.record_cid,)
    consensus, quality_stored = store_value(client, result.consensus), store_value(client, quality)
    record = lineage.write(
        client,
        CONSENSUS,
        version,
        started=started,
        inputs=inputs,
        outputs={
            ConsensusRecord.CONSENSUS: consensus.cid,
            ConsensusRecord.ANNOTATOR_QUALITY: quality_stored.cid,
        },
        parents=parents,
        params={
            "method": result.method,
            "model_informed": result.model_informed,
            "smoothing": result.smoothing,
        },
    )
    yield dg.Output(
        consensus,
        output_name="consensus_labels",
        metadata={
            "record_cid": record,
            "dagster/row_count": result.consensus.num_rows,
            "method": result.method,
            "model_informed": result.model_informed,
            "mean_confidence": float(pc.mean(result.consensus["confidence"]).as_py() or 0.0),
        },
    )
    rows = [
        (
            q["annotator"],
            f"{q['estimated_accuracy']:.3f}",
            q["n_annotations"],
            f"{q['agreement']:.3f}",
            "-" if q["gold_accuracy"] is None else f"{q['gold_accuracy']:.3f}",
        )
        for q in quality.to_pylist()
    ]
    yield dg.Output(
        quality_stored,
        output_name="annotator_quality",
        metadata={
            "dagster/row_count": quality.num_rows,
            "quality": dg.MetadataValue.md(
                md_table(
                    ["annotator", "estimated accuracy", "annotations", "agreement", "gold accuracy"], rows
                )
            ),
        },
    )


def label_rows(raw: pa.Table, consensus: pa.Table) -> pa.Table:
    """The examples of `raw` that have a consensus label, with its label, confidence and votes, in
    example_id order: what the model trains on (and what replay derives again)."""
    # by index, not Table.join: joins refuse list columns such as image pixels
    position = pc.index_in(raw["example_id"], value_set=consensus["example_id"])
    table = raw.filter(pc.is_valid(position))
    labels = consensus.take(pc.drop_null(position))
    for name in ("label", "confidence", "n_votes"):
        table = table.append_column(name, labels[name])
    return table.sort_by("example_id")


@dg.asset(partitions_def=dataset_versions, group_name="labeling", kinds={"parquet", "ipfs"})
def labeled_dataset(raw_dataset: pa.Table, consensus_labels: pa.Table) -> dg.Output[pa.Table]:
    """The examples that have a consensus label, with it: what the model trains on."""
    table = label_rows(raw_dataset, consensus_labels)
    return dg.Output(
        table,
        metadata={"dagster/row_count": table.num_rows, "unlabeled": raw_dataset.num_rows - table.num_rows},
    )
