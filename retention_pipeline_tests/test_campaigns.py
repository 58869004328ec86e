"""Campaigns as files: validation at load time, one planner over every campaign in priority order under a
global frequency cap, per-campaign holdouts, and topic-level unsubscribes (transactional campaigns excepted)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import materialize

from retention_pipeline import clock
from retention_pipeline.activity.trigger import install_trigger
from retention_pipeline.definitions import defs
from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.runner import run_job
from retention_pipeline.outreach.allocation import in_holdout
from retention_pipeline.outreach.assets import reengagement_emails
from retention_pipeline.outreach.campaigns import CampaignFilesError, load_campaigns
from retention_pipeline.outreach.links import UnsubscribeLinks
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.schema import install_schema
from retention_pipeline.settings import PROJECT_ROOT
from retention_pipeline_tests.scenario import Scenario, at, live_campaign, materialization_metadata
from retention_pipeline_tests.ui_support import cli_command
from retention_pipeline_tests.web_app import create_app

CAMPAIGNS_DIR = PROJECT_ROOT / "campaigns"
AS_OF = date(2026, 5, 20)
API_KEY = "re_test_key_123"
SECRET = "test-unsubscribe-secret"
PAST_DUE = range(1, 21)  # payment_recovery (priority 10)
ENDING = range(21, 41)  # active, cancel at period end: cancel_save (priority 20)
NO_SUBSCRIPTION = range(41, 61)  # winback only (priority 30)
USERS = range(1, 61)


# -- validation --------------------------------------------------------------------------------------------------


@pytest.fixture
def campaigns_copy(tmp_path) -> Path:
    root = tmp_path / "campaigns"
    shutil.copytree(CAMPAIGNS_DIR, root)
    return root


def _problems(root: Path) -> list[str]:
    with pytest.raises(CampaignFilesError) as raised:
        load_campaigns(root)
    return raised.value.problems


def test_the_shipped_campaigns_load_in_priority_order():
    assert [(c.name, c.priority, c.topic, c.transactional) for c in load_campaigns(CAMPAIGNS_DIR)] == [
        ("payment_recovery", 10, "billing", True),
        ("cancel_save", 20, "offers", False),
        ("winback", 30, "tips", False),
    ]


def test_an_unknown_field_is_one_line_naming_file_and_field(campaigns_copy):
    path = campaigns_copy / "winback" / "campaign.yaml"
    path.write_text(path.read_text() + "holdout_shares: 0.2\n")
    assert _problems(campaigns_copy) == [f"{path}: unknown field 'holdout_shares'"]


def test_a_missing_template_is_one_line(campaigns_copy):
    (campaigns_copy / "cancel_save" / "before_you_go.txt.j2").unlink()
    assert _problems(campaigns_copy) == [
        f"{campaigns_copy / 'cancel_save'}: missing template before_you_go.txt.j2 (looked in cancel_save/ and _shared/)"
    ]


def test_a_template_variable_that_does_not_exist_is_one_line(campaigns_copy):
    path = campaigns_copy / "payment_recovery" / "card_declined.subject.j2"
    path.write_text("Your {{ plan_tier }} payment failed\n")
    [problem] = _problems(campaigns_copy)
    assert problem.startswith(f"{path}: unknown template variable 'plan_tier'; known: app_url, ")


def test_a_variable_unknown_to_the_shared_layout_is_found_through_extends(campaigns_copy):
    layout = campaigns_copy / "_shared" / "_layout.html.j2"
    layout.write_text(layout.read_text().replace("{{ postal_address }}", "{{ postal_adress }}"))
    problems = _problems(campaigns_copy)
    assert problems and all(p.startswith(f"{layout}: unknown template variable 'postal_adress'") for p in problems)


@pytest.mark.parametrize(
    "audience, message",
    [
        ("{subscription_statuses: [pastdue]}", "audience.subscription_statuses.0: Input should be 'active', 'past_due'"),
        (
            "{min_days_inactive: 30, max_days_inactive: 7}",
            "audience: min_days_inactive 30 is above max_days_inactive 7: nobody matches",
        ),
        ("{weekly_segments: []}", "audience: weekly_segments is an empty list: nobody matches"),
        ("{mrr_range: [0, 100]}", "unknown field 'audience.mrr_range'"),
        ("{from: stripe, cancel_at_period_end: true}", "audience.from: Input should be 'dormant_users' or 'subscriptions'"),
        (
            "{from: subscriptions, cancel_at_period_end: true, dormancy_reasons: [inactive]}",
            "audience: dormancy_reasons is a dormancy condition; `from: subscriptions` reaches users whether or not they are dormant",
        ),
        ("{trial_ends_within_days: 3}", "audience: trial_ends_within_days needs `from: subscriptions`"),
        ("{from: subscriptions, plans: [Team]}", "audience: `from: subscriptions` needs a lifecycle condition"),
        (
            "{from: subscriptions, subscription_statuses: [none]}",
            "audience: subscription_statuses 'none' matches no subscription",
        ),
        (
            "{from: subscriptions, subscription_statuses: [active], trial_ends_within_days: 3}",
            "audience: trial_ends_within_days matches trialing subscriptions only, and subscription_statuses ['active']",
        ),
    ],
)
def test_a_bad_audience_is_one_line(campaigns_copy, audience, message):
    path = campaigns_copy / "cancel_save" / "campaign.yaml"
    text = path.read_text()
    start = text.index("audience:")
    end = text.index("steps:")
    path.write_text(text[:start] + f"audience: {audience}\n" + text[end:])
    [problem] = _problems(campaigns_copy)
    assert problem.startswith(f"{path}: {message}"), problem


def test_each_condition_that_does_not_fit_the_base_is_its_own_line(campaigns_copy):
    path = campaigns_copy / "payment_recovery" / "campaign.yaml"
    path.write_text(
        path.read_text().replace(
            "  from: subscriptions\n", "  from: subscriptions\n  min_days_inactive: 3\n  max_days_inactive: 9\n"
        )
    )
    assert _problems(campaigns_copy) == [
        f"{path}: audience: {name} is a dormancy condition; `from: subscriptions` reaches users whether or not they are "
        "dormant (use `from: dormant_users`)"
        for name in ("min_days_inactive", "max_days_inactive")
    ]


def test_two_campaigns_with_one_priority_are_refused(campaigns_copy):
    path = campaigns_copy / "winback" / "campaign.yaml"
    path.write_text(path.read_text().replace("priority: 30", "priority: 10"))
    assert _problems(campaigns_copy) == [
        f"{campaigns_copy}: campaigns ['payment_recovery', 'winback'] share priority 10; give each its own (lower goes first)"
    ]


def test_every_problem_is_listed_at_once_by_campaigns_check(campaigns_copy):
    (campaigns_copy / "winback" / "campaign.yaml").write_text(
        (campaigns_copy / "winback" / "campaign.yaml").read_text() + "colour: blue\n"
    )
    (campaigns_copy / "cancel_save" / "before_you_go.html.j2").unlink()
    result = subprocess.run(
        cli_command("campaigns", "check"),
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(RETENTION_CAMPAIGNS_DIR=str(campaigns_copy)),
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {campaigns_copy / 'cancel_save'}: missing template before_you_go.html.j2 (looked in cancel_save/ and _shared/)",
        f"error: {campaigns_copy / 'winback' / 'campaign.yaml'}: unknown field 'colour'",
    ]


def test_campaigns_check_prints_one_line_per_campaign():
    result = subprocess.run(
        cli_command("campaigns", "check"),
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(RETENTION_CAMPAIGNS_DIR=str(CAMPAIGNS_DIR)),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["payment_recovery", "cancel_save", "winback"]
    assert lines[0].startswith("payment_recovery: ok, enabled, priority 10, topic billing (transactional), holdout 10%")


def test_a_campaigns_dir_that_is_not_a_directory_is_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        cli_command("campaigns", "check"),
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(RETENTION_CAMPAIGNS_DIR=str(missing)),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: RETENTION_CAMPAIGNS_DIR={str(missing)!r} is not a directory; point it at the "
        "folder of campaign directories, or unset it for the repository's campaigns/."
    )


def _env(**changes) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RETENTION_DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME")}
    return env | changes


# -- one planner, several campaigns -----------------------------------------------------------------------------


@pytest.fixture
def fake_resend():
    with FakeResend(api_key=API_KEY, rate=50) as fake:
        yield fake


@pytest.fixture
def sender(fake_resend):
    return ResendSender(
        api_key=API_KEY, api_url=fake_resend.url, requests_per_second=50, backoff_base_seconds=0.05, timeout_seconds=5
    )


@pytest.fixture
def three_campaign_world(app_db_env, instance, monkeypatch):
    """60 users dormant from 15 days before AS_OF until AS_OF + 7: 20 past due, 20 active but cancelling at the
    period's end, 20 without a subscription, in every daily Stripe snapshot; the shipped campaign files."""
    monkeypatch.setenv("RETENTION_CAMPAIGNS_DIR", str(CAMPAIGNS_DIR))
    db = app_db_env
    install_schema(db)
    install_trigger(db)
    s = Scenario(db)
    for user_id in USERS:
        s.user(user_id, at(AS_OF - timedelta(days=60)))
    s.events((user_id, at(AS_OF - timedelta(days=d)), "create_task") for user_id in USERS for d in range(30, 14, -1))
    with db.begin() as conn:
        for user_id in [*PAST_DUE, *ENDING]:
            subscription = {
                "sub": f"sub_{user_id}",
                "cus": f"cus_{user_id}",
                "u": user_id,
                "t": at(AS_OF - timedelta(days=1)),
                "status": "past_due" if user_id in PAST_DUE else "active",
                "ending": user_id in ENDING,
            }
            conn.execute(
                sa.text(
                    db.render("""
                INSERT INTO {rs}.stripe_subscriptions (subscription_id, customer_id, user_id, mapped_by, status, plan_name,
                    quantity, mrr_cents, cancel_at_period_end, snapshot_at)
                VALUES (:sub, :cus, :u, 'metadata', :status, 'Team', 1, 4900, :ending, :t)""")
                ),
                subscription,
            )
            # The billing campaigns read the snapshot kept for each morning (the same state every day).
            conn.execute(
                sa.text(
                    db.render("""
                INSERT INTO {rs}.stripe_subscription_history (snapshot_date, subscription_id, customer_id, user_id, status,
                    plan_name, mrr_cents, cancel_at_period_end, snapshot_at)
                SELECT d::date, :sub, :cus, :u, :status, 'Team', 4900, :ending, :t
                FROM generate_series(CAST(:first AS date), CAST(:last AS date), interval '1 day') AS d""")
                ),
                subscription | {"first": AS_OF - timedelta(days=10), "last": AS_OF + timedelta(days=8)},
            )
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


