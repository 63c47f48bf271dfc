"""The real `caravan serve --attribution deferred`: its worker process fills pending receipts; killed with
SIGKILL (the worker dies with it), pending inputs survive in the ledger and the restarted server
attributes each once; `caravan settle --no-drain` refuses pending receipts, `caravan settle` drains them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import psutil

from pipelines.serve_process import ServeProcess
from serving import API_KEY_HEADER, SPLIT_PENDING, Ledger, verify_epoch

PRICE = 1_000


def wait_attributed(ledger: Ledger, run_id: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while ledger.pending_count(run_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ledger.pending_count(run_id) == 0, "the worker did not attribute the pending receipts"


def predict(url: str, secret: str, rows: list) -> list[dict]:
    seen = []
    with httpx.Client(timeout=30) as client:
        for i, row in enumerate(rows):
            body = {"input": row} if i % 2 else {"inputs": [row, rows[0]]}
            r = client.post(url + "/v1/predict", json=body, headers={API_KEY_HEADER: secret})
            assert r.status_code == 200, r.text
            seen += r.json()["predictions"]
    return seen


def test_killed_server_leaves_inputs_that_the_restarted_one_attributes_once(world, tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    key_id, secret = ledger.create_key("load", balance=10**9, rate_per_s=10**6, burst=10**6)
    rows = world.run.X_test[:12].tolist()
    deferred = ("--attribution", "deferred")
    server = ServeProcess(world.run.run_id, world.env, price=PRICE, ledger=path, extra=deferred).start()
    workers = psutil.Process(server.pid).children()
    try:
        assert [w.cmdline()[3] for w in workers] == ["attribute"]
        for w in workers:
            w.suspend()  # hold the worker back, so receipts are pending when the server dies
        seen = predict(server.url, secret, rows)
        assert {p["split"] for p in seen} == {SPLIT_PENDING}
        server.kill()  # SIGKILL: the worker gets SIGTERM from the kernel (PR_SET_PDEATHSIG)
    finally:
        server.kill()
        for w in workers:
            w.resume()
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert len(gone) == 1 and not alive
    ids = [p["receipt_id"] for p in seen]
    assert ledger.pending_count(world.run.run_id) == len(ids) == 18
    with ServeProcess(world.run.run_id, world.env, price=PRICE, ledger=path, extra=deferred):
        wait_attributed(ledger, world.run.run_id)
    filled = [ledger.receipt(rid) for rid in ids]
    assert all(r.split in ("query", "run") and sum(v for _, v in r.amounts) == PRICE for r in filled)
    assert sorted(ledger.receipt_ids()) == sorted(ids)  # each charged once, none lost
    assert ledger.key(key_id).balance == 10**9 - PRICE * len(ids)
    # the same bps as the synchronous path, request by request
    sync = [world.served.predict(world.run.X_test[[i, 0]] if i % 2 == 0 else world.run.X_test[[i]])
            for i in range(len(rows))]
    assert [r.bps for r in filled] == [p.bps for preds in sync for p in preds]


def caravan(env: dict, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_settle_refuses_or_drains_pending_receipts(world, tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    _, secret = ledger.create_key("user", balance=10**9)
    with ServeProcess(
        world.run.run_id, world.env, price=PRICE, ledger=path, extra=("--attribution", "deferred")
    ) as server:
        workers = psutil.Process(server.pid).children()
        for w in workers:
            w.suspend()
        seen = predict(server.url, secret, world.run.X_test[:3].tolist())
        server.kill()
        for w in workers:
            w.resume()  # and ends: its server is gone
    refused = caravan(world.env, "settle", "--no-drain", "--ledger", str(path))
    assert refused.returncode == 1 and "5 receipt(s) still await their attribution" in refused.stderr
    assert "caravan attribute" in refused.stderr and ledger.epochs() == []
    done = caravan(world.env, "settle", "--json", "--ledger", str(path))
    assert done.returncode == 0, done.stderr
    [epoch] = json.loads(done.stdout)
    assert epoch["n_receipts"] == len(seen) == 5 and ledger.pending_count() == 0
    assert verify_epoch(world.chain, world.store, epoch["epoch_id"]).ok


def test_caravan_attribute_drains_once(world, tmp_path):
    from fastapi.testclient import TestClient

    from serving import create_app

    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    _, secret = ledger.create_key("user", balance=10**9)
    app = create_app(world.served, ledger, price=PRICE, attribution="deferred")  # no worker beside it
    r = TestClient(app).post(
        "/v1/predict", json={"inputs": world.run.X_test[:2].tolist()}, headers={API_KEY_HEADER: secret}
    )
    assert r.status_code == 200 and ledger.pending_count() == 2
    out = caravan(world.env, "attribute", world.run.run_id, "--ledger", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("attributed 2 receipts from 1 request(s)") and ledger.pending_count() == 0
    again = caravan(world.env, "attribute", world.run.run_id, "--ledger", str(path))
    assert again.stdout.startswith("attributed 0 receipts")


def test_caravan_attribute_pays_an_unattributable_input_by_the_run_weights_and_exits_nonzero(world, tmp_path):
    from serving.ledger import Charge

    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    key_id, _ = ledger.create_key("user", balance=10**9)
    [pred] = world.served.predict(world.run.X_test[:1], defer=True)
    [receipt] = ledger.charge(key_id, world.run.run_id, world.served.model_cid, PRICE, [
        Charge(pred.input_hash, "no-such-class", pred.probability, pred.split, (), (), pred.payload)
    ]).receipts
    out = caravan(world.env, "attribute", world.run.run_id, "--ledger", str(path))
    assert out.returncode == 1 and out.stdout.startswith("attributed 1 receipts from 1 request(s)")
    assert f"error: receipt {receipt.receipt_id}: its request could not be attributed" in out.stderr
    assert ledger.pending_count() == 0 and ledger.receipt(receipt.receipt_id).split == "run"


def test_caravan_attribute_refuses_a_malformed_input_key_by_name(world, tmp_path):
    env = {**world.env, "CARAVAN_LEDGER_INPUT_KEY": "not-hex"}
    out = caravan(env, "attribute", world.run.run_id, "--ledger", str(tmp_path / "ledger.sqlite"))
    assert out.returncode == 1 and "CARAVAN_LEDGER_INPUT_KEY must be 64 hex characters" in out.stderr
    assert "not-hex" not in out.stderr  # a secret's value is never echoed
