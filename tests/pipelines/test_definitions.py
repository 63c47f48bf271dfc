import subprocess
import sys

from pipelines.definitions import defs


def test_definitions_load():
    assert defs is not None


def test_cli_help_lists_store():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "store" in out
