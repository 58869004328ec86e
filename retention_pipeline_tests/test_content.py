"""Email copy over the demo's realistic population: plurals, names, humanized identifiers, footers.

The demo's dormant users are rendered with every template variant, and the daily job's real emails
(the outbox) are read back; none may show the defects issue 18 counted in the demo's 1,098 emails.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote, unquote

import pytest
from dagster import AssetCheckSeverity, DagsterInstance, Failure

from retention_pipeline import clock
from retention_pipeline.local import demo_data
from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.runner import run_job
from retention_pipeline.outreach.campaign import DEMO_POSTAL_ADDRESS, CampaignConfig
from retention_pipeline.outreach.checks import unmapped_event_types
from retention_pipeline.outreach.render import ACTION_PHRASES, TEMPLATE_VARIANTS, EmailRenderer, humanize, pluralize
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.resources import AppDatabase
from retention_pipeline_tests.scenario import LIVE_IDENTITY, Scenario, at, live_campaign

AS_OF = date(2026, 5, 20)
MORNING_AFTER = datetime(2026, 5, 21, 9, 0, tzinfo=UTC)
LINK = "https://app.example.com/retention/unsubscribe?token=t"

# Each pattern is one defect of the demo's emails (issue 18).
DEFECTS = {
    "zero days": re.compile(r"\b0 days\b"),
    "1 days": re.compile(r"\b1 days\b"),
    "there, there": re.compile(r"\bthere, there\b", re.IGNORECASE),
    "name fallback after a comma": re.compile(r", there\b"),
    "fallback as a name": re.compile(r"^there,", re.IGNORECASE | re.MULTILINE),
    "raw identifier": re.compile(r"\b[a-z]+_[a-z0-9_]+\b"),
}


def defects(text: str) -> list[str]:
    return [name for name, pattern in DEFECTS.items() if pattern.search(text)]


def body_without_links(text: str) -> str:
    """Links carry tokens and URLs (underscores are fine there); the copy is what a person reads."""
    return re.sub(r"https?://\S+", "<link>", text)


def _demo_through_dormant_users(server, name: str) -> None:
    """The demo's 1,500 users, with snapshots and dormant users materialized up to AS_OF."""
    conn = server.connect(name)
    demo_data.load(conn, demo_data.generate(seed=42, as_of=AS_OF, n_users=1500))
    conn.commit()
    conn.close()
    app_db = AppDatabase(url=server.url(name))
    with DagsterInstance.ephemeral() as instance, clock.frozen_at(MORNING_AFTER):
        assert run_job(
            instance,
            "daily_retention_job",
            (AS_OF - timedelta(days=35)).isoformat(),
            AS_OF.isoformat(),
            resources={"app_db": app_db},
            assets=["daily_activity_snapshots", "dormant_users"],
            quiet=True,
        ).success
    app_db.engine().dispose()


@pytest.fixture(scope="module")
def demo_template(database_template) -> str:
    return database_template("content_demo", _demo_through_dormant_users)


@pytest.fixture
def demo_db(demo_template, app_db_copy):
    """A copy of the demo run through snapshots and dormant users, exported as `app_db_env` is."""
    return app_db_copy(demo_template)


def test_pluralize_and_humanize():
    assert [pluralize(n, "day") for n in (1, 2, 0)] == ["1 day", "2 days", "0 days"]
    assert pluralize(1, "person", "people") == "1 person" and pluralize(3, "person", "people") == "3 people"
    assert humanize("team_workload") == "team workload" and humanize("activity-feed") == "activity feed"
    # A person's words and file names keep their form.
    assert humanize("meeting-notes.docx") == "meeting-notes.docx" and humanize("Q3_Plan") == "Q3_Plan"
    assert humanize("Website relaunch") == "Website relaunch"


def test_every_demo_dormant_user_reads_right_in_every_variant(demo_db):
    rows = [
        dict(r._mapping)
        for r in demo_db.fetch_all(
            "SELECT *, reason AS segment_reason FROM {rs}.dormant_users WHERE as_of_date = :d", {"d": AS_OF}
        )
    ]
    reasons = {r["segment_reason"] for r in rows}
    assert reasons == {"inactive", "declining"}, reasons
    assert any(not r["name"] for r in rows), "the demo must hold users without a name"
    assert any(r["days_inactive"] == 0 for r in rows), "the demo must hold declining users active today"
    campaign = CampaignConfig(**LIVE_IDENTITY).model_dump()
    renderer = EmailRenderer()
    found: dict[str, int] = {}
    for row in rows:
        for variant in TEMPLATE_VARIANTS:
            email = renderer.render(variant, row, campaign, LINK)
            for text in (email.subject, body_without_links(email.text), body_without_links(email.html)):
                for name in defects(text):
                    found[name] = found.get(name, 0) + 1
            assert LIVE_IDENTITY["postal_address"] in email.text and LIVE_IDENTITY["postal_address"] in email.html
            assert LIVE_IDENTITY["sender_name"] in email.text
    assert found == {}, f"defects over {len(rows)} users x {len(TEMPLATE_VARIANTS)} variants: {found}"


