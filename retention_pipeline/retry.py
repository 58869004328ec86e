"""How runs react to database trouble: retry what is transient, fail clearly on what is not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Backoff, Failure, RetryPolicy
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

# 1 s, 2 s, 4 s: long enough for a restarted PostgreSQL or a failover to come back.
database_retry_policy = RetryPolicy(max_retries=3, delay=1, backoff=Backoff.EXPONENTIAL)

_QUERY_CANCELED = "57014"
_LOCK_NOT_AVAILABLE = "55P03"
# admin_shutdown (pg_terminate_backend, a fast/smart stop), crash_shutdown, cannot_connect_now; class 08 is
# "connection exception".
_CONNECTION_LOST = {"57P01", "57P02", "57P03"}
# First key of the two-key advisory locks that serialise writers of one table (two-key locks never
# collide with the one-key locks used elsewhere, e.g. per send batch).
_REPLACE_LOCK_SPACE = 730_245


def serialize_replacement(conn: Connection, table: str) -> None:
    """Make overlapping runs that replace rows of `table` (DELETE a window, INSERT it again) take turns.

    Without it, the second of two overlapping runs deletes only the rows its snapshot saw, then fails
    on the primary key of the rows the first one inserted meanwhile. Held until the transaction ends."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:space, hashtext(:table))"), {"space": _REPLACE_LOCK_SPACE, "table": table})


@contextmanager
def clear_database_errors(statement_timeout_seconds: int) -> Iterator[None]:
    """Turn a statement timeout into a non-retried failure that says what to change."""
    try:
        yield
    except DBAPIError as exc:
        sqlstate = getattr(exc.orig, "pgcode", None)
        if sqlstate in (_QUERY_CANCELED, _LOCK_NOT_AVAILABLE):
            raise Failure(
                description=(
                    f"A query exceeded the statement timeout of {statement_timeout_seconds} s "
                    f"(PostgreSQL {sqlstate}). Nothing was written: the transaction was rolled back. "
                    "Raise `statement_timeout_seconds` on the app_db resource, or materialize a shorter range."
                ),
                allow_retries=False,
            ) from None
        if exc.connection_invalidated or sqlstate in _CONNECTION_LOST or (sqlstate or "").startswith("08"):
            reason = (str(exc.orig).strip().splitlines() or ["no detail"])[0]
            raise Failure(
                description=(
                    f"The connection to PostgreSQL was lost mid-transaction ({reason}). Nothing was written: the "
                    "transaction was rolled back, so the window keeps its previous rows. This is transient (a restart, "
                    "failover or terminated session): the step is retried; if every retry fails, check that the "
                    "database is up and reachable, then re-run."
                ),
                allow_retries=True,
            ) from None
        raise
