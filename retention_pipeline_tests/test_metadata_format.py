"""Rates and lifts in the UI's metadata: percentages with the interval as text, raw floats kept for plots."""

import re
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from retention_pipeline.local.runner import run_job
from retention_pipeline.outcomes.format import lift_text, percent, signed_percent
from retention_pipeline.schema import install_schema
from retention_pipeline_tests.scenario import Scenario, materialization_metadata

SEND_DAY = date(2026, 4, 10)
SENT_AT = datetime(2026, 4, 11, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "text"), [(0.0923, "9.2%"), (0.0, "0.0%"), (1.0, "100.0%"), (None, "n/a"), (float("nan"), "n/a")]
)
def test_percent_shows_a_rate_with_one_decimal(value, text):
    assert percent(value) == text


def test_lift_text_is_signed_with_its_interval():
    assert lift_text(0.092, 0.007, 0.158) == "+9.2% (95% CI +0.7% .. +15.8%)"
    assert lift_text(-0.02523839137645109, -0.0912, 0.0401) == "-2.5% (95% CI -9.1% .. +4.0%)"
    assert lift_text(0.05, None, 0.1) == "+5.0%"
    assert lift_text(float("nan"), 0.0, 0.1) == "n/a"
    assert signed_percent(0.0) == "+0.0%"


def test_outcomes_and_performance_metadata_show_percentages_and_keep_the_floats(app_db_env, instance):
    """8 of 20 treated users and 1 of 10 held-out users came back within 7 days: lift +30.0%."""
    db = app_db_env
    install_schema(db)
    s = Scenario(db)
    for user_id in range(1, 31):
        s.user(user_id, SENT_AT - timedelta(days=90))
    returned = set(range(1, 9)) | {21}
    for user_id in sorted(returned):
        s.event(user_id, SENT_AT + timedelta(days=2))
    with db.begin() as conn:
        conn.execute(
            sa.text(
                db.render("""
            INSERT INTO {rs}.email_sends (campaign, step, user_id, episode_start, as_of_date, variant, status, email,
                segment_reason, mrr_cents, created_at, sent_at)
            VALUES ('winback', 1, :user_id, :day, :day, :variant, :status, 'x@example.com', 'inactive', 0, :t,
                    CASE WHEN :status = 'sent' THEN CAST(:t AS timestamptz) END)""")
            ),
            [
                {
                    "user_id": u,
                    "day": SEND_DAY,
                    "t": SENT_AT,
                    "status": "sent" if u <= 20 else "holdout",
                    "variant": "recap" if u <= 20 else "holdout",
                }
                for u in range(1, 31)
            ],
        )
    result = run_job(
        instance,
        "daily_retention_job",
        (SEND_DAY + timedelta(days=20)).isoformat(),
        assets=["reengagement_outcomes", "campaign_performance"],
        quiet=True,
    )
    assert result.success
    outcomes = materialization_metadata(result, "reengagement_outcomes")
    assert outcomes["return_rate_treated_7d"] == pytest.approx(0.4)
    assert outcomes["return_rate_treated_7d_text"] == "40.0%"
    assert outcomes["return_rate_holdout_7d_text"] == "10.0%"
    performance = materialization_metadata(result, "campaign_performance")
    assert performance["lift_winback_step1_7d"] == pytest.approx(0.3)
    text = performance["lift_winback_step1_7d_text"]
    assert re.fullmatch(r"\+30\.0% \(95% CI [+-]\d+\.\d% \.\. \+\d+\.\d%\)", text), text
    assert performance["return_rate_winback_step1_7d_text"] == "40.0%"
