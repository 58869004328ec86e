"""dormant_users -> retention.dormant_users: the as-of day D is the partition day.

One daily run over 92 days (D-91 .. D) computes the snapshots and the dormant list of every day in
it, so a single user whose activity lies on the first day crosses both boundaries (7 and 90 days).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from retention_pipeline.local.runner import run_job
from retention_pipeline_tests.scenario import Scenario, at, materialization_metadata, utc

D = date(2025, 5, 15)
FIRST = D - timedelta(days=91)
OLD = utc(2025, 1, 1, 0)
JOB = "daily_retention_job"


def ago(days: int) -> date:
    return D - timedelta(days=days)


def build(s: Scenario) -> None:
    for user_id in list(range(1, 13)) + [15, 16]:
        s.user(user_id, OLD)
    s.user(13, datetime.combine(ago(6), datetime.min.time(), OLD.tzinfo))  # 6 days old: too young
    s.user(14, utc(ago(7).year, ago(7).month, ago(7).day, 23, 59, 59))  # 7 days old: old enough
    s.daily_events(1, [ago(7)])
    s.daily_events(2, [ago(6)])
    s.daily_events(3, [ago(90)])
    s.daily_events(4, [ago(91)])
    s.daily_events(6, [ago(10)], per_day=10)
    s.daily_events(6, [ago(1)], per_day=5)  # exactly 50% down
    s.daily_events(7, [ago(10)], per_day=100)
    s.daily_events(7, [ago(1)], per_day=51)  # 49% down
    s.daily_events(8, [ago(13)], per_day=5)  # the minimum, on the first day of the earlier window
    s.daily_events(8, [D], per_day=2)  # on the as-of day itself
    s.daily_events(9, [ago(10)], per_day=4)  # one short of the minimum
    s.daily_events(9, [ago(1)], per_day=1)
    s.daily_events(10, [ago(14)], per_day=10)  # before the earlier window
    s.daily_events(10, [ago(6)], per_day=1)
    s.daily_events(11, [ago(7)], per_day=10)  # inactive for 7 days and declining: reason 'inactive'
    s.daily_events(12, [ago(7)], per_day=10)  # D-7 is the earlier window's last day
    s.daily_events(12, [ago(6)], per_day=1)
    s.daily_events(13, [ago(20)])  # backdated import before sign-up
    s.daily_events(14, [ago(20)])
    # User 15 never does anything. User 16: last actions.
    s.events(
        [
            (16, at(ago(12), 10), "login", {"device": "ios"}),
            (16, at(ago(10), 10), "create_task", {"task_title": "Old"}),
            (16, at(ago(9), 10), "comment", {"project_name": "Q3"}),
            (
                16,
                at(ago(8), 9),
                "create_task",
                {
                    "task_title": "Ship it",
                    "nested": {"a": 1},
                    "list": [1, 2],
                    "long": "x" * 300,
                    "n": 3,
                    "flag": True,
                    "nothing": None,
                },
            ),
            (16, at(ago(8), 10), "upload_file", [1, 2]),
            (16, at(ago(8), 10), "export_report", None),  # same instant, higher id: more recent
            (16, at(D + timedelta(days=1), 10), "after_as_of", {"x": 1}),
        ]
    )
    s.events([(None, at(ago(8))), (404, at(ago(8)))])


@pytest.fixture
def built(app_db_env, instance) -> Scenario:
    s = Scenario(app_db_env)
    build(s)
    result = run_job(instance, JOB, FIRST.isoformat(), D.isoformat(), quiet=True)
    assert result.success
    s.result = result  # the daily run's result, for its metadata and checks
    return s


def dormant_config(**thresholds) -> dict:
    return {"ops": {"dormant_users": {"config": thresholds}}}


def test_rules_and_boundaries_on_the_as_of_day(built: Scenario):
    dormant = built.dormant(D)
    assert {u: (r["reason"], r["days_inactive"]) for u, r in dormant.items()} == {
        1: ("inactive", 7),
        3: ("inactive", 90),
        6: ("declining", 1),
        8: ("declining", 0),
        11: ("inactive", 7),
        12: ("declining", 6),
        14: ("inactive", 20),
        16: ("inactive", 8),
    }
    assert (dormant[6]["recent_events"], dormant[6]["previous_events"]) == (5, 10)
    assert (dormant[8]["recent_events"], dormant[8]["previous_events"]) == (2, 5)
    assert (dormant[12]["recent_events"], dormant[12]["previous_events"]) == (1, 10)
    r = dormant[1]
    assert (r["email"], r["name"], r["signed_up_at"]) == ("user1@example.com", "User 1", OLD)
    assert r["last_activity_at"] == at(ago(7))
    evaluations = {
        e.check_name: e.passed for e in built.result.get_asset_check_evaluations() if e.asset_key.path[-1] == "dormant_users"
    }
    assert evaluations == {
        "activity_ingested": True,
        "dormant_vs_trailing_median": True,
        "planned_sends_within_ceiling": True,
        "unmapped_event_types_check": True,
    }
    metadata = materialization_metadata(built.result, "dormant_users")
    assert metadata["as_of"] == D.isoformat()
    assert (metadata["dormant_users"], metadata["dormant_inactive"], metadata["dormant_declining"]) == (8, 5, 3)


def test_every_as_of_day_of_the_run(built: Scenario):
    """User 4's only activity is on the run's first day: dormant exactly 7 .. 90 days later."""
    dormant_days = {
        r["as_of_date"]: r["days_inactive"]
        for r in built.rows("SELECT as_of_date, days_inactive FROM {rs}.dormant_users WHERE user_id = 4")
    }
    assert dormant_days == {FIRST + timedelta(days=n): n for n in range(7, 91)}
    # Activity after the as-of day does not count: on D-1, user 8's events of D are in the future.
    r = built.dormant(ago(1))[8]
    assert (r["reason"], r["days_inactive"], r["recent_events"], r["previous_events"]) == ("inactive", 12, 0, 5)
    assert len(built.rows("SELECT DISTINCT as_of_date FROM {rs}.dormant_users")) > 80


def test_last_actions(built: Scenario):
    actions = built.dormant(D)[16]["last_actions"]
    assert [a["event_type"] for a in actions] == ["export_report", "upload_file", "create_task"]
    assert [datetime.fromisoformat(a["occurred_at"]) for a in actions] == [at(ago(8), 10), at(ago(8), 10), at(ago(8), 9)]
    assert actions[0]["properties"] == {}
    assert actions[1]["properties"] == {}
    assert actions[2]["properties"] == {"task_title": "Ship it", "n": 3, "flag": True}


def test_a_carried_list_of_last_actions_equals_one_computed_from_the_events(built: Scenario, instance):
    """Yesterday's list is reused while the last activity stands still; it must age exactly like a fresh one.

    User 17's oldest action (ago(100)) leaves the 90-day lookback on ago(9), while the user stays dormant.
    """
    built.user(17, OLD)
    built.events(
        [
            (17, at(ago(100), 10), "login", {"device": "web"}),
            (17, at(ago(60), 10), "comment", {"project_name": "Q1"}),
            (17, at(ago(40), 10), "create_task", {"task_title": "Plan"}),
        ]
    )
    assert run_job(instance, JOB, FIRST.isoformat(), D.isoformat(), quiet=True).success
    carried = {day: built.dormant(day)[17]["last_actions"] for day in (ago(10), ago(9), ago(8), D)}
    assert [a["event_type"] for a in carried[ago(10)]] == ["create_task", "comment", "login"]
    assert [a["event_type"] for a in carried[ago(9)]] == ["create_task", "comment"]
    for day in (ago(10), ago(9), D):
        everyone = built.dormant(day)
        # Without the day before, every list of the day is computed from the events.
        built.db.execute("DELETE FROM {rs}.dormant_users WHERE as_of_date = :d", {"d": day - timedelta(days=1)})
        assert run_job(instance, JOB, day.isoformat(), quiet=True, assets=["dormant_users"]).success
        fresh = built.dormant(day)
        assert {u: r["last_actions"] for u, r in fresh.items()} == {u: r["last_actions"] for u, r in everyone.items()}
        assert fresh[17]["last_actions"] == carried[day]


def test_thresholds_are_configurable(built: Scenario, instance):
    result = run_job(
        instance,
        JOB,
        D.isoformat(),
        quiet=True,
        run_config=dormant_config(
            dormant_after_days=6, lost_after_days=89, min_account_age_days=30, last_actions=5, decline_min_events=4
        ),
    )
    assert result.success
    dormant = built.dormant(D)
    assert dormant[2]["reason"] == "inactive"  # 6 days now suffice
    assert 3 not in dormant  # 90 days is lost at 89
    assert dormant[9]["reason"] == "declining"  # 4 earlier events now suffice
    assert 14 not in dormant  # 7 days old is too young at 30
    assert len(dormant[16]["last_actions"]) == 5
    assert materialization_metadata(result, "dormant_users")["thresholds"]["lost_after_days"] == 89

    with pytest.raises(Exception) as failure:
        run_job(instance, JOB, D.isoformat(), quiet=True, run_config=dormant_config(decline_ratio=2.0))
    assert "DormancyThresholds: decline_ratio" in str(failure.value)
    assert built.dormant(D) == dormant


def test_late_event_within_the_trailing_window_is_counted_by_the_next_run(built: Scenario, instance):
    assert 1 in built.dormant(D)
    built.event(1, at(ago(3), 8), "late")
    # Three days back is outside the trailing window (trailing_days: 3 covers D-2 .. D)...
    assert run_job(instance, JOB, D.isoformat(), quiet=True).success
    assert 1 in built.dormant(D)
    # ...two days back is inside it: re-running the as-of day alone counts the event.
    built.db.execute("DELETE FROM events WHERE event_type = 'late'")
    built.event(1, at(ago(2), 8), "late")
    before = {u: r for u, r in built.dormant(D).items() if u != 1}
    assert run_job(instance, JOB, D.isoformat(), quiet=True).success
    after = built.dormant(D)
    assert 1 not in after
    assert after == before
