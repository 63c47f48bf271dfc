"""What per-step attribution costs over plain training of the same model, on the CPU or a GPU.

    python bench/attribution_overhead.py --model mlp [--device auto|cpu|cuda] [--steps N]
                                         [--batch B] [--width W] [--targets T]

A plain SGD step (``plain_steps``) and an attributed step (``attributed_steps``: the targets ride
in the same pass, ghost dot products, scores accumulated on the CPU) of the same model on the same
batches, interleaved step by step so other load falls on both alike; the first ``--warmup``
steps are dropped, and the medians and their ratio are reported. The peak memory of each is
measured in its own subprocess (CPU: peak RSS of that process, torch's ~200 MiB included; CUDA:
``torch.cuda.max_memory_allocated``). Defaults are DESIGN's measured CPU case: MLP
64->1024->1024->10, batch 512, 64 targets. Needs torch and numpy only (no pyarrow, scipy, ...), so
it runs from a bare copy of the repository on a lent GPU machine. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attribution import AttributionError, AttributionTask, ModelSpec, TrainConfig  # noqa: E402
from attribution.trainer import attributed_steps, plain_steps  # noqa: E402
from bench._common import lockstep  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["mlp"], default="mlp")  # a default: `make bench` passes no flags
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each (after the warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024, help="width of the two hidden layers")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--targets", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak", choices=["plain", "attributed"], help=argparse.SUPPRESS)  # the child's role
    args = ap.parse_args(argv)
    if min(args.steps, args.batch, args.width, args.targets) < 1 or args.warmup < 0:
        ap.error("--steps, --batch, --width and --targets must be >= 1, --warmup >= 0")
    return args


def setup(args: argparse.Namespace):
    """The task and data: one epoch of exactly warmup + steps full batches, labels from a random
    linear teacher (learnable, so gradients stay alive), targets drawn apart from the training rows."""
    spec = ModelSpec((args.features, args.width, args.width, args.classes))
    cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=0.05, n_checkpoints=1, device=args.device)
    rng = np.random.default_rng(args.seed)
    n = args.batch * (args.warmup + args.steps)
    x = rng.normal(size=(n + args.targets, args.features)).astype(np.float32)
    y = (x @ rng.normal(size=(args.features, args.classes))).argmax(1).astype(np.int64)
    ids = [f"ex{i:07d}" for i in range(n)]
    return AttributionTask(spec, cfg), (x[:n], y[:n], ids, x[n:], y[n:])


def steps_of(kind: str, task: AttributionTask, data):
    x, y, ids, xv, yv = data
    if kind == "plain":
        return plain_steps(task, x, y, seed=0)
    return attributed_steps(task, x, y, ids, xv, yv, seed=0, with_features=False)


def peak_child(args: argparse.Namespace) -> None:
    """Run one kind alone (warmup + steps) and print its peak memory in MiB."""
    task, data = setup(args)
    device = task.config.torch_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in steps_of(args.peak, task, data):
        pass
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        print(torch.cuda.max_memory_allocated(device) / 2**20)
    else:
        print(peak_rss_mb())


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` on Linux, as ``ru_maxrss`` keeps the parent's peak across
    fork and exec (the child would report the timing run's peak, not its own)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_mb(kind: str, argv: list[str]) -> float:
    out = subprocess.run([sys.executable, __file__, *argv, "--peak", kind],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"error: the {kind} peak-memory run failed:\n{out.stderr[-2000:]}")
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    try:
        task, data = setup(args)
        device = task.config.torch_device()
    except AttributionError as e:
        sys.exit(f"error: {e}")
    if args.peak:
        peak_child(args)
        return
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else None
    name = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {device.type} ({name}); MLP {task.spec.sizes}, batch {args.batch}, "
          f"{args.targets} targets, {args.steps} timed steps after {args.warmup}", flush=True)
    plain_s, attributed_s, _ = lockstep(steps_of("plain", task, data), steps_of("attributed", task, data),
                                        plain_first=True, sync=sync)
    # One segment per step plus the generator's tail; setup falls in the first (warmup) segment.
    plain_s = plain_s[args.warmup : args.warmup + args.steps]
    attributed_s = attributed_s[args.warmup : args.warmup + args.steps]
    p, a = statistics.median(plain_s), statistics.median(attributed_s)
    print(f"  plain step {1000 * p:.2f} ms, attributed step {1000 * a:.2f} ms -> {a / p:.3f}x "
          f"(medians of {args.steps} interleaved steps)", flush=True)
    child_argv = [arg for arg in argv if arg != "--peak"]
    out = {
        "model": args.model,
        "device": device.type,
        "optimizer": task.config.optimizer,
        "sizes": {"layers": list(task.spec.sizes), "batch": args.batch, "targets": args.targets,
                  "steps": args.steps},
        "plain_step_s": round(p, 9),  # ns: a tiny step keeps its ratio to the attributed one
        "attributed_step_s": round(a, 9),
        "ratio": round(a / p, 4),
        "plain_peak_mb": peak_mb("plain", child_argv),
        "attributed_peak_mb": peak_mb("attributed", child_argv),
    }
    print(f"  peak memory ({'max_memory_allocated' if device.type == 'cuda' else 'RSS'}): plain "
          f"{out['plain_peak_mb']} MiB, attributed {out['attributed_peak_mb']} MiB", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
