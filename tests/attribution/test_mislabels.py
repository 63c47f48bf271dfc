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
    fitted_length,
    forest_probs,
    label_quality,
    mixture_weight,
    out_of_sample_probs,
    review_labels,
    with_votes,
)
from attribution.mislabels import RECIPE_SEEDS, SEED_STRIDE, fold_of


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


def test_the_detector_mixes_the_recipe_and_a_forest_by_the_fitted_weight():
    """The recipe's probabilities are its cross-fits under RECIPE_SEEDS model seeds (same folds), averaged."""
    x, noisy, _ = blobs(n=300)
    review, both = review_labels(task(), x, noisy, folds=3, seed=1, epoch_factors=(1,))
    alone, recipe = review_labels(task(), x, noisy, folds=3, seed=1, forest=False, epoch_factors=(1,))
    seeds = [out_of_sample_probs(task(), x, noisy, folds=3, seed=1, model_seed=SEED_STRIDE * j)
             for j in range(RECIPE_SEEDS)]
    assert RECIPE_SEEDS == 2 and not np.array_equal(*seeds)
    np.testing.assert_array_equal(recipe, np.mean(seeds, axis=0))
    _, first = review_labels(task(), x, noisy, folds=3, seed=1, forest=False, epoch_factors=(1,),
                             recipe_seeds=1)
    np.testing.assert_array_equal(first, seeds[0])
    forest = forest_probs(x, noisy, 4, folds=3, seed=1)
    w = mixture_weight(noisy, recipe, forest)
    assert review.recipe_weight == w and alone.recipe_weight == 1.0
    assert review.epochs == alone.epochs == 10
    np.testing.assert_allclose(both, w * recipe + (1 - w) * forest)


def test_the_detector_keeps_the_training_length_whose_mixture_fits_the_labels_best():
    """Each length is the recipe cross-fitted for that many epochs (``out_of_sample_probs`` of the task
    with its epochs replaced); the one kept has the least log-loss of the given labels once mixed, and
    the review scores exactly that mixture."""
    import dataclasses

    x, noisy, _ = blobs(n=300, seed=3)
    review, probs = review_labels(task(), x, noisy, folds=3, seed=1, recipe_seeds=1)
    forest = forest_probs(x, noisy, 4, folds=3, seed=1)
    rows = np.arange(len(noisy))
    losses = {}
    for epochs in (10, 20, 40):
        longer = dataclasses.replace(task(), config=dataclasses.replace(task().config, epochs=epochs))
        recipe = out_of_sample_probs(longer, x, noisy, folds=3, seed=1)
        w = mixture_weight(noisy, recipe, forest)
        mixed = w * recipe + (1 - w) * forest
        losses[epochs] = (-np.log(mixed[rows, noisy]).mean(), w, mixed)
    kept = min(losses, key=lambda e: losses[e][0])
    assert review.epochs == kept and review.recipe_weight == losses[kept][1]
    np.testing.assert_allclose(probs, losses[kept][2])
    assert review.quality.tolist() == label_quality(noisy, probs).quality.tolist()


def test_fitted_length_is_pure_and_prefers_the_shorter_on_a_tie():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 500)
    good, fair = _probs_that_know(y, 3, 0.8, rng), _probs_that_know(y, 3, 0.5, rng)
    assert fitted_length(y, {40: good, 20: fair})[:1] == (40,)
    assert fitted_length(y, {40: fair, 20: good})[0] == 20
    epochs, probs, w = fitted_length(y, {20: good, 10: good})
    assert epochs == 10 and w == 1.0 and probs is good
    with pytest.raises(InputError, match="at least one"):
        fitted_length(y, {})
    with pytest.raises(InputError, match="epoch_factors"):
        review_labels(task(), *blobs(n=60)[:2], folds=3, epoch_factors=(0.5, 1))
    with pytest.raises(InputError, match="recipe_seeds must be 1 or more"):
        review_labels(task(), *blobs(n=60)[:2], folds=3, recipe_seeds=0)


def _probs_that_know(y: np.ndarray, c: int, right: float, rng) -> np.ndarray:
    """Class probabilities that give the given label `right` on 90 % of rows, noise elsewhere."""
    p = rng.dirichlet(np.ones(c), len(y))
    knows = rng.random(len(y)) < 0.9
    p[knows] = (1 - right) / (c - 1)
    p[knows, y[knows]] = right
    return p


