"""Fixtures over one real, embedded PostgreSQL per test session; every test gets its own database."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests written before campaign files run the run config's single campaign (a campaigns directory without
# campaigns); tests of the shipped campaigns set RETENTION_CAMPAIGNS_DIR themselves (CAMPAIGNS_DIR of test_campaigns).
NO_CAMPAIGN_FILES = Path(__file__).parent / "no_campaign_files"
os.environ.setdefault("RETENTION_CAMPAIGNS_DIR", str(NO_CAMPAIGN_FILES))

from dagster import DagsterInstance  # noqa: E402

from retention_pipeline import clock  # noqa: E402
from retention_pipeline.local import demo_data  # noqa: E402
from retention_pipeline.local.embedded import EmbeddedPostgres  # noqa: E402
from retention_pipeline.resources import AppDatabase  # noqa: E402
from retention_pipeline.settings import STATE_DIR  # noqa: E402

# Durability is irrelevant for throw-away test databases and costs seconds per test.
_TEST_TUNING = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(Path(os.environ.get("RETENTION_TEST_PGDATA", STATE_DIR / "test-pgdata")), tuning=_TEST_TUNING)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_database(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A fresh, empty database, dropped after the test."""
    name = f"t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    pg_server.ensure_database(name)
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def pg_conn(pg_server: EmbeddedPostgres, pg_database: str):
    conn = pg_server.connect(pg_database)
    yield conn
    conn.close()


@pytest.fixture
def app_db(pg_server: EmbeddedPostgres, pg_database: str) -> Iterator[AppDatabase]:
    """The app database with the source-contract tables created, empty."""
    conn = pg_server.connect(pg_database)
    demo_data.create_app_tables(conn)
    conn.commit()
    conn.close()
    db = AppDatabase(url=pg_server.url(pg_database))
    yield db
    db.engine().dispose()


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture(autouse=True)
def _reset_clock() -> Iterator[None]:
    yield
    clock.set_now(None)


@pytest.fixture
def app_db_env(app_db: AppDatabase, monkeypatch) -> AppDatabase:
    """The app database, also exported as RETENTION_DATABASE_URL for jobs built from `defs`."""
    monkeypatch.setenv("RETENTION_DATABASE_URL", app_db.url)
    monkeypatch.setenv("RETENTION_UNSUBSCRIBE_SECRET", "test-unsubscribe-secret")
    return app_db
