"""Royalty stage: example scores become contributor weights, the run's head record, and its on-chain root."""

from collections.abc import Collection

import dagster as dg
import pyarrow as pa

from attribution import NOISE_Z, ContributorError, WeightPolicy, values_within_noise
from attribution import contributor_weights as _weights
from labeling import DS_SMOOTHING, LabelingError
from pipelines.checks import NO_PROVIDER_HELPED
from pipelines.content_io import AssetIndex, StoredValue, StoreResource, decode, store_value
from pipelines.lineage import LineageResource, now
from pipelines.partitions import dataset_versions
from pipelines.report import bar_md, md_table
from pipelines.resources import ChainResource, ContributorsResource
from provenance import (
    CONSENSUS,
    TRAINING,
    WEIGHTING,
    ProvenanceError,
    RunRecords,
    TrainingRecord,
    WeightingRecord,
    load_record,
    prov_json,
    publish_run,
    weights_snapshot,
)
from storage import public_store, read_parquet


class WeightingConfig(dg.Config):
    """The split policy (attribution.WeightPolicy): provider share of the pool, what negatives do."""

    provider_share_bps: int = 7000
    negative: str = "net"  # a contributor whose data or labels hurt the model earns nothing
    # labelers by the value of the consensus their answers moved; "left_out": by their value when the run
    # retrained without each one's answers (`TrainingConfig.left_out_labelers`; the training record's
    # left_out_value table, its labeler rows), shrunk toward what "valued" pays (as "valued" where the
    # run retrained no labeler); or "pivotal", or "agree" (agreement)
    labelers: str = "valued"
    # "pivotal" / "valued" / "left_out": pseudo-count of the confusion estimates answers are read under;
    # None: the consensus's own (its record's smoothing), so pay reads each answer under the model that
    # counted it
    label_smoothing: float | None = None
    # providers by their value when the run retrains without each (the training record's
    # left_out_value), or "scores": by their examples' summed scores (also where the run has none)
    providers: str = "left_out"
    # a duplicate group's copies: beyond one per group counted only where they hurt ("once": flooding
    # gains nothing), or "group": the group's whole left-out effect to its first registrant
    copies: str = "once"


def applied_policy(config: WeightingConfig, retrained: Collection[str], consensus_smoothing: float | None
                   ) -> WeightingConfig:
    """The policy as applied, and as the weighting record keeps it for replay: `providers: scores` where
    the run has no providers' left-out values (more providers than `left_out_max`), `labelers: valued`
    where it has no labelers' (`retrained`: the roles its left-out table has rows of), and an unset label
    smoothing
    resolved to the consensus's own. A consensus without one (majority vote, a record from before it was
    recorded) or with none at all (0, crowd-kit's own fit) leaves `labeling.DS_SMOOTHING`: pay's M-step
    needs a positive count, or one unseen confusion would make an answer's move infinite."""
    update: dict[str, object] = {}
    if config.providers == "left_out" and "provider" not in retrained:
        update["providers"] = "scores"
    if config.labelers == "left_out" and "labeler" not in retrained:
        update["labelers"] = "valued"
    if config.label_smoothing is None:
        update["label_smoothing"] = float(consensus_smoothing) if consensus_smoothing else DS_SMOOTHING
    return config.model_copy(update=update)


