"""Per-example gradient algebra, one kernel per module type, behind one small face.

A kernel sees what an ordinary forward/backward pass already holds for its module (what the
forward hook kept, and the gradient of the loss with respect to the module's output) and
returns ``LayerGrads``: the per-example gradients of the rows of that pass, kept factored. The
driver asks them only three things: the summed gradient (the update, and the target gradient),
the inner product of every row's gradient with a given parameter-shaped tensor (the summed-target
form, exact for any preconditioner; ``summed_and_dot`` asks for both at once), and pairwise inner
products between two row sets (the Gram form). Each kernel picks the cheapest exact way for its
shapes; none forms a per-example gradient it does not need.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import UnsupportedModelError

if TYPE_CHECKING:
    from .projection import LayerProjector

# What a row's gradient is dotted with: the tensors, or how to make them from the summed gradient.
Weigh = Sequence[torch.Tensor] | Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]


class LayerGrads(ABC):
    """Per-example gradients ``g_i`` of one module's parameters, for the rows of one pass."""

    params: tuple[nn.Parameter, ...]

    @abstractmethod
    def __len__(self) -> int:
        """The number of rows."""

    @abstractmethod
    def rows(self, sl: slice) -> LayerGrads:
        """The same gradients for rows ``sl`` only."""

    @abstractmethod
    def summed(self) -> list[torch.Tensor]:
        """``Σ_i g_i`` per parameter, parameter-shaped (fp32)."""

    @abstractmethod
    def dot(self, g: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[n]``: ``⟨g_i, g⟩`` for each row, ``g`` parameter-shaped (one tensor per parameter)."""

    def summed_and_dot(self, g: Weigh) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``summed()`` and ``dot(g)`` in one go: ``g`` parameter-shaped, or made from the sum by
        ``g(summed)`` (Adam's preconditioner needs the complete batch gradient first). A kernel may
        form each row's gradient once for both (cheaper than two products over the tokens)."""
        summed = self.summed()
        return summed, self.dot(g(summed) if callable(g) else g)

    @abstractmethod
    def gram(self, other: LayerGrads) -> torch.Tensor:
        """``[n, m]``: ``⟨g_i, g'_j⟩`` between these rows and ``other``'s (the same module)."""

    def gram_cost(self, n_other: int) -> float:
        """Multiply-adds of ``gram`` against ``n_other`` rows (inf: prefer ``dot``)."""
        return float("inf")

    def dot_cost(self) -> float:
        """Multiply-adds of one ``dot``."""
        return 0.0

    def project(self, projector: LayerProjector) -> torch.Tensor:
        """``[n, k]`` float32: each row's gradient under this layer's seeded projection (TRAK features).

        This default serves layers whose gradients are explicit vectors: ``vectors()`` times a dense
        ``[P, k]`` matrix. Factored layers override it with a Kronecker-structured projection.
        """
        from .projection import dense_project

        return dense_project(self.vectors(), projector)

    def vectors(self) -> torch.Tensor:
        """``[n, P]``: each row's gradient, its parameters flattened in ``params`` order (explicit layers)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no projection for TRAK features; implement vectors() (explicit "
            "[n, P] gradients, projected densely) or project() (a structured projection)"
        )


class Kernel(ABC):
    """The per-example gradients of one module type."""

    types: tuple[type[nn.Module], ...] = ()

    def check(self, name: str, module: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Refuse, by name, a configuration of the module this kernel cannot score exactly."""

    @abstractmethod
    def keep(self, module: nn.Module, args: tuple, kwargs: dict) -> object:
        """What the forward hook keeps for the backward (detached inputs, indices, masks)."""

    @abstractmethod
    def grads(self, module: nn.Module, kept: object, grad_output: torch.Tensor) -> LayerGrads:
        """Per-example gradients from what ``keep`` kept and ``∂Σℓ/∂output``."""

    def gradient_matrix(self, module: nn.Module, grads: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """The module's whole gradient (one example's, e.g. from ``autograd.grad``) in the ``[d_out, d_in]``
        layout its ``LayerGrads.project`` factors; None for layers projected as explicit vectors."""
        return None

    def project_gradient(
        self, module: nn.Module, grads: Sequence[torch.Tensor], projector: LayerProjector
    ) -> torch.Tensor:
        """``[k]`` float32: one example's gradient (per parameter, in ``module.parameters()`` order)
        under this layer's projection, equal to ``LayerGrads.project`` of a one-row pass (tested):
        the fast path for a single query, from one ordinary ``autograd.grad``."""
        from .projection import dense_project, matrix_project

        matrix = self.gradient_matrix(module, grads)
        if matrix is not None:
            return matrix_project(matrix.float(), projector)
        return dense_project(torch.cat([g.flatten() for g in grads])[None], projector)[0]


_REGISTRY: list[Kernel] = []


def register(kernel: Kernel) -> Kernel:
    """Add ``kernel`` to those ``kernel_for`` tries in order (the first match wins); returns it."""
    _REGISTRY.append(kernel)
    return kernel


def kernel_for(name: str, module: nn.Module) -> Kernel:
    """The kernel of ``module``'s exact type family, after its ``check``; or a named refusal."""
    for kernel in _REGISTRY:
        if isinstance(module, kernel.types):
            kernel.check(name, module)
            return kernel
    supported = ", ".join(t.__name__ for k in _REGISTRY for t in k.types)
    raise UnsupportedModelError(
        f"layer {name!r} ({type(module).__name__}) has trainable parameters but no attribution kernel "
        f"(supported: {supported}); freeze its parameters (requires_grad_(False)) or use a supported layer"
    )


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """``[n, ..., d]`` as ``[n, T, d]`` (T = the product of the middle dims, 1 for a 2-d input)."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


from . import conv as _conv  # noqa: E402,F401  (registers the kernels)
from . import embedding as _embedding  # noqa: E402,F401
from . import linear as _linear  # noqa: E402,F401
from . import norm as _norm  # noqa: E402,F401

__all__ = ["Kernel", "LayerGrads", "Weigh", "as_rows", "kernel_for", "register"]
