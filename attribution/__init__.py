"""Training with per-step (in-run) attribution, checkpoint estimators, contributor weights.

Public face (other rooms use only these names):

- ``AttributionTask``, ``ModelSpec`` (an MLP by sizes) or ``ModuleSpec`` (any module of Linear/
  LayerNorm layers and elementwise activations), ``TrainConfig``: what to train and how.
- ``train_with_attribution(task, X, y, example_ids, X_targets, y_targets, seed=...)`` ->
  ``TrainResult`` (model, ``example_attribution`` table, checkpoint features).
- ``ModelTask(name, build, config, loss, recipe)``: any ``nn.Module`` (transformers, conv nets, a
  Hugging Face model), its batches as dicts of tensors, its per-example loss
  (``classification_loss`` by default); ``train_model(task, train, example_ids, targets, seed=)`` ->
  ``TrainResult``, trained with SGD or AdamW and scored through the optimizer's own update, one
  kernel per layer type (``attribution.kernels``); ``train_model_plain`` is the same training
  without attribution; ``train_trak_valued`` trains plainly, keeps the checkpoints and scores each
  example by its TRAK value there (``valued_by_trak``: what pay reads; no per-step scores computed).
- ``encode_split(labeled_table, is_target)`` -> ``EncodedSplit`` (the ``InputEncoding`` fitted on
  the training rows: numbers, number lists and categories of at most ``MAX_CATEGORIES`` values, a
  missing number the training mean; X, y, ids of training rows and of targets); ``train_split(split, hidden,
  config, seed=...)`` trains an MLP on it with attribution.
- ``contributor_weights(example_attribution, examples, annotations, consensus, addresses)``
  -> ``contributor_weights`` table (its schema, roles and ``TOTAL_BPS`` live in ``schemas``, the
  ground floor it shares with ``provenance``); ``ContributorSplit`` applies the same policy per query.
  Both take ``credit=`` (the ``example_credit`` table, ``schemas.CREDIT_SCHEMA``, made at ingest):
  duplicates paid once, to their first registrant(s); without it each example pays its ``provider``.
- ``provider_groups(example_ids, providers, credit)``, ``distinct_rows(example_ids, credit)`` and
  ``mlp_left_out`` / ``model_left_out`` -> the ``LEFT_OUT_SCHEMA`` table: each provider's value as the
  target-loss rise when the run's recipe retrains without the examples it is paid for, its copies
  beyond one per duplicate group counted only where they hurt (``LEFT_OUT_RUNS`` seeds, the rest
  relabeled by their own answers; ``left_out_values`` drives any training function);
  ``contributor_weights(..., left_out=table)`` pays providers by it (``WeightPolicy.providers``),
  each value shrunk toward what its examples' scores predict by its seeds' noise; with ``labelers=``
  (each labeler's relabeling of every row) the table has a ``labeler`` row each, what retraining on the
  consensus without its answers did, which ``WeightPolicy(labelers='left_out')`` pays by;
  ``value_noise(a, b)`` is how far rounding moves one retrain's value, from two retrains of the same run
  (replay's band).
- ``nudged_steps(salt)``: every training step inside leaves each weight a last bit off
  (``nudge_units(config)`` units: one under SGD, 256 under AdamW), so replay's second retrain measures
  how far training carries another platform's rounding.
- ``attribute_query(result.features, x)`` -> per-training-example contributions to one
  prediction; ``ContributorSplit.split_query(example_ids, contributions)`` -> its fee split.
- ``model_to_bytes(model, spec)`` / ``model_from_bytes(data)``: deterministic safetensors bytes.
- ``features_to_bytes(result.features)`` / ``features_from_bytes(data)``: the TRAK features that
  answer ``attribute_query``, as deterministic safetensors bytes (serving loads them by CID).
- ``shard_features(task, checkpoints, X_shard, y_shard, ids_shard, start=, seed=)`` per shard of
  the training rows, then ``combine_shards(task, checkpoints, shards, seed=)`` -> the same
  ``TrakFeatures`` (same bytes) as the unsharded run; ``shard_bounds(n, n_shards)`` cuts the rows.
- Text and image payloads: ``encode_payload_split(labeled_table, is_target, kind=, column=, config=)``
  -> ``PayloadSplit`` (its ``PayloadEncoding``: tokenizer and maximum length, or image policy, fitted on
  the training rows; the recipe's ``ModelTask``; batches), then ``train_model``; ``model_features``
  gives its TRAK features. ``payload_encoding_to_json`` / ``_from_json``, ``task_model_to_bytes`` /
  ``_from_bytes`` and ``model_features_to_bytes`` / ``_from_bytes`` store them by CID. With ``local=``
  a ``LocalModel`` (a Hugging Face directory and the CIDs of its stored files and ``tokenizer.json``),
  a text split is encoded by that model's own tokenizer (``HfTextEncoding``, whose stored document
  names those CIDs; ``.at(LocalModel)`` points a loaded one at the fetched files) and trains it.
  ``model_logits(model, batch)``: logits of a plain module or of a Hugging Face ModelOutput.
- ``review_labels(task, X, y, folds=, seed=, forest=True, trusted=None, confidence=None)`` ->
  (``LabelReview``, out-of-sample probabilities): the pipeline's mislabel detector on tabular
  features (the recipe's cross-fitted probabilities mixed with a forest's (extra trees), ``forest_probs``,
  by ``mixture_weight``, the recipe trained for the length whose mixture fits the labels best,
  ``fitted_length``, and averaged over ``RECIPE_SEEDS`` model seeds, scored by cleanlab's confident
  learning; ``trusted`` = (X, y) of a validation set every fold trains on too); ``review_task_labels``
  is the same for any ``ModelTask`` (``bag_of_tokens=True``: a text recipe mixed with ``token_probs``);
  ``confidence`` = the crowd consensus's confidence in each label, weighed in by ``with_votes`` (Bayes'
  rule, model and crowd); ``label_quality(labels, pred_probs, confidence=)`` is their pure scoring part
  (a stored review's flags, quality and ranks follow from its probabilities alone). ``ExactInfluence``
  (logistic regression) and ``TrakFeatures.self_influence`` rank likely mislabeled examples too,
  less well (bench/attribution_lds.py).

Recipes (``attribution.recipes.text``, ``.image``, ``.hf``, ``.mlp``) give ready ``ModelTask``s: a
BPE tokenizer and small transformer, an image policy and small CNN, a local Hugging Face
classifier; each submodule loads tokenizers, Pillow or transformers only when called. Each names its
default training (``MLP_CONFIG``, ``TEXT_CONFIG``, ``IMAGE_CONFIG``, ``HF_CONFIG``), the one the pipeline
trains with unless a run says otherwise.

Training (``attribution.task``, ``attribution.trainer``, ``attribution.trak``) needs torch and numpy
only; ``TrainConfig(device="auto" | "cpu" | "cuda")`` picks where it runs. The table, bytes and
weighting names above load pyarrow, safetensors, scipy or eth_utils on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AttributionError,
    ContributorError,
    DeviceUnavailableError,
    InputError,
    UnsupportedModelError,
    UnsupportedOptimizerError,
)
from .influence import ExactInfluence
from .inrun import train_model, train_model_plain
from .mislabels import (
    QUALITY_METHOD,
    RECIPE_SEEDS,
    LabelReview,
    fitted_length,
    forest_probs,
    label_quality,
    mixture_weight,
    out_of_sample_probs,
    review_labels,
    review_task_labels,
    token_probs,
    with_votes,
)
from .model_task import LABELS, ModelTask, classification_loss, model_logits
from .shards import FeatureShard, ShardMismatchError, combine_shards, shard_bounds, shard_features
from .task import AttributionTask, ModelSpec, ModuleSpec, TrainConfig, nudge_units, nudged_steps
from .trainer import TrainResult, checkpoint_features, train_plain, train_split, train_with_attribution
from .trak import TrakFeatures, attribute_query
from .trak_model import (
    TRAK_VALUE_METHOD,
    ModelTrakFeatures,
    mlp_valued_by_trak,
    model_features,
    train_trak_valued,
    valued_by_trak,
)

if TYPE_CHECKING:
    from .encoding import MAX_CATEGORIES, EncodedSplit, InputEncoding, encode_split
    from .left_out import (
        LEFT_OUT_RUNS,
        LEFT_OUT_SCHEMA,
        NOISE_Z,
        distinct_rows,
        left_out_values,
        mlp_left_out,
        model_left_out,
        provider_groups,
        value_noise,
        values_within_noise,
    )
    from .payloads import (
        HfTextEncoding,
        ImageEncoding,
        LocalModel,
        PayloadEncoding,
        PayloadSplit,
        RecipeSizes,
        TextEncoding,
        encode_payload_split,
        encoding_from_json,
        labelled_inputs,
        payload_encoding_from_json,
        payload_encoding_to_json,
    )
    from .recipes.hf import HF_CONFIG, HF_TOKENIZER_FILE
    from .recipes.image import IMAGE_CONFIG, eight_bit
    from .recipes.mlp import MLP_CONFIG
    from .recipes.text import TEXT_CONFIG
    from .serialize import (
        checkpoints_of_features,
        features_from_bytes,
        features_to_bytes,
        model_features_from_bytes,
        model_features_to_bytes,
        model_from_bytes,
        model_to_bytes,
        safetensors_metadata,
        task_model_from_bytes,
        task_model_to_bytes,
        tensor_gaps,
        tensors_digest,
    )
    from .trainer import EXAMPLE_ATTRIBUTION_SCHEMA
    from .weights import ContributorSplit, WeightPolicy, contributor_weights, largest_remainder

# Names whose modules need more than torch and numpy (pyarrow, safetensors, scipy, eth_utils):
# they load on first use, so training imports on a machine that has torch and numpy alone.
_LAZY = {
    "EXAMPLE_ATTRIBUTION_SCHEMA": "attribution.trainer",
    "EncodedSplit": "attribution.encoding",
    "InputEncoding": "attribution.encoding",
    "MAX_CATEGORIES": "attribution.encoding",
    "encode_split": "attribution.encoding",
    "features_from_bytes": "attribution.serialize",
    "features_to_bytes": "attribution.serialize",
    "model_from_bytes": "attribution.serialize",
    "model_to_bytes": "attribution.serialize",
    "model_features_from_bytes": "attribution.serialize",
    "model_features_to_bytes": "attribution.serialize",
    "task_model_from_bytes": "attribution.serialize",
    "task_model_to_bytes": "attribution.serialize",
    "safetensors_metadata": "attribution.serialize",
    "tensors_digest": "attribution.serialize",
    "tensor_gaps": "attribution.serialize",
    "checkpoints_of_features": "attribution.serialize",
    "ImageEncoding": "attribution.payloads",
    "HfTextEncoding": "attribution.payloads",
    "HF_TOKENIZER_FILE": "attribution.recipes.hf",
    "eight_bit": "attribution.recipes.image",
    "HF_CONFIG": "attribution.recipes.hf",
    "IMAGE_CONFIG": "attribution.recipes.image",
    "MLP_CONFIG": "attribution.recipes.mlp",
    "TEXT_CONFIG": "attribution.recipes.text",
    "LocalModel": "attribution.payloads",
    "PayloadEncoding": "attribution.payloads",
    "TextEncoding": "attribution.payloads",
    "PayloadSplit": "attribution.payloads",
    "RecipeSizes": "attribution.payloads",
    "encode_payload_split": "attribution.payloads",
    "labelled_inputs": "attribution.payloads",
    "encoding_from_json": "attribution.payloads",
    "payload_encoding_from_json": "attribution.payloads",
    "payload_encoding_to_json": "attribution.payloads",
    "LEFT_OUT_RUNS": "attribution.left_out",
    "LEFT_OUT_SCHEMA": "attribution.left_out",
    "NOISE_Z": "attribution.left_out",
    "distinct_rows": "attribution.left_out",
    "left_out_values": "attribution.left_out",
    "mlp_left_out": "attribution.left_out",
    "model_left_out": "attribution.left_out",
    "provider_groups": "attribution.left_out",
    "value_noise": "attribution.left_out",
    "values_within_noise": "attribution.left_out",
    "ContributorSplit": "attribution.weights",
    "WeightPolicy": "attribution.weights",
    "contributor_weights": "attribution.weights",
    "largest_remainder": "attribution.weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attribution' has no attribute {name!r}")


__all__ = [
    "LEFT_OUT_RUNS",
    "LEFT_OUT_SCHEMA",
    "NOISE_Z",
    "distinct_rows",
    "left_out_values",
    "mlp_left_out",
    "model_left_out",
    "provider_groups",
    "value_noise",
    "values_within_noise",
    "LABELS",
    "HF_TOKENIZER_FILE",
    "eight_bit",
    "HF_CONFIG",
    "IMAGE_CONFIG",
    "MLP_CONFIG",
    "TEXT_CONFIG",
    "HfTextEncoding",
    "ImageEncoding",
    "LocalModel",
    "ModelTrakFeatures",
    "TRAK_VALUE_METHOD",
    "PayloadEncoding",
    "TextEncoding",
    "PayloadSplit",
    "RecipeSizes",
    "encode_payload_split",
    "encoding_from_json",
    "review_task_labels",
    "with_votes",
    "labelled_inputs",
    "model_features",
    "valued_by_trak",
    "mlp_valued_by_trak",
    "train_trak_valued",
    "model_features_from_bytes",
    "model_features_to_bytes",
    "payload_encoding_from_json",
    "payload_encoding_to_json",
    "task_model_from_bytes",
    "safetensors_metadata",
    "tensors_digest",
    "tensor_gaps",
    "checkpoints_of_features",
    "task_model_to_bytes",
    "EXAMPLE_ATTRIBUTION_SCHEMA",
    "AttributionError",
    "AttributionTask",
    "ContributorError",
    "ContributorSplit",
    "DeviceUnavailableError",
    "EncodedSplit",
    "ExactInfluence",
    "FeatureShard",
    "InputEncoding",
    "MAX_CATEGORIES",
    "InputError",
    "LabelReview",
    "QUALITY_METHOD",
    "RECIPE_SEEDS",
    "ModelSpec",
    "ModelTask",
    "ModuleSpec",
    "ShardMismatchError",
    "TrainConfig",
    "TrainResult",
    "TrakFeatures",
    "UnsupportedModelError",
    "UnsupportedOptimizerError",
    "WeightPolicy",
    "attribute_query",
    "classification_loss",
    "model_logits",
    "combine_shards",
    "contributor_weights",
    "label_quality",
    "largest_remainder",
    "forest_probs",
    "fitted_length",
    "mixture_weight",
    "nudge_units",
    "nudged_steps",
    "out_of_sample_probs",
    "review_labels",
    "token_probs",
    "encode_split",
    "features_from_bytes",
    "features_to_bytes",
    "model_from_bytes",
    "model_to_bytes",
    "shard_bounds",
    "shard_features",
    "train_model",
    "train_model_plain",
    "train_plain",
    "train_split",
    "checkpoint_features",
    "train_with_attribution",
]
