"""Intention to treat: both arms pass the same rules, and the analysis counts users as assigned.

A rule that depends on earlier sends (frequency cap, step-2 follow-up) reads every assignment: a
holdout row is a virtual send, a failed or unknown send is still an assignment to the email arm.
"""

from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from retention_pipeline import clock
from retention_pipeline.activity.trigger import install_trigger
from retention_pipeline.outreach.allocation import in_holdout
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.local.runner import run_job
from retention_pipeline.schema import install_schema
from retention_pipeline.local.fake_resend import FakeResend, ScriptedResponse
from retention_pipeline_tests.scenario import Scenario, at, live_campaign, materialization_metadata

AS_OF = date(2026, 5, 20)
MORNING_AFTER = datetime(2026, 5, 21, 9, 0, tzinfo=timezone.utc)
API_KEY = "re_test_key_123"
USERS = range(1, 201)   # 19 of them in the winback holdout, 181 assigned to the email
REJECTED = ScriptedResponse(422, {"statusCode": 422, "name": "validation_error", "message": "rejected for the test"})


def dormant_world(db, instance) -> None:
    """200 users last active 15 days before AS_OF, with their snapshots and dormancy up to AS_OF."""
    install_schema(db)
    install_trigger(db)
    s = Scenario(db)
    for user_id in USERS:
        s.user(user_id, at(AS_OF - timedelta(days=60)))
    s.events((user_id, at(AS_OF - timedelta(days=d)), "create_project") for user_id in USERS for d in range(30, 14, -1))
    clock.set_now(MORNING_AFTER)
    assert run_job(instance, "daily_retention_job", (AS_OF - timedelta(days=40)).isoformat(), AS_OF.isoformat(),
                   assets=["daily_activity_snapshots", "dormant_users"], quiet=True).success


def ledger(db) -> list[dict]:
    with db.engine().connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(db.render(
            "SELECT user_id, step, status, episode_start, as_of_date FROM {rs}.email_sends ORDER BY user_id, step, id"
        ))).mappings()]


def previous_episode_rows(db, treated_status: str) -> None:
    """Each user's ledger row of an earlier dormancy episode, written 5 days before AS_OF."""
    with db.begin() as conn:
        for user_id in USERS:
            status = "holdout" if in_holdout("winback", user_id, 0.1) else treated_status
            conn.execute(sa.text(db.render("""
                INSERT INTO {rs}.email_sends (campaign, step, user_id, episode_start, as_of_date, variant, status, email,
                    segment_reason, created_at, sent_at)
                VALUES ('winback', 1, :u, :episode, :day, :variant, :status, :email, 'inactive', :t,
                        CASE WHEN :status = 'sent' THEN CAST(:t AS timestamptz) END)""")),
                {"u": user_id, "episode": AS_OF - timedelta(days=60), "day": AS_OF - timedelta(days=5), "status": status,
                 "variant": "holdout" if status == "holdout" else "recap", "email": f"user{user_id}@example.com",
                 "t": at(AS_OF - timedelta(days=4), 9)})


@pytest.fixture
def fake_resend():
    with FakeResend(api_key=API_KEY, rate=50) as fake:
        yield fake


@pytest.fixture
def sender(fake_resend):
    return ResendSender(api_key=API_KEY, api_url=fake_resend.url, requests_per_second=50, backoff_base_seconds=0.05,
                        timeout_seconds=5)


def test_the_arms_of_the_issue_are_19_holdout_and_181_treated_users():
    holdout = [u for u in USERS if in_holdout("winback", u, 0.1)]
    assert (len(holdout), len(USERS) - len(holdout)) == (19, 181)


@pytest.mark.parametrize("treated_status", ["sent", "failed", "unknown"])
def test_symmetric_cooldown_holds_back_holdout_and_treated_users_alike(app_db_env, instance, fake_resend, sender,
                                                                       treated_status):
    """The issue's scenario: a previous episode's row 5 days earlier. Counting only real sends for the
    cooldown gave all 19 holdout users new rows and skipped all 181 treated ones; now both are skipped."""
    db = app_db_env
    dormant_world(db, instance)
    previous_episode_rows(db, treated_status)
    before = ledger(db)
    result = run_job(instance, "daily_retention_job", AS_OF.isoformat(), assets=["reengagement_emails"],
                     resources={"email_sender": sender}, run_config=live_campaign(), quiet=True)
    assert result.success
    assert ledger(db) == before, "a user inside the frequency cap got a new row, in either arm"
    assert materialization_metadata(result, "reengagement_emails")["skipped_by_reason"] == {"frequency_cap": 200}
    assert fake_resend.requests == []


