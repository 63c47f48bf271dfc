"""TRAK features for any ``ModelTask``: query-time attribution of one text or image prediction.

At each kept checkpoint every training row's loss gradient is projected through the kernels'
``LayerGrads.project``, each layer into columns of its own: kept exactly when it has at most ``k``
parameters, else projected to ``k`` dims (a seeded Kronecker-structured projection for factored
layers, Linear, Conv2d and Embedding, a dense one for thin and explicit-vector layers), with new
matrices at each checkpoint (``kernels.projection``), from one ordinary forward/backward pass per
chunk of ``config.chunk_rows`` rows. The kernel is TRAK's empirical ``ΦᵀΦ`` (or, for the MLP's pay,
the Fisher of the model's own predictions: ``fisher_gram``) restricted to its per-layer blocks
(block-diagonal by layer, as Kronfluence's and LoGra's curvature is), each plus a ridge
(``block_inverse``: ``n·weight_decay`` for SGD, whose coupled decay is the Hessian's own ridge, and for
the MLP early stopping's, ``trak.stopping_ridge`` (``ridge_of`` says why only there), plus
``config.trak_model_damping`` times the block's mean nonzero eigenvalue). A query's score for
training row i is ``φ_iᵀ K⁻¹ φ_q`` averaged over checkpoints, with ``φ_q`` the projected gradient of
the query's loss at its label (or at the class the last checkpoint predicts): the first-order
decrease of the query loss from training on i, so positive = helped. Pay (``valued_by_trak``) reads
the same features under one kernel over all layers (``whole_kernel_solve``); its docstring says why.

Features are float32 chunks in a ``trak.FeatureStore`` (spilled to ``.npy`` memory maps past
``config.spill_bytes``); RAM holds one chunk's factors at a time. The same inputs and seed give the
same feature bytes. Layers sharing a parameter (tied weights) are refused: their projected parts
would not add up to the projection of the shared gradient.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from .errors import InputError, UnsupportedModelError
from .fisher import fisher_labels
from .inrun import ModuleTaps, Scored, has_tied_parameters, scored_modules
from .kernels.projection import Distribution, LayerProjector, add_parts, layer_projectors
from .model_task import LABELS, Batch, ModelTask, batch_size_of, model_logits, take, to_device
from .task import TrainConfig
from .trainer import TrainResult, feature_tensor, label_tensor
from .trak import FeatureStore, Kernel, checkpoint_store, self_influence, stopping_ridge

TRAK_VALUE_METHOD = "trak_value"  # example_attribution's method when pay is measured by TRAK


@dataclass
class ModelCheckpointFeatures:
    """One checkpoint: its frozen model, scored layers, training features and kernel inverse."""

    model: nn.Module
    scored: list[Scored]
    projectors: list[LayerProjector]  # one per scored layer, drawn for this checkpoint
    store: FeatureStore
    kernel_inv: BlockInverse
    gram: torch.Tensor | None = None  # the whole kernel pay solves with, where not ``storeᵀstore`` (Fisher)


@dataclass
class BlockInverse:
    """A block-diagonal ``[dim, dim]`` float64 inverse kept as its blocks: one per layer, at the
    layer's column offset (a dense inverse would be ``Σ k_l`` squared, most of it zeros). ``K @ x``
    (``x`` ``[dim]`` or ``[dim, m]``) and ``x @ K`` (``x`` ``[n, dim]``) as for the dense matrix."""

    blocks: list[np.ndarray]
    offsets: list[int]
    __array_ufunc__ = None  # `ndarray @ BlockInverse` defers to __rmatmul__

    @property
    def shape(self) -> tuple[int, int]:
        """``(dim, dim)`` as for the dense matrix, ``dim`` the last block's offset plus its size."""
        dim = self.offsets[-1] + len(self.blocks[-1])
        return dim, dim

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.empty_like(x)
        for block, o in zip(self.blocks, self.offsets, strict=True):
            out[o : o + len(block)] = block @ x[o : o + len(block)]
        return out

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.empty_like(x)
        for block, o in zip(self.blocks, self.offsets, strict=True):
            out[..., o : o + len(block)] = x[..., o : o + len(block)] @ block
        return out

    def dense(self) -> np.ndarray:
        """The whole ``[dim, dim]`` matrix (for tests and small models)."""
        out = np.zeros(self.shape)
        for block, o in zip(self.blocks, self.offsets, strict=True):
            out[o : o + len(block), o : o + len(block)] = block
        return out


