"""The demo's dataset: scikit-learn's bundled digits (no download), split across providers, as images.

Each digit is an 8×8 grayscale PNG (its 0-16 ink levels scaled to 0-255) in an `image` binary
column, the contract every image dataset follows, so labelers see the image and training
decodes the same bytes. Each provider gets one Parquet file (the folder layout `load_source`
reads as "one provider per file"). One provider's images are degraded by noise before they are
drawn, so the attribution has a real difference in data quality to find. The true labels go to
a separate file that only the simulated annotators read: the dataset itself carries no labels,
as with real raw data.

`caravan demo --data` brings its own dataset instead (`UserData`): read and checked, its truth column
dropped before ingest and kept for the simulated annotators alone, and a validation set held out
(`split_user_data`), then written under the demo's home named by its content (`write_user_data`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labeling import LabelConfigError, check_show, labeling_record
from pipelines.datasets import RESERVED, DatasetError, Payload, example_id, load_source
from pipelines.settings import Settings

PROVIDERS = ("clinic-north", "clinic-south", "school-east", "school-west", "scanner-noisy")
NOISY = {"scanner-noisy": 0.6}  # share of pixels replaced by noise
FIELD = "image"
SIDE = 8  # the digits are 8×8
VALIDATION_DIGITS = 180  # a tenth of the 1,797: the demo's trusted targets
LEVELS = 16  # their ink levels are 0..16
VERSION = "digits-v2"  # v1 held the digits as lists of numbers; v2 holds them as PNGs
CHOICES = tuple(str(d) for d in range(10))


def digit_png(levels: np.ndarray) -> bytes:
    """An 8×8 grayscale PNG of one digit's 64 ink levels (0-16 scaled to 0-255); same levels, same bytes."""
    from PIL import Image

    gray = np.rint(np.asarray(levels, dtype=np.float64).reshape(SIDE, SIDE) * (255 / LEVELS)).astype(np.uint8)
    buf = io.BytesIO()
    image = Image.fromarray(gray)  # a 2-D uint8 array is mode L (grayscale)
    image.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def write_digits(
    folder: Path, *, limit: int | None = None, seed: int = 0, validation: Path | None = None
) -> Path:
    """Write `<provider>.parquet` files (an `image` column of PNGs) and `truth/labels.parquet`; with
    `validation`, also the owner's trusted test digits there (`image`, `label`): the last
    VALIDATION_DIGITS of the draw, clean, never given to a provider."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.data.astype(np.int64)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    drawn = rng.permutation(len(labels))
    held = drawn[len(drawn) - VALIDATION_DIGITS :] if validation else drawn[:0]
    order = drawn[: len(drawn) - len(held)][:limit]
    if validation:
        images = pa.array([digit_png(pixels[i]) for i in held], pa.binary())
        labels_held = pa.array([str(v) for v in labels[held]])
        validation.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({FIELD: images, "label": labels_held}), validation)
    owner = np.arange(len(order)) % len(PROVIDERS)

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(exist_ok=True)
    truth_images, truth_labels = [], []
    for p, provider in enumerate(PROVIDERS):
        idx = order[owner == p]
        rows = pixels[idx].copy()
        if provider in NOISY:
            mask = rng.random(rows.shape) < NOISY[provider]
            rows[mask] = rng.integers(0, LEVELS + 1, size=int(mask.sum()))
        images = [digit_png(r) for r in rows]
        pq.write_table(pa.table({FIELD: pa.array(images, pa.binary())}), folder / f"{provider}.parquet")
        truth_images.extend(images)
        truth_labels.extend(labels[idx].tolist())
    pq.write_table(
        pa.table(
            {FIELD: pa.array(truth_images, pa.binary()), "label": pa.array([str(v) for v in truth_labels])}
        ),
        folder / "truth" / "labels.parquet",
    )
    return folder


class DemoError(RuntimeError):
    """A demo step that cannot go on; the message names the service or input and the fix."""


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
