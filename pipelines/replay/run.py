"""The driver: retrain the run from its records (once, or twice for the band) and check every
output and the pay against it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import zip_longest

import numpy as np
import pyarrow as pa
import torch

from attribution import (
    EncodedSplit,
    LocalModel,
    PayloadSplit,
    TrainResult,
    WeightPolicy,
    contributor_weights,
    nudged_steps,
)
from pipelines.assets.labeling import Recount
from pipelines.assets.training import (
    SCORE_RTOL,
    TrainingConfig,
    encoding_json,
    left_out_value,
    revalued,
    train_labeled,
    trained_outputs,
    training_digests,
)
from pipelines.compute_platform import pinned_threads, spawned
from pipelines.lineage import pipeline_code
from pipelines.replay.band import (
    NUDGE_SALT,
    Band,
    compare_left_out_values,
    compare_score_sums,
    compare_scores,
)
from pipelines.replay.inputs import check_labels
from pipelines.replay.outputs import SERVED, check_served_elsewhere, compare_encoding, compare_outputs
from pipelines.replay.platform import on_run_kernels, replay_platform, require_same_code, same_platform
from pipelines.replay.report import ReplayReport
from pipelines.replay.tables import aligned_scores, bps, left_out_runs, left_out_values
from provenance import (
    TRAINING,
    Chain,
    CodeVersion,
    Distribution,
    Record,
    RunRecords,
    TrainingRecord,
    WeightingRecord,
    read_weights,
    share_leaves,
)
from serving import fetch_local_model
from storage import ContentStore, read_parquet


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
    here = replay_platform(recorded)
    report.same_platform = same_platform(recorded, here)
    report.run_kernels = not report.same_platform and on_run_kernels(recorded, here)
    labeled = read_parquet(store.get(training.inputs[TrainingRecord.LABELED_DATASET]))
    consensus_without = check_labels(records, report.training_cid, head, labeled, report)
    stored = read_weights(store.get(head.outputs[WeightingRecord.WEIGHTS]))
    stored_scores = read_parquet(store.get(training.outputs[TrainingRecord.EXAMPLE_ATTRIBUTION]))
    served = {name: store.get(training.outputs[name]) for name in SERVED}
    value_cid = head.inputs.get(WeightingRecord.LEFT_OUT_VALUE)
    stored_values = read_parquet(store.get(value_cid)) if value_cid else None

    inputs = _retrain_inputs(records, head, training, labeled, consensus_without)
    first, second = _retrains(
        recorded, report, inputs,
        lambda exactly: _retrain(records, head, inputs, stored, exactly=exactly),
        lambda replayed: _identical(replayed, stored_scores, stored_values, stored, served),
    )
    report.parted_at = parted_at(training.params.get("digests"), first.digests)
    _check_tolerance(training, report)
    band = Band.between(first, second, SCORE_RTOL)
    report.score_rtol, report.value_band = band.score_rtol, band.value

    compare_encoding(training, store.get(training.outputs[TrainingRecord.ENCODING]), first.encoding, report)
    whose = None
    if report.bit_exact:
        compare_outputs(training, served, first, report)
    else:
        (answers,) = records.input_tables(head, (WeightingRecord.ANNOTATIONS,))
        whose = _contributor_examples(labeled, answers)
        check_served_elsewhere(training, served, stored_scores, first, band, whose, report)
    compare_scores(stored_scores, first.scores, band.score, report)
    if whose is not None:
        compare_score_sums(stored_scores, first.scores, whose, band, report)
    if first.left_out_value is not None:
        compare_left_out_values(head, training, stored_values, first.left_out_value, band, report)
    expected = first.weights if report.bit_exact else _weights(
        records, head, stored_scores, stored, stored_values)
    _check_pay(stored, expected, first.weights, chain.distribution(run_id), report)
    report.replay_s = round(time.perf_counter() - t0, 3)
    return report


def parted_at(recorded: Mapping[str, object] | None, replayed: Mapping[str, object] | None) -> str | None:
    """The first of the run's recorded digests (`training_digests`) the replay's differ at: "inputs" (the
    encoded rows and targets), "initial weights" or "checkpoint j"; "" where all agree (the run and its
    replay parted after training, if at all); None where the record has none (a run from before they
    were recorded)."""
    if not recorded or not replayed:
        return None
    for key, what in (("inputs", "inputs"), ("initial", "initial weights")):
        if recorded.get(key) != replayed.get(key):
            return what
    pairs = zip_longest(recorded.get("checkpoints") or [], replayed.get("checkpoints") or [])
    return next((f"checkpoint {j}" for j, (ours, theirs) in enumerate(pairs) if ours != theirs), "")


def _check_tolerance(training: Record, report: ReplayReport) -> None:
    """The score tolerance recorded with the run must be the one its code records (``SCORE_RTOL``, the
    floor of the band off its platform): a looser one, written by anyone but that code, would widen the
    band for scores and for the checkpoints of the model served. The band uses the code's."""
    recorded = training.params.get("score_rtol", SCORE_RTOL)  # runs from before it was recorded: the code's
    if recorded != SCORE_RTOL:
        report.fail("tolerance_differs", report.training_cid or "",
                    f"the training record allows scores within {recorded} of the largest; the code that "
                    f"trained it records {SCORE_RTOL}, so the record was not written by it")


