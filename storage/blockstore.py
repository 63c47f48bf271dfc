"""The embedded content store: verified blocks on local disk, recursive pins, GC and CAR files.

Layout under `root` (the caller's settings choose it: caravan's put it under `CARAVAN_HOME`):

    data/<2 chars>/<CIDv1 base32>   one file per block (CIDv0 blocks are named by their v1 form)
    tmp/                            writes land here first, then are renamed into data/
    pins.json                       the recursive pin set, rewritten atomically
    gc.lock, pins.lock              flock(2) locks: adds hold gc.lock shared, gc holds it exclusive

Every block read is rehashed: a corrupt block raises `CorruptBlock` naming its CID and is
never returned. Writes are temp-file-then-rename (with fsync by default), so a crash leaves
either the old state or the new one, and re-adding a file repairs a damaged block.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from multiformats import CID

from storage.car import iter_sections, read_header, write_car
from storage.cids import block_key, block_matches, cid_to_str, parse_cid
from storage.errors import BlockNotFound, CarError, CorruptBlock, StorageError, UnreadableFile
from storage.unixfs import (
    BlockSink,
    Buffer,
    ChunkReader,
    Link,
    import_bytes,
    import_file,
    import_stream,
    iter_dag,
    iter_file,
    open_input,
)

STORE_DIR_ENV = "CARAVAN_STORE_DIR"
_SINK_MEMO = 4096  # CIDs remembered per import (~0.5 MiB)


class BlockStore:
    """Blocks on local disk, each verified on read; the default `ContentStore`."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self._data = self.root / "data"
        self._tmp = self.root / "tmp"
        self._pins_file = self.root / "pins.json"
        self._fsync = fsync
        try:
            self._data.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the block store at {str(self.root)!r}: {exc.strerror or exc}; "
                f"set {STORE_DIR_ENV} to a writable directory"
            ) from None
        self._shards: set[str] = set()

    def __repr__(self) -> str:
        return f"BlockStore({str(self.root)!r})"

    # --- blocks ----------------------------------------------------------------------------

    def _path(self, cid: CID) -> Path:
        key = block_key(cid)
        return self._data / key[-3:-1] / key

    def _exists(self, cid: CID) -> bool:
        return self._path(cid).is_file()

    def read_block(self, cid: str | CID) -> bytes:
        """One block's bytes, rehashed against its CID first."""
        cid = parse_cid(cid)
        path = self._path(cid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlockNotFound(
                f"block {cid_to_str(cid)} is not in the store at {str(self.root)!r}; "
                "add the file again or import a CAR that holds it"
            ) from None
        if not block_matches(cid, data):
            raise CorruptBlock(
                f"block {cid_to_str(cid)} on disk ({path}) fails its hash check and was not returned; "
                "re-add the original file or import a CAR holding it to repair it "
                "(`caravan store verify` lists all)"
            )
        return data

    def put_block(self, cid: str | CID | bytes, parts: Sequence[Buffer]) -> None:
        """Store one block given as parts; skipped if an intact copy exists, repaired if not."""
        cid = parse_cid(cid)
        path = self._path(cid)
        if path.is_file():
            try:
                if block_matches(cid, path.read_bytes()):
                    return
            except OSError:
                pass  # unreadable copy: overwrite it below
        shard = path.parent.name
        if shard not in self._shards:
            path.parent.mkdir(exist_ok=True)
            self._shards.add(shard)
        self._atomic_write(path, parts)

    def _atomic_write(self, path: Path, parts: Sequence[Buffer]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix=path.name[-12:] + ".")
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    out.write(part)
                if self._fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _sink(self) -> BlockSink:
        """A sink for one import: a block repeated within it (zeros, repeated data) is written once.

        The memo is capped (cleared when full), so memory stays bounded for any file size.
        """
        done: set[bytes] = set()

        def sink(cid: bytes, parts: Sequence[Buffer]) -> None:
            if cid not in done:
                self.put_block(cid, parts)
                if len(done) >= _SINK_MEMO:
                    done.clear()
                done.add(cid)

        return sink

    def has(self, cid: str) -> bool:
        """True when the block itself is on disk (its children are not checked; see `pin`)."""
        return self._exists(parse_cid(cid))

    def iter_cids(self) -> Iterator[CID]:
        """Every block on disk, named by CID (v1 form)."""
        for shard in sorted(self._data.iterdir()):
            if shard.is_dir():
                for path in sorted(shard.iterdir()):
                    with contextlib.suppress(StorageError):
                        yield parse_cid(path.name)

    # --- files -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, name: str, exclusive: bool) -> Iterator[None]:
        with open(self.root / name, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def put_bytes(self, data: Buffer, *, cid_version: int = 0, pin: bool = True) -> str:
        """Store bytes as a UnixFS file (Kubo's layout); return its CID, pinned by default."""
        return self._put(lambda sink: import_bytes(data, cid_version, sink), pin)

    def put_file(self, path: str | os.PathLike[str], *, cid_version: int = 0, pin: bool = True) -> str:
        """Stream a file into the store in bounded memory; return its CID, pinned by default."""
        return self._put(lambda sink: import_file(path, cid_version, sink), pin)

    def put_stream(self, stream: BinaryIO, *, cid_version: int = 0, pin: bool = True) -> str:
        """Store a binary stream (e.g. content sealed on the fly) in bounded memory; return its CID."""
        return self._put(lambda sink: import_stream(stream, cid_version, sink), pin)

    def _put(self, importer: Callable[[BlockSink], Link], pin: bool) -> str:
        """Import under the shared GC lock (a collection never sees a half-written, unpinned file)."""
        with self._lock("gc.lock", exclusive=False):
            cid = importer(self._sink()).cid_str
            if pin:
                self._add_pin(cid)
        return cid

    def iter_bytes(self, cid: str) -> Iterator[bytes]:
        """A file's content chunk by chunk, each block verified as it is read."""
        return iter_file(cid, self.read_block)

    def open_stream(self, cid: str) -> BinaryIO:
        """A buffered, read-only file object over a stored file (for large files)."""
        return io.BufferedReader(ChunkReader(self.iter_bytes(cid)), buffer_size=1 << 20)  # type: ignore[return-value]

    def get(self, cid: str) -> bytes:
        """A whole file's content; every block is verified."""
        return b"".join(self.iter_bytes(cid))

    def get_to(self, cid: str, out_path: str | os.PathLike[str]) -> None:
        """Write a file's content to `out_path` atomically (nothing is written if a block is bad)."""
        self._write_out(out_path, lambda out: [out.write(chunk) for chunk in self.iter_bytes(cid)])

    # --- pins and GC -----------------------------------------------------------------------

    def _read_pins(self) -> list[str]:
        try:
            doc = json.loads(self._pins_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise StorageError(
                f"the pin set {str(self._pins_file)!r} is unreadable ({exc}); restore it from a backup"
            ) from None
        return list(doc.get("pins", []))

    def _write_pins(self, pins: set[str]) -> None:
        body = json.dumps({"version": 1, "pins": sorted(pins)}, indent=1).encode() + b"\n"
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="pins.")
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._pins_file)

    def _check_complete(self, cid: CID) -> None:
        """Raise BlockNotFound/CorruptBlock unless the whole DAG under `cid` is stored."""
        for _ in iter_dag(cid, self.read_block, load_raw=False, exists=self._exists):
            pass

    def _add_pin(self, cid: str) -> None:
        with self._lock("pins.lock", exclusive=True):
            pins = set(self._read_pins())
            if cid not in pins:
                self._write_pins(pins | {cid})

    def pin(self, cid: str) -> None:
        """Pin a DAG recursively; every block under it must already be stored."""
        parsed = parse_cid(cid)
        self._check_complete(parsed)
        self._add_pin(cid_to_str(parsed))

    def unpin(self, cid: str) -> None:
        """Drop a pin (either CID form); unpinning something not pinned is a no-op."""
        key = block_key(parse_cid(cid))
        with self._lock("pins.lock", exclusive=True):
            pins = set(self._read_pins())
            keep = {p for p in pins if block_key(parse_cid(p)) != key}
            if keep != pins:
                self._write_pins(keep)

    def pins(self) -> set[str]:
        """The recursive pin set, as the CID strings that were pinned."""
        return set(self._read_pins())

    def gc(self) -> int:
        """Remove every block no pin reaches; returns how many were removed.

        Refuses to run if a pinned DAG cannot be walked (missing or corrupt interior node),
        since its unreadable links could name blocks that must be kept.
        """
        with self._lock("gc.lock", exclusive=True):
            live: set[str] = set()
            for pin in self._read_pins():
                try:
                    for cid, _ in iter_dag(pin, self.read_block, load_raw=False, exists=self._exists):
                        live.add(block_key(cid))
                except StorageError as exc:
                    raise StorageError(
                        f"gc stopped, nothing was removed: pinned DAG {pin} is damaged: {exc}"
                    ) from None
            removed = 0
            for shard in self._data.iterdir():
                for path in shard.iterdir() if shard.is_dir() else ():
                    if path.name not in live:
                        path.unlink()
                        removed += 1
            for leftover in self._tmp.iterdir():  # temp files of interrupted writes
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            return removed

    def verify(self) -> list[str]:
        """Rehash every block on disk; return the CIDs (v1 form) of blocks that fail."""
        bad = []
        for cid in self.iter_cids():
            try:
                ok = block_matches(cid, self._path(cid).read_bytes())
            except OSError:
                ok = False
            if not ok:
                bad.append(cid_to_str(cid))
        return bad

    def damaged_pins(self) -> dict[str, str]:
        """Pins whose DAG is not whole (a block missing, or an interior node corrupt), with the reason.

        Raw leaves are checked for presence only; `verify` rehashes every block.
        """
        damaged = {}
        for pin in sorted(self._read_pins()):
            try:
                self._check_complete(parse_cid(pin))
            except StorageError as exc:
                damaged[pin] = str(exc)
        return damaged

    # --- CAR -------------------------------------------------------------------------------

    def _write_out(self, out_path: str | os.PathLike[str], write) -> None:  # noqa: ANN001
        target = Path(out_path)
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
        except OSError as exc:
            raise StorageError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def export_car(self, cid: str, out_path: str | os.PathLike[str]) -> None:
        """Write the DAG under `cid` as a CAR v1 file (blocks in depth-first order, verified)."""
        root = parse_cid(cid)
        self._write_out(out_path, lambda out: write_car(out, [root], iter_dag(root, self.read_block)))

    def _scan_car(self, path: str | os.PathLike[str], *, store: bool) -> list[CID]:
        """Read a CAR, checking every block; store the blocks too when `store` is set."""
        name = os.fspath(path)
        with open_input(path) as raw, io.BufferedReader(raw, 1 << 20) as stream:
            try:
                roots = read_header(stream)
                for cid, block in iter_sections(stream):
                    if store:
                        self.put_block(cid, (block,))
            except CarError as exc:
                raise CarError(f"{name}: {exc}; nothing was stored") from None
            except OSError as exc:
                raise UnreadableFile(f"cannot read {name!r}: {exc.strerror or exc}") from None
        return roots

    def import_car(self, path: str | os.PathLike[str], *, pin: bool = True) -> list[str]:
        """Import a CAR v1 file; return its roots (pinned by default).

        The whole CAR is read and every block checked before anything is stored, so a
        truncated or corrupt CAR changes nothing.
        """
        self._scan_car(path, store=False)
        with self._lock("gc.lock", exclusive=False):
            roots = self._scan_car(path, store=True)
            if pin:
                for root in roots:
                    self.pin(cid_to_str(root))
        return [cid_to_str(r) for r in roots]
