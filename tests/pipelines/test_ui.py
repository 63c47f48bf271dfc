"""The Dagster UI serves Caravan's asset graph: a real webserver, a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from provenance.anvil import free_port

CHROMIUM = shutil.which("chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--window-size=1600,1000",
    "--virtual-time-budget=20000",
]


@pytest.fixture
def webserver(tmp_path):
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "CARAVAN_HOME": str(tmp_path / "caravan")}
    exe = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen(
        [str(exe), "-m", "pipelines.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "dagster-webserver did not come up"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_asset_graph_page_renders_every_stage(webserver, tmp_path):
    assert CHROMIUM, "headless Chromium is missing: `make setup` installs Debian's chromium"
    page = f"{webserver}/asset-groups"
    shot = tmp_path / "asset-graph.png"
    subprocess.run(
        [CHROMIUM, *FLAGS, f"--screenshot={shot}", page], check=True, capture_output=True, timeout=120
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, "--dump-dom", page], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    for group in ("ingest", "labeling", "training", "review", "royalties"):
        assert group in dom, f"group {group} missing from the rendered asset graph"
