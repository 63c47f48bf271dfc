"""Provider value by leaving each provider out: groups, the retraining driver, and pay by it."""

from __future__ import annotations

from collections import deque
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attribution import (
    LEFT_OUT_SCHEMA,
    AttributionTask,
    ContributorError,
    InputError,
    ModelSpec,
    ModelTask,
    TrainConfig,
    WeightPolicy,
    contributor_weights,
    distinct_rows,
    left_out_values,
    mlp_left_out,
    model_left_out,
    provider_groups,
    train_plain,
    value_noise,
    values_within_noise,
)
from attribution.inrun import plain_model_steps
from attribution.left_out import shrunk_values
from attribution.trainer import plain_steps, row_keys

from .conftest import ADDR, credit_table, pay_tables


def test_groups_follow_the_credit_table_copies_count_for_their_first_registrant():
    ids = ["e0", "e1", "e2", "e3", "e4"]
    providers = ["c0", "c1", "c1", "c2", "c3"]
    # e1 copies e0 (c0 first): both paid to c0; e3 is shared by c2 and c3 (same registration time)
    credit = credit_table([("e0", "c0", 1.0), ("e1", "c0", 1.0), ("e2", "c1", 1.0), ("e3", "c2", 0.5),
                      ("e3", "c3", 0.5)])
    groups = provider_groups(ids, providers, credit)
    assert {p: np.flatnonzero(m).tolist() for p, m in groups.items()} == {
        "c0": [0, 1], "c1": [2], "c2": [3], "c3": [3, 4]}  # e4 is not in credit: its own provider's
    plain = provider_groups(ids, providers)
    assert {p: np.flatnonzero(m).tolist() for p, m in plain.items()} == {
        "c0": [0], "c1": [1, 2], "c2": [3], "c3": [4]}


def test_copies_beyond_a_groups_representative_count_only_where_they_hurt():
    ids = ["e0", "e1", "e2", "e3", "e4"]
    credit = credit_table([("e0", "c0", 0.5), ("e1", "c0", 0.5), ("e2", "c1", 1.0), ("e3", "c2", 1.0)])
    credit = credit.append_column("representative", pa.array(["e1", "e1", "e2", "e3"]))
    distinct = distinct_rows(ids, credit)
    assert distinct.tolist() == [False, True, True, True, True]  # e0 copies e1; e4 is not in credit
    assert distinct_rows(ids).all()
    with pytest.raises(ContributorError, match="representative"):
        distinct_rows(ids, credit.drop_columns(["representative"]))
    groups = {"c0": np.array([1, 1, 0, 0, 0], bool), "c1": np.array([0, 0, 1, 0, 0], bool)}
    for copy_effect in (-0.3, 0.2):  # the loss without the copy e0: lower (it hurt) or higher (it helped)
        kept = []

        def loss_without(keep, seed, relabeled, effect=copy_effect, kept=kept):
            kept.append(keep.tolist())
            return 1.0 + 0.5 * (not keep[1]) + 0.1 * (not keep[2]) + effect * (not keep[0])

        rows = {r["contributor"]: r for r in left_out_values(loss_without, groups, [0], distinct).to_pylist()}
        # the full run, c0 left out, c0's copy alone left out, c1 left out (no copies: no extra run)
        assert kept == [[True] * 5, [False, False, True, True, True], [False, True, True, True, True],
                        [True, True, False, True, True]]
        assert rows["c0"]["copies_value"] == pytest.approx(copy_effect)
        assert rows["c0"]["value"] == pytest.approx(0.5 + min(copy_effect, 0.0))
        assert rows["c0"]["examples_left_out"] == 2
        assert rows["c1"]["value"] == pytest.approx(0.1) and rows["c1"]["copies_value"] == 0.0
    with pytest.raises(InputError, match="distinct marks 4 rows"):
        left_out_values(lambda keep, s, relabeled: 1.0, groups, [0], np.ones(4, bool))


