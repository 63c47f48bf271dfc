"""TRAK features for ModelTask models against torch.func.

The kernels project each row's gradient with ``P_out ⊗ P_in`` (its first ``k`` columns) without
forming it, or densely for thin layers; the reference forms it with ``vmap(grad)`` and multiplies by
the explicit matrix, and a checkpoint's features are the layers' parts side by side. With ``k`` at least
each layer's parameter count every layer is kept exactly, and the scores must equal the exact
block-diagonal kernel form ``Σ_l G_l (G_lᵀG_l + λ_l I)⁻¹ G_lqᵀ`` from full per-example gradients.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from attribution.errors import InputError, UnsupportedModelError
from attribution.inrun import ModuleTaps, scored_modules, train_model, train_model_plain
from attribution.kernels import LayerGrads
from attribution.kernels.explicit import VectorGrads
from attribution.kernels.projection import LayerProjector, layer_projectors
from attribution.model_task import ModelTask, classification_loss
from attribution.recipes.mlp import mlp_task
from attribution.task import AttributionTask, ModelSpec, TrainConfig
from attribution.trainer import train_with_attribution
from attribution.trak import FeatureStore
from attribution.trak_model import (
    TRAK_VALUE_METHOD,
    BlockInverse,
    fisher_gram,
    frozen_task_model,
    mlp_valued_by_trak,
    model_features,
    train_trak_valued,
    valued_by_trak,
    whole_kernel_solve,
)

from .kernel_models import CASES, Case, ConvNet, SeqLinear, image_batch, seq_batch

BY_NAME = {c.name: c for c in CASES}


def param_grads(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each row's loss gradient per trainable parameter (``[n, *shape]``), by torch.func."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def loss(p: dict, row: dict) -> torch.Tensor:
        one = {k: v.unsqueeze(0) for k, v in row.items()}
        logits = functional_call(model, p, (), {k: v for k, v in one.items() if k != "labels"})
        return nn.functional.cross_entropy(logits, one["labels"])

    return vmap(grad(loss), in_dims=(None, 0))(params, batch)


def flat_grads(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten(1) for g in param_grads(model, batch).values()], 1)


def layer_grads(model: nn.Module, batch: dict[str, torch.Tensor]):
    """The kernels' factored gradients of ``batch``'s rows, with each scored layer's name."""
    scored = scored_modules(model)
    for p in model.parameters():
        p.requires_grad_(False)
    with ModuleTaps(scored) as taps:
        grads = taps.grads(classification_loss(model, batch).sum(), len(batch["labels"]))
    for p in model.parameters():
        p.requires_grad_(True)
    return [(s.name, g) for s, g in zip(scored, grads, strict=True)]


def rel_err(got, ref) -> float:
    got, ref = torch.as_tensor(got).double(), torch.as_tensor(ref).double()
    return float((got - ref).norm() / ref.norm())


def projection_matrix(proj: LayerProjector, d_out: int, d_in: int) -> torch.Tensor:
    """The explicit ``[d_out·d_in, k]`` matrix of ``proj`` on a ``[d_out, d_in]`` gradient: the Kronecker
    product's first ``k`` columns, the dense matrix of a thin layer, or the identity (kept exactly)."""
    if proj.exact:
        return torch.eye(d_out * d_in)
    sides = proj.kron(d_out, d_in)
    if sides is None:
        return proj.dense(d_out * d_in)
    p_out, p_in = sides
    return torch.kron(p_out, p_in)[:, : proj.k]


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
@pytest.mark.parametrize("case_name", ["seq-linear", "conv2d", "conv2d-reflect", "tokens", "groups"])
def test_kronecker_projection_equals_dense_projection_of_torch_func_grads(
    case_name: str, distribution: str
) -> None:
    case = BY_NAME[case_name]
    torch.manual_seed(0)
    model = case.build()
    batch = case.batch(6, torch.Generator().manual_seed(1))
    ref = param_grads(model, batch)
    kron = 0
    for i, (name, g) in enumerate(layer_grads(model, batch)):
        proj = LayerProjector(12, seed=7, index=i, distribution=distribution)
        got = g.project(proj)
        if isinstance(g, VectorGrads):  # norm layers: explicit vectors, projected densely
            flat = torch.cat([ref[k].flatten(1) for k in (f"{name}.weight", f"{name}.bias") if k in ref], 1)
            dense = proj.dense(flat.shape[1])
            want = flat if dense is None else flat @ dense
            assert rel_err(got, want) <= 1e-5, name
            continue
        w = ref[f"{name}.weight"]
        full = w.reshape(w.shape[0], w.shape[1], -1)  # [n, d_out, d_in]
        if f"{name}.bias" in ref:
            full = torch.cat([full, ref[f"{name}.bias"][:, :, None]], 2)
        d_out, d_in = full.shape[1:]
        kron += proj.kron(d_out, d_in) is not None
        want = full.flatten(1) @ projection_matrix(proj, d_out, d_in)
        assert got.shape == want.shape == (6, 12) and got.dtype == torch.float32
        assert rel_err(got, want) <= 1e-5, name
    assert kron >= 1  # the Kronecker form is exercised


