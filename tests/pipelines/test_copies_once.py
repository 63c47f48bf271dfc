"""Copies earn once: exact copies and near-duplicates are paid once, to whoever registered first.

From raw rows (`to_examples` with the sources' registration times) through the `example_credit`
table to `attribution.contributor_weights`: the first-registered source gets an exact copy;
sources registered at the same time share it equally (basis points against an exact Fraction
reference); a flood of near-copies gains its provider nothing and dilutes nobody; a copycat
earns nothing; the ingest record says how duplicates were grouped; the same inputs give the
same bytes.
"""

from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.spatial.distance import pdist
from sklearn.neighbors import NearestNeighbors

from attribution import (
    AttributionTask,
    ModelSpec,
    TrainConfig,
    contributor_weights,
    distinct_rows,
    mlp_left_out,
    provider_groups,
)
from pipelines.datasets import Payload, example_id, to_examples
from pipelines.duplicates import (
    CLUMP_CAP,
    CLUMP_MAX,
    LOCAL_K,
    NEAR_FRACTION,
    clump_dimension,
    clump_sizes,
    clump_window,
    few_dimensions,
    local_dimension,
    spacing,
)
from schemas import CREDIT_SCHEMA, TOTAL_BPS
from storage import snapshot_parquet

T0, T1, T2 = "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z"
ADDR = {name: "0x" + f"{i + 1:040x}" for i, name in enumerate(
    ["a", "b", "c", "d", "flooder", "copycat", "lab1", "lab2", *[f"copycat-{i}" for i in range(2, 21)]]
)}


def _rows(features: np.ndarray, provider: str, source: str | None = None) -> pa.Table:
    n = len(features)
    return pa.table({
        "f": pa.array([list(map(float, r)) for r in features], pa.list_(pa.float64())),
        "provider": [provider] * n,
        "source": [source or f"src-{provider}"] * n,
    })


def _ids(table: pa.Table) -> list[str]:
    return [example_id(r) for r in table.select(["f"]).to_pylist()]


def _scored(table: pa.Table, score_of) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table, pa.Table]:
    """examples, credit, and attribution/annotations/consensus (every example labeled by lab1 and lab2,
    who agree with the consensus) for the rows of `table`, each example's score from `score_of(id)`."""
    examples, report = to_examples(table, _times(table))
    ids = examples["example_id"].to_pylist()
    n = len(ids)
    attribution = pa.table({"example_id": ids, "score": [float(score_of(e)) for e in ids],
                            "method": ["inrun_sgd"] * n, "run_id": ["r"] * n})
    annotations = pa.table({"annotation_id": [str(i) for i in range(2 * n)], "example_id": ids + ids,
                            "annotator": ["lab1"] * n + ["lab2"] * n, "label": ["x"] * (2 * n)})
    consensus = pa.table({"example_id": ids, "label": ["x"] * n, "confidence": [1.0] * n, "n_votes": [2] * n})
    return examples, report.grouping.credit, attribution, annotations, consensus


TIMES: dict[str, str] = {}


def _times(table: pa.Table) -> dict[str, str]:
    return {s: TIMES.get(s, T0) for s in set(table["source"].to_pylist())}


def _bps(table: pa.Table) -> dict[str, int]:
    return dict(zip(table["contributor"].to_pylist(), table["weight_bps"].to_pylist(), strict=True))


@pytest.fixture(autouse=True)
def _fresh_times():
    TIMES.clear()
    yield
    TIMES.clear()


def test_an_exact_copy_goes_to_the_first_registered_source() -> None:
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(1, 5))
    # "b" sorts after "a" but registered first: the copy is b's, whatever the names or row order
    TIMES.update({"src-a": T1, "src-b": T0})
    table = pa.concat_tables([_rows(np.vstack([shared, rng.normal(size=(8, 5))]), "a"),
                              _rows(np.vstack([rng.normal(size=(8, 5)), shared]), "b")])
    copy = _ids(_rows(shared, "a"))[0]
    for order in (np.arange(table.num_rows), np.random.default_rng(1).permutation(table.num_rows)):
        examples, report = to_examples(table.take(order), _times(table))
        kept = dict(zip(examples["example_id"].to_pylist(), examples["provider"].to_pylist(), strict=True))
        assert kept[copy] == "b" and report.duplicates_dropped == 1
        credit = report.grouping.credit.to_pylist()
        assert [(r["provider"], r["share"]) for r in credit if r["example_id"] == copy] == [("b", 1.0)]
    assert report.grouping.to_params()["exact"]["groups"] == 1


# ---------------------------------------------------------------- same time: equal shares, exact


def _exact_grid(values: list[Fraction], digits: int = 8) -> list[Fraction]:
    """``round(v / unit)`` with ``unit = 10**(e - digits + 1)``, e the decimal exponent of the largest."""
    top = max(abs(v) for v in values)
    e = math.floor(math.log10(top))
    while Fraction(10) ** (e + 1) <= top:
        e += 1
    while Fraction(10) ** e > top:
        e -= 1
    unit = Fraction(10) ** (e - digits + 1)
    out = []
    for v in values:
        x = v / unit
        off = abs(x - math.floor(x) - Fraction(1, 2))
        if 0 < off < Fraction(1, 10**6):  # within float error of a half step: a rounding convention
            pytest.skip("draw within float error of a half grid step")
        out.append(Fraction(round(x)))  # half to even, as numpy
    return out


