"""The driver for any ``ModelTask``: train with SGD or AdamW and score every example at every step.

At step t example i of the batch earns ``⟨P_t ⊙ ∇ℓ̄_targets(θ_t), ∇ℓ_i(θ_t)⟩``: the first-order
decrease of the mean target loss due to i through the update the optimizer really takes. For
SGD ``P_t = η_t``. For AdamW the update is ``−η m̂/(√v̂ + ε)``, whose derivative in this step's
gradient is ``η (1−β₁)/(1−β₁ᵗ) · 1/(√v̂_t + ε)``, with the optimizer state held at that step and
``v_t`` updated by the step's own gradient (the preconditioner is diagonal, not Kronecker-structured,
so the summed-target form ``⟨g_i, P ⊙ G_targets⟩`` is the exact one; per-target scores take one
such product per target). Decoupled weight decay does not depend on the batch and earns nothing.

Parameters are frozen for autograd; hooks keep each scored layer's input, and the backward pass
is streamed (``ModuleTaps.stream``): each layer's per-example gradients are formed by its kernel,
summed into the update, scored, and dropped as soon as the pass reaches the layer, so no layer's
gradients outlive it. The target rows ride in the batch's pass (``target_pass="joint"``) or get one
of their own first (``"separate"``: activations are then held for the batch's rows only). The update
is torch's own optimizer step on the summed gradient: training is the same as without attribution.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import InputError, UnsupportedModelError
from .ghost import hooks_paused
from .kernels import Kernel, LayerGrads, kernel_for
from .model_task import Batch, ModelTask, batch_size_of, concat, take, to_device
from .task import TrainConfig, last_bits, nudge_units
from .trainer import (
    EarlyStop,
    TrainResult,
    batches,
    checkpoint_epochs,
    cpu_state,
    early_stop,
    kept_rows,
    run_id_for,
    run_to_end,
)

# Normalizations that mix the examples of a batch: a per-example gradient is then undefined.
_BATCH_COUPLED = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)
METHODS = {"sgd": "inrun_sgd", "adamw": "inrun_adamw"}


@dataclass
class Scored:
    """One module whose parameters are trained and scored, and what its hook kept."""

    name: str
    module: nn.Module
    kernel: Kernel
    kept: object = None
    output: torch.Tensor | None = None
    calls: int = 0


def scored_modules(model: nn.Module) -> list[Scored]:
    """Every module with trainable parameters, each with its kernel; refusals name the layer."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, _BATCH_COUPLED):
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) couples the examples of a batch, so per-example "
                "attribution is undefined; use GroupNorm, LayerNorm or no normalization"
            )
        own = list(module.parameters(recurse=False))
        trainable = [p for p in own if p.requires_grad]
        if not trainable:
            continue
        if len(trainable) != len(own):
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) is partly frozen; freeze all of its parameters "
                "or none"
            )
        found.append(Scored(name, module, kernel_for(name, module)))
    if not found:
        raise UnsupportedModelError("the model has no trainable parameters to attribute")
    return found


