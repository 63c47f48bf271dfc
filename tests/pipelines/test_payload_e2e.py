"""A small text set and a small image set through the whole mission, against the real Label Studio and
anvil: labeled by simulated annotators, trained by their recipes, paid on chain, served with paid and
settled predictions, verified, replayed by an auditor, and rerun without anything new."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageDraw

from attribution import TRAK_VALUE_METHOD, PayloadEncoding, TextEncoding, payload_encoding_from_json
from pipelines.demo import run_demo
from pipelines.demo_data import UserData
from pipelines.replay import replay_run
from provenance import TRAINING, Chain, CodeVersion, RunRecords, TrainingRecord, load_record
from serving import Ledger
from storage import BlockStore, cid_for_bytes, read_parquet
from tests.pipelines.conftest import replay_elsewhere
from tests.pipelines.test_demo_data import TOPICS, make_texts_module

CODE = CodeVersion("caravan", "0.1.0", "ef" * 20, False)  # the clean checkout this test stands for
SHAPES = ("disc", "square", "bar")


def _texts(folder: Path, rows: int = 120) -> UserData:
    path = folder / "texts.csv"
    make_texts_module().write(make_texts_module().make_texts(rows, seed=3), path)
    # the validation tenth comes from three of the five providers' rows (not forum-noisy's)
    return UserData(path, "text", "text", TOPICS, "label", trusted=("blog-c", "newsroom-a", "newsroom-b"))


def _shape(rng: np.random.Generator, shape: str) -> bytes:
    """A 16×16 grayscale PNG of one shape, drawn with Pillow at a random place and shade."""
    image = Image.new("L", (16, 16), int(rng.integers(0, 60)))
    (x, y), r = (int(v) for v in rng.integers(4, 12, size=2)), int(rng.integers(3, 5))
    box = (x - r, y - r, x + r, y + r)
    draw, ink = ImageDraw.Draw(image), int(rng.integers(180, 256))
    if shape == "disc":
        draw.ellipse(box, fill=ink)
    elif shape == "square":
        draw.rectangle(box, fill=ink)
    else:
        draw.rectangle((0, y - 1, 15, y + 1), fill=ink)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _shapes(rng: np.random.Generator, rows: int) -> pa.Table:
    labels = [SHAPES[i % len(SHAPES)] for i in range(rows)]
    return pa.table(
        {
            "provider": [f"studio-{i % 3}" for i in range(rows)],
            "image": pa.array([_shape(rng, s) for s in labels], pa.binary()),
            "shape": labels,
        }
    )


def _images(folder: Path, rows: int = 120) -> UserData:
    """Shapes from three studios, and the owner's own 24 held-out shapes as the validation set."""
    path, owner = folder / "shapes.parquet", folder / "owner.parquet"
    pq.write_table(_shapes(np.random.default_rng(5), rows), path)
    pq.write_table(_shapes(np.random.default_rng(6), 24).drop_columns(["provider"]), owner)
    return UserData(path, "image", "image", SHAPES, "shape", validation=owner)


