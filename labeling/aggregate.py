"""Label aggregation (majority vote, Dawid-Skene, Dawid-Skene with a model, CROWDLAB) and annotator
quality. Pure: tables in, tables out.

Dawid-Skene is crowd-kit's (the reference implementation, EM over per-annotator confusion
matrices), with each confusion cell smoothed by ``DS_SMOOTHING`` pseudo-counts in every M-step (the
maximum a posteriori fit under a uniform Dirichlet prior; ``smoothing=0`` is crowd-kit's own fit), or
fewer where the label set is large for the answers (``auto_smoothing``, the default).
crowd-kit floors an unseen cell at 1e-10, so with many classes and few answers per annotator a
(true class, answer) pair that happens to be unseen vetoes that class outright: on the royalty
bench's 12-class world (about 90 answers per annotator and true class, spread over 11 wrong
answers by its random and adversarial labelers) consensus accuracy went from 0.796 / 0.814 to
0.802 / 0.819 (world seeds 0, 1), and on its digits world from 0.809 / 0.819 to 0.812 / 0.823. It
is also the model labeler pay assumes (``attribution.WeightPolicy.label_smoothing``, the same
pseudo-count): without it, that world's truth found the adversarial labeler's answers harmful
where pay, under the smoothed model, found them informative (labeler Spearman 0.771; with it 0.943
and 1.0). CROWDLAB is cleanlab's (``cleanlab.multiannotator``: each answer and a classifier's
out-of-sample prediction weighed by their estimated quality). This module only shapes their input
deterministically and reads their estimates.

Weighing a model (``MODEL_METHODS``): Dawid-Skene sees only the answers, so an example whose few answers
are wrong stays wrong; a model that never saw the example (cross-fitted) can outvote them.
``dawid_skene_model`` lets the model vote as one more annotator, its confusion matrix learned by EM like
anyone's; ``crowdlab`` is CROWDLAB with the probabilities temperature-scaled to the answers
(``calibrate_probs``: uncalibrated, a sure model wrong on a fifth of the rows pulled it below
Dawid-Skene). Consensus accuracy with the pipeline's review (``attribution.review_labels``: the MLP
recipe and a forest of extra trees cross-fitted on the Dawid-Skene labels, mixed by ``mixture_weight``),
five simulated annotators (0.95/0.85/0.70/0.55/random), three answers per example: digits
(``bench/labeling_sync.py --consensus-only``), seeds 0 and 1, 0.9866/0.9850 (``dawid_skene_model``),
0.9527/0.9622 (``crowdlab``) against 0.8815/0.8826 (Dawid-Skene) (with a random forest in its place, as
before: 0.9878/0.9822 and 0.9538/0.9605); with the random forest, the Gaussian mixture of
``scripts/gaussian_mixture.py`` (``--data``), where the review is only 0.90 accurate, 0.964/0.967,
0.9455/0.9565 against 0.883/0.885 (the two models averaged instead: 0.9872/0.985, 0.9538/0.9588,
0.965/0.9685, 0.9425/0.953). With the MLP alone: digits (seed 0) 0.9861 and 0.9544, the mixture
0.9625/0.9665 and 0.9475/0.96; before the cells were smoothed, 0.9805, 0.9533 and 0.8781 on digits.
Without probabilities (the first sync of a dataset version, before any model) Dawid-Skene is the method.
The pipeline defaults to Dawid-Skene: labelers are paid by what their answers did, and with a model in
the consensus that stops following their answers (``pipelines/assets/labeling.py`` says how).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from crowdkit.aggregation import DawidSkene

from labeling.schemas import ANNOTATOR_QUALITY, CONSENSUS, GOLD

METHODS = ("majority_vote", "dawid_skene", "dawid_skene_model", "crowdlab")
DS_SMOOTHING = 1.0  # the most pseudo-counts added to every confusion cell in each Dawid-Skene M-step
# ... and at most this share of the answers an annotator gives per class, over a confusion row (auto)
ROW_SHARE = 0.25
MODEL_METHODS = ("dawid_skene_model", "crowdlab")  # weigh a model's out-of-sample probabilities
MODEL_ANNOTATOR = "model:out-of-sample"  # the model's vote in dawid_skene_model; never a labeler


@dataclass(frozen=True)
class Aggregation:
    """What ``aggregate`` returns: the consensus labels, each annotator's estimated quality, and how they
    were found (the method, and the smoothing it used, so a refit can use the same)."""

    consensus: pa.Table  # CONSENSUS
    quality: pa.Table  # ANNOTATOR_QUALITY
    method: str
    model_informed: int = 0  # examples whose consensus weighed a model's prediction (MODEL_METHODS)
    smoothing: float | None = None  # Dawid-Skene's pseudo-count per confusion cell; None: majority vote


@dataclass(frozen=True)
class ModelProbs:
    """Class probabilities per example from a model that never saw it (cross-fitted), in the order of
    ``classes``: what the MODEL_METHODS weigh beside the answers."""

    example_ids: tuple[str, ...]
    classes: tuple[str, ...]
    probs: np.ndarray  # float64 [examples, classes]

    def __post_init__(self) -> None:
        p = np.asarray(self.probs, dtype=np.float64)
        if p.ndim != 2 or p.shape != (len(self.example_ids), len(self.classes)):
            raise ValueError(
                f"model probabilities of shape {p.shape} do not match {len(self.example_ids)} examples "
                f"x {len(self.classes)} classes"
            )
        if len(set(self.classes)) != len(self.classes) or len(set(self.example_ids)) != len(self.example_ids):
            raise ValueError("model probabilities name a class or an example twice")
        if not np.isfinite(p).all() or (p < 0).any() or (p.sum(1) <= 0).any():
            raise ValueError("model probabilities must be finite, non-negative, and not all zero in a row")
        object.__setattr__(self, "probs", p / p.sum(1, keepdims=True))


def votes(annotations: pa.Table) -> pd.DataFrame:
    """One vote per (example, annotator): the latest version, rows sorted so results never depend on order."""
    cols = ["example_id", "annotator", "label", "updated_at", "annotation_id"]
    df = annotations.select(cols).to_pandas()
    df = df.sort_values(["example_id", "annotator", "updated_at", "annotation_id"], kind="stable")
    df = df.drop_duplicates(["example_id", "annotator"], keep="last")
    return df.reset_index(drop=True)


def majority_vote(annotations: pa.Table) -> pa.Table:
    """Most voted label per example; ties go to the label first in sort order; confidence = vote share."""
    df = votes(annotations)
    if df.empty:
        return CONSENSUS.empty_table()
    counts = df.groupby(["example_id", "label"], sort=True).size().rename("n").reset_index()
    counts = counts.sort_values(["example_id", "n", "label"], ascending=[True, False, True], kind="stable")
    top = counts.drop_duplicates("example_id", keep="first").set_index("example_id")
    n_votes = df.groupby("example_id", sort=True).size()
    return _consensus(top.index, top["label"], top["n"] / n_votes[top.index], n_votes[top.index])


@dataclass(frozen=True)
class DawidSkeneFit:
    """A fitted consensus (a ``CONSENSUS`` table) and each annotator's estimated accuracy, by name."""

    consensus: pa.Table
    accuracy: dict[str, float]  # annotator -> sum_k prior_k * P(says k | truth k)


