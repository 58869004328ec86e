"""Fill a Stripe-compatible server (localstripe) with the demo population's customers and subscriptions.

Everything goes through the official SDK, as a real integration would. localstripe has no prices, so
the catalogue is made of legacy plans: three products (Starter, Team, Business), each with a monthly,
a yearly and a weekly per-seat plan whose nickname is the tier name.

Statuses are produced the way Stripe would produce them:
- active: the customer has a working card, the first invoice is paid;
- past_due: active first, then the card starts declining and a renewal invoice fails (localstripe
  bills on an interval change, so the subscription starts on a daily bootstrap plan and moves to its
  real plan once the card declines);
- canceled: active first, then canceled (localstripe sets ended_at, not canceled_at);
- incomplete: the first payment fails; incomplete_expired: its first invoice is then voided;
- unpaid: localstripe cannot produce it; such users become past_due (reported in the result).
Some active subscriptions (about 1 in 8, chosen by user id) are set to cancel at period end.

Customer mapping: about 70% of paying users get their customer id returned in `stripe_customer_ids`
(to be written to users.stripe_customer_id); the rest are left for the pipeline to map, half through
customer.metadata.user_id and half through the email address alone (no metadata).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import stripe

from retention_pipeline.local.demo_data import DemoUser

# Per-seat list prices in cents. Yearly is ten months (two free); weekly is a quarter-month rounded up.
PLAN_AMOUNTS: dict[str, dict[str, int]] = {
    "starter": {"month": 1200, "year": 12000, "week": 300},
    "team": {"month": 2900, "year": 29000, "week": 700},
    "business": {"month": 5900, "year": 59000, "week": 1400},
}
PRODUCT_NAMES = {"starter": "Starter", "team": "Team", "business": "Business"}
CURRENCY = "usd"
_BOOTSTRAP_PLAN = "bootstrap-day"  # a daily plan past_due subscriptions start on (see module docstring)

_GOOD_CARD = {"object": "card", "number": "4242424242424242", "exp_month": 12, "exp_year": 2035, "cvc": "123"}
# Attaching succeeds, every charge is declined.
_DECLINING_CARD = {"object": "card", "number": "4000000000000341", "exp_month": 12, "exp_year": 2035, "cvc": "123"}

SUPPORTED_STATUSES = ("active", "past_due", "canceled", "unpaid", "incomplete", "incomplete_expired")


def plan_id(plan: str, interval: str) -> str:
    return f"{plan}-{interval}"


def _share(user_id: int, salt: str) -> float:
    """A stable number in [0, 1) per user: the same users are chosen on every run."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def mapping_path(user_id: int, linked_share: float = 0.7) -> str:
    """How the pipeline is meant to find this paying user's customer: stripe_customer_id, metadata or email."""
    share = _share(user_id, "stripe-mapping")
    if share < linked_share:
        return "stripe_customer_id"
    return "metadata" if share < linked_share + (1 - linked_share) / 2 else "email"


def ends_at_period_end(user_id: int) -> bool:
    return _share(user_id, "cancel-at-period-end") < 0.125


def ensure_catalogue(client: stripe.StripeClient) -> dict[str, dict]:
    """Create the products and plans if absent (idempotent); return the plans by id."""
    plans: dict[str, dict] = {}
    for tier, amounts in PLAN_AMOUNTS.items():
        product_id = f"prod_demo_{tier}"
        try:
            client.v1.products.retrieve(product_id)
        except stripe.InvalidRequestError:
            client.v1.products.create(params={"id": product_id, "name": PRODUCT_NAMES[tier], "metadata": {"tier": tier}})
        for interval, amount in amounts.items():
            plans[plan_id(tier, interval)] = _ensure_plan(client, plan_id(tier, interval), product_id, amount, interval, tier)
    plans[_BOOTSTRAP_PLAN] = _ensure_plan(client, _BOOTSTRAP_PLAN, "prod_demo_starter", 100, "day", "bootstrap")
    return plans


def _ensure_plan(client: stripe.StripeClient, pid: str, product_id: str, amount: int, interval: str, nickname: str) -> dict:
    try:
        return client.v1.plans.retrieve(pid).to_dict()
    except stripe.InvalidRequestError:
        return client.v1.plans.create(
            params={
                "id": pid,
                "product": product_id,
                "amount": amount,
                "currency": CURRENCY,
                "interval": interval,
                "interval_count": 1,
                "nickname": nickname,
            }
        ).to_dict()


