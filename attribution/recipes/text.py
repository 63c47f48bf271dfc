"""Text recipe: a BPE tokenizer trained on the training texts, and a small transformer classifier.

The tokenizer is data, not code: ``train_tokenizer`` returns its JSON as bytes (normalizer,
pre-tokenizer, vocabulary and merges all inside), so it is stored and content-addressed beside the
model, and the same texts give the same bytes in every process. BPE, not WordPiece: WordPiece's
trainer was seen to give different vocabularies across runs (huggingface/tokenizers#1794).

``TextTransformer`` uses only layers whose per-example gradients the attribution engine computes
exactly (``nn.Embedding``, ``nn.LayerNorm``, ``nn.Linear``, each called once per forward) and
functional attention; examples are independent and padding contributes nothing to the logits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..model_task import ModelTask
from ..task import TrainConfig

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIAL_TOKENS = (PAD, UNK, CLS)  # ids 0, 1, 2 in this order
PAD_ID = 0
# Adam, not SGD: a transformer trained with plain SGD at one rate barely moves in a few epochs. Its rate
# decays to zero and it stops early (patience 2 of at most 10 epochs): trained all 10 at a constant rate
# on the text demo, its target loss was lowest after the 3rd or 4th and 0.2 higher by the 10th, which
# made every provider's left-out value negative. TRAK: 128 dims per layer (within 0.01 LDS of 256 on the
# bench's transformer), in the gradients' own kernel (``trak_kernel``: the Fisher, one pass per class, took
# 10x the features' time for no clear gain, `docs/attribution.md`). The pipeline's default (one home).
TEXT_CONFIG = TrainConfig(epochs=10, batch_size=32, optimizer="adamw", lr=1e-3, lr_schedule="linear",
                          patience=2, trak_k=128, trak_kernel="empirical")


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2000, *, min_frequency: int = 2) -> bytes:
    """A BPE tokenizer trained on ``texts`` (the training texts only, so no target leaks into the
    vocabulary), as its JSON bytes.

    Fixed and recorded in the JSON: NFKC then lowercase; split on whitespace and between word
    characters and punctuation; [PAD]=0, [UNK]=1, [CLS]=2; [CLS] starts every encoding, so an
    empty text still has one token to pool. Unknown characters become [UNK].
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    if isinstance(texts, str):
        raise InputError("train_tokenizer takes a sequence of texts, got one str; wrap it in a list")
    if not texts:
        raise InputError("train_tokenizer got no texts; give the training texts")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise InputError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    cls_id = tok.token_to_id(CLS)
    tok.post_processor = processors.TemplateProcessing(single=f"{CLS} $A", special_tokens=[(CLS, cls_id)])
    return tok.to_str().encode("utf-8")


def load_tokenizer(data: bytes) -> Tokenizer:
    """The tokenizer stored by ``train_tokenizer`` (or any ``tokenizers`` JSON)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise InputError(f"these bytes are not a tokenizers JSON ({e}); give train_tokenizer's output") from e


def tokenizer_digest(data: bytes) -> str:
    """sha256 of the tokenizer bytes: recorded in a recipe, it ties the model to its vocabulary."""
    return hashlib.sha256(data).hexdigest()


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (int64, ``[n, max_length]``) for ``texts``.

    Every row has exactly ``max_length`` columns: longer encodings are TRUNCATED (their tail is
    dropped, the leading [CLS] kept), shorter ones padded on the right with [PAD] (mask 0).
    """
    if isinstance(texts, str):
        raise InputError("encode_texts takes a sequence of texts, got one str; wrap it in a list")
    if max_length < 1:
        raise InputError(f"max_length must be >= 1, got {max_length}")
    ids = torch.full((len(texts), max_length), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(texts), max_length), dtype=torch.int64)
    for i, enc in enumerate(tokenizer.encode_batch(list(texts))):
        row = enc.ids[:max_length]
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


class Block(nn.Module):
    """Pre-LN encoder block: x + attn(LN(x)), then x + MLP(LN(x)); pads are never attended to."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        return x.view(n, length, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``keep``: bool ``[n, 1, 1, L]``, True where a key may be attended to."""
        h = self.ln1(x)
        q, k, v = self._heads(self.q(h)), self._heads(self.k(h)), self._heads(self.v(h))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(x.shape)))
        return x + self.drop(self.fc2(self.act(self.fc1(self.ln2(x)))))


