"""Replay: an auditor retrains a published run from its records and checks scores, pay and root.

The run is made by the pipeline's own training and royalty assets (upstream tables written through
the content-store IO manager's pointers, no Label Studio needed) and published on a real anvil.
Tampered runs are published with consistent CIDs and roots, so `verify_run` passes them: only the
replay can catch them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load, save

from attribution import (
    WeightPolicy,
    checkpoints_of_features,
    contributor_weights,
    safetensors_metadata,
    tensors_digest,
    value_noise,
)
from labeling import DS_SMOOTHING, ModelProbs
from pipelines.assets import royalties, training
from pipelines.assets.labeling import Recount, label_rows, recount
from pipelines.assets.training import (
    TrainingConfig,
    left_out_value,
    revalued,
    train_labeled,
    trained_outputs,
)
from pipelines.compute_platform import cpu_vector_flags, run_kernels, training_platform
from pipelines.content_io import store_value
from pipelines.demo import write_contributors
from pipelines.partitions import dataset_versions
from pipelines.replay import (
    CHECKPOINT_SCORE_RTOL,
    FEATURE_RTOL,
    NUDGE_SALT,
    SPREAD_FACTOR,
    SUM_DRIFT,
    SUM_SIGMAS,
    VALUE_SIGMAS,
    Band,
    ReplayRefused,
    Retrained,
    replay_platform,
    replay_run,
    same_platform,
)
from pipelines.resources import DatasetCatalog
from provenance import (
    CONSENSUS,
    LABEL_REVIEW,
    SNAPSHOT,
    TRAINING,
    WEIGHTING,
    CodeVersion,
    ConsensusRecord,
    LabelReviewRecord,
    Record,
    RunRecords,
    SnapshotRecord,
    TrainingRecord,
    WeightingRecord,
    publish_run,
    put_record,
    read_weights,
    store_weights,
    verify_run,
)
from schemas import CREDIT_SCHEMA
from storage import read_parquet
from tests.pipelines.conftest import (
    annotations_table,
    consistent_labels,
    replay_elsewhere,
    stored_upstream,
)
from tests.services.anvil import AnvilService

VERSION = "replay-v1"
CLASSES = ("a", "b", "c")
PROVIDERS = ("p-big", "p-small", "p-noisy")
LABELERS = ("l-good", "l-ok", "l-bad")
CODE = CodeVersion("caravan", "0.1.0", "ab" * 20, False)  # the clean checkout this test stands for
UNSOURCED = "SKIP (ingest)"  # `stored_upstream` writes an ingest record without source files


def _tables(n: int = 150, seed: int = 0, review: tuple[str, ModelProbs] | None = None) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, size=(len(CLASSES), 4))
    y = rng.integers(0, len(CLASSES), size=n)
    X = centers[y] + rng.normal(0, 1.0, size=(n, 4))
    ids = [hashlib.sha256(row.tobytes()).hexdigest() for row in X]
    provider = [PROVIDERS[0] if i % 3 else PROVIDERS[1 + i % 2] for i in range(n)]
    examples = pa.table(
        {"example_id": ids, **{f"f{j}": X[:, j] for j in range(4)}, "provider": provider, "source": ["s"] * n}
    )
    rows = [
        (e, who, CLASSES[(y[i] + (k == 2 and i % 4 == 0)) % 3])
        for i, e in enumerate(ids)
        for k, who in enumerate(LABELERS)
    ]
    return consistent_labels(examples, annotations_table(rows), review)


def _review() -> tuple[str, ModelProbs]:
    """A reviewed model's probabilities for `dawid_skene_model`: sure of the Dawid-Skene label, but
    wrong on every seventh example."""
    consensus = _tables()["consensus_labels"]
    probs = np.full((consensus.num_rows, len(CLASSES)), 0.1)
    for i, label in enumerate(consensus["label"].to_pylist()):
        probs[i, (CLASSES.index(label) + (i % 7 == 0)) % len(CLASSES)] = 0.8
    return "dawid_skene_model", ModelProbs(tuple(consensus["example_id"].to_pylist()), CLASSES, probs)


def _credit_to(owner: str, payee: str) -> pa.Table:
    """An `example_credit` that pays `payee`'s examples to `owner` (as if they were its copies)."""
    raw = _tables()["raw_dataset"]
    paid = [owner if p == payee else p for p in raw["provider"].to_pylist()]
    return pa.table({"example_id": raw["example_id"], "provider": paid, "share": [1.0] * raw.num_rows,
                     "representative": raw["example_id"]}, schema=CREDIT_SCHEMA).sort_by("example_id")


def _publish(
    tmp_path_factory, anvil: AnvilService, *, validation: bool, credit: bool = False, model: bool = False,
    train: dict | None = None,
):
    """A run trained and weighted by the pipeline's assets and published on anvil, its labelers paid by
    their left-out values (`left_out_labelers`, the opt-in policy; the default's path is the same less
    the labeler rows, as a run without answers to recount has it); with
    `validation`, its dataset version declares a trusted validation set; with `credit`, its ingest
    record names an `example_credit` that pays p-small's examples to p-big (as if they were copies);
    `train` overrides the training config."""
    home = tmp_path_factory.mktemp("caravan")
    table = _credit_to("p-big", "p-small") if credit else None
    review = _review() if model else None
    prepared = stored_upstream(home, anvil.rpc_url, anvil.dev_keys[3], CODE, VERSION, _tables(review=review),
                               credit=table, review=review)
    with prepared as (settings, resources):
        client = resources["store"].client()
        write_contributors(settings.contributors_file, [*PROVIDERS, *LABELERS])
        if validation:
            _register_with_validation(home, client)
        (home / "dagster").mkdir()
        upstream = [dg.AssetSpec(a, partitions_def=dataset_versions) for a in _tables()]
        with dg.DagsterInstance.local_temp(str(home / "dagster")) as instance:
            instance.add_dynamic_partitions("dataset_version", [VERSION])
            result = dg.materialize(
                [
                    training.trained_model,
                    royalties.contributor_weights,
                    royalties.provenance_record,
                    royalties.royalty_root,
                    *upstream,
                ],
                partition_key=VERSION,
                instance=instance,
                resources=resources,
                run_config={
                    "ops": {
                        "trained_model": {"config": {"hidden": [16], "epochs": 3, "trak_k": 32,
                                                     "left_out_labelers": True, **(train or {})}},
                        "contributor_weights": {"config": {"negative": "net", "labelers": "left_out"}},
                    }
                },
            )
        assert result.success
        chain = resources["chain"].client()
        yield chain, client, result.output_for_node("royalty_root")["run_id"]


