"""Seeded random projection of per-example gradients, never materializing them.

A Linear layer's per-example gradient is ``b ⊗ [a, 1]``; projecting each factor with its own
Gaussian matrix gives ``(b Q) ⊗ ([a, 1] R)``, whose inner products are unbiased estimates of
the gradient inner products (LoGra's Kronecker-structured projection). A side no larger than
its budget is kept exactly (identity), so small layers are not blurred. LayerNorm gradients
are explicit vectors and get a dense Gaussian. Matrices are drawn from ``(seed, layer)``
with torch's CPU generator: the same seed gives the same features on any thread count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .ghost import Factors


@dataclass(frozen=True)
class LayerProjection:
    """Projection of one layer: ``q`` for the output side (or the vector), ``r`` for the input side."""

    q: torch.Tensor | None  # [d_out, k_out] or [d_vec, k]; None = identity
    r: torch.Tensor | None  # [d_in (+1 for bias), k_in]; None = identity; unused for vectors

    def dim(self, module: nn.Module) -> int:
        """The width of ``module``'s features: ``k_out·k_in`` for a Linear (a bias is one more input), the
        vector's projected length otherwise. ``Projector.dim`` sums it over the layers."""
        if isinstance(module, nn.Linear):
            k_out = module.out_features if self.q is None else self.q.shape[1]
            d_in = module.in_features + (module.bias is not None)
            k_in = d_in if self.r is None else self.r.shape[1]
            return k_out * k_in
        n_vec = _n_params(module)
        return n_vec if self.q is None else self.q.shape[1]


def _n_params(module: nn.Module) -> int:
    """Length of a LayerNorm's per-example gradient vector: weight and/or bias."""
    return sum(p.numel() for p in module.parameters(recurse=False))


def _gaussian(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(rows, cols, generator=gen) / math.sqrt(cols)


def _split(k: int, n: int) -> list[int]:
    return [k // n + (1 if i < k % n else 0) for i in range(n)]


@dataclass(frozen=True)
class Projector:
    """``k`` output dimensions split evenly over the scored layers."""

    layers: tuple[LayerProjection, ...]
    k: int
    seed: int

    @classmethod
    def build(cls, modules: list[nn.Module], k: int, seed: int) -> Projector:
        """Projections of the scored ``modules``, ``k`` split evenly over them, each drawn from ``(seed, layer
        index)``; a side (or a whole layer) that fits its share is kept exact."""
        out = []
        for i, (m, k_l) in enumerate(zip(modules, _split(k, len(modules)), strict=True)):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            k_l = max(k_l, 1)
            if isinstance(m, nn.Linear):
                d_a, d_b = m.in_features + (m.bias is not None), m.out_features
                if d_a * d_b <= k_l:
                    out.append(LayerProjection(None, None))
                    continue
                k_b = min(d_b, max(1, math.isqrt(k_l)))
                k_a = min(d_a, max(1, k_l // k_b))
                q = None if k_b == d_b else _gaussian(d_b, k_b, gen)
                r = None if k_a == d_a else _gaussian(d_a, k_a, gen)
                out.append(LayerProjection(q, r))
            else:
                d = _n_params(m)
                out.append(LayerProjection(None if d <= k_l else _gaussian(d, k_l, gen), None))
        return cls(tuple(out), k, seed)

    def dim(self, modules: list[nn.Module]) -> int:
        """Columns of ``project``'s features for ``modules``: each ``LayerProjection.dim``, summed."""
        return sum(p.dim(m) for p, m in zip(self.layers, modules, strict=True))

    def project(self, facts: list[Factors]) -> torch.Tensor:
        """[n, dim] float32 features of the per-example gradients described by ``facts``."""
        parts = []
        for p, f in zip(self.layers, facts, strict=True):
            if f.v is not None:
                parts.append(f.v if p.q is None else f.v @ p.q)
                continue
            b = f.b if p.q is None else f.b @ p.q
            if p.r is None:
                a = torch.cat([f.a, torch.ones(len(f.a), 1)], 1) if f.bias else f.a
            else:
                a = f.a @ p.r[:-1] + p.r[-1] if f.bias else f.a @ p.r
            parts.append((b[:, :, None] * a[:, None, :]).reshape(len(b), -1))
        return torch.cat(parts, 1)
