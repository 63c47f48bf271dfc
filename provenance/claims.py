"""Source claims: a provider dates its files on chain, from its own address, before handing them over.

Why: a run credits an exactly or nearly copied example to whoever registered it first, and pays
each provider at the address the operator's registry gives. Both are the operator's word unless
the provider said so first, where the operator cannot rewrite it. A claim is a seal (`source_seal`)
sent to the registry's `claimSources`: the chain's clock dates it, the sender is the address the
file's pay must go to, and the seal names no file until the file is published (nor any file of
another sender's, so a claim copied from the mempool gains nothing).

    claim_sources(chain, cids)              the provider, with its own key: a transaction per 400 files
    claims = source_claims(chain, cids)     {cid: {claimant: unix time}}, every claim made on chain
    problems = claim_problems(sources, claims, paid)   what an ingest record gets wrong about them
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from provenance.chain import Chain, TxResult, checked_address
from provenance.errors import ChainError
from provenance.records import utc_time

SEAL_DOMAIN = b"caravan/source/"
SEALS_PER_TX = 400  # a new seal costs about 25k gas (a slot and an event): 10M gas a transaction


def source_seal(cid: str, claimant: str) -> bytes:
    """keccak256(abi.encodePacked("caravan/source/", cid, claimant)): what a claim of `cid` by
    `claimant` sends, and what an auditor who holds the file recomputes for each claimant on chain."""
    return keccak(SEAL_DOMAIN + cid.encode() + bytes.fromhex(checked_address(claimant)[2:]))


def claim_time(seconds: int) -> str:
    """A claim's block timestamp as a registration time (`provenance.utc_time`'s format)."""
    return utc_time(dt.datetime.fromtimestamp(seconds, dt.UTC))


def claim_sources(chain: Chain, cids: Sequence[str], *, per_tx: int = SEALS_PER_TX) -> list[TxResult]:
    """Claim these files (by CID) from the chain's account: the ones it has not claimed before, `per_tx`
    seals a transaction (a block's gas holds about a thousand); one skipped result when none is new
    (a claim keeps its first time)."""
    if not cids:
        raise ChainError("no files to claim: give the source files you will hand over")
    account = chain.address
    if account is None:
        raise ChainError("claiming needs the provider's own key: set CARAVAN_PRIVATE_KEY or CARAVAN_KEYSTORE")
    seals = [source_seal(c, account) for c in sorted(set(cids))]
    known = chain.batch_call([chain.registry.functions.claimedAt(account, s) for s in seals])
    new = [s for s, t in zip(seals, known, strict=True) if t == 0]
    if not new:
        return [TxResult("claim:" + keccak(b"".join(seals)).hex(), None, 0, None, True)]
    batches = [new[i : i + per_tx] for i in range(0, len(new), per_tx)]
    return [chain.send("claim:" + keccak(b"".join(b)).hex(), chain.registry.functions.claimSources(b))[0]
            for b in batches]


def source_claims(chain: Chain, cids: Iterable[str]) -> dict[str, dict[str, int]]:
    """Every claim on chain of each of these files: {cid: {claimant address: unix time}} (a file no
    one claimed is absent). Seals are opaque, so each claimant's seal of every CID is recomputed and
    looked up among that claimant's `SourceClaimed` events (one eth_getLogs)."""
    by_claimant: dict[str, dict[bytes, int]] = {}
    for log in chain.logs(chain.registry.events.SourceClaimed):
        args = log["args"]
        by_claimant.setdefault(to_checksum_address(args["claimant"]), {})[bytes(args["seal"])] = int(
            args["claimedAt"]
        )
    out: dict[str, dict[str, int]] = {}
    for cid in sorted(set(cids)):
        for claimant, seals in sorted(by_claimant.items()):
            when = seals.get(source_seal(cid, claimant))
            if when is not None:
                out.setdefault(cid, {})[claimant] = when
    return out


def honoured(claims: Mapping[str, int], address: str | None, registered_at: str) -> str | None:
    """The time of `address`'s claim of a file if it was made by `registered_at` (when the operator
    took the file), else None: a claim made later could not have been known then."""
    when = claims.get(address) if address else None
    return claim_time(when) if when is not None and claim_time(when) <= registered_at else None


def claim_problems(
    sources: Sequence[Mapping], claims: Mapping[str, Mapping[str, int]], paid: Mapping[str, str]
) -> list[tuple[str, str]]:
    """What an ingest record's `source_files` get wrong about the claims on chain, as (CID, why).

    `paid`: each provider's payout address in the run's weights. A file recorded as claimed
    (`claimed_by`) must be claimed on chain by that address at its `registered_at`, and its provider
    paid there. A file recorded as unclaimed must have no claim made by its `registered_at`: not by
    its provider's address (the record would have dated it by the operator's clock), and not by
    anyone else unless the record credits that claimant with the same file (a copy, which earns
    nothing beside its claimed original).
    """
    claimed_by = {(f["cid"], f["claimed_by"]) for f in sources if f.get("claimed_by")}
    out = []
    for f in sources:
        cid, when, who = f["cid"], f.get("registered_at") or "", f.get("claimed_by")
        on_chain, address = claims.get(cid, {}), paid.get(f.get("provider") or "")
        if who:
            if who not in on_chain or claim_time(on_chain[who]) != when:
                seen = claim_time(on_chain[who]) if who in on_chain else "never"
                out.append((cid, f"recorded as claimed by {who} at {when}; the chain says {seen}"))
            elif address is not None and address != who:
                provider = f.get("provider")
                out.append((cid, f"claimed by {who}, but its provider {provider!r} is paid at {address}"))
            continue
        early = {a: t for a, t in on_chain.items() if claim_time(t) <= when}
        if address in early:
            out.append((cid, f"its provider's address {address} claimed it at {claim_time(early[address])}, "
                             "but the record dates it by the operator's clock"))
        elif early and not any((cid, a) in claimed_by for a in early):
            first = min(early, key=lambda a: (early[a], a))
            out.append((cid, f"claimed by {first} at {claim_time(early[first])} before it was registered, "
                             f"yet credited to {f.get('provider')!r}"
                             + (f" (paid at {address})" if address else "")))
    return out