@pytest.fixture(scope="module")
def published(tmp_path_factory, anvil: AnvilService):
    yield from _publish(tmp_path_factory, anvil, validation=False)


@pytest.fixture(scope="module")
def published_with_credit(tmp_path_factory, anvil: AnvilService):
    yield from _publish(tmp_path_factory, anvil, validation=False, credit=True)


@pytest.fixture(scope="module")
def published_with_validation(tmp_path_factory, anvil: AnvilService):
    yield from _publish(tmp_path_factory, anvil, validation=True)


@pytest.fixture(scope="module")
def published_with_model(tmp_path_factory, anvil: AnvilService):
    yield from _publish(tmp_path_factory, anvil, validation=False, model=True)


def _validation_rows(n: int = 60) -> pa.Table:
    """Held-out rows of the same classes (another draw: disjoint from the training rows)."""
    rows = _tables(n=n, seed=0)["labeled_dataset"]  # the same centers ...
    rng = np.random.default_rng(99)
    noise = {f"f{j}": pa.array(rows[f"f{j}"].to_numpy() + rng.normal(0, 0.5, n)) for j in range(4)}
    return pa.table({**noise, "label": rows["label"]})


def _register_with_validation(home, store) -> None:
    raw = _tables()["raw_dataset"]
    pq.write_table(raw.drop(["example_id"]), home / "data.parquet")
    pq.write_table(_validation_rows(), home / "validation.parquet")
    DatasetCatalog(root=str(home / "datasets")).register(
        VERSION,
        str(home / "data.parquet"),
        store=store,
        labeling={"kind": "text", "field": "f0", "choices": list(CLASSES)},
        validation=str(home / "validation.parquet"),
    )


def test_an_honest_run_replays_bit_for_bit(published) -> None:
    chain, store, run_id = published
    report = replay_run(chain, store, run_id, code=CODE)
    assert report.ok, report.failures
    # the labels were recomputed from the answers too; this fixture's ingest record names no source files
    # to make the examples from (a real ingest's are: test_replay_ingest, test_private_version)
    assert [s.name for s in report.skipped] == [UNSOURCED]
    assert report.same_platform and report.max_score_diff == 0.0  # same torch build and CPU: exact
    assert report.replayed_root == report.onchain_root == report.stored_root
    # the record names what the run trained from and through; the replay's training repeated every one
    _, training = RunRecords(chain, store).parent(report.head_cid, TRAINING)
    digests = training.params["digests"]
    features = store.get(training.outputs[TrainingRecord.FEATURES])
    assert [tensors_digest(c) for c in checkpoints_of_features(features)] == digests["checkpoints"]
    assert report.parted_at == "" and "parted" not in report.where()


def _inflated(value: float | list[float]) -> float | list[float]:
    """A stored value (or each seed's) made larger, as a publisher favouring a provider would."""
    return [abs(v) * 10 + 1.0 for v in value] if isinstance(value, list) else abs(value) * 10 + 1.0


