"""Asset checks: what an auditor would check first, run after every materialization."""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from eth_utils import is_checksum_address

from labeling import ContributorsError
from pipelines.annotations_audit import audit_export
from pipelines.assets.labeling import taken_after
from pipelines.content_io import AssetIndex, StoreResource
from pipelines.lineage import LineageResource
from pipelines.resources import ChainResource, ContributorsResource, LabelStudioResource
from provenance import (
    INGEST,
    LABELING_EXPORT,
    AnswerCheck,
    ChainError,
    LabelingExportRecord,
    TrainingRecord,
    declared_choices,
    export_answer_problems,
    load_record,
    read_weights,
    share_leaves,
)
from schemas import TOTAL_BPS
from storage import ContentStore, StorageError, read_parquet

CONTENT_ASSETS = (
    "raw_dataset",
    "dataset_snapshot",
    "labeled_dataset",
    TrainingRecord.MODEL,
    TrainingRecord.EXAMPLE_ATTRIBUTION,
    "contributor_weights",
)


def _cid_check(asset: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name=f"{asset}_cid_verifies",
        blocking=True,
        description="The stored value is pinned and every block rehashes to its CID.",
    )
    def _check(
        context: dg.AssetCheckExecutionContext, store: StoreResource, index: AssetIndex
    ) -> dg.AssetCheckResult:
        partition = context.partition_key if context.has_partition_key else None
        meta = index.stored(asset, partition)
        if meta is None:
            return dg.AssetCheckResult(passed=False, description="no stored value")
        client = store.client()
        try:
            size = len(client.get(meta["cid"]))
        except StorageError as exc:
            return dg.AssetCheckResult(passed=False, description=str(exc), metadata={"cid": meta["cid"]})
        pinned = meta["cid"] in client.pins()
        return dg.AssetCheckResult(
            passed=pinned, metadata={"cid": meta["cid"], "bytes": size, "pinned": pinned}
        )

    return _check


cid_checks = [_cid_check(a) for a in CONTENT_ASSETS]


@dg.asset_check(
    asset="contributor_weights",
    blocking=True,
    description=f"Integer basis points, all rows summing to exactly {TOTAL_BPS:,}.",
)
def weights_sum_to_10000(contributor_weights: pa.Table) -> dg.AssetCheckResult:
    """Fails on a total other than `TOTAL_BPS` or on any negative weight: the payees' shares must be whole."""
    bps = contributor_weights["weight_bps"].to_pylist()
    total = sum(bps)
    return dg.AssetCheckResult(
        passed=total == TOTAL_BPS and min(bps, default=0) >= 0,
        metadata={"total_bps": total, "rows": len(bps)},
    )


@dg.asset_check(
    asset="contributor_weights",
    blocking=True,
    description="Every weighted contributor has a checksummed, non-zero EVM address.",
)
def weighted_contributors_have_addresses(contributor_weights: pa.Table) -> dg.AssetCheckResult:
    """Fails, naming them, on contributors with pay but no usable address: they could not claim it."""
    bad = [
        r["contributor"]
        for r in contributor_weights.to_pylist()
        if r["weight_bps"] > 0
        and not (is_checksum_address(r["address"] or "") and int(r["address"], 16) != 0)
    ]
    return dg.AssetCheckResult(passed=not bad, metadata={"without_address": dg.MetadataValue.json(bad)})


@dg.asset_check(
    asset="contributor_weights",
    description="Some provider's data helped the run's targets. When none did, the providers' share went "
    "to the labelers: usually the targets are wrong (crowd labels held out, no trusted validation set).",
)
def some_provider_helped(contributor_weights: pa.Table) -> dg.AssetCheckResult:
    """Warns, never blocking, when no provider is paid (`provider_help_check`, which tests call directly)."""
    return provider_help_check(contributor_weights)


def provider_help_check(weights: pa.Table) -> dg.AssetCheckResult:
    """WARN (never blocking: the split is still valid) when no provider earns anything."""
    rows = [r for r in weights.to_pylist() if r["role"] == "provider"]
    paid = sorted(r["contributor"] for r in rows if r["weight_bps"] > 0)
    return dg.AssetCheckResult(
        passed=bool(paid) or not rows,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if paid or not rows else NO_PROVIDER_HELPED,
        metadata={"providers_paid": len(paid), "providers": len(rows)},
    )


