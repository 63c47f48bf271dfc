"""Kubo RPC and Pinning Service backends, against local stand-ins of those documented HTTP APIs.

No Kubo daemon or pinning service can be installed here, so `http_services.py` serves the
documented wire formats on 127.0.0.1; the clients under test are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import (
    CHUNK_SIZE,
    BlockNotFound,
    BlockStore,
    ContentStore,
    CorruptBlock,
    KuboStore,
    PinningServiceStore,
    RemoteError,
    cid_for_bytes,
)
from storage.cids import parse_cid
from tests.storage.conftest import content
from tests.storage.http_services import KuboRPC, PinningService

DATA = content(2 * CHUNK_SIZE + 5, 11)
TOKEN = "test-token-5f1c"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[KuboRPC]:
    with KuboRPC(BlockStore(tmp_path / "kubo-repo", fsync=False)) as server:
        yield server


@pytest.fixture
def kubo(node: KuboRPC) -> Iterator[KuboStore]:
    with KuboStore(node.url, timeout=10) as client:
        yield client


def test_kubo_is_a_content_store(kubo: KuboStore) -> None:
    assert isinstance(kubo, ContentStore)
    assert kubo.version() == "0.32.1"


@pytest.mark.parametrize("version", [0, 1])
def test_kubo_add_get_with_ipfs_add_layout(
    kubo: KuboStore, node: KuboRPC, tmp_path: Path, version: int
) -> None:
    path = tmp_path / "in.bin"
    path.write_bytes(DATA)
    cid = kubo.put_file(path, cid_version=version)
    assert cid == cid_for_bytes(DATA, cid_version=version) == kubo.put_bytes(DATA, cid_version=version)
    command, params = next(r for r in node.requests if r[0] == "add")
    assert params["chunker"] == ["size-262144"] and params["cid-version"] == [str(version)]
    assert params["raw-leaves"] == ["true" if version else "false"]
    assert kubo.get(cid) == DATA == kubo.cat(cid)
    assert kubo.has(cid) and cid in kubo.pins()
    assert node.repo.get(cid) == DATA  # the node really holds it


def test_kubo_pins_unpin_either_form_and_add_without_pin(kubo: KuboStore) -> None:
    cid = kubo.put_bytes(DATA, pin=False)
    assert cid not in kubo.pins()
    v1 = str(parse_cid(cid).set(version=1, base="base32"))
    kubo.pin(cid)
    assert kubo.pins() == {cid}
    kubo.unpin(v1)
    kubo.unpin(v1)  # not pinned any more: a no-op, as in BlockStore
    assert kubo.pins() == set()


def test_kubo_blocks_are_verified_not_trusted(kubo: KuboStore, node: KuboRPC) -> None:
    cid = kubo.put_bytes(DATA)
    node.corrupt_blocks = True
    with pytest.raises(CorruptBlock, match="fail its hash check"):
        kubo.get(cid)


def test_kubo_unknown_cid_and_a_node_with_other_import_settings(kubo: KuboStore, node: KuboRPC) -> None:
    unknown = cid_for_bytes(b"never added")
    assert not kubo.has(unknown)
    with pytest.raises(BlockNotFound, match=unknown):
        kubo.get(unknown)
    with pytest.raises(RemoteError, match="HTTP 500"):
        kubo.pin(unknown)
    node.import_chunk_size = 1 << 20  # a node that ignores our chunker and uses its own
    with pytest.raises(RemoteError, match="Import"):
        kubo.put_bytes(DATA)


def test_kubo_dag_import_of_our_car(kubo: KuboStore, node: KuboRPC, tmp_path: Path) -> None:
    local = BlockStore(tmp_path / "local", fsync=False)
    cid = local.put_bytes(DATA, cid_version=1)
    car = tmp_path / "out.car"
    local.export_car(cid, car)
    assert kubo.import_car(car) == [cid]
    assert cid in kubo.pins() and kubo.get(cid) == DATA


def test_kubo_auth_header_is_sent_and_never_shown(node: KuboRPC, monkeypatch: pytest.MonkeyPatch) -> None:
    node.auth = "Basic c2VjcmV0OnMzY3IzdA=="
    with KuboStore(node.url, timeout=10) as anonymous, pytest.raises(RemoteError, match="HTTP 403"):
        anonymous.version()
    monkeypatch.setenv("CARAVAN_KUBO_AUTH", node.auth)
    with KuboStore(node.url, timeout=10) as client:
        assert client.version() == "0.32.1"
        assert node.auth not in repr(client)


def test_kubo_down_is_one_clear_error() -> None:
    down = KuboStore("http://127.0.0.1:9", timeout=2)  # the discard port: nothing listens
    with down, pytest.raises(RemoteError, match="daemon running"):
        down.version()


# --- Pinning Service API ---------------------------------------------------------------------


@pytest.fixture
def service() -> Iterator[PinningService]:
    with PinningService(TOKEN) as server:
        yield server


@pytest.fixture
def pinning(
    service: PinningService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PinningServiceStore]:
    monkeypatch.setenv("CARAVAN_PINNING_TOKEN", TOKEN)
    local = BlockStore(tmp_path / "local", fsync=False)
    with PinningServiceStore(service.url, local=local, origins=("/ip4/127.0.0.1/tcp/4001",)) as client:
        yield client


def test_pinning_put_pin_wait_unpin(pinning: PinningServiceStore, service: PinningService) -> None:
    assert isinstance(pinning, ContentStore)
    cid = pinning.put_bytes(DATA)
    assert pinning.get(cid) == DATA and pinning.has(cid)
    (request,) = service.statuses.values()
    assert request["pin"] == {"cid": cid, "name": cid, "origins": ["/ip4/127.0.0.1/tcp/4001"]}
    pinning.wait_pinned(cid, timeout=5, poll=0.01)
    assert pinning.status(cid) == "pinned"
    pinning.pin(cid)  # already pinned: no second request
    assert len(service.statuses) == 1 and pinning.pins() == {cid}
    pinning.unpin(cid)
    pinning.unpin(cid)
    assert pinning.pins() == set() and service.statuses == {}
    assert pinning.status(cid) is None


def test_pinning_lists_every_page(pinning: PinningServiceStore) -> None:
    pinning.PAGE_SIZE = 2
    cids = {pinning.put_bytes(bytes([i]) * (i + 1)) for i in range(5)}
    assert pinning.pins() == cids


def test_pinning_token_is_required_checked_and_never_shown(
    service: PinningService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CARAVAN_PINNING_TOKEN", raising=False)
    with pytest.raises(RemoteError, match="set CARAVAN_PINNING_TOKEN"):
        PinningServiceStore(service.url, local=BlockStore(tmp_path / "l", fsync=False))
    monkeypatch.setenv("CARAVAN_PINNING_TOKEN", "wrong-token")
    with PinningServiceStore(service.url, local=BlockStore(tmp_path / "l", fsync=False)) as client:
        assert "wrong-token" not in repr(client)
        with pytest.raises(RemoteError, match="rejected the token") as err:
            client.pins()
        assert "wrong-token" not in str(err.value)


def test_pinning_errors_are_reported(pinning: PinningServiceStore) -> None:
    with pytest.raises(RemoteError, match="NOT_FOUND"):
        pinning._call("DELETE", "/pins/no-such-request")
    with pytest.raises(RemoteError, match="unknown"):
        pinning.wait_pinned(cid_for_bytes(b"never pinned"), timeout=1, poll=0.01)
