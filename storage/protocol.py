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

    def put_bytes(self, data: bytes, *, cid_version: int = 0, pin: bool = True) -> str: ...

    def put_file(self, path: str | os.PathLike[str], *, cid_version: int = 0, pin: bool = True) -> str: ...

    def get(self, cid: str) -> bytes: ...

    def has(self, cid: str) -> bool: ...

    def pin(self, cid: str) -> None: ...

    def unpin(self, cid: str) -> None: ...

    def pins(self) -> set[str]: ...
