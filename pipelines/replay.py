"""Replay: an auditor retrains a published run and checks its example scores, weights and root.

The auditor fetches what the run's records name (the labeled data, the recipe and seed, the
tables the split was computed from, an hf-local run's starting model by the CIDs of its files),
retrains with the same code, and compares:

- the labels: the consensus the consensus record stores against the consensus recomputed from the
  answers, gold and label review it names (by the method it names; the review itself cross-fitted
  again, `check_review`: bit for bit on the reviewed run's platform, elsewhere within the band of two
  cross-fits here, as the scores below); the labeled data trained on
  against the snapshot's rows with those labels; and the examples, example credit, annotations and
  consensus the split was computed from against those the ingest, snapshot and consensus records
  name. Without this a publisher could train and pay on labels (or credit) of its choosing, every
  CID and score consistent;
- the examples and their credit against what this code makes of the source files the ingest record
  names (`check_ingest`; the pinned snapshot must hold them, `check_snapshot`), and the validation set
  and gold against those the version declared
  (`check_declared`): else examples could be moved between providers, copies credited to their copier,
  or targets picked to favour a provider, with every later record consistent;
- the input encoding (what serving encodes every paid request by: a table's columns and scale, a
  tokenizer, an image policy) against the one the replay made from the run's data and recipe;
- the trained model and its TRAK features (what serving loads, and splits each prediction's fee by)
  against those the training record names: a publisher could otherwise serve, and pay predictions by,
  a model other than the one its scores were measured on. Where the replay is bit for bit, the same
  bytes; elsewhere through the stored checkpoints, without training: the model must be the last of
  them, the features what they give here, and the scores they give within the band below;
- the example scores, the providers' left-out values and the weights recomputed from them,
  contributor by contributor, and the root of the replayed weights against the on-chain root: bit
  for bit where the run was trained on the same torch build, CPU architecture, CPU capability and
  vector flags (the platform the training record names; replay runs torch with the run's own thread
  count, whatever this machine's cores).
- On another CPU that has the run's instruction sets, a process started with the pins of the run's
  kernels (`compute_platform.run_kernels`; `caravan verify --replay` restarts itself with them) runs
  what the run ran: the first retrain is checked bit for bit, and only if it differs (another CPU's
  caches may still change a kernel's blocking) does replay fall back to the band below.
- Elsewhere, training amplifies any last-bit difference: the demo's image run replayed under ATen's
  unvectorized kernels moved scores by up to 4.5e-4 (the largest is 2e-3) and pay by up to 111 bps.
  So the run is retrained twice on this machine, side by side (each on half its cores), the second
  with every weight one last bit off after every step, as another platform's rounding leaves it
  (`attribution.nudged_steps`: a thread count alone repeats a run on a GPU's deterministic kernels,
  or a small model's, and leaves no band), and the stored scores may differ from the first replay by
  up to ``SPREAD_FACTOR`` times the largest gap between the two (at least the score tolerance recorded
  with the run), each contributor's n summed scores (a provider's examples, a labeler's answered ones)
  by ``SUM_SIGMAS`` x sqrt(n) + ``SUM_DRIFT`` x n times the two's root mean square score gap (a shift
  of all of one provider's scores, each within the per-score band, moves its sum n times), and the
  left-out values by up to ``VALUE_SIGMAS`` standard errors of their rounding noise
  (``attribution.value_noise``, from every seed's pair of retrains). Pay is arithmetic on those
  tables, the same on any machine: the stored weights must be exactly what the stored scores and
  values give (the replay's own bps move with its rounding: by up to 38 bps on the demo's image run
  from AVX2 to AVX-512 kernels), and their root the one on chain. A change smaller than this machine's
  own rounding cannot be told from rounding: replay on the recorded platform, or a CPU that runs its
  kernels, for a bit-for-bit check.

- A run trained on a GPU (`TrainingConfig.device`) is retrained on this machine's GPU: bit for bit
  where the first retrain repeats it (the same GPU, torch, CUDA and cuDNN: the image and text recipes
  did on an H200), else within the band of two retrains there. Without a GPU replay refuses
  (`replay_platform`).

Replay refuses code other than the code that trained the run: it names the commit to check out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import zip_longest

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from attribution import (
    EncodedSplit,
    LocalModel,
    PayloadSplit,
    TrainResult,
    WeightPolicy,
    checkpoints_of_features,
    contributor_weights,
    nudged_steps,
    safetensors_metadata,
    tensor_gaps,
    value_noise,
)
from pipelines.assets.labeling import Recount, label_rows, recount, reviewed_probs
from pipelines.assets.review import Reviewed, rescored, review_config, reviewed
from pipelines.assets.training import (
    SCORE_RTOL,
    TrainingConfig,
    encoding_json,
    left_out_value,
    revalued,
    train_labeled,
    trained_outputs,
    training_digests,
    value_method,
)
from pipelines.compute_platform import can_run, pinned_threads, run_kernels, spawned, training_platform
from pipelines.datasets import (
    DatasetError,
    Payload,
    SourceFile,
    load_files,
    registration_times,
    to_examples,
    validation_examples,
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
    Distribution,
    Findings,
    IngestRecord,
    LabelReviewRecord,
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
from storage import ContentStore, read_parquet, snapshot_parquet


class ReplayRefused(ValueError):
    """Replay cannot be done faithfully here; the message says what to do instead."""


@dataclass
class ReplayReport(Findings):
    """What `replay_run` found retraining a published run: its failures, the band it allowed and the
    roots compared (stored, replayed, on chain); `caravan verify --replay` prints and nests it."""

    run_id: str
    head_cid: str | None = None
    training_cid: str | None = None
    code: str | None = None
    same_platform: bool | None = None
    run_kernels: bool = False  # another CPU, running the kernels the run trained on (their pins)
    bit_exact: bool | None = None  # checked bit for bit (else within the band)
    score_rtol: float | None = None
    max_score_diff: float | None = None
    sums_used: float | None = None  # the largest contributor's score-sum gap over what the band allows it
    value_band: float | None = None  # what a stored provider value may differ by (0: bit for bit)
    max_value_diff: float | None = None  # the most a stored provider value differs from the replay's
    max_bps_diff: int | None = None  # the most a contributor's stored pay differs from the replay's
    stored_root: str | None = None
    replayed_root: str | None = None
    onchain_root: str | None = None
    replay_s: float = 0.0
    # where the first retrain parted from the run (`parted_at`): "inputs", "initial weights", "checkpoint
    # j", "" where its inputs, initial weights and every checkpoint are the run's; None where unrecorded
    parted_at: str | None = None
    # off the run's platform: the stored features' largest gap from what their checkpoints give here (of a
    # tensor's largest entry), and the largest gap of the scores those checkpoints give from the stored ones
    # with what evaluation's rounding is allowed (`CHECKPOINT_SCORE_RTOL` of their largest)
    feature_gap: float | None = None
    checkpoint_score_diff: float | None = None
    checkpoint_score_allowed: float | None = None

    def where(self) -> str:
        """Where the replay ran and what it allowed (a line of `caravan verify --replay`), and where it
        parted from the run's training, unless it repeated the run bit for bit."""
        return self._where() + ("" if self.ok and self.bit_exact else self.parting())

    def parting(self) -> str:
        """Where the first retrain parted from the run (`parted_at`), as the replay line says it."""
        if self.parted_at is None:
            return ""
        if not self.parted_at:
            return "; its training repeated the run's (inputs, initial weights and checkpoints)"
        same = self.parted_at.startswith("checkpoint")
        return (f"; its training parted from the run's at {self.parted_at}"
                + (" (its inputs and initial weights are the run's)" if same else ""))

    def _where(self) -> str:
        if self.bit_exact:
            return "same platform" if self.same_platform else "the run's CPU kernels, bit for bit"
        values = "" if self.max_value_diff is None else (
            f", left-out values within {self.value_band:.3g} ({VALUE_SIGMAS} standard errors of their "
            f"rounding noise; value diff {self.max_value_diff:.3g})")
        sums = "" if self.sums_used is None else f", score sums at {self.sums_used:.2f} of theirs"
        return (f"another platform: allowed {SPREAD_FACTOR}x the spread of two replays here, scores within "
                f"{self.score_rtol:.3g} of the largest{sums}{values}; pay follows from the stored scores and "
                f"values, {self.max_bps_diff} bps at most from the replay's; {self._served()}")

    def _served(self) -> str:
        if self.feature_gap is None:
            return "the model and features checked through their checkpoints"
        scores = "" if self.checkpoint_score_diff is None else (
            f", the scores they give within {self.checkpoint_score_diff:.3g} of the stored")
        if self.checkpoint_score_allowed is not None:
            scores += f" ({self.checkpoint_score_allowed:.3g} allowed)"
        return (f"the model the features' last checkpoint, the features within {self.feature_gap:.3g} of "
                f"what their checkpoints give here ({FEATURE_RTOL:g} allowed){scores}")


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
    consensus_without = _check_labels(records, report.training_cid, head, labeled, report)
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

    _compare_encoding(training, store.get(training.outputs[TrainingRecord.ENCODING]), first.encoding, report)
    whose = None
    if report.bit_exact:
        _compare_outputs(training, served, first, report)
    else:
        (answers,) = records.input_tables(head, (WeightingRecord.ANNOTATIONS,))
        whose = _contributor_examples(labeled, answers)
        _check_served_elsewhere(training, served, stored_scores, first, band, whose, report)
    _compare_scores(stored_scores, first.scores, band.score, report)
    if whose is not None:
        _compare_score_sums(stored_scores, first.scores, whose, band, report)
    if first.left_out_value is not None:
        _compare_left_out_values(head, training, stored_values, first.left_out_value, band, report)
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
    a, b = _bps(stored), _bps(replayed)
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
    second where that one is not to be checked bit for bit: every weight one last bit off after every
    step (`nudged_steps`), as another platform's rounding leaves it. The same platform is bit for bit
    or fails; on the run's kernels another CPU may still round differently (a kernel's blocking by its
    caches), and then, as elsewhere, the second retrain shows how far training on this machine carries a
    last-bit difference (`Band`). Off the run's platform and kernels on a CPU the two run side by side
    (`_side_by_side`); else one after the other, the second at another thread count. A GPU's
    deterministic kernels repeat a run at any thread count: there the nudge alone moves it."""
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


def replay_platform(recorded: Mapping[str, object]) -> dict[str, object]:
    """This machine's platform as the run's retrains would see it: the CPU's, or for a run trained on a
    GPU this machine's GPU, which replay retrains on. A GPU run is refused on a machine without one: on
    the CPU its retrains land further from it than this machine's own rounding spreads a replay
    (`bench/replay_devices.py`: the image recipe's left-out values 5.6x that spread, so an honest run
    could fail)."""
    device = str(recorded.get("device", "cpu"))
    if device == "cpu":
        return training_platform()
    if not torch.cuda.is_available():
        raise ReplayRefused(
            f"the run trained on {device} ({recorded.get('gpu')}, CUDA {recorded.get('cuda')}, torch "
            f"{recorded.get('torch')}): replay it on a machine where torch sees a CUDA GPU (on the same GPU "
            "and torch build the recipes' runs repeat bit for bit); this machine has none"
        )
    return training_platform(device)


NUDGE_SALT = 1  # the second retrain's last-bit nudges at every step (fixed: replay is repeatable)


def _other_count(threads: int) -> int:
    """The second retrain's thread count: one fewer where that leaves one. One more than the cores
    oversubscribes them: on 2 cores the demo's replay at 3 threads took 237 s, at 1 thread 64 s."""
    return threads - 1 if threads > 1 else threads + 1


