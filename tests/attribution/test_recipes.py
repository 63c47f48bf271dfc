"""Recipes: deterministic tokenizer bytes and pixels, models made only of layers the engine scores."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attribution.errors import InputError, UnsupportedModelError
from attribution.inrun import scored_modules
from attribution.model_task import ModelTask, classification_loss
from attribution.recipes.image import ImagePolicy, decode_images, image_cnn_task
from attribution.recipes.mlp import mlp_task
from attribution.recipes.text import (
    PAD_ID,
    TextTransformer,
    encode_texts,
    load_tokenizer,
    text_transformer_task,
    train_tokenizer,
)
from attribution.task import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [f"The quick brown fox {i} jumps over the lazy dog, number {i * 7}! Café déjà vu." for i in range(60)]
TEXTS += ["hello world", "Hello, there: world?", "a b c d e f g"]


def _start_python(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code, not an installed copy
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _state_bytes(model: nn.Module) -> bytes:
    return b"".join(k.encode() + v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items())


# ---- tokenizer -------------------------------------------------------------------------------------


def test_tokenizer_bytes_are_identical_across_processes() -> None:
    code = (
        "import hashlib, json, sys\n"
        "from attribution.recipes.text import train_tokenizer\n"
        "print(hashlib.sha256(train_tokenizer(json.load(sys.stdin), vocab_size=100)).hexdigest())\n"
    )
    procs = [_start_python(code) for _ in range(3)]  # three processes at once, each with its own hash seed
    digests = []
    for p in procs:
        out, err = p.communicate(json.dumps(TEXTS), timeout=120)
        assert p.returncode == 0, err
        digests.append(out.strip())
    here = hashlib.sha256(train_tokenizer(TEXTS, vocab_size=100)).hexdigest()
    assert digests == [here] * 3


def test_tokenizer_depends_on_texts_and_round_trips() -> None:
    data = train_tokenizer(TEXTS, vocab_size=100)
    assert train_tokenizer(TEXTS[:-5] + ["zebra quartz"] * 5, vocab_size=100) != data
    assert train_tokenizer(TEXTS, vocab_size=80) != data
    tok = load_tokenizer(data)
    assert tok.to_str().encode("utf-8") == data
    assert tok.get_vocab_size() == 100
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]")] == [0, 1, 2]
    # Normalization recorded in the bytes: case and compatibility forms do not change ids.
    assert tok.encode("HELLO World").ids == tok.encode("hello world").ids
    assert tok.encode("ﬁ").ids == tok.encode("fi").ids  # NFKC
    with pytest.raises(InputError, match="tokenizers JSON"):
        load_tokenizer(b"not json")


def test_tokenizer_refuses_bad_arguments() -> None:
    with pytest.raises(InputError, match="no texts"):
        train_tokenizer([])
    with pytest.raises(InputError, match="one str"):
        train_tokenizer("hello world")
    with pytest.raises(InputError, match="special tokens"):
        train_tokenizer(TEXTS, vocab_size=3)


def test_encode_pads_and_truncates_to_max_length() -> None:
    tok = load_tokenizer(train_tokenizer(TEXTS, vocab_size=100))
    long_text = " ".join(["quick brown fox"] * 20)
    batch = encode_texts(tok, ["The quick brown fox", "", long_text], max_length=8)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape == (3, 8)
    assert ids[:, 0].tolist() == [2, 2, 2]  # [CLS] first: every example has a token to pool
    n = len(tok.encode("The quick brown fox").ids)
    assert n == 5
    assert mask[0].tolist() == [1] * n + [0] * (8 - n)
    assert (ids[0, n:] == PAD_ID).all()
    assert mask[1].tolist() == [1] + [0] * 7
    assert mask[2].tolist() == [1] * 8  # truncated
    assert ids[2].tolist() == tok.encode(long_text).ids[:8]


# ---- text transformer --------------------------------------------------------------------------------


def _text_model(seed: int = 0, **kw) -> TextTransformer:
    return text_transformer_task(60, 3, 24, d_model=32, n_heads=4, **kw).fresh(seed).eval()


def test_text_transformer_shape_and_padding_invariance() -> None:
    model = _text_model()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 60, (5, 10), generator=g)
    mask = torch.ones_like(ids)
    ids[1, 4:], mask[1, 4:] = PAD_ID, 0
    ids[3, 1:], mask[3, 1:] = PAD_ID, 0
    logits = model(ids, mask)
    assert logits.shape == (5, 3)
    with torch.no_grad():
        for extra in (1, 14):
            more_ids = torch.cat([ids, torch.full((5, extra), PAD_ID)], 1)
            more_mask = torch.cat([mask, torch.zeros(5, extra, dtype=torch.int64)], 1)
            torch.testing.assert_close(model(more_ids, more_mask), logits, atol=1e-5, rtol=0)
        # Whatever sits under a pad (another id) changes nothing either.
        noisy = ids.clone()
        noisy[mask == 0] = 7
        torch.testing.assert_close(model(noisy, mask), logits, atol=1e-5, rtol=0)
        # An example alone, unpadded, scores as in the padded batch.
        torch.testing.assert_close(model(ids[1:2, :4], mask[1:2, :4]), logits[1:2], atol=1e-5, rtol=0)


def test_text_transformer_refuses_mismatched_inputs() -> None:
    model = _text_model()
    ok = torch.ones(2, 24, dtype=torch.int64)
    with pytest.raises(InputError, match="position table holds 24"):
        model(torch.ones(2, 25, dtype=torch.int64), torch.ones(2, 25, dtype=torch.int64))
    bad = ok.clone()
    bad[1, 3] = 60
    with pytest.raises(InputError, match="tokenizer does not match the model's vocabulary"):
        model(bad, ok)
    with pytest.raises(InputError, match="no unmasked token"):
        model(ok, torch.zeros_like(ok))
    with pytest.raises(InputError, match=r"\[n, length\]"):
        model(ok, ok[:, :5])
    with pytest.raises(ValueError, match="divisible by n_heads"):
        text_transformer_task(60, 3, 24, d_model=30, n_heads=4)


def test_text_task_build_is_deterministic_and_recorded() -> None:
    data = train_tokenizer(TEXTS, vocab_size=100)
    task = text_transformer_task(100, 2, 16, d_model=16, n_heads=2, n_layers=1, tokenizer=data)
    assert isinstance(task, ModelTask) and task.name == "text-transformer"
    torch.manual_seed(123)
    a = _state_bytes(task.build(0))
    torch.manual_seed(456)
    assert _state_bytes(task.build(0)) == a == _state_bytes(task.fresh(0))
    assert _state_bytes(task.build(1)) != a
    assert task.recipe == {"vocab_size": 100, "n_classes": 2, "max_length": 16, "d_model": 16, "n_layers": 1,
                           "n_heads": 2, "d_ff": 64, "dropout": 0.0,
                           "tokenizer_sha256": hashlib.sha256(data).hexdigest()}
    assert '"module":"text-transformer"' in task.to_json()


def test_text_transformer_learns_a_separable_task() -> None:
    """The recipe trains end to end from encoded texts (a smoke check, not a benchmark)."""
    texts = [f"{w} movie {i}" for i in range(16) for w in ("great", "awful")]
    labels = torch.tensor([0, 1] * 16)
    data = train_tokenizer(texts, vocab_size=60, min_frequency=1)
    tok = load_tokenizer(data)
    batch = {**encode_texts(tok, texts, 8), "labels": labels}
    task = text_transformer_task(tok.get_vocab_size(), 2, 8, d_model=16, n_heads=2, n_layers=1)
    model = task.fresh(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        classification_loss(model, batch).mean().backward()
        opt.step()
    assert classification_loss(model, batch).mean().item() < 0.1


# ---- images ------------------------------------------------------------------------------------------


def _image(width: int, height: int, fmt: str, mode: str = "RGB", seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buf, fmt)
    return buf.getvalue()


def test_decode_png_and_jpeg() -> None:
    policy = ImagePolicy(height=6, width=10)
    png, jpeg, gray = _image(10, 6, "PNG"), _image(10, 6, "JPEG"), _image(10, 6, "PNG", "L")
    x = decode_images([png, jpeg, gray], policy)
    assert x.shape == (3, 3, 6, 10) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    from PIL import Image

    expected = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy(), expected)
    assert torch.equal(x[2, 0], x[2, 1])  # grey converted to RGB: equal channels
    assert decode_images([png, gray], ImagePolicy(6, 10, mode="L")).shape == (2, 1, 6, 10)


def test_decode_scales_16_bit_grey_levels_instead_of_clipping_them() -> None:
    """A 16-bit grayscale PNG (as medical and scientific images often are) keeps its picture: each level
    v becomes round(v * 255 / 65535), where Pillow's own conversion would turn every level above 255
    white."""
    from PIL import Image

    levels = np.random.default_rng(4).integers(0, 65536, (6, 10)).astype(np.uint16)
    levels[0, :3] = [0, 65535, 257]  # the extremes, and one 8-bit step (Pillow alone: white)
    buf = io.BytesIO()
    Image.fromarray(levels).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I;16")
    expected = np.round(levels.astype(np.float64) * 255 / 65535) / 255  # float reference
    for mode, channels in (("L", 1), ("RGB", 3)):
        x = decode_images([buf.getvalue()], ImagePolicy(6, 10, mode=mode))
        assert x.shape == (1, channels, 6, 10)
        for c in range(channels):
            np.testing.assert_allclose(x[0, c].numpy(), expected, atol=1e-7)
    assert x[0, 0, 0, :3].tolist() == pytest.approx([0.0, 1.0, 1 / 255])


def test_decode_refuses_other_sizes_without_a_resize_policy() -> None:
    images = [_image(10, 6, "PNG"), _image(7, 5, "JPEG"), _image(10, 6, "PNG"), _image(12, 6, "PNG")]
    with pytest.raises(InputError, match=r"#1 is 7x5, #3 is 12x6.*resize='squash'"):
        decode_images(images, ImagePolicy(6, 10))
    with pytest.raises(InputError, match="image #1 cannot be decoded"):
        decode_images([images[0], b"not an image"], ImagePolicy(6, 10))


def test_decode_resizes_deterministically() -> None:
    images = [_image(10, 6, "PNG"), _image(7, 5, "JPEG", seed=1), _image(40, 9, "PNG", seed=2)]
    for resize in ("squash", "crop"):
        policy = ImagePolicy(8, 8, resize=resize)
        x = decode_images(images, policy)
        assert x.shape == (3, 3, 8, 8)
        assert torch.equal(x, decode_images(images, policy))
    squash, crop = (decode_images(images, ImagePolicy(8, 8, resize=r)) for r in ("squash", "crop"))
    assert not torch.equal(squash[2], crop[2])


def test_image_policy_json_round_trip() -> None:
    policy = ImagePolicy(32, 24, mode="L", resize="crop")
    assert ImagePolicy.from_json(policy.to_json()) == policy
    assert '"filter":"bilinear"' in policy.to_json()
    with pytest.raises(InputError, match="resize"):
        ImagePolicy(8, 8, resize="stretch")
    with pytest.raises(InputError, match="mode"):
        ImagePolicy(8, 8, mode="CMYK")


def test_small_cnn_shapes_and_determinism() -> None:
    policy = ImagePolicy(9, 13, mode="L")
    task = image_cnn_task(policy, 5, channels=(4, 8, 6))
    assert task.name == "image-cnn" and task.recipe["policy"]["height"] == 9
    model = task.fresh(0)
    assert model(torch.rand(3, 1, 9, 13)).shape == (3, 5)
    assert model(torch.rand(2, 1, 1, 1)).shape == (2, 5)  # pooling never shrinks a map to nothing
    assert _state_bytes(task.build(0)) == _state_bytes(model) != _state_bytes(task.build(1))
    with pytest.raises(InputError, match=r"\[n, 1, H, W\]"):
        model(torch.rand(3, 3, 9, 13))
    x = torch.rand(4, 1, 9, 13)
    with torch.no_grad():  # examples independent (GroupNorm, not BatchNorm)
        torch.testing.assert_close(model(x)[1:2], model(x[1:2]), atol=1e-6, rtol=0)


# ---- Hugging Face ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A tiny BERT classifier and its tokenizer, saved locally (nothing downloaded)."""
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = PreTrainedTokenizerFast(tokenizer_object=load_tokenizer(train_tokenizer(TEXTS, vocab_size=80)),
                                  pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]")
    cfg = BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_hf_classifier_task_builds_and_scores(hf_dir: Path) -> None:
    from attribution.recipes.hf import hf_classifier_task, hf_encode_texts, hf_tokenizer

    task = hf_classifier_task(hf_dir)
    assert task.recipe["n_classes"] == 3 and task.recipe["model_type"] == "bert"
    model = task.fresh(0)
    assert model.config._attn_implementation == "sdpa"
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    assert _state_bytes(task.fresh(1)) == _state_bytes(model)  # the stored weights, whatever the seed
    batch = hf_encode_texts(hf_tokenizer(hf_dir), ["hello world", "the lazy dog " * 20], max_length=16)
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape == (2, 16)
    with torch.no_grad():  # the per-example position ids give BERT's own logits
        plain = type(model).forward(model, **batch).logits
        torch.testing.assert_close(model(**batch).logits, plain, atol=0, rtol=0)
    loss = classification_loss(model, {**batch, "labels": torch.tensor([0, 2])})
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert model.classifier.weight.grad is not None


