"""Where training runs: torch and numpy alone suffice, ``TrainConfig.device``, and the overhead bench."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from attribution import DeviceUnavailableError, train_plain, train_with_attribution
from attribution.task import TrainConfig
from attribution.trainer import run_id_for

ROOT = Path(__file__).resolve().parents[2]
# What a lent GPU machine lacks: it has Python, torch and numpy, nothing else.
ABSENT = ("pyarrow", "eth_utils", "scipy", "safetensors", "cleanlab", "sklearn", "pandas", "schemas")


@pytest.fixture
def bare_env(tmp_path):
    """An environment whose Python (and every subprocess it starts) cannot import ``ABSENT``:
    a ``sitecustomize`` on PYTHONPATH marks them missing in ``sys.modules`` at startup."""
    (tmp_path / "sitecustomize.py").write_text(
        f"import sys\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n"
    )
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}


def run_bare(env: dict, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_training_needs_only_torch_and_numpy(bare_env):
    script = textwrap.dedent(f"""
        import sys
        for name in {ABSENT!r}:
            try:
                __import__(name)
            except ImportError:
                continue
            raise SystemExit(f"the blocker let {{name}} import")
        import numpy as np
        import attribution
        from attribution import AttributionTask, ModelSpec, TrainConfig, train_plain, train_with_attribution

        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(96, 5)), rng.integers(0, 3, 96)
        xv, yv = rng.normal(size=(7, 5)), rng.integers(0, 3, 7)
        task = AttributionTask(ModelSpec((5, 16, 3), layer_norm=True),
                               TrainConfig(epochs=1, batch_size=32, trak_k=8, device="auto"))
        res = train_with_attribution(task, x, y, [f"e{{i}}" for i in range(96)], xv, yv, seed=0)
        assert res.scores.shape == (96,) and np.isfinite(res.scores).all() and res.scores.any()
        assert res.features is not None and len(res.checkpoints) == 1
        train_plain(task, x, y, seed=0)
        loaded = sorted(n for n in {ABSENT!r} if sys.modules.get(n) is not None)
        assert not loaded, loaded
        try:
            attribution.model_to_bytes
        except ImportError:
            print("ok")
    """)
    assert run_bare(bare_env, "-c", script).stdout.split() == ["ok"]


def test_device_must_be_named():
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="gpu")


def test_cuda_without_one_is_named_before_training(monkeypatch, mlp_task, data):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    task = replace(mlp_task, config=replace(mlp_task.config, device="cuda"))
    x, y, ids, xv, yv = data
    with pytest.raises(DeviceUnavailableError, match="device='auto'"):
        train_with_attribution(task, x, y, ids, xv, yv, seed=0)
    with pytest.raises(DeviceUnavailableError):
        train_plain(task, x, y, seed=0)


def test_auto_without_cuda_is_the_cpu_run(monkeypatch, mlp_task, data):
    """``auto`` on a CPU machine gives the CPU run bit for bit, run id included."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    x, y, ids, xv, yv = data
    auto = replace(mlp_task, config=replace(mlp_task.config, device="auto"))
    a = train_with_attribution(auto, x, y, ids, xv, yv, seed=0, with_features=False)
    c = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=0, with_features=False)
    assert a.run_id == c.run_id
    np.testing.assert_array_equal(a.scores, c.scores)


