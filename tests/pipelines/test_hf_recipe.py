"""The hf-local recipe: a local Hugging Face classifier (a tiny BERT and WordPiece tokenizer this test
trains and saves itself; nothing is downloaded) trained by the pipeline's own training and royalty
assets, published on a real anvil, served from its stored CIDs, and replayed bit for bit; the record
names the model by the CIDs of its files, never by its path. Bad directories are refused by name
before training."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from attribution import TRAK_VALUE_METHOD, AttributionError, HfTextEncoding, payload_encoding_from_json
from pipelines.assets import review, royalties, training
from pipelines.assets.training import TrainingConfig, recipe_for, stored_local_model, train_labeled
from pipelines.demo import write_contributors
from pipelines.partitions import dataset_versions
from pipelines.replay import replay_run
from pipelines.resources import DatasetCatalog
from provenance import LABEL_REVIEW, TRAINING, CodeVersion, RunRecords, TrainingRecord, load_record
from serving import API_KEY_HEADER, SPLIT_QUERY, Ledger, create_app, load_run
from storage import BlockStore, FileTable
from tests.pipelines.conftest import (
    annotations_table,
    consistent_labels,
    replay_elsewhere,
    stored_upstream,
)
from tests.services.anvil import AnvilService

VERSION = "hf-v1"
TOPICS = {"sport": "match goal team coach league score", "food": "soup bread oven salt recipe spoon"}
PROVIDERS = ("p-big", "p-small")
LABELERS = ("l-good", "l-ok")
CODE = CodeVersion("caravan", "0.1.0", "cd" * 20, False)  # the clean checkout this test stands for
RUN_CONFIG = {"recipe": "hf-local", "epochs": 3, "lr": 1e-2, "batch_size": 8, "trak_k": 32}


def _labeled(n: int = 40) -> pa.Table:
    rng = np.random.default_rng(0)
    labels = [("sport", "food")[i % 2] for i in range(n)]
    texts = [" ".join(rng.choice(TOPICS[lab].split(), 5)) for lab in labels]
    texts = [f"{t} {'the' * (i % 3)}".strip() + f" n{i}" for i, t in enumerate(texts)]
    ids = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    provider = [PROVIDERS[i % 3 == 0] for i in range(n)]
    return pa.table({"example_id": ids, "text": texts, "provider": provider, "source": ["s"] * n,
                     "label": labels, "confidence": [0.9] * n, "n_votes": [2] * n}).sort_by("example_id")


def save_tiny_model(path: Path, *, model: str = "bert", model_vocab: int | None = None,
                    tokenizer: bool = True) -> Path:
    """A WordPiece tokenizer trained here on the texts and a tiny randomly initialized classifier."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=90, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_labeled()["text"].to_pylist(), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")
    sizes = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)
    vocab = model_vocab or len(fast)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if model == "gpt2":  # its Conv1D layers have no attribution kernel
            cfg = AutoConfig.for_model("gpt2", vocab_size=vocab, n_embd=16, n_layer=1, n_head=2,
                                       n_positions=32, num_labels=2, pad_token_id=0)
            AutoModelForSequenceClassification.from_config(cfg).save_pretrained(path)
        elif model == "vit":  # an image model: no sequence classifier reads text
            AutoModel.from_config(AutoConfig.for_model("vit", hidden_size=16, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=32,
                                                       image_size=8, patch_size=4)).save_pretrained(path)
        else:
            cfg = AutoConfig.for_model("bert", vocab_size=vocab, num_labels=2, **sizes)
            AutoModelForSequenceClassification.from_config(cfg).save_pretrained(path)
    if tokenizer:
        fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bert")


# ---- bad input: each refused by name before training ----------------------------------------------


def test_hf_local_needs_a_text_column_and_model_dir_belongs_to_it(hf_dir):
    numbers = pa.table({"example_id": ["a"], "x": [1.0]})
    with pytest.raises(dg.Failure, match="recipe 'hf-local' needs a text payload column"):
        recipe_for(TrainingConfig(recipe="hf-local"), numbers, "x")
    with pytest.raises(dg.Failure, match="model_dir is read by recipe 'hf-local' only"):
        recipe_for(TrainingConfig(model_dir=str(hf_dir)), _labeled(), "text")
    assert recipe_for(TrainingConfig(recipe="hf-local"), _labeled(), "text") == ("hf-local", "text")


