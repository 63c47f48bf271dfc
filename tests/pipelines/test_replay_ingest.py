"""Replay makes again, from the records, what came before training: the examples and their credit from
the source files the ingest record names, the pinned snapshot, and the validation set and gold the
version declared (`pipelines.replay.check_ingest`, `check_snapshot`, `check_declared`), on a real
ingest (`ingested_v2`: three providers and a copycat)."""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from pipelines.content_io import store_value
from pipelines.replay import check_declared, check_ingest, check_snapshot
from provenance import Findings, IngestRecord, SnapshotRecord
from storage import read_parquet, snapshot_parquet
from tests.pipelines.test_copies_once import ingested_v2


def test_replay_makes_the_examples_and_their_credit_again_from_the_source_files(tmp_path, monkeypatch):
    """`pipelines.replay.check_ingest`: an honest ingest is what its source files make; examples moved to
    another provider, or copies credited to their copier, stored under consistent CIDs, are not."""
    v2 = ingested_v2(tmp_path, monkeypatch)
    cid, record, store = v2.cid, v2.record, v2.store

    def checked(forged) -> Findings:
        found = Findings()
        check_ingest(store, cid, forged, found)
        return found

    honest = checked(record)
    assert honest.ok and not honest.skipped, honest.failures
    examples = read_parquet(store.get(record.outputs[IngestRecord.EXAMPLES]))
    a_rows = [i for i, p in enumerate(examples["provider"].to_pylist()) if p == "a"][:5]
    moved = examples["provider"].to_pylist()
    for i in a_rows:
        moved[i] = "c"
    credit = read_parquet(store.get(record.outputs[IngestRecord.EXAMPLE_CREDIT]))
    copied = {e for e, r in zip(credit["example_id"].to_pylist(), credit["representative"].to_pylist(),
                                strict=True) if e != r}  # the copycat's rows, credited to b
    paid = [("copycat" if e in copied else p) for e, p in zip(credit["example_id"].to_pylist(),
                                                             credit["provider"].to_pylist(), strict=True)]
    forgeries = {
        IngestRecord.EXAMPLES: (examples.set_column(examples.schema.get_field_index("provider"), "provider",
                                                    pa.array(moved)), "5 examples differ, credited to a, c"),
        IngestRecord.EXAMPLE_CREDIT: (credit.set_column(credit.schema.get_field_index("provider"), "provider",
                                                        pa.array(paid)),
                                      f"{len(copied)} examples differ, credited to b, copycat"),
    }
    for output, (table, said) in forgeries.items():
        found = checked(dataclasses.replace(record, outputs={**record.outputs,
                                                             output: store_value(store, table).cid}))
        assert found.names() == {"ingest_differs"} and len(found.failures) == 1, found.failures
        assert said in found.failures[0].detail
    # a record that names no source files (a hub dataset's, or one from before) is skipped and said
    bare = dataclasses.replace(record, params={k: v for k, v in record.params.items() if k != "source_files"})
    found = checked(bare)
    assert found.ok and [s.name for s in found.skipped] == ["SKIP (ingest)"]
    # the pinned snapshot holds the examples its record names (`check_snapshot`), and a forged one does not
    snapshot_cid, snapshot = v2.snapshot
    for pinned, names in ((snapshot, set()), (dataclasses.replace(snapshot, outputs={
            SnapshotRecord.SNAPSHOT: store.put_bytes(snapshot_parquet(examples.slice(1)), cid_version=1)}),
            {"ingest_differs"})):
        found = Findings()
        check_snapshot(store, snapshot_cid, pinned, examples, found)
        assert found.names() == names


def test_replay_holds_the_validation_set_and_gold_to_those_the_version_declared(tmp_path, monkeypatch):
    """`pipelines.replay.check_declared`: influence measured against the declared validation set (made
    again from its file) and labelers graded on the declared gold pass; any other, or none, fails."""
    v2 = ingested_v2(tmp_path, monkeypatch)
    examples = read_parquet(v2.store.get(v2.record.outputs[IngestRecord.EXAMPLES]))
    labeled = examples.append_column("label", pa.array(["x"] * examples.num_rows))
    declared = v2.catalog.validation("v2", labeled, v2.store)  # what training measures against
    honest, gold = store_value(v2.store, declared).cid, v2.entry["gold"]["cid"]
    other = store_value(v2.store, declared.slice(0, 12)).cid  # targets of the publisher's choosing

    def checked(validation, graded, record=v2.record) -> set[str]:
        found = Findings()
        check_declared(v2.store, v2.cid, record, labeled, validation, graded, found)
        assert not found.skipped
        return found.names()

    assert checked(honest, gold) == set()
    assert checked(other, gold) == {"validation_differs"}
    assert checked(None, gold) == {"validation_differs"}  # the declared set left out
    assert checked(honest, v2.entry["validation"]["cid"]) == {"gold_differs"}
    assert checked(honest, None) == {"gold_differs"}
    undeclared = dataclasses.replace(v2.record, params={**v2.record.params, "validation": None, "gold": None})
    assert checked(None, None, undeclared) == set()
    assert checked(honest, None, undeclared) == {"validation_differs"}  # targets the version never declared
