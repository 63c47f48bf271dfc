"""Property-based requests from the app's own OpenAPI schema: no server error, whatever is sent."""

from __future__ import annotations

import hashlib

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from serving import API_KEY_HEADER, create_app

PRICE = 10


@pytest.fixture(scope="module")
def app_and_key(world, tmp_path_factory):
    from serving import Ledger

    ledger = Ledger(tmp_path_factory.mktemp("st") / "ledger.sqlite", synchronous="NORMAL")
    _, secret = ledger.create_key("schemathesis", balance=10**15, rate_per_s=10**6, burst=10**6)
    return create_app(world.served, ledger, price=PRICE, max_batch=8), secret


def test_no_server_error(app_and_key):
    app, secret = app_and_key
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/receipts/{receipt_id}", "/healthz"}
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,  # the same cases every run: CI is reproducible
        )
        def call(case):
            # half the calls carry a valid key, so generated bodies reach the model and the ledger
            if hashlib.sha256(repr(case.body).encode()).digest()[0] % 2 == 0:
                case.headers = {**(case.headers or {}), API_KEY_HEADER: secret}
            case.call_and_validate(checks=[not_a_server_error])

        call()
