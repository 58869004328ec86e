"""Stripe lifecycle campaigns (`audience.from: subscriptions`): the shipped payment recovery and cancel-save reach users
whether or not they are dormant, from the as-of day's Stripe snapshot; an episode is a run of consecutive snapshots
matching the campaign's condition; the frequency cap holds across dormancy and lifecycle campaigns."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from retention_pipeline import clock
from retention_pipeline.activity.trigger import install_trigger
from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.runner import run_job
from retention_pipeline.outreach.allocation import in_holdout
from retention_pipeline.outreach.audience import Audience
from retention_pipeline.outreach.campaign import CampaignConfig
from retention_pipeline.outreach.campaigns import load_campaigns
from retention_pipeline.outreach.planning import candidate_params, missing_snapshot, run_config_campaign
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.schema import install_schema
from retention_pipeline.settings import PROJECT_ROOT
from retention_pipeline_tests.scenario import Scenario, at, live_campaign, materialization_metadata

CAMPAIGNS_DIR = PROJECT_ROOT / "campaigns"
AS_OF = date(2026, 5, 20)
API_KEY = "re_test_key_123"
ACTIVE_PAST_DUE = range(1, 11)
ACTIVE_ENDING = range(11, 21)  # active subscription set to cancel at the period's end
DORMANT_PAST_DUE = range(21, 31)
DORMANT = range(31, 41)  # no subscription: winback only
TASK = {"task_title": "Q3 plan", "project_name": "Roadmap"}


@pytest.fixture
def fake_resend():
    with FakeResend(api_key=API_KEY, rate=50) as fake:
        yield fake


@pytest.fixture
def sender(fake_resend):
    return ResendSender(
        api_key=API_KEY, api_url=fake_resend.url, requests_per_second=50, backoff_base_seconds=0.05, timeout_seconds=5
    )


def _snapshots(db, user_id: int, days: list[date], status: str, ending: bool = False, trial_end=None, plan="Team") -> None:
    """The user's subscription as the billing job keeps it, in the snapshot of each of `days`."""
    with db.begin() as conn:
        for day in days:
            conn.execute(
                sa.text(
                    db.render("""
                INSERT INTO {rs}.stripe_subscription_history (snapshot_date, subscription_id, customer_id, user_id, status,
                    plan_name, mrr_cents, cancel_at_period_end, snapshot_at, product_name, trial_end)
                VALUES (:day, :sub, :cus, :u, :status, lower(:plan), :mrr, :ending, :taken, :plan, :trial_end)""")
                ),
                {
                    "day": day,
                    "sub": f"sub_{user_id}",
                    "cus": f"cus_{user_id}",
                    "u": user_id,
                    "status": status,
                    "plan": plan,
                    "mrr": 4900 if status in ("active", "past_due") else 0,
                    "ending": ending,
                    "taken": at(day, 8, 30),
                    "trial_end": trial_end,
                },
            )


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _send_day(instance, sender, day: date, config: dict | None = None, run_on: date | None = None) -> dict:
    run_on = run_on or day + timedelta(days=1)
    clock.set_now(datetime.combine(run_on, datetime.min.time(), UTC) + timedelta(hours=9))
    plan_config = {"ops": {"reengagement_emails": {"ops": {"plan_reengagement_sends": {"config": config or {}}}}}}
    result = run_job(
        instance,
        "daily_retention_job",
        day.isoformat(),
        assets=["reengagement_emails"],
        resources={"email_sender": sender},
        run_config=live_campaign(plan_config),
        quiet=True,
    )
    assert result.success
    return materialization_metadata(result, "reengagement_emails")


def _ledger(db) -> list[dict]:
    with db.engine().connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    db.render(
                        "SELECT user_id, campaign, step, status, as_of_date, episode_start, segment_reason, payload "
                        "FROM {rs}.email_sends ORDER BY user_id, as_of_date, campaign"
                    )
                )
            ).mappings()
        ]


