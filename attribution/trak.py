"""TRAK-style checkpoint features and query-time attribution.

At each kept checkpoint every training example's loss gradient is projected to ``k`` dims
(``projector.py``); the kernel is the projected Gauss–Newton matrix (``Σ_j Σ_c p_jc u u ᵀ``
with ``u = P ∇log p_c(x_j)``: the Fisher, equal to the Hessian for logistic regression) plus
the weight-decay term and early stopping's (``stopping_ridge``), or TRAK's empirical ``ΦᵀΦ``. A
target's score for example i is ``φ_iᵀ K⁻¹ φ_v`` averaged over checkpoints: the first-order decrease
of the target loss from training on i (positive = helped). Features are float32 chunks, spilled to
``.npy`` files read back as memory maps once they pass ``spill_bytes``, so RAM holds one chunk at a
time.
"""

from __future__ import annotations

import math
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
from .fisher import fisher_labels
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
        """Add rows as a float32 chunk: in memory while the total stays within ``spill_bytes``, else saved
        as a ``.npy`` in ``directory`` (a fresh temporary one at the first spill) and kept as a memory map."""
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
        """How many chunks live on disk as ``.npy`` memory maps."""
        return sum(isinstance(c, np.memmap) for c in self.chunks)

    def matvec(self, u: np.ndarray) -> np.ndarray:
        """``Φ u`` for a [dim] or [dim, m] ``u``, one chunk in memory at a time."""
        if len(self.chunks) == 1:
            return np.asarray(self.chunks[0], dtype=np.float32) @ u
        return np.concatenate([np.asarray(c, dtype=np.float32) @ u for c in self.chunks])


@dataclass
class CheckpointFeatures:
    """One checkpoint: its frozen model, scored layers, projected training features, damped kernel inverse."""

    model: nn.Module
    layers: list[nn.Module]
    store: FeatureStore
    kernel_inv: np.ndarray  # float64 [dim, dim]


