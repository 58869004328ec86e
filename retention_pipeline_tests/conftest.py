"""Fixtures over one real, embedded PostgreSQL per test session; every test gets its own database.

Under pytest-xdist (`-n N`, set in pyproject.toml) every worker is its own session: the first one to
start owns the server and the others attach to it as guests (retention_pipeline/embedded.py), so the
session still has one server. Database names carry the worker's pid, so workers never collide.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Tests written before campaign files run the run config's single campaign (a campaigns directory without
# campaigns); tests of the shipped campaigns set RETENTION_CAMPAIGNS_DIR themselves (CAMPAIGNS_DIR of test_campaigns).
NO_CAMPAIGN_FILES = Path(__file__).parent / "no_campaign_files"
os.environ.setdefault("RETENTION_CAMPAIGNS_DIR", str(NO_CAMPAIGN_FILES))

from dagster import DagsterInstance  # noqa: E402
from psycopg2 import sql  # noqa: E402

from retention_pipeline import clock  # noqa: E402
from retention_pipeline.local import demo_data  # noqa: E402
from retention_pipeline.local.embedded import EmbeddedPostgres  # noqa: E402
from retention_pipeline.resources import AppDatabase  # noqa: E402
from retention_pipeline.settings import STATE_DIR  # noqa: E402

# Durability is irrelevant for throw-away test databases and costs seconds per test.
_TEST_TUNING = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
_counter = itertools.count()


def _test_pgdata() -> Path:
    return Path(os.environ.get("RETENTION_TEST_PGDATA", STATE_DIR / "test-pgdata"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(_test_pgdata(), tuning=_TEST_TUNING)
    server.start()
    yield server
    server.stop()


def pytest_sessionfinish(session) -> None:
    """After the xdist workers are gone, stop the server they shared if it still runs: two workers
    leaving at the same moment can each see the other as the one still using it."""
    controller = getattr(session.config.option, "numprocesses", None) and not hasattr(session.config, "workerinput")
    if controller and (_test_pgdata() / "postmaster.pid").exists():
        with EmbeddedPostgres(_test_pgdata()):
            pass  # the last one out (here the only one) stops it


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects: a module with slow tests is long anyway
def pytest_collection_modifyitems(items) -> None:
    """Hand out the longest work first. Under `--dist loadscope` each module goes to one worker as a
    whole (its module-scoped fixtures, a world of users run through the pipeline, a server, a browser,
    are built once), in collection order (`--no-loadscope-reorder`); this puts modules with slow tests
    first, then the modules with a shared fixture, so the session does not end waiting on one long module
    that started last. Whole modules move, never single tests, so a serial run sets them up once too."""
    grouped = {item.module.__name__ for item in items if _uses_a_module_fixture(item)}
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.module.__name__ not in slow, item.module.__name__ not in grouped))


def _uses_a_module_fixture(item) -> bool:
    fixtures = getattr(item, "_fixtureinfo", None)
    return bool(fixtures) and any(defs and defs[-1].scope == "module" for defs in fixtures.name2fixturedefs.values())


@pytest.fixture(scope="session")
def app_tables_template(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A database holding the app's tables (as `demo_data.create_app_tables` makes them), built once
    per session and copied by `CREATE DATABASE ... TEMPLATE` for each test that uses `app_db`."""
    name = f"tpl_app_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _create_database(pg_server, name)
    conn = pg_server.connect(name)
    demo_data.create_app_tables(conn)
    conn.commit()
    conn.close()  # a template with a connection open cannot be copied
    yield name
    pg_server.drop_database(name)


@pytest.fixture(scope="session")
def database_template(pg_server: EmbeddedPostgres, app_tables_template: str) -> Iterator[Callable[[str, Callable], str]]:
    """`database_template(key, build)`: a copy of the app-tables template that `build(server, name)`
    filled (demo data, pipeline runs), made once per session and key. Tests copy it (`app_db_copy`)
    and never change it."""
    built: dict[str, str] = {}

    def template(key: str, build: Callable[[EmbeddedPostgres, str], None]) -> str:
        if key not in built:
            name = f"tpl_{key}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            _create_database(pg_server, name, app_tables_template)
            build(pg_server, name)
            _disconnect_all(pg_server, name)  # a template with a connection open cannot be copied
            built[key] = name
        return built[key]

    yield template
    for name in built.values():
        pg_server.drop_database(name)


@pytest.fixture
def app_db_copy(pg_server: EmbeddedPostgres, monkeypatch) -> Iterator[Callable[[str], AppDatabase]]:
    """`app_db_copy(template)`: a fresh copy of a template database, exported as `app_db_env` exports
    its database; dropped after the test."""
    made: list[tuple[str, AppDatabase]] = []

    def copy(template: str) -> AppDatabase:
        name = f"t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
        _create_database(pg_server, name, template)
        made.append((name, AppDatabase(url=pg_server.url(name))))
        _export(made[-1][1], monkeypatch)
        return made[-1][1]

    yield copy
    for name, db in made:
        db.engine().dispose()
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def dormant_world(pg_server: EmbeddedPostgres) -> Iterator[Callable[[int], str]]:
    """`faults.build_dormant_world` of n users (the pipeline run over 41 days), built once per session
    and size. The database is a template: tests copy it and never change it."""
    from retention_pipeline_tests import faults

    built: dict[int, str] = {}

    def world(n_users: int) -> str:
        if n_users not in built:
            name = f"tpl_world_{n_users}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            faults.build_dormant_world(pg_server, name, n_users)
            built[n_users] = name
        return built[n_users]

    yield world
    for name in built.values():
        pg_server.drop_database(name)


@pytest.fixture
def pg_database(request, pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A fresh database, dropped after the test: empty, or, for a test that uses `app_db`, a copy of
    the app-tables template (the same tables that test would otherwise create itself)."""
    name = f"t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    template = request.getfixturevalue("app_tables_template") if "app_db" in request.fixturenames else None
    _create_database(pg_server, name, template)
    yield name
    pg_server.drop_database(name)


def _create_database(server: EmbeddedPostgres, name: str, template: str | None = None) -> None:
    """CREATE DATABASE, as a copy of `template` when given (a file copy: faster than building it again)."""
    conn = server.connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            cur.execute(statement)
    finally:
        conn.close()


def _disconnect_all(server: EmbeddedPostgres, name: str) -> None:
    conn = server.connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    finally:
        conn.close()


@pytest.fixture
def pg_conn(pg_server: EmbeddedPostgres, pg_database: str):
    conn = pg_server.connect(pg_database)
    yield conn
    conn.close()


@pytest.fixture
def app_db(pg_server: EmbeddedPostgres, pg_database: str) -> Iterator[AppDatabase]:
    """The app database with the source-contract tables created, empty (copied from the template)."""
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
    _export(app_db, monkeypatch)
    return app_db


def _export(db: AppDatabase, monkeypatch) -> None:
    monkeypatch.setenv("RETENTION_DATABASE_URL", db.url)
    monkeypatch.setenv("RETENTION_UNSUBSCRIBE_SECRET", "test-unsubscribe-secret")
