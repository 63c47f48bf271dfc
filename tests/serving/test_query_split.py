"""Each prediction's fee split equals the per-row reference (split_query, merged per address),
whether it came in a batch (split_queries) or alone (split_one)."""

from __future__ import annotations

import numpy as np

from attribution import ContributorError
from serving import SPLIT_QUERY, SPLIT_RUN
from serving.fees import merge_bps


def _reference(served, contributions: np.ndarray) -> list:
    out = []
    for i in range(contributions.shape[1]):
        try:
            table = served.split.split_query(served.example_ids, contributions[:, i])
        except ContributorError:
            out.append(None)
            continue
        pairs = zip(table["address"].to_pylist(), table["weight_bps"].to_pylist(), strict=True)
        out.append(tuple(merge_bps(pairs)))
    return out


def test_predictions_split_as_the_per_row_reference(world):
    served = world.served
    raw = np.vstack([world.run.X_test, np.random.default_rng(5).normal(0, 4.0, size=(64, 6))])
    out = served.predict(raw)
    x = served.encoding.scale(raw)
    labels = [served.encoding.classes.index(p.label) for p in out]
    expected = _reference(served, served.features.scores(x, labels))
    assert [p.bps for p in out] == [served.run_bps if e is None else e for e in expected]
    assert [p.split for p in out] == [SPLIT_RUN if e is None else SPLIT_QUERY for e in expected]
    assert all(type(a) is str and type(b) is int for p in out for a, b in p.bps)


def test_single_input_requests_split_as_the_per_row_reference(world):
    # one row per call takes ServedRun's single-input path (split_one), a batch split_queries;
    # both match the reference on the same scores (a row's scores alone and inside a batch may
    # differ in the last float bits, so each side is checked on its own scores)
    served = world.served
    raw = np.vstack([world.run.X_test[:24], np.random.default_rng(6).normal(0, 4.0, size=(24, 6))])
    singles = [served.predict(raw[i : i + 1])[0] for i in range(len(raw))]
    assert any(p.split == SPLIT_QUERY for p in singles)
    x = served.encoding.scale(raw)
    for i, p in enumerate(singles):
        label = served.encoding.classes.index(p.label)
        (expected,) = _reference(served, served.features.scores(x[i : i + 1], [label]))
        assert p.bps == (served.run_bps if expected is None else expected)
        assert p.split == (SPLIT_RUN if expected is None else SPLIT_QUERY)
    contributions = served.features.scores(x, [served.encoding.classes.index(p.label) for p in singles])
    batched = served.query_bps(contributions)
    assert [served.query_bps(contributions[:, i : i + 1])[0] for i in range(len(raw))] == batched
    assert batched == _reference(served, contributions)


def test_rows_without_positive_or_finite_scores_take_the_run_weights(world):
    served = world.served
    x = served.encoding.scale(world.run.X_test[:3])
    contributions = served.features.scores(x, [0, 1, 2])
    contributions[:, 1] = -np.abs(contributions[:, 1])  # nothing helped this one
    contributions[0, 2] = np.nan
    got = served.query_bps(contributions)
    assert got[1] is None and got[2] is None
    assert got[0] == _reference(served, contributions[:, :1])[0]
    assert served.query_bps(contributions[:, :1]) == got[:1]  # the single-input path
    assert served.query_bps(contributions[:, 1:2]) == [None]
    assert served.query_bps(contributions[:, 2:]) == [None]
