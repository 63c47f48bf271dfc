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
    date_registrations(chain, [(cid, provider)])   the operator, with its key: {(cid, provider): unix time}

The operator dates its own registrations the same way (`registration_seal`, another domain, so a
registration claims nothing): a file no claim dates takes its registration's time on chain
(`dated_by`), which the operator cannot set earlier than it held the file.

A private version's files are stored sealed, named by their ciphertext's CID, which no provider
claims: its provider claims the plaintext file, and each sealed file is held to the claims of its
plaintext's CID (`sealed_sources`, or the audit's opened contents) where a key opens it.

A table that names image files by path (its `refs`) is claimed with them (`caravan claim
--image-field`): its own bytes hold the paths, not the images, so a claim of the table alone would
date images that could be put behind its paths later. It is dated by its provider's claims only where
they cover the table and every image it names (`file_claims`), and each image is held to the claims
made of it as a file of its own is.
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
REGISTRATION_DOMAIN = b"caravan/registered/"
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


def registration_seal(cid: str, provider: str | None, operator: str) -> bytes:
    """keccak256(abi.encodePacked("caravan/registered/", cid, "/", provider, operator)): what an operator
    sends when it registers a provider's file (`date_registrations`). No claim (`source_claims`
    recomputes claims' seals only): the chain's clock dates the registration, so the operator cannot
    date a file earlier than it held it, and the order of files no provider claimed is the chain's."""
    named = REGISTRATION_DOMAIN + cid.encode() + b"/" + (provider or "").encode()
    return _seal(named, bytes.fromhex(checked_address(operator)[2:]))


def claim_time(seconds: int) -> str:
    """A claim's block timestamp as a registration time (`provenance.utc_time`'s format)."""
    return utc_time(dt.datetime.fromtimestamp(seconds, dt.UTC))


def claim_sources(chain: Chain, cids: Sequence[str], *, per_tx: int = SEALS_PER_TX) -> list[TxResult]:
    """Claim these files (by CID) from the chain's account: the ones it has not claimed before, `per_tx`
    seals a transaction (a block's gas holds about a thousand); one skipped result when none is new
    (a claim keeps its first time)."""
    if not cids:
        raise ChainError("no files to claim: give the source files you will hand over")
    account = sending_account(chain, "claiming needs the provider's own key")
    files = sorted(set(cids))
    return send_seals(chain, [(source_seal(c, account), source_bucket(c)) for c in files], per_tx)[0]


def date_registrations(
    chain: Chain, files: Sequence[tuple[str, str | None]], *, per_tx: int = SEALS_PER_TX
) -> dict[tuple[str, str | None], int]:
    """Date these (CID, provider) registrations on chain from the chain's account (the operator's): each
    one's first registration seal (`registration_seal`), sent where it has none; their unix times."""
    account = sending_account(chain, "dating registrations needs the operator's key")
    keys = sorted(set(files), key=lambda k: (k[0], k[1] or ""))
    seals = [(registration_seal(c, p, account), source_bucket(c)) for c, p in keys]
    known = send_seals(chain, seals, per_tx)[1]
    sent = [k for k, t in zip(keys, known, strict=True) if t == 0]  # dated by the blocks just made
    times = dict(zip(sent, registration_times(chain, [(c, p, account) for c, p in sent]), strict=True))
    return {k: t or times[k] for k, t in zip(keys, known, strict=True)}


def registration_times(chain: Chain, registrations: Sequence[tuple[str, str | None, str]]) -> list[int]:
    """When each (CID, provider, operator) registration was first dated on chain (0: never)."""
    calls = [chain.claims.functions.claimedAt(o, registration_seal(c, p, o)) for c, p, o in registrations]
    return [int(t) for t in chain.batch_call(calls)]


def sending_account(chain: Chain, why: str) -> str:
    """The address `chain` sends from (its key's), or a ChainError saying `why` it needs one."""
    if chain.address is None:
        raise ChainError(f"{why}: set CARAVAN_PRIVATE_KEY or CARAVAN_KEYSTORE")
    return chain.address


