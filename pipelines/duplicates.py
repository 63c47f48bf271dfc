"""Duplicates paid once: exact copies and near-duplicates grouped at ingest, credited to whoever
registered them first (the ``example_credit`` contract, ``schemas.CREDIT_SCHEMA``).

- Exact copies share an ``example_id`` (the sha256 of the canonical payload). The examples table
  keeps one row of each content: the row of the source registered first (ties by provider name).
- Near-duplicates, by payload kind; two examples are linked when closer than a threshold and a group
  is a connected set of links. The threshold scales with the data's own spacing: each example's
  distance to the nearest example of *another* provider (median over examples), so a provider
  flooding copies of its own examples cannot shrink it, and beyond any clump (``spacing``: a
  neighbour closer than the link fraction of the next is a copy or an original, skipped), so a copier
  cannot either: when it copied as many examples as the honest providers hold, copies and originals
  were most of the data, the median fell to the copies' own distance and no copy was linked. A clump
  holds up to one fewer neighbours than there are providers (``clump_window``: 15 to 63), so as many
  copiers who each copy the same examples are skipped too (with a window of three, a copier split
  into four accounts had no copy grouped; with one of 15, into sixteen), and
  the local scale and dimension estimate below are read beyond each clump as well (read as the data's
  own, they made its dimension near zero and no copy was close enough to link). In few dimensions a
  clump's copies are not four times nearer than the next honest neighbour, but several within half of
  it are as rare there: a jump rare in the dimension read beyond any clump (``clump_dimension``) ends a
  clump too. A known limit remains in few dimensions (about five numbers): there a single majority
  copier's copies are as close as many honest neighbours, and the test that finds a copying pair of
  providers (below) measures them against a reference the copies make most of, so about half of them
  still go ungrouped; and a copier of a share of every provider's rows makes a pair with each, each
  swelling the reference of the others: the pairs already suspect are left out of it (``_suspects``),
  but of a copier of 30 % of four providers' rows in two numbers only half the copies are grouped.
  - numeric (numeric columns, fixed-width lists of numbers and categories, e.g. tabular features or
    pixel arrays, read as a numeric run's model reads them, ``InputEncoding``: categories one-hot, a
    missing number its column's mean): every feature standardized (centred, divided by its standard
    deviation over the distinct examples), Euclidean distance, linked under ``NEAR_FRACTION`` of the
    spacing and, where examples are few-featured, under a share of their own local scale (their
    distance to the ``LOCAL_K``-th nearest example of another provider). In few dimensions honest
    neighbours are as close as light copies: the share is the one at which an honest example would be
    linked with chance ``HONEST_LINK`` were the data locally uniform in the dimension it shows
    (``local_dimension``), so high-dimensional data keeps the spacing rule alone while a table of two
    or three numbers links, one example at a time, exact and near-exact copies only (there, the
    spacing rule alone linked many honest neighbours, and one copy jittered by a few % of a feature's
    deviation cannot be told from them). A copier's many copies can: where one provider's examples
    and another's are each other's nearest, at a small local ratio, far more often than the rest of
    the data's are, the two copy one another, and their closest mutual pairs are linked
    (``_copying_links``; the record's ``copying_pairs`` names each pair and its links);
  - text (``string`` columns, joined in name order): lowercased, punctuation dropped, whitespace
    collapsed, then TF-IDF over character 3-5-grams (scikit-learn); cosine distance, linked under
    ``TEXT_FRACTION`` of the spacing and never above ``TEXT_MAX_DISTANCE`` (cosine similarity 0.8),
    so a case, punctuation or one-word edit of a sentence is caught while distinct texts of a dense
    corpus are not;
  - image (``binary`` columns of PNG/JPEG bytes): decoded with Pillow to grayscale, shrunk to at
    most 128 px, then a 16x16 box-filtered thumbnail (JPEG re-compression noise averages out);
    the trimmed Euclidean distance on gray levels (one unit for every feature: not standardized),
    which leaves out the ``IMAGE_TRIM`` share of thumbnail pixels that differ most, so a copy with a
    few changed pixels or a small stamp stays close at any size (a 3x3 median filter, used before,
    smeared one changed pixel of an 8x8 digit over its strokes: 60 of 144 such copies were caught,
    now all); linked under ``NEAR_FRACTION`` of the spacing, each image checked against its
    ``clump_window`` + 1 nearest by the untrimmed distance. Bytes that do not decode are grouped
    with nothing (counted in the record).
  Mixed kinds (free text beside numbers, say) get exact-copy grouping only, unless the labeling spec
  says what the model reads: a text or image project's field, a table project's features.
- A group of ``m`` distinct examples earns the mean of its members' scores, once: each member's
  credit weighs ``1/m``, all of it paid to the provider(s) of the member(s) registered first.
  Providers whose sources were registered at the same time share equally. Copies therefore
  gain their provider nothing and dilute nobody; a provider whose every example duplicates an
  earlier-registered one earns nothing as a provider (listed in ``Grouping.unpaid``). The group's
  first-registered member (ties: the smallest ``example_id``) is its ``representative``: valuing a
  provider by retraining, its copies beyond the representatives count only where they hurt.

Pure logic (Arrow in, Arrow out), deterministic: the same rows and registration times give the
same credit table bytes, whatever their input order.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from scipy.stats import beta, fisher_exact
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.neighbors import NearestNeighbors

from attribution import InputEncoding, InputError, eight_bit
from schemas import CREDIT_SCHEMA

if TYPE_CHECKING:  # datasets imports this module to group what it loads
    from pipelines.datasets import Payload

NEAR_FRACTION = 0.25  # of the median nearest-neighbour distance (bench/contributor_value.py's figure)
LOCAL_K = 10  # numeric: the neighbours that give an example's local scale and the data's dimension
HONEST_LINK = 1e-3  # numeric: the chance an honest example is linked, were the data locally uniform
COPYING_LEVEL = 1e-3  # numeric: the chance that a pair of honest providers is taken for a copying one
COPYING_CHANCES = (1e-3, 1e-2, 1e-1)  # numeric: the chances at which a pair's close matches are counted
SUSPECT_LEVEL = 0.05  # numeric: a pair this unlikely for honest providers, both ways, is no reference
CLUMP_MAX = 15  # the most neighbours a clump holds at least: copies of one example by as many providers
CLUMP_CAP = 63  # ... and at most, however many providers could have copied one example (clump_window)
FEW_DIMENSIONS = 3.5  # numeric: under it a light copy sits as far from its original as honest neighbours
RULE = (
    "a duplicate group earns the mean of its members' scores, once, paid to the provider(s) of its "
    "first-registered member(s); sources registered at the same time share equally"
)
EXACT_METHOD = "same example_id (sha256 of the canonical payload)"
NEAR_METHOD = (
    "numeric payload, each feature standardized; examples closer (euclidean) than fraction x the median "
    "distance from an example to the nearest example of another provider (the nearest beyond its clump: "
    "the neighbours before the last jump, among the first clump_window + 1, are copies of one example, "
    "clump_window being one fewer than the providers, at least 15 and at most 63, and a jump from the "
    "j-th neighbour being to one more than 1 / fraction times as far or, where those j (ties once) are "
    "nearer than the example's nearest of its own provider, a ratio r of the j-th to the next with r ** "
    "(j x clump_dimension) < honest_link / clump_window, clump_dimension being the median-unbiased "
    "estimate from each example's (clump_window + 1)-th and (clump_window + local_k)-th distances under "
    "their Beta law), and than "
    "local_ratio x the distance from either to its local_k-th "
    "nearest example of another provider, are linked, where local_ratio = (honest_link / (local_k - 1)) "
    "** (1 / dimension) and dimension is the median over examples of the maximum-likelihood "
    "(Levina-Bickel) estimate from those distances, the nearest censored; besides, an example's chance "
    "is that of an honest example having an example of another provider as close, relative to its "
    "local_k-th, were the data locally uniform in that dimension, and two providers copy one another "
    "where, in both directions, the examples whose nearest example of another provider is the other's, "
    "and mutually so, have small chances more often than the examples of pairs not found copying have "
    "(one-sided Fisher test at each of copying_chances, Bonferroni over pairs and chances, level "
    "copying_level, repeated until no more pairs are found; pairs for which the same test gives under "
    "suspect_level both ways are left out of those examples, unless they hold most of them): their "
    "mutual nearest pairs are then linked up to the chance that leaves the fewest examples expected "
    "misassigned, the chances of the examples "
    "of pairs not found copying standing for honest ones; a group is a connected set of links"
)
TEXT_FRACTION = 0.5  # of the median nearest-other-provider cosine distance
TEXT_MAX_DISTANCE = 0.2  # cosine similarity >= 0.8 at the loosest
TEXT_NGRAMS = (3, 5)
TEXT_METHOD = (
    "text payload lowercased, punctuation dropped, whitespace collapsed; TF-IDF (sublinear tf) over "
    "character n-grams; examples closer (cosine distance) than min(max_distance, fraction x the median "
    "distance from an example to the nearest example of another provider, the nearest beyond its clump: "
    "the neighbours before the last jump, among the first clump_window + 1 (as many as the providers, 16 "
    "to 64), to one more than 1 / fraction times as far are copies of one example) are linked; a group "
    "is a connected set of links"
)
IMAGE_SIDE = 16  # thumbnail side, pixels
IMAGE_MAX_SIDE = 128  # images are shrunk to at most this before the thumbnail
IMAGE_TRIM = 0.02  # the share of thumbnail pixels a near-copy may differ in anywhere (a stamp, say)
IMAGE_METHOD = (
    "image payload decoded (Pillow) to grayscale, shrunk to at most max_side px, box-filtered to a side "
    "x side thumbnail; the distance is euclidean on gray levels over all but the trim share of pixels "
    "that differ most; each image is checked against its candidates nearest by the untrimmed distance; "
    "examples closer than fraction x the median distance from an example to the nearest example of "
    "another provider (the nearest beyond its clump: the neighbours before the last jump, among the "
    "first candidates (as many as the providers, 16 to 64), to one more than 1 / fraction times as far "
    "are copies of one example) are linked; a group is a connected set of links"
)
NOT_NUMERIC = "exact copies only"


@dataclass(frozen=True)
class Grouping:
    """How duplicates were grouped (what the ingest record states) and who is paid for what."""

    credit: pa.Table  # example_credit
    exact_groups: int  # contents that arrived more than once
    exact_copies: int  # rows dropped as exact copies
    exact_shared: int  # contents whose credit is shared by providers registered at the same time
    near: dict[str, Any]  # method, fraction, median distance, threshold, groups, copies (or why not)
    unpaid: tuple[str, ...]  # providers credited with nothing: every example of theirs is a copy
    providers: tuple[str, ...] = field(default=())  # every provider in the input

    def near_summary(self) -> str:
        """One line on the near-duplicates (the ingest asset's metadata, `caravan ingest`'s output)."""
        near = self.near
        if near["method"] == "none":
            return near["reason"]
        compared = f", compared on {', '.join(near['columns'])}" if "columns" in near else ""
        notes = "".join(f"; {said}" for said in (few_dimensions(near), *copying_pairs(near)) if said)
        groups = f"{near['copies']} copies in {near['groups']} groups (threshold {near['threshold']})"
        return groups + compared + notes

    def to_params(self) -> dict[str, Any]:
        """The ingest record's ``duplicates`` parameter."""
        return {
            "rule": RULE,
            "exact": {
                "method": EXACT_METHOD,
                "groups": self.exact_groups,
                "copies": self.exact_copies,
                "shared_same_time": self.exact_shared,
            },
            "near": self.near,
            "unpaid_providers": list(self.unpaid),
        }


