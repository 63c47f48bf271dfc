"""Reading the contract tables' id and label columns, with one error naming a missing column."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ContributorError


def string_column(table: pa.Table, name: str, col: str) -> list[str | None]:
    if col not in table.column_names:
        raise ContributorError(f"{name} table has no {col!r} column (columns: {table.column_names})")
    return pc.cast(table[col], pa.string()).to_pylist()
