"""scripts/anvil.sh: start, refuse a second start, keep records across stop/start, stop cleanly."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from eth_account import Account

from provenance.anvil import free_port, read_dev_keys
from provenance.chain import Chain

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "anvil.sh"


def _script(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=60)


def test_anvil_script_persists_state(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, CARAVAN_CHAIN_DIR=str(tmp_path), CARAVAN_ANVIL_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        assert _script("start", env).returncode == 0
        assert "already running" in _script("start", env).stdout
        assert _script("status", env).stdout.strip() == f"{url} chain id 31337"
        chain = Chain(
            url, account=Account.from_key(read_dev_keys(tmp_path / "anvil.json")[0]), chain_dir=tmp_path
        )
        chain.deploy()
        chain.record("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "", "persist")
        assert _script("stop", env).returncode == 0
        assert (tmp_path / "state.json").is_file()
        assert _script("status", env).returncode == 1
        assert _script("start", env).returncode == 0
        again = Chain(url, chain_dir=tmp_path)
        assert again.is_recorded("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")
        assert len(again.recorded_events("persist")) == 1
    finally:
        _script("stop", env)
    assert not (tmp_path / "anvil.pid").exists()