def same_platform(recorded: Mapping[str, object], here: Mapping[str, object]) -> bool:
    """Whether every property the run recorded of its platform holds here (a record from before a
    property was recorded is compared on those it has). The thread count is not compared: replay sets
    the recorded one (`pinned_threads`). A record with vector flags but no kernel pins is from before
    pins were recorded, when the pipeline set none: it ran unpinned."""
    if "cpu_flags" in recorded and "kernel_pins" not in recorded:
        recorded = {**recorded, "kernel_pins": {}}
    return bool(recorded) and all(here.get(k) == v for k, v in recorded.items() if k != "threads")


_BUILD = ("torch", "machine", "device")  # what no kernel pin can stand in for


def on_run_kernels(recorded: Mapping[str, object], here: Mapping[str, object]) -> bool:
    """Whether this process, on another CPU, runs the kernels the run trained on: the same torch build,
    machine and device, and started with the pins that select the run's kernels (`run_kernels`)."""
    kernels = run_kernels(recorded)
    same = all(here.get(k) == recorded.get(k) for k in (*_BUILD, "cpu_capability"))
    return kernels is not None and same and here.get("kernel_pins") == kernels


def replay_kernels(chain: Chain, store: ContentStore, run_id: str) -> dict[str, str] | None:
    """The kernel pins to start a replay of ``run_id`` with, so that this CPU runs the run's own
    kernels; None where this process already does (or is the run's platform), or where this CPU lacks
    their instruction sets or the run's torch build and machine. Pins act only in a process started
    with them (each library reads its pin once, when first used): `caravan verify --replay` restarts
    itself with them."""
    records = RunRecords(chain, store)
    _, training = records.parent(records.head(run_id), TRAINING)
    recorded = training.params.get("platform") or {}
    here = training_platform()
    kernels = run_kernels(recorded)
    if kernels is None or same_platform(recorded, here) or here.get("kernel_pins") == kernels:
        return None
    same = all(here.get(k) == recorded.get(k) for k in _BUILD)
    return kernels if same and can_run(kernels, str(here.get("cpu_flags", ""))) else None


