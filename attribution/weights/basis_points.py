"""Exact basis points: scores on a grid of significant digits, split by the largest remainder.

Determinism for auditors: example scores are rounded to ``score_digits`` significant digits
(relative to the largest) before anything else, so tiny float differences (1 vs 2 torch
threads) vanish; contributions are summed in ``example_id`` order; the final split is exact
rational arithmetic with the largest-remainder method, ties broken by address (lowest first,
compared as numbers, i.e. lowercase hex).

Serving splits every prediction's fee: ``split_queries`` gives the same basis points as
``split_query`` for a whole batch at once (one sparse product, integer largest remainder per
query), ``split_one`` for one prediction without the batch's machinery (its request path);
``split_query`` stays the per-row reference both are tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from schemas import ROLES, TOTAL_BPS

if TYPE_CHECKING:
    from .split import ContributorSplit


# Below float64's normal range a power of ten keeps fewer digits, down to 0: scores and grid are
# both lifted by this exact power of two there, so a grid of tiny scores keeps every digit.
LIFT = 600
_SMALLEST_NORMAL = Decimal(float(np.finfo(np.float64).tiny))


def quantize(scores: np.ndarray, digits: int) -> np.ndarray:
    """Integers (as float64) on a grid of ``digits`` significant digits of the largest |score|."""
    scores = np.asarray(scores, dtype=np.float64)
    top = float(np.max(np.abs(scores))) if scores.size else 0.0
    if top == 0.0 or not math.isfinite(top):
        return np.zeros_like(scores)
    unit, lift = grid_unit(top, digits)
    return np.round(scores * lift / unit)


def grid_unit(top: float, digits: int) -> tuple[float, float]:
    """The grid step for ``digits`` significant digits of ``top`` (> 0, finite), from the decimal
    exponent of ``top`` as written (its shortest repr, so the float ``1e-07``, just below 10**-7 in
    binary, counts as 10**-7). Float ``log10`` rounds 999.99…9 up to 3.0 (a grid ten times coarser)
    and may differ between C libraries; Python's repr is exact and the same on every platform.

    Returned as (step, lift): scores go on the grid as ``scores * lift / step``. ``lift`` is 1.0
    (and so changes no bit) unless the step falls below the normal range, where it is 2**LIFT and
    the step is lifted by as much."""
    step = Decimal(10) ** (Decimal(repr(top)).adjusted() - digits + 1)
    if step >= _SMALLEST_NORMAL:
        return float(step), 1.0
    return float(step * 2**LIFT), float(2**LIFT)


def quantize_columns(scores: np.ndarray, digits: int) -> np.ndarray:
    """``quantize`` applied to each column of a 2-D array on its own (bit for bit the same)."""
    scores = np.asarray(scores, dtype=np.float64)
    units, lifts = np.ones(scores.shape[1]), np.ones(scores.shape[1])
    dead = np.ones(scores.shape[1], dtype=bool)
    if scores.shape[0]:
        for q, top in enumerate(np.max(np.abs(scores), axis=0).tolist()):
            if top != 0.0 and math.isfinite(top):
                (units[q], lifts[q]), dead[q] = grid_unit(top, digits), False
    out = np.round(scores * lifts / units)
    out[:, dead] = 0.0
    return out


def largest_remainder(quotas: list[Fraction], tiebreak: list[tuple], total: int = TOTAL_BPS) -> list[int]:
    """Integers summing to ``total``: floors, then +1 by largest remainder, ties by ``tiebreak``."""
    floors = [q.numerator // q.denominator for q in quotas]
    left = total - sum(floors)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - floors[i]), tiebreak[i]))
    for i in order[:left]:
        floors[i] += 1
    return floors


@dataclass(frozen=True)
class QuerySplits(Sequence):
    """``split_queries``' answer: item q is query q's ``weight_bps`` (by ``rows``) or None."""

    bps: np.ndarray  # int64 [queries, rows]; all zero where ok is False
    ok: np.ndarray  # bool [queries]: some contributor has a positive score

    def __len__(self) -> int:
        return len(self.ok)

    def __getitem__(self, q: int) -> np.ndarray | None:  # type: ignore[override]
        return self.bps[q] if self.ok[q] else None


@dataclass(frozen=True)
class BatchPlan:
    """The fixed parts of ``weights_from_scores``' largest remainder, worked out once per split.

    Entries are in ``weights_from_scores``' quota order (providers, then labelers, each by id);
    ``tierank`` is each entry's place in its tie order, ``out`` reorders to the table's rows.
    """

    n_provider: int
    share: dict[str, int]
    tierank: np.ndarray
    out: np.ndarray
    rows: list[tuple[str, str, str]]
    tiebreak: list[tuple[str, str, str]]

    @classmethod
    def of(cls, split: ContributorSplit) -> BatchPlan:
        """The plan for ``split``'s contributors and role shares (``ContributorSplit`` makes it once)."""
        entries = [(c, split.addresses[c], r) for r in ROLES for c in split.contributors[r]]
        tiebreak = [(a.lower(), r, c) for c, a, r in entries]
        tierank = np.empty(len(entries), dtype=np.int64)
        tierank[sorted(range(len(entries)), key=tiebreak.__getitem__)] = np.arange(len(entries))
        table_order = sorted(range(len(entries)), key=lambda i: (entries[i][2], entries[i][0]))
        out = np.array(table_order, dtype=np.intp)
        return cls(
            n_provider=len(split.contributors["provider"]),
            share={r: split.policy.share(r) for r in ROLES},
            tierank=tierank,
            out=out,
            rows=[entries[i] for i in out],
            tiebreak=tiebreak,
        )

    @cached_property
    def _role(self) -> np.ndarray:
        """Each entry's role: 0 provider, 1 labeler."""
        return np.repeat([0, 1], [self.n_provider, len(self.tierank) - self.n_provider])

    @cached_property
    def _entry_share(self) -> np.ndarray:
        """Each entry's role share, when both roles have credit."""
        return np.asarray([self.share[r] for r in ROLES], dtype=np.int64)[self._role]

    def split_one(self, grid: np.ndarray) -> np.ndarray | None:
        """``split_all`` of one query (1-D ``grid``), the same integers: table row order, or None."""
        n = len(grid)
        if n == 0 or float(grid.max()) * n >= 2**62:
            row = self._exact(grid)
            return None if row is None else row[self.out]
        g = grid.astype(np.int64)
        t_provider, t_labeler = int(g[: self.n_provider].sum()), int(g[self.n_provider :].sum())
        if not (t_provider or t_labeler):
            return None
        if max(t_provider, t_labeler) >= 2**53 or int(g.max()) >= (2**63 - 1) // TOTAL_BPS:
            return self._exact(grid)[self.out]
        # a role with no positive credit passes its share to the other (its own entries are 0)
        share = self._entry_share if t_provider and t_labeler else TOTAL_BPS
        den = np.where(self._role == 1, t_labeler or 1, t_provider or 1)
        bps, rem = np.divmod(g * share, den)
        left = TOTAL_BPS - int(bps.sum())
        if left:
            bps[self._largest(rem, den, left)] += 1
        return bps[self.out]

    def split_all(self, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Basis points [queries, entries] (table row order) and which queries have any credit.

        ``grid`` is each query's quantized per-entry credit (integers in 0..10**score_digits).
        Integer floors and remainders for all queries at once; a query whose numbers leave the
        exact range of int64/float64 (15 digits, huge totals) takes the Fraction path.
        """
        n_queries, n = grid.shape
        bps = np.zeros((n_queries, n), dtype=np.int64)
        if n_queries == 0:
            return bps, np.zeros(0, dtype=bool)
        if n == 0 or float(grid.max()) * n >= 2**62:  # int64 row sums could overflow: all exact
            ok = np.zeros(n_queries, dtype=bool)
            for q in range(n_queries):
                row = self._exact(grid[q])
                ok[q] = row is not None
                bps[q] = 0 if row is None else row
            return bps[:, self.out], ok
        g = grid.astype(np.int64)
        totals = np.stack([g[:, : self.n_provider].sum(1), g[:, self.n_provider :].sum(1)], axis=1)
        ok = totals.any(axis=1)
        # below 2**53 the float sums weights_from_scores takes are these exact sums
        fast = ok & (totals.max(axis=1) < 2**53) & (g.max(axis=1) < (2**63 - 1) // TOTAL_BPS)
        for q in np.flatnonzero(ok & ~fast):
            bps[q] = self._exact(grid[q])
        if fast.any():
            bps[fast] = self._fast(g[fast], totals[fast])
        return bps[:, self.out], ok

    def _fast(self, g: np.ndarray, totals: np.ndarray) -> np.ndarray:
        """Largest remainder in int64 for queries whose quotas and totals fit exactly."""
        role = self._role
        # a role with no positive credit passes its share to the other (its own entries are 0)
        share = np.where(totals.all(axis=1)[:, None], [[self.share[r] for r in ROLES]], TOTAL_BPS)
        den = np.where(totals == 0, 1, totals)[:, role]
        bps, rem = np.divmod(g * share[:, role], den)
        left = TOTAL_BPS - bps.sum(axis=1)
        frac = rem / den  # both below 2**53: each quotient is correctly rounded
        order = np.lexsort((np.broadcast_to(self.tierank, frac.shape), -frac), axis=-1)
        place = np.empty_like(order)
        np.put_along_axis(place, order, np.arange(order.shape[1])[None, :], axis=1)
        plus = place < left[:, None]
        # where the cut falls inside a run of equal floats, order that run exactly
        ranked = np.take_along_axis(frac, order, axis=1)
        inside = np.flatnonzero((left > 0) & (left < frac.shape[1]))
        at = left[inside]
        for q in inside[ranked[inside, at - 1] == ranked[inside, at]]:
            plus[q] = False
            plus[q, self._largest(rem[q], den[q], int(left[q]))] = True
        return bps + plus

    def _exact(self, grid: np.ndarray) -> np.ndarray | None:
        """One query as ``weights_from_scores`` computes it, in Fractions (entry order)."""
        parts = (grid[: self.n_provider], grid[self.n_provider :])
        totals = [int(p.sum()) for p in parts]  # the float sums weights_from_scores takes
        if not any(totals):
            return None
        shares = [
            0 if t == 0 else self.share[r] if all(totals) else TOTAL_BPS
            for r, t in zip(ROLES, totals, strict=True)
        ]
        quotas = [
            Fraction(s * int(q), t) if t else Fraction(0)
            for p, s, t in zip(parts, shares, totals, strict=True)
            for q in p.tolist()
        ]
        return np.asarray(largest_remainder(quotas, self.tiebreak), dtype=np.int64)

    def _largest(self, rem: np.ndarray, den: np.ndarray, left: int) -> np.ndarray:
        """The ``left`` entries with the largest remainder ``rem/den`` (ties by ``tierank``).

        Float division is monotonic, so float order is the exact order except inside groups of
        equal floats; the one group the cut may split is ordered exactly (Fractions).
        """
        frac = rem / den  # both below 2**53: each quotient is correctly rounded
        order = np.lexsort((self.tierank, -frac))
        cut = frac[order[left - 1]]
        if left == len(order) or frac[order[left]] != cut:
            return order[:left]
        above = np.flatnonzero(frac > cut)
        group = np.flatnonzero(frac == cut).tolist()
        group.sort(key=lambda i: (-Fraction(int(rem[i]), int(den[i])), int(self.tierank[i])))
        return np.concatenate([above, np.asarray(group[: left - len(above)], dtype=np.intp)])
