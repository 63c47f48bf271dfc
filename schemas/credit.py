"""The ``example_credit`` contract: who is paid for each example's score, and how much of it.

``pipelines`` produces it at ingest (exact copies and near-duplicates grouped, each group's credit
given to the provider(s) of its first-registered member) and ``attribution`` applies it instead of
the examples' single ``provider`` column; ``attribution`` may import nothing from the project, so
the contract lives on the ground floor.

One row per (example, paid provider). ``share`` is the part of that example's score the provider
is credited with. An example's shares add up to its weight in its duplicate group: 1 for an
example with no copy, ``1/m`` for each member of a group of ``m`` (so the group's credit is the
mean of its members' scores, paid once, never ``m`` times); within that, providers whose sources
were registered at the same (earliest) time share equally. Its labelers' credit is scaled by the
same weight. A provider with no row here earns nothing as a provider.

``representative`` names the group's first-registered member (ties: the smallest ``example_id``;
an example without copies names itself). Valuing a provider by retraining without it
(``attribution.distinct_rows``), the members beyond the representative are copies: they count only
where they hurt, so flooding copies never raises a provider's value.
"""

from __future__ import annotations

import pyarrow as pa

CREDIT_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("provider", pa.string()),
        ("share", pa.float64()),  # in (0, 1]; an example's shares sum to 1/(its group's size)
        ("representative", pa.string()),  # example_id of its group's first-registered member
    ]
)
CREDIT_COLUMNS = tuple(CREDIT_SCHEMA.names)
