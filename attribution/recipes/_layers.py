"""The layers the attribution engine scores exactly, and a check that a recipe's model holds no other."""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError

# Modules that may own parameters; anything else with parameters of its own is refused.
SUPPORTED = (nn.Linear, nn.Embedding, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.Conv2d)


def check_layers(model: nn.Module, what: str) -> None:
    """Refuse (``UnsupportedModelError``) a module that owns parameters but is not ``SUPPORTED``:
    a bare ``nn.Parameter`` on a custom module, BatchNorm, ``nn.MultiheadAttention``, ..."""
    bad = [f"{name or '<root>'} ({type(m).__name__})" for name, m in model.named_modules()
           if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, SUPPORTED)]
    if bad:
        raise UnsupportedModelError(
            f"{what} has parameters in layers whose per-example gradients are not computed: "
            f"{', '.join(bad[:10])}; supported: {', '.join(c.__name__ for c in SUPPORTED)}"
        )