@pytest.mark.parametrize("case_name", ["seq-linear", "mlp", "conv2d", "conv2d-reflect", "tokens", "groups"])
def test_one_examples_whole_gradient_projects_as_its_factored_rows(case_name: str) -> None:
    """``Kernel.project_gradient`` (serving's one-query path, from one torch.func gradient) equals
    ``LayerGrads.project`` of the same row in a hooked pass, layer by layer."""
    case = BY_NAME[case_name]
    torch.manual_seed(0)
    model = case.build()
    batch = case.batch(3, torch.Generator().manual_seed(2))
    ref = param_grads(model, batch)
    scored = {s.name: s for s in scored_modules(model)}
    for i, (name, g) in enumerate(layer_grads(model, batch)):
        proj = LayerProjector(12, seed=3, index=i)
        module = scored[name].module
        for row in range(3):
            whole = [ref[f"{name}.{k}"][row] for k, _ in module.named_parameters(recurse=False)]
            got = scored[name].kernel.project_gradient(module, whole, proj)
            assert rel_err(got, g.project(proj)[row]) <= 1e-5, (name, row)


def _trained_tokens(n_queries: int):
    """A token model trained on 12 rows against `n_queries` targets, and its TRAK features (k=40)."""
    case = BY_NAME["tokens"]
    torch.manual_seed(0)
    train = case.batch(12, torch.Generator().manual_seed(3))
    queries = case.batch(n_queries, torch.Generator().manual_seed(4))
    config = TrainConfig(epochs=2, batch_size=4, n_checkpoints=2)
    task = ModelTask("tokens", lambda seed: case.build(), config)
    result = train_model(task, train, [f"e{i}" for i in range(12)], queries, seed=0)
    return queries, result, model_features(task, result.checkpoints, train, k=40, seed=0)


def test_one_query_features_equal_the_batched_ones() -> None:
    queries, _, feats = _trained_tokens(3)
    batched = feats.query_features(queries)
    for row in range(3):
        one = feats.query_features({k: v[row : row + 1] for k, v in queries.items()})
        for a, b in zip(one, batched, strict=True):
            np.testing.assert_allclose(a[0], b[row], rtol=1e-4, atol=1e-7)


def test_trak_value_replaces_the_in_run_scores() -> None:
    targets, result, feats = _trained_tokens(5)
    valued = valued_by_trak(result, feats, targets)
    assert valued.method == TRAK_VALUE_METHOD and valued.features is feats and valued.per_target is None
    np.testing.assert_array_equal(valued.scores, feats.value_scores(targets))  # deterministic
    table = valued.example_attribution
    assert set(table["method"].to_pylist()) == {TRAK_VALUE_METHOD} and table.num_rows == 12
    assert not np.allclose(valued.scores, result.scores)  # the in-run scores are replaced, not kept


