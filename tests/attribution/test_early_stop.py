"""Early stopping (``TrainConfig.patience``): a run is the same training, written out here epoch by
epoch, taken to its best epoch on the targets; for ``ModelTask`` recipes and for the MLP driver."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attribution import (
    AttributionTask,
    ModelSpec,
    TrainConfig,
    mlp_left_out,
    mlp_valued_by_trak,
    model_left_out,
    train_model,
    train_trak_valued,
    train_with_attribution,
)
from attribution.errors import InputError
from attribution.inrun import plain_model_steps
from attribution.recipes.mlp import mlp_task
from attribution.trainer import EarlyStop, plain_steps, run_id_for, train_plain

SPEC = ModelSpec((5, 64, 3))
# AdamW at a rate that memorizes the flipped labels: the target loss falls for a few epochs, then rises
FIXED = TrainConfig(epochs=15, batch_size=10, lr=1e-2, optimizer="adamw", weight_decay=0.0, n_checkpoints=2,
                    trak_k=16)
PATIENCE = 2
N, STEPS_PER_EPOCH = 60, 6  # batches of 10


def _blobs(n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 5)) + np.eye(3, 5)[y] * 1.5
    return {"features": torch.tensor(x, dtype=torch.float32), "labels": torch.tensor(y)}


def _world():
    rng = np.random.default_rng(0)
    train, targets = _blobs(N, rng), _blobs(30, rng)
    flip = rng.random(N) < 0.3
    train["labels"][torch.tensor(flip)] = torch.tensor(rng.integers(0, 3, int(flip.sum())))
    return train, [f"e{i}" for i in range(N)], targets


def _task(**changes) -> object:
    return mlp_task(SPEC, dataclasses.replace(FIXED, **changes))


def _curve(train, targets, seed: int, keep: np.ndarray | None = None):
    """Every epoch's target loss (cross-entropy computed here) and state, training the fixed epochs
    (on the rows ``keep`` marks)."""
    losses, states = [], []
    per_epoch = -(-(N if keep is None else int(keep.sum())) // FIXED.batch_size)
    for step, model in enumerate(plain_model_steps(_task(), train, seed=seed, keep=keep)):
        if (step + 1) % per_epoch == 0:
            with torch.no_grad():
                losses.append(float(F.cross_entropy(model(targets["features"]), targets["labels"])))
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    return losses, states


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_plain_training_stops_patience_epochs_after_its_best_and_keeps_the_best():
    train, _, targets = _world()
    losses, states = _curve(train, targets, seed=1)
    best = int(np.argmin(losses))
    assert 0 < best < FIXED.epochs - PATIENCE - 1  # the world rises after a dip: stopping saves epochs
    models = list(plain_model_steps(_task(patience=PATIENCE), train, seed=1, targets=targets))
    assert len(models) == (best + PATIENCE + 1) * STEPS_PER_EPOCH
    assert _same_state(models[-1].state_dict(), states[best])


def test_an_attributed_run_is_the_fixed_run_to_its_best_epoch():
    """Scores, model and checkpoints (in-run and TRAK-valued) are those of a run of best + 1 epochs."""
    train, ids, targets = _world()
    best = int(np.argmin(_curve(train, targets, seed=0)[0]))
    short = _task(epochs=best + 1)
    for fit in (train_model, train_trak_valued):
        stopped = fit(_task(patience=PATIENCE), train, ids, targets, seed=0)
        fixed = fit(short, train, ids, targets, seed=0)
        assert np.array_equal(stopped.scores, fixed.scores)
        assert stopped.epochs == fixed.epochs == best + 1
        assert _same_state(stopped.model.state_dict(), fixed.model.state_dict())
        assert len(stopped.checkpoints) == len(fixed.checkpoints) == min(2, best + 1)
        assert all(_same_state(a, b) for a, b in zip(stopped.checkpoints, fixed.checkpoints, strict=True))


def test_epoch_states_past_spill_bytes_go_to_disk_and_change_nothing():
    """A run whose epoch states do not fit ``spill_bytes`` keeps them on disk: the same model, scores and
    checkpoints bit for bit, at most ``spill_bytes`` of states in RAM, and the files gone with the run."""
    train, ids, targets = _world()
    state_bytes = sum(t.numel() * t.element_size() for t in _task().fresh(0).state_dict().values())
    for fit in (train_model, train_trak_valued):
        held = fit(_task(patience=PATIENCE), train, ids, targets, seed=0)
        spilled = fit(_task(patience=PATIENCE, spill_bytes=2 * state_bytes), train, ids, targets, seed=0)
        assert np.array_equal(held.scores, spilled.scores)
        assert _same_state(held.model.state_dict(), spilled.model.state_dict())
        assert all(_same_state(a, b) for a, b in zip(held.checkpoints, spilled.checkpoints, strict=True))
    stop = EarlyStop(_task(patience=PATIENCE, spill_bytes=2 * state_bytes).config)
    models = [_task().fresh(seed) for seed in range(4)]
    for model, loss in zip(models, [3.0, 2.0, 1.0, 1.5], strict=True):
        assert not stop.ended(model, loss)
    assert (stop.spilled, stop.best) == (2, 2)
    assert sum(isinstance(s, dict) for s in stop.states) == 2  # the first two: 2 * state_bytes in RAM
    assert all(_same_state(stop.state(e), m.state_dict()) for e, m in enumerate(models))
    assert _same_state(stop.restore(_task().fresh(9)).state_dict(), models[2].state_dict())
    files = [s for s in stop.states if not isinstance(s, dict)]
    assert all(f.exists() for f in files)
    del stop
    assert not any(f.exists() for f in files)


def test_left_out_retrains_each_stop_at_their_own_best_epoch():
    train, _, targets = _world()
    group = np.zeros(N, dtype=bool)
    group[:20] = True
    table = model_left_out(_task(patience=PATIENCE), train, targets, {"p": group}, seed=3, runs=2)
    with_all = np.mean([min(_curve(train, targets, s)[0]) for s in (3, 4)])
    without = np.mean([min(_curve(train, targets, s, keep=~group)[0]) for s in (3, 4)])
    row = table.to_pylist()[0]
    assert row["loss_with"] == pytest.approx(with_all, abs=1e-6)
    assert row["loss_without"] == pytest.approx(without, abs=1e-6)


def test_patience_is_named_in_the_run_id_only_when_set():
    ids = ["a", "b"]
    assert "patience" not in FIXED.run_settings()
    assert run_id_for(_task(), ids, 0) != run_id_for(_task(patience=PATIENCE), ids, 0)


def test_early_stopping_refusals():
    train, ids, targets = _world()
    with pytest.raises(ValueError, match="patience must be >= 1"):
        TrainConfig(patience=0)
    with pytest.raises(InputError, match="pass targets="):
        next(plain_model_steps(_task(patience=PATIENCE), train, seed=0))
    with pytest.raises(InputError, match="pass targets="):
        next(plain_steps(_mlp(patience=PATIENCE), train["features"].numpy(), train["labels"].numpy(), seed=0))


# ---------------------------------------------------------------- the MLP driver (SGD, per-step scores)

# SGD at a rate that memorizes the flipped labels of ``_world``: the target loss dips, then rises
MLP_FIXED = TrainConfig(epochs=15, batch_size=10, lr=0.2, n_checkpoints=2, trak_k=16)


def _mlp(**changes) -> AttributionTask:
    return AttributionTask(SPEC, dataclasses.replace(MLP_FIXED, **changes))


def _arrays(batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    return batch["features"].numpy(), batch["labels"].numpy()


def _mlp_curve(x, y, xv, yv, seed: int, keep: np.ndarray | None = None) -> tuple[list[float], list[dict]]:
    """The MLP driver's plain training for the fixed epochs: every epoch's target cross-entropy
    (computed here) and state."""
    losses, states = [], []
    per_epoch = -(-(N if keep is None else int(keep.sum())) // MLP_FIXED.batch_size)
    for step, model in enumerate(plain_steps(_mlp(), x, y, seed=seed, keep=keep)):
        if (step + 1) % per_epoch == 0:
            with torch.no_grad():
                losses.append(float(F.cross_entropy(model(torch.as_tensor(xv)), torch.as_tensor(yv))))
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    return losses, states


def _best_when_stopped(losses: list[float]) -> int:
    """The best epoch as training with ``PATIENCE`` sees it: the lowest loss up to the first epoch that
    comes ``PATIENCE`` epochs after it (the lowest of all where none does)."""
    for end in range(len(losses)):
        best = int(np.argmin(losses[: end + 1]))
        if end - best >= PATIENCE:
            return best
    return int(np.argmin(losses))


def test_the_mlp_driver_stops_early_at_its_best_epoch():
    """Plain training stops ``patience`` epochs after the best target loss and keeps that epoch's state;
    an attributed run (per-step scores, checkpoints, TRAK features, its TRAK value: both kernels damped for
    the epochs trained) is the fixed run of best + 1 epochs bit for bit (a constant rate: its first epochs
    are the longer run's)."""
    train, ids, targets = _world()
    (x, y), (xv, yv) = _arrays(train), _arrays(targets)
    losses, states = _mlp_curve(x, y, xv, yv, seed=0)
    best = _best_when_stopped(losses)
    assert 0 < best < MLP_FIXED.epochs - PATIENCE - 1  # the world rises after a dip: stopping saves epochs
    models = list(plain_steps(_mlp(patience=PATIENCE), x, y, seed=0, targets=(xv, yv)))
    assert len(models) == (best + PATIENCE + 1) * STEPS_PER_EPOCH
    assert _same_state(models[-1].state_dict(), states[best])
    assert _same_state(train_plain(_mlp(patience=PATIENCE), x, y, seed=0, targets=(xv, yv)).state_dict(),
                       states[best])
    stopped = train_with_attribution(_mlp(patience=PATIENCE), x, y, ids, xv, yv, seed=0)
    fixed = train_with_attribution(_mlp(epochs=best + 1), x, y, ids, xv, yv, seed=0)
    assert stopped.epochs == fixed.epochs == best + 1
    assert np.array_equal(stopped.scores, fixed.scores)
    assert _same_state(stopped.model.state_dict(), fixed.model.state_dict())
    assert all(_same_state(a, b) for a, b in zip(stopped.checkpoints, fixed.checkpoints, strict=True))
    assert np.array_equal(stopped.features.self_influence(), fixed.features.self_influence())
    paid = [mlp_valued_by_trak(run, x, y, xv, yv, seed=0).scores for run in (stopped, fixed)]
    assert np.array_equal(*paid)


def test_mlp_left_out_retrains_each_stop_at_their_own_best_epoch():
    train, _, targets = _world()
    (x, y), (xv, yv) = _arrays(train), _arrays(targets)
    group = np.zeros(N, dtype=bool)
    group[:20] = True
    table = mlp_left_out(_mlp(patience=PATIENCE), x, y, xv, yv, {"p": group}, seed=3, runs=2)
    row = table.to_pylist()[0]
    for key, keep in (("loss_with", None), ("loss_without", ~group)):
        curves = [_mlp_curve(x, y, xv, yv, s, keep)[0] for s in (3, 4)]
        expected = np.mean([c[_best_when_stopped(c)] for c in curves])
        assert row[key] == pytest.approx(expected, abs=1e-6)
