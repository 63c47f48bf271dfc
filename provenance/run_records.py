"""The run-records API: write a stage's record once; read a run's records back from chain and store.

Writers (the pipeline's stages, serving's settlement epochs) call `put_stage_record`, which keeps
an earlier record when only its times differ, so a rerun never gives a run a second lineage.
Readers (serving, the auditor, the CLI) hold one `RunRecords` per question: it answers "the
records of activity X anchored under key K", a run's head, its lineage, a record's parent of a
given activity and a run's settled epochs, and loads (and re-verifies) each record at most once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from provenance.activities import SETTLEMENT, WEIGHTING, SettlementRecord
from provenance.chain import Chain, RecordedEvent, run_key
from provenance.errors import ChainError, MissingParent, RecordError
from provenance.records import Record, load_record, put_record
from storage import ContentStore

_MOMENTS = ("started_at", "ended_at", "agent")


def put_stage_record(store: ContentStore, record: Record, previous: str | None = None) -> str:
    """Store `record`, or keep `previous` when it records the same substance (all but times and agent).

    Records carry wall-clock times: storing a fresh one on every rerun would give the same content
    a second CID, and the run a second lineage.
    """
    if previous is not None:
        try:
            if _substance(load_record(store, previous)) == _substance(record):
                return previous
        except RecordError:
            pass  # the earlier record is gone or corrupt: store the new one
    return put_record(store, record)


def _substance(record: Record) -> dict[str, Any]:
    doc = record.to_json()
    for moment in _MOMENTS:
        doc.pop(moment)
    return doc


def key_of(run_or_epoch_id: str) -> str:
    """The 0x-hex registry key of a run or epoch id (a 0x key passes through)."""
    return "0x" + run_key(run_or_epoch_id).hex()


@dataclass(frozen=True)
class Anchored:
    """A record as the registry's event names it, with the record itself or why it cannot be read."""

    event: RecordedEvent
    record: Record | None
    error: str | None = None

    @property
    def cid(self) -> str:
        """The record's CID as the registry event names it (known even when the record cannot be read)."""
        return self.event.record_cid


