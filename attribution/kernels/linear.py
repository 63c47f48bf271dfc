"""``nn.Linear`` on ``[n, ..., d_in]``: per-example gradient ``Σ_t b_t a_tᵀ`` (and ``Σ_t b_t``).

Tokens (every position of the middle dims) are summed inside an example. Padded tokens need no
mask: a model that masks them gives them a zero output gradient, so they add nothing.
- summed-target form: ``⟨g_i, G⟩ = Σ_t b_tᵀ G a_t (+ b_t·g_bias)``, one matmul on the narrower side;
  beside the summed gradient, when tokens are many, each row's gradient is formed once instead
  (``summed_and_dot``: one product over the tokens where the sum and the dot take two);
- Gram form: ``⟨g_i, g_j⟩ = Σ_{t,s} (a_t·a_s + 1)(b_t·b_s)``, cheap when tokens are few;
- materialized: ``[n, d_out, d_in]`` per-example gradients, cheap when the layer is small;
- projected: ``vec((B P_out)ᵀ ([A, 1] P_in))`` with a seeded Kronecker-structured projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import Kernel, LayerGrads, Weigh, as_rows, register
from .projection import LayerProjector, kron_project


@dataclass
class LinearGrads(LayerGrads):
    """A Linear layer's per-example gradients, kept factored: each token's input and output gradient.

    Made by ``LinearKernel.grads``, and by ``ConvGrads.linear`` on patches; a bias is ``params[1]``.
    """

    a: torch.Tensor  # [n, T, d_in]
    b: torch.Tensor  # [n, T, d_out]
    params: tuple[nn.Parameter, ...]

    @property
    def bias(self) -> bool:
        """Whether ``params`` holds a bias: then each input row acts as if a one were appended."""
        return len(self.params) == 2

    def __len__(self) -> int:
        return self.a.shape[0]

    def rows(self, sl: slice) -> LinearGrads:
        """Rows ``sl`` of the inputs and output gradients, with the same parameters."""
        return LinearGrads(self.a[sl], self.b[sl], self.params)

    def summed(self) -> list[torch.Tensor]:
        """``Σ_i Σ_t b_t a_tᵀ`` (and ``Σ b_t`` for a bias), returned as fp32: every row's tokens in one
        matmul."""
        a = self.a.reshape(-1, self.a.shape[-1])
        b = self.b.reshape(-1, self.b.shape[-1])
        out = [(b.T @ a).float()]
        if self.bias:
            out.append(b.sum(0, dtype=torch.float32))
        return out

    def dot(self, g: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[n]`` fp32: ``Σ_t b_tᵀ G a_t (+ b_t·g_bias)`` per row, one matmul into the narrower of
        ``d_in`` and ``d_out`` (``g`` cast to the gradients' dtype)."""
        a, b = self.a, self.b
        w = g[0].to(a.dtype)
        # In place after the one matmul: a temporary per op would be fresh memory each step.
        if b.shape[-1] <= a.shape[-1]:
            side = a @ w.T  # [n, T, d_out]
            if self.bias:
                side.add_(g[1].to(a.dtype))
            return side.mul_(b).sum((1, 2), dtype=torch.float32)
        out = (b @ w).mul_(a).sum((1, 2), dtype=torch.float32)
        if self.bias:
            out += (b @ g[1].to(b.dtype)).sum(1, dtype=torch.float32)
        return out

    def summed_and_dot(self, g: Weigh) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Where ``materializing_pays``, forms each row's ``[d_out, d_in]`` gradient once for both the sum
        and the dot (in cache-sized chunks when ``g`` is given; all rows kept when ``g`` waits for the sum);
        otherwise the face's two products over the tokens."""
        n, t, d_in = self.a.shape
        d_out = self.b.shape[-1]
        fixed = not callable(g)
        if not materializing_pays(t, d_in * d_out, n, self.a, fixed):
            return super().summed_and_dot(g)
        cap = _CHUNK_BYTES.get(self.a.device.type)
        chunk = n if cap is None else max(1, cap // (d_in * d_out * self.a.element_size()))
        like = {"device": self.a.device}
        rows = torch.empty((min(chunk, n) if fixed else n, d_out, d_in), dtype=self.a.dtype, **like)
        total = torch.zeros((d_out, d_in), dtype=torch.float32, **like)
        dots = torch.empty(n, dtype=torch.float32, **like)
        w = g[0].flatten().float() if fixed else None
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            p = rows[: sl.stop - start] if fixed else rows[sl]
            torch.bmm(self.b[sl].transpose(1, 2), self.a[sl], out=p)
            total.add_(p.sum(0, dtype=torch.float32))
            if fixed:  # the dot while the chunk is still in cache
                torch.mv(p.flatten(1).float(), w, out=dots[sl])
        bias = self.b.sum(1, dtype=torch.float32) if self.bias else None  # [n, d_out]
        summed = [total] if bias is None else [total, bias.sum(0)]
        if not fixed:
            g = g(summed)
            torch.mv(rows.flatten(1).float(), g[0].flatten().float(), out=dots)
        if bias is not None:
            dots.addmv_(bias, g[1].float())
        return summed, dots

    def gram(self, other: LayerGrads) -> torch.Tensor:
        """``[n, m]`` by the cheaper of ``gram_costs``' forms: materialized gradients, or token pairs
        ``Σ_{t,s} (a_t·a_s + 1)(b_t·b_s)`` (the ``+ 1`` only with a bias)."""
        assert isinstance(other, LinearGrads)
        materialized, token_pairs = gram_costs(*self.a.shape, self.b.shape[-1], len(other), other.a.shape[1])
        if materialized <= token_pairs:
            return _materialized(self) @ _materialized(other).T
        ga = torch.einsum("itd,jsd->ijts", self.a.float(), other.a.float())
        gb = torch.einsum("itd,jsd->ijts", self.b.float(), other.b.float())
        if self.bias:
            ga = ga + 1.0
        return (ga * gb).sum((2, 3))

    def gram_cost(self, n_other: int) -> float:
        """Multiply-adds of the cheaper ``gram`` form, ``other`` assumed to have as many tokens per row."""
        return gram_cost(*self.a.shape, self.b.shape[-1], n_other)

    def dot_cost(self) -> float:
        """``n · T · d_in · d_out``: the one matmul of ``dot`` (the bias term left out)."""
        n, t, d_in = self.a.shape
        return float(n * t * d_in * self.b.shape[-1])

    def project(self, projector: LayerProjector) -> torch.Tensor:
        """``kron_project`` of the tokens' factors: no row's ``[d_out, d_in]`` gradient is formed."""
        return kron_project(self.a, self.b, self.bias, projector)


# Per device type: the matmul multiply-adds that writing one float of a materialized gradient and
# reading it back cost (per-example gradients pay when an example has more tokens than this), and
# the bytes of gradients formed at a time (CPU: about a core's L2, so the sum and the dot read them
# hot). CPU measured on this project's 2-core machine (break-even 24-32 tokens at d=128x512); CUDA
# from an H200's compute-to-bandwidth ratio, not measured (``bench/attribution_overhead.py
# --pass-cost`` overrides it to measure). Absent: never materialize.
PASS_COST = {"cpu": 32, "cuda": 128}
_CHUNK_BYTES = {"cpu": 4 << 20}
_KEPT_BYTES = 256 << 20  # gradients kept whole when the dot must wait for the sum (AdamW)


def materializing_pays(t: int, per_row: int, n: int, like: torch.Tensor, fixed: bool) -> bool:
    """Whether ``summed_and_dot`` should form each row's ``per_row``-element gradient: ``t`` tokens
    per row make the two products over tokens dearer than one plus a pass over the gradients, one
    row's gradient fits a chunk, and (when the dot waits for the sum) all ``n`` fit ``_KEPT_BYTES``."""
    device = like.device.type
    cost = PASS_COST.get(device)
    row_bytes = per_row * like.element_size()
    if cost is None or t <= cost or row_bytes > _CHUNK_BYTES.get(device, row_bytes):
        return False
    return fixed or n * row_bytes <= _KEPT_BYTES


def gram_costs(n: int, t: int, d_in: int, d_out: int, n_other: int, t_other: int) -> tuple[int, int]:
    """Multiply-adds of the two Gram forms: materialized gradients, and products over token pairs."""
    materialized = (n * t + n_other * t_other) * d_in * d_out + n * n_other * d_in * d_out
    return materialized, n * n_other * t * t_other * (d_in + d_out)


def gram_cost(n: int, t: int, d_in: int, d_out: int, n_other: int) -> float:
    """Multiply-adds of the cheaper Gram form against ``n_other`` rows of as many tokens."""
    return float(min(gram_costs(n, t, d_in, d_out, n_other, t)))


def _materialized(g: LinearGrads) -> torch.Tensor:
    """``[n, d_out·d_in (+ d_out)]``: each row's gradient, flattened."""
    w = torch.einsum("nto,nti->noi", g.b.float(), g.a.float()).flatten(1)
    return torch.cat([w, g.b.float().sum(1)], 1) if g.bias else w


class LinearKernel(Kernel):
    """``nn.Linear``: keeps the input as ``[n, T, d_in]`` rows and returns ``LinearGrads``."""

    types = (nn.Linear,)

    def keep(self, module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """The input, detached, as ``[n, T, d_in]`` rows in its own dtype (``grads`` casts it)."""
        return as_rows(args[0].detach())

    def grads(self, module: nn.Module, kept: object, grad_output: torch.Tensor) -> LinearGrads:
        """``LinearGrads`` from the kept ``[n, T, d_in]`` input and the output gradient as ``[n, T, d_out]``
        rows, both in the gradient's dtype."""
        params = (module.weight,) if module.bias is None else (module.weight, module.bias)
        b = as_rows(grad_output)
        # Under autocast an fp32 input (after a LayerNorm) meets a bf16 output gradient: use the
        # gradient's precision, as autograd's own weight-gradient product does.
        return LinearGrads(kept.to(b.dtype), b, params)

    def gradient_matrix(self, module: nn.Module, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """``weight_matrix``: ``[d_out, d_in (+1)]``, the layout ``LinearGrads.project`` factors."""
        return weight_matrix(grads)


def weight_matrix(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[d_out, d_in (+1)]``: a weight's gradient flattened after its output dim, the bias's as a last
    column (the layout of ``LinearGrads``: an input row with a one appended)."""
    w = grads[0].flatten(1)
    return torch.cat([w, grads[1][:, None]], 1) if len(grads) > 1 else w


register(LinearKernel())
