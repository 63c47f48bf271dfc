"""The durable ledger: API keys (hashed, prepaid), receipts, settlement epochs, rate-limit buckets.

One implementation over two engines (serving/ledger_backends.py): a SQLite file in WAL mode by
default, or a PostgreSQL database (`postgresql://` URL) for a deployment with several server
processes or hosts. A charge is one transaction: a single conditional UPDATE checks and debits
the key's balance (on PostgreSQL it also row-locks the key, so concurrent charges queue instead
of overdrawing), every receipt is inserted, and the commit is durable before the caller answers;
a refused call changes nothing. A charge whose attribution is deferred writes its receipts with
split "pending" (no amounts yet) and, in the same transaction, the input each prediction was made
from (`pending_inputs`); `attribute` later fills each such receipt's split once and deletes its
input in one transaction, and an epoch never takes a pending receipt. Keys are random 256-bit
secrets; only their sha256 is stored (a fast hash is enough for secrets with that much entropy).
Amounts are integers in the token's smallest unit, kept below 2**63 (both engines' integer). Given an
``input_key`` (32 random bytes; the CLI reads CARAVAN_LEDGER_INPUT_KEY), each stored pending input is
sealed (XChaCha20-Poly1305, bound to its receipt id), so the database never holds it in the clear.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.exceptions import CryptoError
from nacl.secret import Aead

from serving.errors import InsufficientBalance, LedgerError, RevokedKey, UnknownKey
from serving.ledger_backends import Backend, open_backend

KEY_PREFIX = "cvn_"
MAX_AMOUNT = 2**63 - 1
INPUT_KEY_ENV = "CARAVAN_LEDGER_INPUT_KEY"  # 64 hex characters: the key pending inputs are sealed with
# A stored input is marked: sealed (nonce + ciphertext follow) or in the clear, so an input that itself
# starts with a marker is never mistaken for one (an unmarked row predates the markers: in the clear).
SEALED, PLAIN = b"cvn-sealed/1:", b"cvn-plain/1:"

# A receipt's split: how its fee is shared out. The ledger's contract, so it lives here.
SPLIT_QUERY = "query"  # each prediction's own attribution
SPLIT_RUN = "run"  # the run's contributor weights (no positive per-prediction attribution)
SPLIT_PENDING = "pending"  # charged; its own attribution not computed yet (no bps, no amounts)

# SQL both engines accept ({serial} is the one column that differs); BIGINT and DOUBLE PRECISION
# have SQLite's INTEGER and REAL affinity, so ledgers made before (INTEGER, REAL) read the same.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
  key_id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
  balance BIGINT NOT NULL CHECK (balance >= 0), rate_per_s DOUBLE PRECISION NOT NULL,
  burst BIGINT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE IF NOT EXISTS receipts (
  seq {serial}, receipt_id TEXT NOT NULL UNIQUE, key_id TEXT NOT NULL,
  created_at TEXT NOT NULL, run_id TEXT NOT NULL, model_cid TEXT NOT NULL, input_hash TEXT NOT NULL,
  label TEXT NOT NULL, probability DOUBLE PRECISION NOT NULL, price BIGINT NOT NULL, split TEXT NOT NULL,
  bps TEXT NOT NULL, amounts TEXT NOT NULL, epoch_id TEXT);
CREATE INDEX IF NOT EXISTS receipts_open ON receipts (run_id, epoch_id);
CREATE INDEX IF NOT EXISTS receipts_epoch ON receipts (epoch_id);
CREATE TABLE IF NOT EXISTS pending_inputs (
  receipt_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, request_id TEXT NOT NULL, payload {blob} NOT NULL);
CREATE INDEX IF NOT EXISTS pending_run ON pending_inputs (run_id);
CREATE TABLE IF NOT EXISTS epochs (
  epoch_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, head_cid TEXT NOT NULL, number BIGINT NOT NULL,
  closed_at TEXT NOT NULL, state TEXT NOT NULL, n_receipts BIGINT NOT NULL, total BIGINT NOT NULL,
  batch_cid TEXT, record_cid TEXT, root TEXT);
"""
RATE_SCHEMA = "CREATE TABLE IF NOT EXISTS rate_buckets (key_id TEXT PRIMARY KEY, tat BIGINT NOT NULL);"

