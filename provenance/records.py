"""Provenance records: canonical JSON (RFC 8785) whose CID in the content store is its identity.

A record describes one activity (ingest, snapshot, labeling export, consensus, training,
weighting): its input and output CIDs by name, parameters, code version, agent and times,
plus the CIDs of its parent records. Parents make the records a DAG from raw data to payouts.
The bytes are RFC 8785 canonical JSON, so anyone re-encoding the same record gets the same
bytes and the same CID; `load_record` refuses anything that is not canonical.
"""

from __future__ import annotations

import datetime as dt
import graphlib
import json
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any

import rfc8785
from prov.model import ProvDocument

from provenance.activities import ACTIVITIES, WEIGHTING, WeightingRecord
from provenance.errors import RecordError
from storage import BlockNotFound, ContentStore, CorruptBlock, InvalidCID, cid_for_bytes
from storage import parse_cid as _parse_cid

SCHEMA = "caravan/provenance-record/v1"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class CodeVersion:
    """Which code produced an artifact: package, version and, when known, the git commit.

    `dirty` says whether the working tree differed from that commit (tracked changes or untracked
    files git does not ignore): such code cannot be checked out again, so a replay cannot trust it.
    None means unknown (records written before the flag existed, or no checkout): the key is then
    left out, so those records keep their bytes and CIDs.
    """

    package: str
    version: str
    git_commit: str | None = None
    dirty: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The record's `code` field; `dirty` only when known, so older records keep their bytes."""
        doc: dict[str, Any] = {"package": self.package, "version": self.version}
        doc["git_commit"] = self.git_commit
        if self.dirty is not None:
            doc["dirty"] = self.dirty
        return doc

    def describe(self) -> str:
        """One line for messages and reports: `package==version@commit`, flagged when the tree was dirty."""
        commit = self.git_commit or "no commit"
        return f"{self.package}=={self.version}@{commit}" + (" (dirty working tree)" if self.dirty else "")


def code_version(package: str = "caravan", repo: Path | None = None) -> CodeVersion:
    """The installed version of `package`, the git HEAD of `repo` and whether its tree is dirty
    (commit and flag None outside a checkout)."""
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    repo = repo or Path(__file__).resolve().parents[1]
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain") if commit else None
    return CodeVersion(package, version, commit or None, None if status is None else bool(status))


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def utc_time(moment: dt.datetime | None = None) -> str:
    """Record time format: UTC, whole seconds, `Z` suffix."""
    moment = moment or dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        raise RecordError("record times must be timezone-aware; pass datetime.now(datetime.UTC)")
    return moment.astimezone(dt.UTC).strftime(_TIME)


@dataclass(frozen=True)
class Record:
    """One activity in the lineage. Build it, then `put_record(store, record)` for its CID."""

    activity: str
    agent: str
    started_at: str
    ended_at: str
    code: CodeVersion
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))
        object.__setattr__(self, "outputs", MappingProxyType(dict(self.outputs)))
        object.__setattr__(self, "parents", tuple(self.parents))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        _validate(self)

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON document, tagged with `SCHEMA`: what `canonical_bytes` encodes."""
        return {
            "schema": SCHEMA,
            "activity": self.activity,
            "agent": self.agent,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "code": self.code.to_json(),
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "parents": list(self.parents),
            "params": _plain(self.params),
        }

    def canonical_bytes(self) -> bytes:
        """The RFC 8785 bytes of `to_json`: what is stored and hashed to the record's CID."""
        try:
            return rfc8785.dumps(self.to_json())
        except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
            raise RecordError(f"record params of {self.activity!r} are not canonical JSON: {exc}") from None

    def cid(self, cid_version: int = 0) -> str:
        """The CID `put_record` stores the record under (CIDv0 by default), computed without storing it."""
        return cid_for_bytes(self.canonical_bytes(), cid_version=cid_version)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Record:
        """The record a `to_json` document holds (validated); RecordError for another schema or a
        missing or mistyped field."""
        if not isinstance(doc, Mapping) or doc.get("schema") != SCHEMA:
            raise RecordError(f"not a Caravan provenance record (expected schema {SCHEMA!r})")
        try:
            code = doc["code"]
            return cls(
                activity=doc["activity"],
                agent=doc["agent"],
                started_at=doc["started_at"],
                ended_at=doc["ended_at"],
                code=CodeVersion(code["package"], code["version"], code.get("git_commit"), code.get("dirty")),
                inputs=doc["inputs"],
                outputs=doc["outputs"],
                parents=tuple(doc["parents"]),
                params=doc["params"],
            )
        except (KeyError, TypeError) as exc:
            raise RecordError(f"provenance record lacks or mistypes field {exc}") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> Record:
        """Parse stored bytes; refuse them unless they are exactly the canonical encoding."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise RecordError(f"provenance record is not JSON: {exc}") from None
        record = cls.from_json(doc)
        if record.canonical_bytes() != bytes(data):
            raise RecordError("provenance record bytes are not RFC 8785 canonical JSON")
        return record


def put_record(store: ContentStore, record: Record) -> str:
    """Store the canonical bytes (pinned); the returned CID is the record's identity."""
    return store.put_bytes(record.canonical_bytes(), pin=True)