def replayed_elsewhere(chain: Chain, store: BlockStore, run_id: str):
    """The auditor's replay on a machine running torch with another thread count (its cores): float
    reductions split by thread round differently (the image recipe's convolutions do), so replay must
    use the run's own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        return replay_run(chain, store, run_id)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_a_payload_set_is_labeled_trained_paid_served_and_replayed(caravan_env, tmp_path, monkeypatch, kind):
    settings = caravan_env
    monkeypatch.setattr("pipelines.lineage.pipeline_code", lambda: CODE)
    data = _texts(tmp_path) if kind == "text" else _images(tmp_path)
    said: list[str] = []
    first = run_demo(settings, data=data, start_services=False, say=said.append)
    assert first["verify_ok"], first["failures"]
    where = next(line for line in said if line.startswith("validation: "))
    if kind == "text":
        assert "held-out examples of blog-c, newsroom-a, newsroom-b" in where, where
    else:
        assert where == "validation: the 24 examples of owner.parquet (pay is measured on them)", where
    assert first["epoch_verify_ok"] and first["predictions"] == 5 and first["epoch_claim_tx"]
    assert first["claim_tx"] and first["claimed_wei"] > 0
    assert sum(r["weight_bps"] for r in first["weights"]) == 10_000
    assert {r["role"] for r in first["weights"]} == {"provider", "labeler"}

    chain = Chain.from_env(
        {"CARAVAN_RPC_URL": settings.rpc_url, "CARAVAN_CHAIN_DIR": str(settings.chain_dir)}
    )
    store = BlockStore(settings.store_dir)
    records = RunRecords(chain, store)
    head = records.head(first["run_id"])
    _, training = records.parent(head, TRAINING)
    recipe = {"text": "text-transformer", "image": "image-cnn"}[kind]
    assert training.params["payload"]["kind"] == kind and training.params["payload"]["recipe"] == recipe
    # how rows became inputs is stored by CID beside the model, and round-trips from those bytes
    raw = store.get(training.outputs[TrainingRecord.ENCODING])
    assert cid_for_bytes(raw, cid_version=1) == training.outputs[TrainingRecord.ENCODING]
    encoding: PayloadEncoding = payload_encoding_from_json(raw)
    assert (encoding.kind, encoding.column) == (kind, data.field)
    if isinstance(encoding, TextEncoding):
        assert json.loads(encoding.tokenizer)["model"]["type"]  # the tokenizer itself, not a name
    else:
        assert (encoding.height, encoding.width, encoding.channels) == (16, 16, 1)

    # pay is split by TRAK value against the demo's trusted validation set (these recipes' default)
    scores = read_parquet(store.get(training.outputs[TrainingRecord.EXAMPLE_ATTRIBUTION]))
    assert set(scores["method"].to_pylist()) == {TRAK_VALUE_METHOD}
    assert TrainingRecord.VALIDATION in training.inputs
    validation = read_parquet(store.get(training.inputs[TrainingRecord.VALIDATION]))
    if kind == "image":  # the owner's file, as given: its images and their true labels
        owner = pq.read_table(data.validation)
        given = zip(owner["image"].to_pylist(), owner["shape"].to_pylist(), strict=True)
        held = zip(validation["image"].to_pylist(), validation["label"].to_pylist(), strict=True)
        assert sorted(held) == sorted(given)
    monkeypatch.setattr("pipelines.replay.run.pipeline_code", lambda: CODE)
    replayed = replayed_elsewhere(chain, store, first["run_id"])
    assert replayed.ok and replayed.same_platform, [f.__dict__ for f in replayed.failures]
    assert not replayed.skipped  # the examples, credit and validation set made again from the sources too
    assert replayed.max_score_diff == 0.0  # bit for bit
    assert replayed.replayed_root == replayed.onchain_root
    # Another platform rounds differently: within the spread of two replays there (the run's two threads
    # against the replay's one, whose rounding flips discrete choices in training as another CPU's does)
    if kind == "image":
        threads = torch.get_num_threads()
        replay_elsewhere(monkeypatch)
        # side by side, the first replay on half the threads rounds unlike the run
        torch.set_num_threads(threads if threads > 1 else 3)
        try:
            elsewhere = replay_run(chain, store, first["run_id"])
        finally:
            torch.set_num_threads(threads)
        assert elsewhere.ok and not elsewhere.same_platform, [f.__dict__ for f in elsewhere.failures]
        assert elsewhere.max_score_diff > 0.0 and elsewhere.score_rtol > 0.0  # it did round differently
        assert 0.0 < elsewhere.max_value_diff <= elsewhere.value_band  # left-out values too, within theirs
        # the served model and features checked through the stored checkpoints, evaluated here
        assert elsewhere.feature_gap is not None and elsewhere.checkpoint_score_diff is not None
        assert elsewhere.checkpoint_score_diff <= elsewhere.checkpoint_score_allowed  # the scores are theirs

    pins, events = store.pins(), len(chain.recorded_events(first["run_id"]))
    second = run_demo(settings, data=data, start_services=False, say=lambda _: None)
    assert (second["run_id"], second["root_tx"]) == (first["run_id"], first["root_tx"])
    assert second["annotations"] == first["annotations"]  # no new tasks, no new answers
    assert len(chain.recorded_events(first["run_id"])) == events  # no record sent twice
    new_pins = store.pins() - pins  # only the rerun's own paid predictions are new
    epoch = Ledger(settings.ledger_path).epoch(second["epoch_id"])
    settled = load_record(store, epoch.record_cid).outputs.values()
    assert new_pins <= {epoch.record_cid, epoch.batch_cid, *settled}