@pytest.mark.parametrize("case_name", ["seq-linear", "conv2d"])
def test_a_run_paid_by_trak_value_trains_plainly_and_values_its_checkpoints(case_name: str) -> None:
    """``train_trak_valued`` trains exactly as plain training does (the same model, bit for bit), keeps
    the checkpoints an attributed run keeps, and scores by TRAK value at them; inputs ``train_model``
    refuses it refuses alike. Its kernel is its config's (here the Fisher; ``TrainConfig``'s default is the
    gradients')."""
    case = BY_NAME[case_name]
    task = _task(case, epochs=3, batch_size=8, n_checkpoints=2, lr=0.05, trak_kernel="fisher")
    gen = torch.Generator().manual_seed(5)
    train, targets = case.batch(20, gen), case.batch(4, gen)
    ids = [f"e{i}" for i in range(20)]
    run = train_trak_valued(task, train, ids, targets, seed=3)
    plain = train_model_plain(task, train, seed=3)
    for a, b in zip(run.model.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    attributed = train_model(task, train, ids, targets, seed=3)
    assert len(run.checkpoints) == len(attributed.checkpoints) == 2
    assert run.method == TRAK_VALUE_METHOD and run.per_target is None and run.timings["train_s"] > 0
    valued = model_features(task, run.checkpoints, train, seed=3, kernel="fisher").value_scores(targets)
    np.testing.assert_array_equal(run.scores, valued)
    for a, b in zip(run.checkpoints[-1].values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the last checkpoint is the trained model
    with pytest.raises(InputError, match="targets must be held out"):
        train_trak_valued(task, train, ids, {k: v[:2] for k, v in train.items()}, seed=3)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_projection_keeps_inner_products_unbiased(distribution: str) -> None:
    """``E[(Pᵀx)·(Pᵀy)] = x·y`` for the Kronecker form cut to ``k`` columns (``k = 50``: 8 x 7 products,
    6 dropped) and for the dense one, over 400 seeds."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 30 * 20, generator=gen)
    y = y + x  # correlated, so the mean is far from 0
    for shape in ((30, 20), (3, 200)):  # both sides projected; a thin layer, projected densely
        got = []
        for seed in range(400):
            p = projection_matrix(LayerProjector(50, seed, 0, distribution), *shape)
            assert p.shape == (600, 50)
            got.append(float((x @ p) @ (y @ p)))
        sd = float(np.std(got)) / np.sqrt(len(got))
        assert abs(np.mean(got) - float(x @ y)) < 4 * sd, shape
    assert LayerProjector(50, 0, 0).kron(30, 20) is not None and LayerProjector(50, 0, 0).kron(3, 200) is None


def test_explicit_vector_layers_project_densely_and_others_name_themselves() -> None:
    gen = torch.Generator().manual_seed(0)
    w, b = nn.Parameter(torch.zeros(5)), nn.Parameter(torch.zeros(5))
    v = torch.randn(4, 10, generator=gen)
    g = VectorGrads(v, (w, b))
    proj = LayerProjector(6, seed=3, index=2)
    assert torch.equal(g.project(proj), v @ proj.dense(10))
    assert torch.equal(g.project(LayerProjector(10, seed=3, index=2, exact=True)), v)  # kept exactly
    other = VectorGrads(torch.randn(3, 10, generator=gen), (w, b))
    torch.testing.assert_close(g.gram(other), v @ other.v.T)
    torch.testing.assert_close(torch.cat(g.summed()), v.sum(0))
    u = [torch.randn(5, generator=gen), torch.randn(5, generator=gen)]
    torch.testing.assert_close(g.dot(u), v @ torch.cat(u))

    class Opaque(LayerGrads):
        params = ()
        __len__ = rows = summed = dot = gram = lambda *a: None

    with pytest.raises(NotImplementedError, match="Opaque has no projection"):
        Opaque().project(proj)


def test_each_layer_has_columns_of_its_own_kept_exactly_or_projected_to_k() -> None:
    exact = layer_projectors([49, 49, 24], 49, seed=0)
    assert [(p.k, p.offset, p.exact) for p in exact] == [(49, 0, True), (49, 49, True), (24, 98, True)]
    mixed = layer_projectors([1000, 10, 30], 20, seed=0, checkpoint=2)
    assert [(p.k, p.offset, p.exact, p.checkpoint) for p in mixed] == [
        (20, 0, False, 2), (10, 20, True, 2), (20, 30, False, 2)
    ]
    assert mixed[1].dense(10) is None  # kept as it is
    assert mixed[0].dense(1000).shape == (1000, 20)
    other = layer_projectors([1000, 10, 30], 20, seed=0, checkpoint=1)[0]
    assert not torch.equal(mixed[0].dense(1000), other.dense(1000))  # new matrices at each checkpoint


def _task(case: Case, **cfg) -> ModelTask:
    config = TrainConfig(**{"chunk_rows": 7, "trak_model_damping": 0.1, **cfg})
    return ModelTask(case.name, lambda seed: case.build(), config)


def _states(task: ModelTask, seeds=(0, 1)) -> list[dict[str, torch.Tensor]]:
    return [task.fresh(s).state_dict() for s in seeds]


def by_layer(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each scored layer's ``[n, P_l]`` per-example gradients (torch.func), its parameters in order."""
    ref = param_grads(model, batch)
    return [
        torch.cat([ref[f"{s.name}.{k}"].flatten(1) for k, _ in s.module.named_parameters(recurse=False)], 1)
        for s in scored_modules(model)
    ]


def sgd_ridge(cfg: TrainConfig, n: int, epochs: int | None = None) -> float:
    """An SGD run's own ridge: weight decay's, and where ``epochs`` are given (the MLP's) early stopping's,
    n over the summed rates of the steps of those epochs (``lr_at``, step by step); 0 under AdamW."""
    if cfg.optimizer != "sgd":
        return 0.0
    per_epoch = -(-n // cfg.batch_size)
    total = cfg.epochs * per_epoch
    stop = 0.0 if epochs is None else n / sum(cfg.lr_at(t, total) for t in range(epochs * per_epoch))
    return n * cfg.weight_decay + stop


def exact_scores(task: ModelTask, states, train, queries) -> np.ndarray:
    """``Σ_l G_l (G_lᵀG_l + λ_l I)⁻¹ G_lqᵀ`` from full per-example gradients of each layer ``l``, averaged
    over checkpoints; ``λ_l`` the SGD ridge (``sgd_ridge``) plus ``trak_model_damping`` times the mean
    nonzero eigenvalue of the layer's block (rank ``min(P_l, n)``)."""
    cfg, n = task.config, len(train["labels"])
    total = 0.0
    for state in states:
        model = task.fresh(0)
        model.load_state_dict(state)
        for g, gq in zip(by_layer(model, train), by_layer(model, queries), strict=True):
            g, gq = g.double(), gq.double()
            gram = g.T @ g
            ridge = sgd_ridge(cfg, n) + cfg.trak_model_damping * float(gram.trace()) / min(len(gram), n)
            eye = torch.eye(len(gram), dtype=torch.float64)
            total = total + g @ torch.linalg.solve(gram + ridge * eye, gq.T)
    return (total / len(states)).numpy()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("case_name", ["seq-linear", "conv2d", "tokens", "groups"])
def test_scores_with_k_above_parameter_count_equal_the_exact_kernel_form(
    case_name: str, weight_decay: float
) -> None:
    case = BY_NAME[case_name]
    task = _task(case, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(2)
    train, queries = case.batch(30, gen), case.batch(5, gen)
    states = _states(task)
    n_params = sum(p.numel() for p in task.fresh(0).parameters())
    feats = model_features(task, states, train, k=n_params, seed=0)
    assert feats.dim == n_params  # every layer kept exactly
    got = feats.scores(queries)
    assert got.shape == (30, 5)
    assert rel_err(got, exact_scores(task, states, train, queries)) <= 1e-3


def fisher_kernel(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i``, ``J_i`` the Jacobian of row i's logits in the parameters
    (torch.func), ``p_i`` its softmax: the cross-entropy's Gauss-Newton matrix, formed without the
    per-class gradients that ``fisher_gram`` sums."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def logits(p: dict, row: dict) -> torch.Tensor:
        return functional_call(model, p, (), {k: v.unsqueeze(0) for k, v in row.items()}).squeeze(0)

    per_param = vmap(jacrev(logits), in_dims=(None, 0))(params, inputs)
    jac = torch.cat([j.flatten(2) for j in per_param.values()], 2)
    with torch.no_grad():
        p = torch.softmax(model(**inputs).double(), dim=-1)
    curvature = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", jac.double(), curvature, jac.double())


def exact_value(task: ModelTask, states, train, targets, epochs: int | None = None,
                kernel: str = "empirical") -> np.ndarray:
    """``G (K + λI)⁻¹ mean(G_q)`` over all parameters at once (one kernel ``K``, ``GᵀG`` or the Fisher,
    ``λ`` from its mean nonzero eigenvalue, and the MLP's ``epochs`` trained), averaged over checkpoints:
    TRAK value as pay takes it."""
    cfg, n = task.config, len(train["labels"])
    total = 0.0
    for state in states:
        model = task.fresh(0)
        model.load_state_dict(state)
        g, gq = flat_grads(model, train).double(), flat_grads(model, targets).double()
        gram = g.T @ g if kernel == "empirical" else fisher_kernel(model, train)
        ridge = sgd_ridge(cfg, n, epochs) + cfg.trak_model_damping * float(gram.trace()) / min(len(gram), n)
        total = total + g @ torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=torch.float64),
                                               gq.mean(0))
    return (total / len(states)).numpy()


@pytest.mark.parametrize("kernel", ["empirical", "fisher"])
@pytest.mark.parametrize("case_name", ["seq-linear", "conv2d", "groups"])
def test_trak_value_with_every_layer_kept_equals_the_one_kernel_form(case_name: str, kernel: str) -> None:
    case = BY_NAME[case_name]
    task = _task(case, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(7)
    train, targets = case.batch(30, gen), case.batch(6, gen)
    states = _states(task)
    n_params = sum(p.numel() for p in task.fresh(0).parameters())
    feats = model_features(task, states, train, k=n_params, seed=0, kernel=kernel)
    want = exact_value(task, states, train, targets, kernel=kernel)
    assert rel_err(feats.value_scores(targets), want) <= 1e-3
    blocks = feats.scores(targets).mean(1)  # per-layer kernels: another quantity (why: valued_by_trak)
    assert rel_err(blocks, want) > 1e-2
    if kernel == "fisher":  # the kernel is the Fisher, and each layer's block its own diagonal block
        model = task.fresh(0)
        model.load_state_dict(states[-1])
        fisher, ck = fisher_kernel(model, train), feats.checkpoints[-1]
        spectrum = torch.linalg.eigvalsh  # the features order a layer's columns their own way
        assert rel_err(spectrum(ck.gram), spectrum(fisher)) <= 1e-4
        names = [n for n, q in model.named_parameters() if q.requires_grad]
        sizes = [q.numel() for q in model.parameters() if q.requires_grad]
        start = dict(zip(names, np.cumsum([0, *sizes]).tolist(), strict=False))
        for layer, block in zip(scored_modules(model), ck.kernel_inv.blocks, strict=True):
            cols = torch.cat([torch.arange(start[f"{layer.name}.{k}"], start[f"{layer.name}.{k}"] + q.numel())
                              for k, q in layer.module.named_parameters(recurse=False)])
            part = fisher[cols][:, cols]
            ridge = sgd_ridge(task.config, 30) + task.config.trak_model_damping * float(part.trace()) / min(
                len(cols), 30)
            want = torch.linalg.inv(part + ridge * torch.eye(len(cols), dtype=torch.float64))
            assert rel_err(spectrum(torch.as_tensor(block)), spectrum(want)) <= 1e-3


def test_the_fisher_of_many_classes_drawn_from_the_model_averages_to_the_exact_one() -> None:
    """24 classes: each draw's Gram is an estimate, and their mean comes near the torch.func Fisher; a run
    draws by its seed."""
    spec = ModelSpec((5, 6, 24))
    task = mlp_task(spec, TrainConfig(chunk_rows=16))
    gen = torch.Generator().manual_seed(2)
    train = {"features": torch.randn(40, 5, generator=gen),
             "labels": torch.randint(0, 24, (40,), generator=gen)}
    model, scored = frozen_task_model(task, task.fresh(3).state_dict())
    sizes = [sum(q.numel() for q in s.module.parameters(recurse=False)) for s in scored]
    projectors = layer_projectors(sizes, max(sizes), seed=0)  # every layer kept exactly
    grams = [fisher_gram(task, model, scored, projectors, train, task.config, seed=r, checkpoint=0)
             for r in range(30)]
    spectrum, want = torch.linalg.eigvalsh, torch.linalg.eigvalsh(fisher_kernel(task.fresh(3), train))
    one, mean = rel_err(spectrum(grams[0]), want), rel_err(spectrum(torch.stack(grams).mean(0)), want)
    assert mean < 0.04 and mean < one / 3, (one, mean)  # one draw 0.102 off, the mean of 30: 0.028
    state = task.fresh(3).state_dict()  # a run's draws follow its seed: the same bytes again, for replay
    first, again, other = (model_features(task, [state], train, seed=s, kernel="fisher").checkpoints[0].gram
                           for s in (5, 5, 6))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_queries_without_labels_are_scored_at_the_predicted_class() -> None:
    case = BY_NAME["seq-linear"]
    task = _task(case)
    gen = torch.Generator().manual_seed(3)
    train, queries = case.batch(20, gen), case.batch(4, gen)
    feats = model_features(task, _states(task), train, k=64, seed=1)
    unlabelled = {k: v for k, v in queries.items() if k != "labels"}
    with torch.no_grad():
        predicted = feats.checkpoints[-1].model(**unlabelled).argmax(1)
    np.testing.assert_array_equal(feats.scores(unlabelled), feats.scores({**unlabelled, "labels": predicted}))


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
def test_features_are_deterministic_and_spill_to_disk(tmp_path, projection: str) -> None:
    case = BY_NAME["conv2d"]
    gen = torch.Generator().manual_seed(4)
    train, queries = case.batch(25, gen), case.batch(3, gen)
    task = _task(case)
    states = _states(task)
    one = model_features(task, states, train, k=40, seed=5, projection=projection)
    two = model_features(task, states, train, k=40, seed=5, projection=projection)
    other = model_features(task, states, train, k=40, seed=6, projection=projection)
    assert one.dim == sum(p.k for p in one.checkpoints[0].projectors)
    assert all(p.k <= 40 for p in one.checkpoints[0].projectors)
    for j in range(len(states)):
        assert one.features(j).dtype == np.float32 and one.features(j).shape == (25, one.dim)
        assert one.features(j).tobytes() == two.features(j).tobytes()
        assert not np.array_equal(one.features(j), other.features(j))
    spilled = model_features(_task(case, spill_bytes=0), states, train, k=40, seed=5, projection=projection,
                             directory=str(tmp_path))
    assert spilled.checkpoints[0].store.spilled == 4  # 25 rows in chunks of 7
    assert any(tmp_path.rglob("*.npy"))
    assert spilled.features(1).tobytes() == one.features(1).tobytes()
    np.testing.assert_array_equal(spilled.scores(queries), one.scores(queries))


def test_features_of_a_trained_model_and_one_query() -> None:
    """The TrainResult's checkpoints in, one image query out (timing printed, not asserted)."""
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.1, n_checkpoints=2, chunk_rows=16)
    task = ModelTask("conv", lambda seed: ConvNet(), cfg)
    gen = torch.Generator().manual_seed(5)
    make = image_batch(2, 7, 6, 3)
    train, targets, query = make(24, gen), make(3, gen), make(1, gen)
    result = train_model(task, train, [f"ex{i}" for i in range(24)], targets, seed=0)
    assert len(result.checkpoints) == 2
    feats = model_features(task, result.checkpoints, train, k=128, seed=0)
    feats.scores(query)  # warm
    t0 = time.perf_counter()
    s = feats.scores(query)
    ms = 1e3 * (time.perf_counter() - t0)
    print(f"one image query over {feats.n_train} rows, 2 checkpoints: {ms:.2f} ms")
    assert s.shape == (24, 1) and np.isfinite(s).all()
    self_inf = feats.self_influence()
    assert self_inf.shape == (24,) and (self_inf > 0).all()


def test_tied_weights_are_refused() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.tanh(self.a(x)))

    task = ModelTask("tied", lambda seed: Tied())
    batch = {"x": torch.randn(3, 4), "labels": torch.tensor([0, 1, 2])}
    with pytest.raises(UnsupportedModelError, match="tied weights"):
        model_features(task, [task.fresh(0).state_dict()], batch, k=8, seed=0)


def test_model_features_are_the_dense_kronecker_projection_of_torch_func_grads() -> None:
    """A wider padded-sequence model, really projected: features are the dense Kronecker projection of
    the flattened torch.func gradients, each layer in its own columns, in the model's parameter order."""
    build = lambda: SeqLinear(d=9, h=11, c=4)  # noqa: E731
    task = ModelTask("seq", lambda seed: build(), TrainConfig(chunk_rows=5))
    train = seq_batch(9, 6, 4)(12, torch.Generator().manual_seed(6))
    states = _states(task, (0, 1))
    feats = model_features(task, states, train, k=90, seed=2)
    assert [p.exact for p in feats.checkpoints[0].projectors] == [False, False, True]  # 110, 121, 48 params
    for j, state in enumerate(states):
        model = task.fresh(0)
        model.load_state_dict(state)
        ref = param_grads(model, train)
        want = []
        for s, proj in zip(scored_modules(model), feats.checkpoints[j].projectors, strict=True):
            w = ref[f"{s.name}.weight"]
            full = torch.cat([w, ref[f"{s.name}.bias"][:, :, None]], 2) if f"{s.name}.bias" in ref else w
            want.append(full.flatten(1) @ projection_matrix(proj, *full.shape[1:]))
        want = torch.cat(want, 1)
        assert rel_err(feats.features(j), want) <= 1e-5


def test_block_inverse_multiplies_as_its_dense_matrix() -> None:
    """Both sides, vectors and matrices, and an ``ndarray @`` on the left (numpy defers to it)."""
    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(s, s)) for s in (3, 1, 4)]
    inv = BlockInverse(blocks, [0, 3, 4])
    dense = inv.dense()
    assert inv.shape == (8, 8) and np.count_nonzero(dense) == 9 + 1 + 16
    v, m, rows = rng.normal(size=8), rng.normal(size=(8, 2)), rng.normal(size=(5, 8))
    np.testing.assert_allclose(inv @ v, dense @ v, rtol=1e-12)
    np.testing.assert_allclose(inv @ m, dense @ m, rtol=1e-12)
    np.testing.assert_allclose(rows @ inv, rows @ dense, rtol=1e-12)


