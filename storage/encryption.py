"""Private content: deterministic authenticated encryption before anything reaches a store.

A sealed value is `MAGIC | key_id | segment size` followed by the plaintext cut in 1 MiB segments,
each sealed with AES-SIV (RFC 5297, the `cryptography` package) under the version's data key, with
the header, the segment's index and a last-segment flag as associated data: segments cannot be
reordered, dropped or truncated unnoticed, and a file of any size streams in bounded memory.

AES-SIV is deterministic: the same plaintext under the same key gives the same ciphertext, so
the same CID, and a rerun stores nothing twice. What that reveals: two equal values (or equal
1 MiB segments at the same offset) under one key are visible as equal. Nothing else about the
plaintext is, and a key is per dataset version, so equality never shows across versions.

    DataKey.generate() / DataKey(secret)       a 64-byte AES-SIV key and its public `key_id`
    seal(key, data) / open_sealed(keys, data)  bytes in, bytes out
    is_sealed(data), sealed_key_id(data)       what a ciphertext says about itself (no key needed)
    EncryptedStore(inner, keys)                a `ContentStore` that seals every put with keys[0]
                                               and opens every sealed get with whichever key fits
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from storage.errors import StorageError, UnreadableFile
from storage.protocol import ContentStore
from storage.unixfs import Buffer, ChunkReader, open_input

MAGIC = b"CRVNSIV1"
KEY_BYTES = 64  # AES-SIV with AES-256 (two 256-bit halves)
KEY_ID_BYTES = 16
SEGMENT = 1 << 20
TAG = 16
_HEADER = struct.Struct(f">8s{KEY_ID_BYTES}sI")
HEADER_BYTES = _HEADER.size


class DecryptionError(StorageError):
    """Sealed content that cannot be opened: no key for it, the wrong key, or tampered bytes."""


@dataclass(frozen=True)
class DataKey:
    """A dataset version's data key. `key_id` names it publicly (in every ciphertext it seals);
    the secret is never printed (`repr` hides it)."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes, got {len(self.secret)}")

    @classmethod
    def generate(cls) -> DataKey:
        """A fresh random key, for a new dataset version or the one a revocation starts (`storage.keys`)."""
        return cls(AESSIV.generate_key(KEY_BYTES * 8))

    @property
    def key_id(self) -> str:
        """Hex of the first 16 bytes of sha256("caravan data key" | secret): names, never reveals."""
        return hashlib.sha256(b"caravan data key\0" + self.secret).digest()[:KEY_ID_BYTES].hex()


def _header(key: DataKey) -> bytes:
    return _HEADER.pack(MAGIC, bytes.fromhex(key.key_id), SEGMENT)


def _ad(header: bytes, index: int, last: bool) -> list[bytes]:
    return [header, struct.pack(">QB", index, last)]


def _segments(chunks: Iterable[Buffer]) -> Iterator[Buffer]:
    """Chunks of any sizes as whole segments (the last may be short); aligned chunks pass uncopied."""
    pending = bytearray()
    for chunk in chunks:
        if not pending and len(chunk) == SEGMENT:
            yield chunk
            continue
        pending += chunk
        while len(pending) >= SEGMENT:
            yield bytes(pending[:SEGMENT])
            del pending[:SEGMENT]
    if pending:
        yield bytes(pending)


def iter_sealed(key: DataKey, chunks: Iterable[Buffer]) -> Iterator[bytes]:
    """Seal a stream of plaintext chunks (any sizes): the header, then each sealed segment."""
    header, aead = _header(key), AESSIV(key.secret)
    yield header
    segments = _segments(chunks)
    previous, index = next(segments, b""), 0
    for segment in segments:  # one segment of look-ahead: the last one is flagged
        yield aead.encrypt(previous, _ad(header, index, False))
        previous, index = segment, index + 1
    yield aead.encrypt(previous, _ad(header, index, True))


def seal(key: DataKey, data: Buffer) -> bytes:
    """`data` sealed under `key`: deterministic (same key and data, same bytes)."""
    view = memoryview(data).cast("B")
    return b"".join(iter_sealed(key, (view[i : i + SEGMENT] for i in range(0, len(view), SEGMENT))))


def is_sealed(data: Buffer) -> bool:
    """Whether `data` starts like a sealed value (a plaintext value never needs a key)."""
    return bytes(memoryview(data)[: len(MAGIC)]) == MAGIC and len(data) >= HEADER_BYTES + TAG


def sealed_key_id(data: Buffer) -> str | None:
    """The key id a sealed value names; None for plaintext."""
    if not is_sealed(data):
        return None
    return _HEADER.unpack_from(data)[1].hex()


