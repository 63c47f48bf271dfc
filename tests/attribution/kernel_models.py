"""Small models, one per kernel family, with padded sequences and several targets: the cases every
kernel is checked on against torch.func (tests/attribution/test_kernels.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class SeqLinear(nn.Module):
    """Linear layers on ``[n, T, d]`` with a padding mask, pooled, then a head."""

    def __init__(self, d: int = 6, h: int = 7, c: int = 3) -> None:
        super().__init__()
        self.inner = nn.Linear(d, h)
        self.mix = nn.Linear(h, h, bias=False)
        self.head = nn.Linear(h, c)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inner(x))
        h = self.mix(h) * attention_mask.unsqueeze(-1)  # padded tokens reach no loss
        return self.head(masked_mean(h, attention_mask))


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[int, torch.Generator], dict[str, torch.Tensor]]


def seq_batch(d: int, t: int, c: int) -> Callable[[int, torch.Generator], dict[str, torch.Tensor]]:
    def make(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        lengths = torch.randint(1, t + 1, (n,), generator=gen)
        mask = (torch.arange(t)[None] < lengths[:, None]).long()
        x = torch.randn(n, t, d, generator=gen) * mask.unsqueeze(-1)
        return {"x": x, "attention_mask": mask, "labels": torch.randint(0, c, (n,), generator=gen)}

    return make


def flat_batch(d: int, c: int) -> Callable[[int, torch.Generator], dict[str, torch.Tensor]]:
    def make(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        labels = torch.randint(0, c, (n,), generator=gen)
        return {"features": torch.randn(n, d, generator=gen), "labels": labels}

    return make


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class ConvNet(nn.Module):
    """Two convolutions (strided and padded, then 'same' with an even dilated kernel, which pads one
    side more than the other), ReLU, global average pooling and a Linear head, on [n, C, H, W]."""

    def __init__(self, c: int = 2, classes: int = 3, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 5, (2, 3), padding="same", dilation=(1, 2), padding_mode=padding_mode,
                               bias=False)
        self.head = nn.Linear(5, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(image))
        h = torch.relu(self.conv2(h))
        return self.head(h.mean((2, 3)))


Batcher = Callable[[int, torch.Generator], dict[str, torch.Tensor]]


def image_batch(c: int, h: int, w: int, classes: int) -> Batcher:
    def make(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        labels = torch.randint(0, classes, (n,), generator=gen)
        return {"image": torch.randn(n, c, h, w, generator=gen), "labels": labels}

    return make


CASES = [
    Case("seq-linear", SeqLinear, seq_batch(6, 5, 3)),
    Case("mlp", Mlp, flat_batch(5, 3)),
    Case("conv2d", ConvNet, image_batch(2, 7, 6, 3)),
    Case("conv2d-reflect", lambda: ConvNet(padding_mode="reflect"), image_batch(2, 7, 6, 3)),
]


