"""Contributor weights: exact 10,000 bps, order invariance, determinism, named errors."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution import ContributorError, ContributorSplit, WeightPolicy, contributor_weights
from attribution.weights import largest_remainder, quantize, quantize_columns

from .conftest import ADDR, credit_table, pay_tables

AGREE = WeightPolicy(labelers="agree")  # labelers paid by agreement with consensus (not the default)



example_sets = st.integers(1, 25).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-5, 5, allow_nan=False), min_size=n, max_size=n).filter(lambda s: max(s) > 1e-3),
        st.lists(st.sampled_from([f"c{i}" for i in range(5)]), min_size=n, max_size=n),
        st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from([f"c{i}" for i in range(5, 12)]),
                           st.sampled_from(["a", "b"])), max_size=3 * n),
    )
)


def _permuted(table: pa.Table, seed: int) -> pa.Table:
    return table.take(np.random.default_rng(seed).permutation(table.num_rows))


@settings(max_examples=60, deadline=None)
@given(example_sets, st.sampled_from(["clip", "net"]), st.integers(0, 2**31))
def test_weights_sum_order_invariance_and_determinism(case, negative, seed):
    scores, providers, votes = case
    policy = WeightPolicy(negative=negative)
    tables = pay_tables(scores, providers, votes)
    try:
        out = contributor_weights(*tables, ADDR, policy)
    except ContributorError:  # 'net' may leave every contributor at or below zero
        if negative != "net":
            raise
        with pytest.raises(ContributorError):
            contributor_weights(*(_permuted(t, seed) for t in tables), ADDR, policy)
        return
    assert sum(out["weight_bps"].to_pylist()) == 10_000
    assert min(out["weight_bps"].to_pylist()) >= 0
    again = contributor_weights(*(_permuted(t, seed) for t in tables), ADDR, policy)
    assert again.equals(out)
    assert contributor_weights(*tables, ADDR, policy).equals(out)


def test_policy_split_and_labeler_credit():
    att, ex, ann, con = pay_tables([1.0, 3.0, -2.0], ["c0", "c1", "c1"],
                                [(0, "c5", "a"), (0, "c6", "a"), (1, "c6", "a"), (1, "c7", "b")])
    out = contributor_weights(att, ex, ann, con, ADDR, WeightPolicy(negative="clip", labelers="agree"))
    got = {(r["role"], r["contributor"]): r["weight_bps"] for r in out.to_pylist()}
    # providers 70%: c0 1/4, c1 3/4 (the negative example is clipped)
    assert got[("provider", "c0")] == 1750 and got[("provider", "c1")] == 5250
    # labelers 30%: e0 credit 0.9 split c5/c6, e1 credit 2.7 to c6 (c7 disagreed, listed with 0)
    assert got[("labeler", "c5")] == 375 and got[("labeler", "c6")] == 2625
    assert got[("labeler", "c7")] == 0
    assert all(r["address"].startswith("0x") for r in out.to_pylist())


def test_net_policy_offsets_negative_examples():
    att, ex, ann, con = pay_tables([1.0, 3.0, -2.0], ["c0", "c1", "c1"], [])
    out = contributor_weights(att, ex, ann, con, ADDR, WeightPolicy(negative="net")).to_pylist()
    got = {r["contributor"]: r["weight_bps"] for r in out}
    assert got == {"c0": 5000, "c1": 5000}  # no labelers: providers take the whole pool


def test_clip_pays_spread_net_pays_help():
    # c1's examples pull both ways (the demo's noisy provider): their sum is negative, so under
    # net it earns nothing; clip drops its negatives first and hands it 3/4 of the pool
    steady = [1.0] * 10
    spread = [6.0, -6.5] * 5
    tables = pay_tables(steady + spread, ["c0"] * 10 + ["c1"] * 10, [])
    net = contributor_weights(*tables, ADDR, WeightPolicy(negative="net")).to_pylist()
    assert {r["contributor"]: r["weight_bps"] for r in net} == {"c0": 10_000, "c1": 0}
    clipped = contributor_weights(*tables, ADDR, WeightPolicy(negative="clip")).to_pylist()
    assert {r["contributor"]: r["weight_bps"] for r in clipped} == {"c0": 2500, "c1": 7500}
    # net is the default, and the table reports c1's signed sum, so a report can say it hurt
    default = {r["contributor"]: r for r in contributor_weights(*tables, ADDR).to_pylist()}
    assert default["c1"]["weight_bps"] == 0 and default["c1"]["score"] < 0
    assert default["c1"]["score"] / default["c0"]["score"] == pytest.approx(-2.5 / 10.0)  # on one grid


def test_net_is_additive_over_examples_clip_is_not():
    # one example of score 3, or two of 5 and -2 from the same contributor: the same help
    one, two = pay_tables([1.0, 3.0], ["c0", "c1"], []), pay_tables([1.0, 5.0, -2.0], ["c0", "c1", "c1"], [])
    net = WeightPolicy(negative="net")
    assert contributor_weights(*one, ADDR, net)["weight_bps"].to_pylist() == [2500, 7500]
    assert contributor_weights(*two, ADDR, net)["weight_bps"].to_pylist() == [2500, 7500]
    clip = WeightPolicy(negative="clip")
    assert contributor_weights(*two, ADDR, clip)["weight_bps"].to_pylist() == [1667, 8333]


def test_largest_remainder_ties_broken_by_address():
    thirds = [Fraction(10_000, 3)] * 3
    assert largest_remainder(thirds, [("0xb",), ("0xa",), ("0xc",)]) == [3333, 3334, 3333]


def test_contributor_ties_go_to_the_lowest_address_as_a_number():
    # checksummed, 0xA3A3.. sorts before 0xa2A2.. as a string; as numbers 0xa2.. is lower
    addr = {"c0": "0x" + "a3" * 20, "c1": "0x" + "a2" * 20, "c2": "0x" + "ff" * 20}
    att, ex, ann, con = pay_tables([1.0, 1.0, 1.0], ["c0", "c1", "c2"], [])
    out = contributor_weights(att, ex, ann, con, addr).to_pylist()
    assert min(r["address"] for r in out).startswith("0xA3")  # the trap: string order of checksums
    assert {r["contributor"]: r["weight_bps"] for r in out} == {"c0": 3333, "c1": 3334, "c2": 3333}


def test_quantize_hides_float_noise():
    a = np.array([1.0, 0.123456789, -0.5])
    assert np.array_equal(quantize(a, 6), quantize(a * (1 + 1e-12), 6))


@pytest.mark.filterwarnings("error")  # no division by a grid step that underflowed to 0
@pytest.mark.parametrize(
    "top",
    [np.nextafter(1000.0, 0.0), 1000.0, 9.999999999999999e-4, 0.0123, 7e-30, 3e12, 1e-7, 1e-13,
     1.7e308, 3e-306, 5e-310, 1e-320, 5e-324],
)
def test_quantize_keeps_the_stated_significant_digits_next_to_powers_of_ten(top):
    """The grid is ``digits`` significant digits of the largest |score|, by the decimal exponent of
    the score as written (Fraction of its shortest repr as reference): just under a power of ten it
    is not ten times coarser, and the float ``1e-07`` (a hair below 10**-7 in binary) is 10**-7.
    Below float64's normal range (a step of 10**-309 and less) it keeps every digit as well."""
    from fractions import Fraction

    written = Fraction(repr(float(top)))
    exponent = 0
    while Fraction(10) ** (exponent + 1) <= written:
        exponent += 1
    while Fraction(10) ** exponent > written:
        exponent -= 1
    q = quantize(np.array([top, -top / 3]), 4)
    assert 1000 <= abs(q[0]) <= 10_000
    assert q[0] == round(Fraction(top) / Fraction(10) ** (exponent - 3))
    assert np.array_equal(quantize_columns(np.array([[top], [-top / 3]]), 4)[:, 0], q)


