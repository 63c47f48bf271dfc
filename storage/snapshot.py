"""Deterministic Parquet snapshots: the same rows give the same bytes, hence the same CID.

Rows are sorted by `sort_by` (ties broken by every other sortable column), chunks are
combined, and the writer runs with fixed options. Parquet carries no wall-clock time; the
`created_by` string names the pyarrow version, so pin pyarrow to reproduce old snapshots.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROW_GROUP_SIZE = 65_536
_WRITER_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
    "data_page_size": 1 << 20,
    "write_page_index": False,
    "store_schema": True,
}


def _sort_keys(schema: pa.Schema, sort_by: str) -> list[tuple[str, str]]:
    if sort_by not in schema.names:
        raise KeyError(f"snapshot sort column {sort_by!r} is not in the table (columns: {schema.names})")
    sortable = [
        f.name
        for f in schema
        if f.name != sort_by
        and not (pa.types.is_nested(f.type) or pa.types.is_dictionary(f.type) or pa.types.is_null(f.type))
    ]
    return [(name, "ascending") for name in (sort_by, *sortable)]


def snapshot_parquet(table: pa.Table, *, sort_by: str = "example_id") -> bytes:
    """Deterministic Parquet bytes for `table`, independent of its row order and chunking."""
    keys = _sort_keys(table.schema, sort_by)
    order = pc.sort_indices(table, sort_keys=keys)  # nulls sort last (the default in every pyarrow)
    ordered = table.take(order).combine_chunks()
    metadata = {k: v for k, v in (ordered.schema.metadata or {}).items() if k != b"pandas"}
    ordered = ordered.replace_schema_metadata(metadata or None)
    sink = io.BytesIO()
    pq.write_table(ordered, sink, row_group_size=ROW_GROUP_SIZE, **_WRITER_OPTIONS)
    return sink.getvalue()


def read_parquet(data: bytes) -> pa.Table:
    """Read snapshot bytes back into an Arrow table."""
    return pq.read_table(arrow_stream(data))


def arrow_stream(data: bytes) -> pa.BufferReader:
    """``data`` copied into Arrow's own memory, as a stream Arrow's readers read with no Python object
    inside. A reader's worker threads may drop its last reference to its source after the read has
    returned; where the source holds a Python object (``io.BytesIO``, or ``bytes`` wrapped by
    ``pa.BufferReader``) and that falls while the interpreter exits (a CLI error right after a read),
    the thread cannot take the GIL and the process aborts ("terminate called without an active
    exception", exit 134: 3 of 30 `caravan demo` runs whose CSV lacked a column, then 0 of 30)."""
    buffer = pa.allocate_buffer(len(data))
    memoryview(buffer).cast("B")[:] = data
    return pa.BufferReader(buffer)
