"""The demo's data: the digits as 8×8 grayscale PNGs (noise drawn into scanner-noisy's), the seeded text
generator, `caravan demo --data` (truth dropped before ingest), and both through the real Label Studio
to consensus labels and the labeled dataset."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.datasets import Payload, example_id, load_source, to_examples
from pipelines.demo import label_with_simulated_annotators, register_demo_data, serving_input
from pipelines.demo_data import (
    NOISY,
    PROVIDERS,
    DemoError,
    UserData,
    held_out,
    prepare_data,
    prepare_user_data,
    write_digits,
)
from pipelines.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
TOPICS = ("cooking", "science", "sport", "travel")


def script_module(name: str):
    """A generator of scripts/ as a module (`make_texts`, `make_table`)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_texts_module():
    return script_module("make_texts")


def _decoded(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.mode, image.size) == ("PNG", "L", (8, 8))
    return np.asarray(image, dtype=np.int64).reshape(64)


def test_the_digits_are_8x8_grayscale_pngs_with_the_noise_drawn_in(tmp_path):
    from sklearn.datasets import load_digits

    write_digits(tmp_path / "a")
    digits = load_digits().data.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(digits))  # write_digits's draw (seed 0)
    owner = np.arange(len(order)) % len(PROVIDERS)
    for p, provider in enumerate(PROVIDERS):
        table = pq.read_table(tmp_path / "a" / f"{provider}.parquet")
        assert table.schema.field("image").type == pa.binary() and table.column_names == ["image"]
        levels = np.stack([_decoded(b) for b in table["image"].to_pylist()])
        clean = np.rint(digits[order[owner == p]] * 255 / 16)
        changed = float((levels != clean).mean())
        if provider in NOISY:  # 60 % replaced by a draw from 17 levels: ~16/17 of those differ
            assert 0.5 < changed < 0.63, changed
        else:
            assert changed == 0.0
    again = write_digits(tmp_path / "b")
    for f in (tmp_path / "a").rglob("*.parquet"):
        assert f.read_bytes() == (again / f.relative_to(tmp_path / "a")).read_bytes()  # same bytes, same CIDs


def test_the_digits_demo_keys_its_truth_by_the_images_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    demo = prepare_data(load_settings(), limit=50)
    examples, _ = to_examples(load_source(str(demo.source), payload=demo.payload))
    assert sorted(demo.truth) == sorted(examples["example_id"].to_pylist())
    assert demo.labeling == {"kind": "image", "field": "image", "choices": [str(d) for d in range(10)]}
    assert demo.providers == tuple(sorted(PROVIDERS)) and set(demo.truth.values()) <= set(
        demo.labeling["choices"]
    )
    sent = serving_input("image", demo.samples[0])
    assert set(sent) == {"image_base64"} and base64.b64decode(sent["image_base64"]) == demo.samples[0]


def test_make_table_is_seeded_learnable_and_garbles_the_noisy_providers_rows(tmp_path):
    module = script_module("make_table")
    a = module.make_table(600, seed=3)

    def same(x: pa.Table, y: pa.Table) -> bool:  # pandas holds NaN equal to NaN
        return x.to_pandas().equals(y.to_pandas())

    assert same(a, module.make_table(600, seed=3)) and not same(a, module.make_table(600, seed=4))
    assert set(a.column_names) == {"provider", "customer", "name", *module.SHOWN, "label"}
    assert {r["provider"] for r in a.to_pylist()} == set(module.PROVIDERS)
    tenure = np.array(a["tenure_months"].to_pylist(), dtype=float)
    assert 0.05 < np.isnan(tenure).mean() < 0.15  # gaps, as a real export has them
    plan, label = np.array(a["plan"].to_pylist()), np.array(a["label"].to_pylist())
    recorded = ~np.isnan(tenure)
    truth = np.where(module.churns(plan, tenure), "churn", "stay")
    noisy = np.array(a["provider"].to_pylist()) == "crm-noisy"
    clean_agree = (truth == label)[recorded & ~noisy].mean()
    noisy_agree = (truth == label)[recorded & noisy].mean()
    assert clean_agree == 1.0 and noisy_agree < 0.85  # the rule holds on clean rows, not on garbled ones
    out = tmp_path / "c.parquet"
    script = REPO / "scripts" / "make_table.py"
    subprocess.run([sys.executable, str(script), str(out), "--rows", "30"], check=True, capture_output=True)
    assert same(pq.read_table(out), module.make_table(30))


