"""Raw datasets into the `examples` contract: load any supported source, hash each row's content.

An example's id is the sha256 of its payload as RFC 8785 canonical JSON, so the same content
gets the same id whoever supplies it and in whatever order it arrives; the provider and the
source are *about* the row, not part of it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import rfc8785

SUFFIX_READERS = {
    ".parquet": pq.read_table,
    ".csv": pa_csv.read_csv,
    ".jsonl": pa_json.read_json,
    ".json": pa_json.read_json,
}
RESERVED = ("example_id", "provider", "source")


class DatasetError(ValueError):
    """A dataset that cannot become `examples`; the message says what to change."""


@dataclass(frozen=True)
class IngestReport:
    rows_in: int
    examples: int
    duplicates_dropped: int
    providers: int


def load_source(source: str, *, provider: str | None = None) -> pa.Table:
    """Read a file, a folder of files (one provider per file: its stem), or `hf:NAME`.

    A table without a `provider` column takes `provider` (or, for a folder, the file stem).
    """
    if source.startswith("hf:"):
        table = _load_hf(source[3:])
        return _with_provider(table, provider, source)
    path = Path(source)
    if not path.exists():
        raise DatasetError(
            f"dataset {source!r} does not exist; pass a Parquet/CSV/JSONL file, a folder of them, or hf:NAME"
        )
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIX_READERS)
        if not files:
            raise DatasetError(f"folder {source!r} holds no .parquet, .csv or .jsonl file")
        return pa.concat_tables(
            [_with_provider(_read_file(f), provider or f.stem, str(f)) for f in files],
            promote_options="permissive",
        )
    return _with_provider(_read_file(path), provider, str(path))


def _read_file(path: Path) -> pa.Table:
    reader = SUFFIX_READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(
            f"unknown dataset format {path.suffix!r} for {path}; "
            f"use one of {', '.join(sorted(SUFFIX_READERS))} or hf:NAME"
        )
    try:
        return reader(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"cannot read {path} as {path.suffix[1:]}: {exc}") from exc


def _load_hf(name: str) -> pa.Table:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets  # local: importing `datasets` is slow and only this path needs it

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:  # datasets raises many kinds; all mean "cannot load this name"
        raise DatasetError(f"cannot load Hugging Face dataset {name!r} offline: {exc}") from exc
    return ds.data.table


def _with_provider(table: pa.Table, provider: str | None, source: str) -> pa.Table:
    if "provider" not in table.column_names:
        if provider is None:
            raise DatasetError(
                f"{source} has no 'provider' column; add one or pass a provider "
                "(--provider NAME, or one file per provider in a folder)"
            )
        table = table.append_column("provider", pa.array([provider] * table.num_rows, pa.string()))
    if "source" not in table.column_names:
        table = table.append_column("source", pa.array([source] * table.num_rows, pa.string()))
    return table


def to_examples(table: pa.Table) -> tuple[pa.Table, IngestReport]:
    """Add `example_id`, keep the first row of each content (by provider, then source order)."""
    if table.num_rows == 0:
        raise DatasetError("the dataset has no rows")
    provider = table.column("provider")
    if provider.null_count:
        raise DatasetError(f"{provider.null_count} rows have no provider; every example needs one")
    payload = [c for c in table.column_names if c not in RESERVED]
    if not payload:
        raise DatasetError("the dataset has no payload column besides provider/source")
    rows = table.select(payload).to_pylist()
    ids = pa.array([example_id(r) for r in rows], pa.string())
    out = table.select(payload).add_column(0, "example_id", ids)
    out = out.append_column("provider", provider.cast(pa.string()))
    out = out.append_column("source", table.column("source").cast(pa.string()))
    # first occurrence wins; order by provider so the winner does not depend on input order
    order = pc.sort_indices(
        out, [("example_id", "ascending"), ("provider", "ascending"), ("source", "ascending")]
    )
    out = out.take(order)
    keep = _first_of_runs(out.column("example_id").to_numpy(zero_copy_only=False))
    deduped = out.filter(pa.array(keep))
    report = IngestReport(
        rows_in=table.num_rows,
        examples=deduped.num_rows,
        duplicates_dropped=table.num_rows - deduped.num_rows,
        providers=len(pc.unique(deduped.column("provider"))),
    )
    return deduped, report


def example_id(payload: dict) -> str:
    return hashlib.sha256(rfc8785.dumps(_jsonable(payload))).hexdigest()


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 1.0 and 1 are the same content, whichever reader parsed it
    return value


def _first_of_runs(ids: np.ndarray) -> np.ndarray:
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    return keep
