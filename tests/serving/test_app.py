"""The HTTP app in-process (FastAPI's TestClient): paid predictions, receipts, every refusal free."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serving import API_KEY_HEADER, Ledger, create_app

PRICE = 1_000_003


@pytest.fixture
def client(world, ledger: Ledger) -> TestClient:
    return TestClient(create_app(world.served, ledger, price=PRICE, max_batch=8))


def key(ledger: Ledger, balance: int = 100 * PRICE, **kw) -> tuple[str, dict[str, str]]:
    key_id, secret = ledger.create_key("tests", balance=balance, **kw)
    return key_id, {API_KEY_HEADER: secret}


def nothing_charged(ledger: Ledger, key_id: str, balance: int) -> bool:
    return ledger.key(key_id).balance == balance and ledger.receipt_ids() == []


def test_single_and_batch_predictions_are_paid_and_receipted(world, client, ledger):
    key_id, headers = key(ledger)
    one = client.post("/v1/predict", json={"input": world.run.X_test[0].tolist()}, headers=headers)
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["price_charged"] == PRICE and len(body["predictions"]) == 1
    pred = body["predictions"][0]
    assert pred["label"] in {"a", "b", "c"} and pred["top_contributors"]
    rid = pred["receipt_id"]
    receipt = client.get(f"/v1/receipts/{rid}", headers=headers).json()
    assert receipt["price"] == PRICE and sum(a["amount"] for a in receipt["amounts"]) == PRICE
    assert receipt["model_cid"] == world.served.model_cid
    # the top contributors are the receipt's 5 largest amounts (ties by address), share = amount / price
    largest = sorted((-a["amount"], a["address"]) for a in receipt["amounts"] if a["amount"] > 0)[:5]
    assert [(-c["amount"], c["address"]) for c in pred["top_contributors"]] == largest
    assert all(c["share"] == c["amount"] / PRICE for c in pred["top_contributors"])
    batch = client.post("/v1/predict", json={"inputs": world.run.X_test[:8].tolist()}, headers=headers)
    assert batch.status_code == 200 and batch.json()["price_charged"] == 8 * PRICE
    assert ledger.key(key_id).balance == 91 * PRICE == batch.json()["balance"]
    # another key cannot read it
    _, other = key(ledger)
    assert client.get(f"/v1/receipts/{rid}", headers=other).status_code == 404


# refused before attribution runs: attributing an overflowed row warned as it cast 1.4e69 to float32
@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 422, "JSON"),
        (b'{"input": [1, 2]}', 422, "expects 6"),
        (b'{"input": [NaN, 1, 1, 1, 1, 1]}', 422, "finite"),
        (b'{"input": [Infinity, 1, 1, 1, 1, 1]}', 422, "finite"),
        (b'{"input": [1e999, 1, 1, 1, 1, 1]}', 422, "finite"),
        (json.dumps({"inputs": [[0.0] * 6] * 9}).encode(), 422, "at most 8"),
        (b'{"inputs": []}', 422, "at least 1"),
        (b'{"input": [1, 1, 1, 1, 1, 1], "inputs": [[1, 1, 1, 1, 1, 1]]}', 422, "exactly one"),
        (b'{"input": ["x", 1, 1, 1, 1, 1]}', 422, "number"),
        (b'{"input": "a text, to a run of numeric rows"}', 422, "valid list"),  # a wrong input type
        (b'{"input": [1.4e69, 1, 1, 1, 1, 1]}', 422, "too large"),  # finite, but overflows float32
    ],
)
def test_bad_input_is_refused_free(client, ledger, body, status, message):
    key_id, headers = key(ledger)
    r = client.post("/v1/predict", content=body, headers={**headers, "content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message.lower() in r.json()["error"].lower()
    assert nothing_charged(ledger, key_id, 100 * PRICE)


def test_inputs_by_named_fields_are_the_rows_they_name(world, client, ledger):
    """An input sent by its training columns is charged, hashed and answered as the same row of numbers;
    a missing value (null) is the training mean; a bad field is refused, naming it, and nothing charged."""
    columns, rows = world.served.encoding.columns, world.run.X_test[:3].tolist()
    named = [dict(zip(columns, r, strict=True)) for r in rows]
    key_id, headers = key(ledger)

    def receipts(body: dict) -> list[tuple]:
        r = client.post("/v1/predict", json=body, headers=headers)
        assert r.status_code == 200, r.text
        ids = [p["receipt_id"] for p in r.json()["predictions"]]
        assert all(p["unseen"] == {} for p in r.json()["predictions"])  # numbers only: nothing unseen
        out = [client.get(f"/v1/receipts/{i}", headers=headers).json() for i in ids]
        return [(o["input_hash"], o["output"]["label"], o["bps"]) for o in out]

    assert receipts({"inputs": named}) == receipts({"inputs": rows})
    assert receipts({"input": {**named[0], "customer": "c-17"}}) == receipts({"input": rows[0]})  # not read
    mean = dict(zip(columns, world.served.encoding.mean, strict=True))
    gap = receipts({"input": {**named[0], columns[0]: None}})
    assert gap == receipts({"input": list({**named[0], columns[0]: mean[columns[0]]}.values())})
    description = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["description"]
    assert "This run's fields: " + ", ".join(f"`{c}` (a number)" for c in columns) in description
    balance = ledger.key(key_id).balance
    for body, message in [
        ({"input": {columns[0]: 1.0}}, f"lacks fields {list(columns[1:])}"),
        ({"input": {"zz": 1.0}}, f"lacks fields {list(columns)} (send null for a missing value), and has "
                                   "['zz']"),
        ({"input": {**named[0], columns[1]: "x"}}, f"field '{columns[1]}' takes a number"),
        ({"inputs": [named[0], rows[1]]}, "in one form"),
    ]:
        r = client.post("/v1/predict", json=body, headers=headers)
        assert r.status_code == 422 and message in r.json()["error"], r.text
    assert ledger.key(key_id).balance == balance


def test_keys_and_balance_refusals(world, client, ledger):
    row = {"input": world.run.X_test[0].tolist()}
    assert client.post("/v1/predict", json=row).status_code == 401
    assert client.post("/v1/predict", json=row, headers={API_KEY_HEADER: "cvn_nope"}).status_code == 401
    key_id, headers = key(ledger)
    ledger.revoke(key_id)
    r = client.post("/v1/predict", json=row, headers=headers)
    assert r.status_code == 403 and "revoked" in r.json()["error"]
    poor, poor_headers = key(ledger, balance=PRICE - 1)
    r = client.post("/v1/predict", json=row, headers=poor_headers)
    assert r.status_code == 402 and "balance" in r.json()["error"]
    empty, empty_headers = key(ledger, balance=0)
    assert client.post("/v1/predict", json=row, headers=empty_headers).status_code == 402
    two, two_headers = key(ledger, balance=2 * PRICE)
    r = client.post("/v1/predict", json={"inputs": [row["input"]] * 3}, headers=two_headers)
    assert r.status_code == 402
    assert ledger.receipt_ids() == []
    assert ledger.key(poor).balance == PRICE - 1 and ledger.key(two).balance == 2 * PRICE


def test_rate_limit_per_key(world, client, ledger):
    row = {"input": world.run.X_test[0].tolist()}
    _, slow = key(ledger, rate_per_s=0.01, burst=2)
    _, fast = key(ledger)
    codes = [client.post("/v1/predict", json=row, headers=slow).status_code for _ in range(4)]
    assert codes == [200, 200, 429, 429]
    assert client.post("/v1/predict", json=row, headers=fast).status_code == 200
    assert len(ledger.receipt_ids()) == 3


def test_health_metrics_openapi(world, client, ledger):
    _, headers = key(ledger)
    client.post("/v1/predict", json={"inputs": world.run.X_test[:3].tolist()}, headers=headers)
    assert client.post("/v1/predict", json={"inputs": world.run.X_test[:3].tolist()}).status_code == 401
    assert client.get("/healthz").json()["run_id"] == world.run.run_id
    text = client.get("/metrics").text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["caravan_fees_accrued_total"] == 3 * PRICE
    assert samples["caravan_predictions_total"] == 3
    assert 'caravan_requests_total{endpoint="/v1/predict",status="200"}' in text
    assert 'caravan_requests_total{endpoint="/v1/predict",status="401"}' in text  # refused by the gate
    assert "caravan_settled_epochs" in text
    schema = client.get("/openapi.json").json()
    assert "/v1/predict" in schema["paths"] and "/v1/receipts/{receipt_id}" in schema["paths"]
