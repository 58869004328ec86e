"""The demo's wiring end to end: demo population -> localstripe seed -> users.stripe_customer_id -> asset."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa
import stripe
from dagster import materialize

from retention_pipeline.billing.assets import stripe_subscriptions
from retention_pipeline.billing.resource import StripeResource
from retention_pipeline.local import demo_data
from retention_pipeline.local.localstripe import LOCALSTRIPE_API_KEY, LocalStripe
from retention_pipeline.local.stripe_seed import seed_demo_stripe


def test_demo_population_maps_every_paying_user_by_its_intended_path(app_db, pg_conn, instance):
    population = demo_data.generate(seed=7, as_of=date(2026, 11, 19), n_users=300, days=demo_data.MIN_DAYS)
    demo_data.load(pg_conn, population)
    pg_conn.commit()
    with LocalStripe() as server:
        client = stripe.StripeClient(LOCALSTRIPE_API_KEY, base_addresses={"api": server.api_base})
        seeded = seed_demo_stripe(client, population.users)
        # What the demo must do after seeding: demo_data wrote made-up customer ids for every paying
        # user; replace them with the real ones for ~70% and clear the rest.
        with app_db.begin() as conn:
            conn.execute(sa.text("UPDATE users SET stripe_customer_id = NULL"))
            conn.execute(
                sa.text("UPDATE users SET stripe_customer_id = :customer WHERE id = :user_id"),
                [{"user_id": uid, "customer": cid} for uid, cid in seeded["stripe_customer_ids"].items()],
            )
        run = materialize(
            [stripe_subscriptions],
            instance=instance,
            resources={"app_db": app_db, "stripe": StripeResource(api_key=LOCALSTRIPE_API_KEY, api_base=server.api_base)},
        )
    assert run.success
    paying = [user for user in population.users if user.plan]
    rows = {row.user_id: row for row in app_db.fetch_all("SELECT * FROM {rs}.stripe_subscriptions")}
    assert len(rows) == len(paying) > 50
    assert {uid: rows[uid].mapped_by for uid in rows} == seeded["mapping_paths"]
    assert {uid: rows[uid].status for uid in rows} == seeded["statuses"]
    assert {uid: (rows[uid].plan_name, rows[uid].billing_interval, rows[uid].quantity) for uid in rows} == {
        user.id: (user.plan, user.billing_interval, user.quantity) for user in paying
    }
    metadata = run.asset_materializations_for_node("stripe_subscriptions")[0].metadata
    assert metadata["unmapped_customers"].value == 0
    assert set(metadata["mapped_by"].value) == {"stripe_customer_id", "metadata", "email"}
