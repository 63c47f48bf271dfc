"""Partitions by dataset version: a version's run reads only its own pinned inputs, so old runs reproduce."""

from __future__ import annotations

import dagster as dg

dataset_versions = dg.DynamicPartitionsDefinition(name="dataset_version")
