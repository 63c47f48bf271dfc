import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.datasets import DatasetError, load_source, to_examples
from pipelines.demo_data import PROVIDERS, write_digits


def test_example_id_is_content_hash_independent_of_order_and_provider(tmp_path):
    t = pa.table({"text": ["a", "b", "a"], "n": [1, 2, 1], "provider": ["p2", "p1", "p1"]})
    pq.write_table(t, tmp_path / "d.parquet")
    examples, report = to_examples(load_source(str(tmp_path / "d.parquet")))
    assert report.duplicates_dropped == 1 and examples.num_rows == 2
    # the duplicate is kept under the provider that sorts first, whatever the input order
    dup = examples.filter(pa.compute.equal(examples["text"], "a"))
    assert dup["provider"].to_pylist() == ["p1"]
    reversed_rows = t.take([2, 1, 0])
    pq.write_table(reversed_rows, tmp_path / "r.parquet")
    again, _ = to_examples(load_source(str(tmp_path / "r.parquet")))
    assert again.column("example_id").to_pylist() == examples.column("example_id").to_pylist()


def test_csv_and_parquet_give_same_ids(tmp_path):
    (tmp_path / "d.csv").write_text("text,n,provider\nhello,3,p\n")
    pq.write_table(pa.table({"text": ["hello"], "n": [3.0], "provider": ["p"]}), tmp_path / "d.parquet")
    a, _ = to_examples(load_source(str(tmp_path / "d.csv")))
    b, _ = to_examples(load_source(str(tmp_path / "d.parquet")))
    assert a["example_id"].to_pylist() == b["example_id"].to_pylist()


def test_a_gap_is_the_same_content_from_csv_and_parquet_and_infinity_is_named(tmp_path):
    """An empty CSV cell (null) and a NaN written by NumPy are the same missing value, so the same id; an
    infinite number has no canonical JSON and is refused by name rather than crashing ingest."""
    (tmp_path / "d.csv").write_text("n,m,provider\n3,,p\n")
    pq.write_table(pa.table({"n": [3.0], "m": [float("nan")], "provider": ["p"]}), tmp_path / "d.parquet")
    a, _ = to_examples(load_source(str(tmp_path / "d.csv")))
    b, _ = to_examples(load_source(str(tmp_path / "d.parquet")))
    assert a["example_id"].to_pylist() == b["example_id"].to_pylist()
    pq.write_table(pa.table({"n": [float("inf")], "provider": ["p"]}), tmp_path / "inf.parquet")
    with pytest.raises(DatasetError, match="infinite number"):
        to_examples(load_source(str(tmp_path / "inf.parquet")))


def test_folder_gives_one_provider_per_file(tmp_path):
    write_digits(tmp_path, limit=50)
    examples, report = to_examples(load_source(str(tmp_path)))
    assert report.providers == len(PROVIDERS) and examples.num_rows == 50
    assert set(examples["provider"].to_pylist()) == set(PROVIDERS)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("d.xlsx", "x", "unknown dataset format"),
        ("d.csv", "text\nhello\n", r"d\.csv \(baf\w+\) has no 'provider' column"),
        ("d.jsonl", "{not json", "cannot read"),
    ],
)
def test_bad_sources_are_named(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=message):
        to_examples(load_source(str(tmp_path / name)))


def test_missing_source(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_source(str(tmp_path / "nope.parquet"))
