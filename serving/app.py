"""The FastAPI app: metered predictions, receipts, health and Prometheus metrics.

A prediction call is checked in this order, each refusal a 4xx with one clear JSON `error` and no
charge: key present (401), known (401) and not revoked (403), within its rate (429), all from the
headers before any body byte is read (`serving.body_limit.RequestGate`); body within the server's
limit (413: from its Content-Length, or while it streams); inputs well-formed (422: JSON, finite
numbers, feature count, batch size), balance enough (402). Only then is the model run, and the
receipts are committed before the response is returned.

Attribution (`attribution=`): "sync" computes each prediction's own split inside the request;
"deferred" answers and charges at once with split "pending", the inputs stored with the receipts in
the same transaction, and an attribution worker (`serving.deferred`, started beside the server)
fills each split later, with the same bps; "off" splits every fee by the run's weights.
"""

import base64
import binascii
import time
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Request, Security, UploadFile
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
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from attribution import InputError
from serving.body_limit import Refusal, RequestGate, default_max_body_bytes, header
from serving.errors import InsufficientBalance, LedgerError, RevokedKey, UnknownKey
from serving.fees import split_price
from serving.ledger import SPLIT_PENDING, ApiKey, Charge, Ledger
from serving.run import Prediction, ServedRun

API_KEY_HEADER = "X-API-Key"
KEY_SCOPE = "caravan.api_key"  # the ApiKey the gate authenticated, in the request's ASGI scope
PREDICT = "/v1/predict"
PREDICT_UPLOAD = "/v1/predict/upload"  # image runs: a multipart upload, field `file`
PAID = (PREDICT, PREDICT_UPLOAD)
ATTRIBUTION_MODES = ("sync", "deferred", "off")
Finite = Annotated[float, Field(allow_inf_nan=False)]
# one numeric input by its training table's columns: a number, a list (an embedding), a category, or null
Named = dict[str, Finite | str | list[Finite] | None]
INPUT_DOCS = {
    "numeric": "`{\"input\": {\"column\": value, ...}}` (one input by the training table's feature "
    "columns: a number, a list of numbers, a category as its string, null for a missing value) or "
    "`{\"input\": [numbers]}` (the model's raw features, categories one-hot); a batch as "
    "`{\"inputs\": [...]}`, all in one form.",
    "text": "`{\"input\": \"some text\"}` or `{\"inputs\": [\"text\", ...]}`; texts longer than the "
    "model's maximum length keep their first tokens, as in training.",
    "image": "`{\"input\": {\"image_base64\": \"...\"}}` (PNG or JPEG file bytes, base64) or "
    "`{\"inputs\": [{\"image_base64\": \"...\"}, ...]}`; or one file as a multipart upload to "
    f"`{PREDICT_UPLOAD}` (field `file`). Images are decoded as in training (the run's image policy).",
}


def input_docs(run: ServedRun) -> str:
    """What `/v1/predict` takes, for the run's kind; for a numeric run also its own fields, so the
    OpenAPI page says what to send by name."""
    if run.kind != "numeric":
        return INPUT_DOCS[run.kind]
    one_hot = dict(run.encoding.categories)
    fields = [f"`{c}` ({'|'.join(one_hot[c]) if c in one_hot else 'a number' if w == 1 else f'{w} numbers'})"
              for c, w in zip(run.encoding.columns, run.encoding.widths, strict=True)]
    return f"{INPUT_DOCS['numeric']} This run's fields: {', '.join(fields)}."


class ImageIn(BaseModel):
    """One image input: a PNG or JPEG file's bytes, base64-encoded, decoded as in training."""

    image_base64: str = Field(min_length=1, description="the image file's bytes (PNG, JPEG), base64")


def request_model(run: ServedRun, max_batch: int) -> type[BaseModel]:
    """The `/v1/predict` body for the run's kind of input: numbers, a text, or an image."""
    item = {"numeric": list[Finite] | Named, "text": Annotated[str, Field(min_length=1)],
            "image": ImageIn}[run.kind]

    class PredictRequest(BaseModel):
        """One input (`input`) or a batch (`inputs`)."""

        input: item | None = Field(None)  # type: ignore[valid-type]
        inputs: list[item] | None = Field(None, min_length=1, max_length=max_batch)  # type: ignore[valid-type]

        @model_validator(mode="after")
        def one_of(self) -> "PredictRequest":
            if (self.input is None) == (self.inputs is None):
                raise ValueError("send exactly one of `input` (one input) or `inputs` (a batch)")
            if run.kind == "numeric" and self.input is not None and not self.input:
                raise ValueError("`input` needs at least one number")
            return self

        def rows(self) -> list:
            return [self.input] if self.input is not None else list(self.inputs)

    return PredictRequest


