"""Text and image rows into a ``ModelTask``'s batches, the same way at training, serving and replay.

A payload encoding is one JSON document, stored by CID beside the model and named in the training
record: for text the tokenizer's own JSON (trained on the training rows only), the maximum length
and the truncation rule; for images the decoding policy (size, colour mode, resize rule); for a local
Hugging Face model (``HfTextEncoding``) the CIDs of its stored files and of its own tokenizer JSON,
with the maximum length. With the
class list and the recipe's sizes it rebuilds the model's task, so serving and an auditor turn rows
into exactly the inputs the model was trained on and need nothing else.

What the data cannot give exactly is a recorded policy, counted per table (``PayloadStats``): texts
longer than ``max_length`` tokens are cut at the end; images of another size are resized, and of
another colour mode converted. Everything else (an empty text, bytes that do not decode) is an
``InputError`` naming the rows.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from .encoding import split_rows
from .errors import InputError

if TYPE_CHECKING:
    from .encoding import InputEncoding
from .model_task import LABELS, ModelTask
from .recipes.image import SIXTEEN_BIT_MODES
from .task import TrainConfig

KINDS = ("text", "image")
TRUNCATION = "keep_first"
CHARS_PER_TOKEN = 16  # a text longer than max_length keeps its first tokens ([CLS] included)


@dataclass(frozen=True)
class RecipeSizes:
    """The recipes' knobs (what a run config may set); each kind reads its own."""

    vocab_size: int = 2000
    max_length: int = 128  # the cap; a run uses the longest training text's length up to it
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    channels: tuple[int, ...] = (16, 32)
    image_resize: str = "squash"  # how images of another size than the most common one are sized


@dataclass(frozen=True)
class PayloadStats:
    """How many rows a recorded policy changed (recorded with the run, shown in its report)."""

    rows: int
    truncated: int = 0  # texts cut to max_length tokens
    resized: int = 0  # images of another size
    converted: int = 0  # images of another colour mode

    def to_params(self) -> dict[str, int]:
        """The counts as a plain dict: the training record's ``payload`` params and its log warning."""
        return asdict(self)


@dataclass(frozen=True)
class TextEncoding:
    """Text for the ``text-transformer`` recipe: a BPE tokenizer trained on the training texts (its JSON
    kept verbatim), the maximum length in tokens and the class list; stored as one JSON document."""

    column: str
    classes: tuple[str, ...]
    tokenizer: str  # the tokenizers JSON (train_tokenizer's bytes, decoded)
    max_length: int
    sizes: RecipeSizes = field(default_factory=RecipeSizes)
    truncation: str = TRUNCATION
    kind = "text"
    recipe = "text-transformer"

    @classmethod
    def fit(
        cls, column: str, texts: Sequence[str], labels: Sequence[str], sizes: RecipeSizes
    ) -> TextEncoding:
        """A BPE tokenizer trained on the training ``texts`` and the longest encoding up to the cap."""
        from .recipes.text import encode_texts, load_tokenizer, train_tokenizer

        _check_texts(column, texts)
        data = train_tokenizer(list(texts), sizes.vocab_size)
        enc = encode_texts(load_tokenizer(data), texts, sizes.max_length)
        longest = int(enc["attention_mask"].sum(1).max())
        return cls(column, _classes(labels), data.decode("utf-8"), longest, sizes)

    def task(self, config: TrainConfig) -> ModelTask:
        """The recipe's text transformer for ``config``, sized by ``sizes`` and the tokenizer's vocabulary."""
        from .recipes.text import text_transformer_task

        s = self.sizes
        return text_transformer_task(
            self.vocab_size, len(self.classes), self.max_length, d_model=s.d_model, n_layers=s.n_layers,
            n_heads=s.n_heads, tokenizer=self.tokenizer.encode("utf-8"), config=config,
        )

    @property
    def max_chars(self) -> int:
        """A generous bound on one input's characters (serving sizes its request bodies by it): longer
        texts are truncated to ``max_length`` tokens anyway."""
        return self.max_length * CHARS_PER_TOKEN

    @property
    def vocab_size(self) -> int:
        """The stored tokenizer's vocabulary size (parsed on each access): the model's embedding rows."""
        return int(self._tokenizer().get_vocab_size())

    def inputs(self, values: Sequence[object]) -> tuple[dict[str, torch.Tensor], PayloadStats]:
        """``input_ids`` and ``attention_mask`` of ``values`` (no labels), cut to ``max_length`` tokens, and
        how many were cut; an ``InputError`` naming rows that are not non-empty text."""
        from .recipes.text import encode_texts

        texts = _check_texts(self.column, values)
        tok = self._tokenizer()
        full = [len(e.ids) for e in tok.encode_batch(list(texts))]
        batch = encode_texts(tok, texts, self.max_length)
        return batch, PayloadStats(len(texts), truncated=sum(n > self.max_length for n in full))

    def _tokenizer(self):
        from .recipes.text import load_tokenizer

        return load_tokenizer(self.tokenizer.encode("utf-8"))

    def to_doc(self) -> dict[str, object]:
        """The stored document, the tokenizer's JSON as its exact text; ``payload_encoding_to_json`` makes
        it canonical bytes and ``payload_encoding_from_json`` reads it back."""
        return {
            "kind": self.kind, "column": self.column, "classes": list(self.classes),
            "tokenizer": self.tokenizer, "max_length": self.max_length,
            "truncation": self.truncation, "sizes": _sizes_doc(self.sizes),
        }


