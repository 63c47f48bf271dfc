"""The record contract: each activity's name and the names of the inputs and outputs it records.

The pipeline (and serving, for settlement epochs) writes these records; serving and the auditor
read them. Every name a record carries is spelled here once, so renaming an output is a change
to this file alone. One class per activity lists its names; `INPUTS`/`OUTPUTS` are the names a
reader may require.
"""

from __future__ import annotations

INGEST = "ingest"
SNAPSHOT = "snapshot"
LABELING_EXPORT = "labeling_export"
CONSENSUS = "consensus"
TRAINING = "training"
WEIGHTING = "weighting"
SETTLEMENT = "settlement"
LABEL_REVIEW = "label_review"
ACTIVITIES = (INGEST, SNAPSHOT, LABELING_EXPORT, CONSENSUS, TRAINING, WEIGHTING, SETTLEMENT, LABEL_REVIEW)


class IngestRecord:
    """Raw source files (inputs `source_0`, `source_1`, ...) become the examples table."""

    SOURCE_PREFIX = "source_"
    EXAMPLES = "examples"
    EXAMPLE_CREDIT = "example_credit"  # who is paid per example: duplicates once, to the first registrant


class SnapshotRecord:
    """The examples table as the version's deterministic Parquet snapshot."""

    EXAMPLES = "examples"
    SNAPSHOT = "snapshot"


class LabelingExportRecord:
    """The labelers' answers exported from Label Studio for one snapshot."""

    SNAPSHOT = "snapshot"
    ANNOTATIONS = "annotations"


class ConsensusRecord:
    """Answers aggregated into one label per example, and each annotator's estimated quality."""

    ANNOTATIONS = "annotations"
    GOLD = "gold"
    LABEL_REVIEW = "label_review"  # a run's out-of-sample class probabilities, which CROWDLAB weighs
    CONSENSUS = "consensus"
    ANNOTATOR_QUALITY = "annotator_quality"


class TrainingRecord:
    """Training with per-step attribution: what serving loads and the auditor re-derives."""

    LABELED_DATASET = "labeled_dataset"
    VALIDATION = "validation"  # the declared trusted targets, when the dataset version has them
    # an hf-local run's starting model: the file table (storage.FileTable) of its config, weights and
    # tokenizer files, so serving and an auditor rebuild it from CIDs alone
    BASE_MODEL = "base_model"
    MODEL = "trained_model"
    ENCODING = "model_encoding"
    EXAMPLE_ATTRIBUTION = "example_attribution"
    FEATURES = "trak_features"
    OUTPUTS = (MODEL, ENCODING, EXAMPLE_ATTRIBUTION, FEATURES)
    # optional: each provider's value by retraining without it, and each labeler's where the run retrained
    # without its answers (`attribution.LEFT_OUT_SCHEMA`, a `role` column; absent: too many to retrain)
    LEFT_OUT_VALUE = "left_out_value"


class LabelReviewRecord:
    """Likely mislabels: the labeled data scored under the run's recipe (cross-fitted); parent: training."""

    LABELED_DATASET = "labeled_dataset"
    ENCODING = "model_encoding"
    # the training's validation set, when it has one: every fold's models train on it too
    VALIDATION = "validation"
    LABEL_REVIEW = "label_review"


class WeightingRecord:
    """A run's head: example scores and the tables that name contributors become the weights."""

    EXAMPLE_ATTRIBUTION = "example_attribution"
    EXAMPLES = "examples"
    ANNOTATIONS = "annotations"
    CONSENSUS = "consensus"
    EXAMPLE_CREDIT = "example_credit"  # optional: absent, each example pays its `provider` column
    # optional: absent, providers are paid by their summed scores and labelers as 'valued' pays them
    LEFT_OUT_VALUE = "left_out_value"
    INPUTS = (EXAMPLE_ATTRIBUTION, EXAMPLES, ANNOTATIONS, CONSENSUS)
    # what the split is computed from, in `ContributorSplit.build`'s order (credit may be absent)
    SPLIT_TABLES = (EXAMPLES, ANNOTATIONS, CONSENSUS, EXAMPLE_CREDIT)
    WEIGHTS = "contributor_weights"


class SettlementRecord:
    """A serving epoch: its receipts batch in, the (address, amount) payouts out; parent: the run's head."""

    RECEIPTS = "receipts"
    PAYOUTS = "payouts"
