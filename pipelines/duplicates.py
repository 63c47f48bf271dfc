"""Duplicates paid once: exact copies and near-duplicates grouped at ingest, credited to whoever
registered them first (the ``example_credit`` contract, ``schemas.CREDIT_SCHEMA``).

- Exact copies share an ``example_id`` (the sha256 of the canonical payload). The examples table
  keeps one row of each content: the row of the source registered first (ties by provider name).
- Near-duplicates, for numeric payloads only (numeric columns and fixed-width lists of numbers,
  e.g. tabular features or pixel arrays): every payload feature is standardized (centred, divided
  by its standard deviation over the distinct examples), and two examples closer (Euclidean) than
  ``NEAR_FRACTION`` of the data's own median nearest-neighbour distance are linked; a group is a
  connected set of links. The scale is each example's distance to the nearest example of another
  provider (median over examples), so a provider flooding copies of its own examples cannot shrink
  it; a known limit: when near-copies and their originals make up more than half of all examples,
  the median falls to the copies' spacing and most copies go ungrouped.
  Text and image payloads (strings, bytes, file references) get exact-copy grouping only, until
  embeddings exist to measure their distance.
- A group of ``m`` distinct examples earns the mean of its members' scores, once: each member's
  credit weighs ``1/m``, all of it paid to the provider(s) of the member(s) registered first.
  Providers whose sources were registered at the same time share equally. Copies therefore
  gain their provider nothing and dilute nobody; a provider whose every example duplicates an
  earlier-registered one earns nothing as a provider (listed in ``Grouping.unpaid``).

Pure logic (Arrow in, Arrow out), deterministic: the same rows and registration times give the
same credit table bytes, whatever their input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from schemas import CREDIT_SCHEMA

NEAR_FRACTION = 0.25  # of the median nearest-neighbour distance (bench/contributor_value.py's figure)
RULE = (
    "a duplicate group earns the mean of its members' scores, once, paid to the provider(s) of its "
    "first-registered member(s); sources registered at the same time share equally"
)
EXACT_METHOD = "same example_id (sha256 of the canonical payload)"
NEAR_METHOD = (
    "numeric payload, each feature standardized; examples closer (euclidean) than fraction x the median "
    "distance from an example to the nearest example of another provider are linked; a group is a "
    "connected set of links"
)
NOT_NUMERIC = "exact copies only: text/image payloads get near-duplicate grouping once embeddings exist"


@dataclass(frozen=True)
class Grouping:
    """How duplicates were grouped (what the ingest record states) and who is paid for what."""

    credit: pa.Table  # example_credit
    exact_groups: int  # contents that arrived more than once
    exact_copies: int  # rows dropped as exact copies
    exact_shared: int  # contents whose credit is shared by providers registered at the same time
    near: dict[str, Any]  # method, fraction, median distance, threshold, groups, copies (or why not)
    unpaid: tuple[str, ...]  # providers credited with nothing: every example of theirs is a copy
    providers: tuple[str, ...] = field(default=())  # every provider in the input

    def to_params(self) -> dict[str, Any]:
        """The ingest record's ``duplicates`` parameter."""
        return {
            "rule": RULE,
            "exact": {
                "method": EXACT_METHOD,
                "groups": self.exact_groups,
                "copies": self.exact_copies,
                "shared_same_time": self.exact_shared,
            },
            "near": self.near,
            "unpaid_providers": list(self.unpaid),
        }


