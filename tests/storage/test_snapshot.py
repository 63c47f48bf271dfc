"""Deterministic Parquet snapshots: same rows, any order or chunking, any process -> same bytes and CID."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

from storage import arrow_stream, cid_for_bytes, read_parquet, snapshot_parquet
from tests.storage.conftest import REPO

# Builds the same 3,000 rows in an order (and chunking) chosen by argv[1], prints the snapshot's CID.
_CHILD = """
import random, sys
import pyarrow as pa
from storage import cid_for_bytes, snapshot_parquet
rows = [{"example_id": f"{i:064x}", "provider": f"p{i % 7}", "label": ["a", "b", None][i % 3],
         "score": i / 7, "pixels": [i % 5, i % 11]} for i in range(3000)]
random.Random(int(sys.argv[1])).shuffle(rows)
cut = len(rows) // (int(sys.argv[1]) + 2)
table = pa.concat_tables([pa.Table.from_pylist(rows[:cut]), pa.Table.from_pylist(rows[cut:])])
print(cid_for_bytes(snapshot_parquet(table)))
"""


def _child_cid(order_seed: int) -> str:
    env = {**os.environ, "PYTHONHASHSEED": str(order_seed)}  # different hash seeds, too
    out = subprocess.run([sys.executable, "-c", _CHILD, str(order_seed)], capture_output=True, text=True,
                         check=True, cwd=REPO, env=env)
    return out.stdout.strip()


def test_same_rows_give_the_same_cid_across_two_processes() -> None:
    first, second = _child_cid(1), _child_cid(2)
    assert first == second and first.startswith("Qm")


def _table(order: list[int]) -> pa.Table:
    return pa.table({
        "example_id": [f"id{i:03d}" for i in order],
        "provider": [f"p{i % 3}" for i in order],
        "value": [float(i) for i in order],
    })


def test_row_order_chunking_and_pandas_metadata_do_not_matter() -> None:
    forward = snapshot_parquet(_table(list(range(50))))
    backward = snapshot_parquet(_table(list(range(49, -1, -1))))
    chunked = pa.concat_tables([_table(list(range(25, 50))), _table(list(range(25)))])
    # pandas' index metadata differs with the frame's history; types are the caller's (fixed schema)
    with_pandas_meta = _table(list(range(50))).replace_schema_metadata({b"pandas": b'{"index_columns": []}'})
    assert forward == backward == snapshot_parquet(chunked) == snapshot_parquet(with_pandas_meta)
    assert read_parquet(forward).to_pylist() == _table(list(range(50))).to_pylist()


def test_different_rows_give_a_different_cid() -> None:
    base = snapshot_parquet(_table(list(range(50))))
    assert cid_for_bytes(snapshot_parquet(_table(list(range(51))))) != cid_for_bytes(base)


def test_ties_in_the_sort_column_are_broken_by_the_other_columns() -> None:
    a = pa.table({"example_id": ["x", "x"], "label": ["b", "a"]})
    b = pa.table({"example_id": ["x", "x"], "label": ["a", "b"]})
    assert snapshot_parquet(a) == snapshot_parquet(b)


def test_a_missing_sort_column_is_named() -> None:
    with pytest.raises(KeyError, match="example_id"):
        snapshot_parquet(pa.table({"id": [1]}))


def test_arrow_stream_holds_a_copy_and_no_python_object():
    """What keeps a reader's worker thread from needing the GIL to let its source go (at exit it cannot):
    the stream's bytes are the same, and the Python bytes are not referenced by it, as
    ``pa.BufferReader(data)`` references them."""
    data = bytes(range(256)) * 10
    before = sys.getrefcount(data)
    stream = arrow_stream(data)
    assert sys.getrefcount(data) == before
    wrapped = pa.BufferReader(data)
    assert sys.getrefcount(data) > before  # the reference arrow_stream avoids
    assert stream.read() == data == wrapped.read()
    table = pa.table({"example_id": ["b", "a"], "x": [2, 1]})
    assert read_parquet(snapshot_parquet(table)).to_pylist() == [{"example_id": "a", "x": 1},
                                                                 {"example_id": "b", "x": 2}]
    assert arrow_stream(b"").read() == b""
