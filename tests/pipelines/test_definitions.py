import subprocess
import sys
from pathlib import Path

import dagster as dg

from pipelines.definitions import defs


def test_definitions_hold_the_flow_its_jobs_checks_and_resources():
    """The one Definitions resolves (every job finds its resources) and holds DESIGN.md's flow."""
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    assets = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert assets == {
        "raw_dataset", "dataset_snapshot", "labeling_tasks", "annotations", "consensus_labels",
        "annotator_quality", "labeled_dataset", "trained_model", "model_encoding", "example_attribution",
        "trak_features", "label_review", "review_queue", "contributor_weights", "provenance_record",
        "royalty_root",
    }

    def upstream(asset: str) -> set[str]:
        return {k.to_user_string() for k in graph.get(dg.AssetKey(asset)).parent_keys}

    assert "raw_dataset" in upstream("dataset_snapshot")
    assert "annotations" in upstream("consensus_labels")
    assert "example_attribution" in upstream("contributor_weights")
    assert "contributor_weights" in upstream("provenance_record")
    assert "provenance_record" in upstream("royalty_root")
    assert {"labeled_dataset", "model_encoding"} <= upstream("label_review")
    assert "label_review" in upstream("review_queue")
    from pipelines.automation import LABELING_STAGE, attribution_job

    def selected(selection) -> set[str]:
        return {k.to_user_string() for k in selection.resolve(graph)}

    # each attribution run flags likely mislabels and queues them; a labeling sync does not
    assert {"label_review", "review_queue"} <= selected(attribution_job.selection)
    assert not {"label_review", "review_queue"} & selected(LABELING_STAGE)

    jobs = {j.name for j in repo.get_all_jobs()}
    assert {"labeling_sync", "attribution_run", "settlement_job", "sharded_features"} <= jobs
    assert {s.name for s in repo.sensor_defs} == {"annotation_sensor"}
    assert {s.name: s.job_name for s in repo.schedule_defs} == {
        "daily_attribution": "attribution_run", "settlement_job_schedule": "settlement_job",
    }
    assert {"store", "chain", "labelstudio", "ledger", "contributors", "catalog", "index", "lineage",
            "io_manager"} <= set(repo.get_top_level_resources())

    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert ("contributor_weights", "weights_sum_to_10000") in checks
    assert ("contributor_weights", "weighted_contributors_have_addresses") in checks
    assert ("royalty_root", "onchain_root_matches") in checks
    assert ("contributor_weights", "some_provider_helped") in checks
    for asset in ("raw_dataset", "dataset_snapshot", "labeled_dataset", "trained_model",
                  "example_attribution", "contributor_weights"):
        assert (asset, f"{asset}_cid_verifies") in checks
    blocking = {k.name for k in graph.asset_check_keys if graph.get_check_spec(k).blocking}
    assert {"weights_sum_to_10000", "weighted_contributors_have_addresses"} <= blocking
    assert ("annotations", "annotations_match_label_studio") in checks  # before any split is made of them
    assert "annotations_match_label_studio" in blocking
    assert ("annotations", "answers_match_their_claims") in checks  # held to their labelers' claims
    assert "answers_match_their_claims" in blocking


def test_cli_help_lists_store():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "store" in out


def test_every_command_says_what_it_does_in_one_paragraph_line():
    """A command list shows the first paragraph of each command's help and keeps its line breaks: a
    summary broken over two source lines reads "...the chain dates" / "them, ..." there."""
    import typer.main

    from pipelines.cli import app

    def commands(group, prefix=""):
        for name, cmd in group.commands.items():
            inner = getattr(cmd, "commands", None)
            yield from commands(cmd, f"{prefix}{name} ") if inner else [(prefix + name, cmd)]

    broken = [name for name, cmd in commands(typer.main.get_command(app))
              if "\n" in (cmd.help or "").strip().split("\n\n")[0]]
    assert not broken, f"commands whose summary spans lines: {broken}"


def test_dagster_cli_materializes_a_partition_with_the_multiprocess_executor(tmp_path):
    """`dagster asset materialize` loads the definitions; its default executor runs each step in a process."""
    import os
    from pathlib import Path

    from pipelines.demo_data import write_digits

    env = {**os.environ, "CARAVAN_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    bin_dir = Path(sys.executable).parent
    folder = write_digits(tmp_path / "data", limit=30)
    subprocess.run(
        [
            str(bin_dir / "caravan"),
            "ingest",
            str(folder),
            "--version",
            "v1",
            "--kind",
            "image",
            "--field",
            "image",
            "--choices",
            "0,1,2,3,4,5,6,7,8,9",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    run = subprocess.run(
        [
            str(bin_dir / "dagster"),
            "asset",
            "materialize",
            "-m",
            "pipelines.definitions",
            "--select",
            "raw_dataset,dataset_snapshot",
            "--partition",
            "v1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "multiprocess" in run.stderr.lower()
    pointer = tmp_path / "home" / "assets" / "dataset_snapshot" / "v1.json"
    assert pointer.exists() and (tmp_path / "home" / "lineage" / "snapshot" / "v1.json").exists()


def test_a_ledger_url_reaches_dagster_as_an_env_var_never_its_value(monkeypatch, tmp_path):
    """A PostgreSQL URL (maybe with a password) is read at run time; Dagster's config shows only its name."""
    from pipelines.resources import resources_for
    from pipelines.settings import load_settings

    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path))
    monkeypatch.setenv("CARAVAN_LEDGER", "postgresql://caravan:s3cret@db:5432/caravan")
    ledger = resources_for(load_settings())["ledger"]
    assert "s3cret" not in repr(ledger.path) and "CARAVAN_LEDGER" in repr(ledger.path)
    assert ledger.path.get_value() == "postgresql://caravan:s3cret@db:5432/caravan"
    monkeypatch.setenv("CARAVAN_LEDGER", "ledger.sqlite")
    assert resources_for(load_settings())["ledger"].path == str(Path.cwd() / "ledger.sqlite")


def _weights(rows: list[tuple[str, str, float, int]]):
    import pyarrow as pa

    from schemas import WEIGHTS_SCHEMA

    return pa.table(
        [[c for c, *_ in rows], ["0x" + "11" * 20] * len(rows), [r for _, r, *_ in rows],
         [s for *_, s, _ in rows], [b for *_, b in rows]],
        schema=WEIGHTS_SCHEMA,
    )


def test_a_split_where_no_provider_helped_warns_and_names_the_fix():
    """Every provider hurt the targets: the split is valid (labelers take it all) but the check warns."""
    import dagster as dg

    from pipelines.checks import provider_help_check

    none_helped = provider_help_check(
        _weights([("p1", "provider", -0.5, 0), ("p2", "provider", -0.1, 0), ("l1", "labeler", 2.0, 10_000)])
    )
    assert not none_helped.passed and none_helped.severity == dg.AssetCheckSeverity.WARN
    assert "--validation" in none_helped.description
    assert none_helped.metadata["providers_paid"].value == 0

    one_helped = provider_help_check(
        _weights([("p1", "provider", 0.5, 7000), ("p2", "provider", -0.1, 0), ("l1", "labeler", 2.0, 3000)])
    )
    assert one_helped.passed and one_helped.metadata["providers_paid"].value == 1
