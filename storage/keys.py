"""Who may read a private dataset version: its data keys, each wrapped for every authorized holder.

A holder (the operator, an auditor, the serving host) has an X25519 key pair; a data key is
wrapped for it as a libsodium sealed box (PyNaCl `SealedBox`) to its public key, so granting
needs only the holder's public key, and only its private key unwraps. A version's `Keyring`
lists its data keys (the current one first; a revocation adds a new one) and, per key, the
wrapped copies by holder. The keyring holds no secret: it is stored as plain JSON beside the
data, and its CID names it.

    HolderKey.generate() / HolderKey.from_hex(text)   a holder's private key (repr hides it)
    key.to_keystore(password) / HolderKey.from_keystore(data, password)
                                                      the same key in a password-protected JSON keystore
    Keyring.create(version, holders)                  a fresh data key wrapped for each holder
    keyring.grant(holder_key, name, public_hex)       one more wrapped copy of every key
    keyring.revoke(name, holder_key)                  drop a holder; seal new data under a new key
    keyring.data_keys(holder_key)                     every data key this holder can unwrap
"""

from __future__ import annotations

import base64
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

import nacl.utils
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.pwhash import argon2id
from nacl.secret import Aead

from storage.encryption import DataKey, DecryptionError

KEYRING_FORMAT = "caravan-keyring/1"
SCHEME = "AES-SIV-512, 1 MiB segments; keys wrapped in X25519 sealed boxes"
KEYSTORE_FORMAT = "caravan-holder-keystore/1"
KEYSTORE_KDF = "argon2id"  # libsodium crypto_pwhash (Argon2id v1.3)
KEYSTORE_CIPHER = "xchacha20poly1305-ietf"  # libsodium AEAD, 24-byte random nonce
# what a keystore may ask of its reader: a hostile file must not take all memory or time
KEYSTORE_MAX_OPSLIMIT = 4 * argon2id.OPSLIMIT_SENSITIVE
KEYSTORE_MAX_MEMLIMIT = argon2id.MEMLIMIT_SENSITIVE  # 1 GiB


class KeyringError(DecryptionError):
    """A holder key that is missing, malformed or not granted, or a keyring change that is refused."""


@dataclass(frozen=True)
class HolderKey:
    """A holder's X25519 private key. Never printed: `repr` shows only the public key."""

    private: PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> HolderKey:
        """A new random key pair, as `caravan access keygen` makes one."""
        return cls(PrivateKey.generate())

    @classmethod
    def from_hex(cls, text: str, *, source: str = "the holder key") -> HolderKey:
        """The key from 64 hex characters (``0x`` and whitespace allowed); ``KeyringError`` naming
        ``source`` (where the text came from) otherwise."""
        try:
            raw = bytes.fromhex(text.strip().removeprefix("0x"))
            return cls(PrivateKey(raw))
        except (ValueError, TypeError):
            raise KeyringError(
                f"{source} is not a 32-byte hex X25519 private key; make one with `caravan access keygen`"
            ) from None

    @property
    def public_hex(self) -> str:
        """The public key as 64 hex characters: what a holder hands over to be granted access."""
        return bytes(self.private.public_key).hex()

    def private_hex(self) -> str:
        """The private key as 64 hex characters, as `from_hex` reads it: a key file without a password."""
        return bytes(self.private).hex()

    def __repr__(self) -> str:
        return f"HolderKey(public={self.public_hex})"

    @staticmethod
    def is_keystore(data: bytes | str) -> bool:
        """Whether a key file holds a keystore (a JSON object) rather than a hex key."""
        return (data.encode() if isinstance(data, str) else data).lstrip().startswith(b"{")

    def to_keystore(
        self,
        password: str,
        *,
        opslimit: int = argon2id.OPSLIMIT_MODERATE,
        memlimit: int = argon2id.MEMLIMIT_MODERATE,
    ) -> bytes:
        """This key sealed under a password, as a JSON keystore that names its public key.

        Argon2id (PyNaCl's `nacl.pwhash.argon2id`, libsodium's memory-hard password hash, the
        RFC 9106 and OWASP first choice) derives 64 bytes from the password and a random salt: the
        first 32 key an XChaCha20-Poly1305 AEAD (`nacl.secret.Aead`) that seals the private key with
        the rest of the document (format, public key, KDF and its parameters) as associated data,
        the last 32 are stored as a password check, no easier to guess from than the ciphertext,
        so that a wrong password and an altered file are told apart. Defaults: libsodium's MODERATE
        cost (256 MiB, 3 passes), the memory cost of the chain's scrypt keystore.
        """
        if not password:
            raise KeyringError("a holder keystore needs a non-empty password")
        _check_cost(opslimit, memlimit, "the keystore cost")
        salt = nacl.utils.random(argon2id.SALTBYTES)
        header = {
            "format": KEYSTORE_FORMAT,
            "public_key": self.public_hex,
            "kdf": {"name": KEYSTORE_KDF, "opslimit": opslimit, "memlimit": memlimit, "salt": salt.hex()},
            "cipher": KEYSTORE_CIPHER,
        }
        key, check = _derive(password, salt, opslimit, memlimit)
        sealed = Aead(key).encrypt(bytes(self.private), _canonical(header))
        doc = {**header, "check": check.hex(), "nonce": sealed.nonce.hex()}
        doc["ciphertext"] = sealed.ciphertext.hex()
        return json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def from_keystore(
        cls,
        data: bytes | str,
        password: str,
        *,
        source: str = "the holder keystore",
        password_source: str = "the password",
    ) -> HolderKey:
        """The key a `to_keystore` document seals. Raises `KeyringError` naming `source` (and
        `password_source`, never the password) for a malformed file, a wrong password, or altered bytes."""
        header, salt, check, nonce, ciphertext = _parse_keystore(data, source)
        kdf = header["kdf"]
        if not password:
            raise KeyringError(f"{source} is a password-protected keystore: give {password_source}")
        key, expected = _derive(password, salt, kdf["opslimit"], kdf["memlimit"])
        if not hmac.compare_digest(expected, check):
            raise KeyringError(
                f"{source} does not open with {password_source}: the password is wrong; "
                "give the one it was written with"
            )
        try:
            holder = cls(PrivateKey(Aead(key).decrypt(nonce + ciphertext, _canonical(header))))
        except (CryptoError, ValueError, TypeError):
            holder = None
        if holder is None or holder.public_hex != header["public_key"]:
            raise KeyringError(
                f"{source} was altered: the password is right but the sealed key or the document around "
                "it fails authentication; restore the file from a copy"
            )
        return holder


