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
            "text": [f"note {i}" for i in range(n)],  # free text: one value per row
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
        (lambda t: t.select(["example_id", "provider", "text", "label"]), "no feature column"),
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


CITIES = ["oslo", "rome", "lima"]


def _mixed(n: int = 60, seed: int = 0) -> pa.Table:
    """Numbers with gaps (null and NaN), a category with gaps, an embedding with a null row, an id."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 10, n)
    age[[3, 7]] = np.nan
    return pa.table({
        "example_id": [f"e{i}" for i in range(n)],
        "age": pa.array(age.tolist(), pa.float64()),
        "visits": pa.array([None if i % 9 == 0 else int(v) for i, v in enumerate(rng.integers(0, 9, n))]),
        "city": [None if i % 11 == 0 else str(v) for i, v in enumerate(rng.choice(CITIES, n))],
        "emb": pa.array([None if i == 5 else rng.normal(size=3).tolist() for i in range(n)],
                        pa.list_(pa.float64())),
        "customer": [f"c-{i:04d}" for i in range(n)],  # an id: left out
        "label": rng.choice(["a", "b"], n).tolist(),
    })


def test_categories_and_gaps_match_scikit_learn():
    """Against an independent pipeline: mean imputation, one-hot ignoring unknown values, standard scaling."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    cities = pa.array(["oslo", "paris", None] * 6 + ["rome"] * 2)  # "paris": a value training never saw
    train, serve = _mixed(), _mixed(20, seed=1).set_column(3, "city", cities)
    enc = InputEncoding.fit(train, train["label"].to_pylist())
    assert enc.columns == ("age", "visits", "city", "emb") and enc.widths == (1, 1, 3, 3)
    assert enc.categories == (("city", ("lima", "oslo", "rome")),) and enc.left_out(train) == ["customer"]

    def frame(t: pa.Table):
        df = t.select(["age", "visits", "city"]).to_pandas()
        emb = np.array([[np.nan] * 3 if r is None else r for r in t["emb"].to_pylist()])
        return df.assign(**{f"emb{j}": emb[:, j] for j in range(3)}).replace({None: np.nan})

    numbers = ["age", "visits", "emb0", "emb1", "emb2"]
    order = [0, 1, 5, 6, 7, 2, 3, 4]  # the reference puts city last
    ours = enc.transform(serve)
    raw = ColumnTransformer([
        ("n", SimpleImputer(strategy="mean"), numbers),
        ("c", OneHotEncoder(categories=[["lima", "oslo", "rome"]], handle_unknown="ignore",
                            sparse_output=False), ["city"]),
    ]).fit(frame(train))
    expected = StandardScaler().fit(raw.transform(frame(train))).transform(raw.transform(frame(serve)))
    np.testing.assert_allclose(ours, expected[:, order], atol=1e-12)
    np.testing.assert_array_equal(enc.raw(serve)[[1, 2], 2:5], 0)  # "paris", never seen, and a gap: zeros
    assert np.isfinite(enc.transform(train)).all()


def test_categories_survive_json_and_a_table_of_numbers_keeps_its_old_bytes():
    table = _mixed()
    enc = InputEncoding.fit(table, table["label"].to_pylist())
    again = InputEncoding.from_json(enc.to_json())
    assert again == enc and again.to_json() == enc.to_json() and b'"categories":{"city":' in enc.to_json()
    numbers = InputEncoding.fit(_table(), _table()["label"].to_pylist())
    assert b"categories" not in numbers.to_json()  # the JSON (and CID) of a numbers-only run is unchanged
    assert InputEncoding.from_json(numbers.to_json()) == numbers


def test_named_fields_encode_as_the_table_does():
    table = _mixed(30)
    enc = InputEncoding.fit(table, table["label"].to_pylist())
    records = [{c: r[c] for c in enc.columns} for r in table.to_pylist()]
    np.testing.assert_array_equal(enc.raw_records(records), enc.raw(table))
    whole_rows = table.drop_columns(["label"]).to_pylist()  # an id and a column training left out, too
    np.testing.assert_array_equal(enc.raw_records(whole_rows), enc.raw(table))
    typo = {**{c: v for c, v in records[1].items() if c != "age"}, "agee": 3.0}
    with pytest.raises(InputError, match=r"input 1 lacks fields \['age'\] \(send null.*has \['agee'\]"):
        enc.raw_records([records[0], typo])
    with pytest.raises(InputError, match="field 'age' takes a number"):
        enc.raw_records([{**records[0], "age": "old"}])


def test_a_category_training_never_saw_is_named():
    """A new city reads as none of the known ones (all zeros): the caller is told which field it was."""
    table = _mixed()
    enc = InputEncoding.fit(table, table["label"].to_pylist())
    record = {c: table[c][0].as_py() for c in enc.columns}
    seen, new, gap = {**record, "city": "oslo"}, {**record, "city": "Oslo"}, {**record, "city": None}
    assert enc.unseen([seen, new, gap]) == [{}, {"city": "Oslo"}, {}]
    np.testing.assert_array_equal(enc.raw_records([new]), enc.raw_records([gap]))
    numbers = InputEncoding.fit(table.drop_columns(["city"]), table["label"].to_pylist())
    assert numbers.unseen([record]) == [{}]


def test_a_column_with_no_value_is_left_out_and_a_missing_embedding_is_its_mean():
    table = _mixed().append_column("empty", pa.array([None] * 60, pa.float64()))
    table = table.append_column("nans", pa.array([float("nan")] * 60))
    enc = InputEncoding.fit(table, table["label"].to_pylist())
    assert {"empty", "nans"} & set(enc.columns) == set() and {"empty", "nans"} <= set(enc.left_out(table))
    record = {**{c: table[c][0].as_py() for c in enc.columns}, "emb": None, "city": None}
    raw = enc.raw_records([record])[0]
    np.testing.assert_array_equal(raw[-3:], enc.mean[-3:])  # a null embedding: its training mean
    np.testing.assert_array_equal(raw[2:5], 0)  # a null category: all zeros
