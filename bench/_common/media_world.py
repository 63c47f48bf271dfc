"""``bench/contributor_value.py --kind text|image``: the same world of faulty providers with text or
image payloads (synthetic, or a user's file), trained with the recipes' models (``attribution.recipes``):
``attribution.train_trak_valued`` as the pipeline pays (``train_model`` for ``--value inrun``) and
``train_model_plain`` (the ground truth's retrains).

The payloads are made here (``lds_models.synthetic_text`` / ``synthetic_images``, no label noise: the
labelers add it), and the faults are made the way a person would make them:

- noisy: a share of the words replaced by random words of the corpus / of the pixels by uniform noise;
- junk: word salad of made-up words / uniform-noise images, arbitrary labels;
- copycat: another provider's examples lightly edited (a word swapped, punctuation, case) / with a
  few pixels changed and re-encoded as JPEG;
- flooder: five examples of the pool, each lightly edited into many near-copies.

The tokenizer (text) is trained once on the world's training texts and kept for every retrain;
images are decoded once under one ``ImagePolicy``. The pipeline's own duplicate grouping
(``pipelines.datasets.to_examples``) sees the raw ``text`` / ``image`` column, as ingest does.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from attribution import ModelTask, train_model, train_model_plain, train_trak_valued
from attribution.model_task import LABELS, take

from .lds_models import IMAGE_SIDE, TEXT_MAX_LENGTH, TEXT_VOCAB, synthetic_images, synthetic_text

IMAGE_RAW_SIDE = 32  # the bytes the providers upload; the model squashes them to IMAGE_SIDE
N_CLASSES = 4
COLUMN = {"text": "text", "image": "image"}
WHAT = {  # the providers' faults, as made here (the bench's PROVIDERS describe the tabular ones)
    "prov-d": "honest, 25% of words / pixels noisy",
    "noisy": "60% of words / pixels replaced by random words / noise",
    "junk": "off-distribution: made-up words / noise images, arbitrary labels",
    "copycat": "prov-b's examples lightly edited (a word, case, a full stop / 0.3% of pixels, JPEG)",
    "flooder": "5 examples, each lightly edited into many near-copies",
}


@dataclasses.dataclass
class Media:
    """One payload kind's model and encoded rows, fixed for the whole benchmark."""

    kind: str
    task: ModelTask
    rows: dict[str, torch.Tensor]  # every world example's encoded payload, in the world's order
    val: dict[str, torch.Tensor]  # the validation set's encoded payload and true labels
    sizes: dict

    def batch(self, keep: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
        out = take(self.rows, torch.as_tensor(keep))
        out[LABELS] = torch.as_tensor(labels, dtype=torch.int64)
        return out

    def val_loss(self, keep: np.ndarray, labels: np.ndarray, seed: int) -> float:
        model = train_model_plain(self.task, self.batch(keep, labels), seed=seed, targets=self.val)
        model.eval()
        with torch.no_grad():
            return float(self.task.loss(model, self.val).float().mean())

    def attributed(
        self, keep: np.ndarray, labels: np.ndarray, example_ids: list[str], seed: int, value: str = "trak"
    ):
        """One attributed run; `value="trak"` scores the examples as the pipeline pays these recipes
        (``attribution.train_trak_valued``: plain training, TRAK value at its checkpoints), "inrun" by
        the per-step scores (``train_model``)."""
        train = train_trak_valued if value == "trak" else train_model
        return train(self.task, self.batch(keep, labels), example_ids, self.val, seed=seed)


def raw_values(kind: str, n: int, seed: int) -> tuple[list, np.ndarray]:
    """Seeded synthetic texts or PNG images (``N_CLASSES`` classes, true labels)."""
    if kind == "text":
        return synthetic_text(n, seed, N_CLASSES, noise=0.0)
    return synthetic_images(n, seed, N_CLASSES, size=IMAGE_RAW_SIDE, noise=0.0)


def distinct(values: Sequence, labels: np.ndarray) -> tuple[list, np.ndarray]:
    """The first row of each distinct payload (a user's file may repeat one; the world's ids and the
    ingest's grouping need every payload once, and a target must never equal a training row)."""
    seen: set = set()
    keep = [i for i, v in enumerate(values) if not (v in seen or seen.add(v))]
    return [values[i] for i in keep], labels[keep]


# ---------------------------------------------------------------- faults, as a person would make them


def noised(kind: str, values: Sequence, share: float, rng: np.random.Generator,
           corpus: Sequence[str]) -> list:
    if kind == "text":
        words = [w for t in corpus for w in t.split()]
        return [" ".join(str(rng.choice(words)) if rng.random() < share else w for w in t.split())
                for t in values]
    out = []
    for data in values:
        img = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        mask = rng.random(img.shape[:2]) < share
        img[mask] = rng.integers(0, 256, (int(mask.sum()), 3))
        out.append(_png(img))
    return out


JUNK_MAX_SIDE = 256  # noise images of a photo's size would cost memory; the model sees 16x16 of any


def junk(kind: str, k: int, rng: np.random.Generator, side: int = IMAGE_RAW_SIDE) -> list:
    """Word salad of made-up words / ``side``-square uniform-noise images (at most ``JUNK_MAX_SIDE``)."""
    side = min(side, JUNK_MAX_SIDE)
    if kind == "text":
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        return [" ".join("".join(rng.choice(letters, int(rng.integers(3, 9))))
                         for _ in range(int(rng.integers(8, 25)))) for _ in range(k)]
    return [_png(rng.integers(0, 256, (side, side, 3)).astype(np.uint8)) for _ in range(k)]


def light_copy(kind: str, value, rng: np.random.Generator):
    """A near-copy: a word swapped, punctuation or case changed / a few pixels changed (0.3 % of them, at
    least one: an edit as light on a user's 8x8 images as on the bench's 32x32 ones), JPEG re-encoded."""
    if kind == "text":
        words = value.split() or ["so"]
        how = int(rng.integers(3))
        if how == 0:
            words[int(rng.integers(len(words)))] = str(rng.choice(["very", "quite", "really", "so"]))
            return " ".join(words)
        return value.upper() if how == 1 else value.capitalize() + "."
    img = np.array(Image.open(io.BytesIO(value)).convert("RGB"))
    for _ in range(max(1, round(3 * img.shape[0] * img.shape[1] / 1024))):  # 3 in a 32x32 image's area
        y, x = rng.integers(0, img.shape[:2])
        img[y, x] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(rng.integers(85, 96)))
    return buf.getvalue()


