"""A folder of files as one CID: a file table (each file's relative name, CID and size) stored as
canonical JSON beside the files it names.

Records name sources by content, never by path: a folder stored this way is named by its table's
CID alone, and the same files under any folder name give the same table and CID. Each file keeps
its own CID (the one `ipfs add` gives it), so every file is verified when it is read back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from storage.errors import StorageError, UnreadableFile
from storage.protocol import ContentStore

FILE_TABLE_FORMAT = "caravan.file-table/1"


@dataclass(frozen=True)
class StoredFile:
    """One row of a file table: the file's name in the folder, its own CID, and its size in bytes."""

    name: str  # relative POSIX path inside the folder
    cid: str
    size: int


@dataclass(frozen=True)
class FileTable:
    """The files of one folder, sorted by name."""

    files: tuple[StoredFile, ...]

    def names(self) -> list[str]:
        """Each file's relative POSIX path inside the folder, in the table's (sorted) order."""
        return [f.name for f in self.files]

    def cid_of(self, name: str) -> str:
        """The CID of file ``name``; ``StorageError`` if the table has no such file."""
        for f in self.files:
            if f.name == name:
                return f.cid
        raise StorageError(f"the file table has no {name!r} (it holds {self.names()})")

    def to_json(self) -> bytes:
        """Canonical bytes (sorted keys, no spaces): the same files, the same CID."""
        doc = {"format": FILE_TABLE_FORMAT, "files": [[f.name, f.cid, f.size] for f in self.files]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FileTable:
        """The table ``to_json`` wrote; ``StorageError`` for any other bytes or a name outside the folder."""
        try:
            doc = json.loads(data)
            if doc.get("format") != FILE_TABLE_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            files = tuple(StoredFile(str(n), str(c), int(s)) for n, c, s in doc["files"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"not a {FILE_TABLE_FORMAT} file table: {exc}") from None
        for f in files:
            _check_name(f.name)
        return cls(files)


def put_folder(store: ContentStore, folder: str | os.PathLike[str], *, cid_version: int = 1
               ) -> tuple[str, FileTable]:
    """Store (pinned) every regular file under ``folder`` and its file table; (table CID, table).

    ``UnreadableFile`` if ``folder`` is not a folder or holds no file."""
    root = Path(folder)
    if not root.is_dir():
        raise UnreadableFile(f"{os.fspath(folder)!r} is not a folder")
    paths = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    if not paths:
        raise UnreadableFile(f"{os.fspath(folder)!r} holds no file")
    table = FileTable(tuple(
        StoredFile(p.relative_to(root).as_posix(), store.put_file(p, cid_version=cid_version, pin=True),
                   p.stat().st_size)
        for p in paths
    ))
    return store.put_bytes(table.to_json(), cid_version=cid_version, pin=True), table


def get_folder(store: ContentStore, table_cid: str, dest: str | os.PathLike[str]) -> FileTable:
    """Write the files ``table_cid`` names under ``dest`` (each verified by its CID on read)."""
    table = FileTable.from_json(store.get(table_cid))
    root = Path(dest)
    for f in table.files:
        path = root.joinpath(*PurePosixPath(f.name).parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(store, f.cid, path)
    return table


def write_file(store: ContentStore, cid: str, path: Path) -> None:
    """``cid``'s bytes at ``path``, whole or not at all: streamed block by block (each verified) where
    the store streams (``iter_bytes``), so a model's weights never sit in memory at once."""
    chunks = store.iter_bytes(cid) if hasattr(store, "iter_bytes") else iter((store.get(cid),))
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def _check_name(name: str) -> None:
    """A relative name that stays inside the folder (a table read from a store is not trusted)."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise StorageError(f"file table entry {name!r} is not a relative name inside its folder")
