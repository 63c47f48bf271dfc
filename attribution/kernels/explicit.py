"""``VectorGrads``: per-example gradients held as explicit ``[n, P]`` vectors.

For layers whose per-example gradient is small and has no cheaper factored form (normalization
scales and shifts, a lone bias): a kernel forms the vectors once (e.g. ``Σ_t x̂_t ⊙ b_t`` and
``Σ_t b_t`` for a norm layer) and every form of the face follows by plain matrix products, the
TRAK projection included (the face's dense default, through ``vectors()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import LayerGrads


@dataclass
class VectorGrads(LayerGrads):
    """Per-example gradients as explicit ``[n, P]`` vectors (made by the norm kernels' ``affine_grads``)."""

    v: torch.Tensor  # [n, P]: the parameters of ``params`` flattened and concatenated in order
    params: tuple[nn.Parameter, ...]

    def __len__(self) -> int:
        return self.v.shape[0]

    def rows(self, sl: slice) -> VectorGrads:
        """Rows ``sl`` of ``v`` (a view), with the same parameters."""
        return VectorGrads(self.v[sl], self.params)

    def vectors(self) -> torch.Tensor:
        """``v`` itself, for the face's dense ``project`` and another ``VectorGrads``' ``gram``."""
        return self.v

    def summed(self) -> list[torch.Tensor]:
        """The column sums of ``v`` (fp32), split and reshaped back into one tensor per parameter."""
        total = self.v.sum(0, dtype=torch.float32)
        parts = total.split([p.numel() for p in self.params])
        return [s.reshape(p.shape) for s, p in zip(parts, self.params, strict=True)]

    def dot(self, g: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[n]`` fp32: ``v`` times ``g`` flattened and concatenated in ``params`` order (one matvec)."""
        flat = torch.cat([t.reshape(-1).float() for t in g])
        return self.v.float() @ flat

    def gram(self, other: LayerGrads) -> torch.Tensor:
        """``[n, m]`` fp32: ``v`` times ``other``'s explicit vectors, transposed (one matmul)."""
        return self.v.float() @ other.vectors().float().T

    def gram_cost(self, n_other: int) -> float:
        """``n · n_other · P``: the one matmul of ``gram``."""
        return float(self.v.shape[0] * n_other * self.v.shape[1])

    def dot_cost(self) -> float:
        """``n · P``: the one matvec of ``dot``."""
        return float(self.v.numel())
