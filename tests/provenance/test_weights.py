"""Weights tables: every contract breach is named before anything reaches the chain."""

from __future__ import annotations

import pyarrow as pa
import pytest

from provenance.errors import WeightsError
from provenance.merkle import SHARE_LEAF, verify_proof
from provenance.weights import read_weights, share_leaves, validate_weights, weights_snapshot

A = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
B = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"


def _table(addresses: list, bps: list, roles: list | None = None, ids: list | None = None) -> pa.Table:
    n = len(addresses)
    return pa.table(
        {
            "contributor": ids or [f"c{i}" for i in range(n)],
            "address": addresses,
            "role": roles or ["provider"] * n,
            "score": [1.0] * n,
            "weight_bps": bps,
        }
    )


def test_leaves_sum_per_address_and_proofs_verify() -> None:
    table = _table([B, A, B], [2500, 5000, 2500], ids=["b1", "a", "b2"])
    leaves = share_leaves(table)
    assert leaves.leaves == tuple(sorted([(A, 5000), (B, 5000)]))
    for i, value in enumerate(leaves.tree.values):
        assert verify_proof(leaves.root, SHARE_LEAF, value, leaves.tree.proof(i))


def test_snapshot_is_deterministic_and_round_trips() -> None:
    table = _table([A, B], [6000, 4000])
    data = weights_snapshot(table)
    assert data == weights_snapshot(table.take([1, 0]))
    assert share_leaves(read_weights(data)).root == share_leaves(table).root


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (_table([A, B], [6000, 3999]), "sum to 9999 bps, expected exactly 10000"),
        (_table([A, B], [6000, 4001]), "sum to 10001"),
        (_table([A.lower(), B], [6000, 4000]), "not EIP-55 checksummed"),
        (_table(["0x" + "0" * 40, B], [6000, 4000]), "zero address"),
        (_table(["0x1234", B], [6000, 4000]), "not a 20-byte hex"),
        (_table([A, B], [-1, 10001]), "non-negative integer"),
        (_table([A, B], [6000, 4000], roles=["provider", "boss"]), "role 'boss'"),
        (_table([A, B], [6000, 4000], ids=["x", "x"]), "appears twice"),
        (_table([], []), "empty"),
        (pa.table({"address": [A]}), "lacks column"),
    ],
)
def test_bad_weights_are_named(table: pa.Table, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        validate_weights(table)