@dg.asset(partitions_def=dataset_versions, group_name="royalties", kinds={"arrow"})
def contributor_weights(
    context: dg.AssetExecutionContext,
    config: WeightingConfig,
    example_attribution: pa.Table,
    raw_dataset: pa.Table,
    annotations: pa.Table,
    consensus_labels: pa.Table,
    contributors: ContributorsResource,
    store: StoreResource,
    index: AssetIndex,
    lineage: LineageResource,
) -> dg.Output[StoredValue]:
    """Basis points per contributor (provider or labeler), summing to exactly 10,000, and the run's
    head (weighting) record, written here where the policy that made them is known.

    Stored as the weights' own validated snapshot (`weights_snapshot`): the bytes the run's head
    record names, so the table is encoded and stored once.
    """
    started, version = now(), context.partition_key
    client = store.client()
    try:
        training = load_record(client, lineage.cid_of(TRAINING, version))
        value_cid = (training.outputs.get(TrainingRecord.LEFT_OUT_VALUE)
                     if "left_out" in (config.providers, config.labelers) else None)
        left_out = read_parquet(client.get(value_cid)) if value_cid else None
        retrained = set(left_out["role"].to_pylist()) if left_out is not None else set()
        consensus = load_record(client, lineage.cid_of(CONSENSUS, version))
        applied = applied_policy(config, retrained, consensus.params.get("smoothing"))
        policy = WeightPolicy(**applied.model_dump())
        people = set(raw_dataset["provider"].to_pylist()) | set(annotations["annotator"].to_pylist())
        addresses = contributors.registry().require(people)
        credit_cid = lineage.credit_cid(client, version)
        credit = read_parquet(client.get(credit_cid)) if credit_cid else None
        table = _weights(
            example_attribution, raw_dataset, annotations, consensus_labels, addresses, policy, credit,
            left_out,
        )
        # the weights' own snapshot under CIDv0, as `provenance.store_weights` has always named it
        # public even for a private version: the royalty root and every payee's proof derive from it
        stored = store_value(public_store(client), table, weights_snapshot(table), cid_version=0)
        head = lineage.write(
            client,
            WEIGHTING,
            version,
            started=started,
            inputs={
                WeightingRecord.EXAMPLE_ATTRIBUTION: index.cid_of("example_attribution", version),
                WeightingRecord.EXAMPLES: index.cid_of("raw_dataset", version),
                WeightingRecord.ANNOTATIONS: index.cid_of("annotations", version),
                WeightingRecord.CONSENSUS: index.cid_of("consensus_labels", version),
                **({WeightingRecord.EXAMPLE_CREDIT: credit_cid} if credit_cid else {}),
                **({WeightingRecord.LEFT_OUT_VALUE: value_cid} if value_cid else {}),
            },
            outputs={WeightingRecord.WEIGHTS: stored.cid},
            parents=(lineage.cid_of(TRAINING, version), lineage.cid_of(CONSENSUS, version)),
            params={"run_id": example_attribution["run_id"][0].as_py(), "policy": applied.model_dump()},
        )
    except (ContributorError, LabelingError, ProvenanceError, ValueError) as exc:
        raise dg.Failure(str(exc)) from exc
    top = sorted(table.to_pylist(), key=lambda r: (-r["weight_bps"], r["contributor"]))
    hurt = [f"{r['contributor']} ({r['role']})" for r in top if r["score"] < 0]
    if hurt:
        context.log.warning(f"unpaid: the data or labels of {', '.join(hurt)} made the model worse")
    unclear = values_within_noise(left_out) if left_out is not None else []
    if unclear:
        context.log.warning(within_noise_warning(left_out, unclear))
    providers_paid = [r["contributor"] for r in top if r["role"] == "provider" and r["weight_bps"] > 0]
    if not providers_paid:
        context.log.warning(f"WARNING: {NO_PROVIDER_HELPED}")
    copies = _all_copies(raw_dataset, credit)
    if copies:
        context.log.warning(
            f"unpaid: every example of {', '.join(copies)} duplicates an earlier-registered one "
            "(credited to its first registrant)"
        )
    return dg.Output(
        stored,
        metadata={
            "record_cid": head,
            "policy": config.negative,
            "providers_paid_by": "left-out retraining" if value_cid else "summed example scores",
            "hurt_the_model_unpaid": dg.MetadataValue.json(hurt),
            "left_out_values_within_noise": dg.MetadataValue.json(unclear),
            "providers_paid": len(providers_paid),
            "duplicates_unpaid": dg.MetadataValue.json(copies),
            "duplicates": "paid once, to the first registrant (example_credit)" if credit_cid
            else "each example pays its provider (no example_credit recorded at ingest)",
            "dagster/row_count": table.num_rows,
            "top_contributors": dg.MetadataValue.md(
                md_table(
                    ["contributor", "role", "address", "weight_bps"],
                    [(r["contributor"], r["role"], r["address"], r["weight_bps"]) for r in top[:15]],
                )
            ),
            "payout": dg.MetadataValue.md(
                bar_md(
                    [f"{r['contributor']} ({r['role']})" for r in top[:15]],
                    [r["weight_bps"] / 100 for r in top[:15]],
                    "share of revenue, %",
                )
            ),
        },
    )


