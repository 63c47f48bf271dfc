"""Content addressing: Kubo-identical UnixFS CIDs, the blockstore and pin backends, CAR, snapshots.

    cid_for_bytes(data, *, cid_version=0) -> str      the CID `ipfs add` gives these bytes
    cid_for_file(path, *, cid_version=0) -> str       same, streamed in bounded memory
    ContentStore                                      the Protocol every backend implements
    BlockStore(root)                                  the embedded default (.caravan/blocks)
    KuboStore(api_url), PinningServiceStore(...)      real backends over HTTP
    snapshot_parquet(table, *, sort_by) / read_parquet  deterministic Parquet bytes
"""

from storage.blockstore import DEFAULT_ROOT, STORE_DIR_ENV, BlockStore, default_store
from storage.cids import parse_cid
from storage.errors import (
    BlockNotFound,
    CarError,
    CorruptBlock,
    InvalidCID,
    RemoteError,
    StorageError,
    UnreadableFile,
)
from storage.protocol import ContentStore
from storage.snapshot import read_parquet, snapshot_parquet
from storage.unixfs import CHUNK_SIZE, MAX_LINKS, cid_for_bytes, cid_for_file

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_ROOT",
    "MAX_LINKS",
    "STORE_DIR_ENV",
    "BlockNotFound",
    "BlockStore",
    "CarError",
    "ContentStore",
    "CorruptBlock",
    "InvalidCID",
    "RemoteError",
    "StorageError",
    "UnreadableFile",
    "cid_for_bytes",
    "cid_for_file",
    "default_store",
    "parse_cid",
    "read_parquet",
    "snapshot_parquet",
]