def few_dimensions(near: dict[str, Any]) -> str:
    """What a numeric grouping (its record's ``near``) cannot see, where the data shows under
    ``FEW_DIMENSIONS``: there a copy jittered by a few % of a deviation is as far from its original as
    honest neighbours are from each other (two numbers, 5 %: 1.3 times the median spacing), so one copy
    is linked alone only well inside that (``local_ratio``), and a copier of many of one provider's
    examples is found as a pair; '' elsewhere (and where the dimension could not be told)."""
    dimension = near.get("dimension") or 0.0
    if not 0 < dimension < FEW_DIMENSIONS:
        return ""
    return (f"in {dimension:.2g} dimensions a light copy sits as far from its original as honest neighbours "
            f"do: one copy alone is grouped only within {near['local_ratio']:.2g} x its distance to its "
            f"{near['local_k']}th nearest example of another provider, a copier of many as a pair")


def copying_pairs(near: dict[str, Any]) -> list[str]:
    """The providers a grouping's record (``near``) found copying one another, each pair as read aloud."""
    return [f"{' and '.join(p['providers'])} copy one another ({p['links']} links)"
            for p in near.get("copying_pairs", [])]


def group_duplicates(
    examples: pa.Table,
    claimants: Sequence[tuple[str, Sequence[str]]],
    payload: Sequence[str],
    providers: Sequence[str],
    exact: tuple[int, int, int],
    fraction: float = NEAR_FRACTION,
    labeled: Payload | None = None,
) -> Grouping:
    """The credit table of deduplicated ``examples`` (sorted by ``example_id``).

    ``claimants[i]`` is example i's earliest registration time and the providers that registered
    its content then (sorted); ``exact`` is (groups, copies, shared) of the exact-copy pass;
    ``labeled`` the labeling spec, which says what the model reads (``near_groups``).
    """
    labels, near = near_groups(examples, payload, fraction, labeled)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(labels.tolist()):
        members.setdefault(g, []).append(i)
    ids = examples["example_id"].to_pylist()
    rows: list[tuple[str, str, float, str]] = []
    for group in members.values():
        first = min(claimants[i][0] for i in group)
        payees = sorted({p for i in group if claimants[i][0] == first for p in claimants[i][1]})
        share = 1.0 / (len(group) * len(payees))
        representative = min(ids[i] for i in group if claimants[i][0] == first)
        rows.extend((ids[i], p, share, representative) for i in group for p in payees)
    rows.sort()
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in CREDIT_SCHEMA]
    credit = pa.table(columns, schema=CREDIT_SCHEMA)
    paid = set(pc.unique(credit["provider"]).to_pylist())
    everyone = tuple(sorted(set(providers)))
    return Grouping(
        credit=credit,
        exact_groups=exact[0],
        exact_copies=exact[1],
        exact_shared=exact[2],
        near=near,
        unpaid=tuple(p for p in everyone if p not in paid),
        providers=everyone,
    )


