"""Deferred attribution: pending receipts drained in batches, each filled once with its own split.

A prediction served with deferred attribution is answered and charged at once: its receipt's split
is "pending" and the ledger holds its input (serving/ledger.py). `drain` takes the oldest pending
requests of a run, computes each request's attribution with `ServedRun.attribute_request` (the
synchronous path's calls on the same rows, so the same bps) and writes every split and amount, and
deletes the inputs, in one ledger transaction per batch. A fill only applies to a receipt still
pending, so two drainers (the server's worker and a `caravan settle`) never pay a receipt twice, and
a drainer killed mid-batch leaves its batch pending, to be attributed again from the same inputs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from serving.errors import LedgerError, ServingError
from serving.fees import split_price
from serving.ledger import SPLIT_QUERY, SPLIT_RUN, Fill, Ledger, PendingInput
from serving.run import ServedRun


@dataclass(frozen=True)
class Drained:
    """What one `drain` did: receipts filled (by this drainer), requests attributed, seconds spent."""

    receipts: int
    requests: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.receipts / self.seconds if self.seconds > 0 else 0.0


def fills(run: ServedRun, pending: Sequence[PendingInput]) -> list[Fill]:
    """Each pending receipt's final split, computed request by request from its stored input."""
    groups: dict[str, list[PendingInput]] = {}
    for p in pending:
        if hashlib.sha256(p.payload).hexdigest() != p.input_hash:
            raise LedgerError(f"receipt {p.receipt_id}: its stored input does not hash to its input_hash")
        groups.setdefault(p.request_id, []).append(p)
    out = []
    for rows in groups.values():
        splits = run.attribute_request([p.payload for p in rows], [p.label for p in rows])
        for p, bps in zip(rows, splits, strict=True):
            paid = run.run_bps if bps is None else bps
            split = SPLIT_RUN if bps is None else SPLIT_QUERY
            out.append(Fill(p.receipt_id, split, paid, tuple(split_price(p.price, paid))))
    return out


def drain(run: ServedRun, ledger: Ledger, *, requests: int = 64) -> Drained:
    """Attribute every receipt of ``run`` pending when called (and any arriving meanwhile), ``requests``
    requests per ledger transaction."""
    t0 = time.perf_counter()
    filled = n_requests = 0
    while True:
        batch = ledger.pending(run.run_id, requests)
        if not batch:
            return Drained(filled, n_requests, time.perf_counter() - t0)
        filled += ledger.attribute(fills(run, batch))
        n_requests += len({p.request_id for p in batch})


def follow(
    run: ServedRun,
    ledger: Ledger,
    stopped: Callable[[], bool],
    *,
    poll_s: float = 0.2,
    requests: int = 64,
    report: Callable[[Drained], None] | None = None,
    on_error: Callable[[ServingError], None] | None = None,
    retry_s: float = 5.0,
) -> None:
    """`drain` whenever receipts are pending, polling every ``poll_s`` seconds until ``stopped()``:
    the loop of the server's attribution worker. ``report`` hears of every drain that filled some;
    with ``on_error`` a drain that fails is reported and retried after ``retry_s`` (the receipts stay
    pending: settlement refuses or drains them itself), else it raises."""
    while not stopped():
        try:
            done = drain(run, ledger, requests=requests)
        except ServingError as exc:
            if on_error is None:
                raise
            on_error(exc)
            time.sleep(retry_s)
            continue
        if done.receipts and report is not None:
            report(done)
        if not done.requests:
            time.sleep(poll_s)
