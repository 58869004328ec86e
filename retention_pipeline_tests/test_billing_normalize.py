"""normalize_subscription on hand-written subscriptions of shapes localstripe cannot produce."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from retention_pipeline.billing.normalize import monthly_factor, normalize_subscription


def _price(amount, interval, interval_count=1, usage_type="licensed", nickname="team", product="prod_team", decimal=None):
    price = {
        "id": f"price_{nickname}_{interval}",
        "object": "price",
        "nickname": nickname,
        "product": product,
        "currency": "eur",
        "unit_amount": amount,
        "recurring": {"interval": interval, "interval_count": interval_count, "usage_type": usage_type},
    }
    if decimal is not None:
        price["unit_amount_decimal"] = decimal
    return price


def _newer_shape(status: str) -> dict:
    """API >= 2025-03-31: current_period_* only on items; prices, not plans; customer expanded."""
    return {
        "id": "sub_new1",
        "object": "subscription",
        "status": status,
        "currency": "eur",
        "cancel_at_period_end": True,
        "canceled_at": None,
        "ended_at": None,
        "customer": {"id": "cus_new1", "object": "customer", "email": "Ada@Example.com", "metadata": {"user_id": "42"}},
        "items": {
            "object": "list",
            "data": [
                {"id": "si_1", "quantity": 3, "current_period_end": 1_800_000_000, "price": _price(2900, "month")},
                {
                    "id": "si_2",
                    "quantity": 2,
                    "current_period_end": 1_790_000_000,
                    "price": _price(None, "month", nickname="addon", product="prod_addon", decimal="499.5"),
                },
                {
                    "id": "si_3",
                    "quantity": 1,
                    "current_period_end": 1_800_000_000,
                    "price": _price(50, "month", usage_type="metered", nickname="api_calls", product="prod_api"),
                },
            ],
        },
    }


def test_newer_api_shape_active():
    row = normalize_subscription(_newer_shape("active"), {"prod_team": "Team", "prod_addon": "Add-on"})
    # 2900*3 + 499.5*2 = 9699 cents a month; the metered item is usage-based and not MRR.
    assert row["mrr_cents"] == 9699
    assert row["current_period_end"] == datetime.fromtimestamp(1_790_000_000, tz=UTC)  # earliest item end
    assert row["subscription_id"] == "sub_new1"
    assert row["customer_id"] == "cus_new1"
    assert row["customer_email"] == "Ada@Example.com"
    assert row["customer_user_id"] == "42"
    assert row["plan_name"] == "team + addon + api_calls"
    assert row["product_name"] == "Team + Add-on + prod_api"
    assert row["billing_interval"] == "month" and row["interval_count"] == 1
    assert row["quantity"] == 6
    assert row["currency"] == "eur"
    assert row["cancel_at_period_end"] is True
    assert row["canceled_at"] is None and row["ended_at"] is None


@pytest.mark.parametrize("status", ["trialing", "canceled", "incomplete", "incomplete_expired", "unpaid", "paused"])
def test_statuses_without_mrr(status):
    row = normalize_subscription(_newer_shape(status))
    assert row["mrr_cents"] == 0
    assert row["status"] == status
    assert row["current_period_end"] is not None


def test_past_due_counts():
    assert normalize_subscription(_newer_shape("past_due"))["mrr_cents"] == 9699


@pytest.mark.parametrize(
    ("interval", "count", "amount", "quantity", "expected"),
    [
        ("month", 1, 1200, 3, 3600),
        ("month", 3, 9000, 1, 3000),  # quarterly
        ("year", 1, 12000, 2, 2000),  # 24000 / 12
        ("year", 2, 10000, 1, 417),  # 10000 / 24 = 416.67
        ("week", 1, 700, 1, 3033),  # 700 * 52 / 12 = 3033.33
        ("week", 2, 300, 5, 3250),  # 1500 * 52 / 24 = 3250
        ("day", 1, 100, 1, 3042),  # 100 * 365 / 12 = 3041.67
        ("month", 1, 0, 4, 0),  # free plan
    ],
)
def test_interval_normalisation(interval, count, amount, quantity, expected):
    sub = {
        "id": "sub_x",
        "status": "active",
        "customer": "cus_x",
        "items": {"data": [{"quantity": quantity, "price": _price(amount, interval, count)}]},
    }
    row = normalize_subscription(sub)
    assert row["mrr_cents"] == expected
    assert row["customer_id"] == "cus_x" and row["customer_email"] is None and row["customer_user_id"] is None
    assert row["current_period_end"] is None


def test_rounding_half_up_once_per_subscription():
    # Two items of 0.5 cents each: summed exactly (1 cent), not rounded per item (0 + 0 or 1 + 1).
    sub = {
        "id": "sub_r",
        "status": "active",
        "customer": "cus_r",
        "items": {
            "data": [
                {"quantity": 1, "price": _price(None, "month", decimal="0.5")},
                {"quantity": 1, "price": _price(None, "month", decimal="0.5", nickname="b")},
            ]
        },
    }
    assert normalize_subscription(sub)["mrr_cents"] == 1
    sub["items"]["data"].pop()
    assert normalize_subscription(sub)["mrr_cents"] == 1  # 0.5 rounds half up


def test_older_api_shape_with_plan_and_subscription_period():
    sub = {
        "id": "sub_old",
        "status": "active",
        "current_period_end": 1_800_000_000,
        "cancel_at_period_end": False,
        "canceled_at": 1_700_000_000,
        "ended_at": None,
        "customer": {"id": "cus_old", "deleted": True},
        "items": {
            "data": [
                {
                    "quantity": 2,
                    "current_period_end": 1,
                    "plan": {
                        "id": "team-year",
                        "amount": 29000,
                        "currency": "usd",
                        "interval": "year",
                        "interval_count": 1,
                        "nickname": None,
                        "product": "prod_T",
                        "name": "Team",
                        "usage_type": "licensed",
                    },
                }
            ]
        },
    }
    row = normalize_subscription(sub)
    assert row["mrr_cents"] == 4833  # 58000 / 12 = 4833.33
    assert row["current_period_end"] == datetime.fromtimestamp(1_800_000_000, tz=UTC)
    assert row["canceled_at"] == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert row["plan_name"] == "team-year" and row["product_name"] == "Team"
    assert row["customer_id"] == "cus_old" and row["customer_email"] is None  # deleted customer
    assert row["currency"] == "usd"


def test_tiered_price_is_counted_as_unpriced():
    sub = {
        "id": "sub_t",
        "status": "active",
        "customer": "cus_t",
        "items": {"data": [{"quantity": 10, "price": _price(None, "month")}]},
    }
    row = normalize_subscription(sub)
    assert row["mrr_cents"] == 0 and row["unpriced_items"] == 1


def test_monthly_factor_rejects_unknown_interval():
    with pytest.raises(ValueError):
        monthly_factor("fortnight", 1)
