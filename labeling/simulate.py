"""Simulated annotators for demos and benchmarks: real Label Studio users, synthetic answers.

Each is a real user created over the API (emails under `simulated.caravan.invalid`, names
starting "Simulated", so nobody mistakes them for people) whose answer is the true label
with probability `accuracy`, else a uniformly drawn wrong label. Answers are seeded, so a
demo's ground truth of annotator quality is known and reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

from labeling.client import LabelStudioClient, Project
from labeling.configs import choice_result
from labeling.sync import existing_tasks, task_rows

SIM_DOMAIN = "simulated.caravan.invalid"


@dataclass(frozen=True)
class SimulatedAnnotator:
    """A synthetic labeler, right with probability `accuracy`; `email` names its Label Studio user."""

    name: str
    accuracy: float

    @property
    def email(self) -> str:
        """`name` at an `.invalid` domain, which never takes mail: the annotator its annotations name."""
        return f"{self.name}@{SIM_DOMAIN}"


@dataclass(frozen=True)
class SimulatedAnswer:
    """One drawn answer to submit: who gave an example which label, and the seconds taken (`lead_time_s`)."""

    example_id: str
    annotator: SimulatedAnnotator
    label: str
    lead_time_s: float


def simulated_annotators(accuracies: Sequence[float], prefix: str = "sim") -> list[SimulatedAnnotator]:
    """Annotators named by their accuracy, e.g. `sim-1-acc095`."""
    for a in accuracies:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"accuracy {a} is not in [0, 1]")
    return [
        SimulatedAnnotator(f"{prefix}-{i + 1}-acc{round(a * 100):03d}", a) for i, a in enumerate(accuracies)
    ]


def register(client: LabelStudioClient, annotators: Sequence[SimulatedAnnotator]) -> dict[str, int]:
    """Create (or find) each annotator as a Label Studio user; email -> user id."""
    return {
        a.email: client.ensure_user(a.email, first_name="Simulated", last_name=a.name) for a in annotators
    }


def simulate_answers(
    truth: Mapping[str, str],
    annotators: Sequence[SimulatedAnnotator],
    choices: Sequence[str],
    *,
    per_example: int | None = None,
    seed: int = 0,
) -> list[SimulatedAnswer]:
    """Each example answered by `per_example` of the annotators (all when None), drawn per example."""
    k = len(annotators) if per_example is None else per_example
    if not 1 <= k <= len(annotators):
        raise ValueError(f"per_example must be in 1..{len(annotators)}, got {k}")
    rng = random.Random(seed)
    out = []
    for eid in sorted(truth):
        true = truth[eid]
        wrong = [c for c in choices if c != true]
        for ann in sorted(rng.sample(list(annotators), k), key=lambda a: a.name):
            label = true if (rng.random() < ann.accuracy or not wrong) else rng.choice(wrong)
            out.append(SimulatedAnswer(eid, ann, label, round(rng.lognormvariate(1.6, 0.5), 3)))
    return out


def submit_answers(
    client: LabelStudioClient, project: Project, answers: Sequence[SimulatedAnswer], users: Mapping[str, int]
) -> list[int]:
    """Annotate existing tasks one API request each (as a labeler's browser would); annotation ids."""
    keys, _ = client.task_keys(project.id)
    missing = sorted({a.example_id for a in answers} - set(keys))
    if missing:
        raise ValueError(
            f"{len(missing)} answered example(s) have no task yet: {missing[:5]}; sync them first"
        )
    return [
        client.create_annotation(
            keys[a.example_id],
            choice_result(a.label, project.field),
            completed_by=users[a.annotator.email],
            lead_time_s=a.lead_time_s,
        )
        for a in answers
    ]


def import_with_answers(
    client: LabelStudioClient,
    project: Project,
    examples: pa.Table,
    answers: Sequence[SimulatedAnswer],
    users: Mapping[str, int],
    *,
    batch_size: int = 2000,
) -> int:
    """Fast path: create the examples' tasks already carrying their simulated annotations (each with
    its `completed_by`). Examples already in the project are left alone; returns tasks created."""
    ids, present, _ = existing_tasks(client, project, examples)
    by_example: dict[str, list[dict]] = {}
    for a in answers:
        by_example.setdefault(a.example_id, []).append(
            {
                "result": choice_result(a.label, project.field),
                "completed_by": users[a.annotator.email],
                "lead_time": a.lead_time_s,
                "ground_truth": False,
            }
        )
    todo = [i for i, eid in enumerate(ids) if eid not in present]
    tasks = [
        {"data": data, "annotations": by_example.get(data["example_id"], [])}
        for data in task_rows(examples, project, todo)
    ]
    created = 0
    for start in range(0, len(tasks), batch_size):
        created += client.import_tasks(project.id, tasks[start : start + batch_size])
    return created
