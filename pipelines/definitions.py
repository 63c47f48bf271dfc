"""The one Dagster `Definitions` of Caravan."""

from __future__ import annotations

import dagster as dg

defs = dg.Definitions(assets=[])
