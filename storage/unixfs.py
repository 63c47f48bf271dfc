"""UnixFS files the way Kubo's `ipfs add` builds them, and the dag-pb codec they need.

Kubo's defaults: fixed 262144-byte chunks, a balanced DAG with at most 174 links per node,
CIDv0 with dag-pb leaves (UnixFS `File` nodes) or, with `--cid-version=1`, CIDv1 with raw
leaves. A one-chunk file is its own root. No maintained Python package encodes dag-pb and
UnixFS, so the few protobuf fields involved are written here by hand and checked in the
tests against two independent importers (`ipfs_cid` and npm `ipfs-unixfs-importer`).

The hot path hashes a leaf as `sha256(header) + sha256.update(chunk) + update(trailer)` over
a memoryview of one reusable read buffer, so no chunk is ever copied.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from multiformats import CID

from storage.cids import DAG_PB, RAW, cid_bytes_to_str, cid_to_str, make_cid_bytes, parse_cid
from storage.errors import CorruptBlock, StorageError, UnreadableFile

CHUNK_SIZE = 262_144
MAX_LINKS = 174
READ_SIZE = 32 * CHUNK_SIZE  # one 8 MiB buffer, reused for the whole file

UNIXFS_RAW, UNIXFS_DIRECTORY, UNIXFS_FILE = 0, 1, 2
_UNIXFS_NAMES = {0: "raw", 1: "directory", 2: "file", 3: "metadata", 4: "symlink", 5: "HAMT shard"}

Buffer = bytes | bytearray | memoryview
BlockSink = Callable[[bytes, Sequence[Buffer]], None]
"""Receives each new block as (binary CID, parts whose concatenation is the block)."""


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _leaf_frame(n: int) -> tuple[bytes, bytes]:
    """dag-pb header and trailer around `n` chunk bytes: PBNode{Data: UnixFS{File, Data, filesize}}."""
    size = _uvarint(n)
    data_field = b"\x12" + size if n else b""  # an empty file has no Data field
    unixfs_len = 2 + len(data_field) + n + 1 + len(size)
    return b"\x0a" + _uvarint(unixfs_len) + b"\x08\x02" + data_field, b"\x18" + size


_FULL_HEAD, _FULL_TAIL = _leaf_frame(CHUNK_SIZE)


@dataclass(frozen=True, slots=True)
class Link:
    """One child in the DAG: binary CID, cumulative block bytes (dag-pb Tsize), file bytes."""

    cid: bytes
    tsize: int
    filesize: int

    @property
    def cid_str(self) -> str:
        """The CID as Kubo prints it: base58btc `Qm...` for CIDv0, base32 `baf...` for CIDv1."""
        return cid_bytes_to_str(self.cid)


def encode_file_node(children: Sequence[Link], cid_version: int) -> tuple[bytes, Link]:
    """An interior UnixFS `File` node over `children`, as Kubo serialises it (links first)."""
    parts = []
    for child in children:
        link = b"\x0a" + _uvarint(len(child.cid)) + child.cid + b"\x12\x00\x18" + _uvarint(child.tsize)
        parts.append(b"\x12" + _uvarint(len(link)) + link)
    filesize = sum(c.filesize for c in children)
    unixfs = b"\x08\x02\x18" + _uvarint(filesize) + b"".join(b"\x20" + _uvarint(c.filesize) for c in children)
    parts.append(b"\x0a" + _uvarint(len(unixfs)) + unixfs)
    block = b"".join(parts)
    cid = make_cid_bytes(cid_version, DAG_PB, hashlib.sha256(block).digest())
    return block, Link(cid, len(block) + sum(c.tsize for c in children), filesize)


class DagBuilder:
    """Incremental balanced-DAG builder: feed chunks in order, then `finish()` for the root.

    Each level keeps at most 173 pending links and is folded into a parent node as soon as
    it holds 174, so memory stays O(174 · depth) for any file size. Folding bottom-up this
    way yields exactly the tree of go-unixfs' top-down balanced builder.
    """

    def __init__(
        self, cid_version: int = 0, sink: BlockSink | None = None, *, max_links: int = MAX_LINKS
    ) -> None:
        if cid_version not in (0, 1):
            raise ValueError(f"cid_version must be 0 or 1, got {cid_version!r}")
        if max_links < 2:
            raise ValueError(f"max_links must be at least 2, got {max_links!r}")
        self._version = cid_version
        self._max_links = max_links
        self._sink = sink
        self._levels: list[list[Link]] = [[]]
        self._leaves = 0

    def add_chunk(self, chunk: Buffer) -> None:
        """Add the next chunk (at most CHUNK_SIZE bytes; only the last may be shorter)."""
        n = len(chunk)
        if self._version == 0:
            head, tail = (_FULL_HEAD, _FULL_TAIL) if n == CHUNK_SIZE else _leaf_frame(n)
            h = hashlib.sha256(head)
            h.update(chunk)
            h.update(tail)
            cid = make_cid_bytes(0, DAG_PB, h.digest())
            if self._sink is not None:
                self._sink(cid, (head, chunk, tail))
            link = Link(cid, len(head) + n + len(tail), n)
        else:
            cid = make_cid_bytes(1, RAW, hashlib.sha256(chunk).digest())
            if self._sink is not None:
                self._sink(cid, (chunk,))
            link = Link(cid, n, n)
        self._leaves += 1
        self._push(0, link)

    def _push(self, level: int, link: Link) -> None:
        if level == len(self._levels):
            self._levels.append([])
        row = self._levels[level]
        row.append(link)
        if len(row) == self._max_links:
            self._levels[level] = []
            self._push(level + 1, self._fold(row))

    def _fold(self, row: Sequence[Link]) -> Link:
        block, link = encode_file_node(row, self._version)
        if self._sink is not None:
            self._sink(link.cid, (block,))
        return link

    def finish(self) -> Link:
        """Close every partial level and return the root link."""
        if self._leaves == 0:
            self.add_chunk(b"")
        level = 0
        while True:
            row = self._levels[level]
            if len(row) == 1 and not any(self._levels[level + 1 :]):
                return row[0]
            if row:
                self._levels[level] = []
                self._push(level + 1, self._fold(row))
            level += 1


def _read_full(stream: BinaryIO, view: memoryview) -> int:
    """Fill `view` unless EOF comes first (pipes and sockets return short reads)."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def import_stream(stream: BinaryIO, cid_version: int = 0, sink: BlockSink | None = None) -> Link:
    """Chunk and hash a binary stream through one reusable buffer; return the root link."""
    builder = DagBuilder(cid_version, sink)
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    while True:
        got = _read_full(stream, view)
        for off in range(0, got, CHUNK_SIZE):
            builder.add_chunk(view[off : min(off + CHUNK_SIZE, got)])
        if got < READ_SIZE:
            return builder.finish()


