"""Pay-per-use serving under load, against the real server (`caravan serve`, uvicorn) on loopback.

Sets up its own small attribution run, anvil and content store in a temp dir, then:
1. 2,000 single-input predictions at concurrency 16 per mode: per-prediction attribution
   (server A) and the run's weights (server B, no attribution), both writing the same ledger, the
   two modes interleaved request by request, in ROUNDS rounds of 2,000 / ROUNDS per mode (which
   mode goes first alternates between rounds). The 2 shared cores make one pass noisy, so the
   ratio reported is the median over rounds of each round's p50 ratio; every round is printed.
   Then batches of 64, interleaved the same way in one pass.
2. settle time of an epoch of 100,000 receipts (batch stored, record, root, funding on anvil).
3. SIGKILL of server A mid-load, restart: receipts a client saw but the ledger lacks (lost), and
   charges applied twice (duplicated: what the key was charged beyond the sum of the ledger's
   receipts, in predictions).
4. Hostile bodies: normal clients' single predictions against server A, in HOSTILE_ROUNDS rounds
   alternating calm and hostile; in a hostile round HOSTILE_SENDERS threads of another process (a
   client elsewhere: they do not share the normal clients' GIL) keep sending 120 MiB bodies
   (Content-Length declared or chunked, without a key or with one: 401 / 413 before the body is
   read). Prints the normal clients' p50 calm and hostile side by side, the refusals and the
   server's peak RSS growth.
5. What attribution costs, so a deferred split is not mistaken for a free one: in process, per row,
   the model's forward pass, the query features (`ServedRun.contributions`: a forward and backward
   pass per checkpoint plus the projection and products) and the split, each for single inputs and
   for one batch of 64; the rate at which `drain` attributes pending singles and batched rows; and,
   beside the HTTP figures, how many receipts the server's worker still had pending when each load
   ended and how long it took to attribute them.
Server A serves with `--attribution` (default `auto`: deferred for text and image runs, in the
request for numeric ones); server B with `--attribution off`.
Prints figures, then one JSON line: rps, p50_ms, p99_ms (attributed singles),
attribution_latency_ratio (median over rounds of p50 with / without), settle_100k_s, lost, duplicated,
calm_p50_ms, hostile_p50_ms, hostile_p50_ratio, hostile_refused, hostile_rss_growth_mb, attribution
(A's mode), forward_ms_single|batched, query_features_ms_single|batched, split_ms_single|batched (per
row, in process), drain_per_s_single|batched (in process), pending_after_singles,
drain_after_singles_s, pending_after_batches, drain_after_batches_s (the server's worker).
`--hostile-only` runs section 4 alone (its keys only). `--kind text|image` serves a text or image run
(the sample run's recipe) instead of the tabular MLP, with the same sections and keys (and `kind`).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from eth_account import Account

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the rooms of this checkout

from pipelines.serve_process import ServeProcess  # noqa: E402
from pipelines.settings import load_settings  # noqa: E402
from provenance import Chain  # noqa: E402
from provenance.anvil import AnvilNode  # noqa: E402
from serving import (  # noqa: E402
    API_KEY_HEADER,
    Ledger,
    Receipt,
    attribution_mode,
    drain,
    limit_threads,
    load_run,
    settle_run,
    split_price,
)
from serving.ledger import Charge  # noqa: E402
from serving.sample import build_sample_run  # noqa: E402
from storage import BlockStore  # noqa: E402

N_SINGLE, N_BATCH_REQ, CONCURRENCY, BATCH, ROUNDS = 2000, 40, 16, 64, 5
PRICE = 10**12
BALANCE = 2**62  # the bench key's prepaid balance
KILL_AFTER, KILL_DEADLINE_S = 300, 120  # SIGKILL once this many receipts were seen, or give up
HOSTILE_ROUNDS, HOSTILE_N, HOSTILE_SENDERS = 6, 400, 2  # rounds (calm, hostile, ...), requests per round
HOSTILE_BYTES, HOSTILE_CHUNK = 120 * 2**20, 2**20  # the 120 MB body, streamed a MiB at a time


def run_load(urls: list[str], secret: str, bodies: list[dict], n_per_url: int) -> dict[str, list[float]]:
    """CONCURRENCY workers; request j goes to urls[j % len(urls)], so the modes interleave."""
    jobs = [(j % len(urls), bodies[j % len(bodies)]) for j in range(n_per_url * len(urls))]
    lock, cursor = threading.Lock(), [0]
    lat: dict[str, list[float]] = {u: [] for u in urls}
    failures: list[str] = []

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while True:
                with lock:
                    if cursor[0] >= len(jobs):
                        return
                    which, body = jobs[cursor[0]]
                    cursor[0] += 1
                t0 = time.perf_counter()
                r = client.post(urls[which] + "/v1/predict", json=body, headers={API_KEY_HEADER: secret})
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    failures.append(r.text)
                lat[urls[which]].append(dt)

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat["_wall"] = [time.perf_counter() - t0]
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return lat


def rounds_of_singles(urls: list[str], secret: str, bodies: list[dict]) -> list[dict[str, list[float]]]:
    """ROUNDS interleaved passes of N_SINGLE / ROUNDS per mode; odd rounds send the other mode first."""
    out = []
    for r in range(ROUNDS):
        order = urls if r % 2 == 0 else urls[::-1]
        out.append(run_load(order, secret, bodies, N_SINGLE // ROUNDS))
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def kill_under_load(run_id: str, env: dict, key_id: str, secret: str, rows: list) -> tuple[int, int]:
    """(lost, duplicated) after a SIGKILL under load and a restart on the same ledger."""
    seen: list[str] = []
    stop = threading.Event()
    server = ServeProcess(run_id, env, price=PRICE).start()

    def worker() -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = client.post(
                        server.url + "/v1/predict",
                        json={"input": rows[i % len(rows)]},
                        headers={API_KEY_HEADER: secret},
                    )
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    seen.extend(p["receipt_id"] for p in r.json()["predictions"])

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + KILL_DEADLINE_S
    while len(seen) < KILL_AFTER and time.monotonic() < deadline:
        time.sleep(0.02)
    server.kill()
    stop.set()
    for t in threads:
        t.join()
    if len(seen) < KILL_AFTER:
        raise SystemExit(f"only {len(seen)} paid predictions in {KILL_DEADLINE_S} s before the kill")
    with ServeProcess(run_id, env, price=PRICE):
        pass  # restarted: it opens the same ledger
    ledger = Ledger(load_settings(env).ledger_path)
    lost = len(set(seen) - set(ledger.receipt_ids()))
    # A charge applied twice is what a client could see: the key paid more than its receipts add up
    # to (receipt ids are UNIQUE in the ledger, so counting repeated ids would always give 0).
    charged = BALANCE - ledger.key(key_id).balance
    duplicated = (charged - ledger.fees_accrued()) // PRICE
    return lost, duplicated


def settle_100k(chain: Chain, store: BlockStore, served, run, home: Path) -> float:
    ledger = Ledger(home / "settle.sqlite", synchronous="NORMAL")
    if run.kind == "numeric":
        preds = served.predict(run.X_test[:32])
    else:
        preds = served.predict_payloads(run.inputs[:32])
    stamp = "2026-01-01T00:00:00.000000Z"
    receipts = [
        Receipt(
            secrets.token_hex(16),
            stamp,
            run.run_id,
            served.model_cid,
            p.input_hash,
            p.label,
            p.probability,
            PRICE,
            p.split,
            p.bps,
            tuple(split_price(PRICE, p.bps)),
        )
        for i in range(100_000)
        for p in (preds[i % len(preds)],)
    ]
    ledger.add_receipts(receipts, key_id="bench")
    t0 = time.perf_counter()
    done = settle_run(chain, store, ledger, run.run_id)
    elapsed = time.perf_counter() - t0
    assert done is not None and done.n_receipts == 100_000
    return elapsed


def predict(served, values: list, **kw) -> list:
    """`ServedRun.predict` for numeric rows, `predict_payloads` for texts or image bytes."""
    if served.kind == "numeric":
        return served.predict(np.asarray(values, dtype=np.float64), **kw)
    return served.predict_payloads(values, **kw)


def per_row_ms(fn, rows: int, repeats: int = 3) -> float:
    """Best of ``repeats`` timings of ``fn()``, in ms per row."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000 / rows


