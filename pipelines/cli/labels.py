"""`caravan labels ...`: sync tasks to Label Studio, export annotations incrementally, aggregate,
and check that every annotator can be paid.

Label Studio from `--url`, else the settings' `CARAVAN_LABELSTUDIO_URL` (default
http://127.0.0.1:8080); its API token from `labeling.labelstudio_token` (`LABEL_STUDIO_USER_TOKEN`,
else the local server's development default; never printed). Every bad input ends as one
`error: ...` line and exit code 1, with nothing already synced or exported lost.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.errors import CaravanError, clean_errors
from pipelines.cli.options import Shown, names, open_labelstudio

Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Label Studio base URL; default $CARAVAN_LABELSTUDIO_URL, else http://127.0.0.1:8080.",
        show_default=False,
    ),
]
Title = Annotated[str, typer.Option("--project", help="Label Studio project title.")]


def _read_parquet(path: str):
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise CaravanError(f"{path} does not exist; give a Parquet file")
    try:
        return pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise CaravanError(f"{path} is not a readable Parquet file ({type(exc).__name__})") from None


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def sync(
    examples: Annotated[
        str, typer.Argument(help="Parquet `examples` table (example_id, provider, source, ...).")
    ],
    project: Title,
    kind: Annotated[str, typer.Option(help="text, image or table (the row shown under --field).")] = "text",
    field: Annotated[str, typer.Option(help="Payload column shown to labelers.")] = "text",
    choices: Annotated[str, typer.Option(help="Comma-separated labels.")] = "",
    show: Shown = None,
    url: Url = None,
) -> None:
    """Create one task per example not yet in the project (idempotent; nothing existing is touched)."""
    from labeling import LabelingError, ProjectSpec, sync_tasks

    with clean_errors(LabelingError):
        table = _read_parquet(examples)
        client = open_labelstudio(url)
        proj = client.ensure_project(ProjectSpec(project, kind, names(choices), field, names(show)))
        r = sync_tasks(client, proj, table)
        typer.echo(
            f"project {proj.id}: {r.created} created, {r.already_present} already present, "
            f"{r.tasks_in_project} tasks in project"
        )


def export(
    project: Title,
    out: Annotated[Path, typer.Option("--out", help="Annotations Parquet, updated in place.")],
    url: Url = None,
) -> None:
    """Pull annotations changed since the last export into OUT (cursor kept in OUT.cursor.json)."""
    import pyarrow.parquet as pq

    from labeling import ANNOTATIONS, ExportCursor, LabelingError, export_annotations, merge_annotations

    with clean_errors(LabelingError):
        client = open_labelstudio(url)
        proj = client.find_project(project)
        if proj is None:
            raise CaravanError(f"no Label Studio project titled {project!r}; run `caravan labels sync` first")
        cursor_file = out.with_name(out.name + ".cursor.json")
        previous, cursor = ANNOTATIONS.empty_table(), None
        if out.exists() and cursor_file.exists():  # the cursor counts only beside the table it was applied to
            previous = _read_parquet(str(out)).cast(ANNOTATIONS)
            cursor = ExportCursor.from_json(cursor_file.read_text())
            if cursor.project_id != proj.id:
                raise CaravanError(
                    f"{cursor_file} belongs to project {cursor.project_id}, not {proj.id} "
                    f"({project!r}); use another --out"
                )
        ex = export_annotations(client, proj, cursor, previous=previous)
        removed = ex.removed_from(previous)
        table = merge_annotations(previous, ex)
        # Table first, cursor second: a crash in between re-exports (harmless), never skips.
        _write_atomic(out, lambda p: pq.write_table(table, p))
        _write_atomic(cursor_file, lambda p: p.write_text(ex.cursor.to_json()))
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(ex.skipped.items())) or "none"
        typer.echo(
            f"{ex.table.num_rows} new or changed annotations; {table.num_rows} in {out}; skipped: {skipped}; "
            f"removed (deleted in Label Studio): {len(removed)}"
        )


def aggregate(
    annotations: Annotated[str, typer.Argument(help="Annotations Parquet (from `caravan labels export`).")],
    consensus: Annotated[Path, typer.Option(help="Where to write the consensus table.")],
    quality: Annotated[Path, typer.Option(help="Where to write the annotator quality table.")],
    method: Annotated[
        str,
        typer.Option(
            help="dawid_skene, majority_vote, or one that weighs --probs: dawid_skene_model, crowdlab."
        ),
    ] = "dawid_skene",
    gold: Annotated[str | None, typer.Option(help="Gold answers Parquet (example_id, label).")] = None,
    probs: Annotated[
        str | None,
        typer.Option(
            help="For dawid_skene_model or crowdlab: Parquet of out-of-sample class probabilities, "
            "example_id and one float column per class named by the label (a model that never saw the "
            "example: cross-fitted)."
        ),
    ] = None,
    smoothing: Annotated[
        float | None,
        typer.Option(
            help="Pseudo-counts added to every Dawid-Skene confusion cell (default: labeling.auto_smoothing, "
            "1 or fewer where the label set is large for the answers; 0 is crowd-kit's own fit, where an "
            "answer an annotator never gave for a class rules it out)."
        ),
    ] = None,
) -> None:
    """Consensus labels and annotator quality."""
    import pyarrow.parquet as pq

    from labeling import ANNOTATIONS, METHODS, MODEL_METHODS
    from labeling import aggregate as run

    with clean_errors():
        if method not in METHODS:
            raise CaravanError(f"--method {method!r} is not one of {', '.join(METHODS)}")
        table = _read_parquet(annotations)
        missing = [c for c in ANNOTATIONS.names if c not in table.column_names]
        if missing:
            raise CaravanError(f"{annotations} lacks annotation column(s) {missing}")
        gold_table = _read_parquet(gold) if gold else None
        if gold_table is not None and not {"example_id", "label"} <= set(gold_table.column_names):
            raise CaravanError(f"{gold} must have columns example_id and label")
        if (method in MODEL_METHODS) != (probs is not None):
            raise CaravanError(f"--probs goes with --method {' or '.join(MODEL_METHODS)}, and they need it")
        model = _model_probs(probs) if probs else None
        try:
            result = run(table.cast(ANNOTATIONS), gold_table, method, model, smoothing)
        except ValueError as exc:  # answers the method cannot take (e.g. an annotator named as the model)
            raise CaravanError(str(exc)) from None
        pq.write_table(result.consensus, consensus)
        pq.write_table(result.quality, quality)
        typer.echo(
            f"{result.consensus.num_rows} consensus labels, {result.quality.num_rows} annotators ({method})"
        )


def _model_probs(path: str):
    """`--probs`: example_id and a float column per class, read as `labeling.ModelProbs`."""
    import numpy as np
    import pyarrow.types as pat

    from labeling import ModelProbs

    table = _read_parquet(path)
    classes = [c for c in table.column_names if c != "example_id"]
    bad = [c for c in classes if not pat.is_floating(table.schema.field(c).type)]
    if "example_id" not in table.column_names or not classes or bad:
        raise CaravanError(
            f"{path} must have an example_id column and one float column per class"
            + (f"; not floats: {', '.join(bad)}" if bad else "")
        )
    values = np.column_stack([table[c].to_numpy(zero_copy_only=False) for c in classes])
    try:
        return ModelProbs(tuple(table["example_id"].to_pylist()), tuple(classes), values)
    except ValueError as exc:
        raise CaravanError(f"{path}: {exc}") from None


def check_addresses(
    annotations: Annotated[str, typer.Argument(help="Annotations Parquet.")],
    registry: Annotated[str, typer.Option(help="Contributors registry (CSV or YAML).")],
) -> None:
    """Exit 0 only if every annotator has an EVM address in the registry; else name who lacks one."""
    from labeling import ContributorsError, ContributorsRegistry

    with clean_errors(ContributorsError):
        table = _read_parquet(annotations)
        if "annotator" not in table.column_names:
            raise CaravanError(f"{annotations} has no annotator column")
        found = ContributorsRegistry.load(registry).require(table["annotator"].to_pylist())
        typer.echo(f"all {len(found)} annotators have an address")


def register(app: typer.Typer) -> None:
    """Add the `caravan labels` group (sync, export, aggregate, check-addresses) to the root app."""
    labels_app = typer.Typer(
        help="Labeling in Label Studio: tasks, annotations, consensus.", no_args_is_help=True
    )
    for fn in (sync, export, aggregate):
        labels_app.command()(fn)
    labels_app.command("check-addresses")(check_addresses)
    app.add_typer(labels_app, name="labels")
