"""Trainer: named errors before training, determinism across thread counts, model bytes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib

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


def test_a_masked_run_visits_the_kept_rows_in_the_full_runs_order():
    from attribution.trainer import batches

    keep = np.arange(11) % 3 != 1
    full = list(batches(11, 4, 2, seed=7))
    masked = list(batches(11, 4, 2, seed=7, keep=keep))
    assert [(e, i.tolist()) for e, i in batches(11, 4, 2, seed=7, keep=np.ones(11, bool))] == \
        [(e, i.tolist()) for e, i in full]
    for epoch in (0, 1):
        order = [int(i) for e, idx in full if e == epoch for i in idx]  # the full run's epoch
        seen = [int(i) for e, idx in masked if e == epoch for i in idx]
        assert seen == [i for i in order if keep[i]]
    assert [len(i) for _, i in masked] == [4, 3] * 2  # 7 kept rows per epoch, in batches of 4
    with pytest.raises(InputError, match="boolean mask over the 11"):
        next(batches(11, 4, 1, seed=7, keep=np.arange(11)))


def test_keyed_batches_order_any_set_of_rows_as_any_larger_set_does():
    from attribution.trainer import batches, row_keys

    ids = [f"ex-{i}" for i in range(40)]
    keys = row_keys(ids)
    assert keys.dtype == np.uint64 and row_keys(ids[:3]).tolist() == [
        int.from_bytes(hashlib.sha256(e.encode()).digest()[:8], "big") for e in ids[:3]]

    def order(rows, seed, epoch=0):  # one epoch of a run on `rows`, as example ids
        steps = batches(len(rows), 64, epoch + 1, seed, keys=row_keys(rows))
        return [rows[i] for e, idx in steps if e == epoch for i in idx.tolist()]

    some = ids[5:30:2]
    assert sorted(order(ids, 1)) == sorted(ids)
    assert order(some, 1) == [e for e in order(ids, 1) if e in some]  # a subset keeps the full order
    assert order(some[::-1], 1) == order(some, 1)  # whatever order the rows come in
    assert order(ids, 1) != order(ids, 2) and order(ids, 1, 0) != order(ids, 1, 1)  # each seed, epoch anew
    keep = np.isin(ids, some)
    masked = [ids[i] for _, idx in batches(40, 64, 1, 1, keep=keep, keys=keys) for i in idx.tolist()]
    assert masked == order(some, 1)
    with pytest.raises(InputError, match="one key per training row"):
        next(batches(40, 8, 1, 1, keys=keys[:3]))


def _one_step(salt: int | None = None, in_thread: bool = False, units: int = 1) -> list[torch.Tensor]:
    """A linear layer's weights after one SGD step and ``last_bits`` of ``units`` (inside
    ``nudged_steps(salt)`` unless None; ``last_bits`` called from another thread where ``in_thread``)."""
    import threading

    from attribution import nudged_steps
    from attribution.task import last_bits

    layer = nn.Linear(5, 3)
    with torch.no_grad():
        for i, p in enumerate(layer.parameters()):
            p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) + i)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.ones(4, 5)).square().sum().backward()
    opt.step()
    with nudged_steps(salt) if salt is not None else contextlib.nullcontext():
        if in_thread:
            worker = threading.Thread(target=last_bits, args=(list(layer.parameters()), 0, units))
            worker.start()
            worker.join()
        else:
            last_bits(layer.parameters(), 0, units)
    return [p.detach().clone() for p in layer.parameters()]


def test_nudged_steps_leave_every_weight_one_last_bit_off_and_leak_nowhere(data, mlp_task):
    """Replay's second retrain: after every optimizer step inside the block each weight is one unit in
    the last place up or down from where the step put it (the same ones for the same salt), as another
    platform's rounding would leave it; steps outside the block, or in another thread during it, and
    runs after it are bit for bit what they were."""
    from attribution import nudged_steps, train_model_plain
    from attribution.model_task import LABELS
    from attribution.recipes.image import IMAGE_CONFIG, ImagePolicy, image_cnn_task

    plain, nudged, again = _one_step(), _one_step(1), _one_step(1)
    for a, b, c in zip(plain, nudged, again, strict=True):
        up, down = torch.nextafter(a, torch.tensor(np.inf)), torch.nextafter(a, torch.tensor(-np.inf))
        assert ((b == up) | (b == down)).all() and (b == up).any() and (b == down).any()
        assert torch.equal(b, c)
    assert any(not torch.equal(b, c) for b, c in zip(nudged, _one_step(2), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(plain, _one_step(1, in_thread=True), strict=True))
    x, y, ids, xv, yv = data
    with nudged_steps(1):
        moved = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=0)
    run, same = (train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=0) for _ in range(2))
    assert run.scores.tobytes() != moved.scores.tobytes()
    assert run.scores.tobytes() == same.scores.tobytes()
    np.testing.assert_allclose(moved.scores, run.scores, atol=1e-2 * np.abs(run.scores).max())
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(32, 3, 8, 8, generator=g)
    batch = {"pixel_values": pixels, LABELS: torch.randint(0, 2, (32,), generator=g)}
    config = dataclasses.replace(IMAGE_CONFIG, epochs=1)
    task = image_cnn_task(ImagePolicy(height=8, width=8), 2, config=config)
    first = train_model_plain(task, batch, seed=0).state_dict()
    with nudged_steps(1):
        off = train_model_plain(task, batch, seed=0).state_dict()
    assert any(not torch.equal(first[k], off[k]) for k in first)
    after = train_model_plain(task, batch, seed=0).state_dict()
    assert all(torch.equal(first[k], after[k]) for k in first)


def test_under_adamw_a_nudge_moves_each_weight_more_units_the_same_way():
    """AdamW's runs part only where rounding flips a choice (its update does not follow the gradient's
    size), so replay nudges them harder: one unit under SGD (the MLP), ``ADAMW_NUDGE_UNITS`` under AdamW
    (the image, text and hub recipes), each weight moved that many of its own units in the last place
    (numpy's, the reference) the way one unit would have moved it, and nothing outside the block."""
    from attribution import HF_CONFIG, IMAGE_CONFIG, MLP_CONFIG, TEXT_CONFIG, nudge_units
    from attribution.task import ADAMW_NUDGE_UNITS

    assert nudge_units(MLP_CONFIG) == 1 < ADAMW_NUDGE_UNITS
    assert {nudge_units(c) for c in (IMAGE_CONFIG, TEXT_CONFIG, HF_CONFIG)} == {ADAMW_NUDGE_UNITS}
    plain, one, more = _one_step(), _one_step(1), _one_step(1, units=ADAMW_NUDGE_UNITS)
    for a, b, c in zip(plain, one, more, strict=True):
        x = a.numpy()
        up, down = (torch.from_numpy((x + (np.nextafter(x, np.float32(way)) - x) * ADAMW_NUDGE_UNITS)
                                     .astype(np.float32)) for way in (np.inf, -np.inf))
        assert torch.equal(torch.where(b > a, up, down), c)
    assert all(torch.equal(a, b) for a, b in zip(plain, _one_step(units=ADAMW_NUDGE_UNITS), strict=True))