def group_duplicates(
    examples: pa.Table,
    claimants: Sequence[tuple[str, Sequence[str]]],
    payload: Sequence[str],
    providers: Sequence[str],
    exact: tuple[int, int, int],
    fraction: float = NEAR_FRACTION,
) -> Grouping:
    """The credit table of deduplicated ``examples`` (sorted by ``example_id``).

    ``claimants[i]`` is example i's earliest registration time and the providers that registered
    its content then (sorted); ``exact`` is (groups, copies, shared) of the exact-copy pass.
    """
    n = examples.num_rows
    matrix, why_not = numeric_payload(examples, payload)
    labels = np.arange(n)
    if matrix is not None and n >= 3:
        owner = np.asarray(examples["provider"].to_pylist(), dtype=object).astype(str)
        labels, near = _near_groups(matrix, owner, fraction)
    else:
        near = {"method": "none", "reason": why_not or "fewer than 3 examples"}
    members: dict[int, list[int]] = {}
    for i, g in enumerate(labels.tolist()):
        members.setdefault(g, []).append(i)
    ids = examples["example_id"].to_pylist()
    rows: list[tuple[str, str, float]] = []
    for group in members.values():
        first = min(claimants[i][0] for i in group)
        payees = sorted({p for i in group if claimants[i][0] == first for p in claimants[i][1]})
        share = 1.0 / (len(group) * len(payees))
        rows.extend((ids[i], p, share) for i in group for p in payees)
    rows.sort()
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[], [], []]
    credit = pa.table(columns, schema=CREDIT_SCHEMA)
    paid = set(pc.unique(credit["provider"]).to_pylist())
    everyone = tuple(sorted(set(providers)))
    return Grouping(
        credit=credit,
        exact_groups=exact[0],
        exact_copies=exact[1],
        exact_shared=exact[2],
        near=near,
        unpaid=tuple(p for p in everyone if p not in paid),
        providers=everyone,
    )


def numeric_payload(table: pa.Table, payload: Sequence[str]) -> tuple[np.ndarray | None, str | None]:
    """The payload as a float64 matrix (columns by name; a fixed-width list column gives one feature
    per position), or None and why not (a text, bytes or ragged column, or a missing value)."""
    parts = []
    for name in sorted(payload):
        col = table[name].combine_chunks()
        t = col.type
        if col.null_count:
            return None, f"column {name!r} has missing values; {NOT_NUMERIC}"
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            parts.append(np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)[:, None])
            continue
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            v = t.value_type
            if not (pa.types.is_integer(v) or pa.types.is_floating(v) or pa.types.is_boolean(v)):
                return None, f"column {name!r} holds lists of {v}; {NOT_NUMERIC}"
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths.min() != lengths.max() or lengths.min() == 0):
                return None, f"column {name!r} holds lists of different lengths; {NOT_NUMERIC}"
            flat = pc.list_flatten(col)
            if flat.null_count:
                return None, f"column {name!r} has missing values; {NOT_NUMERIC}"
            width = int(lengths[0]) if len(lengths) else 0
            parts.append(np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(-1, width))
            continue
        return None, f"column {name!r} is {t}; {NOT_NUMERIC}"
    if not parts:
        return None, "no payload column"
    x = np.hstack(parts)
    if not np.isfinite(x).all():
        return None, f"the payload holds NaN or inf; {NOT_NUMERIC}"
    return x, None


def _near_groups(x: np.ndarray, owner: np.ndarray, fraction: float) -> tuple[np.ndarray, dict[str, Any]]:
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    tree = cKDTree(z)
    median = float(np.median(_spacing(z, owner, tree)))
    threshold = fraction * median
    pairs = tree.query_pairs(threshold, output_type="ndarray") if threshold > 0 else np.zeros((0, 2), int)
    if len(pairs):  # strictly closer than the threshold
        pairs = pairs[np.linalg.norm(z[pairs[:, 0]] - z[pairs[:, 1]], axis=1) < threshold]
    n = len(z)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    return labels, {
        "method": NEAR_METHOD,
        "fraction": fraction,
        "median_nn_distance": _sig(median),
        "threshold": _sig(threshold),
        "features": int(z.shape[1]),
        "groups": int((sizes > 1).sum()),
        "copies": int((sizes[sizes > 1] - 1).sum()),
    }


def _spacing(z: np.ndarray, owner: np.ndarray, tree: cKDTree) -> np.ndarray:
    """Each example's distance to the nearest example of another provider (with one provider: to
    the nearest other example). A provider's copies of its own examples do not shrink the scale."""
    names = np.unique(owner)
    if len(names) < 2:
        return tree.query(z, k=2)[0][:, 1]
    out = np.empty(len(z))
    for name in names.tolist():
        mine = owner == name
        out[mine] = cKDTree(z[~mine]).query(z[mine])[0]
    return out


def _sig(v: float) -> float:
    """Six significant digits: what a record states (the grouping uses the full value)."""
    return float(f"{v:.6g}")
