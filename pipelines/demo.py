"""The main job end to end: data from five providers, simulated labelers in the real Label Studio,
the whole asset graph, a revenue deposit, one contributor's claim, the auditor's verify, and
paid predictions of the served model settled as an epoch on chain.

Every step is idempotent, so a second run (or a run after a crash) reuses what exists: the
catalog entry, the Label Studio tasks and annotations, the pins, the records and the
on-chain entries. Only revenue is new each run (a deposit, and the new predictions' epoch).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from eth_account import Account

from labeling import (
    LabelStudioClient,
    ProjectSpec,
    import_with_answers,
    labelstudio_token,
    register,
    simulate_answers,
    simulated_annotators,
)
from pipelines.datasets import example_id, load_source, to_examples
from pipelines.demo_data import write_digits
from pipelines.serve_process import ServeError, ServeProcess, stop_recorded
from pipelines.settings import Settings

REPO = Path(__file__).resolve().parents[1]
VERSION = "digits-v1"
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


def demo_address(contributor: str) -> str:
    """A pseudonymous address for a demo contributor: a key derived from its id, never used to sign."""
    return Account.from_key(hashlib.sha256(f"caravan-demo:{contributor}".encode()).digest()).address


def write_contributors(path: Path, contributors: list[str]) -> None:
    lines = [f'"{c}": "{demo_address(c)}"' for c in sorted(contributors)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# Demo contributors registry: contributor id -> EVM address\n" + "\n".join(lines) + "\n")
    tmp.replace(path)


def prepare_data(settings: Settings, limit: int | None) -> tuple[Path, dict[str, str], Path]:
    """Digits split across providers; the truth (for simulated labelers) and a small gold set."""
    folder = write_digits(settings.home / "demo" / "digits", limit=limit)
    truth_table = pq.read_table(folder / "truth" / "labels.parquet").to_pylist()
    truth = {example_id({"pixels": r["pixels"]}): r["label"] for r in truth_table}
    gold_path = settings.home / "demo" / "gold.parquet"
    gold_ids = sorted(truth)[:20]
    pq.write_table(pa.table({"example_id": gold_ids, "label": [truth[e] for e in gold_ids]}), gold_path)
    return folder, truth, gold_path


def label_with_simulated_annotators(
    client: LabelStudioClient, folder: Path, truth: dict[str, str], spec: ProjectSpec
) -> int:
    """Simulated labelers (real Label Studio users) answer every example; 3 of 4 per example.

    Their answers travel with the task import (each annotation with its `completed_by`), the
    fast path measured in DESIGN.md; examples already in the project are left alone.
    """
    examples, _ = to_examples(load_source(str(folder)))
    project = client.ensure_project(spec)
    annotators = simulated_annotators(ACCURACIES)
    users = register(client, annotators)
    answers = simulate_answers(truth, annotators, CHOICES, per_example=3, seed=7)
    return import_with_answers(client, project, examples, answers, users)


def materialize(settings: Settings, instance: dg.DagsterInstance, version: str) -> dict[str, dict]:
    """Every asset and check of the graph for one dataset version, in this process; value per asset."""
    from pipelines.definitions import defs
    from pipelines.resources import resources_for

    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        instance=instance,
        partition_key=version,
        resources=resources_for(settings),  # these settings, not those at import time
        raise_on_error=False,
        run_config=QUIET,
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


def paid_predictions(settings: Settings, run_id: str, rows: list[list[float]]) -> dict:
    """A model user pays for a few predictions; the epoch is settled on chain and one payee claims."""
    import httpx

    from serving import API_KEY_HEADER, Ledger, epoch_claim, settle_run, verify_epoch

    ledger = Ledger(settings.ledger_path)
    _, secret = ledger.create_key("demo-user", balance=10**17)
    with serving(settings, run_id) as url:
        answers = [
            httpx.post(f"{url}/v1/predict", json={"input": row}, headers={API_KEY_HEADER: secret}, timeout=60)
            .raise_for_status()
            .json()
            for row in rows
        ]
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
    start_services: bool = True,
    say: Callable[[str], None] = print,
) -> dict:
    """The whole mission on the bundled digits; returns the summary the CLI prints."""
    from pipelines.resources import DatasetCatalog
    from provenance import TRAINING, RunRecords, verify_run
    from storage import read_parquet

    t0 = time.perf_counter()
    with single_run(settings.home / "demo.lock"):
        leftover = stop_recorded(serve_pid_file(settings))
        if leftover is not None:
            say(f"stopped `caravan serve` (pid {leftover}) left running by an earlier demo")
        say("services: Label Studio and the anvil chain")
        ensure_services(settings, start=start_services)
        say("data: digits split across 5 providers")
        folder, truth, gold = prepare_data(settings, limit)
        DatasetCatalog(root=str(settings.catalog_dir)).register(
            VERSION,
            str(folder),
            store=_store(settings),
            labeling={"kind": "image", "field": "pixels", "choices": list(CHOICES)},
            gold=str(gold),
        )
        providers = sorted(p.stem for p in folder.glob("*.parquet"))
        labelers = [a.email for a in simulated_annotators(ACCURACIES)]
        write_contributors(settings.contributors_file, [*providers, *labelers])
        instance = dg.DagsterInstance.get()
        instance.add_dynamic_partitions("dataset_version", [VERSION])
        say("labelers: 4 simulated annotators of known accuracy answer in Label Studio")
        client = LabelStudioClient(settings.labelstudio_url, labelstudio_token())
        spec = ProjectSpec(
            title=f"{settings.labelstudio_prefix} {VERSION}", kind="image", choices=CHOICES, field="pixels"
        )
        label_with_simulated_annotators(client, folder, truth, spec)
        say("pipeline: materializing the asset graph (ingest, labeling, training, review, royalties)")
        outputs = materialize(settings, instance, VERSION)
        root = outputs["royalty_root"]
        run_id = root["run_id"]
        chain, store = _clients(settings)
        weights = read_parquet(store.get(root["weights_cid"])).to_pylist()
        records = RunRecords(chain, store)
        measured_against = records.parent(root["head_cid"], TRAINING)[1].params.get("targets")
        mislabels = review_summary(outputs["label_review"], truth)
        payee = max(weights, key=lambda r: (r["weight_bps"], r["address"]))["address"]
        say("chain: revenue deposit and one contributor's claim")
        deposit_tx, claim_tx, paid = settle_demo_revenue(settings, run_id, payee)
        say("audit: caravan verify")
        report = verify_run(chain, store, run_id)
        say("serving: paid predictions through `caravan serve`, settled as an epoch on chain")
        rows = [
            r["pixels"] for r in pq.read_table(folder / "truth" / "labels.parquet").slice(0, 5).to_pylist()
        ]
        served = paid_predictions(settings, run_id, rows)
    return {
        "wall_s": round(time.perf_counter() - t0, 1),
        "examples": len(truth),
        "annotations": outputs["annotations"],
        "contributors": len(weights),
        "run_id": run_id,
        "root_tx": root["root_tx"],
        "deposit_tx": deposit_tx,
        "claim_tx": claim_tx,
        "claimed_wei": paid,
        "payee": payee,
        "verify_ok": report.ok,
        "failures": [f.__dict__ for f in report.failures],
        "weights": weights,
        "measured_against": measured_against,
        "mislabels": mislabels,
        **served,
    }
