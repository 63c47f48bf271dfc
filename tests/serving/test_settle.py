"""Settlement on a real anvil: crash between any two steps, rerun, each receipt paid exactly once."""

from __future__ import annotations

import pytest
from eth_account import Account

from provenance import Chain, TransactionError
from serving import Ledger, epoch_claim, settle_run, verify_epoch
from serving.ledger import Charge
from serving.settle import STATES


class Crash(Exception):
    pass


def pay(world, ledger: Ledger, n: int, price: int = 999_999_937) -> None:
    key_id, _ = ledger.create_key("t", balance=n * price)
    from serving.fees import split_price

    items = [
        Charge(p.input_hash, p.label, p.probability, p.split, p.bps, tuple(split_price(price, p.bps)))
        for p in world.served.predict(world.run.X_test[:n])
    ]
    ledger.charge(key_id, world.run.run_id, world.served.model_cid, price, items)


@pytest.mark.parametrize("crash_after", STATES[1:])
def test_crash_after_each_step_then_rerun_pays_once(world, ledger, crash_after):
    pay(world, ledger, 5)

    def boom(state: str) -> None:
        if state == crash_after:
            raise Crash(state)

    with pytest.raises(Crash):
        settle_run(world.chain, world.store, ledger, world.run.run_id, after_step=boom)
    pay(world, ledger, 3)  # arrive while the first epoch is unfinished: they wait for the next one
    while settle_run(world.chain, world.store, ledger, world.run.run_id) is not None:
        pass
    epochs = ledger.epochs()
    assert [(e.n_receipts, e.state) for e in epochs] == [(5, "closed"), (3, "closed")]
    for e in epochs:
        dist = world.chain.distribution(e.epoch_id)
        assert dist.deposited == e.total == dist.total_weight
        assert verify_epoch(world.chain, world.store, e.epoch_id).ok
        assert verify_epoch(world.chain, world.store, e.record_cid).ok
    ids = [r.receipt_id for e in epochs for r in ledger.epoch_receipts(e.epoch_id)]
    assert len(set(ids)) == len(ids) == 8 == len(ledger.receipt_ids())


def test_claims_pay_each_contributor_once(world, ledger, anvil):
    pay(world, ledger, 4)
    s = settle_run(world.chain, world.store, ledger, world.run.run_id)
    address, amount = s.payouts[0]
    claimer = Chain(
        world.chain.rpc_url, account=Account.from_key(anvil.dev_keys[5]), chain_dir=world.chain.chain_dir
    )
    before = world.chain.w3.eth.get_balance(address)
    _, paid = epoch_claim(claimer, world.store, s.epoch_id, address)
    assert paid == amount and world.chain.w3.eth.get_balance(address) == before + amount
    with pytest.raises(TransactionError, match="NothingToClaim"):
        epoch_claim(claimer, world.store, s.epoch_id, address)
    assert verify_epoch(world.chain, world.store, s.epoch_id).claimed == amount


def test_verify_catches_a_forged_batch(world, ledger):
    import pyarrow as pa

    from provenance import Record, load_record, put_record
    from storage import read_parquet, snapshot_parquet

    pay(world, ledger, 3)
    s = settle_run(world.chain, world.store, ledger, world.run.run_id)
    record = load_record(world.store, s.record_cid)
    batch = read_parquet(world.store.get(s.batch_cid)).to_pylist()
    batch[0]["amounts"] = [v + (1 if i == 0 else 0) for i, v in enumerate(batch[0]["amounts"])]
    forged_cid = world.store.put_bytes(
        snapshot_parquet(
            pa.Table.from_pylist(batch, read_parquet(world.store.get(s.batch_cid)).schema),
            sort_by="receipt_id",
        ),
        cid_version=1,
    )
    forged = Record(
        **{
            **{
                k: getattr(record, k)
                for k in (
                    "activity",
                    "agent",
                    "started_at",
                    "ended_at",
                    "code",
                    "outputs",
                    "parents",
                    "params",
                )
            },
            "inputs": {"receipts": forged_cid},
        }
    )
    report = verify_epoch(world.chain, world.store, put_record(world.store, forged))
    assert not report.ok
    assert {"receipt_amounts", "record_not_on_chain"} <= report.names()
