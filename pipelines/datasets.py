"""Raw datasets into the `examples` contract: load any supported source, hash each row's content.

An example's id is the sha256 of its payload as RFC 8785 canonical JSON, so the same content
gets the same id whoever supplies it and in whatever order it arrives; the provider and the
source are *about* the row, not part of it. A file source is named by its content (the CIDv1 of
its bytes, as the store pins it), never by where it lay on the ingesting machine: the same files
give the same examples, snapshot and records on any machine.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import rfc8785

from pipelines.duplicates import Grouping, group_duplicates
from storage import cid_for_file

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
class SourceFile:
    """One raw file of a source, by content: its name picks the reader (and a folder file's provider)."""

    name: str
    cid: str
    provider: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "cid": self.cid, "provider": self.provider}


@dataclass(frozen=True)
class IngestReport:
    rows_in: int
    examples: int
    duplicates_dropped: int
    providers: int
    grouping: Grouping | None = None  # duplicates grouped for credit (pipelines.duplicates)


def source_files(source: str, *, provider: str | None = None) -> list[tuple[Path, SourceFile]]:
    """The raw files of a file or folder source, each with its content's CID (a folder's file is
    the provider named by its stem, unless `provider` is given)."""
    path = Path(source)
    if not path.exists():
        raise DatasetError(
            f"dataset {source!r} does not exist; pass a Parquet/CSV/JSONL file, a folder of them, or hf:NAME"
        )
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIX_READERS)
        if not files:
            raise DatasetError(f"folder {source!r} holds no .parquet, .csv or .jsonl file")
    else:
        files = [path]
    folder = path.is_dir()
    return [
        (f, SourceFile(f.name, cid_for_file(f, cid_version=1), (provider or f.stem) if folder else provider))
        for f in files
    ]


def load_source(source: str, *, provider: str | None = None) -> pa.Table:
    """Read a file, a folder of files (one provider per file: its stem), or `hf:NAME`.

    A table without a `provider` column takes `provider` (or, for a folder, the file stem).
    """
    if source.startswith("hf:"):
        table = _load_hf(source[3:])
        return _with_provider(table, provider, source)
    files = source_files(source, provider=provider)
    paths = {f.cid: path for path, f in files}
    return load_files([f for _, f in files], lambda cid: paths[cid].read_bytes())


def load_files(files: Sequence[SourceFile], read: Callable[[str], bytes]) -> pa.Table:
    """The rows of each source file, fetched by CID with `read` (the content store's `get`)."""
    tables = [_with_provider(_read_file(f.name, read(f.cid)), f.provider, f.cid) for f in files]
    return pa.concat_tables(tables, promote_options="permissive")


def _read_file(name: str, data: bytes) -> pa.Table:
    suffix = Path(name).suffix.lower()
    reader = SUFFIX_READERS.get(suffix)
    if reader is None:
        raise DatasetError(
            f"unknown dataset format {suffix!r} for {name}; "
            f"use one of {', '.join(sorted(SUFFIX_READERS))} or hf:NAME"
        )
    try:
        return reader(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"cannot read {name} as {suffix[1:]}: {exc}") from exc


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


def to_examples(
    table: pa.Table, registered_at: Mapping[str, str] | None = None
) -> tuple[pa.Table, IngestReport]:
    """Add `example_id`, keep one row of each content, and group duplicates for credit.

    `registered_at` maps each row's `source` to when it was registered (ISO 8601 UTC; the
    catalog's `registered_at`); without it every source counts as registered at the same time.
    The row kept for an exact copy is the first-registered source's (ties by provider, then
    source), so the winner does not depend on input order. `report.grouping` holds the
    `example_credit` table (`pipelines.duplicates`): duplicates paid once, to the first registrant.
    """
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
    sources = out["source"].to_pylist()
    if registered_at is None:
        times = [""] * len(sources)
    else:
        unknown = sorted({s for s in sources if s not in registered_at})
        if unknown:
            raise DatasetError(f"no registration time for sources {unknown[:5]}; register them again")
        times = [registered_at[s] for s in sources]
    out = out.append_column("_registered_at", pa.array(times, pa.string()))
    order = pc.sort_indices(
        out,
        [("example_id", "ascending"), ("_registered_at", "ascending"), ("provider", "ascending"),
         ("source", "ascending")],
    )
    out = out.take(order)
    keep = _first_of_runs(out.column("example_id").to_numpy(zero_copy_only=False))
    # the providers that registered each content first (all of them when registered at the same time)
    claimants: list[tuple[str, list[str]]] = []
    for t, p, first in zip(
        out["_registered_at"].to_pylist(), out["provider"].to_pylist(), keep.tolist(), strict=True
    ):
        if first:
            claimants.append((t, [p]))
        elif t == claimants[-1][0] and p not in claimants[-1][1]:
            claimants[-1][1].append(p)  # rows are sorted by provider: the list stays sorted
    deduped = out.filter(pa.array(keep)).drop_columns(["_registered_at"])
    counts = pc.value_counts(out["example_id"]).field("counts").to_numpy()
    exact_groups = int((counts > 1).sum())
    shared = sum(len(ps) > 1 for _, ps in claimants)
    grouping = group_duplicates(
        deduped,
        claimants,
        payload,
        out["provider"].to_pylist(),
        (exact_groups, table.num_rows - deduped.num_rows, shared),
    )
    report = IngestReport(
        rows_in=table.num_rows,
        examples=deduped.num_rows,
        duplicates_dropped=table.num_rows - deduped.num_rows,
        providers=len(pc.unique(deduped.column("provider"))),
        grouping=grouping,
    )
    return deduped, report


def validation_examples(table: pa.Table, dataset: pa.Table, choices: Sequence[str]) -> pa.Table:
    """A declared validation set as examples with trusted labels (`example_id`, payload, `label`).

    It is what training measures influence against, so it must never be trained on: refused if
    empty, without a `label` column, with other payload columns than the dataset's, with labels
    outside the label set, or sharing any example with the dataset.
    """
    if table.num_rows == 0:
        raise DatasetError("the validation set is empty: give examples with trusted labels or none at all")
    if "label" not in table.column_names:
        raise DatasetError("the validation set has no 'label' column: each example needs its trusted answer")
    payload = [c for c in table.column_names if c not in (*RESERVED, "label")]
    expected = [c for c in dataset.column_names if c not in (*RESERVED, "label", "confidence", "n_votes")]
    if sorted(payload) != sorted(expected):
        raise DatasetError(f"validation payload columns {payload} differ from the dataset's {expected}")
    labels = [str(v) for v in table["label"].to_pylist()]
    unknown = sorted(set(labels) - set(choices))
    if unknown:
        raise DatasetError(f"validation labels {unknown[:5]} are not in the label set {list(choices)}")
    ids = [example_id(r) for r in table.select(payload).to_pylist()]
    overlap = sorted(set(ids) & set(dataset["example_id"].to_pylist()))
    if overlap:
        raise DatasetError(
            f"{len(overlap)} validation examples are also in the dataset (e.g. {overlap[0][:16]}): "
            "a validation set must not be trained on; remove them from one side"
        )
    out = table.select(sorted(payload)).add_column(0, "example_id", pa.array(ids, pa.string()))
    return out.append_column("label", pa.array(labels, pa.string())).sort_by("example_id")


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
