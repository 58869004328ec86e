"""daily_activity_snapshots -> retention.daily_activity, run through the real daily job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import date
from decimal import Decimal

import pytest

from retention_pipeline.local.runner import run_job
from retention_pipeline_tests.scenario import Scenario, check_metadata, days_between, utc

JOB = "daily_retention_job"


@pytest.fixture
def s(app_db_env) -> Scenario:
    return Scenario(app_db_env)


def snapshot_rows(s: Scenario) -> list[tuple]:
    return [tuple(r.values()) for r in s.rows("SELECT * FROM {rs}.daily_activity ORDER BY activity_date, user_id")]


def test_one_row_per_user_day_with_figures(s: Scenario, instance):
    s.user(1, utc(2025, 1, 1))
    s.user(2, utc(2025, 1, 1))
    s.user(3, utc(2025, 1, 1))
    # User 1, 2025-03-03: 3 x create_task, 2 x comment (the mode is create_task) and two sessions.
    s.events(
        [
            (1, utc(2025, 3, 3, 9, 0), "comment"),
            (1, utc(2025, 3, 3, 9, 5), "create_task"),
            (1, utc(2025, 3, 3, 10, 0), "create_task"),
            (1, utc(2025, 3, 3, 23, 59, 59), "create_task"),
            (1, utc(2025, 3, 3, 11, 0), "comment"),
            (1, utc(2025, 3, 4, 0, 0), "upload_file"),  # midnight belongs to the next day
        ]
    )
    s.session(1, utc(2025, 3, 3, 9, 0), utc(2025, 3, 3, 9, 30))
    s.session(1, utc(2025, 3, 3, 22, 0), utc(2025, 3, 4, 0, 15))  # counted on its start day
    s.session(1, utc(2025, 3, 3, 23, 0), None)  # no last_seen_at: zero minutes
    # User 2: a session but no event on 2025-03-04 still makes a row.
    s.session(2, utc(2025, 3, 4, 8, 0), utc(2025, 3, 4, 8, 0, 30))
    # Ties in the top event type are broken alphabetically, so the result is deterministic.
    s.events([(3, utc(2025, 3, 4, 8), "b_type"), (3, utc(2025, 3, 4, 9), "a_type")])

    result = run_job(instance, JOB, "2025-03-03", "2025-03-04")
    assert result.success
    rows = s.daily_activity()
    assert set(rows) == {(date(2025, 3, 3), 1), (date(2025, 3, 4), 1), (date(2025, 3, 4), 2), (date(2025, 3, 4), 3)}

    r = rows[(date(2025, 3, 3), 1)]
    assert (r["event_count"], r["distinct_event_types"], r["sessions_started"]) == (5, 2, 3)
    assert r["session_minutes"] == Decimal("165.00")
    assert (r["first_event_at"], r["last_event_at"]) == (utc(2025, 3, 3, 9, 0), utc(2025, 3, 3, 23, 59, 59))
    assert r["top_event_type"] == "create_task"

    r = rows[(date(2025, 3, 4), 1)]
    assert (r["event_count"], r["sessions_started"], r["top_event_type"]) == (1, 0, "upload_file")
    assert r["session_minutes"] == 0

    r = rows[(date(2025, 3, 4), 2)]
    assert (r["event_count"], r["distinct_event_types"], r["sessions_started"]) == (0, 0, 1)
    assert r["session_minutes"] == Decimal("0.50")
    assert (r["first_event_at"], r["last_event_at"], r["top_event_type"]) == (None, None, None)

    assert rows[(date(2025, 3, 4), 3)]["top_event_type"] == "a_type"


def test_orphan_events_are_counted_not_stored(s: Scenario, instance):
    s.user(1, utc(2025, 1, 1))
    s.events(
        [
            (1, utc(2025, 3, 3, 9), "a"),
            (None, utc(2025, 3, 3, 9), "view_pricing"),
            (None, utc(2025, 3, 4, 9), "view_pricing"),
            (77, utc(2025, 3, 4, 9), "a"),
            (None, utc(2025, 3, 6, 9), "outside_window"),
        ]
    )
    s.session(78, utc(2025, 3, 3, 9), utc(2025, 3, 3, 10))  # session of an unknown user: no row either
    result = run_job(instance, JOB, "2025-03-03", "2025-03-04")
    assert result.success
    assert set(s.daily_activity()) == {(date(2025, 3, 3), 1)}
    orphans = check_metadata(result, "orphan_events")
    assert (orphans["events_null_user"], orphans["events_unknown_user"]) == (2, 1)
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "orphan_events")
    assert not evaluation.passed  # 3 of 4 events are orphans, far above the share limit


def test_rematerializing_is_idempotent_and_picks_up_late_events(s: Scenario, instance):
    s.user(1, utc(2025, 1, 1))
    s.user(2, utc(2025, 1, 1))
    s.daily_events(1, days_between(date(2025, 3, 1), date(2025, 3, 10)), per_day=2)
    s.session(2, utc(2025, 3, 5, 8), utc(2025, 3, 5, 9))
    assert run_job(instance, JOB, "2025-03-01", "2025-03-10").success
    first = snapshot_rows(s)
    assert len(first) == 11
    assert run_job(instance, JOB, "2025-03-01", "2025-03-10").success
    assert snapshot_rows(s) == first
    assert run_job(instance, JOB, "2025-03-05").success
    assert snapshot_rows(s) == first

    # A late-arriving event for 2025-03-05 shows once that partition is materialized again, and
    # other days are untouched.
    s.event(1, utc(2025, 3, 5, 23, 0), "late_type")
    s.event(2, utc(2025, 3, 5, 7, 0), "late_type")
    assert run_job(instance, JOB, "2025-03-05").success
    rows = s.daily_activity()
    assert rows[(date(2025, 3, 5), 1)]["event_count"] == 3
    assert rows[(date(2025, 3, 5), 1)]["last_event_at"] == utc(2025, 3, 5, 23, 0)
    assert rows[(date(2025, 3, 5), 2)]["event_count"] == 1
    assert rows[(date(2025, 3, 5), 2)]["sessions_started"] == 1
    others = [row for row in snapshot_rows(s) if row[0] != date(2025, 3, 5)]
    assert others == [row for row in first if row[0] != date(2025, 3, 5)]

    # Removed source rows disappear from the partition on re-materialization (delete, then insert).
    s.db.execute("DELETE FROM auth_sessions WHERE user_id = 2")
    s.db.execute("DELETE FROM events WHERE user_id = 2")
    assert run_job(instance, JOB, "2025-03-05").success
    assert (date(2025, 3, 5), 2) not in s.daily_activity()


def test_ninety_day_range_is_one_run(s: Scenario, instance):
    s.user(1, utc(2025, 1, 1))
    s.user(2, utc(2025, 1, 1))
    days = days_between(date(2025, 1, 1), date(2025, 3, 31))
    assert len(days) == 90
    s.daily_events(1, days, per_day=1)
    s.daily_events(2, days[::3], per_day=2, event_type="comment")
    result = run_job(instance, JOB, "2025-01-01", "2025-03-31")
    assert result.success
    assert len(instance.get_runs()) == 1
    snap = [
        e
        for e in result.get_asset_materialization_events()
        if e.step_materialization_data.materialization.asset_key.path[-1] == "daily_activity_snapshots"
    ]
    assert {e.step_materialization_data.materialization.partition for e in snap} == {d.isoformat() for d in days}
    rows = s.daily_activity()
    assert len(rows) == 90 + 30
    assert sum(r["event_count"] for r in rows.values()) == 90 + 60
    before = snapshot_rows(s)
    assert run_job(instance, JOB, "2025-01-01", "2025-03-31").success
    assert snapshot_rows(s) == before


_DST_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from dagster import DagsterInstance
    from retention_pipeline.resources import AppDatabase
    from retention_pipeline.local.runner import run_job
    from retention_pipeline.settings import PROJECT_TIMEZONE
    assert PROJECT_TIMEZONE == "Europe/Berlin", PROJECT_TIMEZONE
    db = AppDatabase(url=os.environ["RETENTION_DATABASE_URL"])
    out = []
    with DagsterInstance.ephemeral() as instance:
        for keys in json.loads(sys.argv[1]):
            result = run_job(instance, "daily_retention_job", *keys, quiet=True)
            rows = db.fetch_all(
                "SELECT activity_date::text, user_id, event_count, sessions_started, session_minutes::text, "
                "(first_event_at AT TIME ZONE 'UTC')::text, (last_event_at AT TIME ZONE 'UTC')::text FROM {rs}.daily_activity ORDER BY 1, 2")
            out.append({"success": result.success, "rows": [list(row) for row in rows]})
    print(json.dumps(out))
""")


