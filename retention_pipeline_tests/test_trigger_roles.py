"""The trigger with production roles: `app` owns the tables, `app_writer` may only INSERT into events,
`retention` installs the trigger and runs the pipeline (deploy/roles.sql, deploy/retention-grants.sql).

What is shown: the install needs neither superuser nor ownership; an INSERT-only role keeps activity
current; the trigger opens no subtransaction; an install under concurrent inserts ends exactly where a
computation from scratch does; the `trigger_health` check fails when the owner disables the trigger.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from datetime import timedelta

import pytest

from retention_pipeline.activity.trigger import (
    TRIGGER_NAME,
    drain_activity_queue,
    install_trigger,
    trigger_state,
    uninstall_trigger,
)
from retention_pipeline.local.runner import run_job
from retention_pipeline.resources import AppDatabase
from retention_pipeline.settings import STATE_DIR
from retention_pipeline_tests.roles import connect_as, create_app_database, production_cluster, role_url
from retention_pipeline_tests.scenario import check_metadata, utc
from retention_pipeline_tests.test_trigger import RECOMPUTED, TRACKED

T0 = utc(2025, 3, 3, 8)
DAY = "2025-03-03"
_counter = itertools.count()


@pytest.fixture(scope="module")
def cluster():
    pgdata = STATE_DIR / "test-pgdata-roles"
    with production_cluster(pgdata, tuning={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}) as server:
        yield server


@pytest.fixture
def database(cluster) -> str:
    name = f"app_{os.getpid()}_{next(_counter)}"
    create_app_database(cluster, name)
    yield name
    admin = cluster.connect()
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def retention(cluster, database) -> AppDatabase:
    db = AppDatabase(url=role_url(cluster, database, "retention"))
    yield db
    db.engine().dispose()


@pytest.fixture
def writer(cluster, database):
    conn = connect_as(cluster, database, "app_writer")
    yield conn
    conn.close()


def insert(conn, rows: list[tuple]) -> None:
    """One INSERT statement as the connection's role: rows of (id, user_id, occurred_at, event_type)."""
    with conn.cursor() as cur:
        values = ",".join(cur.mogrify("(%s, %s, %s, %s)", row).decode() for row in rows)
        cur.execute(f"INSERT INTO events (id, user_id, occurred_at, event_type) VALUES {values}")
    conn.commit()


def rows(db: AppDatabase, query: str) -> list[dict]:
    return [dict(r._mapping) for r in db.fetch_all(query)]


