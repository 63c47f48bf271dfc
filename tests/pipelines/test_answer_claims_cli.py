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
from provenance.answer_claims import answer_bucket, answer_claims, answer_seal
from provenance.chain import Chain
from tests.services.anvil import AnvilService

ANSWERS = pa.table({"example_id": ["e1", "e2", "e3", "e1"], "annotator": ["ann", "ann", "bob", "ann"],
                    "label": ["cat", "dog", "cat", "cat"]})


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
    assert out["labeler"] == labeler and out["answers"] == 2 and len(out["txs"]) == 1
    seals = answer_claims(chain, [labeler])[labeler]
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
