"""Ghost dot products: per-example gradient inner products without per-example gradients.

For ``s = a W + c`` one example's gradient is ``b ⊗ [a, 1]`` with ``b = ∂ℓ/∂s``, so
``⟨g_i, g_v⟩ = (a_i·a_v + 1)(b_i·b_v)`` (pairwise form) or ``b_iᵀ G_v a_i + b_i·Σb_v`` with the
summed target gradient ``G_v = Σ_v b_v a_vᵀ`` (G_v form). Both use only what an ordinary
forward/backward pass already holds: the layer input ``A`` (forward hook) and the output
gradient ``B``. LayerNorm's per-example gradients are d-vectors and are formed directly.
The math here is pure; ``LayerTaps`` is the only part that touches a module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UnsupportedModelError

Form = Literal["pairwise", "gv"]


@dataclass
class Tap:
    """What one scored layer saw in the last forward pass."""

    module: nn.Module
    inputs: torch.Tensor | None = None
    output: torch.Tensor | None = None
    calls: int = 0


@dataclass
class LayerTaps:
    """Forward hooks that keep each scored layer's input and output (for ``autograd.grad``).

    A layer output that does not require grad (the first layer when parameters are frozen)
    is made a leaf that does, so the backward pass yields every ``B`` while autograd never
    computes a parameter gradient: the trainer forms those itself from ``A`` and ``B``.
    """

    layers: list[nn.Module]
    taps: list[Tap] = field(default_factory=list)
    _handles: list = field(default_factory=list)

    def __enter__(self) -> LayerTaps:
        self.taps = [Tap(m) for m in self.layers]
        for tap in self.taps:
            self._handles.append(tap.module.register_forward_hook(_keeper(tap)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def output_grads(self, out: torch.Tensor, grad_out: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``B`` for every scored layer, from one backward pass of ``out`` (a scalar loss, or the
        model output with its gradient ``grad_out``: a layer whose output it is gets ``grad_out``).

        Each layer must have run exactly once since the last call: a shared (twice-called) layer
        would have its first input overwritten and its scores silently wrong.
        """
        odd = [f"{type(t.module).__name__} #{i} ran {t.calls}x"
               for i, t in enumerate(self.taps) if t.calls != 1]
        for t in self.taps:
            t.calls = 0
        if odd:
            raise UnsupportedModelError(
                f"each scored layer must run exactly once per forward pass ({', '.join(odd)}); "
                "shared or skipped layers cannot be attributed per example"
            )
        if grad_out is None:
            return list(torch.autograd.grad(out, [t.output for t in self.taps]))
        inner = [t.output for t in self.taps if t.output is not out]
        got = iter(torch.autograd.grad(out, inner, grad_out) if inner else ())
        return [grad_out if t.output is out else next(got) for t in self.taps]


@contextmanager
def hooks_paused(taps: LayerTaps | AbstractContextManager) -> Iterator[None]:
    """No hook of ``taps`` runs inside (``LayerTaps``, ``inrun.ModuleTaps``: taps that register their
    hooks on entry and remove them on exit): for forward passes that are not attributed, such as an
    epoch's target loss."""
    taps.__exit__(None, None, None)
    try:
        yield
    finally:
        taps.__enter__()


def logit_grads(
    logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, neg: torch.Tensor
) -> torch.Tensor:
    """``∂ Σ_i CE(z_i, y_i) / ∂z = softmax(z) − onehot(y)``: two kernels instead of the four of
    cross-entropy's forward and backward (``rows = arange(n)``, ``neg = -1.0`` of length n)."""
    g = torch.softmax(logits.detach(), 1)
    return g.index_put_((rows, labels), neg, accumulate=True)


def _keeper(tap: Tap):
    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        a = args[0]
        if a.dim() != 2:
            raise UnsupportedModelError(
                f"{type(module).__name__} received a {a.dim()}-d input; per-example attribution "
                "expects one flat feature vector per example (shape [batch, features])"
            )
        tap.inputs = a.detach()
        tap.calls += 1
        if not out.requires_grad:
            out = out.detach().requires_grad_(True)
            tap.output = out
            return out
        tap.output = out
        return None

    return hook


# ---------------------------------------------------------------- per-layer factors


@dataclass(frozen=True)
class Factors:
    """Per-example gradient of one layer, for rows of a batch.

    Linear: gradient = ``b ⊗ [a, 1]`` (``a`` input rows, ``b`` output-gradient rows).
    LayerNorm: gradient = the explicit vector ``v`` (weight and bias parts concatenated).
    """

    a: torch.Tensor | None
    b: torch.Tensor | None
    bias: bool
    v: torch.Tensor | None = None

    def rows(self, sl: slice) -> Factors:
        """The factors of the rows ``sl`` only (a batch's training rows or its target rows)."""
        if self.v is not None:
            return Factors(None, None, False, self.v[sl])
        return Factors(self.a[sl], self.b[sl], self.bias, None)


