"""Outcomes against hand-built timelines, and the lift statistics against an independent computation."""

import math
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from scipy.optimize import minimize_scalar
from scipy.stats import norm

from retention_pipeline.local.runner import run_job
from retention_pipeline.outcomes.assets import performance_rows
from retention_pipeline.outcomes.stats import lift
from retention_pipeline.schema import install_schema
from retention_pipeline_tests.scenario import Scenario

SEND_DAY = date(2026, 4, 10)  # the partition whose emails went out...
SENT_AT = datetime(2026, 4, 11, 9, 0, tzinfo=UTC)  # ...the next morning


def add_send(db, send_id: int, user_id: int, status: str = "sent", variant: str = "recap") -> None:
    with db.begin() as conn:
        conn.execute(
            sa.text(
                db.render("""
            INSERT INTO {rs}.email_sends (id, campaign, step, user_id, episode_start, as_of_date, variant, status,
                email, segment_reason, mrr_cents, created_at, sent_at)
            VALUES (:id, 'winback', 1, :user_id, :day, :day, :variant, :status, 'x@example.com', 'inactive', 1000,
                    :t, CASE WHEN :status = 'sent' THEN CAST(:t AS timestamptz) END)""")
            ),
            {"id": send_id, "user_id": user_id, "day": SEND_DAY, "variant": variant, "status": status, "t": SENT_AT},
        )


def outcomes(db) -> dict[tuple[int, int], dict]:
    with db.engine().connect() as conn:
        rows = conn.execute(sa.text(db.render("SELECT * FROM {rs}.reengagement_outcomes"))).mappings().all()
    return {(r["user_id"], r["window_days"]): dict(r) for r in rows}


def evaluate(instance, as_of: date):
    result = run_job(instance, "daily_retention_job", as_of.isoformat(), assets=["reengagement_outcomes"], quiet=True)
    assert result.success


@pytest.fixture
def timeline(app_db_env):
    db = app_db_env
    install_schema(db)
    s = Scenario(db)
    for user_id in range(1, 7):
        s.user(user_id, SENT_AT - timedelta(days=90))
    s.event(1, SENT_AT + timedelta(hours=2))  # day 0 after the send
    s.event(2, SENT_AT + timedelta(days=7) - timedelta(seconds=1))  # last second of the 7-day window
    s.event(3, SENT_AT + timedelta(days=8))  # one day after the 7-day window
    s.event(4, SENT_AT - timedelta(hours=3))  # before the send only
    s.event(5, SENT_AT + timedelta(days=3))  # holdout member who returned
    # user 6: never returns
    for send_id, user_id in enumerate(range(1, 7), start=1):
        add_send(db, send_id, user_id, status="holdout" if user_id == 5 else "sent")
    return db


def test_returns_are_attributed_to_the_right_windows(timeline, instance):
    evaluate(instance, SEND_DAY + timedelta(days=20))
    o = outcomes(timeline)
    assert o[(1, 1)]["returned"] and o[(1, 7)]["returned"] and o[(1, 1)]["first_returned_at"] == SENT_AT + timedelta(hours=2)
    assert not o[(2, 1)]["returned"] and o[(2, 7)]["returned"] and o[(2, 14)]["returned"]
    assert not o[(3, 7)]["returned"] and o[(3, 14)]["returned"]
    assert not any(o[(4, w)]["returned"] for w in (1, 7, 14)), "a return before the send is not the send's success"
    assert o[(5, 7)]["returned"] and not o[(5, 7)]["treated"]
    assert not o[(6, 14)]["returned"] and o[(6, 14)]["events"] == 0
    assert all(row["final"] for row in o.values())


def test_rows_change_while_the_window_is_open_and_never_after(timeline, instance):
    evaluate(instance, SEND_DAY + timedelta(days=3))
    early = outcomes(timeline)
    assert not early[(2, 7)]["final"] and not early[(2, 7)]["returned"], "the window is still open, the return not yet seen"
    assert early[(1, 1)]["final"] and early[(1, 1)]["returned"]

    evaluate(instance, SEND_DAY + timedelta(days=7))
    still_open = outcomes(timeline)
    assert not still_open[(2, 7)]["final"], "the 7-day window ends at 09:00 on the 8th day after the partition"
    evaluate(instance, SEND_DAY + timedelta(days=8))
    later = outcomes(timeline)
    assert later[(2, 7)]["final"] and later[(2, 7)]["returned"]

    # New events inside closed windows (e.g. late-arriving) never change a final row.
    Scenario(timeline, first_event_id=5000).event(6, SENT_AT + timedelta(hours=1))
    evaluate(instance, SEND_DAY + timedelta(days=30))
    final = outcomes(timeline)
    assert final[(6, 1)] == later[(6, 1)] and final[(6, 7)] == later[(6, 7)]
    assert final[(6, 1)]["returned"] is False and final[(6, 7)]["returned"] is False
    # An evaluation as of an earlier day does not roll an open row back either.
    evaluate(instance, SEND_DAY + timedelta(days=2))
    assert outcomes(timeline)[(2, 7)]["returned"]


