"""Jobs, the annotation sensor, the daily attribution schedule and the hourly settlement schedule."""

import json

import dagster as dg

from labeling import ExportCursor, LabelingError, export_annotations
from pipelines.assets.labeling import cursor_path, project_spec
from pipelines.content_io import AssetIndex
from pipelines.partitions import dataset_versions
from pipelines.resources import (
    ChainResource,
    DatasetCatalog,
    LabelStudioResource,
    LedgerResource,
    StoreResource,
)

LABELING_STAGE = dg.AssetSelection.assets(
    "annotations"
).downstream().required_multi_asset_neighbors() - dg.AssetSelection.groups(
    "training", "review", "royalties"
)

labeling_sync_job = dg.define_asset_job(
    "labeling_sync",
    selection=LABELING_STAGE,
    description="Pull new annotations from Label Studio and recompute consensus and annotator quality.",
)
attribution_job = dg.define_asset_job(
    "attribution_run",
    selection=dg.AssetSelection.groups("training", "review", "royalties"),
    description="Train with attribution, flag likely mislabels for review in Label Studio, "
    "weigh contributors, and publish the royalty root.",
)


def _has_new_annotations(
    catalog: DatasetCatalog, labelstudio: LabelStudioResource, index: AssetIndex, version: str
) -> bool:
    """A read-only export from the last cursor: anything new, changed, withdrawn or deleted since then."""
    cursor_file = cursor_path(index, version)
    if not cursor_file.exists():
        return True
    cursor = ExportCursor.from_json(json.loads(cursor_file.read_text())["cursor"])
    client = labelstudio.client()
    project = client.ensure_project(project_spec(catalog, labelstudio, version))
    export = export_annotations(client, project, cursor)
    return export.changed  # new, changed or withdrawn rows, or deletions


@dg.sensor(job=labeling_sync_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def annotation_sensor(
    context: dg.SensorEvaluationContext,
    catalog: DatasetCatalog,
    labelstudio: LabelStudioResource,
    index: AssetIndex,
):
    """Starts a labeling sync for each dataset version whose Label Studio project has new annotations."""
    for version in context.instance.get_dynamic_partitions(dataset_versions.name):
        try:
            changed = _has_new_annotations(catalog, labelstudio, index, version)
        except (LabelingError, dg.Failure) as exc:
            context.log.warning(f"{version}: cannot check Label Studio: {exc}")
            continue
        if changed:
            yield dg.RunRequest(partition_key=version, run_key=None)


@dg.schedule(job=attribution_job, cron_schedule="0 3 * * *", default_status=dg.DefaultScheduleStatus.STOPPED)
def daily_attribution(context: dg.ScheduleEvaluationContext):
    """Nightly: recompute each dataset version's attribution run (nothing is sent when nothing changed)."""
    for version in context.instance.get_dynamic_partitions(dataset_versions.name):
        yield dg.RunRequest(
            partition_key=version, run_key=f"{version}:{context.scheduled_execution_time:%Y-%m-%d}"
        )


@dg.op(description="Close an epoch per served run: receipts batch (CID), record, funded Merkle root.")
def settle_open_epochs(
    context: dg.OpExecutionContext, store: StoreResource, chain: ChainResource, ledger: LedgerResource
) -> None:
    """Settle every served run with open receipts (`serving.settle_all`) and log each epoch closed;
    the op's `description` above, not this docstring, is what the Dagster UI shows."""
    from serving import settle_all

    # pending receipts are attributed first, with the run's model opened if its version is private
    done = settle_all(chain.client(), store.client(), ledger.ledger(), reader=store.reader())
    for s in done:
        context.log.info(f"settled {s.epoch_id}: {s.n_receipts} receipts, {s.total} wei, root {s.root}")
    context.add_output_metadata({"epochs": dg.MetadataValue.json([s.epoch_id for s in done])})


@dg.job(description="Settle the serving ledger's open receipts on chain (idempotent; safe to rerun).")
def settlement_job():
    """`settle_open_epochs` alone, run every hour by `hourly_settlement` once that schedule is turned on."""
    settle_open_epochs()


hourly_settlement = dg.ScheduleDefinition(
    job=settlement_job, cron_schedule="0 * * * *", default_status=dg.DefaultScheduleStatus.STOPPED
)
