"""Consensus after review: the pipeline's own assets (no Label Studio; upstream tables written through
the content-store IO manager's pointers) train, review, then decide the next consensus with the
review's stored out-of-sample probabilities.

With a method that weighs a model (`dawid_skene_model`, `crowdlab`), a version's first consensus is
Dawid-Skene; a rerun on the same annotations decides nothing anew (same labels, same CID, even after
more reviews); new annotations take the latest review, and an auditor recomputes the labels from
the stored review and answers alone.
"""

from __future__ import annotations

import dataclasses
import hashlib

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labeling import MODEL_METHODS, ModelProbs, aggregate
from pipelines.assets import labeling as labeling_assets
from pipelines.assets import review, training
from pipelines.assets.labeling import ConsensusConfig, consensus_method, recount, reviewed_probs
from pipelines.content_io import store_value
from pipelines.lineage import now
from pipelines.partitions import dataset_versions
from pipelines.replay import check_review
from pipelines.resources import DatasetCatalog, resources_for
from pipelines.settings import load_settings
from provenance import (
    CONSENSUS,
    LABEL_REVIEW,
    LABELING_EXPORT,
    SNAPSHOT,
    TRAINING,
    ConsensusRecord,
    Findings,
    LabelReviewRecord,
    RunRecords,
    TrainingRecord,
    load_record,
)
from storage import read_parquet
from tests.pipelines.conftest import annotations_table, replay_elsewhere

VERSION = "review-v1"
CLASSES = ("a", "b", "c")
LABELERS = ("l-good", "l-ok", "l-poor")
ACCURACY = (0.9, 0.75, 0.55)


def _world(n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.5, size=(len(CLASSES), 4))
    y = rng.integers(0, len(CLASSES), size=n)
    X = centers[y] + rng.normal(0, 1.0, size=(n, 4))
    ids = [hashlib.sha256(row.tobytes()).hexdigest() for row in X]
    raw = pa.table({"example_id": ids, **{f"f{j}": X[:, j] for j in range(4)},
                    "provider": ["p"] * n, "source": ["s"] * n})
    answers = []
    for i, e in enumerate(ids):
        for who, acc in zip(LABELERS, ACCURACY, strict=True):
            k = y[i] if rng.random() < acc else (y[i] + 1 + rng.integers(2)) % 3
            answers.append((e, who, CLASSES[k]))
    return raw, answers, {e: CLASSES[v] for e, v in zip(ids, y, strict=True)}


def _validation(raw: pa.Table, truth: dict, n: int = 60) -> pa.Table:
    """Trusted rows of the same classes: jittered copies of the first `n` examples with their true labels."""
    rows, rng = raw.slice(0, n), np.random.default_rng(9)
    jittered = {f"f{j}": pa.array(rows[f"f{j}"].to_numpy() + rng.normal(0, 0.3, n)) for j in range(4)}
    return pa.table({**jittered, "label": [truth[e] for e in rows["example_id"].to_pylist()]})


