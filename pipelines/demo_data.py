"""The demo's dataset: scikit-learn's bundled digits (no download), split across providers, as images.

Each digit is an 8×8 grayscale PNG (its 0-16 ink levels scaled to 0-255) in an `image` binary
column, the contract every image dataset follows, so labelers see the image and training
decodes the same bytes. Each provider gets one Parquet file (the folder layout `load_source`
reads as "one provider per file"). One provider's images are degraded by noise before they are
drawn, so the attribution has a real difference in data quality to find. The true labels go to
a separate file that only the simulated annotators read: the dataset itself carries no labels,
as with real raw data.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PROVIDERS = ("clinic-north", "clinic-south", "school-east", "school-west", "scanner-noisy")
NOISY = {"scanner-noisy": 0.6}  # share of pixels replaced by noise
FIELD = "image"
SIDE = 8  # the digits are 8×8
VALIDATION_DIGITS = 180  # a tenth of the 1,797: the demo's trusted targets
LEVELS = 16  # their ink levels are 0..16


def digit_png(levels: np.ndarray) -> bytes:
    """An 8×8 grayscale PNG of one digit's 64 ink levels (0-16 scaled to 0-255); same levels, same bytes."""
    from PIL import Image

    gray = np.rint(np.asarray(levels, dtype=np.float64).reshape(SIDE, SIDE) * (255 / LEVELS)).astype(np.uint8)
    buf = io.BytesIO()
    image = Image.fromarray(gray)  # a 2-D uint8 array is mode L (grayscale)
    image.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def write_digits(
    folder: Path, *, limit: int | None = None, seed: int = 0, validation: Path | None = None
) -> Path:
    """Write `<provider>.parquet` files (an `image` column of PNGs) and `truth/labels.parquet`; with
    `validation`, also the owner's trusted test digits there (`image`, `label`): the last
    VALIDATION_DIGITS of the draw, clean, never given to a provider."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.data.astype(np.int64)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    drawn = rng.permutation(len(labels))
    held = drawn[len(drawn) - VALIDATION_DIGITS :] if validation else drawn[:0]
    order = drawn[: len(drawn) - len(held)][:limit]
    if validation:
        images = pa.array([digit_png(pixels[i]) for i in held], pa.binary())
        labels_held = pa.array([str(v) for v in labels[held]])
        validation.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({FIELD: images, "label": labels_held}), validation)
    owner = np.arange(len(order)) % len(PROVIDERS)

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(exist_ok=True)
    truth_images, truth_labels = [], []
    for p, provider in enumerate(PROVIDERS):
        idx = order[owner == p]
        rows = pixels[idx].copy()
        if provider in NOISY:
            mask = rng.random(rows.shape) < NOISY[provider]
            rows[mask] = rng.integers(0, LEVELS + 1, size=int(mask.sum()))
        images = [digit_png(r) for r in rows]
        pq.write_table(pa.table({FIELD: pa.array(images, pa.binary())}), folder / f"{provider}.parquet")
        truth_images.extend(images)
        truth_labels.extend(labels[idx].tolist())
    pq.write_table(
        pa.table(
            {FIELD: pa.array(truth_images, pa.binary()), "label": pa.array([str(v) for v in truth_labels])}
        ),
        folder / "truth" / "labels.parquet",
    )
    return folder
