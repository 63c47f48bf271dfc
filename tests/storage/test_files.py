"""A folder as one CID: the file table names each file by its relative name and CID, the same files
give the same CID under any folder name, and a table read back never writes outside its folder."""

from __future__ import annotations

import json

import pytest

from storage import BlockStore, FileTable, StorageError, UnreadableFile, cid_for_bytes, get_folder, put_folder


def _folder(root, files: dict[str, bytes]):
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


FILES = {"config.json": b'{"a": 1}', "weights/model.safetensors": b"\x00" * 1000, "tokenizer.json": b"{}"}


def test_a_folder_round_trips_by_one_cid_whatever_its_name(tmp_path):
    store = BlockStore(tmp_path / "blocks")
    cid, table = put_folder(store, _folder(tmp_path / "one", FILES))
    again, _ = put_folder(store, _folder(tmp_path / "elsewhere" / "two", FILES))
    assert cid == again and str(tmp_path).encode() not in store.get(cid)
    assert table.names() == sorted(FILES)
    assert table.cid_of("tokenizer.json") == cid_for_bytes(b"{}", cid_version=1)  # each file's own CID
    assert {cid, *(f.cid for f in table.files)} <= store.pins()
    got = get_folder(store, cid, tmp_path / "out")
    assert got == table
    assert {n: (tmp_path / "out" / n).read_bytes() for n in FILES} == FILES
    changed, _ = put_folder(store, _folder(tmp_path / "three", {**FILES, "tokenizer.json": b"[]"}))
    assert changed != cid


def test_bad_folders_and_tables_are_refused(tmp_path):
    store = BlockStore(tmp_path / "blocks")
    with pytest.raises(UnreadableFile, match="is not a folder"):
        put_folder(store, tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnreadableFile, match="holds no file"):
        put_folder(store, tmp_path / "empty")
    for name in ("../escape", "/etc/passwd", "a/../../b"):
        evil = json.dumps({"format": "caravan.file-table/1", "files": [[name, "bafy", 1]]}).encode()
        with pytest.raises(StorageError, match="not a relative name"):
            get_folder(store, store.put_bytes(evil, cid_version=1), tmp_path / "out")
    with pytest.raises(StorageError, match="file table"):
        FileTable.from_json(b'{"files": []}')
    with pytest.raises(StorageError, match="has no 'x'"):
        FileTable(()).cid_of("x")


class NoWholeReads(BlockStore):
    """A store whose ``get`` refuses anything but small documents (the file table)."""

    def get(self, cid: str) -> bytes:
        data = super().get(cid)
        assert len(data) < 10_000, "get_folder read a whole large file into memory"
        return data


def test_a_large_file_is_streamed_block_by_block_and_a_bad_block_writes_nothing(tmp_path):
    big = bytes(range(256)) * 4096  # 1 MiB: four 256 KiB blocks
    store = NoWholeReads(tmp_path / "blocks")
    cid, _ = put_folder(store, _folder(tmp_path / "model", {"weights.bin": big, "config.json": b"{}"}))
    get_folder(store, cid, tmp_path / "out")
    assert (tmp_path / "out" / "weights.bin").read_bytes() == big
    leaf = sorted((store.root / "data").rglob("bafkrei*"), key=lambda p: p.stat().st_size)[-1]
    good = leaf.read_bytes()
    leaf.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(StorageError):
        get_folder(store, cid, tmp_path / "again")
    assert not (tmp_path / "again" / "weights.bin").exists()
    assert not list((tmp_path / "again").glob("*.part"))
