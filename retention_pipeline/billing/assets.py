"""A snapshot of every Stripe subscription, mapped to the app's users, with MRR per subscription."""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at definition time.

from zoneinfo import ZoneInfo

import sqlalchemy as sa
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from retention_pipeline import clock
from retention_pipeline.billing.normalize import MRR_STATUSES, normalize_subscription
from retention_pipeline.billing.resource import StripeResource
from retention_pipeline.resources import AppDatabase
from retention_pipeline.retry import clear_database_errors, database_retry_policy
from retention_pipeline.schema import require_current_schema
from retention_pipeline.settings import PROJECT_TIMEZONE

__all__ = ["stripe_subscriptions", "normalize_subscription"]

_LOAD_COLUMNS = (
    "subscription_id",
    "customer_id",
    "customer_email",
    "customer_user_id",
    "status",
    "plan_name",
    "product_name",
    "billing_interval",
    "interval_count",
    "quantity",
    "mrr_cents",
    "currency",
    "cancel_at_period_end",
    "current_period_end",
    "canceled_at",
    "ended_at",
    "trial_end",
)
_LOAD_TABLE = sa.table("stripe_subscriptions_load", *(sa.column(name) for name in _LOAD_COLUMNS))

CREATE_LOAD_SQL = """
CREATE TEMP TABLE stripe_subscriptions_load (
    subscription_id text PRIMARY KEY, customer_id text NOT NULL, customer_email text, customer_user_id text,
    status text NOT NULL, plan_name text, product_name text, billing_interval text, interval_count integer,
    quantity integer NOT NULL, mrr_cents bigint NOT NULL, currency text, cancel_at_period_end boolean NOT NULL,
    current_period_end timestamptz, canceled_at timestamptz, ended_at timestamptz, trial_end timestamptz
) ON COMMIT DROP
"""

# Each Stripe customer maps to at most one user: by users.stripe_customer_id, else by the customer's
# metadata.user_id (an existing user id), else by a unique case-insensitive email. An identifier that
# matches several users is ambiguous and maps nobody (the next rule is tried).
REPLACE_SQL = r"""
DELETE FROM {rs}.stripe_subscriptions;
INSERT INTO {rs}.stripe_subscriptions (subscription_id, customer_id, user_id, mapped_by, status, plan_name,
    product_name, billing_interval, interval_count, quantity, mrr_cents, currency, cancel_at_period_end,
    current_period_end, canceled_at, ended_at, trial_end, snapshot_at)
WITH customers AS (
    SELECT DISTINCT ON (customer_id) customer_id, lower(customer_email) AS email,
           CASE WHEN customer_user_id ~ '^\s*[0-9]{1,18}\s*$' THEN btrim(customer_user_id)::bigint END AS metadata_user_id
    FROM stripe_subscriptions_load
    ORDER BY customer_id
), by_customer_id AS (
    SELECT u.stripe_customer_id AS customer_id, min(u.id) AS user_id
    FROM {rs}.source_users u
    WHERE u.stripe_customer_id IN (SELECT customer_id FROM customers)
    GROUP BY u.stripe_customer_id HAVING count(*) = 1
), by_metadata AS (
    SELECT u.id AS user_id
    FROM {rs}.source_users u
    WHERE u.id IN (SELECT metadata_user_id FROM customers)
    GROUP BY u.id HAVING count(*) = 1
), by_email AS (
    SELECT lower(u.email) AS email, min(u.id) AS user_id
    FROM {rs}.source_users u
    WHERE lower(u.email) IN (SELECT email FROM customers)
    GROUP BY lower(u.email) HAVING count(*) = 1
), mapped AS (
    SELECT c.customer_id,
           COALESCE(bc.user_id, bm.user_id, be.user_id) AS user_id,
           CASE WHEN bc.user_id IS NOT NULL THEN 'stripe_customer_id'
                WHEN bm.user_id IS NOT NULL THEN 'metadata'
                WHEN be.user_id IS NOT NULL THEN 'email' END AS mapped_by
    FROM customers c
    LEFT JOIN by_customer_id bc ON bc.customer_id = c.customer_id
    LEFT JOIN by_metadata bm ON bm.user_id = c.metadata_user_id
    LEFT JOIN by_email be ON be.email = c.email
)
SELECT l.subscription_id, l.customer_id, m.user_id, m.mapped_by, l.status, l.plan_name, l.product_name,
       l.billing_interval, l.interval_count, l.quantity, l.mrr_cents, l.currency, l.cancel_at_period_end,
       l.current_period_end, l.canceled_at, l.ended_at, l.trial_end, :snapshot_at
FROM stripe_subscriptions_load l
JOIN mapped m ON m.customer_id = l.customer_id;
"""

