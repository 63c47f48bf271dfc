"""Deferred attribution: pending receipts drained in batches, each filled once with its own split.

A prediction served with deferred attribution is answered and charged at once: its receipt's split
is "pending" and the ledger holds its input (serving/ledger.py). `drain` takes the oldest pending
requests of a run, computes each request's attribution with `ServedRun.attribute_request` (the
synchronous path's calls on the same rows, so the same bps) and writes every split and amount, and
deletes the inputs, in one ledger transaction per batch. A fill only applies to a receipt still
pending, so two drainers (the server's worker and a `caravan settle`) never pay a receipt twice, and
a drainer killed mid-batch leaves its batch pending, to be attributed again from the same inputs.

A request whose stored inputs cannot be attributed (an input that no longer hashes to its receipt's
input_hash, a label the run does not know, bytes the run cannot decode) is filled with the run's
weights, as the synchronous path pays a prediction without a per-prediction split, and named in
``Drained.fallbacks``: it is paid, and never holds up the receipts behind it. A sealed input the
ledger cannot open (no input key, or another one) is not: the drain stops with an error naming the
key and fills nothing, since a key misconfigured must not turn per-prediction splits into run splits
for good.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from serving.errors import LedgerError, ServingError
from serving.fees import split_price
from serving.ledger import SPLIT_QUERY, SPLIT_RUN, Fill, Ledger, PendingInput
from serving.run import Bps, ServedRun


@dataclass(frozen=True)
class Drained:
    """What one `drain` did: receipts filled (by this drainer), requests attributed, seconds spent."""

    receipts: int
    requests: int
    seconds: float
    fallbacks: tuple[str, ...] = ()  # "receipt <id>: <why>", each filled with the run's weights

    @property
    def per_s(self) -> float:
        """Receipts filled per second (0.0 if no time passed): the drain rate the load benchmark reports."""
        return self.receipts / self.seconds if self.seconds > 0 else 0.0


def fills(run: ServedRun, pending: Sequence[PendingInput]) -> tuple[list[Fill], list[str]]:
    """Each pending receipt's final split, computed request by request from its stored input; and a
    line per receipt of a request that could not be attributed (filled with the run's weights).
    LedgerError, nothing filled, where a sealed input does not open (the ledger's input key)."""
    unopened = [p for p in pending if p.problem is not None]
    if unopened:
        raise LedgerError(f"receipt {unopened[0].receipt_id}: {unopened[0].problem} ({len(unopened)} stored "
                          "input(s) unopened; nothing was attributed)")
    groups: dict[str, list[PendingInput]] = {}
    for p in pending:
        groups.setdefault(p.request_id, []).append(p)
    out, fallbacks = [], []
    for rows in groups.values():
        try:
            splits = request_splits(run, rows)
        except (ServingError, ValueError) as exc:  # ValueError: attribution's InputError, bad UTF-8
            splits = [None] * len(rows)
            fallbacks += [f"receipt {p.receipt_id}: its request could not be attributed ({exc}); paid by "
                          "the run's weights" for p in rows]
        for p, bps in zip(rows, splits, strict=True):
            paid = run.run_bps if bps is None else bps
            split = SPLIT_RUN if bps is None else SPLIT_QUERY
            out.append(Fill(p.receipt_id, split, paid, tuple(split_price(p.price, paid))))
    return out, fallbacks


def request_splits(run: ServedRun, rows: Sequence[PendingInput]) -> list[Bps | None]:
    """One request's splits from its stored inputs, after checking each against its input_hash."""
    for p in rows:
        if hashlib.sha256(p.payload).hexdigest() != p.input_hash:
            raise LedgerError(f"the stored input of receipt {p.receipt_id} does not hash to its input_hash")
    return run.attribute_request([p.payload for p in rows], [p.label for p in rows])


def drain(run: ServedRun, ledger: Ledger, *, requests: int = 64) -> Drained:
    """Attribute every receipt of ``run`` pending when called (and any arriving meanwhile), ``requests``
    requests per ledger transaction."""
    t0 = time.perf_counter()
    filled = n_requests = 0
    fallbacks: list[str] = []
    while True:
        batch = ledger.pending(run.run_id, requests)
        if not batch:
            return Drained(filled, n_requests, time.perf_counter() - t0, tuple(fallbacks))
        done, failed = fills(run, batch)
        filled += ledger.attribute(done)
        fallbacks += failed
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
    the loop of the server's attribution worker. ``report`` hears of every drain that filled some
    (its ``fallbacks`` included);
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
