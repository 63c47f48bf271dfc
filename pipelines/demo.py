"""The main job end to end: data from five providers, simulated labelers in the real Label Studio,
the whole asset graph, a revenue deposit, one contributor's claim, the auditor's verify, and
paid predictions of the served model settled as an epoch on chain.

The data is the bundled digits as 8×8 PNGs (an image dataset), or any text, image or table dataset with
its true labels in one column (`UserData`): the truth column is dropped before ingest, and reaches
training only through the simulated annotators' answers in Label Studio.

Every step is idempotent, so a second run (or a run after a crash) reuses what exists: the
catalog entry, the Label Studio tasks and annotations, the pins, the records and the
on-chain entries. Only revenue is new each run (a deposit, and the new predictions' epoch).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import json
import math
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from eth_account import Account
from eth_account.signers.local import LocalAccount

from labeling import (
    LabelConfigError,
    LabelStudioClient,
    ProjectSpec,
    SimulatedAnswer,
    check_show,
    import_with_answers,
    labeling_record,
    labelstudio_token,
    register,
    simulate_answers,
    simulated_annotators,
)
from pipelines.datasets import RESERVED, DatasetError, Payload, example_id, load_source, to_examples
from pipelines.demo_data import FIELD, write_digits
from pipelines.serve_process import ServeError, ServeProcess, stop_recorded
from pipelines.settings import Settings

REPO = Path(__file__).resolve().parents[1]
VERSION = "digits-v2"  # v1 held the digits as lists of numbers; v2 holds them as PNGs
CHOICES = tuple(str(d) for d in range(10))
ACCURACIES = (0.95, 0.85, 0.7, 0.55)
DEPOSIT_WEI = 10**18  # 1 ETH of model revenue
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class DemoError(RuntimeError):
    """A demo step that cannot go on; the message names the service or input and the fix."""


def _answers(url: str, path: str = "/health", payload: bytes | None = None) -> bool:
    import httpx

    try:
        if payload is None:
            return httpx.get(url + path, timeout=2).status_code == 200
        return httpx.post(
            url, content=payload, headers={"Content-Type": "application/json"}, timeout=2
        ).is_success
    except httpx.HTTPError:
        return False


def chain_answers(rpc_url: str) -> bool:
    """True when the node at `rpc_url` answers a JSON-RPC `eth_chainId` request (HTTP success within 2 s)."""
    return _answers(rpc_url, payload=b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}')


def ensure_services(settings: Settings, *, start: bool) -> None:
    """Label Studio and the chain answer, started by the project scripts when allowed.

    The scripts keep their state under the settings' home (they read CARAVAN_HOME, CARAVAN_CHAIN_DIR).
    """
    env = settings.environ()
    checks = [
        (
            "Label Studio",
            settings.labelstudio_url,
            lambda: _answers(settings.labelstudio_url),
            ["scripts/labelstudio.sh", "start"],
            "LABEL_STUDIO_PORT",
            "make labelstudio-start",
        ),
        (
            "the chain node (anvil)",
            settings.rpc_url,
            lambda: chain_answers(settings.rpc_url),
            ["scripts/anvil.sh", "start"],
            "CARAVAN_ANVIL_PORT",
            "make anvil-start",
        ),
    ]
    for name, url, alive, script, port_var, how in checks:
        if alive():
            continue
        if not start or not url.startswith("http://127.0.0.1:"):
            raise DemoError(
                f"{name} does not answer at {url}: start it with `{how}` (or point "
                "the CARAVAN_* URL at a running one)"
            )
        port = url.rsplit(":", 1)[1].rstrip("/")
        done = subprocess.run(
            ["bash", *script], cwd=REPO, env={**env, port_var: port}, capture_output=True, text=True
        )
        if done.returncode != 0 or not alive():
            raise DemoError(f"could not start {name} at {url}: {done.stderr.strip() or done.stdout.strip()}")
    _require_chain_key(settings)


def _require_chain_key(settings: Settings) -> None:
    """The demo signs on chain: with no key in the environment it uses the dev key its own anvil
    wrote under this home; a chain that answers without one was started under another home."""
    from provenance import load_account

    if load_account(settings.environ()) is None and not (settings.chain_dir / "anvil.json").is_file():
        raise DemoError(
            f"the chain at {settings.rpc_url} answers, but no signing key is in reach: set "
            f"CARAVAN_PRIVATE_KEY, or stop that chain (it was not started under {settings.home}: "
            "`make anvil-stop` with the CARAVAN_HOME it was started with) and run the demo again"
        )


@contextlib.contextmanager
def single_run(lock_path: Path) -> Iterator[None]:
    """Refuse a second demo while one runs (an flock, released even if the process dies)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(
                f"another `caravan demo` is running (lock {lock_path}); wait for it to finish"
            ) from None
        yield


