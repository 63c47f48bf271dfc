"""Raw datasets into the `examples` contract: load any supported source, hash each row's content.

An example's id is the sha256 of its payload as RFC 8785 canonical JSON, so the same content
gets the same id whoever supplies it and in whatever order it arrives; the provider and the
source are *about* the row, not part of it. A file source is named by its content (the CIDv1 of
its bytes, as the store pins it), never by where it lay on the ingesting machine: the same files
give the same examples, snapshot and records on any machine.

Text and image payloads follow one contract (`Payload`, from the catalog's labeling spec): a
text column is Arrow `string` of valid, non-empty UTF-8; an image column is Arrow `binary` of the
encoded PNG/JPEG file bytes (never a path), so an image's id hashes its bytes. Images come as a
folder with one subfolder per provider, or as a table column of bytes or of paths relative to the
table's folder (each referenced file pinned by CID beside the table: `SourceFile.refs`).
"""

from __future__ import annotations

import hashlib
import io
import math
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
from storage import arrow_stream, cid_for_file

SUFFIX_READERS = {
    ".parquet": pq.read_table,
    ".csv": pa_csv.read_csv,
    ".jsonl": pa_json.read_json,
    ".json": pa_json.read_json,
}
RESERVED = ("example_id", "provider", "source")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")  # what Pillow names the formats an image column may hold
IMAGE_FIELD = "image"  # the column an image folder's files fill when no labeling field names it
SHOWN_ROWS = 10  # rows named in an error, at most


class DatasetError(ValueError):
    """A dataset that cannot become `examples`; the message says what to change."""


@dataclass(frozen=True)
class Payload:
    """Which column labelers see and what it holds: the catalog's labeling spec (`kind`, `field`)."""

    kind: str  # "text" | "image" | "table" (labelers see the row; `field` is then no column)
    field: str

    @classmethod
    def of(cls, labeling: Mapping | None) -> Payload | None:
        """The payload a catalog entry's `labeling` spec names; None for an entry without one."""
        return cls(labeling["kind"], labeling["field"]) if labeling else None


@dataclass(frozen=True)
class SourceFile:
    """One raw file of a source, by content: its name picks the reader (and a folder file's provider).

    `refs` are the image files a table names by path (relative to its folder), as (path, CID)
    pairs sorted by path: they are pinned with the table and read back by CID, never by path.
    """

    name: str
    cid: str
    provider: str | None = None
    refs: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict:
        """The file as a catalog entry's `sources` item lists it (`from_json` reads it back)."""
        out: dict = {"name": self.name, "cid": self.cid, "provider": self.provider}
        if self.refs:  # absent when empty: entries registered before refs existed stay the same
            out["refs"] = [{"name": n, "cid": c} for n, c in self.refs]
        return out

    @classmethod
    def from_json(cls, raw: Mapping) -> SourceFile:
        """The file a catalog `sources` item (`to_json`) describes; an item without `refs` names none."""
        refs = tuple((r["name"], r["cid"]) for r in raw.get("refs") or ())
        return cls(name=raw["name"], cid=raw["cid"], provider=raw.get("provider"), refs=refs)


@dataclass(frozen=True)
class IngestReport:
    """What `to_examples` did: rows read, examples kept, exact copies dropped, providers left; the
    ingest asset reports it as metadata."""

    rows_in: int
    examples: int
    duplicates_dropped: int
    providers: int
    grouping: Grouping | None = None  # duplicates grouped for credit (pipelines.duplicates)


def source_files(
    source: str, *, provider: str | None = None, payload: Payload | None = None
) -> list[tuple[Path, SourceFile]]:
    """The raw files of a file or folder source, each with its content's CID.

    A folder holds data files (each one provider, named by its stem) or one subfolder of images
    per provider (named by the subfolder); `provider`, if given, names them all. A table whose
    image column (`payload`) holds paths gets those files as `refs`, each checked to lie inside
    the table's folder.
    """
    path = Path(source)
    if not path.exists():
        raise DatasetError(
            f"dataset {source!r} does not exist; pass a Parquet/CSV/JSONL file, a folder of them, "
            "a folder of image subfolders (one per provider), or hf:NAME"
        )
    if not path.is_dir():
        return [(path, _source_file(path, path.name, provider, payload))]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIX_READERS)
    if files:
        return [(f, _source_file(f, f.name, provider or f.stem, payload)) for f in files]
    return _image_folder(path, provider)


def _image_folder(folder: Path, provider: str | None) -> list[tuple[Path, SourceFile]]:
    """Every image under each provider subfolder (sorted by path); refused if images lie loose."""
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise DatasetError(
            f"folder {str(folder)!r} holds images outside a provider subfolder ({', '.join(loose[:3])}): "
            "move each image into the subfolder named after its provider"
        )
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        name = provider or sub.name
        out += [(f, _source_file(f, f.relative_to(folder).as_posix(), name, None)) for f in images]
    if not out:
        raise DatasetError(
            f"folder {str(folder)!r} holds no .parquet, .csv or .jsonl file and no provider subfolder "
            f"of {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images"
        )
    return out