def seed_demo_stripe(
    client: stripe.StripeClient, users: Iterable[DemoUser], *, linked_share: float = 0.7, workers: int = 4
) -> dict:
    """Create a customer and a subscription per paying user (plan is not None); return what was made.

    Expects an account without the demo's customers (e.g. a fresh or reset localstripe): customers are
    created, not looked up. Result keys:
    - stripe_customer_ids: {user_id: customer_id} for ~70% of paying users, to write to users.stripe_customer_id;
    - customer_ids / subscription_ids: {user_id: id} for every paying user;
    - mapping_paths: {user_id: 'stripe_customer_id' | 'metadata' | 'email'} (how the pipeline should map it);
    - statuses: {user_id: status as Stripe reports it}; by_status: counts; status_substitutions:
      {user_id: (wanted, got)} where localstripe could not produce the wanted status (unpaid);
    - cancel_at_period_end: sorted user ids set to cancel at period end;
    - plans: {plan_id: plan dict}.
    """
    paying = [user for user in users if user.plan is not None]
    for user in paying:
        if user.billing_interval not in ("month", "year", "week"):
            raise ValueError(f"user {user.id}: unsupported billing interval {user.billing_interval!r}")
        if (user.subscription_status or "active") not in SUPPORTED_STATUSES:
            raise ValueError(f"user {user.id}: unsupported subscription status {user.subscription_status!r}")
    plans = ensure_catalogue(client)
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        results = list(pool.map(lambda user: _seed_user(client, user, linked_share), paying))
    statuses = {r["user_id"]: r["status"] for r in results}
    return {
        "stripe_customer_ids": {r["user_id"]: r["customer_id"] for r in results if r["path"] == "stripe_customer_id"},
        "customer_ids": {r["user_id"]: r["customer_id"] for r in results},
        "subscription_ids": {r["user_id"]: r["subscription_id"] for r in results},
        "mapping_paths": {r["user_id"]: r["path"] for r in results},
        "statuses": statuses,
        "by_status": dict(Counter(statuses.values())),
        "status_substitutions": {r["user_id"]: (r["wanted"], r["status"]) for r in results if r["wanted"] != r["status"]},
        "cancel_at_period_end": sorted(r["user_id"] for r in results if r["cancel_at_period_end"]),
        "plans": plans,
    }


def _seed_user(client: stripe.StripeClient, user: DemoUser, linked_share: float) -> dict:
    wanted = user.subscription_status or "active"
    path = mapping_path(user.id, linked_share)
    customer_params: dict = {
        "email": user.email,
        "source": _DECLINING_CARD if wanted in ("incomplete", "incomplete_expired") else _GOOD_CARD,
    }
    if user.name:
        customer_params["name"] = user.name
    if path != "email":
        customer_params["metadata"] = {"user_id": str(user.id)}
    customer = client.v1.customers.create(params=customer_params)

    target = plan_id(user.plan, user.billing_interval)
    past_due = wanted in ("past_due", "unpaid")
    first_plan = _BOOTSTRAP_PLAN if past_due else target
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"plan": first_plan, "quantity": user.quantity}]}
    )
    cancel_at_period_end = False
    if past_due:
        card = client.v1.customers.payment_sources.create(customer.id, params={"source": _DECLINING_CARD})
        client.v1.customers.update(customer.id, params={"default_source": card.id})
        item_id = sub.to_dict()["items"]["data"][0]["id"]
        sub = client.v1.subscriptions.update(
            sub.id, params={"items": [{"id": item_id, "plan": target, "quantity": user.quantity}]}
        )
    elif wanted == "canceled":
        sub = client.v1.subscriptions.cancel(sub.id)
    elif wanted == "incomplete_expired":
        client.v1.invoices.void_invoice(sub.latest_invoice)
        sub = client.v1.subscriptions.retrieve(sub.id)
    elif wanted == "active" and ends_at_period_end(user.id):
        sub = client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
        cancel_at_period_end = True
    return {
        "user_id": user.id,
        "customer_id": customer.id,
        "subscription_id": sub.id,
        "path": path,
        "wanted": wanted,
        "status": sub.status,
        "cancel_at_period_end": cancel_at_period_end,
    }
