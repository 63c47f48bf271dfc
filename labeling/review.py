"""A review queue in Label Studio: flagged examples go back to the labelers for more answers.

Label Studio's open-source edition has no review workflow, but it has what a queue needs: each
task's `overlap` (how many answers it wants; a task with fewer re-enters the labeling stream for
annotators who have not answered it yet) and Data Manager tabs (saved filters). Flagged tasks get
their overlap raised to the answers they have plus `extra_answers` (capped), and the project's
"review" tab lists exactly them. New answers are ordinary annotations: the next incremental export
(`export_annotations`) picks them up and consensus folds them in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labeling.client import LabelStudioClient, Project
from labeling.errors import InvalidExamplesError

REVIEW_TAB = "review"


@dataclass(frozen=True)
class ReviewQueue:
    """What `request_review` did: the Data Manager tab listing the flagged tasks, and which were sent back."""

    view_id: int  # the project's "review" tab
    task_ids: list[int]  # the tasks it lists, in the order given
    raised: int  # tasks whose overlap was raised by this call
    missing: list[str]  # example ids without a task in the project


def review_overlap(overlap: int, answers: int, extra_answers: int, max_overlap: int) -> int:
    """The overlap a flagged task should ask for: its answers plus `extra_answers`, never below what it
    asks already, never above `max_overlap` (unless it already asks more). Rerunning with the same
    answers asks for nothing new."""
    return max(overlap, min(answers + extra_answers, max_overlap))


def request_review(
    client: LabelStudioClient,
    project: Project,
    example_ids: Sequence[str],
    *,
    extra_answers: int = 2,
    max_overlap: int = 9,
    tab: str = REVIEW_TAB,
) -> ReviewQueue:
    """Send the tasks of `example_ids` back for more answers and list them in the project's `tab`."""
    if extra_answers < 1 or max_overlap < 1:
        raise InvalidExamplesError("extra_answers and max_overlap must be at least 1")
    keys, _ = client.task_keys(project.id)
    missing = [e for e in example_ids if e not in keys]
    task_ids = list(dict.fromkeys(keys[e] for e in example_ids if e in keys))
    states = client.task_states(project.id, task_ids)
    raised = 0
    for tid in task_ids:
        overlap, answers = states.get(tid, (1, 0))
        want = review_overlap(overlap, answers, extra_answers, max_overlap)
        if want != overlap:
            client.set_overlap(tid, want, n_answers=answers)
            raised += 1
    view_id = client.ensure_view(project.id, tab, task_ids)
    return ReviewQueue(view_id=view_id, task_ids=task_ids, raised=raised, missing=missing)
