"""`caravan labels ...` against the real Label Studio: exit 0 on success, one `error:` line and exit 1
on bad input, nothing already synced or exported lost."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from labeling import choice_result, register, simulated_annotators
from labeling.server import free_port
from pipelines.cli import app
from tests.labeling.conftest import CHOICES, text_examples


@pytest.fixture
def cli(labelstudio, monkeypatch):
    monkeypatch.setenv("CARAVAN_LABELSTUDIO_URL", labelstudio.base_url)
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", labelstudio.token)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["labels", *map(str, args)])


def test_sync_export_aggregate_and_address_check_end_to_end(cli, client, tmp_path):
    title = f"cli {uuid.uuid4().hex[:8]}"
    pq.write_table(text_examples(5), tmp_path / "ex.parquet")
    spec = ["--project", title, "--choices", ",".join(CHOICES)]
    first = cli("sync", tmp_path / "ex.parquet", *spec)
    assert first.exit_code == 0 and "5 created, 0 already present" in first.output
    assert "0 created, 5 already present" in cli("sync", tmp_path / "ex.parquet", *spec).output

    dup = pa.concat_tables([text_examples(7), text_examples(1)])
    pq.write_table(dup, tmp_path / "dup.parquet")
    bad = cli("sync", tmp_path / "dup.parquet", *spec)
    assert bad.exit_code == 1 and bad.output.startswith("error: ") and "ex00000" in bad.output
    project = client.find_project(title)
    assert len(client.task_keys(project.id)[0]) == 5  # nothing half-added

    (sim,) = simulated_annotators([0.9], prefix=f"sim-cli-{uuid.uuid4().hex[:6]}")
    user = register(client, [sim])[sim.email]
    keys, _ = client.task_keys(project.id)
    client.create_annotation(keys["ex00000"], choice_result("dog", "text"), completed_by=user)
    out = tmp_path / "annotations.parquet"
    got = cli("export", "--project", title, "--out", out)
    assert got.exit_code == 0 and got.output.startswith("1 new or changed annotations; 1 in")
    assert cli("export", "--project", title, "--out", out).output.startswith(
        "0 new or changed annotations; 1 in"
    )
    client.create_annotation(keys["ex00001"], choice_result("cat", "text"), completed_by=user)
    assert cli("export", "--project", title, "--out", out).output.startswith(
        "1 new or changed annotations; 2 in"
    )
    assert pq.read_table(out).num_rows == 2
    gone = client.create_annotation(keys["ex00002"], choice_result("cat", "text"), completed_by=user)
    added = cli("export", "--project", title, "--out", out)
    assert added.output.startswith("1 new or changed annotations; 3 in")
    client.sdk.annotations.delete(id=gone)
    deleted = cli("export", "--project", title, "--out", out)
    assert deleted.exit_code == 0 and deleted.output.startswith("0 new or changed annotations; 2 in")
    assert "removed (deleted in Label Studio): 1" in deleted.output
    assert pq.read_table(out).num_rows == 2

    agg = cli("aggregate", out, "--consensus", tmp_path / "c.parquet", "--quality", tmp_path / "q.parquet")
    assert agg.exit_code == 0 and pq.read_table(tmp_path / "c.parquet").num_rows == 2

    (tmp_path / "reg.csv").write_text("contributor,address\nsomeone@else.org,0x" + "22" * 20 + "\n")
    unpaid = cli("check-addresses", out, "--registry", tmp_path / "reg.csv")
    assert unpaid.exit_code == 1 and "error: 1 contributor(s) have no address" in unpaid.output
    assert sim.email in unpaid.output
    (tmp_path / "reg.csv").write_text(f"contributor,address\n{sim.email},0x" + "22" * 20 + "\n")
    assert cli("check-addresses", out, "--registry", tmp_path / "reg.csv").exit_code == 0


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["export", "--project", "no such project here", "--out", "x.parquet"],
            "no Label Studio project titled",
        ),
        (["sync", "missing.parquet", "--project", "p", "--choices", "a,b"], "missing.parquet does not exist"),
        (["aggregate", "missing.parquet", "--consensus", "c", "--quality", "q"], "does not exist"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_1(cli, args, words):
    r = cli(*args)
    assert r.exit_code == 1 and r.output.startswith("error: ") and words in r.output


def test_down_server_and_missing_token_are_named(cli, monkeypatch, tmp_path):
    pq.write_table(text_examples(1), tmp_path / "ex.parquet")
    down = cli(
        "sync",
        tmp_path / "ex.parquet",
        "--project",
        "p x",
        "--choices",
        "a,b",
        "--url",
        f"http://127.0.0.1:{free_port()}",
    )
    assert down.exit_code == 1 and "did not complete" in down.output and "labelstudio-start" in down.output
    monkeypatch.delenv("LABEL_STUDIO_USER_TOKEN")  # the local default token, which this server refuses
    r = cli("sync", tmp_path / "ex.parquet", "--project", "p x", "--choices", "a,b")
    assert r.exit_code == 1 and "refused the API token" in r.output and "LABEL_STUDIO_USER_TOKEN" in r.output


def test_aggregate_with_a_model_reads_class_probabilities_and_names_bad_ones(tmp_path):
    """No server needed: answers and probabilities from files, each model method as `labeling.aggregate`
    does it."""
    import numpy as np

    from labeling import MODEL_ANNOTATOR, ModelProbs, aggregate
    from tests.labeling.test_aggregate import CLASSES, model_probs, simulated

    runner = CliRunner()

    def cli(*args):
        return runner.invoke(app, ["labels", "aggregate", *map(str, args)])

    truth, _, ann = simulated(n=200, seed=2)
    pq.write_table(ann, tmp_path / "ann.parquet")
    probs = model_probs(truth, right=0.9, wrong=0.1, seed=2)
    columns = {c: probs.probs[:, k] for k, c in enumerate(CLASSES)}
    wide = pa.table({"example_id": list(probs.example_ids), **columns})
    pq.write_table(wide, tmp_path / "probs.parquet")
    out = ["--consensus", tmp_path / "c.parquet", "--quality", tmp_path / "q.parquet"]
    for method in ("crowdlab", "dawid_skene_model"):
        ok = cli(tmp_path / "ann.parquet", *out, "--method", method, "--probs", tmp_path / "probs.parquet")
        assert ok.exit_code == 0, ok.output
        expected = aggregate(ann, method=method, probs=ModelProbs(probs.example_ids, CLASSES, probs.probs))
        assert pq.read_table(tmp_path / "c.parquet").equals(expected.consensus)
    assert cli(tmp_path / "ann.parquet", *out, "--smoothing", "0").exit_code == 0  # crowd-kit's own fit
    assert pq.read_table(tmp_path / "c.parquet").equals(aggregate(ann, smoothing=0.0).consensus)

    pq.write_table(wide.drop(["example_id"]), tmp_path / "noid.parquet")
    pq.write_table(wide.set_column(1, "a", pa.array(["x"] * 200)), tmp_path / "text.parquet")
    negative = wide.set_column(1, "a", pa.array(-np.ones(200)))
    pq.write_table(negative, tmp_path / "neg.parquet")
    at = ann.schema.get_field_index("annotator")
    impostor = ann.set_column(at, "annotator", pa.array([MODEL_ANNOTATOR] * ann.num_rows))
    pq.write_table(impostor, tmp_path / "impostor.parquet")
    for args, words in [
        (["--method", "crowdlab"], "and they need it"),
        (["--probs", tmp_path / "probs.parquet"], "--probs goes with --method dawid_skene_model or crowdlab"),
        (["--method", "crowdlab", "--probs", tmp_path / "noid.parquet"], "must have an example_id column"),
        (["--method", "crowdlab", "--probs", tmp_path / "text.parquet"], "not floats: a"),
        (["--method", "crowdlab", "--probs", tmp_path / "neg.parquet"], "finite, non-negative"),
        (["--smoothing", "-1"], "smoothing must be a finite number >= 0"),
    ]:
        r = cli(tmp_path / "ann.parquet", *out, *args)
        assert r.exit_code == 1 and r.output.startswith("error: ") and words in r.output, r.output
    model_args = ["--method", "dawid_skene_model", "--probs", tmp_path / "probs.parquet"]
    r = cli(tmp_path / "impostor.parquet", *out, *model_args)
    assert r.exit_code == 1 and r.output.startswith("error: ") and "the model's own name" in r.output
