"""Revenue kept against the holdout: the daily history of Stripe subscription snapshots, and the
incremental MRR of a campaign step at 30 and 60 days after assignment, with its 95% interval."""

from datetime import UTC, date, datetime, time, timedelta

import pytest
import sqlalchemy as sa
import stripe
from dagster import materialize

from retention_pipeline import clock
from retention_pipeline.billing.assets import stripe_subscriptions
from retention_pipeline.billing.resource import StripeResource
from retention_pipeline.local.localstripe import (
    LOCALSTRIPE_API_KEY,
    LocalStripe,
)
from retention_pipeline.local.runner import run_job
from retention_pipeline.outcomes.stats import incremental_mrr, lift
from retention_pipeline.schema import install_schema
from retention_pipeline_tests.scenario import materialization_metadata

ASSIGNED = date(2026, 4, 10)
UTC = UTC


def test_incremental_mrr_is_the_retention_difference_times_mrr_at_risk():
    result = incremental_mrr(37, 41, 14, 20, mrr_at_risk_cents=40_500)
    retention = lift(37, 41, 14, 20)
    assert result.incremental_mrr_cents == pytest.approx((37 / 41 - 14 / 20) * 40_500)
    assert (result.ci_low_cents, result.ci_high_cents) == (
        pytest.approx(retention.ci_low * 40_500),
        pytest.approx(retention.ci_high * 40_500),
    )
    assert result.ci_low_cents < result.incremental_mrr_cents < result.ci_high_cents
    assert incremental_mrr(5, 10, 0, 0, 1000).incremental_mrr_cents is None, "no holdout: nothing to compare"


def test_revenue_history_keeps_one_snapshot_per_day_and_replaces_the_same_day(app_db, instance):
    with LocalStripe() as server:
        client = stripe.StripeClient(LOCALSTRIPE_API_KEY, base_addresses={"api": server.api_base})
        product = client.v1.products.create(params={"name": "Team"})
        plan = client.v1.plans.create(
            params={"id": "team-month", "amount": 2900, "currency": "usd", "interval": "month", "product": product.id}
        )
        subscriptions = []
        for user_id in (1, 2, 3):
            app_db.execute(
                "INSERT INTO users (id, email, name, created_at) VALUES (:id, :e, 'U', now())",
                {"id": user_id, "e": f"user{user_id}@example.com"},
            )
            customer = client.v1.customers.create(
                params={
                    "email": f"user{user_id}@example.com",
                    "metadata": {"user_id": str(user_id)},
                    "source": {"object": "card", "number": "4242424242424242", "exp_month": 12, "exp_year": 2035, "cvc": "123"},
                }
            )
            subscriptions.append(client.v1.subscriptions.create(params={"customer": customer.id, "items": [{"plan": plan.id}]}))
        resources = {"app_db": app_db, "stripe": StripeResource(api_key=LOCALSTRIPE_API_KEY, api_base=server.api_base)}
        first_morning = datetime(2026, 5, 1, 9, tzinfo=UTC)
        with clock.frozen_at(first_morning):
            assert materialize([stripe_subscriptions], resources=resources, instance=instance).success
        client.v1.subscriptions.cancel(subscriptions[0].id)
        for hour in (9, 15):  # twice the next day: the day's rows are replaced, not added
            with clock.frozen_at(datetime(2026, 5, 2, hour, tzinfo=UTC)):
                result = materialize([stripe_subscriptions], resources=resources, instance=instance)
            assert result.success
    history = app_db.fetch_all(
        "SELECT snapshot_date, user_id, status, mrr_cents, snapshot_at FROM {rs}.stripe_subscription_history "
        "ORDER BY snapshot_date, user_id"
    )
    by_day = {}
    for row in history:
        by_day.setdefault(row.snapshot_date, {})[row.user_id] = (row.status, row.mrr_cents)
    assert by_day == {
        date(2026, 5, 1): {1: ("active", 2900), 2: ("active", 2900), 3: ("active", 2900)},
        date(2026, 5, 2): {1: ("canceled", 0), 2: ("active", 2900), 3: ("active", 2900)},
    }
    assert {r.snapshot_at.hour for r in history if r.snapshot_date == date(2026, 5, 2)} == {15}
    # What lifecycle audiences read of each day: the product's name (`plans`) and the trial end (none here).
    kept = app_db.fetch_all("SELECT DISTINCT product_name, trial_end FROM {rs}.stripe_subscription_history")
    assert [tuple(r) for r in kept] == [("Team", None)]
    metadata = result.asset_materializations_for_node("stripe_subscriptions")[0].metadata
    assert metadata["history_days"].value == 2 and metadata["history_date"].value == "2026-05-02"


def _ledger(db, rows: list[tuple[int, str, int]]) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.text(
                db.render("""
            INSERT INTO {rs}.email_sends (campaign, step, user_id, episode_start, as_of_date, variant, status, email,
                segment_reason, mrr_cents, created_at)
            VALUES ('winback', 1, :user_id, :day, :day, :variant, :status, 'x@example.com', 'inactive', :mrr, :t)""")
            ),
            [
                {
                    "user_id": u,
                    "status": status,
                    "mrr": mrr,
                    "day": ASSIGNED,
                    "variant": "holdout" if status == "holdout" else "recap",
                    "t": datetime.combine(ASSIGNED + timedelta(days=1), time(9), UTC),
                }
                for u, status, mrr in rows
            ],
        )


