"""TRAK-style checkpoint features and query-time attribution.

At each kept checkpoint every training example's loss gradient is projected to ``k`` dims
(``projector.py``); the kernel is the projected Gauss–Newton matrix (``Σ_j Σ_c p_jc u u ᵀ``
with ``u = P ∇log p_c(x_j)``: the Fisher, equal to the Hessian for logistic regression) plus
the weight-decay term, or TRAK's empirical ``ΦᵀΦ``. A target's score for example i is
``φ_iᵀ K⁻¹ φ_v`` averaged over checkpoints: the first-order decrease of the target loss from
training on i (positive = helped). Features are float32 chunks, spilled to ``.npy`` files
read back as memory maps once they pass ``spill_bytes``, so RAM holds one chunk at a time.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import ghost
from .projector import Projector
from .task import SCORED, AttributionTask, ModelSpec, ModuleSpec, scored_layers

Kernel = Literal["fisher", "empirical"]


@dataclass
class FeatureStore:
    """Row chunks of a [n, dim] float32 matrix; chunks past ``spill_bytes`` live on disk."""

    spill_bytes: int
    directory: Path | None = None
    chunks: list[np.ndarray] = field(default_factory=list)
    _in_memory: int = 0

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if self._in_memory + chunk.nbytes <= self.spill_bytes:
            self.chunks.append(chunk)
            self._in_memory += chunk.nbytes
            return
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="caravan-trak-"))
        path = self.directory / f"chunk{len(self.chunks):06d}.npy"
        np.save(path, chunk)
        self.chunks.append(np.load(path, mmap_mode="r"))

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.chunks)

    @property
    def spilled(self) -> int:
        return sum(isinstance(c, np.memmap) for c in self.chunks)

    def matvec(self, u: np.ndarray) -> np.ndarray:
        """``Φ u`` for a [dim] or [dim, m] ``u``, one chunk in memory at a time."""
        return np.concatenate([np.asarray(c, dtype=np.float32) @ u for c in self.chunks])


@dataclass
class CheckpointFeatures:
    model: nn.Module
    layers: list[nn.Module]
    store: FeatureStore
    kernel_inv: np.ndarray  # float64 [dim, dim]

    @cached_property
    def plan(self) -> SequentialPlan | None:
        """The hook-free query path for this checkpoint's model, or None (autograd with hooks)."""
        return SequentialPlan.of(self.model, self.layers)


