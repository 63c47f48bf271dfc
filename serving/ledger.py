"""The durable ledger: API keys (hashed, prepaid), receipts, settlement epochs. SQLite in WAL mode.

A charge is one `BEGIN IMMEDIATE` transaction: the key's balance is checked and debited and
every receipt inserted, then committed (synchronous=FULL) before the caller answers, so a
response that reached a client always has its receipts on disk, and a refused call changes
nothing. Keys are random 256-bit secrets; only their sha256 is stored (a fast hash is enough
for secrets with that much entropy). Amounts are integers in the token's smallest unit, kept
below 2**63 (SQLite's integer).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from serving.errors import InsufficientBalance, LedgerError, RevokedKey, UnknownKey

KEY_PREFIX = "cvn_"
MAX_AMOUNT = 2**63 - 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
  key_id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
  balance INTEGER NOT NULL CHECK (balance >= 0), rate_per_s REAL NOT NULL, burst INTEGER NOT NULL,
  created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE IF NOT EXISTS receipts (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, receipt_id TEXT NOT NULL UNIQUE, key_id TEXT NOT NULL,
  created_at TEXT NOT NULL, run_id TEXT NOT NULL, model_cid TEXT NOT NULL, input_hash TEXT NOT NULL,
  label TEXT NOT NULL, probability REAL NOT NULL, price INTEGER NOT NULL, split TEXT NOT NULL,
  bps TEXT NOT NULL, amounts TEXT NOT NULL, epoch_id TEXT);
CREATE INDEX IF NOT EXISTS receipts_open ON receipts (run_id, epoch_id);
CREATE TABLE IF NOT EXISTS epochs (
  epoch_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, head_cid TEXT NOT NULL, number INTEGER NOT NULL,
  closed_at TEXT NOT NULL, state TEXT NOT NULL, n_receipts INTEGER NOT NULL, total INTEGER NOT NULL,
  batch_cid TEXT, record_cid TEXT, root TEXT);
"""


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    balance: int
    rate_per_s: float
    burst: int
    revoked: bool


@dataclass(frozen=True)
class Receipt:
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
    """One prediction to be paid: what the receipt records."""

    input_hash: str
    label: str
    probability: float
    split: str
    bps: tuple[tuple[str, int], ...]
    amounts: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Epoch:
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


_RECEIPT_COLS = (
    "receipt_id, created_at, run_id, model_cid, input_hash, label, probability, price, split, bps, "
    "amounts, epoch_id"
)


def _receipt(row: Sequence) -> Receipt:
    return Receipt(
        *row[:8],
        row[8],
        tuple((a, int(b)) for a, b in json.loads(row[9])),
        tuple((a, int(v)) for a, v in json.loads(row[10])),
        row[11],
    )


