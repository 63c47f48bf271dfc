"""Loading a published run: refuses runs that are not anchored; predictions split fees exactly."""

from __future__ import annotations

import numpy as np
import pytest

from serving import SPLIT_QUERY, RunNotServable, load_run, split_price


def test_loads_published_run_and_predicts(world):
    served = world.served
    assert served.n_features == 6
    out = served.predict(world.run.X_test[:8])
    assert len(out) == 8
    assert {p.label for p in out} <= {"a", "b", "c"}
    for p in out:
        assert sum(b for _, b in p.bps) == 10_000
        assert set(a for a, _ in p.bps) <= set(world.run.addresses.values())
    assert any(p.split == SPLIT_QUERY for p in out)
    # per-prediction attribution: different inputs give different splits
    assert len({p.bps for p in out}) > 1
    amounts = split_price(10**12 + 7, list(out[0].bps))
    assert sum(v for _, v in amounts) == 10**12 + 7


def test_same_input_same_hash_and_split(world):
    a = world.served.predict(world.run.X_test[:1])[0]
    b = world.served.predict(world.run.X_test[:1].copy())[0]
    assert a == b


def test_unknown_run_is_refused(world):
    with pytest.raises(RunNotServable, match="not servable"):
        load_run(world.chain, world.store, "no-such-run")


def test_run_without_root_is_refused(world, tmp_path):
    from provenance import Chain

    fresh = Chain(world.chain.rpc_url, account=world.chain.account, chain_dir=tmp_path / "chain")
    fresh.deploy()  # new contracts: the run's records and root are not there
    with pytest.raises(RunNotServable):
        load_run(fresh, world.store, world.run.run_id)


def test_bad_rows_are_refused(world):
    from attribution import InputError

    with pytest.raises(InputError):
        world.served.predict(np.full((1, 6), np.nan))


def test_batched_attribution_equals_attribute_query(world):
    from attribution import attribute_query

    served = world.served
    x = served.encoding.scale(world.run.X_test[:4])
    labels = served.predict(world.run.X_test[:4])
    batch = served.features.scores(x, [served.encoding.classes.index(p.label) for p in labels])
    for i in range(4):
        one = attribute_query(served.features, x[i], served.encoding.classes.index(labels[i].label))
        np.testing.assert_allclose(batch[:, i], one, rtol=1e-4, atol=1e-6 * np.abs(one).max())
    assert [p.bps for p in served.predict(world.run.X_test[:4])] == [
        served.predict(world.run.X_test[i : i + 1])[0].bps for i in range(4)
    ]