@dataclass
class TrakFeatures:
    """Everything ``attribute_query`` needs: checkpoints, their projected features, kernels."""

    spec: ModelSpec | ModuleSpec
    projector: Projector
    checkpoints: list[CheckpointFeatures]
    n_train: int

    def target_features(self, ck: CheckpointFeatures, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        if ck.plan is not None and x.dim() == 2:
            phi = self.projector.project(ck.plan.factors(x, y))
        else:
            phi = _projected_grads(ck.model, ck.layers, self.projector, x, y)
        return phi.numpy().astype(np.float64)

    def scores(self, X_targets: object, y_targets: object | None = None) -> np.ndarray:
        """[n_train, n_targets]: contributions to each target's log-probability of ``y``.

        Without ``y_targets`` the class the trained model predicts is used.
        """
        x = torch.as_tensor(np.asarray(X_targets, dtype=np.float32))
        if x.dim() == 1:
            x = x[None]
        y = None if y_targets is None else torch.as_tensor(np.asarray(y_targets, dtype=np.int64)).reshape(-1)
        if y is None:
            with torch.no_grad():
                y = self.checkpoints[-1].model(x).argmax(1)
        total = np.zeros((self.n_train, len(x)))
        for ck in self.checkpoints:
            u = ck.kernel_inv @ self.target_features(ck, x, y).T
            total += ck.store.matvec(u.astype(np.float32))
        return total / len(self.checkpoints)

    def self_influence(self) -> np.ndarray:
        """``φ_iᵀ K⁻¹ φ_i`` averaged over checkpoints: high for examples the model must bend to fit."""
        total = np.zeros(self.n_train)
        for ck in self.checkpoints:
            rows = []
            for c in ck.store:
                c64 = np.asarray(c, dtype=np.float64)
                rows.append(np.einsum("nd,nd->n", c64 @ ck.kernel_inv, c64))
            total += np.concatenate(rows)
        return total / len(self.checkpoints)


_PLAIN = (nn.Linear, nn.LayerNorm, nn.ReLU, nn.Tanh, nn.GELU, nn.Identity)


@dataclass(frozen=True)
class SequentialPlan:
    """Per-example loss gradients of a flat ``nn.Sequential`` (Linear, LayerNorm, ReLU, Tanh, GELU).

    A query is one or a few rows, where hooks, module calls and the autograd engine cost more
    than the arithmetic. This runs the same ATen forward and backward kernels autograd would
    (``linear``, ``native_layer_norm``, ``threshold_backward``, ...), so ``B`` is the same; any
    other model keeps the hooked autograd path (``_factors``).
    """

    modules: tuple[nn.Module, ...]

    @classmethod
    def of(cls, model: nn.Module, layers: list[nn.Module]) -> SequentialPlan | None:
        if type(model) is not nn.Sequential:
            return None
        mods = tuple(model)
        plain = all(type(m) in _PLAIN and not getattr(m, "inplace", False) for m in mods)
        if not plain or len({id(m) for m in mods}) != len(mods):
            return None
        scored = [m for m in mods if isinstance(m, SCORED)]
        if len(scored) != len(layers) or any(a is not b for a, b in zip(scored, layers, strict=True)):
            return None
        if any(isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1 for m in mods):
            return None
        return cls(mods)

    def factors(self, x: torch.Tensor, y: torch.Tensor) -> list[ghost.Factors]:
        """Factors of ``∇ -log p_y(x)`` per row, for every scored layer in forward order."""
        with torch.no_grad():
            acts, saved = [x], []  # acts[i] is module i's input, acts[i + 1] its output
            for m in self.modules:
                if isinstance(m, nn.LayerNorm):
                    out, mean, rstd = torch.ops.aten.native_layer_norm(
                        acts[-1], list(m.normalized_shape), m.weight, m.bias, m.eps
                    )
                    saved.append((mean, rstd))
                else:
                    out = m(acts[-1])
                    saved.append(None)
                acts.append(out)
            logp = torch.log_softmax(acts[-1], dim=1)
            # d(-Σ log p_y)/d logp, then the log-softmax backward autograd would run
            g = torch.zeros_like(logp).scatter_(1, y[:, None], -1.0)
            g = torch.ops.aten._log_softmax_backward_data(g, logp, 1, logp.dtype)
            facts: list[ghost.Factors] = []
            for i in range(len(self.modules) - 1, -1, -1):
                m = self.modules[i]
                if isinstance(m, SCORED):
                    facts.append(ghost.layer_factors(ghost.Tap(m, acts[i]), g))
                if i > 0:
                    g = _input_grad(m, acts[i], acts[i + 1], g, saved[i])
            return facts[::-1]


def _input_grad(m: nn.Module, a: torch.Tensor, out: torch.Tensor, g: torch.Tensor, saved) -> torch.Tensor:
    """Gradient at ``m``'s input given ``g`` at its output, by the kernel autograd runs for ``m``."""
    if isinstance(m, nn.Linear):
        return g.mm(m.weight)
    if isinstance(m, nn.LayerNorm):
        mean, rstd = saved
        grad, _, _ = torch.ops.aten.native_layer_norm_backward(
            g, a, list(m.normalized_shape), mean, rstd, m.weight, m.bias, [True, False, False]
        )
        return grad
    if isinstance(m, nn.ReLU):
        return torch.ops.aten.threshold_backward(g, out, 0)
    if isinstance(m, nn.Tanh):
        return torch.ops.aten.tanh_backward(g, out)
    if isinstance(m, nn.GELU):
        return torch.ops.aten.gelu_backward(g, a, approximate=m.approximate)
    return g  # Identity


def _frozen(
    spec: ModelSpec | ModuleSpec, state: dict[str, torch.Tensor]
) -> tuple[nn.Module, list[nn.Module]]:
    model = spec.build(0)
    model.load_state_dict(state)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), scored_layers(model)


