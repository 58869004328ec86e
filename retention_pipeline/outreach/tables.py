"""Tables of the outreach domain: the send ledger, suppressions, the local outbox, webhook receipts."""

# Ledger statuses that record an assignment to an arm: every email the plan decided on, whatever became
# of it (pending, sent, failed, unknown, or suppressed: never sent to a suppressed address), and every
# holdout member (a virtual send). Rules that depend on earlier sends and the outcome analysis read exactly
# these rows, so both arms are treated alike.
ASSIGNED_STATUSES = "('pending', 'sent', 'failed', 'unknown', 'suppressed', 'holdout')"

OUTREACH_TABLES_DDL = """
CREATE TABLE IF NOT EXISTS {rs}.email_sends (
    id                   bigserial PRIMARY KEY,
    campaign             text NOT NULL,
    step                 smallint NOT NULL,
    user_id              bigint NOT NULL,
    episode_start        date NOT NULL,
    as_of_date           date NOT NULL,
    variant              text NOT NULL,
    -- 'dry_run' is no longer written (dry runs go to email_dry_runs); it stays allowed so the check is
    -- the same on old and new installs.
    status               text NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'holdout', 'dry_run', 'unknown',
                                                         'suppressed')),
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
-- The address was suppressed when the assignment was drawn (its email_suppressions reason), in either
-- arm: an email-arm row then has status 'suppressed' and is never sent; a holdout row stays 'holdout'.
ALTER TABLE {rs}.email_sends ADD COLUMN IF NOT EXISTS suppression text;
-- Installs from before 'suppressed' existed have the narrower check (it runs once: the schema is
-- fingerprinted).
ALTER TABLE {rs}.email_sends DROP CONSTRAINT IF EXISTS email_sends_status_check;
ALTER TABLE {rs}.email_sends ADD CONSTRAINT email_sends_status_check
    CHECK (status IN ('pending', 'sent', 'failed', 'holdout', 'dry_run', 'unknown', 'suppressed'));
-- The experiment as assigned: one row per campaign, step, user and dormancy episode (the unit its arm is
-- drawn for); treated = assigned to the email arm (delivered or not), delivered = the provider accepted it
-- (the per-protocol subset), suppressed = the address was suppressed at assignment (either arm).
CREATE OR REPLACE VIEW {rs}.assignments AS
SELECT id AS send_id, campaign, step, user_id, episode_start, as_of_date, variant, status, segment_reason, mrr_cents,
       status <> 'holdout' AS treated, status = 'sent' AS delivered, COALESCE(sent_at, created_at) AS reference_at,
       suppression IS NOT NULL AS suppressed
FROM {rs}.email_sends
WHERE status IN {assigned};
-- A dry run's preview: what the live run would record (an email or a holdout row), kept apart from the
-- ledger, so it never takes a ledger key, never counts towards a step or the cooldown, never enters
-- outcomes. A dry run of the same campaign and day replaces its preview.
CREATE TABLE IF NOT EXISTS {rs}.email_dry_runs (
    campaign        text NOT NULL,
    step            smallint NOT NULL,
    user_id         bigint NOT NULL,
    as_of_date      date NOT NULL,
    episode_start   date NOT NULL,
    variant         text NOT NULL,
    status          text NOT NULL CHECK (status IN ('would_send', 'would_hold_out', 'would_suppress')),
    email           text,
    segment_reason  text,
    mrr_cents       bigint NOT NULL DEFAULT 0,
    subject         text,
    payload         jsonb,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (campaign, as_of_date, step, user_id)
);
ALTER TABLE {rs}.email_dry_runs ADD COLUMN IF NOT EXISTS suppression text;
ALTER TABLE {rs}.email_dry_runs DROP CONSTRAINT IF EXISTS email_dry_runs_status_check;
ALTER TABLE {rs}.email_dry_runs ADD CONSTRAINT email_dry_runs_status_check
    CHECK (status IN ('would_send', 'would_hold_out', 'would_suppress'));
-- Installs from before the dry-run table kept dry runs in the ledger (status 'dry_run', plus 'holdout'
-- rows written by the same plan step, recognisable by the same campaign, step, day and created_at).
-- They move to the preview table once, freeing the ledger keys they held for the live run.
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
-- The opaque reference an unsubscribe link names (tokens v2): the endpoint finds the address by it.
ALTER TABLE {rs}.email_sends ADD COLUMN IF NOT EXISTS unsubscribe_ref text;
CREATE UNIQUE INDEX IF NOT EXISTS email_sends_unsubscribe_ref ON {rs}.email_sends (unsubscribe_ref)
    WHERE unsubscribe_ref IS NOT NULL;
-- The topic the email's unsubscribe link leaves by default (one-click): its campaign's topic; NULL = all email
-- (transactional campaigns, which topic unsubscribes do not stop, and runs without campaign files).
ALTER TABLE {rs}.email_sends ADD COLUMN IF NOT EXISTS unsubscribe_topic text;
CREATE TABLE IF NOT EXISTS {rs}.email_suppressions (
    email       text PRIMARY KEY,          -- lower-cased
    reason      text NOT NULL CHECK (reason IN ('unsubscribed', 'bounced', 'complained', 'manual')),
    source      text NOT NULL,
    detail      text,
    created_at  timestamptz NOT NULL
);
-- Topic-level unsubscribes ("tips", "billing"): a person who left a topic gets no more emails of the campaigns
-- with that topic, other topics go on. Transactional campaigns ignore it; email_suppressions (global
-- unsubscribe, bounces, complaints) stops every campaign.
CREATE TABLE IF NOT EXISTS {rs}.email_topic_suppressions (
    email       text NOT NULL,             -- lower-cased
    topic       text NOT NULL,
    source      text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (email, topic)
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
""".replace("{assigned}", ASSIGNED_STATUSES)