def _reference_bps(scores: dict[str, float], credit: pa.Table) -> dict[str, int]:
    """Providers only (no labels): exact rationals from the raw scores and exact 1/k shares."""
    ids = sorted(scores)
    grid = dict(zip(ids, _exact_grid([Fraction(scores[e]) for e in ids]), strict=True))
    k: dict[str, int] = {}
    for r in credit.to_pylist():
        k[r["example_id"]] = k.get(r["example_id"], 0) + 1
    totals: dict[str, Fraction] = {}
    for r in credit.to_pylist():  # each example here is its own group: share 1/k exactly
        part = grid[r["example_id"]] / k[r["example_id"]]
        totals[r["provider"]] = totals.get(r["provider"], Fraction(0)) + part
    names = sorted(totals)
    g = _exact_grid([max(totals[n], Fraction(0)) for n in names])
    quotas = [TOTAL_BPS * v / sum(g) for v in g]
    floors = [q.numerator // q.denominator for q in quotas]
    order = sorted(range(len(names)), key=lambda i: (-(quotas[i] - floors[i]), ADDR[names[i]].lower()))
    for i in order[: TOTAL_BPS - sum(floors)]:
        floors[i] += 1
    return dict(zip(names, floors, strict=True))


@pytest.mark.parametrize("seed", range(12))
def test_sources_registered_at_the_same_time_share_a_copy_equally(seed) -> None:
    rng = np.random.default_rng(seed)
    # random tokens as text payloads: nothing alike but exact copies, so every example is its own group
    def texts(provider: str, words: list[str]) -> pa.Table:
        n = len(words)
        return pa.table({"text": words, "provider": [provider] * n, "source": [f"src-{provider}"] * n})

    common = [rng.bytes(12).hex() for _ in range(3)]
    own = {p: [rng.bytes(12).hex() for _ in range(int(rng.integers(1, 4)))] for p in ("a", "b", "c")}
    TIMES.update({"src-a": T0, "src-b": T0, "src-c": T0, "src-d": T1})
    table = pa.concat_tables([texts(p, common + own[p]) for p in ("a", "b", "c")]
                             + [texts("d", common[:1])])  # d registered later: its copy earns nothing
    examples, report = to_examples(table, _times(table))
    credit = report.grouping.credit
    ids = examples["example_id"].to_pylist()
    attribution = pa.table({"example_id": ids, "score": rng.uniform(0.01, 1.0, len(ids)),
                            "method": ["inrun_sgd"] * len(ids), "run_id": ["r"] * len(ids)})
    common_ids = {example_id({"text": w}) for w in common}
    for r in credit.to_pylist():
        assert (r["share"] == 1 / 3) == (r["example_id"] in common_ids)
    payees = {r["provider"] for r in credit.to_pylist() if r["example_id"] in common_ids}
    assert payees == {"a", "b", "c"} and report.grouping.to_params()["exact"]["shared_same_time"] == 3
    scores = dict(zip(ids, attribution["score"].to_pylist(), strict=True))
    out = _bps(contributor_weights(attribution, examples, None, None, ADDR, credit=credit))
    assert out == _reference_bps(scores, credit) and "d" not in out  # d's only row was a later copy
    assert sum(out.values()) == TOTAL_BPS


# ---------------------------------------------------------------- floods and copycats


def _honest(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {p: rng.normal(size=(30, 6)) for p in ("a", "b", "c")}


def _score_by_content(originals: np.ndarray, base: np.ndarray, copies_of: dict[str, str], seed: int):
    """Scores by content: `base` for the originals; a copy scores like its original (within 1e-7
    relative, as two near-identical examples would)."""
    by_id = dict(zip(_ids(_rows(originals, "x")), base.tolist(), strict=True))
    rng = np.random.default_rng(seed)
    wobble = {e: 1 + 1e-7 * rng.standard_normal() for e in sorted(copies_of)}

    def score(e: str) -> float:
        return by_id[e] if e in by_id else by_id[copies_of[e]] * wobble[e]

    return score


def test_a_near_duplicate_flood_gains_nothing_and_dilutes_nobody() -> None:
    rng = np.random.default_rng(3)
    honest = _honest(rng)
    seeds = rng.normal(size=(3, 6))  # the flooder's own three examples
    base = [_rows(x, p) for p, x in honest.items()] + [_rows(seeds, "flooder")]
    pick = np.resize(np.arange(3), 120)  # 40 near-copies of each, in the flooder's own file
    flood = seeds[pick] + rng.normal(size=(120, 6)) * 1e-3
    originals = np.vstack([*honest.values(), seeds])
    values = np.concatenate([rng.uniform(-0.5, 1.0, 90), rng.uniform(0.2, 1.0, 3)])
    seed_ids = _ids(_rows(seeds, "f"))
    copies_of = dict(zip(_ids(_rows(flood, "f")), [seed_ids[i] for i in pick], strict=True))
    score = _score_by_content(originals, values, copies_of, seed=4)
    without = pa.concat_tables(base)
    with_flood = pa.concat_tables([*base, _rows(flood, "flooder")])

    def weights(table, use_credit=True):
        examples, credit, attribution, annotations, consensus = _scored(table, score)
        return _bps(contributor_weights(attribution, examples, annotations, consensus, ADDR,
                                        credit=credit if use_credit else None))

    before, after = weights(without), weights(with_flood)
    assert before.keys() == after.keys() and before["flooder"] > 0
    assert all(abs(before[c] - after[c]) <= 1 for c in before), (before, after)
    # without the credit table the same flood would have paid: the test can fail
    plain = weights(with_flood, use_credit=False)
    assert plain["flooder"] > before["flooder"] + 100
    examples, report = to_examples(with_flood, _times(with_flood))
    near = report.grouping.to_params()["near"]
    assert near["groups"] == 3 and near["copies"] == 120
    # one registration time: each group's representative is its member with the smallest example_id
    credit = report.grouping.credit.to_pylist()
    groups: dict[str, list[str]] = {}
    for r in credit:
        groups.setdefault(r["representative"], []).append(r["example_id"])
    assert sorted(len(m) for m in groups.values()) == [1] * 90 + [41] * 3
    assert all(rep == min(members) for rep, members in groups.items())
    assert distinct_rows(examples["example_id"].to_pylist(), report.grouping.credit).sum() == 93


@pytest.mark.parametrize("world,mislabeled", [(0, False), (1, False), (0, True), (1, True)])
def test_a_flood_never_raises_its_providers_left_out_value(world, mislabeled) -> None:
    """The default pay values providers by retraining without them (`attribution.mlp_left_out`). A
    later file of near-copies of the flooder's own examples counts only where it hurts: with the flood
    the flooder's value is its examples' value without the flood, bit for bit (the copies helped), or
    lower by what they cost (mislabeled copies)."""
    rng = np.random.default_rng(6 + world)
    honest = _honest(rng)
    seeds = rng.normal(size=(3, 6))
    pick = np.resize(np.arange(3), 60)
    flood = seeds[pick] + rng.normal(size=(60, 6)) * 1e-3
    base = [_rows(x, p) for p, x in honest.items()] + [_rows(seeds, "flooder")]
    TIMES.update({"src-flood": T1})
    without = pa.concat_tables(base)
    with_flood = pa.concat_tables([*base, _rows(flood, "flooder", "src-flood")])
    signal = rng.normal(size=6)
    task = AttributionTask(ModelSpec((6, 8, 2)), TrainConfig(epochs=4, batch_size=16, lr=0.1))
    xt = rng.normal(size=(40, 6)).astype(np.float32)
    yt = (xt @ signal > 0).astype(np.int64)

    def left_out(table: pa.Table, dedupe: bool = True) -> dict[str, dict]:
        examples, report = to_examples(table, _times(table))
        ids = examples["example_id"].to_pylist()
        x = np.asarray(examples["f"].to_pylist(), dtype=np.float32)
        credit = report.grouping.credit
        groups = provider_groups(ids, examples["provider"].to_pylist(), credit)
        y = (x @ signal > 0) ^ (mislabeled & (np.asarray(examples["provider"].to_pylist()) == "flooder"))
        out = mlp_left_out(task, x, y.astype(np.int64), xt, yt, groups, seed=3, runs=2,
                           distinct=distinct_rows(ids, credit) if dedupe else None, example_ids=ids)
        return {r["contributor"]: r for r in out.to_pylist()}

    before, after = left_out(without)["flooder"], left_out(with_flood)["flooder"]
    assert before["copies_value"] == 0.0 and after["examples_left_out"] == 63
    if mislabeled:  # the copies hurt: the flooder bears it
        assert after["copies_value"] < 0
        assert after["value"] == pytest.approx(before["value"] + after["copies_value"], abs=1e-12)
    else:  # they helped: not paid for, the examples' own value stays
        assert after["copies_value"] > 0 and after["value"] == before["value"]
    counted = left_out(with_flood, dedupe=False)["flooder"]  # without the grouping every copy counts
    assert counted["value"] == pytest.approx(before["value"] + after["copies_value"], abs=1e-12)


def test_a_copycat_of_another_providers_examples_earns_nothing() -> None:
    rng = np.random.default_rng(5)
    honest = _honest(rng)
    TIMES.update({"src-copycat": T2})  # registered after everyone it copies
    jittered = honest["b"] + rng.normal(size=honest["b"].shape) * 0.01
    copies = np.vstack([jittered, honest["a"][:5]])  # near-copies of b's, exact copies of a's
    originals = np.vstack(list(honest.values()))
    copies_of = dict(zip(_ids(_rows(jittered, "b")), _ids(_rows(honest["b"], "b")), strict=True))
    score = _score_by_content(originals, rng.uniform(-0.5, 1.0, len(originals)), copies_of, seed=6)
    base = [_rows(x, p) for p, x in honest.items()]
    without, with_copycat = pa.concat_tables(base), pa.concat_tables([*base, _rows(copies, "copycat")])
    examples, credit, attribution, annotations, consensus = _scored(with_copycat, score)
    out = contributor_weights(attribution, examples, annotations, consensus, ADDR, credit=credit)
    row = {r["contributor"]: r for r in out.to_pylist()}["copycat"]
    assert row["weight_bps"] == 0 and row["score"] == 0.0  # listed, paid nothing, not "hurt the model"
    before, after = _bps(_weights_of(without, score)), _bps(out)
    assert all(abs(before[c] - after[c]) <= 1 for c in before), (before, after)
    _, report = to_examples(with_copycat, _times(with_copycat))
    assert report.grouping.unpaid == ("copycat",)
    assert report.grouping.to_params()["unpaid_providers"] == ["copycat"]
    kept = dict(zip(examples["example_id"].to_pylist(), examples["provider"].to_pylist(), strict=True))
    assert {kept[e] for e in _ids(_rows(honest["a"][:5], "a"))} == {"a"}  # exact copies: the first's row
    stand_in = dict(zip(credit["example_id"].to_pylist(), credit["representative"].to_pylist(), strict=True))
    assert all(stand_in[c] == o for c, o in copies_of.items())  # b's originals, registered first


@pytest.mark.parametrize("seed,per_honest,copiers",
                         [(0, 1.0, 1), (1, 1.0, 1), (2, 1.5, 1), (3, 2.0, 2), (4, 4.0, 4), (5, 8.0, 8),
                          (6, 20.0, 20)])
def test_a_copycat_of_everyone_cannot_shrink_the_spacing_its_copies_are_judged_by(seed, per_honest,
                                                                                   copiers) -> None:
    """A copier who copies as many examples as the honest providers hold (1.5: some of them twice; or two,
    four or eight copiers who each copy every example: one copier in several accounts) makes copies and
    originals most of the data. Judged by the median distance to another provider's nearest example, the
    threshold shrank to the copies' own and none was linked (with a clump window of three, four copiers
    still did that; with one of fifteen, twenty: the window is now one fewer than the providers);
    skipping each example's clump (``spacing``, and for the local scale and dimension
    estimate), every copy joins its original, no two honest examples are grouped, and the threshold is
    the one the honest data gives without the copier."""
    rng = np.random.default_rng(seed)
    honest = {p: rng.normal(size=(150, 20)) for p in ("a", "b", "c")}
    originals = np.vstack(list(honest.values()))
    if copiers == 1:
        picked = rng.choice(len(originals), round(per_honest * len(originals)), replace=per_honest > 1)
    else:
        picked = np.tile(np.arange(len(originals)), copiers)
    copies = originals[picked] + rng.normal(size=(len(picked), 20)) * 0.05
    base = [_rows(x, p) for p, x in honest.items()]
    _, alone = to_examples(pa.concat_tables(base), _times(pa.concat_tables(base)))
    names = ("copycat", *[f"copycat-{i}" for i in range(2, copiers + 1)])  # each copies every example once
    TIMES.update({f"src-{name}": T2 for name in names})
    share = np.array_split(np.arange(len(copies)), copiers)
    table = pa.concat_tables([*base, *[_rows(copies[i], name) for name, i in zip(names, share, strict=True)]])
    examples, report = to_examples(table, _times(table))
    group = dict(zip(report.grouping.credit["example_id"].to_pylist(),
                     report.grouping.credit["representative"].to_pylist(), strict=True))
    original_ids, copy_ids = _ids(_rows(originals, "x")), _ids(_rows(copies, "x"))
    assert all(group[c] == original_ids[i] for c, i in zip(copy_ids, picked.tolist(), strict=True))
    assert len({group[e] for e in original_ids}) == len(original_ids)  # honest examples stay apart
    assert report.grouping.unpaid == tuple(sorted(names))
    near, honest_near = report.grouping.near, alone.grouping.near
    assert abs(near["threshold"] / honest_near["threshold"] - 1) < 0.15, (near, honest_near)
    copies_of = {c: original_ids[i] for c, i in zip(copy_ids, picked.tolist(), strict=True)}
    score = _score_by_content(originals, rng.uniform(-0.5, 1.0, len(originals)), copies_of, seed=seed)
    before, after = _bps(_weights_of(pa.concat_tables(base), score)), _bps(_weights_of(table, score))
    assert all(after[n] == 0 for n in names) and all(abs(before[c] - after[c]) <= 1 for c in before)


@pytest.mark.parametrize("seed,copiers", [(0, 3), (1, 8)])
def test_copiers_of_every_example_in_five_numbers_are_grouped(seed, copiers) -> None:
    """Five numbers per example, and several copiers who each copy every example (jittered by 5 % of a
    deviation): no copy is four times nearer than the next honest neighbour, so the fixed jump found no
    clump, the copies made the data's dimension near one and 57 % to 75 % of them (three copiers) or
    none (eight) joined their original. A clump rare in the dimension read beyond it finds them; the
    copies add neighbours an honest pair can be linked through, so a few honest examples may be grouped
    (up to 4 of 450 in six seeds)."""
    rng = np.random.default_rng(seed)
    honest = {p: rng.normal(size=(150, 5)) for p in ("a", "b", "c")}
    originals = np.vstack(list(honest.values()))
    names = [f"copycat-{i}" for i in range(1, copiers + 1)]
    copies = [originals + rng.normal(size=originals.shape) * 0.05 for _ in names]
    TIMES.update({f"src-{name}": T2 for name in names})
    table = pa.concat_tables([*[_rows(x, p) for p, x in honest.items()],
                              *[_rows(x, name) for name, x in zip(names, copies, strict=True)]])
    _, report = to_examples(table, _times(table))
    group = dict(zip(report.grouping.credit["example_id"].to_pylist(),
                     report.grouping.credit["representative"].to_pylist(), strict=True))
    original_ids = _ids(_rows(originals, "x"))
    joined = [group[c] == o for x in copies for c, o in zip(_ids(_rows(x, "x")), original_ids, strict=True)]
    assert np.mean(joined) >= 0.95
    assert len(original_ids) - len({group[e] for e in original_ids}) <= 2


def test_a_clump_may_hold_a_copy_by_every_other_provider() -> None:
    """The window is one fewer than the providers, from CLUMP_MAX (a copier may copy one example more
    than once) to CLUMP_CAP (which bounds the search)."""
    assert clump_window(np.array(["a", "b", "a"])) == CLUMP_MAX
    assert clump_window(np.array([f"p{i % 30}" for i in range(90)])) == 29
    assert clump_window(np.array([f"p{i}" for i in range(500)])) == CLUMP_CAP


@pytest.mark.parametrize("dim", [1, 2, 5, 10])
def test_the_clump_dimension_is_read_beyond_any_clump(dim) -> None:
    """Distances to the neighbours of a Poisson process in ``dim`` dimensions (their volumes are sums of
    exponential draws): the estimate recovers ``dim``, and copies that make an example's three nearest
    neighbours leave it as it was, where Levina and Bickel's over the nearest falls towards zero."""
    rng = np.random.default_rng(dim)
    distances = np.cumsum(rng.exponential(size=(4000, LOCAL_K + CLUMP_MAX)), axis=1) ** (1 / dim)
    assert clump_dimension(distances) == pytest.approx(dim, rel=0.05)
    copied = distances.copy()
    copied[:, :3] = distances[:, :1] * [0.01, 0.012, 0.014]
    assert clump_dimension(copied) == clump_dimension(distances)
    assert local_dimension(copied[:, :LOCAL_K]) < dim / 2
    assert clump_dimension(distances[:, :CLUMP_MAX]) == 0.0  # no neighbour beyond a clump: cannot be told


def test_in_few_dimensions_a_clump_is_a_jump_rare_in_them() -> None:
    """Three neighbours within half of the next are no fixed jump (a quarter), but in five dimensions
    an honest example's three nearest lie that close with chance 0.47 ** 15, about 1e-5: a clump,
    unless the example's own provider holds an example as near, or the three are at one distance (a
    repeated point, say), or the data has two dimensions."""
    row = np.array([[0.10, 0.12, 0.14, 0.30, 0.31, 0.33]])
    far = np.ones(1)
    assert clump_sizes(row, NEAR_FRACTION).tolist() == [0]
    assert clump_sizes(row, NEAR_FRACTION, 5.0, far).tolist() == [3]
    assert clump_sizes(row, NEAR_FRACTION, 5.0).tolist() == [0]  # no own-provider distances given
    assert clump_sizes(row, NEAR_FRACTION, 5.0, np.array([0.12])).tolist() == [0]  # its own as near
    assert clump_sizes(row, NEAR_FRACTION, 2.0, far).tolist() == [0]
    tied = np.array([[0.14, 0.14, 0.14, 0.30, 0.31, 0.33]])
    assert clump_sizes(tied, NEAR_FRACTION, 5.0, far).tolist() == [0]  # 0.47 ** 5: one point, not rare


def test_spacing_skips_a_clump_and_keeps_an_honest_nearest() -> None:
    f = NEAR_FRACTION
    rows = np.array([
        [1.0, 1.1, 1.2, 1.3],  # honest: its nearest
        [0.01, 1.0, 1.1, 1.2],  # a copy's original (or the copy): the next one
        [0.0, 0.01, 1.0, 1.1],  # an exact copy and a near one: beyond both
        [0.01, 0.014, 1.0, 1.1],  # two copiers' copies of one example, each as close: beyond both
        [0.0, 0.0, 0.0, 0.0],  # all at one point, no jump: its nearest
        [0.2, np.inf, np.inf, np.inf],  # one example of another provider: it
        [f * 1.0, 1.0, 2.0, 3.0],  # exactly fraction of the next: no clump (strictly closer only)
    ])
    assert spacing(rows, clump_sizes(rows, f)).tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.2, f]
    assert spacing(rows[:, :1], clump_sizes(rows[:, :1], f)).tolist() == rows[:, 0].tolist()


def _weights_of(table: pa.Table, score) -> pa.Table:
    examples, credit, attribution, annotations, consensus = _scored(table, score)
    return contributor_weights(attribution, examples, annotations, consensus, ADDR, credit=credit)


def test_the_same_inputs_give_the_same_bytes() -> None:
    rng = np.random.default_rng(8)
    honest = _honest(rng)
    TIMES.update({"src-b": T1})
    table = pa.concat_tables([_rows(x, p) for p, x in honest.items()]
                             + [_rows(honest["a"][:4] + 1e-4, "b"), _rows(honest["c"][:2], "a")])
    outs = []
    for seed in (0, 1, 2):
        shuffled = table.take(np.random.default_rng(seed).permutation(table.num_rows))
        examples, report = to_examples(shuffled, _times(table))
        outs.append((snapshot_parquet(examples, sort_by="example_id"), pq_bytes(report.grouping.credit),
                     report.grouping.to_params()))
    assert outs[0] == outs[1] == outs[2]
    assert report.grouping.credit.schema == CREDIT_SCHEMA


def pq_bytes(table: pa.Table) -> bytes:
    return snapshot_parquet(table, sort_by="example_id")


# ---------------------------------------------------------------- the ingest record


def ingested_v2(tmp_path, monkeypatch) -> SimpleNamespace:
    """Version v2 (three honest providers, registered at T0 as v1, and a copycat of b's rows at T1; a
    validation set and gold declared) through the ingest asset: its catalog entry, the materialization
    (`result`), its ingest record's CID and the record, the store and the catalog."""
    from pipelines.assets import ingest
    from pipelines.resources import DatasetCatalog, resources_for
    from pipelines.settings import load_settings
    from provenance import INGEST, SNAPSHOT, load_record

    rng = np.random.default_rng(11)
    honest = _honest(rng)
    first, second = tmp_path / "v1", tmp_path / "v2"
    first.mkdir()
    second.mkdir()
    def with_ids(rows: pa.Table, provider: str) -> pa.Table:  # an id the model never reads
        ids = [f"{provider}-{i}" for i in range(rows.num_rows)]
        return rows.drop(["provider", "source"]).append_column("customer", pa.array(ids))

    for p, x in honest.items():
        for folder in (first, second):
            pq.write_table(with_ids(_rows(x, p), p), folder / f"{p}.parquet")
    pq.write_table(with_ids(_rows(honest["b"] + 1e-3, "copycat"), "copycat"), second / "copycat.parquet")
    held_out = with_ids(_rows(rng.normal(size=(20, honest["a"].shape[1])), "held"), "held")
    validation, gold = tmp_path / "validation.parquet", tmp_path / "gold.parquet"
    pq.write_table(held_out.append_column("label", pa.array(["x", "y"] * 10)), validation)
    pq.write_table(pa.table({"example_id": ["e"], "label": ["x"]}), gold)
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CARAVAN_STORE_DIR", raising=False)
    settings = load_settings()
    resources = resources_for(settings)
    store = resources["store"].client()
    catalog = DatasetCatalog(root=str(settings.catalog_dir))
    labeling = {"kind": "table", "field": "row", "choices": ["x", "y"]}  # so the ids are left out
    catalog.register("v1", str(first), store=store, labeling=labeling, registered_at=T0)
    entry = catalog.register("v2", str(second), store=store, labeling=labeling, registered_at=T1,
                             validation=str(validation), gold=str(gold))
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("dataset_version", ["v2"])
        result = dg.materialize([ingest.raw_dataset, ingest.dataset_snapshot], partition_key="v2",
                                instance=instance, resources=resources)
    assert result.success
    cid, snapshot = (resources["lineage"].cid_of(activity, "v2") for activity in (INGEST, SNAPSHOT))
    return SimpleNamespace(entry=entry, result=result, cid=cid, record=load_record(store, cid), store=store,
                           catalog=catalog, snapshot=(snapshot, load_record(store, snapshot)))


def test_the_ingest_record_states_the_grouping_and_each_files_time(tmp_path, monkeypatch) -> None:
    from provenance import IngestRecord
    from storage import read_parquet

    v2 = ingested_v2(tmp_path, monkeypatch)
    entry, result, record, store = v2.entry, v2.result, v2.record, v2.store
    times = {f["name"]: f["registered_at"] for f in entry["sources"]}
    assert times == {"a.parquet": T0, "b.parquet": T0, "c.parquet": T0, "copycat.parquet": T1}
    # each file by name, CID, provider and time, and what labelers read: what a replay makes them from
    assert record.params["source_files"] == [
        {"name": f["name"], "cid": f["cid"], "provider": f["provider"], "registered_at": times[f["name"]]}
        for f in entry["sources"]
    ]
    assert record.params["labeling"] == entry["labeling"]  # and what the version declared with them
    assert record.params["validation"] == entry["validation"] and record.params["gold"] == entry["gold"]
    dup = record.params["duplicates"]
    assert dup["near"]["groups"] == 30 and dup["near"]["copies"] == 30 and dup["near"]["fraction"] == 0.25
    assert dup["near"]["threshold"] > 0 and "standardized" in dup["near"]["method"]
    assert dup["near"]["columns"] == ["f"] and dup["near"]["dimension"] > 3
    assert dup["exact"]["copies"] == 0 and dup["unpaid_providers"] == ["copycat"]
    assert "first-registered" in dup["rule"]
    credit = read_parquet(store.get(record.outputs[IngestRecord.EXAMPLE_CREDIT]))
    assert credit.schema == CREDIT_SCHEMA and "copycat" not in credit["provider"].to_pylist()
    metadata = result.asset_materializations_for_node("raw_dataset")[0].metadata
    assert metadata["unpaid_duplicate_providers"].value == ["copycat"]
    assert dup["near"]["copying_pairs"] == [{"providers": ["b", "copycat"], "links": 30}]
    said = (f"30 copies in 30 groups (threshold {dup['near']['threshold']}), compared on f; "
            "b and copycat copy one another (30 links)")
    assert metadata["near_duplicates"].value == said


@pytest.mark.parametrize("dim", [1, 2, 3, 5, 8])
def test_the_dimension_estimate_is_the_datas_own(dim) -> None:
    """Levina and Bickel's estimate, from distances found by scikit-learn's exact search, recovers the
    dimension of Gaussian points on a d-dimensional plane turned into 12 coordinates."""
    rng = np.random.default_rng(dim)
    basis = np.linalg.qr(rng.normal(size=(12, 12)))[0][:dim]
    points = rng.normal(size=(3000, dim)) @ basis
    distances = NearestNeighbors(n_neighbors=LOCAL_K + 1).fit(points).kneighbors(points)[0][:, 1:]
    assert local_dimension(distances) == pytest.approx(dim, rel=0.1)
    assert local_dimension(np.zeros((50, LOCAL_K))) == 0.0  # every example repeated: cannot be told


def test_few_features_link_copies_but_not_honest_neighbours() -> None:
    """Two numbers per example: honest neighbours are as close as lightly jittered copies, so the
    spacing rule alone would link many of them. The local rule links copies under a new id (same
    numbers) and leaves honest examples alone; the record states the dimension it saw."""
    rng = np.random.default_rng(11)
    centres = rng.normal(0, 4, (6, 2))
    honest = centres[rng.integers(0, 6, 1500)] + rng.normal(size=(1500, 2))  # clumpy, as real data is
    copied = honest[:120]
    table = pa.table({
        "id": [f"r{i}" for i in range(1620)],
        "x": [*honest[:, 0], *copied[:, 0]], "y": [*honest[:, 1], *copied[:, 1]],
        "provider": [*(("a", "b", "c")[i % 3] for i in range(1500)), *["copycat"] * 120],
    })
    table = table.append_column("source", pa.array([f"src-{p}" for p in table["provider"].to_pylist()]))
    TIMES["src-copycat"] = T1
    examples, report = to_examples(table, _times(table), Payload("table", "row"))
    near = report.grouping.near
    assert near["columns"] == ["x", "y"] and near["dimension"] == pytest.approx(2, rel=0.25)
    assert report.grouping.unpaid == ("copycat",)  # every copy found, under its new id
    credit = report.grouping.credit.to_pandas()
    grouped = set(credit.loc[credit["share"] < 1, "example_id"])
    owner = dict(zip(examples["example_id"].to_pylist(), examples["provider"].to_pylist(), strict=True))
    honest_grouped = [e for e in grouped if owner[e] != "copycat"]
    originals = {example_id({"id": f"r{i}", "x": float(x), "y": float(y)}) for i, (x, y) in enumerate(copied)}
    assert originals <= set(honest_grouped)
    others = [e for e in honest_grouped if e not in originals]
    z = (honest - honest.mean(0)) / honest.std(0)
    spacing_rule = int((pdist(z) < near["threshold"]).sum())  # honest pairs the spacing rule alone links
    assert len(others) <= 5 and spacing_rule > 30  # under 0.4 % of honest examples; spacing rule: 44 pairs


def _clumpy(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    return centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, centres.shape[1]))


