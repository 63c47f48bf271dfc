"""Answer claims: a labeler dates its answers on chain, from its own address, so that the operator
cannot edit, invent or drop them unseen.

Why: a labeler's pay follows its answers, and those are the operator's word: Label Studio's database,
which the operator runs (`caravan verify --label-studio` holds a run to that database, no further). A
labeler who claims its answers (`caravan claim-answers`) sends, for each, a seal (`answer_seal`) to the
SourceClaims contract with a 16-bit bucket of its example (`answer_bucket`); the chain dates it. A
seal names no example or label to anyone who cannot guess both, and the same seal sent from another
address seals nothing of this one's. A run is held to them (`answer_problems`) for each labeler whose
paid address claimed an answer on one of the run's examples:

- every answer the run credits to it is one it claimed (in a block before the run's head record was
  anchored): an edited or invented answer fails, and so does one it gave but has not claimed yet (a
  labeler that claims its answers claims all it gives);
- every example it claimed an answer on by the time its answers were exported holds an answer of its
  in the run: a dropped answer fails. That time is the chain's: the operator dates each labeling
  export record on chain as it writes it (`date_export`, an `export_seal` sent from the address that
  publishes the run), not the record's own `ended_at`, which the operator writes: a backdated export
  would escape the rule for every claim made since. A run whose labelers are held and whose export
  the publisher never dated fails (`AnswerCheck.undated`).

A labeler who claims nothing is held to nothing: its answers stay the operator's word.

    claim_answers(chain, [(example_id, label)])    the labeler, with its own key: a transaction per 400
    claims = claimed_seals(chain, addresses)       {address: {bucket: {seal: unix time}}}
    date_export(chain, record_cid)                 the operator, as it writes a labeling export record
    check = answer_problems(answers, paid, claims, examples, choices, exported_at)   pure
    check = run_answer_problems(chain, lineage, weights, table_reader(store, keys))   a run's, as anchored
    check = export_answer_problems(chain, answers, examples, paid, choices, export)   an export's
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from eth_hash.auto import keccak

from provenance.activities import INGEST, LABELING_EXPORT, WEIGHTING, LabelingExportRecord, WeightingRecord
from provenance.chain import Chain, TxResult, checked_address
from provenance.claims import (
    SEALS_PER_TX,
    claim_time,
    claimed_seals,
    claims_deployed,
    send_seals,
    sending_account,
)
from provenance.errors import ChainError
from provenance.records import Record
from storage import (
    BlockNotFound,
    ContentStore,
    CorruptBlock,
    DataKey,
    DecryptionError,
    is_sealed,
    open_sealed,
    read_parquet,
)

ANSWER_DOMAIN = b"caravan/answer/"
ANSWER_BUCKET_DOMAIN = b"caravan/answer-bucket/"
EXPORT_DOMAIN = b"caravan/exported/"
SHOWN = 3  # examples named in a problem, at most


def answer_seal(example_id: str, label: str, labeler: str) -> bytes:
    """keccak256(abi.encodePacked("caravan/answer/", keccak256(example_id), keccak256(label), labeler)):
    what a claim of answering `label` on `example_id` sends. Each part hashed on its own, so no example
    id and label run into another pair's."""
    return _seal(keccak(example_id.encode()), keccak(label.encode()), _address_bytes(labeler))


def _seal(example_hash: bytes, label_hash: bytes, address: bytes) -> bytes:
    return keccak(ANSWER_DOMAIN + example_hash + label_hash + address)


def _address_bytes(address: str) -> bytes:
    return bytes.fromhex(checked_address(address)[2:])


def answer_bucket(example_id: str) -> int:
    """The first two bytes of keccak256("caravan/answer-bucket/" ‖ example_id): an auditor tests only a
    labeler's seals in an example's bucket."""
    return int.from_bytes(keccak(ANSWER_BUCKET_DOMAIN + example_id.encode())[:2], "big")


def export_seal(record_cid: str, operator: str) -> bytes:
    """keccak256(abi.encodePacked("caravan/exported/", record CID, operator)): what the operator sends to
    date a labeling export record (`date_export`). No claim of anyone's: the chain's clock says when the
    record, and so the answers it names, existed."""
    return keccak(EXPORT_DOMAIN + record_cid.encode() + _address_bytes(operator))


