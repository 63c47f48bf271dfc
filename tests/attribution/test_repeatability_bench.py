"""bench/repeatability.py at tiny sizes: fresh-process trainings of a recipe agree digest for digest, and
where runs differ the bench names the first digest they part on."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("repeatability", ROOT / "bench" / "repeatability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_fresh_processes_train_the_image_recipe_to_the_same_bits():
    out = subprocess.run([sys.executable, "bench/repeatability.py", "--kind", "image", "--train", "40",
                          "--runs", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["distinct"] == dict.fromkeys(_bench().DIGESTS, 1)
    assert report["first_split"] is None


def test_runs_that_differ_are_told_apart_by_the_first_digest_they_part_on():
    bench = _bench()
    run = {"recipe": "r", "rows": "d", "initial": "i", "checkpoints": ["c0", "c1", "c2"], "model": "m",
           "scores": "s"}
    late = {**run, "checkpoints": ["c0", "c1", "x2"], "model": "m2", "scores": "s2"}
    assert bench.first_split([run, dict(run)]) is None
    assert bench.first_split([run, late]) == "checkpoint 2"
    assert bench.first_split([run, {**late, "rows": "d2"}]) == "rows"
    assert bench.first_split([run, {**run, "checkpoints": ["c0", "c1"]}]) == "checkpoint 2"  # stopped earlier
