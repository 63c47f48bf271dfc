"""Storage errors. Every message names the CID or file involved and says what to do next."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for every error raised by `storage`."""


class InvalidCID(StorageError, ValueError):
    """A string or byte sequence that is not a CID this store understands."""


class BlockNotFound(StorageError, KeyError):
    """A block (or a block a DAG links to) is not in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CorruptBlock(StorageError):
    """A block whose bytes do not hash to its CID, or a DAG node that cannot be decoded."""


class UnreadableFile(StorageError, OSError):
    """An input file that is missing or cannot be read."""


class CarError(StorageError):
    """A CAR file that is truncated or malformed."""


class RemoteError(StorageError):
    """A Kubo RPC or Pinning Service call that failed."""
