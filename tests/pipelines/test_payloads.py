"""Text and image datasets at ingest: the payload contract (text: UTF-8 `string`; image: `binary` PNG/JPEG
bytes), image folders and image columns of bytes or paths, named by content, and every bad input
refused with the rows it concerns."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rfc8785
from PIL import Image

from pipelines.datasets import DatasetError, Payload, image_problem, load_source, to_examples, typed_payload
from pipelines.replay import check_ingest
from pipelines.resources import DatasetCatalog
from provenance import Findings
from storage import BlockStore, cid_for_file, read_parquet
from tests.pipelines.test_ingest_identity import ingest_stage

IMAGE = Payload("image", "image")
TEXT = Payload("text", "text")


def draw(seed: int, fmt: str = "PNG", size: tuple[int, int] = (12, 10)) -> bytes:
    """A small image drawn with Pillow (distinct per seed)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def image_folder(root: Path) -> dict[str, list[bytes]]:
    """Two providers' subfolders of PNG and JPEG files; `beta` also holds a copy of one of `alpha`'s."""
    images = {"alpha": [draw(0), draw(1, "JPEG")], "beta": [draw(2), draw(3), draw(0)]}
    names = {"PNG": "png", "JPEG": "jpg"}
    for provider, items in images.items():
        (root / provider / "nested").mkdir(parents=True)
        for i, data in enumerate(items):
            fmt = Image.open(io.BytesIO(data)).format
            where = root / provider / ("nested" if i == 2 else "")
            (where / f"img{i}-{provider}.{names[fmt]}").write_bytes(data)
    return images


def image_id(data: bytes, field: str = "image") -> str:
    """An image example's id by an independent route: sha256 of the canonical JSON of its hex bytes."""
    return hashlib.sha256(rfc8785.dumps({field: data.hex()})).hexdigest()


def test_an_image_folder_gives_one_binary_row_per_image_named_by_bytes(tmp_path):
    images = image_folder(tmp_path / "data")
    examples, report = to_examples(load_source(str(tmp_path / "data"), payload=IMAGE))
    assert examples.schema.field("image").type == pa.binary()
    assert report.rows_in == 5 and report.duplicates_dropped == 1 and report.providers == 2
    every = [d for items in images.values() for d in items]
    assert sorted(examples["example_id"].to_pylist()) == sorted({image_id(d) for d in every})
    by_id = {r["example_id"]: r for r in examples.to_pylist()}
    for data in every:
        assert by_id[image_id(data)]["image"] == data  # the file's own bytes, never re-encoded
    # each row's source is its image file's CID, not its path
    png = next((tmp_path / "data" / "beta").glob("img0-*"))
    assert by_id[image_id(images["beta"][0])]["source"] == cid_for_file(png, cid_version=1)


def test_an_image_folder_fills_the_labeling_field(tmp_path):
    image_folder(tmp_path / "data")
    table = load_source(str(tmp_path / "data"), payload=Payload("image", "photo"))
    assert "photo" in table.column_names and "image" not in table.column_names


