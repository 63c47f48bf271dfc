"""Source claims on a real anvil: the seal (against web3's own packed keccak), the contract's first
claim per address, the scan that finds every claimant of a file, the rule an ingest record is held
to (`claim_problems`), and `publish_run` refusing, `verify_run` failing, a run whose ingest record
ignores a claim."""

from __future__ import annotations

import dataclasses
import time

import pytest
from eth_account import Account
from web3 import Web3

from provenance.activities import INGEST, IngestRecord
from provenance.anvil import funded
from provenance.audit import TraceNode, trace, verify_run
from provenance.chain import Chain
from provenance.claims import (
    claim_problems,
    claim_sources,
    claim_time,
    date_registrations,
    file_claims,
    source_bucket,
    source_claims,
    source_seal,
    with_claimed_as,
)
from provenance.errors import ChainError, ClaimConflict, TransactionError
from provenance.records import load_record, put_record, topological_order
from provenance.runs import publish_run
from serving.sample import SampleRun
from storage import BlockStore, DataKey, EncryptedStore, cid_for_bytes
from tests.services.anvil import AnvilService

FILE_A, FILE_B = cid_for_bytes(b"clinic rows\n", cid_version=1), cid_for_bytes(b"other rows\n", cid_version=1)
IMAGE = cid_for_bytes(b"\x89PNG a scan\n", cid_version=1)


def test_the_seal_is_the_packed_keccak_of_domain_cid_and_claimant() -> None:
    who = Account.create().address
    expected = Web3.solidity_keccak(["bytes", "string", "address"], [b"caravan/source/", FILE_A, who])
    assert source_seal(FILE_A, who) == bytes(expected)
    assert source_seal(FILE_A, who) != source_seal(FILE_B, who)
    bucket = Web3.solidity_keccak(["bytes", "string"], [b"caravan/source-bucket/", FILE_A])[:2]
    assert source_bucket(FILE_A) == int.from_bytes(bucket, "big") < 2**16


def test_claims_deploy_beside_a_deployment_that_had_none(anvil: AnvilService, tmp_path) -> None:
    """A chain deployed before SourceClaims existed keeps its registry and distributor (runs anchored
    there stay verifiable): deploy adds only the claims contract."""
    import json

    from provenance.chain import CLAIMS, DISTRIBUTOR, REGISTRY

    admin = Account.from_key(anvil.dev_keys[0])
    chain = Chain(anvil.rpc_url, account=admin, chain_dir=tmp_path / "chain")
    first = chain.deploy()
    known = json.loads(chain.deployments_path.read_text())
    del known["contracts"][CLAIMS]  # as written before the contract existed
    chain.deployments_path.write_text(json.dumps(known))
    again = Chain(anvil.rpc_url, account=admin, chain_dir=tmp_path / "chain").deploy()
    assert again[REGISTRY].skipped and again[DISTRIBUTOR].skipped and not again[CLAIMS].skipped
    assert again[REGISTRY].tx_hash == first[REGISTRY].tx_hash


def test_a_chain_without_the_claims_contract_publishes_and_verifies_as_before(
    anvil: AnvilService, tmp_path, store: BlockStore, sample_run: SampleRun
) -> None:
    """A deployment made before SourceClaims existed (a real chain deploys on purpose): nothing was
    claimed there, so runs publish and verify as before, and verify says no claim held the files."""
    import json

    from provenance.chain import CLAIMS

    admin = Account.from_key(anvil.dev_keys[0])
    chain = Chain(anvil.rpc_url, account=admin, chain_dir=tmp_path / "old")
    chain.deploy()
    known = json.loads(chain.deployments_path.read_text())
    del known["contracts"][CLAIMS]
    chain.deployments_path.write_text(json.dumps(known))
    old = Chain(anvil.rpc_url, account=admin, chain_dir=tmp_path / "old")
    file = {"name": "synthetic.csv", "cid": sample_run.raw_cid, "provider": "provider-0",
            "registered_at": "2026-01-01T00:00:00Z"}
    publish_run(old, store, "old", _with_ingest_sources(store, sample_run, [file]))
    report = verify_run(old, store, "old")
    assert report.ok and not report.claims_deployed and report.sources_checked == 1