def _republish(chain, store, run_id: str, name: str, **change) -> str:
    """Copy the run under a new id with one thing changed, every CID and the root kept consistent."""
    records = RunRecords(chain, store)
    head_cid = records.head(run_id)
    head = records.load(head_cid)
    training_cid, train = records.parent(head_cid, TRAINING)
    params, outputs = dict(train.params), dict(train.outputs)
    scores = read_parquet(store.get(outputs[TrainingRecord.EXAMPLE_ATTRIBUTION]))
    if "config" in change:
        params["config"] = {**params["config"], **change["config"]}
    if "score_rtol" in change:  # a looser tolerance recorded with the run than the pipeline records
        params["score_rtol"] = change["score_rtol"]
    examples = read_parquet(store.get(head.inputs[WeightingRecord.EXAMPLES]))
    if {"inflate", "shift", "shift_one"} & change.keys():  # one provider's scores ten times higher, or
        # each a little, or its first one a little
        provider, shift = change.get("shift") or change.get("shift_one") or (change["inflate"], None)
        theirs = examples.filter(pa.compute.equal(examples["provider"], provider))["example_id"]
        if "shift_one" in change:  # the first that is scored (not a target)
            theirs = pa.array(sorted(set(theirs.to_pylist()) & set(scores["example_id"].to_pylist()))[:1])
        mine = pa.compute.is_in(scores["example_id"], value_set=theirs)
        score = scores["score"]
        raised = pa.compute.multiply(score, 10.0) if shift is None else pa.compute.add(score, shift)
        scores = scores.set_column(scores.schema.get_field_index("score"), "score",
                                   pa.compute.if_else(mine, raised, scores["score"]))
        outputs[TrainingRecord.EXAMPLE_ATTRIBUTION] = store_value(store, scores).cid
    inputs, parents = dict(train.inputs), train.parents
    pay_tables = {}
    if "labels" in change:  # trained and paid on labels of the publisher's choosing, CIDs consistent
        inputs, parents, pay_tables, trained = _relabel(store, records, training_cid, train, change["labels"])
        scores = trained[TrainingRecord.EXAMPLE_ATTRIBUTION]
        for output in (TrainingRecord.EXAMPLE_ATTRIBUTION, TrainingRecord.MODEL, TrainingRecord.FEATURES):
            outputs[output] = store_value(store, trained[output]).cid
    if "bare_consensus" in change:  # a consensus record that names nothing to recompute from
        consensus_cid, consensus = records.parent(training_cid, CONSENSUS)
        bare = put_record(store, dataclasses.replace(consensus, inputs={}))
        parents = tuple(bare if p == consensus_cid else p for p in train.parents)
    if "credit" in change:  # paid by a credit table the ingest never made
        pay_tables = {WeightingRecord.EXAMPLE_CREDIT: store_value(store, _credit_to(*change["credit"])).cid}
    if "validation" in change:  # the record names other targets than those the scores were measured on
        half = read_parquet(store.get(inputs[TrainingRecord.VALIDATION])).slice(0, 30)
        inputs[TrainingRecord.VALIDATION] = store_value(store, half).cid
    if "served" in change:  # a model (or features, or both) other than the one the scores were measured on:
        # trained from another seed, its features projected as the run's are
        labeled = read_parquet(store.get(inputs[TrainingRecord.LABELED_DATASET]))
        config = TrainingConfig(**params["config"])
        seven = TrainingConfig(**{**params["config"], "seed": 7})
        split, result = train_labeled(labeled, seven, run_id=str(params["run_id"]))
        other = trained_outputs(split, revalued(split, result, config, result.checkpoints), config)
        for served in np.atleast_1d(change["served"]).tolist():
            outputs[served] = store_value(store, other[served]).cid
    if "encoding" in change:  # the scale serving encodes each request by: one column's mean moved
        encoding = json.loads(store.get(outputs[TrainingRecord.ENCODING]))
        encoding["mean"][0] += change["encoding"]
        outputs[TrainingRecord.ENCODING] = store_value(
            store, json.dumps(encoding, sort_keys=True, separators=(",", ":")).encode()).cid
    if "kernel" in change or "rename" in change:  # the features' kernel inverses scaled (what splits each
        features = store.get(outputs[TrainingRecord.FEATURES])  # prediction's fee), or their checkpoints
        scale = change.get("kernel", 1.0)
        tensors = {k: v * scale if ".kernel_inv" in k else v for k, v in load(features).items()}
        if "rename" in change:  # made of another model's tensors (other names)
            tensors = {k.replace(".state.", ".state.other_"): v for k, v in tensors.items()}
        outputs[TrainingRecord.FEATURES] = store_value(
            store, save(tensors, metadata=safetensors_metadata(features))).cid
    credit = {**head.inputs, **pay_tables}.get(WeightingRecord.EXAMPLE_CREDIT)
    credit = read_parquet(store.get(credit)) if credit else None
    if "labels" in change or "credit" in change:  # left-out values retrained as the publisher's pay needs
        labeled = read_parquet(store.get(inputs[TrainingRecord.LABELED_DATASET]))
        config = TrainingConfig(**params["config"])
        split, result = train_labeled(labeled, config, run_id=str(params["run_id"]))
        consensus_cid = next(p for p in parents if records.load(p).activity == CONSENSUS)
        values = left_out_value(split, labeled, result, config, credit, recount(store, consensus_cid))
        value_cid = store_value(store, values).cid
        outputs[TrainingRecord.LEFT_OUT_VALUE] = pay_tables[WeightingRecord.LEFT_OUT_VALUE] = value_cid
    left_out = read_parquet(store.get(outputs[TrainingRecord.LEFT_OUT_VALUE]))
    if "bare_consensus" in change:  # with no answers to recount, the run would have retrained no labeler
        left_out = left_out.filter(pa.compute.equal(left_out["role"], "provider"))
        outputs[TrainingRecord.LEFT_OUT_VALUE] = pay_tables[WeightingRecord.LEFT_OUT_VALUE] = store_value(
            store, left_out).cid
    for key, column in (("value", "value"), ("copies", "copies_value"), ("runs", "value_runs")):
        if key not in change:  # one provider's value (its copies' part, its seeds') inflated, CIDs consistent
            continue
        names, values = left_out["contributor"].to_pylist(), left_out[column].to_pylist()
        values = [_inflated(v) if p == change[key] else v for p, v in zip(names, values, strict=True)]
        left_out = left_out.set_column(left_out.schema.get_field_index(column), column,
                                       pa.array(values, left_out.schema.field(column).type))
        outputs[TrainingRecord.LEFT_OUT_VALUE] = pay_tables[WeightingRecord.LEFT_OUT_VALUE] = store_value(
            store, left_out).cid
    new_training = put_record(
        store, dataclasses.replace(train, inputs=inputs, outputs=outputs, params=params, parents=parents)
    )
    stored = read_weights(store.get(head.outputs[WeightingRecord.WEIGHTS]))
    addresses = dict(zip(stored["contributor"].to_pylist(), stored["address"].to_pylist(), strict=True))
    head_inputs = {**head.inputs, **pay_tables}
    tables = [
        read_parquet(store.get(head_inputs[n]))
        for n in (WeightingRecord.ANNOTATIONS, WeightingRecord.CONSENSUS)
    ]
    weights = contributor_weights(
        scores, examples, *tables, addresses, WeightPolicy.from_params(head.params["policy"]), credit,
        left_out,
    )
    if "pay" in change:  # the weights table itself edited: two contributors swap their basis points
        bps = weights["weight_bps"].to_pylist()
        bps[0], bps[1] = bps[1], bps[0]
        weights = weights.set_column(
            weights.schema.get_field_index("weight_bps"), "weight_bps", pa.array(bps, pa.int64())
        )
    new_head = put_record(
        store,
        Record(
            activity=WEIGHTING,
            agent=head.agent,
            started_at=head.started_at,
            ended_at=head.ended_at,
            code=head.code,
            inputs={
                **head_inputs,
                WeightingRecord.EXAMPLE_ATTRIBUTION: outputs[TrainingRecord.EXAMPLE_ATTRIBUTION],
            },
            outputs={WeightingRecord.WEIGHTS: store_weights(store, weights)},
            parents=(new_training, *head.parents[1:]),
            params={**head.params, "run_id": name},
        ),
    )
    publish_run(chain, store, name, new_head)
    return name


def _relabel(store, records, training_cid: str, train: Record, where: str):
    """Labels changed where `where` says (the stored `consensus`, the `labeled` data trained on, or
    only the consensus the split is computed from, `pay`), then trained on for real, so the scores
    are what training on those labels gives: (training inputs, parents, weighting inputs, its outputs:
    model, features and scores all its own)."""
    consensus_cid, consensus = records.parent(training_cid, CONSENSUS)
    _, snapshot = records.parent(training_cid, SNAPSHOT)
    honest = read_parquet(store.get(consensus.outputs[ConsensusRecord.CONSENSUS]))
    labels = honest["label"].to_pylist()
    flipped = [CLASSES[(CLASSES.index(v) + 1) % 3] if i < 12 else v for i, v in enumerate(labels)]
    tampered = honest.set_column(honest.schema.get_field_index("label"), "label", pa.array(flipped))
    raw = read_parquet(store.get(snapshot.inputs[SnapshotRecord.EXAMPLES]))
    trained_on = label_rows(raw, honest if where == "pay" else tampered)
    inputs = {**train.inputs, TrainingRecord.LABELED_DATASET: store_value(store, trained_on).cid}
    parents, pay = train.parents, {}
    if where == "consensus":  # a consensus record that claims the tampered labels came from the answers
        claimed = {**consensus.outputs, ConsensusRecord.CONSENSUS: store_value(store, tampered).cid}
        record = dataclasses.replace(consensus, outputs=claimed)
        parents = tuple(put_record(store, record) if p == consensus_cid else p for p in train.parents)
    if where in ("consensus", "pay"):
        pay = {WeightingRecord.CONSENSUS: store_value(store, tampered).cid}
    config = TrainingConfig(**train.params["config"])
    split, result = train_labeled(trained_on, config, run_id=str(train.params["run_id"]))
    return inputs, parents, pay, trained_outputs(split, result, config)


