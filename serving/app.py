"""The FastAPI app: metered predictions, receipts, health and Prometheus metrics.

A prediction call is checked in this order, each refusal a 4xx with one clear message and no
charge: key present (401), known (401) and not revoked (403), within its rate (429), inputs
well-formed (422: JSON, finite numbers, feature count, batch size), balance enough (402).
Only then is the model run, and the receipts are committed before the response is returned.
"""

import math
import time
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field, model_validator

from serving.errors import InsufficientBalance, LedgerError, RevokedKey, UnknownKey
from serving.fees import split_price
from serving.ledger import ApiKey, Charge, Ledger
from serving.run import ServedRun

API_KEY_HEADER = "X-API-Key"
Finite = Annotated[float, Field(allow_inf_nan=False)]


class Contributor(BaseModel):
    address: str
    contributors: str = Field(description="contributor ids behind this address")
    share: float = Field(description="fraction of this prediction's fee")
    amount: int = Field(description="amount of the fee, in the token's smallest unit")


class PredictionOut(BaseModel):
    receipt_id: str
    label: str
    probability: float
    price: int
    split: str = Field(description="'query': this prediction's own attribution; 'run': the run's weights")
    top_contributors: list[Contributor]


class PredictResponse(BaseModel):
    run_id: str
    model_cid: str
    price_charged: int
    balance: int
    predictions: list[PredictionOut]


class ReceiptAmount(BaseModel):
    address: str
    amount: int


class ReceiptBps(BaseModel):
    address: str
    bps: int


class ReceiptOut(BaseModel):
    receipt_id: str
    created_at: str
    run_id: str
    model_cid: str
    input_hash: str
    output: dict[str, str | float]
    price: int
    split: str
    amounts: list[ReceiptAmount]
    bps: list[ReceiptBps]
    epoch_id: str | None


class ErrorOut(BaseModel):
    error: str


def create_app(
    run: ServedRun,
    ledger: Ledger,
    *,
    price: int,
    max_batch: int = 64,
    attribute: bool = True,
    top_k: int = 5,
) -> FastAPI:
    if price < 1:
        raise LedgerError("the price per prediction must be a positive integer (smallest token unit)")
    n_features = run.n_features

    class PredictRequest(BaseModel):
        """One input (`input`) or a batch (`inputs`) of raw feature rows."""

        input: list[Finite] | None = Field(None, min_length=1)
        inputs: list[list[Finite]] | None = Field(None, min_length=1, max_length=max_batch)

        @model_validator(mode="after")
        def one_of(self) -> "PredictRequest":
            if (self.input is None) == (self.inputs is None):
                raise ValueError("send exactly one of `input` (one row) or `inputs` (a batch of rows)")
            return self

        def rows(self) -> list[list[float]]:
            return [self.input] if self.input is not None else list(self.inputs)

    registry = CollectorRegistry()
    requests = Counter("caravan_requests", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram(
        "caravan_request_seconds",
        "HTTP request latency",
        ["endpoint"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    )
    predictions = Counter("caravan_predictions", "paid predictions", registry=registry)
    fees = Counter("caravan_fees_accrued", "fees charged, smallest token unit", registry=registry)
    settled = Gauge("caravan_settled_epochs", "settlement epochs closed (from the ledger)", registry=registry)
    settled.set_function(lambda: sum(e.state == "closed" for e in ledger.epochs()))
    key_header = APIKeyHeader(
        name=API_KEY_HEADER, auto_error=False, description="API key from `caravan keys create`"
    )
    errors = {
        401: {"model": ErrorOut},
        402: {"model": ErrorOut},
        403: {"model": ErrorOut},
        404: {"model": ErrorOut},
        422: {"model": ErrorOut},
        429: {"model": ErrorOut},
    }

    app = FastAPI(
        title="Caravan pay-per-use inference",
        version="1",
        description=f"Model of attribution run {run.run_id}: each prediction is paid and its fee split "
        "among the contributors whose data made it.",
    )

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        requests.labels(endpoint, str(response.status_code)).inc()
        latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg')}")
        return JSONResponse({"error": "invalid request: " + "; ".join(parts)}, status_code=422)

    def api_key(secret: Annotated[str | None, Security(key_header)]) -> ApiKey:
        if not secret:
            raise HTTPException(401, f"missing API key: send it in the {API_KEY_HEADER} header")
        try:
            return ledger.authenticate(secret)
        except UnknownKey as exc:
            raise HTTPException(401, str(exc)) from None
        except RevokedKey as exc:
            raise HTTPException(403, str(exc)) from None

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "run_id": run.run_id, "model_cid": run.model_cid}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/predict", response_model=PredictResponse, responses=errors)
    def predict(body: PredictRequest, key: Annotated[ApiKey, Depends(api_key)]) -> PredictResponse:
        wait = ledger.rate_wait(key)  # the bucket is in the ledger: shared by every server process
        if wait:
            raise HTTPException(
                429,
                f"rate limit of key {key.key_id} ({key.rate_per_s:g}/s) exceeded; retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        rows = body.rows()
        bad = [i for i, r in enumerate(rows) if len(r) != n_features]
        if bad:
            raise HTTPException(
                422,
                f"input rows {bad[:10]} have {len(rows[bad[0]])} features; the model "
                f"expects {n_features} per row",
            )
        cost = price * len(rows)
        if key.balance < cost:
            raise HTTPException(
                402,
                f"balance {key.balance} cannot cover {len(rows)} prediction(s) at {price} "
                "each; top the key up (`caravan keys topup`)",
            )
        out = run.predict(np.asarray(rows, dtype=np.float64), attribute=attribute)
        overflow = [i for i, p in enumerate(out) if not math.isfinite(p.probability)]
        if overflow:  # finite inputs far outside the training range overflow the float32 model
            raise HTTPException(
                422,
                f"input rows {overflow[:10]} are too large for the model (its output is not finite); "
                "send values on the scale of the training data",
            )
        items = [
            Charge(p.input_hash, p.label, p.probability, p.split, p.bps, tuple(split_price(price, p.bps)))
            for p in out
        ]
        try:
            charged = ledger.charge(key.key_id, run.run_id, run.model_cid, price, items)
        except InsufficientBalance as exc:
            raise HTTPException(402, str(exc)) from None
        except RevokedKey as exc:
            raise HTTPException(403, str(exc)) from None
        predictions.inc(len(charged.receipts))
        fees.inc(cost)
        return PredictResponse(
            run_id=run.run_id,
            model_cid=run.model_cid,
            price_charged=cost,
            balance=charged.balance,
            predictions=[_prediction(r, run, top_k) for r in charged.receipts],
        )

    @app.get("/v1/receipts/{receipt_id}", response_model=ReceiptOut, responses=errors)
    def receipt(receipt_id: str, key: Annotated[ApiKey, Depends(api_key)]) -> ReceiptOut:
        found = ledger.receipt(receipt_id)
        if found is None or ledger.receipt_owner(receipt_id) != key.key_id:
            raise HTTPException(404, f"no receipt {receipt_id!r} for this API key")
        return ReceiptOut(**found.to_json())

    return app


def _prediction(receipt, run: ServedRun, top_k: int) -> PredictionOut:
    top = sorted(receipt.amounts, key=lambda t: (-t[1], t[0]))[:top_k]
    return PredictionOut(
        receipt_id=receipt.receipt_id,
        label=receipt.label,
        probability=receipt.probability,
        price=receipt.price,
        split=receipt.split,
        top_contributors=[
            Contributor(address=a, contributors=run.names.get(a, ""), share=v / receipt.price, amount=v)
            for a, v in top
            if v > 0
        ],
    )