def date_export(chain: Chain, record_cid: str) -> int:
    """Date a labeling export record on chain from the chain's account (the operator's, which publishes
    the run): its `export_seal`, sent unless sent before; its unix time (the first)."""
    account = sending_account(chain, "dating a labeling export needs the operator's key")
    _, [known] = send_seals(chain, [(export_seal(record_cid, account), answer_bucket(record_cid))],
                            SEALS_PER_TX)
    return known or export_time(chain, record_cid, account)


def export_time(chain: Chain, record_cid: str, operator: str) -> int:
    """When `operator` dated the labeling export record `record_cid` on chain (0: never)."""
    [when] = chain.batch_call([chain.claims.functions.claimedAt(operator, export_seal(record_cid, operator))])
    return int(when)


def claim_answers(
    chain: Chain, answers: Sequence[tuple[str, str]], *, per_tx: int = SEALS_PER_TX
) -> list[TxResult]:
    """Claim these (example id, label) answers from the chain's account (the labeler's): those it has not
    claimed before, `per_tx` seals a transaction; one skipped result when none is new."""
    if not answers:
        raise ChainError("no answers to claim: give the (example_id, label) pairs you answered")
    account = sending_account(chain, "claiming answers needs the labeler's own key")
    pairs = sorted(set(answers))
    return send_seals(chain, [(answer_seal(e, c, account), answer_bucket(e)) for e, c in pairs], per_tx)[0]


@dataclass
class AnswerCheck:
    """What holding a run's answers to their labelers' claims found."""

    problems: list[tuple[str, str]] = field(default_factory=list)  # (labeler, why)
    labelers: int = 0  # labelers held to their claims
    answers: int = 0  # answers held to them
    dropped: list[str] = field(default_factory=list)  # labelers with claimed answers left out
    undated: list[tuple[str, str]] = field(default_factory=list)  # (export record CID, why): `_undated`


def answer_problems(
    answers: Sequence[Mapping],
    paid: Mapping[str, str],
    claims: Mapping[str, Mapping[int, Mapping[bytes, int]]],
    examples: Sequence[str],
    choices: Sequence[str],
    exported_at: str | None,
) -> AnswerCheck:
    """Hold `answers` (rows with `example_id`, `annotator`, `label`) to the claims of each labeler paid
    at an address (`paid`: labeler -> address) that claimed an answer on one of `examples` (`claims`,
    from `claims.claimed_seals`; `choices`, the labels it could claim). Pure. `exported_at`: when the
    answers were exported (a claim made later may answer after it); None holds no example to a claim.

    Each recorded answer's seal is looked up first; only where a labeler's claims hold seals no recorded
    answer accounts for (a dropped answer, an earlier label, another dataset's) are the examples searched
    for them, in those seals' buckets alone."""
    seals = _Seals(examples, choices)
    by_labeler: dict[str, list[Mapping]] = {}
    for a in answers:
        by_labeler.setdefault(a["annotator"], []).append(a)
    check = AnswerCheck()
    for labeler, address in sorted(paid.items()):
        if claims.get(address):
            _hold(labeler, address, by_labeler.get(labeler, []), claims[address], seals, exported_at, check)
    return check


class _Seals:
    """The seals of answers on a run's examples, their hashes and buckets computed once."""

    def __init__(self, examples: Sequence[str], choices: Sequence[str]) -> None:
        self.examples, self.labels = examples, {c: keccak(c.encode()) for c in choices}
        self._hashed: dict[str, tuple[int, bytes]] = {}  # example -> its bucket and keccak256
        self._in_bucket: dict[int, list[str]] | None = None

    def of(self, example: str, label: str, who: bytes) -> tuple[int, bytes]:
        """An answer's bucket and seal by the labeler at address bytes `who`."""
        bucket, example_hash = self._hashes(example)
        return bucket, _seal(example_hash, self.labels.get(label) or keccak(label.encode()), who)

    def _hashes(self, example: str) -> tuple[int, bytes]:
        if example not in self._hashed:
            self._hashed[example] = answer_bucket(example), keccak(example.encode())
        return self._hashed[example]

    def claimed_in(self, spare: Mapping[int, Mapping[bytes, int]], who: bytes) -> dict[str, dict[str, int]]:
        """The answers among `spare` seals (by bucket) on the run's examples: {example: {label: time}}."""
        if not spare:
            return {}  # every seal is a recorded answer's: no example need be hashed
        if self._in_bucket is None:
            self._in_bucket = {}
            for e in self.examples:
                self._in_bucket.setdefault(self._hashes(e)[0], []).append(e)
        out: dict[str, dict[str, int]] = {}
        for b, sent in spare.items():
            for e in self._in_bucket.get(b, ()):
                for c in self.labels:
                    when = sent.get(self.of(e, c, who)[1])
                    if when is not None:
                        out.setdefault(e, {})[c] = when
        return out


