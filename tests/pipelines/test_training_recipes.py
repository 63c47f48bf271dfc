"""The training asset's choices: which recipe a payload gets, what pay is measured by, and that a text
run is the same bytes twice (what replay relies on)."""

from __future__ import annotations

import hashlib

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from attribution import TRAK_VALUE_METHOD
from pipelines.assets.training import TrainingConfig, recipe_for, train_labeled, value_method

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


def test_pay_is_trak_value_for_payload_recipes_and_in_run_for_the_mlp():
    assert value_method(TrainingConfig(), "text-transformer") == "trak"
    assert value_method(TrainingConfig(), "image-cnn") == "trak"
    assert value_method(TrainingConfig(), "mlp") == "inrun"
    assert value_method(TrainingConfig(value="inrun"), "image-cnn") == "inrun"
    with pytest.raises(dg.Failure, match="the mlp recipe pays by 'inrun'"):
        value_method(TrainingConfig(value="trak"), "mlp")
    with pytest.raises(dg.Failure, match="value 'shapley' is unknown"):
        value_method(TrainingConfig(value="shapley"), "mlp")


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