@dataclass
class ModelTrakFeatures:
    """What a query needs: the task and every checkpoint's model, projectors and features."""

    task: ModelTask
    checkpoints: list[ModelCheckpointFeatures]
    n_train: int
    dim: int
    epochs: int | None = None  # the MLP's: the epochs its run trained, its kernels' damping (``ridge_of``)

    def features(self, j: int = 0) -> np.ndarray:
        """``[n_train, dim]`` float32: checkpoint ``j``'s projected training gradients."""
        return np.concatenate([np.asarray(c) for c in self.checkpoints[j].store])

    def query_features(self, query_batch: Batch) -> list[np.ndarray]:
        """Per checkpoint, ``[m, dim]`` float64 projected gradients of each query row's loss (one
        query, as serving sends: one ``autograd.grad`` per checkpoint instead of hooked layers)."""
        batch = self._labelled(query_batch)
        cfg = self.task.config
        if batch_size_of("query_batch", batch) == 1:
            return [
                one_row_features(self.task, c.model, c.scored, c.projectors, batch)[None].double().numpy()
                for c in self.checkpoints
            ]
        return [
            _chunked(self.task, ck.model, ck.scored, ck.projectors, batch, cfg).double().numpy()
            for ck in self.checkpoints
        ]

    def scores(self, query_batch: Batch) -> np.ndarray:
        """``[n_train, n_queries]``: each training row's contribution to each query's loss decrease
        (positive = helped), averaged over checkpoints. Rows without ``labels`` are scored at the class
        the last checkpoint predicts (``argmax model(**inputs)``, the ``classification_loss`` convention).
        """
        feats = self.query_features(query_batch)
        total = np.zeros((self.n_train, feats[0].shape[0]))
        for ck, f in zip(self.checkpoints, feats, strict=True):
            u = ck.kernel_inv @ f.T
            total += ck.store.matvec(u.astype(np.float32))
        return total / len(self.checkpoints)

    def value_scores(self, targets: Batch) -> np.ndarray:
        """``[n_train]``: each training row's TRAK value for the targets' mean loss, under one kernel over
        all layers (``whole_kernel_solve``), not the per-layer blocks that score single queries
        (``valued_by_trak`` says why); one matvec per checkpoint with the targets' mean gradient."""
        cfg = self.task.config
        total = np.zeros(self.n_train)
        for ck, f in zip(self.checkpoints, self.query_features(targets), strict=True):
            u = whole_kernel_solve(ck.store, f.mean(axis=0), self.n_train, cfg, epochs=self.epochs,
                                   gram=ck.gram)
            total += ck.store.matvec(u.astype(np.float32))
        return total / len(self.checkpoints)

    def self_influence(self) -> np.ndarray:
        """``φ_iᵀ K⁻¹ φ_i`` averaged over checkpoints: high for rows the model must bend to fit."""
        return self_influence(self.checkpoints, self.n_train)

    def _labelled(self, batch: Batch) -> dict[str, torch.Tensor]:
        batch_size_of("query_batch", batch)
        if LABELS in batch:
            return dict(batch)
        model = self.checkpoints[-1].model
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = model_logits(model, to_device(batch, device))
        return {**batch, LABELS: logits.argmax(-1).to(next(iter(batch.values())).device)}