def test_a_claim_is_dated_once_and_names_its_file_only_for_its_sender(
    chain: Chain, anvil: AnvilService
) -> None:
    alice = funded(chain, Account.from_key(anvil.dev_keys[1]))
    [first] = claim_sources(alice, [FILE_A, FILE_B])
    assert not first.skipped
    when = chain.w3.eth.get_block(first.block)["timestamp"]
    mine = {alice.address: when}
    assert source_claims(chain, [FILE_A, FILE_B]) == {FILE_A: mine, FILE_B: mine}
    [again] = claim_sources(alice, [FILE_B, FILE_A])
    assert again.skipped  # claimed before: nothing sent, time kept

    # a watcher who copies alice's seal into its own claim gets a claim of no file at all
    mallory = funded(chain, Account.from_key(anvil.dev_keys[2]))
    seal, bucket = source_seal(FILE_A, alice.address), source_bucket(FILE_A)
    copied = mallory.send("copy", mallory.claims.functions.claimSources([seal], [bucket]))
    assert not copied[0].skipped
    # the same bytes claimed later by another address: both claims are on chain, each with its time
    bob = funded(chain, Account.from_key(anvil.dev_keys[3]))
    [later] = claim_sources(bob, [FILE_A])
    found = source_claims(chain, [FILE_A])[FILE_A]
    assert set(found) == {alice.address, bob.address}
    assert found[bob.address] == chain.w3.eth.get_block(later.block)["timestamp"] >= when

    # many files: a transaction per `per_tx` seals, each claim dated by its own block
    many = [cid_for_bytes(f"row {i}\n".encode(), cid_version=1) for i in range(5)]
    sent = claim_sources(bob, [*many, FILE_A], per_tx=2)
    assert len(sent) == 3 and not any(t.skipped for t in sent)  # FILE_A was bob's already
    found = source_claims(chain, many)
    times = {chain.w3.eth.get_block(t.block)["timestamp"] for t in sent}
    assert set(found) == set(many) and {c[bob.address] for c in found.values()} <= times
    assert source_claims(chain, many, before_block=sent[1].block) == {c: found[c] for c in sorted(many)[:2]}

    # a claim in another bucket than its file's is not found (it only hides its own sender's claim)
    hidden = funded(chain, Account.from_key(anvil.dev_keys[5]))
    hidden.send("hide", hidden.claims.functions.claimSources([source_seal(FILE_B, hidden.address)],
                                                               [source_bucket(FILE_B) ^ 1]))
    assert hidden.address not in source_claims(chain, [FILE_B])[FILE_B]
    with pytest.raises(TransactionError, match="BucketsMismatch"):
        alice.send("mismatch", alice.claims.functions.claimSources([seal], []))

    with pytest.raises(ChainError, match="no files to claim"):
        claim_sources(alice, [])


def test_claim_problems_hold_a_record_to_the_claims_made_before_it() -> None:
    a, b = Account.create().address, Account.create().address
    t = 1_780_000_000
    claims = {FILE_A: {a: t}}
    paid = {"clinic": a, "reseller": b}

    def item(provider: str, when: int, **extra: str) -> dict:
        return {"cid": FILE_A, "provider": provider, "registered_at": claim_time(when), **extra}

    assert claim_problems([item("clinic", t, claimed_by=a)], claims, paid) == []
    assert claim_problems([item("clinic", t - 5)], claims, paid) == []  # taken before the claim
    # the clinic's own claim dated by the operator's clock instead
    assert "operator's clock" in claim_problems([item("clinic", t + 60)], claims, paid)[0][1]
    # the clinic's file credited to a reseller: refused, before or after the claim, unless the record
    # credits the claim as well (a claim made after the record was anchored is not among `claims`)
    for when in (t - 5, t + 60):
        [(cid, why)] = claim_problems([item("reseller", when)], claims, paid)
        assert cid == FILE_A and a in why and "'reseller'" in why and b in why
    assert claim_problems([item("reseller", t + 60), item("clinic", t, claimed_by=a)], claims, paid) == []
    # the reseller claimed the clinic's file too, later: the first claimant is still the one paid
    later = {FILE_A: {a: t, b: t + 10}}
    [(_, why)] = claim_problems([item("reseller", t + 10, claimed_by=b)], later, paid)
    assert why.startswith(f"claimed first by {a}")
    both = [item("reseller", t + 10, claimed_by=b), item("clinic", t, claimed_by=a)]
    assert claim_problems(both, later, paid) == []
    # claimed at once (one block): both are first, and share it
    assert claim_problems([item("reseller", t, claimed_by=b)], {FILE_A: {a: t, b: t}}, paid) == []
    # a claim recorded at another time, or by an address the chain does not know, or paid elsewhere
    assert "the chain says" in claim_problems([item("clinic", t - 1, claimed_by=a)], claims, paid)[0][1]
    assert "never" in claim_problems([item("clinic", t, claimed_by=b)], claims, paid)[0][1]
    assert "is paid at" in claim_problems([item("clinic", t, claimed_by=a)], claims, {"clinic": b})[0][1]


