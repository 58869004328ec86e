"""The statement-level trigger on the app's `events` table that keeps `{rs}.user_activity` current.

It runs inside the app's INSERT, so it does one grouped upsert per statement over the transition
table, never moves `last_activity_at` backwards for a late-arriving event, ignores NULL user ids, and
catches every error: a failure is counted in `{rs}.trigger_health` and raised as a WARNING, never
propagated into the app's transaction.
"""

from __future__ import annotations

import sqlalchemy as sa

from retention_pipeline.db import run_script
from retention_pipeline.resources import AppDatabase
from retention_pipeline.schema import install_schema

TRIGGER_NAME = "retention_track_user_activity"
FUNCTION_NAME = "track_user_activity"


def _function_sql(db: AppDatabase) -> str:
    s = db.source
    user_id, occurred_at = s.q("events_user_id"), s.q("events_occurred_at")
    event_id, event_type = s.q("events_id"), s.q("events_event_type")
    # (occurred_at, id) orders events totally, so "the last event" is the same whether computed here,
    # batch by batch, or from scratch over the events table.
    upsert = """
        ON CONFLICT (user_id) DO UPDATE SET
            first_activity_at = LEAST(ua.first_activity_at, EXCLUDED.first_activity_at),
            last_event_type = CASE WHEN (EXCLUDED.last_activity_at, EXCLUDED.last_event_id)
                                        > (ua.last_activity_at, ua.last_event_id)
                                   THEN EXCLUDED.last_event_type ELSE ua.last_event_type END,
            last_event_id = CASE WHEN (EXCLUDED.last_activity_at, EXCLUDED.last_event_id)
                                      > (ua.last_activity_at, ua.last_event_id)
                                 THEN EXCLUDED.last_event_id ELSE ua.last_event_id END,
            last_activity_at = GREATEST(ua.last_activity_at, EXCLUDED.last_activity_at),
            event_count = ua.event_count + EXCLUDED.event_count;"""
    # Two paths, both one statement (benchmarks/: the trigger must cost <= 15% of a bulk insert and
    # <= 10% of single-row insert throughput):
    # - a single-row INSERT (the app's hot path) upserts its row as it is: no grouping, no sort;
    # - a multi-row INSERT groups with hash aggregation (first/last time, count per user) and finds
    #   each user's last event by joining back on the last time, the highest id breaking a tie: no sort
    #   of all the rows as ordered aggregates (array_agg ... ORDER BY) would need, only of one row per user.
    # ORDER BY user_id: a fixed lock order keeps concurrent inserts from deadlocking on user rows.
    return f"""
CREATE OR REPLACE FUNCTION {{rs}}.{FUNCTION_NAME}() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM new_events OFFSET 1) THEN
            INSERT INTO {{rs}}.user_activity AS ua
                (user_id, first_activity_at, last_activity_at, last_event_id, last_event_type, event_count)
            SELECT {user_id}::bigint, {occurred_at}, {occurred_at}, {event_id}::bigint, {event_type}::text, 1
            FROM new_events
            WHERE {user_id} IS NOT NULL AND {occurred_at} IS NOT NULL{upsert}
        ELSE
            WITH per_user AS MATERIALIZED (
                SELECT {user_id}::bigint AS user_id, min({occurred_at}) AS first_at, max({occurred_at}) AS last_at,
                       count(*) AS events
                FROM new_events
                WHERE {user_id} IS NOT NULL AND {occurred_at} IS NOT NULL
                GROUP BY 1
            )
            INSERT INTO {{rs}}.user_activity AS ua
                (user_id, first_activity_at, last_activity_at, last_event_id, last_event_type, event_count)
            SELECT DISTINCT ON (p.user_id) p.user_id, p.first_at, p.last_at, e.{event_id}::bigint, e.{event_type}::text,
                   p.events
            FROM per_user p
            JOIN new_events e ON e.{user_id}::bigint = p.user_id AND e.{occurred_at} = p.last_at
            ORDER BY p.user_id, e.{event_id}::bigint DESC{upsert}
        END IF;
    EXCEPTION WHEN OTHERS THEN
        BEGIN
            INSERT INTO {{rs}}.trigger_health AS th (id, failures, last_sqlstate, last_error)
            VALUES (1, 1, SQLSTATE, left(SQLERRM, 500))
            ON CONFLICT (id) DO UPDATE SET failures = th.failures + 1,
                last_sqlstate = EXCLUDED.last_sqlstate, last_error = EXCLUDED.last_error;
        EXCEPTION WHEN OTHERS THEN
            NULL;  -- even the bookkeeping must not break the app's insert
        END;
        RAISE WARNING 'retention_pipeline: user_activity not updated (%): %', SQLSTATE, SQLERRM;
    END;
    RETURN NULL;
END
$fn$;
"""


_RECOMPUTE_SQL = """
TRUNCATE {rs}.user_activity;
INSERT INTO {rs}.user_activity
    (user_id, first_activity_at, last_activity_at, last_event_id, last_event_type, event_count)
SELECT user_id, min(occurred_at), max(occurred_at),
       (array_agg(id ORDER BY occurred_at DESC, id DESC))[1],
       (array_agg(event_type ORDER BY occurred_at DESC, id DESC))[1],
       count(*)
FROM {rs}.source_events
WHERE user_id IS NOT NULL AND occurred_at IS NOT NULL
GROUP BY user_id;
"""


def install_trigger(db: AppDatabase) -> int:
    """Install (or re-install) the trigger and fill `user_activity` from the events already there.

    One transaction: CREATE TRIGGER locks the events table against writes until commit, so no event
    can slip between the recomputation and the trigger taking over. Returns the users tracked.
    """
    install_schema(db)
    events = db.source.q("events_table")
    with db.begin() as conn:
        run_script(conn, db.render(_function_sql(db)))
        run_script(conn, f"DROP TRIGGER IF EXISTS {TRIGGER_NAME} ON {events}")
        run_script(conn, 
            db.render(
                f"CREATE TRIGGER {TRIGGER_NAME} AFTER INSERT ON {events} "
                f"REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT "
                f"EXECUTE FUNCTION {{rs}}.{FUNCTION_NAME}()"
            )
        )
        run_script(conn, db.render(_RECOMPUTE_SQL))
        return conn.execute(sa.text(db.render("SELECT count(*) FROM {rs}.user_activity"))).scalar_one()


def uninstall_trigger(db: AppDatabase) -> None:
    """Remove the trigger and its function; `user_activity` is kept for inspection."""
    events = db.source.q("events_table")
    with db.begin() as conn:
        run_script(conn, f"DROP TRIGGER IF EXISTS {TRIGGER_NAME} ON {events}")
        run_script(conn, db.render(f"DROP FUNCTION IF EXISTS {{rs}}.{FUNCTION_NAME}()"))


def trigger_installed(db: AppDatabase) -> bool:
    return bool(
        db.scalar(
            "SELECT count(*) FROM pg_trigger WHERE tgname = :name AND NOT tgisinternal",
            {"name": TRIGGER_NAME},
        )
    )
