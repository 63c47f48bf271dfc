"""Provenance records, Merkle trees, royalty contracts, the chain client and the auditor.

The face the pipeline uses (one Dagster asset per step; nothing here imports dagster):

    chain = Chain.from_env()            CARAVAN_RPC_URL, CARAVAN_PRIVATE_KEY | CARAVAN_KEYSTORE(+_PASSWORD),
                                        CARAVAN_CHAIN_ID, CARAVAN_CHAIN_DIR (deployments-<chainid>.json)
    chain.deploy()                      idempotent; `caravan chain deploy` does the same

    # 1. each activity: build a record naming its parents, store it; the CID is its identity.
    #    Activity, input and output names come from `provenance.activities` (SNAPSHOT, TrainingRecord.MODEL,
    #    WeightingRecord.WEIGHTS, ...): the record contract, spelled once.
    cid = put_stage_record(store, Record(activity=SNAPSHOT, agent=run_tag, started_at=utc_time(t0),
                           ended_at=utc_time(), code=code_version(), inputs={SnapshotRecord.EXAMPLES: cid},
                           outputs={SnapshotRecord.SNAPSHOT: snapshot_cid}, parents=(ingest_cid,)),
                           previous=last_cid)   # a rerun with the same substance keeps `last_cid`
    # the last one is the weighting record; its output `contributor_weights` is the weights table:
    weights_cid = store_weights(store, weights_table)          # validated, deterministic Parquet
    head = put_stage_record(store, Record(activity=WEIGHTING, ...,
                            outputs={WeightingRecord.WEIGHTS: weights_cid}, parents=(training_cid,)))

    # 2. publish the run: every not-yet-anchored record of the lineage (parents first), then the
    #    royalty root. All checks run before the first transaction; calling it again after a crash
    #    sends only what is missing (journaled txs are awaited, never re-sent).
    pub = publish_run(chain, store, run_id, head)   # -> RunPublication(root, transactions, gas_used)

    # 3. revenue and payouts (pull payments)
    chain.deposit(run_id, amount_wei, action="invoice-42")      # or chain.deposit_token(run_id, amount)
    tx, paid = claim_share(chain, store, run_id, address)       # anyone may submit; pays `address`

    # 4. read records back: one reader per question; each record is loaded (and verified) once
    records = RunRecords(chain, store)
    head = records.head(run_id)                     # the run's one weighting record on chain
    lineage = records.lineage(head)                 # {cid: Record}, head and every ancestor
    training_cid, training = records.parent(head, TRAINING)
    records.of_activity(epoch_id, SETTLEMENT)       # CIDs of readable records of one activity under a key
    records.epochs(run_id)                          # [RunEpoch] (also `run_epochs(chain, store, run_id)`)

    # 4b. source claims: a provider dates its files on chain from its own key (`caravan claim`);
    #     ingest dates each claimed file by its claim, publish_run and verify_run hold the run to them
    claim_sources(provider_chain, cids)     # -> [TxResult]
    source_claims(chain, cids)              # {cid: {claimant: unix time}}
    date_registrations(operator_chain, [(cid, provider)])   # {(cid, provider): unix time}, dated on chain
    # 4c. answer claims: a labeler dates its answers on chain from its own key (`caravan claim-answers`);
    #     publish_run and verify_run hold the answers a run pays by to them
    claim_answers(labeler_chain, [(example_id, label)])     # -> [TxResult]

    # 5. audit
    report = verify_run(chain, store, run_id)       # .ok, .failures: [Failure(name, subject, detail)]
    tree = trace(chain, store, cid_or_run_id_or_tx_hash)        # TraceNode; .to_json()
                                    # a run's tree also lists its serving epochs (kind "epoch")
    prov_json(records_by_cid(store, cids))          # W3C PROV-JSON for auditors

Errors are `ProvenanceError` subclasses whose message says what is wrong and how to fix it:
RecordError, MissingParent, WeightsError, ClaimConflict, ChainError, RpcUnreachable, WrongChain,
NotDeployed, TransactionError, UnauthorizedPublisher, AlreadyPublished, InsufficientFunds.

Settlements of absolute amounts (e.g. a serving epoch): `publish_settlement(chain, epoch_id,
[(address, amount), ...])` creates a root (kind KIND_AMOUNTS) funded up to the sum; its tree is
`amounts_tree(amounts)` wherever it is needed (settle, claim, verify); claims use `chain.claim`.
"""

