"""The training asset's choices: which recipe a payload gets, what pay is measured by, and that a text
run is the same bytes twice (what replay relies on)."""

from __future__ import annotations

import dataclasses
import hashlib

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
import torch

from attribution import HF_CONFIG, IMAGE_CONFIG, MLP_CONFIG, TEXT_CONFIG, TRAK_VALUE_METHOD, TrainConfig
from pipelines.assets.training import (
    RECIPE_DEFAULTS,
    TrainingConfig,
    heldout_fit,
    recipe_for,
    run_id_of,
    train_labeled,
    value_method,
)

WORDS = {"sport": "match goal team coach league", "food": "soup bread oven salt recipe"}


def _table(column: pa.Array, name: str) -> pa.Table:
    n = len(column)
    return pa.table({"example_id": [f"{i:064x}" for i in range(n)], name: column, "n": [1.0] * n})


@pytest.mark.parametrize(
    "column, recipe, payload",
    [
        (pa.array(["a b", "c d"]), "text-transformer", "x"),
        (pa.array([b"\x89PNG", b"\x89PNG"], pa.binary()), "image-cnn", "x"),
        (pa.array([1.0, 2.0]), "mlp", None),
    ],
)
def test_auto_picks_the_recipe_the_payload_calls_for(column, recipe, payload):
    assert recipe_for(TrainingConfig(), _table(column, "x"), "x") == (recipe, payload)


def test_a_recipe_that_does_not_fit_the_payload_is_refused_by_name():
    with pytest.raises(dg.Failure, match="recipe 'gpt' is unknown; use auto, mlp, text-transformer"):
        recipe_for(TrainingConfig(recipe="gpt"), _table(pa.array(["a"]), "x"), "x")
    with pytest.raises(dg.Failure, match="recipe 'image-cnn' needs a image payload column"):
        recipe_for(TrainingConfig(recipe="image-cnn"), _table(pa.array(["a"]), "x"), "x")


def test_pay_is_trak_value_unless_in_run_is_asked():
    assert value_method(TrainingConfig()) == "trak"
    assert value_method(TrainingConfig(value="trak")) == "trak"
    assert value_method(TrainingConfig(value="inrun")) == "inrun"
    with pytest.raises(dg.Failure, match="value 'shapley' is unknown"):
        value_method(TrainingConfig(value="shapley"))


def test_a_numeric_run_pays_by_trak_value_and_keeps_its_serving_features():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    x = rng.normal(0, 2.0, size=(3, 4))[y] + rng.normal(size=(60, 4))
    ids = [hashlib.sha256(f"{i}".encode()).hexdigest() for i in range(60)]
    table = pa.table({"example_id": ids, **{f"f{j}": x[:, j] for j in range(4)},
                      "label": [("a", "b", "c")[v] for v in y]})
    config = TrainingConfig(epochs=2)
    split, paid = train_labeled(table, config, run_id="r")
    _, again = train_labeled(table, config, run_id="r")
    _, inrun = train_labeled(table, TrainingConfig(epochs=2, value="inrun"), run_id="r")
    assert set(paid.example_attribution["method"].to_pylist()) == {TRAK_VALUE_METHOD}
    assert set(inrun.example_attribution["method"].to_pylist()) == {"inrun_sgd"}
    assert paid.scores.tobytes() == again.scores.tobytes() and not np.allclose(paid.scores, inrun.scores)
    assert type(paid.features) is type(inrun.features)  # serving's whole-gradient TRAK features


def test_the_held_out_fit_tells_a_model_that_learned_from_one_that_overfit_noise():
    """Accuracy and cross-entropy on the targets against scikit-learn's, and the floor to beat: the
    training labels' frequencies (each class counted once more) as a model. Labels that the features
    decide are predicted below the floor; pure noise, trained hard, above it (the run warns then)."""
    from sklearn.metrics import accuracy_score, log_loss

    rng = np.random.default_rng(3)
    n, d = 300, 40
    ids = [hashlib.sha256(f"{i}".encode()).hexdigest() for i in range(n)]
    x = rng.normal(size=(n, d))
    for labels, config, learned in (
        ((x[:, 0] > 0).astype(int), TrainingConfig(epochs=5), True),
        (rng.integers(0, 2, n), TrainingConfig(epochs=60, lr=0.5, hidden=[128]), False),
    ):
        table = pa.table({"example_id": ids, **{f"f{j}": x[:, j] for j in range(d)},
                          "label": [("a", "b")[v] for v in labels]})
        split, result = train_labeled(table, config, run_id="r")
        accuracy, loss, prior = heldout_fit(split, result)
        with torch.no_grad():
            logits = result.model(torch.as_tensor(split.X_targets, dtype=torch.float32))
            probs = torch.softmax(logits.double(), 1).numpy()
        assert accuracy == pytest.approx(accuracy_score(split.y_targets, probs.argmax(1)))
        assert loss == pytest.approx(log_loss(split.y_targets, probs, labels=[0, 1]), rel=1e-9)
        counts = np.bincount(split.y, minlength=2) + 1
        floor = np.tile(counts / counts.sum(), (len(split.y_targets), 1))
        assert prior == pytest.approx(log_loss(split.y_targets, floor, labels=[0, 1]), rel=1e-9)
        assert (loss < prior) is learned, (loss, prior)


