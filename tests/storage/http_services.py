"""Small local HTTP servers speaking the documented Kubo RPC and IPFS Pinning Service APIs.

No Kubo daemon can be installed from the registries here, so the remote backends are
tested against these. They follow the documented wire formats: Kubo answers POST only,
streams newline-delimited JSON, and reports errors as {"Message", "Code", "Type"}; the
Pinning Service API uses bearer tokens, PinStatus objects and {"error": {"reason"}}.
The Kubo stand-in keeps its repo in a `BlockStore` and refuses chunkers it does not know.
Knobs let a test play a misbehaving node: `corrupt_blocks` serves flipped bytes,
`import_chunk_size` imports with another chunker whatever the request says (a node whose
`Import.UnixFSChunker` was changed), `auth` demands an Authorization header.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from storage import CHUNK_SIZE, BlockStore, StorageError
from storage.unixfs import import_bytes

_JSON = "application/json"


def _multipart_files(content_type: str, body: bytes) -> list[bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return [part.get_payload(decode=True) for part in message.iter_parts()]


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes | dict | list, content_type: str = "application/json") -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        """The request body, with or without chunked transfer encoding (httpx may stream uploads)."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))
        parts = []
        while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after each chunk
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(parts)


def _kubo_error(message: str, code: int = 0) -> dict[str, Any]:
    return {"Message": message, "Code": code, "Type": "error"}


