"""The demo's `caravan serve` child never outlives the demo: it dies when the demo is killed with SIGKILL,
and a server still recorded in CARAVAN_HOME/serve.pid is stopped by the next demo, never a stranger."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from pipelines.serve_process import ServeProcess, stop_recorded

REPO = Path(__file__).resolve().parents[2]

# Starts the server exactly as the demo does (pipelines.demo.serving), reports it, then waits to be killed.
PARENT = """
import json, sys, time
from pipelines.demo import serving, serve_pid_file
from pipelines.settings import load_settings

settings = load_settings()
with serving(settings, sys.argv[1]) as url:
    record = json.loads(serve_pid_file(settings).read_text())
    print(json.dumps({"url": url, "pid": record["pid"]}), flush=True)
    time.sleep(600)
"""


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _env(world, home: Path) -> dict[str, str]:
    return {**world.env, "CARAVAN_HOME": str(home), "PYTHONPATH": str(REPO)}


def test_a_demo_killed_with_sigkill_leaves_no_server_listening(world, tmp_path):
    home = tmp_path / "home"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, world.run.run_id],
        env=_env(world, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = parent.stdout.readline()
        assert line, parent.stderr.read()[-3000:]
        served = json.loads(line)
        assert _listening(served["url"])
        parent.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel can end the child now
        parent.wait(timeout=30)
        deadline = time.monotonic() + 20
        while (_listening(served["url"]) or not _gone(served["pid"])) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _listening(served["url"]) and _gone(served["pid"])
    finally:
        if parent.poll() is None:
            parent.kill()
    # the killed demo's record remains; the next demo finds its server already gone and drops the record
    assert stop_recorded(home / "serve.pid") is None and not (home / "serve.pid").exists()


def test_the_next_demo_stops_a_recorded_server_and_nothing_else(world, tmp_path):
    pid_file = tmp_path / "serve.pid"
    leftover = ServeProcess(world.run.run_id, _env(world, tmp_path), pid_file=pid_file).start()
    try:
        assert stop_recorded(pid_file) == leftover.pid
        assert leftover.proc.wait(timeout=30) is not None and not _listening(leftover.url)
        assert not pid_file.exists()
    finally:
        leftover.kill()

    # a recorded pid now held by another process (pid reuse) is left alone
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        pid_file.write_text(
            json.dumps(
                {
                    "pid": stranger.pid,
                    "cmdline": [sys.executable, "-m", "pipelines", "serve", world.run.run_id],
                    "create_time": psutil.Process(stranger.pid).create_time(),
                }
            )
        )
        assert stop_recorded(pid_file) is None
        assert stranger.poll() is None and not pid_file.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_a_child_dies_with_its_parent_even_where_the_parent_ignores_sigterm():
    """The death signal is SIGTERM, and an ignored signal survives exec: a child of a process that
    ignores it (pytest does between Dagster runs) must have it back, or it outlives its parent."""
    from pipelines.serve_process import start_child

    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        child = start_child([sys.executable, "-c", "import time; time.sleep(60)"])
    finally:
        signal.signal(signal.SIGTERM, before)
    try:
        status = Path(f"/proc/{child.pid}/status").read_text()
        ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn")).split()[1], 16)
        assert not ignored & (1 << (signal.SIGTERM - 1))
    finally:
        child.kill()
        child.wait()