def restricted_score_p_by_hand(r1: int, n1: int, r2: int, n2: int, delta: float) -> float:
    """Score test of p1 - p2 = delta with the restricted MLE found numerically (no closed form)."""

    def negative_loglik(q2):
        q1 = q2 + delta
        return -sum(
            k * math.log(max(q, 1e-300)) + (n - k) * math.log(max(1 - q, 1e-300)) for k, n, q in ((r1, n1, q1), (r2, n2, q2))
        )

    q2 = minimize_scalar(
        negative_loglik, bounds=(max(0.0, -delta), min(1.0, 1 - delta)), method="bounded", options={"xatol": 1e-13}
    ).x
    q1, total = q2 + delta, n1 + n2
    variance = (q1 * (1 - q1) / n1 + q2 * (1 - q2) / n2) * total / (total - 1)
    return 2 * norm.sf(abs(r1 / n1 - r2 / n2 - delta) / math.sqrt(variance))


def score_test_by_hand(r1: int, n1: int, r2: int, n2: int) -> float:
    # Under H0 (equal rates) the restricted MLE is the pooled rate; Miettinen-Nurminen's variance
    # carries the N/(N-1) factor.
    pooled, total = (r1 + r2) / (n1 + n2), n1 + n2
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2) * total / (total - 1)
    return 2 * norm.sf(abs(r1 / n1 - r2 / n2) / math.sqrt(variance))


@pytest.mark.parametrize("counts", [(300, 1000, 20, 100), (120, 900, 15, 100), (45, 450, 6, 50), (7, 40, 0, 12)])
def test_lift_matches_an_independent_computation(counts):
    r1, n1, r2, n2 = counts
    result = lift(r1, n1, r2, n2)
    assert result.lift == pytest.approx(r1 / n1 - r2 / n2, abs=1e-12)
    assert result.p_value == pytest.approx(score_test_by_hand(r1, n1, r2, n2), rel=1e-6, abs=1e-12)
    # The score interval's ends are exactly where the (numerically restricted) score test reaches 5%.
    assert restricted_score_p_by_hand(r1, n1, r2, n2, result.ci_low) == pytest.approx(0.05, abs=1e-5)
    assert restricted_score_p_by_hand(r1, n1, r2, n2, result.ci_high) == pytest.approx(0.05, abs=1e-5)


def test_performance_rows_compare_each_variant_and_segment_with_the_holdout():
    import pandas as pd

    counts = pd.DataFrame(
        [
            # campaign, step, variant, segment, window, treated, send day, users, returned, recovered MRR
            ("winback", 1, "recap", "inactive", 7, True, SEND_DAY, 400, 120, 5000),
            ("winback", 1, "nudge", "inactive", 7, True, SEND_DAY, 400, 80, 0),
            ("winback", 1, "recap", "declining", 7, True, SEND_DAY, 100, 50, 0),
            ("winback", 1, "holdout", "inactive", 7, False, SEND_DAY, 90, 18, 0),
            ("winback", 1, "holdout", "declining", 7, False, SEND_DAY, 10, 4, 0),
        ],
        columns=[
            "campaign",
            "step",
            "variant",
            "segment",
            "window_days",
            "treated",
            "day",
            "users",
            "returned",
            "recovered_mrr_cents",
        ],
    )
    counts["delivered_users"], counts["delivered_returned"] = counts["users"], counts["returned"]  # every email delivered
    rows = {(r["variant"], r["segment"]): r for r in performance_rows(counts, SEND_DAY)}
    overall = rows[("all", "all")]
    assert (overall["treated"], overall["treated_returned"], overall["holdout"], overall["holdout_returned"]) == (
        900,
        250,
        100,
        22,
    )
    assert overall["recovered_mrr_cents"] == 5000
    recap_inactive = rows[("recap", "inactive")]
    assert recap_inactive["lift"] == pytest.approx(120 / 400 - 18 / 90)
    assert ("nudge", "declining") not in rows, "no treated users there: no row"
