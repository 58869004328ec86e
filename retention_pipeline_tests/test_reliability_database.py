"""Database faults (issue 8) on a SEPARATE embedded PostgreSQL, never the session's server:
PostgreSQL restarted, or the materializing backend terminated, in the middle of a 90-day backfill of
daily_activity_snapshots; and two overlapping backfills of the same range at once.

"In the middle" is made exact rather than timed: a blocker session holds an uncommitted row with a
key the backfill will insert, so the backfill's transaction has already deleted the range's old rows
and inserted part of the new ones when it stops and waits; that is when the fault strikes.
Every outcome is compared with a clean run on a copy of the same data: rows of the range are either
all old or all new, never half-written, and a re-run equals the clean run.

RELIABILITY_BREAK=non_atomic_snapshot runs these tests against a deliberately non-atomic snapshot.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from datetime import UTC, date, datetime

import pytest
from dagster import DagsterInstance

from retention_pipeline.local import demo_data
from retention_pipeline.local.embedded import EmbeddedPostgres
from retention_pipeline.local.runner import run_job
from retention_pipeline.resources import AppDatabase
from retention_pipeline.schema import install_schema
from retention_pipeline.settings import STATE_DIR
from retention_pipeline_tests import faults
from retention_pipeline_tests.faults import BREAK, create_database, forkserver, record, wait_until

FIRST, LAST = date(2025, 3, 1), date(2025, 5, 29)  # 90 daily partitions
DAYS = (LAST - FIRST).days + 1
USERS = 60
# The (day, user) the blocker holds: absent from the old rows, present in the new ones.
BLOCKED_KEY = (LAST, 7)
COLUMNS = (
    "activity_date, user_id, event_count, distinct_event_types, sessions_started, session_minutes, "
    "first_event_at, last_event_at, top_event_type"
)


@pytest.fixture(scope="module")
def db_server():
    """A separate embedded PostgreSQL that these tests may stop, restart and terminate backends of."""
    pgdata = STATE_DIR / f"test-reliability-pg-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(pgdata, tuning={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
    server.start()
    yield server
    server.stop()
    shutil.rmtree(pgdata, ignore_errors=True)
    pgdata.with_name(pgdata.name + ".owner.lock").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def world(db_server):
    """90 days of events and sessions of 60 users (v1), the range materialized once: the old rows."""
    name = create_database(db_server, "world")
    conn = db_server.connect(name)
    demo_data.create_app_tables(conn)
    conn.commit()
    conn.close()
    db = AppDatabase(url=db_server.url(name))
    install_schema(db)
    db.execute(
        "INSERT INTO users (id, email, name, created_at) "
        "SELECT g, 'u' || g || '@example.com', 'U ' || g, '2025-01-01T00:00:00Z' FROM generate_series(1, :n) g",
        {"n": USERS},
    )
    db.execute(
        "INSERT INTO events (id, user_id, event_type, occurred_at, properties) "
        "SELECT row_number() OVER (), u, (ARRAY['login', 'comment', 'create_task'])[1 + (u + d) % 3], "
        "       CAST(:first AS timestamptz) + make_interval(days => d, hours => 8 + (u % 10), mins => k * 7), NULL "
        "FROM generate_series(1, :n) u, generate_series(0, :days - 1) d, generate_series(0, (u + d) % 4) k "
        "WHERE NOT (u = :blocked_user AND d = :days - 1)",  # v1 has no row for BLOCKED_KEY; v2 has
        {"blocked_user": BLOCKED_KEY[1], "n": USERS, "days": DAYS, "first": datetime.combine(FIRST, datetime.min.time(), UTC)},
    )
    db.execute(
        "INSERT INTO auth_sessions (id, user_id, started_at, last_seen_at) "
        "SELECT row_number() OVER (), u, CAST(:first AS timestamptz) + make_interval(days => d, hours => 9), "
        "       CAST(:first AS timestamptz) + make_interval(days => d, hours => 9, mins => u % 50) "
        "FROM generate_series(1, :n) u, generate_series(0, :days - 1, 2) d",
        {"n": USERS, "days": DAYS, "first": datetime.combine(FIRST, datetime.min.time(), UTC)},
    )
    with DagsterInstance.ephemeral() as instance:
        assert backfill(instance, db).success
    db.engine().dispose()
    return name


def backfill(instance, db: AppDatabase, raise_on_error: bool = True):
    try:
        return run_job(
            instance,
            "daily_retention_job",
            FIRST.isoformat(),
            LAST.isoformat(),
            resources={"app_db": db},
            assets=["daily_activity_snapshots"],
            quiet=True,
        )
    except Exception:
        if raise_on_error:
            raise
        return None


def add_late_events(db: AppDatabase) -> None:
    """v2 of the data: one more event for every user on every day of the range (every row changes)."""
    db.execute(
        "INSERT INTO events (id, user_id, event_type, occurred_at) "
        "SELECT 10000000 + row_number() OVER (), u, 'upload_file', CAST(:first AS timestamptz) + make_interval(days => d, hours => 20) "
        "FROM generate_series(1, :n) u, generate_series(0, :days - 1) d",
        {"n": USERS, "days": DAYS, "first": datetime.combine(FIRST, datetime.min.time(), UTC)},
    )


def range_rows(server: EmbeddedPostgres, name: str, lock: bool = False) -> list[tuple]:
    """The rows of the range; with lock=True under an exclusive lock taken first, so a retry waiting to
    write cannot change them while they are read."""
    conn = server.connect(name)
    try:
        with conn.cursor() as cur:
            if lock:
                cur.execute("LOCK TABLE retention.daily_activity IN ACCESS EXCLUSIVE MODE")
            cur.execute(
                f"SELECT {COLUMNS} FROM retention.daily_activity WHERE activity_date BETWEEN %s AND %s "
                "ORDER BY activity_date, user_id",
                (FIRST, LAST),
            )
            return cur.fetchall()
    finally:
        conn.rollback()
        conn.close()


class Case:
    """A copy of the world with v2 data, the old rows (v1) in place, and the clean run's rows (v2)."""

    def __init__(self, server: EmbeddedPostgres, world: str, tag: str):
        self.server = server
        self.name = create_database(server, f"{tag}_{uuid.uuid4().hex[:6]}", template=world)
        self.db = AppDatabase(url=server.url(self.name))
        self.old = range_rows(server, self.name)
        add_late_events(self.db)
        self.db.engine().dispose()
        clean = create_database(server, f"clean_{uuid.uuid4().hex[:6]}", template=self.name)
        clean_db = AppDatabase(url=server.url(clean))
        with DagsterInstance.ephemeral() as instance:
            assert backfill(instance, clean_db).success
        clean_db.engine().dispose()
        self.new = range_rows(server, clean)
        server.drop_database(clean)
        assert len(self.old) + 1 == len(self.new) == USERS * DAYS
        assert not set(self.old) & set(self.new), "every row of the range must change between v1 and v2"
        self.blocker = None

    def block(self) -> None:
        """Hold, uncommitted, a row with a key the backfill inserts: its INSERT will wait there."""
        self.blocker = self.server.connect(self.name)
        with self.blocker.cursor() as cur:
            cur.execute(
                "INSERT INTO retention.daily_activity (activity_date, user_id, event_count, distinct_event_types, "
                "sessions_started, session_minutes) VALUES (%s, %s, 0, 0, 0, 0)",
                BLOCKED_KEY,
            )

    def unblock(self) -> None:
        if self.blocker is not None:
            try:
                self.blocker.rollback()
                self.blocker.close()
            except Exception:  # the restart already ended it
                pass
            self.blocker = None

    def waiting_backfills(self) -> list[dict]:
        return [
            b
            for b in faults.backends(self.server, self.name)
            if b["application_name"] == "retention_pipeline" and b["wait_event_type"] == "Lock"
        ]

    def verdict(self, rows: list[tuple]) -> str:
        return "old" if rows == self.old else "new" if rows == self.new else "HALF-WRITTEN"

    def drop(self) -> None:
        self.unblock()
        self.db.engine().dispose()
        self.server.drop_database(self.name)


