"""`caravan serve`, `caravan settle`, `caravan keys ...`, `caravan epoch ...`: pay-per-use inference.

Chain, content store and ledger come from the settings (`pipelines.settings`: `CARAVAN_HOME`,
`CARAVAN_RPC_URL`, `CARAVAN_CHAIN_DIR`, `CARAVAN_STORE_DIR`, `CARAVAN_LEDGER`), or from `--store`
and `--ledger`. The ledger is a SQLite file (default `$CARAVAN_HOME/ledger.sqlite`) or a
`postgresql://` URL, so several `caravan serve` processes can share keys, balances and rate limits.
API key secrets are printed once by `keys create` and stored only as hashes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Annotated

import typer

from pipelines.cli.errors import clean_errors, finish_report
from pipelines.cli.options import (
    AsJson,
    LedgerTarget,
    StoreDir,
    open_chain,
    open_ledger,
    open_reading_store,
    open_store,
)
from provenance import ProvenanceError
from serving import (
    ServingError,
    create_app,
    drain,
    epoch_claim,
    follow,
    limit_threads,
    load_run,
    settle_all,
    verify_epoch,
)
from serving.ledger import INPUT_KEY_ENV
from storage import StorageError

ERRORS = (ServingError, ProvenanceError, StorageError)
Threads = Annotated[
    int, typer.Option(help="torch and BLAS threads per request (and per attribution).", min=1)
]


def worker_command(run_id: str, threads: int, ledger_path: str | None, store_dir: str | None) -> list[str]:
    """`caravan attribute RUN --follow`: the deferred-attribution worker beside a server."""
    command = [sys.executable, "-m", "pipelines", "attribute", run_id, "--follow", "--threads", str(threads)]
    if ledger_path is not None:
        command += ["--ledger", ledger_path]
    if store_dir is not None:
        command += ["--store", store_dir]
    return command


def serve(
    run_id: Annotated[str, typer.Argument(help="The attribution run whose model to serve.")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.", min=1, max=65535)] = 8000,
    price: Annotated[int, typer.Option(help="Price per prediction, smallest token unit (wei).", min=1)] = 10
    ** 12,
    max_batch: Annotated[int, typer.Option(help="Most inputs in one request.", min=1)] = 64,
    attribution: Annotated[
        str,
        typer.Option(
            help="How each fee is split: 'sync' (each prediction's own attribution, computed in the "
            "request), 'deferred' (answered and charged at once, split 'pending'; a lower-priority "
            "worker process computes the same attribution and fills the receipt), 'off' (the run's "
            "weights), 'auto' (deferred for text and image runs, sync for numeric ones).",
        ),
    ] = "auto",
    threads: Threads = 1,
    max_body_bytes: Annotated[
        int | None,
        typer.Option(
            help="Largest request body in bytes; larger ones get 413 before they are read. "
            "Default: sized for --max-batch inputs of the run.",
            min=1,
        ),
    ] = None,
    ledger_path: LedgerTarget = None,
    store_dir: StoreDir = None,
) -> None:
    """Serve a published run's model on 127.0.0.1; every prediction is paid and receipted."""
    import uvicorn

    from pipelines.serve_process import start_child

    limit_threads(threads)
    with clean_errors(*ERRORS):
        run = load_run(open_chain(), open_reading_store(store_dir), run_id)  # opens a private model
        ledger = open_ledger(ledger_path)
        app = create_app(
            run,
            ledger,
            price=price,
            max_batch=max_batch,
            attribution=attribution,
            max_body_bytes=max_body_bytes,
        )
    mode = app.state.attribution
    typer.echo(
        f"serving run {run_id} (model {run.model_cid}) on http://127.0.0.1:{port}; request bodies "
        f"up to {app.state.max_body_bytes} bytes (--max-body-bytes); attribution {mode}",
        err=True,
    )
    if mode == "deferred" and not ledger.seals_inputs:
        typer.echo(
            f"warning: deferred attribution keeps each input in the ledger, in the clear, until it is "
            f"attributed; set {INPUT_KEY_ENV} (64 hex characters) to seal them",
            err=True,
        )
    # the worker shares this process's output, and dies with it (even under SIGKILL)
    worker = None
    if mode == "deferred":
        worker = start_child(worker_command(run_id, threads, ledger_path, store_dir))
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    finally:
        if worker is not None:
            worker.terminate()  # a fill is one transaction: stopping mid-batch loses nothing
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)


