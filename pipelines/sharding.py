"""The TRAK features of a trained run recomputed by shards of its training rows, fanned out.

Training is sequential over SGD steps; the per-example projected gradients at its checkpoints
are not. This job reads a dataset version's stored run (labeled data, encoding, and the
``trak_features`` bytes, which also hold the checkpoints), computes each shard's features in
its own step (``DynamicOut`` + ``map``; with the multiprocess executor each in its own process),
combines them (``collect``), stores the combined bytes pinned, and fails unless they equal the
stored features: byte for byte when the shard edges fall on ``chunk_rows`` multiples, else the
held-out targets' scores to float32 precision (see ``attribution/shards.py``).
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
import torch

from attribution import (
    AttributionError,
    AttributionTask,
    FeatureShard,
    InputEncoding,
    combine_shards,
    encode_split,
    features_from_bytes,
    features_to_bytes,
    shard_bounds,
    shard_features,
)
from pipelines.assets.training import TrainingConfig, split_targets
from pipelines.content_io import AssetIndex, StoreResource
from pipelines.lineage import LineageResource
from pipelines.resources import resources_for
from provenance import TRAINING, RunRecords, TrainingRecord
from storage import read_parquet

SHARD_IO = "shard_io_manager"
SCORE_RTOL = 1e-3  # of the largest |score|: float32 rounding is ~1e-6, a wrong row or kernel is ~1


class ShardingConfig(dg.Config):
    """``plan_shards``'s config: the dataset ``version`` whose stored run to recompute, in how many shards."""

    version: str
    n_shards: int = 2


@dataclass(frozen=True)
class ShardRun:
    """What every shard and the combine step share: the task, the checkpoints, the seed, the epochs the
    run trained (its kernel's damping: ``attribution.trak.stopping_ridge``)."""

    version: str
    task: AttributionTask
    checkpoints: list[dict[str, torch.Tensor]]
    seed: int
    stored_cid: str
    X_targets: np.ndarray
    y_targets: np.ndarray
    epochs: int | None = None


@dataclass(frozen=True)
class ShardRows:
    """One shard's training rows (features, labels, example ids); ``start`` is its first row's index."""

    start: int
    X: np.ndarray
    y: np.ndarray
    example_ids: list[str]


@dg.op(out={"run": dg.Out(io_manager_key=SHARD_IO), "shards": dg.DynamicOut(io_manager_key=SHARD_IO)})
def plan_shards(
    context: dg.OpExecutionContext,
    config: ShardingConfig,
    store: StoreResource,
    lineage: LineageResource,
):
    """The stored run's training rows (as ``trained_model`` ordered them), cut into shards."""
    version = config.version
    client = store.client()
    record = RunRecords(None, client).load(lineage.cid_of(TRAINING, version))  # names what it read and made
    labeled = read_parquet(client.get(record.inputs[TrainingRecord.LABELED_DATASET]))
    encoding = client.get(record.outputs[TrainingRecord.ENCODING])
    if "payload" in record.params:
        payload = record.params["payload"]
        raise dg.Failure(
            f"version {version} trained a {payload['recipe']} on {payload['kind']} payloads: "
            "sharded features are built for MLP runs only (this run's were made in training)"
        )
    stored_cid = record.outputs[TrainingRecord.FEATURES]
    blob = client.get(stored_cid)
    training = TrainingConfig(**record.params["config"])
    stored = features_from_bytes(blob)
    table: pa.Table = labeled.sort_by("example_id")
    ids = table["example_id"].to_pylist()
    is_target = split_targets(ids, training.target_fraction)
    try:
        split = encode_split(table, is_target, encoding=InputEncoding.from_json(encoding))
    except AttributionError as exc:
        raise dg.Failure(str(exc)) from exc
    X, y = split.X, split.y
    if stored.n_train != len(X):
        raise dg.Failure(
            f"stored features cover {stored.n_train} rows, the labeled data {len(X)}; rerun training"
        )
    task = AttributionTask(stored.spec, training.train_config())
    run = ShardRun(
        version=version,
        task=task,
        checkpoints=[ck.model.state_dict() for ck in stored.checkpoints],
        seed=int(record.params["seed"]),
        stored_cid=stored_cid,
        X_targets=split.X_targets,
        y_targets=split.y_targets,
        epochs=record.params.get("epochs_trained"),
    )
    try:
        aligned = shard_bounds(len(X), config.n_shards, align=task.config.chunk_rows)
        bounds = aligned if len(aligned) == config.n_shards else shard_bounds(len(X), config.n_shards)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    context.log.info(f"{version}: {len(X)} training rows in {len(bounds)} shards {bounds}")
    yield dg.Output(run, output_name="run")
    for a, b in bounds:
        rows = ShardRows(a, X[a:b], y[a:b], split.example_ids[a:b])
        yield dg.DynamicOutput(rows, mapping_key=f"rows_{a}_{b}", output_name="shards")


