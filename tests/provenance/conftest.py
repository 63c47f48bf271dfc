"""Provenance tests run against a real anvil (one per session) and a fresh blockstore per test."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account

from provenance.chain import Chain
from serving.sample import SampleRun, build_sample_run
from storage import BlockStore
from tests.services.anvil import AnvilService


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "blocks", fsync=False)


@pytest.fixture
def chain(anvil: AnvilService, tmp_path: Path) -> Chain:
    """Fresh contracts for this test, deployed by dev account 0 (admin and publisher)."""
    chain = Chain(anvil.rpc_url, account=Account.from_key(anvil.dev_keys[0]), chain_dir=tmp_path / "chain")
    chain.deploy()
    return chain


@pytest.fixture
def sample_run(store: BlockStore) -> SampleRun:
    """A stored, unpublished run with the pipeline's whole lineage (six records) and 7 contributors,
    each paid; its model is not trained (these tests audit records, content and weights only)."""
    return build_sample_run(store, n=60, seed=1, train=False)


@pytest.fixture
def env(chain: Chain, store: BlockStore, monkeypatch: pytest.MonkeyPatch) -> Chain:
    """The CLI's environment: this chain and store, no signing key (auditors need none)."""
    monkeypatch.setenv("CARAVAN_RPC_URL", chain.rpc_url)
    monkeypatch.setenv("CARAVAN_CHAIN_DIR", str(chain.chain_dir))
    monkeypatch.setenv("CARAVAN_STORE_DIR", str(store.root))
    monkeypatch.delenv("CARAVAN_PRIVATE_KEY", raising=False)
    monkeypatch.delenv("CARAVAN_CHAIN_ID", raising=False)
    return chain
