"""Near-duplicates of text, image and table payloads are grouped with their originals and paid once.

A copycat's lightly edited texts (a word swapped, punctuation, case) and jittered images (a few
pixels changed, re-encoded, JPEG re-compression) fall in their originals' groups, so the copycat earns
nothing; distinct honest examples of a realistic set are never grouped; a flood of near-copies of a
provider's own examples gains it nothing; the same bytes give the same grouping; the ingest record
says how it grouped.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from attribution import contributor_weights
from pipelines.datasets import Payload, example_id, to_examples
from pipelines.duplicates import IMAGE_METHOD, TEXT_METHOD, near_groups
from storage import snapshot_parquet

T0, T1 = "2025-01-01T00:00:00Z", "2025-03-01T00:00:00Z"
HONEST = ("a", "b", "c")
ADDR = {name: "0x" + f"{i + 1:040x}" for i, name in enumerate([*HONEST, "copycat", "flooder", "lab"])}

# ---------------------------------------------------------------- realistic data, made here

SUBJECTS = ("the battery", "the screen", "the camera", "the keyboard", "this charger", "the speaker",
            "the case", "the cable", "the headphones", "the monitor", "the mouse", "the printer",
            "the router", "the watch", "the tablet", "the lens", "the strap", "the remote", "the fan",
            "the blender", "the kettle", "the vacuum", "the drill", "the lamp", "the backpack")
OPINIONS = ("works better than I expected", "stopped working after a week", "feels cheap and flimsy",
            "is solid and well made", "was broken when it arrived", "is far too loud at night",
            "lasts about two days on a charge", "overheats when I use it for long", "is bright and sharp",
            "fits perfectly in my bag", "was missing a screw", "is easy to set up",
            "needed an update before it worked", "is much smaller than the photos suggest",
            "scratches far too easily", "has a confusing manual", "connects instantly to my phone",
            "drains the battery quickly", "keeps dropping the connection", "looks great on my desk")
EXTRAS = ("Delivery took {n} days.", "I paid {n} dollars on sale.", "My {who} uses it every day for {use}.",
          "Customer service answered within {n} hours.", "I returned the first one after {n} days.",
          "Compared to my old one it is {cmp}.", "I would give it {n} stars out of ten.",
          "The {part} came loose after {n} weeks.", "It replaced a {brand} model I had for years.",
          "Setup took about {n} minutes.")
WHO = ("wife", "son", "daughter", "friend", "boss", "neighbour", "dad", "mum", "roommate", "teacher")
USE = ("work", "school", "gaming", "travel", "music", "photos", "video calls", "reading", "cooking")
CMP = ("lighter", "heavier", "quieter", "much faster", "a bit slower", "cheaper", "sturdier", "nicer")
PART = ("button", "hinge", "lid", "clip", "handle", "cover", "plug", "wheel")
BRAND = ("Acme", "Zenith", "Orbit", "Nimbus", "Vertex", "Pioneer", "Summit", "Aurora")


def honest_texts(n: int, seed: int) -> list[str]:
    """Product reviews of 3-5 sentences from a few hundred phrases: distinct reviews share words,
    phrases and whole sentences, as real ones do, but no two differ by one word only."""
    rng = np.random.default_rng(seed)
    out: set[str] = set()
    while len(out) < n:
        parts = [f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(OPINIONS)}.",
                 f"Also {rng.choice(SUBJECTS)} {rng.choice(OPINIONS)}."]
        for k in rng.choice(len(EXTRAS), int(rng.integers(1, 4)), replace=False):
            slots = {"n": int(rng.integers(2, 60)), "who": rng.choice(WHO), "use": rng.choice(USE),
                     "cmp": rng.choice(CMP), "part": rng.choice(PART), "brand": rng.choice(BRAND)}
            parts.append(EXTRAS[k].format(**slots))
        rng.shuffle(parts)
        out.add(" ".join(parts))
    return sorted(out)


def edited(text: str, rng: np.random.Generator) -> str:
    """A light edit: a word swapped for another, punctuation changed, or the case changed."""
    words = text.split()
    kind = int(rng.integers(4))
    if kind == 0:
        i = int(rng.integers(len(words)))
        words[i] = str(rng.choice(["really", "very", "quite", "fine", "good", "bad", "new", "old"]))
        return " ".join(words)
    if kind == 1:
        return text.replace(".", "!").replace(",", "")
    if kind == 2:
        return text.lower()
    return text.upper()


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _digit_pictures(seed: int) -> list[Image.Image]:
    """scikit-learn's handwritten digits (1,797 distinct images by real writers: many honest pairs look
    alike) as 8x8 gray pictures, in a seeded order."""
    digits = load_digits().images
    order = np.random.default_rng(seed).permutation(len(digits))
    return [Image.fromarray((digits[i] * 255 / 16).astype(np.uint8)) for i in order]


def honest_images(seed: int) -> list[bytes]:
    """The digits as 32x32 RGB PNGs."""
    return [png(np.asarray(g.resize((32, 32), Image.Resampling.BILINEAR).convert("RGB")))
            for g in _digit_pictures(seed)]


def small_images(seed: int) -> list[bytes]:
    """The digits at their own size, 8x8 gray PNGs: one changed pixel is 1/64 of the picture and the
    strokes are a pixel wide, so a filter that smooths copies smooths the digits away too."""
    return [png(np.asarray(g)) for g in _digit_pictures(seed)]


def jittered(
    data: bytes, rng: np.random.Generator, pixels: int = 5, quality: tuple[int, int] = (60, 91)
) -> bytes:
    """A copycat's copy: a few pixels set to random colours, then re-encoded as JPEG."""
    img = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    for _ in range(pixels):
        y, x = rng.integers(0, img.shape[0], 2)
        img[y, x] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(rng.integers(*quality)))
    return buf.getvalue()