def test_the_driver_retrains_once_per_nonempty_group_and_values_the_loss_rise():
    calls = []

    def loss_without(keep, seed, relabeled):
        calls.append((keep.copy(), seed))
        # leaving row 0 out lowers the loss; seed 8 adds 0.2 to every loss, and 0.1 more without row 1
        return 1.0 + 0.1 * (~keep).sum() - 0.5 * (not keep[0]) + (seed == 8) * (0.2 + 0.1 * (not keep[1]))

    groups = {"b": np.array([False, True, True]), "a": np.array([True, False, False]),
              "empty": np.zeros(3, bool)}
    table = left_out_values(loss_without, groups, [7])
    assert table.schema == LEFT_OUT_SCHEMA
    rows = {r["contributor"]: r for r in table.to_pylist()}
    assert rows["a"]["value"] == pytest.approx(0.1 - 0.5) and rows["b"]["value"] == pytest.approx(0.2)
    assert rows["empty"] == {"contributor": "empty", "role": "provider", "examples_left_out": 0,
                             "loss_without": 1.0,
                             "loss_with": 1.0, "value": 0.0, "value_se": 0.0, "copies_value": 0.0,
                             "value_runs": [0.0]}
    assert len(calls) == 3 and calls[0][0].all()  # the full run, then a and b; the empty group trains nothing
    # over two seeds: the mean of each seed's difference
    rows = {r["contributor"]: r for r in left_out_values(loss_without, groups, [7, 8]).to_pylist()}
    assert rows["b"]["value"] == pytest.approx(0.2 + 0.1 / 2) and rows["b"]["loss_with"] == pytest.approx(1.1)
    assert rows["b"]["value_se"] == pytest.approx(np.std([0.2, 0.3], ddof=1) / np.sqrt(2))
    assert rows["b"]["value_runs"] == pytest.approx([0.2, 0.3])  # each seed's, in seed order
    assert [seed for _, seed in calls[3:]] == [7, 8, 7, 8, 7, 8]


def test_a_labeler_is_valued_by_retraining_on_the_labels_without_its_answers():
    """Each labeler row: the rows its absence relabels are retrained on their new labels, rows left with
    no answer (-1) are left out, and a labeler whose absence changes no label is not retrained (0)."""
    calls = []

    def loss_without(keep, seed, relabeled):
        calls.append((keep.tolist(), None if relabeled is None else relabeled.tolist()))
        return 1.0 + 0.2 * (relabeled is not None and relabeled[0] != 0) + 0.05 * (~keep).sum()

    groups = {"p": np.array([0, 0, 1], bool)}
    labels = np.array([0, 1, 1])
    labelers = {"flips": np.array([2, 1, 1]), "bare": np.array([0, -1, 1]), "same": labels.copy()}
    table = left_out_values(loss_without, groups, [3], labelers=labelers, labels=labels)
    rows = {(r["role"], r["contributor"]): r for r in table.to_pylist()}
    assert [(r["role"], r["contributor"]) for r in table.to_pylist()] == [
        ("provider", "p"), ("labeler", "bare"), ("labeler", "flips"), ("labeler", "same")]
    assert rows["labeler", "flips"]["value"] == pytest.approx(0.2)  # row 0 relabeled: the loss rose
    assert rows["labeler", "flips"]["examples_left_out"] == 1
    assert rows["labeler", "bare"]["value"] == pytest.approx(0.05)  # row 1 lost its only answer
    assert rows["labeler", "same"] == {**rows["labeler", "same"], "value": 0.0, "examples_left_out": 0,
                                       "loss_without": 1.0, "value_runs": [0.0]}
    assert calls == [([True] * 3, None), ([True, True, False], None), ([True, False, True], [0, -1, 1]),
                     ([True] * 3, [2, 1, 1])]  # "same" trains nothing
    with pytest.raises(InputError, match="labeler 'short'"):
        left_out_values(loss_without, groups, [3], labelers={"short": np.array([0, 1])}, labels=labels)