def _history(db, snapshot_date: date, subscriptions: list[tuple[int, str, datetime | None]]) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.text(
                db.render("""
            INSERT INTO {rs}.stripe_subscription_history (snapshot_date, subscription_id, customer_id, user_id, status,
                mrr_cents, cancel_at_period_end, canceled_at, ended_at, snapshot_at)
            VALUES (:d, :sub, :cus, :user_id, :status, CASE WHEN :status = 'active' THEN 1000 ELSE 0 END, false, :ended, :ended,
                    CAST(:d AS timestamp) AT TIME ZONE 'UTC' + interval '9 hours')""")
            ),
            [
                {"d": snapshot_date, "sub": f"sub_{u}_{i}", "cus": f"cus_{u}", "user_id": u, "status": status, "ended": ended}
                for i, (u, status, ended) in enumerate(subscriptions)
            ],
        )


def test_revenue_kept_and_incremental_mrr_against_the_holdout_per_step(app_db_env, instance):
    db = app_db_env
    install_schema(db)
    treated = list(range(1, 41))
    holdout = list(range(41, 61))
    _ledger(
        db,
        [(u, "sent", 1000) for u in treated]
        + [(u, "holdout", 2000) for u in holdout]
        + [
            (61, "sent", 0),  # not paying: not at risk
            (62, "failed", 500),  # as assigned: a failed send stays treated
            (63, "dry_run", 700),
        ],
    )  # never assigned to a real send
    early_cancel = datetime(2026, 5, 1, 12, tzinfo=UTC)  # before day 30 (2026-05-10)
    late_cancel = datetime(2026, 5, 11, 12, tzinfo=UTC)  # after day 30 began
    everyone = treated + holdout + [61, 62, 63]
    _history(db, date(2026, 4, 11), [(u, "active", None) for u in everyone])
    lost = {1, 2, 3, 4, 41, 42, 43, 44, 45, 46}
    day_31 = [
        (u, "canceled", early_cancel) if u in lost else (u, "canceled", late_cancel) if u == 5 else (u, "active", None)
        for u in everyone
    ]
    day_31.append((7, "canceled", early_cancel))  # a second, ended subscription does not undo the running one
    _history(db, date(2026, 5, 12), day_31)

    as_of = date(2026, 6, 12)  # day 60 (2026-06-09) has passed, but no snapshot has been taken since
    result = run_job(instance, "daily_retention_job", as_of.isoformat(), assets=["campaign_performance"], quiet=True)
    assert result.success
    rows = {r.horizon_days: r for r in db.fetch_all("SELECT * FROM {rs}.campaign_revenue WHERE as_of_date = :d", {"d": as_of})}
    day30 = rows[30]
    assert (day30.treated, day30.treated_kept, day30.holdout, day30.holdout_kept) == (41, 37, 20, 14)
    assert day30.mrr_at_risk_cents == 40 * 1000 + 500
    assert day30.retention_lift == pytest.approx(37 / 41 - 14 / 20)
    assert day30.incremental_mrr_cents == pytest.approx((37 / 41 - 14 / 20) * 40_500)
    expected = lift(37, 41, 14, 20)
    assert day30.incremental_mrr_ci_low_cents == pytest.approx(expected.ci_low * 40_500)
    assert day30.incremental_mrr_ci_high_cents == pytest.approx(expected.ci_high * 40_500)
    assert (rows[60].treated, rows[60].holdout, rows[60].awaiting) == (0, 0, 61), "day 60 has no snapshot yet"
    assert rows[60].incremental_mrr_cents is None

    metadata = materialization_metadata(result, "campaign_performance")
    assert metadata["incremental_mrr_winback_step1_30d"] == pytest.approx((37 / 41 - 14 / 20) * 405)
    assert "incremental_mrr_winback_step1_60d" not in metadata
    assert "| winback | 1 | 30d | 37/41 | 14/20 | $405.00 |" in metadata["revenue_kept"]

    # A snapshot after day 60 judges it; re-running the same day replaces the rows.
    _history(db, date(2026, 6, 12), [(u, "canceled", early_cancel) if u in lost else (u, "active", None) for u in everyone])
    assert run_job(instance, "daily_retention_job", as_of.isoformat(), assets=["campaign_performance"], quiet=True).success
    rows = {r.horizon_days: r for r in db.fetch_all("SELECT * FROM {rs}.campaign_revenue WHERE as_of_date = :d", {"d": as_of})}
    assert (rows[60].treated, rows[60].treated_kept, rows[60].holdout_kept, rows[60].awaiting) == (41, 37, 14, 0)
    assert db.scalar("SELECT count(*) FROM {rs}.campaign_revenue WHERE as_of_date = :d", {"d": as_of}) == 2
