"""Contributor weights: exact 10,000 bps, order invariance, determinism, named errors."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution import ContributorError, WeightPolicy, contributor_weights
from attribution.weights import largest_remainder, quantize

ADDR = {f"c{i}": "0x" + f"{i + 1:040x}" for i in range(12)}


def _tables(scores, providers, votes):
    n = len(scores)
    ids = [f"e{i:03d}" for i in range(n)]
    attribution = pa.table({"example_id": ids, "score": np.asarray(scores, dtype=np.float64),
                            "method": ["inrun_sgd"] * n, "run_id": ["r"] * n})
    examples = pa.table({"example_id": ids, "provider": providers})
    ann_rows = [(ids[e], who, lab) for e, who, lab in votes]
    annotations = pa.table({"annotation_id": [str(i) for i in range(len(ann_rows))],
                            "example_id": [r[0] for r in ann_rows], "annotator": [r[1] for r in ann_rows],
                            "label": [r[2] for r in ann_rows]})
    consensus = pa.table({"example_id": ids, "label": ["a"] * n, "confidence": [0.9] * n, "n_votes": [2] * n})
    return attribution, examples, annotations, consensus


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
    tables = _tables(scores, providers, votes)
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
    att, ex, ann, con = _tables([1.0, 3.0, -2.0], ["c0", "c1", "c1"],
                                [(0, "c5", "a"), (0, "c6", "a"), (1, "c6", "a"), (1, "c7", "b")])
    out = contributor_weights(att, ex, ann, con, ADDR).to_pylist()
    got = {(r["role"], r["contributor"]): r["weight_bps"] for r in out}
    # providers 70%: c0 1/4, c1 3/4 (the negative example is clipped)
    assert got[("provider", "c0")] == 1750 and got[("provider", "c1")] == 5250
    # labelers 30%: e0 credit 0.9 split c5/c6, e1 credit 2.7 to c6 (c7 disagreed, listed with 0)
    assert got[("labeler", "c5")] == 375 and got[("labeler", "c6")] == 2625
    assert got[("labeler", "c7")] == 0
    assert all(r["address"].startswith("0x") for r in out)


def test_net_policy_offsets_negative_examples():
    att, ex, ann, con = _tables([1.0, 3.0, -2.0], ["c0", "c1", "c1"], [])
    out = contributor_weights(att, ex, ann, con, ADDR, WeightPolicy(negative="net")).to_pylist()
    got = {r["contributor"]: r["weight_bps"] for r in out}
    assert got == {"c0": 5000, "c1": 5000}  # no labelers: providers take the whole pool


def test_largest_remainder_ties_broken_by_address():
    thirds = [Fraction(10_000, 3)] * 3
    assert largest_remainder(thirds, [("0xb",), ("0xa",), ("0xc",)]) == [3333, 3334, 3333]


def test_contributor_ties_go_to_the_lowest_address_as_a_number():
    # checksummed, 0xA3A3.. sorts before 0xa2A2.. as a string; as numbers 0xa2.. is lower
    addr = {"c0": "0x" + "a3" * 20, "c1": "0x" + "a2" * 20, "c2": "0x" + "ff" * 20}
    att, ex, ann, con = _tables([1.0, 1.0, 1.0], ["c0", "c1", "c2"], [])
    out = contributor_weights(att, ex, ann, con, addr).to_pylist()
    assert min(r["address"] for r in out).startswith("0xA3")  # the trap: string order of checksums
    assert {r["contributor"]: r["weight_bps"] for r in out} == {"c0": 3333, "c1": 3334, "c2": 3333}


def test_quantize_hides_float_noise():
    a = np.array([1.0, 0.123456789, -0.5])
    assert np.array_equal(quantize(a, 6), quantize(a * (1 + 1e-12), 6))


def test_missing_addresses_named_in_one_error():
    att, ex, ann, con = _tables([1.0, 2.0], ["c0", "c1"], [(0, "c5", "a")])
    with pytest.raises(ContributorError, match="c1, c5"):
        contributor_weights(att, ex, ann, con, {"c0": ADDR["c0"]})


def test_examples_without_provider_and_unknown_examples():
    att, ex, ann, con = _tables([1.0, 2.0], ["c0", ""], [])
    with pytest.raises(ContributorError, match="no provider.*e001"):
        contributor_weights(att, ex, ann, con, ADDR)
    att, ex, ann, con = _tables([1.0, 2.0], ["c0", "c1"], [])
    with pytest.raises(ContributorError, match="not in the examples table"):
        contributor_weights(att, ex.slice(0, 1), ann, con, ADDR)


def test_all_negative_scores_is_a_clear_error():
    att, ex, ann, con = _tables([-1.0, -2.0], ["c0", "c1"], [])
    with pytest.raises(ContributorError, match="nothing to split"):
        contributor_weights(att, ex, ann, con, ADDR)