# ---------------------------------------------------------------- helpers


def _table(column: str, values: list, provider: str) -> pa.Table:
    kind = pa.string() if isinstance(values[0], str) else pa.binary()
    n = len(values)
    return pa.table({column: pa.array(values, kind), "provider": [provider] * n,
                     "source": [f"src-{provider}"] * n})


def _times(table: pa.Table, late: tuple[str, ...] = ("src-copycat",)) -> dict[str, str]:
    """Each source's registration time: the `late` ones (and those named after them, src-copycat-2...)
    after the rest."""
    return {s: (T1 if s.startswith(late) else T0) for s in set(table["source"].to_pylist())}


def _labels(column: str, table: pa.Table) -> dict[str, int]:
    """Each example's near-duplicate group label, by example id, as ingest groups them."""
    examples, _ = to_examples(table, _times(table))
    labels, _ = near_groups(examples, [column])
    return dict(zip(examples["example_id"].to_pylist(), labels.tolist(), strict=True))


def _id(column: str, value) -> str:
    return example_id({column: value})


def _bps(table: pa.Table) -> dict[str, int]:
    return dict(zip(table["contributor"].to_pylist(), table["weight_bps"].to_pylist(), strict=True))


def _world(kind: str, seed: int) -> tuple[str, list, np.random.Generator]:
    """(column, honest examples, rng): reviews or digit images, split over the honest providers."""
    rng = np.random.default_rng(seed)
    if kind == "text":
        return "text", honest_texts(300, seed), rng
    return "image", (small_images(seed) if kind == "image8" else honest_images(seed))[:600], rng


def _copy(kind: str, value, rng: np.random.Generator):
    if kind == "text":
        return edited(value, rng)
    if kind == "image8":  # one pixel, and a light re-encode: JPEG at 60 redraws a whole 8x8 digit
        return jittered(value, rng, pixels=1, quality=(85, 96))
    return jittered(value, rng)


def _honest_table(column: str, honest: list) -> pa.Table:
    return pa.concat_tables([_table(column, honest[i::3], p) for i, p in enumerate(HONEST)])


# ---------------------------------------------------------------- copycats, floods, honest sets


