"""Start and stop a real Label Studio from Python (tests, demo, end-to-end runs).

The same environment as ``scripts/labelstudio.sh`` (the admin account and its legacy API
token come from environment variables, so no browser is ever needed), but the process is
owned by this object: it runs in its own process group and is ended by its PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = REPO_ROOT / ".venv-labelstudio"
TOKEN_ENV = "LABEL_STUDIO_USER_TOKEN"
# The local admin's token when TOKEN_ENV is unset: scripts/labelstudio.sh and LabelStudioServer start
# Label Studio with it, so a local server works with nothing exported. Never use it on a shared server.
DEV_TOKEN = "caravan-local-dev-token"


class LabelStudioNotInstalled(RuntimeError):
    """The Label Studio virtualenv is missing."""


class LabelStudioStartError(RuntimeError):
    """Label Studio did not become healthy."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def labelstudio_token(env: Mapping[str, str] | None = None) -> str:
    """The Label Studio API token: `LABEL_STUDIO_USER_TOKEN`, else the local development default.

    The one place Caravan reads it (the Dagster resource, the `caravan labels` commands, the demo).
    A server that refuses the token answers 401, which the client names with this variable.
    """
    return (os.environ if env is None else env).get(TOKEN_ENV) or DEV_TOKEN


@dataclass
class LabelStudioServer:
    """One Label Studio process on 127.0.0.1 with its data in ``data_dir``."""

    data_dir: Path
    port: int = 0
    username: str = "admin@caravan.local"
    password: str = "caravan-admin"  # local default only; set LABEL_STUDIO_PASSWORD for real use
    token: str = DEV_TOKEN
    venv: Path = DEFAULT_VENV
    start_timeout_s: float = 180.0
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_env(cls, data_dir: Path, port: int = 0) -> LabelStudioServer:
        """Credentials from LABEL_STUDIO_USERNAME / _PASSWORD / _USER_TOKEN when set."""
        defaults = cls(data_dir=data_dir, port=port)
        return cls(
            data_dir=data_dir,
            port=port,
            username=os.environ.get("LABEL_STUDIO_USERNAME", defaults.username),
            password=os.environ.get("LABEL_STUDIO_PASSWORD", defaults.password),
            token=labelstudio_token(),
        )

    @property
    def url(self) -> str:
        """The base URL, no trailing slash; with ``port`` 0, final once ``start`` has picked a port."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id, also its group's (``stop`` signals that); None before ``start``, after ``stop``."""
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        """Where the server's output goes, appended to across starts: ``labelstudio.log`` in ``data_dir``."""
        return Path(self.data_dir) / "labelstudio.log"

    def _executable(self) -> Path:
        exe = Path(self.venv) / "bin" / "label-studio"
        if not exe.exists():
            raise LabelStudioNotInstalled(
                f"Label Studio is not installed in {self.venv}: run `make labelstudio-install`"
            )
        return exe

    def _env(self) -> dict[str, str]:
        data = str(Path(self.data_dir).resolve())
        return {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": data,
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            TOKEN_ENV: self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LOCAL_FILES_SERVING_ENABLED": "true",
            "LOCAL_FILES_DOCUMENT_ROOT": data,
            # Caravan's webhook receiver listens on 127.0.0.1, which Label Studio's SSRF guard
            # blocks by default; this server itself only listens on 127.0.0.1.
            "SSRF_PROTECTION_ENABLED": os.environ.get("SSRF_PROTECTION_ENABLED", "false"),
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "0",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        }

    def healthy(self) -> bool:
        """Whether ``/health`` answers 200 within 2 s (False if down or unreachable); ``start`` polls it."""
        try:
            return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> LabelStudioServer:
        """Launch the server and block until ``/health`` answers (or raise, leaving nothing running)."""
        if self._proc is not None:
            return self
        exe = self._executable()
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        cmd = [
            str(exe),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(Path(self.data_dir).resolve()),
        ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while not self.healthy():
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise LabelStudioStartError(
                    f"Label Studio exited with code {code} during start; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise LabelStudioStartError(
                    f"Label Studio did not answer {self.url}/health within "
                    f"{self.start_timeout_s:.0f}s; see {self.log_path}"
                )
            time.sleep(0.5)
        return self

    def stop(self, grace_s: float = 15.0) -> None:
        """End the server's process group by its PID: SIGTERM, then SIGKILL after ``grace_s``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
