"""`caravan demo` (the main job, end to end) and `caravan ingest` (register a dataset version)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipelines.cli.errors import CaravanError, clean_errors
from pipelines.cli.options import Shown, names, open_chain

console = Console(stderr=True)


def royalty_table(weights: list[dict]) -> Table:
    """Every contributor's pay; one whose data or labels made the model worse (a negative net
    score, under the default policy) is marked: it is paid nothing."""
    table = Table(title="Royalty split of the run (basis points of every deposit)")
    for col in ("contributor", "role", "address", "weight_bps", "share", "note"):
        table.add_column(col, justify="right" if col in ("weight_bps", "share") else "left")
    for r in sorted(weights, key=lambda r: (-r["weight_bps"], r["contributor"])):
        note = "hurt the model: unpaid" if r["score"] < 0 else ""
        table.add_row(
            r["contributor"],
            r["role"],
            r["address"],
            str(r["weight_bps"]),
            f"{r['weight_bps'] / 100:.2f} %",
            note,
        )
    return table


def demo(
    limit: Annotated[
        int | None, typer.Option(help="Use only this many examples (default: all; the digits are 1,797).")
    ] = None,
    start_services: Annotated[
        bool,
        typer.Option(
            "--start-services/--no-start-services", help="Start Label Studio and anvil if they are down."
        ),
    ] = True,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Run on this dataset (Parquet/CSV/JSONL with a provider column) instead of the digits; "
            "needs --kind, --field, --choices and --truth-col."
        ),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="With --data: text, image or table.")] = None,
    field: Annotated[str | None, typer.Option(
        help="With --data: the payload column labelers see (a table: the name its rows show under).")] = None,
    choices: Annotated[str | None, typer.Option(help="With --data: comma-separated labels.")] = None,
    show: Shown = None,
    truth_col: Annotated[
        str | None,
        typer.Option(
            help="With --data: the column of true labels. Simulated annotators of known accuracy answer "
            "from it; it is dropped before ingest, so training sees it only through their answers."
        ),
    ] = None,
    validation: Annotated[
        Path | None,
        typer.Option(
            help="With --data: the owner's held-out examples (the payload column and --truth-col, none of "
            "them in --data) that pay is measured on. Default: a tenth of --trusted's rows."
        ),
    ] = None,
    trusted: Annotated[
        str | None,
        typer.Option(
            help="With --data: comma-separated providers whose data is what the model will serve; a tenth "
            "of their rows is held out as the validation set pay is measured on (default: every "
            "provider's, noisy ones' too, which values whatever teaches the model their noise)."
        ),
    ] = None,
    model_dir: Annotated[
        Path | None,
        typer.Option(
            help="With --data --kind text: fine-tune the Hugging Face sequence classifier saved in this "
            "local directory (recipe hf-local: config.json, weights, tokenizer.json; nothing is "
            "downloaded). Its files are stored by CID; the path is in no record."
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(help="Where the model trains: cpu, cuda (a GPU; refused where torch sees none) or "
                     "auto (the GPU where there is one). The training record names the GPU; replay "
                     "retrains there."),
    ] = "cpu",
) -> None:
    """Run the whole mission on the digits (or --data) and print the royalty table; last line is JSON."""
    from pipelines.demo import run_demo
    from pipelines.demo_data import DemoError
    from pipelines.settings import load_settings, use_dagster_home

    settings = load_settings()
    use_dagster_home(settings)
    from provenance import ProvenanceError

    with clean_errors(DemoError, ProvenanceError), console.status("starting") as status:
        user_data = _user_data(data, kind, field, choices, truth_col, validation, trusted, show)
        training = _training(model_dir, user_data, device)

        def say(step: str) -> None:
            status.update(step)
            console.log(step)

        summary = run_demo(settings, limit=limit, data=user_data, start_services=start_services, say=say,
                           training=training)
    out = Console(width=None if sys.stdout.isatty() else 150)
    out.print(royalty_table(summary["weights"]))
    if not any(r["role"] == "provider" and r["weight_bps"] > 0 for r in summary["weights"]):
        from pipelines.checks import NO_PROVIDER_HELPED

        out.print(f"[bold red]WARNING:[/] {NO_PROVIDER_HELPED}")
    if summary["measured_against"] != "validation":
        out.print(
            "influence was measured against a hash split of the crowd-labeled examples (no validation "
            "set declared: `caravan ingest ... --validation FILE`)"
        )
    m = summary["mislabels"]
    out.print(
        f"likely mislabels: {m['flagged']} consensus labels flagged and sent back to Label Studio for more "
        f"answers (its 'review' tab); {m['flagged_and_wrong']} of them are wrong, of {m['consensus_wrong']} "
        "wrong consensus labels in all"
    )
    out.print(
        f"claimed {summary['claimed_wei']} wei for {summary['payee']} (tx {summary['claim_tx']})"
        if summary["claim_tx"]
        else f"{summary['payee']} had already claimed its share of this deposit"
    )
    out.print(
        "Where to look:\n"
        "  Dagster UI:       make dagster-dev, then http://127.0.0.1:3000 (asset graph, metadata, checks)\n"
        f"  Label Studio UI:  {settings.labelstudio_url} (user {_ls_user()})\n"
        f"  royalty root tx:  {summary['root_tx']}\n"
        f"  deposit tx:       {summary['deposit_tx']}\n"
        f"  audit:            caravan verify {summary['run_id']}; caravan trace {summary['run_id']}"
    )
    out.print(
        f"serving: {summary['predictions']} paid predictions settled as epoch {summary['epoch_id']} "
        f"({summary['epoch_total_wei']} wei); claim tx {summary['epoch_claim_tx']}"
    )
    for f in [*summary["failures"], *summary["epoch_failures"]]:
        print(f"FAIL {f['name']} {f['subject']}: {f['detail']}")
    keys = (
        "wall_s",
        "examples",
        "annotations",
        "contributors",
        "run_id",
        "root_tx",
        "claim_tx",
        "verify_ok",
        "sources_claimed",
        "answers_claimed",
        "answers_as_in_label_studio",
        "predictions",
        "epoch_id",
        "epoch_claim_tx",
        "epoch_verify_ok",
        "mislabels",
    )
    print(json.dumps({k: summary[k] for k in keys}))
    if not (summary["verify_ok"] and summary["epoch_verify_ok"]):
        raise typer.Exit(1)


def _user_data(
    data: Path | None, kind: str | None, field: str | None, choices: str | None, truth_col: str | None,
    validation: Path | None = None, trusted: str | None = None, show: str | None = None,
):
    """`--data` and its companions as one `UserData` (None without --data), or one error."""
    from pipelines.demo_data import UserData

    given = {"--kind": kind, "--field": field, "--choices": choices, "--truth-col": truth_col}
    optional = {"--validation": validation, "--trusted": trusted, "--show": show}
    if data is None:
        stray = [k for k, v in {**given, **optional}.items() if v is not None]
        if stray:
            raise CaravanError(f"{', '.join(stray)} need --data FILE")
        return None
    if validation is not None and trusted is not None:
        raise CaravanError("give --validation FILE or --trusted PROVIDERS, not both: a validation file "
                           "replaces the held-out tenth")
    missing = [k for k, v in given.items() if not v]
    if missing:
        raise CaravanError(
            f"--data needs {', '.join(missing)} too (e.g. --kind text --field text "
            "--choices spam,ham --truth-col label)"
        )
    labels = names(choices)
    from labeling import PROJECT_KINDS

    if kind not in PROJECT_KINDS or not labels:
        raise CaravanError(f"--kind must be one of {', '.join(PROJECT_KINDS)}, and --choices must name at "
                           "least one label")
    providers = tuple(sorted(set(names(trusted))))
    if trusted is not None and not providers:
        raise CaravanError("--trusted must name at least one provider of --data (comma-separated)")
    return UserData(data, kind, field, labels, truth_col, validation, providers, names(show))


def _training(model_dir: Path | None, data, device: str) -> dict | None:  # noqa: ANN001 (a UserData or None)
    """`trained_model`'s config for `--model-dir` and `--device` (None for the defaults), or one error
    before anything runs."""
    import dagster as dg

    from pipelines.assets.training import TrainingConfig

    try:
        TrainingConfig(device=device).on_device()
    except dg.Failure as exc:
        raise CaravanError(f"--device: {exc.description or exc}") from None
    hf = _hf_training(model_dir, data)
    config = {**(hf or {}), **({"device": device} if device != "cpu" else {})}
    return config or None


def _hf_training(model_dir: Path | None, data) -> dict | None:  # noqa: ANN001 (a UserData or None)
    """`trained_model`'s config for `--model-dir` (None without it), or one error before anything runs."""
    if model_dir is None:
        return None
    import dagster as dg

    from pipelines.assets.training import HF_RECIPE, checked_model_dir

    if data is None or data.kind != "text":
        raise CaravanError("--model-dir fine-tunes a text classifier: give it with --data FILE --kind text")
    try:
        path = checked_model_dir(str(model_dir))
    except dg.Failure as exc:
        raise CaravanError(exc.description or str(exc)) from None
    return {"recipe": HF_RECIPE, "model_dir": str(path.resolve())}


