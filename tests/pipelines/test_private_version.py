"""A private dataset version through the whole pipeline, against the real Label Studio and anvil:
only ciphertext is pinned, reruns give the same CIDs, verify with and without a key, an auditor
granted access verifies, a revoked one cannot read what is stored after the revocation."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from pipelines.assets.ingest import dataset_snapshot, raw_dataset
from pipelines.cli import app
from pipelines.demo import run_demo
from pipelines.demo_data import VERSION
from pipelines.privacy import HOLDER_KEY_ENV, Keyrings, keyring_dir
from pipelines.resources import resources_for
from pipelines.settings import load_settings
from provenance import CodeVersion
from storage import BlockStore, DecryptionError, EncryptedStore, HolderKey, is_sealed, read_parquet

CODE = CodeVersion("caravan", "0.1.0", "cd" * 20, False)  # a clean checkout, so the run can be replayed


def _blocks(store: BlockStore) -> list[bytes]:
    return [p.read_bytes() for p in (store.root / "data").rglob("*") if p.is_file()]


def _snapshot(settings) -> tuple[bool, str | None, str]:
    """Materialize ingest again (raw rows and snapshot): success, the snapshot's CID, the first error."""
    result = dg.materialize(
        [raw_dataset, dataset_snapshot],
        instance=dg.DagsterInstance.get(),
        partition_key=VERSION,
        resources=resources_for(settings),
        raise_on_error=False,
    )
    if not result.success:
        errors = [e.step_failure_data.error for e in result.all_events if e.is_step_failure]
        return False, None, errors[0].message if errors else ""
    return True, result.output_for_node("dataset_snapshot")["cid"], ""


def _verify(run_id: str, key: HolderKey | None, *extra: str):
    env = {HOLDER_KEY_ENV: key.private_hex() if key else ""}
    return CliRunner().invoke(app, ["verify", run_id, "--local-proofs", *extra], env=env)


@pytest.fixture
def private_run(caravan_env, monkeypatch):
    operator = HolderKey.generate()
    monkeypatch.setenv(HOLDER_KEY_ENV, operator.private_hex())
    monkeypatch.setattr("pipelines.lineage.pipeline_code", lambda: CODE)
    summary = run_demo(caravan_env, limit=120, start_services=False, say=lambda _: None, private=True)
    return caravan_env, operator, summary


