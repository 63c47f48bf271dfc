"""Sealed content: deterministic, authenticated, no plaintext in any block, keys wrapped per holder."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import (
    BlockStore,
    ContentStore,
    DataKey,
    DecryptionError,
    EncryptedStore,
    HolderKey,
    Keyring,
    KeyringError,
    is_sealed,
    open_sealed,
    public_store,
    seal,
    sealed_key_id,
)
from storage.encryption import HEADER_BYTES, SEGMENT, TAG
from tests.storage.conftest import content

SIZES = [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 2 * SEGMENT + 5]
ROWS = b"".join(b"provider-7,the quick brown fox %d,spam\n" % i for i in range(2000))


def _blocks(store: BlockStore) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (store.root / "data").rglob("*") if p.is_file()}


@pytest.mark.parametrize("size", SIZES)
def test_seal_round_trips_at_segment_edges_and_costs_one_tag_per_segment(size: int) -> None:
    key, data = DataKey.generate(), content(size, size)
    sealed = seal(key, data)
    segments = max(1, -(-size // SEGMENT))
    assert len(sealed) == HEADER_BYTES + size + segments * TAG
    assert is_sealed(sealed) and sealed_key_id(sealed) == key.key_id
    assert open_sealed([DataKey.generate(), key], sealed) == data


def test_same_key_and_plaintext_give_the_same_cid_and_another_key_another(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks")
    key = DataKey.generate()
    first = EncryptedStore(store, [key]).put_bytes(ROWS, cid_version=1)
    assert EncryptedStore(store, [key]).put_bytes(ROWS, cid_version=1) == first  # a rerun stores nothing new
    assert EncryptedStore(store, [DataKey.generate()]).put_bytes(ROWS, cid_version=1) != first
    assert first != store.put_bytes(ROWS, cid_version=1)  # the CID is the ciphertext's


@pytest.mark.parametrize("size", [0, SEGMENT + 3, 3 * SEGMENT])
def test_a_streamed_file_seals_exactly_as_its_bytes_do(tmp_path: Path, size: int) -> None:
    data, key = content(size, 3), DataKey(bytes(range(64)))
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    sealing = EncryptedStore(BlockStore(tmp_path / "a"), [key])
    cid = sealing.put_file(path, cid_version=1)
    assert cid == sealing.put_bytes(data, cid_version=1)
    assert sealing.get(cid) == data

    class NoStream:  # a backend without put_stream (Kubo, a pinning service): via a temp file
        def __init__(self, inner: BlockStore) -> None:
            self.inner = inner

        def __getattr__(self, name: str):
            if name == "put_stream":
                raise AttributeError(name)
            return getattr(self.inner, name)

    assert EncryptedStore(NoStream(BlockStore(tmp_path / "b")), [key]).put_file(path, cid_version=1) == cid


def test_pinned_blocks_fetched_without_the_key_hold_no_plaintext(tmp_path: Path) -> None:
    plain, private = BlockStore(tmp_path / "plain"), BlockStore(tmp_path / "private")
    plain.put_bytes(ROWS)
    cid = EncryptedStore(private, [DataKey.generate()]).put_bytes(ROWS)
    needle = b"the quick brown fox 1234"
    assert any(needle in block for block in _blocks(plain).values())  # the search finds rows when there
    assert cid in private.pins()
    assert not any(needle in block or b"provider-7" in block for block in _blocks(private).values())
    raw = private.get(cid)  # what anyone reading the CID off the chain fetches
    assert is_sealed(raw) and b"provider-7" not in raw


def test_a_wrong_or_missing_key_is_one_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks")
    key = DataKey.generate()
    cid = EncryptedStore(store, [key]).put_bytes(ROWS)
    before, pins = _blocks(store), store.pins()
    with pytest.raises(DecryptionError, match=rf"content {cid} is sealed under data key {key.key_id}.*grant"):
        EncryptedStore(store, [DataKey.generate()]).get(cid)
    assert _blocks(store) == before and store.pins() == pins
    with pytest.raises(ValueError, match="at least one data key"):
        EncryptedStore(store, [])


def test_altered_reordered_or_truncated_ciphertext_fails_authentication() -> None:
    key = DataKey.generate()
    sealed = seal(key, content(2 * SEGMENT + 10, 1))
    one = SEGMENT + TAG
    head, a, b, c = (
        sealed[:HEADER_BYTES],
        sealed[HEADER_BYTES : HEADER_BYTES + one],
        sealed[HEADER_BYTES + one : HEADER_BYTES + 2 * one],
        sealed[HEADER_BYTES + 2 * one :],
    )
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    for bad in (bytes(flipped), head + b + a + c, head + a + b, head + a):
        with pytest.raises(DecryptionError, match="fails authentication"):
            open_sealed(key, bad)
    with pytest.raises(DecryptionError, match="not sealed"):
        open_sealed(key, b"plain bytes")
    zero = bytearray(sealed)
    zero[HEADER_BYTES - 4 : HEADER_BYTES] = bytes(4)
    with pytest.raises(DecryptionError, match="malformed header"):
        open_sealed(key, bytes(zero))


def test_plaintext_values_read_through_and_public_store_unwraps(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks")
    sealing = EncryptedStore(store, [DataKey.generate()])
    assert isinstance(sealing, ContentStore)
    record = store.put_bytes(b'{"activity": "ingest"}')
    assert sealing.get(record) == b'{"activity": "ingest"}'
    assert public_store(sealing) is store and public_store(store) is store


def test_secrets_are_never_in_a_repr_or_the_keyring() -> None:
    holder, key = HolderKey.generate(), DataKey.generate()
    assert holder.private_hex() not in repr(holder) and key.secret.hex() not in repr(key)
    keyring, data_key = Keyring.create("v1", {"operator": holder.public_hex})
    text = keyring.to_bytes()
    assert data_key.secret.hex().encode() not in text and holder.private_hex().encode() not in text
    assert Keyring.from_bytes(text) == keyring


def test_an_auditor_granted_access_opens_every_key_the_granter_holds() -> None:
    operator, auditor = HolderKey.generate(), HolderKey.generate()
    keyring, key = Keyring.create("v1", {"operator": operator.public_hex})
    with pytest.raises(KeyringError, match="not granted access to dataset version 'v1'"):
        keyring.data_keys(auditor)
    granted = keyring.grant(operator, "auditor", auditor.public_hex)
    assert [k.key_id for k in granted.data_keys(auditor)] == [key.key_id]
    assert granted.holders() == {"operator": operator.public_hex, "auditor": auditor.public_hex}
    with pytest.raises(KeyringError, match="not granted"):
        granted.grant(HolderKey.generate(), "mallory", HolderKey.generate().public_hex)
    with pytest.raises(KeyringError, match="hex X25519 public key"):
        granted.grant(operator, "typo", "not-a-key")


def test_a_revoked_holder_cannot_read_what_is_stored_after_the_revocation(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks")
    operator, auditor = HolderKey.generate(), HolderKey.generate()
    keyring = Keyring.create("v1", {"operator": operator.public_hex})[0].grant(
        operator, "auditor", auditor.public_hex
    )
    before = EncryptedStore(store, keyring.data_keys(auditor)).put_bytes(b"row stored before")
    auditor_keys = keyring.data_keys(auditor)  # what the auditor could have kept
    with pytest.raises(KeyringError, match="cannot revoke itself"):
        keyring.revoke("operator", operator)
    revoked, new_key = keyring.revoke("auditor", operator)
    with pytest.raises(KeyringError, match=r"\(it was revoked\)|not granted"):
        revoked.data_keys(auditor)
    after = EncryptedStore(store, revoked.data_keys(operator)).put_bytes(b"row stored after")
    assert sealed_key_id(store.get(after)) == new_key.key_id
    with pytest.raises(DecryptionError, match="none of the keys"):
        EncryptedStore(store, auditor_keys).get(after)
    operator_reads = EncryptedStore(store, revoked.data_keys(operator))
    assert operator_reads.get(before) == b"row stored before"
    assert operator_reads.get(after) == b"row stored after"
    assert "auditor" not in Keyring.from_bytes(revoked.to_bytes()).holders()