def layer_factors(tap: Tap, b: torch.Tensor) -> Factors:
    """Factors of the per-example gradients of ``tap.module`` given its output gradient ``b``."""
    m = tap.module
    if isinstance(m, nn.Linear):
        return Factors(tap.inputs, b, m.bias is not None)
    assert isinstance(m, nn.LayerNorm)
    xhat = F.layer_norm(tap.inputs, m.normalized_shape, None, None, m.eps)
    parts = []
    if m.weight is not None:
        parts.append(xhat * b)
    if m.bias is not None:
        parts.append(b)
    return Factors(None, None, False, torch.cat(parts, dim=1))


def param_grads(module: nn.Module, f: Factors, scale: float) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Gradient of ``scale * Σ_i ℓ_i`` with respect to the module's parameters."""
    if isinstance(module, nn.Linear):
        out = [(module.weight, (f.b.T @ f.a).mul_(scale))]
        if module.bias is not None:
            out.append((module.bias, f.b.sum(0).mul_(scale)))
        return out
    total = f.v.sum(0).mul_(scale)
    d = module.normalized_shape[0]
    out, offset = [], 0
    for p in (module.weight, module.bias):
        if p is not None:
            out.append((p, total[offset : offset + d]))
            offset += d
    return out


# ---------------------------------------------------------------- ghost dot products


def cheaper_form(n_train: int, n_targets: int, d_in: int, d_out: int) -> Form:
    """The exact form with fewer multiply-adds for this layer's shape."""
    pairwise = n_train * n_targets * (d_in + d_out)
    gv = n_targets * d_in * d_out + n_train * d_in * d_out
    return "pairwise" if pairwise <= gv else "gv"


def pairwise_dots(train: Factors, targets: Factors) -> torch.Tensor:
    """``[i, v] = ⟨g_i, g_v⟩`` for one layer: ``(A_b A_vᵀ + 1) ⊙ (B_b B_vᵀ)``."""
    return add_pairwise(None, train, targets)


def add_pairwise(acc: torch.Tensor | None, train: Factors, targets: Factors) -> torch.Tensor:
    """``acc + pairwise_dots(train, targets)``, in place on ``acc`` (or a new matrix when None).

    ``(G_a + 1) ⊙ G_b`` is formed as ``G_b + G_a ⊙ G_b`` by one fused kernel, so summing the
    layers costs at most two passes over an ``[n_train, n_targets]`` matrix per layer beside the
    two Gram matmuls, and no ``+ 1`` temporary.
    """
    if train.v is not None:
        return train.v @ targets.v.T if acc is None else acc.addmm_(train.v, targets.v.T)
    gram_a = train.a @ targets.a.T
    gram_b = train.b @ targets.b.T
    if acc is None:
        return gram_b.addcmul_(gram_a, gram_b) if train.bias else gram_a.mul_(gram_b)
    if train.bias:
        acc.add_(gram_b)
    return acc.addcmul_(gram_a, gram_b)


def gv_dots(train: Factors, targets: Factors) -> torch.Tensor:
    """``[i] = ⟨g_i, Σ_v g_v⟩ = b_iᵀ G_v a_i + b_i·Σ_v b_v`` with ``G_v = Σ_v b_v a_vᵀ``.

    The product is taken on the narrower side: ``rowsum(B ⊙ (A G_vᵀ + Σb_v))`` touches
    ``n × d_out`` elements after the matmul, ``rowsum((B G_v) ⊙ A)`` ``n × d_in``.
    """
    g_v = targets.b.T @ targets.a  # d_out x d_in
    if train.b.shape[1] <= train.a.shape[1]:
        side = torch.addmm(targets.b.sum(0), train.a, g_v.T) if train.bias else train.a @ g_v.T
        return side.mul_(train.b).sum(1)
    out = (train.b @ g_v).mul_(train.a).sum(1)
    if train.bias:
        out += train.b @ targets.b.sum(0)
    return out


def summed_dots(train: Factors, targets: Factors, form: Form) -> torch.Tensor:
    """``[i] = ⟨g_i, Σ_v g_v⟩`` for one layer, by the requested exact form."""
    if train.v is not None:
        return train.v @ targets.v.sum(0)
    if form == "pairwise":
        return add_pairwise(None, train, targets).sum(1)
    return gv_dots(train, targets)


def layer_dims(module: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` for ``cheaper_form``: a Linear's input (plus one for the bias) and output widths;
    ``(1, 1)`` for a LayerNorm, whose explicit vectors have one form only."""
    if isinstance(module, nn.Linear):
        return module.in_features + 1, module.out_features
    return 1, 1  # LayerNorm: explicit vectors, form irrelevant
