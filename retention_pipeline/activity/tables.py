"""Tables of the activity domain, as they are now: what a fresh install creates (`schema.py` orders the
domains; `migrations/` takes an existing install here, and a test keeps both paths identical)."""

ACTIVITY_TABLES_DDL = """
-- Kept current by the drain of the trigger's queue (activity/trigger.py). Room on every page for the
-- drain's updates to stay HOT (no index entry per update, less bloat).
CREATE TABLE {rs}.user_activity (
    user_id            bigint PRIMARY KEY,
    first_activity_at  timestamptz NOT NULL,
    last_activity_at   timestamptz NOT NULL,
    last_event_id      bigint,
    last_event_type    text,
    event_count        bigint NOT NULL
) WITH (fillfactor = 70);
-- The trigger's only write, inside the app's INSERT: append-only, no index, no constraint an app row
-- could violate. A row with a user is one INSERT statement's activity of that user; a row without
-- one is how many events of the 15 minutes starting at first_at the statement recorded. Never
-- truncated by vacuum: that takes a lock the app's inserts would wait for.
CREATE TABLE {rs}.activity_queue (
    user_id          bigint,
    first_at         timestamptz,
    last_at          timestamptz,
    last_event_id    bigint,
    last_event_type  text,
    events           bigint,
    -- One event of a single-row INSERT, counted in the bucket of first_at (no bucket row of its own).
    single_event     boolean NOT NULL DEFAULT false
) WITH (vacuum_truncate = false);
-- Events the trigger recorded, per 15 minutes of occurred_at (the drain and the install keep it).
CREATE TABLE {rs}.trigger_event_counts (
    bucket_start  timestamptz PRIMARY KEY,
    events        bigint NOT NULL
);
CREATE TABLE {rs}.daily_activity (
    activity_date        date NOT NULL,
    user_id              bigint NOT NULL,
    event_count          integer NOT NULL CHECK (event_count >= 0),
    distinct_event_types integer NOT NULL CHECK (distinct_event_types >= 0),
    sessions_started     integer NOT NULL CHECK (sessions_started >= 0),
    session_minutes      numeric(12, 2) NOT NULL CHECK (session_minutes >= 0),
    first_event_at       timestamptz,
    last_event_at        timestamptz,
    top_event_type       text,
    PRIMARY KEY (activity_date, user_id)
);
CREATE INDEX daily_activity_user_date ON {rs}.daily_activity (user_id, activity_date);
"""
