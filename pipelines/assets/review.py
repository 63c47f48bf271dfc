"""Review stage: likely mislabeled examples, flagged after each training run and sent back to Label
Studio for more answers.

`label_review` cross-fits the run's own recipe (`attribution.review_labels`: every consensus-labeled
example gets class probabilities from a model that never saw it, scored by cleanlab's confident
learning; mixed with a second model family where one reads the payload: a forest (extra trees) on tabular
features, a bag-of-tokens model on text, cross-fitted on the same folds; where the version declares a
validation set, every fold's models train on it too; where the labels are a Dawid-Skene consensus,
each label's confidence is weighed in, `attribution.with_votes`) and stores one row per example (pinned).
`review_queue` asks Label Studio for more answers on the flagged tasks (their overlap raised, a
"review" tab listing them); the next `annotations` export picks the new answers up like any other and
consensus folds them in. Each row keeps its out-of-sample class probabilities (`class_probs`, in the
order of the record's `classes`), which a consensus with a model method (`dawid_skene_model`,
`crowdlab`) weighs beside the answers.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from attribution import (
    LABELS,
    QUALITY_METHOD,
    RECIPE_SEEDS,
    AttributionError,
    AttributionTask,
    InputEncoding,
    LabelReview,
    encoding_from_json,
    label_quality,
    labelled_inputs,
    review_labels,
    review_task_labels,
)
from labeling import LabelingError, request_review
from pipelines.assets.labeling import project_spec
from pipelines.assets.training import TrainingConfig
from pipelines.compute_platform import pinned_threads
from pipelines.content_io import AssetIndex, StoredValue, StoreResource, store_value
from pipelines.lineage import LineageResource, now
from pipelines.partitions import dataset_versions
from pipelines.report import md_table
from pipelines.resources import DatasetCatalog, LabelStudioResource
from provenance import (
    CONSENSUS,
    LABEL_REVIEW,
    TRAINING,
    LabelReviewRecord,
    Record,
    RunRecords,
    TrainingRecord,
)
from serving import with_model_files
from storage import read_parquet

VOTES_METHOD = "dawid_skene"  # the consensus whose confidence is a posterior of the answers alone
LABEL_REVIEW_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("label", pa.string()),  # the consensus label under review
        ("suggested", pa.string()),  # the class the out-of-sample model prefers
        ("quality", pa.float64()),  # cleanlab's label-quality score in [0, 1] (votes weighed in); low = wrong
        ("flagged", pa.bool_()),  # as many as cleanlab's find_label_issues flags, the lowest quality
        ("rank", pa.int64()),  # 1 = most suspect
        ("confidence", pa.float64()),  # the consensus' own confidence and votes, for the reviewer
        ("n_votes", pa.int64()),
        ("run_id", pa.string()),
        ("class_probs", pa.list_(pa.float64())),  # out-of-sample, in the order of the record's classes
    ]
)


class ReviewConfig(dg.Config):
    """How `label_review` scores each label: cross-fitted folds, the models mixed in with the recipe,
    whether the crowd's votes are weighed in, and how many suspects the report lists."""

    folds: int = 5
    top: int = 20  # suspects listed in the run's report
    # tabular runs: mix the recipe's out-of-sample probabilities with a forest's (scikit-learn's extra trees,
    # same folds, by the weight that best predicts the labels)
    forest: bool = True
    # text runs: the same with a bag-of-tokens model (TF-IDF logistic regression on the recipe's tokens);
    # image runs' recipe decides alone (a forest on raw pixels did no better)
    bag_of_tokens: bool = True
    # weigh each label's Dawid-Skene confidence (the crowd's answers) in with the models' probabilities
    # (attribution.with_votes, Bayes' rule); consensus of another method (majority vote's share of
    # votes is no posterior; a model method's already weighs a model) is scored by the models alone
    votes: bool = True


class QueueConfig(dg.Config):
    """How `review_queue` sends flagged examples back for answers: how many more per task, the cap on
    answers per task, and how many tasks one run sends."""

    extra_answers: int = 2  # answers asked for beyond those a flagged task has
    max_overlap: int = 9  # never ask for more answers than this per task
    max_tasks: int = 500  # the most suspect flagged examples first; the rest wait for the next run


