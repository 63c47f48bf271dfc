"""The content store in Dagster: its resource, and an IO manager that gives every asset value a CID.

Arrow tables become deterministic Parquet (rows in a total order, fixed writer options),
bytes are stored as they are, anything else as canonical JSON. A small pointer file per
(asset, partition) names the CID of the latest value, so a downstream step loads exactly
the content the upstream one pinned, and the same value materialized twice costs nothing.

A step whose provenance record must name its outputs' CIDs stores them itself (`store_value`)
and returns the `StoredValue`: the IO manager then only writes the pointer, so each value is
encoded and stored once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import rfc8785
from pydantic import PrivateAttr

from storage import BlockStore, ContentStore, HolderKey, KeyringError, read_parquet, snapshot_parquet

KIND_TABLE, KIND_BYTES, KIND_JSON = "arrow-parquet", "bytes", "json"


class StoreResource(dg.ConfigurableResource):
    """The content store: `embedded` blockstore, a `kubo` node, or a `pinning` service.

    With a `keyring_dir` (from the settings), a private dataset version's steps get a store that
    seals every value under the version's data key (`pipelines.privacy`); the version is the run's
    partition, or the one `client(version)` names.
    """

    backend: str = "embedded"
    store_dir: str  # from the settings (`resources_for`)
    kubo_url: str = "http://127.0.0.1:5001"
    pinning_url: str = ""
    keyring_dir: str = ""  # from the settings; empty: every version is public
    holder_keyfile: str = ""  # a path, never the key: CARAVAN_HOLDER_KEY stays in the environment
    _version: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Keep the run's partition (its dataset version): the version `client()` serves by default."""
        run = getattr(context, "run", None)
        self._version = run.tags.get("dagster/partition") if run is not None else None

    def plain(self) -> ContentStore:
        """The store itself, sealing nothing (for public values and for auditors)."""
        if self.backend == "embedded":
            return BlockStore(self.store_dir)
        from storage.remote import KuboStore, PinningServiceStore

        if self.backend == "kubo":
            return KuboStore(self.kubo_url)
        if self.backend == "pinning":
            return PinningServiceStore(self.pinning_url, local=BlockStore(self.store_dir))
        raise dg.Failure(f"unknown store backend {self.backend!r}; use embedded, kubo or pinning")

    def client(self, version: str | None = None) -> ContentStore:
        """The store a step of `version` (default: this run's partition) reads and writes through."""
        store, version = self.plain(), version or self._version
        if not self.keyring_dir or version is None:
            return store
        from pipelines.privacy import Keyrings

        keyrings = Keyrings(self.keyring_dir, store)
        if not keyrings.is_private(version):
            return store  # no holder key needed (a keystore's password may be absent)
        try:
            return keyrings.store_for(version, self._holder())
        except KeyringError as exc:
            raise dg.Failure(str(exc)) from None

    def reader(self) -> ContentStore:
        """The store opening every private version the holder key in reach is granted, for steps that
        read across versions (settlement loads a private run's model to attribute pending receipts)."""
        store = self.plain()
        if not self.keyring_dir:
            return store
        from pipelines.privacy import Keyrings

        keyrings = Keyrings(self.keyring_dir, store)
        if not keyrings.versions():
            return store
        try:
            return keyrings.reading_store(self._holder())
        except KeyringError as exc:
            raise dg.Failure(str(exc)) from None

    def _holder(self) -> HolderKey | None:
        from pipelines.privacy import HOLDER_KEYFILE_ENV, holder_key
        from pipelines.settings import load_settings

        env = {**os.environ, **({HOLDER_KEYFILE_ENV: self.holder_keyfile} if self.holder_keyfile else {})}
        return holder_key(load_settings(env), env)


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


def kind_of(value: Any) -> str:
    """How `value` is stored: an Arrow table as Parquet, bytes as they are, anything else as JSON."""
    if isinstance(value, pa.Table):
        return KIND_TABLE
    return KIND_BYTES if isinstance(value, bytes | bytearray) else KIND_JSON


def encode(value: Any) -> tuple[str, bytes]:
    """`value`'s kind and deterministic bytes (sorted Parquet, the bytes, or canonical JSON, RFC 8785)."""
    kind = kind_of(value)
    if kind == KIND_TABLE:
        return kind, table_bytes(value)
    return kind, bytes(value) if kind == KIND_BYTES else rfc8785.dumps(value)


@dataclass(frozen=True)
class StoredValue:
    """An asset value already encoded and stored (pinned) by its step: its CID can go in a record."""

    value: Any
    kind: str
    cid: str
    size: int


def store_value(
    store: ContentStore, value: Any, data: bytes | None = None, *, cid_version: int = 1
) -> StoredValue:
    """Store `value` once, as the IO manager would, or as `data` (a contract's own deterministic
    encoding, under the CID version that contract names it by)."""
    kind, data = encode(value) if data is None else (kind_of(value), data)
    return StoredValue(value, kind, store.put_bytes(data, cid_version=cid_version, pin=True), len(data))


def decode(kind: str, data: bytes) -> Any:
    """The value `encode` made `data` from, read back by its recorded `kind`."""
    if kind == KIND_TABLE:
        return read_parquet(data)
    if kind == KIND_BYTES:
        return data
    return json.loads(data)


class AssetIndex(dg.ConfigurableResource):
    """One small pointer file per (asset, partition) naming the CID of its latest stored value."""

    pointer_dir: str  # from the settings (`resources_for`)

    def path(self, key: dg.AssetKey, partition: str | None) -> Path:
        """The pointer file of (asset, partition): a folder per key part, `__all__.json` if unpartitioned."""
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
        """Point (asset, partition) at `meta` (`{"cid", "kind"}`), replacing the file atomically."""
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
        """Store `obj` pinned, unless its step already did (a `StoredValue`), and point the `index` at
        its CID; a `None` output stores nothing."""
        if obj is None:
            return
        if not isinstance(obj, StoredValue):
            obj = store_value(self.store.client(self._partition(context)), obj)
        self.index.write(context.asset_key, self._partition(context), {"cid": obj.cid, "kind": obj.kind})
        context.add_output_metadata({"cid": obj.cid, "bytes": obj.size})

    def load_input(self, context: dg.InputContext) -> Any:
        """The upstream asset's latest stored value (per the `index`), fetched by CID through the
        partition's store (a private version's opens it) and decoded by its recorded kind."""
        meta = self.index.stored(context.asset_key, self._partition(context))
        if meta is None:
            raise dg.Failure(
                f"no stored value for {context.asset_key.to_user_string()}: "
                "materialize the upstream asset first"
            )
        store: ContentStore = self.store.client(self._partition(context))
        return decode(meta["kind"], store.get(meta["cid"]))
