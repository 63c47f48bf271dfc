"""CAR v1 (Content Addressable aRchive): what `ipfs dag import/export` and pinning services take.

Layout: varint(len) + dag-cbor header `{"roots": [CID...], "version": 1}`, then sections
`varint(len(cid) + len(block)) + cid + block`. The header is dag-cbor via the maintained
`dag-cbor` package; sections are framed here. Reading verifies every block's hash.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

import dag_cbor
from multiformats import CID, varint

from storage.cids import SHA2_256, block_matches, cid_to_str
from storage.errors import CarError

_MAX_HEADER = 1 << 20
_MAX_SECTION = 8 << 20  # well above the largest block any UnixFS importer makes


def car_header(roots: Sequence[CID]) -> bytes:
    """The varint-framed dag-cbor header naming the roots."""
    header = dag_cbor.encode({"roots": list(roots), "version": 1})
    return varint.encode(len(header)) + header


def write_car(out: BinaryIO, roots: Sequence[CID], blocks: Iterable[tuple[CID, bytes]]) -> int:
    """Write a CAR v1 stream; returns the number of blocks written."""
    out.write(car_header(roots))
    count = 0
    for cid, block in blocks:
        raw = bytes(cid)
        out.write(varint.encode(len(raw) + len(block)))
        out.write(raw)
        out.write(block)
        count += 1
    return count


def _read_varint(stream: BinaryIO, what: str, *, at_eof_ok: bool = False) -> int | None:
    value = shift = 0
    first = True
    while True:
        byte = stream.read(1)
        if not byte:
            if first and at_eof_ok:
                return None
            raise CarError(f"the CAR is truncated inside {what}; re-export or re-download it")
        first = False
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise CarError(f"the CAR has an oversized varint in {what}; it is not a CAR v1 file")


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise CarError(
            f"the CAR is truncated inside {what} ({len(data)} of {size} bytes); re-export or re-download it"
        )
    return data


def _split_section(section: bytes, index: int) -> tuple[CID, bytes]:
    """Split a section into its CID and block; a CIDv0 is a bare 34-byte sha2-256 multihash."""
    try:
        if section[:2] == b"\x12\x20":
            size = 34
        else:
            pos = 0
            for _ in range(3):  # version, codec, multihash code
                _, n, _ = varint.decode_raw(section[pos:])
                pos += n
            digest_len, n, _ = varint.decode_raw(section[pos:])
            size = pos + n + digest_len
        cid = CID.decode(section[:size])
    except Exception as exc:
        raise CarError(f"section {index} of the CAR does not start with a valid CID ({exc})") from None
    return cid, section[size:]


def read_header(stream: BinaryIO) -> list[CID]:
    """Read and check the CAR v1 header; return its roots."""
    size = _read_varint(stream, "the header length")
    if not size or size > _MAX_HEADER:
        raise CarError(f"the CAR header length {size} is not plausible; this is not a CAR v1 file")
    raw = stream.read(size)
    if raw and not 0xA0 <= raw[0] <= 0xBF:  # a CAR v1 header is a CBOR map
        raise CarError("the file does not start with a dag-cbor CAR header; this is not a CAR v1 file")
    if len(raw) != size:
        raise CarError(f"the CAR is truncated inside the header ({len(raw)} of {size} bytes); re-export it")
    try:
        header = dag_cbor.decode(raw)
    except Exception as exc:
        raise CarError(f"the CAR header is not valid dag-cbor ({exc}); this is not a CAR v1 file") from None
    if not isinstance(header, dict) or header.get("version") != 1:
        raise CarError("the CAR header does not say version 1; only CAR v1 files are supported")
    roots = header.get("roots")
    if not isinstance(roots, list) or not roots or not all(isinstance(r, CID) for r in roots):
        raise CarError("the CAR header has no list of root CIDs; re-export it with its roots")
    return roots


def iter_sections(stream: BinaryIO) -> Iterator[tuple[CID, bytes]]:
    """Yield (CID, block) for each section after the header, checking every block's hash."""
    index = 0
    while True:
        size = _read_varint(stream, f"the length of section {index}", at_eof_ok=True)
        if size is None:
            return
        if not 0 < size <= _MAX_SECTION:
            raise CarError(f"section {index} of the CAR claims {size} bytes; the file is corrupt")
        cid, block = _split_section(_read_exact(stream, size, f"section {index}"), index)
        if cid.hashfun.code != SHA2_256:
            raise CarError(
                f"block {cid} in the CAR uses {cid.hashfun.name}; only sha2-256 blocks are supported"
            )
        if not block_matches(cid, block):
            raise CarError(f"block {cid_to_str(cid)} in the CAR fails its hash check; the CAR is corrupt")
        yield cid, block
        index += 1
