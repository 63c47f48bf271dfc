"""`caravan ingest --validation`: a trusted, held-out set; bad ones are refused before anything is stored."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.cli import app

DATA = pa.table({"text": ["a", "b", "c", "d"], "provider": ["p1", "p1", "p2", "p2"]})


def _ingest(tmp_path, monkeypatch, validation: pa.Table, data: pa.Table = DATA):
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CARAVAN_STORE_DIR", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    pq.write_table(data, tmp_path / "data.parquet")
    pq.write_table(validation, tmp_path / "validation.parquet")
    args = ["ingest", str(tmp_path / "data.parquet"), "--version", "v1", "--kind", "text", "--field", "text"]
    args += ["--choices", "pos,neg", "--validation", str(tmp_path / "validation.parquet")]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(
    "validation, message",
    [
        (pa.table({"text": ["b", "z"], "label": ["pos", "neg"]}), "also in the dataset"),
        (pa.table({"text": ["y", "z"], "label": ["pos", "maybe"]}), "not in the label set"),
        (pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}), "is empty"),
        (pa.table({"text": ["y", "z"]}), "no 'label' column"),
        (pa.table({"body": ["y", "z"], "label": ["pos", "neg"]}), "has no payload column 'text'"),
        (
            pa.table({"text": ["y", "z"], "body": ["u", "v"], "label": ["pos", "neg"]}),
            "differ from the dataset's",
        ),
    ],
    ids=["overlaps", "unknown-label", "empty", "no-label", "no-payload", "other-columns"],
)
def test_a_bad_validation_set_is_refused_and_nothing_is_registered(
    tmp_path, monkeypatch, validation, message
):
    result = _ingest(tmp_path, monkeypatch, validation)
    assert result.exit_code == 1 and message in result.output
    assert not (tmp_path / "home" / "datasets" / "v1.json").exists()  # nothing registered
    blocks = tmp_path / "home" / "blocks"
    assert not blocks.exists() or not [p for p in blocks.rglob("*") if p.is_file()]  # nothing pinned


def test_an_overlap_is_found_where_the_data_carries_labels_of_its_own(tmp_path, monkeypatch):
    """A source's own `label` column is part of its examples' content ids, never of a validation
    example's: the same text is still the same example, and is refused."""
    data = DATA.append_column("label", pa.array(["pos", "neg", "pos", "neg"]))
    result = _ingest(tmp_path, monkeypatch, pa.table({"text": ["z", "c"], "label": ["neg", "pos"]}), data)
    assert result.exit_code == 1 and "1 validation examples are also in the dataset" in result.output
    assert not (tmp_path / "home" / "datasets" / "v1.json").exists()


def test_a_good_validation_set_is_pinned_and_named_in_the_catalog(tmp_path, monkeypatch):
    import json

    result = _ingest(tmp_path, monkeypatch, pa.table({"text": ["y", "z"], "label": ["pos", "neg"]}))
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "home" / "datasets" / "v1.json").read_text())
    assert entry["validation"]["name"] == "validation.parquet" and entry["validation"]["cid"].startswith(
        "bafk"
    )