class RunRecords:
    """One reader of records over a chain and a content store; each record is loaded once.

    `chain` may be None for questions the store alone answers (`load`, `lineage`, `parent`).
    """

    def __init__(self, chain: Chain | None, store: ContentStore) -> None:
        self._chain = chain
        self.store = store
        self._loaded: dict[str, Record | RecordError] = {}
        self._events: dict[tuple[str | None, int], list[Anchored]] = {}

    def load(self, cid: str) -> Record:
        """The record stored under `cid`, verified against it (RecordError if missing or corrupt)."""
        if cid not in self._loaded:
            try:
                self._loaded[cid] = load_record(self.store, cid)
            except RecordError as exc:
                self._loaded[cid] = exc
        found = self._loaded[cid]
        if isinstance(found, RecordError):
            raise found
        return found

    def anchored(self, run_or_epoch_id: str | None = None, *, from_block: int = 0) -> list[Anchored]:
        """Every record the registry recorded (under one run or epoch id, if given), oldest first.

        Read from the chain once per reader: a reader answers one question about one moment.
        """
        query = (run_or_epoch_id, from_block)
        if query not in self._events:
            out = []
            for event in self.chain.recorded_events(run_or_epoch_id, from_block=from_block):
                try:
                    out.append(Anchored(event, self.load(event.record_cid)))
                except RecordError as exc:
                    out.append(Anchored(event, None, str(exc)))
            self._events[query] = out
        return self._events[query]

    def of_activity(self, run_or_epoch_id: str, activity: str) -> list[str]:
        """CIDs of the readable `activity` records anchored under the id, oldest first."""
        return [
            a.cid
            for a in self.anchored(run_or_epoch_id)
            if a.record is not None and a.record.activity == activity
        ]

    def head(self, run_id: str) -> str:
        """The run's weighting record on chain (exactly one is expected)."""
        heads = self.of_activity(run_id, WEIGHTING)
        if len(heads) != 1:
            raise ChainError(
                f"run {run_id!r} has {len(heads)} weighting records on chain readable from this store "
                "(expected exactly 1): check the run id and CARAVAN_STORE_DIR"
            )
        return heads[0]

    def settlement(self, epoch_id: str) -> str:
        """The epoch's settlement record on chain (exactly one is expected)."""
        found = self.of_activity(epoch_id, SETTLEMENT)
        if len(found) != 1:
            raise ChainError(f"epoch {epoch_id!r} has {len(found)} settlement records on chain (expected 1)")
        return found[0]

    def lineage(self, head_cid: str) -> dict[str, Record]:
        """The head record and all its ancestors, each re-verified against its CID."""
        lineage: dict[str, Record] = {}
        pending: list[tuple[str, str | None]] = [(head_cid, None)]
        while pending:
            cid, child = pending.pop()
            if cid in lineage:
                continue
            try:
                record = self.load(cid)
            except RecordError as exc:
                if child is not None and "not in the content store" in str(exc):
                    raise MissingParent(
                        f"record {child} names parent {cid}, which is not in the content store: "
                        "store the parent record first (put_record) or fix the parents list"
                    ) from None
                raise
            lineage[cid] = record
            pending.extend((parent, cid) for parent in record.parents)
        return lineage

    def input_tables(self, record: Record, names: Sequence[str]) -> list[Any]:
        """The named inputs of `record` as Arrow tables, in `names` order (None where it has none)."""
        from storage import read_parquet

        return [read_parquet(self.store.get(record.inputs[n])) if n in record.inputs else None for n in names]

    def parent(self, cid: str, activity: str) -> tuple[str, Record]:
        """The one parent of record `cid` whose activity is `activity`."""
        found = [(p, self.load(p)) for p in self.load(cid).parents]
        found = [(p, r) for p, r in found if r.activity == activity]
        if len(found) != 1:
            raise RecordError(f"record {cid} has {len(found)} {activity!r} parents (expected 1)")
        return found[0]

    def epochs(self, run_id: str) -> list[RunEpoch]:
        """The run's settled serving epochs, oldest first, found from the chain and the store alone.

        Settlement records are anchored under their epoch's own key with the run's head as parent.
        The `Recorded` event indexes the run key, not the parent (a string, so web3's non-indexed
        filter would only match substrings, after the node returned every log anyway): read the
        registry's events from the head's block on (a child is recorded after its parent) and keep
        those whose parent is a head. Roots and funding come from topic-filtered distributor events.
        """
        key = key_of(run_id)
        heads = [a.event for a in self.anchored(run_id) if a.record and a.record.activity == WEIGHTING]
        if not heads:
            return []
        head_cids = {e.record_cid for e in heads}
        children = [
            a
            for a in self.anchored(from_block=min(e.block for e in heads))
            if a.event.parent_cid in head_cids and a.event.run_key != key
        ]
        epochs = [e for e in (self._epoch(key, a) for a in children) if e is not None]
        keys = [e.epoch_key for e in epochs if e.epoch_key]
        if not keys:
            return epochs
        since = min(e.record_block for e in epochs)  # settle records an epoch before publishing its root
        roots = self.chain.distributor_txs("DistributionCreated", keys, since)
        funding = self.chain.distributor_txs("Deposited", keys, since)
        return [
            replace(
                e,
                root_tx=(roots.get(e.epoch_key) or [None])[0],
                funding_txs=tuple(funding.get(e.epoch_key, ())),
            )
            if e.epoch_key
            else e
            for e in epochs
        ]

    def _epoch(self, key: str, anchored: Anchored) -> RunEpoch | None:
        """None for a readable record that is no settlement (say, a later run built on this one)."""
        event, record = anchored.event, anchored.record
        base = RunEpoch(event.record_cid, event.tx_hash, event.block)
        if record is None:
            error = f"anchored as a child of the run's head but unreadable: {anchored.error}"
            return replace(base, error=error)
        if record.activity != SETTLEMENT:
            return None
        params = record.params
        epoch_id = params.get("epoch_id")
        if not isinstance(epoch_id, str) or not epoch_id:
            return replace(base, error=f"a settlement record naming no epoch id ({epoch_id!r})")
        epoch = replace(
            base,
            epoch_id=epoch_id,
            epoch_key=key_of(epoch_id),
            batch_cid=record.inputs.get(SettlementRecord.RECEIPTS),
            payouts_cid=record.outputs.get(SettlementRecord.PAYOUTS),
            root=params.get("root"),
            total=_int_or_none(params.get("total")),
            n_receipts=_int_or_none(params.get("n_receipts")),
            settled_at=record.ended_at,
        )
        run_id = params.get("run_id")
        if event.run_key != epoch.epoch_key:
            error = f"anchored under key {event.run_key}, not its epoch's {epoch.epoch_key}"
            epoch = replace(epoch, error=error)
        elif not isinstance(run_id, str) or not run_id or key_of(run_id) != key:
            epoch = replace(epoch, error=f"the record names run {run_id!r}, not this run")
        dist = self.chain.distribution(epoch_id)
        if dist is None:
            return epoch
        return replace(
            epoch,
            onchain_root=dist.root,
            onchain_total=dist.total_weight,
            deposited=dist.deposited,
            claimed=dist.claimed,
        )

    @property
    def chain(self) -> Chain:
        """The chain this reader was built with; ChainError for a store-only reader (`chain` None)."""
        if self._chain is None:
            raise ChainError("this question needs the chain: build RunRecords(chain, store)")
        return self._chain


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
        """The epoch's fields as a dict: a trace node's details, each epoch of `verify --epochs --json`."""
        return asdict(self)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def run_epochs(chain: Chain, store: ContentStore, run_id: str) -> list[RunEpoch]:
    """The run's settled serving epochs, oldest first (`RunRecords.epochs`)."""
    return RunRecords(chain, store).epochs(run_id)


def records_by_cid(store: ContentStore, cids: Iterable[str]) -> dict[str, Record]:
    """Each CID's record through one `RunRecords` reader (each loaded and checked once)."""
    reader = RunRecords(None, store)
    return {cid: reader.load(cid) for cid in cids}
