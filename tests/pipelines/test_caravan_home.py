"""Everything Caravan writes goes under CARAVAN_HOME: the CLI commands that write state and the service
scripts, run from another (empty) working directory, leave that directory empty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pipelines.demo_data import write_digits
from pipelines.serve_process import ServeProcess, free_port
from pipelines.settings import ENV_NAMES, load_settings
from provenance import Chain
from serving import API_KEY_HEADER
from serving.sample import build_sample_run
from storage import BlockStore

REPO = Path(__file__).resolve().parents[2]
PRICE = 10**12


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path, dict[str, str]]:
    """(home, cwd, inputs, env): CARAVAN_HOME, an empty working directory, the inputs' own folder, and
    an environment naming nothing but CARAVAN_HOME (no other CARAVAN_* path, no DAGSTER_HOME)."""
    home, cwd, inputs = tmp_path / "home", tmp_path / "cwd", tmp_path / "inputs"
    cwd.mkdir()
    inputs.mkdir()
    unset = {*ENV_NAMES.values(), "DAGSTER_HOME", "LABEL_STUDIO_DATA_DIR", "CARAVAN_PRIVATE_KEY"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(CARAVAN_HOME=str(home), PYTHONPATH=str(REPO))
    monkeypatch.chdir(cwd)
    return home, cwd, inputs, env


def _run(env: dict[str, str], *args: str | Path, timeout: float = 120) -> str:
    done = subprocess.run([*map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def _caravan(env: dict[str, str], *args: str | Path) -> str:
    return _run(env, sys.executable, "-m", "pipelines", *args)


def _nothing_written_in(cwd: Path) -> None:
    assert sorted(p.name for p in cwd.iterdir()) == []


def test_cli_commands_and_anvil_script_write_only_under_caravan_home(places):
    home, cwd, inputs, env = places
    port = free_port()
    env.update(CARAVAN_ANVIL_PORT=str(port), CARAVAN_RPC_URL=f"http://127.0.0.1:{port}")
    anvil = REPO / "scripts" / "anvil.sh"
    _run(env, anvil, "start")
    try:
        assert "already deployed" not in _caravan(env, "chain", "deploy")  # signs with anvil's dev key
        assert "already deployed" in _caravan(env, "chain", "deploy")  # read back from the same chain dir
        (inputs / "hello.txt").write_text("hello\n")
        cid = _caravan(env, "store", "add", inputs / "hello.txt").strip()
        assert _caravan(env, "store", "ls").split() == [cid]

        settings = load_settings(env)
        run = build_sample_run(
            BlockStore(settings.store_dir), Chain.from_env(settings.environ(env), need_key=True), n=60
        )
        secret = _caravan(env, "keys", "create", "user", "--balance", str(10 * PRICE)).strip()
        with ServeProcess(run.run_id, env, price=PRICE) as server:  # store, chain and ledger from settings
            paid = httpx.post(
                server.url + "/v1/predict",
                json={"input": run.X_test[0].tolist()},
                headers={API_KEY_HEADER: secret},
                timeout=60,
            )
            assert paid.status_code == 200, paid.text
        [epoch] = json.loads(_caravan(env, "settle", "--json"))
        assert epoch["n_receipts"] == 1
        assert "OK" in _caravan(env, "verify", epoch["epoch_id"])

        write_digits(inputs / "digits", limit=20)
        choices = ",".join(str(d) for d in range(10))
        _caravan(env, "ingest", inputs / "digits", "--version", "v1", "--kind", "image", "--field", "image",
                 "--choices", choices)  # fmt: skip
    finally:
        _run(env, anvil, "stop")

    _nothing_written_in(cwd)
    chain = home / "chain"
    assert {"state.json", "anvil.json", "anvil.log", "deployments-31337.json"} <= {
        p.name for p in chain.iterdir()
    }
    assert not (chain / "anvil.pid").exists()
    assert (home / "blocks").is_dir() and (home / "ledger.sqlite").is_file()
    assert (home / "datasets" / "v1.json").is_file() and (home / "dagster").is_dir()


def test_labelstudio_script_keeps_data_pid_and_log_under_caravan_home(places):
    home, cwd, _, env = places
    port = free_port()
    env.update(LABEL_STUDIO_PORT=str(port))
    script = REPO / "scripts" / "labelstudio.sh"
    try:
        _run(env, script, "start", timeout=300)
        assert (home / "labelstudio" / "labelstudio.pid").is_file()
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        _run(env, script, "stop")
    _nothing_written_in(cwd)
    data = home / "labelstudio"
    assert (data / "labelstudio.log").is_file() and not (data / "labelstudio.pid").exists()
    assert any(data.glob("*.sqlite3"))