def test_a_numeric_run_learns_its_categories_and_trains_over_gaps():
    """The class is the city (a string column) alone, the numbers noise with gaps: a model that left the
    city out, or a run that refused the gaps, could not predict the held-out rows."""
    rng = np.random.default_rng(1)
    n = 160
    city = rng.choice(["lima", "oslo", "rome"], n)
    noise = rng.normal(size=n)
    noise[::7] = np.nan
    ids = [hashlib.sha256(f"{i}".encode()).hexdigest() for i in range(n)]
    table = pa.table({"example_id": ids, "city": city, "noise": noise, "more_noise": rng.normal(size=n),
                      "label": np.where(city == "oslo", "b", "a").tolist()})
    split, result = train_labeled(table, TrainingConfig(epochs=20), run_id="r")
    assert split.encoding.categories == (("city", ("lima", "oslo", "rome")),)
    with torch.no_grad():
        predicted = result.model(torch.as_tensor(split.X_targets, dtype=torch.float32)).argmax(1).numpy()
    assert len(split.y_targets) >= 20 and (predicted == split.y_targets).all()


def _texts(n: int = 48) -> pa.Table:
    rng = np.random.default_rng(0)
    labels = [("sport", "food")[i % 2] for i in range(n)]
    texts = [" ".join(rng.choice(WORDS[lab].split(), 6)) + f" {i}" for i, lab in enumerate(labels)]
    ids = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    return pa.table({"example_id": ids, "text": texts, "provider": ["p"] * n, "label": labels})


def test_a_text_run_pays_by_trak_value_and_is_the_same_bytes_twice():
    config = TrainingConfig(epochs=2, d_model=16, n_layers=1, n_heads=2, vocab_size=60, trak_k=32)
    _, first = train_labeled(_texts(), config, run_id="r", field="text")
    _, again = train_labeled(_texts(), config, run_id="r", field="text")
    assert set(first.example_attribution["method"].to_pylist()) == {TRAK_VALUE_METHOD}
    assert first.scores.tobytes() == again.scores.tobytes()
    _, inrun = train_labeled(_texts(), TrainingConfig(**{**config.model_dump(), "value": "inrun"}),
                             run_id="r", field="text")
    assert set(inrun.example_attribution["method"].to_pylist()) == {"inrun_adamw"}


def test_a_runs_trak_kernel_is_its_recipes_unless_its_config_names_one():
    """The MLP pays through the Fisher and text through the gradients' Gram unless `trak_kernel` says
    otherwise, and what it says reaches the run's pay; an unknown kernel is refused before training."""
    assert TrainingConfig().train_config("mlp").trak_kernel == "fisher"
    assert TrainingConfig(trak_kernel="empirical").train_config("mlp").trak_kernel == "empirical"
    assert TrainingConfig().train_config("text-transformer").trak_kernel == "empirical"
    with pytest.raises(dg.Failure, match="trak_kernel 'hessian' is unknown; use fisher or empirical"):
        recipe_for(TrainingConfig(trak_kernel="hessian"), _table(pa.array(["a"]), "x"), "x")
    config = TrainingConfig(epochs=2, d_model=16, n_layers=1, n_heads=2, vocab_size=60, trak_k=32)
    _, recipes = train_labeled(_texts(), config, run_id="r", field="text")
    _, fisher = train_labeled(_texts(), config.model_copy(update={"trak_kernel": "fisher"}), run_id="r",
                              field="text")
    assert recipes.features.checkpoints[0].gram is None and fisher.features.checkpoints[0].gram is not None
    assert np.abs(fisher.scores - recipes.scores).max() > 1e-6
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 90)
    numeric = pa.table({"example_id": [hashlib.sha256(f"{i}".encode()).hexdigest() for i in range(90)],
                        "f": rng.normal(size=90) + labels, "g": rng.normal(size=90),
                        "label": [["x", "y", "z"][v] for v in labels]})
    _, mlp = train_labeled(numeric, TrainingConfig(epochs=3), run_id="r")
    _, empirical = train_labeled(numeric, TrainingConfig(epochs=3, trak_kernel="empirical"), run_id="r")
    assert np.abs(mlp.scores - empirical.scores).max() > 1e-6


