"""``nn.Embedding`` on ids ``[n, ...]``: per-example gradient ``Σ_t onehot(id_t) b_tᵀ``.

Tokens (every position after the first dim) are summed inside an example; a dense one-hot is
never formed. Tokens at ``padding_idx`` are dropped: torch gives that row no gradient from this
module, even where the model lets a padded token reach the loss. ``sparse=True`` changes only
how torch stores the batch gradient, not its value: the driver sets dense gradients itself.
- summed: ``index_add`` of the ``b`` rows into ``[num_embeddings, d]``;
- summed-target form: ``⟨g_i, G⟩ = Σ_t b_t · G[id_t]`` (a gather);
- Gram form: ``⟨g_i, g_j⟩ = Σ_{t,s} [id_t = id_s] (b_t · b_s)``, or the materialized
  ``[n, num_embeddings·d]`` gradients when the vocabulary is small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedModelError
from . import Kernel, LayerGrads, register
from .projection import LayerProjector, dense_project


@dataclass
class EmbeddingGrads(LayerGrads):
    """An Embedding layer's per-example gradients, kept factored: each token's id and output gradient.

    Made by ``EmbeddingKernel.grads``, which zeroes ``b`` at ``padding_idx`` tokens.
    """

    ids: torch.Tensor  # [n, T] int64
    b: torch.Tensor  # [n, T, d], zero at padding_idx tokens
    params: tuple[nn.Parameter, ...]

    @property
    def vocab(self) -> int:
        """``num_embeddings``: ``V``, the rows of the ``[V, d]`` weight."""
        return self.params[0].shape[0]

    def __len__(self) -> int:
        return self.ids.shape[0]

    def rows(self, sl: slice) -> EmbeddingGrads:
        """Rows ``sl`` of the ids and output gradients, with the same parameter."""
        return EmbeddingGrads(self.ids[sl], self.b[sl], self.params)

    def summed(self) -> list[torch.Tensor]:
        """``[num_embeddings, d]`` fp32: each token's ``b`` row added into its id's row (``index_add``)."""
        d = self.b.shape[-1]
        out = torch.zeros(self.vocab, d, dtype=torch.float32, device=self.b.device)
        return [out.index_add_(0, self.ids.flatten(), self.b.reshape(-1, d).float())]

    def project(self, projector: LayerProjector) -> torch.Tensor:
        """``vec(Σ_t (P_outᵀ e_{id_t})(P_inᵀ b_t)ᵀ)``: the Kronecker projection of ``Σ_t e_{id_t} b_tᵀ``
        (``[V, d]``), the one-hot side gathered as rows of ``P_out`` rather than multiplied; a thin
        table (``projector.kron`` None) densely, from its materialized rows."""
        sides = projector.kron(self.vocab, self.b.shape[-1], self.b.device)
        if sides is None:
            return dense_project(_materialized(self), projector)
        p_out, p_in = sides
        b = self.b.float()
        rows = F.one_hot(self.ids, self.vocab).float() if p_out is None else p_out[self.ids]
        cols = b if p_in is None else b @ p_in
        return torch.einsum("nto,nti->noi", rows, cols).flatten(1)[:, : projector.k]

    def dot(self, g: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[n]`` fp32: ``Σ_t b_t · G[id_t]``, ``G``'s rows gathered by id (no one-hot)."""
        picked = g[0].float()[self.ids]  # [n, T, d]
        return (picked * self.b).sum((1, 2), dtype=torch.float32)

    def gram(self, other: LayerGrads) -> torch.Tensor:
        """``[n, m]`` by the cheaper form: materialized ``[n, V·d]`` gradients, or token pairs
        ``Σ_{t,s} [id_t = id_s] (b_t·b_s)``."""
        assert isinstance(other, EmbeddingGrads)
        n, t, d = self.b.shape
        m, s = other.ids.shape
        if _materialized_cost(self, m) <= n * m * t * s * d:
            return _materialized(self) @ _materialized(other).T
        bb = torch.einsum("itd,jsd->ijts", self.b.float(), other.b.float())
        same = self.ids[:, None, :, None] == other.ids[None, :, None, :]
        return (bb * same).sum((2, 3))

    def gram_cost(self, n_other: int) -> float:
        """Multiply-adds of the cheaper ``gram`` form, ``other`` assumed to have as many tokens per row."""
        n, t, d = self.b.shape
        return float(min(_materialized_cost(self, n_other), n * n_other * t * t * d))

    def dot_cost(self) -> float:
        """``n · T · d``: the gather-and-multiply of ``dot``."""
        return float(self.b.numel())


def _materialized_cost(g: EmbeddingGrads, n_other: int) -> int:
    n, t, d = g.b.shape
    return (n + n_other) * t * d + n * n_other * g.vocab * d


def _materialized(g: EmbeddingGrads) -> torch.Tensor:
    """``[n, num_embeddings·d]``: each row's gradient, flattened."""
    n, t, d = g.b.shape
    out = torch.zeros(n, g.vocab, d, dtype=torch.float32, device=g.b.device)
    out.scatter_add_(1, g.ids[..., None].expand(n, t, d), g.b.float())
    return out.flatten(1)


class EmbeddingKernel(Kernel):
    """``nn.Embedding``: keeps the ids as ``[n, T]`` int64 and returns ``EmbeddingGrads``."""

    types = (nn.Embedding,)

    def check(self, name: str, module: nn.Module) -> None:
        """Refuse ``max_norm`` and ``scale_grad_by_freq``: under either, per-example gradients are not
        those of the batch."""
        assert isinstance(module, nn.Embedding)
        why = None
        if module.max_norm is not None:
            why = "max_norm renormalizes the weight rows in the forward pass"
        elif module.scale_grad_by_freq:
            why = "scale_grad_by_freq scales each row's gradient by its count in the whole batch"
        if why:
            raise UnsupportedModelError(
                f"layer {name!r} (Embedding): {why}, so per-example gradients are not those of the "
                "batch; build it without that option"
            )

    def keep(self, module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """The ids, detached, as ``[n, T]`` int64 (every position after the first dim a token)."""
        ids = args[0].detach()
        return ids.reshape(ids.shape[0], -1).long()

    def grads(self, module: nn.Module, kept: object, grad_output: torch.Tensor) -> EmbeddingGrads:
        """``EmbeddingGrads`` with the output gradient as ``[n, T, d]``, zeroed at ``padding_idx`` tokens."""
        assert isinstance(module, nn.Embedding) and isinstance(kept, torch.Tensor)
        b = grad_output.reshape(kept.shape[0], kept.shape[1], -1)
        if module.padding_idx is not None:
            b = b * (kept != module.padding_idx).unsqueeze(-1).to(b.dtype)
        return EmbeddingGrads(kept, b, (module.weight,))

    def gradient_matrix(self, module: nn.Module, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """The weight's gradient as is: ``[V, d]``, the one-hot side first, as ``project`` factors it."""
        return grads[0]  # [V, d]: the one-hot side first, as EmbeddingGrads.project factors it


register(EmbeddingKernel())
