"""Task sync against the real Label Studio: idempotent, keyed by example_id, never touching what exists."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest

from labeling import InvalidExamplesError, LabelConfigError, ProjectSpec, sync_tasks
from tests.labeling.conftest import CHOICES, text_examples


def task_texts(client, project) -> dict[str, str]:
    keys, _ = client.task_keys(project.id)
    return {eid: client.sdk.tasks.get(str(tid)).data["text"] for eid, tid in keys.items()}


def test_sync_twice_creates_nothing_twice_and_adds_only_new_examples(client, project):
    first = sync_tasks(client, project, text_examples(50))
    assert (first.created, first.already_present, first.tasks_in_project) == (50, 0, 50)
    before, _ = client.task_keys(project.id)

    again = sync_tasks(client, project, text_examples(50))
    assert (again.created, again.already_present, again.tasks_in_project) == (0, 50, 50)

    grown = sync_tasks(client, project, text_examples(60))
    assert (grown.created, grown.already_present, grown.tasks_in_project) == (10, 50, 60)
    after, orphans = client.task_keys(project.id)
    assert len(after) == 60 and orphans == []
    assert {k: after[k] for k in before} == before  # the same tasks, not re-created


def test_existing_tasks_are_not_touched_when_an_example_comes_back_changed(client, project):
    sync_tasks(client, project, text_examples(3))
    edited = text_examples(3).set_column(2, "text", pa.array(["EDITED"] * 3))
    assert sync_tasks(client, project, edited).created == 0
    assert set(task_texts(client, project).values()) == {"text ex00000", "text ex00001", "text ex00002"}


def test_duplicated_example_in_input_is_named_and_nothing_is_synced(client, project):
    sync_tasks(client, project, text_examples(5))
    dup = pa.concat_tables([text_examples(8), text_examples(1, start=6)])  # ex00006 twice, 3 new
    with pytest.raises(InvalidExamplesError, match="ex00006.*deduplicate"):
        sync_tasks(client, project, dup)
    keys, _ = client.task_keys(project.id)
    assert sorted(keys) == [f"ex{i:05d}" for i in range(5)]  # nothing lost, nothing half-added


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda t: t.drop_columns(["provider"]), "lacks column.*provider"),
        (lambda t: t.drop_columns(["text"]), r"lacks column.*text"),
        (lambda t: t.set_column(0, "example_id", pa.array(["a", "", "c"])), "empty example_id"),
        (lambda t: t.set_column(2, "text", pa.array([1, 2, 3])), "not a string"),
    ],
)
def test_malformed_examples_are_named_before_anything_is_written(client, project, mutate, words):
    with pytest.raises(InvalidExamplesError, match=words):
        sync_tasks(client, project, mutate(text_examples(3)))
    assert client.task_keys(project.id) == ({}, [])


def test_tasks_made_by_hand_are_counted_and_left_alone(client, project):
    client.import_tasks(project.id, [{"data": {"text": "typed in the UI"}}])
    report = sync_tasks(client, project, text_examples(2))
    assert (report.created, report.foreign_tasks, report.tasks_in_project) == (2, 1, 3)


def test_image_project_gets_digits_as_inline_png_data_urls(client):
    spec = ProjectSpec(f"digits {uuid.uuid4().hex[:8]}", "image", tuple("0123456789"), "pixels")
    project = client.ensure_project(spec)
    assert project.kind == "image" and project.field == "pixels"
    examples = pa.table(
        {
            "example_id": ["d1", "d2"],
            "provider": ["clinic"] * 2,
            "pixels": [list(range(64)), [0] * 64],
            "source": ["digits"] * 2,
        }
    )
    assert sync_tasks(client, project, examples).created == 2
    keys, _ = client.task_keys(project.id)
    data = client.sdk.tasks.get(str(keys["d1"])).data
    assert data["pixels"].startswith("data:image/png;base64,") and data["provider"] == "clinic"


def test_table_project_shows_each_rows_columns_and_is_read_back_as_a_table(client):
    """A tabular dataset is labeled from its rows: Label Studio accepts the <Table> config and stores each
    row's values by column (a gap as null: JSON has no NaN), never the ids, source or a label."""
    spec = ProjectSpec(f"rows {uuid.uuid4().hex[:8]}", "table", ("churn", "stay"), "row")
    assert '<Table name="row" value="$row"/>' in spec.label_config
    project = client.ensure_project(spec)
    assert (project.kind, project.field) == ("table", "row")
    assert client.ensure_project(spec).id == project.id  # read back from the server as the same spec
    examples = pa.table({
        "example_id": ["r1", "r2"], "provider": ["bank"] * 2, "source": ["s"] * 2,
        "age": [41.0, float("nan")], "city": ["oslo", None], "emb": [[0.5, 1.5], [2.0, 3.0]],
    })
    assert sync_tasks(client, project, examples).created == 2
    keys, _ = client.task_keys(project.id)
    data = client.sdk.tasks.get(str(keys["r2"])).data
    assert data["row"] == {"age": None, "city": None, "emb": [2.0, 3.0]} and data["provider"] == "bank"
    first = client.sdk.tasks.get(str(keys["r1"])).data["row"]
    assert first == {"age": 41.0, "city": "oslo", "emb": [0.5, 1.5]}
    with pytest.raises(InvalidExamplesError, match="to show"):
        sync_tasks(client, project, examples.select(["example_id", "provider", "source"]))


