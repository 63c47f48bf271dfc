"""Small data and tasks for the attribution tests (seconds, not minutes)."""

from __future__ import annotations

import numpy as np
import pytest

from attribution.task import AttributionTask, ModelSpec, TrainConfig


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