def _ls_user() -> str:
    from labeling import LabelStudioServer

    return LabelStudioServer.from_env(Path(".")).username


def ingest(
    source: Annotated[
        str,
        typer.Argument(
            help="Parquet/CSV/JSONL file, a folder of them, a folder with one subfolder of PNG/JPEG images "
            "per provider, or hf:NAME. An image column holds PNG/JPEG bytes or paths relative to its file."
        ),
    ],
    version: Annotated[str, typer.Option(help="The dataset version (Dagster partition) to register.")],
    kind: Annotated[str, typer.Option(
        help="Label Studio project kind: text, image, or table (labelers see each row's columns, and the "
        "model trains on them: numbers, number lists, categories).")],
    field: Annotated[
        str, typer.Option(help="Payload column labelers see (an image folder's images fill this column); "
                          "for a table, the name the row is shown under, e.g. 'row'.")
    ],
    choices: Annotated[str, typer.Option(help="Comma-separated labels, e.g. 'spam,ham'.")],
    show: Shown = None,
    provider: Annotated[
        str | None, typer.Option(help="Provider of a source without a provider column.")
    ] = None,
    gold: Annotated[
        str | None,
        typer.Option(
            help="Parquet of (example_id, label): honeypot answers on examples of this dataset, "
            "which grade the labelers (they are trained on)."
        ),
    ] = None,
    validation: Annotated[
        str | None,
        typer.Option(
            help="File of held-out examples (the dataset's payload columns and a trusted 'label'), "
            "never trained on: training measures each example's influence against it. Without "
            "it, influence is measured against a hash split of the crowd-labeled examples."
        ),
    ] = None,
    private: Annotated[
        bool | None,
        typer.Option(
            "--private/--public",
            help="Seal every value of this version (AES-SIV, a data key wrapped for the holder key in "
            "CARAVAN_HOLDER_KEY or its key file) before it reaches the store; default: private when "
            "CARAVAN_DEPLOYMENT=prod (its pins are published), public otherwise.",
            show_default=False,
        ),
    ] = None,
    claims: Annotated[
        bool | None,
        typer.Option(
            "--claims/--no-claims",
            help="Date each file its provider claimed on chain (`caravan claim`, from the address the "
            "contributors registry gives it) by that claim, and refuse a file someone else claimed: "
            "what `caravan verify` holds the run to. Default: on where Caravan's contracts were "
            "deployed (the chain dir holds a deployments file).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Register a dataset version: the Dagster partition the whole graph runs for."""
    import dagster as dg

    from labeling import PROJECT_KINDS, LabelConfigError, labeling_record
    from pipelines.datasets import DatasetError, Payload, load_source, to_examples, validation_examples
    from pipelines.privacy import registering
    from pipelines.resources import DatasetCatalog, resources_for
    from pipelines.settings import load_settings, use_dagster_home
    from provenance import ProvenanceError
    from storage import StorageError

    settings = load_settings()
    labels = names(choices)
    with clean_errors(DatasetError, ValueError, StorageError, LabelConfigError, ProvenanceError):
        if kind not in PROJECT_KINDS or not labels:
            raise CaravanError(f"--kind must be one of {', '.join(PROJECT_KINDS)}, and --choices must "
                               "name at least one label")
        labeling = labeling_record(kind, field, labels, names(show))
        payload = Payload(kind, field)  # texts and images are checked here, before anything is pinned
        table = load_source(source, provider=provider, payload=payload)
        examples, report = to_examples(table, labeled=payload)
        unknown = [c for c in names(show) if c not in examples.column_names]
        if unknown:
            raise CaravanError(f"--show names {unknown}, not columns of {source}; its columns: "
                               f"{[c for c in examples.column_names if c not in ('example_id', 'source')]}")
        if validation:
            held_out = load_source(validation, provider="validation", payload=payload)
            validation_examples(held_out, examples, labels)
        private = settings.deployment == "prod" if private is None else private  # prod pins publish
        claims = _deployed(settings) if claims is None else claims
        with registering(settings, resources_for(settings)["store"].plain(), version, private) as store:
            DatasetCatalog(root=str(settings.catalog_dir)).register(
                version,
                source,
                store=store,  # the files are pinned, named by CID (a private version's: sealed first)
                provider=provider,
                labeling=labeling,
                gold=gold,
                validation=validation,
                claims=_claim_lookup(settings) if claims else None,
            )
    use_dagster_home(settings)
    dg.DagsterInstance.get().add_dynamic_partitions("dataset_version", [version])
    print(
        json.dumps(
            {
                "version": version,
                "examples": report.examples,
                "providers": report.providers,
                "duplicates_dropped": report.duplicates_dropped,
                "near_duplicates": report.grouping.near_summary(),
            }
        )
    )


def _deployed(settings) -> bool:
    """Whether Caravan's contracts were deployed from here: ingest then honours source claims."""
    from provenance import deployed_from

    return deployed_from(settings.chain_dir)


def _claim_lookup(settings):
    """The chain and the providers' addresses (the contributors registry, where there is one)."""
    from labeling import ContributorsRegistry
    from pipelines.resources import ClaimLookup
    from provenance.errors import RpcUnreachable

    path = settings.contributors_file
    addresses = ContributorsRegistry.load(path).addresses if path.exists() else {}
    try:
        return ClaimLookup(open_chain(), addresses)
    except RpcUnreachable as exc:
        raise CaravanError(f"{exc}; ingest reads the providers' source claims there (`caravan claim`): start "
                           "it, or pass --no-claims to date every file by this machine's clock") from None


def register(app: typer.Typer) -> None:
    """Add `caravan demo` and `caravan ingest` to the root app."""
    app.command()(demo)
    app.command()(ingest)
