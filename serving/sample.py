"""A small run with the pipeline's whole lineage, stored (and, given a chain, published): the one
sample run of the serving and provenance tests, `bench/serving_load.py`, `bench/chain_costs.py` and
demos.

Synthetic rows (``n_features`` features, 3 classes) from ``providers`` providers, each labeled by
up to three of ``labelers`` labelers with a few wrong votes, become the six records the pipeline
writes (its record contract, `provenance.activities`): ingest (a raw CSV in, the examples out) ->
snapshot -> labeling_export (the annotations) -> consensus -> training (`trained_model`,
`model_encoding`, `example_attribution`, `trak_features`) -> weighting (inputs
`example_attribution`, `examples`, `annotations`, `consensus`; output `contributor_weights`, from
the real weighting policy).

``train=True`` trains the model with attribution: a run serving can load. ``train=False`` is for
runs nobody serves (audits, chain costs at 100,000 examples): the training record names the
untrained model, the fitted encoding and random positive example scores (every contributor then
earns a share), and no TRAK features.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
from eth_account import Account

from attribution import (
    RecipeSizes,
    TrainConfig,
    WeightPolicy,
    contributor_weights,
    encode_payload_split,
    encode_split,
    features_to_bytes,
    model_features_to_bytes,
    model_to_bytes,
    payload_encoding_to_json,
    task_model_to_bytes,
    train_split,
    train_trak_valued,
)
from provenance import (
    CONSENSUS,
    INGEST,
    LABELING_EXPORT,
    SNAPSHOT,
    TRAINING,
    WEIGHTING,
    Chain,
    CodeVersion,
    ConsensusRecord,
    IngestRecord,
    LabelingExportRecord,
    Record,
    SnapshotRecord,
    TrainingRecord,
    WeightingRecord,
    claims_deployed,
    date_export,
    publish_run,
    put_record,
    store_weights,
    utc_time,
)
from storage import ContentStore, snapshot_parquet

CODE = CodeVersion("caravan", "0.1.0", "0" * 40)
AGENT = "caravan-sample"
SOURCE = "synthetic.csv"
CLASSES = ("a", "b", "c")
HIDDEN = (16,)
CONFIG = TrainConfig(epochs=8, batch_size=16, lr=0.1, trak_k=32, n_checkpoints=2,
                     trak_kernel="fisher")  # as the MLP recipe's
PAYLOAD_CONFIG = TrainConfig(epochs=6, batch_size=16, optimizer="adamw", lr=3e-3, trak_k=64, n_checkpoints=2)
PAYLOAD_SIZES = RecipeSizes(vocab_size=80, d_model=32, n_layers=1, channels=(4, 8))


@dataclass(frozen=True)
class SampleRun:
    """A stored sample run, as `build_sample_run` returns it: its record CIDs, the contributors'
    weights, addresses and throwaway keys, and the inputs the tests and benches send to serve it."""

    run_id: str
    records: dict[str, str]  # activity -> record CID, parents first
    raw_cid: str  # the raw CSV the ingest record read
    snapshot_cid: str  # the examples snapshot (also the ingest record's `examples`: same bytes)
    weights_cid: str
    weights: pa.Table  # contributor_weights; one row, and one address, per contributor
    addresses: dict[str, str]  # contributor -> address
    keys: dict[str, str]  # address -> private key of each contributor (throwaway test keys)
    X_test: np.ndarray  # raw rows to send to the server
    kind: str = "numeric"
    inputs: list = field(default_factory=list)  # texts or image bytes to send to a text or image run

    @property
    def head(self) -> str:
        """The run's weighting record."""
        return self.records[WEIGHTING]


def _put_table(store: ContentStore, table: pa.Table, sort_by: str) -> str:
    return store.put_bytes(snapshot_parquet(table, sort_by=sort_by), cid_version=1, pin=True)


def _put_bytes(store: ContentStore, data: bytes) -> str:
    return store.put_bytes(data, cid_version=1, pin=True)