def _check_pay(
    stored: pa.Table, expected: pa.Table, replayed: pa.Table, dist: Distribution | None, report: ReplayReport
) -> None:
    """The stored weights against the ``expected`` ones and their root against the chain's. Bit for bit,
    ``expected`` is the replay's split. Within a band, the replay's bps and root move with its rounding,
    so the stored split must follow exactly from the stored scores and values (checked within the band)
    and the stored root be the one on chain."""
    how = "replayed bps" if report.bit_exact else "bps from the stored scores and values"
    _compare_weights(stored, expected, how, report)
    a, b = bps(stored), bps(replayed)
    report.max_bps_diff = max((abs(a.get(k, 0) - b.get(k, 0)) for k in a.keys() | b.keys()), default=0)
    report.stored_root = share_leaves(stored).root
    report.replayed_root = share_leaves(replayed).root
    report.onchain_root = dist.root if dist else None
    root = report.replayed_root if report.bit_exact else report.stored_root
    if root != report.onchain_root:
        report.fail(
            "root_differs",
            report.run_id,
            f"the {'replayed' if report.bit_exact else 'stored'} weights give root {root}, the chain holds "
            f"{report.onchain_root}",
        )


def _retrains(
    recorded: Mapping[str, object], report: ReplayReport, inputs: RetrainInputs,
    retrain: Callable[[bool], Replayed], identical: Callable[[Replayed], bool],
) -> tuple[Replayed, Retrained | None]:
    """The first retrain, at the run's thread count where this process runs the run's kernels, and a
    second where that one is not to be checked bit for bit: every weight a last bit off after every
    step (`nudged_steps`, `nudge_units`), as another platform's rounding leaves it. The same platform
    is bit for bit or fails; on the run's kernels another CPU may still round differently (a kernel's
    blocking by its caches), and then, as elsewhere, the second retrain shows how far training on this
    machine carries a last-bit difference (`Band`). Off the run's platform and kernels on a CPU the two
    run side by side (`_side_by_side`); else one after the other, the second at another thread count. A
    GPU's deterministic kernels repeat a run at any thread count: there the nudge alone moves it."""
    on_gpu = recorded.get("device", "cpu") != "cpu"
    exactly = report.same_platform or report.run_kernels
    cores = torch.get_num_threads()
    if not exactly and not on_gpu and cores > 1:
        report.bit_exact = False
        return _side_by_side(retrain, inputs, cores)
    with pinned_threads(recorded.get("threads") if exactly else None):
        first = retrain(exactly)  # its model and features are serialized where it may be bit for bit
        report.bit_exact = bool(report.same_platform and not on_gpu) or bool(exactly and identical(first))
        if report.bit_exact:
            return first, None
        return first, _band_retrain(inputs, _other_count(torch.get_num_threads()))