@pytest.mark.parametrize(
    "change, failure",
    [
        ({"labels": "consensus"}, "consensus_differs"),
        ({"labels": "labeled"}, "labeled_data_differs"),
        ({"labels": "pay"}, "pay_inputs_differ"),
        ({"credit": ("p-big", "p-noisy")}, "pay_inputs_differ"),
        ({"inflate": "p-small"}, "scores_differ"),
        ({"value": "p-small"}, "left_out_values_differ"),
        ({"value": "l-ok"}, "left_out_values_differ"),
        ({"copies": "p-small"}, "left_out_values_differ"),
        ({"runs": "p-small"}, "left_out_values_differ"),
        ({"config": {"lr": 0.05}}, "scores_differ"),
        ({"config": {"seed": 7}}, "scores_differ"),
        ({"pay": True}, "pay_differs"),
        ({"served": TrainingRecord.MODEL}, "model_differs"),
        ({"served": TrainingRecord.FEATURES}, "model_differs"),
        ({"encoding": 0.5}, "encoding_differs"),
        ({"score_rtol": 0.5}, "tolerance_differs"),
    ],
    ids=["consensus", "labeled-data", "pay-labels", "credit", "scores", "provider-values", "labeler-values",
         "copies-value", "seeds-values", "recipe", "seed", "weights", "model", "features", "encoding",
         "tolerance"],
)
def test_a_tampered_run_passes_verify_but_fails_replay(published, change, failure, request) -> None:
    chain, store, run_id = published
    name = _republish(chain, store, run_id, f"tampered-{request.node.callspec.id}", **change)
    assert verify_run(chain, store, name).ok  # structure, CIDs and root are consistent
    report = replay_run(chain, store, name, code=CODE)
    assert not report.ok and failure in report.names()
    assert not any("rounding band" in f.detail for f in report.failures)  # bit for bit here: no doubt
    # where the replay's training parted from the run's (the record keeps the honest run's digests)
    parted = {"consensus": "inputs", "labeled-data": "inputs", "recipe": "checkpoint 0",
              "seed": "initial weights"}
    assert report.parted_at == parted.get(request.node.callspec.id, "")
    assert report.parting() in report.where()
    if {"labels", "credit", "copies", "runs", "served", "encoding", "score_rtol"} & change.keys():
        assert report.names() == {failure}  # only that check sees it (copies_value, value_runs move no pay)
    if "served" in change:  # the substituted file named, and how far it is from the replay's
        (served,) = report.failures
        assert f"the stored {change['served'].replace('_', ' ')} (" in served.detail
        assert "tensors differ (largest" in served.detail
    if "value" in change:
        (pay,) = [f for f in report.failures if f.name == "pay_differs"]
        role = "provider" if change["value"] in PROVIDERS else "labeler"
        assert f"{change['value']} ({role}" in pay.detail  # the contributors whose pay differs are named
        assert report.names() == {"left_out_values_differ", "pay_differs", "root_differs"}


@pytest.mark.parametrize(
    "change, detail",
    [({"served": TrainingRecord.MODEL}, "is not the last checkpoint of the stored features"),
     ({"served": TrainingRecord.FEATURES}, "is not the last checkpoint of the stored features"),
     ({"served": (TrainingRecord.MODEL, TrainingRecord.FEATURES)}, "give example scores beyond this machine"),
     ({"kernel": 1.5}, "is not what their checkpoints give here"),
     ({"rename": True}, "hold no checkpoints of the run's model")],
    ids=["model", "features", "model-and-features", "kernel", "other-model"],
)
def test_on_another_platform_a_model_or_features_other_than_the_scores_were_measured_on_fail(
    published, monkeypatch, change, detail, request
) -> None:
    """Off the run's platform the model and features are checked through the stored checkpoints: a model
    that is not the features' last checkpoint, features their checkpoints do not give, or checkpoints
    (model and features substituted together) whose scores fall outside the replay's band."""
    chain, store, run_id = published
    name = _republish(chain, store, run_id, f"elsewhere-served-{request.node.callspec.id}", **change)
    replay_elsewhere(monkeypatch)
    report = replay_run(chain, store, name, code=CODE)
    assert not report.same_platform and report.names() == {"model_differs"}, report.failures
    assert any(detail in f.detail for f in report.failures), report.failures


@pytest.mark.parametrize(
    "change, failure",
    [({}, None), ({"inflate": "p-small"}, "scores_differ"), ({"value": "p-small"}, "left_out_values_differ"),
     ({"pay": True}, "pay_differs"), ({"encoding": 1e-3}, "encoding_differs")],
    ids=["honest", "scores", "provider-values", "weights", "encoding"],
)
def test_on_another_platform_an_honest_run_passes_and_a_tampered_one_fails(
    published, monkeypatch, change, failure, request
) -> None:
    chain, store, run_id = published
    name = run_id
    if change:
        name = _republish(chain, store, run_id, f"elsewhere-{request.node.callspec.id}", **change)
    replay_elsewhere(monkeypatch)
    report = replay_run(chain, store, name, code=CODE)  # retrained twice, side by side
    assert not report.same_platform
    if failure is None:
        assert report.ok, report.failures
        assert report.max_bps_diff == 0 and report.replayed_root == report.onchain_root  # the MLP: same pay
        # the served files checked through the stored checkpoints: on this CPU (another only by name) they
        # give the stored features and scores exactly, as training made them from the same checkpoints
        assert report.feature_gap == 0.0 < FEATURE_RTOL and report.checkpoint_score_diff == 0.0
        assert "the features within 0 of what their checkpoints give here" in report.where()
    else:
        assert failure in report.names()
        (found,) = [f for f in report.failures if f.name == failure]
        if failure == "encoding_differs":  # exact but for a number's last bits, on any platform
            assert found.detail.endswith("it differs at .mean[0]")
        elif failure != "pay_differs":  # a band's verdict says what decides it
            assert "beyond this machine's rounding band" in found.detail
            assert found.detail.endswith("replay on the run's platform or CPU kernels to be sure")


