"""A stored annotations table held to the Label Studio project it was exported from.

A run pays its labelers by the answers its annotations table stores, and recomputes its consensus
from them; the table's CID proves only that nothing changed after it was stored. So a publisher
could store answers of its choosing (a label moved, a labeler's answers dropped, answers invented)
with every CID and score consistent. An auditor who can read the project checks the table against
the answers Label Studio holds now (`labeling.live_annotations`), by annotation id:

- an answer in both at the same `updated_at` must be the same answer (example, annotator, label,
  creation time, lead time), and Label Studio's version may not be older than the stored one;
- an answer edited in Label Studio after the export (its `updated_at` later than the export's
  start, less the export's own `OVERLAP` for clock skew) keeps its example, annotator and creation
  time, which an edit cannot change; its label then is not checkable (`edited_since`);
- an answer Label Studio held, valid, before the export must be stored (`omitted`);
- a stored answer Label Studio no longer holds is `gone`: deleted there since, or never made. Label
  Studio keeps no trace of a deletion, so the check cannot tell the two apart and does not pass it;
- an answer is stored once (twice, it would count twice in the consensus).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyarrow as pa

from labeling.export import OVERLAP, LiveAnnotations

_FIELDS = ("example_id", "annotator", "label", "created_at", "lead_time_s")
_FIXED = ("example_id", "annotator", "created_at")  # what an edit in Label Studio leaves as it was


@dataclass(frozen=True)
class Mismatch:
    """One answer the check does not pass: its id, the annotator the stored table (else Label Studio)
    credits it to, and what is wrong."""

    annotation_id: int
    annotator: str
    detail: str


@dataclass(frozen=True)
class Reconciliation:
    """How a stored annotations table compares with Label Studio's answers (`reconcile`)."""

    matched: int  # stored answers Label Studio holds as stored
    differ: tuple[Mismatch, ...]
    omitted: tuple[Mismatch, ...]
    gone: tuple[Mismatch, ...]
    edited_since: tuple[int, ...]  # ids: edited after the export, their labels not checkable

    @property
    def ok(self) -> bool:
        """True when no answer differs, is left out or is gone (edited ones aside)."""
        return not (self.differ or self.omitted or self.gone)


def reconcile(
    stored: pa.Table, live: LiveAnnotations, exported_at: datetime, *, slack: timedelta = OVERLAP
) -> Reconciliation:
    """Hold `stored` (an `annotations` table exported at `exported_at`) to `live`, answer by answer."""
    cutoff = exported_at - slack
    now = {r["annotation_id"]: r for r in live.table.to_pylist()}
    times = Counter(stored.column("annotation_id").to_pylist())
    matched, differ, gone, edited, seen = 0, [], [], [], set()
    for row in stored.to_pylist():
        aid, who = row["annotation_id"], row["annotator"]
        if aid in seen:
            continue
        seen.add(aid)
        if times[aid] > 1:  # one answer counted twice in the consensus
            differ.append(Mismatch(aid, who, f"stored {times[aid]} times"))
        elif aid in now:
            detail, later = _compare(row, now[aid], cutoff)
            if detail:
                differ.append(Mismatch(aid, who, detail))
            elif later:
                edited.append(aid)
            else:
                matched += 1
        elif aid in live.left_out:
            reason, updated = live.left_out[aid]
            if updated > cutoff:
                edited.append(aid)
            else:
                differ.append(Mismatch(aid, who, f"{reason} in Label Studio since {updated.isoformat()}, "
                                                 "before the export"))
        else:
            gone.append(Mismatch(aid, who, "not in Label Studio"))
    omitted = [Mismatch(aid, r["annotator"], f"held since {r['updated_at'].isoformat()}")
               for aid, r in now.items() if aid not in times and r["updated_at"] <= cutoff]
    return Reconciliation(matched, tuple(differ), tuple(omitted), tuple(gone), tuple(edited))


def _compare(stored: dict, live: dict, cutoff: datetime) -> tuple[str | None, bool]:
    """What differs between the two versions of one answer (None: nothing), and whether Label Studio's
    is an edit made after the export (then only what an edit leaves as it was is compared)."""
    later = live["updated_at"] != stored["updated_at"]
    if later and (live["updated_at"] < stored["updated_at"] or live["updated_at"] <= cutoff):
        return (f"stored as updated at {stored['updated_at'].isoformat()}, while Label Studio's version is "
                f"of {live['updated_at'].isoformat()}, which the export would have read"), later
    wrong = [f"{k} {_shown(stored[k])} stored, {_shown(live[k])} in Label Studio"
             for k in (_FIXED if later else _FIELDS) if stored[k] != live[k]]
    return "; ".join(wrong) or None, later


def _shown(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else repr(value)
