"""The pipeline room's shared fixtures: a Caravan home wired to the real Label Studio (and anvil)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from labeling import ModelProbs
from pipelines.compute_platform import training_platform
from pipelines.settings import Settings, load_settings


@pytest.fixture
def labeling_env(tmp_path, monkeypatch, labelstudio):
    """(settings, Label Studio client) for a fresh Caravan home against the real Label Studio."""
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    monkeypatch.setenv("CARAVAN_LABELSTUDIO_URL", labelstudio.base_url)
    # one project per test, and a short prefix: Label Studio titles hold 50 characters
    monkeypatch.setenv("CARAVAN_LABELSTUDIO_PROJECT_PREFIX", f"caravan-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", labelstudio.token)
    monkeypatch.delenv("CARAVAN_STORE_DIR", raising=False)
    return load_settings(), labelstudio.client()


@pytest.fixture
def caravan_env(labeling_env, monkeypatch, anvil):
    """The settings of a fresh Caravan home against the real Label Studio and anvil."""
    monkeypatch.setenv("CARAVAN_RPC_URL", anvil.rpc_url)
    monkeypatch.setenv("CARAVAN_PRIVATE_KEY", anvil.dev_keys[0])
    return load_settings()


def replay_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay as on another CPU (its CPU capability differs from the run's): off the run's platform it
    retrains twice, side by side, and holds the run to the band of the two."""
    elsewhere = {**training_platform(), "cpu_capability": "OTHER"}
    monkeypatch.setattr("pipelines.replay.platform.training_platform", lambda: elsewhere)


@contextlib.contextmanager
def stored_upstream(
    home: Path, rpc_url: str, private_key: str, code, version: str, tables: dict[str, pa.Table],
    credit: pa.Table | None = None, review: tuple[str, ModelProbs] | None = None,
) -> Iterator[tuple[Settings, dict]]:
    """A Caravan home on a real chain whose `version` already has `tables` stored as its upstream
    assets (raw rows, annotations, consensus, labeled data: `consistent_labels`) and the consensus
    and snapshot records the training record names as parents, naming those tables; the code
    version is pinned to `code`, a clean checkout, so the run can be replayed; the snapshot's parent
    is an ingest record naming the rows and `credit` (an `example_credit` table), if given; with
    `review` (method, probabilities), the consensus record names a label review record and table
    holding them, as a model method's consensus does. Yields (settings, resources) inside the patched
    environment."""
    from dagster import AssetKey

    from pipelines.content_io import store_value
    from pipelines.lineage import now
    from pipelines.resources import resources_for
    from provenance import (
        CONSENSUS,
        INGEST,
        LABEL_REVIEW,
        SNAPSHOT,
        ConsensusRecord,
        IngestRecord,
        LabelReviewRecord,
        SnapshotRecord,
    )

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CARAVAN_HOME", str(home))
        mp.setenv("CARAVAN_RPC_URL", rpc_url)
        mp.setenv("CARAVAN_PRIVATE_KEY", private_key)
        for name in ("CARAVAN_STORE_DIR", "CARAVAN_CONTRIBUTORS", "CARAVAN_LEDGER", "CARAVAN_KEYSTORE"):
            mp.delenv(name, raising=False)
        mp.setattr("pipelines.lineage.pipeline_code", lambda: code)
        mp.setattr("pipelines.assets.training.pipeline_code", lambda: code)
        settings = load_settings()
        resources = resources_for(settings)
        client = resources["store"].client()
        cids = {}
        for asset, table in tables.items():
            stored = store_value(client, table)
            cids[asset] = stored.cid
            resources["index"].write(AssetKey(asset), version, {"cid": stored.cid, "kind": stored.kind})
        # the records the training record names as parents, as the labeling stage writes them
        lineage = resources["lineage"]
        raw, answers, consensus = cids["raw_dataset"], cids["annotations"], cids["consensus_labels"]
        ingested = {IngestRecord.EXAMPLES: raw}
        if credit is not None:
            ingested[IngestRecord.EXAMPLE_CREDIT] = store_value(client, credit).cid
        ingest = lineage.write(client, INGEST, version, started=now(), inputs={}, outputs=ingested)
        lineage.write(client, SNAPSHOT, version, started=now(), inputs={SnapshotRecord.EXAMPLES: raw},
                      outputs={SnapshotRecord.SNAPSHOT: raw}, parents=(ingest,))
        inputs, parents, method = {ConsensusRecord.ANNOTATIONS: answers}, (), "dawid_skene"
        if review is not None:
            method, probs = review
            table = pa.table({"example_id": list(probs.example_ids),
                              "class_probs": pa.array(list(probs.probs), pa.list_(pa.float64()))})
            reviewed = inputs[ConsensusRecord.LABEL_REVIEW] = store_value(client, table).cid
            parents = (lineage.write(client, LABEL_REVIEW, version, started=now(), inputs={},
                                     outputs={LabelReviewRecord.LABEL_REVIEW: reviewed},
                                     params={"classes": list(probs.classes)}),)
        lineage.write(client, CONSENSUS, version, started=now(), inputs=inputs, parents=parents,
                      outputs={ConsensusRecord.CONSENSUS: consensus}, params={"method": method})
        yield settings, resources


def consistent_labels(
    raw: pa.Table, annotations: pa.Table, review: tuple[str, ModelProbs] | None = None
) -> dict[str, pa.Table]:
    """`stored_upstream`'s labeling tables as the pipeline derives them: the answers' consensus
    (Dawid-Skene, or `review`'s method with its probabilities) and the raw rows with it (what replay
    recomputes and compares)."""
    from labeling import aggregate
    from pipelines.assets.labeling import label_rows

    method, probs = review or ("dawid_skene", None)
    consensus = aggregate(annotations, method=method, probs=probs).consensus
    return {"raw_dataset": raw, "annotations": annotations, "consensus_labels": consensus,
            "labeled_dataset": label_rows(raw, consensus)}


def annotations_table(rows: list[tuple[str, str, str]]) -> pa.Table:
    """An `annotations` export of (example_id, annotator, label) answers, one timestamp for all."""
    return pa.table({
        "annotation_id": [f"{e[:8]}-{w}" for e, w, _ in rows],
        "example_id": [e for e, _, _ in rows],
        "annotator": [w for _, w, _ in rows],
        "label": [lab for _, _, lab in rows],
        "created_at": ["2026-01-01T00:00:00Z"] * len(rows),
        "updated_at": ["2026-01-01T00:00:00Z"] * len(rows),
        "lead_time_s": [3.0] * len(rows),
    })