def test_a_missing_or_incomplete_directory_is_refused_before_anything_is_stored(hf_dir, tmp_path):
    store = BlockStore(tmp_path / "blocks")
    with pytest.raises(dg.Failure, match="needs model_dir"):
        stored_local_model(store, TrainingConfig(recipe="hf-local"))
    with pytest.raises(dg.Failure, match="does not exist"):
        stored_local_model(store, TrainingConfig(recipe="hf-local", model_dir=str(tmp_path / "absent")))
    for name in ("tokenizer.json", "config.json"):
        partial = Path(shutil.copytree(hf_dir, tmp_path / f"no-{name}"))
        (partial / name).unlink()
        with pytest.raises(dg.Failure, match=f"has no {name}"):
            stored_local_model(store, TrainingConfig(recipe="hf-local", model_dir=str(partial)))
    assert not store.pins()


@pytest.mark.parametrize(
    "kind, error",
    [
        ({"model_vocab": 20}, "the tokenizer has \\d+ ids but the model's vocabulary holds 20"),
        ({"model": "vit"}, "model type 'vit' has no sequence classifier"),
        ({"model": "gpt2"}, "Conv1D"),
    ],
)
def test_a_model_that_cannot_be_trained_here_is_refused_by_name(tmp_path, kind, error):
    path = save_tiny_model(tmp_path / "model", **kind)
    config = TrainingConfig(model_dir=str(path), **RUN_CONFIG)
    local = stored_local_model(BlockStore(tmp_path / "blocks"), config)
    with pytest.raises(AttributionError, match=error):
        train_labeled(_labeled(), config, run_id="r", field="text", local=local)


# ---- a published hf-local run -----------------------------------------------------------------------


def _tables() -> dict[str, pa.Table]:
    labeled = _labeled()
    ids, labels = labeled["example_id"].to_pylist(), labeled["label"].to_pylist()
    rows = [(e, who, lab) for e, lab in zip(ids, labels, strict=True) for who in LABELERS]
    raw = labeled.drop_columns(["label", "confidence", "n_votes"])
    return consistent_labels(raw, annotations_table(rows))


@pytest.fixture(scope="module")
def published(tmp_path_factory, anvil: AnvilService, hf_dir: Path):
    """An hf-local run trained and weighted by the pipeline's assets and published on anvil."""
    home = tmp_path_factory.mktemp("caravan")
    prepared = stored_upstream(home, anvil.rpc_url, anvil.dev_keys[4], CODE, VERSION, _tables())
    with prepared as (settings, resources):
        client = resources["store"].client()
        write_contributors(settings.contributors_file, [*PROVIDERS, *LABELERS])
        pq.write_table(_tables()["raw_dataset"].drop_columns(["example_id"]), home / "data.parquet")
        DatasetCatalog(root=str(home / "datasets")).register(
            VERSION, str(home / "data.parquet"), store=client,
            labeling={"kind": "text", "field": "text", "choices": list(TOPICS)},
        )
        (home / "dagster").mkdir()
        upstream = [dg.AssetSpec(a, partitions_def=dataset_versions) for a in _tables()]
        assets = [training.trained_model, royalties.contributor_weights, royalties.provenance_record,
                  royalties.royalty_root, review.label_review, *upstream]
        with dg.DagsterInstance.local_temp(str(home / "dagster")) as instance:
            instance.add_dynamic_partitions("dataset_version", [VERSION])

            def run(config: dict, selection=None):
                return dg.materialize(
                    assets, partition_key=VERSION, instance=instance, resources=resources,
                    selection=selection, raise_on_error=False,
                    run_config={"ops": {"trained_model": {"config": config}}},
                )

            result = run({**RUN_CONFIG, "model_dir": str(hf_dir)})
            assert result.success
            reviewed = result.output_for_node("label_review").value  # cross-fitted from the stored model
            assert reviewed.num_rows == _labeled().num_rows
            review_record = load_record(client, resources["lineage"].cid_of(LABEL_REVIEW, VERSION))
            assert review_record.params["models"] == ["recipe", "bag_of_tokens"]  # text: its tokens beside it
            assert 0.0 <= review_record.params["recipe_weight"] <= 1.0
            assert review_record.params["scikit-learn"]
            yield {"chain": resources["chain"].client(), "store": client, "model_dir": hf_dir, "home": home,
                   "run_id": result.output_for_node("royalty_root")["run_id"], "materialize": run}