NO_PROVIDER_HELPED = (
    "no provider's data helped the targets, so the providers' share went to the labelers; declare a "
    "trusted validation set (`caravan ingest ... --validation FILE`) and rerun before publishing this split"
)


@dg.asset_check(asset="royalty_root", description="The on-chain root equals the root of the stored weights.")
def onchain_root_matches(
    royalty_root: dict, store: StoreResource, chain: ChainResource
) -> dg.AssetCheckResult:
    """The root recomputed from the weights `royalty_root` names against the run's distribution on
    chain (`-` in the metadata when none is published)."""
    leaves = share_leaves(read_weights(store.client().get(royalty_root["weights_cid"])))
    dist = chain.client().distribution(royalty_root["run_id"])
    onchain = dist.root if dist else None
    return dg.AssetCheckResult(
        passed=onchain == leaves.root, metadata={"stored_root": leaves.root, "onchain_root": onchain or "-"}
    )


# Tasks `annotations_match_label_studio` reads whole at most, drawn at random each sync: a full read costs
# about 3.2 ms a task (a first export's cost, measured on the local Label Studio), so a large project's
# every sync would pay it; the listing of every task's answer ids it draws from, about 0.5 ms a task (at
# 10,000 tasks: 11.3 s sampled against 31.5 s whole). `caravan verify --label-studio` reads every task.
CHECKED_TASKS = 2_000


@dg.asset_check(
    asset="annotations",
    blocking=True,
    description="The answers stored are those the Label Studio project holds (none differs, was left out "
    "or is gone) and its tasks show the examples synced, as `caravan verify --label-studio` holds a run's: "
    "a split published on other answers could never be taken back. A large project's tasks are checked "
    f"by a random sample of {CHECKED_TASKS:,} a sync, with their answers; that each stored answer is still "
    "in the project is checked for all. An answer deleted in Label Studio between the export and this check "
    "fails it; syncing again drops it.",
)
def annotations_match_label_studio(
    context: dg.AssetCheckExecutionContext,
    store: StoreResource,
    lineage: LineageResource,
    labelstudio: LabelStudioResource,
    index: AssetIndex,
) -> dg.AssetCheckResult:
    """The labeling export just made, reconciled with Label Studio (`export_check`, which tests call)."""
    return export_check(context.partition_key, store, lineage, labelstudio, index)


def export_check(
    version: str, store: StoreResource, lineage: LineageResource, labelstudio: LabelStudioResource,
    index: AssetIndex, sample: int = CHECKED_TASKS,
) -> dg.AssetCheckResult:
    """The version's latest labeling export reconciled with Label Studio (`pipelines.annotations_audit`),
    on at most `sample` of its tasks."""
    export = _latest_export(store, lineage, version)
    taken = taken_after(index, version, export.record.outputs[LabelingExportRecord.ANNOTATIONS])
    found = audit_export(export.record, export.answers, export.examples, labelstudio.client(), sample=sample,
                         taken_after=taken)
    failures = {f.name: f.detail for f in found.failures}
    return dg.AssetCheckResult(
        passed=found.ok,
        description="; ".join(f"{name}: {detail}" for name, detail in failures.items()) or None,
        metadata={"matched": found.matched, "edited_since": found.edited_since, "sampled": found.sampled,
                  "tasks_checked": found.tasks_checked, "failures": dg.MetadataValue.json(sorted(failures))},
    )


@dataclass(frozen=True)
class _Export:
    """A version's latest labeling export: its CID and record, its stored answers and examples (a private
    version's opened with its key), and the store client they were read from."""

    client: ContentStore
    cid: str
    record: LabelingExportRecord
    answers: pa.Table
    examples: pa.Table


def _latest_export(store: StoreResource, lineage: LineageResource, version: str) -> _Export:
    client = store.client(version)
    cid = lineage.cid_of(LABELING_EXPORT, version)
    export = load_record(client, cid)
    answers = read_parquet(client.get(export.outputs[LabelingExportRecord.ANNOTATIONS]))
    examples = read_parquet(client.get(export.inputs[LabelingExportRecord.SNAPSHOT]))
    return _Export(client, cid, export, answers, examples)


