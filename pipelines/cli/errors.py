"""One clear error line and a nonzero exit for every bad input the CLI meets."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer


class CaravanError(Exception):
    """Raised by CLI code for an input error whose message already says how to fix it."""


@contextlib.contextmanager
def clean_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Turn the named library errors into `error: ...` on stderr and exit code 1."""
    try:
        yield
    except (CaravanError, *kinds) as exc:  # type: ignore[misc]
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(code=1) from None