def test_make_texts_is_seeded_with_four_topics_and_a_noisy_provider(tmp_path):
    module = make_texts_module()
    a, b = module.make_texts(400, seed=3), module.make_texts(400, seed=3)
    assert a == b and a != module.make_texts(400, seed=4)
    assert a.num_rows == 400 and len(set(a["text"].to_pylist())) == 400
    assert sorted(set(a["label"].to_pylist())) == list(TOPICS)
    rows = a.to_pylist()
    assert {r["provider"] for r in rows} == set(module.PROVIDERS)
    assert all(2 <= r["text"].count(".") <= 4 for r in rows if r["provider"] not in module.NOISY)

    def on_topic(r) -> float:  # share of a text's words found in its own topic's phrases
        vocab = {w for ps in module.TOPICS[r["label"]].values() for p in ps for w in p.lower().split()}
        words = r["text"].lower().replace(".", "").split()
        return sum(w in vocab for w in words) / len(words)

    clean = np.mean([on_topic(r) for r in rows if r["provider"] not in module.NOISY])
    noisy = np.mean([on_topic(r) for r in rows if r["provider"] in module.NOISY])
    assert noisy < 0.5 < clean
    out = tmp_path / "t.csv"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_texts.py"), str(out), "--rows", "30"], check=True
    )
    assert done.returncode == 0 and load_source(str(out), payload=Payload("text", "text")).num_rows == 30


def _texts(tmp_path: Path, rows: int = 60) -> Path:
    path = tmp_path / "texts.csv"
    make_texts_module().write(make_texts_module().make_texts(rows), path)
    return path


def test_demo_data_drops_the_truth_before_ingest_and_keys_it_by_example_id(tmp_path, monkeypatch):
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    settings = load_settings()
    source = _texts(tmp_path)
    data = UserData(source, "text", "text", TOPICS, "label")
    demo = prepare_user_data(settings, data, limit=None)
    written = pq.read_table(demo.source)
    assert "label" not in written.column_names and written.column_names == ["provider", "text"]
    examples, _ = to_examples(load_source(str(demo.source), payload=demo.payload))
    original = {r["text"]: r["label"] for r in pa_csv.read_csv(source).to_pylist()}
    by_id = dict(zip(examples["example_id"].to_pylist(), examples["text"].to_pylist(), strict=True))
    assert {i: original[t] for i, t in by_id.items()} == demo.truth
    # a tenth is held out, with its true labels, as the trusted targets; never trained on
    held = pq.read_table(demo.validation).to_pylist()
    assert 0.05 < len(held) / len(original) < 0.15 and len(held) + len(demo.truth) == len(original)
    assert all(original[r["text"]] == r["label"] for r in held)
    assert not {example_id({"text": r["text"]}) for r in held} & set(demo.truth)
    again = prepare_user_data(settings, data, limit=None)
    assert again.version == demo.version and again.source.read_bytes() == demo.source.read_bytes()
    assert prepare_user_data(settings, data, limit=20).version != demo.version
    assert serving_input("text", demo.samples[0]) == demo.samples[0]


def test_demo_data_holds_out_only_the_trusted_providers_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    source = _texts(tmp_path, 400)
    original = pa_csv.read_csv(source).to_pylist()
    trusted = ("newsroom-a", "blog-c")
    data = UserData(source, "text", "text", TOPICS, "label", trusted=trusted)
    demo = prepare_user_data(load_settings(), data, limit=None)
    held = pq.read_table(demo.validation).to_pylist()
    by_text = {r["text"]: r for r in original}
    assert {by_text[r["text"]]["provider"] for r in held} == set(trusted)
    assert all(by_text[r["text"]]["label"] == r["label"] for r in held)
    # exactly the hash tenth of the trusted rows: the same rows every provider's tenth would pick among them
    expected = {
        r["text"] for r in original if r["provider"] in trusted and held_out(example_id({"text": r["text"]}))
    }
    assert {r["text"] for r in held} == expected and len(held) + len(demo.truth) == len(original)
    assert set(pq.read_table(demo.source)["provider"].to_pylist()) == {r["provider"] for r in original}


