"""The `contributor_weights` table as Merkle leaves, checked before anything touches the chain.

Rows (`schemas.WEIGHTS_SCHEMA`): `contributor`, `address` (EIP-55 checksummed), `role`
(`schemas.ROLES`: provider | labeler), `score`, `weight_bps` (all rows sum to exactly
`schemas.TOTAL_BPS`, 10,000). One contributor id may appear once per role;
several rows may share an address, so leaves sum basis points per address: one leaf
`(address, weight_bps)` per payee.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
from eth_utils import is_checksum_address, is_hex_address

from provenance.errors import WeightsError
from provenance.merkle import SHARE_LEAF, StandardMerkleTree
from schemas import ROLES, TOTAL_BPS, WEIGHTS_COLUMNS, WEIGHTS_SCHEMA
from storage import read_parquet, snapshot_parquet

ZERO_ADDRESS = "0x" + "0" * 40


@dataclass(frozen=True)
class ShareLeaves:
    """Validated leaves, sorted by address, and their tree."""

    leaves: tuple[tuple[str, int], ...]
    tree: StandardMerkleTree

    @property
    def root(self) -> str:
        """The tree's 0x-hex root: what a run publishes and auditors recompute from the stored weights."""
        return self.tree.root


def validate_weights(table: pa.Table) -> list[tuple[str, int]]:
    """Check every row; return `(address, weight_bps)` summed per address, sorted by address."""
    missing = [c for c in WEIGHTS_COLUMNS if c not in table.column_names]
    if missing:
        raise WeightsError(f"contributor_weights lacks column(s) {missing}; expected {list(WEIGHTS_COLUMNS)}")
    if table.num_rows == 0:
        raise WeightsError("contributor_weights is empty: a run needs at least one contributor")
    rows = table.select(["contributor", "address", "role", "weight_bps"]).to_pylist()
    per_address: dict[str, int] = defaultdict(int)
    seen: set[tuple[str, str]] = set()
    for i, row in enumerate(rows):
        where = f"row {i} (contributor {row['contributor']!r})"
        address, bps, role = row["address"], row["weight_bps"], row["role"]
        check_address(where, address)
        if role not in ROLES:
            raise WeightsError(f"{where}: role {role!r} must be one of {ROLES}")
        if (row["contributor"], role) in seen:
            raise WeightsError(f"{where}: contributor appears twice as {role}; aggregate the rows first")
        seen.add((row["contributor"], role))
        if isinstance(bps, bool) or not isinstance(bps, int) or bps < 0:
            raise WeightsError(f"{where}: weight_bps {bps!r} must be a non-negative integer")
        per_address[address] += bps
    total = sum(per_address.values())
    if total != TOTAL_BPS:
        raise WeightsError(
            f"contributor_weights sum to {total} bps, expected exactly {TOTAL_BPS}: "
            "rescale with largest-remainder rounding so the split is exact"
        )
    return sorted(per_address.items())


def share_leaves(table: pa.Table) -> ShareLeaves:
    """The table's payout leaves (validated, summed per address) and their tree; WeightsError if invalid."""
    leaves = validate_weights(table)
    return ShareLeaves(tuple(leaves), StandardMerkleTree.of(leaves, SHARE_LEAF))


def weights_snapshot(table: pa.Table) -> bytes:
    """Deterministic Parquet bytes for a weights table (the bytes whose CID a run names)."""
    validate_weights(table)
    return snapshot_parquet(table.select(list(WEIGHTS_COLUMNS)).cast(WEIGHTS_SCHEMA), sort_by="contributor")


def read_weights(data: bytes) -> pa.Table:
    """A weights table read back from its stored Parquet bytes, unvalidated (`share_leaves` checks it)."""
    return read_parquet(data)


def check_address(where: str, address: object) -> None:
    """Refuse (WeightsError, prefixed with `where`) anything but a non-zero, EIP-55 checksummed EVM
    address: the only kind a payout leaf may name."""
    if not isinstance(address, str) or not is_hex_address(address):
        raise WeightsError(f"{where}: address {address!r} is not a 20-byte hex EVM address")
    if address.lower() == ZERO_ADDRESS:
        raise WeightsError(
            f"{where}: the zero address cannot be paid; map the contributor to its real address"
        )
    if not is_checksum_address(address):
        raise WeightsError(
            f"{where}: address {address!r} is not EIP-55 checksummed; "
            "write it with eth_utils.to_checksum_address"
        )
