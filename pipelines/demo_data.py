"""The demo's dataset: scikit-learn's bundled digits (no download), split across providers.

Each provider gets one Parquet file (the folder layout `load_source` reads as "one provider
per file"). One provider's images are degraded by noise, so the attribution has a real
difference in data quality to find. The true labels go to a separate file that only the
simulated annotators read: the dataset itself carries no labels, as with real raw data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PROVIDERS = ("clinic-north", "clinic-south", "school-east", "school-west", "scanner-noisy")
NOISY = {"scanner-noisy": 0.6}  # share of pixels replaced by noise


def write_digits(folder: Path, *, limit: int | None = None, seed: int = 0) -> Path:
    """Write `<provider>.parquet` files and `truth/labels.parquet`; return the folder."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.data.astype(np.int64)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))[:limit]
    owner = np.arange(len(order)) % len(PROVIDERS)

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(exist_ok=True)
    truth_pixels, truth_labels = [], []
    for p, provider in enumerate(PROVIDERS):
        idx = order[owner == p]
        rows = pixels[idx].copy()
        if provider in NOISY:
            mask = rng.random(rows.shape) < NOISY[provider]
            rows[mask] = rng.integers(0, 17, size=int(mask.sum()))
        pq.write_table(
            pa.table({"pixels": pa.array(list(rows), pa.list_(pa.int64()))}), folder / f"{provider}.parquet"
        )
        truth_pixels.extend(rows.tolist())
        truth_labels.extend(labels[idx].tolist())
    pq.write_table(
        pa.table(
            {
                "pixels": pa.array(truth_pixels, pa.list_(pa.int64())),
                "label": pa.array([str(v) for v in truth_labels]),
            }
        ),
        folder / "truth" / "labels.parquet",
    )
    return folder