def load_record(store: ContentStore, cid: str) -> Record:
    """Fetch, re-derive the CID from the bytes, and parse. Raises RecordError naming the CID."""
    version = cid_version_of(cid)
    try:
        data = store.get(cid)
    except BlockNotFound:
        raise RecordError(f"record {cid} is not in the content store") from None
    except CorruptBlock as exc:
        raise RecordError(f"record {cid} is corrupt in the content store: {exc}") from None
    if cid_for_bytes(data, cid_version=version) != cid:
        raise RecordError(f"record {cid}: stored bytes hash to a different CID")
    try:
        return Record.from_bytes(data)
    except RecordError as exc:
        raise RecordError(f"record {cid}: {exc}") from None


def cid_version_of(cid: str) -> int:
    """The CID's version (0 or 1), which its bytes are rehashed under; RecordError if it is no CID."""
    try:
        return _parse_cid(cid).version
    except (InvalidCID, ValueError, TypeError) as exc:
        raise RecordError(f"{cid!r} is not a valid CID: {exc}") from None


def topological_order(records: Mapping[str, Record]) -> list[str]:
    """Parents before children, ties by CID (parents outside `records` are ignored)."""
    sorter = graphlib.TopologicalSorter(
        {cid: sorted(p for p in record.parents if p in records) for cid, record in sorted(records.items())}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        raise RecordError(f"provenance records form a cycle: {exc.args[1]}") from None
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order.extend(ready)
        sorter.done(*ready)
    return order


def to_prov(records: Mapping[str, Record]) -> ProvDocument:
    """W3C PROV: each record is an activity that used its inputs, generated its outputs,
    was associated with its agent and informed by its parent records."""
    doc = ProvDocument()
    doc.add_namespace("ipfs", "ipfs://")
    doc.add_namespace("caravan", "https://caravan.invalid/ns#")
    entities: dict[str, Any] = {}

    def entity(data_cid: str, label: str | None) -> Any:
        if data_cid not in entities:
            entities[data_cid] = doc.entity(f"ipfs:{data_cid}", {"prov:label": label} if label else None)
        return entities[data_cid]

    for cid, record in records.items():
        commit = (record.code.git_commit or "-") + ("+dirty" if record.code.dirty else "")
        activity = doc.activity(
            f"ipfs:{cid}",
            dt.datetime.strptime(record.started_at, _TIME).replace(tzinfo=dt.UTC),
            dt.datetime.strptime(record.ended_at, _TIME).replace(tzinfo=dt.UTC),
            {
                "prov:type": f"caravan:{record.activity}",
                "caravan:code": f"{record.code.package}=={record.code.version}@{commit}",
                "caravan:params": json.dumps(_plain(record.params), sort_keys=True),
            },
        )
        agent = doc.agent(f"caravan:agent/{_local(record.agent)}", {"prov:label": record.agent})
        doc.wasAssociatedWith(activity, agent)
        for name, data_cid in record.inputs.items():
            doc.used(activity, entity(data_cid, None), other_attributes={"prov:role": name})
        for name, data_cid in record.outputs.items():
            doc.wasGeneratedBy(entity(data_cid, name), activity, other_attributes={"prov:role": name})
        for parent in record.parents:
            doc.wasInformedBy(activity, f"ipfs:{parent}")
    return doc


def prov_json(records: Mapping[str, Record]) -> str:
    """The records (by CID) as W3C PROV-JSON text: what `caravan trace --prov` prints and each run stores."""
    return to_prov(records).serialize(format="json")


def _local(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _validate(record: Record) -> None:
    if not _NAME.match(record.activity):
        raise RecordError(f"activity {record.activity!r} must be a lowercase name such as {ACTIVITIES}")
    if not record.agent or not isinstance(record.agent, str):
        raise RecordError(f"record {record.activity!r} needs an agent (who or what ran it)")
    for label, moment in (("started_at", record.started_at), ("ended_at", record.ended_at)):
        try:
            dt.datetime.strptime(moment, _TIME)
        except (TypeError, ValueError):
            raise RecordError(
                f"{label}={moment!r} must look like 2025-01-31T12:00:00Z; use utc_time()"
            ) from None
    if record.ended_at < record.started_at:
        raise RecordError(
            f"record {record.activity!r} ends ({record.ended_at}) before it starts ({record.started_at})"
        )
    for kind, mapping in (("input", record.inputs), ("output", record.outputs)):
        for name, cid in mapping.items():
            if not _NAME.match(str(name)):
                raise RecordError(f"{kind} name {name!r} must be a lowercase identifier")
            cid_version_of(cid)
    _check_parents(record.parents)
    if record.code.dirty not in (None, True, False):
        raise RecordError(f"code.dirty must be true, false or absent, not {record.code.dirty!r}")
    if record.activity == WEIGHTING and WeightingRecord.WEIGHTS not in record.outputs:
        raise RecordError(
            f"a weighting record must list its weights table as output {WeightingRecord.WEIGHTS!r}"
        )


def _check_parents(parents: Sequence[str]) -> None:
    for cid in parents:
        cid_version_of(cid)
    if len(set(parents)) != len(parents):
        raise RecordError(f"record parents repeat a CID: {list(parents)}")


def records_by_cid(store: ContentStore, cids: Iterable[str]) -> dict[str, Record]:
    """Each CID's record, loaded and checked by `load_record`: the mapping `prov_json` takes."""
    return {cid: load_record(store, cid) for cid in cids}
