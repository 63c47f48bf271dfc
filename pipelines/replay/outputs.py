"""The files serving loads (the model, its TRAK features, the input encoding) against the replay's:
bit for bit, or off the run's platform through the checkpoints the features hold."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from attribution import (
    checkpoints_of_features,
    safetensors_metadata,
    tensor_gaps,
)
from pipelines.assets.training import (
    TrainingConfig,
    value_method,
)
from pipelines.replay.band import Band, largest_gap, outside_band
from provenance import (
    Record,
    TrainingRecord,
)

if TYPE_CHECKING:
    from pipelines.replay.report import ReplayReport
    from pipelines.replay.run import Replayed


# The training outputs serving loads: the model, and the features each prediction's fee is split by.
SERVED = (TrainingRecord.MODEL, TrainingRecord.FEATURES)


def compare_outputs(
    training: Record, stored: Mapping[str, bytes], first: Replayed, report: ReplayReport
) -> None:
    """The stored model and features against the replay's, where the replay is bit for bit: the same
    bytes."""
    for name in SERVED:
        _compare_file(training, name, stored[name], first.outputs[name], "the replay's", report)


# A numeric encoding's scale (means and spreads of the training columns) may round in its last bits on
# another CPU's vector kernels; any other field (columns, classes, a tokenizer, an image policy) is exact.
ENCODING_RTOL = 1e-9


def compare_encoding(training: Record, stored: bytes, replayed: bytes | None, report: ReplayReport) -> None:
    """The stored input encoding (what serving encodes every paid request by) against the one the replay
    made from the run's data and recipe: the same JSON, numbers within ``ENCODING_RTOL`` of theirs. A
    publisher could otherwise serve an honest model behind another tokenizer or scale."""
    if replayed is None or stored == replayed:
        return
    try:
        where = _json_differs(json.loads(stored), json.loads(replayed), "")
    except ValueError:
        where = " (not JSON)"
    if where is None:
        return
    report.fail("encoding_differs", report.training_cid or "",
                f"the stored input encoding ({training.outputs[TrainingRecord.ENCODING]}) is not the one the "
                f"run's data and recipe give: it differs at {where or 'its top level'}")


def _json_differs(a: object, b: object, path: str) -> str | None:
    """The path of the first place two JSON documents differ (numbers within ``ENCODING_RTOL``); None
    where they agree."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path or '.'} (keys {sorted(a.keys() ^ b.keys())})"
        pairs = [(a[k], b[k], f"{path}.{k}") for k in sorted(a)]
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path} (length {len(a)}, not {len(b)})"
        pairs = [(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))]
    else:
        return None if _same_leaf(a, b) else path or "."
    for x, y, where in pairs:
        if (found := _json_differs(x, y, where)) is not None:
            return found
    return None


def _same_leaf(a: object, b: object) -> bool:
    """Two JSON leaves: numbers (not booleans) within ``ENCODING_RTOL`` of the larger, anything else equal."""
    numbers = [isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)]
    if all(numbers):
        return abs(a - b) <= ENCODING_RTOL * max(abs(a), abs(b))  # type: ignore[operator]
    return a == b


# Off the run's platform, the stored features may differ from those their checkpoints give here by this
# fraction of each tensor's largest entry. Evaluation alone rounds differently there: the text recipe's
# features and kernel inverses moved by at most 2.3e-5 of theirs on AVX2 kernels, the image recipe's by
# 7.9e-4 (`bench/replay_devices.py --against`, `saved_evaluated_here`: a checkpoint where a ReLU or
# pooling tie fell the other way for a few rows); training moved the text recipe's by up to 1.8e-3, so
# only the checkpoints are held to a band.
FEATURE_RTOL = 1e-2


# Off the run's platform, the stored example scores may differ from those the stored checkpoints give here
# by this fraction of their largest score, each contributor's sum by this fraction times the root of its
# number of scores. Evaluation alone moved the image recipe's scores by at most 4.6e-3 of the largest
# (one score, on AVX2 kernels; 4.4e-4 unvectorized), a provider's sum (of 3, 5 or 20 random providers) by
# at most 7.9e-4 times that root, the text recipe's by 3.8e-6 and 3.1e-6 (`bench/replay_devices.py
# --against`, 600 and 800 rows). The replay's band is far wider (0.64 of the largest score on the digits
# demo): the stored scores are held to what the model gives, and only the checkpoints to the band.
CHECKPOINT_SCORE_RTOL = 5e-2