def test_demo_data_measures_pay_on_the_owners_validation_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    module = make_texts_module()
    source = _texts(tmp_path, 60)
    owner = tmp_path / "owner.parquet"
    rows = module.make_texts(90, seed=7).drop_columns(["provider"]).slice(60)
    pq.write_table(rows, owner)
    data = UserData(source, "text", "text", TOPICS, "label", owner)
    demo = prepare_user_data(load_settings(), data, limit=None)
    assert len(demo.truth) == 60  # nothing of --data is held out
    held = pq.read_table(demo.validation)
    assert held.column_names == ["text", "label"]
    assert held.to_pylist() == rows.select(["text", "label"]).to_pylist()


@pytest.mark.parametrize(
    "rows, message",
    [
        (lambda data: data.slice(0, 0), r"empty"),
        (lambda data: data.slice(0, 5), r"5 validation examples are also in the dataset"),
        (lambda data: data.set_column(2, "label", pa.array(["opera"] * data.num_rows)),
         r"true labels \['opera'\] in 'label' are not among --choices"),
        (lambda data: data.append_column("note", pa.array(["x"] * data.num_rows)),
         r"validation payload columns \['text', 'note'\] differ from the dataset's \['text'\]"),
    ],
)
def test_a_bad_validation_file_is_refused(tmp_path, monkeypatch, rows, message):
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    source = _texts(tmp_path, 60)
    owner = tmp_path / "owner.parquet"
    pq.write_table(rows(pa_csv.read_csv(source)), owner)
    with pytest.raises(DemoError, match=message):
        prepare_user_data(load_settings(), UserData(source, "text", "text", TOPICS, "label", owner), None)


@pytest.mark.parametrize(
    "trusted, message",
    [
        (("newsroom-a", "nobody"), r"--trusted names \['nobody'\] but the data's providers are"),
        (("newsroom-a",), r"the trusted providers \['newsroom-a'\] hold too few rows"),
    ],
)
def test_bad_trusted_providers_are_refused(tmp_path, monkeypatch, trusted, message):
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    data = UserData(_texts(tmp_path, 12), "text", "text", TOPICS, "label", trusted=trusted)
    with pytest.raises(DemoError, match=message):
        prepare_user_data(load_settings(), data, limit=None)


ROWS = {"kind": "table", "field": "row"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"truth_col": "nope"}, r"--truth-col 'nope' must name a column"),
        ({"truth_col": "text"}, r"--truth-col 'text' must name a column .* other than the payload"),
        ({"choices": ("sport", "science")}, r"true labels \['cooking', 'travel'\] .* not among --choices"),
        ({"field": "body"}, r"no payload column 'body'"),
        ({**ROWS, "show": ("text", "label")}, r"--show: shown columns must be .* the label are never shown"),
        ({**ROWS, "show": ("txt",)}, r"--show \['txt'\] must name columns .* its columns"),
    ],
)
def test_bad_demo_data_is_refused(tmp_path, monkeypatch, change, message):
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    base = {
        "path": _texts(tmp_path),
        "kind": "text",
        "field": "text",
        "choices": TOPICS,
        "truth_col": "label",
    }
    with pytest.raises(DemoError, match=message):
        prepare_user_data(load_settings(), UserData(**{**base, **change}), limit=None)


