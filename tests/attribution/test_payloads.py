"""Text and image payloads into a ModelTask's batches, stored and loaded by bytes (attribution.payloads)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse
import torch
from PIL import Image

from attribution import (
    LABELS,
    AttributionError,
    InputError,
    RecipeSizes,
    TrainConfig,
    encode_payload_split,
    encoding_from_json,
    mixture_weight,
    model_features,
    model_features_from_bytes,
    model_features_to_bytes,
    payload_encoding_from_json,
    payload_encoding_to_json,
    review_task_labels,
    task_model_from_bytes,
    task_model_to_bytes,
    token_probs,
    train_model,
    train_model_plain,
)
from attribution.mislabels import fold_of
from attribution.model_task import concat, model_logits, take
from attribution.payloads import ImageEncoding, TextEncoding, label_indices
from attribution.recipes.text import load_tokenizer

WORDS = {"a": "sun bright warm beach summer", "b": "rain cold wet storm winter", "c": "code bug test deploy"}
FILLER = ["the", "of", "and", "to", "is"]
CONFIG = TrainConfig(epochs=2, batch_size=16, optimizer="adamw", lr=3e-3, n_checkpoints=2, trak_k=64)


def texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    labels = ["abc"[i % 3] for i in range(n)]
    out = [" ".join(rng.choice(WORDS[y].split() + FILLER, size=rng.integers(3, 12))) for y in labels]
    return out, labels


def png(pixels: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode).save(buf, fmt)
    return buf.getvalue()


def images(n: int, seed: int = 0, size: int = 8) -> tuple[list[bytes], list[str]]:
    rng = np.random.default_rng(seed)
    out, labels = [], []
    for i in range(n):
        a = rng.random((size, size)) * 60
        if i % 2:
            a[2:6, 2:6] += 150
        else:
            a[:, 3:5] += 150
        out.append(png(a))
        labels.append(str(i % 2))
    return out, labels


def token_counts(enc: TextEncoding, values: list[str]) -> list[int]:
    return [len(e.ids) for e in load_tokenizer(enc.tokenizer.encode()).encode_batch(values)]


def table(payload: list, labels: list[str], column: str) -> pa.Table:
    ids = [f"{i:064x}" for i in range(len(payload))]
    kind = pa.string() if isinstance(payload[0], str) else pa.binary()
    return pa.table({"example_id": ids, column: pa.array(payload, kind), "label": labels})


def test_text_encoding_is_deterministic_and_round_trips_by_bytes():
    t, y = texts(60)
    a = TextEncoding.fit("text", t, y, RecipeSizes(vocab_size=100))
    b = TextEncoding.fit("text", t, y, RecipeSizes(vocab_size=100))
    data = payload_encoding_to_json(a)
    assert data == payload_encoding_to_json(b)
    back = payload_encoding_from_json(data)
    assert back == a and encoding_from_json(data) == a
    assert back.task(CONFIG).to_json() == a.task(CONFIG).to_json()  # the tokenizer's digest survives
    x1, _ = a.inputs(t[:5])
    x2, _ = back.inputs(t[:5])
    assert all(torch.equal(x1[k], x2[k]) for k in x1)
    assert a.max_length == max(token_counts(a, t))  # the longest training text, under the cap


def test_texts_longer_than_the_cap_are_truncated_and_counted():
    t, y = texts(30)
    enc = TextEncoding.fit("text", t, y, RecipeSizes(vocab_size=80, max_length=6))
    assert enc.max_length == 6
    batch, stats = enc.inputs(t)
    full = token_counts(enc, t)
    assert stats.truncated == sum(n > 6 for n in full) > 0
    assert batch["input_ids"].shape == (30, 6) and stats.rows == 30


@pytest.mark.parametrize(
    ("values", "needle"),
    [(["ok text", "  ", "fine"], "rows [1]"), (["ok", b"bytes"], "rows [1]"), (["", "x"], "rows [0]")],
)
def test_bad_texts_are_one_error_naming_the_rows(values, needle):
    enc = TextEncoding.fit("text", *texts(20), RecipeSizes(vocab_size=60))
    with pytest.raises(InputError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        enc.inputs(values)


def test_image_encoding_takes_the_common_size_and_counts_what_it_resizes():
    imgs, y = images(20)
    odd = png(np.zeros((12, 10)))
    rgb = png(np.zeros((8, 8, 3)), "RGB")
    enc = ImageEncoding.fit("image", [*imgs, odd, rgb], [*y, "0", "1"], RecipeSizes(image_resize="squash"))
    assert (enc.height, enc.width, enc.channels) == (8, 8, 1)
    assert enc.policy.resize == "squash"
    batch, stats = enc.inputs([*imgs[:3], odd, rgb])
    assert batch["pixel_values"].shape == (5, 1, 8, 8)
    assert (stats.resized, stats.converted) == (1, 1)
    assert payload_encoding_from_json(payload_encoding_to_json(enc)) == enc
    same = ImageEncoding.fit("image", imgs, y, RecipeSizes())
    assert same.policy.resize == "none"


def test_images_that_do_not_decode_are_one_error_naming_the_rows():
    imgs, y = images(6)
    enc = ImageEncoding.fit("image", imgs, y, RecipeSizes())
    with pytest.raises(InputError, match=r"rows \[1, 2\]"):
        enc.inputs([imgs[0], b"not an image", "a path.png"])
    with pytest.raises(InputError, match=r"rows \[0\]"):
        ImageEncoding.fit("image", [b"\x89PNG broken", *imgs], ["0", *y], RecipeSizes())


def test_a_split_needs_labels_from_its_classes():
    t, y = texts(30)
    tab = table(t, y, "text")
    mask = np.arange(30) % 5 == 0
    split = encode_payload_split(tab, mask, kind="text", column="text", config=CONFIG,
                                 sizes=RecipeSizes(vocab_size=60))
    assert len(split.example_ids) == 24 and len(split.target_ids) == 6
    assert split.train[LABELS].tolist() == [("abc").index(v) for v, m in zip(y, mask, strict=True) if not m]
    with pytest.raises(InputError, match="not in the label set"):
        encode_payload_split(tab.set_column(2, "label", pa.array(["z"] * 30)), mask, kind="text",
                             column="text", config=CONFIG, encoding=split.encoding)
    with pytest.raises(InputError, match="no payload column 'body'"):
        encode_payload_split(tab, mask, kind="text", column="body", config=CONFIG)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_model_and_features_round_trip_by_bytes(kind):
    payload, y = texts(48) if kind == "text" else images(48)
    column = "text" if kind == "text" else "image"
    split = encode_payload_split(table(payload, y, column), np.arange(48) % 6 == 0, kind=kind, column=column,
                                 config=CONFIG, sizes=RecipeSizes(vocab_size=60, channels=(4, 8)))
    result = train_model(split.task, split.train, split.example_ids, split.targets, seed=0)
    feats = model_features(split.task, result.checkpoints, split.train, k=32, seed=0, epochs=result.epochs)
    blob = model_features_to_bytes(feats)
    task = payload_encoding_from_json(payload_encoding_to_json(split.encoding)).task(TrainConfig())
    back = model_features_from_bytes(blob, task)
    assert model_features_to_bytes(back) == blob and back.epochs == result.epochs  # kept where given
    np.testing.assert_allclose(back.scores(split.targets), feats.scores(split.targets), rtol=1e-5, atol=1e-9)
    fisher = model_features(split.task, result.checkpoints, split.train, k=32, seed=0, epochs=result.epochs,
                            kernel="fisher")
    again = model_features_from_bytes(model_features_to_bytes(fisher), split.task)  # its whole kernel kept
    np.testing.assert_allclose(again.value_scores(split.targets), fisher.value_scores(split.targets),
                               rtol=1e-5, atol=1e-9)
    assert np.abs(fisher.value_scores(split.targets) - feats.value_scores(split.targets)).max() > 1e-6
    model = task_model_from_bytes(task_model_to_bytes(result.model, split.task), task)
    inputs = {k: v for k, v in split.targets.items() if k != LABELS}
    with torch.no_grad():
        assert torch.equal(model(**inputs), result.model.eval()(**inputs))


def test_model_bytes_refuse_another_architecture():
    t, y = texts(30)
    enc = TextEncoding.fit("text", t, y, RecipeSizes(vocab_size=60))
    other = TextEncoding.fit("text", t, y, RecipeSizes(vocab_size=60, d_model=32))
    task = enc.task(CONFIG)
    data = task_model_to_bytes(task.fresh(0), task)
    with pytest.raises(AttributionError, match="not the given task"):
        task_model_from_bytes(data, other.task(CONFIG))


def test_cross_fitted_review_flags_flipped_image_labels():
    imgs, y = images(160, seed=3)
    flipped = np.arange(160) % 10 == 0
    noisy = [str(1 - int(v)) if f else v for v, f in zip(y, flipped, strict=True)]
    enc = ImageEncoding.fit("image", imgs, noisy, RecipeSizes(channels=(4, 8)))
    batch, _ = enc.inputs(imgs)
    batch[LABELS] = torch.as_tensor([int(v) for v in noisy])
    config = TrainConfig(epochs=6, batch_size=16, optimizer="adamw", lr=1e-2)
    review, probs = review_task_labels(enc.task(config), batch, 2, folds=3, seed=0)
    assert probs.shape == (160, 2)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(flipped, 1 - review.quality) > 0.9


def test_cross_fitted_review_trains_every_fold_on_a_trusted_batch_too():
    """`trusted` (a validation set's batch) joins each fold's training rows and is never scored: the
    reference is the loop written out with `train_model_plain` on the other folds' rows plus it."""
    imgs, y = images(60, seed=4)
    enc = ImageEncoding.fit("image", imgs, y, RecipeSizes(channels=(4, 8)))
    batch, _ = enc.inputs(imgs[:40])
    batch[LABELS] = torch.as_tensor([int(v) for v in y[:40]])
    trusted, _ = enc.inputs(imgs[40:])
    trusted[LABELS] = torch.as_tensor([int(v) for v in y[40:]])
    task = enc.task(TrainConfig(epochs=2, batch_size=16, optimizer="adamw", lr=1e-2))
    _, probs = review_task_labels(task, batch, 2, folds=2, seed=5, trusted=trusted)
    fold = torch.as_tensor(fold_of(40, 2, 5))
    for k in range(2):
        held = fold == k
        rows = concat(take(batch, torch.nonzero(~held).flatten()), trusted)
        model = train_model_plain(task, rows, seed=5 + k).eval()
        with torch.no_grad():
            want = torch.softmax(model_logits(model, take(batch, torch.nonzero(held).flatten())).double(), 1)
        np.testing.assert_array_equal(probs[held.numpy()], want.numpy())
    assert not np.allclose(probs, review_task_labels(task, batch, 2, folds=2, seed=5)[1])


def _text_batch(n: int, seed: int):
    t, y = texts(n, seed=seed)
    enc = TextEncoding.fit("text", t, y, RecipeSizes(vocab_size=60))
    batch, _ = enc.inputs(t)
    batch[LABELS] = torch.as_tensor(label_indices(enc.classes, y))
    return enc, batch


def test_token_probs_match_scikit_learn_on_the_tokens_as_words():
    """The reference writes each row's unmasked token ids as words and runs scikit-learn's own
    CountVectorizer, TfidfTransformer and LogisticRegression per fold, the trusted rows in each."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
    from sklearn.linear_model import LogisticRegression

    _, batch = _text_batch(90, seed=1)
    trusted = {k: v[60:] for k, v in batch.items()}
    batch = {k: v[:60] for k, v in batch.items()}
    got = token_probs(batch, 3, folds=3, seed=2, trusted=trusted)

    def words(b):
        return [" ".join(str(int(t)) for t, m in zip(ids, mask, strict=True) if m)
                for ids, mask in zip(b["input_ids"], b["attention_mask"], strict=True)]

    vectorizer = CountVectorizer(token_pattern=r"\S+").fit(words(batch) + words(trusted))
    counts, extra = vectorizer.transform(words(batch)), vectorizer.transform(words(trusted))
    y, extra_y = batch[LABELS].numpy(), trusted[LABELS].numpy()
    fold = fold_of(60, 3, 2)
    for k in range(3):
        held = fold == k
        rows = scipy.sparse.vstack([counts[~held], extra])
        tfidf = TfidfTransformer().fit(rows)
        model = LogisticRegression(max_iter=2000).fit(tfidf.transform(rows), np.r_[y[~held], extra_y])
        np.testing.assert_allclose(got[held], model.predict_proba(tfidf.transform(counts[held])), atol=1e-4)


def test_a_text_review_mixes_the_recipe_with_a_bag_of_tokens_and_an_image_batch_has_none():
    enc, batch = _text_batch(60, seed=2)
    task = enc.task(CONFIG)
    review, probs = review_task_labels(task, batch, 3, folds=3, seed=0, bag_of_tokens=True)
    _, recipe = review_task_labels(task, batch, 3, folds=3, seed=0)
    tokens = token_probs(batch, 3, folds=3, seed=0)
    w = mixture_weight(batch[LABELS].numpy(), recipe, tokens)
    assert review.recipe_weight == w
    np.testing.assert_allclose(probs, w * recipe + (1 - w) * tokens)
    imgs, y = images(20, seed=1)
    image_enc = ImageEncoding.fit("image", imgs, y, RecipeSizes(channels=(4, 8)))
    image_batch, _ = image_enc.inputs(imgs)
    image_batch[LABELS] = torch.as_tensor([int(v) for v in y])
    with pytest.raises(InputError, match="bag-of-tokens model reads input_ids and attention_mask"):
        review_task_labels(image_enc.task(CONFIG), image_batch, 2, folds=2, seed=0, bag_of_tokens=True)


def test_token_probs_of_a_fold_that_learns_one_class_give_it_all():
    _, batch = _text_batch(12, seed=3)
    batch[LABELS] = torch.zeros(12, dtype=torch.int64)
    probs = token_probs(batch, 3, folds=2, seed=0)
    assert (probs[:, 0] == 1.0).all() and (probs[:, 1:] == 0.0).all()
