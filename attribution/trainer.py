"""The driver: SGD training that scores every example at every optimizer step.

At step t each example i of the batch earns ``lr_t · ⟨∇ℓ_targets(θ_t), ∇ℓ_i(θ_t)⟩`` (first-order
In-Run Data Shapley; TracIn with every step a checkpoint), with ``ℓ_targets`` the mean target
loss. The targets ride in the same forward/backward pass as the batch, parameters are frozen
for autograd, and the update is formed from the same ``A`` and ``B`` the scores use, so the
attribution costs only the target rows and the ghost products.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import ghost
from .errors import InputError, UnsupportedOptimizerError
from .task import AttributionTask, TrainConfig, last_bits, scored_layers

if TYPE_CHECKING:
    import pyarrow as pa

    from .encoding import EncodedSplit
    from .model_task import ModelTask
    from .trak import TrakFeatures

INRUN_METHOD = "inrun_sgd"


def _example_attribution_schema() -> pa.Schema:
    import pyarrow as pa  # training needs torch and numpy only; the table form needs pyarrow

    columns = [("example_id", pa.string()), ("score", pa.float64()), ("method", pa.string())]
    return pa.schema([*columns, ("run_id", pa.string())])


def __getattr__(name: str) -> Any:
    if name == "EXAMPLE_ATTRIBUTION_SCHEMA":
        return _example_attribution_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class TrainResult:
    """Everything an attributed run produces; ``features`` answer query-time attribution."""

    model: nn.Module
    task: AttributionTask | ModelTask
    run_id: str
    example_ids: list[str]
    scores: np.ndarray  # float64 [n_train]: score against the mean target loss
    per_target: np.ndarray | None  # float64 [n_train, n_targets] when config.per_target
    checkpoints: list[dict[str, torch.Tensor]]
    features: object | None = None  # trak.TrakFeatures, or trak_model.ModelTrakFeatures (valued_by_trak)
    timings: dict[str, float] = field(default_factory=dict)
    method: str = INRUN_METHOD
    epochs: int | None = None  # epochs the model trained: the best epoch's count where it stopped early

    @property
    def example_attribution(self) -> pa.Table:
        """One row per training example (``example_id``, ``score``, ``method``, ``run_id``): the table
        ``contributor_weights`` turns into royalty weights."""
        import pyarrow as pa

        n = len(self.example_ids)
        return pa.table(
            {
                "example_id": pa.array(self.example_ids, pa.string()),
                "score": pa.array(self.scores, pa.float64()),
                "method": pa.array([self.method] * n, pa.string()),
                "run_id": pa.array([self.run_id] * n, pa.string()),
            },
            schema=_example_attribution_schema(),
        )


# ---------------------------------------------------------------- input checks


def feature_tensor(name: str, x: object, n_features: int) -> torch.Tensor:
    """``x`` as float32 rows [examples, n_features], or an ``InputError`` naming ``name``: the one
    check of feature rows, shared by training and by the shards that recompute its features."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InputError(f"{name} must be a non-empty 2-d array [examples, features], got shape {arr.shape}")
    if arr.shape[1] != n_features:
        raise InputError(f"{name} has {arr.shape[1]} feature columns but the model expects {n_features}")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])[:5].tolist()
        raise InputError(f"{name} holds NaN or inf values (rows {rows}...); impute or drop them first")
    return torch.from_numpy(arr.astype(np.float32))


def label_tensor(name: str, y: object, n_rows: int, n_classes: int) -> torch.Tensor:
    """``y`` as int64 class indices for ``n_rows`` rows, or an ``InputError`` naming ``name``: the one
    check of labels, shared by training and by the shards that recompute its features."""
    arr = np.asarray(y)
    if arr.ndim != 1 or len(arr) != n_rows:
        raise InputError(f"{name} has {len(arr) if arr.ndim == 1 else arr.shape} labels for {n_rows} rows")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    bad = sorted({int(v) for v in arr[(arr < 0) | (arr >= n_classes)]})
    if bad:
        raise InputError(f"{name} holds labels {bad[:10]} outside the label set 0..{n_classes - 1}")
    return torch.from_numpy(arr.astype(np.int64))