def _hold(
    labeler: str, address: str, mine: Sequence[Mapping], seals: Mapping[int, Mapping[bytes, int]],
    known: _Seals, exported_at: str | None, check: AnswerCheck,
) -> None:
    """`answer_problems` for one labeler with claims on chain: its recorded answers `mine`, its `seals`."""
    who = _address_bytes(address)
    matched: set[bytes] = set()
    unclaimed = []
    for a in mine:
        bucket, seal = known.of(a["example_id"], a["label"], who)
        if seal in seals.get(bucket, {}):
            matched.add(seal)
        else:
            unclaimed.append(a)
    spare = {b: rest for b, sent in seals.items()  # seals no recorded answer accounts for, by bucket
             if (rest := {s: t for s, t in sent.items() if s not in matched})}
    others = known.claimed_in(spare, who)
    if not matched and not others:
        return  # its claims are of no example of this run's: it is not held to them
    check.labelers += 1
    check.answers += len(mine)
    if unclaimed:
        shown = "; ".join(f"example {a['example_id']} recorded as {a['label']!r}, claimed as "
                          f"{', '.join(sorted(others.get(a['example_id'], {}))) or 'nothing'}"
                          for a in unclaimed[:SHOWN])
        check.problems.append((labeler, f"{len(unclaimed)} of its {len(mine)} answers in the run are not "
                                        f"ones {address} claimed ({shown}{_more(unclaimed)})"))
    answered = {a["example_id"] for a in mine}
    dropped = sorted(e for e, labels in others.items() if e not in answered and exported_at is not None
                     and claim_time(min(labels.values())) <= exported_at)
    if dropped:
        check.dropped.append(labeler)
        some = f"{len(dropped)} example" + ("s" if len(dropped) > 1 else "")
        shown = f"{', '.join(dropped[:SHOWN])}{_more(dropped)}"
        check.problems.append((labeler, f"{address} claimed answers on {some} before its answers were "
                                        f"exported ({exported_at}), but the run holds none of its "
                                        f"answers there ({shown})"))


def _more(items: Sequence) -> str:
    return f", and {len(items) - SHOWN} more" if len(items) > SHOWN else ""


def run_answer_problems(
    chain: Chain, lineage: Mapping[str, Record], weights: pa.Table | None,
    read: Callable[[str], pa.Table | None],
) -> AnswerCheck | None:
    """`answer_problems` of a run: the answers and examples its head record pays by (`read` gives a table
    by CID, None where it is sealed and no key opens it: then None, nothing checked), each labeler at
    the address `weights` pays it, held to the claims made before the head was anchored (every claim so
    far, before it is) and, for dropped answers, to those made by the end of the labeling export that
    made those answers."""
    heads = [(cid, r) for cid, r in lineage.items() if r.activity == WEIGHTING]
    if weights is None or len(heads) != 1 or not claims_deployed(chain):
        return AnswerCheck()
    head_cid, head = heads[0]
    rows = weights.select(["contributor", "address", "role"]).to_pylist()
    paid = {r["contributor"]: r["address"] for r in rows if r["role"] == "labeler"}
    annotations_cid = head.inputs.get(WeightingRecord.ANNOTATIONS)
    if not paid or annotations_cid is None:
        return AnswerCheck()
    entry = chain.entry_of(head_cid)
    claims = claimed_seals(chain, list(paid.values()), before_block=entry and entry["block"])
    if not any(claims.get(address) for address in paid.values()):  # nothing to hold them to: left unread
        return AnswerCheck()
    answers, examples = read(annotations_cid), read(head.inputs[WeightingRecord.EXAMPLES])
    if answers is None or examples is None:
        return None
    exports = sorted(cid for cid, r in lineage.items() if r.activity == LABELING_EXPORT
                     and r.outputs.get(LabelingExportRecord.ANNOTATIONS) == annotations_cid)
    publisher = entry["publisher"] if entry else sending_account(chain, "publishing needs its key")
    dated = export_time(chain, exports[0], publisher) if exports else 0
    check = _held(answers, examples, paid, claims, declared_choices(lineage.values()),
                  claim_time(dated) if dated else None)
    if exports and not dated:
        _undated(check, exports[0], publisher)
    return check