def demo_account(contributor: str) -> LocalAccount:
    """A demo contributor's account: a key derived from its id, which signs only a demo provider's
    source claims on the local chain."""
    return Account.from_key(hashlib.sha256(f"caravan-demo:{contributor}".encode()).digest())


def demo_address(contributor: str) -> str:
    """A pseudonymous address for a demo contributor (`demo_account`'s)."""
    return demo_account(contributor).address


def write_contributors(path: Path, contributors: list[str]) -> None:
    """Write a YAML contributors registry mapping each id to its `demo_address` (replaced atomically)."""
    lines = [f'"{c}": "{demo_address(c)}"' for c in sorted(contributors)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# Demo contributors registry: contributor id -> EVM address\n" + "\n".join(lines) + "\n")
    tmp.replace(path)


@dataclass(frozen=True)
class UserData:
    """`caravan demo --data`: a dataset with its true labels in `truth_col`, labeled as `kind`."""

    path: Path
    kind: str
    field: str
    choices: tuple[str, ...]
    truth_col: str
    # Where pay is measured (the validation set): the owner's own file of held-out rows (payload and
    # `truth_col`), or a tenth of the `trusted` providers' rows (every provider's when none is named).
    validation: Path | None = None
    trusted: tuple[str, ...] = ()
    show: tuple[str, ...] = ()  # a table's columns labelers see (default: every column but the ids)

    def __post_init__(self) -> None:
        try:
            check_show(self.kind, self.show)
        except LabelConfigError as exc:
            raise DemoError(f"--show: {exc}") from None

    @property
    def labeling(self) -> dict:
        """The labeling spec as the catalog records it (`labeling_record`); hashed into the version name."""
        return labeling_record(self.kind, self.field, self.choices, self.show)


@dataclass(frozen=True)
class DemoData:
    """A demo dataset as registered: its source, labeling spec, and each example's true label (read
    only by the simulated annotators), with a few payloads for the paid predictions."""

    version: str
    source: Path
    kind: str
    field: str
    choices: tuple[str, ...]
    truth: dict[str, str]  # example id -> true label
    gold: Path
    providers: tuple[str, ...]
    samples: tuple  # payload values (text, image bytes, a table's row by column) to ask the model about
    validation: Path | None = None  # trusted, held-out examples (payload, `label`) pay is measured on
    show: tuple[str, ...] = ()  # a table's columns labelers see (default: every column but the ids)

    @property
    def labeling(self) -> dict:
        """The labeling spec the version is registered with and its Label Studio project is made from."""
        return labeling_record(self.kind, self.field, self.choices, self.show)

    @property
    def payload(self) -> Payload:
        """The payload contract the source is loaded with to make the Label Studio tasks (`load_source`)."""
        return Payload(self.kind, self.field)


def prepare_data(settings: Settings, limit: int | None) -> DemoData:
    """Digits (8×8 PNGs) split across providers; the truth (for simulated labelers), a small gold set,
    and the owner's clean test digits as the version's validation set (what pay is measured on)."""
    validation = settings.home / "demo" / "validation.parquet"
    folder = write_digits(settings.home / "demo" / "digits", limit=limit, validation=validation)
    truth_rows = pq.read_table(folder / "truth" / "labels.parquet").to_pylist()
    truth = {example_id({FIELD: r[FIELD]}): r["label"] for r in truth_rows}
    gold = write_gold(settings.home / "demo" / "gold.parquet", truth)
    return DemoData(
        VERSION,
        folder,
        "image",
        FIELD,
        CHOICES,
        truth,
        gold,
        tuple(sorted(p.stem for p in folder.glob("*.parquet"))),
        tuple(r[FIELD] for r in truth_rows[:5]),
        validation,
    )


@dataclass(frozen=True)
class UserSplit:
    """A `--data` file read and checked, nothing written yet: the rows to train on (truth dropped),
    the validation set (payload columns, `label`) and the trained rows' truth by example id."""

    rows: pa.Table
    validation: pa.Table
    truth: dict[str, str]


def prepare_user_data(settings: Settings, data: UserData, limit: int | None) -> DemoData:
    """The user's dataset without its truth column, written once under the demo's home (named by its
    content, so a rerun registers the same version), and the truth keyed by example id."""
    return write_user_data(settings, data, split_user_data(data, limit))


def split_user_data(data: UserData, limit: int | None) -> UserSplit:
    """Read and check `data` (the first `limit` rows), writing nothing: a bad file is refused before the
    demo starts anything.

    The validation set (the trusted targets pay is measured on, with their true labels) is the owner's
    file (`data.validation`), or else a tenth of the rows of the `trusted` providers, chosen by a hash of
    the example id, held out of training (of every provider's rows when none is named). Why it matters:
    value is measured on the validation rows, so rows held out of a noisy provider value whatever teaches
    the model that noise, which may be only that provider's own data."""
    payload = Payload(data.kind, data.field)
    table = _user_table(data.path, payload, data)
    hidden = [c for c in data.show if c not in table.column_names or c == data.truth_col]
    if hidden:
        raise DemoError(f"--show {hidden} must name columns of {data.path} other than --truth-col; its "
                        f"columns: {table.column_names}")
    if limit is not None:
        table = table.slice(0, limit)
    labels = [str(v) for v in table[data.truth_col].to_pylist()]
    rows = table.drop_columns([data.truth_col, "source"])  # the truth never reaches the pipeline
    payload_cols = [c for c in rows.column_names if c not in RESERVED]
    ids = [example_id(r) for r in rows.select(payload_cols).to_pylist()]
    if data.validation is not None:
        held = np.zeros(len(ids), dtype=bool)
        validation = _owner_validation(data, payload, payload_cols, ids)
    else:
        held = _held_rows(ids, rows["provider"].to_pylist(), data.trusted)
        validation = rows.select(payload_cols).filter(pa.array(held)).append_column(
            "label", pa.array([v for v, h in zip(labels, held, strict=True) if h], pa.string())
        )
    truth = {i: v for i, v, h in zip(ids, labels, held, strict=True) if not h}
    return UserSplit(rows.filter(pa.array(~held)), validation, truth)


def write_user_data(settings: Settings, data: UserData, split: UserSplit) -> DemoData:
    """Write a checked split under the demo's home, its version named by the training rows' content."""
    buf = io.BytesIO()
    pq.write_table(split.rows, buf)
    spec = json.dumps(data.labeling, sort_keys=True)
    version = "demo-" + hashlib.sha256(buf.getvalue() + spec.encode()).hexdigest()[:12]
    source = settings.home / "demo" / version / "data.parquet"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(buf.getvalue())
    held_path = source.with_name("validation.parquet")
    pq.write_table(split.validation, held_path)
    return DemoData(
        version,
        source,
        data.kind,
        data.field,
        data.choices,
        split.truth,
        write_gold(settings.home / "demo" / version / "gold.parquet", split.truth),
        tuple(sorted(set(split.rows["provider"].to_pylist()))),
        _samples(split.rows, data.kind, data.field),
        held_path if split.validation.num_rows else None,
        data.show,
    )


def _samples(rows: pa.Table, kind: str, field: str) -> tuple:
    """The first 5 payloads to ask the served model about: a table's rows by column (as a caller sends
    them, named fields), else the payload column's values."""
    if kind == "table":
        return tuple(rows.select([c for c in rows.column_names if c not in RESERVED]).slice(0, 5).to_pylist())
    return tuple(rows[field].to_pylist()[:5])


def _user_table(path: Path, payload: Payload, data: UserData, provider: str | None = None) -> pa.Table:
    """A `--data` (or `--validation`) file read as a source, refused unless every row has a true label
    in `data.truth_col` among `data.choices`."""
    try:
        table = load_source(str(path), payload=payload, provider=provider)
    except DatasetError as exc:
        raise DemoError(str(exc)) from None
    if data.truth_col not in table.column_names or data.truth_col in (*RESERVED, data.field):
        raise DemoError(
            f"--truth-col {data.truth_col!r} must name a column of {path} other than the payload "
            f"and {list(RESERVED)}; its columns: {table.column_names}"
        )
    labels = table[data.truth_col].to_pylist()
    unlabeled = [i for i, v in enumerate(labels) if v is None or str(v) == ""]
    if unlabeled:
        raise DemoError(f"{path}: rows {unlabeled[:10]} have no true label in {data.truth_col!r}")
    unknown = sorted({str(v) for v in labels} - set(data.choices))
    if unknown:
        raise DemoError(
            f"{path}: true labels {unknown[:10]} in {data.truth_col!r} are not among --choices "
            f"{list(data.choices)}"
        )
    return table


def _held_rows(ids: list[str], providers: list[str], trusted: Sequence[str]) -> np.ndarray:
    """Which rows a `--data` demo holds out as validation targets: a tenth (`held_out`) of the trusted
    providers' rows (every provider's when none is named), never a copy of a row it trains on."""
    unknown = sorted(set(trusted) - set(providers))
    if unknown:
        raise DemoError(f"--trusted names {unknown} but the data's providers are {sorted(set(providers))}")
    candidate = np.isin(providers, list(trusted)) if trusted else np.ones(len(ids), dtype=bool)
    held = candidate & np.array([held_out(i) for i in ids], dtype=bool)
    held &= ~np.isin(ids, np.asarray(ids)[~held])  # a copy of a training example is never a target
    if trusted and not held.any():
        raise DemoError(
            f"the trusted providers {sorted(trusted)} hold too few rows for a validation tenth "
            f"({int(candidate.sum())} rows): name more of them, or give --validation FILE"
        )
    return held


def _owner_validation(data: UserData, payload: Payload, payload_cols: list[str], ids: list[str]) -> pa.Table:
    """The owner's `--validation` file as the demo's validation set (payload columns, `label`),
    refused as `caravan ingest --validation` refuses one (`validation_examples`): empty, other payload
    columns than the data's, or sharing an example with it."""
    from pipelines.datasets import validation_examples

    table = _user_table(data.validation, payload, data, provider="validation")
    kept = [c for c in table.column_names if c not in (*RESERVED, data.truth_col)]
    if "label" in kept:
        raise DemoError(f"--validation {data.validation}: its true labels are in {data.truth_col!r} "
                        "(--truth-col); rename or drop its other column 'label'")
    labels = pa.array([str(v) for v in table[data.truth_col].to_pylist()], pa.string())
    table = table.select(kept).append_column("label", labels)
    dataset = pa.table({"example_id": ids, **{c: pa.nulls(len(ids)) for c in payload_cols}})
    try:
        validation_examples(table, dataset, data.choices)
    except DatasetError as exc:
        raise DemoError(f"--validation {data.validation}: {exc}") from None
    return table.select([*payload_cols, "label"])


def validation_line(demo: DemoData, data: UserData | None) -> str:
    """Where the demo measures pay, for its log: what its validation set holds and where it came from."""
    n = pq.read_metadata(demo.validation).num_rows if demo.validation else 0
    if data is None:
        return f"validation: the owner's {n} clean test digits (pay is measured on them)"
    if data.validation is not None:
        return f"validation: the {n} examples of {data.validation.name} (pay is measured on them)"
    if data.trusted:
        return f"validation: {n} held-out examples of {', '.join(data.trusted)} (pay is measured on them)"
    return (f"validation: {n} held-out examples, a tenth of every provider's (--trusted PROVIDERS or "
            "--validation FILE measures pay on the data the model will serve instead)")


def held_out(example: str, every: int = 10) -> bool:
    """Whether a user-data demo holds this example out as a validation target (one in `every`)."""
    return int(hashlib.sha256(example.encode()).hexdigest()[:8], 16) % every == 0


def write_gold(path: Path, truth: dict[str, str], n: int = 20) -> Path:
    """A small gold set (honeypot answers that grade the labelers): the first `n` example ids."""
    gold_ids = sorted(truth)[:n]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"example_id": gold_ids, "label": [truth[e] for e in gold_ids]}), path)
    return path


