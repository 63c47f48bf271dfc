"""The whole asset graph on a small slice of the demo data, against the real Label Studio and anvil."""

from __future__ import annotations

import json
import os
import threading

import dagster as dg
import pyarrow.parquet as pq
import pytest

from labeling import LabelStudioClient, ProjectSpec, choice_result
from pipelines.demo import run_demo, serving_input, single_run
from pipelines.demo_data import CHOICES, FIELD, VERSION, DemoError
from pipelines.settings import load_settings
from provenance import Chain, load_record
from serving import Ledger
from storage import BlockStore


def _chain(settings) -> Chain:
    return Chain.from_env({"CARAVAN_RPC_URL": settings.rpc_url, "CARAVAN_CHAIN_DIR": str(settings.chain_dir)})


def test_demo_runs_end_to_end_and_a_rerun_duplicates_nothing(caravan_env):
    settings = caravan_env
    first = run_demo(settings, limit=160, start_services=False, say=lambda _: None)
    assert first["verify_ok"], first["failures"]
    assert first["sources_claimed"] == "5 of 5"  # each provider claimed its file before registration
    assert first["answers_as_in_label_studio"] == "480 of 480"
    assert first["answers_claimed"] == "480 of 480"  # each labeler claimed its answers before the export
    assert first["examples"] == 160 and first["annotations"] == 160 * 3
    assert sum(r["weight_bps"] for r in first["weights"]) == 10_000
    assert {r["role"] for r in first["weights"]} == {"provider", "labeler"}
    assert first["claim_tx"] and first["claimed_wei"] > 0
    _flagged_labels_are_stored_and_queued_for_review(settings, first["mislabels"])
    _answers_are_held_to_their_labelers_claims(settings, sorted(r["contributor"] for r in first["weights"]
                                                                 if r["role"] == "labeler"))

    chain = _chain(settings)
    records = chain.recorded_events(first["run_id"])
    assert sorted({len(r.record_cid) > 0 for r in records}) == [True]
    pins = BlockStore(settings.store_dir).pins()

    second = run_demo(settings, limit=160, start_services=False, say=lambda _: None)
    assert second["verify_ok"]
    assert second["run_id"] == first["run_id"] and second["root_tx"] == first["root_tx"]
    assert second["annotations"] == first["annotations"]
    assert len(chain.recorded_events(first["run_id"])) == len(records)  # no record sent twice
    # a rerun stores nothing new but the new revenue: its paid predictions' settlement epoch
    epoch = Ledger(settings.ledger_path).epoch(second["epoch_id"])
    store = BlockStore(settings.store_dir)
    settled = load_record(store, epoch.record_cid).outputs.values()
    epoch_content = {epoch.record_cid, epoch.batch_cid, *settled}
    new_pins = store.pins() - pins
    assert new_pins and new_pins <= epoch_content
    assert first["epoch_verify_ok"] and first["predictions"] == 5 and first["epoch_claim_tx"]
    _sensor_starts_a_sync_only_for_new_annotations(settings)
    _settlement_job_settles_new_receipts(settings, first["run_id"])
    _verify_holds_the_answers_to_label_studio(settings, first["run_id"])


def _flagged_labels_are_stored_and_queued_for_review(settings, mislabels):
    from labeling import REVIEW_TAB
    from pipelines.content_io import AssetIndex
    from storage import read_parquet

    store, cid = BlockStore(settings.store_dir), AssetIndex(pointer_dir=str(settings.pointer_dir)).cid_of(
        "label_review", VERSION
    )
    review = read_parquet(store.get(cid))
    assert review.num_rows == 160 and cid in store.pins()
    from pipelines.resources import resources_for
    from provenance import LABEL_REVIEW, TRAINING, LabelReviewRecord, TrainingRecord

    lineage = resources_for(settings)["lineage"]
    record = load_record(store, lineage.cid_of(LABEL_REVIEW, VERSION))  # the auditor's view of it
    assert record.outputs[LabelReviewRecord.LABEL_REVIEW] == cid
    assert record.parents == (lineage.cid_of(TRAINING, VERSION),)
    # PNG images: the CNN recipe decides alone (a forest has no features to read)
    assert record.params["models"] == ["recipe"] and "scikit-learn" not in record.params
    # every fold also trained on the demo's trusted validation set, which is never itself reviewed
    validation_cid = load_record(store, lineage.cid_of(TRAINING, VERSION)).inputs[TrainingRecord.VALIDATION]
    assert record.inputs[LabelReviewRecord.VALIDATION] == validation_cid
    validation = read_parquet(store.get(validation_cid))
    assert record.params["trusted_rows"] == validation.num_rows > 0
    assert not set(validation["example_id"].to_pylist()) & set(review["example_id"].to_pylist())
    flagged = [r["example_id"] for r in review.to_pylist() if r["flagged"]]
    assert mislabels["flagged"] == len(flagged) == mislabels["sent_for_review"]
    # with labelers of accuracy 0.55-0.95 some consensus labels are wrong, and flags find them
    assert mislabels["consensus_wrong"] > 0 and mislabels["flagged_and_wrong"] > 0
    client = LabelStudioClient(settings.labelstudio_url, os.environ["LABEL_STUDIO_USER_TOKEN"])
    project = client.ensure_project(
        ProjectSpec(f"{settings.labelstudio_prefix} {VERSION}", "image", CHOICES, "image")
    )
    keys, _ = client.task_keys(project.id)
    (tab,) = [int(v.id) for v in client.sdk.views.list(project=project.id) if v.data["title"] == REVIEW_TAB]
    assert client.view_task_ids(project.id, tab) == sorted(keys[e] for e in flagged)
    states = client.task_states(project.id, [keys[e] for e in flagged])
    assert all(overlap > answers for overlap, answers in states.values())


