"""From an Arrow table of examples to model inputs, the same way at training and at serving time.

The encoding is a small JSON document stored beside the model (its CID is in the run's
record), so a served model turns a request into exactly the inputs it was trained on.
Numeric scalar columns and fixed-length numeric list columns become feature columns, in
column order; features are standardized with the training set's mean and deviation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from .errors import InputError

if TYPE_CHECKING:
    from .task import ModelSpec

NON_FEATURES = frozenset({"example_id", "provider", "source", "label", "confidence", "n_votes"})


@dataclass(frozen=True)
class InputEncoding:
    columns: tuple[str, ...]
    widths: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    @property
    def n_features(self) -> int:
        return sum(self.widths)

    def mlp(self, hidden: Sequence[int]) -> ModelSpec:
        """The MLP classifier this encoding feeds: its features in, ``hidden`` widths, its classes
        out (the one mapping training, review and the sample run share)."""
        from .task import ModelSpec

        return ModelSpec((self.n_features, *hidden, len(self.classes)))

    @classmethod
    def fit(cls, table: pa.Table, labels: Sequence[str]) -> InputEncoding:
        """Feature columns of ``table`` and their scale; ``labels`` give the sorted class list."""
        columns = [c for c in table.column_names if c not in NON_FEATURES]
        usable = [c for c in columns if _is_numeric(table.schema.field(c).type)]
        if not usable:
            raise InputError(
                f"no numeric feature column among {columns}; the model needs numbers "
                "(scalar columns or fixed-length numeric lists)"
            )
        widths = tuple(_width(table, c) for c in usable)  # checks list lengths before stacking
        raw = _matrix(table, usable)
        mean = raw.mean(axis=0)
        std = raw.std(axis=0)
        std[std == 0] = 1.0
        classes = tuple(sorted({str(v) for v in labels}))
        return cls(tuple(usable), widths, tuple(mean.tolist()), tuple(std.tolist()), classes)

    def left_out(self, table: pa.Table) -> list[str]:
        """The payload columns of ``table`` that are not features (strings, ragged lists): the model
        never sees them, which a data engineer must be told rather than find out from its accuracy."""
        return [c for c in table.column_names if c not in NON_FEATURES and c not in self.columns]

    def transform(self, table: pa.Table) -> np.ndarray:
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            raise InputError(
                f"input lacks feature columns {missing}; the model was trained on {list(self.columns)}"
            )
        return self.scale(_matrix(table, list(self.columns)))

    def scale(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != self.n_features:
            raise InputError(f"expected {self.n_features} features per input, got shape {raw.shape}")
        if not np.isfinite(raw).all():
            raise InputError("inputs hold NaN or inf values; send finite numbers")
        return (raw - np.asarray(self.mean)) / np.asarray(self.std)

    def label_indices(self, labels: Sequence[str]) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({str(v) for v in labels} - index.keys())
        if unknown:
            raise InputError(f"labels {unknown[:10]} are not in the label set {list(self.classes)}")
        return np.array([index[str(v)] for v in labels], dtype=np.int64)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> InputEncoding:
        raw = json.loads(data)
        return cls(**{k: tuple(v) for k, v in raw.items()})


@dataclass(frozen=True)
class EncodedSplit:
    """A labeled table cut into training rows and held-out targets, both encoded by one encoding
    (fitted on the training rows): what training, its sharded features and the sample run share."""

    encoding: InputEncoding
    X: np.ndarray  # float64 [n_train, n_features]
    y: np.ndarray  # int64 class indices
    example_ids: list[str]
    X_targets: np.ndarray
    y_targets: np.ndarray
    target_ids: list[str]


def split_rows(table: pa.Table, is_target: Sequence[bool] | np.ndarray) -> tuple[pa.Table, pa.Table]:
    """(training rows, target rows) of a labeled table by a target mask, keeping row order;
    ``InputError`` for a mask of the wrong length or a part left empty."""
    mask = np.asarray(is_target, dtype=bool)
    if mask.shape != (table.num_rows,):
        raise InputError(f"the target mask has shape {mask.shape}, the table {table.num_rows} rows")
    train, targets = table.filter(pa.array(~mask)), table.filter(pa.array(mask))
    if train.num_rows == 0 or targets.num_rows == 0:
        raise InputError(
            f"{table.num_rows} labeled examples are too few to hold out targets "
            f"({train.num_rows} to train on, {targets.num_rows} targets); label more data"
        )
    return train, targets


def encode_split(
    table: pa.Table, is_target: Sequence[bool] | np.ndarray, *, encoding: InputEncoding | None = None
) -> EncodedSplit:
    """Split a labeled table (feature columns, ``example_id``, ``label``) by a target mask, keeping row
    order, and encode both parts: with ``encoding`` as stored beside a trained model, else one fitted
    on the training rows. ``InputError`` if either part is empty or a label is unknown."""
    missing = [c for c in ("example_id", "label") if c not in table.column_names]
    if missing:
        raise InputError(f"the labeled table lacks column(s) {missing}")
    train, targets = split_rows(table, is_target)
    labels = train["label"].to_pylist()
    enc = encoding or InputEncoding.fit(train, labels)
    return EncodedSplit(
        enc,
        enc.transform(train),
        enc.label_indices(labels),
        train["example_id"].to_pylist(),
        enc.transform(targets),
        enc.label_indices(targets["label"].to_pylist()),
        targets["example_id"].to_pylist(),
    )


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_numeric(t: pa.DataType) -> bool:
    if _is_list(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _width(table: pa.Table, column: str) -> int:
    col = table.column(column)
    if not _is_list(col.type):
        return 1
    lengths = set(pa.compute.list_value_length(col).to_pylist())
    if len(lengths) != 1 or None in lengths:
        raise InputError(
            f"list column {column!r} has rows of different lengths {sorted(x for x in lengths if x)}; "
            "features need one fixed length"
        )
    return lengths.pop()


def _matrix(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    parts = []
    for c in columns:
        col = table.column(c).combine_chunks()
        if _is_list(col.type):
            parts.append(np.asarray(col.to_pylist(), dtype=np.float64).reshape(len(col), -1))
        else:
            parts.append(np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)[:, None])
    return np.hstack(parts)