def serving_input(kind: str, value: object) -> object:
    """One payload as `/v1/predict` takes it: text as itself, an image as base64 of its file bytes, a
    table's row as its named fields."""
    if kind == "image":
        return {"image_base64": base64.b64encode(value).decode()}  # type: ignore[arg-type]
    if kind == "table":  # JSON has no NaN: a missing number is null
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in value.items()}  # type: ignore[union-attr]
    return value


def label_with_simulated_annotators(client: LabelStudioClient, data: DemoData, spec: ProjectSpec) -> int:
    """Simulated labelers (real Label Studio users) answer every example; 3 of 4 per example.

    Their answers travel with the task import (each annotation with its `completed_by`), the
    fast path measured in DESIGN.md; examples already in the project are left alone.
    """
    examples, _ = to_examples(load_source(str(data.source), payload=data.payload))
    project = client.ensure_project(spec)
    users = register(client, simulated_annotators(ACCURACIES))
    return import_with_answers(client, project, examples, demo_answers(data), users)


def demo_answers(data: DemoData) -> list[SimulatedAnswer]:
    """The simulated labelers' answers: 3 of the 4 per example, drawn with a fixed seed (a rerun draws the
    same)."""
    return simulate_answers(data.truth, simulated_annotators(ACCURACIES), data.choices, per_example=3, seed=7)


