"""TRAK features, exact influence and query-time attribution against independent references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch.func import functional_call

from attribution import (
    AttributionTask,
    ModelSpec,
    TrainConfig,
    UnsupportedModelError,
    train_plain,
    train_with_attribution,
)
from attribution.influence import ExactInfluence, hessian, per_example_grads
from attribution.trak import FeatureStore, attribute_query, stopping_ridge

from .conftest import blobs


def _logreg(k=64, **cfg):
    """The Fisher kernel (the MLP recipe's): for logistic regression it is the Hessian, so TRAK meets exact
    influence."""
    return AttributionTask(ModelSpec((5, 3)), TrainConfig(epochs=20, batch_size=30, lr=0.3, weight_decay=1e-2,
                                                          n_checkpoints=1, trak_k=k, trak_kernel="fisher",
                                                          **cfg))


def test_exact_hessian_matches_autograd(data):
    x, y, ids, xv, yv = data
    model = ModelSpec((5, 3)).build(0)
    names = [n for n, _ in model.named_parameters()]

    def loss(w, b):
        out = functional_call(model, {names[0]: w, names[1]: b}, (torch.as_tensor(x).double(),))
        return F.cross_entropy(out, torch.as_tensor(y)) + 0.01 / 2 * (w.pow(2).sum() + b.pow(2).sum())

    w, b = (p.detach().double() for p in model.parameters())
    hw = torch.autograd.functional.hessian(loss, (w, b))
    # reorder autograd's blocks to [W | b] row by row
    theta = lambda m: torch.cat([m[0].reshape(3, 5), m[1].reshape(3, 1)], 1).reshape(-1)  # noqa: E731
    rows = []
    for i in range(3):
        for a in range(6):
            blk = (hw[0][0][i, a], hw[0][1][i, a]) if a < 5 else (hw[1][0][i], hw[1][1][i])
            rows.append(theta(blk))
    np.testing.assert_allclose(hessian(model, x, 0.01), torch.stack(rows).numpy(), atol=1e-10)
    g = per_example_grads(model, x[:4], y[:4])

    def one(w, b, xi, yi):
        return F.cross_entropy(functional_call(model, {names[0]: w, names[1]: b}, (xi[None],)), yi[None])

    per_ex = torch.func.vmap(torch.func.grad(one, argnums=(0, 1)), in_dims=(None, None, 0, 0))
    ref = per_ex(w, b, torch.as_tensor(x[:4]).double(), torch.as_tensor(y[:4]))
    flat = torch.cat([ref[0], ref[1][:, :, None]], 2).reshape(4, -1)
    np.testing.assert_allclose(g, flat.numpy(), atol=1e-12)


def test_trak_with_full_rank_features_equals_exact_influence(data):
    """Logistic regression with k above the parameter count: the Fisher kernel is the Hessian, and early
    stopping's ridge (``stopping_ridge``: n/τ on the summed kernel) a weight decay of 1/τ."""
    x, y, ids, xv, yv = data
    task = _logreg(k=64, trak_damping=1e-9)  # 18 params: kept exactly
    res = train_with_attribution(task, x, y, ids, xv, yv, seed=0)
    decay = task.config.weight_decay + stopping_ridge(len(x), task.config) / len(x)
    exact = ExactInfluence.fit(res.model, x, y, decay)
    trak = res.features.scores(xv, yv)
    ref = exact.scores(xv, yv)
    np.testing.assert_allclose(trak, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_projected_trak_tracks_exact_influence_and_query_is_one_column(data):
    (x, y), (xv, yv) = blobs(300, 12, 4, seed=3), blobs(20, 12, 4, seed=4)
    ids = [str(i) for i in range(len(x))]
    task = AttributionTask(ModelSpec((12, 4)), dataclasses.replace(_logreg().config, trak_k=48))
    res = train_with_attribution(task, x, y, ids, xv, yv, seed=1)
    decay = task.config.weight_decay + stopping_ridge(len(x), task.config) / len(x)  # as the kernel is damped
    exact = ExactInfluence.fit(res.model, x, y, decay).scores(xv, yv)
    trak = res.features.scores(xv, yv)
    rho = np.mean([spearmanr(trak[:, j], exact[:, j])[0] for j in range(len(xv))])
    assert rho > 0.7
    pred = int(res.model(torch.as_tensor(xv[:1])).argmax())
    one = attribute_query(res.features, xv[0])
    np.testing.assert_allclose(one, res.features.scores(xv[:1], [pred])[:, 0])


def test_self_influence_finds_flipped_labels():
    x, y = blobs(300, 6, 3, seed=5)
    rng = np.random.default_rng(0)
    flip = rng.random(len(y)) < 0.1
    y_noisy = np.where(flip, (y + rng.integers(1, 3, len(y))) % 3, y)
    xv, yv = blobs(10, 6, 3, seed=6)
    task = AttributionTask(ModelSpec((6, 3)), _logreg().config)
    res = train_with_attribution(task, x, y_noisy, [str(i) for i in range(300)], xv, yv, seed=0)
    exact = ExactInfluence.fit(res.model, x, y_noisy, task.config.weight_decay)
    assert roc_auc_score(flip, exact.self_influence()) > 0.8
    assert roc_auc_score(flip, res.features.self_influence()) > 0.8


def test_features_spill_to_disk_and_give_the_same_scores(data, mlp_task, tmp_path):
    x, y, ids, xv, yv = data
    res = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=0)
    small = dataclasses.replace(mlp_task, config=dataclasses.replace(mlp_task.config, spill_bytes=4096,
                                                                     chunk_rows=16))
    spilled = train_with_attribution(small, x, y, ids, xv, yv, seed=0, feature_dir=str(tmp_path))
    assert all(ck.store.spilled >= len(ck.store.chunks) - 1 for ck in spilled.features.checkpoints)
    assert list(tmp_path.rglob("*.npy"))
    ref = res.features.scores(xv, yv)
    np.testing.assert_allclose(spilled.features.scores(xv, yv), ref, atol=1e-4 * np.abs(ref).max())


def test_feature_store_matvec_across_chunks(tmp_path):
    store = FeatureStore(spill_bytes=100, directory=tmp_path)
    a = np.arange(60, dtype=np.float32).reshape(12, 5)
    for i in range(0, 12, 4):
        store.append(a[i : i + 4])
    u = np.ones(5, dtype=np.float32)
    np.testing.assert_array_equal(store.matvec(u), a @ u)
    assert store.spilled == 2


def test_exact_influence_refuses_an_mlp(mlp_task):
    with pytest.raises(UnsupportedModelError, match="logistic regression"):
        ExactInfluence.fit(mlp_task.spec.build(0), np.zeros((3, 5)), np.zeros(3, dtype=int), 0.0)


def test_one_prediction_fee_split(data, mlp_task):
    import pyarrow as pa

    from attribution import ContributorError, ContributorSplit, WeightPolicy

    x, y, ids, xv, yv = data
    res = train_with_attribution(mlp_task, x, y, ids, xv, yv, seed=0)
    providers = [f"p{i % 4}" for i in range(len(ids))]
    contributions = attribute_query(res.features, xv[3])
    for negative, credit in (("clip", np.maximum(contributions, 0)), ("net", contributions)):
        split = ContributorSplit.build(
            pa.table({"example_id": ids, "provider": providers}),
            None,
            None,
            {f"p{i}": "0x" + f"{i + 1:040x}" for i in range(4)},
            WeightPolicy(negative=negative),
        )
        sums = [credit[i::4].sum() for i in range(4)]
        if max(sums) <= 0:  # under net nobody helped this prediction: the run's weights apply instead
            with pytest.raises(ContributorError):
                split.split_query(ids, contributions)
            continue
        fee = split.split_query(ids, contributions)
        assert sum(fee["weight_bps"].to_pylist()) == 10_000
        best = max(range(4), key=lambda i: sums[i])
        assert fee.sort_by([("weight_bps", "descending")])["contributor"][0].as_py() == f"p{best}"


@pytest.mark.parametrize("schedule", ["constant", "linear"])
@pytest.mark.parametrize("epochs", [None, 3])
def test_the_stopping_ridge_is_n_over_the_summed_rates_of_the_steps_taken(schedule, epochs) -> None:
    """τ in closed form (an arithmetic series for the linear schedule, whose rate at step t of T is
    lr (1 - t/T)), over the planned steps or those of a run that stopped after 3 epochs; AdamW's kernel
    takes none."""
    cfg = TrainConfig(epochs=7, batch_size=32, lr=0.2, lr_schedule=schedule)
    n, per_epoch = 100, 4
    total, steps = cfg.epochs * per_epoch, (epochs or cfg.epochs) * per_epoch
    tau = cfg.lr * steps - (cfg.lr * steps * (steps - 1) / (2 * total) if schedule == "linear" else 0.0)
    assert stopping_ridge(n, cfg, epochs) == pytest.approx(n / tau, rel=1e-12)
    assert stopping_ridge(n, dataclasses.replace(cfg, optimizer="adamw"), epochs) == 0.0


def test_the_stopping_ridge_follows_the_trainers_own_schedule(monkeypatch) -> None:
    """τ is read from ``TrainConfig.lr_at``, the rates the trainer sets, not restated: a schedule
    changed there changes the ridge."""
    cfg = TrainConfig(epochs=5, batch_size=10, lr=0.1)
    monkeypatch.setattr(TrainConfig, "lr_at", lambda self, step, total: 0.01 * (step + 1))
    steps = 5 * 4
    assert stopping_ridge(40, cfg) == pytest.approx(40 / (0.01 * steps * (steps + 1) / 2), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_damped_for_its_early_stop_the_mlps_trak_tracks_retraining_better(seed, monkeypatch) -> None:
    """LDS of the MLP's TRAK against retraining on 24 random halves of overlapping classes: with the
    stopping ridge it ranks the halves far better than damped as for a model at its optimum (data seeds
    0-3: 0.85-0.92 against 0.34-0.43)."""
    import attribution.trak as trak

    rng = np.random.default_rng(seed)
    centres, labels = rng.normal(0, 0.6, (3, 8)), rng.integers(0, 3, 270)
    points = (centres[labels] + rng.normal(size=(270, 8))).astype(np.float32)
    x, y, xv, yv = points[:240], labels[:240], points[240:], labels[240:]
    task = AttributionTask(ModelSpec((8, 32, 3)), TrainConfig(epochs=10, batch_size=32, lr=0.1,
                                                               lr_schedule="linear", weight_decay=1e-3,
                                                               n_checkpoints=2, trak_k=256))
    masks = np.zeros((24, len(x)), dtype=bool)
    outs = np.zeros((24, len(xv)))
    for r in range(24):
        masks[r, rng.choice(len(x), len(x) // 2, replace=False)] = True
        model = train_plain(task, x[masks[r]], y[masks[r]], seed=seed)
        with torch.no_grad():
            outs[r] = F.log_softmax(model(torch.as_tensor(xv)), 1)[np.arange(len(xv)), yv].numpy()
    res = train_with_attribution(task, x, y, [str(i) for i in range(len(x))], xv, yv, seed=seed,
                                 with_features=False)

    def trak_lds() -> float:
        feats = trak.build_features(task, res.checkpoints, torch.as_tensor(x), torch.as_tensor(y), seed=seed,
                                    epochs=res.epochs)
        predicted = masks.astype(np.float64) @ feats.scores(xv, yv)
        return float(np.mean([spearmanr(predicted[:, j], outs[:, j])[0] for j in range(len(xv))]))

    damped = trak_lds()
    monkeypatch.setattr(trak, "stopping_ridge", lambda n, cfg, epochs=None: 0.0)
    undamped = trak_lds()
    assert damped > undamped + 0.2 and damped > 0.7, (damped, undamped)
