"""Serving tests: one real anvil and one published run per session; a fresh ledger per test."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account

from provenance import Chain
from serving import Ledger, ServedRun, load_run
from serving.sample import SampleRun, build_sample_run
from storage import BlockStore
from tests.services.anvil import AnvilService


@dataclass(frozen=True)
class World:
    chain: Chain
    store: BlockStore
    run: SampleRun
    served: ServedRun
    env: dict[str, str]  # for subprocesses (caravan serve/settle)


@pytest.fixture(scope="session")
def world(anvil: AnvilService, tmp_path_factory: pytest.TempPathFactory) -> World:
    home = tmp_path_factory.mktemp("serving")
    chain = Chain(anvil.rpc_url, account=Account.from_key(anvil.dev_keys[0]), chain_dir=home / "chain")
    chain.deploy()
    store = BlockStore(home / "blocks", fsync=False)
    run = build_sample_run(store, chain)
    env = {
        **os.environ,
        "CARAVAN_RPC_URL": anvil.rpc_url,
        "CARAVAN_PRIVATE_KEY": anvil.dev_keys[0],
        "CARAVAN_CHAIN_DIR": str(home / "chain"),
        "CARAVAN_STORE_DIR": str(home / "blocks"),
    }
    return World(chain, store, run, load_run(chain, store, run.run_id), env)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """A fresh ledger location: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return tmp_path / "ledger.sqlite"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite", synchronous="NORMAL")
