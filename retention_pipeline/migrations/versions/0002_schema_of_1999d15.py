"""From release 9c71876's schema to the one main installed at 1999d15 (the last install without versions).

Every statement is idempotent, because an install made between the two releases (no version table,
part of this already there) is upgraded through it as well. Frozen: add a new revision instead.

Revision ID: 0002
Revises: 0001
"""

from retention_pipeline.migrations import run_ddl

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_ddl(ACTIVITY + BILLING + OUTREACH + OUTCOMES)


def downgrade() -> None:
    raise NotImplementedError("not undone: it would drop the ledger's dry-run previews and revenue history")


ACTIVITY = """
-- The trigger's errors used to be counted here; the trigger now cannot fail (activity/trigger.py). A
-- trigger function of an older release still names it only in its own exception handler.
DROP TABLE IF EXISTS {rs}.trigger_health;
CREATE TABLE IF NOT EXISTS {rs}.activity_queue (
    user_id          bigint,
    first_at         timestamptz,
    last_at          timestamptz,
    last_event_id    bigint,
    last_event_type  text,
    events           bigint
) WITH (vacuum_truncate = false);
CREATE TABLE IF NOT EXISTS {rs}.trigger_event_counts (
    bucket_start  timestamptz PRIMARY KEY,
    events        bigint NOT NULL
);
"""

BILLING = """
CREATE TABLE IF NOT EXISTS {rs}.stripe_subscription_history (
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
    PRIMARY KEY (snapshot_date, subscription_id)
);
CREATE INDEX IF NOT EXISTS stripe_subscription_history_user ON {rs}.stripe_subscription_history (user_id, snapshot_date);
"""

OUTREACH = """
CREATE OR REPLACE VIEW {rs}.assignments AS
SELECT id AS send_id, campaign, step, user_id, episode_start, as_of_date, variant, status, segment_reason, mrr_cents,
       status <> 'holdout' AS treated, status = 'sent' AS delivered, COALESCE(sent_at, created_at) AS reference_at
FROM {rs}.email_sends
WHERE status IN ('pending', 'sent', 'failed', 'unknown', 'holdout');
CREATE TABLE IF NOT EXISTS {rs}.email_dry_runs (
    campaign        text NOT NULL,
    step            smallint NOT NULL,
    user_id         bigint NOT NULL,
    as_of_date      date NOT NULL,
    episode_start   date NOT NULL,
    variant         text NOT NULL,
    status          text NOT NULL CHECK (status IN ('would_send', 'would_hold_out')),
    email           text,
    segment_reason  text,
    mrr_cents       bigint NOT NULL DEFAULT 0,
    subject         text,
    payload         jsonb,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (campaign, as_of_date, step, user_id)
);
-- Release 9c71876 kept dry runs in the ledger (status 'dry_run', plus 'holdout' rows written by the same
-- plan step, recognisable by the same campaign, step, day and created_at). They move to the preview
-- table, freeing the ledger keys they held for the live run.
WITH dry AS (
    DELETE FROM {rs}.email_sends s
    WHERE s.status = 'dry_run'
       OR (s.status = 'holdout' AND EXISTS (
              SELECT 1 FROM {rs}.email_sends d
              WHERE d.status = 'dry_run' AND d.campaign = s.campaign AND d.step = s.step
                AND d.as_of_date = s.as_of_date AND d.created_at = s.created_at))
    RETURNING *
)
INSERT INTO {rs}.email_dry_runs (campaign, step, user_id, as_of_date, episode_start, variant, status, email,
    segment_reason, mrr_cents, subject, payload, created_at)
SELECT campaign, step, user_id, as_of_date, episode_start, variant,
       CASE WHEN status = 'dry_run' THEN 'would_send' ELSE 'would_hold_out' END, email, segment_reason,
       mrr_cents, subject, payload, created_at
FROM dry
ON CONFLICT DO NOTHING;
ALTER TABLE {rs}.email_sends ADD COLUMN IF NOT EXISTS unsubscribe_ref text;
CREATE UNIQUE INDEX IF NOT EXISTS email_sends_unsubscribe_ref ON {rs}.email_sends (unsubscribe_ref)
    WHERE unsubscribe_ref IS NOT NULL;
"""

OUTCOMES = """
ALTER TABLE {rs}.reengagement_outcomes ADD COLUMN IF NOT EXISTS delivered boolean;
ALTER TABLE {rs}.campaign_performance ADD COLUMN IF NOT EXISTS per_protocol_treated integer;
ALTER TABLE {rs}.campaign_performance ADD COLUMN IF NOT EXISTS per_protocol_treated_returned integer;
ALTER TABLE {rs}.campaign_performance ADD COLUMN IF NOT EXISTS per_protocol_lift double precision;
ALTER TABLE {rs}.campaign_performance ADD COLUMN IF NOT EXISTS adjusted_lift double precision;
ALTER TABLE {rs}.campaign_performance ADD COLUMN IF NOT EXISTS adjusted_ci_low double precision;
ALTER TABLE {rs}.campaign_performance ADD COLUMN IF NOT EXISTS adjusted_ci_high double precision;
ALTER TABLE {rs}.allocation_decisions ADD COLUMN IF NOT EXISTS decision text NOT NULL DEFAULT 'explore';
CREATE TABLE IF NOT EXISTS {rs}.campaign_success (
    campaign     text PRIMARY KEY,
    event_types  text[],
    min_events   integer NOT NULL CHECK (min_events >= 1),
    updated_at   timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {rs}.campaign_revenue (
    as_of_date                      date NOT NULL,
    campaign                        text NOT NULL,
    step                            smallint NOT NULL,
    horizon_days                    integer NOT NULL,
    treated                         integer NOT NULL,
    treated_kept                    integer NOT NULL,
    holdout                         integer NOT NULL,
    holdout_kept                    integer NOT NULL,
    awaiting                        integer NOT NULL,
    mrr_at_risk_cents               bigint NOT NULL,
    retention_lift                  double precision,
    retention_lift_ci_low           double precision,
    retention_lift_ci_high          double precision,
    incremental_mrr_cents           double precision,
    incremental_mrr_ci_low_cents    double precision,
    incremental_mrr_ci_high_cents   double precision,
    PRIMARY KEY (as_of_date, campaign, step, horizon_days)
);
"""
