"""bench/attribution_lds.py --kind text|image at tiny sizes: it runs end to end and its JSON has the keys."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--train", "40", "--targets", "8", "--retrains", "4", "--trak-k", "64"]


def run_lds(*args: str) -> dict:
    out = subprocess.run([sys.executable, "bench/attribution_lds.py", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "it/s]" not in out.stderr  # the anchors' progress bars stay off: they buried the figures
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_keys(summary: dict, model: str) -> None:
    for key in ("lds", "anchor", "loco_spearman", "mislabel_auc", "mislabel_auc_default",
                "mislabel_auc_default_without_validation", "train_s", "train_with_attribution_s",
                "sizes", "left_out", "minutes"):
        assert key in summary, key
    assert f"inrun_sgd/{model}" in summary["lds"]
    assert all(-1 <= v <= 1 for v in summary["lds"].values())
    assert 0 <= summary["mislabel_auc"] <= 1 and 0 <= summary["mislabel_auc_default"] <= 1
    assert 0 <= summary["mislabel_auc_default_without_validation"] <= 1
    assert summary["sizes"]["train"] == 40 and summary["sizes"]["targets"] == 8


def test_text_tiny_with_anchors():
    summary = run_lds("--kind", "text", *TINY, "--no-adamw", "--no-loco")
    check_keys(summary, "transformer")
    assert "inrun_sgd/transformer@fixed_seed" in summary["lds"]
    for anchor in ("dattri_tracin", "dattri_trak_k64", "kronfluence_ekfac"):
        assert f"{anchor}/transformer" in summary["anchor"], summary["left_out"]
    assert any("inrun_adamw" in item for item in summary["left_out"])


def test_image_tiny_from_parquet(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    sys.path.insert(0, str(ROOT))
    from bench._common.lds_models import synthetic_images

    images, labels = synthetic_images(60, seed=3)
    path = tmp_path / "images.parquet"
    pq.write_table(pa.table({"img": images, "cls": [f"c{v}" for v in labels]}), path)
    summary = run_lds("--kind", "image", "--data", str(path), "--image-col", "img", "--label-col", "cls",
                      *TINY, "--no-anchor", "--no-fixed-seed")
    check_keys(summary, "cnn")
    assert "inrun_adamw/cnn" in summary["lds"]
    assert summary["anchor"] is None and summary["loco_spearman"] is not None
    assert -1 <= summary["loco_spearman_default"] <= 1  # TRAK value, what the pipeline pays by


def test_a_users_text_with_repeated_rows_keeps_its_targets_held_out(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    sys.path.insert(0, str(ROOT))
    from bench._common.lds_models import synthetic_text

    texts, labels = synthetic_text(30, seed=4)
    path = tmp_path / "texts.parquet"  # every text twice: a drawn target often repeats a training row
    pq.write_table(pa.table({"body": texts * 2, "topic": [f"t{v}" for v in labels] * 2}), path)
    summary = run_lds("--kind", "text", "--data", str(path), "--text-col", "body", "--label-col", "topic",
                      *TINY, "--no-anchor", "--no-fixed-seed", "--no-adamw", "--no-loco")
    assert 0 < summary["sizes"]["targets"] < 8  # the repeats were left out of the targets, and said
    assert all(-1 <= v <= 1 for v in summary["lds"].values())


def test_synthetic_data_is_seeded_and_decodable():
    sys.path.insert(0, str(ROOT))
    from PIL import Image

    from bench._common.lds_models import synthetic_images, synthetic_text

    assert synthetic_text(20, 1)[0] == synthetic_text(20, 1)[0]
    texts, labels = synthetic_text(200, 1)
    assert len(texts) == 200 and set(np.unique(labels)) == {0, 1, 2, 3}
    images, _ = synthetic_images(5, 1, size=16)
    assert Image.open(io.BytesIO(images[0])).size == (16, 16)


def test_tabular_mislabels_only_sets_the_forest_beside_each_recipe():
    summary = run_lds("--mislabels-only", "--train", "300", "--targets", "50")
    scores = summary["mislabel_auc_cleanlab"]
    assert {"self_confidence/mlp", "self_confidence/logreg", "self_confidence/forest"} <= set(scores)
    assert all(0 <= v <= 1 for v in scores.values())
    assert summary["mislabel_auc_default"] > 0.9  # digits: the pipeline's detector finds flipped labels
    assert summary["mislabel_auc_default_without_validation"] > 0.9  # ... with or without trusted targets
    assert summary["mislabel_flags"]["flipped"] > 0


def test_a_users_table_runs_with_its_anchors_and_no_progress_bars(tmp_path):
    """The tabular kind on a user's Parquet file (string labels, a category column), dattri's anchors
    beside our methods: its figures print, and the anchors' progress bars (tqdm, first imported by
    torch, before the bench could turn them off) no longer bury them."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 200)
    x = rng.normal(size=(200, 4)) + y[:, None]
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({**{f"f{i}": x[:, i] for i in range(4)}, "shop": rng.choice(["n", "s"], 200),
                             "grade": np.array(["low", "mid", "high"])[y]}), path)
    summary = run_lds("--data", str(path), "--label-col", "grade", "--retrains", "4", "--cost-repeats", "1")
    assert {"inrun/logreg", "inrun/mlp", "trak_k512/mlp"} <= set(summary["lds"])
    assert "dattri_tracin/mlp" in summary["anchor"], summary["left_out"]
    assert 0 <= summary["mislabel_auc_default"] <= 1
    assert -1 <= summary["loco_spearman"] <= 1 and -1 <= summary["loco_spearman_default"] <= 1
