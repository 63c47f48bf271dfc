"""CAR v1 export/import, checked against the independent npm `@ipld/car` reader and writer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from storage import CHUNK_SIZE, BlockStore, CarError, CorruptBlock
from storage.cids import cid_to_str, parse_cid
from storage.unixfs import iter_dag
from tests.storage.conftest import REPO, content, need_tool

HERE = Path(__file__).parent
C = CHUNK_SIZE


def car_oracle(*args: str | Path) -> str:
    if not (REPO / "node_modules" / "@ipld" / "car").is_dir():
        pytest.fail("node_modules lacks @ipld/car; run `make setup`")
    out = subprocess.run([need_tool("node"), str(HERE / "car_oracle.mjs"), *map(str, args)],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return out.stdout


def _state(store: BlockStore) -> tuple[dict[str, bytes], set[str]]:
    return {p.name: p.read_bytes() for p in (store.root / "data").rglob("*") if p.is_file()}, store.pins()


@pytest.mark.parametrize(("size", "version"), [(0, 0), (3 * C + 17, 0), (3 * C + 17, 1), (175 * C + 1, 1)])
def test_our_car_reads_in_ipld_car(store: BlockStore, tmp_path: Path, size: int, version: int) -> None:
    cid = store.put_bytes(content(size, size), cid_version=version)
    car = tmp_path / "out.car"
    store.export_car(cid, car)
    seen = json.loads(car_oracle("read", car))
    assert seen["roots"] == [cid]
    ours = [(cid_to_str(c), len(b)) for c, b in iter_dag(cid, store.read_block)]  # type: ignore[arg-type]
    assert [(b["cid"], b["size"]) for b in seen["blocks"]] == ours
    assert all(b["hashOk"] for b in seen["blocks"])


@pytest.mark.parametrize("mode", ["v0", "v1"])
def test_import_a_car_written_by_ipld_car(store: BlockStore, tmp_path: Path, mode: str) -> None:
    data = content(5 * C + 3, 99)
    src, car = tmp_path / "src.bin", tmp_path / "js.car"
    src.write_bytes(data)
    root = car_oracle("write", mode, src, car).strip()
    assert store.import_car(car) == [root]
    assert store.get(root) == data and root in store.pins()


def test_car_round_trip_into_another_store(store: BlockStore, tmp_path: Path) -> None:
    data = content(2 * C + 1, 5)
    cid = store.put_bytes(data)
    car = tmp_path / "a.car"
    store.export_car(cid, car)
    other = BlockStore(tmp_path / "other", fsync=False)
    assert other.import_car(car, pin=False) == [cid]
    assert other.get(cid) == data and other.pins() == set()


def _valid_car(tmp_path: Path) -> Path:
    src = BlockStore(tmp_path / "src", fsync=False)
    car = tmp_path / "valid.car"
    src.export_car(src.put_bytes(content(3 * C, 3)), car)
    return car


@pytest.mark.parametrize("keep", [5, 60, 1000, -1])
def test_a_truncated_car_is_refused_and_changes_nothing(store: BlockStore, tmp_path: Path, keep: int) -> None:
    existing = store.put_bytes(b"already stored")
    before = _state(store)
    raw = _valid_car(tmp_path).read_bytes()
    bad = tmp_path / "cut.car"
    bad.write_bytes(raw[:keep])
    with pytest.raises(CarError, match="truncated.*nothing was stored"):
        store.import_car(bad)
    assert _state(store) == before and store.get(existing) == b"already stored"


def test_a_corrupt_or_foreign_car_is_refused(store: BlockStore, tmp_path: Path) -> None:
    before = _state(store)
    raw = bytearray(_valid_car(tmp_path).read_bytes())
    raw[-10] ^= 0xFF
    bad = tmp_path / "flipped.car"
    bad.write_bytes(raw)
    with pytest.raises(CarError, match="fails its hash check"):
        store.import_car(bad)
    bad.write_bytes(b"PK\x03\x04 definitely a zip file, not a CAR")
    with pytest.raises(CarError, match="not a CAR v1"):
        store.import_car(bad)
    assert _state(store) == before


def test_exporting_a_damaged_dag_writes_no_car(store: BlockStore, tmp_path: Path) -> None:
    cid = store.put_bytes(content(2 * C, 4), cid_version=1)
    leaf = next((store.root / "data").rglob("bafkrei*"))
    leaf.write_bytes(b"rot")
    out = tmp_path / "out.car"
    with pytest.raises(CorruptBlock, match=leaf.name):
        store.export_car(cid, out)
    assert not out.exists() and list(tmp_path.glob(".out.car.*")) == []
    assert parse_cid(cid)  # the root itself is untouched
