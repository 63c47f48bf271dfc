"""Seeded random projections of one layer's per-example gradients (TRAK features).

A factored layer (``g_i = Σ_t b_t a_tᵀ``, ``a`` with a column of ones for the bias) is projected
with a Kronecker-structured matrix ``P_out ⊗ P_in``: ``vec(P_outᵀ g_i P_in) = vec((B_i P_out)ᵀ
(A_i P_in))``, ``k_out·k_in`` dims, without forming ``g_i`` (LoGra). A layer whose gradients are
explicit vectors (``LayerGrads.vectors``) gets a dense ``[P, k]`` matrix. Entries are Rademacher
(``±1``) or Gaussian, scaled by ``1/√k`` per side so inner products are unbiased; a side no larger
than its budget is kept exactly (identity), so a layer that fits is not blurred at all. Matrices
are drawn on the CPU from ``(seed, layer index)`` alone: the same bytes on every run and thread
count, then moved to the gradients' device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

Distribution = Literal["rademacher", "gaussian"]


@dataclass
class LayerProjector:
    """The projection of one layer to ``k`` dims; layers ask for the matrices of their shapes."""

    k: int
    seed: int
    index: int
    distribution: Distribution = "rademacher"
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.distribution not in ("rademacher", "gaussian"):
            raise ValueError(f"projection must be 'rademacher' or 'gaussian', got {self.distribution!r}")
        if self.k < 1:
            raise ValueError(f"a layer's projection needs k >= 1, got {self.k}")

    def kron(
        self, d_out: int, d_in: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(P_out [d_out, k_out], P_in [d_in, k_in])`` with ``k_out·k_in ≤ k``; ``None`` = identity.

        ``d_in`` counts the bias column. ``k_out = min(d_out, ⌊√k⌋)``, ``k_in = min(d_in, ⌊k/k_out⌋)``.
        """
        if d_out * d_in <= self.k:
            return None, None
        k_out = min(d_out, max(1, math.isqrt(self.k)))
        k_in = min(d_in, max(1, self.k // k_out))
        key = ("kron", d_out, d_in)
        if key not in self._cache:
            gen = self._generator()
            p_out = None if k_out == d_out else self._draw(d_out, k_out, gen)
            p_in = None if k_in == d_in else self._draw(d_in, k_in, gen)
            self._cache[key] = (p_out, p_in)
        return tuple(self._on(key, j, device) for j in range(2))  # type: ignore[return-value]

    def dense(self, p: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """``[p, k]`` for an explicit gradient vector of length ``p``; ``None`` = identity (``p ≤ k``)."""
        if p <= self.k:
            return None
        key = ("dense", p)
        if key not in self._cache:
            self._cache[key] = (self._draw(p, self.k, self._generator()),)
        return self._on(key, 0, device)

    def _on(self, key: tuple, j: int, device: torch.device | str) -> torch.Tensor | None:
        """Matrix ``j`` of ``key`` on ``device`` (drawn on the CPU, copied once per device)."""
        t = self._cache[key][j]
        device = torch.device(device)
        if t is None or device.type == "cpu":
            return t
        moved = (key, j, str(device))
        if moved not in self._cache:
            self._cache[moved] = t.to(device)
        return self._cache[moved]

    def _generator(self) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + self.index)

    def _draw(self, rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
        if self.distribution == "gaussian":
            return torch.randn(rows, cols, generator=gen) / math.sqrt(cols)
        signs = torch.randint(0, 2, (rows, cols), generator=gen).float().mul_(2.0).sub_(1.0)
        return signs.div_(math.sqrt(cols))


def split_budget(sizes: Sequence[int], k: int) -> list[int]:
    """``k`` dims over layers of ``sizes`` parameters: each layer no larger than an even share gets
    its size (kept exactly), the rest share what is left evenly (so ``k ≥ Σ sizes`` keeps all)."""
    out = [0] * len(sizes)
    left, budget = list(range(len(sizes))), k
    while left:
        share = budget // len(left)
        small = [i for i in left if sizes[i] <= share]
        if not small:
            for j, i in enumerate(left):
                out[i] = max(1, share + (1 if j < budget % len(left) else 0))
            break
        for i in small:
            out[i] = sizes[i]
            budget -= sizes[i]
        left = [i for i in left if sizes[i] > share]
    return out


def layer_projectors(
    sizes: Sequence[int], k: int, seed: int, distribution: Distribution = "rademacher"
) -> list[LayerProjector]:
    """One seeded projector per scored layer (by position), ``k`` dims in all (``split_budget``)."""
    return [LayerProjector(k_l, seed, i, distribution) for i, k_l in enumerate(split_budget(sizes, k))]


def kron_project(
    a: torch.Tensor, b: torch.Tensor, bias: bool, projector: LayerProjector
) -> torch.Tensor:
    """``[n, k_out·k_in]`` float32: ``vec((B_i P_out)ᵀ (A_i P_in))`` for ``a [n, T, d_in]`` and
    ``b [n, T, d_out]`` (``A`` with a column of ones when ``bias``), row-major as the gradient
    ``[d_out, d_in (+1)]`` is flattened: ``vec(g_i) @ (P_out ⊗ P_in)``."""
    a, b = a.float(), b.float()
    p_out, p_in = projector.kron(b.shape[-1], a.shape[-1] + bias, a.device)
    if p_in is None:
        if bias:
            a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], -1)
    else:
        a = a @ p_in[:-1] + p_in[-1] if bias else a @ p_in
    if p_out is not None:
        b = b @ p_out
    return torch.einsum("nto,nti->noi", b, a).flatten(1)


def matrix_project(matrix: torch.Tensor, projector: LayerProjector) -> torch.Tensor:
    """``[k_out·k_in]``: ``vec(P_outᵀ M P_in)`` for one whole gradient ``M [d_out, d_in]``, the layout
    ``kron_project`` flattens (its sum over rows' tokens is this ``M``)."""
    p_out, p_in = projector.kron(matrix.shape[0], matrix.shape[1], matrix.device)
    if p_out is not None:
        matrix = p_out.T @ matrix
    if p_in is not None:
        matrix = matrix @ p_in
    return matrix.flatten()
