"""Labeling against a real Label Studio: import, simulated annotation, export, aggregation.

    python bench/labeling_sync.py [--tasks 10000] [--annotated 1000] [--per-task 3] [--classes 4] [--seed 0]
    python bench/labeling_sync.py --consensus-only [--data FILE.parquet --label-col L]
                                                       # just the consensus comparison, no Label Studio

Starts its own Label Studio (temporary data dir, free port) unless CARAVAN_BENCH_LABEL_STUDIO_URL
and CARAVAN_BENCH_LABEL_STUDIO_TOKEN name one. Four simulated annotators (real users, accuracy
0.95/0.85/0.7/0.55) answer `--annotated` tasks, `--per-task` of them per task (drawn per task).
Tasks are imported through the idempotent sync; the annotated ones arrive carrying their
annotations (each with `completed_by`), because the open-source API creates annotations one
request at a time (its rate is measured on a small side project and printed beside).
Prints import tasks/s, export annotations/s, aggregation time, majority-vote and Dawid-Skene
accuracy against the true labels, and the Spearman correlation between estimated and true
annotator accuracy. The last line is one JSON object.

Then, side by side on scikit-learn's bundled digits (1,797 examples, 10 classes; nothing is
downloaded), or on ``--data`` (numeric feature columns and ``--label-col``): the pipeline's
consensus (``labeling.aggregate``, Dawid-Skene by crowd-kit), majority vote and cleanlab's CROWDLAB
(``cleanlab.multiannotator.get_label_quality_multiannotator``) on simulated annotators of accuracy
0.95/0.85/0.7/0.55 and a random one (uniform over the classes), ``--per-task`` answers per example.
CROWDLAB also needs out-of-sample class probabilities: a 5-fold cross-validated scikit-learn
LogisticRegression on the features, trained on the majority-vote labels (the labels one has before
any consensus model). ``crowdlab_pipeline`` and ``dawid_skene_model`` are what the pipeline's
consensus methods that weigh a model do once a run was reviewed:
``labeling.aggregate(method='crowdlab')`` (calibrated) and
``labeling.aggregate(method='dawid_skene_model')`` (the model as one more annotator), with the
review's probabilities: the MLP recipe (the pipeline's defaults) and a forest (extra trees), cross-fitted
and mixed by ``attribution.review_labels`` on the Dawid-Skene labels. Printed: consensus accuracy against the
true labels, and each method's annotator-quality estimates against the true accuracies (Spearman;
mean absolute error, which only means something for estimates that are accuracies). The JSON line
gains ``consensus_accuracy`` (also ``crowdlab_pipeline``, ``dawid_skene_model``),
``annotator_spearman`` and ``annotator_abs_error`` (keyed ``dawid_skene``, ``crowdlab``,
``majority``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import load  # noqa: E402
from labeling import (  # noqa: E402
    LabelStudioClient,
    LabelStudioServer,
    ProjectSpec,
    SimulatedAnnotator,
    aggregate,
    export_annotations,
    import_with_answers,
    register,
    simulate_answers,
    simulated_annotators,
    submit_answers,
    sync_tasks,
)

ACCURACIES = (0.95, 0.85, 0.7, 0.55)


def examples(ids: list[str], rng: random.Random) -> pa.Table:
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta"]
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in ids]
    return pa.table(
        {
            "example_id": ids,
            "provider": [f"provider-{i % 5}" for i in range(len(ids))],
            "text": texts,
            "source": ["bench"] * len(ids),
        }
    )


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def run(client: LabelStudioClient, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    choices = tuple(f"class-{k}" for k in range(args.classes))
    run_id = uuid.uuid4().hex[:8]
    project = client.ensure_project(ProjectSpec(f"bench sync {run_id}", "text", choices, "text"))
    sims = simulated_annotators(ACCURACIES, prefix=f"sim-bench-{run_id}")
    users = register(client, sims)

    ids = [f"bench-{i:07d}" for i in range(args.tasks)]
    table = examples(ids, rng)
    annotated = set(rng.sample(ids, args.annotated))
    truth = {e: rng.choice(choices) for e in sorted(annotated)}
    answers = simulate_answers(truth, sims, choices, per_example=args.per_task, seed=args.seed)
    mask = pa.array([e in annotated for e in ids])

    plain, t_plain = timed(sync_tasks, client, project, table.filter(pa.compute.invert(mask)))
    n_with, t_with = timed(import_with_answers, client, project, table.filter(mask), answers, users)
    again, t_again = timed(sync_tasks, client, project, table)
    assert again.created == 0 and again.tasks_in_project == args.tasks, again
    t_import = t_plain + t_with
    print(
        f"import: {args.tasks} tasks in {t_import:.2f} s = {args.tasks / t_import:.0f} tasks/s "
        f"({plain.created} plain via sync in {t_plain:.2f} s = {plain.created / t_plain:.0f}/s; "
        f"{n_with} carrying {len(answers)} annotations in {t_with:.2f} s = {n_with / t_with:.0f}/s)"
    )
    print(f"re-sync of all {args.tasks} (idempotent, 0 created): {t_again:.2f} s")

    side = client.ensure_project(ProjectSpec(f"bench per-request {run_id}", "text", choices, "text"))
    few = sorted(annotated)[:10]
    sync_tasks(client, side, table.filter(pa.array([e in set(few) for e in ids])))
    few_answers = [a for a in answers if a.example_id in set(few)]
    _, t_req = timed(submit_answers, client, side, few_answers, users)
    print(f"annotations one request each (side project): {len(few_answers) / t_req:.1f} /s")

    full, t_export = timed(export_annotations, client, project)
    n = full.table.num_rows
    assert n == len(answers) and full.n_skipped == 0, (n, len(answers), full.skipped)
    incr, t_incr = timed(export_annotations, client, project, full.cursor)
    assert incr.table.num_rows == 0
    print(
        f"export: {n} annotations in {t_export:.2f} s = {n / t_export:.0f} annotations/s; "
        f"incremental export with nothing new: {t_incr:.3f} s"
    )

    mv, t_mv = timed(aggregate, full.table, method="majority_vote")
    ds, t_ds = timed(aggregate, full.table, method="dawid_skene")

    def acc(consensus: pa.Table) -> float:
        got = dict(zip(consensus["example_id"].to_pylist(), consensus["label"].to_pylist(), strict=True))
        return sum(got.get(e) == lab for e, lab in truth.items()) / len(truth)

    est = dict(
        zip(ds.quality["annotator"].to_pylist(), ds.quality["estimated_accuracy"].to_pylist(), strict=True)
    )
    true_acc = {s.email: s.accuracy for s in sims}
    names = sorted(true_acc)
    rho = float(spearmanr([est[k] for k in names], [true_acc[k] for k in names]).statistic)
    print(f"aggregate: majority vote {t_mv:.3f} s, Dawid-Skene (+ quality) {t_ds:.3f} s")
    print(
        f"label accuracy vs truth: majority vote {acc(mv.consensus):.4f}, Dawid-Skene {acc(ds.consensus):.4f}"
    )
    for s in sims:
        print(f"  {s.name}: true {s.accuracy:.2f}, estimated {est[s.email]:.3f}")
    print(f"Spearman(estimated, true annotator accuracy) = {rho:.3f}")
    return {
        "import_tasks_per_s": round(args.tasks / t_import, 1),
        "export_3000_s": round(t_export, 3),
        "aggregate_s": round(t_ds, 3),
        "mv_accuracy": round(acc(mv.consensus), 4),
        "ds_accuracy": round(acc(ds.consensus), 4),
        "quality_spearman": round(rho, 4),
    }


def consensus_comparison(
    per_task: int, seed: int, data: str | None = None, label_col: str | None = None
) -> dict:
    """Dawid-Skene (the pipeline's), majority vote and cleanlab's CROWDLAB on simulated annotators of
    known accuracy over the digits (or ``data``); consensus accuracy and annotator-quality estimates
    vs the truth."""
    import warnings

    from cleanlab.multiannotator import get_label_quality_multiannotator
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load(data, label_col)
    classes = [str(c) for c in range(int(y.max()) + 1)]
    ids = [f"digit-{i:05d}" for i in range(len(y))]
    truth = {e: classes[v] for e, v in zip(ids, y, strict=True)}
    people = [
        *simulated_annotators(ACCURACIES, prefix="sim-digits"),
        SimulatedAnnotator("sim-digits-5-random", 1.0 / len(classes)),
    ]  # uniform over all classes
    answers = simulate_answers(truth, people, classes, per_example=per_task, seed=seed)
    stamp = pa.array([0] * len(answers), pa.timestamp("us", tz="UTC"))
    ann = pa.table(
        {
            "annotation_id": pa.array(range(len(answers)), pa.int64()),
            "example_id": [a.example_id for a in answers],
            "annotator": [a.annotator.email for a in answers],
            "label": [a.label for a in answers],
            "created_at": stamp,
            "updated_at": stamp,
            "lead_time_s": [a.lead_time_s for a in answers],
        }
    )
    print(
        f"== consensus on {data or 'digits'}: {len(ids)} examples, {len(classes)} classes, "
        f"{len(people)} simulated annotators ({', '.join(f'{p.accuracy:.2f}' for p in people)}), "
        f"{per_task} answers per example"
    )
    t0 = time.perf_counter()
    ds = aggregate(ann, method="dawid_skene")
    t_ds = time.perf_counter() - t0
    mv = aggregate(ann, method="majority_vote")

    # CROWDLAB: an n x m frame of class indices (NaN where the annotator did not answer) ...
    emails = [p.email for p in people]
    row = {e: i for i, e in enumerate(ids)}
    grid = np.full((len(ids), len(people)), np.nan)
    for a in answers:
        grid[row[a.example_id], emails.index(a.annotator.email)] = classes.index(a.label)
    import pandas as pd

    frame = pd.DataFrame(grid, columns=emails)
    # ... and out-of-sample probabilities of a model trained on the majority-vote labels
    t0 = time.perf_counter()
    mv_label = dict(
        zip(mv.consensus["example_id"].to_pylist(), mv.consensus["label"].to_pylist(), strict=True)
    )
    y_mv = np.array([classes.index(mv_label[e]) for e in ids])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, x, y_mv, cv=folds, method="predict_proba")
    t_probs = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crowd = get_label_quality_multiannotator(frame, probs, verbose=False)
    t_cl = time.perf_counter() - t0

    def acc_of(labels: dict[str, str]) -> float:
        return sum(labels.get(e) == lab for e, lab in truth.items()) / len(truth)

    def labels_of(agg) -> dict[str, str]:
        return dict(
            zip(agg.consensus["example_id"].to_pylist(), agg.consensus["label"].to_pylist(), strict=True)
        )

    t0 = time.perf_counter()
    review = pipeline_review(x, labels_of(ds), ids, classes, seed)
    pipeline = aggregate(ann, method="crowdlab", probs=review)
    t_review = time.perf_counter() - t0
    with_model = aggregate(ann, method="dawid_skene_model", probs=review)

    def quality_of(agg) -> dict[str, float]:
        q = agg.quality
        return dict(zip(q["annotator"].to_pylist(), q["estimated_accuracy"].to_pylist(), strict=True))

    cl_labels = {
        e: classes[int(v)] for e, v in zip(ids, crowd["label_quality"]["consensus_label"], strict=True)
    }
    stats = crowd["annotator_stats"]
    accuracy = {
        "dawid_skene": acc_of(labels_of(ds)),
        "crowdlab": acc_of(cl_labels),
        "majority": acc_of(mv_label),
        "crowdlab_pipeline": acc_of(labels_of(pipeline)),
        "dawid_skene_model": acc_of(labels_of(with_model)),
    }
    estimates = {
        "dawid_skene": quality_of(ds),
        "crowdlab": {str(k): float(v) for k, v in stats["annotator_quality"].items()},
        "majority": quality_of(mv),  # agreement with the majority vote
    }
    true_acc = [p.accuracy for p in people]
    spearman = {
        k: float(spearmanr([est[e] for e in emails], true_acc).statistic) for k, est in estimates.items()
    }
    abs_err = {
        k: float(np.mean([abs(est[e] - t) for e, t in zip(emails, true_acc, strict=True)]))
        for k, est in estimates.items()
    }
    model_acc = float((probs.argmax(1) == y).mean())
    print(
        f"  time: Dawid-Skene {t_ds:.2f} s; CROWDLAB {t_cl:.2f} s + {t_probs:.2f} s for its "
        f"cross-validated probabilities (LogisticRegression, 5 folds, on majority-vote labels; "
        f"its own accuracy vs truth {model_acc:.4f})"
    )
    review_acc = float(np.mean(np.asarray(review.classes)[review.probs.argmax(1)] == np.asarray(classes)[y]))
    print(
        f"  crowdlab_pipeline: the pipeline's review (MLP recipe and extra trees) cross-fitted on the "
        f"Dawid-Skene labels ({t_review:.1f} s; its "
        f"own accuracy vs truth {review_acc:.4f}), then labeling.aggregate(method='crowdlab' and "
        "'dawid_skene_model')"
    )
    print("  consensus accuracy vs true labels: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    print("  annotator quality (true accuracy: Dawid-Skene / CROWDLAB / majority agreement):")
    for p in people:
        print(
            f"    {p.name:<22} {p.accuracy:.2f}: "
            + " / ".join(f"{estimates[k][p.email]:.3f}" for k in estimates)
        )
    print("  Spearman(estimate, true accuracy): " + ", ".join(f"{k} {v:+.3f}" for k, v in spearman.items()))
    print(
        "  mean |estimate - true accuracy|: "
        + ", ".join(f"{k} {v:.3f}" for k, v in abs_err.items())
        + " (CROWDLAB's quality is a score, not an accuracy)"
    )
    return {
        "consensus_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
        "annotator_spearman": {k: round(v, 4) for k, v in spearman.items()},
        "annotator_abs_error": {k: round(v, 4) for k, v in abs_err.items()},
    }


def pipeline_review(x: np.ndarray, labels: dict[str, str], ids: list[str], classes: list[str], seed: int):
    """What the pipeline's label review stores, as its `_cross_fitted` makes it: inputs encoded by
    `InputEncoding`, the MLP recipe (the pipeline's defaults) and a forest (extra trees) cross-fitted on the
    consensus labels."""
    from attribution import AttributionTask, InputEncoding, review_labels
    from labeling import ModelProbs
    from pipelines.assets.training import TrainingConfig

    config = TrainingConfig()
    rows = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])})
    encoding = InputEncoding.fit(rows, classes)
    task = AttributionTask(encoding.mlp(config.hidden), config.train_config("mlp"))
    y = encoding.label_indices([labels[e] for e in ids])
    _, probs = review_labels(task, encoding.transform(rows), y, folds=5, seed=seed)
    return ModelProbs(tuple(ids), tuple(encoding.classes), probs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--annotated", type=int, default=1_000)
    p.add_argument("--per-task", type=int, default=3)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="consensus comparison on this Parquet (numeric features) instead of digits")
    p.add_argument("--label-col", help="the label column of --data")
    p.add_argument(
        "--consensus-only",
        action="store_true",
        help="only the consensus comparison on digits (Dawid-Skene, CROWDLAB, majority); no Label Studio",
    )
    args = p.parse_args()
    if args.consensus_only:
        print(json.dumps(consensus_comparison(args.per_task, args.seed, args.data, args.label_col)))
        return
    if not 10 <= args.annotated <= args.tasks:
        p.error("--annotated must be between 10 and --tasks")
    url = os.environ.get("CARAVAN_BENCH_LABEL_STUDIO_URL")
    if url:
        summary = run(
            LabelStudioClient(url, os.environ["CARAVAN_BENCH_LABEL_STUDIO_TOKEN"], timeout_s=300), args
        )
    else:
        with tempfile.TemporaryDirectory(prefix="caravan-bench-ls-") as tmp:
            server = LabelStudioServer(
                data_dir=Path(tmp), token=secrets.token_hex(20), password=secrets.token_urlsafe(16)
            )
            _, t_start = timed(server.start)
            print(f"Label Studio 1.23 started in {t_start:.1f} s at {server.url}")
            try:
                summary = run(LabelStudioClient(server.url, server.token, timeout_s=300), args)
            finally:
                server.stop()
    summary.update(consensus_comparison(args.per_task, args.seed))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
