"""Does a training repeat bit for bit in fresh processes? Replay's premise, under stress.

    python bench/repeatability.py [--kind text|image] [--train N] [--runs R] [--load L] [--threads T]

``caravan verify --replay`` retrains a run on the auditor's machine and asks for the same scores bit
for bit on the same torch build and CPU. One text demo once failed its own replay on the machine that
trained it (its model a thousandth off per weight, its 48 left-out retrains identical), and the next
twenty trainings repeated. This bench hunts such a run: it trains the recipe's attributed run
(``train_trak_valued`` at the pipeline's defaults, built as ``bench/replay_devices.py`` builds it) ``R``
times, each in a fresh Python process (as the pipeline's first training of a process is), with ``L``
busy processes beside it (a machine that ingests, labels or serves while it trains), and compares
their digests: inputs (recipe with its tokenizer, rows), initial weights, each checkpoint, the final
weights and the scores (``attribution.tensors_digest``, as a training record names its inputs, initial
weights and checkpoints, to 12 digits). Runs that differ are told apart by the first digest where they
part.
Environment variables reach the children unchanged, so a kernel setting is tried by setting it
(``MKL_DYNAMIC=FALSE python bench/repeatability.py ...``). The last line is one JSON object:
``{"kind", "runs", "distinct": {digest: count of distinct values}, "first_split", "seconds"}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGESTS = ("recipe", "rows", "initial", "checkpoints", "model", "scores")


def digest(named: dict) -> str:
    """The first 12 hex digits of ``attribution.tensors_digest`` (what training records name them by)."""
    from attribution import tensors_digest

    return tensors_digest(named)[:12]


def child(kind: str, n: int, threads: int) -> dict:
    """One training in this process: the digests of everything it read and made."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from attribution import train_trak_valued
    from bench.replay_devices import task_and_rows

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    task, train, val = task_and_rows(kind, n, max(n // 5, 50), seed=0)
    rows = {**{f"train.{k}": v for k, v in train.items()}, **{f"targets.{k}": v for k, v in val.items()}}
    result = train_trak_valued(task, train, [f"{kind}-{i:05d}" for i in range(n)], val, seed=0)
    return {
        "recipe": hashlib.sha256(task.to_json().encode()).hexdigest()[:12],
        "rows": digest(rows),
        "initial": digest(task.fresh(0).state_dict()),
        "checkpoints": [digest(c) for c in result.checkpoints],
        "model": digest(result.model.state_dict()),
        "scores": digest({"scores": np.asarray(result.scores, dtype=np.float64)}),
        "threads": torch.get_num_threads(),
        "s": round(time.perf_counter() - start, 1),
    }


def first_split(runs: list[dict]) -> str | None:
    """The first digest (checkpoints one by one) on which the runs do not all agree; None if none."""
    for key in DIGESTS:
        if key == "checkpoints":
            for i in range(max(len(r[key]) for r in runs)):
                if len({r[key][i] if i < len(r[key]) else None for r in runs}) > 1:
                    return f"checkpoint {i}"
        elif len({r[key] for r in runs}) > 1:
            return key
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("text", "image"), default="text")
    ap.add_argument("--train", type=int, default=800, help="training rows (the text demo trains ~800)")
    ap.add_argument("--runs", type=int, default=8, help="fresh-process trainings")
    ap.add_argument("--load", type=int, default=0, help="busy processes running beside each training")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each run (0: torch's default)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.kind, args.train, args.threads)))
        return
    start = time.perf_counter()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    runs = []
    try:
        for i in range(args.runs):
            out = subprocess.run([sys.executable, __file__, "--child", "--kind", args.kind, "--train",
                                  str(args.train), "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            r = runs[-1]
            print(f"run {i}: model {r['model']} scores {r['scores']} threads {r['threads']} {r['s']} s",
                  flush=True)
    finally:
        for p in busy:
            p.kill()
    distinct = {k: len({json.dumps(r[k]) for r in runs}) for k in DIGESTS}
    for key in ("model", "scores"):
        print(f"{key}: " + ", ".join(f"{d} x{c}" for d, c in Counter(r[key] for r in runs).most_common()))
    print(json.dumps({"kind": args.kind, "train": args.train, "runs": args.runs, "load": args.load,
                      "distinct": distinct, "first_split": first_split(runs),
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