def _runs_in_berlin(db_url: str, *key_ranges: list[str]) -> list[dict]:
    """Each key range as one run, in one subprocess whose project timezone is Europe/Berlin; returns
    success and the daily_activity rows after each run."""
    env = {**os.environ, "RETENTION_TIMEZONE": "Europe/Berlin", "RETENTION_DATABASE_URL": db_url}
    done = subprocess.run(
        [sys.executable, "-c", _DST_SCRIPT, json.dumps(key_ranges)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_dst_spring_forward_day_in_berlin(s: Scenario):
    """2026-03-29 has 23 hours in Europe/Berlin (clocks jump from 02:00 CET to 03:00 CEST)."""
    s.user(1, utc(2026, 1, 1))
    s.events(
        [
            (1, utc(2026, 3, 28, 22, 30), "sat_late"),  # 23:30 CET on the 28th
            (1, utc(2026, 3, 28, 23, 30), "sun_early"),  # 00:30 CET on the 29th
            (1, utc(2026, 3, 29, 1, 30), "sun_jump"),  # 03:30 CEST on the 29th (just after the jump)
            (1, utc(2026, 3, 29, 21, 30), "sun_late"),  # 23:30 CEST on the 29th
            (1, utc(2026, 3, 29, 22, 30), "mon_early"),  # 00:30 CEST on the 30th
        ]
    )
    s.session(1, utc(2026, 3, 29, 21, 45), utc(2026, 3, 29, 21, 55))  # 23:45 CEST on the 29th
    single, neighbours = _runs_in_berlin(s.db.url, ["2026-03-29"], ["2026-03-28", "2026-03-30"])

    assert single["success"]
    # The run of the 29th also recomputes the days before it (trailing_days: 3), across the DST change.
    assert single["rows"] == [
        ["2026-03-28", 1, 1, 0, "0.00", "2026-03-28 22:30:00", "2026-03-28 22:30:00"],
        ["2026-03-29", 1, 3, 1, "10.00", "2026-03-28 23:30:00", "2026-03-29 21:30:00"],
    ]
    # The neighbours, as one range run: every event lands on exactly one local day.
    assert neighbours["success"]
    assert [(row[0], row[2]) for row in neighbours["rows"]] == [("2026-03-28", 1), ("2026-03-29", 3), ("2026-03-30", 1)]
    assert neighbours["rows"][:2] == single["rows"]