def cost_split(served, values: list, home: Path) -> dict:
    """In process, one thread (as `caravan serve --threads 1`): ms per row of the forward pass, the query
    features and the split, for singles and for one batch of BATCH; and `drain`'s rate on pending
    singles and on one batch."""
    limit_threads(1)
    values = values[:BATCH]
    n = len(values)
    preds = predict(served, values, defer=True)
    payloads, labels = [p.payload for p in preds], [p.label for p in preds]
    contributions = served.contributions(payloads, labels)
    out = {
        "forward_ms_single": per_row_ms(lambda: [predict(served, [v], attribute=False) for v in values], n),
        "forward_ms_batched": per_row_ms(lambda: predict(served, values, attribute=False), n),
        "query_features_ms_single": per_row_ms(
            lambda: [served.contributions([p], [lab]) for p, lab in zip(payloads, labels, strict=True)], n
        ),
        "query_features_ms_batched": per_row_ms(lambda: served.contributions(payloads, labels), n),
        "split_ms_single": per_row_ms(
            lambda: [served.query_bps(contributions[:, i : i + 1]) for i in range(n)], n
        ),
        "split_ms_batched": per_row_ms(lambda: served.query_bps(contributions), n),
    }
    ledger = Ledger(home / "drain.sqlite", synchronous="NORMAL")
    key_id, _ = ledger.create_key("drain", balance=BALANCE)
    items = [Charge(p.input_hash, p.label, p.probability, p.split, (), (), p.payload) for p in preds]
    for item in items:  # singles: one request each
        ledger.charge(key_id, served.run_id, served.model_cid, PRICE, [item])
    out["drain_per_s_single"] = drain(served, ledger).per_s
    ledger.charge(key_id, served.run_id, served.model_cid, PRICE, items)  # one batched request
    out["drain_per_s_batched"] = drain(served, ledger).per_s
    return {k: round(v, 1 if k.startswith("drain") else 4) for k, v in out.items()}


