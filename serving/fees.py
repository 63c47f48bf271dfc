"""Integer fee splits: a price in the token's smallest unit shared out by basis points.

Hamilton's largest-remainder method: every payee gets the floor of its exact quota, then the
units left over go one each to the largest remainders (ties: lowest address), so the amounts
sum to the price exactly and each is within one unit of its exact share. Auditors recompute
a receipt's amounts from its price and basis points with this same function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def merge_bps(rows: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """One (address, bps) per address (a provider may also be a labeler), zeros dropped, sorted."""
    total: dict[str, int] = {}
    for address, bps in rows:
        total[address] = total.get(address, 0) + int(bps)
    return sorted((a, b) for a, b in total.items() if b > 0)


def split_price(price: int, weights: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """(address, amount) for every weight, amounts summing to ``price``; weights need a positive sum."""
    if isinstance(price, bool) or not isinstance(price, int) or price < 0:
        raise ValueError(f"price must be a non-negative integer, got {price!r}")
    denom = sum(b for _, b in weights)
    if denom <= 0 or any(b < 0 for _, b in weights):
        raise ValueError("weights must be non-negative with a positive sum")
    floors = [price * b // denom for _, b in weights]
    remainders = [price * b - f * denom for (_, b), f in zip(weights, floors, strict=True)]
    left = price - sum(floors)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], weights[i][0]))
    for i in order[:left]:
        floors[i] += 1
    return [(a, amount) for (a, _), amount in zip(weights, floors, strict=True)]


def totals_by_address(splits: Iterable[Iterable[tuple[str, int]]]) -> list[tuple[str, int]]:
    """Sum many receipts' amounts per address; zero totals are dropped (a leaf must be positive)."""
    out: dict[str, int] = {}
    for split in splits:
        for address, amount in split:
            out[address] = out.get(address, 0) + int(amount)
    return sorted((a, v) for a, v in out.items() if v > 0)