def build_sample_run(
    store: ContentStore,
    chain: Chain | None = None,
    *,
    n: int = 160,
    providers: int = 4,
    labelers: int = 3,
    n_features: int = 6,
    seed: int = 3,
    train: bool = True,
    run_id: str | None = None,
    kind: str = "numeric",
) -> SampleRun:
    """Build and store an n-example run with its whole lineage; publish it on ``chain`` if given.
    ``kind="text"`` or ``"image"`` makes its examples texts or PNGs, trained by their recipe."""
    if kind not in ("numeric", "text", "image") or (kind != "numeric" and not train):
        raise ValueError(f"kind must be numeric, text or image (text and image runs train), got {kind!r}")
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, size=(len(CLASSES), n_features))
    y = rng.integers(0, len(CLASSES), size=n)
    X = centers[y] + rng.normal(0, 1.0, size=(n, n_features))
    names = [f"provider-{i}" for i in range(providers)] + [f"labeler-{i}" for i in range(labelers)]
    accounts = {c: Account.from_key(hashlib.sha256(f"{seed}:{c}".encode()).digest()) for c in names}
    addresses = {c: a.address for c, a in accounts.items()}

    provider = [names[i % providers] for i in range(n)]
    if kind == "numeric":
        ids = [hashlib.sha256(row.tobytes()).hexdigest() for row in X]
        raw = io.StringIO()
        np.savetxt(raw, X, fmt="%.17g", delimiter=",", header=",".join(f"f{j}" for j in range(n_features)))
        raw_cid = _put_bytes(store, raw.getvalue().encode())
        payload = {f"f{j}": X[:, j] for j in range(n_features)}
    else:
        values = sample_payloads(kind, y, seed)
        ids = [hashlib.sha256(v.encode() if isinstance(v, str) else v).hexdigest() for v in values]
        payload = {kind: pa.array(values, pa.string() if kind == "text" else pa.binary())}
        raw_cid = _put_table(store, pa.table(payload), kind)
    examples = pa.table(
        {
            "example_id": ids,
            "provider": provider,
            **payload,
            "source": [raw_cid] * n,  # a file source is named by its content
        }
    )
    annotations = _annotations(ids, y, names[providers:])
    labels = [CLASSES[v] for v in y]
    consensus = pa.table(
        {
            "example_id": ids,
            "label": labels,
            "confidence": np.full(n, 0.9),
            "n_votes": np.full(n, min(3, labelers), dtype=np.int64),
        }
    )
    labeled = examples.append_column("label", pa.array(labels)).sort_by("example_id")
    is_target = np.arange(n) % 8 == 0
    if kind == "numeric":
        outputs, run_id, attribution = _numeric_training(store, labeled, is_target, seed, train, run_id, rng)
    else:
        outputs, run_id, attribution = _payload_training(store, labeled, is_target, kind, seed, run_id)
    policy = WeightPolicy(providers="scores")  # the sample does not retrain without each provider
    weights = contributor_weights(attribution, examples, annotations, consensus, addresses, policy)

    snapshot_cid = _put_table(store, examples, "example_id")
    annotations_cid = _put_table(store, annotations, "annotation_id")
    consensus_cid = _put_table(store, consensus, "example_id")
    weights_cid = store_weights(store, weights)
    lineage = (  # activity, inputs, outputs, parent activities (primary first), params
        (
            INGEST,
            {f"{IngestRecord.SOURCE_PREFIX}0": raw_cid},
            {IngestRecord.EXAMPLES: snapshot_cid},
            (),
            {"source_files": [SOURCE]},
        ),
        (
            SNAPSHOT,
            {SnapshotRecord.EXAMPLES: snapshot_cid},
            {SnapshotRecord.SNAPSHOT: snapshot_cid},
            (INGEST,),
            {},
        ),
        (
            LABELING_EXPORT,
            {LabelingExportRecord.SNAPSHOT: snapshot_cid},
            {LabelingExportRecord.ANNOTATIONS: annotations_cid},
            (SNAPSHOT,),
            {},
        ),
        (
            CONSENSUS,
            {ConsensusRecord.ANNOTATIONS: annotations_cid},
            {ConsensusRecord.CONSENSUS: consensus_cid},
            (LABELING_EXPORT,),
            {},
        ),
        (
            TRAINING,
            {TrainingRecord.LABELED_DATASET: _put_table(store, labeled, "example_id")},
            outputs,
            (CONSENSUS, SNAPSHOT),
            {"run_id": run_id, "seed": seed, "trained": train},
        ),
        (
            WEIGHTING,
            {
                WeightingRecord.EXAMPLE_ATTRIBUTION: outputs[TrainingRecord.EXAMPLE_ATTRIBUTION],
                WeightingRecord.EXAMPLES: snapshot_cid,
                WeightingRecord.ANNOTATIONS: annotations_cid,
                WeightingRecord.CONSENSUS: consensus_cid,
            },
            {WeightingRecord.WEIGHTS: weights_cid},
            (TRAINING, CONSENSUS),
            {"run_id": run_id, "policy": asdict(policy)},
        ),
    )
    records: dict[str, str] = {}
    for step, (activity, inputs, outs, parents, params) in enumerate(lineage):
        start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=2 * step)
        record = Record(
            activity=activity,
            agent=AGENT,
            started_at=utc_time(start),
            ended_at=utc_time(start + dt.timedelta(minutes=1)),
            code=CODE,
            inputs=inputs,
            outputs=outs,
            parents=tuple(records[p] for p in parents),
            params=params,
        )
        records[activity] = put_record(store, record)
    if chain is not None:
        if claims_deployed(chain):  # as the pipeline's `annotations` asset dates each export it writes
            date_export(chain, records[LABELING_EXPORT])
        publish_run(chain, store, run_id, records[WEIGHTING])
    X_test = centers[rng.integers(0, len(CLASSES), size=64)] + rng.normal(0, 1.0, size=(64, n_features))
    keys = {a.address: "0x" + bytes(a.key).hex() for a in accounts.values()}
    test_y = rng.integers(0, len(CLASSES), size=64)
    inputs = [] if kind == "numeric" else sample_payloads(kind, test_y, seed + 1)
    return SampleRun(run_id, records, raw_cid, snapshot_cid, weights_cid, weights, addresses, keys, X_test,
                     kind, inputs)