def wait_drained(ledger: Ledger, run_id: str, timeout_s: float = 600) -> tuple[int, float]:
    """(receipts pending now, seconds until the server's worker had attributed them all)."""
    pending, t0 = ledger.pending_count(run_id), time.perf_counter()
    while ledger.pending_count(run_id) and time.perf_counter() - t0 < timeout_s:
        time.sleep(0.05)
    if ledger.pending_count(run_id):
        raise SystemExit(f"the attribution worker left {ledger.pending_count(run_id)} receipts pending")
    return pending, time.perf_counter() - t0


def print_costs(costs: dict, drained: dict) -> None:
    print(f"attribution's cost, in process, one thread, ms per row (single / batch of {BATCH}):")
    for name in ("forward", "query_features", "split"):
        print(f"  {name:15s} {costs[f'{name}_ms_single']:.3f} / {costs[f'{name}_ms_batched']:.3f}")
    print(
        f"  drain (attribute pending receipts): {costs['drain_per_s_single']:.0f} singles/s, "
        f"{costs['drain_per_s_batched']:.0f} batched rows/s"
    )
    for what in ("singles", "batches"):
        n, s = drained[f"pending_after_{what}"], drained[f"drain_after_{what}_s"]
        print(f"  server's worker after the {what} load: {n} receipts pending, attributed {s:.2f} s later")


