"""Labeling: Label Studio client, task sync, annotation export (and an auditor's reconciliation of a
stored export with Label Studio), label aggregation, annotator quality, contributor identities,
simulated annotators and a webhook receiver.

A plain library (no Dagster); Arrow tables in and out (schemas in `labeling.schemas`).
"""

from labeling.aggregate import (
    DS_SMOOTHING,
    METHODS,
    MODEL_ANNOTATOR,
    MODEL_METHODS,
    Aggregation,
    ModelProbs,
    aggregate,
    annotator_quality,
    auto_smoothing,
    check_smoothing,
    crowdlab,
    dawid_skene,
    dawid_skene_model,
    majority_vote,
)
from labeling.client import LabelStudioClient, Project, RetryPolicy
from labeling.configs import (
    PROJECT_KINDS,
    ProjectSpec,
    check_show,
    choice_result,
    classification_config,
    config_choices,
    image_data_url,
    labeling_record,
)
from labeling.contributors import ContributorsRegistry
from labeling.errors import (
    ContributorsError,
    InvalidExamplesError,
    LabelConfigError,
    LabelingError,
    LabelStudioRequestError,
    LabelStudioUnavailable,
    MissingAddressError,
)
from labeling.export import (
    AnnotationExport,
    ExportCursor,
    LiveAnnotations,
    annotation_ids_by_task,
    existing_annotation_ids,
    export_annotations,
    live_annotations,
    merge_annotations,
)
from labeling.reconcile import Mismatch, Reconciliation, reconcile
from labeling.review import REVIEW_TAB, ReviewQueue, request_review, review_overlap
from labeling.schemas import ANNOTATIONS, ANNOTATOR_QUALITY, CONSENSUS, GOLD
from labeling.server import LabelStudioServer, labelstudio_token
from labeling.simulate import (
    SimulatedAnnotator,
    SimulatedAnswer,
    import_with_answers,
    register,
    simulate_answers,
    simulated_annotators,
    submit_answers,
)
from labeling.sync import SyncReport, shown_otherwise, sync_tasks, task_data
from labeling.webhook import WebhookReceiver

__all__ = [
    "ANNOTATIONS",
    "DS_SMOOTHING",
    "METHODS",
    "MODEL_ANNOTATOR",
    "MODEL_METHODS",
    "ANNOTATOR_QUALITY",
    "CONSENSUS",
    "GOLD",
    "Aggregation",
    "AnnotationExport",
    "ContributorsError",
    "ContributorsRegistry",
    "ExportCursor",
    "InvalidExamplesError",
    "LabelConfigError",
    "LabelStudioClient",
    "LabelStudioRequestError",
    "LabelStudioServer",
    "LabelStudioUnavailable",
    "LabelingError",
    "LiveAnnotations",
    "Mismatch",
    "MissingAddressError",
    "ModelProbs",
    "Project",
    "REVIEW_TAB",
    "ReviewQueue",
    "ProjectSpec",
    "Reconciliation",
    "RetryPolicy",
    "SimulatedAnnotator",
    "SimulatedAnswer",
    "SyncReport",
    "WebhookReceiver",
    "aggregate",
    "auto_smoothing",
    "annotator_quality",
    "PROJECT_KINDS",
    "check_show",
    "check_smoothing",
    "choice_result",
    "classification_config",
    "labeling_record",
    "config_choices",
    "crowdlab",
    "dawid_skene",
    "dawid_skene_model",
    "annotation_ids_by_task",
    "existing_annotation_ids",
    "export_annotations",
    "image_data_url",
    "import_with_answers",
    "labelstudio_token",
    "live_annotations",
    "majority_vote",
    "merge_annotations",
    "reconcile",
    "register",
    "request_review",
    "review_overlap",
    "shown_otherwise",
    "simulate_answers",
    "simulated_annotators",
    "submit_answers",
    "sync_tasks",
    "task_data",
]