def test_missing_addresses_named_in_one_error():
    att, ex, ann, con = pay_tables([1.0, 2.0], ["c0", "c1"], [(0, "c5", "a")])
    with pytest.raises(ContributorError, match="c1, c5"):
        contributor_weights(att, ex, ann, con, {"c0": ADDR["c0"]})


def test_examples_without_provider_and_unknown_examples():
    att, ex, ann, con = pay_tables([1.0, 2.0], ["c0", ""], [])
    with pytest.raises(ContributorError, match="no provider.*e001"):
        contributor_weights(att, ex, ann, con, ADDR)
    att, ex, ann, con = pay_tables([1.0, 2.0], ["c0", "c1"], [])
    with pytest.raises(ContributorError, match="not in the examples table"):
        contributor_weights(att, ex.slice(0, 1), ann, con, ADDR)


def test_all_negative_scores_is_a_clear_error():
    att, ex, ann, con = pay_tables([-1.0, -2.0], ["c0", "c1"], [])
    with pytest.raises(ContributorError, match="nothing to split: .* retrain stopping early \\(patience\\)"):
        contributor_weights(att, ex, ann, con, ADDR)


# ---------------------------------------------------------------- batched per-query splits

POOL = [f"c{i}" for i in range(10)]
# few addresses, so contributors share them; 0xA3.. vs 0xa2.. is the checksum-spelling trap
ADDRESS_CHOICES = ["0x" + "a3" * 20, "0x" + "a2" * 20, "0x" + "ff" * 20, "0x" + "0" * 39 + "1",
                   "0x" + "0" * 39 + "2", "0x" + "7f" * 20]