def _few_feature_table(parts: dict[str, np.ndarray]) -> pa.Table:
    """Rows of two numbers (and a category the model reads) under fresh ids, one source per provider;
    the copycat's registered last."""
    names = [p for p, x in parts.items() for _ in range(len(x))]
    x = np.vstack(list(parts.values()))
    table = pa.table({"id": [f"r{i}" for i in range(len(x))], "x": x[:, 0], "y": x[:, 1],
                      "plan": ["basic" if v > 0 else "pro" for v in x[:, 0]], "provider": names})
    TIMES["src-copycat"] = T1
    return table.append_column("source", pa.array([f"src-{p}" for p in names]))


def _copier_in_few_dimensions(seed: int, taken: dict[str, int], own: int = 0):
    """Clumpy two-number rows of four honest providers, and a copier ("copycat", registered last) of
    the first ``taken[p]`` rows of each provider p, jittered by 1 % of a feature's deviation (about a
    third of the spacing between honest neighbours), then ``own`` rows of its own. Returns the examples,
    the ingest report and each copier row's payees, in order."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (6, 2))
    honest = {p: _clumpy(rng, n, centres) for p, n in (("a", 700), ("b", 400), ("c", 250), ("d", 120))}
    copied = np.vstack([honest[p][:k] for p, k in taken.items()])
    rows = [copied + rng.normal(size=copied.shape) * 0.01 * np.vstack(list(honest.values())).std(0)]
    if own:
        rows.append(_clumpy(rng, own, centres))
    table = _few_feature_table({**honest, "copycat": np.vstack(rows)})
    examples, report = to_examples(table, _times(table), Payload("table", "row"))
    paid = report.grouping.credit.to_pandas().groupby("example_id")["provider"].agg(set).to_dict()
    by_id = {r["id"]: r["example_id"] for r in examples.select(["id", "example_id"]).to_pylist()}
    start = sum(len(x) for x in honest.values())
    return examples, report, [paid[by_id[f"r{start + i}"]] for i in range(len(copied) + own)]


def test_only_few_dimensions_are_said_to_hide_a_light_copy() -> None:
    """The summary says what grouping cannot see where the data shows under 3.5 dimensions, and only
    there: text and image records, and data whose dimension could not be told, name none."""
    near = {"dimension": 2.07792, "local_ratio": 0.0125032, "local_k": 10}
    assert few_dimensions(near) == (
        "in 2.1 dimensions a light copy sits as far from its original as honest neighbours do: one copy "
        "alone is grouped only within 0.013 x its distance to its 10th nearest example of another provider, "
        "a copier of many as a pair")
    assert few_dimensions({**near, "dimension": 3.5}) == few_dimensions({**near, "dimension": 0.0}) == ""
    assert few_dimensions({"method": "text", "threshold": 0.2}) == ""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_copier_in_few_dimensions_is_found_as_a_pair(seed) -> None:
    """Two numbers per example: copies jittered by 1 % of a feature's deviation are no closer to their
    originals than many honest neighbours are to each other, so few copies can be linked on their own;
    but the copier's examples sit that close to one provider's far more often than anyone's do. The pair
    is found, the copies are credited to the provider they copy, and neither the copier's own rows nor
    the honest providers' are taken for copies."""
    examples, report, payees = _copier_in_few_dimensions(seed, {"b": 300}, own=100)
    near = report.grouping.near
    assert near["dimension"] < 3.5
    assert [p["providers"] for p in near["copying_pairs"]] == [["b", "copycat"]]
    links = near["copying_pairs"][0]["links"]
    said = report.grouping.near_summary()
    assert said.endswith(f"a copier of many as a pair; b and copycat copy one another ({links} links)")
    assert f"compared on plan, x, y; in {near['dimension']:.2g} dimensions a light copy sits as far" in said
    assert f"only within {near['local_ratio']:.2g} x its distance to its 10th nearest" in said
    copies, owns = payees[:300], payees[300:]
    assert sum(s == {"b"} for s in copies) >= 0.8 * len(copies)  # credited to the original's provider
    assert sum(s == {"copycat"} for s in owns) >= 0.9 * len(owns)  # its own rows stay its own
    credit = report.grouping.credit.to_pandas()
    grouped = set(credit.loc[credit["share"] < 1, "example_id"])
    strangers = [e for p in ("a", "c", "d") for e, o in zip(examples["example_id"].to_pylist(),
                 examples["provider"].to_pylist(), strict=True) if o == p and e in grouped]
    assert len(strangers) <= 0.01 * (700 + 250 + 120)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_copier_of_two_providers_is_found_with_each(seed) -> None:
    """Half the copies from one provider, half from another: each pair is found, the one copier's
    matches to the other kept out of the honest reference each pair is tested against."""
    _, report, sources = _copier_in_few_dimensions(seed, {"b": 150, "c": 150})
    pairs = report.grouping.near["copying_pairs"]
    assert [p["providers"] for p in pairs] == [["b", "copycat"], ["c", "copycat"]]
    assert sum(s == {"b"} for s in sources[:150]) >= 112 and sum(s == {"c"} for s in sources[150:]) >= 112


