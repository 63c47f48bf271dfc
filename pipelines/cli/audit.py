"""`caravan trace` and `caravan verify`: the auditor's commands, reading only chain and store.

Chain, deployments and content from the settings (`CARAVAN_HOME`, `CARAVAN_RPC_URL`, no key
needed, `CARAVAN_CHAIN_DIR`, `CARAVAN_STORE_DIR`), or content from `--store`. `verify` exits 0 only
if every check holds and otherwise prints one `FAIL <name> <subject>: <detail>` line per failure
and exits 1. A run's trace lists its settled serving epochs; `verify RUN --epochs` also checks each
of them with serving's `verify_epoch`. `verify RUN --label-studio` also holds the run's answers, and
the tasks they answer, to its Label Studio project (`pipelines.annotations_audit`).
"""

from __future__ import annotations

# provenance (web3) is imported inside the commands: it costs ~0.8 s, which `caravan store` need not pay.
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.tree import Tree

from pipelines.cli.errors import clean_errors, finish_report
from pipelines.cli.options import (
    AsJson,
    StoreDir,
    open_chain,
    open_labelstudio,
    open_reading_store,
    open_store,
)
from storage import BlockStore, StorageError

AsProv = Annotated[bool, typer.Option("--prov", help="Print the lineage's records as W3C PROV-JSON.")]


def _rich(node: Any, into: Tree | None = None) -> Tree:
    style = {
        "payout": "bold green",
        "deposit": "green",
        "root": "green",
        "run": "bold",
        "record": "cyan",
        "epoch": "magenta",
    }
    label = f"[{style.get(node.kind, 'dim')}]{node.kind}[/] {node.label}"
    branch = Tree(label) if into is None else into.add(label)
    for child in node.children:
        _rich(child, branch)
    return branch


def trace_command(
    ref: Annotated[str, typer.Argument(help="A CID, a run id (or 0x run key), or a transaction hash.")],
    as_json: AsJson = False,
    as_prov: AsProv = False,
    store_dir: StoreDir = None,
) -> None:
    """The lineage tree from a payout, deposit, run, record or data CID back to the raw data."""
    from provenance import ProvenanceError, prov_json, records_by_cid, trace
    from provenance.audit import record_cids

    with clean_errors(ProvenanceError, StorageError):
        store = open_store(store_dir)
        node = trace(open_chain(), store, ref)
        if as_prov:
            typer.echo(prov_json(records_by_cid(store, record_cids(node))))
            return
    if as_json:
        typer.echo(json.dumps(node.to_json(), indent=2, default=str))
    else:
        console = Console()
        Console(width=None if console.is_terminal else 400).print(_rich(node))


@dataclass
class RunAudit:
    """`verify --epochs/--replay`: the run's report, per serving epoch found on chain serving's
    report, and the replay's.

    provenance may not import serving (house rules), so they meet here. An epoch's failures keep
    their names and say which epoch in the detail; `--json` nests each epoch's own report.
    """

    run: Any  # provenance.VerifyReport
    epochs: list[tuple[Any, Any]] = field(default_factory=list)  # (provenance.RunEpoch, serving.EpochReport)
    replay: Any = None  # pipelines.replay.ReplayReport
    labels: Any = None  # pipelines.annotations_audit.AnnotationsAudit
    skipped_here: list[Any] = field(default_factory=list)  # checks of its own it could not make (no key)

    @property
    def failures(self) -> list[Any]:
        """The run's, the replay's and the answers' failures, then each epoch's, its detail prefixed with
        the epoch."""
        from provenance import Failure

        out = list(self.run.failures) + (list(self.replay.failures) if self.replay else [])
        out += list(self.labels.failures) if self.labels else []
        for epoch, report in self.epochs:
            if epoch.error and epoch.epoch_id:  # unreadable records are named by verify_epoch itself
                out.append(Failure("epoch_not_of_run", epoch.record_cid, epoch.error))
            name = epoch.epoch_id or epoch.record_cid
            out.extend(Failure(f.name, f.subject, f"epoch {name}: {f.detail}") for f in report.failures)
        return out

    @property
    def ok(self) -> bool:
        """True when no check failed: the run's, the replay's or any epoch's (skipped checks aside)."""
        return not self.failures

    @property
    def skipped(self) -> list[Any]:
        """Checks not made: the run's, then this command's own (no key), then the replay's, the answers'."""
        replayed = list(self.replay.skipped) if self.replay else []
        labels = list(self.labels.skipped) if self.labels else []
        return list(self.run.skipped) + list(self.skipped_here) + replayed + labels

    def to_json(self) -> dict[str, Any]:
        """The run's own report (`--json`) with each epoch's and the replay's nested, and every failure
        and skipped check of all of them at the top."""
        epochs = [{**epoch.to_json(), "verify": report.to_json()} for epoch, report in self.epochs]
        failures = [{"name": f.name, "subject": f.subject, "detail": f.detail} for f in self.failures]
        skipped = [{"name": f.name, "subject": f.subject, "detail": f.detail} for f in self.skipped]
        replay = self.replay.to_json() if self.replay else None
        return {
            **self.run.to_json(),
            "epochs": epochs,
            "replay": replay,
            "labels": self.labels.to_json() if self.labels else None,
            "failures": failures,
            "skipped": skipped,
            "ok": self.ok,
        }