score_values = st.one_of(
    st.sampled_from([-2.0, -1.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0]),  # ties and zeros
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
)


@st.composite
def split_cases(draw):
    n = draw(st.integers(1, 24))
    ids = [f"e{i:03d}" for i in range(n)]
    providers = draw(st.lists(st.sampled_from(POOL[:6]), min_size=n, max_size=n))
    votes = draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(POOL[3:]),
                                    st.sampled_from(["a", "b"])), max_size=3 * n))
    agreed = draw(st.lists(st.sampled_from(["a", "b", None]), min_size=n, max_size=n))
    confidence = draw(st.lists(st.one_of(st.just(1.0), st.floats(0.01, 1.0)), min_size=n, max_size=n))
    addresses = {c: draw(st.sampled_from(ADDRESS_CHOICES)) for c in POOL}
    policy = WeightPolicy(
        provider_share_bps=draw(st.one_of(st.sampled_from([0, 7000, 10_000]), st.integers(0, 10_000))),
        negative=draw(st.sampled_from(["clip", "net"])),
        score_digits=draw(st.one_of(st.just(8), st.integers(1, 15))),
        labelers=draw(st.sampled_from(["agree", "pivotal", "valued"])),
    )
    order = draw(st.permutations(range(n)))[: draw(st.integers(1, n))]  # any order, maybe a subset
    n_queries = draw(st.integers(1, 5))
    values = np.array(draw(st.lists(score_values, min_size=len(order) * n_queries,
                                    max_size=len(order) * n_queries))).reshape(len(order), n_queries)
    scale = 10.0 ** np.array(draw(st.lists(st.integers(-30, 30), min_size=n_queries, max_size=n_queries)))
    examples = pa.table({"example_id": ids, "provider": providers})
    annotations = pa.table({
        "example_id": pa.array([ids[e] for e, _, _ in votes], pa.string()),
        "annotator": pa.array([w for _, w, _ in votes], pa.string()),
        "label": pa.array([lab for _, _, lab in votes], pa.string()),
    })
    consensus = pa.table({"example_id": ids, "label": pa.array(agreed, pa.string()),
                          "confidence": confidence})
    split = ContributorSplit.build(examples, annotations, consensus, addresses, policy)
    return split, [ids[i] for i in order], values * scale


@settings(max_examples=300, deadline=None)
@given(split_cases())
def test_split_queries_equals_split_query_per_row(case):
    split, example_ids, contributions = case
    got = split.split_queries(example_ids, contributions)
    assert len(got) == contributions.shape[1]
    for q, bps in enumerate(got):
        try:
            ref = split.split_query(example_ids, contributions[:, q])
        except ContributorError:
            assert bps is None
            continue
        assert bps.dtype == np.int64 and int(bps.sum()) == 10_000 and bps.min() >= 0
        assert bps.tolist() == ref["weight_bps"].to_pylist()
        assert split.rows == list(zip(ref["contributor"].to_pylist(), ref["address"].to_pylist(),
                                      ref["role"].to_pylist(), strict=True))


@settings(max_examples=300, deadline=None)
@given(split_cases())
def test_split_one_equals_the_batched_split_and_the_reference(case):
    # serving's single-input path: bit for bit the batch's integers (a query alone is batched
    # next to a copy of itself, so split_queries runs its batch machinery) and split_query's
    split, example_ids, contributions = case
    positions = split.positions(example_ids)
    batched = split.split_queries(example_ids, np.repeat(contributions, 2, axis=1))
    for q in range(contributions.shape[1]):
        one = split.split_one(positions, contributions[:, q])
        alone = split.split_queries(example_ids, contributions[:, q])[0]
        for twin in (batched[2 * q], batched[2 * q + 1], alone):
            assert (one is None) == (twin is None)
            assert one is None or (one.dtype == np.int64 and one.tolist() == twin.tolist())
        try:
            ref = split.split_query(example_ids, contributions[:, q])["weight_bps"].to_pylist()
        except ContributorError:
            ref = None
        assert (None if one is None else one.tolist()) == ref