def attribution_mode(requested: str, run: ServedRun) -> str:
    """``requested`` (one of ATTRIBUTION_MODES), or for "auto": "deferred" for a text or image run,
    whose attribution (a forward and backward pass per checkpoint) costs several times the prediction,
    and "sync" for a numeric run, whose attribution is about as cheap as its prediction."""
    if requested == "auto":
        return "sync" if run.kind == "numeric" else "deferred"
    if requested not in ATTRIBUTION_MODES:
        raise LedgerError(f"attribution must be auto or one of {ATTRIBUTION_MODES}, got {requested!r}")
    return requested


def predict_rows(run: ServedRun, rows: list, attribution: str) -> list[Prediction]:
    """The model's predictions for well-formed rows of the run's kind; 422 for any it cannot take."""
    attribute, defer = attribution != "off", attribution == "deferred"
    if run.kind == "numeric":
        rows = feature_rows(run, rows)
        bad = [i for i, r in enumerate(rows) if len(r) != run.n_features]
        if bad:
            raise HTTPException(
                422,
                f"input rows {bad[:10]} have {len(rows[bad[0]])} features; the model "
                f"expects {run.n_features} per row",
            )
        try:
            return run.predict(np.asarray(rows, dtype=np.float64), attribute=attribute, defer=defer)
        except InputError as exc:
            raise HTTPException(422, str(exc)) from None
    values = [image_bytes(i, r) for i, r in enumerate(rows)] if run.kind == "image" else rows
    if run.kind == "text":
        blank = [i for i, r in enumerate(rows) if not r.strip()]
        if blank:
            raise HTTPException(422, f"inputs {blank[:10]} are empty or whitespace only; send text")
    try:
        return run.predict_payloads(values, attribute=attribute, defer=defer)
    except InputError as exc:
        raise HTTPException(422, f"inputs cannot be read as the model's {run.kind}: {exc}") from None


def feature_rows(run: ServedRun, rows: list) -> list:
    """Numeric inputs as the model's raw feature rows: inputs sent by named fields encoded as training
    encoded its table (categories one-hot, a missing number the training mean); 422 naming a bad one."""
    named = sum(isinstance(r, dict) for r in rows)
    if not named:
        return rows
    if named < len(rows):
        raise HTTPException(422, "send every input of a batch in one form: all named fields or all lists")
    try:
        return run.encoding.raw_records(rows).tolist()
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None


def unseen_fields(run: ServedRun, rows: list) -> list[dict[str, str]]:
    """Per input, the categories sent by name that training never saw (empty for any other input)."""
    if run.kind == "numeric" and rows and isinstance(rows[0], dict):
        return run.encoding.unseen(rows)
    return [{} for _ in rows]


def image_bytes(index: int, item: "ImageIn | bytes") -> bytes:
    """Image input `index`'s file bytes: an upload's as received, a JSON one's base64 decoded (else 422)."""
    if isinstance(item, bytes):
        return item
    try:
        return base64.b64decode(item.image_base64, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, f"input {index}: image_base64 is not valid base64") from None


class Contributor(BaseModel):
    """One address paid from a prediction's fee: its share and amount, and the contributor ids behind it."""

    address: str
    contributors: str = Field(description="contributor ids behind this address")
    share: float = Field(description="fraction of this prediction's fee")
    amount: int = Field(description="amount of the fee, in the token's smallest unit")


class PredictionOut(BaseModel):
    """One paid prediction: its label and probability, the receipt that records it, and the largest
    shares of its fee."""

    receipt_id: str
    label: str
    probability: float
    price: int
    split: str = Field(
        description="'query': this prediction's own attribution; 'run': the run's weights (no training "
        "example helped it); 'pending': charged, its own attribution computed after this response "
        "(GET /v1/receipts/{receipt_id} shows it once filled)"
    )
    top_contributors: list[Contributor] = Field(
        description="the largest shares of the fee; empty while the split is pending"
    )
    unseen: dict[str, str] = Field(
        default_factory=dict,
        description="fields sent by name whose category training never saw (field: value): the model read "
        "them as none of its known values, so it answered without them",
    )


