"""The chain client: web3.py against any JSON-RPC endpoint, for Caravan's three contracts.

Why it is more than `contract.functions.x().transact()`:
- every state-changing call is checked against chain state first (callers skip what is already
  there), estimated before signing (a revert becomes a named error and nothing is sent), paid
  for only if the balance covers `gas * maxFeePerGas + value`, and journaled by tx hash before it
  is sent, so a process that dies after sending waits for that same transaction on restart
  instead of sending a second one;
- reads and sends are retried a bounded number of times on connection errors (tenacity);
- the private key lives only in the `LocalAccount`; it is never logged or put in a message,
  and RPC URLs are shown without their path/query (providers put API keys there).

Configuration (environment, `CARAVAN_` prefix): `CARAVAN_RPC_URL` (default the local anvil on
127.0.0.1:8545), `CARAVAN_PRIVATE_KEY`, or `CARAVAN_KEYSTORE` + `CARAVAN_KEYSTORE_PASSWORD`
(an encrypted JSON keystore), `CARAVAN_CHAIN_ID` (refuse any other chain), `CARAVAN_CHAIN_DIR`
(deployments and tx journal; no default here: caravan's settings put it under `CARAVAN_HOME`, and a
read-only use needs none). With no key configured and a local
anvil on chain 31337, the first dev account anvil wrote to `<chain dir>/anvil.json` is used.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import eth_abi
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from eth_utils import function_signature_to_4byte_selector, is_checksum_address, to_checksum_address
from eth_utils.abi import get_abi_input_types, get_abi_output_types
from tenacity import Retrying as _Retrying
from tenacity import retry_if_exception_type, stop_after_attempt, wait_exponential
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)
from web3.logs import DISCARD

from provenance.anvil import ANVIL_CHAIN_ID, read_dev_keys
from provenance.errors import (
    AlreadyPublished,
    ChainError,
    InsufficientFunds,
    NotDeployed,
    RpcUnreachable,
    TransactionError,
    UnauthorizedPublisher,
    WrongChain,
)
from schemas import TOTAL_BPS

RPC_URL_ENV = "CARAVAN_RPC_URL"
PRIVATE_KEY_ENV = "CARAVAN_PRIVATE_KEY"
KEYSTORE_ENV = "CARAVAN_KEYSTORE"
KEYSTORE_PASSWORD_ENV = "CARAVAN_KEYSTORE_PASSWORD"
CHAIN_ID_ENV = "CARAVAN_CHAIN_ID"
CHAIN_DIR_ENV = "CARAVAN_CHAIN_DIR"
DEFAULT_RPC_URL = "http://127.0.0.1:8545"
ARTIFACTS = Path(__file__).with_name("contracts") / "artifacts"
REGISTRY = "ProvenanceRegistry"
DISTRIBUTOR = "RoyaltyDistributor"
CLAIMS = "SourceClaims"
PUBLISHING = (REGISTRY, DISTRIBUTOR)  # the contracts only a publisher (PUBLISHER_ROLE) writes to
CONTRACTS = (*PUBLISHING, CLAIMS)  # SourceClaims: anyone claims, no roles, no admin
PUBLISHER_ROLE = keccak(b"PUBLISHER_ROLE")
ZERO_ADDRESS = "0x" + "0" * 40
KIND_SHARES, KIND_AMOUNTS = 1, 2
NONCE_ATTEMPTS = 3
# HTTPProvider raises requests' ConnectionError/Timeout, both OSError subclasses.
_TRANSIENT = (OSError, ProviderConnectionError)

T = TypeVar("T")


def run_key(run_id: str) -> bytes:
    """The bytes32 a run is known by on chain (registry `runId`, distributor `id`).

    A 0x-prefixed 64-hex string is taken as the key itself, so keys read off the chain round-trip.
    """
    if not run_id:
        raise ChainError("a run id must be a non-empty string")
    if run_id.startswith("0x") and len(run_id) == 66:
        try:
            return bytes.fromhex(run_id[2:])
        except ValueError:
            pass
    return keccak(b"caravan/run/" + run_id.encode())


def redact_url(url: str) -> str:
    """scheme://host:port only: hosted RPC URLs carry API keys in their path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


@cache
def artifact(name: str) -> dict[str, Any]:
    """A committed compile artifact (ABI, bytecode) of `provenance/contracts`."""
    return json.loads((ARTIFACTS / f"{name}.json").read_text())


@dataclass(frozen=True)
class TxResult:
    """One action on chain. `skipped` means the chain already held it and nothing was sent."""

    action: str
    tx_hash: str | None
    gas_used: int
    block: int | None
    skipped: bool = False


