"""The task for any model: a module, its batches as dicts of tensors, its per-example loss.

As Kronfluence's ``Task`` and dattri's ``AttributionTask``: the user says how to build the model
and how to compute one loss per example from a batch; the driver (``attribution.inrun``) trains
it and scores every example at every optimizer step. The MLP ``ModelSpec`` is one recipe among
others (``attribution.recipes``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .task import TrainConfig

Batch = Mapping[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
LABELS = "labels"


def model_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """``model(**inputs)`` as a logits tensor, every key of ``batch`` but ``labels`` passed by name
    (a Hugging Face model returns a ModelOutput holding them)."""
    out = model(**{k: v for k, v in batch.items() if k != LABELS})
    return getattr(out, "logits", out)


def classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per-example cross-entropy of ``model_logits`` against ``batch["labels"]`` (the default loss)."""
    return F.cross_entropy(model_logits(model, batch).float(), batch[LABELS], reduction="none")


@dataclass(frozen=True)
class ModelTask:
    """What to train and how each example's loss is computed.

    ``build(seed)`` returns a fresh model whose weights depend on ``seed`` alone; parameters it
    returns with ``requires_grad=False`` are frozen (neither trained nor scored). ``loss(model,
    batch)`` returns one loss per row of ``batch`` and must treat rows independently. ``name``
    and ``recipe`` (a JSON-able description: sizes, vocabulary, image policy) identify the
    architecture in run ids and beside the stored model.
    """

    name: str
    build: Callable[[int], nn.Module]
    config: TrainConfig = field(default_factory=TrainConfig)
    loss: LossFn = classification_loss
    recipe: Mapping[str, object] = field(default_factory=dict)

    def fresh(self, seed: int) -> nn.Module:
        """``build(seed)`` with the global RNG left as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.build(seed)

    def to_json(self) -> str:
        """Canonical JSON of ``name`` and ``recipe`` (not the callables): the architecture in run ids."""
        doc = {"module": self.name, "recipe": dict(self.recipe)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def batch_size_of(name: str, batch: Batch) -> int:
    """Rows of a batch dict whose tensors all share their first dimension, or an ``InputError``."""
    if not batch:
        raise InputError(f"{name} is an empty dict; give tensors such as input_ids, labels")
    sizes = {k: (v.shape[0] if v.dim() else None) for k, v in batch.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise InputError(f"{name}'s tensors must share their first (example) dimension, got {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise InputError(f"{name} holds no examples")
    return n


def take(batch: Batch, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows ``idx`` of every tensor in ``batch``, as a new dict."""
    return {k: v[idx] for k, v in batch.items()}


def concat(first: Batch, second: Batch) -> dict[str, torch.Tensor]:
    """Rows of ``first`` then of ``second`` (same keys and trailing shapes)."""
    if first.keys() != second.keys():
        raise InputError(f"training and target batches differ in keys: {sorted(first)} vs {sorted(second)}")
    out = {}
    for k in first:
        if first[k].shape[1:] != second[k].shape[1:]:
            raise InputError(
                f"{k!r} has rows of shape {tuple(first[k].shape[1:])} in training but "
                f"{tuple(second[k].shape[1:])} in targets; pad both to the same length"
            )
        out[k] = torch.cat([first[k], second[k]])
    return out


def to_device(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    """``batch`` as a new dict, each tensor moved to ``device`` (one already there is not copied)."""
    return {k: v.to(device) for k, v in batch.items()}