def _settlement_job_settles_new_receipts(settings, run_id):
    from fastapi.testclient import TestClient

    from pipelines.automation import settlement_job
    from pipelines.resources import resources_for
    from serving import API_KEY_HEADER, create_app, load_run, verify_epoch

    chain, store, ledger = _chain(settings), BlockStore(settings.store_dir), Ledger(settings.ledger_path)
    _, secret = ledger.create_key("late-user", balance=10**15)
    app = create_app(load_run(chain, store, run_id), ledger, price=10**12)
    digit = pq.read_table(settings.home / "demo" / "digits" / "truth" / "labels.parquet")[FIELD][0].as_py()
    paid = TestClient(app).post(
        "/v1/predict", json={"input": serving_input("image", digit)}, headers={API_KEY_HEADER: secret}
    )
    assert paid.status_code == 200, paid.text
    before = {e.epoch_id for e in ledger.epochs()}
    assert settlement_job.execute_in_process(resources=resources_for(settings)).success
    new = [e for e in ledger.epochs() if e.epoch_id not in before]
    assert [e.n_receipts for e in new] == [1] and new[0].state == "closed"
    assert verify_epoch(chain, store, new[0].epoch_id).ok
    assert settlement_job.execute_in_process(resources=resources_for(settings)).success
    assert len(ledger.epochs()) == len(before) + 1  # each receipt is settled once


def _sensor_requests(settings) -> list:
    from pipelines.automation import annotation_sensor
    from pipelines.resources import resources_for

    with dg.build_sensor_context(instance=dg.DagsterInstance.get(), resources=resources_for(settings)) as ctx:
        return list(annotation_sensor(ctx) or [])


