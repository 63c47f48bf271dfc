"""The committed contract artifacts are exactly what a fresh compile produces."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = REPO / "provenance" / "contracts"


def test_fresh_compile_reproduces_committed_artifacts(tmp_path: Path) -> None:
    subprocess.run(
        ["node", str(CONTRACTS / "compile.mjs"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    fresh = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_bytes() for p in (CONTRACTS / "artifacts").glob("*.json")}
    assert {"ProvenanceRegistry.json", "RoyaltyDistributor.json"} <= set(fresh)
    assert sorted(fresh) == sorted(committed)
    for name, data in fresh.items():
        assert data == committed[name], f"{name} differs from a fresh compile: rerun compile.mjs"
