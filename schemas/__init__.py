"""Shared names of the contracts between rooms: the ground floor every room may import.

Why it exists: a contract between two rooms (a schema, a constant) must be defined once, by the
room that produces it, and imported from its public face. Where the house's import table forbids
that import, the contract lives here instead. ``contributor_weights`` is such a case: ``attribution``
produces the table but may import nothing from the project, while ``provenance`` validates it,
roots it on chain and snapshots it, and may import only ``storage``.

This package is a plain library: it imports nothing from the project (only pyarrow), holds no
logic beyond the definitions, and every room, ``bench/`` and ``tests/`` may import it. Use this
face only, not its modules.

- ``TOTAL_BPS``: the basis points one weights table splits (10,000).
- ``ROLES``: ``("provider", "labeler")``, the values of the ``role`` column.
- ``WEIGHTS_SCHEMA``: the Arrow schema of ``contributor_weights`` (``contributor``, ``address``,
  ``role``, ``score``, ``weight_bps``); ``WEIGHTS_COLUMNS`` its column names in order.
- ``CREDIT_SCHEMA``: the Arrow schema of ``example_credit`` (``example_id``, ``provider``,
  ``share``), made at ingest, applied by ``attribution.ContributorSplit``: duplicates are paid
  once, to the first-registered provider(s); ``CREDIT_COLUMNS`` its column names.
"""

from schemas.credit import CREDIT_COLUMNS, CREDIT_SCHEMA
from schemas.weights import ROLES, TOTAL_BPS, WEIGHTS_COLUMNS, WEIGHTS_SCHEMA

__all__ = ["CREDIT_COLUMNS", "CREDIT_SCHEMA", "ROLES", "TOTAL_BPS", "WEIGHTS_COLUMNS", "WEIGHTS_SCHEMA"]
