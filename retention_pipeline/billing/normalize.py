"""Turn one Stripe subscription (a plain dict, any API version) into one `stripe_subscriptions` row.

MRR follows Stripe's definition: the recurring amount of every item (unit amount x quantity),
normalized to one month (a year is 12 months, a week 52/12 of a month, a day 365/12 of a month), for
subscriptions that are `active` or `past_due` only; trialing, incomplete, incomplete_expired, unpaid,
paused and canceled subscriptions contribute 0. Metered items are usage-based and contribute 0.
Discounts, taxes and credits are not applied (list-price MRR). The sum over the items is exact and
rounded half-up to whole cents once per subscription.

Both API shapes are read: before 2025-03-31 `current_period_end` is on the subscription; from
2025-03-31 it is on each item (the earliest item end is used). Items carry a `price` (newer) and/or
a `plan` (older, and localstripe's only kind).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

MRR_STATUSES = frozenset({"active", "past_due"})

# Months per billing interval unit.
_MONTHS_PER_UNIT = {
    "month": Fraction(1),
    "year": Fraction(12),
    "week": Fraction(12, 52),
    "day": Fraction(12, 365),
}


def monthly_factor(interval: str, interval_count: int) -> Fraction:
    """What one charge per (interval_count x interval) is worth per month, as a multiplier."""
    try:
        months = _MONTHS_PER_UNIT[interval]
    except KeyError:
        raise ValueError(f"unknown billing interval {interval!r}") from None
    return 1 / (months * max(int(interval_count or 1), 1))


def _id_of(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("id")
    return value


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def _item_terms(item: Mapping[str, Any], product_names: Mapping[str, str]) -> dict[str, Any]:
    """Amount, interval, names of one subscription item, from its price or (older/localstripe) plan."""
    price = item.get("price") or {}
    plan = item.get("plan") or {}
    recurring = price.get("recurring") or {}
    if price:
        amount = price.get("unit_amount_decimal")
        amount = price.get("unit_amount") if amount is None else amount
        interval, interval_count = recurring.get("interval"), recurring.get("interval_count")
        usage_type = recurring.get("usage_type")
        nickname = price.get("nickname") or price.get("lookup_key")
        product = price.get("product")
        price_id = price.get("id")
    else:
        amount = plan.get("amount_decimal")
        amount = plan.get("amount") if amount is None else amount
        interval, interval_count = plan.get("interval"), plan.get("interval_count")
        usage_type = plan.get("usage_type")
        nickname = plan.get("nickname")
        product = plan.get("product")
        price_id = plan.get("id")
    # Fall back to the plan for whatever the price lacks (both are present on older API versions).
    interval = interval or plan.get("interval")
    interval_count = interval_count or plan.get("interval_count") or 1
    product_id = _id_of(product)
    if isinstance(product, Mapping) and product.get("name"):
        product_name = product["name"]
    elif product_id and product_id in product_names:
        product_name = product_names[product_id]
    else:
        # localstripe (and API versions before 2018-02-05) put the product's name on the plan.
        product_name = plan.get("name") or product_id
    return {
        "amount": None if amount is None else Decimal(str(amount)),
        "interval": interval,
        "interval_count": int(interval_count),
        "metered": usage_type == "metered",
        "quantity": int(item.get("quantity") or 0),
        "plan_name": nickname or price_id,
        "product_name": product_name,
        "currency": price.get("currency") or plan.get("currency"),
        "current_period_end": item.get("current_period_end"),
    }


def normalize_subscription(sub: Mapping[str, Any], product_names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One subscription dict (`StripeObject.to_dict()`, optionally with the customer expanded) as a row.

    Besides the table's columns the result carries `customer_email` and `customer_user_id`
    (customer.metadata.user_id, as given) for the user mapping, and `unpriced_items`: items whose
    amount is unknown here (tiered prices), counted as 0 MRR.
    """
    product_names = product_names or {}
    items = [_item_terms(item, product_names) for item in ((sub.get("items") or {}).get("data") or [])]
    status = sub.get("status")

    mrr = Fraction(0)
    unpriced = 0
    for item in items:
        if item["metered"]:
            continue
        if item["amount"] is None or item["interval"] is None:
            unpriced += 1
            continue
        mrr += Fraction(item["amount"]) * item["quantity"] * monthly_factor(item["interval"], item["interval_count"])
    mrr_cents = _round_half_up(mrr) if status in MRR_STATUSES else 0

    customer = sub.get("customer")
    customer_id = _id_of(customer)
    email = user_ref = None
    if isinstance(customer, Mapping) and not customer.get("deleted"):
        email = customer.get("email") or None
        user_ref = (customer.get("metadata") or {}).get("user_id")

    period_end = sub.get("current_period_end")
    if period_end is None:
        item_ends = [item["current_period_end"] for item in items if item["current_period_end"] is not None]
        period_end = min(item_ends) if item_ends else None

    intervals = {item["interval"] for item in items if item["interval"]}
    first = items[0] if items else {}
    return {
        "subscription_id": sub["id"],
        "customer_id": customer_id,
        "status": status,
        "plan_name": _joined(item["plan_name"] for item in items),
        "product_name": _joined(item["product_name"] for item in items),
        "billing_interval": first.get("interval") if len(intervals) <= 1 else "mixed",
        "interval_count": first.get("interval_count"),
        "quantity": sum(item["quantity"] for item in items),
        "mrr_cents": mrr_cents,
        "currency": sub.get("currency") or first.get("currency"),
        "cancel_at_period_end": bool(sub.get("cancel_at_period_end")),
        "current_period_end": _timestamp(period_end),
        "canceled_at": _timestamp(sub.get("canceled_at")),
        "ended_at": _timestamp(sub.get("ended_at")),
        # Audiences "trial ending within N days" read it (audience.audience_sql).
        "trial_end": _timestamp(sub.get("trial_end")),
        "customer_email": email,
        "customer_user_id": None if user_ref is None else str(user_ref),
        "unpriced_items": unpriced,
    }


def _round_half_up(value: Fraction) -> int:
    """Nearest whole cent, halves away from zero (MRR is never negative here)."""
    return math.floor(value + Fraction(1, 2))


def _joined(names) -> str | None:
    distinct = list(dict.fromkeys(name for name in names if name))
    return " + ".join(distinct) if distinct else None
