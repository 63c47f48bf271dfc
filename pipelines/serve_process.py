"""`caravan serve` as a child process: started on a free loopback port, waited for until a deadline,
stopped. The one helper the demo, the tests and the serving bench start servers with.

A server must not outlive whoever started it. On Linux the child asks the kernel for SIGTERM when the
thread that started it ends (`PR_SET_PDEATHSIG`), so a parent killed with SIGKILL takes its server with
it; start a server from a thread that outlives it (`spawn` in the owning thread, `wait_ready` anywhere).
With `pid_file`, the server also records itself there, and the next start (or `stop_recorded`) stops a
server still recorded, after checking that the pid is that very `caravan serve` process (its command
line and start time), never anything else.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx
import psutil

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the checkout whose code the child runs
PR_SET_PDEATHSIG = 1


class ServeError(RuntimeError):
    """`caravan serve` did not come up (the message carries its last output or names its log)."""


def free_port() -> int:
    """A port on 127.0.0.1 the kernel just handed out (free now, not reserved until the server binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> Callable[[], None]:
    """preexec_fn: SIGTERM this child when the starting thread ends; exit now if it already has."""
    parent = os.getpid()  # evaluated in the parent, before the fork
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

    def arm() -> None:
        # An ignored SIGTERM survives exec, and would void the death signal: a parent that ignores it
        # (one started in the background that ran Dagster: pipelines.demo.sigterm_kept) left its
        # server's worker running after the server died.
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return arm


def start_child(command: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A helper process of this one (`caravan serve`'s attribution worker): it shares this process's
    output and gets SIGTERM when the thread that started it ends, as a server does from its starter."""
    return subprocess.Popen(
        list(command),
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent(),
    )


def _is_serve_command(cmdline: Sequence[str]) -> bool:
    return list(cmdline[1:4]) == ["-m", "pipelines", "serve"]


def stop_recorded(pid_file: Path, grace_s: float = 15.0) -> int | None:
    """Stop the `caravan serve` that `pid_file` records, if it still runs; the pid stopped, else None.

    A pid that now belongs to another process (other command line or start time) is left alone.
    The pid file is removed either way.
    """
    try:
        recorded = json.loads(Path(pid_file).read_text())
        proc = psutil.Process(int(recorded["pid"]))
        same = (
            _is_serve_command(recorded["cmdline"])
            and proc.cmdline() == recorded["cmdline"]
            and abs(proc.create_time() - float(recorded["create_time"])) < 1.0
            and proc.status() != psutil.STATUS_ZOMBIE
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, psutil.Error):  # unreadable record, or the process is gone
        same = False
    if same:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(grace_s)
    Path(pid_file).unlink(missing_ok=True)
    return proc.pid if same else None


class ServeProcess:
    """One `caravan serve RUN_ID` child on 127.0.0.1; a context manager, or spawn/wait_ready/stop.

    `env` is the child's environment (default this process's; `Settings.environ()` gives it the
    caller's settings), with this checkout first on PYTHONPATH so the child runs the caller's code.
    `price`, `ledger` and `extra` become `caravan serve` options; without `ledger` the settings' ledger
    is served. Output goes to `log_path` (appended) or to a temporary file quoted when start fails.
    """

    def __init__(
        self,
        run_id: str,
        env: Mapping[str, str] | None = None,
        *,
        price: int | None = None,
        ledger: str | os.PathLike[str] | None = None,
        extra: Sequence[str] = (),
        pid_file: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.run_id = run_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "pipelines", "serve", run_id, "--port", str(self.port)]
        if price is not None:
            self.command += ["--price", str(price)]
        if ledger is not None:
            self.command += ["--ledger", str(ledger)]
        self.command += list(extra)
        base = dict(os.environ if env is None else env)
        base["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), base.get("PYTHONPATH")) if p)
        self.env = base
        self.pid_file = pid_file
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        """The child's process id once spawned (it may have exited since); None before `spawn`."""
        return self.proc.pid if self.proc else None

    def spawn(self) -> ServeProcess:
        """Start the child (first stopping a server `pid_file` still records) without waiting for it."""
        if self.pid_file is not None:
            stop_recorded(self.pid_file)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab") if self.log_path else tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches the parent, which stops the child
            preexec_fn=_die_with_parent(),
        )
        if self.pid_file is not None:
            record = {
                "pid": self.proc.pid,
                "cmdline": self.command,
                "create_time": psutil.Process(self.proc.pid).create_time(),
                "url": self.url,
            }
            tmp = self.pid_file.with_name(self.pid_file.name + ".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(self.pid_file)
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> ServeProcess:
        """Block until GET /healthz answers 200; on exit or deadline, stop the child and raise ServeError."""
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                self._fail(f"`caravan serve {self.run_id}` exited during start")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self._fail(f"`caravan serve {self.run_id}` did not answer /healthz in {timeout_s:.0f} s")
            time.sleep(0.1)

    def start(self, timeout_s: float = 60.0) -> ServeProcess:
        """`spawn` then `wait_ready`: the server answering /healthz, or ServeError with the child stopped."""
        return self.spawn().wait_ready(timeout_s)

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 30.0) -> None:
        """Send `sig` (SIGKILL: no shutdown at all) and wait for the child to end."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=timeout_s)

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (uvicorn shuts down cleanly), SIGKILL after `grace_s`; forget the pid file."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.kill(signal.SIGTERM, grace_s)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()

    def _fail(self, what: str) -> None:
        """Stop the child and raise ServeError with the end of its output (or where its log is)."""
        if self.log_path is not None:
            output = f"see {self.log_path}"
        else:
            self._log.seek(0)
            output = self._log.read().decode(errors="replace")[-2000:].strip() or "no output"
        self.stop()
        raise ServeError(f"{what}: {output}")

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
