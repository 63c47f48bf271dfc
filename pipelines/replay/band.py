"""How far a replay off the run's platform may land from the stored run, and the comparisons of
scores, score sums and left-out values held to it (`Band`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from attribution import (
    value_noise,
)
from pipelines.replay.tables import aligned_scores, left_out_runs, left_out_values
from provenance import (
    Record,
    TrainingRecord,
    WeightingRecord,
)

if TYPE_CHECKING:
    from pipelines.replay.report import ReplayReport
    from pipelines.replay.run import Retrained


# Another platform's rounding moves a retrained run about as far as this machine's own rounding does
# after a last-bit nudge (training amplifies any last-bit difference alike), so the stored run may
# differ from the replay by up to this many times the spread between two replays here.
SPREAD_FACTOR = 3


# A provider's left-out value is a mean over seeds, so few providers give few spreads of it: the band of
# values is instead this many standard errors of a mean's rounding noise, estimated from every seed's
# retrain pair (bench/replay_devices.py). On the image recipe (3 providers, 6 seeds), 30 honest nudged
# runs landed at most 3.2 of them from the first replay, and runs on other CPU kernels 1.4; three times
# the spread of the means put the same honest runs up to 4.3x the factor's band, which would fail them.
VALUE_SIGMAS = 5


# Pay sums a contributor's example scores (a provider's examples, a labeler's answered ones), and a shift
# of every one of them, each within the per-score band, moves the sum as many times. Rounding moves a sum
# of n scores by about sqrt(n) times their root mean square gap where the gaps are independent, and by n
# times their mean where they drift together: a sum may differ from the replay's by SUM_SIGMAS x sqrt(n)
# + SUM_DRIFT x n times the root mean square of two replays' score gaps here. Runs of the image and text
# recipes on ATen's other kernels and thread counts landed at most 1.4 sqrt(n) units from an AVX-512 run
# (200 scores a provider); their gaps' mean was at most 0.13 of their root mean square (a provider's, 0.2).
SUM_SIGMAS = 5


SUM_DRIFT = 0.5


NUDGE_SALT = 1  # the second retrain's last-bit nudges at every step (fixed: replay is repeatable)


@dataclass(frozen=True)
class Band:
    """What the stored run may differ from the replay by: nothing on the same platform; elsewhere the
    recorded score tolerance (of the largest score or value), or where wider: per score
    ``SPREAD_FACTOR`` times the spread of two replays here, per left-out value (and its standard error
    and copies' value) ``VALUE_SIGMAS`` standard errors of its rounding noise (``value_noise``), per
    seed's value ``VALUE_SIGMAS`` times that noise in one retrain, and per contributor's summed scores
    ``SUM_SIGMAS`` x sqrt(n) + ``SUM_DRIFT`` x n times the two replays' root mean square score gap."""

    score: float = 0.0
    value: float = 0.0
    run_value: float = 0.0
    score_rtol: float = 0.0
    score_noise: float = 0.0  # the root mean square score gap of two replays here
    sum_floor: float = 0.0  # the recorded tolerance of a summed score, per root of the scores summed

    def score_sum(self, examples: int) -> float:
        """What a provider's ``examples`` scores may differ by in sum."""
        root = float(np.sqrt(examples))
        return max(self.sum_floor * root, self.score_noise * (SUM_SIGMAS * root + SUM_DRIFT * examples))

    @classmethod
    def between(cls, first: Retrained, second: Retrained | None, rtol: float) -> Band:
        """The band from two retrains here with the run's recorded score tolerance ``rtol``; no second
        retrain (a bit-for-bit replay) allows nothing."""
        if second is None:
            return cls()
        _, a, b = aligned_scores(first.scores, second.scores)
        top = float(np.max(np.abs(a))) if a.size else 0.0
        score = max(rtol * top, SPREAD_FACTOR * float(np.max(np.abs(a - b), initial=0.0)))
        noise = float(np.sqrt(np.mean((a - b) ** 2))) if a.size else 0.0
        values = first.left_out_value, second.left_out_value
        spread, runs = value_noise(*values) if None not in values else (0.0, 1)
        stored = left_out_values(first.left_out_value).values()
        floor = rtol * max((abs(x) for v in stored for x in v), default=0.0)
        return cls(score=score, value=max(floor, VALUE_SIGMAS * spread / np.sqrt(runs)),
                   run_value=max(floor, VALUE_SIGMAS * spread), score_rtol=score / top if top else rtol,
                   score_noise=noise, sum_floor=rtol * top)


def outside_band(scores: pa.Table, other: pa.Table, contributors: Mapping[str, set[str]], band: Band) -> str:
    """How ``other``'s scores lie beyond ``band`` of ``scores``: the largest gap, where a score is
    beyond it, else the contributors whose sums are (``_sums_beyond``); "" where they lie within it."""
    gap = largest_gap(scores, other)
    if gap > band.score:
        return f"up to {gap:.3g} a score, allowed {band.score:.3g}"
    return "; ".join(_sums_beyond(scores, other, contributors, band)[0][:5])


def largest_gap(scores: pa.Table, other: pa.Table) -> float:
    """The largest gap between two score tables, example by example (infinite where ``other`` lacks one)."""
    _, a, b = aligned_scores(scores, other)
    return float(np.max(np.abs(a - b), initial=0.0)) if not np.isnan(b).any() else float("inf")


def compare_scores(stored: pa.Table, replayed: pa.Table, allowed: float, report: ReplayReport) -> None:
    if sorted(stored["example_id"].to_pylist()) != sorted(replayed["example_id"].to_pylist()):
        report.fail("examples_differ", report.training_cid or "", "the stored scores name other examples")
        return
    ids, a, b = aligned_scores(stored, replayed)
    diff = np.abs(a - b)
    report.max_score_diff = float(diff.max()) if diff.size else 0.0
    if report.max_score_diff > allowed:
        worst = ids[int(diff.argmax())]
        report.fail(
            "scores_differ",
            report.training_cid or "",
            f"{int((diff > allowed).sum())} of {len(ids)} stored example scores differ from the replay "
            f"(largest {report.max_score_diff:.3g} at example {worst[:16]}, allowed {allowed:.3g})"
            + _band(report),
        )


def compare_score_sums(
    stored: pa.Table, replayed: pa.Table, contributors: Mapping[str, set[str]], band: Band,
    report: ReplayReport,
) -> None:
    """Each contributor's summed example scores (a provider's examples, a labeler's answered ones)
    against the replay's, within the band of a sum of that many scores (``SUM_SIGMAS``, ``SUM_DRIFT``):
    on a recipe that carries rounding far, the per-score band is wide (the demo's CNN: 0.66 of the
    largest score), and a shift of every score of one provider within it would pass."""
    differ, report.sums_used = _sums_beyond(stored, replayed, contributors, band)
    if differ:
        report.fail("score_sums_differ", report.training_cid or "",
                    f"the stored example scores of {len(differ)} contributor(s) sum otherwise than the "
                    f"replay's ({'; '.join(differ[:5])})" + _band(report))


def _sums_beyond(
    stored: pa.Table, other: pa.Table, contributors: Mapping[str, set[str]], band: Band
) -> tuple[list[str], float | None]:
    """The contributors whose summed scores in ``other`` are beyond the band of the stored ones' sums
    (said as a line each), and the largest gap over what the band allows; none (and None) where
    ``other`` scores other examples (`examples_differ` says so)."""
    ids, a, b = aligned_scores(stored, other)
    if np.isnan(b).any():
        return [], None
    index = {e: i for i, e in enumerate(ids)}
    differ, used = [], 0.0
    for who in sorted(contributors):
        rows = np.sort(np.fromiter((index[e] for e in contributors[who] if e in index), dtype=np.int64))
        if not rows.size:
            continue
        gap, allowed = abs(float(a[rows].sum() - b[rows].sum())), band.score_sum(rows.size)
        used = max(used, gap / allowed if allowed else np.inf if gap else 0.0)
        if gap > allowed:
            differ.append(f"{who}: {rows.size} scores {gap:.3g} apart in sum, allowed {allowed:.3g}")
    return differ, used


def compare_left_out_values(
    head: Record, training: Record, stored: pa.Table | None, again: pa.Table, band: Band,
    report: ReplayReport,
) -> None:
    """The contributors' left-out values (and each seed's) retrained again against the stored ones (as
    scores are: bit for bit on the same platform, else within the band)."""
    if head.inputs.get(WeightingRecord.LEFT_OUT_VALUE) != training.outputs.get(TrainingRecord.LEFT_OUT_VALUE):
        report.fail("pay_inputs_differ", report.head_cid or "",
                    "the split was computed from other left-out values than the training record names")
    a, b = left_out_values(stored), left_out_values(again)
    ra, rb = left_out_runs(stored), left_out_runs(again)
    report.max_value_diff = max((abs(a[p][0] - b[p][0]) for p in a.keys() & b.keys()), default=0.0)

    def apart(x: tuple[float, ...], y: tuple[float, ...], allowed: float) -> bool:
        return len(x) != len(y) or any(abs(u - v) > allowed for u, v in zip(x, y, strict=True))

    def off(p: str) -> bool:
        missing = p not in a or p not in b
        return missing or apart(a[p], b[p], band.value) or apart(ra[p], rb[p], band.run_value)

    differ = sorted(filter(off, a.keys() | b.keys()))
    if differ:
        report.fail(
            "left_out_values_differ", report.training_cid or "",
            f"stored left-out values of {', '.join(differ)} differ from the replay "
            f"({', '.join(f'{p}: {a.get(p)} stored, {b.get(p)} replayed' for p in differ[:5])})"
            + _band(report),
        )


def _band(report: ReplayReport) -> str:
    """What a difference beyond the band says, where the replay was not bit for bit: rounding on another
    platform has carried an honest run further than this machine's two retrains spread (`docs/replay.md`)."""
    if report.bit_exact:
        return ""
    return ("; beyond this machine's rounding band, which another platform's rounding has exceeded for an "
            "honest run: replay on the run's platform or CPU kernels to be sure")
