"""stripe_subscriptions against a real localstripe server and a real PostgreSQL: pages, statuses, MRR,
user mapping (all three paths), snapshot replacement, and failures that leave the previous snapshot."""

from __future__ import annotations

import math
import socket
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
import sqlalchemy as sa
import stripe
from dagster import Failure, build_asset_context, materialize

from retention_pipeline import clock
from retention_pipeline.billing.assets import stripe_subscriptions
from retention_pipeline.billing.resource import StripeResource
from retention_pipeline.local.demo_data import DemoUser
from retention_pipeline.local.localstripe import LOCALSTRIPE_API_KEY, LocalStripe
from retention_pipeline.local.stripe_seed import seed_demo_stripe
from retention_pipeline.resources import AppDatabase
from retention_pipeline_tests.stripe_server import PERIOD_END, FakeStripe

# What the test expects Stripe to charge, written out independently of stripe_seed.PLAN_AMOUNTS.
PER_SEAT_CENTS = {
    ("starter", "month"): 1200,
    ("starter", "year"): 12000,
    ("starter", "week"): 300,
    ("team", "month"): 2900,
    ("team", "year"): 29000,
    ("team", "week"): 700,
    ("business", "month"): 5900,
    ("business", "year"): 59000,
    ("business", "week"): 1400,
}
MONTHS = {"month": Fraction(1), "year": Fraction(12), "week": Fraction(12, 52)}
# Status wanted -> what localstripe can give (it has no `unpaid`).
LOCALSTRIPE_STATUS = {"unpaid": "past_due"}
# Wanted status by user id modulo 20: mostly active, and every status localstripe can produce.
STATUS_CYCLE = (["active"] * 11) + [
    "past_due",
    "past_due",
    "unpaid",
    "canceled",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "active",
    "active",
]
INTERVAL_CYCLE = ("month", "month", "year", "month", "week", "month", "year")
N_PAYING = 300
GHOSTS = range(291, 301)  # paying in Stripe, but no such user in the app (deleted accounts)
T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)


def _demo_users() -> list[DemoUser]:
    users = []
    for user_id in range(1, N_PAYING + 21):
        paying = user_id <= N_PAYING
        users.append(
            DemoUser(
                id=user_id,
                email=f"user{user_id}@example.com",
                name=f"User {user_id}" if user_id % 7 else None,
                created_at=T0 - timedelta(days=user_id % 60 + 1),
                persona="steady",
                plan=("starter", "team", "business")[user_id % 3] if paying else None,
                billing_interval=INTERVAL_CYCLE[user_id % len(INTERVAL_CYCLE)] if paying else None,
                quantity=1 + user_id % 5,
                subscription_status=STATUS_CYCLE[user_id % 20] if paying else None,
            )
        )
    return users


def _expected_mrr(user: DemoUser, status: str) -> int:
    if status not in ("active", "past_due"):
        return 0
    monthly = Fraction(PER_SEAT_CENTS[(user.plan, user.billing_interval)] * user.quantity) / MONTHS[user.billing_interval]
    return math.floor(monthly + Fraction(1, 2))


@pytest.fixture(scope="module")
def localstripe():
    with LocalStripe() as server:
        yield server


@pytest.fixture(scope="module")
def seeded(localstripe):
    """~300 subscriptions made once per module; extra customers exercise the mapping corner cases."""
    localstripe.reset()
    client = stripe.StripeClient(LOCALSTRIPE_API_KEY, base_addresses={"api": localstripe.api_base})
    users = _demo_users()
    result = seed_demo_stripe(client, users)
    by_id = {user.id: user for user in users}
    paying = [user for user in users if user.plan]
    # Two customers made by hand: a non-numeric metadata user_id matching nobody, and a customer whose
    # metadata names one user while another user's row carries its id (the row wins).
    card = {"object": "card", "number": "4242424242424242", "exp_month": 12, "exp_year": 2035, "cvc": "123"}
    stray = client.v1.customers.create(
        params={"email": "nobody@example.org", "metadata": {"user_id": "not-a-number"}, "source": card}
    )
    stray_sub = client.v1.subscriptions.create(params={"customer": stray.id, "items": [{"plan": "team-month", "quantity": 2}]})
    linked_user = next(
        u
        for u in paying
        if result["mapping_paths"][u.id] == "email" and u.id not in GHOSTS and result["statuses"][u.id] == "active"
    )
    other_user = next(u for u in paying if result["mapping_paths"][u.id] == "metadata" and u.id not in GHOSTS)
    contested = client.v1.customers.create(
        params={"email": "contested@example.org", "metadata": {"user_id": str(other_user.id)}, "source": card}
    )
    contested_sub = client.v1.subscriptions.create(
        params={"customer": contested.id, "items": [{"plan": "business-year", "quantity": 1}]}
    )
    return {
        "client": client,
        "users": users,
        "by_id": by_id,
        "paying": paying,
        "result": result,
        "stray_sub": stray_sub.id,
        "contested_sub": contested_sub.id,
        "contested_customer": contested.id,
        "linked_user": linked_user.id,
        "other_user": other_user.id,
    }


