"""A labeler claims its answers on chain (`caravan claim-answers`, from its own key): each (example,
label) once; a table that is not a labeler's answers is refused with one clear error, sending nothing."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eth_account import Account
from typer.testing import CliRunner

from pipelines.cli import app
from provenance.answer_claims import answer_bucket, answer_seal
from provenance.chain import Chain
from provenance.claims import claimed_seals
from tests.services.anvil import AnvilService

ANSWERS = pa.table({"example_id": ["e1", "e2", "e3", "e1", "e4"],
                    "annotator": ["ann", "ann", "bob", "ann", "ann"],
                    "label": ["cat", "dog", "cat", "cat", ""]})  # e4: a task ann skipped


@pytest.fixture
def chain(tmp_path, monkeypatch, anvil: AnvilService) -> Chain:
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CARAVAN_CHAIN_DIR", raising=False)
    monkeypatch.setenv("CARAVAN_RPC_URL", anvil.rpc_url)
    admin = Account.from_key(anvil.dev_keys[0])
    chain = Chain(anvil.rpc_url, account=admin, chain_dir=tmp_path / "home" / "chain")
    chain.deploy()
    monkeypatch.setenv("CARAVAN_PRIVATE_KEY", anvil.dev_keys[5])
    return chain


def test_a_labeler_claims_its_answers_once(chain: Chain, anvil: AnvilService, tmp_path) -> None:
    pq.write_table(ANSWERS, tmp_path / "answers.parquet")
    args = ["claim-answers", str(tmp_path / "answers.parquet"), "--annotator", "ann"]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    out = json.loads(run.output)
    labeler = Account.from_key(anvil.dev_keys[5]).address
    assert out["labeler"] == labeler and out["answers"] == 2 and out["skipped_tasks"] == 1
    assert len(out["txs"]) == 1
    seals = claimed_seals(chain, [labeler])[labeler]
    for e, label in (("e1", "cat"), ("e2", "dog")):
        assert answer_seal(e, label, labeler) in seals[answer_bucket(e)]
    assert not any(answer_seal("e3", "cat", labeler) in s for s in seals.values())  # bob's, not claimed
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and json.loads(again.output)["txs"] == []


@pytest.mark.parametrize(
    ("table", "args", "said"),
    [
        (ANSWERS, [], "holds the answers of 2 annotators; name yours with --annotator"),
        (ANSWERS.drop_columns(["label"]), [], "no label column"),
        (ANSWERS, ["--annotator", "cy"], "no answers of 'cy'"),
        (ANSWERS.drop_columns(["annotator"]), ["--annotator", "ann"], "has no `annotator` column"),
        (pa.table({"example_id": ["e1", None], "label": ["cat", "dog"]}), [], "1 rows lack an example_id"),
        (pa.table({"example_id": ["e1"], "label": [""]}), [], "no answers"),
    ],
)
def test_a_table_that_is_not_a_labelers_answers_is_refused(chain: Chain, tmp_path, table, args, said) -> None:
    path = tmp_path / "answers.parquet"
    pq.write_table(table, path)
    blocks = chain.block_number()
    run = CliRunner().invoke(app, ["claim-answers", str(path), *args])
    assert run.exit_code != 0 and said in run.output, run.output
    assert chain.block_number() == blocks
    missing = CliRunner().invoke(app, ["claim-answers", str(tmp_path / "none.parquet")])
    assert missing.exit_code != 0 and "not a file of answers" in missing.output


def test_a_json_list_that_is_not_label_studios_export_is_refused(chain: Chain, tmp_path) -> None:
    path = tmp_path / "answers.json"
    for text, said in (('[{"id": 1, "data": {"example_id": "e1"}}]', "item 1 is not a task with `data` and "
                                                                     "`annotations`"),
                       ("[1, 2", "unreadable (JSONDecodeError")):
        path.write_text(text)
        blocks = chain.block_number()
        run = CliRunner().invoke(app, ["claim-answers", str(path)])
        assert run.exit_code != 0 and said in run.output, run.output
        assert chain.block_number() == blocks


@pytest.mark.parametrize("kind", ["CSV", "JSON"])
def test_label_studios_export_is_a_labelers_answers(chain: Chain, anvil: AnvilService, labelstudio,
                                                    tmp_path, kind) -> None:
    """The project's CSV or JSON export (every annotator's answers; the annotator is the user id; the
    JSON's skipped task, an answer without label) claims exactly the answers of the user named, as the
    pipeline's export reads them."""
    import urllib.request

    from labeling import ProjectSpec, choice_result, register, simulated_annotators, sync_tasks

    client = labelstudio.client()
    project = client.ensure_project(ProjectSpec(f"claims {tmp_path.name}", "text", ("cat", "dog"), "text"))
    ids = [f"ex{i}" for i in range(3)]
    sync_tasks(client, project, pa.table({"example_id": ids, "provider": ["p"] * 3, "text": ["a", "b", "c"],
                                          "source": ["s"] * 3}))
    users = list(register(client, simulated_annotators([0.9, 0.8], prefix="sim-claims")).values())
    keys, _ = client.task_keys(project.id)
    given = [(ids[0], "cat", users[0]), (ids[1], "dog", users[0]), (ids[1], "cat", users[1])]
    for e, label, user in given:
        client.create_annotation(keys[e], choice_result(label, project.field), completed_by=user)
    client.create_annotation(keys[ids[2]], [], completed_by=users[0], was_cancelled=True)  # skipped
    url = f"{labelstudio.base_url}/api/projects/{project.id}/export?exportType={kind}"
    request = urllib.request.Request(url, headers={"Authorization": f"Token {labelstudio.token}"})
    export = tmp_path / f"export.{kind.lower()}"
    export.write_bytes(urllib.request.urlopen(request).read())

    run = CliRunner().invoke(app, ["claim-answers", str(export), "--annotator", str(users[0])])
    assert run.exit_code == 0, run.output
    skipped = 1 if kind == "JSON" else 0  # the CSV export leaves a skipped task out
    assert (json.loads(run.output)["answers"], json.loads(run.output)["skipped_tasks"]) == (2, skipped)
    labeler = Account.from_key(anvil.dev_keys[5]).address
    seals = {s for bucket in claimed_seals(chain, [labeler])[labeler].values() for s in bucket}
    assert seals == {answer_seal(e, label, labeler) for e, label, user in given if user == users[0]}