@dg.asset(
    partitions_def=dataset_versions,
    group_name="royalties",
    kinds={"ipfs"},
    deps=["contributor_weights"],  # its record is the head; the weights are named by CID only
)
def provenance_record(
    context: dg.AssetExecutionContext,
    store: StoreResource,
    index: AssetIndex,
    lineage: LineageResource,
) -> dg.Output[dict]:
    """The run's head (weighting) record and its lineage, from the payout back to raw files, as
    W3C PROV-JSON for auditors."""
    version = context.partition_key
    client = store.client()
    head = lineage.cid_of(WEIGHTING, version)
    weights_cid = index.cid_of("contributor_weights", version)
    try:
        records = RunRecords(None, client).lineage(head)
        run_id = records[head].params["run_id"]
        prov_cid = public_store(client).put_bytes(prov_json(records).encode(), cid_version=1, pin=True)
    except ProvenanceError as exc:
        raise dg.Failure(str(exc)) from exc
    return dg.Output(
        {
            "run_id": run_id,
            "head_cid": head,
            "weights_cid": weights_cid,
            "prov_json_cid": prov_cid,
            "records": sorted(records),
        },
        metadata={
            "run_id": run_id,
            "head_cid": head,
            "weights_cid": weights_cid,
            "prov_json_cid": prov_cid,
            "records": len(records),
        },
    )


@dg.asset(partitions_def=dataset_versions, group_name="royalties", kinds={"ethereum"})
def royalty_root(
    context: dg.AssetExecutionContext,
    provenance_record: dict,
    store: StoreResource,
    chain: ChainResource,
    index: AssetIndex,
) -> dg.Output[dict]:
    """The run's records and (address, bps) Merkle root on chain; a rerun sends only what is missing."""
    try:
        client = chain.client()
        pub = publish_run(client, store.client(), provenance_record["run_id"], provenance_record["head_cid"])
    except ProvenanceError as exc:
        raise dg.Failure(str(exc)) from exc
    root_tx = next(t for t in pub.transactions if t.action.startswith("root:")).tx_hash
    if root_tx is None:  # the root was already on chain: keep the hash of the tx that put it there
        root_tx = _previous_value(index, store, context.partition_key).get("root_tx")
    value = {
        "run_id": pub.run_id,
        "root": pub.root,
        "weights_cid": pub.weights_cid,
        "head_cid": pub.head_cid,
        "chain_id": client.chain_id,
        "root_tx": root_tx,
    }  # what is on chain; how many txs this materialization sent is metadata, not content
    return dg.Output(
        value,
        metadata={
            **{k: v for k, v in value.items() if v is not None},
            "sent": pub.sent,
            "gas_used": pub.gas_used,
            "transactions": dg.MetadataValue.md(
                md_table(
                    ["action", "tx", "gas", "skipped"],
                    [(t.action[:40], t.tx_hash or "-", t.gas_used, t.skipped) for t in pub.transactions],
                )
            ),
        },
    )


def within_noise_warning(left_out: pa.Table, unclear: list[str]) -> str:
    """What the run says of contributors whose left-out value is within its noise, each with its value
    and standard error: more runs shrink the error, and only a real but small effect then stands clear."""
    row = {r["contributor"]: r for r in left_out.to_pylist()}
    said = ", ".join(f"{c} ({row[c]['value']:+.2g} +- {row[c]['value_se']:.2g})" for c in unclear)
    return (
        f"the left-out values of {said} are within {NOISE_Z:g} standard errors of zero: their retrains "
        "cannot tell whether their data or labels helped, so their pay leans on what their scores predict; "
        "a smaller effect needs more TrainingConfig.left_out_runs (the standard error falls as one over "
        "the square root of their number)"
    )


def _all_copies(examples: pa.Table, credit: pa.Table | None) -> list[str]:
    """Providers of `examples` the credit table pays nothing: all their examples are duplicates."""
    if credit is None:
        return []
    paid = set(credit["provider"].to_pylist())
    return sorted(set(examples["provider"].to_pylist()) - paid)


def _previous_value(index: AssetIndex, store: StoreResource, version: str) -> dict:
    meta = index.stored("royalty_root", version)
    return decode(meta["kind"], store.client().get(meta["cid"])) if meta else {}