def _source_file(path: Path, name: str, provider: str | None, payload: Payload | None) -> SourceFile:
    """One file by CID (and, for a table of image paths, the images it names)."""
    refs = _image_refs(path, payload) if payload and payload.kind == "image" else ()
    return SourceFile(name, cid_for_file(path, cid_version=1), provider, refs)


def _image_refs(table_path: Path, payload: Payload) -> tuple[tuple[str, str], ...]:
    """The image files a table's path column names, by CID; paths leaving the table's folder are refused."""
    if table_path.suffix.lower() not in SUFFIX_READERS:
        return ()
    table = _read_file(table_path.name, table_path.read_bytes())
    column = table.column(payload.field) if payload.field in table.column_names else None
    if column is None or not _is_string(column.type):
        return ()  # bytes, or a column the load names as wrong
    root = table_path.parent.resolve()
    refs: dict[str, str] = {}
    outside, missing = [], []
    for row, value in enumerate(column.to_pylist()):
        if value is None:
            continue  # named at load, with the other rows that hold no image
        target = (root / value).resolve()
        if not target.is_relative_to(root):
            outside.append(row)
        elif not target.is_file():
            missing.append(row)
        else:
            refs[_ref_name(value)] = cid_for_file(target, cid_version=1)
    if outside:
        raise DatasetError(
            f"{table_path.name} {_rows(outside)}: image paths lead outside the dataset's folder "
            f"{str(root)!r} (e.g. {column[outside[0]].as_py()!r}); copy those images into it and give "
            "paths relative to it"
        )
    if missing:
        raise DatasetError(
            f"{table_path.name} {_rows(missing)}: no image file at {column[missing[0]].as_py()!r} "
            f"(relative to {str(root)!r}); fix the paths or add the files"
        )
    return tuple(sorted(refs.items()))


def _ref_name(path: str) -> str:
    """How a table's image path is keyed in `SourceFile.refs` (normalized, still relative)."""
    return os.path.normpath(path)


def load_source(source: str, *, provider: str | None = None, payload: Payload | None = None) -> pa.Table:
    """Read a file, a folder of files (one provider per file: its stem), a folder of provider
    subfolders of images, or `hf:NAME`; the `payload` column is checked and typed (`Payload`).

    A table without a `provider` column takes `provider` (or, for a folder, the file stem).
    """
    if source.startswith("hf:"):
        table = _with_provider(hub_table(source), provider, source)
        return typed_payload(table, payload, source) if payload else table
    files = source_files(source, provider=provider, payload=payload)
    paths = {f.cid: path for path, f in files}
    for path, f in files:
        paths.update({cid: path.parent / name for name, cid in f.refs})
    return load_files([f for _, f in files], lambda cid: paths[cid].read_bytes(), payload=payload)


def load_files(
    files: Sequence[SourceFile], read: Callable[[str], bytes], *, payload: Payload | None = None
) -> pa.Table:
    """The rows of each source file, fetched by CID with `read` (the content store's `get`); an image
    file is one row (its bytes in the payload column), a table's image paths become their files' bytes."""
    column = payload.field if payload else IMAGE_FIELD
    tables = []
    for f in files:
        table = _with_provider(_read_file(f.name, read(f.cid), column), f.provider, f.cid,
                               f"{f.name} ({f.cid})")
        if payload:
            refs = dict(f.refs)
            table = typed_payload(table, payload, f.name, lambda p, refs=refs: _ref_bytes(refs, p, read))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="permissive")


def _ref_bytes(refs: Mapping[str, str], path: str, read: Callable[[str], bytes]) -> bytes | None:
    """The bytes of a table's image path, read by the CID it was registered with (None: not registered)."""
    cid = refs.get(_ref_name(path))
    return None if cid is None else read(cid)


