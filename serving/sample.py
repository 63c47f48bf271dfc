"""A small real attribution run to serve, published on chain: trained with attribution, stored, recorded.

Synthetic rows (6 features, 3 classes, 4 providers, 3 labelers with a few wrong votes), for the
serving tests, `bench/serving_load.py` and demos: the real pipeline's outputs at a toy size.
Follows the pipeline's record contract (notes/records.md): a training record with
`trained_model`, `model_encoding`, `example_attribution`, `trak_features`, and a weighting head
with inputs `example_attribution`, `examples`, `annotations`, `consensus` and output
`contributor_weights`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from eth_account import Account

from attribution import (
    AttributionTask,
    ModelSpec,
    TrainConfig,
    contributor_weights,
    features_to_bytes,
    model_to_bytes,
    train_with_attribution,
)
from attribution.encoding import InputEncoding
from provenance import Chain, CodeVersion, Record, publish_run, put_record, store_weights, utc_time
from storage import ContentStore, snapshot_parquet

CODE = CodeVersion("caravan", "0.1.0", "0" * 40)
N_FEATURES = 6
CLASSES = ("a", "b", "c")


@dataclass(frozen=True)
class SampleRun:
    run_id: str
    head_cid: str
    addresses: dict[str, str]  # contributor -> address
    keys: dict[str, str]  # address -> private key (test keys only)
    X_test: np.ndarray  # raw rows to send to the server


def _put_table(store: ContentStore, table: pa.Table, sort_by: str) -> str:
    return store.put_bytes(snapshot_parquet(table, sort_by=sort_by), cid_version=1, pin=True)


def build_sample_run(store: ContentStore, chain: Chain, *, n: int = 160, seed: int = 3) -> SampleRun:
    """Train, store and record an n-example run, publish it on ``chain``; its test keys are throwaway."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, size=(len(CLASSES), N_FEATURES))
    y = rng.integers(0, len(CLASSES), size=n)
    X = centers[y] + rng.normal(0, 1.0, size=(n, N_FEATURES))
    providers = [f"provider-{i}" for i in range(4)]
    labelers = [f"labeler-{i}" for i in range(3)]
    accounts = {
        c: Account.from_key(hashlib.sha256(f"{seed}:{c}".encode()).digest()) for c in providers + labelers
    }
    ids = [hashlib.sha256(row.tobytes()).hexdigest() for row in X]
    examples = pa.table(
        {
            "example_id": ids,
            "provider": [providers[i % len(providers)] for i in range(n)],
            **{f"f{j}": X[:, j] for j in range(N_FEATURES)},
            "source": ["synthetic.csv"] * n,
        }
    )
    labels = [CLASSES[v] for v in y]
    ann = {
        "annotation_id": [],
        "example_id": [],
        "annotator": [],
        "label": [],
        "created_at": [],
        "updated_at": [],
        "lead_time_s": [],
    }
    for i, e in enumerate(ids):
        for k, who in enumerate(labelers):
            wrong = (i + k) % 7 == 0
            ann["annotation_id"].append(f"{e[:12]}-{k}")
            ann["example_id"].append(e)
            ann["annotator"].append(who)
            ann["label"].append(CLASSES[(y[i] + 1) % 3] if wrong else labels[i])
            ann["created_at"].append("2026-01-01T00:00:00Z")
            ann["updated_at"].append("2026-01-01T00:00:00Z")
            ann["lead_time_s"].append(3.0)
    annotations = pa.table(ann)
    consensus = pa.table({"example_id": ids, "label": labels, "confidence": [0.9] * n, "n_votes": [3] * n})

    table = examples.append_column("label", pa.array(labels)).sort_by("example_id")
    is_target = np.arange(n) % 8 == 0
    train, targets = table.filter(pa.array(~is_target)), table.filter(pa.array(is_target))
    enc = InputEncoding.fit(train, train["label"].to_pylist())
    task = AttributionTask(
        ModelSpec((enc.n_features, 16, len(enc.classes))),
        TrainConfig(epochs=8, batch_size=16, lr=0.1, trak_k=32, n_checkpoints=2),
    )
    result = train_with_attribution(
        task,
        enc.transform(train),
        enc.label_indices(train["label"].to_pylist()),
        train["example_id"].to_pylist(),
        enc.transform(targets),
        enc.label_indices(targets["label"].to_pylist()),
        seed=seed,
    )
    addresses = {c: a.address for c, a in accounts.items()}
    weights = contributor_weights(result.example_attribution, examples, annotations, consensus, addresses)

    t = utc_time(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    training = put_record(
        store,
        Record(
            activity="training",
            agent="tests",
            started_at=t,
            ended_at=t,
            code=CODE,
            inputs={"labeled_dataset": _put_table(store, train, "example_id")},
            outputs={
                "trained_model": store.put_bytes(model_to_bytes(result.model, task.spec), cid_version=1),
                "model_encoding": store.put_bytes(enc.to_json(), cid_version=1),
                "example_attribution": _put_table(store, result.example_attribution, "example_id"),
                "trak_features": store.put_bytes(features_to_bytes(result.features), cid_version=1),
            },
            params={"run_id": result.run_id, "seed": seed, "config": {}},
        ),
    )
    head = put_record(
        store,
        Record(
            activity="weighting",
            agent="tests",
            started_at=t,
            ended_at=t,
            code=CODE,
            inputs={
                "example_attribution": _put_table(store, result.example_attribution, "example_id"),
                "examples": _put_table(store, examples, "example_id"),
                "annotations": _put_table(store, annotations, "annotation_id"),
                "consensus": _put_table(store, consensus, "example_id"),
            },
            outputs={"contributor_weights": store_weights(store, weights)},
            parents=(training,),
            params={"run_id": result.run_id, "policy": {"provider_share_bps": 7000}},
        ),
    )
    publish_run(chain, store, result.run_id, head)
    X_test = centers[rng.integers(0, len(CLASSES), size=64)] + rng.normal(0, 1.0, size=(64, N_FEATURES))
    return SampleRun(
        result.run_id, head, addresses, {a.address: a.key.hex() for a in accounts.values()}, X_test
    )