def _load_app_users(app_db: AppDatabase, seeded: dict) -> dict:
    """Write the app's users table and return the ambiguous-email user ids, as the expectations need them."""
    result = seeded["result"]
    paying_email_users = [
        u
        for u in seeded["paying"]
        if result["mapping_paths"][u.id] == "email" and u.id not in GHOSTS and u.id != seeded["linked_user"]
    ]
    ambiguous = paying_email_users[0].id  # a second user with the same email, different case
    upper_case = paying_email_users[1].id  # stored upper-case in the app: still matches
    stale = next(u.id for u in seeded["paying"] if result["mapping_paths"][u.id] == "metadata" and u.id not in GHOSTS)
    rows = []
    for user in seeded["users"]:
        if user.id in GHOSTS:
            continue
        customer = result["stripe_customer_ids"].get(user.id)
        if user.id == stale:
            customer = "cus_stale_0000"  # an old id Stripe no longer knows: metadata still maps it
        if user.id == seeded["linked_user"]:
            customer = seeded["contested_customer"]
        email = user.email.upper() if user.id == upper_case else user.email
        rows.append({"id": user.id, "email": email, "name": user.name, "created_at": user.created_at, "customer": customer})
    rows.append({"id": 10_000, "email": f"USER{ambiguous}@EXAMPLE.COM", "name": None, "created_at": T0, "customer": None})
    with app_db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO users (id, email, name, created_at, stripe_customer_id) "
                "VALUES (:id, :email, :name, :created_at, :customer)"
            ),
            rows,
        )
    return {"ambiguous": ambiguous, "upper_case": upper_case, "stale": stale}


def _expectations(seeded: dict, special: dict) -> dict[str, dict]:
    """Expected row per subscription id, derived from what the test asked Stripe for."""
    result = seeded["result"]
    expected = {}
    for user in seeded["paying"]:
        wanted = user.subscription_status
        status = LOCALSTRIPE_STATUS.get(wanted, wanted)
        path = result["mapping_paths"][user.id]
        user_id, mapped_by = user.id, path
        if user.id in GHOSTS or user.id == special["ambiguous"]:
            user_id, mapped_by = None, None
        elif user.id == seeded["linked_user"]:
            mapped_by = "email"  # its row carries the contested customer's id, its own customer has no metadata
        expected[result["subscription_ids"][user.id]] = {
            "user_id": user_id,
            "mapped_by": mapped_by,
            "status": status,
            "mrr_cents": _expected_mrr(user, status),
            "plan_name": user.plan,
            "billing_interval": user.billing_interval,
            "quantity": user.quantity,
            "cancel_at_period_end": user.id in result["cancel_at_period_end"],
        }
    expected[seeded["stray_sub"]] = {
        "user_id": None,
        "mapped_by": None,
        "status": "active",
        "mrr_cents": 2 * 2900,
        "plan_name": "team",
        "billing_interval": "month",
        "quantity": 2,
        "cancel_at_period_end": False,
    }
    expected[seeded["contested_sub"]] = {
        "user_id": seeded["linked_user"],
        "mapped_by": "stripe_customer_id",
        "status": "active",
        "mrr_cents": math.floor(Fraction(59000, 12) + Fraction(1, 2)),
        "plan_name": "business",
        "billing_interval": "year",
        "quantity": 1,
        "cancel_at_period_end": False,
    }
    return expected