@pytest.mark.parametrize(
    "kind,seed",
    [("text", 0), ("text", 1), ("text", 2), ("image", 0), ("image", 1), ("image8", 0), ("image8", 1)],
)
def test_a_copycats_light_edits_join_their_originals_and_earn_nothing(kind, seed) -> None:
    column, honest, rng = _world(kind, seed)
    originals = honest[1::3][:40]  # b's
    copies = [_copy(kind, v, rng) for v in originals]
    table = pa.concat_tables([_honest_table(column, honest), _table(column, copies, "copycat")])
    labels = _labels(column, table)
    pairs = zip(copies, originals, strict=True)
    missed = [c for c, o in pairs if labels[_id(column, c)] != labels[_id(column, o)]]
    assert not missed, missed[:3]
    honest_labels = [labels[_id(column, v)] for v in honest]
    assert len(set(honest_labels)) == len(honest)  # no two distinct honest examples grouped
    examples, report = to_examples(table, _times(table))
    assert report.grouping.unpaid == ("copycat",)
    near = report.grouping.to_params()["near"]
    assert near["method"] == (TEXT_METHOD if kind == "text" else IMAGE_METHOD)
    assert near["groups"] == 40 and near["copies"] == 40
    assert 0 < near["threshold"] < near["median_nn_distance"]


@pytest.mark.parametrize("kind,copiers", [("text", 1), ("image", 1), ("text", 4), ("image", 4), ("text", 16),
                                          ("image", 16)])
def test_a_copycat_of_every_example_still_joins_each_original(kind, copiers) -> None:
    """Light edits of every honest example make copies and originals all of the data: the median
    distance to another provider's nearest example fell to the copies' own (image copies: none linked;
    text: only those that normalize to their original) until each example's clump was skipped; four
    copiers of every example (one copier in four accounts) did it again while a clump held three, and
    sixteen while it held fifteen (texts 17 %, images none), before it held one fewer than the
    providers."""
    column, honest, rng = _world(kind, 3)
    names = [f"copycat-{i}" for i in range(1, copiers + 1)]
    copies = {name: [_copy(kind, v, rng) for v in honest] for name in names}
    table = pa.concat_tables([_honest_table(column, honest),
                              *[_table(column, copies[name], name) for name in names]])
    labels = _labels(column, table)
    pairs = [(c, o) for name in names for c, o in zip(copies[name], honest, strict=True)]
    missed = [c for c, o in pairs if labels[_id(column, c)] != labels[_id(column, o)]]
    assert len(missed) <= 0.02 * len(pairs), (len(missed), missed[:3])
    assert len({labels[_id(column, v)] for v in honest}) == len(honest)  # no two honest examples grouped
    _, report = to_examples(table, _times(table))
    assert report.grouping.unpaid == tuple(sorted(names))


@pytest.mark.parametrize("kind", ["text", "image", "image8"])
def test_a_flood_of_near_copies_gains_nothing_and_dilutes_nobody(kind) -> None:
    column, honest, rng = _world(kind, 7)
    seeds, honest = honest[:3], honest[3:]  # the flooder's own three examples
    flood = [_copy(kind, seeds[i % 3], rng) for i in range(120)]  # 40 light copies of each, its own file
    base = _honest_table(column, honest)
    without = pa.concat_tables([base, _table(column, seeds, "flooder")])
    with_flood = pa.concat_tables([without, _table(column, flood, "flooder")])
    scored = np.concatenate([rng.uniform(-0.5, 1.0, len(honest)), rng.uniform(0.2, 1.0, 3)])
    values = dict(zip([_id(column, v) for v in [*honest, *seeds]], scored, strict=True))
    copy_of = {_id(column, c): _id(column, seeds[i % 3]) for i, c in enumerate(flood)}

    def weights(table: pa.Table) -> dict[str, int]:
        examples, report = to_examples(table, _times(table))
        ids = examples["example_id"].to_pylist()
        # a copy scores like its original, as two near-identical examples would
        scores = [values[e] if e in values else values[copy_of[e]] for e in ids]
        attribution = pa.table({"example_id": ids, "score": scores, "method": ["inrun_sgd"] * len(ids),
                                "run_id": ["r"] * len(ids)})
        credit = report.grouping.credit
        return _bps(contributor_weights(attribution, examples, None, None, ADDR, credit=credit))

    before, after = weights(without), weights(with_flood)
    assert before.keys() == after.keys() and before["flooder"] > 0
    assert all(abs(before[c] - after[c]) <= 1 for c in before), (before, after)
    labels = _labels(column, with_flood)
    assert all(labels[c] == labels[o] for c, o in copy_of.items())


