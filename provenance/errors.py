"""Provenance errors. Each message names what is wrong and how to fix it."""

from __future__ import annotations


class ProvenanceError(Exception):
    """Base class: bad input or state in the provenance room."""


class RecordError(ProvenanceError):
    """A provenance record is malformed, non-canonical, or not in the content store."""


class MissingParent(RecordError):
    """A record names a parent record that is neither in the content store nor on chain."""


class WeightsError(ProvenanceError):
    """A contributor_weights table breaks its contract (addresses, basis points)."""


class ClaimConflict(ProvenanceError):
    """A run's source files are dated or paid against their providers' claims on chain."""


class ChainError(ProvenanceError):
    """The chain cannot be used: missing key, missing deployment, bad configuration."""


class RpcUnreachable(ChainError):
    """The JSON-RPC endpoint did not answer (after bounded retries)."""


class WrongChain(ChainError):
    """The endpoint serves another chain id than the one configured."""


class NotDeployed(ChainError):
    """No Caravan contracts are known (or have code) on this chain."""


class TransactionError(ChainError):
    """A transaction was refused or reverted; the message names the contract error."""


class UnauthorizedPublisher(TransactionError):
    """The sending account lacks PUBLISHER_ROLE on a Caravan contract."""


class AlreadyPublished(TransactionError):
    """The chain already holds something else under this run id or record CID."""


class InsufficientFunds(ChainError):
    """The sending account cannot pay for gas (and value)."""
