"""Errors of the serving room; each message says what is wrong and how to fix it."""

from __future__ import annotations


class ServingError(Exception):
    """Base of every serving error."""


class RunNotServable(ServingError):
    """The run lacks its provenance record, its on-chain root or one of its stored outputs."""


class LedgerError(ServingError):
    """The ledger refused an operation (unknown key, bad amount, ...)."""


class UnknownKey(LedgerError):
    """No API key has this id or this secret; the API answers 401."""


class RevokedKey(LedgerError):
    """The API key was revoked (`caravan keys revoke`): no more calls or charges; the API answers 403."""


class InsufficientBalance(LedgerError):
    """The key's balance cannot cover the charge, so nothing was charged; the API answers 402."""


class SettlementError(ServingError):
    """An epoch could not be settled; rerunning `settle` resumes where it stopped."""
