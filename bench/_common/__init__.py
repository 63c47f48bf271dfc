"""Helpers shared by the benchmark scripts (a package, so ``make bench``'s ``bench/*.py`` loop skips it).

Import as ``from bench._common import ...``: every script puts the repository root on ``sys.path``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F


def load(data: str | None, label_col: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Features (float64) and class indices of ``data`` (a Parquet file; numeric feature columns
    and ``label_col``), or of scikit-learn's bundled digits when ``data`` is None."""
    if data is None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(data)
        if label_col is None or label_col not in table.column_names:
            sys.exit(f"error: --label-col must name a column of {data} (columns: {table.column_names})")
        frame = table.to_pandas()
        labels = frame.pop(label_col)
        numeric = frame.select_dtypes("number")
        if numeric.shape[1] == 0:
            sys.exit(f"error: {data} has no numeric feature columns besides {label_col!r}")
        x, y = numeric.to_numpy(np.float64), np.unique(labels.astype(str), return_inverse=True)[1]
    return x.astype(np.float64), np.asarray(y, dtype=np.int64)


def log_p_true(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's log-probability of its true class (minus the mean is the cross-entropy loss)."""
    with torch.no_grad():
        logp = F.log_softmax(model(torch.as_tensor(x)), dim=1)
    return logp[torch.arange(len(y)), torch.as_tensor(y)].numpy().astype(np.float64)
