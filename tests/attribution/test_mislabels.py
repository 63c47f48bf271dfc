"""The mislabel detector: cross-fitted probabilities scored by cleanlab, on a synthetic set with
known flipped labels."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from attribution import AttributionTask, InputError, ModelSpec, TrainConfig, label_quality, review_labels


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
