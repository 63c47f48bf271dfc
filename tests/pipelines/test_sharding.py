"""The sharded-features job: a stored run's TRAK features recomputed by shards combine to the stored ones.

The upstream labeled data is written through the content-store IO manager's own pointers (no Label
Studio needed for this stage); `trained_model` is materialized for real, then the job fans out.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from attribution import features_from_bytes, features_to_bytes
from pipelines.assets import training
from pipelines.content_io import store_value
from pipelines.lineage import now
from pipelines.partitions import dataset_versions
from pipelines.sharding import sharded_features_job, sharded_features_job_for
from provenance import TRAINING, TrainingRecord, load_record

VERSION = "shards-v1"
CLASSES = ("a", "b", "c")


def _labeled(n: int = 150, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, size=(len(CLASSES), 4))
    y = rng.integers(0, len(CLASSES), size=n)
    X = centers[y] + rng.normal(0, 1.0, size=(n, 4))
    return pa.table(
        {
            "example_id": [hashlib.sha256(r.tobytes()).hexdigest() for r in X],
            "provider": [f"p{i % 3}" for i in range(n)],
            **{f"f{j}": X[:, j] for j in range(4)},
            "label": [CLASSES[v] for v in y],
            "confidence": np.ones(n),
            "n_votes": np.full(n, 3, dtype=np.int64),
        }
    ).sort_by("example_id")


def _job_from_settings() -> dg.JobDefinition:
    """The job bound to the `CARAVAN_*` settings of this process (`definitions.py` binds them at import);
    reconstructable: the multiprocess executor rebuilds it in each step's process."""
    from pipelines.resources import resources_for

    jobs = dg.Definitions(jobs=[sharded_features_job_for(resources_for())])
    return jobs.get_job_def(sharded_features_job.name)


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
    """A dataset version with a trained run in the content store, as the attribution job leaves it."""
    from pipelines.resources import resources_for

    home = tmp_path_factory.mktemp("caravan")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CARAVAN_HOME", str(home))
        mp.delenv("CARAVAN_STORE_DIR", raising=False)
        resources = resources_for()
        client = resources["store"].client()
        stored = store_value(client, _labeled())
        pointer = {"cid": stored.cid, "kind": stored.kind}
        resources["index"].write(dg.AssetKey("labeled_dataset"), VERSION, pointer)
        for parent in ("consensus", "snapshot"):  # the training record names these as its parents
            resources["lineage"].write(client, parent, VERSION, started=now(), inputs={}, outputs={})
        (home / "dagster").mkdir()
        with dg.DagsterInstance.local_temp(str(home / "dagster")) as instance:
            instance.add_dynamic_partitions("dataset_version", [VERSION])
            recipe = {"hidden": [16], "epochs": 3, "trak_k": 64}
            result = dg.materialize(
                [training.trained_model, dg.AssetSpec("labeled_dataset", partitions_def=dataset_versions)],
                partition_key=VERSION,
                instance=instance,
                resources=resources,
                run_config={"ops": {"trained_model": {"config": recipe}}},
            )
            assert result.success
            yield home, resources, instance


def _run(resources, instance, n_shards: int, **kw):
    config = {"ops": {"plan_shards": {"config": {"version": VERSION, "n_shards": n_shards}}}}
    return sharded_features_job_for(resources).execute_in_process(run_config=config, instance=instance, **kw)


def _summary(home) -> dict:
    return json.loads((home / "assets" / "_state" / "sharded_trak_features" / f"{VERSION}.json").read_text())


def _stored_features(resources):
    meta = resources["index"].stored("trak_features", VERSION)
    return meta["cid"], features_from_bytes(resources["store"].client().get(meta["cid"]))


def test_one_shard_reproduces_the_stored_bytes(stored_run):
    _, resources, instance = stored_run
    result = _run(resources, instance, 1)
    assert result.success
    stored_cid, _ = _stored_features(resources)
    assert result.output_for_node("combine_features") == stored_cid


def test_three_shards_combine_to_the_stored_scores(stored_run):
    home, resources, instance = stored_run
    result = _run(resources, instance, 3)
    assert result.success
    assert len(result.output_for_node("compute_shard")) == 3  # one step per shard
    cid = result.output_for_node("combine_features")
    summary = _summary(home)
    assert summary["cid"] == cid and summary["n_shards"] == 3 and summary["max_score_diff"] <= 1e-4
    _, stored = _stored_features(resources)
    combined = features_from_bytes(resources["store"].client().get(cid))  # pinned in the content store
    assert combined.n_train == stored.n_train
    x = np.random.default_rng(1).normal(size=(4, 4))
    ref = stored.scores(x)
    np.testing.assert_allclose(combined.scores(x), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    for a, b in zip(combined.checkpoints, stored.checkpoints, strict=True):
        np.testing.assert_allclose(np.concatenate(list(a.store)), np.concatenate(list(b.store)), atol=1e-5)


def test_features_that_the_shards_do_not_reproduce_fail_the_job(stored_run):
    """The job checks the features the training record names (not whatever the asset index says)."""
    _, resources, instance = stored_run
    lineage, client = resources["lineage"], resources["store"].client()
    good_cid = lineage.cid_of(TRAINING, VERSION)
    good = load_record(client, good_cid)
    _, stored = _stored_features(resources)
    stored.checkpoints[-1].kernel_inv *= 1.01  # a kernel the run's rows and config do not give
    bad_cid = client.put_bytes(features_to_bytes(stored), cid_version=1, pin=True)
    outputs = {**good.outputs, TrainingRecord.FEATURES: bad_cid}
    write = partial(
        lineage.write,
        client,
        TRAINING,
        VERSION,
        started=now(),
        inputs=good.inputs,
        parents=good.parents,
        params=good.params,
    )
    write(outputs=outputs)
    try:
        result = _run(resources, instance, 2, raise_on_error=False)
    finally:
        write(outputs=good.outputs)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "combine_features"
    assert f"differ from the stored {bad_cid}" in str(failure.event_specific_data.error)


def test_bad_shard_count_fails_with_a_named_reason(stored_run):
    _, resources, instance = stored_run
    result = _run(resources, instance, 0, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "n_shards must be between 1" in str(failure.event_specific_data.error)


def test_the_job_runs_with_the_multiprocess_executor(stored_run, monkeypatch):
    home, resources, _ = stored_run
    monkeypatch.setenv("CARAVAN_HOME", str(home))
    monkeypatch.delenv("CARAVAN_STORE_DIR", raising=False)
    config = {"ops": {"plan_shards": {"config": {"version": VERSION, "n_shards": 2}}}}
    (home / "dagster-mp").mkdir()
    with dg.DagsterInstance.local_temp(str(home / "dagster-mp")) as instance:
        result = dg.execute_job(dg.reconstructable(_job_from_settings), instance=instance, run_config=config)
        assert result.success
        pids = {e.pid for e in result.all_events if e.is_step_success}
        assert len(pids) == 4  # plan, two shards, combine: each step in its own process
        summary = _summary(home)
        assert summary["n_shards"] == 2 and summary["max_score_diff"] <= 1e-3