@pytest.fixture
def mixed_world(app_db_env, instance, monkeypatch):
    """Active and dormant users, past due, cancelling or without a subscription, in every morning's snapshot; the shipped
    campaign files."""
    monkeypatch.setenv("RETENTION_CAMPAIGNS_DIR", str(CAMPAIGNS_DIR))
    db = app_db_env
    install_schema(db)
    install_trigger(db)
    s = Scenario(db)
    users = [*ACTIVE_PAST_DUE, *ACTIVE_ENDING, *DORMANT_PAST_DUE, *DORMANT]
    for user_id in users:
        s.user(user_id, at(AS_OF - timedelta(days=60)))
    active = [*ACTIVE_PAST_DUE, *ACTIVE_ENDING]
    s.events((u, at(AS_OF - timedelta(days=d)), "create_task", TASK) for u in active for d in range(30, -9, -1))
    s.events((u, at(AS_OF - timedelta(days=d)), "create_task") for u in users if u not in active for d in range(30, 14, -1))
    snapshot_days = _days(AS_OF - timedelta(days=10), AS_OF + timedelta(days=8))
    for user_id in [*ACTIVE_PAST_DUE, *DORMANT_PAST_DUE]:
        _snapshots(db, user_id, snapshot_days, "past_due")
    for user_id in ACTIVE_ENDING:
        _snapshots(db, user_id, snapshot_days, "active", ending=True)
    clock.set_now(datetime(2026, 5, 28, 9, 0, tzinfo=UTC))
    assert run_job(
        instance,
        "daily_retention_job",
        (AS_OF - timedelta(days=40)).isoformat(),
        (AS_OF + timedelta(days=7)).isoformat(),
        assets=["daily_activity_snapshots", "dormant_users"],
        quiet=True,
    ).success
    return db


def test_active_users_get_the_billing_emails_and_the_cap_holds_across_dormancy_and_lifecycle_campaigns(
    mixed_world, instance, sender, fake_resend
):
    db = mixed_world
    first = _send_day(instance, sender, AS_OF)
    rows = _ledger(db)
    assert {r["user_id"]: r["campaign"] for r in rows} == (
        {u: "payment_recovery" for u in [*ACTIVE_PAST_DUE, *DORMANT_PAST_DUE]}
        | {u: "cancel_save" for u in ACTIVE_ENDING}
        | {u: "winback" for u in DORMANT}
    )
    assert len(rows) == 40, "one assignment per person on the day, across campaigns"
    # Payment recovery went first; the dormant past-due users are in winback's audience too, and capped there.
    assert first["campaigns"]["winback"]["skipped_by_reason"] == {"frequency_cap": len(DORMANT_PAST_DUE)}
    by_user = {r["user_id"]: r for r in rows}
    assert {by_user[u]["segment_reason"] for u in [*ACTIVE_PAST_DUE, *ACTIVE_ENDING]} == {"not_dormant"}
    assert {by_user[u]["segment_reason"] for u in DORMANT_PAST_DUE} == {"inactive"}
    for row in rows:
        holdout = in_holdout(row["campaign"], row["step"], row["user_id"], row["episode_start"], 0.1)
        assert row["status"] == ("holdout" if holdout else "sent"), row
    sent = [r for r in rows if r["status"] == "sent"]
    assert len(fake_resend.accepted) == len(sent)
    for row in sent:
        if row["user_id"] in (*ACTIVE_PAST_DUE, *ACTIVE_ENDING):
            text = row["payload"]["text"]
            assert "since your last" not in text and " days" not in text, text
    # Payment recovery is transactional: its link leaves all email, and its footer says so.
    assert all("Unsubscribe from these emails: " in r["payload"]["text"] for r in sent if r["campaign"] == "payment_recovery")
    cancel_texts = [r["payload"]["text"] for r in sent if r["campaign"] == "cancel_save"]
    assert cancel_texts and all("Last time you were here, you added the task “Q3 plan” to Roadmap" in t for t in cancel_texts)

    assert _send_day(instance, sender, AS_OF + timedelta(days=3))["skipped_by_reason"] == {"frequency_cap": 10}
    assert len(_ledger(db)) == 40, "nobody gets anything within the 7 days"

    _send_day(instance, sender, AS_OF + timedelta(days=7))
    rows = _ledger(db)
    late = {r["user_id"]: (r["campaign"], r["step"]) for r in rows if r["as_of_date"] == AS_OF + timedelta(days=7)}
    # Still past due a week later: the reminder, active or dormant. The cancelling users are active: not winback's.
    assert late == {u: ("payment_recovery", 2) for u in [*ACTIVE_PAST_DUE, *DORMANT_PAST_DUE]}