def near_groups(
    examples: pa.Table, payload: Sequence[str], fraction: float = NEAR_FRACTION,
    labeled: Payload | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Each example's near-duplicate group label, and how it was grouped (the record's ``near``):
    numeric, text or image payloads by their own distance; anything else each example on its own.
    ``fraction`` scales the numeric and image thresholds (text has its own, ``TEXT_FRACTION``).

    ``labeled`` (the labeling spec) narrows the payload to what the model trains on,
    since a copy is a copy of that: a text or image project's ``field`` alone, a table project's
    features (its ids, names and free text left out, as the MLP leaves them out), so a copied row
    under a new id is still caught. The record's ``columns`` then names what was compared."""
    n = examples.num_rows
    alone = np.arange(n)
    if n < 3:
        return alone, {"method": "none", "reason": "fewer than 3 examples"}
    owner = np.asarray(examples["provider"].to_pylist(), dtype=object).astype(str)
    project, field = (labeled.kind, labeled.field) if labeled else (None, None)
    read = [field] if project in ("text", "image") and field in payload else list(payload)
    kind = payload_kind(examples, read)
    if kind == "text":
        labels, near = _text_groups(_texts(examples, read), owner)
    elif kind == "image":
        labels, near = _image_groups(examples, read, owner, fraction)
    else:
        matrix, why_not, read = numeric_payload(examples, read, features_only=project == "table")
        if matrix is None:
            return alone, {"method": "none", "reason": why_not}
        labels, near = _near_groups(matrix, owner, fraction)
    if sorted(read) != sorted(payload):  # absent otherwise: a record that read everything keeps its bytes
        near["columns"] = sorted(read)
    return labels, near


def payload_kind(table: pa.Table, payload: Sequence[str]) -> str:
    """``text`` when every payload column is a string, ``image`` when every one is binary (PNG/JPEG
    bytes, the image contract), else ``numeric`` (checked by ``numeric_payload``)."""
    types = [table.schema.field(name).type for name in payload]
    if types and all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in types):
        return "text"
    if types and all(pa.types.is_binary(t) or pa.types.is_large_binary(t) for t in types):
        return "image"
    return "numeric"