def in_thread(target) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run():
        try:
            box["result"] = target()
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def step_events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


@pytest.fixture
def broken(monkeypatch):
    if BREAK == "non_atomic_snapshot":
        faults.apply_break(BREAK, monkeypatch.setattr)


def test_postgres_restarted_mid_backfill_rolls_back_and_the_retry_equals_a_clean_run(db_server, world, broken):
    case = Case(db_server, world, "restart")
    try:
        case.block()
        with DagsterInstance.ephemeral() as instance:
            thread, box = in_thread(lambda: backfill(instance, case.db))
            wait_until(case.waiting_backfills, 60, "the backfill to be mid-INSERT")
            restarted_at = time.monotonic()
            db_server.stop()  # pg_ctl -m fast stop: every session is cut off, open transactions roll back
            db_server.start()
            after_crash = range_rows(db_server, case.name, lock=True)  # before the retry can write
            restart_seconds = time.monotonic() - restarted_at
            thread.join(120)
            assert not thread.is_alive()
            result = box.get("result")
            assert result is not None and result.success, box
            retries = step_events(result, "STEP_UP_FOR_RETRY")
            final = range_rows(db_server, case.name)
        record(
            "database_faults",
            "PostgreSQL restarted (pg_ctl -m fast stop + start) mid-INSERT",
            {
                "faults": "1 restart",
                "attempts": 1 + len(retries),
                "days": DAYS,
                "rows_checked": len(final),
                "after_crash": case.verdict(after_crash),
                "final": case.verdict(final),
                "restart_seconds": round(restart_seconds, 2),
                "rows_lost": len(set(case.new) - set(final)),
            },
        )
        assert case.verdict(after_crash) in ("old", "new"), "the crash left the range half-written"
        assert retries, "the run must have met the restart"
        assert "connection" in str(retries[0].event_specific_data.error).lower()
        assert final == case.new, "the retried backfill differs from a clean run"
    finally:
        case.drop()


