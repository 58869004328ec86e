"""weekly_engagement_segments -> retention.weekly_segments, on one hand-built population.

One daily run fills the snapshots of seven weeks; one weekly run computes the week under test (W) and
the week before it. Each user is built to sit on one rule or one boundary of a rule.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from retention_pipeline.local.runner import run_job
from retention_pipeline.segments.config import SegmentThresholds
from retention_pipeline_tests.scenario import Scenario, at, check_metadata, days_between, materialization_metadata, utc

W = date(2025, 3, 17)  # a Monday
PREV = W - timedelta(days=7)
OLD = utc(2025, 1, 1, 0)

# user id -> expected segment in week W (defaults), with the reason in the name.
EXPECTED = {
    1: "new",  # signed up mid-week (Wednesday) and active
    2: "new",  # signed up in the week's very last second, no activity
    4: "new",  # signed up at the week's very first instant
    5: "churned",  # signed up a second before the week, never active
    6: "resurrected",  # active three weeks ago and this week, not last week
    7: "resurrected",  # inactive last week, active on 5 days this week: resurrected wins over power
    8: "declining",  # 10 -> 5 events: exactly 50% down
    9: "casual",  # 100 -> 51 events: 49% down, not declining
    10: "declining",  # 5 -> 2 events: last week had the minimum of 5
    11: "casual",  # 4 -> 1 events: last week had only 4
    12: "power",  # active on exactly 4 days
    13: "active",  # active on 3 days
    14: "active",  # active on exactly 2 days
    15: "casual",  # active on 1 day (several events)
    16: "dormant",  # last active on the Monday 4 weeks before W
    17: "dormant",  # last active on the Sunday just before W
    18: "churned",  # last active on the Sunday 5 weeks before W (more than 4 weeks back)
    19: "dormant",  # auth sessions but no event this week: not active
    20: "dormant",  # busy last week, nothing this week: not declining (needs activity this week)
    21: "declining",  # 4 active days, but 20 -> 4 events: declining wins over power
    22: "churned",  # last active 6 weeks before W
}
NOT_YET = 3  # signs up at the first instant after W


def build(s: Scenario) -> None:
    s.user(1, utc(2025, 3, 19, 10))
    s.user(2, utc(2025, 3, 23, 23, 59, 59))
    s.user(3, utc(2025, 3, 24, 0, 0, 0))
    s.user(4, utc(2025, 3, 17, 0, 0, 0))
    s.user(5, utc(2025, 3, 16, 23, 59, 59))
    for user_id in range(6, 23):
        s.user(user_id, OLD)
    week = days_between(W, W + timedelta(days=6))
    s.daily_events(1, [date(2025, 3, 19), date(2025, 3, 20)])
    s.daily_events(3, [date(2025, 3, 24)])
    s.daily_events(6, [date(2025, 2, 25), date(2025, 3, 18)])
    s.daily_events(7, [date(2025, 3, 4)] + week[:5])
    s.daily_events(8, [date(2025, 3, 11)], per_day=10)
    s.daily_events(8, [date(2025, 3, 18)], per_day=5)
    s.daily_events(9, [date(2025, 3, 11)], per_day=100)
    s.daily_events(9, [date(2025, 3, 18)], per_day=51)
    s.daily_events(10, [date(2025, 3, 11)], per_day=5)
    s.daily_events(10, [date(2025, 3, 18)], per_day=2)
    s.daily_events(11, [date(2025, 3, 11)], per_day=4)
    s.daily_events(11, [date(2025, 3, 18)], per_day=1)
    for user_id, active_days in ((12, 4), (13, 3), (14, 2)):
        s.daily_events(user_id, [date(2025, 3, 12)] + week[-active_days:])
    s.daily_events(15, [date(2025, 3, 12)])
    s.daily_events(15, [date(2025, 3, 20)], per_day=6)
    s.daily_events(16, [date(2025, 2, 17)])
    s.daily_events(17, [date(2025, 3, 16), date(2025, 3, 24)])  # the later day is after W: ignored
    s.events([(17, utc(2025, 3, 16, 23, 59, 59), "last_second")])
    s.daily_events(18, [date(2025, 2, 10), date(2025, 2, 16)])
    s.events([(18, utc(2025, 2, 16, 23, 59, 59), "last_second")])
    s.daily_events(19, [date(2025, 3, 5)])
    s.session(19, at(date(2025, 3, 18), 9), at(date(2025, 3, 18), 10))
    s.session(19, at(date(2025, 3, 19), 9), None)
    s.daily_events(20, [date(2025, 3, 11)], per_day=30)
    s.daily_events(21, [date(2025, 3, 13)], per_day=20)
    s.daily_events(21, week[:4])
    s.daily_events(22, [date(2025, 2, 4)])
    # Orphans: never a segment, never counted for anyone.
    s.events([(None, at(date(2025, 3, 18)), "view_pricing"), (999, at(date(2025, 3, 18)), "x")])


@pytest.fixture
def built(app_db_env, instance) -> Scenario:
    s = Scenario(app_db_env)
    build(s)
    # One run fills seven weeks of snapshots (W-6 .. W) and the day after W.
    assert run_job(
        instance, "daily_retention_job", (W - timedelta(weeks=6)).isoformat(), (W + timedelta(days=7)).isoformat(), quiet=True
    ).success
    return s


def run_weeks(instance, first: date, last: date | None = None, thresholds: dict | None = None):
    run_config = {"ops": {"weekly_engagement_segments": {"config": thresholds}}} if thresholds else None
    return run_job(
        instance, "weekly_segments_job", first.isoformat(), last.isoformat() if last else None, run_config=run_config, quiet=True
    )


def test_every_rule_and_boundary(built: Scenario, instance):
    result = run_weeks(instance, PREV, W)  # one run, two weeks
    assert result.success
    assert built.segments(W) == EXPECTED
    assert NOT_YET not in built.segments(W)

    check = check_metadata(result, "one_segment_per_user")
    assert check["duplicate_keys"] == 0 and check["segment_rows"] == check["expected_rows"]
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "one_segment_per_user")
    assert evaluation.passed

    # The week before: users signed up by its end, each with exactly one segment.
    prev = built.segments(PREV)
    assert set(prev) == set(EXPECTED) - {1, 2, 4}
    assert prev[5] == "new" and prev[17] == "resurrected" and prev[8] == "resurrected"
    assert prev[16] == "dormant" and prev[18] == "dormant" and prev[22] == "churned"

    rows = built.segment_rows(W)
    assert rows[5]["previous_segment"] == "new"
    assert rows[17]["previous_segment"] == "resurrected"
    assert rows[1]["previous_segment"] is None  # did not exist the week before
    assert all(rows[u]["previous_segment"] == prev[u] for u in prev)
    r = rows[8]
    assert (r["active_days"], r["event_count"], r["previous_event_count"], r["last_activity_date"]) == (
        1,
        5,
        10,
        date(2025, 3, 18),
    )
    r = rows[19]
    assert (r["active_days"], r["event_count"], r["sessions_started"], r["session_minutes"]) == (0, 0, 2, 60)
    assert r["last_activity_date"] == date(2025, 3, 5)
    assert rows[7]["active_days"] == 5 and rows[12]["active_days"] == 4
    assert rows[22]["last_activity_date"] is None  # outside the look-back: churned

    metadata = materialization_metadata(result, "weekly_engagement_segments")
    assert metadata["thresholds"] == SegmentThresholds().model_dump()
    assert metadata["users_new"] == 3 and metadata["users_declining"] == 3


def test_rematerializing_a_week_is_idempotent(built: Scenario, instance):
    assert run_weeks(instance, W).success
    first = built.rows("SELECT * FROM {rs}.weekly_segments ORDER BY week_start, user_id")
    assert {r["week_start"] for r in first} == {W}
    assert run_weeks(instance, W).success
    assert built.rows("SELECT * FROM {rs}.weekly_segments ORDER BY week_start, user_id") == first
    # A single-week run still carries the previous week's segment, computed in the same statement.
    assert built.segment_rows(W)[17]["previous_segment"] == "resurrected"


def test_thresholds_change_the_output_and_show_in_metadata(built: Scenario, instance):
    thresholds = {"power_min_active_days": 3, "decline_ratio": 0.4, "decline_min_events": 4, "dormant_lookback_weeks": 3}
    result = run_weeks(instance, W, thresholds=thresholds)
    assert result.success
    segments = built.segments(W)
    assert segments[13] == "power"  # 3 active days now suffice
    assert segments[9] == "declining"  # 49% down is enough at a 40% ratio
    assert segments[11] == "declining"  # 4 events last week now suffice
    assert segments[16] == "churned"  # 4 weeks back is outside a 3-week look-back
    assert segments[17] == "dormant"  # the Sunday before the week is within it
    assert segments[14] == "active" and segments[12] == "power"
    assert materialization_metadata(result, "weekly_engagement_segments")["thresholds"] == {
        **SegmentThresholds().model_dump(),
        **thresholds,
    }

    # Back to the defaults: the output is the default one again.
    result = run_weeks(instance, W)
    assert built.segments(W) == EXPECTED
    assert materialization_metadata(result, "weekly_engagement_segments")["thresholds"]["power_min_active_days"] == 4

    # A look-back beyond the weeks the asset declares (retention.yaml's value) is refused before writing.
    with pytest.raises(Exception) as failure:
        run_weeks(instance, W, thresholds={"dormant_lookback_weeks": 5})
    assert "dormant_lookback_weeks=5 reads further back than the 4 weeks the asset declares" in str(failure.value)


@pytest.mark.parametrize("ratio", [1.5, -0.1])
def test_decline_ratio_outside_zero_to_one_is_rejected_before_writing(built: Scenario, instance, ratio):
    assert run_weeks(instance, W).success
    before = built.rows("SELECT * FROM {rs}.weekly_segments ORDER BY week_start, user_id")
    assert before
    built.event(13, at(date(2025, 3, 22)))  # would change user 13's figures if anything were written

    with pytest.raises(Exception) as failure:
        run_weeks(instance, W, thresholds={"decline_ratio": ratio})
    assert "SegmentThresholds: decline_ratio" in str(failure.value)
    assert built.rows("SELECT * FROM {rs}.weekly_segments ORDER BY week_start, user_id") == before
    # Rejected at once: a configuration error is not retried like a database hiccup.
    run = instance.get_runs()[0]
    retries = [
        e for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"
    ]
    assert retries == []
