"""What a replay found (`ReplayReport`), as `caravan verify --replay` prints it."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.replay.band import SPREAD_FACTOR, VALUE_SIGMAS
from pipelines.replay.outputs import FEATURE_RTOL
from provenance import (
    Findings,
)


@dataclass
class ReplayReport(Findings):
    """What `replay_run` found retraining a published run: its failures, the band it allowed and the
    roots compared (stored, replayed, on chain); `caravan verify --replay` prints and nests it."""

    run_id: str
    head_cid: str | None = None
    training_cid: str | None = None
    code: str | None = None
    same_platform: bool | None = None
    run_kernels: bool = False  # another CPU, running the kernels the run trained on (their pins)
    bit_exact: bool | None = None  # checked bit for bit (else within the band)
    score_rtol: float | None = None
    max_score_diff: float | None = None
    sums_used: float | None = None  # the largest contributor's score-sum gap over what the band allows it
    value_band: float | None = None  # what a stored provider value may differ by (0: bit for bit)
    max_value_diff: float | None = None  # the most a stored provider value differs from the replay's
    max_bps_diff: int | None = None  # the most a contributor's stored pay differs from the replay's
    stored_root: str | None = None
    replayed_root: str | None = None
    onchain_root: str | None = None
    replay_s: float = 0.0
    # where the first retrain parted from the run (`parted_at`): "inputs", "initial weights", "checkpoint
    # j", "" where its inputs, initial weights and every checkpoint are the run's; None where unrecorded
    parted_at: str | None = None
    # off the run's platform: the stored features' largest gap from what their checkpoints give here (of a
    # tensor's largest entry), and the largest gap of the scores those checkpoints give from the stored ones
    # with what evaluation's rounding is allowed (`CHECKPOINT_SCORE_RTOL` of their largest)
    feature_gap: float | None = None
    checkpoint_score_diff: float | None = None
    checkpoint_score_allowed: float | None = None

    def where(self) -> str:
        """Where the replay ran and what it allowed (a line of `caravan verify --replay`), and where it
        parted from the run's training, unless it repeated the run bit for bit."""
        return self._where() + ("" if self.ok and self.bit_exact else self.parting())

    def parting(self) -> str:
        """Where the first retrain parted from the run (`parted_at`), as the replay line says it."""
        if self.parted_at is None:
            return ""
        if not self.parted_at:
            return "; its training repeated the run's (inputs, initial weights and checkpoints)"
        same = self.parted_at.startswith("checkpoint")
        return (f"; its training parted from the run's at {self.parted_at}"
                + (" (its inputs and initial weights are the run's)" if same else ""))

    def _where(self) -> str:
        if self.bit_exact:
            return "same platform" if self.same_platform else "the run's CPU kernels, bit for bit"
        values = "" if self.max_value_diff is None else (
            f", left-out values within {self.value_band:.3g} ({VALUE_SIGMAS} standard errors of their "
            f"rounding noise; value diff {self.max_value_diff:.3g})")
        sums = "" if self.sums_used is None else f", score sums at {self.sums_used:.2f} of theirs"
        return (f"another platform: allowed {SPREAD_FACTOR}x the spread of two replays here, scores within "
                f"{self.score_rtol:.3g} of the largest{sums}{values}; pay follows from the stored scores and "
                f"values, {self.max_bps_diff} bps at most from the replay's; {self._served()}")

    def _served(self) -> str:
        if self.feature_gap is None:
            return "the model and features checked through their checkpoints"
        scores = "" if self.checkpoint_score_diff is None else (
            f", the scores they give within {self.checkpoint_score_diff:.3g} of the stored")
        if self.checkpoint_score_allowed is not None:
            scores += f" ({self.checkpoint_score_allowed:.3g} allowed)"
        return (f"the model the features' last checkpoint, the features within {self.feature_gap:.3g} of "
                f"what their checkpoints give here ({FEATURE_RTOL:g} allowed){scores}")
