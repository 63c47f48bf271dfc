"""Contributors registry: contributor id (Label Studio user email, provider name) -> EVM address.

A file the operator keeps (YAML mapping or CSV with `contributor,address`), never personal
data on chain: only the checksummed address leaves this room. Anyone without an address is
named in one error, never dropped and never paid to a default.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from eth_utils import is_address, to_checksum_address

from labeling.errors import ContributorsError, MissingAddressError


@dataclass(frozen=True)
class ContributorsRegistry:
    """The registry read from `source`: every contributor id with its checksummed address. The pipeline
    and `caravan labels check-addresses` load it and look contributors up (`require`)."""

    addresses: Mapping[str, str]  # contributor id -> checksummed address
    source: str = "<memory>"

    @classmethod
    def load(cls, path: str | Path) -> ContributorsRegistry:
        """The registry in `path`: CSV (`.csv`) or YAML; ContributorsError naming what is wrong."""
        path = Path(path)
        if not path.exists():
            raise ContributorsError(
                f"contributors registry {path} does not exist; create it "
                "(CSV `contributor,address` or a YAML mapping)"
            )
        text = path.read_text()
        pairs = _read_csv(text, path) if path.suffix.lower() == ".csv" else _read_yaml(text, path)
        return cls.from_pairs(pairs, source=str(path))

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], source: str = "<memory>") -> ContributorsRegistry:
        """A registry of (contributor id, address) pairs, each address checked and checksummed; an empty
        id, a repeated one or a bad address is a ContributorsError naming `source`."""
        out: dict[str, str] = {}
        for n, (cid, addr) in enumerate(pairs, start=1):
            cid = str(cid).strip()
            if not cid:
                raise ContributorsError(f"{source}: entry {n} has an empty contributor id")
            if isinstance(addr, int):
                raise ContributorsError(
                    f"{source}: the address of {cid!r} was read as a number; quote it "
                    'in YAML ("0x...") so its digits and checksum survive'
                )
            if cid in out:
                raise ContributorsError(f"{source}: contributor {cid!r} is listed twice; keep one address")
            out[cid] = _checksummed(str(addr).strip(), cid, source)
        return cls(out, source)

    def require(self, contributors: Iterable[str]) -> dict[str, str]:
        """Addresses of all these contributors, or one error naming every one that has none."""
        wanted = sorted(set(contributors))
        missing = [c for c in wanted if c not in self.addresses]
        if missing:
            raise MissingAddressError(missing, self.source)
        return {c: self.addresses[c] for c in wanted}


def _checksummed(addr: str, cid: str, source: str) -> str:
    if not is_address(addr) or not addr.startswith("0x") or len(addr) != 42:
        raise ContributorsError(
            f"{source}: contributor {cid!r} has {addr!r}, not an EVM address (0x + 40 hex)"
        )
    checksummed = to_checksum_address(addr)
    body = addr[2:]
    if body not in (body.lower(), body.upper()) and addr != checksummed:
        raise ContributorsError(
            f"{source}: contributor {cid!r} has {addr!r} whose EIP-55 checksum is wrong "
            "(a typo?); check it, or write it all lower case"
        )
    return checksummed


def _read_csv(text: str, path: Path) -> list[tuple[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is not None and not {"contributor", "address"} <= set(reader.fieldnames):
        raise ContributorsError(f"{path}: CSV header must be `contributor,address`, got {reader.fieldnames}")
    return [(r["contributor"] or "", r["address"] or "") for r in reader]


def _read_yaml(text: str, path: Path) -> list[tuple[str, str]]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ContributorsError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if isinstance(data, dict) and "contributors" in data:
        data = data["contributors"]
    if isinstance(data, dict):
        return [(k, v) for k, v in data.items()]
    if isinstance(data, list) and all(isinstance(d, dict) and {"id", "address"} <= set(d) for d in data):
        return [(d["id"], d["address"]) for d in data]
    raise ContributorsError(f"{path}: expected a mapping `id: address` or a list of {{id, address}}")
