"""Settlement epochs: receipts -> content-addressed batch -> provenance record -> funded Merkle root.

`settle_run` walks one epoch through its states, saving each step's result in the ledger before
the next step starts; every step is idempotent, so a settle killed anywhere and run again
finishes the same epoch and pays each receipt exactly once:

    open      receipts assigned to the epoch (one ledger transaction)
    stored    receipts batch and payouts table stored (content-addressed), record stored
    recorded  the settlement record anchored on chain under the epoch id (skipped if already there)
    published one root of (address, amount) leaves, kind "amounts" (skipped if already there)
    closed    funded up to the epoch's revenue: deposit = total - already deposited, journaled

The batch is deterministic Parquet sorted by receipt id; an auditor recomputes every amount
and the root from it alone (`verify_epoch`). No epoch holds a receipt whose split is still pending
(deferred attribution): settling first attributes the run's pending receipts itself (`drain`, the
server worker's code) or, with ``drain=False``, refuses while any are pending.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from provenance import (
    SETTLEMENT,
    Chain,
    Record,
    RunRecords,
    SettlementRecord,
    amounts_tree,
    code_version,
    publish_settlement,
    put_record,
)
from serving.deferred import drain as drain_pending
from serving.errors import SettlementError
from serving.fees import totals_by_address
from serving.ledger import Epoch, Ledger, Receipt
from serving.run import load_run
from storage import ContentStore, snapshot_parquet

AGENT = "caravan-serving"
log = logging.getLogger(__name__)  # pending receipts paid by the run's weights (Drained.fallbacks)
STATES = ("open", "stored", "recorded", "published", "closed")

BATCH_SCHEMA = pa.schema(
    [
        ("receipt_id", pa.string()),
        ("epoch_id", pa.string()),
        ("created_at", pa.string()),
        ("run_id", pa.string()),
        ("model_cid", pa.string()),
        ("input_hash", pa.string()),
        ("label", pa.string()),
        ("probability", pa.float64()),
        ("price", pa.int64()),
        ("split", pa.string()),
        ("addresses", pa.list_(pa.string())),
        ("bps", pa.list_(pa.int64())),
        ("amounts", pa.list_(pa.int64())),
    ]
)
PAYOUTS_SCHEMA = pa.schema([("address", pa.string()), ("amount", pa.int64())])


@dataclass(frozen=True)
class Settlement:
    """What `settle_run` settled: the epoch, its receipt count and total, the CIDs of its receipts batch
    and settlement record, the payouts' Merkle root and the per-address payouts it was funded for."""

    epoch_id: str
    run_id: str
    n_receipts: int
    total: int
    batch_cid: str
    record_cid: str
    root: str
    payouts: tuple[tuple[str, int], ...]


def batch_table(epoch_id: str, receipts: Sequence[Receipt]) -> pa.Table:
    """The receipts of an epoch as an Arrow table; amounts align with each receipt's bps rows."""
    cols: dict[str, list] = {name: [] for name in BATCH_SCHEMA.names}
    for r in receipts:
        paid = dict(r.amounts)
        cols["receipt_id"].append(r.receipt_id)
        cols["epoch_id"].append(epoch_id)
        cols["created_at"].append(r.created_at)
        cols["run_id"].append(r.run_id)
        cols["model_cid"].append(r.model_cid)
        cols["input_hash"].append(r.input_hash)
        cols["label"].append(r.label)
        cols["probability"].append(r.probability)
        cols["price"].append(r.price)
        cols["split"].append(r.split)
        cols["addresses"].append([a for a, _ in r.bps])
        cols["bps"].append([b for _, b in r.bps])
        cols["amounts"].append([paid.get(a, 0) for a, _ in r.bps])
    return pa.table(cols, schema=BATCH_SCHEMA)


def payouts_table(payouts: Sequence[tuple[str, int]]) -> pa.Table:
    """An epoch's per-address totals (smallest token unit) as Arrow: the settlement record's payouts."""
    return pa.table(
        {"address": [a for a, _ in payouts], "amount": [v for _, v in payouts]}, schema=PAYOUTS_SCHEMA
    )


def _seconds(stamp: str) -> str:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").strftime("%Y-%m-%dT%H:%M:%SZ")


def settle_run(
    chain: Chain,
    store: ContentStore,
    ledger: Ledger,
    run_id: str,
    *,
    after_step: Callable[[str], None] | None = None,
    drain: bool = True,
    reader: ContentStore | None = None,
) -> Settlement | None:
    """Settle the run's unfinished epoch, or close and settle a new one; None if nothing to settle.

    The epoch is anchored under the run's weighting record as recorded on chain (its head), where
    an auditor's trace of the run finds it. ``after_step(state)`` runs after each state is saved
    (tests crash there to prove resumption). Pending receipts are attributed first (``drain``, the
    run loaded from ``reader``: a store that opens a private model; default ``store``, which receives
    the public settlement), or refused (SettlementError).
    """
    head_cid = RunRecords(chain, store).head(run_id)
    attribute_pending(chain, reader or store, ledger, run_id, drain=drain)
    return _settle(chain, store, ledger, run_id, head_cid, after_step)