def verify_command(
    run_id: Annotated[
        str, typer.Argument(help="A run id (or its 0x run key), or a serving epoch id (RUN_ID/epoch-...).")
    ],
    as_json: AsJson = False,
    onchain_proofs: Annotated[
        bool,
        typer.Option("--onchain-proofs/--local-proofs", help="Also ask the contract to verify each proof."),
    ] = True,
    epochs: Annotated[
        bool,
        typer.Option(
            "--epochs",
            help="Also verify every serving epoch settled for the run (found on chain): amounts and root "
            "recomputed from its receipts batch.",
        ),
    ] = False,
    replay: Annotated[
        bool,
        typer.Option(
            "--replay",
            help="Also retrain the run from its records with this checkout (which must be the clean "
            "commit that trained it) and check its example scores, weights and root.",
        ),
    ] = False,
    native_kernels: Annotated[
        bool,
        typer.Option(
            "--native-kernels",
            help="Replay on this CPU's own kernels. By default a run trained on another CPU whose "
            "instruction sets this one has is replayed under that CPU's kernels (the command restarts "
            "itself with ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and MKL_CBWR set), bit for bit.",
        ),
    ] = False,
    label_studio: Annotated[
        bool,
        typer.Option(
            "--label-studio",
            help="Also hold the answers the run was labeled and paid by to the Label Studio project they "
            "were exported from ($CARAVAN_LABELSTUDIO_URL; token LABEL_STUDIO_USER_TOKEN): each stored "
            "answer must be the one Label Studio holds, none it held at the export left out, and each task "
            "must show the example the run trained on.",
        ),
    ] = False,
    store_dir: StoreDir = None,
) -> None:
    """Recompute every CID, check parents, on-chain entries, the royalty root and every proof.

    For a serving epoch: recompute every amount and the root from its receipts batch alone.
    """
    if "/epoch-" in run_id:
        from pipelines.cli.serve import epoch_verify

        return epoch_verify(run_id, as_json=as_json, store_dir=store_dir)
    from provenance import NO_KEY, Failure, ProvenanceError, verify_run

    with clean_errors(ProvenanceError, StorageError):
        # a holder key in reach (CARAVAN_HOLDER_KEY or its key file) opens the private versions it is granted
        chain, store = open_chain(), open_reading_store(store_dir)
        if replay and not native_kernels:
            _restart_on_run_kernels(chain, store, run_id)
        report = verify_run(chain, store, run_id, onchain_proofs=onchain_proofs)
        summary = (
            f"run {run_id} root {report.onchain_root}; {report.records_checked} records, "
            f"{report.contents_checked} contents ({report.contents_opened} private opened, "
            f"{len(report.skipped)} not opened: no key), {report.proofs_checked} proofs checked; "
            + (f"{report.sources_claimed} of {report.sources_checked} source files dated by their provider's "
               "claim on chain" if report.claims_deployed else "no SourceClaims contract on this chain: "
               "no source claim to hold the files to")
            + (f", {report.sources_registered} by their registration on chain" if report.sources_registered
               else "")
            + (f" ({report.sources_unopened} private source files not held to their claims: no key)"
               if report.sources_unopened else "")
            + (f"; {report.answers_checked} answers held to their {report.answer_labelers} labelers' claims"
               if report.answer_labelers else "")
            + ("; the run's answers are private: not held to their labelers' claims (no key)"
               if report.answers_unopened else "")
        )
        if epochs or replay or label_studio:
            report = _with_epochs(chain, store, run_id, report) if epochs else RunAudit(report)
            summary += f"; {len(report.epochs)} serving epoch(s) checked" if epochs else ""
        if label_studio and report.run.skipped:
            report.skipped_here.append(
                Failure(NO_KEY, run_id, "label studio: the answers of a private version need its key")
            )
        elif label_studio and "run_not_found" not in report.run.names():
            from labeling import LabelingError
            from pipelines.annotations_audit import audit_annotations

            with clean_errors(LabelingError):
                report.labels = audit_annotations(chain, store, run_id, open_labelstudio())
            summary += f"; {report.labels.summary()}"
        if replay and report.run.skipped:
            report.skipped_here.append(
                Failure(NO_KEY, run_id, "replay: retraining needs the private training data's plaintext")
            )
        elif replay and "run_not_found" not in report.run.names():
            from pipelines.replay import ReplayRefused, replay_run

            with clean_errors(ReplayRefused):
                report.replay = again = replay_run(chain, store, run_id)
            summary += (f"; replayed in {again.replay_s:.1f} s ({again.where()}, score diff "
                        f"{again.max_score_diff})")
    finish_report(report, as_json, summary)


def _restart_on_run_kernels(chain: Any, store: BlockStore, run_id: str) -> None:
    """Start this command again under the kernel pins of the run's CPU, where this one can run them
    and does not yet (`replay.replay_kernels`): each library reads its pin only when first used."""
    from pipelines.compute_platform import KERNEL_ENV
    from pipelines.replay import replay_kernels
    from provenance import ProvenanceError

    try:
        kernels = replay_kernels(chain, store, run_id)
    except (ProvenanceError, StorageError):  # verify_run names what is missing
        return
    if kernels:
        pins = " ".join(f"{k}={v}" for k, v in kernels.items())
        typer.echo(f"replay: restarting on the run's CPU kernels ({pins})", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            others = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV}  # its own pins go
            os.execve(sys.executable, sys.orig_argv, {**others, **kernels})
        except OSError as exc:  # replay goes on here, on this CPU's own kernels
            typer.echo(f"replay: could not restart ({exc}); replaying on this CPU's own kernels", err=True)


def _with_epochs(chain: Any, store: BlockStore, run_id: str, run_report: Any) -> RunAudit:
    from provenance import run_epochs
    from serving import verify_epoch

    audit = RunAudit(run_report)
    if "run_not_found" in run_report.names():
        return audit
    for epoch in run_epochs(chain, store, run_id):
        audit.epochs.append((epoch, verify_epoch(chain, store, epoch.record_cid)))
    return audit


def register(app: typer.Typer) -> None:
    """Add `caravan trace` and `caravan verify` to the root app."""
    app.command("trace")(trace_command)
    app.command("verify")(verify_command)