def test_the_band_retrain_in_a_process_of_its_own_is_the_one_made_here(published, monkeypatch) -> None:
    """Off the run's platform the band's retrain runs beside the first, in a spawned process (on 2 cores
    or more), else after it here. The MLP's reductions are split by no thread count, so both ways give
    the same retrains: the process of its own retrains what this one would, nudged as this one would."""
    chain, store, run_id = published
    replay_elsewhere(monkeypatch)
    retrains: list[tuple[Retrained, Retrained]] = []
    between = Band.between.__func__

    def kept(cls, first, second, rtol):
        retrains.append((first, second))
        return between(cls, first, second, rtol)

    monkeypatch.setattr("pipelines.replay.Band.between", classmethod(kept))
    threads = torch.get_num_threads()
    try:
        for count in (2, 1):  # side by side, then one after the other
            torch.set_num_threads(count)
            assert replay_run(chain, store, run_id, code=CODE).ok
    finally:
        torch.set_num_threads(threads)
    (first, band), (first_again, band_again) = retrains
    assert first.scores.equals(first_again.scores) and band.scores.equals(band_again.scores)
    assert band.left_out_value.equals(band_again.left_out_value)
    assert not band.scores.equals(first.scores)  # nudged
    assert not band.left_out_value.equals(first.left_out_value)


def test_on_another_platform_a_small_shift_of_one_providers_scores_fails_by_their_sum(published, monkeypatch):
    """Each score moved by half the per-score band passes that band; their sum is far beyond its own."""
    chain, store, run_id = published
    replay_elsewhere(monkeypatch)
    honest = replay_run(chain, store, run_id, code=CODE)
    assert honest.ok and not honest.bit_exact, honest.failures
    assert 0.0 <= honest.sums_used <= 1.0
    records = RunRecords(chain, store)
    training = records.parent(records.head(run_id), TRAINING)[1]
    scores = read_parquet(store.get(training.outputs[TrainingRecord.EXAMPLE_ATTRIBUTION]))["score"].to_numpy()
    shift = honest.score_rtol * float(np.abs(scores).max()) / 2
    name = _republish(chain, store, run_id, "elsewhere-shifted", shift=("p-small", shift))
    assert verify_run(chain, store, name).ok
    report = replay_run(chain, store, name, code=CODE)
    assert report.names() == {"score_sums_differ"}  # every score within its band, the pay consistent
    assert report.sums_used > 1.0 and report.max_score_diff <= report.score_rtol * float(np.abs(scores).max())
    (found,) = report.failures
    assert "p-small (provider):" in found.detail and "p-big (provider)" not in found.detail
    assert found.detail.endswith("replay on the run's platform or CPU kernels to be sure")


def test_on_another_platform_scores_other_than_the_stored_models_fail_within_a_wide_band(
    published, monkeypatch
) -> None:
    """Where training carries rounding far, the replay's band is wide (0.64 of the largest score on the
    digits demo's CNN): one score raised within it, or each of a provider's a little, passes the band but
    is not what the stored checkpoints give (evaluation rounds far finer)."""
    chain, store, run_id = published
    replay_elsewhere(monkeypatch)
    between = Band.between.__func__
    monkeypatch.setattr("pipelines.replay.Band.between",
                        classmethod(lambda cls, first, second, _: between(cls, first, second, 0.5)))
    records = RunRecords(chain, store)
    training = records.parent(records.head(run_id), TRAINING)[1]
    scores = read_parquet(store.get(training.outputs[TrainingRecord.EXAMPLE_ATTRIBUTION]))["score"].to_numpy()
    top = float(np.abs(scores).max())
    assert replay_run(chain, store, run_id, code=CODE).ok  # the honest run
    allowed = CHECKPOINT_SCORE_RTOL * top
    name = _republish(chain, store, run_id, "elsewhere-one", shift_one=("p-small", 4 * allowed))
    assert verify_run(chain, store, name).ok
    report = replay_run(chain, store, name, code=CODE)
    assert report.names() == {"scores_not_the_models"}, report.failures  # within the band, pay consistent
    assert report.score_rtol == 0.5
    assert report.checkpoint_score_diff == pytest.approx(4 * report.checkpoint_score_allowed, rel=1e-6)
    (found,) = report.failures
    assert "up to" in found.detail and "not what the stored features' checkpoints give here" in found.detail
    shifted = _republish(chain, store, run_id, "elsewhere-each", shift=("p-small", allowed / 2))
    report = replay_run(chain, store, shifted, code=CODE)  # each score within both, their sum not
    assert report.names() == {"scores_not_the_models"}, report.failures
    (found,) = report.failures
    assert "p-small (provider):" in found.detail and "p-big (provider)" not in found.detail


@pytest.mark.parametrize("tampered", [False, True], ids=["honest", "scores"])
def test_another_cpu_running_the_runs_kernels_replays_bit_for_bit(published, monkeypatch, tampered) -> None:
    """An auditor's CPU with other vector flags, started with the pins of the run's kernels: an honest
    run replays bit for bit (one retrain, no band); a tampered one falls back to the band and fails."""
    chain, store, run_id = published
    name = _republish(chain, store, run_id, "kernels-scores", inflate="p-small") if tampered else run_id
    records = RunRecords(chain, store)
    recorded = records.parent(records.head(name), TRAINING)[1].params["platform"]
    here = training_platform()
    newer = {**here, "cpu_flags": f"{here['cpu_flags']} amx_newer", "kernel_pins": run_kernels(recorded)}
    monkeypatch.setattr("pipelines.replay.platform.training_platform", lambda: newer)
    report = replay_run(chain, store, name, code=CODE)
    assert not report.same_platform and report.run_kernels
    if tampered:
        assert not report.bit_exact and "scores_differ" in report.names()
    else:
        assert report.ok, report.failures
        assert report.bit_exact and report.max_score_diff == 0.0
        assert report.score_rtol == 0.0 and report.max_bps_diff == 0