@dg.asset(partitions_def=dataset_versions, group_name="review", kinds={"arrow", "ipfs"})
def label_review(
    context: dg.AssetExecutionContext,
    config: ReviewConfig,
    labeled_dataset: pa.Table,
    model_encoding: bytes,
    store: StoreResource,
    index: AssetIndex,
    lineage: LineageResource,
) -> dg.Output[StoredValue]:
    """Each consensus-labeled example's label quality under the run's recipe, cross-fitted; flagged
    rows are likely mislabels (the report lists the worst)."""
    started, version = now(), context.partition_key
    client = store.client()
    training_cid = lineage.cid_of(TRAINING, version)
    records = RunRecords(None, client)
    record = records.load(training_cid)
    try:
        made = reviewed(records, record, labeled_dataset, model_encoding, config)
    except AttributionError as exc:
        raise dg.Failure(str(exc)) from exc
    if made.unknown:
        context.log.warning(f"{made.unknown} examples carry labels the model never saw; not reviewed")
    review, run_id = made.review, str(record.params["run_id"])
    validation_cid = record.inputs.get(TrainingRecord.VALIDATION)
    stored = store_value(client, made.table)
    written = lineage.write(
        client,
        LABEL_REVIEW,
        version,
        started=started,
        inputs={
            LabelReviewRecord.LABELED_DATASET: index.cid_of("labeled_dataset", version),
            LabelReviewRecord.ENCODING: index.cid_of("model_encoding", version),
            **({LabelReviewRecord.VALIDATION: validation_cid} if validation_cid else {}),
        },
        outputs={LabelReviewRecord.LABEL_REVIEW: stored.cid},
        parents=(training_cid,),
        params={
            "run_id": run_id,
            "folds": config.folds,
            "seed": TrainingConfig(**record.params["config"]).seed,
            "method": QUALITY_METHOD,
            "models": made.models,
            "votes": VOTES_METHOD if made.votes else None,  # whose confidence was weighed in (with_votes)
            "recipe_weight": review.recipe_weight,  # the recipe's share of the mixture (1.0: alone)
            "recipe_epochs": review.epochs,  # the recipe's cross-fitted length (None: the run's own epochs)
            # the validation rows every fold trained on
            "trusted_rows": made.trusted.num_rows if made.trusted is not None else 0,
            "cleanlab": package_version("cleanlab"),
            **({"scikit-learn": package_version("scikit-learn")} if len(made.models) > 1 else {}),
            "classes": made.classes,
        },
    )
    flagged, n = int(review.flagged.sum()), made.table.num_rows
    context.log.info(f"run {run_id}: {flagged} of {n} consensus labels flagged as likely wrong")
    return dg.Output(
        stored,
        metadata={
            "run_id": run_id,
            "record_cid": written,
            "dagster/row_count": n,
            "flagged": flagged,
            "flagged_fraction": round(flagged / max(n, 1), 4),
            "detector": _detector_text(config.folds, made.models, review, made.trusted, made.votes),
            "top_suspects": dg.MetadataValue.md(suspects_md(made.table.sort_by("rank").slice(0, config.top))),
        },
    )


@dataclass(frozen=True)
class Reviewed:
    """What `reviewed` made of a run's labeled data: the `label_review` table and how it was made."""

    table: pa.Table  # the label_review contract (`review_table`)
    review: LabelReview
    classes: list[str]  # the model's classes, the order of `class_probs`
    models: list[str]  # the models mixed ("recipe", then "forest" or "bag_of_tokens")
    trusted: pa.Table | None  # the validation rows every fold also trained on
    votes: bool  # the Dawid-Skene consensus' confidence weighed in
    unknown: int  # examples left out: labels the model never saw


def reviewed(
    records: RunRecords, training: Record, labeled_dataset: pa.Table, model_encoding: bytes,
    config: ReviewConfig,
) -> Reviewed:
    """The label review of the run `training` records (its recipe cross-fitted on its labeled data, under
    its thread count): what `label_review` stores, and what a replay makes again to check a stored one
    (`pipelines.replay`)."""
    client = records.store
    encoding = with_model_files(client, encoding_from_json(model_encoding))
    table = labeled_dataset.sort_by("example_id")
    known = _known(table, encoding.classes)
    table = table.filter(pa.array(known))
    validation_cid = training.inputs.get(TrainingRecord.VALIDATION)
    trusted = _validation_rows(client, validation_cid, encoding.classes) if validation_cid else None
    votes = config.votes and _consensus_method(records, training.parents) == VOTES_METHOD
    confidence = table["confidence"].to_numpy() if votes else None
    threads = (training.params.get("platform") or {}).get("threads")
    with pinned_threads(threads):
        review, _, probs, models = _cross_fitted(encoding, table, TrainingConfig(**training.params["config"]),
                                                 config, trusted, confidence)
    out = review_table(table, review, probs, encoding.classes, str(training.params["run_id"]))
    classes = [str(c) for c in encoding.classes]
    return Reviewed(out, review, classes, models, trusted, votes, int((~known).sum()))


