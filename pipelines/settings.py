"""Caravan's one configuration source: `CARAVAN_*` environment variables with working local defaults.

Every path is under `CARAVAN_HOME` (default `.caravan` in the working directory) unless its own
variable says otherwise, so the demo, the Dagster UI and the CLI all see the same state.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass(frozen=True)
class Settings:
    home: Path
    deployment: str
    store_dir: Path
    kubo_url: str
    pinning_url: str
    labelstudio_url: str
    labelstudio_prefix: str
    rpc_url: str
    contributors_file: Path

    @property
    def pointer_dir(self) -> Path:
        return self.home / "assets"

    @property
    def catalog_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def chain_dir(self) -> Path:
        return self.home / "chain"

    @property
    def ledger_path(self) -> Path | str:
        """The serving ledger: a SQLite file, or a `postgresql://` URL kept as given (the resource
        reads a URL through `dg.EnvVar`, so Dagster never shows it; PGPASSWORD or ~/.pgpass still
        keep the password out of the environment variable)."""
        given = os.environ.get("CARAVAN_LEDGER")
        if given and "://" in given:  # a database URL (the ledger checks its scheme)
            return given
        return Path(given or self.home / "ledger.sqlite").absolute()


def load_settings() -> Settings:
    home = Path(_env("CARAVAN_HOME", ".caravan")).absolute()
    return Settings(
        home=home,
        deployment=_env("CARAVAN_DEPLOYMENT", "local"),
        store_dir=Path(_env("CARAVAN_STORE_DIR", str(home / "blocks"))).absolute(),
        kubo_url=_env("CARAVAN_KUBO_URL", "http://127.0.0.1:5001"),
        pinning_url=_env("CARAVAN_PINNING_URL", ""),
        labelstudio_url=_env("CARAVAN_LABELSTUDIO_URL", "http://127.0.0.1:8080"),
        labelstudio_prefix=_env("CARAVAN_LABELSTUDIO_PROJECT_PREFIX", "caravan"),
        rpc_url=_env("CARAVAN_RPC_URL", "http://127.0.0.1:8545"),
        contributors_file=Path(_env("CARAVAN_CONTRIBUTORS", str(home / "contributors.yaml"))).absolute(),
    )


def use_dagster_home(settings: Settings) -> Path:
    """Point DAGSTER_HOME (unless set) at the Caravan home, with the repository's dagster.yaml in it."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(settings.home / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    config = Path(__file__).resolve().parents[1] / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and config.exists():
        shutil.copyfile(config, home / "dagster.yaml")
    return home
