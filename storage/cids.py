"""CID parsing, printing and block checks, on top of the maintained `multiformats` package."""

from __future__ import annotations

import hashlib

from multiformats import CID

from storage.errors import InvalidCID

DAG_PB = 0x70
RAW = 0x55
SHA2_256 = 0x12
_V0_PREFIX = b"\x12\x20"  # multihash header of a sha2-256 digest: a CIDv0 is just this + digest


def parse_cid(value: str | bytes | CID) -> CID:
    """Decode a CID from its string or binary form; only sha2-256 CIDs are accepted."""
    if isinstance(value, CID):
        cid = value
    else:
        try:
            cid = CID.decode(value.strip() if isinstance(value, str) else bytes(value))
        except Exception as exc:  # multiformats raises KeyError/ValueError subclasses
            shown = value if isinstance(value, str) else bytes(value).hex()
            raise InvalidCID(
                f"{shown!r} is not a valid CID ({exc}); "
                "pass a CID such as the one `caravan store add` printed"
            ) from None
    if cid.hashfun.code != SHA2_256:
        raise InvalidCID(f"CID {cid} uses hash {cid.hashfun.name}; this store only handles sha2-256 CIDs")
    return cid


def is_cid(value: str) -> bool:
    """Whether `value` reads as a CID this store handles (e.g. to tell a CID from another reference)."""
    try:
        parse_cid(value)
    except (InvalidCID, TypeError, ValueError):
        return False
    return True


def cid_to_str(cid: CID) -> str:
    """Kubo's printing: CIDv0 in base58btc (Qm...), CIDv1 in base32 (baf...)."""
    return str(cid if cid.version == 0 else cid.set(base="base32"))


def cid_bytes_to_str(raw: bytes) -> str:
    """Print a binary CID the way Kubo does."""
    return cid_to_str(CID.decode(raw))


def block_key(cid: CID) -> str:
    """A stable file name for a block: its CIDv1 base32 form (a CIDv0 names the same dag-pb block)."""
    return str(cid.set(version=1, base="base32")) if cid.version == 0 else str(cid.set(base="base32"))


def block_matches(cid: CID, data: bytes | memoryview) -> bool:
    """True when `data` hashes to the digest inside `cid`."""
    return hashlib.sha256(data).digest() == cid.raw_digest


def make_cid_bytes(version: int, codec: int, digest: bytes) -> bytes:
    """Binary CID for a sha2-256 digest, built without object churn (hot path of the importer)."""
    if version == 0:
        return _V0_PREFIX + digest
    return bytes((1, codec)) + _V0_PREFIX + digest
