"""Per-example normalizations: ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``.

Their affine gradients are small (one weight and one bias entry per normalized feature or
channel), so each row's gradient is materialized: ``[n, P] = Σ_t (x̂_t ⊙ b_t, b_t)``, where ``x̂``
is the normalized input, recomputed in fp32 from the kept input by torch's own functional norm. Then
``dot`` is one matvec and ``gram`` one matmul. Each normalizes within one example, unlike
BatchNorm (refused by the driver). Without affine parameters a norm is never scored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import Kernel, register
from .explicit import VectorGrads


def affine_grads(module: nn.Module, xhat: torch.Tensor, b: torch.Tensor) -> VectorGrads:
    """From ``x̂`` and ``b`` as ``[n, T, D]`` (fp32; T summed, D the parameters' entries). ``x̂`` must be
    the caller's own fresh tensor: it is overwritten (one temporary less per step)."""
    params = tuple(p for p in (module.weight, getattr(module, "bias", None)) if p is not None)
    parts = [xhat.mul_(b).sum(1)] if module.weight is not None else []
    if getattr(module, "bias", None) is not None:
        parts.append(b.sum(1))
    return VectorGrads(torch.cat(parts, 1), params)


def _rows(t: torch.Tensor, d: int) -> torch.Tensor:
    """``[n, ..., *shape]`` as fp32 ``[n, T, D]`` (D = the trailing entries, ``d`` of them)."""
    return t.reshape(t.shape[0], -1, d).float()


class _Norm(Kernel):
    def keep(self, module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """The input, detached: ``grads`` recomputes ``x̂`` from it in fp32."""
        return args[0].detach()


class LayerNormKernel(_Norm):
    """``x̂ = (x − mean) / √(var + eps)`` over ``normalized_shape`` (biased variance)."""

    types = (nn.LayerNorm,)

    def grads(self, module: nn.Module, kept: object, grad_output: torch.Tensor) -> VectorGrads:
        """``affine_grads`` of ``x̂`` recomputed in fp32 by ``F.layer_norm`` over the flattened
        ``normalized_shape``."""
        assert isinstance(module, nn.LayerNorm) and isinstance(kept, torch.Tensor)
        d = math.prod(module.normalized_shape)
        xhat = F.layer_norm(_rows(kept, d), (d,), None, None, module.eps)
        return affine_grads(module, xhat, _rows(grad_output, d))


class RMSNormKernel(_Norm):
    """``x̂ = x / √(mean(x²) + eps)``; ``eps=None`` is the epsilon of torch's compute dtype (fp32
    for fp32, bf16 and fp16 inputs; fp64 for fp64), as ``F.rms_norm`` takes it."""

    types = (nn.RMSNorm,)

    def grads(self, module: nn.Module, kept: object, grad_output: torch.Tensor) -> VectorGrads:
        """``affine_grads`` of ``x̂`` recomputed in fp32 by ``F.rms_norm``, ``eps=None`` resolved as above."""
        assert isinstance(module, nn.RMSNorm) and isinstance(kept, torch.Tensor)
        eps = module.eps
        if eps is None:
            eps = torch.finfo(torch.float64 if kept.dtype == torch.float64 else torch.float32).eps
        d = math.prod(module.normalized_shape)
        xhat = F.rms_norm(_rows(kept, d), (d,), None, eps)
        return affine_grads(module, xhat, _rows(grad_output, d))


class GroupNormKernel(_Norm):
    """On ``[n, C, *spatial]``: ``x̂`` over each group of ``C/G`` channels × spatial; the weight and
    bias gradients ``[C]`` sum over spatial positions."""

    types = (nn.GroupNorm,)

    def grads(self, module: nn.Module, kept: object, grad_output: torch.Tensor) -> VectorGrads:
        """``affine_grads`` of ``x̂`` recomputed in fp32 by ``F.group_norm``: spatial positions are the
        summed tokens, channels the entries."""
        assert isinstance(module, nn.GroupNorm) and isinstance(kept, torch.Tensor)
        n, c = kept.shape[:2]
        xhat = F.group_norm(kept.float(), module.num_groups, None, None, module.eps).reshape(n, c, -1)
        b = grad_output.reshape(n, c, -1).float()
        return affine_grads(module, xhat.transpose(1, 2), b.transpose(1, 2))


register(LayerNormKernel())
register(RMSNormKernel())
register(GroupNormKernel())
