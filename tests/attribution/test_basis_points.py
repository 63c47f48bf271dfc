"""Basis points under adversarial scores: exactly 10,000, each within 1 bps of its exact quota.

Inputs: scores at scales 1e-30..1e30, ties, all-zero, one huge among many tiny, thousands of
contributors. The quotas come from an exact reference written here in ``fractions.Fraction``
(none of the module's functions):

- ``largest_remainder(quotas, tiebreak)`` splits quotas it is handed: the reference quotas are
  ``TOTAL_BPS * s_i / sum(s)`` of non-negative float scores read as exact rationals.
- ``contributor_weights`` (and serving's ``ContributorSplit.split_one``) are defined to split
  the scores' grid, not the raw scores (``attribution/weights/basis_points.py``): one huge score and many
  tiny ones is a case where the two differ by more than 1 bps. The reference follows that
  definition:

  1. each example's score is rounded to ``score_digits`` significant digits of the largest
     |score|: ``unit = 10**(e - digits + 1)`` with ``e`` the decimal exponent of the largest
     |score| as written (its shortest repr: the float ``1e-07`` is 10**-7), credit =
     ``round(score / unit)``, half to even; under ``clip`` a negative credit is 0;
  2. a provider's total is the sum of its examples' credits, a labeler's the sum of
     ``credit * confidence / n_agreeing`` over the examples where it gave the consensus label;
     a negative total counts as 0;
  3. all totals, both roles together, are rounded the same way to grid values ``g``;
  4. a role's share (``provider_share_bps``, the rest to labelers; all to one role when the other
     role's grid is all zero) splits in proportion to ``g``: ``quota = share * g / sum_role(g)``.
     No positive grid value at all: nothing to split (``ContributorError``).

  The module rounds in float64 (bit for bit the same on every machine), the reference in exact
  rationals. They agree except where a value lies within float error of half a grid step, or
  the largest within float error below a power of ten; there one grid step is a matter of the
  rounding convention, not of the split, so those draws are skipped (``assume``). The drawn
  confidences and voter counts keep every product and sum exact in float64 (dyadic values,
  totals below 2**49), so the grids agree everywhere else.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from attribution import ContributorError, ContributorSplit, WeightPolicy, contributor_weights
from attribution.weights import largest_remainder
from schemas import ROLES, TOTAL_BPS

# ---------------------------------------------------------------- adversarial scores

mantissas = st.one_of(st.sampled_from([1.0, 1.5, 2.5, 5.0]), st.floats(1.0, 10.0, exclude_max=True))
magnitudes = st.builds(lambda m, e: m * 10.0**e, mantissas, st.integers(-30, 30))
unsigned = st.one_of(st.just(0.0), magnitudes)
signed = st.one_of(magnitudes, unsigned, magnitudes.map(lambda v: -v))  # positive in half the draws


# all-zero once in seven draws: a split needs some positive score
SHAPES = ["spread", "huge_and_tiny", "ties", "thousands", "spread", "huge_and_tiny", "all_zero"]


def _log_uniform(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """``n`` magnitudes spread evenly over the decades 10**low .. 10**high."""
    return 10.0 ** rng.uniform(low, high, size=n)


@st.composite
def score_sets(draw, *, signs: bool = True, max_n: int = 3000) -> np.ndarray:
    """One adversarial score vector (float64), by shape."""
    value = signed if signs else unsigned
    shape = draw(st.sampled_from(SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if shape == "spread":  # a few values anywhere in 1e-30..1e30
        out = np.array(draw(st.lists(value, min_size=1, max_size=40)))
    elif shape == "ties":  # many copies of one value, a few others
        out = np.array([draw(value)] * draw(st.integers(2, max_n)) + draw(st.lists(value, max_size=4)))
    elif shape == "huge_and_tiny":  # one huge, many tiny (some may round to zero on the grid)
        hi = draw(st.integers(-29, 30))
        lo = draw(st.integers(-30, hi - 1))
        tiny = _log_uniform(rng, draw(st.integers(1, max_n - 1)), lo, lo + 1)
        if draw(st.booleans()):  # ... or all tiny the same
            tiny[:] = tiny[0]
        out = np.concatenate([[draw(mantissas) * 10.0**hi], tiny])
    elif shape == "all_zero":
        out = np.zeros(draw(st.integers(1, max_n)))
    else:  # thousands of distinct values over 60 decades
        out = _log_uniform(rng, draw(st.integers(1000, max_n)), -30, 30)
        if signs and draw(st.booleans()):
            out *= rng.choice([-1.0, 1.0], size=len(out))
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------- the exact reference


def _decimal_exponent(top: Fraction) -> int:
    """``floor(log10)`` of ``top`` as written: the shortest repr of the float ``top`` exactly is."""
    return Decimal(repr(float(top))).adjusted()


def _exact_grid(values: list[Fraction], digits: int) -> list[int] | None:
    """``values`` rounded to ``digits`` significant digits of the largest |value| (exactly).

    None where float64 may round differently: a value within float error of half a grid step
    (an exact half is safe when the unit is an integer, which float64 divides by exactly), or the
    largest value within float error below a power of ten (``log10`` may round up to it).
    """
    top = max((abs(v) for v in values), default=Fraction(0))
    if top == 0:
        return [0] * len(values)
    e = _decimal_exponent(top)
    if top < Fraction(10) ** (e + 1) <= top * (1 + Fraction(1, 2**40)):
        return None
    unit = Fraction(10) ** (e - digits + 1)
    out = []
    for v in values:
        x = v / unit
        half = math.floor(x) + Fraction(1, 2)
        gap = abs(x - half)
        if gap <= abs(x) / 2**50 and (gap != 0 or unit.denominator != 1):
            return None
        out.append(round(x))
    return out


def reference_quotas(
    scores: np.ndarray,
    providers: list[str],
    votes: dict[int, tuple[list[str], float]],
    policy: WeightPolicy,
) -> dict[tuple[str, str], tuple[Fraction, Fraction]] | None:
    """(role, contributor) -> (its signed total, its exact quota) as the module docstring defines them.

    ``votes``: example index -> (annotators who gave the consensus label, confidence). Every
    contributor appears (zero quota included); an empty dict: nothing to split. None: skip.
    """
    credit = _exact_grid([Fraction(float(s)) for s in scores], policy.score_digits)
    if credit is None:
        return None
    if policy.negative == "clip":
        credit = [max(c, 0) for c in credit]
    totals: dict[tuple[str, str], Fraction] = {}
    for i, who in enumerate(providers):
        totals[("provider", who)] = totals.get(("provider", who), Fraction(0)) + credit[i]
    for i, (agreed, confidence) in votes.items():
        for who in agreed:
            share = Fraction(confidence) / len(agreed)
            totals[("labeler", who)] = totals.get(("labeler", who), Fraction(0)) + credit[i] * share
    keys = sorted(totals)
    values = [max(totals[k], Fraction(0)) for k in keys]
    grid = _exact_grid(values, policy.score_digits)
    if grid is None:
        return None
    role_total = {r: sum(g for k, g in zip(keys, grid, strict=True) if k[0] == r) for r in ROLES}
    if not any(role_total.values()):
        return {}
    share = {"provider": policy.provider_share_bps, "labeler": TOTAL_BPS - policy.provider_share_bps}
    if not all(role_total.values()):
        share = {r: TOTAL_BPS if role_total[r] else 0 for r in ROLES}
    return {
        k: (totals[k], Fraction(share[k[0]] * g, role_total[k[0]]) if g else Fraction(0))
        for k, g in zip(keys, grid, strict=True)
    }


# ---------------------------------------------------------------- largest_remainder itself


@settings(max_examples=40, deadline=None)
@given(score_sets(signs=False), st.integers(0, 2**32 - 1))
def test_largest_remainder_of_exact_quotas(scores, seed):
    exact = [Fraction(float(s)) for s in scores]
    total = sum(exact)
    assume(total > 0)  # all-zero scores have no quotas (the table path refuses them below)
    quotas = [TOTAL_BPS * s / total for s in exact]
    tiebreak = [(int(r),) for r in np.random.default_rng(seed).permutation(len(quotas))]
    bps = largest_remainder(quotas, tiebreak)
    assert sum(bps) == TOTAL_BPS
    assert all(abs(b - q) < 1 for b, q in zip(bps, quotas, strict=True))  # floor or ceiling
    # the +1s went to the largest remainders, ties to the lowest tiebreak
    up = [(-(q - math.floor(q)), t) for b, q, t in zip(bps, quotas, tiebreak, strict=True) if b > q]
    down = [(-(q - math.floor(q)), t) for b, q, t in zip(bps, quotas, tiebreak, strict=True) if b < q]
    assert not up or not down or max(up) < min(down)


# ---------------------------------------------------------------- the contributor_weights table

ANNOTATORS = [f"l{i}" for i in range(6)]


def _address(i: int) -> str:
    return "0x" + f"{i + 1:040x}"


@st.composite
def weight_cases(draw):
    scores = draw(score_sets())
    n = len(scores)
    if draw(st.booleans()):  # one example each: as many providers as examples (thousands)
        providers = [f"p{i:05d}" for i in range(n)]
    else:
        k = draw(st.integers(1, min(n, 40)))
        providers = [f"p{i % k:05d}" for i in range(n)]
    votes = {}
    for i in draw(st.sets(st.integers(0, n - 1), max_size=8)):
        # 1, 2 or 4 agreeing voters and a dyadic confidence: exact credit shares in float64
        agreed = sorted(draw(st.permutations(ANNOTATORS))[: draw(st.sampled_from([1, 2, 4]))])
        votes[i] = (agreed, draw(st.sampled_from([1.0, 0.75, 0.5, 0.25])))
    dissent = draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(ANNOTATORS)), max_size=4))
    big = n > 100  # keep every total below 2**49 (exact in float64) and grids off float ties
    policy = WeightPolicy(
        provider_share_bps=draw(st.one_of(st.sampled_from([0, 7000, TOTAL_BPS]), st.integers(0, TOTAL_BPS))),
        negative=draw(st.sampled_from(["clip", "net"])),
        score_digits=draw(st.one_of(st.just(8), st.integers(1, 10 if big else 12))),
        labelers="agree",  # the reference below pays agreement; moves are tested in test_weights.py
    )
    return scores, providers, votes, dissent, policy


def _tables(scores, providers, votes, dissent):
    ids = [f"e{i:05d}" for i in range(len(scores))]
    attribution = pa.table({"example_id": ids, "score": scores})
    examples = pa.table({"example_id": ids, "provider": providers})
    rows = [(ids[i], who, "a") for i, (agreed, _) in votes.items() for who in agreed]
    rows += [(ids[i], who, "b") for i, who in dissent]  # listed, with no credit
    annotations = pa.table(
        {
            "example_id": pa.array([r[0] for r in rows], pa.string()),
            "annotator": pa.array([r[1] for r in rows], pa.string()),
            "label": pa.array([r[2] for r in rows], pa.string()),
        }
    )
    labeled = sorted(votes)
    consensus = pa.table(
        {
            "example_id": pa.array([ids[i] for i in labeled], pa.string()),
            "label": pa.array(["a"] * len(labeled), pa.string()),
            "confidence": pa.array([votes[i][1] for i in labeled], pa.float64()),
        }
    )
    everyone = sorted(set(providers)) + ANNOTATORS
    addresses = {c: _address(i) for i, c in enumerate(everyone)}
    return attribution, examples, annotations, consensus, addresses


@settings(max_examples=40, deadline=None)
@given(weight_cases())
def test_contributor_weights_are_exact_quotas_within_one_bps(case):
    scores, providers, votes, dissent, policy = case
    ref = reference_quotas(scores, providers, votes, policy)
    assume(ref is not None)
    attribution, examples, annotations, consensus, addresses = _tables(scores, providers, votes, dissent)
    split = ContributorSplit.build(examples, annotations, consensus, addresses, policy)
    one = split.split_one(split.positions(attribution["example_id"].to_pylist()), scores)
    if not ref:
        with pytest.raises(ContributorError, match="nothing to split"):
            contributor_weights(attribution, examples, annotations, consensus, addresses, policy)
        assert one is None
        return
    table = contributor_weights(attribution, examples, annotations, consensus, addresses, policy)
    rows = table.to_pylist()
    got = {(r["role"], r["contributor"]): r for r in rows}
    assert sum(r["weight_bps"] for r in rows) == TOTAL_BPS
    assert set(ref) <= set(got)  # the rest: annotators who only disagreed, with no credit
    for key, row in got.items():
        total, quota = ref.get(key, (Fraction(0), Fraction(0)))
        assert row["weight_bps"] >= 0
        assert abs(row["weight_bps"] - quota) < 1, (key, row["weight_bps"], float(quota))
        assert row["score"] == float(total)
    # serving's single-prediction path splits the same scores into the same integers
    assert one is not None and one.tolist() == table["weight_bps"].to_pylist()
