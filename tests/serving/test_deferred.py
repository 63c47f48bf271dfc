"""Deferred attribution: a prediction is answered and charged at once with split "pending", its input
stored with the receipt; draining fills each split once, with the bps the synchronous path gives;
no epoch ever holds a pending receipt. On both ledger engines."""

from __future__ import annotations

import base64
import hashlib
import sqlite3

import pytest
from fastapi.testclient import TestClient

from serving import (
    API_KEY_HEADER,
    SPLIT_PENDING,
    Ledger,
    LedgerError,
    SettlementError,
    create_app,
    drain,
    load_run,
    settle_run,
    verify_epoch,
)
from serving.deferred import fills
from serving.ledger import Charge, Fill
from serving.sample import build_sample_run

PRICE = 1_000_003


@pytest.fixture(scope="module", params=["numeric", "text", "image"])
def served(request, world):
    """(inputs as JSON values, the loaded run) of a numeric, a text and an image run."""
    if request.param == "numeric":
        return world.run.X_test[:8].tolist(), world.served
    run = build_sample_run(world.store, world.chain, n=96, seed=5, kind=request.param)
    values = list(run.inputs[:8])
    if run.kind == "image":
        values = [{"image_base64": base64.b64encode(v).decode()} for v in values]
    return values, load_run(world.chain, world.store, run.run_id)


def client(run, ledger: Ledger, attribution: str) -> tuple[TestClient, dict[str, str], str]:
    key_id, secret = ledger.create_key("user", balance=100 * PRICE)
    app = create_app(run, ledger, price=PRICE, max_batch=8, attribution=attribution)
    return TestClient(app), {API_KEY_HEADER: secret}, key_id


