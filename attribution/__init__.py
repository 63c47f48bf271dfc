"""Training with per-step (in-run) attribution, checkpoint estimators, contributor weights.

Public face (other rooms use only these names):

- ``AttributionTask``, ``ModelSpec``, ``TrainConfig``: what to train and how.
- ``train_with_attribution(task, X, y, example_ids, X_targets, y_targets, seed=...)`` ->
  ``TrainResult`` (model, ``example_attribution`` table, checkpoint features).
- ``contributor_weights(example_attribution, examples, annotations, consensus, addresses)``
  -> ``contributor_weights`` table; ``ContributorSplit`` applies the same policy per query.
"""

from .errors import (
    AttributionError,
    ContributorError,
    InputError,
    UnsupportedModelError,
    UnsupportedOptimizerError,
)
from .task import AttributionTask, ModelSpec, TrainConfig
from .trainer import EXAMPLE_ATTRIBUTION_SCHEMA, TrainResult, train_plain, train_with_attribution
from .weights import CONTRIBUTOR_WEIGHTS_SCHEMA, ContributorSplit, WeightPolicy, contributor_weights

__all__ = [
    "CONTRIBUTOR_WEIGHTS_SCHEMA",
    "EXAMPLE_ATTRIBUTION_SCHEMA",
    "AttributionError",
    "AttributionTask",
    "ContributorError",
    "ContributorSplit",
    "InputError",
    "ModelSpec",
    "TrainConfig",
    "TrainResult",
    "UnsupportedModelError",
    "UnsupportedOptimizerError",
    "WeightPolicy",
    "contributor_weights",
    "train_plain",
    "train_with_attribution",
]