@dataclass
class TrakFeatures:
    """Everything ``attribute_query`` needs: checkpoints, their projected features, kernels."""

    spec: ModelSpec | ModuleSpec
    projector: Projector
    checkpoints: list[CheckpointFeatures]
    n_train: int

    @cached_property
    def plans(self) -> list[SequentialPlan | None]:
        """Per checkpoint, the numpy query path for its model, or None (hooked autograd path)."""
        return [SequentialPlan.of(ck.model, ck.layers, self.projector) for ck in self.checkpoints]

    def target_features(
        self, ck: CheckpointFeatures, x: torch.Tensor, y: torch.Tensor, plan: SequentialPlan | None = None
    ) -> np.ndarray:
        """[n, dim] float64 projected gradients of ``-log p_y(x)`` at checkpoint ``ck``: through ``plan``
        (numpy) for flat inputs when given, else the hooked autograd path; the two agree to float32."""
        if plan is not None and x.dim() == 2:
            return plan.features(x.numpy(), y.numpy())
        return projected_grads(ck.model, ck.layers, self.projector, x, y).numpy().astype(np.float64)

    def scores(self, X_targets: object, y_targets: object | None = None) -> np.ndarray:
        """[n_train, n_targets]: contributions to each target's log-probability of ``y``.

        Without ``y_targets`` the class the trained model predicts is used.
        """
        x = np.asarray(X_targets, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        total = np.zeros((self.n_train, len(x)))
        for ck, f in zip(self.checkpoints, self._targets_features(x, y_targets), strict=True):
            u = ck.kernel_inv @ f.T
            total += ck.store.matvec(u.astype(np.float32))
        return total / len(self.checkpoints)

    def _targets_features(self, x: np.ndarray, y_targets: object | None) -> list[np.ndarray]:
        """Each checkpoint's projected target gradients; numpy only (no tensors) when every
        checkpoint has a SequentialPlan and the labels are given, as for a served query."""
        if y_targets is not None and x.ndim == 2 and all(p is not None for p in self.plans):
            y = np.asarray(y_targets, dtype=np.int64).reshape(-1)
            return [plan.features(x, y) for plan in self.plans]
        xt = torch.as_tensor(x)
        if y_targets is None:
            with torch.no_grad():
                yt = self.checkpoints[-1].model(xt).argmax(1)
        else:
            yt = torch.as_tensor(np.asarray(y_targets, dtype=np.int64)).reshape(-1)
        return [
            self.target_features(ck, xt, yt, p) for ck, p in zip(self.checkpoints, self.plans, strict=True)
        ]

    def self_influence(self) -> np.ndarray:
        """``φ_iᵀ K⁻¹ φ_i`` averaged over checkpoints: high for examples the model must bend to fit."""
        return self_influence(self.checkpoints, self.n_train)


_PLAIN = (nn.Linear, nn.LayerNorm, nn.ReLU, nn.Tanh, nn.GELU, nn.Identity)


@dataclass(frozen=True)
class SequentialPlan:
    """Projected per-example loss gradients of a flat ``nn.Sequential`` in numpy, for queries.

    A query is one or a few rows: there hooks, module calls, the autograd engine and torch's
    per-op dispatch (each op releases and retakes the GIL, which stalls under a server's
    threads) cost more than the arithmetic. Same math as ``projected_grads`` + ``project``
    (forward, output gradients ``B`` backwards, ``(b Q) ⊗ ([a, 1] R)``) in float32, so equal to
    float32 precision; any other model keeps the hooked autograd path. Layers: Linear,
    LayerNorm (one trailing dim), ReLU, Tanh, GELU, Identity.
    """

    steps: tuple[tuple, ...]  # (kind, *float32 arrays or settings) per module, forward order
    proj: tuple[tuple[np.ndarray | None, np.ndarray | None], ...]  # (q, r) per scored layer

    @classmethod
    def of(cls, model: nn.Module, layers: list[nn.Module], projector: Projector) -> SequentialPlan | None:
        """The plan for ``model`` with its scored ``layers`` under ``projector``; None unless the model is a
        flat ``nn.Sequential`` of distinct, non-inplace ``_PLAIN`` modules (each LayerNorm over one dim)."""
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
        steps = tuple(_step(m) for m in mods)
        proj = tuple((_np(lp.q), _np(lp.r)) for lp in projector.layers)
        return cls(steps, proj)

    def features(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """[n, dim] float64 projected gradients of ``-log p_y(x)`` per row (float32 arithmetic).

        Non-finite values propagate silently, as in torch: callers drop non-finite scores.
        """
        with np.errstate(all="ignore"):
            return self._features(x, y)

    def _features(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        acts, saved = [x], []  # acts[i] is module i's input, acts[i + 1] its output
        for step in self.steps:
            out, keep = _forward(step, acts[-1])
            acts.append(out)
            saved.append(keep)
        z = acts[-1] - acts[-1].max(axis=1, keepdims=True)
        p = np.exp(z)
        g = p / p.sum(axis=1, keepdims=True)  # d(-log p_y)/d logits = softmax - onehot
        g[np.arange(len(g)), y] -= 1.0
        parts, j = [], len(self.proj)
        for i in range(len(self.steps) - 1, -1, -1):
            step = self.steps[i]
            if step[0] in ("linear", "layer_norm"):
                j -= 1
                parts.append(self._project(step, self.proj[j], acts[i], saved[i], g))
            if i > 0:
                g = _backward(step, acts[i], acts[i + 1], saved[i], g)
        return np.concatenate(parts[::-1], axis=1).astype(np.float64)

    @staticmethod
    def _project(step, qr, a, saved, g) -> np.ndarray:
        q, r = qr
        if step[0] == "layer_norm":
            _, w, bias, _ = step
            xhat = saved[0]
            v = np.concatenate([xhat * g] * (w is not None) + [g] * (bias is not None), axis=1)
            return v if q is None else v @ q
        bias = step[2] is not None
        b = g if q is None else g @ q
        if r is None:
            a = np.concatenate([a, np.ones((len(a), 1), np.float32)], axis=1) if bias else a
        else:
            a = a @ r[:-1] + r[-1] if bias else a @ r
        return (b[:, :, None] * a[:, None, :]).reshape(len(b), -1)


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float32).numpy().copy()


def _step(m: nn.Module) -> tuple:
    if isinstance(m, nn.Linear):
        return ("linear", _np(m.weight), _np(m.bias))
    if isinstance(m, nn.LayerNorm):
        return ("layer_norm", _np(m.weight), _np(m.bias), float(m.eps))
    if isinstance(m, nn.GELU):
        return ("gelu", m.approximate)
    return ({nn.ReLU: "relu", nn.Tanh: "tanh", nn.Identity: "identity"}[type(m)],)


def _forward(step: tuple, h: np.ndarray) -> tuple[np.ndarray, tuple | None]:
    kind = step[0]
    if kind == "linear":
        out = h @ step[1].T
        return (out if step[2] is None else out + step[2]), None
    if kind == "layer_norm":
        _, w, b, eps = step
        centred = h - h.mean(axis=1, keepdims=True)
        rstd = (1.0 / np.sqrt((centred * centred).mean(axis=1, keepdims=True) + eps)).astype(np.float32)
        xhat = centred * rstd
        out = xhat if w is None else xhat * w
        return (out if b is None else out + b), (xhat, rstd)
    if kind == "relu":
        return np.maximum(h, 0), None
    if kind == "tanh":
        return np.tanh(h), None
    if kind == "gelu":
        if step[1] == "tanh":
            inner = np.float32(math.sqrt(2 / math.pi)) * (h + np.float32(0.044715) * h**3)
            return 0.5 * h * (1 + np.tanh(inner)), None
        from scipy import special  # only the numpy query path of an erf-GELU needs scipy

        return 0.5 * h * (1 + special.erf(h / np.float32(math.sqrt(2)))), None
    return h, None


def _backward(step: tuple, a: np.ndarray, out: np.ndarray, saved, g: np.ndarray) -> np.ndarray:
    """Gradient at a module's input ``a`` given ``g`` at its output ``out``."""
    kind = step[0]
    if kind == "linear":
        return g @ step[1]
    if kind == "layer_norm":
        xhat, rstd = saved
        gh = g if step[1] is None else g * step[1]
        return rstd * (gh - gh.mean(axis=1, keepdims=True) - xhat * (gh * xhat).mean(axis=1, keepdims=True))
    if kind == "relu":
        return g * (out > 0)
    if kind == "tanh":
        return g * (1 - out * out)
    if kind == "gelu":
        if step[1] == "tanh":
            c, k = np.float32(math.sqrt(2 / math.pi)), np.float32(0.044715)
            t = np.tanh(c * (a + k * a**3))
            return g * (0.5 * (1 + t) + 0.5 * a * (1 - t * t) * c * (1 + 3 * k * a * a))
        from scipy import special

        cdf = 0.5 * (1 + special.erf(a / np.float32(math.sqrt(2))))
        pdf = np.exp(-0.5 * a * a) / np.float32(math.sqrt(2 * math.pi))
        return g * (cdf + a * pdf)
    return g


def frozen_model(
    spec: ModelSpec | ModuleSpec, state: dict[str, torch.Tensor]
) -> tuple[nn.Module, list[nn.Module]]:
    """A checkpoint's model in eval mode with gradients off, and its scored layers: how features are
    computed (here and by shards) and how stored features are rebuilt (``features_from_bytes``)."""
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


def projected_grads(model, layers, projector: Projector, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Projected per-example gradients of the loss ``-log p_y(x)``."""
    facts = _factors(model, layers, x, lambda logp: -logp.gather(1, y[:, None]).sum())
    return projector.project(facts)


@dataclass(frozen=True)
class FisherDraws:
    """What keys a chunk's drawn Fisher labels: the run's seed, the checkpoint, the chunk's first row."""

    seed: int
    checkpoint: int
    start: int


def _fisher_rows(model, layers, projector: Projector, x: torch.Tensor, draws: FisherDraws) -> torch.Tensor:
    """Rows ``w P ∇log p_c(x_j)`` of each Fisher pass (``fisher_labels``: every class c at ``w = √p_c``, or
    labels drawn from ``p`` beyond 16 classes): their Gram matrix is the projected GGN."""
    with torch.no_grad():
        p = F.softmax(model(x), dim=1)
    rows = []
    for labels, w in fisher_labels(p, seed=draws.seed, checkpoint=draws.checkpoint, start=draws.start):
        facts = _factors(model, layers, x,
                         lambda logp, c=labels, w=w: (w * logp.gather(1, c[:, None])[:, 0]).sum())
        rows.append(projector.project(facts))
    return torch.cat(rows)


def chunk_terms(
    model: nn.Module, layers: list[nn.Module], projector: Projector, x: torch.Tensor, y: torch.Tensor,
    kernel: Kernel, draws: FisherDraws,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of training rows at one checkpoint: their projected gradients (float32) and their
    float64 share of the kernel's Gram matrix. ``build_features`` adds the shares in chunk order and
    shards (``shards.py``) compute the very same ones, so both give the same bytes (the Fisher's drawn
    labels are keyed by row, ``draws``, so they are the same whichever shard holds a row)."""
    phi = projected_grads(model, layers, projector, x, y)
    rows = _fisher_rows(model, layers, projector, x, draws) if kernel == "fisher" else phi
    return phi, (rows.T @ rows).double()


def build_features(
    task: AttributionTask,
    checkpoints: list[dict[str, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    kernel: Kernel | None = None,
    directory: str | None = None,
    epochs: int | None = None,
) -> TrakFeatures:
    """Project every training example's gradient at each checkpoint and invert the kernel (damped for the
    ``epochs`` the run trained, its best epoch's count where it stopped early; None: ``config.epochs``)."""
    cfg = task.config
    kernel = kernel or cfg.trak_kernel
    projector, dim = task_projector(task, seed)
    out = []
    for j, state in enumerate(checkpoints):
        model, layers = frozen_model(task.spec, state)
        store = checkpoint_store(cfg, directory, j)
        gram = torch.zeros(dim, dim, dtype=torch.float64)
        for start in range(0, len(x), cfg.chunk_rows):
            xs, ys = x[start : start + cfg.chunk_rows], y[start : start + cfg.chunk_rows]
            phi, term = chunk_terms(model, layers, projector, xs, ys, kernel, FisherDraws(seed, j, start))
            store.append(phi.numpy())
            gram += term
        out.append(CheckpointFeatures(model, layers, store, damped_inverse(gram, len(x), cfg, epochs)))
    return TrakFeatures(task.spec, projector, out, len(x))


def task_projector(task: AttributionTask, seed: int) -> tuple[Projector, int]:
    """The seeded projection of the task's scored layers and its input width (every shard builds the same)."""
    base = scored_layers(task.spec.build(0))
    projector = Projector.build(base, task.config.trak_k, seed)
    return projector, projector.dim(base)


def checkpoint_store(cfg, directory: str | None, j: int) -> FeatureStore:
    """Checkpoint `j`'s feature rows: in memory, spilling under `directory/ckpt<j>` past `spill_bytes`."""
    sub = None if directory is None else Path(directory) / f"ckpt{j}"
    if sub is not None:
        sub.mkdir(parents=True, exist_ok=True)
    return FeatureStore(cfg.spill_bytes, sub)


def damped_inverse(gram: torch.Tensor, n: int, cfg, epochs: int | None = None) -> np.ndarray:
    """``(K + (n·wd + n/τ + ε·mean diag) I)⁻¹``: weight decay is the Hessian's own ridge, ``n/τ`` early
    stopping's over the ``epochs`` trained (``stopping_ridge``), and ε keeps it invertible. The last step of
    a checkpoint's features, unsharded (``build_features``) or combined from shards."""
    ridge = n * cfg.weight_decay + stopping_ridge(n, cfg, epochs)
    ridge += cfg.trak_damping * float(gram.diagonal().mean())
    k = gram + ridge * torch.eye(len(gram), dtype=torch.float64)
    return torch.linalg.inv(k).numpy()


def stopping_ridge(n: int, cfg, epochs: int | None = None) -> float:
    """``n / τ``, τ the summed learning rates of the steps an SGD run over ``n`` rows took in ``epochs``
    (where it stopped early, its best epoch's count; None: all of ``cfg.epochs``); 0 for AdamW.

    Gradient descent stopped at time τ moves the weights along a direction of curvature s by the share
    ``1 - exp(-s·τ)`` of the way, which a ridge of 1/τ on the mean loss's Hessian matches (Ali, Kolter and
    Tibshirani, 2019): n/τ on this kernel, which sums the rows. Without it the kernel was damped as for a
    model trained to its optimum, while the MLP stops after 20 epochs at most, and the directions it had
    barely moved along dominated the scores. ``bench/attribution_lds.py`` (100 retrains), the MLP's LDS at
    k = 128 / 512 / 2048 before and after: digits 0.503 / 0.506 / 0.531 to 0.530 / 0.654 / 0.737, wine
    0.476 / 0.478 / 0.499 to 0.801 / 0.879 / 0.875, a 600-row table of 9 features 0.560 / 0.471 / 0.458
    to 0.814 / 0.892 / 0.920 (dattri's TracIn: 0.604, 0.827, 0.734); logistic regression (200 epochs,
    near its optimum) at 512 / 2048: digits 0.872 / 0.944 to 0.867 / 0.951, wine 0.843 to 0.917. n/τ is
    kept as the theory gives it, not fitted: over nine tables (scratch runs, 50 retrains) three times it
    scored at most 0.035 higher (higher on seven), a third of it lower on all nine."""
    if cfg.optimizer != "sgd":
        return 0.0
    per_epoch = -(-n // cfg.batch_size)
    total, steps = cfg.epochs * per_epoch, (cfg.epochs if epochs is None else epochs) * per_epoch
    tau = math.fsum(cfg.lr_at(t, total) for t in range(steps))  # the trainer's own schedule, step by step
    return n / tau if tau > 0 else 0.0


def attribute_query(features: TrakFeatures, x: object, label: int | None = None) -> np.ndarray:
    """Contribution of every training example to one prediction (its log-probability), in ms.

    ``label`` defaults to the class the trained model predicts for ``x``.
    """
    row = np.asarray(x, dtype=np.float32).reshape(1, -1)
    return features.scores(row, None if label is None else [label])[:, 0]


def self_influence(checkpoints: list, n_train: int) -> np.ndarray:
    """``φ_iᵀ K⁻¹ φ_i`` averaged over checkpoints (each with a ``store`` of features and its
    ``kernel_inv``), one feature chunk in memory at a time: the MLP and the ModelTask features alike."""
    total = np.zeros(n_train)
    for ck in checkpoints:
        rows = []
        for c in ck.store:
            c64 = np.asarray(c, dtype=np.float64)
            rows.append(np.einsum("nd,nd->n", c64 @ ck.kernel_inv, c64))
        total += np.concatenate(rows)
    return total / len(checkpoints)