def test_image_columns_of_bytes_and_of_relative_paths_give_the_same_examples(tmp_path):
    blobs = [draw(i) for i in range(3)] + [draw(9, "JPEG")]
    providers = ["p1", "p1", "p2", "p2"]
    pq.write_table(
        pa.table({"provider": providers, "image": pa.array(blobs, pa.binary())}), tmp_path / "b.parquet"
    )
    folder = tmp_path / "paths"
    (folder / "imgs" / "deep").mkdir(parents=True)
    names = ["imgs/a.png", "imgs/deep/b.png", "./imgs/c.png", "imgs/deep/../d.jpg"]
    for name, data in zip(names, blobs, strict=True):
        (folder / name).resolve().write_bytes(data)
    rows = [{"provider": p, "image": n} for p, n in zip(providers, names, strict=True)]
    (folder / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    by_bytes, _ = to_examples(load_source(str(tmp_path / "b.parquet"), payload=IMAGE))
    by_path, _ = to_examples(load_source(str(folder / "t.jsonl"), payload=IMAGE))
    assert by_path.schema.field("image").type == pa.binary()
    assert by_path.select(["example_id", "image", "provider"]) == by_bytes.select(
        ["example_id", "image", "provider"]
    )
    assert sorted(by_path["example_id"].to_pylist()) == sorted(image_id(b) for b in blobs)


@pytest.mark.parametrize("layout", ["folder", "paths"])
def test_the_same_images_from_two_folders_give_the_same_cids_snapshot_and_ids(tmp_path, monkeypatch, layout):
    first = tmp_path / "alice" / "data"
    if layout == "folder":
        images = image_folder(first)
        source = first
    else:
        images = {"p": [draw(5), draw(6)]}
        (first / "pics").mkdir(parents=True)
        for i, data in enumerate(images["p"]):
            (first / "pics" / f"{i}.png").write_bytes(data)
        pq.write_table(
            pa.table({"provider": ["p", "p"], "image": ["pics/0.png", "pics/1.png"]}), first / "t.parquet"
        )
        source = first / "t.parquet"
    second = tmp_path / "bob" / "elsewhere"
    shutil.copytree(first, second)
    labeling = {"kind": "image", "field": "image", "choices": ["a", "b"]}
    a = ingest_stage(tmp_path / "home-a", source, monkeypatch, labeling)
    b = ingest_stage(tmp_path / "home-b", second / source.relative_to(first), monkeypatch, labeling)
    assert a["snapshot"] == b["snapshot"] and a["entry"] == b["entry"] and a["catalog"] == b["catalog"]
    assert a["record"].outputs == b["record"].outputs and a["record"].params == b["record"].params
    assert str(tmp_path) not in a["catalog"] and "alice" not in a["catalog"]
    # the snapshot holds the bytes themselves, under ids that hash them
    snap = read_parquet(a["store"].get(a["snapshot"]))
    assert snap.schema.field("image").type == pa.binary()
    distinct = {d for items in images.values() for d in items}
    assert sorted(snap["image"].to_pylist()) == sorted(distinct)
    assert snap["example_id"].to_pylist() == sorted(image_id(d) for d in distinct)
    # every file the catalog names (tables, their referenced images, folder images) is pinned by CID
    named = {f["cid"] for f in a["entry"]["sources"]} | {
        r["cid"] for f in a["entry"]["sources"] for r in f.get("refs", [])
    }
    assert len(named) == (len(distinct) + (layout == "paths")) and named <= a["store"].pins()
    # the ingest record names them too: a replay fetches every image by CID
    recorded = a["record"].params["source_files"]
    assert {f["cid"] for f in recorded} | {r["cid"] for f in recorded for r in f.get("refs", [])} == named
    # ... and a replay makes the same examples and credit from them (`pipelines.replay.check_ingest`)
    remade = Findings()
    check_ingest(b["store"], "ingest", b["record"], remade)
    assert remade.ok and not remade.skipped, remade.failures


def _bad(tmp_path: Path, name: str, table: pa.Table | str | bytes) -> str:
    path = tmp_path / name
    if isinstance(table, pa.Table):
        pq.write_table(table, path)
    else:
        path.write_bytes(table.encode() if isinstance(table, str) else table)
    return str(path)


@pytest.mark.parametrize(
    "name, content, payload, message",
    [
        (
            "e.csv",
            'provider,text\np,hello\np,\np,"  \t "\n',
            TEXT,
            r"e\.csv rows \[1, 2\] \(counted from 0\): 'text' is empty or whitespace only; remove those rows",
        ),
        (
            "u.csv",
            b"provider,text\np,fine\np,caf\xe9 latin-1\n",
            TEXT,
            r"u\.csv row \[1\] \(counted from 0\): 'text' is not UTF-8 text; re-save the file encoded as UTF",
        ),
        (
            "u.jsonl",
            b'{"provider": "p", "text": "ok"}\n{"provider": "p", "text": "caf\xe9"}\n',
            TEXT,
            r"u\.jsonl row \[1\] \(counted from 0\): 'text' is not UTF-8",
        ),
        (
            "u.parquet",
            pa.table({"provider": ["p", "p"], "text": pa.array([b"ok", b"\xff\xfe"], pa.binary())}),
            TEXT,
            r"row \[1\].*not UTF-8",
        ),
        (
            "i.parquet",
            pa.table({"provider": ["p"] * 3, "image": pa.array([draw(1), b"not an image", draw(2)[:40]])}),
            IMAGE,
            r"i\.parquet rows \[1, 2\] .*does not decode as a PNG or JPEG image \(row 1: .*\); replace",
        ),
        (
            "g.parquet",
            pa.table({"provider": ["p"], "image": pa.array([draw(1, "GIF")])}),
            IMAGE,
            r"row \[0\].*it is GIF, not PNG or JPEG",
        ),
        (
            "l.parquet",
            pa.table({"provider": ["p"], "image": [[0, 1, 2, 3]]}),
            IMAGE,
            r"image column 'image' holds list<element: int64>, not PNG/JPEG file bytes \(binary\) or file",
        ),
        (
            "x.parquet",
            pa.table({"provider": ["p"], "img": pa.array([draw(1)])}),
            IMAGE,
            r"x\.parquet has no payload column 'image' \(the labeling field\); its columns: \['provider'",
        ),
    ],
)
def test_bad_payloads_are_refused_naming_the_rows_and_the_fix(tmp_path, name, content, payload, message):
    with pytest.raises(DatasetError, match=message):
        load_source(_bad(tmp_path, name, content), payload=payload)


def test_image_paths_outside_the_folder_or_missing_are_refused_naming_the_rows(tmp_path):
    data = tmp_path / "data"
    (data / "pics").mkdir(parents=True)
    (data / "pics" / "ok.png").write_bytes(draw(1))
    (tmp_path / "secret.png").write_bytes(draw(2))
    (data / "pics" / "link.png").symlink_to(tmp_path / "secret.png")
    for paths, message in [
        (
            ["pics/ok.png", "../secret.png", str(tmp_path / "secret.png")],
            r"rows \[1, 2\] .*outside the dataset",
        ),
        (["pics/link.png"], r"row \[0\] .*outside the dataset's folder"),
        (["pics/ok.png", "pics/gone.png"], r"row \[1\] .*no image file at 'pics/gone.png'"),
    ]:
        pq.write_table(pa.table({"provider": ["p"] * len(paths), "image": paths}), data / "t.parquet")
        with pytest.raises(DatasetError, match=message):
            load_source(str(data / "t.parquet"), payload=IMAGE)


def test_a_folder_image_that_does_not_decode_is_named_by_its_file(tmp_path):
    image_folder(tmp_path / "data")
    (tmp_path / "data" / "beta" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DatasetError, match=r"beta/broken\.png row \[0\].*does not decode"):
        load_source(str(tmp_path / "data"), payload=IMAGE)


def test_images_outside_a_provider_subfolder_are_refused(tmp_path):
    image_folder(tmp_path / "data")
    (tmp_path / "data" / "stray.png").write_bytes(draw(4))
    with pytest.raises(DatasetError, match=r"stray\.png\): move each image into the subfolder named after"):
        load_source(str(tmp_path / "data"), payload=IMAGE)


def test_numeric_columns_under_kind_text_are_features_left_as_they_are(tmp_path):
    table = pa.table({"provider": ["p", "p"], "text": [3.5, 4.0], "f1": [[1, 2], [3, 4]]})
    loaded = load_source(_bad(tmp_path, "n.parquet", table), payload=TEXT)
    assert loaded.select(["provider", "text", "f1"]) == table


def test_a_hugging_face_image_column_gives_its_bytes_and_refuses_paths():
    hf = pa.array(
        [{"bytes": draw(1), "path": "a.png"}], pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    )
    table = typed_payload(pa.table({"provider": ["p"], "image": hf}), IMAGE, "hf:x")
    assert table["image"].to_pylist() == [draw(1)] and table.schema.field("image").type == pa.binary()
    with pytest.raises(DatasetError, match=r"holds string, not PNG/JPEG file bytes \(binary\); store"):
        typed_payload(
            pa.table({"provider": ["p"], "image": ["a.png"]}), IMAGE, "hf:x"
        )  # no folder to resolve


def test_image_problem_accepts_png_and_jpeg_only():
    assert image_problem(draw(1)) is None and image_problem(draw(1, "JPEG")) is None
    assert "not PNG or JPEG" in image_problem(draw(1, "BMP"))
    assert image_problem(b"") is not None


def test_cli_ingest_refuses_bad_payloads_registering_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli import app

    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    runner = CliRunner()
    (tmp_path / "t.csv").write_text("provider,text\np,spam spam\np,   \n")
    bad = runner.invoke(
        app,
        [
            "ingest",
            str(tmp_path / "t.csv"),
            "--version",
            "t1",
            "--kind",
            "text",
            "--field",
            "text",
            "--choices",
            "spam,ham",
        ],
    )
    assert bad.exit_code == 1 and "row [1] (counted from 0): 'text' is empty" in bad.stderr
    assert not (tmp_path / "home" / "datasets" / "t1.json").exists()
    assert not (tmp_path / "home" / "blocks").exists() or not BlockStore(tmp_path / "home" / "blocks").pins()
    image_folder(tmp_path / "imgs")
    ok = runner.invoke(
        app,
        [
            "ingest",
            str(tmp_path / "imgs"),
            "--version",
            "i1",
            "--kind",
            "image",
            "--field",
            "image",
            "--choices",
            "a,b",
        ],
    )
    assert ok.exit_code == 0, ok.output
    said = json.loads(ok.stdout.strip().splitlines()[-1])
    assert said.pop("near_duplicates").startswith("0 copies in 0 groups (threshold ")
    assert said == {"version": "i1", "examples": 4, "providers": 2, "duplicates_dropped": 1}
    entry = json.loads((tmp_path / "home" / "datasets" / "i1.json").read_text())
    assert sorted(f["provider"] for f in entry["sources"]) == ["alpha", "alpha", "beta", "beta", "beta"]
    assert entry["labeling"] == {"kind": "image", "field": "image", "choices": ["a", "b"]}


def test_a_copied_image_file_is_credited_to_the_provider_who_registered_it_first(tmp_path):
    """Image files are whole examples: another provider's later copy of one has the same CID, but not
    its first registrant's time, so the copy earns its copier nothing."""
    t0, t1 = "2025-03-01T09:30:00Z", "2025-04-01T09:30:00Z"
    for version in ("v1", "v2"):
        (tmp_path / version / "alpha").mkdir(parents=True)
        for i in (0, 1):
            (tmp_path / version / "alpha" / f"{i}.png").write_bytes(draw(i))
    (tmp_path / "v2" / "beta").mkdir()
    (tmp_path / "v2" / "beta" / "mine.png").write_bytes(draw(0))  # a copy of alpha's first image
    (tmp_path / "v2" / "beta" / "own.png").write_bytes(draw(7))
    catalog, store = DatasetCatalog(root=str(tmp_path / "catalog")), BlockStore(tmp_path / "blocks")
    labeling = {"kind": "image", "field": "image", "choices": ["a", "b"]}
    catalog.register("v1", str(tmp_path / "v1"), store=store, labeling=labeling, registered_at=t0)
    entry = catalog.register("v2", str(tmp_path / "v2"), store=store, labeling=labeling, registered_at=t1)
    times = {f["name"]: f["registered_at"] for f in entry["sources"]}
    assert times == {"alpha/0.png": t0, "alpha/1.png": t0, "beta/mine.png": t1, "beta/own.png": t1}
    examples, report = to_examples(catalog.load("v2", store), catalog.registered_at("v2"))
    assert report.duplicates_dropped == 1
    credit = {(r["example_id"], r["provider"]): r["share"] for r in report.grouping.credit.to_pylist()}
    assert credit[(image_id(draw(0)), "alpha")] == 1.0 and (image_id(draw(0)), "beta") not in credit
    assert credit[(image_id(draw(7)), "beta")] == 1.0


def test_cli_ingest_registers_a_table_shown_as_rows_and_names_the_kinds(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.assets.training import TrainingConfig, recipe_for
    from pipelines.cli import app

    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "t.csv").write_text("provider,customer,plan,tenure\np,c1,basic,3\np,c2,pro,\nq,c3,basic,40\n")
    args = ["ingest", str(tmp_path / "t.csv"), "--version", "t1", "--field", "row", "--choices", "churn,stay"]
    bad = CliRunner().invoke(app, [*args, "--kind", "audio"])
    assert bad.exit_code == 1 and "--kind must be one of text, image, table" in bad.stderr
    ok = CliRunner().invoke(app, [*args, "--kind", "table"])
    assert ok.exit_code == 0, ok.output
    said = json.loads(ok.stdout.strip().splitlines()[-1])
    assert said["examples"] == 3  # a gap is content too
    # as the MLP reads them: the id is no feature, nor is the plan in 3 rows (too few per category)
    assert said["near_duplicates"].endswith("compared on tenure")
    entry = json.loads((tmp_path / "home" / "datasets" / "t1.json").read_text())
    assert entry["labeling"] == {"kind": "table", "field": "row", "choices": ["churn", "stay"]}
    table = load_source(str(tmp_path / "t.csv"), payload=Payload("table", "row"))
    assert recipe_for(TrainingConfig(), table, "row") == ("mlp", None)  # the row's columns train an MLP

    for show, words in (("plan,fee", "--show names ['fee'], not columns of"), ("provider", "ids")):
        refused = CliRunner().invoke(app, [*args, "--kind", "table", "--version", "t2", "--show", show])
        assert refused.exit_code == 1 and words in refused.stderr, refused.output
    text = CliRunner().invoke(app, [*args, "--kind", "text", "--version", "t2", "--show", "plan"])
    assert text.exit_code == 1 and "a text project shows its field" in text.stderr
    assert not (tmp_path / "home" / "datasets" / "t2.json").exists()  # nothing registered
    shown = CliRunner().invoke(app, [*args, "--kind", "table", "--version", "t2", "--show", "tenure, plan"])
    assert shown.exit_code == 0, shown.output
    entry = json.loads((tmp_path / "home" / "datasets" / "t2.json").read_text())
    assert entry["labeling"]["show"] == ["tenure", "plan"]