@pytest.mark.parametrize("kernel", ["fisher", "empirical"])  # the config's trak_kernel (the MLP's: fisher)
def test_an_mlp_run_valued_by_trak_equals_the_one_kernel_form_and_keeps_its_serving_features(
    kernel: str,
) -> None:
    rng = np.random.default_rng(3)
    x, xv = rng.normal(size=(40, 5)), rng.normal(size=(7, 5))
    w = rng.normal(size=(5, 3))
    y, yv = (x @ w).argmax(1), (xv @ w).argmax(1)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.1, n_checkpoints=2, weight_decay=1e-2, trak_k=64,
                      trak_kernel=kernel)
    task = AttributionTask(ModelSpec((5, 6, 3)), cfg)  # layers of 36 and 21 parameters: kept exactly
    result = train_with_attribution(task, x, y, [f"e{i}" for i in range(40)], xv, yv, seed=0)
    valued = mlp_valued_by_trak(result, x, y, xv, yv, seed=0)
    assert valued.method == TRAK_VALUE_METHOD and valued.features is result.features
    batch = {"features": torch.as_tensor(x, dtype=torch.float32), "labels": torch.as_tensor(y)}
    targets = {"features": torch.as_tensor(xv, dtype=torch.float32), "labels": torch.as_tensor(yv)}
    want = exact_value(mlp_task(task.spec, cfg), result.checkpoints, batch, targets, result.epochs, kernel)
    assert rel_err(valued.scores, want) <= 1e-3
    other = exact_value(mlp_task(task.spec, cfg), result.checkpoints, batch, targets, result.epochs,
                        {"fisher": "empirical", "empirical": "fisher"}[kernel])
    assert rel_err(valued.scores, other) > 1e-2  # the two kernels are told apart