@dataclass(frozen=True)
class Distribution:
    """A distributor entry as stored on chain (`kind` 1 = shares of deposits, 2 = fixed amounts)."""

    root: str
    kind: int
    token: str
    total_weight: int
    deposited: int
    claimed: int


@dataclass(frozen=True)
class RecordedEvent:
    """One `Recorded` event of the registry."""

    record_cid: str
    parent_cid: str
    run_key: str
    publisher: str
    tx_hash: str
    block: int


def load_account(env: Mapping[str, str] | None = None) -> LocalAccount | None:
    """The signing account from `CARAVAN_PRIVATE_KEY` or an encrypted keystore; None if neither."""
    env = os.environ if env is None else env
    key = env.get(PRIVATE_KEY_ENV)
    if key:
        try:
            return Account.from_key(key)
        except (ValueError, TypeError):
            raise ChainError(f"{PRIVATE_KEY_ENV} is not a valid 32-byte hex private key") from None
    keystore = env.get(KEYSTORE_ENV)
    if not keystore:
        return None
    password = env.get(KEYSTORE_PASSWORD_ENV)
    if password is None:
        raise ChainError(
            f"{KEYSTORE_ENV} is set but {KEYSTORE_PASSWORD_ENV} is not: set the keystore password"
        )
    try:
        encrypted = json.loads(Path(keystore).read_text())
    except (OSError, ValueError) as exc:
        raise ChainError(f"cannot read the keystore {keystore}: {exc}") from None
    try:
        return Account.from_key(Account.decrypt(encrypted, password))
    except ValueError:
        raise ChainError(f"cannot decrypt the keystore {keystore}: wrong {KEYSTORE_PASSWORD_ENV}?") from None


