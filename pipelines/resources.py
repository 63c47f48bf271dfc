"""Dagster resources: one `ConfigurableResource` per external system, built per deployment.

`local` (the default) is the embedded blockstore, a local Label Studio and a local anvil;
`prod` is a Kubo node (or a pinning service), remote Label Studio and a remote RPC endpoint.
The assets never change between them; only `resources_for(deployment)` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from pipelines.lineage import LineageResource
from pipelines.settings import Settings, load_settings
from storage import BlockStore, ContentStore


class StoreResource(dg.ConfigurableResource):
    """The content store: `embedded` blockstore, a `kubo` node, or a `pinning` service."""

    backend: str = "embedded"
    store_dir: str = ".caravan/blocks"
    kubo_url: str = "http://127.0.0.1:5001"
    pinning_url: str = ""

    def client(self) -> ContentStore:
        if self.backend == "embedded":
            return BlockStore(self.store_dir)
        from storage.remote import KuboStore, PinningServiceStore

        if self.backend == "kubo":
            return KuboStore(self.kubo_url)
        if self.backend == "pinning":
            return PinningServiceStore(self.pinning_url, local=BlockStore(self.store_dir))
        raise dg.Failure(f"unknown store backend {self.backend!r}; use embedded, kubo or pinning")


class DatasetCatalog(dg.ConfigurableResource):
    """Dataset versions (the partitions): each names its source, so a version always reloads the same way."""

    root: str = ".caravan/datasets"

    def register(
        self,
        version: str,
        source: str,
        *,
        provider: str | None = None,
        labeling: dict[str, Any],
        gold: str | None = None,
    ) -> dict[str, Any]:
        """Record a version once; `labeling` is the project spec (kind, field, choices)."""
        path = self._path(version)
        entry = {
            "version": version,
            "source": str(source),
            "provider": provider,
            "labeling": labeling,
            "gold": gold,
        }
        if path.exists():
            known = json.loads(path.read_text())
            if known != entry:
                raise ValueError(
                    f"dataset version {version!r} is already registered for {known['source']!r}; "
                    "pick a new version name for different data"
                )
            return known
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry, indent=2))
        tmp.replace(path)
        return entry

    def lookup(self, version: str) -> dict[str, Any]:
        path = self._path(version)
        if not path.exists():
            raise dg.Failure(
                f"dataset version {version!r} is not registered; run "
                f"`caravan ingest SOURCE --version {version}` first"
            )
        return json.loads(path.read_text())

    def _path(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise ValueError(f"bad dataset version name {version!r}: use letters, digits, '-', '_' or '.'")
        return Path(self.root) / f"{version}.json"


class LabelStudioResource(dg.ConfigurableResource):
    """A Label Studio server; the API token comes from the environment and is never logged."""

    url: str = "http://127.0.0.1:8080"
    project_prefix: str = "caravan"  # projects are titled "<prefix> <dataset version>"

    def client(self):
        from labeling import LabelStudioClient, labelstudio_token

        return LabelStudioClient(self.url, labelstudio_token())


class ContributorsResource(dg.ConfigurableResource):
    """The contributors registry file: contributor id -> EVM address (never personal data on chain)."""

    path: str = ".caravan/contributors.yaml"

    def registry(self):
        from labeling import ContributorsRegistry

        return ContributorsRegistry.load(self.path)


class ChainResource(dg.ConfigurableResource):
    """An EVM JSON-RPC endpoint; the key comes from CARAVAN_PRIVATE_KEY or a keystore, never from config."""

    rpc_url: str = "http://127.0.0.1:8545"
    chain_dir: str = ".caravan/chain"
    auto_deploy: bool = True  # local chains only; a real chain's contracts are deployed on purpose

    def client(self):
        from provenance import Chain

        chain = Chain.from_env(
            {**os.environ, "CARAVAN_RPC_URL": self.rpc_url, "CARAVAN_CHAIN_DIR": self.chain_dir}
        )
        if self.auto_deploy:
            chain.deploy()  # idempotent: contracts already at the recorded addresses are kept
        return chain


class LedgerResource(dg.ConfigurableResource):
    """The serving ledger (API keys, receipts, epochs): a SQLite file or a PostgreSQL URL."""

    path: str = ".caravan/ledger.sqlite"

    def ledger(self):
        from serving import Ledger

        return Ledger(self.path)


def resources_for(settings: Settings | None = None) -> dict[str, Any]:
    """The resource set of `settings.deployment` (`local` or `prod`)."""
    from pipelines.content_io import AssetIndex, ContentStoreIOManager

    s = settings or load_settings()
    if s.deployment not in ("local", "prod"):
        raise ValueError(f"CARAVAN_DEPLOYMENT={s.deployment!r}: use 'local' or 'prod'")
    store = StoreResource(
        backend="embedded" if s.deployment == "local" else ("pinning" if s.pinning_url else "kubo"),
        store_dir=str(s.store_dir),
        kubo_url=s.kubo_url,
        pinning_url=s.pinning_url,
    )
    index = AssetIndex(pointer_dir=str(s.pointer_dir))
    return {
        "store": store,
        "index": index,
        "catalog": DatasetCatalog(root=str(s.catalog_dir)),
        "labelstudio": LabelStudioResource(url=s.labelstudio_url, project_prefix=s.labelstudio_prefix),
        "contributors": ContributorsResource(path=str(s.contributors_file)),
        "chain": ChainResource(
            rpc_url=s.rpc_url, chain_dir=str(s.chain_dir), auto_deploy=s.deployment == "local"
        ),
        "lineage": LineageResource(index_dir=str(s.home / "lineage")),
        # A database URL goes in as the environment variable's name (dg.EnvVar), so a password inside
        # it never shows in Dagster's run config or UI; a file path is plain config.
        "ledger": LedgerResource(
            path=dg.EnvVar("CARAVAN_LEDGER") if isinstance(s.ledger_path, str) else str(s.ledger_path)
        ),
        "io_manager": ContentStoreIOManager(store=store, index=index),
    }
