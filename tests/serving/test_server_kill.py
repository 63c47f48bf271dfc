"""The real server (caravan serve under uvicorn) killed with SIGKILL under load, then restarted:
every receipt whose response reached a client is in the ledger, none twice, balances agree."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx

from pipelines.serve_process import ServeProcess
from serving import API_KEY_HEADER, Ledger

PRICE = 1_000


def load(
    url: str, secret: str, rows: list, stop: threading.Event, seen: list[str], errors: list[str]
) -> None:
    with httpx.Client(timeout=10) as client:
        i = 0
        while not stop.is_set():
            body = {"input": rows[i % len(rows)]} if i % 3 else {"inputs": rows[:4]}
            i += 1
            try:
                r = client.post(url + "/v1/predict", json=body, headers={API_KEY_HEADER: secret})
            except httpx.HTTPError:
                continue  # the server died mid-request: no response, no promise
            if r.status_code == 200:
                seen.extend(p["receipt_id"] for p in r.json()["predictions"])
            else:
                errors.append(r.text)


def test_sigkill_under_load_loses_and_duplicates_nothing(world, tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    key_id, secret = ledger.create_key("load", balance=10**9, rate_per_s=10**6, burst=10**6)
    rows = world.run.X_test[:16].tolist()
    seen: list[str] = []
    errors: list[str] = []
    server = ServeProcess(world.run.run_id, world.env, price=PRICE, ledger=path).start()
    try:
        stop = threading.Event()
        workers = [
            threading.Thread(target=load, args=(server.url, secret, rows, stop, seen, errors))
            for _ in range(6)
        ]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 30
        while len(seen) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()  # SIGKILL while requests are in flight
        stop.set()
        for w in workers:
            w.join()
    finally:
        server.kill()
    assert len(seen) >= 150 and not errors
    with ServeProcess(world.run.run_id, world.env, price=PRICE, ledger=path) as again:
        r = httpx.post(again.url + "/v1/predict", json={"input": rows[0]}, headers={API_KEY_HEADER: secret})
        assert r.status_code == 200
        seen.append(r.json()["predictions"][0]["receipt_id"])
    stored = Ledger(path).receipt_ids()
    assert len(stored) == len(set(stored))
    assert set(seen) <= set(stored)  # nothing a client was told about is lost
    assert len(seen) == len(set(seen))
    assert Ledger(path).key(key_id).balance == 10**9 - PRICE * len(stored)  # charges match receipts


def test_serve_refuses_an_unpublished_run(world, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "serve", "not-a-run", "--ledger", str(tmp_path / "l.sqlite")],
        env=world.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: run 'not-a-run' is not servable")
