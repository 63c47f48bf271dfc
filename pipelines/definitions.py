"""The one Dagster `Definitions` of Caravan; `CARAVAN_DEPLOYMENT` picks the resource set."""

import dagster as dg

from pipelines import automation, checks, sharding
from pipelines.assets import ingest, labeling, review, royalties, training
from pipelines.resources import resources_for

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([ingest, labeling, training, review, royalties]),
    asset_checks=checks.all_checks,
    jobs=[
        automation.labeling_sync_job,
        automation.attribution_job,
        automation.settlement_job,
        sharding.sharded_features_job,
    ],
    sensors=[automation.annotation_sensor],
    schedules=[automation.daily_attribution, automation.hourly_settlement],
    resources=resources_for(),
)