def test_the_demo_emails_in_the_outbox_read_right_and_carry_a_postal_address(demo_db, monkeypatch):
    monkeypatch.delenv("RESEND_API_KEY", raising=False)
    with DagsterInstance.ephemeral() as instance, clock.frozen_at(MORNING_AFTER):
        assert run_job(
            instance,
            "daily_retention_job",
            AS_OF.isoformat(),
            resources={"app_db": demo_db},
            assets=["reengagement_emails"],
            quiet=True,
        ).success
    emails = demo_db.fetch_all("SELECT subject, text_body, html FROM {rs}.email_outbox")
    assert len(emails) > 100
    for email in emails:
        assert defects(email.subject) == [], email.subject
        assert defects(body_without_links(email.text_body)) == [], email.text_body
        assert defects(body_without_links(email.html)) == [], email.html
        # The outbox has no real address: the demo's placeholder says so in every footer.
        assert DEMO_POSTAL_ADDRESS in email.text_body and DEMO_POSTAL_ADDRESS in email.html


def test_a_live_send_without_a_postal_address_fails_before_anything_is_sent(demo_db):
    with DagsterInstance.ephemeral() as instance, clock.frozen_at(MORNING_AFTER), FakeResend(rate=0) as server:
        sender = ResendSender(api_key="re_test", api_url=server.url, requests_per_second=50)
        with pytest.raises(Failure, match="postal_address is empty"):
            run_job(
                instance,
                "daily_retention_job",
                AS_OF.isoformat(),
                resources={"email_sender": sender},
                assets=["reengagement_emails"],
                quiet=True,
            )
        assert server.accepted == []
        assert demo_db.fetch_all("SELECT 1 FROM {rs}.email_sends") == []
        # With the address configured the same run sends, and every footer carries it.
        assert run_job(
            instance,
            "daily_retention_job",
            AS_OF.isoformat(),
            resources={"email_sender": sender},
            assets=["reengagement_emails"],
            run_config=live_campaign(),
            quiet=True,
        ).success
        assert len(server.accepted) > 100
        for accepted in server.accepted:
            assert LIVE_IDENTITY["postal_address"] in accepted.email["text"]
            assert LIVE_IDENTITY["postal_address"] in accepted.email["html"]


def test_the_demo_data_has_a_phrase_for_every_event_type(demo_db):
    window = {"start_date": AS_OF, "end_date": AS_OF + timedelta(days=1)}
    assert unmapped_event_types(demo_db, window, ACTION_PHRASES) == {}
    # A campaign's own phrase map without dashboards: the check names what it lacks.
    without_dashboards = {k: v for k, v in ACTION_PHRASES.items() if k != "view_dashboard"}
    unmapped = unmapped_event_types(demo_db, window, without_dashboards)
    assert list(unmapped) == ["view_dashboard"] and unmapped["view_dashboard"] > 0


def test_the_unmapped_event_types_check_warns_and_lists_them(app_db_env, instance):
    db = app_db_env
    s = Scenario(db)
    for user_id, event_type in ((1, "team_workload"), (2, "create_project"), (3, "sync_calendar")):
        s.user(user_id, at(AS_OF - timedelta(days=60)), email=f"user{user_id}@example.com")
        s.events((user_id, at(AS_OF - timedelta(days=d)), event_type, None, None) for d in range(30, 14, -1))
    with clock.frozen_at(MORNING_AFTER):
        result = run_job(
            instance,
            "daily_retention_job",
            (AS_OF - timedelta(days=35)).isoformat(),
            AS_OF.isoformat(),
            assets=["daily_activity_snapshots", "dormant_users"],
            quiet=True,
        )
    assert result.success
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "unmapped_event_types_check")
    assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.WARN
    metadata = {k: v.value for k, v in evaluation.metadata.items()}
    assert set(metadata["unmapped_event_types"]) == {"team_workload", "sync_calendar"}
    assert metadata["reads_as"]["team_workload"] == "you used team workload"


def _readable_forms(address: str) -> list[str]:
    """An address as it could be read out of a link: plain, URL-encoded, base64 and base64url of it and of
    its JSON string, at every alignment (a base64 substring of a longer payload shifts by 0-2 bytes)."""
    forms = {address, quote(address), quote(address, safe="")}
    for raw in (address.encode(), json.dumps(address).encode()):
        for shift in range(3):
            encoded = base64.b64encode(b"\0" * shift + raw).decode()
            core = encoded[4 * ((shift + 2) // 3) :].rstrip("=")[:-2]  # drop the prefix's and the tail's mixed digits
            forms |= {core, core.replace("+", "-").replace("/", "_")}
    return [form for form in forms if len(form) >= 8]


def _links_and_headers(email: dict) -> list[str]:
    links = re.findall(r"https?://[^\s\"'<>]+", email["html"] + " " + email["text"])
    return [unquote(link) for link in links] + links + [f"{name}: {value}" for name, value in email["headers"].items()]


def test_token_links_and_headers_carry_no_email_address(demo_db):
    with DagsterInstance.ephemeral() as instance, clock.frozen_at(MORNING_AFTER), FakeResend(rate=0) as server:
        sender = ResendSender(api_key="re_test", api_url=server.url, requests_per_second=50)
        assert run_job(
            instance,
            "daily_retention_job",
            AS_OF.isoformat(),
            resources={"email_sender": sender},
            assets=["reengagement_emails"],
            run_config=live_campaign(),
            quiet=True,
        ).success
    assert len(server.accepted) > 100
    for accepted in server.accepted:
        email = accepted.email
        address = email["to"][0] if isinstance(email["to"], list) else email["to"]
        local_part = address.split("@")[0]
        places = _links_and_headers(email)
        assert any("token=v2." in place for place in places)
        for place in places:
            for form in _readable_forms(address) + _readable_forms(local_part):
                assert form not in place, f"{address} readable as {form!r} in {place!r}"