def _numeric_training(store, labeled, is_target, seed, train, run_id, rng) -> tuple[dict, str, pa.Table]:
    """The MLP run's training outputs (stored), its run id and example scores."""
    split = encode_split(labeled, is_target)
    spec = split.encoding.mlp(HIDDEN)
    outputs = {TrainingRecord.ENCODING: _put_bytes(store, split.encoding.to_json())}
    if train:
        result = train_split(split, HIDDEN, CONFIG, seed=seed, run_id=run_id)
        run_id, model, attribution = result.run_id, result.model, result.example_attribution
        outputs[TrainingRecord.FEATURES] = _put_bytes(store, features_to_bytes(result.features))
    else:
        run_id = run_id or f"sample-{seed}"
        model = spec.build(seed)
        attribution = pa.table(
            {
                "example_id": split.example_ids,
                "score": rng.random(len(split.example_ids)) + 0.01,
                "method": ["sample"] * len(split.example_ids),
                "run_id": [run_id] * len(split.example_ids),
            }
        )
    outputs[TrainingRecord.MODEL] = _put_bytes(store, model_to_bytes(model, spec))
    outputs[TrainingRecord.EXAMPLE_ATTRIBUTION] = _put_table(store, attribution, "example_id")
    return outputs, run_id, attribution


def _payload_training(store, labeled, is_target, kind, seed, run_id) -> tuple[dict, str, pa.Table]:
    """A text or image run's training outputs (its recipe, small), run id and example scores."""
    split = encode_payload_split(labeled, is_target, kind=kind, column=kind, config=PAYLOAD_CONFIG,
                                 sizes=PAYLOAD_SIZES)
    result = train_trak_valued(split.task, split.train, split.example_ids, split.targets, seed=seed,
                               run_id=run_id)  # as the pipeline trains a recipe paid by TRAK value
    attribution = result.example_attribution
    outputs = {
        TrainingRecord.ENCODING: _put_bytes(store, payload_encoding_to_json(split.encoding)),
        TrainingRecord.FEATURES: _put_bytes(store, model_features_to_bytes(result.features)),
        TrainingRecord.MODEL: _put_bytes(store, task_model_to_bytes(result.model, split.task)),
        TrainingRecord.EXAMPLE_ATTRIBUTION: _put_table(store, attribution, "example_id"),
    }
    return outputs, result.run_id, attribution


SUBJECTS = {
    "a": "sun beach summer warm bright", "b": "rain storm winter cold wet", "c": "code test bug server",
}


def sample_payloads(kind: str, y: np.ndarray, seed: int) -> list:
    """Synthetic texts (words of their class among common ones) or 8x8 grayscale PNGs (a class's
    stroke on noise), one per class index in ``y``; the same ``y`` and seed, the same bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out: list = []
    for c in y:
        if kind == "text":
            words = SUBJECTS[CLASSES[c]].split() + ["the", "a", "of", "and", "to", "is", "it"]
            out.append(" ".join(rng.choice(words, size=int(rng.integers(4, 14)))))
            continue
        pixels = rng.random((8, 8)) * 80
        [pixels[:, 3:5], pixels[3:5, :], pixels[np.eye(8, dtype=bool)]][c] += 160
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), "L").save(buf, "PNG", optimize=False)
        out.append(buf.getvalue())
    return out


def _annotations(ids: list[str], y: np.ndarray, labelers: list[str]) -> pa.Table:
    """Up to three votes per example from consecutive labelers; about one vote in seven is wrong."""
    votes = min(3, len(labelers))
    example = np.repeat(np.arange(len(ids)), votes)
    who = (example + np.tile(np.arange(votes), len(ids))) % len(labelers)
    wrong = (example + who) % 7 == 0
    label = np.where(wrong, (y[example] + 1) % len(CLASSES), y[example])
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return pa.table(
        {
            "annotation_id": np.arange(len(example), dtype=np.int64),
            "example_id": [ids[i] for i in example],
            "annotator": [labelers[j] for j in who],
            "label": [CLASSES[v] for v in label],
            "created_at": pa.array([when] * len(example), pa.timestamp("us", tz="UTC")),
            "updated_at": pa.array([when] * len(example), pa.timestamp("us", tz="UTC")),
            "lead_time_s": np.full(len(example), 3.0),
        }
    )
