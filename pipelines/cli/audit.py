"""`caravan trace` and `caravan verify`: the auditor's commands, reading only chain and store.

Chain from `CARAVAN_RPC_URL` (no key needed), deployments from `CARAVAN_CHAIN_DIR`, content from
`CARAVAN_STORE_DIR` (or `--store`). `verify` exits 0 only if every check holds and otherwise
prints one `FAIL <name> <subject>: <detail>` line per failure and exits 1.
"""

from __future__ import annotations

# provenance (web3) is imported inside the commands: it costs ~0.8 s, which `caravan store` need not pay.
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.tree import Tree

from pipelines.cli.errors import clean_errors, finish_report
from storage import STORE_DIR_ENV, BlockStore, StorageError, default_store

StoreDir = Annotated[
    str | None,
    typer.Option("--store", envvar=STORE_DIR_ENV, help="Block store directory [default: .caravan/blocks]."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
AsProv = Annotated[bool, typer.Option("--prov", help="Print the lineage's records as W3C PROV-JSON.")]


def _store(store_dir: str | None) -> BlockStore:
    return BlockStore(store_dir) if store_dir else default_store()


def _rich(node: Any, into: Tree | None = None) -> Tree:
    style = {"payout": "bold green", "deposit": "green", "root": "green", "run": "bold", "record": "cyan"}
    label = f"[{style.get(node.kind, 'dim')}]{node.kind}[/] {node.label}"
    branch = Tree(label) if into is None else into.add(label)
    for child in node.children:
        _rich(child, branch)
    return branch


def trace_command(
    ref: Annotated[str, typer.Argument(help="A CID, a run id (or 0x run key), or a transaction hash.")],
    as_json: AsJson = False,
    as_prov: AsProv = False,
    store_dir: StoreDir = None,
) -> None:
    """The lineage tree from a payout, deposit, run, record or data CID back to the raw data."""
    from provenance import Chain, ProvenanceError, prov_json, records_by_cid, trace
    from provenance.audit import record_cids

    with clean_errors(ProvenanceError, StorageError):
        store = _store(store_dir)
        node = trace(Chain.from_env(), store, ref)
        if as_prov:
            typer.echo(prov_json(records_by_cid(store, record_cids(node))))
            return
    if as_json:
        typer.echo(json.dumps(node.to_json(), indent=2, default=str))
    else:
        console = Console()
        Console(width=None if console.is_terminal else 400).print(_rich(node))


def verify_command(
    run_id: Annotated[
        str, typer.Argument(help="A run id (or its 0x run key), or a serving epoch id (RUN_ID/epoch-...).")
    ],
    as_json: AsJson = False,
    onchain_proofs: Annotated[
        bool,
        typer.Option("--onchain-proofs/--local-proofs", help="Also ask the contract to verify each proof."),
    ] = True,
    store_dir: StoreDir = None,
) -> None:
    """Recompute every CID, check parents, on-chain entries, the royalty root and every proof.

    For a serving epoch: recompute every amount and the root from its receipts batch alone.
    """
    if "/epoch-" in run_id:
        from pipelines.cli.serve import epoch_verify

        return epoch_verify(run_id, as_json=as_json, store_dir=store_dir)
    from provenance import Chain, ProvenanceError, verify_run

    with clean_errors(ProvenanceError, StorageError):
        report = verify_run(Chain.from_env(), _store(store_dir), run_id, onchain_proofs=onchain_proofs)
    finish_report(
        report,
        as_json,
        f"run {run_id} root {report.onchain_root}; {report.records_checked} records, "
        f"{report.contents_checked} contents, {report.proofs_checked} proofs checked",
    )


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_command)
    app.command("verify")(verify_command)