@pytest.mark.parametrize(
    "recipe, library, settings",
    [
        ("mlp", MLP_CONFIG, dict(epochs=20, batch_size=64, lr=0.1, lr_schedule="linear", optimizer="sgd",
                                 trak_k=512, patience=5, trak_kernel="fisher")),
        ("text-transformer", TEXT_CONFIG, dict(epochs=10, batch_size=32, lr=1e-3, lr_schedule="linear",
                                               optimizer="adamw", trak_k=128, patience=2,
                                               trak_kernel="empirical")),
        ("image-cnn", IMAGE_CONFIG, dict(epochs=15, batch_size=32, lr=3e-3, lr_schedule="linear",
                                         optimizer="adamw", trak_k=128, patience=None,
                                         trak_kernel="empirical")),
        ("hf-local", HF_CONFIG, dict(epochs=3, batch_size=16, lr=5e-5, lr_schedule="constant",
                                     optimizer="adamw", trak_k=128, patience=None, trak_kernel="empirical")),
    ],
)
def test_a_run_left_at_its_defaults_trains_as_the_recipe_itself_does(recipe, library, settings):
    """One home: the pipeline's defaults are the attribution recipe's own config, and they are what
    recorded runs were trained with (a change here changes what replay retrains)."""
    assert RECIPE_DEFAULTS[recipe] is library
    assert TrainingConfig().train_config(recipe) == dataclasses.replace(library, weight_decay=1e-4)
    assert TrainingConfig().train_config(recipe) == TrainConfig(weight_decay=1e-4, **settings)


def test_the_transformer_and_the_mlp_stop_early_by_default():
    assert TrainingConfig().train_config("text-transformer").patience == 2
    assert TrainingConfig(patience=0).train_config("text-transformer").patience is None
    assert TrainingConfig(patience=3).train_config("image-cnn").patience == 3
    assert TrainingConfig().train_config("mlp").patience == 5
    assert TrainingConfig(patience=0).train_config("mlp").patience is None
    assert TrainingConfig(patience=2).train_config("mlp").patience == 2
    assert TrainingConfig(lr_schedule="linear").train_config("image-cnn").lr_schedule == "linear"
    with pytest.raises(dg.Failure, match="lr_schedule 'cosine' is unknown"):
        recipe_for(TrainingConfig(lr_schedule="cosine"), _table(pa.array(["a"]), "x"), "x")
    with pytest.raises(dg.Failure, match="patience must be >= 0 epochs"):
        recipe_for(TrainingConfig(patience=-1), _table(pa.array(["a"]), "x"), "x")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    numeric = pa.table({"example_id": [hashlib.sha256(f"{i}".encode()).hexdigest() for i in range(200)],
                        "f": rng.normal(size=200) + labels, "label": [["x", "y"][v] for v in labels]})
    # a rate that overshoots: the target loss is lowest early, so the run stops there (constant, so that a
    # run of the stop's length takes the same steps: a linear rate decays over the ceiling's epochs)
    config = TrainingConfig(patience=2, epochs=30, lr=2.0, lr_schedule="constant", value="inrun")
    _, stopped = train_labeled(numeric, config, run_id="r")
    _, fixed = train_labeled(numeric, config.model_copy(update={"patience": 0, "epochs": stopped.epochs}),
                             run_id="r")
    assert stopped.epochs < 30 - 2
    assert np.array_equal(stopped.scores, fixed.scores)


def test_the_device_is_resolved_before_training_so_the_run_id_and_record_name_it():
    here = "cuda" if torch.cuda.is_available() else "cpu"
    auto = TrainingConfig(device="auto").on_device()
    assert auto.device == here and auto.train_config("image-cnn").device == here
    assert TrainingConfig().on_device().device == "cpu"
    assert TrainingConfig().train_config("mlp").device == "cpu"
    if here == "cpu":  # "auto" that ran on the CPU is the CPU run, id and all
        assert run_id_of("bafy", auto) == run_id_of("bafy", TrainingConfig())
    with pytest.raises(dg.Failure, match="device 'tpu' is unknown; use one of auto, cpu, cuda"):
        TrainingConfig(device="tpu").on_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_on_a_machine_without_one_is_refused_before_training():
    with pytest.raises(dg.Failure, match="device 'cuda' needs a GPU, but torch sees no CUDA device here.*"
                                         "use 'auto'"):
        TrainingConfig(device="cuda").on_device()


def test_caravan_demo_refuses_a_device_it_cannot_train_on_before_anything_runs(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli import app

    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    cases = [("tpu", "--device: device 'tpu' is unknown; use one of auto, cpu, cuda")]
    if not torch.cuda.is_available():
        cases.append(("cuda", "--device: device 'cuda' needs a GPU, but torch sees no CUDA device here"))
    for device, error in cases:
        result = CliRunner().invoke(app, ["demo", "--device", device, "--no-start-services"])
        assert result.exit_code == 1 and error in " ".join(result.output.split()), result.output
    assert not (tmp_path / "home" / "blocks").exists()  # nothing was stored
