"""Where the ledger's SQL runs: a SQLite file (WAL) or a PostgreSQL database.

The ledger's logic (serving/ledger.py) is written once, in SQL both engines accept, with `?`
placeholders. A backend only owns what differs: connecting, the transaction envelope (SQLite's
`BEGIN IMMEDIATE` serializes every writer; PostgreSQL takes row locks, plus an advisory lock for
the few transactions that must run alone), `volatile()` statements whose commits are not flushed
(the rate-limit state: one statement, one round trip), the identity column, the bytes type and the
name of the two-argument max.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from serving.errors import LedgerError

POSTGRES_SCHEMES = ("postgresql", "postgres")
_ALONE_LOCK = 0x43617261  # pg_advisory_xact_lock id of transactions that must run alone ("Cara")


def is_postgres_url(target: str | Path) -> bool:
    """Whether ``target`` is a `postgresql://` or `postgres://` URL (a Path never is): a PostgreSQL ledger."""
    return isinstance(target, str) and urlsplit(target).scheme in POSTGRES_SCHEMES


def redact(url: str) -> str:
    """The URL with its password (in the user part or a `password=` parameter) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = "&".join(
        "password=***" if q.lower().startswith("password=") else q for q in parts.query.split("&") if q
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class Backend(Protocol):
    """What the ledger needs of an engine (`SqliteBackend`, `PostgresBackend`; `open_backend` picks one):
    connections and transactions that take `?` placeholders, and the SQL that differs between them."""

    serial: str  # the receipts' sequence column
    greatest: str  # SQL name of max(a, b)
    blob: str  # the type of a column of bytes

    def __str__(self) -> str: ...
    def create_schema(self, script: str) -> None: ...
    def create_volatile_schema(self, script: str) -> None: ...  # the tables `volatile()` writes
    def connection(self) -> Any: ...  # context manager: a connection for reads (autocommit)
    def transaction(self, *, alone: bool = False) -> Any: ...  # durable when it commits
    def volatile(self) -> Any: ...  # autocommit statements; a crash may lose their last commits
    def close(self) -> None: ...


class SqliteBackend:
    """One file in WAL mode, a connection per thread; `BEGIN IMMEDIATE` makes writers take turns."""

    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"
    greatest = "MAX"
    blob = "BLOB"

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rates_path = self.path.with_name(self.path.name + "-rates")
        self._synchronous = synchronous
        self._local = threading.local()

    def __str__(self) -> str:
        return str(self.path)

    def _open(self, path: Path, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._open(self.path, self._synchronous)
        return db

    def _rates_db(self) -> sqlite3.Connection:
        db = getattr(self._local, "rates", None)
        if db is None:
            db = self._local.rates = self._open(self.rates_path, "OFF")
        return db

    def create_schema(self, script: str) -> None:
        """Run ``script``, several statements at once, on the ledger file."""
        self._db().executescript(script)

    def create_volatile_schema(self, script: str) -> None:
        """Run ``script`` on the rate-limit file (`<ledger>-rates`), the tables `volatile()` writes."""
        self._rates_db().executescript(script)

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """The calling thread's connection to the ledger file, for reads (autocommit: no transaction held)."""
        yield self._db()

    @contextmanager
    def transaction(self, *, alone: bool = False) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` on the thread's connection: committed on exit, rolled back on any exception."""
        db = self._db()  # every write transaction already runs alone here
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def volatile(self) -> Iterator[sqlite3.Connection]:
        """The thread's connection to the rate-limit file (`<ledger>-rates`, `synchronous=OFF`)."""
        # A file of its own, never fsynced: SQLite has one writer per file, so sharing the ledger's
        # would queue every rate update behind the charges' flushes.
        yield self._rates_db()

    def close(self) -> None:
        """Close the calling thread's connections (ledger and rates file); the next use reopens them."""
        for name in ("db", "rates"):
            db = getattr(self._local, name, None)
            if db is not None:
                db.close()
                setattr(self._local, name, None)


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    return sql.replace("?", "%s")  # the ledger's SQL has no '?' or '%' of its own


class _PgConnection:
    """A pooled psycopg connection speaking the ledger's `?` placeholders."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence = ()) -> Any:
        """Run ``sql``, its `?` placeholders made psycopg's `%s`; returns the cursor, as `sqlite3` does."""
        return self.conn.execute(_pg(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> Any:
        """Run `sql` once per row of parameters, as `sqlite3`'s `executemany` does; returns the cursor."""
        cur = self.conn.cursor()
        cur.executemany(_pg(sql), rows)
        return cur


class PostgresBackend:
    """A connection pool (shared by the process's threads); transactions at READ COMMITTED.

    Pooled sessions commit without waiting for the WAL flush (`synchronous_commit=off`), which
    suits the rate-limit state; every transaction sets it back to the server's durable level
    first (in the statement that may also take the advisory lock), so charges are flushed.
    """

    serial = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    greatest = "GREATEST"
    blob = "BYTEA"

    def __init__(self, url: str, pool_size: int = 8) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.path = None
        self._shown = redact(url)
        password = urlsplit(url).password
        try:  # fail fast with a clear message, not after the pool's connect timeout
            with psycopg.connect(url, connect_timeout=10) as probe:
                level = probe.execute("SHOW synchronous_commit").fetchone()[0]
        except psycopg.Error as exc:
            reason = str(exc).strip()
            if password:
                reason = reason.replace(password, "***")
            raise LedgerError(
                f"cannot open the PostgreSQL ledger {self._shown}: {reason}; check CARAVAN_LEDGER or "
                "--ledger (give the password in PGPASSWORD or ~/.pgpass rather than in the URL)"
            ) from None
        self._durable = "on" if level == "off" else level  # local, remote_write, remote_apply are kept
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            configure=lambda conn: conn.execute("SET synchronous_commit = off"),
            open=True,
            num_workers=1,
            name="caravan-ledger",
        )

    def __str__(self) -> str:
        return self._shown

    def create_schema(self, script: str) -> None:
        """Run ``script`` (several statements) in a transaction that runs alone; the rate tables too."""
        with self.transaction(alone=True) as db:  # concurrent CREATE IF NOT EXISTS can collide
            db.conn.execute(script)

    create_volatile_schema = create_schema  # row locks: rate updates never wait on charges

    @contextmanager
    def connection(self) -> Iterator[_PgConnection]:
        """A pooled connection in autocommit, back in the pool on exit: for reads, and as `volatile()`."""
        with self._pool.connection() as conn:
            yield _PgConnection(conn)

    @contextmanager
    def transaction(self, *, alone: bool = False) -> Iterator[_PgConnection]:
        """A pooled connection in one transaction, committed durably on exit (rolled back on an exception);
        ``alone`` also takes the advisory lock, so such transactions run one at a time."""
        with self._pool.connection() as conn, conn.transaction():
            if alone:
                conn.execute(
                    "SELECT set_config('synchronous_commit', %s, true), pg_advisory_xact_lock(%s)",
                    (self._durable, _ALONE_LOCK),
                )
            else:
                conn.execute("SELECT set_config('synchronous_commit', %s, true)", (self._durable,))
            yield _PgConnection(conn)

    volatile = connection  # pooled sessions already commit without waiting for the flush

    def close(self) -> None:
        """Close the pool and every connection in it; this backend cannot be used afterwards."""
        self._pool.close()


def open_backend(target: str | Path, *, synchronous: str = "FULL", pool_size: int = 8) -> Backend:
    """A `postgresql://` URL opens PostgreSQL; anything else is a SQLite file path."""
    if is_postgres_url(target):
        return PostgresBackend(str(target), pool_size)
    if isinstance(target, str) and "://" in target:
        raise LedgerError(
            f"unsupported ledger URL {redact(target)}: give a SQLite file path or a postgresql:// URL"
        )
    return SqliteBackend(target, synchronous)
