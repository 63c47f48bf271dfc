"""Small data and tasks for the attribution tests (seconds, not minutes)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from attribution.task import AttributionTask, ModelSpec, TrainConfig

ADDR = {f"c{i}": "0x" + f"{i + 1:040x}" for i in range(12)}  # contributor c<i>'s address


def blobs(n: int, d: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, size=(c, d))
    y = rng.integers(0, c, size=n)
    x = centers[y] + rng.normal(0, 1.0, size=(n, d))
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture
def data():
    x, y = blobs(120, 5, 3, seed=0)
    xv, yv = blobs(9, 5, 3, seed=1)
    ids = [f"ex{i:04d}" for i in range(len(x))]
    return x, y, ids, xv, yv


@pytest.fixture
def mlp_task():
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.2, weight_decay=1e-3, n_checkpoints=2, trak_k=64,
                      lr_schedule="linear")
    return AttributionTask(ModelSpec((5, 8, 6, 3), layer_norm=True), cfg)


def pay_tables(scores, providers, votes):
    """The four tables contributor_weights reads (scores, examples, answers, consensus) for examples
    e000.. with these scores and providers, and ``votes`` as (example index, annotator, label)."""
    n = len(scores)
    ids = [f"e{i:03d}" for i in range(n)]
    attribution = pa.table({"example_id": ids, "score": np.asarray(scores, dtype=np.float64),
                            "method": ["inrun_sgd"] * n, "run_id": ["r"] * n})
    examples = pa.table({"example_id": ids, "provider": providers})
    ann_rows = [(ids[e], who, lab) for e, who, lab in votes]
    annotations = pa.table({"annotation_id": [str(i) for i in range(len(ann_rows))],
                            "example_id": [r[0] for r in ann_rows], "annotator": [r[1] for r in ann_rows],
                            "label": [r[2] for r in ann_rows]})
    consensus = pa.table({"example_id": ids, "label": ["a"] * n, "confidence": [0.9] * n, "n_votes": [2] * n})
    return attribution, examples, annotations, consensus


def credit_table(rows):
    """A credit table from (example_id, provider, share) rows."""
    return pa.table({"example_id": [r[0] for r in rows], "provider": [r[1] for r in rows],
                     "share": [float(r[2]) for r in rows]})
