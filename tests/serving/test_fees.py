"""Largest-remainder splits, checked against an independent exact-rational implementation."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from serving import split_price, totals_by_address


def reference(price: int, weights: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Hamilton's method written from its definition with Fractions (no shared code)."""
    total = sum(b for _, b in weights)
    quotas = [Fraction(price * b, total) for _, b in weights]
    base = [int(q) for q in quotas]
    ranked = sorted(
        range(len(weights)), key=lambda i: (quotas[i] - base[i], [-ord(c) for c in weights[i][0]])
    )
    for i in ranked[::-1][: price - sum(base)]:
        base[i] += 1
    return [(a, v) for (a, _), v in zip(weights, base, strict=True)]


addresses = st.lists(st.from_regex(r"0x[0-9a-f]{6}", fullmatch=True), min_size=1, max_size=12, unique=True)


@given(price=st.integers(0, 10**20), data=st.data(), names=addresses)
def test_split_matches_reference_and_sums_exactly(price, data, names):
    bps = data.draw(st.lists(st.integers(0, 10_000), min_size=len(names), max_size=len(names)))
    if sum(bps) == 0:
        bps[0] = 1
    weights = sorted(zip(names, bps, strict=True))
    got = split_price(price, weights)
    assert sum(v for _, v in got) == price
    assert got == reference(price, weights)
    for (_, b), (_, v) in zip(weights, got, strict=True):
        assert abs(Fraction(v) - Fraction(price * b, sum(bps))) < 1


def test_ties_go_to_the_lowest_address():
    assert split_price(1, [("0xb", 1), ("0xa", 1)]) == [("0xb", 0), ("0xa", 1)]


def test_totals_drop_zero_and_merge():
    assert totals_by_address([[("0xb", 2), ("0xa", 0)], [("0xb", 1)]]) == [("0xb", 3)]
