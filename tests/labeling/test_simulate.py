"""Simulated annotators are real Label Studio users; their answers come back through export."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from labeling import (
    ContributorsRegistry,
    MissingAddressError,
    aggregate,
    export_annotations,
    import_with_answers,
    register,
    simulate_answers,
    simulated_annotators,
    submit_answers,
    sync_tasks,
)
from tests.labeling.conftest import CHOICES, text_examples


def test_simulated_users_are_real_clearly_named_and_created_once(client):
    sims = simulated_annotators([0.95, 0.55], prefix="sim-users")
    assert [s.name for s in sims] == ["sim-users-1-acc095", "sim-users-2-acc055"]
    ids = register(client, sims)
    assert register(client, sims) == ids  # found again, not duplicated
    users = client.users()
    assert {users[i] for i in ids.values()} == {s.email for s in sims}
    assert all(e.endswith("@simulated.caravan.invalid") for e in ids)


def test_answers_are_seeded_and_follow_accuracy():
    truth = {f"e{i}": random.Random(i).choice(CHOICES) for i in range(3000)}
    sims = simulated_annotators([0.9, 0.6])
    a = simulate_answers(truth, sims, CHOICES, seed=4)
    assert a == simulate_answers(truth, sims, CHOICES, seed=4)
    assert a != simulate_answers(truth, sims, CHOICES, seed=5)
    for sim in sims:
        mine = [x for x in a if x.annotator == sim]
        assert sum(x.label == truth[x.example_id] for x in mine) / len(mine) == pytest.approx(
            sim.accuracy, abs=0.03
        )


def test_bulk_import_with_answers_round_trips_through_export_and_payment_check(client, project):
    examples = text_examples(40)
    truth = {e: CHOICES[i % 3] for i, e in enumerate(examples["example_id"].to_pylist())}
    sims = simulated_annotators([0.95, 0.8, 0.6], prefix="sim-bulk")
    users = register(client, sims)
    answers = simulate_answers(truth, sims, CHOICES, seed=1)
    assert import_with_answers(client, project, examples, answers, users) == 40
    assert import_with_answers(client, project, examples, answers, users) == 0  # idempotent like sync

    ex = export_annotations(client, project)
    got = Counter(
        zip(
            ex.table["example_id"].to_pylist(),
            ex.table["annotator"].to_pylist(),
            ex.table["label"].to_pylist(),
            strict=True,
        )
    )
    assert got == Counter((a.example_id, a.annotator.email, a.label) for a in answers)
    assert aggregate(ex.table).consensus.num_rows == 40

    # Paying them needs an address for each; the registry names whoever lacks one.
    registry = ContributorsRegistry.from_pairs([(sims[0].email, "0x" + "11" * 20)])
    with pytest.raises(MissingAddressError) as err:
        registry.require(ex.table["annotator"].to_pylist())
    assert err.value.missing == sorted(s.email for s in sims[1:])


def test_answers_submitted_one_request_each_carry_completed_by(client, project):
    sync_tasks(client, project, text_examples(3))
    sims = simulated_annotators([1.0], prefix="sim-api")
    users = register(client, sims)
    truth = {f"ex{i:05d}": "bird" for i in range(3)}
    ids = submit_answers(client, project, simulate_answers(truth, sims, CHOICES), users)
    ex = export_annotations(client, project)
    assert sorted(ex.table["annotation_id"].to_pylist()) == sorted(ids)
    assert set(ex.table["annotator"].to_pylist()) == {sims[0].email} and set(
        ex.table["label"].to_pylist()
    ) == {"bird"}