def export_answer_problems(
    chain: Chain, answers: pa.Table, examples: pa.Table, paid: Mapping[str, str], choices: Sequence[str],
    export: tuple[str, Record],
) -> AnswerCheck:
    """`answer_problems` of a labeling export (its record CID and record), before anything is trained on
    it: its `answers` on `examples`, each labeler at its payout address (`paid`), held to every claim
    made so far, and for dropped answers to those made by the time the chain's account (the operator's)
    dated the export (`date_export`; undated: by the record's end, and `AnswerCheck.undated` says that
    publishing will refuse it). An answer its labeler has not claimed yet fails here as it would at
    publishing (a claiming labeler claims all it gives), so a conflict shows at the sync, not after the
    training. Nothing to check where the chain has no SourceClaims contract."""
    if not paid or not claims_deployed(chain):
        return AnswerCheck()
    claims = claimed_seals(chain, sorted(set(paid.values())))
    cid, record = export
    dated = export_time(chain, cid, chain.address) if chain.address else 0
    check = _held(answers, examples, paid, claims, choices, claim_time(dated) if dated else record.ended_at)
    if not dated:
        _undated(check, cid, chain.address)
    return check


def _undated(check: AnswerCheck, export_cid: str, publisher: str | None) -> None:
    """Where `check` holds labelers to their claims, note that the publisher never dated the labeling
    export `export_cid` on chain: its end is then the operator's word, which a backdated record moves
    before the claims of the answers it drops, so no run is paid by it."""
    if check.labelers:
        by = f"by the publisher {publisher}" if publisher else "(this chain client has no key)"
        check.undated.append((export_cid, f"the labeling export record was not dated on chain {by}, so "
                                          "when its answers were exported is the operator's word and its "
                                          "labelers' claims cannot be held to it"))


def _held(
    answers: pa.Table, examples: pa.Table, paid: Mapping[str, str],
    claims: Mapping[str, Mapping[int, Mapping[bytes, int]]], choices: Sequence[str], exported_at: str | None,
) -> AnswerCheck:
    """`answer_problems` on the tables, reading only the answers of labelers with claims."""
    claiming = sorted(labeler for labeler, address in paid.items() if claims.get(address))
    if not claiming:
        return AnswerCheck()
    theirs = answers.filter(pc.is_in(answers["annotator"], pa.array(claiming)))
    labels = sorted({*map(str, choices), *map(str, pc.unique(answers["label"]).to_pylist())})
    return answer_problems(theirs.select(["example_id", "annotator", "label"]).to_pylist(), paid, claims,
                           examples["example_id"].to_pylist(), labels, exported_at)


def table_reader(store: ContentStore, keys: Sequence[DataKey] = ()) -> Callable[[str], pa.Table | None]:
    """A content's table by CID, as `run_answer_problems` reads the run's: a sealed one opened with
    `keys` (or by `store` itself, an EncryptedStore); None where none in reach opens it, or it cannot be
    read (the auditor's content check names why)."""

    def read(cid: str) -> pa.Table | None:
        try:
            data = store.get(cid)
            return read_parquet(open_sealed(keys, data, what=f"content {cid}") if is_sealed(data) else data)
        except (BlockNotFound, CorruptBlock, DecryptionError):
            return None

    return read


def declared_choices(records: Iterable[Record]) -> list[str]:
    """The labels the labeling spec of these records' ingest declares: those a labeler could answer (the
    checks add any label recorded beside them)."""
    return sorted({str(c) for r in records if r.activity == INGEST
                   for c in ((r.params.get("labeling") or {}).get("choices") or ())})
