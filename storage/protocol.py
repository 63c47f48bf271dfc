"""The one interface every content-store backend implements (embedded, Kubo, pinning service)."""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable


@runtime_checkable
class ContentStore(Protocol):
    """Put files in, get them back verified, and keep what matters pinned.

    CIDs are Kubo's (`ipfs add` defaults, or `--cid-version=1` with raw leaves), so the
    same bytes get the same CID in every backend.
    """

    def put_bytes(self, data: bytes, *, cid_version: int = 0, pin: bool = True) -> str:
        """Store `data` as a UnixFS file (Kubo's layout) and return its CID, pinned unless `pin` is False."""
        ...

    def put_file(self, path: str | os.PathLike[str], *, cid_version: int = 0, pin: bool = True) -> str:
        """Store a file's bytes in bounded memory and return the CID `put_bytes` gives them."""
        ...

    def get(self, cid: str) -> bytes:
        """A whole file's content, every block verified against its CID (`BlockNotFound`, `CorruptBlock`)."""
        ...

    def has(self, cid: str) -> bool:
        """Whether the store holds the block `cid` names."""
        ...

    def pin(self, cid: str) -> None:
        """Keep `cid` and every block under it (which must be stored) through garbage collection."""
        ...

    def unpin(self, cid: str) -> None:
        """Drop a pin; unpinning what is not pinned does nothing."""
        ...

    def pins(self) -> set[str]:
        """The CIDs pinned, as they were pinned."""
        ...