def test_mixture_weight_is_the_least_log_loss_on_its_grid():
    """Against scipy's bounded scalar minimizer of the same log-loss: within the grid's half step; a
    model blind to the labels (uniform noise) gets little weight, whichever side it is on."""
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(7)
    y = rng.integers(0, 5, 2000)
    good, fair = _probs_that_know(y, 5, 0.8, rng), _probs_that_know(y, 5, 0.5, rng)
    blind = rng.dirichlet(np.ones(5), len(y))
    rows = np.arange(len(y))
    for a, b in ((good, fair), (fair, good), (good, blind)):
        def loss(w, a=a, b=b):
            return -np.log(w * a[rows, y] + (1 - w) * b[rows, y]).mean()

        ref = minimize_scalar(loss, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-6}).x
        got = mixture_weight(y, a, b)
        assert abs(got - ref) <= 0.025 + 1e-6, (got, ref)
        assert loss(got) <= min(loss(w) for w in np.linspace(0, 1, 21)) + 1e-12
    assert mixture_weight(y, good, blind) >= 0.9 and mixture_weight(y, blind, good) <= 0.1


def extra_trees(rows_x, rows_y, x, n_classes, seed, batches=(100, 100, 100)):
    """The reference forest: scikit-learn's extra trees drawing from every feature at each split, grown in
    batches of the given sizes (the j-th seeded seed + 1000 j), their probabilities averaged by size."""
    from sklearn.ensemble import ExtraTreesClassifier

    out = np.zeros((len(x), n_classes))
    for j, size in enumerate(batches):
        forest = ExtraTreesClassifier(n_estimators=size, max_features=1.0, random_state=seed + 1000 * j)
        forest.fit(rows_x, rows_y)
        out[:, forest.classes_] += forest.predict_proba(x) * size / sum(batches)
    return out


@pytest.mark.parametrize(("trees", "batches"), [(300, (100, 100, 100)), (250, (100, 100, 50))])
def test_forest_probs_predict_each_fold_from_the_others_only(monkeypatch, trees, batches):
    """Each fold's rows are predicted by extra trees fitted on the other folds (fold k's seeded seed + k),
    300 of them grown 100 at a time (a last batch smaller where the count is not a multiple); a class the
    other folds lack (class 4, one row) gets probability 0 in its row."""
    import attribution.mislabels as mislabels

    monkeypatch.setattr(mislabels, "FOREST_TREES", trees)
    x, noisy, _ = blobs(n=200, c=4)
    x, noisy = np.vstack([x, x[:1] + 50]), np.append(noisy, 4)
    got = forest_probs(x, noisy, 5, folds=4, seed=3)
    fold = fold_of(len(x), 4, 3)
    for k in range(4):
        held = fold == k
        want = extra_trees(x[~held], noisy[~held], x[held], 5, 3 + k, batches)
        np.testing.assert_allclose(got[held], want, rtol=1e-12, atol=1e-15)
    assert got[-1, 4] == 0.0 and np.allclose(got.sum(1), 1.0)
    assert np.array_equal(got, forest_probs(x, noisy, 5, folds=4, seed=3))
    with pytest.raises(InputError, match="cross-fitting needs 2 folds"):
        forest_probs(x[:3], noisy[:3], 5, folds=4)


def test_trusted_rows_train_every_fold_and_are_never_scored():
    """With `trusted` (a validation set's rows, labels we trust), each fold's recipe and forest train on
    the other folds' rows and then the trusted ones; only the rows under review get probabilities. The
    reference is the plain cross-fit loop written out with `train_plain` and scikit-learn."""
    import torch

    from attribution import train_plain

    x, noisy, _ = blobs(n=240, c=4, seed=2)
    xt, yt, _ = blobs(n=80, c=4, rate=0.0, seed=2)  # the same centers, clean labels
    xt, yt = xt[-40:], yt[-40:]
    review, both = review_labels(task(), x, noisy, folds=3, seed=1, trusted=(xt, yt), recipe_seeds=1)
    assert both.shape == (240, 4) and review.quality.shape == (240,)
    fold = fold_of(len(x), 3, 1)
    recipe, forest = np.zeros((240, 4)), np.zeros((240, 4))
    for k in range(3):
        held = fold == k
        rows_x, rows_y = np.concatenate([x[~held], xt]), np.concatenate([noisy[~held], yt])
        model = train_plain(task(), rows_x, rows_y, seed=1 + k)
        with torch.no_grad():
            recipe[held] = torch.softmax(model(torch.as_tensor(x[held])).double(), 1).numpy()
        forest[held] = extra_trees(rows_x, rows_y, x[held], 4, 1 + k)
    got = out_of_sample_probs(task(), x, noisy, folds=3, seed=1, trusted=(xt, yt))
    np.testing.assert_array_equal(got, recipe)
    w = mixture_weight(noisy, recipe, forest)
    assert review.recipe_weight == w
    np.testing.assert_allclose(both, w * recipe + (1 - w) * forest)
    # the trusted rows change what the models learned (else they were not trained on)
    assert not np.allclose(both, review_labels(task(), x, noisy, folds=3, seed=1)[1])


