"""One ledger behind several servers: a key's rate budget and balance are shared, on SQLite and on a
real PostgreSQL (also through `caravan serve` and `caravan keys`); a PostgreSQL password is never
shown."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from pipelines.serve_process import ServeProcess
from serving import API_KEY_HEADER, Ledger, LedgerError, create_app
from serving.ledger_backends import redact

PRICE = 1_000


@pytest.fixture
def two_ledgers(target) -> Iterator[tuple[Ledger, Ledger]]:
    """Two ledger objects on one database: what two server processes hold."""
    with Ledger(target, synchronous="NORMAL") as a, Ledger(target, synchronous="NORMAL") as b:
        yield a, b


def test_two_apps_on_one_ledger_share_a_keys_rate_budget(world, two_ledgers):
    a, b = two_ledgers
    apps = [TestClient(create_app(world.served, ledger, price=PRICE)) for ledger in two_ledgers]
    key_id, secret = a.create_key("slow", balance=100 * PRICE, rate_per_s=0.01, burst=3)
    row, headers = {"input": world.run.X_test[0].tolist()}, {API_KEY_HEADER: secret}
    answers = [apps[i % 2].post("/v1/predict", json=row, headers=headers) for i in range(6)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429, 429]
    assert "rate limit of key" in answers[3].json()["error"] and answers[4].headers["Retry-After"]
    assert len(b.receipt_ids()) == 3 and b.key(key_id).balance == 97 * PRICE  # refusals charged nothing
    _, other = b.create_key("fast", balance=PRICE)
    assert apps[1].post("/v1/predict", json=row, headers={API_KEY_HEADER: other}).status_code == 200


def _without_password(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), parts.password


def test_postgres_password_is_never_shown(postgres):
    url = postgres.new_database()
    password = urlsplit(url).password
    with Ledger(url) as ledger:
        assert password not in repr(ledger) and ":***@" in repr(ledger)
    wrong = url.replace(f":{password}@", ":not-the-password@")
    with pytest.raises(LedgerError, match="cannot open the PostgreSQL ledger") as refused:
        Ledger(wrong)
    assert "not-the-password" not in str(refused.value) and "PGPASSWORD" in str(refused.value)
    assert redact("postgresql://u@h/db?sslmode=require&password=s3cret") == (
        "postgresql://u@h/db?sslmode=require&password=***"
    )
    with pytest.raises(LedgerError, match="unsupported ledger URL"):
        Ledger("mysql://u:s3cret@h/db")


def _caravan(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_two_caravan_serve_processes_share_one_postgres_ledger(world, postgres):
    url, password = _without_password(postgres.new_database())
    env = {**world.env, "CARAVAN_LEDGER": url, "PGPASSWORD": password}
    created = _caravan("keys", "create", "shared", "--balance", str(10 * PRICE), "--burst", "4",
                       "--rate", "0.01", env=env)  # fmt: skip
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    refused = _caravan("keys", "list", env={**env, "PGPASSWORD": "wrong"})
    assert refused.returncode != 0 and "cannot open the PostgreSQL ledger" in refused.stderr
    assert "Traceback" not in refused.stderr

    row, headers = {"input": world.run.X_test[0].tolist()}, {API_KEY_HEADER: secret}
    # spawned by this thread (a server dies with the thread that started it), awaited together
    servers = [ServeProcess(world.run.run_id, env, price=PRICE, ledger=url).spawn() for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:  # both load the run at once
            list(pool.map(ServeProcess.wait_ready, servers))
        codes = [
            httpx.post(servers[i % 2].url + "/v1/predict", json=row, headers=headers, timeout=30).status_code
            for i in range(6)
        ]
    finally:
        for server in servers:
            server.stop()
    assert codes == [200, 200, 200, 200, 429, 429]
    listed = _caravan("keys", "list", "--json", env=env)
    assert listed.returncode == 0 and '"balance": 6000' in listed.stdout
    for done in (created, refused, listed):
        assert password not in done.stdout + done.stderr
