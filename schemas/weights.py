"""The ``contributor_weights`` contract: its columns, roles and the 10,000 basis points.

``attribution`` writes this table and ``provenance`` checks it, turns it into Merkle leaves and
snapshots it (the Parquet bytes whose CID a run names), so neither room may own it alone.
"""

from __future__ import annotations

import pyarrow as pa

TOTAL_BPS = 10_000
"""All rows of one ``contributor_weights`` table sum to exactly this many basis points."""

ROLES = ("provider", "labeler")
"""A contributor is paid as the provider of examples or as a labeler of them (the table's ``role``)."""

WEIGHTS_SCHEMA = pa.schema(
    [
        ("contributor", pa.string()),
        ("address", pa.string()),  # EIP-55 checksummed EVM address
        ("role", pa.string()),  # one of ROLES
        ("score", pa.float64()),
        ("weight_bps", pa.int64()),  # non-negative; all rows sum to TOTAL_BPS
    ]
)
WEIGHTS_COLUMNS = tuple(WEIGHTS_SCHEMA.names)
