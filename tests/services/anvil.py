"""A real anvil node for the whole test session (started from the npm package, stopped at the end).

Registered for every room by tests/conftest.py (pytest_plugins). Tests that need
a clean slate deploy their own contracts (cheap on anvil) rather than restarting the node.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provenance.anvil import ANVIL_CHAIN_ID, AnvilNode


@dataclass(frozen=True)
class AnvilService:
    """What a test needs: where the node answers and anvil's funded dev keys (test keys only)."""

    rpc_url: str
    chain_id: int
    dev_keys: tuple[str, ...]
    node: AnvilNode


@pytest.fixture(scope="session")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilService]:
    home: Path = tmp_path_factory.mktemp("anvil")
    node = AnvilNode(
        config_path=home / "anvil.json", log_path=home / "anvil.log", extra_args=("--accounts", "20")
    )
    with node:
        yield AnvilService(node.rpc_url, ANVIL_CHAIN_ID, tuple(node.dev_keys), node)
