"""Replay: an auditor retrains a published run and checks its example scores, weights and root.

The auditor fetches what the run's records name (the labeled data, the recipe and seed, the
tables the split was computed from, an hf-local run's starting model by the CIDs of its files),
retrains with the same code, and compares:

- the labels: the consensus the consensus record stores against the consensus recomputed from the
  answers, gold and label review it names (by the method it names); the labeled data trained on
  against the snapshot's rows with those labels; and the examples, example credit, annotations and
  consensus the split was computed from against those the ingest, snapshot and consensus records
  name. Without this a publisher could train and pay on labels (or credit) of its choosing, every
  CID and score consistent;
- the example scores: bit for bit where the run was trained on the same torch build, CPU
  architecture and CPU capability (the platform the training record names; replay runs torch with the
  run's own thread count, whatever this machine's cores); elsewhere within the tolerance recorded
  with the run, at the precision the split used (`score_digits`);
- the weights recomputed from the replayed scores, contributor by contributor, against the stored
  weights table (basis points identical on every platform);
- the root of the replayed weights against the on-chain root.

Replay refuses code other than the code that trained the run: it names the commit to check out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from attribution import WeightPolicy, contributor_weights
from pipelines.assets.labeling import label_rows, recount, reviewed_probs
from pipelines.assets.training import (
    SCORE_RTOL,
    TrainingConfig,
    provider_value,
    train_labeled,
    training_platform,
)
from pipelines.lineage import pipeline_code
from provenance import (
    CONSENSUS,
    INGEST,
    LABEL_REVIEW,
    SNAPSHOT,
    TRAINING,
    Chain,
    CodeVersion,
    ConsensusRecord,
    Findings,
    IngestRecord,
    Record,
    RecordError,
    RunRecords,
    SnapshotRecord,
    TrainingRecord,
    WeightingRecord,
    read_weights,
    share_leaves,
)
from serving import fetch_local_model
from storage import ContentStore, read_parquet


class ReplayRefused(ValueError):
    """Replay cannot be done faithfully here; the message says what to do instead."""


@dataclass
class ReplayReport(Findings):
    run_id: str
    head_cid: str | None = None
    training_cid: str | None = None
    code: str | None = None
    same_platform: bool | None = None
    score_rtol: float | None = None
    max_score_diff: float | None = None
    stored_root: str | None = None
    replayed_root: str | None = None
    onchain_root: str | None = None
    replay_s: float = 0.0


def replay_run(
    chain: Chain, store: ContentStore, run_id: str, *, code: CodeVersion | None = None
) -> ReplayReport:
    """Retrain the run from its records and report every difference (`.ok`, `.failures`)."""
    t0 = time.perf_counter()
    report = ReplayReport(run_id)
    records = RunRecords(chain, store)
    report.head_cid = records.head(run_id)
    head = records.load(report.head_cid)
    report.training_cid, training = records.parent(report.head_cid, TRAINING)
    report.code = training.code.describe()
    require_same_code(training.code, code or pipeline_code())

    recorded = training.params.get("platform") or {}
    with recorded_threads(recorded.get("threads")):
        _retrain(records, head, training, recorded, report)
    dist = chain.distribution(run_id)
    report.onchain_root = dist.root if dist else None
    if report.replayed_root != report.onchain_root:
        report.fail(
            "root_differs",
            run_id,
            f"the replayed weights give root {report.replayed_root}, the chain holds {report.onchain_root}",
        )
    report.replay_s = round(time.perf_counter() - t0, 3)
    return report


@contextmanager
def recorded_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to the one the run trained with (as its platform records it),
    then restored: float reductions are split by thread, so an auditor's machine with other cores
    would round differently. A count above this machine's cores is slower, not different."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def same_platform(recorded: Mapping[str, object], here: Mapping[str, object]) -> bool:
    """Whether every property the run recorded of its platform holds here (a record from before a
    property was recorded is compared on those it has)."""
    return bool(recorded) and all(here.get(k) == v for k, v in recorded.items())


def _retrain(
    records: RunRecords, head: Record, training: Record, recorded: Mapping, report: ReplayReport
) -> None:
    """Retrain the run, compare its scores, provider values and weights, and set the replayed root."""
    store = records.store
    report.same_platform = same_platform(recorded, training_platform())
    report.score_rtol = 0.0 if report.same_platform else float(training.params.get("score_rtol", SCORE_RTOL))
    labeled = read_parquet(store.get(training.inputs[TrainingRecord.LABELED_DATASET]))
    consensus_without = _check_labels(records, report.training_cid, head, labeled, report)
    config = TrainingConfig(**training.params["config"])
    validation_cid = training.inputs.get(TrainingRecord.VALIDATION)
    validation = read_parquet(store.get(validation_cid)) if validation_cid else None
    base_cid = training.inputs.get(TrainingRecord.BASE_MODEL)  # an hf-local run's starting model
    split, result = train_labeled(
        labeled, config, run_id=str(training.params["run_id"]), validation=validation,
        field=training.params.get("field"), local=fetch_local_model(store, base_cid) if base_cid else None,
    )
    stored_scores = read_parquet(store.get(training.outputs[TrainingRecord.EXAMPLE_ATTRIBUTION]))
    _compare_scores(stored_scores, result.example_attribution, report)
    left_out = _replayed_provider_value(
        records, head, training, split, labeled, result, config, consensus_without, report
    )

    stored = read_weights(store.get(head.outputs[WeightingRecord.WEIGHTS]))
    replayed = _weights(records, head, result.example_attribution, stored, left_out)
    _compare_weights(stored, replayed, report)
    report.stored_root = share_leaves(stored).root
    report.replayed_root = share_leaves(replayed).root


def require_same_code(recorded: CodeVersion, here: CodeVersion) -> None:
    """Replay only with the code that trained the run, never compare against other code."""
    if recorded.git_commit is None or recorded.dirty:
        raise ReplayRefused(
            f"the run was trained by {recorded.describe()}: code that cannot be checked out again, "
            "so it cannot be replayed"
        )
    if here.git_commit != recorded.git_commit or here.dirty:
        raise ReplayRefused(
            f"the run was trained by commit {recorded.git_commit}, this checkout is {here.describe()}: "
            f"run `git checkout {recorded.git_commit}` in a clean working tree, then replay again"
        )


def _check_labels(
    records: RunRecords, training_cid: str, head: Record, labeled: pa.Table, report: ReplayReport
) -> Callable[[Collection[str]], pa.Table] | None:
    """The labels trained on and paid by are the recorded answers' consensus, recomputed. Returns that
    recomputation (`recount`), which the providers' left-out retrains relabel by; None where the
    lineage names no answers."""
    try:
        consensus_cid, consensus = records.parent(training_cid, CONSENSUS)
        _, snapshot = records.parent(training_cid, SNAPSHOT)
        ingest = [r for r in map(records.load, snapshot.parents) if r.activity == INGEST]
        review_cid = (
            records.parent(consensus_cid, LABEL_REVIEW)[0]
            if ConsensusRecord.LABEL_REVIEW in consensus.inputs
            else None
        )
    except RecordError as exc:
        report.fail("lineage_incomplete", training_cid, str(exc))
        return None
    store = records.store
    without = recount(store, consensus_cid)  # None: the record names no answers
    if without is None or SnapshotRecord.EXAMPLES not in snapshot.inputs:
        report.skip("SKIP (labels)", consensus_cid, "no inputs named to recompute the labels from")
        return without
    if review_cid and reviewed_probs(store, review_cid) is None:
        report.fail("lineage_incomplete", review_cid, "the label review weighed keeps no probabilities")
        return without
    method = str(consensus.params.get("method", "dawid_skene"))
    stored = read_parquet(store.get(consensus.outputs[ConsensusRecord.CONSENSUS]))
    _compare_consensus(stored, without(()), consensus_cid, method, report)

    raw = read_parquet(store.get(snapshot.inputs[SnapshotRecord.EXAMPLES]))
    expected = label_rows(raw, stored)
    if expected.column_names != labeled.column_names or not expected.cast(labeled.schema).equals(labeled):
        report.fail(
            "labeled_data_differs",
            training_cid,
            "the labeled data trained on is not the snapshot's rows with the recorded consensus labels",
        )
    credit = ingest[0].outputs.get(IngestRecord.EXAMPLE_CREDIT) if ingest else None
    pay_inputs = {
        WeightingRecord.EXAMPLES: snapshot.inputs[SnapshotRecord.EXAMPLES],
        WeightingRecord.ANNOTATIONS: consensus.inputs[ConsensusRecord.ANNOTATIONS],
        WeightingRecord.CONSENSUS: consensus.outputs[ConsensusRecord.CONSENSUS],
        WeightingRecord.EXAMPLE_CREDIT: credit,
    }
    other = [name for name, cid in pay_inputs.items() if head.inputs.get(name) != cid]
    if other:
        report.fail(
            "pay_inputs_differ",
            report.head_cid or "",
            f"the split was computed from other {', '.join(other)} than the run's ingest, snapshot and "
            "consensus records name",
        )
    return without


def _compare_consensus(
    stored: pa.Table, again: pa.Table, cid: str, method: str, report: ReplayReport
) -> None:
    """Labels and vote counts exactly; confidences (EM's floats) to 1e-6."""

    def rows(table: pa.Table) -> dict[str, tuple[str, int, float]]:
        cols = [table[c].to_pylist() for c in ("example_id", "label", "n_votes", "confidence")]
        return {e: (lab, n, c) for e, lab, n, c in zip(*cols, strict=True)}

    a, b = rows(stored), rows(again)

    def same(e: str) -> bool:
        x, y = a.get(e), b.get(e)
        return x is not None and y is not None and x[:2] == y[:2] and abs(x[2] - y[2]) <= 1e-6

    differ = sorted(e for e in a.keys() | b.keys() if not same(e))
    if differ:
        report.fail(
            "consensus_differs",
            cid,
            f"{len(differ)} of {len(b)} stored consensus rows differ from the recorded answers' {method} "
            f"consensus (examples {', '.join(e[:16] for e in differ[:3])})",
        )


def _compare_scores(stored: pa.Table, replayed: pa.Table, report: ReplayReport) -> None:
    got = dict(zip(replayed["example_id"].to_pylist(), replayed["score"].to_numpy(), strict=True))
    ids = stored["example_id"].to_pylist()
    if sorted(ids) != sorted(got):
        report.fail("examples_differ", report.training_cid or "", "the stored scores name other examples")
        return
    a = stored["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    b = np.asarray([got[e] for e in ids], dtype=np.float64)
    diff = np.abs(a - b)
    report.max_score_diff = float(diff.max()) if diff.size else 0.0
    allowed = (report.score_rtol or 0.0) * float(np.max(np.abs(b))) if b.size else 0.0
    if report.max_score_diff > allowed:
        worst = ids[int(diff.argmax())]
        report.fail(
            "scores_differ",
            report.training_cid or "",
            f"{int((diff > allowed).sum())} of {len(ids)} stored example scores differ from the replay "
            f"(largest {report.max_score_diff:.3g} at example {worst[:16]}, allowed {allowed:.3g})",
        )


def _replayed_provider_value(
    records: RunRecords, head: Record, training: Record, split, labeled: pa.Table, result, config,
    consensus_without: Callable[[Collection[str]], pa.Table] | None, report: ReplayReport,
) -> pa.Table | None:
    """The providers' left-out values retrained again, checked against the stored ones (as scores are:
    bit for bit on the same platform, else within the recorded tolerance of the largest |value|)."""
    cid = head.inputs.get(WeightingRecord.PROVIDER_VALUE)
    if cid is None:
        return None
    if cid != training.outputs.get(TrainingRecord.PROVIDER_VALUE):
        report.fail("pay_inputs_differ", report.head_cid or "",
                    "the split was computed from other provider values than the training record names")
    (credit,) = records.input_tables(head, (WeightingRecord.EXAMPLE_CREDIT,))
    again = provider_value(split, labeled, result, config, credit, consensus_without)
    stored = read_parquet(records.store.get(cid))
    a, b = _values(stored), _values(again)
    top = max((abs(x) for pair in b.values() for x in pair), default=0.0)
    allowed = (report.score_rtol or 0.0) * top

    def off(p: str) -> bool:
        return p not in a or p not in b or max(abs(x - y) for x, y in zip(a[p], b[p], strict=True)) > allowed

    differ = sorted(filter(off, a.keys() | b.keys()))
    if differ:
        report.fail(
            "provider_values_differ", report.training_cid or "",
            f"stored left-out values of {', '.join(differ)} differ from the replay "
            f"({', '.join(f'{p}: {a.get(p)} stored, {b.get(p)} replayed' for p in differ[:5])})",
        )
    return again


def _values(table: pa.Table | None) -> dict[str, tuple[float, float]]:
    """provider -> (value, value_se): both move pay."""
    if table is None:
        return {}
    pairs = zip(table["value"].to_pylist(), table["value_se"].to_pylist(), strict=True)
    return dict(zip(table["provider"].to_pylist(), pairs, strict=True))


def _weights(
    records: RunRecords, head: Record, scores: pa.Table, stored: pa.Table, left_out: pa.Table | None
) -> pa.Table:
    """The weights the replayed scores (and provider values) give, from the tables and policy the head
    record names."""
    examples, annotations, consensus, credit = records.input_tables(head, WeightingRecord.SPLIT_TABLES)
    addresses = dict(zip(stored["contributor"].to_pylist(), stored["address"].to_pylist(), strict=True))
    policy = WeightPolicy.from_params(head.params.get("policy") or {})
    return contributor_weights(scores, examples, annotations, consensus, addresses, policy, credit, left_out)


def _compare_weights(stored: pa.Table, replayed: pa.Table, report: ReplayReport) -> None:
    def bps(table: pa.Table) -> dict[tuple[str, str], int]:
        rows = table.select(["contributor", "role", "weight_bps"]).to_pylist()
        return {(r["contributor"], r["role"]): r["weight_bps"] for r in rows}

    a, b = bps(stored), bps(replayed)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k, 0) != b.get(k, 0))
    if differ:
        names = ", ".join(
            f"{c} ({r}: {a.get((c, r), 0)} stored, {b.get((c, r), 0)} replayed bps)" for c, r in differ
        )
        report.fail("pay_differs", report.head_cid or "", f"contributors whose pay differs: {names}")