def numeric_payload(
    table: pa.Table, payload: Sequence[str], features_only: bool = False
) -> tuple[np.ndarray | None, str | None, list[str]]:
    """The payload as a numeric run's model reads it (``InputEncoding``, before scaling: numbers, one
    feature per position of a fixed-length list, categories one-hot, a missing number its column's
    mean), or None and why not, and the columns read. A column the model would not see (free text,
    bytes, ragged lists) is left out with ``features_only`` (a table project, whose model is that
    MLP), else it makes the payload not numeric: another recipe may read it."""
    columns = table.select(list(payload))
    try:
        encoding = InputEncoding.fit(columns)
    except InputError as exc:
        return None, f"{exc}; {NOT_NUMERIC}", list(payload)
    unread = encoding.left_out(columns)
    if unread and not features_only:
        named = ", ".join(f"{c!r} ({columns.schema.field(c).type})" for c in unread)
        why = f"{named}: neither numbers, number lists nor a few categories; {NOT_NUMERIC}"
        return None, why, list(payload)
    x = encoding.raw(columns)
    if not np.isfinite(x).all():
        return None, f"the payload holds inf; {NOT_NUMERIC}", list(payload)
    return x, None, list(encoding.columns)


def _near_groups(x: np.ndarray, owner: np.ndarray, fraction: float) -> tuple[np.ndarray, dict[str, Any]]:
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    tree = cKDTree(z)
    window = clump_window(owner)
    others, nearest = _neighbours(z, owner, tree, LOCAL_K + window)
    far = clump_dimension(others, window)
    own, mutual = _own_side(z, owner, nearest)
    clumps = clump_sizes(others, fraction, far, own, window)
    beyond = past_clumps(others, clumps, LOCAL_K)
    median = float(np.median(beyond[:, 0]))
    threshold = fraction * median
    pairs = tree.query_pairs(threshold, output_type="ndarray") if threshold > 0 else np.zeros((0, 2), int)
    dist = np.linalg.norm(z[pairs[:, 0]] - z[pairs[:, 1]], axis=1)
    dimension = local_dimension(beyond)
    ratio = (HONEST_LINK / (LOCAL_K - 1)) ** (1.0 / dimension) if dimension > 0 else 1.0
    scale = beyond[:, -1]  # an example's distance to its LOCAL_K-th nearest example of another provider
    local = ratio * np.minimum(scale[pairs[:, 0]], scale[pairs[:, 1]])
    copied, copying = _copying_links(owner, nearest, mutual, _chances(others[:, 0], scale, dimension))
    links = np.vstack([pairs[(dist < threshold) & (dist < local)], copied])  # strictly closer
    labels, near = _components(links, len(z))
    return labels, _near_record(NEAR_METHOD, fraction, median, threshold, int(z.shape[1]), near,
                                local_k=LOCAL_K, clump_window=window, clump_dimension=_sig(far),
                                dimension=_sig(dimension), honest_link=HONEST_LINK, local_ratio=_sig(ratio),
                                copying_level=COPYING_LEVEL, copying_chances=list(COPYING_CHANCES),
                                suspect_level=SUSPECT_LEVEL,
                                copying_pairs=copying)


def clump_sizes(
    neighbours: np.ndarray, fraction: float, dimension: float = 0.0, own: np.ndarray | None = None,
    window: int = CLUMP_MAX,
) -> np.ndarray:
    """How many of each example's nearest examples of other providers (ascending, a row each) make its
    clump: those before the last jump, among the first ``window`` + 1 (``clump_window``). A neighbour
    that much closer than the next is a near-copy (or the original of one); copies of one example by
    several providers are all that close to each other, so the clump ends at the last jump, not the
    first. A jump is to one more than 1 / ``fraction`` times as far; or, given the ``dimension`` the
    data shows beyond any clump (``clump_dimension``) and each example's distance to the nearest
    example of its ``own`` provider, one rare in that dimension from neighbours nearer than that: were
    the data locally uniform, an honest example's j nearest (ties counted once) would lie within a
    ratio r of the next with chance r ** (j * dimension), and a jump is one under ``HONEST_LINK`` / the
    window. In few dimensions the fixed ratio alone missed copies (five numbers, three copiers of every
    example jittered by 5 % of each deviation: no clump, no copy grouped), as honest neighbours are not
    four times closer than the next either, while three within half of the next are as rare there as
    one within a quarter. Other providers' copies of an example are nearer to it than anything of its
    own provider; a category's edge, past which no example lies, leaves its own provider's examples as
    near as the rest, so it makes no clump (without that, a two-number table with a category had
    clumps of 11 and doubled its honest links). Exact copies (distance 0) are clumps too; inf (fewer
    neighbours) never ends one."""
    d = np.asarray(neighbours, dtype=np.float64)
    most = min(window, d.shape[1] - 1)
    if most < 1:
        return np.zeros(len(d), dtype=np.int64)
    near, nxt = d[:, :most], d[:, 1 : most + 1]
    jump = near < fraction * nxt  # jump[:, j]: from neighbour j to j + 1
    if dimension > 0 and own is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(nxt > 0, near / nxt, 1.0)
        distinct = np.cumsum(np.diff(near, axis=1, prepend=-1.0) > 0, axis=1)
        rare = ratio ** (distinct * dimension) < HONEST_LINK / most
        jump |= rare & (near < np.asarray(own, dtype=np.float64)[:, None])
    jump &= np.isfinite(nxt)
    last = most - np.argmax(jump[:, ::-1], axis=1)  # one past the last jump
    return np.where(jump.any(axis=1), last, 0)


