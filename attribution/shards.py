"""TRAK features computed by shards of the training set and combined into the unsharded result.

Projected per-example gradients do not depend on each other, so shards of the rows compute them
in parallel from the same checkpoints. ``build_features`` works in chunks of ``chunk_rows`` rows
(one float32 Gram product per chunk, added in float64 in chunk order), so a shard returns its
features and one Gram term per chunk (part) it holds, and ``combine_shards`` adds the terms in
row order. When every shard boundary is a multiple of ``chunk_rows`` (``shard_bounds(...,
align=chunk_rows)``) these are the very same floating-point operations: same ``features_to_bytes``
bytes and scores for any number or order of shards. A boundary inside a chunk changes the
batch shapes torch computes with, so that chunk's features and term differ in the last float32
bits and scores agree to float32 precision only (torch's CPU kernels are not batch-invariant).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import AttributionError, InputError
from .task import AttributionTask
from .trainer import feature_tensor, label_tensor
from .trak import (
    CheckpointFeatures,
    FisherDraws,
    Kernel,
    TrakFeatures,
    checkpoint_store,
    chunk_terms,
    damped_inverse,
    frozen_model,
    task_projector,
)


class ShardMismatchError(AttributionError):
    """Shards that cannot combine: another task, checkpoints, seed or kernel, or rows that do not tile."""


@dataclass(frozen=True)
class ChunkPart:
    """A shard's rows of one ``build_features`` chunk: their projected features and Gram term."""

    chunk: int
    features: np.ndarray  # float32 [m, dim]
    gram: np.ndarray  # float64 [dim, dim]: the float32 product of the kernel rows, widened


@dataclass(frozen=True)
class FeatureShard:
    """Rows ``start .. start + len(example_ids)`` of the training set, one parts tuple per checkpoint."""

    start: int
    example_ids: tuple[str, ...]
    identity: tuple[tuple[str, str], ...]  # what must agree between shards (see ``_identity``)
    parts: tuple[tuple[ChunkPart, ...], ...]

    @property
    def stop(self) -> int:
        """The row after this shard's last (exclusive): the next shard's ``start`` when shards tile."""
        return self.start + len(self.example_ids)


