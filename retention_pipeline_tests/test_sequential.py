"""Auto-pause and "declare a winner" with an always-valid rule: error rate kept under daily looks,
a minimum sample, paused for review with the holdout still accruing, resumable by config."""

from datetime import UTC, date, datetime, time, timedelta

import pytest
import sqlalchemy as sa

from benchmarks.sequential import false_pause_rate
from retention_pipeline import clock
from retention_pipeline.activity.trigger import install_trigger
from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.runner import run_job
from retention_pipeline.outcomes.stats import lift
from retention_pipeline.outreach.allocation import (
    DayOutcome,
    SequentialRule,
    in_holdout,
    sequential_pause,
    sequential_winner,
    thompson_allocation,
)
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.schema import install_schema
from retention_pipeline_tests.scenario import Scenario, at, live_campaign, materialization_metadata

FIRST = date(2026, 4, 1)


def days_of(treated: tuple[int, int], holdout: tuple[int, int], days: int = 10, variant: str = "recap") -> list[DayOutcome]:
    """`days` equal send days with (users, returned) per arm each day."""
    rows = []
    for offset in range(days):
        day = FIRST + timedelta(days=offset)
        rows += [DayOutcome(day, variant, True, *treated), DayOutcome(day, "holdout", False, *holdout)]
    return rows


def test_sequential_pause_needs_the_minimum_sample():
    harmful = days_of(treated=(90, 9), holdout=(10, 5), days=5)  # 10% vs 50%: clearly worse, but 50 holdout users
    assert sequential_pause(harmful, SequentialRule(min_sample=100)) is None
    assert sequential_pause(harmful, SequentialRule(min_sample=50)) is not None


def test_sequential_pause_only_when_the_always_valid_interval_is_below_zero():
    rule = SequentialRule()
    assert sequential_pause(days_of(treated=(270, 27), holdout=(30, 15)), rule).startswith("lift -0.400")
    assert sequential_pause(days_of(treated=(270, 54), holdout=(30, 6)), rule) is None, "no difference: no pause"
    # A single-look interval (the score interval) already excludes zero here; the always-valid one must not.
    slightly_worse = days_of(treated=(270, 49), holdout=(30, 7))
    pooled = lift(490, 2700, 70, 300)
    assert pooled.ci_high < 0
    assert sequential_pause(slightly_worse, rule) is None


def test_sequential_false_pause_rate_under_zero_effect_is_at_most_5_percent():
    # 90 daily looks at 300 sends a day (benchmarks/sequential.py measures it with 2,000 replicates).
    rates = false_pause_rate(replicates=150, seed=3)
    assert rates["old_rule"] > 0.10, f"the simulation must show the peeking problem the old rule had: {rates}"
    assert rates["always_valid"] <= 0.05, rates


def test_always_valid_pause_stands_until_resumed_by_config():
    harmful = days_of(treated=(270, 27), holdout=(30, 15))
    first = thompson_allocation("c", 1, FIRST, ["recap", "nudge"], harmful, 0.1)
    assert first.paused and first.decision == "paused_for_review" and first.reason.startswith("paused for review")
    # The next day the data no longer shows it (e.g. fewer rows read): the pause stands all the same.
    later = thompson_allocation(
        "c",
        1,
        FIRST + timedelta(days=1),
        ["recap", "nudge"],
        [],
        0.1,
        previous={"decision": first.decision, "reason": first.reason},
    )
    assert later.paused and later.reason == first.reason
    resumed = thompson_allocation(
        "c",
        1,
        FIRST + timedelta(days=2),
        ["recap", "nudge"],
        harmful,
        0.1,
        previous={"decision": first.decision, "reason": first.reason},
        resumed=True,
    )
    assert not resumed.paused and resumed.decision == "resumed" and sum(resumed.shares.values()) == pytest.approx(1)


def test_always_valid_winner_is_declared_within_days_and_takes_the_sends():
    rule = SequentialRule()
    even = [DayOutcome(FIRST + timedelta(days=d), v, True, 135, 27) for d in range(10) for v in ("recap", "nudge")]
    assert sequential_winner(even, ["recap", "nudge"], rule) is None
    better = [
        DayOutcome(FIRST + timedelta(days=d), v, True, 135, 54 if v == "nudge" else 27)
        for d in range(10)
        for v in ("recap", "nudge")
    ]
    winner, reason = sequential_winner(better, ["recap", "nudge"], rule)
    assert winner == "nudge" and "beats recap by +0.200" in reason
    allocation = thompson_allocation("c", 1, FIRST, ["recap", "nudge"], better, 0.1, rule)
    assert allocation.decision == "winner" and allocation.shares == {"recap": 0.1, "nudge": pytest.approx(0.9)}
    too_few = better[:2]
    assert sequential_winner(too_few, ["recap", "nudge"], rule) is None, "135 users per variant is below the minimum sample"