def check_served_elsewhere(
    training: Record, stored: Mapping[str, bytes], stored_scores: pa.Table, first: Replayed, band: Band,
    contributors: Mapping[str, set[str]], report: ReplayReport,
) -> None:
    """Off the run's platform, where training's rounding keeps the stored model and features from being
    compared to the replay's (the text recipe's weights moved 6.4x the gap between two replays), they are
    checked through the scores they made: the stored model must be the last checkpoint the stored
    features hold, bit for bit; the features what those checkpoints give here (``FEATURE_RTOL``: only
    evaluation rounds differently); and, where pay reads TRAK value, the scores those checkpoints give
    within the band the stored scores are held to, of the replay's, score by score and each
    contributor's sum. A model or features other than the ones the run trained fail one of the three
    (``model_differs``), and only then are the stored scores held to the scores those checkpoints give
    (``_compare_scores_to_checkpoints``)."""
    cid = training.outputs[TrainingRecord.FEATURES]
    checkpoints = checkpoints_of_features(stored[TrainingRecord.FEATURES])
    reason = ""
    try:
        outputs = first.revalue(checkpoints) if checkpoints else None
    except (RuntimeError, ValueError, KeyError) as exc:  # load_state_dict: other names or shapes
        outputs, reason = None, f" ({str(exc).splitlines()[0]})"
    if outputs is None:
        report.fail("model_differs", report.training_cid or "", f"the stored features ({cid}) hold no "
                    f"checkpoints of the run's model to check the model and scores by{reason}")
        return
    found = len(report.failures)
    _compare_file(training, TrainingRecord.MODEL, stored[TrainingRecord.MODEL], outputs[TrainingRecord.MODEL],
                  "the last checkpoint of the stored features", report)
    report.feature_gap = _compare_file(
        training, TrainingRecord.FEATURES, stored[TrainingRecord.FEATURES], outputs[TrainingRecord.FEATURES],
        "what their checkpoints give here", report, FEATURE_RTOL)
    if len(report.failures) > found or value_method(TrainingConfig(**training.params["config"])) != "trak":
        return  # the served files are not their checkpoints (said), or in-run scores no checkpoint gives
    given = outputs[TrainingRecord.EXAMPLE_ATTRIBUTION]
    report.checkpoint_score_diff = largest_gap(stored_scores, given)
    if apart := outside_band(first.scores, given, contributors, band):
        report.fail(
            "model_differs", report.training_cid or "",
            f"the stored features' checkpoints ({cid}) give example scores beyond this machine's rounding "
            f"band of the replay's ({apart}): the model and features served are not the ones the run trained",
        )
        return  # the stored scores are then not theirs either
    _compare_scores_to_checkpoints(stored_scores, given, contributors, report)


def _compare_scores_to_checkpoints(
    stored: pa.Table, given: pa.Table, contributors: Mapping[str, set[str]], report: ReplayReport
) -> None:
    """The stored example scores against those the stored checkpoints give here, within evaluation's
    rounding (``CHECKPOINT_SCORE_RTOL``) score by score and each contributor's sum: scores a publisher
    shifted within the replay's wide band, beside an honest model, are not what that model gives."""
    theirs = given["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    allowed = CHECKPOINT_SCORE_RTOL * float(np.max(np.abs(theirs), initial=0.0))
    report.checkpoint_score_allowed = allowed
    if apart := outside_band(stored, given, contributors, Band(score=allowed, sum_floor=allowed)):
        report.fail(
            "scores_not_the_models", report.training_cid or "",
            f"the stored example scores are not what the stored features' checkpoints give here ({apart}; "
            f"evaluation rounds within {CHECKPOINT_SCORE_RTOL:g} of the largest score on other kernels)",
        )


def _compare_file(
    training: Record, name: str, stored: bytes, theirs: bytes, whose: str, report: ReplayReport,
    rtol: float = 0.0,
) -> float | None:
    """A stored output against ``theirs``: the same bytes, or with ``rtol`` the same names, shapes and
    metadata and every tensor within ``rtol`` of its largest entry; else one ``model_differs`` naming
    the stored CID and the tensors that differ. The largest gap (of a tensor's largest entry where
    ``rtol``), None where the files hold other tensors."""
    if stored == theirs:
        return 0.0
    gaps = tensor_gaps(stored, theirs, relative=rtol > 0)
    largest = max(gaps.values(), default=0.0) if gaps is not None else None
    what = f"the stored {name.replace('_', ' ')} ({training.outputs[name]}) is not {whose}"
    if gaps is None:
        detail = f"{what}: it holds other tensors"
    else:
        over = sorted((k for k in gaps if gaps[k] > rtol), key=lambda k: -gaps[k])
        if not over and safetensors_metadata(stored) == safetensors_metadata(theirs):
            return largest
        scale = f" of its largest entry, beyond {rtol:g}" if rtol else ""
        detail = (f"{what}: {len(over)} of {len(gaps)} tensors differ (largest {gaps[over[0]]:.3g}{scale} at "
                  f"{over[0]})" if over else f"{what}: its metadata differs")
    report.fail("model_differs", report.training_cid or "", detail)
    return largest
