"""Exact influence functions for multinomial logistic regression (the ceiling others meet).

With ``x̃ = [x, 1]`` and ``θ = [W, b]`` (C × (d+1)), one example's gradient is
``(p − e_y) ⊗ x̃`` and the Hessian of the mean loss plus weight decay is
``H = (1/n) Σ_j (diag p_j − p_j p_jᵀ) ⊗ x̃_j x̃_jᵀ + wd·I``, built from the factor
``diag p − p pᵀ = L Lᵀ`` with ``L = (I − p 1ᵀ) diag √p`` as one Gram matrix. Including example i
moves the target loss by ``−(1/n) g_vᵀ H⁻¹ g_i``; the score is that decrease (positive = helped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import UnsupportedModelError


def _linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    params = sum(p.numel() for p in model.parameters())
    own = sum(p.numel() for p in linears[0].parameters()) if len(linears) == 1 else -1
    if len(linears) != 1 or linears[0].bias is None or params != own:
        raise UnsupportedModelError(
            "exact influence functions need logistic regression: one nn.Linear with bias and nothing else"
        )
    return linears[0]


def _theta_probs(model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lin = _linear(model)
    theta = torch.cat([lin.weight, lin.bias[:, None]], 1).detach().double().numpy()
    xt = np.hstack([x, np.ones((len(x), 1))])
    z = xt @ theta.T
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return xt, p / p.sum(1, keepdims=True)


def per_example_grads(model: nn.Module, x: object, y: object) -> np.ndarray:
    """[n, C·(d+1)] float64 loss gradients, parameters ordered as ``[W | b]`` row by row."""
    x64 = np.asarray(x, dtype=np.float64)
    xt, p = _theta_probs(model, x64)
    resid = p.copy()
    resid[np.arange(len(x64)), np.asarray(y)] -= 1.0
    return (resid[:, :, None] * xt[:, None, :]).reshape(len(x64), -1)


def hessian(model: nn.Module, x: object, weight_decay: float) -> np.ndarray:
    """Exact Hessian of ``mean CE + wd/2 ‖θ‖²`` in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    xt, p = _theta_probs(model, x64)
    n, c = p.shape
    root = np.sqrt(p)
    lfac = (np.eye(c)[None] - p[:, :, None]) * root[:, None, :]  # [n, C(row), C(col)]
    u = (lfac.transpose(0, 2, 1)[:, :, :, None] * xt[:, None, None, :]).reshape(n * c, -1)
    return u.T @ u / n + weight_decay * np.eye(u.shape[1])


@dataclass
class ExactInfluence:
    """``H⁻¹`` once, then scores for any target set and self-influence for mislabel ranking."""

    model: nn.Module
    train_grads: np.ndarray
    h_inv: np.ndarray

    @classmethod
    def fit(cls, model: nn.Module, x: object, y: object, weight_decay: float) -> ExactInfluence:
        """Inverts the exact ``hessian`` (float64) and keeps the training rows' gradients, for every query."""
        h = hessian(model, x, weight_decay)
        return cls(model, per_example_grads(model, x, y), np.linalg.inv(h))

    def scores(self, x_targets: object, y_targets: object) -> np.ndarray:
        """[n_train, n_targets] decrease of each target's loss from including each example."""
        gv = per_example_grads(self.model, x_targets, y_targets)
        return self.train_grads @ (self.h_inv @ gv.T) / len(self.train_grads)

    def self_influence(self) -> np.ndarray:
        """``[n_train]`` float64 ``g_iᵀ H⁻¹ g_i`` (not divided by n): high flags a likely mislabeled row."""
        return np.einsum("nd,nd->n", self.train_grads @ self.h_inv, self.train_grads)