def rescored(made: Reviewed, probs: np.ndarray) -> pa.Table:
    """`made`'s label review with other class probabilities `probs` (in its rows and classes): the
    suggestion, quality, flag and rank they give, scored as `reviewed` scores them (the crowd's confidence
    weighed in where `made` weighed it). Replay holds a stored review's columns to this where its
    probabilities may differ from the replay's by rounding (another platform)."""
    table = made.table
    index = {c: i for i, c in enumerate(made.classes)}
    y = np.asarray([index[v] for v in table["label"].to_pylist()], dtype=np.int64)
    confidence = table["confidence"].to_numpy() if made.votes else None
    run_id = table["run_id"][0].as_py() if table.num_rows else ""
    return review_table(table, label_quality(y, probs, confidence=confidence), probs, made.classes, run_id)


def review_config(params: Mapping[str, Any]) -> ReviewConfig:
    """The review settings a label review record's `params` say it was made with (its models, folds and
    whether votes were weighed in)."""
    models = params.get("models") or ["recipe"]
    return ReviewConfig(folds=int(params["folds"]), forest="forest" in models,
                        bag_of_tokens="bag_of_tokens" in models, votes=params.get("votes") is not None)


def review_table(
    table: pa.Table, review: LabelReview, probs: np.ndarray, classes: Sequence[str], run_id: str
) -> pa.Table:
    """The `label_review` contract: each reviewed example's label, the class the out-of-sample model
    prefers, its quality, flag and rank (1 = most suspect), its consensus and class probabilities."""
    n = table.num_rows
    rank = np.empty(n, dtype=np.int64)
    rank[review.ranked()] = np.arange(1, n + 1)
    return pa.table(
        {
            "example_id": table["example_id"],
            "label": pa.array([str(v) for v in table["label"].to_pylist()], pa.string()),
            "suggested": pa.array(np.asarray(classes, dtype=object)[review.suggested].tolist(), pa.string()),
            "quality": pa.array(review.quality, pa.float64()),
            "flagged": pa.array(review.flagged, pa.bool_()),
            "rank": pa.array(rank, pa.int64()),
            "confidence": table["confidence"].cast(pa.float64()),
            "n_votes": table["n_votes"].cast(pa.int64()),
            "run_id": pa.array([run_id] * n, pa.string()),
            "class_probs": pa.array(list(np.asarray(probs, dtype=np.float64)), pa.list_(pa.float64())),
        },
        schema=LABEL_REVIEW_SCHEMA,
    )


def suspects_md(top: pa.Table) -> str:
    """The most suspect labels as the Dagster UI shows them."""
    return md_table(
        ["rank", "example_id", "label", "suggested", "quality", "flagged", "votes", "confidence"],
        [[r["rank"], r["example_id"][:12], r["label"], r["suggested"], f"{r['quality']:.3f}",
          "yes" if r["flagged"] else "", r["n_votes"], f"{r['confidence']:.2f}"] for r in top.to_pylist()],
    )


def _detector_text(
    folds: int, models: Sequence[str], review: LabelReview, trusted: pa.Table | None, votes: bool = False
) -> str:
    names = list(models)
    if review.epochs is not None:  # the recipe comes first
        names[0] += (f" ({review.epochs} epochs, the length that fit the labels best; {RECIPE_SEEDS} seeds "
                     "averaged)")
    text = f"cleanlab {QUALITY_METHOD} + find_label_issues on {folds}-fold cross-fitted probabilities of "
    text += " and ".join(names)
    if len(models) > 1:
        weight = review.recipe_weight
        text += f" (mixed {weight:.2f} / {1 - weight:.2f} by the log-loss of the labels)"
    if trusted is not None:
        text += f", every fold also trained on {trusted.num_rows} validation examples"
    if votes:
        text += ", ranked with the Dawid-Skene consensus' confidence weighed in (Bayes' rule)"
    return text


