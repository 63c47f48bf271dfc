"""The text and image kinds of ``bench/attribution_lds.py``: data, models, ground truth and anchors.

Everything works on batches as dicts of tensors (``input_ids``/``attention_mask`` or
``pixel_values``, and ``labels``) and on a ``ModelTask``, so the in-run driver, our TRAK, dattri
0.3.0 (TracIn and TRAK on the same checkpoints) and Kronfluence 1.0.1 (EK-FAC on the final model)
all see the same trained model and the same rows.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from attribution.model_task import LABELS, ModelTask, take
from attribution.task import TrainConfig

from . import class_indices

Batch = Mapping[str, torch.Tensor]

# ---------------------------------------------------------------- synthetic data

FILLER = (
    "the", "a", "an", "of", "to", "in", "and", "or", "is", "was", "it", "this", "that", "with", "for", "on",
    "at", "by", "from", "as", "be", "are", "were", "has", "had", "have", "not", "but", "so", "if", "then",
    "than", "very", "just", "also", "more", "most", "some", "any", "each", "every", "all", "both", "few",
    "many", "such", "only", "own", "same", "other", "into", "over", "under", "again", "once", "here",
    "there", "when", "where", "why", "how", "what", "which", "who", "whom", "these", "those", "am", "been",
    "being", "do", "does", "did", "doing", "would", "could", "should", "might", "must", "can", "will"
)


def synthetic_text(n: int, seed: int, n_classes: int = 4,
                   noise: float = 0.05) -> tuple[list[str], np.ndarray]:
    """Sentences of 8-24 words: class topic words (each class has its own 40, drawn with Zipf-like
    weights) mixed into shared filler words, a few topic words of other classes, and ``noise`` of the
    labels flipped. Seeded: the same ``(n, seed)`` gives the same data."""
    rng = np.random.default_rng(seed)
    topics = [[f"{chr(97 + c)}{w:02d}x" for w in range(40)] for c in range(n_classes)]
    zipf = 1.0 / np.arange(1, 41)
    zipf /= zipf.sum()
    labels = rng.integers(0, n_classes, n)
    texts = []
    for c in labels:
        words = []
        for _ in range(rng.integers(8, 25)):
            u = rng.random()
            if u < 0.25:
                words.append(topics[c][rng.choice(40, p=zipf)])
            elif u < 0.33:
                other = (c + rng.integers(1, n_classes)) % n_classes
                words.append(topics[other][rng.choice(40, p=zipf)])
            else:
                words.append(FILLER[rng.integers(len(FILLER))])
        texts.append(" ".join(words))
    flip = rng.random(n) < noise
    labels = np.where(flip, (labels + rng.integers(1, n_classes, n)) % n_classes, labels)
    return texts, labels.astype(np.int64)


COLOURS = np.array([[220, 40, 40], [40, 180, 60], [50, 80, 220], [230, 200, 40], [180, 60, 200],
                    [40, 200, 200]], dtype=np.float64)


def _shape_mask(kind: int, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    if kind == 0:  # filled square
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == 1:  # disc
        return dy**2 + dx**2 <= r**2
    if kind == 2:  # cross
        return ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r / 3) & (np.abs(dy) <= r))
    if kind == 3:  # ring
        d = np.sqrt(dy**2 + dx**2)
        return (d <= r) & (d >= r * 0.55)
    if kind == 4:  # horizontal bar
        return (np.abs(dy) <= r / 2.5) & (np.abs(dx) <= r * 1.3)
    return (np.abs(dx) <= r / 2.5) & (np.abs(dy) <= r * 1.3)  # vertical bar


def synthetic_images(n: int, seed: int, n_classes: int = 4, size: int = 16,
                     noise: float = 0.05) -> tuple[list[bytes], np.ndarray]:
    """PNG-encoded RGB images (``size`` x ``size``): class c is shape c in colour c (jittered
    position, radius and hue) on a random dark background with pixel noise; ``noise`` of the labels
    flipped. Encoded with Pillow, as an uploaded image column would be."""
    from PIL import Image

    if n_classes > len(COLOURS):
        raise ValueError(f"synthetic images have at most {len(COLOURS)} classes")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    out = []
    for c in labels:
        img = rng.uniform(0, 90, 3)[None, None, :] + rng.normal(0, 25, (size, size, 3))
        r = rng.uniform(0.22, 0.32) * size
        cy, cx = rng.uniform(r, size - 1 - r, 2)
        mask = _shape_mask(int(c), size, cy, cx, r)
        colour = np.clip(COLOURS[c] + rng.normal(0, 35, 3), 0, 255)
        img[mask] = 0.35 * img[mask] + 0.65 * colour
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    flip = rng.random(n) < noise
    labels = np.where(flip, (labels + rng.integers(1, n_classes, n)) % n_classes, labels)
    return out, labels.astype(np.int64)


def read_columns(path: str, value_col: str | None, label_col: str | None,
                 what: str) -> tuple[list, np.ndarray]:
    """One value column (text or encoded image bytes) and the labels (as class indices) of a Parquet file."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    for flag, col in ((f"--{what}-col", value_col), ("--label-col", label_col)):
        if col is None or col not in names:
            sys.exit(f"error: {flag} must name a column of {path} (columns: {names})")
    table = pq.read_table(path, columns=[value_col, label_col])
    values = table.column(value_col).to_pylist()
    labels = table.column(label_col).to_pylist()
    if what == "image":
        values = [v["bytes"] if isinstance(v, dict) else v for v in values]  # HF datasets' Image struct
    # a row without a value or a label is left out (a missing label is no class "None")
    keep = [i for i, (v, y) in enumerate(zip(values, labels, strict=True)) if v is not None and y is not None]
    return [values[i] for i in keep], class_indices([str(labels[i]) for i in keep], label_col)


