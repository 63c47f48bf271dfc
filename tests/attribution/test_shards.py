"""Sharded TRAK features combine into the unsharded ones: same bytes, same scores, any shard order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from attribution import (
    AttributionTask,
    ModelSpec,
    ShardMismatchError,
    TrainConfig,
    attribute_query,
    combine_shards,
    features_to_bytes,
    shard_bounds,
    shard_features,
    train_with_attribution,
)

from .conftest import blobs

SEED = 7


@pytest.fixture(scope="module")
def run():
    """A trained run whose kernel has several chunks (chunk_rows=16), so shards split chunks."""
    x, y = blobs(100, 5, 3, seed=0)
    xv, yv = blobs(6, 5, 3, seed=1)
    ids = [f"ex{i:04d}" for i in range(len(x))]
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.2, weight_decay=1e-3, n_checkpoints=2, trak_k=48,
                      chunk_rows=16, trak_kernel="fisher")  # the MLP recipe's kernel
    task = AttributionTask(ModelSpec((5, 8, 3), layer_norm=True), cfg)
    res = train_with_attribution(task, x, y, ids, xv, yv, seed=SEED)
    return task, res, x, y, ids, xv, yv


def _shards(task, res, x, y, ids, bounds, kernel=None, checkpoints=None):
    ckpts = checkpoints or res.checkpoints
    return [
        shard_features(task, ckpts, x[a:b], y[a:b], ids[a:b], start=a, seed=SEED, kernel=kernel)
        for a, b in bounds
    ]


@pytest.mark.parametrize(
    "bounds",
    [
        [(0, 100)],
        [(0, 48), (48, 100)],  # uneven
        [(0, 16), (16, 64), (64, 100)],  # uneven, the last chunk short
    ],
)
def test_chunk_aligned_shards_combine_to_the_unsharded_bytes_and_scores(run, bounds):
    task, res, x, y, ids, xv, yv = run
    combined = combine_shards(task, res.checkpoints, _shards(task, res, x, y, ids, bounds), seed=SEED)
    assert features_to_bytes(combined) == features_to_bytes(res.features)
    np.testing.assert_array_equal(combined.scores(xv, yv), res.features.scores(xv, yv))
    np.testing.assert_array_equal(attribute_query(combined, xv[0]), attribute_query(res.features, xv[0]))
    np.testing.assert_array_equal(combined.self_influence(), res.features.self_influence())


@pytest.mark.parametrize("bounds", [[(0, 37), (37, 100)], [(0, 5), (5, 64), (64, 100)]])
def test_shards_split_inside_chunks_give_the_scores_to_float32_precision(run, bounds):
    task, res, x, y, ids, xv, yv = run
    combined = combine_shards(task, res.checkpoints, _shards(task, res, x, y, ids, bounds), seed=SEED)
    ref = res.features.scores(xv, yv)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(combined.scores(xv, yv), ref, rtol=0, atol=1e-4 * scale)
    query = attribute_query(res.features, xv[0])
    tol = 1e-4 * np.abs(query).max()
    np.testing.assert_allclose(attribute_query(combined, xv[0]), query, rtol=0, atol=tol)
    assert np.argmax(combined.scores(xv, yv), 0).tolist() == np.argmax(ref, 0).tolist()


def test_shard_order_and_count_do_not_change_the_bytes(run, tmp_path):
    task, res, x, y, ids, xv, yv = run
    assert shard_bounds(len(x), 3, align=16) == [(0, 32), (32, 64), (64, 100)]
    assert shard_bounds(len(x), 3) == [(0, 33), (33, 66), (66, 100)]
    assert shard_bounds(40, 4, align=16) == [(0, 16), (16, 40)]  # fewer chunks than shards asked
    for bounds in (shard_bounds(len(x), 3, align=16), shard_bounds(len(x), 3)):
        shards = _shards(task, res, x, y, ids, bounds)
        a = combine_shards(task, res.checkpoints, shards, seed=SEED)
        b = combine_shards(task, res.checkpoints, shards[::-1], seed=SEED, directory=str(tmp_path))
        assert features_to_bytes(a) == features_to_bytes(b)


def test_empirical_kernel_combines_too(run):
    import torch

    from attribution.trak import build_features

    task, res, x, y, ids, xv, yv = run

    whole = build_features(task, res.checkpoints, torch.from_numpy(x), torch.from_numpy(y), seed=SEED,
                           kernel="empirical")
    shards = _shards(task, res, x, y, ids, [(0, 48), (48, 100)], kernel="empirical")
    combined = combine_shards(task, res.checkpoints, shards, seed=SEED, kernel="empirical")
    assert features_to_bytes(combined) == features_to_bytes(whole)


def test_shards_of_many_classes_draw_each_rows_fisher_labels_as_the_whole_build_does():
    """Beyond 16 classes the Fisher's labels are drawn, keyed by row (``fisher.fisher_uniforms``): shards on
    chunk edges give the unsharded bytes, and shards cut inside chunks its scores to float32 precision."""
    (x, y), (xv, yv) = blobs(100, 5, 20, seed=2), blobs(6, 5, 20, seed=3)
    ids = [f"ex{i:04d}" for i in range(len(x))]
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.2, n_checkpoints=2, trak_k=48, chunk_rows=16,
                      trak_kernel="fisher")
    task = AttributionTask(ModelSpec((5, 8, 20)), cfg)
    res = train_with_attribution(task, x, y, ids, xv, yv, seed=SEED)
    aligned = combine_shards(task, res.checkpoints, _shards(task, res, x, y, ids, [(0, 48), (48, 100)]),
                             seed=SEED)
    assert features_to_bytes(aligned) == features_to_bytes(res.features)
    inside = combine_shards(task, res.checkpoints, _shards(task, res, x, y, ids, [(0, 37), (37, 100)]),
                            seed=SEED)
    ref = res.features.scores(xv, yv)
    np.testing.assert_allclose(inside.scores(xv, yv), ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_mismatched_shards_raise_a_named_error(run):
    task, res, x, y, ids, xv, yv = run
    good = _shards(task, res, x, y, ids, [(0, 50), (50, 100)])
    other_k = AttributionTask(task.spec, dataclasses.replace(task.config, trak_k=40))
    with pytest.raises(ShardMismatchError, match="trak_k"):
        combine_shards(task, res.checkpoints, [good[0], _shards(other_k, res, x, y, ids, [(50, 100)])[0]],
                       seed=SEED)
    moved = [{k: v + 1e-3 for k, v in res.checkpoints[0].items()}, res.checkpoints[1]]
    stale = _shards(task, res, x, y, ids, [(50, 100)], checkpoints=moved)[0]
    with pytest.raises(ShardMismatchError, match="checkpoints"):
        combine_shards(task, res.checkpoints, [good[0], stale], seed=SEED)
    other_task = AttributionTask(ModelSpec((5, 8, 3)), task.config)
    with pytest.raises(ShardMismatchError, match="model spec"):
        combine_shards(other_task, res.checkpoints, good, seed=SEED)
    with pytest.raises(ShardMismatchError, match="seed"):
        combine_shards(task, res.checkpoints, good, seed=SEED + 1)
    with pytest.raises(ShardMismatchError, match="missing"):
        combine_shards(task, res.checkpoints, [good[1]], seed=SEED)
    with pytest.raises(ShardMismatchError, match="covered twice"):
        combine_shards(task, res.checkpoints, [good[0], good[0], good[1]], seed=SEED)
    with pytest.raises(ShardMismatchError, match="no shards"):
        combine_shards(task, res.checkpoints, [], seed=SEED)
