"""Intention to treat: both arms pass the same rules, and the analysis counts users as assigned.

The arm is drawn for each step of each dormancy episode. A rule that depends on earlier sends (frequency
cap, step-2 follow-up) reads every assignment: a holdout row is a virtual send, a failed or unknown send
is still an assignment to the email arm. Suppression is applied after the draw, in both arms alike.
"""

from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from retention_pipeline import clock
from retention_pipeline.activity.trigger import install_trigger
from retention_pipeline.local.fake_resend import FakeResend, ScriptedResponse
from retention_pipeline.local.runner import run_job
from retention_pipeline.outreach.allocation import in_holdout
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.schema import install_schema
from retention_pipeline_tests.scenario import Scenario, at, live_campaign, materialization_metadata

AS_OF = date(2026, 5, 20)
MORNING_AFTER = datetime(2026, 5, 21, 9, 0, tzinfo=UTC)
API_KEY = "re_test_key_123"
USERS = range(1, 201)
PREVIOUS_EPISODE = AS_OF - timedelta(days=60)  # the episode of the rows previous_episode_rows writes
EPISODE_START = AS_OF - timedelta(days=11)  # the world's users enter dormant_users (declining) that day
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
    assert run_job(
        instance,
        "daily_retention_job",
        (AS_OF - timedelta(days=40)).isoformat(),
        AS_OF.isoformat(),
        assets=["daily_activity_snapshots", "dormant_users"],
        quiet=True,
    ).success


def ledger(db) -> list[dict]:
    with db.engine().connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    db.render(
                        "SELECT user_id, step, status, episode_start, as_of_date, suppression FROM {rs}.email_sends "
                        "ORDER BY user_id, step, id"
                    )
                )
            ).mappings()
        ]


def previous_episode_rows(db, treated_status: str) -> None:
    """Each user's ledger row of an earlier dormancy episode, written 5 days before AS_OF."""
    with db.begin() as conn:
        for user_id in USERS:
            status = "holdout" if in_holdout("winback", 1, user_id, PREVIOUS_EPISODE, 0.1) else treated_status
            conn.execute(
                sa.text(
                    db.render("""
                INSERT INTO {rs}.email_sends (campaign, step, user_id, episode_start, as_of_date, variant, status, email,
                    segment_reason, created_at, sent_at)
                VALUES ('winback', 1, :u, :episode, :day, :variant, :status, :email, 'inactive', :t,
                        CASE WHEN :status = 'sent' THEN CAST(:t AS timestamptz) END)""")
                ),
                {
                    "u": user_id,
                    "episode": PREVIOUS_EPISODE,
                    "day": AS_OF - timedelta(days=5),
                    "status": status,
                    "variant": "holdout" if status == "holdout" else "recap",
                    "email": f"user{user_id}@example.com",
                    "t": at(AS_OF - timedelta(days=4), 9),
                },
            )


@pytest.fixture
def fake_resend():
    with FakeResend(api_key=API_KEY, rate=50) as fake:
        yield fake


@pytest.fixture
def sender(fake_resend):
    return ResendSender(
        api_key=API_KEY, api_url=fake_resend.url, requests_per_second=50, backoff_base_seconds=0.05, timeout_seconds=5
    )


def holdout_of(step: int, episode_start: date) -> set[int]:
    return {u for u in USERS if in_holdout("winback", step, u, episode_start, 0.1)}


def test_intention_to_treat_draws_the_arm_afresh_for_each_step_and_episode():
    """The unit is a step of a user's dormancy episode: a user's episodes and steps are independent draws
    (one arm per user made their rows correlated), each stable across re-runs."""
    earlier, now, step_two = holdout_of(1, PREVIOUS_EPISODE), holdout_of(1, EPISODE_START), holdout_of(2, EPISODE_START)
    assert all(0 < len(arm) < 40 for arm in (earlier, now, step_two))
    assert earlier != now and now != step_two and len(earlier & now) < len(now)
    assert now == holdout_of(1, EPISODE_START)
    units = [(u, date(2026, 1, 1) + timedelta(days=d)) for u in range(1, 101) for d in range(100)]
    share = sum(in_holdout("winback", 1, u, start, 0.1) for u, start in units) / len(units)
    assert abs(share - 0.1) <= 0.01


