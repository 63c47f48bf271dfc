"""Stored tables against those made again: rows with NaN equal to itself, scores aligned by
example, left-out values and basis points by contributor."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def aligned_scores(first: pa.Table, second: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``first``'s example ids and both tables' scores in that order (NaN where ``second`` lacks one)."""
    got = dict(zip(second["example_id"].to_pylist(), second["score"].to_pylist(), strict=True))
    ids = first["example_id"].to_pylist()
    return (ids, first["score"].to_numpy(zero_copy_only=False).astype(np.float64),
            np.asarray([got.get(e, np.nan) for e in ids], dtype=np.float64))


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """``a`` has ``b``'s columns and (cast to ``b``'s types) equals it, a missing number (NaN) equal to
    itself: Arrow holds NaN != NaN, so a table with a gap would never equal its own replay."""
    return a.column_names == b.column_names and _nan_as_null(a.cast(b.schema)).equals(_nan_as_null(b))


def _nan_as_null(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if pa.types.is_floating(field.type):
            col = table.column(i)
            table = table.set_column(i, field, pc.if_else(pc.is_nan(col), pa.scalar(None, field.type), col))
    return table


def left_out_values(table: pa.Table | None) -> dict[str, tuple[float, ...]]:
    """"contributor (role)" -> (value, value_se, copies_value): the first two move pay, the last says how
    much of a provider's value its copies were (an auditor reads it)."""
    if table is None:
        return {}
    columns = [table[c].to_pylist() for c in ("value", "value_se", "copies_value")]
    return dict(zip(_who(table), zip(*columns, strict=True), strict=True))


def left_out_runs(table: pa.Table | None) -> dict[str, tuple[float, ...]]:
    """"contributor (role)" -> its value at each seed (``value_runs``, whose mean is its value)."""
    if table is None:
        return {}
    return dict(zip(_who(table), map(tuple, table["value_runs"].to_pylist()), strict=True))


def _who(table: pa.Table) -> list[str]:
    """Each left-out row's contributor and role: one name may provide and label."""
    names, roles = table["contributor"].to_pylist(), table["role"].to_pylist()
    return [f"{c} ({r})" for c, r in zip(names, roles, strict=True)]


def bps(table: pa.Table) -> dict[tuple[str, str], int]:
    rows = table.select(["contributor", "role", "weight_bps"]).to_pylist()
    return {(r["contributor"], r["role"]): r["weight_bps"] for r in rows}