def _snapshot(app_db: AppDatabase) -> dict[str, dict]:
    rows = app_db.fetch_all("SELECT * FROM {rs}.stripe_subscriptions")
    return {row.subscription_id: dict(row._mapping) for row in rows}


def _resource(api_base: str, **kwargs) -> StripeResource:
    return StripeResource(api_key=kwargs.pop("api_key", LOCALSTRIPE_API_KEY), api_base=api_base, **kwargs)


def test_snapshot_maps_users_counts_mrr_and_replaces(app_db, seeded, localstripe, instance):
    special = _load_app_users(app_db, seeded)
    expected = _expectations(seeded, special)
    result = seeded["result"]
    # The fixture population covers what the asset must handle.
    assert len(expected) > 250
    assert set(result["by_status"]) == {"active", "past_due", "canceled", "incomplete", "incomplete_expired"}
    assert result["cancel_at_period_end"]
    assert set(result["status_substitutions"]) == {u.id for u in seeded["paying"] if u.subscription_status == "unpaid"}
    assert {u.billing_interval for u in seeded["paying"]} == {"month", "year", "week"}
    assert {result["mapping_paths"][u.id] for u in seeded["paying"]} == {"stripe_customer_id", "metadata", "email"}

    resources = {"app_db": app_db, "stripe": _resource(localstripe.api_base)}
    with clock.frozen_at(T0):
        run = materialize([stripe_subscriptions], resources=resources, instance=instance)
    assert run.success
    snapshot = _snapshot(app_db)
    assert set(snapshot) == set(expected)
    for sub_id, want in expected.items():
        got = snapshot[sub_id]
        assert {key: got[key] for key in want} == want, sub_id
        assert got["snapshot_at"] == T0
        assert got["current_period_end"] is not None
        assert got["currency"] == "usd"
        if got["status"] == "canceled":
            assert got["ended_at"] is not None
        else:
            assert got["ended_at"] is None
    assert snapshot[result["subscription_ids"][special["upper_case"]]]["mapped_by"] == "email"
    assert snapshot[result["subscription_ids"][special["stale"]]]["mapped_by"] == "metadata"
    assert {row["product_name"] for row in snapshot.values()} == {"Starter", "Team", "Business"}

    metadata = run.asset_materializations_for_node("stripe_subscriptions")[0].metadata
    total = sum(want["mrr_cents"] for want in expected.values())
    assert total > 0
    assert metadata["mrr_cents"].value == total
    assert metadata["rows"].value == len(expected)
    assert metadata["pages"].value == math.ceil(len(expected) / 100) >= 3
    unmapped = {sub_id for sub_id, want in expected.items() if want["user_id"] is None}
    assert metadata["unmapped_subscriptions"].value == len(unmapped) == len(GHOSTS) + 2
    assert metadata["unmapped_customers"].value == len(unmapped)  # one subscription per customer here
    want_paths = {}
    for want in expected.values():
        key = want["mapped_by"] or "unmapped"
        want_paths[key] = want_paths.get(key, 0) + 1
    assert metadata["mapped_by"].value == want_paths
    want_status = {}
    for want in expected.values():
        want_status[want["status"]] = want_status.get(want["status"], 0) + 1
    assert metadata["by_status"].value == want_status
    assert "| status |" in metadata["preview"].value
    assert LOCALSTRIPE_API_KEY not in str({key: value.value for key, value in metadata.items()})

    # Re-materialize after a cancellation: same subscriptions, one row each, the canceled one changed.
    victim_user = next(u for u in seeded["paying"] if result["statuses"][u.id] == "active" and u.id not in GHOSTS)
    victim = result["subscription_ids"][victim_user.id]
    seeded["client"].v1.subscriptions.cancel(victim)
    with clock.frozen_at(T0 + timedelta(hours=1)):
        rerun = materialize([stripe_subscriptions], resources=resources, instance=instance)
    assert rerun.success
    again = _snapshot(app_db)
    assert set(again) == set(expected)
    assert app_db.scalar("SELECT count(*) FROM {rs}.stripe_subscriptions") == len(expected)
    assert again[victim]["status"] == "canceled" and again[victim]["mrr_cents"] == 0
    assert again[victim]["ended_at"] is not None
    assert {row["snapshot_at"] for row in again.values()} == {T0 + timedelta(hours=1)}
    new_metadata = rerun.asset_materializations_for_node("stripe_subscriptions")[0].metadata
    assert new_metadata["mrr_cents"].value == total - expected[victim]["mrr_cents"]
    assert new_metadata["previous_rows"].value == len(expected)