def _send_day(instance, sender, day: date):
    clock.set_now(datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=9))
    result = run_job(
        instance,
        "daily_retention_job",
        day.isoformat(),
        assets=["reengagement_emails"],
        resources={"email_sender": sender},
        run_config=live_campaign(),
        quiet=True,
    )
    assert result.success
    return materialization_metadata(result, "reengagement_emails")


def _assignments(db) -> list[dict]:
    with db.engine().connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    db.render(
                        "SELECT user_id, campaign, step, status, as_of_date, episode_start, unsubscribe_topic, suppression FROM {rs}.email_sends "
                        "ORDER BY user_id, as_of_date, campaign"
                    )
                )
            ).mappings()
        ]


def test_priority_and_the_frequency_cap_give_each_person_one_email_per_seven_days(
    three_campaign_world, instance, sender, fake_resend
):
    db = three_campaign_world
    first = _send_day(instance, sender, AS_OF)
    rows = _assignments(db)
    assert {r["user_id"]: r["campaign"] for r in rows} == (
        {u: "payment_recovery" for u in PAST_DUE} | {u: "cancel_save" for u in ENDING} | {u: "winback" for u in NO_SUBSCRIPTION}
    )
    assert len(rows) == len(USERS), "one assignment per person on the day, across campaigns"
    # Winback's audience holds all 60; the 40 that higher-priority campaigns took are capped, in both arms.
    assert first["campaigns"]["winback"]["skipped_by_reason"] == {"frequency_cap": 40}
    assert first["skipped_by_reason"] == {"frequency_cap": 40}
    for name, users in (("payment_recovery", PAST_DUE), ("cancel_save", ENDING), ("winback", NO_SUBSCRIPTION)):
        # Each campaign's own arm, drawn for the step of the user's episode.
        holdout = {
            r["user_id"]
            for r in rows
            if r["campaign"] == name and in_holdout(name, r["step"], r["user_id"], r["episode_start"], 0.1)
        }
        assert {r["user_id"] for r in rows if r["campaign"] == name and r["status"] == "holdout"} == holdout
        assert first["campaigns"][name]["holdout"] == len(holdout)
        assert first["campaigns"][name]["sent"] == len(users) - len(holdout)

    middle = _send_day(instance, sender, AS_OF + timedelta(days=3))
    assert len(_assignments(db)) == len(USERS), "nobody gets anything within the 7 days"
    assert middle["skipped_by_reason"] == {"frequency_cap": 40}

    _send_day(instance, sender, AS_OF + timedelta(days=7))
    rows = _assignments(db)
    late = [r for r in rows if r["as_of_date"] == AS_OF + timedelta(days=7)]
    # Day 7: payment recovery's step 2 (delay 7) goes first; cancel-save has no step 2, so winback now reaches its users.
    assert {r["user_id"]: (r["campaign"], r["step"]) for r in late} == (
        {u: ("payment_recovery", 2) for u in PAST_DUE} | {u: ("winback", 1) for u in ENDING}
    )
    for user_id in USERS:
        days = sorted(r["as_of_date"] for r in rows if r["user_id"] == user_id)
        assert all((b - a).days >= 7 for a, b in zip(days, days[1:], strict=False)), (user_id, days)
    sent = [r for r in rows if r["status"] == "sent"]
    assert len(fake_resend.accepted) == len(sent), "every email sent once, through the provider"


