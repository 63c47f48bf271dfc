"""``bench/contributor_value.py``'s world: providers and labelers with known faults, over any labeled
table (``build_world``) or over texts or images (``build_media_world``), and the variants a model
trains on (``variant``: which examples, labeled by the consensus of which answers).

Providers register in the order of ``PROVIDERS`` (a near-duplicate's credit belongs to the
first-registered original); each labeler answers as ``LABELERS`` says, ``PER_EXAMPLE`` answers per
example, and the consensus is the pipeline's (``labeling.aggregate``), refitted for every variant.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from attribution import InputEncoding
from bench._common import media_world
from labeling import ModelProbs, SimulatedAnnotator, aggregate, auto_smoothing, simulate_answers

MAX_VALIDATION, MAX_POOL = 300, 1500  # real rows: validation set, then the providers' pool
MEDIA_VALIDATION, MEDIA_POOL = 200, 800  # --kind text|image: synthetic rows (a run takes minutes)
# The fewest pool rows a world is built from: the tiny provider (5 %) then still holds 5 examples. A
# small world's truth is noisier; its ceiling (the truth's agreement across seeds) says how much.
MIN_POOL = 100
PER_EXAMPLE = 3  # answers per example
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Provider:
    name: str
    what: str
    faulty: bool
    source: str = "real"  # real rows of the data, or generated: "junk", "flood", "copy" (of copy_of)
    share: float = 0.0  # of the real pool (generated providers: their size, as a share of the pool)
    noise: float = 0.0  # share of features replaced by uniform noise
    copy_of: str | None = None


# Registration order matters: a near-duplicate's credit belongs to the first-registered original.
PROVIDERS = (
    Provider("prov-a", "honest, large", False),  # the first real provider takes the rest of the pool
    Provider("prov-b", "honest, medium (copied by copycat)", False, share=0.18),
    Provider("prov-c", "honest, small", False, share=0.10),
    Provider("prov-d", "honest, 25% features noisy", False, share=0.14, noise=0.25),
    Provider("prov-e", "honest, tiny", False, share=0.05),
    Provider("noisy", "60% of features replaced by noise", True, share=0.14, noise=0.60),
    Provider("junk", "off-distribution: uniform noise, arbitrary labels", True, "junk", share=0.08),
    Provider("copycat", "prov-b's examples, numbers jittered 5% of their sd (categories kept)", True, "copy",
             copy_of="prov-b"),
    Provider("flooder", "5 easy examples, each jittered into many near-copies", True, "flood", share=0.15),
)
LABELERS = (  # (name, accuracy, faulty); the constant one always answers the first class
    ("lab-acc95", 0.95, False),
    ("lab-acc85", 0.85, False),
    ("lab-acc70", 0.70, False),
    ("lab-random", None, True),
    ("lab-constant", None, True),
    ("lab-adversarial", 0.0, True),
)
FAULTY = {p.name for p in PROVIDERS if p.faulty} | {n for n, _, f in LABELERS if f}


@dataclasses.dataclass
class World:
    classes: list[str]
    examples: pa.Table  # example_id, provider, x (features, raw scale), in registration order
    annotations: pa.Table  # labeling.ANNOTATIONS
    xv: np.ndarray  # validation features, raw scale (text/image: empty, the rows are in media)
    yv: list[str]  # validation true labels
    media: media_world.Media | None = None  # --kind text|image: the recipe's model and encoded rows
    value: str = "trak"  # what pay is split by (--value)
    method: str = "dawid_skene"  # --consensus
    probs: ModelProbs | None = None  # a model method's review: out-of-sample probabilities
    # provider -> its content's extra copies by construction (the copycat's rows for the provider it
    # copies; the flooder's rows beyond one per flooded example): the copies-once truth drops them
    copies: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    truth: dict[str, str] = dataclasses.field(default_factory=dict)  # example -> its true label
    _without_labeler: dict[str, Variant] = dataclasses.field(default_factory=dict, repr=False)

    @functools.cached_property
    def smoothing(self) -> float:
        """Dawid-Skene's pseudo-count per confusion cell, fixed by every answer as the pipeline's
        consensus record fixes it: its recounts without some answers and labeler pay use the same."""
        return auto_smoothing(self.annotations)

    def consensus(self, annotations: pa.Table) -> pa.Table:
        """The pipeline's consensus by ``method`` (a model method weighs the review's probabilities)."""
        return aggregate(annotations, method=self.method, probs=self.probs,
                         smoothing=self.smoothing).consensus

    @property
    def provider(self) -> np.ndarray:
        return np.asarray(self.examples["provider"].to_pylist())

    def without_labeler(self, name: str) -> Variant:
        """Every example, labeled by the consensus refitted without ``name``'s answers: built once, for
        the truth and for every pay run's labeler retrains."""
        if name not in self._without_labeler:
            self._without_labeler[name] = variant(self, drop_labeler=name)
        return self._without_labeler[name]