def claim_demo_answers(settings: Settings, data: DemoData) -> int:
    """Each simulated labeler claims its answers on chain from its own key, as `caravan claim-answers`
    does, before the operator exports them (the local chain's faucet pays its gas), so the run's answers
    are held to them; how many answers were claimed (none off a local chain)."""
    from provenance import claim_answers
    from provenance.anvil import ANVIL_CHAIN_ID, funded

    chain, _ = _clients(settings)
    if chain.chain_id != ANVIL_CHAIN_ID:
        return 0  # no faucet: on another chain the labelers claim with `caravan claim-answers` themselves
    answers: dict[str, list[tuple[str, str]]] = {}
    for a in demo_answers(data):
        answers.setdefault(a.annotator.email, []).append((a.example_id, a.label))
    for labeler, pairs in sorted(answers.items()):
        claim_answers(funded(chain, demo_account(labeler)), pairs)
    return sum(map(len, answers.values()))


@contextlib.contextmanager
def sigterm_kept() -> Iterator[None]:
    """Restore SIGTERM's handler on the way out. Dagster's in-process execution maps SIGTERM to
    SIGINT's handler and leaves it so (``dagster._utils.interrupts``); a process started in the
    background ignores SIGINT, so after one run it ignored SIGTERM too, and so did every process it
    started later (an ignored signal survives exec): `kill` and `timeout` could no longer stop them."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, before)


def materialize(settings: Settings, instance: dg.DagsterInstance, version: str,
                training: dict | None = None) -> dict[str, dict]:
    """Every asset and check of the graph for one dataset version, in this process; value per asset.
    `training` is `trained_model`'s run config (`TrainingConfig`), e.g. an hf-local recipe."""
    from pipelines.definitions import defs
    from pipelines.resources import resources_for

    with sigterm_kept():
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            instance=instance,
            partition_key=version,
            resources=resources_for(settings),  # these settings, not those at import time
            raise_on_error=False,
            run_config={**QUIET, "ops": {"trained_model": {"config": training}}} if training else QUIET,
        )
    if not result.success:
        failures = [_root_cause(e) for e in result.all_events if e.is_step_failure]
        raise DemoError(f"the pipeline failed: {failures[0] if failures else 'see the Dagster run logs'}")
    failed_checks = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
    if failed_checks:
        raise DemoError(f"asset checks failed: {failed_checks}")
    return {
        "royalty_root": result.output_for_node("royalty_root"),
        "annotations": result.output_for_node("annotations").value.num_rows,  # a StoredValue
        "label_review": result.output_for_node("label_review").value,  # a StoredValue
    }


