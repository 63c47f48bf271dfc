"""A table through the whole mission, against the real Label Studio and anvil: its rows shown to
simulated labelers, an MLP trained on its numbers and categories (gaps filled as recorded), paid on
chain, served by named fields with paid predictions, verified and replayed bit for bit."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from attribution import InputEncoding, encoding_from_json
from labeling import LabelStudioClient, labelstudio_token
from pipelines.demo import run_demo
from pipelines.demo_data import UserData
from provenance import TRAINING, Chain, RunRecords, TrainingRecord
from storage import BlockStore
from tests.pipelines.test_demo_data import script_module
from tests.pipelines.test_payload_e2e import CODE, replayed_elsewhere

TABLE = script_module("make_table")


def _customers(rows: int = 150, seed: int = 4) -> pa.Table:
    """The bundled customer table (churn hangs on the plan, a category, and on tenure, a number with
    gaps; a customer id and a name ride along), from three clean providers."""
    return TABLE.make_table(rows, seed, providers=("bank-north", "bank-south", "telco"))


def _task_rows(settings) -> list[dict]:
    """The rows the demo's Label Studio project shows, as the server holds them."""
    (entry,) = [json.loads(p.read_text()) for p in settings.catalog_dir.glob("demo-*.json")]
    client = LabelStudioClient(settings.labelstudio_url, labelstudio_token())
    project = client.find_project(f"{settings.labelstudio_prefix} {entry['version']}")
    tasks = client.sdk.tasks.list(project=project.id, fields="task_only", include="id,data", page_size=500)
    return [t.data["row"] for t in tasks]


def _asked(chain, store, run_id: str, tmp_path, inputs: list[dict]) -> list[dict]:
    """The `unseen` fields of each answer the served run gives to `inputs` sent by name."""
    from fastapi.testclient import TestClient

    from serving import API_KEY_HEADER, Ledger, create_app, load_run

    ledger = Ledger(tmp_path / "ledger.sqlite")
    _, secret = ledger.create_key("tests", balance=10**18)
    client = TestClient(create_app(load_run(chain, store, run_id), ledger, price=10**12))
    r = client.post("/v1/predict", json={"inputs": inputs}, headers={API_KEY_HEADER: secret})
    assert r.status_code == 200, r.text
    return [p["unseen"] for p in r.json()["predictions"]]


def test_a_table_is_labeled_trained_on_its_categories_paid_served_and_replayed(caravan_env, tmp_path,
                                                                               monkeypatch):
    settings = caravan_env
    monkeypatch.setattr("pipelines.lineage.pipeline_code", lambda: CODE)
    path = tmp_path / "customers.parquet"
    pq.write_table(_customers(), path)
    shown = ("plan", "tenure_months", "region", "monthly_fee")  # never the customer's id or name
    data = UserData(path, "table", "row", ("churn", "stay"), "label", show=shown)
    first = run_demo(settings, data=data, start_services=False, say=lambda _: None)
    assert first["verify_ok"], first["failures"]
    assert first["epoch_verify_ok"] and first["predictions"] == 5  # asked by named fields, each paid
    assert sum(r["weight_bps"] for r in first["weights"]) == 10_000
    assert {r["role"] for r in first["weights"]} == {"provider", "labeler"}
    rows = _task_rows(settings)  # what labelers saw: the rows trained on, held-out validation rows not
    assert len(rows) >= 120 and {tuple(row) for row in rows} == {shown}

    env = {"CARAVAN_RPC_URL": settings.rpc_url, "CARAVAN_CHAIN_DIR": str(settings.chain_dir)}
    chain = Chain.from_env(env)
    store = BlockStore(settings.store_dir)
    records = RunRecords(chain, store)
    _, training = records.parent(records.head(first["run_id"]), TRAINING)
    encoding = encoding_from_json(store.get(training.outputs[TrainingRecord.ENCODING]))
    assert isinstance(encoding, InputEncoding)
    assert set(encoding.columns) == set(shown)  # the id and the name left out
    assert dict(encoding.categories) == {"plan": TABLE.PLANS, "region": TABLE.REGIONS}
    assert _asked(chain, store, first["run_id"], tmp_path, [  # a plan training never saw is named
        {"plan": "basic", "region": "east", "tenure_months": 3.0, "monthly_fee": 20.0},
        {"plan": "enterprise", "region": None, "tenure_months": None, "monthly_fee": 20.0},
    ]) == [{}, {"plan": "enterprise"}]

    monkeypatch.setattr("pipelines.replay.run.pipeline_code", lambda: CODE)
    replayed = replayed_elsewhere(chain, store, first["run_id"])  # the gaps' NaN compare equal
    assert replayed.ok and replayed.same_platform, [f.__dict__ for f in replayed.failures]
    assert replayed.max_score_diff == 0.0 and replayed.replayed_root == replayed.onchain_root