def test_a_table_project_shows_only_the_columns_it_picks(client):
    """`show` keeps what labelers should not read (a customer's name) out of the tasks entirely: Label
    Studio never receives it. The same title with the same labels is the same project."""
    spec = ProjectSpec(f"rows {uuid.uuid4().hex[:8]}", "table", ("churn", "stay"), "row", ("plan", "age"))
    project = client.ensure_project(spec)
    assert project.show == ("plan", "age") and client.ensure_project(spec) == project
    examples = pa.table({
        "example_id": ["r1"], "provider": ["bank"], "source": ["s"],
        "name": ["Ada Lovelace"], "age": [36.0], "plan": ["pro"],
    })
    assert sync_tasks(client, project, examples).created == 1
    keys, _ = client.task_keys(project.id)
    data = client.sdk.tasks.get(str(keys["r1"])).data
    assert data["row"] == {"plan": "pro", "age": 36.0} and "Ada Lovelace" not in str(data)
    lacking = r"lacks column\(s\) \['plan'\].*shows the columns \['plan', 'age'\]"
    with pytest.raises(InvalidExamplesError, match=lacking):
        sync_tasks(client, project, examples.drop_columns(["plan"]))
    more = pa.concat_tables([examples, examples]).set_column(0, "example_id", pa.array(["r1", "r2"]))
    every = client.ensure_project(ProjectSpec(spec.title, "table", ("churn", "stay"), "row"))  # no show
    with pytest.raises(InvalidExamplesError, match=r"shows the columns \['age', 'plan'\] in its 1 task.*"
                       r"would show \['name', 'age', 'plan'\].*--show age,plan"):
        sync_tasks(client, every, more)
    assert client.task_keys(project.id)[0].keys() == {"r1"}  # nothing synced
    assert sync_tasks(client, project, more).created == 1  # the same columns: the new row joins


def test_project_is_reused_by_title_and_a_conflicting_config_is_refused(client, project):
    same = client.ensure_project(ProjectSpec(project.title, "text", CHOICES, "text"))
    assert same == project
    with pytest.raises(LabelConfigError, match="exists as text.*pick another title"):
        client.ensure_project(ProjectSpec(project.title, "text", ("yes", "no"), "text"))


def test_text_tasks_show_the_exact_text(client, project):
    texts = ["Le chef a mijoté la sauce. Ça sent bon !", "Two sentences here.\nAnd a second line: 日本語."]
    examples = pa.table(
        {"example_id": ["t1", "t2"], "provider": ["p"] * 2, "text": texts, "source": ["tests"] * 2}
    )
    assert sync_tasks(client, project, examples).created == 2
    assert task_texts(client, project) == {"t1": texts[0], "t2": texts[1]}


def _drawn(fmt: str, seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def test_an_image_bytes_column_shows_as_the_image_itself(client):
    import base64

    spec = ProjectSpec(f"photos {uuid.uuid4().hex[:8]}", "image", ("cat", "dog"), "image")
    project = client.ensure_project(spec)
    assert project.kind == "image" and project.field == "image"
    images = {"png": _drawn("PNG", 1), "jpg": _drawn("JPEG", 2)}
    examples = pa.table(
        {
            "example_id": list(images),
            "provider": ["clinic"] * 2,
            "image": pa.array(list(images.values()), pa.binary()),
            "source": ["tests"] * 2,
        }
    )
    assert sync_tasks(client, project, examples).created == 2
    keys, _ = client.task_keys(project.id)
    for eid, mime in (("png", "image/png"), ("jpg", "image/jpeg")):
        url = client.sdk.tasks.get(str(keys[eid])).data["image"]
        head, _, body = url.partition(",")
        assert head == f"data:{mime};base64" and base64.b64decode(body) == images[eid]  # the bytes, unchanged
