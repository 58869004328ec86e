"""The retention schema exactly as release 9c71876 installed it (its schema.py, billing/, outreach/ and
outcomes/tables.py, in that order, verbatim).

On a database without the schema this creates it; on an install made before migrations existed (any
release up to 1999d15, which kept no version) every statement finds its object already there, and
0002 then brings what that release lacked. Frozen: never edit a released revision, add a new one.

Revision ID: 0001
Revises:
"""

from retention_pipeline.migrations import run_ddl

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_ddl(DDL)


def downgrade() -> None:
    raise NotImplementedError("the first revision is not undone: drop the schema instead")


DDL = """
CREATE TABLE IF NOT EXISTS {rs}.user_activity (
    user_id            bigint PRIMARY KEY,
    first_activity_at  timestamptz NOT NULL,
    last_activity_at   timestamptz NOT NULL,
    last_event_id      bigint,
    last_event_type    text,
    event_count        bigint NOT NULL
) WITH (fillfactor = 70);
-- Room on every page for the trigger's updates to stay HOT (no index entry per event, less bloat):
-- pgbench single-row inserts lost 5.8% throughput to the trigger at 70 against 7.8% at 100. Existing
-- tables take it for the pages they fill from now on (no rewrite, no lock against the app's inserts).
ALTER TABLE {rs}.user_activity SET (fillfactor = 70);
CREATE TABLE IF NOT EXISTS {rs}.trigger_health (
    id             smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    failures       bigint NOT NULL DEFAULT 0,
    last_sqlstate  text,
    last_error     text
);
CREATE TABLE IF NOT EXISTS {rs}.daily_activity (
    activity_date        date NOT NULL,
    user_id              bigint NOT NULL,
    event_count          integer NOT NULL CHECK (event_count >= 0),
    distinct_event_types integer NOT NULL CHECK (distinct_event_types >= 0),
    sessions_started     integer NOT NULL CHECK (sessions_started >= 0),
    session_minutes      numeric(12, 2) NOT NULL CHECK (session_minutes >= 0),
    first_event_at       timestamptz,
    last_event_at        timestamptz,
    top_event_type       text,
    PRIMARY KEY (activity_date, user_id)
);
CREATE INDEX IF NOT EXISTS daily_activity_user_date ON {rs}.daily_activity (user_id, activity_date);
CREATE TABLE IF NOT EXISTS {rs}.weekly_segments (
    week_start            date NOT NULL,
    user_id               bigint NOT NULL,
    segment               text NOT NULL,
    previous_segment      text,
    active_days           integer NOT NULL,
    event_count           integer NOT NULL,
    previous_event_count  integer NOT NULL,
    sessions_started      integer NOT NULL,
    session_minutes       numeric(12, 2) NOT NULL,
    last_activity_date    date,
    PRIMARY KEY (week_start, user_id)
);
CREATE TABLE IF NOT EXISTS {rs}.dormant_users (
    as_of_date          date NOT NULL,
    user_id             bigint NOT NULL,
    email               text,
    name                text,
    signed_up_at        timestamptz NOT NULL,
    last_activity_at    timestamptz NOT NULL,
    days_inactive       integer NOT NULL CHECK (days_inactive >= 0),
    reason              text NOT NULL,
    recent_events       integer NOT NULL,
    previous_events     integer NOT NULL,
    last_actions        jsonb NOT NULL,
    subscription_status text NOT NULL,     -- best current Stripe status, 'none' without a subscription
    plan_name           text,
    mrr_cents           bigint NOT NULL,
    cancel_at_period_end boolean NOT NULL,
    targeted            boolean NOT NULL,  -- passes the targeting policy (DormancyThresholds)
    PRIMARY KEY (as_of_date, user_id)
);

CREATE TABLE IF NOT EXISTS {rs}.stripe_subscriptions (
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
    CHECK ((user_id IS NULL) = (mapped_by IS NULL))
);
CREATE INDEX IF NOT EXISTS stripe_subscriptions_user ON {rs}.stripe_subscriptions (user_id);
CREATE INDEX IF NOT EXISTS stripe_subscriptions_customer ON {rs}.stripe_subscriptions (customer_id);

CREATE TABLE IF NOT EXISTS {rs}.email_sends (
    id                   bigserial PRIMARY KEY,
    campaign             text NOT NULL,
    step                 smallint NOT NULL,
    user_id              bigint NOT NULL,
    episode_start        date NOT NULL,
    as_of_date           date NOT NULL,
    variant              text NOT NULL,
    status               text NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'holdout', 'dry_run', 'unknown')),
    email                text,
    segment_reason       text,
    mrr_cents            bigint NOT NULL DEFAULT 0,   -- the user's MRR when the row was written
    subject              text,
    payload              jsonb,
    batch_key            text,
    provider_message_id  text,
    error                text,
    attempts             integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL,
    sent_at              timestamptz,
    -- The database-level guard of "exactly once": one row per user, campaign, step and dormancy
    -- episode, whatever retries, concurrent runs or re-runs do.
    UNIQUE (campaign, step, user_id, episode_start)
);
CREATE INDEX IF NOT EXISTS email_sends_pending ON {rs}.email_sends (batch_key) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS email_sends_user ON {rs}.email_sends (user_id, as_of_date);
CREATE TABLE IF NOT EXISTS {rs}.email_suppressions (
    email       text PRIMARY KEY,          -- lower-cased
    reason      text NOT NULL CHECK (reason IN ('unsubscribed', 'bounced', 'complained', 'manual')),
    source      text NOT NULL,
    detail      text,
    created_at  timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {rs}.email_outbox (
    idempotency_key  text NOT NULL,
    position         smallint NOT NULL,
    message_id       text NOT NULL UNIQUE,
    to_address       text NOT NULL,
    from_address     text NOT NULL,
    subject          text NOT NULL,
    html             text NOT NULL,
    text_body        text NOT NULL,
    headers          jsonb NOT NULL,
    eml_path         text,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (idempotency_key, position)
);
CREATE TABLE IF NOT EXISTS {rs}.webhook_receipts (
    svix_id      text PRIMARY KEY,
    event_type   text NOT NULL,
    received_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS {rs}.reengagement_outcomes (
    send_id            bigint NOT NULL,
    window_days        integer NOT NULL,
    campaign           text NOT NULL,
    step               smallint NOT NULL,
    variant            text NOT NULL,
    treated            boolean NOT NULL,      -- false: holdout member, never emailed
    segment_reason     text,
    user_id            bigint NOT NULL,
    mrr_cents          bigint NOT NULL,
    reference_at       timestamptz NOT NULL,  -- the send (or, for holdout, when it would have been sent)
    window_end         timestamptz NOT NULL,
    returned           boolean NOT NULL,
    first_returned_at  timestamptz,
    events             integer NOT NULL,
    active_days        integer NOT NULL,
    final              boolean NOT NULL,      -- the window has closed: this row never changes again
    evaluated_as_of    date NOT NULL,
    PRIMARY KEY (send_id, window_days)
);
CREATE TABLE IF NOT EXISTS {rs}.campaign_performance (
    as_of_date         date NOT NULL,
    campaign           text NOT NULL,
    step               smallint NOT NULL,
    variant            text NOT NULL,         -- a template variant, or 'all'
    segment            text NOT NULL,         -- dormancy reason, or 'all'
    window_days        integer NOT NULL,
    treated            integer NOT NULL,
    treated_returned   integer NOT NULL,
    holdout            integer NOT NULL,
    holdout_returned   integer NOT NULL,
    treated_rate       double precision,
    holdout_rate       double precision,
    lift               double precision,      -- treated_rate - holdout_rate
    lift_ci_low        double precision,      -- 95%, Newcombe hybrid score interval
    lift_ci_high       double precision,
    p_value            double precision,      -- two-sided score test of equal rates
    recovered_mrr_cents bigint NOT NULL,      -- MRR of treated paying users who returned
    PRIMARY KEY (as_of_date, campaign, step, variant, segment, window_days)
);
CREATE TABLE IF NOT EXISTS {rs}.allocation_decisions (
    as_of_date   date NOT NULL,
    campaign     text NOT NULL,
    step         smallint NOT NULL,
    variant      text NOT NULL,
    share        double precision NOT NULL,
    treated      integer NOT NULL,
    returned     integer NOT NULL,
    p_best       double precision,
    step_paused  boolean NOT NULL,
    reason       text NOT NULL,
    decided_at   timestamptz NOT NULL,
    PRIMARY KEY (as_of_date, campaign, step, variant)
);
"""
