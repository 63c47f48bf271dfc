"""The auditor: trace a payout, transaction, run or CID back to raw data, and verify a run.

Both use only the chain and the content store. `verify_run` never stops at the first problem:
it returns every failure, each with a stable `name` (e.g. `content_corrupt`, `root_mismatch`,
`onchain_record_mismatch`) and the CID/address it concerns, so a CI job or a human can act.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from eth_hash.auto import keccak

from provenance.chain import KIND_AMOUNTS, KIND_SHARES, Chain, RecordedEvent, run_key
from provenance.errors import ChainError, RecordError, WeightsError
from provenance.merkle import SHARE_LEAF, verify_proof
from provenance.records import WEIGHTING, WEIGHTS_OUTPUT, Record, cid_version_of, load_record
from provenance.weights import ShareLeaves, read_weights, share_leaves
from schemas import TOTAL_BPS
from storage import BlockNotFound, ContentStore, CorruptBlock, cid_for_bytes, is_cid

ZERO32 = "0x" + "00" * 32
# A serving epoch's settlement record (written by serving.settle): activity, receipts batch, payouts.
SETTLEMENT = "settlement"
RECEIPTS_INPUT = "receipts"
PAYOUTS_OUTPUT = "payouts"


@dataclass(frozen=True)
class Failure:
    """One broken check. `name` is stable (machines), `detail` says what and where (humans)."""

    name: str
    subject: str
    detail: str


@dataclass(kw_only=True)
class Findings:
    """What a verification found: every broken check by name. Reports of runs and epochs extend it."""

    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, name: str, subject: str, detail: str) -> None:
        self.failures.append(Failure(name, subject, detail))

    def names(self) -> set[str]:
        return {f.name for f in self.failures}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class VerifyReport(Findings):
    run_id: str
    run_key: str
    head_cid: str | None = None
    stored_root: str | None = None
    onchain_root: str | None = None
    records_checked: int = 0
    contents_checked: int = 0
    proofs_checked: int = 0


def verify_run(
    chain: Chain, store: ContentStore, run_id: str, *, onchain_proofs: bool = True
) -> VerifyReport:
    """Recompute every CID, check parents and on-chain entries, the root and every proof."""
    key = "0x" + run_key(run_id).hex()
    report = VerifyReport(run_id, key)
    events = chain.recorded_events(run_id)
    dist = chain.distribution(run_id)
    if not events and dist is None:
        report.fail(
            "run_not_found", run_id, f"no record and no royalty root on chain {chain.chain_id} for this run"
        )
        return report

    records = _load_records(store, (e.record_cid for e in events), report, "record")
    heads = [cid for cid, r in records.items() if r.activity == WEIGHTING]
    if len(heads) != 1:
        report.fail(
            "head_not_unique", run_id, f"expected one weighting record in the run, found {len(heads)}"
        )
    report.head_cid = heads[0] if len(heads) == 1 else None

    lineage = _walk_lineage(store, records, report)
    _check_onchain_entries(chain, events, lineage, key, report)
    for cid in sorted(set(records) - _ancestors(lineage, report.head_cid)):
        report.fail(
            "stray_record", cid, "recorded under this run but not in the lineage of its weighting record"
        )
    _check_contents(store, lineage.values(), report)

    leaves = _stored_leaves(store, lineage, report)
    if dist is None:
        report.fail("root_missing", run_id, "no royalty distribution on chain for this run")
    else:
        report.onchain_root = dist.root
        if dist.kind != KIND_SHARES or dist.total_weight != TOTAL_BPS:
            report.fail(
                "distribution_terms", run_id, f"kind {dist.kind}, total {dist.total_weight}; expected shares"
            )
    if leaves is not None:
        report.stored_root = leaves.root
        if dist is not None and dist.root != leaves.root:
            report.fail(
                "root_mismatch",
                run_id,
                f"on-chain root {dist.root} != root of the stored weights {leaves.root}",
            )
    if leaves is not None and dist is not None:
        _check_proofs(chain, run_id, dist.root, leaves, report, onchain_proofs)
    return report


def _load_records(
    store: ContentStore, cids: Iterable[str], report: VerifyReport, role: str
) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for cid in cids:
        if cid in out:
            continue
        try:
            out[cid] = load_record(store, cid)
        except RecordError as exc:
            name = "record_missing" if "not in the content store" in str(exc) else "record_corrupt"
            report.fail(name, cid, f"{role}: {exc}")
    report.records_checked += len(out)
    return out


def _walk_lineage(store: ContentStore, records: dict[str, Record], report: VerifyReport) -> dict[str, Record]:
    lineage = dict(records)
    pending = list(records)
    while pending:
        cid = pending.pop()
        for parent in lineage[cid].parents:
            if parent in lineage:
                continue
            loaded = _load_records(store, [parent], VerifyReport(report.run_id, report.run_key), "parent")
            if parent not in loaded:
                report.fail("parent_missing", parent, f"parent of record {cid} cannot be read from the store")
                continue
            report.records_checked += 1
            lineage[parent] = loaded[parent]
            pending.append(parent)
    return lineage


def _ancestors(lineage: dict[str, Record], head: str | None) -> set[str]:
    seen: set[str] = set()
    pending = [head] if head else []
    while pending:
        cid = pending.pop()
        if cid in seen or cid not in lineage:
            continue
        seen.add(cid)
        pending.extend(lineage[cid].parents)
    return seen


def _cid_hash(cid: str) -> str:
    return "0x" + keccak(cid.encode()).hex() if cid else ZERO32


def _check_onchain_entries(
    chain: Chain, events: list[RecordedEvent], lineage: dict[str, Record], key: str, report: VerifyReport
) -> None:
    """The registry's stored entries must agree with the events and the records' own parents."""
    by_cid = {e.record_cid: e for e in events}
    for cid, record in sorted(lineage.items()):
        entry = chain.entry_of(cid)
        if entry is None:
            report.fail(
                "parent_not_on_chain", cid, "record is in the lineage but was never recorded on chain"
            )
            continue
        primary = record.parents[0] if record.parents else ""
        if entry["parent_hash"] != _cid_hash(primary):
            report.fail(
                "onchain_record_mismatch",
                cid,
                f"on-chain parent hash {entry['parent_hash']} is not that of {primary!r}",
            )
        event = by_cid.get(cid)
        if event is not None:
            if entry["run_key"] != key:
                report.fail("onchain_record_mismatch", cid, f"on-chain run key {entry['run_key']} != {key}")
            if event.parent_cid != primary:
                report.fail(
                    "onchain_record_mismatch", cid, f"event parent {event.parent_cid!r} != {primary!r}"
                )


def _check_contents(store: ContentStore, records: Iterable[Record], report: VerifyReport) -> None:
    cids = sorted({c for r in records for c in (*r.inputs.values(), *r.outputs.values())})
    for cid in cids:
        try:
            data = store.get(cid)
        except BlockNotFound:
            report.fail("content_missing", cid, "named by a record but not in the content store")
            continue
        except CorruptBlock as exc:
            report.fail("content_corrupt", cid, f"stored blocks do not hash to their CIDs: {exc}")
            continue
        if cid_for_bytes(data, cid_version=cid_version_of(cid)) != cid:
            report.fail("content_cid_mismatch", cid, "stored content re-imports to a different CID")
            continue
        report.contents_checked += 1


def _stored_leaves(
    store: ContentStore, lineage: dict[str, Record], report: VerifyReport
) -> ShareLeaves | None:
    if report.head_cid is None or report.head_cid not in lineage:
        return None
    weights_cid = lineage[report.head_cid].outputs[WEIGHTS_OUTPUT]
    try:
        return share_leaves(read_weights(store.get(weights_cid)))
    except (BlockNotFound, CorruptBlock) as exc:
        report.fail("weights_unreadable", weights_cid, str(exc))
    except WeightsError as exc:
        report.fail("weights_invalid", weights_cid, str(exc))
    except Exception as exc:  # noqa: BLE001 - not Parquet at all: still a named failure
        report.fail("weights_unreadable", weights_cid, f"{type(exc).__name__}: {exc}")
    return None


def _check_proofs(
    chain: Chain, run_id: str, root: str, leaves: ShareLeaves, report: VerifyReport, onchain: bool
) -> None:
    """Each payee's proof against the on-chain root, locally and (batched) by the contract itself."""
    proofs = leaves.tree.proofs()
    for value, proof in zip(leaves.tree.values, proofs, strict=True):
        if not verify_proof(root, SHARE_LEAF, value, proof):
            report.fail("proof_invalid", value[0], f"weight {value[1]} bps does not prove against {root}")
        report.proofs_checked += 1
    if not onchain or report.names() & {"proof_invalid", "root_mismatch"}:
        return
    fn = chain.distributor.functions.verifyLeaf
    keyb = run_key(run_id)
    results: list[bool] = []
    for start in range(0, len(proofs), 500):
        with chain.w3.batch_requests() as batch:
            for value, proof in zip(
                leaves.tree.values[start : start + 500], proofs[start : start + 500], strict=True
            ):
                batch.add(fn(keyb, value[0], value[1], [bytes.fromhex(p[2:]) for p in proof]))
            results.extend(chain._rpc("batch eth_call", batch.execute))
    for value, accepted in zip(leaves.tree.values, results, strict=True):
        if not accepted:
            report.fail("proof_rejected_onchain", value[0], "the distributor's verifyLeaf refused this leaf")