@dataclass(frozen=True)
class ImageEncoding:
    """Images for the ``image-cnn`` recipe: the decoding policy fitted on the training images
    (``ImagePolicy`` as JSON) and the class list; stored as one JSON document."""

    column: str
    classes: tuple[str, ...]
    policy_json: str  # attribution.recipes.image.ImagePolicy.to_json()
    sizes: RecipeSizes = field(default_factory=RecipeSizes)
    kind = "image"
    recipe = "image-cnn"

    @classmethod
    def fit(cls, column: str, images: Sequence[object], labels: Sequence[str], sizes: RecipeSizes
            ) -> ImageEncoding:
        """The most common size and mode of the training images (ties: the larger, then RGB), and
        ``sizes.image_resize`` for the rest: a size is never guessed from one odd image."""
        from .recipes.image import ImagePolicy

        shapes = _image_shapes(column, images)
        size = max(Counter(s for s, _ in shapes).items(), key=lambda kv: (kv[1], kv[0]))[0]
        modes = Counter("L" if m in GRAY_MODES else "RGB" for _, m in shapes)
        mode = "L" if modes["L"] > modes["RGB"] else "RGB"
        resize = "none" if all(s == size for s, _ in shapes) else sizes.image_resize
        policy = ImagePolicy(height=size[1], width=size[0], mode=mode, resize=resize)  # type: ignore[arg-type]
        return cls(column, _classes(labels), policy.to_json(), sizes)

    @property
    def policy(self):
        """The ``ImagePolicy`` parsed from ``policy_json`` (afresh on each access)."""
        from .recipes.image import ImagePolicy

        return ImagePolicy.from_json(self.policy_json)

    @property
    def height(self) -> int:
        """Pixel rows of every decoded image (``policy.height``); serving sizes request bodies by it."""
        return self.policy.height

    @property
    def width(self) -> int:
        """Pixel columns of every decoded image (``policy.width``); serving sizes request bodies by it."""
        return self.policy.width

    @property
    def channels(self) -> int:
        """3 for RGB, 1 for grayscale (``policy.channels``); serving sizes request bodies by it."""
        return self.policy.channels

    def task(self, config: TrainConfig) -> ModelTask:
        """The recipe's ``SmallCNN`` for ``config``, on images decoded under ``policy``."""
        from .recipes.image import image_cnn_task

        return image_cnn_task(self.policy, len(self.classes), channels=self.sizes.channels, config=config)

    def inputs(self, values: Sequence[object]) -> tuple[dict[str, torch.Tensor], PayloadStats]:
        """``pixel_values`` of ``values`` (no labels) decoded under the policy, and how many images were
        resized or converted; an ``InputError`` naming rows that are not image bytes."""
        from .recipes.image import decode_images

        policy = self.policy
        shapes = _image_shapes(self.column, values)
        pixels = decode_images([bytes(v) for v in values], policy)  # type: ignore[arg-type]
        size = (policy.width, policy.height)
        return {"pixel_values": pixels}, PayloadStats(
            len(values),
            resized=sum(s != size for s, _ in shapes),
            converted=sum(("L" if m in GRAY_MODES else "RGB") != policy.mode for _, m in shapes),
        )

    def to_doc(self) -> dict[str, object]:
        """The stored document, the policy nested as an object (read back as canonical JSON text)."""
        return {
            "kind": self.kind, "column": self.column, "classes": list(self.classes),
            "policy": json.loads(self.policy_json), "sizes": _sizes_doc(self.sizes),
        }