def _canonical(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _derive(password: str, salt: bytes, opslimit: int, memlimit: int) -> tuple[bytes, bytes]:
    """(AEAD key, password check): the two halves of 64 bytes Argon2id derives from the password."""
    secret = password.encode("utf-8", "surrogateescape")  # an environment value's own bytes
    out = argon2id.kdf(64, secret, salt, opslimit=opslimit, memlimit=memlimit)
    return out[:32], out[32:]


def _check_cost(opslimit: Any, memlimit: Any, what: str) -> None:
    ok_ops = type(opslimit) is int and argon2id.OPSLIMIT_MIN <= opslimit <= KEYSTORE_MAX_OPSLIMIT
    ok_mem = type(memlimit) is int and argon2id.MEMLIMIT_MIN <= memlimit <= KEYSTORE_MAX_MEMLIMIT
    if not (ok_ops and ok_mem):
        raise KeyringError(
            f"{what} is out of range: argon2id opslimit {argon2id.OPSLIMIT_MIN}..{KEYSTORE_MAX_OPSLIMIT}, "
            f"memlimit {argon2id.MEMLIMIT_MIN}..{KEYSTORE_MAX_MEMLIMIT} bytes"
        )


def _parse_keystore(data: bytes | str, source: str) -> tuple[dict[str, Any], bytes, bytes, bytes, bytes]:
    """A keystore's authenticated header and its salt, check, nonce and ciphertext (bytes)."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != KEYSTORE_FORMAT:
            raise ValueError(f"format {doc.get('format') if isinstance(doc, dict) else None!r}")
        kdf = doc["kdf"]
        if kdf["name"] != KEYSTORE_KDF or doc["cipher"] != KEYSTORE_CIPHER:
            raise ValueError(f"kdf {kdf['name']!r}, cipher {doc['cipher']!r}")
        if len(bytes.fromhex(doc["public_key"])) != 32:
            raise ValueError("a public key of the wrong length")
        salt, check = bytes.fromhex(kdf["salt"]), bytes.fromhex(doc["check"])
        nonce, ciphertext = bytes.fromhex(doc["nonce"]), bytes.fromhex(doc["ciphertext"])
        if (len(salt), len(check), len(nonce)) != (argon2id.SALTBYTES, 32, Aead.NONCE_SIZE):
            raise ValueError("salt, check or nonce of the wrong length")
        header = {
            "format": doc["format"],
            "public_key": doc["public_key"],
            "kdf": {k: kdf[k] for k in ("name", "opslimit", "memlimit", "salt")},
            "cipher": doc["cipher"],
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyringError(
            f"{source} is not a Caravan holder keystore ({exc}); write one with "
            "`caravan access keygen --password-env NAME`"
        ) from None
    _check_cost(header["kdf"]["opslimit"], header["kdf"]["memlimit"], f"the cost {source} asks")
    return header, salt, check, nonce, ciphertext


def public_key(text: str) -> PublicKey:
    """A holder's X25519 public key from its 64 hex characters (`0x` allowed); `KeyringError` otherwise."""
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
    """The data key `wrap` sealed, opened with the holder's private key; `KeyringError` if it won't open."""
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
        """The key id of the current data key, the one new data is sealed with."""
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
        """The JSON `to_bytes` writes: format, scheme, version, and each key's wrapped copies by holder."""
        return {
            "format": KEYRING_FORMAT,
            "scheme": SCHEME,
            "version": self.version,
            "keys": [{"key_id": kid, "holders": wrapped} for kid, wrapped in self.keys],
        }

    def to_bytes(self) -> bytes:
        """`to_json` as key-sorted JSON: the bytes stored, so an unchanged keyring keeps its CID."""
        return json.dumps(self.to_json(), sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Keyring:
        """The keyring ``to_bytes`` wrote; ``KeyringError`` for anything else."""
        try:
            doc = json.loads(data)
            if doc.get("format") != KEYRING_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            return cls(doc["version"], tuple((k["key_id"], k["holders"]) for k in doc["keys"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"not a Caravan keyring ({exc})") from None


def _wrapped_for(key: DataKey, holders: dict[str, str]) -> dict[str, dict[str, str]]:
    return {name: {"public_key": pk, "wrapped": wrap(key, pk)} for name, pk in sorted(holders.items())}