def _read_file(name: str, data: bytes, image_column: str = IMAGE_FIELD) -> pa.Table:
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return pa.table({image_column: pa.array([data], pa.binary())})
    reader = SUFFIX_READERS.get(suffix)
    if reader is None:
        raise DatasetError(
            f"unknown dataset format {suffix!r} for {name}; "
            f"use one of {', '.join(sorted(SUFFIX_READERS))}, a folder of images, or hf:NAME"
        )
    try:
        return reader(arrow_stream(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"cannot read {name} as {suffix[1:]}: {exc}") from exc


def typed_payload(
    table: pa.Table, payload: Payload, where: str, resolve: Callable[[str], bytes | None] | None = None
) -> pa.Table:
    """`table` with its payload column as the contract says (text: `string`; image: `binary` of
    PNG/JPEG bytes), or one error naming the rows of `where` that break it and the fix.
    `resolve` reads an image path's bytes (None: paths are not allowed here, e.g. `hf:`).

    A numeric or list column under kind "text" is feature data (the numeric recipe's), not text:
    it is left as it is, as is a payload of any other kind. A table payload is the row itself."""
    if payload.kind == "table":
        return table
    if payload.field not in table.column_names:
        raise DatasetError(
            f"{where} has no payload column {payload.field!r} (the labeling field); "
            f"its columns: {table.column_names}"
        )
    column = table.column(payload.field)
    if payload.kind == "text" and _is_text_like(column.type):
        values = pa.array(_texts(column, where, payload.field), pa.string())
    elif payload.kind == "image":
        values = pa.array(_images(column, where, payload.field, resolve), pa.binary())
    else:
        return table
    return table.set_column(table.column_names.index(payload.field), payload.field, values)


def _texts(column: pa.ChunkedArray, where: str, field: str) -> list[str]:
    """Each row's text, decoded as UTF-8 (bytes included: a CSV reader keeps invalid text as bytes)."""
    raw = column.cast(pa.large_binary()).to_pylist()  # bytes, whatever the reader checked
    texts: list[str | None] = []
    bad = []
    for row, value in enumerate(raw):
        try:
            texts.append(None if value is None else value.decode("utf-8"))
        except UnicodeDecodeError:
            bad.append(row)
            texts.append(None)
    if bad:
        raise DatasetError(
            f"{where} {_rows(bad)}: {field!r} is not UTF-8 text; re-save the file encoded as UTF-8"
        )
    empty = [row for row, text in enumerate(texts) if text is None or not text.strip()]
    if empty:
        raise DatasetError(
            f"{where} {_rows(empty)}: {field!r} is empty or whitespace only; remove those rows or give "
            "them their text"
        )
    return texts  # type: ignore[return-value]  # no None left


def _images(
    column: pa.ChunkedArray, where: str, field: str, resolve: Callable[[str], bytes | None] | None
) -> list[bytes]:
    """Each row's encoded image: bytes as given, a Hugging Face image's bytes, or a path's file."""
    kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        values = column.to_pylist()
    elif pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:  # Hugging Face's Image feature
        values = [None if v is None else v["bytes"] for v in column.to_pylist()]
    elif _is_string(kind) and resolve is not None:
        paths = column.to_pylist()
        values = [None if p is None else resolve(p) for p in paths]
        pairs = enumerate(zip(paths, values, strict=True))
        unknown = [row for row, (p, v) in pairs if p is not None and v is None]
        if unknown:
            raise DatasetError(
                f"{where} {_rows(unknown)}: image path {paths[unknown[0]]!r} was not registered with "
                "this file; register the dataset again"
            )
    else:
        allowed = "PNG/JPEG file bytes (binary)" + (" or file paths relative to it" if resolve else "")
        raise DatasetError(
            f"{where}: image column {field!r} holds {kind}, not {allowed}; store each image's encoded "
            "file (e.g. saved with Pillow as PNG)"
        )
    missing = [row for row, v in enumerate(values) if v is None]
    if missing:
        raise DatasetError(
            f"{where} {_rows(missing)}: no image in {field!r}; remove those rows or add the images"
        )
    bad = [(row, problem) for row, v in enumerate(values) if (problem := image_problem(v))]
    if bad:
        raise DatasetError(
            f"{where} {_rows([r for r, _ in bad])}: {field!r} does not decode as a PNG or JPEG image "
            f"(row {bad[0][0]}: {bad[0][1]}); replace those images with PNG/JPEG files or remove the rows"
        )
    return values


def image_problem(data: bytes) -> str | None:
    """Why `data` is not a whole PNG or JPEG image (decoded by Pillow), or None if it is."""
    from PIL import Image  # local: only image datasets pay for it

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in IMAGE_FORMATS:
                return f"it is {img.format}, not PNG or JPEG"
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return str(exc) or type(exc).__name__
    return None


def _is_text_like(kind: pa.DataType) -> bool:
    """Strings, or bytes that should be UTF-8 text (what a CSV reader makes of text that is not)."""
    return _is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _rows(rows: Sequence[int]) -> str:
    """`rows [3, 17, ...]` (counted from 0, in the file's order), at most SHOWN_ROWS of them."""
    shown = ", ".join(str(r) for r in rows[:SHOWN_ROWS])
    more = f", ... ({len(rows)} rows)" if len(rows) > SHOWN_ROWS else ""
    return f"row{'s' if len(rows) > 1 else ''} [{shown}{more}] (counted from 0)"


def hub_table(source: str) -> pa.Table:
    """The rows of a Hugging Face dataset source (`hf:NAME`, its train split), read offline from the
    local cache: registration pins them as a source file, so no later step reads the hub."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets  # local: importing `datasets` is slow and only this path needs it

    name = source.removeprefix("hf:")
    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:  # datasets raises many kinds; all mean "cannot load this name"
        raise DatasetError(f"cannot load Hugging Face dataset {name!r} offline: {exc}") from exc
    return ds.data.table


def hub_file_name(source: str) -> str:
    """The file name a pinned hub dataset is recorded under (its reader picked by the suffix)."""
    return source.removeprefix("hf:").strip("/").replace("/", "__") + ".parquet"


def _with_provider(table: pa.Table, provider: str | None, source: str, where: str | None = None) -> pa.Table:
    """``table`` with its ``provider`` (the given one where it has no column) and ``source`` columns;
    ``where`` names it in the error (``source``, a CID, where not given)."""
    if "provider" not in table.column_names:
        if provider is None:
            raise DatasetError(
                f"{where or source} has no 'provider' column (whose rows are whose, for the royalty "
                "split); add one, give a folder with one file per provider, or name the provider of "
                "the whole file (`caravan ingest --provider NAME`)"
            )
        table = table.append_column("provider", pa.array([provider] * table.num_rows, pa.string()))
    if "source" not in table.column_names:
        table = table.append_column("source", pa.array([source] * table.num_rows, pa.string()))
    return table


def registration_times(sources: Sequence[Mapping]) -> dict:
    """When each source file was registered, as `to_examples` orders them: by file CID (the earliest,
    where providers registered the same bytes) and, for a file with its own provider, by (CID, provider).
    `sources`: a catalog entry's `sources` items, or an ingest record's `source_files`.

    A file its provider claimed on chain (`claimed_by`) ranks before every file dated by the operator's
    clock alone, and among claimed files the chain's time decides: an operator cannot date its own
    copy before a claim it does not control."""
    out: dict = {}
    for f in sources:
        when = ("0 " if f.get("claimed_by") else "1 ") + (f.get("registered_at") or "")
        out[f["cid"]] = min(when, out.get(f["cid"], when))
        if f.get("provider"):
            out[(f["cid"], f["provider"])] = when
    return out


def to_examples(
    table: pa.Table, registered_at: Mapping[str | tuple[str, str], str] | None = None,
    labeled: Payload | None = None,
) -> tuple[pa.Table, IngestReport]:
    """Add `example_id`, keep one row of each content, and group duplicates for credit.

    `registered_at` maps each row's (`source`, `provider`), else its `source`, to when it was
    registered (`registration_times`: sorting them orders the sources); without it every source
    counts as registered at the same time. `labeled` (the labeling spec) says what the model reads, which
    near-duplicates are judged on (`pipelines.duplicates.near_groups`).
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
        pairs = zip(sources, out["provider"].to_pylist(), strict=True)
        found = [registered_at.get((s, p), registered_at.get(s)) for s, p in pairs]
        unknown = sorted({s for s, t in zip(sources, found, strict=True) if t is None})
        if unknown:
            raise DatasetError(f"no registration time for sources {unknown[:5]}; register them again")
        times = found
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
        labeled=labeled,
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
    overlap = sorted(set(ids) & _trained_ids(dataset, expected))
    if overlap:
        raise DatasetError(
            f"{len(overlap)} validation examples are also in the dataset (e.g. {overlap[0][:16]}): "
            "a validation set must not be trained on; remove them from one side"
        )
    out = table.select(sorted(payload)).add_column(0, "example_id", pa.array(ids, pa.string()))
    return out.append_column("label", pa.array(labels, pa.string())).sort_by("example_id")


def _trained_ids(dataset: pa.Table, payload: Sequence[str]) -> set[str]:
    """The dataset's example ids, and where they cover more than ``payload`` (a source with labels of
    its own: a ``label`` column is content there) its rows' ids over ``payload`` alone, as a validation
    example's is computed: the same text is then the same example on both sides."""
    ids = set(dataset["example_id"].to_pylist())
    if sorted(payload) == sorted(c for c in dataset.column_names if c not in RESERVED):
        return ids
    return ids | {example_id(r) for r in dataset.select(list(payload)).to_pylist()}


def example_id(payload: dict) -> str:
    """sha256 hex of `payload`'s RFC 8785 JSON (bytes as hex, 1.0 as 1, NaN as null): one id per content."""
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
    if isinstance(value, float) and math.isnan(value):
        return None  # a missing number, whether its reader made it NaN or null
    if isinstance(value, float) and math.isinf(value):
        raise DatasetError(f"a payload holds an infinite number ({value}); content ids need finite numbers: "
                           "replace it, or leave the cell empty if the value is missing")
    return value


def _first_of_runs(ids: np.ndarray) -> np.ndarray:
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    return keep
