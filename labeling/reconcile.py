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
  Studio keeps no trace of a deletion, so the check cannot tell the two apart and does not pass it.
"""

from __future__ import annotations

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
    matched, differ, gone, edited = 0, [], [], []
    for row in stored.to_pylist():
        aid, who = row["annotation_id"], row["annotator"]
        if aid in now:
            detail = _compare(row, now[aid], cutoff)
            if detail == "edited":
                edited.append(aid)
            elif detail:
                differ.append(Mismatch(aid, who, detail))
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
    stored_ids = set(stored.column("annotation_id").to_pylist())
    omitted = [Mismatch(aid, r["annotator"], f"held since {r['updated_at'].isoformat()}")
               for aid, r in now.items() if aid not in stored_ids and r["updated_at"] <= cutoff]
    return Reconciliation(matched, tuple(differ), tuple(omitted), tuple(gone), tuple(edited))


def _compare(stored: dict, live: dict, cutoff: datetime) -> str | None:
    """None where the answers agree, "edited" where Label Studio's is a later edit than the export,
    else what differs."""
    fields = _FIELDS
    if live["updated_at"] != stored["updated_at"]:
        if live["updated_at"] < stored["updated_at"] or live["updated_at"] <= cutoff:
            return (f"stored as updated at {stored['updated_at'].isoformat()}, while Label Studio's version "
                    f"is of {live['updated_at'].isoformat()}, which the export would have read")
        fields = _FIXED
    wrong = [f"{k} {_shown(stored[k])} stored, {_shown(live[k])} in Label Studio"
             for k in fields if stored[k] != live[k]]
    if wrong:
        return "; ".join(wrong)
    return None if fields is _FIELDS else "edited"


def _shown(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else repr(value)