def _answers_are_held_to_their_labelers_claims(settings, labelers):
    """`answers_match_their_claims` (blocking: the demo trained, so it passed) holds each of the demo's
    labelers to its claims. Paid at another labeler's address, each fails, and blocks (ERROR): that
    address claimed answers the export left out. Paid at an address whose one claim came after the export,
    a labeler's unclaimed answers warn (publishing would refuse them; a claim needs no retraining). An
    unreadable registry warns; with no registry, or no contracts deployed from here, nothing is held."""
    from eth_account import Account

    from labeling import ContributorsRegistry
    from pipelines.checks import claims_check
    from pipelines.content_io import AssetIndex
    from pipelines.resources import ChainResource, ContributorsResource, resources_for
    from provenance import claim_answers
    from provenance.anvil import funded
    from storage import read_parquet

    resources = resources_for(settings)
    store, lineage, chain = resources["store"], resources["lineage"], resources["chain"]
    held = claims_check(VERSION, store, lineage, resources["contributors"], chain)
    assert held.passed, held.description
    assert (held.metadata["labelers_held"].value, held.metadata["answers_held"].value) == (4, 480)
    addresses = ContributorsRegistry.load(settings.contributors_file).addresses

    def check_paying(pays: dict[str, str]):
        registry = settings.home / "registry-under-test.csv"
        registry.write_text("contributor,address\n" + "".join(f"{who},{a}\n" for who, a in pays.items()))
        return claims_check(VERSION, store, lineage, ContributorsResource(path=str(registry)), chain)

    wrong = check_paying({who: addresses[labelers[(i + 1) % 4]] for i, who in enumerate(labelers)})
    assert not wrong.passed and wrong.severity == dg.AssetCheckSeverity.ERROR
    assert wrong.metadata["labelers_failing"].value == wrong.metadata["labelers_left_out"].value == labelers
    assert "answers in the run are not ones" in wrong.description
    assert "claimed answers on" in wrong.description and "Sync again" in wrong.description

    answers = read_parquet(BlockStore(settings.store_dir).get(
        AssetIndex(pointer_dir=str(settings.pointer_dir)).cid_of("annotations", VERSION)))
    mine = next(r for r in answers.to_pylist() if r["annotator"] == labelers[0])
    late = Account.create()  # claims one answer now, after the export, with another label
    claim_answers(funded(_chain(settings), late), [(mine["example_id"], next(c for c in CHOICES
                                                                              if c != mine["label"]))])
    pending = check_paying({**{who: addresses[who] for who in labelers}, labelers[0]: late.address})
    assert not pending.passed and pending.severity == dg.AssetCheckSeverity.WARN
    assert pending.metadata["labelers_failing"].value == [labelers[0]]
    assert pending.metadata["labelers_left_out"].value == []
    assert "Publishing the split will refuse it" in pending.description

    with pytest.MonkeyPatch.context() as m:  # a client without the operator's key finds no dating of its own
        m.delenv("CARAVAN_PRIVATE_KEY")
        keyless = claims_check(VERSION, store, lineage, resources["contributors"], chain)
    assert not keyless.passed and keyless.severity == dg.AssetCheckSeverity.WARN
    assert "was not dated on chain (this chain client has no key)" in keyless.description
    assert "Publishing the split will refuse it" in keyless.description

    unreadable = settings.home / "unreadable-registry.csv"
    unreadable.write_text("who,where\n")
    broken = claims_check(VERSION, store, lineage, ContributorsResource(path=str(unreadable)), chain)
    assert not broken.passed and broken.severity == dg.AssetCheckSeverity.WARN
    assert "CSV header must be `contributor,address`" in broken.description
    nowhere = ContributorsResource(path=str(settings.home / "no-registry.csv"))
    unknown = claims_check(VERSION, store, lineage, nowhere, chain)
    assert unknown.passed and unknown.description == "no contributors registry: no labeler's address is known"
    elsewhere = ChainResource(rpc_url=settings.rpc_url, chain_dir=str(settings.home / "no-deployments"))
    unheld = claims_check(VERSION, store, lineage, resources["contributors"], elsewhere)
    assert unheld.passed and unheld.metadata["labelers_held"].value == 0
    assert unheld.description.startswith("no contracts were deployed from here")


def _sensor_starts_a_sync_only_for_new_annotations(settings):
    assert _sensor_requests(settings) == []
    client = LabelStudioClient(settings.labelstudio_url, os.environ["LABEL_STUDIO_USER_TOKEN"])
    project = client.ensure_project(
        ProjectSpec(f"{settings.labelstudio_prefix} {VERSION}", "image", CHOICES, "image")
    )
    keys, _ = client.task_keys(project.id)
    labeler = client.ensure_user("late-labeler@tests.caravan.invalid")
    client.create_annotation(keys[min(keys)], choice_result("3", "image"), completed_by=labeler)
    requests = _sensor_requests(settings)
    assert [r.partition_key for r in requests] == [VERSION]


def test_a_second_demo_while_one_runs_is_refused(tmp_path):
    lock = tmp_path / "demo.lock"
    entered = threading.Event()
    release = threading.Event()

    def hold():
        with single_run(lock):
            entered.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(10)
    try:
        with pytest.raises(DemoError, match="another `caravan demo` is running"), single_run(lock):
            pass
    finally:
        release.set()
        t.join()


