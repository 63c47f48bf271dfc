"""MLP recipe: today's ``ModelSpec`` feed-forward classifier as one ``ModelTask`` among others."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from ..model_task import ModelTask
from ..task import ModelSpec, TrainConfig

# SGD, whose update is lr * gradient, its rate decayed linearly to zero (as the text and image recipes'):
# the last steps are small, so a retrain without one provider settles where the full run does and a
# left-out difference is the data's, not the last steps' noise. TRAK: 512 dims of the whole gradient
# (tabular features, ``attribution.trak``): on the royalty bench's twelve tabular worlds 256 paid no
# better anywhere and worse on two (labelers' Spearman on an imbalanced table 0.845 -> 0.698, on a
# 300-feature table 0.899 -> 0.841). It stops early (patience 5 of at most
# 20 epochs): otherwise a wide table overfits, and then every contributor looks harmful (on the royalty
# bench's 300-feature table, 1,200 rows, at a constant rate the validation loss ended at 2.06 against
# ln 5 = 1.61 for the class frequencies, every provider's left-out value was negative and providers
# were paid nothing; stopped, 1.55 and provider pay against the truth +0.740). The pipeline's default
# (one home); the royalty bench trains it through the pipeline's own mapping
# (``TrainingConfig.train_config``).
MLP_CONFIG = TrainConfig(trak_k=512, lr_schedule="linear", patience=5, trak_kernel="fisher")


class FeatureMLP(nn.Sequential):
    """``ModelSpec``'s ``nn.Sequential`` whose forward takes the batch key ``features``; the same
    state_dict keys as the plain Sequential, so weights move between the two unchanged."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[n, n_classes]`` logits of float ``[n, d]`` features: the Sequential's forward, by key."""
        return super().forward(features)


def mlp_task(spec: ModelSpec, config: TrainConfig | None = None) -> ModelTask:
    """``spec``'s MLP as a ``ModelTask`` (batches: features float ``[n, d]``, labels); its weights
    for a seed are those of ``spec.build(seed)``."""

    def build(seed: int) -> nn.Module:
        return FeatureMLP(*spec.build(seed))

    recipe = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()}
    return ModelTask(name="mlp", build=build, config=config or MLP_CONFIG, recipe=recipe)