def validate(
    task: AttributionTask,
    X_train: object,
    y_train: object,
    example_ids: Sequence[str],
    X_targets: object,
    y_targets: object,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tensors for training, or one named ``InputError`` before any training starts."""
    x = feature_tensor("X_train", X_train, task.n_features)
    y = label_tensor("y_train", y_train, x.shape[0], task.n_classes)
    if len(example_ids) != x.shape[0]:
        raise InputError(f"{len(example_ids)} example_ids for {x.shape[0]} training rows")
    if len(set(example_ids)) != len(example_ids):
        raise InputError("example_ids are not unique; each training row needs its own id")
    if len(torch.unique(y)) < 2:
        raise InputError(f"y_train holds one class only ({int(y[0])}); a classifier needs at least two")
    xv = feature_tensor("X_targets", X_targets, task.n_features)
    yv = label_tensor("y_targets", y_targets, xv.shape[0], task.n_classes)
    train_rows = {r.tobytes() for r in x.numpy()}
    overlap = [i for i, r in enumerate(xv.numpy()) if r.tobytes() in train_rows]
    if overlap:
        raise InputError(
            f"{len(overlap)} target rows (e.g. {overlap[:5]}) also appear in the training set; "
            "targets must be held out"
        )
    if task.config.optimizer != "sgd":
        raise UnsupportedOptimizerError(
            f"the MLP driver trains with SGD only, got optimizer {task.config.optimizer!r}; train an "
            "AdamW model through attribution.ModelTask (train_model), which scores Adam's own update"
        )
    scored_layers(task.spec.build(0))
    return x, y, xv, yv


# ---------------------------------------------------------------- training


def batches(
    n: int, batch_size: int, epochs: int, seed: int, keep: np.ndarray | None = None,
    keys: np.ndarray | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(epoch, indices) of every step: a seeded permutation per epoch, the last batch may be short.

    ``keys`` (one uint64 per row, ``row_keys``) draws each epoch's order from the rows themselves: by a
    seeded hash of each key, so the order of any set of rows is that of any larger set with the others
    skipped. ``keep`` (a boolean mask over the ``n`` rows) trains on its rows only, in the order the
    full run visits them. Either way each epoch is a uniform permutation of the rows trained on, so a
    retrain without some rows is distributed as one on the rest alone, but it shares the full run's
    randomness (common random numbers): the loss difference between the two measures the rows, not a
    reshuffle of the others (``left_out``)."""
    gen = torch.Generator().manual_seed(seed)
    mask = None if keep is None else torch.as_tensor(_mask_of(keep, n))
    if keys is not None and np.shape(keys) != (n,):
        raise InputError(f"keys must hold one key per training row ({n}), got shape {np.shape(keys)}")
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen) if keys is None else _keyed_order(keys, seed, epoch)
        if mask is not None:
            perm = perm[mask[perm]]
        for start in range(0, len(perm), batch_size):
            yield epoch, perm[start : start + batch_size]


def row_keys(example_ids: Sequence[str]) -> np.ndarray:
    """Each row's ``batches`` key: the first 8 bytes of the sha256 of its example id (uint64)."""
    return np.array([int.from_bytes(hashlib.sha256(e.encode()).digest()[:8], "big") for e in example_ids],
                    dtype=np.uint64)


def _keyed_order(keys: np.ndarray, seed: int, epoch: int) -> torch.Tensor:
    """The rows sorted by a splitmix64 hash of their key mixed with the seed and epoch's salt."""
    salt = np.uint64(int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "big"))
    with np.errstate(over="ignore"):
        z = np.asarray(keys, dtype=np.uint64) ^ salt
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return torch.as_tensor(np.argsort(z, kind="stable"))


def _mask_of(keep: np.ndarray, n: int) -> np.ndarray:
    keep = np.asarray(keep)
    if keep.dtype != np.bool_ or keep.shape != (n,):
        raise InputError(f"keep must be a boolean mask over the {n} training rows, got {keep.dtype} "
                         f"{keep.shape}")
    return keep


def kept_rows(n: int, keep: np.ndarray | None) -> int:
    """How many rows a training with ``keep`` (``batches``' mask; None: all ``n``) visits per epoch."""
    return n if keep is None else int(_mask_of(keep, n).sum())


def checkpoint_epochs(epochs: int, n_checkpoints: int) -> list[int]:
    """Epochs (0-based) after which a checkpoint is kept, evenly spread and ending at the last."""
    n = min(n_checkpoints, epochs)
    return sorted({int(round(epochs * (j + 1) / n)) - 1 for j in range(n)})


