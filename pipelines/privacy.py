"""Private dataset versions in Caravan: where their keyrings live and whose key opens them.

A private version's keyring (`storage.Keyring`: its data keys, wrapped per holder; no secret) is
stored in the content store, pinned, and named by a pointer file `<keyring_dir>/<version>.json`.
A holder's private key comes from `CARAVAN_HOLDER_KEY` (hex) or the key file
`CARAVAN_HOLDER_KEYFILE` (default `$CARAVAN_HOME/keys/holder.key`, mode 0600, written by
`caravan access keygen`), as the chain key comes from `CARAVAN_PRIVATE_KEY` or a keystore; it is
never put in configuration or logged. The key file holds the key in hex, or a password-protected
keystore (`HolderKey.to_keystore`, told apart by its content) whose password comes from
`CARAVAN_HOLDER_KEY_PASSWORD`.

    holder_key(settings) / require_holder_key(settings, why)   the holder key in reach, if any
    Keyrings(keyring_dir, store)                               get / put / for_ingest / is_private / versions
    keyrings.store_for(version, holder)                        what a step writing `version` uses
    keyrings.reading_store(holder)                             opens every version the holder may read
    registering(settings, store, version, private)             the store a version's files are registered with
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from pipelines.settings import Settings
from storage import ContentStore, DataKey, EncryptedStore, HolderKey, Keyring, KeyringError, public_store

HOLDER_KEY_ENV = "CARAVAN_HOLDER_KEY"
HOLDER_KEYFILE_ENV = "CARAVAN_HOLDER_KEYFILE"
HOLDER_KEY_PASSWORD_ENV = "CARAVAN_HOLDER_KEY_PASSWORD"
OPERATOR = "operator"  # the holder name `ingest --private` wraps the first data key for


def keyring_dir(settings: Settings) -> Path:
    """Where private versions' keyring pointer files live (the `Keyrings` root): `$CARAVAN_HOME/keyrings`."""
    return settings.home / "keyrings"


def holder_keyfile(settings: Settings, env: Mapping[str, str] | None = None) -> Path:
    """The key file (which may not exist): `CARAVAN_HOLDER_KEYFILE`, else `$CARAVAN_HOME/keys/holder.key`."""
    env = os.environ if env is None else env
    return Path(env.get(HOLDER_KEYFILE_ENV) or settings.home / "keys" / "holder.key").absolute()


def holder_key(settings: Settings, env: Mapping[str, str] | None = None) -> HolderKey | None:
    """The holder key from `CARAVAN_HOLDER_KEY`, else from the key file if there is one: hex, or a
    keystore opened with `CARAVAN_HOLDER_KEY_PASSWORD`."""
    env = os.environ if env is None else env
    if env.get(HOLDER_KEY_ENV):
        return HolderKey.from_hex(env[HOLDER_KEY_ENV], source=HOLDER_KEY_ENV)
    path = holder_keyfile(settings, env)
    if not path.is_file():
        return None
    if path.stat().st_mode & 0o077:
        raise KeyringError(
            f"the key file {path} is readable by others; `chmod 600 {path}`, and rotate the key if it leaked"
        )
    data = path.read_bytes()
    if not HolderKey.is_keystore(data):
        return HolderKey.from_hex(data.decode(errors="replace"), source=f"the key file {path}")
    password = env.get(HOLDER_KEY_PASSWORD_ENV)
    if not password:
        raise KeyringError(
            f"the key file {path} is a password-protected keystore: "
            f"set {HOLDER_KEY_PASSWORD_ENV} to its password"
        )
    return _open_keystore(data, password, f"the keystore {path}")


@functools.lru_cache(maxsize=4)
def _open_keystore(data: bytes, password: str, source: str) -> HolderKey:
    """A keystore opened once per process (Argon2id costs ~0.4 s and 256 MiB; a step asks for the
    key at every load and store). Refusals are not cached."""
    return HolderKey.from_keystore(data, password, source=source, password_source=HOLDER_KEY_PASSWORD_ENV)


def require_holder_key(settings: Settings, why: str) -> HolderKey:
    """The holder key (`holder_key`), or a `KeyringError` saying that `why` (what asks for it, e.g.
    "granting access to 'v1'") needs one and where to put it."""
    key = holder_key(settings)
    if key is None:
        raise KeyringError(
            f"{why} needs a holder key: set {HOLDER_KEY_ENV}, or {HOLDER_KEYFILE_ENV} (default "
            f"{holder_keyfile(settings)}); `caravan access keygen` makes one"
        )
    return key