def test_distinct_texts_that_share_sentences_stay_apart() -> None:
    """A realistic honest set (reviews sharing phrases and whole sentences) over several seeds: no
    two distinct reviews are grouped, while exact copies still are."""
    for seed in range(3, 8):
        honest = honest_texts(600, seed)
        table = pa.concat_tables([_honest_table("text", honest), _table("text", honest[:5], "copycat")])
        _, report = to_examples(table, _times(table))
        assert report.grouping.near["groups"] == 0, seed
        assert report.grouping.to_params()["exact"]["copies"] == 5 and report.grouping.unpaid == ("copycat",)


# ---------------------------------------------------------------- determinism and odd input


@pytest.mark.parametrize("kind", ["text", "image"])
def test_the_same_bytes_give_the_same_grouping(kind) -> None:
    column, honest, rng = _world(kind, 9)
    honest = honest[:150]
    copies = [_copy(kind, v, rng) for v in honest[:20]]
    table = pa.concat_tables([_honest_table(column, honest), _table(column, copies, "copycat")])
    outs = []
    for order in range(3):
        shuffled = table.take(np.random.default_rng(order).permutation(table.num_rows))
        examples, report = to_examples(shuffled, _times(table))
        credit = snapshot_parquet(report.grouping.credit, sort_by="example_id")
        outs.append((credit, report.grouping.to_params()))
    assert outs[0] == outs[1] == outs[2]
    assert outs[0][1]["near"]["copies"] == 20


def test_bytes_that_are_no_image_are_grouped_with_nothing() -> None:
    _, honest, rng = _world("image", 10)
    honest = honest[:60]
    junk = [b"not an image", b"\x89PNG\r\n\x1a\n truncated"]
    copies = [jittered(v, rng) for v in honest[:5]]
    table = pa.concat_tables([_honest_table("image", honest), _table("image", junk + copies, "copycat")])
    labels = _labels("image", table)
    assert len({labels[_id("image", j)] for j in junk} | {labels[_id("image", v)] for v in honest}) == 62
    pairs = zip(copies, honest[:5], strict=True)
    assert all(labels[_id("image", c)] == labels[_id("image", o)] for c, o in pairs)
    _, report = to_examples(table, _times(table))
    assert report.grouping.near["undecodable"] == 2 and report.grouping.near["copies"] == 5


def test_text_beside_numbers_gets_exact_copies_only() -> None:
    table = pa.table({"text": ["good", "good", "goods", "bad"], "n": [1, 1, 1, 2],
                      "provider": ["a", "b", "b", "a"], "source": ["s1", "s2", "s2", "s1"]})
    examples, report = to_examples(table, {"s1": T0, "s2": T1})
    near = report.grouping.to_params()["near"]
    assert near["method"] == "none" and "string" in near["reason"]
    assert examples.num_rows == 3 and report.grouping.credit.num_rows == 3


def sixteen_bit(data: bytes) -> bytes:
    """The same picture as a 16-bit grayscale PNG (each 8-bit level v as v * 257)."""
    gray = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    return buf.getvalue()


def test_16_bit_images_group_as_their_8_bit_pictures() -> None:
    """16-bit grayscale PNGs are grouped by their picture (levels scaled to 8 bits), not clipped white
    (which made every one of them look alike)."""
    _, honest, rng = _world("image", 3)
    honest = honest[:300]
    copies = [jittered(v, rng) for v in honest[1::3][:20]]

    def partition(convert) -> list[frozenset[int]]:
        table = pa.concat_tables([_honest_table("image", [convert(v) for v in honest]),
                                  _table("image", [convert(v) for v in copies], "copycat")])
        labels = _labels("image", table)
        rows = [labels[_id("image", convert(v))] for v in [*honest, *copies]]
        return sorted({frozenset(i for i, g in enumerate(rows) if g == label) for label in rows}, key=min)

    def gray8(data: bytes) -> bytes:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("L").save(buf, "PNG")
        return buf.getvalue()

    assert Image.open(io.BytesIO(sixteen_bit(honest[0]))).mode.startswith("I;16")
    groups = partition(sixteen_bit)
    assert groups == partition(gray8)
    assert sum(len(g) > 1 for g in groups) == 20  # each copy with its original, nothing else


