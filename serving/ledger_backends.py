"""Where the ledger's SQL runs: a SQLite file (WAL) or a PostgreSQL database.

The ledger's logic (serving/ledger.py) is written once, in SQL both engines accept, with `?`
placeholders. A backend only owns what differs: connecting, the transaction envelope (SQLite's
`BEGIN IMMEDIATE` serializes every writer; PostgreSQL takes row locks, plus an advisory lock for
the few transactions that must run alone), non-durable commits for the rate-limit state, the
identity column and the name of the two-argument max.
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
    serial: str  # the receipts' sequence column
    greatest: str  # SQL name of max(a, b)

    def __str__(self) -> str: ...
    def create_schema(self, script: str) -> None: ...
    def connection(self) -> Any: ...  # context manager: a connection for reads (autocommit)
    def transaction(self, *, alone: bool = False, durable: bool = True) -> Any: ...
    def close(self) -> None: ...


class SqliteBackend:
    """One file in WAL mode, a connection per thread; `BEGIN IMMEDIATE` makes writers take turns."""

    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"
    greatest = "MAX"

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._local = threading.local()

    def __str__(self) -> str:
        return str(self.path)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def create_schema(self, script: str) -> None:
        self._db().executescript(script)

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        yield self._db()

    @contextmanager
    def transaction(self, *, alone: bool = False, durable: bool = True) -> Iterator[sqlite3.Connection]:
        # Every write transaction already runs alone here; `durable=False` skips the fsync, whose
        # WAL frames the next durable commit syncs anyway.
        db = self._db()
        if not durable:
            db.execute("PRAGMA synchronous=OFF")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            if not durable:
                db.execute(f"PRAGMA synchronous={self._synchronous}")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    return sql.replace("?", "%s")  # the ledger's SQL has no '?' or '%' of its own


class _PgConnection:
    """A pooled psycopg connection speaking the ledger's `?` placeholders."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence = ()) -> Any:
        return self.conn.execute(_pg(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> Any:
        cur = self.conn.cursor()
        cur.executemany(_pg(sql), rows)
        return cur


class PostgresBackend:
    """A connection pool (shared by the process's threads); transactions at READ COMMITTED."""

    serial = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    greatest = "GREATEST"

    def __init__(self, url: str, pool_size: int = 8) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.path = None
        self._shown = redact(url)
        password = urlsplit(url).password
        try:  # fail fast with a clear message, not after the pool's connect timeout
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            reason = str(exc).strip()
            if password:
                reason = reason.replace(password, "***")
            raise LedgerError(
                f"cannot open the PostgreSQL ledger {self._shown}: {reason}; check CARAVAN_LEDGER or "
                "--ledger (give the password in PGPASSWORD or ~/.pgpass rather than in the URL)"
            ) from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            open=True,
            num_workers=1,
            name="caravan-ledger",
        )

    def __str__(self) -> str:
        return self._shown

    def create_schema(self, script: str) -> None:
        with self.transaction(alone=True) as db:  # concurrent CREATE IF NOT EXISTS can collide
            db.conn.execute(script)

    @contextmanager
    def connection(self) -> Iterator[_PgConnection]:
        with self._pool.connection() as conn:
            yield _PgConnection(conn)

    @contextmanager
    def transaction(self, *, alone: bool = False, durable: bool = True) -> Iterator[_PgConnection]:
        with self._pool.connection() as conn, conn.transaction():
            if alone:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ALONE_LOCK,))
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            yield _PgConnection(conn)

    def close(self) -> None:
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