def valued_by_trak(result: TrainResult, features: ModelTrakFeatures, targets: Batch) -> TrainResult:
    """``result`` with each example's score its TRAK value for the targets (``value_scores``) and
    ``method`` TRAK_VALUE_METHOD.

    Why, for pay: summed per-step scores credit every example whose gradient pointed the targets'
    way while the model was still learning what all examples teach, so high-loss examples (noisy
    images, scrambled texts) earn most; TRAK linearizes the trained model at its checkpoints, where a
    group's summed gradient is what the rest of the data does not already supply, and a group that
    pulls the model from the targets scores low or negative (as leave-one-provider-out retraining
    finds: the closing notes of issue #14 give the figures).

    Why one kernel over all layers here, when single queries use per-layer blocks (better LDS): pay
    values groups against the targets' mean, and the blocks, each layer damped on its own scale, lift
    the layers where noisy inputs carry large gradients. Measured (stop 23): with the blocks the
    digits demo paid `scanner-noisy`, whose removal lowers the validation loss, the most (1579 bps);
    with one kernel the least (717 bps). On `bench/contributor_value.py --kind image` one kernel paid
    the faulty contributors 149 bps against 669, at provider Spearman 0.57 against 0.75 (its noisy
    provider helps the model there, and the blocks pay it more)."""
    return replace(
        result, scores=features.value_scores(targets), per_target=None, features=features,
        method=TRAK_VALUE_METHOD,
    )


def mlp_valued_by_trak(result: TrainResult, x: np.ndarray, y: np.ndarray, x_targets: np.ndarray,
                       y_targets: np.ndarray, *, seed: int) -> TrainResult:
    """An MLP run (``train_with_attribution``) valued as ``valued_by_trak`` values text and image runs:
    its checkpoints read as the ``mlp_task`` recipe (the same state_dict), each layer in columns of its
    own. The run keeps its whole-gradient TRAK features (what serving reads).

    Why for the MLP too: on ``bench/contributor_value.py`` (digits, world seeds 0-3) provider pay by TRAK
    value followed leave-one-provider-out retraining at Spearman 0.97/0.62/0.97/0.74 against in-run's
    0.97/0.44/0.83/0.67, and paid the faulty contributors 440/381/167/213 bps against 595/807/510/715.

    Its kernel is the config's ``trak_kernel``, as for the whole-gradient features (``trak.build_features``):
    the MLP recipe's is the Fisher (``fisher_gram``), which holds the model's own predictive spread where the
    gradients' ``ΦᵀΦ`` holds each label's residual, so a provider of flipped labels does not inflate the
    curvature it is measured against."""
    from .recipes.mlp import mlp_task

    spec = result.task.spec
    task = mlp_task(spec, result.task.config)

    def batch(name: str, xs: np.ndarray, ys: np.ndarray) -> Batch:
        rows = feature_tensor(name, xs, spec.sizes[0])
        return {"features": rows, LABELS: label_tensor(f"{name} labels", ys, len(rows), spec.sizes[-1])}

    features = model_features(task, result.checkpoints, batch("x", x, y), seed=seed, epochs=result.epochs)
    return replace(result, scores=features.value_scores(batch("x_targets", x_targets, y_targets)),
                   per_target=None, method=TRAK_VALUE_METHOD)


def train_trak_valued(
    task: ModelTask, train: Batch, example_ids: Sequence[str], targets: Batch, *, seed: int,
    run_id: str | None = None,
) -> TrainResult:
    """Train ``task`` plainly, keeping the checkpoints, and value every example by TRAK against the
    targets (``valued_by_trak``): the run pay reads, without the per-step in-run scores it would
    discard (``train_model`` computes them, at about 1.5x a plain step). Inputs are checked as
    ``train_model`` checks them."""
    from .inrun import plain_model_steps, validate
    from .trainer import checkpointed, run_id_for

    n, _ = validate(task, train, example_ids, targets)
    steps = plain_model_steps(task, train, seed=seed, targets=targets)
    model, checkpoints, train_s, epochs = checkpointed(steps, n, task.config)
    result = TrainResult(
        model=model, task=task, run_id=run_id or run_id_for(task, example_ids, seed),
        example_ids=list(example_ids), scores=np.zeros(n), per_target=None, checkpoints=checkpoints,
        timings={"train_s": train_s}, epochs=epochs,
    )
    features = model_features(task, checkpoints, train, seed=seed)
    return valued_by_trak(result, features, targets)


