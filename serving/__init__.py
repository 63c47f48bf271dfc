"""The pay-per-use model endpoint: predictions, per-prediction attribution, metering, receipts, epochs.

Public face (pipelines/ uses only these names):

    run = load_run(chain, store, run_id)        RunNotServable unless the head record is on chain,
                                                its root matches, and every output loads (verified)
    ledger = Ledger(path_or_postgresql_url)     SQLite WAL or PostgreSQL: hashed API keys, balances,
                                                receipts, epochs, rate-limit buckets (shared by servers)
    app = create_app(run, ledger, price=..., max_batch=64, attribute=True)    FastAPI
    settle_run(chain, store, ledger, run_id) -> Settlement | None   one epoch under the run's head, idempotent
    settle_all(chain, store, ledger)            every run with open receipts
    verify_epoch(chain, store, epoch_id_or_cid) -> EpochReport (.ok, .failures, .names(), .to_json())
    epoch_claim(chain, store, epoch_id, address) -> (TxResult, amount paid)
    split_price(price, [(address, bps)]) -> [(address, amount)]   largest remainder, sums to price
    with_model_files(store, encoding)           an hf-local run's encoding with its starting model's
                                                files fetched by CID (fetch_local_model: the folder)
"""

from serving.app import API_KEY_HEADER, create_app
from serving.base_model import fetch_local_model, with_model_files
from serving.claims import epoch_claim, epoch_leaf
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
from serving.ledger import ApiKey, Epoch, Ledger, Receipt
from serving.run import SPLIT_QUERY, SPLIT_RUN, ServedRun, load_run
from serving.settle import Settlement, settle_all, settle_run
from serving.verify import EpochReport, verify_epoch

__all__ = [
    "API_KEY_HEADER",
    "SPLIT_QUERY",
    "SPLIT_RUN",
    "ApiKey",
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
    "create_app",
    "epoch_claim",
    "epoch_leaf",
    "fetch_local_model",
    "load_run",
    "settle_all",
    "settle_run",
    "split_price",
    "totals_by_address",
    "verify_epoch",
    "with_model_files",
]