D = date(2026, 4, 1)


@pytest.fixture
def episode_world(app_db_env, instance, monkeypatch):
    """User 1 active every day; past due in the snapshots of D+1 .. D+5, paid again D+6 .. D+10, past due again from
    D+11. Nobody's snapshot was taken on D+2 (the billing job did not run)."""
    monkeypatch.setenv("RETENTION_CAMPAIGNS_DIR", str(CAMPAIGNS_DIR))
    db = app_db_env
    install_schema(db)
    install_trigger(db)
    s = Scenario(db)
    s.user(1, at(D - timedelta(days=60)))
    s.events((1, at(D + timedelta(days=d)), "create_task", TASK) for d in range(-20, 14))
    day = lambda n: D + timedelta(days=n)  # noqa: E731
    _snapshots(db, 1, [day(1), *[day(n) for n in range(3, 6)]], "past_due")
    _snapshots(db, 1, [day(n) for n in range(6, 11)], "active")
    _snapshots(db, 1, [day(n) for n in range(11, 15)], "past_due")
    return db


def test_a_second_past_due_episode_is_a_new_assignment_and_a_missing_snapshot_ends_none(episode_world, instance, sender):
    db = episode_world
    _send_day(instance, sender, D)
    [first] = _ledger(db)
    assert (first["campaign"], first["step"], first["episode_start"]) == ("payment_recovery", 1, D)

    missing = _send_day(instance, sender, D + timedelta(days=1))
    assert missing["guards"][f"{D + timedelta(days=1)} payment_recovery"].startswith(
        f"no Stripe snapshot dated {D + timedelta(days=2)} (taken the morning after {D + timedelta(days=1)})"
    )
    # The day without a snapshot did not end the episode: the same assignment, nothing new.
    bridged = _send_day(instance, sender, D + timedelta(days=2))
    assert bridged["already_recorded"] == 1 and len(_ledger(db)) == 1

    _send_day(instance, sender, D + timedelta(days=11))
    rows = _ledger(db)
    assert [(r["step"], r["as_of_date"], r["episode_start"]) for r in rows] == [
        (1, D, D),
        # Past due again since the snapshot of D+11, which stands for D+10: a new episode, drawn and emailed afresh.
        (1, D + timedelta(days=11), D + timedelta(days=10)),
    ]
    for row in rows:
        assert row["status"] == ("holdout" if in_holdout("payment_recovery", 1, 1, row["episode_start"], 0.1) else "sent")


def test_a_snapshot_of_an_account_without_subscriptions_counts_as_taken(episode_world):
    """A snapshot that kept no rows (no subscriptions at all that morning) was still taken: recorded in
    stripe_snapshot_days, it is no missing day. The production rehearsal's empty Stripe account hit this."""
    db = episode_world
    campaign = next(c for c in load_campaigns(CAMPAIGNS_DIR) if c.name == "payment_recovery")
    assert missing_snapshot(db, campaign, D + timedelta(days=1)).startswith(f"no Stripe snapshot dated {D + timedelta(days=2)}")
    db.execute(
        "INSERT INTO {rs}.stripe_snapshot_days (snapshot_date, subscriptions, snapshot_at) VALUES (:d, 0, :at)",
        {"d": D + timedelta(days=2), "at": at(D + timedelta(days=2))},
    )
    assert missing_snapshot(db, campaign, D + timedelta(days=1)) is None


def test_a_lifecycle_campaign_keeps_the_dry_run_and_the_backfill_guard(episode_world, instance, sender, fake_resend):
    db = episode_world
    dry = _send_day(instance, sender, D, {"dry_run": True})
    assert dry["dry_run_would_send"] + dry["dry_run_would_hold_out"] == 1 and _ledger(db) == []
    backfill = _send_day(instance, sender, D, run_on=D + timedelta(days=30))
    assert "a backfill never sends" in backfill["guards"][D.isoformat()]
    assert _ledger(db) == [] and fake_resend.accepted == []
    _send_day(instance, sender, D)
    [row] = _ledger(db)
    assert row["campaign"] == "payment_recovery" and len(fake_resend.accepted) == (row["status"] == "sent")


