"""A holder key in a password-protected keystore: round trip, refusals, no secret anywhere in sight."""

from __future__ import annotations

import json

import pytest
from nacl.pwhash import argon2id

from storage import HolderKey, Keyring, KeyringError
from storage.keys import KEYSTORE_FORMAT, KEYSTORE_MAX_MEMLIMIT

PASSWORD = "correct horse battery staple"
FAST = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}  # valid, cheap: tests only


def _keystore(key: HolderKey, password: str = PASSWORD) -> bytes:
    return key.to_keystore(password, **FAST)


def _edit(data: bytes, **changes) -> bytes:
    doc = json.loads(data)
    for name, change in changes.items():
        doc[name] = change(doc[name])
    return json.dumps(doc).encode()


def _flip(text: str) -> str:
    return ("1" if text[0] == "0" else "0") + text[1:]


def test_a_keystore_opens_to_the_same_key_and_names_its_public_key() -> None:
    key = HolderKey.generate()
    data = _keystore(key)
    doc = json.loads(data)
    assert doc["format"] == KEYSTORE_FORMAT and doc["public_key"] == key.public_hex
    assert doc["kdf"]["name"] == "argon2id" and doc["cipher"] == "xchacha20poly1305-ietf"
    assert HolderKey.is_keystore(data) and not HolderKey.is_keystore(key.private_hex())
    opened = HolderKey.from_keystore(data, PASSWORD)
    assert opened.private_hex() == key.private_hex()
    assert _keystore(key) != data  # a fresh salt and nonce each time


def test_the_default_cost_is_libsodium_moderate() -> None:
    key = HolderKey.generate()
    data = key.to_keystore(PASSWORD)
    kdf = json.loads(data)["kdf"]
    assert (kdf["opslimit"], kdf["memlimit"]) == (argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE)
    assert HolderKey.from_keystore(data, PASSWORD).public_hex == key.public_hex


def test_a_key_from_its_keystore_unwraps_a_data_key_exactly_as_the_hex_key_does() -> None:
    key = HolderKey.generate()
    keyring, data_key = Keyring.create("v1", {"operator": key.public_hex})
    from_keystore = HolderKey.from_keystore(_keystore(key), PASSWORD)
    from_hex = HolderKey.from_hex(key.private_hex())
    assert [k.secret for k in keyring.data_keys(from_keystore)] == [data_key.secret]
    assert [k.secret for k in keyring.data_keys(from_hex)] == [data_key.secret]


def test_a_wrong_password_is_one_clear_error_naming_the_source_and_the_fix() -> None:
    data = _keystore(HolderKey.generate())
    with pytest.raises(KeyringError) as refused:
        HolderKey.from_keystore(data, "hunter2", source="the keystore /k/holder.key", password_source="PW")
    message = str(refused.value)
    assert "the keystore /k/holder.key does not open with PW: the password is wrong" in message
    assert "hunter2" not in message
    with pytest.raises(KeyringError, match="password-protected keystore: give the password"):
        HolderKey.from_keystore(data, "")


ALTERED = "was altered: the password is right but the sealed key or the document around it fails"


@pytest.mark.parametrize(
    "field, change, expected",
    [
        ("ciphertext", _flip, ALTERED),
        ("ciphertext", lambda c: c[:-2], ALTERED),  # truncated
        ("public_key", lambda _: HolderKey.generate().public_hex, ALTERED),  # another key's name on this one
        ("nonce", _flip, ALTERED),
        ("format", lambda _: "caravan-holder-keystore/2", "is not a Caravan holder keystore"),
        ("kdf", lambda k: {**k, "name": "scrypt"}, "is not a Caravan holder keystore"),
    ],
)
def test_an_altered_keystore_is_refused_as_altered_not_as_a_wrong_password(field, change, expected) -> None:
    data = _edit(_keystore(HolderKey.generate()), **{field: change})
    with pytest.raises(KeyringError) as refused:
        HolderKey.from_keystore(data, PASSWORD, source="the keystore K")
    assert str(refused.value).startswith(f"the keystore K {expected}")


@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b"{}",
        b"[1]",
        b'{"format": "caravan-holder-keystore/1"}',
    ],
)
def test_a_malformed_keystore_says_what_it_is_not(data: bytes) -> None:
    with pytest.raises(KeyringError, match="the keystore K is not a Caravan holder keystore"):
        HolderKey.from_keystore(data, PASSWORD, source="the keystore K")


def test_a_keystore_asking_for_more_than_a_reader_gives_is_refused_before_any_work() -> None:
    data = _edit(_keystore(HolderKey.generate()), kdf=lambda k: {**k, "memlimit": 2 * KEYSTORE_MAX_MEMLIMIT})
    with pytest.raises(KeyringError, match="out of range"):
        HolderKey.from_keystore(data, PASSWORD)
    with pytest.raises(KeyringError, match="out of range"):
        HolderKey.generate().to_keystore(PASSWORD, opslimit=0, memlimit=argon2id.MEMLIMIT_MIN)


def test_an_empty_password_is_refused() -> None:
    with pytest.raises(KeyringError, match="non-empty password"):
        HolderKey.generate().to_keystore("", **FAST)


def test_neither_the_secret_nor_the_password_is_in_the_keystore_a_repr_or_an_error() -> None:
    key = HolderKey.generate()
    data = _keystore(key)
    secret = key.private_hex()
    assert secret.encode() not in data and bytes(key.private) not in data and PASSWORD.encode() not in data
    opened = HolderKey.from_keystore(data, PASSWORD)
    assert secret not in repr(opened) and secret not in str(opened) and PASSWORD not in repr(opened)
    errors = []
    for bad in (_edit(data, ciphertext=_flip), data):
        with pytest.raises(KeyringError) as refused:
            HolderKey.from_keystore(bad, PASSWORD if bad is not data else PASSWORD + "!")
        errors.append(str(refused.value))
    assert not any(secret in e or PASSWORD in e for e in errors)
