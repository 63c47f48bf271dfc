"""One clear error line and a nonzero exit for every bad input the CLI meets."""

from __future__ import annotations

import contextlib
import json
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


def finish_report(report, as_json: bool, summary: str) -> None:  # noqa: ANN001 (a provenance Findings)
    """Print a verification report (JSON, or one `FAIL` line per failure, one `SKIP (no key)` line per
    check that needed a key, and a verdict); exit 1 unless ok."""
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for failure in report.failures:
            typer.echo(f"FAIL {failure.name} {failure.subject}: {failure.detail}")
        for skip in getattr(report, "skipped", ()):  # checks that needed a key this holder lacks
            typer.echo(f"{skip.name} {skip.subject}: {skip.detail}")
        verdict = "OK" if report.ok else f"{len(report.failures)} failure(s)"
        typer.echo(f"{verdict}: {summary}")
    if not report.ok:
        raise typer.Exit(code=1)