def hostile_body() -> object:
    """HOSTILE_BYTES of an (invalid) JSON body, a chunk at a time: never held whole by the sender."""
    yield b'{"inputs": [[0'
    block = b" " * HOSTILE_CHUNK
    for _ in range(HOSTILE_BYTES // HOSTILE_CHUNK):
        yield block


def send_hostile(url: str, secret: str, stop: threading.Event, statuses: dict[int, int]) -> None:
    """Until `stop`: 120 MiB bodies, declared or chunked, without a key or with one, in turn."""
    kinds = [(declared, key) for declared in (True, False) for key in (False, True)]
    i = 0
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            declared, key = kinds[i % len(kinds)]
            i += 1
            headers = {"content-type": "application/json"}
            if declared:
                headers["Content-Length"] = str(HOSTILE_BYTES + 14)
            if key:
                headers[API_KEY_HEADER] = secret
            try:
                status = client.post(url + "/v1/predict", content=hostile_body(), headers=headers).status_code
            except httpx.HTTPError:
                status = 0  # no response at all: counted apart
            statuses[status] = statuses.get(status, 0) + 1


def hostile_process(url: str, secret: str, ready, stop, out) -> None:
    """The hostile client: HOSTILE_SENDERS threads of send_hostile until `stop` (`ready` once the first
    body was answered); their statuses to `out`."""
    statuses: dict[int, int] = {}
    local = threading.Event()
    senders = [
        threading.Thread(target=send_hostile, args=(url, secret, local, statuses))
        for _ in range(HOSTILE_SENDERS)
    ]
    for t in senders:
        t.start()
    deadline = time.monotonic() + 60
    while not statuses and time.monotonic() < deadline:
        time.sleep(0.01)
    ready.set()
    stop.wait()
    local.set()
    for t in senders:
        t.join()
    out.put(statuses)


def hostile_load(url: str, pid: int, secret: str, bodies: list[dict]) -> dict:
    """Normal clients' singles in alternating calm and hostile rounds; their p50s, refusals, peak RSS."""
    calm: list[float] = []
    hostile: list[float] = []
    statuses: dict[int, int] = {}
    proc = psutil.Process(pid)
    baseline = peak = proc.memory_info().rss
    ctx = multiprocessing.get_context("spawn")
    for r in range(HOSTILE_ROUNDS):
        if r % 2:
            ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
            sender = ctx.Process(target=hostile_process, args=(url, secret, ready, stop, out))
            sender.start()
            if not ready.wait(120):
                raise SystemExit("the hostile client did not start sending in 120 s")
        lat = run_load([url], secret, bodies, HOSTILE_N)
        peak = max(peak, proc.memory_info().rss)
        if r % 2:
            stop.set()
            for status, n in out.get(timeout=120).items():
                statuses[status] = statuses.get(status, 0) + n
            sender.join()
        (hostile if r % 2 else calm).extend(lat[url])
        peak = max(peak, proc.memory_info().rss)
    return {
        "calm": calm,
        "hostile": hostile,
        "statuses": statuses,
        "rss_growth_mb": (peak - baseline) / 2**20,
    }


def print_hostile(h: dict) -> dict:
    c50, h50 = pct(h["calm"], 50), pct(h["hostile"], 50)
    refused = sum(n for s, n in h["statuses"].items() if s in (401, 413))
    print(
        f"hostile bodies: {HOSTILE_SENDERS} senders of {HOSTILE_BYTES >> 20} MiB bodies while normal clients "
        f"(concurrency {CONCURRENCY}) send singles, {HOSTILE_ROUNDS // 2} rounds of {HOSTILE_N} each way"
    )
    print(f"  normal clients calm:    p50 {c50:.2f} ms  p99 {pct(h['calm'], 99):.2f} ms")
    print(
        f"  normal clients hostile: p50 {h50:.2f} ms  p99 {pct(h['hostile'], 99):.2f} ms  "
        f"ratio p50 {h50 / c50:.2f}x"
    )
    print(
        f"  hostile bodies answered: {dict(sorted(h['statuses'].items()))} (0: no response); "
        f"server peak RSS growth {h['rss_growth_mb']:.1f} MiB"
    )
    return {
        "calm_p50_ms": round(c50, 3),
        "hostile_p50_ms": round(h50, 3),
        "hostile_p50_ratio": round(h50 / c50, 3),
        "hostile_refused": refused,
        "hostile_rss_growth_mb": round(h["rss_growth_mb"], 1),
    }


def request_inputs(run) -> list:
    """The sample run's test inputs as JSON `input` values: numbers, texts or base64 images."""
    if run.kind == "numeric":
        return run.X_test.tolist()
    if run.kind == "text":
        return list(run.inputs)
    return [{"image_base64": base64.b64encode(v).decode()} for v in run.inputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hostile-only", action="store_true", help="run only section 4 (hostile bodies)")
    parser.add_argument("--kind", choices=("tabular", "text", "image"), default="tabular",
                        help="the served run's input: numeric rows (an MLP), texts (the text-transformer "
                        "recipe) or PNGs (the image-cnn recipe)")
    parser.add_argument("--attribution", choices=("auto", "sync", "deferred"), default="auto",
                        help="server A's `caravan serve --attribution` (server B: off)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="caravan-serving-bench-"))
    with AnvilNode(config_path=home / "anvil.json", log_path=home / "anvil.log") as node:
        chain = Chain(node.rpc_url, account=Account.from_key(node.dev_keys[0]), chain_dir=home / "chain")
        chain.deploy()
        store = BlockStore(home / "blocks", fsync=False)
        run = build_sample_run(store, chain, n=400, kind="numeric" if args.kind == "tabular" else args.kind)
        served = load_run(chain, store, run.run_id)
        # the `caravan serve` children's settings: everything under `home`, as laid out above
        env = load_settings({"CARAVAN_HOME": str(home), "CARAVAN_RPC_URL": node.rpc_url}).environ()
        path = home / "ledger.sqlite"
        # a limit the load never reaches: 1e6 calls/s with a burst of 1e9 is a budget 1,000 s deep,
        # so a request delayed past a second between its clock reading and the ledger update
        # (p99 under this load is ~0.4 s, the tail longer) is never refused; at 1e9/s the
        # ledger's GCRA tolerance is burst x 1 ns = 1 s and a few such requests got a 429
        key_id, secret = Ledger(path).create_key("bench", balance=BALANCE, rate_per_s=1e6, burst=10**9)
        rows = request_inputs(run)
        costs = cost_split(served, run.X_test.tolist() if run.kind == "numeric" else run.inputs, home)
        ledger = Ledger(path)
        singles = [{"input": r} for r in rows]
        batches = [{"inputs": rows[:BATCH]}]
        if args.hostile_only:
            with ServeProcess(run.run_id, env, price=PRICE) as attr:
                run_load([attr.url], secret, singles, 50)  # warm-up
                print(json.dumps(print_hostile(hostile_load(attr.url, attr.pid, secret, singles))))
            return
        with (
            ServeProcess(run.run_id, env, price=PRICE, extra=("--attribution", args.attribution)) as attr,
            ServeProcess(run.run_id, env, price=PRICE, extra=("--attribution", "off")) as plain,
        ):
            urls = [attr.url, plain.url]
            run_load(urls, secret, singles, 50)  # warm-up
            wait_drained(ledger, run.run_id)
            rounds = rounds_of_singles(urls, secret, singles)
            drained = dict(zip(("pending_after_singles", "drain_after_singles_s"),
                               wait_drained(ledger, run.run_id), strict=True))
            batch = run_load(urls, secret, batches, N_BATCH_REQ)
            drained.update(zip(("pending_after_batches", "drain_after_batches_s"),
                               wait_drained(ledger, run.run_id), strict=True))
            hostile = hostile_load(attr.url, attr.pid, secret, singles)
        settle_s = settle_100k(chain, store, served, run, home)
        lost, duplicated = kill_under_load(run.run_id, env, key_id, secret, rows)

    a = [t for r in rounds for t in r[urls[0]]]
    p = [t for r in rounds for t in r[urls[1]]]
    rps = 2 * N_SINGLE / sum(r["_wall"][0] for r in rounds)
    round_ratios = [pct(r[urls[0]], 50) / pct(r[urls[1]], 50) for r in rounds]
    ratio = float(np.median(round_ratios))
    print(
        f"single inputs, concurrency {CONCURRENCY}, {N_SINGLE} per mode interleaved "
        f"in {ROUNDS} rounds: {rps:.0f} req/s"
    )
    print(f"  with attribution:    p50 {pct(a, 50):.2f} ms  p99 {pct(a, 99):.2f} ms")
    print(f"  without attribution: p50 {pct(p, 50):.2f} ms  p99 {pct(p, 99):.2f} ms")
    for i, (r, q) in enumerate(zip(rounds, round_ratios, strict=True)):
        print(
            f"  round {i + 1} ({N_SINGLE // ROUNDS} per mode): p50 with {pct(r[urls[0]], 50):.2f} ms, "
            f"without {pct(r[urls[1]], 50):.2f} ms, ratio {q:.2f}x"
        )
    print(
        f"  latency ratio with/without: p50 median of rounds {ratio:.2f}x "
        f"(min {min(round_ratios):.2f}x, max {max(round_ratios):.2f}x; "
        f"all rounds pooled {pct(a, 50) / pct(p, 50):.2f}x)  "
        f"p99 {pct(a, 99) / pct(p, 99):.2f}x (goal <= 1.3x)"
    )
    ba, bp = batch[urls[0]], batch[urls[1]]
    print(
        f"batches of {BATCH}, {N_BATCH_REQ} per mode: {2 * N_BATCH_REQ * BATCH / batch['_wall'][0]:.0f} "
        f"predictions/s total"
    )
    print(f"  with attribution:    p50 {pct(ba, 50):.1f} ms  p99 {pct(ba, 99):.1f} ms")
    print(
        f"  without attribution: p50 {pct(bp, 50):.1f} ms  p99 {pct(bp, 99):.1f} ms  "
        f"ratio p50 {pct(ba, 50) / pct(bp, 50):.2f}x"
    )
    print(f"settle an epoch of 100,000 receipts: {settle_s:.2f} s")
    print(f"SIGKILL mid-load and restart: lost {lost}, charged twice {duplicated}")
    hostile_keys = print_hostile(hostile)
    print_costs(costs, drained)
    print(
        json.dumps(
            {
                "kind": args.kind,
                "rps": round(rps, 1),
                "p50_ms": round(pct(a, 50), 3),
                "p99_ms": round(pct(a, 99), 3),
                "attribution_latency_ratio": round(ratio, 3),
                "settle_100k_s": round(settle_s, 3),
                "lost": lost,
                "duplicated": duplicated,
                **hostile_keys,
                "attribution": attribution_mode(args.attribution, served),
                **costs,
                **{k: round(v, 3) for k, v in drained.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