def attribute(
    run_id: Annotated[str, typer.Argument(help="The served run whose pending receipts to attribute.")],
    follow_: Annotated[
        bool,
        typer.Option(
            "--follow", help="Keep attributing receipts as they arrive (the worker `caravan serve` starts)."
        ),
    ] = False,
    nice: Annotated[
        int,
        typer.Option(help="With --follow, lower this process's CPU priority by this much.", min=0, max=19),
    ] = 19,
    threads: Threads = 1,
    ledger_path: LedgerTarget = None,
    store_dir: StoreDir = None,
) -> None:
    """Compute the attribution of the run's receipts still pending (deferred) and fill their splits."""
    limit_threads(threads)
    with clean_errors(*ERRORS):
        run = load_run(open_chain(), open_reading_store(store_dir), run_id)
        ledger = open_ledger(ledger_path)
        if not follow_:
            done = drain(run, ledger)
            typer.echo(
                f"attributed {done.receipts} receipts from {done.requests} request(s) in "
                f"{done.seconds:.2f} s; {ledger.pending_count(run_id)} pending"
            )
            for line in done.fallbacks:
                typer.echo(f"error: {line}", err=True)
            if done.fallbacks:
                raise typer.Exit(1)
            return
    os.nice(nice)  # requests first: attribution takes what the server leaves of the CPU

    def report(done) -> None:
        typer.echo(f"attributed {done.receipts} receipts in {done.seconds:.3f} s", err=True)
        for line in done.fallbacks:
            typer.echo(f"error: {line}", err=True)

    def on_error(exc: ServingError) -> None:
        typer.echo(f"error: attribution of pending receipts failed, retrying: {exc}", err=True)

    follow(run, ledger, lambda: False, report=report, on_error=on_error)


def settle(
    run_id: Annotated[str | None, typer.Option("--run", help="Settle only this run.")] = None,
    drain_pending: Annotated[
        bool,
        typer.Option(
            "--drain/--no-drain",
            help="Attribute receipts still pending (deferred) before closing the epoch, loading the run; "
            "--no-drain refuses while any are pending.",
        ),
    ] = True,
    as_json: AsJson = False,
    ledger_path: LedgerTarget = None,
    store_dir: StoreDir = None,
) -> None:
    """Close an epoch per run: receipts batch (CID), record, funded root. Safe to rerun after a crash."""
    limit_threads(1)  # pending receipts are attributed as `caravan serve --threads 1` would have
    with clean_errors(*ERRORS):
        chain, store, ledger = open_chain(need_key=True), open_store(store_dir), open_ledger(ledger_path)
        # a private run's model opens through the reading store; the settlement itself stays public
        how = {"drain": drain_pending, "reader": open_reading_store(store_dir) if drain_pending else None}
        if run_id is not None and run_id not in ledger.open_runs():
            done = []
        elif run_id is not None:
            from serving import settle_run

            done = [s for s in (settle_run(chain, store, ledger, run_id, **how),) if s is not None]
        else:
            done = settle_all(chain, store, ledger, **how)
    if as_json:
        typer.echo(
            json.dumps([{**s.__dict__, "payouts": [list(p) for p in s.payouts]} for s in done], indent=2)
        )
        return
    for s in done:
        typer.echo(
            f"settled {s.epoch_id}: {s.n_receipts} receipts, {s.total} wei to {len(s.payouts)} "
            f"addresses; batch {s.batch_cid} record {s.record_cid} root {s.root}"
        )
    if not done:
        typer.echo("nothing to settle")


