"""Model and TRAK feature bytes: deterministic (also across processes) and lossless."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attribution import (
    AttributionError,
    ModelSpec,
    attribute_query,
    checkpoints_of_features,
    features_from_bytes,
    features_to_bytes,
    model_to_bytes,
    safetensors_metadata,
    tensor_gaps,
    tensors_digest,
    train_with_attribution,
)

from .conftest import blobs

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = """
import hashlib, sys
sys.path.insert(0, {root!r})
from tests.attribution.conftest import blobs
from attribution import AttributionTask, ModelSpec, TrainConfig, features_to_bytes, train_with_attribution
x, y = blobs(60, 5, 3, seed=0)
xv, yv = blobs(5, 5, 3, seed=1)
task = AttributionTask(ModelSpec((5, 8, 3), layer_norm=True),
                       TrainConfig(epochs=2, batch_size=16, n_checkpoints=2, trak_k=32))
res = train_with_attribution(task, x, y, [f"e{{i}}" for i in range(60)], xv, yv, seed=4)
print(hashlib.sha256(features_to_bytes(res.features)).hexdigest())
"""


def test_feature_bytes_round_trip_and_answer_the_same_queries(data, mlp_task, tmp_path):
    x, y, ids, xv, yv = data
    res = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=5)
    blob = features_to_bytes(res.features)
    loaded = features_from_bytes(blob)
    assert features_to_bytes(loaded) == blob
    np.testing.assert_array_equal(loaded.scores(xv, yv), res.features.scores(xv, yv))
    np.testing.assert_array_equal(attribute_query(loaded, xv[0]), attribute_query(res.features, xv[0]))
    np.testing.assert_array_equal(loaded.self_influence(), res.features.self_influence())
    spilled = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=5, feature_dir=str(tmp_path))
    assert features_to_bytes(spilled.features) == blob


def test_feature_bytes_are_the_same_in_a_fresh_process():
    from attribution import AttributionTask, ModelSpec, TrainConfig

    x, y = blobs(60, 5, 3, seed=0)
    xv, yv = blobs(5, 5, 3, seed=1)
    task = AttributionTask(ModelSpec((5, 8, 3), layer_norm=True),
                           TrainConfig(epochs=2, batch_size=16, n_checkpoints=2, trak_k=32))
    res = train_with_attribution(task, x, y, [f"e{i}" for i in range(60)], xv, yv, seed=4)
    here = hashlib.sha256(features_to_bytes(res.features)).hexdigest()
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads()), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(root=str(ROOT))], capture_output=True,
                         text=True, check=True, env=env)
    assert out.stdout.strip() == here


def test_foreign_bytes_are_one_named_error(data, mlp_task):
    x, y, ids, xv, yv = data
    res = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=5, with_features=False)
    with pytest.raises(AttributionError, match="not a Caravan TRAK features file"):
        features_from_bytes(model_to_bytes(res.model, mlp_task.spec))
    with pytest.raises(AttributionError, match="not a Caravan TRAK features file"):
        features_from_bytes(b"garbage")


def test_a_digest_names_tensors_by_name_dtype_shape_and_bytes() -> None:
    """`tensors_digest` is the sha256 of each name, dtype, shape and bytes in name order: the same for
    torch and numpy views of one array and for any insertion order, and moved by any of the four."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    digest = tensors_digest({"w": a, "b": np.zeros(2, np.int64)})
    assert digest == tensors_digest({"b": torch.zeros(2, dtype=torch.int64), "w": torch.from_numpy(a)})
    h = hashlib.sha256()  # the format, written out independently
    for name, arr in (("b", np.zeros(2, np.int64)), ("w", a)):
        h.update(f'["{name}", "{arr.dtype.str}", {list(arr.shape)}]'.encode())
        h.update(arr.tobytes())
    assert digest == h.hexdigest()
    b = np.zeros(2, np.int64)
    for other in ({"v": a, "b": b}, {"w": a.astype(np.float64), "b": b}, {"w": a.reshape(3, 2), "b": b},
                  {"w": a + 1, "b": b}):
        assert tensors_digest(other) != digest
    assert tensors_digest({"w": torch.ones(2, dtype=torch.bfloat16)}) != tensors_digest({"w": torch.ones(2)})
    spec = ModelSpec((2, 2))
    assert spec.to_json() in safetensors_metadata(model_to_bytes(spec.build(0), spec)).values()
    with pytest.raises(ValueError, match="not a safetensors file"):
        safetensors_metadata(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")


def test_a_features_files_checkpoints_are_read_back_in_order_and_garbage_gives_none() -> None:
    """`checkpoints_of_features` returns the state dicts ``checkpoint.{j}.state.{name}`` hold, j = 0, 1, ...;
    bytes that are no safetensors file, other keys or a gap in the numbering give none."""
    from safetensors.torch import save

    one, two = {"w": torch.ones(2), "b.x": torch.zeros(1)}, {"w": torch.full((2,), 2.0), "b.x": torch.ones(1)}
    tensors = {f"checkpoint.{j}.state.{k}": v for j, s in enumerate((one, two)) for k, v in s.items()}
    others = {"x": torch.zeros(1), "checkpoint.0.features": torch.ones(3)}  # not state: left out
    got = checkpoints_of_features(save({**tensors, **others}))
    assert [sorted(s) for s in got] == [["b.x", "w"], ["b.x", "w"]]
    assert torch.equal(got[1]["w"], two["w"]) and torch.equal(got[0]["b.x"], one["b.x"])
    assert checkpoints_of_features(b"garbage") == []
    assert checkpoints_of_features(save({"checkpoint.1.state.w": torch.ones(1)})) == []  # no checkpoint 0
    a, b = save({"a": torch.tensor([2.0, 4.0])}), save({"a": torch.tensor([2.0, 3.0])})
    gaps = tensor_gaps(a, b, relative=True)
    assert gaps == {"a": 0.25} and tensor_gaps(b"garbage", b"garbage") is None
