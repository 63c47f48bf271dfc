"""The run's inputs made again from what its records name: the examples and their credit from the
source files, the declared validation set and gold, the consensus from the answers, the label
review from the reviewed run's recipe."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from attribution import (
    nudged_steps,
)
from pipelines.assets.labeling import Recount, label_rows, recount, reviewed_probs
from pipelines.assets.review import Reviewed, rescored, review_config, reviewed
from pipelines.datasets import (
    DatasetError,
    Payload,
    SourceFile,
    load_files,
    registration_times,
    to_examples,
    validation_examples,
)
from pipelines.replay.band import NUDGE_SALT, SPREAD_FACTOR
from pipelines.replay.platform import replay_platform, same_platform
from pipelines.replay.tables import same_rows
from provenance import (
    CONSENSUS,
    INGEST,
    LABEL_REVIEW,
    SNAPSHOT,
    TRAINING,
    ConsensusRecord,
    Findings,
    IngestRecord,
    LabelReviewRecord,
    Record,
    RecordError,
    RunRecords,
    SnapshotRecord,
    TrainingRecord,
    WeightingRecord,
)
from storage import ContentStore, read_parquet, snapshot_parquet

if TYPE_CHECKING:
    from pipelines.replay.report import ReplayReport


def check_labels(
    records: RunRecords, training_cid: str, head: Record, labeled: pa.Table, report: ReplayReport
) -> Recount | None:
    """The labels trained on and paid by are the recorded answers' consensus, recomputed. Returns that
    recomputation (`recount`), which the left-out retrains relabel by; None where the lineage names no
    answers."""
    try:
        consensus_cid, consensus = records.parent(training_cid, CONSENSUS)
        snapshot_cid, snapshot = records.parent(training_cid, SNAPSHOT)
        ingest = [(c, r) for c, r in zip(snapshot.parents, map(records.load, snapshot.parents), strict=True)
                  if r.activity == INGEST]
        review_cid = (
            records.parent(consensus_cid, LABEL_REVIEW)[0]
            if ConsensusRecord.LABEL_REVIEW in consensus.inputs
            else None
        )
    except RecordError as exc:
        report.fail("lineage_incomplete", training_cid, str(exc))
        return None
    store = records.store
    examples_cid = snapshot.inputs.get(SnapshotRecord.EXAMPLES)
    raw = read_parquet(store.get(examples_cid)) if examples_cid else None  # the examples trained and paid on
    if not ingest or examples_cid != ingest[0][1].outputs.get(IngestRecord.EXAMPLES):
        report.fail("ingest_differs", snapshot_cid, "the snapshot's examples are not those its ingest made")
    else:
        if check_ingest(store, *ingest[0], report):
            check_snapshot(store, snapshot_cid, snapshot, raw, report)
        targets = records.load(training_cid).inputs.get(TrainingRecord.VALIDATION)
        gold = consensus.inputs.get(ConsensusRecord.GOLD)
        check_declared(store, *ingest[0], labeled, targets, gold, report)
    without = recount(store, consensus_cid)  # None: the record names no answers
    if without is None or SnapshotRecord.EXAMPLES not in snapshot.inputs:
        report.skip("SKIP (labels)", consensus_cid, "no inputs named to recompute the labels from")
        return without
    if review_cid and reviewed_probs(store, review_cid) is None:
        report.fail("lineage_incomplete", review_cid, "the label review weighed keeps no probabilities")
        return without
    if review_cid:
        check_review(records, review_cid, records.load(review_cid), report)
    method = str(consensus.params.get("method", "dawid_skene"))
    stored = read_parquet(store.get(consensus.outputs[ConsensusRecord.CONSENSUS]))
    _compare_consensus(stored, without(()), consensus_cid, method, report)

    expected = label_rows(raw, stored)
    if not same_rows(expected, labeled):
        report.fail(
            "labeled_data_differs",
            training_cid,
            "the labeled data trained on is not the snapshot's rows with the recorded consensus labels",
        )
    credit = ingest[0][1].outputs.get(IngestRecord.EXAMPLE_CREDIT) if ingest else None
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


def check_ingest(store: ContentStore, cid: str, ingest: Record, report: Findings) -> bool:
    """The examples and their credit are what this code makes of the source files the ingest record
    names (`to_examples`, by the files' CIDs, providers and registration times): without it a publisher
    could move examples from one provider to another, or credit another's copies to itself, and pay by
    that under consistent CIDs, every later check passing. A record that names no source files (one
    from before records named them, or a hub dataset's registered before its rows were pinned) is skipped
    and said (False)."""
    files, params = ingest.params.get("source_files") or [], ingest.params
    if not files or "labeling" not in params:
        report.skip("SKIP (ingest)", cid, "the ingest record names no source files and labeling spec to "
                    "make its examples from (a record from before they were named, or a hub dataset "
                    "registered before its rows were pinned)")
        return False
    payload = Payload.of(params["labeling"])
    try:
        rows = load_files([SourceFile.from_json(f) for f in files], store.get, payload=payload)
        examples, made = to_examples(rows, registration_times(files), payload)
    except DatasetError as exc:
        report.fail("ingest_differs", cid, f"its source files make no examples here: {exc}")
        return True
    stored = read_parquet(store.get(ingest.outputs[IngestRecord.EXAMPLES]))
    if not same_rows(stored, examples):
        report.fail("ingest_differs", cid, "its examples are not what its source files make: "
                    + _credited_elsewhere(stored, examples, "provider"))
    credit_cid = ingest.outputs.get(IngestRecord.EXAMPLE_CREDIT)
    credit = read_parquet(store.get(credit_cid)) if credit_cid else None
    if credit is None or not same_rows(credit, made.grouping.credit):
        report.fail("ingest_differs", cid, "its example credit is not the duplicate grouping its examples "
                    "make: " + ("none recorded" if credit is None else _credited_elsewhere(
                        credit, made.grouping.credit, "provider", "share")))
    return True


def check_snapshot(
    store: ContentStore, cid: str, snapshot: Record, examples: pa.Table, report: Findings
) -> None:
    """The version's pinned snapshot (what names and publishes the dataset version) holds the examples its
    record names (`examples`, read by the caller), as `dataset_snapshot` writes them: else an auditor
    tracing a payout to the data would read other rows than were trained on and paid by."""
    if store.get(snapshot.outputs[SnapshotRecord.SNAPSHOT]) != snapshot_parquet(examples):
        report.fail("ingest_differs", cid, "the pinned snapshot does not hold the examples its record names")


def check_declared(
    store: ContentStore, cid: str, ingest: Record, labeled: pa.Table, validation_cid: str | None,
    gold_cid: str | None, report: Findings,
) -> None:
    """The validation set the run measured influence against (`validation_cid`, the training record's)
    is the one its dataset version declared at registration, made again from the file the ingest record
    names, and the gold its consensus graded labelers on (`gold_cid`) is the declared gold file: else a
    publisher could pick targets that favour a provider, or gold that favours a labeler, and train and
    pay on them, every CID consistent. A record from before records named them is not checked here
    (`check_ingest` says so)."""
    params = ingest.params
    if "validation" not in params:
        return
    declared, labeling = params["validation"], params.get("labeling") or {}
    if declared is None and validation_cid is not None:
        report.fail("validation_differs", cid, "the run measured influence against a validation set its "
                    "version never declared")
    elif declared is not None and validation_cid is None:
        report.fail("validation_differs", cid, "its version declares a validation set the run did not "
                    "measure influence against")
    elif declared is not None:
        file = SourceFile.from_json({**declared, "provider": "validation"})
        why = ""
        try:
            made = validation_examples(load_files([file], store.get, payload=Payload.of(labeling)), labeled,
                                       labeling.get("choices") or [])
        except DatasetError as exc:
            made, why = None, f": {exc}"
        stored = read_parquet(store.get(validation_cid))
        if made is None or not same_rows(stored, made):
            report.fail("validation_differs", cid, "the validation set the run measured influence against is "
                        f"not the one its version declared ({declared['name']}, {declared['cid']}){why}")
    gold = (params.get("gold") or {}).get("cid")
    if gold != gold_cid:
        report.fail("gold_differs", cid, "the consensus graded its labelers on other gold than its version "
                    f"declared ({gold or 'none'})")


def check_review(records: RunRecords, cid: str, review: Record, report: Findings) -> None:
    """The label review a model-method consensus weighed is what the reviewed run's recipe gives its
    labeled data, cross-fitted again (`pipelines.assets.review.reviewed`, with the settings the record
    names): else a publisher could weigh probabilities of its choosing into the consensus, and train and
    pay on the labels they make, every CID consistent. Bit for bit on the reviewed run's platform;
    elsewhere within the band of two cross-fits here (`_review_outside_band`)."""
    runs = [r for r in map(records.load, review.parents) if r.activity == TRAINING]
    if LabelReviewRecord.LABELED_DATASET not in review.inputs or not runs:
        report.skip("SKIP (review)", cid, "the label review record names no labeled data and run to make it "
                    "again from")
        return
    store = records.store
    labeled = read_parquet(store.get(review.inputs[LabelReviewRecord.LABELED_DATASET]))
    encoding = store.get(review.inputs[LabelReviewRecord.ENCODING])

    def made_here() -> Reviewed:
        return reviewed(records, runs[0], labeled, encoding, review_config(review.params))

    made = made_here()
    stored = read_parquet(store.get(review.outputs[LabelReviewRecord.LABEL_REVIEW]))
    if same_rows(stored, made.table):
        return
    recorded = runs[0].params.get("platform") or {}
    if not same_platform(recorded, replay_platform(recorded)):
        with nudged_steps(NUDGE_SALT):
            nudged = made_here()
        if problem := _review_outside_band(stored, made, nudged):
            report.fail("review_differs", cid, f"the label review the consensus weighed is not what the "
                        f"reviewed run's recipe gives its labeled data: {problem}")
        return
    differ = sum(a != b for a, b in zip(stored.to_pylist(), made.table.to_pylist(), strict=False)) + abs(
        stored.num_rows - made.table.num_rows)
    report.fail("review_differs", cid, f"the label review the consensus weighed is not what the reviewed "
                f"run's recipe gives its labeled data ({differ} of {made.table.num_rows} rows differ)")


REVIEW_KEYS = ("example_id", "label", "confidence", "n_votes", "run_id")  # what no model decides


def _review_outside_band(stored: pa.Table, made: Reviewed, nudged: Reviewed) -> str | None:
    """Why a stored review made on another platform is not the replay's up to rounding, or None. Its
    rows, labels and votes must be the replay's; its class probabilities within ``SPREAD_FACTOR`` times
    the largest gap between two cross-fits here, the second with every step's weights a last bit off
    (`nudge_units`, as the retrains' band); and its other columns what those probabilities give
    (`rescored`). Reviews under ATen's AVX2 and unvectorized kernels landed at most 0.89 of that gap from
    an AVX-512 one (the image recipe; the MLP, forest and text recipes at most 0.26), with the same
    flags, nudged one unit (`docs/replay.md`)."""
    keys = list(REVIEW_KEYS)
    if stored.column_names != made.table.column_names or not same_rows(stored.select(keys),
                                                                         made.table.select(keys)):
        return "its rows, labels or votes are not those of the labeled data"
    if set(pc.list_value_length(stored["class_probs"]).to_pylist()) - {len(made.classes)}:
        return f"its class probabilities are not {len(made.classes)} per example, one per class"
    ours, theirs, again = (np.asarray(t["class_probs"].to_pylist(), dtype=np.float64)
                           for t in (made.table, stored, nudged.table))
    gap = float(np.max(np.abs(theirs - ours), initial=0.0))
    allowed = SPREAD_FACTOR * float(np.max(np.abs(again - ours), initial=0.0))
    if not gap <= allowed:
        return (f"its class probabilities lie up to {gap:.3g} from the replay's, beyond the {allowed:.3g} "
                f"allowed off its platform ({SPREAD_FACTOR}x the spread of two cross-fits here)")
    if not same_rows(stored, rescored(made, theirs)):
        return "its suggestions, quality, flags or ranks are not what its own class probabilities give"
    return None


def _credited_elsewhere(stored: pa.Table, made: pa.Table, *columns: str) -> str:
    """Whose examples a stored table credits otherwise than the one made again (by ``columns``)."""

    def rows(table: pa.Table) -> dict[str, set[tuple]]:
        out: dict[str, set[tuple]] = {}
        for r in table.select(["example_id", *columns]).to_pylist():
            out.setdefault(r["example_id"], set()).add(tuple(r[c] for c in columns))
        return out

    a, b = rows(stored), rows(made)
    moved = {e for e in a.keys() | b.keys() if a.get(e) != b.get(e)}
    who = sorted({str(row[0]) for e in moved for row in a.get(e, set()) | b.get(e, set())})
    if not moved:
        return "the same rows, other values"
    return f"{len(moved)} examples differ, credited to {', '.join(who[:8])}"


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
