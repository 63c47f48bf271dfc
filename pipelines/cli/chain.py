"""`caravan chain deploy|status|grant`: the contracts on the configured chain; `caravan claim`: a
provider's claim of its source files there, and `caravan claim-answers` a labeler's of its answers,
each sent with its own key.

Configured by the settings (`CARAVAN_RPC_URL`, `CARAVAN_CHAIN_DIR`, default `$CARAVAN_HOME/chain`)
and `CARAVAN_PRIVATE_KEY` (or `CARAVAN_KEYSTORE` + `CARAVAN_KEYSTORE_PASSWORD`), `CARAVAN_CHAIN_ID`;
see provenance.chain. With no key, a local anvil's dev key is read from the chain dir's anvil.json.
"""

from __future__ import annotations

# provenance (web3) is imported inside the commands, as in pipelines/cli/audit.py.
import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.errors import CaravanError, clean_errors
from pipelines.cli.options import open_chain


def deploy() -> None:
    """Deploy the registry, distributor and source claims where missing (idempotent).

    Prints each contract's address, the gas of those deployed now, and the deployments file."""
    from provenance import ProvenanceError

    with clean_errors(ProvenanceError):
        chain = open_chain(need_key=True)
        results = chain.deploy()
        known = chain.deployments()["contracts"]
    for name, result in results.items():
        state = "already deployed" if result.skipped else f"deployed, gas {result.gas_used}"
        typer.echo(f"{name}: {known[name]['address']} ({state})")
    typer.echo(f"deployments: {chain.deployments_path}")


