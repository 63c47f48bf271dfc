"""A contributor's claim on a settled epoch: its leaf and proof come from the stored payouts."""

from __future__ import annotations

from provenance import Chain, ProvenanceError, RunRecords, SettlementRecord, TxResult, amounts_tree
from serving.errors import SettlementError
from storage import ContentStore, read_parquet


def epoch_leaf(chain: Chain, store: ContentStore, epoch_id: str, address: str) -> tuple[str, int, list[str]]:
    """(checksummed address, amount, proof) of ``address`` in the epoch, from its settlement record."""
    records = RunRecords(chain, store)
    try:
        record = records.load(records.settlement(epoch_id))
    except ProvenanceError as exc:
        raise SettlementError(str(exc)) from None
    payouts = read_parquet(store.get(record.outputs[SettlementRecord.PAYOUTS])).to_pylist()
    tree = amounts_tree([(r["address"], r["amount"]) for r in payouts])
    for i, (a, amount) in enumerate(tree.values):
        if a.lower() == address.lower():
            return a, amount, list(tree.proof(i))
    raise SettlementError(f"{address} is owed nothing in epoch {epoch_id!r}")


def epoch_claim(chain: Chain, store: ContentStore, epoch_id: str, address: str) -> tuple[TxResult, int]:
    """Claim everything ``address`` is owed in the epoch (anyone may submit; funds go to ``address``)."""
    leaf, amount, proof = epoch_leaf(chain, store, epoch_id, address)
    return chain.claim(epoch_id, leaf, amount, proof)
