"""`verify_epoch`: an auditor's check of one settlement epoch from the receipts batch and the chain.

From the batch alone it recomputes each receipt's amounts (largest remainder of its price over
its basis points), the per-address totals, the total revenue and the Merkle root, then checks
them against the stored payouts, the settlement record and the chain (record anchored under the
epoch id, root, kind, cap, funding). Nothing here trusts the ledger of the server.
"""

from __future__ import annotations

from dataclasses import dataclass

from provenance import (
    KIND_AMOUNTS,
    SETTLEMENT,
    Chain,
    Findings,
    ProvenanceError,
    RunRecords,
    SettlementRecord,
    amounts_tree,
    key_of,
)
from serving.fees import split_price, totals_by_address
from serving.settle import BATCH_SCHEMA
from storage import ContentStore, StorageError, is_cid, read_parquet


@dataclass
class EpochReport(Findings):
    """What `verify_epoch` found for one epoch: its failures, the CIDs it read, the receipt count,
    total and root the batch gives, and the chain's root, funding and claims (None where unread)."""

    epoch_id: str | None
    record_cid: str | None = None
    batch_cid: str | None = None
    n_receipts: int = 0
    total: int = 0
    root: str | None = None
    onchain_root: str | None = None
    deposited: int | None = None
    claimed: int | None = None


def _find_record(records: RunRecords, epoch_id: str, report: EpochReport) -> str | None:
    found = []
    for a in records.anchored(epoch_id):
        if a.record is None:
            report.fail("record_unreadable", a.cid, "recorded on chain but not readable from the store")
        elif a.record.activity == SETTLEMENT:
            found.append(a.cid)
    if len(found) != 1:
        report.fail(
            "record_missing",
            epoch_id,
            f"{len(found)} settlement records on chain for this epoch (expected 1)",
        )
        return None
    return found[0]


def verify_epoch(chain: Chain, store: ContentStore, epoch_id_or_cid: str) -> EpochReport:
    """Every check of one epoch, named by its id or its settlement record's CID."""
    ref = epoch_id_or_cid
    report = EpochReport(None if is_cid(ref) else ref)
    records = RunRecords(chain, store)
    record_cid = ref if is_cid(ref) else _find_record(records, ref, report)
    if record_cid is None:
        return report
    report.record_cid = record_cid
    try:
        record = records.load(record_cid)
    except ProvenanceError as exc:
        report.fail("record_unreadable", record_cid, str(exc))
        return report
    if record.activity != SETTLEMENT or SettlementRecord.RECEIPTS not in record.inputs:
        report.fail("not_a_settlement", record_cid, f"a {record.activity!r} record, not a settlement")
        return report
    epoch_id = str(record.params.get("epoch_id"))
    if report.epoch_id is not None and report.epoch_id != epoch_id:
        report.fail("epoch_mismatch", record_cid, f"record names epoch {epoch_id!r}")
    report.epoch_id = epoch_id
    entry = chain.entry_of(record_cid)
    if entry is None:
        report.fail("record_not_on_chain", record_cid, "the settlement record is not anchored on chain")
    elif entry["run_key"] != key_of(epoch_id):
        report.fail(
            "record_not_on_chain", record_cid, f"anchored under run key {entry['run_key']}, not the epoch's"
        )

    report.batch_cid = record.inputs[SettlementRecord.RECEIPTS]
    try:
        batch = read_parquet(store.get(report.batch_cid))
    except (StorageError, OSError, ValueError) as exc:
        report.fail("batch_unreadable", report.batch_cid, str(exc))
        return report
    if batch.schema.names != BATCH_SCHEMA.names:
        report.fail(
            "batch_schema", report.batch_cid, f"columns {batch.schema.names}, expected {BATCH_SCHEMA.names}"
        )
        return report
    splits = _check_receipts(batch.to_pylist(), epoch_id, report)
    payouts = totals_by_address(splits)
    report.n_receipts = batch.num_rows
    report.total = sum(v for _, v in payouts)
    report.root = _root(payouts, report)
    _check_record(store, record, record_cid, payouts, report)
    _check_chain(chain, epoch_id, report)
    return report


def _root(payouts: list[tuple[str, int]], report: EpochReport) -> str | None:
    """The root the batch's per-address totals give (None for an empty batch or invalid leaves)."""
    if not payouts:
        return None
    try:
        return amounts_tree(payouts).root
    except ProvenanceError as exc:
        report.fail("payouts_invalid", report.batch_cid or "", str(exc))
        return None


def _check_receipts(rows: list[dict], epoch_id: str, report: EpochReport) -> list[list[tuple[str, int]]]:
    splits, seen = [], set()
    for row in rows:
        rid = row["receipt_id"]
        if rid in seen:
            report.fail("receipt_duplicated", rid, "the batch lists this receipt twice")
        seen.add(rid)
        if row["epoch_id"] != epoch_id:
            report.fail("receipt_epoch", rid, f"belongs to epoch {row['epoch_id']!r}")
        weights = list(zip(row["addresses"], row["bps"], strict=True))
        stated = list(zip(row["addresses"], row["amounts"], strict=True))
        try:
            expected = split_price(row["price"], weights)
        except ValueError as exc:
            report.fail("receipt_amounts", rid, str(exc))
            splits.append(stated)
            continue
        if stated != expected:
            report.fail(
                "receipt_amounts", rid, f"amounts {stated} but price {row['price']} over bps gives {expected}"
            )
        splits.append(expected)
    return splits


def _check_record(store: ContentStore, record, record_cid: str, payouts, report: EpochReport) -> None:
    params = record.params
    if params.get("root") != report.root:
        report.fail(
            "root_mismatch", record_cid, f"record states root {params.get('root')}, batch gives {report.root}"
        )
    if str(params.get("total")) != str(report.total):
        report.fail(
            "total_mismatch",
            record_cid,
            f"record states total {params.get('total')}, batch gives {report.total}",
        )
    if params.get("n_receipts") != report.n_receipts:
        report.fail("count_mismatch", record_cid, f"record states {params.get('n_receipts')} receipts")
    cid = record.outputs.get(SettlementRecord.PAYOUTS)
    try:
        stored = read_parquet(store.get(cid)).to_pylist() if cid else None
    except (StorageError, OSError, ValueError) as exc:
        report.fail("payouts_unreadable", str(cid), str(exc))
        return
    if stored is None or [(r["address"], r["amount"]) for r in stored] != list(payouts):
        report.fail("payouts_mismatch", str(cid), "stored payouts differ from the batch's per-address totals")


def _check_chain(chain: Chain, epoch_id: str, report: EpochReport) -> None:
    dist = chain.distribution(epoch_id)
    if dist is None:
        report.fail("distribution_missing", epoch_id, "no root on chain for this epoch")
        return
    report.onchain_root, report.deposited, report.claimed = dist.root, dist.deposited, dist.claimed
    if dist.root != report.root:
        report.fail("root_mismatch", epoch_id, f"on-chain root {dist.root}, batch gives {report.root}")
    if dist.kind != KIND_AMOUNTS or dist.total_weight != report.total:
        report.fail(
            "distribution_terms",
            epoch_id,
            f"kind {dist.kind}, cap {dist.total_weight}; expected amounts, {report.total}",
        )
    if dist.deposited != report.total:
        report.fail("underfunded", epoch_id, f"deposited {dist.deposited} of {report.total}")