@pytest.mark.parametrize("treated_status", ["sent", "failed", "unknown"])
def test_symmetric_cooldown_holds_back_holdout_and_treated_users_alike(app_db_env, instance, fake_resend, sender, treated_status):
    """The issue's scenario: a previous episode's row 5 days earlier. Counting only real sends for the
    cooldown gave all 19 holdout users new rows and skipped all 181 treated ones; now both are skipped."""
    db = app_db_env
    dormant_world(db, instance)
    previous_episode_rows(db, treated_status)
    before = ledger(db)
    result = run_job(
        instance,
        "daily_retention_job",
        AS_OF.isoformat(),
        assets=["reengagement_emails"],
        resources={"email_sender": sender},
        run_config=live_campaign(),
        quiet=True,
    )
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
    result = run_job(
        instance,
        "daily_retention_job",
        AS_OF.isoformat(),
        assets=["reengagement_emails"],
        resources={"email_sender": sender},
        run_config=live_campaign(),
        quiet=True,
    )
    assert result.success
    new = [r for r in ledger(db) if r["as_of_date"] == AS_OF]
    assert sorted(r["user_id"] for r in new) == list(USERS)
    assert {r["episode_start"] for r in new} == {EPISODE_START}
    assert {r["user_id"] for r in new if r["status"] == "holdout"} == holdout_of(1, EPISODE_START)
    assert len(fake_resend.accepted) == len(USERS) - len(holdout_of(1, EPISODE_START))


def test_symmetric_suppression_keeps_suppressed_users_in_both_arms_visibly_and_unsent(app_db_env, instance, fake_resend, sender):
    """The asymmetric scenario: in an earlier episode only the email arm got emails, so only its users could
    unsubscribe. Skipping suppressed users before the draw took them out of that arm alone (one arm per
    user: every unsubscriber was a treated user, no holdout member was). Now the new episode's arm is drawn
    first for every user; a suppressed assignment stays in its arm with the reason, is never sent, and
    both arms lose nobody."""
    db = app_db_env
    dormant_world(db, instance)
    previous_episode_rows(db, "sent")
    with db.begin() as conn:  # the previous episode was 20 days ago, beyond the 14-day cap
        conn.execute(sa.text(db.render("UPDATE {rs}.email_sends SET as_of_date = as_of_date - 15")))
        unsubscribed = {u for u in USERS if u not in holdout_of(1, PREVIOUS_EPISODE)} & set(range(1, 201, 4))
        conn.execute(
            sa.text(
                db.render(
                    "INSERT INTO {rs}.email_suppressions (email, reason, source, created_at) "
                    "VALUES (:email, 'unsubscribed', 'unsubscribe link', :t)"
                )
            ),
            [{"email": f"user{u}@example.com", "t": at(AS_OF - timedelta(days=18))} for u in unsubscribed],
        )
    holdout = holdout_of(1, EPISODE_START)
    assert unsubscribed & holdout and unsubscribed - holdout, "the scenario needs suppressed users in both new arms"

    result = run_job(
        instance,
        "daily_retention_job",
        AS_OF.isoformat(),
        assets=["reengagement_emails"],
        resources={"email_sender": sender},
        run_config=live_campaign(),
        quiet=True,
    )
    assert result.success
    new = {r["user_id"]: r for r in ledger(db) if r["as_of_date"] == AS_OF}
    assert sorted(new) == list(USERS), "nobody is filtered out before the draw, in either arm"
    assert {u for u, r in new.items() if r["status"] == "holdout"} == holdout
    assert {u for u, r in new.items() if r["status"] == "suppressed"} == unsubscribed - holdout
    assert {u for u, r in new.items() if r["suppression"] == "unsubscribed"} == unsubscribed, "visible in both arms"
    delivered = {a.email["to"][0] if isinstance(a.email["to"], list) else a.email["to"] for a in fake_resend.accepted}
    assert delivered == {f"user{u}@example.com" for u in USERS if u not in holdout | unsubscribed}
    metadata = materialization_metadata(result, "reengagement_emails")
    assert "suppressed" not in metadata["skipped_by_reason"]
    assert metadata["suppressed_by_arm"] == {"email": len(unsubscribed - holdout), "holdout": len(unsubscribed & holdout)}
    assert metadata["suppressed"] == len(unsubscribed - holdout)
    # Equal filtering: each arm keeps every user drawn into it, and the assignments (what the analysis reads)
    # carry the suppressed ones as assigned, flagged in both arms.
    arms = {
        (r.treated, r.suppressed): r.users
        for r in db.fetch_all(
            "SELECT treated, suppressed, count(*) AS users FROM {rs}.assignments WHERE as_of_date = :d GROUP BY 1, 2",
            {"d": AS_OF},
        )
    }
    assert arms == {
        (True, False): len(USERS) - len(holdout | unsubscribed),
        (True, True): len(unsubscribed - holdout),
        (False, False): len(holdout - unsubscribed),
        (False, True): len(unsubscribed & holdout),
    }


