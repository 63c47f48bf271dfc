"""Seeded random projections of per-example gradients to ``k`` dims per layer (TRAK features).

Each layer has columns of its own (as LoGra's per-layer projections): a layer with at most ``k``
parameters is kept exactly, a larger one is projected to ``k`` dims. The kernel that reads the
features is then block-diagonal by layer (``trak_model.BlockInverse``), each layer's curvature damped
on its own scale, as Kronfluence's EK-FAC blocks are. Why not one ``k``-dim sketch of the whole
gradient (every layer projected to all ``k`` and the parts added, as TRAK's dense projection makes)?
Its one kernel lets the layers with the largest gradients (a CNN's convolutions) drown the rest,
and one ridge cannot suit layers whose curvatures differ by orders of magnitude: on the bench's CNN
that sum reached LDS 0.28 at ``k = 512`` where the per-layer blocks reach 0.39-0.41 (0.15 against
0.17-0.18 on the 2-layer transformer; stop 23's notes). Splitting one ``k`` among the layers instead
leaves each about ``k / layers`` dims (25 on that transformer, LDS 0.14): the width is per layer.

A factored layer (``g_i = Σ_t b_t a_tᵀ``, ``a`` with a column of ones for the bias) is projected
with a Kronecker-structured matrix, ``vec((B_i P_out)ᵀ (A_i P_in))`` without forming ``g_i`` (LoGra),
``k_out = ⌈√k⌉``, ``k_in = ⌈k / k_out⌉``, of which the first ``k`` products are kept: each product of
two independent random columns is unbiased, so any ``k`` of them are. A layer with a side thinner
than that (a classifier head, a first convolution) would lose rank under a Kronecker projection and
is projected densely (``[P, k]``), as explicit-vector layers (norms) are. Entries are Rademacher
(``±1``) or Gaussian, scaled so inner products are unbiased. Matrices are drawn on the CPU from
``(seed, checkpoint, layer index)`` alone: the same bytes on every run and thread count, then moved
to the gradients' device.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

Distribution = Literal["rademacher", "gaussian"]


@dataclass
class LayerProjector:
    """One layer's part of one checkpoint's features: its gradient in ``k`` dims, in its own columns
    ``offset : offset + k``. ``exact``: ``k`` is the layer's parameter count, so it is kept as it is;
    otherwise it is projected at random, with matrices of its own for each checkpoint, so that
    averaging over checkpoints also averages the projections' errors (as TRAK's ensembles do)."""

    k: int
    seed: int
    index: int
    distribution: Distribution = "rademacher"
    checkpoint: int = 0
    offset: int = 0
    exact: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.distribution not in ("rademacher", "gaussian"):
            raise ValueError(f"projection must be 'rademacher' or 'gaussian', got {self.distribution!r}")
        if self.k < 1:
            raise ValueError(f"a layer's projection needs k >= 1, got {self.k}")

    def sides(self) -> tuple[int, int]:
        """``(k_out, k_in)`` of the Kronecker form: ``k_out·k_in ≥ k``, of which the first ``k`` are kept."""
        k_out = math.isqrt(self.k - 1) + 1
        return k_out, -(-self.k // k_out)

    def kron(
        self, d_out: int, d_in: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
        """``(P_out [d_out, k_out], P_in [d_in, k_in])``; ``(None, None)`` = kept exactly; None = a side
        is thinner than ``sides()``: project the layer densely (``dense(d_out·d_in)``). ``d_in`` counts
        the bias column."""
        if self.exact:
            return None, None
        k_out, k_in = self.sides()
        if d_out < k_out or d_in < k_in:
            return None
        key = ("kron", d_out, d_in)
        if key not in self._cache:
            gen = self._generator()
            p_out = self._draw(d_out, k_out, gen)
            p_in = self._draw(d_in, k_in, gen).mul_(math.sqrt(k_out * k_in / self.k))
            self._cache[key] = (p_out, p_in)
        return tuple(self._on(key, j, device) for j in range(2))  # type: ignore[return-value]

    def dense(self, p: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """``[p, k]`` for an explicit gradient vector of length ``p``; ``None`` = kept exactly."""
        if self.exact:
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
        key = hashlib.sha256(f"{self.seed}/{self.checkpoint}/{self.index}".encode()).digest()
        return torch.Generator(device="cpu").manual_seed(int.from_bytes(key[:8], "little") >> 1)

    def _draw(self, rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
        if self.distribution == "gaussian":
            return torch.randn(rows, cols, generator=gen) / math.sqrt(cols)
        signs = torch.randint(0, 2, (rows, cols), generator=gen).float().mul_(2.0).sub_(1.0)
        return signs.div_(math.sqrt(cols))


def layer_projectors(
    sizes: Sequence[int], k: int, seed: int, distribution: Distribution = "rademacher", checkpoint: int = 0
) -> list[LayerProjector]:
    """One seeded projector per scored layer (by position) of one checkpoint, each in columns of its
    own: a layer of at most ``k`` parameters kept exactly, a larger one projected to ``k`` dims."""
    out, offset = [], 0
    for i, size in enumerate(sizes):
        width = min(size, k)
        out.append(LayerProjector(width, seed, i, distribution, checkpoint, offset, exact=size <= k))
        offset += width
    return out


def features_dim(projectors: Sequence[LayerProjector]) -> int:
    """The width of the features the layers' parts are added into."""
    return max(p.offset + p.k for p in projectors)


