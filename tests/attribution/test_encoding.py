"""Rows to model inputs: the same numbers at training and at serving time, or one named error."""

import numpy as np
import pyarrow as pa
import pytest

from attribution import InputEncoding, InputError, encode_split


def _table(n: int = 6) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "example_id": [f"e{i}" for i in range(n)],
            "provider": ["p"] * n,
            "pixels": pa.array([rng.integers(0, 17, 4).tolist() for _ in range(n)], pa.list_(pa.int64())),
            "age": rng.normal(40, 10, n),
            "text": ["x"] * n,
            "label": ["b", "a", "b", "a", "c", "a"][:n],
        }
    )


def test_fit_standardizes_numeric_columns_and_survives_json():
    table = _table()
    enc = InputEncoding.fit(table, table["label"].to_pylist())
    assert enc.columns == ("pixels", "age") and enc.widths == (4, 1) and enc.classes == ("a", "b", "c")
    x = enc.transform(table)
    assert x.shape == (6, 5)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-12)
    again = InputEncoding.from_json(enc.to_json())
    assert again == enc and again.to_json() == enc.to_json()
    np.testing.assert_array_equal(again.transform(table), x)
    np.testing.assert_array_equal(enc.label_indices(["c", "a"]), [2, 0])
    assert enc.left_out(table) == ["text"]  # the one payload column the model never sees


def test_constant_feature_does_not_divide_by_zero():
    table = _table().set_column(3, "age", pa.array([5.0] * 6))
    x = InputEncoding.fit(table, table["label"].to_pylist()).transform(table)
    assert np.isfinite(x).all() and (x[:, 4] == 0).all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.select(["example_id", "provider", "text", "label"]), "no numeric feature column"),
        (
            lambda t: t.set_column(2, "pixels", pa.array([[1, 2], [1, 2, 3]] * 3, pa.list_(pa.int64()))),
            "different lengths",
        ),
    ],
)
def test_unusable_tables_are_named(mutate, message):
    table = mutate(_table())
    with pytest.raises(InputError, match=message):
        InputEncoding.fit(table, table["label"].to_pylist())


def test_bad_inputs_at_serving_time_are_named():
    table = _table()
    enc = InputEncoding.fit(table, table["label"].to_pylist())
    with pytest.raises(InputError, match="lacks feature columns"):
        enc.transform(table.drop_columns(["age"]))
    with pytest.raises(InputError, match="expected 5 features"):
        enc.scale(np.zeros((1, 3)))
    with pytest.raises(InputError, match="NaN or inf"):
        enc.scale(np.array([[0, 0, 0, np.nan, 0]]))
    with pytest.raises(InputError, match="not in the label set"):
        enc.label_indices(["z"])


def test_encode_split_fits_on_the_training_rows_and_keeps_row_order():
    table = _table()
    is_target = np.array([False, True, True, False, False, False])
    split = encode_split(table, is_target)
    train = table.filter(pa.array(~is_target))
    assert split.encoding == InputEncoding.fit(train, train["label"].to_pylist())
    assert split.example_ids == ["e0", "e3", "e4", "e5"] and split.target_ids == ["e1", "e2"]
    np.testing.assert_array_equal(split.X, split.encoding.transform(train))
    np.testing.assert_array_equal(split.y, split.encoding.label_indices(["b", "a", "c", "a"]))
    np.testing.assert_array_equal(split.y_targets, split.encoding.label_indices(["a", "b"]))
    stored = InputEncoding.fit(table, table["label"].to_pylist())  # e.g. the one stored beside a model
    again = encode_split(table, is_target, encoding=stored)
    assert again.encoding is stored
    np.testing.assert_array_equal(again.X_targets, stored.transform(table.filter(pa.array(is_target))))


def test_encode_split_refuses_an_empty_part():
    with pytest.raises(InputError, match="too few to hold out targets"):
        encode_split(_table(), np.zeros(6, dtype=bool))
    with pytest.raises(InputError, match="target mask"):
        encode_split(_table(), np.zeros(5, dtype=bool))