def test_install_needs_neither_superuser_nor_ownership(cluster, database, retention):
    me = rows(retention, "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
    assert me == [{"rolsuper": False, "rolcreaterole": False, "rolcreatedb": False}]
    assert retention.scalar("SELECT tableowner FROM pg_tables WHERE tablename = 'events'") == "app"
    # The superuser's grants are recorded as the owner's.
    assert (
        retention.scalar(
            "SELECT grantor FROM information_schema.table_privileges "
            "WHERE table_name = 'events' AND privilege_type = 'TRIGGER' AND grantee = 'retention'"
        )
        == "app"
    )
    assert install_trigger(retention) == 0
    assert trigger_state(retention) == "enabled"
    function = rows(
        retention,
        "SELECT pg_get_userbyid(proowner) AS owner, prosecdef, proconfig FROM pg_proc WHERE proname = 'track_user_activity'",
    )
    assert function == [{"owner": "retention", "prosecdef": True, "proconfig": ["search_path=pg_catalog, pg_temp"]}]
    assert install_trigger(retention) == 0  # idempotent
    uninstall_trigger(retention)  # without owning events: dropping its function drops the trigger
    assert trigger_state(retention) == "missing"


def test_an_insert_only_role_keeps_activity_current(cluster, database, retention, writer):
    install_trigger(retention)
    assert not retention.scalar("SELECT has_schema_privilege('app_writer', 'retention', 'USAGE')")
    insert(writer, [(1, 1, T0, "a")])
    insert(writer, [(2, 1, T0 + timedelta(hours=1), "b"), (3, 2, T0, "c"), (4, None, T0, "anon")])
    insert(writer, [(5, 1, T0 - timedelta(days=1), "late")])
    assert drain_activity_queue(retention) == 4
    assert rows(retention, TRACKED) == rows(retention, RECOMPUTED)
    assert [(r["user_id"], r["last_event_type"], r["event_count"]) for r in rows(retention, TRACKED)] == [
        (1, "b", 3),
        (2, "c", 1),
    ]


SUBXACT_SQL = """
SELECT s.subxact_count, s.subxact_overflowed
FROM pg_stat_get_backend_idset() AS backend_id
CROSS JOIN LATERAL pg_stat_get_backend_subxact(backend_id) AS s
WHERE pg_stat_get_backend_pid(backend_id) = %s
"""


def _subxacts_after_100_inserts(cluster, database, writer) -> tuple[int, bool]:
    """100 single-row INSERTs in one open app transaction, its subtransactions read by another session."""
    with writer.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
        base = 1_000_000 * (1 + next(_counter))
        for n in range(100):
            cur.execute(
                "INSERT INTO events (id, user_id, occurred_at, event_type) VALUES (%s, %s, %s, 'x')", (base + n, n % 7 + 1, T0)
            )
    observer = cluster.connect(database)
    try:
        with observer.cursor() as cur:
            cur.execute(SUBXACT_SQL, (pid,))
            result = cur.fetchone()
    finally:
        observer.close()
    writer.commit()
    return result


def test_no_subtransaction_per_insert(cluster, database, retention, writer):
    install_trigger(retention)
    assert _subxacts_after_100_inserts(cluster, database, writer) == (0, False)
    assert drain_activity_queue(retention) == 100
    # The same measurement sees what a write in an EXCEPTION block costs (the trigger before issue 14).
    admin = cluster.connect(database)
    with admin.cursor() as cur:
        cur.execute("""
            CREATE TABLE public.handler_log (n int);
            CREATE FUNCTION public.with_handler() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
            BEGIN
                BEGIN INSERT INTO public.handler_log VALUES (1); EXCEPTION WHEN OTHERS THEN NULL; END;
                RETURN NULL;
            END $$;
            CREATE TRIGGER with_handler AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION public.with_handler();
        """)
    admin.commit()
    admin.close()
    assert _subxacts_after_100_inserts(cluster, database, writer) == (64, True)


def test_install_under_concurrent_inserts_equals_a_computation_from_scratch(cluster, database, retention, writer):
    """The app inserts (single rows, batches, ties, late events) all through the install; afterwards one
    drain makes user_activity equal to a recomputation from every event: none missed, none counted twice."""
    app = connect_as(cluster, database, "app")
    with app.cursor() as cur:  # history before the install, large enough that the fill takes a while
        cur.execute("""
            INSERT INTO events (id, user_id, event_type, occurred_at)
            SELECT g, CASE WHEN g % 97 = 0 THEN NULL ELSE g % 5000 + 1 END, 'old_' || (g % 5),
                   TIMESTAMPTZ '2025-03-01 00:00+00' + ((g::bigint * 7919) % 3000) * interval '1 minute'
            FROM generate_series(1, 300000) AS g
        """)
    app.commit()
    app.close()
    stop, inserted, errors = threading.Event(), [], []
    ids = itertools.count(10_000_000)

    def app_inserts():
        try:
            n = 0
            while not stop.is_set():
                n += 1
                if n % 3:
                    batch = [(next(ids), n % 6000 + 1, T0 + timedelta(seconds=n % 50), f"new_{n % 4}")]
                else:  # a batch with a tie on occurred_at and a late event
                    batch = [
                        (next(ids), n % 6000 + 1, T0, "tie"),
                        (next(ids), n % 6000 + 1, T0, "tie2"),
                        (next(ids), n % 6000 + 1, T0 - timedelta(days=3), "late"),
                        (next(ids), None, T0, "anon"),
                    ]
                insert(writer, batch)
                inserted.append((time.monotonic(), len(batch)))
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=app_inserts)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    install_trigger(retention)
    finished = time.monotonic()
    time.sleep(0.3)
    stop.set()
    thread.join(30)
    assert not errors
    assert sum(1 for moment, _ in inserted if started < moment < finished) > 10  # the app kept inserting
    drain_activity_queue(retention)
    assert rows(retention, TRACKED) == rows(retention, RECOMPUTED)
    assert retention.scalar("SELECT sum(events) FROM {rs}.trigger_event_counts") == retention.scalar(
        "SELECT count(*) FROM events WHERE user_id IS NOT NULL"
    )


def _trigger_health(instance, retention) -> dict:
    result = run_job(
        instance, "daily_retention_job", DAY, resources={"app_db": retention}, assets=["daily_activity_snapshots"], quiet=True
    )
    assert result.success
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "trigger_health")
    return {"passed": evaluation.passed, **check_metadata(result, "trigger_health")}


def test_trigger_health_fails_when_the_owner_disables_the_trigger(cluster, database, retention, writer, instance):
    install_trigger(retention)
    insert(writer, [(1, 1, T0, "a"), (2, None, T0, "anon"), (3, 2, T0 + timedelta(hours=3), "b")])
    healthy = _trigger_health(instance, retention)
    assert healthy == {
        "passed": True,
        "trigger": "enabled",
        "events_with_user": 2,
        "events_recorded_by_trigger": 2,
        "events_not_recorded": 0,
    }

    app = connect_as(cluster, database, "app")
    with app.cursor() as cur:
        cur.execute(f"ALTER TABLE events DISABLE TRIGGER {TRIGGER_NAME}")
    app.commit()
    insert(writer, [(4, 1, T0 + timedelta(hours=4), "missed")])
    disabled = _trigger_health(instance, retention)
    assert disabled == {
        "passed": False,
        "trigger": "disabled",
        "events_with_user": 3,
        "events_recorded_by_trigger": 2,
        "events_not_recorded": 1,
    }

    # Enabled again by the owner: the trigger works, but the event it missed is still missing.
    with app.cursor() as cur:
        cur.execute(f"ALTER TABLE events ENABLE TRIGGER {TRIGGER_NAME}")
    app.commit()
    app.close()
    insert(writer, [(5, 1, T0 + timedelta(hours=5), "seen")])
    reenabled = _trigger_health(instance, retention)
    assert (reenabled["passed"], reenabled["trigger"], reenabled["events_not_recorded"]) == (False, "enabled", 1)

    # `trigger install` recomputes from the events: healthy, and user_activity has the missed event.
    install_trigger(retention)
    assert _trigger_health(instance, retention)["passed"]
    assert rows(retention, TRACKED) == rows(retention, RECOMPUTED)


def test_trigger_health_fails_without_the_trigger(database, retention, instance):
    uninstall_trigger(retention)
    health = _trigger_health(instance, retention)
    assert (health["passed"], health["trigger"]) == (False, "missing")