def test_a_topic_unsubscribe_stops_that_topic_only_and_transactional_email_goes_on(three_campaign_world, instance, sender):
    db = three_campaign_world
    # Any member of each audience: the arm does not matter, suppression is recorded in both.
    treated = {
        name: users[0] for name, users in (("payment_recovery", PAST_DUE), ("cancel_save", ENDING), ("winback", NO_SUBSCRIPTION))
    }
    left_billing, left_tips_ending, left_tips = treated["payment_recovery"], treated["cancel_save"], treated["winback"]
    everything = next(u for u in PAST_DUE if u != left_billing)
    with db.begin() as conn:
        for user_id, topic in ((left_billing, "billing"), (left_tips_ending, "tips"), (left_tips, "tips")):
            conn.execute(
                sa.text(db.render("INSERT INTO {rs}.email_topic_suppressions VALUES (:e, :t, 'test', now())")),
                {"e": f"user{user_id}@example.com", "t": topic},
            )
        conn.execute(
            sa.text(db.render("INSERT INTO {rs}.email_suppressions VALUES (:e, 'unsubscribed', 'test', NULL, now())")),
            {"e": f"user{everything}@example.com"},
        )
    metadata = _send_day(instance, sender, AS_OF)
    by_user = {r["user_id"]: r for r in _assignments(db)}
    assert by_user[left_billing]["campaign"] == "payment_recovery", "transactional: leaving 'billing' does not stop it"
    assert by_user[left_billing]["suppression"] is None
    assert by_user[left_tips_ending]["campaign"] == "cancel_save", "leaving 'tips' keeps 'offers'"
    assert by_user[left_tips_ending]["suppression"] is None
    # Suppression is recorded after the arm is drawn (both arms alike), never sent.
    assert (by_user[left_tips]["campaign"], by_user[left_tips]["suppression"]) == ("winback", "unsubscribed_from_topic")
    assert (by_user[everything]["campaign"], by_user[everything]["suppression"]) == ("payment_recovery", "unsubscribed")
    for user_id in (left_tips, everything):
        assert by_user[user_id]["status"] in ("suppressed", "holdout"), by_user[user_id]
    assert sum(metadata["suppressed_by_arm"].values()) == 2
    assert by_user[left_billing]["unsubscribe_topic"] is None and by_user[left_tips_ending]["unsubscribe_topic"] == "offers"


