"""`caravan trace|verify|chain` end to end on a real anvil, configured only by CARAVAN_* variables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from provenance.anvil import free_port
from provenance.chain import Chain
from provenance.runs import claim_share, publish_run
from serving.sample import SampleRun
from storage import BlockStore
from tests.services.anvil import AnvilService


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_verify_and_trace(env: Chain, store: BlockStore, sample_run: SampleRun) -> None:
    publish_run(env, store, "run-7", sample_run.head)
    env.deposit("run-7", 10**15)
    claim, _ = claim_share(env, store, "run-7", sample_run.weights["address"][3].as_py())

    code, out, _ = _run("verify", "run-7")
    assert code == 0 and out.startswith("OK: run run-7")
    code, out, _ = _run("verify", "run-7", "--json")
    assert code == 0 and json.loads(out)["ok"] is True

    code, out, _ = _run("trace", claim.tx_hash, "--json")
    tree = json.loads(out)
    assert code == 0 and tree["kind"] == "payout" and sample_run.raw_cid in out
    code, out, _ = _run("trace", sample_run.snapshot_cid, "--prov")
    prov = json.loads(out)
    assert code == 0 and f"ipfs:{sample_run.records['ingest']}" in prov["activity"]
    assert f"ipfs:{sample_run.raw_cid}" in prov["entity"]
    code, out, _ = _run("trace", "run-7")
    assert code == 0 and "weighting" in out and "ingest" in out and sample_run.raw_cid in out

    snapshot_block = next(
        p for p in (store.root / "data").rglob("*") if p.is_file() and p.stat().st_size > 1000
    )
    data = bytearray(snapshot_block.read_bytes())
    data[100] ^= 0xFF
    snapshot_block.write_bytes(bytes(data))
    code, out, _ = _run("verify", "run-7")
    assert code == 1 and "FAIL content_corrupt" in out and "1 failure(s)" in out


def test_bad_inputs_exit_1_with_one_error_line(env: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = _run("trace", "no-such-run")
    assert code == 1 and err.startswith("error: run 'no-such-run'") and err.count("\n") == 1
    monkeypatch.setenv("CARAVAN_CHAIN_ID", "5")
    code, _, err = _run("verify", "x")
    assert code == 1 and "expected 5" in err
    monkeypatch.setenv("CARAVAN_RPC_URL", f"http://127.0.0.1:{free_port()}")
    code, _, err = _run("chain", "status")
    assert code == 1 and "did not answer" in err


def test_chain_deploy_status_grant(
    anvil: AnvilService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARAVAN_RPC_URL", anvil.rpc_url)
    monkeypatch.setenv("CARAVAN_CHAIN_DIR", str(tmp_path))
    monkeypatch.delenv("CARAVAN_PRIVATE_KEY", raising=False)
    code, _, err = _run("chain", "deploy")
    assert code == 1 and "no signing key" in err
    monkeypatch.setenv("CARAVAN_PRIVATE_KEY", anvil.dev_keys[0])
    code, out, _ = _run("chain", "deploy")
    assert code == 0 and "deployed, gas" in out
    assert anvil.dev_keys[0][2:] not in out
    code, out, _ = _run("chain", "deploy")
    assert code == 0 and out.count("already deployed") == 3  # registry, distributor, source claims
    code, out, _ = _run("chain", "status", "--json")
    assert code == 0 and all(c["live"] for c in json.loads(out)["contracts"].values())
    code, _, err = _run("chain", "grant", "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")
    assert code == 1 and "not EIP-55 checksummed" in err
    code, out, _ = _run("chain", "grant", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
    assert code == 0 and out.count("0x") == 4
