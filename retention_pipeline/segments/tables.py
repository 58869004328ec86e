"""Tables of the segments domain, as they are now (see activity/tables.py for how they are installed)."""

SEGMENT_TABLES_DDL = """
CREATE TABLE {rs}.weekly_segments (
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
CREATE TABLE {rs}.dormant_users (
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
"""
