"""The pipeline room's shared fixtures: a Caravan home wired to the real Label Studio (and anvil)."""

from __future__ import annotations

import uuid

import pytest

from pipelines.settings import load_settings


@pytest.fixture
def labeling_env(tmp_path, monkeypatch, labelstudio):
    """(settings, Label Studio client) for a fresh Caravan home against the real Label Studio."""
    monkeypatch.setenv("CARAVAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    monkeypatch.setenv("CARAVAN_LABELSTUDIO_URL", labelstudio.base_url)
    # one project per test, and a short prefix: Label Studio titles hold 50 characters
    monkeypatch.setenv("CARAVAN_LABELSTUDIO_PROJECT_PREFIX", f"caravan-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", labelstudio.token)
    monkeypatch.delenv("CARAVAN_STORE_DIR", raising=False)
    return load_settings(), labelstudio.client()


@pytest.fixture
def caravan_env(labeling_env, monkeypatch, anvil):
    """The settings of a fresh Caravan home against the real Label Studio and anvil."""
    monkeypatch.setenv("CARAVAN_RPC_URL", anvil.rpc_url)
    monkeypatch.setenv("CARAVAN_PRIVATE_KEY", anvil.dev_keys[0])
    return load_settings()
