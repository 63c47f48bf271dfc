"""Ingest stage: a registered source becomes content-hashed `examples`, and their pinned snapshot."""

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.content_io import AssetIndex, StoredValue, StoreResource, store_value
from pipelines.datasets import DatasetError, Payload, to_examples
from pipelines.duplicates import few_dimensions
from pipelines.lineage import LineageResource, now
from pipelines.partitions import dataset_versions
from pipelines.report import md_table
from pipelines.resources import DatasetCatalog
from provenance import INGEST, SNAPSHOT, IngestRecord, SnapshotRecord
from storage import snapshot_parquet


@dg.asset(partitions_def=dataset_versions, group_name="ingest", kinds={"arrow"})
def raw_dataset(
    context: dg.AssetExecutionContext, catalog: DatasetCatalog, store: StoreResource, lineage: LineageResource
) -> dg.Output[StoredValue]:
    """The registered source of this version as `examples` (one row per distinct content)."""
    started, version = now(), context.partition_key
    entry = catalog.lookup(version)
    client = store.client()
    payload = Payload.of(entry.get("labeling"))
    try:
        examples, report = to_examples(catalog.load(version, client), catalog.registered_at(version), payload)
    except DatasetError as exc:
        raise dg.Failure(str(exc)) from exc
    grouping = report.grouping
    files = entry["sources"]  # pinned when the version was registered
    inputs = {f"{IngestRecord.SOURCE_PREFIX}{i}": f["cid"] for i, f in enumerate(files)}
    stored = store_value(client, examples)
    credit_cid = store_value(client, grouping.credit).cid
    record = lineage.write(
        client,
        INGEST,
        version,
        started=started,
        inputs=inputs,
        outputs={IngestRecord.EXAMPLES: stored.cid, IngestRecord.EXAMPLE_CREDIT: credit_cid},
        params={
            "hf": entry["hf"],
            "provider": entry["provider"],
            # each file by name, CID, provider and registration time (the claim's, where its provider
            # claimed it on chain: `claimed_by`; else the operator's registration on chain, `dated_by`,
            # where it held a key; and the image files a table names by path, its `refs`),
            # and what labelers read: a replay re-derives the examples and
            # their credit from them alone (`pipelines.replay.check_ingest`)
            "source_files": [
                {
                    "name": f["name"],
                    "cid": f["cid"],
                    **({"provider": f["provider"]} if f.get("provider") else {}),
                    "registered_at": f.get("registered_at") or "",
                    **({"claimed_by": f["claimed_by"]} if f.get("claimed_by") else {}),
                    **({"dated_by": f["dated_by"]} if f.get("dated_by") else {}),
                    **({"refs": f["refs"]} if f.get("refs") else {}),
                }
                for f in files
            ],
            # what the version declared at registration, before any label or training: the labeling spec,
            # and the validation set influence is measured against and the gold labelers are graded on
            "labeling": entry.get("labeling"),
            "validation": entry.get("validation"),
            "gold": entry.get("gold"),
            **({"registered_at": entry.get("registered_at") or ""} if entry["hf"] else {}),
            "duplicates_dropped": report.duplicates_dropped,
            "duplicates": grouping.to_params(),
        },
    )
    if few := few_dimensions(grouping.near):
        context.log.warning(f"near-duplicates: {few}")
    if grouping.unpaid:
        context.log.warning(
            f"providers credited with nothing, every example of theirs duplicating an earlier-registered "
            f"one: {', '.join(grouping.unpaid)}"
        )
    return dg.Output(
        stored,
        metadata={
            "source": entry["hf"] or ", ".join(f["name"] for f in files),
            "record_cid": record,
            "example_credit_cid": credit_cid,
            "rows_in": report.rows_in,
            "dagster/row_count": report.examples,
            "duplicates_dropped": report.duplicates_dropped,
            "near_duplicates": grouping.near_summary(),
            "unpaid_duplicate_providers": dg.MetadataValue.json(list(grouping.unpaid)),
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