def write_keystore(account: LocalAccount, password: str, path: Path) -> Path:
    """Encrypt `account` to a JSON keystore (scrypt), readable by `load_account`. File mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(Account.encrypt(account.key, password), out)
    return path


class Chain:
    """One connection to one chain, with an optional signing account.

    Read-only use (trace, verify) needs no account. `expected_chain_id` refuses any other chain.
    """

    def __init__(
        self,
        rpc_url: str,
        *,
        account: LocalAccount | None = None,
        expected_chain_id: int | None = None,
        chain_dir: str | os.PathLike[str] | None = None,
        attempts: int = 4,
        rpc_timeout_s: float = 10.0,
        receipt_timeout_s: float = 180.0,
    ) -> None:
        self.rpc_url = rpc_url
        self.account = account
        self._chain_dir = None if chain_dir is None else Path(chain_dir)
        self.receipt_timeout_s = receipt_timeout_s
        self._attempts = attempts
        provider = HTTPProvider(
            rpc_url, request_kwargs={"timeout": rpc_timeout_s}, exception_retry_configuration=None
        )
        self.w3 = Web3(provider)
        self.chain_id: int = self._rpc("eth_chainId", lambda: self.w3.eth.chain_id)
        if expected_chain_id is not None and self.chain_id != expected_chain_id:
            raise WrongChain(
                f"{redact_url(rpc_url)} serves chain id {self.chain_id}, expected {expected_chain_id}: "
                f"point {RPC_URL_ENV} at the right network or change {CHAIN_ID_ENV}"
            )
        self._contracts: dict[str, Contract] = {}

    def __repr__(self) -> str:
        return f"Chain({redact_url(self.rpc_url)}, chain_id={self.chain_id}, account={self.address})"

    @property
    def chain_dir(self) -> Path:
        """Where this chain's deployments and transaction journal live (the caller's settings say)."""
        if self._chain_dir is None:
            raise ChainError(
                f"no chain directory: set {CHAIN_DIR_ENV} (caravan's settings put it under CARAVAN_HOME)"
            )
        return self._chain_dir

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, need_key: bool = False) -> Chain:
        """Configure from `CARAVAN_*` variables (see the module docstring)."""
        env = os.environ if env is None else env
        expected = env.get(CHAIN_ID_ENV)
        try:
            expected_id = int(expected) if expected else None
        except ValueError:
            raise ChainError(f"{CHAIN_ID_ENV}={expected!r} is not an integer chain id") from None
        chain_dir = Path(env[CHAIN_DIR_ENV]) if env.get(CHAIN_DIR_ENV) else None
        chain = cls(
            env.get(RPC_URL_ENV) or DEFAULT_RPC_URL,
            account=load_account(env),
            expected_chain_id=expected_id,
            chain_dir=chain_dir,
        )
        if (
            chain.account is None
            and chain_dir is not None
            and chain.chain_id == ANVIL_CHAIN_ID
            and _is_local(chain.rpc_url)
        ):
            config = chain_dir / "anvil.json"
            if config.is_file():
                chain.account = Account.from_key(read_dev_keys(config)[0])
        if need_key and chain.account is None:
            raise ChainError(
                f"no signing key: set {PRIVATE_KEY_ENV}, or {KEYSTORE_ENV} and {KEYSTORE_PASSWORD_ENV}"
            )
        return chain

    # ---- plumbing -------------------------------------------------------------------------

    @property
    def address(self) -> str | None:
        """The signing account's address; None for a read-only client (no key configured)."""
        return self.account.address if self.account else None

    def _rpc(self, what: str, fn: Callable[[], T]) -> T:
        """Run one RPC interaction with bounded retries on connection errors."""
        try:
            for attempt in _Retrying(
                stop=stop_after_attempt(self._attempts),
                wait=wait_exponential(multiplier=0.2, max=2.0),
                retry=retry_if_exception_type(_TRANSIENT),
                reraise=True,
            ):
                with attempt:
                    return fn()
        except _TRANSIENT as exc:
            raise RpcUnreachable(
                f"the JSON-RPC endpoint {redact_url(self.rpc_url)} did not answer {what} after "
                f"{self._attempts} attempts ({type(exc).__name__}): start it (`make anvil-start` for the "
                f"local chain) or set {RPC_URL_ENV}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _need_account(self) -> LocalAccount:
        if self.account is None:
            raise ChainError(f"this action signs a transaction: set {PRIVATE_KEY_ENV} or {KEYSTORE_ENV}")
        return self.account

    # ---- reading the chain ----------------------------------------------------------------
    # Plain reads behind the same retries and errors as everything else here, so callers
    # elsewhere (publishing, the auditor, the CLI) never reach for web3 or the retry plumbing.

    def block_number(self) -> int:
        """The chain's head block number."""
        return int(self._rpc("eth_blockNumber", lambda: self.w3.eth.block_number))

    def gas_price(self) -> int:
        """The node's current gas price in wei (what a publisher budgets its transactions at)."""
        return int(self._rpc("eth_gasPrice", lambda: self.w3.eth.gas_price))

    def balance(self, address: str) -> int:
        """The balance of `address` in wei."""
        return int(self._rpc("eth_getBalance", lambda: self.w3.eth.get_balance(to_checksum_address(address))))

    def logs(
        self, event: Any, *, from_block: int = 0, argument_filters: Mapping[str, Any] | None = None
    ) -> list[Any]:
        """The logs of one contract event (e.g. `chain.distributor.events.Claimed`) from `from_block` to
        the head, oldest first, optionally filtered on indexed arguments: one eth_getLogs."""
        filters = dict(argument_filters) if argument_filters is not None else None
        return list(
            self._rpc(
                "eth_getLogs",
                lambda: event.get_logs(from_block=from_block, to_block="latest", argument_filters=filters),
            )
        )

    def raw_logs(self, address: str, topics: Sequence[Any], *, from_block: int = 0) -> list[dict[str, Any]]:
        """The logs a contract at `address` emitted from `from_block` to the head whose topics match
        `topics` (eth_getLogs' filter: a hex topic, a list of alternatives, or None for any), oldest
        first, as the node sends them (hex strings): where thousands are read, web3's formatting and ABI
        decoding of each cost seconds more than the call (`claims.claimed_seals`: 12,000 logs)."""
        query = {"address": address, "topics": list(topics), "fromBlock": hex(from_block),
                 "toBlock": "latest"}
        reply = self._rpc("eth_getLogs", lambda: self.w3.provider.make_request("eth_getLogs", [query]))
        if "error" in reply:
            raise ChainError(f"eth_getLogs failed on {redact_url(self.rpc_url)}: {reply['error']}")
        return list(reply["result"])

    def batch_call(self, calls: Sequence[Any], *, size: int = 500) -> list[Any]:
        """The results of many read-only contract calls (web3 contract function calls), in order, sent
        as JSON-RPC batches of `size` calls: one round trip per batch instead of one per call. Each call
        is encoded and its result decoded by eth_abi directly: web3's formatting of each cost several
        times the node's answer (`verify`'s 1,000 proofs on chain: 1.7 s through web3, 0.26 s so)."""
        results: list[Any] = []
        for start in range(0, len(calls), size):
            chunk = calls[start : start + size]
            requests = [("eth_call", [{"to": c.address, "data": _calldata(c)}, "latest"]) for c in chunk]
            replies = self._rpc("batch eth_call", lambda r=requests: self.w3.provider.make_batch_request(r))
            if isinstance(replies, dict) or len(replies) != len(chunk):  # the batch refused, or cut short
                why = replies.get("error") if isinstance(replies, dict) else f"{len(replies)} answers"
                raise ChainError(f"a batch of {len(chunk)} eth_calls failed on {redact_url(self.rpc_url)}: "
                                 f"{why}")
            for call, reply in zip(chunk, sorted(replies, key=lambda x: x["id"]), strict=True):
                if "error" in reply:
                    raise ChainError(f"eth_call {call.fn_name} failed on {redact_url(self.rpc_url)}: "
                                     f"{reply['error']}")
                results.append(_returned(call, reply["result"]))
        return results

    # ---- deployments ----------------------------------------------------------------------

    @property
    def deployments_path(self) -> Path:
        """`deployments-<chain id>.json` in the chain dir: written by `deploy`, read by `contract`."""
        return self.chain_dir / DEPLOYMENTS_FILE.format(self.chain_id)

    @property
    def journal_path(self) -> Path:
        """`pending-<chain id>.json` in the chain dir: unconfirmed actions' tx hashes, awaited on restart."""
        return self.chain_dir / f"pending-{self.chain_id}.json"

    def deployments(self) -> dict[str, Any]:
        """This chain's deployments file (each contract's address, tx and block under "contracts"), `{}`
        before the first deploy; ChainError if it is not JSON."""
        try:
            return json.loads(self.deployments_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ChainError(f"{self.deployments_path} is not valid JSON ({exc}); fix or remove it") from None

    def has_code(self, name: str, address: str) -> bool:
        """Whether `address` holds contract `name`'s expected runtime code (a reset chain holds none):
        what `deploy` and `contract` check, and what `caravan chain status` reports."""
        code = self._rpc("eth_getCode", lambda: self.w3.eth.get_code(to_checksum_address(address)))
        return code.hex().removeprefix("0x") == artifact(name)["deployedBytecode"].removeprefix("0x")

    def deploy(self, *, admin: str | None = None) -> dict[str, TxResult]:
        """Deploy whatever is missing (idempotent): contracts already live at the recorded address
        with the expected code are kept. The deployments file is written after each contract."""
        account = self._need_account()
        admin = to_checksum_address(admin or account.address)
        known = self.deployments()
        results: dict[str, TxResult] = {}
        for name in CONTRACTS:
            entry = known.get("contracts", {}).get(name)
            if entry and self.has_code(name, entry["address"]):
                results[name] = TxResult(f"deploy:{name}", entry.get("tx_hash"), 0, entry.get("block"), True)
                continue
            factory = self.w3.eth.contract(abi=artifact(name)["abi"], bytecode=artifact(name)["bytecode"])
            args = (admin,) if name in PUBLISHING else ()
            result, receipt = self.send(f"deploy:{name}", factory.constructor(*args))
            known.setdefault("contracts", {})[name] = {
                "address": receipt["contractAddress"],
                "tx_hash": result.tx_hash,
                "block": result.block,
                **({"admin": admin} if args else {}),
            }
            known["chain_id"] = self.chain_id
            _write_json(self.deployments_path, known)
            self._contracts.pop(name, None)
            results[name] = result
        return results

    def contract(self, name: str) -> Contract:
        """The deployed contract `name` at its recorded address (cached); NotDeployed, naming the fix,
        where none is recorded for this chain or its code is not there."""
        if name not in self._contracts:
            entry = self.deployments().get("contracts", {}).get(name)
            if not entry:
                raise NotDeployed(
                    f"no {name} recorded for chain {self.chain_id} in {self.deployments_path}: "
                    "run `caravan chain deploy`"
                )
            if not self.has_code(name, entry["address"]):
                raise NotDeployed(
                    f"{name} at {entry['address']} has no (or other) code on chain {self.chain_id}; "
                    f"the chain was reset? run `caravan chain deploy` (or remove {self.deployments_path})"
                )
            self._contracts[name] = self.w3.eth.contract(
                address=to_checksum_address(entry["address"]), abi=artifact(name)["abi"]
            )
        return self._contracts[name]

    @property
    def registry(self) -> Contract:
        """The deployed ProvenanceRegistry (records anchored per run); NotDeployed if none is live here."""
        return self.contract(REGISTRY)

    @property
    def claims(self) -> Contract:
        """The deployed SourceClaims (providers' claims of their files); NotDeployed if none is live here."""
        return self.contract(CLAIMS)

    @property
    def distributor(self) -> Contract:
        """The deployed RoyaltyDistributor (roots, deposits, claims); NotDeployed if none is live here."""
        return self.contract(DISTRIBUTOR)

    # ---- sending --------------------------------------------------------------------------

    def _journal(self) -> dict[str, str]:
        try:
            return json.loads(self.journal_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _journal_set(self, action: str, tx_hash: str | None) -> None:
        journal = self._journal()
        if tx_hash is None:
            journal.pop(action, None)
        else:
            journal[action] = tx_hash
        _write_json(self.journal_path, journal)

    def _resume(self, action: str) -> tuple[TxResult, Any] | None:
        """A transaction journaled for `action` by an earlier process: wait for it if it is known."""
        tx_hash = self._journal().get(action)
        if not tx_hash:
            return None
        try:
            self._rpc("eth_getTransactionByHash", lambda: self.w3.eth.get_transaction(tx_hash))
        except TransactionNotFound:
            self._journal_set(action, None)  # never reached the node: send afresh
            return None
        receipt = self._wait(action, tx_hash)
        self._journal_set(action, None)
        if receipt["status"] != 1:
            return None
        return TxResult(action, tx_hash, receipt["gasUsed"], receipt["blockNumber"]), receipt

    def _wait(self, action: str, tx_hash: str) -> Any:
        try:
            return self._rpc(
                "eth_getTransactionReceipt",
                lambda: self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout_s),
            )
        except TimeExhausted:
            raise TransactionError(
                f"{action}: transaction {tx_hash} was not mined within {self.receipt_timeout_s:.0f} s; "
                "it stays journaled and the next run waits for it instead of sending it again"
            ) from None

    def send(self, action: str, fn: Any, *, value: int = 0) -> tuple[TxResult, Any]:
        """Send one contract transaction (`fn`: a web3 contract function or constructor call) the way
        every Caravan transaction goes: estimate, check funds, sign, journal under `action`, send, await
        the receipt. A journaled `action` resumes its transaction instead of sending it again. Public
        for transactions to contracts other than Caravan's two (benchmarks, tests of the contracts)."""
        resumed = self._resume(action)
        if resumed is not None:
            return resumed
        account = self._need_account()
        sender = account.address
        try:
            gas = self._rpc("eth_estimateGas", lambda: fn.estimate_gas({"from": sender, "value": value}))
        except (ContractCustomError, ContractLogicError) as exc:
            raise _revert_error(action, exc) from None
        except Web3RPCError as exc:
            raise _rpc_error(action, sender, exc) from None
        gas = gas * 6 // 5 + 10_000
        for attempt in range(NONCE_ATTEMPTS):
            tx_hash = self._sign_and_send(action, account, fn, gas, value)
            if tx_hash is not None:
                break
            if attempt == NONCE_ATTEMPTS - 1:
                raise TransactionError(
                    f"{action}: nonce of {sender} kept moving ({NONCE_ATTEMPTS} tries): is another process "
                    "sending from the same account? Give each writer its own key"
                )
        receipt = self._wait(action, tx_hash)
        self._journal_set(action, None)
        if receipt["status"] != 1:
            raise TransactionError(
                f"{action}: transaction {tx_hash} reverted (gas used {receipt['gasUsed']})"
            )
        return TxResult(action, tx_hash, receipt["gasUsed"], receipt["blockNumber"]), receipt

    def _sign_and_send(self, action: str, account: LocalAccount, fn: Any, gas: int, value: int) -> str | None:
        """One signed send at the account's next nonce; None if that nonce was taken meanwhile."""
        sender = account.address
        tx = self._rpc(
            "build",
            lambda: fn.build_transaction(
                {
                    "from": sender,
                    "value": value,
                    "gas": gas,
                    "chainId": self.chain_id,
                    "nonce": self.w3.eth.get_transaction_count(sender, "pending"),
                }
            ),
        )
        max_fee = tx.get("maxFeePerGas") or tx.get("gasPrice") or 0
        need = gas * max_fee + value
        balance = self.balance(sender)
        if balance < need:
            raise InsufficientFunds(
                f"{action}: account {sender} holds {balance} wei but needs up to {need} wei "
                f"(gas {gas} at {max_fee} wei + value {value}); fund it and run again"
            )
        signed = account.sign_transaction(tx)
        tx_hash = "0x" + bytes(signed.hash).hex()
        self._journal_set(action, tx_hash)  # before sending: a crash after this is resumable
        try:
            self._rpc(
                "eth_sendRawTransaction", lambda: self.w3.eth.send_raw_transaction(signed.raw_transaction)
            )
        except Web3RPCError as exc:
            text = str(exc).lower()
            if "already known" in text:
                return tx_hash
            self._journal_set(action, None)
            if "nonce too low" in text or "replacement transaction underpriced" in text:
                return None
            raise _rpc_error(action, sender, exc) from None
        return tx_hash

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return self._rpc(what, fn.call)
        except (ContractCustomError, ContractLogicError) as exc:
            raise _revert_error(what, exc) from None

    # ---- roles ----------------------------------------------------------------------------

    def is_publisher(self, address: str, contract: str = REGISTRY) -> bool:
        """Whether `address` holds PUBLISHER_ROLE on `contract` (the registry unless named)."""
        c = self.contract(contract)
        return bool(self._call("hasRole", c.functions.hasRole(PUBLISHER_ROLE, to_checksum_address(address))))

    def require_publisher(self) -> None:
        """Refuse early (before anything is sent) if the account may not publish on the registry and the
        distributor."""
        sender = self._need_account().address
        for name in PUBLISHING:
            if not self.is_publisher(sender, name):
                raise UnauthorizedPublisher(
                    f"account {sender} lacks PUBLISHER_ROLE on {name} at {self.contract(name).address}: "
                    "ask the contract admin to run `caravan chain grant <address>`"
                )

    def grant_publisher(self, address: str) -> list[TxResult]:
        """Grant `address` PUBLISHER_ROLE on the registry and distributor (the admin's key sends it); one
        result per contract, skipped where it already holds the role."""
        who = checked_address(address)
        out = []
        for name in PUBLISHING:
            action = f"grant:{name}:{who}"
            if self.is_publisher(who, name):
                out.append(TxResult(action, None, 0, None, True))
                continue
            out.append(self.send(action, self.contract(name).functions.grantRole(PUBLISHER_ROLE, who))[0])
        return out

    # ---- registry -------------------------------------------------------------------------

    def entry_of(self, record_cid: str) -> dict[str, Any] | None:
        """The registry entry of a record, or None if it was never recorded."""
        run, parent, publisher, block = self._call("entryOf", self.registry.functions.entryOf(record_cid))
        if block == 0:
            return None
        return {
            "run_key": "0x" + run.hex(),
            "parent_hash": "0x" + parent.hex(),
            "publisher": publisher,
            "block": block,
        }

    def is_recorded(self, record_cid: str) -> bool:
        """Whether the registry holds `record_cid`, under any run (`entry_of` says which)."""
        return bool(self._call("isRecorded", self.registry.functions.isRecorded(record_cid)))

    def record(self, record_cid: str, parent_cid: str, run_id: str) -> TxResult:
        """Record once. Already recorded under this run: skipped. Under another run: AlreadyPublished."""
        key = run_key(run_id)
        entry = self.entry_of(record_cid)
        action = f"record:{record_cid}"
        if entry is not None:
            if entry["run_key"] != "0x" + key.hex():
                raise AlreadyPublished(
                    f"record {record_cid} is already on chain under run key {entry['run_key']}, not run "
                    f"{run_id!r}: a record is anchored once, by the first run that publishes it"
                )
            return TxResult(action, None, 0, entry["block"], True)
        return self.send(action, self.registry.functions.record(record_cid, parent_cid, key))[0]

    def recorded_events(self, run_id: str | None = None, *, from_block: int = 0) -> list[RecordedEvent]:
        """`Recorded` events, all or for one run, oldest first."""
        event = self.registry.events.Recorded
        filters = {"runId": run_key(run_id)} if run_id is not None else None
        return [_recorded(log) for log in self.logs(event, from_block=from_block, argument_filters=filters)]

    def distributor_txs(self, event_name: str, keys: list[str], since: int) -> dict[str, list[str]]:
        """Transaction hashes of one distributor event per 0x key, oldest first (one eth_getLogs)."""
        event = self.distributor.events[event_name]
        ids = [bytes.fromhex(k[2:]) for k in keys]
        out: dict[str, list[str]] = {}
        for log in self.logs(event, from_block=since, argument_filters={"id": ids}):
            out.setdefault("0x" + bytes(log["args"]["id"]).hex(), []).append(
                "0x" + bytes(log["transactionHash"]).hex()
            )
        return out

    # ---- distributor ----------------------------------------------------------------------

    def distribution(self, run_id: str) -> Distribution | None:
        """The run's distributor entry as stored on chain, or None where its root was never published."""
        root, kind, token, total, deposited, claimed = self._call(
            "distributionOf", self.distributor.functions.distributionOf(run_key(run_id))
        )
        if kind == 0:
            return None
        return Distribution("0x" + root.hex(), kind, token, total, deposited, claimed)

    def create_distribution(
        self,
        run_id: str,
        root: str,
        *,
        kind: int = KIND_SHARES,
        token: str | None = None,
        total_weight: int = TOTAL_BPS,
    ) -> TxResult:
        """Publish a run's root once. Same root already there: skipped; another root: AlreadyPublished."""
        action = f"root:{'0x' + run_key(run_id).hex()}"
        existing = self.distribution(run_id)
        if existing is not None:
            if (
                existing.root != root.lower()
                or existing.kind != kind
                or existing.total_weight != total_weight
            ):
                raise AlreadyPublished(
                    f"run {run_id!r} already has root {existing.root} on chain (kind {existing.kind}, total "
                    f"{existing.total_weight}); roots never change: publish the new weights as a new run"
                )
            return TxResult(action, None, 0, None, True)
        token_address = checked_address(token) if token else ZERO_ADDRESS
        fn = self.distributor.functions.createDistribution(
            run_key(run_id), bytes.fromhex(root.removeprefix("0x")), kind, token_address, total_weight
        )
        return self.send(action, fn)[0]

    def deposit(self, run_id: str, amount_wei: int, *, action: str | None = None) -> TxResult:
        """Pay ETH revenue into a run. Not idempotent by nature: pass a unique `action` (e.g. an
        invoice id) to make a retried deposit resume its journaled transaction instead of paying twice."""
        _positive(amount_wei)
        fn = self.distributor.functions.deposit(run_key(run_id))
        return self.send(action or f"deposit:{run_id}:{os.urandom(8).hex()}", fn, value=amount_wei)[0]

    def deposit_token(self, run_id: str, amount: int, *, action: str | None = None) -> list[TxResult]:
        """Approve then deposit `amount` of the run's ERC-20."""
        _positive(amount)
        dist = self.distribution(run_id)
        if dist is None or dist.token == ZERO_ADDRESS:
            raise ChainError(f"run {run_id!r} has no ERC-20 distribution: deposit ETH with deposit()")
        token = self.w3.eth.contract(address=dist.token, abi=artifact("TestToken")["abi"])
        tag = action or f"{run_id}:{os.urandom(8).hex()}"
        approve = self.send(f"approve:{tag}", token.functions.approve(self.distributor.address, amount))[0]
        deposit = self.send(
            f"deposit:{tag}", self.distributor.functions.depositToken(run_key(run_id), amount)
        )[0]
        return [approve, deposit]

    def claimable(self, run_id: str, account: str, weight: int) -> int:
        """What `claim` would pay now for the leaf (`account`, `weight`), proof unchecked; 0 if none."""
        fn = self.distributor.functions.claimable(run_key(run_id), checked_address(account), weight)
        return int(self._call("claimable", fn))

    def claim(self, run_id: str, account: str, weight: int, proof: list[str]) -> tuple[TxResult, int]:
        """Claim what `account` is owed now; returns the tx and the amount paid (from the event)."""
        who = checked_address(account)
        fn = self.distributor.functions.claim(
            run_key(run_id), who, weight, [bytes.fromhex(p[2:]) for p in proof]
        )
        result, receipt = self.send(f"claim:{run_id}:{who}:{self.claimable(run_id, who, weight)}", fn)
        paid = self.distributor.events.Claimed().process_receipt(receipt, errors=DISCARD)
        return result, sum(int(e["args"]["amount"]) for e in paid)

    # ---- reading transactions -------------------------------------------------------------

    def events_of(self, tx_hash: str) -> list[tuple[str, dict[str, Any]]]:
        """The Caravan events a transaction emitted, as (event name, args)."""
        try:
            receipt = self._rpc(
                "eth_getTransactionReceipt", lambda: self.w3.eth.get_transaction_receipt(tx_hash)
            )
        except TransactionNotFound:
            raise ChainError(f"transaction {tx_hash} is not known to chain {self.chain_id}") from None
        out: list[tuple[str, dict[str, Any]]] = []
        for contract, names in (
            (self.registry, ("Recorded",)),
            (self.distributor, ("DistributionCreated", "Deposited", "Claimed")),
        ):
            for name in names:
                for log in contract.events[name]().process_receipt(receipt, errors=DISCARD):
                    out.append((name, dict(log["args"])))
        return out


def checked_address(address: object) -> str:
    """A non-zero EIP-55 address, or a ChainError saying how to write one."""
    if not isinstance(address, str) or not Web3.is_address(address):
        raise ChainError(f"{address!r} is not a 20-byte hex EVM address")
    if not is_checksum_address(address):
        raise ChainError(f"address {address!r} is not EIP-55 checksummed; use {to_checksum_address(address)}")
    if address.lower() == ZERO_ADDRESS:
        raise ChainError("the zero address cannot be used here")
    return address


def _positive(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ChainError(f"amount {amount!r} must be a positive integer (wei or token units)")


def _is_local(url: str) -> bool:
    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def _recorded(log: Any) -> RecordedEvent:
    args = log["args"]
    return RecordedEvent(
        record_cid=args["recordCid"],
        parent_cid=args["parentCid"],
        run_key="0x" + bytes(args["runId"]).hex(),
        publisher=args["publisher"],
        tx_hash="0x" + bytes(log["transactionHash"]).hex(),
        block=int(log["blockNumber"]),
    )


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(doc, tmp, indent=2, sort_keys=True)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


@cache
def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    """Custom-error selectors of every contract we talk to (incl. OpenZeppelin's)."""
    table: dict[bytes, tuple[str, list[str]]] = {}
    for path in ARTIFACTS.glob("*.json"):
        for item in json.loads(path.read_text())["abi"]:
            if item["type"] == "error":
                types = [i["type"] for i in item["inputs"]]
                table[keccak(f"{item['name']}({','.join(types)})".encode())[:4]] = (item["name"], types)
    return table


def decode_revert(data: str | bytes | None) -> str:
    """`Name(arg, ...)` for a custom error's revert data, else the raw data."""
    if isinstance(data, str):
        raw = bytes.fromhex(data.removeprefix("0x")) if data.startswith("0x") else b""
    else:
        raw = data or b""
    if len(raw) >= 4 and raw[:4] in _error_table():
        name, types = _error_table()[raw[:4]]
        try:
            args = eth_abi.decode(types, raw[4:])
        except Exception:  # noqa: BLE001 - malformed data: show the name only
            return name
        shown = ["0x" + a.hex() if isinstance(a, bytes) else str(a) for a in args]
        return f"{name}({', '.join(shown)})"
    return f"revert data {data!r}"


def _revert_error(action: str, exc: Exception) -> TransactionError:
    if isinstance(exc, ContractCustomError):
        reason = decode_revert(exc.data if isinstance(exc.data, str | bytes) else str(exc.message))
    else:
        reason = str(getattr(exc, "message", None) or exc)
    if reason.startswith("AccessControlUnauthorizedAccount"):
        return UnauthorizedPublisher(
            f"{action}: refused by the contract: {reason}; ask the admin to grant the role"
        )
    if reason.startswith(("AlreadyRecorded", "DistributionExists")):
        return AlreadyPublished(f"{action}: {reason}")
    return TransactionError(f"{action}: the contract refused it: {reason}")


DEPLOYMENTS_FILE = "deployments-{}.json"  # in the chain dir, one per chain id


def deployed_from(chain_dir: str | Path) -> bool:
    """Whether Caravan's contracts were deployed from this chain dir (a deployments file, of any chain, in
    it): known without asking a node, so what reads the chain only where they were asks none otherwise."""
    return any(Path(chain_dir).glob(DEPLOYMENTS_FILE.format("*")))


def _calldata(call: Any) -> str:
    """A web3 contract function call's calldata: its selector and eth_abi-encoded arguments."""
    arguments = eth_abi.encode(get_abi_input_types(call.abi), call.args)
    return "0x" + (function_signature_to_4byte_selector(call.signature) + arguments).hex()


def _returned(call: Any, data: str) -> Any:
    """A call's return data decoded as web3 gives it: the value itself where there is one, addresses
    checksummed."""
    types = get_abi_output_types(call.abi)
    if types and data in ("0x", ""):
        raise ChainError(f"{call.fn_name} at {call.address} returned nothing: no contract is deployed there")
    values = [to_checksum_address(v) if t == "address" else v
              for t, v in zip(types, eth_abi.decode(types, bytes.fromhex(data[2:])), strict=True)]
    return values[0] if len(values) == 1 else values


def _rpc_error(action: str, sender: str, exc: Web3RPCError) -> ChainError:
    text = str(getattr(exc, "message", None) or exc)
    if "insufficient funds" in text.lower():
        return InsufficientFunds(f"{action}: account {sender} cannot pay for this transaction: {text}")
    return TransactionError(f"{action}: the node refused the transaction: {text}")
