"""A source is named by its content: the same files ingested from two folders give the same CIDs.

Nothing about the ingesting machine (a folder, a user name) may reach what is pinned or recorded,
or two honest replays of one dataset would disagree on its snapshot and so on the run id.
"""

from __future__ import annotations

import json
import re
import shutil

import dagster as dg
import pytest

from pipelines.assets import ingest
from pipelines.demo_data import write_digits
from pipelines.resources import DatasetCatalog, resources_for
from pipelines.settings import load_settings
from provenance import INGEST, load_record

VERSION = "identity-v1"
LABELING = {"kind": "image", "field": "image", "choices": ["0", "1"]}
REGISTERED = "2025-03-01T09:30:00Z"  # the same registration time on both machines


def ingest_stage(home, folder, monkeypatch, labeling: dict = LABELING) -> dict:
    """Register `folder` under a fresh CARAVAN_HOME and materialize the ingest stage."""
    monkeypatch.setenv("CARAVAN_HOME", str(home))
    monkeypatch.delenv("CARAVAN_STORE_DIR", raising=False)
    settings = load_settings()
    resources = resources_for(settings)
    store = resources["store"].client()
    entry = DatasetCatalog(root=str(settings.catalog_dir)).register(
        VERSION, str(folder), store=store, labeling=labeling, registered_at=REGISTERED
    )
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("dataset_version", [VERSION])
        result = dg.materialize(
            [ingest.raw_dataset, ingest.dataset_snapshot],
            partition_key=VERSION,
            instance=instance,
            resources=resources,
        )
    assert result.success
    snapshot = result.output_for_node("dataset_snapshot")
    record = load_record(store, resources["lineage"].cid_of(INGEST, VERSION))
    files = (settings.home / "datasets" / f"{VERSION}.json").read_text()
    return {"entry": entry, "snapshot": snapshot["cid"], "record": record, "catalog": files, "store": store}


def test_the_same_files_from_two_folders_give_the_same_cids(tmp_path, monkeypatch) -> None:
    first = write_digits(tmp_path / "alice" / "data", limit=60)
    second = tmp_path / "bob" / "elsewhere" / "data"
    shutil.copytree(first, second)
    a = ingest_stage(tmp_path / "home-a", first, monkeypatch)
    b = ingest_stage(tmp_path / "home-b", second, monkeypatch)
    assert a["snapshot"] == b["snapshot"]
    assert a["entry"] == b["entry"] and a["catalog"] == b["catalog"]
    assert a["record"].inputs == b["record"].inputs and a["record"].outputs == b["record"].outputs
    assert a["record"].params == b["record"].params
    # each source file by name, CID, provider and registration time: a replay needs no other version
    assert a["record"].params["source_files"] == [
        {"name": f["name"], "cid": f["cid"], "provider": f["provider"], "registered_at": REGISTERED}
        for f in a["entry"]["sources"]
    ]
    for published in (a["catalog"], json.dumps(a["record"].to_json())):
        assert str(tmp_path) not in published and "alice" not in published  # no local path anywhere
    # every source file is pinned under the CID the catalog names
    store = resources_for(load_settings())["store"].client()
    assert {f["cid"] for f in b["entry"]["sources"]} <= store.pins()


def test_registering_other_content_under_a_known_version_is_refused(tmp_path, monkeypatch) -> None:
    folder = write_digits(tmp_path / "data", limit=40)
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    settings = load_settings()
    catalog = DatasetCatalog(root=str(settings.catalog_dir))
    store = resources_for(settings)["store"].client()
    entry = catalog.register(VERSION, str(folder), store=store, labeling=LABELING)
    again = catalog.register(VERSION, str(folder), store=store, labeling=LABELING)  # same content: a no-op
    assert again == entry and [f["provider"] for f in entry["sources"]] == sorted(
        f["provider"] for f in entry["sources"]
    )
    # every file of one call shares one time, UTC whole seconds; the same content keeps the earlier one
    times = {f["registered_at"] for f in entry["sources"]}
    assert len(times) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", times.pop())
    later = catalog.register(
        VERSION, str(folder), store=store, labeling=LABELING, registered_at="2999-01-01T00:00:00Z"
    )
    assert later == entry
    other = write_digits(tmp_path / "other", limit=41)
    with pytest.raises(ValueError, match="already registered with other sources"):
        catalog.register(VERSION, str(other), store=store, labeling=LABELING)
    relabeled = {**LABELING, "choices": [*LABELING["choices"], "other"]}
    with pytest.raises(ValueError, match=r"already registered with other labeling .*pick a new version name"):
        catalog.register(VERSION, str(folder), store=store, labeling=relabeled)


def test_a_hub_dataset_is_pinned_when_registered_and_never_read_again(tmp_path, monkeypatch) -> None:
    """`hf:NAME` is read once, at registration (offline, from the local cache; here a local dataset folder,
    which `datasets` loads as it loads a cached hub dataset), and pinned as one Parquet source file:
    ingest and replay read the pinned rows, so the version is those rows whatever the hub serves later."""
    import datasets.config  # its cache paths are fixed at import: set the one a load reads
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.replay import check_ingest
    from provenance import Findings, IngestRecord
    from storage import read_parquet

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    hub = tmp_path / "hub"
    hub.mkdir()
    texts = [f"review number {i}" for i in range(12)]
    pq.write_table(pa.table({"text": texts, "provider": ["shop-a", "shop-b"] * 6}), hub / "train.parquet")
    labeling = {"kind": "text", "field": "text", "choices": ["good", "bad"]}
    a = ingest_stage(tmp_path / "home", f"hf:{hub}", monkeypatch, labeling)
    (source,) = a["entry"]["sources"]
    assert source["name"].endswith(".parquet") and source["cid"] in a["store"].pins()
    assert [f["cid"] for f in a["record"].params["source_files"]] == [source["cid"]]
    shutil.rmtree(hub)  # the hub, and its cache, gone
    shutil.rmtree(tmp_path / "hf-cache")
    remade = Findings()
    check_ingest(a["store"], "ingest", a["record"], remade)  # a replay makes them from the pinned rows
    assert remade.ok and not remade.skipped, remade.failures
    examples = read_parquet(a["store"].get(a["record"].outputs[IngestRecord.EXAMPLES]))
    assert sorted(examples["text"].to_pylist()) == sorted(texts)
    assert set(examples["provider"].to_pylist()) == {"shop-a", "shop-b"}