def open_sealed(keys: Sequence[DataKey] | DataKey, data: Buffer, *, what: str = "content") -> bytes:
    """The plaintext of a sealed value, with whichever of `keys` sealed it.

    Raises `DecryptionError` naming `what` when no key fits or the bytes fail authentication.
    """
    keys = [keys] if isinstance(keys, DataKey) else list(keys)
    key_id = sealed_key_id(data)
    if key_id is None:
        raise DecryptionError(f"{what} is not sealed content (no {MAGIC.decode()} header)")
    key = next((k for k in keys if k.key_id == key_id), None)
    if key is None:
        raise DecryptionError(
            f"{what} is sealed under data key {key_id}, which none of the keys given opens; "
            "use a holder key that was granted access to its dataset version (`caravan access grant`)"
        )
    header = bytes(memoryview(data)[:HEADER_BYTES])
    segment = _HEADER.unpack(header)[2] + TAG
    if segment == TAG:
        raise DecryptionError(f"{what} has a malformed header (segment size 0)")
    body = memoryview(data)[HEADER_BYTES:]
    aead, out, starts = AESSIV(key.secret), [], range(0, max(len(body), 1), segment)
    try:
        for index, start in enumerate(starts):
            last = start + segment >= len(body)
            out.append(aead.decrypt(bytes(body[start : start + segment]), _ad(header, index, last)))
    except InvalidTag:
        raise DecryptionError(
            f"{what} fails authentication under data key {key_id}: its bytes were altered or truncated"
        ) from None
    return b"".join(out)


def _read_segment(source: BinaryIO) -> bytes:
    """One whole segment from a stream (short reads joined), shorter only at its end."""
    data = source.read(SEGMENT)
    while data and len(data) < SEGMENT:
        more = source.read(SEGMENT - len(data))
        if not more:
            break
        data += more
    return data


class EncryptedStore:
    """A `ContentStore` whose every put is sealed with `keys[0]` (the version's current data key)
    and whose every get of sealed content is opened with whichever of `keys` sealed it.

    Content that is not sealed (provenance records, the public weights) reads through unchanged:
    it is what an auditor without a key reads too. `inner` is the store itself: write public
    values there. Pins, `has` and every CID are those of the ciphertext.
    """

    def __init__(self, inner: ContentStore, keys: Sequence[DataKey]) -> None:
        if not keys:
            raise ValueError("an EncryptedStore needs at least one data key")
        self.inner = inner
        self.keys = tuple(keys)

    def __repr__(self) -> str:
        return f"EncryptedStore({self.inner!r}, key {self.keys[0].key_id})"

    def put_bytes(self, data: Buffer, *, cid_version: int = 0, pin: bool = True) -> str:
        """Seal `data` with `keys[0]` and store it; returns the ciphertext's CID."""
        return self.inner.put_bytes(seal(self.keys[0], data), cid_version=cid_version, pin=pin)

    def put_file(self, path: str | os.PathLike[str], *, cid_version: int = 0, pin: bool = True) -> str:
        """Seal and store a file in bounded memory (streamed where the store takes a stream)."""
        with open_input(path) as source:
            stream = ChunkReader(iter_sealed(self.keys[0], iter(lambda: _read_segment(source), b"")))
            try:
                put_stream = getattr(self.inner, "put_stream", None)
                if put_stream is not None:
                    return put_stream(stream, cid_version=cid_version, pin=pin)
                return self._via_temp_file(stream, cid_version, pin)
            except OSError as exc:
                raise UnreadableFile(f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from None

    def _via_temp_file(self, stream: io.RawIOBase, cid_version: int, pin: bool) -> str:
        fd, tmp = tempfile.mkstemp(prefix="caravan-sealed-")
        try:
            with os.fdopen(fd, "wb") as out:
                while block := stream.read(SEGMENT):
                    out.write(block)
            return self.inner.put_file(tmp, cid_version=cid_version, pin=pin)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def get(self, cid: str) -> bytes:
        """The content at `cid`, opened with whichever of `keys` sealed it; unsealed content as stored."""
        data = self.inner.get(cid)
        return open_sealed(self.keys, data, what=f"content {cid}") if is_sealed(data) else data

    def has(self, cid: str) -> bool:
        """Whether the inner store holds `cid`; needs no key, as every CID is that of the stored bytes."""
        return self.inner.has(cid)

    def pin(self, cid: str) -> None:
        """Pin `cid` in the inner store (for sealed content, its ciphertext: no key needed)."""
        self.inner.pin(cid)

    def unpin(self, cid: str) -> None:
        """Unpin `cid` in the inner store; no key needed."""
        self.inner.unpin(cid)

    def pins(self) -> set[str]:
        """The inner store's pinned CIDs, sealed content and public values alike."""
        return self.inner.pins()


def public_store(store: ContentStore) -> ContentStore:
    """The store that keeps values public (records, weights): `store` itself unless it seals."""
    return store.inner if isinstance(store, EncryptedStore) else store
