"""How runs react to database trouble: retry what is transient, fail clearly on what is not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Backoff, Failure, RetryPolicy
from sqlalchemy.exc import DBAPIError

# 1 s, 2 s, 4 s: long enough for a restarted PostgreSQL or a failover to come back.
database_retry_policy = RetryPolicy(max_retries=3, delay=1, backoff=Backoff.EXPONENTIAL)

_QUERY_CANCELED = "57014"
_LOCK_NOT_AVAILABLE = "55P03"


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
        raise
