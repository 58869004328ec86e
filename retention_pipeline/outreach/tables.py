"""Tables of the outreach domain, as they are now: the send ledger, dry-run previews, suppressions, the local
outbox, webhook receipts (see activity/tables.py for how they are installed)."""

# Ledger statuses that record an assignment to an arm: every email the plan decided on, whatever became
# of it (pending, sent, failed, unknown, or suppressed: never sent to a suppressed address), and every
# holdout member (a virtual send). Rules that depend on earlier sends and the outcome analysis read exactly
# these rows, so both arms are treated alike.
ASSIGNED_STATUSES = "('pending', 'sent', 'failed', 'unknown', 'suppressed', 'holdout')"

OUTREACH_TABLES_DDL = """
CREATE TABLE {rs}.email_sends (
    id                   bigserial PRIMARY KEY,
    campaign             text NOT NULL,
    step                 smallint NOT NULL,
    user_id              bigint NOT NULL,
    episode_start        date NOT NULL,
    as_of_date           date NOT NULL,
    variant              text NOT NULL,
    -- 'dry_run' is no longer written (dry runs go to email_dry_runs); it stays allowed so the check is
    -- the same on upgraded and fresh installs.
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
    unsubscribe_ref      text,                        -- the opaque reference an unsubscribe link names (tokens v2)
    -- The topic the email's unsubscribe link leaves by default (one-click): its campaign's topic; NULL = all
    -- email (transactional campaigns, which topic unsubscribes do not stop, and runs without campaign files).
    unsubscribe_topic    text,
    -- The address was suppressed when the assignment was drawn (the reason), in either arm: an email-arm row
    -- then has status 'suppressed' and is never sent; a holdout row stays 'holdout'.
    suppression          text,
    -- The database-level guard of "exactly once": one row per user, campaign, step and dormancy
    -- episode, whatever retries, concurrent runs or re-runs do.
    UNIQUE (campaign, step, user_id, episode_start)
);
CREATE INDEX email_sends_pending ON {rs}.email_sends (batch_key) WHERE status = 'pending';
CREATE INDEX email_sends_user ON {rs}.email_sends (user_id, as_of_date);
-- The experiment as assigned: one row per campaign, step, user and dormancy episode (the unit its arm is
-- drawn for); treated = assigned to the email arm (delivered or not), delivered = the provider accepted it
-- (the per-protocol subset), suppressed = the address was suppressed at assignment (either arm).
CREATE VIEW {rs}.assignments AS
SELECT id AS send_id, campaign, step, user_id, episode_start, as_of_date, variant, status, segment_reason, mrr_cents,
       status <> 'holdout' AS treated, status = 'sent' AS delivered, COALESCE(sent_at, created_at) AS reference_at,
       suppression IS NOT NULL AS suppressed
FROM {rs}.email_sends
WHERE status IN {assigned};
-- A dry run's preview: what the live run would record (an email or a holdout row), kept apart from the
-- ledger, so it never takes a ledger key, never counts towards a step or the cooldown, never enters
-- outcomes. A dry run of the same campaign and day replaces its preview.
CREATE TABLE {rs}.email_dry_runs (
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
    suppression     text,
    PRIMARY KEY (campaign, as_of_date, step, user_id)
);
CREATE UNIQUE INDEX email_sends_unsubscribe_ref ON {rs}.email_sends (unsubscribe_ref)
    WHERE unsubscribe_ref IS NOT NULL;
CREATE TABLE {rs}.email_suppressions (
    email       text PRIMARY KEY,          -- lower-cased
    reason      text NOT NULL CHECK (reason IN ('unsubscribed', 'bounced', 'complained', 'manual')),
    source      text NOT NULL,
    detail      text,
    created_at  timestamptz NOT NULL
);
-- Topic-level unsubscribes ("tips", "billing"): a person who left a topic gets no more emails of the campaigns
-- with that topic, other topics go on. Transactional campaigns ignore it; email_suppressions (global
-- unsubscribe, bounces, complaints) stops every campaign.
CREATE TABLE {rs}.email_topic_suppressions (
    email       text NOT NULL,             -- lower-cased
    topic       text NOT NULL,
    source      text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (email, topic)
);
CREATE TABLE {rs}.email_outbox (
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
CREATE TABLE {rs}.webhook_receipts (
    svix_id      text PRIMARY KEY,
    event_type   text NOT NULL,
    received_at  timestamptz NOT NULL
);
""".replace("{assigned}", ASSIGNED_STATUSES)
