"""Configured table and column names are validated as identifiers and quoted, never pasted into SQL."""

import pytest
from pydantic import ValidationError

from retention_pipeline.activity.trigger import drain_activity_queue, install_trigger
from retention_pipeline.db import InvalidIdentifierError, quote_identifier, validate_identifier
from retention_pipeline.resources import AppDatabase, SourceTables
from retention_pipeline.schema import install_schema

HOSTILE_NAMES = [
    "events; DROP TABLE users",
    'events"; DROP TABLE users; --',
    "uid$fn$",  # `$fn$` would end the trigger function's dollar-quoted body
    "a$b",
    "1events",
    "a.b.c",
    "",
    "x" * 64,
    "events -- comment",
    "public.events;",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_identifier_is_rejected_with_a_clear_error(name):
    with pytest.raises(InvalidIdentifierError, match="not a plain SQL identifier"):
        validate_identifier(name, "events_table")


@pytest.mark.parametrize("name", ["events", "app.events", "_x", "user_events_2024", "Events", "App.UserEvents", "x" * 63])
def test_plain_identifiers_are_accepted_and_quoted(name):
    assert validate_identifier(name) == name
    assert quote_identifier(name) == ".".join(f'"{part}"' for part in name.split("."))


def test_resource_rejects_a_hostile_table_name_before_touching_the_database():
    with pytest.raises(ValidationError, match="events_table .* is not a plain SQL identifier"):
        AppDatabase(url="postgresql://nowhere/x", source=SourceTables(events_table="events; DROP TABLE users"))


def test_resource_rejects_a_hostile_schema_name():
    with pytest.raises(ValidationError, match="retention_schema"):
        AppDatabase(url="postgresql://nowhere/x", retention_schema='retention"; DROP SCHEMA public; --')


def test_renamed_tables_and_columns_are_read_through_the_source_views(pg_conn, pg_server, pg_database):
    with pg_conn.cursor() as cur:
        cur.execute("""
            CREATE SCHEMA app;
            CREATE TABLE app.accounts (account_id bigint PRIMARY KEY, mail text, full_name text,
                                       joined timestamptz, stripe_id text);
            CREATE TABLE app.activity (event_id bigint PRIMARY KEY, account_id bigint, kind text,
                                       at timestamptz, props jsonb);
            CREATE TABLE app.logins (login_id bigint PRIMARY KEY, account_id bigint, began timestamptz, seen timestamptz);
            INSERT INTO app.accounts VALUES (7, 'ada@example.com', 'Ada', '2026-01-01', NULL);
            INSERT INTO app.activity VALUES (1, 7, 'login', '2026-02-01 10:00+00', NULL);
        """)
    pg_conn.commit()
    source = SourceTables(
        users_table="app.accounts",
        users_id="account_id",
        users_email="mail",
        users_name="full_name",
        users_created_at="joined",
        users_stripe_customer_id="stripe_id",
        events_table="app.activity",
        events_id="event_id",
        events_user_id="account_id",
        events_event_type="kind",
        events_occurred_at="at",
        events_properties="props",
        sessions_table="app.logins",
        sessions_id="login_id",
        sessions_user_id="account_id",
        sessions_started_at="began",
        sessions_last_seen_at="seen",
    )
    db = AppDatabase(url=pg_server.url(pg_database), retention_schema="growth", source=source)
    install_schema(db)
    assert [tuple(r) for r in db.fetch_all("SELECT id, email, name FROM {rs}.source_users")] == [(7, "ada@example.com", "Ada")]
    assert [tuple(r) for r in db.fetch_all("SELECT user_id, event_type FROM {rs}.source_events")] == [(7, "login")]
    db.engine().dispose()


def test_mixed_case_names_work_end_to_end_as_written(pg_conn, pg_server, pg_database):
    """Allowed names are quoted in every generated statement: the views, the trigger function, its
    upsert. A mixed-case schema, tables and columns must be read as exactly those, and a `$` never
    gets that far."""
    with pg_conn.cursor() as cur:
        cur.execute("""
            CREATE SCHEMA "App";
            CREATE TABLE "App"."Users" ("UserId" bigint PRIMARY KEY, "Email" text, "Name" text,
                                        "CreatedAt" timestamptz, "StripeId" text);
            CREATE TABLE "App"."Events" ("EventId" bigint PRIMARY KEY, "UserId" bigint, "Kind" text,
                                         "At" timestamptz, "Props" jsonb);
            CREATE TABLE "App"."Sessions" ("SessionId" bigint PRIMARY KEY, "UserId" bigint, "Began" timestamptz,
                                           "Seen" timestamptz);
            -- Same names in lower case: a name folded to lower case would silently read these instead.
            CREATE SCHEMA app;
            CREATE TABLE app.events (eventid bigint PRIMARY KEY, userid bigint, kind text, "at" timestamptz, props jsonb);
            INSERT INTO "App"."Users" VALUES (7, 'ada@example.com', 'Ada', '2026-01-01', NULL);
            INSERT INTO "App"."Events" VALUES (1, 7, 'login', '2026-02-01 10:00+00', NULL);
        """)
    pg_conn.commit()
    source = SourceTables(
        users_table="App.Users",
        users_id="UserId",
        users_email="Email",
        users_name="Name",
        users_created_at="CreatedAt",
        users_stripe_customer_id="StripeId",
        events_table="App.Events",
        events_id="EventId",
        events_user_id="UserId",
        events_event_type="Kind",
        events_occurred_at="At",
        events_properties="Props",
        sessions_table="App.Sessions",
        sessions_id="SessionId",
        sessions_user_id="UserId",
        sessions_started_at="Began",
        sessions_last_seen_at="Seen",
    )
    db = AppDatabase(url=pg_server.url(pg_database), retention_schema="Growth", source=source)
    try:
        assert install_trigger(db) == 1
        with pg_conn.cursor() as cur:
            cur.execute("""INSERT INTO "App"."Events" VALUES (2, 7, 'export', '2026-02-03 09:00+00', '{}')""")
        pg_conn.commit()
        drain_activity_queue(db)  # the trigger queues; the pipeline folds the queue into user_activity
        assert [tuple(r) for r in db.fetch_all("SELECT id, email, name FROM {rs}.source_users")] == [
            (7, "ada@example.com", "Ada")
        ]
        assert [tuple(r) for r in db.fetch_all("SELECT user_id, last_event_type, event_count FROM {rs}.user_activity")] == [
            (7, "export", 2)
        ]
        assert db.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'Growth'") == 1
    finally:
        db.engine().dispose()


def test_a_dollar_sign_never_reaches_the_database():
    with pytest.raises(ValidationError, match=r"events_user_id 'uid\$fn\$' is not a plain SQL identifier"):
        AppDatabase(url="postgresql://nowhere/x", source=SourceTables(events_user_id="uid$fn$"))
