"""A real PostgreSQL server for the test session (Debian's `postgresql` binaries), stopped at the end.

Registered for every room by tests/conftest.py (pytest_plugins). The cluster lives in a fresh
temporary directory, listens on 127.0.0.1 on a free port and needs a password (scram), so the
ledger's URL handling is exercised as in a deployment. PostgreSQL refuses to run as root: under
root the cluster is created and run as the `postgres` system user the package makes. Durability
settings are relaxed (fsync off): the tests crash server processes of ours, never PostgreSQL.
Each test that wants a clean slate takes a new database (`new_database()`), not a new server.
Set CARAVAN_TEST_POSTGRES_URL (a superuser's URL) to use a server that is already up instead.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_LIB = Path("/usr/lib/postgresql")


def pg_bindir() -> Path | None:
    """Where initdb/pg_ctl are: on PATH, else Debian's newest /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    majors = sorted(
        (p for p in PG_LIB.glob("*/bin") if (p / "pg_ctl").exists() and p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
    )
    return majors[-1] if majors else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresService:
    """Where the server answers (a superuser's URL, password included: test secret only)."""

    admin_url: str
    _n: int = field(default=0, repr=False)

    def new_database(self) -> str:
        """A new empty database; returns its URL (same user and password)."""
        import psycopg

        self._n += 1
        name = f"t{os.getpid()}_{self._n}_{secrets.token_hex(3)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{name}"))


class _Cluster:
    """initdb + pg_ctl in a temporary directory, as an unprivileged user when we are root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_user: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root needs the `postgres` system user (Debian's postgresql package)")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.home = Path(tempfile.mkdtemp(prefix="caravan-pg-"))
        if owner is not None:
            os.chown(self.home, owner.pw_uid, owner.pw_gid)
        self.data = self.home / "data"
        self.log = self.home / "server.log"
        self.port = _free_port()
        self.user = "caravan"
        self.password = secrets.token_urlsafe(12)
        pwfile = self.home / "pw"
        pwfile.write_text(self.password + "\n")
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", self.user, "-A", "scram-sha-256",
            f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        pwfile.unlink()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self.as_user, str(self.bindir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.home)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}\n{log}")

    def start(self) -> str:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.home} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresService]:
    given = os.environ.get("CARAVAN_TEST_POSTGRES_URL")
    if given:
        yield PostgresService(given)
        return
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's `postgresql` "
            "package (`make setup` does) to run the PostgreSQL ledger tests"
        )
    cluster = _Cluster(bindir)
    try:
        url = cluster.start()
    except BaseException:
        shutil.rmtree(cluster.home, ignore_errors=True)
        raise
    try:
        yield PostgresService(url)
    finally:
        cluster.stop()
