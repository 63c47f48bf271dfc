"""Who may read a private dataset version: its data keys, each wrapped for every authorized holder.

A holder (the operator, an auditor, the serving host) has an X25519 key pair; a data key is
wrapped for it as a libsodium sealed box (PyNaCl `SealedBox`) to its public key, so granting
needs only the holder's public key, and only its private key unwraps. A version's `Keyring`
lists its data keys (the current one first; a revocation adds a new one) and, per key, the
wrapped copies by holder. The keyring holds no secret: it is stored as plain JSON beside the
data, and its CID names it.

    HolderKey.generate() / HolderKey.from_hex(text)   a holder's private key (repr hides it)
    Keyring.create(version, holders)                  a fresh data key wrapped for each holder
    keyring.grant(holder_key, name, public_hex)       one more wrapped copy of every key
    keyring.revoke(name, holder_key)                  drop a holder; seal new data under a new key
    keyring.data_keys(holder_key)                     every data key this holder can unwrap
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from storage.encryption import DataKey, DecryptionError

KEYRING_FORMAT = "caravan-keyring/1"
SCHEME = "AES-SIV-512, 1 MiB segments; keys wrapped in X25519 sealed boxes"


class KeyringError(DecryptionError):
    """A holder key that is missing, malformed or not granted, or a keyring change that is refused."""


@dataclass(frozen=True)
class HolderKey:
    """A holder's X25519 private key. Never printed: `repr` shows only the public key."""

    private: PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> HolderKey:
        return cls(PrivateKey.generate())

    @classmethod
    def from_hex(cls, text: str, *, source: str = "the holder key") -> HolderKey:
        try:
            raw = bytes.fromhex(text.strip().removeprefix("0x"))
            return cls(PrivateKey(raw))
        except (ValueError, TypeError):
            raise KeyringError(
                f"{source} is not a 32-byte hex X25519 private key; make one with `caravan access keygen`"
            ) from None

    @property
    def public_hex(self) -> str:
        return bytes(self.private.public_key).hex()

    def private_hex(self) -> str:
        return bytes(self.private).hex()

    def __repr__(self) -> str:
        return f"HolderKey(public={self.public_hex})"


def public_key(text: str) -> PublicKey:
    try:
        return PublicKey(bytes.fromhex(text.strip().removeprefix("0x")))
    except (ValueError, TypeError):
        raise KeyringError(
            f"{text!r} is not a 32-byte hex X25519 public key; `caravan access keygen` prints one"
        ) from None


def wrap(key: DataKey, public_hex: str) -> str:
    """The data key sealed to a holder's public key (base64): only its private key opens it."""
    return base64.b64encode(SealedBox(public_key(public_hex)).encrypt(key.secret)).decode()


def unwrap(wrapped: str, holder: HolderKey) -> DataKey:
    try:
        return DataKey(SealedBox(holder.private).decrypt(base64.b64decode(wrapped)))
    except (CryptoError, ValueError):
        raise KeyringError(f"a wrapped data key does not open with holder key {holder.public_hex}") from None


@dataclass(frozen=True)
class Keyring:
    """A version's data keys (current first), each as {holder name: (public key, wrapped key)}."""

    version: str
    keys: tuple[tuple[str, dict[str, dict[str, str]]], ...]  # (key_id, {name: {public_key, wrapped}})

    @classmethod
    def create(cls, version: str, holders: dict[str, str]) -> tuple[Keyring, DataKey]:
        """A new data key wrapped for each holder (name -> public key hex); returns it too."""
        if not holders:
            raise KeyringError("a private version needs at least one holder (the operator's public key)")
        key = DataKey.generate()
        return cls(version, ((key.key_id, _wrapped_for(key, holders)),)), key

    @property
    def current(self) -> str:
        return self.keys[0][0]

    def holders(self) -> dict[str, str]:
        """Who can read data sealed under the current key: name -> public key hex."""
        return {name: w["public_key"] for name, w in self.keys[0][1].items()}

    def data_keys(self, holder: HolderKey) -> list[DataKey]:
        """Every data key wrapped for `holder` (current first); refuses a holder granted none."""
        found = []
        for key_id, wrapped in self.keys:
            for entry in wrapped.values():
                if entry["public_key"] == holder.public_hex:
                    key = unwrap(entry["wrapped"], holder)
                    if key.key_id != key_id:
                        raise KeyringError(f"the keyring of {self.version!r} is damaged: key {key_id}")
                    found.append(key)
                    break
        if not found or found[0].key_id != self.current:
            raise KeyringError(
                f"holder key {holder.public_hex} is not granted access to dataset version {self.version!r}"
                + (" (it was revoked)" if found else "")
                + f"; a holder who is can run `caravan access grant {self.version} NAME PUBLIC_KEY`"
            )
        return found

    def grant(self, granter: HolderKey, name: str, public_hex: str) -> Keyring:
        """Wrap every data key the granter holds for one more holder (no data is re-encrypted)."""
        public_key(public_hex)
        keys = {k.key_id: k for k in self.data_keys(granter)}
        out = []
        for key_id, wrapped in self.keys:
            if key_id in keys:
                entry = {"public_key": public_hex, "wrapped": wrap(keys[key_id], public_hex)}
                wrapped = {**wrapped, name: entry}
            out.append((key_id, wrapped))
        return Keyring(self.version, tuple(out))

    def revoke(self, name: str, granter: HolderKey) -> tuple[Keyring, DataKey]:
        """Drop `name` from every key and start a new data key for the holders left: what is
        sealed from now on is unreadable to the revoked holder. Returns the new key too."""
        holders = self.holders()
        if name not in holders:
            raise KeyringError(f"{name!r} holds no key of {self.version!r}; holders: {sorted(holders)}")
        if holders[name] == granter.public_hex:
            raise KeyringError("a holder cannot revoke itself; ask another holder to run the revocation")
        self.data_keys(granter)  # only a holder of the current key may revoke
        key = DataKey.generate()
        left = {n: pk for n, pk in holders.items() if n != name}
        rest = tuple((kid, {n: w for n, w in wrapped.items() if n != name}) for kid, wrapped in self.keys)
        return Keyring(self.version, ((key.key_id, _wrapped_for(key, left)), *rest)), key

    def to_json(self) -> dict[str, Any]:
        return {
            "format": KEYRING_FORMAT,
            "scheme": SCHEME,
            "version": self.version,
            "keys": [{"key_id": kid, "holders": wrapped} for kid, wrapped in self.keys],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Keyring:
        try:
            doc = json.loads(data)
            if doc.get("format") != KEYRING_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            return cls(doc["version"], tuple((k["key_id"], k["holders"]) for k in doc["keys"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"not a Caravan keyring ({exc})") from None


def _wrapped_for(key: DataKey, holders: dict[str, str]) -> dict[str, dict[str, str]]:
    return {name: {"public_key": pk, "wrapped": wrap(key, pk)} for name, pk in sorted(holders.items())}