def clump_window(owner: np.ndarray) -> int:
    """The most neighbours a clump may hold: one fewer than the providers, since copies of one example by
    other providers are each another provider's (``CLUMP_MAX`` at least, for a copier who copied one
    example more than once; ``CLUMP_CAP`` at most, which bounds the search). With a fixed window of 15,
    sixteen copiers of every example made no clump and none of their copies was grouped."""
    return int(min(max(CLUMP_MAX, len(np.unique(owner)) - 1), CLUMP_CAP))


def clump_dimension(neighbours: np.ndarray, window: int = CLUMP_MAX) -> float:
    """The dimension the data shows beyond any clump, 0 when it cannot be told: from each example's
    distances to its (``window`` + 1)-th and farthest (the k-th) nearest examples of other providers,
    which no clump of up to ``window`` copies reaches. Were the data locally uniform in dimension D,
    (d_c / d_k) ** D would be a Beta(c, k - c) draw: the median over examples of log(d_k / d_c), set
    against that law's median, is a median-unbiased estimate. Copies of the neighbours themselves
    bunch those distances a little and make it lower, never near zero as ``local_dimension`` over the
    nearest ones would be before their clumps are known."""
    d = np.asarray(neighbours, dtype=np.float64)
    c, k = window + 1, d.shape[1]
    if k <= c:
        return 0.0
    first, last = d[:, c - 1], d[:, -1]
    usable = (first > 0) & np.isfinite(last)
    if not usable.any():
        return 0.0
    spread = float(np.median(np.log(last[usable] / first[usable])))
    return -float(np.log(beta(c, k - c).median())) / spread if spread > 0 else 0.0


def spacing(neighbours: np.ndarray, clumps: np.ndarray) -> np.ndarray:
    """Each example's spacing: its distance to the nearest example of another provider beyond its
    clump (``clumps``, from ``clump_sizes``). Without the skip a copier who copied as many examples as
    the honest providers hold made copies and originals most of the data, the median spacing shrank to
    the copies' own, and no copy was linked; honest data keeps its nearest."""
    return past_clumps(neighbours, clumps, 1)[:, 0]


def past_clumps(neighbours: np.ndarray, clumps: np.ndarray, k: int) -> np.ndarray:
    """Each example's ``k`` nearest distances to examples of other providers beyond its clump (``clumps``,
    from ``clump_sizes``; inf where fewer): its clump's copies read as one neighbour, not as the data's
    own scale or dimension."""
    d = np.asarray(neighbours, dtype=np.float64)
    at = np.arange(k)[None, :] + np.asarray(clumps)[:, None]
    return np.where(at < d.shape[1], np.take_along_axis(d, np.minimum(at, d.shape[1] - 1), axis=1), np.inf)


def _chances(d1: np.ndarray, scale: np.ndarray, dimension: float) -> np.ndarray:
    """Each example's chance, were it honest and the data locally uniform in ``dimension``, that an
    example of another provider is as close as its nearest (``d1``), relative to its distance to the
    ``LOCAL_K``-th beyond its clump (``scale``): ``(d1 / dk) ** dimension`` is then the least of ``k - 1``
    uniform draws. A copy's chance is small, but in few dimensions so is many an honest example's: alone
    it links only what ``HONEST_LINK`` allows; across a pair of providers (``_copying_links``) it adds
    up. 1 where the data shows no dimension or the scale is unknown, 0 for an exact copy."""
    if dimension <= 0:
        return np.ones(len(d1))
    usable = np.isfinite(scale) & (scale > 0)
    ratio = np.divide(d1, scale, out=np.ones_like(d1), where=usable)
    ratio[d1 == 0] = 0.0
    return 1.0 - (1.0 - np.minimum(ratio, 1.0) ** dimension) ** (LOCAL_K - 1)


