"""The ModelTask driver: scores against exact one-step removal (SGD and AdamW), the same training
as without attribution, agreement with the MLP driver, and named refusals before training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from attribution import AttributionTask, ModelSpec, TrainConfig, train_with_attribution
from attribution.errors import DeviceUnavailableError, InputError, UnsupportedModelError
from attribution.inrun import (
    ModuleTaps,
    attributed_step,
    make_optimizer,
    plain_model_steps,
    scored_modules,
    target_grads,
    train_model,
)
from attribution.model_task import ModelTask, classification_loss, concat, take
from attribution.recipes.mlp import mlp_task

from .kernel_models import SeqLinear, seq_batch, step_scores

SEQ = seq_batch(6, 5, 3)


def _warm(optimizer: str, steps: int = 15, lr: float = 3e-3, seq=SEQ):
    """A seq model and its optimizer after some steps (Adam's second moments then hold history)."""
    torch.manual_seed(0)
    model = SeqLinear()
    cfg = TrainConfig(optimizer=optimizer, lr=lr, weight_decay=0.01)
    opt = make_optimizer(list(model.parameters()), cfg)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = classification_loss(model, seq(16, gen)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt, cfg, gen


def _target_loss(model: nn.Module, targets: dict) -> float:
    with torch.no_grad():
        return float(classification_loss(model, targets).mean())


def _step_without(model, opt, cfg, batch: dict, targets: dict, drop: int | None) -> float:
    """The target loss after the same optimizer step on the batch without row ``drop``."""
    model, opt_state = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    cfg_opt = make_optimizer(list(model.parameters()), cfg)
    cfg_opt.load_state_dict(opt_state)
    keep = torch.tensor([i for i in range(len(batch["labels"])) if i != drop])
    loss = classification_loss(model, take(batch, keep)).mean()
    cfg_opt.zero_grad()
    loss.backward()
    cfg_opt.step()
    return _target_loss(model, targets)


def _our_step_scores(model, opt, cfg, batch: dict, targets: dict) -> np.ndarray:
    """The driver's own step (targets' pass, then the batch's streamed pass and the optimizer step)
    on copies of the model and optimizer."""
    model, opt_state = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    scored = scored_modules(model)
    params = list(model.parameters())
    opt2 = make_optimizer(params, cfg)
    opt2.load_state_dict(opt_state)
    for p in params:
        p.requires_grad_(False)
    task = ModelTask("seq-linear", lambda seed: model, cfg)
    with ModuleTaps(scored) as taps:
        target = target_grads(taps, model, task, targets, gram=set(), per_target=False)
        return attributed_step(taps, model, task, opt2, batch, target, lr=cfg.lr, params=params)[0].numpy()


@pytest.mark.parametrize("optimizer,floor", [("sgd", 0.99), ("adamw", 0.95)])
@pytest.mark.parametrize("tokens", [5, 40], ids=["short", "rows-materialized"])
def test_step_scores_match_exact_one_step_removal(optimizer: str, floor: float, tokens: int) -> None:
    """Removing example i from step t's batch and taking the same step changes the target loss by
    (nearly) the score: the optimizer's own preconditioned direction, with its state at that step
    (with sequences long enough that the kernels form each row's gradient as well)."""
    seq = seq_batch(6, tokens, 3)
    model, opt, cfg, gen = _warm(optimizer, lr=0.05 if optimizer == "sgd" else 3e-3, seq=seq)
    batch, targets = seq(24, gen), seq(5, gen)
    full = _step_without(model, opt, cfg, batch, targets, None)
    exact = np.array([_step_without(model, opt, cfg, batch, targets, i) - full for i in range(24)])
    ours = _our_step_scores(model, opt, cfg, batch, targets)
    assert np.corrcoef(ours, exact)[0, 1] >= floor
    if optimizer == "adamw":  # the SGD formula under Adam is a different (worse) ranking
        sgd_cfg = TrainConfig(optimizer="sgd", lr=cfg.lr)
        sgd_opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        sgd_like = _our_step_scores(model, sgd_opt, sgd_cfg, batch, targets)
        assert np.corrcoef(sgd_like, exact)[0, 1] < np.corrcoef(ours, exact)[0, 1]


def _seq_task(optimizer: str, **extra) -> ModelTask:
    cfg = TrainConfig(
        epochs=2,
        batch_size=8,
        lr=0.05 if optimizer == "sgd" else 3e-3,
        optimizer=optimizer,
        weight_decay=0.01,
        n_checkpoints=2,
        **extra,
    )
    return ModelTask("seq-linear", lambda seed: SeqLinear(), cfg)


def _seq_data(n: int = 30, nv: int = 4, seq=SEQ):
    gen = torch.Generator().manual_seed(5)
    return seq(n, gen), [f"e{i}" for i in range(n)], seq(nv, gen)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("tokens", [5, 40], ids=["short", "rows-materialized"])
def test_attributed_training_trains_the_same_model(optimizer: str, tokens: int) -> None:
    task = _seq_task(optimizer)
    train, ids, targets = _seq_data(seq=seq_batch(6, tokens, 3))
    result = train_model(task, train, ids, targets, seed=3)
    plain = list(plain_model_steps(task, train, seed=3))[-1]
    for (k, got), ref in zip(result.model.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, msg=k)
    assert result.method == f"inrun_{optimizer}"
    assert len(result.checkpoints) == 2
    assert np.isfinite(result.scores).all() and result.scores.shape == (30,)
    again = train_model(task, train, ids, targets, seed=3)
    assert np.array_equal(again.scores, result.scores) and again.run_id == result.run_id


def test_per_target_scores_average_to_the_summed_scores() -> None:
    train, ids, targets = _seq_data()
    summed = train_model(_seq_task("adamw"), train, ids, targets, seed=3)
    per = train_model(_seq_task("adamw", per_target=True), train, ids, targets, seed=3)
    assert per.per_target.shape == (30, 4)
    np.testing.assert_allclose(per.per_target.mean(1), summed.scores, rtol=1e-4, atol=1e-9)


def test_mlp_through_model_task_matches_the_mlp_driver(data) -> None:
    x, y, ids, xv, yv = data
    spec = ModelSpec((5, 8, 3))
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.2, weight_decay=1e-3)
    old = train_with_attribution(AttributionTask(spec, cfg), x, y, ids, xv, yv, seed=4, with_features=False)
    task = mlp_task(spec, cfg)  # the MLP recipe: the same weights for a seed as spec.build
    rows = {"features": torch.from_numpy(x), "labels": torch.from_numpy(y)}
    targets = {"features": torch.from_numpy(xv), "labels": torch.from_numpy(yv)}
    new = train_model(task, rows, ids, targets, seed=4)
    np.testing.assert_allclose(new.scores, old.scores, rtol=1e-4, atol=1e-6 * np.abs(old.scores).max())


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.lin(self.lin(x)).mean(1))


