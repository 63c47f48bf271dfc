"""Answer claims on a real anvil: the seal (against web3's own packed keccak), the rule a run's answers
are held to (`answer_problems`), and `publish_run` refusing, `verify_run` failing, a run that edits,
invents or drops a claiming labeler's answer."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest
from eth_account import Account
from eth_hash.auto import keccak
from web3 import Web3

from provenance.activities import CONSENSUS, LABELING_EXPORT, WEIGHTING
from provenance.answer_claims import (
    answer_bucket,
    answer_problems,
    answer_seal,
    claim_answers,
    date_export,
    export_seal,
    export_time,
)
from provenance.anvil import funded
from provenance.audit import verify_run
from provenance.chain import Chain
from provenance.claims import claim_time, claimed_seals
from provenance.errors import ChainError, ClaimConflict
from provenance.records import load_record, put_record, topological_order
from provenance.runs import publish_run
from serving.sample import SampleRun
from storage import BlockStore, read_parquet, snapshot_parquet

E1, E2 = "a" * 64, "b" * 64


def test_the_seal_is_the_packed_keccak_of_domain_example_label_and_labeler() -> None:
    who = Account.create().address
    expected = Web3.solidity_keccak(["bytes", "bytes32", "bytes32", "address"],
                                    [b"caravan/answer/", keccak(E1.encode()), keccak(b"cat"), who])
    assert answer_seal(E1, "cat", who) == bytes(expected)
    assert len({answer_seal(E1, "cat", who), answer_seal(E1, "dog", who), answer_seal(E2, "cat", who),
                answer_seal(E1, "cat", Account.create().address)}) == 4
    bucket = Web3.solidity_keccak(["bytes", "string"], [b"caravan/answer-bucket/", E1])[:2]
    assert answer_bucket(E1) == int.from_bytes(bucket, "big") < 2**16


def _claims(address: str, answers: dict[tuple[str, str], int]) -> dict:
    out: dict = {address: {}}
    for (e, label), when in answers.items():
        out[address].setdefault(answer_bucket(e), {})[answer_seal(e, label, address)] = when
    return out


def test_answers_are_held_to_the_claims_of_their_labeler() -> None:
    """Pure: a claiming labeler's recorded answers must be ones it claimed, and each example it claimed an
    answer on by the export must hold one of its; a labeler who claimed nothing is held to nothing."""
    ann, other = Account.create().address, Account.create().address
    paid = {"ann": ann, "bob": other}
    t = 1_780_000_000
    exported = claim_time(t + 100)
    claims = _claims(ann, {(E1, "cat"): t, (E2, "dog"): t})
    answers = [{"example_id": E1, "annotator": "ann", "label": "cat"},
               {"example_id": E2, "annotator": "ann", "label": "dog"},
               {"example_id": E1, "annotator": "bob", "label": "dog"}]  # bob claimed nothing
    check = answer_problems(answers, paid, claims, [E1, E2], ["cat", "dog"], exported)
    assert (check.problems, check.labelers, check.answers) == ([], 1, 2)

    edited = [{**answers[0], "label": "dog"}, *answers[1:]]
    [(who, why)] = answer_problems(edited, paid, claims, [E1, E2], ["cat", "dog"], exported).problems
    assert who == "ann" and f"1 of its 2 answers in the run are not ones {ann} claimed (example {E1} " \
        "recorded as 'dog', claimed as cat)" in why
    e3 = "c" * 64
    invented = [*answers, {"example_id": e3, "annotator": "ann", "label": "cat"}]
    [(_, why)] = answer_problems(invented, paid, claims, [E1, E2, e3], ["cat", "dog"], exported).problems
    assert f"example {e3} recorded as 'cat', claimed as nothing" in why
    assert answer_problems(edited, paid, claims, [E1, E2], ["cat", "dog"], exported).dropped == []
    dropped = answers[1:]
    left_out = answer_problems(dropped, paid, claims, [E1, E2], ["cat", "dog"], exported)
    [(_, why)] = left_out.problems
    assert f"{ann} claimed answers on 1 example before" in why and f"none of its answers there ({E1})" in why
    assert left_out.dropped == ["ann"]
    # a claim made after the export may answer after it: no example is held to it
    assert answer_problems(dropped, paid, claims, [E1, E2], ["cat", "dog"], claim_time(t - 1)).problems == []
    # bob's claims are of another dataset's examples only: his answers here are not held to them
    elsewhere = {**claims, **_claims(other, {("d" * 64, "cat"): t})}
    check = answer_problems(answers, paid, elsewhere, [E1, E2], ["cat", "dog"], exported)
    assert (check.problems, check.labelers) == ([], 1)
    # an answer changed and claimed again: either claimed label is the labeler's
    both = {**claims[ann]}
    both.setdefault(answer_bucket(E1), {})[answer_seal(E1, "dog", ann)] = t + 50
    assert answer_problems(edited, paid, {ann: both}, [E1, E2], ["cat", "dog"], exported).problems == []


def _republished(store: BlockStore, sample: SampleRun, annotations: pa.Table | None = None,
                 exported_at: str | None = None, dated_by: Chain | None = None) -> str:
    """The sample run's lineage again with another annotations table (named by the labeling export,
    the consensus and the head alike) or export time; every descendant re-put: the new head's CID. With
    `dated_by`, its account dates the new export record on chain, as the pipeline's operator does."""
    old_cid = load_record(store, sample.head).inputs["annotations"]
    new_cid = old_cid if annotations is None else store.put_bytes(
        snapshot_parquet(annotations, sort_by="annotation_id"), cid_version=1, pin=True)
    old = {cid: load_record(store, cid) for cid in sample.records.values()}
    new: dict[str, str] = {}
    for cid in topological_order(old):
        record = old[cid]
        changes: dict = {"parents": tuple(new[p] for p in record.parents)}
        if record.activity == LABELING_EXPORT:
            changes["outputs"] = {**record.outputs, "annotations": new_cid}
            changes["ended_at"] = exported_at or record.ended_at
        elif record.activity in (CONSENSUS, WEIGHTING):
            changes["inputs"] = {**record.inputs, "annotations": new_cid}
        new[cid] = put_record(store, dataclasses.replace(record, **changes))
        if record.activity == LABELING_EXPORT and dated_by is not None:
            date_export(dated_by, new[cid])
    return new[sample.head]


