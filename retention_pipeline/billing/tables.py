"""Tables of the billing domain, as they are now (see activity/tables.py for how they are installed;
`{rs}` is filled by `AppDatabase.render`)."""

# One row per Stripe subscription (every status, canceled included), replaced as a whole by each
# materialization of `stripe_subscriptions`. mrr_cents is 0 for statuses that do not count as MRR.
BILLING_TABLES_DDL = """
CREATE TABLE {rs}.stripe_subscriptions (
    subscription_id       text PRIMARY KEY,
    customer_id           text NOT NULL,
    user_id               bigint,
    mapped_by             text CHECK (mapped_by IN ('stripe_customer_id', 'metadata', 'email')),
    status                text NOT NULL,
    plan_name             text,
    product_name          text,
    billing_interval      text,
    interval_count        integer,
    quantity              integer NOT NULL,
    mrr_cents             bigint NOT NULL CHECK (mrr_cents >= 0),
    currency              text,
    cancel_at_period_end  boolean NOT NULL,
    current_period_end    timestamptz,
    canceled_at           timestamptz,
    ended_at              timestamptz,
    snapshot_at           timestamptz NOT NULL,
    trial_end             timestamptz,   -- when a trialing subscription's trial ends (audiences: trial ending)
    CHECK ((user_id IS NULL) = (mapped_by IS NULL))
);
CREATE INDEX stripe_subscriptions_user ON {rs}.stripe_subscriptions (user_id);
CREATE INDEX stripe_subscriptions_customer ON {rs}.stripe_subscriptions (customer_id);
-- The snapshot kept per day (the project-timezone date of the clock when it was taken): a later snapshot
-- the same day replaces that day's rows. Revenue kept reads whether a subscription was still running
-- 30 and 60 days after a user's assignment from it; lifecycle campaigns (`audience.from: subscriptions`) read
-- the snapshot dated the morning after their as-of day, and their episodes from the days before.
CREATE TABLE {rs}.stripe_subscription_history (
    snapshot_date         date NOT NULL,
    subscription_id       text NOT NULL,
    customer_id           text NOT NULL,
    user_id               bigint,
    status                text NOT NULL,
    plan_name             text,
    mrr_cents             bigint NOT NULL CHECK (mrr_cents >= 0),
    currency              text,
    cancel_at_period_end  boolean NOT NULL,
    canceled_at           timestamptz,
    ended_at              timestamptz,
    snapshot_at           timestamptz NOT NULL,
    product_name          text,          -- audiences `plans` name products, as dormant_users does
    trial_end             timestamptz,   -- lifecycle audiences: a trial ending within N days of the snapshot's day
    PRIMARY KEY (snapshot_date, subscription_id)
);
CREATE INDEX stripe_subscription_history_user ON {rs}.stripe_subscription_history (user_id, snapshot_date);
-- Every day a snapshot was kept, with how many subscriptions it held: an account without subscriptions still
-- has its snapshot (no history rows), which lifecycle campaigns must tell from a snapshot never taken.
CREATE TABLE {rs}.stripe_snapshot_days (
    snapshot_date  date PRIMARY KEY,
    subscriptions  bigint NOT NULL,
    snapshot_at    timestamptz NOT NULL
);
"""
