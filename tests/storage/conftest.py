"""Fixtures for the storage tests: a fresh store, deterministic files, and the two CID oracles."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from storage import BlockStore

HERE = Path(__file__).parent
REPO = HERE.parent.parent
VECTORS = HERE / "vectors.json"
IPFS_CID = "/usr/bin/ipfs_cid"
NODE_ORACLE = HERE / "unixfs_oracle.mjs"


def content(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes (the same on every machine and Python 3.11+)."""
    return random.Random(seed).randbytes(size)


def load_vectors() -> list[dict]:
    return json.loads(VECTORS.read_text())["vectors"]


def need_tool(tool: str) -> str:
    found = shutil.which(tool) or (tool if Path(tool).exists() else None)
    if not found:
        pytest.fail(f"{tool} is needed as a CID oracle; run `make setup` (installs ipfs-cid, Node deps)")
    return found


def ipfs_cid(path: Path) -> str:
    """Kubo's CIDv0 for a file, from Debian's independent `ipfs_cid` (a Go importer)."""
    out = subprocess.run([need_tool(IPFS_CID), str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["CIDv0"]


def js_cids(mode: str, paths: Sequence[Path], env: dict[str, str] | None = None) -> list[str]:
    """CIDs from npm `ipfs-unixfs-importer` set up like `ipfs add` (mode 'v0' or 'v1')."""
    if not (REPO / "node_modules" / "ipfs-unixfs-importer").is_dir():
        pytest.fail("node_modules lacks ipfs-unixfs-importer; run `make setup`")
    out = subprocess.run(
        [need_tool("node"), str(NODE_ORACLE), mode, *map(str, paths)],
        capture_output=True, text=True, check=True, cwd=REPO, env={**_base_env(), **(env or {})},
    )
    return out.stdout.split()


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("ORACLE_")}


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "blocks", fsync=False)