keys_app = typer.Typer(
    help="API keys: create (secret shown once), list, top up, revoke.", no_args_is_help=True
)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who the key is for (kept in the ledger only).")],
    balance: Annotated[int, typer.Option(help="Prepaid balance, smallest token unit.", min=0)] = 0,
    rate: Annotated[float, typer.Option(help="Requests per second allowed.", min=0.001)] = 50.0,
    burst: Annotated[int, typer.Option(help="Requests allowed at once.", min=1)] = 100,
    ledger_path: LedgerTarget = None,
) -> None:
    """Create an API key and print its secret once (only its hash is kept); requests send it as X-API-Key."""
    with clean_errors(*ERRORS):
        ledger = open_ledger(ledger_path)
        key_id, secret = ledger.create_key(name, balance=balance, rate_per_s=rate, burst=burst)
    typer.echo(f"key {key_id} created; its secret (shown once, send it as X-API-Key):", err=True)
    typer.echo(secret)


@keys_app.command("list")
def keys_list(as_json: AsJson = False, ledger_path: LedgerTarget = None) -> None:
    """List the API keys: id, name, balance, rate limit, and whether revoked (never their secrets)."""
    with clean_errors(*ERRORS):
        keys = open_ledger(ledger_path).keys()
    if as_json:
        typer.echo(json.dumps([k.__dict__ for k in keys], indent=2))
        return
    for k in keys:
        typer.echo(
            f"{k.key_id} {k.name} balance={k.balance} rate={k.rate_per_s:g}/s"
            f"{' REVOKED' if k.revoked else ''}"
        )


@keys_app.command("topup")
def keys_topup(
    key_id: Annotated[str, typer.Argument()],
    amount: Annotated[int, typer.Argument(help="Amount to add, smallest token unit.")],
    ledger_path: LedgerTarget = None,
) -> None:
    """Add AMOUNT to the key's prepaid balance and print the new balance."""
    with clean_errors(*ERRORS):
        balance = open_ledger(ledger_path).topup(key_id, amount)
    typer.echo(f"key {key_id} balance {balance}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument()], ledger_path: LedgerTarget = None) -> None:
    """Revoke KEY_ID: its requests are refused from now on; its receipts and balance are kept."""
    with clean_errors(*ERRORS):
        open_ledger(ledger_path).revoke(key_id)
    typer.echo(f"key {key_id} revoked")


epoch_app = typer.Typer(help="Settlement epochs: list, verify, claim.", no_args_is_help=True)


@epoch_app.command("list")
def epoch_list(as_json: AsJson = False, ledger_path: LedgerTarget = None) -> None:
    """List the ledger's settlement epochs: state, receipt count, total and Merkle root of each."""
    with clean_errors(*ERRORS):
        epochs = open_ledger(ledger_path).epochs()
    if as_json:
        typer.echo(json.dumps([e.__dict__ for e in epochs], indent=2))
        return
    for e in epochs:
        typer.echo(f"{e.epoch_id} {e.state} receipts={e.n_receipts} total={e.total} root={e.root}")


@epoch_app.command("verify")
def epoch_verify(
    ref: Annotated[str, typer.Argument(help="Epoch id or its settlement record CID.")],
    as_json: AsJson = False,
    store_dir: StoreDir = None,
) -> None:
    """Recompute every amount and the root from the receipts batch; check them against the chain."""
    with clean_errors(*ERRORS):
        report = verify_epoch(open_chain(), open_store(store_dir), ref)
    finish_report(
        report,
        as_json,
        f"epoch {report.epoch_id} {report.n_receipts} receipts, total {report.total}, root {report.root}",
    )


@epoch_app.command("claim")
def epoch_claim_command(
    epoch_id: Annotated[str, typer.Argument()],
    address: Annotated[str, typer.Argument(help="The payee (anyone may submit; funds go to it).")],
    store_dir: StoreDir = None,
) -> None:
    """Claim everything ADDRESS is owed in the epoch on chain (needs a chain key; the funds go to ADDRESS)."""
    with clean_errors(*ERRORS):
        tx, paid = epoch_claim(open_chain(need_key=True), open_store(store_dir), epoch_id, address)
    typer.echo(f"claimed {paid} wei for {address} in {epoch_id} (tx {tx.tx_hash})")


def register(app: typer.Typer) -> None:
    """Add `caravan serve`, `settle` and `attribute` and the `keys` and `epoch` groups to the root app."""
    app.command("serve")(serve)
    app.command("settle")(settle)
    app.command("attribute")(attribute)
    app.add_typer(keys_app, name="keys")
    app.add_typer(epoch_app, name="epoch")
