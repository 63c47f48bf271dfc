"""Aggregation and annotator quality on simulated answers with known truth (pure, no server)."""

from __future__ import annotations

import random
import warnings
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from crowdkit.aggregation import MajorityVote
from scipy.stats import spearmanr

from labeling import (
    ANNOTATIONS,
    MODEL_ANNOTATOR,
    MODEL_METHODS,
    ModelProbs,
    aggregate,
    auto_smoothing,
    dawid_skene,
    majority_vote,
    simulate_answers,
    simulated_annotators,
)

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


def model_probs(
    truth: dict, *, right: float, seed: int, wrong: float = 0.2, ids: list[str] | None = None
) -> ModelProbs:
    """A classifier's probabilities: its predicted class gets `right` of the mass, the rest spread
    evenly; it predicts a wrong class on a `wrong` fraction of the rows."""
    rng = np.random.default_rng(seed)
    ids = sorted(truth) if ids is None else ids
    p = np.full((len(ids), len(CLASSES)), (1 - right) / (len(CLASSES) - 1))
    for i, e in enumerate(ids):
        k = CLASSES.index(truth[e])
        if rng.random() < wrong:
            k = (k + 1 + int(rng.integers(len(CLASSES) - 1))) % len(CLASSES)
        p[i, k] = right
    return ModelProbs(tuple(ids), CLASSES, p)


def test_crowdlab_is_cleanlabs_consensus_with_class_names_kept():
    """Our shaping (annotators as columns, class names to indices and back) against cleanlab called
    directly on a frame built another way (by pandas pivot)."""
    from cleanlab.multiannotator import get_label_quality_multiannotator

    truth, _, ann = simulated(n=400, seed=3)
    probs = model_probs(truth, right=0.7, seed=3)
    got = aggregate(ann, method="crowdlab", probs=probs)
    frame = ann.to_pandas().pivot(index="example_id", columns="annotator", values="label")
    frame = frame.apply(lambda col: col.map({c: k for k, c in enumerate(CLASSES)})).astype(float).sort_index()
    ref = get_label_quality_multiannotator(frame, probs.probs, calibrate_probs=True, verbose=False)
    ref = ref["label_quality"]
    assert got.consensus["example_id"].to_pylist() == list(frame.index)
    assert got.consensus["label"].to_pylist() == [CLASSES[int(k)] for k in ref["consensus_label"]]
    assert got.consensus["confidence"].to_pylist() == pytest.approx(list(ref["consensus_quality_score"]))
    assert got.model_informed == 400 and got.method == "crowdlab"