def review_summary(review: pa.Table, truth: dict[str, str]) -> dict:
    """How the run's mislabel flags fare against the simulated labelers' truth (known in the demo only)."""
    rows = review.to_pylist()
    wrong = {r["example_id"] for r in rows if str(truth.get(r["example_id"])) != r["label"]}
    flagged = {r["example_id"] for r in rows if r["flagged"]}
    return {
        "consensus_wrong": len(wrong),
        "flagged": len(flagged),
        "flagged_and_wrong": len(flagged & wrong),
        "sent_for_review": len(flagged),
    }


def _root_cause(event: dg.DagsterEvent) -> str:
    """The user error behind a step failure (Dagster wraps it), named with its step."""
    error = event.step_failure_data.error
    while error.cause is not None:
        error = error.cause
    return f"{event.step_key}: {error.message.strip()}"


def _store(settings: Settings):
    """The embedded content store these settings name."""
    from pipelines.content_io import StoreResource

    return StoreResource(store_dir=str(settings.store_dir)).client()


def _clients(settings: Settings):
    """The chain (contracts deployed) and the content store these settings name."""
    from pipelines.resources import ChainResource

    chain = ChainResource(rpc_url=settings.rpc_url, chain_dir=str(settings.chain_dir)).client()
    return chain, _store(settings)