# ---- trace ----------------------------------------------------------------------------------


@dataclass
class TraceNode:
    """One node of a lineage tree: payout, deposit, run, record or data."""

    kind: str
    id: str
    label: str
    details: dict[str, Any] = field(default_factory=dict)
    children: list[TraceNode] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "label": self.label,
            "details": self.details,
            "children": [c.to_json() for c in self.children],
        }


def trace(chain: Chain, store: ContentStore, ref: str) -> TraceNode:
    """Lineage of a tx hash (payout, deposit, root or record), a run id/key, or a CID."""
    ref = ref.strip()
    if ref.startswith("0x") and len(ref) == 66:
        try:
            events = chain.events_of(ref)
        except ChainError:
            return trace_run(chain, store, ref)  # not a transaction: a run key
        return _trace_tx(chain, store, ref, events)
    if is_cid(ref):
        return _trace_cid(chain, store, ref)
    return trace_run(chain, store, ref)


def trace_run(chain: Chain, store: ContentStore, run_id: str) -> TraceNode:
    key = "0x" + run_key(run_id).hex()
    events = chain.recorded_events(run_id)
    dist = chain.distribution(run_id)
    if not events and dist is None:
        raise ChainError(
            f"run {run_id!r} (key {key}) has no record or royalty root on chain {chain.chain_id}"
        )
    details: dict[str, Any] = {"run_key": key, "records": [e.record_cid for e in events]}
    if dist is not None:
        details.update(root=dist.root, deposited=dist.deposited, claimed=dist.claimed, token=dist.token)
    node = TraceNode("run", key, run_id if run_id == key else f"{run_id} ({key})", details)
    seen: set[str] = set()
    heads: list[RecordedEvent] = []
    for event in events:
        try:
            record = load_record(store, event.record_cid)
        except RecordError:
            continue
        if record.activity == WEIGHTING:
            heads.append(event)
        if record.activity in (WEIGHTING, SETTLEMENT):  # an epoch's own key leads to its settlement
            node.children.append(_record_tree(chain, store, event.record_cid, seen))
    epochs = _epochs_of(chain, store, key, heads) if heads else []
    details["epochs"] = len(epochs)
    node.children.extend(_epoch_node(chain, store, epoch, seen) for epoch in epochs)
    return node