@dataclass(frozen=True)
class LocalModel:
    """A Hugging Face model directory on this machine and the CIDs a run names it by (its stored
    file table and its tokenizer JSON): records and encodings carry the CIDs, never the path."""

    path: Path
    files: str  # CID of the directory's file table (storage.FileTable)
    tokenizer_cid: str  # CID of its tokenizer.json, one of those files

    @cached_property
    def tokenizer(self):
        """The directory's own fast tokenizer (loaded once)."""
        from .recipes.hf import hf_tokenizer

        return hf_tokenizer(self.path)


@dataclass(frozen=True)
class HfTextEncoding:
    """Text for a local Hugging Face sequence classifier, tokenized by the directory's own tokenizer
    (never retrained). The stored document names the model's files and its tokenizer JSON by CID;
    ``at(LocalModel)`` points a loaded encoding at those files fetched to this machine."""

    column: str
    classes: tuple[str, ...]
    max_length: int
    files: str  # CID of the starting model's file table (config, weights, tokenizer files)
    tokenizer: str  # CID of its tokenizer.json
    truncation: str = TRUNCATION
    local: LocalModel | None = field(default=None, compare=False, repr=False)
    kind = "text"
    recipe = "hf-local"

    @classmethod
    def fit(cls, column: str, texts: Sequence[str], labels: Sequence[str], sizes: RecipeSizes,
            local: LocalModel) -> HfTextEncoding:
        """The directory checked (a sequence classifier whose vocabulary holds every tokenizer id),
        and the longest training encoding up to the cap and the model's position table."""
        from .recipes.hf import check_hf_classifier, hf_max_positions

        _check_texts(column, texts)
        check_hf_classifier(local.path, local.tokenizer)
        longest = max(len(ids) for ids in local.tokenizer(list(texts))["input_ids"])
        cap = min(sizes.max_length, hf_max_positions(local.path) or sizes.max_length)
        return cls(column, _classes(labels), min(longest, cap), local.files, local.tokenizer_cid, local=local)

    def at(self, local: LocalModel) -> HfTextEncoding:
        """This encoding with its model's files at ``local`` (which must name the same CIDs)."""
        if (local.files, local.tokenizer_cid) != (self.files, self.tokenizer):
            raise InputError(
                f"the local model is files {local.files} with tokenizer {local.tokenizer_cid}, but the "
                f"encoding names files {self.files} with tokenizer {self.tokenizer}"
            )
        return dataclasses.replace(self, local=local)

    def _local(self) -> LocalModel:
        if self.local is None:
            raise InputError(
                f"the model files {self.files} are not on this machine: fetch them and call .at(LocalModel)"
            )
        return self.local

    def task(self, config: TrainConfig) -> ModelTask:
        """The local model as a sequence classifier, one output per class; its files must be here (``at``)."""
        from .recipes.hf import hf_classifier_task

        return hf_classifier_task(self._local().path, n_classes=len(self.classes), config=config)

    @property
    def max_chars(self) -> int:
        """A generous bound on one input's characters (serving sizes request bodies by it)."""
        return self.max_length * CHARS_PER_TOKEN

    def inputs(self, values: Sequence[object]) -> tuple[dict[str, torch.Tensor], PayloadStats]:
        """``input_ids`` and ``attention_mask`` of ``values`` (no labels) by the model's own tokenizer, cut
        to ``max_length`` tokens, and how many were cut; the files must be here (``at``)."""
        from .recipes.hf import hf_encode_texts

        texts = _check_texts(self.column, values)
        tok = self._local().tokenizer
        full = [len(ids) for ids in tok(texts)["input_ids"]]
        batch = hf_encode_texts(tok, texts, self.max_length)
        return batch, PayloadStats(len(texts), truncated=sum(n > self.max_length for n in full))

    def to_doc(self) -> dict[str, object]:
        """The stored document: the model's files and tokenizer by CID, never the local path; its
        ``recipe`` is what tells it apart from a ``TextEncoding`` when read back."""
        return {
            "kind": self.kind, "recipe": self.recipe, "column": self.column, "classes": list(self.classes),
            "files": self.files, "tokenizer": self.tokenizer, "max_length": self.max_length,
            "truncation": self.truncation,
        }