def _copying_links(
    owner: np.ndarray, nearest: np.ndarray, mutual: np.ndarray, chance: np.ndarray
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Links between the examples of providers that copy one another, and the record of each such pair.

    In two or three dimensions a copy jittered by a few % is no closer to its original than many an
    honest neighbour, so no example can be linked on its own (``HONEST_LINK``); but a copier's examples
    sit that close to one provider's far more often than anyone's do. Each example is a candidate of the
    pair (its provider, the provider of its nearest example of another provider), counted where the two
    are each other's nearest across the pair (``mutual``, from ``_own_side``: a copy and its original
    are; a flood of copies of one example counts once). A pair copies where its candidates have small
    ``chance`` more often than the rest of the examples (a one-sided Fisher test at each of
    ``COPYING_CHANCES``, Bonferroni over pairs and chances, at ``COPYING_LEVEL``), in both directions,
    since a copy relation shows from both sides and a few ties with one neighbour do not; the rest leaves
    out the pairs found, and the others are tested again until no more are (a copier of two providers:
    each pair's matches would otherwise swell the other's reference), and it leaves out the pairs
    already suspect (``_suspects``), as long as it keeps most of its examples. Its candidates are then
    linked up to the chance that leaves the fewest examples expected misassigned (copies left out plus
    honest ones linked), the rest's chances standing for honest ones: what the data's own clumps and ties
    make of the uniform model is in that reference too."""
    names, code = np.unique(owner, return_inverse=True)
    p = np.where(mutual, chance, 1.0)
    keys, pair = np.unique(code * len(names) + code[nearest], return_inverse=True)
    swapped = (keys % len(names)) * len(names) + keys // len(names)  # the pair seen from the other side
    back = np.minimum(np.searchsorted(keys, swapped), len(keys) - 1)
    back[keys[back] != swapped] = -1  # seen from one side only
    tests = len(keys) * len(COPYING_CHANCES)
    copying = np.zeros(len(keys), dtype=bool)  # pairs found to copy, seen from both sides
    while True:  # a copier's candidates would swell the reference another copier is tested against
        evidence = _pair_evidence(p, pair, back, copying, np.zeros_like(copying))
        suspect = _suspects(evidence, pair, back, copying)
        if suspect.any():  # else the reference is the one just tested against
            evidence = _pair_evidence(p, pair, back, copying, suspect)
        now = (back >= 0) & (np.maximum(evidence, evidence[back]) * tests < COPYING_LEVEL)
        if not (now & ~copying).any():
            break
        copying |= now
    honest = ~copying[pair]
    found: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for k in np.flatnonzero(copying):
        matched = _matched(p, pair == k, honest)
        ends = tuple(sorted(divmod(int(keys[k]), len(names))))
        found.setdefault(ends, set()).update(tuple(sorted((int(i), int(nearest[i])))) for i in matched)
    links = sorted(link for both in found.values() for link in both)
    record = [{"providers": [str(names[a]), str(names[b])], "links": len(found[ends])}
              for ends in sorted(found) for a, b in [ends]]
    return np.asarray(links, dtype=np.int64).reshape(-1, 2), record


def _pair_evidence(
    p: np.ndarray, pair: np.ndarray, back: np.ndarray, copying: np.ndarray, suspect: np.ndarray
) -> np.ndarray:
    """Per pair not yet found ``copying``, the least one-sided Fisher p-value, over ``COPYING_CHANCES``,
    that its candidates (the examples ``pair`` names it for) have chances under it more often than the
    rest (the examples of every other pair neither found copying nor ``suspect``, but those of the pair
    seen from the other side, ``back``); 1 where either is empty, 0 for the pairs found."""
    sizes = np.bincount(pair, minlength=len(copying))
    reference = ~(copying | suspect)
    rest = _rest(sizes, reference, back)
    best = np.where(copying, 0.0, 1.0)
    for t in COPYING_CHANCES:
        under = np.bincount(pair, weights=p < t, minlength=len(copying)).astype(np.int64)
        others = _rest(under, reference, back)
        for k in np.flatnonzero(~copying & (rest > 0) & (under * rest > others * sizes)):  # else p >= 1/2
            table = [[under[k], sizes[k] - under[k]], [others[k], rest[k] - others[k]]]
            best[k] = min(best[k], float(fisher_exact(table, alternative="greater").pvalue))
    return best


def _suspects(evidence: np.ndarray, pair: np.ndarray, back: np.ndarray, copying: np.ndarray) -> np.ndarray:
    """The pairs not found ``copying`` whose ``evidence`` against the whole rest (``_pair_evidence`` with
    no suspects) is under ``SUSPECT_LEVEL`` both ways: left out of the reference the pairs are tested
    against, unless they hold most of its examples (the reference is the honest majority's). A copier of
    a share of every provider's rows makes a pair with each, and each swelled the reference of the
    others: copying a fifth of four providers' rows (two numbers, twenty seeds), under 5 % of its copies
    were grouped in five seeds (55 % on average); now in one (71 %). Without the majority rule, three
    honest providers beside a flood were taken for copying pairs (2 worlds of 200), their reference left
    to the flood alone."""
    suspect = (back >= 0) & ~copying & (np.maximum(evidence, evidence[back]) < SUSPECT_LEVEL)
    held = np.bincount(pair, minlength=len(copying))
    return suspect if 2 * held[suspect].sum() <= held[~copying].sum() else np.zeros_like(suspect)


def _rest(counts: np.ndarray, reference: np.ndarray, back: np.ndarray) -> np.ndarray:
    """Per pair, ``counts`` summed over the ``reference`` pairs but itself and the one seen from the other
    side (``back``)."""
    other = np.where(back >= 0, back, 0)
    own = np.where(reference, counts, 0) + np.where((back >= 0) & reference[other], counts[other], 0)
    return int(counts[reference].sum()) - own


def _matched(p: np.ndarray, inside: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """A copying pair's candidates to link: those of the smallest chances, as many as leave the fewest
    examples expected misassigned. Linking every candidate under a chance ``t`` misassigns the honest
    ones among them, ``pi0 * n * F(t)`` expected (``F`` the rest's share under ``t``; ``pi0`` the pair's
    honest share, Storey's estimate from its chances above 1/2; with no rest, the chance itself), and
    leaves out the copies above it: the count to minimise is ``2 * pi0 * n * F(t) - (candidates under
    t)``, up to a constant."""
    n = int(inside.sum())
    candidates = np.flatnonzero(inside & (p < 1.0))
    order = candidates[np.argsort(p[candidates], kind="stable")]
    reference = np.sort(p[rest])
    if len(reference):
        share = np.searchsorted(reference, p[order], side="right") / len(reference)
        above = 1.0 - np.searchsorted(reference, 0.5, side="right") / len(reference)
    else:  # every pair copies: the uniform model's own shares
        share, above = p[order], 0.5
    pi0 = min(1.0, float((p[inside] > 0.5).sum()) / (n * above)) if above > 0 else 1.0
    gain = np.arange(1, len(order) + 1) - 2.0 * pi0 * n * share
    if not len(order) or gain.max() <= 0:
        return order[:0]
    return order[: int(np.argmax(gain)) + 1]


def local_dimension(neighbours: np.ndarray) -> float:
    """The data's dimension where examples meet, 0 when it cannot be told: each example's maximum-
    likelihood estimate from its nearest distances (Levina and Bickel), the median over examples.

    The nearest distance is censored (known only to lie below the second), since a copy's is its
    original; examples with a zero distance among the rest (repeated values) are left out. With
    ``n`` distances below the farthest, an example's log-ratios sum to a Gamma(n, dimension) draw,
    whose median is about (n - 1/3) / dimension: the estimate is median-unbiased. Given each
    example's distances past its clump (``past_clumps``), copies of one example by several providers
    read as one neighbour, not as a dimension near zero."""
    d = np.asarray(neighbours, dtype=np.float64)
    count = d.shape[1] - 2  # distances below the farthest, the nearest left out
    far, near = d[:, -1:], d[:, 1:-1]
    usable = (near[:, 0] > 0) & np.isfinite(far[:, 0]) if count >= 2 else np.zeros(len(d), dtype=bool)
    if not usable.any():
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(far / near)[usable]
    total = logs.sum(axis=1) + logs[:, 0]  # the censored nearest counts as the second
    with np.errstate(over="ignore"):  # all distances equal: an unbounded estimate, for the median
        return float(np.median((count - 1 / 3) / np.maximum(total, np.finfo(float).tiny)))


def _near_record(method: str, fraction: float, median: float, threshold: float, features: int,
                 counts: dict[str, int], **details: Any) -> dict[str, Any]:
    """The record's ``near``: how examples were linked (``details``: the kind's own settings), and
    the groups and copies that made (``counts``, from ``_components``)."""
    return {"method": method, "fraction": fraction, "median_nn_distance": _sig(median),
            "threshold": _sig(threshold), "features": features, **counts, **details}


def _texts(table: pa.Table, payload: Sequence[str]) -> list[str]:
    """One text per example: its string columns in name order, a missing value as empty."""
    columns = [table[name].to_pylist() for name in sorted(payload)]
    return ["\n".join(v or "" for v in row) for row in zip(*columns, strict=True)]


def _normalized(text: str) -> str:
    """Case, punctuation and spacing are not content."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _text_groups(texts: list[str], owner: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    n = len(texts)
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=TEXT_NGRAMS, preprocessor=_normalized,
                                 sublinear_tf=True, dtype=np.float64)
    try:
        x = vectorizer.fit_transform(texts)
    except ValueError:  # no text long enough for one n-gram
        return np.arange(n), {"method": "none", "reason": "no text has 3 characters besides punctuation"}
    window = clump_window(owner)
    others = _others_cosine(x, owner, window + 1)
    median = float(np.median(spacing(others, clump_sizes(others, TEXT_FRACTION, window=window))))
    threshold = min(TEXT_MAX_DISTANCE, TEXT_FRACTION * median)
    graph = NearestNeighbors(metric="cosine", algorithm="brute").fit(x).radius_neighbors_graph(
        x, radius=threshold, mode="distance", sort_results=True
    )
    links = graph.tocoo()
    close = links.data < threshold  # strictly closer; stored zeros (identical vectors) stay links
    pairs = np.column_stack([links.row[close], links.col[close]])
    labels, near = _components(pairs, n)
    return labels, _near_record(TEXT_METHOD, TEXT_FRACTION, median, threshold, int(x.shape[1]), near,
                                analyzer="char", ngram_range=list(TEXT_NGRAMS),
                                max_distance=TEXT_MAX_DISTANCE, clump_window=window)