def model_features(
    task: ModelTask,
    checkpoints: Sequence[dict[str, torch.Tensor]],
    train_batch: Batch,
    *,
    k: int | None = None,
    seed: int,
    directory: str | None = None,
    projection: Distribution = "rademacher",
    epochs: int | None = None,
    kernel: Kernel | None = None,
) -> ModelTrakFeatures:
    """Project every training row's gradient at each checkpoint (``k`` dims per layer, default
    ``config.trak_k``) and invert each checkpoint's per-layer kernel blocks. ``checkpoints`` are state
    dicts (``TrainResult.checkpoints``); ``directory`` receives spilled chunks (a temporary one if None);
    ``epochs``, the MLP's only (``mlp_valued_by_trak``), those its SGD run trained (``TrainResult.epochs``),
    which its kernels are damped for (``ridge_of``; None: no such ridge). ``kernel`` (None: the config's
    ``trak_kernel``, as ``trak.build_features`` reads it): ``"empirical"``, the features' own ``ΦᵀΦ``;
    ``"fisher"``, the Fisher of the model's predictive distribution (``fisher_gram``), formed whole for pay
    and cut into the per-layer blocks (the MLP recipe's; the text, image and Hugging Face recipes take the
    gradients')."""
    cfg = task.config
    kernel = kernel or cfg.trak_kernel
    if not checkpoints:
        raise InputError("model_features needs at least one checkpoint (TrainResult.checkpoints)")
    if kernel not in ("empirical", "fisher"):
        raise InputError(f"kernel must be 'empirical' or 'fisher', got {kernel!r}")
    n = batch_size_of("train_batch", train_batch)
    k = cfg.trak_k if k is None else k
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    out = []
    for j, state in enumerate(checkpoints):
        model, scored = frozen_task_model(task, state)
        sizes = [sum(p.numel() for p in s.module.parameters(recurse=False)) for s in scored]
        projectors = layer_projectors(sizes, k, seed, projection, checkpoint=j)
        store = checkpoint_store(cfg, directory, j)
        grams = [torch.zeros(p.k, p.k, dtype=torch.float64) for p in projectors]
        for _, rows in row_chunks(train_batch, cfg.chunk_rows):
            phi = projected_grads(task, model, scored, projectors, rows)
            store.append(phi.numpy())
            if kernel == "empirical":
                for gram, p in zip(grams, projectors, strict=True):
                    part = phi[:, p.offset : p.offset + p.k]
                    gram.add_((part.T @ part).double())
        whole = None
        if kernel == "fisher":  # the per-layer blocks are the whole Fisher's diagonal blocks
            whole = fisher_gram(task, model, scored, projectors, train_batch, cfg, seed=seed, checkpoint=j)
            grams = [whole[p.offset : p.offset + p.k, p.offset : p.offset + p.k] for p in projectors]
        kernel_inv = block_inverse(grams, projectors, n, cfg, epochs)
        out.append(ModelCheckpointFeatures(model, scored, projectors, store, kernel_inv, whole))
    return ModelTrakFeatures(task, out, n, out[0].kernel_inv.shape[0], epochs)


