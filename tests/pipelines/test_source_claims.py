"""A provider claims its files on chain (`caravan claim`, from its own key) before handing them over;
`caravan ingest` dates each claimed file by its claim and refuses a file someone else claimed; a
claimed file ranks before any file the operator dated, so its copies are credited to it; a table of
image paths is dated by claims that cover its images too."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eth_account import Account
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.datasets import example_id, registration_times, to_examples
from provenance.chain import Chain
from storage import cid_for_file
from tests.pipelines.test_payloads import draw
from tests.services.anvil import AnvilService

T0, T1 = "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z"
TABLE_ARGS = ["--kind", "table", "--field", "row", "--choices", "x,y"]


def _rows(provider: str, values: list[float]) -> pa.Table:
    return pa.table({"f": values, "provider": [provider] * len(values)})


@pytest.fixture
def home(tmp_path, monkeypatch, anvil: AnvilService):
    """A Caravan home whose chain dir holds a deployment on the real anvil (so ingest honours claims),
    and two providers' files; the clinic's address is anvil's dev account 1."""
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    monkeypatch.delenv("CARAVAN_STORE_DIR", raising=False)
    monkeypatch.delenv("CARAVAN_CHAIN_DIR", raising=False)
    monkeypatch.setenv("CARAVAN_RPC_URL", anvil.rpc_url)
    admin = Account.from_key(anvil.dev_keys[0])
    chain = Chain(anvil.rpc_url, account=admin, chain_dir=tmp_path / "home" / "chain")
    chain.deploy()
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(_rows("clinic", [1.0, 2.0, 3.0]), data / "clinic.parquet")
    pq.write_table(_rows("lab", [4.0, 5.0]), data / "lab.parquet")
    clinic, lab = Account.from_key(anvil.dev_keys[1]).address, Account.from_key(anvil.dev_keys[2]).address
    (tmp_path / "home" / "contributors.yaml").write_text(f'clinic: "{clinic}"\nlab: "{lab}"\n')
    keys = {"clinic": anvil.dev_keys[1], "other": anvil.dev_keys[3], "operator": anvil.dev_keys[0]}
    return data, chain, keys


def _invoke(monkeypatch, key: str | None, *args: str):
    if key is None:
        monkeypatch.delenv("CARAVAN_PRIVATE_KEY", raising=False)
    else:
        monkeypatch.setenv("CARAVAN_PRIVATE_KEY", key)
    return CliRunner().invoke(app, list(args))


def _entry(tmp_path, version: str) -> dict:
    return json.loads((tmp_path / "home" / "datasets" / f"{version}.json").read_text())


def test_ingest_dates_a_claimed_file_by_its_claim(home, tmp_path, monkeypatch) -> None:
    data, chain, keys = home
    claimed = _invoke(monkeypatch, keys["clinic"], "claim", str(data / "clinic.parquet"))
    assert claimed.exit_code == 0, claimed.output
    out = json.loads(claimed.stdout)
    clinic = Account.from_key(keys["clinic"]).address
    [file] = out["files"]
    assert out["claimant"] == clinic and file["name"] == "clinic.parquet" and len(out["txs"]) == 1
    assert file["claimed_at"] <= _utc_now(chain)

    ok = _invoke(monkeypatch, None, "ingest", str(data), "--version", "v1", *TABLE_ARGS)
    assert ok.exit_code == 0, ok.output
    sources = {f["name"]: f for f in _entry(tmp_path, "v1")["sources"]}
    assert sources["clinic.parquet"]["claimed_by"] == clinic
    assert sources["clinic.parquet"]["registered_at"] == file["claimed_at"]
    assert "claimed_by" not in sources["lab.parquet"]  # not claimed: dated by the operator's clock
    assert sources["lab.parquet"]["registered_at"] >= file["claimed_at"]
    # the ingest record carries the claim, and the claimed file's rows win their copies (none here)
    record = _ingested("v1")
    files = {f["name"]: f for f in record.params["source_files"]}
    assert files["clinic.parquet"]["claimed_by"] == clinic and "claimed_by" not in files["lab.parquet"]
    # the same files where the chain holds no claim of them (a reset chain; here unread): not v1 again
    reset = _invoke(monkeypatch, None, "ingest", str(data), "--version", "v1", "--no-claims", *TABLE_ARGS)
    assert reset.exit_code == 1 and "the same files, but the chain's claims of them" in reset.stderr
    # without --claims the chain is not read and the file is dated by the operator: a new version
    plain = _invoke(monkeypatch, None, "ingest", str(data), "--version", "v2", "--no-claims", *TABLE_ARGS)
    assert plain.exit_code == 0 and "claimed_by" not in json.dumps(_entry(tmp_path, "v2"))


