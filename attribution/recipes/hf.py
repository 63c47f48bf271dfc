"""Hugging Face recipe: a sequence classifier and its tokenizer, loaded from a LOCAL directory.

Nothing is downloaded (``local_files_only``). ``build(seed)`` reloads the same stored weights
every time; only weights the checkpoint lacks (a classification head, or one re-drawn for another
number of classes) are initialized, from ``seed``. Dropout is set to 0 so training is
deterministic, and attention runs through ``F.scaled_dot_product_attention`` ("sdpa") or plain
matmuls ("eager"), both functional. The model is refused unless every layer with parameters is
one the engine scores (a BERT: Embedding, LayerNorm, Linear).

A BERT looks its positions up as ``[1, L]`` and broadcasts them over the batch, which leaves the
position table without per-example rows; for the model types in ``ARANGE_POSITIONS`` a forward
pre-hook passes ``position_ids`` expanded to ``[n, L]`` (the same values, so the same logits).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ..errors import InputError
from ..inrun import scored_modules
from ..model_task import ModelTask
from ..task import TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Model types whose default position ids are 0..L-1 for every example (RoBERTa-like models derive
# theirs from the padding and already give one row per example: they are left alone).
ARANGE_POSITIONS = frozenset({"bert", "electra", "albert"})
# Fine-tuning rate: pretrained weights move little; Adam because SGD at one rate barely trains them.
# TRAK: 128 dims per layer in the gradients' own kernel, as the text recipe. The pipeline's default
# (one home).
HF_CONFIG = TrainConfig(epochs=3, batch_size=16, optimizer="adamw", lr=5e-5, trak_k=128,
                        trak_kernel="empirical")
HF_TOKENIZER_FILE = "tokenizer.json"  # a fast tokenizer's own JSON (vocabulary, normalizer, post-processor)


def hf_classifier_task(model_dir: str | Path, *, n_classes: int | None = None,
                       attn_implementation: Literal["sdpa", "eager"] = "sdpa",
                       config: TrainConfig = HF_CONFIG) -> ModelTask:
    """``AutoModelForSequenceClassification`` from ``model_dir`` as a ``ModelTask`` (batches:
    input_ids, attention_mask, labels; make them with ``hf_encode_texts``).

    ``n_classes`` other than the stored config's ``num_labels`` re-draws the head from the seed.
    ``recipe`` records the architecture, the classes and a sha256 over the directory's files
    (weights, config, tokenizer), so a run id changes with any of them.
    """
    path = _local_dir(model_dir)
    if attn_implementation not in ("sdpa", "eager"):
        raise InputError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}")
    probe = _load(path, 0, n_classes, attn_implementation)  # refuse an unsupported model now
    recipe = {
        "model_type": probe.config.model_type,
        "architectures": list(probe.config.architectures or []),
        "n_classes": int(probe.config.num_labels),
        "attn_implementation": attn_implementation,
        "dropout": 0.0,
        "files_sha256": _dir_digest(path),
    }

    def build(seed: int) -> nn.Module:
        return _load(path, seed, n_classes, attn_implementation)

    return ModelTask(name="hf-sequence-classifier", build=build, config=config, recipe=recipe)


def hf_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The fast tokenizer saved in ``model_dir`` (its ``tokenizer.json``; local files only), with a
    pad token: the directory's own, never retrained, so the model's vocabulary stays its own."""
    from transformers import AutoTokenizer

    path = _local_dir(model_dir)
    if not (path / HF_TOKENIZER_FILE).is_file():
        raise InputError(
            f"the model directory has no {HF_TOKENIZER_FILE}: save the model's fast tokenizer beside it "
            "(tokenizer.save_pretrained(model_dir))"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"the tokenizer in the model directory does not load: {e}") from e
    if tokenizer.pad_token is None:
        raise InputError("the directory's tokenizer has no pad token; save it with pad_token set")
    return tokenizer


def check_hf_classifier(model_dir: str | Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse, before any training, a directory whose model is no sequence classifier or whose
    tokenizer gives ids the model's embedding table does not hold."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    try:
        cfg = AutoConfig.from_pretrained(str(_local_dir(model_dir)), local_files_only=True)
    except (OSError, ValueError) as e:
        raise InputError(f"the model directory's config.json does not load: {e}") from e
    if cfg.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise InputError(
            f"model type {cfg.model_type!r} has no sequence classifier in transformers; give a text "
            "model with one (e.g. bert, roberta, distilbert)"
        )
    n_ids, vocab = len(tokenizer), getattr(cfg, "vocab_size", None)
    if vocab is not None and n_ids > int(vocab):
        raise InputError(
            f"the tokenizer has {n_ids} ids but the model's vocabulary holds {vocab}: they do not match; "
            "save the tokenizer the model was trained with"
        )


def hf_max_positions(model_dir: str | Path) -> int | None:
    """The longest input the model's position table holds (``max_position_embeddings``), if it says."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(_local_dir(model_dir)), local_files_only=True)
    value = getattr(cfg, "max_position_embeddings", None)
    return int(value) if value else None


def hf_encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                    max_length: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (int64 ``[n, max_length]``): padded to exactly
    ``max_length`` and TRUNCATED beyond it. No ``token_type_ids``: one segment, all zeros, which
    the model assumes when they are absent."""
    if isinstance(texts, str):
        raise InputError("hf_encode_texts takes a sequence of texts, got one str; wrap it in a list")
    if tokenizer.pad_token is None:
        raise InputError("the tokenizer has no pad token; set tokenizer.pad_token before encoding")
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt", return_token_type_ids=False)
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}


def _local_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise InputError(
            f"{str(path)!r} is not a saved model directory (no config.json); give a local directory "
            "written by save_pretrained: nothing is downloaded"
        )
    return path


def _load(path: Path, seed: int, n_classes: int | None, attn: str) -> PreTrainedModel:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    for key, value in cfg.to_dict().items():  # hidden_dropout_prob, attention_probs_dropout_prob, ...
        if "dropout" in key and isinstance(value, float):
            setattr(cfg, key, 0.0)
    kwargs: dict[str, object] = {}
    if n_classes is not None and n_classes != cfg.num_labels:
        cfg.num_labels = n_classes
        cfg.id2label = {i: f"LABEL_{i}" for i in range(n_classes)}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
        kwargs["ignore_mismatched_sizes"] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), config=cfg, local_files_only=True, attn_implementation=attn, **kwargs
        )
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    scored_modules(model)  # a layer no kernel scores is refused by name here, before any training
    if cfg.model_type in ARANGE_POSITIONS and "position_ids" in inspect.signature(model.forward).parameters:
        model.register_forward_pre_hook(_per_example_positions, with_kwargs=True)
    return model.train()


def _per_example_positions(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Pass ``position_ids`` as ``[n, L]`` (0..L-1 per row) unless the caller gave them."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None or kwargs.get("position_ids") is not None:
        return None
    n, length = ids.shape
    kwargs["position_ids"] = torch.arange(length, device=ids.device).expand(n, length)
    return args, kwargs


def _dir_digest(path: Path) -> str:
    """sha256 over the names and bytes of the directory's files, in name order."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()