def test_a_class_only_the_trusted_rows_hold_can_be_suggested():
    """Every row under review labeled 0 or 1, but a cluster whose true class is 2: the labels alone
    cannot name class 2, trusted rows of it can (the forest gives it probability, the suggestion follows)."""
    rng = np.random.default_rng(0)
    centers = np.repeat([[-4, 0], [4, 0], [0, 8]], [60, 60, 30], axis=0)
    x = centers + rng.normal(0, 1, (150, 2))
    y = np.array([0] * 60 + [1] * 60 + [0, 1] * 15)
    xt = rng.normal([0, 8], 1, (90, 2)).astype(np.float32)
    without = forest_probs(x, y, 3, folds=3, seed=0)
    with_trusted = forest_probs(x, y, 3, folds=3, seed=0, trusted=(xt, np.full(90, 2)))
    assert (without[:, 2] == 0).all()
    assert (with_trusted[120:].argmax(1) == 2).mean() > 0.8
    assert (with_trusted[:120].argmax(1) == y[:120]).all()  # the labeled clusters keep their classes


@pytest.mark.parametrize(
    "trusted",
    [(np.zeros((5, 3), np.float32), np.zeros(5)), (np.zeros((5, 8), np.float32), np.zeros(4)),
     (np.zeros(8, np.float32), np.zeros(1))],
    ids=["other-width", "labels-per-row", "not-a-table"],
)
def test_trusted_rows_unlike_the_rows_under_review_are_one_error(trusted):
    x, noisy, _ = blobs(n=60)
    with pytest.raises(InputError, match="trusted rows of shape .* do not match the 8 features"):
        review_labels(task(), x, noisy, folds=3, seed=0, trusted=trusted)


def test_mixture_weight_names_tables_that_do_not_fit():
    good = np.full((4, 3), 1 / 3)
    for labels, second in ((np.array([0, 1, 2, 0]), good[:3]), (np.array([0, 1, 3, 0]), good),
                           (np.array([], dtype=int), good[:0])):
        with pytest.raises(InputError, match="mixture_weight needs two"):
            mixture_weight(labels, good[: len(labels)] if len(labels) else good[:0], second)


def test_with_votes_is_bayes_rule_of_the_model_and_the_crowd():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), 50)
    labels, conf = rng.integers(0, 4, 50), rng.uniform(0, 1, 50)
    got = with_votes(probs, labels, conf)
    for i in range(50):  # the reference: P(c | model, crowd) ∝ P_model(c) · P(crowd says label | c)
        crowd = [conf[i] if c == labels[i] else (1 - conf[i]) / 3 for c in range(4)]
        joint = [probs[i, c] * crowd[c] for c in range(4)]
        assert np.allclose(got[i], np.asarray(joint) / sum(joint), rtol=1e-5)
    # a crowd that says nothing (confidence 1/classes) leaves the model's probabilities as they are
    assert np.allclose(with_votes(probs, labels, np.full(50, 0.25)), probs)
    with pytest.raises(InputError, match="n confidences"):
        with_votes(probs, labels, conf[:10])
    with pytest.raises(InputError, match=r"lie in \[0, 1\]"):
        with_votes(probs, labels, conf * 2)


def test_the_crowds_confidence_reorders_the_review_and_keeps_the_models_count_and_suggestion():
    """Wrong labels the crowd was unsure of rise; the number flagged (cleanlab's estimate from the
    models), the suggestions and the probabilities stay the models'."""
    x, noisy, flip = blobs(n=400, seed=4)
    rng = np.random.default_rng(5)
    x = (x + rng.normal(0, 3, x.shape)).astype(np.float32)  # overlapping classes: the model alone errs
    conf = np.where(flip, rng.uniform(0.4, 0.9, len(x)), rng.uniform(0.6, 1.0, len(x)))
    alone, probs = review_labels(task(), x, noisy, folds=3, seed=0)
    weighed, again = review_labels(task(), x, noisy, folds=3, seed=0, confidence=conf)
    assert np.array_equal(probs, again)
    assert weighed.flagged.sum() == alone.flagged.sum()
    assert np.array_equal(weighed.suggested, alone.suggested)
    assert np.allclose(weighed.quality, with_votes(probs, noisy, conf)[np.arange(len(x)), noisy])
    assert set(np.flatnonzero(weighed.flagged)) == set(weighed.ranked()[: weighed.flagged.sum()])
    # the pure part alone gives the review again from its probabilities (what replay recomputes)
    pure = label_quality(noisy, probs, confidence=conf)
    for field in ("quality", "flagged", "suggested"):
        assert np.array_equal(getattr(pure, field), getattr(weighed, field)), field
    before, after = roc_auc_score(flip, -alone.quality), roc_auc_score(flip, -weighed.quality)
    assert after > before, (before, after)