def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Chain id, head block, signing account and whether each contract has its code."""
    from provenance import ProvenanceError
    from provenance.chain import CONTRACTS, redact_url

    with clean_errors(ProvenanceError):
        chain = open_chain()
        info = {
            "rpc": redact_url(chain.rpc_url),
            "chain_id": chain.chain_id,
            "block": chain.block_number(),
            "account": chain.address,
            "deployments": str(chain.deployments_path),
            "contracts": {},
        }
        for name in CONTRACTS:
            entry = chain.deployments().get("contracts", {}).get(name)
            live = bool(entry) and chain.has_code(name, entry["address"])
            info["contracts"][name] = {"address": entry and entry["address"], "live": live}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key != "contracts":
            typer.echo(f"{key}: {value}")
    for name, c in info["contracts"].items():
        typer.echo(f"{name}: {c['address'] or '-'} ({'live' if c['live'] else 'NOT DEPLOYED'})")


def grant(address: Annotated[str, typer.Argument(help="EIP-55 address to make a publisher.")]) -> None:
    """Give an address PUBLISHER_ROLE on the registry and distributor (the admin's key signs)."""
    from provenance import ProvenanceError

    with clean_errors(ProvenanceError):
        for result in open_chain(need_key=True).grant_publisher(address):
            typer.echo(f"{result.action}: {'already granted' if result.skipped else result.tx_hash}")


def claim(
    sources: Annotated[
        list[str], typer.Argument(help="Files or folders you will hand to a Caravan operator, as `caravan "
                                       "ingest` reads them.")
    ],
    image_field: Annotated[
        str | None,
        typer.Option(help="A table's column of image paths (as `caravan ingest --kind image --field` names "
                          "it): claim the images it names with it. A table's bytes hold the paths, not the "
                          "images, so it is dated by your claims only where they cover every image too."),
    ] = None,
) -> None:
    """Claim your source files on chain, from your own key, before you hand them over.

    The chain dates them, and whoever ingests them must pay you, at this address, for them."""
    from pipelines.datasets import IMAGE_SUFFIXES, DatasetError, Payload, source_files
    from provenance import ProvenanceError, claim_sources, claim_time, source_claims

    payload = Payload("image", image_field) if image_field else None
    with clean_errors(DatasetError, ProvenanceError):
        files = [f for s in sources for _, f in source_files(s, payload=payload)]
        tables = [f for f in files if Path(f.name).suffix.lower() not in IMAGE_SUFFIXES]
        pathless = [f.name for f in tables if payload and not f.refs]
        if pathless:
            raise CaravanError(
                f"--image-field {image_field}: {', '.join(pathless)} name no image file by path in a column "
                f"{image_field!r}; give the column of image paths, or leave the option out for a table that "
                "holds its images itself")
        cids = [c for f in files for c in (f.cid, *(cid for _, cid in f.refs))]
        chain = open_chain(need_key=True)
        sent = claim_sources(chain, cids)
        found = source_claims(chain, cids)

    def claimed(name: str, cid: str) -> dict:
        return {"name": name, "cid": cid, "claimed_at": claim_time(found[cid][chain.address])}

    print(json.dumps({
        "claimant": chain.address,
        "txs": [t.tx_hash for t in sent if not t.skipped],
        "files": [{**claimed(f.name, f.cid), **({"images": [claimed(*r) for r in f.refs]} if f.refs else {})}
                  for f in files],
    }))


def claim_answers(
    answers: Annotated[
        Path, typer.Argument(help="A table (.csv, .parquet, .jsonl) of your answers with an `example_id` and "
                                  "a `label` column, such as the project's CSV export from Label Studio "
                                  "(Export, CSV), or its JSON export (Export, JSON).")
    ],
    annotator: Annotated[
        str | None,
        typer.Option(help="Keep only this annotator's rows (its `annotator` column: in Label Studio's export "
                          "your user id); needed where the table holds several annotators' answers."),
    ] = None,
) -> None:
    """Claim your answers on chain, from your own key, before they are exported.

    The chain dates each one, and a run that pays you by answers you did not give, or leaves out one you
    claimed before its answers were exported, fails `caravan verify` (and its publisher's `publish_run`
    refuses it)."""
    import provenance

    with clean_errors(provenance.ProvenanceError):
        pairs, skipped = answer_pairs(answers, annotator)
        chain = open_chain(need_key=True)
        sent = provenance.claim_answers(chain, pairs)
    print(json.dumps({"labeler": chain.address, "answers": len(pairs), "skipped_tasks": skipped,
                      "txs": [t.tx_hash for t in sent if not t.skipped]}))


def answer_pairs(path: Path, annotator: str | None) -> tuple[list[tuple[str, str]], int]:
    """The distinct (example_id, label) pairs of a labeler's answers table, and how many of its rows have
    no label (skipped tasks, not answers); a CaravanError naming what is wrong with it."""
    table = _answers_table(path)
    missing = [c for c in ("example_id", "label") if c not in table.column_names]
    if missing:
        names = ", ".join(table.column_names)
        raise CaravanError(f"{path}: no {' or '.join(missing)} column (columns: {names})")
    rows = table.to_pylist()
    if "annotator" in table.column_names:
        names = sorted({str(r["annotator"]) for r in rows})
        if annotator is None and len(names) > 1:
            raise CaravanError(f"{path} holds the answers of {len(names)} annotators; name yours with "
                               "--annotator")
        rows = [r for r in rows if annotator is None or str(r["annotator"]) == annotator]
    elif annotator is not None:
        raise CaravanError(f"--annotator {annotator}: {path} has no `annotator` column; leave the option out")
    bad = [r for r in rows if not r["example_id"]]
    if bad:
        raise CaravanError(f"{path}: {len(bad)} rows lack an example_id; remove or fill them")
    answered = [r for r in rows if r["label"] is not None and str(r["label"]) != ""]  # else a skipped task
    if not answered:
        raise CaravanError(f"{path}: no answers" + (f" of {annotator!r}" if annotator else ""))
    return sorted({(str(r["example_id"]), str(r["label"])) for r in answered}), len(rows) - len(answered)


def _answers_table(path: Path):
    """The table in `path`; a `.json` file holding a list, read as Label Studio's JSON export."""
    import pyarrow as pa

    from labeling import exported_answers
    from pipelines.datasets import SUFFIX_READERS

    reader = SUFFIX_READERS.get(path.suffix.lower())
    if reader is None or not path.is_file():
        raise CaravanError(f"{path}: not a file of answers ({', '.join(sorted(SUFFIX_READERS))}); export "
                           "yours from Label Studio (Export, CSV or JSON)")
    try:
        if path.suffix.lower() == ".json":
            data = path.read_bytes()
            if data.lstrip()[:1] == b"[":  # a list: Label Studio's JSON export
                rows = exported_answers(json.loads(data))
                names = ("example_id", "annotator", "label")
                return pa.Table.from_pylist(rows, schema=pa.schema([(n, pa.string()) for n in names]))
        return reader(path)
    except Exception as exc:  # noqa: BLE001 - any reader's failure is the same bad input
        raise CaravanError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def register(app: typer.Typer) -> None:
    """Add the `caravan chain` group (deploy, status, grant), `caravan claim` (a provider's) and `caravan
    claim-answers` (a labeler's) to the root app."""
    chain_app = typer.Typer(help="Caravan's contracts on the configured EVM chain.", no_args_is_help=True)
    chain_app.command("deploy")(deploy)
    chain_app.command("status")(status)
    chain_app.command("grant")(grant)
    app.add_typer(chain_app, name="chain")
    app.command()(claim)
    app.command("claim-answers")(claim_answers)