class TextTransformer(nn.Module):
    """Small encoder classifier: token + position embeddings, pre-LN blocks, final LayerNorm, mean
    of the non-pad tokens, linear head. ``forward(input_ids, attention_mask)`` -> logits ``[n, classes]``.
    """

    def __init__(self, vocab_size: int, n_classes: int, max_length: int, *, d_model: int = 64,
                 n_layers: int = 2, n_heads: int = 4, d_ff: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        _check_sizes(vocab_size=vocab_size, n_classes=n_classes, max_length=max_length, d_model=d_model,
                     n_heads=n_heads)
        self.vocab_size, self.max_length = vocab_size, max_length
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(max_length, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff or 4 * d_model, dropout) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, classes]``; an ``InputError`` for inputs the model cannot read (shapes, a length past
        the position table, ids outside the vocabulary, a row with no unmasked token)."""
        self._check_inputs(input_ids, attention_mask)
        n, length = input_ids.shape
        # Expanded to [n, L]: the position table must see one row per example to be scored.
        pos = torch.arange(length, device=input_ids.device).expand(n, length)
        x = self.tokens(input_ids) + self.positions(pos)
        mask = attention_mask.bool()
        keep = mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, keep)
        x = self.ln_f(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1)
        return self.head(pooled)

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise InputError(
                f"input_ids and attention_mask must both be [n, length], got {tuple(input_ids.shape)} and "
                f"{tuple(attention_mask.shape)}; make them with encode_texts"
            )
        if input_ids.shape[1] > self.max_length:
            raise InputError(
                f"input_ids have {input_ids.shape[1]} positions but the model's position table holds "
                f"{self.max_length}; encode with max_length={self.max_length} or build a longer model"
            )
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size):
            raise InputError(
                f"input_ids range over [{int(input_ids.min())}, {int(input_ids.max())}] but the model's "
                f"vocabulary has {self.vocab_size} ids: the tokenizer does not match the model's "
                "vocabulary; build the model with the tokenizer's get_vocab_size()"
            )
        empty = (attention_mask.sum(1) == 0).nonzero().flatten()
        if empty.numel():
            raise InputError(
                f"examples {empty[:10].tolist()} have no unmasked token (attention_mask all 0); "
                "encode_texts always keeps [CLS], so give every example at least one token"
            )


def _check_sizes(**sizes: int) -> None:
    bad = {k: v for k, v in sizes.items() if v < 1}
    if bad:
        raise ValueError(f"TextTransformer sizes must be >= 1, got {bad}")
    if sizes["d_model"] % sizes["n_heads"]:
        raise ValueError(f"d_model ({sizes['d_model']}) must be divisible by n_heads ({sizes['n_heads']})")


def text_transformer_task(vocab_size: int, n_classes: int, max_length: int, *, d_model: int = 64,
                          n_layers: int = 2, n_heads: int = 4, d_ff: int | None = None,
                          dropout: float = 0.0, tokenizer: bytes | None = None,
                          config: TrainConfig = TEXT_CONFIG) -> ModelTask:
    """A ``TextTransformer`` as a ``ModelTask`` (batches: input_ids, attention_mask, labels).

    ``recipe`` records every size, and the sha256 of ``tokenizer`` when given, so a run id changes
    with the vocabulary. Dropout stays 0 unless asked: attributed training must be deterministic.
    """
    sizes = dict(vocab_size=vocab_size, n_classes=n_classes, max_length=max_length, d_model=d_model,
                 n_layers=n_layers, n_heads=n_heads, d_ff=d_ff or 4 * d_model, dropout=float(dropout))
    TextTransformer(**sizes)  # refuse bad sizes now, not at the first build

    def build(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return TextTransformer(**sizes)

    recipe: dict[str, object] = dict(sizes)
    if tokenizer is not None:
        recipe["tokenizer_sha256"] = tokenizer_digest(tokenizer)
    return ModelTask(name="text-transformer", build=build, config=config, recipe=recipe)