def test_a_terminated_backend_fails_the_run_clearly_with_the_old_rows_intact_and_a_rerun_equals_a_clean_run(
    db_server, world, broken
):
    """The backend is terminated on every attempt (pg_terminate_backend from another session), so the
    retries run out: the run fails, saying what happened; the range still holds the old rows."""
    case = Case(db_server, world, "terminate")
    terminated = 0
    try:
        case.block()
        with DagsterInstance.ephemeral() as instance:
            thread, box = in_thread(lambda: backfill(instance, case.db, raise_on_error=False) or "failed")
            observed = []
            while thread.is_alive():
                waiting = case.waiting_backfills()
                if waiting:
                    conn = db_server.connect()
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute("SELECT pg_terminate_backend(%s)", (waiting[0]["pid"],))
                    conn.close()
                    terminated += 1
                    # No lock needed: while the blocker holds its row, no attempt can commit.
                    observed.append(case.verdict(range_rows(db_server, case.name)))
                time.sleep(0.02)
            assert box.get("result") == "failed", box
            runs = instance.get_runs()
            failure = [
                e
                for e in instance.all_logs(runs[0].run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
            ]
            assert len(failure) == 1
            message = str(failure[0].dagster_event.event_specific_data.error)
            after_failure = range_rows(db_server, case.name)
            case.unblock()
            assert backfill(instance, case.db).success
            final = range_rows(db_server, case.name)
        record(
            "database_faults",
            "backend terminated (pg_terminate_backend) on every attempt",
            {
                "faults": f"{terminated} terminations",
                "attempts": terminated,
                "days": DAYS,
                "rows_checked": len(final),
                "after_each_termination": observed,
                "after_failure": case.verdict(after_failure),
                "final": case.verdict(final),
                "error": next((line for line in message.splitlines() if "connection to PostgreSQL" in line), message)[:400],
                "rows_lost": len(set(case.new) - set(final)),
            },
        )
        assert terminated == 4  # the first attempt and 3 retries
        assert set(observed) == {"old"} and case.verdict(after_failure) == "old", observed
        # A clear error: what happened, that nothing was written, what to do; not a wall of SQL.
        assert "The connection to PostgreSQL was lost" in message and "Nothing was written" in message, message
        assert "INSERT INTO" not in message
        assert final == case.new
    finally:
        case.drop()


def test_the_atomicity_check_catches_a_snapshot_that_commits_between_delete_and_insert(db_server, world, monkeypatch):
    """The check is not vacuous: with a COMMIT between the DELETE and the INSERT, the crash leaves the
    range empty, and the observation right after the fault says so."""
    faults.apply_break("non_atomic_snapshot", monkeypatch.setattr)
    case = Case(db_server, world, "broken")
    try:
        case.block()
        with DagsterInstance.ephemeral() as instance:
            thread, box = in_thread(lambda: backfill(instance, case.db, raise_on_error=False))
            waiting = wait_until(case.waiting_backfills, 60, "the backfill to be mid-INSERT")
            conn = db_server.connect()
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s)", (waiting[0]["pid"],))
            conn.close()
            # While the blocker holds its row no attempt can commit: what is there now is what the fault left.
            after_crash = range_rows(db_server, case.name)
            case.unblock()
            thread.join(120)
        verdict = case.verdict(after_crash)
        record(
            "broken_variants",
            "snapshot committing between its DELETE and INSERT (backend terminated mid-INSERT)",
            {"detected": f"range {verdict} after the fault: {len(after_crash)} of {len(case.old)} rows present"},
        )
        assert verdict == "HALF-WRITTEN" and len(after_crash) < len(case.old)
    finally:
        case.drop()


