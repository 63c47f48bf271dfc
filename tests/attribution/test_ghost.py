"""Ghost scores equal per-example gradient dot products from torch.func (vmap + grad)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from attribution import (
    AttributionError,
    AttributionTask,
    ModuleSpec,
    UnsupportedModelError,
    features_from_bytes,
    features_to_bytes,
    model_from_bytes,
    model_to_bytes,
)
from attribution.ghost import Factors, add_pairwise, cheaper_form, logit_grads, pairwise_dots, summed_dots
from attribution.trainer import batches, train_plain, train_with_attribution


def _reference(task, x, y, xv, yv, seed):
    """Replay the same SGD run with materialized per-example gradients from torch.func."""
    cfg = task.config
    model = task.spec.build(seed)
    params = {k: v.detach().clone().double() for k, v in model.named_parameters()}
    model = model.double()
    x, xv = torch.as_tensor(x).double(), torch.as_tensor(xv).double()
    y, yv = torch.as_tensor(y), torch.as_tensor(yv)

    def loss1(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_ex = vmap(grad(loss1), in_dims=(None, 0, 0))
    scores = np.zeros((len(x), len(xv)))
    total = cfg.epochs * -(-len(x) // cfg.batch_size)
    for step, (_, idx) in enumerate(batches(len(x), cfg.batch_size, cfg.epochs, seed)):
        lr = cfg.lr_at(step, total)
        gi = per_ex(params, x[idx], y[idx])
        gv = per_ex(params, xv, yv)
        flat_i = torch.cat([gi[k].reshape(len(idx), -1) for k in params], 1)
        flat_v = torch.cat([gv[k].reshape(len(xv), -1) for k in params], 1)
        scores[idx.numpy()] += lr * (flat_i @ flat_v.T).numpy()
        for k in params:
            g = gi[k].mean(0) + cfg.weight_decay * params[k]
            params[k] = params[k] - lr * g
    return scores


@pytest.mark.parametrize("per_target", [True, False])
def test_ghost_scores_match_torch_func(data, mlp_task, per_target):
    x, y, ids, xv, yv = data
    task = dataclasses.replace(mlp_task, config=dataclasses.replace(mlp_task.config, per_target=per_target))
    res = train_with_attribution(task, x, y, ids, xv, yv, seed=7, with_features=False)
    ref = _reference(task, x, y, xv, yv, seed=7)
    scale = np.abs(ref).max()
    if per_target:
        np.testing.assert_allclose(res.per_target / scale, ref / scale, atol=2e-5)
    np.testing.assert_allclose(res.scores / scale, ref.mean(1) / scale, atol=2e-5)
    assert np.corrcoef(res.scores, ref.mean(1))[0, 1] > 0.99999


def test_attributed_training_reaches_the_plain_model(data, mlp_task):
    x, y, ids, xv, yv = data
    res = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=3, with_features=False)
    plain = train_plain(mlp_task, x, y, seed=3)
    for (k, a), (_, b) in zip(res.model.state_dict().items(), plain.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("d_in", "d_out"), [(7, 5), (5, 7)])  # G_v form: both product sides
def test_both_exact_forms_equal_explicit_per_example_gradients(bias, d_in, d_out):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(12, d_in, generator=gen, dtype=torch.float64)
    b = torch.randn(12, d_out, generator=gen, dtype=torch.float64)
    f = Factors(a, b, bias)
    a1 = torch.cat([a, torch.ones(12, 1, dtype=torch.float64)], 1) if bias else a
    g = (b[:, :, None] * a1[:, None, :]).reshape(12, -1)  # explicit per-example gradients
    train, targets = f.rows(slice(0, 8)), f.rows(slice(8, None))
    want = g[:8] @ g[8:].sum(0)
    torch.testing.assert_close(pairwise_dots(train, targets), g[:8] @ g[8:].T)
    torch.testing.assert_close(summed_dots(train, targets, "pairwise"), want)
    torch.testing.assert_close(summed_dots(train, targets, "gv"), want)


def test_pairwise_products_accumulate_over_layers():
    gen = torch.Generator().manual_seed(1)

    def layer(d_in, d_out, bias):
        return Factors(torch.randn(10, d_in, generator=gen, dtype=torch.float64),
                       torch.randn(10, d_out, generator=gen, dtype=torch.float64), bias)

    norm = Factors(None, None, False, torch.randn(10, 8, generator=gen, dtype=torch.float64))
    facts = [layer(4, 6, True), layer(6, 3, False), norm]
    acc, want = None, 0
    for f in facts:
        train, targets = f.rows(slice(0, 7)), f.rows(slice(7, None))
        want = want + pairwise_dots(train, targets)
        acc = add_pairwise(acc, train, targets)
    torch.testing.assert_close(acc, want)


def test_logit_gradient_equals_autograd_of_summed_cross_entropy():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (9,), generator=gen)
    (want,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), z)
    got = logit_grads(z, y, torch.arange(9), torch.full((9,), -1.0, dtype=torch.float64))
    torch.testing.assert_close(got, want)


def test_the_cheaper_form_is_picked_per_layer_shape():
    assert cheaper_form(512, 64, 1025, 1024) == "pairwise"
    assert cheaper_form(512, 64, 1025, 10) == "gv"
    assert cheaper_form(16, 4096, 65, 10) == "gv"


class _Custom(nn.Module):
    """Not a Sequential: named sub-modules, a functional tanh, a bias-free head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.norm(self.inp(x))))


