"""The chain client on a real anvil: every bad input is named and records nothing; publishing is
idempotent and resumes after a crash without a second transaction; keys stay secret."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from eth_account import Account

from provenance.anvil import AnvilNode, free_port
from provenance.chain import Chain, load_account, run_key, write_keystore
from provenance.errors import (
    AlreadyPublished,
    ChainError,
    InsufficientFunds,
    MissingParent,
    NotDeployed,
    RpcUnreachable,
    UnauthorizedPublisher,
    WeightsError,
    WrongChain,
)
from provenance.records import Record, load_record, put_record
from provenance.runs import publish_run
from provenance.weights import share_leaves
from serving.sample import CODE, SampleRun
from storage import BlockStore, snapshot_parquet
from tests.services.anvil import AnvilService


def _nothing_recorded(chain: Chain, run_id: str = "run-1") -> None:
    assert chain.recorded_events() == []
    assert chain.distribution(run_id) is None


def _weighting(store: BlockStore, parents: tuple[str, ...], weights_cid: str) -> str:
    record = Record(
        activity="weighting",
        agent="test",
        started_at="2026-01-01T00:00:00Z",
        ended_at="2026-01-01T00:00:01Z",
        code=CODE,
        outputs={"contributor_weights": weights_cid},
        parents=parents,
    )
    return put_record(store, record)


def test_publish_is_idempotent_and_verifiable(chain: Chain, store: BlockStore, sample_run: SampleRun) -> None:
    first = publish_run(chain, store, "run-1", sample_run.head)
    assert first.sent == len(sample_run.records) + 1 and first.gas_used > 0
    again = publish_run(chain, store, "run-1", sample_run.head)
    assert again.sent == 0 and again.root == first.root
    assert sorted(e.record_cid for e in chain.recorded_events("run-1")) == sorted(sample_run.records.values())


def test_batch_calls_answer_as_web3s_own_calls_do(
    chain: Chain, store: BlockStore, sample_run: SampleRun
) -> None:
    """`batch_call` encodes and decodes with eth_abi itself: held to web3's one call at a time, for bool,
    uint and bytes32[] arguments, across batches, a wrong leaf among them."""
    publish_run(chain, store, "run-1", sample_run.head)
    tree = share_leaves(sample_run.weights).tree
    verify, key = chain.distributor.functions.verifyLeaf, run_key("run-1")
    calls = [verify(key, address, bps + (i == 1), [bytes.fromhex(p[2:]) for p in tree.proof(i)])
             for i, (address, bps) in enumerate(tree.values[:3])]
    calls += [chain.distributor.functions.claimedOf(key, tree.values[0][0], tree.values[0][1]),
              chain.registry.functions.isRecorded(sample_run.records["weighting"]),
              chain.registry.functions.isRecorded("bafynotrecorded"),
              chain.claims.functions.claimedAt(tree.values[0][0], b"\x01" * 32)]
    expected = [c.call() for c in calls]
    assert expected[:3] == [True, False, True] and expected[4:6] == [True, False]
    assert chain.batch_call(calls) == chain.batch_call(calls, size=2) == expected
    nowhere = chain.w3.eth.contract(address=Account.create().address, abi=chain.claims.abi)
    with pytest.raises(ChainError, match="claimedAt at 0x.* returned nothing: no contract is deployed there"):
        chain.batch_call([*calls, nowhere.functions.claimedAt(tree.values[0][0], b"\x01" * 32)])


def test_a_second_weighting_record_for_a_published_run_is_refused(
    chain: Chain, store: BlockStore, sample_run: SampleRun
) -> None:
    publish_run(chain, store, "run-1", sample_run.head)
    weights_cid = load_record(store, sample_run.head).outputs["contributor_weights"]
    rival = _weighting(store, load_record(store, sample_run.head).parents, weights_cid)
    before = chain.recorded_events("run-1")
    with pytest.raises(AlreadyPublished, match="already has weighting record"):
        publish_run(chain, store, "run-1", rival)
    assert chain.recorded_events("run-1") == before


def test_resume_after_partial_publication(chain: Chain, store: BlockStore, sample_run: SampleRun) -> None:
    chain.record(sample_run.records["ingest"], "", "run-1")  # a process died after its first record
    result = publish_run(chain, store, "run-1", sample_run.head)
    assert result.sent == len(sample_run.records)  # the other records + the root
    assert len(chain.recorded_events()) == len(sample_run.records)


def test_crash_after_send_waits_for_the_journaled_transaction(
    chain: Chain, store: BlockStore, sample_run: SampleRun, anvil: AnvilService
) -> None:
    """Mining paused, the process 'dies' right after sending; a new process must not resend."""
    w3 = chain.w3
    start_nonce = w3.eth.get_transaction_count(chain.address)
    w3.provider.make_request("evm_setAutomine", [False])
    try:

        def crash(action: str, tx_hash: str) -> None:
            raise KeyboardInterrupt(tx_hash)

        chain._wait = crash  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            publish_run(chain, store, "run-1", sample_run.head)
        journal = json.loads(chain.journal_path.read_text())
        assert list(journal) == [f"record:{sample_run.records['ingest']}"]
        w3.provider.make_request("evm_setIntervalMining", [1])
        restarted = Chain(anvil.rpc_url, account=chain.account, chain_dir=chain.chain_dir)
        result = publish_run(restarted, store, "run-1", sample_run.head)
    finally:
        w3.provider.make_request("evm_setIntervalMining", [0])
        w3.provider.make_request("evm_setAutomine", [True])
    assert result.sent == len(sample_run.records) + 1
    assert w3.eth.get_transaction_count(chain.address) == start_nonce + len(sample_run.records) + 1
    assert len(chain.recorded_events()) == len(sample_run.records)
    assert json.loads(chain.journal_path.read_text()) == {}


def test_wrong_chain_id_and_unreachable_rpc(anvil: AnvilService) -> None:
    with pytest.raises(WrongChain, match="serves chain id 31337, expected 1"):
        Chain(anvil.rpc_url, expected_chain_id=1)
    with pytest.raises(RpcUnreachable, match="did not answer eth_chainId after 2 attempts"):
        Chain(f"http://127.0.0.1:{free_port()}/secret-api-key", attempts=2)
    try:
        Chain(f"http://127.0.0.1:{free_port()}/secret-api-key", attempts=1)
    except RpcUnreachable as exc:
        assert "secret-api-key" not in str(exc)


def test_missing_deployment_is_named(anvil: AnvilService, tmp_path: Path) -> None:
    with pytest.raises(NotDeployed, match="caravan chain deploy"):
        _ = Chain(anvil.rpc_url, chain_dir=tmp_path).registry


def test_unauthorized_publisher_records_nothing(
    chain: Chain, store: BlockStore, sample_run: SampleRun, anvil: AnvilService
) -> None:
    outsider = Chain(anvil.rpc_url, account=Account.from_key(anvil.dev_keys[3]), chain_dir=chain.chain_dir)
    with pytest.raises(UnauthorizedPublisher, match=f"{outsider.address} lacks PUBLISHER_ROLE"):
        publish_run(outsider, store, "run-1", sample_run.head)
    _nothing_recorded(chain)
    chain.grant_publisher(outsider.address)
    assert publish_run(outsider, store, "run-1", sample_run.head).sent == len(sample_run.records) + 1


def test_insufficient_funds_records_nothing(chain: Chain, store: BlockStore, sample_run: SampleRun) -> None:
    poor = Account.create()
    chain.grant_publisher(poor.address)
    broke = Chain(chain.rpc_url, account=poor, chain_dir=chain.chain_dir)
    with pytest.raises(InsufficientFunds, match=f"{poor.address} holds 0 wei"):
        publish_run(broke, store, "run-1", sample_run.head)
    with pytest.raises(InsufficientFunds):
        broke.record(sample_run.records["ingest"], "", "run-1")
    _nothing_recorded(chain)


def test_missing_parent_records_nothing(chain: Chain, store: BlockStore, sample_run: SampleRun) -> None:
    absent = Record(
        activity="training",
        agent="x",
        started_at="2026-01-01T00:00:00Z",
        ended_at="2026-01-01T00:00:00Z",
        code=CODE,
    ).cid()
    head = _weighting(store, (sample_run.records["training"], absent), sample_run.weights_cid)
    with pytest.raises(MissingParent, match=f"names parent {absent}, which is not in the content store"):
        publish_run(chain, store, "run-1", head)
    _nothing_recorded(chain)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.set_column(4, "weight_bps", pa.array([1] * t.num_rows)), "expected exactly 10000"),
        (
            lambda t: t.set_column(1, "address", pa.array([a.lower() for a in t["address"].to_pylist()])),
            "EIP-55",
        ),
        (lambda t: t.set_column(1, "address", pa.array(["0x" + "0" * 40] * t.num_rows)), "zero address"),
    ],
)
def test_bad_weights_record_nothing(
    chain: Chain, store: BlockStore, sample_run: SampleRun, change: object, message: str
) -> None:
    bad = change(sample_run.weights)  # type: ignore[operator]
    bad_cid = store.put_bytes(snapshot_parquet(bad, sort_by="contributor"))  # bypasses store_weights' check
    head = _weighting(store, (sample_run.records["training"],), bad_cid)
    with pytest.raises(WeightsError, match=message):
        publish_run(chain, store, "run-1", head)
    _nothing_recorded(chain)


def test_keys_from_keystore_and_never_shown(chain: Chain, tmp_path: Path, anvil: AnvilService) -> None:
    account = Account.create()
    path = write_keystore(account, "pw", tmp_path / "key.json")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    loaded = load_account({"CARAVAN_KEYSTORE": str(path), "CARAVAN_KEYSTORE_PASSWORD": "pw"})
    assert loaded.address == account.address
    with pytest.raises(ChainError, match="wrong CARAVAN_KEYSTORE_PASSWORD"):
        load_account({"CARAVAN_KEYSTORE": str(path), "CARAVAN_KEYSTORE_PASSWORD": "nope"})
    with pytest.raises(ChainError, match="not a valid 32-byte hex private key") as info:
        load_account({"CARAVAN_PRIVATE_KEY": "0x1234"})
    assert "1234" not in str(info.value)
    env = {"CARAVAN_RPC_URL": anvil.rpc_url, "CARAVAN_PRIVATE_KEY": anvil.dev_keys[0]}
    from_env = Chain.from_env(env, need_key=True)
    secret = anvil.dev_keys[0].removeprefix("0x")
    assert secret not in repr(from_env) and secret not in str(vars(from_env))
    with pytest.raises(ChainError, match="no signing key"):
        Chain.from_env({"CARAVAN_RPC_URL": anvil.rpc_url, "CARAVAN_CHAIN_DIR": str(tmp_path)}, need_key=True)


def test_records_survive_an_anvil_restart(tmp_path: Path) -> None:
    node = AnvilNode(state_path=tmp_path / "state.json", config_path=tmp_path / "anvil.json")
    with node:
        chain = Chain(node.rpc_url, account=Account.from_key(node.dev_keys[0]), chain_dir=tmp_path)
        chain.deploy()
        tx = chain.record("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "", "r")
    node.port = 0
    with node:
        again = Chain(node.rpc_url, account=Account.from_key(node.dev_keys[0]), chain_dir=tmp_path)
        assert all(r.skipped for r in again.deploy().values())
        assert [e.tx_hash for e in again.recorded_events("r")] == [tx.tx_hash]


def test_a_taken_nonce_is_retried_with_the_next(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    real = chain.w3.eth.get_transaction_count
    chain.record("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "", "n")
    stale = iter([real(chain.address, "pending") - 1])  # as if another sender took our nonce

    calls: list[int] = []

    def count(address: str, block: str = "latest") -> int:
        calls.append(next(stale, None) or real(address, block))
        return calls[-1]

    monkeypatch.setattr(chain.w3.eth, "get_transaction_count", count)
    result = chain.record("QmbyEpV2hAp8uxuAJPpBTAEwWEurfPTMtMdUxbKtfNQVPu", "", "n")
    assert not result.skipped and len(chain.recorded_events("n")) == 2
    assert calls == [calls[1] - 1, calls[1]]  # refused as "nonce too low", then sent at the next nonce


def test_local_anvil_default_key_comes_from_its_config(anvil: AnvilService, tmp_path: Path) -> None:
    (tmp_path / "anvil.json").write_bytes(anvil.node.config_path.read_bytes())
    chain = Chain.from_env(
        {"CARAVAN_RPC_URL": anvil.rpc_url, "CARAVAN_CHAIN_DIR": str(tmp_path)}, need_key=True
    )
    assert chain.address == Account.from_key(anvil.dev_keys[0]).address
    assert chain.deployments_path == tmp_path / "deployments-31337.json"
