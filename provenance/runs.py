"""A run on chain: publish its records and royalty root once, find its head, claim a share.

A run is named by its head record, the `weighting` record whose output `contributor_weights`
is the weights table. Its lineage is every record reachable through `parents`; publishing
anchors each one not yet on chain (parents first) under the run id, then the Merkle root of
the weights. Everything that can be checked is checked before the first transaction (records
and parents in the store, weights valid, publisher role, enough funds, no conflicting root),
so bad input records nothing; a crash half-way is finished by calling `publish_run` again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from provenance.activities import WEIGHTING, WeightingRecord
from provenance.answer_claims import run_answer_problems, table_reader
from provenance.chain import KIND_AMOUNTS, Chain, TxResult, run_key
from provenance.claims import run_claim_problems, sealed_sources
from provenance.errors import AlreadyPublished, ClaimConflict, InsufficientFunds, RecordError, WeightsError
from provenance.merkle import SHARE_LEAF, StandardMerkleTree
from provenance.records import Record, topological_order
from provenance.run_records import RunRecords
from provenance.weights import ShareLeaves, check_address, read_weights, share_leaves, weights_snapshot
from storage import BlockNotFound, ContentStore, CorruptBlock

# Upper bounds for the funds check before sending (measured: a record ~80-120k, a root ~100k).
RECORD_GAS_BOUND = 200_000
ROOT_GAS_BOUND = 200_000


@dataclass(frozen=True)
class RunPublication:
    """What `publish_run` did. `transactions` lists skipped (already on chain) actions too."""

    run_id: str
    run_key: str
    head_cid: str
    weights_cid: str
    root: str
    transactions: tuple[TxResult, ...]

    @property
    def gas_used(self) -> int:
        """Gas paid by its transactions; an action skipped (already on chain) counts 0."""
        return sum(t.gas_used for t in self.transactions)

    @property
    def sent(self) -> int:
        """How many transactions it sent; 0 when everything was already on chain."""
        return sum(not t.skipped for t in self.transactions)


def store_weights(store: ContentStore, table: pa.Table) -> str:
    """Validate and store the weights table as deterministic Parquet (pinned); returns its CID."""
    return store.put_bytes(weights_snapshot(table), pin=True)


def head_table(store: ContentStore, head_cid: str, head: Record) -> tuple[str, pa.Table]:
    """The weights table a run's head (weighting) record names, and its CID; RecordError for a head of
    another activity, WeightsError for a table that cannot be read."""
    if head.activity != WEIGHTING:
        raise RecordError(
            f"record {head_cid} is a {head.activity!r} record; a run's head is its weighting record"
        )
    weights_cid = head.outputs[WeightingRecord.WEIGHTS]
    try:
        return weights_cid, read_weights(store.get(weights_cid))
    except (BlockNotFound, CorruptBlock) as exc:
        raise WeightsError(f"weights table {weights_cid} of record {head_cid} is unreadable: {exc}") from None


def head_weights(store: ContentStore, head_cid: str, head: Record) -> tuple[str, ShareLeaves]:
    """The weights table's CID a run's head record names, and its Merkle leaves (`head_table`; a
    WeightsError for weights that break their contract)."""
    weights_cid, table = head_table(store, head_cid, head)
    return weights_cid, share_leaves(table)


def _refuse_broken_claims(
    chain: Chain, store: ContentStore, lineage: dict[str, Record], weights: pa.Table
) -> None:
    """Refuse, before anything is sent, a run whose files `verify_run` would fail against their claims
    (a private run's sealed files by their plaintext, where `store` holds the keys that open them)."""
    problems, _ = run_claim_problems(chain, lineage, weights, sealed_sources(store, lineage))
    if problems:
        raise ClaimConflict(
            "the run's source files break their providers' claims on chain (nothing was sent): "
            + "; ".join(f"{cid}: {why}" for cid, why in problems)
            + ". Pay each provider at its claiming address (the contributors registry) and rerun the run"
        )
    answers = run_answer_problems(chain, lineage, weights, table_reader(store))
    if answers is not None and (answers.problems or answers.undated):
        raise ClaimConflict(
            "the run's answers break their labelers' claims on chain (nothing was sent): "
            + "; ".join(f"{who}: {why}" for who, why in answers.problems + answers.undated)
            + ". Ask each labeler named to claim the answers it gave (`caravan claim-answers`), or leave out "
            "those it did not give; date each labeling export as it is made (the pipeline's `annotations` "
            "asset does, with the publisher's key); and rerun the run"
        )


def publish_run(chain: Chain, store: ContentStore, run_id: str, head_cid: str) -> RunPublication:
    """Anchor the lineage of `head_cid` and its royalty root under `run_id`, once (idempotent)."""
    reader = RunRecords(chain, store)
    lineage = reader.lineage(head_cid)
    weights_cid, table = head_table(store, head_cid, lineage[head_cid])
    leaves = share_leaves(table)
    chain.require_publisher()
    _refuse_broken_claims(chain, store, lineage, table)
    key = "0x" + run_key(run_id).hex()

    to_record: list[str] = []
    for cid in topological_order(lineage):
        entry = chain.entry_of(cid)
        if entry is None:
            to_record.append(cid)
        elif cid == head_cid and entry["run_key"] != key:
            raise AlreadyPublished(
                f"head record {head_cid} is already on chain under run key {entry['run_key']}, "
                f"not run {run_id!r}"
            )
    _refuse_second_head(reader, run_id, head_cid)
    existing = chain.distribution(run_id)
    if existing is not None and existing.root != leaves.root:
        raise AlreadyPublished(
            f"run {run_id!r} already has royalty root {existing.root} on chain, but its weights give "
            f"{leaves.root}: publish changed weights under a new run id"
        )
    _check_funds(chain, len(to_record) + (existing is None))

    txs = [TxResult(f"record:{cid}", None, 0, None, True) for cid in lineage if cid not in to_record]
    for cid in to_record:  # parents first: the registry requires a record's primary parent
        txs.append(chain.record(cid, lineage[cid].parents[0] if lineage[cid].parents else "", run_id))
    txs.append(chain.create_distribution(run_id, leaves.root))
    return RunPublication(run_id, key, head_cid, weights_cid, leaves.root, tuple(txs))


def _refuse_second_head(reader: RunRecords, run_id: str, head_cid: str) -> None:
    """A run has one weighting record: anchoring another would give auditors two lineages to pick from."""
    others = [cid for cid in reader.of_activity(run_id, WEIGHTING) if cid != head_cid]
    if others:
        raise AlreadyPublished(
            f"run {run_id!r} already has weighting record {others[0]} on chain, not {head_cid}: "
            "publish a changed lineage (new data, labels or code) under a new run id"
        )


def _check_funds(chain: Chain, n_transactions: int) -> None:
    if n_transactions == 0 or chain.account is None:
        return
    price = chain.gas_price()
    need = n_transactions * max(RECORD_GAS_BOUND, ROOT_GAS_BOUND) * price
    balance = chain.balance(chain.account.address)
    if balance < need:
        raise InsufficientFunds(
            f"account {chain.account.address} holds {balance} wei; publishing "
            f"{n_transactions} transaction(s) "
            f"may cost up to {need} wei at {price} wei/gas: fund it and run again (nothing was sent)"
        )


@dataclass(frozen=True)
class Share:
    """One payee's leaf in a run and its proof."""

    address: str
    weight_bps: int
    proof: tuple[str, ...]


def shares(leaves: ShareLeaves) -> list[Share]:
    """Every payee's `Share`, with the Merkle proof a claim submits, in the tree's leaf order."""
    return [
        Share(address, bps, tuple(leaves.tree.proof(i)))
        for i, (address, bps) in enumerate(leaves.tree.values)
    ]


def share_of(store: ContentStore, chain: Chain, run_id: str, address: str) -> Share:
    """The leaf and proof of `address` in the run's stored weights."""
    reader = RunRecords(chain, store)
    head = reader.head(run_id)
    _, leaves = head_weights(store, head, reader.load(head))
    for share in shares(leaves):
        if share.address == address:
            return share
    raise WeightsError(f"{address} has no share in run {run_id!r}")


def claim_share(chain: Chain, store: ContentStore, run_id: str, address: str) -> tuple[TxResult, int]:
    """Claim everything `address` is owed in `run_id` now (anyone may submit; funds go to `address`)."""
    share = share_of(store, chain, run_id, address)
    return chain.claim(run_id, share.address, share.weight_bps, list(share.proof))


def amounts_tree(amounts: Sequence[tuple[str, int]]) -> StandardMerkleTree:
    """The Merkle tree of a settlement's absolute `(address, amount)` leaves, each leaf checked.

    The one place an epoch's tree is built: settling, claiming and verifying all use it.
    """
    if len({address for address, _ in amounts}) != len(amounts):
        raise WeightsError("settlement leaves repeat an address: sum each payee's amounts into one leaf")
    for i, (address, amount) in enumerate(amounts):
        check_address(f"leaf {i}", address)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise WeightsError(f"leaf {i}: amount {amount!r} must be a positive integer")
    return StandardMerkleTree.of(list(amounts), SHARE_LEAF)


def publish_settlement(
    chain: Chain, settlement_id: str, amounts: Sequence[tuple[str, int]], *, token: str | None = None
) -> tuple[str, TxResult]:
    """A root of absolute `(address, amount)` leaves (e.g. a serving epoch), funded up to their sum.

    Claims use `chain.claim(settlement_id, address, amount, proof)`; fund it with `deposit`.
    """
    tree = amounts_tree(amounts)
    total = sum(a for _, a in amounts)
    return tree.root, chain.create_distribution(
        settlement_id, tree.root, kind=KIND_AMOUNTS, token=token, total_weight=total
    )
