"""On-chain costs of Caravan's provenance and royalties, and the wall time of `caravan verify`.

Starts its own anvil (from the npm package, on a free 127.0.0.1 port, fresh state) and prints:
- gas of one record (a root record and one with a parent);
- gas of one run's royalty root with 10, 1,000 and 100,000 contributors (constant by design);
- gas of a claim in runs of 10, 1,000 and 100,000 leaves (grows with the proof, log2 n); the
  figure is a steady-state claim (not the run's first, which also pays to initialise counters);
- the naive design, one pushed transfer per contributor, for 100 contributors;
- gas of a provider's source claim of 1 and of 400 files, and the time to find every claimant of
  `--files` files among `--claimants` claimants on chain (what ingest, publish and verify scan);
- gas of a labeler's answer claim of 400 answers (one transaction);
- the wall time of `caravan verify <run>` (a fresh process, as an auditor runs it) on a run of
  `--examples` examples (100,000) and `--contributors` contributors (1,000; a quarter of them
  labelers), `--answer-claimants` of those labelers (25) having claimed all their answers, goal
  < 10 s; the same check in-process is printed beside it, and the answer check alone
  (`run_answer_problems`). The run is `serving.sample`'s (the pipeline's six records), untrained:
  its example scores are random.
The last line is one JSON object.

    .venv/bin/python bench/chain_costs.py [--examples 100000] [--contributors 1000] [--seed 0]
        [--claimants 200] [--files 2000] [--answer-claimants 25]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from eth_account import Account  # noqa: E402

from attribution import largest_remainder  # noqa: E402
from provenance import (  # noqa: E402
    LABELING_EXPORT,
    Chain,
    RunRecords,
    StandardMerkleTree,
    WeightingRecord,
    claim_answers,
    claim_sources,
    date_export,
    load_record,
    publish_run,
    source_claims,
    verify_run,
)
from provenance.answer_claims import run_answer_problems, table_reader  # noqa: E402
from provenance.anvil import AnvilNode, funded  # noqa: E402
from provenance.chain import artifact  # noqa: E402
from schemas import TOTAL_BPS  # noqa: E402
from serving.sample import build_sample_run  # noqa: E402
from storage import BlockStore, read_parquet  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CARAVAN = Path(sys.executable).parent / "caravan"
SIZES = (10, 1_000, 100_000)


def split_bps(scores: np.ndarray) -> list[int]:
    """Basis points in proportion to `scores`, by the weights' own largest-remainder rounding."""
    grid = [int(v) for v in np.round(scores * 1e9)]
    quotas = [Fraction(TOTAL_BPS * g, sum(grid)) for g in grid]
    return largest_remainder(quotas, [(i,) for i in range(len(grid))])


def random_addresses(rng: random.Random, n: int) -> list[str]:
    from eth_utils import to_checksum_address

    return [to_checksum_address(rng.randbytes(20)) for _ in range(n)]


def share_tree(rng: random.Random, n: int) -> StandardMerkleTree:
    scores = np.array([rng.random() + 1e-3 for _ in range(n)])
    return StandardMerkleTree.of(list(zip(random_addresses(rng, n), split_bps(scores), strict=True)))


