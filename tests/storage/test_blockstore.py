"""The embedded blockstore: round trips, verified reads, pins, GC, repair, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import (
    CHUNK_SIZE,
    BlockNotFound,
    BlockStore,
    ContentStore,
    CorruptBlock,
    InvalidCID,
    StorageError,
    UnreadableFile,
    cid_for_bytes,
)
from storage.cids import parse_cid
from tests.storage.conftest import content

DATA = content(3 * CHUNK_SIZE + 17, 7)


def _block_files(store: BlockStore) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (store.root / "data").rglob("*") if p.is_file()}


def test_is_a_content_store(store: BlockStore) -> None:
    assert isinstance(store, ContentStore)


@pytest.mark.parametrize("version", [0, 1])
def test_round_trip_bytes_and_file(store: BlockStore, tmp_path: Path, version: int) -> None:
    path = tmp_path / "in.bin"
    path.write_bytes(DATA)
    cid = store.put_file(path, cid_version=version)
    assert cid == cid_for_bytes(DATA, cid_version=version) == store.put_bytes(DATA, cid_version=version)
    assert store.get(cid) == DATA
    assert b"".join(store.iter_bytes(cid)) == DATA
    with store.open_stream(cid) as stream:
        assert stream.read(10) == DATA[:10]
        assert stream.read() == DATA[10:]
    assert store.has(cid) and cid in store.pins()
    # 4 leaves + 1 root; adding the same content twice stores nothing new
    assert len(_block_files(store)) == 5


def test_empty_and_small_files(store: BlockStore) -> None:
    for data in (b"", b"x", b"hello world\n"):
        for version in (0, 1):
            assert store.get(store.put_bytes(data, cid_version=version)) == data


def test_get_to_writes_atomically(store: BlockStore, tmp_path: Path) -> None:
    cid = store.put_bytes(DATA)
    out = tmp_path / "out.bin"
    store.get_to(cid, out)
    assert out.read_bytes() == DATA


def test_unknown_and_malformed_cids(store: BlockStore) -> None:
    unknown = cid_for_bytes(b"never stored")
    assert not store.has(unknown)
    with pytest.raises(BlockNotFound, match=unknown):
        store.get(unknown)
    with pytest.raises(BlockNotFound, match=unknown):
        store.pin(unknown)
    with pytest.raises(InvalidCID, match="not a valid CID"):
        store.get("not-a-cid")


def test_a_corrupt_block_is_never_returned_and_readd_repairs_it(store: BlockStore) -> None:
    cid = store.put_bytes(DATA, cid_version=1)
    leaf = next(p for p in (store.root / "data").rglob("bafkrei*"))
    good = leaf.read_bytes()
    leaf.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(CorruptBlock, match=leaf.name) as err:
        store.get(cid)
    assert "re-add" in str(err.value)
    assert store.verify() == [leaf.name]
    assert store.put_bytes(DATA, cid_version=1) == cid  # re-adding rewrites the bad copy
    assert store.verify() == [] and store.get(cid) == DATA


def test_pins_and_gc(store: BlockStore) -> None:
    keep = store.put_bytes(DATA)
    drop = store.put_bytes(content(2 * CHUNK_SIZE, 8), cid_version=1)
    loose = store.put_bytes(b"unpinned", pin=False)
    assert store.pins() == {keep, drop}
    store.unpin(drop)
    store.unpin(drop)  # idempotent
    assert store.pins() == {keep}
    assert store.gc() == 3 + 1  # drop's 2 leaves + root, and the loose block
    assert not store.has(drop) and not store.has(loose)
    assert store.get(keep) == DATA
    assert store.gc() == 0
    store.pin(keep)
    assert store.pins() == {keep}


def test_pin_accepts_either_cid_form(store: BlockStore) -> None:
    cid = store.put_bytes(DATA, pin=False)
    v1 = str(parse_cid(cid).set(version=1, base="base32"))
    store.pin(v1)
    assert store.has(v1) and store.get(v1) == DATA
    store.unpin(cid)
    assert store.pins() == set()


def test_gc_refuses_to_guess_when_a_pinned_dag_is_damaged(store: BlockStore) -> None:
    cid = store.put_bytes(DATA)
    store.put_bytes(b"loose", pin=False)
    root = next(p for p in (store.root / "data").rglob("*") if p.is_file() and p.name == _v1(cid))
    root.write_bytes(b"garbage")
    before = _block_files(store)
    with pytest.raises(StorageError, match="nothing was removed"):
        store.gc()
    assert _block_files(store) == before


def _v1(cid: str) -> str:
    return str(parse_cid(cid).set(version=1, base="base32"))


def test_a_failed_write_leaves_no_partial_block(store: BlockStore, tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    def parts():  # the disk "fails" after the first part was written
        yield b"ab"
        raise Boom

    existing = store.put_bytes(b"already here")
    before = _block_files(store)
    with pytest.raises(Boom):
        store.put_block(cid_for_bytes(b"abc", cid_version=1), parts())  # type: ignore[arg-type]
    assert _block_files(store) == before
    assert list((store.root / "tmp").iterdir()) == []
    assert store.get(existing) == b"already here"


def test_missing_and_unreadable_files_change_nothing(store: BlockStore, tmp_path: Path) -> None:
    cid = store.put_bytes(DATA)
    before = (_block_files(store), store.pins())
    with pytest.raises(UnreadableFile, match="no such file"):
        store.put_file(tmp_path / "nope.bin")
    with pytest.raises(UnreadableFile, match="directory"):
        store.put_file(tmp_path)
    assert (_block_files(store), store.pins()) == before
    assert store.get(cid) == DATA