@dg.op(out=dg.Out(io_manager_key=SHARD_IO))
def compute_shard(run: ShardRun, rows: ShardRows) -> FeatureShard:
    """One shard's projected gradients at every checkpoint: the expensive, parallel part."""
    return shard_features(
        run.task, run.checkpoints, rows.X, rows.y, rows.example_ids, start=rows.start, seed=run.seed
    )


@dg.op(out=dg.Out(io_manager_key=SHARD_IO))
def combine_features(
    context: dg.OpExecutionContext,
    run: ShardRun,
    shards: list[FeatureShard],
    store: StoreResource,
    index: AssetIndex,
) -> str:
    """Combine in row order, store pinned, and refuse a result that differs from the stored run."""
    combined = combine_shards(run.task, run.checkpoints, shards, seed=run.seed, epochs=run.epochs)
    data = features_to_bytes(combined)
    client = store.client()
    cid = client.put_bytes(data, cid_version=1, pin=True)
    identical = cid == run.stored_cid
    ref = features_from_bytes(client.get(run.stored_cid)).scores(run.X_targets, run.y_targets)
    diff = float(np.abs(combined.scores(run.X_targets, run.y_targets) - ref).max() / np.abs(ref).max())
    if not identical and not diff <= SCORE_RTOL:
        raise dg.Failure(
            f"sharded features {cid} differ from the stored {run.stored_cid}: target scores off by "
            f"{diff:.2e} of the largest; the shards did not see the run's rows, checkpoints or config"
        )
    summary = {
        "cid": cid,
        "stored_cid": run.stored_cid,
        "n_shards": len(shards),
        "bytes_identical": identical,
        "max_score_diff": diff,
    }
    index.state_path("sharded_trak_features", run.version).write_text(json.dumps(summary))
    context.log.info(f"{run.version}: {len(shards)} shards combined to {cid} (identical bytes: {identical})")
    context.add_output_metadata({**summary, "rows": combined.n_train})
    return cid


@dg.graph(
    description="Recompute a run's TRAK features by shards of its training rows and check they combine "
    "to the stored ones (config: version, n_shards)."
)
def sharded_features():
    """``plan_shards`` fans out a ``compute_shard`` step per shard; ``combine_features`` joins them."""
    run, shards = plan_shards()
    combine_features(run, shards.map(lambda rows: compute_shard(run, rows)).collect())


def sharded_features_job_for(resources: Mapping[str, Any]) -> dg.JobDefinition:
    """The job bound to ``resources`` (store, index, lineage); shard values pass through files, so
    the multiprocess executor can run every shard in its own process."""
    used = {key: resources[key] for key in ("store", "index", "lineage")}
    used[SHARD_IO] = dg.FilesystemIOManager()
    return sharded_features.to_job(name="sharded_features", resource_defs=used)


sharded_features_job = sharded_features_job_for(resources_for())