def _previous_snapshot(app_db: AppDatabase, fake: FakeStripe) -> dict[str, dict]:
    with clock.frozen_at(T0), build_asset_context() as context:
        stripe_subscriptions(context=context, app_db=app_db, stripe=_resource(fake.api_base, max_network_retries=0))
    snapshot = _snapshot(app_db)
    assert len(snapshot) == len(fake.subscriptions)
    return snapshot


def test_stripe_500_mid_listing_fails_after_retries_and_keeps_previous_snapshot(app_db):
    with FakeStripe(n_subscriptions=150) as fake:
        before = _previous_snapshot(app_db, fake)
        # The newer API shape went through the whole pipeline: period end from the item.
        assert {row["current_period_end"] for row in before.values()} == {datetime.fromtimestamp(PERIOD_END, tz=UTC)}
        assert sum(row["mrr_cents"] for row in before.values()) == 150 * 1000
        fake.fail_after_pages = 1
        fake.requests.clear()
        fake.authorization_headers.clear()
        with clock.frozen_at(T0 + timedelta(days=1)), build_asset_context() as context, pytest.raises(Failure) as failure:
            stripe_subscriptions(
                context=context,
                app_db=app_db,
                stripe=_resource(fake.api_base, max_network_retries=2, api_key="sk_test_secret_500"),
            )
        second_page = f"/v1/subscriptions?starting_after={fake.subscriptions[99]['id']}"
        assert fake.requests[second_page] == 3  # the first try and two SDK retries
        assert all(header == "Bearer sk_test_secret_500" for header in fake.authorization_headers)
    message = failure.value.description
    assert "HTTP 500" in message and "after 2 retries" in message and "page 2" in message
    assert "Nothing was written" in message
    assert failure.value.allow_retries is not False  # transient: the asset's retry policy may try again
    assert "sk_test_secret_500" not in message and "sk_test" not in message
    assert _snapshot(app_db) == before


def test_unreachable_stripe_fails_clearly_and_keeps_previous_snapshot(app_db):
    with FakeStripe(n_subscriptions=3) as fake:
        before = _previous_snapshot(app_db, fake)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with build_asset_context() as context, pytest.raises(Failure) as failure:
        stripe_subscriptions(
            context=context, app_db=app_db, stripe=_resource(closed, max_network_retries=1, api_key="sk_test_secret_down")
        )
    message = failure.value.description
    assert "Could not reach the Stripe API" in message and closed in message and "after 1 retry" in message
    assert "sk_test_secret_down" not in message
    assert _snapshot(app_db) == before


def test_rejected_or_missing_key_fails_without_retries(app_db, localstripe, instance):
    # localstripe rejects anything not shaped like a secret key with 401, as Stripe does a revoked key.
    run = materialize(
        [stripe_subscriptions],
        resources={"app_db": app_db, "stripe": _resource(localstripe.api_base, api_key="rk_wrong_secret_value")},
        instance=instance,
        raise_on_error=False,
    )
    assert not run.success
    failures = [event for event in run.all_events if event.event_type_value == "STEP_FAILURE"]
    assert len(failures) == 1  # allow_retries=False: the retry policy does not repeat a rejected key
    text = str(failures[0].event_specific_data.error)
    assert "rejected the API key (401)" in text and "STRIPE_API_KEY" in text
    assert "rk_wrong_secret_value" not in text
    assert not any(event.event_type_value == "STEP_UP_FOR_RETRY" for event in run.all_events)

    with build_asset_context() as context, pytest.raises(Failure) as failure:
        stripe_subscriptions(context=context, app_db=app_db, stripe=_resource(localstripe.api_base, api_key="  "))
    assert "STRIPE_API_KEY" in failure.value.description and failure.value.allow_retries is False
