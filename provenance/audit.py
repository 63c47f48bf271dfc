"""The auditor: trace a payout, transaction, run or CID back to raw data, and verify a run.

Both use only the chain and the content store. `verify_run` never stops at the first problem:
it returns every failure, each with a stable `name` (e.g. `content_corrupt`, `root_mismatch`,
`onchain_record_mismatch`) and the CID/address it concerns, so a CI job or a human can act.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
from eth_hash.auto import keccak

from provenance.activities import SETTLEMENT, WEIGHTING, WeightingRecord
from provenance.answer_claims import run_answer_problems, table_reader
from provenance.chain import KIND_AMOUNTS, KIND_SHARES, Chain, RecordedEvent, run_key
from provenance.claims import claims_deployed, run_claim_problems, source_cids, source_files
from provenance.errors import ChainError, RecordError, WeightsError
from provenance.merkle import SHARE_LEAF, verify_proof
from provenance.records import Record, cid_version_of
from provenance.run_records import Anchored, RunEpoch, RunRecords, key_of
from provenance.weights import ShareLeaves, read_weights, share_leaves
from schemas import TOTAL_BPS
from storage import (
    BlockNotFound,
    ContentStore,
    CorruptBlock,
    DataKey,
    DecryptionError,
    EncryptedStore,
    cid_for_bytes,
    is_cid,
    is_sealed,
    open_sealed,
    public_store,
    sealed_key_id,
)

ZERO32 = "0x" + "00" * 32


@dataclass(frozen=True)
class Failure:
    """One broken check. `name` is stable (machines), `detail` says what and where (humans)."""

    name: str
    subject: str
    detail: str


NO_KEY = "SKIP (no key)"


@dataclass(kw_only=True)
class Findings:
    """What a verification found: every broken check by name, and every check it could not make
    (`skipped`: a private value's plaintext without its key; never counted as passed).
    Reports of runs and epochs extend it."""

    failures: list[Failure] = field(default_factory=list)
    skipped: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed; skipped checks do not count against it (nor as passed)."""
        return not self.failures

    def fail(self, name: str, subject: str, detail: str) -> None:
        """Record a broken check under its stable `name`; the findings are then not `ok`."""
        self.failures.append(Failure(name, subject, detail))

    def skip(self, name: str, subject: str, detail: str) -> None:
        """Record a check that could not be made (e.g. no key for a private value); `ok` is unaffected."""
        self.skipped.append(Failure(name, subject, detail))

    def names(self) -> set[str]:
        """The failed checks' names, to test for one (`"run_not_found" in report.names()`)."""
        return {f.name for f in self.failures}

    def to_json(self) -> dict[str, Any]:
        """Every field as plain JSON (each failure a dict) plus `ok`: the body of a report's `--json`."""
        return {**asdict(self), "ok": self.ok}


@dataclass
class VerifyReport(Findings):
    """What `verify_run` found: the run's failures, the stored and on-chain roots, and how many records,
    contents (CIDs rehashed, private plaintexts opened) and proofs it checked; `caravan verify` prints it."""

    run_id: str
    run_key: str
    head_cid: str | None = None
    stored_root: str | None = None
    onchain_root: str | None = None
    records_checked: int = 0
    contents_checked: int = 0
    contents_opened: int = 0
    proofs_checked: int = 0
    sources_checked: int = 0  # source files the ingest records name, held to the claims on chain
    sources_claimed: int = 0  # of them, those dated and paid by their provider's own claim
    sources_registered: int = 0  # of them, those the operator dated by its registration on chain
    sources_unopened: int = 0  # sealed (private) source files no key opened: their claims not checked
    answers_checked: int = 0  # answers held to their labelers' claims on chain (`caravan claim-answers`)
    answer_labelers: int = 0  # the labelers who claimed them
    answers_unopened: bool = False  # the run's answers or examples are sealed and no key opened them
    claims_deployed: bool = True  # False: no SourceClaims contract on this chain, no claim to hold them to


def verify_run(
    chain: Chain,
    store: ContentStore,
    run_id: str,
    *,
    onchain_proofs: bool = True,
    keys: Sequence[DataKey] | None = None,
) -> VerifyReport:
    """Recompute every CID, check parents and on-chain entries, the root and every proof.

    A private value's CID is its ciphertext's, checked with no key; its plaintext is opened (and
    authenticated) with `keys` (default: those of `store`, if it is an `EncryptedStore`), and each
    one no key opens is reported as skipped, never as passed.
    """
    if keys is None:
        keys = store.keys if isinstance(store, EncryptedStore) else ()
    store = public_store(store)
    key = key_of(run_id)
    report = VerifyReport(run_id, key)
    reader = RunRecords(chain, store)
    anchored = reader.anchored(run_id)
    dist = chain.distribution(run_id)
    if not anchored and dist is None:
        report.fail(
            "run_not_found", run_id, f"no record and no royalty root on chain {chain.chain_id} for this run"
        )
        return report

    records = _readable(anchored, report)
    heads = [cid for cid, r in records.items() if r.activity == WEIGHTING]
    if len(heads) != 1:
        report.fail(
            "head_not_unique", run_id, f"expected one weighting record in the run, found {len(heads)}"
        )
    report.head_cid = heads[0] if len(heads) == 1 else None

    lineage = _walk_lineage(reader, records, report)
    _check_onchain_entries(chain, [a.event for a in anchored], lineage, key, report)
    for cid in sorted(set(records) - _ancestors(lineage, report.head_cid)):
        report.fail(
            "stray_record", cid, "recorded under this run but not in the lineage of its weighting record"
        )
    sources, images = source_cids(lineage), source_cids(lineage, images_only=True)
    sealed = _check_contents(store, lineage.values(), report, keys, sources, images)

    weights = _stored_weights(store, lineage, report)
    leaves = _leaves(weights, lineage, report)
    _check_claims(chain, lineage, weights if leaves is not None else None, sealed, report)  # valid weights
    _check_answer_claims(chain, lineage, weights if leaves is not None else None, table_reader(store, keys),
                         report)
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


def _readable(anchored: list[Anchored], report: VerifyReport) -> dict[str, Record]:
    """The run's anchored records that load; each one that does not is a named failure, once."""
    out: dict[str, Record] = {}
    failed: set[str] = set()
    for a in anchored:
        if a.record is not None:
            out[a.cid] = a.record
        elif a.cid not in failed:
            failed.add(a.cid)
            name = "record_missing" if "not in the content store" in str(a.error) else "record_corrupt"
            report.fail(name, a.cid, f"record: {a.error}")
    report.records_checked += len(out)
    return out


def _walk_lineage(reader: RunRecords, records: dict[str, Record], report: VerifyReport) -> dict[str, Record]:
    lineage = dict(records)
    pending = list(records)
    while pending:
        cid = pending.pop()
        for parent in lineage[cid].parents:
            if parent in lineage:
                continue
            try:
                lineage[parent] = reader.load(parent)
            except RecordError:
                report.fail("parent_missing", parent, f"parent of record {cid} cannot be read from the store")
                continue
            report.records_checked += 1
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


def _check_contents(
    store: ContentStore, records: Iterable[Record], report: VerifyReport, keys: Sequence[DataKey],
    sources: Collection[str], images: Collection[str],
) -> dict[str, str | None]:
    """Each content the records name, and the `images` a table of paths names, rehashed (a private one
    opened where a key is in reach); returns each sealed one of the `sources`' plaintext CID, what its
    provider claimed (None: not opened)."""
    sealed: dict[str, str | None] = {}
    cids = sorted({c for r in records for c in (*r.inputs.values(), *r.outputs.values())} | set(images))
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
        if is_sealed(data):
            plaintext = _check_sealed(cid, data, keys, report)
            if cid in sources:
                sealed[cid] = None if plaintext is None else cid_for_bytes(plaintext, cid_version=1)
    return sealed


def _check_sealed(cid: str, data: bytes, keys: Sequence[DataKey], report: VerifyReport) -> bytes | None:
    """A private value's plaintext, opened and authenticated with its key, or skipped without it."""
    key_id = sealed_key_id(data)
    if not any(k.key_id == key_id for k in keys):
        report.skip(NO_KEY, cid, f"private content (data key {key_id}): its plaintext was not checked, nor "
                                 "its provider's claims where it is a source file")
        return None
    try:
        plaintext = open_sealed(keys, data, what=f"content {cid}")
    except DecryptionError as exc:
        report.fail("content_unopenable", cid, str(exc))
        return None
    report.contents_opened += 1
    return plaintext


def _stored_weights(store: ContentStore, lineage: dict[str, Record], report: VerifyReport) -> pa.Table | None:
    """The weights table the head record names, or None (a named failure) where it cannot be read."""
    if report.head_cid is None or report.head_cid not in lineage:
        return None
    weights_cid = lineage[report.head_cid].outputs[WeightingRecord.WEIGHTS]
    try:
        return read_weights(store.get(weights_cid))
    except (BlockNotFound, CorruptBlock) as exc:
        report.fail("weights_unreadable", weights_cid, str(exc))
    except Exception as exc:  # noqa: BLE001 - not Parquet at all: still a named failure
        report.fail("weights_unreadable", weights_cid, f"{type(exc).__name__}: {exc}")
    return None


def _leaves(weights: pa.Table | None, lineage: dict[str, Record], report: VerifyReport) -> ShareLeaves | None:
    """The stored weights' payout leaves, or None (`weights_invalid`) where they break their contract."""
    if weights is None or report.head_cid is None:
        return None
    try:
        return share_leaves(weights)
    except WeightsError as exc:
        report.fail("weights_invalid", lineage[report.head_cid].outputs[WeightingRecord.WEIGHTS], str(exc))
    return None


def _check_claims(
    chain: Chain, lineage: dict[str, Record], weights: pa.Table | None, sealed: Mapping[str, str | None],
    report: VerifyReport,
) -> None:
    """Each source file the run's ingest records name, against the claims made of it on chain (a sealed
    one's, of its plaintext where opened): how it was dated, and whom its data pays
    (`provenance.claims.run_claim_problems`)."""
    problems, files = run_claim_problems(chain, lineage, weights, sealed)
    report.claims_deployed = claims_deployed(chain)
    for cid, why in problems:
        report.fail("claim_differs", cid, why)
    report.sources_checked += len(files)
    report.sources_unopened += sum(plaintext is None for plaintext in sealed.values())
    report.sources_claimed += sum(bool(f.get("claimed_by")) for f in files)
    report.sources_registered += sum(bool(f.get("dated_by")) for f in files)


def _check_answer_claims(
    chain: Chain, lineage: dict[str, Record], weights: pa.Table | None,
    read: Callable[[str], pa.Table | None], report: VerifyReport,
) -> None:
    """The answers the run pays its labelers by, against the answers each claimed on chain
    (`provenance.answer_claims.run_answer_problems`)."""
    check = run_answer_problems(chain, lineage, weights, read)
    if check is None:
        report.answers_unopened = True
        return
    for labeler, why in check.problems:
        report.fail("answer_claim_differs", labeler, why)
    for export, why in check.undated:
        report.fail("export_undated", export, why)
    report.answers_checked, report.answer_labelers = check.answers, check.labelers


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
    results = chain.batch_call(
        [
            fn(keyb, value[0], value[1], [bytes.fromhex(p[2:]) for p in proof])
            for value, proof in zip(leaves.tree.values, proofs, strict=True)
        ]
    )
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
        """The node and its children as nested JSON (`caravan trace --json`)."""
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
    reader = RunRecords(chain, store)
    if ref.startswith("0x") and len(ref) == 66:
        try:
            events = chain.events_of(ref)
        except ChainError:
            return _trace_run(reader, ref)  # not a transaction: a run key
        return _trace_tx(reader, ref, events)
    if is_cid(ref):
        return _trace_cid(reader, ref)
    return _trace_run(reader, ref)


def trace_run(chain: Chain, store: ContentStore, run_id: str) -> TraceNode:
    """The run's head record and lineage, and its settled serving epochs."""
    return _trace_run(RunRecords(chain, store), run_id)


def _trace_run(reader: RunRecords, run_id: str) -> TraceNode:
    chain = reader.chain
    key = key_of(run_id)
    anchored = reader.anchored(run_id)
    dist = chain.distribution(run_id)
    if not anchored and dist is None:
        raise ChainError(
            f"run {run_id!r} (key {key}) has no record or royalty root on chain {chain.chain_id}"
        )
    details: dict[str, Any] = {"run_key": key, "records": [a.cid for a in anchored]}
    if dist is not None:
        details.update(root=dist.root, deposited=dist.deposited, claimed=dist.claimed, token=dist.token)
    node = TraceNode("run", key, run_id if run_id == key else f"{run_id} ({key})", details)
    seen: set[str] = set()
    for a in anchored:  # a run's key leads to its head; an epoch's own key to its settlement
        if a.record is not None and a.record.activity in (WEIGHTING, SETTLEMENT):
            node.children.append(_record_tree(reader, a.cid, seen))
    epochs = reader.epochs(run_id)
    details["epochs"] = len(epochs)
    node.children.extend(_epoch_node(reader, epoch, seen) for epoch in epochs)
    return node

def _epoch_node(reader: RunRecords, epoch: RunEpoch, seen: set[str]) -> TraceNode:
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
    node.children.append(_record_tree(reader, epoch.record_cid, seen))
    return node


def _record_tree(reader: RunRecords, cid: str, seen: set[str]) -> TraceNode:
    if cid in seen:
        return TraceNode("record", cid, f"{cid} (shown above)", {"repeat": True})
    seen.add(cid)
    try:
        record = reader.load(cid)
    except RecordError as exc:
        return TraceNode("record", cid, f"{cid} (unreadable)", {"error": str(exc)})
    entry = reader.chain.entry_of(cid)
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
    sources = {f["cid"]: f for f in source_files(record)}
    for name, data_cid in sorted(record.inputs.items()):
        source = sources.get(data_cid)
        said = f" ({_source_said(source)})" if source else ""
        extra = {"source": source} if source else {}
        node.children.append(
            TraceNode("data", data_cid, f"{name}: {data_cid}{said}", {"role": "input", "name": name, **extra})
        )
    for parent in record.parents:
        node.children.append(_record_tree(reader, parent, seen))
    return node


def _source_said(source: Mapping[str, Any]) -> str:
    """Whose a source file is and who dated it: its provider's claim on chain, or the operator's clock."""
    who = f"provider {source['provider']}" if source.get("provider") else "providers in its rows"
    when = source.get("registered_at") or "?"
    if source.get("claimed_by"):
        dated = f"claimed by {source['claimed_by']} at {when}"
    elif source.get("dated_by"):
        dated = f"registered by {source['dated_by']} at {when}, dated on chain"
    else:
        dated = f"registered at {when} by the operator's clock"
    return f"{source.get('name', '?')}, {who}, {dated}"


def _trace_tx(reader: RunRecords, tx_hash: str, events: list[tuple[str, dict[str, Any]]]) -> TraceNode:
    if not events:
        raise ChainError(f"transaction {tx_hash} emitted no Caravan event")
    name, args = events[0]
    if name == "Recorded":
        node = TraceNode(
            "tx", tx_hash, f"record transaction {tx_hash}", {"run_key": "0x" + args["runId"].hex()}
        )
        node.children.append(_record_tree(reader, args["recordCid"], set()))
        return node
    run = "0x" + args["id"].hex()
    if name == "Claimed":
        dist = reader.chain.distribution(run)
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
    node.children.append(_trace_run(reader, run))
    return node


def _trace_cid(reader: RunRecords, cid: str) -> TraceNode:
    try:
        reader.load(cid)
        return _record_tree(reader, cid, set())
    except RecordError:
        pass
    node = TraceNode("data", cid, f"data {cid}")
    for a in reader.anchored():
        if a.record is not None and cid in a.record.outputs.values():
            node.details["produced_by"] = a.cid
            node.children.append(_record_tree(reader, a.cid, set()))
            return node
    node.details["produced_by"] = None
    return node


def record_cids(node: TraceNode) -> list[str]:
    """Every record CID in a trace tree (for `prov_json(records_by_cid(store, ...))`)."""
    found = [node.id] if node.kind == "record" and "activity" in node.details else []
    for child in node.children:
        found.extend(c for c in record_cids(child) if c not in found)
    return found