def test_a_service_that_is_down_is_named_with_how_to_start_it(caravan_env, monkeypatch):
    monkeypatch.setenv("CARAVAN_RPC_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(DemoError, match=r"chain node \(anvil\) does not answer .*make anvil-start"):
        run_demo(load_settings(), limit=50, start_services=False, say=lambda _: None)


def test_a_chain_started_under_another_home_is_named_before_anything_runs(caravan_env, monkeypatch):
    monkeypatch.delenv("CARAVAN_PRIVATE_KEY")  # the fixture's anvil keeps its dev keys elsewhere
    with pytest.raises(DemoError, match=r"answers, but no signing key is in reach: set CARAVAN_PRIVATE_KEY"):
        run_demo(load_settings(), limit=50, start_services=False, say=lambda _: None)
    assert not (caravan_env.home / "demo").exists()  # refused before any data was written


def test_cli_ingest_registers_a_version_and_rejects_unknown_formats(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.demo_data import write_digits

    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    folder = write_digits(tmp_path / "data", limit=40)
    runner = CliRunner()
    args = [
        "ingest",
        str(folder),
        "--version",
        "v1",
        "--kind",
        "image",
        "--field",
        "image",
        "--choices",
        ",".join(str(d) for d in range(10)),
    ]
    ok = runner.invoke(app, args)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout.strip().splitlines()[-1])["examples"] == 40

    (tmp_path / "data.xlsx").write_text("x")
    bad = runner.invoke(app, ["ingest", str(tmp_path / "data.xlsx"), *args[2:]])
    assert bad.exit_code == 1 and "unknown dataset format" in bad.stderr
    clash = runner.invoke(
        app,
        [
            "ingest",
            str(tmp_path / "data"),
            "--version",
            "v1",
            "--kind",
            "image",
            "--field",
            "image",
            "--choices",
            "a,b",
        ],
    )
    assert clash.exit_code == 1 and "already registered" in clash.stderr
    as_text = runner.invoke(app, ["ingest", str(tmp_path / "data"), "--version", "v2", "--kind", "text",
                                  "--field", "image", "--choices", "a,b"])  # fmt: skip
    assert as_text.exit_code == 1 and "'image' is not UTF-8 text" in as_text.stderr  # PNG bytes are not text


def test_a_demo_killed_mid_pipeline_completes_on_restart_with_nothing_duplicated(caravan_env, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from provenance import RunRecords

    settings = caravan_env
    exe = Path(sys.executable).with_name("caravan")
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(exe), "demo", "--limit", "120", "--no-start-services"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while "pipeline: materializing" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(2.0)  # somewhere inside the asset graph
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    done = run_demo(settings, limit=120, start_services=False, say=lambda _: None)
    assert done["verify_ok"], done["failures"]
    assert done["annotations"] == 120 * 3
    chain, store = _chain(settings), BlockStore(settings.store_dir)
    head = RunRecords(chain, store).head(done["run_id"])  # exactly one weighting record on chain
    recorded = [e.record_cid for e in chain.recorded_events(done["run_id"])]
    assert len(recorded) == len(set(recorded)) == 6 and head in recorded


def _verify_holds_the_answers_to_label_studio(settings, run_id):
    """`caravan verify RUN --label-studio` passes on the demo's answers (an answer given since the export,
    by the sensor's step above, is not missed), says which were edited since, and fails for one deleted."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    def verify(*extra: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["verify", run_id, "--label-studio", *extra])
        return result.exit_code, result.stdout

    code, out = verify()
    assert code == 0 and "; 480 answers as Label Studio project " in out, out
    assert "holds them, on 160 tasks checked against the data trained on" in out
    # the pipeline's check reads a random sample of a large project's tasks, with their answers
    (sampled,) = _annotations_check(settings, sample=40)
    assert sampled.passed and sampled.metadata["sampled"].value is True
    assert sampled.metadata["tasks_checked"].value == 40 and sampled.metadata["matched"].value == 120
    labels = json.loads(verify("--json")[1])["labels"]
    assert (labels["matched"], labels["tasks_checked"], labels["ok"]) == (480, 160, True)
    client = LabelStudioClient(settings.labelstudio_url, os.environ["LABEL_STUDIO_USER_TOKEN"])
    project = client.ensure_project(
        ProjectSpec(f"{settings.labelstudio_prefix} {VERSION}", "image", CHOICES, "image")
    )
    first, second = client.annotated_tasks(project.id)[0]["annotations"][:2]
    client.update_annotation(first["id"], choice_result("7", "image"))
    code, out = verify()
    assert code == 0 and "479 answers as Label Studio project" in out and "1 edited there since" in out, out
    assert "SKIP (edited since)" in out
    client.sdk.annotations.delete(id=second["id"])
    code, out = verify()
    (line,) = [x for x in out.splitlines() if x.startswith("FAIL")]
    assert code == 1 and line.startswith("FAIL annotation_gone ") and "1 stored answer(s) are not in" in line
    assert f"annotation {second['id']} (" in line
    # the pipeline's own check of the stored export now fails the same way (and would block a split)
    (evaluation,) = _annotations_check(settings)
    assert not evaluation.passed and evaluation.description.startswith("annotation_gone: 1 stored answer(s)")
    assert evaluation.metadata["matched"].value == 478 and evaluation.metadata["edited_since"].value == 1
    (drawn,) = _annotations_check(settings, sample=1)  # it fails the sampled check, drawn or not
    assert not drawn.passed and drawn.description.startswith("annotation_gone: 1 stored answer(s)")


def _annotations_check(settings, **kw) -> list:
    """`annotations_match_label_studio`'s evaluation of the demo's version, as the pipeline runs it."""
    from pipelines.checks import export_check
    from pipelines.resources import resources_for

    resources = resources_for(settings)
    used = (resources[r] for r in ("store", "lineage", "labelstudio", "index"))
    return [export_check(VERSION, *used, **kw)]