def send_seals(
    chain: Chain, seals: Sequence[tuple[bytes, int]], per_tx: int
) -> tuple[list[TxResult], list[int]]:
    """`claimSources` for the seals (with their buckets) the chain's account has not sent before, `per_tx`
    a transaction (one skipped result when none is new); and each seal's time before (0: sent now)."""
    known = [int(t) for t in chain.batch_call([chain.claims.functions.claimedAt(chain.address, s)
                                               for s, _ in seals])]
    new = [(s, b) for (s, b), t in zip(seals, known, strict=True) if t == 0]
    if not new:
        return [TxResult("claim:" + keccak(b"".join(s for s, _ in seals)).hex(), None, 0, None, True)], known
    out = []
    for batch in (new[i : i + per_tx] for i in range(0, len(new), per_tx)):
        batch_seals, buckets = [s for s, _ in batch], [b for _, b in batch]
        action = "claim:" + keccak(b"".join(batch_seals)).hex()
        out.append(chain.send(action, chain.claims.functions.claimSources(batch_seals, buckets))[0])
    return out, known


def claims_deployed(chain: Chain) -> bool:
    """Whether this chain has the SourceClaims contract (a deployment made before it existed has not:
    nothing was claimed there, and its runs publish and verify as before)."""
    try:
        return chain.claims is not None
    except NotDeployed:
        return False


# SourceClaimed(address indexed claimant, bytes32 indexed seal, uint16 indexed bucket, uint64 claimedAt)
CLAIMED_TOPIC = keccak(b"SourceClaimed(address,bytes32,uint16,uint64)")


def claimed_seals(
    chain: Chain, claimants: Iterable[str] | None = None, *, before_block: int | None = None
) -> dict[str, dict[int, dict[bytes, int]]]:
    """Every seal sent to the SourceClaims contract (by `claimants` alone, if given; in a block before
    `before_block`, if given), by claimant and bucket: {address: {bucket: {seal: unix time}}}; none where
    the chain has no such contract. One eth_getLogs, read from each event's topics (claimant, seal,
    bucket) and data (its time) as the node sends them: decoding 12,000 of them through web3's ABI
    took 4.9 s, reading them so 0.14 s."""
    if not claims_deployed(chain):
        return {}
    named = None if claimants is None else {"0x" + bytes(12).hex() + a[2:].lower(): to_checksum_address(a)
                                            for a in claimants}
    if named is not None and not named:
        return {}
    topics = ["0x" + CLAIMED_TOPIC.hex(), None if named is None else sorted(named)]
    out: dict[str, dict[int, dict[bytes, int]]] = {}
    for log in chain.raw_logs(chain.claims.address, topics):
        if before_block is not None and int(log["blockNumber"], 16) >= before_block:
            continue
        _, claimant, seal, bucket = log["topics"]
        who = named[claimant.lower()] if named is not None else to_checksum_address("0x" + claimant[-40:])
        sent = out.setdefault(who, {}).setdefault(int(bucket, 16), {})
        sent.setdefault(bytes.fromhex(seal[2:]), int(log["data"], 16))  # a seal's first claim is its time
    return out


def source_claims(
    chain: Chain, cids: Iterable[str], *, before_block: int | None = None
) -> dict[str, dict[str, int]]:
    """Every claim on chain of each of these files (made in a block before `before_block`, if given):
    {cid: {claimant address: unix time}} (a file no one claimed is absent; none at all where the
    chain has no SourceClaims contract, `claims_deployed`). Seals are opaque, so the seal of each file
    by each claimant with a seal in its bucket (`source_bucket`) is recomputed and looked up
    (`claimed_seals`)."""
    in_bucket: dict[int, list[tuple[str, dict[bytes, int]]]] = {}  # bucket -> (claimant, its seals there)
    for claimant, by_bucket in sorted(claimed_seals(chain, before_block=before_block).items()):
        for bucket, sent in by_bucket.items():
            in_bucket.setdefault(bucket, []).append((claimant, sent))
    out: dict[str, dict[str, int]] = {}
    for cid in sorted(set(cids)):
        prefix = SEAL_DOMAIN + cid.encode()
        for claimant, sent in in_bucket.get(source_bucket(cid), ()):
            when = sent.get(_seal(prefix, bytes.fromhex(claimant[2:])))
            if when is not None:
                out.setdefault(cid, {})[claimant] = when
    return out


def honoured(claims: Mapping[str, int], address: str | None, registered_at: str) -> str | None:
    """The time of `address`'s claim of a file if it was made by `registered_at` (when the operator
    took the file), else None: a claim made later could not have been known then."""
    when = claims.get(address) if address else None
    return claim_time(when) if when is not None and claim_time(when) <= registered_at else None