def paid(client_: TestClient, headers: dict[str, str], body: dict) -> list[dict]:
    r = client_.post("/v1/predict", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def receipts(client_: TestClient, headers: dict[str, str], preds: list[dict]) -> list[dict]:
    return [client_.get(f"/v1/receipts/{p['receipt_id']}", headers=headers).json() for p in preds]


def test_a_pending_receipt_is_filled_once(world, target):
    ledger = Ledger(target)
    c, headers, key_id = client(world.served, ledger, "deferred")
    (pred,) = paid(c, headers, {"input": world.run.X_test[0].tolist()})
    assert pred["split"] == SPLIT_PENDING and pred["top_contributors"] == []
    (before,) = receipts(c, headers, [pred])
    assert before["split"] == SPLIT_PENDING and before["amounts"] == [] and before["bps"] == []
    assert ledger.key(key_id).balance == 99 * PRICE  # charged at once
    assert ledger.pending_count(world.run.run_id) == 1
    done = drain(world.served, ledger)
    assert (done.receipts, done.requests) == (1, 1)
    (after,) = receipts(c, headers, [pred])
    assert after["split"] in ("query", "run") and sum(a["amount"] for a in after["amounts"]) == PRICE
    assert sum(b["bps"] for b in after["bps"]) == 10_000
    assert ledger.pending_count() == 0 and drain(world.served, ledger).receipts == 0
    # a second drainer holding the same pending rows fills nothing twice
    again = [Fill(pred["receipt_id"], "run", world.served.run_bps, ((world.served.run_bps[0][0], PRICE),))]
    assert ledger.attribute(again) == 0
    assert receipts(c, headers, [pred]) == [after]
    ledger.close()


def test_deferred_splits_equal_the_synchronous_ones(served, ledger, tmp_path):
    values, run = served
    sync = Ledger(tmp_path / "sync.sqlite", synchronous="NORMAL")
    bodies = [{"input": values[0]}, {"input": values[1]}, {"inputs": values[2:7]}]
    got = {}
    for mode, where in (("sync", sync), ("deferred", ledger)):
        c, headers, _ = client(run, where, mode)
        preds = [p for body in bodies for p in paid(c, headers, body)]
        if mode == "deferred":
            assert {p["split"] for p in preds} == {SPLIT_PENDING}
            assert drain(run, where).receipts == len(preds) == 7
        got[mode] = [
            {k: r[k] for k in ("input_hash", "output", "split", "bps", "amounts")}
            for r in receipts(c, headers, preds)
        ]
    assert got["deferred"] == got["sync"]
    assert any(r["split"] == "query" for r in got["sync"])


def test_a_wrong_input_is_refused_free_and_stores_nothing(served, ledger):
    values, run = served
    c, headers, key_id = client(run, ledger, "deferred")
    wrong = "some text" if run.kind != "text" else [1.0, 2.0]
    r = c.post("/v1/predict", json={"input": wrong}, headers=headers)
    assert r.status_code == 422 and "error" in r.json()
    assert ledger.key(key_id).balance == 100 * PRICE and ledger.receipt_ids() == []
    assert ledger.pending_count() == 0


def test_an_epoch_never_holds_a_pending_receipt(world, target):
    ledger = Ledger(target)
    c, headers, _ = client(world.served, ledger, "deferred")
    paid(c, headers, {"inputs": world.run.X_test[:3].tolist()})
    head = world.run.head
    assert ledger.close_epoch(world.run.run_id, head) is None  # only pending receipts: nothing to close
    with pytest.raises(SettlementError, match="caravan attribute"):
        settle_run(world.chain, world.store, ledger, world.run.run_id, drain=False)
    assert ledger.epochs() == [] and ledger.pending_count() == 3
    settled = settle_run(world.chain, world.store, ledger, world.run.run_id)  # drains first
    assert settled is not None and settled.n_receipts == 3 and ledger.pending_count() == 0
    assert settled.total == 3 * PRICE
    assert verify_epoch(world.chain, world.store, settled.epoch_id).ok
    ledger.close()


def test_a_charge_is_pending_with_its_input_or_final_with_amounts(world, ledger):
    key_id, _ = ledger.create_key("t", balance=10 * PRICE)
    args = (key_id, world.run.run_id, world.served.model_cid, PRICE)
    for bad in (
        Charge("h" * 64, "a", 0.5, SPLIT_PENDING, (), ()),  # no input
        Charge("h" * 64, "a", 0.5, SPLIT_PENDING, world.served.run_bps, (), b"x"),  # bps already
    ):
        with pytest.raises(LedgerError):
            ledger.charge(*args, [bad])
    assert ledger.receipt_ids() == [] and ledger.key(key_id).balance == 10 * PRICE
    [pred] = world.served.predict(world.run.X_test[:1], defer=True)
    charged = ledger.charge(*args, [Charge(pred.input_hash, pred.label, pred.probability, pred.split, (), (),
                                           pred.payload)])
    [pending] = ledger.pending(world.run.run_id)
    assert pending.payload == pred.payload and pending.receipt_id == charged.receipts[0].receipt_id
    [fill], [] = fills(world.served, [pending])
    with pytest.raises(LedgerError, match="sum to its price"):  # nothing written: still pending
        ledger.attribute([Fill(fill.receipt_id, fill.split, fill.bps, ((fill.bps[0][0], 1),))])
    assert ledger.pending_count() == 1 and ledger.receipt(fill.receipt_id).split == SPLIT_PENDING
    edited = pending.__class__(**{**pending.__dict__, "payload": pending.payload[:-1] + b"\0"})
    [fallback], [why] = fills(world.served, [edited])  # never attributed from an altered input
    assert (fallback.split, fallback.bps) == ("run", world.served.run_bps) and "does not hash" in why
    assert ledger.attribute([fill]) == 1 and ledger.pending(world.run.run_id) == []


def test_an_input_that_cannot_be_attributed_is_paid_by_the_run_weights_and_holds_up_nothing(world, target):
    ledger = Ledger(target)
    key_id, _ = ledger.create_key("t", balance=10 * PRICE)
    args = (key_id, world.run.run_id, world.served.model_cid, PRICE)
    preds = world.served.predict(world.run.X_test[:2], defer=True)
    # the first request's stored label is not one of the run's classes: its attribution fails for good
    charges = [ledger.charge(*args, [Charge(p.input_hash, label, p.probability, p.split, (), (), p.payload)])
               for p, label in zip(preds, ["no-such-class", preds[1].label], strict=True)]
    bad, good = (c.receipts[0].receipt_id for c in charges)
    done = drain(world.served, ledger, requests=1)  # the bad one alone in the first batch
    assert (done.receipts, done.requests) == (2, 2) and ledger.pending_count() == 0
    [why] = done.fallbacks
    assert why.startswith(f"receipt {bad}:") and "not one of the run's classes" in why
    assert ledger.receipt(bad).split == "run" and ledger.receipt(bad).bps == world.served.run_bps
    assert sum(a for _, a in ledger.receipt(bad).amounts) == PRICE
    [sync] = world.served.predict(world.run.X_test[1:2])  # what the good one is paid, as if synchronous
    assert (ledger.receipt(good).split, ledger.receipt(good).bps) == (sync.split, sync.bps)
    ledger.close()


def _stored_inputs(target) -> list[bytes]:
    """The raw bytes the database holds in pending_inputs (what anyone reading it sees)."""
    if isinstance(target, str):
        import psycopg

        with psycopg.connect(target) as db:
            return [bytes(r[0]) for r in db.execute("SELECT payload FROM pending_inputs").fetchall()]
    with sqlite3.connect(target) as db:
        return [bytes(r[0]) for r in db.execute("SELECT payload FROM pending_inputs").fetchall()]


def test_pending_inputs_are_sealed_at_rest_with_the_input_key(world, target):
    key = bytes(range(32))
    ledger = Ledger(target, input_key=key)
    key_id, _ = ledger.create_key("t", balance=10 * PRICE)
    args = (key_id, world.run.run_id, world.served.model_cid, PRICE)
    preds = world.served.predict(world.run.X_test[:3], defer=True)
    ledger.charge(*args, [Charge(p.input_hash, p.label, p.probability, p.split, (), (), p.payload)
                          for p in preds])
    stored = _stored_inputs(target)
    assert len(stored) == 3 and not any(p.payload in s for p in preds for s in stored)
    assert [p.payload for p in ledger.pending(world.run.run_id)] == [p.payload for p in preds]
    # without the key, or with another, nothing is attributed (no run split for good), and it says why
    for other in (None, bytes(32)):
        blind = Ledger(target, input_key=other)
        with pytest.raises(LedgerError, match="CARAVAN_LEDGER_INPUT_KEY"):
            drain(world.served, blind)
        assert blind.pending_count() == 3
        blind.close()
    done = drain(world.served, ledger)
    assert done.receipts == 3 and not done.fallbacks and ledger.pending_count() == 0
    ledger.close()


def test_an_input_that_looks_sealed_is_kept_as_it_is_without_a_key(world, ledger):
    key_id, _ = ledger.create_key("t", balance=10 * PRICE)
    payload = b"cvn-sealed/1:" + bytes(40)  # a user's input may start with the marker
    charge = Charge(hashlib.sha256(payload).hexdigest(), "x", 0.5, SPLIT_PENDING, (), (), payload)
    ledger.charge(key_id, world.run.run_id, world.served.model_cid, PRICE, [charge])
    [pending] = ledger.pending(world.run.run_id)
    assert (pending.payload, pending.problem) == (payload, None)


def test_a_malformed_input_key_is_refused_by_name():
    from serving.ledger import input_key_from_env

    assert input_key_from_env({}) is None
    assert input_key_from_env({"CARAVAN_LEDGER_INPUT_KEY": "ab" * 32}) == bytes([0xAB]) * 32
    for bad in ("ab" * 31, "zz" * 32):
        with pytest.raises(LedgerError, match="64 hex characters"):
            input_key_from_env({"CARAVAN_LEDGER_INPUT_KEY": bad})
    with pytest.raises(LedgerError, match="32 bytes"):
        Ledger(":memory:", input_key=b"short")


def test_a_ledger_opened_from_the_environment_seals_inputs_when_the_key_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("CARAVAN_LEDGER_INPUT_KEY", raising=False)
    assert not Ledger.from_env(tmp_path / "plain.sqlite").seals_inputs
    monkeypatch.setenv("CARAVAN_LEDGER_INPUT_KEY", "cd" * 32)
    assert Ledger.from_env(tmp_path / "sealed.sqlite").seals_inputs