def test_an_mlp_labeler_value_is_a_plain_retrain_on_its_relabeling():
    x, y = _blobs(60, 2)
    xt, yt = _blobs(20, 3)
    task = AttributionTask(ModelSpec((4, 8, 3)), TrainConfig(epochs=3, batch_size=16, lr=0.1))
    relabeled = y.copy()
    relabeled[:10] = (y[:10] + 1) % 3
    relabeled[10:15] = -1  # left with no answer: not trained on
    table = mlp_left_out(task, x, y, xt, yt, {"p": np.zeros(60, bool)}, seed=4, runs=1,
                         labelers={"l": relabeled})
    row = table.filter(pa.compute.equal(table["role"], "labeler")).to_pylist()[0]

    def loss(model):
        with torch.no_grad():
            return float(F.cross_entropy(model(torch.as_tensor(xt)), torch.as_tensor(yt)))

    alone = loss(deque(plain_steps(task, x, relabeled, seed=4, keep=relabeled >= 0), maxlen=1)[0])
    assert row["contributor"] == "l" and row["examples_left_out"] == 15
    assert row["loss_without"] == alone and row["value"] == alone - loss(train_plain(task, x, y, seed=4))


def test_value_noise_pools_every_retrained_providers_seeds():
    def retrain(shift: float, bump: float) -> pa.Table:  # the same world, each seed's loss moved by rounding
        return left_out_values(lambda keep, s, _: 1.0 + 0.1 * (~keep).sum() + (s == 1) * shift * keep[0]
                               + (s == 2) * bump * (not keep[2]), groups, [1, 2])

    groups = {"a": np.array([1, 0, 0], bool), "b": np.array([0, 1, 1], bool), "none": np.zeros(3, bool)}
    # seed 1: the full run and b's move by 0.003, a's does not; seed 2: b's alone moves by 0.004
    diffs = {"a": [-0.003, 0.0], "b": [0.0, 0.004]}  # first minus second, per seed ("none": not retrained)
    noise, runs = value_noise(retrain(0.003, 0.004), retrain(0.0, 0.0))
    assert runs == 2 and noise == pytest.approx(np.sqrt(np.mean(np.square([*diffs["a"], *diffs["b"]]))))
    assert value_noise(retrain(0.0, 0.0), retrain(0.0, 0.0)) == (0.0, 2)
    untrained = left_out_values(lambda keep, s, relabeled: 1.0, {"none": np.zeros(2, bool)}, [1])
    assert value_noise(untrained, untrained) == (0.0, 1)  # no provider retrained: no noise to measure


def _blobs(n, seed):
    g = np.random.default_rng(seed)
    y = g.integers(0, 3, n)
    x = g.normal(size=(n, 4)) + np.eye(3, 4)[y] * 2.5
    return x.astype(np.float32), y