def test_hf_new_head_is_drawn_from_the_seed(hf_dir: Path) -> None:
    from attribution.recipes.hf import hf_classifier_task

    task = hf_classifier_task(hf_dir, n_classes=5, attn_implementation="eager")
    a, b, c = (task.fresh(s).state_dict() for s in (0, 0, 1))
    assert a["classifier.weight"].shape == (5, 32) and task.recipe["n_classes"] == 5
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [k for k in a if not torch.equal(a[k], c[k])] == ["classifier.weight"]


def test_hf_refuses_a_missing_directory(tmp_path: Path) -> None:
    from attribution.recipes.hf import hf_classifier_task

    with pytest.raises(InputError, match="nothing is downloaded"):
        hf_classifier_task(tmp_path / "absent")


# ---- layers the engine scores ------------------------------------------------------------------------


def _recipe_models(hf_dir: Path) -> list[tuple[nn.Module, dict[str, torch.Tensor]]]:
    from attribution.recipes.hf import hf_classifier_task

    ids = torch.randint(3, 60, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return [
        (_text_model(n_layers=2), {"input_ids": ids, "attention_mask": mask}),
        (image_cnn_task(ImagePolicy(8, 8), 3).fresh(0), {"pixel_values": torch.rand(2, 3, 8, 8)}),
        (hf_classifier_task(hf_dir).fresh(0), {"input_ids": ids, "attention_mask": mask}),
        (mlp_task(ModelSpec((5, 8, 3), layer_norm=True)).fresh(0), {"features": torch.randn(2, 5)}),
    ]


def _counter(calls: dict[str, int], rows: dict[str, int], name: str):
    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        calls[name] += 1
        rows[name] = output.shape[0]

    return hook


def test_recipes_use_only_scored_layers_each_called_once_per_example(hf_dir: Path) -> None:
    for model, inputs in _recipe_models(hf_dir):
        calls: dict[str, int] = {}
        rows: dict[str, int] = {}
        hooks = []
        for scored in scored_modules(model):  # every layer with parameters has a kernel
            calls[scored.name] = 0
            hooks.append(scored.module.register_forward_hook(_counter(calls, rows, scored.name)))
        model(**inputs)
        for h in hooks:
            h.remove()
        assert calls and set(calls.values()) == {1}, calls
        # One output row per example: nothing (position ids) is broadcast over the batch.
        assert set(rows.values()) == {2}, rows


def test_layers_without_a_kernel_are_refused_by_name() -> None:
    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls = nn.Parameter(torch.zeros(4))
            self.fc = nn.Linear(4, 2)

    with pytest.raises(UnsupportedModelError, match=r"layer '' \(Bare\)"):
        scored_modules(Bare())
    with pytest.raises(UnsupportedModelError, match="BatchNorm2d"):
        scored_modules(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    with pytest.raises(UnsupportedModelError, match="MultiheadAttention"):
        scored_modules(nn.MultiheadAttention(8, 2))


def test_attribution_imports_without_tokenizers_pillow_or_transformers() -> None:
    code = (
        "import sys\n"
        "for m in ('tokenizers', 'PIL', 'transformers'): sys.modules[m] = None\n"
        "import attribution, attribution.recipes\n"
        "import attribution.recipes.text, attribution.recipes.image, attribution.recipes.hf\n"
        "import attribution.recipes.mlp\n"
    )
    proc = _start_python(code)
    _, err = proc.communicate("", timeout=120)
    assert proc.returncode == 0, err


def _texts(n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    rng = np.random.default_rng(seed)
    words = [["red", "apple", "cherry"], ["blue", "sea", "sky"], ["green", "leaf", "grass"]]
    labels = rng.integers(0, 3, n)
    texts = [" ".join(rng.choice(words[c], 4).tolist() + ["the"] * int(rng.integers(0, 5))) for c in labels]
    return texts, torch.from_numpy(labels)


def test_hf_classifier_trains_with_per_step_attribution(hf_dir: Path) -> None:
    """A local BERT through the ModelTask driver (AdamW): every layer has a kernel (Embedding,
    LayerNorm, Linear), its position ids are per example, and the scores are finite and seeded."""
    from attribution import TrainConfig, train_model
    from attribution.recipes.hf import hf_classifier_task, hf_encode_texts, hf_tokenizer

    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, optimizer="adamw", n_checkpoints=1)
    task = hf_classifier_task(hf_dir, config=cfg)
    texts, labels = _texts(28, seed=0)
    rows = {**hf_encode_texts(hf_tokenizer(hf_dir), texts, max_length=12), "labels": labels}
    train, targets = {k: v[:24] for k, v in rows.items()}, {k: v[24:] for k, v in rows.items()}
    ids = [f"t{i}" for i in range(24)]
    result = train_model(task, train, ids, targets, seed=0)
    assert result.method == "inrun_adamw" and np.isfinite(result.scores).all() and result.scores.any()
    assert np.array_equal(train_model(task, train, ids, targets, seed=0).scores, result.scores)


def test_text_and_image_recipes_train_with_per_step_attribution() -> None:
    from attribution import TrainConfig, train_model
    from attribution.recipes.image import ImagePolicy, image_cnn_task
    from attribution.recipes.text import encode_texts, load_tokenizer, text_transformer_task, train_tokenizer

    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, n_checkpoints=1)
    texts, labels = _texts(30, seed=1)
    tokenizer = train_tokenizer(texts[:24], vocab_size=60)
    rows = {**encode_texts(load_tokenizer(tokenizer), texts, 12), "labels": labels}
    task = text_transformer_task(load_tokenizer(tokenizer).get_vocab_size(), 3, 12, d_model=16, n_layers=1,
                                 n_heads=2, tokenizer=tokenizer, config=cfg)
    text = train_model(task, {k: v[:24] for k, v in rows.items()}, [f"t{i}" for i in range(24)],
                       {k: v[24:] for k, v in rows.items()}, seed=0)
    gen = torch.Generator().manual_seed(2)
    pixels = torch.rand(30, 3, 8, 8, generator=gen)
    image_task = image_cnn_task(ImagePolicy(8, 8), 3, channels=(4, 8), config=cfg)
    image_rows = {"pixel_values": pixels, "labels": labels}
    image = train_model(image_task, {k: v[:24] for k, v in image_rows.items()}, [f"i{i}" for i in range(24)],
                        {k: v[24:] for k, v in image_rows.items()}, seed=0)
    for result in (text, image):
        assert result.method == "inrun_sgd" and np.isfinite(result.scores).all() and result.scores.any()