@pytest.mark.parametrize("optimizer,weight_decay,epochs", [("sgd", 1e-2, None), ("sgd", 1e-2, 7),
                                                         ("adamw", 0.0, 7)])
def test_pay_kernel_solved_by_conjugate_gradients_past_the_memory_cap_equals_the_direct_solve(
    optimizer: str, weight_decay: float, epochs: int | None
) -> None:
    """Rows with structure (a low-rank part, columns of very different scales), in chunks, one on disk."""
    rng = np.random.default_rng(5)
    n, width = 90, 60
    phi = (rng.normal(size=(n, 4)) @ rng.normal(size=(4, width)) + 0.1 * rng.normal(size=(n, width)))
    phi *= np.logspace(-2, 1, width)
    store = FeatureStore(spill_bytes=phi[:40].astype(np.float32).nbytes)
    for rows in (slice(0, 40), slice(40, 75), slice(75, n)):
        store.append(phi[rows])
    cfg = TrainConfig(optimizer=optimizer, weight_decay=weight_decay)
    v = rng.normal(size=width)
    direct = whole_kernel_solve(store, v, n, cfg, epochs=epochs)
    cg = whole_kernel_solve(store, v, n, cfg, epochs=epochs, max_bytes=width * width * 8 - 1)
    phi32 = phi.astype(np.float32).astype(np.float64)  # the stored bytes
    lam = sgd_ridge(cfg, n, epochs) + cfg.trak_model_damping * float((phi32**2).sum()) / min(width, n)
    want = np.linalg.solve(phi32.T @ phi32 + lam * np.eye(width), v)
    assert store.spilled == 2
    assert rel_err(cg, want) <= 1e-8  # float64 products throughout
    assert rel_err(direct, want) <= 1e-5  # the kernel's products in float32, widened
