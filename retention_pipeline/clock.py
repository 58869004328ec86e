"""The one place wall-clock time enters the project.

Queries never call NOW(): assets compute from their partition, and anything that needs "today"
(the demo's latest complete day, the send guard, Stripe snapshot times) asks this clock, which tests
and the simulator can set. `RETENTION_NOW` (ISO 8601) sets it for subprocesses such as Dagster runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from retention_pipeline.settings import PROJECT_TIMEZONE, parse_now

_frozen: datetime | None = None


def now() -> datetime:
    """Current time, timezone-aware UTC."""
    if _frozen is not None:
        return _frozen
    env_value = os.environ.get("RETENTION_NOW")
    if env_value:
        return parse_now(env_value).astimezone(UTC)
    return datetime.now(UTC)


def today(tz: str = PROJECT_TIMEZONE) -> date:
    return now().astimezone(ZoneInfo(tz)).date()


def latest_complete_day(tz: str = PROJECT_TIMEZONE) -> date:
    return today(tz) - timedelta(days=1)


def set_now(value: datetime | None) -> None:
    global _frozen
    _frozen = value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


@contextlib.contextmanager
def frozen_at(value: datetime) -> Iterator[None]:
    previous = _frozen
    set_now(value)
    try:
        yield
    finally:
        set_now(previous)