def test_a_table_of_image_paths_counts_as_claimed_only_with_every_image_it_names() -> None:
    """Its bytes hold the paths, not the images: its claim is the latest of its own and its images', by
    an address that claimed them all, and each image pays its first claimant as a file of its own does."""
    a, b = Account.create().address, Account.create().address
    t = 1_780_000_000
    paid = {"clinic": a, "reseller": b}

    def table(when: int, **extra: str) -> dict:
        return {"name": "scans.csv", "cid": FILE_A, "provider": "clinic", "registered_at": claim_time(when),
                "refs": [{"name": "img/1.png", "cid": IMAGE}], **extra}

    whole = {FILE_A: {a: t}, IMAGE: {a: t + 10}}
    assert file_claims(table(t), whole) == {a: t + 10}
    assert claim_problems([table(t + 10, claimed_by=a)], whole, paid) == []
    [(cid, why)] = claim_problems([table(t, claimed_by=a)], whole, paid)  # dated by the table's claim alone
    assert cid == FILE_A and "with every image it names" in why and claim_time(t + 10) in why
    assert "operator's clock" in claim_problems([table(t + 60)], whole, paid)[0][1]
    # the table claimed alone dates nothing: registered by the operator's clock, as it should be
    alone = {FILE_A: {a: t}}
    assert file_claims(table(t), alone) == {} and claim_problems([table(t + 60)], alone, paid) == []
    assert "the chain says never" in claim_problems([table(t, claimed_by=a)], alone, paid)[0][1]
    # an image the reseller claimed first is the reseller's, unless the record credits it there too
    taken = {FILE_A: {a: t}, IMAGE: {b: t - 5, a: t}}
    [(cid, why)] = claim_problems([table(t, claimed_by=a)], taken, paid)
    assert cid == FILE_A and why.startswith(f"its image 'img/1.png' claimed first by {b}")
    image = {"name": "1.png", "cid": IMAGE, "provider": "reseller", "registered_at": claim_time(t - 5),
             "claimed_by": b}
    assert claim_problems([table(t, claimed_by=a), image], taken, paid) == []
    # a private table's members are held to the claims of their plaintexts
    sealed = {**table(t + 10, claimed_by=a), "cid": "sealed", "refs": [{"name": "img/1.png", "cid": "x"}]}
    named = with_claimed_as(sealed, [FILE_A, IMAGE])
    assert file_claims(named, whole) == {a: t + 10} and claim_problems([named], whole, paid) == []


def _walk(node: TraceNode) -> list[TraceNode]:
    return [node, *(n for child in node.children for n in _walk(child))]


def _with_ingest_sources(
    store: BlockStore, sample: SampleRun, sources: list[dict], *, inputs: bool = False
) -> str:
    """The sample run's lineage again, its ingest record naming `sources` (and, with `inputs`, reading
    them, as the ingest asset's do; every descendant re-put so the parents still hash): the new head's
    CID."""
    old = {cid: load_record(store, cid) for cid in sample.records.values()}
    new: dict[str, str] = {}
    for cid in topological_order(old):
        record = old[cid]
        changed = {}
        if record.activity == INGEST:
            changed["params"] = {**record.params, "source_files": sources}
            if inputs:
                prefix = IngestRecord.SOURCE_PREFIX
                changed["inputs"] = {f"{prefix}{i}": f["cid"] for i, f in enumerate(sources)}
        parents = tuple(new[p] for p in record.parents)
        new[cid] = put_record(store, dataclasses.replace(record, parents=parents, **changed))
    return new[sample.head]


