"""What a request may cost before anyone is charged: a key checked from the headers, a bounded body.

`RequestGate` is a pure ASGI middleware (it never buffers a body). For every HTTP request it:

1. runs the app's `gate` on the headers alone (for the paid endpoints: API key present, known,
   not revoked, within its rate); a refusal (401/403/429) is sent before a single body byte is read,
   and the connection is closed, so whatever the client still sends is never read;
2. refuses a declared `Content-Length` over the limit with 413 at once, also without reading it;
3. counts a body while it streams (chunked, or a `Content-Length` that lies) and raises
   `BodyTooLarge` (a 413) in the app's `receive` as soon as the count passes the limit: the app
   answers it like any refusal and the connection is closed, the rest of the body unread.

Every refusal is JSON `{"error": ...}` like the app's others, and no ledger row is touched. Memory
per request is bounded by the limit plus the server's read buffer (uvicorn pauses reading at 64 KiB).

The default limit is sized from the run (`default_max_body_bytes`)::

    max_body_bytes = max_batch * input_bytes(run's input) + JSON_OVERHEAD

    input_bytes, numeric:  n_features * NUMBER_BYTES + ROW_BYTES
                           + per field (its name and longest category) * TEXT_CHAR_BYTES + FIELD_BYTES
                 text:     max_length characters * TEXT_CHAR_BYTES + ROW_BYTES
                 image:    ceil(height * width * channels * IMAGE_BYTES_PER_VALUE) + ROW_BYTES

`caravan serve --max-body-bytes N` replaces it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# One JSON number, generously: a float64's longest repr is 24 characters ("-2.2250738585072014e-308"),
# plus its separator and the indentation of a pretty-printed body (one number per line).
NUMBER_BYTES = 64
# One input's own framing: brackets or quotes, its separator, its indentation, a key if any.
ROW_BYTES = 64
# One named field's own framing: its name's quotes, the colon, a category's quotes, separator, indentation.
FIELD_BYTES = 16
# One character of text: UTF-8 takes at most 4 bytes, JSON's \uXXXX escape (json.dumps' default for
# every non-ASCII character) 6.
TEXT_CHAR_BYTES = 6
# One pixel value of an image sent base64-encoded: 4/3 for base64 over raw bytes, and room for an
# encoding (PNG) that does not compress the image at all.
IMAGE_BYTES_PER_VALUE = 1.5
# The object around the inputs: its keys, whitespace, and a few more small fields.
JSON_OVERHEAD = 16 * 1024

LIMIT_OPTION = "caravan serve --max-body-bytes"


def numeric_input_bytes(n_features: int, fields: dict[str, int] | None = None) -> int:
    """The most bytes one row of `n_features` numbers takes in a JSON body, sent as a list or by its
    named `fields` (name -> characters of its longest value's text, 0 for numbers)."""
    named = sum((len(name) + text) * TEXT_CHAR_BYTES + FIELD_BYTES for name, text in (fields or {}).items())
    return n_features * NUMBER_BYTES + ROW_BYTES + named


def text_input_bytes(max_length: int) -> int:
    """The most bytes one text of at most `max_length` characters takes in a JSON body."""
    return max_length * TEXT_CHAR_BYTES + ROW_BYTES


def image_input_bytes(height: int, width: int, channels: int) -> int:
    """The most bytes one height x width x channels image, encoded then base64, takes in a JSON body.

    Sized for an image already at the model's size: a run whose policy resizes larger images should be
    served with a `--max-body-bytes` that fits the largest image it means to accept."""
    return math.ceil(height * width * channels * IMAGE_BYTES_PER_VALUE) + ROW_BYTES


def input_bytes(encoding: Any) -> int:
    """The most bytes one input of the run takes, from its input encoding.

    The hook for the kinds of input a run may have: a text encoding names `max_chars` or `max_length`
    (characters), an image one `height`, `width` and `channels` (as `attribution.payloads`'
    `ImageEncoding` does); anything else is numeric rows of `n_features` numbers, or its `columns` by
    name (`attribution.encoding.InputEncoding`)."""
    if getattr(encoding, "max_chars", None) is not None:  # a text run's bound (tokens x characters)
        return text_input_bytes(int(encoding.max_chars))
    if getattr(encoding, "max_length", None) is not None:
        return text_input_bytes(int(encoding.max_length))
    if all(getattr(encoding, a, None) is not None for a in ("height", "width", "channels")):
        return image_input_bytes(int(encoding.height), int(encoding.width), int(encoding.channels))
    longest = {c: max(map(len, values)) for c, values in getattr(encoding, "categories", ())}
    fields = {c: longest.get(c, 0) for c in getattr(encoding, "columns", ())}
    return numeric_input_bytes(int(encoding.n_features), fields)


def default_max_body_bytes(encoding: Any, max_batch: int) -> int:
    """`max_batch * input_bytes(encoding) + JSON_OVERHEAD`: the largest batch the run accepts fits."""
    return max_batch * input_bytes(encoding) + JSON_OVERHEAD


def too_large_message(limit: int) -> str:
    """The 413's error text for a body over `limit` bytes: what to do, and the option that raises it."""
    return (
        f"request body over this server's limit of {limit} bytes (the largest batch it accepts); "
        f"send fewer inputs per request, or raise the limit with `{LIMIT_OPTION}`"
    )


class BodyTooLarge(HTTPException):
    """The body passed the limit while it streamed: 413, and the connection is closed."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit), headers={"Connection": "close"})


@dataclass(frozen=True)
class Refusal:
    """A request refused before its body is read: the HTTP status, the JSON `error` text, and extra headers
    (a 429's `Retry-After`)."""

    status: int
    error: str
    headers: dict[str, str] = field(default_factory=dict)


# The app's check of a request from its headers alone: a Refusal, or None to let it through.
Gate = Callable[[Scope], Awaitable[Refusal | None]]


class RequestGate:
    """Pure ASGI middleware: `gate` on the headers, then the body bounded by `max_body_bytes`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        gate: Gate | None = None,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be a positive number of bytes, got {max_body_bytes}")
        self.app = app
        self.limit = max_body_bytes
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.gate is not None:
            refusal = await self.gate(scope)
            if refusal is not None:
                await self.refuse(scope, send, refusal)
                return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self.refuse(scope, send, Refusal(413, too_large_message(self.limit)))
            return

        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:  # the app let it through (a route that reads its body by hand)
            if started:
                return  # the response is under way; the server closes the connection after it
            await self.refuse(scope, send, Refusal(413, too_large_message(self.limit)))

    async def refuse(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        """Send `refusal` as JSON and have the server close the connection (the body stays unread)."""
        body = json.dumps({"error": refusal.error}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *((k.lower().encode(), v.encode()) for k, v in refusal.headers.items()),
        ]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def header(scope: Scope, name: bytes) -> str | None:
    """The value of header `name` (lower case), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _content_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # the server's parser refuses malformed framing; the count still applies