def attribute_pending(chain: Chain, store: ContentStore, ledger: Ledger, run_id: str, *, drain: bool) -> int:
    """Attribute the run's pending receipts (loading the run as `caravan serve` does); how many were
    filled here. With ``drain=False``, SettlementError while any are pending."""
    pending = ledger.pending_count(run_id)
    if not pending:
        return 0
    if not drain:
        raise SettlementError(
            f"run {run_id}: {pending} receipt(s) still await their attribution (split 'pending') and no "
            f"epoch may hold them; attribute them first (`caravan attribute {run_id}`, or keep "
            "`caravan serve --attribution deferred` running until they are done), or settle with --drain"
        )
    done = drain_pending(load_run(chain, store, run_id), ledger)
    for line in done.fallbacks:
        log.warning("run %s: %s", run_id, line)
    return done.receipts


def _settle(
    chain: Chain,
    store: ContentStore,
    ledger: Ledger,
    run_id: str,
    head_cid: str,
    after_step: Callable[[str], None] | None = None,
) -> Settlement | None:
    epoch = ledger.close_epoch(run_id, head_cid)
    if epoch is None:
        return None
    step = after_step or (lambda _state: None)
    receipts = ledger.epoch_receipts(epoch.epoch_id)
    payouts = totals_by_address(r.amounts for r in receipts)
    if sum(v for _, v in payouts) != epoch.total or len(receipts) != epoch.n_receipts:
        raise SettlementError(
            f"epoch {epoch.epoch_id}: its receipts sum to {sum(v for _, v in payouts)} over {len(receipts)} "
            f"receipts but the ledger closed it at {epoch.total} over {epoch.n_receipts}: ledger edited"
        )
    if epoch.state == "open":
        epoch = store_epoch(store, ledger, epoch, receipts, payouts)
        step(epoch.state)
    if epoch.state == "stored":
        chain.record(epoch.record_cid, epoch.head_cid, epoch.epoch_id)
        epoch = ledger.update_epoch(epoch.epoch_id, state="recorded")
        step(epoch.state)
    if epoch.state == "recorded":
        root, _ = publish_settlement(chain, epoch.epoch_id, payouts)
        if root != epoch.root:
            raise SettlementError(
                f"epoch {epoch.epoch_id}: published root {root} is not the stored {epoch.root}"
            )
        epoch = ledger.update_epoch(epoch.epoch_id, state="published")
        step(epoch.state)
    if epoch.state == "published":
        dist = chain.distribution(epoch.epoch_id)
        if dist is None or dist.root != epoch.root:
            raise SettlementError(f"epoch {epoch.epoch_id}: its root is not on chain; run settle again")
        owed = epoch.total - dist.deposited
        if owed > 0:
            chain.deposit(epoch.epoch_id, owed, action=f"settle-fund:{epoch.epoch_id}")
        epoch = ledger.update_epoch(epoch.epoch_id, state="closed")
        step(epoch.state)
    return Settlement(
        epoch.epoch_id,
        run_id,
        epoch.n_receipts,
        epoch.total,
        epoch.batch_cid,
        epoch.record_cid,
        epoch.root,
        tuple(payouts),
    )


def store_epoch(
    store: ContentStore,
    ledger: Ledger,
    epoch: Epoch,
    receipts: Sequence[Receipt],
    payouts: list[tuple[str, int]],
) -> Epoch:
    """The "stored" step: the epoch's receipts batch, payouts table and settlement record stored, the
    epoch saved as stored. Public as the one writer of a settlement record: a test that anchors an
    epoch by hand (as a hostile settler could) writes it exactly as settling does."""
    batch_cid = store.put_bytes(
        snapshot_parquet(batch_table(epoch.epoch_id, receipts), sort_by="receipt_id"), cid_version=1, pin=True
    )
    payouts_cid = store.put_bytes(
        snapshot_parquet(payouts_table(payouts), sort_by="address"), cid_version=1, pin=True
    )
    root = amounts_tree(payouts).root
    moment = _seconds(epoch.closed_at)
    record = Record(
        activity=SETTLEMENT,
        agent=AGENT,
        started_at=moment,
        ended_at=moment,
        code=code_version(),
        inputs={SettlementRecord.RECEIPTS: batch_cid},
        outputs={SettlementRecord.PAYOUTS: payouts_cid},
        parents=(epoch.head_cid,),
        params={
            "epoch_id": epoch.epoch_id,
            "run_id": epoch.run_id,
            "n_receipts": epoch.n_receipts,
            "total": str(epoch.total),
            "root": root,
            "unit": "wei",
        },
    )
    record_cid = put_record(store, record)
    return ledger.update_epoch(
        epoch.epoch_id, state="stored", batch_cid=batch_cid, record_cid=record_cid, root=root
    )


def settle_all(
    chain: Chain,
    store: ContentStore,
    ledger: Ledger,
    *,
    drain: bool = True,
    reader: ContentStore | None = None,
) -> list[Settlement]:
    """Settle every run with open receipts, each under its head record on chain (looked up once).

    A run gets at most two epochs per call: an unfinished one from a killed settle, then one
    holding the receipts that arrived since (receipts written meanwhile wait for the next call).
    Pending receipts are attributed first, or refused, as in `settle_run`.
    """
    done = []
    for run_id in ledger.open_runs():
        head_cid = RunRecords(chain, store).head(run_id)
        attribute_pending(chain, reader or store, ledger, run_id, drain=drain)
        for _ in range(2):
            result = _settle(chain, store, ledger, run_id, head_cid)
            if result is None:
                break
            done.append(result)
    return done
