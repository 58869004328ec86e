"""Project-wide settings, read from the environment once so every module agrees on them."""

from __future__ import annotations

import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from retention_pipeline.errors import SettingsError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _timezone_from_env() -> str:
    name = os.environ.get("RETENTION_TIMEZONE", "UTC")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SettingsError(
            f"RETENTION_TIMEZONE={name!r} is not a known IANA timezone; use a name like 'UTC' or 'Europe/Berlin'."
        ) from exc
    return name


# One timezone for every partition, schedule and "day" the project computes.
PROJECT_TIMEZONE: str = _timezone_from_env()

# First daily partition; weekly partitions start on the first Monday on or after it.
PARTITIONS_START_DATE: str = os.environ.get("RETENTION_PARTITIONS_START", "2025-01-01")

# The morning tick of the daily automation, in PROJECT_TIMEZONE.
MORNING_CRON: str = os.environ.get("RETENTION_MORNING_CRON", "0 9 * * *")

# Everything local and git-ignored: embedded PostgreSQL data, DAGSTER_HOME, the email outbox.
STATE_DIR: Path = Path(os.environ.get("RETENTION_STATE_DIR") or PROJECT_ROOT / ".retention").resolve()