class PredictResponse(BaseModel):
    """A paid prediction call: the run and model that answered, the total charged and the key's balance
    right after it (both in the token's smallest unit), and one prediction per input, in order."""

    run_id: str
    model_cid: str
    price_charged: int
    balance: int
    predictions: list[PredictionOut]


class ReceiptAmount(BaseModel):
    """One address's part of the receipt's price in the token's smallest unit; the parts sum to the price."""

    address: str
    amount: int


class ReceiptBps(BaseModel):
    """One address's share of the receipt's price in basis points; the shares sum to 10,000."""

    address: str
    bps: int


class ReceiptOut(BaseModel):
    """A receipt as the ledger holds it: the prediction paid for, its price and how the price is split
    (amounts in the token's smallest unit); ``epoch_id`` once a settlement epoch holds it."""

    receipt_id: str
    created_at: str
    run_id: str
    model_cid: str
    input_hash: str
    output: dict[str, str | float]
    price: int
    split: str = Field(description="'query', 'run', or 'pending' (amounts and bps empty until attributed)")
    amounts: list[ReceiptAmount]
    bps: list[ReceiptBps]
    epoch_id: str | None


class ErrorOut(BaseModel):
    """A refused request: `error` says what is wrong and how to fix it; nothing was charged."""

    error: str


