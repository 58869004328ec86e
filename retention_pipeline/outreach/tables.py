"""Tables of the outreach domain: the send ledger, suppressions, the local outbox, webhook receipts."""

# Ledger statuses that record an assignment to an arm: every email the plan decided on, whatever became
# of it (pending, sent, failed, unknown), and every holdout member (a virtual send). Rules that depend on
# earlier sends and the outcome analysis read exactly these rows, so both arms are treated alike.
ASSIGNED_STATUSES = "('pending', 'sent', 'failed', 'unknown', 'holdout')"

OUTREACH_TABLES_DDL = """
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
-- The experiment as assigned: one row per user, campaign, step and episode; treated = assigned to the
-- email arm (delivered or not), delivered = the provider accepted it (the per-protocol subset).
CREATE OR REPLACE VIEW {rs}.assignments AS
SELECT id AS send_id, campaign, step, user_id, episode_start, as_of_date, variant, status, segment_reason, mrr_cents,
       status <> 'holdout' AS treated, status = 'sent' AS delivered, COALESCE(sent_at, created_at) AS reference_at
FROM {rs}.email_sends
WHERE status IN {assigned};
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
""".replace("{assigned}", ASSIGNED_STATUSES)