def import_bytes(
    data: Buffer,
    cid_version: int = 0,
    sink: BlockSink | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    max_links: int = MAX_LINKS,
) -> Link:
    """Chunk and hash in-memory bytes; return the root link.

    `chunk_size`/`max_links` other than Kubo's exist so tests can build deep trees from a
    few KiB and compare them with the npm importer set the same way.
    """
    builder = DagBuilder(cid_version, sink, max_links=max_links)
    view = memoryview(data).cast("B")
    for off in range(0, len(view), chunk_size):
        builder.add_chunk(view[off : off + chunk_size])
    return builder.finish()


def open_input(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a file for import, turning OS errors into one clear `UnreadableFile` line."""
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(21, "Is a directory")
        return open(path, "rb", buffering=0)  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise UnreadableFile(f"cannot read {os.fspath(path)!r}: no such file; check the path") from None
    except PermissionError:
        raise UnreadableFile(
            f"cannot read {os.fspath(path)!r}: permission denied; fix its permissions or run as its owner"
        ) from None
    except IsADirectoryError:
        raise UnreadableFile(
            f"cannot read {os.fspath(path)!r}: it is a directory; add one file at a time"
        ) from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from None


def import_file(path: str | os.PathLike[str], cid_version: int = 0, sink: BlockSink | None = None) -> Link:
    """Chunk and hash a file in bounded memory (one 8 MiB buffer); return the root link."""
    with open_input(path) as stream:
        try:
            return import_stream(stream, cid_version, sink)
        except OSError as exc:
            raise UnreadableFile(f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from None


def cid_for_bytes(data: Buffer, *, cid_version: int = 0) -> str:
    """The CID `ipfs add [--cid-version=1]` gives these bytes. Pure: nothing is stored."""
    return import_bytes(data, cid_version).cid_str


def cid_for_file(path: str | os.PathLike[str], *, cid_version: int = 0) -> str:
    """The CID `ipfs add [--cid-version=1]` gives this file, streamed in bounded memory."""
    return import_file(path, cid_version).cid_str


# --- decoding: enough dag-pb and UnixFS to read files back and walk DAGs -------------------


@dataclass(frozen=True, slots=True)
class PBLink:
    """One link of a dag-pb node: the child's CID as binary, its name, and its cumulative size in bytes."""

    cid: bytes
    name: str | None
    tsize: int | None


@dataclass(frozen=True, slots=True)
class PBNode:
    """A decoded dag-pb node: its links in block order, and its `Data` field (None where it has none)."""

    links: tuple[PBLink, ...]
    data: bytes | None


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """A decoded UnixFS `Data` message: its type (`UNIXFS_FILE`, ...), inline bytes, the file's size, and
    each child link's file bytes, in link order."""

    type: int
    data: bytes
    filesize: int | None
    blocksizes: tuple[int, ...]


def _read_uvarint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or oversized varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: Buffer) -> Iterator[tuple[int, int, int | memoryview]]:
    """Protobuf fields as (number, wire type, int or bytes view); fixed-width fields are skipped."""
    buf = memoryview(data).cast("B")
    pos = 0
    while pos < len(buf):
        key, pos = _read_uvarint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_uvarint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            size, pos = _read_uvarint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("length-delimited field runs past the end")
            yield number, wire, buf[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos != len(buf):
        raise ValueError("truncated field")


def decode_pb_node(block: Buffer) -> PBNode:
    """Decode a dag-pb block (raises ValueError when malformed)."""
    links: list[PBLink] = []
    data: bytes | None = None
    for number, wire, value in _fields(block):
        if number == 2 and wire == 2:
            cid, name, tsize = b"", None, None
            for n, w, v in _fields(value):  # type: ignore[arg-type]
                if n == 1 and w == 2:
                    cid = bytes(v)  # type: ignore[arg-type]
                elif n == 2 and w == 2:
                    name = bytes(v).decode("utf-8")  # type: ignore[arg-type]
                elif n == 3 and w == 0:
                    tsize = v  # type: ignore[assignment]
            if not cid:
                raise ValueError("dag-pb link without a Hash")
            links.append(PBLink(cid, name, tsize))
        elif number == 1 and wire == 2:
            data = bytes(value)  # type: ignore[arg-type]
    return PBNode(tuple(links), data)


def decode_unixfs(data: Buffer) -> UnixFSData:
    """Decode the UnixFS `Data` message carried in a dag-pb node (raises ValueError when malformed)."""
    kind, payload, filesize, sizes = None, b"", None, []
    for number, wire, value in _fields(data):
        if number == 1 and wire == 0:
            kind = value
        elif number == 2 and wire == 2:
            payload = bytes(value)  # type: ignore[arg-type]
        elif number == 3 and wire == 0:
            filesize = value
        elif number == 4 and wire == 0:
            sizes.append(value)
        elif number == 4 and wire == 2:  # packed encoding, accepted for robustness
            view, pos = value, 0
            while pos < len(view):  # type: ignore[arg-type]
                size, pos = _read_uvarint(view, pos)  # type: ignore[arg-type]
                sizes.append(size)
    if kind is None:
        raise ValueError("UnixFS Data without a Type")
    return UnixFSData(kind, payload, filesize, tuple(sizes))  # type: ignore[arg-type]


Fetch = Callable[[CID], bytes]
"""Returns a block's bytes, already checked against its CID."""


def _corrupt(cid: CID, why: str) -> CorruptBlock:
    return CorruptBlock(
        f"block {cid_to_str(cid)} is not a valid dag-pb/UnixFS node ({why}); re-add or re-import the original"
    )


def iter_file(root: str | CID, fetch: Fetch) -> Iterator[bytes]:
    """Yield a UnixFS file's content in order, fetching (and so verifying) one block at a time."""
    root_cid = parse_cid(root)
    expected: int | None = None
    produced = 0
    stack = [root_cid]
    while stack:
        cid = stack.pop()
        block = fetch(cid)
        if cid.codec.code == RAW:
            produced += len(block)
            yield block
            continue
        if cid.codec.code != DAG_PB:
            raise StorageError(
                f"CID {cid_to_str(cid)} is {cid.codec.name}, not a UnixFS file; it cannot be read as one"
            )
        try:
            node = decode_pb_node(block)
            fs = decode_unixfs(node.data or b"")
            children = [parse_cid(link.cid) for link in node.links]
        except (ValueError, StorageError) as exc:
            raise _corrupt(cid, str(exc)) from None
        if fs.type not in (UNIXFS_FILE, UNIXFS_RAW):
            raise StorageError(
                f"CID {cid_to_str(cid)} is a UnixFS {_UNIXFS_NAMES.get(fs.type, fs.type)}, not a file; "
                "`get` reads files only"
            )
        if cid == root_cid:
            expected = fs.filesize
        if fs.data:
            produced += len(fs.data)
            yield fs.data
        stack.extend(reversed(children))
    if expected is not None and produced != expected:
        raise _corrupt(root_cid, f"its DAG holds {produced} bytes but declares {expected}")


def iter_dag(root: str | CID, fetch: Fetch, *, load_raw: bool = True,
             exists: Callable[[CID], bool] | None = None) -> Iterator[tuple[CID, bytes | None]]:
    """Every distinct block of a DAG in depth-first pre-order (CAR order), following dag-pb links.

    With `load_raw=False` raw leaves are not read (the block is None) but `exists` is asked
    about them, which keeps marking for GC and pin checks from reading the whole dataset.
    """
    seen: set[bytes] = set()
    stack = [parse_cid(root)]
    while stack:
        cid = stack.pop()
        key = bytes(cid.set(version=1)) if cid.version == 0 else bytes(cid)
        if key in seen:
            continue
        seen.add(key)
        if cid.codec.code != DAG_PB and not load_raw:
            if exists is not None and not exists(cid):
                fetch(cid)  # raises the store's own BlockNotFound
            yield cid, None
            continue
        block = fetch(cid)
        yield cid, block
        if cid.codec.code == DAG_PB:
            try:
                links = [parse_cid(link.cid) for link in decode_pb_node(block).links]
            except (ValueError, StorageError) as exc:
                raise _corrupt(cid, str(exc)) from None
            stack.extend(reversed(links))


class ChunkReader(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks (a stored file read back, content
    sealed on its way in)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        """Always True: `io.BufferedReader` only wraps a raw file that says it is readable."""
        return True

    def readinto(self, buffer: Buffer) -> int:  # type: ignore[override]
        """Copy the next bytes, up to ``len(buffer)`` and never past the current chunk, into ``buffer``;
        returns how many (0 once the chunks are exhausted)."""
        while not self._pending:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._pending = memoryview(nxt)
        out = memoryview(buffer).cast("B")
        n = min(len(out), len(self._pending))
        out[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n