def _caravan(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The `caravan` command in a process of its own, its code version pinned to the test's clean one
    (kept when the command restarts itself: `sys.orig_argv` holds this wrapper)."""
    wrapper = (
        "import pipelines.replay.run as r; from provenance import CodeVersion; "
        f"r.pipeline_code = lambda: CodeVersion(*{dataclasses.astuple(CODE)!r}); "
        "from pipelines.cli import app; app(prog_name='caravan')"
    )
    return subprocess.run([sys.executable, "-c", wrapper, *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif("avx512f" not in cpu_vector_flags().split(), reason="needs a CPU above AVX2")
def test_verify_replay_restarts_on_the_runs_cpu_kernels(published) -> None:
    """An auditor whose process runs other kernels (here pinned to AVX2 on this AVX-512 CPU, as an
    older CPU would): `verify --replay` restarts itself on the run's kernels and checks bit for bit;
    with `--native-kernels` it replays on its own and allows the band."""
    chain, store, run_id = published
    avx2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
    kernels = " ".join(f"{k}={v}" for k, v in run_kernels(training_platform(), cpu_vector_flags()).items())
    again = _caravan("verify", run_id, "--replay", env=avx2)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"restarting on the run's CPU kernels ({kernels})" in again.stderr
    assert "the run's CPU kernels, bit for bit" in again.stdout and "score diff 0.0" in again.stdout
    native = _caravan("verify", run_id, "--replay", "--native-kernels", env=avx2)
    assert native.returncode == 0 and "restarting" not in native.stderr, native.stdout
    # (whether AVX2 kernels round this MLP otherwise depends on the CPU: on an AMD EPYC they did not)
    assert "another platform: allowed" in native.stdout and "left-out values within" in native.stdout
    name = _republish(chain, store, run_id, "kernels-cli-scores", inflate="p-small")
    tampered = _caravan("verify", name, "--replay", env=avx2)
    assert tampered.returncode == 1 and "restarting on the run's CPU kernels" in tampered.stderr
    assert [line for line in tampered.stdout.splitlines() if line.startswith("FAIL scores_differ")]


def test_labels_a_run_names_no_inputs_for_are_skipped_and_said(published) -> None:
    chain, store, run_id = published
    name = _republish(chain, store, run_id, "bare-consensus", bare_consensus=True)
    report = replay_run(chain, store, name, code=CODE)
    assert report.ok and [s.name for s in report.skipped] == [UNSOURCED, "SKIP (labels)"]


def test_the_platform_names_what_rounds_differently_and_replay_uses_the_runs_threads(published) -> None:
    here = training_platform()
    assert here["threads"] == torch.get_num_threads()
    assert here["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert same_platform(here, here)
    assert not same_platform({**here, "cpu_capability": "ANOTHER"}, here)  # other kernels: tolerance
    assert not same_platform({**here, "cpu_flags": "avx"}, here)  # another CPU family: oneDNN differs
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx avx512f amx_tile ssse3\nbogomips\t: 1\n"
    assert cpu_vector_flags(cpuinfo) == "amx_tile avx avx2 avx512f fma"  # what oneDNN picks its ISA by
    assert cpu_vector_flags("processor\t: 0\n") == ""
    assert not same_platform({}, here)  # nothing recorded: nothing to be bit for bit with
    old = {k: here[k] for k in ("torch", "machine", "device")}  # a record from before threads were kept
    assert same_platform(old, here)
    unpinned = {k: v for k, v in here.items() if k != "kernel_pins"}  # from before pins were kept
    assert same_platform(unpinned, here)
    assert not same_platform(unpinned, {**here, "kernel_pins": {"MKL_CBWR": "AVX2"}})  # it ran unpinned
    chain, store, run_id = published
    recorded = RunRecords(chain, store).parent(RunRecords(chain, store).head(run_id), TRAINING)[1]
    assert recorded.params["platform"] == here


def _replayed(scores: list[float], runs: dict[str, list[float]]) -> Retrained:
    """A retrain's tables: example scores, and each provider's left-out value at each seed (all zero: a
    provider that left nothing out) and its mean."""
    ids = [f"e{i}" for i in range(len(scores))]
    values = pa.table({
        "contributor": list(runs), "role": ["provider"] * len(runs),
        "examples_left_out": [int(any(r)) * 10 for r in runs.values()],
        "value": [float(np.mean(r)) for r in runs.values()],
        "value_se": [float(np.std(r, ddof=1) / np.sqrt(len(r))) for r in runs.values()],
        "copies_value": [0.0] * len(runs), "value_runs": list(runs.values()),
    })
    return Retrained(pa.table({"example_id": ids, "score": scores}), values)


def test_another_platforms_band_is_the_spread_of_two_replays_here_times_the_factor() -> None:
    first = _replayed([0.002, -0.001, 0.0005], {"a": [0.030, 0.034], "b": [0.010, 0.006], "c": [0.0, 0.0]})
    assert Band.between(first, None, 1e-4) == Band()  # the same platform: exact
    second = _replayed([0.00201, -0.001, 0.0005], {"a": [0.031, 0.032], "b": [0.012, 0.006], "c": [0.0, 0.0]})
    band = Band.between(first, second, 1e-4)
    assert band.score == pytest.approx(SPREAD_FACTOR * 1e-5)
    assert band.score_rtol == pytest.approx(band.score / 0.002)
    # per-seed differences -0.001, 0.002 (a) and -0.002, 0 (b): root mean square 0.0015 in one retrain, c
    # (nothing left out, nothing retrained) not counted; a value is the mean of 2 seeds
    assert value_noise(first.left_out_value, second.left_out_value) == (pytest.approx(0.0015), 2)
    assert band.run_value == pytest.approx(VALUE_SIGMAS * 0.0015)
    assert band.value == pytest.approx(VALUE_SIGMAS * 0.0015 / np.sqrt(2))
    # a machine whose two replays agree bit for bit allows the recorded tolerance (of the largest value: a's)
    # n summed scores: (5 sqrt(n) + 0.5 n) x the scores' root mean square gap (1e-5 / sqrt(3)), at least
    # the recorded tolerance of the largest score (2e-7) x sqrt(n)
    assert band.score_noise == pytest.approx(1e-5 / np.sqrt(3))
    assert band.score_sum(4) == pytest.approx((SUM_SIGMAS * 2 + SUM_DRIFT * 4) * 1e-5 / np.sqrt(3))
    assert Band(score_noise=1e-9, sum_floor=2e-7).score_sum(4) == pytest.approx(4e-7)
    assert Band.between(first, first, 1e-4) == Band(score=1e-4 * 0.002, value=1e-4 * 0.032,
                                                    run_value=1e-4 * 0.032, score_rtol=1e-4,
                                                    sum_floor=1e-4 * 0.002)


@pytest.mark.parametrize("seed", [0, 6, 7])
def test_an_adamw_run_on_two_threads_lands_within_the_band_of_a_nudged_retrain(seed) -> None:
    """Under AdamW a run parts from another only where rounding flips a choice, so one unit of nudge
    often left replay's two retrains together while another thread split had parted the run: on these
    worlds (the image end-to-end test's shapes, data seeds 0, 6, 7) a two-thread run landed 15x, 159x
    and 50x the band of two one-thread retrains, one nudged one unit, away on an AMD EPYC. Nudged by
    ``nudge_units`` (256 under AdamW) the band holds it."""
    from attribution import RecipeSizes, nudged_steps, train_trak_valued
    from attribution.model_task import LABELS
    from attribution.recipes import image as recipe
    from tests.pipelines.test_payload_e2e import SHAPES, _shapes

    policy = recipe.ImagePolicy(height=16, width=16, mode="L", resize="squash")
    task = recipe.image_cnn_task(policy, len(SHAPES), channels=RecipeSizes().channels)

    def rows(count: int, rng: int) -> dict[str, torch.Tensor]:
        table = _shapes(np.random.default_rng(rng), count)
        pixels = np.asarray(recipe.decode_images(table["image"].to_pylist(), policy))
        labels = [SHAPES.index(s) for s in table["shape"].to_pylist()]
        return {"pixel_values": torch.as_tensor(pixels).float(), LABELS: torch.as_tensor(labels)}

    train, targets, ids = rows(120, seed), rows(24, seed + 100), [f"shape-{i:03d}" for i in range(120)]
    threads = torch.get_num_threads()

    def retrained(count: int, salt: int | None = None) -> Retrained:
        torch.set_num_threads(count)
        with nudged_steps(salt) if salt is not None else contextlib.nullcontext():
            scores = train_trak_valued(task, train, ids, targets, seed=0).scores
        return Retrained(pa.table({"example_id": ids, "score": np.asarray(scores)}), None)

    try:
        run, first, nudged = retrained(2), retrained(1), retrained(1, salt=NUDGE_SALT)
    finally:
        torch.set_num_threads(threads)
    band = Band.between(first, nudged, 0.0)  # the spread alone, no recorded tolerance under it
    assert np.abs(run.scores["score"].to_numpy() - first.scores["score"].to_numpy()).max() <= band.score


def test_replay_refuses_other_code(published) -> None:
    chain, store, run_id = published
    other = dataclasses.replace(CODE, git_commit="cd" * 20)
    with pytest.raises(ReplayRefused, match=f"git checkout {CODE.git_commit}"):
        replay_run(chain, store, run_id, code=other)
    with pytest.raises(ReplayRefused, match="clean working tree"):
        replay_run(chain, store, run_id, code=dataclasses.replace(CODE, dirty=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_gpu_run_is_refused_where_there_is_no_gpu_to_retrain_it_on() -> None:
    """A run trained on CUDA is retrained on a GPU: on a CPU-only machine replay names the GPU it needs
    instead of failing an honest run by the CPU's rounding; a CPU run is replayed on this CPU."""
    gpu = {**training_platform(), "device": "cuda", "gpu": "NVIDIA H200", "cuda": "13.0", "cudnn": 91900}
    with pytest.raises(ReplayRefused, match=r"trained on cuda \(NVIDIA H200, CUDA 13\.0, torch .*a machine "
                                            r"where torch sees a CUDA GPU"):
        replay_platform(gpu)
    assert replay_platform(training_platform()) == training_platform()
    assert replay_platform({}) == training_platform()  # a record from before platforms were recorded


def test_verify_replay_on_the_command_line(published, monkeypatch) -> None:
    """`caravan verify RUN --replay`: refuses other code naming the commit, passes an honest run,
    and prints one FAIL line naming the contributors whose pay a tampered run changed (its providers'
    left-out values inflated); inflated example scores fail it too."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    chain, store, run_id = published
    runner = CliRunner()
    refused = runner.invoke(app, ["verify", run_id, "--replay"])  # this checkout is not commit abab...
    assert refused.exit_code == 1 and f"git checkout {CODE.git_commit}" in refused.output
    monkeypatch.setattr("pipelines.replay.run.pipeline_code", lambda: CODE)
    honest = runner.invoke(app, ["verify", run_id, "--replay"])
    assert honest.exit_code == 0, honest.output
    assert "OK:" in honest.output and "replayed in" in honest.output
    name = _republish(chain, store, run_id, "tampered-cli", value="p-small")  # its pay is inflated
    tampered = runner.invoke(app, ["verify", name, "--replay"])
    assert tampered.exit_code == 1
    pay = [line for line in tampered.output.splitlines() if line.startswith("FAIL pay_differs")]
    assert len(pay) == 1 and "p-small (provider" in pay[0]
    # inflated example scores no longer move a provider's pay, but fail the replay all the same
    name = _republish(chain, store, run_id, "tampered-cli-scores", inflate="p-small")
    tampered = runner.invoke(app, ["verify", name, "--replay"])
    assert tampered.exit_code == 1
    assert [line for line in tampered.output.splitlines() if line.startswith("FAIL scores_differ")]


def test_a_restart_that_fails_says_so_and_replays_here(published, monkeypatch) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    def refused(*_args) -> None:
        raise PermissionError("exec refused")

    chain, store, run_id = published
    monkeypatch.setattr("pipelines.replay.run.pipeline_code", lambda: CODE)
    monkeypatch.setattr("pipelines.replay.replay_kernels", lambda *_: {"MKL_CBWR": "AVX2"})
    monkeypatch.setattr("os.execve", refused)
    result = CliRunner().invoke(app, ["verify", run_id, "--replay"])
    assert result.exit_code == 0, result.output
    assert "could not restart (exec refused); replaying on this CPU's own kernels" in result.output
    assert "same platform" in result.output


def test_a_declared_validation_set_is_what_influence_is_measured_against(published_with_validation) -> None:
    chain, store, run_id = published_with_validation
    records = RunRecords(chain, store)
    _, train = records.parent(records.head(run_id), TRAINING)
    assert train.params["targets"] == "validation"
    validation = read_parquet(store.get(train.inputs[TrainingRecord.VALIDATION]))
    assert validation.num_rows == 60 and set(validation["label"].to_pylist()) <= set(CLASSES)
    labeled = read_parquet(store.get(train.inputs[TrainingRecord.LABELED_DATASET]))
    scores = read_parquet(store.get(train.outputs[TrainingRecord.EXAMPLE_ATTRIBUTION]))
    assert scores.num_rows == labeled.num_rows  # every labeled row trained on; none held out of it
    report = replay_run(chain, store, run_id, code=CODE)
    assert report.ok and report.max_score_diff == 0.0
    tampered = _republish(chain, store, run_id, "tampered-validation", validation=True)
    assert verify_run(chain, store, tampered).ok
    assert "scores_differ" in replay_run(chain, store, tampered, code=CODE).names()


def test_without_a_validation_set_the_record_says_targets_are_crowd_labels(published) -> None:
    chain, store, run_id = published
    records = RunRecords(chain, store)
    _, train = records.parent(records.head(run_id), TRAINING)
    assert train.params["targets"] == "crowd_hash_split" and TrainingRecord.VALIDATION not in train.inputs


def test_a_run_paid_by_its_example_credit_names_it_and_replays(published_with_credit) -> None:
    chain, store, run_id = published_with_credit
    records = RunRecords(chain, store)
    head = records.load(records.head(run_id))
    assert WeightingRecord.EXAMPLE_CREDIT in head.inputs  # the weighting record names the credit it used
    table = read_weights(store.get(head.outputs[WeightingRecord.WEIGHTS]))
    weights = {r["contributor"]: r for r in table.to_pylist()}
    assert weights["p-small"]["weight_bps"] == 0 and weights["p-small"]["score"] == 0.0  # all its rows copies
    # providers are paid by leaving each out: p-small's group is empty (nothing retrained, value 0),
    # p-big's holds p-small's rows as well
    assert head.params["policy"]["providers"] == "left_out"
    assert head.params["policy"]["label_smoothing"] == DS_SMOOTHING  # the consensus's (its record names none)
    values = {(r["role"], r["contributor"]): r for r in read_parquet(
        store.get(head.inputs[WeightingRecord.LEFT_OUT_VALUE])).to_pylist()}
    # labelers too: each retrained on the consensus refitted without its answers
    assert head.params["policy"]["labelers"] == "left_out"
    assert {c for r, c in values if r == "labeler"} == set(LABELERS)
    small_value = values["provider", "p-small"]
    assert small_value["examples_left_out"] == 0 and small_value["value"] == 0.0
    raw = _tables()["raw_dataset"]
    small = raw["provider"].to_pylist().count("p-small")
    assert values["provider", "p-big"]["examples_left_out"] >= small  # (training rows only: targets stay)
    _, train = records.parent(records.head(run_id), TRAINING)
    assert train.outputs[TrainingRecord.LEFT_OUT_VALUE] == head.inputs[WeightingRecord.LEFT_OUT_VALUE]
    report = replay_run(chain, store, run_id, code=CODE)  # replay pays by the recorded credit too
    assert report.ok, report.failures


def test_a_consensus_that_weighed_a_review_is_recomputed_with_it(published_with_model) -> None:
    """dawid_skene_model: replay reads the review the consensus record names (the method refuses to
    run without its probabilities), recomputes the same consensus, and catches tampering."""
    chain, store, run_id = published_with_model
    records = RunRecords(chain, store)
    training_cid, _ = records.parent(records.head(run_id), TRAINING)
    consensus_cid, consensus = records.parent(training_cid, CONSENSUS)
    assert consensus.params["method"] == "dawid_skene_model"
    _, review = records.parent(consensus_cid, LABEL_REVIEW)
    assert consensus.inputs[ConsensusRecord.LABEL_REVIEW] == review.outputs[LabelReviewRecord.LABEL_REVIEW]
    report = replay_run(chain, store, run_id, code=CODE)
    # this fixture's review record names nothing to make it again from (a real one's: test_consensus_review)
    assert report.ok and [s.name for s in report.skipped] == [UNSOURCED, "SKIP (review)"], report.failures
    name = _republish(chain, store, run_id, "tampered-model-consensus", labels="consensus")
    assert replay_run(chain, store, name, code=CODE).names() == {"consensus_differs"}


def test_a_run_with_more_providers_than_left_out_max_pays_them_by_their_scores() -> None:
    labeled = _tables()["labeled_dataset"]
    config = TrainingConfig(hidden=[16], epochs=3, trak_k=32, left_out_max=len(PROVIDERS) - 1)
    split, result = train_labeled(labeled, config, run_id="r")
    assert left_out_value(split, labeled, result, config, None) is None
    config = config.model_copy(update={"left_out_max": len(PROVIDERS)})
    values = left_out_value(split, labeled, result, config, None)
    assert sorted(values["contributor"].to_pylist()) == sorted(PROVIDERS)  # no answers recounted: no labeler
    assert left_out_value(split, labeled, result, config, None).equals(values)  # deterministic
    with pytest.raises(dg.Failure, match="left_out_max must be >= 0"):
        left_out_value(split, labeled, result, config.model_copy(update={"left_out_max": -1}), None)
    # labelers are retrained only where the run config opts in
    answers = Recount(_tables()["annotations"], None, "dawid_skene", None, DS_SMOOTHING)
    assert answers.labelers == sorted(LABELERS)
    roles = left_out_value(split, labeled, result, config, None, answers)["role"].to_pylist()
    assert roles == ["provider"] * len(PROVIDERS)
    both = left_out_value(split, labeled, result, config.model_copy(update={"left_out_labelers": True}),
                          None, answers)
    labelers = both.filter(pa.compute.equal(both["role"], "labeler"))
    assert labelers["contributor"].to_pylist() == sorted(LABELERS)


@pytest.fixture  # its own environment (CARAVAN_HOME, ...) only while its test runs
def published_stopped_early(tmp_path_factory, anvil: AnvilService):
    # a rate that overshoots, so the run stops early (at its 4th epoch of 8 here), its left-out retrains too
    stops = {"epochs": 8, "lr": 2.0, "patience": 1}
    yield from _publish(tmp_path_factory, anvil, validation=False, train=stops)


def test_an_mlp_run_that_stopped_early_replays_here_and_elsewhere(published_stopped_early, monkeypatch):
    chain, store, run_id = published_stopped_early
    records = RunRecords(chain, store)
    training = records.parent(records.head(run_id), TRAINING)[1]
    assert training.params["config"]["patience"] == 1 and training.params["epochs_trained"] < 8
    report = replay_run(chain, store, run_id, code=CODE)
    assert report.ok and report.same_platform and report.max_score_diff == 0.0, report.failures
    replay_elsewhere(monkeypatch)
    elsewhere = replay_run(chain, store, run_id, code=CODE)
    assert elsewhere.ok and not elsewhere.same_platform, elsewhere.failures