def test_publish_refuses_and_verify_fails_a_run_that_edits_or_drops_a_claimed_answer(
    chain: Chain, store: BlockStore, sample_run: SampleRun, monkeypatch: pytest.MonkeyPatch,
) -> None:
    annotations = read_parquet(store.get(load_record(store, sample_run.head).inputs["annotations"]))
    rows = annotations.to_pylist()
    labeler = sample_run.addresses["labeler-0"]
    mine = [(r["example_id"], r["label"]) for r in rows if r["annotator"] == "labeler-0"]
    ann = funded(chain, Account.from_key(sample_run.keys[labeler]))
    with pytest.raises(ChainError, match="no answers to claim"):
        claim_answers(ann, [])
    [sent] = claim_answers(ann, mine)
    assert not sent.skipped and claim_answers(ann, mine)[0].skipped  # a claim keeps its first time
    assert sum(map(len, claimed_seals(chain, [labeler])[labeler].values())) == len(set(mine))
    when = claim_time(chain.w3.eth.get_block(sent.block)["timestamp"])

    honest = _republished(store, sample_run, exported_at=when, dated_by=chain)
    publish_run(chain, store, "answers-honest", honest)
    report = verify_run(chain, store, "answers-honest")
    assert report.ok, report.failures
    assert (report.answers_checked, report.answer_labelers) == (len(mine), 1)

    i = next(k for k, r in enumerate(rows) if r["annotator"] == "labeler-0")
    edited = [*rows[:i], {**rows[i], "label": next(c for c in ("a", "b", "c") if c != rows[i]["label"])},
              *rows[i + 1:]]
    dropped = rows[:i] + rows[i + 1:]
    for name, table, why in (("edited", edited, "1 of its 60 answers in the run are not ones"),
                              ("dropped", dropped, "holds none of its answers there")):
        head = _republished(store, sample_run, pa.Table.from_pylist(table, schema=annotations.schema), when,
                            chain)
        blocks = chain.block_number()
        with pytest.raises(ClaimConflict, match="labeler-0: .*" + why):
            publish_run(chain, store, f"answers-{name}", head)
        assert chain.block_number() == blocks  # nothing sent
        with monkeypatch.context() as m:  # anchored anyway, by a publisher with other code
            m.setattr("provenance.runs.run_answer_problems", lambda *_: None)
            publish_run(chain, store, f"answers-{name}", head)
        report = verify_run(chain, store, f"answers-{name}")
        assert [(f.name, f.subject) for f in report.failures] == [("answer_claim_differs", "labeler-0")]
        assert why in report.failures[0].detail

    # a claim made after a run was anchored binds nothing of it
    other = sample_run.addresses["labeler-1"]
    claim_answers(funded(chain, Account.from_key(sample_run.keys[other])), [(rows[0]["example_id"], "zzz")])
    assert verify_run(chain, store, "answers-honest").ok