KEEP_HISTORY_SQL = """
DELETE FROM {rs}.stripe_subscription_history WHERE snapshot_date = :snapshot_date;
INSERT INTO {rs}.stripe_subscription_history (snapshot_date, subscription_id, customer_id, user_id, status, plan_name,
    mrr_cents, currency, cancel_at_period_end, canceled_at, ended_at, snapshot_at, product_name, trial_end)
SELECT :snapshot_date, subscription_id, customer_id, user_id, status, plan_name, mrr_cents, currency, cancel_at_period_end,
       canceled_at, ended_at, snapshot_at, product_name, trial_end
FROM {rs}.stripe_subscriptions;
INSERT INTO {rs}.stripe_snapshot_days AS d (snapshot_date, subscriptions, snapshot_at)
SELECT :snapshot_date, count(*), :snapshot_at FROM {rs}.stripe_subscriptions
ON CONFLICT (snapshot_date) DO UPDATE SET subscriptions = EXCLUDED.subscriptions, snapshot_at = EXCLUDED.snapshot_at;
"""

HISTORY_SUMMARY_SQL = """
SELECT count(DISTINCT snapshot_date) AS days, min(snapshot_date) AS first_day FROM {rs}.stripe_subscription_history
"""

STATUS_SUMMARY_SQL = """
SELECT status, count(*) AS subscriptions, COALESCE(sum(mrr_cents), 0) AS mrr_cents,
       count(*) FILTER (WHERE cancel_at_period_end) AS cancel_at_period_end
FROM {rs}.stripe_subscriptions GROUP BY status ORDER BY count(*) DESC, status
"""

MAPPING_SUMMARY_SQL = """
SELECT COALESCE(mapped_by, 'unmapped') AS mapped_by, count(DISTINCT customer_id) AS customers, count(*) AS subscriptions
FROM {rs}.stripe_subscriptions GROUP BY 1 ORDER BY 1
"""

CURRENCY_SUMMARY_SQL = """
SELECT COALESCE(currency, '?') AS currency, sum(mrr_cents) AS mrr_cents
FROM {rs}.stripe_subscriptions WHERE mrr_cents > 0 GROUP BY 1 ORDER BY 1
"""

TOP_SQL = """
SELECT subscription_id, customer_id, user_id, mapped_by, status, plan_name, billing_interval, interval_count, quantity,
       mrr_cents, cancel_at_period_end
FROM {rs}.stripe_subscriptions ORDER BY mrr_cents DESC, subscription_id LIMIT 10
"""


