"""A GPT-2-shaped causal language model built only of layers the attribution kernels score
(``nn.Embedding``, ``nn.Linear``, ``nn.LayerNorm``; the output head tied to the token embedding),
for ``bench/attribution_overhead.py --model gpt2-small``. Torch alone: it runs on a bare GPU machine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(att.transpose(1, 2).reshape(n, t, d))
        return h + self.out(F.gelu(self.fc(self.ln2(h)), approximate="tanh"))


class Gpt(nn.Module):
    """Token + position embeddings, pre-LN blocks, final LayerNorm, head tied to the embedding."""

    def __init__(self, vocab: int, positions: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(positions, d)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        return self.head(self.ln_f(self.blocks(self.wte(input_ids) + self.wpe(pos))))


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example next-token cross-entropy, averaged over the example's positions."""
    ids = batch["input_ids"]
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
    return loss.mean(1)
