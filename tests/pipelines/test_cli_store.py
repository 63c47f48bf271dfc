"""`caravan store ...` end to end: round trips, and each bad input of issue 2 as one error line + exit 1."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from storage import CHUNK_SIZE, BlockStore, cid_for_bytes
from storage.cids import block_key
from storage.unixfs import iter_dag

REPO = Path(__file__).resolve().parents[2]
CARAVAN = Path(sys.executable).parent / "caravan"
DATA = random.Random(2).randbytes(3 * CHUNK_SIZE + 100)


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "blocks"
    monkeypatch.setenv("CARAVAN_STORE_DIR", str(path))
    return path


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.bin"
    path.write_bytes(DATA)
    return path


def run(*args: str | Path) -> tuple[int, bytes, str]:
    result = CliRunner().invoke(app, ["store", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout_bytes, result.stderr


def state(store_dir: Path) -> dict[str, bytes]:
    """Every file of the store (blocks and pin set), to prove a failed command changed nothing."""
    return {
        str(p.relative_to(store_dir)): p.read_bytes()
        for p in store_dir.rglob("*")
        if p.is_file() and p.suffix != ".lock"
    }


def one_error(stderr: str, *words: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_add_get_round_trip_through_the_installed_command(store_dir: Path, sample: Path) -> None:
    env = {**os.environ, "CARAVAN_STORE_DIR": str(store_dir)}
    add = subprocess.run(
        [CARAVAN, "store", "add", sample], capture_output=True, env=env, check=True, cwd=REPO
    )
    cid = add.stdout.decode().strip()
    assert cid == cid_for_bytes(DATA)
    got = subprocess.run([CARAVAN, "store", "get", cid], capture_output=True, env=env, check=True, cwd=REPO)
    assert got.stdout == DATA and got.stderr == b""


def test_add_v1_get_to_file_pins_ls_gc(store_dir: Path, sample: Path, tmp_path: Path) -> None:
    code, out, _ = run("add", sample, "--cid-version", "1")
    cid = out.decode().strip()
    assert code == 0 and cid == cid_for_bytes(DATA, cid_version=1)
    code, out, _ = run("get", cid, "-o", tmp_path / "copy.bin")
    assert code == 0 and (tmp_path / "copy.bin").read_bytes() == DATA
    loose = tmp_path / "loose.bin"
    loose.write_bytes(b"not pinned")
    run("add", "--no-pin", loose)
    assert run("ls")[1].decode().split() == [cid]
    assert run("gc")[1] == b"removed 1 blocks\n"
    assert run("unpin", cid)[0] == 0 and run("ls")[1] == b""
    assert run("pin", cid)[0] == 0 and run("ls")[1].decode().split() == [cid]
    code, out, _ = run("verify")
    assert code == 0 and out == b"ok: 5 blocks, 1 pins\n"


def test_export_and_import_car(
    store_dir: Path, sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = run("add", sample)[1].decode().strip()
    car = tmp_path / "out.car"
    assert run("export-car", cid, car)[0] == 0
    monkeypatch.setenv("CARAVAN_STORE_DIR", str(tmp_path / "other"))
    code, out, _ = run("import-car", car)
    assert code == 0 and out.decode().split() == [cid]
    assert run("get", cid)[1] == DATA
    assert run("ls")[1].decode().split() == [cid]


def test_store_option_overrides_the_environment(store_dir: Path, sample: Path, tmp_path: Path) -> None:
    cid = run("add", "--store", tmp_path / "explicit", sample)[1].decode().strip()
    assert BlockStore(tmp_path / "explicit").get(cid) == DATA
    assert not store_dir.exists() or state(store_dir) == {}


# --- bad input: one clear error line, exit 1, nothing stored lost or altered --------------------


@pytest.fixture
def stored(store_dir: Path, sample: Path) -> tuple[str, dict[str, bytes]]:
    """A store already holding one pinned file, and a picture of its files."""
    cid = run("add", sample)[1].decode().strip()
    return cid, state(store_dir)


def test_missing_file(store_dir: Path, stored: tuple[str, dict], tmp_path: Path) -> None:
    code, out, err = run("add", tmp_path / "missing.bin")
    assert code == 1 and out == b""
    one_error(err, "missing.bin", "no such file")
    assert state(store_dir) == stored[1]


def test_unreadable_files(store_dir: Path, stored: tuple[str, dict], tmp_path: Path) -> None:
    code, _, err = run("add", tmp_path)  # a directory
    assert code == 1
    one_error(err, "is a directory")
    code, _, err = run("add", "/proc/self/mem")  # opens, then every read fails (even for root)
    assert code == 1
    one_error(err, "/proc/self/mem", "Input/output error")
    if os.geteuid() != 0:
        locked = tmp_path / "locked.bin"
        locked.write_bytes(b"secret")
        locked.chmod(0)
        code, _, err = run("add", locked)
        assert code == 1
        one_error(err, "permission denied")
    assert state(store_dir) == stored[1]


@pytest.mark.parametrize("bad", ["QmBad", "not a cid", "bafy", ""])
def test_malformed_cid(store_dir: Path, stored: tuple[str, dict], bad: str) -> None:
    for command in (["get", bad], ["export-car", bad, "x.car"], ["pin", bad], ["unpin", bad]):
        code, out, err = run(*command)
        assert code == 1 and out == b"", command
        one_error(err, "not a valid CID")
    assert state(store_dir) == stored[1]


def test_unknown_cid(store_dir: Path, stored: tuple[str, dict], tmp_path: Path) -> None:
    unknown = cid_for_bytes(b"never stored here")
    for command in (["get", unknown], ["export-car", unknown, tmp_path / "u.car"], ["pin", unknown]):
        code, out, err = run(*command)
        assert code == 1 and out == b"", command
        one_error(err, unknown, "not in the store")
    assert not (tmp_path / "u.car").exists()
    assert state(store_dir) == stored[1]


def test_bad_cid_version(store_dir: Path, stored: tuple[str, dict], sample: Path) -> None:
    code, _, err = run("add", "--cid-version", "2", sample)
    assert code == 1
    one_error(err, "--cid-version 2", "use 0")
    assert state(store_dir) == stored[1]


def test_corrupted_block_on_disk(store_dir: Path, stored: tuple[str, dict], tmp_path: Path) -> None:
    cid, _ = stored
    other = tmp_path / "other.bin"
    other.write_bytes(b"an intact neighbour")
    other_cid = run("add", other)[1].decode().strip()
    last_leaf, _ = list(iter_dag(cid, BlockStore(store_dir).read_block))[-1]
    leaf = next((store_dir / "data").rglob(block_key(last_leaf)))
    leaf.write_bytes(leaf.read_bytes()[:-1] + bytes([leaf.read_bytes()[-1] ^ 1]))
    before = state(store_dir)

    code, out, err = run("get", cid)
    assert code == 1 and out == b""  # nothing of the file reaches stdout
    one_error(err, "fails its hash check", "re-add")
    code, _, err = run("get", cid, "-o", tmp_path / "out.bin")
    assert code == 1 and not (tmp_path / "out.bin").exists()
    code, _, err = run("export-car", cid, tmp_path / "out.car")
    assert code == 1 and not (tmp_path / "out.car").exists()
    code, _, err = run("gc")
    assert code == 1
    one_error(err, "nothing was removed")
    code, out, err = run("verify")
    assert code == 1 and f"corrupt block {leaf.name}" in out.decode()
    one_error(err, "1 corrupt block(s)")
    assert state(store_dir) == before
    assert run("get", other_cid)[1] == b"an intact neighbour"


def test_truncated_car(store_dir: Path, stored: tuple[str, dict], tmp_path: Path) -> None:
    cid, before = stored
    car = tmp_path / "full.car"
    run("export-car", cid, car)
    cut = tmp_path / "cut.car"
    cut.write_bytes(car.read_bytes()[: car.stat().st_size // 2])
    code, out, err = run("import-car", cut)
    assert code == 1 and out == b""
    one_error(err, "cut.car", "truncated", "nothing was stored")
    code, _, err = run("import-car", tmp_path / "absent.car")
    assert code == 1
    one_error(err, "absent.car", "no such file")
    assert state(store_dir) == before


def test_get_opens_a_private_versions_content_with_a_granted_key(store_dir, tmp_path, monkeypatch):
    """Sealed content comes out as plaintext with a key granted access, as ciphertext with --raw, and
    without a key (or with one not granted) as one error naming the fix, with no output file left."""
    from pipelines.privacy import HOLDER_KEY_ENV, Keyrings, keyring_dir
    from pipelines.settings import load_settings
    from storage import HolderKey, is_sealed

    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(HOLDER_KEY_ENV, raising=False)
    holder = HolderKey.generate()
    keyrings = Keyrings(keyring_dir(load_settings()), BlockStore(store_dir))
    sealing, keyring = keyrings.for_ingest("v1", holder)
    keyrings.put(keyring)
    cid = sealing.put_bytes(DATA)

    code, out, err = run("get", cid)
    assert code == 1 and f"{cid} is sealed" in err and "--raw" in err and not out
    code, out, _ = run("get", cid, "--raw")
    assert code == 0 and is_sealed(out) and out != DATA

    monkeypatch.setenv(HOLDER_KEY_ENV, HolderKey.generate().private_hex())  # a key never granted
    code, out, err = run("get", cid, "-o", tmp_path / "out.bin")
    assert code == 1 and "caravan access grant" in err and not (tmp_path / "out.bin").exists()

    monkeypatch.setenv(HOLDER_KEY_ENV, holder.private_hex())
    assert run("get", cid) == (0, DATA, "")
    code, _, _ = run("get", cid, "-o", tmp_path / "out.bin")
    assert code == 0 and (tmp_path / "out.bin").read_bytes() == DATA
