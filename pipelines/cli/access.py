"""`caravan access ...`: who may read a private dataset version.

A holder (the operator, an auditor, a serving host) makes a key pair once (`keygen`: the private
key goes to a file readable by its owner only, in hex or, with `--password-env NAME`, as a keystore
sealed under the password in that environment variable; the public key is printed) and hands over
the public key. A holder already granted a version runs `grant` to wrap the version's data keys for
it, or `revoke` to drop one: the version then gets a new data key, its registered files are
sealed again under it, and everything stored from then on is unreadable to the revoked holder.
The acting holder's key comes from `CARAVAN_HOLDER_KEY` or `CARAVAN_HOLDER_KEYFILE` (a keystore's
password from `CARAVAN_HOLDER_KEY_PASSWORD`), never an option.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.errors import CaravanError, clean_errors
from pipelines.cli.options import StoreDir, open_store
from storage import EncryptedStore, HolderKey, KeyringError, StorageError

app = typer.Typer(help="Private versions: holder keys, grant and revoke access.", no_args_is_help=True)

Version = Annotated[str, typer.Argument(help="The private dataset version.")]
Name = Annotated[str, typer.Argument(help="The holder's name (e.g. auditor-acme).")]


def _keyrings(store_dir: str | None):  # noqa: ANN202
    from pipelines.privacy import Keyrings, keyring_dir
    from pipelines.settings import load_settings

    return Keyrings(keyring_dir(load_settings()), open_store(store_dir))


def _keyring(keyrings, version: str):  # noqa: ANN001, ANN202
    keyring = keyrings.get(version)
    if keyring is None:
        raise CaravanError(
            f"dataset version {version!r} is not private (no keyring); register it with "
            "`caravan ingest ... --private`"
        )
    return keyring


def _acting_holder(why: str) -> HolderKey:
    from pipelines.privacy import require_holder_key
    from pipelines.settings import load_settings

    return require_holder_key(load_settings(), why)


@app.command("keygen")
def keygen(
    out: Annotated[
        Path | None,
        typer.Option(help="Key file to write (mode 0600); default $CARAVAN_HOLDER_KEYFILE or "
                     "$CARAVAN_HOME/keys/holder.key. An existing file is never overwritten."),
    ] = None,
    password_env: Annotated[
        str | None,
        typer.Option("--password-env", metavar="NAME",
                     help="Write a password-protected keystore (Argon2id) instead of the hex key, its "
                     "password read from the environment variable NAME (e.g. CARAVAN_HOLDER_KEY_PASSWORD), "
                     "never from the command line. Readers open it with CARAVAN_HOLDER_KEY_PASSWORD."),
    ] = None,
) -> None:
    """Make a holder key pair: the private key to a file, the public key printed (hand it over)."""
    from pipelines.privacy import holder_keyfile, write_keyfile
    from pipelines.settings import load_settings

    with clean_errors(KeyringError):
        password = _password(password_env) if password_env is not None else None
        path = out or holder_keyfile(load_settings())
        key = HolderKey.generate()
        write_keyfile(path, key, password)
    kind = "keystore" if password is not None else "hex"
    typer.echo(json.dumps({"public_key": key.public_hex, "key_file": str(path), "format": kind}))


@app.command("protect")
def protect(
    password_env: Annotated[
        str,
        typer.Option("--password-env", metavar="NAME",
                     help="The environment variable holding the keystore's password (never the password)."),
    ],
    keyfile: Annotated[
        Path | None,
        typer.Option(help="The hex key file to protect; default $CARAVAN_HOLDER_KEYFILE or "
                     "$CARAVAN_HOME/keys/holder.key."),
    ] = None,
) -> None:
    """Turn a hex holder key file into a password keystore holding the same key.

    The file is replaced atomically: it is the old hex key or the new keystore, never neither."""
    from pipelines.privacy import (
        HOLDER_KEY_PASSWORD_ENV,
        HOLDER_KEYFILE_ENV,
        holder_key,
        holder_keyfile,
        write_keyfile,
    )
    from pipelines.settings import load_settings

    with clean_errors(KeyringError):
        password = _password(password_env)
        settings = load_settings()
        path = (keyfile or holder_keyfile(settings)).absolute()
        if not path.is_file():
            raise CaravanError(
                f"no key file at {path}; `caravan access keygen --password-env NAME` makes a new one"
            )
        if HolderKey.is_keystore(path.read_bytes()):
            raise CaravanError(f"{path} is already a keystore; nothing was changed")
        key = holder_key(settings, {HOLDER_KEYFILE_ENV: str(path)})  # the 0600 and hex checks
        staged = path.with_name(path.name + ".keystore")
        write_keyfile(staged, key, password)
        reread = holder_key(settings, {HOLDER_KEYFILE_ENV: str(staged), HOLDER_KEY_PASSWORD_ENV: password})
        if reread is None or reread.public_hex != key.public_hex:
            staged.unlink()
            raise CaravanError(f"the keystore for {path} did not open to the same key; nothing was changed")
        staged.replace(path)
    typer.echo(json.dumps({"public_key": key.public_hex, "key_file": str(path), "format": "keystore"}))


def _password(env_name: str) -> str:
    """The keystore password from the environment variable named (never from the command line)."""
    password = os.environ.get(env_name)
    if not password:
        # the name is not echoed: a password typed there by mistake stays out of the logs
        raise CaravanError(
            "--password-env names an environment variable that is not set or is empty; export the "
            "keystore's password in one (e.g. `read -rs CARAVAN_HOLDER_KEY_PASSWORD; export "
            "CARAVAN_HOLDER_KEY_PASSWORD`) and give its name, never the password itself"
        )
    return password


@app.command("grant")
def grant(
    version: Version,
    name: Name,
    public_key: Annotated[str, typer.Argument(help="The holder's public key (hex, from its `keygen`).")],
    store_dir: StoreDir = None,
) -> None:
    """Give a holder read access: wrap every data key of the version for its public key."""
    with clean_errors(KeyringError, StorageError):
        keyrings = _keyrings(store_dir)
        keyring = _keyring(keyrings, version)
        if name in keyring.holders():
            raise CaravanError(f"{name!r} already holds a key of {version!r}; revoke it first to replace it")
        cid = keyrings.put(keyring.grant(_acting_holder(f"granting access to {version!r}"), name, public_key))
    typer.echo(json.dumps({"version": version, "granted": name, "keyring_cid": cid}))


@app.command("revoke")
def revoke(version: Version, name: Name, store_dir: StoreDir = None) -> None:
    """Take a holder's access away: a new data key for the holders left.

    The version's files are sealed again under it, so everything stored from now on is unreadable to the
    revoked holder."""
    from pipelines.resources import DatasetCatalog
    from pipelines.settings import load_settings

    with clean_errors(KeyringError, StorageError):
        keyrings = _keyrings(store_dir)
        holder = _acting_holder(f"revoking access to {version!r}")
        old = _keyring(keyrings, version)
        reader = EncryptedStore(keyrings.store, old.data_keys(holder))
        keyring, key = old.revoke(name, holder)
        # the keyring first: if sealing the files again fails, they stay readable under the old key
        cid = keyrings.put(keyring)
        catalog = DatasetCatalog(root=str(load_settings().catalog_dir))
        entry = catalog.reseal(version, reader, EncryptedStore(keyrings.store, [key]))
    typer.echo(
        json.dumps(
            {
                "version": version,
                "revoked": name,
                "key_id": key.key_id,
                "keyring_cid": cid,
                "sources": [f["cid"] for f in entry["sources"]],
                "next": f"materialize {version!r} again to re-derive its values under the new key",
            }
        )
    )


@app.command("show")
def show(version: Version, store_dir: StoreDir = None) -> None:
    """The version's holders (name, public key) and its data key ids, current first. No secret."""
    with clean_errors(KeyringError, StorageError):
        keyring = _keyring(_keyrings(store_dir), version)
    typer.echo(
        json.dumps(
            {"version": version, "holders": keyring.holders(), "key_ids": [k for k, _ in keyring.keys]},
            indent=2,
        )
    )


def register(root: typer.Typer) -> None:
    """Add the `caravan access` group (keygen, protect, grant, revoke, show) to the root app."""
    root.add_typer(app, name="access")
