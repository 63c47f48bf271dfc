"""Image recipe: bytes decoded under a recorded policy, and a small CNN classifier.

``ImagePolicy`` is stored beside the model (``to_json``): the same image bytes and policy give the
same pixels, because decoding, mode conversion and resizing (one fixed Pillow filter) are fixed.
``SmallCNN`` uses only ``nn.Conv2d``, ``nn.GroupNorm`` and ``nn.Linear`` with parameters (each
called once per forward) plus ReLU and pooling; GroupNorm, not BatchNorm, so examples stay
independent.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..model_task import ModelTask
from ..task import TrainConfig

Mode = Literal["RGB", "L"]
# none: every image must already be height x width; squash: resize to it, aspect ratio not kept;
# crop: scale the shorter side to cover it, then cut the centre.
Resize = Literal["none", "squash", "crop"]
FILTER = "bilinear"  # the one resampling filter, recorded in the policy's JSON
# AdamW (plain SGD at one rate barely moves a conv net in a few epochs), its rate decayed to zero: at a
# constant rate the last epochs' noise outweighed what most providers' data did (the royalty bench's image
# world: its truth agreed with itself at 0.26, 0.90 decayed). No early stopping: the target loss did not
# rise over 25 epochs on the synthetic images (400-800 rows, 0-20 % label noise). TRAK: 128 dims per
# layer, within 0.01 LDS of 256 on the bench's CNN at half the bytes, in the gradients' own kernel (the
# Fisher's gain was mixed, `docs/attribution.md`). The pipeline's default (one home).
IMAGE_CONFIG = TrainConfig(epochs=15, batch_size=32, optimizer="adamw", lr=3e-3, lr_schedule="linear",
                           trak_k=128, trak_kernel="empirical")


@dataclass(frozen=True)
class ImagePolicy:
    """How image bytes become pixels: size, colour mode and resize rule (stored with the model)."""

    height: int
    width: int
    mode: Mode = "RGB"
    resize: Resize = "none"

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise InputError(f"ImagePolicy size must be >= 1, got {self.height}x{self.width}")
        if self.mode not in ("RGB", "L"):
            raise InputError(f"ImagePolicy.mode must be 'RGB' or 'L', got {self.mode!r}")
        if self.resize not in ("none", "squash", "crop"):
            raise InputError(f"ImagePolicy.resize must be 'none', 'squash' or 'crop', got {self.resize!r}")

    @property
    def channels(self) -> int:
        """3 for ``RGB``, 1 for ``L``: the decoded pixels' channels and the CNN's input channels."""
        return 3 if self.mode == "RGB" else 1

    def to_dict(self) -> dict[str, object]:
        """The fields plus this version's resize ``FILTER``: the policy as recorded in the task's recipe."""
        return {**asdict(self), "filter": FILTER}

    def to_json(self) -> str:
        """Canonical JSON of ``to_dict`` (sorted keys, no spaces), stored as ``ImageEncoding.policy_json``."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ImagePolicy:
        """The policy ``to_json`` wrote; an ``InputError`` if it names a resize filter other than this
        version's ``FILTER`` (a document without one reads as this version's)."""
        raw = json.loads(text)
        if raw.get("filter", FILTER) != FILTER:
            raise InputError(
                f"policy asks for the {raw['filter']!r} filter; this version resizes with {FILTER!r}"
            )
        return cls(height=raw["height"], width=raw["width"], mode=raw["mode"], resize=raw["resize"])


