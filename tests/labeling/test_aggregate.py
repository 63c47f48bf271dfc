"""Aggregation and annotator quality on simulated answers with known truth (pure, no server)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest
from crowdkit.aggregation import MajorityVote
from scipy.stats import spearmanr

from labeling import ANNOTATIONS, aggregate, majority_vote, simulate_answers, simulated_annotators

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CLASSES = ("a", "b", "c", "d")
ACCURACIES = (0.95, 0.85, 0.7, 0.55)


def table(rows: list[tuple]) -> pa.Table:
    """(example_id, annotator, label[, seconds after T0]) -> an annotations table."""
    out = []
    for i, r in enumerate(rows):
        at = T0 + timedelta(seconds=r[3] if len(r) > 3 else 0)
        out.append(
            {
                "annotation_id": i + 1,
                "example_id": r[0],
                "annotator": r[1],
                "label": r[2],
                "created_at": at,
                "updated_at": at,
                "lead_time_s": float(i % 7 + 1),
            }
        )
    return pa.Table.from_pylist(out, schema=ANNOTATIONS)


def simulated(n: int = 800, seed: int = 7):
    rng = random.Random(seed)
    truth = {f"e{i:04d}": rng.choice(CLASSES) for i in range(n)}
    annotators = simulated_annotators(ACCURACIES)
    answers = simulate_answers(truth, annotators, CLASSES, per_example=3, seed=seed)
    return truth, annotators, table([(a.example_id, a.annotator.email, a.label) for a in answers])


def accuracy(consensus: pa.Table, truth: dict) -> float:
    pairs = zip(consensus["example_id"].to_pylist(), consensus["label"].to_pylist(), strict=True)
    return sum(truth[e] == lab for e, lab in pairs) / len(truth)


def test_dawid_skene_beats_majority_vote_and_ranks_annotators_like_the_truth():
    truth, annotators, ann = simulated()
    mv, ds = aggregate(ann, method="majority_vote"), aggregate(ann, method="dawid_skene")
    assert accuracy(ds.consensus, truth) > accuracy(mv.consensus, truth) + 0.01
    est = dict(
        zip(ds.quality["annotator"].to_pylist(), ds.quality["estimated_accuracy"].to_pylist(), strict=True)
    )
    true_acc = {a.email: a.accuracy for a in annotators}
    rho = spearmanr([est[k] for k in sorted(est)], [true_acc[k] for k in sorted(est)]).statistic
    assert rho == pytest.approx(1.0)
    for k in est:  # the estimates are accuracies, not just a ranking
        assert est[k] == pytest.approx(true_acc[k], abs=0.07)
    assert sum(ds.quality["n_annotations"].to_pylist()) == 2400  # 800 tasks x 3 of 4 annotators


@pytest.mark.filterwarnings("ignore:The inplace keyword")
def test_our_majority_vote_agrees_with_crowd_kit_where_there_is_no_tie():
    _, _, ann = simulated(n=400, seed=3)
    ours = majority_vote(ann).to_pandas().set_index("example_id")
    df = ann.to_pandas().rename(columns={"example_id": "task", "annotator": "worker"})
    theirs = MajorityVote().fit_predict(df[["task", "worker", "label"]])
    clear = ours.index[ours["confidence"] > 0.5]
    assert len(clear) > 300
    assert (ours.loc[clear, "label"] == theirs.loc[clear]).all()


def test_majority_vote_ties_votes_and_confidence_are_deterministic():
    ann = table([("x", "u1", "b"), ("x", "u2", "a"), ("y", "u1", "c"), ("y", "u2", "c"), ("y", "u3", "a")])
    got = majority_vote(ann).to_pylist()
    assert got == [
        {"example_id": "x", "label": "a", "confidence": 0.5, "n_votes": 2},
        {"example_id": "y", "label": "c", "confidence": pytest.approx(2 / 3), "n_votes": 3},
    ]


def test_same_annotations_in_any_order_give_the_same_bytes():
    _, _, ann = simulated(n=300, seed=11)
    shuffled = ann.take(pa.array(random.Random(1).sample(range(ann.num_rows), ann.num_rows)))
    for method in ("majority_vote", "dawid_skene"):
        a, b = aggregate(ann, method=method), aggregate(shuffled, method=method)
        assert a.consensus.equals(b.consensus) and a.quality.equals(b.quality)


def test_latest_version_of_an_annotators_vote_counts_once():
    ann = table([("x", "u1", "a", 0), ("x", "u1", "b", 10), ("x", "u2", "b", 0)])
    assert majority_vote(ann).to_pylist() == [
        {"example_id": "x", "label": "b", "confidence": 1.0, "n_votes": 2}
    ]


def test_gold_accuracy_is_reported_beside_the_estimate():
    truth, annotators, ann = simulated(n=500, seed=5)
    gold_ids = sorted(truth)[:100]
    gold = pa.table({"example_id": gold_ids, "label": [truth[e] for e in gold_ids]})
    q = aggregate(ann, gold=gold).quality.to_pandas().set_index("annotator")
    df = ann.to_pandas()
    df = df[df["example_id"].isin(gold_ids)]
    for who, g in df.groupby("annotator"):
        expected = (g["label"] == g["example_id"].map(truth)).mean()
        assert q.loc[who, "gold_accuracy"] == pytest.approx(expected)
        assert q.loc[who, "n_gold"] == len(g)
    # Gold answers are fixed as truths in the fit: the consensus on gold tasks is the gold label.
    cons = aggregate(ann, gold=gold).consensus.to_pandas().set_index("example_id")
    assert (cons.loc[gold_ids, "label"] == pd.Series({e: truth[e] for e in gold_ids})).all()


def test_quality_without_gold_or_lead_times_has_nulls_not_zeros():
    ann = table([("x", "u1", "a"), ("x", "u2", "a")]).set_column(
        6, "lead_time_s", pa.array([None, None], pa.float64())
    )
    q = aggregate(ann, method="majority_vote").quality.to_pylist()
    assert [r["gold_accuracy"] for r in q] == [None, None] and [r["mean_lead_time_s"] for r in q] == [
        None,
        None,
    ]
    assert [r["agreement"] for r in q] == [1.0, 1.0]


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown aggregation method 'vote'"):
        aggregate(table([("x", "u1", "a")]), method="vote")
