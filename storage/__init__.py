"""Content addressing: Kubo-identical UnixFS CIDs, the blockstore and pin backends, CAR, snapshots.

    cid_for_bytes(data, *, cid_version=0) -> str      the CID `ipfs add` gives these bytes
    cid_for_file(path, *, cid_version=0) -> str       same, streamed in bounded memory
    ContentStore                                      the Protocol every backend implements
    put_folder(store, folder) / get_folder(store, cid, dest) -> FileTable
                                                      a folder's files by one CID (a file table)
    BlockStore(root)                                  the embedded default (root from the caller's settings)
    KuboStore(api_url), PinningServiceStore(...)      real backends over HTTP
    snapshot_parquet(table, *, sort_by) / read_parquet  deterministic Parquet bytes
    arrow_stream(data)                                bytes as an Arrow-owned stream (for its readers)
    DataKey, EncryptedStore(inner, keys), seal, open_sealed, is_sealed, public_store
                                                      private values: sealed (AES-SIV) before any store
    HolderKey, Keyring                                who may read them: data keys wrapped per holder

The snapshot and HTTP names load lazily: pyarrow alone costs ~85 MiB of RSS, and hashing
or storing a file (`caravan store add`) must stay well under 100 MiB whatever its size.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from storage.blockstore import STORE_DIR_ENV, BlockStore
from storage.cids import is_cid, parse_cid
from storage.encryption import (
    DataKey,
    DecryptionError,
    EncryptedStore,
    is_sealed,
    open_sealed,
    public_store,
    seal,
    sealed_key_id,
)
from storage.errors import (
    BlockNotFound,
    CarError,
    CorruptBlock,
    InvalidCID,
    RemoteError,
    StorageError,
    UnreadableFile,
)
from storage.files import FileTable, StoredFile, get_folder, put_folder
from storage.keys import HolderKey, Keyring, KeyringError
from storage.protocol import ContentStore
from storage.unixfs import CHUNK_SIZE, MAX_LINKS, cid_for_bytes, cid_for_file

if TYPE_CHECKING:
    from storage.remote import KuboStore, PinningServiceStore
    from storage.snapshot import arrow_stream, read_parquet, snapshot_parquet

_LAZY = {
    "KuboStore": "storage.remote",
    "PinningServiceStore": "storage.remote",
    "arrow_stream": "storage.snapshot",
    "read_parquet": "storage.snapshot",
    "snapshot_parquet": "storage.snapshot",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'storage' has no attribute {name!r}")


__all__ = [
    "CHUNK_SIZE",
    "MAX_LINKS",
    "STORE_DIR_ENV",
    "BlockNotFound",
    "BlockStore",
    "CarError",
    "ContentStore",
    "CorruptBlock",
    "DataKey",
    "DecryptionError",
    "EncryptedStore",
    "FileTable",
    "HolderKey",
    "Keyring",
    "KeyringError",
    "InvalidCID",
    "KuboStore",
    "PinningServiceStore",
    "RemoteError",
    "StorageError",
    "StoredFile",
    "UnreadableFile",
    "arrow_stream",
    "cid_for_bytes",
    "cid_for_file",
    "get_folder",
    "is_cid",
    "is_sealed",
    "open_sealed",
    "parse_cid",
    "public_store",
    "put_folder",
    "read_parquet",
    "seal",
    "sealed_key_id",
    "snapshot_parquet",
]