def frozen_task_model(task: ModelTask, state: dict[str, torch.Tensor]) -> tuple[nn.Module, list[Scored]]:
    """A checkpoint's model on the task's device, in eval mode with every parameter frozen for
    autograd, and its scored layers (those ``build`` left trainable), each with its kernel."""
    model = task.fresh(0)
    model.load_state_dict(state)
    scored = scored_modules(model)
    if has_tied_parameters(scored):
        raise UnsupportedModelError(
            "the model shares parameters between layers (tied weights), whose projected TRAK features "
            "would not add up; untie them or freeze the shared parameter"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(task.config.torch_device()).eval(), scored


def projected_grads(
    task: ModelTask, model: nn.Module, scored: list[Scored], projectors: list[LayerProjector], rows: Batch,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[n, dim]`` float32 on the CPU: each row's projected loss gradient (times its ``weights``, if
    given), layer by layer, from one forward/backward pass (rows must be independent in ``task.loss``, as
    in training)."""
    device = next(model.parameters()).device
    with ModuleTaps(scored) as taps:
        losses = task.loss(model, to_device(rows, device)).float()
        if weights is not None:
            losses = losses * weights.to(device)
        grads = taps.grads(losses.sum(), len(losses))
    parts = [g.project(p) for g, p in zip(grads, projectors, strict=True)]
    return add_parts(parts, projectors).float().cpu()


def fisher_gram(
    task: ModelTask, model: nn.Module, scored: list[Scored], projectors: list[LayerProjector], batch: Batch,
    cfg: TrainConfig, *, seed: int, checkpoint: int,
) -> torch.Tensor:
    """``[dim, dim]`` float64: ``Σ_i Σ_c p_c(x_i) φ_icφ_icᵀ``, ``φ_ic`` the projected gradient of the loss
    at class ``c`` (``task.loss`` with every label ``c``: a classification loss), ``p`` the model's own
    probabilities. For the cross-entropy this is the Gauss-Newton curvature (the true Fisher), which the
    gradients' ``ΦᵀΦ`` only estimates at the given labels. One pass per class over the rows, or
    ``FISHER_SAMPLES`` passes of labels drawn from ``p`` where there are more classes (``fisher_labels``,
    keyed by the run's ``seed``, the ``checkpoint`` and each row).

    Why for the MLP's pay: summed per provider, its TRAK value followed leave-one-provider-out retraining
    (the 20 providers of ``bench/attribution_lds.py``'s LOCO, some with 30 % flipped labels; Spearman,
    split seeds 0-3 / 0-1) from 0.789 / 0.953 / 0.859 / 0.907 to 0.886 / 0.959 / 0.991 / 0.994 (logistic
    regression) and 0.976 / 0.970 / 0.934 / 0.928 to 0.977 / 0.968 / 0.953 / 0.931 (the MLP) on wine,
    0.943 / 0.971 to 0.977 / 0.989 and 0.953 / 0.940 to 0.982 / 0.985 on breast cancer, 0.976 / 0.979 to
    0.992 / 0.995 and 0.941 / 0.923 to 0.959 / 0.938 on a 24-feature table."""
    device = next(model.parameters()).device
    gram = None
    for start, rows in row_chunks(batch, cfg.chunk_rows):
        with torch.no_grad():
            p = torch.softmax(model_logits(model, to_device(rows, device)).float(), dim=-1).cpu()
        for labels, weights in fisher_labels(p, seed=seed, checkpoint=checkpoint, start=start):
            phi = projected_grads(task, model, scored, projectors, {**rows, LABELS: labels}, weights=weights)
            term = (phi.T @ phi).double()
            gram = term if gram is None else gram.add_(term)
    assert gram is not None
    return gram


def one_row_features(
    task: ModelTask, model: nn.Module, scored: list[Scored], projectors: list[LayerProjector], row: Batch
) -> torch.Tensor:
    """``[dim]`` float32 on the CPU: ``projected_grads`` of a one-row batch, from one ordinary
    ``autograd.grad`` of its loss and each kernel's ``project_gradient`` (no hooks, no per-example
    algebra: one example's gradient is the gradient). The model's parameters are frozen between calls."""
    device = next(model.parameters()).device
    per_layer = [tuple(s.module.parameters(recurse=False)) for s in scored]
    params = [p for ps in per_layer for p in ps]
    for p in params:
        p.requires_grad_(True)
    try:
        loss = task.loss(model, to_device(row, device)).float().sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for p in params:
            p.requires_grad_(False)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    parts, start = [], 0
    for s, ps, projector in zip(scored, per_layer, projectors, strict=True):
        parts.append(s.kernel.project_gradient(s.module, grads[start : start + len(ps)], projector)[None])
        start += len(ps)
    return add_parts(parts, projectors)[0].float().cpu()


def _chunked(task, model, scored, projectors, batch: Batch, cfg: TrainConfig) -> torch.Tensor:
    chunks = row_chunks(batch, cfg.chunk_rows)
    return torch.cat([projected_grads(task, model, scored, projectors, rows) for _, rows in chunks])


def row_chunks(batch: Batch, chunk_rows: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``batch`` in consecutive chunks of at most ``chunk_rows`` rows, each with its first row's index."""
    n = batch_size_of("batch", batch)
    for start in range(0, n, chunk_rows):
        yield start, take(batch, torch.arange(start, min(start + chunk_rows, n)))


def block_inverse(
    grams: Sequence[torch.Tensor], projectors: Sequence[LayerProjector], n: int, cfg: TrainConfig,
    epochs: int | None = None,
) -> BlockInverse:
    """Each layer's ``(Φ_lᵀΦ_l + λ_l I)⁻¹``, ``λ_l = n·weight_decay`` (SGD only: AdamW's decay is
    decoupled from the loss) ``+`` early stopping's over the MLP's ``epochs`` trained (``ridge_of``)
    ``+ trak_model_damping ·`` the mean nonzero eigenvalue of ``Φ_lᵀΦ_l`` (``trace / min(k_l, n)``):
    each layer damped on its own scale, as Kronfluence damps each block.

    Why so large a ridge: a network stopped after a few epochs has barely moved along the kernel's
    small eigen-directions, where ``(ΦᵀΦ)⁻¹`` would magnify the projection's noise most. Why not larger:
    the more damped, the nearer TRAK comes to a plain gradient inner product, which pays high-loss
    (noisy) examples for their large gradients. With one kernel over all layers, stop 22 measured that
    at 1x the mean eigenvalue the provider whose 60 % noisy pixels hurt the demo's digits earned the
    most, and at 0.1x the least, as leave-one-provider-out retraining says; per layer, LDS moves by
    less than 0.01 from 0.03x to 0.3x on the bench's transformer and 0.03 on its CNN (stop 23). Pay's
    kernel (``whole_kernel_solve``) takes the same factor, so 0.1 is the default. Scaled by the mean
    nonzero eigenvalue (the rank is ``min(k_l, n)``), the ridge means the same at any ``k``."""
    blocks = []
    for gram in grams:
        ridge = kernel_ridge(gram, n, cfg, epochs)
        if ridge == 0.0:  # a layer no row's loss moves: it carries no score
            blocks.append(np.zeros((len(gram), len(gram))))
            continue
        blocks.append(torch.linalg.inv(gram + ridge * torch.eye(len(gram), dtype=torch.float64)).numpy())
    return BlockInverse(blocks, [p.offset for p in projectors])


DIRECT_SOLVE_BYTES = 512 * 2**20  # pay's whole kernel (width² float64) is formed up to this size; past it, CG


def whole_kernel_solve(store: FeatureStore, v: np.ndarray, n: int, cfg: TrainConfig, *,
                       epochs: int | None = None, max_bytes: int = DIRECT_SOLVE_BYTES,
                       gram: torch.Tensor | None = None) -> np.ndarray:
    """``(ΦᵀΦ + λI)⁻¹ v`` over all of a checkpoint's columns at once, ``λ = kernel_ridge`` of the whole
    kernel: a direct solve while the kernel takes at most ``max_bytes``, else conjugate gradients
    (``cg_solve``), so a model with many layers never holds width² floats. A ``gram`` given (the
    Fisher, ``fisher_gram``) is the kernel instead of ``ΦᵀΦ``."""
    if gram is None:
        if len(v) * len(v) * 8 > max_bytes:
            return cg_solve(store, v, n, cfg, epochs=epochs)
        gram = stored_gram(store)
    eye = torch.eye(len(gram), dtype=torch.float64)
    v64 = torch.from_numpy(np.asarray(v, dtype=np.float64))
    return torch.linalg.solve(gram + kernel_ridge(gram, n, cfg, epochs) * eye, v64).numpy()


def stored_gram(store: FeatureStore) -> torch.Tensor:
    """``ΦᵀΦ`` of the stored features, float32 products widened to float64 (as ``block_inverse``'s grams)."""
    gram = None
    for chunk in store:
        c = torch.from_numpy(np.array(chunk, dtype=np.float32))  # a copy: a spilled chunk is read-only
        term = (c.T @ c).double()
        gram = term if gram is None else gram.add_(term)
    assert gram is not None
    return gram


def cg_solve(
    store: FeatureStore, v: np.ndarray, n: int, cfg: TrainConfig, *, epochs: int | None = None,
    rtol: float = 1e-10,
) -> np.ndarray:
    """``whole_kernel_solve`` by conjugate gradients on ``x ↦ Φᵀ(Φx) + λx``: one pass over the stored
    chunks per iteration, memory ``width + n`` floats; ``λ`` from the trace ``Σ‖φ_i‖²`` (no kernel
    formed). Stops at ``‖r‖ ≤ rtol·‖v‖`` or after ``width`` iterations; deterministic."""
    b = np.asarray(v, dtype=np.float64)
    trace = sum(float(np.square(np.asarray(c, dtype=np.float64)).sum()) for c in store)
    lam = ridge_of(trace, len(b), n, cfg, epochs)

    def apply(x: np.ndarray) -> np.ndarray:
        out = lam * x
        for chunk in store:
            c = np.asarray(chunk, dtype=np.float64)
            out += c.T @ (c @ x)
        return out

    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = float(r @ r)
    stop = (rtol * float(np.linalg.norm(b))) ** 2
    for _ in range(len(b)):
        if rr <= stop:
            break
        ap = apply(p)
        alpha = rr / float(p @ ap)
        x += alpha * p
        r -= alpha * ap
        rr, rr_old = float(r @ r), rr
        p = r + (rr / rr_old) * p
    return x


def kernel_ridge(gram: torch.Tensor, n: int, cfg: TrainConfig, epochs: int | None = None) -> float:
    """``n·weight_decay`` and early stopping's over the MLP's ``epochs`` (SGD only: AdamW's decay is
    decoupled from the loss, and its steps are not the gradient's) ``+ trak_model_damping`` times the mean
    nonzero eigenvalue of ``gram`` (``trace / min(width, n)``): the ridge of a per-layer block and of the
    whole kernel alike."""
    return ridge_of(float(gram.diagonal().sum()), len(gram), n, cfg, epochs)


def ridge_of(trace: float, width: int, n: int, cfg: TrainConfig, epochs: int | None = None) -> float:
    """``kernel_ridge`` from the kernel's trace and width (``cg_solve`` never forms the kernel), plus,
    where ``epochs`` are given (the MLP's SGD run: ``mlp_valued_by_trak``), early stopping's over them
    (``trak.stopping_ridge``, 0 under AdamW).

    Why the stopping ridge for the MLP: it is paid by this kernel, and its summed value per provider
    followed leave-one-provider-out retraining better with it (Spearman over the 20 providers of
    ``bench/attribution_lds.py``'s LOCO section, some with flipped labels, one retrain each; scratch runs)
    on digits 0.865 to 0.982, wine 0.561 to 0.976, breast cancer 0.844 to 0.953, a 9-feature table 0.615
    to 0.845 and a 2-feature one 0.913 to 0.952. Why not for other models: the ridge is gradient flow's
    on a model near-linear in its weights, and on the bench's transformer trained by SGD (n/τ = 12.5
    against a median block damping of 0.3) it lowered LDS at k = 512 from 0.184 / 0.154 to 0.165 / 0.124,
    and from 0.749 / 0.733 to 0.606 / 0.591 against fixed-seed retraining (synthetic text, seeds 0 / 1,
    30 retrains; the CNN's moved by ±0.02); their AdamW runs never took it."""
    wd = cfg.weight_decay if cfg.optimizer == "sgd" else 0.0
    stop = 0.0 if epochs is None else stopping_ridge(n, cfg, epochs)
    return n * wd + stop + cfg.trak_model_damping * trace / min(width, n)