def _operator_store(settings: Settings, version: str):
    """The content store as the demo's operator reads `version`: a private one's values opened with the
    holder key in reach, so its verify checks their plaintexts and its files' claims too."""
    from pipelines.resources import resources_for

    return resources_for(settings)["store"].client(version)


def settle_demo_revenue(settings: Settings, run_id: str, payee: str) -> tuple[str, str | None, int]:
    """Deposit one invoice of revenue for the run and claim `payee`'s share of what is claimable."""
    from provenance import claim_share, share_of

    chain, store = _clients(settings)
    deposit = chain.deposit(run_id, DEPOSIT_WEI, action=f"demo-revenue:{run_id}")
    share = share_of(store, chain, run_id, payee)
    if chain.claimable(run_id, payee, share.weight_bps) == 0:
        return deposit.tx_hash or "", None, 0  # claimed by an earlier run of the demo
    tx, paid = claim_share(chain, store, run_id, payee)
    return deposit.tx_hash or "", tx.tx_hash, paid


def serve_pid_file(settings: Settings) -> Path:
    """Where the demo's `caravan serve` records itself, so the next demo stops one left running."""
    return settings.home / "serve.pid"


@contextlib.contextmanager
def serving(settings: Settings, run_id: str) -> Iterator[str]:
    """The real `caravan serve` for the run (these settings' store, chain and ledger) on a free loopback
    port; stopped on the way out, and dies with this process even if it is killed (SIGKILL)."""
    server = ServeProcess(
        run_id, settings.environ(), pid_file=serve_pid_file(settings), log_path=settings.home / "serve.log"
    )
    try:
        server.start(timeout_s=120)
    except ServeError as exc:
        raise DemoError(str(exc)) from None
    try:
        yield server.url
    finally:
        server.stop()


