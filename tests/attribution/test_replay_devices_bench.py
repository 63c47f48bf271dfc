"""bench/replay_devices.py at tiny sizes: it runs end to end, and a run saved by one invocation lands
exactly on the next one's first CPU run (same build, same kernels), so the gap it prints is real; its
checkpoints, evaluated anew, give its features and scores exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--kind", "image", "--train", "60", "--providers", "2", "--runs", "1"]


def run_bench(*args: str) -> dict:
    out = subprocess.run([sys.executable, "bench/replay_devices.py", *TINY, *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_bench_prints_the_spread_and_a_saved_run_lands_on_it(tmp_path):
    saved = tmp_path / "run.npz"
    first = run_bench("--save", str(saved))["image"]
    assert set(first) >= {"top", "cpu_spread", "threads", "cpu_s"} and first["top"]["score"] > 0
    again = run_bench("--against", str(saved))["image"]
    assert again["saved"]["gap"] == {"score": 0.0, "value": 0.0, "score_sum": 0.0}
    assert again["top"] == first["top"] and again["cpu_spread"] == first["cpu_spread"]
    # its stored checkpoints, evaluated here without training, give its features and scores exactly
    assert again["saved_evaluated_here"] == {"features": 0.0, "scores_of_top": 0.0, "score_sums_of_top": 0.0}