@pytest.mark.parametrize("method", MODEL_METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_good_model_beats_dawid_skene_and_a_bad_sure_one_costs_little(method, seed):
    truth, _, ann = simulated(n=600, seed=seed)
    ds = accuracy(aggregate(ann, method="dawid_skene").consensus, truth)
    good = aggregate(ann, method=method, probs=model_probs(truth, right=0.9, wrong=0.1, seed=seed))
    assert accuracy(good.consensus, truth) > ds + 0.02
    # wrong on half the rows yet sure of itself: calibrated against the answers (CROWDLAB), or its
    # confusion learned like anyone's (Dawid-Skene), it barely counts
    bad = aggregate(ann, method=method, probs=model_probs(truth, right=0.9, wrong=0.5, seed=seed))
    assert accuracy(bad.consensus, truth) > ds - 0.02


def test_dawid_skene_model_is_the_dawid_skene_fit_with_the_model_as_one_more_worker():
    """Against ``dawid_skene`` on a table built by hand (which is checked against crowd-kit and an
    independent EM below); the people's counts and accuracies come back without the model, which
    never labels an example alone."""
    truth, _, ann = simulated(n=300, seed=6)
    ids = sorted(truth)
    probs = model_probs(truth, right=0.8, seed=6)
    extra = ModelProbs((*probs.example_ids, "unanswered"), CLASSES, np.vstack([probs.probs, [[1, 0, 0, 0]]]))
    got = aggregate(ann, method="dawid_skene_model", probs=extra)
    rows = [(r["example_id"], r["annotator"], r["label"]) for r in ann.to_pylist()]
    rows += [(e, MODEL_ANNOTATOR, CLASSES[k]) for e, k in zip(ids, probs.probs.argmax(1), strict=True)]
    ref = dawid_skene(table(rows)).consensus
    assert got.consensus["example_id"].to_pylist() == ref["example_id"].to_pylist()  # not "unanswered"
    assert got.consensus["label"].to_pylist() == ref["label"].to_pylist()
    assert set(got.consensus["n_votes"].to_pylist()) == {3}
    assert MODEL_ANNOTATOR not in got.quality["annotator"].to_pylist() and got.model_informed == 300


def _smoothed_em(ann: pa.Table, smoothing: float, iters: int = 500) -> dict[str, tuple[str, float]]:
    """An independent Dawid-Skene in NumPy: majority-vote start, M-step with ``smoothing`` pseudo-counts
    per confusion cell, E-step; example -> (label, posterior of it)."""
    rows = ann.select(["example_id", "annotator", "label"]).to_pylist()
    ex = sorted({r["example_id"] for r in rows})
    who = sorted({r["annotator"] for r in rows})
    lab = sorted({r["label"] for r in rows})
    e_i, w_i, l_i = ({v: i for i, v in enumerate(x)} for x in (ex, who, lab))
    e = np.array([e_i[r["example_id"]] for r in rows])
    w = np.array([w_i[r["annotator"]] for r in rows])
    j = np.array([l_i[r["label"]] for r in rows])
    k = len(lab)
    post = np.zeros((len(ex), k))
    np.add.at(post, (e, j), 1.0)
    post /= post.sum(1, keepdims=True)
    for _ in range(iters):
        prior = np.clip(post.mean(0), 1e-10, None)
        counts = np.zeros((len(who), k, k))  # [annotator, true, answered]
        np.add.at(counts, (w, slice(None), j), post[e])
        conf = (counts + smoothing) / (counts + smoothing).sum(2, keepdims=True)
        logp = np.log(prior) + np.zeros((len(ex), k))
        np.add.at(logp, e, np.log(conf[w, :, j]))
        post = np.exp(logp - logp.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
    return {x: (lab[int(post[i].argmax())], float(post[i].max())) for i, x in enumerate(ex)}


def test_smoothed_dawid_skene_is_the_map_fit_and_zero_smoothing_is_crowd_kits():
    from crowdkit.aggregation import DawidSkene

    truth, _, ann = simulated(n=300, seed=3)
    got = dawid_skene(ann, n_iter=500, tol=1e-12).consensus
    ref = _smoothed_em(ann, 1.0)
    ids = got["example_id"].to_pylist()
    assert got["label"].to_pylist() == [ref[x][0] for x in ids]
    np.testing.assert_allclose(got["confidence"].to_numpy(), [ref[x][1] for x in ids], atol=1e-6)
    data = ann.to_pandas()[["example_id", "annotator", "label"]].rename(
        columns={"example_id": "task", "annotator": "worker"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = DawidSkene(n_iter=100, tol=1e-5).fit(data).labels_.sort_index()
    assert dawid_skene(ann, smoothing=0.0).consensus["label"].to_pylist() == list(plain)
    with pytest.raises(ValueError, match="smoothing"):
        dawid_skene(ann, smoothing=-1.0)


def test_smoothing_keeps_an_unseen_answer_from_vetoing_a_class():
    """Many classes, few answers per annotator and class: unsmoothed, a (true class, answer) pair that
    happens to be unseen rules that class out (crowd-kit floors it at 1e-10); smoothed, it does not."""
    classes = tuple(f"k{i:02d}" for i in range(12))
    people = simulated_annotators((0.95, 0.85, 0.7, 1 / 12))
    gains = []
    for seed in range(4):
        rng = random.Random(seed)
        truth = {f"e{i:04d}": rng.choice(classes) for i in range(600)}
        answers = simulate_answers(truth, people, classes, per_example=3, seed=seed)
        ann = table([(a.example_id, a.annotator.email, a.label) for a in answers])
        gains.append(accuracy(dawid_skene(ann).consensus, truth)
                     - accuracy(dawid_skene(ann, smoothing=0.0).consensus, truth))
    assert np.mean(gains) > 0 and min(gains) >= 0, gains


def test_a_large_label_set_gets_fewer_pseudo_counts_than_one_per_cell():
    """30 classes, 450 answers per annotator: one pseudo-count per cell puts 30 in each confusion row
    against 15 answers, every annotator looks like chance and the consensus falls apart; the default
    (``auto_smoothing``: a row's pseudo-counts at most a quarter of its answers) keeps it above the
    unsmoothed fit's."""
    classes = tuple(f"k{i:02d}" for i in range(30))
    for seed in range(3):
        rng = random.Random(seed)
        truth = {f"e{i:04d}": rng.choice(classes) for i in range(600)}
        people = simulated_annotators((0.95, 0.85, 0.7, 1 / 30))
        answers = simulate_answers(truth, people, classes, per_example=3, seed=seed)
        ann = table([(a.example_id, a.annotator.email, a.label) for a in answers])
        auto = aggregate(ann)
        assert auto.smoothing == auto_smoothing(ann) == pytest.approx(0.25 * (1800 / 4) / 30**2)
        one, none = aggregate(ann, smoothing=1.0), aggregate(ann, smoothing=0.0)
        got = accuracy(auto.consensus, truth)
        assert got > accuracy(one.consensus, truth) + 0.05 and got >= accuracy(none.consensus, truth), seed


def test_every_dawid_skene_method_fits_with_the_smoothing_it_is_given_and_says_which():
    truth, _, ann = simulated(n=300, seed=3)
    probs = model_probs(truth, right=0.9, seed=3)
    for method in ("dawid_skene", *MODEL_METHODS):
        given = probs if method in MODEL_METHODS else None
        plain, default = aggregate(ann, None, method, given, 0.0), aggregate(ann, None, method, given)
        assert (plain.smoothing, default.smoothing) == (0.0, 1.0)
        # the fit's posteriors differ (CROWDLAB decides every example here; its accuracies are the fit's)
        same = plain.consensus.equals(default.consensus) and plain.quality.equals(default.quality)
        assert not same, method
    assert aggregate(ann, method="majority_vote").smoothing is None
    assert aggregate(ann, smoothing=0.0).consensus.equals(dawid_skene(ann, smoothing=0.0).consensus)


def test_crowdlab_leaves_gold_uncovered_and_unknown_labels_to_dawid_skene():
    truth, _, ann = simulated(n=300, seed=4)
    ids = sorted(truth)
    gold_ids, covered = ids[:20], ids[:250]  # the last 50 arrived after the model's run
    gold = pa.table({"example_id": gold_ids, "label": [truth[e] for e in gold_ids]})
    odd = table([(ids[100], "someone", "z")])  # a label the model never saw
    ann = pa.concat_tables([ann, odd])
    ds = aggregate(ann, gold=gold).consensus.to_pandas().set_index("example_id")
    probs = model_probs(truth, right=0.9, seed=4, ids=covered)
    cl = aggregate(ann, gold=gold, method="crowdlab", probs=probs)
    got = cl.consensus.to_pandas().set_index("example_id")
    kept = [*gold_ids, ids[100], *ids[250:]]
    assert got.loc[kept].equals(ds.loc[kept])
    assert cl.model_informed == 250 - 20 - 1
    assert (got.loc[gold_ids, "label"] == pd.Series({e: truth[e] for e in gold_ids})).all()


def test_crowdlab_gives_the_same_bytes_for_answers_in_any_order():
    truth, _, ann = simulated(n=300, seed=11)
    shuffled = ann.take(pa.array(random.Random(1).sample(range(ann.num_rows), ann.num_rows)))
    probs = model_probs(truth, right=0.7, seed=11)
    a, b = aggregate(ann, method="crowdlab", probs=probs), aggregate(shuffled, method="crowdlab", probs=probs)
    assert a.consensus.equals(b.consensus) and a.quality.equals(b.quality)


def test_crowdlab_with_one_answer_per_example_keeps_dawid_skene():
    ann = table([("x", "u1", "a"), ("y", "u2", "b")])
    probs = ModelProbs(("x", "y"), CLASSES, np.full((2, 4), 0.25))
    cl = aggregate(ann, method="crowdlab", probs=probs)
    assert cl.model_informed == 0 and cl.consensus.equals(aggregate(ann).consensus)


def test_crowdlab_needs_probabilities_and_they_must_fit():
    ann = table([("x", "u1", "a"), ("x", "u2", "a")])
    for method in MODEL_METHODS:
        with pytest.raises(ValueError, match="need a model's out-of-sample probabilities"):
            aggregate(ann, method=method)
    with pytest.raises(ValueError, match="need a model's out-of-sample probabilities"):
        aggregate(ann, probs=ModelProbs(("x",), CLASSES, np.full((1, 4), 0.25)))
    with pytest.raises(ValueError, match=r"shape \(1, 3\) do not match 1 examples x 4 classes"):
        ModelProbs(("x",), CLASSES, np.full((1, 3), 0.25))
    with pytest.raises(ValueError, match="finite, non-negative"):
        ModelProbs(("x",), CLASSES, np.array([[0.5, np.nan, 0.25, 0.25]]))
    impostor = table([("x", MODEL_ANNOTATOR, "a"), ("x", "u2", "a")])
    flat = ModelProbs(("x",), CLASSES, np.full((1, 4), 0.25))
    with pytest.raises(ValueError, match="the model's own name here"):
        aggregate(impostor, method="dawid_skene_model", probs=flat)
