"""The mislabel detector: cross-fitted probabilities scored by cleanlab, on a synthetic set with
known flipped labels."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from attribution import (
    AttributionTask,
    InputError,
    ModelSpec,
    TrainConfig,
    forest_probs,
    label_quality,
    out_of_sample_probs,
    review_labels,
)
from attribution.mislabels import fold_of


def blobs(n: int = 600, c: int = 4, d: int = 8, rate: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (c, d))
    y = rng.integers(0, c, n)
    x = (centers[y] + rng.normal(0, 1, (n, d))).astype(np.float32)
    flip = rng.random(n) < rate
    noisy = np.where(flip, (y + rng.integers(1, c, n)) % c, y)
    return x, noisy, flip


def task(d: int = 8, c: int = 4) -> AttributionTask:
    return AttributionTask(ModelSpec((d, 32, c)), TrainConfig(epochs=10, batch_size=64, lr=0.1))


def test_flipped_labels_rank_first_and_are_flagged():
    x, noisy, flip = blobs()
    review, probs = review_labels(task(), x, noisy, folds=5, seed=0)
    assert probs.shape == (len(x), 4)
    assert np.allclose(probs.sum(1), 1.0)
    auc = roc_auc_score(flip, -review.quality)
    assert auc > 0.9, auc
    flagged = review.flagged
    assert flagged.sum() > 0
    assert (flip & flagged).sum() / flagged.sum() > 0.7  # precision of the flags
    assert (flip & flagged).sum() / flip.sum() > 0.5  # recall
    top = review.ranked()[: flip.sum()]
    assert flip[top].mean() > 0.7


def test_deterministic():
    x, noisy, _ = blobs(n=300)
    a, pa = review_labels(task(), x, noisy, folds=3, seed=1)
    b, pb = review_labels(task(), x, noisy, folds=3, seed=1)
    assert np.array_equal(pa, pb)
    assert np.array_equal(a.quality, b.quality) and np.array_equal(a.flagged, b.flagged)
    assert np.array_equal(a.ranked(), b.ranked())


def test_label_quality_is_pure_and_checks_its_input():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    probs = np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1]] * 0.9 + 0.1 / 3
    probs[7] = [0.9, 0.05, 0.05]  # row 7 says 1, the model says 0
    review = label_quality(labels, probs)
    assert review.ranked()[0] == 7
    assert review.suggested[7] == 0
    # a class never given as a label (3 columns, labels only 0 and 1) is allowed
    label_quality(np.array([0, 1, 0, 1]), np.full((4, 3), 1 / 3))
    with pytest.raises(InputError):
        label_quality(labels, probs[:5])
    with pytest.raises(InputError):
        label_quality(np.array([0, 3]), np.full((2, 3), 1 / 3))


def test_the_detector_averages_the_recipe_and_a_forest_each_cross_fitted():
    x, noisy, _ = blobs(n=300)
    _, both = review_labels(task(), x, noisy, folds=3, seed=1)
    _, recipe = review_labels(task(), x, noisy, folds=3, seed=1, forest=False)
    np.testing.assert_array_equal(recipe, out_of_sample_probs(task(), x, noisy, folds=3, seed=1))
    np.testing.assert_allclose(both, (recipe + forest_probs(x, noisy, 4, folds=3, seed=1)) / 2)


def test_forest_probs_predict_each_fold_from_the_others_only():
    """Each fold's rows are predicted by scikit-learn's forest fitted on the other folds (fold k's seeded
    seed + k); a class the other folds lack (class 4, one row) gets probability 0 in its row."""
    from sklearn.ensemble import RandomForestClassifier

    x, noisy, _ = blobs(n=200, c=4)
    x, noisy = np.vstack([x, x[:1] + 50]), np.append(noisy, 4)
    got = forest_probs(x, noisy, 5, folds=4, seed=3)
    fold = fold_of(len(x), 4, 3)
    for k in range(4):
        held = fold == k
        forest = RandomForestClassifier(random_state=3 + k).fit(x[~held], noisy[~held])
        np.testing.assert_allclose(got[np.ix_(held, forest.classes_)], forest.predict_proba(x[held]))
    assert got[-1, 4] == 0.0 and np.allclose(got.sum(1), 1.0)
    assert np.array_equal(got, forest_probs(x, noisy, 5, folds=4, seed=3))
    with pytest.raises(InputError, match="cross-fitting needs 2 folds"):
        forest_probs(x[:3], noisy[:3], 5, folds=4)