def root_and_claim_gas(
    chain: Chain, rng: random.Random
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    root_gas, claim_gas, proof_len = {}, {}, {}
    for n in SIZES:
        t0 = time.perf_counter()
        tree = share_tree(rng, n)
        build_s = time.perf_counter() - t0
        run = f"bench-shares-{n}"
        root_gas[str(n)] = chain.create_distribution(run, tree.root).gas_used
        chain.deposit(run, 10**18)
        paying = [i for i, (_, bps) in enumerate(tree.values) if bps > 0][:3]
        gases = [chain.claim(run, *tree.values[i], tree.proof(i))[0].gas_used for i in paying]
        claim_gas[str(n)] = gases[-1]
        proof_len[str(n)] = len(tree.proof(paying[-1]))
        print(
            f"n={n:>6}: root {root_gas[str(n)]:>7} gas   claim {gases[-1]:>7} gas (first {gases[0]}, "
            f"proof {proof_len[str(n)]} hashes)   tree built in {build_s:.2f} s"
        )
    return root_gas, claim_gas, proof_len


def push_gas(chain: Chain, rng: random.Random, n: int = 100) -> int:
    name = "NaivePusher"
    factory = chain.w3.eth.contract(abi=artifact(name)["abi"], bytecode=artifact(name)["bytecode"])
    _, receipt = chain.send("deploy:NaivePusher", factory.constructor())
    pusher = chain.w3.eth.contract(address=receipt["contractAddress"], abi=artifact(name)["abi"])
    recipients = random_addresses(rng, n)
    amounts = [10**12 + i for i in range(n)]
    return chain.send("push", pusher.functions.push(recipients, amounts), value=sum(amounts))[0].gas_used


def source_claim_costs(
    chain: Chain, rng: random.Random, claimants: int, files: int
) -> tuple[dict[str, int], float]:
    """Gas of a provider's claim of 1 and of 400 files (one transaction), and the seconds `source_claims`
    takes to find every claimant of `files` files with `claimants` addresses on chain, each having
    claimed one of them (the scan recomputes the seal of each file by each claimant in its bucket)."""
    cids = [f"bafkrei{rng.getrandbits(256):064x}" for _ in range(max(files, 400))]
    gas = {}
    for n in (1, 400):
        [sent] = claim_sources(funded(chain, Account.create()), cids[:n])
        gas[str(n)] = sent.gas_used
    for i in range(claimants - 2):
        claim_sources(funded(chain, Account.create()), [cids[i % files]])
    t0 = time.perf_counter()
    found = source_claims(chain, cids[:files])
    scan = round(time.perf_counter() - t0, 2)
    print(
        f"source claims: {gas['1']} gas for one file, {gas['400']} for 400 in one transaction "
        f"({gas['400'] / 400:.0f} a file); every claimant of {files} files among {claimants} claimants "
        f"({len(found)} files claimed) found in {scan} s"
    )
    return gas, scan


def claim_labelers_answers(chain: Chain, store: BlockStore, sample, labelers: int) -> tuple[int, int]:
    """The first `labelers` labelers of the sample run claim every answer of theirs, each from its own
    key (the sample's throwaway keys): the gas of a transaction of 400 answers, and the answers claimed."""
    annotations = read_parquet(store.get(load_record(store, sample.head).inputs[WeightingRecord.ANNOTATIONS]))
    rows = annotations.select(["example_id", "annotator", "label"]).to_pylist()
    names = sorted({r["annotator"] for r in rows})[:labelers]
    gas, claimed = 0, 0
    for name in names:
        pairs = [(r["example_id"], r["label"]) for r in rows if r["annotator"] == name]
        account = Account.from_key(sample.keys[sample.addresses[name]])
        sent = claim_answers(funded(chain, account), pairs)
        gas = gas or next((t.gas_used for t in sent if len(pairs) >= 400), 0)
        claimed += len(pairs)
    date_export(chain, sample.records[LABELING_EXPORT])  # the operator's export, dated after the claims
    return gas, claimed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--contributors", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--claimants", type=int, default=200, help="addresses with source claims on chain")
    parser.add_argument("--files", type=int, default=2_000, help="source files whose claimants are found")
    parser.add_argument("--answer-claimants", type=int, default=25,
                        help="labelers of the verified run who claimed all their answers on chain")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with AnvilNode(config_path=tmp / "anvil.json", log_path=tmp / "anvil.log") as node:
            chain = Chain(node.rpc_url, account=Account.from_key(node.dev_keys[0]), chain_dir=tmp / "chain")
            chain.deploy()
            print(f"anvil {node.rpc_url}, chain {chain.chain_id}; {os.cpu_count()} cores")

            first = chain.record("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "", "bench-records")
            child = chain.record(
                "QmbyEpV2hAp8uxuAJPpBTAEwWEurfPTMtMdUxbKtfNQVPu",
                "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
                "bench-records",
            )
            print(f"one record: {child.gas_used} gas with a parent, {first.gas_used} gas for a root record")
            claim_gas, scan = source_claim_costs(chain, rng, args.claimants, args.files)
            root_gas, share_claim_gas, _ = root_and_claim_gas(chain, rng)
            push = push_gas(chain, rng)
            print(
                f"naive push of one transfer per contributor, 100 contributors: {push} gas "
                f"({push / share_claim_gas['1000']:.1f}x one claim at n=1000, paid by the payer at once)"
            )

            store = BlockStore(tmp / "blocks", fsync=False)
            t0 = time.perf_counter()
            labelers = max(1, args.contributors // 4)
            sample = build_sample_run(
                store,
                n=args.examples,
                providers=args.contributors - labelers,
                labelers=labelers,
                seed=args.seed,
                train=False,
            )
            head = sample.head
            built_s = time.perf_counter() - t0
            answer_gas, claimed = claim_labelers_answers(chain, store, sample, args.answer_claimants)
            publication = publish_run(chain, store, "bench-run", head)
            print(
                f"run of {args.examples} examples, {args.contributors} contributors: "
                f"built in {built_s:.1f} s, "
                f"published in {publication.sent} txs, {publication.gas_used} gas"
            )

            env = dict(
                os.environ,
                CARAVAN_RPC_URL=node.rpc_url,
                CARAVAN_CHAIN_DIR=str(tmp / "chain"),
                CARAVAN_STORE_DIR=str(tmp / "blocks"),
            )
            env.pop("CARAVAN_CHAIN_ID", None)
            t0 = time.perf_counter()
            done = subprocess.run(
                [str(CARAVAN), "verify", "bench-run"], env=env, capture_output=True, text=True, cwd=REPO
            )
            verify_s = round(time.perf_counter() - t0, 2)
            if done.returncode != 0:
                print(done.stdout, done.stderr, file=sys.stderr)
                sys.exit(f"caravan verify failed on an untampered run (exit {done.returncode})")
            print(f"caravan verify (fresh process): {verify_s} s   (goal < 10 s)   {done.stdout.strip()}")
            t0 = time.perf_counter()
            report = verify_run(chain, store, "bench-run")
            in_process = time.perf_counter() - t0
            print(
                f"verify_run in-process: {in_process:.2f} s (ok={report.ok}); "
                "the rest is interpreter start-up and imports"
            )
            t0 = time.perf_counter()
            lineage = RunRecords(chain, store).lineage(head)
            check = run_answer_problems(chain, lineage, sample.weights, table_reader(store))
            answers_s = round(time.perf_counter() - t0, 2)
            print(f"answer claims: {answer_gas} gas for 400 answers in one transaction "
                  f"({answer_gas / 400:.0f} an answer); {check.answers} answers of {check.labelers} labelers "
                  f"({claimed} claimed) held to their claims in {answers_s} s "
                  f"(problems: {len(check.problems)})")

    print(
        json.dumps(
            {
                "record_gas": child.gas_used,
                "root_gas": root_gas,
                "claim_gas": share_claim_gas,
                "verify_s": verify_s,
                "push_gas_100": push,
                "source_claim_gas": claim_gas,
                "source_claims_scan_s": scan,
                "answer_claim_gas_400": answer_gas,
                "answer_check_s": answers_s,
            }
        )
    )


if __name__ == "__main__":
    main()
