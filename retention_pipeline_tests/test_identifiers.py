"""Configured table and column names are validated as identifiers and quoted, never pasted into SQL."""

import pytest
from pydantic import ValidationError

from retention_pipeline.db import InvalidIdentifierError, quote_identifier, validate_identifier
from retention_pipeline.resources import AppDatabase, SourceTables
from retention_pipeline.schema import install_schema

HOSTILE_NAMES = [
    "events; DROP TABLE users",
    'events"; DROP TABLE users; --',
    "Events",
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


@pytest.mark.parametrize("name", ["events", "app.events", "_x", "user_events_2024", "a$b"])
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
        users_table="app.accounts", users_id="account_id", users_email="mail", users_name="full_name",
        users_created_at="joined", users_stripe_customer_id="stripe_id",
        events_table="app.activity", events_id="event_id", events_user_id="account_id", events_event_type="kind",
        events_occurred_at="at", events_properties="props",
        sessions_table="app.logins", sessions_id="login_id", sessions_user_id="account_id",
        sessions_started_at="began", sessions_last_seen_at="seen",
    )
    db = AppDatabase(url=pg_server.url(pg_database), retention_schema="growth", source=source)
    install_schema(db)
    assert [tuple(r) for r in db.fetch_all("SELECT id, email, name FROM {rs}.source_users")] == [(7, "ada@example.com", "Ada")]
    assert [tuple(r) for r in db.fetch_all("SELECT user_id, event_type FROM {rs}.source_events")] == [(7, "login")]
    db.engine().dispose()