def test_mlp_values_are_the_retrained_target_loss_rise():
    x, y = _blobs(90, 0)
    xt, yt = _blobs(30, 1)
    task = AttributionTask(ModelSpec((4, 8, 3)), TrainConfig(epochs=3, batch_size=16, lr=0.1))
    groups = {"p": np.arange(90) < 30, "all": np.ones(90, bool)}
    table = mlp_left_out(task, x, y, xt, yt, groups, seed=5, runs=1)

    def loss(model):
        with torch.no_grad():
            return float(F.cross_entropy(model(torch.as_tensor(xt)), torch.as_tensor(yt)))

    def without_p(labels, s):  # trained on the rows p did not give, in the full run's order
        return loss(deque(plain_steps(task, x, labels, seed=s, keep=~groups["p"]), maxlen=1)[0])

    full = loss(train_plain(task, x, y, seed=5))
    rows = {r["contributor"]: r for r in table.to_pylist()}
    assert rows["p"]["loss_with"] == full
    assert rows["p"]["value"] == without_p(y, 5) - full
    assert rows["all"]["loss_without"] == loss(task.spec.build(5))  # nothing left: the untrained model
    assert mlp_left_out(task, x, y, xt, yt, groups, seed=5, runs=1).equals(table)  # deterministic
    two = {r["contributor"]: r for r in mlp_left_out(task, x, y, xt, yt, groups, seed=5, runs=2).to_pylist()}
    without = [without_p(y, s) for s in (5, 6)]
    with_all = [full, loss(train_plain(task, x, y, seed=6))]
    assert two["p"]["value"] == pytest.approx(np.mean(without) - np.mean(with_all))

    # leaving p out, the rest is labeled by `relabel` (the consensus of their answers alone)
    def relabel(keep):
        return (y[keep] + (~keep).any()) % 3  # labels move only when something is left out

    again = mlp_left_out(task, x, y, xt, yt, groups, seed=5, runs=1, relabel=relabel)
    again = {r["contributor"]: r for r in again.to_pylist()}
    assert again["p"]["loss_with"] == full
    assert again["p"]["loss_without"] == without_p(np.r_[y[:30], (y[30:] + 1) % 3], 5)


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, input_ids):
        return self.head(self.emb(input_ids).mean(1))


def test_a_model_task_is_valued_by_its_own_loss_on_the_targets():
    task = ModelTask("tokens", lambda s: _Tokens(), TrainConfig(epochs=2, batch_size=8, lr=0.05,
                                                                 optimizer="adamw"))
    g = torch.Generator().manual_seed(0)
    train = {"input_ids": torch.randint(0, 12, (40, 5), generator=g), "labels": torch.randint(0, 3, (40,),
                                                                                              generator=g)}
    targets = {"input_ids": torch.randint(0, 12, (10, 5), generator=g), "labels": torch.randint(0, 3, (10,),
                                                                                                generator=g)}
    groups = {"p": np.arange(40) % 4 == 0, "q": np.arange(40) % 4 != 0}
    table = model_left_out(task, train, targets, groups, seed=2, runs=1)
    def without_p(**order) -> float:
        model = deque(plain_model_steps(task, train, seed=2, keep=~groups["p"], **order), maxlen=1)[0].eval()
        with torch.no_grad():
            return float(task.loss(model, targets).float().mean())

    def loss_without_p(table: pa.Table) -> float:
        return table.filter(pa.compute.equal(table["contributor"], "p"))["loss_without"][0].as_py()

    assert loss_without_p(table) == without_p()
    ids = [f"row-{i}" for i in range(40)]  # each epoch ordered by the rows' ids
    by_ids = model_left_out(task, train, targets, groups, seed=2, runs=1, example_ids=ids)
    assert loss_without_p(by_ids) == without_p(keys=row_keys(ids)) != loss_without_p(table)
    with pytest.raises(InputError, match="example_ids name 3 rows"):
        model_left_out(task, train, targets, groups, seed=2, runs=1, example_ids=ids[:3])


def _left_out(values, se=None):
    return pa.table({"contributor": list(values), "role": ["provider"] * len(values),
                     "examples_left_out": [1] * len(values),
                     "loss_without": [1.0 + v for v in values.values()], "loss_with": [1.0] * len(values),
                     "value": list(values.values()), "value_se": se or [0.0] * len(values),
                     "copies_value": [0.0] * len(values), "value_runs": [[v] for v in values.values()]},
                    schema=LEFT_OUT_SCHEMA)


