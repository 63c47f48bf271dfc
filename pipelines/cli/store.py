"""`caravan store ...`: add, get, export a CAR, verify the embedded blockstore."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    store_app = typer.Typer(help="The content store (embedded blockstore by default).", no_args_is_help=True)
    app.add_typer(store_app, name="store")
