"""Label aggregation (majority vote, Dawid-Skene) and annotator quality. Pure: tables in, tables out.

Dawid-Skene is crowd-kit's (the reference implementation, EM over per-annotator confusion
matrices); this module only shapes its input deterministically and reads its estimates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from crowdkit.aggregation import DawidSkene

from labeling.schemas import ANNOTATOR_QUALITY, CONSENSUS, GOLD

METHODS = ("majority_vote", "dawid_skene")


@dataclass(frozen=True)
class Aggregation:
    consensus: pa.Table  # CONSENSUS
    quality: pa.Table  # ANNOTATOR_QUALITY
    method: str


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
    consensus: pa.Table
    accuracy: dict[str, float]  # annotator -> sum_k prior_k * P(says k | truth k)


def dawid_skene(
    annotations: pa.Table, gold: pa.Table | None = None, *, n_iter: int = 100, tol: float = 1e-5
) -> DawidSkeneFit:
    """Dawid-Skene by EM; gold answers (if any) are fixed as known truths during the fit."""
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
        model = DawidSkene(n_iter=n_iter, tol=tol).fit(data, true_labels=truth)
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


def aggregate(
    annotations: pa.Table, gold: pa.Table | None = None, method: str = "dawid_skene"
) -> Aggregation:
    """Consensus labels and annotator quality by one method."""
    if method not in METHODS:
        raise ValueError(f"unknown aggregation method {method!r}; use one of {METHODS}")
    if gold is not None:
        gold = gold.select(GOLD.names).cast(GOLD)
    if method == "majority_vote":
        consensus, estimated = majority_vote(annotations), None
    else:
        fit = dawid_skene(annotations, gold)
        consensus, estimated = fit.consensus, fit.accuracy
    return Aggregation(consensus, annotator_quality(annotations, consensus, estimated, gold), method)


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