@pytest.mark.parametrize("seed", [2, 12, 15])
def test_a_copier_of_every_provider_is_found_with_several(seed) -> None:
    """A fifth of each of four providers' rows copied: the copier makes a pair with each, and each
    swells the reference the others are tested against, so none was found at these seeds (2 % of the
    copies grouped) until the pairs already suspect were left out of it."""
    taken = {"a": 140, "b": 80, "c": 50, "d": 24}
    _, report, payees = _copier_in_few_dimensions(seed, taken)
    pairs = [p["providers"] for p in report.grouping.near["copying_pairs"]]
    assert len(pairs) >= 2 and all("copycat" in p for p in pairs)
    copied = [p for p, k in taken.items() for _ in range(k)]
    assert sum(s == {p} for s, p in zip(payees, copied, strict=True)) >= 0.6 * len(copied)


@pytest.mark.parametrize("seed", [36, 37, 38])
def test_three_honest_providers_beside_a_flood_are_no_copying_pair(seed) -> None:
    """The suspect pairs left out of the reference may not be most of it: three honest providers'
    pairs all suspect beside a flood (whose copies are rarely anyone's mutual nearest) left the flood
    alone as the reference, and at seed 37 two honest providers were taken for a copier and its
    source."""
    rng = np.random.default_rng(seed)
    dim = 2 + seed % 2
    centres = rng.normal(0, 4, (6, dim))
    parts = {p: _clumpy(rng, n, centres) for p, n in (("a", 600), ("b", 450), ("c", 300))}
    parts["flooder"] = np.repeat(_clumpy(rng, 5, centres), 40, axis=0) + rng.normal(size=(200, dim)) * 0.02
    names = [p for p, x in parts.items() for _ in range(len(x))]
    x = np.vstack(list(parts.values()))
    table = pa.table({"id": [f"r{i}" for i in range(len(x))], **{f"f{j}": x[:, j] for j in range(dim)},
                      "provider": names})
    table = table.append_column("source", pa.array([f"src-{p}" for p in names]))
    _, report = to_examples(table, _times(table), Payload("table", "row"))
    assert report.grouping.near["copying_pairs"] == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_honest_providers_in_few_dimensions_are_no_copying_pair(seed) -> None:
    """Providers sampling the same clumpy two-number data, one of them on a coarse grid (ties), and a
    flood of near-copies of five rows: no pair of providers is taken for a copier and its source, and the
    flood is not merged into the honest examples nearest it."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (6, 2))
    parts = {p: _clumpy(rng, n, centres) for p, n in (("a", 700), ("b", 400), ("c", 250), ("d", 60))}
    parts["c"] = np.round(parts["c"] * 4) / 4
    seeds = _clumpy(rng, 5, centres)
    parts["flooder"] = np.repeat(seeds, 40, axis=0) + rng.normal(size=(200, 2)) * 0.02
    table = _few_feature_table(parts)
    examples, report = to_examples(table, _times(table), Payload("table", "row"))
    assert report.grouping.near["copying_pairs"] == []
    credit = report.grouping.credit.to_pandas()
    owner = dict(zip(examples["example_id"].to_pylist(), examples["provider"].to_pylist(), strict=True))
    payees = credit.groupby("example_id")["provider"].agg(set)
    assert all(payees[e] == {"flooder"} for e, o in owner.items() if o == "flooder")
    shared = [e for e, o in owner.items() if o != "flooder" and payees[e] != {o}]
    # the chance HONEST_LINK allows each honest example: 1.4 expected were the data uniform; a clump
    # found in one example (a jump rare in two dimensions) moved the dimension by 0.07 % and one pair
    # 0.0024 apart crossed its link (seed 1: 6)
    assert len(shared) <= 6