class Ledger:
    """One ledger file; safe to share between threads (a connection each) and processes (WAL)."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._local = threading.local()
        self.db.executescript(SCHEMA)
        with self._tx() as db:
            if db.execute("SELECT value FROM meta WHERE name='ledger_id'").fetchone() is None:
                db.execute("INSERT INTO meta VALUES ('ledger_id', ?)", (secrets.token_hex(4),))

    def __repr__(self) -> str:
        return f"Ledger({self.path})"

    @property
    def db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @property
    def ledger_id(self) -> str:
        return self.db.execute("SELECT value FROM meta WHERE name='ledger_id'").fetchone()[0]

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
        with self._tx() as db:
            db.execute(
                "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (key_id, hash_key(secret), name, balance, float(rate_per_s), int(burst), now()),
            )
        return key_id, secret

    def key(self, key_id: str) -> ApiKey:
        row = self.db.execute(
            "SELECT key_id, name, balance, rate_per_s, burst, revoked_at FROM keys WHERE key_id=?", (key_id,)
        ).fetchone()
        if row is None:
            raise UnknownKey(f"no API key {key_id!r} in {self.path}; list keys with `caravan keys list`")
        return ApiKey(*row[:5], revoked=row[5] is not None)

    def keys(self) -> list[ApiKey]:
        rows = self.db.execute("SELECT key_id FROM keys ORDER BY created_at, key_id").fetchall()
        return [self.key(r[0]) for r in rows]

    def authenticate(self, secret: str) -> ApiKey:
        row = self.db.execute("SELECT key_id FROM keys WHERE key_hash=?", (hash_key(secret),)).fetchone()
        if row is None:
            raise UnknownKey("unknown API key: send the secret `caravan keys create` printed")
        key = self.key(row[0])
        if key.revoked:
            raise RevokedKey(f"API key {key.key_id} was revoked; ask for a new key")
        return key

    def revoke(self, key_id: str) -> None:
        with self._tx() as db:
            if (
                db.execute(
                    "UPDATE keys SET revoked_at=? WHERE key_id=? AND revoked_at IS NULL", (now(), key_id)
                ).rowcount
                == 0
            ):
                self.key(key_id)  # unknown key -> UnknownKey; already revoked -> no-op

    def topup(self, key_id: str, amount: int) -> int:
        _amount("amount", amount)
        with self._tx() as db:
            row = db.execute("SELECT balance FROM keys WHERE key_id=?", (key_id,)).fetchone()
            if row is None:
                raise UnknownKey(f"no API key {key_id!r} in {self.path}")
            if row[0] + amount > MAX_AMOUNT:
                raise LedgerError(f"balance would exceed {MAX_AMOUNT}")
            db.execute("UPDATE keys SET balance=balance+? WHERE key_id=?", (amount, key_id))
            return row[0] + amount

    # ---- receipts ---------------------------------------------------------------------------

    def charge(
        self, key_id: str, run_id: str, model_cid: str, price: int, items: Sequence[Charge]
    ) -> list[Receipt]:
        """Debit ``price`` per item and write one receipt each, atomically; nothing on refusal."""
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
            if sum(v for _, v in c.amounts) != price:
                raise LedgerError("a receipt's amounts must sum to its price")
        with self._tx() as db:
            row = db.execute("SELECT balance, revoked_at FROM keys WHERE key_id=?", (key_id,)).fetchone()
            if row is None:
                raise UnknownKey(f"unknown API key {key_id!r}")
            if row[1] is not None:
                raise RevokedKey(f"API key {key_id} was revoked; ask for a new key")
            if row[0] < total:
                raise InsufficientBalance(
                    f"balance {row[0]} cannot cover {len(items)} prediction(s) at {price} each ({total}); "
                    "top the key up (`caravan keys topup`)"
                )
            db.execute("UPDATE keys SET balance=balance-? WHERE key_id=?", (total, key_id))
            _insert_receipts(db, key_id, receipts)
        return receipts

    def receipt(self, receipt_id: str) -> Receipt | None:
        row = self.db.execute(
            f"SELECT {_RECEIPT_COLS} FROM receipts WHERE receipt_id=?", (receipt_id,)
        ).fetchone()
        return None if row is None else _receipt(row)

    def receipt_owner(self, receipt_id: str) -> str | None:
        row = self.db.execute("SELECT key_id FROM receipts WHERE receipt_id=?", (receipt_id,)).fetchone()
        return None if row is None else row[0]

    def receipt_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT receipt_id FROM receipts ORDER BY seq")]

    def fees_accrued(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(price), 0) FROM receipts").fetchone()[0])

    # ---- epochs -----------------------------------------------------------------------------

    def open_runs(self) -> list[str]:
        """Runs with receipts not yet in an epoch, or an epoch not yet closed."""
        rows = self.db.execute(
            "SELECT DISTINCT run_id FROM receipts WHERE epoch_id IS NULL "
            "UNION SELECT run_id FROM epochs WHERE state != 'closed' ORDER BY 1"
        )
        return [r[0] for r in rows]

    def close_epoch(self, run_id: str, head_cid: str) -> Epoch | None:
        """The run's unfinished epoch if any, else a new one holding every unsettled receipt.

        Assigning receipts to the epoch is one transaction, so each receipt lands in exactly one
        epoch; receipts written later go to the next one.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT epoch_id FROM epochs WHERE run_id=? AND state != 'closed' ORDER BY number LIMIT 1",
                (run_id,),
            ).fetchone()
            if row is not None:
                return self._epoch(db, row[0])
            n, total = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(price), 0) FROM receipts WHERE run_id=? AND epoch_id IS NULL",
                (run_id,),
            ).fetchone()
            if n == 0:
                return None
            number = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM epochs").fetchone()[0]
            ledger_id = db.execute("SELECT value FROM meta WHERE name='ledger_id'").fetchone()[0]
            epoch_id = f"{run_id}/epoch-{ledger_id}-{number}"
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            db.execute(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, 'open', ?, ?, NULL, NULL, NULL)",
                (epoch_id, run_id, head_cid, number, stamp, n, total),
            )
            db.execute(
                "UPDATE receipts SET epoch_id=? WHERE run_id=? AND epoch_id IS NULL", (epoch_id, run_id)
            )
            return self._epoch(db, epoch_id)

    def _epoch(self, db: sqlite3.Connection, epoch_id: str) -> Epoch:
        row = db.execute("SELECT * FROM epochs WHERE epoch_id=?", (epoch_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no epoch {epoch_id!r} in {self.path}")
        return Epoch(*row)

    def epoch(self, epoch_id: str) -> Epoch:
        return self._epoch(self.db, epoch_id)

    def epochs(self) -> list[Epoch]:
        return [self.epoch(r[0]) for r in self.db.execute("SELECT epoch_id FROM epochs ORDER BY number")]

    def update_epoch(self, epoch_id: str, **fields: str | None) -> Epoch:
        allowed = {"state", "batch_cid", "record_cid", "root"}
        if not fields.keys() <= allowed:
            raise LedgerError(f"epoch fields {sorted(fields.keys() - allowed)} cannot change")
        with self._tx() as db:
            sets = ", ".join(f"{k}=?" for k in fields)
            db.execute(f"UPDATE epochs SET {sets} WHERE epoch_id=?", (*fields.values(), epoch_id))
            return self._epoch(db, epoch_id)

    def epoch_receipts(self, epoch_id: str) -> list[Receipt]:
        rows = self.db.execute(
            f"SELECT {_RECEIPT_COLS} FROM receipts WHERE epoch_id=? ORDER BY receipt_id", (epoch_id,)
        )
        return [_receipt(r) for r in rows]

    def add_receipts(self, receipts: Sequence[Receipt], key_id: str) -> None:
        """Bulk insert already-priced receipts (benchmarks, imports); balances are not touched."""
        with self._tx() as db:
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


def _insert_receipts(db: sqlite3.Connection, key_id: str, receipts: Sequence[Receipt]) -> None:
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
