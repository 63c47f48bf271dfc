"""Contributor value by leaving each out: retrain without a provider's examples, or on the consensus
refitted without a labeler's answers, and measure the target loss.

Why: a provider's pay should be what its data did for the model, and the question a royalty answers
is a group's, not an example's. Summed first-order example scores (in-run or TRAK) miss what a whole
group does together: redundancy with other providers (removing one of two similar providers costs
little), noisy inputs that regularize, mislabeled rows that only hurt in bulk, and how its examples
shape which labelers the consensus trusts. Retraining without the group measures it directly, at
the cost of ``runs`` plain trainings per provider, which is why the pipeline does it only up to a
recorded number of providers (``TrainingConfig.left_out_max``) and pays by the summed scores beyond
it. Figures against ``bench/contributor_value.py``'s leave-one-out truth are in `docs/royalties.md`.

A provider's group is every training example it is paid for: with ``credit`` (the ingest's
``example_credit``) a duplicate group counts for the provider(s) it pays, so a copycat's group is
empty (value 0, nothing retrained) and the original's group holds the copies too, as the
first-registered rule pays them. Copies never raise a value: where a provider's group holds more
than one member of a duplicate group (``distinct_rows``), one more retrain per seed keeps its
representatives and drops only the extra copies, which splits its value into its distinct examples'
and the copies' (``copies_value``); the copies count only when they hurt. So a provider who floods
near-copies of its own examples is paid at most what the examples alone earn (on the bench's
digits-as-images world such a flood of 5 images was otherwise valued above an honest provider's 80),
and a flood that hurts the model still costs it (``WeightPolicy(copies='group')`` pays the whole group's
effect instead, ``provider_values``). Leaving a group out also recomputes the consensus
labels of the rest from their answers alone (``relabel``): on the bench's digits world, leaving one
provider out moved 103 of 1,568 other labels, which turned its value from +25.7 to -4.4 (x1e-3), as
the truth has it.

``value`` is the mean, over ``runs`` seeds (``seed``, ``seed + 1``, ...), of the target-loss rise
without the group (> 0: it helped), ``value_se`` its standard error. A seed's retrains share their
randomness (common random numbers): the same initial weights, and each epoch's order drawn from the
rows themselves (``example_ids``: a seeded hash of each id), so a retrain without a group visits the
others in the order the full one does; each retrain alone is still distributed as a fresh training
on its rows, so ``value`` estimates the same leave-one-out effect, with less of the reshuffle's noise
(against ``bench/contributor_value.py``'s truth, mean provider Spearman over 4 pay runs went from
0.962 to 0.983 on digits and from 0.605 to 0.613 on the synthetic text world: most of a seed's noise
is the retrained model's own). One retrain still carries its seed's noise, on the demo's CNN as
large as the gaps between five equal-sized providers, so pay
(``shrunk_values``) shrinks each value toward what its examples' summed scores predict, as far as
that noise explains the providers' spread. Leaving out every example evaluates the untrained model.
Retrains use the run's recipe and seeds, so an auditor's replay gets the same values (bit for bit on
the same torch build and CPU).

A labeler is left out the way the royalty bench's truth leaves it out (``labelers``): its answers
dropped, the consensus refitted from the rest, the run retrained on those labels (rows left with no
answer are left out), one retrain per seed; a labeler whose absence changes no label is not retrained
and is worth exactly 0. Its row sits beside the providers' (``role``), so replay checks it alike. Paid
by it (``WeightPolicy(labelers='left_out')``), labeler pay follows that truth where the moves of
``'valued'`` miss what a labeler does to the whole fit (bench figures in `docs/royalties.md`), at one plain
training per labeler and seed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ContributorError, InputError
from .model_task import LABELS, Batch, ModelTask
from .task import AttributionTask
from .trainer import plain_steps, row_keys

LEFT_OUT_SCHEMA = pa.schema(
    [
        ("contributor", pa.string()),
        ("role", pa.string()),  # "provider": its examples left out; "labeler": its answers left out
        # the training rows the retrain does without (a provider's) or relabels or does without (a
        # labeler's: those whose consensus label changes without its answers, or that have none left)
        ("examples_left_out", pa.int64()),
        ("loss_without", pa.float64()),
        ("loss_with", pa.float64()),
        ("value", pa.float64()),  # loss_without - loss_with: > 0, the contributor's data or labels helped
        ("value_se", pa.float64()),  # the standard error of value over the runs' seeds (0: one run)
        # the value of its rows beyond one per duplicate group, given the rest (0: none); in value only if < 0
        ("copies_value", pa.float64()),
        ("value_runs", pa.list_(pa.float64())),  # value at each seed, in seed order: value is their mean
    ]
)
# Seeds each group is retrained with (its value is the mean): one retrain's value carries its seed's
# noise, which on the demo's CNN was as large as the gaps between providers. Against
# bench/contributor_value.py's truth, 6 instead of 3 moved provider Spearman from 0.610 to 0.780 on
# digits (world seed 1), 0.749 to 0.803 on a Gaussian-mixture table (seed 1), 0.676 to 0.897 on
# digits as images, 0.966 to 0.842 on the synthetic image world (whose truth agrees with itself at
# 0.894), and by at most 0.017 on four others; every retrain is a plain training of the recipe.
LEFT_OUT_RUNS = 6


def provider_groups(
    example_ids: Sequence[str], providers: Sequence[str], credit: pa.Table | None = None
) -> dict[str, np.ndarray]:
    """Each provider's group as a boolean mask over ``example_ids`` (the training rows): the rows it is
    paid for. ``credit`` rows name the payees of an example (any positive share); an example that
    ``credit`` does not list pays its own ``providers`` entry. Every provider of ``providers`` is
    listed, with an empty mask where all its rows are paid to others."""
    payees: dict[str, set[str]] = {}
    if credit is not None:
        paid = credit.filter(pc.greater(credit["share"], 0.0))
        for e, p in zip(paid["example_id"].to_pylist(), paid["provider"].to_pylist(), strict=True):
            payees.setdefault(e, set()).add(p)
    names = sorted(set(providers) | {p for ps in payees.values() for p in ps})
    groups = {p: np.zeros(len(example_ids), dtype=bool) for p in names}
    for i, (e, own) in enumerate(zip(example_ids, providers, strict=True)):
        for p in payees.get(e, (own,)):
            groups[p][i] = True
    return groups


def distinct_rows(example_ids: Sequence[str], credit: pa.Table | None = None) -> np.ndarray:
    """One row per duplicate group (a boolean mask over ``example_ids``): each group's
    ``representative`` (``credit``'s column: its first-registered member) and every example that
    ``credit`` does not list; the rows it leaves unmarked are copies. Without ``credit``, every row."""
    keep = np.ones(len(example_ids), dtype=bool)
    if credit is None:
        return keep
    if "representative" not in credit.column_names:
        raise ContributorError("example_credit has no 'representative' column (each example's duplicate "
                               "group's first-registered member); re-ingest the dataset version to make one")
    stand_in = dict(zip(credit["example_id"].to_pylist(), credit["representative"].to_pylist(), strict=True))
    for i, e in enumerate(example_ids):
        keep[i] = stand_in.get(e, e) == e
    return keep


Relabel = Callable[[np.ndarray], np.ndarray]  # kept rows (mask) -> their labels (class indices)
# (kept rows, seed, every row's labels or None: the providers' relabel) -> the retrained model's target loss
LossWithout = Callable[[np.ndarray, int, np.ndarray | None], float]


def left_out_values(
    loss_without: LossWithout, groups: Mapping[str, np.ndarray], seeds: Sequence[int],
    distinct: np.ndarray | None = None, labelers: Mapping[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> pa.Table:
    """The ``LEFT_OUT_SCHEMA`` table: ``loss_without(keep, seed, relabeled)`` trains on the rows ``keep``
    marks and returns the target loss; per seed it runs once with every row, once without each non-empty
    group (in provider order) and, where a group holds rows that ``distinct`` does not mark (copies beyond
    their duplicate group's representative), once without those rows only. A value is the mean over
    ``seeds`` of the loss rise without the group, less what its copies added where they helped (one
    retrain's value carries its seed's noise: on the demo's CNN a provider's value moved by about 0.04
    between seeds).

    ``labelers`` (labeler -> every row's label without its answers, -1 where the row has no answer left)
    adds a ``labeler`` row each: the loss rise when the run retrains on those labels, without the rows
    left unlabeled, beside the run's own ``labels``. A labeler whose absence changes no row's label is not
    retrained: its value is exactly 0, as a retrain on the same rows and labels would have it."""
    n = len(next(iter(groups.values()))) if groups else 0
    every = np.ones(n, dtype=bool)
    single = every if distinct is None else np.asarray(distinct, dtype=bool)
    if len(single) != n:
        raise InputError(f"distinct marks {len(single)} rows; the groups have {n}")
    full = np.array([loss_without(every, s, None) for s in seeds])
    rows = []
    for name in sorted(groups):
        mask = np.asarray(groups[name], dtype=bool)
        loss = np.array([loss_without(~mask, s, None) for s in seeds]) if mask.any() else full
        copies = mask & ~single
        # per seed: the loss rise without the whole group = its distinct rows' + its copies'
        added = np.zeros_like(full)
        if copies.any():
            added = np.array([loss_without(~copies, s, None) for s in seeds]) - full
        diff = loss - full - (added if added.mean() > 0 else 0.0)  # copies that helped earn nothing
        rows.append(_row(name, "provider", int(mask.sum()), loss, full, diff, float(added.mean())))
    for name in sorted(labelers or {}):
        relabeled = np.asarray(labelers[name], dtype=np.int64)
        if labels is None or len(relabeled) != n or len(labels) != n:
            raise InputError(f"labeler {name!r}'s labels and the run's labels must name each of the {n} rows")
        changed = int((relabeled != np.asarray(labels)).sum())
        keep = relabeled >= 0
        loss = np.array([loss_without(keep, s, relabeled) for s in seeds]) if changed else full
        rows.append(_row(name, "labeler", changed, loss, full, loss - full, 0.0))
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in LEFT_OUT_SCHEMA]
    return pa.table([list(c) for c in columns], schema=LEFT_OUT_SCHEMA)


def _row(name: str, role: str, left_out: int, loss: np.ndarray, full: np.ndarray, diff: np.ndarray,
         copies: float) -> tuple:
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return (name, role, left_out, float(loss.mean()), float(full.mean()), float(diff.mean()), se, copies,
            [float(d) for d in diff])


def mlp_left_out(
    task: AttributionTask, X: np.ndarray, y: np.ndarray, X_targets: np.ndarray, y_targets: np.ndarray,
    groups: Mapping[str, np.ndarray], *, seed: int, runs: int = LEFT_OUT_RUNS,
    relabel: Relabel | None = None, distinct: np.ndarray | None = None,
    example_ids: Sequence[str] | None = None, labelers: Mapping[str, np.ndarray] | None = None,
) -> pa.Table:
    """``left_out_values`` for the MLP: plain SGD training (``train_plain``'s, stopped early on the
    targets where the config has ``patience``) with seeds ``seed``, ``seed + 1``, ... (``runs`` of
    them), mean target cross-entropy; ``distinct`` and ``labelers`` (each labeler's relabeling of every
    row, the run's labels being ``y``) as there.
    ``relabel(keep)`` gives the kept rows' labels (``y[keep]`` without it): the consensus of their
    answers alone, since a provider's examples also shape how every labeler is weighed.
    ``example_ids`` (the rows') order every retrain by a seeded hash of each id (``trainer.batches``),
    so a retrain visits the rows it keeps in the order the full one does, and so would a retrain of a
    larger version; without them, the full retrain's permutation with the left-out rows skipped."""
    xt = torch.as_tensor(np.asarray(X_targets, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y_targets, dtype=np.int64))
    x_all, y_all = np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.int64)  # converted once
    keys = _keys(example_ids, len(y_all))
    labels = _labels_by_mask(relabel)

    def loss_without(keep: np.ndarray, s: int, relabeled: np.ndarray | None) -> float:
        y_kept = y_all
        if relabeled is not None:
            y_kept = relabeled
        elif relabel is not None:
            y_kept = y_all.copy()
            y_kept[keep] = labels(keep)
        steps = iter(())
        if keep.any():
            steps = plain_steps(task, x_all, y_kept, seed=s, keep=keep, keys=keys, targets=(xt, yt))
        model = _trained(steps, lambda: task.spec.build(s))
        with torch.no_grad():
            return float(F.cross_entropy(model(xt), yt))

    return left_out_values(loss_without, groups, _seeds(seed, runs), distinct, labelers, y_all)


def model_left_out(
    task: ModelTask, train: Batch, targets: Batch, groups: Mapping[str, np.ndarray], *, seed: int,
    runs: int = LEFT_OUT_RUNS, relabel: Relabel | None = None, distinct: np.ndarray | None = None,
    example_ids: Sequence[str] | None = None, labelers: Mapping[str, np.ndarray] | None = None,
) -> pa.Table:
    """``left_out_values`` for a ``ModelTask`` recipe: plain training (``train_model_plain``'s), the
    task's mean loss on the targets; ``runs``, ``relabel``, ``distinct``, ``example_ids`` and
    ``labelers`` as in ``mlp_left_out``."""
    from .inrun import plain_model_steps

    keys = _keys(example_ids, len(train[LABELS]))
    labels = _labels_by_mask(relabel)

    def loss_without(keep: np.ndarray, s: int, relabeled: np.ndarray | None) -> float:
        rows = dict(train)
        if relabeled is not None:
            rows[LABELS] = torch.as_tensor(relabeled, dtype=torch.int64)
        elif relabel is not None:
            rows[LABELS] = train[LABELS].clone()
            rows[LABELS][torch.as_tensor(keep)] = torch.as_tensor(np.asarray(labels(keep), dtype=np.int64))
        steps = iter(())
        if keep.any():
            steps = plain_model_steps(task, rows, seed=s, keep=keep, keys=keys, targets=targets)
        model = _trained(steps, lambda: task.fresh(s))
        with torch.no_grad():
            return float(task.loss(model, targets).float().mean())

    return left_out_values(loss_without, groups, _seeds(seed, runs), distinct, labelers,
                           train[LABELS].numpy())


def _keys(example_ids: Sequence[str] | None, n: int) -> np.ndarray | None:
    if example_ids is None:
        return None
    if len(example_ids) != n:
        raise InputError(f"example_ids name {len(example_ids)} rows; the training set has {n}")
    return row_keys(example_ids)


def _labels_by_mask(relabel: Relabel | None) -> Relabel:
    """``relabel`` computed once per mask (every seed's retrain of a group trains on the same labels)."""
    done: dict[bytes, np.ndarray] = {}

    def labels(keep: np.ndarray) -> np.ndarray:
        key = np.packbits(keep).tobytes() + len(keep).to_bytes(8, "little")
        if key not in done:
            done[key] = relabel(keep)
        return done[key]

    return labels


def _seeds(seed: int, runs: int) -> list[int]:
    if runs < 1:
        raise InputError(f"left-out runs must be >= 1, got {runs}")
    return [seed + k for k in range(runs)]


def _trained(steps: Iterator[nn.Module], fresh: Callable[[], nn.Module]) -> nn.Module:
    """The model after the last of ``steps`` (``fresh()``: untrained, where no step was taken), on the
    CPU in eval mode."""
    last = deque(steps, maxlen=1)
    return (last[0] if last else fresh()).cpu().eval()


def provider_values(table: pa.Table, copies: str = "once") -> dict[str, tuple[float, float, int]]:
    """provider -> (value, value_se, examples_left_out), from a ``LEFT_OUT_SCHEMA`` table's provider rows
    (what ``contributor_weights`` pays by). ``copies='group'`` (``WeightPolicy.copies``) takes the whole
    group's effect instead, ``loss_without - loss_with``: ``value`` plus its copies' value where they
    helped (with ``value_se`` as its error, the seeds' noise of the copies-free part)."""
    from .weights import COPIES_POLICIES

    if copies not in COPIES_POLICIES:
        raise ContributorError(f"copies must be one of {COPIES_POLICIES}, got {copies!r}")
    return _role_values(table, "provider", copies == "group")


def labeler_values(table: pa.Table) -> dict[str, tuple[float, float, int]]:
    """labeler -> (value, value_se, examples_left_out), from a ``LEFT_OUT_SCHEMA`` table's labeler rows
    (empty where the run retrained no labeler)."""
    return _role_values(table, "labeler", False)


def _role_values(table: pa.Table, role: str, whole: bool) -> dict[str, tuple[float, float, int]]:
    missing = [c for c in LEFT_OUT_SCHEMA.names if c not in table.column_names]
    if missing:
        raise ContributorError(f"a left-out table needs columns {LEFT_OUT_SCHEMA.names}; missing {missing}")
    table = table.filter(pc.equal(table["role"], role))

    def column(name: str) -> np.ndarray:
        return table[name].to_numpy(zero_copy_only=False).astype(np.float64)

    values = column("loss_without") - column("loss_with") if whole else column("value")
    se = column("value_se")
    if not (np.isfinite(values).all() and np.isfinite(se).all()) or (se < 0).any():
        raise ContributorError("a left-out table holds NaN or inf values (or a negative value_se)")
    names = table["contributor"].to_pylist()
    if len(set(names)) != len(names):
        raise ContributorError(f"a left-out table lists a {role} twice")
    counts = table["examples_left_out"].to_pylist()
    return {p: (float(v), float(e), int(c)) for p, v, e, c in zip(names, values, se, counts, strict=True)}


def value_noise(first: pa.Table, second: pa.Table) -> tuple[float, int]:
    """How far rounding moves one retrain's left-out value, from two ``LEFT_OUT_SCHEMA`` tables of the
    same run retrained twice (replay's second retrain rounds otherwise): the root mean square of their
    per-seed value differences (``value_runs``) over the contributors both retrained (one that left
    nothing out is not retrained, so its zeros would understate it); and the seeds a value is the mean of (its
    own noise is the first over the root of the second). Pooled over providers and seeds, it is far
    steadier than the largest of a few means' differences: over 12 nudged replays of the image recipe
    (3 providers, 6 seeds) it ranged 1.9-fold where that largest difference ranged 5.4-fold
    (bench/replay_devices.py). (0.0, 1) where no provider was retrained."""
    def runs(table: pa.Table) -> dict[tuple[str, str], list[float]]:
        rows = zip(table["role"].to_pylist(), table["contributor"].to_pylist(),
                   table["examples_left_out"].to_pylist(), table["value_runs"].to_pylist(), strict=True)
        return {(role, c): r for role, c, n, r in rows if n > 0}

    ra, rb = runs(first), runs(second)
    diffs = [x - y for p in sorted(ra.keys() & rb.keys()) for x, y in zip(ra[p], rb[p], strict=True)]
    if not diffs:
        return 0.0, 1
    return float(np.sqrt(np.mean(np.square(diffs)))), len(next(iter(ra.values())))


# how many standard errors a left-out value must stand from zero to say its provider helped or hurt
NOISE_Z = 2.0


def values_within_noise(table: pa.Table, z: float = NOISE_Z) -> list[str]:
    """The retrained contributors of a ``LEFT_OUT_SCHEMA`` table whose value is within ``z`` standard
    errors of zero (one left out with nothing, or with one run, is never listed): their retrains cannot
    tell whether their data or labels helped. Their pay then leans on what their scores predict
    (``shrunk_values``) as far as the noise explains their role's spread; a report names them. More
    ``runs`` shrink the error, so that a real but small effect stands clear of it."""
    rows = table.to_pylist()
    return sorted(r["contributor"] for r in rows
                  if r["examples_left_out"] > 0 and r["value_se"] > 0 and abs(r["value"]) < z * r["value_se"])


def shrunk_values(
    values: np.ndarray, se: np.ndarray, covariate: np.ndarray, fitted: np.ndarray
) -> np.ndarray:
    """Each provider's left-out mean shrunk toward what its examples' summed scores (``covariate``)
    predict, by how much of the providers' spread the retrains' own noise explains: the empirical-Bayes
    (Fay-Herriot) estimate. ``prior = a + b * covariate`` fitted by least squares over the ``fitted``
    providers (retrained ones), ``tau2`` the residual variance beyond the mean ``se**2``, each value
    ``prior + tau2 / (tau2 + se**2) * (value - prior)``. Where the left-out differences stand clear of
    their noise (the benchmark's worlds) the values are kept; where they do not (the demo's five
    equal-sized image providers, whose values moved by ~0.04 between seeds) the scores order them.
    Unchanged with fewer than 3 fitted providers, one run (``se`` all 0) or a flat covariate."""
    v = np.asarray(values, dtype=np.float64)
    fit = np.asarray(fitted, dtype=bool) & (np.asarray(se) > 0)
    x = np.asarray(covariate, dtype=np.float64)
    if fit.sum() < 3 or np.ptp(x[fit]) == 0:
        return v
    design = np.c_[np.ones(int(fit.sum())), x[fit]]
    coef = np.linalg.lstsq(design, v[fit], rcond=None)[0]
    prior = coef[0] + coef[1] * x
    resid = (v - prior)[fit]
    tau2 = max(0.0, float(resid @ resid) / max(int(fit.sum()) - 2, 1) - float(np.mean(se[fit] ** 2)))
    weight = np.where(fit, tau2 / (tau2 + np.where(fit, se, 1.0) ** 2), 1.0)
    return np.where(fit, prior + weight * (v - prior), v)