def test_always_valid_winner_is_not_fooled_by_a_mix_that_shifts_over_time():
    # Equal variants; the base rate doubles on day 2 while the allocation moves to nudge. Pooled, nudge
    # looks 9 points better; within each day there is no difference.
    rows = [
        DayOutcome(FIRST, "recap", True, 900, 90),
        DayOutcome(FIRST, "nudge", True, 100, 10),
        DayOutcome(FIRST + timedelta(days=1), "recap", True, 100, 30),
        DayOutcome(FIRST + timedelta(days=1), "nudge", True, 900, 270),
    ]
    assert sequential_winner(rows, ["recap", "nudge"], SequentialRule()) is None


AS_OF = date(2026, 5, 20)
MORNING_AFTER = datetime(2026, 5, 21, 9, 0, tzinfo=UTC)


def _seed_harmful_outcomes(db) -> None:
    """Closed 7-day windows of earlier sends of step 1: 10% of treated came back against 50% of the holdout."""
    rows = []
    for i in range(400):
        treated = i >= 100
        returned = (i % 10 == 0) if treated else (i % 2 == 0)
        reference = datetime.combine(AS_OF - timedelta(days=20 + i % 5), time(9), UTC)
        rows.append(
            {
                "send_id": 1_000_000 + i,
                "variant": "recap" if treated else "holdout",
                "treated": treated,
                "user_id": 500_000 + i,
                "reference_at": reference,
                "returned": returned,
            }
        )
    with db.begin() as conn:
        conn.execute(
            sa.text(
                db.render("""
            INSERT INTO {rs}.reengagement_outcomes (send_id, window_days, campaign, step, variant, treated, segment_reason,
                user_id, mrr_cents, reference_at, window_end, returned, events, active_days, final, evaluated_as_of)
            VALUES (:send_id, 7, 'winback', 1, :variant, :treated, 'inactive', :user_id, 0, :reference_at,
                    CAST(:reference_at AS timestamptz) + interval '7 days', :returned, 0, 0, true, :as_of)""")
            ),
            [row | {"as_of": AS_OF} for row in rows],
        )


def _decisions(db, day: date) -> list[dict]:
    return [
        dict(r._mapping)
        for r in db.fetch_all(
            "SELECT variant, decision, step_paused, reason FROM {rs}.allocation_decisions WHERE as_of_date = :d AND step = 1",
            {"d": day},
        )
    ]


def _ledger(db, day: date) -> dict[int, str]:
    return {
        r.user_id: r.status
        for r in db.fetch_all("SELECT user_id, status FROM {rs}.email_sends WHERE as_of_date = :d AND step = 1", {"d": day})
    }


def test_sequential_pause_for_review_keeps_the_holdout_accruing_and_resumes_by_config(app_db_env, instance):
    db = app_db_env
    install_schema(db)
    install_trigger(db)
    s = Scenario(db)
    for user_id in range(1, 121):
        s.user(user_id, at(AS_OF - timedelta(days=60)))
        s.events((user_id, at(AS_OF - timedelta(days=d)), "login") for d in range(30, 14, -1))
    _seed_harmful_outcomes(db)
    episode_start = AS_OF - timedelta(days=11)  # the users enter dormant_users (declining) that day
    holdout = {u for u in range(1, 121) if in_holdout("winback", 1, u, episode_start, 0.1)}
    assert holdout, "the population must have holdout members"

    def plan_config(**extra) -> dict:
        return live_campaign(
            {
                "ops": {
                    "reengagement_emails": {
                        "ops": {"plan_reengagement_sends": {"config": {"adaptive_allocation": True, **extra}}}
                    }
                }
            }
        )

    with FakeResend(api_key="re_k", rate=100) as provider:
        sender = ResendSender(api_key="re_k", api_url=provider.url, requests_per_second=100, backoff_base_seconds=0.01)
        clock.set_now(MORNING_AFTER)
        result = run_job(
            instance,
            "daily_retention_job",
            (AS_OF - timedelta(days=40)).isoformat(),
            AS_OF.isoformat(),
            run_config=plan_config(),
            resources={"email_sender": sender},
            quiet=True,
        )
        assert result.success
        assert provider.accepted == [], "a step paused for review sends nothing"
        assert _ledger(db, AS_OF) == {u: "holdout" for u in holdout}, "the holdout keeps accruing while paused"
        metadata = materialization_metadata(result, "reengagement_emails")
        assert metadata["paused_for_review"]["1"].startswith("paused for review: lift -0.400")
        assert metadata["skipped_by_reason"]["step_paused_for_review"] == 120 - len(holdout)
        decisions = _decisions(db, AS_OF)
        assert [(d["variant"], d["decision"], d["step_paused"]) for d in decisions] == [("all", "paused_for_review", True)]

        next_day = AS_OF + timedelta(days=1)
        clock.set_now(MORNING_AFTER + timedelta(days=1))
        result = run_job(
            instance,
            "daily_retention_job",
            next_day.isoformat(),
            run_config=plan_config(resume_steps=[1]),
            resources={"email_sender": sender},
            quiet=True,
        )
        assert result.success
        emailed = {u for u, status in _ledger(db, next_day).items() if status == "sent"}
        assert emailed == set(range(1, 121)) - holdout, "resumed: the users skipped while paused are emailed"
        assert {d["decision"] for d in _decisions(db, next_day)} == {"resumed"}
        assert materialization_metadata(result, "reengagement_emails")["paused_for_review"] == {}
