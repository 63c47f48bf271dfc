"""Real content-store backends over HTTP: a Kubo node's RPC API and an IPFS Pinning Service.

Both speak plain httpx (`ipfshttpclient` refuses every Kubo since 0.8). Every CID a remote
returns is recomputed locally, and every block read back is rehashed, so a misconfigured
or faulty remote can never hand us the wrong bytes or a CID that differs from `ipfs add`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from multiformats import CID

from storage.blockstore import BlockStore
from storage.cids import block_key, block_matches, cid_to_str, parse_cid
from storage.errors import BlockNotFound, CorruptBlock, RemoteError
from storage.unixfs import CHUNK_SIZE, Buffer, cid_for_bytes, cid_for_file, iter_file, open_input

DEFAULT_KUBO_API = "http://127.0.0.1:5001"
KUBO_AUTH_ENV = "CARAVAN_KUBO_AUTH"
PINNING_TOKEN_ENV = "CARAVAN_PINNING_TOKEN"


class RemoteHTTPError(RemoteError):
    """The remote answered, with an HTTP error status (kept so callers can tell 'not found' from 'down')."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _ndjson(text: str) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        raise RemoteError(f"expected newline-delimited JSON from Kubo, got {text[:80]!r}") from None


class KuboStore:
    """A Kubo node through its RPC API (`/api/v0/...`), with `ipfs add`'s default layout.

    `auth` (or `$CARAVAN_KUBO_AUTH`) is sent as the Authorization header, for nodes that
    set `API.Authorizations`; it is never logged or shown in `repr`.
    """

    def __init__(
        self,
        api_url: str = DEFAULT_KUBO_API,
        timeout: float | httpx.Timeout = 60.0,
        *,
        auth: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        auth = auth or os.environ.get(KUBO_AUTH_ENV)
        self._client = httpx.Client(
            base_url=f"{self.api_url}/api/v0/",
            timeout=timeout,
            headers={"Authorization": auth} if auth else {},
            transport=transport or httpx.HTTPTransport(retries=2),  # retries connection setup only
        )

    def __repr__(self) -> str:
        return f"KuboStore({self.api_url!r})"

    def close(self) -> None:
        """Close the HTTP client and its connections; the store cannot be used afterwards."""
        self._client.close()

    def __enter__(self) -> KuboStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------

    def _post(self, command: str, *, params: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.post(command, params=params, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(
                f"Kubo RPC {command} at {self.api_url} failed: {exc}; is the daemon running (`ipfs daemon`)?"
            ) from None
        if response.status_code != 200:
            try:
                message = response.json().get("Message", response.text)
            except ValueError:
                message = response.text.strip() or response.reason_phrase
            raise RemoteHTTPError(
                f"Kubo RPC {command} returned HTTP {response.status_code}: {message}", response.status_code
            )
        return response

    def version(self) -> str:
        """The node's Kubo version, e.g. `0.32.1`."""
        return self._post("version").json()["Version"]

    # --- ContentStore --------------------------------------------------------------------------

    def _add(self, upload: BinaryIO | bytes, expected: str, cid_version: int, pin: bool) -> str:
        params = {
            "chunker": f"size-{CHUNK_SIZE}",
            "cid-version": cid_version,
            "raw-leaves": "true" if cid_version == 1 else "false",
            "pin": "true" if pin else "false",
            "quieter": "true",
        }
        rows = _ndjson(self._post("add", params=params, files={"file": ("file", upload)}).text)
        got = rows[-1]["Hash"] if rows else None
        if got != expected:
            raise RemoteError(
                f"Kubo stored the content as {got} but `ipfs add` defaults give {expected}; "
                "check the node's Import.* settings (chunker, layout, raw leaves)"
            )
        return expected

    def put_bytes(self, data: Buffer, *, cid_version: int = 0, pin: bool = True) -> str:
        """Add bytes with `ipfs add`'s layout; the CID Kubo returns is checked against ours."""
        return self._add(bytes(data), cid_for_bytes(data, cid_version=cid_version), cid_version, pin)

    def put_file(self, path: str | os.PathLike[str], *, cid_version: int = 0, pin: bool = True) -> str:
        """Stream a file to Kubo (httpx sends it in chunks); the returned CID is checked."""
        expected = cid_for_file(path, cid_version=cid_version)
        with open_input(path) as stream:
            return self._add(stream, expected, cid_version, pin)

    def get_block(self, cid: str | CID) -> bytes:
        """One raw block, rehashed before it is returned."""
        parsed = parse_cid(cid)
        try:
            block = self._post("block/get", params={"arg": cid_to_str(parsed)}).content
        except RemoteHTTPError as exc:  # the node answered but has no such block
            raise BlockNotFound(f"block {cid_to_str(parsed)} could not be read from Kubo: {exc}") from None
        if not block_matches(parsed, block):
            raise CorruptBlock(f"Kubo returned bytes for block {cid_to_str(parsed)} that fail its hash check")
        return block

    def iter_bytes(self, cid: str) -> Iterator[bytes]:
        """A file's content, block by block, every block verified here (not trusted from `cat`)."""
        return iter_file(cid, self.get_block)

    def get(self, cid: str) -> bytes:
        """A file's whole content, every block rehashed here (`iter_bytes`), not trusted from Kubo's `cat`."""
        return b"".join(self.iter_bytes(cid))

    def cat(self, cid: str) -> bytes:
        """Kubo's own `cat` (unverified by block; use `get` unless you trust the node)."""
        return self._post("cat", params={"arg": cid_to_str(parse_cid(cid))}).content

    def has(self, cid: str) -> bool:
        """Whether the node holds the block locally (`offline` so it never searches the network)."""
        try:
            self._post("block/stat", params={"arg": cid_to_str(parse_cid(cid)), "offline": "true"})
        except RemoteHTTPError:
            return False
        return True

    def pin(self, cid: str) -> None:
        """Pin `cid` recursively on the node (the whole DAG under it), so its garbage collection keeps it."""
        self._post("pin/add", params={"arg": cid_to_str(parse_cid(cid)), "recursive": "true"})

    def unpin(self, cid: str) -> None:
        """Remove a recursive pin (either CID form); unpinning what is not pinned is a no-op."""
        key = block_key(parse_cid(cid))
        for pinned in self.pins():
            if block_key(parse_cid(pinned)) == key:
                self._post("pin/rm", params={"arg": pinned, "recursive": "true"})

    def pins(self) -> set[str]:
        """The CIDs pinned recursively on the node, as Kubo lists them (direct and indirect pins left out)."""
        keys = self._post("pin/ls", params={"type": "recursive"}).json().get("Keys") or {}
        return set(keys)

    def import_car(self, path: str | os.PathLike[str], *, pin: bool = True) -> list[str]:
        """`ipfs dag import`: send a CAR (streamed) and return its roots, pinned by default."""
        with open_input(path) as stream:
            rows = _ndjson(
                self._post(
                    "dag/import",
                    params={"pin-roots": "true" if pin else "false"},
                    files={"file": (Path(path).name, stream)},
                ).text
            )
        roots = []
        for row in rows:
            if "Root" in row:
                root, error = row["Root"]["Cid"]["/"], row["Root"].get("PinErrorMsg")
                if error:
                    raise RemoteError(f"Kubo imported the CAR but could not pin {root}: {error}")
                roots.append(root)
        return roots


class PinningServiceStore:
    """An IPFS Pinning Service API endpoint (`/pins`) plus a local blockstore holding the content.

    The Pinning Service API only manages pins: the service fetches content over IPFS from
    `origins` (or from an upload channel of its own). So bytes are put into and read from
    `local`, and `pin`/`unpin`/`pins` go to the service. The bearer token comes from
    `$CARAVAN_PINNING_TOKEN` (or `token_env`) and is never logged.
    """

    ACTIVE = "queued,pinning,pinned"
    PAGE_SIZE = 1000  # the API's maximum `limit`

    def __init__(
        self,
        endpoint: str,
        *,
        local: BlockStore,
        token_env: str = PINNING_TOKEN_ENV,
        origins: tuple[str, ...] = (),
        timeout: float | httpx.Timeout = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        token = os.environ.get(token_env)
        if not token:
            raise RemoteError(f"set {token_env} to the pinning service's access token")
        self.endpoint = endpoint.rstrip("/")
        self.local = local
        self.origins = list(origins)
        self._client = httpx.Client(
            base_url=self.endpoint,
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
            transport=transport or httpx.HTTPTransport(retries=2),
        )

    def __repr__(self) -> str:
        return f"PinningServiceStore({self.endpoint!r}, local={self.local!r})"

    def close(self) -> None:
        """Close the HTTP client to the service (`local` stays open); no pin call goes out afterwards."""
        self._client.close()

    def __enter__(self) -> PinningServiceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"pinning service {self.endpoint} unreachable: {exc}") from None
        if response.status_code == 401:
            raise RemoteError(f"pinning service {self.endpoint} rejected the token (HTTP 401); check it")
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                reason = f"{error.get('reason')}: {error.get('details', '')}".rstrip(": ")
            except (ValueError, KeyError, TypeError):
                reason = response.text.strip() or response.reason_phrase
            status = response.status_code
            raise RemoteHTTPError(f"pinning service: {method} {url} gave HTTP {status}: {reason}", status)
        return response

    def _statuses(self, *, cid: str | None = None, status: str = ACTIVE) -> Iterator[dict[str, Any]]:
        """Every pin status matching, following the API's `before` pagination."""
        params: dict[str, Any] = {"status": status, "limit": self.PAGE_SIZE}
        if cid:
            params["cid"] = cid
        while True:
            page = self._call("GET", "/pins", params=params).json()
            results = page.get("results", [])
            yield from results
            # `count` counts what matches this query, `before` included: the rest, not the total
            if len(results) < params["limit"] or len(results) >= page.get("count", 0):
                return
            params["before"] = results[-1]["created"]

    def status(self, cid: str) -> str | None:
        """The service's status for a CID (`queued`, `pinning`, `pinned`, `failed`) or None."""
        cid = cid_to_str(parse_cid(cid))
        found = list(self._statuses(cid=cid, status="queued,pinning,pinned,failed"))
        return found[0]["status"] if found else None

    def wait_pinned(self, cid: str, *, timeout: float = 300.0, poll: float = 2.0) -> None:
        """Block until the service reports `pinned`; raise on `failed` or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (state := self.status(cid)) != "pinned":
            if state == "failed" or state is None:
                raise RemoteError(f"pinning service reports {cid} as {state or 'unknown'}; pin it again")
            if time.monotonic() > deadline:
                raise RemoteError(f"{cid} still {state} after {timeout:.0f} s; check the service's queue")
            time.sleep(poll)

    def put_bytes(self, data: Buffer, *, cid_version: int = 0, pin: bool = True) -> str:
        """Store bytes in `local` (always pinned there) and, with `pin`, ask the service to pin the CID;
        return the CID without waiting for the service (`wait_pinned`)."""
        cid = self.local.put_bytes(data, cid_version=cid_version, pin=True)
        if pin:
            self.pin(cid)
        return cid

    def put_file(self, path: str | os.PathLike[str], *, cid_version: int = 0, pin: bool = True) -> str:
        """`put_bytes` for a file, streamed into `local` in bounded memory."""
        cid = self.local.put_file(path, cid_version=cid_version, pin=True)
        if pin:
            self.pin(cid)
        return cid

    def get(self, cid: str) -> bytes:
        """The content as read from `local`, where the bytes are: the service only manages pins."""
        return self.local.get(cid)

    def has(self, cid: str) -> bool:
        """Whether `local` holds `cid`; the service is not asked."""
        return self.local.has(cid)

    def pin(self, cid: str, *, name: str | None = None) -> None:
        """Ask the service to pin `cid` (idempotent: an active request is reused)."""
        cid = cid_to_str(parse_cid(cid))
        if any(True for _ in self._statuses(cid=cid)):
            return
        body: dict[str, Any] = {"cid": cid, "name": name or cid}
        if self.origins:
            body["origins"] = self.origins
        if self._call("POST", "/pins", json=body).json().get("status") == "failed":
            raise RemoteError(f"pinning service refused to pin {cid}; check its dashboard for the reason")

    def unpin(self, cid: str) -> None:
        """Delete every pin request for `cid` (a CID not pinned is a no-op)."""
        cid = cid_to_str(parse_cid(cid))
        for status in list(self._statuses(cid=cid, status="queued,pinning,pinned,failed")):
            self._call("DELETE", f"/pins/{status['requestid']}")

    def pins(self) -> set[str]:
        """The CIDs with an active pin request at the service: queued, pinning or pinned."""
        return {s["pin"]["cid"] for s in self._statuses()}