from provenance.activities import (
    ACTIVITIES,
    CONSENSUS,
    INGEST,
    LABEL_REVIEW,
    LABELING_EXPORT,
    SETTLEMENT,
    SNAPSHOT,
    TRAINING,
    WEIGHTING,
    ConsensusRecord,
    IngestRecord,
    LabelingExportRecord,
    LabelReviewRecord,
    SettlementRecord,
    SnapshotRecord,
    TrainingRecord,
    WeightingRecord,
)
from provenance.answer_claims import (
    AnswerCheck,
    answer_problems,
    answer_seal,
    claim_answers,
    date_export,
    declared_choices,
    export_answer_problems,
    export_time,
)
from provenance.audit import NO_KEY, Failure, Findings, TraceNode, VerifyReport, trace, trace_run, verify_run
from provenance.chain import (
    KIND_AMOUNTS,
    KIND_SHARES,
    Chain,
    Distribution,
    RecordedEvent,
    TxResult,
    deployed_from,
    load_account,
    run_key,
)
from provenance.claims import (
    claim_problems,
    claim_sources,
    claim_time,
    claims_deployed,
    date_registrations,
    file_claims,
    honoured,
    source_claims,
    source_seal,
    with_claimed_as,
)
from provenance.errors import (
    AlreadyPublished,
    ChainError,
    ClaimConflict,
    InsufficientFunds,
    MissingParent,
    NotDeployed,
    ProvenanceError,
    RecordError,
    RpcUnreachable,
    TransactionError,
    UnauthorizedPublisher,
    WeightsError,
    WrongChain,
)
from provenance.merkle import SHARE_LEAF, StandardMerkleTree, verify_proof
from provenance.records import CodeVersion, Record, code_version, load_record, prov_json, put_record, utc_time
from provenance.run_records import (
    Anchored,
    RunEpoch,
    RunRecords,
    key_of,
    put_stage_record,
    records_by_cid,
    run_epochs,
)
from provenance.runs import (
    RunPublication,
    Share,
    amounts_tree,
    claim_share,
    publish_run,
    publish_settlement,
    share_of,
    store_weights,
)
from provenance.weights import read_weights, share_leaves, validate_weights, weights_snapshot

__all__ = [
    "ACTIVITIES",
    "CONSENSUS",
    "INGEST",
    "KIND_AMOUNTS",
    "KIND_SHARES",
    "LABELING_EXPORT",
    "SETTLEMENT",
    "SHARE_LEAF",
    "SNAPSHOT",
    "TRAINING",
    "WEIGHTING",
    "AlreadyPublished",
    "Anchored",
    "Chain",
    "ChainError",
    "AnswerCheck",
    "ClaimConflict",
    "CodeVersion",
    "ConsensusRecord",
    "Distribution",
    "Failure",
    "Findings",
    "NO_KEY",
    "IngestRecord",
    "InsufficientFunds",
    "LabelingExportRecord",
    "LabelReviewRecord",
    "LABEL_REVIEW",
    "MissingParent",
    "NotDeployed",
    "ProvenanceError",
    "Record",
    "RecordError",
    "RecordedEvent",
    "RpcUnreachable",
    "RunEpoch",
    "RunPublication",
    "RunRecords",
    "SettlementRecord",
    "Share",
    "SnapshotRecord",
    "StandardMerkleTree",
    "TraceNode",
    "TrainingRecord",
    "TransactionError",
    "TxResult",
    "UnauthorizedPublisher",
    "VerifyReport",
    "WeightingRecord",
    "WeightsError",
    "WrongChain",
    "amounts_tree",
    "claim_share",
    "code_version",
    "key_of",
    "load_account",
    "load_record",
    "prov_json",
    "publish_run",
    "publish_settlement",
    "put_record",
    "put_stage_record",
    "read_weights",
    "records_by_cid",
    "run_epochs",
    "run_key",
    "share_leaves",
    "share_of",
    "store_weights",
    "trace",
    "trace_run",
    "utc_time",
    "validate_weights",
    "weights_snapshot",
    "verify_proof",
    "verify_run",
    "answer_problems",
    "answer_seal",
    "claim_answers",
    "claim_problems",
    "claim_sources",
    "claim_time",
    "claims_deployed",
    "date_registrations",
    "date_export",
    "declared_choices",
    "deployed_from",
    "export_answer_problems",
    "export_time",
    "file_claims",
    "honoured",
    "source_claims",
    "source_seal",
    "with_claimed_as",
]