PayloadEncoding = TextEncoding | ImageEncoding | HfTextEncoding
GRAY_MODES = frozenset({"1", "L", "LA", "F", *SIXTEEN_BIT_MODES})


def fit_payload_encoding(
    kind: str, column: str, table: pa.Table, labels: Sequence[str], sizes: RecipeSizes,
    local: LocalModel | None = None,
) -> PayloadEncoding:
    """The encoding for ``kind`` fitted on the training rows of ``table``; with ``local`` (text only),
    the Hugging Face model's own tokenizer instead of one trained here."""
    if kind not in KINDS:
        raise InputError(f"payload kind must be one of {KINDS}, got {kind!r}")
    if column not in table.column_names:
        raise InputError(
            f"the labeled table has no payload column {column!r} (columns: {table.column_names})"
        )
    values = table.column(column).to_pylist()
    if local is not None:
        if kind != "text":
            raise InputError(f"a Hugging Face model directory reads text, not {kind} payloads")
        return HfTextEncoding.fit(column, values, labels, sizes, local)
    fit = TextEncoding.fit if kind == "text" else ImageEncoding.fit
    return fit(column, values, labels, sizes)


def payload_encoding_to_json(encoding: PayloadEncoding) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): the same encoding, the same CID."""
    return json.dumps(encoding.to_doc(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encoding_from_json(data: bytes | str) -> InputEncoding | PayloadEncoding:
    """Whichever encoding a training run stored: a payload encoding (``kind`` text or image) or the
    numeric ``InputEncoding`` of an MLP run."""
    from .encoding import InputEncoding

    return payload_encoding_from_json(data) if "kind" in json.loads(data) else InputEncoding.from_json(data)


def payload_encoding_from_json(data: bytes | str) -> PayloadEncoding:
    """The text or image encoding ``payload_encoding_to_json`` wrote (a Hugging Face one not yet pointed
    ``at`` its files); an ``InputError`` for another kind or truncation rule."""
    raw = json.loads(data)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise InputError(f"this encoding is for {kind!r} payloads, not text or image")
    classes = tuple(raw["classes"])
    if kind == "text" and raw.get("truncation") != TRUNCATION:
        raise InputError(f"text truncation {raw.get('truncation')!r} is not this version's {TRUNCATION!r}")
    if raw.get("recipe") == HfTextEncoding.recipe:
        return HfTextEncoding(raw["column"], classes, int(raw["max_length"]), raw["files"], raw["tokenizer"])
    sizes = RecipeSizes(**{**raw["sizes"], "channels": tuple(raw["sizes"]["channels"])})
    if kind == "text":
        tokenizer = raw["tokenizer"]  # its own JSON, kept as the exact text the model's digest names
        return TextEncoding(raw["column"], classes, tokenizer, int(raw["max_length"]), sizes)
    policy = json.dumps(raw["policy"], sort_keys=True, separators=(",", ":"))
    return ImageEncoding(raw["column"], classes, policy, sizes)


@dataclass(frozen=True)
class PayloadSplit:
    """A labeled table cut into training rows and targets, both encoded by one payload encoding
    (fitted on the training rows): what training, its features and its review share."""

    encoding: PayloadEncoding
    task: ModelTask
    train: dict[str, torch.Tensor]  # with "labels"
    example_ids: list[str]
    targets: dict[str, torch.Tensor]
    target_ids: list[str]
    stats: PayloadStats  # over training rows and targets together


def encode_payload_split(
    table: pa.Table, is_target: Sequence[bool] | np.ndarray, *, kind: str, column: str,
    config: TrainConfig, sizes: RecipeSizes | None = None, encoding: PayloadEncoding | None = None,
    local: LocalModel | None = None,
) -> PayloadSplit:
    """Split a labeled table (``example_id``, ``label``, the payload ``column``) by a target mask,
    keeping row order; encode both parts with ``encoding``, else one fitted on the training rows
    (with ``local``: for that Hugging Face model, its own tokenizer)."""
    train, targets = split_rows(table, is_target)
    enc = encoding or fit_payload_encoding(kind, column, train, train["label"].to_pylist(),
                                           sizes or RecipeSizes(), local)
    x_train, s_train = labelled_inputs(enc, train)
    x_targets, s_targets = labelled_inputs(enc, targets)
    stats = PayloadStats(
        s_train.rows + s_targets.rows, s_train.truncated + s_targets.truncated,
        s_train.resized + s_targets.resized, s_train.converted + s_targets.converted,
    )
    return PayloadSplit(enc, enc.task(config), x_train, train["example_id"].to_pylist(), x_targets,
                        targets["example_id"].to_pylist(), stats)


def labelled_inputs(
    encoding: PayloadEncoding, table: pa.Table
) -> tuple[dict[str, torch.Tensor], PayloadStats]:
    """The model inputs of ``table``'s payload column, with ``labels`` from its ``label`` column."""
    if encoding.column not in table.column_names:
        raise InputError(f"the table has no payload column {encoding.column!r}")
    batch, stats = encoding.inputs(table.column(encoding.column).to_pylist())
    batch[LABELS] = torch.as_tensor(label_indices(encoding.classes, table["label"].to_pylist()))
    return batch, stats