def test_cpu_run_id_is_unchanged_by_the_device_field(mlp_task):
    """The id is the pre-device formula on the CPU (stored runs keep their ids); so are fields added
    later (Adam's, precision, target reuse, the model TRAK's ridge, early stopping) while they keep their
    defaults."""
    ids = ["a", "b"]
    later = {"device", "adam_betas", "adam_eps", "precision", "target_every", "target_pass",
             "trak_model_damping", "patience"}
    settings = {k: v for k, v in vars(mlp_task.config).items() if k not in later}
    h = hashlib.sha256()
    h.update(mlp_task.spec.to_json().encode())
    h.update(repr(sorted(settings.items())).encode())
    h.update(b"3")
    for e in ids:
        h.update(e.encode() + b"\0")
    assert run_id_for(mlp_task, ids, 3) == h.hexdigest()[:16]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_the_cpu_run(mlp_task, data):
    x, y, ids, xv, yv = data
    gpu = replace(mlp_task, config=replace(mlp_task.config, device="cuda"))
    g = train_with_attribution(gpu, x, y, ids, xv, yv, seed=0)
    c = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=0)
    assert g.run_id != c.run_id
    assert next(g.model.parameters()).device.type == "cpu"
    assert all(v.device.type == "cpu" for v in g.checkpoints[0].values())
    np.testing.assert_allclose(g.scores, c.scores, rtol=1e-3, atol=1e-6 * np.abs(c.scores).max())
    plain = train_plain(gpu, x, y, seed=0)
    assert next(plain.parameters()).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["image", "text"])
def test_a_cuda_run_keeps_fp32_exact_and_repeats_bit_for_bit(kind):
    """A conv net's and a transformer's run on CUDA, twice: the same scores bit for bit (deterministic
    cuDNN and embedding gradients), fp32 without TF32; what lets replay check a GPU run on the same GPU
    exactly."""
    import pyarrow as pa

    from attribution import IMAGE_CONFIG, TEXT_CONFIG, encode_payload_split, train_trak_valued
    from bench._common.lds_models import synthetic_images, synthetic_text

    n = 96
    values, y = synthetic_images(n, 0, n_classes=3) if kind == "image" else synthetic_text(n, 0, n_classes=3)
    table = pa.table({"example_id": [f"{i:064x}" for i in range(n)], "x": values, "label": y.astype(str)})
    config = replace(IMAGE_CONFIG if kind == "image" else TEXT_CONFIG, epochs=2, device="cuda")
    split = encode_payload_split(table, np.arange(n) % 8 == 0, kind=kind, column="x", config=config)
    first, again = (train_trak_valued(split.task, split.train, split.example_ids, split.targets, seed=0)
                    for _ in range(2))
    assert first.scores.tobytes() == again.scores.tobytes() and np.abs(first.scores).max() > 0
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cuda.mem_efficient_sdp_enabled()


DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _pipeline_path(kind: str, device: str) -> tuple[np.ndarray, np.ndarray]:
    """What the training asset runs, through attribution's public face: encode the table, train and
    value by TRAK (the MLP through its own driver), leave each provider out. Scores and values."""
    import pyarrow as pa

    from attribution import (
        IMAGE_CONFIG,
        MLP_CONFIG,
        encode_payload_split,
        encode_split,
        mlp_left_out,
        mlp_valued_by_trak,
        model_left_out,
        train_split,
        train_trak_valued,
    )

    rng = np.random.default_rng(0)
    n = 90
    y = rng.integers(0, 3, n)
    ids = [f"{i:064x}" for i in range(n)]
    is_target = np.arange(n) % 6 == 0
    groups = {p: np.arange(n - int(is_target.sum())) % 3 == i for i, p in enumerate("abc")}
    if kind == "mlp":
        x = rng.normal(size=(n, 4)) + y[:, None]
        table = pa.table({"example_id": ids, **{f"f{j}": x[:, j] for j in range(4)}, "label": y.astype(str)})
        split = encode_split(table, is_target)
        config = replace(MLP_CONFIG, epochs=3, device=device)
        trained = train_split(split, [8], config, seed=0)
        result = mlp_valued_by_trak(trained, split.X, split.y, split.X_targets, split.y_targets, seed=0)
        values = mlp_left_out(result.task, split.X, split.y, split.X_targets, split.y_targets, groups, seed=0,
                              runs=1)
    else:
        from bench._common.lds_models import synthetic_images

        images, y = synthetic_images(n, 0, n_classes=3)
        table = pa.table({"example_id": ids, "image": images, "label": y.astype(str)})
        split = encode_payload_split(table, is_target, kind="image", column="image",
                                     config=replace(IMAGE_CONFIG, epochs=2, device=device))
        result = train_trak_valued(split.task, split.train, split.example_ids, split.targets, seed=0)
        values = model_left_out(split.task, split.train, split.targets, groups, seed=0, runs=1)
    assert all(p.device.type == "cpu" for p in result.model.parameters())  # stored and served from the CPU
    return result.scores, values.sort_by("contributor")["value"].to_numpy()


