"""The ledger: hashed keys, atomic charges, refusals change nothing, epochs take each receipt once."""

from __future__ import annotations

import sqlite3

import pytest

from serving import InsufficientBalance, Ledger, LedgerError, RevokedKey, UnknownKey
from serving.ledger import Charge

BPS = (
    ("0x00000000000000000000000000000000000000aa", 6000),
    ("0x00000000000000000000000000000000000000bb", 4000),
)


def charge(amounts=((BPS[0][0], 6), (BPS[1][0], 4))) -> Charge:
    return Charge("h" * 64, "a", 0.9, "query", BPS, amounts)


def test_secret_is_stored_only_as_hash(ledger: Ledger):
    key_id, secret = ledger.create_key("alice", balance=100)
    dump = "\n".join(sqlite3.connect(ledger.path).iterdump())
    assert secret not in dump and secret.split("_")[-1] not in dump
    assert ledger.authenticate(secret).key_id == key_id
    with pytest.raises(UnknownKey):
        ledger.authenticate(secret + "x")


def test_charge_debits_and_writes_receipts(ledger: Ledger):
    key_id, _ = ledger.create_key("alice", balance=25)
    receipts = ledger.charge(key_id, "run", "cid", 10, [charge(), charge()])
    assert ledger.key(key_id).balance == 5
    assert [ledger.receipt(r.receipt_id) for r in receipts] == receipts
    with pytest.raises(InsufficientBalance):
        ledger.charge(key_id, "run", "cid", 10, [charge()])
    assert ledger.key(key_id).balance == 5 and len(ledger.receipt_ids()) == 2


def test_revoked_key_and_bad_amounts_charge_nothing(ledger: Ledger):
    key_id, secret = ledger.create_key("bob", balance=100)
    with pytest.raises(LedgerError, match="sum to its price"):
        ledger.charge(key_id, "run", "cid", 10, [charge(((BPS[0][0], 9),))])
    ledger.revoke(key_id)
    with pytest.raises(RevokedKey):
        ledger.authenticate(secret)
    with pytest.raises(RevokedKey):
        ledger.charge(key_id, "run", "cid", 10, [charge()])
    assert ledger.key(key_id).balance == 100 and ledger.receipt_ids() == []
    with pytest.raises(LedgerError):
        ledger.topup(key_id, -5)
    with pytest.raises(UnknownKey):
        ledger.topup("nope", 5)


def test_epochs_take_each_receipt_once(ledger: Ledger):
    key_id, _ = ledger.create_key("alice", balance=1000)
    ledger.charge(key_id, "run", "cid", 10, [charge()] * 3)
    first = ledger.close_epoch("run", "head")
    assert first.n_receipts == 3 and first.total == 30
    ledger.charge(key_id, "run", "cid", 10, [charge()])
    assert ledger.close_epoch("run", "head") == first  # unfinished epoch is resumed, not replaced
    ledger.update_epoch(first.epoch_id, state="closed")
    second = ledger.close_epoch("run", "head")
    assert second.n_receipts == 1 and second.epoch_id != first.epoch_id
    ledger.update_epoch(second.epoch_id, state="closed")
    assert ledger.close_epoch("run", "head") is None
    assert len(ledger.epoch_receipts(first.epoch_id)) + len(ledger.epoch_receipts(second.epoch_id)) == 4