def shard_bounds(n_rows: int, n_shards: int, *, align: int = 1) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` row ranges, as even as possible, inner edges on multiples of ``align``.

    ``align=config.chunk_rows`` makes the combined features byte-identical to the unsharded ones;
    it yields fewer than ``n_shards`` ranges when the rows hold fewer chunks than that.
    """
    if not 1 <= n_shards <= n_rows:
        raise InputError(f"n_shards must be between 1 and the {n_rows} training rows, got {n_shards}")
    if align < 1:
        raise InputError(f"align must be >= 1 rows, got {align}")
    inner = {min(n_rows, (n_rows * i // n_shards) // align * align) for i in range(1, n_shards)}
    edges = [0, *sorted(inner - {0, n_rows}), n_rows]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _digest(checkpoints: Sequence[dict[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for state in checkpoints:
        for name in sorted(state):
            h.update(name.encode() + b"\0")
            h.update(state[name].detach().to(torch.float32).contiguous().numpy().tobytes())
        h.update(b"\1")
    return h.hexdigest()


def _identity(task: AttributionTask, checkpoints, seed: int, kernel: Kernel) -> tuple[tuple[str, str], ...]:
    cfg = task.config
    return (
        ("model spec", task.spec.to_json()),
        ("trak_k", str(cfg.trak_k)),
        ("kernel", kernel),
        ("chunk_rows", str(cfg.chunk_rows)),
        ("seed", str(seed)),
        ("checkpoints", _digest(checkpoints)),
    )


def _pieces(start: int, n: int, rows: int) -> list[tuple[int, int, int]]:
    """(chunk, local lo, local hi) for rows ``start .. start+n`` cut at global chunk edges."""
    out, g, end = [], start, start + n
    while g < end:
        c = g // rows
        hi = min((c + 1) * rows, end)
        out.append((c, g - start, hi - start))
        g = hi
    return out


def shard_features(
    task: AttributionTask,
    checkpoints: Sequence[dict[str, torch.Tensor]],
    X_shard: object,
    y_shard: object,
    example_ids_shard: Sequence[str],
    *,
    start: int,
    seed: int,
    kernel: Kernel | None = None,
) -> FeatureShard:
    """Projected features of training rows ``start ..`` at every checkpoint, with their kernel share.

    ``seed`` is the training run's seed (it draws the projection), as ``build_features`` uses it.
    """
    x = feature_tensor("X_shard", X_shard, task.n_features)
    y = label_tensor("y_shard", y_shard, x.shape[0], task.n_classes)
    ids = tuple(example_ids_shard)
    if len(ids) != len(x):
        raise InputError(f"{len(ids)} example ids for {len(x)} shard rows")
    if start < 0:
        raise InputError(f"shard start must be a row index >= 0, got {start}")
    if not checkpoints:
        raise InputError("no checkpoints: pass TrainResult.checkpoints of the trained run")
    cfg = task.config
    kernel = kernel or cfg.trak_kernel
    projector, _ = task_projector(task, seed)
    pieces = _pieces(start, len(x), cfg.chunk_rows)
    per_checkpoint = []
    for j, state in enumerate(checkpoints):
        model, layers = frozen_model(task.spec, state)
        parts = []
        for chunk, lo, hi in pieces:
            xs, ys = x[lo:hi], y[lo:hi]
            draws = FisherDraws(seed, j, start + lo)
            phi, gram = chunk_terms(model, layers, projector, xs, ys, kernel, draws)
            parts.append(ChunkPart(chunk, phi.numpy(), gram.numpy()))
        per_checkpoint.append(tuple(parts))
    return FeatureShard(start, ids, _identity(task, checkpoints, seed, kernel), tuple(per_checkpoint))


def _ordered(shards: Sequence[FeatureShard], expected: tuple[tuple[str, str], ...]) -> list[FeatureShard]:
    if not shards:
        raise ShardMismatchError("no shards to combine; compute them with shard_features first")
    for shard in shards:
        for (name, want), (_, got) in zip(expected, shard.identity, strict=True):
            if got != want:
                raise ShardMismatchError(
                    f"shard at row {shard.start} was computed with another {name} ({got[:80]!r}, "
                    f"expected {want[:80]!r}); recompute it with the same task, checkpoints and seed"
                )
    ordered = sorted(shards, key=lambda s: s.start)
    at = 0
    for shard in ordered:
        if shard.start != at:
            what = "missing" if shard.start > at else "covered twice"
            lo, hi = sorted((at, shard.start))
            raise ShardMismatchError(f"training rows {lo}..{hi - 1} are {what}; shards must tile rows 0..n-1")
        at = shard.stop
    ids = [e for s in ordered for e in s.example_ids]
    if len(set(ids)) != len(ids):
        raise ShardMismatchError("an example id appears in more than one row; shards must hold distinct rows")
    return ordered


def combine_shards(
    task: AttributionTask,
    checkpoints: Sequence[dict[str, torch.Tensor]],
    shards: Sequence[FeatureShard],
    *,
    seed: int,
    kernel: Kernel | None = None,
    directory: str | None = None,
    epochs: int | None = None,
) -> TrakFeatures:
    """The ``TrakFeatures`` of all shards' rows in row order: what ``build_features`` gives unsharded (for
    a run of ``epochs``, as there)."""
    cfg = task.config
    kernel = kernel or cfg.trak_kernel
    ordered = _ordered(shards, _identity(task, checkpoints, seed, kernel))
    n = ordered[-1].stop
    projector, dim = task_projector(task, seed)
    out = []
    for j, state in enumerate(checkpoints):
        model, layers = frozen_model(task.spec, state)
        store = checkpoint_store(cfg, directory, j)
        by_chunk: dict[int, list[ChunkPart]] = {}
        for shard in ordered:
            for part in shard.parts[j]:
                by_chunk.setdefault(part.chunk, []).append(part)
        gram = torch.zeros(dim, dim, dtype=torch.float64)
        for chunk in sorted(by_chunk):
            parts = by_chunk[chunk]
            store.append(np.concatenate([p.features for p in parts]))
            for part in parts:
                gram += torch.from_numpy(part.gram)
        out.append(CheckpointFeatures(model, layers, store, damped_inverse(gram, n, cfg, epochs)))
    return TrakFeatures(task.spec, projector, out, n)