def test_the_candidate_search_links_what_a_search_over_all_pairs_links() -> None:
    """Each image is compared with its nearest few by the untrimmed distance only; over every pair
    (thumbnails and the trimmed distance recomputed here by sorting), the same groups form."""
    column, honest, rng = _world("image8", 11)
    honest = honest[:450]
    copies = [_copy("image8", v, rng) for v in honest[1::3][:30]]
    flood = [_copy("image8", honest[0], rng) for _ in range(25)]
    table = pa.concat_tables([_honest_table(column, honest), _table(column, copies, "copycat"),
                              _table(column, flood, "flooder")])
    examples, _ = to_examples(table, _times(table))
    labels, near = near_groups(examples, [column])
    small = [Image.open(io.BytesIO(v)).convert("L").resize((16, 16), Image.Resampling.BOX)
             for v in examples[column].to_pylist()]
    thumbs = np.array([np.asarray(t, dtype=np.float64).ravel() for t in small])
    drop = int(thumbs.shape[1] * near["trim"])
    parent = list(range(len(thumbs)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(thumbs)):
        sq = np.sort((thumbs[i + 1 :] - thumbs[i]) ** 2, axis=1)
        for j in np.flatnonzero(np.sqrt(sq[:, : sq.shape[1] - drop].sum(axis=1)) < near["threshold"]) + i + 1:
            parent[root(int(j))] = root(i)

    def partition(of) -> set[frozenset[int]]:
        return {frozenset(np.flatnonzero(np.asarray(of) == g).tolist()) for g in set(of)}

    assert partition([root(i) for i in range(len(thumbs))]) == partition(labels.tolist())
    assert near["groups"] == 31 and near["copies"] == 30 + 25  # copies with originals, the flood with a's


def test_a_tabular_copy_is_grouped_through_its_categories_and_gaps() -> None:
    """Categories and missing numbers are read as a numeric run's model reads them (one-hot, the mean):
    a lightly edited copy with a gap joins its original, the same numbers in another city do not."""
    rng = np.random.default_rng(0)
    n = 180
    x, y = rng.normal(size=n), rng.normal(size=n)
    y[::10] = np.nan
    city = rng.choice(["lima", "oslo", "rome"], n).tolist()
    owner = [("a", "b", "c")[i % 3] for i in range(n)]
    copied = [i for i in range(0, n, 3)][:12]  # a's rows, some with a gap (0, 30, ...)
    other = {"lima": "oslo", "oslo": "rome", "rome": "lima"}
    rows = {
        "x": [*x, *(x[copied] + 1e-4), *x[copied]],
        "y": [*y, *y[copied], *y[copied]],
        "city": [*city, *(city[i] for i in copied), *(other[city[i]] for i in copied)],
        "provider": [*owner, *["copycat"] * 12, *["mover"] * 12],
    }
    table = pa.table({**rows, "source": [f"src-{p}" for p in rows["provider"]]})
    examples, report = to_examples(table, _times(table, late=("src-copycat", "src-mover")))
    labels, near = near_groups(examples, ["x", "y", "city"])
    assert near["method"] != "none" and near["features"] == 5  # x, y and three cities
    group = dict(zip(examples["example_id"].to_pylist(), labels.tolist(), strict=True))
    values = zip(rows["x"], rows["y"], rows["city"], strict=True)
    table_ids = [example_id({"x": a, "y": b, "city": c}) for a, b, c in values]
    originals, copies, moved = table_ids[:n], table_ids[n:n + 12], table_ids[n + 12:]
    assert all(group[copies[k]] == group[originals[i]] for k, i in enumerate(copied))
    assert all(group[moved[k]] != group[originals[i]] for k, i in enumerate(copied))


def test_a_table_project_groups_copies_under_new_ids_by_the_features_its_model_reads() -> None:
    """A customer table's id and name are not what the MLP learns from (it leaves them out), so a
    copycat's rows under fresh ids and names, lightly edited, are copies of the originals' features:
    a table project groups them and the copycat earns nothing. Without the labeling spec the id makes
    the payload not numeric and only exact copies are grouped, so the copycat would be paid."""
    rng = np.random.default_rng(3)
    n = 150
    rows = {"customer": [f"C{i:05d}" for i in range(n)], "name": [f"Customer {i}" for i in range(n)],
            "fee": rng.normal(50, 10, n).round(2), "tenure": rng.integers(1, 72, n).astype(float),
            "age": rng.integers(18, 90, n).astype(float), "data_gb": rng.gamma(2.0, 3.0, n).round(1),
            "calls": rng.poisson(30, n).astype(float),
            "plan": rng.choice(["basic", "plus", "pro"], n).tolist()}
    owner = [HONEST[i % 3] for i in range(n)]
    copied = list(range(0, 60, 3))  # a's rows
    table = pa.table({
        "customer": [*rows["customer"], *(f"X{i:05d}" for i in copied)],
        "name": [*rows["name"], *(f"Client {i}" for i in copied)],
        "fee": [*rows["fee"], *(rows["fee"][copied] + 0.01)],
        "tenure": [*rows["tenure"], *rows["tenure"][copied]],
        "plan": [*rows["plan"], *(rows["plan"][i] for i in copied)],
        **{c: [*rows[c], *rows[c][copied]] for c in ("age", "data_gb", "calls")},
        "provider": [*owner, *["copycat"] * len(copied)],
    })
    table = table.append_column("source", pa.array([f"src-{p}" for p in table["provider"].to_pylist()]))

    _, plain = to_examples(table, _times(table))
    assert plain.grouping.near["method"] == "none" and "'customer'" in plain.grouping.near["reason"]
    assert "copycat" not in plain.grouping.unpaid

    examples, report = to_examples(table, _times(table), Payload("table", "row"))
    near = report.grouping.near
    assert near["columns"] == ["age", "calls", "data_gb", "fee", "plan", "tenure"] and near["features"] == 8
    assert near["groups"] == len(copied) and near["copies"] == len(copied)
    assert report.grouping.unpaid == ("copycat",)
    credit = report.grouping.credit.to_pandas()
    by_id = dict(zip(examples["example_id"].to_pylist(), examples["customer"].to_pylist(), strict=True))
    copies = credit[credit["example_id"].map(by_id).str.startswith("X")]
    assert set(copies["provider"]) == {"a"} and np.allclose(copies["share"], 0.5)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_a_text_or_image_project_groups_by_its_field_beside_other_columns(kind) -> None:
    """A number beside the payload (a review's stars, a photo's exposure) makes it mixed, so exact
    copies only; a text or image project's model reads its field alone, so a copy of the field with
    another number beside it joins its original."""
    column, honest, rng = _world(kind, 4)
    honest = honest[:150]
    copied = list(range(0, 60, 3))
    side = rng.integers(1, 6, len(honest)).tolist()
    table = pa.table({
        column: [*honest, *(_copy(kind, honest[i], rng) for i in copied)],
        "side": [*side, *((side[i] % 5) + 1 for i in copied)],
        "provider": [*(HONEST[i % 3] for i in range(len(honest))), *["copycat"] * len(copied)],
    })
    table = table.append_column("source", pa.array([f"src-{p}" for p in table["provider"].to_pylist()]))
    _, plain = to_examples(table, _times(table))
    assert plain.grouping.near["method"] == "none"
    _, report = to_examples(table, _times(table), Payload(kind, column))
    near = report.grouping.near
    assert near["method"] == (TEXT_METHOD if kind == "text" else IMAGE_METHOD) and near["columns"] == [column]
    assert near["copies"] == len(copied) and report.grouping.unpaid == ("copycat",)