def test_two_overlapping_backfills_of_the_same_range_equal_one_clean_run(db_server, world):
    """Two runs replace the same 90 days at once. Both are held mid-statement until both are inside
    the database, so they really overlap; then both must succeed, without needing a retry, and leave
    exactly the rows of one clean run."""
    rounds = int(os.environ.get("RELIABILITY_BACKFILL_ROUNDS", "2"))
    for round_ in range(rounds):
        case = Case(db_server, world, f"overlap{round_}")
        try:
            case.block()
            ctx = forkserver()
            results = ctx.Queue()
            children = [
                ctx.Process(
                    target=faults.child_snapshot_run,
                    args=(case.db.url, FIRST.isoformat(), LAST.isoformat()),
                    kwargs={"results": results, "break_mode": BREAK if BREAK == "no_replace_lock" else ""},
                )
                for _ in range(2)
            ]
            for child in children:
                child.start()
            wait_until(lambda case=case: len(case.waiting_backfills()) == 2, 90, "both backfills to be inside the database")
            case.unblock()
            for child in children:
                child.join(120)
            outcomes = [results.get(timeout=5) for _ in children]
            final = range_rows(db_server, case.name)
            record(
                "concurrent_backfills",
                f"round_{round_}",
                {
                    "runs": outcomes,
                    "rows_checked": len(final),
                    "rows_lost": len(set(case.new) - set(final)),
                    "rows_differing": len(set(final) ^ set(case.new)),
                    "final": case.verdict(final),
                },
            )
            assert [o["success"] for o in outcomes] == [True, True], outcomes
            assert final == case.new
            assert [o["retries"] for o in outcomes] == [0, 0], f"a backfill failed on the other's rows first: {outcomes}"
        finally:
            case.drop()


def test_a_statement_timeout_fails_at_once_without_a_retry_and_writes_nothing(db_server, world):
    """A backfill stuck behind a lock past `statement_timeout_seconds` is cancelled: the run fails at
    once (a timeout is not transient; retrying would only wait again), saying what to change."""
    case = Case(db_server, world, "timeout")
    try:
        case.block()
        impatient = AppDatabase(url=case.db.url, statement_timeout_seconds=1)
        with DagsterInstance.ephemeral() as instance:
            assert backfill(instance, impatient, raise_on_error=False) is None
            run = instance.get_runs()[0]
            logs = [e.dagster_event for e in instance.all_logs(run.run_id) if e.dagster_event]
        impatient.engine().dispose()
        failures = [e for e in logs if e.event_type_value == "STEP_FAILURE"]
        assert len(failures) == 1 and not [e for e in logs if e.event_type_value == "STEP_UP_FOR_RETRY"]
        message = str(failures[0].event_specific_data.error)
        after = range_rows(db_server, case.name)
        record(
            "database_faults",
            "statement timeout (1 s) while stuck behind a lock",
            {
                "faults": "1 timeout",
                "attempts": 1,
                "days": DAYS,
                "rows_checked": len(after),
                "after_failure": case.verdict(after),
                "error": next((line for line in message.splitlines() if "statement timeout" in line), message)[:400],
                "rows_lost": 0,
            },
        )
        assert "exceeded the statement timeout of 1 s" in message and "Nothing was written" in message
        assert after == case.old
    finally:
        case.drop()