def test_symmetric_filtering_once_the_cooldown_is_over(app_db_env, instance, fake_resend, sender):
    """Outside the cap both arms come back in full: every user gets exactly one new row in their arm."""
    db = app_db_env
    dormant_world(db, instance)
    previous_episode_rows(db, "failed")
    with db.begin() as conn:  # the previous episode was 20 days ago, beyond the 7-day cap
        conn.execute(sa.text(db.render("UPDATE {rs}.email_sends SET as_of_date = as_of_date - 15")))
    result = run_job(instance, "daily_retention_job", AS_OF.isoformat(), assets=["reengagement_emails"],
                     resources={"email_sender": sender}, run_config=live_campaign(), quiet=True)
    assert result.success
    new = [r for r in ledger(db) if r["as_of_date"] == AS_OF]
    assert sorted(r["user_id"] for r in new) == list(USERS)
    assert {r["user_id"] for r in new if r["status"] == "holdout"} == {u for u in USERS if in_holdout("winback", u, 0.1)}
    assert len(fake_resend.accepted) == 181


def test_as_assigned_step_two_follows_failed_treated_users_like_holdout_users(app_db_env, instance, fake_resend, sender):
    db = app_db_env
    dormant_world(db, instance)
    fake_resend.script(*[REJECTED] * 10)  # every step-1 batch is rejected for good: status failed
    assert run_job(instance, "daily_retention_job", AS_OF.isoformat(), assets=["reengagement_emails"],
                   resources={"email_sender": sender}, run_config=live_campaign(), quiet=True).success
    step_one = {r["user_id"]: r["status"] for r in ledger(db) if r["step"] == 1}
    assert set(step_one.values()) == {"failed", "holdout"} and len(step_one) == 200
    fake_resend.reset()  # the provider accepts again

    later = AS_OF + timedelta(days=14)
    clock.set_now(MORNING_AFTER + timedelta(days=14))
    assert run_job(instance, "daily_retention_job", (AS_OF + timedelta(days=1)).isoformat(), later.isoformat(),
                   resources={"email_sender": sender}, run_config=live_campaign(), quiet=True).success
    step_two = {r["user_id"]: r["status"] for r in ledger(db) if r["step"] == 2}
    assert set(step_two) == set(USERS), "step 2 must follow every step-1 assignment, failed sends included"
    assert {u for u, s in step_two.items() if s == "holdout"} == {u for u, s in step_one.items() if s == "holdout"}
    assert len(fake_resend.accepted) == 181


def test_intention_to_treat_counts_failed_and_unknown_sends_as_treated(app_db_env, instance):
    """Analysis as assigned: a failed or unknown send stays in the email arm; per protocol is secondary."""
    db = app_db_env
    install_schema(db)
    send_day, sent_at = date(2026, 4, 10), datetime(2026, 4, 11, 9, 0, tzinfo=timezone.utc)
    s = Scenario(db)
    arms = {1: "sent", 2: "sent", 3: "failed", 4: "unknown", 5: "holdout", 6: "holdout", 7: "pending"}
    for user_id in arms:
        s.user(user_id, sent_at - timedelta(days=90))
    for user_id in (1, 2, 5):   # both delivered emails and one holdout member bring users back
        s.event(user_id, sent_at + timedelta(days=2))
    with db.begin() as conn:
        for user_id, status in arms.items():
            conn.execute(sa.text(db.render("""
                INSERT INTO {rs}.email_sends (campaign, step, user_id, episode_start, as_of_date, variant, status, email,
                    segment_reason, created_at, sent_at)
                VALUES ('winback', 1, :u, :day, :day, :variant, :status, 'x@example.com', 'inactive', :t,
                        CASE WHEN :status = 'sent' THEN CAST(:t AS timestamptz) END)""")),
                {"u": user_id, "day": send_day, "status": status, "t": sent_at,
                 "variant": "holdout" if status == "holdout" else "recap"})
    result = run_job(instance, "daily_retention_job", (send_day + timedelta(days=20)).isoformat(),
                     assets=["reengagement_outcomes", "campaign_performance"], quiet=True)
    assert result.success
    with db.engine().connect() as conn:
        outcomes = {r.user_id: r for r in conn.execute(sa.text(db.render(
            "SELECT user_id, treated, delivered FROM {rs}.reengagement_outcomes WHERE window_days = 7")))}
        row = conn.execute(sa.text(db.render(
            "SELECT * FROM {rs}.campaign_performance WHERE variant = 'all' AND segment = 'all' AND window_days = 7"
        ))).mappings().one()
    assert {u: (o.treated, o.delivered) for u, o in outcomes.items()} == {
        1: (True, True), 2: (True, True), 3: (True, False), 4: (True, False), 5: (False, False), 6: (False, False)
    }, "a pending send is measured once it is settled"
    assert (row["treated"], row["treated_returned"], row["holdout"], row["holdout_returned"]) == (4, 2, 2, 1)
    assert row["lift"] == pytest.approx(2 / 4 - 1 / 2)
    assert (row["per_protocol_treated"], row["per_protocol_treated_returned"]) == (2, 2)
    assert row["per_protocol_lift"] == pytest.approx(2 / 2 - 1 / 2), "delivered only: the failed sends drop out"
    metadata = materialization_metadata(result, "campaign_performance")
    assert metadata["lift_winback_step1_7d"] == pytest.approx(0.0)
    assert metadata["per_protocol_lift_winback_step1_7d"] == pytest.approx(0.5)
    assert "per-protocol lift (delivered only)" in metadata["latest"]
