"""The numpy query path (``SequentialPlan``) gives the scores of the hooked autograd path.

Two references: the previous ``TrakFeatures.scores`` (hooks + ``autograd.grad`` + ghost factors,
still what ``build_features`` uses), and an independent one from each parameter's own autograd
gradient for one row at a time, projected as ``Qᵀ G R`` (no ghost factors, no hooks).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attribution import attribute_query, features_from_bytes, features_to_bytes
from attribution.projector import Projector
from attribution.task import AttributionTask, ModelSpec, ModuleSpec, TrainConfig
from attribution.trak import SequentialPlan, TrakFeatures, build_features, projected_grads

from .conftest import blobs


def previous_scores(f: TrakFeatures, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``TrakFeatures.scores`` as it was before the plan: the hooked autograd path for every model."""
    x, yt = torch.as_tensor(X), torch.as_tensor(y)
    total = np.zeros((f.n_train, len(x)))
    for ck in f.checkpoints:
        phi = projected_grads(ck.model, ck.layers, f.projector, x, yt).numpy().astype(np.float64)
        total += ck.store.matvec((ck.kernel_inv @ phi.T).astype(np.float32))
    return total / len(f.checkpoints)


def explicit_features(f: TrakFeatures, model: nn.Module, layers, row: np.ndarray, label: int) -> np.ndarray:
    """One row's projected gradient from plain ``autograd.grad`` of the parameters, in float64."""
    params = []
    for m in layers:
        params += [p for p in (m.weight, m.bias) if p is not None]
    loss = -torch.log_softmax(
        torch.func.functional_call(model, dict(model.named_parameters()), (torch.as_tensor(row)[None],)), 1
    )[0, label]
    grads = iter(torch.autograd.grad(loss, params, allow_unused=False))
    parts = []
    for m, lp in zip(layers, f.projector.layers, strict=True):
        if isinstance(m, nn.Linear):
            w = next(grads).double()
            g = torch.cat([w, next(grads).double()[:, None]], 1) if m.bias is not None else w
            q = torch.eye(g.shape[0], dtype=torch.float64) if lp.q is None else lp.q.double()
            r = torch.eye(g.shape[1], dtype=torch.float64) if lp.r is None else lp.r.double()
            parts.append((q.T @ g @ r).reshape(-1))
        else:
            v = torch.cat([next(grads).double() for p in (m.weight, m.bias) if p is not None])
            parts.append(v if lp.q is None else v @ lp.q.double())
    return torch.cat(parts).numpy()


def explicit_scores(f: TrakFeatures, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    total = np.zeros((f.n_train, len(X)))
    for ck in f.checkpoints:
        with torch.enable_grad():
            for p in ck.model.parameters():
                p.requires_grad_(True)
            try:
                phi = np.stack(
                    [explicit_features(f, ck.model, ck.layers, r, int(c)) for r, c in zip(X, y, strict=True)]
                )
            finally:
                for p in ck.model.parameters():
                    p.requires_grad_(False)
        total += ck.store.matvec((ck.kernel_inv @ phi.T).astype(np.float32))
    return total / len(f.checkpoints)


SPECS = [
    ModelSpec((5, 8, 6, 3), layer_norm=True),
    ModelSpec((5, 7, 4), activation="tanh"),
    ModelSpec((5, 9, 3), activation="gelu", layer_norm=True),
    ModelSpec((5, 3)),
]


def features_for(spec, seed: int = 0, k: int = 64) -> TrakFeatures:
    x, y = blobs(90, 5, 3, seed=seed)
    task = AttributionTask(spec, TrainConfig(n_checkpoints=2, trak_k=k, weight_decay=1e-3))
    states = [spec.build(seed + s).state_dict() for s in range(2)]
    return build_features(task, states, torch.as_tensor(x), torch.as_tensor(y), seed=seed)


def assert_float32_close(got: np.ndarray, want: np.ndarray) -> None:
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-6 * scale)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.activation}-{len(s.sizes)}-ln{s.layer_norm}")
def test_plan_scores_equal_previous_and_explicit_gradients(spec):
    f = features_for(spec)
    assert all(plan is not None for plan in f.plans)
    xq, yq = blobs(7, 5, 3, seed=5)
    got = f.scores(xq, yq)
    assert_float32_close(got, previous_scores(f, xq, yq))
    assert_float32_close(got, explicit_scores(f, xq, yq))
    for i in range(3):  # one input at a time, as serving calls it, with and without its label
        assert_float32_close(
            attribute_query(f, xq[i], int(yq[i])), previous_scores(f, xq[i : i + 1], yq[i : i + 1])[:, 0]
        )
    with torch.no_grad():
        pred = f.checkpoints[-1].model(torch.as_tensor(xq[:1])).argmax(1).numpy()
    assert_float32_close(attribute_query(f, xq[0]), previous_scores(f, xq[:1], pred)[:, 0])


def test_plan_after_bytes_round_trip_and_bytes_unchanged():
    f = features_for(SPECS[0], seed=3)
    before = features_to_bytes(f)
    xq, yq = blobs(4, 5, 3, seed=6)
    loaded = features_from_bytes(before)
    assert all(plan is not None for plan in loaded.plans)
    np.testing.assert_array_equal(loaded.scores(xq, yq), f.scores(xq, yq))
    assert_float32_close(loaded.scores(xq, yq), previous_scores(f, xq, yq))
    assert features_to_bytes(f) == before  # scoring leaves nothing in the stored state


def gelu_tanh_no_bias() -> nn.Module:
    return nn.Sequential(
        nn.Linear(5, 7),
        nn.GELU(approximate="tanh"),
        nn.LayerNorm(7),
        nn.Linear(7, 6, bias=False),
        nn.Identity(),
        nn.Tanh(),
        nn.Linear(6, 3),
    )


def test_plan_covers_tanh_gelu_and_linear_without_bias():
    f = features_for(ModuleSpec(gelu_tanh_no_bias, 5, 3, "gelu-tanh"), k=40)
    assert all(plan is not None for plan in f.plans)
    xq, yq = blobs(5, 5, 3, seed=8)
    assert_float32_close(f.scores(xq, yq), previous_scores(f, xq, yq))
    assert_float32_close(f.scores(xq, yq), explicit_scores(f, xq, yq))


class Twice(nn.Module):
    """Not a flat Sequential: the hooked autograd path must still serve it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_other_models_keep_the_autograd_path():
    spec = ModuleSpec(Twice, 5, 3, "twice")
    f = features_for(spec)
    assert all(plan is None for plan in f.plans)
    xq, yq = blobs(3, 5, 3, seed=7)
    np.testing.assert_array_equal(f.scores(xq, yq), previous_scores(f, xq, yq))
    assert_float32_close(f.scores(xq, yq), explicit_scores(f, xq, yq))


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(5, 4), nn.ReLU(inplace=True), nn.Linear(4, 3)),
        nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.1), nn.Linear(4, 3)),
        nn.Sequential(nn.Sequential(nn.Linear(5, 4)), nn.Linear(4, 3)),
    ],
    ids=["inplace", "dropout", "nested"],
)
def test_plan_refuses_what_it_does_not_cover(model):
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert SequentialPlan.of(model, layers, Projector.build(layers, 8, 0)) is None
