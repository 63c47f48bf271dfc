"""bench/contributor_value.py --kind text|image --data: the faulty world is built from a user's rows."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import contributor_value as cv  # noqa: E402
from bench._common import royalty_world  # noqa: E402
from bench._common.lds_models import read_columns, synthetic_text  # noqa: E402


def grey_pngs(n: int, side: int, seed: int) -> tuple[list[bytes], list[str]]:
    """Greyscale PNGs of another size and mode than the bench's own, five named classes."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        c = i % 5
        pixels = np.full((side, side), rng.integers(0, 80), np.uint8)  # a smooth, photo-like background
        pixels[c : c + 3, rng.integers(0, side - 4) :] = rng.integers(150, 256)  # its row: the class
        buf = io.BytesIO()
        Image.fromarray(pixels, "L").save(buf, "PNG")
        images.append(buf.getvalue())
        labels.append(f"band-{c}")
    return images, labels


def test_image_world_from_a_users_file(tmp_path):
    images, labels = grey_pngs(400, 12, seed=1)
    images += images[:20]  # a file may repeat rows: each payload enters the world once
    labels += labels[:20]
    path = tmp_path / "bands.parquet"
    pq.write_table(pa.table({"img": pa.array(images, pa.binary()), "cls": labels}), path)

    world = royalty_world.build_media_world("image", 0, read_columns(str(path), "img", "cls", "image"))

    assert len(world.classes) == 5 and world.media.task.config is not None
    assert len(world.yv) == 80  # a fifth of the 400 distinct rows
    payloads = world.examples["image"].to_pylist()
    assert len(set(payloads)) == len(payloads)  # no exact copies (faults included)
    owner = world.provider
    assert (owner == "flooder").sum() >= 50 and (owner == "copycat").sum() == (owner == "prov-b").sum()
    junk = payloads[int(np.flatnonzero(owner == "junk")[0])]
    assert Image.open(io.BytesIO(junk)).size == (12, 12)  # junk as large as the data's images
    assert world.media.sizes["uploaded"] == 12
    credit, grouping = cv.library_credit(world)  # the ingest's grouping runs on the user's payloads
    assert credit.num_rows == world.examples.num_rows and grouping["near"]["copies"] > 0


@pytest.mark.parametrize("classes", [3, 2])
def test_text_world_keeps_the_files_classes_and_survives_an_empty_text(tmp_path, classes):
    texts, y = synthetic_text(300, 5, n_classes=classes, noise=0.0)
    texts[7] = ""  # an empty text can still be copied and flooded
    path = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"body": texts, "topic": [["x", "y", "z"][v] for v in y]}), path)

    world = royalty_world.build_media_world("text", 2, read_columns(str(path), "body", "topic", "text"))

    assert world.classes == ["0", "1", "2"][:classes]
    assert set(world.annotations["label"].to_pylist()) <= set(world.classes)
    assert world.media.rows["input_ids"].shape[0] == world.examples.num_rows