def test_cli_demo_data_needs_its_companions(tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    runner = CliRunner()
    lonely = runner.invoke(app, ["demo", "--data", str(tmp_path / "t.csv"), "--kind", "text"])
    assert lonely.exit_code == 1 and "--data needs --field, --choices, --truth-col too" in lonely.stderr
    stray = runner.invoke(app, ["demo", "--truth-col", "label"])
    assert stray.exit_code == 1 and "--truth-col need --data FILE" in stray.stderr
    stray = runner.invoke(app, ["demo", "--trusted", "a"])
    assert stray.exit_code == 1 and "--trusted need --data FILE" in stray.stderr
    full = ["demo", "--data", str(tmp_path / "t.csv"), "--kind", "text", "--field", "text"]
    full += ["--choices", "a,b", "--truth-col", "label"]
    both = runner.invoke(app, [*full, "--trusted", "a", "--validation", str(tmp_path / "v.csv")])
    assert both.exit_code == 1 and "give --validation FILE or --trusted PROVIDERS, not both" in both.stderr
    empty = runner.invoke(app, [*full, "--trusted", " , "])
    assert empty.exit_code == 1 and "--trusted must name at least one provider" in empty.stderr
    shown = runner.invoke(app, [*full, "--show", "text"])
    assert shown.exit_code == 1 and "--show: shown columns pick a table's columns" in shown.stderr


def test_cli_demo_refuses_bad_data_before_starting_any_service(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli import app

    # nothing listens on these ports: the input error must come first, and alone
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))  # the CLI would set it for good
    monkeypatch.setenv("CARAVAN_LABELSTUDIO_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CARAVAN_RPC_URL", "http://127.0.0.1:9")
    args = ["demo", "--no-start-services", "--data", str(_texts(tmp_path)), "--kind", "text"]
    args += ["--field", "text"]
    args += ["--choices", ",".join(TOPICS), "--truth-col", "label", "--trusted", "newsroom-a,nobody"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1, refused.output
    assert "--trusted names ['nobody'] but the data's providers are" in refused.stderr
    assert "Label Studio" not in refused.stderr and "anvil" not in refused.stderr


@pytest.mark.parametrize("kind", ["text", "image"])
def test_demo_data_reaches_labeled_dataset_through_the_real_label_studio(tmp_path, labeling_env, kind):
    from labeling import ProjectSpec
    from pipelines.assets import ingest, labeling
    from pipelines.resources import resources_for

    settings, client = labeling_env
    if kind == "text":
        demo = prepare_user_data(
            settings, UserData(_texts(tmp_path, 80), "text", "text", TOPICS, "label"), None
        )
    else:
        demo = prepare_data(settings, limit=60)
    instance = register_demo_data(settings, demo, claim=False)  # no chain here
    spec = ProjectSpec(f"{settings.labelstudio_prefix} {demo.version}", demo.kind, demo.choices, demo.field)
    assert label_with_simulated_annotators(client, demo, spec) == len(demo.truth)
    assets = [
        ingest.raw_dataset,
        ingest.dataset_snapshot,
        labeling.labeling_tasks,
        labeling.annotations,
        labeling.consensus_labels,
        labeling.labeled_dataset,
    ]
    result = dg.materialize(
        assets, instance=instance, partition_key=demo.version, resources=resources_for(settings)
    )
    assert result.success
    labeled = result.output_for_node("labeled_dataset")
    assert labeled.num_rows == len(demo.truth) and "label" in labeled.column_names
    expected = pa.string() if kind == "text" else pa.binary()
    assert labeled.schema.field(demo.field).type == expected
    right = sum(demo.truth[r["example_id"]] == r["label"] for r in labeled.to_pylist())
    assert right / labeled.num_rows > 0.8  # 3 of 4 simulated labelers (0.55-0.95) per example
    # the payload labelers see is the example's own text, or its image's own bytes
    project = client.ensure_project(spec)
    keys, _ = client.task_keys(project.id)
    row = labeled.to_pylist()[0]
    shown = client.sdk.tasks.get(str(keys[row["example_id"]])).data[demo.field]
    if kind == "text":
        assert shown == row["text"]
    else:
        assert shown == "data:image/png;base64," + base64.b64encode(row["image"]).decode()


def test_demo_data_of_image_paths_is_written_with_the_images_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    (tmp_path / "data" / "pics").mkdir(parents=True)
    rows, images = [], {}
    for i in range(6):
        pixels = np.full((5, 7), 40 * i, dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        images[f"pics/{i}.png"] = buf.getvalue()
        (tmp_path / "data" / f"pics/{i}.png").write_bytes(buf.getvalue())
        rows.append(
            {"provider": f"p{i % 2}", "image": f"pics/{i}.png", "truth": "dark" if i < 3 else "light"}
        )
    (tmp_path / "data" / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = UserData(tmp_path / "data" / "set.jsonl", "image", "image", ("dark", "light"), "truth")
    demo = prepare_user_data(load_settings(), data, limit=None)
    written = pq.read_table(demo.source)
    assert written.column_names == ["provider", "image"] and written.schema.field("image").type == pa.binary()
    trained = [images[r["image"]] for r in rows if not held_out(example_id({"image": images[r["image"]]}))]
    assert written["image"].to_pylist() == trained  # bytes, never the paths
    examples, _ = to_examples(load_source(str(demo.source), payload=demo.payload))
    truth = {images[r["image"]]: r["truth"] for r in rows}
    assert {r["example_id"]: truth[r["image"]] for r in examples.to_pylist()} == demo.truth