# ---------------------------------------------------------------- outputs, ground truth, metrics


def inputs_of(batch: Batch) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != LABELS}


def evaluate(model: nn.Module, batch: Batch, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Each row's log-probability of its true class under ``model`` (eval mode, no grad) and whether
    the model's top class is the true one."""
    model.eval()
    n = len(batch[LABELS])
    out, hit = [], []
    with torch.no_grad():
        for s in range(0, n, chunk):
            rows = {k: v[s : s + chunk] for k, v in batch.items()}
            logp = F.log_softmax(model(**inputs_of(rows)).float(), dim=1)
            out.append(logp.gather(1, rows[LABELS][:, None]).squeeze(1))
            hit.append(logp.argmax(1) == rows[LABELS])
    return torch.cat(out).double().numpy(), torch.cat(hit).numpy()


def log_p_true(model: nn.Module, batch: Batch) -> np.ndarray:
    """Each row's log-probability of its true class: the target output of the ground truth, the one
    every method scores (in-run: the decrease of the target's loss -log p, an increase of log p)."""
    return evaluate(model, batch)[0]


def accuracy(model: nn.Module, batch: Batch) -> float:
    return round(float(evaluate(model, batch)[1].mean()), 4)


def lds(scores: np.ndarray, masks: np.ndarray, outs: np.ndarray) -> float:
    predicted = masks.astype(np.float64) @ scores  # [retrains, targets]
    rhos = [spearmanr(predicted[:, j], outs[:, j])[0] for j in range(outs.shape[1])]
    return float(np.nanmean(rhos))


def subset_masks(n: int, retrains: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    masks = np.zeros((retrains, n), dtype=bool)
    for r in range(retrains):
        masks[r, rng.choice(n, n // 2, replace=False)] = True
    return masks


def ground_truth(task: ModelTask, train: Batch, targets: Batch, masks: np.ndarray, seed: int, *,
                 fixed_seed: bool, log: Callable[[str], None] = print) -> tuple[np.ndarray, float]:
    """Target outputs (log p of the true class) of models retrained on each subset: with seed
    ``seed + 1 + r`` for retrain r (the default: initialization and order noise count as they do
    in practice), or with ``seed`` for all (``fixed_seed``). Also the retrained models' mean accuracy
    on the targets."""
    from attribution.inrun import train_model_plain

    outs = np.zeros((len(masks), len(targets[LABELS])))
    accs = []
    t0 = time.perf_counter()
    for r, mask in enumerate(masks):
        model = train_model_plain(task, take(train, torch.as_tensor(np.flatnonzero(mask))),
                                  seed=seed if fixed_seed else seed + 1 + r)
        outs[r], hit = evaluate(model, targets)
        accs.append(hit.mean())
        if r == 0 or (r + 1) % max(1, len(masks) // 5) == 0:
            log(f"    retrain {r + 1}/{len(masks)} ({time.perf_counter() - t0:.0f}s, "
                f"mean target accuracy {np.mean(accs):.3f})")
    return outs, round(float(np.mean(accs)), 4)


# ---------------------------------------------------------------- anchors


def _keys(batch: Batch) -> list[str]:
    return sorted(batch)


def _tensor_dataset(batch: Batch):
    from torch.utils.data import TensorDataset

    return TensorDataset(*(batch[k] for k in _keys(batch)))


class _DictDataset(torch.utils.data.Dataset):
    def __init__(self, batch: Batch):
        self.batch, self.n = batch, len(batch[LABELS])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.batch.items()}


def dattri_anchors(task: ModelTask, result, train: Batch, targets: Batch, ks: tuple[int, ...],
                   score: Callable[[str, Callable[[], np.ndarray]], None]) -> None:
    """dattri 0.3.0's TracIn (the checkpoints weighted by the learning rate, plain dot products, as
    ours) and TRAK at each k (the same checkpoints ensembled), on the same model and rows."""
    from dattri.algorithm import TracInAttributor, TRAKAttributor
    from dattri.task import AttributionTask as DTask
    from torch.utils.data import DataLoader

    model = task.fresh(0)
    model.eval()
    if hasattr(model, "_check_inputs"):  # its int(tensor) range checks cannot run under vmap; the rows
        model._check_inputs = lambda *args: None  # were checked when our driver trained on them
    keys = _keys(train)

    def rows(data) -> dict[str, torch.Tensor]:  # dattri vmaps over single rows
        return {k: v.unsqueeze(0) for k, v in zip(keys, data, strict=True)}

    def logits(params, data):
        return torch.func.functional_call(model, params, (), inputs_of(rows(data))).float()

    def loss_func(params, data):
        return F.cross_entropy(logits(params, data), rows(data)[LABELS])

    def margin(params, data):
        lp = F.log_softmax(logits(params, data), 1).gather(1, rows(data)[LABELS][:, None]).squeeze(1)
        return (lp - torch.log1p(-lp.exp().clamp(max=1 - 1e-7))).sum()

    def prob(params, data):
        lp = F.log_softmax(logits(params, data), 1).gather(1, rows(data)[LABELS][:, None])
        return lp.exp().squeeze()

    loader = DataLoader(_tensor_dataset(train), batch_size=50, shuffle=False)
    tloader = DataLoader(_tensor_dataset(targets), batch_size=50, shuffle=False)
    ckpts = result.checkpoints

    def tracin():
        lrs = torch.as_tensor(checkpoint_lr_weights(task.config, len(train[LABELS])))
        att = TracInAttributor(DTask(loss_func, model, ckpts), weight_list=lrs, normalized_grad=False)
        return att.attribute(loader, tloader).detach().double().numpy()

    score("dattri_tracin", tracin)
    for k in ks:
        def trak(k=k):
            att = TRAKAttributor(DTask(margin, model, ckpts), correct_probability_func=prob,
                                 projector_kwargs={"proj_dim": k, "device": "cpu"}, regularization=1e-3)
            att.cache(loader)
            return att.attribute(tloader).detach().double().numpy()

        score(f"dattri_trak_k{k}", trak)


def checkpoint_lr_weights(cfg: TrainConfig, n_train: int) -> list[float]:
    """TracIn's weight of each kept checkpoint: the learning rates of the steps it stands for (those
    since the previous kept checkpoint) summed and divided by the batch size, i.e. the rate each row
    saw per pass over the data times the passes: the in-run sum's own weights (the rate of each step,
    the row's gradient once per epoch), collapsed onto the checkpoints."""
    from attribution.trainer import checkpoint_epochs

    per_epoch = -(-n_train // cfg.batch_size)
    total = cfg.epochs * per_epoch
    out, start = [], 0
    for e in checkpoint_epochs(cfg.epochs, cfg.n_checkpoints):
        end = (e + 1) * per_epoch
        out.append(sum(cfg.lr_at(t, total) for t in range(start, end)) / per_epoch)
        start = end
    return out


def kronfluence_anchor(task: ModelTask, model: nn.Module, train: Batch, targets: Batch) -> np.ndarray:
    """Kronfluence 1.0.1's EK-FAC influence of each training row on each target's loss (its tracked
    layers: Linear and Conv2d; embeddings and norms are not covered), on the final model, on the
    CPU, damped by Kronfluence's heuristic (0.1 x the mean eigenvalue; its default, 1e-8, leaves the
    small eigenvalues of a net's curvature undamped).
    A positive score is a helpful row, as ours. Returns [n_train, n_targets]."""
    import logging

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs

    class ClassificationTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(**inputs_of(batch)).float()
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(F.softmax(logits.detach(), -1), 1).squeeze(1)
            else:
                labels = batch[LABELS]
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            return F.cross_entropy(model(**inputs_of(batch)).float(), batch[LABELS], reduction="sum")

    ktask = ClassificationTask()
    model = prepare_model(copy.deepcopy(model), ktask)
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer("lds", model, ktask, cpu=True, disable_tqdm=True, output_dir=out,
                            log_level=logging.WARNING)
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(num_workers=0))
        analyzer.fit_all_factors("ekfac", _DictDataset(train), per_device_batch_size=64,
                                 factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)
        analyzer.compute_pairwise_scores("pairs", "ekfac", _DictDataset(targets), _DictDataset(train),
                                         per_device_query_batch_size=50, per_device_train_batch_size=100,
                                         score_args=ScoreArguments(damping_factor=None),
                                         overwrite_output_dir=True)
        scores = analyzer.load_pairwise_scores("pairs")["all_modules"]
    return scores.double().numpy().T


# ---------------------------------------------------------------- the sections


def with_config(task: ModelTask, **changes) -> ModelTask:
    return dataclasses.replace(task, config=dataclasses.replace(task.config, **changes))


@dataclasses.dataclass
class Prepared:
    """A kind's model task and its rows: ``train`` and ``targets`` (held out), dicts of tensors."""

    model: str  # "transformer" | "cnn"
    task: ModelTask
    train: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    sizes: dict[str, object]


def split_rows(n: int, n_train: int, n_targets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_train = min(n_train, int(0.8 * n))
    n_targets = min(n_targets, n - n_train)
    return order[:n_train], order[n_train : n_train + n_targets]


def held_out(p: Prepared, te: np.ndarray) -> tuple[np.ndarray, int]:
    """``te`` without the target rows whose encoded inputs equal a training row's (training checks that
    targets are held out), and how many were left out."""
    from attribution.inrun import row_keys

    seen = set(row_keys(p.train))
    keep = np.array([k not in seen for k in row_keys(p.targets)], dtype=bool)
    return te[keep], int((~keep).sum())


def landed(module: str) -> bool:
    """Whether ``attribution/<module>.py`` is in this tree (an editable install elsewhere does not count)."""
    import attribution

    return (Path(attribution.__file__).parent / f"{module.replace('.', '/')}.py").is_file()


def trak_available() -> bool:
    return landed("trak_model")


def our_trak(task: ModelTask, checkpoints, train: Batch, targets: Batch, k: int, seed: int):
    """Our TRAK for a ModelTask model (``attribution.trak_model``), or None where it has not landed."""
    if not trak_available():
        return None
    from attribution import trak_model

    feats = trak_model.model_features(with_config(task, trak_k=k), checkpoints, train, seed=seed)
    return np.asarray(feats.scores(targets), dtype=np.float64), feats


# ---------------------------------------------------------------- the kinds' models

TEXT_MAX_LENGTH, TEXT_VOCAB, IMAGE_SIDE = 32, 512, 16


# Common practice, not tuned to one sample: SGD (plain: its update is lr x gradient) with the rate
# decayed linearly to zero, so the end of training, and so each retrain, is a function of its subset
# more than of the last few batches; AdamW at lr 1e-3 with weight decay 0.01, decayed alike; a small
# weight decay (1e-4) for SGD. Enough epochs to fit the task without overfitting the log-probabilities
# (checked on the synthetic data at 500 and 1,000 rows: the text model's held-out accuracy stops
# improving after ~10 epochs while its log p of the true class falls; the CNN's after ~10-15).
TRAIN_BASE = dict(batch_size=32, lr_schedule="linear", n_checkpoints=3, per_target=True)


def _optimizer_settings(optimizer: str, sgd_lr: float) -> dict[str, object]:
    if optimizer == "sgd":
        return dict(optimizer="sgd", lr=sgd_lr, weight_decay=1e-4)
    return dict(optimizer="adamw", lr=1e-3, weight_decay=1e-2)


def text_config(optimizer: str) -> TrainConfig:
    # Plain SGD on a pre-LN transformer takes a large rate (0.5; 1.0 diverges in some seeds).
    return TrainConfig(epochs=10, **TRAIN_BASE, **_optimizer_settings(optimizer, 0.5))


def image_config(optimizer: str) -> TrainConfig:
    return TrainConfig(epochs=15, **TRAIN_BASE, **_optimizer_settings(optimizer, 0.1))


def prepare_text(texts: list[str], labels: np.ndarray, tr: np.ndarray, te: np.ndarray,
                 optimizer: str) -> Prepared:
    """The text-transformer recipe (attribution/recipes/text.py): a WordPiece tokenizer trained on the
    training rows only, a 2-layer pre-LN encoder with d=64."""
    from attribution.recipes import text as recipe

    n_classes = int(labels.max()) + 1
    tok_bytes = recipe.train_tokenizer([texts[i] for i in tr], vocab_size=TEXT_VOCAB)
    tokenizer = recipe.load_tokenizer(tok_bytes)
    enc = recipe.encode_texts(tokenizer, texts, TEXT_MAX_LENGTH)
    vocab = tokenizer.get_vocab_size()
    task = recipe.text_transformer_task(vocab, n_classes, TEXT_MAX_LENGTH, d_model=64, n_layers=2,
                                        n_heads=4, tokenizer=tok_bytes, config=text_config(optimizer))
    rows = {k: torch.as_tensor(np.asarray(v)) for k, v in enc.items()}
    rows[LABELS] = torch.as_tensor(labels)
    sizes = {"vocab": vocab, "max_length": TEXT_MAX_LENGTH, "d_model": 64, "layers": 2}
    return Prepared("transformer", task, take(rows, torch.as_tensor(tr)), take(rows, torch.as_tensor(te)),
                    sizes)


def prepare_image(images: list[bytes], labels: np.ndarray, tr: np.ndarray, te: np.ndarray,
                  optimizer: str) -> Prepared:
    """The image-cnn recipe (attribution/recipes/image.py) on RGB images squashed to the bench's side."""
    from attribution.recipes import image as recipe

    n_classes = int(labels.max()) + 1
    policy = recipe.ImagePolicy(height=IMAGE_SIDE, width=IMAGE_SIDE, mode="RGB", resize="squash")
    pixels = torch.as_tensor(recipe.decode_images(images, policy))
    task = recipe.image_cnn_task(policy, n_classes, config=image_config(optimizer))
    rows = {"pixel_values": pixels.float(), LABELS: torch.as_tensor(labels)}
    sizes = {"image": [3, IMAGE_SIDE, IMAGE_SIDE], "channels": [16, 32]}
    return Prepared("cnn", task, take(rows, torch.as_tensor(tr)), take(rows, torch.as_tensor(te)), sizes)


# ---------------------------------------------------------------- the run


def load_kind(args) -> tuple[list, np.ndarray, str]:
    """The kind's raw values and labels: ``--data`` or a seeded synthetic set of train + targets rows."""
    if args.data:
        col = args.text_col if args.kind == "text" else args.image_col
        values, labels = read_columns(args.data, col, args.label_col, args.kind)
        return values, labels, args.data
    n = int((args.train + args.targets) / 0.8) + 1  # split_rows keeps at most 80 % for training
    if args.kind == "text":
        return (*synthetic_text(n, args.seed), f"synthetic text ({n} sentences, 4 classes, 5% label noise)")
    return (*synthetic_images(n, args.seed, size=IMAGE_SIDE),
            f"synthetic {IMAGE_SIDE}x{IMAGE_SIDE} PNG images ({n}, 4 classes, 5% label noise)")


def prepare(kind: str, values, labels, tr, te, optimizer: str) -> Prepared:
    fn = prepare_text if kind == "text" else prepare_image
    return fn(values, labels, tr, te, optimizer)


def run(args, log: Callable[[str], None] = print) -> dict:
    """The text or image run: returns the summary (the JSON line's object)."""
    from attribution.inrun import model_steps, plain_model_steps, train_model

    from . import lockstep

    t_start = time.perf_counter()
    values, labels, source = load_kind(args)
    tr, te = split_rows(len(labels), args.train, args.targets, args.seed)
    p = prepare(args.kind, values, labels, tr, te, "sgd")
    te, dropped = held_out(p, te)
    if dropped:  # a user's data may repeat rows (or texts equal up to the encoded length)
        p = prepare(args.kind, values, labels, tr, te, "sgd")
    name, n, nv = p.model, len(tr), len(te)
    ids = [f"ex{i:05d}" for i in range(n)]
    sizes = {"train": n, "targets": nv, "retrains": args.retrains, "classes": int(labels.max()) + 1,
             "epochs": p.task.config.epochs, "batch_size": p.task.config.batch_size,
             "sgd_lr": p.task.config.lr, "lr_schedule": p.task.config.lr_schedule, **p.sizes}
    log(f"data: {source}; model {name} ({p.task.name}); sizes {sizes}; "
        f"torch threads {torch.get_num_threads()}")
    if dropped:
        log(f"  {dropped} drawn target rows left out: their encoded inputs equal a training row's")
    lds_out: dict[str, float] = {}
    anchor: dict[str, dict[str, float]] = {}
    secs: dict[str, float] = {}
    left_out: list[str] = []

    # cost: plain training against training with per-step attribution (mean target loss), interleaved
    plain_task = with_config(p.task, per_target=False)
    plain_s, attributed_s = [], []
    for r in range(2):  # interleaved step by step, each order once; the minimum of each
        p_s, a_s, _ = lockstep(plain_model_steps(plain_task, p.train, seed=args.seed),
                               model_steps(plain_task, p.train, ids, p.targets, seed=args.seed),
                               plain_first=r == 0)
        plain_s.append(float(np.sum(p_s)))
        attributed_s.append(float(np.sum(a_s)))
    cost = {"train_s": round(min(plain_s), 3), "train_with_attribution_s": round(min(attributed_s), 3)}
    log(f"== cost: plain {cost['train_s']:.2f}s, with per-step attribution "
        f"{cost['train_with_attribution_s']:.2f}s")

    masks = subset_masks(n, args.retrains, args.seed)
    log(f"== LDS ({n} train, {nv} targets, {args.retrains} retrains of 50% subsets, a new seed each)")
    t0 = time.perf_counter()
    outs, acc_retrain = ground_truth(p.task, p.train, p.targets, masks, args.seed, fixed_seed=False, log=log)
    target_accuracy = {"retrains_sgd": acc_retrain}
    secs["ground_truth"] = time.perf_counter() - t0
    scores: dict[str, np.ndarray] = {}
    anchors: set[str] = set()

    def score(method: str, fn: Callable[[], np.ndarray], is_anchor: bool = False,
              optional: bool = False) -> None:
        t0 = time.perf_counter()
        chatter = io.StringIO()  # dattri's progress bars and Kronfluence's warnings would bury the figures
        try:
            with contextlib.redirect_stderr(chatter if is_anchor else sys.stderr):
                s = np.asarray(fn(), dtype=np.float64)
        except Exception as exc:  # an anchor (or our TRAK on a layer it lacks) is reported, not fatal
            if not (is_anchor or optional):
                raise
            log(f"  {method}/{name}: failed ({type(exc).__name__}: {exc}); left out")
            log(chatter.getvalue()[-2000:])
            left_out.append(f"{method}: {type(exc).__name__}")
            return
        key = f"{method}/{name}"
        secs[key] = time.perf_counter() - t0
        scores[key] = s
        v = round(lds(s, masks, outs), 4)
        if is_anchor:
            anchors.add(key)
            anchor[key] = {"lds": v, "s": round(secs[key], 2)}
        else:
            lds_out[key] = v
        log(f"  LDS {key:<30} {v:.3f}   ({secs[key]:.1f}s){'  [anchor]' if is_anchor else ''}")

    holder = {}

    def inrun():
        holder["res"] = train_model(p.task, p.train, ids, p.targets, seed=args.seed)
        return holder["res"].per_target

    score("inrun_sgd", inrun)
    res = holder["res"]
    target_accuracy[f"inrun_sgd/{name}"] = accuracy(res.model, p.targets)
    log(f"  held-out accuracy: trained on all {n} rows {target_accuracy[f'inrun_sgd/{name}']:.3f}, "
        f"on the 50% subsets {acc_retrain:.3f} (mean)")
    ks = tuple(args.trak_k)
    if trak_available():
        for k in ks:
            score(f"trak_k{k}", lambda k=k: our_trak(p.task, res.checkpoints, p.train, p.targets, k,
                                                     args.seed)[0], optional=True)
    else:
        log(f"  trak_k*/{name}: our TRAK for ModelTask models is not in this tree; left out")
        left_out.append("trak_k*: attribution.trak_model missing")
    if args.anchor:
        dattri_anchors(p.task, res, p.train, p.targets, ks,
                       lambda m, fn: score(m, fn, is_anchor=True))
        score("kronfluence_ekfac", lambda: kronfluence_anchor(p.task, res.model, p.train, p.targets),
              is_anchor=True)
    else:
        left_out.append("anchors: --no-anchor")

    if args.adamw:
        pa = prepare(args.kind, values, labels, tr, te, "adamw")
        log(f"== AdamW: {args.retrains} retrains with AdamW (lr {pa.task.config.lr}), new seed each")
        t0 = time.perf_counter()
        outs_a, target_accuracy["retrains_adamw"] = ground_truth(pa.task, pa.train, pa.targets, masks,
                                                                 args.seed, fixed_seed=False, log=log)
        secs["ground_truth_adamw"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        res_a = train_model(pa.task, pa.train, ids, pa.targets, seed=args.seed)
        key = f"inrun_adamw/{name}"
        secs[key] = time.perf_counter() - t0
        lds_out[key] = round(lds(res_a.per_target, masks, outs_a), 4)
        target_accuracy[key] = accuracy(res_a.model, pa.targets)
        log(f"  LDS {key:<30} {lds_out[key]:.3f}   ({secs[key]:.1f}s; held-out accuracy "
            f"{target_accuracy[key]:.3f}, retrains {target_accuracy['retrains_adamw']:.3f})")
        for k in ks if trak_available() else ():  # TRAK at the AdamW run's checkpoints, same truth
            key, t0 = f"trak_k{k}_adamw/{name}", time.perf_counter()
            s = our_trak(pa.task, res_a.checkpoints, pa.train, pa.targets, k, args.seed)[0]
            secs[key] = time.perf_counter() - t0
            lds_out[key] = round(lds(s, masks, outs_a), 4)
            log(f"  LDS {key:<30} {lds_out[key]:.3f}   ({secs[key]:.1f}s)")
    else:
        log("  inrun_adamw: left out (--no-adamw)")
        left_out.append("inrun_adamw: --no-adamw")

    if args.fixed_seed:
        log(f"== LDS against {args.retrains} retrains with one fixed seed (@fixed_seed)")
        outs_f, target_accuracy["retrains_sgd@fixed_seed"] = ground_truth(
            p.task, p.train, p.targets, masks, args.seed, fixed_seed=True, log=log)
        for key, s in scores.items():
            v = round(lds(s, masks, outs_f), 4)
            if key in anchors:
                anchor[f"{key}@fixed_seed"] = {"lds": v, "s": anchor[key]["s"]}
            else:
                lds_out[f"{key}@fixed_seed"] = v
            log(f"  LDS {key + '@fixed_seed':<30} {v:.3f}")
    else:
        log("  fixed-seed ground truth: left out (--no-fixed-seed)")
        left_out.append("@fixed_seed: --no-fixed-seed")

    loco = loco_default = None
    if args.loco:
        log("== contributors (10 providers, 3 with 30% and 3 with 10% flipped labels; one seed)")
        loco, loco_default = loco_section(p, args.seed, log)
    else:
        left_out.append("loco_spearman: --no-loco")

    log("== mislabels (10% of training labels flipped)")
    mis, (default, without) = mislabel_section(p, args.seed, log)
    minutes = round((time.perf_counter() - t_start) / 60, 2)
    summary = {
        "kind": args.kind,
        "model": name,
        "sizes": sizes,
        "target_accuracy": target_accuracy,
        "lds": lds_out,
        "anchor": anchor or None,
        "loco_spearman": loco,
        "loco_spearman_default": loco_default,  # the pipeline's example value: TRAK value
        "mislabel_auc": round(min(mis.values()), 4),
        "mislabel_auc_default": round(default, 4),  # the pipeline's detector
        "mislabel_auc_default_without_validation": round(without, 4),
        "mislabel_auc_by_method": {k: round(v, 4) for k, v in mis.items()},
        **cost,
        "seconds": {k: round(v, 2) for k, v in secs.items()},
        "left_out": left_out,
        "minutes": minutes,
    }
    return summary


def loco_section(p: Prepared, seed: int, log: Callable[[str], None]) -> tuple[float, float]:
    """Leave-one-contributor-out: scores summed per provider against the change in mean target loss
    when the provider's rows are left out (one seed for all retrains). (in-run SGD, TRAK value: what
    the pipeline values examples by, and providers past ``left_out_max``; ``valued_by_trak`` at the same
    run's checkpoints, the task's ``trak_k``)."""
    from attribution import model_features, valued_by_trak
    from attribution.inrun import train_model, train_model_plain

    rng = np.random.default_rng(seed + 7)
    n, n_prov = len(p.train[LABELS]), 10
    c = int(max(p.train[LABELS].max(), p.targets[LABELS].max())) + 1
    owner = rng.permutation(np.arange(n) % n_prov)
    flip_rate = np.array([0.3] * 3 + [0.1] * 3 + [0.0] * 4)
    y = p.train[LABELS].numpy()
    flip = rng.random(n) < flip_rate[owner]
    train = dict(p.train)
    train[LABELS] = torch.as_tensor(np.where(flip, (y + rng.integers(1, c, n)) % c, y))
    task = with_config(p.task, per_target=False)
    res = train_model(task, train, [f"ex{i:05d}" for i in range(n)], p.targets, seed=seed)
    valued = valued_by_trak(res, model_features(task, res.checkpoints, train, seed=seed), p.targets)
    full = -log_p_true(res.model, p.targets).mean()
    truth = []
    for q in range(n_prov):
        keep = torch.as_tensor(np.flatnonzero(owner != q))
        model = train_model_plain(task, take(train, keep), seed=seed)
        truth.append(-log_p_true(model, p.targets).mean() - full)
    rhos = []
    for method, scores in (("inrun_sgd", res.scores), ("trak_value", valued.scores)):
        rhos.append(round(float(spearmanr([scores[owner == q].sum() for q in range(n_prov)], truth)[0]), 4))
        log(f"  LOCO Spearman (10 providers, {method}/{p.model}): {rhos[-1]:.3f}")
    return rhos[0], rhos[1]


def mislabel_section(
    p: Prepared, seed: int, log: Callable[[str], None]
) -> tuple[dict[str, float], tuple[float, float]]:
    """ROC-AUC of flipped rows against clean ones: the in-run score against the held-out targets'
    mean loss (a flipped row hurts them: low score) and TRAK self-influence where ours exists; and
    the pipeline's own detector (`review_task_labels`: the recipe 5-fold cross-fitted, a text recipe
    mixed with a bag-of-tokens model, every fold also trained on the targets, whose labels are trusted
    as a declared validation set's; scored by cleanlab), the figure `mislabel_auc_default` names (and
    without the targets, as a version without a validation set:
    `mislabel_auc_default_without_validation`)."""
    from sklearn.metrics import roc_auc_score

    from attribution import review_task_labels
    from attribution.inrun import train_model

    rng = np.random.default_rng(seed + 11)
    n = len(p.train[LABELS])
    c = int(max(p.train[LABELS].max(), p.targets[LABELS].max())) + 1
    y = p.train[LABELS].numpy()
    flip = rng.random(n) < 0.1
    train = dict(p.train)
    train[LABELS] = torch.as_tensor(np.where(flip, (y + rng.integers(1, c, n)) % c, y))
    task = with_config(p.task, per_target=False)
    res = train_model(task, train, [f"ex{i:05d}" for i in range(n)], p.targets, seed=seed)
    out = {f"inrun_sgd/{p.model}": float(roc_auc_score(flip, -res.scores))}
    try:
        trak = our_trak(task, res.checkpoints, train, p.targets, 512, seed)
    except NotImplementedError as exc:
        log(f"  TRAK self-influence left out: {exc}")
        trak = None
    if trak is not None and hasattr(trak[1], "self_influence"):
        out[f"trak_k512_self/{p.model}"] = float(roc_auc_score(flip, np.asarray(trak[1].self_influence())))
    for key, v in out.items():
        log(f"  mislabel ROC-AUC ({int(flip.sum())} of {n} flipped, {key}): {v:.3f}")
    tokens = p.model == "transformer"  # the pipeline mixes a text recipe with a bag-of-tokens model
    alone, _ = review_task_labels(task, train, c, folds=5, seed=seed, bag_of_tokens=tokens)
    without = float(roc_auc_score(flip, -np.asarray(alone.quality)))
    t0 = time.perf_counter()
    review, _ = review_task_labels(task, train, c, folds=5, seed=seed, trusted=p.targets,
                                   bag_of_tokens=tokens)
    secs = time.perf_counter() - t0
    default = float(roc_auc_score(flip, -np.asarray(review.quality)))
    mixed = ""
    if tokens:
        recipe, _ = review_task_labels(task, train, c, folds=5, seed=seed, trusted=p.targets)
        mixed = (f"mixed with a bag-of-tokens model, recipe weight {review.recipe_weight:.2f} (the recipe "
                 f"alone {roc_auc_score(flip, -np.asarray(recipe.quality)):.3f}), ")
    log(f"  mislabel default detector (review_task_labels: 5-fold {p.model}, {mixed}cleanlab, every fold "
        f"also trained on the {len(p.targets[LABELS])} targets, trusted labels as a declared validation "
        f"set's; {secs:.1f}s): {default:.3f}; without a validation set {without:.3f}")
    return out, (default, without)
