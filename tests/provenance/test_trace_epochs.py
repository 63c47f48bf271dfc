"""A run's serving epochs, seen by the auditor from the chain and the store alone (real anvil).

serving's `settle_run` settles real epochs (receipts in a real ledger); `trace_run` lists them
under the run, and `caravan verify RUN --epochs` checks each with serving's `verify_epoch`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from provenance import Chain, ChainError, run_epochs, trace, trace_run
from provenance.audit import record_cids
from provenance.runs import publish_run
from serving import Ledger, Settlement, settle_run, split_price
from serving.fees import totals_by_address
from serving.ledger import Charge
from serving.sample import SampleRun
from serving.settle import store_epoch
from storage import BlockStore, parse_cid

RUN = "run-epochs"


def _pay(ledger: Ledger, sample_run: SampleRun, n: int, price: int) -> None:
    """`n` paid predictions of the run, each split over two of its contributors."""
    a, b = (sample_run.weights["address"][i].as_py() for i in (0, 1))
    bps = ((a, 6_000), (b, 4_000))
    key_id, _ = ledger.create_key("auditor-test", balance=n * price)
    items = [Charge(f"{i:064x}", "3", 0.9, "run", bps, tuple(split_price(price, bps))) for i in range(n)]
    ledger.charge(key_id, RUN, "bafkqaaa", price, items)


@pytest.fixture
def settled(chain: Chain, store: BlockStore, sample_run: SampleRun, tmp_path: Path) -> list[Settlement]:
    """The run published, then two epochs settled (3 receipts at 1,001 wei, then 2 at 77 wei)."""
    publish_run(chain, store, RUN, sample_run.head)
    ledger = Ledger(tmp_path / "ledger.sqlite", synchronous="NORMAL")
    out = []
    for n, price in ((3, 1_001), (2, 77)):
        _pay(ledger, sample_run, n, price)
        out.append(settle_run(chain, store, ledger, RUN))
    return out


def test_trace_run_lists_settled_epochs(chain: Chain, store: BlockStore, settled: list[Settlement]) -> None:
    epochs = run_epochs(chain, store, RUN)
    assert [e.epoch_id for e in epochs] == [s.epoch_id for s in settled]
    for epoch, s in zip(epochs, settled, strict=True):
        assert (epoch.batch_cid, epoch.record_cid, epoch.root, epoch.onchain_root) == (
            s.batch_cid,
            s.record_cid,
            s.root,
            s.root,
        )
        assert (epoch.total, epoch.onchain_total, epoch.deposited, epoch.n_receipts) == (
            s.total,
            s.total,
            s.total,
            s.n_receipts,
        )
        assert epoch.error is None and epoch.record_tx.startswith("0x") and epoch.root_tx
        assert len(epoch.funding_txs) == 1
    assert [e.total for e in epochs] == [3 * 1_001, 2 * 77]

    node = trace_run(chain, store, RUN)
    assert node.details["epochs"] == 2
    shown = [c for c in node.children if c.kind == "epoch"]
    assert [c.details["batch_cid"] for c in shown] == [s.batch_cid for s in settled]
    assert settled[0].batch_cid in json.dumps(node.to_json())
    settlement = shown[0].children[0]  # the record itself, its receipts batch an input, the head its parent
    assert (settlement.id, settlement.details["activity"]) == (settled[0].record_cid, "settlement")
    assert [c.id for c in settlement.children] == [settled[0].batch_cid, node.children[0].id]
    assert {s.record_cid for s in settled} <= set(record_cids(node))  # so `trace RUN --prov` has them


def test_epoch_payout_traces_back_to_raw_data(
    chain: Chain, store: BlockStore, sample_run: SampleRun, settled: list[Settlement]
) -> None:
    from serving import epoch_claim

    address, amount = settled[0].payouts[0]
    tx, paid = epoch_claim(chain, store, settled[0].epoch_id, address)
    tree = trace(chain, store, tx.tx_hash)
    assert tree.kind == "payout" and paid == amount == tree.details["amount"]
    text = json.dumps(tree.to_json())
    assert settled[0].record_cid in text and sample_run.head in text and sample_run.raw_cid in text


def test_a_run_without_epochs_lists_none(chain: Chain, store: BlockStore, sample_run: SampleRun) -> None:
    publish_run(chain, store, RUN, sample_run.head)
    assert run_epochs(chain, store, RUN) == []
    assert trace_run(chain, store, RUN).details["epochs"] == 0


# ---- the CLI ----------------------------------------------------------------------------------


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def _block_of(store: BlockStore, cid: str) -> Path:
    """The embedded store's file of a small file's single block (named by its CIDv1)."""
    key = parse_cid(cid).set(version=1).encode("base32") if parse_cid(cid).version == 0 else cid
    return next(p for p in (store.root / "data").rglob("*") if p.name == str(key))


def test_cli_trace_and_verify_show_epochs(env: Chain, store: BlockStore, settled: list[Settlement]) -> None:
    code, out = _cli("trace", RUN)
    assert code == 0
    for s in settled:
        assert s.epoch_id in out and s.batch_cid in out and s.root in out and f"total {s.total}" in out
    code, out = _cli("trace", RUN, "--json")
    shown = [c["details"] for c in json.loads(out)["children"] if c["kind"] == "epoch"]
    assert code == 0 and [(d["epoch_id"], d["batch_cid"], d["total"]) for d in shown] == [
        (s.epoch_id, s.batch_cid, s.total) for s in settled
    ]

    code, out = _cli("verify", RUN)
    assert code == 0 and "serving epoch" not in out
    code, out = _cli("verify", RUN, "--epochs")
    assert code == 0 and out.startswith("OK: run run-epochs") and "2 serving epoch(s) checked" in out
    code, out = _cli("verify", RUN, "--epochs", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["records_checked"] > 0
    assert [(e["epoch_id"], e["verify"]["ok"], e["verify"]["root"]) for e in doc["epochs"]] == [
        (s.epoch_id, True, s.root) for s in settled
    ]


def test_cli_verify_epochs_names_a_tampered_and_a_missing_batch(
    env: Chain, store: BlockStore, settled: list[Settlement]
) -> None:
    block = _block_of(store, settled[0].batch_cid)
    data = bytearray(block.read_bytes())
    data[len(data) // 2] ^= 0x01
    block.write_bytes(bytes(data))
    _block_of(store, settled[1].batch_cid).unlink()

    code, out = _cli("verify", RUN)  # the run itself is intact
    assert code == 0
    code, out = _cli("verify", RUN, "--epochs")
    assert code == 1 and "2 failure(s)" in out
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2 and all(line.startswith("FAIL batch_unreadable") for line in fails)
    for s in settled:
        assert any(s.batch_cid in line and f"epoch {s.epoch_id}" in line for line in fails)
    code, out = _cli("verify", RUN, "--epochs", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    assert [e["verify"]["ok"] for e in doc["epochs"]] == [False, False]
    assert {f["name"] for f in doc["failures"]} == {"batch_unreadable"}
    code, out = _cli("trace", RUN)  # trace still lists both: it reads the record, not the batch
    assert code == 0 and all(s.epoch_id in out for s in settled)


def test_cli_verify_epochs_names_an_unreadable_settlement_record(
    env: Chain, store: BlockStore, settled: list[Settlement]
) -> None:
    _block_of(store, settled[1].record_cid).unlink()
    assert [e.error is not None for e in run_epochs(env, store, RUN)] == [False, True]
    code, out = _cli("verify", RUN, "--epochs")
    assert code == 1 and "FAIL record_unreadable " + settled[1].record_cid in out


class _Crash(Exception):
    pass


def test_an_epoch_recorded_but_not_published_or_of_another_run_is_flagged(
    env: Chain, store: BlockStore, sample_run: SampleRun, tmp_path: Path
) -> None:
    publish_run(env, store, RUN, sample_run.head)
    ledger = Ledger(tmp_path / "ledger.sqlite", synchronous="NORMAL")
    _pay(ledger, sample_run, 2, 500)

    def crash(state: str) -> None:
        if state == "recorded":
            raise _Crash(state)

    with pytest.raises(_Crash):  # killed after anchoring the record, before publishing the root
        settle_run(env, store, ledger, RUN, after_step=crash)
    (epoch,) = run_epochs(env, store, RUN)
    assert (epoch.total, epoch.onchain_root, epoch.root_tx, epoch.error) == (1_000, None, None, None)
    code, out = _cli("trace", RUN)
    assert code == 0 and "root NOT ON CHAIN" in out
    code, out = _cli("verify", RUN, "--epochs")
    assert code == 1 and "FAIL distribution_missing" in out

    # a settlement whose record names another run, though anchored as a child of this run's head
    other = Ledger(tmp_path / "other.sqlite", synchronous="NORMAL")
    a = sample_run.weights["address"][2].as_py()
    key_id, _ = other.create_key("other", balance=300)
    other.charge(
        key_id, "other-run", "bafkqaaa", 300, [Charge("f" * 64, "1", 0.5, "run", ((a, 10_000),), ((a, 300),))]
    )
    with pytest.raises(ChainError, match="run 'other-run' has 0 weighting records"):
        settle_run(env, store, other, "other-run")  # settle finds the head itself: none on chain
    assert other.epochs() == []  # refused before anything was closed
    # a hostile settler can still anchor one by hand: the audit must flag it
    epoch = other.close_epoch("other-run", sample_run.head)
    receipts = other.epoch_receipts(epoch.epoch_id)
    epoch = store_epoch(store, other, epoch, receipts, totals_by_address(r.amounts for r in receipts))
    env.record(epoch.record_cid, epoch.head_cid, epoch.epoch_id)
    stray = [e for e in run_epochs(env, store, RUN) if e.error]
    assert len(stray) == 1 and "names run 'other-run'" in stray[0].error
    code, out = _cli("verify", RUN, "--epochs")
    assert code == 1 and f"FAIL epoch_not_of_run {stray[0].record_cid}" in out