# ---- serving epochs of a run ----------------------------------------------------------------


@dataclass(frozen=True)
class RunEpoch:
    """A settlement epoch that paid out a run's serving revenue, as the chain and the store show it.

    Stated figures come from the settlement record; `onchain_*` from the distributor. `error` is
    set when a record anchored as a child of the run's head cannot be read (it may be an epoch), or
    is a settlement anchored under another key or naming another run: such an entry is still
    listed, since an auditor must see it (`caravan verify RUN --epochs` fails on it).
    """

    record_cid: str
    record_tx: str
    record_block: int
    epoch_id: str | None = None
    epoch_key: str | None = None
    batch_cid: str | None = None
    payouts_cid: str | None = None
    root: str | None = None
    total: int | None = None
    n_receipts: int | None = None
    settled_at: str | None = None
    onchain_root: str | None = None
    onchain_total: int | None = None
    deposited: int | None = None
    claimed: int | None = None
    root_tx: str | None = None
    funding_txs: tuple[str, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_epochs(chain: Chain, store: ContentStore, run_id: str) -> list[RunEpoch]:
    """The run's settled serving epochs, oldest first, found from the chain and the store alone."""
    heads = []
    for event in chain.recorded_events(run_id):
        try:
            if load_record(store, event.record_cid).activity == WEIGHTING:
                heads.append(event)
        except RecordError:
            continue
    return _epochs_of(chain, store, "0x" + run_key(run_id).hex(), heads)


def _epochs_of(chain: Chain, store: ContentStore, key: str, heads: list[RecordedEvent]) -> list[RunEpoch]:
    """Settlement records are anchored under their epoch's own key with the run's head as parent.

    The `Recorded` event indexes the run key, not the parent (a string, so web3's non-indexed
    filter would only match substrings, after the node returned every log anyway): read the
    registry's events from the head's block on — a child is recorded after its parent — and keep
    those whose parent is a head. Roots and funding come from topic-filtered distributor events.
    """
    if not heads:
        return []
    head_cids = {e.record_cid for e in heads}
    children = [
        e
        for e in chain.recorded_events(from_block=min(e.block for e in heads))
        if e.parent_cid in head_cids and e.run_key != key
    ]
    epochs = [e for e in (_read_epoch(chain, store, key, event) for event in children) if e is not None]
    keys = [e.epoch_key for e in epochs if e.epoch_key]
    if not keys:
        return epochs
    since = min(e.record_block for e in epochs)  # settle records an epoch before publishing its root
    roots = _distributor_txs(chain, "DistributionCreated", keys, since)
    funding = _distributor_txs(chain, "Deposited", keys, since)
    return [
        replace(
            e, root_tx=(roots.get(e.epoch_key) or [None])[0], funding_txs=tuple(funding.get(e.epoch_key, ()))
        )
        if e.epoch_key
        else e
        for e in epochs
    ]


def _read_epoch(chain: Chain, store: ContentStore, key: str, event: RecordedEvent) -> RunEpoch | None:
    """None for a readable record that is no settlement (say, a later run built on this one)."""
    base = RunEpoch(event.record_cid, event.tx_hash, event.block)
    try:
        record = load_record(store, event.record_cid)
    except RecordError as exc:
        return replace(base, error=f"anchored as a child of the run's head but unreadable: {exc}")
    params = record.params
    epoch_id = params.get("epoch_id")
    if record.activity != SETTLEMENT:
        return None
    if not isinstance(epoch_id, str) or not epoch_id:
        return replace(base, error=f"a settlement record naming no epoch id ({epoch_id!r})")
    epoch_key = "0x" + run_key(epoch_id).hex()
    epoch = replace(
        base,
        epoch_id=epoch_id,
        epoch_key=epoch_key,
        batch_cid=record.inputs.get(RECEIPTS_INPUT),
        payouts_cid=record.outputs.get(PAYOUTS_OUTPUT),
        root=params.get("root"),
        total=_int_or_none(params.get("total")),
        n_receipts=_int_or_none(params.get("n_receipts")),
        settled_at=record.ended_at,
    )
    run_id = params.get("run_id")
    if event.run_key != epoch_key:
        epoch = replace(epoch, error=f"anchored under key {event.run_key}, not its epoch's {epoch_key}")
    elif not isinstance(run_id, str) or not run_id or "0x" + run_key(run_id).hex() != key:
        epoch = replace(epoch, error=f"the record names run {run_id!r}, not this run")
    dist = chain.distribution(epoch_id)
    if dist is None:
        return epoch
    return replace(
        epoch,
        onchain_root=dist.root,
        onchain_total=dist.total_weight,
        deposited=dist.deposited,
        claimed=dist.claimed,
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _distributor_txs(chain: Chain, name: str, keys: list[str], since: int) -> dict[str, list[str]]:
    """Transaction hashes of a distributor event for each key, oldest first (one eth_getLogs)."""
    event = chain.distributor.events[name]
    ids = [bytes.fromhex(k[2:]) for k in keys]
    logs = chain._rpc(
        "eth_getLogs",
        lambda: event.get_logs(from_block=since, to_block="latest", argument_filters={"id": ids}),
    )
    out: dict[str, list[str]] = {}
    for log in logs:
        out.setdefault("0x" + bytes(log["args"]["id"]).hex(), []).append(
            "0x" + bytes(log["transactionHash"]).hex()
        )
    return out


def _epoch_node(chain: Chain, store: ContentStore, epoch: RunEpoch, seen: set[str]) -> TraceNode:
    """The epoch's figures, then its settlement record (receipts batch in, parent: the run's head)."""
    if epoch.error is not None and epoch.epoch_id is None:
        label = f"record {epoch.record_cid} (tx {epoch.record_tx}): {epoch.error}"
        return TraceNode("epoch", epoch.record_cid, label, epoch.to_json())
    state = "root NOT ON CHAIN" if epoch.onchain_root is None else f"root {epoch.onchain_root}"
    if epoch.onchain_root is not None and epoch.onchain_root != epoch.root:
        state += f" (record states {epoch.root})"
    if epoch.deposited is not None:
        state += f", funded {epoch.deposited}, claimed {epoch.claimed}"
    label = (
        f"{epoch.epoch_id}: {epoch.n_receipts} receipts, total {epoch.total} [{epoch.settled_at}], {state}, "
        f"recorded in tx {epoch.record_tx}" + (f"; {epoch.error}" if epoch.error else "")
    )
    node = TraceNode("epoch", epoch.epoch_id or epoch.record_cid, label, epoch.to_json())
    node.children.append(_record_tree(chain, store, epoch.record_cid, seen))
    return node


def _record_tree(chain: Chain, store: ContentStore, cid: str, seen: set[str]) -> TraceNode:
    if cid in seen:
        return TraceNode("record", cid, f"{cid} (shown above)", {"repeat": True})
    seen.add(cid)
    try:
        record = load_record(store, cid)
    except RecordError as exc:
        return TraceNode("record", cid, f"{cid} (unreadable)", {"error": str(exc)})
    entry = chain.entry_of(cid)
    details = {
        "activity": record.activity,
        "agent": record.agent,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "code": record.code.to_json(),
        "params": dict(record.params),
        "outputs": dict(record.outputs),
        "on_chain": entry,
    }
    label = f"{record.activity} {cid} [{record.ended_at}, {record.agent}]" + (
        "" if entry else " NOT ON CHAIN"
    )
    node = TraceNode("record", cid, label, details)
    for name, data_cid in sorted(record.inputs.items()):
        node.children.append(
            TraceNode("data", data_cid, f"{name}: {data_cid}", {"role": "input", "name": name})
        )
    for parent in record.parents:
        node.children.append(_record_tree(chain, store, parent, seen))
    return node


def _trace_tx(
    chain: Chain, store: ContentStore, tx_hash: str, events: list[tuple[str, dict[str, Any]]]
) -> TraceNode:
    if not events:
        raise ChainError(f"transaction {tx_hash} emitted no Caravan event")
    name, args = events[0]
    if name == "Recorded":
        node = TraceNode(
            "tx", tx_hash, f"record transaction {tx_hash}", {"run_key": "0x" + args["runId"].hex()}
        )
        node.children.append(_record_tree(chain, store, args["recordCid"], set()))
        return node
    run = "0x" + args["id"].hex()
    if name == "Claimed":
        dist = chain.distribution(run)
        leaf = (
            f"leaf of {args['weight']}"
            if dist is not None and dist.kind == KIND_AMOUNTS
            else f"{args['weight']} bps"
        )
        label = f"payout of {args['amount']} to {args['account']} ({leaf})"
        details = {"account": args["account"], "amount": args["amount"], "weight": args["weight"]}
        kind = "payout"
    elif name == "Deposited":
        label = f"deposit of {args['amount']} by {args['from']}"
        details = {"from": args["from"], "amount": args["amount"]}
        kind = "deposit"
    else:
        label, details, kind = (
            f"royalty root {'0x' + args['root'].hex()}",
            {"root": "0x" + args["root"].hex()},
            "root",
        )
    node = TraceNode(kind, tx_hash, label, {"tx_hash": tx_hash, **details})
    node.children.append(trace_run(chain, store, run))
    return node


def _trace_cid(chain: Chain, store: ContentStore, cid: str) -> TraceNode:
    try:
        load_record(store, cid)
        return _record_tree(chain, store, cid, set())
    except RecordError:
        pass
    node = TraceNode("data", cid, f"data {cid}")
    for event in chain.recorded_events():
        try:
            record = load_record(store, event.record_cid)
        except RecordError:
            continue
        if cid in record.outputs.values():
            node.details["produced_by"] = event.record_cid
            node.children.append(_record_tree(chain, store, event.record_cid, set()))
            return node
    node.details["produced_by"] = None
    return node


def record_cids(node: TraceNode) -> list[str]:
    """Every record CID in a trace tree (for `prov_json(records_by_cid(store, ...))`)."""
    found = [node.id] if node.kind == "record" and "activity" in node.details else []
    for child in node.children:
        found.extend(c for c in record_cids(child) if c not in found)
    return found
