"""The contracts on a real anvil: one entry per record, roles, pull payments that cannot be
double-claimed, forged, overdrawn or re-entered, dust kept claimable, ERC-20 and fixed amounts."""

from __future__ import annotations

import pytest
from eth_account import Account

from provenance.chain import KIND_AMOUNTS, Chain, artifact, run_key
from provenance.errors import AlreadyPublished, TransactionError, UnauthorizedPublisher
from provenance.merkle import StandardMerkleTree
from provenance.runs import publish_settlement
from tests.services.anvil import AnvilService

CID_A = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
CID_B = "QmbyEpV2hAp8uxuAJPpBTAEwWEurfPTMtMdUxbKtfNQVPu"


def _payees(n: int, seed: int = 3) -> list[str]:
    return [Account.from_key(bytes([seed, i + 1]) * 16).address for i in range(n)]


def _deploy(chain: Chain, name: str, *args: object) -> object:
    factory = chain.w3.eth.contract(abi=artifact(name)["abi"], bytecode=artifact(name)["bytecode"])
    _, receipt = chain.send(f"deploy:{name}:{id(args)}", factory.constructor(*args))
    return chain.w3.eth.contract(address=receipt["contractAddress"], abi=artifact(name)["abi"])


def test_registry_records_once_needs_known_parent_and_role(
    chain: Chain, anvil: AnvilService, tmp_path
) -> None:
    reg = chain.registry.functions
    chain.record(CID_A, "", "r1")
    with pytest.raises(AlreadyPublished, match="AlreadyRecorded"):
        chain.send("again", reg.record(CID_A, "", run_key("r1")))
    with pytest.raises(TransactionError, match=f"UnknownParent\\({CID_B}\\)"):
        chain.send("orphan", reg.record(CID_A + "x", CID_B, run_key("r1")))
    outsider = Chain(anvil.rpc_url, account=Account.from_key(anvil.dev_keys[5]), chain_dir=chain.chain_dir)
    with pytest.raises(UnauthorizedPublisher, match="AccessControlUnauthorizedAccount"):
        outsider.send("rogue", outsider.registry.functions.record(CID_B, "", run_key("r1")))
    assert [e.record_cid for e in chain.recorded_events()] == [CID_A]


def test_the_distributor_weighs_shares_in_the_pipelines_basis_points(chain: Chain) -> None:
    """The contract's own BPS is the weights table's TOTAL_BPS: one number, on both sides."""
    from schemas import TOTAL_BPS

    assert chain.distributor.functions.BPS().call() == TOTAL_BPS


def test_claims_pay_shares_once_and_keep_dust(chain: Chain, anvil: AnvilService) -> None:
    payees = _payees(3)
    values = [(payees[0], 3333), (payees[1], 3333), (payees[2], 3334)]
    tree = StandardMerkleTree.of(values)
    chain.create_distribution("shares", tree.root)
    chain.deposit("shares", 10_001)
    paid = {}
    for i, (who, bps) in enumerate(tree.values):
        _, paid[who] = chain.claim("shares", who, bps, tree.proof(i))
        assert paid[who] == 10_001 * bps // 10_000
        assert chain.w3.eth.get_balance(who) == paid[who]
    with pytest.raises(TransactionError, match="NothingToClaim"):
        chain.claim("shares", tree.values[0][0], tree.values[0][1], tree.proof(0))
    forged = (tree.values[0][0], tree.values[0][1] + 1)
    with pytest.raises(TransactionError, match="InvalidProof"):
        chain.claim("shares", *forged, tree.proof(0))
    with pytest.raises(TransactionError, match="InvalidProof"):
        chain.claim("shares", tree.values[1][0], tree.values[1][1], tree.proof(0))
    dist = chain.distribution("shares")
    assert dist.claimed == sum(paid.values()) <= dist.deposited  # never beyond the deposit
    dust = dist.deposited - dist.claimed
    assert 0 < dust < len(values)
    # The next deposit carries the dust: cumulative entitlements are floor(total * bps / 10000).
    chain.deposit("shares", 9_999)
    for i, (who, bps) in enumerate(tree.values):
        _, more = chain.claim("shares", who, bps, tree.proof(i))
        assert paid[who] + more == 20_000 * bps // 10_000
    assert chain.distribution("shares").claimed == sum(20_000 * b // 10_000 for _, b in values)
    assert chain.w3.eth.get_balance(chain.distributor.address) == chain.distribution("shares").deposited - (
        chain.distribution("shares").claimed
    )


def test_a_root_never_changes(chain: Chain) -> None:
    tree = StandardMerkleTree.of([(a, 5000) for a in _payees(2)])
    chain.create_distribution("fixed", tree.root)
    assert chain.create_distribution("fixed", tree.root).skipped
    other = StandardMerkleTree.of([(a, 5000) for a in _payees(2, seed=9)])
    with pytest.raises(AlreadyPublished, match="roots never change"):
        chain.create_distribution("fixed", other.root)


def test_reentrant_claimer_is_paid_once(chain: Chain) -> None:
    claimer = _deploy(chain, "ReentrantClaimer", chain.distributor.address)
    values = [(claimer.address, 6000), (_payees(1)[0], 4000)]
    tree = StandardMerkleTree.of(values)
    index = [v[0] for v in tree.values].index(claimer.address)
    proof = tree.proof(index)
    chain.create_distribution("reenter", tree.root)
    chain.deposit("reenter", 1_000_000)
    chain.send("arm", claimer.functions.arm(run_key("reenter"), 6000, [bytes.fromhex(p[2:]) for p in proof]))
    _, amount = chain.claim("reenter", claimer.address, 6000, proof)
    assert amount == 600_000
    assert claimer.functions.attempts().call() == 1
    assert claimer.functions.succeeded().call() == 0  # the nested claim was refused
    assert chain.w3.eth.get_balance(claimer.address) == 600_000


def test_erc20_deposits_and_claims(chain: Chain) -> None:
    token = _deploy(chain, "TestToken")
    chain.send("mint", token.functions.mint(chain.address, 10**21))
    payees = _payees(4, seed=7)
    tree = StandardMerkleTree.of([(a, 2500) for a in payees])
    chain.create_distribution("tok", tree.root, token=token.address)
    with pytest.raises(TransactionError, match="WrongAsset"):
        chain.deposit("tok", 10)
    chain.deposit_token("tok", 4 * 10**18)
    _, amount = chain.claim("tok", tree.values[2][0], 2500, tree.proof(2))
    assert amount == 10**18 == token.functions.balanceOf(tree.values[2][0]).call()


def test_settlement_of_fixed_amounts(chain: Chain) -> None:
    payees = _payees(3, seed=11)
    amounts = [(payees[0], 700), (payees[1], 200), (payees[2], 100)]
    root, _ = publish_settlement(chain, "epoch-1", amounts)
    dist = chain.distribution("epoch-1")
    assert (dist.kind, dist.total_weight, dist.root) == (KIND_AMOUNTS, 1000, root)
    chain.deposit("epoch-1", 1000)
    with pytest.raises(TransactionError, match="OverFunded"):
        chain.deposit("epoch-1", 1)
    tree = StandardMerkleTree.of(amounts)
    for i, (who, amount) in enumerate(tree.values):
        assert chain.claim("epoch-1", who, amount, tree.proof(i))[1] == amount
