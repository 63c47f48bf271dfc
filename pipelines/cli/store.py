"""`caravan store ...`: add, get, CAR export/import, verify, pins and GC of the embedded blockstore.

The store lives in `--store DIR`, else the settings' store (`$CARAVAN_STORE_DIR`, default
`$CARAVAN_HOME/blocks`). Every bad input ends as one `error: ...` line and exit code 1, with
nothing stored changed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.errors import CaravanError, clean_errors
from pipelines.cli.options import StoreDir, open_reading_store, open_store
from storage import EncryptedStore, StorageError, is_sealed


def _check_version(cid_version: int) -> int:
    if cid_version not in (0, 1):
        raise CaravanError(
            f"--cid-version {cid_version} is not supported; use 0 (Kubo's default) or 1 (raw leaves)"
        )
    return cid_version


def add(
    file: Annotated[str, typer.Argument(help="The file to add.")],
    cid_version: Annotated[int, typer.Option(help="0: CIDv0 (ipfs add's default); 1: raw leaves.")] = 0,
    pin: Annotated[bool, typer.Option("--pin/--no-pin", help="Pin the file so gc keeps it.")] = True,
    store_dir: StoreDir = None,
) -> None:
    """Add a file (streamed, any size); print its CID, the one `ipfs add` gives it."""
    with clean_errors(StorageError):
        version = _check_version(cid_version)
        typer.echo(open_store(store_dir).put_file(file, cid_version=version, pin=pin))


def get(
    cid: Annotated[str, typer.Argument(help="The CID `caravan store add` printed.")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="Write here, not to stdout.")] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Write a private version's sealed content as stored (ciphertext).")
    ] = False,
    store_dir: StoreDir = None,
) -> None:
    """Write a file's bytes to stdout (or -o OUT), every block verified against its CID.

    Content of a private dataset version is opened with the holder key in reach (`--raw`: the
    ciphertext)."""
    with clean_errors(StorageError):
        store = open_store(store_dir)
        if not raw and is_sealed(next(store.iter_bytes(cid), b"")):
            _write_whole(_opened(cid, store_dir), output)
            return
        if output is not None:
            store.get_to(cid, output)  # atomic: no file at all if a block is bad
            return
        for _ in store.iter_bytes(cid):  # check the whole DAG first: stdout cannot be taken back
            pass
        out = sys.stdout.buffer
        for chunk in store.iter_bytes(cid):
            out.write(chunk)
        out.flush()


def _opened(cid: str, store_dir: str | None) -> bytes:
    """The plaintext of sealed content, with a data key the holder key in reach is granted."""
    from pipelines.privacy import HOLDER_KEY_ENV, HOLDER_KEYFILE_ENV

    reader = open_reading_store(store_dir)
    if not isinstance(reader, EncryptedStore):
        raise CaravanError(
            f"{cid} is sealed content of a private dataset version: set {HOLDER_KEY_ENV} or "
            f"{HOLDER_KEYFILE_ENV} to a holder key granted access to it (`caravan access grant`), "
            "or pass --raw for the ciphertext"
        )
    return reader.get(cid)  # DecryptionError names the grant it needs


def _write_whole(data: bytes, output: str | None) -> None:
    """stdout, or `output` replaced atomically (no file at all if anything fails)."""
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    tmp = Path(f"{output}.part")
    tmp.write_bytes(data)
    tmp.replace(output)


def export_car(
    cid: Annotated[str, typer.Argument(help="Root CID of the DAG to export.")],
    out: Annotated[str, typer.Argument(help="The CAR file to write.")],
    store_dir: StoreDir = None,
) -> None:
    """Export a DAG as a CAR v1 file (what `ipfs dag import` and pinning services take)."""
    with clean_errors(StorageError):
        open_store(store_dir).export_car(cid, out)
        typer.echo(out)


def import_car(
    car: Annotated[str, typer.Argument(help="A CAR v1 file.")],
    pin: Annotated[bool, typer.Option("--pin/--no-pin", help="Pin the CAR's roots.")] = True,
    store_dir: StoreDir = None,
) -> None:
    """Import a CAR v1 file (checked whole before anything is stored); print its roots."""
    with clean_errors(StorageError):
        for root in open_store(store_dir).import_car(car, pin=pin):
            typer.echo(root)


def verify(store_dir: StoreDir = None) -> None:
    """Rehash every block and check every pinned DAG is whole; exit 1 naming what is damaged."""
    with clean_errors(StorageError):
        store = open_store(store_dir)
        bad = store.verify()
        damaged = store.damaged_pins()
        for cid in bad:
            typer.echo(f"corrupt block {cid}")
        for pin, why in damaged.items():
            typer.echo(f"damaged pin {pin}: {why}")
        if bad or damaged:
            raise CaravanError(
                f"{len(bad)} corrupt block(s), {len(damaged)} damaged pin(s) in {store.root}; "
                "re-add the original files or import CARs holding them"
            )
        typer.echo(f"ok: {sum(1 for _ in store.iter_cids())} blocks, {len(store.pins())} pins")


def pin(cid: Annotated[str, typer.Argument()], store_dir: StoreDir = None) -> None:
    """Pin a DAG already in the store, so gc keeps it."""
    with clean_errors(StorageError):
        open_store(store_dir).pin(cid)


def unpin(cid: Annotated[str, typer.Argument()], store_dir: StoreDir = None) -> None:
    """Drop a pin (its blocks go at the next gc unless another pin reaches them)."""
    with clean_errors(StorageError):
        open_store(store_dir).unpin(cid)


def ls(store_dir: StoreDir = None) -> None:
    """List the pinned CIDs."""
    with clean_errors(StorageError):
        for cid in sorted(open_store(store_dir).pins()):
            typer.echo(cid)


def gc(store_dir: StoreDir = None) -> None:
    """Remove every block no pin reaches (refuses, removing nothing, if a pinned DAG is damaged)."""
    with clean_errors(StorageError):
        typer.echo(f"removed {open_store(store_dir).gc()} blocks")


def register(app: typer.Typer) -> None:
    """Add the `caravan store` group (add, get, export-car, import-car, verify, pin, unpin, ls, gc) to the
    root app."""
    store_app = typer.Typer(help="The content store (embedded blockstore by default).", no_args_is_help=True)
    for command in (add, get, export_car, import_car, verify, pin, unpin, ls, gc):
        store_app.command(name=command.__name__.replace("_", "-"))(command)
    app.add_typer(store_app, name="store")