def plain_steps(
    task: AttributionTask, X: object, y: object, *, seed: int, keep: np.ndarray | None = None,
    keys: np.ndarray | None = None, targets: tuple[object, object] | None = None,
) -> Generator[nn.Module, None, EarlyStop | None]:
    """``train_plain`` one optimizer step at a time (yields the model after each step), so a
    benchmark can interleave it step by step with ``attributed_steps`` under the same load.
    ``keep`` trains on those rows only, ``keys`` orders them (``batches``). A config with
    ``patience`` stops early on the mean cross-entropy of ``targets`` (X, y): the model is then left
    at its best epoch's state and the generator returns its ``EarlyStop``."""
    cfg = task.config
    stop = early_stop(cfg, targets)
    device = cfg.torch_device()
    x = torch.as_tensor(np.asarray(X, dtype=np.float32)).to(device)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64)).to(device)
    if stop is not None:
        xv = feature_tensor("X_targets", targets[0], task.n_features).to(device)
        yv = label_tensor("y_targets", targets[1], xv.shape[0], task.n_classes).to(device)
    model = task.spec.build(seed).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-kept_rows(len(x), keep) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    for step, (_, idx) in enumerate(batches(len(x), cfg.batch_size, cfg.epochs, seed, keep, keys)):
        opt.param_groups[0]["lr"] = cfg.lr_at(step, total)
        idx = idx.to(device)
        loss = F.cross_entropy(model(x[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last_bits(model.parameters(), step)
        done = stop is not None and (step + 1) % steps_per_epoch == 0 and stop.ended(
            model, _target_loss(model, xv, yv))
        yield model
        if done:
            break
    if stop is not None:
        stop.restore(model)
    return stop


def early_stop(cfg: TrainConfig, targets: object | None) -> EarlyStop | None:
    """``TrainConfig.patience``'s ``EarlyStop`` for a training (None: every epoch), refused where
    there are no ``targets`` to watch."""
    if cfg.patience is None:
        return None
    if targets is None:
        raise InputError(f"TrainConfig.patience={cfg.patience} stops at the best epoch on the targets' loss; "
                         "pass targets= (the rows the run is measured on), or set patience=None")
    return EarlyStop(cfg)


def _target_loss(model: nn.Module, xv: torch.Tensor, yv: torch.Tensor) -> float:
    """The MLP's mean cross-entropy on the targets (what ``TrainConfig.patience`` watches)."""
    with torch.no_grad():
        return float(F.cross_entropy(model(xv), yv))


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint: a CPU copy of the model's state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class EarlyStop:
    """``TrainConfig.patience``: the mean target loss after each epoch; ``ended`` says when training
    stops (``patience`` epochs without a new lowest), and the run is that of its best epoch (the first
    lowest): ``restore`` loads its state, ``checkpoints`` are those ``checkpoint_epochs`` picks among the
    epochs up to it, ``scores`` the attributed scores as they stood then.

    Every epoch's state is kept to the end, since any epoch up to a later best may become a checkpoint
    (holding only the last ``patience`` fails after a chain of new bests). States are CPU copies up to
    ``TrainConfig.spill_bytes``; past it each goes to a file of a temporary directory (``torch.save``,
    read back bit for bit), removed with this object, so a large fine-tune holds at most ``spill_bytes``
    of epoch states in RAM, and then only the checkpoints it keeps."""

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.patience is None:
            raise ValueError("EarlyStop needs TrainConfig.patience")
        self.patience, self.n_checkpoints, self.spill_bytes = cfg.patience, cfg.n_checkpoints, cfg.spill_bytes
        self.losses: list[float] = []
        self.states: list[dict[str, torch.Tensor] | Path] = []  # a Path: spilled to disk
        self.scores: torch.Tensor | None = None
        self._held_bytes = 0
        self._spill_dir: tempfile.TemporaryDirectory | None = None

    @property
    def best(self) -> int:
        """The best epoch so far (0-based); a NaN loss never is."""
        return int(np.argmin(np.nan_to_num(self.losses, nan=np.inf)))

    def ended(self, model: nn.Module, target_loss: float, scores: torch.Tensor | None = None) -> bool:
        """Record an epoch's end: its state, its target loss and (attributed runs) the scores so far."""
        self.states.append(self._kept(cpu_state(model)))
        self.losses.append(target_loss)
        if self.best == len(self.losses) - 1 and scores is not None:
            self.scores = scores.clone()
        return len(self.losses) - 1 - self.best >= self.patience

    def state(self, epoch: int) -> dict[str, torch.Tensor]:
        """Epoch ``epoch``'s state (0-based), read back from disk where it was spilled."""
        kept = self.states[epoch]
        return torch.load(kept, weights_only=True) if isinstance(kept, Path) else kept

    @property
    def spilled(self) -> int:
        """How many epoch states live on disk."""
        return sum(isinstance(s, Path) for s in self.states)

    def restore(self, model: nn.Module) -> nn.Module:
        """Load the best epoch's state into ``model`` and return it: the run ends as of that epoch."""
        model.load_state_dict(self.state(self.best))
        return model

    def checkpoints(self) -> list[dict[str, torch.Tensor]]:
        """The states of the ``checkpoint_epochs`` up to the best (the last of them), read back if spilled."""
        return [self.state(e) for e in checkpoint_epochs(self.best + 1, self.n_checkpoints)]

    def _kept(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | Path:
        size = sum(t.numel() * t.element_size() for t in state.values())
        if self._held_bytes + size <= self.spill_bytes:
            self._held_bytes += size
            return state
        if self._spill_dir is None:
            self._spill_dir = tempfile.TemporaryDirectory(prefix="caravan-epochs-")
        path = Path(self._spill_dir.name) / f"epoch{len(self.states):05d}.pt"
        torch.save(state, path)
        return path


def checkpointed(
    steps: Generator[nn.Module, None, EarlyStop | None], n_rows: int, cfg: TrainConfig
) -> tuple[nn.Module, list[dict[str, torch.Tensor]], float, int]:
    """Drive plain training steps (``plain_steps``, ``inrun.plain_model_steps``) to the end, keeping the
    checkpoints an attributed run keeps (``checkpoint_epochs``, as CPU copies; those of the best epochs
    where the steps stopped early and return their ``EarlyStop``): the trained model (on the CPU), the
    checkpoints, the seconds it took and the epochs the model trained."""
    # where the steps stop early, their EarlyStop holds every epoch's state: none is copied here
    keep = set(checkpoint_epochs(cfg.epochs, cfg.n_checkpoints)) if cfg.patience is None else set()
    steps_per_epoch = -(-n_rows // cfg.batch_size)
    checkpoints: list[dict[str, torch.Tensor]] = []
    model, step, epochs = None, 0, cfg.epochs
    t0 = time.perf_counter()
    while True:
        try:
            model = next(steps)
        except StopIteration as done:
            if done.value is not None:
                checkpoints, epochs = done.value.checkpoints(), done.value.best + 1
            break
        step += 1
        if step % steps_per_epoch == 0 and step // steps_per_epoch - 1 in keep:
            checkpoints.append(cpu_state(model))
    if model is None:
        raise InputError("training took no step (no rows or no epochs)")
    return model.cpu(), checkpoints, time.perf_counter() - t0, epochs


def train_plain(
    task: AttributionTask, X: object, y: object, *, seed: int, targets: tuple[object, object] | None = None
) -> nn.Module:
    """The same training without attribution (reference for cost and for retraining; ``targets``: where
    the config stops early); the model comes back on the CPU whatever ``task.config.device``."""
    return deque(plain_steps(task, X, y, seed=seed, targets=targets), maxlen=1)[0].cpu()


def _layer_scores(
    layers: list[nn.Module], facts: list[ghost.Factors], nb: int, n_targets: int, per_target: bool
) -> torch.Tensor:
    """``[nb, n_targets]`` (per target) or ``[nb]`` ghost dot products summed over the layers.

    The pairwise layers share one ``[nb, n_targets]`` matrix, row-summed once at the end.
    """
    train_rows, target_rows = slice(0, nb), slice(nb, None)
    pairs, gv = None, None
    for module, f in zip(layers, facts, strict=True):
        tr, tv = f.rows(train_rows), f.rows(target_rows)
        if per_target or ghost.cheaper_form(nb, n_targets, *ghost.layer_dims(module)) == "pairwise":
            pairs = ghost.add_pairwise(pairs, tr, tv)
        else:
            s = ghost.summed_dots(tr, tv, "gv")
            gv = s if gv is None else gv.add_(s)
    if per_target:
        return pairs
    if pairs is None:
        return gv
    return pairs.sum(1) if gv is None else gv.add_(pairs.sum(1))


def _sgd_update(layers: list[nn.Module], facts: list[ghost.Factors], nb: int, lr: float, wd: float) -> None:
    """``p ← (1 − lr·wd) p − lr·mean gradient`` (torch's SGD with weight decay), fused into one addmm."""
    decay = 1.0 - lr * wd
    with torch.no_grad():
        for module, f in zip(layers, facts, strict=True):
            rows = f.rows(slice(0, nb))
            if isinstance(module, nn.Linear):
                module.weight.addmm_(rows.b.T, rows.a, beta=decay, alpha=-lr / nb)
                if module.bias is not None:
                    bias = module.bias if decay == 1.0 else module.bias.mul_(decay)
                    bias.add_(rows.b.sum(0), alpha=-lr / nb)
                continue
            for p, g in ghost.param_grads(module, rows, 1.0 / nb):
                (p if decay == 1.0 else p.mul_(decay)).add_(g, alpha=-lr)


@dataclass
class _Rows:
    """Preallocated model inputs of one batch size: the batch's rows, then the targets' (fixed)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor  # arange, for the logit gradient
    neg: torch.Tensor  # -1.0 per row

    @classmethod
    def of(cls, nb: int, xv: torch.Tensor, yv: torch.Tensor) -> _Rows:
        """Buffers for ``nb`` batch rows (empty until ``fill``) followed by the targets ``xv``, ``yv``,
        on their device; the trainer keeps one per batch size (the last batch may be short)."""
        n, device = nb + len(xv), xv.device
        x = torch.empty((n, xv.shape[1]), dtype=xv.dtype, device=device)
        y = torch.empty(n, dtype=yv.dtype, device=device)
        x[nb:], y[nb:] = xv, yv
        neg = torch.full((n,), -1.0, dtype=xv.dtype, device=device)
        return cls(x, y, torch.arange(n, device=device), neg)

    def fill(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, xv: torch.Tensor) -> None:
        """Gather the batch's rows; rewrite the (small) target rows too, as a model may act on
        its input in place (``nn.ReLU(inplace=True)`` first)."""
        nb = len(idx)
        torch.index_select(x, 0, idx, out=self.x[:nb])
        self.x[nb:].copy_(xv)
        torch.index_select(y, 0, idx, out=self.y[:nb])


def run_id_for(task: AttributionTask | ModelTask, example_ids: Sequence[str], seed: int) -> str:
    """The architecture's JSON (an MLP spec or a ModelTask's recipe), the config's run settings
    (``TrainConfig.run_settings``), seed and ids."""
    spec_json = task.spec.to_json() if isinstance(task, AttributionTask) else task.to_json()
    h = hashlib.sha256()
    h.update(spec_json.encode())
    h.update(repr(sorted(task.config.run_settings().items())).encode())
    h.update(str(seed).encode())
    for e in example_ids:
        h.update(e.encode() + b"\0")
    return h.hexdigest()[:16]


def attributed_steps(
    task: AttributionTask,
    X_train: object,
    y_train: object,
    example_ids: Sequence[str],
    X_targets: object,
    y_targets: object,
    *,
    seed: int,
    run_id: str | None = None,
    with_features: bool = True,
    feature_dir: str | None = None,
) -> Generator[None, None, TrainResult]:
    """``train_with_attribution`` as a generator that yields after every optimizer step and
    returns the ``TrainResult`` (see ``plain_steps``)."""
    cfg = task.config
    device = cfg.torch_device()
    x, y, xv, yv = validate(task, X_train, y_train, example_ids, X_targets, y_targets)
    x_dev, y_dev, xv, yv = x.to(device), y.to(device), xv.to(device), yv.to(device)
    model = task.spec.build(seed).to(device)
    layers = scored_layers(model)
    for p in model.parameters():
        p.requires_grad_(False)
    n, nv = x.shape[0], xv.shape[0]
    scores = torch.zeros((n, nv) if cfg.per_target else (n,), dtype=torch.float64)
    keep = set(checkpoint_epochs(cfg.epochs, cfg.n_checkpoints))
    checkpoints: list[dict[str, torch.Tensor]] = []
    stop = early_stop(cfg, xv)
    steps_per_epoch = -(-n // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    buffers: dict[int, _Rows] = {}
    t0 = time.perf_counter()
    with ghost.LayerTaps(layers) as taps:
        for step, (epoch, idx) in enumerate(batches(n, cfg.batch_size, cfg.epochs, seed)):
            nb = len(idx)
            if nb not in buffers:
                buffers[nb] = _Rows.of(nb, xv, yv)
            rows = buffers[nb]
            rows.fill(x_dev, y_dev, idx.to(device), xv)
            logits = model(rows.x)
            # Sum-reduced cross-entropy of batch and targets: B needs no 1/batch to undo.
            grads = taps.output_grads(logits, ghost.logit_grads(logits, rows.y, rows.index, rows.neg))
            facts = [ghost.layer_factors(t, b) for t, b in zip(taps.taps, grads, strict=True)]
            s = _layer_scores(layers, facts, nb, nv, cfg.per_target)
            lr = cfg.lr_at(step, total)
            scores.index_add_(0, idx, s.to("cpu", torch.float64), alpha=lr / (1.0 if cfg.per_target else nv))
            _sgd_update(layers, facts, nb, lr, cfg.weight_decay)
            last_bits(model.parameters(), step)
            ended, done = (step + 1) % steps_per_epoch == 0, False
            if ended and stop is not None:
                with ghost.hooks_paused(taps):
                    done = stop.ended(model, _target_loss(model, xv, yv), scores)
            elif ended and epoch in keep:
                checkpoints.append(cpu_state(model))
            yield
            if done:
                break
    if stop is not None:
        scores, checkpoints = stop.scores, stop.checkpoints()
        stop.restore(model)
    train_s = time.perf_counter() - t0
    model.cpu()
    for p in model.parameters():
        p.requires_grad_(True)
    per_target = scores.numpy() if cfg.per_target else None
    summed = scores.mean(1).numpy() if cfg.per_target else scores.numpy()
    result = TrainResult(
        model=model,
        task=task,
        run_id=run_id or run_id_for(task, example_ids, seed),
        example_ids=list(example_ids),
        scores=summed,
        per_target=per_target,
        checkpoints=checkpoints,
        timings={"train_s": train_s},
        epochs=cfg.epochs if stop is None else stop.best + 1,
    )
    if with_features:
        from .trak import build_features

        t1 = time.perf_counter()
        result.features = build_features(task, checkpoints, x, y, seed=seed, directory=feature_dir,
                                         epochs=result.epochs)
        result.timings["features_s"] = time.perf_counter() - t1
    return result


def checkpoint_features(
    task: AttributionTask, checkpoints: list[dict[str, torch.Tensor]], X_train: object, y_train: object, *,
    seed: int, epochs: int | None = None,
) -> TrakFeatures:
    """The TRAK features ``train_with_attribution`` builds at the end of a run, from ``checkpoints`` given
    (a stored run's, which trained ``epochs``): what the run's features are, recomputed without training
    (replay checks a run's stored features so where it cannot retrain bit for bit)."""
    from .trak import build_features

    x = feature_tensor("X_train", X_train, task.n_features)
    y = label_tensor("y_train", y_train, x.shape[0], task.n_classes)
    return build_features(task, checkpoints, x, y, seed=seed, epochs=epochs)


def train_with_attribution(
    task: AttributionTask,
    X_train: object,
    y_train: object,
    example_ids: Sequence[str],
    X_targets: object,
    y_targets: object,
    *,
    seed: int,
    run_id: str | None = None,
    with_features: bool = True,
    feature_dir: str | None = None,
) -> TrainResult:
    """Train ``task`` with SGD and score every training example at every step.

    Returns the trained model, per-example scores (``example_attribution``), the checkpoints,
    and (``with_features``) the TRAK features that answer ``attribute_query``.
    """
    steps = attributed_steps(task, X_train, y_train, example_ids, X_targets, y_targets, seed=seed,
                             run_id=run_id, with_features=with_features, feature_dir=feature_dir)
    return run_to_end(steps)


def run_to_end(steps: Generator[None, None, TrainResult]) -> TrainResult:
    """Drive a step generator (``attributed_steps``, ``inrun.model_steps``) to its end; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def train_split(
    split: EncodedSplit, hidden: Sequence[int], config: TrainConfig, *, seed: int, run_id: str | None = None
) -> TrainResult:
    """An MLP classifier (``hidden`` widths between the encoding's features and its classes) trained
    with attribution on an encoded split's training rows against its targets; ``result.task`` holds
    the spec to store beside the model."""
    task = AttributionTask(split.encoding.mlp(hidden), config)
    return train_with_attribution(
        task, split.X, split.y, split.example_ids, split.X_targets, split.y_targets, seed=seed, run_id=run_id
    )
