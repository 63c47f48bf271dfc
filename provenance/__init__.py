"""Provenance records, Merkle trees, royalty contracts, the chain client and the auditor.

The face the pipeline uses (one Dagster asset per step; nothing here imports dagster):

    chain = Chain.from_env()            CARAVAN_RPC_URL, CARAVAN_PRIVATE_KEY | CARAVAN_KEYSTORE(+_PASSWORD),
                                        CARAVAN_CHAIN_ID, CARAVAN_CHAIN_DIR (deployments-<chainid>.json)
    chain.deploy()                      idempotent; `caravan chain deploy` does the same

    # 1. each activity: build a record naming its parents, store it; the CID is its identity
    cid = put_record(store, Record(activity="snapshot", agent=run_tag, started_at=utc_time(t0),
                     ended_at=utc_time(), code=code_version(), inputs={"raw": raw_cid},
                     outputs={"examples": snapshot_cid}, parents=(ingest_cid,), params={...}))
    # the last one is the weighting record; its output `contributor_weights` is the weights table:
    weights_cid = store_weights(store, weights_table)          # validated, deterministic Parquet
    head = put_record(store, Record(activity="weighting", ..., outputs={"contributor_weights": weights_cid},
                      parents=(training_cid,)))

    # 2. publish the run: every not-yet-anchored record of the lineage (parents first), then the
    #    royalty root. All checks run before the first transaction; calling it again after a crash
    #    sends only what is missing (journaled txs are awaited, never re-sent).
    pub = publish_run(chain, store, run_id, head)   # -> RunPublication(root, transactions, gas_used)

    # 3. revenue and payouts (pull payments)
    chain.deposit(run_id, amount_wei, action="invoice-42")      # or chain.deposit_token(run_id, amount)
    tx, paid = claim_share(chain, store, run_id, address)       # anyone may submit; pays `address`

    # 4. audit
    report = verify_run(chain, store, run_id)       # .ok, .failures: [Failure(name, subject, detail)]
    tree = trace(chain, store, cid_or_run_id_or_tx_hash)        # TraceNode; .to_json()
                                    # a run's tree also lists its serving epochs (kind "epoch")
    epochs = run_epochs(chain, store, run_id)       # [RunEpoch]: settlement records anchored under
                                    # their epoch key with the run's head as parent; chain + store only
    prov_json(records_by_cid(store, cids))          # W3C PROV-JSON for auditors

Errors are `ProvenanceError` subclasses whose message says what is wrong and how to fix it:
RecordError, MissingParent, WeightsError, ChainError, RpcUnreachable, WrongChain, NotDeployed,
TransactionError, UnauthorizedPublisher, AlreadyPublished, InsufficientFunds.

Settlements of absolute amounts (e.g. a serving epoch): `publish_settlement(chain, epoch_id,
[(address, amount), ...])` creates a root funded up to the sum; claims use `chain.claim`.
"""

from provenance.audit import (
    Failure,
    Findings,
    RunEpoch,
    TraceNode,
    VerifyReport,
    run_epochs,
    trace,
    trace_run,
    verify_run,
)
from provenance.chain import Chain, Distribution, RecordedEvent, TxResult, load_account, run_key
from provenance.errors import (
    AlreadyPublished,
    ChainError,
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
from provenance.records import (
    ACTIVITIES,
    CodeVersion,
    Record,
    code_version,
    load_record,
    prov_json,
    put_record,
    records_by_cid,
    utc_time,
)
from provenance.runs import (
    RunPublication,
    Share,
    claim_share,
    find_head,
    load_lineage,
    publish_run,
    publish_settlement,
    share_of,
    store_weights,
)
from provenance.weights import read_weights, share_leaves, validate_weights

__all__ = [
    "ACTIVITIES",
    "SHARE_LEAF",
    "AlreadyPublished",
    "Chain",
    "ChainError",
    "CodeVersion",
    "Distribution",
    "Failure",
    "Findings",
    "InsufficientFunds",
    "MissingParent",
    "NotDeployed",
    "ProvenanceError",
    "Record",
    "RecordError",
    "RecordedEvent",
    "RpcUnreachable",
    "RunEpoch",
    "RunPublication",
    "Share",
    "StandardMerkleTree",
    "TraceNode",
    "TransactionError",
    "TxResult",
    "UnauthorizedPublisher",
    "VerifyReport",
    "WeightsError",
    "WrongChain",
    "claim_share",
    "code_version",
    "find_head",
    "load_account",
    "load_lineage",
    "load_record",
    "prov_json",
    "publish_run",
    "publish_settlement",
    "put_record",
    "records_by_cid",
    "run_epochs",
    "run_key",
    "read_weights",
    "share_leaves",
    "share_of",
    "store_weights",
    "trace",
    "trace_run",
    "utc_time",
    "validate_weights",
    "verify_proof",
    "verify_run",
]
