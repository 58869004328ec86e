"""Re-engagement emails through the real resend SDK against a local Resend-like server: exactly once."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from retention_pipeline import clock
from retention_pipeline.activity.trigger import install_trigger
from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.runner import run_job
from retention_pipeline.outreach.allocation import in_holdout
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.outreach.tokens import verify_unsubscribe_token
from retention_pipeline.schema import install_schema
from retention_pipeline_tests.scenario import Scenario, at, live_campaign, materialization_metadata

AS_OF = date(2026, 5, 20)  # the partition day; the run happens the next morning
MORNING_AFTER = datetime(2026, 5, 21, 9, 0, tzinfo=UTC)
API_KEY = "re_test_key_123"
SECRET = "test-unsubscribe-secret"
EPISODE_START = AS_OF - timedelta(days=11)  # the world's users enter dormant_users (declining) that day


def held_out(user_id: int) -> bool:
    return in_holdout("winback", 1, user_id, EPISODE_START, 0.1)


def build_world(db) -> dict:
    """Users last active 15 days before AS_OF (dormant), plus one of each kind that must not be emailed."""
    s = Scenario(db)
    install_schema(db)
    install_trigger(db)
    kinds = {}
    for user_id in range(1, 81):
        email, name = f"user{user_id}@example.com", f"User {user_id}"
        if user_id == 1:
            name = "<script>alert(1)</script>"
        if user_id == 2:
            email, kinds["invalid_email"] = "not-an-address", user_id
        if user_id == 3:
            kinds["unsubscribed"] = user_id
        if user_id == 4:
            kinds["bounced"] = user_id
        s.user(user_id, at(AS_OF - timedelta(days=60)), email=email, name=name)
        s.events(
            (user_id, at(AS_OF - timedelta(days=d)), "create_project", {"project_name": f"Plan {user_id}"}, None)
            for d in range(30, 14, -1)
        )
    with db.begin() as conn:
        suppress = sa.text(
            db.render(
                "INSERT INTO {rs}.email_suppressions (email, reason, source, created_at) VALUES (lower(:email), :reason, 'test', :t)"
            )
        )
        conn.execute(suppress, {"email": "user3@example.com", "reason": "unsubscribed", "t": MORNING_AFTER})
        conn.execute(suppress, {"email": "USER4@example.com", "reason": "bounced", "t": MORNING_AFTER})
    return kinds


def expected_recipients(kinds: dict, returned: set[int] = frozenset()) -> set[str]:
    """Step 1's recipients: the email arm, less invalid and suppressed addresses (the suppressed ones are
    assigned all the same) and users who came back."""
    skipped = set(kinds.values()) | set(returned)
    return {f"user{u}@example.com" for u in range(1, 81) if u not in skipped and not held_out(u)}


def sends(db) -> list[dict]:
    with db.engine().connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    db.render(
                        "SELECT user_id, step, status, variant, email, payload, provider_message_id, episode_start, suppression "
                        "FROM {rs}.email_sends ORDER BY user_id, id"
                    )
                )
            ).mappings()
        ]


@pytest.fixture
def fake_resend():
    with FakeResend(api_key=API_KEY, rate=50) as fake:
        yield fake


@pytest.fixture
def sender(fake_resend):
    return ResendSender(
        api_key=API_KEY, api_url=fake_resend.url, requests_per_second=50, backoff_base_seconds=0.05, timeout_seconds=5
    )


def run_day(instance, sender, first: date, last: date | None = None, assets=None, run_config=None):
    if sender is not None and (assets is None or "reengagement_emails" in assets):
        run_config = live_campaign(run_config)
    return run_job(
        instance,
        "daily_retention_job",
        first.isoformat(),
        (last or first).isoformat(),
        resources={"email_sender": sender} if sender else None,
        assets=assets,
        run_config=run_config,
        quiet=True,
    )


def test_every_eligible_user_gets_exactly_one_email_and_a_rerun_sends_nothing(app_db_env, instance, fake_resend, sender):
    db = app_db_env
    kinds = build_world(db)
    clock.set_now(MORNING_AFTER)
    # The user came back after the snapshot: the trigger saw it, so the send-time re-check skips them.
    result = run_day(instance, sender, AS_OF - timedelta(days=40), AS_OF, assets=["daily_activity_snapshots", "dormant_users"])
    assert result.success
    Scenario(db, first_event_id=900_000).event(5, MORNING_AFTER - timedelta(hours=1), "login")
    result = run_day(instance, sender, AS_OF, assets=["reengagement_emails"])
    assert result.success

    delivered = [a.email["to"][0] if isinstance(a.email["to"], list) else a.email["to"] for a in fake_resend.accepted]
    assert len(delivered) == len(set(delivered)), "someone got two emails"
    assert set(delivered) == expected_recipients(kinds, returned={5})
    ledger = sends(db)
    by_user = {row["user_id"]: row for row in ledger}
    assert {r["episode_start"] for r in ledger} == {EPISODE_START}
    assert {u for u, r in by_user.items() if r["status"] == "holdout"} == {u for u in range(1, 81) if held_out(u)} - {
        kinds["invalid_email"],
        5,
    }
    assert all(r["provider_message_id"] for r in ledger if r["status"] == "sent")
    assert {kinds["invalid_email"], 5}.isdisjoint(by_user)
    # Suppressed addresses are assigned like everyone else (in either arm), recorded with why, never sent.
    for kind in ("unsubscribed", "bounced"):
        row = by_user[kinds[kind]]
        assert row["suppression"] == kind and row["payload"] is None
        assert row["status"] == ("holdout" if held_out(kinds[kind]) else "suppressed")
    metadata = materialization_metadata(result, "reengagement_emails")
    assert metadata["skipped_by_reason"] == {"invalid_email": 1, "returned": 1}

    # Every request carried an idempotency key; every email the unsubscribe headers and a valid token.
    assert all(r.idempotency_key for r in fake_resend.requests)
    first = fake_resend.accepted[0].email
    assert first["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = first["headers"]["List-Unsubscribe"].split("token=")[1].rstrip(">")
    ref = verify_unsubscribe_token(SECRET, token, today=AS_OF).send_ref
    to = first["to"][0] if isinstance(first["to"], list) else first["to"]
    assert db.scalar("SELECT email FROM {rs}.email_sends WHERE unsubscribe_ref = :r", {"r": ref}) == to

    accepted_before = len(fake_resend.accepted)
    assert run_day(instance, sender, AS_OF, assets=["reengagement_emails"]).success
    assert len(fake_resend.accepted) == accepted_before, "a second run the same day sent again"
    assert sends(db) == ledger


def test_names_with_html_are_escaped_in_the_email(app_db_env, instance, fake_resend, sender):
    db = app_db_env
    build_world(db)
    clock.set_now(MORNING_AFTER)
    assert run_day(instance, sender, AS_OF - timedelta(days=40), AS_OF).success
    row = next(r for r in sends(db) if r["user_id"] == 1)
    if row["status"] == "holdout":
        pytest.skip("user 1 is in the holdout for this campaign name")
    assert "<script>alert(1)</script>" not in row["payload"]["html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in row["payload"]["html"]
    assert "\n" not in row["payload"]["subject"] and "\r" not in row["payload"]["subject"]


def test_a_backfill_of_30_past_days_sends_nothing(app_db_env, instance, fake_resend, sender):
    db = app_db_env
    build_world(db)
    clock.set_now(MORNING_AFTER + timedelta(days=40))
    result = run_day(instance, sender, AS_OF - timedelta(days=29), AS_OF)
    assert result.success
    assert fake_resend.accepted == [] and fake_resend.requests == []
    assert sends(db) == []
    guards = materialization_metadata(result, "reengagement_emails")["guards"]
    assert len(guards) == 30 and all("max_send_lag_days" in reason for reason in guards.values())


def test_the_kill_switch_sends_nothing(app_db_env, instance, fake_resend, sender):
    db = app_db_env
    build_world(db)
    clock.set_now(MORNING_AFTER)
    config = {"ops": {"reengagement_emails": {"ops": {"plan_reengagement_sends": {"config": {"paused": True}}}}}}
    assert run_day(instance, sender, AS_OF - timedelta(days=40), AS_OF, run_config=config).success
    assert fake_resend.requests == [] and sends(db) == []


def test_step_two_goes_only_to_users_still_dormant_after_the_delay(app_db_env, instance, fake_resend, sender):
    db = app_db_env
    kinds = build_world(db)
    clock.set_now(MORNING_AFTER)
    assert run_day(instance, sender, AS_OF - timedelta(days=40), AS_OF).success
    step_one = {r["user_id"] for r in sends(db) if r["step"] == 1 and r["status"] == "sent"}
    came_back = sorted(step_one)[:3]
    s = Scenario(db, first_event_id=800_000)
    for user_id in came_back:
        s.event(user_id, at(AS_OF + timedelta(days=3)), "login")
    later = AS_OF + timedelta(days=14)
    clock.set_now(MORNING_AFTER + timedelta(days=14))
    assert run_day(instance, sender, AS_OF + timedelta(days=1), later).success
    ledger = sends(db)
    # Step 2 follows every step-1 assignment (either arm) of users still dormant, and draws its own arm.
    step_one_assigned = {r["user_id"] for r in ledger if r["step"] == 1 and r["episode_start"] == EPISODE_START}
    step_two = {r["user_id"]: r["status"] for r in ledger if r["step"] == 2}
    assert set(step_two) == step_one_assigned - set(came_back)
    suppressed = {kinds["unsubscribed"], kinds["bounced"]}
    assert {u for u, status in step_two.items() if status == "sent"} == {
        u for u in step_two if not in_holdout("winback", 2, u, EPISODE_START, 0.1)
    } - suppressed
    # Those who came back went quiet again (11 days by the end): a new episode starts at step 1,
    # outside the 14-day frequency cap.
    new_episode = {r["user_id"] for r in ledger if r["step"] == 1 and r["episode_start"] > EPISODE_START}
    assert new_episode == set(came_back)
    delivered = [a.email["to"][0] if isinstance(a.email["to"], list) else a.email["to"] for a in fake_resend.accepted]
    assert len(delivered) == sum(1 for r in ledger if r["status"] == "sent")


def test_a_kill_between_send_and_record_never_sends_twice(app_db_env, instance, tmp_path):
    db = app_db_env
    kinds = build_world(db)
    clock.set_now(MORNING_AFTER)
    assert run_day(
        instance, None, AS_OF - timedelta(days=40), AS_OF, assets=["daily_activity_snapshots", "dormant_users"]
    ).success
    # The server accepts on arrival and answers 30 s later: the run is killed while it waits.
    with FakeResend(api_key=API_KEY, rate=50, latency_seconds=30) as slow:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
            from datetime import date
            from dagster import DagsterInstance
            from retention_pipeline.outreach.senders import ResendSender
            from retention_pipeline.local.runner import run_job
            from retention_pipeline_tests.scenario import live_campaign
            sender = ResendSender(api_key={API_KEY!r}, api_url={slow.url!r}, requests_per_second=50, timeout_seconds=60)
            with DagsterInstance.ephemeral() as instance:
                run_job(instance, "daily_retention_job", {AS_OF.isoformat()!r}, resources={{"email_sender": sender}},
                        assets=["reengagement_emails"], run_config=live_campaign(), quiet=True)
        """),
            ],
            env=os.environ | {"RETENTION_NOW": MORNING_AFTER.isoformat()},
        )
        deadline = time.monotonic() + 60
        while not slow.accepted and time.monotonic() < deadline:
            time.sleep(0.1)
        assert slow.accepted, "the child never reached the provider"
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert any(r["status"] == "pending" for r in sends(db)), "the ledger row must precede the send"

        slow.latency_seconds = 0
        sender = ResendSender(api_key=API_KEY, api_url=slow.url, requests_per_second=50, timeout_seconds=5)
        assert run_day(instance, sender, AS_OF, assets=["reengagement_emails"]).success
        delivered = [a.email["to"][0] if isinstance(a.email["to"], list) else a.email["to"] for a in slow.accepted]
        assert len(delivered) == len(set(delivered)), "the re-run sent an email twice"
        assert set(delivered) == expected_recipients(kinds)
        assert {r["status"] for r in sends(db)} <= {"sent", "holdout", "suppressed"}


def test_holdout_share_is_within_one_point_at_10000_users_and_stable():
    members = [u for u in range(1, 10_001) if in_holdout("winback", 1, u, EPISODE_START, 0.1)]
    assert abs(len(members) / 10_000 - 0.1) <= 0.01
    assert members == [u for u in range(1, 10_001) if in_holdout("winback", 1, u, EPISODE_START, 0.1)]
    assert members != [u for u in range(1, 10_001) if in_holdout("spring-promo", 1, u, EPISODE_START, 0.1)]