class KuboRPC:
    """A Kubo stand-in: `/api/v0/{version,add,pin/add,pin/rm,pin/ls,cat,block/get,block/stat,dag/import}`."""

    def __init__(self, repo: BlockStore, *, auth: str | None = None) -> None:
        self.repo = repo
        self.auth = auth
        self.corrupt_blocks = False
        self.import_chunk_size = CHUNK_SIZE
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> KuboRPC:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[_Base]:
        node = self

        class Handler(_Base):
            def do_GET(self) -> None:  # noqa: N802
                self._send(405, {"Message": "405 - Method Not Allowed", "Code": 0, "Type": "error"})

            def do_POST(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                params = parse_qs(url.query)
                command = url.path.removeprefix("/api/v0/")
                node.requests.append((command, params))
                body = self._body()
                if node.auth is not None and self.headers.get("Authorization") != node.auth:
                    self._send(403, b"403 - Forbidden\n", "text/plain")  # what Kubo's API.Authorizations does
                    return
                ctype = self.headers.get("Content-Type", "")
                try:
                    status, out, kind = node.dispatch(command, params, ctype, body)
                except StorageError as exc:
                    status, out, kind = 500, _kubo_error(str(exc)), _JSON
                self._send(status, out, kind)

        return Handler

    def dispatch(
        self, command: str, params: dict[str, list[str]], ctype: str, body: bytes
    ) -> tuple[int, Any, str]:
        arg = params.get("arg", [""])[0]
        flag = {k: v[0] == "true" for k, v in params.items() if v and v[0] in ("true", "false")}
        js = _JSON
        if command == "version":
            return 200, {"Version": "0.32.1", "Commit": "", "Repo": "16", "System": "amd64/linux"}, js
        if command == "add":
            if params.get("chunker", ["size-262144"])[0] != "size-262144":
                return 400, _kubo_error("unsupported chunker in this stand-in", 1), js
            version = int(params.get("cid-version", ["0"])[0])
            if flag.get("raw-leaves", version == 1) != (version == 1):
                return 400, _kubo_error("stand-in only does Kubo's default leaves", 1), js
            lines = []
            for data in _multipart_files(ctype, body):
                root = import_bytes(data, version, self.repo.put_block, chunk_size=self.import_chunk_size)
                cid = root.cid_str
                if flag.get("pin", True):
                    self.repo.pin(cid)
                lines.append(json.dumps({"Name": "file", "Hash": cid, "Size": str(len(data))}))
            return 200, ("\n".join(lines) + "\n").encode(), js
        if command == "pin/add":
            self.repo.pin(arg)
            return 200, {"Pins": [arg]}, js
        if command == "pin/rm":
            if arg not in self.repo.pins():
                return 500, _kubo_error("not pinned or pinned indirectly"), js
            self.repo.unpin(arg)
            return 200, {"Pins": [arg]}, js
        if command == "pin/ls":
            return 200, {"Keys": {c: {"Type": "recursive"} for c in self.repo.pins()}}, js
        if command == "cat":
            return 200, self.repo.get(arg), "text/plain"
        if command == "block/get":
            block = self.repo.read_block(arg)
            if self.corrupt_blocks:
                block = bytes([block[0] ^ 1]) + block[1:]
            return 200, block, "text/plain"
        if command == "block/stat":
            if not flag.get("offline") or not self.repo.has(arg):
                return 500, _kubo_error("block was not found locally (offline)"), js
            return 200, {"Key": arg, "Size": len(self.repo.read_block(arg))}, js
        if command == "dag/import":
            lines = []
            for car in _multipart_files(ctype, body):
                path = self.repo.root / f"upload-{uuid.uuid4().hex}.car"
                path.write_bytes(car)
                try:
                    roots = self.repo.import_car(path, pin=flag.get("pin-roots", False))
                finally:
                    path.unlink()
                lines += [json.dumps({"Root": {"Cid": {"/": r}, "PinErrorMsg": ""}}) for r in roots]
            return 200, ("\n".join(lines) + "\n").encode(), js
        return 404, b"404 page not found", "text/plain"


class PinningService:
    """An IPFS Pinning Service API stand-in: POST/GET /pins, GET/DELETE /pins/{requestid}.

    New requests are `queued` and become `pinned` the next time they are listed, like a
    real service working through its queue.
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.statuses: dict[str, dict[str, Any]] = {}
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> PinningService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _error(reason: str, details: str) -> dict:
        return {"error": {"reason": reason, "details": details}}

    def _handler(self) -> type[_Base]:
        svc = self

        class Handler(_Base):
            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {svc.token}":
                    self._send(401, svc._error("UNAUTHORIZED", "Invalid or missing access token"))
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802
                if self._authorized():
                    self._send(*svc.get(self.path))

            def do_POST(self) -> None:  # noqa: N802
                if self._authorized():
                    self._send(*svc.post(self.path, self._body()))

            def do_DELETE(self) -> None:  # noqa: N802
                if self._authorized():
                    self._send(*svc.delete(self.path))

        return Handler

    def post(self, path: str, body: bytes) -> tuple[int, Any]:
        pin = json.loads(body or b"{}")
        if urlsplit(path).path != "/pins" or not isinstance(pin.get("cid"), str):
            return 400, self._error("BAD_REQUEST", "body must be a Pin object with a cid")
        with self._lock:
            status = {
                "requestid": uuid.uuid4().hex,
                "status": "queued",
                "created": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "pin": {"cid": pin["cid"], "name": pin.get("name"), "origins": pin.get("origins", [])},
                "delegates": ["/ip4/127.0.0.1/tcp/4001/p2p/QmStandIn"],
            }
            self.statuses[status["requestid"]] = status
        return 202, status

    def get(self, path: str) -> tuple[int, Any]:
        url = urlsplit(path)
        if url.path.startswith("/pins/"):
            found = self.statuses.get(url.path.removeprefix("/pins/"))
            return (200, found) if found else (404, self._error("NOT_FOUND", "no such requestid"))
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        cids = set(q["cid"].split(",")) if "cid" in q else None
        wanted = set(q.get("status", "pinned").split(","))
        limit = int(q.get("limit", 10))
        with self._lock:
            rows = sorted(self.statuses.values(), key=lambda s: s["created"], reverse=True)
            matched = [
                s for s in rows
                if (cids is None or s["pin"]["cid"] in cids)
                and s["status"] in wanted
                and ("before" not in q or s["created"] < q["before"])
            ]
            for s in rows:
                if s["status"] == "queued":
                    s["status"] = "pinned"
        return 200, {"count": len(matched), "results": matched[:limit]}

    def delete(self, path: str) -> tuple[int, Any]:
        requestid = urlsplit(path).path.removeprefix("/pins/")
        with self._lock:
            if self.statuses.pop(requestid, None) is None:
                return 404, self._error("NOT_FOUND", "no such requestid")
        return 202, b""