def test_as_assigned_step_two_follows_failed_treated_users_like_holdout_users(app_db_env, instance, fake_resend, sender):
    db = app_db_env
    dormant_world(db, instance)
    fake_resend.script(*[REJECTED] * 10)  # every step-1 batch is rejected for good: status failed
    assert run_job(
        instance,
        "daily_retention_job",
        AS_OF.isoformat(),
        assets=["reengagement_emails"],
        resources={"email_sender": sender},
        run_config=live_campaign(),
        quiet=True,
    ).success
    step_one = {r["user_id"]: r["status"] for r in ledger(db) if r["step"] == 1}
    assert set(step_one.values()) == {"failed", "holdout"} and len(step_one) == 200
    fake_resend.reset()  # the provider accepts again

    later = AS_OF + timedelta(days=14)
    clock.set_now(MORNING_AFTER + timedelta(days=14))
    assert run_job(
        instance,
        "daily_retention_job",
        (AS_OF + timedelta(days=1)).isoformat(),
        later.isoformat(),
        resources={"email_sender": sender},
        run_config=live_campaign(),
        quiet=True,
    ).success
    step_two = {r["user_id"]: r["status"] for r in ledger(db) if r["step"] == 2}
    assert set(step_two) == set(USERS), "step 2 must follow every step-1 assignment, failed sends included"
    assert {u for u, s in step_one.items() if s == "holdout"} == holdout_of(1, EPISODE_START)
    # Step 2 draws its own arm: its comparison is randomized among everyone step 1 left dormant.
    assert {u for u, s in step_two.items() if s == "holdout"} == holdout_of(2, EPISODE_START)
    assert len(fake_resend.accepted) == len(USERS) - len(holdout_of(2, EPISODE_START))


def test_intention_to_treat_counts_failed_and_unknown_sends_as_treated(app_db_env, instance):
    """Analysis as assigned: a failed or unknown send, or an address suppressed at assignment, stays in the email
    arm; per protocol is secondary."""
    db = app_db_env
    install_schema(db)
    send_day, sent_at = date(2026, 4, 10), datetime(2026, 4, 11, 9, 0, tzinfo=UTC)
    s = Scenario(db)
    arms = {1: "sent", 2: "sent", 3: "failed", 4: "unknown", 5: "holdout", 6: "holdout", 7: "pending", 8: "suppressed"}
    for user_id in arms:
        s.user(user_id, sent_at - timedelta(days=90))
    for user_id in (1, 2, 5):  # both delivered emails and one holdout member bring users back
        s.event(user_id, sent_at + timedelta(days=2))
    with db.begin() as conn:
        for user_id, status in arms.items():
            conn.execute(
                sa.text(
                    db.render("""
                INSERT INTO {rs}.email_sends (campaign, step, user_id, episode_start, as_of_date, variant, status, email,
                    segment_reason, created_at, sent_at, suppression)
                VALUES ('winback', 1, :u, :day, :day, :variant, :status, 'x@example.com', 'inactive', :t,
                        CASE WHEN :status = 'sent' THEN CAST(:t AS timestamptz) END,
                        CASE WHEN :status = 'suppressed' THEN 'unsubscribed' END)""")
                ),
                {
                    "u": user_id,
                    "day": send_day,
                    "status": status,
                    "t": sent_at,
                    "variant": "holdout" if status == "holdout" else "recap",
                },
            )
    result = run_job(
        instance,
        "daily_retention_job",
        (send_day + timedelta(days=20)).isoformat(),
        assets=["reengagement_outcomes", "campaign_performance"],
        quiet=True,
    )
    assert result.success
    with db.engine().connect() as conn:
        outcomes = {
            r.user_id: r
            for r in conn.execute(
                sa.text(db.render("SELECT user_id, treated, delivered FROM {rs}.reengagement_outcomes WHERE window_days = 7"))
            )
        }
        row = (
            conn.execute(
                sa.text(
                    db.render(
                        "SELECT * FROM {rs}.campaign_performance WHERE variant = 'all' AND segment = 'all' AND window_days = 7"
                    )
                )
            )
            .mappings()
            .one()
        )
    assert {u: (o.treated, o.delivered) for u, o in outcomes.items()} == {
        1: (True, True),
        2: (True, True),
        3: (True, False),
        4: (True, False),
        5: (False, False),
        6: (False, False),
        8: (True, False),
    }, "a pending send is measured once it is settled"
    assert (row["treated"], row["treated_returned"], row["holdout"], row["holdout_returned"]) == (5, 2, 2, 1)
    assert row["lift"] == pytest.approx(2 / 5 - 1 / 2)
    assert (row["per_protocol_treated"], row["per_protocol_treated_returned"]) == (2, 2)
    assert row["per_protocol_lift"] == pytest.approx(2 / 2 - 1 / 2), "delivered only: the failed sends drop out"
    metadata = materialization_metadata(result, "campaign_performance")
    assert metadata["lift_winback_step1_7d"] == pytest.approx(-0.1)
    assert metadata["per_protocol_lift_winback_step1_7d"] == pytest.approx(0.5)
    assert "per-protocol lift (delivered only)" in metadata["latest"]
