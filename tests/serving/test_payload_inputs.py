"""Text and image runs served: inputs of the run's kind are paid and attributed, anything else is a
422 with no charge; the OpenAPI schema says which input a run takes."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving import API_KEY_HEADER, create_app, load_run
from serving.sample import build_sample_run

PRICE = 10**12


@pytest.fixture(scope="module", params=["text", "image"])
def served(request, world):
    run = build_sample_run(world.store, world.chain, n=96, seed=5, kind=request.param)
    return run, load_run(world.chain, world.store, run.run_id)


def client_for(served, ledger):
    run, loaded = served
    _, secret = ledger.create_key("user", balance=100 * PRICE)
    return TestClient(create_app(loaded, ledger, price=PRICE)), {API_KEY_HEADER: secret}


def body(run, values: list) -> list:
    if run.kind == "text":
        return values
    return [{"image_base64": base64.b64encode(v).decode()} for v in values]


def test_a_payload_prediction_is_paid_and_split_by_its_own_attribution(served, ledger):
    run, loaded = served
    client, headers = client_for(served, ledger)
    one = client.post("/v1/predict", json={"input": body(run, run.inputs[:1])[0]}, headers=headers)
    assert one.status_code == 200, one.text
    (pred,) = one.json()["predictions"]
    assert pred["split"] == "query" and pred["top_contributors"]
    assert sum(c["amount"] for c in pred["top_contributors"]) <= PRICE
    # the same input hashed as received: the receipt names it
    expected = loaded.predict_payloads(run.inputs[:1])[0]
    receipt = client.get(f"/v1/receipts/{pred['receipt_id']}", headers=headers).json()
    assert receipt["input_hash"] == expected.input_hash
    assert pred["label"] == expected.label
    batch = client.post("/v1/predict", json={"inputs": body(run, run.inputs[:5])}, headers=headers)
    assert batch.status_code == 200 and len(batch.json()["predictions"]) == 5
    assert batch.json()["balance"] == 100 * PRICE - 6 * PRICE


def test_the_contributions_match_the_features_scores(served):
    run, loaded = served
    preds = loaded.predict_payloads(run.inputs[:3])
    batch, _ = loaded.encoding.inputs(run.inputs[:3])
    labels = [loaded.encoding.classes.index(p.label) for p in preds]
    import torch

    scores = loaded.features.scores({**batch, "labels": torch.as_tensor(labels)})
    assert scores.shape == (len(loaded.example_ids), 3) and np.isfinite(scores).all()


def wrong_inputs(kind: str) -> list:
    numbers = {"input": [1.0, 2.0]}
    if kind == "text":
        return [numbers, {"input": "   "}, {"input": {"image_base64": "aGk="}}, {"inputs": []}]
    not_png = base64.b64encode(b"not an image").decode()
    return [numbers, {"input": "some text"}, {"input": {"image_base64": not_png}},
            {"input": {"image_base64": "%%%"}}]


def test_a_wrong_input_for_the_run_is_a_422_with_no_charge(served, ledger):
    run, _ = served
    client, headers = client_for(served, ledger)
    for payload in wrong_inputs(run.kind):
        r = client.post("/v1/predict", json=payload, headers=headers)
        assert r.status_code == 422, (payload, r.text)
        assert "error" in r.json()
    key = ledger.authenticate(headers[API_KEY_HEADER])
    assert key.balance == 100 * PRICE


def test_the_openapi_schema_says_which_input_the_run_takes(served, ledger):
    run, _ = served
    client, _ = client_for(served, ledger)
    spec = client.get("/openapi.json").json()
    described = spec["paths"]["/v1/predict"]["post"]["description"]
    assert ("image_base64" in described) == (run.kind == "image")
    assert ("/v1/predict/upload" in spec["paths"]) == (run.kind == "image")


def test_an_image_run_takes_a_multipart_upload(served, ledger):
    run, _ = served
    if run.kind != "image":
        pytest.skip("uploads are for image runs")
    client, headers = client_for(served, ledger)
    upload = {"file": ("x.png", run.inputs[0], "image/png")}
    r = client.post("/v1/predict/upload", files=upload, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["price_charged"] == PRICE
    bad = client.post("/v1/predict/upload", files={"file": ("x.png", b"nope", "image/png")}, headers=headers)
    assert bad.status_code == 422
    assert client.post("/v1/predict/upload", files={"file": ("x.png", b"x", "image/png")}).status_code == 401