def test_split_queries_beyond_int64_takes_the_exact_path(monkeypatch):
    # 15 digits and credits near the top of the grid: quotas overflow int64 and totals pass 2**53,
    # so the batched split falls back to Fractions; it must still agree with the reference
    import attribution.weights.basis_points as basis_points

    n = 40
    ids = [f"e{i:03d}" for i in range(n)]
    examples = pa.table({"example_id": ids, "provider": [f"c{i % 10}" for i in range(n)]})
    split = ContributorSplit.build(examples, None, None, {c: ADDR[c] for c in POOL},
                                   WeightPolicy(score_digits=15))
    contributions = np.random.default_rng(0).uniform(2.38, 2.49, size=(n, 3))
    calls = []
    exact = basis_points.largest_remainder
    monkeypatch.setattr(basis_points, "largest_remainder", lambda *a: calls.append(1) or exact(*a))
    got = split.split_queries(ids, contributions)
    assert len(calls) == 3
    ones = [split.split_one(split.positions(ids), contributions[:, q]) for q in range(3)]
    assert len(calls) == 6  # the single-query path falls back the same way
    for q, bps in enumerate(got):
        assert bps.tolist() == split.split_query(ids, contributions[:, q])["weight_bps"].to_pylist()
        assert ones[q].tolist() == bps.tolist()


def test_split_queries_orders_float_equal_remainders_exactly():
    # 1 - 1/d and 1 - 1/(d + 1) are the same float but not the same number: the larger must win
    # although its tie rank is worse
    from attribution.weights.basis_points import BatchPlan

    d = 2**40
    plan = BatchPlan(1, {"provider": 5000, "labeler": 5000}, np.array([0, 1, 2]), np.arange(3), [], [])
    rem = np.array([d - 1, d, 0], dtype=np.int64)
    den = np.array([d, d + 1, 7], dtype=np.int64)
    assert rem[0] / den[0] == rem[1] / den[1]
    assert plan._largest(rem, den, 1).tolist() == [1]
    assert sorted(plan._largest(rem, den, 2).tolist()) == [0, 1]