class _PlainNorm(nn.Module):
    """A LayerNorm without affine parameters acts per example, like an activation."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.norm = nn.LayerNorm(8, elementwise_affine=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.norm(self.inp(x))))


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.a(torch.relu(self.a(x)))))


def test_any_module_of_linear_layers_matches_torch_func(data, mlp_task):
    x, y, ids, xv, yv = data
    task = AttributionTask(ModuleSpec(_Custom, 5, 3, "custom-v1"), mlp_task.config)
    res = train_with_attribution(task, x, y, ids, xv, yv, seed=1)
    ref = _reference(task, x, y, xv, yv, seed=1)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(res.scores / scale, ref.mean(1) / scale, atol=2e-5)
    blob = model_to_bytes(res.model, task.spec)
    with pytest.raises(AttributionError, match="pass its ModuleSpec"):
        model_from_bytes(blob)
    model, _ = model_from_bytes(blob, task.spec)
    torch.testing.assert_close(model(torch.as_tensor(xv)), res.model.eval()(torch.as_tensor(xv)))
    feats = features_from_bytes(features_to_bytes(res.features), task.spec)
    np.testing.assert_array_equal(feats.scores(xv, yv), res.features.scores(xv, yv))


def test_a_layer_called_twice_is_refused(data, mlp_task):
    x, y, ids, xv, yv = data
    task = AttributionTask(ModuleSpec(_Shared, 5, 3, "shared"), mlp_task.config)
    with pytest.raises(UnsupportedModelError, match="exactly once per forward pass.*ran 2x"):
        train_with_attribution(task, x, y, ids, xv, yv, seed=0, with_features=False)


def test_a_layer_norm_without_parameters_matches_torch_func(data, mlp_task):
    x, y, ids, xv, yv = data
    task = AttributionTask(ModuleSpec(_PlainNorm, 5, 3, "plain-norm"), mlp_task.config)
    res = train_with_attribution(task, x, y, ids, xv, yv, seed=2)
    ref = _reference(task, x, y, xv, yv, seed=2)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(res.scores / scale, ref.mean(1) / scale, atol=2e-5)
    assert np.isfinite(res.features.scores(xv, yv)).all()


def test_a_layer_norm_with_weight_but_no_bias_matches_torch_func(data, mlp_task):
    x, y, ids, xv, yv = data

    def factory():
        return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8, bias=False), nn.Tanh(), nn.Linear(8, 3))

    task = AttributionTask(ModuleSpec(factory, 5, 3, "ln-no-bias"), mlp_task.config)
    res = train_with_attribution(task, x, y, ids, xv, yv, seed=2)
    ref = _reference(task, x, y, xv, yv, seed=2)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(res.scores / scale, ref.mean(1) / scale, atol=2e-5)
    # TRAK features: the numpy query path equals the hooked autograd path
    plan = res.features.plans[0]
    ck = res.features.checkpoints[0]
    # the numpy plan covers every module: the LayerNorm with its trained weight and no bias
    assert [step[0] for step in plan.steps] == ["linear", "layer_norm", "tanh", "linear"]
    _, weight, bias, _ = plan.steps[1]
    assert bias is None and np.array_equal(weight, ck.model[1].weight.detach().numpy())
    np.testing.assert_allclose(
        res.features.target_features(ck, torch.as_tensor(xv), torch.as_tensor(yv), plan),
        res.features.target_features(ck, torch.as_tensor(xv), torch.as_tensor(yv)),
        rtol=1e-4, atol=1e-5,
    )


class _Doubling(nn.Module):
    """Scales its input first, in place or not."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.inp = nn.Linear(5, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mul_(2.0) if self.inplace else x * 2.0
        return self.head(torch.tanh(self.inp(x)))


def test_a_model_acting_on_its_input_in_place_scores_as_without(data, mlp_task):
    x, y, ids, xv, yv = data
    runs = []
    for inplace in (False, True):
        task = AttributionTask(ModuleSpec(lambda i=inplace: _Doubling(i), 5, 3, "doubling"), mlp_task.config)
        runs.append(train_with_attribution(task, x, y, ids, xv, yv, seed=4, with_features=False))
    np.testing.assert_array_equal(runs[0].scores, runs[1].scores)