def paid_predictions(settings: Settings, run_id: str, rows: Sequence[object]) -> dict:
    """A model user pays for a few predictions; the epoch is settled on chain and one payee claims."""
    import httpx

    from serving import API_KEY_HEADER, Ledger, epoch_claim, settle_run, verify_epoch

    ledger = Ledger.from_env(settings.ledger_path)
    _, secret = ledger.create_key("demo-user", balance=10**17)
    with serving(settings, run_id) as url:
        answers = [
            httpx.post(f"{url}/v1/predict", json={"input": row}, headers={API_KEY_HEADER: secret}, timeout=60)
            .raise_for_status()
            .json()
            for row in rows
        ]
        # a text or image run's attribution is deferred: its worker fills the receipts' splits
        deadline = time.monotonic() + 120
        while ledger.pending_count(run_id) and time.monotonic() < deadline:
            time.sleep(0.1)
    chain, store = _clients(settings)
    settlement = settle_run(chain, store, ledger, run_id)
    if settlement is None:
        raise DemoError("the paid predictions left no receipts to settle")
    payee, _ = max(settlement.payouts, key=lambda p: (p[1], p[0]))
    tx, paid = epoch_claim(chain, store, settlement.epoch_id, payee)
    report = verify_epoch(chain, store, settlement.epoch_id)
    return {
        "predictions": len(answers),
        "epoch_id": settlement.epoch_id,
        "epoch_total_wei": settlement.total,
        "epoch_claim_tx": tx.tx_hash,
        "epoch_claimed_wei": paid,
        "epoch_verify_ok": report.ok,
        "epoch_failures": [f.__dict__ for f in report.failures],
    }


def run_demo(
    settings: Settings,
    *,
    limit: int | None = None,
    data: UserData | None = None,
    start_services: bool = True,
    say: Callable[[str], None] = print,
    private: bool = False,
    training: dict | None = None,
) -> dict:
    """The whole mission on the bundled digits (or `data`); returns the summary the CLI prints. A
    `private` version's values are sealed under a data key for the holder key in reach
    (`pipelines.privacy`); `training` configures `trained_model` (`TrainingConfig`)."""
    from pipelines.annotations_audit import audit_annotations
    from provenance import TRAINING, RunRecords, verify_run
    from storage import read_parquet

    t0 = time.perf_counter()
    with single_run(settings.home / "demo.lock"):
        leftover = stop_recorded(serve_pid_file(settings))
        if leftover is not None:
            say(f"stopped `caravan serve` (pid {leftover}) left running by an earlier demo")
        split = None if data is None else split_user_data(data, limit)  # bad input: refused before services
        say("services: Label Studio and the anvil chain")
        ensure_services(settings, start=start_services)
        demo = prepare_data(settings, limit) if split is None else write_user_data(settings, data, split)
        say(f"data: {len(demo.truth)} {demo.kind} examples, {len(demo.providers)} providers ({demo.version})")
        say(validation_line(demo, data))
        instance = register_demo_data(settings, demo, private=private)
        say("labelers: 4 simulated annotators of known accuracy answer in Label Studio")
        client = LabelStudioClient(settings.labelstudio_url, labelstudio_token())
        spec = ProjectSpec.of(f"{settings.labelstudio_prefix} {demo.version}", demo.labeling)
        label_with_simulated_annotators(client, demo, spec)
        if claim_demo_answers(settings, demo):
            say("labelers: each claims its answers on chain from its own key")
        say("pipeline: materializing the asset graph (ingest, labeling, training, review, royalties)")
        outputs = materialize(settings, instance, demo.version, training)
        root = outputs["royalty_root"]
        run_id = root["run_id"]
        chain, store = _clients(settings)
        weights = read_parquet(store.get(root["weights_cid"])).to_pylist()
        records = RunRecords(chain, store)
        measured_against = records.parent(root["head_cid"], TRAINING)[1].params.get("targets")
        mislabels = review_summary(outputs["label_review"], demo.truth)
        payee = max(weights, key=lambda r: (r["weight_bps"], r["address"]))["address"]
        say("chain: revenue deposit and one contributor's claim")
        deposit_tx, claim_tx, paid = settle_demo_revenue(settings, run_id, payee)
        say("audit: caravan verify --label-studio")
        audited = _operator_store(settings, demo.version)
        report = verify_run(chain, audited, run_id)
        answers = audit_annotations(chain, audited, run_id, client)
        say("serving: paid predictions through `caravan serve`, settled as an epoch on chain")
        served = paid_predictions(settings, run_id, [serving_input(demo.kind, v) for v in demo.samples])
    return {
        "wall_s": round(time.perf_counter() - t0, 1),
        "examples": len(demo.truth),
        "annotations": outputs["annotations"],
        "contributors": len(weights),
        "run_id": run_id,
        "root_tx": root["root_tx"],
        "deposit_tx": deposit_tx,
        "claim_tx": claim_tx,
        "claimed_wei": paid,
        "payee": payee,
        "verify_ok": report.ok and answers.ok,
        "sources_claimed": f"{report.sources_claimed} of {report.sources_checked}",
        "answers_claimed": f"{report.answers_checked} of {outputs['annotations']}",
        "answers_as_in_label_studio": f"{answers.matched} of {outputs['annotations']}",
        "failures": [f.__dict__ for f in [*report.failures, *answers.failures]],
        "weights": weights,
        "measured_against": measured_against,
        "mislabels": mislabels,
        **served,
    }