def decode_images(images: Sequence[bytes], policy: ImagePolicy) -> torch.Tensor:
    """float32 ``[n, C, H, W]`` pixels in [0, 1] (divided by 255, not normalized per channel).

    Any format Pillow reads (PNG, JPEG, ...). EXIF orientation is applied first, 16-bit gray levels
    are scaled to 8 bits (``eight_bit``), then the image is converted to ``policy.mode`` (alpha
    dropped), then sized by ``policy.resize``.
    """
    if isinstance(images, bytes | bytearray):
        raise InputError("decode_images takes a sequence of image bytes, got one bytes; wrap it in a list")
    if not images:
        raise InputError("decode_images got no images")
    pixels = [_pixels(i, data, policy) for i, data in enumerate(images)]
    target = (policy.height, policy.width)
    wrong = [(i, p.shape[1], p.shape[0]) for i, p in enumerate(pixels) if p.shape[:2] != target]
    if wrong:
        listed = ", ".join(f"#{i} is {w}x{h}" for i, w, h in wrong[:10])
        raise InputError(
            f"{len(wrong)} image(s) are not {policy.width}x{policy.height} (width x height): {listed}; "
            "set ImagePolicy(resize='squash' or 'crop') or resize them before decoding"
        )
    stacked = np.stack([p.reshape(policy.height, policy.width, policy.channels) for p in pixels])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # how Pillow opens 16-bit grayscale PNGs


def eight_bit(img):
    """``img`` with 16-bit gray levels scaled to 8 bits (``round(v * 255 / 65535)``, integer arithmetic,
    values outside 0..65535 clipped); any other image unchanged.

    Why: Pillow's ``convert("L")``/``("RGB")`` of a 16-bit grayscale PNG (medical and scientific images
    often are) clips every level above 255 to white instead of scaling, so the image would be lost."""
    from PIL import Image

    if img.mode not in SIXTEEN_BIT_MODES:
        return img
    levels = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
    return Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8), "L")


def _pixels(index: int, data: bytes, policy: ImagePolicy) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = eight_bit(ImageOps.exif_transpose(img)).convert(policy.mode)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(
            f"image #{index} cannot be decoded ({e}); give PNG, JPEG or another format Pillow reads"
        ) from e
    size = (policy.width, policy.height)
    bilinear = Image.Resampling.BILINEAR
    if policy.resize == "squash" and img.size != size:
        img = img.resize(size, bilinear, reducing_gap=None)
    elif policy.resize == "crop" and img.size != size:
        img = ImageOps.fit(img, size, bilinear, centering=(0.5, 0.5))
    return np.asarray(img, dtype=np.uint8)


class SmallCNN(nn.Module):
    """Conv3x3 -> GroupNorm -> ReLU -> MaxPool per stage, global average pool, linear head.
    ``forward(pixel_values)`` takes ``[n, C, H, W]`` and returns logits ``[n, classes]``."""

    def __init__(self, in_channels: int, n_classes: int, channels: Sequence[int] = (16, 32)) -> None:
        super().__init__()
        if not channels or min(channels) < 1 or in_channels < 1 or n_classes < 1:
            raise ValueError(f"SmallCNN sizes must be >= 1 with at least one stage, got in_channels="
                             f"{in_channels}, channels={tuple(channels)}, n_classes={n_classes}")
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        prev = in_channels
        for c in channels:
            # ceil_mode: a 1-pixel map stays 1 pixel, so small images never pool to nothing.
            layers += [nn.Conv2d(prev, c, 3, padding=1), nn.GroupNorm(_groups(c), c), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            prev = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(prev, n_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, classes]``; an ``InputError`` for pixels that are not ``[n, in_channels, H, W]``."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.in_channels:
            raise InputError(
                f"pixel_values must be [n, {self.in_channels}, H, W], got {tuple(pixel_values.shape)}; "
                "make them with decode_images under the model's ImagePolicy"
            )
        return self.head(self.flatten(self.pool(self.features(pixel_values))))


def _groups(channels: int) -> int:
    """Up to 8 groups that divide ``channels`` (GroupNorm needs an exact division)."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def image_cnn_task(policy: ImagePolicy, n_classes: int, *, channels: Sequence[int] = (16, 32),
                   config: TrainConfig = IMAGE_CONFIG) -> ModelTask:
    """A ``SmallCNN`` for images decoded under ``policy`` (batches: pixel_values, labels); ``recipe``
    records the policy, so a model is never fed pixels made another way."""
    channels = tuple(int(c) for c in channels)
    SmallCNN(policy.channels, n_classes, channels)  # refuse bad sizes now

    def build(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return SmallCNN(policy.channels, n_classes, channels)

    recipe = {"policy": policy.to_dict(), "n_classes": n_classes, "channels": list(channels)}
    return ModelTask(name="image-cnn", build=build, config=config, recipe=recipe)