def typical_side(kind: str, values: Sequence) -> int:
    """The median longer side of the first 50 images (``IMAGE_RAW_SIDE`` for text)."""
    if kind == "text":
        return IMAGE_RAW_SIDE
    return int(np.median([max(Image.open(io.BytesIO(v)).size) for v in values[:50]]))


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- the model


def prepare(kind: str, train_values: list, val_values: list, val_labels: np.ndarray,
            n_classes: int = N_CLASSES) -> Media:
    """The recipe's task and the encoded rows, trained as the pipeline trains the recipe (its
    ``TrainingConfig`` defaults: AdamW; the transformer stops early on the validation set)."""
    from pipelines.assets.training import PAYLOAD_RECIPES, TrainingConfig

    config = TrainingConfig().train_config(PAYLOAD_RECIPES[kind])
    if kind == "text":
        from attribution.recipes import text as recipe

        tok = recipe.train_tokenizer(train_values, vocab_size=TEXT_VOCAB)
        tokenizer = recipe.load_tokenizer(tok)
        vocab = tokenizer.get_vocab_size()
        task = recipe.text_transformer_task(vocab, n_classes, TEXT_MAX_LENGTH, d_model=64, n_layers=2,
                                            n_heads=4, tokenizer=tok, config=config)
        rows = {k: torch.as_tensor(np.asarray(v)) for k, v in recipe.encode_texts(tokenizer, train_values,
                                                                                   TEXT_MAX_LENGTH).items()}
        val = {k: torch.as_tensor(np.asarray(v)) for k, v in recipe.encode_texts(tokenizer, val_values,
                                                                                  TEXT_MAX_LENGTH).items()}
        sizes = {"vocab": vocab, "max_length": TEXT_MAX_LENGTH, "d_model": 64, "layers": 2}
    else:
        from attribution.recipes import image as recipe

        policy = recipe.ImagePolicy(height=IMAGE_SIDE, width=IMAGE_SIDE, mode="RGB", resize="squash")
        task = recipe.image_cnn_task(policy, n_classes, config=config)
        rows = {"pixel_values": torch.as_tensor(recipe.decode_images(train_values, policy)).float()}
        val = {"pixel_values": torch.as_tensor(recipe.decode_images(val_values, policy)).float()}
        sizes = {"image": [3, IMAGE_SIDE, IMAGE_SIDE], "uploaded": typical_side(kind, train_values),
                 "channels": [16, 32]}
    val[LABELS] = torch.as_tensor(val_labels, dtype=torch.int64)
    return Media(kind, task, rows, val, sizes)
