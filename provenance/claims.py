"""Source claims: a provider dates its files on chain, from its own address, before handing them over.

Why: a run credits an exactly or nearly copied example to whoever registered it first, and pays
each provider at the address the operator's registry gives. Both are the operator's word unless
the provider said so first, where the operator cannot rewrite it. A claim is a seal (`source_seal`)
sent to the SourceClaims contract's `claimSources` with its file's bucket (`source_bucket`, 16 bits
that name no file): the chain's clock dates it, the sender is the address the file's pay must go
to, and the seal names no file until the file is published (nor any file of another sender's, so a
claim copied from the mempool gains nothing).

    claim_sources(chain, cids)              the provider, with its own key: a transaction per 400 files
    claims = source_claims(chain, cids)     {cid: {claimant: unix time}}, every claim made on chain
    problems = claim_problems(sources, claims, paid)   what an ingest record gets wrong about them
    problems, files = run_claim_problems(chain, lineage, weights, sealed)   the same for a run, as anchored

A private version's files are stored sealed, named by their ciphertext's CID, which no provider
claims: its provider claims the plaintext file, and each sealed file is held to the claims of its
plaintext's CID (`sealed_sources`, or the audit's opened contents) where a key opens it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

import pyarrow as pa
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from provenance.activities import INGEST
from provenance.chain import Chain, TxResult, checked_address
from provenance.errors import ChainError, NotDeployed
from provenance.records import Record, utc_time
from storage import (
    ContentStore,
    EncryptedStore,
    cid_for_bytes,
    is_sealed,
    open_sealed,
    public_store,
    sealed_key_id,
)

SEAL_DOMAIN = b"caravan/source/"
BUCKET_DOMAIN = b"caravan/source-bucket/"
SEALS_PER_TX = 400  # a new seal costs about 25k gas (a slot and an event): 10M gas a transaction


def source_seal(cid: str, claimant: str) -> bytes:
    """keccak256(abi.encodePacked("caravan/source/", cid, claimant)): what a claim of `cid` by
    `claimant` sends, and what an auditor who holds the file recomputes for each claimant on chain."""
    return _seal(SEAL_DOMAIN + cid.encode(), bytes.fromhex(checked_address(claimant)[2:]))


def _seal(domain_cid: bytes, claimant: bytes) -> bytes:
    return keccak(domain_cid + claimant)


def source_bucket(cid: str) -> int:
    """The first two bytes of keccak256(abi.encodePacked("caravan/source-bucket/", cid)): sent beside a
    claim's seal, they tell no one the file, and an auditor tests only the claims in a file's bucket."""
    return int.from_bytes(keccak(BUCKET_DOMAIN + cid.encode())[:2], "big")


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
    files = sorted(set(cids))
    seals = [source_seal(c, account) for c in files]
    known = chain.batch_call([chain.claims.functions.claimedAt(account, s) for s in seals])
    new = [(s, source_bucket(c)) for c, s, t in zip(files, seals, known, strict=True) if t == 0]
    if not new:
        return [TxResult("claim:" + keccak(b"".join(seals)).hex(), None, 0, None, True)]
    out = []
    for batch in (new[i : i + per_tx] for i in range(0, len(new), per_tx)):
        batch_seals, buckets = [s for s, _ in batch], [b for _, b in batch]
        action = "claim:" + keccak(b"".join(batch_seals)).hex()
        out.append(chain.send(action, chain.claims.functions.claimSources(batch_seals, buckets))[0])
    return out


def claims_deployed(chain: Chain) -> bool:
    """Whether this chain has the SourceClaims contract (a deployment made before it existed has not:
    nothing was claimed there, and its runs publish and verify as before)."""
    try:
        return chain.claims is not None
    except NotDeployed:
        return False


def source_claims(
    chain: Chain, cids: Iterable[str], *, before_block: int | None = None
) -> dict[str, dict[str, int]]:
    """Every claim on chain of each of these files (made in a block before `before_block`, if given):
    {cid: {claimant address: unix time}} (a file no one claimed is absent; none at all where the
    chain has no SourceClaims contract, `claims_deployed`). Seals are opaque, so the
    seal of each file by each claimant in its bucket (`source_bucket`) is recomputed and looked up
    among the `SourceClaimed` events (one eth_getLogs)."""
    if not claims_deployed(chain):
        return {}
    buckets: dict[int, dict[str, dict[bytes, int]]] = {}  # bucket -> claimant -> seal -> time
    for log in chain.logs(chain.claims.events.SourceClaimed):
        if before_block is not None and int(log["blockNumber"]) >= before_block:
            continue
        args = log["args"]
        claimant = to_checksum_address(args["claimant"])
        buckets.setdefault(int(args["bucket"]), {}).setdefault(claimant, {})[bytes(args["seal"])] = int(
            args["claimedAt"]
        )
    out: dict[str, dict[str, int]] = {}
    for cid in sorted(set(cids)):
        prefix = SEAL_DOMAIN + cid.encode()
        for claimant, seals in sorted(buckets.get(source_bucket(cid), {}).items()):
            when = seals.get(_seal(prefix, bytes.fromhex(claimant[2:])))
            if when is not None:
                out.setdefault(cid, {})[claimant] = when
    return out


def honoured(claims: Mapping[str, int], address: str | None, registered_at: str) -> str | None:
    """The time of `address`'s claim of a file if it was made by `registered_at` (when the operator
    took the file), else None: a claim made later could not have been known then."""
    when = claims.get(address) if address else None
    return claim_time(when) if when is not None and claim_time(when) <= registered_at else None


def claim_problems(
    sources: Sequence[Mapping],
    claims: Mapping[str, Mapping[str, int]],
    paid: Mapping[str, str],
) -> list[tuple[str, str]]:
    """What an ingest record's `source_files` get wrong about the claims on chain, as (CID, why).

    `paid`: each provider's payout address (the run's weights; the registry before there are any).
    `claims`: those made before the record was anchored on chain (all so far, before it is), by the
    CID each file is claimed as: its own, or a sealed file's `claimed_as` (its plaintext's).
    - A file recorded as claimed (`claimed_by`) is claimed on chain by that address at its
      `registered_at`, and its provider is paid there.
    - A file recorded as unclaimed was not claimed by its provider's address by its `registered_at`
      (else the record dates it by the operator's clock instead of the claim).
    - A claimed file pays its first claimant (those of the earliest claim, where several claimed it
      at once): its provider's address is one, or the record credits one with the same file, and the
      copy earns nothing beside it. So the first registrant is the chain's to say, whenever the
      operator dated a file: a claim made after that orders nothing among unclaimed files, but none
      made before the record was anchored lets the file's pay go elsewhere.
    """
    credited = {(_claimed_as(f), f.get("claimed_by") or paid.get(f.get("provider") or "")) for f in sources}
    out = []
    for f in sources:
        cid, when, who = f["cid"], f.get("registered_at") or "", f.get("claimed_by")
        on_chain, provider = claims.get(_claimed_as(f), {}), f.get("provider")
        address = paid.get(provider or "")
        if who and (who not in on_chain or claim_time(on_chain[who]) != when):
            seen = claim_time(on_chain[who]) if who in on_chain else "never"
            out.append((cid, f"recorded as claimed by {who} at {when}; the chain says {seen}"))
        elif who and address is not None and address != who:
            out.append((cid, f"claimed by {who}, but its provider {provider!r} is paid at {address}"))
        elif not who and address in on_chain and claim_time(on_chain[address]) <= when:
            at = claim_time(on_chain[address])
            out.append((cid, f"its provider's address {address} claimed it at {at}, but the record dates it "
                             "by the operator's clock"))
        elif on_chain:
            first = min(on_chain.values())
            firsts = sorted(a for a, t in on_chain.items() if t == first)
            if (who or address) not in firsts and not any((_claimed_as(f), a) in credited for a in firsts):
                whom = f"{provider!r}" if provider else "the providers its rows name"
                paid_at = f" (paid at {address})" if address else ""
                out.append((cid, f"claimed first by {firsts[0]} at {claim_time(first)}, yet credited to "
                                 f"{whom}{paid_at}"))
    return out


def _claimed_as(source: Mapping) -> str:
    """The CID a source file is claimed by: its own, or a sealed file's plaintext's (`claimed_as`)."""
    return source.get("claimed_as") or source["cid"]


def run_claim_problems(
    chain: Chain, lineage: Mapping[str, Record], weights: pa.Table | None,
    sealed: Mapping[str, str | None] | None = None,
) -> tuple[list[tuple[str, str]], list[Mapping]]:
    """The claim problems of a run (`claim_problems` over its ingest records' files, each provider paid
    where `weights` pays it), each record held to the claims made in blocks before the one that
    anchored it (every claim so far, before it is anchored), and the files checked: what `publish_run`
    refuses and `verify_run` fails. `sealed`: each sealed (private) file's plaintext CID, what its
    provider claimed, or None where no key opened it: such a file is not checked."""
    sealed = sealed or {}
    paid: dict[str, str] = {}
    if weights is not None:
        rows = weights.select(["contributor", "address", "role"]).to_pylist()
        paid = {r["contributor"]: r["address"] for r in rows if r["role"] == "provider"}
    problems: list[tuple[str, str]] = []
    checked: list[Mapping] = []
    for cid, record in sorted(lineage.items()):
        files = [{**f, "claimed_as": sealed[f["cid"]]} if f["cid"] in sealed else f
                 for f in source_files(record)]
        files = [f for f in files if f.get("claimed_as", f["cid"])]  # a sealed file no key opened: unchecked
        if not files:
            continue
        entry = chain.entry_of(cid)  # None: not anchored yet, so every claim so far counts
        claims = source_claims(chain, map(_claimed_as, files), before_block=entry and entry["block"])
        problems += claim_problems(files, claims, paid)
        checked += files
    return problems, checked


def sealed_sources(store: ContentStore, lineage: Mapping[str, Record]) -> dict[str, str | None]:
    """Each sealed source file the run's ingest records name: its plaintext's CID (v1, as `caravan claim`
    names the file), opened with the keys `store` holds (an `EncryptedStore`: a private run's
    publisher), or None where none of them sealed it (a key that fails it raises DecryptionError). A
    store without keys opens nothing, so nothing is read: its runs' files are taken as public."""
    if not isinstance(store, EncryptedStore):
        return {}
    plain, out = public_store(store), {}
    for record in lineage.values():
        for f in source_files(record):
            data = plain.get(f["cid"])
            if not is_sealed(data):
                continue
            out[f["cid"]] = None
            if any(k.key_id == sealed_key_id(data) for k in store.keys):
                plaintext = open_sealed(store.keys, data, what=f"source file {f['cid']}")
                out[f["cid"]] = cid_for_bytes(plaintext, cid_version=1)
    return out


def source_files(record: Record) -> list[Mapping]:
    """The source files an ingest record names (none for another record)."""
    files = record.params.get("source_files") or () if record.activity == INGEST else ()
    return [f for f in files if isinstance(f, Mapping)]
