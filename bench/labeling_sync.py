"""Labeling against a real Label Studio: import, simulated annotation, export, aggregation.

    python bench/labeling_sync.py [--tasks 10000] [--annotated 1000] [--per-task 3] [--classes 4] [--seed 0]

Starts its own Label Studio (temporary data dir, free port) unless CARAVAN_BENCH_LABEL_STUDIO_URL
and CARAVAN_BENCH_LABEL_STUDIO_TOKEN name one. Four simulated annotators (real users, accuracy
0.95/0.85/0.7/0.55) answer `--annotated` tasks, `--per-task` of them per task (drawn per task).
Tasks are imported through the idempotent sync; the annotated ones arrive carrying their
annotations (each with `completed_by`), because the open-source API creates annotations one
request at a time (its rate is measured on a small side project and printed beside).
Prints import tasks/s, export annotations/s, aggregation time, majority-vote and Dawid-Skene
accuracy against the true labels, and the Spearman correlation between estimated and true
annotator accuracy. The last line is one JSON object.
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

import pyarrow as pa
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labeling import (  # noqa: E402
    LabelStudioClient,
    LabelStudioServer,
    ProjectSpec,
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--annotated", type=int, default=1_000)
    p.add_argument("--per-task", type=int, default=3)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
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
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