@dg.asset_check(
    asset="annotations",
    blocking=True,
    description="Each labeler that claims its answers on chain (`caravan claim-answers`) finds them in the "
    "export as it claimed them, as publishing the split will hold them. An answer it claimed before the "
    "export was dated on chain, left out of it, blocks training on the export (sync again). An answer not "
    "claimed as recorded (not yet claimed, or changed since) warns: publishing refuses the run until its "
    "labeler claims it, which needs no retraining; so does an export the operator's key did not date. "
    "Labelers who claim nothing, and a chain Caravan's contracts were never "
    "deployed on from here, leave nothing to check.",
)
def answers_match_their_claims(
    context: dg.AssetCheckExecutionContext,
    store: StoreResource,
    lineage: LineageResource,
    contributors: ContributorsResource,
    chain: ChainResource,
) -> dg.AssetCheckResult:
    """The labeling export just made, held to its labelers' claims (`claims_check`, which tests call)."""
    return claims_check(context.partition_key, store, lineage, contributors, chain)


def claims_check(
    version: str, store: StoreResource, lineage: LineageResource, contributors: ContributorsResource,
    chain: ChainResource,
) -> dg.AssetCheckResult:
    """The version's latest labeling export held to the answer claims so far of each of its labelers with
    an address in the contributors registry (`provenance.export_answer_problems`)."""
    try:
        on_chain = chain.deployed()
        if on_chain is None:
            return _claims_result(AnswerCheck(), "no contracts were deployed from here: no claims to hold to")
        if not Path(contributors.path).exists():
            return _claims_result(AnswerCheck(), "no contributors registry: no labeler's address is known")
        export = _latest_export(store, lineage, version)
        registry = contributors.registry().addresses
        paid = {a: registry[a] for a in pc.unique(export.answers["annotator"]).to_pylist() if a in registry}
        ingest = lineage.latest(INGEST, version)
        choices = declared_choices([load_record(export.client, ingest)] if ingest else [])
        found = export_answer_problems(on_chain, export.answers, export.examples, paid, choices,
                                       (export.cid, export.record))
    except (ChainError, ContributorsError) as exc:  # the chain is unreachable, or the registry unreadable
        return _claims_result(AnswerCheck(), f"{exc}; the answers could not be held to their claims "
                                             "(publishing the split will hold them)", failed=True)
    return _claims_result(found)


def _claims_result(
    found: AnswerCheck, note: str | None = None, *, failed: bool = False
) -> dg.AssetCheckResult:
    """The check's result: `found`'s problems with what to do about them, else `note`. Only answers left
    out of the export block (ERROR): the rest, and a check that could not run, warn."""
    if found.dropped:
        note = (_problems(found) + ". Sync again, so that the export holds the answers they claimed, "
                "and ask each to claim every answer it gave (`caravan claim-answers`)")
    elif found.problems:
        note = (_problems(found) + ". Publishing the split will refuse it until each labeler named claims "
                "the answers it gave (`caravan claim-answers`), or they are left out")
    if found.undated:
        undated = [f"{cid}: {why}" for cid, why in found.undated]
        note = "; ".join([note, *undated] if found.problems else undated) + (
            ". Publishing the split will refuse it: materialize `annotations` again with the publisher's key "
            "(CARAVAN_PRIVATE_KEY or CARAVAN_KEYSTORE), which dates the export as it is made")
    return dg.AssetCheckResult(
        passed=not (failed or found.problems or found.undated),
        severity=dg.AssetCheckSeverity.ERROR if found.dropped else dg.AssetCheckSeverity.WARN,
        description=note,
        metadata={"labelers_held": found.labelers, "answers_held": found.answers,
                  "labelers_failing": dg.MetadataValue.json(sorted({who for who, _ in found.problems})),
                  "labelers_left_out": dg.MetadataValue.json(sorted(found.dropped))},
    )


def _problems(found: AnswerCheck) -> str:
    return "; ".join(f"{who}: {why}" for who, why in found.problems)


all_checks = [
    *cid_checks,
    annotations_match_label_studio,
    answers_match_their_claims,
    weights_sum_to_10000,
    weighted_contributors_have_addresses,
    some_provider_helped,
    onchain_root_matches,
]
