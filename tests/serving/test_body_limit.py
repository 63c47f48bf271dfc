"""What a request may cost before anyone is charged, against a real `caravan serve` child (uvicorn):
the key is checked before any body byte is read (401), a body over the limit is refused with 413 from
its Content-Length or while it streams, the server's memory stays bounded, and no refusal charges."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from pipelines.serve_process import ServeProcess
from serving import API_KEY_HEADER, Ledger, create_app
from serving.body_limit import (
    JSON_OVERHEAD,
    default_max_body_bytes,
    image_input_bytes,
    input_bytes,
    numeric_input_bytes,
    text_input_bytes,
)

PRICE = 1_000
BALANCE = 10**9
HUGE = 120 * 2**20  # the 120 MB body
CHUNK = 2**20
RSS_BOUND = 50 * 2**20  # the server's memory may grow this much while a hostile body arrives


class Server:
    def __init__(self, proc: ServeProcess, ledger_path: Path, key_id: str, secret: str, log: Path) -> None:
        self.proc, self.ledger_path, self.key_id, self.secret, self.log = (
            proc,
            ledger_path,
            key_id,
            secret,
            log,
        )
        self.url = proc.url + "/v1/predict"

    def state(self) -> tuple[int, int]:
        """(the key's balance, receipts in the ledger)."""
        ledger = Ledger(self.ledger_path)
        return ledger.key(self.key_id).balance, len(ledger.receipt_ids())


@pytest.fixture(scope="module")
def server(world, tmp_path_factory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("body-limit")
    path = home / "ledger.sqlite"
    key_id, secret = Ledger(path).create_key("limits", balance=BALANCE, rate_per_s=10**6, burst=10**6)
    log = home / "serve.log"
    proc = ServeProcess(world.run.run_id, world.env, price=PRICE, ledger=path, log_path=log).start()
    try:
        yield Server(proc, path, key_id, secret, log)
    finally:
        proc.stop()


def limit_of(world) -> int:
    return default_max_body_bytes(world.served.encoding, 64)  # `caravan serve`'s default --max-batch


def stream(total: int, counter: list[int]) -> Iterator[bytes]:
    """`total` bytes of an (invalid) JSON body, CHUNK at a time, never held whole; counts what was sent."""
    yield b'{"inputs": [[0'
    counter[0] += 14
    block = b" " * CHUNK
    while counter[0] < total:
        n = min(CHUNK, total - counter[0])
        counter[0] += n
        yield block[:n]


class PeakRss:
    """The largest RSS of `pid` seen while the block runs (sampled every 5 ms)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.baseline = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def post(server: Server, content, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(timeout=60) as client:
        return client.post(
            server.url, content=content, headers={"content-type": "application/json", **headers}
        )


def hostile(server: Server, *, declared: bool, key: bool) -> tuple[httpx.Response, float, int, int]:
    """A HUGE streamed body, declared in Content-Length or chunked, with or without the key:
    (response, seconds, bytes the client got to send, the server's RSS growth meanwhile)."""
    sent = [0]
    headers = {"Content-Length": str(HUGE)} if declared else {}
    if key:
        headers[API_KEY_HEADER] = server.secret
    with PeakRss(server.proc.pid) as rss:
        t0 = time.perf_counter()
        r = post(server, stream(HUGE, sent), headers)
        elapsed = time.perf_counter() - t0
    print(
        f"{'Content-Length' if declared else 'chunked'} {HUGE >> 20} MiB body, {'a' if key else 'no'} key: "
        f"{r.status_code} in {elapsed:.2f} s, client sent {sent[0] / 2**20:.1f} MiB, "
        f"server RSS +{rss.growth / 2**20:.1f} MiB"
    )
    return r, elapsed, sent[0], rss.growth


def warm(server: Server, world) -> None:
    r = httpx.post(
        server.url, json={"input": world.run.X_test[0].tolist()}, headers={API_KEY_HEADER: server.secret}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_huge_body_without_a_key_is_refused_unread(server, world, declared):
    warm(server, world)
    before = server.state()
    r, elapsed, sent, growth = hostile(server, declared=declared, key=False)
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    assert elapsed < 10 and growth < RSS_BOUND
    assert sent < HUGE // 2  # the server closed the connection instead of reading the rest
    bad = post(server, stream(HUGE, [0]), {"Content-Length": str(HUGE), API_KEY_HEADER: "cvn_nope"})
    assert bad.status_code == 401 and "unknown API key" in bad.json()["error"]
    assert server.state() == before


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_huge_body_with_a_key_gets_413_and_no_charge(server, world, declared):
    warm(server, world)
    before = server.state()
    r, elapsed, sent, growth = hostile(server, declared=declared, key=True)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert str(limit_of(world)) in error and "caravan serve --max-body-bytes" in error
    assert elapsed < 10 and growth < RSS_BOUND
    assert sent < HUGE // 2
    assert server.state() == before
    warm(server, world)  # the server still serves


def padded(body: dict, size: int) -> bytes:
    raw = json.dumps(body).encode()
    assert len(raw) <= size
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_at_the_limit_is_served_and_one_byte_more_is_not(server, world, declared):
    limit = limit_of(world)
    rows = world.run.X_test[:64].tolist()
    at_limit = padded({"inputs": rows}, limit)

    def send(content: bytes):
        if declared:
            return post(server, content, {API_KEY_HEADER: server.secret})
        chunks = (content[i : i + 4096] for i in range(0, len(content), 4096))  # chunked, no length
        return post(server, chunks, {API_KEY_HEADER: server.secret})

    balance, receipts = server.state()
    r = send(at_limit)
    assert r.status_code == 200, r.text
    assert r.json()["price_charged"] == 64 * PRICE
    assert server.state() == (balance - 64 * PRICE, receipts + 64)  # charged once
    over = send(padded({"inputs": rows}, limit + 1))
    assert over.status_code == 413 and "--max-body-bytes" in over.json()["error"]
    assert server.state() == (balance - 64 * PRICE, receipts + 64)


@pytest.mark.parametrize(
    "body",
    [
        {"input": "a text, sent to a run of numeric rows"},
        {"inputs": ["one text", "another"]},
        {"input": [[[0.5] * 6]]},
        {"image": "iVBORw0KGgo="},
    ],
)
def test_a_wrong_input_type_is_422_free(server, body):
    before = server.state()
    r = post(server, json.dumps(body).encode(), {API_KEY_HEADER: server.secret})
    assert r.status_code == 422 and r.json()["error"].startswith("invalid request")
    assert server.state() == before


def test_the_limit_is_in_the_log_the_schema_and_overridable(server, world, ledger):
    limit = limit_of(world)
    assert f"request bodies up to {limit} bytes" in server.log.read_text()
    schema = httpx.get(server.proc.url + "/openapi.json").json()
    assert str(limit) in schema["info"]["description"]
    assert "413" in schema["paths"]["/v1/predict"]["post"]["responses"]
    # `caravan serve --max-body-bytes` (create_app's max_body_bytes) replaces the default
    app = create_app(world.served, ledger, price=PRICE, max_body_bytes=1000)
    assert app.state.max_body_bytes == 1000
    key_id, secret = ledger.create_key("small", balance=BALANCE)
    r = TestClient(app).post(
        "/v1/predict", json={"inputs": world.run.X_test[:20].tolist()}, headers={API_KEY_HEADER: secret}
    )
    assert r.status_code == 413 and "limit of 1000 bytes" in r.json()["error"]
    assert ledger.key(key_id).balance == BALANCE and ledger.receipt_ids() == []
    assert create_app(world.served, ledger, price=PRICE, max_batch=8).state.max_body_bytes == (
        8 * numeric_input_bytes(6, {f"f{j}": 0 for j in range(6)}) + JSON_OVERHEAD  # by number or by name
    )


def test_the_default_limit_formula():
    class Numeric:
        n_features = 6

    class Text:
        max_length = 512

    class Image:
        height, width, channels = 32, 32, 3

    class Named(Numeric):
        columns = ("age", "city")
        categories = (("city", ("Lima", "Ulaanbaatar")),)

    assert input_bytes(Numeric()) == numeric_input_bytes(6) == 6 * 64 + 64
    assert input_bytes(Named()) == 6 * 64 + 64 + (3 * 6 + 16) + ((4 + 11) * 6 + 16)
    assert input_bytes(Text()) == text_input_bytes(512) == 512 * 6 + 64
    assert input_bytes(Image()) == image_input_bytes(32, 32, 3) == 32 * 32 * 3 * 3 // 2 + 64
    assert default_max_body_bytes(Numeric(), 64) == 64 * (6 * 64 + 64) + JSON_OVERHEAD