@asset(
    group_name="billing",
    kinds={"stripe", "postgres"},
    owners=["team:data"],
    retry_policy=database_retry_policy,
)
def stripe_subscriptions(context: AssetExecutionContext, app_db: AppDatabase, stripe: StripeResource) -> MaterializeResult:
    """Every Stripe subscription (all statuses), one row each, with its plan, seats, MRR and app user.

    Written to `retention.stripe_subscriptions`. All pages are read from Stripe first, then the table is
    replaced in one transaction, so a Stripe outage mid-listing leaves the previous snapshot intact.
    MRR counts active and past_due subscriptions only, normalized to a month. Customers are mapped to
    users by users.stripe_customer_id, else customer.metadata.user_id, else a unique email; customers
    that map to no user are kept (user_id NULL) and counted. Each run also keeps the snapshot as the
    day's rows of `retention.stripe_subscription_history` (a re-run the same day replaces them)."""
    products, product_pages = stripe.list_all("products")
    product_names = {product["id"]: product.get("name") for product in products if product.get("name")}
    subscriptions, pages = stripe.list_all("subscriptions", {"status": "all", "expand": ["data.customer"]})
    # Keyed by id: a subscription seen twice (it changed while the pages were read) is stored once.
    normalized = (normalize_subscription(subscription, product_names) for subscription in subscriptions)
    rows = list({row["subscription_id"]: row for row in normalized}.values())
    context.log.info(
        f"Read {len(rows)} subscriptions in {pages} page(s) and {len(products)} products from {stripe.display_base}."
    )

    snapshot_at = clock.now()
    snapshot_date = snapshot_at.astimezone(ZoneInfo(PROJECT_TIMEZONE)).date()
    require_current_schema(app_db)
    with clear_database_errors(app_db.statement_timeout_seconds), app_db.begin() as conn:
        previous_rows = conn.execute(sa.text(app_db.render("SELECT count(*) FROM {rs}.stripe_subscriptions"))).scalar()
        conn.execute(sa.text(CREATE_LOAD_SQL))
        if rows:
            conn.execute(sa.insert(_LOAD_TABLE), [{name: row[name] for name in _LOAD_COLUMNS} for row in rows])
        conn.execute(sa.text(app_db.render(REPLACE_SQL)), {"snapshot_at": snapshot_at})
        conn.execute(sa.text(app_db.render(KEEP_HISTORY_SQL)), {"snapshot_date": snapshot_date, "snapshot_at": snapshot_at})
        history = conn.execute(sa.text(app_db.render(HISTORY_SUMMARY_SQL))).mappings().one()
        by_status = conn.execute(sa.text(app_db.render(STATUS_SUMMARY_SQL))).mappings().all()
        mapping = conn.execute(sa.text(app_db.render(MAPPING_SUMMARY_SQL))).mappings().all()
        currencies = conn.execute(sa.text(app_db.render(CURRENCY_SUMMARY_SQL))).mappings().all()
        top = conn.execute(sa.text(app_db.render(TOP_SQL))).mappings().all()

    total_mrr = int(sum(row["mrr_cents"] for row in by_status))
    customers_by_path = {row["mapped_by"]: int(row["customers"]) for row in mapping}
    unmapped_customers = customers_by_path.get("unmapped", 0)
    unmapped_subscriptions = next((int(row["subscriptions"]) for row in mapping if row["mapped_by"] == "unmapped"), 0)
    unpriced_items = sum(row["unpriced_items"] for row in rows)
    if unmapped_customers:
        context.log.warning(
            f"{unmapped_customers} Stripe customer(s) ({unmapped_subscriptions} subscriptions) map to no app user: "
            "no users.stripe_customer_id, customer.metadata.user_id or unique email matched. Kept with user_id NULL."
        )
    if unpriced_items:
        context.log.warning(f"{unpriced_items} subscription item(s) have no unit amount (tiered prices): counted as 0 MRR.")
    if len(currencies) > 1:
        context.log.warning(f"MRR spans {len(currencies)} currencies; mrr_cents adds them up, see mrr_cents_by_currency.")

    metadata = {
        "rows": MetadataValue.int(len(rows)),
        "previous_rows": MetadataValue.int(int(previous_rows)),
        "pages": MetadataValue.int(pages),
        "products": MetadataValue.int(len(products)),
        "mrr_cents": MetadataValue.int(total_mrr),
        "mrr": MetadataValue.float(total_mrr / 100.0),
        "mrr_subscriptions": MetadataValue.int(sum(int(r["subscriptions"]) for r in by_status if r["status"] in MRR_STATUSES)),
        "by_status": MetadataValue.json({row["status"]: int(row["subscriptions"]) for row in by_status}),
        "mapped_by": MetadataValue.json(customers_by_path),
        "unmapped_customers": MetadataValue.int(unmapped_customers),
        "unmapped_subscriptions": MetadataValue.int(unmapped_subscriptions),
        "cancel_at_period_end": MetadataValue.int(sum(int(row["cancel_at_period_end"]) for row in by_status)),
        "snapshot_at": MetadataValue.text(snapshot_at.isoformat()),
        "history_date": MetadataValue.text(snapshot_date.isoformat()),
        "history_days": MetadataValue.int(int(history["days"])),
        "stripe_api": MetadataValue.text(stripe.display_base),
        "preview": MetadataValue.md(_preview_markdown(by_status, top)),
    }
    if len(currencies) > 1:
        metadata["mrr_cents_by_currency"] = MetadataValue.json({r["currency"]: int(r["mrr_cents"]) for r in currencies})
    if unpriced_items:
        metadata["unpriced_items"] = MetadataValue.int(unpriced_items)
    return MaterializeResult(metadata=metadata)


def _preview_markdown(by_status, top) -> str:
    lines = ["| status | subscriptions | MRR | cancel at period end |", "|---|---:|---:|---:|"]
    lines += [
        f"| {r['status']} | {r['subscriptions']} | {r['mrr_cents'] / 100:,.2f} | {r['cancel_at_period_end']} |" for r in by_status
    ]
    lines += [
        "",
        "Largest MRR:",
        "",
        "| subscription | customer | user | mapped by | status | plan | interval | seats | MRR |",
        "|---|---|---:|---|---|---|---|---:|---:|",
    ]
    for r in top:
        interval = r["billing_interval"] if (r["interval_count"] or 1) == 1 else f"{r['interval_count']} {r['billing_interval']}"
        lines.append(
            f"| {r['subscription_id']} | {r['customer_id']} | {r['user_id'] if r['user_id'] is not None else '-'} | "
            f"{r['mapped_by'] or '-'} | {r['status']}{' (ending)' if r['cancel_at_period_end'] else ''} | {r['plan_name'] or '-'} | "
            f"{interval or '-'} | {r['quantity']} | {r['mrr_cents'] / 100:,.2f} |"
        )
    return "\n".join(lines)