def write_keyfile(path: Path, key: HolderKey, password: str | None = None) -> None:
    """Write a holder key file readable by its owner only, in hex or, with a password, as a keystore;
    never overwrites one."""
    content = key.to_keystore(password) if password is not None else (key.private_hex() + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyringError(
            f"{path} already holds a key; it was kept (move it away to make a new one)"
        ) from None
    with os.fdopen(fd, "wb") as out:
        out.write(content)


class Keyrings:
    """The keyrings of a catalog's private versions: stored (public) in `store`, named by pointer files."""

    def __init__(self, root: str | os.PathLike[str], store: ContentStore) -> None:
        self.root = Path(root)
        self.store = public_store(store)

    def _pointer(self, version: str) -> Path:
        return self.root / f"{version}.json"

    def is_private(self, version: str) -> bool:
        """Whether `version` has a keyring pointer file (its values are sealed); reads no key and no store."""
        return self._pointer(version).is_file()

    def get(self, version: str) -> Keyring | None:
        """The keyring `version` points at, loaded from the store; None for a public version."""
        path = self._pointer(version)
        if not path.is_file():
            return None
        return Keyring.from_bytes(self.store.get(json.loads(path.read_text())["cid"]))

    def put(self, keyring: Keyring) -> str:
        """Store the keyring (pinned) and point its version at it; returns its CID."""
        cid = self.store.put_bytes(keyring.to_bytes(), cid_version=1, pin=True)
        path = self._pointer(keyring.version)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cid": cid}))
        tmp.replace(path)
        return cid

    def for_ingest(self, version: str, holder: HolderKey) -> tuple[EncryptedStore, Keyring | None]:
        """The sealing store to register a private `version` with, and its new keyring (None if it
        has one): `put` that keyring only once the registration succeeded, so a refused one leaves
        no keyring behind (a keyring makes a version private)."""
        known = self.get(version)
        keyring = known or Keyring.create(version, {OPERATOR: holder.public_hex})[0]
        return EncryptedStore(self.store, keyring.data_keys(holder)), None if known else keyring

    def store_for(self, version: str, holder: HolderKey | None) -> ContentStore:
        """The store a step of `version` writes through: sealing under its current data key if the
        version is private (refused without a holder key granted access), else the plain store."""
        keyring = self.get(version)
        if keyring is None:
            return self.store
        if holder is None:
            raise KeyringError(
                f"dataset version {version!r} is private: set {HOLDER_KEY_ENV} or {HOLDER_KEYFILE_ENV} "
                "to a holder key granted access to it (`caravan access grant`)"
            )
        return EncryptedStore(self.store, keyring.data_keys(holder))

    def versions(self) -> list[str]:
        """The private versions (those with a keyring), sorted."""
        return sorted(p.stem for p in self.root.glob("*.json")) if self.root.is_dir() else []

    def data_keys(self, holder: HolderKey) -> list[DataKey]:
        """Every data key of every version this holder is granted."""
        keys: list[DataKey] = []
        for version in self.versions():
            keyring = self.get(version)
            try:
                keys.extend(keyring.data_keys(holder) if keyring else [])
            except KeyringError:
                continue  # not granted this one: its data stays sealed to this holder
        return keys

    def reading_store(self, holder: HolderKey | None) -> ContentStore:
        """A store that opens whatever sealed content this holder may read (the plain one if none)."""
        keys = self.data_keys(holder) if holder is not None else []
        return EncryptedStore(self.store, keys) if keys else self.store


@contextlib.contextmanager
def registering(
    settings: Settings, store: ContentStore, version: str, private: bool
) -> Iterator[ContentStore]:
    """The store to register `version`'s files with: sealing under a data key wrapped for the holder
    key in reach if `private`. A new keyring is kept only if the registration in the block succeeds."""
    if not private:
        yield store
        return
    keyrings = Keyrings(keyring_dir(settings), store)
    holder = require_holder_key(settings, f"the private version {version!r}")
    sealing, keyring = keyrings.for_ingest(version, holder)
    yield sealing
    if keyring is not None:
        keyrings.put(keyring)  # registered: the version is private from now on