def test_publish_refuses_and_verify_fails_a_run_whose_ingest_ignores_its_providers_claim(
    chain: Chain, anvil: AnvilService, store: BlockStore, sample_run: SampleRun,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    weights = sample_run.weights.to_pylist()
    provider = next(r for r in weights if r["role"] == "provider")
    clinic = funded(chain, Account.from_key(sample_run.keys[provider["address"]]))
    [claimed] = claim_sources(clinic, [sample_run.raw_cid])
    when = chain.w3.eth.get_block(claimed.block)["timestamp"]
    file = {"name": "synthetic.csv", "cid": sample_run.raw_cid, "provider": provider["contributor"]}

    honest = {**file, "registered_at": claim_time(when), "claimed_by": clinic.address}
    publish_run(chain, store, "claimed", _with_ingest_sources(store, sample_run, [honest]))
    report = verify_run(chain, store, "claimed")
    assert report.ok, report.failures
    assert (report.sources_claimed, report.sources_checked) == (1, 1)
    # the trace says whose each source file is, and who dated it
    [source] = [n for n in _walk(trace(chain, store, "claimed")) if n.id == sample_run.raw_cid]
    said = f"provider {provider['contributor']}, claimed by {clinic.address} at {honest['registered_at']}"
    assert f"synthetic.csv, {said}" in source.label and source.details["source"] == honest

    # a file claimed by someone else only after the run was anchored binds nothing of the run's
    later = {"name": "more.csv", "cid": FILE_B, "provider": provider["contributor"],
             "registered_at": claim_time(when)}
    publish_run(chain, store, "before", _with_ingest_sources(store, sample_run, [later]))
    claim_sources(funded(chain, Account.from_key(anvil.dev_keys[4])), [FILE_B])
    assert verify_run(chain, store, "before").ok

    # the operator dates the clinic's claimed file by its own clock: publish refuses, sending nothing
    operator_dated = {**file, "registered_at": claim_time(when + 3600)}
    head = _with_ingest_sources(store, sample_run, [operator_dated])
    sent = chain.block_number()
    with pytest.raises(ClaimConflict, match="operator's clock"):
        publish_run(chain, store, "unclaimed", head)
    assert chain.block_number() == sent
    # and a run anchored anyway (by a publisher with other code) fails verify
    monkeypatch.setattr("provenance.runs.run_claim_problems", lambda *_: ([], []))
    publish_run(chain, store, "unclaimed", head)
    report = verify_run(chain, store, "unclaimed")
    assert [(f.name, f.subject) for f in report.failures] == [("claim_differs", sample_run.raw_cid)]
    assert clinic.address in report.failures[0].detail


def test_publish_and_verify_hold_the_images_a_table_names_to_their_claims(
    chain: Chain, anvil: AnvilService, store: BlockStore, sample_run: SampleRun,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A table's images are no record's input: verify rehashes them from the store, and holds each to
    the claims made of it (one someone else claimed first fails the run, by name)."""
    weights = sample_run.weights.to_pylist()
    provider = next(r for r in weights if r["role"] == "provider")
    clinic = funded(chain, Account.from_key(sample_run.keys[provider["address"]]))
    own, taken = store.put_bytes(b"scan one\n", cid_version=1), store.put_bytes(b"scan two\n", cid_version=1)
    claim_sources(funded(chain, Account.from_key(anvil.dev_keys[4])), [taken])  # someone else's, first
    time.sleep(max(0.0, chain.w3.eth.get_block("latest")["timestamp"] + 1 - time.time()))  # a later second
    [claimed] = claim_sources(clinic, [sample_run.raw_cid, own, taken])
    when = claim_time(chain.w3.eth.get_block(claimed.block)["timestamp"])

    def table(*images: str) -> dict:
        return {"name": "scans.csv", "cid": sample_run.raw_cid, "provider": provider["contributor"],
                "registered_at": when, "claimed_by": clinic.address,
                "refs": [{"name": f"img/{i}.png", "cid": c} for i, c in enumerate(images)]}

    publish_run(chain, store, "own", _with_ingest_sources(store, sample_run, [table(own)]))
    report = verify_run(chain, store, "own")
    assert report.ok, report.failures
    assert (report.sources_claimed, report.sources_checked) == (1, 1)

    head = _with_ingest_sources(store, sample_run, [table(own, taken)])
    with pytest.raises(ClaimConflict, match="its image 'img/1.png' claimed first by"):
        publish_run(chain, store, "taken", head)
    monkeypatch.setattr("provenance.runs.run_claim_problems", lambda *_: ([], []))  # another publisher's code
    publish_run(chain, store, "taken", head)
    failed = verify_run(chain, store, "taken")
    assert [(f.name, f.subject) for f in failed.failures] == [("claim_differs", sample_run.raw_cid)]
    assert "img/1.png" in failed.failures[0].detail

    missing = cid_for_bytes(b"never stored\n", cid_version=1)
    publish_run(chain, store, "missing", _with_ingest_sources(store, sample_run, [table(own, missing)]))
    names = {(f.name, f.subject) for f in verify_run(chain, store, "missing").failures}
    assert ("content_missing", missing) in names


def test_a_private_file_is_held_to_the_claims_of_its_plaintext_where_a_key_opens_it(
    chain: Chain, store: BlockStore, sample_run: SampleRun,
) -> None:
    """A private version's file is stored sealed, named by its ciphertext, which no one claims: its
    provider claims the plaintext (as `caravan claim` names the file it holds), and publish and verify
    hold the sealed file to that claim with a key that opens it, and say they could not without one."""
    keys = [DataKey.generate()]
    plaintext = b"clinic's private rows\n"
    sealed_cid = EncryptedStore(store, keys).put_bytes(plaintext, cid_version=1)
    plaintext_cid = cid_for_bytes(plaintext, cid_version=1)
    assert sealed_cid != plaintext_cid
    weights = sample_run.weights.to_pylist()
    provider = next(r for r in weights if r["role"] == "provider")
    clinic = funded(chain, Account.from_key(sample_run.keys[provider["address"]]))
    [claimed] = claim_sources(clinic, [plaintext_cid])
    when = claim_time(chain.w3.eth.get_block(claimed.block)["timestamp"])
    file = {"name": "clinic.parquet", "cid": sealed_cid, "provider": provider["contributor"]}
    keyed = EncryptedStore(store, keys)  # the private run's publisher holds the version's keys

    claimed_file = {**file, "registered_at": when, "claimed_by": clinic.address}
    honest = _with_ingest_sources(store, sample_run, [claimed_file], inputs=True)
    publish_run(chain, keyed, "private", honest)
    opened = verify_run(chain, store, "private", keys=keys)
    assert opened.ok, opened.failures
    assert (opened.sources_claimed, opened.sources_checked, opened.sources_unopened) == (1, 1, 0)
    bare = verify_run(chain, store, "private")  # no key: passes, the file not counted as checked
    assert bare.ok and (bare.sources_claimed, bare.sources_checked, bare.sources_unopened) == (0, 0, 1)
    assert any(s.subject == sealed_cid and "nor its provider's claims" in s.detail for s in bare.skipped)

    # the operator dates the claimed plaintext's sealed file by its own clock
    later = claim_time(chain.w3.eth.get_block(claimed.block)["timestamp"] + 3600)
    operator_dated = _with_ingest_sources(store, sample_run, [{**file, "registered_at": later}], inputs=True)
    with pytest.raises(ClaimConflict, match="operator's clock"):
        publish_run(chain, keyed, "dated", operator_dated)
    publish_run(chain, store, "dated", operator_dated)  # a publisher without the keys cannot tell
    failed = verify_run(chain, store, "dated", keys=keys)
    assert [(f.name, f.subject) for f in failed.failures] == [("claim_differs", sealed_cid)]
    assert verify_run(chain, store, "dated").ok  # without a key it cannot be told either: said, not passed


def test_a_private_table_s_images_are_held_to_the_claims_of_their_plaintexts(
    chain: Chain, store: BlockStore, sample_run: SampleRun,
) -> None:
    """A private table's images are sealed too: publish and verify open each with the version's keys
    and hold it to the claims of its plaintext, as the table is; without a key neither is checked."""
    keys = [DataKey.generate()]
    sealing = EncryptedStore(store, keys)
    table, image = b"image\nimg/0.png\n", b"\x89PNG a private scan\n"
    sealed_table, sealed_image = (sealing.put_bytes(b, cid_version=1) for b in (table, image))
    plain_table, plain_image = (cid_for_bytes(b, cid_version=1) for b in (table, image))
    weights = sample_run.weights.to_pylist()
    provider = next(r for r in weights if r["role"] == "provider")
    clinic = funded(chain, Account.from_key(sample_run.keys[provider["address"]]))
    [claimed] = claim_sources(clinic, [plain_table])
    file = {"name": "scans.csv", "cid": sealed_table, "provider": provider["contributor"],
            "registered_at": claim_time(chain.w3.eth.get_block(claimed.block)["timestamp"]),
            "claimed_by": clinic.address, "refs": [{"name": "img/0.png", "cid": sealed_image}]}
    head = _with_ingest_sources(store, sample_run, [file], inputs=True)
    with pytest.raises(ClaimConflict, match="with every image it names"):  # its image was not claimed
        publish_run(chain, sealing, "private-scans", head)

    time.sleep(max(0.0, chain.w3.eth.get_block("latest")["timestamp"] + 1 - time.time()))  # a later second
    [claimed] = claim_sources(clinic, [plain_image])
    dated = {**file, "registered_at": claim_time(chain.w3.eth.get_block(claimed.block)["timestamp"])}
    head = _with_ingest_sources(store, sample_run, [dated], inputs=True)
    publish_run(chain, sealing, "private-scans", head)
    opened = verify_run(chain, store, "private-scans", keys=keys)
    assert opened.ok, opened.failures
    assert (opened.sources_claimed, opened.sources_checked, opened.sources_unopened) == (1, 1, 0)
    bare = verify_run(chain, store, "private-scans")
    assert bare.ok and (bare.sources_claimed, bare.sources_checked, bare.sources_unopened) == (0, 0, 2)


def test_the_operator_dates_a_registration_on_chain_once_and_verify_holds_the_record_to_it(
    chain: Chain, store: BlockStore, sample_run: SampleRun,
) -> None:
    """A file no provider claimed is dated by the operator's registration on chain (`dated_by`): sent
    once per (file, provider), a second registration keeps the first time, no claim is made of it, and a
    record that dates the file earlier (the operator's clock) fails verify."""
    weights = sample_run.weights.to_pylist()
    provider = next(r for r in weights if r["role"] == "provider")["contributor"]
    first = date_registrations(chain, [(FILE_B, provider)])
    time.sleep(max(0.0, chain.w3.eth.get_block("latest")["timestamp"] + 1 - time.time()))  # a later second
    again = date_registrations(chain, [(FILE_B, provider), (FILE_B, "reseller")])
    assert again[(FILE_B, provider)] == first[(FILE_B, provider)] < again[(FILE_B, "reseller")]
    assert source_claims(chain, [FILE_B]) == {}  # a registration claims nothing

    file = {"name": "more.csv", "cid": FILE_B, "provider": provider, "dated_by": chain.address,
            "registered_at": claim_time(first[(FILE_B, provider)])}
    assert store.put_bytes(b"other rows\n", cid_version=1) == FILE_B
    publish_run(chain, store, "registered", _with_ingest_sources(store, sample_run, [file], inputs=True))
    report = verify_run(chain, store, "registered")
    assert report.ok, report.failures
    assert (report.sources_checked, report.sources_claimed, report.sources_registered) == (1, 0, 1)
    [source] = [n for n in _walk(trace(chain, store, "registered")) if n.details.get("source")]
    assert f"registered by {chain.address} at {file['registered_at']}, dated on chain" in source.label

    backdated = {**file, "registered_at": claim_time(first[(FILE_B, provider)] - 3600)}
    with pytest.raises(ClaimConflict, match="the chain dates that registration"):
        publish_run(chain, store, "backdated", _with_ingest_sources(store, sample_run, [backdated]))
    stranger = {**file, "dated_by": Account.create().address}
    with pytest.raises(ClaimConflict, match="the chain dates that registration never"):
        publish_run(chain, store, "stranger", _with_ingest_sources(store, sample_run, [stranger]))
