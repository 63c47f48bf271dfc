"""A contributor's claim on a settled epoch: its leaf and proof come from the stored payouts."""

from __future__ import annotations

from provenance import Chain, StandardMerkleTree, TxResult, load_record
from provenance.merkle import SHARE_LEAF
from serving.errors import SettlementError
from serving.settle import PAYOUTS_OUTPUT, SETTLEMENT
from storage import ContentStore, read_parquet


def epoch_leaf(chain: Chain, store: ContentStore, epoch_id: str, address: str) -> tuple[str, int, list[str]]:
    """(checksummed address, amount, proof) of ``address`` in the epoch, from its settlement record."""
    records = [e.record_cid for e in chain.recorded_events(epoch_id)]
    settlements = [c for c in records if load_record(store, c).activity == SETTLEMENT]
    if len(settlements) != 1:
        raise SettlementError(
            f"epoch {epoch_id!r} has {len(settlements)} settlement records on chain (expected 1)"
        )
    record = load_record(store, settlements[0])
    payouts = read_parquet(store.get(record.outputs[PAYOUTS_OUTPUT])).to_pylist()
    leaves = [(r["address"], r["amount"]) for r in payouts]
    tree = StandardMerkleTree.of(leaves, SHARE_LEAF)
    for i, (a, amount) in enumerate(tree.values):
        if a.lower() == address.lower():
            return a, amount, list(tree.proof(i))
    raise SettlementError(f"{address} is owed nothing in epoch {epoch_id!r}")


def epoch_claim(chain: Chain, store: ContentStore, epoch_id: str, address: str) -> tuple[TxResult, int]:
    """Claim everything ``address`` is owed in the epoch (anyone may submit; funds go to ``address``)."""
    leaf, amount, proof = epoch_leaf(chain, store, epoch_id, address)
    return chain.claim(epoch_id, leaf, amount, proof)
