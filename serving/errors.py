"""Errors of the serving room; each message says what is wrong and how to fix it."""

from __future__ import annotations


class ServingError(Exception):
    """Base of every serving error."""


class RunNotServable(ServingError):
    """The run lacks its provenance record, its on-chain root or one of its stored outputs."""


class LedgerError(ServingError):
    """The ledger refused an operation (unknown key, bad amount, ...)."""


class UnknownKey(LedgerError):
    pass


class RevokedKey(LedgerError):
    pass


class InsufficientBalance(LedgerError):
    pass


class SettlementError(ServingError):
    """An epoch could not be settled; rerunning `settle` resumes where it stopped."""
