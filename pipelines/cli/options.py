"""What the commands share: the options naming Caravan's state, resolved through the one settings object.

An option left out takes its default from `pipelines.settings` (`CARAVAN_HOME` and the `CARAVAN_*`
variables), so every command reads and writes the same places as the pipeline and the demo.
provenance (web3) and serving are imported inside the helpers: `caravan store` need not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.settings import load_settings
from storage import BlockStore, ContentStore

if TYPE_CHECKING:
    from labeling import LabelStudioClient
    from provenance import Chain
    from serving import Ledger

StoreDir = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Block store directory; default $CARAVAN_STORE_DIR, else $CARAVAN_HOME/blocks.",
        show_default=False,
    ),
]
LedgerTarget = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        help="Ledger of keys, receipts and epochs: a SQLite file, or a postgresql://user@host/db URL "
        "(password in PGPASSWORD or ~/.pgpass) shared by several servers; default $CARAVAN_LEDGER, "
        "else $CARAVAN_HOME/ledger.sqlite.",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
Shown = Annotated[
    str | None,
    typer.Option(
        "--show",
        help="With --kind table: the comma-separated columns labelers see, in this order (default: every "
        "column but the ids); keep out what labelers should not read, e.g. a name. The model still "
        "trains on every column.",
        show_default=False,
    ),
]


def names(text: str | None) -> tuple[str, ...]:
    """A comma-separated option's names, blanks dropped."""
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


def open_store(store_dir: str | None) -> BlockStore:
    """The embedded blockstore at `--store` (else the settings' `store_dir`); private values stay sealed."""
    return BlockStore(store_dir or load_settings().store_dir)


def open_reading_store(store_dir: str | None) -> ContentStore:
    """The store, opening every private version the holder key in reach (if any) is granted."""
    from pipelines.privacy import Keyrings, holder_key, keyring_dir

    settings = load_settings()
    keyrings = Keyrings(keyring_dir(settings), open_store(store_dir))
    return keyrings.reading_store(holder_key(settings) if keyrings.versions() else None)


def open_ledger(target: str | None) -> Ledger:
    """The ledger the settings (or ``target``) name; pending inputs sealed with CARAVAN_LEDGER_INPUT_KEY
    where it is set."""
    from serving import Ledger

    return Ledger.from_env(target or load_settings().ledger_path)


def open_labelstudio(url: str | None = None) -> LabelStudioClient:
    """Label Studio at `url`, else the settings' `CARAVAN_LABELSTUDIO_URL`; its API token from
    `labeling.labelstudio_token` (never printed)."""
    from labeling import LabelStudioClient, labelstudio_token

    return LabelStudioClient(url or load_settings().labelstudio_url, labelstudio_token())


def open_chain(*, need_key: bool = False) -> Chain:
    """The chain the settings name (RPC URL, chain dir with deployments and anvil's dev keys)."""
    from provenance import Chain

    return Chain.from_env(load_settings().environ(), need_key=need_key)