def test_noisy_left_out_values_are_shrunk_toward_what_the_scores_predict():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 9.0])
    v = np.array([0.9, 2.3, 2.8, 4.4, 4.6, 0.0])
    fitted = np.array([True] * 5 + [False])  # the last left nothing out: kept as it is
    assert np.array_equal(shrunk_values(v, np.zeros(6), x, fitted), v)  # one run: no noise known
    b, a = np.polyfit(x[:5], v[:5], 1)  # the independent reference line
    pure = shrunk_values(v, np.full(6, 10.0), x, fitted)  # noise dwarfs the spread: the line
    assert np.allclose(pure[:5], a + b * x[:5]) and pure[5] == 0.0
    clear = shrunk_values(v, np.full(6, 1e-4), x, fitted)  # values far clear of their noise: kept
    assert np.allclose(clear, v, atol=1e-3)
    se = np.full(6, 0.2)
    tau2 = max(0.0, np.sum((v[:5] - (a + b * x[:5])) ** 2) / 3 - 0.04)
    w = tau2 / (tau2 + 0.04)
    assert np.allclose(shrunk_values(v, se, x, fitted)[:5], a + b * x[:5] + w * (v[:5] - a - b * x[:5]))
    assert np.array_equal(shrunk_values(v[:2], se[:2], x[:2], fitted[:2]), v[:2])  # < 3 providers


def test_providers_are_paid_by_their_left_out_values_and_a_harmful_one_earns_nothing():
    # by their examples' scores c1 would earn most; by retraining it hurts and c0 helps twice as much as c2
    tables = pay_tables([1.0, 5.0, 1.0], ["c0", "c1", "c2"], [(0, "c5", "a"), (1, "c6", "a")])
    values = {"c0": 0.02, "c1": -0.01, "c2": 0.01}
    policy = WeightPolicy(labelers="agree")
    out = contributor_weights(*tables, ADDR, policy, left_out=_left_out(values))
    got = {(r["role"], r["contributor"]): r for r in out.to_pylist()}
    quotas = [Fraction(7000 * 2, 3), Fraction(7000, 3)]
    assert [got[("provider", c)]["weight_bps"] for c in ("c0", "c2")] == [round(q) for q in quotas]
    assert got[("provider", "c1")]["weight_bps"] == 0 and got[("provider", "c1")]["score"] < 0
    assert sum(r["weight_bps"] for r in out.to_pylist()) == 10_000
    scores = WeightPolicy(labelers="agree", providers="scores")
    by_scores = contributor_weights(*tables, ADDR, scores, left_out=_left_out(values))
    assert by_scores.equals(contributor_weights(*tables, ADDR, scores))
    assert {r["contributor"]: r["weight_bps"] for r in by_scores.to_pylist()}["c1"] > 3500  # scores: top
    # the labelers' share is split as before
    assert [r for r in out.to_pylist() if r["role"] == "labeler"] == [
        r for r in by_scores.to_pylist() if r["role"] == "labeler"]


def test_labelers_are_paid_by_their_left_out_values_where_the_table_has_them():
    # c5's answers are every label c6 agrees with; by retraining, c6's absence cost twice what c5's did
    votes = [(0, "c5", "a"), (0, "c6", "a"), (1, "c6", "a"), (2, "c7", "a")]
    tables = pay_tables([1.0, 2.0, 1.0], ["c0", "c1", "c2"], votes)
    labelers = _left_out({"c5": 0.01, "c6": 0.02, "c7": -0.01})
    labelers = labelers.set_column(1, "role", pa.array(["labeler"] * 3))
    table = pa.concat_tables([_left_out({"c0": 0.01, "c1": 0.01, "c2": 0.02}), labelers])
    policy = WeightPolicy(labelers="left_out")
    out = contributor_weights(*tables, ADDR, policy, left_out=table)
    out = {r["contributor"]: r for r in out.to_pylist()}
    quotas = [Fraction(3000, 3), Fraction(3000 * 2, 3)]
    assert [out[c]["weight_bps"] for c in ("c5", "c6")] == [round(q) for q in quotas]
    assert out["c7"]["weight_bps"] == 0 and out["c7"]["score"] < 0  # its answers hurt: nothing
    assert [out[c]["weight_bps"] for c in ("c0", "c1", "c2")] == [1750, 1750, 3500]
    # without labeler rows (too many labelers to retrain) they are paid as 'valued' pays them
    providers_only = _left_out({"c0": 0.01, "c1": 0.01, "c2": 0.02})
    assert contributor_weights(*tables, ADDR, policy, left_out=providers_only).equals(
        contributor_weights(*tables, ADDR, left_out=providers_only))
    assert WeightPolicy().labelers == "valued"  # the default (docs/royalties.md says why)
    assert not contributor_weights(*tables, ADDR, left_out=table).equals(
        contributor_weights(*tables, ADDR, policy, left_out=table))
    assert WeightPolicy.from_params({"negative": "net"}).labelers == "agree"  # records before the field


