"""Labeling tests run against a real Label Studio (tests/services/labelstudio.py)."""

from __future__ import annotations

import itertools
import uuid

import pyarrow as pa
import pytest

from labeling import LabelStudioClient, Project, ProjectSpec

CHOICES = ("cat", "dog", "bird")
_n = itertools.count()


def text_examples(n: int, start: int = 0, provider: str = "prov-a") -> pa.Table:
    ids = [f"ex{i:05d}" for i in range(start, start + n)]
    return pa.table(
        {
            "example_id": ids,
            "provider": [provider] * n,
            "text": [f"text {i}" for i in ids],
            "source": ["tests"] * n,
        }
    )


@pytest.fixture(scope="session")
def client(labelstudio) -> LabelStudioClient:
    return labelstudio.client()


@pytest.fixture
def project(client: LabelStudioClient) -> Project:
    """A fresh text project per test (unique title), so tests never see each other's tasks."""
    return client.ensure_project(
        ProjectSpec(f"test {next(_n)} {uuid.uuid4().hex[:8]}", "text", CHOICES, "text")
    )