class _SmoothedDawidSkene(DawidSkene):
    """crowd-kit's Dawid-Skene whose M-step adds ``smoothing`` to every (annotator, answer, true class)
    count, the annotator's unseen answers included, before each row is normalized."""

    def __init__(self, smoothing: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.smoothing = smoothing

    def _m_step(self, data, probas, initial_error=None, initial_error_strategy=None):
        if initial_error is not None:  # crowd-kit's warm start; nothing here passes one
            raise NotImplementedError("the smoothed Dawid-Skene takes no initial_error")
        counts = data.join(probas, on="task").drop(columns=["task"]).groupby(["worker", "label"]).sum()
        cells = pd.MultiIndex.from_product([sorted(data["worker"].unique()), list(probas.columns)],
                                           names=["worker", "label"])
        counts = counts.reindex(index=cells, columns=probas.columns, fill_value=0.0) + self.smoothing
        return counts / counts.groupby("worker", sort=False).sum()


def auto_smoothing(annotations: pa.Table) -> float:
    """The pseudo-count per confusion cell a fit of ``annotations`` uses unless told otherwise:
    ``DS_SMOOTHING``, or less where its K cells per confusion row would outweigh what an annotator said
    about each class: at most ``ROW_SHARE`` of the answers an annotator gives per class on average,
    ``ROW_SHARE * answers / annotators / K**2`` (K: the labels answered).

    Why: the prior's pseudo-counts per row grow with K, the answers per row shrink with it. At one per
    cell, with 20 classes and 340 answers per annotator, or 40 and 1,050, every annotator looked like
    chance and the consensus collapsed (royalty bench worlds, seeds 0 / 1: 0.225 / 0.308 and 0.246 /
    0.244 right, against 0.739 / 0.748 and 0.744 / 0.755 unsmoothed). With this bound: 0.736 / 0.757,
    0.763 / 0.782; 80 classes 0.744 / 0.757 (one per cell: 0.011 / 0.014, unsmoothed 0.739 / 0.749);
    150 classes 0.726 / 0.712 (unsmoothed 0.715 / 0.711); 20 classes and 1,050 answers 0.791 / 0.797
    (one per cell 0.780 / 0.794). Shares of 0.1 and 0.5 did no better at any size. Up to 10 classes
    with a few hundred answers per annotator the bound is above one, so those fits are unchanged."""
    df = votes(annotations)
    if df.empty:
        return DS_SMOOTHING
    per_annotator = len(df) / df["annotator"].nunique()
    return float(min(DS_SMOOTHING, ROW_SHARE * per_annotator / df["label"].nunique() ** 2))


def check_smoothing(smoothing: float) -> None:
    """Dawid-Skene's pseudo-count must be a finite number >= 0 (0: crowd-kit's fit as it is)."""
    if not (isinstance(smoothing, int | float) and smoothing >= 0 and np.isfinite(smoothing)):
        raise ValueError(
            f"consensus smoothing must be a finite number >= 0 (pseudo-counts per confusion cell; 0: "
            f"crowd-kit's own fit), got {smoothing!r}"
        )


def dawid_skene(
    annotations: pa.Table, gold: pa.Table | None = None, *, n_iter: int = 100, tol: float = 1e-5,
    smoothing: float = DS_SMOOTHING,
) -> DawidSkeneFit:
    """Dawid-Skene by EM; gold answers (if any) are fixed as known truths during the fit; each
    confusion cell gets ``smoothing`` pseudo-counts (0: crowd-kit's fit as it is)."""
    check_smoothing(smoothing)
    df = votes(annotations)
    if df.empty:
        return DawidSkeneFit(CONSENSUS.empty_table(), {})
    data = df.rename(columns={"example_id": "task", "annotator": "worker"})[["task", "worker", "label"]]
    truth = None
    if gold is not None and gold.num_rows:
        g = gold.select(["example_id", "label"]).to_pandas()
        g = g[g["example_id"].isin(set(data["task"])) & g["label"].isin(set(data["label"]))]
        if not g.empty:
            truth = pd.Series(g["label"].to_numpy(), index=g["example_id"].to_numpy())
    with warnings.catch_warnings():  # crowd-kit 1.4 uses pandas idioms pandas 3 deprecates
        warnings.filterwarnings("ignore", module=r"crowdkit\.")
        model = (_SmoothedDawidSkene(float(smoothing), n_iter=n_iter, tol=tol) if smoothing
                 else DawidSkene(n_iter=n_iter, tol=tol)).fit(data, true_labels=truth)
    probas = model.probas_.sort_index().reindex(sorted(model.probas_.columns), axis=1)
    best = probas.to_numpy().argmax(axis=1)
    labels = probas.columns.to_numpy()[best]
    conf = probas.to_numpy()[np.arange(len(best)), best]
    n_votes = data.groupby("task", sort=True).size().reindex(probas.index)
    consensus = _consensus(probas.index, labels, conf, n_votes)
    priors = model.priors_
    accuracy = {}
    for worker in sorted(data["worker"].unique()):
        err = model.errors_.loc[worker]
        accuracy[worker] = float(sum(priors[k] * err.loc[k, k] for k in priors.index if k in err.index))
    return DawidSkeneFit(consensus, accuracy)


def annotator_quality(
    annotations: pa.Table,
    consensus: pa.Table,
    estimated: dict[str, float] | None = None,
    gold: pa.Table | None = None,
) -> pa.Table:
    """Per annotator: estimated accuracy (the model's, else agreement), count, agreement,
    lead time, accuracy on gold."""
    df = votes(annotations)
    if df.empty:
        return ANNOTATOR_QUALITY.empty_table()
    lead = annotations.select(["annotator", "lead_time_s"]).to_pandas()
    cons = dict(
        zip(consensus.column("example_id").to_pylist(), consensus.column("label").to_pylist(), strict=True)
    )
    gold_map = (
        {}
        if gold is None
        else dict(zip(gold.column("example_id").to_pylist(), gold.column("label").to_pylist(), strict=True))
    )
    df["agrees"] = [cons.get(e) == lab for e, lab in zip(df["example_id"], df["label"], strict=True)]
    df["gold"] = df["example_id"].map(gold_map)
    rows = []
    for annotator, g in df.groupby("annotator", sort=True):
        agreement = float(g["agrees"].mean())
        on_gold = g[g["gold"].notna()]
        lt = lead.loc[lead["annotator"] == annotator, "lead_time_s"].dropna()
        rows.append(
            {
                "annotator": annotator,
                "estimated_accuracy": float(estimated[annotator])
                if estimated and annotator in estimated
                else agreement,
                "n_annotations": len(g),
                "agreement": agreement,
                "mean_lead_time_s": float(lt.mean()) if len(lt) else None,
                "gold_accuracy": float((on_gold["label"] == on_gold["gold"]).mean())
                if len(on_gold)
                else None,
                "n_gold": len(on_gold),
            }
        )
    return pa.Table.from_pylist(rows, schema=ANNOTATOR_QUALITY)


def crowdlab(
    annotations: pa.Table, probs: ModelProbs, gold: pa.Table | None = None, smoothing: float = DS_SMOOTHING
) -> tuple[DawidSkeneFit, int]:
    """CROWDLAB consensus where the model has a prediction, Dawid-Skene elsewhere: (fit, number of
    examples CROWDLAB decided).

    CROWDLAB decides an example that ``probs`` covers, whose answers all lie in ``probs.classes``
    and that is not gold (a gold answer is the truth; Dawid-Skene fixes it). The rest keep their
    Dawid-Skene consensus (examples added since the model's run, labels it never saw). Annotator
    accuracies are Dawid-Skene's (CROWDLAB's annotator quality is a score, not an accuracy). Where
    cleanlab cannot weigh annotators at all (one annotator, or one answer per example) every example
    keeps Dawid-Skene's consensus.
    """
    from cleanlab.multiannotator import get_label_quality_multiannotator

    fit = dawid_skene(annotations, gold, smoothing=smoothing)
    df = votes(annotations)
    gold_ids = set() if gold is None else set(gold.column("example_id").to_pylist())
    row = {e: i for i, e in enumerate(probs.example_ids)}
    cls = {c: k for k, c in enumerate(probs.classes)}
    outside = set(df.loc[~df["label"].isin(cls.keys()), "example_id"])
    df = df[df["example_id"].isin(row.keys()) & ~df["example_id"].isin(outside | gold_ids)]
    ids = sorted(df["example_id"].unique())
    people = sorted(df["annotator"].unique())
    per_example = df.groupby("example_id").size()
    if len(people) < 2 or not (per_example > 1).any():
        return fit, 0
    at, who = {e: i for i, e in enumerate(ids)}, {w: j for j, w in enumerate(people)}
    grid = np.full((len(ids), len(people)), np.nan)
    grid[df["example_id"].map(at).to_numpy(), df["annotator"].map(who).to_numpy()] = (
        df["label"].map(cls).to_numpy()
    )
    with warnings.catch_warnings():  # cleanlab warns about annotators with few answers; Dawid-Skene did too
        warnings.simplefilter("ignore")
        result = get_label_quality_multiannotator(
            pd.DataFrame(grid, columns=people),
            probs.probs[[row[e] for e in ids]],
            return_detailed_quality=False,
            return_annotator_stats=False,
            calibrate_probs=True,  # a model surer than it is right must not outvote the answers
            verbose=False,
        )["label_quality"]
    decided = {
        e: (probs.classes[int(k)], float(q))
        for e, k, q in zip(ids, result["consensus_label"], result["consensus_quality_score"], strict=True)
    }
    base = fit.consensus.to_pydict()
    rows = zip(base["example_id"], base["label"], base["confidence"], strict=True)
    labels, conf = zip(*(decided.get(e, (lab, c)) for e, lab, c in rows), strict=True)
    consensus = _consensus(base["example_id"], labels, conf, base["n_votes"])
    return DawidSkeneFit(consensus, fit.accuracy), len(decided)


def dawid_skene_model(
    annotations: pa.Table, probs: ModelProbs, gold: pa.Table | None = None, smoothing: float = DS_SMOOTHING
) -> tuple[DawidSkeneFit, int]:
    """Dawid-Skene with the model as one more annotator: (fit, examples the model voted on).

    The model votes its most probable class on each example that ``probs`` covers and a person
    answered (it never labels an example alone); EM learns its confusion matrix like anyone's, so
    a model that errs on a class is trusted less there, and leaving a labeler out only removes their
    answers (no weight moves to the model all at once, as in CROWDLAB). The returned accuracies and
    vote counts are the people's.
    """
    df = votes(annotations)
    if (df["annotator"] == MODEL_ANNOTATOR).any():
        raise ValueError(f"an annotator is named {MODEL_ANNOTATOR!r}, the model's own name here; rename them")
    row = {e: i for i, e in enumerate(probs.example_ids)}
    ids = sorted(set(df["example_id"]) & row.keys())
    if not ids:
        return dawid_skene(annotations, gold, smoothing=smoothing), 0
    best = probs.probs[[row[e] for e in ids]].argmax(axis=1)
    model = pd.DataFrame(
        {"example_id": ids, "annotator": MODEL_ANNOTATOR, "label": [probs.classes[k] for k in best]}
    )
    both = pa.Table.from_pandas(pd.concat([df, model], ignore_index=True), preserve_index=False)
    fit = dawid_skene(both, gold, smoothing=smoothing)
    people = df.groupby("example_id", sort=True).size()
    base = fit.consensus.to_pydict()
    consensus = _consensus(base["example_id"], base["label"], base["confidence"], people[base["example_id"]])
    accuracy = {w: a for w, a in fit.accuracy.items() if w != MODEL_ANNOTATOR}
    return DawidSkeneFit(consensus, accuracy), len(ids)


def aggregate(
    annotations: pa.Table,
    gold: pa.Table | None = None,
    method: str = "dawid_skene",
    probs: ModelProbs | None = None,
    smoothing: float | None = None,
) -> Aggregation:
    """Consensus labels and annotator quality by one method (``MODEL_METHODS`` need ``probs``); every
    method but majority vote fits Dawid-Skene with ``smoothing`` pseudo-counts per confusion cell (None:
    ``auto_smoothing`` of the people's answers; the result's ``smoothing`` says which, so a refit of
    some of the answers can use the same)."""
    if smoothing is None:
        smoothing = auto_smoothing(annotations)
    if method not in METHODS:
        raise ValueError(f"unknown aggregation method {method!r}; use one of {METHODS}")
    if (method in MODEL_METHODS) != (probs is not None):
        raise ValueError(f"{' and '.join(MODEL_METHODS)} need a model's out-of-sample probabilities (probs=)")
    if gold is not None:
        gold = gold.select(GOLD.names).cast(GOLD)
    informed = 0
    if method == "majority_vote":
        consensus, estimated = majority_vote(annotations), None
    else:
        if probs is None:
            fit = dawid_skene(annotations, gold, smoothing=smoothing)
        else:
            weigh = crowdlab if method == "crowdlab" else dawid_skene_model
            fit, informed = weigh(annotations, probs, gold, smoothing)
        consensus, estimated = fit.consensus, fit.accuracy
    quality = annotator_quality(annotations, consensus, estimated, gold)
    return Aggregation(consensus, quality, method, informed, None if method == "majority_vote" else smoothing)


def _consensus(ids, labels, confidence, n_votes) -> pa.Table:
    return pa.table(
        {
            "example_id": pa.array([str(i) for i in ids], pa.string()),
            "label": pa.array([str(v) for v in np.asarray(labels)], pa.string()),
            "confidence": pa.array(np.asarray(confidence, dtype=np.float64)),
            "n_votes": pa.array(np.asarray(n_votes, dtype=np.int64)),
        },
        schema=CONSENSUS,
    )
