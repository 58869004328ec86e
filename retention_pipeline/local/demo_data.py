"""A deterministic, believable population for the Flask app's own tables (users, events, auth_sessions).

The demo and the tests need data whose retention story is known in advance: a few power users, a
steady core, casual visitors, people drifting away, people already gone, sign-ups from last week and
a handful who came back. Each user gets a *persona* that fixes the shape of their activity; the rows
themselves are random but fully determined by ``(seed, as_of, n_users, days)``.

Scale is the design constraint. Users (one small object each) are held in memory; events and
sessions are never held. They are re-derived on demand, one day at a time, from per-user and
per-user-day random streams, so a 100k-user population streams through ``COPY`` in bounded memory.
Going day by day (rather than user by user) lets ids increase with time, as a real serial key does,
so downstream code that reads incrementally by id sees what it would see in production.

Time model: everything is UTC. Every timestamp is strictly before midnight after ``as_of``; sessions
never cross midnight; events lie strictly inside their session.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import date, datetime

from psycopg2 import sql

from retention_pipeline.local.demo_events import events_of_day, sessions_of_day
from retention_pipeline.local.demo_schedule import build_schedule
from retention_pipeline.local.demo_users import (
    DEFAULT_PERSONA_MIX,
    MIN_DAYS,
    PERSONAS,
    DemoPopulation,
    DemoUser,
    draw_users,
    stripe_customer_id,
)

__all__ = [
    "DEFAULT_PERSONA_MIX",
    "MIN_DAYS",
    "PERSONAS",
    "DemoPopulation",
    "DemoUser",
    "create_app_tables",
    "generate",
    "iter_events",
    "iter_sessions",
    "load",
    "persona_counts",
]

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def generate(seed: int = 42, as_of: date | None = None, n_users: int = 2000, days: int = 90) -> DemoPopulation:
    """Draw the users and count their events and sessions; the rows themselves are streamed later.

    ``as_of`` is the last day with data (usually "yesterday" from the caller's clock). It is
    required: reading the wall clock here would make the population depend on when it ran.
    """
    as_of = _validated_as_of(as_of)
    if not isinstance(n_users, int) or n_users < 0:
        raise ValueError(f"n_users must be a non-negative integer, got {n_users!r}")
    if not isinstance(days, int) or days < MIN_DAYS:
        raise ValueError(f"days must be an integer >= {MIN_DAYS} (the personas need ~8 weeks of history), got {days!r}")
    users = draw_users(seed, as_of, n_users, days)
    _, event_count, session_count = build_schedule(seed, as_of, users)
    return DemoPopulation(as_of=as_of, seed=seed, users=users, event_count=event_count, session_count=session_count)


def iter_events(pop: DemoPopulation) -> Iterator[tuple]:
    """Yield ``(id, user_id, event_type, occurred_at, properties)`` in time order, ids from 1.

    Re-derived from the seed on every call, so two calls yield identical rows and nothing is held.
    """
    buckets, _, _ = build_schedule(pop.seed, pop.as_of, pop.users)
    users = {user.id: user for user in pop.users}
    workspaces: dict[int, tuple[str, ...]] = {}
    next_id = 1
    for ordinal in sorted(buckets):
        rows = events_of_day(pop.seed, ordinal, buckets[ordinal], users, workspaces)
        for _, _, _, user_id, event_type, occurred_at, properties in rows:
            yield (next_id, user_id, event_type, occurred_at, properties)
            next_id += 1


def iter_sessions(pop: DemoPopulation) -> Iterator[tuple]:
    """Yield ``(id, user_id, started_at, last_seen_at)`` in start order, ids from 1."""
    buckets, _, _ = build_schedule(pop.seed, pop.as_of, pop.users)
    users = {user.id: user for user in pop.users}
    next_id = 1
    for ordinal in sorted(buckets):
        for _, user_id, started_at, last_seen_at in sessions_of_day(pop.seed, ordinal, buckets[ordinal], users):
            yield (next_id, user_id, started_at, last_seen_at)
            next_id += 1


def persona_counts(pop: DemoPopulation) -> dict[str, int]:
    """Users per persona, every persona present (zero if absent), in PERSONAS order."""
    counts = Counter(user.persona for user in pop.users)
    return {persona: counts.get(persona, 0) for persona in PERSONAS}


def create_app_tables(conn, schema: str = "public") -> None:
    """Create the app's three tables and their indexes if absent (the schema too, if missing).

    Shapes follow the Flask app's models, so the pipeline can be developed against them without the
    app. Nothing is committed: the caller owns the transaction.
    """
    schema_id = sql.Identifier(_validated_schema(schema))
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if cur.fetchone() is None:
            # Only when missing: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database.
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(schema_id))
        cur.execute(sql.SQL(_TABLES_DDL).format(schema=schema_id))


def load(conn, pop: DemoPopulation, schema: str = "public") -> dict[str, int]:
    """COPY the population into empty app tables (created if absent) and return the row counts.

    Refuses tables that already hold rows: appending a second population would duplicate ids and
    corrupt every persona's story. Rows stream through COPY in chunks. Does not commit.
    """
    create_app_tables(conn, schema)
    schema_id = sql.Identifier(schema)
    with conn.cursor() as cur:
        _refuse_non_empty(cur, schema)
        counts = {
            "users": _copy(
                cur, schema_id, "users", ("id", "email", "name", "created_at", "stripe_customer_id"), _user_lines(pop)
            ),
            "events": _copy(
                cur,
                schema_id,
                "events",
                ("id", "user_id", "event_type", "occurred_at", "properties"),
                _event_lines(iter_events(pop)),
            ),
            "auth_sessions": _copy(
                cur,
                schema_id,
                "auth_sessions",
                ("id", "user_id", "started_at", "last_seen_at"),
                _session_lines(iter_sessions(pop)),
            ),
        }
        for table in ("users", "events", "auth_sessions"):
            # Fresh statistics, so the pipeline's first queries get sensible plans.
            cur.execute(sql.SQL("ANALYZE {}.{}").format(schema_id, sql.Identifier(table)))
    return counts


# --------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------


def _validated_as_of(as_of: date | None) -> date:
    """A plain date; a datetime is reduced to its date so comparisons with dates behave."""
    if as_of is None:
        raise ValueError("as_of is required (the last day with data, e.g. yesterday); demo_data never reads the clock")
    if isinstance(as_of, datetime):
        return as_of.date()
    if not isinstance(as_of, date):
        raise ValueError(f"as_of must be a date, got {as_of!r}")
    return as_of


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------

# Lower-case unquoted identifier syntax: anything needing quotes is far more likely a mistake.
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_TABLES_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.users (
    id bigint PRIMARY KEY,
    email text NOT NULL,
    name text NULL,
    created_at timestamptz NOT NULL,
    stripe_customer_id text NULL
);
CREATE TABLE IF NOT EXISTS {schema}.events (
    id bigint PRIMARY KEY,
    user_id bigint NULL,
    event_type text NOT NULL,
    occurred_at timestamptz NOT NULL,
    properties jsonb NULL
);
CREATE INDEX IF NOT EXISTS events_user_id_occurred_at_idx ON {schema}.events (user_id, occurred_at);
CREATE INDEX IF NOT EXISTS events_occurred_at_idx ON {schema}.events (occurred_at);
CREATE TABLE IF NOT EXISTS {schema}.auth_sessions (
    id bigint PRIMARY KEY,
    user_id bigint NOT NULL,
    started_at timestamptz NOT NULL,
    last_seen_at timestamptz NULL
);
CREATE INDEX IF NOT EXISTS auth_sessions_started_at_idx ON {schema}.auth_sessions (started_at);
"""

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"
_to_json = json.JSONEncoder(separators=(",", ":")).encode


def _validated_schema(schema: str) -> str:
    """Reject rather than escape odd names; sql.Identifier still quotes whatever passes."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
        raise ValueError(
            f"schema {schema!r} is not a plain identifier: use lower-case letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters"
        )
    return schema


def _refuse_non_empty(cur, schema: str) -> None:
    """Fail before copying anything, so a refused load leaves the transaction clean."""
    for table in ("users", "events", "auth_sessions"):
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.{})").format(sql.Identifier(schema), sql.Identifier(table)))
        if cur.fetchone()[0]:
            raise ValueError(
                f"{schema}.{table} already has rows; demo_data.load() only fills empty app tables "
                "(use a fresh database or schema, or empty the tables first)"
            )


class _LineReader:
    """A read-only text file over an iterator of COPY lines, so COPY pulls rows in bounded chunks."""

    def __init__(self, lines: Iterable[str]):
        self._lines = iter(lines)
        self._pending = ""
        self.lines_read = 0

    def read(self, size: int = -1) -> str:
        if size is None or size < 0:
            size = 1 << 62
        parts, length = [self._pending], len(self._pending)
        while length < size:
            line = next(self._lines, None)
            if line is None:
                break
            parts.append(line)
            length += len(line)
            self.lines_read += 1
        chunk = "".join(parts)
        self._pending = chunk[size:]
        return chunk[:size]

    def readline(self, size: int = -1) -> str:
        if self._pending:
            line, self._pending = self._pending, ""
            return line
        line = next(self._lines, "")
        self.lines_read += bool(line)
        return line


def _copy(cur, schema_id: sql.Identifier, table: str, columns: tuple[str, ...], lines: Iterable[str]) -> int:
    """Stream lines into one table with COPY ... FROM STDIN; return how many rows went in."""
    statement = sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
        schema_id, sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    reader = _LineReader(lines)
    cur.copy_expert(statement, reader, size=1 << 16)
    return reader.lines_read


def _text(value: str | None) -> str:
    """A text value in COPY's text format."""
    return _NULL if value is None else value.translate(_COPY_ESCAPES)


def _user_lines(pop: DemoPopulation) -> Iterator[str]:
    """COPY text lines of the users table (timestamps carry +00:00, so the session TimeZone is moot)."""
    for user in pop.users:
        customer = stripe_customer_id(pop.seed, user)
        yield f"{user.id}\t{_text(user.email)}\t{_text(user.name)}\t{user.created_at.isoformat()}\t{_text(customer)}\n"


def _event_lines(events: Iterable[tuple]) -> Iterator[str]:
    """COPY text lines of events; properties become compact JSON, escaped for the text format."""
    for event_id, user_id, event_type, occurred_at, properties in events:
        user = _NULL if user_id is None else user_id
        payload = _NULL if properties is None else _to_json(properties).translate(_COPY_ESCAPES)
        yield f"{event_id}\t{user}\t{event_type}\t{occurred_at.isoformat()}\t{payload}\n"


def _session_lines(sessions: Iterable[tuple]) -> Iterator[str]:
    """COPY text lines of auth_sessions."""
    for session_id, user_id, started_at, last_seen_at in sessions:
        last_seen = _NULL if last_seen_at is None else last_seen_at.isoformat()
        yield f"{session_id}\t{user_id}\t{started_at.isoformat()}\t{last_seen}\n"
