"""The statement-level trigger on the app's `events` table, and the drain that keeps `{rs}.user_activity` current.

The trigger runs inside the app's INSERT, so it does the least that can be done there: it appends the
statement's activity per user (first and last time, last event, count; NULL user ids skipped) and its
event count per 15 minutes to `{rs}.activity_queue`, an append-only table without indexes or
constraints. It is `SECURITY DEFINER`, owned by the pipeline's role, with a pinned `search_path`, so an
app role that may only INSERT into `events` needs no rights on the `retention` schema. It has no exception handler (no subtransaction per statement) because nothing
in it can fail for a reason the app's own INSERT would not: no unique key, no row lock, no
constraint, and casts from the contract's column types that cannot fail.

The pipeline drains the queue (`drain_activity_queue`) before it reads `user_activity`: one set-based
statement folds the queued rows into `user_activity` and into `{rs}.trigger_event_counts`, and deletes
them. The counts let the `trigger_health` check prove that every event of a day reached the pipeline.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from retention_pipeline.db import run_script
from retention_pipeline.resources import AppDatabase
from retention_pipeline.schema import install_schema

TRIGGER_NAME = "retention_track_user_activity"
FUNCTION_NAME = "track_user_activity"

# Arbitrary constant that identifies "user_activity is being written from the queue" among advisory locks.
DRAIN_LOCK_KEY = 7_302_455_119

# Attaching or removing the trigger needs a lock on `events` that conflicts with the app's inserts, and
# while that lock request waits, every new insert queues behind it. A short lock_timeout bounds the
# app's wait; the attempt is retried after a growing pause, so a busy moment only delays the install.
ATTACH_LOCK_TIMEOUT_MS = 500
ATTACH_ATTEMPTS = 6
ATTACH_FIRST_PAUSE_SECONDS = 0.5
_LOCK_NOT_AVAILABLE = "55P03"

# Event counts are kept per 15 minutes of occurred_at: every timezone's midnight falls on such a bucket's
# start, so any day of any project timezone is a whole number of buckets.
BUCKET = "date_bin('15 minutes', {t}, TIMESTAMPTZ '2000-01-01 00:00+00')"


class TriggerLockError(RuntimeError):
    """The lock on the events table was not granted within the attempts; nothing was changed."""


def _function_sql(db: AppDatabase) -> str:
    s = db.source
    user_id, occurred_at = s.q("events_user_id"), s.q("events_occurred_at")
    event_id, event_type = s.q("events_id"), s.q("events_event_type")
    bucket = BUCKET.format(t=f"{occurred_at}::timestamptz")
    # Rows with a user carry activity; rows without one carry how many events of a 15-minute bucket the
    # statement recorded (first_at = the bucket's start). Two paths, both one INSERT:
    # - a single-row INSERT (the app's hot path) appends one row, marked single_event: its one event counts
    #   in the bucket of its own time. A second row, for the bucket, made the trigger a third dearer for the
    #   app (14 against 9.4 microseconds per insert, timed inside the backend);
    # - a multi-row INSERT appends one row per user (first/last time, count by hash aggregation; the last
    #   event found by joining back on the last time, the highest id breaking a tie, so only one row per
    #   user is sorted) and one per bucket: a 1,000,000-row import appends thousands of rows, not millions.
    return f"""
CREATE OR REPLACE FUNCTION {{rs}}.{FUNCTION_NAME}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_events OFFSET 1) THEN
        INSERT INTO {{rs}}.activity_queue
            (user_id, first_at, last_at, last_event_id, last_event_type, events, single_event)
        SELECT {user_id}::bigint, {occurred_at}::timestamptz, {occurred_at}::timestamptz, {event_id}::bigint,
               {event_type}::text, 1, true
        FROM new_events WHERE {user_id} IS NOT NULL AND {occurred_at} IS NOT NULL;
    ELSE
        WITH per_user AS MATERIALIZED (
            SELECT {user_id}::bigint AS user_id, min({occurred_at}::timestamptz) AS first_at,
                   max({occurred_at}::timestamptz) AS last_at, count(*) AS events
            FROM new_events WHERE {user_id} IS NOT NULL AND {occurred_at} IS NOT NULL
            GROUP BY 1
        ), last_events AS (
            SELECT DISTINCT ON (p.user_id) p.user_id, p.first_at, p.last_at, e.{event_id}::bigint AS last_event_id,
                   e.{event_type}::text AS last_event_type, p.events
            FROM per_user p
            JOIN new_events e ON e.{user_id}::bigint = p.user_id AND e.{occurred_at}::timestamptz = p.last_at
            ORDER BY p.user_id, e.{event_id}::bigint DESC
        )
        INSERT INTO {{rs}}.activity_queue (user_id, first_at, last_at, last_event_id, last_event_type, events)
        SELECT user_id, first_at, last_at, last_event_id, last_event_type, events FROM last_events
        UNION ALL
        SELECT NULL, bucket_start, bucket_start, NULL, NULL, count(*)
        FROM (SELECT {bucket} AS bucket_start FROM new_events
              WHERE {user_id} IS NOT NULL AND {occurred_at} IS NOT NULL) AS recorded
        GROUP BY bucket_start;
    END IF;
    RETURN NULL;
