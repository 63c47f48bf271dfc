"""Training stage: the model trains on the consensus-labeled data while every example is scored.

Held-out targets are chosen by example id (a hash bucket), so the split depends on nothing
but the content and stays the same for every rerun an auditor makes.
"""

import hashlib
import json
import platform

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from attribution import (
    AttributionError,
    EncodedSplit,
    TrainConfig,
    TrainResult,
    encode_split,
    features_to_bytes,
    model_to_bytes,
    train_split,
)
from pipelines.content_io import AssetIndex, StoreResource, store_value
from pipelines.datasets import DatasetError
from pipelines.lineage import LineageResource, now, pipeline_code
from pipelines.partitions import dataset_versions
from pipelines.report import histogram_md
from pipelines.resources import DatasetCatalog
from provenance import CONSENSUS, SNAPSHOT, TRAINING, TrainingRecord


class TrainingConfig(dg.Config):
    """The run's recipe; the defaults suit a small tabular or image classification set."""

    hidden: list[int] = [64]
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 1e-4
    seed: int = 0
    target_fraction: float = 0.15
    trak_k: int = 256

    def train_config(self) -> TrainConfig:
        """The attribution room's settings for this recipe (the one mapping; sharding reuses it)."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            trak_k=self.trak_k,
        )


def split_targets(example_ids: list[str], fraction: float) -> np.ndarray:
    """True for held-out targets: the first 32 bits of the (sha256) example id fall below `fraction`."""
    if not 0.0 < fraction < 1.0:
        raise dg.Failure(f"target_fraction must be between 0 and 1, got {fraction}")
    buckets = np.array([int(e[:8], 16) for e in example_ids], dtype=np.float64) / 2**32
    return buckets < fraction


def run_id_of(labeled_cid: str, config: TrainingConfig) -> str:
    """The attribution run's id: labeled data, recipe and code, so new labels or code make a new run."""
    code = json.dumps(pipeline_code().to_json(), sort_keys=True)
    return hashlib.sha256(f"{labeled_cid}\n{config.model_dump_json()}\n{code}".encode()).hexdigest()[:16]


def train_labeled(
    labeled: pa.Table, config: TrainingConfig, *, run_id: str, validation: pa.Table | None = None
) -> tuple[EncodedSplit, TrainResult]:
    """Split, encode and train with attribution: the one recipe the asset runs and a replay reruns.

    Influence is measured against `validation` (trusted labels, never trained on) when the version
    declares one; otherwise against a hash split of the crowd-labeled rows (`split_targets`).
    """
    table = labeled.sort_by("example_id")
    if validation is None:
        mask = split_targets(table["example_id"].to_pylist(), config.target_fraction)
    else:
        mask = np.r_[np.zeros(table.num_rows, bool), np.ones(validation.num_rows, bool)]
        table = pa.concat_tables([table, validation], promote_options="permissive")
    split = encode_split(table, mask)
    return split, train_split(split, config.hidden, config.train_config(), seed=config.seed, run_id=run_id)


def training_platform() -> dict[str, str]:
    """What a bit-for-bit replay must match: the torch build, the CPU architecture and the device."""
    import torch

    return {"torch": torch.__version__, "machine": platform.machine(), "device": "cpu"}


# Replayed on another platform (torch build, CPU), float32 training may round differently: scores are
# then accepted within this fraction of the largest |score| (recorded with the run), and the basis
# points must still be identical.
SCORE_RTOL = 1e-4