def claim_demo_sources(settings: Settings, demo: DemoData):
    """Each demo provider claims its files on chain from its own key, as `caravan claim` does, before
    the operator registers them (the local chain's faucet pays its gas); the `ClaimLookup` that dates
    them at registration."""
    from pipelines.datasets import source_files
    from pipelines.resources import ClaimLookup
    from provenance import claim_sources
    from provenance.anvil import ANVIL_CHAIN_ID, funded

    chain, _ = _clients(settings)
    if chain.chain_id != ANVIL_CHAIN_ID:
        return None  # no faucet: on another chain the providers claim with `caravan claim` themselves
    files: dict[str, list[str]] = {}
    for _, f in source_files(str(demo.source), payload=Payload.of(demo.labeling)):
        if f.provider:  # a table of several providers' rows (`--data`) is no one provider's to claim
            files.setdefault(f.provider, []).extend([f.cid, *(cid for _, cid in f.refs)])  # and its images
    for provider, cids in sorted(files.items()):
        claim_sources(funded(chain, demo_account(provider)), cids)
    return ClaimLookup(chain, {p: demo_address(p) for p in demo.providers})


def register_demo_data(
    settings: Settings, demo: DemoData, *, private: bool = False, claim: bool = True
) -> dg.DagsterInstance:
    """The demo's version in the catalog (its files pinned; sealed first if `private`), its
    contributors, and its partition; with `claim` (a chain running), each provider first claims its
    files on chain (`claim_demo_sources`)."""
    from pipelines.privacy import registering
    from pipelines.resources import DatasetCatalog

    labelers = [a.email for a in simulated_annotators(ACCURACIES)]
    write_contributors(settings.contributors_file, [*demo.providers, *labelers])
    claims = claim_demo_sources(settings, demo) if claim else None  # a private version's: by plaintext
    with registering(settings, _store(settings), demo.version, private) as store:
        DatasetCatalog(root=str(settings.catalog_dir)).register(
            demo.version,
            str(demo.source),
            store=store,
            labeling=demo.labeling,
            gold=str(demo.gold),
            validation=str(demo.validation) if demo.validation else None,
            claims=claims,
        )
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("dataset_version", [demo.version])
    return instance
