"""Tables of the outcomes domain, as they are now: per-send outcomes, campaign performance, allocation decisions,
success definitions, revenue kept (see activity/tables.py for how they are installed)."""

OUTCOME_TABLES_DDL = """
CREATE TABLE {rs}.reengagement_outcomes (
    send_id            bigint NOT NULL,
    window_days        integer NOT NULL,
    campaign           text NOT NULL,
    step               smallint NOT NULL,
    variant            text NOT NULL,
    treated            boolean NOT NULL,      -- assigned to the email arm (as assigned); false: holdout member
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
    -- Delivered (provider accepted it): the per-protocol subset of the treated. NULL on rows written
    -- before failed sends were analysed, which were all delivered.
    delivered          boolean,
    PRIMARY KEY (send_id, window_days)
);
CREATE TABLE {rs}.campaign_performance (
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
    lift_ci_low        double precision,      -- 95%, Miettinen-Nurminen score interval (inverts the test below)
    lift_ci_high       double precision,
    p_value            double precision,      -- two-sided score test of equal rates
    recovered_mrr_cents bigint NOT NULL,      -- MRR of treated paying users who returned
    -- Secondary, per protocol: treated users whose email was delivered, against the whole holdout.
    per_protocol_treated          integer,
    per_protocol_treated_returned integer,
    per_protocol_lift             double precision,
    -- Lift within send days, averaged with Cochran-Mantel-Haenszel weights (95% Wald interval): what
    -- variant comparisons read, since adaptive allocation changes the variant mix from day to day.
    adjusted_lift      double precision,
    adjusted_ci_low    double precision,
    adjusted_ci_high   double precision,
    PRIMARY KEY (as_of_date, campaign, step, variant, segment, window_days)
);
CREATE TABLE {rs}.allocation_decisions (
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
    -- explore | winner | paused_for_review | resumed: what the sequential rule decided for the step that day.
    decision     text NOT NULL DEFAULT 'explore',
    PRIMARY KEY (as_of_date, campaign, step, variant)
);
-- What a campaign counts as success, written by each send plan from its CampaignConfig; no row = any event.
CREATE TABLE {rs}.campaign_success (
    campaign     text PRIMARY KEY,
    event_types  text[],                  -- NULL: any event type
    min_events   integer NOT NULL CHECK (min_events >= 1),
    updated_at   timestamptz NOT NULL
);
-- Revenue kept against the holdout, per campaign, step and horizon (days after assignment), as of a day.
CREATE TABLE {rs}.campaign_revenue (
    as_of_date                      date NOT NULL,
    campaign                        text NOT NULL,
    step                            smallint NOT NULL,
    horizon_days                    integer NOT NULL,
    treated                         integer NOT NULL,   -- paying users assigned to be emailed, horizon judged
    treated_kept                    integer NOT NULL,   -- ...whose subscription still ran at the horizon
    holdout                         integer NOT NULL,
    holdout_kept                    integer NOT NULL,
    awaiting                        integer NOT NULL,   -- horizon passed, no subscription snapshot since
    mrr_at_risk_cents               bigint NOT NULL,    -- MRR of the treated paying users at assignment
    retention_lift                  double precision,   -- treated kept rate - holdout kept rate
    retention_lift_ci_low           double precision,   -- 95%, score interval
    retention_lift_ci_high          double precision,
    incremental_mrr_cents           double precision,   -- retention_lift x mrr_at_risk_cents
    incremental_mrr_ci_low_cents    double precision,
    incremental_mrr_ci_high_cents   double precision,
    PRIMARY KEY (as_of_date, campaign, step, horizon_days)
);
"""
