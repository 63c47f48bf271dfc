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
import math
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import dagster as dg
import pyarrow as pa
from eth_account import Account
from eth_account.signers.local import LocalAccount

from labeling import (
    LabelStudioClient,
    ProjectSpec,
    SimulatedAnswer,
    import_with_answers,
    labelstudio_token,
    register,
    simulate_answers,
    simulated_annotators,
)
from pipelines.datasets import Payload, load_source, to_examples
from pipelines.demo_data import (
    DemoData,
    DemoError,
    UserData,
    prepare_data,
    split_user_data,
    validation_line,
    write_user_data,
)
from pipelines.serve_process import ServeError, ServeProcess, stop_recorded
from pipelines.settings import Settings

REPO = Path(__file__).resolve().parents[1]
ACCURACIES = (0.95, 0.85, 0.7, 0.55)
DEPOSIT_WEI = 10**18  # 1 ETH of model revenue
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


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