def test_the_unsubscribe_page_leaves_the_emails_topic_or_everything(three_campaign_world, instance, sender):
    db = three_campaign_world
    _send_day(instance, sender, AS_OF)
    with db.engine().connect() as conn:
        refs = {
            r.campaign: (r.unsubscribe_ref, r.email)
            for r in conn.execute(
                sa.text(
                    db.render(
                        "SELECT DISTINCT ON (campaign) campaign, unsubscribe_ref, email FROM {rs}.email_sends "
                        "WHERE status = 'sent' ORDER BY campaign, user_id"
                    )
                )
            )
        }
    client = create_app(db, SECRET).test_client()
    links = UnsubscribeLinks(secret=SECRET)

    def path(campaign: str) -> str:
        link = links.link("http://127.0.0.1:5000/retention/unsubscribe", refs[campaign][0], AS_OF)
        return link.removeprefix("http://127.0.0.1:5000")

    page = client.get(path("winback")).get_data(as_text=True)
    assert "Unsubscribe from tips emails" in page and "Unsubscribe from all emails" in page
    assert (
        client.post(
            path("winback"), data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
        ).status_code
        == 200
    )
    assert client.post(path("cancel_save"), data={"scope": "all"}).status_code == 200
    assert "tips" not in client.get(path("payment_recovery")).get_data(as_text=True)
    assert (
        client.post(
            path("payment_recovery"), data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
        ).status_code
        == 200
    )
    with db.engine().connect() as conn:
        topics = {tuple(r) for r in conn.execute(sa.text(db.render("SELECT email, topic FROM {rs}.email_topic_suppressions")))}
        everything = {r.email for r in conn.execute(sa.text(db.render("SELECT email FROM {rs}.email_suppressions")))}
    assert topics == {(refs["winback"][1], "tips")}
    assert everything == {refs["cancel_save"][1], refs["payment_recovery"][1]}


