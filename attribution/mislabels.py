"""Likely mislabeled examples: out-of-sample predicted probabilities, scored by cleanlab.

The detector is confident learning (Northcutt et al., "Confident Learning", JAIR 2021) as the
``cleanlab`` library implements it: every example's class probabilities come from a model that
never saw it (k-fold cross-fitting of the run's own recipe), an example's label quality is the
probability that model gives to the label it was given (cleanlab's ``self_confidence``), and the
flags are cleanlab's ``find_label_issues`` (per-class thresholds from the confident joint, so
their number follows the estimated noise rate rather than a fixed quota).

Why not self-influence: measured with bench/attribution_lds.py (10 % of the training labels, at
most 1,000, flipped; 5 folds), ROC-AUC of self-influence (worst method / best) against this
detector: digits 0.993 / 0.997 against 0.997; breast cancer 0.981 / 0.993 against 0.995; a harder synthetic
4-class tabular set (make_classification, class_sep 1) 0.818 / 0.871 against 0.887. Self-influence
needs the model to have memorized a flipped label to see it; an out-of-sample model only needs to
disagree with it. The pure scoring part is ``label_quality`` (probabilities in, scores and flags out).

Why a forest beside the recipe on tabular features: the detector is only as good as its out-of-sample
probabilities, and a forest of trees (first a random forest, scikit-learn's default settings; now extra
trees, below) errs on other rows than an MLP, so their mixture doubts a wrong label more often than
either alone. Measured the same way, when the two were averaged (ROC-AUC, MLP recipe alone / forest
alone / averaged; split seeds 0, 1, 2): digits 0.997 / 0.997 / 0.998, 0.996 / 0.998 / 0.998, 0.997 /
0.997 / 0.998; breast cancer 0.996 / 0.995 / 0.997, 0.984 / 0.982 / 0.986, 0.996 / 0.994 / 0.996; a
6-class make_classification table (class_sep 1, 2 clusters per class) 0.850 / 0.867 / 0.873, 0.812 /
0.840 / 0.833, 0.869 / 0.913 / 0.905; a 12-class one 0.967 / 0.972 / 0.974, 0.962 / 0.961 / 0.968, 0.976
/ 0.978 / 0.983; an imbalanced 5-class one with 100 features 0.910 / 0.900 / 0.923, 0.888 / 0.869 /
0.896, 0.879 / 0.891 / 0.904; the Gaussian mixture of ``scripts/gaussian_mixture.py`` 0.989 / 0.987 /
0.992, 0.989 / 0.984 / 0.993, 0.990 / 0.985 / 0.993; wine 1.0 throughout. The average is never below the
recipe alone.

Where it falls short, rows are what it lacks: on three hard make_classification tables (4-8 classes, 2-3
clusters per class) it reached 0.78-0.89 from 1,000 noisy rows, where an MLP and a forest trained on
20,000 clean rows of the same tables scored the same rows at 0.93-0.98, and the tables' own generator
(make_classification's Gaussian clusters, its posterior computed exactly) at 0.96-0.99 over nine such
tables (the 4-class one 0.984 / 0.989 / 0.994 at split seeds 0-2, where this detector reads 0.81-0.86):
no information bound stops it short of 0.85, only 1,000 noisy rows. Averaged over those tables and
the imbalanced one (split seeds 0-2), a third model family (extra trees at scikit-learn's default of the
square root of the features, gradient boosting, an RBF SVC, kNN, logistic regression) changed it by
-0.015 to +0.009, 10 folds by +0.004, a second round fitted on the labels the first trusted by -0.024,
500 trees by +0.003, an out-of-bag forest of 300 trees by +0.005, three fold permutations averaged by
+0.010 at three times the cost. Later (extra trees as the second model, below): trees grown on random
rotations of the standardized features (Blaser and Fryzlewicz, JMLR 2016) lost 0.06-0.08 on the 4- and
6-class tables, and 0.01-0.04 as half the forest; class-conditional Gaussians (QDA, a Gaussian mixture
per class) in the forest's place lost 0.03-0.09.

What did lift it is trusted rows: where the dataset version declares a validation set (labels we
trust, never trained on by the paid model), every fold's models train on those rows too
(``trusted``), and they are never scored. ``bench/attribution_lds.py --mislabels-only`` (its 300
held-out targets, true labels, as the trusted rows; split seeds 0 / 1 / 2; recipe and forest
averaged), without them and with: the 6-class table 0.865 / 0.905 / 0.883 to 0.893 / 0.923 / 0.910;
the 4-class one (class_sep 0.8, 3 clusters) 0.802 / 0.815 / 0.785 to 0.829 / 0.832 / 0.830; an
8-class one 0.828 / 0.840 / 0.848 to 0.835 / 0.861 / 0.858; the imbalanced 5-class one 0.904 / 0.896 /
0.884 to 0.922 / 0.906 / 0.902; digits and breast cancer (171 targets) by 0 to +0.008, never lower.

And so did training the recipe longer than the paid run does: its epochs are the paid run's, and on
hard tables they leave the cross-fitted MLP short of what the rows can teach it. ``review_labels``
cross-fits it for 1, 2 and 4 times its epochs and keeps the length whose mixture best predicts the
given labels (``fitted_length``, whose docstring has the figures: on those hard tables +0.010 to
+0.037, on the easy ones unchanged).

Why the two models are mixed by a fitted weight (``mixture_weight``: the one whose mixture best
predicts the given labels out of fold) rather than averaged: a second model can be blind to what
decides the class. Text has one that often beats a small transformer trained from scratch, a
bag-of-tokens model (``token_probs``: TF-IDF logistic regression on the recipe's own tokens), but it
cannot see word order. On the text bench's synthetic topics (1,000 rows, 10 % flipped, seeds 0 / 1 /
2, 200 trusted targets) the recipe alone reached 0.882 / 0.889 / 0.886, averaged with the tokens 0.925
/ 0.934 / 0.923, mixed by the fitted weight 0.935 / 0.954 / 0.936 (weight 0: the tokens alone). Where
the order of two words decides the class (the tokens at chance), averaging fell from 0.794 / 0.745 to
0.715 / 0.661 and the fitted weight kept the recipe alone (weight 1.0, 0.794 / 0.745); with topic and
order both deciding, 0.935 / 0.936, averaged 0.928 / 0.932, fitted 0.935 / 0.936 (weight 0.85). On
tabular features the fitted weight moved the forest-and-MLP detector by +0.004 on the hard tables
(-0.001 to +0.014) and by -0.001 to +0.0003 on digits and breast cancer. Images keep their recipe
alone: a forest on the raw pixels, mixed the same way, moved the synthetic image bench by -0.0003 to
+0.0007 at seeds 0-2.

Two settings that lift it where no rows are trusted, measured on 1,000 rows with 10 % flipped, 5 folds,
split seeds 0 / 1 / 2 (ROC-AUC before and after both): the forest (then a random forest) tries half the
features at each split (``FOREST_MAX_FEATURES``, now 1.0, below; scikit-learn's default, the square
root, starves it where many features are noise), and the recipe's cross-fit at the fitted length is
repeated with ``RECIPE_SEEDS`` model seeds on the same folds and averaged (one seed's probabilities are
noisy where the labels are). Four hard make_classification tables: 4 classes (3 clusters, class_sep 0.8)
0.864 / 0.815 / 0.834 to 0.873 / 0.822 / 0.844; 6 classes 0.874 / 0.889 / 0.895 to 0.879 / 0.890 /
0.895; 8 classes 0.848 / 0.866 / 0.880 to 0.848 / 0.873 / 0.886; imbalanced 5 classes, 100 features
0.843 / 0.838 / 0.848 to 0.886 / 0.855 / 0.885. Two tables made after the settings were chosen: 5
classes, 40 features, 8 informative 0.834 / 0.824 / 0.868 to 0.857 / 0.852 / 0.884; 3 classes, 12
features 0.824 / 0.850 / 0.884 to 0.819 / 0.850 / 0.882 (the one table it did not help). Digits 0.997 /
0.997 / 0.998 to 0.998 / 0.997 / 0.998, breast cancer 0.996 / 0.984 / 0.996 to 0.996 / 0.985 / 0.997.
With 300 trusted rows: the hard tables +0.009 on average, the two later ones +0.006, digits and breast
cancer +0.0002. Each alone: half the features +0.009 on the hard tables (-0.004 to +0.041), three seeds
averaged +0.005 (+0.002 to +0.010, 9 runs); a third seed added +0.0007 more, a nearest-neighbours model
mixed in as a third +0.0013. Not worth it, at the same cost or less: cleanlab's other quality scores
(``normalized_margin`` -0.022, ``confidence_weighted_entropy`` -0.003), label smoothing (-0.001),
generalized cross-entropy (-0.016), mixup (-0.001 to -0.003), forest leaves of 3 or 5 rows (0 to
-0.002), kNN agreement as the score (-0.061). The review costs about 1.6 times what it did.

The forest is now extremely randomized trees (scikit-learn's ``ExtraTreesClassifier``) that draw from
every feature at each split (``FOREST_MAX_FEATURES = 1.0``): where a random forest picks each split's
best threshold, they draw it at random, and their averaged votes give smoother class probabilities
between clusters, where the flipped labels that matter lie. Measured as above (1,000 rows, 10 % flipped,
5 folds; split seeds 0 / 1 / 2; ROC-AUC with the random forest of half the features, then with extra
trees; without trusted rows, then with 300). The four tables it was chosen on: 4 classes (3 clusters,
class_sep 0.8) 0.826 / 0.833 / 0.805 to 0.837 / 0.852 / 0.819, with trusted rows 0.856 / 0.848 / 0.835
to 0.872 / 0.867 / 0.856; 6 classes 0.879 / 0.895 / 0.905 to 0.892 / 0.919 / 0.925; 5 classes 0.916 /
0.888 / 0.890 to 0.921 / 0.902 / 0.906; 3 classes, 4 clusters 0.867 / 0.867 / 0.848 to 0.889 / 0.894 /
0.868 (on average +0.017 without trusted rows, +0.020 with them; lowest +0.005). Five tables made after
the choice, without trusted rows: 8 classes, 3 clusters 0.850 / 0.824 / 0.811 to 0.846 / 0.831 / 0.824
(the one loss, -0.004); imbalanced 5 classes, 100 features 0.884 / 0.890 / 0.904 to 0.899 / 0.907 /
0.915; 4 classes, 300 features 0.907 / 0.894 / 0.894 to 0.915 / 0.928 / 0.911; 12 of 20 features
redundant 0.947 / 0.954 / 0.959 to 0.952 / 0.957 / 0.962; binary, 4 clusters per class 0.779 / 0.776 /
0.774 to 0.798 / 0.797 / 0.810 (on average +0.014; with trusted rows +0.016, lowest +0.003). Digits,
breast cancer, wine and iris moved by -0.016 to +0.001 (iris at seed 0, about ten flipped rows among
105: 0.971 to 0.956; the rest within 0.001). On the nine synthetic tables without trusted rows extra
trees of all features gained +0.015 on average, of half the features +0.009, and a random forest of all
features lost 0.005. With 100 trees (scikit-learn's default) they cost 0.55 to 0.8 times the random
forest's time; 300 trees (``FOREST_TREES``: a random split's vote is noisier than a best split's, so the
probabilities need more of them to settle) added, at split seeds 0 / 1 / 2, on the four tables above
+0.007 on average (-0.002 to +0.014) and on the five later ones +0.007 without trusted rows and +0.004
with them (-0.008 to +0.018; the binary table the one that lost), and moved digits, breast cancer and
iris by -0.0006 to +0.0003, at three times the trees' time: the whole review takes about 1.25 times (1.1
to 1.6 times) what it took with the random forest. The figures above are the 100 trees'; the 300 were
measured as one forest, and are now grown in batches (``forest_probs``), which predicts the same in
distribution.

Where the labels are a crowd's consensus, the crowd knows something the models do not: how sure its
answers were. ``confidence=`` weighs each label's Dawid-Skene posterior in by Bayes' rule
(``with_votes``, whose docstring has the figures); the models still decide how many are flagged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import InputError
from .inrun import train_model_plain
from .model_task import LABELS, Batch, ModelTask, batch_size_of, concat, model_logits, take
from .task import AttributionTask
from .trainer import train_plain

if TYPE_CHECKING:  # imported where used: importing attribution needs torch and numpy alone
    import scipy.sparse

QUALITY_METHOD = "self_confidence"
EPOCH_FACTORS = (1, 2, 4)  # the recipe's epochs times these: the lengths ``review_labels`` cross-fits
RECIPE_SEEDS = 2  # model seeds the recipe is cross-fitted with at the fitted length, averaged (same folds)
FOREST_MAX_FEATURES = 1.0  # the share of features each split of the forest draws from (scikit-learn's: sqrt)
FOREST_TREES = 300  # trees in each fold's forest (scikit-learn's: 100): random splits' votes settle slower
FOREST_BATCH = 100  # trees grown at a time, their votes averaged: memory holds a batch's trees, not all
SEED_STRIDE = 1000  # the j-th extra model seed's offset: its folds' seeds never meet the first's
Trusted = tuple[object, object]  # (X, y): rows whose labels are trusted, trained on, never scored


@dataclass(frozen=True)
class LabelReview:
    """Per example (row order of the input): label quality in [0, 1] (low = likely wrong), a flag,
    and the class the out-of-sample model prefers."""

    quality: np.ndarray  # float64 [n]
    flagged: np.ndarray  # bool [n]
    suggested: np.ndarray  # int64 [n]: argmax of the out-of-sample probabilities
    recipe_weight: float = 1.0  # the recipe's share of the probabilities scored (the rest: a second model)
    epochs: int | None = None  # the recipe's cross-fitted training length (``fitted_length``); None: its own

    def ranked(self) -> np.ndarray:
        """Row indices, most suspect first (ties by row order, so the ranking is deterministic)."""
        return np.lexsort((np.arange(len(self.quality)), self.quality))


def label_quality(
    labels: object, pred_probs: object, *, confidence: object | None = None, method: str = QUALITY_METHOD
) -> LabelReview:
    """Score given labels against out-of-sample class probabilities ``[n, classes]``; with the crowd's
    ``confidence`` in each label (a consensus posterior), the quality and the order are those of
    ``with_votes`` while the number flagged and the suggestion stay the models' (a Dawid-Skene posterior
    is sure of most labels, so confident learning on the weighed probabilities estimated a fraction of
    the noise: 65 flags for 394 wrong labels on the royalty bench's digits world at seed 0, 21 for 167
    on its images, where the models alone raised 398 and 159).

    Pure: no training, no I/O. Rows of ``pred_probs`` are renormalized to sum to one; classes
    absent from ``labels`` are allowed (cleanlab's flags then cover the classes present). So a stored
    review's flags, quality and ranks can be recomputed from its stored probabilities alone.
    """
    review = _label_quality(labels, pred_probs, method)
    if confidence is None:
        return review
    weighed = _label_quality(labels, with_votes(pred_probs, labels, confidence), method, flag=False)
    flagged = np.zeros(len(weighed.quality), dtype=bool)
    flagged[weighed.ranked()[: int(review.flagged.sum())]] = True
    return dataclasses.replace(review, quality=weighed.quality, flagged=flagged)


def _label_quality(labels: object, pred_probs: object, method: str, *, flag: bool = True) -> LabelReview:
    """``label_quality`` without the crowd; with ``flag`` False none is flagged (the weighed scores keep
    the models' flags, so cleanlab's flagging of them would be thrown away)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(pred_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[0] == 0:
        raise InputError(f"pred_probs of shape {p.shape} do not match {y.shape[0]} labels")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise InputError(f"labels must lie in 0..{p.shape[1] - 1}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise InputError("pred_probs must be finite and non-negative")
    p = np.clip(p, 1e-12, None)
    p = p / p.sum(1, keepdims=True)
    quality = np.asarray(get_label_quality_scores(y, p, method=method), dtype=np.float64)
    present = np.unique(y)
    if len(present) < 2 or not flag:
        flagged = np.zeros(len(y), dtype=bool)
    else:
        # cleanlab wants labels 0..K-1 all present: restrict to the classes that occur.
        remap = np.full(p.shape[1], -1)
        remap[present] = np.arange(len(present))
        sub = p[:, present]
        sub = sub / sub.sum(1, keepdims=True)
        flagged = np.asarray(find_label_issues(remap[y], sub, n_jobs=1), dtype=bool)
    return LabelReview(quality=quality, flagged=flagged, suggested=p.argmax(1).astype(np.int64))


def with_votes(pred_probs: object, labels: object, confidence: object) -> np.ndarray:
    """Class probabilities given the out-of-sample model *and* the crowd: ``pred_probs [n, classes]``
    times the crowd's likelihood of each class, renormalized per row. The crowd's likelihood is the
    consensus's ``confidence`` in its label (a Dawid-Skene posterior) for that label and the rest spread
    evenly over the other classes; it is clipped to [1e-6, 1 - 1e-6] so a sure crowd still leaves the
    rows in the model's order. Bayes' rule for a model and a crowd that err independently given the true
    class (the class prior taken as uniform). Pure.

    Why: the model alone misses the consensus labels a good model finds plausible but the crowd split
    on, and the crowd alone those a bad labeler pushed through. On the royalty bench's crowd worlds
    (three answers per example from labelers of accuracy 0.95 / 0.85 / 0.70, a random, a constant and an
    adversarial one; Dawid-Skene consensus), ROC-AUC of finding the wrong consensus labels, the models
    alone / the confidence alone / both: digits seeds 0-3 0.9842 / 0.8621 / 0.9924, 0.9829 / 0.8470 /
    0.9901, 0.9841 / 0.8729 / 0.9932, 0.9831 / 0.8347 / 0.9885; synthetic texts seed 0 0.9330 / 0.8717
    / 0.9683; synthetic images seed 0 0.9959 / 0.8704 / 0.9974. Of the flags (as many as the models
    alone raise, see ``review_labels``), wrong labels at digits seeds 0-2: 342, 326, 304 of 398, 371, 354
    by the models alone; 354, 325, 319 weighed. The product of the two scores ranked about as well; the
    Dawid-Skene fit with the model as one more annotator worse (0.9744-0.9787 on digits)."""
    p = np.asarray(pred_probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    c = np.asarray(confidence, dtype=np.float64)
    if p.ndim != 2 or not p.shape[0] == len(y) == len(c):
        raise InputError(f"with_votes needs [n, classes] probabilities, n labels and n confidences; got "
                         f"{p.shape}, {len(y)} and {len(c)}")
    if not np.isfinite(c).all() or (c < 0).any() or (c > 1).any():
        raise InputError("consensus confidences must lie in [0, 1]")
    if p.shape[1] < 2:
        return p
    c = np.clip(c, 1e-6, 1 - 1e-6)
    likelihood = np.repeat(((1 - c) / (p.shape[1] - 1))[:, None], p.shape[1], axis=1)
    likelihood[np.arange(len(y)), y] = c
    joint = np.clip(p, 1e-12, None) * likelihood
    return joint / joint.sum(1, keepdims=True)


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """Each row's fold (0..folds-1): a seeded permutation cut into near-equal parts."""
    if folds < 2 or n < folds:
        raise InputError(f"cross-fitting needs 2 folds or more and a row per fold ({n} rows, {folds} folds)")
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.arange(n) % folds
    return out


def out_of_sample_probs(
    task: AttributionTask, X: object, y: object, *, folds: int = 5, seed: int = 0,
    trusted: Trusted | None = None, model_seed: int = 0,
) -> np.ndarray:
    """Class probabilities ``[n, classes]`` for every row from a model trained (``train_plain``, the
    task's recipe, fold ``k``'s seeded ``seed + k + model_seed``) on the other folds only, and on the
    ``trusted`` rows where given (see ``review_labels``). Every epoch is trained (no ``patience``), as
    ``task_out_of_sample_probs`` says why. Deterministic for a given seed."""
    x, labels = np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.int64)
    xt, yt = _trusted_rows(trusted, x.shape[1])
    fold = fold_of(len(x), folds, seed)
    probs = np.zeros((len(x), task.n_classes), dtype=np.float64)
    task = _configured(task, patience=None)
    for k in range(folds):
        held = fold == k
        model = train_plain(task, *_fold_rows(x, labels, ~held, xt, yt), seed=seed + k + model_seed)
        with torch.no_grad():
            logits = model(torch.as_tensor(x[held]))
            probs[held] = torch.softmax(logits.double(), 1).numpy()
    return probs


def forest_probs(
    X: object, y: object, n_classes: int, *, folds: int = 5, seed: int = 0, trusted: Trusted | None = None
) -> np.ndarray:
    """``out_of_sample_probs`` of scikit-learn's extremely randomized trees (``ExtraTreesClassifier``, its
    default settings but ``FOREST_MAX_FEATURES``) on the same folds: ``FOREST_TREES`` per fold, grown
    ``FOREST_BATCH`` at a time (fold ``k``'s ``j``-th batch seeded ``seed + k + SEED_STRIDE * j``) and their
    probabilities averaged, which is what one forest of them all predicts. A class the other folds (and
    ``trusted``) lack gets probability 0. Random thresholds on every feature give smoother class
    probabilities than a random forest's best splits (the module's figures). Grown to purity on noisy
    labels, 300 of them hold about six times the nodes of the random forest of 100 they replaced (16,000
    rows with 10 % noise: 2.6 million against 0.45 million), so only a batch lives at a time."""
    from sklearn.ensemble import ExtraTreesClassifier

    x, labels = np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.int64)
    xt, yt = _trusted_rows(trusted, x.shape[1])
    fold = fold_of(len(x), folds, seed)
    probs = np.zeros((len(x), n_classes), dtype=np.float64)
    batches = -(-FOREST_TREES // FOREST_BATCH)
    for k in range(folds):
        held = fold == k
        rows = _fold_rows(x, labels, ~held, xt, yt)
        for j in range(batches):
            trees = min(FOREST_BATCH, FOREST_TREES - j * FOREST_BATCH)
            forest = ExtraTreesClassifier(n_estimators=trees, max_features=FOREST_MAX_FEATURES,
                                          random_state=seed + k + SEED_STRIDE * j, n_jobs=1).fit(*rows)
            probs[np.ix_(held, forest.classes_)] += forest.predict_proba(x[held]) * (trees / FOREST_TREES)
    return probs


def _trusted_rows(trusted: Trusted | None, width: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``trusted`` as (float32 features, int64 labels), checked against the scored rows' ``width``."""
    if trusted is None:
        return None, None
    xt, yt = np.asarray(trusted[0], dtype=np.float32), np.asarray(trusted[1], dtype=np.int64)
    if xt.ndim != 2 or xt.shape[1] != width or xt.shape[0] != yt.shape[0] or yt.ndim != 1:
        raise InputError(
            f"trusted rows of shape {xt.shape} with {yt.shape[0] if yt.ndim else 0} labels do not match the "
            f"{width} features of the rows under review: give (X, y) encoded like them, a label per row"
        )
    return xt, yt


def _fold_rows(x, labels, keep, xt, yt) -> tuple[np.ndarray, np.ndarray]:
    """A fold's training rows: the other folds, then the trusted rows (when there are any)."""
    if xt is None:
        return x[keep], labels[keep]
    return np.concatenate([x[keep], xt]), np.concatenate([labels[keep], yt])


def review_labels(
    task: AttributionTask,
    X: object,
    y: object,
    *,
    folds: int = 5,
    seed: int = 0,
    forest: bool = True,
    trusted: Trusted | None = None,
    confidence: object | None = None,
    epoch_factors: Sequence[int] = EPOCH_FACTORS,
    recipe_seeds: int = RECIPE_SEEDS,
) -> tuple[LabelReview, np.ndarray]:
    """The pipeline's detector on tabular features: ``task``'s recipe cross-fitted and, with ``forest``,
    mixed with a forest's out-of-sample probabilities (``forest_probs``) by ``mixture_weight``;
    scored by ``label_quality``. A second model family errs elsewhere than the recipe, so a label both
    doubt is more likely wrong than one the recipe alone doubts (see the module's figures). ``trusted``
    = (X, y) of rows whose labels are trusted (a declared validation set): every fold's models train on
    them too, and they are never scored. ``confidence``: the consensus's confidence in each label (a
    Dawid-Skene posterior), weighed in by ``with_votes``; the probabilities returned are the models'.
    The recipe is cross-fitted for its epochs times each of ``epoch_factors`` and the length whose
    mixture best predicts the given labels is kept (``fitted_length``; ``LabelReview.epochs`` says
    which), then cross-fitted at that length with ``recipe_seeds - 1`` more model seeds on the same
    folds, averaged and mixed anew (the module's figures)."""
    if recipe_seeds < 1:
        raise InputError(f"recipe_seeds must be 1 or more (cross-fits averaged); got {recipe_seeds}")
    candidates = {
        e: out_of_sample_probs(_configured(task, epochs=e), X, y, folds=folds, seed=seed, trusted=trusted)
        for e in _lengths(task.config.epochs, epoch_factors)
    }
    other = forest_probs(X, y, task.n_classes, folds=folds, seed=seed, trusted=trusted) if forest else None
    epochs, probs, w = fitted_length(y, candidates, other)
    if recipe_seeds > 1:
        fitted = _configured(task, epochs=epochs)
        more = [out_of_sample_probs(fitted, X, y, folds=folds, seed=seed, trusted=trusted,
                                    model_seed=SEED_STRIDE * j) for j in range(1, recipe_seeds)]
        recipe = np.mean([candidates[epochs], *more], axis=0)
        probs, w = (recipe, 1.0) if other is None else _mixed(y, recipe, other)
    review = label_quality(y, probs, confidence=confidence)
    return dataclasses.replace(review, recipe_weight=w, epochs=epochs), probs


def _lengths(epochs: int, factors: Sequence[int]) -> list[int]:
    if not factors or any(int(f) != f or f < 1 for f in factors):
        raise InputError(f"epoch_factors must be whole numbers >= 1 (the recipe's epochs times each), got "
                         f"{list(factors)}")
    return sorted({epochs * int(f) for f in factors})


def _configured(task: AttributionTask | ModelTask, **changes) -> AttributionTask | ModelTask:
    """``task`` with its ``TrainConfig`` changed (``epochs=``, ``patience=``)."""
    return dataclasses.replace(task, config=dataclasses.replace(task.config, **changes))


def fitted_length(
    labels: object, candidates: Mapping[int, np.ndarray], other: np.ndarray | None = None
) -> tuple[int, np.ndarray, float]:
    """Of the recipe's out-of-sample probabilities after each training length (``{epochs: [n,
    classes]}``), the one that, mixed with ``other`` by its ``mixture_weight`` (alone where ``other`` is
    None), best predicts the given ``labels`` (least log-loss; ties to the shorter): (epochs, mixed
    probabilities, the recipe's weight). Pure.

    Why: the recipe's epochs are set for the paid run, and on hard tables they leave a cross-fitted
    model short of what the rows can teach it. Measured as ``bench/attribution_lds.py``'s mislabel
    section measures (10 % flipped, 300 trusted targets, split seeds 0 / 1 / 2) but with the pipeline's
    MLP recipe (20 epochs at a constant rate) and the forest mixed in, ROC-AUC at 20 epochs and at the
    fitted length: a 4-class
    make_classification table (3 clusters per class, class_sep 0.8) 0.854 / 0.836 / 0.838 to 0.865 /
    0.858 / 0.856; an 8-class one 0.909 / 0.883 / 0.869 to 0.929 / 0.920 / 0.896; 40 classes 0.849 /
    0.871 / 0.866 to 0.877 / 0.881 / 0.882; digits 0.999 / 0.998 / 0.999 unchanged (it keeps 20); a
    mixed-type table 0.985 / 0.961 / 0.979 to 0.986 / 0.963 / 0.979; the bench's own MLP (40 epochs,
    decaying rate) on two 4-class tables +0.013 to +0.033, on breast cancer, wine and an imbalanced
    table unchanged. A length shorter than the recipe's (x0.5) never helped (a 300-feature table where
    the MLP overfits: -0.003 to -0.009, where the log-loss barely told the lengths apart), so none is
    offered; the choice is one number fitted on every row's out-of-fold label, as the weight is."""
    y = np.asarray(labels, dtype=np.int64)
    if not candidates:
        raise InputError("fitted_length needs at least one training length's probabilities")
    best = None
    for epochs in sorted(candidates):
        probs, w = (candidates[epochs], 1.0) if other is None else _mixed(y, candidates[epochs], other)
        loss = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()
        if best is None or loss < best[0]:
            best = (loss, epochs, probs, w)
    return best[1], best[2], best[3]


def mixture_weight(labels: object, first: object, second: object, *, steps: int = 20) -> float:
    """The weight ``w`` of ``first`` in ``w * first + (1 - w) * second`` (two models' out-of-sample
    class probabilities) that best predicts the given ``labels`` (least log-loss; ``w`` on a grid of
    ``steps + 1`` points, so the choice is exact and reproducible). A model blind to what decides the
    class (bag-of-tokens where word order does) gets weight 0 instead of diluting the other: averaging
    such a pair halved the gain of the better one or lost to it outright (the module's figures)."""
    y = np.asarray(labels, dtype=np.int64)
    p, q = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    shaped = p.shape == q.shape and p.ndim == 2 and p.shape[0] == len(y) > 0
    if not shaped or not 0 <= y.min() <= y.max() < p.shape[1]:
        raise InputError(f"mixture_weight needs two [n, classes] probability tables and n labels in range; "
                         f"got {p.shape}, {q.shape} and {len(y)} labels")
    rows = np.arange(len(y))
    a, b = p[rows, y], q[rows, y]
    grid = np.arange(steps + 1) / steps  # i / steps exactly rounded: 0.85, not 0.8500000000000001
    loss = [-np.log(np.clip(w * a + (1 - w) * b, 1e-12, None)).mean() for w in grid]
    return float(grid[int(np.argmin(loss))])


def _mixed(y: object, recipe: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, float]:
    """The two models' probabilities mixed by ``mixture_weight``, and the recipe's weight."""
    w = mixture_weight(y, recipe, other)
    return w * recipe + (1 - w) * other, w


def task_out_of_sample_probs(
    task: ModelTask, batch: Batch, n_classes: int, *, folds: int = 5, seed: int = 0,
    trusted: Batch | None = None,
) -> np.ndarray:
    """``out_of_sample_probs`` for any ``ModelTask``: ``batch`` (with ``labels``) cross-fitted with
    the task's own training (``train_model_plain``), each fold's rows predicted by the others' model,
    trained on the ``trusted`` batch (with ``labels``) too where given. Every epoch is trained (no
    ``patience``): the only rows a fold's model could stop on are those it predicts, whose labels are
    the ones in question."""
    task = _configured(task, patience=None)
    n = batch_size_of("batch", batch)
    if trusted is not None:
        batch_size_of("trusted", trusted)
    fold = torch.as_tensor(fold_of(n, folds, seed))
    probs = np.zeros((n, n_classes), dtype=np.float64)
    for k in range(folds):
        held = fold == k
        rows = take(batch, torch.nonzero(~held).flatten())
        rows = rows if trusted is None else concat(rows, trusted)
        model = train_model_plain(task, rows, seed=seed + k).eval()
        rows = take(batch, torch.nonzero(held).flatten())
        with torch.no_grad():
            probs[held.numpy()] = torch.softmax(model_logits(model, rows).double(), 1).numpy()
    return probs


def token_probs(
    batch: Batch, n_classes: int, *, folds: int = 5, seed: int = 0, trusted: Batch | None = None
) -> np.ndarray:
    """``out_of_sample_probs`` of a bag-of-tokens model on a text batch (``input_ids`` and
    ``attention_mask``, the recipe's own tokens): TF-IDF weighted token counts and scikit-learn's
    logistic regression, on the same folds, the ``trusted`` batch in every fold's training too. A
    linear model of which words occur is the classic strong baseline on small text sets, where a
    transformer trained from scratch is weak (see the module's figures)."""
    import scipy.sparse
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression

    parts = [batch] if trusted is None else [batch, trusted]
    width = 1 + max(int(_token_ids(b)[0].max(initial=0)) for b in parts)
    counts = _token_counts(batch, width)
    labels = batch[LABELS].numpy()
    extra = None if trusted is None else (_token_counts(trusted, width), trusted[LABELS].numpy())
    fold = fold_of(counts.shape[0], folds, seed)
    probs = np.zeros((counts.shape[0], n_classes), dtype=np.float64)
    for k in range(folds):
        held = fold == k
        rows, rows_y = counts[~held], labels[~held]
        if extra is not None:
            rows = scipy.sparse.vstack([rows, extra[0]], format="csr")
            rows_y = np.concatenate([rows_y, extra[1]])
        if len(np.unique(rows_y)) < 2:  # one class to learn: it is all a model could say
            probs[held, rows_y[0]] = 1.0
            continue
        tfidf = TfidfTransformer().fit(rows)
        model = LogisticRegression(max_iter=2000).fit(tfidf.transform(rows), rows_y)
        probs[np.ix_(held, model.classes_)] = model.predict_proba(tfidf.transform(counts[held]))
    return probs


def _token_ids(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    if "input_ids" not in batch or "attention_mask" not in batch:
        raise InputError(
            f"a bag-of-tokens model reads input_ids and attention_mask (a text batch); this one holds "
            f"{sorted(batch)}"
        )
    return batch["input_ids"].numpy(), batch["attention_mask"].numpy() > 0


def _token_counts(batch: Batch, width: int) -> scipy.sparse.csr_matrix:
    """Rows x token ids (``width`` columns): how often each token occurs among a row's unmasked positions."""
    import scipy.sparse

    ids, mask = _token_ids(batch)
    rows = np.nonzero(mask)[0]
    counts = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, ids[mask])), shape=(ids.shape[0], width))
    counts.sum_duplicates()
    return counts


def review_task_labels(
    task: ModelTask, batch: Batch, n_classes: int, *, folds: int = 5, seed: int = 0,
    trusted: Batch | None = None, bag_of_tokens: bool = False, confidence: object | None = None,
) -> tuple[LabelReview, np.ndarray]:
    """``review_labels`` for any ``ModelTask`` (text and image recipes): cross-fitted (with the
    ``trusted`` batch in every fold's training, where given), then scored (weighed with the crowd's
    ``confidence`` where given). With ``bag_of_tokens`` (a text batch) the recipe's probabilities are
    mixed with ``token_probs`` by ``mixture_weight``."""
    if bag_of_tokens:
        _token_ids(batch)  # a batch without tokens fails here, before any training
    probs = task_out_of_sample_probs(task, batch, n_classes, folds=folds, seed=seed, trusted=trusted)
    labels, w = batch[LABELS].numpy(), 1.0
    if bag_of_tokens:
        other = token_probs(batch, n_classes, folds=folds, seed=seed, trusted=trusted)
        probs, w = _mixed(labels, probs, other)
    return dataclasses.replace(label_quality(labels, probs, confidence=confidence), recipe_weight=w), probs
