"""A published attribution run, loaded for serving: model, input encoding, TRAK features, fee split.

Everything is fetched from the content store by the CIDs the run's records name (every block is
verified on read), and the run must be anchored: its head record found on chain and its
royalty root present. Record names follow the record contract (`provenance.activities`): the
head is the `weighting` record, one of its parents the `training` record.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attribution import (
    LABELS,
    AttributionError,
    ContributorError,
    ContributorSplit,
    InputEncoding,
    InputError,
    PayloadEncoding,
    TrainConfig,
    WeightPolicy,
    encoding_from_json,
    features_from_bytes,
    model_features_from_bytes,
    model_from_bytes,
    model_logits,
    task_model_from_bytes,
)
from provenance import (
    TRAINING,
    Chain,
    ProvenanceError,
    RunRecords,
    TrainingRecord,
    WeightingRecord,
    share_leaves,
)
from serving.base_model import with_model_files
from serving.errors import LedgerError, RunNotServable
from serving.fees import merge_bps
from serving.ledger import SPLIT_PENDING, SPLIT_QUERY, SPLIT_RUN
from storage import ContentStore, StorageError, read_parquet

Bps = tuple[tuple[str, int], ...]  # (address, basis points), sorted by address, sum 10,000


@dataclass(frozen=True)
class Prediction:
    """One input's predicted label and probability, its sha256 and the bps its fee is split by: what the
    server charges as one receipt (`serving.app._charge`)."""

    label: str
    probability: float
    input_hash: str
    bps: Bps  # empty while the split is pending
    split: str  # SPLIT_QUERY; SPLIT_RUN when the prediction had no positive attribution; SPLIT_PENDING
    payload: bytes | None = None  # SPLIT_PENDING: the input bytes its attribution is computed from


@dataclass
class ServedRun:
    """A run as `load_run` loads it for the server and the deferred-attribution worker: its model,
    input encoding and TRAK features, the contributor split that turns a prediction's attribution into
    bps, and ``run_bps``, the run's weights, paid when a prediction has no positive attribution."""

    run_id: str
    head_cid: str
    model_cid: str
    root: str
    encoding: InputEncoding | PayloadEncoding
    model: torch.nn.Module
    features: Any
    example_ids: list[str]
    split: ContributorSplit
    run_bps: tuple[tuple[str, int], ...]
    names: dict[str, str] = field(default_factory=dict)  # address -> contributor ids
    # attribution hooks the checkpoint models' layers: one request at a time may use them
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _addresses: list[str] = field(init=False, repr=False, compare=False)
    _row_address: np.ndarray = field(init=False, repr=False, compare=False)  # [split rows, addresses] 0/1
    _positions: np.ndarray = field(init=False, repr=False, compare=False)  # example_ids in the split

    @property
    def kind(self) -> str:
        """What one input is: "numeric" (a row of numbers), "text" or "image" (encoded file bytes)."""
        return getattr(self.encoding, "kind", "numeric")

    @property
    def n_features(self) -> int:
        """Numbers per raw input row of a numeric run (categories one-hot): the width `predict` takes."""
        return self.encoding.n_features

    def __post_init__(self) -> None:
        # the split's rows merged per address, as merge_bps does: sorted addresses, zeros dropped
        addresses = [a for _, a, _ in self.split.rows]
        self._addresses = sorted(set(addresses))
        where = {a: j for j, a in enumerate(self._addresses)}
        self._row_address = np.zeros((len(addresses), len(self._addresses)), dtype=np.int64)
        self._row_address[np.arange(len(addresses)), [where[a] for a in addresses]] = 1
        self._positions = self.split.positions(self.example_ids)  # ContributorError: not servable

    def predict(self, raw: np.ndarray, *, attribute: bool = True, defer: bool = False) -> list[Prediction]:
        """Predictions for raw feature rows [n, n_features]; InputError for bad rows (refused before any
        attribution runs: rows the model overflows on, say). ``defer``: each prediction's split is
        SPLIT_PENDING and carries its row's bytes (``attribute_request`` later)."""
        raw = np.asarray(raw, dtype=np.float64)
        x = self.encoding.scale(raw)
        xt = torch.as_tensor(x, dtype=torch.float32)
        with self._lock:
            with torch.no_grad():
                probs = torch.softmax(self.model(xt), dim=1).numpy()
            overflow = np.flatnonzero(~np.isfinite(probs).all(axis=1)).tolist()
            if overflow:  # finite inputs far outside the training range overflow the float32 model
                raise InputError(f"input rows {overflow[:10]} are too large for the model (its output is not "
                                 "finite); send values on the scale of the training data")
            labels = probs.argmax(1)
            # every row's per-training-example contributions in one pass (attribute_query, batched)
            contributions = self._numeric_scores(x, labels) if attribute and not defer else None
        payloads = [row_bytes(row) for row in raw] if defer else None
        return self._predictions(probs, labels, contributions, [input_hash(row) for row in raw], payloads)

    def predict_payloads(self, values: list[str] | list[bytes], *, attribute: bool = True,
                         defer: bool = False) -> list[Prediction]:
        """Predictions for texts or image bytes, encoded as in training (InputError names bad ones);
        ``defer`` as in ``predict``, the payload being the text's UTF-8 or the image file's bytes."""
        batch, _ = self.encoding.inputs(values)
        with self._lock:
            with torch.no_grad():
                probs = torch.softmax(model_logits(self.model, batch).double(), dim=1).numpy()
            labels = probs.argmax(1)
            contributions = self._payload_scores(batch, labels) if attribute and not defer else None
        payloads = [value_bytes(v) for v in values] if defer else None
        return self._predictions(probs, labels, contributions, [payload_hash(v) for v in values], payloads)

    def attribute_request(self, payloads: list[bytes], labels: list[str]) -> list[Bps | None]:
        """The (address, bps) of each row of one deferred request (None: the run's weights apply),
        from the inputs and labels its receipts hold: the rows of one request together, the same
        calls the synchronous path makes, so each row gets the bps it would have had then."""
        return self.query_bps(self.contributions(payloads, labels))

    def contributions(self, payloads: list[bytes], labels: list[str]) -> np.ndarray:
        """``[n_train, rows]``: each training example's contribution to each stored input's prediction
        of ``labels`` (``features.scores``, as ``predict`` computes it)."""
        try:
            y = np.asarray([self.encoding.classes.index(label) for label in labels], dtype=np.int64)
        except ValueError:
            raise LedgerError(
                f"a pending receipt's label is not one of the run's classes {self.encoding.classes}"
            ) from None
        if self.kind == "numeric":
            x = self.encoding.scale(np.stack([self._row(p) for p in payloads]))
            with self._lock:
                return self._numeric_scores(x, y)
        values = [p.decode("utf-8") for p in payloads] if self.kind == "text" else list(payloads)
        batch, _ = self.encoding.inputs(values)
        with self._lock:
            return self._payload_scores(batch, y)

    def _row(self, payload: bytes) -> np.ndarray:
        if len(payload) != 8 * self.n_features:
            raise LedgerError(f"a pending input holds {len(payload)} bytes, not {self.n_features} float64")
        return np.frombuffer(payload, dtype="<f8")

    def _numeric_scores(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.features.scores(x, labels)

    def _payload_scores(self, batch: dict[str, torch.Tensor], labels: np.ndarray) -> np.ndarray:
        return self.features.scores({**batch, LABELS: torch.as_tensor(labels)})

    def _predictions(
        self,
        probs: np.ndarray,
        labels: np.ndarray,
        contributions: np.ndarray | None,
        hashes: list[str],
        payloads: list[bytes] | None = None,
    ) -> list[Prediction]:
        """One `Prediction` per input: paid by its own attribution where it has one, else by the run's
        weights (`contributions` None: unattributed); pending where `payloads` are given."""
        splits = self.query_bps(contributions) if contributions is not None else [None] * len(hashes)
        return [
            Prediction(
                label=self.encoding.classes[int(labels[i])],
                probability=float(probs[i, labels[i]]),
                input_hash=hashes[i],
                bps=() if payloads else self.run_bps if splits[i] is None else splits[i],
                split=SPLIT_PENDING if payloads else SPLIT_RUN if splits[i] is None else SPLIT_QUERY,
                payload=payloads[i] if payloads else None,
            )
            for i in range(len(hashes))
        ]

    def query_bps(self, contributions: np.ndarray) -> list[Bps | None]:
        """Each column's (address, bps) from its own attribution; None where the run's weights apply
        (no training example helped that prediction, or its scores are not finite)."""
        if contributions.shape[1] == 1:  # a single-input request: no batch machinery
            return [self._one_bps(contributions[:, 0])]
        out: list[tuple[tuple[str, int], ...] | None] = [None] * contributions.shape[1]
        cols = np.flatnonzero(np.isfinite(contributions).all(axis=0))
        try:
            splits = self.split.split_queries(self.example_ids, contributions[:, cols])
        except ContributorError:
            return out
        per_address = (splits.bps @ self._row_address).tolist()  # one product for the whole batch
        for q, ok, row in zip(cols.tolist(), splits.ok.tolist(), per_address, strict=True):
            if ok:
                out[q] = self._paid(row)
        return out

    def _one_bps(self, contributions: np.ndarray) -> Bps | None:
        """``query_bps`` of one row: the same (address, bps), through ``ContributorSplit.split_one``."""
        if not np.isfinite(contributions).all():
            return None
        bps = self.split.split_one(self._positions, contributions)
        return None if bps is None else self._paid((bps @ self._row_address).tolist())

    def _paid(self, per_address: list[int]) -> Bps:
        """(address, bps) of one prediction's per-address bps, addresses that get nothing left out."""
        return tuple((a, v) for a, v in zip(self._addresses, per_address, strict=True) if v > 0)


def limit_threads(threads: int) -> None:
    """``threads`` for torch and for NumPy's BLAS, which otherwise starts a thread per core: on a
    loaded machine a small product then waits milliseconds for a descheduled helper thread. Serving,
    its attribution worker and settlement's drain all compute with `caravan serve --threads`' count."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")


def row_bytes(row: np.ndarray) -> bytes:
    """The row as little-endian float64: what ``input_hash`` hashes and a pending numeric input holds."""
    return np.ascontiguousarray(row, dtype="<f8").tobytes()


def value_bytes(value: str | bytes) -> bytes:
    """A text's UTF-8 bytes or an image file's bytes, as received."""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def input_hash(row: np.ndarray) -> str:
    """sha256 of the row as little-endian float64: the same numbers always give the same hash."""
    return hashlib.sha256(row_bytes(row)).hexdigest()


def payload_hash(value: str | bytes) -> str:
    """sha256 of a text's UTF-8 bytes or of an image file's bytes, as received."""
    return hashlib.sha256(value_bytes(value)).hexdigest()


def _get(store: ContentStore, cid: str, what: str) -> bytes:
    try:
        return store.get(cid)
    except StorageError as exc:
        raise RunNotServable(f"{what} {cid} cannot be read from the content store: {exc}") from None


def _model(output, store: ContentStore) -> tuple[torch.nn.Module, InputEncoding | PayloadEncoding, Any]:
    """The model, its input encoding and its TRAK features, from the training record's outputs (and,
    for an hf-local run, the starting model's files its encoding names by CID)."""
    encoding = with_model_files(store, encoding_from_json(output(TrainingRecord.ENCODING)))
    if isinstance(encoding, InputEncoding):
        model, _ = model_from_bytes(output(TrainingRecord.MODEL))
        return model, encoding, features_from_bytes(output(TrainingRecord.FEATURES))
    task = encoding.task(TrainConfig())  # the architecture only: ModelTask.to_json names no settings
    model = task_model_from_bytes(output(TrainingRecord.MODEL), task)
    return model, encoding, model_features_from_bytes(output(TrainingRecord.FEATURES), task)


def load_run(chain: Chain, store: ContentStore, run_id: str) -> ServedRun:
    """Find the run on chain, check its root, load everything serving needs from the store."""
    records = RunRecords(chain, store)
    try:
        head_cid = records.head(run_id)
        head = records.lineage(head_cid)[head_cid]  # every ancestor readable and verified
        _, train = records.parent(head_cid, TRAINING)
        dist = chain.distribution(run_id)
    except ProvenanceError as exc:
        raise RunNotServable(f"run {run_id!r} is not servable: {exc}") from None
    missing = [n for n in TrainingRecord.OUTPUTS if n not in train.outputs]
    missing += [f"weighting input {n}" for n in (WeightingRecord.EXAMPLES,) if n not in head.inputs]
    if missing:
        raise RunNotServable(f"run {run_id!r}: the records lack {missing}; rerun the pipeline's training")
    weights_cid = head.outputs[WeightingRecord.WEIGHTS]
    weights = read_parquet(_get(store, weights_cid, WeightingRecord.WEIGHTS))
    try:
        leaves = share_leaves(weights)
    except ProvenanceError as exc:
        raise RunNotServable(f"run {run_id!r}: {exc}") from None
    if dist is None:
        raise RunNotServable(
            f"run {run_id!r} has no royalty root on chain: publish it (publish_run) before serving"
        )
    if dist.root != leaves.root:
        raise RunNotServable(
            f"run {run_id!r}: on-chain root {dist.root} differs from its stored weights' {leaves.root}"
        )
    model_cid = train.outputs[TrainingRecord.MODEL]

    def output(name: str) -> bytes:
        return _get(store, train.outputs[name], name)

    try:
        model, encoding, features = _model(output, store)
        attribution = read_parquet(output(TrainingRecord.EXAMPLE_ATTRIBUTION))
        examples, annotations, consensus, credit = records.input_tables(head, WeightingRecord.SPLIT_TABLES)
        addresses = dict(zip(weights["contributor"].to_pylist(), weights["address"].to_pylist(), strict=True))
        policy = WeightPolicy.from_params(head.params.get("policy") or {})
        split = ContributorSplit.build(examples, annotations, consensus, addresses, policy, credit)
    except (AttributionError, StorageError, ValueError, KeyError) as exc:
        raise RunNotServable(f"run {run_id!r}: its stored outputs do not load: {exc}") from None
    example_ids = attribution["example_id"].to_pylist()
    if len(example_ids) != features.n_train:
        raise RunNotServable(
            f"run {run_id!r}: {len(example_ids)} attributed examples but features for {features.n_train}"
        )
    names: dict[str, list[str]] = {}
    for c, a in sorted(addresses.items()):
        names.setdefault(a, []).append(c)
    run_bps = tuple(
        merge_bps(zip(weights["address"].to_pylist(), weights["weight_bps"].to_pylist(), strict=True))
    )
    try:
        return ServedRun(
            run_id=run_id,
            head_cid=head_cid,
            model_cid=model_cid,
            root=leaves.root,
            encoding=encoding,
            model=model,
            features=features,
            example_ids=example_ids,
            split=split,
            run_bps=run_bps,
            names={a: ",".join(cs) for a, cs in names.items()},
        )
    except ContributorError as exc:
        raise RunNotServable(
            f"run {run_id!r}: its example_attribution does not match its examples: {exc}"
        ) from None
