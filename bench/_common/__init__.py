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
    """Features (float64) and class indices of ``data`` (a Parquet file: its feature columns, encoded
    by ``features``, and ``label_col``), or of scikit-learn's bundled digits when ``data`` is None."""
    if data is None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
    else:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from attribution import MAX_CATEGORIES

        table = pq.read_table(data)
        if label_col is None or label_col not in table.column_names:
            sys.exit(f"error: --label-col must name a column of {data} (columns: {table.column_names})")
        labels = table[label_col]
        labelled = pc.is_valid(labels)
        if pa.types.is_floating(labels.type):
            labelled = pc.and_(labelled, pc.invert(pc.is_nan(labels)))
        rows = table.filter(labelled)
        x = features(rows.drop_columns([label_col]))
        if x.shape[1] == 0:
            sys.exit(f"error: {data} has no feature columns besides {label_col!r} (numbers, lists of numbers "
                     f"or categories of at most {MAX_CATEGORIES} values)")
        y = class_indices([str(v) for v in rows[label_col].to_pylist()], label_col)
        x = impute(x, dropped=table.num_rows - rows.num_rows)
    return x.astype(np.float64), np.asarray(y, dtype=np.int64)


MIN_ROWS_PER_CLASS = 5  # on average: fewer, and the column is an identifier or a continuous target


def features(table) -> np.ndarray:
    """The feature matrix of a table's columns (an Arrow table, the label column removed), encoded as a
    numeric pipeline run encodes its own (``attribution.InputEncoding``), so a user's real table trains
    on what decides its class, not only on its numbers: numbers as they are, a fixed-length list of
    numbers (an embedding) one feature per position, a column of at most ``MAX_CATEGORIES`` strings
    one-hot (a missing value: all zeros), a missing number its column's mean; ids, free text and ragged
    lists left out. Says in one line what it encoded and what it left out."""
    from attribution import MAX_CATEGORIES, InputEncoding, InputError  # pyarrow: not in the GPU bench's
    # torch-and-numpy-only environment, which imports this package for its other helpers

    try:  # an infinite value makes its column's mean and deviation NaN; ``impute`` replaces it after
        with np.errstate(invalid="ignore"):
            enc = InputEncoding.fit(table)
    except InputError:
        return np.zeros((table.num_rows, 0))
    categories = dict(enc.categories)
    encoded = [f"{c} ({len(categories[c])} categories)" if c in categories else f"{c} ({w} numbers)"
               for c, w in zip(enc.columns, enc.widths, strict=True) if c in categories or w > 1]
    left_out, gaps = enc.left_out(table), sum(table[c].null_count for c in enc.columns)
    if encoded or left_out or gaps:
        print(f"data: encoded {', '.join(encoded) or 'nothing'} as features; {gaps} missing values set to "
              f"their column's mean; left out {', '.join(map(str, left_out)) or 'nothing'} (not numbers, "
              f"lists of numbers of one length, or a few categories: at most {MAX_CATEGORIES})", flush=True)
    return enc.raw(table)


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
