"""A small webhook receiver: Label Studio POSTs annotation events (created, updated, deleted; tasks
deleted), a callback (e.g. a sync) runs.

Standard library only (ThreadingHTTPServer on 127.0.0.1 by default). A shared secret, when
set, must arrive in the `X-Caravan-Webhook-Token` header (Label Studio sends a webhook's
configured headers), so strangers cannot trigger syncs.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Every event after which a sync changes the annotations table: deletions remove rows (and credit).
TRIGGERS = frozenset({
    "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "TASKS_DELETED"
})
TOKEN_HEADER = "X-Caravan-Webhook-Token"
MAX_BODY = 10 * 1024 * 1024


class WebhookReceiver:
    """Listen on `host:port` (0 = any free port) and call `on_event(payload)` for annotation events."""

    def __init__(
        self,
        on_event: Callable[[dict], None],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        secret: str | None = None,
        actions: frozenset[str] = TRIGGERS,
    ):
        receiver = self
        self.on_event, self.secret, self.actions = on_event, secret, actions
        self.received = 0
        self.ignored = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.send_response(receiver._handle(self))
                self.end_headers()

            def log_message(self, *args: object) -> None:  # keep test and server output quiet
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where Label Studio should POST (`add_webhook`): the bound host and port, known before `start`."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def _handle(self, req: BaseHTTPRequestHandler) -> int:
        if self.secret and not hmac.compare_digest(req.headers.get(TOKEN_HEADER, ""), self.secret):
            return 403
        length = int(req.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return 413
        try:
            payload = json.loads(req.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            return 400
        if not isinstance(payload, dict) or payload.get("action") not in self.actions:
            self.ignored += 1
            return 200
        self.received += 1
        self.on_event(payload)
        return 200

    def start(self) -> WebhookReceiver:
        """Serve on a daemon thread (the port is already bound, so `url` is final); returns self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="caravan-webhook", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; only after `start` (before it, the shutdown waits forever)."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