# Each output asset is named as the training record names it (provenance.activities).
@dg.multi_asset(
    partitions_def=dataset_versions,
    group_name="training",
    outs={
        TrainingRecord.MODEL: dg.AssetOut(
            kinds={"pytorch", "ipfs"}, description="Model weights as deterministic safetensors bytes."
        ),
        TrainingRecord.ENCODING: dg.AssetOut(
            kinds={"json"}, description="How rows become model inputs (columns, scale, classes)."
        ),
        TrainingRecord.EXAMPLE_ATTRIBUTION: dg.AssetOut(
            kinds={"arrow"}, description="Per-example in-run scores measured during training."
        ),
        TrainingRecord.FEATURES: dg.AssetOut(
            kinds={"ipfs"}, description="Projected checkpoint gradients: attribute any new prediction."
        ),
    },
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    labeled_dataset: pa.Table,
    catalog: DatasetCatalog,
    store: StoreResource,
    index: AssetIndex,
    lineage: LineageResource,
):
    started, version = now(), context.partition_key
    client = store.client()
    data_cid = index.cid_of("labeled_dataset", version)
    inputs = {TrainingRecord.LABELED_DATASET: data_cid}
    try:
        validation = catalog.validation(version, labeled_dataset, client)
        if validation is not None:
            inputs[TrainingRecord.VALIDATION] = store_value(client, validation).cid
        split, result = train_labeled(
            labeled_dataset, config, run_id=run_id_of(data_cid, config), validation=validation
        )
    except (AttributionError, DatasetError) as exc:
        raise dg.Failure(str(exc)) from exc
    targets = "validation" if validation is not None else "crowd_hash_split"
    if validation is None:
        context.log.warning(
            "no validation set declared: influence is measured against a hash split of the crowd-labeled "
            "examples (declare one with `caravan ingest ... --validation FILE`)"
        )
    enc, n_train, n_targets = split.encoding, len(split.example_ids), len(split.target_ids)
    scores = result.example_attribution
    accuracy = _accuracy(result.model, split.X_targets, split.y_targets)
    context.log.info(f"run {result.run_id}: {n_train} examples, held-out accuracy {accuracy:.3f}")
    stored = {
        TrainingRecord.MODEL: store_value(client, model_to_bytes(result.model, result.task.spec)),
        TrainingRecord.ENCODING: store_value(client, enc.to_json()),
        TrainingRecord.EXAMPLE_ATTRIBUTION: store_value(client, scores),
        TrainingRecord.FEATURES: store_value(client, features_to_bytes(result.features)),
    }
    record = lineage.write(
        client,
        TRAINING,
        version,
        started=started,
        inputs=inputs,
        outputs={name: value.cid for name, value in stored.items()},
        parents=(lineage.cid_of(CONSENSUS, version), lineage.cid_of(SNAPSHOT, version)),
        params={
            "run_id": result.run_id,
            "seed": config.seed,
            "config": config.model_dump(),
            "heldout_accuracy": round(accuracy, 6),
            "targets": targets,
            "platform": training_platform(),
            "score_rtol": SCORE_RTOL,
        },
    )
    yield dg.Output(
        stored[TrainingRecord.MODEL],
        output_name=TrainingRecord.MODEL,
        metadata={
            "run_id": result.run_id,
            "record_cid": record,
            "train_examples": n_train,
            "targets": n_targets,
            "heldout_accuracy": float(accuracy),
            "measured_against": targets,
            "train_s": float(result.timings.get("train_s", 0.0)),
        },
    )
    yield dg.Output(
        stored[TrainingRecord.ENCODING],
        output_name=TrainingRecord.ENCODING,
        metadata={"features": enc.n_features, "classes": list(enc.classes)},
    )
    yield dg.Output(
        stored[TrainingRecord.FEATURES],
        output_name=TrainingRecord.FEATURES,
        metadata={"bytes": stored[TrainingRecord.FEATURES].size, "k": config.trak_k},
    )
    yield dg.Output(
        stored[TrainingRecord.EXAMPLE_ATTRIBUTION],
        output_name=TrainingRecord.EXAMPLE_ATTRIBUTION,
        metadata={
            "run_id": result.run_id,
            "dagster/row_count": scores.num_rows,
            "positive": int(pc.sum(pc.greater(scores["score"], 0)).as_py() or 0),
            "influence": dg.MetadataValue.md(
                histogram_md(scores["score"].to_numpy(), "in-run influence per example")
            ),
        },
    )


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        pred = model(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()
    return float((pred == y).mean())
