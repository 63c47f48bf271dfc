"""``nn.Conv2d`` as a Linear layer over output positions (unfold / im2col).

Each output position ``l`` of an example sees one patch of its input, ``a_l = unfold(x)[:, l]``
(``C_in·kh·kw`` values, in the order of ``weight.view(C_out, -1)``), and produces ``W a_l + bias``.
The per-example gradient is therefore ``Σ_l b_l a_lᵀ`` (and ``Σ_l b_l``) with ``b_l`` the output
gradient at ``l``: exactly a Linear layer on ``[n, L, C_in·kh·kw]`` tokens, so ``LinearGrads``
supplies every form (summed, summed-target, Gram, materialized, projected) and this module only
reshapes the weight to and from ``[C_out, C_in·kh·kw]``.

Neither the forward hook nor ``grads`` unfolds: patches cost ``kh·kw ×`` the input's memory, so
they are made on first use and kept with the ``ConvGrads`` (and its row slices), which the
streaming driver drops as soon as it has handled the layer. Padding modes other
than zeros are applied with ``F.pad`` before unfolding, as ``nn.Conv2d`` does; string padding
(``'same'``, ``'valid'``) becomes the explicit, possibly asymmetric, padding torch uses for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedModelError
from . import Kernel, LayerGrads, Weigh, register
from .linear import LinearGrads, gram_cost, weight_matrix
from .projection import LayerProjector


@dataclass
class ConvGrads(LayerGrads):
    """A Conv2d layer's per-example gradients: its input and output gradient, unfolded on first use.

    Every form is ``LinearGrads``' on the patches.
    """

    x: torch.Tensor  # [n, C_in, H, W], the kept input
    b: torch.Tensor  # [n, L, C_out], the output gradient per output position
    module: nn.Conv2d
    params: tuple[nn.Parameter, ...]
    _linear: LinearGrads | None = field(default=None, repr=False, compare=False)

    def linear(self) -> LinearGrads:
        """The same gradients as a Linear layer on ``[n, L, C_in·kh·kw]`` patches (unfolded once)."""
        if self._linear is None:
            self._linear = LinearGrads(patches(self.module, self.x), self.b, self.params)
        return self._linear

    def __len__(self) -> int:
        return self.x.shape[0]

    def rows(self, sl: slice) -> ConvGrads:
        """Rows ``sl`` of the input and output gradient, and of the patches if already unfolded."""
        linear = None if self._linear is None else self._linear.rows(sl)
        return ConvGrads(self.x[sl], self.b[sl], self.module, self.params, linear)

    def summed(self) -> list[torch.Tensor]:
        """``LinearGrads.summed`` on the patches, the weight's sum folded back to
        ``[C_out, C_in, kh, kw]``."""
        out = self.linear().summed()
        out[0] = out[0].reshape(self.params[0].shape)
        return out

    def dot(self, g: Sequence[torch.Tensor]) -> torch.Tensor:
        """``LinearGrads.dot`` on the patches, ``g``'s weight unfolded to ``[C_out, C_in·kh·kw]``."""
        return self.linear().dot(self._unfolded(g))

    def summed_and_dot(self, g: Weigh) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``LinearGrads.summed_and_dot`` on the patches: ``g`` unfolded to ``[C_out, C_in·kh·kw]``, the
        sums folded back to the weight's shape (a callable ``g`` is given the folded sums)."""
        shape = self.params[0].shape

        def folded(sums: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            return [sums[0].reshape(shape), *sums[1:]]

        def from_sum(sums: list[torch.Tensor]) -> list[torch.Tensor]:
            return self._unfolded(g(folded(sums)))

        sums, dots = self.linear().summed_and_dot(from_sum if callable(g) else self._unfolded(g))
        return folded(sums), dots

    @staticmethod
    def _unfolded(g: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Parameter-shaped tensors in ``LinearGrads``' layout: the weight as ``[C_out, C_in·kh·kw]``."""
        return [g[0].reshape(g[0].shape[0], -1), *g[1:]]

    def gram(self, other: LayerGrads) -> torch.Tensor:
        """``LinearGrads.gram`` between both sides' patches (``other`` from the same layer)."""
        assert isinstance(other, ConvGrads)
        return self.linear().gram(other.linear())

    def _shape(self) -> tuple[int, int, int, int]:
        w = self.params[0]
        return self.x.shape[0], self.b.shape[1], w[0].numel(), w.shape[0]

    def gram_cost(self, n_other: int) -> float:
        """``LinearGrads``' Gram cost for the patches' shape, reckoned without unfolding them."""
        return gram_cost(*self._shape(), n_other)

    def dot_cost(self) -> float:
        """``n · L · C_in·kh·kw · C_out``: ``LinearGrads.dot_cost`` of the patches, not unfolded."""
        n, t, d_in, d_out = self._shape()
        return float(n * t * d_in * d_out)

    def project(self, projector: LayerProjector) -> torch.Tensor:
        """``LinearGrads.project`` on the patches (Kronecker-structured, ``[n, k]`` fp32)."""
        return self.linear().project(projector)


def _side_padding(module: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` as ``F.pad`` takes it: string padding resolved as torch does
    (``'same'``: ``d·(k−1)`` in total per dim, the odd one on the right/bottom)."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0, 0, 0)
        out: list[int] = []
        for d, k in zip(reversed(module.dilation), reversed(module.kernel_size), strict=True):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)  # type: ignore[return-value]
    ph, pw = module.padding
    return (pw, pw, ph, ph)


def patches(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``[n, L, C_in·kh·kw]``: the input patch seen by each output position."""
    pad = _side_padding(module)
    if module.padding_mode != "zeros":
        x, padding = F.pad(x, pad, mode=module.padding_mode), 0
    elif pad[0] == pad[1] and pad[2] == pad[3]:
        padding = (pad[2], pad[0])
    else:
        x, padding = F.pad(x, pad), 0
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    return cols.transpose(1, 2)


class Conv2dKernel(Kernel):
    """``nn.Conv2d`` (``groups=1``): keeps the input; ``ConvGrads`` has one token per output position."""

    types = (nn.Conv2d,)

    def check(self, name: str, module: nn.Module) -> None:
        """Refuse grouped and depthwise convolutions (``groups != 1``): no kernel for them yet."""
        assert isinstance(module, nn.Conv2d)
        if module.groups != 1:
            raise UnsupportedModelError(
                f"layer {name!r} (Conv2d, groups={module.groups}) is a grouped or depthwise convolution, "
                "which has no attribution kernel yet; use groups=1 or freeze its parameters "
                "(requires_grad_(False))"
            )

    def keep(self, module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """The input (positional or ``input=``), detached, not unfolded: patches cost ``kh·kw ×`` more."""
        x = args[0] if args else kwargs["input"]
        return x.detach()

    def grads(self, module: nn.Module, kept: object, grad_output: torch.Tensor) -> ConvGrads:
        """``ConvGrads`` with the output gradient as ``[n, L, C_out]`` tokens and the input in its dtype;
        an unbatched input is one row. Patches wait for first use."""
        assert isinstance(module, nn.Conv2d) and isinstance(kept, torch.Tensor)
        x = kept if kept.dim() == 4 else kept.unsqueeze(0)  # an unbatched [C, H, W] input: one row
        b = grad_output.reshape(x.shape[0], module.out_channels, -1).transpose(1, 2)
        params = (module.weight,) if module.bias is None else (module.weight, module.bias)
        return ConvGrads(x.to(b.dtype), b, module, params)  # autocast: see LinearKernel.grads

    def gradient_matrix(self, module: nn.Module, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """``weight_matrix``: the weight unfolded to ``[C_out, C_in·kh·kw]``, the bias a last column."""
        return weight_matrix(grads)  # [C_out, C_in·kh·kw (+1)]: the unfolded patches' order


register(Conv2dKernel())
