"""A small but complete lineage in a blockstore: raw file -> snapshot -> labels -> training -> weights."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass

import pyarrow as pa
from eth_account import Account

from provenance.records import CodeVersion, Record, put_record, utc_time
from provenance.runs import store_weights
from schemas import TOTAL_BPS
from storage import ContentStore, snapshot_parquet

CODE = CodeVersion("caravan", "0.1.0", "0" * 40)


@dataclass(frozen=True)
class SampleRun:
    raw_cid: str
    snapshot_cid: str
    weights_cid: str
    weights: pa.Table
    records: dict[str, str]  # activity -> record CID
    keys: dict[str, str]  # address -> private key of each contributor (test-only keys)

    @property
    def head(self) -> str:
        return self.records["weighting"]


def _time(minute: int) -> str:
    return utc_time(dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=minute))


def split_bps(scores: list[float], total: int = TOTAL_BPS) -> list[int]:
    """Largest-remainder rounding: integers summing exactly to `total`."""
    raw = [s / sum(scores) * total for s in scores]
    bps = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - bps[i], reverse=True)[: total - sum(bps)]:
        bps[i] += 1
    return bps


def build_sample_run(store: ContentStore, *, n_examples: int, n_contributors: int, seed: int) -> SampleRun:
    rng = random.Random(seed)
    accounts = [Account.from_key(rng.randbytes(32)) for _ in range(n_contributors)]
    ids = [f"c{i:04d}" for i in range(n_contributors)]
    raw = "\n".join(f"{i},{rng.random():.6f},{ids[i % n_contributors]}" for i in range(n_examples)).encode()
    raw_cid = store.put_bytes(raw)
    example_ids = [hashlib.sha256(line).hexdigest() for line in raw.split(b"\n")]
    examples = pa.table(
        {
            "example_id": example_ids,
            "provider": [ids[i % n_contributors] for i in range(n_examples)],
            "x": [rng.random() for _ in range(n_examples)],
            "source": ["raw.csv"] * n_examples,
        }
    )
    snapshot_cid = store.put_bytes(snapshot_parquet(examples))
    annotations_cid = store.put_bytes(
        snapshot_parquet(pa.table({"example_id": example_ids, "label": [i % 3 for i in range(n_examples)]}))
    )
    model_cid = store.put_bytes(rng.randbytes(4096))
    scores = [rng.random() + 0.01 for _ in range(n_contributors)]
    weights = pa.table(
        {
            "contributor": ids,
            "address": [a.address for a in accounts],
            "role": ["provider"] * n_contributors,
            "score": scores,
            "weight_bps": split_bps(scores),
        }
    )
    weights_cid = store_weights(store, weights)

    def rec(activity: str, minute: int, inputs: dict, outputs: dict, parents: list[str]) -> str:
        record = Record(
            activity=activity,
            agent="caravan-test",
            started_at=_time(minute),
            ended_at=_time(minute + 1),
            code=CODE,
            inputs=inputs,
            outputs=outputs,
            parents=tuple(parents),
            params={"seed": seed},
        )
        return put_record(store, record)

    records: dict[str, str] = {}
    records["ingest"] = rec("ingest", 0, {"raw": raw_cid}, {"examples": snapshot_cid}, [])
    records["labeling_export"] = rec(
        "labeling_export",
        2,
        {"examples": snapshot_cid},
        {"annotations": annotations_cid},
        [records["ingest"]],
    )
    records["training"] = rec(
        "training",
        4,
        {"examples": snapshot_cid, "annotations": annotations_cid},
        {"model": model_cid},
        [records["labeling_export"], records["ingest"]],
    )
    records["weighting"] = rec(
        "weighting", 6, {"model": model_cid}, {"contributor_weights": weights_cid}, [records["training"]]
    )
    keys = {a.address: "0x" + bytes(a.key).hex() for a in accounts}
    return SampleRun(raw_cid, snapshot_cid, weights_cid, weights, records, keys)
