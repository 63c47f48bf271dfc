"""What per-step attribution costs over plain training of the same model, on the CPU or a GPU.

    python bench/attribution_overhead.py --model mlp|text-transformer|image-cnn|gpt2-small
        [--device auto|cpu|cuda] [--optimizer sgd|adamw] [--precision fp32|bf16] [--steps N]
        [--batch B] [--width W] [--targets T] [--tokens L] [--layers N] [--compare-adamw]
        [--target-every K] [--fidelity-epochs E] [--target-pass joint|separate] [--pass-cost N]

A plain step (the model's own optimizer on autograd's gradients) and an attributed step (the
targets ride in the same pass, per-layer kernels, scores accumulated on the device) of the same
model on the same batches, interleaved step by step so other load falls on both alike; the first
``--warmup`` steps are dropped, and the medians and their ratio are reported. The peak memory of
each is measured in its own subprocess (CPU: peak RSS of that process, torch's ~200 MiB included;
CUDA: ``torch.cuda.max_memory_allocated``). Models and their defaults:

- ``mlp``: DESIGN's measured CPU case, 64->1024->1024->10, batch 512, 64 targets, SGD (the MLP driver);
- ``text-transformer``: the recipe's encoder classifier, 2 layers, d=128, T=64, batch 64, 8 targets,
  SGD, padded sequences (``--compare-adamw`` adds the AdamW ratio beside it);
- ``image-cnn``: the recipe's conv net on 32x32 RGB images, batch 64, 8 targets, SGD;
- ``gpt2-small``: 12 layers, d=768, T=1024, vocabulary 50257 with a tied head, batch 16, 8 targets,
  AdamW, bf16 autocast. Meant for a GPU; on the CPU it runs at a reduced size (2 layers, d=128,
  T=128, batch 4) and says so (``"reduced": true`` in ``sizes``).

Needs torch and numpy only (no pyarrow, scipy, tokenizers, ...), so it runs from a bare copy of
the repository on a lent GPU machine. The last line is one JSON object.

``--target-every K`` (K > 1) reuses the target gradient for K steps, an approximation that drops
the target rows from most passes; the JSON then adds ``fidelity_pearson``, the Pearson correlation
of its scores with the exact ones (K = 1), both from a run that learns: ``--fidelity-epochs`` epochs
over the same rows at a rate where the model fits the rows' planted class signal (``FIDELITY_LR``;
the train loss before and after is printed as ``fidelity_loss``), since a model that barely moves
keeps its target gradient nearly constant and would flatter the reuse. ``--target-pass separate`` gives the
target rows a pass of their own (peak memory near plain training's) instead of riding in the batch's.
``--pass-cost N`` sets the device's token count above which Linear and Conv2d layers form each
example's gradient once for the update and the score (``attribution.kernels.linear.PASS_COST``; the
JSON says which was used): to measure where that pays on a new device.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attribution import AttributionError, AttributionTask, ModelSpec, TrainConfig  # noqa: E402
from attribution.inrun import model_steps, plain_model_steps  # noqa: E402
from attribution.kernels import linear as kernels_linear  # noqa: E402
from attribution.model_task import ModelTask  # noqa: E402
from attribution.trainer import attributed_steps, plain_steps, run_to_end  # noqa: E402
from bench._common import lockstep  # noqa: E402

MODELS = ("mlp", "text-transformer", "image-cnn", "gpt2-small")
# Per model: batch, targets, width (d), tokens (T), layers, optimizer, precision on a GPU.
DEFAULTS = {
    "mlp": dict(batch=512, targets=64, width=1024, tokens=1, layers=2, optimizer="sgd", precision="fp32"),
    "text-transformer": dict(batch=64, targets=8, width=128, tokens=64, layers=2, optimizer="sgd",
                             precision="fp32"),
    "image-cnn": dict(batch=64, targets=8, width=32, tokens=32, layers=2, optimizer="sgd", precision="fp32"),
    "gpt2-small": dict(batch=16, targets=8, width=768, tokens=1024, layers=12, optimizer="adamw",
                       precision="bf16"),
}
GPT2_ON_CPU = dict(batch=4, width=128, tokens=128, layers=2)
# Rates at which the recipes' models visibly fit the planted signal within a few epochs (the fidelity run).
FIDELITY_LR = {"sgd": 0.5, "adamw": 1e-3}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=MODELS, default="mlp")  # a default: `make bench` passes no flags
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--optimizer", choices=["sgd", "adamw"])
    ap.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 autocast needs a GPU")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each (after the warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--width", type=int, help="hidden width (mlp), d_model (transformers), image side (cnn)")
    ap.add_argument("--tokens", type=int, help="sequence length T (transformers)")
    ap.add_argument("--layers", type=int, help="transformer blocks")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--targets", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-adamw", action="store_true", help="also time AdamW and print its ratio")
    ap.add_argument("--target-every", type=int, default=1, help="reuse the target gradient for K steps")
    ap.add_argument("--fidelity-epochs", type=int, default=3,
                    help="epochs of the run whose scores compare --target-every K with exact (K > 1)")
    ap.add_argument("--target-pass", choices=["joint", "separate"], default="joint",
                    help="targets in the batch's pass, or in their own (less memory)")
    ap.add_argument("--pass-cost", type=int, help="tokens per example above which layers form each example's "
                    "gradient (attribution.kernels.linear.PASS_COST of the device; 0: always, a large "
                    "number: never)")
    ap.add_argument("--peak", choices=["plain", "attributed"], help=argparse.SUPPRESS)  # the child's role
    args = ap.parse_args(argv)
    cpu_only = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    args.reduced = args.model == "gpt2-small" and cpu_only
    defaults = {**DEFAULTS[args.model], **(GPT2_ON_CPU if args.reduced else {})}
    if cpu_only:
        defaults["precision"] = "fp32"
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sizes = (args.steps, args.batch, args.width, args.targets, args.tokens, args.layers, args.target_every,
             args.fidelity_epochs)
    if min(sizes) < 1 or args.warmup < 0:
        ap.error("--steps, --batch, --width, --tokens, --layers, --targets, --target-every and "
                 "--fidelity-epochs must be >= 1, --warmup >= 0")
    if args.model == "mlp" and args.target_every > 1:
        ap.error("--target-every applies to the ModelTask models, not to --model mlp")
    return args


@dataclass
class Setup:
    """One model's two step generators (each a fresh run), the sizes to print, and the training rows
    (ModelTask models)."""

    config: TrainConfig
    plain: Callable[[], Iterator]
    attributed: Callable[[], Iterator]
    sizes: dict
    rows: dict | None = None


def setup(args: argparse.Namespace, optimizer: str | None = None, target_every: int | None = None, *,
          epochs: int = 1, lr: float | None = None) -> Setup:
    """The task and data: ``epochs`` epochs of exactly warmup + steps full batches, labels learnable
    (a class signal planted in each row, so gradients stay alive and the model can fit), targets
    drawn apart from the training rows."""
    optimizer = optimizer or args.optimizer
    lr = lr if lr is not None else 0.05 if optimizer == "sgd" else 1e-4
    cfg = TrainConfig(epochs=epochs, batch_size=args.batch, lr=lr, n_checkpoints=1, device=args.device,
                      optimizer=optimizer, precision=args.precision,
                      target_every=args.target_every if target_every is None else target_every,
                      target_pass=args.target_pass)
    n = args.batch * (args.warmup + args.steps)
    if args.model == "mlp":
        return _mlp(args, cfg, n)
    gen = torch.Generator().manual_seed(args.seed)
    task, rows, sizes = _model(args, cfg, n + args.targets, gen)
    train = {k: v[:n] for k, v in rows.items()}
    targets = {k: v[n:] for k, v in rows.items()}
    ids = [f"ex{i:07d}" for i in range(n)]
    sizes = {**sizes, "batch": args.batch, "targets": args.targets, "steps": args.steps}
    return Setup(cfg, lambda: plain_model_steps(task, train, seed=0),
                 lambda: model_steps(task, train, ids, targets, seed=0), sizes, train)


def _mlp(args: argparse.Namespace, cfg: TrainConfig, n: int) -> Setup:
    spec = ModelSpec((args.features, args.width, args.width, args.classes))
    task = AttributionTask(spec, cfg)
    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(n + args.targets, args.features)).astype(np.float32)
    y = (x @ rng.normal(size=(args.features, args.classes))).argmax(1).astype(np.int64)
    ids = [f"ex{i:07d}" for i in range(n)]
    sizes = {"layers": list(spec.sizes), "batch": args.batch, "targets": args.targets, "steps": args.steps}
    return Setup(cfg, lambda: plain_steps(task, x[:n], y[:n], seed=0),
                 lambda: attributed_steps(task, x[:n], y[:n], ids, x[n:], y[n:], seed=0, with_features=False),
                 sizes)


def _model(args: argparse.Namespace, cfg: TrainConfig, n: int, gen: torch.Generator):
    """(task, rows, sizes) of a ModelTask model with ``n`` random rows."""
    if args.model == "gpt2-small":
        from bench._common.gpt import Gpt, lm_loss

        vocab = 50257
        heads = max(1, args.width // 64)
        dims = dict(vocab=vocab, positions=args.tokens, d=args.width, layers=args.layers, heads=heads)
        task = ModelTask("gpt2-small", lambda seed: Gpt(**dims), cfg, loss=lm_loss)
        rows = {"input_ids": torch.randint(0, vocab, (n, args.tokens + 1), generator=gen)}
        return task, rows, {**dims, "tokens": args.tokens, "reduced": args.reduced}
    labels = torch.randint(0, args.classes, (n,), generator=gen)
    if args.model == "text-transformer":
        from attribution.recipes.text import text_transformer_task

        vocab = 2000
        task = text_transformer_task(vocab, args.classes, args.tokens, d_model=args.width,
                                     n_layers=args.layers, n_heads=max(1, args.width // 32), config=cfg)
        lengths = torch.randint(args.tokens // 4, args.tokens + 1, (n,), generator=gen)
        mask = (torch.arange(args.tokens)[None] < lengths[:, None]).long()
        ids = torch.randint(1, vocab, (n, args.tokens), generator=gen)
        # A quarter of the tokens are "topic words" of the row's class (ids ≡ 1 + label mod classes).
        topic = 1 + labels[:, None] + args.classes * torch.randint(0, (vocab - 2) // args.classes,
                                                                   ids.shape, generator=gen)
        ids = torch.where(torch.rand(ids.shape, generator=gen) < 0.25, topic, ids) * mask  # 0 = [PAD]
        rows = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        return task, rows, {"vocab": vocab, "d": args.width, "layers": args.layers, "tokens": args.tokens}
    from attribution.recipes.image import ImagePolicy, image_cnn_task

    policy = ImagePolicy(args.width, args.width, mode="RGB")
    task = image_cnn_task(policy, args.classes, config=cfg)
    pixels = torch.rand(n, 3, args.width, args.width, generator=gen)
    # The class as a brighter band: its channel and its rows depend on the label.
    band = torch.arange(args.width)[None] // max(1, args.width // args.classes) == labels[:, None]
    pixels[torch.arange(n), labels % 3] += 0.5 * band[:, :, None]
    rows = {"pixel_values": pixels, "labels": labels}
    return task, rows, {"image": [3, args.width, args.width], "recipe": dict(task.recipe)}


def peak_child(args: argparse.Namespace) -> None:
    """Run one kind alone (warmup + steps) and print its peak memory in MiB."""
    run = setup(args)
    device = run.config.torch_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in (run.plain if args.peak == "plain" else run.attributed)():
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


def timed(run: Setup, args: argparse.Namespace, sync: Callable[[], None] | None) -> tuple[float, float]:
    """Median plain and attributed step times, interleaved step by step."""
    plain_s, attributed_s, _ = lockstep(run.plain(), run.attributed(), plain_first=True, sync=sync)
    # One segment per step plus the generator's tail; setup falls in the first (warmup) segment.
    window = slice(args.warmup, args.warmup + args.steps)
    return statistics.median(plain_s[window]), statistics.median(attributed_s[window])


def fidelity(args: argparse.Namespace) -> dict:
    """Pearson of the scores with the target gradient reused (``--target-every``) against exact ones,
    both over one run of ``--fidelity-epochs`` epochs at ``FIDELITY_LR``; and that run's train loss
    before and after (the model must move for the comparison to mean anything)."""
    kw = dict(epochs=args.fidelity_epochs, lr=FIDELITY_LR[args.optimizer])
    reused = setup(args, **kw)
    approx = run_to_end(reused.attributed())
    exact = run_to_end(setup(args, target_every=1, **kw).attributed())
    return {"fidelity_pearson": round(float(np.corrcoef(approx.scores, exact.scores)[0, 1]), 5),
            "fidelity_loss": [train_loss(exact.task, model, reused.rows, args.batch)
                              for model in (exact.task.fresh(0), exact.model)]}


def train_loss(task: ModelTask, model: torch.nn.Module, rows: dict, batch: int, most: int = 256) -> float:
    """The mean loss over the first ``most`` training rows, ``batch`` at a time (a gpt2-small batch
    of logits is already gigabytes)."""
    n = min(most, len(next(iter(rows.values()))))
    with torch.no_grad():
        losses = [task.loss(model, {k: v[i : i + batch] for k, v in rows.items()})
                  for i in range(0, n, batch)]
    return round(float(torch.cat(losses).mean()), 4)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    try:
        run = setup(args)
        device = run.config.torch_device()
    except AttributionError as e:
        sys.exit(f"error: {e}")
    if args.pass_cost is not None:
        kernels_linear.PASS_COST[device.type] = args.pass_cost
    if args.peak:
        peak_child(args)
        return
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else None
    name = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} threads"
    reduced = " (reduced size on the CPU)" if args.reduced else ""
    print(f"torch {torch.__version__}, {device.type} ({name}); {args.model} {run.sizes}, "
          f"{args.optimizer}, {args.precision}{reduced}", flush=True)
    p, a = timed(run, args, sync)
    print(f"  plain step {1000 * p:.2f} ms, attributed step {1000 * a:.2f} ms -> {a / p:.3f}x "
          f"(medians of {args.steps} interleaved steps)", flush=True)
    child_argv = [arg for arg in argv if arg not in ("--peak", "--compare-adamw")]
    out = {
        "model": args.model,
        "device": device.type,
        "optimizer": args.optimizer,
        **({} if args.model == "mlp" else {"target_pass": args.target_pass,
                                            "pass_cost": kernels_linear.PASS_COST.get(device.type)}),
        "sizes": run.sizes,
        "plain_step_s": round(p, 9),  # ns: a tiny step keeps its ratio to the attributed one
        "attributed_step_s": round(a, 9),
        "ratio": round(a / p, 4),
        "plain_peak_mb": peak_mb("plain", child_argv),
        "attributed_peak_mb": peak_mb("attributed", child_argv),
    }
    print(f"  peak memory ({'max_memory_allocated' if cuda else 'RSS'}): plain "
          f"{out['plain_peak_mb']} MiB, attributed {out['attributed_peak_mb']} MiB", flush=True)
    if args.compare_adamw and args.optimizer != "adamw":
        pa, aa = timed(setup(args, "adamw"), args, sync)
        out["adamw"] = {"plain_step_s": round(pa, 9), "attributed_step_s": round(aa, 9),
                        "ratio": round(aa / pa, 4)}
        print(f"  AdamW: plain step {1000 * pa:.2f} ms, attributed step {1000 * aa:.2f} ms -> {aa / pa:.3f}x",
              flush=True)
    if args.target_every > 1:
        out.update(fidelity(args))
        print(f"  scores with the target gradient reused for {args.target_every} steps vs exact, over "
              f"{args.fidelity_epochs} epochs (train loss {out['fidelity_loss']}): Pearson "
              f"{out['fidelity_pearson']}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
