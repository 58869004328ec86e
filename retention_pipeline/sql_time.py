"""Turning a partition's time window into the bind parameters every query uses."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dagster import AssetExecutionContext, TimeWindow

from retention_pipeline.settings import PROJECT_TIMEZONE


def window_params(window: TimeWindow) -> dict:
    """Start/end as instants (end exclusive) and as local dates, plus the project timezone."""
    return {
        "start_ts": window.start,
        "end_ts": window.end,
        "start_date": _local_date(window.start),
        "end_date": _local_date(window.end),
        "tz": PROJECT_TIMEZONE,
    }


def window_chunks(window: TimeWindow, days_per_chunk: int) -> list[dict]:
    """The window's parameters cut into consecutive pieces of at most `days_per_chunk` local days."""
    params = window_params(window)
    zone = ZoneInfo(PROJECT_TIMEZONE)
    chunks, start = [], params["start_date"]
    while start < params["end_date"]:
        end = min(start + timedelta(days=days_per_chunk), params["end_date"])
        # Local midnights, so a chunk boundary on a DST change is still a day boundary.
        chunks.append(
            params
            | {
                "start_date": start,
                "end_date": end,
                "start_ts": datetime.combine(start, time.min, tzinfo=zone),
                "end_ts": datetime.combine(end, time.min, tzinfo=zone),
            }
        )
        start = end
    return chunks


def _local_date(moment: datetime) -> date:
    # Dagster gives window bounds in the partitions' timezone, which is the project timezone.
    return moment.date()


def partition_days(context: AssetExecutionContext) -> list[date]:
    """Every day of a (possibly multi-partition) daily run, oldest first."""
    params = window_params(context.partition_time_window)
    days = (params["end_date"] - params["start_date"]).days
    return [params["start_date"] + timedelta(days=offset) for offset in range(days)]