ROLES = {"provider": [p.name for p in PROVIDERS], "labeler": [n for n, _, _ in LABELERS]}




def dedupe(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop rows whose features repeat an earlier row (a target must never equal a training row)."""
    _, first = np.unique(x, axis=0, return_index=True)
    keep = np.sort(first)
    return x[keep], y[keep]


def build_world(x: np.ndarray, y: np.ndarray, seed: int) -> World:
    rng = np.random.default_rng(seed)
    x, y = dedupe(x, y)
    classes = [str(c) for c in range(int(y.max()) + 1)]
    order = rng.permutation(len(x))
    n_val = min(MAX_VALIDATION, len(x) // 5)
    val, pool = order[:n_val], order[n_val : n_val + MAX_POOL]
    if len(pool) < MIN_POOL:
        sys.exit(f"error: {len(x)} distinct rows are too few (need a pool of >= {MIN_POOL} after validation)")
    lo, hi, sd = x[pool].min(0), x[pool].max(0), x[pool].std(0)  # a constant column stays constant

    def noised(rows: np.ndarray, share: float) -> np.ndarray:
        mask = rng.random(rows.shape) < share
        return np.where(mask, rng.uniform(lo, hi, rows.shape), rows)

    # one-hot categories and yes/no flags (every value 0 or 1): a copy of a table keeps them as they are
    moved = np.where(np.isin(x[pool], (0.0, 1.0)).all(axis=0), 0.0, sd)

    def jitter(rows: np.ndarray, scale: float) -> np.ndarray:
        return rows + rng.normal(0.0, 1.0, rows.shape) * scale * moved

    # Flood seeds: the most central pool row of five classes (easy examples), taken out first.
    z = (x[pool] - x[pool].mean(0)) / np.where(sd > 0, sd, 1.0)
    flood_base = []
    for c in rng.permutation(int(y.max()) + 1)[:5]:
        members = np.flatnonzero(y[pool] == c)
        if len(members):
            dist = np.linalg.norm(z[members] - z[members].mean(0), axis=1)
            flood_base.append(pool[members[np.argmin(dist)]])
    rest = np.setdiff1d(pool, flood_base, assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    n = len(pool)
    real = {p.name: round(p.share * n) for p in PROVIDERS if p.source == "real"}
    real[PROVIDERS[0].name] = len(rest) - sum(real.values())  # the first takes the rest
    rows, truth, owner, start = [], [], [], 0
    by_name: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for p in PROVIDERS:
        if p.name in real:
            idx = rest[start : start + real[p.name]]
            start += len(idx)
            xs, ys = noised(x[idx], p.noise) if p.noise else x[idx], y[idx]
        elif p.source == "copy":
            xs, ys = jitter(by_name[p.copy_of][0], 0.05), by_name[p.copy_of][1]
        elif p.source == "junk":
            k = max(10, round(p.share * n))
            xs, ys = rng.uniform(lo, hi, (k, x.shape[1])), rng.integers(0, len(classes), k)
        else:  # flood
            k = max(10 * len(flood_base), round(p.share * n))
            pick = np.resize(np.asarray(flood_base), k)
            xs, ys = jitter(x[pick], 0.02), y[pick]
        by_name[p.name] = (xs, ys)
        rows.append(xs)
        truth += [classes[v] for v in ys]
        owner += [p.name] * len(xs)
    feats = np.vstack(rows)
    ids = [f"{p}/{i:05d}" for i, p in enumerate(owner)]
    copies = known_copies(np.asarray(owner), len(flood_base))
    examples = pa.table(
        {
            "example_id": ids,
            "provider": owner,
            "x": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), feats.shape[1]),
        }
    )
    true = dict(zip(ids, truth, strict=True))
    return World(classes, examples, annotate(true, classes, seed), x[val], [classes[v] for v in y[val]],
                 copies=copies, truth=true)


def known_copies(owner: np.ndarray, flooded: int) -> dict[str, np.ndarray]:
    """Each provider's extra copies by construction: the copycat's rows count for the provider they
    copy; the flooder's rows cycle through ``flooded`` examples, so its rows after the first cycle."""
    out = {p.copy_of: owner == p.name for p in PROVIDERS if p.copy_of}
    flood = np.flatnonzero(owner == "flooder")
    out["flooder"] = np.isin(np.arange(len(owner)), flood[flooded:])
    return out


def media_rows(kind: str, seed: int, data: tuple[list, np.ndarray] | None) -> tuple[list, np.ndarray, int]:
    """The world's payloads and true labels, validation rows first, and how many of them are validation:
    ``data`` (a user's rows: distinct payloads, shuffled by ``seed``, at most ``MEDIA_VALIDATION`` +
    ``MEDIA_POOL``) or seeded synthetic ones."""
    if data is None:
        values, y = media_world.raw_values(kind, MEDIA_VALIDATION + MEDIA_POOL, seed)
        return values, y, MEDIA_VALIDATION
    values, y = media_world.distinct(*data)
    n_val = min(MEDIA_VALIDATION, len(values) // 5)
    order = np.random.default_rng(seed).permutation(len(values))[: n_val + MEDIA_POOL]
    if len(order) - n_val < MIN_POOL:
        sys.exit(f"error: {len(values)} distinct payloads are too few "
                 f"(need a pool of >= {MIN_POOL} after validation)")
    return [values[i] for i in order], y[order], n_val


def build_media_world(kind: str, seed: int, data: tuple[list, np.ndarray] | None = None) -> World:
    """The same providers and labelers over text or image payloads (``media_world``): a user's ``data``
    (payloads, class indices) or synthetic ones."""
    rng = np.random.default_rng(seed)
    values, y, n_val = media_rows(kind, seed, data)
    n_pool = len(values) - n_val
    classes = [str(c) for c in range(int(y.max()) + 1)]
    pool = np.arange(n_val, n_val + n_pool)
    present = [c for c in range(len(classes)) if (y[pool] == c).any()][:5]
    flood_base = [int(pool[np.flatnonzero(y[pool] == c)[0]]) for c in present]
    rest = np.setdiff1d(pool, flood_base)
    rest = rest[rng.permutation(len(rest))]
    real = {p.name: round(p.share * n_pool) for p in PROVIDERS if p.source == "real"}
    real[PROVIDERS[0].name] = len(rest) - sum(real.values())
    corpus = [values[i] for i in rest] if kind == "text" else []
    side = media_world.typical_side(kind, values)  # junk images as large as the data's
    payload, truth, owner, start = [], [], [], 0
    by_name: dict[str, tuple[list, np.ndarray]] = {}
    seen: set = set()

    def unique(make, k: int) -> list:  # near-copies must not be exact copies of each other
        out = []
        while len(out) < k:
            v = make(len(out))
            if v not in seen:
                seen.add(v)
                out.append(v)
        return out

    for p in PROVIDERS:
        if p.name in real:
            idx = rest[start : start + real[p.name]]
            start += len(idx)
            vs = [values[i] for i in idx]
            vs = media_world.noised(kind, vs, p.noise, rng, corpus) if p.noise else vs
            ys = y[idx]
        elif p.source == "copy":
            base, ys = by_name[p.copy_of]
            vs = unique(lambda i, base=base: media_world.light_copy(kind, base[i], rng), len(base))
        elif p.source == "junk":
            k = max(10, round(p.share * n_pool))
            vs, ys = media_world.junk(kind, k, rng, side), rng.integers(0, len(classes), k)
        else:  # flood
            k = max(10 * len(flood_base), round(p.share * n_pool))
            pick = np.resize(np.asarray(flood_base), k)
            vs = unique(lambda i, pick=pick: media_world.light_copy(kind, values[pick[i]], rng), k)
            ys = y[pick]
        seen.update(vs)
        by_name[p.name] = (vs, ys)
        payload += vs
        truth += [classes[v] for v in ys]
        owner += [p.name] * len(vs)
    ids = [f"{p}/{i:05d}" for i, p in enumerate(owner)]
    column = media_world.COLUMN[kind]
    examples = pa.table({"example_id": ids, "provider": owner,
                         column: pa.array(payload, pa.string() if kind == "text" else pa.binary())})
    media = media_world.prepare(kind, payload, list(values[:n_val]), y[:n_val], len(classes))
    true = dict(zip(ids, truth, strict=True))
    return World(classes, examples, annotate(true, classes, seed), np.zeros((0, 0)),
                 [classes[v] for v in y[:n_val]], media,
                 copies=known_copies(np.asarray(owner), len(flood_base)), truth=true)


def annotate(truth: dict[str, str], classes: list[str], seed: int) -> pa.Table:
    """``PER_EXAMPLE`` answers per example from the simulated labelers (``labeling.simulate_answers``)."""
    # the random labeler is "right" with chance 1/c and else uniformly wrong: uniform over all classes
    people = [SimulatedAnnotator(n, 1.0 / len(classes) if acc is None else acc) for n, acc, _ in LABELERS]
    answers = simulate_answers(truth, people, classes, per_example=PER_EXAMPLE, seed=seed + 1)
    label = [classes[0] if a.annotator.name == "lab-constant" else a.label for a in answers]
    n = len(answers)
    return pa.table(
        {
            "annotation_id": pa.array(range(n), pa.int64()),
            "example_id": [a.example_id for a in answers],
            "annotator": [a.annotator.name for a in answers],
            "label": label,
            "created_at": pa.array([EPOCH] * n, pa.timestamp("us", tz="UTC")),
            "updated_at": pa.array([EPOCH] * n, pa.timestamp("us", tz="UTC")),
            "lead_time_s": [a.lead_time_s for a in answers],
        }
    )


@dataclasses.dataclass
class Variant:
    """One world a model trains on: which examples, which labels (consensus of which answers)."""

    examples: pa.Table
    consensus: pa.Table
    x: np.ndarray  # standardized as the pipeline does (InputEncoding fitted on these examples)
    y: np.ndarray
    xv: np.ndarray
    yv: np.ndarray
    media: media_world.Media | None = None  # text/image: x holds row positions in the world's examples


def variant(world: World, keep_examples: np.ndarray | None = None, drop_labeler: str | None = None
            ) -> Variant:
    """The examples kept, the consensus of the answers kept (refitted), inputs encoded as in the pipeline."""
    examples = world.examples if keep_examples is None else world.examples.filter(pa.array(keep_examples))
    ann = world.annotations
    ann = ann.filter(pc.is_in(ann["example_id"], examples["example_id"]))
    if drop_labeler:
        ann = ann.filter(pc.not_equal(ann["annotator"], drop_labeler))
    consensus = world.consensus(ann)
    label = dict(zip(consensus["example_id"].to_pylist(), consensus["label"].to_pylist(), strict=True))
    if world.media is not None:
        keep = np.arange(world.examples.num_rows) if keep_examples is None else np.flatnonzero(keep_examples)
        y = np.asarray([world.classes.index(label[e]) for e in examples["example_id"].to_pylist()])
        return Variant(examples, consensus, keep, y, np.zeros((0, 0)), np.asarray([]), world.media)
    enc = InputEncoding.fit(examples, world.classes)
    y = enc.label_indices([label[e] for e in examples["example_id"].to_pylist()])
    return Variant(examples, consensus, enc.transform(examples).astype(np.float32), y,
                   enc.scale(world.xv).astype(np.float32), enc.label_indices(world.yv))


