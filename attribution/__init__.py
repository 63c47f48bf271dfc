"""Training with per-step (in-run) attribution, checkpoint estimators, contributor weights.

Public face (other rooms use only these names):

- ``AttributionTask``, ``ModelSpec`` (an MLP by sizes) or ``ModuleSpec`` (any module of Linear/
  LayerNorm layers and elementwise activations), ``TrainConfig``: what to train and how.
- ``train_with_attribution(task, X, y, example_ids, X_targets, y_targets, seed=...)`` ->
  ``TrainResult`` (model, ``example_attribution`` table, checkpoint features).
- ``contributor_weights(example_attribution, examples, annotations, consensus, addresses)``
  -> ``contributor_weights`` table; ``ContributorSplit`` applies the same policy per query.
- ``attribute_query(result.features, x)`` -> per-training-example contributions to one
  prediction; ``ContributorSplit.split_query(example_ids, contributions)`` -> its fee split.
- ``model_to_bytes(model, spec)`` / ``model_from_bytes(data)``: deterministic safetensors bytes.
- ``features_to_bytes(result.features)`` / ``features_from_bytes(data)``: the TRAK features that
  answer ``attribute_query``, as deterministic safetensors bytes (serving loads them by CID).
- ``ExactInfluence`` (logistic regression) and ``TrakFeatures.self_influence`` rank likely
  mislabeled examples.
"""

from .encoding import InputEncoding
from .errors import (
    AttributionError,
    ContributorError,
    InputError,
    UnsupportedModelError,
    UnsupportedOptimizerError,
)
from .influence import ExactInfluence
from .serialize import features_from_bytes, features_to_bytes, model_from_bytes, model_to_bytes
from .task import AttributionTask, ModelSpec, ModuleSpec, TrainConfig
from .trainer import EXAMPLE_ATTRIBUTION_SCHEMA, TrainResult, train_plain, train_with_attribution
from .trak import TrakFeatures, attribute_query
from .weights import CONTRIBUTOR_WEIGHTS_SCHEMA, ContributorSplit, WeightPolicy, contributor_weights

__all__ = [
    "CONTRIBUTOR_WEIGHTS_SCHEMA",
    "EXAMPLE_ATTRIBUTION_SCHEMA",
    "AttributionError",
    "AttributionTask",
    "ContributorError",
    "ContributorSplit",
    "ExactInfluence",
    "InputEncoding",
    "InputError",
    "ModelSpec",
    "ModuleSpec",
    "TrainConfig",
    "TrainResult",
    "TrakFeatures",
    "UnsupportedModelError",
    "UnsupportedOptimizerError",
    "WeightPolicy",
    "attribute_query",
    "contributor_weights",
    "features_from_bytes",
    "features_to_bytes",
    "model_from_bytes",
    "model_to_bytes",
    "train_plain",
    "train_with_attribution",
]
