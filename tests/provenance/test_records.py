"""Records: RFC 8785 bytes, CID identity, refusal of non-canonical or tampered bytes, PROV-JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prov.model import ProvDocument

from provenance.errors import RecordError
from provenance.records import Record, load_record, prov_json, records_by_cid, topological_order, utc_time
from serving.sample import CODE, SampleRun
from storage import BlockStore, cid_for_bytes


def _record(**overrides: object) -> Record:
    fields = dict(
        activity="snapshot",
        agent="dagster:run-1",
        started_at="2026-01-01T00:00:00Z",
        ended_at="2026-01-01T00:00:05Z",
        code=CODE,
        inputs={"raw": "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"},
        outputs={"examples": "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"},
        params={"b": 1.5, "a": [3, "é"], "z": None},
    )
    fields.update(overrides)
    return Record(**fields)  # type: ignore[arg-type]


def test_bytes_are_rfc8785_and_cid_is_identity(store: BlockStore) -> None:
    record = _record()
    data = record.canonical_bytes()
    # Independent check of the canonical form: sorted keys, no whitespace, UTF-8 kept.
    plain = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert data == plain.encode()
    cid = store.put_bytes(data)
    assert cid == record.cid() == cid_for_bytes(data)
    assert load_record(store, cid) == record
    # Same content built in another key order: same bytes, same CID.
    assert _record(params={"z": None, "a": [3, "é"], "b": 1.5}).cid() == cid


def test_non_canonical_or_foreign_bytes_are_refused(store: BlockStore) -> None:
    pretty = json.dumps(_record().to_json(), indent=2).encode()
    with pytest.raises(RecordError, match="not RFC 8785 canonical"):
        load_record(store, store.put_bytes(pretty))
    with pytest.raises(RecordError, match="not a Caravan provenance record"):
        load_record(store, store.put_bytes(b'{"schema":"other"}'))
    with pytest.raises(RecordError, match="not in the content store"):
        load_record(store, _record(agent="nobody").cid())


def test_tampered_stored_record_is_caught(store: BlockStore) -> None:
    cid = store.put_bytes(_record().canonical_bytes())
    block = next(p for p in (store.root / "data").rglob("*") if p.is_file())
    data = bytearray(block.read_bytes())
    data[len(data) // 2] ^= 1
    block.write_bytes(bytes(data))
    with pytest.raises(RecordError, match=cid):
        load_record(store, cid)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"activity": "Bad Name"}, "lowercase name"),
        ({"agent": ""}, "needs an agent"),
        ({"started_at": "yesterday"}, "must look like"),
        ({"ended_at": "2025-12-31T00:00:00Z"}, "before it starts"),
        ({"inputs": {"raw": "not-a-cid"}}, "not a valid CID"),
        ({"parents": ("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",) * 2}, "repeat a CID"),
        ({"activity": "weighting"}, "contributor_weights"),
        ({"params": {"x": float("nan")}}, "not canonical JSON"),
    ],
)
def test_bad_records_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        _record(**overrides).canonical_bytes()


def test_utc_time_refuses_naive_datetimes() -> None:
    import datetime as dt

    assert utc_time(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == "2026-01-02T03:04:05Z"
    with pytest.raises(RecordError, match="timezone-aware"):
        utc_time(dt.datetime(2026, 1, 2))


def test_lineage_order_and_prov_json_export(store: BlockStore, sample_run: SampleRun) -> None:
    records = records_by_cid(store, sample_run.records.values())
    order = topological_order(records)
    for cid in order:
        assert all(order.index(p) < order.index(cid) for p in records[cid].parents)
    assert order[-1] == sample_run.head
    text = prov_json(records)
    doc = ProvDocument.deserialize(content=text, format="json")
    activities = {str(a.identifier) for a in doc.get_records() if a.get_type().localpart == "Activity"}
    assert activities == {f"ipfs:{cid}" for cid in records}
    exported = json.loads(text)
    assert f"ipfs:{sample_run.raw_cid}" in exported["entity"]
    assert len(exported["wasInformedBy"]) == sum(len(r.parents) for r in records.values())


def test_code_version_flags_a_dirty_working_tree(tmp_path, store: BlockStore) -> None:
    """HEAD alone cannot name code with uncommitted changes: the record says the tree was dirty."""
    import subprocess

    from provenance.records import CodeVersion, code_version

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "m.py").write_text("x = 1\n")
    git("add", "m.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = code_version(repo=tmp_path)
    assert clean.git_commit and len(clean.git_commit) == 40 and clean.dirty is False
    (tmp_path / "m.py").write_text("x = 2\n")
    assert code_version(repo=tmp_path).dirty is True
    git("checkout", "m.py")
    (tmp_path / "new.py").write_text("y = 1\n")  # an untracked, not ignored file is code too
    assert code_version(repo=tmp_path).dirty is True
    (tmp_path / "new.py").unlink()
    # the project's own ignores keep its environments out, symlinked ones too (a clone sharing a venv)
    (tmp_path / ".gitignore").write_text((Path(__file__).resolve().parents[2] / ".gitignore").read_text())
    git("add", ".gitignore")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "two")
    for name in (".venv", ".venv-labelstudio", "node_modules"):
        (tmp_path / name).symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / ".caravan").mkdir()
    assert code_version(repo=tmp_path).dirty is False

    dirty = _record(code=CodeVersion("caravan", "0.1.0", clean.git_commit, True))
    assert load_record(store, store.put_bytes(dirty.canonical_bytes())).code.dirty is True
    assert json.loads(dirty.canonical_bytes())["code"]["dirty"] is True
    # a record written before the flag existed keeps its bytes (and CID): no `dirty` key at all
    unknown = _record(code=CodeVersion("caravan", "0.1.0", clean.git_commit))
    assert "dirty" not in json.loads(unknown.canonical_bytes())["code"]
    with pytest.raises(RecordError, match="code.dirty"):
        _record(code=CodeVersion("caravan", "0.1.0", clean.git_commit, "yes"))  # type: ignore[arg-type]
