"""An IO manager whose storage is the content store: every asset value gets a CID and a pin.

Arrow tables become deterministic Parquet (rows in a total order, fixed writer options),
bytes are stored as they are, anything else as canonical JSON. A small pointer file per
(asset, partition) names the CID of the latest value, so a downstream step loads exactly
the content the upstream one pinned, and the same value materialized twice costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import rfc8785

from pipelines.resources import StoreResource
from storage import ContentStore, read_parquet, snapshot_parquet

KIND_TABLE, KIND_BYTES, KIND_JSON = "arrow-parquet", "bytes", "json"


def table_bytes(table: pa.Table) -> bytes:
    """Deterministic Parquet bytes: rows sorted by every column, first column first."""
    sortable = [
        c
        for c, t in zip(table.column_names, table.schema.types, strict=True)
        if not (
            pa.types.is_list(t)
            or pa.types.is_large_list(t)
            or pa.types.is_fixed_size_list(t)
            or pa.types.is_struct(t)
            or pa.types.is_map(t)
        )
    ]
    if sortable and table.num_rows:
        table = table.take(pc.sort_indices(table, [(c, "ascending") for c in sortable]))
    first = sortable[0] if sortable else table.column_names[0]
    return snapshot_parquet(table, sort_by=first)


def encode(value: Any) -> tuple[str, bytes]:
    if isinstance(value, pa.Table):
        return KIND_TABLE, table_bytes(value)
    if isinstance(value, bytes | bytearray):
        return KIND_BYTES, bytes(value)
    return KIND_JSON, rfc8785.dumps(value)


def put_value(store: ContentStore, value: Any) -> str:
    """Store `value` as the IO manager would (same bytes, same CID, pinned); for records written mid-step."""
    return store.put_bytes(encode(value)[1], cid_version=1, pin=True)


def decode(kind: str, data: bytes) -> Any:
    if kind == KIND_TABLE:
        return read_parquet(data)
    if kind == KIND_BYTES:
        return data
    return json.loads(data)


class AssetIndex(dg.ConfigurableResource):
    """One small pointer file per (asset, partition) naming the CID of its latest stored value."""

    pointer_dir: str = ".caravan/assets"

    def path(self, key: dg.AssetKey, partition: str | None) -> Path:
        return Path(self.pointer_dir) / "/".join(key.path) / f"{partition or '__all__'}.json"

    def stored(self, asset: str | dg.AssetKey, partition: str | None) -> dict[str, str] | None:
        """`{"cid", "kind"}` of the latest stored value of `asset` (and partition), if any."""
        path = self.path(dg.AssetKey.from_coercible(asset), partition)
        return json.loads(path.read_text()) if path.exists() else None

    def cid_of(self, asset: str, partition: str | None) -> str:
        """The CID of the stored value a step loaded as its input (no need to encode it again)."""
        meta = self.stored(asset, partition)
        if meta is None:
            raise dg.Failure(f"no stored value for {asset}: materialize it first")
        return meta["cid"]

    def write(self, key: dg.AssetKey, partition: str | None, meta: dict[str, str]) -> None:
        path = self.path(key, partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(path)

    def state_path(self, name: str, partition: str) -> Path:
        """A file for a stage's own small state (e.g. an export cursor), beside the pointers."""
        path = Path(self.pointer_dir) / "_state" / name / f"{partition}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


class ContentStoreIOManager(dg.ConfigurableIOManager):
    """Stores outputs in the content store (pinned); pointers live in the `index`."""

    store: StoreResource
    index: AssetIndex

    @staticmethod
    def _partition(context: dg.OutputContext | dg.InputContext) -> str | None:
        return context.asset_partition_key if context.has_asset_partitions else None

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        kind, data = encode(obj)
        cid = self.store.client().put_bytes(data, cid_version=1, pin=True)
        self.index.write(context.asset_key, self._partition(context), {"cid": cid, "kind": kind})
        context.add_output_metadata({"cid": cid, "bytes": len(data)})

    def load_input(self, context: dg.InputContext) -> Any:
        meta = self.index.stored(context.asset_key, self._partition(context))
        if meta is None:
            raise dg.Failure(
                f"no stored value for {context.asset_key.to_user_string()}: "
                "materialize the upstream asset first"
            )
        store: ContentStore = self.store.client()
        return decode(meta["kind"], store.get(meta["cid"]))
