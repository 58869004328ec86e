"""Bad input (issue 8): every kind has a defined outcome, a clear error before anything is written or
a counted, visible skip. One world holds all the bad rows at once beside 40 ordinary dormant users;
the daily pipeline (snapshots, dormant users, emails through the real SDK to a Resend-like server)
runs over it once per module, and each test checks one kind.

Covered elsewhere and referenced here (see docs/reliability.md):
- Stripe customers with no user: test_billing.py::test_snapshot_maps_users_counts_mrr_and_replaces
  (counted as `unmapped_subscriptions` / `unmapped_customers`, kept with user_id NULL, never targeted).
- A table or column name that is not a plain identifier: test_identifiers.py (rejected with an error
  naming the field before any SQL runs).
- decline_ratio outside 0..1 for the weekly segments:
  test_segments.py::test_decline_ratio_outside_zero_to_one_is_rejected_before_writing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance

from retention_pipeline import clock
from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.runner import run_job
from retention_pipeline.outreach.tokens import verify_unsubscribe_token
from retention_pipeline.resources import AppDatabase
from retention_pipeline_tests import faults
from retention_pipeline_tests.faults import AS_OF, MORNING_AFTER, UNSUBSCRIBE_SECRET, record, send_resources
from retention_pipeline_tests.scenario import Scenario, at, check_metadata, live_campaign, materialization_metadata

NOON = at(AS_OF)
NO_HOLDOUT = live_campaign(
    {"ops": {"reengagement_emails": {"ops": {"plan_reengagement_sends": {"config": {"holdout_share": 0.0}}}}}}
)

ORDINARY = range(1, 41)
INVALID_EMAILS = {
    101: "",
    102: "not-an-address",
    103: "a@b",
    104: "x@example.com\r\nBcc: victim@example.com",  # header injection
    105: "bell\x07@example.com",  # a control character
    106: " spaced@example.com ",
    107: "l" * 250 + "@example.com",  # longer than 254
    108: "Name <named@example.com>",
}
NAMES = {
    111: None,
    112: "",
    113: " \t ",  # missing names
    121: "<script>alert(1)</script>",
    122: "Eve\r\nBcc: evil@example.com",
    123: "\x1b[31mRed\x07 Riding\u2028Hood",
}
HTML_PROPERTY, CONTROL_PROPERTY = 131, 132
HUGE_PROPERTIES, SELF_PROPERTY, NON_OBJECT_PROPERTIES = 133, 134, 135
DUPLICATE_EVENTS, BEFORE_SIGNUP, FUTURE_EVENT = 141, 151, 161
UNKNOWN_USER = 999_999
NULL_USER_EVENTS, UNKNOWN_USER_EVENTS = 3, 2
HUGE = "x" * 1_000_000
FUTURE = datetime(2027, 1, 1, 12, tzinfo=UTC)


def _user_ids() -> list[int]:
    return [
        *ORDINARY,
        *INVALID_EMAILS,
        *NAMES,
        HTML_PROPERTY,
        CONTROL_PROPERTY,
        HUGE_PROPERTIES,
        SELF_PROPERTY,
        NON_OBJECT_PROPERTIES,
        DUPLICATE_EVENTS,
        BEFORE_SIGNUP,
        FUTURE_EVENT,
    ]


def _populate(db: AppDatabase) -> None:
    s = Scenario(db, first_event_id=1)
    for user_id in _user_ids():
        created = NOON - timedelta(days=20 if user_id == BEFORE_SIGNUP else 60)
        email = INVALID_EMAILS.get(user_id, f"user{user_id}@example.com")
        name = NAMES[user_id] if user_id in NAMES else f"User {user_id}"
        db.execute(
            "INSERT INTO users (id, email, name, created_at) VALUES (:id, :email, :name, :created)",
            {"id": user_id, "email": email, "name": name, "created": created},
        )
        # Active from 30 to 16 days before AS_OF, then dormant; the last action (15 days before) may carry
        # hostile properties.
        rows = [(user_id, NOON - timedelta(days=d), "comment", {"project_name": f"Plan {user_id}"}) for d in range(30, 15, -1)]
        properties = {"project_name": f"Plan {user_id}"}
        if user_id == HTML_PROPERTY:
            properties = {"project_name": "<img src=x onerror=alert(1)>", "task_title": "</p><script>x()</script>"}
        elif user_id == CONTROL_PROPERTY:
            properties = {"project_name": "Q\r\n4\x1b[0m\x07 report"}
        elif user_id == HUGE_PROPERTIES:
            properties = {"blob": HUGE, "project_name": "Big", "nested": {"deep": [1, 2, 3]}, "list": [1, 2]}
        elif user_id == SELF_PROPERTY:
            properties = {"self": "me", "project_name": "Selfie"}
        rows.append((user_id, NOON - timedelta(days=15), "create_project", properties))
        if user_id == NON_OBJECT_PROPERTIES:
            rows.append((user_id, NOON - timedelta(days=15, hours=1), "upload_file", ["not", "an", "object"]))
        if user_id == DUPLICATE_EVENTS:
            rows = rows + rows  # every event arrives twice (two ids)
        s.events(rows)
    s.event(FUTURE_EVENT, FUTURE, "login")  # a clock-skewed client
    s.events((None, NOON - timedelta(days=d), "view_pricing") for d in (20, 21, 22))
    s.events((UNKNOWN_USER, NOON - timedelta(days=d), "comment") for d in (20, 21))


@pytest.fixture(scope="module")
def bad_world(pg_server):
    """The pipeline over the bad world: snapshots + dormant users for AS_OF-40..AS_OF, then the emails."""
    name = f"rel_bad_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    faults.build_dormant_world(pg_server, name, 0, extra=_populate)
    db = AppDatabase(url=pg_server.url(name))
    out = {"name": name, "db": db}
    with DagsterInstance.ephemeral() as instance, clock.frozen_at(MORNING_AFTER):
        # build_dormant_world ran the snapshot; run it again here to keep its result (check metadata).
        out["snapshot"] = run_job(
            instance,
            "daily_retention_job",
            (AS_OF - timedelta(days=40)).isoformat(),
            AS_OF.isoformat(),
            resources={"app_db": db},
            assets=["daily_activity_snapshots"],
            quiet=True,
        )
        with FakeResend(rate=0) as server:
            resources = send_resources(db.url, server.url)
            out["emails"] = run_job(
                instance,
                "daily_retention_job",
                AS_OF.isoformat(),
                resources=resources,
                assets=["reengagement_emails"],
                run_config=NO_HOLDOUT,
                quiet=True,
            )
            out["delivered"] = faults.recipients(server)
            out["accepted"] = dict(zip(out["delivered"], (a.email for a in server.accepted), strict=False))
            out["requests"] = server.requests
    yield out
    db.engine().dispose()
    pg_server.drop_database(name)


def _dormant(db, user_id):
    rows = db.fetch_all("SELECT * FROM {rs}.dormant_users WHERE as_of_date = :d AND user_id = :u", {"d": AS_OF, "u": user_id})
    return dict(rows[0]._mapping) if rows else None


def _email(bad_world, user_id) -> dict:
    return bad_world["accepted"][f"user{user_id}@example.com"]


def test_the_pipeline_runs_through_all_bad_input_and_emails_every_valid_user_once(bad_world):
    assert bad_world["snapshot"].success and bad_world["emails"].success
    delivered = bad_world["delivered"]
    valid = {f"user{u}@example.com" for u in _user_ids() if u not in INVALID_EMAILS}
    assert len(delivered) == len(set(delivered)) and set(delivered) == valid
    assert len(bad_world["requests"]) == len({r.idempotency_key for r in bad_world["requests"]})  # no resends
    assert sum(r.email_count for r in bad_world["requests"]) == len(valid)  # each valid user once
    sends = bad_world["db"].fetch_all("SELECT user_id, status FROM {rs}.email_sends")
    assert Counter(r.status for r in sends) == {"sent": len(valid)}


def test_events_with_null_or_unknown_user_ids_are_counted_in_the_check_and_stored_nowhere(bad_world):
    """Also test_snapshots.py::test_orphan_events_are_counted_not_stored."""
    orphans = check_metadata(bad_world["snapshot"], "orphan_events")
    assert (orphans["events_null_user"], orphans["events_unknown_user"]) == (NULL_USER_EVENTS, UNKNOWN_USER_EVENTS)
    db = bad_world["db"]
    assert db.scalar("SELECT count(*) FROM {rs}.daily_activity WHERE user_id = :u", {"u": UNKNOWN_USER}) == 0
    assert _dormant(db, UNKNOWN_USER) is None
    record("bad_input", "orphan events counted (NULL or unknown user)", {"value": NULL_USER_EVENTS + UNKNOWN_USER_EVENTS})


def test_an_event_in_the_future_counts_in_no_past_day_and_is_not_a_return(bad_world):
    """A clock-skewed event (2027) is in no snapshot before its day, does not make the user look active
    on the as-of day, and the send-time re-check (bounded by the run's clock) does not take it for a return."""
    db = bad_world["db"]
    assert db.scalar(
        "SELECT max(activity_date) FROM {rs}.daily_activity WHERE user_id = :u", {"u": FUTURE_EVENT}
    ) == AS_OF - timedelta(days=15)
    dormant = _dormant(db, FUTURE_EVENT)
    assert dormant["days_inactive"] == 15 and dormant["last_activity_at"] < NOON
    assert f"user{FUTURE_EVENT}@example.com" in bad_world["accepted"]
    assert "returned" not in materialization_metadata(bad_world["emails"], "reengagement_emails")["skipped_by_reason"]


def test_events_before_sign_up_are_kept_and_counted_in_the_check(bad_world):
    orphans = check_metadata(bad_world["snapshot"], "orphan_events")
    assert orphans["events_before_signup"] == 10  # 30..21 days before AS_OF; the account is 20 days old
    db = bad_world["db"]
    assert db.scalar("SELECT count(*) FROM {rs}.daily_activity WHERE user_id = :u", {"u": BEFORE_SIGNUP}) == 16
    record("bad_input", "events before sign-up counted", {"value": orphans["events_before_signup"]})


def test_duplicate_events_make_one_row_per_user_day_and_one_email(bad_world):
    db = bad_world["db"]
    per_day = db.fetch_all(
        "SELECT activity_date, event_count FROM {rs}.daily_activity WHERE user_id = :u", {"u": DUPLICATE_EVENTS}
    )
    ordinary = dict(db.fetch_all("SELECT activity_date, event_count FROM {rs}.daily_activity WHERE user_id = 1"))
    assert len(per_day) == 16 and all(count == 2 * ordinary[day] for day, count in per_day)  # counted as they arrive
    assert db.scalar("SELECT count(*) - count(DISTINCT (activity_date, user_id)) FROM {rs}.daily_activity") == 0
    assert db.scalar("SELECT count(*) FROM {rs}.email_sends WHERE user_id = :u", {"u": DUPLICATE_EVENTS}) == 1
    last_actions = _dormant(db, DUPLICATE_EVENTS)["last_actions"]
    assert len({a["event_type"] for a in last_actions}) == len(last_actions)


def test_invalid_or_empty_email_addresses_are_skipped_and_counted_never_sent(bad_world):
    metadata = materialization_metadata(bad_world["emails"], "reengagement_emails")
    assert metadata["skipped_by_reason"].get("invalid_email") == len(INVALID_EMAILS)
    sent_to = " ".join(json.dumps(e) for e in bad_world["accepted"].values())
    assert "victim@example.com" not in sent_to and "named@example.com" not in sent_to
    assert (
        bad_world["db"].scalar("SELECT count(*) FROM {rs}.email_sends WHERE user_id = ANY(:ids)", {"ids": list(INVALID_EMAILS)})
        == 0
    )
    record("bad_input", "invalid email addresses skipped and counted", {"value": metadata["skipped_by_reason"]["invalid_email"]})


@pytest.mark.parametrize("user_id", [111, 112, 113])
def test_a_missing_name_falls_back_to_a_greeting_without_a_name(bad_world, user_id):
    email = _email(bad_world, user_id)
    assert "Hi there," in email["text"] and "Hi there," in email["html"]
    assert "None" not in email["subject"] + email["text"] and ", ," not in email["text"]


def _no_controls(text: str) -> bool:
    return not any(ord(ch) < 32 and ch not in "\n\t" or 0x7F <= ord(ch) <= 0x9F or ch in "\u2028\u2029" for ch in text)


@pytest.mark.parametrize("user_id", [121, 122, 123, HTML_PROPERTY, CONTROL_PROPERTY])
def test_html_and_control_characters_in_names_and_properties_are_escaped_or_stripped(bad_world, user_id):
    email = _email(bad_world, user_id)
    assert "\r" not in email["subject"] and "\n" not in email["subject"] and _no_controls(email["subject"])
    assert _no_controls(email["html"]) and _no_controls(email["text"])
    assert "<script>" not in email["html"] and "<img" not in email["html"]
    assert all("\r" not in v and "\n" not in v for v in email["headers"].values())
    assert "Bcc" not in json.dumps(email["headers"]) and email["to"] == [f"user{user_id}@example.com"]
    if user_id == 121:
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email["html"]
    if user_id == HTML_PROPERTY:
        assert "&lt;img src=x onerror=alert(1)&gt;" in email["html"]


def test_a_1_mb_properties_document_leaves_only_small_scalar_properties_in_last_actions(bad_world):
    db = bad_world["db"]
    size = db.scalar("SELECT max(pg_column_size(properties)) FROM events WHERE user_id = :u", {"u": HUGE_PROPERTIES})
    assert size > 10_000  # stored (compressed) as the app wrote it
    last = _dormant(db, HUGE_PROPERTIES)["last_actions"][0]
    assert last["event_type"] == "create_project" and last["properties"] == {"project_name": "Big"}
    payload = db.scalar("SELECT length(payload::text) FROM {rs}.email_sends WHERE user_id = :u", {"u": HUGE_PROPERTIES})
    assert payload < 20_000
    assert "Big" in _email(bad_world, HUGE_PROPERTIES)["text"]
    record("bad_input", "1 MB properties document: characters of the email payload", {"value": payload})


def test_unusual_property_names_and_non_object_properties_do_not_break_rendering(bad_world):
    """`self` as a property key once crashed the template call; a JSON array as properties is ignored."""
    assert "Selfie" in _email(bad_world, SELF_PROPERTY)["text"]
    actions = _dormant(bad_world["db"], NON_OBJECT_PROPERTIES)["last_actions"]
    assert {a["event_type"]: a["properties"] for a in actions}["upload_file"] == {}
    assert f"user{NON_OBJECT_PROPERTIES}@example.com" in bad_world["accepted"]


def test_every_sent_email_carries_a_valid_unsubscribe_token_for_its_own_address(bad_world):
    for address, email in bad_world["accepted"].items():
        token = email["headers"]["List-Unsubscribe"].split("token=")[1].rstrip(">")
        ref = verify_unsubscribe_token(UNSUBSCRIBE_SECRET, token, today=AS_OF).send_ref
        assert bad_world["db"].scalar("SELECT email FROM {rs}.email_sends WHERE unsubscribe_ref = :r", {"r": ref}) == address


# -- invalid configuration -------------------------------------------------------------------------


def _failed_run(instance):
    run = instance.get_runs()[0]
    logs = instance.all_logs(run.run_id)
    failures = [e for e in logs if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"]
    retries = [e for e in logs if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"]
    return failures, retries


@pytest.mark.parametrize(
    "config, field",
    [
        ({"dormant_after_days": -3}, "dormant_after_days"),
        ({"decline_ratio": 1.5}, "decline_ratio"),
        ({"decline_ratio": -0.2}, "decline_ratio"),
        ({"lost_after_days": 5}, "lost_after_days"),
    ],
)
def test_invalid_dormancy_thresholds_fail_clearly_before_writing(bad_world, instance, config, field):
    db = bad_world["db"]
    before = db.fetch_all("SELECT * FROM {rs}.dormant_users ORDER BY as_of_date, user_id")
    with clock.frozen_at(MORNING_AFTER), pytest.raises(Exception) as failure:
        run_job(
            instance,
            "daily_retention_job",
            AS_OF.isoformat(),
            resources={"app_db": db},
            assets=["dormant_users"],
            run_config={"ops": {"dormant_users": {"config": config}}},
            quiet=True,
        )
    failures, retries = _failed_run(instance)
    assert f"Invalid DormancyThresholds: {field}" in str(failure.value)
    assert len(failures) == 1 and retries == []  # a typo is not retried like a database hiccup
    assert db.fetch_all("SELECT * FROM {rs}.dormant_users ORDER BY as_of_date, user_id") == before


@pytest.mark.parametrize(
    "config, field",
    [
        ({"cooldown_days": -1}, "cooldown_days"),
        ({"max_send_lag_days": -2}, "max_send_lag_days"),
        ({"holdout_share": 1.5}, "holdout_share"),
        ({"min_exploration_share": -0.1}, "min_exploration_share"),
        ({"steps": [{"step": 1, "delay_days": -1, "variants": ["recap"]}]}, "delay_days"),
    ],
)
def test_invalid_campaign_config_fails_clearly_before_writing_or_sending(bad_world, instance, config, field):
    db = bad_world["db"]
    before = db.fetch_all("SELECT * FROM {rs}.email_sends ORDER BY id")
    run_config = live_campaign({"ops": {"reengagement_emails": {"ops": {"plan_reengagement_sends": {"config": config}}}}})
    with FakeResend(rate=0) as server, clock.frozen_at(MORNING_AFTER), pytest.raises(Exception) as failure:
        run_job(
            instance,
            "daily_retention_job",
            AS_OF.isoformat(),
            resources=send_resources(db.url, server.url),
            assets=["reengagement_emails"],
            run_config=run_config,
            quiet=True,
        )
    failures, retries = _failed_run(instance)
    assert "Invalid CampaignConfig" in str(failure.value) and field in str(failure.value)
    assert len(failures) == 1 and retries == []
    assert server.requests == []
    assert db.fetch_all("SELECT * FROM {rs}.email_sends ORDER BY id") == before


@pytest.mark.parametrize(
    "command",
    [
        "import retention_pipeline.definitions",  # what `dagster dev` loads
        "from retention_pipeline.cli import main; main(['--help'])",
    ],
)
def test_an_unknown_timezone_is_a_clear_settings_error_at_start_up(command):
    completed = subprocess.run(
        [sys.executable, "-c", command],
        env=os.environ | {"RETENTION_TIMEZONE": "Mars/Olympus"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode != 0
    last = completed.stderr.strip().splitlines()[-1]
    assert last == (
        "retention_pipeline.errors.SettingsError: RETENTION_TIMEZONE='Mars/Olympus' is not a known IANA "
        "timezone; use a name like 'UTC' or 'Europe/Berlin'."
    ), completed.stderr[-2000:]


def test_the_console_script_reports_an_unknown_timezone_in_one_line():
    completed = subprocess.run(
        [sys.executable, "-c", "from retention_pipeline.entry import main; main()", "demo"],
        env=os.environ | {"RETENTION_TIMEZONE": "Mars/Olympus"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == (
        "error: RETENTION_TIMEZONE='Mars/Olympus' is not a known IANA timezone; use a name like 'UTC' or 'Europe/Berlin'."
    )
