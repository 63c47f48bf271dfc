"""A holder key file that is a password-protected keystore: `caravan access keygen --password-env`,
read by `holder_key` with CARAVAN_HOLDER_KEY_PASSWORD, opening private versions as the hex key does."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from nacl.pwhash import argon2id
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.content_io import StoreResource
from pipelines.privacy import (
    HOLDER_KEY_ENV,
    HOLDER_KEY_PASSWORD_ENV,
    HOLDER_KEYFILE_ENV,
    Keyrings,
    holder_key,
    keyring_dir,
    write_keyfile,
)
from pipelines.settings import load_settings
from storage import BlockStore, HolderKey, KeyringError

PASSWORD = "a long passphrase, never logged"
FAST = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}  # valid, cheap: tests only


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    for name in (HOLDER_KEY_ENV, HOLDER_KEYFILE_ENV, HOLDER_KEY_PASSWORD_ENV, "CARAVAN_STORE_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def _keystore_file(path: Path, key: HolderKey, password: str = PASSWORD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.to_keystore(password, **FAST))
    path.chmod(0o600)
    return path


def _env(path: Path, password: str | None = PASSWORD) -> dict[str, str]:
    env = {HOLDER_KEYFILE_ENV: str(path)}
    return env if password is None else {**env, HOLDER_KEY_PASSWORD_ENV: password}


def test_holder_key_reads_a_keystore_with_its_password_and_refuses_without(home, tmp_path) -> None:
    key, settings = HolderKey.generate(), load_settings()
    path = _keystore_file(tmp_path / "holder.key", key)
    assert holder_key(settings, _env(path)).private_hex() == key.private_hex()
    for missing in (None, ""):
        with pytest.raises(KeyringError) as refused:
            holder_key(settings, _env(path, missing))
        assert str(refused.value) == (
            f"the key file {path} is a password-protected keystore: "
            f"set {HOLDER_KEY_PASSWORD_ENV} to its password"
        )
    with pytest.raises(KeyringError) as wrong:
        holder_key(settings, _env(path, "not-it-42"))
    assert f"the keystore {path} does not open with {HOLDER_KEY_PASSWORD_ENV}: the password is wrong" in str(
        wrong.value
    )
    assert "not-it-42" not in str(wrong.value)
    path.chmod(0o640)  # the permission check comes first, password or not
    with pytest.raises(KeyringError, match="is readable by others; `chmod 600"):
        holder_key(settings, _env(path))


def test_write_keyfile_with_a_password_writes_a_0600_keystore_and_never_overwrites(home, tmp_path) -> None:
    key, path = HolderKey.generate(), tmp_path / "keys" / "holder.key"
    write_keyfile(path, key, PASSWORD)
    assert oct(path.stat().st_mode & 0o777) == "0o600" and HolderKey.is_keystore(path.read_bytes())
    assert holder_key(load_settings(), _env(path)).public_hex == key.public_hex
    with pytest.raises(KeyringError, match="already holds a key"):
        write_keyfile(path, HolderKey.generate(), PASSWORD)


def test_keygen_writes_a_keystore_from_a_named_variable_and_prints_no_secret(home, monkeypatch) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["access", "keygen", "--password-env", "MY_PW"], env={"MY_PW": PASSWORD})
    assert made.exit_code == 0, made.output
    out = json.loads(made.stdout)
    path = Path(out["key_file"])
    assert out["format"] == "keystore" and path == home / "keys" / "holder.key"  # the default key file
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    data = path.read_bytes()
    assert json.loads(data)["public_key"] == out["public_key"]
    assert json.loads(data)["kdf"]["memlimit"] == argon2id.MEMLIMIT_MODERATE  # the sound default
    monkeypatch.setenv(HOLDER_KEY_PASSWORD_ENV, PASSWORD)
    key = holder_key(load_settings())
    assert key.public_hex == out["public_key"]
    for secret in (key.private_hex(), PASSWORD):
        assert secret not in made.output and secret.encode() not in data


@pytest.mark.parametrize("value", [None, ""])
def test_keygen_refuses_an_unset_or_empty_password_variable_and_writes_nothing(home, tmp_path, value) -> None:
    path = tmp_path / "k.key"
    env = {"PW_NAME_HERE": value} if value is not None else {}
    refused = CliRunner().invoke(
        app, ["access", "keygen", "--out", str(path), "--password-env", "PW_NAME_HERE"], env=env
    )
    assert refused.exit_code == 1 and "--password-env names an environment variable" in refused.output
    assert "PW_NAME_HERE" not in refused.output  # a password typed there by mistake is not echoed
    assert not path.exists()


def test_keygen_without_a_password_writes_the_hex_file_as_before(home, tmp_path) -> None:
    path = tmp_path / "k.key"
    made = CliRunner().invoke(app, ["access", "keygen", "--out", str(path)])
    assert made.exit_code == 0 and json.loads(made.stdout)["format"] == "hex"
    assert HolderKey.from_hex(path.read_text()).public_hex == json.loads(made.stdout)["public_key"]


def test_protect_turns_a_hex_key_file_into_a_keystore_of_the_same_key(home, tmp_path) -> None:
    path = tmp_path / "k.key"
    runner = CliRunner()
    assert runner.invoke(app, ["access", "keygen", "--out", str(path)]).exit_code == 0
    key = HolderKey.from_hex(path.read_text())

    def protect(keyfile: Path, env: dict[str, str]):  # noqa: ANN202
        args = ["access", "protect", "--password-env", "PW", "--keyfile", str(keyfile)]
        return runner.invoke(app, args, env=env)

    refused = protect(path, {})
    assert refused.exit_code == 1 and "--password-env names" in refused.output
    assert path.read_text().strip() == key.private_hex()  # unchanged

    made = protect(path, {"PW": PASSWORD})
    assert made.exit_code == 0, made.output
    said = {"public_key": key.public_hex, "key_file": str(path), "format": "keystore"}
    assert json.loads(made.stdout) == said
    data = path.read_bytes()
    assert HolderKey.is_keystore(data) and key.private_hex().encode() not in data
    assert oct(path.stat().st_mode & 0o777) == "0o600" and sorted(tmp_path.iterdir()) == [path]
    assert holder_key(load_settings(), _env(path)).public_hex == key.public_hex

    again = protect(path, {"PW": PASSWORD})
    assert again.exit_code == 1 and "already a keystore" in again.output and path.read_bytes() == data
    missing = protect(tmp_path / "none.key", {"PW": PASSWORD})
    assert missing.exit_code == 1 and "no key file" in missing.output


def test_a_keystore_held_key_opens_a_private_version_exactly_as_the_hex_key(home, tmp_path) -> None:
    operator, settings = HolderKey.generate(), load_settings()
    store = BlockStore(settings.store_dir)
    keyrings = Keyrings(keyring_dir(settings), store)
    sealing, keyring = keyrings.for_ingest("v1", HolderKey.from_hex(operator.private_hex()))
    cid = sealing.put_bytes(b"provider-7,a private row\n", cid_version=1)
    keyrings.put(keyring)
    keystore = _keystore_file(tmp_path / "operator.keystore", operator)
    hexfile = tmp_path / "operator.hex"
    write_keyfile(hexfile, operator)
    by_keystore, by_hex = holder_key(settings, _env(keystore)), holder_key(settings, _env(hexfile))
    secrets = [[k.secret for k in keyrings.data_keys(holder)] for holder in (by_keystore, by_hex)]
    assert secrets[0] == secrets[1] and len(secrets[0]) == 1
    assert keyrings.reading_store(by_keystore).get(cid) == b"provider-7,a private row\n"
    assert keyrings.store_for("v1", by_keystore).put_bytes(b"again", cid_version=1) == (
        keyrings.store_for("v1", by_hex).put_bytes(b"again", cid_version=1)
    )

    # a pipeline step: a public version needs no password; the private one asks for it by name
    resource = StoreResource(
        store_dir=str(settings.store_dir),
        keyring_dir=str(keyring_dir(settings)),
        holder_keyfile=str(keystore),
    )
    assert resource.client("v2-public").put_bytes(b"public", cid_version=1) == store.put_bytes(
        b"public", cid_version=1
    )
    with pytest.raises(dg.Failure, match=f"set {HOLDER_KEY_PASSWORD_ENV} to its password"):
        resource.client("v1")
    # settlement reads across versions: the resource's reader opens v1 with the key in reach
    with pytest.raises(dg.Failure, match=f"set {HOLDER_KEY_PASSWORD_ENV} to its password"):
        resource.reader()
    with pytest.MonkeyPatch.context() as env:
        env.setenv(HOLDER_KEY_PASSWORD_ENV, PASSWORD)
        assert resource.reader().get(cid) == b"provider-7,a private row\n"
    plain = StoreResource(store_dir=str(settings.store_dir))  # no keyrings: the plain store
    assert plain.reader().get(cid) == store.get(cid) != b"provider-7,a private row\n"