def _others_cosine(x: csr_matrix, owner: np.ndarray, k: int) -> np.ndarray:
    """``_neighbours``' distances, in cosine distance over sparse rows (ascending, inf where fewer)."""
    names = np.unique(owner)
    out = np.full((x.shape[0], k), np.inf)
    if len(names) < 2:
        m = min(k + 1, x.shape[0])
        index = NearestNeighbors(n_neighbors=m, metric="cosine", algorithm="brute").fit(x)
        out[:, : m - 1] = index.kneighbors(x)[0][:, 1:]
        return out
    for name in names.tolist():
        mine = owner == name
        m = min(k, int((~mine).sum()))
        index = NearestNeighbors(n_neighbors=m, metric="cosine", algorithm="brute").fit(x[~mine])
        out[mine, :m] = index.kneighbors(x[mine])[0]
    return out


def _image_groups(
    table: pa.Table, payload: Sequence[str], owner: np.ndarray, fraction: float
) -> tuple[np.ndarray, dict[str, Any]]:
    n = table.num_rows
    columns = [table[name].to_pylist() for name in sorted(payload)]
    rows = [[_thumbnail(v) for v in row] for row in zip(*columns, strict=True)]
    ok = np.array([all(t is not None for t in row) for row in rows])
    labels = np.arange(n)
    if ok.sum() < 3:
        bad = int(n - ok.sum())
        return labels, {"method": "none", "reason": f"fewer than 3 decodable images ({bad} not PNG/JPEG)"}
    x = np.array([np.concatenate(row) for row, good in zip(rows, ok, strict=True) if good])
    window = clump_window(owner[ok])
    pairs, dist, others = _trimmed_neighbours(x, owner[ok], window + 1)
    median = float(np.median(spacing(others, clump_sizes(others, fraction, window=window))))
    threshold = fraction * median
    sub, near = _components(pairs[dist < threshold], len(x))
    labels[ok] = np.flatnonzero(ok)[sub]  # distinct labels, none an undecodable row's own
    return labels, _near_record(IMAGE_METHOD, fraction, median, threshold, int(x.shape[1]), near,
                                side=IMAGE_SIDE, max_side=IMAGE_MAX_SIDE, trim=IMAGE_TRIM,
                                candidates=window + 1, undecodable=int(n - ok.sum()))


