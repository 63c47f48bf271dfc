"""Caravan's one configuration source: `CARAVAN_*` environment variables with working local defaults.

Every path is under `CARAVAN_HOME` (default `.caravan` in the working directory) unless its own
variable says otherwise, so the demo, the Dagster UI and every CLI command see the same state:

    blocks/             the embedded content store (CARAVAN_STORE_DIR)
    chain/              deployments, tx journal; anvil's state, dev keys, pid and log (CARAVAN_CHAIN_DIR)
    ledger.sqlite       the serving ledger (CARAVAN_LEDGER: a file, or a postgresql:// URL)
    contributors.yaml   the contributors registry (CARAVAN_CONTRIBUTORS)
    dagster/            Dagster's home (DAGSTER_HOME; `use_dagster_home`, the Makefile)
    labelstudio/        Label Studio's data, pid and log (LABEL_STUDIO_DATA_DIR; scripts/labelstudio.sh)
    assets/ datasets/ lineage/ demo/ serve.log serve.pid   (pipeline pointers, catalog, demo)

The service scripts (`scripts/anvil.sh`, `scripts/labelstudio.sh`) and the Makefile derive the same
places from `CARAVAN_HOME`. A child Caravan process gets these settings through `Settings.environ()`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

HOME_ENV = "CARAVAN_HOME"
DEFAULT_HOME = ".caravan"


@dataclass(frozen=True)
class Settings:
    """Every Caravan setting, resolved (`load_settings`): one field per `CARAVAN_*` variable
    (`ENV_NAMES`), read by the resources (`resources_for`), the CLI and the service scripts."""

    home: Path
    deployment: str
    store_dir: Path
    kubo_url: str
    pinning_url: str
    labelstudio_url: str
    labelstudio_prefix: str
    rpc_url: str
    contributors_file: Path
    chain_dir: Path
    # The serving ledger: a SQLite file, or a `postgresql://` URL kept as given (the resource reads a
    # URL through `dg.EnvVar`, so Dagster never shows it; PGPASSWORD or ~/.pgpass still keep the
    # password out of the environment variable).
    ledger_path: Path | str

    @property
    def pointer_dir(self) -> Path:
        """Where `AssetIndex` keeps each asset's latest-CID pointer files and the stages' small state."""
        return self.home / "assets"

    @property
    def catalog_dir(self) -> Path:
        """Where `DatasetCatalog` keeps each dataset version's entry (its source files by CID)."""
        return self.home / "datasets"

    @property
    def lineage_dir(self) -> Path:
        """Where `LineageResource` indexes each stage's latest provenance record per dataset version."""
        return self.home / "lineage"

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with every setting spelled out as its variable.

        For a child Caravan process (`caravan serve`, the service scripts) and for `Chain.from_env`:
        they then see exactly these settings, whatever their working directory;
        `load_settings(s.environ()) == s`.
        """
        spelled = {ENV_NAMES[f.name]: str(getattr(self, f.name)) for f in fields(self)}
        return {**(os.environ if base is None else base), **spelled}


ENV_NAMES = {  # Settings field -> its environment variable
    "home": HOME_ENV,
    "deployment": "CARAVAN_DEPLOYMENT",
    "store_dir": "CARAVAN_STORE_DIR",
    "kubo_url": "CARAVAN_KUBO_URL",
    "pinning_url": "CARAVAN_PINNING_URL",
    "labelstudio_url": "CARAVAN_LABELSTUDIO_URL",
    "labelstudio_prefix": "CARAVAN_LABELSTUDIO_PROJECT_PREFIX",
    "rpc_url": "CARAVAN_RPC_URL",
    "contributors_file": "CARAVAN_CONTRIBUTORS",
    "chain_dir": "CARAVAN_CHAIN_DIR",
    "ledger_path": "CARAVAN_LEDGER",
}


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings `env` (default: this process's environment) names; relative paths made absolute."""
    env = os.environ if env is None else env

    def get(field: str, default: str) -> str:
        return env.get(ENV_NAMES[field]) or default

    home = Path(get("home", DEFAULT_HOME)).absolute()

    def path(field: str, default: str) -> Path:
        return Path(get(field, str(home / default))).absolute()

    ledger = get("ledger_path", str(home / "ledger.sqlite"))
    return Settings(
        home=home,
        deployment=get("deployment", "local"),
        store_dir=path("store_dir", "blocks"),
        kubo_url=get("kubo_url", "http://127.0.0.1:5001"),
        pinning_url=get("pinning_url", ""),
        labelstudio_url=get("labelstudio_url", "http://127.0.0.1:8080"),
        labelstudio_prefix=get("labelstudio_prefix", "caravan"),
        rpc_url=get("rpc_url", "http://127.0.0.1:8545"),
        contributors_file=path("contributors_file", "contributors.yaml"),
        chain_dir=path("chain_dir", "chain"),
        # a database URL (the ledger checks its scheme) is kept as given; a file is made absolute
        ledger_path=ledger if "://" in ledger else Path(ledger).absolute(),
    )


def use_dagster_home(settings: Settings) -> Path:
    """Point DAGSTER_HOME (unless set) at the Caravan home, with the repository's dagster.yaml in it."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(settings.home / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    config = Path(__file__).resolve().parents[1] / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and config.exists():
        shutil.copyfile(config, home / "dagster.yaml")
    return home