def label_indices(classes: Sequence[str], labels: Sequence[object]) -> np.ndarray:
    """Each label's int64 index in ``classes``, compared as strings; an ``InputError`` names labels outside
    the set."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in labels} - index.keys())
    if unknown:
        raise InputError(f"labels {unknown[:10]} are not in the label set {list(classes)}")
    return np.array([index[str(v)] for v in labels], dtype=np.int64)


def _classes(labels: Sequence[object]) -> tuple[str, ...]:
    return tuple(sorted({str(v) for v in labels}))


def _sizes_doc(sizes: RecipeSizes) -> dict[str, object]:
    return {**asdict(sizes), "channels": list(sizes.channels)}


def _check_texts(column: str, values: Sequence[object]) -> list[str]:
    """The texts, or one error naming the rows that are not non-empty strings."""
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise InputError(
            f"{len(bad)} row(s) of text column {column!r} are not text (rows {bad[:10]}); "
            "give UTF-8 strings"
        )
    empty = [i for i, v in enumerate(values) if not str(v).strip()]
    if empty:
        raise InputError(
            f"{len(empty)} text(s) in column {column!r} are empty or whitespace only (rows {empty[:10]}); "
            "drop them or give them text"
        )
    return list(values)  # type: ignore[arg-type]


def _image_shapes(column: str, values: Sequence[object]) -> list[tuple[tuple[int, int], str]]:
    """Each image's (width, height) and Pillow mode from its header; one error naming the rows
    that are not decodable image bytes."""
    from PIL import Image, UnidentifiedImageError

    out, bad = [], []
    for i, v in enumerate(values):
        if not isinstance(v, bytes | bytearray | memoryview):
            bad.append(i)
            continue
        try:
            with Image.open(io.BytesIO(bytes(v))) as img:
                out.append((img.size, img.mode))
        except (UnidentifiedImageError, OSError, ValueError):
            bad.append(i)
    if bad:
        raise InputError(
            f"{len(bad)} row(s) of image column {column!r} are not image bytes Pillow can decode "
            f"(rows {bad[:10]}); give PNG or JPEG file bytes"
        )
    return out
