"""Resources: the app database (source tables in, the project's own schema out)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from dagster import Config, ConfigurableResource, EnvVar, InitResourceContext, ResourceDefinition, resource
from dagster import Field as DagsterField
from pydantic import Field, PrivateAttr, field_validator
from sqlalchemy.engine import Connection, Engine

from retention_pipeline.db import create_db_engine, quote_identifier, redact_url, validate_identifier


def _identifier(value: str, info) -> str:
    return validate_identifier(value, f"{info.field_name}")


class SourceTables(Config):
    """Names of the app's tables and columns; real apps differ from the defaults (README: source contract)."""

    users_table: str = Field(default="users", description="Table of users (optionally schema-qualified).")
    users_id: str = Field(default="id", description="users: bigint primary key.")
    users_email: str = Field(default="email", description="users: email address.")
    users_name: str = Field(default="name", description="users: display name, may be NULL.")
    users_created_at: str = Field(default="created_at", description="users: sign-up time (timestamptz).")
    users_stripe_customer_id: str = Field(default="stripe_customer_id", description="users: Stripe customer id, may be NULL.")
    events_table: str = Field(default="events", description="Table of product events.")
    events_id: str = Field(default="id", description="events: bigint primary key.")
    events_user_id: str = Field(default="user_id", description="events: the acting user, may be NULL.")
    events_event_type: str = Field(default="event_type", description="events: event name.")
    events_occurred_at: str = Field(default="occurred_at", description="events: event time (timestamptz).")
    events_properties: str = Field(default="properties", description="events: jsonb properties, may be NULL.")
    sessions_table: str = Field(default="auth_sessions", description="Table of authentication sessions.")
    sessions_id: str = Field(default="id", description="auth_sessions: bigint primary key.")
    sessions_user_id: str = Field(default="user_id", description="auth_sessions: the user.")
    sessions_started_at: str = Field(default="started_at", description="auth_sessions: start (timestamptz).")
    sessions_last_seen_at: str = Field(default="last_seen_at", description="auth_sessions: last request seen, may be NULL.")

    _check_identifiers = field_validator("*")(_identifier)

    def q(self, field_name: str) -> str:
        """The quoted SQL form of a configured name."""
        return quote_identifier(getattr(self, field_name))


class AppDatabase(ConfigurableResource):
    """The app's PostgreSQL. Reads the source tables, writes only the project's own schema."""

    url: str = Field(description="SQLAlchemy/libpq URL of the app database (RETENTION_DATABASE_URL).")
    retention_schema: str = Field(default="retention", description="Schema the pipeline owns and writes to.")
    statement_timeout_seconds: int = Field(
        default=600, gt=0, description="Every statement is cancelled after this long; the run then fails with a clear message."
    )
    source: SourceTables = Field(default_factory=SourceTables, description="The app's table and column names.")

    _engine: Engine | None = PrivateAttr(default=None)

    @field_validator("retention_schema")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        if "." in value:
            raise ValueError("retention_schema must be a bare schema name, not schema-qualified")
        return validate_identifier(value, "retention_schema")

    @property
    def schema_sql(self) -> str:
        return quote_identifier(self.retention_schema)

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self.engine()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_db_engine(self.url, self.statement_timeout_seconds)
        return self._engine

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: everything inside commits together or not at all."""
        with self.engine().begin() as conn:
            yield conn

    def render(self, template: str) -> str:
        """Fill `{rs}` (the quoted project schema) into a SQL template; values always travel as bind parameters."""
        return template.replace("{rs}", self.schema_sql)

    def execute(self, template: str, params: dict | None = None) -> sa.CursorResult:
        with self.begin() as conn:
            return conn.execute(sa.text(self.render(template)), params or {})

    def scalar(self, template: str, params: dict | None = None):
        with self.engine().connect() as conn:
            return conn.execute(sa.text(self.render(template)), params or {}).scalar()

    def fetch_all(self, template: str, params: dict | None = None) -> list[sa.Row]:
        with self.engine().connect() as conn:
            return list(conn.execute(sa.text(self.render(template)), params or {}))


_deployed: dict[tuple[str, int], AppDatabase] = {}


def deployed_app_db(deployment: AppDatabase) -> ResourceDefinition:
    """The `app_db` resource of the code location: the database, schema and source names exactly as the
    deployment defines them (`deployment`, its URL from the environment). A run's config can change
    only the statement timeout; naming `url`, `retention_schema` or `source` there is rejected before
    the run starts, so nobody can point a run at another database or table from the launchpad."""

    @resource(
        config_schema={
            "statement_timeout_seconds": DagsterField(
                int,
                default_value=deployment.statement_timeout_seconds,
                is_required=False,
                description="Every statement is cancelled after this long; raise it for a long backfill range.",
            )
        },
        description="The app's PostgreSQL, from RETENTION_DATABASE_URL; only the statement timeout is set per run.",
    )
    def app_db(context: InitResourceContext) -> AppDatabase:
        url = deployment.url.get_value() if isinstance(deployment.url, EnvVar) else deployment.url
        key = (url, context.resource_config["statement_timeout_seconds"])
        if key not in _deployed:
            # One engine per process and setting, not one per run: in-process runs (demo, simulator)
            # would otherwise leave a connection pool behind each time.
            for stale in _deployed.values():
                stale.engine().dispose()
            _deployed.clear()
            _deployed[key] = AppDatabase(
                url=url, retention_schema=deployment.retention_schema, statement_timeout_seconds=key[1], source=deployment.source
            )
        return _deployed[key]

    return app_db