def test_a_private_version_end_to_end(private_run, tmp_path, monkeypatch):
    settings, operator, summary = private_run
    assert summary["verify_ok"], summary["failures"]
    assert summary["predictions"] == 5 and summary["epoch_verify_ok"]  # the serving process opened the model
    run_id, store = summary["run_id"], BlockStore(settings.store_dir)
    catalog = json.loads((settings.catalog_dir / f"{VERSION}.json").read_text())
    assert catalog["private"] is True
    # each provider claimed its plaintext file on chain: the sealed files are dated by those claims
    files = len(catalog["sources"])
    assert files > 1 and all(f.get("claimed_by") for f in catalog["sources"])
    assert summary["sources_claimed"] == f"{files} of {files}"  # the demo's operator verifies with its key
    assert summary["answers_as_in_label_studio"] == "360 of 360"
    assert summary["answers_claimed"] == "360 of 360"  # each labeler's claims hold the sealed answers

    # pinned blocks, fetched without the key, hold no plaintext: no source bytes, no example id
    keys = Keyrings(keyring_dir(settings), store).get(VERSION).data_keys(operator)
    opened = EncryptedStore(store, keys)
    sources = [opened.get(f["cid"]) for f in catalog["sources"]]
    assert all(is_sealed(store.get(f["cid"])) for f in catalog["sources"])
    snapshot_cid = json.loads(opened.get(_pointer_cid(settings, "dataset_snapshot")))["cid"]
    assert is_sealed(store.get(snapshot_cid))
    examples = read_parquet(opened.get(_pointer_cid(settings, "raw_dataset")))
    ids = [e.encode() for e in examples["example_id"].to_pylist()[:20]]
    needles = [*ids, *(s[len(s) // 2 : len(s) // 2 + 48] for s in sources)]
    blocks = _blocks(store)
    assert all(any(n in s for s in sources) or n in ids for n in needles)  # the needles are real plaintext
    assert not [n for n in needles if any(n in b for b in blocks)]

    # verify without a key: every structural check passes, each private value is SKIP (no key), not passed
    bare = _verify(run_id, None, "--replay", "--label-studio")
    assert bare.exit_code == 0, bare.output
    skips = [line for line in bare.output.splitlines() if line.startswith("SKIP (no key)")]
    assert len(skips) > 4 and "0 private opened" in bare.output
    assert any(line.startswith(f"SKIP (no key) {run_id}: replay") for line in skips)
    assert any(line.startswith(f"SKIP (no key) {run_id}: label studio") for line in skips)
    assert f"0 of 0 source files dated by their provider's claim on chain ({files} private source files " \
           "not held to their claims: no key)" in bare.output
    assert "the run's answers are private: not held to their labelers' claims (no key)" in bare.output
    # with the operator's key: every private value opened, and the replay re-derives scores and root
    monkeypatch.setattr("pipelines.replay.run.pipeline_code", lambda: CODE)
    keyed = _verify(run_id, operator, "--replay", "--label-studio")
    assert keyed.exit_code == 0, keyed.output
    assert "SKIP" not in keyed.output and "replayed in" in keyed.output
    assert f"{len(skips) - 2} private opened" in keyed.output
    assert "; 360 answers as Label Studio project " in keyed.output  # the sealed answers, opened
    assert f"{files} of {files} source files dated by their provider's claim on chain;" in keyed.output
    assert "; 360 answers held to their 4 labelers' claims" in keyed.output

    # the same input twice gives the same CIDs
    ok, again, _ = _snapshot(settings)
    assert ok and again == snapshot_cid

    # a wrong key: one clear error, nothing changed
    pins, pointers = store.pins(), _pointers(settings)
    monkeypatch.setenv(HOLDER_KEY_ENV, HolderKey.generate().private_hex())
    ok, _, error = _snapshot(settings)
    assert not ok and f"not granted access to dataset version '{VERSION}'" in error
    monkeypatch.delenv(HOLDER_KEY_ENV)
    ok, _, error = _snapshot(settings)
    assert not ok and f"dataset version '{VERSION}' is private" in error
    assert store.pins() == pins and _pointers(settings) == pointers

    # an auditor granted access verifies with its own key
    runner, auditor_file = CliRunner(), tmp_path / "auditor.key"
    made = runner.invoke(app, ["access", "keygen", "--out", str(auditor_file)])
    assert made.exit_code == 0, made.output
    auditor_public = json.loads(made.stdout)["public_key"]
    assert oct(auditor_file.stat().st_mode & 0o777) == "0o600"
    auditor = HolderKey.from_hex(auditor_file.read_text())
    operator_env = {HOLDER_KEY_ENV: operator.private_hex()}
    granted = runner.invoke(app, ["access", "grant", VERSION, "auditor", auditor_public], env=operator_env)
    assert granted.exit_code == 0, granted.output
    audited = _verify(run_id, auditor)
    assert audited.exit_code == 0 and "SKIP" not in audited.output, audited.output

    # revoked: what is stored after the revocation does not open with the auditor's keys
    auditor_keys = Keyrings(keyring_dir(settings), store).get(VERSION).data_keys(auditor)
    revoked = runner.invoke(app, ["access", "revoke", VERSION, "auditor"], env=operator_env)
    assert revoked.exit_code == 0, revoked.output
    monkeypatch.setenv(HOLDER_KEY_ENV, operator.private_hex())
    ok, after, _ = _snapshot(settings)
    assert ok and after != snapshot_cid  # re-derived under the new data key
    with pytest.raises(DecryptionError, match="none of the keys"):
        EncryptedStore(store, auditor_keys).get(after)
    assert read_parquet(EncryptedStore(store, _operator_keys(settings, operator)).get(after)).num_rows == 120
    still = runner.invoke(app, ["access", "show", VERSION])
    assert "auditor" not in json.loads(still.stdout)["holders"]


def _operator_keys(settings, operator: HolderKey):
    return Keyrings(keyring_dir(settings), BlockStore(settings.store_dir)).get(VERSION).data_keys(operator)


def _pointer_cid(settings, asset: str) -> str:
    return json.loads((Path(settings.pointer_dir) / asset / f"{VERSION}.json").read_text())["cid"]


def _pointers(settings) -> dict[str, str]:
    return {str(p): p.read_text() for p in Path(settings.pointer_dir).rglob("*.json")}


def test_ingest_private_needs_a_holder_key_and_a_version_cannot_change_sides(tmp_path, monkeypatch):
    from pipelines.demo_data import write_digits

    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.delenv(HOLDER_KEY_ENV, raising=False)
    folder = write_digits(tmp_path / "data", limit=30)
    args = ["ingest", str(folder), "--version", "v1", "--kind", "image", "--field", "image",
            "--choices", ",".join(str(d) for d in range(10))]
    runner = CliRunner()
    refused = runner.invoke(app, [*args, "--private"])
    assert refused.exit_code == 1 and "needs a holder key" in refused.output
    settings = load_settings()
    assert not (settings.catalog_dir / "v1.json").exists() and not keyring_dir(settings).exists()

    assert runner.invoke(app, ["access", "keygen"]).exit_code == 0  # the default key file
    private = runner.invoke(app, [*args, "--private"])
    assert private.exit_code == 0, private.output
    assert runner.invoke(app, [*args, "--private"]).exit_code == 0  # the same content again: a no-op
    public = runner.invoke(app, [*args, "--public"])
    assert public.exit_code == 1 and "registered as private" in public.output
    # prod publishes its pins: private by default, so it is refused before anything is stored unless a
    # holder key is in reach (no Kubo node answers here; none is contacted)
    monkeypatch.setenv("CARAVAN_DEPLOYMENT", "prod")
    monkeypatch.setenv("CARAVAN_HOLDER_KEYFILE", str(tmp_path / "absent.key"))
    prod = runner.invoke(app, [*args[:3], "v2", *args[4:]])
    assert prod.exit_code == 1 and "the private version 'v2' needs a holder key" in prod.output
    assert not (settings.catalog_dir / "v2.json").exists()
    keyfile = settings.home / "keys" / "holder.key"  # the default key file keygen wrote
    keyfile.chmod(0o644)
    monkeypatch.delenv("CARAVAN_HOLDER_KEYFILE")
    exposed = runner.invoke(app, [*args[:3], "v3", *args[4:]])
    assert exposed.exit_code == 1 and "readable by others" in exposed.output