def _consensus_method(records: RunRecords, parents: Sequence[str]) -> str | None:
    """The method of the consensus whose labels the run trained on (the training record's parent)."""
    for cid in parents:
        parent = records.load(cid)
        if parent.activity == CONSENSUS:
            return parent.params.get("method")
    return None


def _known(table: pa.Table, classes: Sequence[str]) -> np.ndarray:
    """Which rows carry a label the model was trained to predict."""
    return np.isin(np.asarray([str(v) for v in table["label"].to_pylist()], dtype=object), list(classes))


def _validation_rows(client, cid: str, classes: Sequence[str]) -> pa.Table | None:
    """The training's validation set (by its CID in the training record), rows of a class the model
    predicts; None if no row is left."""
    table = read_parquet(client.get(cid))
    table = table.filter(pa.array(_known(table, classes)))
    return table if table.num_rows else None


def _cross_fitted(
    encoding, table: pa.Table, training: TrainingConfig, config: ReviewConfig, trusted: pa.Table | None,
    confidence: np.ndarray | None = None,
) -> tuple[LabelReview, np.ndarray, np.ndarray, list[str]]:
    """The run's own recipe cross-fitted on `table` and, where one reads the payload, a second model
    family (a forest on tabular features, a bag-of-tokens model on text) mixed in by the weight that
    best predicts the labels; every fold trained on the `trusted` examples too (the version's
    validation set: labels we trust, never reviewed), scored with the crowd's `confidence` where given.
    Returns (review, class indices of its labels, the out-of-sample class probabilities, the models
    mixed). See `attribution.mislabels` for what each part measured."""
    if isinstance(encoding, InputEncoding):
        task = AttributionTask(encoding.mlp(training.hidden), training.train_config())
        y = encoding.label_indices(table["label"].to_pylist())
        rows = None
        if trusted is not None:
            rows = (encoding.transform(trusted), encoding.label_indices(trusted["label"].to_pylist()))
        review, probs = review_labels(
            task, encoding.transform(table), y, folds=config.folds, seed=training.seed, forest=config.forest,
            trusted=rows, confidence=confidence,
        )
        return review, y, probs, ["recipe", "forest"] if config.forest else ["recipe"]
    batch, _ = labelled_inputs(encoding, table)
    rows = labelled_inputs(encoding, trusted)[0] if trusted is not None else None
    task = encoding.task(training.train_config(encoding.recipe))
    tokens = config.bag_of_tokens and encoding.kind == "text"
    review, probs = review_task_labels(
        task, batch, len(encoding.classes), folds=config.folds, seed=training.seed, trusted=rows,
        bag_of_tokens=tokens, confidence=confidence,
    )
    return review, batch[LABELS].numpy(), probs, ["recipe", "bag_of_tokens"] if tokens else ["recipe"]


@dg.asset(partitions_def=dataset_versions, group_name="review", kinds={"labelstudio"})
def review_queue(
    context: dg.AssetExecutionContext,
    config: QueueConfig,
    label_review: pa.Table,
    catalog: DatasetCatalog,
    labelstudio: LabelStudioResource,
) -> dg.MaterializeResult:
    """The flagged examples' tasks go back to Label Studio for more answers: each task's overlap is
    raised (it re-enters the labeling stream) and the project's "review" tab lists them. The next
    `annotations` sync picks the answers up and consensus folds them in."""
    version = context.partition_key
    flagged = label_review.filter(label_review["flagged"]).sort_by("rank")
    sent = flagged.slice(0, config.max_tasks)
    client = labelstudio.client()
    try:
        project = client.ensure_project(project_spec(catalog, labelstudio, version))
        queue = request_review(
            client,
            project,
            sent["example_id"].to_pylist(),
            extra_answers=config.extra_answers,
            max_overlap=config.max_overlap,
        )
    except LabelingError as exc:
        raise dg.Failure(str(exc)) from exc
    if queue.missing:
        context.log.warning(f"{len(queue.missing)} flagged examples have no task in project {project.id}")
    return dg.MaterializeResult(
        metadata={
            "project_id": project.id,
            "review_view": dg.MetadataValue.url(
                f"{labelstudio.url}/projects/{project.id}/data?tab={queue.view_id}"
            ),
            "flagged": flagged.num_rows,
            "sent": len(queue.task_ids),
            "held_back": flagged.num_rows - sent.num_rows,
            "overlap_raised": queue.raised,
            "missing": len(queue.missing),
        }
    )
