"""Dagster definitions (assets, resources, checks, automation) and the `caravan` CLI."""