def test_preview_renders_an_active_users_billing_email_and_names_a_missing_snapshot(episode_world):
    from retention_pipeline.outreach.campaigns import load_campaigns
    from retention_pipeline.outreach.links import UnsubscribeLinks
    from retention_pipeline.outreach.preview import PreviewError, identity, preview

    db = episode_world
    config = identity(CampaignConfig(), live_sender=False)
    campaign = next(c for c in load_campaigns(CAMPAIGNS_DIR) if c.name == "payment_recovery")
    links = UnsubscribeLinks(secret="test-unsubscribe-secret")
    clock.set_now(datetime.combine(D + timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=9))
    shown = preview(db, config, campaign, campaign.steps[0], D, links, user_id=1)
    assert shown.payload["subject"] == "User, your Acme payment did not go through"
    assert "We could not charge your card for your Team subscription" in shown.payload["text"]
    with pytest.raises(PreviewError) as missing:
        preview(db, config, campaign, campaign.steps[0], D + timedelta(days=1), links, user_id=1)
    assert str(missing.value).startswith(f"payment_recovery: no Stripe snapshot dated {D + timedelta(days=2)}")


def _selected(db, audience: dict, as_of: date) -> dict[int, date]:
    config = CampaignConfig()
    campaign = replace(run_config_campaign(config), audience=Audience(**audience))
    clock.set_now(datetime.combine(as_of + timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=9))
    sql, params = candidate_params(config, campaign, campaign.steps[0], as_of)
    with db.begin() as conn:
        conn.execute(sa.text(db.render(sql)), params)
        rows = conn.execute(sa.text("SELECT user_id, episode_start FROM plan_candidates WHERE skip_reason IS NULL"))
        return {row.user_id: row.episode_start for row in rows}


def test_trial_ending_within_n_days_reads_the_as_of_days_snapshot_not_the_latest(app_db):
    db = app_db
    install_schema(db)
    s = Scenario(db)
    for user_id in (1, 2, 3):
        s.user(user_id, at(D - timedelta(days=60)))
    day = lambda n: D + timedelta(days=n)  # noqa: E731
    start_of = lambda d: datetime.combine(d, datetime.min.time(), UTC)  # noqa: E731
    # User 1's trial ends 2 days after D's end; it converted since, so the latest snapshot says active.
    _snapshots(db, 1, [day(1)], "trialing", trial_end=start_of(day(1)) + timedelta(days=2, hours=-1), plan="Starter")
    _snapshots(db, 1, [day(20)], "active", plan="Starter")
    # User 2's trial ends 10 days after D's end: outside 3 days then, inside by the snapshot of D+9.
    _snapshots(db, 2, [day(1), day(9)], "trialing", trial_end=start_of(day(11)), plan="Starter")
    # User 3 starts a trial later, ending 2 days after D+19's end: only the latest snapshot has it.
    _snapshots(db, 3, [day(20)], "trialing", trial_end=start_of(day(22)), plan="Starter")
    with db.begin() as conn:
        conn.execute(
            sa.text(
                db.render("""
            INSERT INTO {rs}.stripe_subscriptions (subscription_id, customer_id, user_id, mapped_by, status, plan_name,
                quantity, mrr_cents, cancel_at_period_end, trial_end, snapshot_at)
            VALUES ('sub_3', 'cus_3', 3, 'metadata', 'trialing', 'starter', 1, 0, false, :trial_end, :taken)""")
            ),
            {"trial_end": start_of(day(22)), "taken": at(day(20), 8, 30)},
        )
    trial = {"from": "subscriptions", "trial_ends_within_days": 3}
    assert _selected(db, trial, D) == {1: D}, "the backfill of D: D's snapshot, not the latest"
    assert _selected(db, trial, day(8)) == {2: day(8)}
    assert _selected(db, trial, day(19)) == {3: day(19)}
    assert _selected(db, trial | {"plans": ["Starter"]}, D) == {1: D}
    assert _selected(db, trial | {"plans": ["Team"]}, D) == {}
