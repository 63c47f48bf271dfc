"""Provenance errors. Each message names what is wrong and how to fix it."""

from __future__ import annotations


class ProvenanceError(Exception):
    """Base class: bad input or state in the provenance room."""


class RecordError(ProvenanceError):
    """A provenance record is malformed, non-canonical, or its parents are missing."""


class WeightsError(ProvenanceError):
    """A contributor_weights table breaks its contract (addresses, basis points)."""


class ChainError(ProvenanceError):
    """The chain cannot be used: unreachable RPC, wrong chain id, missing key or deployment."""


class TransactionError(ChainError):
    """A transaction was refused or reverted; the message names the contract error."""


class InsufficientFunds(ChainError):
    """The sending account cannot pay for gas (and value)."""