def test_a_record_without_providers_paid_by_scores():
    assert WeightPolicy.from_params({"negative": "net"}).providers == "scores"
    assert WeightPolicy().providers == "left_out"
    with pytest.raises(ValueError, match="providers must be one of"):
        WeightPolicy(providers="shapley")


@pytest.mark.parametrize("bad, match", [
    ({"c0": float("nan"), "c1": 0.1}, "NaN or inf"),
])
def test_a_bad_left_out_table_is_refused(bad, match):
    tables = pay_tables([1.0, 2.0], ["c0", "c1"], [])
    with pytest.raises(ContributorError, match=match):
        contributor_weights(*tables, ADDR, left_out=_left_out(bad))
    twice = pa.concat_tables([_left_out({"c0": 0.1}), _left_out({"c0": 0.2})])
    with pytest.raises(ContributorError, match="twice"):
        contributor_weights(*tables, ADDR, left_out=twice)


def test_copies_group_pays_a_groups_whole_left_out_effect():
    """'once' (the default) pays a provider its distinct rows' value; 'group' the loss rise without its
    whole credited group, its copies' help included (the royalty issue's ground truth)."""
    tables = pay_tables([1.0, 1.0, 1.0], ["c0", "c1", "c2"], [])
    table = _left_out({"c0": 0.01, "c1": 0.01, "c2": 0.02})
    # c0's copies (say a copycat's, credited to it) lowered the loss by 0.03 more: 'once' leaves that out
    table = table.set_column(3, "loss_without", pa.array([1.04, 1.01, 1.02]))
    table = table.set_column(7, "copies_value", pa.array([0.03, 0.0, 0.0]))
    bps = {p: {r["contributor"]: r["weight_bps"] for r in contributor_weights(
        *tables, ADDR, WeightPolicy(labelers="agree", copies=p), left_out=table).to_pylist()}
        for p in ("once", "group")}
    assert [bps["once"][c] for c in ("c0", "c1", "c2")] == [2500, 2500, 5000]
    assert [bps["group"][c] for c in ("c0", "c1", "c2")] == [round(10_000 * v / 7) for v in (4, 1, 2)]
    assert WeightPolicy.from_params({"negative": "net"}).copies == "once"  # records before the field
    with pytest.raises(ValueError, match="copies must be one of"):
        WeightPolicy(copies="all")


def test_values_within_their_noise_are_named():
    table = pa.table({"contributor": ["clear", "noisy", "hurt", "one-run", "copycat"],
                      "role": ["provider"] * 5, "examples_left_out": [10, 10, 10, 10, 0],
                      "loss_without": [1.0] * 5,
                      "loss_with": [1.0] * 5, "value": [0.05, 0.05, -0.09, 0.001, 0.0],
                      "value_se": [0.02, 0.03, 0.04, 0.0, 0.01], "copies_value": [0.0] * 5,
                      "value_runs": [[0.05], [0.05], [-0.09], [0.001], [0.0]]},
                     schema=LEFT_OUT_SCHEMA)
    assert values_within_noise(table) == ["noisy"]  # 0.05 < 2 x 0.03; 0.09 and 0.05 stand clear at 2 se
    assert values_within_noise(table, z=3.0) == ["clear", "hurt", "noisy"]