# Rate limits are GCRA, the token bucket kept as one number: the key's theoretical arrival time
# (ns). A call is allowed while that is at most `burst` intervals ahead of now, and moves it one
# interval on; so checking and spending is one conditional UPDATE, shared by every process.
_NS = 10**9
_MAX_TOLERANCE_NS = 10**18  # ~31 years: keeps now + tolerance below 2**63
_RATE_SQL = "UPDATE rate_buckets SET tat = {greatest}(tat, ?) + ? WHERE key_id=? AND tat <= ?"


def now() -> str:
    """The time in UTC, ISO 8601 to the microsecond with a Z: the stamp keys and receipts are stored with."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hash_key(secret: str) -> str:
    """A key secret's sha256, hex: all the ledger stores of it, and what `authenticate` looks keys up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """An API key as the ledger stores it, never its secret: ``balance`` in the token's smallest unit as of
    the lookup (a charge re-checks it), and its GCRA rate limit (``rate_per_s``, ``burst``)."""

    key_id: str
    name: str
    balance: int
    rate_per_s: float
    burst: int
    revoked: bool


@dataclass(frozen=True)
class Receipt:
    """One paid prediction as the ledger stores it: price, split, and per-address bps and amounts in the
    token's smallest unit (both empty while the split is pending); ``epoch_id`` once an epoch holds it.
    Settling batches these (`serving.settle.batch_table`); the API serves them (`to_json`)."""

    receipt_id: str
    created_at: str
    run_id: str
    model_cid: str
    input_hash: str
    label: str
    probability: float
    price: int
    split: str
    bps: tuple[tuple[str, int], ...]
    amounts: tuple[tuple[str, int], ...]
    epoch_id: str | None = None

    def to_json(self) -> dict:
        """The receipt as `GET /v1/receipts/{receipt_id}` answers it (`ReceiptOut`'s fields)."""
        return {
            "receipt_id": self.receipt_id,
            "created_at": self.created_at,
            "run_id": self.run_id,
            "model_cid": self.model_cid,
            "input_hash": self.input_hash,
            "output": {"label": self.label, "probability": self.probability},
            "price": self.price,
            "split": self.split,
            "amounts": [{"address": a, "amount": v} for a, v in self.amounts],
            "bps": [{"address": a, "bps": b} for a, b in self.bps],
            "epoch_id": self.epoch_id,
        }


@dataclass(frozen=True)
class Charge:
    """One prediction to be paid: what the receipt records. A SPLIT_PENDING charge has no bps or
    amounts and carries ``payload``, the input its attribution will be computed from (its sha256 is
    ``input_hash``)."""

    input_hash: str
    label: str
    probability: float
    split: str
    bps: tuple[tuple[str, int], ...]
    amounts: tuple[tuple[str, int], ...]
    payload: bytes | None = None


@dataclass(frozen=True)
class PendingInput:
    """A receipt awaiting its attribution; ``request_id`` groups the rows charged together, which are
    attributed together, as the synchronous path would have done."""

    receipt_id: str
    request_id: str
    input_hash: str
    label: str
    price: int
    payload: bytes
    problem: str | None = None  # why ``payload`` could not be opened (a sealed input, no or wrong key)


@dataclass(frozen=True)
class Fill:
    """A pending receipt's attribution: its final split (SPLIT_QUERY or SPLIT_RUN), bps and amounts."""

    receipt_id: str
    split: str
    bps: tuple[tuple[str, int], ...]
    amounts: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Charged:
    """What one charge wrote, and the key's balance right after it (concurrent charges included)."""

    receipts: list[Receipt]
    balance: int


@dataclass(frozen=True)
class Epoch:
    """A settlement epoch as the ledger stores it: its run, the head record it is anchored under, its
    receipts' count and total, and its settle state (`serving.settle.STATES`); ``batch_cid``,
    ``record_cid`` and ``root`` are None until the "stored" step saves them."""

    epoch_id: str
    run_id: str
    head_cid: str
    number: int
    closed_at: str
    state: str
    n_receipts: int
    total: int
    batch_cid: str | None
    record_cid: str | None
    root: str | None


_KEY_COLS = "key_id, name, balance, rate_per_s, burst, revoked_at"

_RECEIPT_COLS = (
    "receipt_id, created_at, run_id, model_cid, input_hash, label, probability, price, split, bps, "
    "amounts, epoch_id"
)


def input_key_from_env(env: Mapping[str, str] | None = None) -> bytes | None:
    """The key CARAVAN_LEDGER_INPUT_KEY names (64 hex characters), or None where it is unset."""
    text = (os.environ if env is None else env).get(INPUT_KEY_ENV, "").strip()
    if not text:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != Aead.KEY_SIZE:
        raise LedgerError(
            f"{INPUT_KEY_ENV} must be {2 * Aead.KEY_SIZE} hex characters (32 random bytes: "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return key


def _api_key(row: Sequence) -> ApiKey:
    return ApiKey(*row[:5], revoked=row[5] is not None)


def _receipt(row: Sequence) -> Receipt:
    return Receipt(
        *row[:8],
        row[8],
        tuple((a, int(b)) for a, b in json.loads(row[9])),
        tuple((a, int(v)) for a, v in json.loads(row[10])),
        row[11],
    )


class Ledger:
    """A SQLite file path or a `postgresql://` URL; safe to share between threads and processes.

    On PostgreSQL, give the password in PGPASSWORD or ~/.pgpass (libpq reads both); one in the
    URL works too and is never shown (repr and errors print it as ***). Call `close()` (or use
    `with`) to return a PostgreSQL pool's connections early; exiting the process also does.
    """

    @classmethod
    def from_env(cls, target: str | Path) -> Ledger:
        """The ledger at ``target``, its pending inputs sealed with CARAVAN_LEDGER_INPUT_KEY where that
        is set: how every process that stores or drains pending inputs opens it."""
        return cls(target, input_key=input_key_from_env())

    def __init__(self, target: str | Path, *, synchronous: str = "FULL", pool_size: int = 8,
                 input_key: bytes | None = None) -> None:
        if input_key is not None and len(input_key) != Aead.KEY_SIZE:
            raise LedgerError(f"the ledger's input key must be {Aead.KEY_SIZE} bytes, got {len(input_key)}")
        self._aead = None if input_key is None else Aead(input_key)
        self._b: Backend = open_backend(target, synchronous=synchronous, pool_size=pool_size)
        self.path: Path | None = getattr(self._b, "path", None)  # the SQLite file, None on PostgreSQL
        self._rate_sql = _RATE_SQL.format(greatest=self._b.greatest)
        self._b.create_schema(SCHEMA.format(serial=self._b.serial, blob=self._b.blob))
        self._b.create_volatile_schema(RATE_SCHEMA)
        with self._b.transaction() as db:
            db.execute(
                "INSERT INTO meta VALUES ('ledger_id', ?) ON CONFLICT (name) DO NOTHING",
                (secrets.token_hex(4),),
            )

    def __repr__(self) -> str:
        return f"Ledger({self._b})"

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections: PostgreSQL's pool for good, this thread's SQLite ones until next use."""
        self._b.close()

    def _one(self, sql: str, params: Sequence = ()) -> Sequence | None:
        with self._b.connection() as db:
            return _first(db.execute(sql, params))

    def _all(self, sql: str, params: Sequence = ()) -> list[Sequence]:
        with self._b.connection() as db:
            return db.execute(sql, params).fetchall()

    @property
    def ledger_id(self) -> str:
        """A random id drawn when the ledger was created, the same in every process; epoch ids carry it."""
        return self._one("SELECT value FROM meta WHERE name='ledger_id'")[0]

    # ---- keys -------------------------------------------------------------------------------

    def create_key(
        self, name: str, *, balance: int = 0, rate_per_s: float = 50.0, burst: int = 100
    ) -> tuple[str, str]:
        """A new key: returns (key_id, secret). The secret is shown once and stored only as a hash."""
        _amount("balance", balance, allow_zero=True)
        if not rate_per_s > 0 or burst < 1:
            raise LedgerError("rate_per_s must be > 0 and burst >= 1")
        key_id = secrets.token_hex(6)
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        with self._b.transaction() as db:
            db.execute(
                "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (key_id, hash_key(secret), name, balance, float(rate_per_s), int(burst), now()),
            )
        return key_id, secret

    def key(self, key_id: str) -> ApiKey:
        """The key with this id, revoked or not; UnknownKey where there is none."""
        row = self._one(f"SELECT {_KEY_COLS} FROM keys WHERE key_id=?", (key_id,))
        if row is None:
            raise UnknownKey(f"no API key {key_id!r} in {self._b}; list keys with `caravan keys list`")
        return _api_key(row)

    def keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first: what `caravan keys list` shows."""
        return [_api_key(r) for r in self._all(f"SELECT {_KEY_COLS} FROM keys ORDER BY created_at, key_id")]

    def authenticate(self, secret: str) -> ApiKey:
        """The key whose secret this is (looked up by its hash); UnknownKey, or RevokedKey if revoked."""
        row = self._one(f"SELECT {_KEY_COLS} FROM keys WHERE key_hash=?", (hash_key(secret),))
        if row is None:
            raise UnknownKey("unknown API key: send the secret `caravan keys create` printed")
        key = _api_key(row)
        if key.revoked:
            raise RevokedKey(f"API key {key.key_id} was revoked; ask for a new key")
        return key

    def revoke(self, key_id: str) -> None:
        """Mark the key revoked, so it authenticates and charges no more; revoking it again is a no-op.
        UnknownKey for no such key."""
        with self._b.transaction() as db:
            revoked = db.execute(
                "UPDATE keys SET revoked_at=? WHERE key_id=? AND revoked_at IS NULL", (now(), key_id)
            ).rowcount
            if not revoked and _first(db.execute("SELECT 1 FROM keys WHERE key_id=?", (key_id,))) is None:
                raise UnknownKey(f"no API key {key_id!r} in {self._b}")  # already revoked: a no-op

    def topup(self, key_id: str, amount: int) -> int:
        """Add ``amount`` (smallest token unit) to the key's balance; returns the new balance. LedgerError
        where it would pass MAX_AMOUNT, UnknownKey for no such key."""
        _amount("amount", amount)
        with self._b.transaction() as db:
            row = _first(
                db.execute(
                    "UPDATE keys SET balance=balance+? WHERE key_id=? AND balance<=? RETURNING balance",
                    (amount, key_id, MAX_AMOUNT - amount),
                )
            )
            if row is not None:
                return row[0]
            if _first(db.execute("SELECT 1 FROM keys WHERE key_id=?", (key_id,))) is None:
                raise UnknownKey(f"no API key {key_id!r} in {self._b}")
            raise LedgerError(f"balance would exceed {MAX_AMOUNT}")

    def rate_wait(self, key: ApiKey, cost: int = 1, *, now_ns: int | None = None) -> float:
        """0 if ``key`` may make ``cost`` calls now (and they are spent), else seconds until it may.

        ``burst`` calls at once, refilled at ``rate_per_s`` (rates above 1e9/s count as 1e9/s).
        The state is in the ledger, so every server process on it shares the key's budget; the
        commit is not fsynced (a crash may forget a few spent calls, never a receipt).
        """
        if not 1 <= cost <= key.burst:
            raise LedgerError(f"a rate-limited call costs 1..burst ({key.burst}), got {cost}")
        clock = time.time_ns if now_ns is None else (lambda: now_ns)
        interval = min(max(1, round(_NS / key.rate_per_s)), max(1, _MAX_TOLERANCE_NS // key.burst))
        tolerance = min(key.burst * interval, _MAX_TOLERANCE_NS)
        step = cost * interval
        row = None
        with self._b.volatile() as db:  # each statement alone is atomic; no flush awaited
            for _ in range(4):
                at = clock()
                if db.execute(self._rate_sql, (at, step, key.key_id, at + tolerance - step)).rowcount:
                    return 0.0
                row = _first(db.execute("SELECT tat FROM rate_buckets WHERE key_id=?", (key.key_id,)))
                if row is None:
                    db.execute(  # the key's first call: a full bucket, then spend from it
                        "INSERT INTO rate_buckets VALUES (?, 0) ON CONFLICT (key_id) DO NOTHING",
                        (key.key_id,),
                    )
                    continue
                at = clock()  # the UPDATE may have waited for a lock: judge by the time now
                wait = (max(row[0], at) + step - at - tolerance) / _NS
                if wait > 0:
                    return wait  # refused: the bucket only fills up with time
                # Not refused after all: the clock read went stale while the UPDATE waited, or another
                # call created the bucket between the UPDATE and the SELECT. Try again.
        if row is not None:
            return 1e-3  # still racing after every try: ask for a retry rather than let it through
        raise LedgerError(f"rate bucket of key {key.key_id} could not be created")  # pragma: no cover

    # ---- receipts ---------------------------------------------------------------------------

    def charge(
        self, key_id: str, run_id: str, model_cid: str, price: int, items: Sequence[Charge]
    ) -> Charged:
        """Debit ``price`` per item and write one receipt each, atomically; nothing on refusal. The
        inputs of SPLIT_PENDING items are stored in the same transaction."""
        _amount("price", price)
        total = price * len(items)
        stamp = now()
        receipts = [
            Receipt(
                secrets.token_hex(16),
                stamp,
                run_id,
                model_cid,
                c.input_hash,
                c.label,
                c.probability,
                price,
                c.split,
                c.bps,
                c.amounts,
            )
            for c in items
        ]
        for c in items:
            _check_charge(c, price)
        request_id = secrets.token_hex(8)
        pending = [
            (r.receipt_id, run_id, request_id, self._sealed(r.receipt_id, c.payload))
            for r, c in zip(receipts, items, strict=True)
            if c.split == SPLIT_PENDING
        ]
        with self._b.transaction() as db:
            debited = total <= MAX_AMOUNT and _first(
                db.execute(
                    "UPDATE keys SET balance=balance-? "
                    "WHERE key_id=? AND revoked_at IS NULL AND balance>=? RETURNING balance",
                    (total, key_id, total),
                )
            )
            if not debited:
                self._refuse(db, key_id, len(items), price, total)
            _insert_receipts(db, key_id, receipts)
            if pending:
                db.executemany("INSERT INTO pending_inputs VALUES (?, ?, ?, ?)", pending)
        return Charged(receipts, debited[0])

    def _refuse(self, db: Any, key_id: str, n: int, price: int, total: int) -> None:
        """Why a debit matched no row: raise the error that says so."""
        row = _first(db.execute("SELECT balance, revoked_at FROM keys WHERE key_id=?", (key_id,)))
        if row is None:
            raise UnknownKey(f"unknown API key {key_id!r}")
        if row[1] is not None:
            raise RevokedKey(f"API key {key_id} was revoked; ask for a new key")
        raise InsufficientBalance(
            f"balance {row[0]} cannot cover {n} prediction(s) at {price} each ({total}); "
            "top the key up (`caravan keys topup`)"
        )

    def receipt(self, receipt_id: str) -> Receipt | None:
        """The receipt with this id, or None; any key's, so the API also checks `receipt_owner`."""
        row = self._one(f"SELECT {_RECEIPT_COLS} FROM receipts WHERE receipt_id=?", (receipt_id,))
        return None if row is None else _receipt(row)

    def receipt_owner(self, receipt_id: str) -> str | None:
        """The id of the key that paid for this receipt, or None: the API shows a receipt only to that key."""
        row = self._one("SELECT key_id FROM receipts WHERE receipt_id=?", (receipt_id,))
        return None if row is None else row[0]

    def receipt_ids(self) -> list[str]:
        """Every receipt's id in charge order: how tests and the crash benchmark check that none was lost."""
        return [r[0] for r in self._all("SELECT receipt_id FROM receipts ORDER BY seq")]

    # ---- deferred attribution ----------------------------------------------------------------

    def pending_count(self, run_id: str | None = None) -> int:
        """Receipts (of ``run_id``, or of every run) whose attribution is still pending."""
        if run_id is None:
            return int(self._one("SELECT COUNT(*) FROM pending_inputs")[0])
        return int(self._one("SELECT COUNT(*) FROM pending_inputs WHERE run_id=?", (run_id,))[0])

    def pending(self, run_id: str, requests: int = 64) -> list[PendingInput]:
        """The pending receipts of the oldest ``requests`` requests of ``run_id`` still pending, whole
        (every row a charge wrote together), in charge order."""
        rows = self._all(
            "SELECT p.receipt_id, p.request_id, r.input_hash, r.label, r.price, p.payload "
            "FROM pending_inputs p JOIN receipts r ON r.receipt_id = p.receipt_id WHERE p.request_id IN ("
            " SELECT q.request_id FROM pending_inputs q JOIN receipts s ON s.receipt_id = q.receipt_id"
            " WHERE q.run_id=? GROUP BY q.request_id ORDER BY MIN(s.seq) LIMIT ?) "
            "ORDER BY r.seq",
            (run_id, int(requests)),
        )
        return [PendingInput(r[0], r[1], r[2], r[3], int(r[4]), *self._opened(r[0], bytes(r[5])))
                for r in rows]

    @property
    def seals_inputs(self) -> bool:
        """Whether pending inputs are stored sealed (an input key was given)."""
        return self._aead is not None

    def _sealed(self, receipt_id: str, payload: bytes | None) -> bytes | None:
        if payload is None:
            return None
        if self._aead is None:
            return PLAIN + payload
        return SEALED + self._aead.encrypt(payload, receipt_id.encode())

    def _opened(self, receipt_id: str, stored: bytes) -> tuple[bytes, str | None]:
        """(the input, None), or (b"", why not) for a sealed one this ledger cannot open."""
        if stored.startswith(PLAIN):
            return stored[len(PLAIN):], None
        if not stored.startswith(SEALED):
            return stored, None
        if self._aead is None:
            return b"", f"its stored input is sealed; set {INPUT_KEY_ENV} to the key it was sealed with"
        try:
            return self._aead.decrypt(stored[len(SEALED):], receipt_id.encode()), None
        except (CryptoError, ValueError):
            return b"", f"its stored input does not open with {INPUT_KEY_ENV} (another key, or altered)"

    def attribute(self, fills: Sequence[Fill]) -> int:
        """Write each pending receipt's split and delete its stored input, in one transaction; a receipt
        no longer pending (another worker filled it) is left as it is. Returns how many were filled."""
        for f in fills:
            if f.split == SPLIT_PENDING or not f.bps:
                raise LedgerError(f"receipt {f.receipt_id}: a fill needs a final split and its bps")
        done = 0
        with self._b.transaction() as db:
            for f in fills:
                row = _first(
                    db.execute(
                        "UPDATE receipts SET split=?, bps=?, amounts=? "
                        "WHERE receipt_id=? AND split=? AND epoch_id IS NULL RETURNING price",
                        (f.split, json.dumps(f.bps), json.dumps(f.amounts), f.receipt_id, SPLIT_PENDING),
                    )
                )
                db.execute("DELETE FROM pending_inputs WHERE receipt_id=?", (f.receipt_id,))
                if row is None:
                    continue
                if sum(v for _, v in f.amounts) != row[0]:
                    raise LedgerError(f"receipt {f.receipt_id}: amounts must sum to its price {row[0]}")
                done += 1
        return done

    def fees_accrued(self) -> int:
        """The sum of every receipt's price, settled or not, in the token's smallest unit."""
        return int(self._one("SELECT COALESCE(SUM(price), 0) FROM receipts")[0])

    # ---- epochs -----------------------------------------------------------------------------

    def open_runs(self) -> list[str]:
        """Runs with receipts not yet in an epoch, or an epoch not yet closed."""
        rows = self._all(
            "SELECT DISTINCT run_id FROM receipts WHERE epoch_id IS NULL "
            "UNION SELECT run_id FROM epochs WHERE state != 'closed' ORDER BY 1"
        )
        return [r[0] for r in rows]

    def close_epoch(self, run_id: str, head_cid: str) -> Epoch | None:
        """The run's unfinished epoch if any, else a new one holding every unsettled attributed receipt.

        One transaction that runs alone: each receipt lands in exactly one epoch, and the epoch's
        count and total are read after its receipts are claimed, so a charge committed meanwhile
        goes, whole, to the next one. A receipt still pending waits for a later epoch: no epoch ever
        holds a receipt whose split is not final.
        """
        with self._b.transaction(alone=True) as db:
            unfinished = "SELECT epoch_id FROM epochs WHERE run_id=? AND state != 'closed' ORDER BY number"
            row = _first(db.execute(unfinished + " LIMIT 1", (run_id,)))
            if row is not None:
                return self._epoch(db, row[0])
            number = _first(db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM epochs"))[0]
            ledger_id = _first(db.execute("SELECT value FROM meta WHERE name='ledger_id'"))[0]
            epoch_id = f"{run_id}/epoch-{ledger_id}-{number}"
            db.execute(
                "UPDATE receipts SET epoch_id=? WHERE run_id=? AND epoch_id IS NULL AND split != ?",
                (epoch_id, run_id, SPLIT_PENDING),
            )
            n, total = _first(
                db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(price), 0) FROM receipts WHERE run_id=? AND epoch_id=?",
                    (run_id, epoch_id),
                )
            )
            if n == 0:
                return None
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            db.execute(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, 'open', ?, ?, NULL, NULL, NULL)",
                (epoch_id, run_id, head_cid, number, stamp, int(n), int(total)),
            )
            return self._epoch(db, epoch_id)

    def _epoch(self, db: Any, epoch_id: str) -> Epoch:
        row = _first(db.execute("SELECT * FROM epochs WHERE epoch_id=?", (epoch_id,)))
        if row is None:
            raise LedgerError(f"no epoch {epoch_id!r} in {self._b}")
        return Epoch(*row)

    def epoch(self, epoch_id: str) -> Epoch:
        """The epoch with this id as now stored; LedgerError where there is none."""
        with self._b.connection() as db:
            return self._epoch(db, epoch_id)

    def epochs(self) -> list[Epoch]:
        """Every settlement epoch of every run, closed or not, in number order."""
        return [Epoch(*r) for r in self._all("SELECT * FROM epochs ORDER BY number")]

    def update_epoch(self, epoch_id: str, **fields: str | None) -> Epoch:
        """Save an epoch's ``state``, ``batch_cid``, ``record_cid`` or ``root`` (no other field may change)
        and return it as now stored: how settling saves each step before the next starts."""
        allowed = {"state", "batch_cid", "record_cid", "root"}
        if not fields.keys() <= allowed:
            raise LedgerError(f"epoch fields {sorted(fields.keys() - allowed)} cannot change")
        with self._b.transaction() as db:
            sets = ", ".join(f"{k}=?" for k in fields)
            db.execute(f"UPDATE epochs SET {sets} WHERE epoch_id=?", (*fields.values(), epoch_id))
            return self._epoch(db, epoch_id)

    def epoch_receipts(self, epoch_id: str) -> list[Receipt]:
        """The receipts this epoch holds, by receipt id: what settling batches and totals per address."""
        rows = self._all(
            f"SELECT {_RECEIPT_COLS} FROM receipts WHERE epoch_id=? ORDER BY receipt_id", (epoch_id,)
        )
        return [_receipt(r) for r in rows]

    def add_receipts(self, receipts: Sequence[Receipt], key_id: str) -> None:
        """Bulk insert already-priced receipts (benchmarks, imports); balances are not touched."""
        with self._b.transaction() as db:
            _insert_receipts(db, key_id, receipts)


def _amount(name: str, value: int, *, allow_zero: bool = False) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < (0 if allow_zero else 1)
        or value > MAX_AMOUNT
    ):
        low = 0 if allow_zero else 1
        raise LedgerError(
            f"{name} must be an integer in {low}..{MAX_AMOUNT} (smallest token unit), got {value!r}"
        )


def _check_charge(c: Charge, price: int) -> None:
    """A pending charge carries its input and no amounts; any other, amounts summing to the price."""
    if c.split == SPLIT_PENDING:
        if c.bps or c.amounts or not c.payload:
            raise LedgerError("a pending receipt has no bps or amounts yet, and needs its input bytes")
    elif sum(v for _, v in c.amounts) != price:
        raise LedgerError("a receipt's amounts must sum to its price")


def _first(cursor: Any) -> Sequence | None:
    """The first row, reading them all (SQLite keeps a statement with unread rows open)."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def _insert_receipts(db: Any, key_id: str, receipts: Sequence[Receipt]) -> None:
    """New receipts of one key, not yet in any epoch."""
    db.executemany(
        f"INSERT INTO receipts (key_id, {_RECEIPT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL)",
        [
            (
                key_id,
                r.receipt_id,
                r.created_at,
                r.run_id,
                r.model_cid,
                r.input_hash,
                r.label,
                r.probability,
                r.price,
                r.split,
                json.dumps(r.bps),
                json.dumps(r.amounts),
            )
            for r in receipts
        ],
    )