def test_a_media_row_without_a_label_or_a_value_is_left_out(tmp_path):
    """Not read as a class "None" (a world with one class too many) nor as an empty payload."""
    path = tmp_path / "gaps.parquet"
    body = ["a b", None, "c d", "e f", "g h"] * 4
    topic = ["x", "y", None, "y", "x"] * 4
    pq.write_table(pa.table({"body": body, "topic": topic}), path)
    values, y = read_columns(str(path), "body", "topic", "text")
    assert values == ["a b", "e f", "g h"] * 4
    np.testing.assert_array_equal(y, [0, 1, 0] * 4)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--kind", "image", "--text-col", "body"], "--text-col is for --kind text"),
        (["--kind", "text", "--data", "{path}", "--text-col", "nope", "--label-col", "topic"],
         "--text-col must name a column"),
        (["--kind", "text", "--data", "{path}", "--text-col", "body", "--label-col", "topic"],
         "too few"),
    ],
)
def test_bad_media_arguments_are_one_error(tmp_path, args, says):
    path = tmp_path / "small.parquet"
    texts, y = synthetic_text(120, 1)
    pq.write_table(pa.table({"body": texts, "topic": [str(v) for v in y]}), path)
    out = subprocess.run([sys.executable, "bench/contributor_value.py", *[a.format(path=path) for a in args]],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert says in out.stderr and "Traceback" not in out.stderr


def test_tabular_file_with_gaps_loads(tmp_path, capsys):
    from bench._common import load

    path = tmp_path / "gaps.parquet"
    rows = 5  # the five rows below, repeated: a class label needs a few rows (class_indices)
    pq.write_table(pa.table({
        "a": [1.0, None, 3.0, float("inf"), 5.0] * rows, "flag": [True, False, True, True, False] * rows,
        "name": [f"n{i}" for i in range(5 * rows)], "empty": pa.array([None] * 5 * rows, pa.float64()),
        "y": ["p", None, "q", "r", "p"] * rows,
    }), path)
    x, y = load(str(path), "y")
    np.testing.assert_array_equal(x, [[1.0, 1.0], [3.0, 1.0], [3.0, 1.0], [5.0, 0.0]] * rows)  # inf: 3
    np.testing.assert_array_equal(y, [0, 1, 2, 0] * rows)
    assert f"{rows} rows without a label dropped, {rows} missing or infinite" in capsys.readouterr().out


def test_categories_and_embeddings_of_a_users_table_become_features(tmp_path, capsys):
    """A real table's class often hangs on a category (a region, a device) or an embedding column: they are
    encoded (one-hot in sorted order, missing: zeros; one feature per list position), and an id column is
    left out by name, rather than every non-number dropped unsaid."""
    from bench._common import load

    n = 40
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({
        "x": np.arange(n, dtype=np.float64),
        "region": pa.array(["north", "south", None, "east"] * (n // 4)).dictionary_encode(),
        "emb": [[float(i), -float(i)] for i in range(n)],
        "row_id": [f"id-{i}" for i in range(n)],
        "y": ["a", "b"] * (n // 2),
    }), path)
    x, y = load(str(path), "y")
    region = np.tile([[0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]], (n // 4, 1))  # east, north, south
    expected = np.hstack([np.arange(n)[:, None], region, np.c_[np.arange(n), -np.arange(n)]])
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(y, [0, 1] * (n // 2))
    said = capsys.readouterr().out
    assert "region (3 categories), emb (2 numbers)" in said and "left out row_id" in said


@pytest.mark.parametrize(("y", "says"), [
    (np.linspace(0.0, 1.0, 60), "holds 60 distinct values in 60 rows"),  # a regression target
    (np.zeros(60), "holds one class only"),
])
def test_a_label_column_that_is_no_classes_is_one_error(tmp_path, y, says):
    """Both readers (numeric features; a text or image column) refuse it in one line, before a world or
    a model is built: a continuous target read as 60 classes would train on nonsense."""
    from bench._common import load

    path = tmp_path / "target.parquet"
    pq.write_table(pa.table({"a": np.arange(60.0), "body": ["w"] * 60, "y": y}), path)
    for read in (lambda: load(str(path), "y"), lambda: read_columns(str(path), "body", "y", "text")):
        with pytest.raises(SystemExit, match=says):
            read()


@pytest.mark.parametrize("classes", [3, 2])
def test_a_tabular_run_on_a_users_file_prints_the_issues_keys(tmp_path, classes):
    """The whole bench at its smallest (2 truth seeds, 1 pay run) on a small file of the user's: the last
    line is one JSON object with the keys the royalty issue names. Two classes are a world too (the
    adversarial labeler then always answers the other class, and the bench says so)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, 400)
    x = rng.normal(0, 2.0, (classes, 6))[y] + rng.normal(size=(400, 6))
    path = tmp_path / "small.parquet"
    pq.write_table(pa.table({**{f"f{j}": x[:, j] for j in range(6)}, "y": [f"c{v}" for v in y]}), path)
    args = ["--data", str(path), "--label-col", "y", "--seeds", "2", "--pay-runs", "1"]
    out = subprocess.run([sys.executable, "bench/contributor_value.py", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["default_policy"] == "valued" and summary["seconds"] > 0
    for policy in ("clip", "net", "valued", "left_out"):
        for role in ("provider", "labeler"):
            assert -1 <= summary["spearman"][f"{policy}/{role}"] <= 1
        assert -1 <= summary["spearman_copies_once"][f"{policy}/provider"] <= 1
        assert 0 <= summary["faulty_share_bps"][policy] <= 10_000
    assert set(summary["faulty_share_bps_by_truth"]) == {"truth", "copies_once"}
    assert all(0 <= v <= 10_000 for v in summary["faulty_share_bps_by_truth"].values())
    assert set(summary["spearman_by_truth"]) == {"provider", "labeler"}
    assert all(v is None or -1 <= v <= 1 for v in summary["spearman_by_truth"].values())
    assert set(summary["goals_met"]) == {"provider", "labeler", "faulty"}
    assert summary["goals_met"]["faulty"] == (summary["faulty_share_bps"]["valued"] <= 200)
    mislabels = summary["mislabels"]  # the review of the consensus labels, the crowd's confidence weighed in
    assert mislabels["votes_weighed"] and 0 < mislabels["wrong"] < mislabels["examples"]
    assert all(0 <= mislabels[k] <= 1 for k in ("auc", "auc_models_alone", "auc_confidence_alone"))
    assert 0 <= mislabels["flagged_wrong"] <= mislabels["flagged"] <= mislabels["examples"]
    said = "2 classes: the adversarial labeler always answers the other class" in out.stdout
    assert said == (classes == 2)
    assert "copycat and prov-b copy one another" in out.stdout  # the ingest's grouping found the pair


def test_a_policy_that_pays_nobody_is_said_and_the_others_still_print(tmp_path):
    """A model that overfit can leave no contributor a positive score (the MLP trained every epoch at a
    constant rate on a 300-feature table did): that policy's pay is empty, the bench says so, and its
    figures are null or zero beside the others'. The bench runs in its own process, with
    ``contributor_weights`` refusing the clip policy as such a run does."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    x = rng.normal(0, 2.0, (3, 6))[y] + rng.normal(size=(400, 6))
    path = tmp_path / "small.parquet"
    pq.write_table(pa.table({**{f"f{j}": x[:, j] for j in range(6)}, "y": [f"c{v}" for v in y]}), path)
    runner = tmp_path / "refusing.py"
    runner.write_text(
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import attribution\n"
        "real = attribution.contributor_weights\n"
        "def weights(*args, **kwargs):\n"
        "    if args[5].negative == 'clip':\n"
        "        raise attribution.ContributorError('no contributor has a positive attribution score')\n"
        "    return real(*args, **kwargs)\n"
        "attribution.contributor_weights = weights\n"
        "sys.argv = ['bench/contributor_value.py', *sys.argv[1:]]\n"
        "runpy.run_path('bench/contributor_value.py', run_name='__main__')\n")
    args = ["--data", str(path), "--label-col", "y", "--seeds", "2", "--pay-runs", "2"]
    out = subprocess.run([sys.executable, str(runner), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "'clip' pays nobody at seed 1000: no contributor has a positive attribution score" in out.stdout
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["spearman"]["clip/provider"] is None and summary["faulty_share_bps"]["clip"] == 0
    assert -1 <= summary["spearman"]["valued/provider"] <= 1
    assert "RuntimeWarning" not in out.stderr


def test_a_table_as_small_as_wine_is_a_world_and_a_smaller_one_is_refused():
    """178 rows (scikit-learn's wine) leave a pool of 143: every provider and labeler of the world has
    examples. Below ``MIN_POOL`` the bench says so in one line instead of building a world of empties."""
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    world = royalty_world.build_world(x, y, seed=0)
    assert len(world.yv) == 35 and set(world.provider) == {p.name for p in royalty_world.PROVIDERS}
    assert min(np.unique(world.provider, return_counts=True)[1]) >= 5
    assert set(world.annotations["annotator"].to_pylist()) == {n for n, *_ in royalty_world.LABELERS}
    with pytest.raises(SystemExit, match=f"need a pool of >= {royalty_world.MIN_POOL}"):
        royalty_world.build_world(x[:120], y[:120], seed=0)


def test_truth_pay_splits_each_roles_share_by_its_positive_truth():
    roles = {"provider": ["p1", "p2", "p3"], "labeler": ["l1", "l2"]}
    truth = {"p1": 3.0, "p2": 1.0, "p3": -2.0, "l1": 0.5, "l2": 0.5}
    assert cv.truth_pay(truth, roles) == {"p1": 5250.0, "p2": 1750.0, "p3": 0.0, "l1": 1500.0, "l2": 1500.0}
    # a role with no positive truth passes its share to the other, as the pay does
    truth.update(l1=-1.0, l2=0.0)
    assert cv.truth_pay(truth, roles) == {"p1": 7500.0, "p2": 2500.0, "p3": 0.0}


def test_truth_reach_ties_every_contributor_who_did_no_good_at_zero():
    """Four providers, two of whom hurt: the truth's own pay ranks the helpful two as the truth does and
    ties the harmful two at zero, so it reaches the Spearman of (0, 0, 1, 2) against (-2, -1, 1, 2)."""
    roles = {"provider": ["p1", "p2", "p3", "p4"], "labeler": ["l1", "l2", "l3"]}
    truth = {"p1": -2.0, "p2": -1.0, "p3": 1.0, "p4": 2.0, "l1": 3.0, "l2": 2.0, "l3": 1.0}
    reach = cv.truth_reach(truth, roles)
    assert reach["provider"] == pytest.approx(spearmanr([0.0, 0.0, 1.0, 2.0], [-2, -1, 1, 2])[0])
    assert reach["provider"] < 1.0
    assert reach["labeler"] == pytest.approx(1.0)  # no harm among them: the truth's pay ranks as the truth


def test_the_goal_lines_say_met_or_missed_and_what_bounds_each():
    spearman = {"valued/provider": 0.82, "valued/labeler": float("nan")}
    ceil, reach = {"provider": 0.9, "labeler": 1.0}, {"provider": 0.98, "labeler": 0.9}
    goals = cv.goal_lines(spearman, 570, ceil, reach, 583)
    assert goals["provider"][1] and not goals["labeler"][1]  # no Spearman (a tie everywhere) is no goal met
    assert not goals["faulty"][1] and "would pay them 583: the goal asks" in goals["faulty"][0]
    assert "ceiling 0.900; its own pay reaches +0.980" in goals["provider"][0]
    truth, pay = [124.9, 127.26, 37.87, 52.68, 24.44, 34.02, -8.27, 0.0, 101.44], [2412, 1429, 811, 911, 438,
                                                                               673, 159, 0, 168]
    exact = 1 - 6 * 24 / (9 * 80)  # rank gaps 1,1,1,1,1,1,4,1,1: the goal exactly, 0.79999... in floats
    assert cv.rho(pay, truth) < exact == 0.8
    assert cv.goal_lines({"valued/provider": cv.rho(pay, truth), "valued/labeler": 0.79}, 0, ceil, reach,
                         0)["provider"][1]
    assert cv.goal_lines(spearman, 200, {"provider": 1, "labeler": 1}, {"provider": 1, "labeler": 1},
                         100)["faulty"] == ("faulty contributors together: 200 bps <= 200 (the truth itself "
                                            "would pay them 100)", True)