END
$fn$;
REVOKE ALL ON FUNCTION {{rs}}.{FUNCTION_NAME}() FROM PUBLIC;
"""


# The queue rows that count events for trigger_event_counts: a multi-row INSERT's bucket rows (no user,
# first_at = the bucket's start) and a single-row INSERT's one row (its event, in the bucket of first_at).
QUEUED_COUNT_ROW = "(user_id IS NULL OR single_event)"
QUEUED_BUCKET = f"CASE WHEN single_event THEN {BUCKET.format(t='first_at')} ELSE first_at END"

# One statement, so one snapshot: the rows it deletes are exactly the rows it folds in. (occurred_at, id)
# orders events totally, so "the last event" is the same whether folded batch by batch or computed from
# scratch; an older late-arriving event never moves last_activity_at backwards.
_DRAIN_SQL = """
WITH drained AS (
    DELETE FROM {rs}.activity_queue
    RETURNING user_id, first_at, last_at, last_event_id, last_event_type, events, single_event
), bucketed AS (
    SELECT QUEUED_BUCKET AS bucket_start, events
    FROM drained WHERE QUEUED_COUNT_ROW
), counted AS (
    INSERT INTO {rs}.trigger_event_counts AS c (bucket_start, events)
    SELECT bucket_start, sum(events) FROM bucketed GROUP BY 1
    ON CONFLICT (bucket_start) DO UPDATE SET events = c.events + EXCLUDED.events
), per_user AS (
    -- One sort, no join: the row statistics of a just-filled queue are often those of an empty one, and a
    -- join of two per-user aggregates then became a nested loop (452 s for 300,000 queued rows).
    SELECT DISTINCT ON (user_id) user_id, last_event_id, last_event_type,
           min(first_at) OVER user_rows AS user_first_at, max(last_at) OVER user_rows AS user_last_at,
           sum(events) OVER user_rows AS user_events
    FROM drained WHERE user_id IS NOT NULL
    WINDOW user_rows AS (PARTITION BY user_id)
    ORDER BY user_id, last_at DESC, last_event_id DESC
), folded AS (
    INSERT INTO {rs}.user_activity AS ua
        (user_id, first_activity_at, last_activity_at, last_event_id, last_event_type, event_count)
    SELECT user_id, user_first_at, user_last_at, last_event_id, last_event_type, user_events
    FROM per_user
    ON CONFLICT (user_id) DO UPDATE SET
        first_activity_at = LEAST(ua.first_activity_at, EXCLUDED.first_activity_at),
        last_event_type = CASE WHEN (EXCLUDED.last_activity_at, EXCLUDED.last_event_id)
                                    > (ua.last_activity_at, ua.last_event_id)
                               THEN EXCLUDED.last_event_type ELSE ua.last_event_type END,
        last_event_id = CASE WHEN (EXCLUDED.last_activity_at, EXCLUDED.last_event_id)
                                  > (ua.last_activity_at, ua.last_event_id)
                             THEN EXCLUDED.last_event_id ELSE ua.last_event_id END,
        last_activity_at = GREATEST(ua.last_activity_at, EXCLUDED.last_activity_at),
        event_count = ua.event_count + EXCLUDED.event_count
)
SELECT COALESCE(sum(events), 0)::bigint FROM bucketed
""".replace("QUEUED_BUCKET", QUEUED_BUCKET).replace("QUEUED_COUNT_ROW", QUEUED_COUNT_ROW)

# From scratch, in one REPEATABLE READ snapshot: every event visible in it is counted here, and its
# queue row (same app transaction, so visible in the same snapshot) is deleted; queue rows of events
# committed after the snapshot stay for the drain. Together: exactly the from-scratch result, no event
# counted twice or missed.
_FILL_SQL = f"""
TRUNCATE {{rs}}.user_activity, {{rs}}.trigger_event_counts;
INSERT INTO {{rs}}.user_activity
    (user_id, first_activity_at, last_activity_at, last_event_id, last_event_type, event_count)
SELECT user_id, min(occurred_at), max(occurred_at),
       (array_agg(id ORDER BY occurred_at DESC, id DESC))[1],
       (array_agg(event_type ORDER BY occurred_at DESC, id DESC))[1],
       count(*)
