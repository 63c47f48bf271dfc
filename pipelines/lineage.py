"""Each stage's provenance record, written once: a rerun with the same content reuses the record.

Records carry wall-clock times, so writing a fresh one on every rerun would give the same
run a second lineage. The index (one small file per activity and dataset version) names the
latest record; a new record replaces it only when its inputs, outputs, parents, parameters
or code differ.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from provenance import CodeVersion, Record, code_version, load_record, put_record, utc_time
from storage import ContentStore

AGENT = "caravan-pipeline"


@functools.cache
def pipeline_code() -> CodeVersion:
    """The code version, read once per process so every record of a run names the same commit."""
    return code_version()


def _substance(record: Record) -> dict[str, Any]:
    doc = record.to_json()
    for moment in ("started_at", "ended_at", "agent"):
        doc.pop(moment)
    return doc


class LineageResource(dg.ConfigurableResource):
    """Where each (activity, dataset version) finds its latest record CID."""

    index_dir: str = ".caravan/lineage"

    def _path(self, activity: str, version: str) -> Path:
        return Path(self.index_dir) / activity / f"{version}.json"

    def cid_of(self, activity: str, version: str) -> str:
        path = self._path(activity, version)
        if not path.exists():
            raise dg.Failure(
                f"no {activity} record for dataset version {version!r}: materialize that stage first"
            )
        return json.loads(path.read_text())["cid"]

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
        if path.exists():
            known = json.loads(path.read_text())["cid"]
            if _substance(load_record(store, known)) == _substance(record):
                return known
        cid = put_record(store, record)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cid": cid}))
        tmp.replace(path)
        return cid


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
