"""The pay-per-use model endpoint: predictions, per-prediction attribution, metering, receipts, epochs.

Public face (pipelines/ uses only these names):

    run = load_run(chain, store, run_id)        RunNotServable unless the head record is on chain,
                                                its root matches, and every output loads (verified)
    ledger = Ledger(path_or_postgresql_url)     SQLite WAL or PostgreSQL: hashed API keys, balances,
                                                receipts, epochs, rate-limit buckets (shared by servers)
    app = create_app(run, ledger, price=..., max_batch=64, attribution="sync")   FastAPI; "deferred":
                                                answer and charge at once, split "pending", the
                                                input stored; "off": the run's weights; "auto"
    drain(run, ledger) -> Drained               attribute every pending receipt of the run, once
    follow(run, ledger, stopped)                the attribution worker's loop: drain, poll, repeat
    settle_run(chain, store, ledger, run_id) -> Settlement | None   one epoch under the run's head,
                                                idempotent; pending receipts drained first
                                                (drain=False: refused while any are pending)
    settle_all(chain, store, ledger)            every run with open receipts
    verify_epoch(chain, store, epoch_id_or_cid) -> EpochReport (.ok, .failures, .names(), .to_json())
    epoch_claim(chain, store, epoch_id, address) -> (TxResult, amount paid)
    split_price(price, [(address, bps)]) -> [(address, amount)]   largest remainder, sums to price
    with_model_files(store, encoding)           an hf-local run's encoding with its starting model's
                                                files fetched by CID (fetch_local_model: the folder)
    limit_threads(n)                            torch and BLAS threads of a serving process
"""

from serving.app import API_KEY_HEADER, ATTRIBUTION_MODES, attribution_mode, create_app
from serving.base_model import fetch_local_model, with_model_files
from serving.claims import epoch_claim, epoch_leaf
from serving.deferred import Drained, drain, follow
from serving.errors import (
    InsufficientBalance,
    LedgerError,
    RevokedKey,
    RunNotServable,
    ServingError,
    SettlementError,
    UnknownKey,
)
from serving.fees import split_price, totals_by_address
from serving.ledger import SPLIT_PENDING, SPLIT_QUERY, SPLIT_RUN, ApiKey, Epoch, Ledger, Receipt
from serving.run import ServedRun, limit_threads, load_run
from serving.settle import Settlement, settle_all, settle_run
from serving.verify import EpochReport, verify_epoch

__all__ = [
    "API_KEY_HEADER",
    "ATTRIBUTION_MODES",
    "SPLIT_PENDING",
    "SPLIT_QUERY",
    "SPLIT_RUN",
    "ApiKey",
    "Drained",
    "Epoch",
    "EpochReport",
    "InsufficientBalance",
    "Ledger",
    "LedgerError",
    "Receipt",
    "RevokedKey",
    "RunNotServable",
    "ServedRun",
    "ServingError",
    "Settlement",
    "SettlementError",
    "UnknownKey",
    "attribution_mode",
    "create_app",
    "drain",
    "epoch_claim",
    "epoch_leaf",
    "fetch_local_model",
    "follow",
    "limit_threads",
    "load_run",
    "settle_all",
    "settle_run",
    "split_price",
    "totals_by_address",
    "verify_epoch",
    "with_model_files",
]