def file_claims(source: Mapping, claims: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Who claimed a source file whole, and when: each address that claimed the file and every image
    it names by path (`refs`), at the latest of those claims ({address: unix time}). `claims` is keyed
    by the CID each is claimed as (`with_claimed_as`)."""
    parts = [claims.get(_claimed_as(m), {}) for m in members(source)]
    whole = set(parts[0]).intersection(*parts[1:])
    return {a: max(p[a] for p in parts) for a in sorted(whole)}


def claim_problems(
    sources: Sequence[Mapping],
    claims: Mapping[str, Mapping[str, int]],
    paid: Mapping[str, str],
) -> list[tuple[str, str]]:
    """What an ingest record's `source_files` get wrong about the claims on chain, as (CID, why).

    `paid`: each provider's payout address (the run's weights; the registry before there are any).
    `claims`: those made before the record was anchored on chain (all so far, before it is), by the
    CID each file is claimed as: its own, or a sealed file's `claimed_as` (its plaintext's). A table
    of image paths counts as claimed by an address that claimed it and every image it names, at the
    latest of those claims (`file_claims`).
    - A file recorded as claimed (`claimed_by`) is claimed on chain by that address at its
      `registered_at`, and its provider is paid there.
    - A file recorded as unclaimed was not claimed by its provider's address by its `registered_at`
      (else the record dates it by the operator's clock instead of the claim).
    - A claimed file, or image a table names, pays its first claimant (those of the earliest claim,
      where several claimed it at once): its provider's address is one, or the record credits one
      with the same file, and the copy earns nothing beside it. So the first registrant is the chain's
      to say, whenever the operator dated a file: a claim made after that orders nothing among
      unclaimed files, but none made before the record was anchored lets the file's pay go elsewhere.
    """
    credited = {(_claimed_as(m), f.get("claimed_by") or paid.get(f.get("provider") or ""))
                for f in sources for m in members(f)}
    out = []
    for f in sources:
        cid, when, who = f["cid"], f.get("registered_at") or "", f.get("claimed_by")
        on_chain, provider = file_claims(f, claims), f.get("provider")
        address = paid.get(provider or "")
        whole = " with every image it names" if f.get("refs") else ""
        if who and (who not in on_chain or claim_time(on_chain[who]) != when):
            seen = claim_time(on_chain[who]) if who in on_chain else "never"
            out.append((cid, f"recorded as claimed{whole} by {who} at {when}; the chain says {seen}"))
        elif who and address is not None and address != who:
            out.append((cid, f"claimed by {who}, but its provider {provider!r} is paid at {address}"))
        elif not who and address in on_chain and claim_time(on_chain[address]) <= when:
            at = claim_time(on_chain[address])
            out.append((cid, f"its provider's address {address} claimed it{whole} at {at}, but the record "
                             "dates it by the operator's clock"))
        else:
            out += [(cid, why) for why in _claimed_first_elsewhere(f, who, address, claims, credited)]
    return out


def _claimed_first_elsewhere(
    source: Mapping, who: str | None, address: str | None, claims: Mapping[str, Mapping[str, int]],
    credited: set[tuple[str, str]],
) -> list[str]:
    """Why `source` (or an image it names) is someone else's: each member first claimed by addresses
    neither its claimant (`who`, else its provider's `address`) nor credited with the same file
    elsewhere in the record."""
    out = []
    for m in members(source):
        on_chain = claims.get(_claimed_as(m), {})
        if not on_chain:
            continue
        first = min(on_chain.values())
        firsts = sorted(a for a, t in on_chain.items() if t == first)
        if (who or address) in firsts or any((_claimed_as(m), a) in credited for a in firsts):
            continue
        provider = source.get("provider")
        whom = f"{provider!r}" if provider else "the providers its rows name"
        paid_at = f" (paid at {address})" if address else ""
        what = f"its image {m['name']!r} " if m is not source else ""
        at = claim_time(first)
        out.append(f"{what}claimed first by {firsts[0]} at {at}, yet credited to {whom}{paid_at}")
    return out


def registration_problems(
    sources: Sequence[Mapping], registered: Mapping[tuple[str, str | None, str], int]
) -> list[tuple[str, str]]:
    """Each file recorded as registered on chain (`dated_by`: the operator's address) that the chain did not
    first date at its `registered_at`: `registered` maps (CID, provider, operator) to that first time."""
    out = []
    for f in sources:
        operator, when = f.get("dated_by"), f.get("registered_at") or ""
        if not operator:
            continue
        first = registered.get((f["cid"], f.get("provider"), operator), 0)
        seen = claim_time(first) if first else "never"
        if seen != when:
            out.append((f["cid"], f"recorded as registered by {operator} at {when}; the chain dates that "
                                  f"registration {seen}"))
    return out


def members(source: Mapping) -> list[Mapping]:
    """A source file and the image files it names by path (`refs`): what its provider claims."""
    return [source, *(source.get("refs") or ())]


def with_claimed_as(source: Mapping, plaintexts: Sequence[str | None]) -> dict:
    """`source` with the CID each member is claimed as (`claimed_as`): `plaintexts`, the file's then its
    refs' in order (a sealed member's plaintext CID; None where no key opened it)."""
    refs = source.get("refs")
    out = {**source, "claimed_as": plaintexts[0]}
    if refs:
        out["refs"] = [{**r, "claimed_as": c} for r, c in zip(refs, plaintexts[1:], strict=True)]
    return out


def _claimed_as(member: Mapping) -> str:
    """The CID a source file or image is claimed by: its own, or a sealed one's plaintext's (`claimed_as`)."""
    return member.get("claimed_as") or member["cid"]


def run_claim_problems(
    chain: Chain, lineage: Mapping[str, Record], weights: pa.Table | None,
    sealed: Mapping[str, str | None] | None = None,
) -> tuple[list[tuple[str, str]], list[Mapping]]:
    """The claim problems of a run (`claim_problems` over its ingest records' files, each provider paid
    where `weights` pays it), each record held to the claims made in blocks before the one that
    anchored it (every claim so far, before it is anchored), and the files checked: what `publish_run`
    refuses and `verify_run` fails; a file the operator dated by its registration on chain (`dated_by`)
    is held to that registration's time (`registration_problems`). `sealed`: each sealed (private)
    file's plaintext CID (and each sealed image's a table names), what its provider claimed, or None
    where no key opened it: such a file is not checked against claims."""
    sealed = sealed or {}
    paid: dict[str, str] = {}
    if weights is not None:
        rows = weights.select(["contributor", "address", "role"]).to_pylist()
        paid = {r["contributor"]: r["address"] for r in rows if r["role"] == "provider"}
    problems: list[tuple[str, str]] = []
    checked: list[Mapping] = []
    for cid, record in sorted(lineage.items()):
        sources = source_files(record)
        dated = [(f["cid"], f.get("provider"), f["dated_by"]) for f in sources if f.get("dated_by")]
        if dated:  # the operator's registrations, by the stored CID: no key needed
            times = registration_times(chain, dated) if claims_deployed(chain) else [0] * len(dated)
            problems += registration_problems(sources, dict(zip(dated, times, strict=True)))
        files = [with_claimed_as(f, [sealed.get(m["cid"], m["cid"]) for m in members(f)]) for f in sources]
        files = [f for f in files if all(m["claimed_as"] for m in members(f))]  # sealed, no key: unchecked
        if not files:
            continue
        entry = chain.entry_of(cid)  # None: not anchored yet, so every claim so far counts
        claimed = (_claimed_as(m) for f in files for m in members(f))
        claims = source_claims(chain, claimed, before_block=entry and entry["block"])
        problems += claim_problems(files, claims, paid)
        checked += files
    return problems, checked


def sealed_sources(store: ContentStore, lineage: Mapping[str, Record]) -> dict[str, str | None]:
    """Each sealed source file (or image a table names) the run's ingest records name: its plaintext's
    CID (v1, as `caravan claim` names the file), opened with the keys `store` holds (an
    `EncryptedStore`: a private run's publisher), or None where none of them sealed it (a key that
    fails it raises DecryptionError). A store without keys opens nothing, so nothing is read: its runs'
    files are taken as public."""
    if not isinstance(store, EncryptedStore):
        return {}
    plain, out = public_store(store), {}
    for cid in sorted(source_cids(lineage)):
        data = plain.get(cid)
        if not is_sealed(data):
            continue
        out[cid] = None
        if any(k.key_id == sealed_key_id(data) for k in store.keys):
            plaintext = open_sealed(store.keys, data, what=f"source file {cid}")
            out[cid] = cid_for_bytes(plaintext, cid_version=1)
    return out


def source_cids(lineage: Mapping[str, Record], *, images_only: bool = False) -> set[str]:
    """Every source file and image a table names, by the CID stored, over a run's ingest records (with
    `images_only`, the images alone: no record names them as inputs)."""
    return {m["cid"] for r in lineage.values() for f in source_files(r) for m in members(f)[images_only:]}


def source_files(record: Record) -> list[Mapping]:
    """The source files an ingest record names (none for another record)."""
    files = record.params.get("source_files") or () if record.activity == INGEST else ()
    return [f for f in files if isinstance(f, Mapping)]

