"""Small models, one per kernel family, with padded sequences and several targets: the cases every
kernel is checked on against torch.func (tests/attribution/test_kernels.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from attribution.inrun import summed_target_scores
from attribution.kernels import LayerGrads


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
    tied: bool = False  # parameters shared by modules: the driver then never uses a Gram form
    long: bool = False  # a layer sees enough tokens that ``summed_and_dot`` materializes its rows


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


def token_batch(vocab: int, t: int, c: int) -> Callable[[int, torch.Generator], dict[str, torch.Tensor]]:
    """Ids in ``[1, vocab)`` padded with 0 (the embeddings' ``padding_idx``) after a random length."""

    def make(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        lengths = torch.randint(1, t + 1, (n,), generator=gen)
        mask = (torch.arange(t)[None] < lengths[:, None]).long()
        ids = torch.randint(1, vocab, (n, t), generator=gen) * mask
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, c, (n,), generator=gen)}

    return make


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


class Tokens(nn.Module):
    """Token and position embeddings, LayerNorm, Linear, RMSNorm over ``[n, T, d]``, masked mean, head.

    The vocabulary is large enough for the token embedding's Gram form to use its id-equality mask,
    the positions few enough for the materialized one."""

    def __init__(self, vocab: int = 50, t: int = 6, d: int = 8, c: int = 3) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d, padding_idx=0)
        self.pos = nn.Embedding(t, d)
        self.norm = nn.LayerNorm(d)
        self.inner = nn.Linear(d, d)
        self.rms = nn.RMSNorm(d)  # eps=None: torch's own epsilon
        self.head = nn.Linear(d, c)
        for p in (self.norm.weight, self.norm.bias, self.rms.weight):  # not the identity
            nn.init.uniform_(p, 0.5, 1.5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        h = self.norm(self.tok(input_ids) + self.pos(positions))
        h = self.rms(torch.tanh(self.inner(h)))
        return self.head(masked_mean(h, attention_mask))


class Tied(nn.Module):
    """An embedding whose weight is also the output head's (classes = the vocabulary).

    Pooled by a plain mean, so padded tokens (id 0, the ``padding_idx``) do reach the loss: their
    embedding row still gets no gradient from the embedding, but does from the head."""

    def __init__(self, vocab: int = 11, d: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.inner = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)
        self.head.weight = self.emb.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.inner(self.emb(input_ids))).mean(1))


class Groups(nn.Module):
    """Features as ``[n, C, H, W]``, GroupNorm(2, C), LayerNorm over ``(H, W)`` (two trailing dims), head."""

    def __init__(self, d: int = 5, c: int = 4, h: int = 3, w: int = 2, k: int = 3) -> None:
        super().__init__()
        self.shape = (c, h, w)
        self.inner = nn.Linear(d, c * h * w)
        self.groups = nn.GroupNorm(2, c)
        self.norm = nn.LayerNorm((h, w))
        self.head = nn.Linear(c * h * w, k)
        for p in (self.groups.weight, self.groups.bias, self.norm.weight, self.norm.bias):
            nn.init.uniform_(p, 0.5, 1.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.groups(self.inner(features).reshape(-1, *self.shape)))
        return self.head(self.norm(x).flatten(1))


CASES = [
    Case("seq-linear", SeqLinear, seq_batch(6, 5, 3)),
    # more tokens than ``linear.PASS_COST["cpu"]``: rows' gradients are formed for ``summed_and_dot``
    Case("seq-linear-long", SeqLinear, seq_batch(6, 40, 3), long=True),
    Case("mlp", Mlp, flat_batch(5, 3)),
    Case("tokens", Tokens, token_batch(50, 6, 3)),
    Case("tied", Tied, token_batch(11, 5, 11), tied=True),
    Case("groups", Groups, flat_batch(5, 3)),
    Case("conv2d", ConvNet, image_batch(2, 7, 6, 3)),
    Case("conv2d-reflect", lambda: ConvNet(padding_mode="reflect"), image_batch(2, 7, 6, 3)),
    Case("conv2d-large", ConvNet, image_batch(2, 14, 12, 3), long=True),  # 42 output positions
]


# ---------------------------------------------------------------- kernel forms composed over layers


def param_sums(grads: Sequence[LayerGrads]) -> dict[int, torch.Tensor]:
    """``Σ_i g_i`` per parameter (by identity): a parameter shared by modules (tied weights) gets
    the sum of every module's part."""
    out: dict[int, torch.Tensor] = {}
    for g in grads:
        for p, s in zip(g.params, g.summed(), strict=True):
            out[id(p)] = s if id(p) not in out else out[id(p)] + s
    return out


def step_scores(
    train: list[LayerGrads], targets: list[LayerGrads], pre: Mapping[int, torch.Tensor | float],
    *, per_target: bool, gram_ok: bool,
) -> torch.Tensor:
    """``[nb]`` (or ``[nb, n_targets]``): ``⟨g_i, P ⊙ g_v⟩`` summed over targets and modules, from
    factored gradients already in hand: each kernel form (Gram, summed-target) checked on its own,
    where the driver (``attribution.inrun.StepScorer``) picks one per layer while streaming.

    ``gram_ok`` (SGD, no tied weights: ``P`` is a scalar per parameter and each parameter lives
    in one module) lets a module use its Gram form where that is cheaper.
    """
    n_targets = len(targets[0])
    if per_target:
        if gram_ok:
            return sum(g.gram(v).mul_(pre[id(g.params[0])]) for g, v in zip(train, targets, strict=True))
        return torch.stack([step_scores(train, [v.rows(slice(j, j + 1)) for v in targets], pre,
                                        per_target=False, gram_ok=False) for j in range(n_targets)], 1)
    total = None
    dot_side = []
    for g, v in zip(train, targets, strict=True):
        if gram_ok and g.gram_cost(n_targets) < g.dot_cost():
            s = g.gram(v).sum(1).mul_(pre[id(g.params[0])])
            total = s if total is None else total.add_(s)
        else:
            dot_side.append((g, v))
    if not dot_side:
        return total
    s = summed_target_scores([g for g, _ in dot_side], param_sums([v for _, v in dot_side]), pre)
    return s if total is None else total.add_(s)
