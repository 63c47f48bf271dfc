"""The auditor on a real anvil: a clean run verifies; one tampered byte of a stored snapshot, one
weight, one on-chain record (and a stray record) are each caught by name; trace reaches raw data."""

from __future__ import annotations

import json

import pyarrow as pa
from eth_hash.auto import keccak

from provenance.audit import trace, verify_run
from provenance.chain import Chain
from provenance.records import put_record, records_by_cid, topological_order
from provenance.runs import claim_share, publish_run
from provenance.weights import share_leaves
from serving.sample import SampleRun
from storage import BlockStore, cid_for_bytes, parse_cid


def _block_path(store: BlockStore, cid: str):
    """Where the embedded store keeps the (single) block of a small file."""
    key = parse_cid(cid).set(version=1).encode("base32") if parse_cid(cid).version == 0 else cid
    return next(p for p in (store.root / "data").rglob("*") if p.name == str(key))


def _entry_slot(cid: str) -> int:
    """Storage slot of `_entries[keccak(cid)].parent` in ProvenanceRegistry (mapping at slot 1)."""
    base = keccak(keccak(cid.encode()) + (1).to_bytes(32, "big"))
    return int.from_bytes(base, "big") + 1


def test_clean_run_verifies_and_traces_to_raw_data(
    chain: Chain, store: BlockStore, sample_run: SampleRun
) -> None:
    published = publish_run(chain, store, "run-1", sample_run.head)
    deposit = chain.deposit("run-1", 10**18)
    payee = sample_run.weights["address"][0].as_py()
    claim, amount = claim_share(chain, store, "run-1", payee)
    assert amount > 0

    report = verify_run(chain, store, "run-1")
    assert report.ok, report.failures
    assert report.records_checked == len(sample_run.records)
    # raw CSV, examples (= snapshot), annotations, consensus, labeled dataset, model, encoding,
    # example attribution, weights
    assert report.contents_checked == 9
    assert report.proofs_checked == sample_run.weights.num_rows
    assert report.stored_root == report.onchain_root

    tree = trace(chain, store, claim.tx_hash).to_json()
    assert tree["kind"] == "payout" and tree["details"]["amount"] == amount
    text = json.dumps(tree)
    for cid in [sample_run.raw_cid, *sample_run.records.values()]:
        assert cid in text
    deposit_node = trace(chain, store, deposit.tx_hash)
    assert (deposit_node.kind, deposit_node.details["amount"]) == ("deposit", 10**18)
    root_node = trace(chain, store, published.transactions[-1].tx_hash)
    assert root_node.kind == "root" and root_node.details["root"] == published.root
    record_node = trace(chain, store, published.transactions[0].tx_hash)
    assert record_node.kind == "tx" and record_node.children[0].kind == "record"
    run_node = trace(chain, store, "run-1")
    assert run_node.children[0].id == sample_run.head
    data_node = trace(chain, store, sample_run.snapshot_cid)
    assert data_node.details["produced_by"] == sample_run.records["ingest"]


def test_one_byte_of_a_stored_snapshot_is_caught(
    chain: Chain, store: BlockStore, sample_run: SampleRun
) -> None:
    publish_run(chain, store, "run-1", sample_run.head)
    block = _block_path(store, sample_run.snapshot_cid)
    data = bytearray(block.read_bytes())
    data[len(data) // 2] ^= 0x01
    block.write_bytes(bytes(data))
    report = verify_run(chain, store, "run-1")
    assert [(f.name, f.subject) for f in report.failures] == [("content_corrupt", sample_run.snapshot_cid)]


def test_one_weight_is_caught(chain: Chain, store: BlockStore, sample_run: SampleRun) -> None:
    """The root on chain was made from weights with one basis point moved between two payees."""
    bps = sample_run.weights["weight_bps"].to_pylist()
    bps[0], bps[1] = bps[0] - 1, bps[1] + 1
    forged = sample_run.weights.set_column(4, "weight_bps", pa.array(bps))
    lineage = records_by_cid(store, sample_run.records.values())
    for cid in topological_order(lineage):
        chain.record(cid, lineage[cid].parents[0] if lineage[cid].parents else "", "run-1")
    chain.create_distribution("run-1", share_leaves(forged).root)
    report = verify_run(chain, store, "run-1")
    assert "root_mismatch" in report.names()
    assert {f.name for f in report.failures} == {"root_mismatch", "proof_invalid"}
    assert {f.subject for f in report.failures if f.name == "proof_invalid"} == set(sample_run.keys)


def test_a_rewritten_stored_weights_file_is_caught(
    chain: Chain, store: BlockStore, sample_run: SampleRun
) -> None:
    publish_run(chain, store, "run-1", sample_run.head)
    block = _block_path(store, sample_run.weights_cid)
    data = bytearray(block.read_bytes())
    data[-40] ^= 0x01
    block.write_bytes(bytes(data))
    names = verify_run(chain, store, "run-1").names()
    assert {"content_corrupt", "weights_unreadable"} <= names


def test_one_onchain_record_is_caught(chain: Chain, store: BlockStore, sample_run: SampleRun) -> None:
    publish_run(chain, store, "run-1", sample_run.head)
    target = sample_run.records["training"]
    forged_parent = (
        "0x" + keccak(sample_run.records["snapshot"].encode()).hex()
    )  # the real but non-primary parent
    chain.w3.provider.make_request(
        "anvil_setStorageAt", [chain.registry.address, hex(_entry_slot(target)), forged_parent]
    )
    report = verify_run(chain, store, "run-1")
    assert [(f.name, f.subject) for f in report.failures] == [("onchain_record_mismatch", target)]


def test_stray_and_missing_records_are_caught(chain: Chain, store: BlockStore, sample_run: SampleRun) -> None:
    publish_run(chain, store, "run-1", sample_run.head)
    lineage = records_by_cid(store, sample_run.records.values())
    stray = put_record(
        store,
        lineage[sample_run.records["ingest"]].__class__(
            **{**lineage[sample_run.records["ingest"]].__dict__, "agent": "intruder"}
        ),
    )
    chain.record(stray, "", "run-1")
    chain.record(cid_for_bytes(b"not stored anywhere"), "", "run-1")
    names = {(f.name, f.subject) for f in verify_run(chain, store, "run-1").failures}
    assert ("stray_record", stray) in names
    assert ("record_missing", cid_for_bytes(b"not stored anywhere")) in names


def test_unknown_run_is_named(chain: Chain, store: BlockStore) -> None:
    assert verify_run(chain, store, "never").names() == {"run_not_found"}