def test_split_queries_refuses_bad_input_by_name():
    att, ex, ann, con = pay_tables([1.0, 2.0], ["c0", "c1"], [])
    split = ContributorSplit.build(ex, ann, con, ADDR)
    with pytest.raises(ContributorError, match=r"queries \[1\] hold NaN"):
        split.split_queries(["e000", "e001"], np.array([[1.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ContributorError, match="not in the examples table"):
        split.split_queries(["e000", "e009"], np.ones((2, 1)))
    with pytest.raises(ContributorError, match="must be"):
        split.split_queries(["e000", "e001"], np.ones((3, 1)))
    assert list(split.split_queries(["e000", "e001"], -np.ones((2, 2)))) == [None, None]
    assert list(split.split_queries(["e000", "e001"], np.ones((2, 0)))) == []
    positions = split.positions(["e001", "e000"])
    with pytest.raises(ContributorError, match="NaN or inf"):
        split.split_one(positions, np.array([1.0, np.inf]))
    with pytest.raises(ContributorError, match="one score per example"):
        split.split_one(positions, np.ones(3))
    assert split.split_one(positions, -np.ones(2)) is None
    assert split.split_one(positions, np.array([1.0, 0.0])).tolist() == [0, 10_000]  # e001 is c1's


# ---------------------------------------------------------------- example_credit (duplicates paid once)


@settings(max_examples=40, deadline=None)
@given(example_sets, st.sampled_from(["clip", "net"]))
def test_a_credit_table_that_pays_each_provider_its_own_examples_changes_nothing(case, negative):
    scores, providers, votes = case
    tables = pay_tables(scores, providers, votes)
    ids = tables[1]["example_id"].to_pylist()
    identity = credit_table([(e, p, 1.0) for e, p in zip(ids, providers, strict=True)])
    policy = WeightPolicy(negative=negative)
    try:
        plain = contributor_weights(*tables, ADDR, policy)
    except ContributorError:
        with pytest.raises(ContributorError):
            contributor_weights(*tables, ADDR, policy, credit=identity)
        return
    assert contributor_weights(*tables, ADDR, policy, credit=_permuted(identity, 3)).equals(plain)


def test_a_group_is_paid_its_mean_once_and_its_labelers_alike():
    # e000 and e001 are one group (c0 registered first, c1 copied): each weighs 1/2, paid to c0
    att, ex, ann, con = pay_tables([3.0, 1.0, 2.0], ["c0", "c1", "c2"], [(0, "c5", "a"), (1, "c5", "a"),
                                                                     (2, "c6", "a")])
    credit = credit_table([("e000", "c0", 0.5), ("e001", "c0", 0.5), ("e002", "c2", 1.0)])
    out = {(r["contributor"], r["role"]): r for r in contributor_weights(att, ex, ann, con, ADDR, AGREE,
                                                                         credit=credit).to_pylist()}
    assert out[("c0", "provider")]["score"] == out[("c2", "provider")]["score"]  # mean of 3 and 1 = 2, once
    assert out[("c1", "provider")]["weight_bps"] == 0 and out[("c1", "provider")]["score"] == 0.0
    assert out[("c0", "provider")]["weight_bps"] == out[("c2", "provider")]["weight_bps"] == 3500
    assert out[("c5", "labeler")]["weight_bps"] == out[("c6", "labeler")]["weight_bps"] == 1500


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([("e000", "c0", 1.0), ("e001", "c1", 1.0), ("e009", "c1", 1.0)], "not in the examples table"),
        ([("e000", "c0", 1.0), ("e001", "c1", 1.0)], "no row in example_credit"),
        ([("e000", "c0", 1.0), ("e001", "c1", 1.0), ("e002", "c0", 0.0)], r"must be in \(0, 1\]"),
        ([("e000", "c0", 0.7), ("e000", "c1", 0.7), ("e001", "c1", 1.0), ("e002", "c0", 1.0)], "more than 1"),
        ([("e000", "c0", 0.5), ("e000", "c0", 0.5), ("e001", "c1", 1.0), ("e002", "c0", 1.0)], "twice"),
    ],
)
def test_a_bad_credit_table_is_refused_with_its_reason(rows, match):
    tables = pay_tables([1.0, 2.0, 3.0], ["c0", "c1", "c0"], [])
    with pytest.raises(ContributorError, match=match):
        contributor_weights(*tables, ADDR, credit=credit_table(rows))


def test_serving_splits_pay_by_the_credit_table_too():
    # one prediction's fee: the batched, single and per-row paths agree under a credit table, and a
    # copy's contribution goes to its first registrant (c1 copied c0's e000: e001 pays c0)
    rng = np.random.default_rng(4)
    att, ex, ann, con = pay_tables(list(rng.uniform(0.1, 1, 6)), ["c0", "c1", "c2", "c0", "c1", "c2"],
                                [(i, "c5", "a") for i in range(6)])
    credit = credit_table([("e000", "c0", 0.5), ("e001", "c0", 0.5)]
                     + [(f"e{i:03d}", p, 1.0) for i, p in ((2, "c2"), (3, "c0"), (4, "c1"), (5, "c2"))])
    split = ContributorSplit.build(ex, ann, con, ADDR, AGREE, credit=credit)  # c5 answers alone: agreement
    ids = ex["example_id"].to_pylist()
    contributions = rng.uniform(-0.2, 1.0, size=(6, 5))
    batched = split.split_queries(ids, contributions)
    for q in range(5):
        ref = split.split_query(ids, contributions[:, q])
        assert batched[q].tolist() == ref["weight_bps"].to_pylist()
        assert split.split_one(split.positions(ids), contributions[:, q]).tolist() == batched[q].tolist()
    only_the_copy = np.zeros(6)
    only_the_copy[1] = 1.0
    paid = {r["contributor"]: r["weight_bps"] for r in split.split_query(ids, only_the_copy).to_pylist()}
    assert paid["c1"] == 0 and paid["c0"] == 7000 and paid["c5"] == 3000


# ---------------------------------------------------------------- labelers='pivotal'

PIVOTAL = WeightPolicy(labelers="pivotal")
VALUED = WeightPolicy(labelers="valued")
BY_MOVES = pytest.mark.parametrize("policy", [PIVOTAL, VALUED], ids=["pivotal", "valued"])


def _pivot_tables(rows):
    """rows: (score, consensus label, [(annotator, label), ...]) per example; provider c0."""
    ids = [f"e{i:03d}" for i in range(len(rows))]
    attribution = pa.table({"example_id": ids, "score": [float(r[0]) for r in rows]})
    examples = pa.table({"example_id": ids, "provider": ["c0"] * len(rows)})
    votes = [(ids[i], who, lab) for i, r in enumerate(rows) for who, lab in r[2]]
    annotations = pa.table({"annotation_id": list(range(len(votes))), "example_id": [v[0] for v in votes],
                            "annotator": [v[1] for v in votes], "label": [v[2] for v in votes]})
    consensus = pa.table({"example_id": ids, "label": [r[1] for r in rows], "confidence": [1.0] * len(rows)})
    return attribution, examples, annotations, consensus


def _labeler_pay(tables, policy=PIVOTAL):
    out = contributor_weights(*tables, ADDR, policy).to_pylist()
    return ({r["contributor"]: r["weight_bps"] for r in out if r["role"] == "labeler"},
            {r["contributor"]: r["score"] for r in out if r["role"] == "labeler"})


@BY_MOVES
def test_pivotal_answer_earns_more_than_a_redundant_one(policy):
    # c5, c6, c7 always right, together on e0..e9: each answer is redundant (the other two settle
    # the label). c8 always right too, but alone with the constant c9 (no information) on e10..e19:
    # each of its answers decides the label. Same count, same accuracy, same example scores.
    label = ["a", "b"] * 10
    rows = [(1.0, label[i], [("c5", label[i]), ("c6", label[i]), ("c7", label[i])]) for i in range(10)]
    rows += [(1.0, label[i], [("c8", label[i]), ("c9", "a")]) for i in range(10, 20)]
    pay, _ = _labeler_pay(_pivot_tables(rows), policy)
    assert pay["c8"] > 3 * pay["c5"] > 0
    assert max(pay[c] for c in ("c5", "c6", "c7")) - min(pay[c] for c in ("c5", "c6", "c7")) <= 1  # rounding
    assert pay["c9"] == 0  # the constant labeler
    # agreement pays the redundant answers as much as the pivotal ones
    agree, _ = _labeler_pay(_pivot_tables(rows), AGREE)
    assert agree["c9"] > 0 and agree["c8"] < 3 * agree["c5"]


@BY_MOVES
def test_an_answer_that_flipped_consensus_wrong_earns_nothing(policy):
    # e0..e7 settled by c5 and c6 (c7 agreeing: its answers there say it is reliable); on e8 c7's
    # answer alone made the consensus 'b', and the example's score says that label hurt the model:
    # c7 earns 0 bps and its score is negative
    rows = [(1.0, lab, [("c5", lab), ("c6", lab), ("c7", lab)]) for lab in ["a", "b"] * 4]
    rows.append((-2.0, "b", [("c7", "b")]))
    pay, score = _labeler_pay(_pivot_tables(rows), policy)
    assert pay["c7"] == 0 and score["c7"] < 0
    assert pay["c5"] + pay["c6"] == 3000
    # the same answer behind a label that helped earns
    rows[-1] = (2.0, "b", [("c7", "b")])
    pay, score = _labeler_pay(_pivot_tables(rows), policy)
    assert pay["c7"] > 0 and score["c7"] > 0


@BY_MOVES
def test_constant_and_random_labelers_earn_about_nothing(policy):
    # c5 and c6 right on every example; c7 always answers 'a'; c8 answers independently of the
    # truth (each class's examples get each of the three answers equally often)
    rng = np.random.default_rng(3)
    labels = ["a", "b", "c"] * 18
    rows = []
    for i, lab in enumerate(labels):
        rows.append((float(rng.uniform(0.2, 2.0)), lab,
                     [("c5", lab), ("c6", lab), ("c7", "a"), ("c8", "abc"[(i // 3) % 3])]))
    rows += [(1.0, lab, [("c5", lab)]) for lab in labels[:6]]  # c5 alone: pivotal
    pay, _ = _labeler_pay(_pivot_tables(rows), policy)
    assert pay["c7"] <= 30 and pay["c8"] <= 30  # of the labelers' 3,000
    assert pay["c5"] > pay["c6"] > 0


def _shares_by_refit(rows, smoothing: float = 1.0) -> dict[tuple[str, int], float]:
    """Each answer's pivotal share computed the long way: for every answer, the M-step counted again
    without that one answer, its labeler's confusion read from the rest (the posterior of the consensus
    label with all the example's answers minus without this one)."""
    classes = sorted({r[1] for r in rows} | {lab for r in rows for _, lab in r[2]})
    k = len(classes)
    prior = np.array([sum(r[1] == c for r in rows) for c in classes], dtype=float)
    log_prior = np.log((prior + smoothing) / (prior.sum() + smoothing * k))

    def log_conf(who: str, skip: tuple[int, str] | None) -> np.ndarray:
        m = np.zeros((k, k))
        for i, r in enumerate(rows):
            for w, lab in r[2]:
                if w == who and (i, w) != skip:
                    m[classes.index(r[1]), classes.index(lab)] += 1.0
        return np.log((m + smoothing) / (m.sum(1, keepdims=True) + smoothing * k))

    def post(z: np.ndarray, c: int) -> float:
        p = np.exp(z - z.max())
        return float(p[c] / p.sum())

    out = {}
    for i, (_, label, answers) in enumerate(rows):
        c = classes.index(label)
        terms = [log_conf(w, (i, w))[:, classes.index(lab)] for w, lab in answers]
        full = log_prior + sum(terms)
        for (w, _), t in zip(answers, terms, strict=True):
            out[(w, i)] = post(full, c) - post(full - t, c)
    return out


def test_each_answer_is_read_under_its_labelers_other_answers():
    """The shares equal an M-step refitted without each answer in turn; so a labeler with one answer
    moves nothing (nothing else says whether it can be trusted), and one answering at random over many
    classes earns nothing for the few answers that happen to agree (counted in, they vouched for
    themselves)."""
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(30):
        lab = str(rng.choice(list("abcd")))
        answers = [(w, lab if rng.random() < acc else str(rng.choice(list("abcd"))))
                   for w, acc in (("c5", 0.9), ("c6", 0.7), ("c7", 0.3)) if rng.random() < 0.8]
        rows.append((1.0, lab, answers))
    rows.append((1.0, "a", [("c5", "a"), ("c8", "a")]))  # c8 answers once
    att, ex, ann, con = _pivot_tables(rows)
    split = ContributorSplit.build(ex, ann, con, ADDR, PIVOTAL)
    m = split.matrices["labeler"].toarray()
    ref = _shares_by_refit(rows)
    for (w, i), v in ref.items():
        assert m[split.contributors["labeler"].index(w), i] == pytest.approx(v, abs=1e-9), (w, i)
    assert m[split.contributors["labeler"].index("c8")].sum() == 0.0

    classes = [f"k{j:02d}" for j in range(30)]
    rows = []
    for _ in range(600):
        lab = str(rng.choice(classes))
        answers = [("c5", lab if rng.random() < 0.95 else str(rng.choice(classes))),
                   ("c6", lab if rng.random() < 0.8 else str(rng.choice(classes))),
                   ("c7", str(rng.choice(classes)))]  # c7 answers at random
        rows.append((1.0, lab, answers))
    pay, _ = _labeler_pay(_pivot_tables(rows), VALUED)
    assert pay["c7"] <= 15 < pay["c6"] < pay["c5"]  # of the labelers' 3,000 bps


@BY_MOVES
def test_pivotal_is_deterministic_order_free_and_replayable(policy):
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):
        lab = str(rng.choice(["a", "b", "c"]))
        answers = [(w, lab if rng.random() < acc else str(rng.choice(["a", "b", "c"])))
                   for w, acc in (("c5", 0.9), ("c6", 0.7), ("c7", 0.4), ("c8", 0.0))
                   if rng.random() < 0.6]
        rows.append((float(rng.normal()), lab, answers))
    tables = _pivot_tables(rows)
    out = contributor_weights(*tables, ADDR, policy)
    assert sum(out["weight_bps"].to_pylist()) == 10_000
    assert contributor_weights(*tables, ADDR, policy).equals(out)
    assert contributor_weights(*(_permuted(t, 7) for t in tables), ADDR, policy).equals(out)
    # the weighting record names the policy; a replay reads it back and gets the same table
    from dataclasses import asdict

    again = WeightPolicy.from_params(asdict(policy))
    assert again == policy and contributor_weights(*tables, ADDR, again).equals(out)


@BY_MOVES
def test_a_label_changed_later_counts_once_as_its_latest_answer(policy):
    rows = [(1.0, lab, [("c5", lab), ("c6", lab)]) for lab in ["a", "b"] * 4]
    base = _pivot_tables(rows)
    att, ex, ann, con = base
    # c6 first answered e000 wrongly, then corrected it: only the correction counts
    early = pa.table({"annotation_id": [-1], "example_id": ["e000"], "annotator": ["c6"], "label": ["b"]})
    edited = pa.concat_tables([early, ann.select(early.column_names)])
    assert contributor_weights(att, ex, edited, con, ADDR, policy).equals(
        contributor_weights(att, ex, ann.select(early.column_names), con, ADDR, policy))


def test_valued_charges_a_wrong_push_only_the_chance_the_displaced_label_was_right():
    # four balanced classes; e0..e7 settled by c5 and c6 (label helped). On e8..e11 c7's answer
    # alone sets the label: right on e8..e10 (helped), wrong on e11 (hurt). Without c7 the label
    # there is the class prior's guess, right by chance 1/3 among the other three labels.
    labels = ["a", "b", "c", "d"]
    rows = [(1.0, lab, [("c5", lab), ("c6", lab)]) for lab in labels * 2]
    rows += [(1.0, lab, [("c7", lab)]) for lab in labels[:3]]
    rows.append((-1.0, "d", [("c7", "d")]))
    _, pivotal = _labeler_pay(_pivot_tables(rows), PIVOTAL)
    pay, valued = _labeler_pay(_pivot_tables(rows), VALUED)
    assert valued["c5"] == pivotal["c5"] and valued["c6"] == pivotal["c6"]  # where labels helped: same
    rows[-1] = (0.0, "d", [("c7", "d")])  # e11 neither helped nor hurt: c7's three right answers
    _, zero = _labeler_pay(_pivot_tables(rows), VALUED)
    rows[-1] = (1.0, "d", [("c7", "d")])  # had it helped, it would have earned one unit
    _, helped = _labeler_pay(_pivot_tables(rows), VALUED)
    unit = helped["c7"] - zero["c7"]
    assert unit > 0 and pivotal["c7"] - zero["c7"] == pytest.approx(-unit, rel=1e-6)  # pivotal: a whole unit
    assert valued["c7"] - zero["c7"] == pytest.approx(-unit / 3, rel=1e-6)  # valued: the 1/3 chance
    assert pay["c7"] > 0


def test_valued_pays_nothing_for_pulling_away_from_a_label_that_hurt():
    # e0..e7 settled by c5 and c6; on e8 they both answered 'b', the label hurt, and c7 answered 'a':
    # pivotal pays c7 for pulling away from it, valued does not (which way it pulled is unknown)
    rows = [(1.0, lab, [("c5", lab), ("c6", lab), ("c7", lab)]) for lab in ["a", "b"] * 4]
    rows.append((-1.0, "b", [("c5", "b"), ("c6", "b"), ("c7", "a")]))
    _, pivotal = _labeler_pay(_pivot_tables(rows), PIVOTAL)
    _, valued = _labeler_pay(_pivot_tables(rows), VALUED)
    rows[-1] = (0.0, *rows[-1][1:])  # e8 neither helped nor hurt
    _, pivotal_zero = _labeler_pay(_pivot_tables(rows), PIVOTAL)
    _, valued_zero = _labeler_pay(_pivot_tables(rows), VALUED)
    assert pivotal["c7"] > pivotal_zero["c7"]
    assert valued["c7"] == pytest.approx(valued_zero["c7"], rel=1e-9)


def test_policy_from_params_reads_old_records_as_agreement():
    assert WeightPolicy.from_params({"provider_share_bps": 7000, "negative": "net"}).labelers == "agree"
    got = WeightPolicy.from_params({"negative": "net", "labelers": "pivotal", "label_smoothing": 0.5})
    assert got.labelers == "pivotal" and got.label_smoothing == 0.5
    # a record before `providers` paid its providers by their summed scores
    assert WeightPolicy.from_params({"negative": "net", "labelers": "valued"}) == WeightPolicy(
        labelers="valued", providers="scores")
    now = {"negative": "net", "labelers": "valued", "providers": "left_out"}
    assert WeightPolicy.from_params(now) == VALUED
    with pytest.raises(ValueError, match="labelers"):
        WeightPolicy(labelers="vote")
    with pytest.raises(ValueError, match="label_smoothing"):
        WeightPolicy(label_smoothing=0.0)