@dataclass
class ModuleTaps:
    """Forward hooks that keep each scored module's input (via its kernel) and output.

    A module output that does not require grad (parameters are frozen for autograd) is made a
    leaf that does, so a backward pass yields every output gradient and no parameter gradient.
    ``grads`` returns all layers' gradients at once (small batches: tests, TRAK chunks);
    ``stream`` hands each layer's gradients to a callback as the backward pass reaches it and
    keeps none, so peak memory stays near that of ordinary training.
    """

    scored: list[Scored]
    _handles: list = field(default_factory=list)
    _on_grads: Callable[[Scored, LayerGrads], None] | None = None

    def __enter__(self) -> ModuleTaps:
        for s in self.scored:
            self._handles.append(s.module.register_forward_hook(self._hook(s), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, s: Scored):
        def on_output_grad(b: torch.Tensor) -> None:
            if self._on_grads is not None:
                self._on_grads(s, s.kernel.grads(s.module, s.kept, b))
                s.kept = None

        def hook(module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> torch.Tensor | None:
            s.kept = s.kernel.keep(module, args, kwargs)
            s.calls += 1
            replaced = not out.requires_grad
            s.output = out.detach().requires_grad_(True) if replaced else out
            s.output.register_hook(on_output_grad)
            return s.output if replaced else None

        return hook

    def check(self, n_rows: int) -> None:
        """Each scored module ran exactly once since the last check, on a batch-first input."""
        odd = [f"{s.name} ran {s.calls}x" for s in self.scored if s.calls != 1]
        for s in self.scored:
            s.calls = 0
        if odd:
            raise UnsupportedModelError(
                f"each scored layer must run exactly once per forward pass ({', '.join(odd)}); a layer "
                "called twice (or not at all) cannot be attributed per example"
            )
        shared = [f"{s.name} (output {tuple(s.output.shape)})" for s in self.scored
                  if s.output.dim() == 0 or s.output.shape[0] != n_rows]
        if shared:
            raise UnsupportedModelError(
                f"scored layers must see one input row per example ({n_rows} rows here), but "
                f"{', '.join(shared)} did not: an output broadcast over the batch has no per-example "
                "gradient; give the layer batch-first input (e.g. position ids expanded to [batch, T])"
            )

    def grads(self, loss: torch.Tensor, n_rows: int) -> list[LayerGrads]:
        """Each scored module's per-example gradients, from one backward pass of ``loss``."""
        self.check(n_rows)
        outs = torch.autograd.grad(loss, [s.output for s in self.scored], allow_unused=True)
        return [
            s.kernel.grads(s.module, s.kept, torch.zeros_like(s.output) if b is None else b)
            for s, b in zip(self.scored, outs, strict=True)
        ]

    def stream(self, loss: torch.Tensor, n_rows: int, on_grads: Callable[[Scored, LayerGrads], None]) -> None:
        """One backward pass of ``loss``; ``on_grads(module, grads)`` runs for each scored module as
        its output gradient arrives (a module the loss does not reach is not called)."""
        self.check(n_rows)
        self._on_grads = on_grads
        try:
            loss.backward()
        finally:
            self._on_grads = None
            for s in self.scored:
                s.output, s.kept = None, None


# ---------------------------------------------------------------- per-parameter sums


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer``'s torch optimizer over ``params`` (AdamW or plain SGD, with ``cfg.weight_decay``);
    the attributed and the plain training loops share it, and set the scheduled rate every step."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def has_tied_parameters(scored: list[Scored]) -> bool:
    """Whether a parameter belongs to more than one scored module (an embedding tied to the head)."""
    ids = [id(p) for s in scored for p in s.module.parameters(recurse=False)]
    return len(ids) != len(set(ids))


def gram_modules(
    taps: ModuleTaps, model: nn.Module, task: ModelTask, one_row: Batch, n_targets: int
) -> set[str]:
    """Modules scored by their Gram form: only under SGD (a scalar preconditioner) without tied
    weights or reused targets; all of them for per-target scores, else where the Gram form is the
    cheaper one for this model's shapes (both costs grow with the rows alike: one row decides)."""
    cfg = task.config
    if cfg.optimizer != "sgd" or cfg.target_every > 1 or has_tied_parameters(taps.scored):
        return set()
    if cfg.per_target:
        return {s.name for s in taps.scored}
    with _autocast(cfg, next(iter(one_row.values())).device):
        losses = task.loss(model, one_row)
    grads = taps.grads(losses.float().sum(), 1)
    return {s.name for s, g in zip(taps.scored, grads, strict=True) if g.gram_cost(n_targets) < g.dot_cost()}


def summed_target_scores(
    train: list[LayerGrads], target_sums: Mapping[int, torch.Tensor], pre: Mapping[int, torch.Tensor | float]
) -> torch.Tensor:
    """``[nb]``: ``⟨g_i, P ⊙ G⟩`` summed over modules, ``G`` the per-parameter summed target gradient."""
    total = None
    for g in train:
        s = g.dot([target_sums[id(p)] * pre[id(p)] for p in g.params])
        total = s if total is None else total.add_(s)
    return total


# ---------------------------------------------------------------- one streamed step


def preconditioner(
    opt: torch.optim.Optimizer, cfg: TrainConfig, lr: float, p: nn.Parameter, grad: torch.Tensor
) -> torch.Tensor | float:
    """The derivative of the step ``opt`` is about to take on ``p`` in its gradient ``grad``: ``lr``
    for SGD; for AdamW ``lr (1−β₁)/(1−β₁ᵗ) / (√v̂_t + ε)`` with ``v_t`` updated by ``grad`` exactly as
    the step will update it (state held there: the first-order effect through this step)."""
    if cfg.optimizer == "sgd":
        return lr
    b1, b2 = cfg.adam_betas
    state = opt.state.get(p, {})
    t = float(state["step"]) + 1 if "step" in state else 1.0
    g = grad.to(p.dtype)
    v = g * g * (1 - b2) if "exp_avg_sq" not in state else state["exp_avg_sq"] * b2 + g * g * (1 - b2)
    denom = v.sqrt_().div_((1 - b2**t) ** 0.5).add_(cfg.adam_eps)
    return denom.reciprocal_().mul_(lr * (1 - b1) / (1 - b1**t))


@dataclass
class TargetGrads:
    """The targets' gradient at one step: summed over targets per parameter (``sums``), one row per
    target too when per-target scores need it (``rows``), and the factored gradients of modules
    scored by their Gram form (``factored``, by module name)."""

    n: int
    sums: dict[int, torch.Tensor] = field(default_factory=dict)
    rows: dict[int, torch.Tensor] | None = None
    factored: dict[str, LayerGrads] = field(default_factory=dict)


def target_grads(
    taps: ModuleTaps, model: nn.Module, task: ModelTask, batch: Batch, *, gram: set[str], per_target: bool
) -> TargetGrads:
    """One forward/backward pass of the target rows alone, streamed layer by layer (``gram``: modules
    whose target rows are kept factored for their Gram form)."""
    device = next(iter(batch.values())).device
    with _autocast(task.config, device):
        losses = task.loss(model, batch)
    out = TargetGrads(len(losses), rows={} if per_target else None)
    taps.stream(losses.float().sum(), out.n, lambda s, g: add_target(out, s, g, gram))
    return out


def add_target(out: TargetGrads, s: Scored, g: LayerGrads, gram: set[str]) -> None:
    """Fold one module's target-row gradients into ``out``."""
    if s.name in gram:
        out.factored[s.name] = g
        return
    _add_sums(out.sums, g.params, g.summed())
    if out.rows is not None:
        per_row = [g.rows(slice(j, j + 1)).summed() for j in range(len(g))]
        for k, p in enumerate(g.params):
            _add_sums(out.rows, [p], [torch.stack([r[k] for r in per_row])])


def _add_sums(
    into: dict[int, torch.Tensor], params: Sequence[nn.Parameter], sums: Sequence[torch.Tensor]
) -> None:
    for p, s in zip(params, sums, strict=True):
        into[id(p)] = s if id(p) not in into else into[id(p)] + s


@dataclass
class StepScorer:
    """Scores one step's batch rows module by module as the backward pass delivers them.

    A module is scored once the gradient of each of its parameters is complete (a tied parameter
    waits for every module that uses it), since Adam's preconditioner needs the whole gradient.
    The batch gradient it sums is then handed to the optimizer as ``p.grad``.
    """

    cfg: TrainConfig
    opt: torch.optim.Optimizer
    targets: TargetGrads
    lr: float
    nb: int
    owners: dict[int, int]
    joint: set[str] | None = None  # target rows ride in this pass (after the batch's): their gram set
    grad: dict[int, torch.Tensor] = field(default_factory=dict)
    waiting: list[tuple[Scored, LayerGrads]] = field(default_factory=list)
    total: torch.Tensor | None = None
    pre: dict[int, torch.Tensor | float] = field(default_factory=dict)

    def __call__(self, s: Scored, g: LayerGrads) -> None:
        if self.joint is not None:
            add_target(self.targets, s, g.rows(slice(self.nb, None)), self.joint)
            g = g.rows(slice(0, self.nb))
        if self.at_once(s, g):
            if self.cfg.optimizer == "sgd":  # the rate: known before the sum, so fused per chunk
                sums, part = g.summed_and_dot([self.targets.sums[id(p)] * self.lr for p in g.params])
            else:
                sums, part = g.summed_and_dot(functools.partial(self.weigh, g.params))
            _add_sums(self.grad, g.params, sums)
            self.owners.update({id(p): 0 for p in g.params})
            self.add(part)
            return
        _add_sums(self.grad, g.params, g.summed())
        self.waiting.append((s, g))
        for p in g.params:
            self.owners[id(p)] -= 1
        self.flush(complete_only=True)

    def flush(self, complete_only: bool = False) -> None:
        """Score the waiting modules whose gradients are complete (all of them at the end)."""
        ready, waiting = [], []
        for s, g in self.waiting:
            done = not complete_only or all(self.owners[id(p)] == 0 for p in g.params)
            (ready if done else waiting).append((s, g))
        self.waiting = waiting  # by identity: comparing the tuples would compare their tensors
        for s, g in ready:
            self.add(self.score(s, g))

    def add(self, part: torch.Tensor) -> None:
        """Sum a module's part into ``total``: the first part is kept as given, later ones added in place."""
        self.total = part if self.total is None else self.total.add_(part)

    def at_once(self, s: Scored, g: LayerGrads) -> bool:
        """Whether the module is summed and scored in one go (``summed_and_dot``): its parameters are
        its own (a tied one waits for its other modules) and it is scored against the summed target
        gradient (not per target, not by its Gram form)."""
        t = self.targets
        return (t.rows is None and s.name not in t.factored
                and all(self.owners[id(p)] == 1 for p in g.params))

    def weigh(self, params: Sequence[nn.Parameter], sums: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``P ⊙ G`` for parameters whose complete batch gradients are ``sums``."""
        return [self.targets.sums[id(p)] * preconditioner(self.opt, self.cfg, self.lr, p, s / self.nb)
                for p, s in zip(params, sums, strict=True)]

    def preconditioner(self, p: nn.Parameter) -> torch.Tensor | float:
        """``preconditioner`` for ``p``'s complete batch gradient, formed once per step (a tied
        parameter is scored by each of its modules)."""
        if id(p) not in self.pre:
            self.pre[id(p)] = preconditioner(self.opt, self.cfg, self.lr, p, self.grad[id(p)] / self.nb)
        return self.pre[id(p)]

    def score(self, s: Scored, g: LayerGrads) -> torch.Tensor:
        """This module's part of the rows' scores, ``[nb]`` (summed over targets) or ``[nb, n_targets]``: by
        its Gram form against the factored target rows (SGD), else ``⟨g_i, P ⊙ G⟩`` per parameter."""
        t = self.targets
        if s.name in t.factored:  # SGD: the preconditioner is the scalar lr
            gram = g.gram(t.factored[s.name]).mul_(self.lr)
            return gram if t.rows is not None else gram.sum(1)
        pre = {id(p): self.preconditioner(p) for p in g.params}
        if t.rows is None:
            return summed_target_scores([g], t.sums, pre)
        return torch.stack([summed_target_scores([g], {k: v[j] for k, v in t.rows.items()}, pre)
                            for j in range(t.n)], 1)


def attributed_step(
    taps: ModuleTaps, model: nn.Module, task: ModelTask, opt: torch.optim.Optimizer, batch: Batch,
    targets: TargetGrads | Batch, *, lr: float, params: Sequence[nn.Parameter], gram: set[str] = frozenset(),
) -> tuple[torch.Tensor, TargetGrads]:
    """One optimizer step of ``task`` on ``batch`` and the rows' scores: ``[nb]`` (mean over targets)
    or ``[nb, n_targets]``; ``opt`` is stepped with the batch-mean gradient. ``targets`` is either
    the target gradient of an earlier pass (``target_grads``) or the target rows themselves, which
    then ride in this pass (``gram`` as in ``target_grads``). Returns the target gradient used."""
    cfg = task.config
    device = next(iter(batch.values())).device
    nb = batch_size_of("batch", batch)
    joint = not isinstance(targets, TargetGrads)
    if joint:
        batch = concat(batch, targets)
        targets = TargetGrads(len(batch[next(iter(batch))]) - nb, rows={} if cfg.per_target else None)
    with _autocast(cfg, device):
        losses = task.loss(model, batch)
    owners: dict[int, int] = {}
    for s in taps.scored:
        for p in s.module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    scorer = StepScorer(cfg, opt, targets, lr, nb, owners, joint=set(gram) if joint else None)
    taps.stream(losses.float().sum(), len(losses), scorer)
    scorer.flush()
    for p in params:
        g = scorer.grad.get(id(p))
        p.grad = None if g is None else g.div_(nb).to(p.dtype)
    opt.param_groups[0]["lr"] = lr
    opt.step()
    if scorer.total is None:
        shape = (nb, targets.n) if targets.rows is not None else (nb,)
        return torch.zeros(shape, device=device), targets
    return (scorer.total if targets.rows is not None else scorer.total.div_(targets.n)), targets


# ---------------------------------------------------------------- checks before training


def row_keys(batch: Batch) -> list[bytes]:
    """One digest per row over every tensor of the row (to find targets that are also trained on)."""
    n = batch_size_of("batch", batch)
    cpu = {k: v.detach().cpu().contiguous() for k, v in sorted(batch.items()) if k != "labels"}
    out = []
    for i in range(n):
        h = hashlib.sha256()
        for v in cpu.values():
            h.update(v[i].numpy().tobytes())
        out.append(h.digest())
    return out


def validate(task: ModelTask, train: Batch, example_ids: Sequence[str], targets: Batch) -> tuple[int, int]:
    """Row counts, or one named error before any training starts: shapes, ids, overlap, the model's
    layers, and one forward/backward pass of a training row and a target row."""
    n = batch_size_of("train", train)
    nv = batch_size_of("targets", targets)
    if len(example_ids) != n:
        raise InputError(f"{len(example_ids)} example_ids for {n} training rows")
    if len(set(example_ids)) != len(example_ids):
        raise InputError("example_ids are not unique; each training row needs its own id")
    probe = concat(take(train, torch.arange(1)), take(targets, torch.arange(1)))
    overlap = set(row_keys(train)) & set(row_keys(targets))
    if overlap:
        raise InputError(
            f"{len(overlap)} target rows also appear in the training set; targets must be held out"
        )
    model = task.fresh(0)
    scored = scored_modules(model)
    for p in model.parameters():
        p.requires_grad_(False)
    with ModuleTaps(scored) as taps:
        losses = task.loss(model, probe)
        if losses.shape != (2,):
            raise InputError(
                f"the task's loss must return one value per row, got shape {tuple(losses.shape)}"
            )
        taps.grads(losses.sum(), 2)
    return n, nv


# ---------------------------------------------------------------- training


def _autocast(cfg: TrainConfig, device: torch.device):
    """bf16 autocast of the forward pass (``precision="bf16"``): meant for GPUs, allowed on the CPU
    (slow there, but it lets CI check the mixed-precision path). Kernels sum scores in fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def model_steps(
    task: ModelTask, train: Batch, example_ids: Sequence[str], targets: Batch, *, seed: int,
    run_id: str | None = None,
) -> Generator[None, None, TrainResult]:
    """``train_model`` as a generator that yields after every optimizer step (for benchmarks that
    interleave it with ``plain_model_steps``) and returns the ``TrainResult``."""
    cfg = task.config
    device = cfg.torch_device()
    n, nv = validate(task, train, example_ids, targets)
    train_dev, targets_dev = to_device(train, device), to_device(targets, device)
    model = task.fresh(seed).to(device)
    scored = scored_modules(model)
    params = [p for s in scored for p in s.module.parameters(recurse=False)]
    params = list({id(p): p for p in params}.values())
    for p in model.parameters():
        p.requires_grad_(False)
    opt, units = make_optimizer(params, cfg), nudge_units(cfg)
    scores = torch.zeros((n, nv) if cfg.per_target else (n,), dtype=torch.float64, device=device)
    keep = set(checkpoint_epochs(cfg.epochs, cfg.n_checkpoints))
    checkpoints: list[dict[str, torch.Tensor]] = []
    stop = early_stop(cfg, targets)
    steps_per_epoch = -(-n // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    t0 = time.perf_counter()
    target: TargetGrads | None = None
    with ModuleTaps(scored) as taps:
        gram = gram_modules(taps, model, task, take(train_dev, torch.arange(1, device=device)), nv)
        for step, (epoch, idx) in enumerate(batches(n, cfg.batch_size, cfg.epochs, seed)):
            against: TargetGrads | Batch = target
            if step % cfg.target_every == 0:
                against = targets_dev
                if cfg.target_pass == "separate":
                    against = target_grads(taps, model, task, targets_dev, gram=gram,
                                           per_target=cfg.per_target)
            idx_dev = idx.to(device)
            s, target = attributed_step(taps, model, task, opt, take(train_dev, idx_dev), against,
                                        lr=cfg.lr_at(step, total), params=params, gram=gram)
            last_bits(params, step, units)
            scores.index_add_(0, idx_dev, s.to(torch.float64))
            ended, done = (step + 1) % steps_per_epoch == 0, False
            if ended and stop is not None:
                with hooks_paused(taps):
                    done = stop.ended(model, target_loss(task, model, targets_dev), scores)
            elif ended and epoch in keep:
                checkpoints.append(cpu_state(model))
            yield
            if done:
                break
    if stop is not None:
        scores, checkpoints = stop.scores, stop.checkpoints()
        stop.restore(model)
    for p in params:
        p.grad = None
    train_s = time.perf_counter() - t0
    model.cpu()
    for p in params:
        p.requires_grad_(True)
    scores = scores.cpu()
    return TrainResult(
        model=model,
        task=task,
        run_id=run_id or run_id_for(task, example_ids, seed),
        example_ids=list(example_ids),
        scores=(scores.mean(1) if cfg.per_target else scores).numpy(),
        per_target=scores.numpy() if cfg.per_target else None,
        checkpoints=checkpoints,
        timings={"train_s": train_s},
        method=METHODS[cfg.optimizer],
        epochs=cfg.epochs if stop is None else stop.best + 1,
    )


def train_model(
    task: ModelTask, train: Batch, example_ids: Sequence[str], targets: Batch, *, seed: int,
    run_id: str | None = None,
) -> TrainResult:
    """Train ``task`` on ``train`` (a dict of tensors, one row per example) and score every example at
    every step against the mean loss of ``targets`` (or per target, ``config.per_target``)."""
    return run_to_end(model_steps(task, train, example_ids, targets, seed=seed, run_id=run_id))


def plain_model_steps(
    task: ModelTask, train: Batch, *, seed: int, keep: np.ndarray | None = None,
    keys: np.ndarray | None = None, targets: Batch | None = None,
) -> Generator[nn.Module, None, EarlyStop | None]:
    """The same training without attribution, one step at a time (reference for cost and retraining).
    ``keep`` trains on those rows only, ``keys`` orders them (``trainer.batches``). A config with
    ``patience`` stops early on ``targets``' mean loss: the model is then left at its best epoch's
    state and the generator returns its ``EarlyStop`` (``trainer.checkpointed`` reads its checkpoints)."""
    cfg = task.config
    stop = early_stop(cfg, targets)
    device = cfg.torch_device()
    n = batch_size_of("train", train)
    train_dev = to_device(train, device)
    targets_dev = None if targets is None else to_device(targets, device)
    model = task.fresh(seed).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, units = make_optimizer(params, cfg), nudge_units(cfg)
    steps_per_epoch = -(-kept_rows(n, keep) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    for step, (_, idx) in enumerate(batches(n, cfg.batch_size, cfg.epochs, seed, keep, keys)):
        opt.param_groups[0]["lr"] = cfg.lr_at(step, total)
        with _autocast(cfg, device):
            loss = task.loss(model, take(train_dev, idx.to(device))).float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last_bits(params, step, units)
        done = stop is not None and (step + 1) % steps_per_epoch == 0 and stop.ended(
            model, target_loss(task, model, targets_dev))
        yield model
        if done:
            break
    if stop is not None:
        stop.restore(model)
    return stop


def target_loss(task: ModelTask, model: nn.Module, targets: Batch) -> float:
    """The model's mean loss on ``targets`` in eval mode (what ``TrainConfig.patience`` watches)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(task.config, next(iter(targets.values())).device):
            return float(task.loss(model, targets).float().mean())
    finally:
        model.train(was_training)


def train_model_plain(task: ModelTask, train: Batch, *, seed: int, targets: Batch | None = None) -> nn.Module:
    """``plain_model_steps`` to the end (``targets``: where the config stops early); the model comes back
    on the CPU."""
    return deque(plain_model_steps(task, train, seed=seed, targets=targets), maxlen=1)[0].cpu()
