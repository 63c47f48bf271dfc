"""The `caravan` command line. Each module here registers one group of commands."""

from __future__ import annotations

import typer

from pipelines.cli import access, audit, chain, demo, labels, serve, store

app = typer.Typer(
    name="caravan",
    help="Caravan: content-addressed data, Label Studio labels, in-run attribution, on-chain royalties.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

for _module in (store, audit, chain, demo, serve, labels, access):
    _module.register(app)