def _identical(replayed: Replayed, scores: pa.Table, values: pa.Table | None, weights: pa.Table,
               served: Mapping[str, bytes]) -> bool:
    """Whether a replay gave the stored model, features, example scores, left-out values and weights bit
    for bit."""
    ids, a, b = _aligned_scores(scores, replayed.scores)
    return (
        len(ids) == replayed.scores.num_rows and np.array_equal(a, b)
        and all(replayed.outputs[n] == served[n] for n in SERVED)
        and _values(values) == _values(replayed.left_out_value)
        and _value_runs(values) == _value_runs(replayed.left_out_value)
        and _bps(weights) == _bps(replayed.weights)
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
    """The band's retrain: at ``threads`` threads, every weight one last bit off after every step."""
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


# The training outputs serving loads: the model, and the features each prediction's fee is split by.
SERVED = (TrainingRecord.MODEL, TrainingRecord.FEATURES)


def _compare_outputs(
    training: Record, stored: Mapping[str, bytes], first: Replayed, report: ReplayReport
) -> None:
    """The stored model and features against the replay's, where the replay is bit for bit: the same
    bytes."""
    for name in SERVED:
        _compare_file(training, name, stored[name], first.outputs[name], "the replay's", report)


# A numeric encoding's scale (means and spreads of the training columns) may round in its last bits on
# another CPU's vector kernels; any other field (columns, classes, a tokenizer, an image policy) is exact.
ENCODING_RTOL = 1e-9


def _compare_encoding(training: Record, stored: bytes, replayed: bytes | None, report: ReplayReport) -> None:
    """The stored input encoding (what serving encodes every paid request by) against the one the replay
    made from the run's data and recipe: the same JSON, numbers within ``ENCODING_RTOL`` of theirs. A
    publisher could otherwise serve an honest model behind another tokenizer or scale."""
    if replayed is None or stored == replayed:
        return
    try:
        where = _json_differs(json.loads(stored), json.loads(replayed), "")
    except ValueError:
        where = " (not JSON)"
    if where is None:
        return
    report.fail("encoding_differs", report.training_cid or "",
                f"the stored input encoding ({training.outputs[TrainingRecord.ENCODING]}) is not the one the "
                f"run's data and recipe give: it differs at {where or 'its top level'}")


def _json_differs(a: object, b: object, path: str) -> str | None:
    """The path of the first place two JSON documents differ (numbers within ``ENCODING_RTOL``); None
    where they agree."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path or '.'} (keys {sorted(a.keys() ^ b.keys())})"
        pairs = [(a[k], b[k], f"{path}.{k}") for k in sorted(a)]
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path} (length {len(a)}, not {len(b)})"
        pairs = [(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))]
    else:
        return None if _same_leaf(a, b) else path or "."
    for x, y, where in pairs:
        if (found := _json_differs(x, y, where)) is not None:
            return found
    return None


def _same_leaf(a: object, b: object) -> bool:
    """Two JSON leaves: numbers (not booleans) within ``ENCODING_RTOL`` of the larger, anything else equal."""
    numbers = [isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)]
    if all(numbers):
        return abs(a - b) <= ENCODING_RTOL * max(abs(a), abs(b))  # type: ignore[operator]
    return a == b


# Off the run's platform, the stored features may differ from those their checkpoints give here by this
# fraction of each tensor's largest entry. Evaluation alone rounds differently there: the text recipe's
# features and kernel inverses moved by at most 2.3e-5 of theirs on AVX2 kernels, the image recipe's by
# 7.9e-4 (`bench/replay_devices.py --against`, `saved_evaluated_here`: a checkpoint where a ReLU or
# pooling tie fell the other way for a few rows); training moved the text recipe's by up to 1.8e-3, so
# only the checkpoints are held to a band.
FEATURE_RTOL = 1e-2

# Off the run's platform, the stored example scores may differ from those the stored checkpoints give here
# by this fraction of their largest score, each contributor's sum by this fraction times the root of its
# number of scores. Evaluation alone moved the image recipe's scores by at most 4.6e-3 of the largest
# (one score, on AVX2 kernels; 4.4e-4 unvectorized), a provider's sum (of 3, 5 or 20 random providers) by
# at most 7.9e-4 times that root, the text recipe's by 3.8e-6 and 3.1e-6 (`bench/replay_devices.py
# --against`, 600 and 800 rows). The replay's band is far wider (0.64 of the largest score on the digits
# demo): the stored scores are held to what the model gives, and only the checkpoints to the band.
CHECKPOINT_SCORE_RTOL = 5e-2


def _check_served_elsewhere(
    training: Record, stored: Mapping[str, bytes], stored_scores: pa.Table, first: Replayed, band: Band,
    contributors: Mapping[str, set[str]], report: ReplayReport,
) -> None:
    """Off the run's platform, where training's rounding keeps the stored model and features from being
    compared to the replay's (the text recipe's weights moved 6.4x the gap between two replays), they are
    checked through the scores they made: the stored model must be the last checkpoint the stored
    features hold, bit for bit; the features what those checkpoints give here (``FEATURE_RTOL``: only
    evaluation rounds differently); and, where pay reads TRAK value, the scores those checkpoints give
    within the band the stored scores are held to, of the replay's, score by score and each
    contributor's sum. A model or features other than the ones the run trained fail one of the three
    (``model_differs``), and only then are the stored scores held to the scores those checkpoints give
    (``_compare_scores_to_checkpoints``)."""
    cid = training.outputs[TrainingRecord.FEATURES]
    checkpoints = checkpoints_of_features(stored[TrainingRecord.FEATURES])
    reason = ""
    try:
        outputs = first.revalue(checkpoints) if checkpoints else None
    except (RuntimeError, ValueError, KeyError) as exc:  # load_state_dict: other names or shapes
        outputs, reason = None, f" ({str(exc).splitlines()[0]})"
    if outputs is None:
        report.fail("model_differs", report.training_cid or "", f"the stored features ({cid}) hold no "
                    f"checkpoints of the run's model to check the model and scores by{reason}")
        return
    found = len(report.failures)
    _compare_file(training, TrainingRecord.MODEL, stored[TrainingRecord.MODEL], outputs[TrainingRecord.MODEL],
                  "the last checkpoint of the stored features", report)
    report.feature_gap = _compare_file(
        training, TrainingRecord.FEATURES, stored[TrainingRecord.FEATURES], outputs[TrainingRecord.FEATURES],
        "what their checkpoints give here", report, FEATURE_RTOL)
    if len(report.failures) > found or value_method(TrainingConfig(**training.params["config"])) != "trak":
        return  # the served files are not their checkpoints (said), or in-run scores no checkpoint gives
    given = outputs[TrainingRecord.EXAMPLE_ATTRIBUTION]
    report.checkpoint_score_diff = _largest_gap(stored_scores, given)
    if apart := _apart(first.scores, given, contributors, band):
        report.fail(
            "model_differs", report.training_cid or "",
            f"the stored features' checkpoints ({cid}) give example scores beyond this machine's rounding "
            f"band of the replay's ({apart}): the model and features served are not the ones the run trained",
        )
        return  # the stored scores are then not theirs either
    _compare_scores_to_checkpoints(stored_scores, given, contributors, report)


def _compare_scores_to_checkpoints(
    stored: pa.Table, given: pa.Table, contributors: Mapping[str, set[str]], report: ReplayReport
) -> None:
    """The stored example scores against those the stored checkpoints give here, within evaluation's
    rounding (``CHECKPOINT_SCORE_RTOL``) score by score and each contributor's sum: scores a publisher
    shifted within the replay's wide band, beside an honest model, are not what that model gives."""
    theirs = given["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    allowed = CHECKPOINT_SCORE_RTOL * float(np.max(np.abs(theirs), initial=0.0))
    report.checkpoint_score_allowed = allowed
    if apart := _apart(stored, given, contributors, Band(score=allowed, sum_floor=allowed)):
        report.fail(
            "scores_not_the_models", report.training_cid or "",
            f"the stored example scores are not what the stored features' checkpoints give here ({apart}; "
            f"evaluation rounds within {CHECKPOINT_SCORE_RTOL:g} of the largest score on other kernels)",
        )


def _apart(scores: pa.Table, other: pa.Table, contributors: Mapping[str, set[str]], band: Band) -> str:
    """How ``other``'s scores lie beyond ``band`` of ``scores``: the largest gap, where a score is
    beyond it, else the contributors whose sums are (``_sums_beyond``); "" where they lie within it."""
    gap = _largest_gap(scores, other)
    if gap > band.score:
        return f"up to {gap:.3g} a score, allowed {band.score:.3g}"
    return "; ".join(_sums_beyond(scores, other, contributors, band)[0][:5])


def _largest_gap(scores: pa.Table, other: pa.Table) -> float:
    """The largest gap between two score tables, example by example (infinite where ``other`` lacks one)."""
    _, a, b = _aligned_scores(scores, other)
    return float(np.max(np.abs(a - b), initial=0.0)) if not np.isnan(b).any() else float("inf")


def _compare_file(
    training: Record, name: str, stored: bytes, theirs: bytes, whose: str, report: ReplayReport,
    rtol: float = 0.0,
) -> float | None:
    """A stored output against ``theirs``: the same bytes, or with ``rtol`` the same names, shapes and
    metadata and every tensor within ``rtol`` of its largest entry; else one ``model_differs`` naming
    the stored CID and the tensors that differ. The largest gap (of a tensor's largest entry where
    ``rtol``), None where the files hold other tensors."""
    if stored == theirs:
        return 0.0
    gaps = tensor_gaps(stored, theirs, relative=rtol > 0)
    largest = max(gaps.values(), default=0.0) if gaps is not None else None
    what = f"the stored {name.replace('_', ' ')} ({training.outputs[name]}) is not {whose}"
    if gaps is None:
        detail = f"{what}: it holds other tensors"
    else:
        over = sorted((k for k in gaps if gaps[k] > rtol), key=lambda k: -gaps[k])
        if not over and safetensors_metadata(stored) == safetensors_metadata(theirs):
            return largest
        scale = f" of its largest entry, beyond {rtol:g}" if rtol else ""
        detail = (f"{what}: {len(over)} of {len(gaps)} tensors differ (largest {gaps[over[0]]:.3g}{scale} at "
                  f"{over[0]})" if over else f"{what}: its metadata differs")
    report.fail("model_differs", report.training_cid or "", detail)
    return largest


# Another platform's rounding moves a retrained run about as far as this machine's own rounding does
# after a last-bit nudge (training amplifies any last-bit difference alike), so the stored run may
# differ from the replay by up to this many times the spread between two replays here.
SPREAD_FACTOR = 3
# A provider's left-out value is a mean over seeds, so few providers give few spreads of it: the band of
# values is instead this many standard errors of a mean's rounding noise, estimated from every seed's
# retrain pair (bench/replay_devices.py). On the image recipe (3 providers, 6 seeds), 30 honest nudged
# runs landed at most 3.2 of them from the first replay, and runs on other CPU kernels 1.4; three times
# the spread of the means put the same honest runs up to 4.3x the factor's band, which would fail them.
VALUE_SIGMAS = 5
# Pay sums a contributor's example scores (a provider's examples, a labeler's answered ones), and a shift
# of every one of them, each within the per-score band, moves the sum as many times. Rounding moves a sum
# of n scores by about sqrt(n) times their root mean square gap where the gaps are independent, and by n
# times their mean where they drift together: a sum may differ from the replay's by SUM_SIGMAS x sqrt(n)
# + SUM_DRIFT x n times the root mean square of two replays' score gaps here. Runs of the image and text
# recipes on ATen's other kernels and thread counts landed at most 1.4 sqrt(n) units from an AVX-512 run
# (200 scores a provider); their gaps' mean was at most 0.13 of their root mean square (a provider's, 0.2).
SUM_SIGMAS = 5
SUM_DRIFT = 0.5


@dataclass(frozen=True)
class Band:
    """What the stored run may differ from the replay by: nothing on the same platform; elsewhere the
    recorded score tolerance (of the largest score or value), or where wider: per score
    ``SPREAD_FACTOR`` times the spread of two replays here, per left-out value (and its standard error
    and copies' value) ``VALUE_SIGMAS`` standard errors of its rounding noise (``value_noise``), per
    seed's value ``VALUE_SIGMAS`` times that noise in one retrain, and per contributor's summed scores
    ``SUM_SIGMAS`` x sqrt(n) + ``SUM_DRIFT`` x n times the two replays' root mean square score gap."""

    score: float = 0.0
    value: float = 0.0
    run_value: float = 0.0
    score_rtol: float = 0.0
    score_noise: float = 0.0  # the root mean square score gap of two replays here
    sum_floor: float = 0.0  # the recorded tolerance of a summed score, per root of the scores summed

    def score_sum(self, examples: int) -> float:
        """What a provider's ``examples`` scores may differ by in sum."""
        root = float(np.sqrt(examples))
        return max(self.sum_floor * root, self.score_noise * (SUM_SIGMAS * root + SUM_DRIFT * examples))

    @classmethod
    def between(cls, first: Retrained, second: Retrained | None, rtol: float) -> Band:
        """The band from two retrains here with the run's recorded score tolerance ``rtol``; no second
        retrain (a bit-for-bit replay) allows nothing."""
        if second is None:
            return cls()
        _, a, b = _aligned_scores(first.scores, second.scores)
        top = float(np.max(np.abs(a))) if a.size else 0.0
        score = max(rtol * top, SPREAD_FACTOR * float(np.max(np.abs(a - b), initial=0.0)))
        noise = float(np.sqrt(np.mean((a - b) ** 2))) if a.size else 0.0
        values = first.left_out_value, second.left_out_value
        spread, runs = value_noise(*values) if None not in values else (0.0, 1)
        floor = rtol * max((abs(x) for v in _values(first.left_out_value).values() for x in v), default=0.0)
        return cls(score=score, value=max(floor, VALUE_SIGMAS * spread / np.sqrt(runs)),
                   run_value=max(floor, VALUE_SIGMAS * spread), score_rtol=score / top if top else rtol,
                   score_noise=noise, sum_floor=rtol * top)


def _aligned_scores(first: pa.Table, second: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``first``'s example ids and both tables' scores in that order (NaN where ``second`` lacks one)."""
    got = dict(zip(second["example_id"].to_pylist(), second["score"].to_pylist(), strict=True))
    ids = first["example_id"].to_pylist()
    return (ids, first["score"].to_numpy(zero_copy_only=False).astype(np.float64),
            np.asarray([got.get(e, np.nan) for e in ids], dtype=np.float64))


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
    if not _same_rows(expected, labeled):
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
    if not _same_rows(stored, examples):
        report.fail("ingest_differs", cid, "its examples are not what its source files make: "
                    + _credited_elsewhere(stored, examples, "provider"))
    credit_cid = ingest.outputs.get(IngestRecord.EXAMPLE_CREDIT)
    credit = read_parquet(store.get(credit_cid)) if credit_cid else None
    if credit is None or not _same_rows(credit, made.grouping.credit):
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
        if made is None or not _same_rows(stored, made):
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
    if _same_rows(stored, made.table):
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
    the largest gap between two cross-fits here, the second with every step's weights one last bit off
    (as the retrains' band); and its other columns what those probabilities give (`rescored`). Reviews
    under ATen's AVX2 and unvectorized kernels landed at most 0.89 of that gap from an AVX-512 one (the
    image recipe; the MLP, forest and text recipes at most 0.26), with the same flags (`docs/replay.md`)."""
    keys = list(REVIEW_KEYS)
    if stored.column_names != made.table.column_names or not _same_rows(stored.select(keys),
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
    if not _same_rows(stored, rescored(made, theirs)):
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


def _compare_scores(stored: pa.Table, replayed: pa.Table, allowed: float, report: ReplayReport) -> None:
    if sorted(stored["example_id"].to_pylist()) != sorted(replayed["example_id"].to_pylist()):
        report.fail("examples_differ", report.training_cid or "", "the stored scores name other examples")
        return
    ids, a, b = _aligned_scores(stored, replayed)
    diff = np.abs(a - b)
    report.max_score_diff = float(diff.max()) if diff.size else 0.0
    if report.max_score_diff > allowed:
        worst = ids[int(diff.argmax())]
        report.fail(
            "scores_differ",
            report.training_cid or "",
            f"{int((diff > allowed).sum())} of {len(ids)} stored example scores differ from the replay "
            f"(largest {report.max_score_diff:.3g} at example {worst[:16]}, allowed {allowed:.3g})"
            + _band(report),
        )


def _contributor_examples(labeled: pa.Table, annotations: pa.Table) -> dict[str, set[str]]:
    """Each contributor's examples, as the sums are checked: a provider's (the labeled data names them)
    and a labeler's (those they answered), keyed as pay's failures name them ("name (role)")."""
    out: dict[str, set[str]] = {}
    for table, column, role in ((labeled, "provider", "provider"), (annotations, "annotator", "labeler")):
        for e, who in zip(table["example_id"].to_pylist(), table[column].to_pylist(), strict=True):
            out.setdefault(f"{who} ({role})", set()).add(e)
    return out


def _compare_score_sums(
    stored: pa.Table, replayed: pa.Table, contributors: Mapping[str, set[str]], band: Band,
    report: ReplayReport,
) -> None:
    """Each contributor's summed example scores (a provider's examples, a labeler's answered ones)
    against the replay's, within the band of a sum of that many scores (``SUM_SIGMAS``, ``SUM_DRIFT``):
    on a recipe that carries rounding far, the per-score band is wide (the demo's CNN: 0.66 of the
    largest score), and a shift of every score of one provider within it would pass."""
    differ, report.sums_used = _sums_beyond(stored, replayed, contributors, band)
    if differ:
        report.fail("score_sums_differ", report.training_cid or "",
                    f"the stored example scores of {len(differ)} contributor(s) sum otherwise than the "
                    f"replay's ({'; '.join(differ[:5])})" + _band(report))


def _sums_beyond(
    stored: pa.Table, other: pa.Table, contributors: Mapping[str, set[str]], band: Band
) -> tuple[list[str], float | None]:
    """The contributors whose summed scores in ``other`` are beyond the band of the stored ones' sums
    (said as a line each), and the largest gap over what the band allows; none (and None) where
    ``other`` scores other examples (`examples_differ` says so)."""
    ids, a, b = _aligned_scores(stored, other)
    if np.isnan(b).any():
        return [], None
    index = {e: i for i, e in enumerate(ids)}
    differ, used = [], 0.0
    for who in sorted(contributors):
        rows = np.sort(np.fromiter((index[e] for e in contributors[who] if e in index), dtype=np.int64))
        if not rows.size:
            continue
        gap, allowed = abs(float(a[rows].sum() - b[rows].sum())), band.score_sum(rows.size)
        used = max(used, gap / allowed if allowed else np.inf if gap else 0.0)
        if gap > allowed:
            differ.append(f"{who}: {rows.size} scores {gap:.3g} apart in sum, allowed {allowed:.3g}")
    return differ, used


def _compare_left_out_values(
    head: Record, training: Record, stored: pa.Table | None, again: pa.Table, band: Band,
    report: ReplayReport,
) -> None:
    """The contributors' left-out values (and each seed's) retrained again against the stored ones (as
    scores are: bit for bit on the same platform, else within the band)."""
    if head.inputs.get(WeightingRecord.LEFT_OUT_VALUE) != training.outputs.get(TrainingRecord.LEFT_OUT_VALUE):
        report.fail("pay_inputs_differ", report.head_cid or "",
                    "the split was computed from other left-out values than the training record names")
    a, b = _values(stored), _values(again)
    ra, rb = _value_runs(stored), _value_runs(again)
    report.max_value_diff = max((abs(a[p][0] - b[p][0]) for p in a.keys() & b.keys()), default=0.0)

    def apart(x: tuple[float, ...], y: tuple[float, ...], allowed: float) -> bool:
        return len(x) != len(y) or any(abs(u - v) > allowed for u, v in zip(x, y, strict=True))

    def off(p: str) -> bool:
        missing = p not in a or p not in b
        return missing or apart(a[p], b[p], band.value) or apart(ra[p], rb[p], band.run_value)

    differ = sorted(filter(off, a.keys() | b.keys()))
    if differ:
        report.fail(
            "left_out_values_differ", report.training_cid or "",
            f"stored left-out values of {', '.join(differ)} differ from the replay "
            f"({', '.join(f'{p}: {a.get(p)} stored, {b.get(p)} replayed' for p in differ[:5])})"
            + _band(report),
        )


def _band(report: ReplayReport) -> str:
    """What a difference beyond the band says, where the replay was not bit for bit: rounding on another
    platform has carried an honest run further than this machine's two retrains spread (`docs/replay.md`)."""
    if report.bit_exact:
        return ""
    return ("; beyond this machine's rounding band, which another platform's rounding has exceeded for an "
            "honest run: replay on the run's platform or CPU kernels to be sure")


def _values(table: pa.Table | None) -> dict[str, tuple[float, ...]]:
    """"contributor (role)" -> (value, value_se, copies_value): the first two move pay, the last says how
    much of a provider's value its copies were (an auditor reads it)."""
    if table is None:
        return {}
    columns = [table[c].to_pylist() for c in ("value", "value_se", "copies_value")]
    return dict(zip(_who(table), zip(*columns, strict=True), strict=True))


def _value_runs(table: pa.Table | None) -> dict[str, tuple[float, ...]]:
    """"contributor (role)" -> its value at each seed (``value_runs``, whose mean is its value)."""
    if table is None:
        return {}
    return dict(zip(_who(table), map(tuple, table["value_runs"].to_pylist()), strict=True))


def _who(table: pa.Table) -> list[str]:
    """Each left-out row's contributor and role: one name may provide and label."""
    names, roles = table["contributor"].to_pylist(), table["role"].to_pylist()
    return [f"{c} ({r})" for c, r in zip(names, roles, strict=True)]


def _weights(
    records: RunRecords, head: Record, scores: pa.Table, stored: pa.Table, left_out: pa.Table | None
) -> pa.Table:
    """The weights the replayed scores (and left-out values) give, from the tables and policy the head
    record names."""
    examples, annotations, consensus, credit = records.input_tables(head, WeightingRecord.SPLIT_TABLES)
    addresses = dict(zip(stored["contributor"].to_pylist(), stored["address"].to_pylist(), strict=True))
    policy = WeightPolicy.from_params(head.params.get("policy") or {})
    return contributor_weights(scores, examples, annotations, consensus, addresses, policy, credit, left_out)


def _bps(table: pa.Table) -> dict[tuple[str, str], int]:
    rows = table.select(["contributor", "role", "weight_bps"]).to_pylist()
    return {(r["contributor"], r["role"]): r["weight_bps"] for r in rows}


def _compare_weights(stored: pa.Table, expected: pa.Table, how: str, report: ReplayReport) -> None:
    a, b = _bps(stored), _bps(expected)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k, 0) != b.get(k, 0))
    if differ:
        names = ", ".join(f"{c} ({r}: {a.get((c, r), 0)} stored, {b.get((c, r), 0)} {how})"
                          for c, r in differ)
        report.fail("pay_differs", report.head_cid or "", f"contributors whose pay differs: {names}")


def _same_rows(a: pa.Table, b: pa.Table) -> bool:
    """``a`` has ``b``'s columns and (cast to ``b``'s types) equals it, a missing number (NaN) equal to
    itself: Arrow holds NaN != NaN, so a table with a gap would never equal its own replay."""
    return a.column_names == b.column_names and _nan_as_null(a.cast(b.schema)).equals(_nan_as_null(b))


def _nan_as_null(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if pa.types.is_floating(field.type):
            col = table.column(i)
            table = table.set_column(i, field, pc.if_else(pc.is_nan(col), pa.scalar(None, field.type), col))
    return table