FROM {{rs}}.source_events
WHERE user_id IS NOT NULL AND occurred_at IS NOT NULL
GROUP BY user_id;
INSERT INTO {{rs}}.trigger_event_counts (bucket_start, events)
SELECT {BUCKET.format(t="occurred_at")}, count(*)
FROM {{rs}}.source_events
WHERE user_id IS NOT NULL AND occurred_at IS NOT NULL
GROUP BY 1;
DELETE FROM {{rs}}.activity_queue;
"""


def install_trigger(db: AppDatabase) -> int:
    """Install (or re-install) the trigger and fill `user_activity` from the events already there.

    Needs TRIGGER and SELECT on `events`, not ownership. The app's inserts wait only for the brief lock
    that attaches the trigger; the fill reads the events in a snapshot afterwards and the drain folds in
    what arrived since. Re-installing repairs a disabled trigger and recomputes `user_activity`.
    Returns the users tracked.
    """
    install_schema(db)
    replace_trigger_function(db)
    if not _trigger_attached_and_enabled(db):
        events = db.source.q("events_table")
        _with_short_lock(
            db,
            db.render(
                f"CREATE OR REPLACE TRIGGER {TRIGGER_NAME} AFTER INSERT ON {events} "
                f"REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT "
                f"EXECUTE FUNCTION {{rs}}.{FUNCTION_NAME}()"
            ),
        )
    _fill_from_events(db)
    drain_activity_queue(db)
    return db.scalar("SELECT count(*) FROM {rs}.user_activity")


def replace_trigger_function(db: AppDatabase) -> None:
    """(Re)create the trigger's function as this code writes it; an attached trigger calls it from its next
    statement on. Takes no lock on the events table."""
    with db.begin() as conn:
        run_script(conn, db.render(_function_sql(db)))


def uninstall_trigger(db: AppDatabase) -> None:
    """Remove the trigger and its function, then fold what it queued; `user_activity` is kept for inspection.

    Dropping the function drops the trigger with it: DROP TRIGGER would need the table's ownership."""
    _with_short_lock(db, db.render(f"DROP FUNCTION IF EXISTS {{rs}}.{FUNCTION_NAME}() CASCADE"))
    if db.scalar("SELECT to_regclass(:queue) IS NOT NULL", {"queue": db.render("{rs}.activity_queue")}):
        drain_activity_queue(db)


def drain_activity_queue(db: AppDatabase) -> int:
    """Fold the queued activity into `user_activity` and the event counts, in one transaction; returns the
    number of events it accounted for.

    Safe to run concurrently with itself, the app's inserts and an install (they take turns on an
    advisory lock; the app's inserts only append, which nothing here waits for or blocks)."""
    with db.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": DRAIN_LOCK_KEY})
        return conn.execute(sa.text(db.render(_DRAIN_SQL))).scalar_one()


def trigger_state(db: AppDatabase) -> str:
    """'enabled', 'disabled', 'missing', or 'foreign' (a trigger of that name calls another function)."""
    row = db.fetch_all(
        "SELECT t.tgenabled, t.tgfoid = to_regprocedure(:function) AS ours FROM pg_trigger t "
        "WHERE t.tgrelid = to_regclass(:events) AND t.tgname = :name",
        {"events": db.source.q("events_table"), "name": TRIGGER_NAME, "function": db.render(f"{{rs}}.{FUNCTION_NAME}()")},
    )
    if not row:
        return "missing"
    if not row[0].ours:
        return "foreign"
    # 'O' fires in normal sessions; 'D' is disabled, 'R' fires only on replicas: both miss the app's inserts.
    return "enabled" if row[0].tgenabled in ("O", "A") else "disabled"


def _trigger_attached_and_enabled(db: AppDatabase) -> bool:
    return trigger_state(db) == "enabled"


def _with_short_lock(db: AppDatabase, statement: str) -> None:
    pause = ATTACH_FIRST_PAUSE_SECONDS
    for attempt in range(1, ATTACH_ATTEMPTS + 1):
        try:
            with db.begin() as conn:
                conn.execute(sa.text(f"SET LOCAL lock_timeout = {ATTACH_LOCK_TIMEOUT_MS}"))
                run_script(conn, statement)
            return
        except OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) != _LOCK_NOT_AVAILABLE:
                raise
        if attempt < ATTACH_ATTEMPTS:
            time.sleep(pause)
            pause *= 2
    raise TriggerLockError(
        f"Could not lock the events table within {ATTACH_LOCK_TIMEOUT_MS} ms in {ATTACH_ATTEMPTS} attempts: "
        "other transactions keep it locked. Nothing was changed; run the command again at a quieter moment."
    )


def _fill_from_events(db: AppDatabase) -> None:
    """Recompute `user_activity` and the event counts from the events in one snapshot, taken after the
    drains stopped (a drain between the snapshot and the commit would fold rows this then overwrites)."""
    with db.engine().connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": DRAIN_LOCK_KEY})
        conn.commit()
        try:
            conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                run_script(conn, db.render(_FILL_SQL))
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": DRAIN_LOCK_KEY})
            conn.commit()
