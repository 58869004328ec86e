"""Dagster's own storage (dagster-postgres), reached through the same URL rules as the app database.

dagster-postgres hands `postgres_url` to SQLAlchemy, and SQLAlchemy 2.1 maps a bare `postgresql://`
to the psycopg 3 driver. Installing psycopg 3 is not enough: dagster-webserver sets its statement
timeout with `with connection:` on the raw driver connection, which psycopg 3 closes on exit, so every
webserver query then fails with "the connection is closed". These classes pin the URL to psycopg2
before dagster-postgres sees it; dagster.yaml and the deploy configs name them, so the daemon, the
webserver, run workers and the CLI all read `DAGSTER_PG_URL` the same way.
"""

from __future__ import annotations

from dagster_postgres.event_log import PostgresEventLogStorage as _PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage as _PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage as _PostgresScheduleStorage
from dagster_postgres.utils import pg_url_from_config

from retention_pipeline.db import sqlalchemy_url


def _pinned(config_value: dict) -> dict:
    """The storage config with its URL pinned to psycopg2 (a `postgres_db` mapping passes unchanged)."""
    if not config_value.get("postgres_url"):
        return config_value
    return {**config_value, "postgres_url": sqlalchemy_url(pg_url_from_config(config_value))}


class PostgresRunStorage(_PostgresRunStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return super().from_config_value(inst_data, _pinned(config_value))


class PostgresEventLogStorage(_PostgresEventLogStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return super().from_config_value(inst_data, _pinned(config_value))


class PostgresScheduleStorage(_PostgresScheduleStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return super().from_config_value(inst_data, _pinned(config_value))
