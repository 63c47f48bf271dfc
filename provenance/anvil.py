"""Start and stop a local `anvil` node (from the npm package) for the demo, tests and benches.

The binary ships inside `@foundry-rs/anvil-linux-amd64`; `CARAVAN_ANVIL_BIN` overrides it.
The node binds 127.0.0.1 only. With `state_path`, anvil loads the file at start and dumps its
state there on exit (and every `state_interval_s`), so records survive restarts. Anvil writes
its funded dev accounts to `config_path` (`--config-out`); `dev_keys` reads them from there
rather than from keys copied into this repository.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from provenance.errors import ChainError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from provenance.chain import Chain

REPO_ROOT = Path(__file__).resolve().parents[1]
ANVIL_BIN_ENV = "CARAVAN_ANVIL_BIN"
DEFAULT_BINARY = REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
ANVIL_CHAIN_ID = 31337


def free_port() -> int:
    """A port the OS just handed out on 127.0.0.1 (bind to 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def anvil_binary() -> Path:
    """The anvil executable: `CARAVAN_ANVIL_BIN`, else the one `npm ci` installs (ChainError if absent)."""
    path = Path(os.environ.get(ANVIL_BIN_ENV) or DEFAULT_BINARY)
    if not path.is_file():
        raise ChainError(
            f"anvil binary not found at {path}: run `npm ci` (or `make setup`), or set {ANVIL_BIN_ENV}"
        )
    return path


@dataclass
class AnvilNode:
    """One anvil process. Use as a context manager, or call start()/stop()."""

    port: int = 0
    state_path: Path | None = None
    chain_id: int = ANVIL_CHAIN_ID
    extra_args: tuple[str, ...] = ()
    log_path: Path | None = None
    config_path: Path | None = None
    state_interval_s: int | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def rpc_url(self) -> str:
        """The node's JSON-RPC URL on 127.0.0.1 (port 0 until `start` picks a free one)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dev_keys(self) -> list[str]:
        """Private keys of anvil's funded dev accounts (public test keys; local chains only)."""
        if self.config_path is None:
            raise ChainError("this AnvilNode was started without config_path; dev keys are unknown")
        return read_dev_keys(self.config_path)

    @property
    def running(self) -> bool:
        """Whether the anvil process this node started is still alive (one started elsewhere is not seen)."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 30.0) -> AnvilNode:
        """Start anvil (on a free port unless `port` is set) and wait until it answers RPC (and has written
        `config_path`); ChainError if it exits or stays silent past `timeout_s`. A running node is kept."""
        if self.running:
            return self
        self.port = self.port or free_port()
        args = [
            str(anvil_binary()),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
        ]
        if self.state_path is not None:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            args += ["--state", str(self.state_path)]
            if self.state_interval_s:
                args += ["--state-interval", str(self.state_interval_s)]
        if self.config_path is not None:
            self.config_path.parent.mkdir(parents=True, exist_ok=True)
            self.config_path.unlink(missing_ok=True)
            args += ["--config-out", str(self.config_path)]
        args += list(self.extra_args)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            if self.log_path:
                log.close()  # type: ignore[union-attr]
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise ChainError(
                    f"anvil exited with code {self._process.returncode} while starting on {self.rpc_url}"
                )
            if _answers(self.rpc_url) and (self.config_path is None or self.config_path.is_file()):
                return
            time.sleep(0.05)
        self.stop()
        raise ChainError(f"anvil did not answer on {self.rpc_url} within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (anvil dumps `--state` on the way out), then SIGKILL if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)

    def __enter__(self) -> AnvilNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_dev_keys(config_path: Path) -> list[str]:
    """The `private_keys` anvil wrote with `--config-out`."""
    try:
        keys = json.loads(Path(config_path).read_text())["private_keys"]
    except (OSError, ValueError, KeyError) as exc:
        raise ChainError(f"cannot read anvil's dev accounts from {config_path}: {exc}") from None
    return [str(k) for k in keys]


def funded(chain: Chain, account: LocalAccount, wei: int = 10**18) -> Chain:
    """`chain`'s deployment, sending from `account`, which anvil gives `wei` first (`anvil_setBalance`, a
    local chain's faucet): how the demo, tests and benches act as a provider who pays its own gas."""
    from provenance.chain import Chain  # chain imports this module

    chain.w3.provider.make_request("anvil_setBalance", [account.address, hex(wei)])
    return Chain(chain.rpc_url, account=account, chain_dir=chain.chain_dir)


def _answers(url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return "result" in json.loads(response.read())
    except (OSError, ValueError):
        return False
