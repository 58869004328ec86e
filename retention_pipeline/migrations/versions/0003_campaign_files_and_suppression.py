"""Campaign files and suppression after assignment: Stripe trial ends, topic unsubscribes, the link's topic,
and suppressed assignments recorded in both arms (issues 16 and 18).

Frozen: add a new revision instead.

Revision ID: 0003
Revises: 0002
"""

from retention_pipeline.migrations import run_ddl

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_ddl(BILLING + OUTREACH)


def downgrade() -> None:
    raise NotImplementedError("not undone: it would drop topic unsubscribes and the suppression of recorded assignments")


BILLING = """
ALTER TABLE {rs}.stripe_subscriptions ADD COLUMN IF NOT EXISTS trial_end timestamptz;
"""

OUTREACH = """
ALTER TABLE {rs}.email_sends ADD COLUMN IF NOT EXISTS unsubscribe_topic text;
ALTER TABLE {rs}.email_sends ADD COLUMN IF NOT EXISTS suppression text;
ALTER TABLE {rs}.email_sends DROP CONSTRAINT IF EXISTS email_sends_status_check;
ALTER TABLE {rs}.email_sends ADD CONSTRAINT email_sends_status_check
    CHECK (status IN ('pending', 'sent', 'failed', 'holdout', 'dry_run', 'unknown', 'suppressed'));
CREATE OR REPLACE VIEW {rs}.assignments AS
SELECT id AS send_id, campaign, step, user_id, episode_start, as_of_date, variant, status, segment_reason, mrr_cents,
       status <> 'holdout' AS treated, status = 'sent' AS delivered, COALESCE(sent_at, created_at) AS reference_at,
       suppression IS NOT NULL AS suppressed
FROM {rs}.email_sends
WHERE status IN ('pending', 'sent', 'failed', 'unknown', 'suppressed', 'holdout');
ALTER TABLE {rs}.email_dry_runs ADD COLUMN IF NOT EXISTS suppression text;
ALTER TABLE {rs}.email_dry_runs DROP CONSTRAINT IF EXISTS email_dry_runs_status_check;
ALTER TABLE {rs}.email_dry_runs ADD CONSTRAINT email_dry_runs_status_check
    CHECK (status IN ('would_send', 'would_hold_out', 'would_suppress'));
CREATE TABLE IF NOT EXISTS {rs}.email_topic_suppressions (
    email       text NOT NULL,
    topic       text NOT NULL,
    source      text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (email, topic)
);
"""
