"""The Conv2d kernel's patches reproduce the convolution for every padding it accepts; grouped
convolutions are refused by name (the gradients themselves: test_kernels.py's conv2d cases)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attribution.errors import UnsupportedModelError
from attribution.inrun import scored_modules
from attribution.kernels.conv import patches

CONFIGS = [
    {"kernel_size": 3},
    {"kernel_size": 3, "padding": "valid", "stride": 2},
    {"kernel_size": (2, 3), "padding": "same", "dilation": (1, 2)},
    {"kernel_size": 4, "padding": "same", "dilation": 3},
    {"kernel_size": (3, 2), "padding": (1, 2), "stride": (2, 1)},
    {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
    {"kernel_size": (2, 3), "padding": "same", "padding_mode": "replicate"},
    {"kernel_size": 3, "padding": 2, "dilation": 2, "padding_mode": "circular"},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=repr)
def test_patches_times_weight_is_the_convolution(cfg: dict) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, **cfg)
    x = torch.randn(2, 3, 9, 8)
    out = conv(x)
    a = patches(conv, x)  # [n, L, C_in·kh·kw]
    got = a @ conv.weight.reshape(4, -1).T + conv.bias
    assert a.shape[1] == out.shape[2] * out.shape[3]
    torch.testing.assert_close(got.transpose(1, 2).reshape(out.shape), out, rtol=1e-5, atol=1e-5)


def test_grouped_convolution_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(UnsupportedModelError, match=r"'0'.*groups=2.*use groups=1 or freeze"):
        scored_modules(model)