class _BareParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head((x * self.scale).mean(1))


class _Batchnorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x.mean(1)))


class _BroadcastPositions(nn.Module):
    """Position embeddings looked up once for the whole batch: no per-example gradient exists."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Linear(1, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        where = torch.arange(x.shape[1], dtype=x.dtype)[:, None]
        return self.head((x + self.pos(where)).mean(1))


@pytest.mark.parametrize(
    "module,match",
    [
        (_BroadcastPositions, "pos \\(output \\(5, 6\\)\\) did not.*expanded to \\[batch, T\\]"),
        (_Twice, "lin ran 2x"),
        (_BareParameter, "layer '' .*_BareParameter.*no attribution kernel.*freeze"),
        (_Batchnorm, "'norm' .*BatchNorm1d.*couples"),
    ],
)
def test_unsupported_models_are_refused_before_training(module, match) -> None:
    train, ids, targets = _seq_data()
    task = ModelTask("bad", lambda seed: module(), TrainConfig(epochs=1))
    with pytest.raises(UnsupportedModelError, match=match):
        train_model(task, train, ids, targets, seed=0)


def test_bad_batches_are_refused_before_training() -> None:
    train, ids, targets = _seq_data()
    task = _seq_task("sgd")
    with pytest.raises(InputError, match="target rows also appear"):
        train_model(task, train, ids, take(train, torch.arange(3)), seed=0)
    with pytest.raises(InputError, match="pad both to the same length"):
        short = {k: (v[:, :3] if v.dim() > 1 else v) for k, v in targets.items()}
        train_model(task, train, ids, short, seed=0)
    with pytest.raises(InputError, match="share their first"):
        train_model(task, {**train, "labels": train["labels"][:5]}, ids, targets, seed=0)
    with pytest.raises(InputError, match="not unique"):
        train_model(task, train, ["same"] * 30, targets, seed=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_refused() -> None:
    train, ids, targets = _seq_data()
    with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
        train_model(_seq_task("sgd", device="cuda"), train, ids, targets, seed=0)


def test_bf16_autocast_scores_follow_the_fp32_scores() -> None:
    """The mixed-precision path (fp32 LayerNorm outputs meet bf16 gradients in the kernels, the head
    is tied to the embedding): one step's scores at the same parameters, with an Adam-like
    preconditioner, rank examples as fp32 does; and a whole bf16 AdamW run gives finite fp64 scores."""
    from bench._common.gpt import Gpt, lm_loss

    gen = torch.Generator().manual_seed(0)
    train, targets = (
        {"input_ids": torch.randint(0, 40, (24, 9), generator=gen)},
        {"input_ids": torch.randint(0, 40, (4, 9), generator=gen)},
    )
    torch.manual_seed(1)
    model = Gpt(vocab=40, positions=8, d=16, layers=2, heads=2)
    scored = scored_modules(model)
    pre = {id(p): torch.rand(p.shape, generator=gen) + 0.5 for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    got = {}
    for precision in (torch.float32, torch.bfloat16):
        with (
            ModuleTaps(scored) as taps,
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16),
        ):
            rows = concat(train, targets)
            grads = taps.grads(lm_loss(model, rows).float().sum(), 28)
        tr, tv = [g.rows(slice(0, 24)) for g in grads], [g.rows(slice(24, None)) for g in grads]
        got[precision] = step_scores(tr, tv, pre, per_target=False, gram_ok=False)
    assert got[torch.bfloat16].dtype == torch.float32
    assert np.corrcoef(got[torch.bfloat16].numpy(), got[torch.float32].numpy())[0, 1] > 0.99
    cfg = TrainConfig(epochs=1, batch_size=8, lr=3e-3, optimizer="adamw", precision="bf16")
    task = ModelTask(
        "gpt", lambda seed: Gpt(vocab=40, positions=8, d=16, layers=2, heads=2), cfg, loss=lm_loss
    )
    result = train_model(task, train, [f"e{i}" for i in range(24)], targets, seed=1)
    assert result.scores.dtype == np.float64 and np.isfinite(result.scores).all()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("per_target", [False, True])
def test_joint_and_separate_target_passes_give_the_same_scores(optimizer: str, per_target: bool) -> None:
    """Target rows riding in the batch's pass, or in a pass of their own before it: the same numbers."""
    train, ids, targets = _seq_data()
    joint = train_model(_seq_task(optimizer, per_target=per_target), train, ids, targets, seed=3)
    separate = train_model(_seq_task(optimizer, per_target=per_target, target_pass="separate"), train, ids,
                           targets, seed=3)
    scale = np.abs(joint.scores).max()
    np.testing.assert_allclose(separate.scores, joint.scores, rtol=1e-4, atol=1e-6 * scale)
    if per_target:
        np.testing.assert_allclose(separate.per_target, joint.per_target, rtol=1e-4,
                                   atol=1e-6 * np.abs(joint.per_target).max())
    for got, ref in zip(separate.model.state_dict().values(), joint.model.state_dict().values(), strict=True):
        torch.testing.assert_close(got, ref)
    assert separate.run_id != joint.run_id