def test_an_operator_with_a_key_dates_each_registration_on_chain(home, tmp_path, monkeypatch) -> None:
    """Ingest with the operator's key dates every file's registration on chain: a file no claim dates
    takes that time and `dated_by` (not this machine's clock), and keeps it when registered again."""
    from provenance.claims import claim_time, registration_times

    data, chain, keys = home
    assert _invoke(monkeypatch, keys["clinic"], "claim", str(data / "clinic.parquet")).exit_code == 0
    _next_second(chain)
    ok = _invoke(monkeypatch, keys["operator"], "ingest", str(data), "--version", "v1", *TABLE_ARGS)
    assert ok.exit_code == 0, ok.output
    operator = Account.from_key(keys["operator"]).address
    sources = {f["name"]: f for f in _entry(tmp_path, "v1")["sources"]}
    assert sources["clinic.parquet"]["claimed_by"] == Account.from_key(keys["clinic"]).address
    assert "dated_by" not in sources["clinic.parquet"]  # its provider's claim dates it
    lab = sources["lab.parquet"]
    [registered] = registration_times(chain, [(lab["cid"], "lab", operator)])
    assert lab["dated_by"] == operator and lab["registered_at"] == claim_time(registered)
    recorded = {f["name"]: f for f in _ingested("v1").params["source_files"]}
    assert recorded["lab.parquet"]["dated_by"] == operator

    _next_second(chain)  # the same files again, later: the chain's first registration stands
    v2 = _invoke(monkeypatch, keys["operator"], "ingest", str(data), "--version", "v2", *TABLE_ARGS)
    assert v2.exit_code == 0, v2.output
    again = {f["name"]: f for f in _entry(tmp_path, "v2")["sources"]}
    assert again["lab.parquet"]["registered_at"] == lab["registered_at"]


@pytest.mark.parametrize("side", ["--public", "--private"])
def test_ingest_refuses_a_file_someone_else_claimed(home, tmp_path, monkeypatch, side) -> None:
    """A private version's files are sealed and named by their ciphertext: they are looked up by the
    plaintext CID their providers claim, and refused alike."""
    data, _, keys = home
    assert _invoke(monkeypatch, keys["other"], "claim", str(data / "lab.parquet")).exit_code == 0
    if side == "--private":
        assert _invoke(monkeypatch, None, "access", "keygen").exit_code == 0  # the operator's holder key
    refused = _invoke(monkeypatch, None, "ingest", str(data), "--version", "v1", side, *TABLE_ARGS)
    other = Account.from_key(keys["other"]).address
    assert refused.exit_code == 1, refused.output
    assert "lab.parquet" in refused.stderr and other in refused.stderr and "'lab'" in refused.stderr
    assert not (tmp_path / "home" / "datasets" / "v1.json").exists()  # nothing registered
    assert _invoke(monkeypatch, keys["clinic"], "claim", str(data / "clinic.parquet")).exit_code == 0
    (data / "lab.parquet").unlink()  # the clinic's file alone: dated by its provider's claim
    ok = _invoke(monkeypatch, None, "ingest", str(data), "--version", "v2", side, *TABLE_ARGS)
    assert ok.exit_code == 0, ok.output
    [clinic] = _entry(tmp_path, "v2")["sources"]
    assert clinic["claimed_by"] == Account.from_key(keys["clinic"]).address
    assert (clinic["cid"] == cid_for_file(data / "clinic.parquet", cid_version=1)) == (side == "--public")


