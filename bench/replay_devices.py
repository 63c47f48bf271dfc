"""How far a run trained on another device lands from a CPU replay, against the band replay allows.

    python bench/replay_devices.py [--kind image|text|both] [--train N] [--providers P] [--runs R]

``caravan verify --replay`` checks a run trained elsewhere (another CPU, a GPU) within a band made of
two retrains of its own, side by side on half the cores each, the second nudged
(``pipelines.replay.Band``): the recorded score tolerance, or ``SPREAD_FACTOR`` (3) times the largest
score gap between the two, and ``VALUE_SIGMAS`` (5) standard errors of a left-out value's rounding
noise (``attribution.value_noise`` over every seed's pair of retrains). This bench measures what that
band must hold, for the pipeline's text and image recipes at their pipeline defaults (``TEXT_CONFIG``,
``IMAGE_CONFIG``: AdamW, decayed rate, the transformer stopping early), on synthetic data split among
providers:

- two CPU runs as replay makes them (the replay's spread), each at half the threads (one after the
  other here), the second with every weight a last bit off after every step
  (``attribution.nudged_steps``: ``nudge_units``, 256 units under these recipes' AdamW); the examples'
  TRAK value (what pay reads) and each provider's left-out value (``model_left_out``, ``--runs``
  seeds);
- on a machine with CUDA, the same run on the GPU twice, as attribution trains there (fp32 kept
  exact: ``attribution.task.exact_cuda_fp32``), to see whether a GPU run repeats bit for bit, and a
  third nudged as replay's second retrain there (``cuda_spread``: the band of a replay on that GPU,
  and ``cpu_on_cuda``: how far the first CPU run lands from the GPU's, over it);
- with ``--against FILE``, the first CPU run of another invocation saved there (``--save FILE``), for
  a CPU run on other kernels: run once with ``--save``, then again under a kernel pin (for instance
  ``ATEN_CPU_CAPABILITY=avx2``) or on another machine with ``--against``. It also evaluates that run's
  stored checkpoints here without training (``saved_evaluated_here``), as replay checks a run's stored
  model, features and scores off its platform: how far evaluation alone moves the features, the scores
  and a provider's summed scores.

Each GPU (or saved) run's largest score and value gap from the first CPU run is printed beside the CPU
spread (``cpu_spread``: the largest score gap, a value's standard error, the scores' root mean square
gap), as a ratio: the band holds it at most ``SPREAD_FACTOR`` for scores, ``VALUE_SIGMAS`` for values,
and for a provider's summed scores over the root of their number (``score_sum``) ``SUM_SIGMAS`` plus
``SUM_DRIFT`` times that root. Needs torch, numpy, pyarrow, Pillow and
tokenizers (what the attribution room needs), not the pipeline. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attribution import (  # noqa: E402
    RecipeSizes,
    checkpoints_of_features,
    model_features,
    model_features_to_bytes,
    model_left_out,
    nudged_steps,
    tensor_gaps,
    train_trak_valued,
    value_noise,
)
from attribution.model_task import LABELS, take  # noqa: E402
from bench._common.lds_models import synthetic_images, synthetic_text  # noqa: E402

SIZES = RecipeSizes()  # the recipes' sizes as the pipeline trains them unless a run says otherwise
IMAGE_SIDE = 16


def task_and_rows(kind: str, n: int, n_val: int, seed: int):
    """The recipe's task at the pipeline's defaults, its encoded training rows and validation batch."""
    if kind == "text":
        from attribution.recipes import text as recipe

        values, labels = synthetic_text(n + n_val, seed)
        tok = recipe.train_tokenizer(values[:n], vocab_size=SIZES.vocab_size)
        tokenizer = recipe.load_tokenizer(tok)
        task = recipe.text_transformer_task(tokenizer.get_vocab_size(), 4, SIZES.max_length,
                                            d_model=SIZES.d_model, n_layers=SIZES.n_layers,
                                            n_heads=SIZES.n_heads, tokenizer=tok)
        rows = dict(recipe.encode_texts(tokenizer, values, SIZES.max_length))
    else:
        from attribution.recipes import image as recipe

        values, labels = synthetic_images(n + n_val, seed, size=IMAGE_SIDE)
        policy = recipe.ImagePolicy(height=IMAGE_SIDE, width=IMAGE_SIDE, mode="RGB", resize="squash")
        task = recipe.image_cnn_task(policy, 4, channels=SIZES.channels)
        rows = {"pixel_values": torch.as_tensor(recipe.decode_images(values, policy)).float()}
    rows = {k: torch.as_tensor(np.asarray(v)) for k, v in rows.items()}
    rows[LABELS] = torch.as_tensor(labels, dtype=torch.int64)
    return task, take(rows, torch.arange(n)), take(rows, torch.arange(n, n + n_val))


def one_run(task, train, val, groups, ids, runs: int, device: str, threads: int,
            nudge: int | None = None) -> dict:
    """Scores, left-out values and TRAK features of one run of ``task`` on ``device`` at ``threads`` CPU
    threads (its weights nudged at every step by ``nudge``'s salt, as replay's second retrain)."""
    torch.set_num_threads(threads)
    on = dataclasses.replace(task, config=dataclasses.replace(task.config, device=device))
    start = time.perf_counter()
    with nudged_steps(nudge) if nudge is not None else contextlib.nullcontext():
        result = train_trak_valued(on, train, ids, val, seed=0)
        table = model_left_out(on, train, val, groups, seed=0, runs=runs).sort_by("contributor")
    return {"scores": np.asarray(result.scores, dtype=np.float64), "table": table,
            "values": table["value"].to_numpy().astype(np.float64), "s": time.perf_counter() - start,
            "features": result.features}


def evaluated_here(task, train, val, features: bytes, scores: np.ndarray, owner: np.ndarray) -> dict:
    """What replay off the run's platform checks a stored run's features and scores by: the features its
    stored checkpoints give on this machine, without training (``checkpoints_of_features``,
    ``model_features``), their largest gap from the stored ones (of each tensor's largest entry; replay
    allows ``FEATURE_RTOL``, 1e-2), and the largest gap of the scores they give from the stored scores
    and of a provider's sum over the root of its number (both of the largest stored score; replay allows
    ``CHECKPOINT_SCORE_RTOL``, 5e-2, for each)."""
    recomputed = model_features(task, checkpoints_of_features(features), train, seed=0)
    gaps = tensor_gaps(features, model_features_to_bytes(recomputed), relative=True)
    given = recomputed.value_scores(val)
    top = float(np.max(np.abs(scores))) or 1.0
    return {"features": max(gaps.values(), default=0.0) if gaps is not None else None,
            "scores_of_top": gap(given, scores) / top,
            "score_sums_of_top": sum_gap(given, scores, owner) / top}


def gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b), initial=0.0))


def spread(first: dict, second: dict) -> dict:
    """What replay's band is made of, from two runs: the largest score gap, the standard error of a
    left-out value's rounding noise (``value_noise`` over the root of the seeds), and the scores' root mean
    square gap (a provider's summed scores are allowed multiples of it per root of their number)."""
    noise, runs = value_noise(first["table"], second["table"])
    d = first["scores"] - second["scores"]
    return {"score": gap(first["scores"], second["scores"]), "value": noise / np.sqrt(runs),
            "score_sum": float(np.sqrt(np.mean(d ** 2))) if d.size else 0.0}


def sum_gap(a: np.ndarray, b: np.ndarray, owner: np.ndarray) -> float:
    """The largest gap of a provider's summed scores, over the root of its number of scores."""
    d = a - b
    return max((abs(float(d[owner == p].sum())) / np.sqrt((owner == p).sum()) for p in np.unique(owner)),
               default=0.0)


def beside(run: dict, cpu: dict, own: dict, owner: np.ndarray) -> dict:
    """``run``'s largest gaps from ``cpu``, and each over the CPU's ``own`` spread."""
    g = {k: gap(run[k + "s"], cpu[k + "s"]) for k in ("score", "value")}
    g["score_sum"] = sum_gap(run["scores"], cpu["scores"], owner)
    return {"gap": g, "gap_over_spread": {k: round(g[k] / own[k], 2) if own[k] else None for k in g}}


def measure(kind: str, n: int, n_providers: int, runs: int, saved: dict | None = None) -> dict:
    task, train, val = task_and_rows(kind, n, max(n // 5, 50), seed=0)
    ids = [f"{kind}-{i:05d}" for i in range(n)]
    owner = np.arange(n) % n_providers
    groups = {f"prov-{p}": owner == p for p in range(n_providers)}
    threads = torch.get_num_threads()
    counts = [threads - threads // 2, max(1, threads // 2)]  # replay's side-by-side retrains
    cpu = [one_run(task, train, val, groups, ids, runs, "cpu", counts[0]),
           one_run(task, train, val, groups, ids, runs, "cpu", counts[1], nudge=1)]  # replay's NUDGE_SALT
    torch.set_num_threads(threads)
    keys = ("score", "value")
    top = {k: float(np.max(np.abs(cpu[0][k + "s"]))) for k in keys}
    here = spread(cpu[0], cpu[1])
    out: dict = {"train": n, "providers": n_providers, "runs": runs, "threads": counts, "top": top,
                 "cpu_spread": here, "cpu_s": round(cpu[0]["s"], 2)}
    if torch.cuda.is_available():
        gpu = [one_run(task, train, val, groups, ids, runs, "cuda", threads, nudge=nudge)
               for nudge in (None, None, 1)]
        out["cuda"] = {**beside(gpu[0], cpu[0], here, owner), "s": round(gpu[0]["s"], 2)}
        out["cuda_repeat_gap"] = {k: gap(gpu[0][k + "s"], gpu[1][k + "s"]) for k in keys}
        # the band a replay on this GPU allows (its second retrain nudged), and where the CPU run lands in it
        out["cuda_spread"] = spread(gpu[0], gpu[2])
        out["cpu_on_cuda"] = beside(cpu[0], gpu[0], out["cuda_spread"], owner)["gap_over_spread"]
    if saved is not None:
        out["saved"] = beside({k + "s": saved[f"{kind}_{k}s"] for k in keys}, cpu[0], here, owner)
        torch.set_num_threads(counts[0])  # the saved run's own count: evaluation alone changes nothing else
        out["saved_evaluated_here"] = evaluated_here(task, train, val, saved[f"{kind}_features"].tobytes(),
                                                     saved[f"{kind}_scores"], owner)
        torch.set_num_threads(threads)
    out["first_cpu_run"] = cpu[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=["image", "text", "both"], default="both")
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--providers", type=int, default=3)
    ap.add_argument("--runs", type=int, default=2, help="seeds each provider is left out with")
    ap.add_argument("--save", type=Path, help="write the first CPU run's scores and values here (.npz)")
    ap.add_argument("--against", type=Path, help="compare with a run saved by --save")
    args = ap.parse_args()
    saved = dict(np.load(args.against)) if args.against else None
    start = time.perf_counter()
    kinds = ["image", "text"] if args.kind == "both" else [args.kind]
    doc = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "torch": torch.__version__}
    runs = {}
    for kind in kinds:
        doc[kind] = measure(kind, args.train, args.providers, args.runs, saved)
        first = doc[kind].pop("first_cpu_run")
        runs.update({f"{kind}_{k}": first[k] for k in ("scores", "values")})
        if args.save:  # the features as the training record stores them
            features = model_features_to_bytes(first["features"])
            runs[f"{kind}_features"] = np.frombuffer(features, dtype=np.uint8)
        print(kind, json.dumps(doc[kind]), file=sys.stderr, flush=True)
    if args.save:
        np.savez(args.save, **runs)
    doc["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
