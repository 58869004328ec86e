"""The two schedules request the latest complete partition as of their tick, never the wall clock's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import pytest
from dagster import RunRequest, SkipReason, build_schedule_context

from retention_pipeline.definitions import defs
from retention_pipeline.jobs import daily_morning_schedule, weekly_segments_schedule

UTC = UTC


def evaluate(schedule, when: datetime):
    return schedule(build_schedule_context(scheduled_execution_time=when))


def requested_key(schedule, when: datetime) -> str:
    result = evaluate(schedule, when)
    if isinstance(result, list):  # a schedule may return several requests: there must be exactly one
        assert len(result) == 1, result
        result = result[0]
    assert isinstance(result, RunRequest), result
    assert result.run_key == result.partition_key
    return result.partition_key


def test_definitions():
    assert daily_morning_schedule.cron_schedule == "0 9 * * *"
    assert weekly_segments_schedule.cron_schedule == "0 10 * * 1"
    assert daily_morning_schedule.execution_timezone == "UTC"
    assert daily_morning_schedule.job_name == "daily_retention_job"
    assert weekly_segments_schedule.job_name == "weekly_segments_job"
    assert {s.name for s in defs.schedules} == {"billing_snapshot_schedule", "daily_morning_schedule", "weekly_segments_schedule"}


@pytest.mark.parametrize(
    "when, expected",
    [
        (datetime(2025, 3, 18, 9, 0, tzinfo=UTC), "2025-03-17"),
        (datetime(2025, 3, 1, 9, 0, tzinfo=UTC), "2025-02-28"),  # across a month end
        (datetime(2025, 1, 2, 9, 0, tzinfo=UTC), "2025-01-01"),  # the first partition
        (datetime(2026, 1, 1, 9, 0, tzinfo=UTC), "2025-12-31"),  # across a year end
        (datetime(2025, 3, 18, 0, 0, tzinfo=UTC), "2025-03-17"),  # midnight: the day just ended
        (datetime(2025, 3, 18, 23, 59, tzinfo=UTC), "2025-03-17"),
    ],
)
def test_daily_morning_requests_yesterday(when, expected):
    assert requested_key(daily_morning_schedule, when) == expected


def test_daily_before_the_first_partition_ended_skips():
    assert isinstance(evaluate(daily_morning_schedule, datetime(2025, 1, 1, 9, 0, tzinfo=UTC)), SkipReason)


@pytest.mark.parametrize(
    "when, expected",
    [
        (datetime(2025, 3, 24, 10, 0, tzinfo=UTC), "2025-03-17"),  # Monday tick: the week just completed
        (datetime(2025, 3, 31, 10, 0, tzinfo=UTC), "2025-03-24"),
        (datetime(2025, 1, 13, 10, 0, tzinfo=UTC), "2025-01-06"),  # the first week (first Monday after the start)
        (datetime(2025, 3, 30, 23, 0, tzinfo=UTC), "2025-03-17"),  # a late Sunday: that week is not complete yet
    ],
)
def test_weekly_requests_the_just_completed_week(when, expected):
    assert requested_key(weekly_segments_schedule, when) == expected


def test_weekly_before_the_first_week_ended_skips():
    assert isinstance(evaluate(weekly_segments_schedule, datetime(2025, 1, 6, 10, 0, tzinfo=UTC)), SkipReason)


_BERLIN_SCRIPT = textwrap.dedent("""
    import json
    from datetime import datetime
    from zoneinfo import ZoneInfo
    from dagster import build_schedule_context
    from retention_pipeline.jobs import daily_morning_schedule, weekly_segments_schedule
    berlin = ZoneInfo("Europe/Berlin")
    ticks = [
        ("daily", datetime(2026, 3, 29, 9, 0, tzinfo=berlin)),
        ("daily", datetime(2026, 3, 30, 9, 0, tzinfo=berlin)),
        ("daily", datetime(2026, 3, 30, 0, 30, tzinfo=berlin)),  # 22:30 UTC on the 29th
        ("daily", datetime(2026, 10, 26, 9, 0, tzinfo=berlin)),  # after the 25-hour day
        ("weekly", datetime(2026, 3, 30, 10, 0, tzinfo=berlin)),
        ("weekly", datetime(2026, 3, 30, 0, 30, tzinfo=berlin)),
    ]
    out = {"timezone": daily_morning_schedule.execution_timezone, "keys": []}
    for name, when in ticks:
        schedule = daily_morning_schedule if name == "daily" else weekly_segments_schedule
        out["keys"].append(schedule(build_schedule_context(scheduled_execution_time=when)).partition_key)
    print(json.dumps(out))
""")


def test_ticks_in_a_non_utc_timezone_across_dst():
    env = {**os.environ, "RETENTION_TIMEZONE": "Europe/Berlin"}
    done = subprocess.run([sys.executable, "-c", _BERLIN_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {
        "timezone": "Europe/Berlin",
        "keys": ["2026-03-28", "2026-03-29", "2026-03-29", "2026-10-25", "2026-03-23", "2026-03-23"],
    }