def _factors(model: nn.Module, layers: list[nn.Module], x: torch.Tensor, weights_fn) -> list[ghost.Factors]:
    with ghost.LayerTaps(layers) as taps:
        logp = F.log_softmax(model(x), dim=1)
        grads = taps.output_grads(weights_fn(logp))
        return [ghost.layer_factors(t, b) for t, b in zip(taps.taps, grads, strict=True)]


def _projected_grads(model, layers, projector: Projector, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Projected per-example gradients of the loss ``-log p_y(x)``."""
    facts = _factors(model, layers, x, lambda logp: -logp.gather(1, y[:, None]).sum())
    return projector.project(facts)


def _fisher_rows(model, layers, projector: Projector, x: torch.Tensor) -> torch.Tensor:
    """Rows ``√p_c P ∇log p_c(x_j)`` for every class c: their Gram matrix is the projected GGN."""
    with torch.no_grad():
        p = F.softmax(model(x), dim=1)
    rows = []
    for c in range(p.shape[1]):
        w = p[:, c].sqrt()
        facts = _factors(model, layers, x, lambda logp, c=c, w=w: (w * logp[:, c]).sum())
        rows.append(projector.project(facts))
    return torch.cat(rows)


def build_features(
    task: AttributionTask,
    checkpoints: list[dict[str, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    kernel: Kernel | None = None,
    directory: str | None = None,
) -> TrakFeatures:
    """Project every training example's gradient at each checkpoint and invert the kernel."""
    cfg = task.config
    kernel = kernel or cfg.trak_kernel
    base = scored_layers(task.spec.build(0))
    projector = Projector.build(base, cfg.trak_k, seed)
    dim = projector.dim(base)
    out = []
    for j, state in enumerate(checkpoints):
        model, layers = _frozen(task.spec, state)
        sub = None if directory is None else Path(directory) / f"ckpt{j}"
        if sub is not None:
            sub.mkdir(parents=True, exist_ok=True)
        store = FeatureStore(cfg.spill_bytes, sub)
        gram = torch.zeros(dim, dim, dtype=torch.float64)
        for start in range(0, len(x), cfg.chunk_rows):
            xs, ys = x[start : start + cfg.chunk_rows], y[start : start + cfg.chunk_rows]
            phi = _projected_grads(model, layers, projector, xs, ys)
            store.append(phi.numpy())
            rows = _fisher_rows(model, layers, projector, xs) if kernel == "fisher" else phi
            gram += (rows.T @ rows).double()
        out.append(CheckpointFeatures(model, layers, store, _damped_inverse(gram, len(x), cfg)))
    return TrakFeatures(task.spec, projector, out, len(x))


def _damped_inverse(gram: torch.Tensor, n: int, cfg) -> np.ndarray:
    """``(K + (n·wd + ε·mean diag) I)⁻¹``: weight decay is the Hessian's own ridge; ε keeps it invertible."""
    ridge = n * cfg.weight_decay + cfg.trak_damping * float(gram.diagonal().mean())
    k = gram + ridge * torch.eye(len(gram), dtype=torch.float64)
    return torch.linalg.inv(k).numpy()


def attribute_query(features: TrakFeatures, x: object, label: int | None = None) -> np.ndarray:
    """Contribution of every training example to one prediction (its log-probability), in ms.

    ``label`` defaults to the class the trained model predicts for ``x``.
    """
    row = np.asarray(x, dtype=np.float32).reshape(1, -1)
    return features.scores(row, None if label is None else [label])[:, 0]
