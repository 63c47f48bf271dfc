"""Trainer: named errors before training, determinism across thread counts, model bytes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from attribution import (
    InputError,
    TrainConfig,
    UnsupportedModelError,
    UnsupportedOptimizerError,
    contributor_weights,
    train_with_attribution,
)
from attribution.serialize import model_from_bytes, model_to_bytes
from attribution.task import scored_layers


def _bad(data, **change):
    x, y, ids, xv, yv = data
    args = {"X_train": x, "y_train": y, "example_ids": ids, "X_targets": xv, "y_targets": yv} | change
    return args


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: {"X_train": np.where(np.arange(d[0].size).reshape(d[0].shape) == 7, np.nan, d[0])}, "NaN"),
        (lambda d: {"X_targets": np.full_like(d[3], np.inf)}, "NaN or inf"),
        (lambda d: {"X_train": d[0][:0], "y_train": d[1][:0], "example_ids": []}, "non-empty"),
        (lambda d: {"y_train": np.zeros_like(d[1])}, "one class only"),
        (lambda d: {"y_train": np.where(d[1] == 2, 5, d[1])}, r"labels \[5\] outside"),
        (lambda d: {"example_ids": d[2][:-1]}, "example_ids for"),
        (lambda d: {"y_targets": d[4][:-1]}, "labels for"),
        (lambda d: {"X_targets": np.concatenate([d[3], d[0][:2]]),
                    "y_targets": np.concatenate([d[4], d[1][:2]])},
         "also appear in the training set"),
        (lambda d: {"X_train": d[0][:, :4]}, "4 feature columns"),
    ],
)
def test_bad_input_is_one_named_error(data, mlp_task, change, match):
    with pytest.raises(InputError, match=match):
        train_with_attribution(mlp_task, **_bad(data, **change(data)), seed=0)


def test_unsupported_layers_and_optimizers_are_refused():
    with pytest.raises(UnsupportedModelError, match="BatchNorm1d.*couples"):
        scored_layers(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    with pytest.raises(UnsupportedModelError, match="Conv1d"):
        scored_layers(nn.Sequential(nn.Conv1d(1, 1, 3)))
    with pytest.raises(UnsupportedModelError, match="MultiheadAttention"):
        scored_layers(nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 1)))
    with pytest.raises(UnsupportedOptimizerError, match="'adam'.*use 'sgd' or 'adamw'"):
        TrainConfig(optimizer="adam")


def _weights(result, providers):
    examples = pa.table({"example_id": result.example_ids, "provider": providers})
    addresses = {p: "0x" + f"{i + 1:040x}" for i, p in enumerate(sorted(set(providers)))}
    return contributor_weights(result.example_attribution, examples, None, None, addresses)


def test_same_inputs_same_scores_and_weights_with_1_or_2_threads(data, mlp_task):
    x, y, ids, xv, yv = data
    providers = [f"p{i % 7}" for i in range(len(ids))]
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            res = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=11, with_features=False)
            runs.append((res, _weights(res, providers)))
    finally:
        torch.set_num_threads(before)
    (a, wa), (b, wb) = runs
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-9 * np.abs(a.scores).max())
    assert wa.equals(wb)
    assert a.run_id == b.run_id
    assert a.example_attribution.schema.field("score").type == pa.float64()


def test_model_bytes_are_deterministic_and_round_trip(data, mlp_task):
    x, y, ids, xv, yv = data
    res = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=5, with_features=False)
    blob = model_to_bytes(res.model, mlp_task.spec)
    again = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=5, with_features=False)
    assert model_to_bytes(again.model, mlp_task.spec) == blob
    model, spec = model_from_bytes(blob)
    assert spec == mlp_task.spec
    xt = torch.as_tensor(xv)
    torch.testing.assert_close(model(xt), res.model.eval()(xt))
    assert model_to_bytes(model, spec) == blob


def test_per_target_scores_average_to_the_summed_score(data, mlp_task):
    x, y, ids, xv, yv = data
    cfg = dataclasses.replace(mlp_task.config, per_target=True)
    pt = train_with_attribution(dataclasses.replace(mlp_task, config=cfg), x, y, ids, xv, yv, seed=2,
                                with_features=False)
    summed = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=2, with_features=False)
    np.testing.assert_allclose(pt.per_target.mean(1), summed.scores, rtol=1e-4, atol=1e-7)


def test_linear_schedule_decays_to_near_zero_and_is_validated():
    cfg = TrainConfig(lr=0.4, lr_schedule="linear")
    assert [cfg.lr_at(s, 4) for s in range(4)] == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert TrainConfig(lr=0.4).lr_at(3, 4) == 0.4
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")


def test_step_generators_yield_once_per_step_and_return_the_run(data, mlp_task):
    from attribution.trainer import attributed_steps, plain_steps

    x, y, ids, xv, yv = data
    steps = mlp_task.config.epochs * -(-len(x) // mlp_task.config.batch_size)
    assert sum(1 for _ in plain_steps(mlp_task, x, y, seed=2)) == steps
    gen = attributed_steps(mlp_task, x, y, ids, xv, yv, seed=2, with_features=False)
    for _ in range(steps):
        next(gen)
    with pytest.raises(StopIteration) as done:
        next(gen)
    whole = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=2, with_features=False)
    np.testing.assert_array_equal(done.value.value.scores, whole.scores)