def test_the_record_names_the_starting_model_by_cid_never_by_path(published):
    store, model_dir = published["store"], published["model_dir"]
    records = RunRecords(published["chain"], store)
    record_cid, record = records.parent(records.head(published["run_id"]), TRAINING)
    table = FileTable.from_json(store.get(record.inputs[TrainingRecord.BASE_MODEL]))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(table.names())
    encoding = payload_encoding_from_json(store.get(record.outputs[TrainingRecord.ENCODING]))
    assert isinstance(encoding, HfTextEncoding) and encoding.local is None
    assert encoding.files == record.inputs[TrainingRecord.BASE_MODEL]
    assert encoding.tokenizer == table.cid_of("tokenizer.json")  # the directory's own tokenizer, by CID
    assert record.params["payload"]["recipe"] == "hf-sequence-classifier"
    assert "model_dir" not in record.params["config"] and record.params["config"]["recipe"] == "hf-local"
    methods = pq.read_table(pa.BufferReader(store.get(record.outputs[TrainingRecord.EXAMPLE_ATTRIBUTION])))
    assert set(methods["method"].to_pylist()) == {TRAK_VALUE_METHOD}
    for cid in [record_cid, *record.inputs.values(), *record.outputs.values()]:  # no path, not even its name
        data = store.get(cid)
        assert str(model_dir).encode() not in data and model_dir.name.encode() not in data


def test_a_served_hf_run_answers_text_with_its_own_attribution(published, tmp_path):
    moved = published["model_dir"].with_name("moved-away")
    published["model_dir"].rename(moved)  # serving must rebuild the model from CIDs alone
    try:
        run = load_run(published["chain"], published["store"], published["run_id"])
    finally:
        moved.rename(published["model_dir"])
    assert run.kind == "text"
    (pred,) = run.predict_payloads(["match goal team coach"])
    assert pred.split == SPLIT_QUERY and sum(b for _, b in pred.bps) == 10_000
    assert pred.label in TOPICS
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    _, secret = ledger.create_key("user", balance=10**15)
    from fastapi.testclient import TestClient

    client = TestClient(create_app(run, ledger, price=10**12))
    answer = client.post("/v1/predict", json={"input": "soup bread oven"}, headers={API_KEY_HEADER: secret})
    assert answer.status_code == 200, answer.text
    (served,) = answer.json()["predictions"]
    assert served["split"] == "query" and served["label"] in TOPICS


def test_an_hf_run_replays_bit_for_bit_from_its_stored_model(published, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli import app

    report = replay_run(published["chain"], published["store"], published["run_id"], code=CODE)
    assert report.ok and report.same_platform, [f.__dict__ for f in report.failures]
    assert report.max_score_diff == 0.0 and report.replayed_root == report.onchain_root
    monkeypatch.setattr("pipelines.replay.run.pipeline_code", lambda: CODE)
    shown = CliRunner().invoke(app, ["verify", published["run_id"], "--replay"])
    assert shown.exit_code == 0 and "OK:" in shown.output, shown.output


def test_an_hf_run_replays_on_another_platform_through_its_stored_checkpoints(published, monkeypatch):
    """Off the run's platform the model, features and scores of an hf-local run are checked through the
    checkpoints its features store, evaluated from the stored base model: here (another platform only
    by name) they give exactly what training stored."""
    replay_elsewhere(monkeypatch)
    report = replay_run(published["chain"], published["store"], published["run_id"], code=CODE)
    assert report.ok and not report.same_platform, [f.__dict__ for f in report.failures]
    assert report.feature_gap == 0.0 and report.checkpoint_score_diff == 0.0
    assert report.checkpoint_score_allowed > 0.0


def test_a_bad_model_dir_fails_the_run_with_its_name(published, tmp_path):
    """The refusal reaches the user as the training step's failure (the Dagster CLI exits nonzero)."""
    path = save_tiny_model(tmp_path / "vocab-mismatch", model_vocab=20)
    config = {**RUN_CONFIG, "model_dir": str(path)}
    result = published["materialize"](config, selection=[training.trained_model])
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "the model's vocabulary holds 20" in str(failure.step_failure_data.error)


def test_caravan_demo_refuses_a_bad_model_dir_before_anything_runs(hf_dir, tmp_path, monkeypatch):
    """`caravan demo --data F --kind text ... --model-dir DIR` runs the mission with recipe hf-local; a
    directory that cannot be one, or a dataset that is not text, is one `error:` line and exit 1."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    data = ["--data", str(tmp_path / "texts.csv"), "--field", "text", "--choices", "sport,food",
            "--truth-col", "label", "--no-start-services"]
    cases = [
        (["--model-dir", str(hf_dir)], "give it with --data FILE --kind text"),
        ([*data, "--kind", "image", "--model-dir", str(hf_dir)], "give it with --data FILE --kind text"),
        ([*data, "--kind", "text", "--model-dir", str(tmp_path / "absent")], "does not exist"),
    ]
    for args, error in cases:
        result = CliRunner().invoke(app, ["demo", *args])
        assert result.exit_code == 1 and error in result.output, result.output
