"""From an Arrow table of examples to model inputs, the same way at training and at serving time.

The encoding is a small JSON document stored beside the model (its CID is in the run's
record), so a served model turns a request into exactly the inputs it was trained on.
Feature columns, in column order:

- a numeric or boolean column: one feature; a fixed-length list of numbers (an embedding): one
  feature per position;
- a column of strings with at most ``MAX_CATEGORIES`` distinct values and ``MIN_ROWS_PER_CATEGORY``
  rows per value on average: one-hot, values in sorted order (a missing value, or one training never
  saw, is all zeros);
- anything else (ids, free text, ragged lists) is left out, and ``left_out`` names it.

Features are standardized with the training rows' mean and deviation. A missing number (null or
NaN) is taken as the training mean, so it enters the model as 0: a table with gaps trains and
serves with nothing stored beyond the mean the scaling already holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .errors import InputError

if TYPE_CHECKING:
    from .task import ModelSpec

NON_FEATURES = frozenset({"example_id", "provider", "source", "label", "confidence", "n_votes"})
MAX_CATEGORIES = 32  # more distinct strings than this is an id or free text, not a category
MIN_ROWS_PER_CATEGORY = 5  # ... and so are values with fewer rows than this each on average


@dataclass(frozen=True)
class InputEncoding:
    """The numeric encoding of an MLP run: its feature columns and their widths, the training rows' mean
    and deviation per feature, the sorted classes and the one-hot columns' values. Stored as JSON beside
    the model, so serving encodes a request as training encoded its rows."""

    columns: tuple[str, ...]
    widths: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    # (column, its values in sorted order) for each one-hot column; () for a table of numbers only,
    # whose JSON then has no such key, so the encodings of earlier runs read and hash as they did
    categories: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def n_features(self) -> int:
        """The model's input width: ``widths`` summed (a one-hot column counts each of its values)."""
        return sum(self.widths)

    def mlp(self, hidden: Sequence[int]) -> ModelSpec:
        """The MLP classifier this encoding feeds: its features in, ``hidden`` widths, its classes
        out (the one mapping training, review and the sample run share)."""
        from .task import ModelSpec

        return ModelSpec((self.n_features, *hidden, len(self.classes)))

    @classmethod
    def fit(cls, table: pa.Table, labels: Sequence[str] = ()) -> InputEncoding:
        """Feature columns of ``table`` and their scale; ``labels`` give the sorted class list (none
        where only the features are wanted: ingest's near-duplicates, the benches' loader)."""
        columns = [c for c in table.column_names if c not in NON_FEATURES]
        categories = {c: v for c in columns if (v := _categories(table.column(c))) is not None}
        usable = [c for c in columns if c in categories or _is_numbers(table.column(c))]
        if not usable:
            raise InputError(
                f"no feature column among {columns}; the model needs numbers (scalar columns or "
                f"fixed-length numeric lists) or categories (at most {MAX_CATEGORIES} distinct strings)"
            )
        widths = tuple(len(categories[c]) if c in categories else _width(table, c) for c in usable)
        one_hot = tuple((c, categories[c]) for c in usable if c in categories)
        raw = _matrix(table, usable, dict(one_hot))
        mean = np.nanmean(raw, axis=0)  # every column has a number (_is_numbers), so no all-NaN mean
        std = np.where(np.isnan(raw), mean, raw).std(axis=0)  # of the features as the model sees them
        std[std == 0] = 1.0
        classes = tuple(sorted({str(v) for v in labels}))
        return cls(tuple(usable), widths, tuple(mean.tolist()), tuple(std.tolist()), classes, one_hot)

    def left_out(self, table: pa.Table) -> list[str]:
        """The payload columns of ``table`` that are not features (free text, ids, ragged lists): the
        model never sees them, which a data engineer must be told rather than find out from its accuracy."""
        return [c for c in table.column_names if c not in NON_FEATURES and c not in self.columns]

    def transform(self, table: pa.Table) -> np.ndarray:
        """float64 ``[n, n_features]`` model inputs: ``scale`` of ``raw``, at training and serving alike."""
        return self.scale(self.raw(table))

    def raw(self, table: pa.Table) -> np.ndarray:
        """``table``'s features before scaling (categories one-hot), a missing number the training mean:
        the row a served prediction hashes and a pending one stores."""
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            raise InputError(
                f"input lacks feature columns {missing}; the model was trained on {list(self.columns)}"
            )
        raw = _matrix(table, list(self.columns), dict(self.categories), self.widths)
        gaps = np.isnan(raw)
        return np.where(gaps, np.asarray(self.mean), raw) if gaps.any() else raw

    def raw_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``raw`` of inputs sent as named fields (``{column: value}``, a category as its string, a
        missing value null). A field the model does not read is ignored, as training left it out (a
        whole row may be sent); ``InputError`` naming any of the model's fields an input lacks."""
        for i, record in enumerate(records):
            absent = [c for c in self.columns if c not in record]
            if absent:
                unknown = sorted(set(record) - set(self.columns))
                raise InputError(
                    f"input {i} lacks fields {absent[:10]} (send null for a missing value)"
                    + (f", and has {unknown[:10]}, which the model does not read" if unknown else "")
                    + f"; the model's fields are {list(self.columns)}"
                )
        one_hot = dict(self.categories)
        arrays = {}
        for column, width in zip(self.columns, self.widths, strict=True):
            values = [record[column] for record in records]
            if column in one_hot:
                arrays[column] = pa.array([_category_text(v) for v in values], pa.string())
                continue
            kind = pa.float64() if all(v is None or not isinstance(v, list) for v in values) else (
                pa.list_(pa.float64()))
            try:
                arrays[column] = pa.array(values, kind)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
                raise InputError(f"field {column!r} takes {'a number' if width == 1 else f'{width} numbers'}"
                                 f"{'' if width == 1 else ' (a list)'} or null") from None
        return self.raw(pa.table(arrays))

    def unseen(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
        """Per input sent as named fields, each category whose value training never saw: it reads as
        none of the known values (all zeros), so the caller should learn the model answered without it."""
        known = {column: set(values) for column, values in self.categories}
        return [
            {c: text for c, values in known.items()
             if (text := _category_text(record.get(c))) is not None and text not in values}
            for record in records
        ]

    def scale(self, raw: np.ndarray) -> np.ndarray:
        """``raw`` features standardized by the training mean and deviation (float64 [n, n_features]);
        an ``InputError`` for another width or a NaN or inf (``raw()`` has already filled missing numbers)."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != self.n_features:
            raise InputError(f"expected {self.n_features} features per input, got shape {raw.shape}")
        if not np.isfinite(raw).all():
            raise InputError("inputs hold NaN or inf values; send finite numbers")
        return (raw - np.asarray(self.mean)) / np.asarray(self.std)

    def label_indices(self, labels: Sequence[str]) -> np.ndarray:
        """Each label's int64 index in ``classes``, compared as strings; an ``InputError`` names labels
        outside the set."""
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({str(v) for v in labels} - index.keys())
        if unknown:
            raise InputError(f"labels {unknown[:10]} are not in the label set {list(self.classes)}")
        return np.array([index[str(v)] for v in labels], dtype=np.int64)

    def to_json(self) -> bytes:
        """Canonical JSON bytes (sorted keys, no spaces), stored by CID in the training record; no
        ``categories`` key for a table of numbers only, so earlier runs' encodings hash as they did."""
        doc = asdict(self)
        doc["categories"] = {c: list(v) for c, v in self.categories}
        if not self.categories:
            del doc["categories"]
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> InputEncoding:
        """The encoding ``to_json`` wrote: an equal one, which writes the same bytes again."""
        raw = json.loads(data)
        categories = tuple((c, tuple(v)) for c, v in raw.pop("categories", {}).items())
        return cls(**{k: tuple(v) for k, v in raw.items()}, categories=categories)


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


def _is_numbers(col: pa.ChunkedArray) -> bool:
    """A numeric (or list of numbers) column with at least one value: an all-missing one says nothing."""
    if not _is_numeric(col.type):
        return False
    values = pa.compute.list_flatten(col) if _is_list(col.type) else col
    if not pa.types.is_floating(values.type):
        return values.null_count < len(values)
    return bool(pa.compute.any(pa.compute.invert(pa.compute.is_nan(values))).as_py())  # nulls skipped


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _categories(col: pa.ChunkedArray) -> tuple[str, ...] | None:
    """A string column's values, sorted, if it reads as a category (see the module's docstring)."""
    if not _is_text(col.type):
        return None
    distinct = pa.compute.unique(col.cast(pa.string()))  # a long free-text column is never listed whole
    if len(distinct) > MAX_CATEGORIES + 1:  # (+1: the null)
        return None
    values = sorted(v for v in distinct.to_pylist() if v is not None)
    if not values or len(values) > MAX_CATEGORIES or len(values) * MIN_ROWS_PER_CATEGORY > len(col):
        return None
    return tuple(values)


def _strings(col: pa.ChunkedArray) -> list[str | None]:
    try:
        return col.cast(pa.string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return [None if v is None else str(v) for v in col.to_pylist()]


def _width(table: pa.Table, column: str) -> int:
    col = table.column(column)
    if not _is_list(col.type):
        return 1
    lengths = set(pa.compute.list_value_length(col).to_pylist()) - {None}  # a null row is a gap
    if len(lengths) != 1:
        raise InputError(
            f"list column {column!r} has rows of different lengths {sorted(lengths)}; "
            "features need one fixed length"
        )
    return lengths.pop()


def _matrix(table: pa.Table, columns: Sequence[str], categories: Mapping[str, tuple[str, ...]],
            widths: Sequence[int] | None = None) -> np.ndarray:
    """The raw features, categories one-hot, a missing number NaN; ``InputError`` naming a column that
    does not hold what the encoding reads from it (or not ``widths`` numbers per row, where given)."""
    parts = []
    for i, c in enumerate(columns):
        col = table.column(c)
        if widths is not None and c not in categories and col.null_count == len(col):  # a request's null
            parts.append(np.full((len(col), widths[i]), np.nan))
            continue
        try:
            parts.append(_one_hot(_strings(col), categories[c]) if c in categories else _numbers(col))
        except (ValueError, TypeError, pa.ArrowInvalid):
            raise InputError(f"column {c!r} ({col.type}) cannot be read as the model's feature "
                             f"{'categories' if c in categories else 'numbers'}") from None
    if widths is not None:
        for c, part, w in zip(columns, parts, widths, strict=True):
            if part.shape[1] != w:
                raise InputError(f"column {c!r} holds {part.shape[1]} values per row; the model takes {w}")
    return np.hstack(parts)


def _numbers(col: pa.ChunkedArray) -> np.ndarray:
    if not _is_list(col.type):
        return np.asarray(col.combine_chunks().to_numpy(zero_copy_only=False), dtype=np.float64)[:, None]
    rows = col.to_pylist()
    width = max(len(r) for r in rows if r is not None)
    if any(r is not None and len(r) != width for r in rows):
        raise ValueError("rows of different lengths")
    return np.asarray([[np.nan] * width if r is None else r for r in rows], dtype=np.float64)


def _category_text(value: Any) -> str | None:
    """A category sent as a JSON value: a whole number (a code such as 10115) reads as its digits."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None if value is None else str(value)


def _one_hot(values: list[str | None], known: tuple[str, ...]) -> np.ndarray:
    index = {v: j for j, v in enumerate(known)}
    out = np.zeros((len(values), len(known)))
    rows = [(i, index[v]) for i, v in enumerate(values) if v in index]
    if rows:
        out[tuple(np.array(rows).T)] = 1.0
    return out