def _thumbnail(data: bytes | None) -> np.ndarray | None:
    """The gray levels (whole numbers, so distances are exact on any machine) of a small thumbnail, or
    None when the bytes are not an image."""
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("L", (IMAGE_MAX_SIDE, IMAGE_MAX_SIDE))  # a large JPEG decodes at a fraction of its size
            gray = eight_bit(img).convert("L")  # 16-bit gray levels scaled, not clipped to white
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    if max(gray.size) > IMAGE_MAX_SIDE:
        gray = gray.resize((IMAGE_MAX_SIDE, IMAGE_MAX_SIDE), Image.Resampling.BOX)
    gray = gray.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BOX)
    return np.asarray(gray, dtype=np.float64).ravel()


def _trimmed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance over the last axis, leaving out the ``IMAGE_TRIM`` share of coordinates that
    differ most: a few changed pixels, however far changed, move it little."""
    sq = (a - b) ** 2
    keep = sq.shape[-1] - int(sq.shape[-1] * IMAGE_TRIM)
    return np.sqrt(np.partition(sq, keep - 1, axis=-1)[..., :keep].sum(axis=-1))


def _trimmed_neighbours(
    x: np.ndarray, owner: np.ndarray, candidates: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs (i, j): j among i's ``candidates`` nearest by the untrimmed distance (ties
    at the last place all kept), with their trimmed distances; and each image's trimmed distances to its
    candidates among the other providers' images, ascending, at most ``candidates`` (inf where
    fewer): ``_neighbours`` for images, of which ``spacing`` takes the nearest beyond any clump.

    Squared distances come from one matrix product per block of rows: on whole gray levels every sum
    is a whole number below 2**53, so they are exact whatever the BLAS, and the candidates the same on
    any machine (k-d trees, exact too, search by brute force at 256 dimensions: 10x slower at 10,000)."""
    n = len(x)
    k = min(candidates, n - 1)
    code = np.unique(owner, return_inverse=True)[1]
    norms = (x * x).sum(axis=1)
    pairs, dists, others = [], [], np.full((n, k), np.inf)
    step = max(1, 2**23 // n)  # rows per block: a block's distances take at most 64 MiB
    for first in range(0, n, step):
        rows = np.arange(first, min(first + step, n))
        d2 = norms[rows, None] + norms[None, :] - 2.0 * (x[rows] @ x.T)
        d2[np.arange(len(rows)), rows] = np.inf  # never itself
        near = d2 <= np.partition(d2, k - 1, axis=1)[:, k - 1 : k]
        if code.max() > 0:  # the spacing's candidates: the nearest among other providers' images
            d2[code[rows, None] == code[None, :]] = np.inf
            other = d2 <= np.partition(d2, k - 1, axis=1)[:, k - 1 : k]
            other &= np.isfinite(d2)
        else:
            other = near
        i, j = np.nonzero(near | other)
        d = _trimmed(x[rows[i]], x[j])
        mine, theirs = i[other[i, j]], d[other[i, j]]
        order = np.lexsort((theirs, mine))  # by row, then trimmed distance
        mine, theirs = mine[order], theirs[order]
        rank = np.arange(len(mine)) - np.searchsorted(mine, mine)  # each distance's place in its row
        within = rank < k  # ties at the last place may add candidates beyond k
        others[rows[mine[within]], rank[within]] = theirs[within]
        keep = near[i, j]
        pairs.append(np.column_stack([rows[i[keep]], j[keep]]))
        dists.append(d[keep])
    return np.concatenate(pairs), np.concatenate(dists), others


def _components(pairs: np.ndarray, n: int) -> tuple[np.ndarray, dict[str, int]]:
    """Group labels of the connected sets of ``pairs``, and how many groups and copies they make."""
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    return labels, {"groups": int((sizes > 1).sum()), "copies": int((sizes[sizes > 1] - 1).sum())}


def _neighbours(z: np.ndarray, owner: np.ndarray, tree: cKDTree, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each example's distances to its ``k`` nearest examples of *other* providers (with one provider:
    of the others, from ``tree``, all of ``z``), inf where there are fewer, and the index of the nearest.
    A provider's copies of its own examples do not shrink them."""
    names = np.unique(owner)
    if len(names) < 2:
        d, j = tree.query(z, k=k + 1)
        return d[:, 1:], j[:, 1]
    out, nearest = np.empty((len(z), k)), np.empty(len(z), dtype=np.int64)
    for name in names.tolist():
        mine = np.flatnonzero(owner == name)
        theirs = np.flatnonzero(owner != name)
        d, j = cKDTree(z[theirs]).query(z[mine], k=k)
        d, j = d.reshape(-1, k), np.asarray(j).reshape(-1, k)
        out[mine] = d
        # of examples equally near (a copy and its original), the first: the tree's order depends on k
        nearest[mine] = theirs[np.where(d == d[:, :1], j, len(theirs)).min(axis=1)]
    return out, nearest


def _own_side(z: np.ndarray, owner: np.ndarray, nearest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What each example's own provider holds, from one tree per provider: the distance to its nearest
    other example of that provider (inf where it has none), and whether the example is the one of that
    provider nearest to its own ``nearest`` example of another provider."""
    distance, mutual = np.full(len(z), np.inf), np.zeros(len(z), dtype=bool)
    for name in np.unique(owner).tolist():
        mine = np.flatnonzero(owner == name)
        tree = cKDTree(z[mine])
        if len(mine) > 1:
            distance[mine] = tree.query(z[mine], k=2)[0][:, 1]
        mutual[mine] = mine[tree.query(z[nearest[mine]], k=1)[1]] == mine
    return distance, mutual


def _sig(v: float) -> float:
    """Six significant digits: what a record states (the grouping uses the full value)."""
    return float(f"{v:.6g}")
