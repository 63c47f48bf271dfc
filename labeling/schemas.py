"""Arrow schemas of the tables this room produces (DESIGN.md's data contracts)."""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

EXAMPLES_REQUIRED = ("example_id", "provider", "source")

ANNOTATIONS = pa.schema(
    [
        pa.field("annotation_id", pa.int64(), nullable=False),
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("annotator", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("created_at", TS, nullable=False),
        pa.field("updated_at", TS, nullable=False),
        pa.field("lead_time_s", pa.float64()),
    ]
)

CONSENSUS = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("n_votes", pa.int64(), nullable=False),
    ]
)

ANNOTATOR_QUALITY = pa.schema(
    [
        pa.field("annotator", pa.string(), nullable=False),
        pa.field("estimated_accuracy", pa.float64(), nullable=False),
        pa.field("n_annotations", pa.int64(), nullable=False),
        pa.field("agreement", pa.float64(), nullable=False),
        pa.field("mean_lead_time_s", pa.float64()),
        pa.field("gold_accuracy", pa.float64()),
        pa.field("n_gold", pa.int64(), nullable=False),
    ]
)

GOLD = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
    ]
)


def empty(schema: pa.Schema) -> pa.Table:
    """A table of `schema` with no rows, every column typed as the contract says."""
    return schema.empty_table()