def _side_by_side(
    retrain: Callable[[bool], Replayed], inputs: RetrainInputs, cores: int
) -> tuple[Replayed, Retrained]:
    """The two retrains of a replay off the run's platform at once, each on its share of this machine's
    ``cores``: the band's (`_band_retrain`) in a spawned process, the first here. Where neither is
    checked bit for bit nothing ties them to a thread count. One after the other (the second at another
    count) they took 2.2x the digits demo's training, side by side 1.25x; the text demo's 2.0x side by
    side (a transformer gains more from a second thread than the MLP's left-out retrains, 1.24x here).
    Nudged at every step, the MLP's band is the nudge's alone at any thread count (its reductions are
    not split), and the recipes' barely moves with it: an AVX2 run against an AVX-512 one landed 1.06x /
    1.11x (text scores / values) and 0.21x / 0.95x (image) the spread of two one-thread retrains, 1.13x /
    2.6x and 0.21x / 0.13x that of a two- and a one-thread retrain (`bench/replay_devices.py`)."""
    with spawned(_band_retrain, inputs, cores // 2) as second:  # ended if this retrain raises
        with pinned_threads(cores - cores // 2):
            first = retrain(False)
        return first, second()


def _other_count(threads: int) -> int:
    """The second retrain's thread count: one fewer where that leaves one. One more than the cores
    oversubscribes them: on 2 cores the demo's replay at 3 threads took 237 s, at 1 thread 64 s."""
    return threads - 1 if threads > 1 else threads + 1


def _identical(replayed: Replayed, scores: pa.Table, values: pa.Table | None, weights: pa.Table,
               served: Mapping[str, bytes]) -> bool:
    """Whether a replay gave the stored model, features, example scores, left-out values and weights bit
    for bit."""
    ids, a, b = aligned_scores(scores, replayed.scores)
    return (
        len(ids) == replayed.scores.num_rows and np.array_equal(a, b)
        and all(replayed.outputs[n] == served[n] for n in SERVED)
        and left_out_values(values) == left_out_values(replayed.left_out_value)
        and left_out_runs(values) == left_out_runs(replayed.left_out_value)
        and bps(weights) == bps(replayed.weights)
    )


@dataclass(frozen=True)
class Retrained:
    """One retraining of the run: its example scores and left-out values (where pay used them), what the
    band compares two retrains by."""

    scores: pa.Table
    left_out_value: pa.Table | None


@dataclass(frozen=True)
class Replayed(Retrained):
    """The first retraining of the run: also the weights it gives, where asked its model and TRAK
    features as the training record stores them (``SERVED``: safetensors bytes; empty otherwise), its
    ``revalue``, the training outputs that given checkpoints (the stored run's) make without training
    (`revalued`, serialized as the record has them), its `training_digests` and input encoding."""

    weights: pa.Table
    outputs: Mapping[str, bytes]
    revalue: Callable[[list[dict[str, torch.Tensor]]], Mapping[str, bytes | pa.Table]]
    digests: Mapping[str, object]
    encoding: bytes


@dataclass(frozen=True)
class RetrainInputs:
    """What a retrain reads, fetched from the run's records: plain values that a spawned process can
    retrain from (`_band_retrain`)."""

    labeled: pa.Table
    config: TrainingConfig
    run_id: str
    validation: pa.Table | None
    field: str | None
    local: LocalModel | None  # an hf-local run's starting model
    left_out: bool  # whether the run's pay used left-out values (retrained here too)
    credit: pa.Table | None  # the duplicate grouping they were made with, where recorded
    consensus_without: Recount | None


def _retrain_inputs(
    records: RunRecords, head: Record, training: Record, labeled: pa.Table, consensus_without: Recount | None
) -> RetrainInputs:
    store = records.store
    validation_cid = training.inputs.get(TrainingRecord.VALIDATION)
    base_cid = training.inputs.get(TrainingRecord.BASE_MODEL)
    (credit,) = records.input_tables(head, (WeightingRecord.EXAMPLE_CREDIT,))
    return RetrainInputs(
        labeled, TrainingConfig(**training.params["config"]), str(training.params["run_id"]),
        read_parquet(store.get(validation_cid)) if validation_cid else None, training.params.get("field"),
        fetch_local_model(store, base_cid) if base_cid else None,
        WeightingRecord.LEFT_OUT_VALUE in head.inputs, credit, consensus_without,
    )


def _trained(inputs: RetrainInputs) -> tuple[EncodedSplit | PayloadSplit, TrainResult, pa.Table | None]:
    """The run trained again from ``inputs``, and its contributors' left-out values where pay used them."""
    split, result = train_labeled(inputs.labeled, inputs.config, run_id=inputs.run_id,
                                  validation=inputs.validation, field=inputs.field, local=inputs.local)
    left_out = None if not inputs.left_out else left_out_value(
        split, inputs.labeled, result, inputs.config, inputs.credit, inputs.consensus_without)
    return split, result, left_out


def _band_retrain(inputs: RetrainInputs, threads: int) -> Retrained:
    """The band's retrain: at ``threads`` threads, every weight a last bit off after every step."""
    with pinned_threads(threads), nudged_steps(NUDGE_SALT):
        _, result, left_out = _trained(inputs)
    return Retrained(result.example_attribution, left_out)


def _retrain(records: RunRecords, head: Record, inputs: RetrainInputs, stored: pa.Table, *,
             exactly: bool) -> Replayed:
    """The first retrain: its example scores, left-out values and the weights they give (to the
    addresses of the ``stored`` weights); ``exactly``, its model and features serialized as the record
    stores them (compared bit for bit); and the outputs of the stored checkpoints on demand
    (``Replayed.revalue``)."""
    split, result, left_out = _trained(inputs)
    config = inputs.config
    weights = _weights(records, head, result.example_attribution, stored, left_out)
    outputs = trained_outputs(split, result, config) if exactly else {}
    kept = {name: outputs[name] for name in SERVED if name in outputs}

    def revalue(checkpoints: list[dict[str, torch.Tensor]]) -> Mapping[str, bytes | pa.Table]:
        return trained_outputs(split, revalued(split, result, config, checkpoints), config)

    return Replayed(result.example_attribution, left_out, weights, kept, revalue,
                    training_digests(split, result, config), encoding_json(split))


def _contributor_examples(labeled: pa.Table, annotations: pa.Table) -> dict[str, set[str]]:
    """Each contributor's examples, as the sums are checked: a provider's (the labeled data names them)
    and a labeler's (those they answered), keyed as pay's failures name them ("name (role)")."""
    out: dict[str, set[str]] = {}
    for table, column, role in ((labeled, "provider", "provider"), (annotations, "annotator", "labeler")):
        for e, who in zip(table["example_id"].to_pylist(), table[column].to_pylist(), strict=True):
            out.setdefault(f"{who} ({role})", set()).add(e)
    return out


def _weights(
    records: RunRecords, head: Record, scores: pa.Table, stored: pa.Table, left_out: pa.Table | None
) -> pa.Table:
    """The weights the replayed scores (and left-out values) give, from the tables and policy the head
    record names."""
    examples, annotations, consensus, credit = records.input_tables(head, WeightingRecord.SPLIT_TABLES)
    addresses = dict(zip(stored["contributor"].to_pylist(), stored["address"].to_pylist(), strict=True))
    policy = WeightPolicy.from_params(head.params.get("policy") or {})
    return contributor_weights(scores, examples, annotations, consensus, addresses, policy, credit, left_out)


def _compare_weights(stored: pa.Table, expected: pa.Table, how: str, report: ReplayReport) -> None:
    a, b = bps(stored), bps(expected)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k, 0) != b.get(k, 0))
    if differ:
        names = ", ".join(f"{c} ({r}: {a.get((c, r), 0)} stored, {b.get((c, r), 0)} {how})"
                          for c, r in differ)
        report.fail("pay_differs", report.head_cid or "", f"contributors whose pay differs: {names}")
