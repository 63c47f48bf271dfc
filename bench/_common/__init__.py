"""Helpers shared by the benchmark scripts (a package, so ``make bench``'s ``bench/*.py`` loop skips it).

Import as ``from bench._common import ...``: every script puts the repository root on ``sys.path``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator

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
        labelled = labels.notna().to_numpy()
        x = features(frame[labelled].reset_index(drop=True))
        if x.shape[1] == 0:
            sys.exit(f"error: {data} has no feature columns besides {label_col!r} (numbers, lists of numbers "
                     f"or categories of at most {MAX_CATEGORIES} values)")
        y = class_indices(labels[labelled].astype(str), label_col)
        x = impute(x, dropped=int((~labelled).sum()))
    return x.astype(np.float64), np.asarray(y, dtype=np.int64)


MIN_ROWS_PER_CLASS = 5  # on average: fewer, and the column is an identifier or a continuous target
MAX_CATEGORIES = 32  # distinct values of a non-numeric column one-hot encoded; more: an id or free text


def features(frame) -> np.ndarray:
    """The feature matrix of a table's columns (a pandas frame, the label column removed), so a user's
    real table trains on what decides its class, not only on its numbers: numeric and boolean columns
    as they are (missing values NaN, for ``impute``); fixed-length lists of numbers (an embedding) one
    feature per position; a column of other values (strings, categories) with at most
    ``MAX_CATEGORIES`` distinct values and ``MIN_ROWS_PER_CLASS`` rows per value on average one-hot
    encoded, values in sorted order (a missing value: all zeros); anything else (ids, free text,
    ragged lists) left out. Says in one line what it encoded and what it left out."""
    parts, encoded, left_out = [], [], []
    for name in frame.columns:
        col = frame[name]
        if col.dtype.kind in "biuf":
            parts.append(col.to_numpy(dtype=np.float64, na_value=np.nan)[:, None])
            continue
        present = col[col.notna()]
        if len(present) and all(isinstance(v, list | tuple | np.ndarray) for v in present):
            widths = {len(v) for v in present}
            numbers = len(widths) == 1 and all(np.asarray(v).dtype.kind in "biuf" for v in present)
            if numbers and present.size == col.size:
                parts.append(np.stack([np.asarray(v, dtype=np.float64) for v in col]))
                encoded.append(f"{name} ({widths.pop()} numbers)")
            else:
                left_out.append(name)
            continue
        values = sorted({str(v) for v in present})
        if not values or len(values) > MAX_CATEGORIES or len(values) * MIN_ROWS_PER_CLASS > len(col):
            left_out.append(name)
            continue
        text = col.where(col.isna(), col.astype(str)).to_numpy(dtype=object)
        parts.append(np.stack([(text == v).astype(np.float64) for v in values], axis=1))
        encoded.append(f"{name} ({len(values)} categories)")
    if encoded or left_out:
        print(f"data: encoded {', '.join(encoded) or 'nothing'} as features; left out "
              f"{', '.join(map(str, left_out)) or 'nothing'} (not numbers, lists of numbers of one length, "
              f"or at most {MAX_CATEGORIES} categories with {MIN_ROWS_PER_CLASS}+ rows each)", flush=True)
    return np.hstack(parts) if parts else np.zeros((len(frame), 0))


def class_indices(labels: object, label_col: str | None) -> np.ndarray:
    """Each label's class index (classes in sorted order), or one error line: these benches measure
    classifiers, so the column must hold two classes or more, and not one per row or so (a regression
    target or an id column is binned or chosen again by the user, never guessed at here)."""
    names, y = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    if len(names) < 2:
        sys.exit(f"error: --label-col {label_col} holds one class only; a classifier needs two or more")
    if len(names) * MIN_ROWS_PER_CLASS > len(y):
        sys.exit(f"error: --label-col {label_col} holds {len(names)} distinct values in {len(y)} rows (fewer "
                 f"than {MIN_ROWS_PER_CLASS} rows per class): these benches need class labels; bin a "
                 "continuous target into classes, or name the class column")
    return y.astype(np.int64)


def impute(x: np.ndarray, *, dropped: int = 0) -> np.ndarray:
    """Missing or infinite features replaced by their column's median (a column with no finite value is
    dropped), so a real file with gaps trains; says what it did (and how many unlabeled rows were
    dropped) in one line."""
    finite = np.isfinite(x)
    keep = finite.any(axis=0)
    x, finite = x[:, keep], finite[:, keep]
    medians = np.array([np.median(col[ok]) for col, ok in zip(x.T, finite.T, strict=True)])
    filled = int((~finite).sum())
    x = np.where(finite, x, medians)
    if filled or dropped or not keep.all():
        print(f"data: {dropped} rows without a label dropped, {filled} missing or infinite feature values "
              f"set to their column's median, {int((~keep).sum())} columns without a finite value dropped",
              flush=True)
    return x


def log_p_true(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's log-probability of its true class (minus the mean is the cross-entropy loss)."""
    with torch.no_grad():
        logp = F.log_softmax(model(torch.as_tensor(x)), dim=1)
    return logp[torch.arange(len(y)), torch.as_tensor(y)].numpy().astype(np.float64)


def lockstep(
    plain: Generator, attributed: Generator, plain_first: bool, sync: Callable[[], None] | None = None
) -> tuple[list[float], list[float], object]:
    """Run two step generators alternately, timing every segment (setup and tail included), so
    load from other processes falls on both alike. ``sync`` (``torch.cuda.synchronize``) waits for
    queued device work before a segment's clock stops. Returns both segment times and the
    attributed generator's result."""
    order = [("p", plain), ("a", attributed)] if plain_first else [("a", attributed), ("p", plain)]
    times: dict[str, list[float]] = {"p": [], "a": []}
    result, live = None, dict(order)
    while live:
        for key, gen in order:
            if key not in live:
                continue
            t0 = time.perf_counter()
            try:
                next(gen)
            except StopIteration as done:
                live.pop(key)
                result = done.value if key == "a" else result
            if sync is not None:
                sync()
            times[key].append(time.perf_counter() - t0)
    return times["p"], times["a"], result