def add_parts(parts: Sequence[torch.Tensor], projectors: Sequence[LayerProjector]) -> torch.Tensor:
    """``[n, dim]``: each layer's projected part (``[n, k]``) in its columns."""
    out = parts[0].new_zeros(parts[0].shape[0], features_dim(projectors))
    for part, p in zip(parts, projectors, strict=True):
        out[:, p.offset : p.offset + p.k] += part
    return out


def dense_project(v: torch.Tensor, projector: LayerProjector) -> torch.Tensor:
    """``[n, k]`` float32: explicit ``[n, P]`` gradients times the layer's dense matrix."""
    v = v.float()
    p = projector.dense(v.shape[1], v.device)
    return v if p is None else v @ p


def kron_project(
    a: torch.Tensor, b: torch.Tensor, bias: bool, projector: LayerProjector
) -> torch.Tensor:
    """``[n, k]`` float32: ``vec((B_i P_out)ᵀ (A_i P_in))`` for ``a [n, T, d_in]`` and ``b [n, T, d_out]``
    (``A`` with a column of ones when ``bias``), row-major as the gradient ``[d_out, d_in (+1)]`` is
    flattened: ``vec(g_i) @ (P_out ⊗ P_in)``, its first ``k`` columns; thin layers densely."""
    a, b = a.float(), b.float()
    sides = projector.kron(b.shape[-1], a.shape[-1] + bias, a.device)
    p_out, p_in = (None, None) if sides is None else sides
    if p_in is None:
        if bias:
            a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], -1)
    else:
        a = a @ p_in[:-1] + p_in[-1] if bias else a @ p_in
    if p_out is not None:
        b = b @ p_out
    g = torch.einsum("nto,nti->noi", b, a).flatten(1)
    return dense_project(g, projector) if sides is None else g[:, : projector.k]


def matrix_project(matrix: torch.Tensor, projector: LayerProjector) -> torch.Tensor:
    """``[k]``: one whole gradient ``M [d_out, d_in]`` under the layer's projection, as ``kron_project``
    projects its rows (whose sum over tokens is this ``M``)."""
    sides = projector.kron(matrix.shape[0], matrix.shape[1], matrix.device)
    if sides is None:
        return dense_project(matrix.reshape(1, -1), projector)[0]
    p_out, p_in = sides
    if p_out is not None:
        matrix = p_out.T @ matrix
    if p_in is not None:
        matrix = matrix @ p_in
    return matrix.flatten()[: projector.k]
