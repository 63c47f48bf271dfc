"""Ingest stage: a registered source becomes content-hashed `examples`, and their pinned snapshot."""

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.content_io import AssetIndex, StoredValue, StoreResource, store_value
from pipelines.datasets import SUFFIX_READERS, DatasetError, load_source, to_examples
from pipelines.lineage import LineageResource, now
from pipelines.partitions import dataset_versions
from pipelines.report import md_table
from pipelines.resources import DatasetCatalog
from provenance import INGEST, SNAPSHOT, IngestRecord, SnapshotRecord
from storage import snapshot_parquet


def source_files(source: str) -> list[Path]:
    """The raw files behind a source (none for a Hugging Face name), pinned so auditors reach raw data."""
    path = Path(source)
    if source.startswith("hf:") or not path.exists():
        return []
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIX_READERS)
    return [path]


@dg.asset(partitions_def=dataset_versions, group_name="ingest", kinds={"arrow"})
def raw_dataset(
    context: dg.AssetExecutionContext, catalog: DatasetCatalog, store: StoreResource, lineage: LineageResource
) -> dg.Output[StoredValue]:
    """The registered source of this version as `examples` (one row per distinct content)."""
    started, version = now(), context.partition_key
    entry = catalog.lookup(version)
    try:
        examples, report = to_examples(load_source(entry["source"], provider=entry["provider"]))
    except DatasetError as exc:
        raise dg.Failure(str(exc)) from exc
    client = store.client()
    files = source_files(entry["source"])
    inputs = {
        f"{IngestRecord.SOURCE_PREFIX}{i}": client.put_file(f, cid_version=1, pin=True)
        for i, f in enumerate(files)
    }
    stored = store_value(client, examples)
    record = lineage.write(
        client,
        INGEST,
        version,
        started=started,
        inputs=inputs,
        outputs={IngestRecord.EXAMPLES: stored.cid},
        params={
            "source": entry["source"],
            "provider": entry["provider"],
            "source_files": [f.name for f in files],
            "duplicates_dropped": report.duplicates_dropped,
        },
    )
    return dg.Output(
        stored,
        metadata={
            "source": entry["source"],
            "record_cid": record,
            "rows_in": report.rows_in,
            "dagster/row_count": report.examples,
            "duplicates_dropped": report.duplicates_dropped,
            "providers": report.providers,
        },
    )


@dg.asset(partitions_def=dataset_versions, group_name="ingest", kinds={"parquet", "ipfs"})
def dataset_snapshot(
    context: dg.AssetExecutionContext,
    raw_dataset: pa.Table,
    store: StoreResource,
    index: AssetIndex,
    lineage: LineageResource,
) -> dg.Output[dict]:
    """The examples as deterministic Parquet, pinned: its CID names this dataset version."""
    started, version = now(), context.partition_key
    data = snapshot_parquet(raw_dataset, sort_by="example_id")
    client = store.client()
    cid = client.put_bytes(data, cid_version=1, pin=True)
    record = lineage.write(
        client,
        SNAPSHOT,
        version,
        started=started,
        inputs={SnapshotRecord.EXAMPLES: index.cid_of("raw_dataset", version)},
        outputs={SnapshotRecord.SNAPSHOT: cid},
        parents=(lineage.cid_of(INGEST, version),),
    )
    counts = pc.value_counts(raw_dataset["provider"]).to_pylist()
    return dg.Output(
        {"cid": cid, "rows": raw_dataset.num_rows, "bytes": len(data), "record_cid": record},
        metadata={
            "snapshot_cid": cid,
            "record_cid": record,
            "dagster/row_count": raw_dataset.num_rows,
            "providers": dg.MetadataValue.md(
                md_table(["provider", "examples"], sorted((c["values"], c["counts"]) for c in counts))
            ),
        },
    )