def create_app(
    run: ServedRun,
    ledger: Ledger,
    *,
    price: int,
    max_batch: int = 64,
    attribution: str = "sync",
    top_k: int = 5,
    max_body_bytes: int | None = None,
) -> FastAPI:
    """The app; `max_body_bytes` (default `default_max_body_bytes(run.encoding, max_batch)`) bounds a
    request's body, and is `app.state.max_body_bytes`. `attribution` is one of ATTRIBUTION_MODES or
    "auto" (`attribution_mode`); "deferred" needs a worker draining the ledger (`serving.deferred`)."""
    attribution = attribution_mode(attribution, run)
    if price < 1:
        raise LedgerError("the price per prediction must be a positive integer (smallest token unit)")
    if max_body_bytes is None:
        max_body_bytes = default_max_body_bytes(run.encoding, max_batch)
    if max_body_bytes < 1:
        raise LedgerError(f"the body limit must be a positive number of bytes, got {max_body_bytes}")
    PredictRequest = request_model(run, max_batch)

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
    pending = Gauge("caravan_pending_receipts", "receipts awaiting their attribution", registry=registry)
    pending.set_function(lambda: ledger.pending_count(run.run_id))
    key_header = APIKeyHeader(
        name=API_KEY_HEADER, auto_error=False, description="API key from `caravan keys create`"
    )
    errors = {
        401: {"model": ErrorOut},
        402: {"model": ErrorOut},
        403: {"model": ErrorOut},
        404: {"model": ErrorOut},
        413: {"model": ErrorOut},
        422: {"model": ErrorOut},
        429: {"model": ErrorOut},
    }

    app = FastAPI(
        title="Caravan pay-per-use inference",
        version="1",
        description=f"Model of attribution run {run.run_id}: each prediction is paid and its fee split "
        "among the contributors whose data made it"
        + (
            " (attribution deferred: a prediction answers with split 'pending' and its receipt shows "
            "the split once computed)"
            if attribution == "deferred"
            else ""
        )
        + f". Request bodies over {max_body_bytes} bytes are refused (413; "
        "`caravan serve --max-body-bytes`).",
    )
    app.state.max_body_bytes = max_body_bytes
    app.state.attribution = attribution

    @app.exception_handler(StarletteHTTPException)  # the app's, the gate's 413 and routing's 404/405
    async def http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg')}")
        return JSONResponse({"error": "invalid request: " + "; ".join(parts)}, status_code=422)

    async def gate(scope: dict) -> Refusal | None:
        """Key present, known, not revoked, and for a prediction within its rate: from the headers."""
        if not scope["path"].startswith("/v1/"):
            return None
        secret = header(scope, API_KEY_HEADER.lower().encode())
        if not secret:
            return Refusal(401, f"missing API key: send it in the {API_KEY_HEADER} header")
        try:
            key = await run_in_threadpool(ledger.authenticate, secret)
        except UnknownKey as exc:
            return Refusal(401, str(exc))
        except RevokedKey as exc:
            return Refusal(403, str(exc))
        scope[KEY_SCOPE] = key
        if scope["path"] in PAID and scope["method"] == "POST":
            # the bucket is in the ledger: shared by every server process
            wait = await run_in_threadpool(ledger.rate_wait, key)
            if wait:
                return Refusal(
                    429,
                    f"rate limit of key {key.key_id} ({key.rate_per_s:g}/s) exceeded; retry in {wait:.2f} s",
                    {"Retry-After": str(max(1, round(wait)))},
                )
        return None

    def observe(scope: dict, status: int, seconds: float) -> None:
        route = scope.get("route")  # set by the router; a request the gate refused never got there
        if route is None:
            route = next((r for r in app.routes if r.matches(scope)[0] == Match.FULL), None)
        endpoint = getattr(route, "path", "unmatched")
        requests.labels(endpoint, str(status)).inc()
        latency.labels(endpoint).observe(seconds)

    # pure ASGI, outermost first: metrics, then the gate (key from the headers, bounded body), then the app
    app.add_middleware(RequestGate, max_body_bytes=max_body_bytes, gate=gate)
    app.add_middleware(Observe, record=observe)

    def api_key(request: Request, secret: Annotated[str | None, Security(key_header)]) -> ApiKey:
        if KEY_SCOPE in request.scope:  # the gate's, from the headers before the body was read
            return request.scope[KEY_SCOPE]
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

    def paid(rows: list, key: ApiKey) -> PredictResponse:
        """Check the balance, run the model, charge each prediction once (receipts committed first)."""
        cost = price * len(rows)
        if key.balance < cost:
            raise HTTPException(
                402,
                f"balance {key.balance} cannot cover {len(rows)} prediction(s) at {price} "
                "each; top the key up (`caravan keys topup`)",
            )
        items = [_charge(p, price) for p in predict_rows(run, rows, attribution)]
        unseen = unseen_fields(run, rows)  # after the rows were read: a bad one was refused by name
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
            predictions=[
                _prediction(r, run, top_k, new) for r, new in zip(charged.receipts, unseen, strict=True)
            ],
        )

    @app.post(PREDICT, response_model=PredictResponse, responses=errors, description=input_docs(run))
    def predict(body: PredictRequest, key: Annotated[ApiKey, Depends(api_key)]) -> PredictResponse:
        # key and rate were checked by the gate, before the body was read
        return paid(body.rows(), key)

    if run.kind == "image":

        @app.post(PREDICT_UPLOAD, response_model=PredictResponse, responses=errors)
        async def predict_upload(
            file: Annotated[UploadFile, File(description="one image file (PNG, JPEG)")],
            key: Annotated[ApiKey, Depends(api_key)],
        ) -> PredictResponse:
            """One image as a multipart upload (field `file`), paid and attributed as `/v1/predict`."""
            data = await file.read()
            return await run_in_threadpool(paid, [data], key)

    @app.get("/v1/receipts/{receipt_id}", response_model=ReceiptOut, responses=errors)
    def receipt(receipt_id: str, key: Annotated[ApiKey, Depends(api_key)]) -> ReceiptOut:
        found = ledger.receipt(receipt_id)
        if found is None or ledger.receipt_owner(receipt_id) != key.key_id:
            raise HTTPException(404, f"no receipt {receipt_id!r} for this API key")
        return ReceiptOut(**found.to_json())

    return app


class Observe:
    """Pure ASGI middleware (a body streams through it unbuffered): `record(scope, status, seconds)`
    for every HTTP request, once the app has answered."""

    def __init__(self, app, *, record) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # unless the app starts a response

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.record(scope, status, time.perf_counter() - t0)


def _charge(p: Prediction, price: int) -> Charge:
    """What the ledger records of one prediction; a pending one carries its input, no amounts yet."""
    amounts = () if p.split == SPLIT_PENDING else tuple(split_price(price, p.bps))
    return Charge(p.input_hash, p.label, p.probability, p.split, p.bps, amounts, p.payload)


def _prediction(receipt, run: ServedRun, top_k: int, unseen: dict[str, str]) -> PredictionOut:
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
        unseen=unseen,
    )
