import subprocess
import sys
from pathlib import Path

from pipelines.definitions import defs


def test_definitions_load():
    assert defs is not None


def test_cli_help_lists_store():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "store" in out


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
            "pixels",
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