def test_a_run_config_that_changes_a_campaign_field_fails_with_campaign_files(three_campaign_world, instance, sender):
    clock.set_now(datetime(2026, 5, 21, 9, 0, tzinfo=UTC))
    result = materialize(
        list(defs.assets),
        resources={**defs.resources, "email_sender": sender},
        instance=instance,
        selection=[reengagement_emails.key],
        partition_key=AS_OF.isoformat(),
        raise_on_error=False,
        run_config=live_campaign(
            {"ops": {"reengagement_emails": {"ops": {"plan_reengagement_sends": {"config": {"holdout_share": 0.2}}}}}}
        ),
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "run config sets ['holdout_share'], which describe a campaign" in str(failure.step_failure_data.error)
    assert _assignments(three_campaign_world) == []


# -- audiences ---------------------------------------------------------------------------------------------------

DAY = date(2026, 3, 18)
# user: (reason, days inactive, status, plan, mrr cents, cancel at period end)
AUDIENCE_USERS = {
    1: ("inactive", 10, "active", "Team", 4900, False),
    2: ("declining", 3, "past_due", "Team", 9900, False),
    3: ("inactive", 40, "none", None, 0, False),
    4: ("inactive", 20, "trialing", "Starter", 0, False),
    5: ("inactive", 20, "trialing", "Starter", 0, False),
    6: ("inactive", 12, "active", "Business", 20000, True),
}


@pytest.fixture
def audience_world(app_db):
    db = app_db
    install_schema(db)
    s = Scenario(db)
    with db.begin() as conn:
        for user_id, (reason, days, status, plan, mrr, ending) in AUDIENCE_USERS.items():
            s.user(user_id, at(DAY - timedelta(days=200)))
            conn.execute(
                sa.text(
                    db.render("""
                INSERT INTO {rs}.dormant_users (as_of_date, user_id, email, name, signed_up_at, last_activity_at, days_inactive,
                    reason, recent_events, previous_events, last_actions, subscription_status, plan_name, mrr_cents,
                    cancel_at_period_end, targeted)
                VALUES (:day, :u, :email, 'Ann', :signed_up, :last, :days, :reason, 0, 0, '[]', :status, :plan, :mrr,
                        :ending, true)""")
                ),
                {
                    "day": DAY,
                    "u": user_id,
                    "email": f"user{user_id}@example.com",
                    "signed_up": at(DAY - timedelta(days=200)),
                    "last": at(DAY - timedelta(days=days)),
                    "days": days,
                    "reason": reason,
                    "status": status,
                    "plan": plan,
                    "mrr": mrr,
                    "ending": ending,
                },
            )
        # Segments: the week that ended before DAY counts; a week still running on DAY does not.
        for user_id, week_start, segment in (
            (1, DAY - timedelta(days=13), "casual"),
            (2, DAY - timedelta(days=13), "declining"),
            (1, DAY - timedelta(days=3), "power"),
        ):
            conn.execute(
                sa.text(
                    db.render("""
                INSERT INTO {rs}.weekly_segments (week_start, user_id, segment, active_days, event_count,
                    previous_event_count, sessions_started, session_minutes)
                VALUES (:week, :u, :segment, 1, 1, 1, 0, 0)""")
                ),
                {"week": week_start, "u": user_id, "segment": segment},
            )
    return db


@pytest.mark.parametrize(
    "audience, users",
    [
        ({}, {1, 2, 3, 4, 5, 6}),
        ({"dormancy_reasons": ["declining"]}, {2}),
        ({"min_days_inactive": 11, "max_days_inactive": 30}, {4, 5, 6}),
        ({"weekly_segments": ["casual"]}, {1}),
        ({"weekly_segments": ["power"]}, set()),
        ({"subscription_statuses": ["past_due"]}, {2}),
        ({"plans": ["Team"]}, {1, 2}),
        ({"min_mrr_cents": 5000}, {2, 6}),
        ({"max_mrr_cents": 4900}, {1, 3, 4, 5}),
        ({"cancel_at_period_end": True}, {6}),
        ({"subscription_statuses": ["active"], "cancel_at_period_end": True, "min_mrr_cents": 10000}, {6}),
    ],
)
def test_each_audience_condition_selects_its_users(audience_world, audience, users):
    from dataclasses import replace

    from retention_pipeline.outreach.campaign import CampaignConfig
    from retention_pipeline.outreach.campaigns import Audience
    from retention_pipeline.outreach.planning import candidate_params, run_config_campaign

    config = CampaignConfig()
    campaign = replace(run_config_campaign(config), audience=Audience(**audience))
    db = audience_world
    clock.set_now(datetime(2026, 3, 19, 9, 0, tzinfo=UTC))
    sql, params = candidate_params(config, campaign, campaign.steps[0], DAY)
    with db.begin() as conn:
        conn.execute(sa.text(db.render(sql)), params)
        selected = {row.user_id for row in conn.execute(sa.text("SELECT user_id FROM plan_candidates WHERE skip_reason IS NULL"))}
    assert selected == users


def test_every_campaign_file_field_is_documented():
    from retention_pipeline.outreach.campaigns import Audience, CampaignFile, Sender, Step, Success

    docs = (PROJECT_ROOT / "docs" / "campaigns.md").read_text()
    missing = [
        f"{model.__name__}.{name}"
        for model in (CampaignFile, Audience, Step, Success, Sender)
        for name in (field.alias or field_name for field_name, field in model.model_fields.items())
        if f"`{name}`" not in docs and f"{name}:" not in docs
    ]
    assert not missing