@pytest.mark.parametrize("side", ["--public", "--private"])
def test_a_table_of_image_paths_is_dated_by_claims_that_cover_its_images(
    home, tmp_path, monkeypatch, side
) -> None:
    """A table's bytes hold its images' paths, not the images: claimed alone, it dates nothing (images
    could be put behind its paths later); `caravan claim --image-field` claims them with it, and ingest
    dates it by the latest of those claims; an image someone else claimed first is refused, by name. A
    private version's table and images are looked up by the plaintext CIDs their provider claimed."""
    _, chain, keys = home
    folder = tmp_path / "scans"
    (folder / "img").mkdir(parents=True)
    for i in range(4):
        (folder / "img" / f"{i}.png").write_bytes(draw(i))

    def table(*images: int) -> None:  # each table a new file: a file registered before keeps its time
        paths = [f"img/{i}.png" for i in images]
        rows = pa.table({"image": paths, "provider": ["clinic"] * len(paths)})
        pq.write_table(rows, folder / "clinic.parquet")

    def ingest(version: str):
        _next_second(chain)
        return _invoke(monkeypatch, None, "ingest", str(folder), "--version", version, side,
                       "--kind", "image", "--field", "image", "--choices", "x,y")

    table(0, 1)
    if side == "--private":
        assert _invoke(monkeypatch, None, "access", "keygen").exit_code == 0
    typo = _invoke(monkeypatch, keys["clinic"], "claim", str(folder), "--image-field", "picture")
    assert typo.exit_code == 1 and "name no image file by path in a column 'picture'" in typo.stderr
    both = _invoke(monkeypatch, keys["clinic"], "claim", str(folder), "--image-field", "image")
    assert both.exit_code == 0, both.output
    out = json.loads(both.stdout)
    [file] = out["files"]
    assert [i["name"] for i in file["images"]] == ["img/0.png", "img/1.png"] and len(out["txs"]) == 1
    assert ingest("v1").exit_code == 0
    [entry] = _entry(tmp_path, "v1")["sources"]
    assert entry["claimed_by"] == Account.from_key(keys["clinic"]).address
    assert entry["registered_at"] == max(i["claimed_at"] for i in [file, *file["images"]])

    table(2)  # a table claimed alone: its image is not, so ingest dates it by the operator's clock
    alone = _invoke(monkeypatch, keys["clinic"], "claim", str(folder))
    assert alone.exit_code == 0 and "images" not in alone.stdout, alone.output
    ok = ingest("v2")
    assert ok.exit_code == 0, ok.output
    [entry] = _entry(tmp_path, "v2")["sources"]
    assert "claimed_by" not in entry and [r["name"] for r in entry["refs"]] == ["img/2.png"]

    table(0, 3)  # an image someone else claimed first
    assert _invoke(monkeypatch, keys["other"], "claim", str(folder / "img" / "3.png")).exit_code == 0
    _next_second(chain)  # else both claims may land in one second, and share being first
    assert _invoke(monkeypatch, keys["clinic"], "claim", str(folder), "--image-field", "image").exit_code == 0
    refused = ingest("v3")
    other = Account.from_key(keys["other"]).address
    assert refused.exit_code == 1 and f"its image 'img/3.png' claimed first by {other}" in refused.stderr
    assert not (tmp_path / "home" / "datasets" / "v3.json").exists()


def _next_second(chain: Chain) -> None:
    """Wait until the clock is past the latest block's second: the next block is dated later, and a
    registration now comes after every claim made so far."""
    time.sleep(max(0.0, chain.w3.eth.get_block("latest")["timestamp"] + 1 - time.time()))


def test_claim_names_a_missing_file_and_needs_a_key(home, tmp_path, monkeypatch) -> None:
    data, _, keys = home
    missing = _invoke(monkeypatch, keys["clinic"], "claim", str(data / "nope.parquet"))
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    keyless = _invoke(monkeypatch, None, "claim", str(data / "clinic.parquet"))
    assert keyless.exit_code == 1 and "CARAVAN_PRIVATE_KEY" in keyless.stderr, keyless.output


def test_a_claimed_file_ranks_before_every_file_the_operator_dated() -> None:
    rows = pa.concat_tables([
        _rows("reseller", [1.0, 2.0]).append_column("source", pa.array(["r", "r"])),
        _rows("clinic", [1.0, 9.0]).append_column("source", pa.array(["c", "c"])),
    ])
    dated = [{"cid": "r", "provider": "reseller", "registered_at": T0},  # earlier, by the operator's word
             {"cid": "c", "provider": "clinic", "registered_at": T1, "claimed_by": "0x" + "1" * 40}]
    examples, _ = to_examples(rows, registration_times(dated))
    owner = dict(zip(examples["example_id"].to_pylist(), examples["provider"].to_pylist(), strict=True))
    assert owner[example_id({"f": 1.0})] == "clinic"
    unclaimed = [{**f, "claimed_by": None} for f in dated]
    examples, _ = to_examples(rows, registration_times(unclaimed))
    owner = dict(zip(examples["example_id"].to_pylist(), examples["provider"].to_pylist(), strict=True))
    assert owner[example_id({"f": 1.0})] == "reseller"


def _ingested(version: str):
    """The ingest record of `version`, materialized in this home (the raw_dataset asset)."""
    import dagster as dg

    from pipelines.assets import ingest
    from pipelines.resources import resources_for
    from pipelines.settings import load_settings
    from provenance import INGEST, load_record

    resources = resources_for(load_settings())
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("dataset_version", [version])
        result = dg.materialize([ingest.raw_dataset], partition_key=version, instance=instance,
                                resources=resources)
    assert result.success
    store = resources["store"].client()
    return load_record(store, resources["lineage"].cid_of(INGEST, version))


def _utc_now(chain: Chain) -> str:
    from provenance import claim_time

    return claim_time(chain.w3.eth.get_block("latest")["timestamp"])



def test_ingest_names_no_claims_when_the_chain_it_deployed_to_is_down(home, tmp_path, monkeypatch) -> None:
    from provenance.anvil import free_port

    data, _, _ = home
    monkeypatch.setenv("CARAVAN_RPC_URL", f"http://127.0.0.1:{free_port()}")
    down = _invoke(monkeypatch, None, "ingest", str(data), "--version", "v1", *TABLE_ARGS)
    assert down.exit_code == 1 and "--no-claims" in down.stderr and "did not answer" in down.stderr
    assert not (tmp_path / "home" / "datasets" / "v1.json").exists()