def test_the_export_is_dated_by_the_chain_not_by_its_record(
    chain: Chain, store: BlockStore, sample_run: SampleRun, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An operator who drops a claimed answer and backdates its export record's end to before the claim
    is still held to it: the dropped-answer rule reads when the publisher dated the export on chain. An
    export the publisher never dated (or that another address dated) fails instead."""
    operator = chain.address
    assert export_seal("bafyexport", operator) == bytes(Web3.solidity_keccak(
        ["bytes", "string", "address"], [b"caravan/exported/", "bafyexport", operator]))
    annotations = read_parquet(store.get(load_record(store, sample_run.head).inputs["annotations"]))
    rows = annotations.to_pylist()
    labeler = sample_run.addresses["labeler-0"]
    claim_answers(funded(chain, Account.from_key(sample_run.keys[labeler])),
                  [(r["example_id"], r["label"]) for r in rows if r["annotator"] == "labeler-0"])
    i = next(k for k, r in enumerate(rows) if r["annotator"] == "labeler-0")
    dropped = pa.Table.from_pylist(rows[:i] + rows[i + 1:], schema=annotations.schema)

    stated = load_record(store, _export_of(store, sample_run.head)).ended_at
    assert stated < claim_time(chain.w3.eth.get_block("latest")["timestamp"])  # long before the claims
    backdated = _republished(store, sample_run, dropped, stated, chain)
    with pytest.raises(ClaimConflict, match="labeler-0: .*before its answers were exported .*holds none"):
        publish_run(chain, store, "export-backdated", backdated)

    stranger = funded(chain, Account.create())
    undated = _republished(store, sample_run, dropped, stated.replace(":00Z", ":01Z"), stranger)
    export = _export_of(store, undated)
    assert export_time(chain, export, stranger.address) > 0 == export_time(chain, export, operator)
    blocks = chain.block_number()
    with pytest.raises(ClaimConflict, match=f"{export}: the labeling export record was not dated on chain "
                                            f"by the publisher {operator}"):
        publish_run(chain, store, "export-undated", undated)
    assert chain.block_number() == blocks  # nothing sent
    with monkeypatch.context() as m:  # anchored anyway, by a publisher with other code
        m.setattr("provenance.runs.run_answer_problems", lambda *_: None)
        publish_run(chain, store, "export-undated", undated)
    report = verify_run(chain, store, "export-undated")
    assert [(f.name, f.subject) for f in report.failures] == [("export_undated", export)]


def _export_of(store: BlockStore, head: str) -> str:
    """The CID of the labeling export record in the lineage of record `head`."""
    todo = [head]
    while todo:
        cid = todo.pop()
        record = load_record(store, cid)
        if record.activity == LABELING_EXPORT:
            return cid
        todo.extend(record.parents)
    raise AssertionError(f"no labeling export behind {head}")