@pytest.fixture
def home(tmp_path, monkeypatch, request):
    """A registered version (with a declared validation set where the test's parameter says so)."""
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    for name in ("CARAVAN_STORE_DIR", "CARAVAN_CONTRIBUTORS", "CARAVAN_LEDGER", "CARAVAN_KEYSTORE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    resources = resources_for(settings)
    client = resources["store"].client()
    raw, answers, truth = _world()
    pq.write_table(raw.drop(["example_id"]), tmp_path / "data.parquet")
    validation = None
    if getattr(request, "param", False):
        validation = str(tmp_path / "validation.parquet")
        pq.write_table(_validation(raw, truth), validation)
    DatasetCatalog(root=str(settings.home / "datasets")).register(
        VERSION, str(tmp_path / "data.parquet"), store=client,
        labeling={"kind": "text", "field": "f0", "choices": list(CLASSES)}, validation=validation,
    )
    for activity in (LABELING_EXPORT, SNAPSHOT):  # the parents the consensus and training records name
        resources["lineage"].write(client, activity, VERSION, started=now(), inputs={}, outputs={})
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        instance.add_dynamic_partitions("dataset_version", [VERSION])
        yield {"resources": resources, "client": client, "instance": instance, "raw": raw,
               "answers": answers, "truth": truth}


def _store(home, asset: str, table: pa.Table) -> str:
    stored = store_value(home["client"], table)
    home["resources"]["index"].write(dg.AssetKey(asset), VERSION, {"cid": stored.cid, "kind": stored.kind})
    return stored.cid


def _run(home, *assets, method: str, **consensus):
    upstream = [dg.AssetSpec(a, partitions_def=dataset_versions) for a in ("raw_dataset", "annotations")]
    config = {
        "consensus_labels": {"config": {"method": method, **consensus}},
        "trained_model": {"config": {"hidden": [16], "epochs": 4, "trak_k": 16}},
        "label_review": {"config": {"folds": 3}},
    }
    names = {a.op.name for a in assets}
    result = dg.materialize(
        [*assets, *upstream], partition_key=VERSION, instance=home["instance"], resources=home["resources"],
        run_config={"ops": {k: v for k, v in config.items() if k in names}},
    )
    assert result.success
    return result


def _consensus(home):
    lineage = home["resources"]["lineage"]
    record = load_record(home["client"], lineage.cid_of(CONSENSUS, VERSION))
    return record, read_parquet(home["client"].get(record.outputs[ConsensusRecord.CONSENSUS]))


def _accuracy(table: pa.Table, truth: dict) -> float:
    pairs = zip(table["example_id"].to_pylist(), table["label"].to_pylist(), strict=True)
    return float(np.mean([truth[e] == lab for e, lab in pairs]))


TRAIN_AND_REVIEW = (labeling_assets.consensus_labels, labeling_assets.labeled_dataset,
                    training.trained_model, review.label_review)


@pytest.mark.parametrize("method", MODEL_METHODS)
def test_consensus_weighs_the_last_review_once_new_answers_arrive(home, method):
    _store(home, "raw_dataset", home["raw"])
    first_answers = _store(home, "annotations", annotations_table(home["answers"]))
    _run(home, *TRAIN_AND_REVIEW, method=method)
    record, first = _consensus(home)
    assert record.params["method"] == "dawid_skene" and ConsensusRecord.LABEL_REVIEW not in record.inputs
    review_record = load_record(home["client"], home["resources"]["lineage"].cid_of(LABEL_REVIEW, VERSION))
    assert review_record.params["models"] == ["recipe", "forest"]  # numeric features: a forest beside the MLP
    assert 0.0 <= review_record.params["recipe_weight"] <= 1.0
    assert review_record.params["recipe_epochs"] in (4, 8, 16)  # the run's 4 epochs times 1, 2 or 4
    assert review_record.params["trusted_rows"] == 0  # no validation set declared: nothing trusted
    assert LabelReviewRecord.VALIDATION not in review_record.inputs
    assert review_record.params["scikit-learn"]
    assert review_record.params["votes"] == "dawid_skene"  # its labels' confidence is weighed in

    # a rerun on the same answers, with a review now stored, decides nothing anew
    _run(home, labeling_assets.consensus_labels, method=method)
    again, _ = _consensus(home)
    assert again.outputs == record.outputs and again.params["method"] == "dawid_skene"

    # new answers (a review queue's): CROWDLAB with the latest review's probabilities
    lineage = home["resources"]["lineage"]
    review_record = lineage.cid_of(LABEL_REVIEW, VERSION)
    extra = [(e, "l-late", home["truth"][e]) for e in sorted(home["truth"])[:30]]
    new_answers = annotations_table([*home["answers"], *extra])
    assert _store(home, "annotations", new_answers) != first_answers
    _run(home, labeling_assets.consensus_labels, method=method)
    record, second = _consensus(home)
    used = reviewed_probs(home["client"], review_record)
    assert record.params["method"] == method and record.params["model_informed"] == home["raw"].num_rows
    assert record.inputs[ConsensusRecord.LABEL_REVIEW] == used.table_cid and review_record in record.parents
    # the auditor's recomputation: stored answers and stored review, nothing else
    stored_answers = read_parquet(home["client"].get(record.inputs[ConsensusRecord.ANNOTATIONS]))
    redo = aggregate(stored_answers, method=method, probs=used.probs).consensus
    assert redo.equals(second)
    assert _accuracy(second, home["truth"]) >= _accuracy(first, home["truth"])

    # train and review again on those labels; a rerun on the same answers keeps the review it used
    _run(home, *TRAIN_AND_REVIEW, method=method)
    assert lineage.cid_of(LABEL_REVIEW, VERSION) != review_record
    # labels that already weighed a model: the models alone score them (no model counted twice)
    assert load_record(home["client"], lineage.cid_of(LABEL_REVIEW, VERSION)).params["votes"] is None
    kept, _ = _consensus(home)
    assert kept.outputs == record.outputs and kept.inputs == record.inputs
    # the default, Dawid-Skene, weighs no review
    _run(home, labeling_assets.consensus_labels, method="dawid_skene")
    plain, _ = _consensus(home)
    assert plain.params["method"] == "dawid_skene" and ConsensusRecord.LABEL_REVIEW not in plain.inputs


def _reviewed_run(home, method: str = "crowdlab"):
    """Train and review under `method`; the records, the review's CID and record, and a call that makes
    the review again here (`review.reviewed`)."""
    client = home["client"]
    _store(home, "raw_dataset", home["raw"])
    _store(home, "annotations", annotations_table(home["answers"]))
    _run(home, *TRAIN_AND_REVIEW, method=method)
    records = RunRecords(None, client)
    cid = home["resources"]["lineage"].cid_of(LABEL_REVIEW, VERSION)
    record = records.load(cid)
    run = next(r for r in map(records.load, record.parents) if r.activity == TRAINING)
    labeled = read_parquet(client.get(record.inputs[LabelReviewRecord.LABELED_DATASET]))
    encoding = client.get(record.inputs[LabelReviewRecord.ENCODING])
    return records, cid, record, lambda: review.reviewed(records, run, labeled, encoding,
                                                         review.review_config(record.params))


def _checked(records: RunRecords, cid: str, record, table: pa.Table | None = None) -> Findings:
    """`check_review` of the review `record`, or of one storing `table` instead under consistent CIDs."""
    if table is not None:
        record = dataclasses.replace(record, outputs={
            LabelReviewRecord.LABEL_REVIEW: store_value(records.store, table).cid})
    found = Findings()
    check_review(records, cid, record, found)
    return found


def _with_probs(table: pa.Table, probs) -> pa.Table:
    return table.set_column(table.schema.get_field_index("class_probs"), "class_probs",
                            pa.array([list(map(float, p)) for p in probs], pa.list_(pa.float64())))


def test_replay_makes_the_review_again_and_fails_a_forged_one(home):
    """`pipelines.replay.check_review`: a stored review is what its run's recipe gives the run's labeled
    data, cross-fitted again bit for bit; one with other probabilities (which a model-method consensus
    would weigh), stored under consistent CIDs, is not."""
    records, cid, record, _ = _reviewed_run(home)
    honest = _checked(records, cid, record)
    assert honest.ok and not honest.skipped, honest.failures
    stored = read_parquet(records.store.get(record.outputs[LabelReviewRecord.LABEL_REVIEW]))
    probs = stored["class_probs"].to_pylist()
    probs[0] = probs[0][::-1]  # one example's probabilities turned round
    found = _checked(records, cid, record, _with_probs(stored, probs))
    assert found.names() == {"review_differs"}
    assert f"1 of {stored.num_rows} rows differ" in found.failures[0].detail


def test_off_its_platform_a_review_is_held_to_the_band_of_two_cross_fits(home, monkeypatch):
    """Off the reviewed run's platform a cross-fit's rounding cannot be told apart, so the stored class
    probabilities may differ from the replay's by up to SPREAD_FACTOR times the gap between two
    cross-fits here (the second nudged a last bit at every step), and its flags, quality and ranks must
    be what those probabilities give (`review.rescored`). A review consistent with probabilities moved
    further, or with flags its probabilities do not give, fails; on the run's own platform a
    rounding-sized change fails too."""
    from attribution import nudged_steps
    from pipelines.replay import NUDGE_SALT, SPREAD_FACTOR

    records, cid, record, make = _reviewed_run(home, method="dawid_skene_model")
    made = make()
    ours = np.asarray(made.table["class_probs"].to_pylist())
    with nudged_steps(NUDGE_SALT):
        again = np.asarray(make().table["class_probs"].to_pylist())
    spread = np.abs(again - ours).max()
    assert spread > 0  # the nudge moves the cross-fit, as another platform's rounding does
    rounded = ours + np.random.default_rng(0).uniform(-spread, spread, ours.shape)  # within the band
    rounded /= rounded.sum(1, keepdims=True)
    far = ours.copy()
    far[0] = far[0][::-1]  # one example's probabilities turned round
    unflagged = review.rescored(made, ours)
    unflagged = unflagged.set_column(unflagged.schema.get_field_index("flagged"), "flagged",
                                     pa.array([False] * unflagged.num_rows))
    assert review.rescored(made, ours).equals(made.table)  # the pure part gives the review again
    assert made.table["flagged"].to_pylist().count(True) > 0

    with monkeypatch.context() as elsewhere:
        replay_elsewhere(elsewhere)
        honest = _checked(records, cid, record)
        assert honest.ok and not honest.skipped, honest.failures
        assert _checked(records, cid, record, review.rescored(made, rounded)).ok
        found = _checked(records, cid, record, review.rescored(made, far))
        assert found.names() == {"review_differs"}
        assert f"beyond the {SPREAD_FACTOR * spread:.3g} allowed" in found.failures[0].detail
        found = _checked(records, cid, record, unflagged)
        assert found.names() == {"review_differs"}
        assert "not what its own class probabilities give" in found.failures[0].detail
        found = _checked(records, cid, record, _with_probs(made.table, ours[:, :2]))
        assert found.names() == {"review_differs"} and "not 3 per example" in found.failures[0].detail
    assert _checked(records, cid, record, review.rescored(made, rounded)).names() == {"review_differs"}


def test_a_review_stored_before_it_kept_probabilities_gives_none(home):
    client, lineage = home["client"], home["resources"]["lineage"]
    old = pa.table({"example_id": ["x"], "label": ["a"]})
    cid = lineage.write(client, LABEL_REVIEW, VERSION, started=now(), inputs={},
                        outputs={"label_review": store_value(client, old).cid}, params={"folds": 5})
    assert reviewed_probs(client, cid) is None


def test_a_model_method_runs_only_with_a_review_and_unknown_methods_are_named():
    probs = ModelProbs(("x",), CLASSES, np.full((1, 3), 1 / 3))
    reviewed = labeling_assets.ReviewedProbs(probs, "table", "record")
    assert consensus_method(ConsensusConfig(), reviewed) == "dawid_skene"
    for method in MODEL_METHODS:
        assert consensus_method(ConsensusConfig(method=method), None) == "dawid_skene"
        assert consensus_method(ConsensusConfig(method=method), reviewed) == method
    assert consensus_method(ConsensusConfig(method="majority_vote"), reviewed) == "majority_vote"
    with pytest.raises(dg.Failure, match="'vote' is not one of"):
        consensus_method(ConsensusConfig(method="vote"), None)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(dg.Failure, match="consensus smoothing must be a finite number >= 0"):
            consensus_method(ConsensusConfig(smoothing=bad), None)


@pytest.mark.parametrize("smoothing", [0.0, 2.5])
def test_the_consensus_records_its_smoothing_and_recount_refits_with_it(home, smoothing):
    """A consensus fitted with a non-default pseudo-count says so in its record, and what replay and the
    providers' left-out retrains recompute from that record is that fit, not the default's."""
    _store(home, "raw_dataset", home["raw"])
    table = annotations_table(home["answers"])
    _store(home, "annotations", table)
    _run(home, labeling_assets.consensus_labels, method="dawid_skene", smoothing=smoothing)
    record, stored = _consensus(home)
    assert record.params["smoothing"] == smoothing
    assert stored.equals(aggregate(table, smoothing=smoothing).consensus)
    assert not stored.equals(aggregate(table).consensus)  # the default's fit differs (its confidences)
    cid = home["resources"]["lineage"].cid_of(CONSENSUS, VERSION)
    assert recount(home["client"], cid)(set()).equals(stored)


@pytest.mark.parametrize("home", [True], indirect=True, ids=["validation"])
def test_a_declared_validation_set_trains_every_fold_of_the_review_and_is_never_reviewed(home):
    _store(home, "raw_dataset", home["raw"])
    _store(home, "annotations", annotations_table(home["answers"]))
    _run(home, *TRAIN_AND_REVIEW, method="dawid_skene")
    lineage = home["resources"]["lineage"]
    record = load_record(home["client"], lineage.cid_of(LABEL_REVIEW, VERSION))
    training_record = load_record(home["client"], lineage.cid_of(TRAINING, VERSION))
    assert record.inputs[LabelReviewRecord.VALIDATION] == training_record.inputs[TrainingRecord.VALIDATION]
    assert record.params["trusted_rows"] == 60 and record.params["models"] == ["recipe", "forest"]
    reviewed = read_parquet(home["client"].get(record.outputs[LabelReviewRecord.LABEL_REVIEW]))
    assert sorted(reviewed["example_id"].to_pylist()) == sorted(home["raw"]["example_id"].to_pylist())
