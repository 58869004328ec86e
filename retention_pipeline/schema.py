"""The project's own schema: every table the pipeline writes, and views over the app's tables.

The source views map the configured (validated, quoted) table and column names onto canonical ones,
so every other query reads `{rs}.source_events` etc. PostgreSQL inlines such views, so they cost
nothing at query time. Installing is idempotent and serialised by an advisory lock, because several
run workers may start at once.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from retention_pipeline.billing.tables import BILLING_TABLES_DDL
from retention_pipeline.db import run_script
from retention_pipeline.outcomes.tables import OUTCOME_TABLES_DDL
from retention_pipeline.outreach.tables import OUTREACH_TABLES_DDL
from retention_pipeline.resources import AppDatabase

# Arbitrary constant that identifies "schema installation" among advisory locks.
_INSTALL_LOCK_KEY = 7_302_455_118

TABLES_DDL = """
CREATE TABLE IF NOT EXISTS {rs}.user_activity (
    user_id            bigint PRIMARY KEY,
    first_activity_at  timestamptz NOT NULL,
    last_activity_at   timestamptz NOT NULL,
    last_event_id      bigint,
    last_event_type    text,
    event_count        bigint NOT NULL
) WITH (fillfactor = 70);
-- Room on every page for the drain's updates to stay HOT (no index entry per update, less bloat).
-- Existing tables take it for the pages they fill from now on (no rewrite, no lock).
ALTER TABLE {rs}.user_activity SET (fillfactor = 70);
-- The trigger's errors used to be counted here; the trigger now cannot fail (activity/trigger.py).
DROP TABLE IF EXISTS {rs}.trigger_health;
-- The trigger's only write, inside the app's INSERT: append-only, no index, no constraint an app row
-- could violate. A row with a user is one INSERT statement's activity of that user; a row without
-- one is how many events of the 15 minutes starting at first_at the statement recorded. Never
-- truncated by vacuum: that takes a lock the app's inserts would wait for.
CREATE TABLE IF NOT EXISTS {rs}.activity_queue (
    user_id          bigint,
    first_at         timestamptz,
    last_at          timestamptz,
    last_event_id    bigint,
    last_event_type  text,
    events           bigint
) WITH (vacuum_truncate = false);
-- Events the trigger recorded, per 15 minutes of occurred_at (the drain and the install keep it).
CREATE TABLE IF NOT EXISTS {rs}.trigger_event_counts (
    bucket_start  timestamptz PRIMARY KEY,
    events        bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {rs}.daily_activity (
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
CREATE INDEX IF NOT EXISTS daily_activity_user_date ON {rs}.daily_activity (user_id, activity_date);
CREATE TABLE IF NOT EXISTS {rs}.weekly_segments (
    week_start            date NOT NULL,
    user_id               bigint NOT NULL,
    segment               text NOT NULL,
    previous_segment      text,
    active_days           integer NOT NULL,
    event_count           integer NOT NULL,
    previous_event_count  integer NOT NULL,
    sessions_started      integer NOT NULL,
    session_minutes       numeric(12, 2) NOT NULL,
    last_activity_date    date,
    PRIMARY KEY (week_start, user_id)
);
CREATE TABLE IF NOT EXISTS {rs}.dormant_users (
    as_of_date          date NOT NULL,
    user_id             bigint NOT NULL,
    email               text,
    name                text,
    signed_up_at        timestamptz NOT NULL,
    last_activity_at    timestamptz NOT NULL,
    days_inactive       integer NOT NULL CHECK (days_inactive >= 0),
    reason              text NOT NULL,
    recent_events       integer NOT NULL,
    previous_events     integer NOT NULL,
    last_actions        jsonb NOT NULL,
    subscription_status text NOT NULL,     -- best current Stripe status, 'none' without a subscription
    plan_name           text,
    mrr_cents           bigint NOT NULL,
    cancel_at_period_end boolean NOT NULL,
    targeted            boolean NOT NULL,  -- passes the targeting policy (DormancyThresholds)
    PRIMARY KEY (as_of_date, user_id)
);
"""


def _source_views_ddl(db: AppDatabase) -> str:
    s = db.source
    return f"""
DROP VIEW IF EXISTS {{rs}}.source_users, {{rs}}.source_events, {{rs}}.source_auth_sessions;
CREATE VIEW {{rs}}.source_users AS
    SELECT {s.q('users_id')}::bigint AS id, {s.q('users_email')}::text AS email, {s.q('users_name')}::text AS name,
           {s.q('users_created_at')}::timestamptz AS created_at,
           {s.q('users_stripe_customer_id')}::text AS stripe_customer_id
    FROM {s.q('users_table')};
CREATE VIEW {{rs}}.source_events AS
    SELECT {s.q('events_id')}::bigint AS id, {s.q('events_user_id')}::bigint AS user_id,
           {s.q('events_event_type')}::text AS event_type, {s.q('events_occurred_at')}::timestamptz AS occurred_at,
           {s.q('events_properties')}::jsonb AS properties
    FROM {s.q('events_table')};
CREATE VIEW {{rs}}.source_auth_sessions AS
    SELECT {s.q('sessions_id')}::bigint AS id, {s.q('sessions_user_id')}::bigint AS user_id,
           {s.q('sessions_started_at')}::timestamptz AS started_at,
           {s.q('sessions_last_seen_at')}::timestamptz AS last_seen_at
    FROM {s.q('sessions_table')};
"""


def install_schema(db: AppDatabase) -> None:
    """Create the project schema, its tables and the source views (idempotent).

    Re-creating views takes an exclusive lock that would queue behind any long-running backfill, so
    the schema carries a fingerprint of its DDL and an unchanged schema is left alone.
    """
    ddl = db.render(TABLES_DDL + BILLING_TABLES_DDL + OUTREACH_TABLES_DDL + OUTCOME_TABLES_DDL) + db.render(_source_views_ddl(db))
    fingerprint = "retention_pipeline " + hashlib.sha256(ddl.encode()).hexdigest()[:16]
    if _schema_fingerprint(db) == fingerprint:
        return
    with db.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _INSTALL_LOCK_KEY})
        conn.execute(sa.text(db.render("CREATE SCHEMA IF NOT EXISTS {rs}")))
        run_script(conn, ddl)
        conn.execute(sa.text(db.render("COMMENT ON SCHEMA {rs} IS ") + "'" + fingerprint + "'"))


def _schema_fingerprint(db: AppDatabase) -> str | None:
    with db.engine().connect() as conn:
        return conn.execute(
            sa.text("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = :name"),
            {"name": db.retention_schema},
        ).scalar()
