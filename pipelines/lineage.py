"""Each stage's provenance record, written once: a rerun with the same content reuses the record.

The index (one small file per activity and dataset version) names the latest record; writing goes
through `provenance.put_stage_record`, which keeps that record unless its inputs, outputs,
parents, parameters or code differ (records carry wall-clock times, so a fresh one on every rerun
would give the same run a second lineage).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from provenance import (
    INGEST,
    CodeVersion,
    IngestRecord,
    Record,
    code_version,
    load_record,
    put_stage_record,
    utc_time,
)
from storage import ContentStore, public_store

AGENT = "caravan-pipeline"


@functools.cache
def pipeline_code() -> CodeVersion:
    """The code version, read once per process so every record of a run names the same commit."""
    return code_version()


class LineageResource(dg.ConfigurableResource):
    """Where each (activity, dataset version) finds its latest record CID."""

    index_dir: str  # from the settings (`resources_for`)

    def _path(self, activity: str, version: str) -> Path:
        return Path(self.index_dir) / activity / f"{version}.json"

    def latest(self, activity: str, version: str) -> str | None:
        """The CID of the latest record of `activity` for `version`, if that stage ever ran."""
        path = self._path(activity, version)
        return json.loads(path.read_text())["cid"] if path.exists() else None

    def cid_of(self, activity: str, version: str) -> str:
        """The `latest` record's CID, for a step that needs that stage to have run (a Failure otherwise)."""
        cid = self.latest(activity, version)
        if cid is None:
            raise dg.Failure(
                f"no {activity} record for dataset version {version!r}: materialize that stage first"
            )
        return cid

    def credit_cid(self, store: ContentStore, version: str) -> str | None:
        """The `example_credit` the version's ingest record names (None: the examples came without an
        ingest record, or were ingested before credit existed: each example then pays its provider)."""
        ingest = self.latest(INGEST, version)
        return load_record(store, ingest).outputs.get(IngestRecord.EXAMPLE_CREDIT) if ingest else None

    def write(
        self,
        store: ContentStore,
        activity: str,
        version: str,
        *,
        started: dt.datetime,
        inputs: Mapping[str, str],
        outputs: Mapping[str, str],
        parents: tuple[str, ...] = (),
        params: Mapping[str, Any] | None = None,
    ) -> str:
        """Record the stage's run of `activity` on `version` (public, pinned) and index it as the latest;
        returns its CID, the previous record's where nothing but the times differs."""
        record = Record(
            activity=activity,
            agent=AGENT,
            started_at=utc_time(started),
            ended_at=utc_time(),
            code=pipeline_code(),
            inputs=inputs,
            outputs=outputs,
            parents=parents,
            params=params or {},
        )
        path = self._path(activity, version)
        known = json.loads(path.read_text())["cid"] if path.exists() else None
        # records stay public (a private version's records name its ciphertext CIDs)
        cid = put_stage_record(public_store(store), record, previous=known)
        if cid == known:
            return cid
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cid": cid}))
        tmp.replace(path)
        return cid


def now() -> dt.datetime:
    """The current time, timezone-aware UTC: a stage's `started` for its record (`LineageResource.write`)."""
    return dt.datetime.now(dt.UTC)
