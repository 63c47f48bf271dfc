"""The ledger on SQLite and on a real PostgreSQL server: hashed keys, atomic charges, refusals change
nothing, epochs take each receipt once, concurrent charges never overdraw, shared rate limits."""

from __future__ import annotations

import multiprocessing
import random
import signal
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serving import InsufficientBalance, Ledger, LedgerError, RevokedKey, UnknownKey
from serving.ledger import MAX_AMOUNT, Charge

BPS = (
    ("0x00000000000000000000000000000000000000aa", 6000),
    ("0x00000000000000000000000000000000000000bb", 4000),
)


@pytest.fixture
def ledger(target: Path | str) -> Iterator[Ledger]:
    with Ledger(target, synchronous="NORMAL") as ledger:
        yield ledger


def charge(amounts=((BPS[0][0], 6), (BPS[1][0], 4))) -> Charge:
    return Charge("h" * 64, "a", 0.9, "query", BPS, amounts)


def dump(target: Path | str) -> str:
    """Every stored row, read around the ledger."""
    if isinstance(target, Path):
        return "\n".join(sqlite3.connect(target).iterdump())
    import psycopg

    with psycopg.connect(target) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")]
        return "\n".join(str(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"'))


def test_secret_is_stored_only_as_hash(ledger: Ledger, target):
    key_id, secret = ledger.create_key("alice", balance=100)
    stored = dump(target)
    random_part = secret.removeprefix(f"cvn_{key_id}_")  # token_urlsafe may itself hold "_"
    assert random_part != secret and len(random_part) >= 40
    assert key_id in stored and secret not in stored and random_part not in stored
    assert ledger.authenticate(secret).key_id == key_id
    with pytest.raises(UnknownKey):
        ledger.authenticate(secret + "x")


def test_charge_debits_and_writes_receipts(ledger: Ledger):
    key_id, _ = ledger.create_key("alice", balance=25)
    charged = ledger.charge(key_id, "run", "cid", 10, [charge(), charge()])
    receipts = charged.receipts
    assert ledger.key(key_id).balance == 5 == charged.balance
    assert [ledger.receipt(r.receipt_id) for r in receipts] == receipts
    with pytest.raises(InsufficientBalance):
        ledger.charge(key_id, "run", "cid", 10, [charge()])
    assert ledger.key(key_id).balance == 5 and len(ledger.receipt_ids()) == 2
    assert ledger.fees_accrued() == 20 and ledger.receipt_owner(receipts[0].receipt_id) == key_id


def test_revoked_key_and_bad_amounts_charge_nothing(ledger: Ledger):
    key_id, secret = ledger.create_key("bob", balance=100)
    with pytest.raises(LedgerError, match="sum to its price"):
        ledger.charge(key_id, "run", "cid", 10, [charge(((BPS[0][0], 9),))])
    ledger.revoke(key_id)
    ledger.revoke(key_id)  # again: a no-op
    with pytest.raises(RevokedKey):
        ledger.authenticate(secret)
    with pytest.raises(RevokedKey):
        ledger.charge(key_id, "run", "cid", 10, [charge()])
    with pytest.raises(UnknownKey):
        ledger.charge("nope", "run", "cid", 10, [charge()])
    assert ledger.key(key_id).balance == 100 and ledger.receipt_ids() == []
    with pytest.raises(LedgerError):
        ledger.topup(key_id, -5)
    with pytest.raises(UnknownKey):
        ledger.topup("nope", 5)
    with pytest.raises(UnknownKey):
        ledger.revoke("nope")


def test_amounts_stay_below_2_63(ledger: Ledger):
    key_id, _ = ledger.create_key("rich", balance=MAX_AMOUNT - 5)
    assert ledger.topup(key_id, 5) == MAX_AMOUNT
    with pytest.raises(LedgerError, match="exceed"):
        ledger.topup(key_id, 1)
    with pytest.raises(LedgerError, match="integer in 0.."):
        ledger.create_key("over", balance=MAX_AMOUNT + 1)
    big = 2**62
    item = charge(((BPS[0][0], big),))
    with pytest.raises(InsufficientBalance):  # 2 x 2**62 overflows: no balance can cover it
        ledger.charge(key_id, "run", "cid", big, [item, item])
    assert ledger.key(key_id).balance == MAX_AMOUNT and ledger.receipt_ids() == []
    (receipt,) = ledger.charge(key_id, "run", "cid", big, [item]).receipts
    assert ledger.key(key_id).balance == MAX_AMOUNT - big and ledger.receipt(receipt.receipt_id).price == big


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
    assert [e.epoch_id for e in ledger.epochs()] == [first.epoch_id, second.epoch_id]


def test_a_second_ledger_object_sees_the_same_state(ledger: Ledger, target):
    key_id, secret = ledger.create_key("alice", balance=50)
    with Ledger(target, synchronous="NORMAL") as other:
        assert other.ledger_id == ledger.ledger_id
        other.charge(key_id, "run", "cid", 10, [charge()])
        assert other.authenticate(secret).balance == 40
    assert ledger.key(key_id).balance == 40 and len(ledger.receipt_ids()) == 1


# ---- concurrency: several processes, each with threads, charge one key ----------------------------

PRICE = 10
BALANCE = 150 * PRICE  # room for 150 predictions; the workers try about 480


def _charge_many(target: Path | str, key_id: str, seed: int) -> tuple[list[str], int]:
    """One worker process: two threads, each 40 charges of 1-3 predictions; (receipt ids, refusals)."""

    def thread(seed: int) -> tuple[list[str], int]:
        rng, got, refused = random.Random(seed), [], 0
        for _ in range(40):
            try:
                items = [charge()] * rng.randint(1, 3)
                got += [r.receipt_id for r in ledger.charge(key_id, "run", "cid", PRICE, items).receipts]
            except InsufficientBalance:
                refused += 1
        return got, refused

    with Ledger(target, synchronous="NORMAL") as ledger, ThreadPoolExecutor(2) as pool:
        results = list(pool.map(thread, (seed * 10, seed * 10 + 1)))
    return [r for got, _ in results for r in got], sum(n for _, n in results)


def test_concurrent_charges_never_overdraw_lose_or_duplicate(ledger: Ledger, target):
    key_id, _ = ledger.create_key("shared", balance=BALANCE)
    # spawn, not fork: a child forked while the parent's connection-pool threads hold a lock can hang.
    # The workers take SIGTERM's default whatever this process has (an ignored signal survives exec,
    # and the pool's terminate() at the end would then wait forever: tests/conftest.py says when).
    restore = (signal.SIGTERM, signal.SIG_DFL)
    with multiprocessing.get_context("spawn").Pool(3, initializer=signal.signal, initargs=restore) as pool:
        results = pool.starmap(_charge_many, [(target, key_id, seed) for seed in range(3)])
    charged = [r for got, _ in results for r in got]
    stored = ledger.receipt_ids()
    assert sum(n for _, n in results) > 0  # the balance really ran out under contention
    assert len(set(charged)) == len(charged) and sorted(stored) == sorted(charged)
    balance = ledger.key(key_id).balance
    assert balance >= 0 and balance + PRICE * len(stored) == BALANCE
    assert balance < 3 * PRICE  # refusals only once it could no longer cover a call
    assert ledger.fees_accrued() == PRICE * len(stored)


def test_epochs_closed_while_charging_take_each_receipt_once(ledger: Ledger):
    key_id, _ = ledger.create_key("busy", balance=10**9)
    stop = threading.Event()

    def keep_charging() -> None:
        while not stop.is_set():
            ledger.charge(key_id, "run", "cid", PRICE, [charge()] * 2)

    threads = [threading.Thread(target=keep_charging) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(8):
            epoch = ledger.close_epoch("run", "head")
            if epoch is not None:
                ledger.update_epoch(epoch.epoch_id, state="closed")
    finally:
        stop.set()
        for t in threads:
            t.join()
    last = ledger.close_epoch("run", "head")
    epochs = ledger.epochs()
    assert last is None or last.epoch_id == epochs[-1].epoch_id
    for e in epochs:  # each epoch's count and total are exactly its receipts
        receipts = ledger.epoch_receipts(e.epoch_id)
        assert (e.n_receipts, e.total) == (len(receipts), sum(r.price for r in receipts))
    assert sum(e.n_receipts for e in epochs) == len(ledger.receipt_ids())


# ---- rate limits ---------------------------------------------------------------------------------


def test_rate_limit_is_a_token_bucket_shared_by_ledger_objects(ledger: Ledger, target):
    key_id, _ = ledger.create_key("slow", balance=0, rate_per_s=2.0, burst=3)
    key = ledger.key(key_id)
    t0 = 1_700_000_000 * 10**9
    with Ledger(target, synchronous="NORMAL") as other:  # another process's view of the same ledger
        assert [(ledger, other)[i % 2].rate_wait(key, now_ns=t0) for i in range(3)] == [0.0] * 3
        assert other.rate_wait(key, now_ns=t0) == pytest.approx(0.5)
        assert ledger.rate_wait(key, now_ns=t0 + 10**8) == pytest.approx(0.4)  # refusals spend nothing
        assert other.rate_wait(key, now_ns=t0 + 5 * 10**8) == 0.0  # one token back after 0.5 s
        assert ledger.rate_wait(key, now_ns=t0 + 5 * 10**8) > 0
        assert ledger.rate_wait(key, now_ns=t0 + 100 * 10**9) == 0.0  # refilled, never above burst
        assert [other.rate_wait(key, now_ns=t0 + 100 * 10**9) for _ in range(3)] == [0.0, 0.0, 0.5]
    with pytest.raises(LedgerError, match="costs 1..burst"):
        ledger.rate_wait(key, cost=4)


class _ReferenceBucket:
    """The in-process token bucket the app used before (floats), as an independent reference."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst, self.tokens, self.last = rate, burst, float(burst), None

    def allow(self, t: float) -> bool:
        if self.last is not None:
            self.tokens = min(float(self.burst), self.tokens + (t - self.last) * self.rate)
        self.last = t
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@pytest.mark.parametrize("rate, burst", [(4.0, 3), (50.0, 1), (0.5, 7)])
def test_rate_limit_matches_a_reference_token_bucket(ledger: Ledger, rate, burst):
    key = ledger.key(ledger.create_key("k", rate_per_s=rate, burst=burst)[0])
    reference, rng = _ReferenceBucket(rate, burst), random.Random(f"{rate}/{burst}")
    t_us = 1_700_000_000 * 10**6
    for _ in range(300):  # bursts and pauses; microsecond times keep clear of exact-boundary ties
        t_us += rng.choice([0, 1, 37, 1_111, 90_001, 333_333, 2_500_007]) + rng.randint(1, 999)
        allowed = ledger.rate_wait(key, now_ns=t_us * 1000) == 0.0
        assert allowed == reference.allow(t_us / 1e6), f"differs at t={t_us} us"


def test_postgres_charges_wait_for_the_flush_and_rate_updates_do_not(postgres):
    with Ledger(postgres.new_database()) as ledger:
        backend = ledger._b  # the one setting that makes a receipt durable before the answer
        with backend.transaction() as db:
            assert db.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        with backend.volatile() as db:
            assert db.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        with backend.transaction(alone=True) as db:
            assert db.execute("SHOW synchronous_commit").fetchone()[0] == "on"


def test_sqlite_rate_updates_do_not_queue_behind_a_charge(tmp_path):
    """SQLite has one writer per file: the rate buckets live in a file of their own, so a call's
    rate check never waits for another call's charge (held open here) to commit."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    key = ledger.key(ledger.create_key("k", balance=10)[0])
    writer = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a charge in flight holds the ledger's write lock
    try:
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(ledger.rate_wait, key).result(timeout=5) == 0.0
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_concurrent_first_calls_of_a_key_are_all_allowed(ledger: Ledger):
    """Racing first calls: the bucket is created by one while the others' UPDATEs found no row;
    none of them may be refused (it used to answer 429 with a negative retry time)."""
    key = ledger.key(ledger.create_key("k", rate_per_s=1e6, burst=10_000)[0])
    start = threading.Barrier(8)

    def calls(_: int) -> list[float]:
        start.wait()
        return [ledger.rate_wait(key) for _ in range(25)]

    with ThreadPoolExecutor(8) as pool:
        waits = [w for ws in pool.map(calls, range(8)) for w in ws]
    assert waits == [0.0] * 200