@pytest.mark.parametrize("kind", ["mlp", "image"])
@pytest.mark.parametrize("device", DEVICES)
def test_the_training_assets_path_runs_on_each_device_alike(kind, device):
    scores, values = _pipeline_path(kind, device)
    assert np.isfinite(scores).all() and np.abs(scores).max() > 0 and np.isfinite(values).all()
    if device != "cpu":
        cpu_scores, cpu_values = _pipeline_path(kind, "cpu")
        np.testing.assert_allclose(scores, cpu_scores, atol=1e-2 * np.abs(cpu_scores).max())
        np.testing.assert_allclose(values, cpu_values, atol=1e-2 * np.abs(cpu_values).max())


def test_overhead_bench_runs_with_torch_and_numpy_alone(bare_env):
    sizes = ["--steps", "3", "--warmup", "1", "--batch", "32", "--width", "16", "--targets", "4"]
    out = run_bare(bare_env, "bench/attribution_overhead.py", "--model", "mlp", *sizes)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(doc) == {"model", "device", "optimizer", "sizes", "plain_step_s", "attributed_step_s", "ratio",
                        "plain_peak_mb", "attributed_peak_mb"}
    assert doc["sizes"] == {"layers": [64, 16, 16, 10], "batch": 32, "targets": 4, "steps": 3}
    assert doc["plain_step_s"] > 0 and doc["attributed_step_s"] > 0 and doc["plain_peak_mb"] > 0
    assert doc["ratio"] == pytest.approx(doc["attributed_step_s"] / doc["plain_step_s"], rel=1e-3)


@pytest.mark.parametrize("model,sizes", [
    ("text-transformer", ["--batch", "4", "--width", "16", "--tokens", "8", "--targets", "2",
                          "--layers", "1"]),
    ("image-cnn", ["--batch", "4", "--width", "8", "--targets", "2"]),
])
def test_overhead_bench_runs_the_model_task_recipes_with_torch_and_numpy_alone(bare_env, model, sizes):
    """(``--pass-cost 0``: layers form every example's gradient, whatever its tokens.)"""
    steps = ["--steps", "2", "--warmup", "1", "--target-pass", "separate", "--pass-cost", "0"]
    out = run_bare(bare_env, "bench/attribution_overhead.py", "--model", model, *steps, *sizes,
                   "--compare-adamw")
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["model"] == model and doc["optimizer"] == "sgd" and doc["target_pass"] == "separate"
    assert doc["pass_cost"] == 0
    assert doc["sizes"]["batch"] == 4 and doc["sizes"]["targets"] == 2
    assert doc["ratio"] == pytest.approx(doc["attributed_step_s"] / doc["plain_step_s"], rel=1e-3)
    assert doc["adamw"]["ratio"] > 0 and doc["attributed_peak_mb"] > 0


def test_overhead_bench_measures_the_reused_target_gradient_on_a_run_that_learns(bare_env):
    sizes = ["--batch", "8", "--width", "16", "--tokens", "8", "--targets", "2", "--layers", "1"]
    out = run_bare(bare_env, "bench/attribution_overhead.py", "--model", "text-transformer", "--steps", "2",
                   "--warmup", "1", *sizes, "--target-every", "2", "--fidelity-epochs", "4")
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert -1.0 <= doc["fidelity_pearson"] <= 1.0
    before, after = doc["fidelity_loss"]
    assert after < before  # the planted class signal is learned: the comparison is over a moving model
