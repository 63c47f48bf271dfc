"""Named errors of the attribution room: each says what is wrong and how to fix it."""

from __future__ import annotations


class AttributionError(ValueError):
    """Base class: bad input to attribution, raised before any training or weighting starts."""


class InputError(AttributionError):
    """Training data or targets are unusable (NaN, empty, one class, lengths, overlap)."""


class UnsupportedModelError(AttributionError):
    """The model holds a layer whose per-example gradients cannot be attributed exactly."""


class UnsupportedOptimizerError(AttributionError):
    """The optimizer's update is not lr * gradient, so the SGD formula would be wrong."""


class ContributorError(AttributionError):
    """Examples, annotations or addresses do not let credit reach a payable contributor."""


class DeviceUnavailableError(AttributionError):
    """``TrainConfig.device`` asks for an accelerator this machine does not have."""
